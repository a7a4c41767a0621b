"""Reference values of mmsegmentation 1.2.2's losses for `tests/models/test_losses.py` (`SetrConfig.loss`, `loss_setr.py`).

Runs in the mmseg reference environment, never imports transformers or transformers_setr:

    .venv-mmseg/bin/python scripts/make_loss_fixtures.py            # writes tests/fixtures/losses/losses.pt

Each case holds seeded random logits and labels (some pixels 255, ignored), the `loss` / `loss_sampler` config that
names the same loss in this package, and mmseg's value. Where mmseg's decode head runs the loss on CPU the value is
`FCNHead.loss_by_feat` itself (resize, `OHEMPixelSampler`, the sum of the `loss_decode` terms); otherwise mmseg's own
loss function is called the way the CUDA branch calls it:

- `FocalLoss.forward` fails on CPU for label maps in 1.2.2 (it takes one column of the one-hot target): the focal
  cases call mmseg's `py_sigmoid_focal_loss` with the one-hot target and valid mask that the CUDA branch builds (one
  case runs `FocalLoss.forward` itself, with a one-hot target and no ignored pixels, which its CPU branch handles).
- `CrossEntropyLoss` with `class_weight` fails on ignored pixels (it indexes the weights with 255): its cases have
  none.
- A binary (one-channel) Dice is computed by `DiceLoss` with the foreground (label 1) as the target, as the package
  defines it (mmseg's own one-hot would target label 0).
"""

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import torch

REPOSITORY = Path(__file__).resolve().parents[1]
IGNORE_INDEX = 255


def load_mmseg():
    spec = importlib.util.spec_from_file_location(
        "mmseg_reference", REPOSITORY / "src" / "transformers_setr" / "conversion" / "mmseg_reference.py"
    )
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    reference.install_mmcv_ops_stub()
    import mmseg

    return mmseg


def make_inputs(seed: int, channels: int, size=(8, 10), logits_size=None, ignore_share=0.15, num_labels=None):
    rng = np.random.default_rng(seed)
    height, width = size
    logits = torch.from_numpy((2 * rng.standard_normal((2, channels, *(logits_size or size)))).astype(np.float32))
    classes = num_labels or channels
    labels = rng.integers(0, classes, (2, height, width))
    labels[rng.random((2, height, width)) < ignore_share] = IGNORE_INDEX
    return logits, torch.from_numpy(labels).long()


def mmseg_term(term: dict) -> dict:
    """The mmseg loss config of one of this package's terms."""
    kind, weight = term["type"], float(term.get("weight", 1.0))
    if kind in ("cross_entropy", "binary_cross_entropy"):
        return dict(
            type="CrossEntropyLoss",
            use_sigmoid=kind == "binary_cross_entropy",
            class_weight=term.get("class_weight"),
            avg_non_ignore=term.get("avg_non_ignore", False),
            loss_weight=weight,
            loss_name=f"loss_{kind}",
        )
    if kind == "dice":
        return dict(
            type="DiceLoss",
            use_sigmoid=term.get("use_sigmoid", True),
            naive_dice=term.get("naive_dice", False),
            eps=term.get("eps", 1e-3),
            loss_weight=weight,
        )
    raise ValueError(kind)


def head_value(logits, labels, loss, sampler=None, channels=None) -> torch.Tensor:
    """mmseg's `loss_by_feat` on an FCN head with these loss terms (and OHEM sampler): the sum of its loss items."""
    from mmengine.structures import PixelData
    from mmseg.models.decode_heads import FCNHead
    from mmseg.structures import SegDataSample

    channels = logits.shape[1]
    head = FCNHead(
        in_channels=4,
        channels=4,
        num_convs=0,
        concat_input=False,
        num_classes=2 if channels == 1 else channels,
        out_channels=channels,
        threshold=0.5 if channels == 1 else None,
        ignore_index=IGNORE_INDEX,
        loss_decode=[mmseg_term(term) for term in loss],
        sampler=None if sampler is None else dict(type="OHEMPixelSampler", **sampler),
    )
    samples = []
    for label in labels:
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=label[None])
        samples.append(sample)
    items = head.loss_by_feat(logits, samples)
    return sum(value for name, value in items.items() if name.startswith("loss_"))


def focal_value(logits, labels, gamma=2.0, alpha=0.5, class_weight=None, weight=1.0) -> torch.Tensor:
    """`FocalLoss.forward`'s CUDA branch, with mmseg's `py_sigmoid_focal_loss` as the loss function."""
    import torch.nn.functional as F
    from mmseg.models.losses.focal_loss import py_sigmoid_focal_loss

    channels = logits.shape[1]
    pred = logits.transpose(0, 1).reshape(channels, -1).transpose(0, 1).contiguous()
    target = labels.view(-1)
    valid_mask = (target != IGNORE_INDEX).view(-1, 1)
    target = torch.where(target == IGNORE_INDEX, target.new_tensor(0), target)
    one_hot = F.one_hot(target, num_classes=channels + 1)
    one_hot = one_hot[:, 1:2] if channels == 1 else one_hot[:, :channels]
    return weight * py_sigmoid_focal_loss(
        pred, one_hot, None, None, gamma=gamma, alpha=alpha, class_weight=class_weight, valid_mask=valid_mask
    )


