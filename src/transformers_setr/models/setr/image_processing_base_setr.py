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
training data and `setr segment`), mmcv's keep-ratio size rule, and each preprocessing step of mmsegmentation's SETR
test pipeline as one torch implementation, which `image_processing_setr.py` (torchvision) and
`image_processing_pil_setr.py` (NumPy outputs) bind to transformers' two backends."""

import io
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, cast

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
_COLOUR_MASK_HINT = " A colour (RGB) mask must first be mapped to class ids (e.g. with the dataset's palette)."


class UnsupportedImageError(ValueError):
    """An image `decode_image` refuses (16-bit, 32-bit or float), as opposed to a file that cannot be read."""


def upright(image: PIL.Image.Image) -> PIL.Image.Image:
    """The image with its EXIF orientation applied (the step of `decode_image` the pipeline needs for its sizes)."""
    return PIL.ImageOps.exif_transpose(image) if image.getexif().get(_EXIF_ORIENTATION, 1) != 1 else image


def decode_image(image: "str | os.PathLike | bytes | IO[bytes] | PIL.Image.Image") -> PIL.Image.Image:
    """The one decode of an image (a model is served the picture it was trained on): a path, URL, bytes, file object or
    PIL image -> upright (EXIF) 8-bit RGB, transparency onto white (transformers' `convert_to_rgb`). 16-bit, 32-bit and
    float images are refused (`UnsupportedImageError`), not clipped: SETR, like mmsegmentation, works on 8-bit ones."""
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
        mmseg's `reduce_zero_label` on the segmentation maps (ADE20K: 0 is "other", ignored): 0 -> 255, v -> v - 1.
    """

    do_reduce_labels: bool


def get_setr_resize_output_size(image_size: Sequence[int], size: SizeDict | dict[str, int]) -> tuple[int, int]:
    """`(height, width)` of SETR's resize of an image of `image_size = (height, width)`: `height` and `width` exactly;
    else mmcv's keep-ratio `imrescale` (mmseg's `Resize(scale=(longest, shortest), keep_ratio=True)`):
    `factor = min(longest / max(h, w), shortest / min(h, w))`, `new = int(old * factor + 0.5)`, at least 1."""
    size = {key: value for key, value in dict(size).items() if value is not None}
    keys, (height, width) = set(size), (int(image_size[0]), int(image_size[1]))
    if not (keys == {"height", "width"} or keys and keys <= {"shortest_edge", "longest_edge"}) or not all(
        isinstance(value, (int, np.integer)) and value > 0 for value in size.values()
    ):
        raise ValueError(
            "SETR `size` is positive integers under 'shortest_edge' and/or 'longest_edge' (mmseg's keep-ratio resize, "
            f"e.g. 512 / 2048 for ADE20K), or under 'height' and 'width'; got {size}."
        )
    if height <= 0 or width <= 0:
        raise ValueError(f"Cannot resize an empty image of size {height}x{width} (HxW).")
    if keys == {"height", "width"}:
        return int(size["height"]), int(size["width"])
    factors = [size["longest_edge"] / max(height, width)] if "longest_edge" in size else []
    factors += [size["shortest_edge"] / min(height, width)] if "shortest_edge" in size else []
    return max(1, int(height * min(factors) + 0.5)), max(1, int(width * min(factors) + 0.5))


def resample_mode(resample: Any) -> str:
    """Map a PIL / torchvision resample value to "bilinear" or "nearest" (the only modes mmseg's pipeline uses)."""
    value = getattr(resample, "value", resample)  # torchvision's InterpolationMode is a str Enum
    if value in (None, PILImageResampling.BILINEAR, "bilinear"):
        return "bilinear"
    if value in (PILImageResampling.NEAREST, "nearest"):
        return "nearest"
    raise ValueError(f"Unsupported `resample={resample!r}`: SETR implements mmseg's bilinear and nearest only.")


def nearest_source_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output index for cv2 INTER_NEAREST (mmcv's, for label maps): `floor(dst * (1 / (out / in)))`
    in float64 (torch's float32 scale picks another row in ~1 of 10^4 positions), at most `in - 1`."""
    inverse_scale = 1.0 / (out_size / in_size)  # cv2 `resizeNN`: ifx = 1. / fx, fx = out / in
    return np.minimum(np.floor(np.arange(out_size) * inverse_scale).astype(np.int64), in_size - 1)


def resize(x: torch.Tensor, output_size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize the last two axes of `x` as mmseg does: nearest picks cv2 INTER_NEAREST's source pixels; bilinear is cv2
    INTER_LINEAR (no antialias) in float32, uint8 rounded half-up back to uint8 as cv2's fixed point does."""
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


def _check_float_images(images: list[torch.Tensor], do_rescale: bool) -> None:
    """Refuse non-finite floats (a NaN pixel spreads to thousands of logits) and, with `do_rescale`, floats outside
    0..255 (16-bit data would become values up to 257); warn, as transformers does, of floats already in 0..1."""
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
                "assumes: bring it to 0-255 (16-bit data: divide by 257), or pass `do_rescale=False` if rescaled."
            )
        looks_rescaled = looks_rescaled or (low >= 0 and high <= 1)
    if do_rescale and looks_rescaled:
        logger.warning_once(
            "It looks like you are trying to rescale already rescaled images. If the input images have pixel values "
            "between 0 and 1, set `do_rescale=False` to avoid rescaling them again."
        )


def to_label_map(segmentation_map: Any, index: int = 0, size: tuple[int, int] | None = None) -> torch.Tensor:
    """One segmentation map (of its image's `size`) -> a new 2-D int64 CPU tensor of class ids, or a clear error."""
    what, x = f"Segmentation map {index}", segmentation_map
    if isinstance(x, PIL.Image.Image) and x.mode not in ("1", "L", "P", "F") and not x.mode.startswith("I"):
        raise ValueError(f"{what} is a PIL image in mode {x.mode!r}: expected a one-channel map ('L', 'P', 'I;16').")
    if isinstance(x, PIL.Image.Image) or isinstance(x, np.ndarray) and x.dtype.kind in "biuf":
        x = np.asarray(x)
        x = torch.from_numpy(x.astype(np.float64 if x.dtype.kind == "f" else np.int64))
    if not isinstance(x, torch.Tensor) or x.is_complex():
        raise ValueError(f"{what} has the unsupported type or dtype {getattr(x, 'dtype', type(x).__name__)}.")
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(
            f"{what} must be a non-empty 2-D (H, W) array of class ids, got shape {tuple(x.shape)}.{_COLOUR_MASK_HINT}"
        )
    # floats hold every integer exactly only up to 2**53; inf and 1e20 would overflow int64
    if x.is_floating_point() and (largest := float(x.abs().max())) > 2**53:
        raise ValueError(f"{what} holds float values too large to be class ids (largest magnitude {largest:g}).")
    if size is not None and tuple(x.shape) != size:
        raise ValueError(f"{what} has size {x.shape[0]}x{x.shape[1]} (HxW) but its image is {size[0]}x{size[1]}.")
    if x.is_floating_point() and not bool(torch.all(x == torch.round(x))):
        raise ValueError(f"{what} holds non-integer float values (or NaN); expected integer class ids.")
    return x.detach().to("cpu", torch.int64, copy=True)


def reduce_segmentation_labels(labels: np.ndarray | torch.Tensor) -> Any:
    """mmseg `reduce_zero_label` (0 -> 255, v -> v - 1, 255 stays 255), a new array of the same kind; 256 is refused."""
    if bool((labels == IGNORE_INDEX + 1).any()):
        raise ValueError(
            f"the label value {IGNORE_INDEX + 1} would become {IGNORE_INDEX}, the ignore index, with do_reduce_labels "
            "(0 -> 255, v -> v - 1), and be silently ignored; pass do_reduce_labels=False or fix the map."
        )
    x = torch.as_tensor(labels)
    reduced = torch.where((x == 0) | (x == IGNORE_INDEX), IGNORE_INDEX, x.to(torch.int64) - 1).to(x.dtype)
    return reduced.numpy() if isinstance(labels, np.ndarray) else reduced


class SetrImageProcessingMixin:
    """
    SETR's image processor on either backend: mmsegmentation's SETR test pipeline (`decode_image`, keep-ratio resize
    with cv2 `INTER_LINEAR` on 0-255 values, mmseg's mean/std), one torch implementation for both backends.

    Args (the others are transformers' usual ones):
        size (`dict[str, int]`, *optional*, defaults to `{"shortest_edge": 512, "longest_edge": 2048}`):
            mmseg's `Resize(scale=(longest_edge, shortest_edge), keep_ratio=True)` (ADE20K; Cityscapes: 1025 / 2049),
            or exactly `{"height": h, "width": w}`.
        do_pad (`bool`, *optional*, defaults to `False`):
            Pad bottom/right to `pad_size` (or to the largest image) with 0 (pixels, normalised) and 255 (labels).
    """

    valid_kwargs: type[ImagesKwargs] = SetrImageProcessorKwargs
    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_DEFAULT_MEAN  # x 255 = mmseg mean (123.675, 116.28, 103.53)
    image_std = IMAGENET_DEFAULT_STD  # x 255 = mmseg std (58.395, 57.12, 57.375)
    size = {"shortest_edge": 512, "longest_edge": 2048}  # mmseg ADE20K scale (2048, 512); Cityscapes: 1025 / 2049
    default_to_square = False
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    do_pad = False
    do_reduce_labels = False

    def __init__(self, **kwargs: Unpack[SetrImageProcessorKwargs]):  # the backend's, typed with SETR's kwargs
        super().__init__(**kwargs)  # type: ignore[misc]  # the backend's (as in the methods below)

    def preprocess(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        **kwargs: Unpack[SetrImageProcessorKwargs],
    ) -> BatchFeature:
        """Images (8-bit or 0-255 floats) and optionally one 2-D class-id map each -> `pixel_values`, `labels`."""
        return super().preprocess(images, segmentation_maps, **kwargs)  # type: ignore[misc]

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()  # type: ignore[misc]  # with the saved class alone in `auto_map`: name both
        output["auto_map"] = {**output.get("auto_map", {}), "AutoImageProcessor": dict(SETR_IMAGE_PROCESSOR_AUTO_MAP)}
        return output

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> Any:
        """Save with both backends' code (transformers copies only the saved class's) for `trust_remote_code`; push."""
        hub_names = ("repo_id", "commit_message", "token", "private", "create_pr", "revision", "commit_description")
        hub_kwargs = {name: kwargs.pop(name) for name in hub_names if name in kwargs}
        saved = super().save_pretrained(save_directory, **kwargs)  # type: ignore[misc]
        for module_path in SETR_IMAGE_PROCESSOR_AUTO_MAP.values():
            source = Path(__file__).with_name(module_path.split(".")[0] + ".py")  # a remote-code cache may lack it
            if source.exists() and not (target := Path(save_directory, source.name)).exists():
                shutil.copyfile(source, target)
        if push_to_hub:
            self.push_to_hub(hub_kwargs.pop("repo_id", Path(save_directory).name), **hub_kwargs)  # type: ignore[attr-defined]
        return saved

    def _validate_preprocess_kwargs(self, **kwargs: Any) -> None:
        super()._validate_preprocess_kwargs(**kwargs)  # type: ignore[misc]
        if kwargs.get("do_resize"):  # the size rule and the resample mode refuse what SETR cannot do
            get_setr_resize_output_size((1, 1), kwargs.get("size") or {})
            resample_mode(kwargs.get("resample"))
        if kwargs.get("do_center_crop"):
            raise ValueError("`do_center_crop` is not part of SETR preprocessing and is not supported.")
        if kwargs.get("do_pad") and (pad := kwargs.get("pad_size")) is not None and not (pad.height and pad.width):
            raise ValueError(f"`pad_size` must be {{'height': h, 'width': w}}, got {dict(pad)}.")

    def fetch_images(self, images: Any) -> Any:
        """transformers' input step before its flattening: paths and URLs through `decode_image` (its `load_image`
        would drop alpha and clip 16 bits), a 2-D array as one grey image (not a batch of rows), anything else refused."""
        if isinstance(images, (list, tuple)):
            return [self.fetch_images(item) for item in images]
        if isinstance(images, (str, os.PathLike)):
            return decode_image(images)
        if not is_valid_image(images) or getattr(images, "ndim", 3) not in (2, 3, 4):
            raise ValueError(
                f"Unsupported image {type(images).__name__} {tuple(getattr(images, 'shape', ()))}: expected PIL images, "
                "(H, W), (H, W, C), (C, H, W) arrays or tensors, batches of them, paths or URLs, or lists of these."
            )
        return images[None] if getattr(images, "ndim", 0) == 2 else images

    def process_image(
        self,
        image: ImageInput,
        do_convert_rgb: bool | None = True,
        input_data_format: str | ChannelDimension | None = None,
        device: str | torch.device | None = None,
        do_rescale: bool = True,
        **kwargs: Any,
    ) -> torch.Tensor:
        """One image -> a new channels-first tensor: with `do_convert_rgb` RGB (grey expanded, alpha onto white)."""
        if isinstance(image, PIL.Image.Image):
            image, input_data_format = np.array(decode_image(image) if do_convert_rgb else image), "channels_last"
        if isinstance(image, np.ndarray):  # torch views neither read-only nor flipped (negative-stride) arrays
            viewable = image.flags.writeable and min(image.strides, default=0) >= 0
            image = torch.from_numpy(image if viewable else image.copy())
        x = cast(torch.Tensor, image)  # `fetch_images` lets only images through
        shape = tuple(x.shape)
        if x.dtype != torch.uint8 and not x.is_floating_point():
            kind = "boolean" if x.dtype == torch.bool else "complex" if x.is_complex() else f"{x.itemsize * 8}-bit int"
            raise ValueError(
                f"Image dtype {str(x.dtype).removeprefix('torch.')} ({kind}) is not supported: SETR works on 8-bit images, "
                "as mmsegmentation does. Rescale it to 0-255 and cast to uint8, or pass float values on the 0-255 scale."
            )
        if x.ndim not in (2, 3):
            raise ValueError(f"Expected a 2-D (H, W) or 3-D (C, H, W) / (H, W, C) image, got shape {shape}.")
        if x.ndim == 2:
            x, input_data_format = x[None], ChannelDimension.FIRST
        if 0 in x.shape:
            raise ValueError(f"Empty image: shape {shape} has a zero-size side.")
        if input_data_format is None and x.shape[-1] == 3 and x.shape[0] != 3:  # (1, W, 3): one RGB row, not grey
            input_data_format = ChannelDimension.LAST
        # typed for arrays, it reads only `ndim` and `shape` (transformers' torchvision backend passes tensors too)
        if (input_data_format or infer_channel_dimension_format(x, num_channels=(1, 3, 4))) == ChannelDimension.LAST:  # type: ignore[arg-type]
            x = x.permute(2, 0, 1)
        if do_convert_rgb and x.shape[0] not in (1, 3, 4):
            raise ValueError(f"Image of shape {shape} has {x.shape[0]} channels; expected 1, 3 or 4.")
        if do_convert_rgb and x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        elif do_convert_rgb and x.shape[0] == 4:  # in float32, onto 255 for uint8 and floats to rescale, else onto 1
            white = 255.0 if x.dtype == torch.uint8 or do_rescale else 1.0
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
            images, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, device=device, **kwargs
        )
        if not pixel_values:
            raise ValueError("No images were given (empty list).")
        _check_float_images(pixel_values, kwargs["do_rescale"])
        data: dict[str, list[Any]] = {"pixel_values": self._preprocess(pixel_values, **kwargs)}
        if segmentation_maps is not None:
            # a list holds one map per image (a 3-D item is refused as a colour mask, not read as a batch)
            one_each = isinstance(segmentation_maps, (list, tuple)) and all(map(is_valid_image, segmentation_maps))
            flat = segmentation_maps if one_each else make_flat_list_of_images(segmentation_maps, 2)
            maps = list(cast(Sequence[Any], flat))
            if len(maps) != len(pixel_values):
                shape = tuple(getattr(segmentation_maps, "shape", ()))
                batch = f" segmentation_maps is one array of shape {shape}, read as a batch of (H, W) maps."
                raise ValueError(
                    f"Got {len(maps)} segmentation maps for {len(pixel_values)} images; give one per image."
                    + (batch + _COLOUR_MASK_HINT if len(shape) == 3 else "")
                )
            labels = []
            for i, (segmentation_map, image) in enumerate(zip(maps, pixel_values)):
                label_map = to_label_map(segmentation_map, i, tuple(image.shape[-2:]))
                try:
                    label_map = reduce_segmentation_labels(label_map) if do_reduce_labels else label_map
                except ValueError as error:
                    raise ValueError(f"Segmentation map {i}: {error}") from None
                if kwargs.get("do_resize"):
                    label_map = resize(
                        label_map, get_setr_resize_output_size(label_map.shape, kwargs["size"]), "nearest"
                    )
                labels.append(label_map)
            data["labels"] = labels
        if do_pad:  # a `pad_size` has both sides (`_validate_preprocess_kwargs`)
            sizes = [tuple(x.shape[-2:]) for x in data["pixel_values"]]
            height, width = map(max, zip(*sizes)) if pad_size is None else (pad_size.height or 0, pad_size.width or 0)
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
                    f"Cannot stack {key} of different sizes {sorted({tuple(x.shape) for x in values})} (the keep-ratio "
                    "resize gives each aspect ratio its own): pass `return_tensors=None` for a list, or `do_pad=True`."
                )
            data[key] = [x.cpu().numpy() if self.backend == "pil" else x for x in values]  # type: ignore[attr-defined]
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
        # `(x * rescale_factor - mean) / std` in float32, the rescale folded into mean and std (mmseg's 0-255 maths)
        if do_normalize:
            mean, std = (
                torch.tensor(v, dtype=torch.float64).reshape(-1, 1, 1) / (rescale_factor if do_rescale else 1.0)
                for v in (image_mean, image_std)
            )
        grouped, grouped_index = group_images_by_shape(images, disable_grouping=disable_grouping)
        processed = {}
        for shape, x in grouped.items():
            if do_resize:
                x = resize(x, get_setr_resize_output_size(x.shape[-2:], size), resample_mode(resample))
            if do_normalize and {len(mean), len(std)} - {1, x.shape[-3]}:
                raise ValueError(
                    f"Images of {x.shape[-3]} channels, but {len(mean)} / {len(std)} values of image_mean / image_std; "
                    "give one per channel (or pass `do_convert_rgb=True` to convert the images to RGB)."
                )
            if do_normalize:
                x = (x.to(torch.float32) - mean.to(x.device, torch.float32)) / std.to(x.device, torch.float32)
            processed[shape] = x.to(torch.float32) * rescale_factor if do_rescale and not do_normalize else x
        # a list for a flat input; transformers types the result as a list or one tensor
        return cast(list[torch.Tensor], reorder_images(processed, grouped_index))

    def post_process_semantic_segmentation(
        self,
        outputs: Any,
        target_sizes: Sequence[tuple[int, int]] | torch.Tensor | None = None,
        return_segmentation_scores: bool = False,
    ) -> list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]:
        """Logits -> one int64 class-id map per image (`labels_from_scores`), the logits resized bilinearly as mmseg to
        `target_sizes[i]` if given; with `return_segmentation_scores`, items that also hold those logits."""
        logits = outputs.logits
        if target_sizes is not None and len(target_sizes) != len(logits):
            raise ValueError(
                f"Got {len(target_sizes)} target sizes for a batch of {len(logits)} logits; pass one per image."
            )
        results: list[Any] = []
        for i, scores in enumerate(logits):
            if target_sizes is not None:
                target = tuple(map(int, target_sizes[i]))
                scores = F.interpolate(scores[None], size=target, mode="bilinear", align_corners=False)[0]
            item = {"segmentation": labels_from_scores(scores, dim=0), "segmentation_scores": scores}
            results.append(
                SemanticSegmentationPostProcessorOutput(data=item)
                if return_segmentation_scores
                else item["segmentation"]
            )
        return results


def class_probabilities(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Softmax over `dim`; a binary model's single channel (`num_labels=1`, sigmoid + BCE): its sigmoid."""
    return logits.sigmoid() if logits.shape[dim] == 1 else logits.softmax(dim=dim)


def labels_from_scores(scores: torch.Tensor, dim: int = 1, probabilities: bool = False) -> torch.Tensor:
    """Class ids from logits (or `class_probabilities`): the argmax over `dim`; a binary model's single channel is 1
    where the foreground's probability exceeds 0.5 (logit > 0), else 0 (background)."""
    if scores.shape[dim] == 1:
        return (scores.squeeze(dim) > (0.5 if probabilities else 0.0)).long()
    return scores.argmax(dim=dim)


def confidence_from_probabilities(probabilities: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The probability of the predicted class: the maximum over `dim`; a binary model's channel: max(p, 1 - p)."""
    if probabilities.shape[dim] == 1:
        foreground = probabilities.squeeze(dim)
        return torch.maximum(foreground, 1 - foreground)
    return probabilities.amax(dim=dim)
