"""One decode of an image file: the processors, the training data and `setr segment` see the same pixels.

The expected pixels are computed here from the arrays the files were written from (alpha compositing by hand, the
EXIF rotation with numpy), not by the code under test.
"""

import numpy as np
import pytest
from PIL import Image

from transformers_setr.apps import segment
from transformers_setr.models.setr.image_processing_pil_setr import SetrImageProcessorPil

datasets = pytest.importorskip("datasets", reason="the training data needs the [train] extra")
from transformers_setr.data import DatasetFormatError, SegmentationData  # noqa: E402

RAW = {"do_resize": False, "do_rescale": False, "do_normalize": False}  # the decoded uint8 pixels, channels first


def _processors() -> list:
    processors = [SetrImageProcessorPil(**RAW)]
    try:
        from transformers_setr.models.setr.image_processing_setr import SetrImageProcessor

        processors.append(SetrImageProcessor(**RAW))
    except ImportError:  # no torchvision: the PIL backend alone
        pass
    return processors


def _every_path(path, tmp_path) -> list[np.ndarray]:
    """(H, W, 3) uint8 pixels of the file through every reader: processors (path and opened PIL image), training
    data's decode, `setr segment`'s loader."""
    mask = tmp_path / f"{path.stem}-mask.png"
    with Image.open(path) as image:
        size = image.size if image.getexif().get(0x0112, 1) in (1, 2, 3, 4) else image.size[::-1]
    Image.new("L", size).save(mask)
    data = SegmentationData("ade20k", "ade20k", datasets.DatasetDict(), "test")
    row = {"image": {"path": str(path), "bytes": None}, "annotation": {"path": str(mask), "bytes": None}}
    seen = [np.asarray(data.decode(row).image), np.asarray(segment.load_image(segment.ImageSource(str(path), "x")))]
    for processor in _processors():
        for given in (str(path), Image.open(path)):
            seen.append(np.asarray(processor(given, return_tensors="np")["pixel_values"][0]).transpose(1, 2, 0))
    return seen


def _photo(height: int = 12, width: int = 20) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_rgba_is_composited_onto_white_everywhere(tmp_path):
    rgba = np.concatenate([_photo(), np.zeros((12, 20, 1), np.uint8)], axis=-1)
    rgba[:, :5, 3], rgba[:, 5:10, 3], rgba[:, 10:, 3] = 0, 128, 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    alpha = rgba[..., 3:].astype(np.float64) / 255
    expected = np.round(rgba[..., :3] * alpha + 255 * (1 - alpha))
    for pixels in _every_path(tmp_path / "rgba.png", tmp_path):
        assert pixels.shape == (12, 20, 3) and pixels.dtype == np.uint8
        assert np.abs(pixels.astype(np.int32) - expected).max() <= 1  # PIL's alpha_composite rounds its own way
        np.testing.assert_array_equal(pixels[:, :5], 255)  # transparent: white, not the hidden colour
        np.testing.assert_array_equal(pixels[:, 10:], rgba[:, 10:, :3])
    first, *others = _every_path(tmp_path / "rgba.png", tmp_path)
    assert all(np.array_equal(first, other) for other in others)  # and exactly the same pixels on every path


def test_grey_and_exif_rotation_give_the_same_pixels_everywhere(tmp_path):
    grey = _photo()[..., 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    stored = _photo(10, 16)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(stored).save(tmp_path / "rotated.png", exif=exif)
    for name, expected in (("grey", np.repeat(grey[..., None], 3, axis=-1)), ("rotated", np.rot90(stored, k=-1))):
        for pixels in _every_path(tmp_path / f"{name}.png", tmp_path):
            np.testing.assert_array_equal(pixels, expected, err_msg=name)


def test_16_bit_images_are_refused_everywhere(tmp_path):
    path = tmp_path / "depth.png"
    Image.fromarray(np.arange(12 * 20, dtype=np.uint16).reshape(12, 20) * 200).save(path)
    assert Image.open(path).mode == "I;16"
    for processor in _processors():
        for given in (str(path), Image.open(path)):
            with pytest.raises(ValueError, match="unsupported image mode 'I;16'.*8-bit"):
                processor(given)
    Image.new("L", (20, 12)).save(tmp_path / "mask.png")
    data = SegmentationData("ade20k", "ade20k", datasets.DatasetDict(), "test")
    row = {"image": {"path": str(path), "bytes": None}, "annotation": {"path": str(tmp_path / "mask.png")}}
    with pytest.raises(DatasetFormatError, match="depth.png: unsupported image mode 'I;16'"):
        data.decode({**row, "file_name": "depth.png"})
    with pytest.raises(segment.InputError, match="^unsupported image mode 'I;16'"):
        segment.load_image(segment.ImageSource(str(path), "depth"))
    # A file that is no image at all: each reader's own error, never a clipped or empty picture.
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(segment.InputError, match="not an image file"):
        segment.load_image(segment.ImageSource(str(tmp_path / "broken.png"), "broken"))
    with pytest.raises(DatasetFormatError, match="broken.png: cannot read the image"):
        data.decode({**row, "image": {"path": str(tmp_path / "broken.png"), "bytes": None}, "file_name": "broken.png"})
