"""Semantic segmentation data: ADE20K, Cityscapes, or the user's own classes; from the Hub, local copies or
`datasets` objects, as `datasets` splits of undecoded image / annotation files, plus a `decode` that yields an RGB
image and a map of train ids.

ADE20K and Cityscapes are recognised only by their known sources and layouts (below) or when named with `dataset`.
Anything else is custom data, whose classes must be declared: `id2label` (a dict or a JSON file), else an
`id2label.json` in the dataset folder or Hub repo (the convention of transformers' semantic-segmentation example);
without one the load is refused. The mask values of custom data are the keys of that `id2label` as stored; with
`reduce_labels` (the user's choice, default off as in the transformers example) value 0 means "unlabelled": it
becomes the ignore index, value v becomes class v - 1, and the entry 0 of `id2label` (if any) is dropped. The ignore
index (default 255) is never a class. Any other value is an error naming the file (or split/row) and the values.

Masks as people store them (custom data):
- stored values that are not the class ids, e.g. binary masks of 0 and 255: `mask_values=[0, 255]` (`--mask_values
  0,255`) says that the i-th value is class i, or the keys of `id2label` are the stored values themselves
  (`{"0": "background", "255": "foreground"}`: keys that are not 0..N-1 are stored values, the classes are numbered
  in key order). A stored value equal to the ignore index that is not one of the classes' is ignored; any other is an
  error. `data.report.data_report` refuses 0/255 masks read with the class ids 0 and 1 (255 would be ignored);
- colour (RGB) masks: `id2label` entries `{"name": "road", "color": [128, 64, 128]}` (all or none of them with a
  colour) map each colour to its class; a colour no class has is an error naming the colour, the file and its pixel
  count, or, with `undeclared_colors="ignore"` (`--undeclared_colors ignore`), the ignore index. P-mode masks are read
  through their palette then; single-channel masks are refused;
- JPEG masks are refused: the compression changes the values along every edge into values of no class (or of others).

Custom sources: a Hub id or local copy with an image and a mask column (`image` / `pixel_values`, `label` /
`annotation` / `semantic_segmentation` by default, or named), a `save_to_disk` folder, a folder of image + mask
files matched by stem (`images/` + `masks/` | `labels/` | `annotations/`, each optionally split into
`train/`, `val/`..., or `train/images/` + `train/masks/`...), or a `datasets.Dataset` / `DatasetDict`. Without a
validation split, `train_val_split` of the train split (default 0.15, fixed seed) becomes one.

Preset sources understood:
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
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from transformers.utils import logging

from .._imports import require
from ..models.setr.configuration_setr import IGNORE_INDEX, checked_id2label
from ..models.setr.image_processing_base_setr import decode_image
from ..presets import HUB_DATASETS
from .label_tables import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    CITYSCAPES_NUM_LABEL_IDS,
    DATASETS,
    cityscapes_label_id_to_train_id,
    generate_palette,
    id2label_for,
)

datasets = require("datasets", "loading datasets (transformers_setr.data)")
pc = require("pyarrow.compute", "loading datasets (transformers_setr.data)")

logger = logging.get_logger(__name__)

LABEL_FORMATS = ("ade20k", "cityscapes-train-ids", "cityscapes-label-ids")
CUSTOM_LABEL_FORMAT = "custom"  # the user's classes: mask values are the keys of `id2label` (see the docstring)
CUSTOM_DATASET = "custom"
ID2LABEL_FILE = "id2label.json"
IN_MEMORY_SOURCE = "in-memory dataset"  # the `source` of a `datasets` object passed in
DEFAULT_TRAIN_VAL_SPLIT = 0.15  # the transformers example's default
TRAIN_VAL_SPLIT_SEED = 0  # fixed: a resumed run must see the same split
IMAGE_COLUMNS = ("image", "pixel_values")
LABEL_COLUMNS = ("label", "annotation", "semantic_segmentation")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")  # lossless only
MASK_FOLDERS = ("masks", "labels", "annotations")
LOSSY_MASK_SUFFIXES = (".jpg", ".jpeg")
UNDECLARED_COLORS = ("error", "ignore")  # what a colour mask's colour that no class has becomes
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


class UndeclaredClassesError(DatasetFormatError):
    """Custom data (not ADE20K or Cityscapes by its source or layout) without a declaration of its classes."""


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


DATASETS_PRETTY_NAMES = {"ade20k": "ADE20K", "cityscapes": "Cityscapes"}


def _custom_lookup_table(
    num_labels: int, reduce_labels: bool, ignore_index: int, mask_values: Sequence[int] | None = None
) -> np.ndarray:
    """`stored value -> train id` of custom data (int32, -1 where not allowed); see the module docstring."""
    size = max(256, num_labels + 1 + int(reduce_labels), ignore_index + 1, max(mask_values or [0]) + 1)
    table = np.full(size, -1, dtype=np.int32)
    if mask_values is not None:
        if ignore_index not in mask_values:
            table[ignore_index] = ignore_index
        table[list(mask_values)] = np.arange(len(mask_values))
        return table
    if reduce_labels:
        table[0] = ignore_index
        table[1 : num_labels + 1] = np.arange(num_labels)
    else:
        table[:num_labels] = np.arange(num_labels)
    table[ignore_index] = ignore_index
    return table


def _int_keyed(id2label: Any, origin: str, contiguous: bool) -> dict[int, Any]:
    """The model's rule for label maps (`checked_id2label`: int keys or digit strings, 0..N-1 when `contiguous`), in
    key order, on a non-empty object; the names are left to the caller."""
    if not isinstance(id2label, dict) or not id2label:
        raise DatasetFormatError(f'{origin}: id2label must be a non-empty JSON object {{"0": "name", ...}}')
    try:
        return dict(sorted(checked_id2label(id2label, contiguous=contiguous).items()))
    except ValueError as error:
        raise DatasetFormatError(f"{origin}: {error}") from None


def checked_dataset_id2label(id2label: Any, origin: str, *, contiguous: bool = True) -> dict[int, str]:
    """The `id2label` of a dataset in key order: the model's rule (`checked_id2label`) and the data's own (names are
    non-empty strings); `origin` names it in errors."""
    checked = _int_keyed(id2label, origin, contiguous)
    for class_id, name in checked.items():
        if not isinstance(name, str) or not name.strip():
            raise DatasetFormatError(f"{origin}: id2label[{class_id!r}] must be a class name, got {name!r}")
    return checked


def _read_json_id2label(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: no such id2label file") from None
    except (OSError, ValueError) as error:
        raise DatasetFormatError(f"{path}: cannot read id2label JSON: {error}") from None


def read_id2label(path: str | os.PathLike) -> dict[int, str]:
    """An `id2label.json` file (`{"0": "name", ...}`), checked."""
    return checked_dataset_id2label(_read_json_id2label(path), str(path))


def classes_for(stored_id2label: dict[int, str], reduce_labels: bool, origin: str) -> dict[int, str]:
    """The classes (train ids) that an `id2label` of stored mask values gives: with `reduce_labels` the entry 0
    (the "unlabelled" value, ignored) is dropped and the others move down by one."""
    stored = checked_dataset_id2label(stored_id2label, origin, contiguous=not reduce_labels)
    if not reduce_labels:
        return stored
    shifted = {}
    for key, value in stored.items():
        if key != 0:
            shifted[key - 1] = value
        else:
            logger.info(
                "%s: reduce_labels: value 0 (%r) is unlabelled (ignored), the other ids move down", origin, value
            )
    return checked_dataset_id2label(shifted, f"{origin} (after reduce_labels dropped value 0)")


@dataclass(frozen=True)
class ClassDeclaration:
    """The classes of custom data and how its masks store them."""

    classes: dict[int, str]  # train id -> name, ids 0..N-1
    mask_values: tuple[int, ...] | None = None  # the stored value of class i (None: i, or i + 1 with reduce_labels)
    mask_colors: tuple[tuple[int, int, int], ...] | None = None  # colour masks: the colour of class i


def parse_mask_values(values: str | Sequence[int] | None, origin: str = "mask_values") -> tuple[int, ...] | None:
    """`"0,255"` or `[0, 255]` -> `(0, 255)`: distinct non-negative stored values, the i-th is class i."""
    if values is None:
        return None
    items = [item.strip() for item in values.split(",")] if isinstance(values, str) else list(values)
    try:
        parsed = tuple(int(item) for item in items)
        if any(str(item).strip() != str(value) for item, value in zip(items, parsed)):
            raise ValueError
    except (TypeError, ValueError):
        raise DatasetFormatError(
            f"{origin} must be the stored mask values of the classes in class order, e.g. 0,255; got {values!r}"
        ) from None
    if not parsed or min(parsed) < 0 or len(set(parsed)) != len(parsed):
        raise DatasetFormatError(f"{origin} must be distinct non-negative mask values, one per class; got {values!r}")
    return parsed


def _declared_entry(key: int, value: Any, origin: str) -> tuple[str, tuple[int, int, int] | None]:
    """One `id2label` entry: a name, or `{"name": ..., "color": [r, g, b]}` for colour masks."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"name", "color"})
        name, colour = value.get("name"), value.get("color")
        if unknown or not isinstance(name, str) or not name.strip():
            raise DatasetFormatError(
                f'{origin}: id2label[{key}] must be a class name or {{"name": "...", "color": [r, g, b]}}, got {value!r}'
            )
        if colour is None:
            return name, None
        valid = isinstance(colour, list | tuple) and len(colour) == 3
        if not valid or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in colour):
            raise DatasetFormatError(
                f"{origin}: id2label[{key}]'s color must be [r, g, b] with 0..255, got {colour!r}"
            )
        return name, (int(colour[0]), int(colour[1]), int(colour[2]))
    if not isinstance(value, str) or not value.strip():
        raise DatasetFormatError(f"{origin}: id2label[{key!r}] must be a class name, got {value!r}")
    return value, None


