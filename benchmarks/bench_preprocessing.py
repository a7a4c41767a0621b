"""Image preprocessing per image: torchvision backend vs PIL backend vs mmsegmentation's cv2 test pipeline.

    .venv/bin/python benchmarks/bench_preprocessing.py            # ADE20K and Cityscapes sizes, min over 3 x 20
    .venv/bin/python benchmarks/bench_preprocessing.py --quick    # 3 x 5 calls

What each contestant does, from a decoded image to normalised float32 pixel values at the test scale:
- `SetrImageProcessor` (torchvision backend) and `SetrImageProcessorPil`, called on one PIL RGB image (what
  `datasets` yields) with `return_tensors="pt"`; the scale is the preset's (ADE20K 2048x512, Cityscapes 2049x1025).
- mmsegmentation 1.2.2 (its own environment, a worker process): `Resize(scale, keep_ratio=True)` (mmcv, cv2) and
  `PackSegInputs` on the BGR array `cv2.imread` would give, then the SETR configs' `SegDataPreProcessor`.
Image decoding is left out on all sides. The three run in alternating blocks; each row reports the per-image minimum
and the median of all calls. Ratios are PIL / torchvision and mmseg / torchvision (higher: torchvision faster).
"""

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    MmsegWorker,
    add_torch_check_argument,
    format_table,
    print_report,
    scratch_dir,
    set_threads,
)

from transformers_setr.models.setr.image_processing_pil_setr import SetrImageProcessorPil  # noqa: E402
from transformers_setr.models.setr.image_processing_setr import SetrImageProcessor  # noqa: E402
from transformers_setr.presets import PRESETS  # noqa: E402

# (name, image height x width, preset whose test scale applies)
CASES = [
    ("ADE20K 512x683", (512, 683), "setr-pup-vit-large-ade20k-512"),  # the common ADE shape: no resize needed
    ("ADE20K 768x1024", (768, 1024), "setr-pup-vit-large-ade20k-512"),  # a larger one: resized to 512x683
    ("Cityscapes 1024x2048", (1024, 2048), "setr-pup-vit-large-cityscapes-768"),  # resized to 1025x2049
]
TARGET_PIL_RATIO = 3.0


def synthetic_photo(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth image with texture (not noise, which no real photo is): gradients, blobs and a little grain."""
    generator = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    for channel in range(3):
        phase = generator.uniform(0, 2 * np.pi, 2)
        image[..., channel] = 128 + 60 * np.sin(rows / 37 + phase[0]) * np.cos(cols / 53 + phase[1])
    image += generator.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def time_block(function, repeats: int) -> list[float]:
    import time

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=3, help="alternating blocks per contestant")
    parser.add_argument("--calls", type=int, default=20, help="calls per block")
    parser.add_argument("--quick", action="store_true", help="3 blocks of 5 calls")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on both sides (default: all)")
    parser.add_argument("--mmseg-python", default=None)
    add_torch_check_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.calls = 5
    threads = set_threads(args.threads)
    rows, misses = [], []
    worker = MmsegWorker(args.mmseg_python, threads, args.allow_torch_mismatch)
    with scratch_dir() as tmp, worker:
        for index, (name, (height, width), preset_name) in enumerate(CASES):
            longest, shortest = PRESETS[preset_name].test_scale
            size = {"shortest_edge": shortest, "longest_edge": longest}
            rgb = synthetic_photo(height, width, seed=index)
            image = Image.fromarray(rgb)
            bgr_path = Path(tmp) / "image.npy"
            np.save(bgr_path, np.ascontiguousarray(rgb[..., ::-1]))
            processors = {
                "torchvision": SetrImageProcessor(size=size),
                "PIL": SetrImageProcessorPil(size=size),
            }
            outputs = {key: p(images=image, return_tensors="pt")["pixel_values"] for key, p in processors.items()}
            shapes = {tuple(output.shape) for output in outputs.values()}
            assert len(shapes) == 1, f"the backends disagree on the output size: {shapes}"
            times: dict[str, list[float]] = {"torchvision": [], "PIL": [], "mmseg": []}
            mmseg_shape = None
            for block in range(args.blocks):
                order = ["torchvision", "PIL", "mmseg"]
                order = order[block % 3 :] + order[: block % 3]
                for contestant in order:
                    print(f"  {name} {contestant} block {block + 1}", flush=True)
                    if contestant == "mmseg":
                        answer = worker.request(
                            op="preprocess", image=str(bgr_path), scale=[longest, shortest], repeats=args.calls
                        )
                        times["mmseg"] += answer["times"]
                        mmseg_shape = tuple(answer["shape"])
                        continue
                    processor = processors[contestant]
                    times[contestant] += time_block(
                        lambda p=processor, i=image: p(images=i, return_tensors="pt"), args.calls
                    )
            shape = shapes.pop()
            best = {key: min(values) for key, values in times.items()}
            median = {key: statistics.median(values) for key, values in times.items()}
            max_diff = (outputs["torchvision"] - outputs["PIL"]).abs().max().item()
            pil_ratio = best["PIL"] / best["torchvision"]
            if pil_ratio < TARGET_PIL_RATIO:
                misses.append(f"{name}: PIL / torchvision {pil_ratio:.2f}")
            rows.append(
                [
                    name,
                    f"{shape[-2]}x{shape[-1]}",
                    *(f"{best[key] * 1e3:.1f} ({median[key] * 1e3:.1f})" for key in ("torchvision", "PIL", "mmseg")),
                    f"{pil_ratio:.2f} (≥{TARGET_PIL_RATIO:g})",
                    f"{best['mmseg'] / best['torchvision']:.2f}",
                    f"{max_diff:.1e}",
                    "x".join(str(v) for v in mmseg_shape[-2:]) if mmseg_shape else "-",
                ]
            )
    headers = ["image", "output", "torchvision ms", "PIL ms", "mmseg cv2 ms", "PIL / torchvision"]
    headers += ["mmseg / torchvision", "max abs diff tv vs PIL", "mmseg output"]
    notes = [
        f"Per image, min (median) over {args.blocks} x {args.calls} calls; mmseg {worker.version} in .venv-mmseg.",
        "Targets missed: " + ("; ".join(misses) if misses else "none"),
    ]
    print_report("Preprocessing per image", format_table(headers, rows), notes, threads)


if __name__ == "__main__":
    main()
