#!/usr/bin/env python3
"""`setr demo ...` from a checkout: `python scripts/demo.py --help` (see transformers_setr/apps/demo.py)."""

from transformers_setr.apps.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
