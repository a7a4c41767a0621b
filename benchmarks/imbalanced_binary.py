"""Imbalanced binary segmentation: foreground IoU of plain cross-entropy against weighted cross-entropy and
sigmoid BCE + Dice, after the same short CPU run (issue 21).

The data is `data.synthetic.make_synthetic_defects`, stored the way people store binary masks: PNG masks of 0
(background) and 255 (defect), `id2label.json` `{"0": "background", "1": "defect"}`. Each image is a noisy grey
texture with one thin, slightly brighter scratch covering about 2 % of the pixels. Every run goes through `setr train` exactly as the README writes
it (`--mask_values 0,255` maps the stored values to the declared classes), on a tiny random SETR, same data, same
steps, same seed; only the loss differs.

    .venv/bin/python benchmarks/imbalanced_binary.py [--steps 300] [--size 64]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from transformers_setr.data.synthetic import make_synthetic_defects

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, print_report  # noqa: E402

TINY_MODEL = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "patch_size": 8,
    "out_indices": [0, 1, 2, 3],
    "decoder_channels": 32,
    "auxiliary_channels": 16,
    "use_auxiliary_head": False,
}


def foreground_share(root: Path) -> float:
    masks = [np.asarray(Image.open(path)) for path in sorted((root / "masks").rglob("*.png"))]
    return float(np.mean([np.mean(mask == 255) for mask in masks]))


# The contestants: `--config_overrides` beyond the tiny model, one loss each.
LOSSES = {
    "cross-entropy (default)": {},
    "weighted cross-entropy [1, 25]": {"loss": [{"type": "cross_entropy", "class_weight": [1.0, 25.0]}]},
    "BCE + Dice, num_labels=1": {
        "num_labels": 1,
        "loss": [{"type": "binary_cross_entropy", "weight": 1.0}, {"type": "dice", "weight": 1.0}],
    },
}


def train(data: Path, output: Path, overrides: dict, steps: int, size: int) -> dict:
    arguments = [
        sys.executable, "-m", "transformers_setr", "train",
        "--data", str(data), "--mask_values", "0,255",
        "--config_overrides", json.dumps({**TINY_MODEL, **overrides}),
        "--crop_size", str(size), "--scale", f"{4 * size},{size}",
        "--per_device_train_batch_size", "8", "--learning_rate", "0.01", "--max_steps", str(steps),
        "--logging_steps", "50", "--eval_strategy", "no", "--eval_mode", "whole", "--seed", "0",
        "--output_dir", str(output), "--report_to", "none", "--disable_tqdm", "true",
    ]  # fmt: skip
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(arguments, cwd=ROOT, env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"setr train failed:\n{result.stderr[-3000:]}")
    return json.loads((output / "eval_results.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train-images", type=int, default=64)
    parser.add_argument("--validation-images", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        data = make_synthetic_defects(
            Path(temporary) / "defects",
            size=args.size,
            num_train=args.train_images,
            num_validation=args.validation_images,
        )
        share = foreground_share(data)
        rows = []
        for name, overrides in LOSSES.items():
            results = train(data, Path(temporary) / f"run-{len(rows)}", overrides, args.steps, args.size)
            rows.append(
                [
                    name,
                    f"{100 * results['eval_IoU-defect']:.2f}",
                    f"{100 * results['eval_IoU-background']:.2f}",
                    f"{100 * results['eval_mIoU']:.2f}",
                ]
            )
    table = format_table(["loss", "defect IoU %", "background IoU %", "mIoU %"], rows)
    print_report(
        f"Imbalanced binary data (defect = {100 * share:.1f} % of pixels, masks 0/255), {args.steps} steps",
        table,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
