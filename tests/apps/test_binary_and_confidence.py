"""Binary models (`num_labels=1`) downstream of the model (pipeline, `setr segment`, evaluation, ONNX export),
`setr segment --save_confidence`, and the one-line refusals of the tools (issue 21)."""

import base64
import io
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor, pipeline

pytest.importorskip("skimage.data")
from transformers_setr import cli  # noqa: E402
from transformers_setr.apps import segment  # noqa: E402
from transformers_setr.inference.multi_scale import MMSEG_TTA_RATIOS  # noqa: E402

from helpers.photo_folder import CLASS_NAMES, photographs, save_tiny_model  # noqa: E402

PHOTO = "chelsea.jpg"  # 451x300


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("binary")
    binary, _ = save_tiny_model(root / "binary", class_names=("crack",))
    multi, _ = save_tiny_model(root / "multi")
    # The processor a user of the folder gets (the torchvision one when installed), as the commands load it.
    processor = AutoImageProcessor.from_pretrained(root / "binary")
    (root / "photos").mkdir()
    photo = photographs()[PHOTO]
    photo.save(root / "photos" / "chelsea.png")  # lossless: the test reads back exactly what the command reads
    return root, binary, multi, processor, photo


def model_logits(model, processor, image, mode: str) -> torch.Tensor:
    """(1, C, H, W) logits at the image's size, mmseg's two bilinear steps, by hand."""
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=pixel_values, inference_mode=mode).logits
    logits = F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
    return F.interpolate(logits, size=(image.height, image.width), mode="bilinear", align_corners=False)


def ms_flip_probabilities(model, processor, image) -> torch.Tensor:
    """(C, H, W) softmax probabilities averaged over mmseg's six scales and their flips, by hand."""
    total = 0
    for ratio in MMSEG_TTA_RATIOS:
        size = {"shortest_edge": int(64 * ratio), "longest_edge": int(256 * ratio)}
        pixel_values = processor(images=image, size=size, return_tensors="pt")["pixel_values"]
        for flip in (False, True):
            with torch.no_grad():
                logits = model(pixel_values=pixel_values.flip(-1) if flip else pixel_values).logits
            logits = F.interpolate(logits, size=(image.height, image.width), mode="bilinear", align_corners=False)
            probabilities = logits.softmax(1)[0]
            total = total + (probabilities.flip(-1) if flip else probabilities)
    return total / (2 * len(MMSEG_TTA_RATIOS))


def read_confidence(path) -> np.ndarray:
    png = Image.open(path)
    assert png.mode in ("I;16", "I")  # 16-bit grey
    return np.asarray(png).astype(np.float64) / 65535


# ----------------------------------------------------------------------------------------------------------------
# Binary models


