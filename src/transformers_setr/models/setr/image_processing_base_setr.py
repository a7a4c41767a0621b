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
"""SETR's image processing, once for both backends: the one decode of an image (`decode_image`, also used by the
training data and `setr segment`), mmcv's keep-ratio size rule, and every preprocessing step as one torch
implementation. `image_processing_setr.py` (torchvision) and `image_processing_pil_setr.py` (no torchvision; NumPy
outputs) only bind it to transformers' two backends.

Preprocessing reproduces mmsegmentation's SETR test pipeline: 8-bit RGB (`decode_image`); keep-ratio resize with
mmcv `imrescale`'s size rule and cv2 `INTER_LINEAR` (bilinear, half-pixel centres, no antialias) on the 0-255 values,
rounded back to uint8; `(x - mean) / std` with mmseg's mean/std (ImageNet's x 255). Shipped next to the weights for
`trust_remote_code`: it imports only numpy, PIL, torch, huggingface_hub and transformers.
"""

import io
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, cast, overload

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F
from huggingface_hub.utils import httpx
from transformers.image_processing_base import BatchFeature
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_transforms import convert_to_rgb, group_images_by_shape, reorder_images
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    ImageInput,
    PILImageResampling,
    SizeDict,
    infer_channel_dimension_format,
    is_valid_image,
    make_flat_list_of_images,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType, logging

from .configuration_setr import IGNORE_INDEX

logger = logging.get_logger(__name__)

# Written into preprocessor_config.json so that `AutoImageProcessor` finds either backend for trust_remote_code users.
SETR_IMAGE_PROCESSOR_AUTO_MAP = {
    "torchvision": "image_processing_setr.SetrImageProcessor",
    "pil": "image_processing_pil_setr.SetrImageProcessorPil",
}
_EXIF_ORIENTATION = 0x0112
_COLOUR_MASK_HINT = (
    " A colour (RGB) mask must first be mapped to class ids (e.g. with the dataset's palette); SETR reads one class id "
    "per pixel."
)


class UnsupportedImageError(ValueError):
    """An image `decode_image` refuses (16-bit, 32-bit or float), as opposed to a file that cannot be read."""


def upright(image: PIL.Image.Image) -> PIL.Image.Image:
    """The image with its EXIF orientation applied (the step of `decode_image` the pipeline needs for its sizes)."""
    return PIL.ImageOps.exif_transpose(image) if image.getexif().get(_EXIF_ORIENTATION, 1) != 1 else image


def decode_image(image: "str | os.PathLike | bytes | IO[bytes] | PIL.Image.Image") -> PIL.Image.Image:
    """
    The one decode of an image, shared by the processors, the training data and the apps, so that a model is served
    the picture it was trained on: a file (path, URL, bytes or file object, read fully) or a PIL image -> upright
    (EXIF orientation applied) 8-bit RGB, with transparency composited onto white and grey / palette / CMYK converted
    (transformers' `convert_to_rgb`). 16-bit, 32-bit and float images are refused (`UnsupportedImageError`) rather than clipped:
    SETR, like mmsegmentation, works on 8-bit images.
    """
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        image = httpx.get(image, follow_redirects=True).content
    if not isinstance(image, PIL.Image.Image):
        with PIL.Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as opened:
            opened.load()
            return decode_image(opened.copy() if opened.getexif().get(_EXIF_ORIENTATION, 1) == 1 else opened)
    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        raise UnsupportedImageError(
            f"unsupported image mode {image.mode!r} (16-bit or 32-bit integer, or float): SETR works on 8-bit images, "
            "as mmsegmentation does; convert it to 8-bit RGB first (rescale the values to 0-255)"
        )
    image = upright(image)
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    # `return_numpy=True` gives an array; transformers types the result as any `ImageInput`
    return PIL.Image.fromarray(cast(np.ndarray, convert_to_rgb(image, return_numpy=True)))


class SetrImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    do_reduce_labels (`bool`, *optional*, defaults to `self.do_reduce_labels`):
        Whether to reduce the label values of the segmentation maps by one (0 -> 255, v -> v - 1, 255 stays 255), as
        mmseg's `reduce_zero_label=True` does for ADE20K, where 0 means "other" and is ignored. Images are never
        affected.
    """

    do_reduce_labels: bool


def get_setr_resize_output_size(image_size: Sequence[int], size: SizeDict | dict[str, int]) -> tuple[int, int]:
    """
    Output `(height, width)` of SETR's resize for an image of `image_size = (height, width)`: with `height` and
    `width` exactly that; with `shortest_edge` and/or `longest_edge` mmcv's keep-ratio `imrescale` rule (mmseg's
    `Resize(scale=(longest, shortest), keep_ratio=True)`): `factor = min(longest / max(h, w), shortest / min(h, w))`,
    `new = int(old * factor + 0.5)`, at least 1.
    """
    size = dict(size)
    height, width = int(image_size[0]), int(image_size[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"Cannot resize an empty image of size {height}x{width} (HxW).")
    if size.get("height") and size.get("width"):
        return int(size["height"]), int(size["width"])
    factors = [size["longest_edge"] / max(height, width)] if size.get("longest_edge") else []
    factors += [size["shortest_edge"] / min(height, width)] if size.get("shortest_edge") else []
    if not factors:
        raise ValueError(f"SETR `size` needs `shortest_edge`/`longest_edge` or `height` and `width`; got {size}.")
    factor = min(factors)
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def resample_mode(resample: Any) -> str:
    """Map a PIL / torchvision resample value to "bilinear" or "nearest" (the only modes mmseg's pipeline uses)."""
    value = getattr(resample, "value", resample)  # torchvision's InterpolationMode is a str Enum
    if value in (None, PILImageResampling.BILINEAR, "bilinear"):
        return "bilinear"
    if value in (PILImageResampling.NEAREST, "nearest"):
        return "nearest"
    raise ValueError(
        f"Unsupported `resample={resample!r}`: SETR preprocessing implements bilinear (cv2 INTER_LINEAR, the mmseg "
        "default) and nearest interpolation only."
    )


def nearest_source_indices(in_size: int, out_size: int) -> np.ndarray:
    """
    Source index of every output index for cv2 INTER_NEAREST (what mmcv uses for label maps):
    `floor(dst * (1 / (out / in)))` in float64, clamped to `in - 1`. torch `mode="nearest"` on float32 computes the
    scale in float32 and picks another source row/column in about 1 of 10^4 positions (where dst * in / out is an
    integer).
    """
    if out_size == in_size:
        return np.arange(out_size, dtype=np.int64)
    inverse_scale = 1.0 / (out_size / in_size)  # cv2 `resizeNN`: ifx = 1. / fx, fx = out / in
    return np.minimum(np.floor(np.arange(out_size) * inverse_scale).astype(np.int64), in_size - 1)


def resize(x: torch.Tensor, output_size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize the last two axes of `x` as mmseg does: nearest picks cv2 INTER_NEAREST's source pixels (any dtype,
    values only copied); bilinear is cv2 INTER_LINEAR (half-pixel centres, no antialias) in float32, uint8 rounded
    half-up back to uint8 as cv2's fixed point does (within one grey level of cv2; torch's own uint8 kernel is not)."""
    if tuple(x.shape[-2:]) == tuple(output_size):
        return x
    if mode == "nearest":
        rows, cols = (
            torch.from_numpy(nearest_source_indices(i, o)).to(x.device) for i, o in zip(x.shape[-2:], output_size)
        )
        return x.index_select(-2, rows).index_select(-1, cols)
    batch = x.to(torch.float32).reshape(-1, *x.shape[-3:])
    resized = F.interpolate(batch, size=output_size, mode="bilinear", align_corners=False, antialias=False)
    resized = resized.reshape(*x.shape[:-2], *output_size)
    return resized.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else resized


def rescale_and_normalize(
    x: torch.Tensor, do_rescale: bool, rescale_factor: float, do_normalize: bool, mean: Any, std: Any
) -> torch.Tensor:
    """`x * rescale_factor` then `(x - mean) / std`, in float32, with the rescale folded into mean and std (mmseg's
    0-255 maths). Never in place."""
    if do_normalize:
        mean, std = (torch.tensor(v, dtype=torch.float64).reshape(-1, 1, 1) for v in (mean, std))
        if do_rescale:
            mean, std = mean / rescale_factor, std / rescale_factor
        return (x.to(torch.float32) - mean.to(x.device, torch.float32)) / std.to(x.device, torch.float32)
    return x.to(torch.float32) * rescale_factor if do_rescale else x


def _refuse_dtype(x: torch.Tensor) -> None:
    if x.dtype == torch.uint8 or x.is_floating_point():
        return
    if x.dtype == torch.bool:
        raise ValueError("Boolean images are not supported; convert them to uint8 (0/255) first.")
    kind = "complex" if x.is_complex() else f"{torch.iinfo(x.dtype).bits}-bit integer"
    raise ValueError(
        f"Image dtype {str(x.dtype).removeprefix('torch.')} ({kind}) is not supported: SETR preprocessing works on "
        "8-bit images, as mmsegmentation does. Convert the image to 8-bit first (rescale it to 0-255 and cast to "
        "uint8), or pass float values on the 0-255 scale."
    )


def _check_float_images(images: list[torch.Tensor], do_rescale: bool) -> None:
    """Refuse non-finite floats (one NaN pixel spreads to thousands of logits) and, with `do_rescale`, floats outside
    0..255 (`do_rescale` treats them as 8-bit values, as transformers does: 16-bit data would become values up to
    257). Warn, as transformers' processors do, when they look already rescaled to 0..1 (they would be black)."""
    looks_rescaled = False
    for i, image in enumerate(images):
        if not image.is_floating_point():
            continue
        if not bool(torch.isfinite(image).all()):
            raise ValueError(f"Image {i} contains NaN or infinite values; float images must be finite (0-255 scale).")
        low, high = (float(v) for v in torch.aminmax(image))
        if do_rescale and (low < -1e-3 or high > 255 + 1e-3):  # slack for a resampling overshoot
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


