"""SETR semantic segmentation for Hugging Face transformers.

Importing the package registers SETR with the Auto classes (`AutoConfig`, `AutoModel`,
`AutoModelForSemanticSegmentation`, `AutoImageProcessor`) and with `pipeline("image-segmentation")`.
"""

from transformers.utils import is_torchvision_available

from .configuration_setr import SetrConfig
from .image_processing_pil_setr import SetrImageProcessorPil
from .metrics import MeanIoU, evaluate_metric_path
from .modeling_setr import (
    SetrForSemanticSegmentation,
    SetrModel,
    SetrPreTrainedModel,
    SetrSemanticSegmenterOutput,
)
from .registration import register_auto_classes

if is_torchvision_available():
    from .image_processing_setr import SetrImageProcessor
else:  # transformers' own convention: the processor name falls back to the PIL backend
    SetrImageProcessor = SetrImageProcessorPil

register_auto_classes()

__version__ = "0.1.0"

__all__ = [
    "MeanIoU",
    "SetrConfig",
    "SetrForSemanticSegmentation",
    "SetrImageProcessor",
    "SetrImageProcessorPil",
    "SetrModel",
    "SetrPreTrainedModel",
    "SetrSemanticSegmenterOutput",
    "evaluate_metric_path",
]
