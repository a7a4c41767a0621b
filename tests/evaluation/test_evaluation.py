"""Evaluation protocol: predictions at the ground-truth resolution, whole / slide / ms+flip, the dataset loop (also
sharded), and `scripts/evaluate.py` end to end."""

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from transformers_setr import SetrForSemanticSegmentation, SetrImageProcessorPil
from transformers_setr.data import SegmentationData, load_segmentation_data
from transformers_setr.data.synthetic import make_synthetic_ade20k
from transformers_setr.evaluation import (
    SegmentationEvalDataset,
    batch_areas,
    eval_collate,
    evaluate_segmentation,
    predict_labels,
)
from transformers_setr.evaluation.metrics import intersect_and_union

from conftest import tiny_config
from helpers.miou_reference import mmseg_reference

REPO = Path(__file__).resolve().parents[2]
ADE_LABELS = 150
TEST_SCALE = {"shortest_edge": 32, "longest_edge": 64}
IMAGE_SIZES = ((40, 56), (50, 30), (40, 56))  # (H, W); the processor brings them to 32x45 and 53x32


def png_bytes(array: np.ndarray, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format)
    return buffer.getvalue()


def in_memory_ade20k(sizes=IMAGE_SIZES, seed: int = 0) -> tuple[SegmentationData, list[np.ndarray]]:
    """A SegmentationData of a few images of different sizes, with raw ADE annotations (0 = other, 1..150)."""
    rng = np.random.default_rng(seed)
    rows = {"image": [], "annotation": [], "file_name": []}
    raw_annotations = []
    for index, (height, width) in enumerate(sizes):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        annotation = rng.choice([0, 1, 3, 5, 13, 150], size=(height, width)).astype(np.uint8)
        rows["image"].append({"bytes": png_bytes(image), "path": None})
        rows["annotation"].append({"bytes": png_bytes(annotation), "path": None})
        rows["file_name"].append(f"memory_{index}.png")
        raw_annotations.append(annotation)
    features = datasets.Features(
        {
            "image": datasets.Image(decode=False),
            "annotation": datasets.Image(decode=False),
            "file_name": datasets.Value("string"),
        }
    )
    split = datasets.Dataset.from_dict(rows, features=features)
    data = SegmentationData(
        dataset="ade20k", label_format="ade20k", splits=datasets.DatasetDict(validation=split), source="memory"
    )
    return data, raw_annotations


def tiny_model(decoder_type: str = "pup", **overrides) -> SetrForSemanticSegmentation:
    return SetrForSemanticSegmentation(tiny_config(decoder_type, num_labels=ADE_LABELS, **overrides)).eval()


def processor() -> SetrImageProcessorPil:
    return SetrImageProcessorPil(size=TEST_SCALE)


class RampModel(torch.nn.Module):
    """Stub with known logits at half the input resolution: class 1 scores a ramp from -1 (left / top edge) to +1,
    class 0 scores 0. At any output size the argmax is 1 exactly on the right (bottom) half of the pixel centres."""

    def __init__(self, axis: str):
        super().__init__()
        self.axis = axis
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.config = SimpleNamespace(num_labels=2)
        self.modes = []

    def forward(self, pixel_values, inference_mode=None):
        self.modes.append(inference_mode)
        batch, _, height, width = pixel_values.shape
        height, width = height // 2, width // 2
        logits = torch.zeros(batch, 2, height, width)
        if self.axis == "x":
            logits[:, 1] = ((torch.arange(width) + 0.5) / width * 2 - 1)[None, :]
        else:
            logits[:, 1] = ((torch.arange(height) + 0.5) / height * 2 - 1)[:, None]
        return SimpleNamespace(logits=logits)


