"""Build a SETR model whose encoder starts from timm's ImageNet ViT weights (mmsegmentation's training
initialisation) and save it with `save_pretrained`; decode and auxiliary heads keep their random initialisation.

    setr convert-timm --decoder-type pup --dataset ade20k --image-size 512 --output setr-pup-init
    setr convert-timm --source /path/to/jx_vit_large_p16_384-b3be5167.pth --output out

`--source` is a preset name (default `vit-large-p16-384`: timm's `jx_vit_large_p16_384`, downloaded once into
`~/.cache/transformers_setr/timm/`), an http(s) URL or a local `.pth`.
"""

import argparse
import sys

from ..data.label_tables import id2label_for
from ..models.setr.configuration_setr import SetrConfig
from ..models.setr.modeling_setr import SetrForSemanticSegmentation
from .from_timm import TIMM_VIT_PRESETS, load_timm_vit_pretrain


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="setr convert-timm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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


def main(argv: list[str] | None = None) -> int:
    """`setr convert-timm` (`scripts/convert_timm_vit.py`)."""
    args = build_parser().parse_args(argv)

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
