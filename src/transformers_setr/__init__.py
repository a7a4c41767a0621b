"""SETR semantic segmentation for Hugging Face transformers.

Importing the package registers SETR with the Auto classes (`AutoConfig`, `AutoModel`,
`AutoModelForSemanticSegmentation`, `AutoImageProcessor`) and with `pipeline("image-segmentation")`. The model code
is in `models/setr/`; the rooms around it (`inference`, `conversion`, `data`, `training`, `evaluation`, `cards`) are
imported when first used, and the training ones need the `[train]` extra.
"""

from typing import TYPE_CHECKING

from transformers.utils import is_torchvision_available

from ._imports import lazy_exports
from .models.setr.configuration_setr import SetrConfig
from .models.setr.image_processing_pil_setr import SetrImageProcessorPil
from .models.setr.modeling_setr import (
    SetrForSemanticSegmentation,
    SetrModel,
    SetrPreTrainedModel,
    SetrSemanticSegmenterOutput,
)
from .registration import register_auto_classes

# The type checker sees the torchvision class, the name's documented type.
if TYPE_CHECKING or is_torchvision_available():
    from .models.setr.image_processing_setr import SetrImageProcessor
else:  # transformers' own convention: the processor name falls back to the PIL backend
    SetrImageProcessor = SetrImageProcessorPil

__version__ = "0.2.0"

register_auto_classes()

_getattr, __dir__, _lazy_names = lazy_exports(
    __name__,
    {
        "evaluation.metrics": ("MeanIoU", "evaluate_metric_path"),
        "inference": ("INFERENCE_MODES", "predict_labels", "multi_scale_flip_segmentation"),
        "inference.visualize": ("overlay_with_legend",),
    },
)
__getattr__ = _getattr

__all__ = [
    "SetrConfig",
    "SetrForSemanticSegmentation",
    "SetrImageProcessor",
    "SetrImageProcessorPil",
    "SetrModel",
    "SetrPreTrainedModel",
    "SetrSemanticSegmenterOutput",
    *_lazy_names,
]
