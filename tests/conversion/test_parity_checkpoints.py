"""The seven released SETR architectures: converted checkpoints reproduce mmsegmentation 1.2.2, whole and slide.

CI runs reduced-width fixtures (encoder 32 wide, 4 layers; real heads, classes, position grids and test settings),
made by the reference implementation itself:
    .venv-mmseg/bin/python scripts/make_parity_fixtures.py --suite checkpoints
The `heavy` test builds the full ViT-L fixtures on the fly (needs `.venv-mmseg`, see DEVELOPERS.md).
"""

import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSemanticSegmentation

from transformers_setr.conversion import load_checkpoint_file
from transformers_setr.conversion.from_mmseg import convert_checkpoint
from transformers_setr.presets import PRESETS

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "parity"
VARIANTS = [
    "ade20k-naive",
    "ade20k-pup",
    "ade20k-mla-b8",
    "ade20k-mla-b16",
    "cityscapes-naive",
    "cityscapes-pup",
    "cityscapes-mla",
]
TOLERANCE = 1e-4


def regenerate_input(case: dict) -> torch.Tensor:
    array = np.random.default_rng(case["seed"]).standard_normal(tuple(case["input_shape"]), dtype=np.float32)
    pixel_values = torch.from_numpy(array)
    assert float(pixel_values.double().sum()) == pytest.approx(case["input_sum"], rel=1e-12)
    assert float(pixel_values.double().abs().sum()) == pytest.approx(case["input_abs_sum"], rel=1e-12)
    return pixel_values


def overrides_for(io: dict) -> dict:
    """What the weights do not reveal about a reduced fixture (the released models are 24 layers, 16 heads)."""
    reference = io["overrides"]
    return {"out_indices": list(reference["out_indices"]), "num_attention_heads": reference["num_heads"]}


def compare_case(model, case: dict) -> dict[str, float]:
    pixel_values = regenerate_input(case)
    height, width = case["size"]
    with torch.no_grad():
        if case["mode"] == "slide":
            logits = model(pixel_values).logits  # the converted config's protocol
        else:
            logits = model(pixel_values, inference_mode="whole").logits
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    assert list(logits.shape) == case["logits_shape"]
    sampling = case["sampling"]
    rows, cols = sampling["rows"], sampling["cols"]
    sampled = logits[0, sampling["channels"], rows["start"] :: rows["step"], cols["start"] :: cols["step"]]
    sampled_error = (sampled - case["logits_sampled"]).abs().max().item()
    # Channel sums cover every pixel: the mean error per pixel must be below the tolerance too.
    sums_error = ((logits[0].double().sum(dim=(1, 2)) - case["channel_sums"]).abs().max().item()) / (height * width)
    prediction = logits[0].argmax(0).flatten()
    # Where mmseg's top two logits are within 1e-4, either class is a faithful answer: take mmseg's there.
    ties = case["argmax_near_tie_index"]
    tie_classes = case["argmax_near_tie_classes"]
    runner_up = prediction[ties] == tie_classes[:, 1]
    prediction[ties[runner_up]] = tie_classes[runner_up, 0]
    assert zlib.crc32(prediction.to(torch.uint8).numpy().tobytes()) == case["argmax_crc"], case["name"]
    assert torch.equal(torch.bincount(prediction, minlength=len(case["argmax_hist"])), case["argmax_hist"])
    return {"sampled": sampled_error, "mean_per_pixel": sums_error}


def check_variant(variant: str, fixtures: Path, output: Path) -> dict[str, dict[str, float]]:
    io = torch.load(fixtures / f"{variant}_io.pt", weights_only=True)
    for case in io["cases"]:
        case["sampling"] = io["sampling"]
    preset = next(p for p in PRESETS.values() if p.file_name == io["released_checkpoint"])
    # The fixture file is named after the variant; copy it under the released name so that the converter finds the
    # preset (dataset, test protocol) exactly as for the real download.
    released = output / preset.file_name
    os.symlink(fixtures / f"{variant}.pth", released)
    overrides = overrides_for(io) if io["overrides"]["num_layers"] != 24 else None
    folder, _ = convert_checkpoint(str(released), output / "converted", overrides=overrides)
    model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    test_cfg = io["overrides"]["test_cfg"]
    assert model.config.inference_mode == test_cfg["mode"] == "slide"
    crop, stride = model.config.slide_window
    assert (list(crop), list(stride)) == (test_cfg["crop_size"], test_cfg["stride"])
    meta = load_checkpoint_file(str(released))["meta"]
    assert list(model.config.id2label.values()) == list(meta["CLASSES"])
    assert model.config.palette == [list(colour) for colour in meta["PALETTE"]]
    return {case["name"]: compare_case(model, case) for case in io["cases"]}


@pytest.mark.parametrize("variant", VARIANTS)
def test_converted_checkpoint_matches_mmseg(variant, tmp_path):
    errors = check_variant(variant, FIXTURES, tmp_path)
    print(f"{variant}: " + ", ".join(f"{name} {e['sampled']:.1e}" for name, e in errors.items()))
    assert max(e["sampled"] for e in errors.values()) < TOLERANCE, errors
    assert max(e["mean_per_pixel"] for e in errors.values()) < TOLERANCE, errors


MMSEG_PYTHON = Path(os.environ.get("SETR_MMSEG_PYTHON", ROOT / ".venv-mmseg" / "bin" / "python"))


@pytest.mark.heavy
@pytest.mark.parametrize("variant", VARIANTS)
def test_full_size_checkpoint_matches_mmseg(variant, tmp_path):
    """Full ViT-L (random weights): several minutes per variant on a CPU. Set SETR_FULL_FIXTURES to reuse fixtures
    made earlier with `make_parity_fixtures.py --suite full --out DIR`."""
    prebuilt = os.environ.get("SETR_FULL_FIXTURES")  # a folder from `make_parity_fixtures.py --suite full --out`
    if prebuilt:
        fixtures = Path(prebuilt)
    else:
        if not MMSEG_PYTHON.exists():
            pytest.skip(f"no mmsegmentation interpreter at {MMSEG_PYTHON} (see DEVELOPERS.md)")
        fixtures = tmp_path / "fixtures"
        command = [str(MMSEG_PYTHON), str(ROOT / "scripts" / "make_parity_fixtures.py"), "--suite", "full"]
        subprocess.run([*command, "--variants", variant, "--out", str(fixtures)], check=True, stdout=sys.stderr)
    (tmp_path / "work").mkdir()
    errors = check_variant(variant, fixtures, tmp_path / "work")
    print(f"{variant} (ViT-L): " + ", ".join(f"{name} {e['sampled']:.1e}" for name, e in errors.items()))
    assert max(e["sampled"] for e in errors.values()) < TOLERANCE, errors
