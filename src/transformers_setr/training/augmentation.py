"""mmsegmentation's SETR training augmentation, as one callable: image + label map + `torch.Generator` -> tensors.

The steps and their order are those of the SETR configs' `train_pipeline` (mmseg 1.2.2, see
`configs/_base_/datasets/ade20k.py` and `cityscapes_768x768.py`) followed by the model's `SegDataPreProcessor`:

1. `RandomResize(scale=(long, short), ratio_range=(0.5, 2.0), keep_ratio=True)`: `r ~ U(ratio_range)`, target scale
   `(int(long * r), int(short * r))`, then mmcv's keep-ratio rule (`get_setr_resize_output_size`); the image is
   resized like cv2 `INTER_LINEAR` on uint8 (reproduced bit for bit, see `resize_bilinear_uint8`), labels like cv2
   `INTER_NEAREST`.
2. `RandomCrop(crop_size, cat_max_ratio=0.75)`: a uniformly random window; while one class covers `cat_max_ratio`
   or more of its labelled (non-ignore) pixels, or it holds fewer than two classes, a new window is drawn, at most 10
   times (the 11th window is kept unchecked). A resized image smaller than the crop is kept whole.
3. `RandomFlip(prob=0.5)`, horizontal.
4. `PhotoMetricDistortion()`: see `photometric_distortion`.
5. `SegDataPreProcessor`: `(x - mean) / std` in float32 on RGB 0-255 values, then padding at the bottom/right to the
   crop size with 0 (image, after normalisation) and `ignore_index` (labels).

All randomness comes from one source, drawn in mmseg's order (ratio; crop offsets `(y, x)` per try; flip;
brightness, contrast mode, contrast/saturation/hue), so that `SetrTrainAugmentation.apply` can also replay draws
recorded from mmseg (the parity test does), and a sample's augmentation is a pure function of the generator state.

cv2's uint8 resize and HSV arithmetic are reproduced in numpy (torchvision's kernels round differently), so the
pipeline needs only numpy and torch. Where OpenCV is installed (`opencv-python-headless`), the pipeline calls cv2 itself
for those two steps, as mmseg does: the same pixels (the numpy versions are checked against cv2 bit for bit), about
twice the images per second (`benchmarks/bench_augmentation.py`). The one difference: cv2's HSV -> RGB rounds instead
of truncating on the pixels past the last 64-wide block of a row, which only a resized image narrower than the crop
has; there the cv2 path is mmseg's exactly and the numpy path differs by at most 1.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import PIL.Image
import torch

try:  # optional: mmseg's own kernels for the resize and the HSV conversions (see the module notes)
    import cv2 as _cv2
except ImportError:  # pragma: no cover - the numpy reproductions run instead
    _cv2 = None  # type: ignore[assignment]

from ..models.setr.configuration_setr import IGNORE_INDEX, int_pair
from ..models.setr.image_processing_base_setr import decode_image, get_setr_resize_output_size, nearest_source_indices

if TYPE_CHECKING:
    from ..presets import CheckpointPreset

__all__ = [
    "PhotometricDistortionParameters",
    "RandomSource",
    "SetrTrainAugmentation",
    "TorchRandomSource",
    "hsv_to_rgb_uint8",
    "photometric_distortion",
    "resize_bilinear_uint8",
    "resize_nearest",
    "rgb_to_hsv_uint8",
]

# mmseg's defaults for PhotoMetricDistortion (the SETR configs use them unchanged).
BRIGHTNESS_DELTA = 32
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18
# mmseg RandomCrop re-draws a window at most this many times when `cat_max_ratio < 1`.
CAT_MAX_RATIO_RETRIES = 10


# ---------------------------------------------------------------------------------------------------------------------
# Randomness


class RandomSource(Protocol):
    """The three kinds of draws the pipeline makes (numpy's `uniform`, `randint`, and `choice` for the flip)."""

    def uniform(self, low: float, high: float) -> float:
        """A float in `[low, high)`."""

    def randint(self, low: int, high: int) -> int:
        """An integer in `[low, high)`."""

    def bernoulli(self, probability: float) -> bool:
        """True with `probability`."""


class TorchRandomSource:
    """`RandomSource` backed by a CPU `torch.Generator`."""

    def __init__(self, generator: torch.Generator) -> None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"Expected a torch.Generator, got {type(generator).__name__}.")
        if generator.device.type != "cpu":
            raise ValueError(f"The augmentation draws on the CPU: pass a CPU torch.Generator, not {generator.device}.")
        self.generator = generator

    def uniform(self, low: float, high: float) -> float:
        sample = torch.rand((), dtype=torch.float64, generator=self.generator).item()
        return sample * (high - low) + low  # mmcv's expression order, so a replayed sample gives the same float

    def randint(self, low: int, high: int) -> int:
        return int(torch.randint(low, high, (), generator=self.generator).item())

    def bernoulli(self, probability: float) -> bool:
        return self.uniform(0.0, 1.0) < probability


