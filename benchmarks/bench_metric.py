"""mIoU over an ADE20K-validation-sized stream: this package's `MeanIoU` (and its `evaluate` module) against
evaluate's official `mean_iou`, with identical values required.

    .venv/bin/python benchmarks/bench_metric.py --official mean_iou            # the Hub's evaluate-metric/mean_iou
    .venv/bin/python benchmarks/bench_metric.py --official /path/to/mean_iou   # a local copy (offline machines)
    .venv/bin/python benchmarks/bench_metric.py --official /path/to/mean_iou --quick   # 200 images

The official metric is loaded with `evaluate.load(--official)`: the Hub id where the Hub is reachable, else a folder
holding a copy of the official `mean_iou.py`, kept outside this repository (it is never committed here).

The stream: `--images` (2000, the ADE20K validation set) pairs of uint8 maps at ADE20K validation sizes, 150 classes
plus 255 (ignore, ~10% of pixels), predictions right on ~75% of the pixels; a pool of 16 distinct pairs is cycled
(generated before timing). Each contestant gets the stream image by image, as an evaluation loop feeds it, then
computes once: `MeanIoU.update` / `compute`, or `add_batch` / `compute(num_labels=150, ignore_index=255)` for the
two evaluate modules (default settings: results go through evaluate's Arrow cache). The stream is cut into blocks
of `--block` images; the contestants alternate block by block, each block with fresh metric objects, and the times
are summed (per-block results must agree too). Ratios are evaluate's time over ours (higher: ours faster).
"""

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, print_report, set_threads  # noqa: E402

from transformers_setr.evaluation.metrics import MeanIoU, evaluate_metric_path  # noqa: E402

NUM_LABELS, IGNORE_INDEX = 150, 255
SIZES = [(512, 683), (683, 512), (512, 512), (512, 768), (384, 512), (512, 1024), (640, 480), (512, 910)]
TARGET_RATIO = 20.0


def make_pool(count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    generator = np.random.default_rng(seed)
    pool = []
    for index in range(count):
        height, width = SIZES[index % len(SIZES)]
        # Blocky "segments": a coarse random map up-sampled, so classes come in regions as in real maps.
        coarse = generator.integers(0, NUM_LABELS, (height // 32 + 1, width // 32 + 1))
        labels = np.kron(coarse, np.ones((32, 32), np.int64))[:height, :width].astype(np.uint8)
        labels[generator.random((height, width)) < 0.1] = IGNORE_INDEX
        wrong = generator.random((height, width)) < 0.25
        predictions = np.where(wrong, generator.integers(0, NUM_LABELS, (height, width)), labels).astype(np.uint8)
        predictions[predictions == IGNORE_INDEX] = 0  # a model predicts classes, never the ignore value
        pool.append((predictions, labels))
    return pool


def run_ours(pairs) -> dict:
    metric = MeanIoU(NUM_LABELS, IGNORE_INDEX)
    for predictions, labels in pairs:
        metric.update(torch.from_numpy(predictions), torch.from_numpy(labels))
    summary = metric.compute()
    return {
        "mean_iou": summary["mIoU"],
        "mean_accuracy": summary["mAcc"],
        "overall_accuracy": summary["aAcc"],
        "per_category_iou": np.asarray(list(summary["per_class_iou"].values()), dtype=np.float64),
    }


def run_evaluate(module, pairs) -> dict:
    for predictions, labels in pairs:
        module.add_batch(predictions=[predictions], references=[labels])
    result = module.compute(num_labels=NUM_LABELS, ignore_index=IGNORE_INDEX)
    result["per_category_iou"] = np.asarray(result["per_category_iou"], dtype=np.float64)
    return result


def largest_difference(first: dict, second: dict) -> float:
    worst = 0.0
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou"):
        a, b = np.asarray(first[key], np.float64), np.asarray(second[key], np.float64)
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            return math.inf
        worst = max(worst, float(np.nan_to_num(np.abs(a - b)).max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", required=True, help="evaluate.load() path: 'mean_iou' or a local folder")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--block", type=int, default=250)
    parser.add_argument("--quick", action="store_true", help="200 images in blocks of 100")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.quick:
        args.images, args.block = 200, 100
    threads = set_threads(args.threads)
    import evaluate

    pool = make_pool(16, seed=0)
    pixels = sum(p.size for p, _ in pool) / len(pool)
    contestants = {
        "ours (MeanIoU)": lambda pairs: run_ours(pairs),
        "ours (evaluate module)": lambda pairs: run_evaluate(evaluate.load(evaluate_metric_path()), pairs),
        "evaluate mean_iou (official)": lambda pairs: run_evaluate(evaluate.load(args.official), pairs),
    }
    times = {name: 0.0 for name in contestants}
    differences = {name: 0.0 for name in contestants}
    blocks = math.ceil(args.images / args.block)
    for block in range(blocks):
        count = min(args.block, args.images - block * args.block)
        pairs = [pool[(block * args.block + i) % len(pool)] for i in range(count)]
        names = list(contestants)
        names = names[block % len(names) :] + names[: block % len(names)]
        results = {}
        for name in names:
            print(f"  block {block + 1}/{blocks} ({count} images): {name}", flush=True)
            start = time.perf_counter()
            results[name] = contestants[name](pairs)
            times[name] += time.perf_counter() - start
        for name in contestants:
            differences[name] = max(
                differences[name], largest_difference(results[name], results["evaluate mean_iou (official)"])
            )
    official = times["evaluate mean_iou (official)"]
    rows = [
        [
            name,
            f"{seconds:.2f}",
            f"{seconds / args.images * 1e3:.2f}",
            f"{official / seconds:.1f}",
            f"{differences[name]:.1e}",
        ]
        for name, seconds in times.items()
    ]
    misses = (
        [] if official / times["ours (MeanIoU)"] >= TARGET_RATIO else [f"{official / times['ours (MeanIoU)']:.1f}x"]
    )
    if differences["ours (MeanIoU)"] != 0.0 or differences["ours (evaluate module)"] != 0.0:
        misses.append("values differ from the official metric")
    notes = [
        f"{args.images} images ({pixels / 1e3:.0f}k pixels on average), blocks of {args.block}; official metric: "
        f"`evaluate.load({args.official!r})`, evaluate {evaluate.__version__}. Target: ours ≥ {TARGET_RATIO:g}x faster "
        "with identical values.",
        "Targets missed: " + ("; ".join(misses) if misses else "none"),
    ]
    headers = ["metric", "total s", "ms / image", "official / this", "max abs diff vs official"]
    print_report("mIoU over an ADE20K-validation-sized stream", format_table(headers, rows), notes, threads)


if __name__ == "__main__":
    main()
