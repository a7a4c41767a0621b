#!/usr/bin/env python3
"""`setr cards` from a checkout, on the checkout's `model_cards/`: see `setr cards --help`."""

import sys
from pathlib import Path

from transformers_setr.cards.command import expected_cards, stale_cards, write_atomically  # noqa: F401
from transformers_setr.cards.command import main as cards_main

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "model_cards"


def main(argv: list[str] | None = None) -> int:
    return cards_main(argv, default_dir=DEFAULT_DIR)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
