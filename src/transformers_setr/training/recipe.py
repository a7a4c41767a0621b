"""Training SETR with mmsegmentation's recipe, on the HF Trainer or a plain Accelerate loop.

The recipe (mmsegmentation's SETR configs, `setr-reference.md` §4.3): SGD with momentum 0.9 and no weight decay;
every parameter whose name contains `"head"` (the decode head and the auxiliary heads, not the encoder and not the MLA
neck) at 10× the base learning rate; poly decay with power 0.9 down to 1e-4, stepped every iteration, no warmup.
That is the default; `RecipeArguments` (both commands) names another optimizer (AdamW), schedule
(`transformers.get_scheduler`'s), a warmup, and BEiT / MAE's layer-wise lr decay, each used or refused. `PRESETS` gives each released model's dataset, decoder, crop, batch, iterations and base learning rate.

Augmentation randomness is a pure function of `(seed, epoch, sample index)` (`sample_seed`), not of a process-wide
random state. A sample therefore looks the same whichever process or data-loader worker reads it, so a run on N
processes sees exactly the batches of a single-process run with N× gradient accumulation, and a resumed run draws
the same augmentations as an uninterrupted one.
"""

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments, get_scheduler
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from .._imports import require
from ..data.label_tables import DATASETS, id2label_for
from ..inference.predict import INFERENCE_MODES
from ..models.setr.configuration_setr import SetrConfig
from ..presets import PRESETS, CheckpointPreset

require("accelerate", "SETR training")  # the Trainer needs it

HEAD_PARAMETER_KEY = "head"  # mmseg `paramwise_cfg=dict(custom_keys={'head': dict(lr_mult=10.)})`

# The optimizers SETR builds itself (its parameter groups: head multiplier, layer decay, no decay on biases, norms and
# position / cls embeddings); `--optim` names them as transformers' `OptimizerNames` does.
OPTIMIZERS = ("sgd", "adamw_torch", "adamw_torch_fused")
# "poly" is mmseg's PolyLR (each group to the same absolute floor); the others are `transformers.get_scheduler`'s
# LambdaLR schedules, applied to every parameter group as a factor of its own learning rate.
POLY_SCHEDULE = "poly"
SCHEDULES = (
    POLY_SCHEDULE,
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)
WARMUP_START_FACTOR = 1e-6  # mmseg's warmup: `LinearLR(start_factor=1e-6, by_epoch=False, begin=0, end=warmup)`
# BEiT / MAE's layer ids, per encoder family (`encoder_family`): the parameter names of its embeddings (layer 0:
# patch embedding, position table, cls / register / mask tokens) and of its layer i (layer i + 1), as they appear in
# a SETR model (`setr.*` built-in, `backbone.*` through transformers' backbone API). Everything else (a final norm, the
# MLA neck, the heads) is layer L + 1, at the base learning rate.
ENCODER_LAYER_PATTERNS: dict[str, tuple[str, str]] = {
    "setr": (r"setr\.embeddings\.", r"setr\.layers\.(\d+)\."),
    "dinov2": (r"backbone\.embeddings\.", r"backbone\.encoder\.layer\.(\d+)\."),
    "dinov2_with_registers": (r"backbone\.embeddings\.", r"backbone\.encoder\.layer\.(\d+)\."),
    "dinov3_vit": (r"backbone\.embeddings\.", r"backbone\.model\.layer\.(\d+)\."),
    "beit": (r"backbone\.beit\.embeddings\.", r"backbone\.beit\.layers\.(\d+)\."),
    # timm ViTs (`TimmBackbone`): timm's own `group_matcher` stem and blocks
    "timm_backbone": (
        r"backbone\._backbone\.model\.(?:cls_token|reg_token|pos_embed|patch_embed)\b",
        r"backbone\._backbone\.model\.blocks\.(\d+)\.",
    ),
}
_LAYER_PATTERNS = {
    family: (re.compile(rf"(?:^|\.){embeddings}"), re.compile(rf"(?:^|\.){layer}"))
    for family, (embeddings, layer) in ENCODER_LAYER_PATTERNS.items()
}
_NO_WEIGHT_DECAY = re.compile(
    r"(?:^|\.)(?:position_embeddings|cls_token|register_tokens|mask_token|pos_embed|reg_token|relative_position_bias_table)$"
)


