#!/usr/bin/env python3
"""`setr convert` from a checkout: see `setr convert --help`."""

from transformers_setr.conversion.convert_command import main

if __name__ == "__main__":
    raise SystemExit(main())
