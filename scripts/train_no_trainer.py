#!/usr/bin/env python3
"""`setr train-loop` from a checkout: see `setr train-loop --help`."""

from transformers_setr.training.train_loop_command import main

if __name__ == "__main__":
    raise SystemExit(main())
