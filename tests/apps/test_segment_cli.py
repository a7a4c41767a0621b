"""`setr segment` (`scripts/segment.py`) on a folder of real photographs, as a user runs it."""

import http.server
import json
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor

from transformers_setr.apps import segment
from transformers_setr.inference import predict_labels

pytest.importorskip("skimage.data")
from helpers.photo_folder import CLASS_NAMES, save_tiny_model, write_photo_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SEGMENT = ROOT / "scripts" / "segment.py"
GOOD = ("astronaut", "camera", "coffee", "chelsea")


class _References(HTMLParser):
    def __init__(self):
        super().__init__()
        self.references: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.references += [value for name, value in attrs if (tag, name) in (("img", "src"), ("a", "href"))]


def as_rgb(image: Image.Image) -> Image.Image:
    """What a viewer shows: transparent pixels over white."""
    if image.mode == "RGBA":
        return Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB")
    return image.convert("RGB")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("segment")
    model, _ = save_tiny_model(root / "model")
    images = write_photo_folder(root / "photos")
    # The processor a user of the folder gets (the torchvision one when installed), as the command loads it.
    processor = AutoImageProcessor.from_pretrained(root / "model")
    return root, model, processor, images


@pytest.fixture(scope="module")
def first_run(setup):
    """The README's command line, in a subprocess."""
    root, *_ = setup
    result = subprocess.run(
        [
            sys.executable,
            str(SEGMENT),
            str(root / "photos"),
            "--model",
            str(root / "model"),
            "--output",
            str(root / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    return result, root / "out"


def expected_labels(model, processor, path: Path, mode: str) -> np.ndarray:
    """The model's own argmax (the evaluation protocol) on the file as written (JPEG is lossy)."""
    rgb = as_rgb(Image.open(path))
    pixel_values = processor(images=rgb, return_tensors="pt")["pixel_values"]
    return predict_labels(model, pixel_values, (rgb.height, rgb.width), mode, rgb, processor).numpy()


def test_folder_of_photographs(setup, first_run):
    root, model, processor, images = setup
    result, out = first_run
    # The corrupt file is reported by name, in one line, the others are segmented, and the exit status says so.
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    broken = [line for line in result.stderr.splitlines() if "broken.jpg" in line]
    assert len(broken) == 1 and "cannot be read" in broken[0], result.stderr
    assert "notes.txt" not in result.stderr  # not an image file: not taken from the folder
    assert "4 segmented, 0 skipped (already done), 1 failed" in result.stderr
    assert "image/s" in result.stderr  # the progress bar's rate

    for name in GOOD:
        file_name = next(n for n in images if n.startswith(name))
        image = images[file_name]
        label_png = Image.open(out / "labels" / f"{name}.png")
        assert label_png.mode == "P" and label_png.size == image.size
        labels = np.asarray(label_png)
        # The PNG values are the model's own argmax with the evaluation protocol (slide, the model's mode).
        np.testing.assert_array_equal(labels, expected_labels(model, processor, root / "photos" / file_name, "slide"))

        record = json.loads((out / "classes" / f"{name}.json").read_text())
        ids, counts = np.unique(labels, return_counts=True)
        assert {c["id"]: c["pixels"] for c in record["classes"]} == dict(zip(ids.tolist(), counts.tolist()))
        assert [c["label"] for c in record["classes"]] == [CLASS_NAMES[c["id"]] for c in record["classes"]]
        assert sum(c["share"] for c in record["classes"]) == pytest.approx(1.0)
        assert (record["width"], record["height"], record["mode"]) == (image.width, image.height, "slide")

        # The legend lists the classes present, by area: its swatches have their palette colours, in that order.
        overlay = np.asarray(Image.open(out / "overlays" / f"{name}.png").convert("RGB"))
        assert overlay.shape[1] > image.width  # the legend is appended on the right
        row = segment.legend_font_size(image) + 8
        palette = segment.palette_of(model.config)
        by_area = [c["id"] for c in record["classes"]]
        for position, class_id in enumerate(by_area):
            swatch = overlay[5 + position * row + row // 2 - 2, image.width + 8 + row // 2 - 2]
            assert tuple(swatch) == palette[class_id], (name, position, class_id)
        below = 5 + len(by_area) * row + 2
        if below < overlay.shape[0]:
            assert (overlay[below:, image.width + 8 :] == 255).all()  # no swatch for a class not present
    assert len(set(np.unique(np.asarray(Image.open(out / "labels" / "astronaut.png"))))) > 1

    parser = _References()
    parser.feed((out / "index.html").read_text())
    assert {f"overlays/{n}.png" for n in GOOD} <= set(parser.references)
    assert all((out / reference).is_file() for reference in parser.references)
    assert "broken.jpg" in (out / "index.html").read_text()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_skip_existing_resumes_a_folder(setup, first_run, tmp_path):
    root, *_ = setup
    _, out = first_run
    resumed = tmp_path / "out"
    resumed.mkdir()
    for path in out.rglob("*"):  # an interrupted run: everything but coffee's JSON (written last)
        if path.is_file() and path.name != "coffee.json":
            target = resumed / path.relative_to(out)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    stamps = {p: p.stat().st_mtime_ns for p in (resumed / "labels").iterdir()}
    code = segment.main(
        [str(root / "photos"), "--model", str(root / "model"), "--output", str(resumed), "--skip_existing"]
    )
    assert code == 1  # broken.jpg still fails
    for path, stamp in stamps.items():
        if path.stem != "coffee":
            assert path.stat().st_mtime_ns == stamp, path  # not redone
    assert (resumed / "classes" / "coffee.json").read_bytes() == (out / "classes" / "coffee.json").read_bytes()
    assert (resumed / "labels" / "coffee.png").read_bytes() == (out / "labels" / "coffee.png").read_bytes()
    page = (resumed / "index.html").read_text()
    assert all(f"overlays/{name}.png" in page for name in GOOD)  # the skipped images stay on the page


def test_files_globs_urls_and_other_modes(setup, tmp_path, capsys):
    root, model, processor, images = setup
    photos = root / "photos"

    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(photos), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/chelsea.jpg"
        missing = f"http://127.0.0.1:{server.server_port}/missing.jpg"
        code = segment.main(
            [
                str(photos / "camera.png"),
                str(photos / "ast*.jpg"),
                url,
                missing,
                "--model",
                str(root / "model"),
                "--output",
                str(tmp_path / "out"),
                "--mode",
                "whole",
                "--side_by_side",
                "--batch_size",
                "2",
            ]
        )
    finally:
        server.shutdown()
        server.server_close()
    assert code == 1
    assert "missing.jpg: cannot be read: HTTP Error 404" in capsys.readouterr().err
    for name, file_name in (("camera", "camera.png"), ("astronaut", "astronaut.jpg"), ("chelsea", "chelsea.jpg")):
        labels = np.asarray(Image.open(tmp_path / "out" / "labels" / f"{name}.png"))
        np.testing.assert_array_equal(labels, expected_labels(model, processor, photos / file_name, "whole"))
        overlay = Image.open(tmp_path / "out" / "overlays" / f"{name}.png")
        assert overlay.width > 2 * images[file_name].width  # the photo, then the overlay and its legend

    code = segment.main(
        [
            str(photos / "chelsea.jpg"),
            "--model",
            str(root / "model"),
            "--output",
            str(tmp_path / "ms"),
            "--mode",
            "ms_flip",
        ]
    )
    assert code == 0
    labels = np.asarray(Image.open(tmp_path / "ms" / "labels" / "chelsea.png"))
    np.testing.assert_array_equal(labels, expected_labels(model, processor, photos / "chelsea.jpg", "ms_flip"))


def test_bad_inputs_are_one_line_errors(setup, tmp_path, capsys):
    root, *_ = setup
    model = str(root / "model")
    (tmp_path / "a-file").write_text("x")
    cases = [
        ([str(root / "photos"), "--model", str(tmp_path / "no-model")], "cannot load a model"),
        ([str(tmp_path / "nothing-here"), "--model", model], "no such file or folder"),
        ([str(root / "photos"), "--model", model, "--output", str(tmp_path / "a-file")], "is a file, not a folder"),
        ([str(root / "photos"), "--model", model, "--batch_size", "0"], "--batch_size must be at least 1"),
        ([str(root / "photos"), "--model", model, "--alpha", "2"], "--alpha must be between 0 and 1"),
    ]
    for argv, message in cases:
        assert segment.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert (tmp_path / "a-file").read_text() == "x"

    # A 16-bit image is refused (it would be clipped to 8 bits), the others are still segmented.
    Image.fromarray(np.arange(64 * 80, dtype=np.uint16).reshape(64, 80) * 13).save(tmp_path / "depth.png")
    code = segment.main(
        [
            str(tmp_path / "depth.png"),
            str(root / "photos" / "camera.png"),
            "--model",
            model,
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert code == 1
    assert "depth.png: unsupported image mode 'I;16'" in capsys.readouterr().err
    assert (tmp_path / "out" / "labels" / "camera.png").is_file()
    assert not (tmp_path / "out" / "labels" / "depth.png").exists()


def test_upsampled_argmax_in_bounded_memory_is_exact():
    """The few-classes-at-a-time resize gives `F.interpolate(...).argmax` bit for bit, ties included."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 7, 13, 17, generator=generator)
    logits[:, 5] = logits[:, 2]  # exact ties: the first class wins
    full = torch.nn.functional.interpolate(logits, size=(101, 83), mode="bilinear", align_corners=False).argmax(1)[0]
    for max_bytes in (1, 101 * 83 * 4 * 3, 10**9):
        assert torch.equal(segment.upsampled_argmax(logits, (101, 83), max_bytes=max_bytes), full)


def test_an_output_folder_inside_the_input_folder_is_not_read_back(setup, tmp_path, capsys):
    root, *_ = setup
    photos = tmp_path / "photos"
    write_photo_folder(photos, corrupt=False)
    for _ in range(2):
        assert segment.main([str(photos), "--model", str(root / "model"), "--output", str(photos / "seg")]) == 0
        assert "4 segmented, 0 skipped (already done), 0 failed" in capsys.readouterr().err
    assert sorted(p.name for p in (photos / "seg" / "labels").iterdir()) == sorted(f"{n}.png" for n in GOOD)


@pytest.mark.heavy
def test_an_8000_pixel_photograph_in_slide_mode_stays_in_bounded_memory():
    """`benchmarks/segment_memory.py`: 150 classes at 8000x8000 would be 35.8 GiB of logits; the command stays
    under 4 GiB (2.2 GiB measured). About 2 minutes on 2 cores."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "segment_memory.py"), "--side", "8000"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("peak RSS"))
    peak_gib = float(line.split(":")[1].split("GiB")[0])
    assert peak_gib < 4.0, result.stdout
    assert "label map 8000x8000 uint8" in result.stdout