def to_label_map(segmentation_map: Any, index: int = 0) -> torch.Tensor:
    """One segmentation map -> a new 2-D int64 CPU tensor of class ids (values above 255 kept), or a clear error."""
    what = f"Segmentation map {index}"
    if isinstance(segmentation_map, PIL.Image.Image):
        if segmentation_map.mode not in ("1", "L", "P", "F") and not segmentation_map.mode.startswith("I"):
            raise ValueError(
                f"{what} is a PIL image in mode {segmentation_map.mode!r}: expected a single-channel label map "
                "(mode 'L', 'P', 'I' or 'I;16')."
            )
        segmentation_map = np.array(segmentation_map)
    if isinstance(segmentation_map, np.ndarray) and segmentation_map.dtype.kind in "biuf":
        segmentation_map = torch.from_numpy(
            segmentation_map.astype(np.float64 if segmentation_map.dtype.kind == "f" else np.int64)
        )
    if not isinstance(segmentation_map, torch.Tensor) or segmentation_map.is_complex():
        kind = getattr(segmentation_map, "dtype", type(segmentation_map).__name__)
        raise ValueError(f"{what} has unsupported type or dtype {kind}: expected integer class ids.")
    x = segmentation_map.detach().cpu()
    if x.ndim != 2:
        raise ValueError(
            f"{what} must be a 2-D (H, W) array of class ids, got shape {tuple(x.shape)}.{_COLOUR_MASK_HINT}"
        )
    if 0 in x.shape:
        raise ValueError(f"{what} is empty: shape {tuple(x.shape)} has a zero-size side.")
    if x.is_floating_point():
        largest = float(x.abs().max())  # floats hold every integer exactly only up to 2**53; inf, 1e20 overflow int64
        if largest > 2**53:
            raise ValueError(
                f"{what} holds float values too large to be class ids (largest magnitude {largest:g}); expected "
                "integer class ids."
            )
        if not bool(torch.all(x == torch.round(x))):
            raise ValueError(f"{what} holds non-integer float values (or NaN); expected integer class ids.")
    return x.to(torch.int64, copy=True)


