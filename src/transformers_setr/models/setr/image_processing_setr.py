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
"""SETR image processor, torchvision backend (batched, optionally on GPU). Same behaviour as `SetrImageProcessorPil`."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import functional as tvF
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_transforms import group_images_by_shape, reorder_images
from transformers.image_utils import ChannelDimension, ImageInput, PILImageResampling, SizeDict

from .image_processing_base_setr import (
    SetrImageProcessingMixin,
    SetrImageProcessorKwargs,
    get_setr_resize_output_size,
    nearest_source_indices,
    processor_docstring,
    resample_mode,
    to_channels_first_rgb,
)

# transformers looks for `<Processor>Kwargs` in the module of each processor class.
__all__ = ["SetrImageProcessor", "SetrImageProcessorKwargs"]


class SetrImageProcessor(SetrImageProcessingMixin, TorchvisionBackend):
    __doc__ = processor_docstring(
        "torchvision backend, batched, optionally on GPU",
        "on 0-255 values rounded back to uint8",
        "`do_resize`, `resample`, `do_rescale`, `rescale_factor`, `do_normalize`, `image_mean`, `image_std`, "
        "`do_convert_rgb`, `device`, `disable_grouping`",
    )

    def process_image(
        self,
        image: ImageInput,
        do_convert_rgb: bool | None = True,
        input_data_format: str | ChannelDimension | None = None,
        device: str | torch.device | None = None,
        alpha_white: float = 255.0,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Validate one image and return it as a (3, H, W) tensor (uint8, or float32 for float input)."""
        image = to_channels_first_rgb(image, bool(do_convert_rgb), input_data_format, alpha_white)
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(image)
        return image.to(device) if device is not None else image

    def resize(
        self,
        image: torch.Tensor,
        size: SizeDict,
        resample: PILImageResampling | tvF.InterpolationMode | int | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Resize `(..., C, H, W)` with SETR's size rule; bilinear like cv2 INTER_LINEAR (no antialias)."""
        output_size = get_setr_resize_output_size(image.shape[-2:], size)
        if output_size == tuple(image.shape[-2:]):
            return image
        if resample_mode(PILImageResampling.BILINEAR if resample is None else resample) == "nearest":
            return self._resize_label_map(image, output_size)  # cv2 INTER_NEAREST source pixels, as the PIL backend
        if image.dtype != torch.uint8:
            return tvF.resize(image, list(output_size), interpolation=tvF.InterpolationMode.BILINEAR, antialias=False)
        # Interpolate the 0-255 values in float32 and round half-up back to uint8 (cv2's fixed-point rounding). torch's
        # native uint8 CPU kernel is off by up to one grey level from the exact value; this path is also what
        # torchvision does on GPU, so CPU and GPU agree.
        resized = tvF.resize(
            image.to(torch.float32), list(output_size), interpolation=tvF.InterpolationMode.BILINEAR, antialias=False
        )
        return resized.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)

    def _preprocess(
        self,
        images: list[torch.Tensor],
        do_resize: bool,
        size: SizeDict,
        resample: PILImageResampling | tvF.InterpolationMode | int | None,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | Sequence[float],
        image_std: float | Sequence[float],
        disable_grouping: bool | None = None,
        **kwargs: Any,
    ) -> list[torch.Tensor]:
        if do_resize:
            grouped, grouped_index = group_images_by_shape(images, disable_grouping=disable_grouping)
            resized = {shape: self.resize(stack, size, resample) for shape, stack in grouped.items()}
            images = reorder_images(resized, grouped_index)
        grouped, grouped_index = group_images_by_shape(images, disable_grouping=disable_grouping)
        processed = {
            shape: self.rescale_and_normalize(stack, do_rescale, rescale_factor, do_normalize, image_mean, image_std)
            for shape, stack in grouped.items()
        }
        return reorder_images(processed, grouped_index)

    def _to_backend_label_map(self, label_map: np.ndarray | torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(label_map) if isinstance(label_map, np.ndarray) else label_map

    def _resize_label_map(self, label_map: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        # Index gather with cv2 INTER_NEAREST's source pixels (identical to the PIL backend); int64 values stay exact.
        rows = torch.from_numpy(nearest_source_indices(label_map.shape[-2], output_size[0])).to(label_map.device)
        cols = torch.from_numpy(nearest_source_indices(label_map.shape[-1], output_size[1])).to(label_map.device)
        return label_map.index_select(-2, rows).index_select(-1, cols)


SetrImageProcessor.register_for_auto_class("AutoImageProcessor")
