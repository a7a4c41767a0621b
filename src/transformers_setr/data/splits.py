"""The splits of a load as `datasets` tables of one schema: `image`, `annotation` (both `Image(decode=False)`) and
`file_name`. Split names (`val` -> `validation`), the choice of splits, the columns of a table source, the
validation split carved out of train when there is none, and the first rows of each split.
"""

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from transformers.utils import logging

from .._imports import require
from .errors import DatasetFormatError

if TYPE_CHECKING:  # the real modules for the type checker; at run time, the missing-extra error
    import datasets
    import pyarrow.compute as pc
else:
    datasets = require("datasets", "loading datasets (transformers_setr.data)")
    pc = require("pyarrow.compute", "loading datasets (transformers_setr.data)")

logger = logging.get_logger(__name__)

DEFAULT_TRAIN_VAL_SPLIT = 0.15  # the transformers example's default
TRAIN_VAL_SPLIT_SEED = 0  # fixed: a resumed run must see the same split
IMAGE_COLUMNS = ("image", "pixel_values")
LABEL_COLUMNS = ("label", "annotation", "semantic_segmentation")
DEFAULT_SPLITS = ("train", "validation")  # test splits have no (ADE20K) or only placeholder (Cityscapes) labels

_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "test": "test",
    "testing": "test",
}
FILE_COLUMNS = datasets.Features(  # the schema of every split
    {
        "image": datasets.Image(decode=False),
        "annotation": datasets.Image(decode=False),
        "file_name": datasets.Value("string"),
    }
)


def normalise_split(name: str) -> str:
    """The canonical name of a split (`val` -> `validation`, ...); other names unchanged."""
    return _SPLIT_ALIASES.get(str(name).lower(), str(name))


def choose_splits(wanted: Sequence[str] | None, available: Sequence[str], source: str) -> list[str]:
    if wanted is None:
        chosen = [split for split in DEFAULT_SPLITS if split in available] or list(available)
    else:
        chosen = list(dict.fromkeys(normalise_split(split) for split in wanted))
        missing = [split for split in chosen if split not in available]
        if missing:
            raise DatasetFormatError(f"{source}: no split {missing}; available: {list(available)}")
    if not chosen:
        raise DatasetFormatError(f"{source}: no splits found")
    return chosen


def split_from_files(images: list[Path], annotations: list[Path], root: Path) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {
            "image": [str(path) for path in images],
            "annotation": [str(path) for path in annotations],
            "file_name": [path.relative_to(root).as_posix() for path in images],
        },
        features=FILE_COLUMNS,
    )


def file_names(split: datasets.Dataset, split_name: str) -> list[str]:
    """Base names of the image files (read from Arrow without touching the image bytes), else `split/index`."""
    paths = pc.struct_field(split.data.column("image"), "path").to_pylist()
    return [path or f"{split_name}/{index}" for index, path in enumerate(paths)]


def by_split_name(loaded: datasets.Dataset | datasets.DatasetDict, source: str) -> dict[str, datasets.Dataset]:
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    if not isinstance(loaded, datasets.DatasetDict | dict):
        raise TypeError(f"{source}: expected a datasets.Dataset or DatasetDict, got {type(loaded).__name__}")
    by_name: dict[str, datasets.Dataset] = {}
    for name, split in loaded.items():
        normalised = normalise_split(name)
        if normalised in by_name:
            raise DatasetFormatError(f"{source}: splits {sorted(loaded)} give {normalised!r} twice")
        by_name[normalised] = split
    return by_name


def with_validation_split(
    by_name: dict[str, datasets.Dataset], wanted: Sequence[str] | None, fraction: float | None, source: str
) -> dict[str, datasets.Dataset]:
    """Carve a validation split out of train (fixed seed) when there is none and it is wanted."""
    wants_validation = wanted is None or "validation" in [normalise_split(split) for split in wanted]
    if "validation" in by_name or "train" not in by_name or not fraction or not wants_validation:
        return by_name
    if not 0 < fraction < 1:
        raise ValueError(f"train_val_split must be a fraction in (0, 1), got {fraction}")
    train = by_name["train"]
    num_validation = math.ceil(fraction * len(train))  # as `train_test_split`
    if num_validation >= len(train):
        raise DatasetFormatError(f"{source}: {len(train)} training image(s), too few to split off a validation set")
    # Without `train_test_split`: it writes index files next to the data of a `save_to_disk` folder.
    order = np.random.default_rng(TRAIN_VAL_SPLIT_SEED).permutation(len(train))
    validation_rows, train_rows = sorted(order[:num_validation].tolist()), sorted(order[num_validation:].tolist())
    logger.info(
        "%s: no validation split; %d of the %d training images (train_val_split=%s) are the validation split",
        source,
        num_validation,
        len(train),
        fraction,
    )
    return {
        **by_name,
        "train": train.select(train_rows, keep_in_memory=True),
        "validation": train.select(validation_rows, keep_in_memory=True),
    }


def first_rows(
    splits: dict[str, datasets.Dataset], chosen: Sequence[str], max_samples: int | None
) -> datasets.DatasetDict:
    return datasets.DatasetDict(
        {
            name: splits[name].select(range(max_samples), keep_in_memory=True)
            if max_samples is not None and max_samples < len(splits[name])
            else splits[name]
            for name in chosen
        }
    )


def pick_column(columns: Sequence[str], asked: str | None, candidates: Sequence[str], what: str, source: str) -> str:
    if asked is not None:
        if asked not in columns:
            raise DatasetFormatError(f"{source}: no {what} column {asked!r}; columns: {list(columns)}")
        return asked
    found = next((column for column in candidates if column in columns), None)
    if found is None:
        raise DatasetFormatError(
            f"{source}: no {what} column (looked for {list(candidates)}), found columns {list(columns)}; name it with "
            f"--{what}_column"
        )
    return found


def is_image_struct(feature: Any) -> bool:
    """A bare `{bytes, path}` struct: an image column as pyarrow writes it without `datasets`' metadata."""
    return (
        isinstance(feature, dict)
        and set(feature) == {"bytes", "path"}
        and feature["bytes"] == datasets.Value("binary")
        and feature["path"] == datasets.Value("string")
    )


def normalised_splits(
    by_name: dict[str, datasets.Dataset],
    chosen: Sequence[str],
    image_column: str,
    label_column: str,
    max_samples: int | None,
    source: str,
) -> datasets.DatasetDict:
    """The chosen splits as `image`, `annotation` (both `Image(decode=False)`) and `file_name` columns."""
    splits = {}
    for name in chosen:
        split = by_name[name]
        if label_column not in split.column_names or image_column not in split.column_names:
            raise DatasetFormatError(f"{source}: split {name!r} has columns {split.column_names}")
        for column, what in ((image_column, "image"), (label_column, "label")):
            feature = split.features[column]
            if (
                not isinstance(feature, datasets.Image)
                and feature != datasets.Value("string")
                and not is_image_struct(feature)
            ):
                raise DatasetFormatError(
                    f"{source}: the {what} column {column!r} holds {feature}, not images; name the right one with "
                    f"--{what}_column"
                )
        split = split.select_columns([image_column, label_column])
        if image_column != "image":
            split = split.rename_column(image_column, "image")
        if label_column != "annotation":
            split = split.rename_column(label_column, "annotation")
        split = split.cast_column("image", datasets.Image(decode=False))
        split = split.cast_column("annotation", datasets.Image(decode=False))
        split = split.add_column("file_name", file_names(split, name), feature=datasets.Value("string"))
        splits[name] = split
    return first_rows(splits, chosen, max_samples)
