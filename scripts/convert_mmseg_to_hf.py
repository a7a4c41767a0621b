#!/usr/bin/env python3
"""`setr convert` from a checkout: see `setr convert --help`."""

import sys

from transformers_setr.conversion.commands import convert_main as main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
