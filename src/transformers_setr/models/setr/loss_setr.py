# Copyright 2026 The transformers-setr developers.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""The losses that `SetrConfig.loss` and `SetrConfig.loss_sampler` name, defined as mmsegmentation 1.2.2 defines them
(`mmseg/models/losses/`, `OHEMPixelSampler`, `BaseDecodeHead.loss_by_feat`); `tests/models/test_losses.py` compares them with
mmseg's own functions (fixtures from `scripts/make_loss_fixtures.py`).

Each head's loss (`head_loss`): the logits resized bilinearly to the labels, OHEM's per-pixel weights when a sampler
is set (computed on those logits, without gradient), then the sum of `weight * term` over the configured terms.
Where mmseg 1.2.2 fails or has no definition, the rule chosen here is said next to it:

- `cross_entropy` with `class_weight`: mmseg averages by the sum of the pixels' class weights and fails on ignored
  pixels (it indexes the weights with the ignore label); here ignored pixels weigh 0 in that sum, which is mmseg's
  value wherever it runs and PyTorch's weighted mean. `avg_non_ignore` then changes nothing.
- `focal`: mmseg's CPU branch fails on label maps; this is the CUDA branch's definition (one-hot targets, ignored
  pixels masked, mean over pixels x classes), computed as mmseg's `py_sigmoid_focal_loss`.
