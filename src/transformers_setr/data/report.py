"""The data report printed before training: images per split, each class's share of the pixels and the share of
ignored pixels, computed on the masks after the label mapping (`SegmentationData.map_stored`), on every mask when
there are at most `max_masks` in a split, else on a deterministic, evenly spaced sample of `max_masks` (the report
says which).

It also refuses, as `DatasetFormatError` naming the files, what would train silently on nothing: 0/255 binary masks
read with the class ids 0 and 1 (255 is the ignore index: the model would see background only), masks with nothing
labelled, values or colours of no class, masks whose size differs from their image's, unreadable files, empty
splits. It warns when a class never appears in the training masks read or when most of a split's pixels (> 50 %)
are ignored.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..models.setr.configuration_setr import IGNORE_INDEX
from .dataset import SegmentationData
from .errors import DatasetFormatError
from .masks import cell_file_name
from .splits import normalise_split

DEFAULT_MAX_MASKS = 256  # per split: a few hundred masks give the shares to a fraction of a percent
MOSTLY_IGNORED = 0.5  # a split whose ignored share is above this is warned about
MAX_CLASS_ROWS = 20  # above this many classes the table shows the most and least frequent ones
_FILES_NAMED = 3  # files named in a refusal


@dataclass
class DataReport:
    """What `data_report` found; `str(report)` is the text printed before training."""

    source: str
    splits: list[str]
    images: dict[str, int]  # rows per split (after the sample limits of the run)
    masks_read: dict[str, int]
    class_pixels: dict[str, np.ndarray]  # split -> pixels of each class (int64, num_labels)
    ignored_pixels: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    text: str = ""

    def share(self, split: str) -> tuple[np.ndarray, float]:
        """(each class's share of the split's pixels, the ignored share)."""
        total = int(self.class_pixels[split].sum()) + self.ignored_pixels[split]
        if total == 0:
            return np.zeros(len(self.class_pixels[split])), 0.0
        return self.class_pixels[split] / total, self.ignored_pixels[split] / total

    def __str__(self) -> str:
        return self.text


def sample_indices(count: int, max_masks: int) -> np.ndarray:
    """All of `range(count)` when it has at most `max_masks` items, else `max_masks` evenly spaced ones (the first
    and the last included): the same rows every run."""
    if count <= max_masks:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, max_masks).round().astype(np.int64))


def _image_size(value: Any, name: str) -> tuple[int, int]:
    """(width, height) of an image after its EXIF orientation, from the file's header (no pixel decoding)."""
    if isinstance(value, Image.Image):
        image = value
    else:
        import io

        data, path = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (None, value)
        source = io.BytesIO(data) if data is not None else path
        if source is None:
            raise DatasetFormatError(f"{name}: the image has neither bytes nor a path")
        try:
            image = Image.open(source)
        except (OSError, ValueError, SyntaxError) as error:
            raise DatasetFormatError(f"{name}: cannot read the image: {error}") from error
    width, height = image.size
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block: decode() reads the image and reports the problem
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _named(files: Sequence[str]) -> str:
    shown = ", ".join(files[:_FILES_NAMED])
    return shown + (", ..." if len(files) > _FILES_NAMED else "")


@dataclass
class _Counts:
    """Pixels of each stored value (or colour) in the masks read, and the first files holding each."""

    pixels: dict[int, int] = field(default_factory=dict)
    files: dict[int, list[str]] = field(default_factory=dict)

    def add(self, values: np.ndarray, name: str) -> None:
        unique, counts = np.unique(values, return_counts=True)
        for value, count in zip(unique.tolist(), counts.tolist()):
            self.pixels[value] = self.pixels.get(value, 0) + count
            named = self.files.setdefault(value, [])
            if len(named) <= _FILES_NAMED:
                named.append(name)


def _read_split(data: SegmentationData, split: str, rows: int, max_masks: int) -> _Counts:
    counts = _Counts()
    table = data.splits[split]
    for index in sample_indices(rows, max_masks).tolist():
        row = table[index]
        file_name = row.get("file_name") or cell_file_name(row.get("image"), f"{split}/{index}")
        annotation = row.get("annotation")
        if annotation is None:
            raise DatasetFormatError(f"{file_name}: the row has no annotation (test splits usually have none)")
        mask_name = cell_file_name(annotation, f"annotation of {file_name}")
        values = data.read_stored_mask(annotation, mask_name)
        width, height = _image_size(row.get("image"), file_name)
        if values.shape != (height, width):
            raise DatasetFormatError(
                f"{mask_name}: the mask is {values.shape[1]}x{values.shape[0]} but its image {file_name} is "
                f"{width}x{height}; a mask must have its image's size"
            )
        counts.add(values, mask_name)
    return counts


