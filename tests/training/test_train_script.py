"""`scripts/train.py` as users run it: every released recipe from a timm-format pretrain (the default ViT-L/16
backbone through the real download cache), `--help`, the slide stride, the output-folder guard and resuming from
the newest complete checkpoint."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transformers_setr import SetrForSemanticSegmentation
from transformers_setr.presets import PRESETS, TIMM_VIT_LARGE_URL
from transformers_setr.training import SetrTrainingArguments
from transformers_setr.training.train_command import main as main_trainer

from helpers.training_runs import (
    PYTHON,
    ROOT,
    SCRIPT_ENV,
    TINY,
    TINY_FIELDS,
    common_args,
    run_train_script,
    step_losses,
)

# TINY plus the MLA widths (decoder_channels = 4 feature levels x mla_channels), so one string fits all seven presets.
TINY_ANY_DECODER = json.dumps({**TINY_FIELDS, "mla_channels": 4, "mla_neck_channels": 8})


def timm_vit_state_dict(
    width: int, depth: int, mlp: int, grid: int, num_classes: int = 1000, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A state dict with the key names, order and shapes of timm's `VisionTransformer` (patch 16, cls token, qkv
    bias, final norm, classifier), e.g. `jx_vit_large_p16_384` for (1024, 24, 4096, 24). Values: cheap N(0, 0.02)
    (LayerNorm weights 1), enough for a finite loss."""
    shapes = {
        "cls_token": (1, 1, width),
        "pos_embed": (1, 1 + grid * grid, width),
        "patch_embed.proj.weight": (width, 3, 16, 16),
        "patch_embed.proj.bias": (width,),
    }
    for i in range(depth):
        shapes.update(
            {
                f"blocks.{i}.norm1.weight": (width,),
                f"blocks.{i}.norm1.bias": (width,),
                f"blocks.{i}.attn.qkv.weight": (3 * width, width),
                f"blocks.{i}.attn.qkv.bias": (3 * width,),
                f"blocks.{i}.attn.proj.weight": (width, width),
                f"blocks.{i}.attn.proj.bias": (width,),
                f"blocks.{i}.norm2.weight": (width,),
                f"blocks.{i}.norm2.bias": (width,),
                f"blocks.{i}.mlp.fc1.weight": (mlp, width),
                f"blocks.{i}.mlp.fc1.bias": (mlp,),
                f"blocks.{i}.mlp.fc2.weight": (width, mlp),
                f"blocks.{i}.mlp.fc2.bias": (width,),
            }
        )
    shapes.update({"norm.weight": (width,), "norm.bias": (width,), "head.weight": (num_classes, width)})
    shapes["head.bias"] = (num_classes,)
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key, shape in shapes.items():
        tensor = torch.empty(shape)
        if re.search(r"norm\d?\.weight$", key):
            tensor.fill_(1.0)
        else:
            tensor.normal_(0, 0.02, generator=generator)
        state_dict[key] = tensor
    return state_dict


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    from transformers_setr.data.synthetic import make_synthetic_ade20k

    return make_synthetic_ade20k(
        tmp_path_factory.mktemp("ade"), layout="raw", num_train=4, num_validation=2, image_size=(48, 64), seed=0
    )


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory):
    from transformers_setr.data.synthetic import make_synthetic_cityscapes

    return make_synthetic_cityscapes(
        tmp_path_factory.mktemp("cityscapes"), layout="raw", num_train=4, num_validation=2, image_size=(48, 64)
    )


@pytest.fixture(scope="module")
def tiny_timm_file(tmp_path_factory) -> Path:
    """A 32-wide, 4-block timm-format ViT with a 4x4 position grid (resized to the 2x2 grid of a 32 crop)."""
    path = tmp_path_factory.mktemp("timm") / "vit_tiny_patch16.pth"
    torch.save(timm_vit_state_dict(width=32, depth=4, mlp=64, grid=4), path)
    return path


def one_step_args(data_root: Path, output_dir: Path, preset: str, **overrides) -> list[str]:
    return common_args(
        data_root,
        output_dir,
        preset=preset,
        config_overrides=TINY_ANY_DECODER,
        max_steps=1,
        per_device_train_batch_size=2,
        do_eval="false",
        **overrides,
    )


# --- defect 1: every released recipe starts (timm pretrain loaded), one optimizer step -----------------------------


