"""Training SETR heads on another encoder (`setr train --backbone` / `setr train-loop --backbone`): a locally saved
tiny DINOv2 learns the synthetic custom data frozen and unfrozen, on one and two processes; the recipes per family,
the layer-decay ids per family, the card, and the refusals."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, BeitConfig, Dinov2Config

from transformers_setr import SetrForSemanticSegmentation
from transformers_setr.data import load_segmentation_data
from transformers_setr.data.synthetic import make_synthetic_custom
from transformers_setr.presets import backbone_recipe
from transformers_setr.training.recipe import encoder_family, encoder_layer_id, parameter_groups
from transformers_setr.training.train_command import build_parser
from transformers_setr.training.train_command import main as main_trainer
from transformers_setr.training.workflow import parse_arguments as parse_with

from helpers.backbone_families import ALL_FAMILIES, SMALL, family_config, setr_config
from helpers.training_runs import TWO_CPU_PROCESSES, free_port, run_script


def parse_arguments(argv: list[str]) -> tuple:
    return parse_with(argv, parser=build_parser())


TINY_DINOV2 = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=28)
# SETR's own fields only: the encoder is the backbone's
HEADS = json.dumps({"out_indices": [0, 1, 2, 3], "decoder_channels": 16, "auxiliary_channels": 8})


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory) -> Path:
    """A tiny DINOv2 written by `save_pretrained` (patch 14, as the real ones)."""
    folder = tmp_path_factory.mktemp("encoders") / "tiny-dinov2"
    torch.manual_seed(0)
    AutoModel.from_config(Dinov2Config(patch_size=14, **TINY_DINOV2)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def custom_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("custom") / "sidewalk"
    return make_synthetic_custom(root, layout="folder", num_train=12, num_validation=4, image_size=(48, 64), seed=0)


def arguments(data: Path, output_dir: Path, backbone: Path | str, **changes: object) -> list[str]:
    """A short CPU run, as a user types it (the recipe's 1500 warm-up steps and 40k steps replaced)."""
    options = {
        "preset": "setr-naive-vit-large-ade20k-512",
        "backbone": backbone,
        "data": data,
        "config_overrides": HEADS,
        "crop_size": 28,
        "scale": "112,28",
        "output_dir": output_dir,
        "per_device_train_batch_size": 4,
        "learning_rate": 0.01,
        "warmup_steps": 0,
        "max_steps": 40,
        "logging_steps": 5,
        "eval_mode": "whole",
        "seed": 3,
        **changes,
    }
    return [item for key, value in options.items() for item in (f"--{key}", str(value))]


TRAINER_ONLY = {"eval_strategy": "no", "save_strategy": "no", "report_to": "none", "use_cpu": "true"}
TRAINER_ONLY |= {"disable_tqdm": "true", "dataloader_num_workers": 0}


def chance_miou(data) -> float:
    """mIoU of the best constant prediction (the most frequent class everywhere) on the validation split."""
    labels = np.concatenate(
        [data.example("validation", i).labels.ravel() for i in range(len(data.splits["validation"]))]
    )
    counts = np.bincount(labels[labels != 255])
    return counts.max() / counts.sum() / np.count_nonzero(counts)


def trainer_losses(output_dir: Path) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def encoder_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The saved encoder's weights under the names transformers loads them with (the backbone's)."""
    return {k: v for k, v in AutoModel.from_pretrained(folder).state_dict().items() if not k.startswith("pooler")}


@pytest.fixture(scope="module")
def runs(dinov2_folder, custom_data, tmp_path_factory) -> dict[str, Path]:
    """`setr train --backbone` frozen (`--freeze_encoder`) and unfrozen (`--freeze_encoder false`: the DINOv2
    recipe freezes by default)."""
    out = tmp_path_factory.mktemp("runs")
    done = {}
    for name, freeze in (("frozen", "true"), ("unfrozen", "false")):
        flag = ["--freeze_encoder"] if freeze == "true" else ["--freeze_encoder", "false"]
        options = TRAINER_ONLY
        assert main_trainer([*arguments(custom_data, out / name, dinov2_folder, **options), *flag]) == 0
        done[name] = out / name
    return done


@pytest.mark.parametrize("run", ["frozen", "unfrozen"])
def test_train_on_a_saved_dinov2_learns(runs, run, custom_data, dinov2_folder):
    output_dir = runs[run]
    losses = trainer_losses(output_dir)
    assert len(losses) == 8 and losses[-1] < 0.7 * losses[0], losses
    results = json.loads((output_dir / "eval_results.json").read_text())
    data = load_segmentation_data(custom_data)
    assert results["eval_mIoU"] > 2 * chance_miou(data), (results["eval_mIoU"], chance_miou(data))

    model = SetrForSemanticSegmentation.from_pretrained(output_dir).eval()
    assert model.config.backbone_config.model_type == "dinov2" and model.config.num_labels == 35
    saved, pretrained = model.backbone.state_dict(), encoder_weights(dinov2_folder)
    unchanged = [key for key, value in pretrained.items() if torch.equal(saved[key], value)]
    assert len(pretrained) == len(saved)
    if run == "frozen":
        assert unchanged == list(pretrained)  # bit for bit: the frozen encoder is the pretrained one
    else:
        assert unchanged == ["embeddings.mask_token"], unchanged  # every other tensor trained (no mask in training)


def test_frozen_run_trained_the_heads_and_reloads_to_the_measured_miou(runs, custom_data, dinov2_folder):
    from transformers import set_seed

    from transformers_setr.evaluation.protocol import evaluate_segmentation
    from transformers_setr.training.workflow import build_model

    output_dir = runs["frozen"]
    # the model the run started from: the same arguments, the same seed
    model_args, data_args, args = parse_arguments([*arguments(custom_data, output_dir, dinov2_folder, **TRAINER_ONLY)])
    data = load_segmentation_data(custom_data)
    set_seed(args.seed)
    initial, _ = build_model(model_args, data_args, data)
    trained = SetrForSemanticSegmentation.from_pretrained(output_dir).eval()
    heads = [key for key in trained.state_dict() if key.startswith(("decode_head.", "auxiliary_heads."))]
    changed = [key for key in heads if not torch.equal(trained.state_dict()[key], initial.state_dict()[key])]
    assert heads and "decode_head.classifier.weight" in changed and len(changed) > len(heads) // 2

    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(output_dir)
    metrics = evaluate_segmentation(trained, processor, data, mode="whole", progress=False)
    measured = json.loads((output_dir / "eval_results.json").read_text())["eval_mIoU"]
    assert metrics["mIoU"] == pytest.approx(measured, abs=1e-6)
    again = SetrForSemanticSegmentation.from_pretrained(output_dir).eval()
    pixel_values = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        assert torch.equal(again(pixel_values).logits, trained(pixel_values).logits)


def test_card_names_the_encoder_its_weights_and_the_recipe(runs):
    card = (runs["frozen"] / "README.md").read_text()
    assert "- Encoder: DINOv2 (transformers `dinov2`), 4 layers, width 32, 2 heads, patch 14 (" in card
    assert "the pretrained encoder from a local folder `tiny-dinov2` (`from_backbone`)" in card
    assert "- Recipe: dinov2-frozen (`--backbone_recipe auto`): DINOv2's frozen-encoder protocol" in card
    assert "replaced on the command line: --freeze_encoder, --learning_rate, --max_steps, --warmup_steps" in card
    assert "encoder frozen (neck and heads trained)" in card and "AdamW" in card
    assert str(runs["frozen"].parent.parent) not in card  # no machine path
    unfrozen = (runs["unfrozen"] / "README.md").read_text()
    assert "encoder frozen (neck and heads trained)" not in unfrozen and "poly decay (power 1) to 0" in unfrozen


def test_train_loop_on_two_processes(dinov2_folder, custom_data, tmp_path):
    output_dir = tmp_path / "loop"
    loop = ["--checkpointing_steps", "100", "--dataloader_num_workers", "0"]
    launcher = [*TWO_CPU_PROCESSES, "--main_process_port", free_port(), "-m", "transformers_setr", "train-loop"]
    run_script([*arguments(custom_data, output_dir, dinov2_folder, per_device_train_batch_size=2), *loop], *launcher)
    record = json.loads((output_dir / "train_losses.json").read_text())
    assert record["num_processes"] == 2 and len(record["losses"]) == 40
    losses = record["losses"]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    data = load_segmentation_data(custom_data)
    assert json.loads((output_dir / "eval_results.json").read_text())["mIoU"] > 2 * chance_miou(data)
    model = SetrForSemanticSegmentation.from_pretrained(output_dir)
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in encoder_weights(dinov2_folder).items())
    card = (output_dir / "README.md").read_text()
    assert "global batch 4" in card and "- Encoder: DINOv2 (transformers `dinov2`)" in card


def test_trainer_on_two_processes(dinov2_folder, custom_data, tmp_path):
    """`accelerate launch ... -m transformers_setr train --backbone ...`: one group of two processes (global batch 4)
    trains the heads on the frozen encoder; every encoder weight equals the saved backbone's."""
    output_dir = tmp_path / "trainer"
    launcher = [*TWO_CPU_PROCESSES, "--main_process_port", free_port(), "-m", "transformers_setr", "train"]
    options = {**TRAINER_ONLY, "per_device_train_batch_size": 2, "max_steps": 20, "eval_strategy": "no"}
    run_script(arguments(custom_data, output_dir, dinov2_folder, **options), *launcher)
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["train_batch_size"] == 2 and state["global_step"] == 20
    assert "global batch 4," in (output_dir / "README.md").read_text()  # 2 per device x 2 processes
    losses = trainer_losses(output_dir)
    assert losses[-1] < losses[0], losses
    model = SetrForSemanticSegmentation.from_pretrained(output_dir)
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in encoder_weights(dinov2_folder).items())


