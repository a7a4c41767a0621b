"""ADE20K and Cityscapes for semantic segmentation: from the Hub or local copies, as `datasets` splits of undecoded
image / annotation files, plus a `decode` that yields an RGB image and a map of train ids.

Sources understood (`load_segmentation_data`):
- the Hub's ADE20K `zhoubolei/scene_parse_150` (alias `scene_parse_150`). Its `main` branch is a loading script,
  which `datasets` 4+ refuses, so it is read from the Parquet export `refs/convert/parquet` with
  `data_dir="scene_parsing"`; without `data_dir` the `instance_segmentation` files land in the same splits and the
  load fails on their different schema;
- a local copy of that Parquet export (a folder with `scene_parsing/` and `instance_segmentation/`);
- a raw `ADEChallengeData2016/` tree (or its parent), files sorted by path as mmsegmentation does;
- a raw Cityscapes root (`leftImg8bit/`, `gtFine/`): `*_gtFine_labelTrainIds.png` when every image has one, else the
  official `*_gtFine_labelIds.png` mapped to train ids;
- a Hub mirror of Cityscapes such as `Chris1/cityscapes`, or a local folder of Parquet files in the `push_to_hub`
  layout (`image` + `semantic_segmentation`). These store label ids (as R=G=B RGB PNGs), which are mapped.

Labels leave this module as train ids with 255 = ignore: ADE20K raw values 0..150 are reduced here, exactly once
(0 -> 255, v -> v - 1); nothing downstream reduces again.

Image columns are kept undecoded (`Image(decode=False)`) so that `decode` knows the file names for its errors and
applies the EXIF orientation itself (as `datasets` and OpenCV do for images; masks are read unchanged, as
mmsegmentation does), then checks that image and annotation sizes agree.
"""

import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers.utils import logging

from .label_tables import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    CITYSCAPES_NUM_LABEL_IDS,
    DATASETS,
    cityscapes_label_id_to_train_id,
    id2label_for,
)
from .presets import HUB_DATASETS

logger = logging.get_logger(__name__)

LABEL_FORMATS = ("ade20k", "cityscapes-train-ids", "cityscapes-label-ids")
IGNORE_INDEX = 255
ADE20K_HUB_ID = HUB_DATASETS["ade20k"].hub_id
ADE20K_HUB_ALIASES = ("scene_parse_150", ADE20K_HUB_ID)
# The parquet-converter bot's branch: the only form of the dataset `datasets` >= 4 can load.
ADE20K_PARQUET_REVISION = "refs/convert/parquet"
ADE20K_PARQUET_DATA_DIR = HUB_DATASETS["ade20k"].hub_config  # "scene_parsing"
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
_COLUMNS = datasets.Features(
    {
        "image": datasets.Image(decode=False),
        "annotation": datasets.Image(decode=False),
        "file_name": datasets.Value("string"),
    }
)
# The annotation column of the Parquet layouts: ADE20K's export and the Cityscapes mirrors.
_ANNOTATION_COLUMNS = {"annotation": "ade20k", "semantic_segmentation": "cityscapes"}
_HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_EXIF_ORIENTATION = 0x0112


class DatasetFormatError(ValueError):
    """A dataset source or file without the expected layout or content; the message names the file and the problem."""


@dataclass
class SegmentationExample:
    image: Image.Image  # RGB, EXIF orientation applied
    labels: np.ndarray  # (H, W) uint8 train ids, 255 = ignore; same size as `image`
    file_name: str  # for error messages and logs


def _lookup_table(label_format: str) -> np.ndarray:
    """256-entry int16 table `stored value -> train id`, -1 where the value is not allowed in that format."""
    table = np.full(256, -1, dtype=np.int16)
    if label_format == "ade20k":
        table[0] = IGNORE_INDEX  # "other objects": not scored
        table[1 : len(ADE20K_CLASSES) + 1] = np.arange(len(ADE20K_CLASSES))
    elif label_format == "cityscapes-label-ids":
        table[:CITYSCAPES_NUM_LABEL_IDS] = cityscapes_label_id_to_train_id()[:CITYSCAPES_NUM_LABEL_IDS]
    elif label_format == "cityscapes-train-ids":
        table[: len(CITYSCAPES_CLASSES)] = np.arange(len(CITYSCAPES_CLASSES))
        table[IGNORE_INDEX] = IGNORE_INDEX
    else:
        raise ValueError(f"unknown label format {label_format!r}; known: {LABEL_FORMATS}")
    return table