# ---------------------------------------------------------------------------------------------------------------------
# Resizing (cv2 semantics on uint8)

# cv2 resizes uint8 images in fixed point: weights in 1/2048 (`INTER_RESIZE_COEF_BITS = 11`).
_RESIZE_COEF_SCALE = 2048


def _linear_taps(
    in_size: int, out_size: int, clamp_border_weights: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and fixed-point weights of cv2 `INTER_LINEAR` along one axis (half-pixel centres)."""
    scale = 1.0 / (out_size / in_size)  # cv2: scale_x = 1. / inv_scale_x, inv_scale_x = dst / src
    position = ((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    low = np.floor(position)
    fraction = position - low  # float32, as cv2's `fx -= sx`
    low = low.astype(np.int64)
    if clamp_border_weights:  # cv2 clamps the horizontal taps at both borders; the vertical ones only by index
        before, after = low < 0, low >= in_size - 1
        fraction[before | after] = 0.0
        low[before] = 0
        low[after] = in_size - 1
    weight_high = np.rint(fraction * np.float32(_RESIZE_COEF_SCALE)).astype(np.int32)
    weight_low = np.rint((np.float32(1.0) - fraction) * np.float32(_RESIZE_COEF_SCALE)).astype(np.int32)
    return np.clip(low, 0, in_size - 1), np.clip(low + 1, 0, in_size - 1), weight_low, weight_high


def resize_bilinear_uint8(
    image: np.ndarray, output_size: tuple[int, int], window: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """
    cv2 `resize(..., INTER_LINEAR)` of a uint8 `(H, W, C)` image to `output_size = (height, width)`, bit for bit.

    cv2 interpolates rows in fixed point (weights rounded to 1/2048) and combines two rows with its vectorised
    `(((S0 >> 4) * b0 >> 16) + ((S1 >> 4) * b1 >> 16) + 2) >> 2`; this repeats that arithmetic (checked against
    opencv 4.14 and 5.0). `window = (top, left, height, width)` computes only that part of the resized image (the
    crop), with the same values as resizing everything and cropping.
    """
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"Expected a uint8 (H, W, C) image, got {image.dtype} with shape {image.shape}.")
    out_height, out_width = output_size
    top, left, height, width = window if window is not None else (0, 0, out_height, out_width)
    if top < 0 or left < 0 or height < 1 or width < 1 or top + height > out_height or left + width > out_width:
        raise ValueError(f"Window {window} is not a non-empty part of the resized image of size {output_size}.")
    row_low, row_high, row_weight_low, row_weight_high = (
        taps[top : top + height] for taps in _linear_taps(image.shape[0], out_height, clamp_border_weights=False)
    )
    col_low, col_high, col_weight_low, col_weight_high = (
        taps[left : left + width] for taps in _linear_taps(image.shape[1], out_width, clamp_border_weights=True)
    )
    # Horizontal pass over the source rows the window needs, exact in int32 (values up to 255 * 2048).
    first_row, last_row = int(row_low.min()), int(row_high.max())
    source = image[first_row : last_row + 1].astype(np.int32)
    rows = source[:, col_low] * col_weight_low[:, None] + source[:, col_high] * col_weight_high[:, None]
    upper = rows[row_low - first_row] >> 4
    lower = rows[row_high - first_row] >> 4
    combined = ((upper * row_weight_low[:, None, None]) >> 16) + ((lower * row_weight_high[:, None, None]) >> 16)
    return np.clip((combined + 2) >> 2, 0, 255).astype(np.uint8)


def resize_nearest(
    labels: np.ndarray, output_size: tuple[int, int], window: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """cv2 `INTER_NEAREST` resize of a `(H, W)` map (values copied, never mixed); `window` as `resize_bilinear_uint8`."""
    out_height, out_width = output_size
    top, left, height, width = window if window is not None else (0, 0, out_height, out_width)
    rows = nearest_source_indices(labels.shape[0], out_height)[top : top + height]
    cols = nearest_source_indices(labels.shape[1], out_width)[left : left + width]
    return labels[rows[:, None], cols[None, :]]


# ---------------------------------------------------------------------------------------------------------------------
# Colour space (cv2 COLOR_RGB2HSV / COLOR_HSV2RGB on uint8, hue in [0, 180))

_HSV_SHIFT = 12
_DIVISORS = np.arange(1, 256, dtype=np.float64)
# cv2's reciprocal tables, rounded to 1/4096: saturation = diff * 255 / v, hue = h' * 180 / (6 * diff).
_SATURATION_TABLE = np.concatenate([[0], np.rint((255 << _HSV_SHIFT) / _DIVISORS)]).astype(np.int32)
_HUE_TABLE = np.concatenate([[0], np.rint((180 << _HSV_SHIFT) / (6.0 * _DIVISORS))]).astype(np.int32)
# For each 60-degree sector, which of (v, p, q, t) = (v, v(1-s), v(1-sf), v(1-s(1-f))) is red, green and blue.
_SECTOR_RGB = np.array([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])


def rgb_to_hsv_uint8(image: np.ndarray) -> np.ndarray:
    """cv2 `COLOR_RGB2HSV` on uint8 `(..., 3)` (exact integer arithmetic): H in [0, 180), S and V in [0, 255]."""
    red, green, blue = (image[..., channel].astype(np.int32) for channel in range(3))
    value = np.maximum(np.maximum(red, green), blue)
    diff = value - np.minimum(np.minimum(red, green), blue)
    rounding = 1 << (_HSV_SHIFT - 1)
    saturation = (diff * _SATURATION_TABLE[value] + rounding) >> _HSV_SHIFT
    hue = np.where(value == red, green - blue, np.where(value == green, blue - red + 2 * diff, red - green + 4 * diff))
    hue = (hue * _HUE_TABLE[diff] + rounding) >> _HSV_SHIFT  # arithmetic shift: floor, as cv2's int shift
    hue = np.where(hue < 0, hue + 180, hue)
    return np.stack([hue, saturation, value], axis=-1).astype(np.uint8)


@functools.cache
def _hsv_to_rgb_factors() -> np.ndarray:
    """
    `(256 * 256, 3)` float32: for each (hue, saturation) byte pair, the factor of V for red, green and blue, computed
    as cv2's vectorised path does (float32, fused multiply-adds for `1 - s * f` and `1 - s * (1 - f)`).
    """
    f32 = np.float32
    hue_byte, saturation_byte = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    hue = hue_byte.astype(f32) * f32(6.0 / 180.0)
    saturation = saturation_byte.astype(f32) * f32(1.0 / 255.0)
    sector_start = np.trunc(hue)
    fraction = hue - sector_start
    sector = (sector_start - np.trunc(sector_start * f32(1.0 / 6.0)) * f32(6.0)).astype(np.intp)
    saturation64 = saturation.astype(np.float64)
    factors = np.stack(
        [
            np.ones_like(saturation),
            f32(1.0) - saturation,
            (1.0 - saturation64 * fraction.astype(np.float64)).astype(f32),  # fma: one rounding
            (1.0 - saturation64 * (f32(1.0) - fraction).astype(np.float64)).astype(f32),
        ],
        axis=-1,
    )
    return np.take_along_axis(factors, _SECTOR_RGB[sector], axis=-1).reshape(256 * 256, 3)


def hsv_to_rgb_uint8(hsv: np.ndarray) -> np.ndarray:
    """
    cv2 `COLOR_HSV2RGB` on uint8 `(..., 3)` (hue in [0, 180)) as its vectorised path computes it: float32, channel =
    V/255 * factor(H, S) * 255 *truncated* to uint8. That path converts every pixel of rows whose width is a multiple
    of the SIMD block (64 px with AVX-512), e.g. 512 or 768-wide crops; cv2's scalar remainder rounds instead (a
    difference of at most 1).
    """
    factors = _hsv_to_rgb_factors()[hsv[..., 0].astype(np.intp) * 256 + hsv[..., 1]]
    value = hsv[..., 2].astype(np.float32) * np.float32(1.0 / 255.0)
    rgb = value[..., None] * factors  # cv2: v * (1 - ...), the factor is 1 for the channel equal to V
    return np.clip(np.trunc(rgb * np.float32(255.0)), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------------
# Photometric distortion


def _rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    if _cv2 is None:
        return rgb_to_hsv_uint8(image)
    return _cv2.cvtColor(np.ascontiguousarray(image), _cv2.COLOR_RGB2HSV)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    return hsv_to_rgb_uint8(hsv) if _cv2 is None else _cv2.cvtColor(hsv, _cv2.COLOR_HSV2RGB)


def _resize_crop(image: np.ndarray, output_size: tuple[int, int], window: tuple[int, int, int, int]) -> np.ndarray:
    """The `window` of the image resized to `output_size` (cv2 `INTER_LINEAR`): cv2 resizing it all and cropping, as
    mmseg does, or `resize_bilinear_uint8` computing the window only."""
    if _cv2 is None:
        return resize_bilinear_uint8(image, output_size, window)
    top, left, height, width = window
    resized = _cv2.resize(image, output_size[::-1], interpolation=_cv2.INTER_LINEAR)
    return resized[top : top + height, left : left + width]


@dataclass(frozen=True)
class PhotometricDistortionParameters:
    """One draw of mmseg's `PhotoMetricDistortion`; `None` = that step was not applied (each has probability 0.5)."""

    brightness_delta: float | None = None
    contrast_alpha: float | None = None
    contrast_last: bool = False  # mmseg's `mode == 0`: contrast after saturation/hue instead of before
    saturation_alpha: float | None = None
    hue_delta: int | None = None


