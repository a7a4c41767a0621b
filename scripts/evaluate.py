#!/usr/bin/env python3
"""`setr evaluate` from a checkout: see `setr evaluate --help`."""

import sys
from pathlib import Path

# This file is named like the `evaluate` library, and Python puts the script's folder first on sys.path: drop it so
# that an `import evaluate` anywhere below gets the library, not this script.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

from transformers_setr.evaluation.command import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
