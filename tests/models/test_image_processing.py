"""Tests of the SETR image processors (PIL/NumPy backend and torchvision backend).

The reference for every numeric check is computed independently of the processors: the mmcv size rule by hand,
bilinear resizing with `torch.nn.functional.interpolate` (and cv2 when it is installed), normalisation with mmseg's
0-255 mean/std.
"""

import ast
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput

from transformers_setr.models.setr import image_processing_base_setr
from transformers_setr.models.setr.image_processing_pil_setr import (
    SetrImageProcessorPil,
    get_setr_resize_output_size,
    nearest_source_indices,
    reduce_segmentation_labels,
)

ADE = {"shortest_edge": 512, "longest_edge": 2048}  # mmseg scale (2048, 512)
CITYSCAPES = {"shortest_edge": 1025, "longest_edge": 2049}  # mmseg scale (2049, 1025)
MEAN_255 = np.array([123.675, 116.28, 103.53])  # mmseg's values, not derived from the processor
STD_255 = np.array([58.395, 57.12, 57.375])
RAW = {"do_rescale": False, "do_normalize": False}  # return the resized uint8 pixels


@pytest.fixture(params=["pil", "torchvision"])
def processor_class(request):
    if request.param == "torchvision":
        pytest.importorskip("torchvision", reason="the torchvision backend needs torchvision")
        from transformers_setr.models.setr.image_processing_setr import SetrImageProcessor

        return SetrImageProcessor
    return SetrImageProcessorPil


@pytest.fixture
def torchvision_processor_class():
    pytest.importorskip("torchvision", reason="the torchvision backend needs torchvision")
    from transformers_setr.models.setr.image_processing_setr import SetrImageProcessor

    return SetrImageProcessor


def _np(x) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _photos() -> dict[str, np.ndarray]:
    skimage_data = pytest.importorskip("skimage.data")
    return {name: getattr(skimage_data, name)() for name in ("astronaut", "coffee", "chelsea")}


