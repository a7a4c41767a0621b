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
"""SETR image processor, torchvision backend (tensors, on `device` when given): `image_processing_base_setr.py`'s
processing, shared with `SetrImageProcessorPil`."""

from transformers.image_processing_backends import TorchvisionBackend

from .image_processing_base_setr import SetrImageProcessingMixin, SetrImageProcessorKwargs

__all__ = ["SetrImageProcessor", "SetrImageProcessorKwargs"]  # transformers looks for `<Processor>Kwargs` here


# The mixin's hooks have SETR's signatures (as transformers' docs tell a model's processor to), the backend's its own.
class SetrImageProcessor(SetrImageProcessingMixin, TorchvisionBackend):  # type: ignore[misc]
    """SETR image processor, torchvision backend: tensors out (see `SetrImageProcessingMixin`)."""


SetrImageProcessor.register_for_auto_class("AutoImageProcessor")