- `dice` with one channel (binary): the target is the foreground (label 1); mmseg's one-hot would target label 0.
- OHEM with `thresh` on a binary model: the probability of the labelled class is sigmoid(logit) for label 1 and
  1 - sigmoid(logit) for label 0 (mmseg's softmax over one channel is always 1).

This file is shipped next to the weights for `trust_remote_code` users: it imports only torch.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F

# What each loss type accepts besides `type` and `weight` (mmseg's `loss_weight`), and its defaults (mmseg's).
LOSS_OPTIONS: dict[str, dict[str, object]] = {
    "cross_entropy": {"class_weight": None, "avg_non_ignore": False},
    "binary_cross_entropy": {"class_weight": None, "avg_non_ignore": False},
    "dice": {"use_sigmoid": True, "naive_dice": False, "eps": 1e-3},
    "focal": {"gamma": 2.0, "alpha": 0.5, "class_weight": None},
}
SAMPLER_OPTIONS: dict[str, dict[str, object]] = {"ohem": {"thresh": None, "min_kept": 100000}}
# Losses that take OHEM's per-pixel weights (mmseg's Dice and focal assert on them).
PIXEL_WEIGHTED_LOSSES = ("cross_entropy", "binary_cross_entropy")

# mmseg's `weight_reduce_loss` divides by `avg_factor + eps` (float32's eps) so that an all-ignored batch gives 0.
_AVG_FACTOR_EPS = torch.finfo(torch.float32).eps


def default_loss_terms(num_labels: int) -> list[dict]:
    """`loss=None`: cross-entropy (mmseg's SETR configs), or for a binary model BCE (SegFormer's `num_labels=1`)."""
    return [{"type": "binary_cross_entropy" if num_labels == 1 else "cross_entropy"}]


def resize_to_labels(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mmseg's resize of a head's logits to the labels (bilinear, align_corners=False), in channels-last memory: the
    CPU bilinear kernels vectorise over the contiguous channels (forward + backward of 150 classes to 512x512: ~2.5x
    the NCHW kernels, benchmarks/RESULTS.md), and `pixel_cross_entropy` then reads the classes without a copy."""
    if tuple(logits.shape[-2:]) == tuple(labels.shape[-2:]):  # the identity: skip its copy
        return logits
    logits = logits.contiguous(memory_format=torch.channels_last)
    return F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)


def pixel_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """`F.cross_entropy(logits, labels, reduction="none")` of (N, C, H, W) logits. Channels-last logits (those that
    `resize_to_labels` resized) are read with the classes as the last axis, a view whose log-softmax is contiguous:
    ~2.5x the NCHW kernel, which strides over H x W. NCHW logits stay as they are (a transposing copy of a 150-class
    512x512 map costs about what it saves). The same numbers to float32 rounding."""
    if logits.dim() != 4 or not logits.is_contiguous(memory_format=torch.channels_last) or logits.is_contiguous():
        return F.cross_entropy(logits, labels, weight=weight, reduction="none", ignore_index=ignore_index)
    rows = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])  # a view
    loss = F.cross_entropy(rows, labels.reshape(-1), weight=weight, reduction="none", ignore_index=ignore_index)
    return loss.view(labels.shape)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _class_weight_errors(where: str, value: object, num_labels: int, name: str = "class_weight") -> list[str]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(_is_number(v) for v in value):
        return [f"{where}: {name} must be a list of numbers, got {value!r}"]
    if len(value) != num_labels:
        return [f"{where}: {name} has {len(value)} entries for num_labels={num_labels}"]
    if any(v < 0 for v in value):
        return [f"{where}: {name} must not be negative, got {list(value)}"]
    return []


def loss_config_errors(loss: object, loss_sampler: object, num_labels: int) -> list[str]:
    """What is wrong with `SetrConfig.loss` / `loss_sampler` for a model of `num_labels` channels (one short phrase
    each; empty when valid)."""
    errors: list[str] = []
    terms = []
    if loss is not None:
        if not isinstance(loss, (list, tuple)) or not loss:
            return [f"loss must be a non-empty list of {{'type': ...}} dicts (or null for the default), got {loss!r}"]
        terms = list(loss)
    for index, term in enumerate(terms):
        where = f"loss[{index}]"
        if not isinstance(term, dict) or "type" not in term:
            errors.append(f"{where} must be a dict with a 'type', got {term!r}")
            continue
        kind = term["type"]
        if kind not in LOSS_OPTIONS:
            errors.append(f"{where}: unknown type {kind!r} (choose from {', '.join(LOSS_OPTIONS)})")
            continue
        unknown = sorted(set(term) - {"type", "weight"} - set(LOSS_OPTIONS[kind]))
        if unknown:
            errors.append(
                f"{where}: {kind} has no option {', '.join(map(repr, unknown))} (options: "
                f"{', '.join(['weight', *LOSS_OPTIONS[kind]])})"
            )
        weight = term.get("weight", 1.0)
        if not _is_number(weight) or weight < 0:
            errors.append(f"{where}: weight must be a number >= 0, got {weight!r}")
        if kind == "cross_entropy" and num_labels == 1:
            errors.append(
                f"{where}: cross_entropy needs num_labels > 1; a binary model (num_labels=1) uses binary_cross_entropy"
            )
        if kind == "binary_cross_entropy" and num_labels != 1:
            errors.append(f"{where}: binary_cross_entropy is for binary models (num_labels=1); use cross_entropy")
        for flag in ("avg_non_ignore", "use_sigmoid", "naive_dice"):
            if flag in term and not isinstance(term[flag], bool):
                errors.append(f"{where}: {flag} must be true or false, got {term[flag]!r}")
        errors += _class_weight_errors(where, term.get("class_weight"), num_labels)
        if kind == "dice":
            eps = term.get("eps", 1e-3)
            if not _is_number(eps) or eps <= 0:
                errors.append(f"{where}: eps must be a number > 0, got {eps!r}")
            if term.get("use_sigmoid") is False and num_labels == 1:
                errors.append(
                    f"{where}: dice with use_sigmoid=false needs num_labels > 1 (a softmax over one "
                    "channel is constant)"
                )
        if kind == "focal":
            gamma = term.get("gamma", 2.0)
            if not _is_number(gamma) or gamma < 0:
                errors.append(f"{where}: gamma must be a number >= 0, got {gamma!r}")
            alpha = term.get("alpha", 0.5)
            if isinstance(alpha, (list, tuple)):
                errors += _class_weight_errors(where, alpha, num_labels, name="alpha")
                if all(_is_number(a) for a in alpha) and any(a > 1 for a in alpha):
                    errors.append(f"{where}: alpha entries must lie in [0, 1], got {list(alpha)}")
            elif not _is_number(alpha) or not 0 <= alpha <= 1:
                errors.append(f"{where}: alpha must be a number in [0, 1] or one per label, got {alpha!r}")
    if loss_sampler is not None:
        if not isinstance(loss_sampler, dict) or loss_sampler.get("type") not in SAMPLER_OPTIONS:
            errors.append(
                f"loss_sampler must be null or {{'type': 'ohem', 'thresh': ..., 'min_kept': ...}}, got "
                f"{loss_sampler!r}"
            )
        else:
            unknown = sorted(set(loss_sampler) - {"type"} - set(SAMPLER_OPTIONS["ohem"]))
            if unknown:
                errors.append(
                    f"loss_sampler: ohem has no option {', '.join(map(repr, unknown))} (options: thresh, min_kept)"
                )
            thresh = loss_sampler.get("thresh")
            if thresh is not None and (not _is_number(thresh) or not 0 < thresh <= 1):
                errors.append(f"loss_sampler: thresh must be null or a probability in (0, 1], got {thresh!r}")
            min_kept = loss_sampler.get("min_kept", 100000)
            if not isinstance(min_kept, int) or isinstance(min_kept, bool) or min_kept < 2:
                errors.append(f"loss_sampler: min_kept must be an int > 1 (mmseg's rule), got {min_kept!r}")
            kinds = [t["type"] for t in (terms or default_loss_terms(num_labels)) if isinstance(t, dict)]
            others = sorted({k for k in kinds if k in LOSS_OPTIONS and k not in PIXEL_WEIGHTED_LOSSES})
            if others:
                errors.append(
                    f"loss_sampler ohem gives per-pixel weights, which {', '.join(others)} cannot take (as "
                    "in mmseg); use it with cross_entropy / binary_cross_entropy only"
                )
    return errors


def _reduce(loss: torch.Tensor, pixel_weight: torch.Tensor | None, avg_factor) -> torch.Tensor:
    """mmseg's `weight_reduce_loss(..., reduction="mean")`."""
    if pixel_weight is not None:
        loss = loss * pixel_weight
    if avg_factor is None:
        return loss.mean()
    return loss.sum() / (avg_factor + _AVG_FACTOR_EPS)


def cross_entropy_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    class_weight: list[float] | None = None,
    avg_non_ignore: bool = False,
    pixel_weight: torch.Tensor | None = None,
    reduce: bool = True,
    use_sigmoid: bool = False,
) -> torch.Tensor:
    """mmseg's `CrossEntropyLoss`, whose `use_sigmoid` picks one of its two functions. `reduce=False` gives the
    per-pixel losses (OHEM's ranking).

    - `cross_entropy` (softmax): per-pixel cross-entropy (times the label's class weight), summed and divided by the
      number of pixels (`avg_non_ignore`: of labelled pixels), or with class weights by the sum of the labelled
      pixels' weights.
    - `binary_cross_entropy` (`use_sigmoid`, one channel: SegFormer's `num_labels=1` loss when unweighted): BCE with
      logits against label 1, ignored pixels weighted 0, mean over all pixels (`avg_non_ignore`: over labelled ones).
      `class_weight=[w]` is BCE's `pos_weight` (as mmseg passes it).
    """
    if use_sigmoid:
        valid = ((labels >= 0) & (labels != ignore_index)).to(logits.dtype)
        weight = valid if pixel_weight is None else pixel_weight * valid
        positive = logits.new_tensor(class_weight) if class_weight is not None else None
        # Ignored pixels get target 0 (weight 0 anyway): their label (255) is no probability.
        target = (labels == 1).to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits.squeeze(1), target, pos_weight=positive, reduction="none")
        if not reduce:
            return loss * weight
        return _reduce(loss, weight, valid.sum() if avg_non_ignore else None)
    weights = logits.new_tensor(class_weight) if class_weight is not None else None
    loss = pixel_cross_entropy(logits, labels, ignore_index, weight=weights)
    if not reduce:
        return loss
    valid = labels != ignore_index
    avg_factor: torch.Tensor | int
    if weights is not None:
        avg_factor = torch.where(valid, weights[torch.where(valid, labels, 0)], 0).sum()
    else:
        avg_factor = valid.sum() if avg_non_ignore else labels.numel()
    return _reduce(loss, pixel_weight, avg_factor)


