"""Float32 outputs of the current `modeling_setr.py` against a previous version of the file (issue 5: nothing may
change fp32 outputs beyond 1e-5), and optionally their speed side by side.

    .venv/bin/python benchmarks/compare_implementations.py --before HEAD~1
    .venv/bin/python benchmarks/compare_implementations.py --before HEAD~1 --full --time --bf16
    git show HEAD:src/transformers_setr/models/setr/modeling_setr.py > /tmp/modeling_setr_before.py
    .venv/bin/python benchmarks/compare_implementations.py --before /tmp/modeling_setr_before.py

`--before` is a git revision (all of that revision's shipped `*_setr.py` files: its modeling, fast path and
configuration), a folder of such files, or one old `modeling_setr.py` (next to the current other files). Each side
runs as its own package, both in this process: the current model after `optimize_for_inference` (as the inference
entry points run it), the previous one after its own `optimize_for_inference` where it has one (before issue 22 its
fast path was built into the model). `no_grad` compares them as served; `autograd` the plain computation.

Both models get the same seeded random weights (He-scaled, so that logits are O(1)); the table holds the largest
|logit difference| per decoder, input and mode, with and without autograd (the current file caches tensors only
without it), and for whole-image inputs the difference of one training loss (decode + auxiliary heads, 10% ignored
labels) and of all its gradients. `--full` uses the released ViT-L/16 size instead of a reduced one; `--time` alternates the two
implementations and reports the ratio of their minimum times (fp32, and bf16 autocast with `--bf16`). The exit status
is 1 when a difference exceeds `--tolerance`.
"""

import argparse
import importlib.util
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, print_report, set_threads, spread, time_call  # noqa: E402

from transformers_setr.models.setr import modeling_setr as current_module  # noqa: E402
from transformers_setr.models.setr.configuration_setr import SetrConfig  # noqa: E402
from transformers_setr.models.setr.fast_inference_setr import optimize_for_inference  # noqa: E402

SOURCE = Path(current_module.__file__).resolve().parent
SHIPPED = "src/transformers_setr/models/setr"


def write_revision_files(revision: str, package: Path) -> None:
    """A git revision's shipped `*_setr.py` files, written into `package`."""
    root = Path(__file__).resolve().parent.parent
    listing = subprocess.run(
        ["git", "ls-tree", "--name-only", f"{revision}:{SHIPPED}"], cwd=root, capture_output=True, text=True
    )
    if listing.returncode != 0:
        sys.exit(f"compare_implementations.py: error: --before {revision}: no such file, folder or git revision")
    for name in listing.stdout.split():
        if name.endswith("_setr.py"):
            text = subprocess.run(
                ["git", "show", f"{revision}:{SHIPPED}/{name}"], cwd=root, capture_output=True, text=True, check=True
            ).stdout
            (package / name).write_text(text)


def load_previous(path: Path, scratch: Path):
    """Import an old `modeling_setr.py` (a folder of old shipped files, or a git revision's) as its own package, next
    to the current configuration file and the current shipped files it may import."""
    package = scratch / "setr_previous"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for sibling in SOURCE.glob("*_setr.py"):
        shutil.copy(sibling, package / sibling.name)
    if not path.exists():
        write_revision_files(str(path), package)
    elif path.is_dir():
        for old in path.glob("*_setr.py"):
            if old.name != "configuration_setr.py":
                shutil.copy(old, package / old.name)
    else:
        shutil.copy(path, package / "modeling_setr.py")
    sys.path.insert(0, str(scratch))
    spec = importlib.util.find_spec("setr_previous.modeling_setr")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def randomise(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.1, generator=generator)
            elif parameter.dim() == 1:  # LayerNorm / BatchNorm weights
                parameter.normal_(1, 0.1, generator=generator)
            elif "position_embeddings" in name or name.endswith("cls_token"):
                parameter.normal_(0, 0.5, generator=generator)
            else:
                parameter.normal_(0, math.sqrt(2 / parameter[0].numel()), generator=generator)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)


def config_for(decoder: str, full: bool, previous_config_class) -> tuple[SetrConfig, object]:
    kwargs = dict(decoder_type=decoder, num_labels=150)
    if not full:
        kwargs.update(
            hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=256, image_size=64,
            out_indices=[0, 1, 2, 3], mla_channels=8, mla_neck_channels=16, auxiliary_channels=16,
            decoder_channels=32 if decoder == "mla" else 16,
        )  # fmt: skip
    return SetrConfig(**kwargs), previous_config_class(**kwargs)