def _scale_and_shift(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    # mmseg `convert`: float32 arithmetic, clip to [0, 255], then truncate to uint8.
    result = values.astype(np.float32) * np.float32(alpha) + np.float32(beta)
    return np.clip(result, 0, 255).astype(np.uint8)


def photometric_distortion(image: np.ndarray, parameters: PhotometricDistortionParameters) -> np.ndarray:
    """
    mmseg `PhotoMetricDistortion` on a uint8 RGB `(H, W, 3)` image with given draws: brightness (+delta), contrast
    (x alpha; first or last), saturation (S x alpha in HSV), hue (H + delta mod 180), each rounded back to uint8 in
    between. mmseg works on BGR with cv2 `BGR2HSV`; RGB with `RGB2HSV` gives the same numbers.
    """
    if parameters.brightness_delta is not None:
        image = _scale_and_shift(image, beta=parameters.brightness_delta)
    if parameters.contrast_alpha is not None and not parameters.contrast_last:
        image = _scale_and_shift(image, alpha=parameters.contrast_alpha)
    if parameters.saturation_alpha is not None:
        hsv = _rgb_to_hsv(image)
        hsv[..., 1] = _scale_and_shift(hsv[..., 1], alpha=parameters.saturation_alpha)
        image = _hsv_to_rgb(hsv)
    if parameters.hue_delta is not None:  # a second, separate HSV round trip, as in mmseg
        hsv = _rgb_to_hsv(image)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + parameters.hue_delta) % 180
        image = _hsv_to_rgb(hsv)
    if parameters.contrast_alpha is not None and parameters.contrast_last:
        image = _scale_and_shift(image, alpha=parameters.contrast_alpha)
    return image


