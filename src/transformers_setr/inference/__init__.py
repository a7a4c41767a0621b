"""Inference: whole, slide and multi-scale + flip behind one entry (`predict_labels`; the modes are
`INFERENCE_MODES`), the image-segmentation pipeline (`pipeline`) and colour overlays (`visualize`).
"""

from .._imports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "predict": ("INFERENCE_MODES", "check_mode", "predict_batch", "predict_labels"),
        "pipeline": ("SetrImageSegmentationPipeline",),
        "visualize": ("colorize", "overlay_with_legend", "upscale_for_display"),
        "multi_scale": (
            "MMSEG_TTA_RATIOS",
            "multi_scale_flip_probabilities",
            "multi_scale_flip_segmentation",
        ),
    },
)
