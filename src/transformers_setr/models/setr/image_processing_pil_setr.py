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
"""SETR image processor, PIL/NumPy backend (no torchvision needed); the shared logic is in
`image_processing_base_setr.py`.

This file is shipped next to the weights for ``trust_remote_code`` users: it imports only numpy, PIL, torch,
transformers and the other SETR files.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import ChannelDimension, ImageInput, PILImageResampling, SizeDict

from .image_processing_base_setr import (  # the first four are re-exported: they lived here before 0.2
    SetrImageProcessingMixin,
    SetrImageProcessorKwargs,
    check_image_dtype,
    get_setr_resize_output_size,
    nearest_source_indices,
    processor_docstring,
    reduce_segmentation_labels,
    resample_mode,
    spatial_size,
    to_channels_first_rgb,
)

__all__ = [
    "SetrImageProcessingMixin",
    "SetrImageProcessorKwargs",
    "SetrImageProcessorPil",
    "get_setr_resize_output_size",
    "reduce_segmentation_labels",
    "resize_bilinear_numpy",
    "resize_nearest_numpy",
]


def _linear_source_indices(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights of bilinear interpolation with half-pixel centres (align_corners=False)."""
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    src = np.maximum(src, 0.0)  # cv2 and torch clamp at the top/left border
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    weight_high = (src - low).astype(np.float32)
    return low, high, (1.0 - weight_high).astype(np.float32), weight_high


def resize_bilinear_numpy(image: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """
    Bilinear resize of a channels-first `(C, H, W)` array without antialias (= cv2 INTER_LINEAR, = torch
    `interpolate(mode="bilinear", align_corners=False, antialias=False)`). Computed in float32; uint8 input is rounded
    half-up and clipped back to uint8 (what mmseg feeds to the normaliser), float input stays float32.
    """
    out_height, out_width = output_size
    _, in_height, in_width = image.shape
    if (out_height, out_width) == (in_height, in_width):
        return image.copy()
    x = image.astype(np.float32, copy=False)
    # Separable: rows first, then columns (both are exact linear combinations, order only changes float rounding).
    low, high, w_low, w_high = _linear_source_indices(in_height, out_height)
    x = x[:, low, :] * w_low[None, :, None] + x[:, high, :] * w_high[None, :, None]
    low, high, w_low, w_high = _linear_source_indices(in_width, out_width)
    x = x[:, :, low] * w_low + x[:, :, high] * w_high
    if image.dtype == np.uint8:
        return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)
    return x


def resize_nearest_numpy(array: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """Nearest resize (cv2 INTER_NEAREST) of the last two axes; any dtype, values are only copied, never mixed."""
    rows = nearest_source_indices(array.shape[-2], output_size[0])
    cols = nearest_source_indices(array.shape[-1], output_size[1])
    return array[..., rows[:, None], cols[None, :]]


class SetrImageProcessorPil(SetrImageProcessingMixin, PilBackend):
    __doc__ = processor_docstring(
        "PIL/NumPy backend, no torchvision needed",
        "on uint8",
        "`do_resize`, `resample`, `do_rescale`, `rescale_factor`, `do_normalize`, `image_mean`, `image_std`, "
        "`do_convert_rgb`",
    )

    def process_image(
        self,
        image: ImageInput,
        do_convert_rgb: bool | None = True,
        input_data_format: str | ChannelDimension | None = None,
        alpha_white: float = 255.0,
        **kwargs: Any,
    ) -> np.ndarray:
        """Validate one image and return it as a (3, H, W) numpy array (uint8, or float32 for float input)."""
        if isinstance(image, torch.Tensor):
            check_image_dtype(image)
            image = image.detach().cpu()
            image = (image if image.dtype == torch.uint8 else image.to(torch.float32)).numpy()
        return to_channels_first_rgb(image, bool(do_convert_rgb), input_data_format, alpha_white)

    def resize(
        self,
        image: np.ndarray,
        size: SizeDict,
        resample: PILImageResampling | int | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Resize a (C, H, W) array with SETR's size rule; bilinear like cv2 INTER_LINEAR (no antialias)."""
        output_size = get_setr_resize_output_size(spatial_size(image), size)
        if resample_mode(PILImageResampling.BILINEAR if resample is None else resample) == "nearest":
            return resize_nearest_numpy(image, output_size)
        return resize_bilinear_numpy(image, output_size)

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_resize: bool,
        size: SizeDict,
        resample: PILImageResampling | int | None,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | Sequence[float],
        image_std: float | Sequence[float],
        **kwargs: Any,
    ) -> list[np.ndarray]:
        mean, std = None, None
        if do_normalize:
            mean = np.asarray(image_mean, dtype=np.float64).reshape(-1, 1, 1)
            std = np.asarray(image_std, dtype=np.float64).reshape(-1, 1, 1)
            if do_rescale:
                # Fold the rescale into mean/std: (x * r - m) / s == (x - m / r) / (s / r), i.e. mmseg's 0-255 maths.
                mean, std = mean / rescale_factor, std / rescale_factor
            mean, std = mean.astype(np.float32), std.astype(np.float32)
        processed = []
        for image in images:
            if do_resize:
                image = self.resize(image, size, resample)
            if do_normalize:
                image = (image.astype(np.float32) - mean) / std
            elif do_rescale:
                image = image.astype(np.float32) * np.float32(rescale_factor)
            processed.append(image)
        return processed

    def _resize_label_map(self, label_map: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
        return resize_nearest_numpy(label_map, output_size)


SetrImageProcessorPil.register_for_auto_class("AutoImageProcessor")
