"""`setr export-onnx` (`scripts/export_onnx.py`): the exported graph against PyTorch on real photographs."""

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor

pytest.importorskip("onnxscript", reason="the ONNX export needs the [onnx] extra (onnx, onnxscript, onnxruntime)")
pytest.importorskip("onnxruntime", reason="the ONNX check needs the [onnx] extra (onnxruntime)")
pytest.importorskip("skimage.data")
from transformers_setr.apps import onnx_export  # noqa: E402

from helpers.photo_folder import photographs, save_tiny_model  # noqa: E402

TOLERANCE = 1e-4  # fp32, max abs logit difference


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    model, _ = save_tiny_model(root / "model", decoder_type="pup")
    photos = photographs()
    (root / "photos").mkdir()
    photos["chelsea.jpg"].save(root / "photos" / "chelsea.png")
    output = root / "setr.onnx"
    code = onnx_export.main(
        ["--model", str(root / "model"), "--output", str(output), "--check", str(root / "photos" / "chelsea.png")]
    )
    assert code == 0
    return root, model, onnx_export.OnnxSetr(output), photos


def processed(root, image, shortest_edge: int) -> torch.Tensor:
    """A photograph at one test scale (keep-ratio, as the model's processor resizes)."""
    processor = AutoImageProcessor.from_pretrained(root / "model")
    size = {"shortest_edge": shortest_edge, "longest_edge": 4 * shortest_edge}
    return processor(images=image.convert("RGB"), size=size, return_tensors="pt")["pixel_values"]


def test_whole_image_parity_at_three_sizes(exported, capsys):
    root, model, onnx_model, photos = exported
    rows = []
    # 48x48, 64x96 (the position table's own grid count differs) and 100x150 (not a multiple of 16: padded).
    for name, shortest in (("astronaut.jpg", 48), ("coffee.png", 64), ("chelsea.jpg", 100)):
        pixel_values = processed(root, photos[name], shortest)
        with torch.inference_mode():
            reference = model(pixel_values=pixel_values, inference_mode="whole").logits
        logits = onnx_model.logits(pixel_values)
        assert logits.shape == reference.shape
        rows.append({"size": "x".join(map(str, pixel_values.shape[-2:])), **onnx_export.compare(reference, logits)})
    with capsys.disabled():
        print("\nONNX whole-image parity:", rows)
    assert len({row["size"] for row in rows}) == 3
    assert all(row["max_abs_diff"] <= TOLERANCE for row in rows), rows
    assert all(row["argmax_agreement"] >= 0.999 for row in rows), rows


def test_slide_through_onnxruntime_matches_pytorch_slide(exported):
    root, model, onnx_model, photos = exported
    pixel_values = processed(root, photos["chelsea.jpg"], 100)  # 100x150: 2x3 windows of 64, stride 43
    with torch.inference_mode():
        reference = model.slide_inference(pixel_values)
        by_mode = model(pixel_values=pixel_values).logits  # the model's protocol is slide
    logits = onnx_model(pixel_values)
    assert onnx_model.inference_mode == "slide" and logits.shape == reference.shape == (1, 6, 100, 150)
    torch.testing.assert_close(by_mode, reference, rtol=0, atol=0)
    result = onnx_export.compare(reference, logits)
    assert result["max_abs_diff"] <= TOLERANCE and result["argmax_agreement"] >= 0.999, result


def test_batches_and_the_command_line_checks(exported, tmp_path, capsys):
    root, model, onnx_model, photos = exported
    batch = torch.cat([processed(root, photos["astronaut.jpg"], 64)] * 3)  # batch 3, 64x64: the table's own grid
    with torch.inference_mode():
        reference = model(pixel_values=batch, inference_mode="whole").logits
    assert onnx_export.compare(reference, onnx_model.logits(batch))["max_abs_diff"] <= TOLERANCE
    # The same token count as the 4x4 table in another shape: mmseg adds the table unresized; refused, not wrong.
    with pytest.raises(ValueError, match="as many tokens as the 4x4 position table"):
        onnx_model.logits(torch.zeros(1, 3, 32, 128))

    existing = root / "setr.onnx"
    before = existing.read_bytes()
    assert onnx_export.main(["--model", str(root / "model"), "--output", str(existing)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert existing.read_bytes() == before
    assert onnx_export.main(["--model", str(tmp_path / "missing"), "--output", str(tmp_path / "x.onnx")]) == 2
    assert "cannot load a model" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]
    assert np.isfinite(onnx_model.logits(batch[:1]).numpy()).all()
