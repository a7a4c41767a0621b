"""`SegmentationData`: the splits of a load (rows of undecoded image / annotation files) with their classes, and
`decode`, which yields an RGB image and a map of train ids.

Labels leave `decode` as train ids with the ignore index (255 unless custom data says otherwise) for what is not
scored; the mapping from stored values (`classes.py`) is applied here, exactly once.

Image columns are kept undecoded (`Image(decode=False)`) so that `decode` knows the file names for its errors and
applies the EXIF orientation itself (as `datasets` and OpenCV do for images; masks are read unchanged, as
mmsegmentation does), then checks that image and annotation sizes agree.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..models.setr.configuration_setr import IGNORE_INDEX
from ..models.setr.image_processing_base_setr import decode_image
from ._datasets import datasets
from .classes import (
    ALLOWED_VALUES,
    CUSTOM_DATASET,
    CUSTOM_LABEL_FORMAT,
    DATASETS_PRETTY_NAMES,
    LABEL_FORMATS,
    UNDECLARED_COLORS,
    checked_dataset_id2label,
    custom_train_id_table,
    parse_mask_values,
    train_id_table,
)
from .errors import DatasetFormatError
from .label_tables import DATASETS, generate_palette, id2label_for
from .masks import cell_file_name, colour_name, open_cell, read_colour_mask, read_label_values
from .splits import normalise_split

_EXIF_ORIENTATION = 0x0112


@dataclass
class SegmentationExample:
    image: Image.Image  # RGB, EXIF orientation applied
    labels: np.ndarray  # (H, W) uint8 train ids, 255 = ignore; same size as `image`
    file_name: str  # for error messages and logs


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
                self.mask_colors = tuple((int(r), int(g), int(b)) for r, g, b in self.mask_colors)
                if self.reduce_labels or len(self.mask_colors) != len(self.classes):
                    raise ValueError(f"{len(self.mask_colors)} mask colours for {len(self.classes)} classes")
                packed = [(r << 16) | (g << 8) | b for r, g, b in self.mask_colors]
                self._class_of_colour = dict(zip(packed, range(len(packed))))
            self._lookup = custom_train_id_table(
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
        self._lookup = train_id_table(self.label_format)
        self.name = self.name or DATASETS_PRETTY_NAMES[self.dataset]

    @property
    def is_custom(self) -> bool:
        return self.label_format == CUSTOM_LABEL_FORMAT

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(self.classes or {}) if self.is_custom else id2label_for(self.dataset)

    @property
    def palette(self) -> tuple[tuple[int, ...], ...]:
        if not self.is_custom:
            return DATASETS[self.dataset]["palette"]
        if self.custom_palette is not None:
            return tuple(tuple(int(c) for c in colour) for colour in self.custom_palette)
        return self.mask_colors or generate_palette(self.num_labels)

    def decode(self, row: dict) -> SegmentationExample:
        """One row of a split -> RGB image (EXIF orientation applied) and train ids, checked against each other."""
        file_name = row.get("file_name") or cell_file_name(row.get("image"), "<row without a file name>")
        image = open_cell(row.get("image"), file_name, "image")
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
        return read_colour_mask(annotation, name) if self.mask_colors else read_label_values(annotation, name)

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

    def unexpected_values_message(self, values: Sequence[int] | np.ndarray, pixels: int, where: str) -> str:
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
            return ALLOWED_VALUES[self.label_format]
        count = self.num_labels
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
