"""The classes of a dataset and how its masks store them: the label formats of ADE20K and Cityscapes, the custom
data's declaration (`id2label`, `mask_values`, colours), and the tables `stored value -> train id`.

Custom data's classes must be declared: `id2label` (a dict or a JSON file), else an `id2label.json` in the dataset
folder or Hub repo (the convention of transformers' semantic-segmentation example). The mask values of custom data
are the keys of that `id2label` as stored; with `reduce_labels` (the user's choice, default off as in the
transformers example) value 0 means "unlabelled": it becomes the ignore index, value v becomes class v - 1, and the
entry 0 of `id2label` (if any) is dropped. The ignore index (default 255) is never a class. Any other value is an
error naming the file (or split/row) and the values.

Masks as people store them (custom data):
- stored values that are not the class ids, e.g. binary masks of 0 and 255: `mask_values=[0, 255]` (`--mask_values
  0,255`) says that the i-th value is class i, or the keys of `id2label` are the stored values themselves
  (`{"0": "background", "255": "foreground"}`: keys that are not 0..N-1 are stored values, the classes are numbered
  in key order). A stored value equal to the ignore index that is not one of the classes' is ignored; any other is an
  error. `data.report.data_report` refuses 0/255 masks read with the class ids 0 and 1 (255 would be ignored);
- colour (RGB) masks: `id2label` entries `{"name": "road", "color": [128, 64, 128]}` (all or none of them with a
  colour) map each colour to its class; a colour no class has is an error naming the colour, the file and its pixel
  count, or, with `undeclared_colors="ignore"` (`--undeclared_colors ignore`), the ignore index. P-mode masks are read
  through their palette then; single-channel masks are refused (`masks.py` reads them);
- JPEG masks are refused: the compression changes the values along every edge into values of no class (or of others).

ADE20K raw values 0..150 become train ids here, exactly once (0 -> 255, v -> v - 1); nothing downstream reduces again.
"""

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
from transformers.utils import logging

from ..models.setr.configuration_setr import IGNORE_INDEX, checked_id2label
from .errors import DatasetFormatError
from .label_tables import ADE20K_CLASSES, CITYSCAPES_CLASSES, CITYSCAPES_NUM_LABEL_IDS, cityscapes_label_id_to_train_id

logger = logging.get_logger(__name__)

LABEL_FORMATS = ("ade20k", "cityscapes-train-ids", "cityscapes-label-ids")
CUSTOM_LABEL_FORMAT = "custom"  # the user's classes: mask values are the keys of `id2label` (see the docstring)
CUSTOM_DATASET = "custom"
ID2LABEL_FILE = "id2label.json"
UNDECLARED_COLORS = ("error", "ignore")  # what a colour mask's colour that no class has becomes

DATASETS_PRETTY_NAMES = {"ade20k": "ADE20K", "cityscapes": "Cityscapes"}


def train_id_table(label_format: str) -> np.ndarray:
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


ALLOWED_VALUES = {  # what a label format allows, for the refusals
    "ade20k": f"ADE20K annotation values 0..{len(ADE20K_CLASSES)}",
    "cityscapes-label-ids": f"Cityscapes label ids 0..{CITYSCAPES_NUM_LABEL_IDS - 1}",
    "cityscapes-train-ids": f"Cityscapes train ids 0..{len(CITYSCAPES_CLASSES) - 1} and {IGNORE_INDEX}",
}


def custom_train_id_table(
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


def load_id2label_json(path: str | os.PathLike) -> Any:
    """The JSON of an id2label file as it is (checked by the caller: names, or names with colours)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: no such id2label file") from None
    except (OSError, ValueError) as error:
        raise DatasetFormatError(f"{path}: cannot read id2label JSON: {error}") from None


def read_id2label(path: str | os.PathLike) -> dict[int, str]:
    """An `id2label.json` file (`{"0": "name", ...}`), checked."""
    return checked_dataset_id2label(load_id2label_json(path), str(path))


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


@overload
def parse_mask_values(values: str | Sequence[int], origin: str = ...) -> tuple[int, ...]: ...
@overload
def parse_mask_values(values: None, origin: str = ...) -> None: ...
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
        # every class has its colour (checked above)
        return ClassDeclaration(classes, mask_colors=tuple(colour for colour in colours if colour is not None))
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
