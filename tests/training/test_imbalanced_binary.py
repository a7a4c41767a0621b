"""Imbalanced binary data stored as 0/255 masks, trained through `setr train` as the README writes it (issue 21):
refused without saying what 255 means, and with `--mask_values 0,255` a BCE + Dice binary model finds the rare
foreground that plain cross-entropy never predicts in the same steps (`benchmarks/imbalanced_binary.py` measures the
longer run with weighted cross-entropy too)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transformers_setr import SetrForSemanticSegmentation
from transformers_setr.data.synthetic import make_synthetic_defects

ROOT = Path(__file__).resolve().parents[2]
ENVIRONMENT = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "patch_size": 8,
    "out_indices": [0, 1, 2, 3],
    "decoder_channels": 32,
    "use_auxiliary_head": False,
    "auxiliary_in_indices": [0],
}
SIZE = 64


@pytest.fixture(scope="module")
def defects(tmp_path_factory) -> Path:
    return make_synthetic_defects(
        tmp_path_factory.mktemp("defects") / "data", num_train=32, num_validation=12, size=SIZE
    )


def setr_train(data: Path, output_dir: Path, overrides: dict, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "transformers_setr", "train", "--data", str(data), *extra,
        "--config_overrides", json.dumps({**TINY, **overrides}),
        "--crop_size", str(SIZE), "--scale", f"{4 * SIZE},{SIZE}", "--per_device_train_batch_size", "8",
        "--learning_rate", "0.01", "--max_steps", "150", "--eval_strategy", "no", "--eval_mode", "whole",
        "--logging_steps", "40", "--output_dir", str(output_dir), "--report_to", "none", "--disable_tqdm", "true",
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, env=ENVIRONMENT, capture_output=True, text=True, timeout=900)


def test_the_data_is_imbalanced_and_stored_as_0_255(defects):
    import numpy as np
    from PIL import Image

    masks = [np.asarray(Image.open(path)) for path in sorted((defects / "masks").rglob("*.png"))]
    assert {int(v) for mask in masks for v in np.unique(mask)} == {0, 255}
    share = np.mean([np.mean(mask == 255) for mask in masks])
    assert 0.015 < share < 0.025, share


def test_0_255_masks_without_mask_values_are_refused_in_one_line(defects, tmp_path):
    result = setr_train(defects, tmp_path / "run", {})
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("setr train: error: ") and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "0 and 255" in lines[-1] and "--mask_values 0,255" in lines[-1]
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_bce_dice_finds_the_rare_foreground_that_cross_entropy_misses(defects, tmp_path):
    iou = {}
    runs = {
        "cross_entropy": {},
        "bce_dice": {"num_labels": 1, "loss": [{"type": "binary_cross_entropy"}, {"type": "dice", "weight": 1.0}]},
    }
    for name, overrides in runs.items():
        result = setr_train(defects, tmp_path / name, overrides, "--mask_values", "0,255")
        assert result.returncode == 0, result.stderr[-3000:]
        results = json.loads((tmp_path / name / "eval_results.json").read_text())
        iou[name] = results["eval_IoU-defect"]
        assert results["eval_IoU-background"] > 0.9, results
    assert iou["cross_entropy"] < 0.05, iou  # the 2 % class is never predicted
    assert iou["bce_dice"] > iou["cross_entropy"] + 0.2, iou
    binary = SetrForSemanticSegmentation.from_pretrained(tmp_path / "bce_dice")
    assert binary.config.num_labels == 1 and binary.config.prediction_id2label == {0: "background", 1: "defect"}
    assert binary.config.loss == runs["bce_dice"]["loss"]
