# Copyright 2026 The transformers-setr developers.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""What the two SETR image processors share: mmcv's keep-ratio size rule, the cv2 nearest-neighbour source pixels,
input validation (images, dtypes, alpha, segmentation maps), label reduction, padding, collation and
`post_process_semantic_segmentation`. `image_processing_pil_setr.py` (PIL/NumPy) and `image_processing_setr.py`
(torchvision) add the pixel work.

Preprocessing reproduces mmsegmentation's SETR test pipeline:

1. 8-bit RGB input (grey is expanded, alpha is composited onto white as transformers does);
2. keep-ratio resize with mmcv ``imrescale``'s size rule and cv2 ``INTER_LINEAR`` interpolation (bilinear, half-pixel
   centres, *no* antialias) computed on the 0-255 values and rounded back to uint8;
3. ``(x - mean) / std`` with mmseg's mean/std (= ImageNet mean/std x 255).

This file is shipped next to the weights for ``trust_remote_code`` users: it imports only the standard library, numpy,
PIL, torch and transformers (never torchvision, never ``transformers_setr``).
"""

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from transformers.image_processing_base import BatchFeature
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_transforms import convert_to_rgb
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    ImageInput,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType, logging

from .configuration_setr import IGNORE_INDEX

__all__ = [
    "SetrImageProcessingMixin",
    "SetrImageProcessorKwargs",
    "get_setr_resize_output_size",
    "nearest_source_indices",
    "processor_docstring",
    "reduce_segmentation_labels",
]

logger = logging.get_logger(__name__)


# Written into preprocessor_config.json so that `AutoImageProcessor` finds either backend for trust_remote_code users.
SETR_IMAGE_PROCESSOR_AUTO_MAP = {
    "torchvision": "image_processing_setr.SetrImageProcessor",
    "pil": "image_processing_pil_setr.SetrImageProcessorPil",
}

_PIL_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


class SetrImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    do_reduce_labels (`bool`, *optional*, defaults to `self.do_reduce_labels`):
        Whether to reduce the label values of the segmentation maps by one (0 -> 255, v -> v - 1, 255 stays 255), as
        mmseg's `reduce_zero_label=True` does for ADE20K, where 0 means "other" and is ignored. Images are never
        affected.
    """

    do_reduce_labels: bool


# ---------------------------------------------------------------------------------------------------------------------
# Size rule


def _size_value(size: SizeDict | dict[str, int], key: str) -> int | None:
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def get_setr_resize_output_size(image_size: tuple[int, int], size: SizeDict | dict[str, int]) -> tuple[int, int]:
    """
    Output `(height, width)` of SETR's resize for an image of `image_size = (height, width)`.

    With `shortest_edge` and/or `longest_edge` this is mmcv's keep-ratio `imrescale` rule, used by mmseg's
    `Resize(scale=(longest, shortest), keep_ratio=True)`:
    `factor = min(longest / max(h, w), shortest / min(h, w))`, `new = int(old * factor + 0.5)`.
    With `height` and `width` the image is resized to exactly that size.
    """
    height, width = int(image_size[0]), int(image_size[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"Cannot resize an empty image of size {height}x{width} (HxW).")
    target_height, target_width = _size_value(size, "height"), _size_value(size, "width")
    shortest, longest = _size_value(size, "shortest_edge"), _size_value(size, "longest_edge")
    if target_height and target_width:
        return int(target_height), int(target_width)
    if not (shortest or longest):
        raise ValueError(
            "SETR `size` must be {'shortest_edge': s, 'longest_edge': l} (mmseg keep-ratio scale), one of those two "
            f"keys alone, or {{'height': h, 'width': w}}; got {dict(size)}."
        )
    factors = []
    if longest:
        factors.append(longest / max(height, width))
    if shortest:
        factors.append(shortest / min(height, width))
    factor = min(factors)
    # mmcv `_scale_size`: int(x * factor + 0.5). Clamp to 1 so extreme aspect ratios do not produce an empty image.
    new_width = max(1, int(width * factor + 0.5))
    new_height = max(1, int(height * factor + 0.5))
    return new_height, new_width


def _validate_size(size: SizeDict | dict[str, int] | None) -> None:
    if size is None:
        raise ValueError("`size` must be given when `do_resize=True`.")
    keys = {k for k, v in dict(size).items() if v is not None}
    allowed = ({"height", "width"}, {"shortest_edge"}, {"longest_edge"}, {"shortest_edge", "longest_edge"})
    if keys not in allowed:
        raise ValueError(
            "SETR `size` must have the keys {'shortest_edge', 'longest_edge'} (mmseg keep-ratio resize, e.g. "
            "{'shortest_edge': 512, 'longest_edge': 2048} for ADE20K), one of them alone, or {'height', 'width'}; "
            f"got {sorted(keys)}."
        )
    for key in keys:
        value = _size_value(size, key)
        if not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"`size[{key!r}]` must be a positive integer, got {value!r}.")


