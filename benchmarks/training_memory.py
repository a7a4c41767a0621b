#!/usr/bin/env python3
"""Peak memory of one ViT-L PUP training step on CPU: full, frozen encoder, LoRA, each with and without activation
checkpointing (issue 21).

Each configuration runs in its own process (peak RSS is per process): the released PUP architecture
(`setr-pup-vit-large-ade20k-512`: ViT-L/16, 24 layers, PUP head and 3 auxiliary heads, 150 classes) with random
weights, adapted as `setr train --freeze_encoder` / `--lora_rank 8` do (`training.adapt`), the default optimizer
(SGD, momentum 0.9, heads x10, `training.recipe.build_optimizer`), one forward + backward + optimizer step on a random
batch of 2 images at 512x512. Prints the peak RSS, the RSS before the step (the model) and the step's time.

    python benchmarks/training_memory.py [--batch 2] [--size 512] [--threads N] [--only full,lora-ckpt]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import current_rss_bytes, format_table, print_report, set_threads  # noqa: E402

CONFIGURATIONS = {
    "full": {},
    "full-ckpt": {"checkpointing": True},
    "frozen": {"freeze_encoder": True},
    "frozen-ckpt": {"freeze_encoder": True, "checkpointing": True},
    "lora": {"lora_rank": 8},
    "lora-ckpt": {"lora_rank": 8, "checkpointing": True},
}
GIB = 1024**3
# glibc raises its mmap threshold (up to 32 MiB) each time a large block is freed, after which blocks of a few MiB
# (a ViT-L layer's 8 MiB activations) come from the heap, where freed ones stay in the RSS. A fixed threshold keeps
# every block over 1 MiB on mmap, returned to the system when freed: that RSS is close to the live tensors.
ALLOCATORS = {"glibc default": {}, "fixed mmap threshold": {"MALLOC_MMAP_THRESHOLD_": str(1024 * 1024)}}


def one_configuration(name: str, batch: int, size: int) -> dict:
    """One training step of `name`, in this process; returns the measurements."""
    import resource
    from types import SimpleNamespace

    import torch

    from transformers_setr import SetrForSemanticSegmentation
    from transformers_setr.training import PRESETS, build_optimizer, config_for_preset
    from transformers_setr.training.adapt import adapt_for_training, trainable_parameter_count

    options = CONFIGURATIONS[name]
    torch.manual_seed(0)
    model = SetrForSemanticSegmentation(config_for_preset(PRESETS["setr-pup-vit-large-ade20k-512"]))
    adapt = SimpleNamespace(
        freeze_encoder=options.get("freeze_encoder", False), lora_rank=options.get("lora_rank", 0), lora_alpha=16.0,
        lora_dropout=0.0,
    )  # fmt: skip
    model = adapt_for_training(model, adapt)
    if options.get("checkpointing"):
        model.activation_checkpointing_enable()
    model.train()
    trainable, total = trainable_parameter_count(model)
    optimizer = build_optimizer(model, "sgd", 0.001)
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(batch, 3, size, size, generator=generator)
    labels = torch.randint(0, 150, (batch, size, size), generator=generator)
    before = current_rss_bytes()
    start = time.perf_counter()
    loss = model(pixel_values=pixel_values, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "name": name,
        "peak_rss": peak,
        "before_step_rss": before,
        "seconds": seconds,
        "trainable": trainable,
        "total": total,
        "loss": loss.item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", default=",".join(CONFIGURATIONS), help="comma-separated configurations")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    if args.child:
        print(json.dumps(one_configuration(args.child, args.batch, args.size)))
        return
    rows = []
    for name in args.only.split(","):
        if name not in CONFIGURATIONS:
            parser.error(f"unknown configuration {name!r}; choose from {', '.join(CONFIGURATIONS)}")
    for name in args.only.split(","):
        command = [sys.executable, __file__, "--child", name, "--batch", str(args.batch), "--size", str(args.size)]
        command += ["--threads", str(threads)]
        measured = {}
        for allocator, extra_environment in ALLOCATORS.items():
            result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **extra_environment})
            if result.returncode != 0:
                print(f"{name} ({allocator}): failed\n{result.stderr[-3000:]}", file=sys.stderr)
                break
            measured[allocator] = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"{name} ({allocator}): {measured[allocator]}", file=sys.stderr, flush=True)
        if len(measured) != len(ALLOCATORS):
            rows.append([name, "failed", "", "", "", ""])
            continue
        default, fixed = measured["glibc default"], measured["fixed mmap threshold"]
        rows.append(
            [
                name,
                f"{default['peak_rss'] / GIB:.2f}",
                f"{fixed['peak_rss'] / GIB:.2f}",
                f"{fixed['before_step_rss'] / GIB:.2f}",
                f"{fixed['trainable'] / 1e6:.1f} M of {fixed['total'] / 1e6:.1f} M",
                f"{default['seconds']:.1f} / {fixed['seconds']:.1f}",
            ]
        )
    table = format_table(
        [
            "configuration",
            "peak RSS GiB",
            "peak RSS GiB, MALLOC_MMAP_THRESHOLD_=1 MiB",
            "model alone GiB",
            "trained parameters",
            "step s (default / 1 MiB)",
        ],
        rows,
    )
    print_report(
        f"One ViT-L PUP training step, batch {args.batch}, {args.size}x{args.size}, CPU fp32 (peak RSS per process)",
        table,
        notes=[
            "ckpt: activation checkpointing (`model.activation_checkpointing_enable()`, non-reentrant); frozen: "
            "`--freeze_encoder`; lora: `--lora_rank 8` on q/k/v/o and fc1/fc2, neck and heads fully trained; SGD "
            "momentum 0.9 (its buffers are allocated in the step)."
        ],
        threads=threads,
    )


if __name__ == "__main__":
    main()
