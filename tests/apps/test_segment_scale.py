"""`setr segment` beyond one process: two ranks under torchrun and under `accelerate launch` (gloo on CPU), a run
killed with SIGKILL and resumed with `--skip_existing`, Ray Data, the paged index, and careless inputs. Every run is
compared with one process on the same folder of real photographs (scikit-image's)."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transformers_setr.apps import segment, segment_shards

pytest.importorskip("skimage.data")
from helpers.photo_folder import CLASS_NAMES, save_tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
# scikit-image's photographs and scans (RGB, grey, RGBA), 102 to 1411 pixels a side
PHOTOGRAPHS = (
    "astronaut", "camera", "chelsea", "coffee", "rocket", "coins", "hubble_deep_field", "immunohistochemistry",
    "moon", "page", "text", "clock", "brick", "grass", "gravel", "colorwheel", "logo", "retina",
)  # fmt: skip


def free_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def write_photographs(folder: Path) -> list[str]:
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOGRAPHS:
        image = Image.fromarray(getattr(data, name)())
        image.save(folder / (f"{name}.jpg" if image.mode == "RGB" else f"{name}.png"))
    (folder / "notes.txt").write_text("not an image\n")  # not taken from a folder
    return sorted(PHOTOGRAPHS)


def environment() -> dict[str, str]:
    """One CPU thread per process, as torchrun sets (and Ray for a 1-CPU actor): a float32 reduction's rounding
    depends on the number of threads, which flips a few near-tie pixels (8 of chelsea's 135300 with 2 threads)."""
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def one_process(*argv: str) -> None:
    """`python -m transformers_setr segment ...` as one process: the reference every launcher must equal."""
    result = subprocess.run(
        [PYTHON, "-m", "transformers_setr", "segment", *argv], capture_output=True, text=True, env=environment()
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """(root, model folder, photo folder, the single-process output)."""
    root = tmp_path_factory.mktemp("scale")
    save_tiny_model(root / "model")
    names = write_photographs(root / "photos")
    one_process(str(root / "photos"), "--model", str(root / "model"), "--output", str(root / "one"))
    assert sorted(p.stem for p in (root / "one" / "labels").iterdir()) == names
    return root, root / "model", root / "photos", root / "one"


@pytest.fixture
def one_thread():
    """In-process runs compared with the one-thread reference run on one thread too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torchrun(processes: int, *argv: str) -> list[str]:
    return [
        PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--nnodes", "1",
        "--master_addr", "127.0.0.1", "--master_port", free_port(), "-m", "transformers_setr", "segment", *argv,
    ]  # fmt: skip


def accelerate_launch(*argv: str) -> list[str]:
    # `--multi_gpu` really starts 2 processes on a CPU machine (`--cpu` would run one; DEVELOPERS.md)
    return [
        PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", free_port(),
        "-m", "transformers_setr", "segment", *argv,
    ]  # fmt: skip


def run(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment(), timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


RANK_REPORT = re.compile(
    r"setr segment: rank (\d+) of (\d+): (\d+) images, (\d+) segmented, (\d+) skipped \(already done\), (\d+) failed"
)


def rank_lines(stderr: str) -> dict[int, list[int]]:
    """rank -> [images, segmented, skipped, failed] from each rank's report line (found anywhere in a line: the two
    processes share stderr, and rank 0's progress bar may stand before rank 1's report without a line break)."""
    reports = {}
    for match in RANK_REPORT.finditer(stderr):
        rank, world, *counts = (int(value) for value in match.groups())
        assert world == 2, match.group(0)
        reports[rank] = counts
    return reports


def descendants(pid: int) -> list[int]:
    """The processes started by `pid`, their children and so on (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def assert_same_label_maps(reference: Path, output: Path) -> None:
    names = sorted(p.name for p in (reference / "labels").iterdir())
    assert sorted(p.name for p in (output / "labels").iterdir()) == names
    for name in names:
        assert (output / "labels" / name).read_bytes() == (reference / "labels" / name).read_bytes(), name


def assert_no_leftovers(output: Path) -> None:
    left = [p.name for p in output.rglob("*") if p.name.endswith((".tmp", ".part"))]
    assert not left, left


def manifest_names(output: Path) -> list[str]:
    return [json.loads(line)["name"] for line in (output / "manifest.jsonl").read_text().splitlines()]


def test_torchrun_two_processes_write_the_label_maps_of_one(photos, tmp_path):
    root, model, folder, one = photos
    result = run(torchrun(2, str(folder), "--model", str(model), "--output", str(tmp_path), "--num_workers", "1"))
    # each rank reports its share: every other image of the sorted list, 9 each
    assert rank_lines(result.stderr) == {0: [9, 9, 0, 0], 1: [9, 9, 0, 0]}, result.stderr
    assert "18 segmented, 0 skipped (already done), 0 failed" in result.stderr
    assert_same_label_maps(one, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2 and [r["segmented"] for r in summary["ranks"]] == [9, 9]
    assert manifest_names(tmp_path) == manifest_names(one) == sorted(PHOTOGRAPHS)  # merged back into input order
    assert_no_leftovers(tmp_path)


def test_accelerate_launch_two_processes_write_the_label_maps_of_one(photos, tmp_path):
    root, model, folder, one = photos
    result = run(accelerate_launch(str(folder), "--model", str(model), "--output", str(tmp_path)))
    assert rank_lines(result.stderr) == {0: [9, 9, 0, 0], 1: [9, 9, 0, 0]}, result.stderr
    assert_same_label_maps(one, tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["world_size"] == 2
    assert_no_leftovers(tmp_path)


def test_a_killed_run_resumes_with_skip_existing(photos, tmp_path):
    root, model, folder, one = photos
    argv = (str(folder), "--model", str(model), "--output", str(tmp_path), "--skip_existing")
    job = subprocess.Popen(
        torchrun(2, *argv, "--num_workers", "1"),
        cwd=ROOT,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while len(list((tmp_path / "classes").glob("*.json"))) < 3 and job.poll() is None:
            assert time.monotonic() < deadline, "no image segmented in 5 minutes"
            time.sleep(0.02)
    finally:
        # SIGKILL to torchrun, both ranks and their loader workers at once, as a lost machine: the ranks run in
        # sessions of their own, so each process of the job is killed by its id
        for pid in [*descendants(job.pid), job.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        job.wait()
    done = {p.stem: p.stat().st_mtime_ns for p in (tmp_path / "classes").glob("*.json")}
    assert 3 <= len(done) < len(PHOTOGRAPHS), f"the run was not killed midway: {sorted(done)}"

    result = run(torchrun(2, *argv))
    reports = rank_lines(result.stderr)
    assert sum(r[2] for r in reports.values()) == len(done), result.stderr  # skipped: exactly those done before
    assert sum(r[1] for r in reports.values()) == len(PHOTOGRAPHS) - len(done)
    for name, stamp in done.items():
        assert (tmp_path / "classes" / f"{name}.json").stat().st_mtime_ns == stamp, name  # not redone
    assert len(manifest_names(tmp_path)) == len(PHOTOGRAPHS)
    assert_no_leftovers(tmp_path)
    assert_same_label_maps(one, tmp_path)  # the complete set equals one uninterrupted process


def test_more_processes_than_images(photos, tmp_path):
    root, model, folder, one = photos
    result = run(torchrun(2, str(folder / "coins.png"), "--model", str(model), "--output", str(tmp_path)))
    assert rank_lines(result.stderr) == {0: [1, 1, 0, 0], 1: [0, 0, 0, 0]}, result.stderr
    assert (tmp_path / "labels" / "coins.png").read_bytes() == (one / "labels" / "coins.png").read_bytes()
    assert manifest_names(tmp_path) == ["coins"]


def test_skip_existing_redoes_what_is_not_its_own_output(photos, tmp_path, capsys, one_thread):
    root, model, folder, one = photos
    for sub in ("labels", "overlays", "classes"):
        (tmp_path / sub).mkdir(parents=True)
    # someone else's files under astronaut's output names, a foreign file, and a killed write's leftover
    (tmp_path / "labels" / "astronaut.png").write_bytes(b"not ours")
    (tmp_path / "overlays" / "astronaut.png").write_bytes(b"not ours")
    (tmp_path / "classes" / "astronaut.json").write_text('{"note": "my own file"}')
    (tmp_path / "labels" / "holiday.png").write_bytes(b"a user's file")
    (tmp_path / "labels" / ".camera.png.999999.tmp").write_bytes(b"half a PNG")
    argv = [str(folder), "--model", str(model), "--output", str(tmp_path), "--skip_existing", "--num_workers", "2"]
    assert segment.main(argv) == 0
    assert "18 segmented, 0 skipped (already done), 0 failed" in capsys.readouterr().err
    # holiday.png is there too: image by image
    for name in PHOTOGRAPHS:
        assert (tmp_path / "labels" / f"{name}.png").read_bytes() == (one / "labels" / f"{name}.png").read_bytes()
    assert (tmp_path / "labels" / "holiday.png").read_bytes() == b"a user's file"  # never touched
    assert_no_leftovers(tmp_path)
    # run again: everything is skipped, nothing is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "labels").iterdir()}
    assert segment.main(argv) == 0
    assert "0 segmented, 18 skipped (already done), 0 failed" in capsys.readouterr().err
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "labels").iterdir()}


def test_index_pages_beyond_the_page_size(photos, tmp_path, monkeypatch, capsys, one_thread):
    root, model, folder, one = photos
    monkeypatch.setattr(segment_shards, "INDEX_PAGE_SIZE", 5)
    (tmp_path / "in").mkdir()
    for path in folder.iterdir():
        (tmp_path / "in" / path.name).write_bytes(path.read_bytes())
    (tmp_path / "in" / "broken.jpg").write_bytes((folder / "astronaut.jpg").read_bytes()[:3000])
    code = segment.main([str(tmp_path / "in"), "--model", str(model), "--output", str(tmp_path / "out")])
    assert code == 1
    pages = sorted(p.name for p in (tmp_path / "out").glob("index*.html"))
    assert pages == ["index-2.html", "index-3.html", "index-4.html", "index.html"]  # 19 entries, 5 a page
    texts = [(tmp_path / "out" / name).read_text() for name in ("index.html", "index-2.html", "index-3.html")]
    assert 'href="index-2.html">next' in texts[0] and 'href="index.html">previous' in texts[1]
    # broken.jpg is second in the input order: page 1 shows 4 overlays and it
    assert [text.count("<figure>") for text in texts] == [4, 5, 5] and "broken.jpg" in texts[0]
    assert sum((tmp_path / "out" / name).read_text().count("<figure>") for name in pages) == 18
    assert sum("broken.jpg" in (tmp_path / "out" / name).read_text() for name in pages) == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["segmented"], summary["failed"], summary["pages"]) == (18, 1, 4)
    # the class pixels over all images are the label maps' own
    counts = np.zeros(6, dtype=np.int64)
    for path in (tmp_path / "out" / "labels").iterdir():
        counts += np.bincount(np.asarray(Image.open(path)).ravel(), minlength=6)
    assert {c["id"]: c["pixels"] for c in summary["class_pixels"]} == {i: int(n) for i, n in enumerate(counts) if n}


def test_bad_scale_options_are_one_line_errors(photos, tmp_path, capsys, monkeypatch):
    root, model, folder, one = photos
    base = [str(folder), "--model", str(model), "--output", str(tmp_path)]
    cases = [
        (["--num_workers", "-1"], "--num_workers must be at least 0"),
        (["--concurrency", "2"], "--concurrency is for --engine ray"),
        (["--engine", "ray", "--device", "cpu"], "--device is for --engine torch"),
        (["--engine", "ray", "--concurrency", "0"], "--concurrency must be at least 1"),
    ]
    for extra, message in cases:
        assert segment.main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    # WORLD_SIZE without a launcher's rendezvous: refused, not segmented twice
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert segment.main(base) == 2
    err = capsys.readouterr().err.strip()
    assert "launched as 2 processes (WORLD_SIZE) but they cannot form a group" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "labels").exists()


def test_import_does_not_import_ray():
    code = "import sys, transformers_setr, transformers_setr.apps.segment; print('ray' in sys.modules)"
    result = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=environment(), check=True)
    assert result.stdout.strip() == "False"


def test_ray_data_writes_the_label_maps_of_one_process(photos, tmp_path, capsys):
    ray = pytest.importorskip("ray")
    import pyarrow.parquet as parquet

    from transformers_setr.apps.ray_segment import segment_with_ray

    root, model, folder, one = photos
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = segment_with_ray(str(model), [str(folder)], tmp_path / "api", concurrency=2, batch_size=3)
        assert (result["segmented"], result["failed"]) == (18, 0)
        assert_same_label_maps(one, tmp_path / "api")
        table = parquet.read_table(tmp_path / "api" / "class_shares.parquet").to_pylist()
        assert sorted(row["name"] for row in table) == sorted(PHOTOGRAPHS)
        for row in table:
            record = json.loads((one / "classes" / f"{row['name']}.json").read_text())
            shares = {c["label"]: c["share"] for c in record["classes"]}
            assert {label: row[label] for label in shares} == pytest.approx(shares)
            assert all(row[label] == 0 for label in set(CLASS_NAMES) - set(shares))

        # a parquet table of paths, through the command line
        import pyarrow

        paths = [str(p) for p in sorted(folder.iterdir()) if p.suffix != ".txt"][:4]
        parquet.write_table(pyarrow.table({"path": paths}), tmp_path / "images.parquet")
        argv = [str(tmp_path / "images.parquet"), "--model", str(model), "--output", str(tmp_path / "cli")]
        assert segment.main([*argv, "--engine", "ray", "--concurrency", "1"]) == 0
        assert "4 segmented, 0 skipped (already done), 0 failed with Ray" in capsys.readouterr().err
        for path in paths:
            name = f"{Path(path).stem}.png"
            assert (tmp_path / "cli" / "labels" / name).read_bytes() == (one / "labels" / name).read_bytes()
    finally:
        ray.shutdown()