def resample_mode(resample: Any) -> str:
    """Map a PIL / torchvision resample value to "bilinear" or "nearest" (the only modes mmseg's pipeline uses)."""
    value = getattr(resample, "value", resample)  # torchvision InterpolationMode is a str Enum
    if value in (PILImageResampling.BILINEAR, int(PILImageResampling.BILINEAR), "bilinear"):
        return "bilinear"
    if value in (PILImageResampling.NEAREST, int(PILImageResampling.NEAREST), "nearest"):
        return "nearest"
    raise ValueError(
        f"Unsupported `resample={resample!r}`: SETR preprocessing implements bilinear (cv2 INTER_LINEAR, the mmseg "
        "default) and nearest interpolation only."
    )


# ---------------------------------------------------------------------------------------------------------------------
# Interpolation index tables (shared so both backends sample exactly the same source pixels)


def nearest_source_indices(in_size: int, out_size: int) -> np.ndarray:
    """
    Source index of every output index for cv2 INTER_NEAREST (what mmcv uses for label maps):
    `floor(dst * (1 / (out / in)))` in float64, clamped to `in - 1`. This is floor(dst * in / out) up to cv2's
    rounding; torch `mode="nearest"` on float32 tensors computes the scale in float32 and picks a different source
    row/column in about 1 of 10^4 output positions (where dst * in / out is an exact integer).
    """
    if out_size == in_size:
        return np.arange(out_size, dtype=np.int64)
    inverse_scale = 1.0 / (out_size / in_size)  # cv2 `resizeNN`: ifx = 1. / fx, fx = out / in
    src = np.floor(np.arange(out_size, dtype=np.float64) * inverse_scale).astype(np.int64)
    return np.minimum(src, in_size - 1)


# ---------------------------------------------------------------------------------------------------------------------
# Input validation / conversion (numpy and torch inputs; PIL images are converted to numpy)


def _is_array(obj: Any) -> bool:
    return isinstance(obj, (np.ndarray, torch.Tensor))


def _flatten_inputs(inputs: Any, what: str, expected_ndims: int) -> list[Any]:
    """Flatten a single input / (nested) list / batched array into a list of single items, with clear errors."""
    if inputs is None:
        raise ValueError(f"No {what} were given.")
    if isinstance(inputs, (list, tuple)):
        if len(inputs) == 0:
            raise ValueError(f"No {what} were given (empty list).")
        flat = []
        for item in inputs:
            if isinstance(item, (list, tuple)):
                flat.extend(_flatten_inputs(item, what, expected_ndims))
            elif isinstance(item, (PIL.Image.Image, str)) or _is_array(item):
                flat.append(item)
            else:
                raise ValueError(
                    f"Unsupported {what[:-1]} type {type(item).__name__}: expected a PIL.Image.Image, a numpy.ndarray "
                    "or a torch.Tensor."
                )
        return flat
    if isinstance(inputs, (PIL.Image.Image, str)):
        return [inputs]
    if _is_array(inputs):
        # One extra leading dimension = a batch (e.g. (B, H, W, C) images or (B, H, W) maps).
        return list(inputs) if inputs.ndim == expected_ndims + 1 else [inputs]
    raise ValueError(
        f"Unsupported {what} type {type(inputs).__name__}: expected a PIL.Image.Image, a numpy.ndarray or a "
        "torch.Tensor (or a list of them)."
    )


def _refuse_dtype(dtype_name: str, bits: int | None) -> ValueError:
    kind = f"{bits}-bit integer" if bits else "not 8-bit"
    return ValueError(
        f"Image dtype {dtype_name} ({kind}) is not supported: SETR preprocessing works on 8-bit images, as "
        "mmsegmentation does (cv2 loads 8-bit). Convert the image to 8-bit first (rescale it to 0-255 and cast to "
        "uint8), or pass float values on the 0-255 scale."
    )


def check_image_dtype(image: np.ndarray | torch.Tensor) -> None:
    if isinstance(image, torch.Tensor):
        if image.dtype == torch.uint8 or image.is_floating_point():
            return
        if image.dtype == torch.bool:
            raise ValueError("Boolean images are not supported; convert them to uint8 (0/255) first.")
        bits = torch.iinfo(image.dtype).bits if not image.is_complex() else None
        raise _refuse_dtype(str(image.dtype).replace("torch.", ""), bits)
    if image.dtype == np.uint8 or np.issubdtype(image.dtype, np.floating):
        return
    if image.dtype == np.bool_:
        raise ValueError("Boolean images are not supported; convert them to uint8 (0/255) first.")
    bits = image.dtype.itemsize * 8 if np.issubdtype(image.dtype, np.integer) else None
    raise _refuse_dtype(str(image.dtype), bits)


