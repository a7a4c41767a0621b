"""bf16 autocast against fp32 argmax agreement on a *trained* SETR, next to the same architecture with random weights.

    .venv/bin/python benchmarks/bf16_agreement.py      # the main job's model and validation images
    .venv/bin/python benchmarks/bf16_agreement.py --model PATH --images DIR --mode slide --max-images 50

`bench_inference.py` measures agreement on ViT-L/16 with random weights (no trained checkpoint is reachable offline),
where the top two classes of most pixels are nearly tied and bf16 rounding flips some of them whatever the
implementation. This script shows how much of that is the weights: it runs a trained folder (by default the one
`python3 scripts/quickstart.py main` writes) and a randomly initialised copy of its architecture on the same images,
fp32 and bf16 autocast, and counts the pixels whose argmax agrees (at the model's output resolution).
"""

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, format_table, print_report, set_threads  # noqa: E402

from transformers_setr import SetrConfig, SetrForSemanticSegmentation  # noqa: E402
from transformers_setr.models.setr.fast_inference_setr import optimize_for_inference  # noqa: E402
from transformers_setr.models.setr.image_processing_setr import SetrImageProcessor  # noqa: E402

MAIN_JOB = ROOT / "outputs" / "main-job"
NEAR_TIE_MARGIN = 0.1  # as in bench_inference.py
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MAIN_JOB / "model", help="a trained SETR folder")
    parser.add_argument(
        "--images",
        type=Path,
        default=MAIN_JOB / "data" / "ADEChallengeData2016" / "images" / "validation",
        help="a folder of images",
    )
    parser.add_argument("--mode", choices=["whole", "slide"], default="slide")
    parser.add_argument("--max-images", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-weight copy")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model} holds no config.json (run `python3 scripts/quickstart.py main` first)")
    if not args.images.is_dir():
        parser.error(f"--images {args.images} is not a folder")
    return args


def agreement(
    model: SetrForSemanticSegmentation, batches: list[torch.Tensor], mode: str
) -> tuple[float, float, float]:
    """(agreement, share of near-tie pixels, agreement off near-ties) of bf16 autocast against fp32."""
    agree = near = agree_decided = total = 0
    for pixel_values in batches:
        with torch.inference_mode():
            fp32 = model(pixel_values, inference_mode=mode).logits
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = model(pixel_values, inference_mode=mode).logits.float()
        same = fp32.argmax(1) == bf16.argmax(1)
        top2 = fp32.topk(2, dim=1).values
        decided = (top2[:, 0] - top2[:, 1]) >= NEAR_TIE_MARGIN
        agree += int(same.sum())
        near += int((~decided).sum())
        agree_decided += int(same[decided].sum())
        total += same.numel()
    return agree / total, near / total, (agree_decided / (total - near) if total > near else None)


def main() -> None:
    args = parse_args()
    threads = set_threads(args.threads)
    paths = sorted(path for path in args.images.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    paths = paths[: args.max_images]
    if not paths:
        raise SystemExit(f"no .jpg/.png images in {args.images}")
    processor = SetrImageProcessor.from_pretrained(args.model)
    batches = [processor(Image.open(path).convert("RGB"), return_tensors="pt").pixel_values for path in paths]
    trained = optimize_for_inference(SetrForSemanticSegmentation.from_pretrained(args.model))
    torch.manual_seed(args.seed)
    random_copy = optimize_for_inference(SetrForSemanticSegmentation(SetrConfig.from_pretrained(args.model)))
    rows = []
    for name, model in (("trained", trained), ("random weights, same architecture", random_copy)):
        agree, near, agree_decided = agreement(model, batches, args.mode)
        decided = "- (none)" if agree_decided is None else f"{agree_decided:.4%}"
        rows.append([name, f"{agree:.4%}", f"{near:.2%}", decided])
    config = trained.config
    headers = ["weights", "bf16 argmax agree", f"near-tie px (fp32 margin < {NEAR_TIE_MARGIN})", "agree off near-ties"]
    notes = [
        f"{len(paths)} images, {args.mode} inference; model: {config.decoder_type} decoder, {config.num_hidden_layers} "
        f"layers of width {config.hidden_size}, {config.num_labels} classes."
    ]
    print_report(
        "bf16 autocast vs fp32 argmax agreement: trained vs random weights",
        format_table(headers, rows),
        notes,
        threads,
    )


if __name__ == "__main__":
    main()