def binary_dice_value(logits, labels, eps=1e-3, naive_dice=False, weight=1.0) -> torch.Tensor:
    from mmseg.models.losses import DiceLoss

    loss = DiceLoss(use_sigmoid=True, naive_dice=naive_dice, eps=eps, loss_weight=weight)
    return loss(logits, (labels == 1).unsqueeze(1).long(), ignore_index=IGNORE_INDEX)


def build_cases() -> list[dict]:
    from mmseg.models.losses import FocalLoss

    cases = []

    def add(name, logits, labels, loss, value, sampler=None):
        cases.append(
            {
                "name": name,
                "logits": logits,
                "labels": labels,
                "loss": loss,
                "loss_sampler": sampler,
                "value": float(value),
            }
        )

    def add_head(name, seed, loss, channels=4, sampler=None, **input_options):
        logits, labels = make_inputs(seed, channels, **input_options)
        add(name, logits, labels, loss, head_value(logits, labels, loss, sampler), sampler)

    # cross-entropy
    add_head("ce_default", 1, [{"type": "cross_entropy"}])
    add_head("ce_avg_non_ignore", 2, [{"type": "cross_entropy", "avg_non_ignore": True}])
    add_head("ce_low_resolution_logits", 3, [{"type": "cross_entropy"}], logits_size=(4, 5))
    weights = [0.5, 1.0, 2.0, 4.0]
    add_head("ce_class_weight", 4, [{"type": "cross_entropy", "class_weight": weights}], ignore_share=0.0)
    add_head(
        "ce_class_weight_avg_non_ignore",
        5,
        [{"type": "cross_entropy", "class_weight": weights, "avg_non_ignore": True, "weight": 0.7}],
        ignore_share=0.0,
    )
    # Dice
    add_head("dice_sigmoid", 6, [{"type": "dice"}])
    add_head("dice_softmax", 7, [{"type": "dice", "use_sigmoid": False}])
    add_head("dice_naive_eps", 8, [{"type": "dice", "naive_dice": True, "eps": 1.0, "weight": 3.0}])
    # focal (see the module docstring)
    logits, labels = make_inputs(9, 4)
    add("focal_default", logits, labels, [{"type": "focal"}], focal_value(logits, labels))
    logits, labels = make_inputs(10, 4)
    options = {"gamma": 1.5, "alpha": [0.25, 0.5, 0.75, 0.4], "class_weight": [1.0, 2.0, 0.5, 1.5]}
    add(
        "focal_alpha_list_class_weight",
        logits,
        labels,
        [{"type": "focal", "weight": 0.5, **options}],
        focal_value(logits, labels, weight=0.5, **options),
    )
    logits, labels = make_inputs(11, 4, ignore_share=0.0)
    one_hot = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2)
    value = FocalLoss(gamma=3.0, alpha=0.3, loss_weight=2.0)(logits, one_hot, ignore_index=IGNORE_INDEX)
    add("focal_forward_one_hot", logits, labels, [{"type": "focal", "gamma": 3.0, "alpha": 0.3, "weight": 2.0}], value)
    # OHEM
    add_head("ohem_thresh", 12, [{"type": "cross_entropy"}], sampler={"thresh": 0.7, "min_kept": 20})
    add_head(
        "ohem_thresh_min_kept_dominates", 13, [{"type": "cross_entropy"}], sampler={"thresh": 0.05, "min_kept": 60}
    )
    add_head(
        "ohem_top_loss",
        14,
        [{"type": "cross_entropy", "avg_non_ignore": True}, {"type": "cross_entropy", "weight": 0.5}],
        sampler={"min_kept": 30},
    )
    # a weighted sum: CE + Dice through the head, plus focal
    loss = [{"type": "cross_entropy", "weight": 1.0}, {"type": "dice", "use_sigmoid": False, "weight": 0.5}]
    logits, labels = make_inputs(15, 4)
    value = head_value(logits, labels, loss) + focal_value(logits, labels, gamma=2.0, alpha=0.25, weight=0.25)
    add("weighted_sum", logits, labels, [*loss, {"type": "focal", "alpha": 0.25, "weight": 0.25}], value)

    # binary (one channel, labels 0/1)
    add_head("bce_default", 16, [{"type": "binary_cross_entropy"}], channels=1, num_labels=2)
    add_head(
        "bce_pos_weight_avg_non_ignore",
        17,
        [{"type": "binary_cross_entropy", "class_weight": [3.0], "avg_non_ignore": True}],
        channels=1,
        num_labels=2,
    )
    logits, labels = make_inputs(18, 1, num_labels=2)
    value = head_value(logits, labels, [{"type": "binary_cross_entropy"}]) + binary_dice_value(logits, labels)
    add("bce_plus_dice", logits, labels, [{"type": "binary_cross_entropy"}, {"type": "dice"}], value)
    logits, labels = make_inputs(19, 1, num_labels=2)
    add("focal_binary", logits, labels, [{"type": "focal", "alpha": 0.25}], focal_value(logits, labels, alpha=0.25))
    add_head(
        "bce_ohem_top_loss",
        20,
        [{"type": "binary_cross_entropy"}],
        channels=1,
        num_labels=2,
        sampler={"min_kept": 25},
    )
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPOSITORY / "tests" / "fixtures" / "losses" / "losses.pt")
    args = parser.parse_args()
    mmseg = load_mmseg()
    torch.manual_seed(0)
    cases = build_cases()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"mmseg_version": mmseg.__version__, "torch_version": str(torch.__version__), "cases": cases}, args.out)
    for case in cases:
        print(f"{case['name']}: {case['value']:.6f}")


if __name__ == "__main__":
    main()
