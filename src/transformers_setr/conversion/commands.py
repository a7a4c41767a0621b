"""The conversion command lines: `setr convert` (mmsegmentation checkpoints) and `setr convert-timm` (the timm ViT
pretrain SETR trains from)."""

import argparse
import sys

from ..cli import config_overrides_argument
from ..data.label_tables import id2label_for
from ..models.setr.configuration_setr import MODEL_INFERENCE_MODES, SetrConfig
from ..models.setr.modeling_setr import SetrForSemanticSegmentation
from ..presets import PRESETS
from .from_mmseg import convert_checkpoint, resolve_checkpoint, verify_against_mmseg
from .from_timm import TIMM_VIT_PRESETS, load_timm_vit_pretrain

CONVERT_DOC = """Convert a released mmsegmentation SETR checkpoint into a transformers folder.

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

CONVERT_TIMM_DOC = """Build a SETR model whose encoder starts from timm's ImageNet ViT weights (mmsegmentation's training
initialisation) and save it with `save_pretrained`; decode and auxiliary heads keep their random initialisation.

    setr convert-timm --decoder-type pup --dataset ade20k --image-size 512 --output setr-pup-init
    setr convert-timm --source /path/to/jx_vit_large_p16_384-b3be5167.pth --output out

`--source` is a preset name (default `vit-large-p16-384`: timm's `jx_vit_large_p16_384`, downloaded once into
`~/.cache/transformers_setr/timm/`), an http(s) URL or a local `.pth`.
"""


def build_convert_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="setr convert", description=CONVERT_DOC, formatter_class=argparse.RawDescriptionHelpFormatter
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


def convert_main(argv: list[str] | None = None) -> int:
    """`setr convert` (`scripts/convert_mmseg_to_hf.py`)."""
    parser = build_convert_parser()
    args = parser.parse_args(argv)
    if args.list:
        for name, preset in PRESETS.items():
            print(f"{name:40s} {preset.url}")
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


def build_convert_timm_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="setr convert-timm", description=CONVERT_TIMM_DOC, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source", default="vit-large-p16-384", help=f"preset ({', '.join(TIMM_VIT_PRESETS)}), URL or path"
    )
    parser.add_argument("--decoder-type", choices=("naive", "pup", "mla"), default="pup")
    parser.add_argument("--dataset", choices=("ade20k", "cityscapes"), default="ade20k", help="label set")
    parser.add_argument("--image-size", type=int, default=512, help="training crop: 512 (ADE20K) or 768 (Cityscapes)")
    parser.add_argument(
        "--auxiliary-num-convs", type=int, default=None, help="default: the ADE20K recipe's value for the decoder"
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="download cache (default: $TRANSFORMERS_SETR_CACHE/timm, else ~/.cache/transformers_setr/timm)",
    )
    parser.add_argument("--output", required=True, help="folder for save_pretrained")
    return parser


def convert_timm_main(argv: list[str] | None = None) -> int:
    """`setr convert-timm` (`scripts/convert_timm_vit.py`)."""
    args = build_convert_timm_parser().parse_args(argv)

    config = SetrConfig(
        decoder_type=args.decoder_type,
        image_size=args.image_size,
        id2label=id2label_for(args.dataset),
        auxiliary_num_convs=args.auxiliary_num_convs,
    )
    model = SetrForSemanticSegmentation(config)
    try:
        report = load_timm_vit_pretrain(model, args.source, cache_dir=args.cache_dir)
    except (ValueError, OSError) as error:  # a missing, truncated or foreign file: one line, no traceback
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        return 1
    print(report)
    model.save_pretrained(args.output)
    print(f"saved to {args.output}")
    return 0