def test_pipeline_on_a_binary_model_gives_background_and_the_class(folders):
    root, binary, _, processor, photo = folders
    segmenter = pipeline("image-segmentation", model=str(root / "binary"))
    results = segmenter(str(root / "photos" / "chelsea.png"))
    assert sorted(r["label"] for r in results) == ["background", "crack"]
    pixel_values = processor(images=photo, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = binary(pixel_values=pixel_values).logits  # (1, 1, h, w), the model's own mode
    by_hand = F.interpolate(logits, size=(photo.height, photo.width), mode="bilinear", align_corners=False)[0, 0] > 0
    masks = {r["label"]: np.asarray(r["mask"]) == 255 for r in results}
    np.testing.assert_array_equal(masks["crack"], by_hand.numpy())
    np.testing.assert_array_equal(masks["background"], ~by_hand.numpy())


@pytest.mark.parametrize("mode", ["whole", "slide", "ms_flip"])
def test_setr_segment_thresholds_a_binary_model(folders, tmp_path, capsys, mode):
    root, binary, _, processor, photo = folders
    out = tmp_path / "out"
    argv = ["segment", str(root / "photos"), "--model", str(root / "binary"), "--output", str(out), "--mode", mode]
    assert cli.main([*argv, "--save_confidence"]) == 0, capsys.readouterr().err
    labels = np.asarray(Image.open(out / "labels" / "chelsea.png"))
    if mode == "ms_flip":  # the foreground probabilities (sigmoid) averaged over the views, then > 0.5
        total = 0
        for ratio in MMSEG_TTA_RATIOS:
            size = {"shortest_edge": int(64 * ratio), "longest_edge": int(256 * ratio)}
            pixel_values = processor(images=photo, size=size, return_tensors="pt")["pixel_values"]
            for flip in (False, True):
                with torch.no_grad():
                    logits = binary(pixel_values=pixel_values.flip(-1) if flip else pixel_values).logits
                logits = F.interpolate(logits, size=(photo.height, photo.width), mode="bilinear", align_corners=False)
                foreground = torch.sigmoid(logits[0, 0])
                total = total + (foreground.flip(-1) if flip else foreground)
        foreground = total / (2 * len(MMSEG_TTA_RATIOS))
    else:
        foreground = torch.sigmoid(model_logits(binary, processor, photo, mode)[0, 0])
    by_hand = (foreground > 0.5).numpy()
    assert set(np.unique(labels)) == {0, 1}
    np.testing.assert_array_equal(labels, by_hand.astype(np.uint8))
    # The confidence of a binary model: max(p, 1 - p), in [0.5, 1].
    confidence = read_confidence(out / "confidence" / "chelsea.png")
    expected = torch.maximum(foreground, 1 - foreground).double().numpy()
    np.testing.assert_allclose(confidence, expected, atol=1 / 65535)
    assert confidence.min() >= 0.5 - 1 / 65535 and confidence.max() <= 1
    record = json.loads((out / "classes" / "chelsea.json").read_text())
    assert {c["label"] for c in record["classes"]} == {"background", "crack"}
    assert record["confidence"] == "confidence/chelsea.png"
    overlay = Image.open(out / "overlays" / "chelsea.png")
    assert overlay.width > photo.width  # the photo and a legend of the two classes


def test_binary_evaluation_is_a_two_class_miou(folders, tmp_path, capsys):
    """`setr evaluate` of a binary model on synthetic 0/1 masks: mIoU over background and the class, by hand."""
    from transformers_setr.data.synthetic import make_synthetic_custom

    root, binary, _, processor, _ = folders
    data = make_synthetic_custom(tmp_path / "data", layout="folder", num_train=1, num_validation=3)
    masks = sorted((data / "masks" / "val").glob("*.png"))
    for path in masks:  # the user's binary masks: one of the synthetic classes is the foreground
        values = np.asarray(Image.open(path))
        Image.fromarray((values == np.bincount(values.ravel()).argmax()).astype(np.uint8)).save(path)
    (data / "id2label.json").write_text(json.dumps({"0": "background", "1": "crack"}))
    argv = ["evaluate", "--model", str(root / "binary"), "--data", str(data), "--split", "validation"]
    assert cli.main([*argv, "--mode", "whole", "--output", str(tmp_path / "r.json"), "--no_progress"]) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    intersection, union = np.zeros(2), np.zeros(2)
    for path in masks:
        image = Image.open(data / "images" / "val" / f"{path.stem}.jpg").convert("RGB")
        truth = np.asarray(Image.open(path))
        predicted = (model_logits(binary, processor, image, "whole")[0, 0] > 0).numpy()
        for value, where in ((0, ~predicted), (1, predicted)):
            intersection[value] += (where & (truth == value)).sum()
            union[value] += (where | (truth == value)).sum()
    assert results["per_class_iou"] == pytest.approx(dict(zip(("background", "crack"), intersection / union)))
    assert results["mIoU"] == pytest.approx(float(np.mean(intersection / union)))
    assert 0 < results["per_class_iou"]["crack"] < 1


def test_onnx_export_of_a_binary_model(folders, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from transformers_setr.apps import onnx_export

    root, binary, _, processor, photo = folders
    output = tmp_path / "binary.onnx"
    check = str(root / "photos" / "chelsea.png")
    assert cli.main(["export-onnx", "--model", str(root / "binary"), "--output", str(output), "--check", check]) == 0
    table = capsys.readouterr().out
    assert table.count("| 100.0000% |") == 2, table  # whole and slide: every pixel thresholded alike
    onnx_model = onnx_export.OnnxSetr(output)
    pixel_values = processor(images=photo, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        reference = binary(pixel_values=pixel_values, inference_mode="whole").logits
    assert reference.shape[1] == 1
    assert onnx_export.compare(reference, onnx_model.logits(pixel_values))["max_abs_diff"] <= 1e-4
    # The agreement of one channel is that of its sign (an argmax over one channel would always agree).
    flipped = reference.clone()
    flipped[..., :8, :] = -flipped[..., :8, :]
    disagree = ((reference[..., :8, :] != 0).sum() / reference.numel()).item()
    assert onnx_export.compare(reference, flipped)["argmax_agreement"] == pytest.approx(1 - disagree)


# ----------------------------------------------------------------------------------------------------------------
# Confidence


@pytest.mark.parametrize("mode", ["whole", "slide", "ms_flip"])
def test_confidence_is_the_probability_of_the_predicted_class(folders, tmp_path, capsys, mode):
    root, _, multi, processor, photo = folders
    argv = ["segment", str(root / "photos"), "--model", str(root / "multi"), "--mode", mode]
    assert cli.main([*argv, "--output", str(tmp_path / "plain")]) == 0
    assert cli.main([*argv, "--output", str(tmp_path / "conf"), "--save_confidence"]) == 0, capsys.readouterr().err
    labels = np.asarray(Image.open(tmp_path / "conf" / "labels" / "chelsea.png"))
    # The flag changes no label.
    np.testing.assert_array_equal(labels, np.asarray(Image.open(tmp_path / "plain" / "labels" / "chelsea.png")))
    assert not (tmp_path / "plain" / "confidence").exists()
    if mode == "ms_flip":
        probabilities = ms_flip_probabilities(multi, processor, photo)
    else:  # slide: the model averages the window logits, then the softmax
        probabilities = model_logits(multi, processor, photo, mode)[0].softmax(0)
    np.testing.assert_array_equal(labels, probabilities.argmax(0).numpy())
    confidence = read_confidence(tmp_path / "conf" / "confidence" / "chelsea.png")
    assert confidence.shape == (photo.height, photo.width)
    np.testing.assert_allclose(confidence, probabilities.amax(0).double().numpy(), atol=1 / 65535)
    assert confidence.min() >= 1 / len(CLASS_NAMES) - 1 / 65535 and confidence.max() <= 1
    assert confidence.std() > 0.01  # not a constant map
    page = (tmp_path / "conf" / "index.html").read_text()
    assert 'href="confidence/chelsea.png"' in page


def test_bounded_memory_confidence_equals_the_full_softmax():
    """The few-channels-at-a-time pass (online softmax) gives the labels and the max probability of the full
    resize, whatever the memory bound; ties keep the first class."""
    generator = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(1, 7, 13, 17, generator=generator)
    logits[:, 5] = logits[:, 2]
    full = F.interpolate(logits, size=(101, 83), mode="bilinear", align_corners=False)
    for max_bytes in (1, 101 * 83 * 4 * 5, 10**9):
        labels, confidence = segment.upsampled_prediction(logits, (101, 83), max_bytes=max_bytes, confidence=True)
        assert torch.equal(labels.long(), full.argmax(1)[0])
        torch.testing.assert_close(confidence, full.softmax(1).amax(1)[0], atol=2e-6, rtol=0)
        assert torch.equal(segment.upsampled_argmax(logits, (101, 83), max_bytes=max_bytes).long(), labels.long())
    # one channel: the logit's sign, and max(sigmoid, 1 - sigmoid)
    labels, confidence = segment.upsampled_prediction(logits[:, :1], (101, 83), max_bytes=1, confidence=True)
    assert torch.equal(labels, (full[0, 0] > 0).long())
    torch.testing.assert_close(confidence, torch.sigmoid(full[0, 0].abs()))


def test_skip_existing_with_confidence_redoes_an_image_without_its_map(folders, tmp_path, capsys):
    root, *_ = folders
    argv = ["segment", str(root / "photos"), "--model", str(root / "multi"), "--output", str(tmp_path / "o")]
    assert cli.main([*argv, "--mode", "whole"]) == 0
    assert cli.main([*argv, "--mode", "whole", "--save_confidence", "--skip_existing"]) == 0
    assert "1 segmented, 0 skipped" in capsys.readouterr().err
    assert (tmp_path / "o" / "confidence" / "chelsea.png").is_file()


# ----------------------------------------------------------------------------------------------------------------
# Refusals


def one_error_line(capsys, command: str) -> str:
    """The error of a command: one line `setr <command>: error: ...` (beside the weights' loading bar, if any)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("Loading weights")]
    assert len(lines) == 1 and lines[0].startswith(f"setr {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_export_never_writes_over_its_input(folders, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    root, *_ = folders
    model = root / "binary"
    weights = model / "model.safetensors"
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    photo = root / "photos" / "chelsea.png"
    os.link(weights, tmp_path / "hardlink.onnx")
    (tmp_path / "symlink.onnx").symlink_to(model / "config.json")
    for output in (weights, model, model / "config.json", tmp_path / "hardlink.onnx", tmp_path / "symlink.onnx"):
        code = cli.main(["export-onnx", "--model", str(model), "--output", str(output), "--overwrite"])
        assert code == 2
        assert "would write over the model" in one_error_line(capsys, "export-onnx")
    code = cli.main(
        ["export-onnx", "--model", str(model), "--output", str(photo), "--overwrite", "--check", str(photo)]
    )
    assert code == 2
    assert "would write over the --check image" in one_error_line(capsys, "export-onnx")
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    assert photo.is_file() and Image.open(photo).size == (451, 300)


@pytest.mark.parametrize("opset", ["7", "17", "24", "-1"])
def test_export_refuses_an_opset_it_cannot_write(folders, tmp_path, capsys, opset):
    root, *_ = folders
    output = tmp_path / "m.onnx"
    assert cli.main(["export-onnx", "--model", str(root / "binary"), "--output", str(output), "--opset", opset]) == 2
    assert "opsets 18 to 23" in one_error_line(capsys, "export-onnx")
    assert not output.exists() and not list(tmp_path.iterdir())


def test_export_failure_is_one_line_and_non_zero(folders, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxscript")
    from transformers_setr.apps import onnx_export

    def broken_export(*args, **kwargs):
        raise RuntimeError("Failed to convert the model to the target version 7 using the ONNX C API\nmore lines")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    root, *_ = folders
    code = onnx_export.main(["--model", str(root / "binary"), "--output", str(tmp_path / "m.onnx")])
    assert code == 1
    assert "the export failed (RuntimeError: Failed to convert" in one_error_line(capsys, "export-onnx")
    assert not list(tmp_path.iterdir())


def test_pipeline_names_a_missing_file(folders, tmp_path):
    root, *_ = folders
    segmenter = pipeline("image-segmentation", model=str(root / "binary"))
    for missing in ("no/such.jpg", str(tmp_path / "gone.png"), "photo.png", "~/nothing/here"):
        with pytest.raises(FileNotFoundError, match=f"^no such file: {missing}$"):
            segmenter(missing)
    # base64 data still works, and bad base64 is still called that
    buffer = io.BytesIO()
    Image.open(root / "photos" / "chelsea.png").save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    assert {r["label"] for r in segmenter(encoded)} == {"background", "crack"}
    assert {r["label"] for r in segmenter(f"data:image/png;base64,{encoded}")} == {"background", "crack"}
    with pytest.raises(ValueError, match="no base64 image data"):
        segmenter("bm90IGFuIGltYWdl")  # base64 of "not an image"


@pytest.mark.parametrize(
    "argv",
    [
        ["segment"],
        ["segment", "x.jpg"],
        ["segment", "x.jpg", "--model", "m", "--batch_size", "two"],
        ["segment", "x.jpg", "--model", "m", "--mode", "bogus"],
        ["segment", "x.jpg", "--model", "m", "--batch_size", "0"],
        ["segment", "x.jpg", "--model", "m", "--save_confidence=yes"],
        ["demo"],
        ["demo", "--model", "m", "--port", "http"],
        ["demo", "--model", "m", "--unknown"],
        ["export-onnx", "--model", "m"],
        ["export-onnx", "--model", "m", "--output", "o.onnx", "--opset", "eighteen"],
        ["export-onnx", "--model", "m", "--output", "o.onnx", "--opset", "99"],
    ],
)
def test_argument_errors_are_one_line(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    one_error_line(capsys, argv[0])


def test_demo_shows_a_binary_model_as_two_classes(folders):
    from transformers_setr.apps import demo

    root, *_ = folders
    cache = demo.ModelCache([str(root / "binary")], "cpu")
    photo, model = str(root / "photos" / "chelsea.png"), str(root / "binary")
    overlay, legend, rows, timing = demo.segment_photo(cache, photo, model, "whole")
    assert sorted(row[1] for row in rows) == ["background", "crack"]
    assert "background" in legend and "crack" in legend
    assert sum(row[2] for row in rows) == pytest.approx(100, abs=0.02)
