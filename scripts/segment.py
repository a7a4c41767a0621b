#!/usr/bin/env python3
"""`setr segment ...` from a checkout: `python scripts/segment.py --help` (see transformers_setr/apps/segment.py)."""

from transformers_setr.apps.segment import main

if __name__ == "__main__":
    raise SystemExit(main())
