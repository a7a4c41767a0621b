"""The CUDA section: ADE20K slide-inference throughput in bf16 (images/s and MFU) and training memory at batch 2
with bf16 autocast and activation checkpointing. Runs when a CUDA device is present and says so when not.

    .venv/bin/python benchmarks/bench_cuda.py                      # Naive, PUP, MLA (ViT-L/16, ADE20K 512x512 windows)
    .venv/bin/python benchmarks/bench_cuda.py --decoders pup --images 32 --compile
    .venv/bin/python benchmarks/bench_cuda.py --device cpu --smoke  # checks the script itself on a reduced model

Throughput: `--images` ADE-shaped images (512x683 after the test resize: two 512x512 windows each, stride 341) go
through `model(pixel_values, inference_mode="slide")` `--images-per-call` at a time, windows batched by
`--window-batch` (the config's `slide_batch_size`), under `torch.inference_mode` and `torch.autocast(bfloat16)`;
images/s is the best of `--repeats` timed passes after a warm-up pass. MFU = FLOPs done per second (counted on the
model with torch's FlopCounterMode) / the device's dense bf16 peak (a table of known GPUs, or `--peak-tflops`).
Training memory: `torch.cuda.max_memory_allocated` over one SGD step of the PUP model with its auxiliary heads, batch
2 at 512x512, in fp32, bf16 autocast, and bf16 autocast + gradient checkpointing. Weights are random (speed and
memory do not depend on them).
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import count_inference_gflop, format_table, print_report  # noqa: E402

from transformers_setr.models.setr.configuration_setr import SetrConfig  # noqa: E402
from transformers_setr.models.setr.fast_inference_setr import optimize_for_inference  # noqa: E402
from transformers_setr.models.setr.modeling_setr import SetrForSemanticSegmentation  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 80GB HBM3": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
}
ADE_IMAGE = (512, 683)  # an ADE20K validation image after the (2048, 512) keep-ratio test resize
TARGET_IMAGES_PER_SECOND = 60.0  # issue 5, on an H100


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "given with --peak-tflops"
    if device.type != "cuda":
        return None, "unknown for this device (pass --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():
        if key.lower() in name.lower():
            return value, f"{name}: {value:g} TFLOP/s dense bf16 (data sheet)"
    return None, f"{name}: not in the table (pass --peak-tflops)"


def build_config(decoder: str, smoke: bool, **overrides) -> SetrConfig:
    kwargs = dict(decoder_type=decoder, num_labels=150, inference_mode="slide", slide_crop_size=512, slide_stride=341)
    if smoke:
        kwargs.update(
            hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=256,
            out_indices=[0, 1, 2, 3], mla_channels=8, mla_neck_channels=16, auxiliary_channels=16,
            decoder_channels=32 if decoder == "mla" else 16,
        )  # fmt: skip
    kwargs.update(overrides)
    return SetrConfig(**kwargs)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(args: argparse.Namespace, device: torch.device, decoder: str, dtype: str) -> float:
    config = build_config(decoder, args.smoke, slide_batch_size=args.window_batch)
    model = optimize_for_inference(SetrForSemanticSegmentation(config).to(device))
    runner = torch.compile(model) if args.compile else model
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(args.images_per_call, 3, *ADE_IMAGE, generator=generator).to(device)
    calls = max(args.images // args.images_per_call, 1)

    def one_pass(run) -> float:
        synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            for _ in range(calls):
                run(pixel_values).logits.argmax(1)  # the segmentation, as an evaluation loop would take it
        synchronize(device)
        return time.perf_counter() - start

    one_pass(runner)  # warm-up: kernels, autotuning, caches, compilation
    best = min(one_pass(runner) for _ in range(args.repeats))
    del model, runner
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return calls * args.images_per_call / best


def training_memory(args: argparse.Namespace, device: torch.device, bf16: bool, checkpointing: bool) -> float:
    """Peak allocated GiB over one SGD step (PUP with auxiliary heads, batch 2 at 512x512)."""
    config = build_config("pup", args.smoke)
    model = SetrForSemanticSegmentation(config).to(device).train()
    if checkpointing:
        model.activation_checkpointing_enable()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(2, 3, 512, 512, generator=generator).to(device)
    labels = torch.randint(0, config.num_labels, (2, 512, 512), generator=generator).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(pixel_values, labels=labels).loss
    loss.backward()
    optimizer.step()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else float("nan")
    del model, optimizer, loss
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--decoders", nargs="+", choices=["naive", "pup", "mla"], default=["naive", "pup", "mla"])
    parser.add_argument("--images", type=int, default=64, help="images per timed pass")
    parser.add_argument("--images-per-call", type=int, default=8)
    parser.add_argument("--window-batch", type=int, default=16, help="slide windows per forward")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device")
    parser.add_argument("--smoke", action="store_true", help="reduced model: checks the script, not speed")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("\n## CUDA section\n")
        print("CUDA is not available on this machine: the CUDA section was skipped (no numbers measured).")
        print("Run `.venv/bin/python benchmarks/bench_cuda.py` on a machine with an NVIDIA GPU.")
        return
    peak, peak_source = peak_tflops(device, args.peak_tflops)
    rows = []
    for decoder in args.decoders:
        gflop = count_inference_gflop(build_config(decoder, args.smoke), *ADE_IMAGE, "slide")  # per ADE image
        print(f"[{decoder}] {gflop:.0f} GFLOP per ADE image (slide)", flush=True)
        rates = {dtype: throughput(args, device, decoder, dtype) for dtype in ("bf16", "fp32")}
        mfu = f"{rates['bf16'] * gflop / 1e3 / peak:.1%}" if peak else "-"
        target = f"{rates['bf16'] / TARGET_IMAGES_PER_SECOND:.2f}" if device.type == "cuda" else "-"
        rows.append(
            [decoder, f"{rates['bf16']:.1f}", f"{rates['fp32']:.1f}", f"{rates['bf16'] / rates['fp32']:.2f}"]
            + [f"{rates['bf16'] * gflop / 1e3:.1f}", mfu, target]
        )
    headers = ["decoder", "bf16 images/s", "fp32 images/s", "bf16 / fp32", "bf16 TFLOP/s", "bf16 MFU"]
    headers += [f"bf16 / target {TARGET_IMAGES_PER_SECOND:g} img/s"]
    throughput_table = format_table(headers, rows)
    memory = {
        "fp32": training_memory(args, device, bf16=False, checkpointing=False),
        "bf16 autocast": training_memory(args, device, bf16=True, checkpointing=False),
        "bf16 autocast + checkpointing": training_memory(args, device, bf16=True, checkpointing=True),
    }
    memory_rows = [[name, f"{value:.2f}", f"{value / memory['fp32']:.3f}"] for name, value in memory.items()]
    memory_table = format_table(["PUP training step, batch 2, 512x512", "peak GiB", "/ fp32"], memory_rows)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    notes = [
        f"Device: {device_name}; peak: {peak_source}. ADE images of {ADE_IMAGE[0]}x{ADE_IMAGE[1]} (2 windows each), "
        f"{args.images_per_call} images per call, {args.window_batch} windows per forward, best of {args.repeats} "
        f"passes of {args.images} images{', torch.compile' if args.compile else ''}.",
        "Training memory (torch.cuda.max_memory_allocated over one SGD step):\n\n" + memory_table,
    ]
    print_report("CUDA: slide throughput (ADE20K) and training memory", throughput_table, notes)


if __name__ == "__main__":
    main()
