"""One SETR training step (forward with decode + auxiliary losses, backward, SGD step): time and peak memory, this
package against mmsegmentation 1.2.2, for a tiny model and the full ViT-L/16 one.

    .venv/bin/python benchmarks/bench_training_step.py                 # tiny and ViT-L PUP (ADE20K), batch 2, 512x512
    .venv/bin/python benchmarks/bench_training_step.py --quick         # tiny only
    .venv/bin/python benchmarks/bench_training_step.py --sizes vit-l --batch 1 --steps 2

Every measurement runs in a fresh process, so that its peak resident memory (`ru_maxrss`) belongs to it alone:
mmsegmentation in `.venv-mmseg` (`benchmarks/mmseg_worker.py`), ours in this interpreter. mmseg builds the released
config (tiny: the parity fixtures' reduced encoder, 32 wide and 4 layers, with the real heads at 1/16 width) and
saves the weights, which ours loads through the converter: same architecture, same weights. `step peak` is the peak
RSS minus the RSS just before the first step (activations, gradients, optimizer state). Ours is also run with
gradient checkpointing and under bf16 autocast. Time is the minimum over the steps after the first (the first
allocates the optimizer state); with `--steps 1` it is that one step. CPU only: the CUDA numbers are in
`bench_cuda.py`.

`× floor` is the step time over the floor: the step's GFLOP (forward with both losses and backward, counted on our
model; checkpointing's recomputation not included) divided by the matmul rate measured in this run between the
contestants (`common.GemmFloor`, same thread count): fp32 contestants against the fp32 rate, bf16 autocast against
the bf16 rate. Both sides must run the same torch build (refused otherwise, unless `--allow-torch-mismatch`).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ROOT,
    GemmFloor,
    MmsegWorker,
    add_floor_argument,
    add_torch_check_argument,
    count_training_gflop,
    format_table,
    print_report,
    scratch_dir,
    set_threads,
    timed_sgd_steps,
)

CHILD_PREFIX = "@@result "
SUITES = {"tiny": "checkpoints", "vit-l": "full"}
VARIANTS = {
    "pup": ("ade20k-pup", "setr-pup-vit-large-ade20k-512"),
    "naive": ("ade20k-naive", "setr-naive-vit-large-ade20k-512"),
    "mla": ("ade20k-mla-b16", "setr-mla-vit-large-ade20k-512-b16"),
}
OURS = {
    "ours fp32": dict(checkpointing=False, bf16=False),
    "ours fp32 + checkpointing": dict(checkpointing=True, bf16=False),
    "ours bf16 autocast": dict(checkpointing=False, bf16=True),
}


def step_time(times: list[float]) -> float:
    return min(times[1:]) if len(times) > 1 else times[0]


def run_child(args: argparse.Namespace) -> None:
    """One of our contestants, alone in this process; prints its result as JSON."""
    import torch

    from transformers_setr.conversion import load_checkpoint_file
    from transformers_setr.conversion.from_mmseg import build_converted_model
    from transformers_setr.presets import PRESETS

    set_threads(args.threads)
    if not args.before:  # what both training commands do first (`workflow.start_command`): a CPU run without
        # activation checkpointing reuses its freed host memory
        from transformers_setr.training.host_memory import keep_freed_host_memory_for

        keep_freed_host_memory_for(argparse.Namespace(use_cpu=True, activation_checkpointing=args.checkpointing))
    overrides = json.loads(args.overrides) if args.overrides else None
    model = build_converted_model(load_checkpoint_file(args.checkpoint), PRESETS[args.preset], overrides)
    if args.before:  # the same weights in a git revision's shipped model files, in the process as it was then
        import tempfile

        from compare_implementations import load_previous

        previous = load_previous(Path(args.before), Path(tempfile.mkdtemp(prefix="setr-before-")))
        previous_config = sys.modules["setr_previous.configuration_setr"].SetrConfig.from_dict(model.config.to_dict())
        before = previous.SetrForSemanticSegmentation(previous_config)
        before.load_state_dict(model.state_dict())
        model = before
    gflop = count_training_gflop(model.config, args.batch, args.size, args.size)
    if args.checkpointing:
        model.activation_checkpointing_enable()
    model.train()
    generator = torch.Generator().manual_seed(args.seed)
    pixel_values = torch.randn(args.batch, 3, args.size, args.size, generator=generator)
    labels = torch.randint(0, model.config.num_labels, (args.batch, args.size, args.size), generator=generator)

    def compute_loss() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            return model(pixel_values, labels=labels).loss

    result = timed_sgd_steps(model, compute_loss, args.steps)
    print(CHILD_PREFIX + json.dumps({**result, "gflop": gflop}))


def ours_in_child(args: argparse.Namespace, checkpoint: Path, preset: str, overrides, **variant) -> dict:
    command = [sys.executable, __file__, "--child", "--checkpoint", str(checkpoint), "--preset", preset]
    command += ["--batch", str(args.batch), "--size", str(args.size), "--steps", str(args.steps)]
    command += ["--seed", str(args.seed), "--threads", str(args.threads)]
    command += ["--overrides", json.dumps(overrides)] if overrides else []
    command += ["--checkpointing"] if variant["checkpointing"] else []
    command += ["--bf16"] if variant["bf16"] else []
    command += ["--before", variant["before"]] if variant.get("before") else []
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    for line in completed.stdout.splitlines():
        if line.startswith(CHILD_PREFIX):
            return json.loads(line[len(CHILD_PREFIX) :])
    raise RuntimeError(f"training child failed ({completed.returncode}):\n{completed.stderr[-4000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=list(SUITES), default=list(SUITES))
    parser.add_argument("--decoder", choices=list(VARIANTS), default="pup")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=512, help="square crop side")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny model only")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--mmseg-python", default=None)
    parser.add_argument(
        "--before",
        default=None,
        help="also run a git revision's shipped model files (e.g. HEAD~3), without this version's host-memory "
        "setting: the before/after rows of one run",
    )
    add_torch_check_argument(parser)
    add_floor_argument(parser)
    # Internal: one of our contestants in a fresh process.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return
    if args.before and not Path(args.before).exists():  # a git revision: checked before minutes of mmseg
        known = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{args.before}^{{commit}}"], cwd=ROOT, capture_output=True
        )
        if known.returncode != 0:
            parser.error(f"--before {args.before}: no such git revision or folder")
    if args.quick:
        args.sizes = ["tiny"]
    args.threads = set_threads(args.threads)
    mmseg_variant, preset = VARIANTS[args.decoder]
    floor = GemmFloor(args.gemm_size)
    rows, step_rows = [], []  # step_rows: (row index, GFLOP, dtype, seconds), given their `× floor` at the end
    gib = 1024**3
    with scratch_dir() as tmp:
        for size in args.sizes:
            checkpoint = Path(tmp) / f"{size}.pth"
            print(f"[{size}] building mmseg {mmseg_variant} ({SUITES[size]} suite) and saving its weights", flush=True)
            with MmsegWorker(args.mmseg_python, args.threads, args.allow_torch_mismatch) as worker:
                built = worker.request(
                    op="build", variant=mmseg_variant, checkpoint=str(checkpoint), suite=SUITES[size]
                )
                mmseg_version = worker.version
            # mmseg's configs train with dropout 0.1 in the encoder (after the position embedding, the attention
            # projection and both FFN layers): the same places as our hidden_dropout_prob, so ours gets it too.
            overrides = {"hidden_dropout_prob": built["drop_rate"]}
            if built["num_layers"] != 24:
                overrides.update(out_indices=built["out_indices"], num_attention_heads=built["num_heads"])
            results = {}
            print(f"[{size}] mmseg fp32", flush=True)
            with MmsegWorker(args.mmseg_python, args.threads, args.allow_torch_mismatch) as worker:
                results["mmseg fp32"] = worker.request(
                    op="train_step", variant=mmseg_variant, suite=SUITES[size], batch=args.batch,
                    size=[args.size, args.size], steps=args.steps, seed=args.seed,
                )  # fmt: skip
            floor.measure()  # between the contestants, each in its own process, like one more
            contestants = dict(OURS)
            if args.before:
                contestants = {
                    **{
                        name.replace("ours", f"before ({args.before})"): {**v, "before": args.before}
                        for name, v in OURS.items()
                    },
                    **OURS,
                }
            for name, variant in contestants.items():
                print(f"[{size}] {name}", flush=True)
                results[name] = ours_in_child(args, checkpoint, preset, overrides, **variant)
                floor.measure()
            reference = results["mmseg fp32"]
            reference_time = step_time(reference["times"])
            reference_memory = reference["peak_rss"] - reference["baseline_rss"]
            gflop = results["ours fp32"]["gflop"]  # the same architecture on both sides
            for name, result in results.items():
                seconds, memory = step_time(result["times"]), result["peak_rss"] - result["baseline_rss"]
                step_rows.append((len(rows), gflop, "bf16" if "bf16" in name else "fp32", seconds))
                rows.append(
                    [
                        size, name, f"{seconds:.2f}", f"{seconds / reference_time:.3f}", f"{memory / gib:.2f}",
                        f"{memory / reference_memory:.3f}", f"{result['peak_rss'] / gib:.2f}", f"{result['first_loss']:.4f}",
                    ]
                )  # fmt: skip
            checkpoint.unlink()
    for index, gflop, dtype, seconds in step_rows:  # at the run's best matmul rate
        rows[index][4:4] = [
            f"{gflop:.4g}",
            f"{floor.seconds(gflop, dtype):.3g}",
            floor.multiple(seconds, gflop, dtype),
        ]
    headers = ["model", "contestant", "step s", "time / mmseg", "step GFLOP", "floor s", "× floor", "step peak GiB"]
    headers += ["memory / mmseg", "peak RSS GiB", "first loss"]
    notes = [
        f"{args.decoder.upper()} ADE20K config, batch {args.batch}, {args.size}x{args.size}, SGD momentum 0.9, "
        f"{args.steps} steps per process; mmseg {mmseg_version} in .venv-mmseg.",
        "Same weights, inputs and labels on both sides: the first-step losses differ only through the dropout masks "
        "(a sanity check that the same model is trained).",
        floor.note(args.threads),
    ]
    print_report(
        "Training step: transformers_setr vs mmsegmentation", format_table(headers, rows), notes, args.threads
    )


if __name__ == "__main__":
    main()
