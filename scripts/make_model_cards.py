#!/usr/bin/env python3
"""`setr cards` on the checkout's `model_cards/`, from any working directory (`--output-dir` still wins): see
`setr cards --help`."""

import sys
from pathlib import Path

from transformers_setr.cards import command
from transformers_setr.cards.command import stale_cards, write_atomically  # noqa: F401  (the card tests use them)

CHECKOUT_CARDS = Path(__file__).resolve().parent.parent / "model_cards"


def main(argv: list[str] | None = None) -> int:
    return command.main(["--output-dir", str(CHECKOUT_CARDS), *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