def expected_layer_id(name: str, num_layers: int) -> int:
    """Written from the printed parameter names of each family, independently of the table under test."""
    if not name.startswith("backbone."):
        return num_layers + 1  # neck and heads
    numbered = re.search(r"\.(?:layer|layers|blocks)\.(\d+)\.", name)
    if numbered:
        return int(numbered.group(1)) + 1
    stem = ("embeddings.", "cls_token", "pos_embed", "patch_embed", "reg_token")
    return 0 if any(part in name for part in stem) else num_layers + 1  # a final norm: with the heads


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_layer_decay_ids_per_family(family):
    model = SetrForSemanticSegmentation(setr_config(family_config(family), "mla"))
    num_layers = model.config.num_hidden_layers
    encoder_names = {f"backbone.{name}" for name, _ in model.encoder.named_parameters()}
    ids = {}
    for name, _ in model.named_parameters():
        ids[name] = encoder_layer_id(name, num_layers, encoder_family(model.config))
        assert ids[name] == expected_layer_id(name, num_layers), name
        if name not in encoder_names:
            assert ids[name] == num_layers + 1, name
    # every encoder layer and the embeddings are found
    assert {ids[name] for name in encoder_names} >= set(range(num_layers + 1))
    groups = parameter_groups(model, 1e-3, head_lr_multiplier=1.0, layer_decay=0.5)
    lrs = {id(p): group["lr"] for group in groups for p in group["params"]}
    for name, parameter in model.named_parameters():
        assert lrs[id(parameter)] == pytest.approx(1e-3 * 0.5 ** (num_layers + 1 - ids[name])), name
    assert lrs[id(model.decode_head.classifier.weight)] == 1e-3  # the heads at the base lr