def _reference_bilinear(image_hwc: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    x = torch.from_numpy(image_hwc).permute(2, 0, 1)[None].to(torch.float32)
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    return y.round().clamp(0, 255).to(torch.uint8)[0].numpy()


# ---------------------------------------------------------------------------------------------------------------------
# Size rule


@pytest.mark.parametrize(
    ("height", "width", "size", "expected"),
    [
        (512, 683, ADE, (512, 683)),  # ADE val image: short side already 512
        (375, 500, ADE, (512, 683)),  # int(500 * 512 / 375 + 0.5) = int(683.17) = 683
        (1024, 2048, CITYSCAPES, (1025, 2049)),  # Cityscapes: factor 2049/2048 -> 1024.5 + 0.5 -> 1025
        (4000, 300, ADE, (2048, 154)),  # extreme aspect: long-side limit, factor 2048/4000 = 0.512
        (300, 451, ADE, (512, 770)),  # int(451 * 512 / 300 + 0.5) = int(770.2) = 770
        (1000, 3, ADE, (2048, 6)),  # int(3 * 2.048 + 0.5) = 6
        (10, 20, {"height": 33, "width": 47}, (33, 47)),
    ],
)
def test_size_rule(height, width, size, expected):
    assert get_setr_resize_output_size((height, width), size) == expected


@pytest.mark.parametrize(
    ("height", "width", "size", "expected"),
    [
        (512, 683, ADE, (512, 683)),
        (1024, 2048, CITYSCAPES, (1025, 2049)),
        (4000, 300, ADE, (2048, 154)),
        (20, 30, {"height": 33, "width": 47}, (33, 47)),
    ],
)
def test_processor_output_size(processor_class, height, width, size, expected):
    image = np.zeros((height, width, 3), dtype=np.uint8)
    seg_map = np.zeros((height, width), dtype=np.int64)
    out = processor_class(size=size)(image, segmentation_maps=seg_map, return_tensors="pt")
    assert tuple(out["pixel_values"].shape) == (1, 3, *expected)
    assert tuple(out["labels"].shape) == (1, *expected)


def test_invalid_size_refused(processor_class):
    with pytest.raises(ValueError, match="size"):
        processor_class(size={"max_height": 10, "max_width": 10})(_random_image(8, 8), return_tensors="pt")


# ---------------------------------------------------------------------------------------------------------------------
# Resize / normalisation numerics


@pytest.mark.parametrize(
    ("in_size", "out_size"),
    [((64, 80), (37, 101)), ((100, 120), (33, 47)), ((50, 50), (128, 77)), ((31, 45), (512, 743))],
)
def test_resize_matches_torch_bilinear_without_antialias(processor_class, in_size, out_size):
    image = _random_image(*in_size, seed=sum(in_size))
    processor = processor_class(size={"height": out_size[0], "width": out_size[1]}, **RAW)
    ours = _np(processor(image, return_tensors="pt")["pixel_values"][0])
    assert ours.dtype == np.uint8  # rounded back to uint8 before normalisation, like mmseg
    diff = np.abs(ours.astype(np.int32) - _reference_bilinear(image, out_size).astype(np.int32))
    assert diff.max() <= 1
    assert diff.mean() < 0.01  # only rounding ties / float-order differences, not a systematic offset


def test_resize_differs_from_antialiased_resize():
    # Guard against an antialiased (PIL-style) downscale sneaking in: on noise it differs by far more than 1 level.
    image = _random_image(200, 300)
    ours = _np(
        SetrImageProcessorPil(size={"height": 50, "width": 75}, **RAW)(image, return_tensors="np")["pixel_values"]
    )
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    antialiased = F.interpolate(x, size=(50, 75), mode="bilinear", align_corners=False, antialias=True)[0].numpy()
    assert np.abs(ours[0].astype(np.float32) - antialiased).max() > 10


@pytest.mark.parametrize(("in_size", "out_size"), [((64, 80), (37, 101)), ((48, 64), (512, 683))])
def test_resize_matches_cv2_inter_linear(processor_class, in_size, out_size):
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is not installed")
    image = _random_image(*in_size, seed=3)
    reference = cv2.resize(image, (out_size[1], out_size[0]), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    processor = processor_class(size={"height": out_size[0], "width": out_size[1]}, **RAW)
    ours = _np(processor(image, return_tensors="pt")["pixel_values"][0])
    assert np.abs(ours.astype(np.int32) - reference.astype(np.int32)).max() <= 1


def test_backends_agree_on_photographs(torchvision_processor_class):
    """Measured on astronaut/coffee/chelsea at ADE and Cityscapes scales (2 CPU threads, torch 2.14.1):
    max |pil - torchvision| = 0.01751 in normalised units = 1 grey level / 57.12 (the smallest std);
    mean abs diff <= 3.5e-6; at most 2e-4 of the resized uint8 values differ, by exactly 1 level (float rounding
    order at .5 ties). Tolerances below: 1 grey level max, mean < 2e-5."""
    one_level = 1.0 / STD_255.min() + 1e-5
    for name, image in _photos().items():
        for size in (ADE, CITYSCAPES):
            pil = SetrImageProcessorPil(size=size)(image, return_tensors="pt")["pixel_values"]
            tv = torchvision_processor_class(size=size)(image, return_tensors="pt")["pixel_values"]
            assert pil.shape == tv.shape, name
            diff = (pil - tv).abs()
            assert diff.max().item() <= one_level, (name, size, diff.max().item())
            assert diff.mean().item() < 2e-5, (name, size, diff.mean().item())
            raw_pil = SetrImageProcessorPil(size=size, **RAW)(image, return_tensors="pt")["pixel_values"]
            raw_tv = torchvision_processor_class(size=size, **RAW)(image, return_tensors="pt")["pixel_values"]
            level_diff = (raw_pil.int() - raw_tv.int()).abs()
            assert level_diff.max().item() <= 1
            assert (level_diff > 0).float().mean().item() < 1e-3


def test_normalisation_matches_mmseg(processor_class):
    image = _random_image(17, 23, seed=7)
    out = processor_class(do_resize=False)(image, return_tensors="pt")["pixel_values"][0]
    assert out.dtype == torch.float32
    reference = (image.astype(np.float64) - MEAN_255) / STD_255
    assert np.abs(out.numpy() - reference.transpose(2, 0, 1)).max() < 1e-5


# ---------------------------------------------------------------------------------------------------------------------
# Segmentation maps


def test_reduce_labels(processor_class):
    seg_map = np.array([[0, 1, 2, 150, 255]], dtype=np.uint8)
    before = seg_map.copy()
    image = np.zeros((1, 5, 3), dtype=np.uint8)
    out = processor_class(do_resize=False, do_reduce_labels=True)(
        image, segmentation_maps=seg_map, return_tensors="pt"
    )
    assert out["labels"].dtype == torch.int64
    assert out["labels"][0].tolist() == [[255, 0, 1, 149, 255]]
    np.testing.assert_array_equal(seg_map, before)  # the caller's map is untouched
    # Images are never label-reduced.
    assert torch.allclose(
        out["pixel_values"], processor_class(do_resize=False)(image, return_tensors="pt")["pixel_values"]
    )


def test_reduce_labels_function_is_not_in_place():
    labels = torch.tensor([0, 1, 255, 300])
    reduced = reduce_segmentation_labels(labels)
    assert reduced.tolist() == [255, 0, 255, 299]
    assert labels.tolist() == [0, 1, 255, 300]


def test_labels_keep_values_above_255(processor_class):
    seg_map = np.array([[0, 300, 70000], [255, 256, 1]], dtype=np.int32)
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    processor = processor_class(size={"height": 4, "width": 6})
    labels = processor(image, segmentation_maps=seg_map, return_tensors="pt")["labels"]
    assert labels.dtype == torch.int64
    assert set(labels.unique().tolist()) == {0, 1, 255, 256, 300, 70000}
    # 256 - 1 would be 255, the ignore index: reduction refuses it rather than silently ignoring those pixels.
    with pytest.raises(ValueError, match="Segmentation map 0: the label value 256 would become 255, the ignore index"):
        processor(image, segmentation_maps=seg_map, do_reduce_labels=True, return_tensors="pt")
    without_256 = np.where(seg_map == 256, 2, seg_map)
    reduced = processor(image, segmentation_maps=without_256, do_reduce_labels=True, return_tensors="pt")["labels"]
    assert set(reduced.unique().tolist()) == {0, 1, 255, 299, 69999}
    # PIL 32-bit label images are accepted for maps (only images must be 8-bit).
    pil_map = PIL.Image.fromarray(seg_map)
    labels_pil = processor(image, segmentation_maps=pil_map, return_tensors="pt")["labels"]
    assert torch.equal(labels_pil, labels)


def test_nearest_map_resize_creates_no_new_labels(processor_class):
    rng = np.random.default_rng(1)
    values = np.array([0, 3, 7, 255, 1000])
    seg_map = values[rng.integers(0, len(values), size=(37, 53))]
    image = _random_image(37, 53)
    labels = processor_class()(image, segmentation_maps=seg_map, return_tensors="pt")["labels"][0]
    assert tuple(labels.shape) == get_setr_resize_output_size((37, 53), ADE)
    assert set(labels.unique().tolist()) <= set(values.tolist())
    # Source pixel floor(dst * in / out), like torch "nearest" / cv2 INTER_NEAREST (exact for this size).
    reference = F.interpolate(torch.from_numpy(seg_map)[None, None].double(), size=labels.shape, mode="nearest")
    assert torch.equal(labels, reference[0, 0].long())


@pytest.mark.parametrize(("in_size", "out_size"), [(400, 1025), (600, 1538), (300, 512), (2048, 2049), (4000, 2048)])
def test_nearest_indices_are_floor_of_exact_ratio(in_size, out_size):
    ours = nearest_source_indices(in_size, out_size)
    dst = np.arange(out_size)
    exact = (dst * in_size) // out_size  # integer arithmetic, no rounding
    # cv2's float rounding can only land one below the exact value, and only where dst * in / out is an integer.
    assert set(np.unique(exact - ours).tolist()) <= {0, 1}
    assert np.all((dst * in_size)[ours != exact] % out_size == 0)
    assert ours.min() == 0 and ours.max() <= in_size - 1


@pytest.mark.parametrize(("height", "width"), [(400, 600), (300, 451), (1024, 2048)])
def test_nearest_matches_cv2(processor_class, height, width):
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is not installed")
    seg_map = np.random.default_rng(4).integers(0, 150, size=(height, width)).astype(np.uint8)
    size = ADE if height < 1000 else CITYSCAPES
    out_h, out_w = get_setr_resize_output_size((height, width), size)
    reference = cv2.resize(seg_map, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    labels = processor_class(size=size)(image, segmentation_maps=seg_map, return_tensors="np")["labels"][0]
    np.testing.assert_array_equal(labels, reference)


def test_backends_give_identical_labels(torchvision_processor_class):
    rng = np.random.default_rng(2)
    seg_map = rng.integers(0, 151, size=(300, 451))
    image = _random_image(300, 451)
    pil = SetrImageProcessorPil(do_reduce_labels=True)(image, segmentation_maps=seg_map, return_tensors="pt")
    tv = torchvision_processor_class(do_reduce_labels=True)(image, segmentation_maps=seg_map, return_tensors="pt")
    assert torch.equal(pil["labels"], tv["labels"])


# ---------------------------------------------------------------------------------------------------------------------
# Input handling


def _pil_alpha_image(mode: str) -> PIL.Image.Image:
    rgba = np.zeros((6, 8, 4), dtype=np.uint8)
    rgba[..., :3] = 40
    rgba[:, :4, 3] = 255  # left half opaque, right half fully transparent
    return PIL.Image.fromarray(rgba, mode="RGBA").convert(mode)


def test_accepted_image_kinds_give_three_channels(processor_class):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8)
    rgb = np.stack([grey, grey, grey], axis=-1)
    inputs = {
        "grey 2-D": grey,
        "grey HW1": grey[..., None],
        "grey 1HW": grey[None],
        "PIL L": PIL.Image.fromarray(grey),
        "PIL P": PIL.Image.fromarray(rgb).convert("P"),
        "PIL CMYK": PIL.Image.fromarray(rgb).convert("CMYK"),
        "PIL 1": PIL.Image.fromarray(grey).convert("1"),
        "PIL RGBA": _pil_alpha_image("RGBA"),
        "PIL LA": _pil_alpha_image("LA"),
        "torch CHW": torch.from_numpy(rgb).permute(2, 0, 1),
        "torch HWC": torch.from_numpy(rgb),
        "float HWC": rgb.astype(np.float32),
    }
    processor = processor_class(do_resize=False)
    for name, image in inputs.items():
        out = processor(image, return_tensors="pt")
        assert tuple(out["pixel_values"].shape) == (1, 3, 6, 8), name
        assert list(out.keys()) == ["pixel_values"], name
    # Grey is expanded, i.e. identical to the RGB image with three equal channels.
    expected = processor(rgb, return_tensors="pt")["pixel_values"]
    for name in ("grey 2-D", "grey HW1", "grey 1HW", "PIL L", "torch CHW", "float HWC"):
        assert torch.allclose(processor(inputs[name], return_tensors="pt")["pixel_values"], expected, atol=1e-6), name
    # Palette / CMYK images are converted through their palette / colour space, not read as raw indices.
    for name in ("PIL P", "PIL CMYK"):
        as_rgb = np.asarray(inputs[name].convert("RGB"))
        assert torch.equal(
            processor(inputs[name], return_tensors="pt")["pixel_values"],
            processor(as_rgb, return_tensors="pt")["pixel_values"],
        ), name


def test_alpha_is_composited_onto_white(processor_class):
    processor = processor_class(do_resize=False, **RAW)
    white, value = [255, 255, 255], [40, 40, 40]
    rgba = np.zeros((6, 8, 4), dtype=np.uint8)
    rgba[..., :3] = 40
    rgba[:, :4, 3] = 255
    for image in (_pil_alpha_image("RGBA"), rgba, torch.from_numpy(rgba).permute(2, 0, 1)):
        out = _np(processor(image, return_tensors="pt")["pixel_values"][0])
        assert out[:, 0, 0].tolist() == value and out[:, 0, 7].tolist() == white
    half = rgba.copy()
    half[..., 3] = 128  # 40 * 128/255 + 255 * 127/255 = 147.1 -> 147
    assert _np(processor(half, return_tensors="pt")["pixel_values"][0])[:, 0, 0].tolist() == [147, 147, 147]
    # Float input on the 0-255 scale (do_rescale=True) composites onto 255, normalised afterwards.
    normalised = processor_class(do_resize=False)(rgba.astype(np.float32), return_tensors="pt")["pixel_values"][0]
    assert np.allclose(normalised[:, 0, 7].numpy(), (255 - MEAN_255) / STD_255, atol=1e-5)
    # Without conversion the four channels pass through (transformers' contract); normalising them needs 4 values.
    kept = processor(rgba, do_convert_rgb=False, return_tensors="pt")["pixel_values"][0]
    assert torch.equal(kept, torch.from_numpy(rgba).permute(2, 0, 1))
    with pytest.raises(ValueError, match="do_convert_rgb"):
        processor_class(do_resize=False)(rgba, do_convert_rgb=False)


def test_batched_inputs(processor_class):
    batch = np.stack([_random_image(20, 30, seed=i) for i in range(3)])
    out = processor_class(do_resize=False)(batch, return_tensors="pt")
    single = processor_class(do_resize=False)(batch[1], return_tensors="pt")
    assert tuple(out["pixel_values"].shape) == (3, 3, 20, 30)
    assert torch.equal(out["pixel_values"][1], single["pixel_values"][0])
    as_list = processor_class(do_resize=False)(list(batch), return_tensors=None)["pixel_values"]
    assert isinstance(as_list, list) and len(as_list) == 3


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((8, 8, 3), dtype=np.uint16), "16-bit.*8-bit"),
        (np.zeros((8, 8), dtype=np.uint16), "16-bit.*8-bit"),
        (np.zeros((8, 8, 3), dtype=np.int32), "32-bit.*8-bit"),
        (torch.zeros((3, 8, 8), dtype=torch.int16), "16-bit.*8-bit"),
        (PIL.Image.new("I;16", (8, 8)), "I;16.*16-bit.*8-bit"),
        (PIL.Image.new("I", (8, 8)), "'I'.*8-bit"),
        (PIL.Image.new("F", (8, 8)), "'F'.*8-bit"),
        (np.zeros((8, 8, 2), dtype=np.uint8), "channel"),
        (np.zeros((8, 8, 5), dtype=np.uint8), "channel"),
        (np.zeros((2, 8, 8), dtype=np.uint8), "channel"),
        (np.zeros((5, 8, 8), dtype=np.uint8), "channel"),
        (np.zeros((0, 8, 3), dtype=np.uint8), "[Ee]mpty"),
        (np.zeros((8, 0), dtype=np.uint8), "[Ee]mpty"),
        (PIL.Image.new("RGB", (0, 8)), "[Ee]mpty"),
        (np.zeros((8, 8), dtype=bool), "[Bb]oolean"),
        ({"image": 1}, "Unsupported"),
        (42, "Unsupported"),
        ([], "No images"),
        ([np.zeros((4, 4, 3), dtype=np.uint8), 3.5], "Unsupported"),
    ],
)
def test_bad_images_refused(processor_class, image, message):
    with pytest.raises(ValueError, match=message):
        processor_class()(image, return_tensors="pt")


