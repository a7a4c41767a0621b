#!/usr/bin/env python3
"""`setr demo` from a checkout: see `setr demo --help`."""

from transformers_setr.apps.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
