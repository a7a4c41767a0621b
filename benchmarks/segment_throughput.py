"""`setr segment` throughput side by side in one run: images/s with 0 and 2 decode workers (`--num_workers`), on 1
and 2 processes (torchrun), and the share of the time the model is busy (time inside the model and its label
resize, `predict_label_maps`, over the segmenting time of all processes).

    .venv/bin/python benchmarks/segment_throughput.py [--photos 36] [--hidden 192 --layers 6]

The photographs are scikit-image's (18 of them, 102 to 1411 pixels a side, repeated to `--photos`); the model is a
small random SETR-PUP (ViT of `--hidden` width and `--layers` layers, slide windows of 256, test scale 256/512) saved
as a released model is. Each configuration is a fresh command (`python -m transformers_setr segment`, or torchrun
with 2 processes, which gives each process one thread); images/s counts the segmenting loop (the slowest rank's),
not the start-up, which the `wall` column includes.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, format_table, print_report

PHOTOGRAPHS = (
    "astronaut", "camera", "chelsea", "coffee", "rocket", "coins", "hubble_deep_field", "immunohistochemistry",
    "moon", "page", "text", "clock", "brick", "grass", "gravel", "colorwheel", "logo", "retina",
)  # fmt: skip


def write_inputs(folder: Path, count: int, hidden: int, layers: int) -> Path:
    import torch
    from PIL import Image
    from skimage import data

    from transformers_setr import SetrConfig, SetrForSemanticSegmentation, SetrImageProcessorPil

    photos = folder / "photos"
    photos.mkdir(parents=True)
    for index in range(count):
        name = PHOTOGRAPHS[index % len(PHOTOGRAPHS)]
        Image.fromarray(getattr(data, name)()).convert("RGB").save(photos / f"{index:03d}-{name}.jpg", quality=92)
    config = SetrConfig(
        decoder_type="pup",
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=4 * hidden,
        image_size=256,
        out_indices=[layers // 4, layers // 2, 3 * layers // 4, layers - 1],
        num_labels=150,
        inference_mode="slide",
        slide_crop_size=256,
        slide_stride=171,
    )
    torch.manual_seed(0)
    SetrForSemanticSegmentation(config).eval().save_pretrained(folder / "model")
    SetrImageProcessorPil(size={"shortest_edge": 256, "longest_edge": 512}).save_pretrained(folder / "model")
    return photos


def free_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def run(folder: Path, photos: Path, processes: int, workers: int) -> dict:
    output = folder / f"out-{processes}-{workers}"
    argv = ["segment", str(photos), "--model", str(folder / "model"), "--output", str(output)]
    argv += ["--num_workers", str(workers)]
    if processes == 1:
        command = [sys.executable, "-m", "transformers_setr", *argv]
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--nnodes", "1",
            "--master_addr", "127.0.0.1", "--master_port", free_port(),
            "-m", "transformers_setr", *argv,
        ]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=ROOT)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    summary = json.loads((output / "summary.json").read_text())
    busy = sum(rank["model_seconds"] for rank in summary["ranks"]) / (processes * summary["seconds"])
    return {"images_per_second": summary["images_per_second"], "busy": busy, "wall": wall, **summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=36)
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--layers", type=int, default=6)
    args = parser.parse_args()
    configurations = [(1, 0), (1, 2), (2, 0), (2, 2)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="segment-throughput-") as scratch:
        folder = Path(scratch)
        photos = write_inputs(folder, args.photos, args.hidden, args.layers)
        results = {(p, w): run(folder, photos, p, w) for p, w in configurations}
        base = results[(1, 0)]["images_per_second"]
        for (processes, workers), result in results.items():
            rows.append(
                [
                    processes,
                    workers,
                    f"{result['images_per_second']:.2f}",
                    f"{result['images_per_second'] / base:.2f}x",
                    f"{100 * result['busy']:.0f}%",
                    f"{result['wall']:.1f} s",
                ]
            )
        labels = {config: sorted((folder / f"out-{config[0]}-{config[1]}" / "labels").iterdir()) for config in results}
        assert all(len(files) == args.photos for files in labels.values()), "not every image was segmented"
    table = format_table(
        ["processes", "decode workers", "images/s", "vs 1 process, 0 workers", "model busy", "wall (with start-up)"],
        rows,
    )
    print_report(
        f"setr segment throughput: {args.photos} photographs (scikit-image), SETR-PUP ViT {args.hidden}x"
        f"{args.layers}, 150 classes, slide 256/171",
        table,
        notes=[
            "1 process: torch's default threads; 2 processes: torchrun gives each 1 thread (OMP_NUM_THREADS=1).",
            "model busy: time in `predict_label_maps` (forward and the bounded-memory resize and argmax) over the "
            "segmenting loop's time, summed over processes.",
        ],
    )


if __name__ == "__main__":
    main()
