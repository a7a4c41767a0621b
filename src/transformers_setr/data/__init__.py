"""Datasets: ADE20K, Cityscapes and custom data as `datasets` objects (`loading`, needs the `[train]` extra), the class
names and palettes (`label_tables`), the data report before training (`report`), and synthetic data in the real
layouts (`synthetic`).
"""

from .._imports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "loading": (
            "LABEL_FORMATS",
            "CUSTOM_LABEL_FORMAT",
            "CUSTOM_DATASET",
            "IGNORE_INDEX",
            "ID2LABEL_FILE",
            "IN_MEMORY_SOURCE",
            "DEFAULT_TRAIN_VAL_SPLIT",
            "TRAIN_VAL_SPLIT_SEED",
            "IMAGE_COLUMNS",
            "LABEL_COLUMNS",
            "IMAGE_SUFFIXES",
            "MASK_SUFFIXES",
            "MASK_FOLDERS",
            "ADE20K_HUB_ID",
            "ADE20K_HUB_ALIASES",
            "ADE20K_PARQUET_REVISION",
            "ADE20K_PARQUET_DATA_DIR",
            "DEFAULT_SPLITS",
            "DatasetFormatError",
            "UndeclaredClassesError",
            "SegmentationExample",
            "DATASETS_PRETTY_NAMES",
            "checked_dataset_id2label",
            "read_id2label",
            "classes_for",
            "ClassDeclaration",
            "declare_classes",
            "parse_mask_values",
            "normalise_split",
            "SegmentationData",
            "load_segmentation_data",
        ),
        "report": ("DataReport", "data_report"),
    },
)