def test_channel_first_override(processor_class):
    image = np.zeros((3, 8, 3), dtype=np.uint8)  # ambiguous layout, force channels-last
    out = processor_class(do_resize=False)(image, input_data_format="channels_last", return_tensors="pt")
    assert tuple(out["pixel_values"].shape) == (1, 3, 3, 8)
    with pytest.raises(ValueError, match="2 channels"):
        processor_class()(np.zeros((8, 8, 2), dtype=np.uint8), input_data_format="channels_last")


def test_caller_arrays_not_mutated(processor_class):
    image = _random_image(12, 16).astype(np.float32)
    tensor = torch.from_numpy(_random_image(12, 16, seed=5)).permute(2, 0, 1).float()
    rgba = np.concatenate([_random_image(12, 16), np.full((12, 16, 1), 128, np.uint8)], axis=-1)
    seg_map = np.zeros((12, 16), dtype=np.int64)
    copies = [image.copy(), tensor.clone(), rgba.copy(), seg_map.copy()]
    processor = processor_class(do_resize=False, do_reduce_labels=True)
    processor([image, tensor, rgba], segmentation_maps=[seg_map, seg_map, seg_map], return_tensors="pt")
    processor(image, segmentation_maps=seg_map, return_tensors=None)
    np.testing.assert_array_equal(image, copies[0])
    assert torch.equal(tensor, copies[1])
    np.testing.assert_array_equal(rgba, copies[2])
    np.testing.assert_array_equal(seg_map, copies[3])


