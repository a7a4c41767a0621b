"""Everything downstream of a backbone model (issue 23, part 4), on tiny random encoders of each kind: patch 14
(dinov2, dinov2_with_registers), BEiT (relative position bias) and a timm ViT (DeiT-III); the pipeline (whole, slide,
ms_flip), `setr evaluate`, `setr segment`, the demo's prediction, the ONNX export with parity at two input sizes, the
save/load round trip with the processor, and the CPU fast path (part 5)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

from transformers_setr import SetrForSemanticSegmentation, SetrImageProcessorPil
from transformers_setr.cli import main as setr
from transformers_setr.inference import predict_labels
from transformers_setr.models.setr.image_processing_base_setr import labels_from_scores
from transformers_setr.models.setr.modeling_setr import patch_grid_size

from helpers.backbone_families import family_config, setr_config

FAMILIES = ["dinov2", "dinov2_with_registers", "beit", "deit3_small_patch16_224"]
HEIGHT, WIDTH = 100, 150  # the input: not a multiple of 14 or 16, padded inside the model


def he_scaled(model: SetrForSemanticSegmentation, seed: int = 0) -> SetrForSemanticSegmentation:
    """Random BatchNorm statistics and He-scaled weights: logits of order 1 with several classes per image (the 0.02
    init gives one class everywhere and differences too small to mean anything)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 2, generator=generator)
        for name, parameter in model.named_parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0, (2 / parameter[0].numel()) ** 0.5, generator=generator)
            elif "position" in name or "cls_token" in name or "register" in name:
                parameter.normal_(0, 0.5, generator=generator)
    return model.eval()


def save_backbone_model(folder, family: str, num_labels: int = 5, **config):
    """A tiny PUP SETR on `family`, slide windows of 64 every 43, and a processor that keeps a 100x150 image as it is
    (keep-ratio, shortest edge 100): saved as `save_pretrained` writes them."""
    settings = dict(inference_mode="slide", slide_crop_size=64, slide_stride=43, num_labels=num_labels, **config)
    torch.manual_seed(0)
    model = he_scaled(SetrForSemanticSegmentation(setr_config(family_config(family), "pup", **settings)))
    model.save_pretrained(folder)
    processor = SetrImageProcessorPil(size={"shortest_edge": HEIGHT, "longest_edge": 4 * HEIGHT})
    processor.save_pretrained(folder)
    return model, processor


def photograph() -> Image.Image:
    """A 150x100 RGB image with structure (smooth colour ramps and a square), so the classes form regions."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    rgb = np.stack([x * 255 / WIDTH, y * 255 / HEIGHT, 128 + 100 * np.sin(x / 9.0) * np.cos(y / 7.0)], axis=-1)
    rgb[30:70, 60:110] = (250, 20, 40)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> (folder, model); built once per family."""
    root, built = tmp_path_factory.mktemp("backbone-models"), {}

    def get(family: str):
        if family not in built:
            built[family] = (root / family, save_backbone_model(root / family, family)[0])
        return built[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_pipeline_whole_slide_and_ms_flip_at_100x150(saved, family, tmp_path):
    folder, model = saved(family)
    image = photograph()
    image.save(tmp_path / "photo.png")
    # save / load with the processor: the Auto classes give the model's own logits on the processed image
    processor = AutoImageProcessor.from_pretrained(folder)
    loaded = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape[-2:] == (HEIGHT, WIDTH)
    with torch.no_grad():
        whole = loaded(pixel_values, inference_mode="whole").logits
        assert torch.equal(whole, model(pixel_values, inference_mode="whole").logits)
    # PUP logits cover the padded input at 16x the patch grid: 16/14 of it for patch 14 (100x150 -> 112x154 -> 128x176)
    patch = model.config.patch_size
    grid = patch_grid_size(HEIGHT, WIDTH, patch)
    assert whole.shape[-2:] == (16 * grid[0], 16 * grid[1])
    by_hand = labels_from_scores(F.interpolate(whole, size=(HEIGHT, WIDTH), mode="bilinear"), dim=1)[0]
    assert torch.equal(predict_labels(loaded, pixel_values, (HEIGHT, WIDTH), "whole"), by_hand)

    # the pipeline runs the model's own mode (slide: 2x3 windows of 64, each padded to the patch size)
    slide = predict_labels(loaded, pixel_values, (HEIGHT, WIDTH), "slide")
    masks = pipeline("image-segmentation", model=str(folder))(str(tmp_path / "photo.png"))
    from_pipeline = torch.full((HEIGHT, WIDTH), -1)
    for mask in masks:
        assert mask["mask"].size == (WIDTH, HEIGHT)
        from_pipeline[torch.from_numpy(np.asarray(mask["mask"]) > 0)] = int(mask["label"].removeprefix("LABEL_"))
    assert torch.equal(from_pipeline, slide) and len(masks) > 1

    if family != "dinov2":
        return  # ms_flip (12 views) once, on patch 14
    ms_flip = predict_labels(loaded, pixel_values, (HEIGHT, WIDTH), "ms_flip", image, processor)
    assert ms_flip.shape == (HEIGHT, WIDTH) and ms_flip.min() >= 0 and ms_flip.max() < 5
    assert (ms_flip == slide).float().mean() > 0.5  # the same model at six scales and flips, averaged


@pytest.mark.parametrize("family", ["dinov2", "deit3_small_patch16_224"])
def test_segment_a_folder_and_the_demo(saved, family, tmp_path, capsys):
    from transformers_setr.apps import demo

    folder, model = saved(family)
    photos = tmp_path / "photos"
    photos.mkdir()
    photograph().save(photos / "ramp.png")
    photograph().resize((91, 37)).save(photos / "small.png")  # smaller than a window, sides not multiples of 14
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert setr(["segment", str(photos), "--model", str(folder), "--output", str(tmp_path / "out")]) == 1
    errors = capsys.readouterr().err
    assert "Traceback" not in errors and "2 segmented, 0 skipped (already done), 1 failed" in errors
    processor = AutoImageProcessor.from_pretrained(folder)
    for name in ("ramp", "small"):
        image = Image.open(photos / f"{name}.png").convert("RGB")
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        expected = predict_labels(model, pixel_values, (image.height, image.width), "slide")
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "labels" / f"{name}.png")), expected.numpy())

    _, _, rows, timing = demo.segment_photo(
        demo.ModelCache([str(folder)], "cpu"), str(photos / "ramp.png"), str(folder), "whole"
    )
    image = Image.open(photos / "ramp.png").convert("RGB")
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    labels = predict_labels(model, pixel_values, (image.height, image.width), "whole")
    ids, counts = torch.unique(labels, return_counts=True)
    shares = {int(i): round(100 * int(c) / labels.numel(), 2) for i, c in zip(ids, counts)}
    assert {row[0]: row[2] for row in rows} == shares and "whole" in timing