_ALLOWED_VALUES = {
    "ade20k": f"ADE20K annotation values 0..{len(ADE20K_CLASSES)}",
    "cityscapes-label-ids": f"Cityscapes label ids 0..{CITYSCAPES_NUM_LABEL_IDS - 1}",
    "cityscapes-train-ids": f"Cityscapes train ids 0..{len(CITYSCAPES_CLASSES) - 1} and {IGNORE_INDEX}",
}


def _describe(value: Any, fallback: str) -> str:
    """The file a cell refers to (its path; Parquet exports keep the base name), else `fallback`."""
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str | os.PathLike) else None
    return str(path) if path else fallback


def _open(value: Any, name: str, what: str) -> Image.Image:
    """Open an `Image(decode=False)` cell ({"bytes", "path"}), a path or an already decoded PIL image, fully read."""
    if isinstance(value, Image.Image):
        return value
    data, path = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (None, value)
    if data is None and not path:
        raise DatasetFormatError(f"{name}: the {what} has neither bytes nor a path")
    try:
        image = Image.open(io.BytesIO(data) if data is not None else path)
        image.load()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:  # what Pillow raises on bad files
        raise DatasetFormatError(f"{name}: cannot read the {what}: {error}") from error
    return image


def _read_mask(value: Any, name: str) -> np.ndarray:
    """The stored label values of an annotation as an (H, W) integer array (no mode conversion, no EXIF rotation)."""
    mask = _open(value, name, "annotation")
    if mask.mode in ("L", "P", "I", "I;16", "I;16L", "I;16B"):  # P: the palette indices are the labels
        return np.asarray(mask)
    if mask.mode == "RGB":  # e.g. Cityscapes mirrors: label ids stored as R=G=B
        rgb = np.asarray(mask)
        unequal = (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 0] != rgb[..., 2])
        if unequal.any():
            y, x = (int(i[0]) for i in np.nonzero(unequal))
            raise DatasetFormatError(
                f"{name}: RGB annotation with unequal channels ({int(unequal.sum())} pixels, e.g. (x={x}, y={y}) = "
                f"{tuple(int(c) for c in rgb[y, x])}); only single-channel label maps or RGB ones with R=G=B are "
                "understood (a colour-coded mask must be converted to label values first)"
            )
        return rgb[..., 0]
    raise DatasetFormatError(
        f"{name}: annotation of mode {mask.mode!r} is not a label map; expected a single-channel PNG (L, P, I;16) "
        "or an RGB one with R=G=B"
    )


@dataclass
class SegmentationData:
    dataset: str  # "ade20k" | "cityscapes" (a key of label_tables.DATASETS)
    label_format: str  # one of LABEL_FORMATS
    splits: datasets.DatasetDict  # "train"/"validation"(/"test"): image, annotation (Image(decode=False)), file_name
    source: str  # what was loaded (Hub id or local path), for logs and model cards

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; known: {sorted(DATASETS)}")
        if self.label_format not in LABEL_FORMATS:
            raise ValueError(f"unknown label format {self.label_format!r}; known: {LABEL_FORMATS}")
        if (self.dataset == "ade20k") != (self.label_format == "ade20k"):
            raise ValueError(f"label format {self.label_format!r} does not belong to dataset {self.dataset!r}")
        self._lookup = _lookup_table(self.label_format)

    @property
    def num_labels(self) -> int:
        return len(DATASETS[self.dataset]["classes"])

    @property
    def id2label(self) -> dict[int, str]:
        return id2label_for(self.dataset)

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        return DATASETS[self.dataset]["palette"]

    def decode(self, row: dict) -> SegmentationExample:
        """One row of a split -> RGB image (EXIF orientation applied) and train ids, checked against each other."""
        file_name = row.get("file_name") or _describe(row.get("image"), "<row without a file name>")
        image = _open(row.get("image"), file_name, "image")
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        image = ImageOps.exif_transpose(image)
        if image.mode != "RGB":
            image = image.convert("RGB")

        annotation = row.get("annotation")
        if annotation is None:
            raise DatasetFormatError(f"{file_name}: the row has no annotation (test splits usually have none)")
        mask_name = f"{_describe(annotation, 'annotation')} (annotation of {file_name})"
        values = _read_mask(annotation, mask_name)
        if values.shape != (image.height, image.width):
            rotated = f" after applying its EXIF orientation {orientation}" if orientation != 1 else ""
            raise DatasetFormatError(
                f"{file_name}: the image is {image.width}x{image.height}{rotated} but its annotation {mask_name} is "
                f"{values.shape[1]}x{values.shape[0]}"
            )
        return SegmentationExample(image=image, labels=self.to_train_ids(values, mask_name), file_name=file_name)

    def to_train_ids(self, values: np.ndarray, name: str = "annotation") -> np.ndarray:
        """Stored label values (this data's `label_format`) -> uint8 train ids, 255 = ignore; `name` is for errors."""
        values = np.asarray(values)
        in_range = (values >= 0) & (values <= 255)
        train_ids = np.where(in_range, self._lookup[np.clip(values, 0, 255).astype(np.intp)], -1)
        invalid = train_ids < 0
        if invalid.any():
            unexpected = np.unique(values[invalid])
            shown = ", ".join(str(int(v)) for v in unexpected[:10]) + (", ..." if len(unexpected) > 10 else "")
            raise DatasetFormatError(
                f"{name}: unexpected label values {shown} ({int(invalid.sum())} pixels); "
                f"expected {_ALLOWED_VALUES[self.label_format]}"
            )
        return train_ids.astype(np.uint8)

    def example(self, split: str, index: int) -> SegmentationExample:
        return self.decode(self.splits[_normalise_split(split)][index])