def test_mismatched_map_refused(processor_class):
    image = _random_image(20, 30)
    with pytest.raises(ValueError, match=r"20x30.*|.*20x30") as error:
        processor_class()(image, segmentation_maps=np.zeros((20, 31), dtype=np.int64))
    assert "20x31" in str(error.value) and "20x30" in str(error.value)
    with pytest.raises(ValueError, match="2 segmentation maps for 1 images"):
        processor_class()([image], segmentation_maps=[np.zeros((20, 30), int), np.zeros((20, 30), int)])
    with pytest.raises(ValueError, match="mode 'RGB'"):
        processor_class()(image, segmentation_maps=PIL.Image.fromarray(image))
    with pytest.raises(ValueError, match="non-integer"):
        processor_class()(image, segmentation_maps=np.full((20, 30), 0.5))


def test_different_sizes_need_padding(processor_class):
    images = [_random_image(300, 451), _random_image(400, 600)]  # -> 512x770 and 512x768 at the ADE scale
    maps = [np.ones((300, 451), dtype=np.int64), np.ones((400, 600), dtype=np.int64)]
    processor = processor_class()
    with pytest.raises(ValueError, match="different sizes.*do_pad"):
        processor(images, return_tensors="pt")
    as_list = processor(images, segmentation_maps=maps, return_tensors=None)
    assert [tuple(x.shape) for x in as_list["pixel_values"]] == [(3, 512, 770), (3, 512, 768)]

    out = processor(
        images, segmentation_maps=maps, do_pad=True, pad_size={"height": 520, "width": 800}, return_tensors="pt"
    )
    assert tuple(out["pixel_values"].shape) == (2, 3, 520, 800)
    assert tuple(out["labels"].shape) == (2, 520, 800)
    pixels, labels = out["pixel_values"], out["labels"]
    assert torch.all(pixels[0, :, 512:, :] == 0) and torch.all(pixels[0, :, :, 770:] == 0)
    assert torch.all(pixels[1, :, :, 768:] == 0)
    assert torch.all(labels[0, 512:, :] == 255) and torch.all(labels[0, :, 770:] == 255)
    assert torch.all(labels[1, :, 768:] == 255) and torch.all(labels[1, :512, :768] == 1)
    single = processor(images[0], return_tensors="pt")["pixel_values"][0]
    assert torch.equal(pixels[0, :, :512, :770], single)

    # Without pad_size: pad to the largest image of the batch.
    out = processor(images, do_pad=True, return_tensors="pt")
    assert tuple(out["pixel_values"].shape) == (2, 3, 512, 770)
    with pytest.raises(ValueError, match="[Pp]ad"):
        processor(images, do_pad=True, pad_size={"height": 512, "width": 700}, return_tensors="pt")