def dice_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    use_sigmoid: bool = True,
    naive_dice: bool = False,
    eps: float = 1e-3,
) -> torch.Tensor:
    """mmseg 1.2.2's `DiceLoss`: per image, one Dice over all classes and pixels together, 1 - d, averaged over the
    batch. d = 2 sum(p t) / (sum(p^2) + eps + sum(t^2) + eps) (V-Net), or (2 sum(p t) + eps) / (sum(p) + sum(t) + eps)
    with `naive_dice`; p is the sigmoid (`use_sigmoid`, mmseg's default) or softmax of the logits, t the one-hot
    labels. As in mmseg, ignored pixels have an all-zero target but their predictions count, and the class channel
    equal to the ignore index (if any) is left out."""
    num_classes = logits.shape[1]
    probabilities = logits.sigmoid() if use_sigmoid or num_classes == 1 else logits.softmax(dim=1)
    if num_classes == 1:
        target_class = torch.where(labels == 1, 0, -1)  # the foreground channel (see the module notes)
    else:
        # mmseg: one_hot(clamp(labels, 0, C), C + 1)[..., :C], then the ignore-index channel dropped
        target_class = labels.clamp(0, num_classes)
        target_class = torch.where((target_class == num_classes) | (target_class == ignore_index), -1, target_class)
        if 0 <= ignore_index < num_classes:
            keep = torch.arange(num_classes, device=logits.device) != ignore_index
            probabilities = probabilities[:, keep]
            target_class = torch.where(target_class > ignore_index, target_class - 1, target_class)
    labelled = target_class >= 0
    # sum(p t): the probability of each labelled pixel's class, without materialising the one-hot target
    overlap = probabilities.gather(1, target_class.clamp(min=0).unsqueeze(1)).squeeze(1) * labelled
    overlap = overlap.flatten(1).sum(1)
    target_sum = labelled.flatten(1).sum(1).to(logits.dtype)  # t is 0/1: sum(t) == sum(t^2)
    if naive_dice:
        dice = (2 * overlap + eps) / (probabilities.flatten(1).sum(1) + target_sum + eps)
    else:
        dice = 2 * overlap / ((probabilities * probabilities).flatten(1).sum(1) + eps + target_sum + eps)
    return (1 - dice).mean()


def focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    gamma: float = 2.0,
    alpha: float | list[float] = 0.5,
    class_weight: list[float] | None = None,
) -> torch.Tensor:
    """mmseg's sigmoid focal loss: per pixel and class, BCE with logits against the one-hot label times
    (alpha t + (1 - alpha)(1 - t)) |t - p|^gamma, times the class weight; ignored pixels weigh 0; mean over pixels x
    classes. A binary model's channel targets label 1."""
    num_classes = logits.shape[1]
    valid = (labels != ignore_index).unsqueeze(1).to(logits.dtype)
    labels = torch.where(labels == ignore_index, 0, labels)
    if num_classes == 1:
        target = (labels == 1).unsqueeze(1).to(logits.dtype)
    else:
        target = torch.zeros_like(logits).scatter_(1, labels.unsqueeze(1), 1.0)
    shape = (1, num_classes, *([1] * (logits.ndim - 2)))
    class_alpha = logits.new_tensor(alpha).view(shape) if isinstance(alpha, (list, tuple)) else alpha
    probabilities = logits.sigmoid()
    one_minus_pt = (1 - probabilities) * target + probabilities * (1 - target)
    focal_weight = (class_alpha * target + (1 - class_alpha) * (1 - target)) * one_minus_pt.pow(gamma)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * focal_weight
    weight = valid if class_weight is None else logits.new_tensor(class_weight).view(shape) * valid
    return _reduce(loss, weight, None)