def declare_classes(
    id2label: dict,
    origin: str,
    *,
    reduce_labels: bool = False,
    mask_values: str | Sequence[int] | None = None,
) -> ClassDeclaration:
    """The classes an `id2label` (as read from JSON or given) declares, and how the masks store them (see the module
    docstring): class ids 0..N-1 stored as themselves; with `reduce_labels` 0 unlabelled and v stored as v + 1;
    with `mask_values` class i stored as `mask_values[i]`; keys that are not 0..N-1 (without `reduce_labels`): the
    keys are the stored values; names with colours: colour masks."""
    # the keys are class ids or stored values (not necessarily 0..N-1), the values names or {"name", "color"}
    entries = {key: _declared_entry(key, value, origin) for key, value in _int_keyed(id2label, origin, False).items()}
    mask_values = parse_mask_values(mask_values, "--mask_values")
    colours = [colour for _, colour in entries.values()]
    names = {key: name for key, (name, _) in entries.items()}
    if any(colour is not None for colour in colours):
        without = next((key for key, (_, colour) in entries.items() if colour is None), None)
        if without is not None:
            raise DatasetFormatError(
                f"{origin}: id2label gives colours to some classes but not to {without} ({names[without]!r}); colour "
                "masks need the colour of every class"
            )
        if reduce_labels or mask_values is not None:
            raise DatasetFormatError(
                f"{origin}: id2label gives the classes' colours (colour masks); reduce_labels / --mask_values are for "
                "masks of label values"
            )
        if len(set(colours)) != len(colours):
            raise DatasetFormatError(f"{origin}: two classes have the same colour in id2label")
        classes = checked_dataset_id2label(names, origin)
        return ClassDeclaration(classes, mask_colors=tuple(colours))
    if mask_values is not None:
        if reduce_labels:
            raise DatasetFormatError(
                "--mask_values gives the stored value of every class; --do_reduce_labels (0 = unlabelled) does not "
                "combine with it"
            )
        if sorted(names) != list(range(len(names))):
            raise DatasetFormatError(
                f"{origin}: with --mask_values, id2label's keys are the class ids 0..{len(names) - 1}, got "
                f"{sorted(names)[:10]}; or drop --mask_values and key id2label by the stored values"
            )
        if len(mask_values) != len(names):
            raise DatasetFormatError(
                f"--mask_values {','.join(map(str, mask_values))}: {len(mask_values)} values for the "
                f"{len(names)} classes of {origin}; give one stored value per class, in class order"
            )
        return ClassDeclaration(checked_dataset_id2label(names, origin), mask_values=mask_values)
    if reduce_labels or sorted(names) == list(range(len(names))):
        return ClassDeclaration(classes_for(names, reduce_labels, origin))
    if min(names) < 0:
        raise DatasetFormatError(f"{origin}: id2label key {min(names)} is negative; keys are mask values")
    stored = tuple(names)
    logger.info(
        "%s: id2label keys %s are stored mask values: they are the classes 0..%d in key order",
        origin,
        ", ".join(map(str, stored[:10])) + (", ..." if len(stored) > 10 else ""),
        len(stored) - 1,
    )
    return ClassDeclaration(dict(enumerate(names.values())), mask_values=stored)


