"""The README's main job (`scripts/main_job.py`) as a newcomer runs it, with fewer steps and images."""

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MAIN_JOB = ROOT / "scripts" / "main_job.py"
PANEL_MIN_SIDE = 512


class _References(HTMLParser):
    def __init__(self):
        super().__init__()
        self.references: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if (tag, name) in (("img", "src"), ("a", "href")):
                self.references.append(value)


def run_main_job(output: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(MAIN_JOB), "--output", str(output), *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    output = tmp_path_factory.mktemp("main-job") / "out"
    args = ("--max_steps", "4", "--num_train", "16", "--num_validation", "3", "--num_overlays", "2")
    result = run_main_job(output, *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output, result


def test_index_page_references_files_that_exist(main_job):
    output, _ = main_job
    page = (output / "index.html").read_text()
    parser = _References()
    parser.feed(page)
    images = [ref for ref in parser.references if ref.endswith(".png")]
    assert len(images) == 2
    assert "model/README.md" in parser.references and "model/" in parser.references
    for reference in parser.references:
        assert not reference.startswith(("/", "http")), reference  # relative: the folder can be moved
        assert (output / reference).exists(), reference
    # the training curve: one point per logged loss
    state = json.loads((output / "model" / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 4
    points = re.search(r'<polyline[^>]*points="([^"]+)"', page).group(1).split()
    assert len(points) == len(losses)
    assert "mIoU" in page and "chance" in page


def test_overlays_are_enlarged_to_a_viewable_size_with_exact_labels(main_job):
    output, _ = main_job
    overlays = sorted((output / "overlays").glob("*_prediction_vs_truth.png"))
    assert len(overlays) == 2
    source = Image.open(output / "data" / "ADEChallengeData2016" / "images" / "validation" / "ADE_val_00000001.jpg")
    assert source.size == (128, 96)  # the synthetic images are small; the panels must not be
    for path in overlays:
        width, height = Image.open(path).size
        assert height >= PANEL_MIN_SIDE and width >= 2 * PANEL_MIN_SIDE, (path.name, width, height)


def test_console_table_lists_only_the_classes_present(main_job):
    output, result = main_job
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("class ") and "IoU %" in line)
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        name, iou, accuracy = line.rsplit(maxsplit=2)
        rows.append((name.strip(), iou, accuracy))
    # ground-truth classes, read from the annotation PNGs (raw ADE20K values: class index + 1, 0 = other)
    annotations = sorted((output / "data" / "ADEChallengeData2016" / "annotations" / "validation").glob("*.png"))
    values = np.unique(np.concatenate([np.asarray(Image.open(path)).ravel() for path in annotations]))
    config = json.loads((output / "model" / "config.json").read_text())
    truth = {config["id2label"][str(value - 1)] for value in values if value > 0}
    results = json.loads((output / "model" / "eval_results.json").read_text())
    names = {name for name, _, _ in rows}
    assert truth <= names  # every class of the ground truth is listed
    assert len(names) == len(rows) < 20  # not the 150 ADE20K classes
    for name, iou, accuracy in rows:
        assert results[f"eval_IoU-{name}"] == pytest.approx(float(iou) / 100, abs=6e-5)
        assert (accuracy == "-") == (name not in truth)  # predicted only: no accuracy
    # the summary lines follow the table; no per-class dict anywhere on the console
    assert re.search(r"^mIoU \d+\.\d\d%   mAcc \d+\.\d\d%   aAcc \d+\.\d\d%$", result.stdout, re.MULTILINE)
    assert "chance:" in result.stdout
    assert "IoU-" not in result.stdout + result.stderr
    assert "eval  step 4  mIoU" in result.stdout + result.stderr  # the compact evaluation line


def test_a_folder_that_the_main_job_did_not_write_is_left_alone(tmp_path):
    output = tmp_path / "mine"
    (output / "data").mkdir(parents=True)
    (output / "data" / "thesis.tex").write_text("precious")
    result = run_main_job(output, "--max_steps", "1")
    assert result.returncode != 0
    assert "was not written by the main job" in result.stderr
    assert "Traceback" not in result.stderr
    assert (output / "data" / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in output.rglob("*")) == ["data", "thesis.tex"]