@pytest.mark.parametrize("axis", ["x", "y"])
@pytest.mark.parametrize("output_size", [(18, 30), (8, 10), (64, 6)])
def test_predict_labels_resizes_to_the_ground_truth_size(axis, output_size):
    model = RampModel(axis).eval()
    prediction = predict_labels(model, torch.zeros(3, 12, 20), output_size, "slide")
    assert model.modes == ["slide"]
    assert prediction.shape == output_size
    height, width = output_size
    expected = np.zeros(output_size, dtype=np.int64)
    if axis == "x":
        expected[:, width // 2 :] = 1
    else:
        expected[height // 2 :, :] = 1
    np.testing.assert_array_equal(prediction.numpy(), expected)


def test_predict_labels_refuses_a_model_in_training_mode():
    with pytest.raises(ValueError, match="training mode"):
        predict_labels(RampModel("x").train(), torch.zeros(1, 3, 8, 8), (8, 8), "whole")
    with pytest.raises(ValueError, match="evaluation mode must be one of"):
        predict_labels(RampModel("x").eval(), torch.zeros(1, 3, 8, 8), (8, 8), "sliding")


@pytest.mark.parametrize("decoder_type", ["naive", "pup"])
def test_whole_and_slide_on_a_tiny_setr(decoder_type):
    model = tiny_model(decoder_type)  # window 64x64: the 32x45 input fits in one window
    pixel_values = processor()(images=Image.new("RGB", (56, 40), (90, 140, 30)), return_tensors="pt")["pixel_values"]
    pixel_values = pixel_values + torch.randn_like(pixel_values)
    assert pixel_values.shape[-2:] == (32, 45)
    output_size = (40, 56)
    whole = predict_labels(model, pixel_values, output_size, "whole")
    slide = predict_labels(model, pixel_values, output_size, "slide")
    assert whole.shape == slide.shape == output_size
    # One window covering the whole image: the same logits (naive: its 1/4-resolution output is first resized to
    # the input, as mmseg does in both modes).
    torch.testing.assert_close(whole, slide, rtol=0, atol=0)

    model.config.slide_crop_size, model.config.slide_stride = 16, 12  # now 3x4 overlapping windows
    slide = predict_labels(model, pixel_values, output_size, "slide")
    expected = F.interpolate(model.slide_inference(pixel_values), size=output_size, mode="bilinear").argmax(1)[0]
    torch.testing.assert_close(slide, expected, rtol=0, atol=0)
    assert (slide != whole).any()


def test_eval_dataset_keeps_original_labels_reduced_once():
    data, raw_annotations = in_memory_ade20k()
    dataset = SegmentationEvalDataset(data, processor(), "validation", keep_images=True)
    assert len(dataset) == 3
    item = dataset[1]
    assert item["pixel_values"].shape == (3, 53, 32) and item["pixel_values"].dtype == torch.float32
    assert item["labels"].dtype == torch.int64 and item["labels"].shape == (50, 30)
    raw = raw_annotations[1].astype(np.int64)
    np.testing.assert_array_equal(item["labels"].numpy(), np.where(raw == 0, 255, raw - 1))
    assert item["image"].size == (30, 50)
    assert len(SegmentationEvalDataset(data, processor(), max_samples=2)) == 2

    batch = eval_collate([dataset[0]])
    assert batch["pixel_values"].shape == (1, 3, 32, 45) and batch["labels"].shape == (1, 40, 56)
    assert len(batch["images"]) == 1
    with pytest.raises(ValueError, match="batch_size=1"):
        eval_collate([dataset[0], dataset[1]])
    with pytest.raises(ValueError, match="available splits"):
        SegmentationEvalDataset(data, processor(), "train")


def test_batch_areas_per_image_and_ms_flip():
    data, _ = in_memory_ade20k()
    dataset = SegmentationEvalDataset(data, processor(), keep_images=True)
    model = tiny_model("naive")
    batch = eval_collate([dataset[0], dataset[2]])  # same size: one forward pass for both
    areas = batch_areas(model, batch, "slide", ADE_LABELS)
    assert areas.shape == (2, 4, ADE_LABELS) and areas.dtype == torch.int64
    for index in range(2):
        prediction = predict_labels(model, batch["pixel_values"][index], (40, 56), "slide")
        torch.testing.assert_close(areas[index], intersect_and_union(prediction, batch["labels"][index], ADE_LABELS))
    # every non-ignored ground-truth pixel is counted once
    assert areas[:, 3].sum() == (batch["labels"] != 255).sum()

    one = eval_collate([dataset[1]])
    ms_flip = batch_areas(model, one, "ms_flip", ADE_LABELS, image_processor=processor())
    assert ms_flip.shape == (1, 4, ADE_LABELS)
    assert ms_flip[0, 3].sum() == (one["labels"] != 255).sum()
    assert not torch.equal(ms_flip, batch_areas(model, one, "whole", ADE_LABELS))
    with pytest.raises(ValueError, match="original images"):
        batch_areas(model, {k: v for k, v in one.items() if k != "images"}, "ms_flip", ADE_LABELS, processor())


def test_evaluate_segmentation_equals_a_direct_computation():
    data, _ = in_memory_ade20k()
    model, image_processor = tiny_model("pup"), processor()
    model.train()
    results = evaluate_segmentation(model, image_processor, data, mode="whole", progress=False)
    assert model.training  # the caller's mode is restored

    model.eval()
    predictions, labels = [], []
    for row in data.splits["validation"]:
        example = data.decode(row)
        inputs = image_processor(images=example.image, return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        size = example.labels.shape
        predictions.append(image_processor.post_process_semantic_segmentation(outputs, target_sizes=[size])[0].numpy())
        labels.append(example.labels)
    reference = mmseg_reference(predictions, labels, ADE_LABELS)
    assert results["num_images"] == 3 and results["mode"] == "whole"
    assert results["mIoU"] == pytest.approx(reference["mIoU"], abs=1e-12)
    assert results["aAcc"] == pytest.approx(reference["aAcc"], abs=1e-12)
    iou = np.array(list(results["per_class_iou"].values()))
    np.testing.assert_allclose(iou, reference["iou"], rtol=0, atol=1e-12)  # NaN where absent, same places
    assert list(results["per_class_iou"])[:2] == ["wall", "building"]

    assert (
        evaluate_segmentation(model, image_processor, data, mode="whole", progress=False, max_samples=1)["num_images"]
        == 1
    )
    with pytest.raises(ValueError, match="predicts 5 classes"):
        evaluate_segmentation(SetrForSemanticSegmentation(tiny_config()), image_processor, data, progress=False)
    with pytest.raises(ValueError, match="available splits"):
        evaluate_segmentation(model, image_processor, data, split="test", progress=False)


class ShardAccelerator:
    """The parts of `accelerate.Accelerator` evaluate_segmentation uses, for one of two processes run one after the
    other: `reduce` adds the totals of the processes that already ran (a real all-reduce sums all of them)."""

    def __init__(self, process_index: int, reduced: list[torch.Tensor]):
        self.num_processes, self.process_index = 2, process_index
        self.is_local_main_process = process_index == 0
        self.device = torch.device("cpu")
        self.reduced = reduced

    def unwrap_model(self, model):
        return model

    def reduce(self, tensor, reduction="sum"):
        assert reduction == "sum"
        self.reduced.append(tensor.clone())
        return torch.stack(self.reduced).sum(0)


def test_sharded_evaluation_sums_to_the_single_process_numbers():
    data, _ = in_memory_ade20k(sizes=((40, 56), (50, 30), (36, 36), (20, 64), (44, 40)))
    model, image_processor = tiny_model("naive"), processor()
    single = evaluate_segmentation(model, image_processor, data, mode="slide", progress=False)
    reduced = []
    second = evaluate_segmentation(
        model, image_processor, data, accelerator=ShardAccelerator(1, reduced), progress=False
    )
    assert second["num_images"] == 2  # images 1 and 3
    combined = evaluate_segmentation(
        model, image_processor, data, accelerator=ShardAccelerator(0, reduced), progress=False
    )
    assert combined["num_images"] == 5
    assert combined["mIoU"] == single["mIoU"] and combined["aAcc"] == single["aAcc"]
    assert combined["per_class_accuracy"] == pytest.approx(single["per_class_accuracy"], nan_ok=True)


def test_evaluate_script_end_to_end(tmp_path):
    root = make_synthetic_ade20k(tmp_path / "data", num_train=1, num_validation=3, image_size=(40, 56))
    model_folder = tmp_path / "model"
    tiny_model("naive", inference_mode="slide").save_pretrained(model_folder)
    processor().save_pretrained(model_folder)
    output = tmp_path / "results" / "eval.json"
    command = [
        sys.executable,
        str(REPO / "scripts" / "evaluate.py"),
        "--model",
        str(model_folder),
        "--data",
        str(root),
    ]
    command += ["--mode", "slide", "--max_samples", "2", "--device", "cpu", "--num_workers", "0", "--no_progress"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    completed = subprocess.run(
        [*command, "--output", str(output)], capture_output=True, text=True, env=environment, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "mIoU" in completed.stdout and "wall" in completed.stdout and str(output) in completed.stdout
    assert sorted(p.name for p in output.parent.iterdir()) == ["eval.json"]  # no temporary file left behind

    written = json.loads(output.read_text())
    assert written["num_images"] == 2 and written["mode"] == "slide" and written["split"] == "validation"
    model = SetrForSemanticSegmentation.from_pretrained(model_folder).eval()
    expected = evaluate_segmentation(
        model, processor(), load_segmentation_data(root), mode="slide", progress=False, max_samples=2
    )
    assert written["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-12)
    assert written["aAcc"] == pytest.approx(expected["aAcc"], abs=1e-12)
    for name, value in expected["per_class_iou"].items():  # absent classes: NaN in Python, null in the JSON
        assert (
            (written["per_class_iou"][name] is None)
            if math.isnan(value)
            else written["per_class_iou"][name] == pytest.approx(value)
        )

    # The same command in-process: a split the data does not have is a clear error naming the data.
    from transformers_setr.evaluation.command import evaluate_command_line

    with pytest.raises(ValueError, match="train2") as error:
        evaluate_command_line([*command[2:], "--split", "train2"])
    assert str(root) in str(error.value)


def test_evaluate_script_on_two_cpu_processes_forms_a_group_and_matches_one_process(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 scripts/evaluate.py` on a machine without a GPU: a real gloo
    group (each process evaluates half of the images), and the same areas as one process."""
    import socket

    root = make_synthetic_ade20k(tmp_path / "data", num_train=1, num_validation=3, image_size=(40, 56))
    model_folder = tmp_path / "model"
    tiny_model("naive", inference_mode="slide").save_pretrained(model_folder)
    processor().save_pretrained(model_folder)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += [
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        port,
    ]
    arguments = ["--model", str(model_folder), "--data", str(root), "--mode", "slide", "--num_workers", "0"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    output = tmp_path / "eval.json"
    completed = subprocess.run(
        [*launcher, str(REPO / "scripts" / "evaluate.py"), *arguments, "--no_progress", "--output", str(output)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    written = json.loads(output.read_text())
    assert written["num_processes"] == 2 and written["num_images"] == 3
    assert completed.stdout.count("results written to") == 1  # only the main process reports and writes
    model = SetrForSemanticSegmentation.from_pretrained(model_folder).eval()
    expected = evaluate_segmentation(model, processor(), load_segmentation_data(root), mode="slide", progress=False)
    assert written["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-12)
    assert written["aAcc"] == pytest.approx(expected["aAcc"], abs=1e-12)