def encoder_family(config: Any) -> str:
    """The key of `ENCODER_LAYER_PATTERNS` for a model's config: "setr" (built-in) or the backbone's model type."""
    backbone_config = getattr(config, "backbone_config", None)
    return "setr" if backbone_config is None else backbone_config.model_type


def encoder_layer_id(name: str, num_layers: int, family: str = "setr") -> int:
    """BEiT / MAE's layer id of a parameter: 0 for the embeddings, i + 1 for encoder layer i, num_layers + 1 for the
    rest (a final norm, MLA neck, decode and auxiliary heads). Also for a LoRA-wrapped model
    (`base_model.model.setr...`). `family`: `encoder_family(config)`."""
    embeddings, layer = _LAYER_PATTERNS[family]
    if embeddings.search(name):
        return 0
    match = layer.search(name)
    return int(match.group(1)) + 1 if match else num_layers + 1


def uses_weight_decay(name: str, parameter: torch.Tensor) -> bool:
    """Weight decay except on biases, norm weights (every 1-d parameter) and the position / cls embeddings (BEiT,
    MAE, and transformers' own exclusion of biases and LayerNorm)."""
    return parameter.ndim > 1 and not _NO_WEIGHT_DECAY.search(name)


def parameter_groups(
    model: nn.Module,
    learning_rate: float,
    *,
    head_lr_multiplier: float = 10.0,
    weight_decay: float = 0.0,
    layer_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Optimizer groups of the trainable parameters.

    - "head" in the name (decode and auxiliary heads, mmseg's `custom_keys`): `head_lr_multiplier`× the lr;
    - `layer_decay` (BEiT / MAE): the embeddings at decay^(L+1), encoder layer i at decay^(L-i), neck and heads 1;
    - `weight_decay` on every parameter but biases, norms and position / cls embeddings.
    Each group records `lr_scale` (its lr / `learning_rate`) and `layer_scale` (the layer decay part alone). Without
    layer decay and weight decay: mmseg's two groups, "encoder" (encoder and MLA neck) and "heads".
    """
    config = getattr(model, "config", None)
    num_layers, family = getattr(config, "num_hidden_layers", 0), encoder_family(config)
    groups: dict[tuple, dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_head = HEAD_PARAMETER_KEY in name
        layer_scale, part = 1.0, "heads" if is_head else "encoder"
        if layer_decay is not None:
            layer_id = encoder_layer_id(name, num_layers, family)
            layer_scale = layer_decay ** (num_layers + 1 - layer_id)
            if not is_head:
                part = "embeddings" if layer_id == 0 else "neck" if layer_id > num_layers else f"layer_{layer_id - 1}"
        decay = weight_decay if weight_decay and uses_weight_decay(name, parameter) else 0.0
        key = (part, decay)
        if key not in groups:
            lr_scale = layer_scale * (head_lr_multiplier if is_head else 1.0)
            groups[key] = {
                "params": [],
                "lr": learning_rate * lr_scale,
                "weight_decay": decay,
                "name": part if decay or not weight_decay else f"{part}_no_decay",
                "lr_scale": lr_scale,
                "layer_scale": layer_scale,
            }
        groups[key]["params"].append(parameter)
    # mmseg's order: the encoder side first, then the heads
    return sorted(groups.values(), key=lambda group: group["name"].startswith("heads"))


def split_parameter_groups(
    model: nn.Module, learning_rate: float, head_lr_multiplier: float = 10.0
) -> list[dict[str, Any]]:
    """Two optimizer groups, mmseg's `custom_keys={'head': lr_mult}`: names containing "head" get the multiplier."""
    return parameter_groups(model, learning_rate, head_lr_multiplier=head_lr_multiplier)


def build_optimizer(
    model: nn.Module,
    name: str = "sgd",
    learning_rate: float = 0.001,
    *,
    weight_decay: float = 0.0,
    head_lr_multiplier: float = 10.0,
    layer_decay: float | None = None,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """The optimizer `name` (one of `OPTIMIZERS`) over `parameter_groups`: SGD with `momentum`, or AdamW with
    `betas` and `eps` (`adamw_torch_fused`: torch's fused kernel)."""
    groups = parameter_groups(
        model, learning_rate, head_lr_multiplier=head_lr_multiplier, weight_decay=weight_decay, layer_decay=layer_decay
    )
    if name == "sgd":
        # Not torch's fused SGD (~2x faster on CPU, an update equal up to float32 rounding): with it, the loop resumed
        # from a checkpoint no longer repeats its losses within 1e-5 (tests/training/test_training.py, issue 25).
        return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum, weight_decay=0.0)
    if name in ("adamw_torch", "adamw_torch_fused"):
        fused = True if name == "adamw_torch_fused" else None
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, weight_decay=0.0, fused=fused)
    raise ValueError(f"--optim {name} is not supported; choose one of {', '.join(OPTIMIZERS)}")


def build_sgd_optimizer(
    model: nn.Module,
    learning_rate: float,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    head_lr_multiplier: float = 10.0,
) -> torch.optim.Optimizer:
    """mmseg's SETR optimizer: SGD(momentum 0.9, weight decay 0), heads at `head_lr_multiplier`× the base lr."""
    return build_optimizer(
        model,
        "sgd",
        learning_rate,
        momentum=momentum,
        weight_decay=weight_decay,
        head_lr_multiplier=head_lr_multiplier,
    )


def optimizer_from_arguments(model: nn.Module, args: Any) -> torch.optim.Optimizer:
    """`build_optimizer` with the options of either training command (`RecipeArguments` and the learning rate)."""
    return build_optimizer(
        model,
        str(getattr(args.optim, "value", args.optim)),
        args.learning_rate,
        weight_decay=args.weight_decay,
        head_lr_multiplier=args.head_lr_multiplier,
        layer_decay=args.layer_decay,
        momentum=args.sgd_momentum,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
    )


def poly_learning_rate(base_lr: float, step: int, total_steps: int, power: float = 0.9, min_lr: float = 1e-4) -> float:
    """mmengine `PolyLR(power, eta_min=min_lr, end=total_steps)` at iteration `step` (0-based), closed form:
    `(base_lr - min_lr) * (1 - step / total_steps) ** power + min_lr`, held at `min_lr` after the end."""
    progress = min(step, total_steps) / total_steps
    return (base_lr - min_lr) * (1.0 - progress) ** power + min_lr


def warmup_poly_learning_rate(
    base_lr: float, step: int, total_steps: int, warmup_steps: int = 0, power: float = 0.9, min_lr: float = 1e-4
) -> float:
    """mmseg's `[LinearLR(start_factor=1e-6, end=warmup_steps), PolyLR(begin=warmup_steps, end=total_steps)]`:
    linear from 1e-6 × `base_lr` to `base_lr` over the warmup, then poly down to `min_lr` at `total_steps`."""
    if step < warmup_steps:
        return base_lr * (WARMUP_START_FACTOR + (1.0 - WARMUP_START_FACTOR) * step / warmup_steps)
    return poly_learning_rate(base_lr, step - warmup_steps, total_steps - warmup_steps, power, min_lr)


def build_poly_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    *,
    power: float = 0.9,
    min_lr: float = 1e-4,
    warmup_steps: int = 0,
) -> LambdaLR:
    """Poly decay of every group from its own initial lr to the same absolute `min_lr` (as mmengine does; with layer
    decay, `min_lr` times the group's `layer_scale`, as BEiT scales its floor), after an optional linear warmup."""
    if total_steps <= 0:
        raise ValueError(f"the poly schedule needs a positive number of steps, got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"the warmup ({warmup_steps} steps) must end before the last step ({total_steps})")

    def factor_for(group: dict[str, Any]) -> Callable[[int], float]:
        base_lr = group["initial_lr"]
        if base_lr == 0:  # a frozen group (learning rate 0) stays frozen; a multiplicative schedule cannot lift it
            return lambda step: 0.0
        floor = min_lr * group.get("layer_scale", 1.0)
        return lambda step: warmup_poly_learning_rate(base_lr, step, total_steps, warmup_steps, power, floor) / base_lr

    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return LambdaLR(optimizer, [factor_for(group) for group in optimizer.param_groups])


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    scheduler_kwargs: dict[str, Any] | None = None,
    poly_power: float = 0.9,
    poly_min_lr: float = 1e-4,
) -> LambdaLR:
    """The schedule `name` (one of `SCHEDULES`), stepped once per optimizer step: "poly" is `build_poly_scheduler`,
    the others `transformers.get_scheduler` with `warmup_steps` and `scheduler_kwargs`."""
    if name == POLY_SCHEDULE:
        if scheduler_kwargs:
            raise ValueError("the poly schedule takes --poly_power and --poly_min_lr, not --lr_scheduler_kwargs")
        return build_poly_scheduler(
            optimizer, total_steps, power=poly_power, min_lr=poly_min_lr, warmup_steps=warmup_steps
        )
    if name not in SCHEDULES:
        raise ValueError(f"--lr_scheduler_type {name} is not supported; choose one of {', '.join(SCHEDULES)}")
    if name == "constant" and warmup_steps:
        raise ValueError("the constant schedule has no warmup: use --lr_scheduler_type constant_with_warmup")
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=warmup_steps,
        num_training_steps=total_steps,
        scheduler_specific_kwargs=dict(scheduler_kwargs or {}),
    )


