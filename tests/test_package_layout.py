"""The package's rooms: the module paths of the flat 0.1 layout still work, folders saved by 0.1 still load with the
same logits, the shipped files stay self-contained, and the `setr` command dispatches to every command line."""

import ast
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation

import transformers_setr
from transformers_setr import SetrConfig, SetrForSemanticSegmentation
from transformers_setr._imports import MOVED_MODULES

ROOT = Path(__file__).resolve().parent.parent
PRE_0_2_FOLDER = Path(__file__).parent / "fixtures" / "pre-0.2-folder"  # scripts/make_layout_fixture.py
SHIPPED = Path(transformers_setr.__file__).parent / "models" / "setr"

# What tests, scripts and users imported from the flat modules of 0.1 (one or more names each).
NAMES_OF_0_1 = {
    "configuration_setr": ["SetrConfig", "check_slide_window", "default_slide_stride"],
    "modeling_setr": ["SetrForSemanticSegmentation", "SetrModel", "resize_position_embeddings", "slide_windows"],
    "image_processing_pil_setr": [
        "SetrImageProcessorPil",
        "SetrImageProcessingMixin",
        "SetrImageProcessorKwargs",
        "get_setr_resize_output_size",
        "reduce_segmentation_labels",
        "nearest_source_indices",
    ],
    "image_processing_setr": ["SetrImageProcessor"],
    "inference": ["multi_scale_flip_probabilities", "multi_scale_flip_segmentation", "MMSEG_TTA_RATIOS"],
    "segmentation_pipeline": ["SetrImageSegmentationPipeline"],
    "visualize": ["overlay_with_legend", "upscale_for_display", "colorize"],
    "conversion": ["CheckpointMismatchError", "load_checkpoint_file", "load_mmseg_state_dict", "MMSEG_KEY_RULES"],
    "convert_mmseg": ["convert_checkpoint", "config_from_mmseg_checkpoint", "processor_for", "verify_against_mmseg"],
    "convert_timm": ["TIMM_VIT_PRESETS", "convert_timm_vit_state_dict", "load_timm_vit_pretrain", "map_timm_key"],
    "presets": ["PRESETS", "HUB_DATASETS", "TIMM_VIT_LARGE_URL"],
    "data": ["DatasetFormatError", "SegmentationData", "UndeclaredClassesError", "load_segmentation_data"],
    "label_tables": ["ADE20K_CLASSES", "DATASETS", "id2label_for", "generate_palette"],
    "synthetic": ["make_synthetic_ade20k", "make_synthetic_cityscapes", "make_synthetic_custom"],
    "augmentation": ["SetrTrainAugmentation", "photometric_distortion"],
    "training": ["SetrTrainer", "SetrTrainingArguments", "build_poly_scheduler", "config_for_preset"],
    "training_script": ["main_trainer", "main_no_trainer", "parse_config_overrides", "build_model"],
    "metrics": ["MeanIoU", "evaluate_metric_path", "intersect_and_union", "trainer_compute_metrics"],
    "evaluation": ["EVAL_MODES", "evaluate_segmentation", "predict_labels", "needs_cpu_process_group"],
    "model_card": ["build_model_card", "hub_repo_id"],
    "mmseg_reference": ["reference_inputs"],
    "registration": ["register_auto_classes"],
}


@pytest.mark.parametrize("old_name", sorted(NAMES_OF_0_1))
def test_every_module_path_of_0_1_still_imports_its_names(old_name):
    module = importlib.import_module(f"transformers_setr.{old_name}")
    for name in NAMES_OF_0_1[old_name]:
        assert getattr(module, name) is not None, f"transformers_setr.{old_name}.{name}"
    if old_name in MOVED_MODULES:
        # the very module object of the new path: isinstance checks and monkeypatching keep working
        new = importlib.import_module(f"transformers_setr.{MOVED_MODULES[old_name]}")
        assert module is new and module.__spec__.name == new.__name__


def test_the_0_1_names_cover_every_moved_module():
    assert set(MOVED_MODULES) <= set(NAMES_OF_0_1)


def test_an_unknown_module_is_still_an_import_error():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("transformers_setr.no_such_module")
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        transformers_setr.data.no_such_name  # noqa: B018


def _load_fixture_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "saved-by-0.1"
    shutil.copytree(PRE_0_2_FOLDER, folder)
    return folder


def test_a_folder_saved_by_0_1_loads_with_identical_logits(tmp_path):
    folder = _load_fixture_copy(tmp_path)
    expected = torch.load(folder / "expected_logits.pt", weights_only=True)
    assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModelForSemanticSegmentation"] == (
        "modeling_setr.SetrForSemanticSegmentation"
    )
    model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    assert type(model) is SetrForSemanticSegmentation  # the registered class, not the folder's copy
    with torch.no_grad():
        whole = model(expected["pixel_values"], inference_mode="whole").logits
        slide = model(expected["pixel_values"]).logits
    assert (whole - expected["whole"]).abs().max().item() <= 1e-6
    assert (slide - expected["slide"]).abs().max().item() <= 1e-6
    assert type(AutoImageProcessor.from_pretrained(folder, backend="pil")).__name__ == "SetrImageProcessorPil"
    assert isinstance(AutoConfig.from_pretrained(folder), SetrConfig)


TRUST_REMOTE_CODE_OF_0_1 = """
import sys, torch
from transformers import AutoModelForSemanticSegmentation
folder = sys.argv[1]
model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
expected = torch.load(folder + "/expected_logits.pt", weights_only=True)
with torch.no_grad():
    whole = model(expected["pixel_values"], inference_mode="whole").logits
    slide = model(expected["pixel_values"]).logits
print("MODULE", type(model).__module__)
print("DIFF", max((whole - expected["whole"]).abs().max().item(), (slide - expected["slide"]).abs().max().item()))
"""


