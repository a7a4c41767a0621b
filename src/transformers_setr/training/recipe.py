"""Training SETR with mmsegmentation's recipe, on the HF Trainer or a plain Accelerate loop.

The recipe (mmsegmentation's SETR configs, `setr-reference.md` §4.3): SGD with momentum 0.9 and no weight decay;
every parameter whose name contains `"head"` (the decode head and the auxiliary heads, not the encoder and not the MLA
neck) at 10× the base learning rate; poly decay with power 0.9 down to 1e-4, stepped every iteration, no warmup.
`PRESETS` gives each released model's dataset, decoder, crop, batch, iterations and base learning rate.

Augmentation randomness is a pure function of `(seed, epoch, sample index)` (`sample_seed`), not of a process-wide
random state. A sample therefore looks the same whichever process or data-loader worker reads it, so a run on N
processes sees exactly the batches of a single-process run with N× gradient accumulation, and a resumed run draws
the same augmentations as an uninterrupted one.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from .._imports import require
from ..conversion.presets import PRESETS, CheckpointPreset
from ..data.label_tables import DATASETS, id2label_for
from ..inference.predict import INFERENCE_MODES
from ..models.setr.configuration_setr import SetrConfig

require("accelerate", "SETR training")  # the Trainer needs it

HEAD_PARAMETER_KEY = "head"  # mmseg `paramwise_cfg=dict(custom_keys={'head': dict(lr_mult=10.)})`


def split_parameter_groups(
    model: nn.Module, learning_rate: float, head_lr_multiplier: float = 10.0
) -> list[dict[str, Any]]:
    """Two optimizer groups, mmseg's `custom_keys={'head': lr_mult}`: names containing "head" get the multiplier."""
    heads, others = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (heads if HEAD_PARAMETER_KEY in name else others).append(parameter)
    groups = [{"params": others, "lr": learning_rate, "name": "encoder"}]
    if heads:
        groups.append({"params": heads, "lr": learning_rate * head_lr_multiplier, "name": "heads"})
    return groups


def build_sgd_optimizer(
    model: nn.Module,
    learning_rate: float,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    head_lr_multiplier: float = 10.0,
) -> torch.optim.SGD:
    """mmseg's SETR optimizer: SGD(momentum 0.9, weight decay 0), heads at `head_lr_multiplier`× the base lr."""
    groups = split_parameter_groups(model, learning_rate, head_lr_multiplier)
    return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum, weight_decay=weight_decay)


def poly_learning_rate(base_lr: float, step: int, total_steps: int, power: float = 0.9, min_lr: float = 1e-4) -> float:
    """mmengine `PolyLR(power, eta_min=min_lr, end=total_steps)` at iteration `step` (0-based), closed form:
    `(base_lr - min_lr) * (1 - step / total_steps) ** power + min_lr`, held at `min_lr` after the end."""
    progress = min(step, total_steps) / total_steps
    return (base_lr - min_lr) * (1.0 - progress) ** power + min_lr


def build_poly_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, *, power: float = 0.9, min_lr: float = 1e-4
) -> LambdaLR:
    """Poly decay of every group from its own initial lr to the same absolute `min_lr` (as mmengine does)."""
    if total_steps <= 0:
        raise ValueError(f"the poly schedule needs a positive number of steps, got {total_steps}")

    def factor_for(base_lr: float) -> Callable[[int], float]:
        if base_lr == 0:  # a frozen group (learning rate 0) stays frozen; a multiplicative schedule cannot lift it
            return lambda step: 0.0
        return lambda step: poly_learning_rate(base_lr, step, total_steps, power, min_lr) / base_lr

    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return LambdaLR(optimizer, [factor_for(group["initial_lr"]) for group in optimizer.param_groups])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation: independent streams per (seed, epoch, index)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class SegmentationTrainDataset(Dataset):
    """One split of a `SegmentationData`, decoded and augmented: items are `{"pixel_values", "labels"}` tensors.

    `set_epoch` (called by the Trainer, Accelerate's data loader or the training loop) changes every sample's
    augmentation; within an epoch, item `i` is always the same.
    """

    def __init__(self, data, split: str, augmentation: Callable, seed: int = 0, max_samples: int | None = None):
        if split not in data.splits:
            raise ValueError(f"{data.source} has no split {split!r}; it has {sorted(data.splits)}")
        self.data = data
        self.rows = data.splits[split]
        if max_samples is not None:
            self.rows = self.rows.select(range(min(max_samples, len(self.rows))))
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        example = self.data.decode(self.rows[int(index)])
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, int(index)))
        pixel_values, labels = self.augmentation(example.image, example.labels, generator)
        return {"pixel_values": pixel_values, "labels": labels}