@pytest.mark.parametrize("preset_name", sorted(PRESETS))
def test_every_preset_trains_one_step_from_a_timm_pretrain(
    preset_name, ade_root, cityscapes_root, tiny_timm_file, tmp_path, caplog
):
    preset = PRESETS[preset_name]
    data = ade_root if preset.dataset == "ade20k" else cityscapes_root
    output_dir = tmp_path / "run"
    with caplog.at_level("INFO", logger="transformers_setr.train"):
        main_trainer(one_step_args(data, output_dir, preset_name, backbone=str(tiny_timm_file)))

    loaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("encoder initialised from")]
    assert len(loaded) == 1 and str(tiny_timm_file) in loaded[0], loaded
    assert "loaded 68 encoder tensors" in loaded[0] and "resized (4, 4) -> (2, 2)" in loaded[0], loaded
    assert list(step_losses(output_dir)) == [1]
    config = SetrForSemanticSegmentation.from_pretrained(output_dir).config
    assert (config.decoder_type, config.auxiliary_num_convs) == (preset.decoder_type, preset.auxiliary_num_convs)
    assert config.num_labels == (150 if preset.dataset == "ade20k" else 19)
    assert config.slide_window == ((32, 32), (21, 21))  # two thirds of the 32 crop, rounded down


@pytest.mark.parametrize("problem", ["missing", "wider", "truncated"])
def test_a_backbone_file_that_does_not_fit_is_one_line_naming_it(ade_root, tmp_path, capsys, problem):
    backbone = tmp_path / "vit.pth"
    if problem == "wider":
        torch.save(timm_vit_state_dict(width=64, depth=4, mlp=128, grid=4), backbone)
    elif problem == "truncated":
        torch.save(timm_vit_state_dict(width=32, depth=4, mlp=64, grid=4), backbone)
        backbone.write_bytes(backbone.read_bytes()[:1000])
    args = one_step_args(ade_root, tmp_path / "run", "setr-naive-vit-large-ade20k-512", backbone=str(backbone))
    with pytest.raises(SystemExit) as exit_info:
        main_trainer(args)
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    error = stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr
    assert error.startswith(f"{Path(sys.argv[0]).name}: error: --backbone {backbone}: ")
    assert {"missing": "neither a file", "wider": "does not fit", "truncated": "not a readable"}[problem] in error
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def vit_large_cache(tmp_path_factory):
    """A download cache holding a `jx_vit_large_p16_384` stand-in (random values, timm's keys and shapes, 24x24
    position grid, 1.2 GB) under the name the real download gets."""
    cache = tmp_path_factory.mktemp("setr-cache")
    (cache / "timm").mkdir()
    name = TIMM_VIT_LARGE_URL.rsplit("/", 1)[1]
    torch.save(timm_vit_state_dict(width=1024, depth=24, mlp=4096, grid=24), cache / "timm" / name)
    yield cache
    (cache / "timm" / name).unlink()  # pytest keeps its last temporary folders: not 1.2 GB each


def test_timm_stand_in_has_the_keys_and_shapes_of_vit_large_patch16_384():
    timm = pytest.importorskip("timm", reason="timm is a dev dependency")
    with torch.device("meta"):
        reference = timm.create_model("vit_large_patch16_384", pretrained=False).state_dict()
        stand_in = timm_vit_state_dict(width=1024, depth=24, mlp=4096, grid=24)
    assert list(stand_in) == list(reference)
    assert {key: tuple(value.shape) for key, value in stand_in.items()} == {
        key: tuple(value.shape) for key, value in reference.items()
    }


@pytest.mark.parametrize("crop", [32, pytest.param(512, marks=pytest.mark.heavy)])
def test_default_vit_large_backbone_through_the_download_cache(ade_root, vit_large_cache, tmp_path, crop):
    """The README's command with the real ViT-L/16 width and no `--backbone`: the encoder comes from the cached
    `jx_vit_large_p16_384` (the network is never needed once the file is in the cache). CI: a 32 crop (~4.5 GB peak
    RSS); heavy: the released 512 crop."""
    output_dir = tmp_path / "vit-l"
    args = common_args(
        ade_root,
        output_dir,
        config_overrides="",
        crop_size=crop,
        scale=f"{4 * crop},{crop}",
        max_steps=1,
        per_device_train_batch_size=1,
        do_eval="false",
    )
    try:
        result = run_train_script(args, env={"TRANSFORMERS_SETR_CACHE": str(vit_large_cache)})
        assert result.returncode == 0, result.stderr[-6000:]
        cached = vit_large_cache / "timm" / TIMM_VIT_LARGE_URL.rsplit("/", 1)[1]
        assert f"encoder initialised from vit-large-p16-384: loaded 388 encoder tensors from {cached}" in result.stderr
        assert f"position table resized (24, 24) -> ({crop // 16}, {crop // 16})" in result.stderr
        assert list(step_losses(output_dir)) == [1]
        config = json.loads((output_dir / "config.json").read_text())
        assert (config["hidden_size"], config["num_hidden_layers"], config["patch_size"]) == (1024, 24, 16)
    finally:
        (output_dir / "model.safetensors").unlink(missing_ok=True)