def _normalise_split(name: str) -> str:
    return _SPLIT_ALIASES.get(str(name).lower(), str(name))


def _choose_splits(wanted: Sequence[str] | None, available: Sequence[str], source: str) -> list[str]:
    if wanted is None:
        chosen = [split for split in DEFAULT_SPLITS if split in available] or list(available)
    else:
        chosen = list(dict.fromkeys(_normalise_split(split) for split in wanted))
        missing = [split for split in chosen if split not in available]
        if missing:
            raise DatasetFormatError(f"{source}: no split {missing}; available: {list(available)}")
    if not chosen:
        raise DatasetFormatError(f"{source}: no splits found")
    return chosen


def _check_dataset(found: str, asked: str | None, source: str) -> str:
    if asked is not None and asked != found:
        raise DatasetFormatError(f"{source} holds {found} data, but dataset={asked!r} was asked for")
    return found


def _split_from_files(images: list[Path], annotations: list[Path], root: Path) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {
            "image": [str(path) for path in images],
            "annotation": [str(path) for path in annotations],
            "file_name": [path.relative_to(root).as_posix() for path in images],
        },
        features=_COLUMNS,
    )


def _load_ade20k_raw(
    root: Path, dataset: str | None, wanted: Sequence[str] | None, max_samples: int | None
) -> SegmentationData:
    _check_dataset("ade20k", dataset, str(root))
    folders = {"train": "training", "validation": "validation"}
    available = [split for split, folder in folders.items() if (root / "images" / folder).is_dir()]
    splits = {}
    for split in _choose_splits(wanted, available, str(root)):
        image_folder, annotation_folder = root / "images" / folders[split], root / "annotations" / folders[split]
        # mmsegmentation lists the image folder recursively for the suffix and sorts by path.
        images = sorted(image_folder.rglob("*.jpg"), key=lambda path: path.as_posix())[:max_samples]
        if not images:
            raise DatasetFormatError(f"{image_folder}: no .jpg images")
        annotations = [annotation_folder / path.relative_to(image_folder).with_suffix(".png") for path in images]
        missing = [(image, path) for image, path in zip(images, annotations) if not path.is_file()]
        if missing:
            raise DatasetFormatError(
                f"{missing[0][1]}: annotation of {missing[0][0]} not found ({len(missing)} missing in {annotation_folder})"
            )
        splits[split] = _split_from_files(images, annotations, root)
    return SegmentationData("ade20k", "ade20k", datasets.DatasetDict(splits), str(root))