BLOCK_THE_PACKAGE = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "transformers_setr":
            raise ModuleNotFoundError("transformers_setr is blocked in this test")
sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize("package", ["installed", "absent"])
def test_a_folder_saved_by_0_1_loads_with_trust_remote_code(tmp_path, package):
    """With the package absent, the folder's own 0.1 code runs; with it installed, its registered classes do."""
    folder = _load_fixture_copy(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    prelude = "import transformers_setr\n" if package == "installed" else BLOCK_THE_PACKAGE
    completed = subprocess.run(
        [sys.executable, "-c", prelude + TRUST_REMOTE_CODE_OF_0_1, str(folder)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in completed.stdout.splitlines() if line.startswith(("MODULE", "DIFF")))
    expected_module = "transformers_setr." if package == "installed" else "transformers_modules."
    assert lines["MODULE"].startswith(expected_module)
    assert float(lines["DIFF"]) <= 1e-6


def test_the_shipped_files_import_only_torch_transformers_and_each_other():
    allowed = {"torch", "transformers", "huggingface_hub", "numpy", "PIL", "torchvision"}
    for path in sorted(SHIPPED.glob("*_setr.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert (SHIPPED / f"{node.module}.py").is_file(), f"{path.name}: from .{node.module}"
                continue
            if isinstance(node, ast.ImportFrom):
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                assert top in allowed or top in sys.stdlib_module_names, f"{path.name} imports {module}"


def test_save_pretrained_ships_every_file_the_model_code_imports(tmp_path):
    from conftest import tiny_config

    from transformers_setr import SetrImageProcessorPil

    SetrForSemanticSegmentation(tiny_config("mla")).save_pretrained(tmp_path)
    SetrImageProcessorPil().save_pretrained(tmp_path)
    # The files the saved classes' modules import, followed through their relative imports. Not
    # `fast_inference_setr.py`: the model code no longer imports it (issue 22; `optimize_for_inference` is a step
    # the package's entry points take, and remote-code users get the plain model).
    imported, pending = set(), ["modeling_setr", "configuration_setr", "image_processing_pil_setr"]
    while pending:
        name = pending.pop()
        if name not in imported:
            imported.add(name)
            tree = ast.parse((SHIPPED / f"{name}.py").read_text())
            pending += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
    shipped = {f"{name}.py" for name in imported}
    saved = {path.name for path in tmp_path.glob("*.py")}
    assert len(shipped) >= 4 and shipped <= saved, shipped - saved


def setr(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "transformers_setr", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
        cwd=ROOT,
    )


def test_the_setr_command_lists_every_command_and_refuses_an_unknown_one():
    from transformers_setr.cli import COMMANDS

    listed = setr("--help")
    assert listed.returncode == 0
    for name in COMMANDS:
        assert f"\n  {name} " in listed.stdout
    unknown = setr("trian")
    assert unknown.returncode == 2 and "unknown command 'trian'" in unknown.stderr
    assert setr().returncode == 2


@pytest.mark.parametrize(
    "command",
    ["convert", "convert-timm", "train", "train-loop", "evaluate", "cards", "segment", "demo", "export-onnx"],
)
def test_every_command_has_a_complete_help(command):
    completed = setr(command, "--help")
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.startswith("usage: ")
    expected_option = {
        "convert": "--checkpoint",
        "convert-timm": "--source",
        "train": "--learning_rate",  # TrainingArguments' fields are listed too
        "train-loop": "--checkpointing_steps",
        "evaluate": "--mode",
        "cards": "--check",
        "segment": "--skip_existing",
        "demo": "--port",
        "export-onnx": "--opset",
    }[command]
    assert expected_option in completed.stdout


def test_setr_cards_check_runs_on_the_checkout():
    completed = setr("cards", "--check")
    assert completed.returncode == 0 and "7 model cards up to date" in completed.stdout


def test_decoder_type_set_on_a_built_config_resolves_the_decoder_defaults(tmp_path):
    config = SetrConfig()  # PUP
    config.decoder_type = "mla"
    assert (config.out_indices, config.use_cls_token, config.decoder_channels) == ([5, 11, 17, 23], False, 512)
    assert (config.auxiliary_num_convs, config.auxiliary_in_indices) == (0, [0, 1, 2, 3])
    config.validate()
    # the same through from_pretrained's kwargs (set on the config built from the saved, explicit values)
    SetrConfig(decoder_type="naive").save_pretrained(tmp_path)
    loaded = SetrConfig.from_pretrained(tmp_path, decoder_type="pup")
    assert (loaded.decoder_num_convs, loaded.decoder_kernel_size, loaded.decoder_up_scale) == (4, 3, 2)
    saved_only = ("architectures", "auto_map")
    assert {k: v for k, v in loaded.to_dict().items() if k not in saved_only} == {
        k: v for k, v in SetrConfig(decoder_type="pup").to_dict().items() if k not in saved_only
    }
    # a value set by hand is kept; an unknown decoder changes nothing
    custom = SetrConfig(decoder_channels=64)
    custom.decoder_type = "naive"
    assert (custom.decoder_channels, custom.decoder_num_convs) == (64, 1)
    with pytest.raises(Exception, match="decoder_type"):
        custom.decoder_type = "unet"
    assert custom.decoder_type == "naive"
