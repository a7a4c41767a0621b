#!/usr/bin/env python3
"""`setr train` from a checkout: see `setr train --help`."""

from transformers_setr.training.train_command import main

if __name__ == "__main__":
    raise SystemExit(main())
