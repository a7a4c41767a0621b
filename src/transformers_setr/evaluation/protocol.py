"""Dataset evaluation with SETR's protocol (mmsegmentation's test pipeline and `IoUMetric`).

Each image is resized keep-ratio to the image processor's test scale, segmented with the chosen inference mode
(`whole`, `slide`: the model's sliding windows, `ms_flip`: multi-scale + flip from `inference.py`), its logits are
resized bilinearly to the ORIGINAL ground-truth resolution and arg-maxed (a binary model's one logit thresholded at 0
into its two classes, `config.prediction_id2label`), and the per-class areas are summed over the dataset
(`metrics.intersect_and_union`). Only the (4, num_labels) sums are kept, so memory does not grow with the
dataset; with `accelerate` each process evaluates every `num_processes`-th image and the sums are added up, which
gives exactly the single-process numbers.
"""

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ..inference.predict import INFERENCE_MODES, check_eval, check_mode, predict_batch, predict_labels
from ..models.setr.configuration_setr import IGNORE_INDEX
from ..models.setr.modeling_setr import SetrForSemanticSegmentation
from .metrics import MeanIoU, intersect_and_union, summarize_areas

EVAL_MODES = INFERENCE_MODES  # the evaluation protocols are the inference modes

__all__ = [
    "EVAL_MODES",
    "SegmentationEvalDataset",
    "batch_areas",
    "eval_collate",
    "evaluate_segmentation",
    "predict_labels",
]


def _check_split(data, split: str) -> None:
    if split not in data.splits:
        raise ValueError(f"split {split!r} is not in {data.source}; available splits: {sorted(data.splits)}")


class SegmentationEvalDataset(Dataset):
    """
    One split of a `SegmentationData`, prepared for evaluation.

    Item `i` is `{"pixel_values": (3, h, w) float32, "labels": (H, W) int64}`: the image through `image_processor`
    (keep-ratio resize to its test scale, normalisation, no padding) and the ground truth at the ORIGINAL
    resolution, already mapped to train ids by `data.decode` (the processor never touches the labels, so they are
    not reduced twice). With `keep_images=True` the item also has `"image"`, the original PIL image (for `ms_flip`).
    """

    def __init__(
        self,
        data,
        image_processor,
        split: str = "validation",
        *,
        keep_images: bool = False,
        max_samples: int | None = None,
    ) -> None:
        _check_split(data, split)
        self.data = data
        self.split = split
        self.rows = data.splits[split]
        self.image_processor = image_processor
        self.keep_images = keep_images
        self.length = len(self.rows) if max_samples is None else min(max_samples, len(self.rows))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} evaluation images")
        example = self.data.decode(self.rows[int(index)])
        image = example.image
        if example.labels.shape != (image.height, image.width):
            raise ValueError(
                f"{example.file_name}: labels of size {example.labels.shape} for an image of size "
                f"{(image.height, image.width)} (HxW)"
            )
        pixel_values = self.image_processor(images=image, do_reduce_labels=False, do_pad=False, return_tensors="pt")[
            "pixel_values"
        ][0]
        item = {"pixel_values": pixel_values, "labels": torch.from_numpy(np.asarray(example.labels, dtype=np.int64))}
        if self.keep_images:
            item["image"] = image
        return item


