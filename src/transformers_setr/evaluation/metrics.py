"""Semantic-segmentation metrics exactly as mmsegmentation's `IoUMetric` computes them (the protocol behind SETR's
reported numbers).

For every image, pixels whose ground truth is `ignore_index` (255) are dropped from both the prediction and the
ground truth; the per-class areas of intersection, union, prediction and ground truth are **summed over the whole
dataset**, and only then turned into ratios:

- `IoU_c = ΣI_c / ΣU_c`, `Acc_c = ΣI_c / Σlabel_c` (NaN for a class with a zero denominator),
- `mIoU = nanmean(IoU)`, `mAcc = nanmean(Acc)`: classes absent from both the predictions and the ground truth of
  the whole set are left out, not counted as 0,
- `aAcc = ΣI / Σlabel` over all classes.

A prediction outside `[0, num_labels)` on an evaluated pixel belongs to no class (mmseg's histogram drops it): it
counts in that pixel's ground-truth area, so it is a miss, but in no prediction area. Ground-truth values outside
`[0, num_labels)` other than `ignore_index` are an error (they would silently vanish from the metric).

The areas are a `(4, num_labels)` int64 tensor (rows: intersection, union, prediction, label), so they add up exactly
across batches, shards and processes.
"""

import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.setr.configuration_setr import IGNORE_INDEX

AREA_ROWS = ("intersection", "union", "prediction", "label")
EVALUATE_METRIC_NAME = "setr_mean_iou"
# Largest joint histogram (ground-truth values x prediction codes) counted in one bincount; wider inputs (only
# invalid labels or an ignore index far from the classes span that many values) take int64 masks instead.
_MAX_JOINT_BINS = 1 << 22

__all__ = [
    "AREA_ROWS",
    "MeanIoU",
    "evaluate_metric_path",
    "flat_metrics",
    "intersect_and_union",
    "summarize_areas",
    "trainer_compute_metrics",
]


