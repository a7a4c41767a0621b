"""mmsegmentation's SETR optimizer and schedule, and the released architectures built from the presets."""

import pytest
import torch

from transformers_setr import SetrForSemanticSegmentation
from transformers_setr.presets import PRESETS
from transformers_setr.training import (
    build_poly_scheduler,
    build_sgd_optimizer,
    config_for_preset,
    poly_learning_rate,
    recipe_training_defaults,
    sample_seed,
)

from conftest import tiny_config


def mmengine_poly_lrs(base_lr: float, total: int, steps: int, power: float = 0.9, eta_min: float = 1e-4) -> list:
    """mmengine `PolyLR.get_lr`, which is recursive: each step rescales the previous lr (not the closed form)."""
    lrs, lr = [base_lr], base_lr
    for last_step in range(1, steps):
        if last_step <= total:
            lr = (lr - eta_min) * (1 - 1 / (total - last_step + 1)) ** power + eta_min
        lrs.append(lr)
    return lrs


@pytest.mark.parametrize("decoder_type", ["naive", "pup", "mla"])
def test_parameter_groups_follow_mmseg_custom_keys(decoder_type):
    model = SetrForSemanticSegmentation(tiny_config(decoder_type))
    optimizer = build_sgd_optimizer(model, 0.01)
    encoder, heads = optimizer.param_groups
    assert encoder["lr"] == 0.01 and heads["lr"] == pytest.approx(0.1)
    assert all(group["momentum"] == 0.9 and group["weight_decay"] == 0.0 for group in optimizer.param_groups)

    names = {id(parameter): name for name, parameter in model.named_parameters()}
    head_names = {names[id(p)] for p in heads["params"]}
    encoder_names = {names[id(p)] for p in encoder["params"]}
    assert head_names | encoder_names == set(names.values()) and not head_names & encoder_names
    assert all(name.startswith(("decode_head.", "auxiliary_heads.")) for name in head_names)
    assert any(name.startswith("auxiliary_heads.") for name in head_names)
    # mmseg's key is the substring "head": the encoder and the MLA neck keep the base lr
    assert all(name.startswith(("setr.", "neck.")) for name in encoder_names)
    if decoder_type == "mla":
        assert any(name.startswith("neck.") for name in encoder_names)


def test_poly_schedule_matches_mmengine_at_every_step():
    model = SetrForSemanticSegmentation(tiny_config("naive"))
    total = 40
    optimizer = build_sgd_optimizer(model, 0.01, head_lr_multiplier=10.0)
    scheduler = build_poly_scheduler(optimizer, total)
    expected_encoder = mmengine_poly_lrs(0.01, total, total + 5)
    expected_heads = mmengine_poly_lrs(0.1, total, total + 5)
    for step in range(total + 5):
        encoder_lr, heads_lr = (group["lr"] for group in optimizer.param_groups)
        assert encoder_lr == pytest.approx(expected_encoder[step], rel=1e-9, abs=1e-12), step
        assert heads_lr == pytest.approx(expected_heads[step], rel=1e-9, abs=1e-12), step
        assert encoder_lr == pytest.approx(poly_learning_rate(0.01, step, total), rel=1e-12)
        optimizer.step()
        scheduler.step()
    # the end of the schedule is eta_min for both groups (the same absolute floor, as in mmengine)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([1e-4, 1e-4])


def test_poly_schedule_formula_at_chosen_steps():
    # SETR ADE20K Naive: base lr 0.01, 160k iterations, power 0.9, min 1e-4
    assert poly_learning_rate(0.01, 0, 160_000) == pytest.approx(0.01)
    assert poly_learning_rate(0.01, 80_000, 160_000) == pytest.approx((0.01 - 1e-4) * 0.5**0.9 + 1e-4)
    assert poly_learning_rate(0.01, 160_000, 160_000) == pytest.approx(1e-4)
    assert poly_learning_rate(0.01, 200_000, 160_000) == pytest.approx(1e-4)


def test_scheduler_state_round_trips():
    model = SetrForSemanticSegmentation(tiny_config("naive"))
    optimizer = build_sgd_optimizer(model, 0.01)
    scheduler = build_poly_scheduler(optimizer, 10)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    fresh_optimizer = build_sgd_optimizer(model, 0.01)
    fresh = build_poly_scheduler(fresh_optimizer, 10)
    fresh_optimizer.load_state_dict(optimizer.state_dict())
    fresh.load_state_dict(state)
    fresh_optimizer.step()
    fresh.step()
    optimizer.step()
    scheduler.step()
    assert [g["lr"] for g in fresh_optimizer.param_groups] == [g["lr"] for g in optimizer.param_groups]