def warmup_steps_for(warmup_steps: float, total_steps: int) -> int:
    """`--warmup_steps` as transformers reads it: a number of steps, or below 1 a fraction of `total_steps`."""
    return int(warmup_steps) if warmup_steps >= 1 else math.ceil(total_steps * warmup_steps)


def scheduler_from_arguments(optimizer: torch.optim.Optimizer, args: Any, total_steps: int) -> LambdaLR:
    """`build_scheduler` with the options of either training command."""
    return build_scheduler(
        optimizer,
        str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        total_steps,
        warmup_steps=warmup_steps_for(args.warmup_steps, total_steps),
        scheduler_kwargs=args.lr_scheduler_kwargs,
        poly_power=args.poly_power,
        poly_min_lr=args.poly_min_lr,
    )


def _short_number(value: float) -> str:
    """1e-4 rather than 0.0001 for small round values, as mmseg's configs write them."""
    short = f"{value:.0e}".replace("e-0", "e-")
    return short if 0 < value < 1e-3 and float(short) == value else f"{value:g}"


def describe_optimization(args: Any) -> str:
    """The optimizer, schedule and trained parameters of a run, in words, for the model card."""
    optim = str(_option_value(args.optim))
    schedule = str(_option_value(args.lr_scheduler_type))
    if optim == "sgd":
        parts = [
            f"SGD (momentum {args.sgd_momentum}, "
            + (f"weight decay {args.weight_decay})" if args.weight_decay else "no weight decay)")
        ]
    else:
        parts = [
            f"AdamW (betas {args.adam_beta1}/{args.adam_beta2}, weight decay {args.weight_decay}, none on biases, "
            "norms and position / cls embeddings)"
        ]
    parts.append(f"decode and auxiliary heads at {args.head_lr_multiplier:g}× the base learning rate")
    if args.layer_decay is not None:
        parts.append(f"layer-wise learning-rate decay {args.layer_decay}")
    warmup = (
        f"linear warm-up ({args.warmup_steps:g} {'steps' if args.warmup_steps >= 1 else 'of the steps'}), then "
        if args.warmup_steps
        else ""
    )
    if schedule == POLY_SCHEDULE:
        parts.append(f"{warmup}poly decay (power {args.poly_power:g}) to {_short_number(args.poly_min_lr)}")
    else:
        kwargs = f" {json.dumps(args.lr_scheduler_kwargs)}" if args.lr_scheduler_kwargs else ""
        parts.append(f"{warmup}{schedule} schedule{kwargs}")
    if args.freeze_encoder:
        parts.append("encoder frozen (neck and heads trained)")
    if args.lora_rank:
        parts.append(
            f"LoRA rank {args.lora_rank} (alpha {args.lora_alpha:g}) on the encoder's projections, merged into the "
            "saved weights"
        )
    return ", ".join(parts)


