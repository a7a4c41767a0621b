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
"""SETR image processor, PIL backend (no torchvision needed; NumPy outputs): `image_processing_base_setr.py`'s
processing, shared with `SetrImageProcessor`."""

from transformers.image_processing_backends import PilBackend

from .image_processing_base_setr import (  # re-exported: they lived here before 0.2 (the Kwargs, for transformers)
    SetrImageProcessingMixin,
    SetrImageProcessorKwargs,
    get_setr_resize_output_size,
    nearest_source_indices,
    reduce_segmentation_labels,
)

__all__ = [
    "SetrImageProcessorKwargs",
    "SetrImageProcessorPil",
    "get_setr_resize_output_size",
    "nearest_source_indices",
    "reduce_segmentation_labels",
]


# The mixin's hooks have SETR's signatures (as transformers' docs tell a model's processor to), the backend's its own.
class SetrImageProcessorPil(SetrImageProcessingMixin, PilBackend):  # type: ignore[misc]
    """SETR image processor, PIL backend: NumPy arrays out (see `SetrImageProcessingMixin`)."""


SetrImageProcessorPil.register_for_auto_class("AutoImageProcessor")