# Parameter counts of the seven released models, from mmseg 1.2.2's built models plus the patch-embedding bias
# (setr-reference.md §5): backbone, neck, decode head, auxiliary heads.
RELEASED_PARAMETER_COUNTS = {
    "setr-naive-vit-large-ade20k-512": (304_147_456, 0, 303_254, 1_107_906),
    "setr-pup-vit-large-ade20k-512": (304_147_456, 0, 4_171_414, 8_972_226),
    "setr-mla-vit-large-ade20k-512-b8": (304_147_456, 3_420_160, 1_848_470, 154_200),
    "setr-mla-vit-large-ade20k-512-b16": (304_147_456, 3_420_160, 1_848_470, 154_200),
    "setr-naive-vit-large-cityscapes-768": (305_458_176, 0, 269_587, 808_761),
    "setr-pup-vit-large-cityscapes-768": (305_458_176, 0, 4_137_747, 8_871_225),
    "setr-mla-vit-large-cityscapes-768": (305_458_176, 3_420_160, 1_781_267, 19_532),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_config_builds_the_released_architecture(name):
    preset = PRESETS[name]
    config = config_for_preset(preset)
    with torch.device("meta"):
        model = SetrForSemanticSegmentation(config)

    def count(prefix: str) -> int:
        return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))

    assert (count("setr."), count("neck."), count("decode_head."), count("auxiliary_heads.")) == (
        RELEASED_PARAMETER_COUNTS[name]
    )
    assert config.inference_mode == "slide"
    assert config.slide_window == ((preset.crop_size,) * 2, (preset.slide_stride,) * 2)


def test_recipe_defaults_reproduce_the_released_schedule():
    defaults = recipe_training_defaults(PRESETS["setr-mla-vit-large-ade20k-512-b8"])
    assert defaults["per_device_train_batch_size"] == 1  # 8 images on 8 GPUs
    assert defaults["max_steps"] == 160_000 and defaults["learning_rate"] == 0.001
    assert defaults["weight_decay"] == 0.0 and defaults["eval_steps"] == 16_000
    cityscapes = recipe_training_defaults(PRESETS["setr-mla-vit-large-cityscapes-768"])
    assert cityscapes["max_steps"] == 80_000 and cityscapes["learning_rate"] == 0.002
    assert cityscapes["eval_steps"] == 8_000


def test_sample_seeds_are_distinct_and_stable():
    seeds = {sample_seed(0, epoch, index) for epoch in range(3) for index in range(100)}
    assert len(seeds) == 300
    assert sample_seed(7, 2, 5) == sample_seed(7, 2, 5)
    assert all(0 <= seed < 2**63 for seed in seeds)


def test_train_script_arguments_default_to_the_preset_recipe_and_can_be_overridden(tmp_path):
    from transformers_setr.training import SetrTrainingArguments
    from transformers_setr.training.workflow import parse_arguments

    base = ["--preset", "setr-pup-vit-large-cityscapes-768", "--output_dir", str(tmp_path)]
    model_args, data_args, args = parse_arguments(base, (SetrTrainingArguments,))
    assert (args.max_steps, args.learning_rate, args.per_device_train_batch_size) == (80_000, 0.01, 1)
    assert (args.eval_steps, args.save_steps, args.eval_strategy.value, args.weight_decay) == (
        8_000,
        8_000,
        "steps",
        0.0,
    )
    assert args.remove_unused_columns is False and args.batch_eval_metrics is True
    assert args.eval_mode == "slide" and args.head_lr_multiplier == 10.0 and args.poly_min_lr == 1e-4
    _, _, overridden = parse_arguments(
        [*base, "--max_steps", "10", "--learning_rate", "0.5"], (SetrTrainingArguments,)
    )
    assert (overridden.max_steps, overridden.learning_rate) == (10, 0.5)
    with pytest.raises(SystemExit):
        parse_arguments([*base, "--eval_mode", "sliding"], (SetrTrainingArguments,))


def test_dataloader_workers_default_follows_the_measured_rates(monkeypatch):
    """Issue 25: the default `dataloader_num_workers` of both training commands is what one GPU's training rate needs
    at the measured augmentation rate per core (40 / 14.4 images/s -> 3), bounded by the cores of each GPU's process
    less one; none without a GPU."""
    from transformers_setr.training import SetrTrainingArguments, default_dataloader_workers, recipe
    from transformers_setr.training.train_loop_command import LoopArguments

    assert default_dataloader_workers(cpu_count=16, gpus=1) == 3  # one H100 machine of 16 cores
    assert default_dataloader_workers(cpu_count=64, gpus=1) == 3  # never more than needed
    assert default_dataloader_workers(cpu_count=16, gpus=8) == 1  # 2 cores per process: one for the process
    assert default_dataloader_workers(cpu_count=96, gpus=8) == 3
    assert default_dataloader_workers(cpu_count=24, gpus=8) == 2  # 3 cores per process: 2 workers
    assert default_dataloader_workers(cpu_count=2, gpus=4) == 1  # at least one with a GPU
    assert default_dataloader_workers(cpu_count=2, gpus=0) == 0
    monkeypatch.setattr(recipe.torch.cuda, "device_count", lambda: 0)
    assert SetrTrainingArguments(output_dir="unused").dataloader_num_workers == 0
    assert LoopArguments().dataloader_num_workers == 0
    monkeypatch.setattr(recipe.torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(recipe.os, "cpu_count", lambda: 16)
    assert LoopArguments().dataloader_num_workers == 3
    monkeypatch.setattr(recipe.os, "cpu_count", lambda: 6)
    assert LoopArguments().dataloader_num_workers == 2  # 3 cores per GPU process, one for the process
    assert SetrTrainingArguments(output_dir="unused", dataloader_num_workers=5).dataloader_num_workers == 5