# ---------------------------------------------------------------------------------------------------------------------
# Post-processing, API surface, serialisation


def test_post_process_semantic_segmentation(processor_class):
    processor = processor_class()
    logits = torch.randn(2, 5, 8, 10, generator=torch.Generator().manual_seed(0))
    outputs = SimpleNamespace(logits=logits)

    maps = processor.post_process_semantic_segmentation(outputs)
    assert len(maps) == 2 and tuple(maps[0].shape) == (8, 10) and maps[0].dtype == torch.int64
    assert torch.equal(maps[1], logits[1].argmax(0))

    target_sizes = [(16, 20), (7, 9)]
    maps = processor.post_process_semantic_segmentation(outputs, target_sizes=target_sizes)
    assert [tuple(m.shape) for m in maps] == target_sizes
    reference = F.interpolate(logits[1:2], size=(7, 9), mode="bilinear", align_corners=False)[0].argmax(0)
    assert torch.equal(maps[1], reference)
    maps_from_tensor = processor.post_process_semantic_segmentation(
        outputs, target_sizes=torch.tensor([[16, 20], [7, 9]])
    )
    assert all(torch.equal(a, b) for a, b in zip(maps, maps_from_tensor, strict=True))

    with pytest.raises(ValueError, match="target sizes"):
        processor.post_process_semantic_segmentation(outputs, target_sizes=[(16, 20)])

    scored = processor.post_process_semantic_segmentation(
        outputs, target_sizes=target_sizes, return_segmentation_scores=True
    )
    assert all(isinstance(item, SemanticSegmentationPostProcessorOutput) for item in scored)
    assert tuple(scored[0].segmentation_scores.shape) == (5, 16, 20)
    assert torch.equal(scored[0].segmentation, scored[0].segmentation_scores.argmax(0))
    assert torch.equal(scored[1].segmentation, maps[1])