# ---------------------------------------------------------------------------------------------------------------------
# The pipeline


def _as_rgb_array(image: PIL.Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, PIL.Image.Image):
        return np.asarray(decode_image(image))  # what the processors see: transparency onto white, grey expanded
    if not isinstance(image, np.ndarray):
        raise TypeError(f"`image` must be a PIL image or a numpy array, got {type(image).__name__}.")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"`image` must be an 8-bit RGB array of shape (H, W, 3), got dtype {image.dtype} and shape {image.shape}."
        )
    return image


def _as_label_array(labels: np.ndarray | PIL.Image.Image, max_value: int = 255) -> np.ndarray:
    """Train ids in [0, max_value] as an integer array: uint8 when they fit, else int32 (16-bit masks of more than
    255 classes). A PIL mask (L, P: the palette indices, I;16 / I) gives its stored values."""
    if isinstance(labels, PIL.Image.Image):
        if labels.mode not in ("L", "P", "I", "I;16", "I;16L", "I;16B"):
            raise ValueError(f"`labels` image of mode {labels.mode!r} is not a label map (L, P, I;16 or I).")
        labels = np.asarray(labels)
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"`labels` must be a numpy array, got {type(labels).__name__}.")
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"`labels` must be an integer (H, W) array, got dtype {labels.dtype} and shape {labels.shape}."
        )
    if labels.dtype != np.uint8:
        if labels.size and (labels.min() < 0 or labels.max() > max_value):
            raise ValueError(
                f"`labels` values must be train ids in [0, {max_value}] (the classes and the ignore index), got "
                f"[{labels.min()}, {labels.max()}]."
            )
        labels = labels.astype(np.uint8 if max_value <= 255 else np.int32)
    return labels


