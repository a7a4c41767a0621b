"""The package's rooms: the module paths of the flat 0.1 layout are gone, each room exports public names only, the
rooms import each other without a cycle, folders saved by 0.1 still load with the same logits, the shipped files
stay self-contained, and the `setr` command dispatches to every command line."""

import ast
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation

import transformers_setr
from transformers_setr import SetrConfig, SetrForSemanticSegmentation
from transformers_setr._imports import lazy_exports

ROOT = Path(__file__).resolve().parent.parent
# Folders saved by older revisions (scripts/make_layout_fixture.py): the flat 0.1 layout, and main before the
# issue-22 redesign (the fast path woven through the model, the old image processors).
PRE_0_2_FOLDER = Path(__file__).parent / "fixtures" / "pre-0.2-folder"
PRE_REDESIGN_FOLDER = Path(__file__).parent / "fixtures" / "pre-redesign-folder"
SAVED_FOLDERS = pytest.mark.parametrize("saved", [PRE_0_2_FOLDER, PRE_REDESIGN_FOLDER], ids=["0.1", "pre-redesign"])
PACKAGE = Path(transformers_setr.__file__).parent
SHIPPED = PACKAGE / "models" / "setr"
ROOMS = ("models", "inference", "conversion", "data", "training", "evaluation", "cards", "apps")

# The flat modules of 0.1 (never published) and the modules that hold their code now. (`presets` is no alias: the
# table of released checkpoints is the top-level module `transformers_setr.presets`, read by four rooms.)
PATHS_OF_0_1 = {
    "configuration_setr": "models.setr.configuration_setr",
    "modeling_setr": "models.setr.modeling_setr",
    "image_processing_pil_setr": "models.setr.image_processing_pil_setr",
    "image_processing_setr": "models.setr.image_processing_setr",
    "segmentation_pipeline": "inference.pipeline",
    "visualize": "inference.visualize",
    "convert_mmseg": "conversion.from_mmseg",
    "convert_timm": "conversion.from_timm",
    "mmseg_reference": "conversion.mmseg_reference",
    "label_tables": "data.label_tables",
    "synthetic": "data.synthetic",
    "augmentation": "training.augmentation",
    "training_script": "training.train_command",
    "metrics": "evaluation.metrics",
    "model_card": "cards.model_card",
}


@pytest.mark.parametrize(("old_path", "new_path"), sorted(PATHS_OF_0_1.items()))
def test_the_module_paths_of_0_1_are_gone(old_path, new_path):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"transformers_setr.{old_path}")
    assert importlib.import_module(f"transformers_setr.{new_path}").__spec__.name == f"transformers_setr.{new_path}"
    assert not [finder for finder in sys.meta_path if type(finder).__module__.startswith("transformers_setr")]


def test_an_unknown_module_is_still_an_import_error():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("transformers_setr.no_such_module")
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        transformers_setr.data.no_such_name  # noqa: B018


@pytest.mark.parametrize("room", ["", *ROOMS[1:], "models.setr"])
def test_each_room_exports_public_names_only(room):
    module = importlib.import_module("transformers_setr" + (f".{room}" if room else ""))
    assert module.__all__, "every room says what it exports"
    assert not [name for name in module.__all__ if name.startswith("_")]
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{module.__name__}.{name}"


def test_no_room_re_exports_a_private_name():
    for init in sorted(PACKAGE.rglob("__init__.py")):
        for node in ast.walk(ast.parse(init.read_text())):
            if isinstance(node, ast.ImportFrom):
                private = [alias.name for alias in node.names if alias.name.startswith("_")]
                assert not private, f"{init.relative_to(PACKAGE)} imports {private}"
    with pytest.raises(ValueError, match=r"private names \['_helper'\]"):
        lazy_exports("transformers_setr.somewhere", {"module": ("helper", "_helper")})


def _room_of(parts: tuple[str, ...]) -> str:
    """The room of a module path inside the package (`conversion.from_mmseg` -> `conversion`); a top-level module
    (`cli`, `files`, `hub`, `presets`, ...) is its own node, the package itself is `__init__`."""
    return parts[0] if parts else "__init__"


