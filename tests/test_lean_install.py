"""The wheel as a user without extras gets it: built from this checkout, installed into a fresh virtual environment
next to the inference dependencies only (torch, transformers, safetensors, huggingface_hub, numpy, pillow and what
they require). There the README's inference snippet and `trust_remote_code` loading run, `import transformers_setr`
imports nothing from the extras, and the commands that need an extra name its `pip install` command.

The dependencies are not downloaded again: the fresh environment sees, through a `.pth` file, a folder of links to
exactly those distributions of the test environment (found from the wheel's own `Requires-Dist`), and nothing else.
"""

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
EXTRA_MODULES = ("datasets", "accelerate", "evaluate", "pyarrow", "torchvision", "timm", "gradio", "onnxruntime")


def build_wheel(out: Path) -> Path:
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", str(out), "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if completed.returncode != 0:
        if "Could not find a version" in completed.stderr or "connection" in completed.stderr.lower():
            pytest.skip(f"cannot fetch the build backend to build the wheel: {completed.stderr.strip()[-300:]}")
        raise AssertionError(completed.stderr[-3000:])
    (wheel,) = out.glob("transformers_setr-*.whl")
    return wheel


def requirements_closure(requirements: list[str]) -> set[str]:
    """The installed distributions `requirements` need (recursively), extras' requirements left out."""
    environment = default_environment()
    needed, queue = set(), list(requirements)
    while queue:
        requirement = Requirement(queue.pop())
        if requirement.marker is not None and not requirement.marker.evaluate({**environment, "extra": ""}):
            continue
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if name in needed:
            continue
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional platform dependency that is not installed here
        needed.add(name)
        queue += distribution.requires or []
    return needed


def link_distributions(names: set[str], target: Path) -> None:
    """Links to the top-level files and folders of each distribution (code and its .dist-info) in `target`."""
    target.mkdir()
    for name in names:
        distribution = importlib.metadata.distribution(name)
        site = Path(distribution.locate_file(""))
        for top in {Path(path).parts[0] for path in distribution.files or []}:
            source, link = site / top, target / top
            if top in ("..", "bin") or not source.exists() or link.exists():
                continue
            link.symlink_to(source)


@pytest.fixture(scope="module")
def lean_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("lean-install")
    wheel = build_wheel(root / "dist")
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        entry_points = next(name for name in archive.namelist() if name.endswith(".dist-info/entry_points.txt"))
        requires = [
            line.split(":", 1)[1].strip()
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
        assert "setr = transformers_setr.cli:main" in archive.read(entry_points).decode()
        packaged = archive.namelist()
    base = [requirement for requirement in requires if "extra ==" not in requirement]
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True, timeout=300
    )
    needed = requirements_closure(base)
    link_distributions(needed, root / "inference-deps")
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "inference-deps.pth").write_text(str(root / "inference-deps") + "\n")
    assert sysconfig.get_paths()["purelib"] != site  # a separate environment
    return {"python": python, "bin": env_dir / "bin", "root": root, "base": base, "needed": needed, "files": packaged}