def _pil_to_rgb_array(image: PIL.Image.Image, do_convert_rgb: bool) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I") or mode.startswith("F"):
        raise ValueError(
            f"PIL images in mode {mode!r} (16-bit/32-bit integer or 32-bit float) are not supported: SETR "
            "preprocessing works on 8-bit images, as mmsegmentation does. Rescale the values to 0-255 and convert the "
            "image to an 8-bit mode ('L' or 'RGB') first."
        )
    if image.width == 0 or image.height == 0:
        raise ValueError(f"Empty image: PIL image of size {image.width}x{image.height} (WxH) has a zero-size side.")
    if mode in _PIL_ALPHA_MODES and not do_convert_rgb:
        raise ValueError(
            f"PIL image in mode {mode!r} has an alpha channel; pass `do_convert_rgb=True` to composite it onto white "
            "(as transformers does), or convert it to 'RGB' yourself."
        )
    try:
        # transformers' conversion: alpha (and palette transparency) is composited onto a white background.
        return convert_to_rgb(image, return_numpy=True) if do_convert_rgb else np.asarray(image.convert("RGB"))
    except (ValueError, OSError) as error:
        raise ValueError(f"Cannot convert PIL image in mode {mode!r} to RGB: {error}") from error


def _channel_axis(shape: Sequence[int], input_data_format: str | ChannelDimension | None) -> int:
    if input_data_format is not None:
        return 0 if ChannelDimension(input_data_format) == ChannelDimension.FIRST else 2
    first_ok, last_ok = shape[0] in (1, 3, 4), shape[-1] in (1, 3, 4)
    if first_ok and last_ok:
        # Ambiguous (e.g. (3, H, 3) or (1, W, 3)): prefer the side holding 3 channels, then channels-first (as
        # transformers' `infer_channel_dimension_format` does).
        return 2 if shape[-1] == 3 and shape[0] != 3 else 0
    if first_ok:
        return 0
    if last_ok:
        return 2
    raise ValueError(
        f"Cannot find the channel dimension of an image of shape {tuple(shape)}: expected 1 (grey), 3 (RGB) or 4 "
        "(RGBA) channels in the first or last dimension. Images with another channel count (e.g. 2 or 5) are not "
        "supported; convert them to RGB first (or pass `input_data_format` if the layout is ambiguous)."
    )


def _composite_on_white(image: np.ndarray | torch.Tensor, float_white: float) -> np.ndarray | torch.Tensor:
    """
    RGBA (C, H, W) -> RGB over a white background, as transformers' `convert_to_rgb` does. uint8: white is 255;
    float: white is `float_white` (the scale of the float input). float32 maths, so numpy and torch agree exactly.
    """
    if isinstance(image, torch.Tensor):
        white = 255.0 if image.dtype == torch.uint8 else float_white
        x = image.to(torch.float32)
        alpha = x[3:4] / white
        rgb = x[:3] * alpha + (1.0 - alpha) * white
        return rgb.round().to(image.dtype) if image.dtype == torch.uint8 else rgb
    white = np.float32(255.0 if image.dtype == np.uint8 else float_white)
    x = image.astype(np.float32)
    alpha = x[3:4] / white
    rgb = x[:3] * alpha + (np.float32(1.0) - alpha) * white
    return np.round(rgb).astype(np.uint8) if image.dtype == np.uint8 else rgb


