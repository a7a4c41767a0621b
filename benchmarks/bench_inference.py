"""SETR inference: this package against mmsegmentation 1.2.2, side by side in one run, with the same weights.

    .venv/bin/python benchmarks/bench_inference.py            # Naive/PUP/MLA, whole 512x512 and slide 512x683,
                                                             # batch 1 and 4, fp32 and bf16 autocast, min of 3
    .venv/bin/python benchmarks/bench_inference.py --quick    # Naive, whole, batch 1, min of 2 (about 2 minutes)

For each decoder, mmsegmentation builds the released ADE20K ViT-L config with seeded random weights in its own
environment (`.venv-mmseg`, a worker process: `benchmarks/mmseg_worker.py`); the checkpoint it saves is converted
with this package's converter. Every repeat runs each contestant once, in rotating order, while the other process
waits, and each row reports the minimum over the repeats and how far the slowest repeat was from it (`noise`).

Both sides return logits at the input resolution: mmseg's `encode_decode` (whole) or `slide_inference`; ours
`model(..., inference_mode=...)`, whole-mode logits resized bilinearly to the input as mmseg does. Ours runs under
`torch.inference_mode`, mmseg under `torch.no_grad` (its test loop); bf16 means `torch.autocast("cpu", bfloat16)`.
`argmax agree` compares our bf16 segmentation with our fp32 one; `max |diff|` compares our fp32 logits with
mmseg's on a 1/8 sub-sample (same weights, so it should be ~1e-5). `GFLOP/s` uses FLOPs counted on our fp32 model.

`× floor` is each time over the floor: the model's GFLOP divided by the matmul rate measured in the same run
(`common.GemmFloor`: a `--gemm-size`^3 matmul per dtype through torch.mm and through oneDNN, the faster of the
two, timed in every repeat like one more contestant, at the same thread count; fp32 times against the fp32 rate, bf16 autocast times against the bf16 rate). Both sides must run
the same torch build (refused otherwise, unless `--allow-torch-mismatch`).
"""

import argparse
import gc
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    GemmFloor,
    MmsegWorker,
    add_floor_argument,
    add_torch_check_argument,
    count_inference_gflop,
    format_table,
    print_report,
    scratch_dir,
    set_threads,
    spread,
    time_call,
)

from transformers_setr.conversion import load_checkpoint_file  # noqa: E402
from transformers_setr.conversion.from_mmseg import build_converted_model  # noqa: E402
from transformers_setr.models.setr.fast_inference_setr import optimize_for_inference  # noqa: E402
from transformers_setr.presets import PRESETS  # noqa: E402

# decoder -> (the fixture script's released-variant name, our preset)
VARIANTS = {
    "naive": ("ade20k-naive", "setr-naive-vit-large-ade20k-512"),
    "pup": ("ade20k-pup", "setr-pup-vit-large-ade20k-512"),
    "mla": ("ade20k-mla-b16", "setr-mla-vit-large-ade20k-512-b16"),
}
SIZES = {"whole": (512, 512), "slide": (512, 683)}  # slide: an ADE-shaped image, 2 windows of 512 (stride 341)
TARGET_FP32 = {"naive": 0.85, "pup": 0.85, "mla": 0.95}
TARGET_BF16 = 0.5
TARGET_AGREEMENT = 0.995
TARGET_FLOOR = {"fp32": 1.10, "bf16": 1.35}  # issue 15: time / floor, whole and slide, all three decoders
# Pixels whose top two fp32 logits differ by less than this are near-ties: bf16 rounding (a ~0.4% relative
# error per operand) can flip them whatever the implementation; random weights give many, trained ones few.
NEAR_TIE_MARGIN = 0.1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--modes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per contestant (default 3, quick 2)")
    parser.add_argument("--quick", action="store_true", help="Naive, whole, batch 1, 2 repeats")
    parser.add_argument(
        "--smoke", action="store_true", help="reduced models (ViT 32 wide, 4 layers): checks the script, not speed"
    )
    parser.add_argument("--mmseg-bf16", action="store_true", help="also time mmseg under bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(model) in fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on both sides (default: all CPUs)")
    parser.add_argument("--mmseg-python", default=None, help="interpreter with mmsegmentation 1.2.2")
    add_torch_check_argument(parser)
    add_floor_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.variants, args.modes, args.batches = ["naive"], ["whole"], [1]
    if args.repeats is None:
        args.repeats = 2 if args.quick else 3
    if "fp32" not in args.dtypes:
        parser.error("--dtypes must include fp32 (the reference for ratios and agreement)")
    return args