def cell_file_name(value: Any, fallback: str) -> str:
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


def _open_mask(value: Any, name: str) -> Image.Image:
    mask = _open(value, name, "annotation")
    if mask.format == "JPEG":
        raise DatasetFormatError(
            f"{name}: a JPEG mask; JPEG is lossy, its compression turns the values along every edge into values of "
            "no class (or of other classes): save the masks as PNG (lossless)"
        )
    return mask


def _read_colour_mask(value: Any, name: str) -> np.ndarray:
    """The colours of a colour mask as an (H, W) int32 array of 0xRRGGBB (P masks through their palette)."""
    mask = _open_mask(value, name)
    if mask.mode not in ("RGB", "RGBA", "P"):
        raise DatasetFormatError(
            f"{name}: a mask of mode {mask.mode!r} (one channel), but id2label gives the classes' colours: colour "
            "masks are RGB (or drop the colours from id2label to read label values)"
        )
    rgb = np.asarray(mask.convert("RGB")).astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def colour_name(packed: int) -> str:
    """0xRRGGBB -> "(r, g, b)"."""
    return f"({packed >> 16 & 255}, {packed >> 8 & 255}, {packed & 255})"


def _read_mask(value: Any, name: str) -> np.ndarray:
    """The stored label values of an annotation as an (H, W) integer array (no mode conversion, no EXIF rotation)."""
    mask = _open_mask(value, name)
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
                'read as label values; for colour masks give each class its colour in id2label: {"0": {"name": '
                '"road", "color": [128, 64, 128]}, ...}'
            )
        return rgb[..., 0]
    raise DatasetFormatError(
        f"{name}: annotation of mode {mask.mode!r} is not a label map; expected a single-channel PNG (L, P, I;16) "
        "or an RGB one with R=G=B"
    )