def to_channels_first_rgb(
    image: Any,
    do_convert_rgb: bool = True,
    input_data_format: str | ChannelDimension | None = None,
    alpha_white: float = 255.0,
) -> np.ndarray | torch.Tensor:
    """
    Validate one image and return it as a 3-channel channels-first array: `np.ndarray` for PIL / numpy input,
    `torch.Tensor` (same device) for tensor input. Never modifies the caller's data. Grey is repeated to 3 channels;
    with `do_convert_rgb` RGBA is composited onto white and other channel counts are refused, without it arrays of
    other channel counts (RGBA included) pass through as they are (give `input_data_format` for counts other than
    1, 3 or 4, and `image_mean` / `image_std` with one value per channel).

    `alpha_white` is white for float RGBA input (255 for 0-255 values, 1 when `do_rescale=False`); uint8 uses 255.
    """
    if isinstance(image, PIL.Image.Image):
        return np.ascontiguousarray(np.moveaxis(_pil_to_rgb_array(image, do_convert_rgb), -1, 0))
    if not _is_array(image):
        raise ValueError(
            f"Unsupported image type {type(image).__name__}: expected a PIL.Image.Image, a numpy.ndarray or a "
            "torch.Tensor."
        )
    check_image_dtype(image)
    shape = tuple(image.shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"Expected a 2-D (H, W) or 3-D (C, H, W) / (H, W, C) image, got an array of shape {shape}.")
    if len(shape) == 2:
        height, width, channel_axis = shape[0], shape[1], None
    else:
        channel_axis = _channel_axis(shape, input_data_format)
        height, width = (shape[1], shape[2]) if channel_axis == 0 else (shape[0], shape[1])
        num_channels = shape[channel_axis]
        # transformers' contract: without RGB conversion, other channel counts pass through unchanged.
        if do_convert_rgb and num_channels not in (1, 3, 4):
            raise ValueError(
                f"Image of shape {shape} has {num_channels} channels (input_data_format={input_data_format!r}); "
                "expected 1 (grey), 3 (RGB) or 4 (RGBA)."
            )
    if height == 0 or width == 0:
        raise ValueError(f"Empty image: array of shape {shape} has a zero-size side.")

    if isinstance(image, torch.Tensor):
        x = image.detach()
        if x.dtype not in (torch.uint8, torch.float32):
            x = x.to(torch.float32)  # float16/bfloat16/float64 -> float32
        x = x[None] if channel_axis is None else (x.permute(2, 0, 1) if channel_axis == 2 else x)
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        elif x.shape[0] == 4 and do_convert_rgb:
            x = _composite_on_white(x, alpha_white)
        x = x.contiguous()
        # Always a new tensor: later steps never write into the caller's data.
        return x.clone() if x.data_ptr() == image.data_ptr() else x

    x = image
    if x.dtype not in (np.uint8, np.float32):
        x = x.astype(np.float32)
    x = x[None] if channel_axis is None else (np.moveaxis(x, 2, 0) if channel_axis == 2 else x)
    if x.shape[0] == 1:
        x = np.repeat(x, 3, axis=0)
    elif x.shape[0] == 4 and do_convert_rgb:
        x = _composite_on_white(x, alpha_white)
    # Always a new contiguous array: later steps never write into the caller's data.
    return np.array(x, copy=True, order="C") if np.may_share_memory(x, image) else np.ascontiguousarray(x)


def _check_normalisation_channels(images: list[np.ndarray | torch.Tensor], image_mean: Any, image_std: Any) -> None:
    """Images that kept another channel count (`do_convert_rgb=False`) need one mean and std value per channel."""
    for name, values in (("image_mean", image_mean), ("image_std", image_std)):
        count = np.size(values)
        for index, image in enumerate(images):
            if count != 1 and count != image.shape[0]:
                raise ValueError(
                    f"Image {index} has {image.shape[0]} channels but {name} has {count} values; give one value per "
                    "channel (or pass `do_convert_rgb=True` to convert the image to RGB)."
                )


