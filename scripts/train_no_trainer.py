#!/usr/bin/env python3
"""Train SETR with a plain Accelerate loop (no Trainer) and mmsegmentation's SETR recipe.

    python scripts/train_no_trainer.py --preset setr-naive-vit-large-ade20k-512 --output_dir runs/naive
    accelerate launch --multi_gpu --num_processes 8 scripts/train_no_trainer.py --preset ... --mixed_precision bf16

The model, data and evaluation arguments are those of `scripts/train.py`; the loop's own are listed by `--help`.
Checkpoints (`--checkpointing_steps`) are Accelerate states in `<output_dir>/step_<N>`; `--resume_from_checkpoint
last` continues from the newest one.
"""

import sys

from transformers_setr.training.commands import main_no_trainer

if __name__ == "__main__":
    sys.exit(main_no_trainer(sys.argv[1:]))