# The DataLoader workers a training process needs (issue 25; `benchmarks/bench_augmentation.py`, RESULTS.md): the
# images/s one GPU trains at over the images/s one CPU core augments (files decoded to the collated batch).
AUGMENTATION_IMAGES_PER_CORE = 14.4  # Cityscapes-sized 2048x1024 PNGs, the slower dataset (ADE-sized JPEGs: 99),
# measured on an idle machine of the CI kind (Intel Xeon, one thread), RESULTS.md
GPU_TRAINING_IMAGES_PER_SECOND = 40.0  # ViT-L SETR on one H100 in bf16 (issue 25: tens of images/s)


def default_dataloader_workers(cpu_count: int | None = None, gpus: int | None = None) -> int:
    """`dataloader_num_workers` when not given: 0 without a GPU (a CPU step takes seconds, the augmentation ~1 % of
    it in the main process, and a worker would take a core from the step); with GPUs, per training process (one per
    GPU), ceil(GPU_TRAINING_IMAGES_PER_SECOND / AUGMENTATION_IMAGES_PER_CORE) = 3, at most the process's share of the
    cores less one for the process itself, at least 1."""
    gpus = torch.cuda.device_count() if gpus is None else gpus
    if gpus == 0:
        return 0
    needed = math.ceil(GPU_TRAINING_IMAGES_PER_SECOND / AUGMENTATION_IMAGES_PER_CORE)
    cores_per_process = (cpu_count or os.cpu_count() or 1) // gpus
    return max(1, min(needed, cores_per_process - 1))


