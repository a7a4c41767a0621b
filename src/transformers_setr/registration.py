"""Registration of SETR with transformers' Auto classes and the image-segmentation pipeline."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForSemanticSegmentation
from transformers.models.auto import modeling_auto
from transformers.pipelines import PIPELINE_REGISTRY, ImageSegmentationPipeline
from transformers.utils import is_torchvision_available, logging

from .inference.pipeline import SetrImageSegmentationPipeline
from .models.setr.configuration_setr import SetrConfig
from .models.setr.image_processing_pil_setr import SetrImageProcessorPil
from .models.setr.modeling_setr import SetrForSemanticSegmentation, SetrModel

logger = logging.get_logger(__name__)


def register_auto_classes() -> None:
    """Register SETR with the Auto classes and `pipeline("image-segmentation")`. Safe to call more than once."""
    AutoConfig.register(SetrConfig.model_type, SetrConfig, exist_ok=True)
    AutoModel.register(SetrConfig, SetrModel, exist_ok=True)
    AutoModelForSemanticSegmentation.register(SetrConfig, SetrForSemanticSegmentation, exist_ok=True)
    processors: dict[str, type] = {"pil": SetrImageProcessorPil}
    if is_torchvision_available():
        from .models.setr.image_processing_setr import SetrImageProcessor

        processors["torchvision"] = SetrImageProcessor
    AutoImageProcessor.register(SetrConfig, image_processor_classes=processors, exist_ok=True)
    # The pipeline checks the model against transformers' static name tables (which registration does not touch)
    # and logs a spurious "not supported for image-segmentation" error otherwise.
    modeling_auto.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES.setdefault(
        SetrConfig.model_type, SetrForSemanticSegmentation.__name__
    )
    register_pipeline()


def register_pipeline() -> None:
    """Make `pipeline("image-segmentation")` use `SetrImageSegmentationPipeline`, which is transformers' pipeline
    unchanged for every other model. The task's implementation is per task, not per model, so this replaces it; a
    third-party replacement already there is left alone (with a warning). Safe to call more than once."""
    task = PIPELINE_REGISTRY.supported_tasks["image-segmentation"]
    impl = task["impl"]
    if impl is SetrImageSegmentationPipeline:
        return
    stock = ImageSegmentationPipeline.__module__ + "." + ImageSegmentationPipeline.__name__
    if impl is not ImageSegmentationPipeline and impl != stock:
        logger.warning(
            f"pipeline('image-segmentation') is already implemented by {impl}; SETR images of different sizes cannot "
            "be batched there and 16-bit images are clipped to 8 bits: pass "
            "pipeline_class=transformers_setr.inference.pipeline.SetrImageSegmentationPipeline."
        )
        return
    # Not `register_pipeline`: it warns about overwriting, and would mark the class for `save_pretrained` to write a
    # `custom_pipelines` entry into config.json (which would then demand trust_remote_code from every user).
    PIPELINE_REGISTRY.supported_tasks["image-segmentation"] = {**task, "impl": SetrImageSegmentationPipeline}