@overload
def reduce_segmentation_labels(labels: np.ndarray) -> np.ndarray: ...
@overload
def reduce_segmentation_labels(labels: torch.Tensor) -> torch.Tensor: ...
def reduce_segmentation_labels(labels: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """mmseg `reduce_zero_label`: 0 -> 255, v -> v - 1, 255 stays 255; a new array of the same kind. A value of 256
    is refused: it would become 255 and be silently ignored."""
    if bool((labels == IGNORE_INDEX + 1).any()):
        raise ValueError(
            f"the label value {IGNORE_INDEX + 1} would become {IGNORE_INDEX}, the ignore index, with do_reduce_labels "
            "(0 -> 255, v -> v - 1), and be silently ignored; maps to reduce hold raw values 0..255 (0 = ignored). "
            "Pass do_reduce_labels=False or fix the map."
        )
    x = torch.as_tensor(labels).to(torch.int64)
    reduced = torch.where(x == 0, IGNORE_INDEX + 1, x) - 1
    reduced = torch.where(reduced == IGNORE_INDEX - 1, IGNORE_INDEX, reduced).to(torch.as_tensor(labels).dtype)
    return reduced.numpy() if isinstance(labels, np.ndarray) else reduced


class SetrImageProcessingMixin:
    """
    The SETR processor of both backends: inputs through transformers' flattening (`make_flat_list_of_images`),
    channel inference and `convert_to_rgb` (via `decode_image`), then one torch implementation of every step. A
    backend only says what it returns (`_output`: tensors, or NumPy arrays for the PIL backend).
    """

    valid_kwargs: type[ImagesKwargs] = SetrImageProcessorKwargs
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

    def __init__(self, **kwargs: Unpack[SetrImageProcessorKwargs]):  # the backend's, typed with SETR's kwargs
        super().__init__(**kwargs)  # type: ignore[misc]  # the backend's (as in the methods below)

    def _output(self, x: torch.Tensor) -> Any:
        return x

    def preprocess(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        **kwargs: Unpack[SetrImageProcessorKwargs],
    ) -> BatchFeature:
        """Preprocess images (PIL images, paths, arrays or tensors, (H, W), (H, W, C) or (C, H, W), a leading batch
        dimension allowed; 8-bit or float on the 0-255 scale) and optionally one 2-D class-id map per image (the
        image's size) like mmseg's SETR test pipeline: `pixel_values` (float32) and `labels` (int64)."""
        return super().preprocess(images, segmentation_maps, **kwargs)  # type: ignore[misc]

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()  # type: ignore[misc]
        if self._auto_class is not None:  # type: ignore[attr-defined]
            # transformers records only the saved class; record both backends.
            output["auto_map"] = {
                **(output.get("auto_map") or {}),
                "AutoImageProcessor": dict(SETR_IMAGE_PROCESSOR_AUTO_MAP),
            }
        return output

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> Any:
        """Save the processor and, for `trust_remote_code` users, the code of both backends."""
        hub_kwargs, repo_id = {}, kwargs.pop("repo_id", Path(save_directory).name)
        if push_to_hub:
            hub_names = ("commit_message", "token", "private", "create_pr", "revision", "commit_description")
            hub_kwargs = {name: kwargs.pop(name) for name in hub_names if name in kwargs}
        saved = super().save_pretrained(save_directory, push_to_hub=False, **kwargs)  # type: ignore[misc]
        if self._auto_class is not None:  # type: ignore[attr-defined]
            backends = [module_path.split(".")[0] + ".py" for module_path in SETR_IMAGE_PROCESSOR_AUTO_MAP.values()]
            for name in [*backends, Path(__file__).name]:  # both backends import this file
                source, target = Path(__file__).with_name(name), Path(save_directory) / name
                if source.exists() and not target.exists():
                    shutil.copyfile(source, target)
        if push_to_hub:  # from a fresh save, so that the upload includes the code files copied above
            self.push_to_hub(repo_id, **hub_kwargs)  # type: ignore[attr-defined]
        return saved

    def _validate_preprocess_kwargs(self, **kwargs: Any) -> None:
        super()._validate_preprocess_kwargs(**kwargs)  # type: ignore[misc]
        size = {key: value for key, value in dict(kwargs.get("size") or {}).items() if value is not None}
        if kwargs.get("do_resize") and (
            set(size)
            not in ({"height", "width"}, {"shortest_edge"}, {"longest_edge"}, {"shortest_edge", "longest_edge"})
            or not all(isinstance(value, (int, np.integer)) and value > 0 for value in size.values())
        ):
            raise ValueError(
                "SETR `size` must be positive integers under the keys {'shortest_edge', 'longest_edge'} (mmseg "
                "keep-ratio resize, e.g. {'shortest_edge': 512, 'longest_edge': 2048} for ADE20K), one of them alone, "
                f"or {{'height', 'width'}}; got {size}."
            )
        if kwargs.get("do_resize"):
            resample_mode(kwargs.get("resample"))
        if kwargs.get("do_center_crop"):
            raise ValueError("`do_center_crop` is not part of SETR preprocessing and is not supported.")
        pad_size = kwargs.get("pad_size")
        if kwargs.get("do_pad") and pad_size is not None and not (pad_size.height and pad_size.width):
            raise ValueError(f"`pad_size` must be {{'height': h, 'width': w}}, got {dict(pad_size)}.")

    def fetch_images(self, image_url_or_urls: Any) -> Any:
        """Paths and URLs through `decode_image` (transformers' `load_image` would drop alpha and clip 16 bits)."""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        return (
            decode_image(image_url_or_urls) if isinstance(image_url_or_urls, (str, os.PathLike)) else image_url_or_urls
        )

    def _prepare_images_structure(self, images: ImageInput, expected_ndims: int = 3) -> list[Any]:
        what = "images" if expected_ndims == 3 else "segmentation maps"

        def grey_as_3d(item: Any) -> Any:  # transformers' flattening reads a 2-D array as a batch, SETR as grey
            return (
                item[None] if expected_ndims == 3 and is_valid_image(item) and getattr(item, "ndim", 0) == 2 else item
            )

        if expected_ndims == 3:
            images = self.fetch_images(images)
        elif isinstance(images, (list, tuple)) and all(is_valid_image(item) for item in images):
            return list(images)  # one map per image: a 3-D item is refused as a map (a colour mask), not a batch
        images = [grey_as_3d(item) for item in images] if isinstance(images, (list, tuple)) else grey_as_3d(images)
        try:
            # a flat list; transformers types the result as any `ImageInput`
            flat = cast(list[Any], make_flat_list_of_images(images, expected_ndims=expected_ndims))
        except (ValueError, TypeError, AttributeError):
            raise ValueError(
                f"Unsupported {what} ({type(images).__name__}): expected PIL images, numpy arrays or torch tensors, "
                "or a (nested) list of them."
            ) from None
        if len(flat) == 0:
            raise ValueError(f"No {what} were given (empty list).")
        return flat

    def process_image(
        self,
        image: ImageInput,
        do_convert_rgb: bool | None = True,
        input_data_format: str | ChannelDimension | None = None,
        device: str | torch.device | None = None,
        alpha_white: float = 255.0,
        **kwargs: Any,
    ) -> torch.Tensor:
        """One image -> a new channels-first tensor: 3 channels (grey expanded, alpha composited onto `alpha_white`,
        as `decode_image` does for PIL images) with `do_convert_rgb`, else the channels as they are."""
        if isinstance(image, PIL.Image.Image):
            image, input_data_format = np.array(decode_image(image) if do_convert_rgb else image), "channels_last"
        x: object
        if isinstance(image, np.ndarray):  # torch views neither read-only nor flipped (negative-stride) arrays
            x = torch.from_numpy(
                image if image.flags.writeable and min(image.strides, default=0) >= 0 else image.copy()
            )
        else:
            x = image
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"Unsupported image type {type(image).__name__}: expected a PIL image, array or tensor.")
        _refuse_dtype(x)
        shape = tuple(x.shape)  # the image's own, for the errors
        if x.ndim not in (2, 3):
            raise ValueError(f"Expected a 2-D (H, W) or 3-D (C, H, W) / (H, W, C) image, got shape {tuple(x.shape)}.")
        if x.ndim == 2:
            x, input_data_format = x[None], ChannelDimension.FIRST
        if 0 in x.shape:
            raise ValueError(f"Empty image: shape {shape} has a zero-size side.")
        if input_data_format is None and x.shape[-1] == 3 and x.shape[0] != 3:  # (1, W, 3): one RGB row, not grey
            input_data_format = ChannelDimension.LAST
        # typed for arrays, it reads only `ndim` and `shape` (transformers' torchvision backend passes tensors too)
        channel_format = input_data_format or infer_channel_dimension_format(x, num_channels=(1, 3, 4))  # type: ignore[arg-type]
        if channel_format == ChannelDimension.LAST:
            x = x.permute(2, 0, 1)
        if do_convert_rgb and x.shape[0] not in (1, 3, 4):
            raise ValueError(f"Image of shape {shape} has {x.shape[0]} channels; expected 1, 3 or 4.")
        if do_convert_rgb and x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        elif do_convert_rgb and x.shape[0] == 4:  # float32 maths; `alpha_white` is white of float input
            white = 255.0 if x.dtype == torch.uint8 else alpha_white
            alpha = x[3:].to(torch.float32) / white
            rgb = x[:3].to(torch.float32) * alpha + (1.0 - alpha) * white
            x = rgb.round().to(torch.uint8) if x.dtype == torch.uint8 else rgb
        dtype = x.dtype if x.dtype in (torch.uint8, torch.float32) else torch.float32
        return x.to(device=device, dtype=dtype, memory_format=torch.contiguous_format, copy=True)

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
        pixel_values = self._prepare_image_like_inputs(  # type: ignore[attr-defined]
            images,
            do_convert_rgb=do_convert_rgb,
            input_data_format=input_data_format,
            device=device,
            alpha_white=255.0 if kwargs.get("do_rescale") else 1.0,  # float images are 0-255 when rescaled
        )
        _check_float_images(pixel_values, bool(kwargs.get("do_rescale")))
        for name in ("image_mean", "image_std") if kwargs.get("do_normalize") else ():
            for i, image in enumerate(pixel_values):
                if np.size(kwargs[name]) not in (1, image.shape[0]):
                    raise ValueError(
                        f"Image {i} has {image.shape[0]} channels but {name} has {np.size(kwargs[name])} values; give "
                        "one value per channel (or pass `do_convert_rgb=True` to convert the image to RGB)."
                    )
        data = {"pixel_values": self._preprocess(pixel_values, **kwargs)}
        if segmentation_maps is not None:
            maps = self._prepare_images_structure(segmentation_maps, expected_ndims=2)
            labels = [to_label_map(segmentation_map, i) for i, segmentation_map in enumerate(maps)]
            if len(labels) != len(pixel_values):
                batch = getattr(segmentation_maps, "shape", ())
                raise ValueError(
                    f"Got {len(labels)} segmentation maps for {len(pixel_values)} images; give one per image."
                    + (
                        f" segmentation_maps is one array of shape {tuple(batch)}, read as a batch of {len(labels)} "
                        f"(H, W) maps; each map must be a 2-D (H, W) array of class ids.{_COLOUR_MASK_HINT}"
                        if len(batch) == 3
                        else ""
                    )
                )
            for i, (image, label_map) in enumerate(zip(pixel_values, labels, strict=True)):
                if image.shape[-2:] != label_map.shape:
                    (ih, iw), (mh, mw) = image.shape[-2:], label_map.shape
                    raise ValueError(
                        f"Segmentation map {i} has size {mh}x{mw} (HxW) but its image is {ih}x{iw}; they must match."
                    )
                try:
                    label_map = reduce_segmentation_labels(label_map) if do_reduce_labels else label_map
                except ValueError as error:
                    raise ValueError(f"Segmentation map {i}: {error}") from None
                if kwargs.get("do_resize"):
                    labels[i] = resize(
                        label_map, get_setr_resize_output_size(label_map.shape, kwargs["size"]), "nearest"
                    )
                else:
                    labels[i] = label_map
            data["labels"] = labels
        if do_pad:
            sizes = [tuple(x.shape[-2:]) for x in data["pixel_values"]]
            # a `pad_size` has both sides (`_validate_preprocess_kwargs`)
            height, width = (
                (pad_size.height, pad_size.width)
                if pad_size and pad_size.height and pad_size.width
                else map(max, zip(*sizes))
            )
            if any(h > height or w > width for h, w in sizes):
                raise ValueError(f"Cannot pad images of sizes {sizes} to pad_size {height}x{width}: it is smaller.")
            for key, fill in (("pixel_values", 0), ("labels", IGNORE_INDEX)):
                if key in data:
                    data[key] = [
                        F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]), value=fill) for x in data[key]
                    ]
        for key, values in data.items():
            if return_tensors is not None and len({tuple(x.shape) for x in values}) > 1:
                raise ValueError(
                    f"Cannot stack {key} of different sizes {sorted({tuple(x.shape) for x in values})} into one tensor "
                    f"(return_tensors={return_tensors!r}): the keep-ratio resize gives each aspect ratio its own size, "
                    "and mmseg evaluates one image at a time. Process the images one by one, pass "
                    "`return_tensors=None` to get a list, or pass `do_pad=True` with `pad_size={'height': h, 'width': "
                    "w}` to pad them (bottom/right) to a common size."
                )
            data[key] = [self._output(x) for x in values]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _preprocess(
        self,
        images: list[torch.Tensor],
        do_resize: bool,
        size: SizeDict,
        resample: Any,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | Sequence[float],
        image_std: float | Sequence[float],
        disable_grouping: bool | None = None,
        **kwargs: Any,
    ) -> list[torch.Tensor]:
        grouped, grouped_index = group_images_by_shape(images, disable_grouping=disable_grouping)
        processed = {}
        for shape, stack in grouped.items():
            if do_resize:
                stack = resize(stack, get_setr_resize_output_size(stack.shape[-2:], size), resample_mode(resample))
            processed[shape] = rescale_and_normalize(
                stack, do_rescale, rescale_factor, do_normalize, image_mean, image_std
            )
        # a list for a flat input; transformers types the result as a list or one tensor
        return cast(list[torch.Tensor], reorder_images(processed, grouped_index))

    def post_process_semantic_segmentation(
        self,
        outputs: Any,
        target_sizes: Sequence[tuple[int, int]] | torch.Tensor | None = None,
        return_segmentation_scores: bool = False,
    ) -> list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]:
        """The logits of `SetrForSemanticSegmentation` -> one int64 `(height, width)` class-id map per image: resized
        bilinearly (`align_corners=False`, as mmseg) to `target_sizes[i]` (else at the logits' resolution), then the
        argmax, or a binary model's single channel thresholded (`labels_from_scores`). With
        `return_segmentation_scores=True`, `SemanticSegmentationPostProcessorOutput` items that also hold the resized
        logits (`segmentation_scores`)."""
        logits = outputs.logits
        if target_sizes is not None and len(target_sizes) != len(logits):
            raise ValueError(
                f"Got {len(target_sizes)} target sizes for a batch of {len(logits)} logits; pass one (height, width) "
                "per image."
            )
        results: list[Any] = []
        for i, scores in enumerate(logits):
            if target_sizes is not None:
                target = tuple(int(s) for s in target_sizes[i])
                scores = F.interpolate(scores[None], size=target, mode="bilinear", align_corners=False)[0]
            item = {"segmentation": labels_from_scores(scores, dim=0), "segmentation_scores": scores}
            results.append(
                SemanticSegmentationPostProcessorOutput(data=item)
                if return_segmentation_scores
                else item["segmentation"]
            )
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