def ohem_pixel_weights(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    thresh: float | None,
    min_kept: int,
    pixel_losses: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """mmseg's `OHEMPixelSampler.sample`: weight 1 for the hard labelled pixels, 0 elsewhere. With `thresh`, the
    pixels whose probability of their labelled class is below max(thresh, the (min_kept x batch)-th smallest such
    probability); without, the min_kept x batch labelled pixels of largest loss (`pixel_losses()`)."""
    with torch.no_grad():
        batch_kept = min_kept * labels.shape[0]
        valid = labels != ignore_index
        weights = logits.new_zeros(labels.shape)
        if thresh is not None:
            safe_labels = torch.where(valid, labels, 0)
            if logits.shape[1] == 1:
                foreground = logits[:, 0].sigmoid()
                probability = torch.where(safe_labels == 1, foreground, 1 - foreground)
            else:
                probability = logits.softmax(dim=1).gather(1, safe_labels.unsqueeze(1)).squeeze(1)
            valid_probability = probability[valid]
            sorted_probability = valid_probability.sort()[0]
            if sorted_probability.numel() > 0:
                threshold = max(sorted_probability[min(batch_kept, sorted_probability.numel() - 1)].item(), thresh)
            else:
                threshold = thresh
            kept = (valid_probability < threshold).to(logits.dtype)
        else:
            order = pixel_losses()[valid].sort(descending=True)[1]
            kept = weights.new_zeros(order.shape)
            kept[order[:batch_kept]] = 1.0
        weights[valid] = kept
    return weights


def _term_loss(
    term: dict, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, pixel_weight, reduce: bool = True
) -> torch.Tensor:
    options = {name: term.get(name, default) for name, default in LOSS_OPTIONS[term["type"]].items()}
    kind = term["type"]
    if kind in ("cross_entropy", "binary_cross_entropy"):
        use_sigmoid = kind == "binary_cross_entropy"
        return cross_entropy_loss(
            logits, labels, ignore_index, pixel_weight=pixel_weight, reduce=reduce, use_sigmoid=use_sigmoid, **options
        )
    if kind == "dice":
        return dice_loss(logits, labels, ignore_index, **options)
    return focal_loss(logits, labels, ignore_index, **options)


def head_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    loss: list[dict] | None,
    loss_sampler: dict | None,
) -> torch.Tensor:
    """One head's loss (mmseg's `loss_by_feat`): logits resized bilinearly to the labels (in float32), OHEM weights
    if `loss_sampler`, then the sum of `weight * term` over `loss` (the default terms when `None`)."""
    logits, labels = resize_to_labels(logits, labels).float(), labels.long()
    terms = loss if loss is not None else default_loss_terms(logits.shape[1])
    pixel_weight = None
    if loss_sampler is not None:
        options = {name: loss_sampler.get(name, default) for name, default in SAMPLER_OPTIONS["ohem"].items()}

        def pixel_losses() -> torch.Tensor:
            return sum(
                term.get("weight", 1.0) * _term_loss(term, logits, labels, ignore_index, None, reduce=False)
                for term in terms
            )

        pixel_weight = ohem_pixel_weights(logits, labels, ignore_index, pixel_losses=pixel_losses, **options)
    # `terms` is never empty (`loss_config_errors` refuses `loss=[]`)
    weighted = [
        term.get("weight", 1.0) * _term_loss(term, logits, labels, ignore_index, pixel_weight) for term in terms
    ]
    total = weighted[0]
    for value in weighted[1:]:
        total = total + value
    return total


__all__ = [
    "LOSS_OPTIONS",
    "SAMPLER_OPTIONS",
    "cross_entropy_loss",
    "default_loss_terms",
    "dice_loss",
    "focal_loss",
    "head_loss",
    "loss_config_errors",
    "ohem_pixel_weights",
    "pixel_cross_entropy",
    "resize_to_labels",
]