class SetrTrainAugmentation:
    """
    mmsegmentation's SETR training pipeline (see the module docstring): random keep-ratio resize, random crop with
    `cat_max_ratio`, horizontal flip, photometric distortion, normalisation and padding to the crop size.

    Args:
        crop_size: `(height, width)` of the training crop (and of the output).
        scale: mmseg's `(long, short)` target scale before the random ratio, e.g. `(2048, 512)` for ADE20K.
        ratio_range: range of the random scale ratio.
        cat_max_ratio: a crop where one class covers this fraction or more of the labelled pixels is re-drawn (up to
            10 times); `1.0` disables the check.
        flip_prob: probability of a horizontal flip.
        photometric_distortion: whether to apply mmseg's `PhotoMetricDistortion`.
        image_mean, image_std: per-channel RGB mean/std on the 0-255 scale.
        ignore_index: label value that is ignored (not counted by `cat_max_ratio`, used for padding).
        num_labels: the number of classes, needed only above 255 (train ids up to 254, and 255, are always allowed).

    Call it with `(image, labels, generator)`: an RGB PIL image or `(H, W, 3)` uint8 array, an `(H, W)` integer array (or L / P / 16-bit mask)
    of train ids and a CPU `torch.Generator`; it returns `pixel_values` float32 `(3, crop_h, crop_w)` and `labels`
    int64 `(crop_h, crop_w)`.
    """

    def __init__(
        self,
        crop_size: tuple[int, int],
        scale: tuple[int, int],
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric_distortion: bool = True,
        image_mean: tuple[float, float, float] = (123.675, 116.28, 103.53),
        image_std: tuple[float, float, float] = (58.395, 57.12, 57.375),
        ignore_index: int = IGNORE_INDEX,
        num_labels: int | None = None,
    ) -> None:
        self.crop_size = int_pair(crop_size, "crop_size", positive=True)
        self.scale = int_pair(scale, "scale", positive=True)
        low, high = (float(r) for r in ratio_range)
        if not 0 < low <= high:
            raise ValueError(f"`ratio_range` must be (low, high) with 0 < low <= high, got {ratio_range!r}.")
        if int(min(self.scale) * low) < 1:
            raise ValueError(f"`scale` {self.scale} times the smallest ratio {low} leaves no pixels.")
        self.ratio_range = (low, high)
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"`cat_max_ratio` must be in (0, 1], got {cat_max_ratio!r}.")
        self.cat_max_ratio = float(cat_max_ratio)
        if not 0 <= flip_prob <= 1:
            raise ValueError(f"`flip_prob` must be in [0, 1], got {flip_prob!r}.")
        self.flip_prob = float(flip_prob)
        self.photometric_distortion = bool(photometric_distortion)
        if len(image_mean) != 3 or len(image_std) != 3 or min(image_std) <= 0:
            raise ValueError(
                f"`image_mean` and `image_std` need 3 values (RGB), std > 0; got {image_mean!r}, {image_std!r}."
            )
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        if not isinstance(ignore_index, (int, np.integer)) or ignore_index < 0:
            raise ValueError(f"`ignore_index` must be a non-negative label value, got {ignore_index!r}.")
        self.ignore_index = int(ignore_index)
        self.max_label_value = max(255, self.ignore_index, (num_labels or 0) - 1)
        # float32 (3, 1, 1), as SegDataPreProcessor's buffers, so the normalisation is the same float32 arithmetic.
        self._mean = torch.tensor(self.image_mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(self.image_std, dtype=torch.float32).view(3, 1, 1)

    @classmethod
    def from_preset(cls, preset: CheckpointPreset, **kwargs) -> SetrTrainAugmentation:
        """The recipe of a released checkpoint: its square training crop and its dataset's scale."""
        return cls(crop_size=(preset.crop_size, preset.crop_size), scale=preset.test_scale, **kwargs)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(crop_size={self.crop_size}, scale={self.scale}, ratio_range={self.ratio_range}, "
            f"cat_max_ratio={self.cat_max_ratio}, flip_prob={self.flip_prob}, "
            f"photometric_distortion={self.photometric_distortion}, image_mean={self.image_mean}, "
            f"image_std={self.image_std}, ignore_index={self.ignore_index})"
        )

    def __call__(
        self, image: PIL.Image.Image | np.ndarray, labels: np.ndarray, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.apply(image, labels, TorchRandomSource(generator))

    def resized_size(self, image_size: tuple[int, int], ratio: float) -> tuple[int, int]:
        """`(height, width)` after mmcv's `RandomResize` with this `ratio` (before cropping)."""
        target = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))  # mmcv `_random_sample_ratio`
        return get_setr_resize_output_size(image_size, {"longest_edge": max(target), "shortest_edge": min(target)})

    def apply(
        self, image: PIL.Image.Image | np.ndarray, labels: np.ndarray, random_source: RandomSource
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmentation with an explicit source of draws (`__call__` uses a `TorchRandomSource`)."""
        image = _as_rgb_array(image)
        labels = _as_label_array(labels, self.max_label_value)
        if image.shape[:2] != labels.shape:
            raise ValueError(
                f"`image` is {image.shape[0]}x{image.shape[1]} but `labels` is {labels.shape[0]}x{labels.shape[1]} "
                "(HxW); they must be the same size."
            )

        resized_size = self.resized_size(labels.shape, random_source.uniform(*self.ratio_range))
        window = self._choose_crop(labels, resized_size, random_source)
        # Only the crop of the resized image is computed (same values as resizing everything, then cropping).
        image = _resize_crop(image, resized_size, window)
        labels = resize_nearest(labels, resized_size, window)

        if random_source.bernoulli(self.flip_prob):
            image, labels = image[:, ::-1], labels[:, ::-1]
        if self.photometric_distortion:
            image = photometric_distortion(image, self._sample_photometric_parameters(random_source))

        pixel_values = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(torch.float32)
        pixel_values.sub_(self._mean).div_(self._std)
        label_ids = torch.from_numpy(labels.astype(np.int64))
        if label_ids.shape == self.crop_size:
            return pixel_values, label_ids
        # SegDataPreProcessor pads at the bottom/right, the image with 0 *after* normalisation.
        height, width = label_ids.shape
        padded_pixel_values = torch.zeros((3, *self.crop_size), dtype=torch.float32)
        padded_pixel_values[:, :height, :width] = pixel_values
        padded_labels = torch.full(self.crop_size, self.ignore_index, dtype=torch.int64)
        padded_labels[:height, :width] = label_ids
        return padded_pixel_values, padded_labels

    def _choose_crop(
        self, labels: np.ndarray, resized_size: tuple[int, int], random_source: RandomSource
    ) -> tuple[int, int, int, int]:
        """mmseg `RandomCrop.crop_bbox` on the resized label map: `(top, left, height, width)`."""
        height, width = min(self.crop_size[0], resized_size[0]), min(self.crop_size[1], resized_size[1])

        def draw() -> tuple[int, int, int, int]:
            top = random_source.randint(0, resized_size[0] - height + 1)
            left = random_source.randint(0, resized_size[1] - width + 1)
            return top, left, height, width

        window = draw()
        if self.cat_max_ratio < 1.0:
            for _ in range(CAT_MAX_RATIO_RETRIES):
                crop = resize_nearest(labels, resized_size, window).ravel()
                counts = np.bincount(crop[crop != self.ignore_index])
                counts = counts[counts > 0]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                window = draw()
        return window

    def _sample_photometric_parameters(self, random_source: RandomSource) -> PhotometricDistortionParameters:
        # The order of mmseg's draws: brightness, mode, [contrast if first], saturation, hue, [contrast if last].
        def maybe_uniform(low: float, high: float) -> float | None:
            return random_source.uniform(low, high) if random_source.randint(0, 2) else None

        brightness = maybe_uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)
        contrast_last = random_source.randint(0, 2) == 0
        contrast = None if contrast_last else maybe_uniform(*CONTRAST_RANGE)
        saturation = maybe_uniform(*SATURATION_RANGE)
        # numpy's randint(-18, 18) excludes 18: the hue shift is in [-18, 17]
        hue = random_source.randint(-HUE_DELTA, HUE_DELTA) if random_source.randint(0, 2) else None
        if contrast_last:
            contrast = maybe_uniform(*CONTRAST_RANGE)
        return PhotometricDistortionParameters(brightness, contrast, contrast_last, saturation, hue)