# --- defect 5: --help lists every option with the preset's defaults ---------------------------------------------


def help_entries(text: str) -> dict[str, str]:
    """`--option` -> its help entry (continuation lines joined) in argparse's `--help` output."""
    entries, current = {}, None
    for line in text.splitlines():
        match = re.match(r"^  (-{1,2}[\w-]+)", line)
        if match:
            current = match.group(1)
            entries[current] = line.strip()
        elif current and line.startswith("    "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def test_help_lists_every_option_with_the_preset_defaults():
    result = run_train_script(["--help"])
    assert result.returncode == 0, result.stderr[-3000:]
    entries = help_entries(result.stdout)
    expected = {  # the default preset, setr-pup-vit-large-ade20k-512: 16 images on 8 GPUs, 160k iterations, lr 0.001
        "--preset": "(default: setr-pup-vit-large-ade20k-512)",
        "--data": "zhoubolei/scene_parse_150",
        "--crop_size": "512",
        "--scale": "2048,512",
        "--learning_rate": "(default: 0.001)",
        "--max_steps": "(default: 160000)",
        "--per_device_train_batch_size": "(default: 2)",
        "--eval_steps": "(default: 16000)",
        "--weight_decay": "(default: 0.0)",
        "--bf16": "(default: False)",
        "--output_dir": "--output_dir",
        "--overwrite_output_dir": "(default: False)",
        "--resume_from_checkpoint": "--resume_from_checkpoint",
        "--head_lr_multiplier": "(default: 10.0)",
        "--eval_mode": "(default: slide)",
    }
    for option, text in expected.items():
        assert option in entries and text in entries[option], (option, entries.get(option))
    assert len(entries) > 100  # every TrainingArguments field, not only the model arguments


def test_help_of_another_preset_shows_its_recipe(capsys, monkeypatch):
    from transformers_setr.training.workflow import parse_arguments

    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit) as exit_info:
        parse_arguments(["--preset", "setr-pup-vit-large-cityscapes-768", "--help"], (SetrTrainingArguments,))
    assert exit_info.value.code == 0
    entries = help_entries(capsys.readouterr().out)
    assert "(default: 80000)" in entries["--max_steps"] and "(default: 0.01)" in entries["--learning_rate"]
    assert "(default: 1)" in entries["--per_device_train_batch_size"]
    assert "768" in entries["--crop_size"] and "2049,1025" in entries["--scale"] and "--data" in entries["--data"]


def test_a_json_arguments_file_gets_the_preset_recipe_too(tmp_path):
    from transformers_setr.training.workflow import parse_arguments

    arguments = tmp_path / "args.json"
    arguments.write_text(
        json.dumps({"preset": "setr-mla-vit-large-cityscapes-768", "output_dir": str(tmp_path), "max_steps": 10})
    )
    model_args, _, args = parse_arguments([str(arguments)], (SetrTrainingArguments,))
    assert model_args.preset == "setr-mla-vit-large-cityscapes-768"
    assert (args.max_steps, args.learning_rate, args.per_device_train_batch_size, args.eval_steps) == (
        10,
        0.002,
        1,
        8000,
    )
    assert args.eval_strategy.value == "steps" and args.weight_decay == 0.0


# --- defect 3: one slide-stride rule -------------------------------------------------------------------------------


@pytest.mark.parametrize(("crop", "stride"), [(512, 341), (768, 512)])
def test_crop_size_sets_the_released_slide_stride(ade_root, tmp_path, crop, stride):
    """mmseg's SETR configs: stride 341 for the 512 crop (ADE20K), 512 for 768 (Cityscapes)."""
    from transformers_setr.data import load_segmentation_data
    from transformers_setr.training.workflow import build_model, parse_arguments

    argv = ["--preset", "setr-naive-vit-large-ade20k-512", "--config_overrides", TINY, "--crop_size", str(crop)]
    model_args, data_args, _ = parse_arguments([*argv, "--output_dir", str(tmp_path)], (SetrTrainingArguments,))
    model, _ = build_model(model_args, data_args, load_segmentation_data(ade_root))
    assert model.config.slide_window == ((crop, crop), (stride, stride))
    assert {preset.crop_size: preset.slide_stride for preset in PRESETS.values()} == {512: 341, 768: 512}