def test_lora_on_a_backbone_and_its_refusal_for_eva02():
    from transformers_setr.training.adapt import add_lora

    model = SetrForSemanticSegmentation(setr_config(family_config("dinov2")))
    lora = add_lora(model, rank=2)
    wrapped = [name for name, _ in lora.named_parameters() if "lora_A" in name]
    assert len(wrapped) == 4 * 6 and all(".backbone.encoder.layer." in name for name in wrapped)
    eva = SetrForSemanticSegmentation(setr_config(family_config("eva02_tiny_patch14_224.mim_in22k")))
    with pytest.raises(ValueError, match="bypasses its qkv module") as error:
        add_lora(eva, rank=2)
    assert "\n" not in str(error.value)


def test_recipe_defaults_per_family_and_explicit_flags_win(dinov2_folder, custom_data, tmp_path):
    base = ["--backbone", str(dinov2_folder), "--data", str(custom_data), "--output_dir", str(tmp_path / "x")]
    model_args, _, args = parse_arguments([*base, *TRAINER_ARGS])
    assert model_args.recipe.name == "dinov2-frozen"
    assert (args.freeze_encoder, args.optim, args.learning_rate, args.weight_decay) == (
        True,
        "adamw_torch",
        1e-3,
        1e-4,
    )
    assert (args.warmup_steps, args.max_steps, args.head_lr_multiplier, args.poly_power) == (1500, 40000, 1.0, 1.0)
    # an explicit flag wins, and one that contradicts a recipe value drops it (--layer_decay: not frozen)
    _, _, args = parse_arguments([*base, *TRAINER_ARGS, "--learning_rate", "0.5", "--layer_decay", "0.8"])
    assert (args.learning_rate, args.layer_decay, args.freeze_encoder, args.optim) == (0.5, 0.8, False, "adamw_torch")
    model_args, _, args = parse_arguments([*base, *TRAINER_ARGS, "--backbone_recipe", "none"])
    assert model_args.recipe is None and (args.optim, args.freeze_encoder, args.learning_rate) == ("sgd", False, 0.001)
    beit = tmp_path / "tiny-beit"
    AutoModel.from_config(
        BeitConfig(patch_size=16, image_size=32, **{**SMALL, "num_hidden_layers": 24})
    ).save_pretrained(beit)
    base[1] = str(beit)
    model_args, _, args = parse_arguments([*base, *TRAINER_ARGS])
    assert model_args.recipe.name == "beit-large"  # mmseg's BEiT-L config: lr 2e-5, decay 0.95, warm-up 3000
    assert (args.learning_rate, args.layer_decay, args.warmup_steps, args.weight_decay) == (2e-5, 0.95, 3000, 0.05)
    assert backbone_recipe("timm_backbone", 24, "vit_large_patch16_224.mae").name == "mae"
    assert backbone_recipe("timm_backbone", 24, "vit_large_patch16_224.augreg_in21k").arguments == {}