def _load_cityscapes_raw(
    root: Path, dataset: str | None, wanted: Sequence[str] | None, max_samples: int | None
) -> SegmentationData:
    _check_dataset("cityscapes", dataset, str(root))
    folders = {"train": "train", "validation": "val", "test": "test"}
    available = [split for split, folder in folders.items() if (root / "leftImg8bit" / folder).is_dir()]
    listing = {}
    for split in _choose_splits(wanted, available, str(root)):
        image_folder = root / "leftImg8bit" / folders[split]
        images = sorted(image_folder.rglob("*_leftImg8bit.png"), key=lambda path: path.as_posix())[:max_samples]
        if not images:
            raise DatasetFormatError(f"{image_folder}: no *_leftImg8bit.png images")
        stems = [
            root
            / "gtFine"
            / folders[split]
            / path.relative_to(image_folder).parent
            / path.name.removesuffix("_leftImg8bit.png")
            for path in images
        ]
        listing[split] = (images, stems)
    # One label format for the whole load: train ids only if every image has them (they are made by a converter,
    # not downloaded), otherwise the official label ids, mapped.
    all_stems = [stem for _, stems in listing.values() for stem in stems]
    with_train_ids = sum(Path(f"{stem}_gtFine_labelTrainIds.png").is_file() for stem in all_stems)
    suffix = "_gtFine_labelTrainIds.png" if with_train_ids == len(all_stems) else "_gtFine_labelIds.png"
    if 0 < with_train_ids < len(all_stems):
        logger.warning(
            f"{root}: only {with_train_ids} of {len(all_stems)} images have *_gtFine_labelTrainIds.png; "
            "using *_gtFine_labelIds.png (mapped to train ids) for all of them"
        )
    splits = {}
    for split, (images, stems) in listing.items():
        annotations = [Path(f"{stem}{suffix}") for stem in stems]
        missing = [(image, path) for image, path in zip(images, annotations) if not path.is_file()]
        if missing:
            raise DatasetFormatError(
                f"{missing[0][1]}: annotation of {missing[0][0]} not found ({len(missing)} missing)"
            )
        splits[split] = _split_from_files(images, annotations, root)
    label_format = "cityscapes-train-ids" if suffix == "_gtFine_labelTrainIds.png" else "cityscapes-label-ids"
    return SegmentationData("cityscapes", label_format, datasets.DatasetDict(splits), str(root))


def _file_names(split: datasets.Dataset, split_name: str) -> list[str]:
    """Base names of the image files (read from Arrow without touching the image bytes), else `split/index`."""
    paths = pc.struct_field(split.data.column("image"), "path").to_pylist()
    return [path or f"{split_name}/{index}" for index, path in enumerate(paths)]


def _from_parquet(
    loaded: datasets.DatasetDict,
    dataset: str | None,
    wanted: Sequence[str] | None,
    max_samples: int | None,
    source: str,
) -> SegmentationData:
    """Normalise what `datasets.load_dataset` returned for a Parquet source (Hub or local)."""
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    by_name: dict[str, datasets.Dataset] = {}
    for name, split in loaded.items():
        normalised = _normalise_split(name)
        if normalised in by_name:
            raise DatasetFormatError(f"{source}: splits {sorted(loaded)} give {normalised!r} twice")
        by_name[normalised] = split
    chosen = _choose_splits(wanted, list(by_name), source)

    columns = by_name[chosen[0]].column_names
    annotation_column = next((column for column in _ANNOTATION_COLUMNS if column in columns), None)
    if "image" not in columns or annotation_column is None:
        raise DatasetFormatError(
            f"{source}: expected an 'image' column and one of {list(_ANNOTATION_COLUMNS)}, found columns {columns}"
        )
    dataset = dataset or _ANNOTATION_COLUMNS[annotation_column]
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(DATASETS)}")
    # Parquet copies of Cityscapes (the Hub mirrors) store label ids, never train ids.
    label_format = "ade20k" if dataset == "ade20k" else "cityscapes-label-ids"

    splits = {}
    for name in chosen:
        split = by_name[name]
        if annotation_column not in split.column_names or "image" not in split.column_names:
            raise DatasetFormatError(f"{source}: split {name!r} has columns {split.column_names}")
        split = split.select_columns(["image", annotation_column])
        if annotation_column != "annotation":
            split = split.rename_column(annotation_column, "annotation")
        split = split.cast_column("image", datasets.Image(decode=False))
        split = split.cast_column("annotation", datasets.Image(decode=False))
        split = split.add_column("file_name", _file_names(split, name), feature=datasets.Value("string"))
        if max_samples is not None and max_samples < len(split):
            split = split.select(range(max_samples))
        splits[name] = split
    return SegmentationData(dataset, label_format, datasets.DatasetDict(splits), source)


def _load_parquet(
    path_or_id: str, *, data_dir: str | None, revision: str | None, cache_dir: str | None
) -> datasets.DatasetDict:
    # Looked up on the module at call time (tests replace it to check the arguments of Hub loads).
    return datasets.load_dataset(path_or_id, data_dir=data_dir, revision=revision, cache_dir=cache_dir)