def _check_binary_255(data: SegmentationData, counts: Mapping[str, _Counts]) -> None:
    """0/255 masks read with the class ids 0 and 1: 255 is the ignore index, the foreground would never be trained."""
    if not data.is_custom or data.mask_values is not None or data.mask_colors or data.reduce_labels:
        return
    seen = set().union(*(c.pixels for c in counts.values()))
    if data.num_labels != 2 or data.ignore_index != IGNORE_INDEX or seen != {0, IGNORE_INDEX}:
        return  # all 255: nothing labelled, refused with its own message
    files = list(dict.fromkeys(name for c in counts.values() for name in c.files.get(IGNORE_INDEX, [])))
    names = data.id2label
    raise DatasetFormatError(
        f"{_named(files)}: the masks hold only the values 0 and 255, but id2label declares the classes 0 "
        f"({names[0]!r}) and 1 ({names[1]!r}) and 255 is the ignore index: the {names[1]!r} pixels would be ignored "
        f"and nothing but {names[0]!r} trained. Pass --mask_values 0,255 (Python: mask_values=[0, 255]) or key "
        f'id2label by the stored values: {{"0": "{names[0]}", "255": "{names[1]}"}}'
    )


def _class_pixels(data: SegmentationData, counts: _Counts, split: str) -> tuple[np.ndarray, int]:
    stored = np.array(sorted(counts.pixels), dtype=np.int64)
    pixels = np.array([counts.pixels[v] for v in stored.tolist()], dtype=np.int64)
    train_ids = data.map_stored(stored) if len(stored) else stored
    invalid = train_ids < 0
    if invalid.any():
        bad = stored[invalid].tolist()
        files = list(dict.fromkeys(name for value in bad for name in counts.files[value]))
        raise DatasetFormatError(
            data.unexpected_values_message(stored[invalid], int(pixels[invalid].sum()), _named(files))
        )
    ignored = train_ids == data.ignore_index
    per_class = np.bincount(train_ids[~ignored], weights=pixels[~ignored], minlength=data.num_labels)
    return per_class.astype(np.int64), int(pixels[ignored].sum())


def data_report(
    data: SegmentationData,
    splits: Sequence[str] | None = None,
    *,
    max_masks: int = DEFAULT_MAX_MASKS,
    max_rows: Mapping[str, int | None] | None = None,
    train_split: str = "train",
) -> DataReport:
    """Read the masks of `splits` (default: all of `data`'s) and describe them (see the module docstring).

    Args:
        data: what `load_segmentation_data` returned.
        splits: the splits to report ("val" means "validation"); each must exist and have images.
        max_masks: at most this many masks read per split (an evenly spaced sample above it).
        max_rows: split -> the number of first rows the run uses (`--max_train_samples`...); None: all.
        train_split: the split whose classes must all appear (a warning otherwise).

    Raises:
        DatasetFormatError: an empty split, an unreadable file, a mask of another size than its image, values or
            colours of no class, 0/255 masks read as class ids, or no labelled pixel in a split.
    """
    if max_masks < 1:
        raise ValueError(f"max_masks must be at least 1, got {max_masks}")
    names = [normalise_split(split) for split in (splits if splits is not None else data.splits)]
    names = list(dict.fromkeys(names))
    rows: dict[str, int] = {}
    for split in names:
        if split not in data.splits:
            raise DatasetFormatError(f"{data.source}: no split {split!r}; available: {list(data.splits)}")
        limit = (max_rows or {}).get(split)
        rows[split] = len(data.splits[split]) if limit is None else min(limit, len(data.splits[split]))
        if rows[split] == 0:
            limited = f" (limited to {limit} rows)" if limit is not None else ""
            raise DatasetFormatError(f"{data.source}: the {split} split has no images{limited}")
    counts = {split: _read_split(data, split, rows[split], max_masks) for split in names}
    _check_binary_255(data, counts)

    class_pixels, ignored = {}, {}
    for split in names:
        class_pixels[split], ignored[split] = _class_pixels(data, counts[split], split)
        if class_pixels[split].sum() == 0:
            hint = ""
            if data.is_custom and not data.mask_colors and set(counts[split].pixels) == {data.ignore_index}:
                hint = (
                    f"; if {data.ignore_index} marks a class, give the stored value of each class with --mask_values "
                    "(e.g. 0,255)"
                )
            raise DatasetFormatError(
                f"{_named(list(dict.fromkeys(n for f in counts[split].files.values() for n in f)))}: no labelled "
                f"pixel in the {split} masks read ({len(sample_indices(rows[split], max_masks))} of "
                f"{rows[split]}): every pixel is the ignore index {data.ignore_index}, nothing to "
                f"{'train' if split == normalise_split(train_split) else 'evaluate'} on{hint}"
            )
    report = DataReport(
        source=data.source,
        splits=names,
        images=rows,
        masks_read={split: len(sample_indices(rows[split], max_masks)) for split in names},
        class_pixels=class_pixels,
        ignored_pixels=ignored,
    )
    train = normalise_split(train_split)
    if train in class_pixels:
        absent = [data.id2label[i] for i in np.flatnonzero(class_pixels[train] == 0).tolist()]
        if absent:
            report.warnings.append(
                f"{len(absent)} of the {data.num_labels} classes never appear in the {train} masks read: "
                f"{', '.join(absent[:10])}{', ...' if len(absent) > 10 else ''}"
            )
    for split in names:
        share = report.share(split)[1]
        if share > MOSTLY_IGNORED:
            report.warnings.append(
                f"{100 * share:.1f}% of the {split} pixels are ignored (the ignore index {data.ignore_index})"
            )
    report.text = _format(data, report)
    return report