def train_collate(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack fixed-size (cropped and padded) training samples."""
    return {key: torch.stack([example[key] for example in examples]) for key in ("pixel_values", "labels")}


def config_for_preset(preset: CheckpointPreset, **overrides: Any) -> SetrConfig:
    """The `SetrConfig` of a released architecture (its dataset's classes and palette, crop, slide protocol), with
    `overrides` for anything else (e.g. a smaller encoder: `hidden_size`, `num_hidden_layers`, `out_indices`...)."""
    kwargs: dict[str, Any] = dict(
        decoder_type=preset.decoder_type,
        image_size=preset.crop_size,
        id2label=id2label_for(preset.dataset),
        palette=[list(colour) for colour in DATASETS[preset.dataset]["palette"]],
        auxiliary_num_convs=preset.auxiliary_num_convs,
        inference_mode="slide",
        slide_crop_size=preset.crop_size,
        slide_stride=preset.slide_stride,
    )
    kwargs.update(overrides)
    return SetrConfig(**kwargs)


def recipe_training_defaults(preset: CheckpointPreset) -> dict[str, Any]:
    """`TrainingArguments` defaults reproducing a released model's schedule (per device = total batch / GPUs)."""
    evaluation_interval = preset.iterations // 10  # mmseg: every 16k of 160k, every 8k of 80k
    return {
        "per_device_train_batch_size": preset.batch_size // preset.gpus,
        "max_steps": preset.iterations,
        "learning_rate": preset.learning_rate,
        "weight_decay": 0.0,
        "eval_steps": evaluation_interval,
        "save_steps": evaluation_interval,
    }


@dataclass
class SetrTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus mmseg's SETR optimizer, schedule and evaluation settings.

    `optim`, `lr_scheduler_type` and the warmup arguments are not used: the optimizer is always SGD with the head
    multiplier and the schedule always poly (`create_optimizer` / `create_scheduler` of `SetrTrainer`).
    """

    head_lr_multiplier: float = field(default=10.0, metadata={"help": "lr multiplier of parameters named *head*"})
    sgd_momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    poly_power: float = field(default=0.9, metadata={"help": "power of the poly learning-rate decay"})
    poly_min_lr: float = field(default=1e-4, metadata={"help": "learning rate reached at the last step"})
    eval_mode: str = field(
        default="slide",
        metadata={"help": f"evaluation inference: {', '.join(INFERENCE_MODES)}", "choices": list(INFERENCE_MODES)},
    )
    sync_batch_norm: bool = field(
        default=True, metadata={"help": "use SyncBatchNorm in the heads when training on several GPUs"}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "must stay False: the dataset's columns are decoded by the transform"}
    )
    batch_eval_metrics: bool = field(
        default=True, metadata={"help": "stream the evaluation: per-batch areas, summed, never all logits"}
    )
    per_device_eval_batch_size: int = field(
        default=1, metadata={"help": "evaluation images differ in size, so they go one at a time"}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "write over a non-empty output_dir (otherwise refused unless resuming)"},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.eval_mode not in ("whole", "slide", "ms_flip"):
            raise ValueError(f"eval_mode must be whole, slide or ms_flip, got {self.eval_mode!r}")


class _AugmentationEpochCallback(TrainerCallback):
    """Tells the training dataset which epoch is starting (also after a resume, where `state.epoch` is restored)."""

    def __init__(self, dataset: SegmentationTrainDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(math.floor(state.epoch + 1e-9) if state.epoch else 0)


def uses_sync_batch_norm(args: TrainingArguments) -> bool:
    """SyncBatchNorm needs a GPU (or XPU) device and more than one process."""
    return (
        bool(getattr(args, "sync_batch_norm", False)) and args.world_size > 1 and args.device.type in ("cuda", "xpu")
    )


def format_log_line(logs: dict[str, Any], state: Any) -> str:
    """One compact console line for a Trainer log: training loss and lr, the evaluation summary, or the run summary.

    Per-class values (`eval_IoU-<class>`, `eval_Acc-<class>`: 150 of them for ADE20K, most NaN) stay out of the
    console; they are in `trainer_state.json`, `eval_results.json` and the model card.
    """
    if "eval_mIoU" in logs:
        summary = "  ".join(f"{name} {100 * logs[f'eval_{name}']:.2f}%" for name in ("mIoU", "mAcc", "aAcc"))
        runtime = logs.get("eval_runtime")
        return f"eval  step {state.global_step}  {summary}" + (f"  ({runtime:.1f} s)" if runtime is not None else "")
    if "train_runtime" in logs:
        return (
            f"trained {state.global_step} steps in {logs['train_runtime']:.0f} s "
            f"({logs.get('train_samples_per_second', float('nan')):.2f} samples/s), "
            f"mean loss {logs.get('train_loss', float('nan')):.4f}"
        )
    shown = {
        key: value
        for key, value in logs.items()
        if key != "total_flos" and not key.startswith(("eval_IoU-", "eval_Acc-"))
    }
    parts = [f"step {state.global_step}/{state.max_steps}"]
    for key, value in shown.items():
        if key in ("epoch", "step"):
            continue
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return "  ".join(parts)


class CompactProgressCallback(ProgressCallback):
    """The Trainer's progress bars (rate and ETA), with one compact line per log instead of a dict."""

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description("train")

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        fresh = self.prediction_bar is None
        super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)
        if fresh and self.prediction_bar is not None:
            self.prediction_bar.set_description("eval")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        line = format_log_line(logs, state)
        if self.training_bar is not None:
            self.training_bar.write(line)
        else:  # evaluation after training: the stock callback prints nothing then
            print(line, flush=True)


class CompactPrinterCallback(PrinterCallback):
    """`disable_tqdm=True`: the same compact lines, without bars."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero and logs:
            print(format_log_line(logs, state), flush=True)


class SetrTrainer(Trainer):
    """`Trainer` with mmseg's SGD + poly recipe and SETR's evaluation protocol.

    Evaluation runs the configured inference (`eval_mode`: whole / slide / ms+flip), resizes the logits to the
    original ground-truth resolution and returns, per image, the (4, num_labels) areas of mmseg's `IoUMetric`
    instead of logits. The Trainer gathers these small fixed-size tensors across processes and `compute_metrics`
    (`metrics.trainer_compute_metrics`) sums them, so memory does not grow with the evaluation set.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Compact console lines: the stock callbacks print every log as a dict, per-class metrics included.
        compact_for = {ProgressCallback: CompactProgressCallback, PrinterCallback: CompactPrinterCallback}
        for callback in list(self.callback_handler.callbacks):
            if type(callback) in compact_for:  # exactly the stock ones, not a user's subclass
                self.remove_callback(callback)
                self.add_callback(compact_for[type(callback)])
        if isinstance(self.train_dataset, SegmentationTrainDataset):
            self.add_callback(_AugmentationEpochCallback(self.train_dataset))

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            self.optimizer = build_sgd_optimizer(
                self.model if model is None else model,
                self.args.learning_rate,
                momentum=getattr(self.args, "sgd_momentum", 0.9),
                weight_decay=self.args.weight_decay,
                head_lr_multiplier=getattr(self.args, "head_lr_multiplier", 10.0),
            )
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is None:
            self.lr_scheduler = build_poly_scheduler(
                optimizer if optimizer is not None else self.optimizer,
                num_training_steps,
                power=getattr(self.args, "poly_power", 0.9),
                min_lr=getattr(self.args, "poly_min_lr", 1e-4),
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        from ..evaluation.protocol import batch_areas

        if prediction_loss_only:
            return None, None, None
        unwrapped = self.accelerator.unwrap_model(model)
        areas = batch_areas(
            unwrapped,
            inputs,
            getattr(self.args, "eval_mode", "slide"),
            len(unwrapped.config.prediction_id2label),  # a binary model: 2 classes
            image_processor=self.processing_class,
            ignore_index=unwrapped.config.semantic_loss_ignore_index,
        )
        # The Trainer only calls compute_metrics when labels are not None; the areas already hold the ground truth.
        return None, areas, torch.zeros(areas.shape[0], device=areas.device)


__all__ = [
    "PRESETS",
    "CompactPrinterCallback",
    "CompactProgressCallback",
    "SegmentationTrainDataset",
    "SetrTrainer",
    "SetrTrainingArguments",
    "build_poly_scheduler",
    "build_sgd_optimizer",
    "config_for_preset",
    "format_log_line",
    "poly_learning_rate",
    "recipe_training_defaults",
    "sample_seed",
    "split_parameter_groups",
    "train_collate",
    "uses_sync_batch_norm",
]
