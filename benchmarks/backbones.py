"""What each encoder family costs under SETR's PUP head on CPU (issue 23): whole-image inference of one 512x512
image in fp32, per family at ViT-L size with random weights, with and without `optimize_for_inference`, side by side
in one run.

    .venv/bin/python benchmarks/backbones.py                  # 4 families x 2 = 8 contestants (~5 min on 2 idle cores)
    .venv/bin/python benchmarks/backbones.py --families builtin dinov2 --repeats 2
    .venv/bin/python benchmarks/backbones.py --smoke          # reduced encoders: checks the script, not speed

Families: the built-in SETR ViT-L/16 (`SetrConfig()`), a DINOv2-large-like encoder (patch 14: a 512 input is padded to
518, a 37x37 grid, 1369 tokens against ViT-L/16's 1024), BEiT-large (patch 16, relative position bias per layer,
layer scale) and timm's `vit_large_patch16_224.augreg_in21k` (built at img_size 512). Each runs as
`bench_inference.py` runs ours: `model(pixel_values, inference_mode="whole")` under `torch.inference_mode`, logits
resized to the input. One warm-up call per contestant (its FLOPs counted by FlopCounterMode on the plain model), then
`--repeats` rounds in which every contestant runs once, in rotating order, with the floor's matmul measured between
them (`common.GemmFloor`). `s/img` is the minimum over the rounds; `× floor` that time over the FLOPs at the
machine's best fp32 matmul rate of the run; `vs built-in` the ratio to the built-in ViT-L of the same column
(plain or optimized). The optimized model shares the plain one's parameters (no second copy of the weights).
"""

import argparse
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import run_ours  # noqa: E402
from common import GemmFloor, add_floor_argument, format_table, print_report, set_threads, spread  # noqa: E402

from transformers_setr import SetrConfig, SetrForSemanticSegmentation  # noqa: E402
from transformers_setr.models.setr.fast_inference_setr import optimize_for_inference  # noqa: E402

LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
SMOKE = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=256)
TIMM_VIT_L = "vit_large_patch16_224.augreg_in21k"
FAMILIES = ("builtin", "dinov2", "beit", "timm")
LABELS = {
    "builtin": "built-in SETR ViT-L/16",
    "dinov2": "dinov2 (large-like, patch 14)",
    "beit": "beit (large)",
    "timm": f"timm {TIMM_VIT_L}",
}


def setr_config(family: str, smoke: bool) -> SetrConfig:
    """The PUP SETR of a family at ViT-L size (`smoke`: 4 layers of 64), 150 classes, out_indices as the released
    PUP model's (layers 9, 14, 19, 23 of 24)."""
    size = SMOKE if smoke else LARGE
    heads = dict(decoder_type="pup", num_labels=150, image_size=512)
    if smoke:
        heads.update(out_indices=[0, 1, 2, 3], auxiliary_channels=16, decoder_channels=16)
    if family == "builtin":
        return SetrConfig(**size, **heads)
    if family == "dinov2":
        from transformers import Dinov2Config

        backbone = Dinov2Config(patch_size=14, image_size=518, **size)
    elif family == "beit":
        from transformers import BeitConfig

        backbone = BeitConfig(
            patch_size=16, image_size=512, use_relative_position_bias=True, layer_scale_init_value=0.1, **size
        )
    else:
        from transformers_setr.models.setr.modeling_setr import _pretrained_timm_backbone

        model_args = {"img_size": 512}
        if smoke:
            model_args.update(depth=4, embed_dim=64, num_heads=2)
        backbone = _pretrained_timm_backbone(TIMM_VIT_L, {"architecture": TIMM_VIT_L, "model_args": model_args})[0]
    return SetrConfig(backbone_config=backbone, **heads)


def build(family: str, smoke: bool) -> SetrForSemanticSegmentation:
    torch.manual_seed(0)
    return SetrForSemanticSegmentation(setr_config(family, smoke)).eval()


def sharing_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model`'s modules that shares its parameters and buffers (swapping modules in the copy leaves the
    original plain)."""
    memo = {id(tensor): tensor for tensor in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--size", type=int, default=512, help="side of the square input (default 512)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all CPUs)")
    parser.add_argument("--smoke", action="store_true", help="reduced encoders: checks the script, not speed")
    add_floor_argument(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    threads = set_threads(args.threads)
    if "builtin" not in args.families:
        args.families.insert(0, "builtin")  # the reference of the `vs built-in` column
    floor = GemmFloor(args.gemm_size, ("fp32",))
    pixel_values = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    contestants: dict[tuple[str, str], Callable[[], torch.Tensor]] = {}
    gflop: dict[str, float] = {}
    for family in args.families:
        print(f"[{family}] building {LABELS[family]} with random weights", flush=True)
        plain = build(family, args.smoke)
        optimized = optimize_for_inference(sharing_copy(plain))
        with FlopCounterMode(display=False) as counter:  # the plain warm-up call, counted
            reference = run_ours(plain, pixel_values, "whole", False)
        gflop[family] = counter.get_total_flops() / 1e9
        # optimized's own warm-up, and the difference the fast path makes (allclose, not equal: see RESULTS.md)
        difference = (run_ours(optimized, pixel_values, "whole", False) - reference).abs().max().item()
        print(f"[{family}] {gflop[family]:.4g} GFLOP; optimized vs plain fp32 logits: max abs diff {difference:.2e}")
        for variant, model in (("plain", plain), ("optimized", optimized)):
            contestants[(family, variant)] = lambda model=model: run_ours(model, pixel_values, "whole", False)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in contestants}
    order = list(contestants)
    for round_index in range(args.repeats):
        rotated = order[round_index % len(order) :] + order[: round_index % len(order)]
        for key in rotated:
            start = time.perf_counter()
            contestants[key]()
            times[key].append(time.perf_counter() - start)
            floor.measure()
        print(f"round {round_index + 1}/{args.repeats} done", flush=True)
    best = {key: min(values) for key, values in times.items()}
    rows = []
    for family in args.families:
        row = [LABELS[family], f"{gflop[family]:.4g}"]
        for variant in ("plain", "optimized"):
            seconds = best[(family, variant)]
            row += [
                f"{seconds:.2f}",
                floor.multiple(seconds, gflop[family], "fp32"),
                f"{seconds / best[('builtin', variant)]:.2f}",
            ]
        row += [f"{best[(family, 'optimized')] / best[(family, 'plain')]:.2f}"]
        row += [f"{spread(times[(family, 'plain')])} / {spread(times[(family, 'optimized')])}"]
        rows.append(row)
    headers = [
        "encoder (PUP head)",
        "GFLOP",
        "plain s/img",
        "plain × floor",
        "plain vs built-in",
        "optimized s/img",
        "optimized × floor",
        "optimized vs built-in",
        "optimized / plain",
        "noise",
    ]
    title = f"SETR PUP on each encoder family, whole {args.size}x{args.size}, fp32, batch 1" + (
        " (smoke: reduced encoders)" if args.smoke else ""
    )
    print_report(title, format_table(headers, rows), [floor.note(threads)], threads)


if __name__ == "__main__":
    main()
