"""Where the time goes: torch.profiler over a SETR forward (Naive, PUP, MLA; ViT-L/16 with random weights; whole
512x512 and slide 512x683; fp32 and bf16 autocast), and over one ViT-L PUP training step (batch 2, 512x512: forward,
decode and auxiliary losses, backward, SGD step) in fp32, bf16 autocast and fp32 with activation checkpointing.

    .venv/bin/python benchmarks/profile_inference.py                 # the 12 inference cases (~10 min on 2 cores)
    .venv/bin/python benchmarks/profile_inference.py --training      # and the training step (~5 min more, ~11 GiB)
    .venv/bin/python benchmarks/profile_inference.py --decoders naive --modes whole --dtypes fp32 --top 15
    .venv/bin/python benchmarks/profile_inference.py --training-only  # the training step only (~11 GiB)
    .venv/bin/python benchmarks/profile_inference.py --training-only --training-size 256 --training-variants fp32
    .venv/bin/python benchmarks/profile_inference.py --smoke --training --training-size 64  # checks the script

Each case runs as `bench_inference.py` runs ours (`model(pixel_values, inference_mode=...)` under
`torch.inference_mode`, whole-mode logits resized to the input): one warm-up call (it fills the inference caches),
`--repeats` timed calls (`forward s` is their minimum), then one call under `torch.profiler` (CPU). Every profiled
operator's self time (its time minus that of the operators it called) goes to one category, by its own name or else
by the nearest enclosing operator that has one: GEMMs (addmm/mm/bmm/linear/matmul), attention (SDPA), LayerNorm /
GELU / softmax, the convolutions (the patch embedding's and the decoder's, told apart by the module that ran them),
BatchNorm / ReLU, resizes (upsample/interpolate), copies and casts (copy_/to/contiguous/clone/cat/stack),
elementwise (add/mul/div/dropout...), the loss and the optimizer (training), Python between operators (the time a
module's forward spends outside any operator), other. `where` columns split each row by the module that ran it:
encoder, decoder (neck, heads, auxiliary heads), outside the modules (slide windows, the final resize), and in
training backward and optimizer step.

`floor ms` is the row's FLOPs (FlopCounterMode on the meta device, `common.inference_gflop_by_kind`) at the matmul
rate measured in the same run (`common.GemmFloor`, fp32 or bf16 as the case), and `× floor` the row's time over it:
how far each kind of work is from the machine's dense matmul rate. The profiler adds its own overhead (`profiled
s` against `forward s`); the whole-forward `× floor` uses the unprofiled time. Training: `step s` is the minimum of
`--repeats` steps after a warm-up step (SGD, momentum 0.9, as `bench_training_step.py`, which also measures the
memory); the profiled step is another one. The step's `where` adds backward, the optimizer step and, under
activation checkpointing, `recomputation` (the encoder's and heads' forwards run again inside backward); the
checkpointed step's floor is the same useful GFLOP, so recomputation shows as time over it, and the note gives the
checkpointed step's time over the plain one's (target ≤ 1.33). `--optimizer` swaps the SGD implementation (the
training commands' `build_optimizer` by default).
"""

import argparse
import functools
import gc
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import SIZES, VARIANTS, run_ours  # noqa: E402
from common import (  # noqa: E402
    SMOKE_ENCODER,
    GemmFloor,
    add_floor_argument,
    format_table,
    inference_gflop_by_kind,
    print_report,
    set_threads,
    training_gflop_by_kind,
)

from transformers_setr.models.setr.fast_inference_setr import optimize_for_inference  # noqa: E402
from transformers_setr.models.setr.modeling_setr import SetrForSemanticSegmentation  # noqa: E402
from transformers_setr.presets import PRESETS  # noqa: E402
from transformers_setr.training import build_optimizer, config_for_preset  # noqa: E402
from transformers_setr.training.host_memory import keep_freed_host_memory  # noqa: E402

