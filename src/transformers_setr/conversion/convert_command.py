"""Convert a released mmsegmentation SETR checkpoint into a transformers folder.

    setr convert --checkpoint setr-pup-vit-large-ade20k-512 --output converted/setr-pup
    setr convert --checkpoint https://.../setr_....pth --output DIR --push-to-hub ORG/NAME
    setr convert --checkpoint local.pth --output DIR --verify
    setr convert --checkpoint own.pth --output DIR --num-attention-heads 12

`--checkpoint` takes a preset name (downloaded once, with a progress bar, into ~/.cache/transformers_setr and checked
against the sha256 prefix of the released file name), a URL or a local `.pth`. Presets: see `--list`. What the
weights do not show (attention heads, feature layers, test protocol) comes from the mmseg config text the checkpoint
carries, else from the preset; a checkpoint with neither needs `--num-attention-heads` (and, unless it has 24
layers, `--overrides '{"out_indices": [...]}'`). `--overwrite` replaces only what an earlier conversion wrote.
"""

import argparse
import sys

from ..cli import config_overrides_argument
from ..models.setr.configuration_setr import MODEL_INFERENCE_MODES
from ..presets import PRESETS
from .from_mmseg import convert_checkpoint, resolve_checkpoint, verify_against_mmseg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="setr convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", help="preset name, URL or local .pth")
    parser.add_argument("--output", help="folder to write (created atomically)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace what an earlier conversion wrote there (other files stay)"
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the folder to this Hub model repo")
    parser.add_argument(
        "--overrides",
        type=config_overrides_argument,
        default=None,
        help="SetrConfig fields for non-released architectures, as a JSON object, e.g. '{\"out_indices\": [5, 11]}'",
    )
    parser.add_argument(
        "--num-attention-heads",
        type=int,
        help="encoder heads, for a checkpoint that is not a preset and carries no mmseg config text in its meta",
    )
    parser.add_argument(
        "--verify", action="store_true", help="compare logits with mmsegmentation (needs it installed)"
    )
    parser.add_argument("--mmseg-config", help="mmseg config name or path for --verify (default: the preset's)")
    parser.add_argument("--mmseg-python", help="interpreter with mmsegmentation for --verify")
    parser.add_argument("--verify-sizes", nargs="+", default=["512x512", "512x683", "300x437"])
    parser.add_argument("--list", action="store_true", help="list the presets and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`setr convert` (`scripts/convert_mmseg_to_hf.py`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        for name, listed in PRESETS.items():
            print(f"{name:40s} {listed.url}")
        return 0
    if not args.checkpoint or not args.output:
        parser.error("--checkpoint and --output are required")
    overrides = dict(args.overrides or {})
    if args.num_attention_heads is not None:
        overrides["num_attention_heads"] = args.num_attention_heads
    try:
        folder, model = convert_checkpoint(
            args.checkpoint,
            args.output,
            overrides=overrides or None,
            overwrite=args.overwrite,
            push_to_hub=args.push_to_hub,
        )
    except (ValueError, OSError) as error:  # bad input or an unwritable output: one line, no traceback
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        return 1
    print(f"wrote {folder}")
    if args.verify:
        path, preset = resolve_checkpoint(args.checkpoint)
        config = args.mmseg_config or (preset.mmseg_config if preset else None)
        if config is None:
            print("error: --verify needs --mmseg-config for a checkpoint that is not a preset", file=sys.stderr)
            return 1
        for mode in MODEL_INFERENCE_MODES:
            errors = verify_against_mmseg(model, path, config, tuple(args.verify_sizes), mode, args.mmseg_python)
            print(f"max |logits - mmseg| ({mode}): " + ", ".join(f"{k}: {v:.2e}" for k, v in errors.items()))
            if max(errors.values()) > 1e-4:
                print("error: logits differ from mmsegmentation by more than 1e-4", file=sys.stderr)
                return 1
    return 0