def run(lean_env, code: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(lean_env["root"] / "modules"))
    return subprocess.run(
        [str(lean_env["python"]), "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=lean_env["root"],
        timeout=600,
        **kwargs,
    )


def test_the_wheel_requires_only_the_inference_stack(lean_env):
    names = {Requirement(requirement).name.lower().replace("_", "-") for requirement in lean_env["base"]}
    assert names == {"transformers", "torch", "safetensors", "huggingface-hub", "numpy", "pillow"}
    assert not {"datasets", "accelerate", "evaluate", "torchvision"} & lean_env["needed"]
    # package data and the shipped model files are in the wheel
    assert "transformers_setr/evaluation/evaluate_metrics/setr_mean_iou/setr_mean_iou.py" in lean_env["files"]
    assert "transformers_setr/models/setr/modeling_setr.py" in lean_env["files"]
    templates = {
        Path(name).name for name in lean_env["files"] if name.startswith("transformers_setr/cards/templates/")
    }
    assert templates == {path.name for path in (ROOT / "src/transformers_setr/cards/templates").iterdir()}


def test_the_installed_wheel_reproduces_the_committed_cards(lean_env, tmp_path):
    """The cards' templates travel as package data: `setr cards --check` of the installed wheel passes on the
    committed cards, and fails on a changed one."""
    cards = tmp_path / "model_cards"
    shutil.copytree(ROOT / "model_cards", cards)
    setr = [str(lean_env["bin"] / "setr"), "cards", "--check", "--output-dir", str(cards)]
    completed = subprocess.run(setr, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert completed.returncode == 0 and "7 model cards up to date" in completed.stdout, completed.stderr[-2000:]
    card = next(cards.glob("*.md"))
    card.write_text(card.read_text(encoding="utf-8").replace("24 layers", "12 layers"), encoding="utf-8")
    completed = subprocess.run(setr, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert completed.returncode == 1 and card.name in completed.stderr


README_SNIPPET = """
import json, sys
from PIL import Image
import transformers_setr  # registers SETR with the Auto classes and the pipeline
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline
from transformers_setr import SetrConfig, SetrForSemanticSegmentation, SetrImageProcessor

folder = sys.argv[1]
SetrForSemanticSegmentation(SetrConfig(
    hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=32,
    out_indices=[0, 1, 2, 3], decoder_channels=16, auxiliary_channels=8, num_labels=5,
)).save_pretrained(folder)
SetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}).save_pretrained(folder)
image = Image.new("RGB", (48, 40), (120, 60, 30))

model = AutoModelForSemanticSegmentation.from_pretrained(folder)
processor = AutoImageProcessor.from_pretrained(folder)
inputs = processor(images=image, return_tensors="pt")
outputs = model(**inputs)
segmentation = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
segmenter = pipeline("image-segmentation", model=folder)
masks = segmenter(image)
print("RESULT " + json.dumps({
    "processor": type(processor).__name__,
    "segmentation": list(segmentation.shape),
    "masks": len(masks),
    "extras_imported": sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2].split(","))),
}))
"""


def test_the_readme_inference_snippet_runs_without_extras(lean_env, tmp_path):
    completed = run(lean_env, README_SNIPPET, str(tmp_path / "model"), ",".join(EXTRA_MODULES))
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.split("RESULT ", 1)[1])
    assert report["processor"] == "SetrImageProcessorPil"  # no torchvision: the PIL backend
    assert report["segmentation"] == [40, 48] and report["masks"] >= 1
    assert report["extras_imported"] == []
    # trust_remote_code from the same folder, the package blocked
    blocked = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'transformers_setr': raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from transformers import AutoModelForSemanticSegmentation\n"
        "model = AutoModelForSemanticSegmentation.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "print('MODULE', type(model).__module__)\n"
    )
    remote = run(lean_env, blocked, str(tmp_path / "model"))
    assert remote.returncode == 0, remote.stderr[-3000:]
    assert "MODULE transformers_modules." in remote.stdout


@pytest.mark.parametrize("command", ["train", "train-loop", "evaluate"])
def test_a_command_that_needs_an_extra_names_it(lean_env, command):
    completed = subprocess.run(
        [str(lean_env["bin"] / "setr"), command, "--help"], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 1
    assert completed.stderr.strip().endswith("pip install 'transformers-setr[train]'"), completed.stderr[-2000:]
    assert "Traceback" not in completed.stderr


def test_inference_and_conversion_commands_work_without_extras(lean_env):
    for command, option in (
        ("convert", "--checkpoint"),
        ("convert-timm", "--source"),
        ("cards", "--check"),
        ("segment", "--mode"),
        ("demo", "--port"),
        ("export-onnx", "--opset"),
    ):
        completed = subprocess.run(
            [str(lean_env["bin"] / "setr"), command, "--help"], capture_output=True, text=True, timeout=300
        )
        assert completed.returncode == 0 and option in completed.stdout, completed.stderr[-2000:]


@pytest.mark.parametrize(("command", "extra"), [("demo", "demo"), ("export-onnx", "onnx")])
def test_the_demo_and_the_onnx_export_name_their_extras(lean_env, tmp_path, command, extra):
    args = ["--model", str(tmp_path)] + (
        ["--output", str(tmp_path / "model.onnx")] if command == "export-onnx" else []
    )
    completed = subprocess.run(
        [str(lean_env["bin"] / "setr"), command, *args], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode != 0 and f"pip install 'transformers-setr[{extra}]'" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_a_library_import_that_needs_an_extra_names_it(lean_env):
    completed = run(lean_env, "import transformers_setr.data.sources")
    assert completed.returncode == 1
    assert "pip install 'transformers-setr[train]'" in completed.stderr.splitlines()[-1]