# Scope labels (profiler annotations opened around the modules' forwards): the `where` of each operator.
SCOPE_PREFIX = "## "
WHERE = ("encoder", "decoder", "outside modules", "backward", "recomputation", "optimizer")
# Training variants: name -> (dtype, activation checkpointing).
TRAINING_VARIANTS = {
    "fp32": ("fp32", False),
    "bf16": ("bf16", False),
    "fp32-ckpt": ("fp32", True),
    "bf16-ckpt": ("bf16", True),
}
PYTHON = "Python between operators"
CONV = "convolutions"  # told apart below into the patch embedding's and the decoder's
CASTS = "copies and casts"
# Categories by operator name (lower case, substring), first match wins. An operator's self time goes to the category
# of the outermost categorised operator around it (the zeroing inside a resize's backward is resize time, the
# transpose inside `aten::linear` GEMM time), except casts and copies, which keep their own (autocast's casts inside
# `aten::linear` are cast time). A bare `copy_` called by another kind of operator is that operator's work (addmm
# copies the bias into its output before the matmul).
CATEGORY_PATTERNS = [
    (CASTS, ("aten::copy_", "aten::to", "aten::_to_copy", "aten::contiguous", "aten::clone", "aten::cat",
             "aten::stack", "aten::_copy_from", "tocopybackward", "clonebackward", "catbackward", "stackbackward")),
    ("attention (SDPA)", ("scaled_dot_product", "scaleddotproduct", "flash_attention", "efficient_attention")),
    ("loss", ("cross_entropy", "nll_loss", "nllloss", "log_softmax", "logsoftmaxbackward", "aten::mean",
              "meanbackward")),
    ("GEMMs", ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::linear", "aten::matmul",
               "mkldnn_linear", "_linear_pointwise", "addmmbackward", "mmbackward", "linearbackward")),
    ("LayerNorm / GELU / softmax", ("layer_norm", "layernormbackward", "gelu", "softmax")),
    (CONV, ("conv", "convolution")),
    ("BatchNorm / ReLU", ("batch_norm", "batchnormbackward", "relu", "threshold")),
    ("resizes", ("upsample", "interpolate", "grid_sampler")),
    ("optimizer", ("optimizer.", "sgd", "_foreach")),
    ("elementwise", ("aten::add", "aten::sub", "aten::mul", "aten::div", "aten::fill_", "aten::zero_", "dropout",
                     "aten::bernoulli", "aten::where", "aten::masked_fill", "addbackward", "mulbackward",
                     "divbackward")),
]  # fmt: skip
CATEGORIES = [name for name, _ in CATEGORY_PATTERNS if name != CONV]
CATEGORIES[CATEGORIES.index("BatchNorm / ReLU") : CATEGORIES.index("BatchNorm / ReLU")] = [
    "patch embedding conv",
    "decoder convolutions",
]
CATEGORIES += [PYTHON, "other"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decoders", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--modes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=1, help="images per inference call")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls (or steps) per case, unprofiled")
    parser.add_argument("--training", action="store_true", help="also profile one PUP training step")
    parser.add_argument("--training-only", action="store_true", help="only the training step")
    parser.add_argument("--training-batch", type=int, default=2)
    parser.add_argument("--training-size", type=int, default=512, help="square training crop (smaller: quicker)")
    parser.add_argument(
        "--training-variants", nargs="+", choices=list(TRAINING_VARIANTS), default=["fp32", "bf16", "fp32-ckpt"]
    )
    parser.add_argument(
        "--training-decoder", choices=list(VARIANTS), default="pup", help="the decoder of the profiled step"
    )
    parser.add_argument(
        "--optimizer", choices=["recipe", "loop", "foreach", "fused"], default="recipe",
        help="the training step's SGD: the training commands' own (recipe) or one of torch's implementations",
    )  # fmt: skip
    parser.add_argument(
        "--host-memory", choices=["kept", "default"], default="kept",
        help="training: freed host memory kept for reuse, as the training commands do on the CPU without activation "
        "checkpointing (`training.host_memory`; for the whole process, so the -ckpt variants too), or glibc's default",
    )  # fmt: skip
    parser.add_argument("--top", type=int, default=0, help="also list the N operators with the most self time")
    parser.add_argument("--smoke", action="store_true", help="reduced encoder (64 wide, 4 layers): checks the script")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all CPUs)")
    add_floor_argument(parser)
    args = parser.parse_args()
    for name in ("batch", "repeats", "training_batch", "training_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    args.training = args.training or args.training_only
    return args


def build_model(decoder: str, smoke: bool) -> SetrForSemanticSegmentation:
    overrides = dict(SMOKE_ENCODER, decoder_channels=32 if decoder == "mla" else 16) if smoke else {}
    torch.manual_seed(0)
    return SetrForSemanticSegmentation(config_for_preset(PRESETS[VARIANTS[decoder][1]], **overrides))


IN_BACKWARD = [False]  # set while `training_step` runs backward: a layer's forward then is checkpointing's recompute


def annotate_scopes(model: SetrForSemanticSegmentation) -> Callable[[], None]:
    """Open a profiler scope around the encoder, the patch embedding and the decoder modules' forwards, and around
    an encoder layer's forward when it runs inside backward (activation checkpointing's recomputation); hooks, so the
    model runs unchanged. Returns the function that removes the hooks."""
    scopes = {"encoder": [model.setr], "patch embedding": [model.setr.embeddings]}
    scopes["decoder"] = [m for m in (model.neck, model.decode_head, *(model.auxiliary_heads or ())) if m is not None]
    # transformers checkpoints a layer's `forward`, not its `__call__`: the layer's own hooks do not run again, its
    # children's do (the residual sums and dropouts between them stay in backward's row).
    scopes["recomputation"] = [child for layer in model.setr.layers for child in layer.children()]
    handles = []
    for label, modules in scopes.items():
        for module in modules:
            stack: list = []

            def enter(module, args, label=label, stack=stack):
                if label == "recomputation" and not IN_BACKWARD[0]:
                    stack.append(None)  # a layer's ordinary forward: the encoder scope around it says enough
                    return
                stack.append(torch.profiler.record_function(SCOPE_PREFIX + label))
                stack[-1].__enter__()

            def leave(module, args, output, stack=stack):
                scope = stack.pop()
                if scope is not None:
                    scope.__exit__(None, None, None)

            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave))

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return remove