def room_import_graph() -> dict[str, dict[str, list[str]]]:
    """room -> {room it imports: [where]}, from every import statement of every module (also those inside
    functions), relative or absolute."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        package_parts = parts[:-1]  # the package a `from .` import starts from (for __init__ too)
        source = _room_of(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                targets = [(*base, *node.module.split("."))] if node.module else []
                if not node.module:  # `from .. import name`: a module or a name of that package
                    targets = [(*base, alias.name) for alias in node.names]
                    targets = [
                        t
                        if (PACKAGE.joinpath(*t).is_dir() or PACKAGE.joinpath(*t).with_suffix(".py").is_file())
                        else base
                        for t in targets
                    ]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "transformers_setr":
                targets = [tuple(node.module.split(".")[1:])]
            elif isinstance(node, ast.Import):
                targets = [
                    tuple(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "transformers_setr"
                ]
            else:
                continue
            for target in targets:
                room = _room_of(target)
                if room != source:
                    graph.setdefault(source, {}).setdefault(room, []).append(
                        f"{path.relative_to(PACKAGE)}:{node.lineno}"
                    )
    return graph


def test_the_rooms_import_each_other_without_a_cycle():
    graph = room_import_graph()
    # the graph is read right: edges every version of the package has
    assert "data" in graph["training"] and "models" in graph["inference"] and "cards" in graph["conversion"]
    done: set[str] = set()

    def visit(room: str, path: list[str]) -> None:
        if room in path:
            cycle = path[path.index(room) :] + [room]
            where = [f"{a} -> {b} ({', '.join(graph[a][b])})" for a, b in zip(cycle, cycle[1:])]
            pytest.fail("import cycle between rooms: " + "; ".join(where))
        if room in done:
            return
        for target in graph.get(room, {}):
            visit(target, [*path, room])
        done.add(room)

    for room in sorted(graph):
        visit(room, [])


def _load_fixture_copy(tmp_path: Path, saved: Path) -> Path:
    folder = tmp_path / f"saved-by-{saved.name}"
    shutil.copytree(saved, folder)
    return folder


@SAVED_FOLDERS
def test_a_folder_saved_by_an_older_version_loads_with_identical_logits(tmp_path, saved):
    folder = _load_fixture_copy(tmp_path, saved)
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


@SAVED_FOLDERS
@pytest.mark.parametrize("package", ["installed", "absent"])
def test_a_folder_saved_by_an_older_version_loads_with_trust_remote_code(tmp_path, package, saved):
    """With the package absent, the folder's own old code runs; with it installed, its registered classes do."""
    folder = _load_fixture_copy(tmp_path, saved)
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


@pytest.mark.parametrize("backend", ["pil", "torchvision"])
def test_a_processor_saved_before_the_redesign_makes_the_same_pixels(tmp_path, backend):
    """The processors saved by main before issue 22, loaded by today's classes, give the pixels the old code gave
    (RGBA, grey, an odd size, an array) and still refuse a 16-bit image.

    Both backends now run one torch implementation. torchvision: the same values up to float32 rounding of the
    normalisation (measured 2.4e-7). PIL: its old hand-written numpy resize rounded .5 ties in another order; it now
    gives the torchvision values, which differ from its old ones by one grey level (1/57.12 in normalised units) in
    about 5e-4 of the values of the resized image (measured), as the two backends always did."""
    from PIL import Image

    folder = _load_fixture_copy(tmp_path, PRE_REDESIGN_FOLDER)
    expected = torch.load(folder / "expected_pixel_values.pt", weights_only=True)
    processor = AutoImageProcessor.from_pretrained(folder, backend=backend)
    checked = 0
    for key, value in expected.items():
        wanted_backend, name = key.split("/")
        if wanted_backend != backend:
            continue
        if name == "array":
            image = np.asarray(Image.open(folder / "images" / "rgb.png"))
        else:
            image = Image.open(folder / "images" / name)
        if isinstance(value, str):
            with pytest.raises(ValueError, match="16-bit"):
                processor(image, return_tensors="pt")
        else:
            difference = (processor(image, return_tensors="pt")["pixel_values"] - value).abs()
            if backend == "torchvision" or name in ("grey.png", "rgba.png"):  # no resize ties in these two
                assert difference.max().item() <= 1e-6, key
            else:
                assert difference.max().item() <= 1 / 57.12 + 1e-5, key
                assert (difference > 1e-6).float().mean().item() < 1e-3, key
        checked += 1
    assert checked == 5