TRAINER_ARGS = ["--report_to", "none", "--use_cpu", "true"]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model_name_or_path": "some-model"}, "builds a fresh model and --model_name_or_path"),
        ({"config_overrides": '{"hidden_size": 64}'}, r"--config_overrides \['hidden_size'\]: the encoder is"),
        ({"backbone": "none", "backbone_recipe": "auto"}, "--backbone_recipe is for an encoder --backbone"),
        ({"backbone": "vit_no_such_model_anywhere"}, "neither a transformers checkpoint nor a timm model name"),
        ({"backbone": "no-such-owner/no-such-model"}, "--backbone no-such-owner/no-such-model: "),
        ({"warmup_steps": 2000}, "the warmup"),
    ],
)
def test_refusals_are_one_line(dinov2_folder, custom_data, tmp_path, capsys, changes, message):
    options = {"backbone": dinov2_folder, **changes}
    argv = arguments(custom_data, tmp_path / "run", options.pop("backbone"), **TRAINER_ONLY, **options)
    with pytest.raises(SystemExit) as exit_info:
        main_trainer(argv)
    error = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(error) == 1 and re.search(message, error[0]), error
    assert error[0].startswith(f"{Path(sys.argv[0]).name}: error: ")
    assert not (tmp_path / "run").exists()


def test_the_processor_and_the_augmentation_normalise_as_the_encoder_was_pretrained(
    dinov2_folder, custom_data, tmp_path
):
    """The saved processor and the training augmentation use the encoder's pretraining statistics: a checkpoint's own
    preprocessor_config.json, else the family's (BEiT: 0.5 / 0.5; DINOv2: ImageNet, not BitImageProcessor's CLIP
    default), a timm model's pretrained_cfg; the built-in encoder keeps mmseg's ImageNet values."""
    from transformers import BitImageProcessor

    from transformers_setr.training.workflow import build_train_dataset, load_data_and_model

    beit_folder = tmp_path / "tiny-beit"
    AutoModel.from_config(BeitConfig(**SMALL, patch_size=16, use_mask_token=False)).save_pretrained(beit_folder)
    with_processor = tmp_path / "dinov2-with-processor"
    AutoModel.from_pretrained(dinov2_folder).save_pretrained(with_processor)
    BitImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6]).save_pretrained(with_processor)
    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    from helpers.training_runs import TINY

    cases = {
        str(dinov2_folder): imagenet,
        str(with_processor): ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6]),
        str(beit_folder): ([0.5] * 3, [0.5] * 3),
        "none": imagenet,  # the built-in encoder (tiny here): mmseg's 123.675 ... / 58.395 ...
    }
    for backbone, (mean, std) in cases.items():
        built_in = {"config_overrides": TINY, "crop_size": 32, "scale": "128,32"} if backbone == "none" else {}
        model_args, data_args, training_args = parse_arguments(
            arguments(custom_data, tmp_path / "never", backbone, **TRAINER_ONLY, **built_in)
        )
        _, data, model, processor = load_data_and_model(model_args, data_args, training_args.seed)
        assert list(processor.image_mean) == pytest.approx(mean), backbone
        assert list(processor.image_std) == pytest.approx(std), backbone
        augmentation = build_train_dataset(data, data_args, model, processor, seed=0).augmentation
        assert augmentation.image_mean == pytest.approx(tuple(255 * v for v in mean)), backbone
        assert augmentation.image_std == pytest.approx(tuple(255 * v for v in std)), backbone
        if backbone == "none":  # bit for bit the mmseg values the augmentation replay was recorded with
            assert torch.equal(augmentation._mean.flatten(), torch.tensor((123.675, 116.28, 103.53)))
            assert torch.equal(augmentation._std.flatten(), torch.tensor((58.395, 57.12, 57.375)))
    # timm: the model's own pretrained_cfg (AugReg: 0.5 / 0.5; EVA-02: CLIP's), not a family table
    from types import SimpleNamespace

    from transformers_setr.training.workflow import backbone_normalisation

    augreg = SimpleNamespace(model_type="timm_backbone", backbone="vit_large_patch16_224.augreg_in21k")
    assert backbone_normalisation("unused", augreg) == ((0.5,) * 3, (0.5,) * 3)
    eva = SimpleNamespace(model_type="timm_backbone", backbone="eva02_tiny_patch14_224.mim_in22k")
    assert backbone_normalisation("unused", eva)[0] == pytest.approx((0.48145466, 0.4578275, 0.40821073))
