#!/usr/bin/env python3
"""`setr convert-timm` from a checkout: see `setr convert-timm --help`."""

import sys

from transformers_setr.conversion.commands import convert_timm_main as main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