def own_category(name: str) -> str | None:
    lowered = name.lower().replace(" ", "")
    for category, patterns in CATEGORY_PATTERNS:
        if any(pattern.replace(" ", "") in lowered for pattern in patterns):
            return category
    return None


def breakdown(events) -> tuple[dict, dict]:
    """Self time (ms) by (category, where), and by (operator, caller, category, where) for the top list."""
    by_category, by_operator = defaultdict(float), defaultdict(lambda: [0.0, 0])
    for event in events:
        if event.device_type != torch.autograd.DeviceType.CPU:
            continue
        chain, where, in_patch_embedding, node = [], "outside modules", False, event
        while node is not None:  # the categorised operators from this one outwards, and the scopes around them
            if node.name.startswith(SCOPE_PREFIX):
                label = node.name[len(SCOPE_PREFIX) :]
                in_patch_embedding |= label == "patch embedding"
                if where == "outside modules" and label != "patch embedding":
                    where = label
            elif own_category(node.name) is not None:
                chain.append((node.name, own_category(node.name)))
            node = node.cpu_parent
        if event.name.startswith(SCOPE_PREFIX):
            category = PYTHON  # a scope's own time: its module's forward outside any operator
        elif not chain:
            category = "other"
        elif chain[0][1] == CASTS and (chain[0][0] != "aten::copy_" or len(chain) == 1 or chain[1][1] == CASTS):
            category = CASTS
        else:
            category = chain[-1][1]
        if category == CONV:
            category = "patch embedding conv" if in_patch_embedding else "decoder convolutions"
        milliseconds = event.self_cpu_time_total / 1e3
        by_category[category, where] += milliseconds
        caller = event.cpu_parent.name if event.cpu_parent is not None else "-"
        entry = by_operator[event.name, caller, category, where]
        entry[0] += milliseconds
        entry[1] += 1
    return by_category, by_operator


def profile_call(function: Callable[[], object]):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        function()
    return profiler.events()


def case_table(by_category: dict, flops: dict, floor: GemmFloor, dtype: str, wheres: list[str]) -> str:
    total = sum(by_category.values())
    rows = []
    for category in CATEGORIES:
        milliseconds = sum(by_category.get((category, where), 0.0) for where in wheres)
        if milliseconds == 0 and category not in flops:
            continue
        row = [category, f"{milliseconds:.1f}", f"{milliseconds / total:.1%}"]
        row += [f"{by_category.get((category, where), 0.0):.1f}" for where in wheres]
        if category in flops and flops[category] > 0:
            floor_ms = floor.seconds(flops[category], dtype) * 1e3
            row += [f"{flops[category]:.4g}", f"{floor_ms:.1f}", f"{milliseconds / floor_ms:.2f}"]
        else:
            row += ["-", "-", "-"]
        rows.append(row)
    rows.append(["total (profiled)", f"{total:.1f}", "100.0%"] + ["-"] * (len(wheres) + 3))
    headers = ["category", "ms", "%"] + [f"{where} ms" for where in wheres] + ["GFLOP", "floor ms", "× floor"]
    return format_table(headers, rows)


