"""Datasets: ADE20K, Cityscapes and custom data as `datasets` objects (needs the `[train]` extra): where data comes
from (`sources`: one detector and loader per kind of source, in the table `SOURCES`), the splits as tables of one
schema (`splits`), the classes and how masks store them (`classes`), mask reading (`masks`), the data with its
`decode` (`dataset`), the class names and palettes (`label_tables`), the data report before training (`report`),
and synthetic data in the real layouts (`synthetic`).
"""

from .._imports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "errors": ("DatasetFormatError", "UndeclaredClassesError"),
        "classes": (
            "LABEL_FORMATS",
            "CUSTOM_LABEL_FORMAT",
            "CUSTOM_DATASET",
            "ID2LABEL_FILE",
            "DATASETS_PRETTY_NAMES",
            "checked_dataset_id2label",
            "read_id2label",
            "classes_for",
            "ClassDeclaration",
            "declare_classes",
            "parse_mask_values",
        ),
        "splits": (
            "DEFAULT_TRAIN_VAL_SPLIT",
            "TRAIN_VAL_SPLIT_SEED",
            "IMAGE_COLUMNS",
            "LABEL_COLUMNS",
            "DEFAULT_SPLITS",
            "normalise_split",
        ),
        "dataset": ("IGNORE_INDEX", "SegmentationExample", "SegmentationData"),
        "sources": (
            "IN_MEMORY_SOURCE",
            "IMAGE_SUFFIXES",
            "MASK_SUFFIXES",
            "MASK_FOLDERS",
            "ADE20K_HUB_ID",
            "ADE20K_HUB_ALIASES",
            "ADE20K_PARQUET_REVISION",
            "ADE20K_PARQUET_DATA_DIR",
            "SOURCES",
            "load_segmentation_data",
        ),
        "report": ("DataReport", "data_report"),
    },
)
