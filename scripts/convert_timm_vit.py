#!/usr/bin/env python3
"""`setr convert-timm` from a checkout: see `setr convert-timm --help`."""

from transformers_setr.conversion.convert_timm_command import main

if __name__ == "__main__":
    raise SystemExit(main())