# --- defect 7: an earlier run's output folder ----------------------------------------------------------------------


def folder_snapshot(folder: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every path under `folder` (sub-folders included) with its bytes and modification time."""
    return {
        str(path.relative_to(folder)): (path.read_bytes() if path.is_file() else None, path.stat().st_mtime_ns)
        for path in [folder, *sorted(folder.rglob("*"))]
    }


def test_an_earlier_runs_folder_is_refused_and_left_untouched(ade_root, tmp_path):
    output_dir = tmp_path / "earlier"
    output_dir.mkdir()
    for name, content in {"model.safetensors": "weights", "README.md": "card", "eval_results.json": "{}"}.items():
        (output_dir / name).write_text(content)
    before = folder_snapshot(output_dir)

    result = run_train_script(one_step_args(ade_root, output_dir, "setr-naive-vit-large-ade20k-512"))

    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("train.py: error: --output_dir ") and str(output_dir) in error
    assert "--overwrite_output_dir" in error and "--resume_from_checkpoint" in error
    assert folder_snapshot(output_dir) == before


def test_the_accelerate_loop_refuses_an_earlier_runs_folder_too(ade_root, tmp_path):
    output_dir = tmp_path / "earlier"
    output_dir.mkdir()
    (output_dir / "README.md").write_text("an earlier card")
    before = folder_snapshot(output_dir)
    arguments = [
        "--preset",
        "setr-naive-vit-large-ade20k-512",
        "--data",
        str(ade_root),
        "--output_dir",
        str(output_dir),
    ]
    environment = {**os.environ, **SCRIPT_ENV}
    result = subprocess.run(
        [PYTHON, "scripts/train_no_trainer.py", *arguments],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("train_no_trainer.py: error: --output_dir ") and "--overwrite_output_dir" in error
    assert folder_snapshot(output_dir) == before


def test_overwrite_output_dir_writes_over_an_earlier_run(ade_root, tmp_path):
    output_dir = tmp_path / "earlier"
    output_dir.mkdir()
    (output_dir / "README.md").write_text("an earlier card")
    main_trainer(one_step_args(ade_root, output_dir, "setr-naive-vit-large-ade20k-512", overwrite_output_dir="true"))
    card = (output_dir / "README.md").read_text()
    assert "an earlier card" not in card and "setr-naive-vit-large-ade20k-512" in card
    assert list(step_losses(output_dir)) == [1]


def test_resume_last_skips_a_half_written_newest_checkpoint(ade_root, tmp_path, caplog):
    output_dir = tmp_path / "run"
    shared = dict(max_steps=4, save_strategy="steps", save_steps=2, do_eval="false")
    main_trainer(common_args(ade_root, output_dir, **shared))
    reference = step_losses(output_dir)
    # What a kill while saving step 4 leaves: the weights, a truncated optimizer, no RNG state nor trainer state.
    newest, complete = output_dir / "checkpoint-4", output_dir / "checkpoint-2"
    (newest / "trainer_state.json").unlink()
    (newest / "rng_state.pth").unlink()
    optimizer = newest / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])

    with caplog.at_level("INFO", logger="transformers_setr.train"):
        main_trainer(common_args(ade_root, output_dir, **shared, resume_from_checkpoint="last"))

    resumed_from = [r.getMessage() for r in caplog.records if "newest complete checkpoint" in r.getMessage()]
    assert len(resumed_from) == 1 and str(complete) in resumed_from[0] and str(newest) in resumed_from[0]
    assert "no trainer_state.json" in resumed_from[0]
    resumed = step_losses(output_dir)
    for step in (3, 4):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), (step, resumed, reference)


def write_complete_checkpoint(folder: Path, step: int) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, folder / "model.safetensors")
    torch.save({"state": {}}, folder / "optimizer.pt")
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_checkpoint_completeness_and_resume_resolution(tmp_path):
    from transformers_setr.training.workflow import (
        OutputDirError,
        resolve_resume_checkpoint,
        trainer_checkpoint_problem,
    )

    good = write_complete_checkpoint(tmp_path / "run" / "checkpoint-2", 2)
    assert trainer_checkpoint_problem(good) is None
    damaged = {
        "trainer_state.json": (lambda p: p.write_text('{"global_st'), "unreadable trainer_state.json"),
        "model.safetensors": (lambda p: p.write_bytes(p.read_bytes()[:10]), "unreadable model.safetensors"),
        "scheduler.pt": (lambda p: p.unlink(), "no scheduler.pt"),
        "optimizer.pt": (lambda p: p.write_bytes(p.read_bytes()[:-30]), "unreadable optimizer.pt"),
    }
    for index, (name, (damage, problem)) in enumerate(damaged.items()):
        folder = write_complete_checkpoint(tmp_path / f"damaged-{index}" / "checkpoint-9", 9)
        damage(folder / name)
        assert problem in trainer_checkpoint_problem(folder), name
        with pytest.raises(OutputDirError, match="only incomplete checkpoints: .*checkpoint-9"):
            resolve_resume_checkpoint("last", folder.parent)
        with pytest.raises(OutputDirError, match="not a complete checkpoint"):
            resolve_resume_checkpoint(str(folder), folder.parent)
        assert resolve_resume_checkpoint("last", folder.parent, overwrite=True) is None

    assert resolve_resume_checkpoint("last", tmp_path / "run") == str(good)
    assert resolve_resume_checkpoint(str(good), tmp_path / "elsewhere") == str(good)
    assert resolve_resume_checkpoint("last", tmp_path / "absent") is None  # a first start: nothing to resume yet
    (tmp_path / "finished").mkdir()
    (tmp_path / "finished" / "model.safetensors").write_text("weights")
    with pytest.raises(OutputDirError, match="no checkpoint-\\* folder"):
        resolve_resume_checkpoint("last", tmp_path / "finished")


def test_output_dir_guard_cases(tmp_path):
    from transformers_setr.training.workflow import OutputDirError, check_output_dir, resolve_resume_checkpoint

    check_output_dir(tmp_path / "new", overwrite=False, resume=False)  # absent: a first run
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", overwrite=False, resume=False)
    (tmp_path / "file").write_text("not a folder")
    for overwrite in (False, True):
        with pytest.raises(OutputDirError, match="exists and is not a folder"):
            check_output_dir(tmp_path / "file", overwrite=overwrite, resume=False)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "eval_results.json").write_text("{}")
    with pytest.raises(OutputDirError, match="is not empty"):
        check_output_dir(tmp_path / "used", overwrite=False, resume=False)
    check_output_dir(tmp_path / "used", overwrite=True, resume=False)
    check_output_dir(tmp_path / "used", overwrite=False, resume=True)
    with pytest.raises(OutputDirError, match="nowhere/checkpoint-3: not a complete checkpoint: not a folder"):
        resolve_resume_checkpoint(str(tmp_path / "nowhere" / "checkpoint-3"), tmp_path / "used")


def test_fine_tuning_a_folder_on_other_classes_gets_a_new_classifier_and_the_data_palette(
    ade_root, cityscapes_root, tmp_path
):
    """`--model_name_or_path` of a 150-class ADE20K model on Cityscapes (19 classes): a new classifier, every other
    weight kept (learning rate 1e-12, the least a run accepts: one step changes nothing measurable), and Cityscapes'
    names and palette in the saved config."""
    from transformers_setr.data.label_tables import DATASETS

    source = tmp_path / "ade-model"
    main_trainer(one_step_args(ade_root, source, "setr-naive-vit-large-ade20k-512"))
    tuned = tmp_path / "tuned"
    main_trainer(
        one_step_args(
            cityscapes_root,
            tuned,
            "setr-naive-vit-large-cityscapes-768",
            model_name_or_path=source,
            learning_rate=1e-12,  # zero is refused
            poly_min_lr=0,
            scale="128,32",
        )
    )
    before = SetrForSemanticSegmentation.from_pretrained(source).state_dict()
    after = SetrForSemanticSegmentation.from_pretrained(tuned)
    assert after.config.num_labels == 19
    assert after.config.id2label[0] == "road" and after.config.id2label[18] == "bicycle"
    assert [tuple(colour) for colour in after.config.palette] == [tuple(c) for c in DATASETS["cityscapes"]["palette"]]
    for key, value in after.state_dict().items():
        if "num_batches_tracked" in key or "running_" in key:
            continue  # BatchNorm statistics move in a training step whatever the learning rate
        if value.shape != before[key].shape:
            assert key.endswith(("classifier.weight", "classifier.bias")), key  # only the class-count layers change
            continue
        torch.testing.assert_close(value, before[key], rtol=0, atol=1e-9, msg=key)