def test_api_surface(processor_class):
    processor = processor_class()
    assert processor.model_input_names == ["pixel_values"]
    # The image-segmentation pipeline picks panoptic/instance post-processing first if they exist.
    assert not hasattr(processor, "post_process_instance_segmentation")
    assert not hasattr(processor, "post_process_panoptic_segmentation")
    assert dict(processor.size) == ADE
    out = processor(_random_image(30, 40), return_tensors="pt")
    assert list(out.keys()) == ["pixel_values"]


def test_save_load_round_trip(processor_class, tmp_path):
    processor = processor_class(
        size=CITYSCAPES, do_reduce_labels=True, do_pad=True, pad_size={"height": 1100, "width": 2100}
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "SetrImageProcessor"  # no "Pil" suffix
    assert saved["size"] == CITYSCAPES and saved["do_reduce_labels"] is True

    loaded = processor_class.from_pretrained(tmp_path)
    assert type(loaded) is processor_class
    assert dict(loaded.size) == CITYSCAPES
    assert loaded.do_reduce_labels is True and loaded.do_pad is True
    assert dict(loaded.pad_size) == {"height": 1100, "width": 2100}
    assert tuple(loaded.image_mean) == tuple(processor.image_mean)

    image, seg_map = _random_image(40, 60), np.arange(2400).reshape(40, 60) % 7
    a = processor(image, segmentation_maps=seg_map, return_tensors="pt")
    b = loaded(image, segmentation_maps=seg_map, return_tensors="pt")
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["labels"], b["labels"])