def _option(default: Any, help: str, **metadata: Any) -> Any:
    """A command-line option of `HfArgumentParser`: a dataclass field with its default, help and other metadata
    (`choices`)."""
    return field(default=default, metadata={"help": help, **metadata})


def _training_argument(name: str, **changes: Any) -> Any:
    """A field of `TrainingArguments` (its default and help), for the options both training commands share."""
    original = TrainingArguments.__dataclass_fields__[name]
    metadata = {**original.metadata, **changes.pop("metadata", {})}
    return field(default=changes.pop("default", original.default), metadata=metadata)


@dataclass
class RecipeArguments:
    """The optimizer, schedule, layer decay, freezing and LoRA options of both training commands (`setr train`
    inherits the rest from `TrainingArguments`; `setr train-loop` from `LoopArguments`). The defaults are mmseg's
    SETR recipe; every option named is used or refused (`check_recipe_arguments`)."""

    optim: str = _training_argument(
        "optim",
        default="sgd",
        metadata={
            "help": "optimizer: sgd (SETR's, momentum --sgd_momentum), adamw_torch, adamw_torch_fused "
            "(--adam_beta1/2, --adam_epsilon); heads at --head_lr_multiplier x, no weight decay on biases, norms and "
            "position / cls embeddings",
            "choices": list(OPTIMIZERS),
        },
    )
    lr_scheduler_type: str = _training_argument(
        "lr_scheduler_type",
        default=POLY_SCHEDULE,
        metadata={
            "help": "learning-rate schedule, per iteration: poly (mmseg's PolyLR, --poly_power, --poly_min_lr) or "
            "one of transformers' get_scheduler schedules (--lr_scheduler_kwargs)",
            "choices": list(SCHEDULES),
        },
    )
    lr_scheduler_kwargs: dict | str | None = _training_argument("lr_scheduler_kwargs")
    warmup_steps: float = _training_argument(
        "warmup_steps",
        metadata={
            "help": "linear warmup: a number of steps, or below 1 a fraction of max_steps (with poly, mmseg's "
            "LinearLR from 1e-6 x the lr)"
        },
    )
    adam_beta1: float = _training_argument("adam_beta1")
    adam_beta2: float = _training_argument("adam_beta2")
    adam_epsilon: float = _training_argument("adam_epsilon")
    head_lr_multiplier: float = _option(10.0, "lr multiplier of parameters named *head*")
    sgd_momentum: float = _option(0.9, "SGD momentum")
    poly_power: float = _option(0.9, "power of the poly learning-rate decay")
    poly_min_lr: float = _option(1e-4, "learning rate reached at the last step")
    layer_decay: float | None = _option(
        None,
        "layer-wise lr decay in (0, 1] (BEiT / MAE): encoder layer i at decay^(L-i), the embeddings at decay^(L+1), "
        "neck and heads 1",
    )
    freeze_encoder: bool = _option(False, "train only the MLA neck and the heads (encoder requires_grad False)")
    lora_rank: int = _option(
        0,
        "LoRA (peft) of this rank on the encoder's attention and MLP projections; neck and heads trained fully; 0: off",
    )
    lora_alpha: float = _option(16.0, "LoRA scaling numerator (scale = alpha / rank)")
    lora_dropout: float = _option(0.0, "dropout on the LoRA input")


RECIPE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RecipeArguments)}
_ADAMW_OPTIONS = ("adam_beta1", "adam_beta2", "adam_epsilon")


def _option_value(value: Any) -> Any:
    return getattr(value, "value", value)


def _are(options: list[str]) -> str:
    return f"{' and '.join(options)} {'is' if len(options) == 1 else 'are'}"