def top_table(by_operator: dict, count: int) -> str:
    ranked = sorted(by_operator.items(), key=lambda item: -item[1][0])[:count]
    rows = [[*key, calls, f"{ms:.1f}"] for key, (ms, calls) in ranked]
    return format_table(["operator", "called by", "category", "where", "calls", "self ms"], rows)


def measure_case(label: str, run: Callable[[], object], repeats: int, floor: GemmFloor, dtype: str) -> dict:
    """One warm-up call, `repeats` timed calls (the floor's matmul timed after each, as in bench_inference.py),
    then one profiled call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
        floor.measure([dtype])
    by_category, by_operator = breakdown(profile_call(run))
    return dict(label=label, dtype=dtype, seconds=min(times), repeats=repeats, by_category=by_category,
                by_operator=by_operator)  # fmt: skip


def render(case: dict, floor: GemmFloor, top: int) -> tuple[str, str]:
    """A case's title line and its tables, at the floor's best rate so far."""
    seconds, gflop, dtype = case["seconds"], sum(case["flops"].values()), case["dtype"]
    title = (
        f"{case['label']}: {case['what']} s {seconds:.3f} (min of {case['repeats']}), profiled s "
        f"{sum(case['by_category'].values()) / 1e3:.3f}; {gflop:.4g} GFLOP, floor {floor.seconds(gflop, dtype):.3f} s, "
        f"**× floor {floor.multiple(seconds, gflop, dtype)}**"
    )
    table = case_table(case["by_category"], case["flops"], floor, dtype, case["wheres"])
    if top:
        table += "\n\n" + top_table(case["by_operator"], top)
    return title, table


SUMMARY_COLUMNS = {  # summary column -> the categories it adds up
    "GEMMs": ["GEMMs"],
    "attention": ["attention (SDPA)"],
    "LN/GELU/softmax": ["LayerNorm / GELU / softmax"],
    "convs + BN/ReLU": ["patch embedding conv", "decoder convolutions", "BatchNorm / ReLU"],
    "resizes": ["resizes"],
    "copies, casts": [CASTS],
    "elementwise": ["elementwise"],
    "loss": ["loss"],
    "rest": ["optimizer", PYTHON, "other"],
}


def summary_table(cases: list[dict], floor: GemmFloor) -> str:
    rows = []
    for case in cases:
        gflop, total = sum(case["flops"].values()), sum(case["by_category"].values())
        row = [case["label"], f"{case['seconds']:.2f}", f"{gflop:.4g}", f"{floor.seconds(gflop, case['dtype']):.2f}"]
        row.append(floor.multiple(case["seconds"], gflop, case["dtype"]))
        for categories in SUMMARY_COLUMNS.values():
            share = sum(ms for (category, _), ms in case["by_category"].items() if category in categories) / total
            row.append(f"{share:.1%}")
        rows.append(row)
    headers = ["case", "s", "GFLOP", "floor s", "× floor"] + [f"{name} %" for name in SUMMARY_COLUMNS]
    return format_table(headers, rows)


def inference_cases(args: argparse.Namespace, floor: GemmFloor) -> list[dict]:
    cases = []
    for decoder in args.decoders:
        model = optimize_for_inference(build_model(decoder, args.smoke))  # as the inference entry points serve it
        remove_scopes = annotate_scopes(model)
        for mode in args.modes:
            height, width = SIZES[mode]
            flops = inference_gflop_by_kind(model.config, height, width, mode)
            flops = {kind: value * args.batch for kind, value in flops.items()}
            generator = torch.Generator().manual_seed(height + width)
            pixel_values = torch.randn(args.batch, 3, height, width, generator=generator)
            for dtype in args.dtypes:
                label = f"{decoder} {mode} {height}x{width} b{args.batch} {dtype}"
                print(f"[{label}] warm-up, {args.repeats} timed calls, 1 profiled", flush=True)
                call = functools.partial(run_ours, model, pixel_values, mode, dtype == "bf16")
                cases.append(measure_case(label, call, args.repeats, floor, dtype))
                cases[-1].update(flops=flops, what="forward", wheres=["encoder", "decoder", "outside modules"])
                print("\n### {}\n\n{}\n".format(*render(cases[-1], floor, args.top)), flush=True)
        remove_scopes()
        del model
        gc.collect()
    return cases


def training_step(model, optimizer, pixel_values: torch.Tensor, labels: torch.Tensor, bf16: bool) -> None:
    """One SGD step, with the backward pass and the optimizer in scopes of their own."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(pixel_values, labels=labels).loss
    with torch.profiler.record_function(SCOPE_PREFIX + "backward"):
        IN_BACKWARD[0] = True
        try:
            loss.backward()
        finally:
            IN_BACKWARD[0] = False
    with torch.profiler.record_function(SCOPE_PREFIX + "optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def training_cases(args: argparse.Namespace, floor: GemmFloor) -> list[dict]:
    cases, size, batch = [], args.training_size, args.training_batch
    for variant in args.training_variants:
        dtype, checkpointing = TRAINING_VARIANTS[variant]
        model = build_model(args.training_decoder, args.smoke).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        remove_scopes = annotate_scopes(model)
        optimizer = build_training_optimizer(model, args.optimizer)
        generator = torch.Generator().manual_seed(0)
        pixel_values = torch.randn(batch, 3, size, size, generator=generator)
        labels = torch.randint(0, model.config.num_labels, (batch, size, size), generator=generator)
        label = f"training step, {args.training_decoder.upper()} b{batch} {size}x{size} {variant}"
        print(f"[{label}] warm-up step (allocates the optimizer state), {args.repeats} timed, 1 profiled", flush=True)
        step = functools.partial(training_step, model, optimizer, pixel_values, labels, dtype == "bf16")
        cases.append(measure_case(label, step, args.repeats, floor, dtype))
        flops = training_gflop_by_kind(model.config, batch, size, size)
        wheres = ["encoder", "decoder", "outside modules", "backward", *(["recomputation"] if checkpointing else [])]
        cases[-1].update(flops=flops, what="step", wheres=[*wheres, "optimizer"], variant=variant)
        print("\n### {}\n\n{}\n".format(*render(cases[-1], floor, args.top)), flush=True)
        remove_scopes()
        del model, optimizer
        gc.collect()
    return cases


def build_training_optimizer(model: SetrForSemanticSegmentation, kind: str) -> torch.optim.Optimizer:
    """SGD, momentum 0.9 (the SETR recipe): the training commands' own (`--optimizer recipe`), or torch's
    per-parameter loop / foreach / fused implementation, to compare them."""
    if kind == "recipe":
        return build_optimizer(model, "sgd", learning_rate=0.01, head_lr_multiplier=1.0)
    options = {"loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}[kind]
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, **options)


def checkpointing_note(cases: list[dict]) -> list[str]:
    """Each checkpointed step's time over the same dtype's step without checkpointing (target ≤ 1.33)."""
    seconds = {case.get("variant"): case["seconds"] for case in cases}
    return [
        f"Activation checkpointing costs {seconds[name] / seconds[name[: -len('-ckpt')]]:.3f}× the {name[:4]} step "
        "without it (target ≤ 1.33)."
        for name in seconds
        if name and name.endswith("-ckpt") and name[: -len("-ckpt")] in seconds
    ]


def main() -> None:
    args = parse_args()
    threads = set_threads(args.threads)
    floor = GemmFloor(args.gemm_size, args.dtypes)
    floor.measure()
    cases = [] if args.training_only else inference_cases(args, floor)
    if args.training:
        if args.host_memory == "kept":
            keep_freed_host_memory()
        cases += training_cases(args, floor)
    sections = ["\n\n".join([f"### {title}", table]) for title, table in (render(c, floor, args.top) for c in cases)]
    body = "\n\n".join([summary_table(cases, floor), *sections])
    notes = [
        floor.note(threads),
        "Shares of the profiled self time; `s` unprofiled (min over the timed calls). Every `× floor` here uses the "
        f"run's best matmul rate{' (reduced encoder: --smoke)' if args.smoke else ''}.",
        *checkpointing_note(cases),
        *(
            [
                f"Training host memory: {'freed blocks kept for reuse' if args.host_memory == 'kept' else 'glibc default'}."
            ]
            if args.training
            else []
        ),
    ]
    print_report("Where the time goes: torch.profiler, by category", body, notes, threads)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
