"""`setr train` and `setr train-loop` with the options people bring (issue 21, parts 1 and 5): every optimizer,
schedule, warmup and layer-decay option is used or refused in one line; a frozen encoder and LoRA train, save,
reload and merge. The commands run in-process through `transformers_setr.cli.main`, as the README writes them."""

import json
import math
import time
from pathlib import Path

import pytest
import torch

from transformers_setr import SetrConfig, SetrForSemanticSegmentation, cli
from transformers_setr.training import recipe, train_loop_command

from helpers.training_runs import TINY

LR = 0.01
STEPS = 6


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    from transformers_setr.data.synthetic import make_synthetic_ade20k

    return make_synthetic_ade20k(
        tmp_path_factory.mktemp("ade"), layout="raw", num_train=4, num_validation=1, image_size=(48, 64), seed=0
    )


def base_args(command: str, ade_root: Path, output_dir: Path, *extra: str) -> list[str]:
    """A tiny naive-decoder run (4 layers of width 32) of `command` on the synthetic ADE20K tree."""
    args = [
        command, "--preset", "setr-naive-vit-large-ade20k-512", "--data", str(ade_root), "--config_overrides", TINY,
        "--backbone", "none", "--crop_size", "32", "--scale", "128,32", "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "2", "--learning_rate", str(LR), "--max_steps", str(STEPS),
        "--logging_steps", "1", "--seed", "3", "--do_eval", "false",
    ]  # fmt: skip
    if command == "train":
        args += ["--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "true"]
        args += ["--disable_tqdm", "true"]
    else:
        args += ["--checkpointing_steps", "1000"]
    return [*args, *extra]


@pytest.fixture
def recorded(monkeypatch):
    """The optimizer each command builds, and the learning rates of its groups at every optimizer step."""
    record: dict = {"lrs": []}
    build = recipe.optimizer_from_arguments

    def recording(model, args):
        optimizer = build(model, args)
        names = {id(p): name for name, p in model.named_parameters()}
        record.update(optimizer=optimizer, names=[[names[id(p)] for p in g["params"]] for g in optimizer.param_groups])
        optimizer.register_step_pre_hook(lambda opt, *_: record["lrs"].append([g["lr"] for g in opt.param_groups]))
        return optimizer

    monkeypatch.setattr(recipe, "optimizer_from_arguments", recording)
    monkeypatch.setattr(train_loop_command, "optimizer_from_arguments", recording)
    return record


COMMANDS = ["train", "train-loop"]


# --- the default stays the SETR recipe ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_default_is_sgd_heads_times_ten_and_mmseg_poly(command, ade_root, tmp_path, recorded):
    assert cli.main(base_args(command, ade_root, tmp_path / "run")) == 0
    optimizer = recorded["optimizer"]
    assert type(optimizer) is torch.optim.SGD
    assert [g["name"] for g in optimizer.param_groups] == ["encoder", "heads"]
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 0.0 for g in optimizer.param_groups)
    assert all("head" in name for name in recorded["names"][1]) and not any("head" in n for n in recorded["names"][0])
    # mmengine's PolyLR closed form, each group to the absolute floor 1e-4
    for step, (encoder_lr, heads_lr) in enumerate(recorded["lrs"]):
        factor = (1 - step / STEPS) ** 0.9
        assert encoder_lr == pytest.approx((LR - 1e-4) * factor + 1e-4, rel=1e-9)
        assert heads_lr == pytest.approx((10 * LR - 1e-4) * factor + 1e-4, rel=1e-9)
    assert len(recorded["lrs"]) == STEPS
    assert "SGD (momentum 0.9, no weight decay)" in (tmp_path / "run" / "README.md").read_text()


# --- a named optimizer, schedule, warmup and layer decay are used -------------------------------------------------

MODERN = ["--optim", "adamw_torch", "--learning_rate", "6e-5", "--weight_decay", "0.05", "--layer_decay", "0.65"]