def _stack(name: str, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    shapes = sorted({tuple(t.shape) for t in tensors})
    if len(shapes) > 1:
        raise ValueError(
            f"cannot batch {name} of different sizes {shapes}: evaluation images keep their aspect ratio and "
            "original resolution, so evaluate with batch_size=1 (or images of one size)"
        )
    return torch.stack(list(tensors))


def eval_collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Collate `SegmentationEvalDataset` items (usually one) into `pixel_values` (B, 3, h, w), `labels` (B, H, W)
    and, when the items have images, `images` (a list of PIL images)."""
    collated: dict[str, Any] = {
        "pixel_values": _stack("pixel_values", [item["pixel_values"] for item in batch]),
        "labels": _stack("labels", [item["labels"] for item in batch]),
    }
    if "image" in batch[0]:
        collated["images"] = [item["image"] for item in batch]
    return collated


@torch.inference_mode()
def batch_areas(
    model: torch.nn.Module,
    batch: dict[str, Any],
    mode: str,
    num_labels: int,
    image_processor=None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """
    Per-image areas (B, 4, num_labels) of a batch from `eval_collate` (`pixel_values`, `labels` at the original
    resolution, `images` for `ms_flip`), on the model's device. `whole` and `slide` run the batch in one call.
    """
    check_mode(mode, "evaluation")
    check_eval(model)
    labels = batch["labels"]
    if labels.ndim != 3:
        raise ValueError(f"labels must have shape (batch, height, width), got {tuple(labels.shape)}")
    output_size = tuple(labels.shape[-2:])
    if mode == "ms_flip":
        images = batch.get("images")
        if images is None or len(images) != len(labels):
            raise ValueError("ms_flip evaluation needs the original images in the batch (keep_images=True)")
        predictions = torch.stack(
            [predict_labels(model, None, output_size, mode, image, image_processor) for image in images]
        )
    else:
        predictions = predict_batch(model, batch["pixel_values"], output_size, mode)
    labels = labels.to(predictions.device)
    return torch.stack(
        [
            intersect_and_union(prediction, label, num_labels, ignore_index)
            for prediction, label in zip(predictions, labels, strict=True)
        ]
    )


def needs_cpu_process_group() -> bool:
    """Several launched processes and no accelerator device: they must form a gloo group on the CPU.

    Accelerate forms a CPU process group only with `cpu=True` (the Trainer path gets it from `--use_cpu`); without
    it, on a machine with no GPU, every process would run alone (`DistributedType.NO`): the training loop would train
    into the same folder twice, `scripts/evaluate.py` would evaluate the whole split in each process.
    """
    has_device = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not has_device


def evaluate_segmentation(
    model: SetrForSemanticSegmentation,
    image_processor,
    data,
    split: str = "validation",
    mode: str = "slide",
    accelerator=None,
    progress: bool = True,
    max_samples: int | None = None,
    num_workers: int = 0,
) -> dict[str, Any]:
    """
    mmseg-style mIoU of `model` on one split of `data` (a `SegmentationData`).

    Args:
        model: the model (or its `accelerate` or peft wrapper), on the device to evaluate on.
        image_processor: the model's processor; its `size` is the test scale.
        data: `SegmentationData`; its `decode` gives train-id labels at the original resolution.
        split: split name in `data.splits`.
        mode: `"whole"`, `"slide"` (SETR's single-scale protocol) or `"ms_flip"`.
        accelerator: an `accelerate.Accelerator`; each process then evaluates every `num_processes`-th image and
            the areas are summed across processes (every process returns the same result).
        progress: show a tqdm bar (on the local main process).
        max_samples: evaluate only the first `max_samples` images of the split.
        num_workers: `DataLoader` workers that decode and preprocess images.

    Returns:
        `summarize_areas(...)` (mIoU, mAcc, aAcc as fractions, per_class_iou, per_class_accuracy) plus
        `num_images` and `mode`.
    """
    check_mode(mode, "evaluation")
    _check_split(data, split)
    model = accelerator.unwrap_model(model) if accelerator is not None else model
    num_labels = data.num_labels
    # A binary model (one logit) predicts two classes, background and its own: it is scored on 2-class data.
    predicted = len(model.config.prediction_id2label)
    if predicted != num_labels:
        binary = " (a binary model: background and its class)" if model.config.is_binary else ""
        raise ValueError(
            f"the model predicts {predicted} classes{binary} but {data.source} ({data.dataset}) has {num_labels}"
        )
    dataset = SegmentationEvalDataset(
        data, image_processor, split, keep_images=mode == "ms_flip", max_samples=max_samples
    )
    num_processes, process_index = 1, 0
    if accelerator is not None:
        num_processes, process_index = accelerator.num_processes, accelerator.process_index
    shard = Subset(dataset, range(process_index, len(dataset), num_processes))
    loader = DataLoader(shard, batch_size=1, collate_fn=eval_collate, num_workers=num_workers)
    metric = MeanIoU(num_labels, id2label=data.id2label)
    show = progress and (accelerator is None or accelerator.is_local_main_process)
    num_images = 0
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(loader, desc=f"evaluating {split} ({mode})", disable=not show):
            ignore_index = getattr(data, "ignore_index", IGNORE_INDEX)
            areas = batch_areas(model, batch, mode, num_labels, image_processor, ignore_index=ignore_index)
            metric.update_areas(areas)
            num_images += len(batch["labels"])
    finally:
        model.train(was_training)

    totals = torch.cat([metric.total_areas().reshape(-1), torch.tensor([num_images])])
    if num_processes > 1:
        totals = accelerator.reduce(totals.to(accelerator.device), reduction="sum").cpu()
    summary = summarize_areas(totals[:-1].reshape(4, num_labels), id2label=data.id2label)
    summary.update(num_images=int(totals[-1]), mode=mode)
    return summary
