#!/usr/bin/env python3
"""Train (or fine-tune) SETR with the Hugging Face Trainer and mmsegmentation's SETR recipe.

    # one of the seven released recipes, e.g. SETR-Naive on ADE20K (backbone from the converted ViT-L pretrain)
    python scripts/train.py --preset setr-naive-vit-large-ade20k-512 --output_dir runs/naive-ade --bf16

    # several GPUs / nodes: the same script under accelerate (or torchrun)
    accelerate launch --multi_gpu --num_processes 8 scripts/train.py --preset setr-pup-vit-large-ade20k-512 ...

Every field of the preset's recipe (batch, iterations, lr, crop...) and of `TrainingArguments` can be overridden on
the command line; `--help` lists them. See the README ("Training") for the data sources and the protocol.
"""

import sys

from transformers_setr.training.commands import main_trainer as main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