def test_evaluate_command_on_a_patch_14_backbone(tmp_path, capsys):
    from transformers_setr.data import load_segmentation_data
    from transformers_setr.data.synthetic import make_synthetic_ade20k
    from transformers_setr.evaluation import evaluate_segmentation

    root = make_synthetic_ade20k(tmp_path / "data", num_train=1, num_validation=3, image_size=(40, 57))
    model, processor = save_backbone_model(tmp_path / "model", "dinov2", num_labels=150)
    output = tmp_path / "eval.json"
    argv = ["evaluate", "--model", str(tmp_path / "model"), "--data", str(root), "--mode", "slide"]
    argv += ["--max_samples", "2", "--device", "cpu", "--num_workers", "0", "--no_progress", "--output", str(output)]
    assert setr(argv) == 0
    written = json.loads(output.read_text())
    expected = evaluate_segmentation(
        model, processor, load_segmentation_data(root), mode="slide", progress=False, max_samples=2
    )
    assert written["num_images"] == 2 and written["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-12)
    assert written["aAcc"] == pytest.approx(expected["aAcc"], abs=1e-12)


pytest.importorskip("onnxscript", reason="the ONNX export needs the [onnx] extra (onnx, onnxscript, onnxruntime)")


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_export_holds_at_two_input_sizes(saved, family, tmp_path, capsys):
    """Each family's own position-table interpolation in the graph: parity at 100x150 and at a grid with the
    position table's token count in another shape (2x8 against 4x4), which a backbone interpolates (the built-in
    encoder's mmseg rule, a table added unresized, does not apply to it)."""
    from transformers_setr.apps import onnx_export

    folder, model = saved(family)
    photograph().save(tmp_path / "photo.png")
    output = tmp_path / "model.onnx"
    assert (
        onnx_export.main(["--model", str(folder), "--output", str(output), "--check", str(tmp_path / "photo.png")])
        == 0
    )
    table = capsys.readouterr().out
    assert "| 100x150 | whole |" in table and "| 100x150 | slide |" in table
    session = onnx_export.OnnxSetr(output)
    assert session.encoder == model.config.backbone_config.model_type
    patch = model.config.patch_size
    assert model.config.image_grid == (4, 4)
    for size in ((HEIGHT, WIDTH), (2 * patch, 8 * patch)):
        pixel_values = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            reference = model(pixel_values, inference_mode="whole").logits
        result = onnx_export.compare(reference, session.logits(pixel_values))
        assert reference.abs().max() > 0.5  # logits of order 1: the tolerance below means something
        assert result["max_abs_diff"] <= 1e-4 and result["argmax_agreement"] >= 0.999, (size, result)


def test_onnx_export_refuses_a_graph_fixed_to_the_example_size(saved, tmp_path, capsys, monkeypatch):
    """Without keeping transformers' `torch_int` symbolic, BEiT's relative-position table is sized for the example
    input: the second-size check refuses the graph (one line, exit 1), and no file is written."""
    import contextlib

    from transformers_setr.apps import onnx_export

    folder, _ = saved("beit")
    monkeypatch.setattr(onnx_export, "symbolic_torch_int", lambda model: contextlib.nullcontext())
    output = tmp_path / "model.onnx"
    assert onnx_export.main(["--model", str(folder), "--output", str(output)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # not the progress bars
    assert len(errors) == 1 and "works only at the example input size" in errors[0], errors
    assert not output.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_path_on_each_family(saved, family):
    """`optimize_for_inference` swaps only the `nn.Linear`s of a backbone (its attention, MLP and layer modules are
    not SETR's) and the PUP head. Not bit-identical in float32, as for the built-in encoder: `InferenceLinear` runs
    oneDNN's matmul where `F.linear` runs MKL's, which sums in another order. Measured on these tiny He-scaled models
    (logits of order 1): max abs difference 1e-7 to 1e-6; at ViT-L size with random weights, see
    benchmarks/RESULTS.md (the benchmark prints it per family)."""
    from transformers_setr.models.setr.fast_inference_setr import InferenceLinear, optimize_for_inference

    _, model = saved(family)
    pixel_values = torch.randn(1, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = model(pixel_values, inference_mode="whole").logits
        optimized = optimize_for_inference(model)
        fast = optimized(pixel_values, inference_mode="whole").logits
    linears = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is InferenceLinear for m in linears)
    assert plain.abs().max() > 0.5
    assert (fast - plain).abs().max().item() < 1e-5
    assert (labels_from_scores(fast, dim=1) == labels_from_scores(plain, dim=1)).float().mean() > 0.999