@pytest.mark.parametrize("command", COMMANDS)
def test_adamw_cosine_warmup_and_layer_decay(command, ade_root, tmp_path, recorded):
    extra = [*MODERN, "--adam_beta2", "0.98", "--lr_scheduler_type", "cosine", "--warmup_steps", "2"]
    assert cli.main(base_args(command, ade_root, tmp_path / "run", *extra)) == 0
    optimizer = recorded["optimizer"]
    assert type(optimizer) is torch.optim.AdamW
    assert all(g["betas"] == (0.9, 0.98) and g["eps"] == 1e-8 for g in optimizer.param_groups)
    lr, decay, layers = 6e-5, 0.65, 4
    expected_scale = {"embeddings": decay ** (layers + 1), "heads": 10.0}
    expected_scale.update({f"layer_{i}": decay ** (layers - i) for i in range(layers)})
    groups = {}
    for group, names in zip(optimizer.param_groups, recorded["names"]):
        part = group["name"].removesuffix("_no_decay")
        groups.setdefault(part, []).append((group, names))
        assert group["lr_scale"] == pytest.approx(expected_scale[part], rel=1e-12), group["name"]
        if group["name"].endswith("_no_decay"):  # biases, norms, position and cls embeddings
            assert group["weight_decay"] == 0.0
            assert all(n.endswith(("bias", "position_embeddings", "cls_token")) or "norm" in n for n in names)
        else:
            assert group["weight_decay"] == 0.05 and all(n.endswith("weight") for n in names)
    assert set(groups) == set(expected_scale)
    assert any(n.endswith("setr.embeddings.position_embeddings") for _, names in groups["embeddings"] for n in names)
    assert all(n.startswith("setr.layers.2.") for _, names in groups["layer_2"] for n in names)
    # transformers' cosine with warmup, per group: 0, half, the peak at the end of the warmup, then cosine to 0
    for step, lrs in enumerate(recorded["lrs"]):
        factor = step / 2 if step < 2 else 0.5 * (1 + math.cos(math.pi * (step - 2) / (STEPS - 2)))
        for group, group_lr in zip(optimizer.param_groups, lrs):
            assert group_lr == pytest.approx(lr * group["lr_scale"] * factor, rel=1e-9, abs=1e-15)
    card = (tmp_path / "run" / "README.md").read_text()
    assert "AdamW (betas 0.9/0.98, weight decay 0.05" in card and "layer-wise learning-rate decay 0.65" in card


@pytest.mark.parametrize("command", COMMANDS)
def test_poly_takes_mmseg_linear_warmup(command, ade_root, tmp_path, recorded):
    extra = ["--optim", "adamw_torch_fused", "--warmup_steps", "2", "--poly_power", "1.0", "--poly_min_lr", "0"]
    assert cli.main(base_args(command, ade_root, tmp_path / "run", *extra)) == 0
    assert type(recorded["optimizer"]) is torch.optim.AdamW and recorded["optimizer"].defaults["fused"]
    encoder = [lrs[0] for lrs in recorded["lrs"]]
    heads = [lrs[1] for lrs in recorded["lrs"]]
    # mmseg: LinearLR(start_factor=1e-6, end=2), then PolyLR(power=1, eta_min=0, begin=2, end=6)
    expected = [1e-6, 1e-6 + (1 - 1e-6) / 2, 1.0, 0.75, 0.5, 0.25]
    assert encoder == pytest.approx([LR * f for f in expected], rel=1e-9)
    assert heads == pytest.approx([10 * LR * f for f in expected], rel=1e-9)


def test_constant_schedule_and_warmup_ratio(ade_root, tmp_path, recorded):
    extra = ["--lr_scheduler_type", "constant_with_warmup", "--warmup_steps", "0.5"]  # half of the 6 steps
    assert cli.main(base_args("train-loop", ade_root, tmp_path / "run", *extra)) == 0
    assert [lrs[0] for lrs in recorded["lrs"]] == pytest.approx([0, LR / 3, 2 * LR / 3, LR, LR, LR])


