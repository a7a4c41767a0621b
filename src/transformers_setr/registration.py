"""Registration of SETR with transformers' Auto classes and the image-segmentation pipeline."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForSemanticSegmentation
from transformers.models.auto import modeling_auto
from transformers.utils import is_torchvision_available

from .configuration_setr import SetrConfig
from .image_processing_pil_setr import SetrImageProcessorPil
from .modeling_setr import SetrForSemanticSegmentation, SetrModel


def register_auto_classes() -> None:
    """Register SETR with the Auto classes. Safe to call more than once."""
    AutoConfig.register(SetrConfig.model_type, SetrConfig, exist_ok=True)
    AutoModel.register(SetrConfig, SetrModel, exist_ok=True)
    AutoModelForSemanticSegmentation.register(SetrConfig, SetrForSemanticSegmentation, exist_ok=True)
    processors = {"pil": SetrImageProcessorPil}
    if is_torchvision_available():
        from .image_processing_setr import SetrImageProcessor

        processors["torchvision"] = SetrImageProcessor
    AutoImageProcessor.register(SetrConfig, image_processor_classes=processors, exist_ok=True)
    # The pipeline checks the model against transformers' static name tables (which registration does not touch)
    # and logs a spurious "not supported for image-segmentation" error otherwise.
    modeling_auto.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES.setdefault(
        SetrConfig.model_type, SetrForSemanticSegmentation.__name__
    )