@dataclass
class SegmentationData:
    dataset: str  # "ade20k" | "cityscapes" (a key of label_tables.DATASETS) | "custom" (the user's classes)
    label_format: str  # one of LABEL_FORMATS, or CUSTOM_LABEL_FORMAT for custom data
    splits: datasets.DatasetDict  # "train"/"validation"(/"test"): image, annotation (Image(decode=False)), file_name
    source: str  # what was loaded (Hub id or local path), for logs and model cards
    # Custom data only: the classes (train id -> name, ids 0..N-1), whether stored 0 means "unlabelled" (value v is
    # class v - 1), the palette (generated when None) and the ignore index.
    classes: dict[int, str] | None = None
    reduce_labels: bool = False
    custom_palette: Sequence[Sequence[int]] | None = None
    ignore_index: int = IGNORE_INDEX
    name: str | None = None  # custom data: what to call it in cards and logs (the Hub id or folder name)
    # Custom data only, how the masks store the classes (see the module docstring): the stored value of class i
    # (`mask_values`), or its colour in colour masks (`mask_colors`), and what an undeclared colour becomes.
    mask_values: tuple[int, ...] | None = None
    mask_colors: tuple[tuple[int, int, int], ...] | None = None
    undeclared_colors: str = "error"

    def __post_init__(self) -> None:
        if not self.is_custom and (self.mask_values or self.mask_colors):
            raise ValueError(f"{self.dataset} stores its own label values; mask_values / colours are for custom data")
        if self.undeclared_colors not in UNDECLARED_COLORS:
            raise ValueError(f"undeclared_colors must be one of {UNDECLARED_COLORS}, got {self.undeclared_colors!r}")
        if self.label_format == CUSTOM_LABEL_FORMAT:
            if self.dataset != CUSTOM_DATASET:
                raise ValueError(f"custom label format for dataset {self.dataset!r}: use dataset={CUSTOM_DATASET!r}")
            if not self.classes:
                raise ValueError("custom data needs its classes (id2label)")
            self.classes = checked_dataset_id2label(self.classes, "id2label")
            if self.ignore_index in self.classes:
                raise ValueError(
                    f"the ignore index {self.ignore_index} is also a class ({self.classes[self.ignore_index]!r})"
                )
            if self.custom_palette is not None and len(self.custom_palette) != len(self.classes):
                raise ValueError(f"palette of {len(self.custom_palette)} colours for {len(self.classes)} classes")
            if self.mask_values is not None:
                self.mask_values = parse_mask_values(self.mask_values)
                if self.reduce_labels or len(self.mask_values) != len(self.classes) or self.mask_colors:
                    raise ValueError(
                        f"mask_values {self.mask_values} for {len(self.classes)} classes (one value per class; not "
                        "with reduce_labels or colours)"
                    )
            if self.mask_colors is not None:
                self.mask_colors = tuple(tuple(int(c) for c in colour) for colour in self.mask_colors)
                if self.reduce_labels or len(self.mask_colors) != len(self.classes):
                    raise ValueError(f"{len(self.mask_colors)} mask colours for {len(self.classes)} classes")
                packed = [(r << 16) | (g << 8) | b for r, g, b in self.mask_colors]
                self._class_of_colour = dict(zip(packed, range(len(packed))))
            self._lookup = _custom_lookup_table(
                len(self.classes), self.reduce_labels, self.ignore_index, self.mask_values
            )
            self.name = self.name or Path(str(self.source)).name or str(self.source)
            return
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; known: {sorted(DATASETS)} or {CUSTOM_DATASET!r}")
        if self.label_format not in LABEL_FORMATS:
            raise ValueError(f"unknown label format {self.label_format!r}; known: {LABEL_FORMATS}")
        if (self.dataset == "ade20k") != (self.label_format == "ade20k"):
            raise ValueError(f"label format {self.label_format!r} does not belong to dataset {self.dataset!r}")
        if self.ignore_index != IGNORE_INDEX:
            raise ValueError(f"{self.dataset} uses the ignore index {IGNORE_INDEX}")
        self._lookup = _lookup_table(self.label_format)
        self.name = self.name or DATASETS_PRETTY_NAMES[self.dataset]

    @property
    def is_custom(self) -> bool:
        return self.label_format == CUSTOM_LABEL_FORMAT

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(self.classes) if self.is_custom else id2label_for(self.dataset)

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        if not self.is_custom:
            return DATASETS[self.dataset]["palette"]
        if self.custom_palette is not None:
            return tuple(tuple(int(c) for c in colour) for colour in self.custom_palette)
        return self.mask_colors or generate_palette(self.num_labels)

    def decode(self, row: dict) -> SegmentationExample:
        """One row of a split -> RGB image (EXIF orientation applied) and train ids, checked against each other."""
        file_name = row.get("file_name") or cell_file_name(row.get("image"), "<row without a file name>")
        image = _open(row.get("image"), file_name, "image")
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        try:  # the processors' decode: upright, transparency onto white, 8-bit RGB (16-bit refused)
            image = decode_image(image)
        except ValueError as error:
            raise DatasetFormatError(f"{file_name}: {error}") from error

        annotation = row.get("annotation")
        if annotation is None:
            raise DatasetFormatError(f"{file_name}: the row has no annotation (test splits usually have none)")
        mask_name = f"{cell_file_name(annotation, 'annotation')} (annotation of {file_name})"
        values = self.read_stored_mask(annotation, mask_name)
        if values.shape != (image.height, image.width):
            rotated = f" after applying its EXIF orientation {orientation}" if orientation != 1 else ""
            raise DatasetFormatError(
                f"{file_name}: the image is {image.width}x{image.height}{rotated} but its annotation {mask_name} is "
                f"{values.shape[1]}x{values.shape[0]}"
            )
        return SegmentationExample(image=image, labels=self.to_train_ids(values, mask_name), file_name=file_name)

    def read_stored_mask(self, annotation: Any, name: str) -> np.ndarray:
        """A mask as stored: (H, W) label values, or 0xRRGGBB colours when the classes are given as colours."""
        return _read_colour_mask(annotation, name) if self.mask_colors else _read_mask(annotation, name)

    def map_stored(self, values: np.ndarray) -> np.ndarray:
        """Stored values (or 0xRRGGBB colours) -> int64 train ids, `ignore_index` = ignore, -1 where not allowed
        (an undeclared colour with `undeclared_colors="ignore"` is the ignore index)."""
        values = np.asarray(values).astype(np.int64, copy=False)
        if self.mask_colors:
            unique, inverse = np.unique(values, return_inverse=True)
            missing = -1 if self.undeclared_colors == "error" else self.ignore_index
            classes = np.array([self._class_of_colour.get(int(c), missing) for c in unique], dtype=np.int64)
            return classes[inverse].reshape(values.shape)
        top = len(self._lookup) - 1
        in_range = (values >= 0) & (values <= top)
        return np.where(in_range, self._lookup[np.clip(values, 0, top)], -1)

    def to_train_ids(self, values: np.ndarray, name: str = "annotation") -> np.ndarray:
        """Stored label values (this data's `label_format`; colours packed as 0xRRGGBB for colour masks) -> train
        ids (uint8 unless a class id or the ignore index exceeds 255: then int32), `ignore_index` = ignore; `name` is
        for errors."""
        values = np.asarray(values)
        train_ids = self.map_stored(values)
        invalid = train_ids < 0
        if invalid.any():
            raise DatasetFormatError(
                self.unexpected_values_message(np.unique(values[invalid]), int(invalid.sum()), name)
            )
        small = max(self.num_labels - 1, self.ignore_index) <= 255
        return train_ids.astype(np.uint8 if small else np.int32)

    def unexpected_values_message(self, values: Sequence[int], pixels: int, where: str) -> str:
        """The refusal of stored values (or colours) no class has: `where` names the file(s)."""
        if self.mask_colors:
            shown = ", ".join(colour_name(int(v)) for v in values[:5]) + (", ..." if len(values) > 5 else "")
            return (
                f"{where}: colours of no class {shown} ({pixels} pixels); id2label gives the colours "
                f"{', '.join(colour_name(c) for c in list(self._class_of_colour)[:8])}"
                f"{', ...' if len(self._class_of_colour) > 8 else ''}: declare every colour (or pass "
                "--undeclared_colors ignore to ignore the others)"
            )
        shown = ", ".join(str(int(v)) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        return f"{where}: unexpected label values {shown} ({pixels} pixels); expected {self._allowed()}"

    def _allowed(self) -> str:
        if not self.is_custom:
            return _ALLOWED_VALUES[self.label_format]
        count = len(self.classes)
        if self.mask_values is not None:
            ignored = f" and the ignore index {self.ignore_index}" if self.ignore_index not in self.mask_values else ""
            return f"the stored values {', '.join(map(str, self.mask_values))} of the {count} classes{ignored}"
        if self.reduce_labels:
            return (
                f"the values 1..{count} of the {count} classes (reduce_labels: 0 = unlabelled) and the ignore index "
                f"{self.ignore_index}; declare every class in id2label"
            )
        return (
            f"the class ids 0..{count - 1} of id2label and the ignore index {self.ignore_index}; declare every class "
            "in id2label (or pass reduce_labels / --do_reduce_labels true if 0 means unlabelled)"
        )

    def example(self, split: str, index: int) -> SegmentationExample:
        return self.decode(self.splits[normalise_split(split)][index])


def normalise_split(name: str) -> str:
    """The canonical name of a split (`val` -> `validation`, ...); other names unchanged."""
    return _SPLIT_ALIASES.get(str(name).lower(), str(name))


def _choose_splits(wanted: Sequence[str] | None, available: Sequence[str], source: str) -> list[str]:
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


@dataclass
class _CustomOptions:
    """What the caller said about custom data (None: not said)."""

    id2label: dict[int, str] | str | os.PathLike | None = None  # of the stored mask values, or a JSON file
    reduce_labels: bool | None = None
    image_column: str | None = None
    label_column: str | None = None
    train_val_split: float | None = DEFAULT_TRAIN_VAL_SPLIT
    ignore_index: int = IGNORE_INDEX
    palette: Sequence[Sequence[int]] | None = None
    mask_values: str | Sequence[int] | None = None
    undeclared_colors: str = "error"

    def declared_id2label(self, folder: Path | None, hub_id: str | None, revision: str | None):
        """(id2label as declared, where it came from), or (None, None) when nothing declares classes; checked by
        `declare_classes`."""
        if isinstance(self.id2label, dict):
            return self.id2label, "id2label argument"
        if self.id2label is not None:
            return _read_json_id2label(self.id2label), str(self.id2label)
        if folder is not None and (folder / ID2LABEL_FILE).is_file():
            return _read_json_id2label(folder / ID2LABEL_FILE), str(folder / ID2LABEL_FILE)
        if hub_id is not None:
            found = _hub_id2label(hub_id, revision)
            if found is not None:
                return found, f"{hub_id}/{ID2LABEL_FILE}"
        return None, None


def _hub_id2label(repo_id: str, revision: str | None) -> dict | None:
    """The `id2label.json` of a Hub dataset repo, None when it has none or the Hub cannot be reached."""
    from huggingface_hub import constants, hf_hub_download

    # Offline (either library's switch): the cache only, never a network attempt that has to time out.
    offline = bool(datasets.config.HF_HUB_OFFLINE or constants.HF_HUB_OFFLINE)
    try:
        path = hf_hub_download(
            repo_id, ID2LABEL_FILE, repo_type="dataset", revision=revision, local_files_only=offline
        )
    except Exception:  # no such file, offline, no such repo: the refusal below says how to declare the classes
        return None
    try:
        return json.loads(Path(path).read_text())
    except ValueError as error:
        raise DatasetFormatError(f"{repo_id}/{ID2LABEL_FILE}: not JSON: {error}") from None


def _undeclared_classes_error(source: str, columns: Sequence[str] | None) -> UndeclaredClassesError:
    found = f" (columns {list(columns)})" if columns is not None else ""
    return UndeclaredClassesError(
        f"{source}: not ADE20K or Cityscapes by its source or layout{found}, so it is read as custom data, whose "
        f"classes must be declared: pass --id2label FILE.json (Python: id2label={{0: 'name', ...}}) or put an "
        f'{ID2LABEL_FILE} ({{"0": "name", ...}}, the mask values as stored) next to the data; pass '
        "--dataset ade20k / cityscapes if it really is one of those"
    )


def _by_split_name(loaded: datasets.Dataset | datasets.DatasetDict, source: str) -> dict[str, datasets.Dataset]:
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


def _with_validation_split(
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


def _first_rows(splits: dict[str, datasets.Dataset], chosen: Sequence[str], max_samples: int | None):
    return datasets.DatasetDict(
        {
            name: splits[name].select(range(max_samples), keep_in_memory=True)
            if max_samples is not None and max_samples < len(splits[name])
            else splits[name]
            for name in chosen
        }
    )


def _pick_column(columns: Sequence[str], asked: str | None, candidates: Sequence[str], what: str, source: str) -> str:
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


def _is_image_struct(feature: Any) -> bool:
    """A bare `{bytes, path}` struct: an image column as pyarrow writes it without `datasets`' metadata."""
    return (
        isinstance(feature, dict)
        and set(feature) == {"bytes", "path"}
        and feature["bytes"] == datasets.Value("binary")
        and feature["path"] == datasets.Value("string")
    )


def _normalised_splits(
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
                and not _is_image_struct(feature)
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
        split = split.add_column("file_name", _file_names(split, name), feature=datasets.Value("string"))
        splits[name] = split
    return _first_rows(splits, chosen, max_samples)


def _from_parquet(
    loaded: datasets.DatasetDict,
    dataset: str | None,
    wanted: Sequence[str] | None,
    max_samples: int | None,
    source: str,
) -> SegmentationData:
    """Normalise what `datasets.load_dataset` returned for a Parquet source of ADE20K or Cityscapes."""
    by_name = _by_split_name(loaded, source)
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
    splits = _normalised_splits(by_name, chosen, "image", annotation_column, max_samples, source)
    return SegmentationData(dataset, label_format, splits, source)


def _from_table(
    loaded: datasets.Dataset | datasets.DatasetDict,
    dataset: str | None,
    wanted: Sequence[str] | None,
    max_samples: int | None,
    source: str,
    options: _CustomOptions,
    *,
    folder: Path | None = None,
    hub_id: str | None = None,
    revision: str | None = None,
) -> SegmentationData:
    """A table source that is not a known ADE20K layout: ADE20K / Cityscapes when named with `dataset`, a
    Cityscapes mirror (`image` + `semantic_segmentation`, label ids) when no classes are declared, else custom data
    with declared classes; refused otherwise."""
    by_name = _by_split_name(loaded, source)
    if dataset in DATASETS:
        return _from_parquet(by_name, dataset, wanted, max_samples, source)
    stored_id2label, origin = options.declared_id2label(folder, hub_id, revision)
    columns = next(iter(by_name.values())).column_names if by_name else []
    if stored_id2label is None:
        cityscapes_mirror = "image" in columns and "semantic_segmentation" in columns and "label" not in columns
        said_nothing = options.image_column is None and options.label_column is None and options.reduce_labels is None
        if cityscapes_mirror and said_nothing:
            logger.info("%s: image + semantic_segmentation columns and no id2label: a Cityscapes mirror", source)
            return _from_parquet(by_name, "cityscapes", wanted, max_samples, source)
        raise _undeclared_classes_error(source, columns)
    columns = by_name["train"].column_names if "train" in by_name else columns
    image_column = _pick_column(columns, options.image_column, IMAGE_COLUMNS, "image", source)
    label_column = _pick_column(columns, options.label_column, LABEL_COLUMNS, "label", source)
    asked = [normalise_split(split) for split in wanted] if wanted is not None else list(DEFAULT_SPLITS)
    wanted_now = [split for split in by_name if split in ("train", *asked)] or list(by_name)
    normalised = _normalised_splits(by_name, wanted_now, image_column, label_column, None, source)
    by_name = _with_validation_split(dict(normalised), wanted, options.train_val_split, source)
    chosen = _choose_splits(wanted, list(by_name), source)
    splits = _first_rows(by_name, chosen, max_samples)
    return _custom_data(
        splits, source, stored_id2label, origin, options, name=hub_id or (folder.name if folder else None)
    )


def _custom_data(
    splits: datasets.DatasetDict,
    source: str,
    stored_id2label: dict[int, str],
    origin: str,
    options: _CustomOptions,
    name: str | None,
) -> SegmentationData:
    reduce_labels = bool(options.reduce_labels)
    declaration = declare_classes(
        stored_id2label, origin, reduce_labels=reduce_labels, mask_values=options.mask_values
    )
    classes = declaration.classes
    logger.info(
        "%s: custom data, %d classes from %s, reduce_labels=%s, ignore index %d",
        source,
        len(classes),
        origin,
        reduce_labels,
        options.ignore_index,
    )
    return SegmentationData(
        CUSTOM_DATASET,
        CUSTOM_LABEL_FORMAT,
        splits,
        source,
        classes=classes,
        reduce_labels=reduce_labels,
        custom_palette=options.palette,
        ignore_index=options.ignore_index,
        name=name,
        mask_values=declaration.mask_values,
        mask_colors=declaration.mask_colors,
        undeclared_colors=options.undeclared_colors,
    )


def _pair_folders(root: Path) -> dict[str, tuple[Path, Path]] | None:
    """split -> (image folder, mask folder) of a folder of image + mask files, None when it is not one."""

    def mask_folder(parent: Path) -> Path | None:
        return next((parent / name for name in MASK_FOLDERS if (parent / name).is_dir()), None)

    known = {"train", "validation", "test"}
    per_split = {}
    for child in sorted(root.iterdir()):  # train/images + train/masks, val/images + val/masks
        if child.is_dir() and normalise_split(child.name) in known and (child / "images").is_dir():
            masks = mask_folder(child)
            if masks is not None:
                per_split[normalise_split(child.name)] = (child / "images", masks)
    if per_split:
        return per_split
    masks = mask_folder(root)
    if not (root / "images").is_dir() or masks is None:
        return None
    for child in sorted((root / "images").iterdir()):  # images/train + masks/train
        if child.is_dir() and normalise_split(child.name) in known and (masks / child.name).is_dir():
            per_split[normalise_split(child.name)] = (child, masks / child.name)
    return per_split or {"train": (root / "images", masks)}


def _files_by_stem(folder: Path, suffixes: Sequence[str], what: str) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.rglob("*"), key=lambda path: path.as_posix()):
        if path.is_file() and path.suffix.lower() in suffixes:
            stem = path.relative_to(folder).with_suffix("").as_posix()
            if stem in files:
                raise DatasetFormatError(f"{folder}: two {what} files for {stem!r}: {files[stem].name}, {path.name}")
            files[stem] = path
    return files


def _load_pair_folder(
    root: Path,
    layout: dict[str, tuple[Path, Path]],
    wanted: Sequence[str] | None,
    options: _CustomOptions,
    max_samples: int | None,
) -> SegmentationData:
    stored_id2label, origin = options.declared_id2label(root, None, None)
    if stored_id2label is None:
        raise _undeclared_classes_error(str(root), None)
    by_name = {}
    for split, (image_folder, mask_folder) in layout.items():
        images = _files_by_stem(image_folder, IMAGE_SUFFIXES, "image")
        masks = _files_by_stem(mask_folder, MASK_SUFFIXES, "mask")
        if not images:
            raise DatasetFormatError(f"{image_folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
        missing = [stem for stem in images if stem not in masks]
        lossy = _files_by_stem(mask_folder, LOSSY_MASK_SUFFIXES, "mask") if missing else {}
        lossy_missing = [stem for stem in missing if stem in lossy]
        if lossy_missing:
            raise DatasetFormatError(
                f"{lossy[lossy_missing[0]]}: a JPEG mask ({len(lossy_missing)} of {len(images)} masks are JPEG); "
                "JPEG is lossy, its compression turns the values along every edge into values of no class (or of "
                "other classes): save the masks as PNG (lossless)"
            )
        if missing:
            raise DatasetFormatError(
                f"{images[missing[0]]}: no mask {mask_folder / missing[0]}.png (masks are matched by file stem; "
                f"{len(missing)} of {len(images)} images have none)"
            )
        unmatched = [stem for stem in masks if stem not in images]
        if unmatched:
            logger.warning(
                "%s: %d masks without an image (e.g. %s), not used", mask_folder, len(unmatched), unmatched[0]
            )
        stems = list(images)
        by_name[split] = _split_from_files([images[s] for s in stems], [masks[s] for s in stems], root)
    by_name = _with_validation_split(by_name, wanted, options.train_val_split, str(root))
    chosen = _choose_splits(wanted, list(by_name), str(root))
    splits = _first_rows(by_name, chosen, max_samples)
    return _custom_data(splits, str(root), stored_id2label, origin, options, name=root.name)


def _is_saved_dataset(folder: Path) -> bool:
    """A `save_to_disk` folder: of a DatasetDict, or of a single Dataset."""
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def _load_parquet(
    path_or_id: str,
    *,
    data_dir: str | None,
    revision: str | None,
    cache_dir: str | None,
    name: str | None = None,
) -> datasets.DatasetDict:
    # Looked up on the module at call time (tests replace it to check the arguments of Hub loads).
    config = {"name": name} if name else {}
    return datasets.load_dataset(path_or_id, **config, data_dir=data_dir, revision=revision, cache_dir=cache_dir)


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
    source: str | os.PathLike | datasets.Dataset | datasets.DatasetDict,
    dataset: str | None = None,
    *,
    splits: Sequence[str] | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    max_samples: int | None = None,
    config_name: str | None = None,
    id2label: dict[int, str] | str | os.PathLike | None = None,
    reduce_labels: bool | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    train_val_split: float | None = DEFAULT_TRAIN_VAL_SPLIT,
    ignore_index: int = IGNORE_INDEX,
    palette: Sequence[Sequence[int]] | None = None,
    mask_values: str | Sequence[int] | None = None,
    undeclared_colors: str = "error",
) -> SegmentationData:
    """Load ADE20K, Cityscapes or custom data (see the module docstring for the sources and rules).

    Args:
        source: Hub id (`zhoubolei/scene_parse_150`, `scene_parse_150`, a Cityscapes mirror such as
            `Chris1/cityscapes`, any dataset with image and mask columns), local folder, or a `datasets.Dataset` /
            `DatasetDict`.
        dataset: "ade20k" or "cityscapes"; inferred from the known sources / layouts when None, checked when given.
        splits: split names to keep ("val" means "validation"); default train and validation where present.
        revision: Hub revision; for ADE20K the default is the Parquet export `refs/convert/parquet`.
        cache_dir: `datasets` cache for Hub and local Parquet sources (raw trees are read in place).
        max_samples: keep only the first `max_samples` rows of each split.
        config_name: the Hub dataset's configuration.
        id2label: custom data: names of the stored mask values (a dict or an `id2label.json` path); default the
            `id2label.json` of the dataset folder or Hub repo.
        reduce_labels: custom data: stored 0 means "unlabelled" (ignored) and value v is class v - 1. Default off.
        image_column, label_column: custom table data: the columns (default: the first of `IMAGE_COLUMNS` /
            `LABEL_COLUMNS` present).
        train_val_split: custom data without a validation split: this fraction of train becomes it (fixed seed).
        ignore_index: custom data: the mask value that is not scored (default 255).
        palette: custom data: one RGB colour per class; default the colours of colour masks, else
            `label_tables.generate_palette`.
        mask_values: custom data: the stored mask value of each class in class order (`[0, 255]` or `"0,255"`:
            value 0 is class 0, 255 class 1); other values than these and the ignore index are errors.
        undeclared_colors: custom colour masks: what a colour that no class has becomes, "error" (the default: the
            decode names the colour, the file and the pixel count) or "ignore" (the ignore index).
    """
    if dataset is not None and dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(DATASETS)}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be at least 1, got {max_samples}")
    if isinstance(splits, str):
        splits = [splits]
    cache_dir = str(cache_dir) if cache_dir is not None else None
    if undeclared_colors not in UNDECLARED_COLORS:
        raise ValueError(f"undeclared_colors must be one of {UNDECLARED_COLORS}, got {undeclared_colors!r}")
    options = _CustomOptions(
        id2label,
        reduce_labels,
        image_column,
        label_column,
        train_val_split,
        int(ignore_index),
        palette,
        parse_mask_values(mask_values),
        undeclared_colors,
    )
    declared = id2label is not None or reduce_labels is not None or mask_values is not None
    if dataset is not None and declared:
        raise ValueError(
            f"dataset={dataset!r} has its own classes; id2label / reduce_labels / mask_values are for custom data"
        )

    if isinstance(source, datasets.Dataset | datasets.DatasetDict):
        return _from_table(source, dataset, splits, max_samples, IN_MEMORY_SOURCE, options)

    folder = _local_folder(source)
    if folder is None:  # a Hub id
        if str(source) in ADE20K_HUB_ALIASES:
            _check_dataset("ade20k", dataset, str(source))
            if declared:
                raise ValueError(
                    f"{source} is ADE20K, with its own classes; id2label / reduce_labels / mask_values do not apply"
                )
            loaded = _load_hub(
                str(source),
                ADE20K_HUB_ID,
                data_dir=ADE20K_PARQUET_DATA_DIR,
                revision=revision or ADE20K_PARQUET_REVISION,
                cache_dir=cache_dir,
            )
            return _from_parquet(loaded, "ade20k", splits, max_samples, ADE20K_HUB_ID)
        loaded = _load_hub(
            str(source), str(source), data_dir=None, revision=revision, cache_dir=cache_dir, name=config_name
        )
        return _from_table(
            loaded, dataset, splits, max_samples, str(source), options, hub_id=str(source), revision=revision
        )

    # The preset trees, unless the caller declared the folder's classes (or an id2label.json does).
    custom = declared or (dataset is None and (folder / ID2LABEL_FILE).is_file())
    if not custom:
        for ade_root in (folder, folder / "ADEChallengeData2016"):
            has_splits = any((ade_root / "images" / split).is_dir() for split in ("training", "validation"))
            if has_splits and (ade_root / "annotations").is_dir():
                return _load_ade20k_raw(ade_root, dataset, splits, max_samples)
        if (folder / "leftImg8bit").is_dir() and (folder / "gtFine").is_dir():
            return _load_cityscapes_raw(folder, dataset, splits, max_samples)
        if (folder / ADE20K_PARQUET_DATA_DIR).is_dir():  # a copy of the ADE20K Parquet export
            _check_dataset("ade20k", dataset, str(folder))
            loaded = _load_parquet(str(folder), data_dir=ADE20K_PARQUET_DATA_DIR, revision=None, cache_dir=cache_dir)
            return _from_parquet(loaded, "ade20k", splits, max_samples, str(folder))
    if _is_saved_dataset(folder):
        loaded = datasets.load_from_disk(str(folder))
        return _from_table(loaded, dataset, splits, max_samples, str(folder), options, folder=folder)
    if next(folder.rglob("*.parquet"), None) is not None:
        loaded = _load_parquet(str(folder), data_dir=None, revision=None, cache_dir=cache_dir)
        return _from_table(loaded, dataset, splits, max_samples, str(folder), options, folder=folder)
    layout = _pair_folders(folder)
    if layout is not None:
        if dataset is not None:
            raise DatasetFormatError(f"{folder}: a folder of image + mask pairs is custom data, not {dataset}")
        return _load_pair_folder(folder, layout, splits, options, max_samples)
    raise DatasetFormatError(
        f"{folder}: not a known segmentation layout; expected ADEChallengeData2016/ (images/, annotations/), a "
        f"Cityscapes root (leftImg8bit/, gtFine/), the scene_parse_150 Parquet export ({ADE20K_PARQUET_DATA_DIR}/), "
        "a folder of Parquet files or a save_to_disk folder with image and mask columns, or image + mask files "
        f"(images/ and one of {', '.join(f'{name}/' for name in MASK_FOLDERS)}, optionally per split)"
    )
