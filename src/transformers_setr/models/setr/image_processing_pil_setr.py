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
"""SETR image processor, PIL backend (no torchvision needed; NumPy outputs); the processing is
`image_processing_base_setr.py`'s, shared with `SetrImageProcessor`. Shipped next to the weights for
`trust_remote_code`: it imports only numpy, torch, transformers and the other SETR files."""

import numpy as np
import torch
from transformers.image_processing_backends import PilBackend

from .image_processing_base_setr import (  # the first five are re-exported: they lived here before 0.2
    SetrImageProcessingMixin,
    SetrImageProcessorKwargs,
    get_setr_resize_output_size,
    nearest_source_indices,
    processor_docstring,
    reduce_segmentation_labels,
)

__all__ = [
    "SetrImageProcessingMixin",
    "SetrImageProcessorKwargs",
    "SetrImageProcessorPil",
    "get_setr_resize_output_size",
    "nearest_source_indices",
    "reduce_segmentation_labels",
]


# The mixin overrides `_preprocess`, `_preprocess_image_like_inputs` (with `segmentation_maps`) and the other hooks
# with SETR's own signatures, as transformers' BaseImageProcessor docs tell a model's processor to; its backends'
# hooks are typed with theirs.
class SetrImageProcessorPil(SetrImageProcessingMixin, PilBackend):  # type: ignore[misc]
    __doc__ = processor_docstring("PIL backend: no torchvision needed, NumPy arrays out")

    def _output(self, x: torch.Tensor) -> np.ndarray:
        return x.cpu().numpy()


SetrImageProcessorPil.register_for_auto_class("AutoImageProcessor")