def test_the_shipped_files_import_only_torch_transformers_and_each_other():
    """Module-level imports: torch, transformers (and what they bring) and each other. timm only inside a function,
    run only for a timm backbone."""
    allowed = {"torch", "transformers", "huggingface_hub", "numpy", "PIL", "torchvision"}
    for path in sorted(SHIPPED.glob("*_setr.py")):
        tree = ast.parse(path.read_text())
        in_functions = {
            id(inner)
            for function in ast.walk(tree)
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
            for inner in ast.walk(function)
        }
        for node in ast.walk(tree):
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
                lazy_timm = top == "timm" and id(node) in in_functions
                assert top in allowed or top in sys.stdlib_module_names or lazy_timm, f"{path.name} imports {module}"


def test_save_pretrained_ships_every_file_the_model_code_imports(tmp_path):
    from transformers_setr import SetrImageProcessorPil

    from conftest import tiny_config

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


def test_the_decoder_defaults_are_resolved_explicitly(tmp_path):
    config = SetrConfig.for_decoder("mla")
    assert (config.out_indices, config.use_cls_token, config.decoder_channels) == ([5, 11, 17, 23], False, 512)
    assert (config.auxiliary_num_convs, config.auxiliary_in_indices) == (0, [0, 1, 2, 3])
    config.validate()
    assert config.to_dict() == SetrConfig(decoder_type="mla").to_dict()
    # no attribute magic: `decoder_type` set on a built config changes that field only, and `validate` says what
    # no longer fits
    built = SetrConfig()  # PUP
    built.decoder_type = "mla"
    assert (built.out_indices, built.decoder_channels) == ([9, 14, 19, 23], 256)
    with pytest.raises(Exception, match="decoder_channels must be 512"):
        built.validate()
    # from_pretrained's kwargs switch the decoder of the saved, explicit values
    SetrConfig(decoder_type="naive").save_pretrained(tmp_path)
    loaded = SetrConfig.from_pretrained(tmp_path, decoder_type="pup")
    assert (loaded.decoder_num_convs, loaded.decoder_kernel_size, loaded.decoder_up_scale) == (4, 3, 2)
    saved_only = ("architectures", "auto_map")
    assert {k: v for k, v in loaded.to_dict().items() if k not in saved_only} == {
        k: v for k, v in SetrConfig(decoder_type="pup").to_dict().items() if k not in saved_only
    }
    # a value set by hand is kept; an unknown decoder is refused
    SetrConfig(decoder_channels=64).save_pretrained(tmp_path / "custom")
    custom = SetrConfig.from_pretrained(tmp_path / "custom", decoder_type="naive")
    assert (custom.decoder_channels, custom.decoder_num_convs) == (64, 1)
    with pytest.raises(Exception, match="decoder_type"):
        SetrConfig.from_pretrained(tmp_path / "custom", decoder_type="unet")


def test_the_tests_mirror_the_package():
    """tests/<room>/ for each room of the package; shared test code in tests/helpers/, data in tests/fixtures/."""
    tests = Path(__file__).parent
    folders = {path.name for path in tests.iterdir() if path.is_dir() and not path.name.startswith((".", "__"))}
    assert folders - {"helpers", "fixtures"} == {room.split("/")[0] for room in ROOMS}
    for room in ROOMS:
        assert list((tests / room).glob("test_*.py")), room