def _mapping_line(data: SegmentationData) -> str:
    if not data.is_custom:
        return f"{data.name}, {data.num_labels} classes ({data.label_format} masks)"
    if data.mask_colors:
        stored = "colour masks, classes by colour"
    elif data.mask_values is not None:
        pairs = ", ".join(f"{value}->{index}" for index, value in enumerate(data.mask_values[:8]))
        stored = f"stored values -> classes {pairs}{', ...' if len(data.mask_values) > 8 else ''}"
    elif data.reduce_labels:
        stored = "reduce_labels: 0 unlabelled, value v is class v-1"
    else:
        stored = "stored values are the class ids"
    return f"{data.name}, {data.num_labels} classes, ignore index {data.ignore_index}; {stored}"


def _format(data: SegmentationData, report: DataReport) -> str:
    splits = report.splits
    lines = [f"Data report: {_mapping_line(data)}"]
    read = []
    for split in splits:
        total, sampled = report.images[split], report.masks_read[split]
        read.append(f"{split} {total} images ({'all masks read' if sampled == total else f'{sampled} masks read'})")
    lines.append("  " + "; ".join(read))
    if any(report.masks_read[s] < report.images[s] for s in splits):
        lines.append("  (shares of a deterministic, evenly spaced sample of the masks)")
    width = max(12, min(28, max(len(name) for name in data.id2label.values()) + 5))
    lines.append(f"  {'pixels':<{width}}" + "".join(f"{split:>12}" for split in splits))
    shares = {split: report.share(split) for split in splits}
    order = list(range(data.num_labels))
    hidden = 0
    if data.num_labels > MAX_CLASS_ROWS:  # the most frequent classes of the first split, and how many are left out
        by_share = np.argsort(-shares[splits[0]][0], kind="stable").tolist()
        present = np.sum([shares[s][0] for s in splits], axis=0) > 0
        order = sorted(i for i in by_share[: MAX_CLASS_ROWS - 2] if present[i])
        hidden = data.num_labels - len(order)
    for index in order:
        label = f"{index} {data.id2label[index]}"[: width - 1]
        lines.append(f"  {label:<{width}}" + "".join(f"{100 * shares[s][0][index]:>11.1f}%" for s in splits))
    if hidden:
        rest = {s: 100 * (1 - shares[s][1] - shares[s][0][order].sum()) for s in splits}
        lines.append(
            f"  {f'({hidden} other classes)':<{width}}" + "".join(f"{max(rest[s], 0):>11.1f}%" for s in splits)
        )
    lines.append(f"  {'(ignored)':<{width}}" + "".join(f"{100 * shares[s][1]:>11.1f}%" for s in splits))
    lines.extend(f"  warning: {warning}" for warning in report.warnings)
    return "\n".join(lines)