def logits_of(model, pixel_values: torch.Tensor, mode: str, grad: bool, bf16: bool = False) -> torch.Tensor:
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(pixel_values, inference_mode=mode).logits
        if mode == "whole":
            logits = F.interpolate(logits.float(), size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
    return logits.detach().float()


def training_differences(current, previous, pixel_values: torch.Tensor) -> tuple[float, float]:
    """|loss difference| and the largest |gradient difference| over all parameters, for one labelled batch."""
    generator = torch.Generator().manual_seed(7)
    labels = torch.randint(0, current.config.num_labels, (pixel_values.shape[0], *pixel_values.shape[-2:]))
    labels[torch.rand(labels.shape, generator=generator) < 0.1] = current.config.semantic_loss_ignore_index
    losses, gradients = [], []
    for model in (current, previous):
        model.train()
        model.zero_grad(set_to_none=True)
        loss = model(pixel_values, labels=labels).loss
        loss.backward()
        losses.append(loss.item())
        gradients.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
        model.eval()
    assert gradients[0].keys() == gradients[1].keys()
    gradient_diff = max((gradients[0][name] - gradients[1][name]).abs().max().item() for name in gradients[0])
    return abs(losses[0] - losses[1]), gradient_diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--before",
        required=True,
        type=Path,
        help="a git revision, a folder of its *_setr.py files, or a modeling_setr.py",
    )
    parser.add_argument("--full", action="store_true", help="ViT-L/16 at 512 (slow) instead of a reduced model")
    parser.add_argument("--time", action="store_true", help="also time both implementations, alternating")
    parser.add_argument("--bf16", action="store_true", help="with --time: also time bf16 autocast")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decoders", nargs="+", default=["naive", "pup", "mla"])
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    side = 512 if args.full else 64
    # Training-grid input, one needing padding and a resized table, and a slide case with several windows.
    cases = [("whole", 2, side, side), ("whole", 1, side * 3 // 4 + 5, side + 13), ("slide", 2, side, side * 4 // 3)]
    if args.full:
        cases = [("whole", 1, 512, 512), ("whole", 1, 389, 530), ("slide", 1, 512, 683)]
    rows, failures = [], []
    with tempfile.TemporaryDirectory(prefix="setr-previous-") as scratch:
        previous_module = load_previous(args.before, Path(scratch))
        previous_fast_path = sys.modules.get("setr_previous.fast_inference_setr")
        previous_optimize = getattr(previous_fast_path, "optimize_for_inference", None)
        for decoder in args.decoders:
            current_config, previous_config = config_for(decoder, args.full, previous_module.SetrConfig)
            current = current_module.SetrForSemanticSegmentation(current_config).eval()
            randomise(current, seed=len(decoder))
            previous = previous_module.SetrForSemanticSegmentation(previous_config).eval()
            previous.load_state_dict(current.state_dict())
            optimize_for_inference(current)
            if previous_optimize is not None:
                previous_optimize(previous)
            for mode, batch, height, width in cases:
                generator = torch.Generator().manual_seed(height * width + batch)
                pixel_values = torch.randn(batch, 3, height, width, generator=generator)
                reference = logits_of(previous, pixel_values, mode, grad=False)
                no_grad = (logits_of(current, pixel_values, mode, grad=False) - reference).abs().max().item()
                with_grad = (logits_of(current, pixel_values, mode, grad=True) - reference).abs().max().item()
                row = [decoder, mode, f"{batch}x{height}x{width}", f"{reference.abs().max():.2f}"]
                row += [f"{no_grad:.1e}", f"{with_grad:.1e}"]
                if mode == "whole":
                    loss_diff, gradient_diff = training_differences(current, previous, pixel_values)
                    row += [f"{loss_diff:.1e}", f"{gradient_diff:.1e}"]
                else:
                    row += ["-", "-"]
                if max(no_grad, with_grad) > args.tolerance:
                    failures.append(f"{decoder} {mode} {height}x{width}: {max(no_grad, with_grad):.2e}")
                if args.time:
                    contestants = [("previous fp32", previous, False), ("current fp32", current, False)]
                    if args.bf16:
                        contestants += [("previous bf16", previous, True), ("current bf16", current, True)]
                    times = {name: [] for name, _, _ in contestants}
                    for repeat in range(args.repeats):
                        order = contestants if repeat % 2 == 0 else contestants[::-1]
                        for name, model, bf16 in order:
                            seconds, _ = time_call(logits_of, model, pixel_values, mode, False, bf16)
                            times[name].append(seconds)
                    row += [f"{min(times['previous fp32']):.2f}", f"{min(times['current fp32']):.2f}"]
                    row += [f"{min(times['current fp32']) / min(times['previous fp32']):.3f}"]
                    if args.bf16:
                        row += [f"{min(times['current bf16']) / min(times['previous bf16']):.3f}"]
                    row += [" / ".join(spread(times[name]) for name, _, _ in contestants)]
                rows.append(row)
    headers = ["decoder", "mode", "input", "max abs logit", "max abs diff (no_grad)", "max abs diff (autograd)"]
    headers += ["loss diff (train)", "max abs grad diff"]
    if args.time:
        headers += ["previous fp32 s", "current fp32 s", "fp32 current/previous"]
        headers += ["bf16 current/previous"] if args.bf16 else []
        headers += ["noise (max/min)"]
    notes = [f"Previous implementation: {args.before}; tolerance {args.tolerance:g} on fp32 logits."]
    notes.append("Differences above tolerance: " + ("; ".join(failures) if failures else "none"))
    print_report("Current vs previous modeling_setr.py", format_table(headers, rows), notes, threads)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