def processor_docstring(backend: str) -> str:
    """The class docstring of a backend: what it is, then the arguments both backends share."""
    return f"""
    SETR image processor ({backend}). Reproduces mmsegmentation's SETR test pipeline: `decode_image` (8-bit RGB),
    keep-ratio resize (mmcv `imrescale`, cv2 `INTER_LINEAR` without antialias on 0-255 values rounded back to uint8),
    then mean/std normalisation. Both backends run the same torch code and give the same outputs.

    Args:
        size (`dict[str, int]`, *optional*, defaults to `{{"shortest_edge": 512, "longest_edge": 2048}}`):
            Keep-ratio target: mmseg `Resize(scale=(longest_edge, shortest_edge), keep_ratio=True)`. ADE20K uses
            512/2048, Cityscapes 1025/2049. `{{"height": h, "width": w}}` resizes to exactly that size.
        do_reduce_labels (`bool`, *optional*, defaults to `False`):
            Apply mmseg's `reduce_zero_label` to segmentation maps (ADE20K): 0 -> 255, v -> v - 1, 255 stays 255.
        do_pad (`bool`, *optional*, defaults to `False`):
            Pad bottom/right to `pad_size` (or to the largest image) with 0 (pixels, normalised space) and 255
            (labels).
        Other arguments (`do_resize`, `resample`, `do_rescale`, `rescale_factor`, `do_normalize`, `image_mean`,
        `image_std`, `do_convert_rgb`, `device`, `disable_grouping`) are the usual transformers ones.
    """
