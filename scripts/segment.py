#!/usr/bin/env python3
"""`setr segment` from a checkout: see `setr segment --help`."""

from transformers_setr.apps.segment import main

if __name__ == "__main__":
    raise SystemExit(main())
