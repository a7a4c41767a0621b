"""SETR as transformers code: these files are what `save_pretrained` ships next to the weights for `trust_remote_code`
users, so they import only torch, transformers, huggingface_hub, numpy, PIL (torchvision for the fast processor) and
each other, never the rest of `transformers_setr`.

- `configuration_setr.py`: `SetrConfig`;
- `modeling_setr.py`: `SetrModel`, `SetrForSemanticSegmentation`;
- `fast_inference_setr.py`: `optimize_for_inference(model)`, the CPU inference variants of the modules (not
  imported by the model code, so not saved next to the weights);
- `image_processing_base_setr.py`: `decode_image` (the one decode of an image file) and the processing both
  image processors run (mmseg's resize rule, input checks, labels, once in torch);
- `image_processing_pil_setr.py`: `SetrImageProcessorPil` (PIL/NumPy backend);
- `image_processing_setr.py`: `SetrImageProcessor` (torchvision backend).
"""

from ..._imports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "configuration_setr": ("SetrConfig",),
        "modeling_setr": (
            "SetrForSemanticSegmentation",
            "SetrModel",
            "SetrPreTrainedModel",
            "SetrSemanticSegmenterOutput",
        ),
        "fast_inference_setr": ("optimize_for_inference",),
        "image_processing_pil_setr": ("SetrImageProcessorPil",),
        "image_processing_setr": ("SetrImageProcessor",),
    },
)