def run_ours(model, pixel_values: torch.Tensor, mode: str, bf16: bool) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(pixel_values, inference_mode=mode).logits
        if mode == "whole":
            logits = F.interpolate(logits.float(), size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
    return logits.float()


def main() -> None:
    args = parse_args()
    threads = set_threads(args.threads)
    rows, notes, misses = [], [], []
    floor = GemmFloor(args.gemm_size, args.dtypes)
    floor_rows = []  # (row index, GFLOP, {contestant: time}): the `× floor` cells, filled in with the run's best rate
    worker = MmsegWorker(args.mmseg_python, threads, args.allow_torch_mismatch)
    with scratch_dir() as tmp, worker:
        tmp = Path(tmp)
        for decoder in args.variants:
            mmseg_variant, preset_name = VARIANTS[decoder]
            print(f"[{decoder}] building mmseg {mmseg_variant} with random weights and converting it", flush=True)
            checkpoint = tmp / f"{decoder}.pth"
            suite = "checkpoints" if args.smoke else "full"
            built = worker.request(op="build", variant=mmseg_variant, checkpoint=str(checkpoint), suite=suite)
            overrides = None  # what weights do not reveal about a reduced encoder
            if built["num_layers"] != 24:
                overrides = {"out_indices": built["out_indices"], "num_attention_heads": built["num_heads"]}
            checkpoint_dict = load_checkpoint_file(str(checkpoint))
            model = optimize_for_inference(build_converted_model(checkpoint_dict, PRESETS[preset_name], overrides))
            del checkpoint_dict
            checkpoint.unlink()
            compiled = torch.compile(model) if args.compile else None
            for mode in args.modes:
                height, width = SIZES[mode]
                gflop = count_inference_gflop(model.config, height, width, mode)
                for batch in args.batches:
                    generator = torch.Generator().manual_seed(1000 * batch + height + width)
                    pixel_values = torch.randn(batch, 3, height, width, generator=generator)
                    input_path = tmp / "input.pt"
                    torch.save(pixel_values, input_path)
                    contestants = ["mmseg fp32", "ours fp32"]
                    if "bf16" in args.dtypes:
                        contestants.append("ours bf16")
                        if args.mmseg_bf16:
                            contestants.append("mmseg bf16")
                    if compiled is not None:
                        contestants.append("ours fp32 compiled")
                    times = {name: [] for name in contestants}  # the floor's own times are kept by `floor`
                    contestants.append("floor GEMM")
                    outputs = {}
                    for repeat in range(args.repeats):
                        shift = repeat % len(contestants)
                        for name in contestants[shift:] + contestants[:shift]:
                            print(f"  {decoder} {mode} {height}x{width} b{batch} {name} #{repeat + 1}", flush=True)
                            if name == "floor GEMM":
                                floor.measure()
                                continue
                            if name.startswith("mmseg"):
                                dtype = name.split()[1]
                                save = str(tmp / f"mmseg-{dtype}.pt") if repeat == 0 else None
                                answer = worker.request(
                                    op="infer",
                                    variant=mmseg_variant,
                                    mode=mode,
                                    input=str(input_path),
                                    dtype=dtype,
                                    save=save,
                                )
                                times[name].append(answer["seconds"])
                                continue
                            runner = compiled if name.endswith("compiled") else model
                            seconds, logits = time_call(run_ours, runner, pixel_values, mode, "bf16" in name)
                            times[name].append(seconds)
                            if repeat == 0:
                                outputs[name] = logits
                            del logits
                    reference = torch.load(tmp / "mmseg-fp32.pt", weights_only=True)
                    ours_fp32 = outputs["ours fp32"]
                    max_diff = (ours_fp32[:, :, ::8, ::8] - reference["sample"]).abs().max().item()
                    mmseg_fp32, fp32 = min(times["mmseg fp32"]), min(times["ours fp32"])
                    row = [decoder, mode, f"{height}x{width}", batch, f"{mmseg_fp32:.2f}", f"{fp32:.2f}"]
                    row += [f"{fp32 / mmseg_fp32:.3f} (≤{TARGET_FP32[decoder]})"]
                    if fp32 / mmseg_fp32 > TARGET_FP32[decoder]:
                        misses.append(f"{decoder} {mode} b{batch} fp32: {fp32 / mmseg_fp32:.3f}")
                    if "ours bf16" in times:
                        bf16 = min(times["ours bf16"])
                        agrees = outputs["ours bf16"].argmax(1) == ours_fp32.argmax(1)
                        agreement = agrees.float().mean().item()
                        top2 = ours_fp32.topk(2, dim=1).values
                        decided = (top2[:, 0] - top2[:, 1]) >= NEAR_TIE_MARGIN
                        decided_agreement = agrees[decided].float().mean().item()
                        row += [f"{bf16:.2f}", f"{bf16 / mmseg_fp32:.3f} (≤{TARGET_BF16})", f"{agreement:.4%}"]
                        row += [f"{1 - decided.float().mean().item():.2%}", f"{decided_agreement:.4%}"]
                        if bf16 / mmseg_fp32 > TARGET_BF16 or agreement < TARGET_AGREEMENT:
                            misses.append(f"{decoder} {mode} b{batch} bf16: {bf16 / mmseg_fp32:.3f}, {agreement:.4%}")
                    else:
                        row += ["-"] * 5
                    if args.mmseg_bf16:
                        row += [f"{min(times['mmseg bf16']):.2f}"]
                    if compiled is not None:
                        row += [f"{min(times['ours fp32 compiled']) / mmseg_fp32:.3f}"]
                    row += [f"{gflop * batch / fp32:.0f}", f"{max_diff:.1e}"]
                    row += [" / ".join(spread(values) for values in times.values())]
                    rows.append(row)
                    floor_rows.append((len(rows) - 1, gflop * batch, {name: min(t) for name, t in times.items()}))
                    print(format_table(headers(args), [with_floor(args, floor, *floor_rows[-1][1:], row)]), flush=True)
                    del outputs, ours_fp32, reference
                    gc.collect()
            del model, compiled
            gc.collect()
        mmseg_version = worker.version
    notes.append(
        f"mmsegmentation {mmseg_version} (torch {worker.torch_build}) vs transformers_setr; times in seconds, min of "
        f"{args.repeats}; ratios are ours / mmseg fp32. `noise` is max/min over the repeats of each contestant "
        f"(order: {', '.join(['mmseg fp32', 'ours fp32', 'ours bf16'][: 2 + ('bf16' in args.dtypes)])}"
        f"{', mmseg bf16' if args.mmseg_bf16 else ''}{', compiled' if args.compile else ''})."
    )
    for index, gflop, minima in floor_rows:
        rows[index] = with_floor(args, floor, gflop, minima, rows[index])
        for name in ("ours fp32", "ours bf16"):
            dtype = name.split()[1]
            if name in minima and minima[name] / floor.seconds(gflop, dtype) > TARGET_FLOOR[dtype]:
                decoder, mode, _, batch = rows[index][:4]
                multiple = floor.multiple(minima[name], gflop, dtype)
                misses.append(f"{decoder} {mode} b{batch} {dtype}: {multiple}× floor")
    notes.append(floor.note(threads))
    notes.append("Targets missed: " + ("; ".join(misses) if misses else "none"))
    print_report("Inference: transformers_setr vs mmsegmentation", format_table(headers(args), rows), notes, threads)


def with_floor(args: argparse.Namespace, floor: GemmFloor, gflop: float, minima: dict, row: list) -> list:
    """The row with its GFLOP, floor and `× floor` cells (after the ratios), at the floor's best rate so far."""
    cells = [f"{gflop:.4g}", f"{floor.seconds(gflop, 'fp32'):.3g}"]
    for name in floor_contestants(args):
        dtype = "bf16" if "bf16" in name else "fp32"
        cell = floor.multiple(minima[name], gflop, dtype) if name in minima else "-"
        cells.append(f"{cell} (≤{TARGET_FLOOR[dtype]})" if name.startswith("ours") and cell != "-" else cell)
    return row[:-3] + cells + row[-3:]


def floor_contestants(args: argparse.Namespace) -> list[str]:
    names = ["mmseg fp32", "ours fp32", "ours bf16"]
    if args.mmseg_bf16:
        names.append("mmseg bf16")
    if args.compile:
        names.append("ours fp32 compiled")
    return names


def headers(args: argparse.Namespace) -> list[str]:
    columns = ["decoder", "mode", "input", "batch", "mmseg fp32 s", "ours fp32 s", "fp32 ratio"]
    columns += ["ours bf16 s", "bf16 / mmseg fp32", "bf16 argmax agree"]
    columns += [f"near-tie px (fp32 margin < {NEAR_TIE_MARGIN})", "agree off near-ties"]
    if args.mmseg_bf16:
        columns.append("mmseg bf16 s")
    if args.compile:
        columns.append("compiled ratio")
    columns += ["GFLOP", "fp32 floor s"] + [f"{name} × floor" for name in floor_contestants(args)]
    return columns + ["ours fp32 GFLOP/s", "max abs diff vs mmseg", "noise"]


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
