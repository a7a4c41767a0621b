"""Sliding-window inference and multi-scale + flip test-time augmentation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import pipeline

from transformers_setr import SetrForSemanticSegmentation, SetrImageProcessorPil
from transformers_setr.inference import multi_scale_flip_probabilities
from transformers_setr.models.setr.modeling_setr import slide_windows

from conftest import DECODERS, randomise_batch_norm, tiny_config


def build(decoder_type: str = "pup", **overrides) -> SetrForSemanticSegmentation:
    model = SetrForSemanticSegmentation(tiny_config(decoder_type, **overrides)).eval()
    randomise_batch_norm(model)
    return model


def test_window_grid_follows_mmseg_formula():
    # The examples of the reference notes: ADE20K 512x683 -> x1 in {0, 171}; Cityscapes 1025x2049 -> 2 x 4 windows.
    assert slide_windows(512, 683, (512, 512), (341, 341)) == [(0, 512, 0, 512), (0, 512, 171, 683)]
    cityscapes = slide_windows(1025, 2049, (768, 768), (512, 512))
    assert len(cityscapes) == 8
    assert sorted({(y1, y2) for y1, y2, _, _ in cityscapes}) == [(0, 768), (257, 1025)]
    assert sorted({(x1, x2) for _, _, x1, x2 in cityscapes}) == [(0, 768), (512, 1280), (1024, 1792), (1281, 2049)]
    # Smaller than the window: one window of the image's own size.
    assert slide_windows(300, 437, (512, 512), (341, 341)) == [(0, 300, 0, 437)]


def reference_slide(model, pixel_values, crop, stride):
    """mmseg's slide_inference written out: pad each window's logits into place, add, divide by the count."""
    batch, _, height, width = pixel_values.shape
    h_grids = max(height - crop + stride - 1, 0) // stride + 1
    w_grids = max(width - crop + stride - 1, 0) // stride + 1
    preds = count = None
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * stride, w_idx * stride
            y2, x2 = min(y1 + crop, height), min(x1 + crop, width)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            window = pixel_values[:, :, y1:y2, x1:x2]
            logits = model(window, inference_mode="whole").logits
            logits = F.interpolate(logits, size=window.shape[-2:], mode="bilinear", align_corners=False)
            if preds is None:
                preds = logits.new_zeros((batch, logits.shape[1], height, width))
                count = logits.new_zeros((batch, 1, height, width))
            preds += F.pad(logits, (x1, width - x2, y1, height - y2))
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count


@pytest.mark.parametrize("decoder_type", DECODERS)
@pytest.mark.parametrize("shape", [(1, 64, 64), (2, 100, 150), (1, 40, 57), (1, 64, 200)])
def test_slide_inference_matches_mmseg_loop(decoder_type, shape):
    model = build(decoder_type, slide_stride=42)
    pixel_values = torch.randn(shape[0], 3, *shape[1:])
    with torch.no_grad():
        expected = reference_slide(model, pixel_values, 64, 42)
        for batch_size in (1, 3, 64):  # windows batched any way give the same result
            logits = model.slide_inference(pixel_values, batch_size=batch_size)
            assert logits.shape == (shape[0], 5, *shape[1:])
            torch.testing.assert_close(logits, expected, rtol=0, atol=2e-6)


def test_forward_uses_the_configured_protocol():
    model = build("naive", inference_mode="slide", slide_stride=42)
    pixel_values = torch.randn(1, 3, 80, 130)
    with torch.no_grad():
        slide = model(pixel_values).logits
        whole = model(pixel_values, inference_mode="whole").logits
        torch.testing.assert_close(slide, model.slide_inference(pixel_values), rtol=0, atol=0)
    assert slide.shape[-2:] == (80, 130) and whole.shape[-2:] == (5 * 4, 9 * 4)
    # Training and loss computation always run on the whole input.
    labels = torch.zeros(1, 80, 130, dtype=torch.long)
    with torch.no_grad():
        assert model(pixel_values, labels=labels).logits.shape == whole.shape
    with pytest.raises(ValueError, match="per window"):
        model(pixel_values, output_hidden_states=True)
    with pytest.raises(ValueError, match="inference_mode must be"):
        model(pixel_values, inference_mode="tiles")


def test_pipeline_follows_the_slide_protocol(tmp_path):
    model = build("pup", inference_mode="slide", slide_stride=42)
    processor = SetrImageProcessorPil(size={"shortest_edge": 96, "longest_edge": 384})
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8))
    results = pipeline("image-segmentation", model=model, image_processor=processor)(image)
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = reference_slide(model, pixel_values, 64, 42)
    expected = F.interpolate(logits, size=(120, 200), mode="bilinear", align_corners=False)[0].argmax(0)
    for result in results:
        class_id = model.config.label2id[result["label"]]
        assert np.array_equal(np.array(result["mask"]) > 0, (expected == class_id).numpy())


def test_multi_scale_flip_is_a_probability_average_and_flip_equivariant():
    model = build("mla", inference_mode="slide")
    processor = SetrImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 256})
    array = np.random.default_rng(1).integers(0, 255, (70, 110, 3), dtype=np.uint8)
    image, mirrored = Image.fromarray(array), Image.fromarray(array[:, ::-1].copy())
    probabilities = multi_scale_flip_probabilities(model, processor, image, ratios=(0.75, 1.0, 1.5))
    assert probabilities.shape == (5, 70, 110)
    torch.testing.assert_close(probabilities.sum(0), torch.ones(70, 110))
    # Averaging each view with its mirror makes the result mirror-equivariant.
    mirrored_probabilities = multi_scale_flip_probabilities(model, processor, mirrored, ratios=(0.75, 1.0, 1.5))
    torch.testing.assert_close(mirrored_probabilities, probabilities.flip(-1), rtol=0, atol=1e-5)
    # One scale, no flip: the softmax of the model's logits resized to the image.
    single = multi_scale_flip_probabilities(model, processor, image, ratios=(1.0,), flip=False)
    with torch.no_grad():
        logits = model(processor(images=image, return_tensors="pt")["pixel_values"]).logits
    expected = F.interpolate(logits, size=(70, 110), mode="bilinear", align_corners=False).softmax(1)[0]
    torch.testing.assert_close(single, expected)


@pytest.mark.parametrize(
    ("crop_size", "stride", "message"),
    [
        (64, 0, r"crop size \(64, 64\) and stride \(0, 0\) must be positive"),
        (-64, 32, r"crop size \(-64, -64\) and stride \(32, 32\) must be positive"),
        ((32, 0), 16, "must be positive"),
        (32, 33, r"stride \(33, 33\) is larger than the crop size \(32, 32\): the windows would leave gaps"),
        (32, (16, 40), "is larger than the crop size"),
        (32.5, 16, "crop size must be an int or a pair of ints"),
        ((32,), 16, "crop size must be an int or a pair of ints"),
        (32, True, "stride must be an int or a pair of ints"),
    ],
)
def test_slide_window_is_validated_per_call(crop_size, stride, message):
    model = build("naive")
    pixel_values = torch.randn(1, 3, 100, 100)
    with pytest.raises(ValueError, match=message):
        model.slide_inference(pixel_values, crop_size=crop_size, stride=stride)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_slide_batch_size_is_validated_per_call(batch_size):
    with pytest.raises(ValueError, match=f"sliding-window batch_size must be a positive int, got {batch_size}"):
        build("naive").slide_inference(torch.randn(1, 3, 100, 100), batch_size=batch_size)


def test_a_stride_larger_than_the_crop_is_an_error_not_nan_logits():
    # Windows of 32 every 40 pixels leave columns 32..39 and 72..79 uncovered: their average would be 0 / 0.
    model = build("naive", inference_mode="slide", slide_crop_size=32, slide_stride=32)
    message = r"stride \(40, 40\) is larger than the crop size \(32, 32\)"
    with pytest.raises(ValueError, match=message):
        model.slide_inference(torch.randn(1, 3, 100, 100), stride=40)
    model.config.slide_stride = 40  # changed after construction: checked again at the call
    with pytest.raises(ValueError, match=message), torch.no_grad():
        model(torch.randn(1, 3, 100, 100))
    model.config.slide_stride = 32
    # A stride equal to the crop tiles the image: full coverage, finite logits.
    with torch.no_grad():
        assert torch.isfinite(model.slide_inference(torch.randn(1, 3, 100, 100), stride=32)).all()
