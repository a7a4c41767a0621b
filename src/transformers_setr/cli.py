"""The `setr` command: one entry point for every command line of the package.

    setr convert --checkpoint setr-pup-vit-large-ade20k-512 --output setr-pup     # mmseg checkpoint -> transformers
    setr train --preset setr-naive-vit-large-ade20k-512 --output_dir runs/naive   # HF Trainer, SETR recipe
    setr evaluate --model setr-pup --data zhoubolei/scene_parse_150 --mode slide  # mIoU with SETR's protocol

`setr COMMAND --help` lists a command's options. Under several processes: `accelerate launch -m transformers_setr
train ...` (or the `scripts/` files of a checkout, which are the same commands).
"""

import importlib
import json
import sys
from typing import Any

from ._imports import DISTRIBUTION, EXTRAS

# name -> (the module whose `main(argv) -> int` it runs, summary, the extra it needs beyond the inference install)
COMMANDS: dict[str, tuple[str, str, str | None]] = {
    "convert": ("conversion.convert_command", "convert a released mmsegmentation SETR checkpoint", None),
    "convert-timm": (
        "conversion.convert_timm_command",
        "start a SETR model from timm's ImageNet ViT weights (SETR's training initialisation)",
        None,
    ),
    "train": ("training.train_command", "train or fine-tune with the Hugging Face Trainer", "train"),
    "train-loop": ("training.train_loop_command", "the same recipe as a plain Accelerate loop", "train"),
    "evaluate": ("evaluation.command", "mIoU on ADE20K, Cityscapes or your data (SETR's protocol)", "train"),
    "cards": ("cards.command", "write or check the model cards of the seven released checkpoints", None),
    "segment": ("apps.segment", "segment images, folders, globs or URLs: label maps, overlays, an index", None),
    "demo": ("apps.demo", "a Gradio web demo, offline, on CPU by default", "demo"),
    "export-onnx": ("apps.onnx_export", "export to ONNX and check it against PyTorch with onnxruntime", "onnx"),
}


def parse_config_overrides(text: str | None) -> dict[str, Any]:
    """`SetrConfig` fields given on a command line, as one JSON object (the one format of every command):
    `'{"hidden_size": 64, "out_indices": [0, 1, 2, 3]}'`. Unknown fields are refused, naming them."""
    from .models.setr.configuration_setr import SetrConfig

    if not text:
        return {}
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as error:
        hint = ""
        if "=" in text and not text.lstrip().startswith("{"):
            pairs = (item.partition("=") for item in text.split(","))
            hint = (
                " (name=value lists are not read: write " + "{" + ", ".join(f'"{k}": ...' for k, _, _ in pairs) + "})"
            )
        raise ValueError(f"config overrides must be a JSON object, got {text!r}: {error.msg}{hint}") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"config overrides must be a JSON object of SetrConfig fields, got {text!r}")
    # `num_labels` is no dataclass field but a constructor argument of every config (`{"num_labels": 1}`: binary)
    unknown = sorted(
        name for name in overrides if name not in SetrConfig.__dataclass_fields__ and name != "num_labels"
    )
    if unknown:
        raise ValueError(f"config overrides {unknown} are not SetrConfig fields")
    return overrides


def config_overrides_argument(text: str) -> dict[str, Any]:
    """`parse_config_overrides` as an argparse `type` (an error message instead of a traceback)."""
    import argparse

    try:
        return parse_config_overrides(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [__doc__.strip(), "", "commands:"]
    for name, (_, summary, extra) in COMMANDS.items():
        needs = f"  [needs {DISTRIBUTION}[{extra}]]" if extra else ""
        lines.append(f"  {name:<{width}}  {summary}{needs}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from . import __version__

        print(f"{DISTRIBUTION} {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"setr: unknown command {name!r}; the commands are: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, _, _ = COMMANDS[name]
    program, sys.argv[0] = sys.argv[0], f"setr {name}"  # argparse's default `prog`: "usage: setr train ..."
    try:
        command = importlib.import_module(f"{__package__}.{module_name}").main
        return int(command(argv[1:]) or 0)
    except ImportError as error:
        missing = (error.name or "").partition(".")[0]
        if missing not in EXTRAS:
            raise
        extra = EXTRAS[missing]
        print(
            f"setr {name} needs the [{extra}] extra ({missing} is not installed): pip install '{DISTRIBUTION}[{extra}]'",
            file=sys.stderr,
        )
        return 1
    finally:
        sys.argv[0] = program


if __name__ == "__main__":
    sys.exit(main())