def test_layer_decay_rule_on_a_model_of_24_layers():
    """BEiT's rule by parameter name, at ViT-L depth: the embeddings at 0.9^25, layer i at 0.9^(24-i), the rest 1."""
    from transformers_setr.training import encoder_layer_id

    assert encoder_layer_id("setr.embeddings.cls_token", 24) == 0
    assert encoder_layer_id("setr.embeddings.patch_embeddings.projection.weight", 24) == 0
    assert encoder_layer_id("setr.layers.0.attention.q_proj.weight", 24) == 1
    assert encoder_layer_id("setr.layers.23.mlp.fc2.bias", 24) == 24
    assert encoder_layer_id("base_model.model.setr.layers.7.attention.q_proj.lora_A.default.weight", 24) == 8
    assert encoder_layer_id("neck.layernorms.0.weight", 24) == 25
    assert encoder_layer_id("decode_head.classifier.weight", 24) == 25


# --- one-line refusals --------------------------------------------------------------------------------------------

REFUSALS = [
    (["--crop_size", "0"], "--crop_size must be a positive number of pixels, got 0"),
    (["--learning_rate", "-0.01"], "--learning_rate must be positive, got -0.01"),
    (["--learning_rate", "0"], "--learning_rate must be positive, got 0.0"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be at least 1, got 0"),
    (["--layer_decay", "0"], "--layer_decay must be in (0, 1], got 0.0"),
    (["--layer_decay", "1.5"], "--layer_decay must be in (0, 1], got 1.5"),
    (["--optim", "adafactor"], "invalid choice: 'adafactor' (choose from 'sgd', 'adamw_torch', 'adamw_torch_fused')"),
    (["--lr_scheduler_type", "reduce_lr_on_plateau"], "invalid choice: 'reduce_lr_on_plateau'"),
    (["--lr_scheduler_type", "constant", "--warmup_steps", "2"], "use --lr_scheduler_type constant_with_warmup"),
    (["--adam_beta2", "0.98"], "--adam_beta2 is for AdamW; the optimizer is sgd (pass --optim adamw_torch)"),
    (["--optim", "adamw_torch", "--sgd_momentum", "0.5"], "--sgd_momentum is for --optim sgd, not adamw_torch"),
    (["--lr_scheduler_type", "cosine", "--poly_power", "1"], "--poly_power is for --lr_scheduler_type poly"),
    (["--lr_scheduler_kwargs", '{"power": 2}'], "the poly schedule takes --poly_power and --poly_min_lr"),
    (["--lr_scheduler_type", "cosine", "--lr_scheduler_kwargs", '{"cycles": 2}'], "unexpected keyword argument"),
    (["--lr_scheduler_type", "cosine_with_min_lr"], "One of min_lr or min_lr_rate should be set"),
    (["--learning_rate", "6e-5"], "--learning_rate 6e-05 is below --poly_min_lr 0.0001"),
    (["--freeze_encoder", "--lora_rank", "4"], "--freeze_encoder and --lora_rank contradict"),
    (["--freeze_encoder", "--layer_decay", "0.9"], "--layer_decay scales the encoder's layers"),
    (["--lora_alpha", "32"], "--lora_alpha need --lora_rank (LoRA is off)"),
    (["--lora_rank", "-1"], "--lora_rank must not be negative"),
]
TRAINER_ONLY_REFUSALS = [
    (["--remove_unused_columns", "true"], "--remove_unused_columns must stay false"),
    (["--optim_args", "momentum=0.5"], "--optim_args is not used by SETR's optimizers"),
]


@pytest.mark.parametrize(
    ("command", "extra", "message"),
    [(c, extra, message) for c in COMMANDS for extra, message in REFUSALS]
    + [("train", extra, message) for extra, message in TRAINER_ONLY_REFUSALS],
)
def test_refused_in_one_line_before_anything_is_written(command, extra, message, ade_root, tmp_path, capsys):
    output_dir = tmp_path / "never"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(base_args(command, ade_root, output_dir, *extra))
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    error = next(line for line in errors if "error:" in line)
    assert error.startswith(f"setr {command}: error: ") and message in error, errors
    assert "Traceback" not in "\n".join(errors) and not output_dir.exists()


# --- frozen encoder and LoRA --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory) -> Path:
    """A tiny naive SETR on ADE20K's 150 classes, the model the frozen and LoRA runs start from."""
    from transformers_setr.training import PRESETS, config_for_preset

    folder = tmp_path_factory.mktemp("base") / "tiny"
    torch.manual_seed(0)
    config = config_for_preset(PRESETS["setr-naive-vit-large-ade20k-512"], **json.loads(TINY), image_size=32)
    model = SetrForSemanticSegmentation(config)
    model.save_pretrained(folder)
    return folder


def logits_of(model: torch.nn.Module, pixel_values: torch.Tensor, grad: bool = False) -> torch.Tensor:
    model.eval()
    with torch.set_grad_enabled(grad):
        return model(pixel_values=pixel_values).logits.detach()


@pytest.mark.parametrize("command", COMMANDS)
def test_frozen_encoder_trains_only_the_heads(command, ade_root, tiny_model_folder, tmp_path):
    output_dir = tmp_path / "frozen"
    extra = ["--model_name_or_path", str(tiny_model_folder), "--freeze_encoder", "--activation_checkpointing"]
    assert cli.main(base_args(command, ade_root, output_dir, *extra)) == 0
    before = SetrForSemanticSegmentation.from_pretrained(tiny_model_folder).state_dict()
    after = SetrForSemanticSegmentation.from_pretrained(output_dir).state_dict()
    assert before.keys() == after.keys()
    for key, value in after.items():
        if key.startswith("setr."):
            torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
    assert not torch.equal(after["decode_head.classifier.weight"], before["decode_head.classifier.weight"])
    assert "encoder frozen" in (output_dir / "README.md").read_text()


@pytest.mark.parametrize("command", COMMANDS)
def test_lora_trains_saves_reloads_and_merges(command, ade_root, tiny_model_folder, tmp_path):
    from peft import PeftModel

    output_dir = tmp_path / "lora"
    extra = ["--model_name_or_path", str(tiny_model_folder), "--lora_rank", "4", "--lora_alpha", "8"]
    extra += ["--activation_checkpointing"]
    assert cli.main(base_args(command, ade_root, output_dir, *extra)) == 0
    adapter_config = json.loads((output_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and "decode_head" in adapter_config["modules_to_save"]
    assert (output_dir / "adapter" / "adapter_model.safetensors").is_file()

    # the README's snippet: the base model, then the adapter
    config = SetrConfig.from_pretrained(output_dir)
    base = SetrForSemanticSegmentation.from_pretrained(tiny_model_folder, config=config, ignore_mismatched_sizes=True)
    adapted = PeftModel.from_pretrained(base, output_dir / "adapter")
    merged = SetrForSemanticSegmentation.from_pretrained(output_dir)  # a plain SETR folder, no peft needed
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    adapter_logits = logits_of(adapted, pixel_values)  # no autograd: the fast path must leave LoRA's linears alone
    torch.testing.assert_close(adapter_logits, logits_of(adapted, pixel_values, grad=True), rtol=0, atol=1e-6)
    torch.testing.assert_close(logits_of(merged, pixel_values), adapter_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits_of(adapted.merge_and_unload(), pixel_values), adapter_logits, rtol=0, atol=1e-5)
    # the adapters learned (B starts at zero), the heads trained fully, the merged encoder moved
    original = SetrForSemanticSegmentation.from_pretrained(tiny_model_folder).state_dict()
    merged_state = merged.state_dict()
    assert not torch.equal(
        merged_state["setr.layers.0.attention.q_proj.weight"], original["setr.layers.0.attention.q_proj.weight"]
    )
    assert torch.equal(
        merged_state["setr.layers.0.layernorm_before.weight"], original["setr.layers.0.layernorm_before.weight"]
    )
    assert not torch.equal(merged_state["decode_head.classifier.weight"], original["decode_head.classifier.weight"])
    assert "LoRA rank 4 (alpha 8)" in (output_dir / "README.md").read_text()


def test_lora_linears_take_the_plain_path_of_the_cpu_fast_path(tiny_model_folder):
    """Under bf16 autocast without autograd the fast path fuses q/k/v and casts weights: never for LoRA layers."""
    from transformers_setr.training.adapt import add_lora

    model = add_lora(SetrForSemanticSegmentation.from_pretrained(tiny_model_folder), rank=4)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)  # adapters that change the output
    pixel_values = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            fast, plain = logits_of(model, pixel_values), logits_of(model, pixel_values, grad=True)
        torch.testing.assert_close(fast, plain, rtol=0, atol=1e-6 if not autocast else 3e-2)
    adapter_logits = logits_of(model, pixel_values, grad=True)
    merged = model.merge_and_unload()  # plain nn.Linear again: the fast path serves, with the merged weights
    torch.testing.assert_close(logits_of(merged, pixel_values), adapter_logits, rtol=0, atol=1e-5)
    without = SetrForSemanticSegmentation.from_pretrained(tiny_model_folder)
    assert not torch.allclose(logits_of(without, pixel_values), adapter_logits, atol=1e-3)


# --- the released PUP recipe at full ViT-L width ------------------------------------------------------------------


def test_one_adamw_layer_decay_step_of_vit_large_pup(ade_root, tmp_path, recorded):
    """The released PUP architecture (hidden 1024, 24 layers, PUP head and auxiliary heads) at a 64 crop."""
    started = time.perf_counter()
    args = [
        "train-loop", "--preset", "setr-pup-vit-large-ade20k-512", "--data", str(ade_root), "--backbone", "none",
        "--crop_size", "64", "--scale", "128,64", "--output_dir", str(tmp_path / "pup"), "--max_steps", "1",
        "--per_device_train_batch_size", "1", *MODERN, "--layer_decay", "0.9", "--warmup_steps", "0",
        "--poly_power", "1.0", "--poly_min_lr", "0", "--do_eval", "false",
    ]  # fmt: skip
    assert cli.main(args) == 0
    optimizer = recorded["optimizer"]
    scales = {g["name"]: g["lr_scale"] for g in optimizer.param_groups}
    assert scales["embeddings"] == pytest.approx(0.9**25) and scales["layer_23"] == pytest.approx(0.9)
    assert scales["layer_0"] == pytest.approx(0.9**24) and scales["heads"] == pytest.approx(10.0)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) > 300_000_000
    assert json.loads((tmp_path / "pup" / "train_losses.json").read_text())["losses"][0] > 0
    assert time.perf_counter() - started < 120


def readme_command(marker: str) -> list[str]:
    """The `setr train` command under the README comment line `marker`, as argv (continuation lines joined)."""
    import shlex

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split(marker, 1)[1].split("\n#", 1)[0].split("```", 1)[0]
    return shlex.split(block.replace("\\\n", " "))


@pytest.mark.parametrize("command", COMMANDS)
def test_the_readme_modern_recipe_runs_as_written(command, ade_root, tmp_path, recorded):
    argv = readme_command("# modern: AdamW, layer decay, linear warmup, linear decay to 0")
    assert argv[:2] == ["setr", "train"]
    flags = [item for item in argv[2:]]
    drop = {"--preset", "--output_dir"}  # the tiny run's own preset and folder
    kept = [item for i, item in enumerate(flags) if item not in drop and (i == 0 or flags[i - 1] not in drop)]
    assert "--layer_decay" in kept and "--warmup_steps" in kept
    # the README's flags, then the tiny run's step counts (6 steps: the warmup shortened to 2)
    assert cli.main([*base_args(command, ade_root, tmp_path / "run"), *kept, "--warmup_steps", "2"]) == 0
    optimizer = recorded["optimizer"]
    assert type(optimizer) is torch.optim.AdamW
    scales = {g["name"].removesuffix("_no_decay"): g["lr_scale"] for g in optimizer.param_groups}
    assert scales["layer_3"] == pytest.approx(0.9) and scales["embeddings"] == pytest.approx(0.9**5)
    encoder = [lrs[[g["name"] for g in optimizer.param_groups].index("heads")] / 10 for lrs in recorded["lrs"]]
    expected = [1e-6, 1e-6 + (1 - 1e-6) / 2, 1.0, 0.75, 0.5, 0.25]  # warmup 2, then poly power 1 to 0
    assert encoder == pytest.approx([6e-5 * f for f in expected], rel=1e-9)