def intersect_and_union(
    predictions: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    num_labels: int,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """
    Per-class areas of one or several segmentation maps, summed over all their pixels.

    Args:
        predictions: predicted class ids, any shape ((H, W), (B, H, W), ...), integer dtype.
        labels: ground-truth class ids, the same shape; `ignore_index` marks pixels that are not evaluated.
        num_labels: number of classes.
        ignore_index: ground-truth value of the pixels to skip.

    Returns:
        int64 tensor of shape (4, num_labels) on the device of `predictions`: area of intersection, union,
        prediction and label per class (see `AREA_ROWS`).
    """
    predictions, labels = torch.as_tensor(predictions), torch.as_tensor(labels)
    if predictions.shape != labels.shape:
        raise ValueError(
            f"predictions and labels must have the same shape, got {tuple(predictions.shape)} and "
            f"{tuple(labels.shape)} (score predictions at the ground-truth resolution)"
        )
    if (
        predictions.is_floating_point()
        or labels.is_floating_point()
        or torch.bool in (predictions.dtype, labels.dtype)
    ):
        raise ValueError(
            f"predictions and labels must hold integer class ids, got dtypes {predictions.dtype} and {labels.dtype}"
        )
    if num_labels < 1:
        raise ValueError(f"num_labels must be positive, got {num_labels}")
    labels = labels.to(predictions.device).reshape(-1)
    predictions = predictions.reshape(-1)
    # One bincount of (ground-truth value, prediction code) pairs in int32, every rule applied afterwards on the
    # small joint histogram: a handful of passes over the pixels instead of a dozen int64 masks (~9x faster).
    if labels.dtype == torch.uint8:
        label_offset, label_values = 0, 256
    elif labels.numel() == 0:
        label_offset, label_values = 0, 1
    else:
        low, high = (int(value) for value in torch.aminmax(labels))
        label_offset, label_values = low, high - low + 1
    if predictions.dtype == torch.uint8:
        prediction_codes, prediction_shift = 256, 0  # code = value
    else:  # code = value + 1, with every value outside [0, num_labels) in code 0 or num_labels + 1
        prediction_codes, prediction_shift = num_labels + 2, 1
    if label_values * prediction_codes > _MAX_JOINT_BINS or not -(2**31) <= label_offset < 2**31:
        return _intersect_and_union_wide(predictions, labels, num_labels, ignore_index)
    codes = (predictions.clamp(-1, num_labels) if prediction_shift else predictions).to(torch.int32)
    # copy=True: an int32 input must not be modified in place.
    pair_index = labels.to(torch.int32, copy=True).sub_(label_offset).mul_(prediction_codes).add_(codes)
    if prediction_shift:
        pair_index.add_(prediction_shift)
    joint = torch.bincount(pair_index, minlength=label_values * prediction_codes)
    joint = joint.view(label_values, prediction_codes)
    label_ids = torch.arange(label_offset, label_offset + label_values, device=joint.device)
    evaluated = label_ids != ignore_index
    invalid = evaluated & ((label_ids < 0) | (label_ids >= num_labels)) & (joint.sum(dim=1) > 0)
    if bool(invalid.any()):
        _raise_invalid_labels(label_ids[invalid], num_labels, ignore_index)
    # Rows of classes 0..num_labels-1 (zeroed under the ignore index); columns: the classes, then "no class".
    confusion = torch.zeros(num_labels, num_labels + 1, dtype=torch.int64, device=joint.device)
    first, last = max(0, label_offset), min(num_labels, label_offset + label_values)
    if first < last:
        rows = joint[first - label_offset : last - label_offset]
        class_columns = rows[:, prediction_shift : prediction_shift + num_labels]
        confusion[first:last, :num_labels] = class_columns
        confusion[first:last, num_labels] = rows.sum(dim=1) - class_columns.sum(dim=1)
        if 0 <= ignore_index < num_labels:
            confusion[ignore_index] = 0
    return _areas_from_confusion(confusion)


def _intersect_and_union_wide(
    predictions: torch.Tensor, labels: torch.Tensor, num_labels: int, ignore_index: int
) -> torch.Tensor:
    """`intersect_and_union` for ground truth spanning too many values for a joint histogram (such maps hold
    invalid values unless the ignore index lies far from the classes): int64 masks over the pixels."""
    labels, predictions = labels.to(torch.int64), predictions.to(torch.int64)
    evaluated = labels != ignore_index
    invalid = evaluated & ((labels < 0) | (labels >= num_labels))
    if bool(invalid.any()):
        _raise_invalid_labels(torch.unique(labels[invalid]), num_labels, ignore_index)
    columns = num_labels + 1
    predictions = torch.where((predictions >= 0) & (predictions < num_labels), predictions, num_labels)
    pair_index = torch.where(evaluated, labels * columns + predictions, num_labels * columns)
    counts = torch.bincount(pair_index, minlength=num_labels * columns + 1)[: num_labels * columns]
    confusion = counts.view(num_labels, columns)
    return _areas_from_confusion(confusion)


def _raise_invalid_labels(values: torch.Tensor, num_labels: int, ignore_index: int) -> None:
    raise ValueError(
        f"labels contain values {values[:10].tolist()} outside [0, {num_labels}) that are not the ignore index "
        f"{ignore_index}"
    )


def _areas_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """(4, C) areas from a (C, C + 1) confusion matrix: rows ground truth, the last column predictions of no class."""
    num_labels = confusion.shape[0]
    area_intersect = confusion.diagonal()
    area_label = confusion.sum(dim=1)
    area_prediction = confusion[:, :num_labels].sum(dim=0)
    area_union = area_prediction + area_label - area_intersect
    return torch.stack([area_intersect, area_union, area_prediction, area_label])


def _as_area_array(areas: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(areas, torch.Tensor):
        areas = areas.detach().cpu().numpy()
    areas = np.asarray(areas)
    if areas.ndim != 2 or areas.shape[0] != len(AREA_ROWS):
        raise ValueError(f"areas must have shape (4, num_labels), got {areas.shape}")
    return areas.astype(np.float64)


def _nanmean(values: np.ndarray) -> float:
    # A set with no evaluated class at all has no mean: NaN, without numpy's "mean of empty slice" warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values)) if values.size and not np.isnan(values).all() else math.nan


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return numerator / denominator


def _class_names(num_labels: int, id2label: Mapping[int, str] | None) -> list[str]:
    if id2label is None:
        return [str(index) for index in range(num_labels)]
    id2label = {int(key): value for key, value in id2label.items()}
    if sorted(id2label) != list(range(num_labels)):
        raise ValueError(f"id2label must name the classes 0..{num_labels - 1}, got keys {sorted(id2label)[:10]}...")
    names = [id2label[index] for index in range(num_labels)]
    if len(set(names)) != num_labels:  # the per-class results are keyed by name
        raise ValueError(f"id2label has repeated class names: {sorted({n for n in names if names.count(n) > 1})}")
    return names


def summarize_areas(areas: torch.Tensor | np.ndarray, id2label: Mapping[int, str] | None = None) -> dict[str, Any]:
    """
    mmseg's `IoUMetric` summary of dataset-level areas.

    Args:
        areas: (4, num_labels) sums from `intersect_and_union` (rows intersection, union, prediction, label).
        id2label: class names for the per-class entries (default: the class indices as strings).

    Returns:
        `{"mIoU", "mAcc", "aAcc"}` as fractions (not percent), and `"per_class_iou"`, `"per_class_accuracy"`:
        dicts class name -> fraction, NaN for a class with no prediction and no ground-truth pixel (IoU) or no
        ground-truth pixel (accuracy).
    """
    area_intersect, area_union, _, area_label = _as_area_array(areas)
    names = _class_names(area_intersect.shape[0], id2label)
    iou = _divide(area_intersect, area_union)
    accuracy = _divide(area_intersect, area_label)
    overall_accuracy = float(_divide(area_intersect.sum(), area_label.sum()))
    return {
        "mIoU": _nanmean(iou),
        "mAcc": _nanmean(accuracy),
        "aAcc": overall_accuracy,
        "per_class_iou": dict(zip(names, iou.tolist())),
        "per_class_accuracy": dict(zip(names, accuracy.tolist())),
    }


def flat_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """`summarize_areas` output as a flat dict of floats (for loggers): mIoU, mAcc, aAcc, `IoU-<class>` and
    `Acc-<class>`."""
    flat = {key: float(summary[key]) for key in ("mIoU", "mAcc", "aAcc")}
    flat.update({f"IoU-{name}": float(value) for name, value in summary["per_class_iou"].items()})
    flat.update({f"Acc-{name}": float(value) for name, value in summary["per_class_accuracy"].items()})
    return flat


class MeanIoU:
    """
    Streaming mmseg `IoUMetric`: add batches with `update` (class-id maps) or `update_areas` (precomputed areas),
    read the summary with `compute`. Only the (4, num_labels) sums are kept, on the device of the first update.

    Example:
        >>> metric = MeanIoU(num_labels=150)
        >>> for predictions, labels in batches:  # doctest: +SKIP
        ...     metric.update(predictions, labels)
        >>> metric.compute()["mIoU"]  # doctest: +SKIP
    """

    def __init__(
        self, num_labels: int, ignore_index: int = IGNORE_INDEX, id2label: Mapping[int, str] | None = None
    ) -> None:
        if num_labels < 1:
            raise ValueError(f"num_labels must be positive, got {num_labels}")
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.id2label = dict(id2label) if id2label is not None else None
        _class_names(num_labels, self.id2label)  # fail early on a wrong id2label
        self.areas: torch.Tensor | None = None

    def reset(self) -> None:
        self.areas = None

    def update(self, predictions: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> None:
        """Add class-id maps of any shape (one image or a batch); `labels` at the same resolution."""
        self.update_areas(intersect_and_union(predictions, labels, self.num_labels, self.ignore_index))

    def update_areas(self, areas: torch.Tensor | np.ndarray) -> None:
        """Add areas of shape (4, num_labels) or per-sample areas (B, 4, num_labels)."""
        areas = torch.as_tensor(areas)
        if areas.ndim == 3:
            areas = areas.sum(dim=0)
        if tuple(areas.shape) != (len(AREA_ROWS), self.num_labels):
            raise ValueError(
                f"areas must have shape (4, {self.num_labels}) or (batch, 4, {self.num_labels}), "
                f"got {tuple(areas.shape)}"
            )
        if areas.is_floating_point():
            raise ValueError(f"areas must be integer pixel counts, got dtype {areas.dtype}")
        areas = areas.to(torch.int64)
        self.areas = areas.clone() if self.areas is None else self.areas + areas.to(self.areas.device)

    def total_areas(self) -> torch.Tensor:
        """The (4, num_labels) sums so far, on the CPU (zeros before any update)."""
        if self.areas is None:
            return torch.zeros(len(AREA_ROWS), self.num_labels, dtype=torch.int64)
        return self.areas.cpu()

    def compute(self) -> dict[str, Any]:
        """`summarize_areas` of everything added since the last `reset`."""
        return summarize_areas(self.total_areas(), self.id2label)


def trainer_compute_metrics(
    num_labels: int, id2label: Mapping[int, str] | None = None
) -> Callable[..., dict[str, float]]:
    """
    `compute_metrics` for `Trainer` with `TrainingArguments(batch_eval_metrics=True)`.

    The Trainer calls it once per evaluation batch with `EvalPrediction(predictions=..., label_ids=...)` after
    gathering across processes, and `compute_result=True` on the last batch. Here `predictions` are the per-sample
    areas (B, 4, num_labels) that `SetrTrainer.prediction_step` returns instead of logits (`label_ids` is a dummy).
    The areas are summed; the last call returns mIoU, mAcc, aAcc and `IoU-<class>` (floats) and resets the sums for
    the next evaluation. Intermediate calls return an empty dict.
    """
    metric = MeanIoU(num_labels, id2label=id2label)

    def compute_metrics(eval_pred, compute_result: bool = True) -> dict[str, float]:
        areas = eval_pred.predictions
        if isinstance(areas, (tuple, list)):
            areas = areas[0]
        areas = torch.as_tensor(areas)
        if areas.ndim != 3 or tuple(areas.shape[1:]) != (len(AREA_ROWS), num_labels):
            raise ValueError(
                f"compute_metrics expects per-sample areas of shape (batch, 4, {num_labels}) as predictions "
                f"(from SetrTrainer.prediction_step), got {tuple(areas.shape)}"
            )
        metric.update_areas(areas)
        if not compute_result:
            return {}
        summary = metric.compute()
        metric.reset()
        return flat_metrics(summary)

    return compute_metrics


def evaluate_metric_path() -> str:
    """Folder of the `evaluate` module (`evaluate.load(evaluate_metric_path())` works offline)."""
    return str(Path(__file__).with_name("evaluate_metrics") / EVALUATE_METRIC_NAME)
