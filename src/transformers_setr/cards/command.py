"""Write the Hub model cards of the seven SETR checkpoints to `model_cards/{preset}.md`, or check them.

    setr cards            # (re)write every card (atomically: temporary file, then rename)
    setr cards --check    # exit 1 if a committed card is missing or differs

The cards come from `transformers_setr.cards.model_card.build_model_card` (no measured results): edit
`cards/templates/`, that module or `presets.py`, never the generated files.
"""

import argparse
import sys
from pathlib import Path

from ..files import write_text_atomically
from ..presets import PRESETS
from .model_card import build_model_card

DEFAULT_DIR = Path("model_cards")


def expected_cards() -> dict[str, str]:
    """File name -> the card text the generator produces now."""
    return {f"{name}.md": str(build_model_card(preset)) for name, preset in PRESETS.items()}


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, text)


def stale_cards(directory: Path) -> list[str]:
    """Cards in `directory` that are missing, differ from the generated ones, or belong to no preset."""
    expected = expected_cards()
    stale = []
    for file_name, text in expected.items():
        path = directory / file_name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(file_name)
    stale += sorted(f"{path.name} (no such preset)" for path in directory.glob("*.md") if path.name not in expected)
    return stale


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="setr cards", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only check that the cards are up to date")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_DIR, help=f"default: {DEFAULT_DIR}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`setr cards` (`scripts/make_model_cards.py` runs it on the checkout's `model_cards/`)."""
    args = build_parser().parse_args(argv)
    if args.check:
        stale = stale_cards(args.output_dir)
        if stale:
            print(
                f"stale or missing model cards in {args.output_dir}: {', '.join(stale)}\n"
                "regenerate them with: setr cards (python scripts/make_model_cards.py in a checkout)",
                file=sys.stderr,
            )
            return 1
        print(f"{len(PRESETS)} model cards up to date")
        return 0
    for file_name, text in expected_cards().items():
        write_atomically(args.output_dir / file_name, text)
        print(f"wrote {args.output_dir / file_name}")
    return 0