def test_pil_module_imports_are_hub_safe():
    """The PIL file ships next to the weights: no torchvision, no transformers_setr, only relative imports otherwise."""
    import transformers_setr.models.setr.image_processing_pil_setr as module

    tree = ast.parse(Path(module.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    stdlib = {"math", "collections", "typing", "os", "pathlib", "shutil"}
    assert roots <= {"numpy", "PIL", "torch", "transformers"} | stdlib, roots


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_float_images_refused(processor_class, value):
    image = _random_image(12, 16).astype(np.float32)
    image[3, 4, 1] = value  # one pixel would spread to every logit its tokens reach
    for given in (image, torch.from_numpy(image).permute(2, 0, 1).contiguous()):
        with pytest.raises(ValueError, match="Image 1 contains NaN or infinite values"):
            processor_class()([_random_image(12, 16), given], return_tensors="pt")


def test_float_images_in_zero_to_one_warn(processor_class, monkeypatch):
    # As transformers' processors do: 0..1 floats divided by 255 again would be a black image.
    messages = []
    monkeypatch.setattr(
        image_processing_base_setr.logger, "warning_once", lambda message, *_, **__: messages.append(message)
    )
    scaled = _random_image(12, 16).astype(np.float32) / 255
    for given in (scaled, torch.from_numpy(scaled).permute(2, 0, 1)):
        processor_class()(given, return_tensors="pt")
        assert len(messages) == 1 and messages[0].startswith(
            "It looks like you are trying to rescale already rescaled images. If the input images have pixel values "
            "between 0 and 1, set `do_rescale=False`"
        )
        messages.clear()
    processor_class(do_rescale=False)(scaled, return_tensors="pt")
    processor_class()(scaled * 255, return_tensors="pt")
    processor_class()(_random_image(12, 16), return_tensors="pt")
    assert messages == []


def test_colour_masks_refused(processor_class):
    image = _random_image(20, 30)
    rgb_mask = np.zeros((20, 30, 3), dtype=np.uint8)
    # One (H, W, 3) array used to be read as a batch of 20 maps.
    with pytest.raises(
        ValueError, match=r"Got 20 segmentation maps for 1 images.* one array of shape \(20, 30, 3\).*colour \(RGB\)"
    ):
        processor_class()(image, segmentation_maps=rgb_mask)
    with pytest.raises(ValueError, match=r"got shape \(20, 30, 3\)\. A colour \(RGB\) mask must first be mapped"):
        processor_class()([image], segmentation_maps=[rgb_mask])


@pytest.mark.parametrize("value", [1e20, -1e20, np.inf])
def test_float_masks_out_of_range_refused(processor_class, value):
    image = _random_image(4, 5)
    seg_map = np.zeros((4, 5))
    seg_map[1, 2] = value  # int64 conversion would overflow into an arbitrary label
    for given in (seg_map, torch.from_numpy(seg_map), seg_map.astype(np.float32)):
        with pytest.raises(ValueError, match="Segmentation map 0 holds float values too large to be class ids"):
            processor_class()(image, segmentation_maps=given)


def test_reduce_labels_refuses_256():
    with pytest.raises(ValueError, match="256 would become 255, the ignore index"):
        reduce_segmentation_labels(np.array([[0, 256]]))
    with pytest.raises(ValueError, match="256 would become 255"):
        reduce_segmentation_labels(torch.tensor([1, 256]))


def test_float_images_beyond_the_8_bit_scale_refused_with_do_rescale(processor_class):
    # 16-bit data as float: the rescale would give values up to 257, far from any image the model has seen.
    sixteen_bit = _random_image(12, 16).astype(np.float32) * 257
    for given in (sixteen_bit, torch.from_numpy(sixteen_bit).permute(2, 0, 1).contiguous(), -sixteen_bit - 1):
        with pytest.raises(
            ValueError, match=r"Image 1 is float with values in \[-?\d+, -?\d+\], outside the 0-255 scale"
        ):
            processor_class()([_random_image(12, 16), given], return_tensors="pt")
    # the 8-bit scale passes (both ends), and without do_rescale floats are the caller's (already rescaled)
    edges = np.zeros((12, 16, 3), np.float32)
    edges[0, 0] = 255.0
    ours = processor_class(do_resize=False)(edges, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(
        ours, processor_class(do_resize=False)(edges.astype(np.uint8), return_tensors="pt")["pixel_values"]
    )
    processor_class(do_rescale=False)(sixteen_bit / 65535, return_tensors="pt")
