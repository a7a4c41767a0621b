"""Evaluation with SETR's protocol: the mIoU metric (`metrics`, also as an `evaluate` module) and dataset
evaluation (`protocol`).
"""

from .._imports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "protocol": (
            "EVAL_MODES",
            "IGNORE_INDEX",
            "SegmentationEvalDataset",
            "eval_collate",
            "predict_labels",
            "batch_areas",
            "needs_cpu_process_group",
            "evaluate_segmentation",
        ),
    },
)
