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
"""SETR image processor, torchvision backend (batched, optionally on GPU); the processing is
`image_processing_base_setr.py`'s, shared with `SetrImageProcessorPil`."""

from transformers.image_processing_backends import TorchvisionBackend

from .image_processing_base_setr import SetrImageProcessingMixin, SetrImageProcessorKwargs, processor_docstring

# transformers looks for `<Processor>Kwargs` in the module of each processor class.
__all__ = ["SetrImageProcessor", "SetrImageProcessorKwargs"]


# The mixin overrides `_preprocess`, `_preprocess_image_like_inputs` (with `segmentation_maps`) and the other hooks
# with SETR's own signatures, as transformers' BaseImageProcessor docs tell a model's processor to; its backends'
# hooks are typed with theirs.
class SetrImageProcessor(SetrImageProcessingMixin, TorchvisionBackend):  # type: ignore[misc]
    __doc__ = processor_docstring("torchvision backend: tensors, on `device` when given")


SetrImageProcessor.register_for_auto_class("AutoImageProcessor")