def check_recipe_arguments(args: Any) -> None:
    """Refuse (ValueError, one line naming the options) what would be ignored, contradictory or meaningless; parse
    `lr_scheduler_kwargs` given as JSON text."""
    optim = str(_option_value(args.optim))
    schedule = str(_option_value(args.lr_scheduler_type))
    if optim not in OPTIMIZERS:
        raise ValueError(f"--optim {optim} is not supported; choose one of {', '.join(OPTIMIZERS)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"--lr_scheduler_type {schedule} is not supported; choose one of {', '.join(SCHEDULES)}")
    if not args.learning_rate > 0:
        raise ValueError(f"--learning_rate must be positive, got {args.learning_rate}")
    if args.per_device_train_batch_size < 1:
        raise ValueError(f"--per_device_train_batch_size must be at least 1, got {args.per_device_train_batch_size}")
    if args.gradient_accumulation_steps < 1:
        raise ValueError(f"--gradient_accumulation_steps must be at least 1, got {args.gradient_accumulation_steps}")
    if args.weight_decay < 0:
        raise ValueError(f"--weight_decay must not be negative, got {args.weight_decay}")
    if args.head_lr_multiplier < 0:
        raise ValueError(f"--head_lr_multiplier must not be negative, got {args.head_lr_multiplier}")
    if args.warmup_steps < 0:
        raise ValueError(f"--warmup_steps must not be negative, got {args.warmup_steps}")
    if args.layer_decay is not None and not 0 < args.layer_decay <= 1:
        raise ValueError(f"--layer_decay must be in (0, 1], got {args.layer_decay}")
    if optim != "sgd" and args.sgd_momentum != RECIPE_DEFAULTS["sgd_momentum"]:
        raise ValueError(f"--sgd_momentum is for --optim sgd, not {optim}")
    if optim == "sgd":
        given = [f"--{name}" for name in _ADAMW_OPTIONS if getattr(args, name) != RECIPE_DEFAULTS[name]]
        if given:
            raise ValueError(f"{_are(given)} for AdamW; the optimizer is sgd (pass --optim adamw_torch)")
    if getattr(args, "optim_args", None):
        raise ValueError(
            "--optim_args is not used by SETR's optimizers; use --sgd_momentum, --adam_beta1, --adam_beta2, "
            "--adam_epsilon, --weight_decay"
        )
    if isinstance(args.lr_scheduler_kwargs, str):
        try:
            args.lr_scheduler_kwargs = json.loads(args.lr_scheduler_kwargs) if args.lr_scheduler_kwargs else {}
        except json.JSONDecodeError as error:
            raise ValueError(f"--lr_scheduler_kwargs is not a JSON object: {error}") from None
    if args.lr_scheduler_kwargs is not None and not isinstance(args.lr_scheduler_kwargs, dict):
        raise ValueError(f"--lr_scheduler_kwargs must be a JSON object, got {args.lr_scheduler_kwargs!r}")
    if schedule == POLY_SCHEDULE:
        if args.learning_rate < args.poly_min_lr:
            raise ValueError(
                f"--learning_rate {args.learning_rate} is below --poly_min_lr {args.poly_min_lr}, where the poly "
                "schedule ends: the learning rate would rise; pass a smaller --poly_min_lr (e.g. 0)"
            )
    else:
        given = [f"--{name}" for name in ("poly_power", "poly_min_lr") if getattr(args, name) != RECIPE_DEFAULTS[name]]
        if given:
            raise ValueError(f"{_are(given)} for --lr_scheduler_type poly, not {schedule}")
    if args.max_steps > 0:  # the schedule and its keyword arguments, tried on a stand-in optimizer
        stand_in = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
        try:
            scheduler_from_arguments(stand_in, args, args.max_steps)
        except (TypeError, ValueError) as error:
            raise ValueError(f"--lr_scheduler_type {schedule}: {error}") from None
    if args.freeze_encoder and args.lora_rank:
        raise ValueError("--freeze_encoder and --lora_rank contradict: LoRA already freezes the encoder's weights")
    if args.freeze_encoder and args.layer_decay is not None:
        raise ValueError("--layer_decay scales the encoder's layers, which --freeze_encoder freezes")
    if args.lora_rank < 0:
        raise ValueError(f"--lora_rank must not be negative, got {args.lora_rank}")
    if not 0 <= args.lora_dropout < 1:
        raise ValueError(f"--lora_dropout must be in [0, 1), got {args.lora_dropout}")
    if not args.lora_rank:
        given = [
            f"--{name}" for name in ("lora_alpha", "lora_dropout") if getattr(args, name) != RECIPE_DEFAULTS[name]
        ]
        if given:
            raise ValueError(f"{' and '.join(given)} need --lora_rank (LoRA is off)")


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
        preset.architecture,
        id2label=id2label_for(preset.dataset),
        palette=[list(colour) for colour in DATASETS[preset.dataset]["palette"]],
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
class SetrTrainingArguments(RecipeArguments, TrainingArguments):
    """`TrainingArguments` plus SETR's recipe options (`RecipeArguments`: optimizer, schedule, warmup, layer decay,
    frozen encoder, LoRA) and evaluation settings. The defaults are mmseg's SETR recipe (`optim="sgd"`,
    `lr_scheduler_type="poly"`); `create_optimizer` / `create_scheduler` of `SetrTrainer` build what they name.
    """

    learning_rate: float = _option(0.001, "base learning rate (encoder; the heads at --head_lr_multiplier x)")
    eval_mode: str = _option(
        "slide", f"evaluation inference: {', '.join(INFERENCE_MODES)}", choices=list(INFERENCE_MODES)
    )
    sync_batch_norm: bool = _option(True, "use SyncBatchNorm in the heads when training on several GPUs")
    remove_unused_columns: bool = _option(False, "must stay False: the dataset's columns are decoded by the transform")
    batch_eval_metrics: bool = _option(True, "stream the evaluation: per-batch areas, summed, never all logits")
    per_device_eval_batch_size: int = _option(1, "evaluation images differ in size, so they go one at a time")
    dataloader_num_workers: int = field(
        default_factory=default_dataloader_workers,
        metadata={"help": "DataLoader workers augmenting the training images (default: default_dataloader_workers)"},
    )
    overwrite_output_dir: bool = _option(
        False, "write over a non-empty output_dir (otherwise refused unless resuming)"
    )

    def __post_init__(self):
        # `TrainingArguments` knows only transformers' schedule names; "poly" (mmseg's) is SETR's own.
        schedule = _option_value(self.lr_scheduler_type)
        if schedule == POLY_SCHEDULE:
            self.lr_scheduler_type = "constant"
        super().__post_init__()
        if schedule == POLY_SCHEDULE:
            self.lr_scheduler_type = POLY_SCHEDULE
        if self.eval_mode not in ("whole", "slide", "ms_flip"):
            raise ValueError(f"eval_mode must be whole, slide or ms_flip, got {self.eval_mode!r}")
        if self.remove_unused_columns:
            raise ValueError(
                "--remove_unused_columns must stay false: SETR's datasets decode their own columns, and evaluation "
                "needs the items' extra keys"
            )
        check_recipe_arguments(self)


class AugmentationEpochCallback(TrainerCallback):
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
    """`Trainer` with SETR's optimizer and schedule (mmseg's SGD + poly by default, `RecipeArguments`) and SETR's
    evaluation protocol.

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
            self.add_callback(AugmentationEpochCallback(self.train_dataset))

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        """A stream already split by rank (`--streaming`) gets a loader Accelerate does not split again."""
        from .streaming import StreamingTrainDataset, prepare_rank_stream_loader

        if not isinstance(self.train_dataset, StreamingTrainDataset):
            return super().get_train_dataloader()
        loader = torch.utils.data.DataLoader(
            self.train_dataset,
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return prepare_rank_stream_loader(self.accelerator, loader)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            model = self.model if model is None else model
            assert model is not None, "Trainer builds its model (or model_init's) before the optimizer"
            self.optimizer = optimizer_from_arguments(model, self.args)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is None:
            optimizer = self.optimizer if optimizer is None else optimizer
            assert optimizer is not None, "Trainer creates the optimizer before the scheduler"
            self.lr_scheduler = scheduler_from_arguments(optimizer, self.args, num_training_steps)
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
    "OPTIMIZERS",
    "PRESETS",
    "SCHEDULES",
    "RecipeArguments",
    "CompactPrinterCallback",
    "CompactProgressCallback",
    "SegmentationTrainDataset",
    "SetrTrainer",
    "SetrTrainingArguments",
    "build_optimizer",
    "build_poly_scheduler",
    "default_dataloader_workers",
    "build_scheduler",
    "check_recipe_arguments",
    "describe_optimization",
    "ENCODER_LAYER_PATTERNS",
    "encoder_family",
    "encoder_layer_id",
    "optimizer_from_arguments",
    "warmup_poly_learning_rate",
    "parameter_groups",
    "scheduler_from_arguments",
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