def _load_hub(source: str, hub_id: str, **kwargs: Any) -> datasets.DatasetDict:
    """`_load_parquet` for a Hub id; when the Hub has nothing (or cannot be reached), the error also says that no
    local folder of that name exists: `source` may be a mistyped local path."""
    try:
        return _load_parquet(hub_id, **kwargs)
    except (ConnectionError, FileNotFoundError) as error:  # datasets' DatasetNotFoundError is a FileNotFoundError
        raise FileNotFoundError(
            f"{source}: no such local folder ({Path(source).absolute()} does not exist), and loading it as a Hub "
            f"dataset id failed: {error}"
        ) from error


def _local_folder(source: str | os.PathLike) -> Path | None:
    """The local folder `source` names, or None for a Hub id (`name` or `owner/name` that is not a local path)."""
    if isinstance(source, os.PathLike):
        path = Path(source).expanduser()
    else:
        path = Path(str(source)).expanduser()
        # A Hub id shape, unless it reads `data/ade` and `data/` is a folder here: then it is a mistyped local path.
        mistyped_local = bool(path.parent.name) and path.parent.is_dir()
        if not path.exists() and _HUB_ID_PATTERN.match(str(source)) and not mistyped_local:
            return None
    if not path.exists():
        raise FileNotFoundError(f"{source}: no such folder ({path.absolute()} does not exist)")
    if not path.is_dir():
        raise DatasetFormatError(f"{source}: expected a dataset folder, found a file")
    return path.resolve()


def load_segmentation_data(
    source: str | os.PathLike,
    dataset: str | None = None,
    *,
    splits: Sequence[str] | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    max_samples: int | None = None,
) -> SegmentationData:
    """Load ADE20K or Cityscapes from a Hub id or a local folder (see the module docstring for the layouts).

    Args:
        source: Hub id (`zhoubolei/scene_parse_150`, `scene_parse_150`, a Cityscapes mirror such as
            `Chris1/cityscapes`) or local folder.
        dataset: "ade20k" or "cityscapes"; inferred from the layout / columns when None, checked when given.
        splits: split names to keep ("val" means "validation"); default train and validation where present.
        revision: Hub revision; for ADE20K the default is the Parquet export `refs/convert/parquet`.
        cache_dir: `datasets` cache for Hub and local Parquet sources (raw trees are read in place).
        max_samples: keep only the first `max_samples` rows of each split.
    """
    if dataset is not None and dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(DATASETS)}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be at least 1, got {max_samples}")
    if isinstance(splits, str):
        splits = [splits]
    cache_dir = str(cache_dir) if cache_dir is not None else None

    folder = _local_folder(source)
    if folder is None:  # a Hub id
        if str(source) in ADE20K_HUB_ALIASES:
            _check_dataset("ade20k", dataset, str(source))
            loaded = _load_hub(
                str(source),
                ADE20K_HUB_ID,
                data_dir=ADE20K_PARQUET_DATA_DIR,
                revision=revision or ADE20K_PARQUET_REVISION,
                cache_dir=cache_dir,
            )
            return _from_parquet(loaded, "ade20k", splits, max_samples, ADE20K_HUB_ID)
        loaded = _load_hub(str(source), str(source), data_dir=None, revision=revision, cache_dir=cache_dir)
        return _from_parquet(loaded, dataset, splits, max_samples, str(source))

    for ade_root in (folder, folder / "ADEChallengeData2016"):
        if (ade_root / "images").is_dir() and (ade_root / "annotations").is_dir():
            return _load_ade20k_raw(ade_root, dataset, splits, max_samples)
    if (folder / "leftImg8bit").is_dir() and (folder / "gtFine").is_dir():
        return _load_cityscapes_raw(folder, dataset, splits, max_samples)
    if (folder / ADE20K_PARQUET_DATA_DIR).is_dir():  # a copy of the ADE20K Parquet export
        _check_dataset("ade20k", dataset, str(folder))
        loaded = _load_parquet(str(folder), data_dir=ADE20K_PARQUET_DATA_DIR, revision=None, cache_dir=cache_dir)
        return _from_parquet(loaded, "ade20k", splits, max_samples, str(folder))
    if next(folder.rglob("*.parquet"), None) is not None:
        loaded = _load_parquet(str(folder), data_dir=None, revision=None, cache_dir=cache_dir)
        return _from_parquet(loaded, dataset, splits, max_samples, str(folder))
    raise DatasetFormatError(
        f"{folder}: not a known segmentation layout; expected ADEChallengeData2016/ (images/, annotations/), a "
        f"Cityscapes root (leftImg8bit/, gtFine/), the scene_parse_150 Parquet export ({ADE20K_PARQUET_DATA_DIR}/) "
        "or a folder of Parquet files with 'image' and 'annotation' / 'semantic_segmentation' columns"
    )