def to_label_map(segmentation_map: Any, index: int = 0) -> np.ndarray | torch.Tensor:
    """
    Validate one segmentation map and return it as a 2-D int64 array (numpy for PIL / numpy input, a CPU tensor for
    tensor input). Values above 255 are kept. Always a copy.
    """
    what = f"Segmentation map {index}"
    if isinstance(segmentation_map, PIL.Image.Image):
        if segmentation_map.mode not in ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
            raise ValueError(
                f"{what} is a PIL image in mode {segmentation_map.mode!r}: expected a single-channel label map "
                "(mode 'L', 'P', 'I' or 'I;16')."
            )
        segmentation_map = np.array(segmentation_map)
    if not _is_array(segmentation_map):
        raise ValueError(
            f"{what} has unsupported type {type(segmentation_map).__name__}: expected a PIL.Image.Image, a "
            "numpy.ndarray or a torch.Tensor."
        )
    shape = tuple(segmentation_map.shape)
    if len(shape) == 3 and 1 in (shape[0], shape[-1]):
        segmentation_map = segmentation_map[0] if shape[0] == 1 else segmentation_map[..., 0]
    elif len(shape) != 2:
        raise ValueError(f"{what} must be a 2-D (H, W) array of class ids, got shape {shape}.{_COLOUR_MASK_HINT}")
    if 0 in segmentation_map.shape:
        raise ValueError(f"{what} is empty: shape {shape} has a zero-size side.")

    if isinstance(segmentation_map, torch.Tensor):
        x = segmentation_map.detach().cpu()
        if x.is_complex():
            raise ValueError(f"{what} has unsupported dtype {x.dtype}; expected integer class ids.")
        if x.is_floating_point():
            _check_float_label_range(float(x.abs().max()), what)
            if not bool(torch.all(x == torch.round(x))):
                raise ValueError(f"{what} holds non-integer float values (or NaN); expected integer class ids.")
        return x.to(torch.int64, copy=True)
    x = segmentation_map
    if np.issubdtype(x.dtype, np.floating):
        _check_float_label_range(float(np.abs(x).max()), what)
        if not np.all(x == np.round(x)):
            raise ValueError(f"{what} holds non-integer float values (or NaN); expected integer class ids.")
    elif not (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
        raise ValueError(f"{what} has unsupported dtype {x.dtype}; expected integer class ids.")
    return x.astype(np.int64)  # astype copies


_COLOUR_MASK_HINT = (
    " A colour (RGB) mask must first be mapped to class ids (e.g. with the dataset's palette); SETR reads one class id "
    "per pixel."
)
# Floats hold every integer exactly only up to 2**53; beyond that (1e20, inf) the int64 conversion overflows.
_LARGEST_FLOAT_LABEL = 2**53


def _check_float_label_range(largest_magnitude: float, what: str) -> None:
    if largest_magnitude > _LARGEST_FLOAT_LABEL:  # inf too; NaN compares false and is refused as non-integer
        raise ValueError(
            f"{what} holds float values too large to be class ids (largest magnitude {largest_magnitude:g}); "
            "expected integer class ids."
        )


def reduce_segmentation_labels(labels: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """
    mmseg `reduce_zero_label`: 0 -> 255, v -> v - 1, and 255 stays 255. Returns a new array (never in place).
    A value of 256 is refused: it would become 255 and be silently ignored.
    """
    if bool((labels == IGNORE_INDEX + 1).any()):
        raise ValueError(
            f"the label value {IGNORE_INDEX + 1} would become {IGNORE_INDEX}, the ignore "
            "index, with do_reduce_labels (0 -> 255, v -> v - 1), and be silently ignored; maps to reduce hold raw "
            "values 0..255 (0 = ignored). Pass do_reduce_labels=False or fix the map."
        )
    if isinstance(labels, torch.Tensor):
        reduced = torch.where(labels == 0, IGNORE_INDEX + 1, labels) - 1
        return torch.where(reduced == IGNORE_INDEX - 1, IGNORE_INDEX, reduced)
    reduced = np.where(labels == 0, IGNORE_INDEX + 1, labels) - 1
    return np.where(reduced == IGNORE_INDEX - 1, IGNORE_INDEX, reduced).astype(labels.dtype)


# Float values this far outside 0..255 are another scale (16-bit data, a bug), not a resampling overshoot.
_FLOAT_RANGE_SLACK = 1e-3


def _check_float_images(images: list[np.ndarray | torch.Tensor], do_rescale: bool) -> None:
    """Refuse non-finite float images (one NaN pixel spreads to thousands of logits) and, with `do_rescale`, float
    images outside 0..255: as in transformers, `do_rescale` multiplies floats by `rescale_factor` exactly like 8-bit
    values, so they must be on the 8-bit scale (16-bit data up to 65535 would become values up to 257 after the
    rescale, far outside what the model was trained on). Warn, as transformers' processors do, when float images
    already look scaled to 0..1 (they would be divided by 255 again: black). Without `do_rescale` floats are taken
    as already rescaled (or normalised) and not checked."""
    looks_rescaled = False
    for i, image in enumerate(images):
        if isinstance(image, torch.Tensor):
            if not image.is_floating_point():
                continue
            finite = bool(torch.isfinite(image).all())
            low, high = (float(v) for v in torch.aminmax(image)) if finite else (0.0, 0.0)
        else:
            if not np.issubdtype(image.dtype, np.floating):
                continue
            finite = bool(np.isfinite(image).all())
            low, high = (float(image.min()), float(image.max())) if finite else (0.0, 0.0)
        if not finite:
            raise ValueError(f"Image {i} contains NaN or infinite values; float images must be finite (0-255 scale).")
        if do_rescale and (low < -_FLOAT_RANGE_SLACK or high > 255 + _FLOAT_RANGE_SLACK):
            raise ValueError(
                f"Image {i} is float with values in [{low:g}, {high:g}], outside the 0-255 scale that `do_rescale=True` "
                "assumes of float images (as of 8-bit ones). Bring it to 0-255 first (16-bit data: divide by 257; "
                "clip a resampling overshoot), or pass `do_rescale=False` with values already rescaled."
            )
        looks_rescaled = looks_rescaled or (low >= 0 and high <= 1)
    if do_rescale and looks_rescaled:
        logger.warning_once(
            "It looks like you are trying to rescale already rescaled images. If the input images have pixel values "
            "between 0 and 1, set `do_rescale=False` to avoid rescaling them again."
        )


def spatial_size(array: np.ndarray | torch.Tensor) -> tuple[int, int]:
    return int(array.shape[-2]), int(array.shape[-1])


# ---------------------------------------------------------------------------------------------------------------------
# Shared behaviour of both backends


class SetrImageProcessingMixin:
    """
    Everything the PIL and torchvision SETR processors share: input handling, segmentation maps, size checks, padding,
    collation and `post_process_semantic_segmentation`. Backends provide `process_image` (one image -> channels-first
    3-channel array), `_preprocess` (images -> list of normalised arrays), `_resize_label_map` and `_pad_arrays`.
    """

    valid_kwargs = SetrImageProcessorKwargs
    model_input_names = ["pixel_values"]

    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_DEFAULT_MEAN  # x 255 = mmseg mean (123.675, 116.28, 103.53)
    image_std = IMAGENET_DEFAULT_STD  # x 255 = mmseg std (58.395, 57.12, 57.375)
    size = {"shortest_edge": 512, "longest_edge": 2048}  # mmseg ADE20K scale (2048, 512); Cityscapes: 1025 / 2049
    default_to_square = False
    crop_size = None
    do_resize = True
    do_center_crop = None
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True
    do_pad = False
    pad_size = None
    do_reduce_labels = False

    def preprocess(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        **kwargs: Unpack[SetrImageProcessorKwargs],
    ) -> BatchFeature:
        r"""
        Preprocess images (and optionally segmentation maps) like mmseg's SETR test pipeline.

        Args:
            images (`ImageInput`):
                PIL images, numpy arrays or torch tensors ((H, W), (H, W, C) or (C, H, W); a leading batch dimension
                is allowed), 8-bit or float on the 0-255 scale.
            segmentation_maps (`ImageInput`, *optional*):
                One 2-D integer label map per image, the same size as its image. Returned as int64 `labels`.

        Returns:
            [`BatchFeature`] with `pixel_values` (float32, (B, 3, H, W) with `return_tensors`, else a list) and, if
            maps were given, `labels` (int64, (B, H, W)).
        """
        return super().preprocess(images, segmentation_maps, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        if self._auto_class is not None:
            # transformers records only the saved class; record both backends.
            output["auto_map"] = {
                **(output.get("auto_map") or {}),
                "AutoImageProcessor": dict(SETR_IMAGE_PROCESSOR_AUTO_MAP),
            }
        return output

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any):
        """Save the processor and, for `trust_remote_code` users, the code of both backends."""
        hub_kwargs = {}
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", str(save_directory).rstrip(os.path.sep).split(os.path.sep)[-1])
            hub_names = ("commit_message", "token", "private", "create_pr", "revision", "commit_description")
            hub_kwargs = {name: kwargs.pop(name) for name in hub_names if name in kwargs}
        saved = super().save_pretrained(save_directory, push_to_hub=False, **kwargs)
        if self._auto_class is not None:
            backends = [module_path.split(".")[0] + ".py" for module_path in SETR_IMAGE_PROCESSOR_AUTO_MAP.values()]
            for name in [*backends, Path(__file__).name]:  # both backends import this file
                source = Path(__file__).with_name(name)
                target = Path(save_directory) / source.name
                if source.exists() and not target.exists():
                    shutil.copyfile(source, target)
        if push_to_hub:
            # Pushing from a fresh save makes the upload include the code files copied above.
            self.push_to_hub(repo_id, **hub_kwargs)
        return saved

    def _validate_preprocess_kwargs(self, **kwargs: Any) -> None:
        super()._validate_preprocess_kwargs(**kwargs)
        if kwargs.get("do_resize"):
            _validate_size(kwargs.get("size"))
            resample_mode(kwargs.get("resample"))
        if kwargs.get("do_center_crop"):
            raise ValueError("`do_center_crop` is not part of SETR preprocessing and is not supported.")
        pad_size = kwargs.get("pad_size")
        if kwargs.get("do_pad") and pad_size is not None and not (pad_size.height and pad_size.width):
            raise ValueError(f"`pad_size` must be {{'height': h, 'width': w}}, got {dict(pad_size)}.")

    def _prepare_images_structure(self, images: ImageInput, expected_ndims: int = 3) -> list[Any]:
        flat = _flatten_inputs(images, "images", expected_ndims)
        return [self.fetch_images(item) if isinstance(item, str) else item for item in flat]

    def _prepare_segmentation_maps(self, segmentation_maps: ImageInput) -> list[np.ndarray | torch.Tensor]:
        flat = _flatten_inputs(segmentation_maps, "segmentation maps", expected_ndims=2)
        return [self._to_backend_label_map(to_label_map(seg_map, i)) for i, seg_map in enumerate(flat)]

    def _to_backend_label_map(self, label_map: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        return label_map

    def _preprocess_image_like_inputs(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        *,
        do_convert_rgb: bool = True,
        input_data_format: str | ChannelDimension | None = None,
        return_tensors: str | TensorType | None = None,
        device: str | torch.device | None = None,
        do_reduce_labels: bool = False,
        do_pad: bool | None = False,
        pad_size: SizeDict | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        # Floats are on the 0-255 scale when `do_rescale` will divide them; this sets "white" for RGBA compositing.
        alpha_white = 255.0 if kwargs.get("do_rescale") else 1.0
        images = self._prepare_image_like_inputs(
            images,
            do_convert_rgb=bool(do_convert_rgb),
            input_data_format=input_data_format,
            device=device,
            alpha_white=alpha_white,
        )
        _check_float_images(images, bool(kwargs.get("do_rescale")))
        if kwargs.get("do_normalize"):
            _check_normalisation_channels(images, kwargs.get("image_mean"), kwargs.get("image_std"))

        label_maps = None
        if segmentation_maps is not None:
            label_maps = self._prepare_segmentation_maps(segmentation_maps)
            if len(label_maps) != len(images):
                read_as_batch = ""
                if _is_array(segmentation_maps) and segmentation_maps.ndim == 3:
                    read_as_batch = (
                        f" segmentation_maps is one array of shape {tuple(segmentation_maps.shape)}, read as a batch "
                        f"of {len(label_maps)} (H, W) maps; each map must be a 2-D (H, W) array of class ids."
                        + _COLOUR_MASK_HINT
                    )
                raise ValueError(
                    f"Got {len(label_maps)} segmentation maps for {len(images)} images; give one per image."
                    + read_as_batch
                )
            for i, (image, label_map) in enumerate(zip(images, label_maps, strict=True)):
                if spatial_size(image) != spatial_size(label_map):
                    (ih, iw), (mh, mw) = spatial_size(image), spatial_size(label_map)
                    raise ValueError(
                        f"Segmentation map {i} has size {mh}x{mw} (HxW) but its image has size {ih}x{iw}; they "
                        "must match."
                    )

        pixel_values = self._preprocess(images, **kwargs)
        data = {"pixel_values": pixel_values}
        if label_maps is not None:
            labels = []
            for i, label_map in enumerate(label_maps):
                if do_reduce_labels:
                    try:
                        label_map = reduce_segmentation_labels(label_map)
                    except ValueError as error:
                        raise ValueError(f"Segmentation map {i}: {error}") from None
                if kwargs.get("do_resize"):
                    output_size = get_setr_resize_output_size(spatial_size(label_map), kwargs["size"])
                    label_map = self._resize_label_map(label_map, output_size)
                labels.append(label_map)
            data["labels"] = labels

        if do_pad:
            if pad_size is None:  # pad to the largest image of the batch
                sizes = [spatial_size(x) for x in pixel_values]
                pad_size = SizeDict(height=max(h for h, _ in sizes), width=max(w for _, w in sizes))
            data["pixel_values"] = self._pad_arrays(data["pixel_values"], pad_size, fill_value=0)
            if "labels" in data:
                data["labels"] = self._pad_arrays(data["labels"], pad_size, fill_value=IGNORE_INDEX)

        if return_tensors is not None:
            data = {key: self._stack(key, value, return_tensors) for key, value in data.items()}
        return BatchFeature(data=data, tensor_type=return_tensors)

    @staticmethod
    def _stack(name: str, arrays: list[np.ndarray | torch.Tensor], return_tensors: str | TensorType) -> Any:
        shapes = sorted({tuple(int(s) for s in a.shape) for a in arrays})
        if len(shapes) > 1:
            raise ValueError(
                f"Cannot stack {name} of different sizes {shapes} into one tensor (return_tensors={return_tensors!r}): "
                "the keep-ratio resize gives each aspect ratio its own size, and mmseg evaluates one image at a time. "
                "Process the images one by one, pass `return_tensors=None` to get a list, or pass `do_pad=True` with "
                "`pad_size={'height': h, 'width': w}` to pad them (bottom/right) to a common size."
            )
        if isinstance(arrays[0], torch.Tensor):
            return torch.stack(arrays)
        return np.stack(arrays)

    def _resize_label_map(
        self, label_map: np.ndarray | torch.Tensor, output_size: tuple[int, int]
    ) -> np.ndarray | torch.Tensor:
        raise NotImplementedError

    def _pad_arrays(
        self, arrays: list[np.ndarray | torch.Tensor], pad_size: SizeDict, fill_value: int
    ) -> list[np.ndarray | torch.Tensor]:
        if arrays[0].ndim == 3:
            return self.pad(arrays, pad_size=pad_size, fill_value=fill_value)
        # 2-D label maps: the backends' `pad` expects channels-first arrays.
        padded = self.pad([a[None] for a in arrays], pad_size=pad_size, fill_value=fill_value)
        return [a[0] for a in padded]

    def post_process_semantic_segmentation(
        self,
        outputs: Any,
        target_sizes: Sequence[tuple[int, int]] | torch.Tensor | None = None,
        return_segmentation_scores: bool = False,
    ) -> list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]:
        """
        Turn the logits of `SetrForSemanticSegmentation` into per-image class-id maps.

        Args:
            outputs: model output with `logits` of shape `(batch_size, num_labels, h, w)`.
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor`, *optional*):
                `(height, width)` of each prediction (usually the original image size). The logits are resized there
                bilinearly (`align_corners=False`, as mmseg does) before the argmax. If unset, the argmax is taken
                at the logits' resolution. A binary model's single channel (`num_labels=1`) is thresholded instead
                (logit > 0 is class 1), giving a 0/1 map (`labels_from_scores`).
            return_segmentation_scores (`bool`, *optional*, defaults to `False`):
                If `True`, return `SemanticSegmentationPostProcessorOutput` items with `segmentation` and
                `segmentation_scores` (the resized raw logits, `(num_labels, height, width)`).

        Returns:
            A list of `batch_size` int64 tensors of shape `(height, width)`, or of
            `SemanticSegmentationPostProcessorOutput` with `return_segmentation_scores=True`.
        """
        logits = outputs.logits
        if target_sizes is not None and len(target_sizes) != len(logits):
            raise ValueError(
                f"Got {len(target_sizes)} target sizes for a batch of {len(logits)} logits; pass one (height, width) "
                "per image."
            )
        results = []
        for i in range(len(logits)):
            scores = logits[i]
            if target_sizes is not None:
                target = target_sizes[i]
                target = tuple(int(s) for s in (target.tolist() if isinstance(target, torch.Tensor) else target))
                scores = F.interpolate(scores[None], size=target, mode="bilinear", align_corners=False)[0]
            segmentation = labels_from_scores(scores, dim=0)
            if return_segmentation_scores:
                results.append(
                    SemanticSegmentationPostProcessorOutput(
                        data={"segmentation": segmentation, "segmentation_scores": scores}
                    )
                )
            else:
                results.append(segmentation)
        return results


def class_probabilities(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Class probabilities of logits: softmax over `dim`; a binary model's single channel (`num_labels=1`, trained
    with sigmoid + BCE) becomes the foreground probability, its sigmoid."""
    return logits.sigmoid() if logits.shape[dim] == 1 else logits.softmax(dim=dim)


def labels_from_scores(scores: torch.Tensor, dim: int = 1, probabilities: bool = False) -> torch.Tensor:
    """Class ids from logits (or from `class_probabilities` with `probabilities=True`): the argmax over `dim`. A single
    channel is a binary model's foreground score, thresholded into two classes: 1 where the foreground's probability
    exceeds 0.5 (logit > 0), 0 (background) elsewhere."""
    if scores.shape[dim] == 1:
        return (scores.squeeze(dim) > (0.5 if probabilities else 0.0)).long()
    return scores.argmax(dim=dim)


def confidence_from_probabilities(probabilities: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The probability of the predicted class (the per-pixel confidence): the maximum over `dim`, or for a binary
    model's single channel the larger of p and 1 - p."""
    if probabilities.shape[dim] == 1:
        foreground = probabilities.squeeze(dim)
        return torch.maximum(foreground, 1 - foreground)
    return probabilities.amax(dim=dim)


def processor_docstring(backend: str, pipeline: str, other_arguments: str) -> str:
    """The class docstring of a backend: what it is, then the arguments both backends share."""
    return f"""
    SETR image processor ({backend}). Reproduces mmsegmentation's SETR test pipeline: keep-ratio resize (mmcv
    `imrescale`, cv2 `INTER_LINEAR` without antialias, {pipeline}), then mean/std normalisation. Both backends have
    the same defaults and give the same outputs.

    Args:
        size (`dict[str, int]`, *optional*, defaults to `{{"shortest_edge": 512, "longest_edge": 2048}}`):
            Keep-ratio target: mmseg `Resize(scale=(longest_edge, shortest_edge), keep_ratio=True)`. ADE20K uses
            512/2048, Cityscapes 1025/2049. `{{"height": h, "width": w}}` resizes to exactly that size.
        do_reduce_labels (`bool`, *optional*, defaults to `False`):
            Apply mmseg's `reduce_zero_label` to segmentation maps (ADE20K): 0 -> 255, v -> v - 1, 255 stays 255.
        do_pad (`bool`, *optional*, defaults to `False`):
            Pad bottom/right to `pad_size` (or to the largest image) with 0 (pixels, normalised space) and 255
            (labels).
        Other arguments ({other_arguments}) are the usual transformers ones.
    """
