"""The GPU figures of issue 25 in one run (< 8 minutes on one H100 / H200), written to one JSON file.

    .venv/bin/python benchmarks/gpu_figures.py --output gpu_figures.json        # on a machine with an NVIDIA GPU
    .venv/bin/python benchmarks/gpu_figures.py --device cpu --smoke --output /tmp/figures.json  # checks the script

What it measures (ViT-L/16 with random weights: speed and memory do not depend on them):
- inference images/s on ADE-sized images (512x683, an ADE20K validation image after the (2048, 512) test resize),
  `whole` (one forward over 512x683) and `slide` (two 512x512 windows, stride 341), fp32 and bf16 autocast, batch 1
  and 8, for Naive and PUP (`--decoders`); `model(pixel_values, inference_mode=...)` after `optimize_for_inference`,
  under `torch.inference_mode`, the argmax taken as an evaluation would; the best of `--repeats` timed passes after
  a warm-up pass;
- one training step (forward with the decode and auxiliary losses, backward, SGD momentum 0.9) of Naive and PUP at
  the seed's batch per GPU (`preset.batch_size // preset.gpus`: 2) on 512x512 crops, fp32 and bf16 autocast:
  images/s (best step after a warm-up step), `torch.cuda.max_memory_allocated` and `max_memory_reserved` over the
  timed steps, next to the seed's `Mem (GB)` column (mmseg's training on V100s, fp32);
- MFU: the FLOPs done per second (counted with torch's FlopCounterMode on the meta device: matmuls, convolutions,
  attention's two matmuls; training = forward + backward, no recomputation) over the chip's dense bf16 peak
  (`bench_cuda.PEAK_BF16_TFLOPS`, or `--peak-tflops`), for every row (fp32 rows too, against the bf16 peak).

Goals (issue 25): slide bf16 inference >= 60 ADE images/s on one H100 (the seed: 4.72 on a V100), training MFU
>= 40 %. `--budget-s` stops starting new measurements once that much time has passed (recorded as skipped), so a
slow chip still writes its JSON in time. On CPU (`--device cpu`) there is no peak memory (null) and no MFU unless
`--peak-tflops` is given.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cuda import PEAK_BF16_TFLOPS, peak_tflops  # noqa: E402
from common import SMOKE_ENCODER, count_inference_gflop, count_training_gflop, torch_build  # noqa: E402

from transformers_setr.models.setr.fast_inference_setr import optimize_for_inference  # noqa: E402
from transformers_setr.models.setr.modeling_setr import SetrForSemanticSegmentation  # noqa: E402
from transformers_setr.presets import PRESETS  # noqa: E402
from transformers_setr.training import config_for_preset  # noqa: E402

ADE_IMAGE = (512, 683)
PRESET_OF = {"naive": "setr-naive-vit-large-ade20k-512", "pup": "setr-pup-vit-large-ade20k-512"}
GOAL_SLIDE_BF16_IMAGES_PER_SECOND = 60.0  # on one H100
GOAL_TRAINING_MFU = 0.40
SMOKE_SIZE = 64  # --smoke: images and crops of this side, so the check takes seconds


def build_model(decoder: str, smoke: bool, **overrides: Any) -> SetrForSemanticSegmentation:
    if smoke:
        overrides = {**SMOKE_ENCODER, "decoder_channels": 16, "slide_crop_size": 32, "slide_stride": 21, **overrides}
    torch.manual_seed(0)
    return SetrForSemanticSegmentation(config_for_preset(PRESETS[PRESET_OF[decoder]], **overrides))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def mfu(gflop_per_second: float, peak: float | None) -> float | None:
    return gflop_per_second / 1e3 / peak if peak else None


def inference_row(args, device, decoder: str, mode: str, dtype: str, batch: int, peak: float | None) -> dict:
    image = (SMOKE_SIZE, SMOKE_SIZE * 4 // 3) if args.smoke else ADE_IMAGE
    model = build_model(decoder, args.smoke, slide_batch_size=2 * batch)  # all of a call's windows in one forward
    gflop = count_inference_gflop(model.config, *image, mode)
    model = optimize_for_inference(model.to(device))
    pixel_values = torch.randn(batch, 3, *image, generator=torch.Generator().manual_seed(0)).to(device)
    calls = max(args.images // batch, 1)

    def one_pass() -> float:
        synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            for _ in range(calls):
                model(pixel_values, inference_mode=mode).logits.argmax(1)
        synchronize(device)
        return time.perf_counter() - start

    one_pass()  # warm-up: kernels, caches
    images_per_second = calls * batch / min(one_pass() for _ in range(args.repeats))
    return {
        "decoder": decoder, "mode": mode, "dtype": dtype, "batch": batch, "image": list(image),
        "images_per_second": images_per_second, "gflop_per_image": gflop,
        "tflop_per_second": images_per_second * gflop / 1e3, "mfu_bf16_peak": mfu(images_per_second * gflop, peak),
    }  # fmt: skip


def training_row(args, device, decoder: str, dtype: str, peak: float | None) -> dict:
    preset = PRESETS[PRESET_OF[decoder]]
    batch = preset.batch_size // preset.gpus
    size = SMOKE_SIZE if args.smoke else preset.crop_size
    model = build_model(decoder, args.smoke).to(device).train()
    gflop = count_training_gflop(model.config, batch, size, size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, model.config.num_labels, (batch, size, size), generator=generator).to(device)

    def step() -> float:
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = model(pixel_values, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        return time.perf_counter() - start

    step()  # warm-up: allocates the optimizer state
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = min(step() for _ in range(args.steps))
    gib = 1024**3
    allocated = torch.cuda.max_memory_allocated(device) / gib if device.type == "cuda" else None
    reserved = torch.cuda.max_memory_reserved(device) / gib if device.type == "cuda" else None
    images_per_second = batch / seconds
    return {
        "decoder": decoder, "dtype": dtype, "batch_per_gpu": batch, "crop": [size, size], "step_seconds": seconds,
        "images_per_second": images_per_second, "gflop_per_step": gflop,
        "tflop_per_second": gflop / seconds / 1e3, "mfu_bf16_peak": mfu(gflop / seconds, peak),
        "peak_allocated_gib": allocated, "peak_reserved_gib": reserved, "seed_mem_gb": preset.memory_gb,
        "seed_fps_v100": preset.fps,
    }  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--output", default="gpu_figures.json", help="the JSON file to write")
    parser.add_argument("--decoders", nargs="+", choices=list(PRESET_OF), default=list(PRESET_OF))
    parser.add_argument("--images", type=int, default=32, help="images per timed inference pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed inference passes (the best counts)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps after a warm-up step")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no new measurement after this time")
    parser.add_argument("--smoke", action="store_true", help="reduced model and images: checks the script")
    args = parser.parse_args(argv)
    for name in ("images", "repeats", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device!r} is not a torch device")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available on this machine (use --device cpu --smoke to check the script)")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        parser.error(f"--peak-tflops must be positive, got {args.peak_tflops}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device, start = args.device, time.perf_counter()
    peak, peak_source = peak_tflops(device, args.peak_tflops)
    skipped: list[str] = []

    def in_budget(what: str) -> bool:
        if time.perf_counter() - start > args.budget_s:
            skipped.append(what)
            return False
        print(f"[{time.perf_counter() - start:6.1f} s] {what}", flush=True)
        return True

    inference, training = [], []
    for decoder in args.decoders:
        for mode in ("slide", "whole"):
            for dtype in ("bf16", "fp32"):
                for batch in (1, 8):
                    if in_budget(f"inference {decoder} {mode} {dtype} batch {batch}"):
                        inference.append(inference_row(args, device, decoder, mode, dtype, batch, peak))
                        release(device)  # the row's model is gone with its function
    for decoder in args.decoders:
        for dtype in ("bf16", "fp32"):
            if in_budget(f"training {decoder} {dtype}"):
                training.append(training_row(args, device, decoder, dtype, peak))
                release(device)
    slide_bf16 = [row["images_per_second"] for row in inference if row["mode"] == "slide" and row["dtype"] == "bf16"]
    training_mfu = [row["mfu_bf16_peak"] for row in training if row["dtype"] == "bf16" and row["mfu_bf16_peak"]]
    figures = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "torch": torch_build(torch),
        "smoke": args.smoke,
        "peak_bf16_tflops": peak,
        "peak_source": peak_source,
        "known_peaks": PEAK_BF16_TFLOPS,
        "inference": inference,
        "training": training,
        "goals": {
            "slide_bf16_images_per_second": GOAL_SLIDE_BF16_IMAGES_PER_SECOND,
            "best_slide_bf16_images_per_second": max(slide_bf16, default=None),
            "slide_bf16_met": bool(slide_bf16) and max(slide_bf16) >= GOAL_SLIDE_BF16_IMAGES_PER_SECOND,
            "training_mfu": GOAL_TRAINING_MFU,
            "best_training_bf16_mfu": max(training_mfu, default=None),
            "training_mfu_met": bool(training_mfu) and max(training_mfu) >= GOAL_TRAINING_MFU,
        },
        "skipped_over_budget": skipped,
        "seconds": time.perf_counter() - start,
        "command": " ".join(["benchmarks/gpu_figures.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    output = Path(args.output)
    temporary = output.with_name(output.name + ".tmp")
    temporary.write_text(json.dumps(figures, indent=2) + "\n")
    os.replace(temporary, output)
    print(f"wrote {output} ({figures['seconds']:.0f} s)")
    return figures


if __name__ == "__main__":
    main()
