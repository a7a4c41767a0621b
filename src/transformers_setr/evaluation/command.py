"""Evaluate a SETR model on ADE20K or Cityscapes with mmsegmentation's protocol (mIoU at the original resolution).

Examples:
    setr evaluate --model path/to/setr-pup-ade20k --data zhoubolei/scene_parse_150 --mode slide
    setr evaluate --model my-model --data /data/cityscapes --mode ms_flip --output results.json
    accelerate launch scripts/evaluate.py --model my-model --data /data/ADEChallengeData2016   # sharded, summed

Prints mIoU / mAcc / aAcc and the per-class IoU and accuracy (in percent, as mmseg prints them); `--output` also
writes them (as fractions, NaN as null) to a JSON file.
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

from ..data.errors import DatasetFormatError, UndeclaredClassesError
from ..data.label_tables import DATASETS, id2label_for
from ..data.sources import load_segmentation_data
from ..files import write_text_atomically
from ..inference.predict import INFERENCE_MODES as EVAL_MODES
from ..models.setr.fast_inference_setr import optimize_for_inference
from .protocol import evaluate_segmentation, needs_cpu_process_group

DTYPES = ("float32", "float16", "bfloat16")


def _true_or_false(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1", "yes")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="setr evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="model folder or Hub id (with its image processor)")
    parser.add_argument("--revision", default=None, help="model revision on the Hub")
    parser.add_argument(
        "--data", required=True, help="dataset source: Hub id or local folder (see load_segmentation_data)"
    )
    parser.add_argument(
        "--dataset", choices=sorted(DATASETS), default=None, help="ADE20K / Cityscapes; inferred from known sources"
    )
    parser.add_argument("--dataset_config_name", default=None, help="the Hub dataset's configuration")
    parser.add_argument(
        "--id2label",
        default=None,
        help="custom data: JSON file naming the stored mask values; default the data's id2label.json, else the "
        "model's classes",
    )
    parser.add_argument(
        "--do_reduce_labels",
        type=_true_or_false,
        default=None,
        help="custom data: true when mask value 0 means unlabelled (value v is class v-1); default false",
    )
    parser.add_argument("--image_column", default=None, help="custom table data: the image column")
    parser.add_argument("--label_column", default=None, help="custom table data: the mask column")
    parser.add_argument(
        "--mask_values",
        default=None,
        help="custom data: the stored mask value of each class, in class order ('0,255': binary masks stored 0/255)",
    )
    parser.add_argument("--data_revision", default=None, help="dataset revision on the Hub")
    parser.add_argument("--cache_dir", default=None, help="datasets cache folder")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--mode", choices=EVAL_MODES, default="slide", help="SETR's single-scale protocol is slide")
    parser.add_argument("--max_samples", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--batch_size", type=int, default=None, help="sliding windows per forward pass")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--num_workers", type=int, default=2, help="DataLoader workers decoding the images")
    parser.add_argument("--output", type=Path, default=None, help="write the results to this JSON file")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_samples is not None and args.max_samples < 1:
        parser.error("--max_samples must be positive")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch_size must be positive")
    return args


def format_table(results: dict[str, Any]) -> str:
    def percent(value: float) -> str:
        return "nan" if math.isnan(value) else f"{100 * value:.2f}"

    width = max([len("Class"), *(len(name) for name in results["per_class_iou"])])
    lines = [
        f"{results['num_images']} images, mode {results['mode']}: "
        f"mIoU {percent(results['mIoU'])}  mAcc {percent(results['mAcc'])}  aAcc {percent(results['aAcc'])}",
        "",
        f"{'Class':<{width}}  {'IoU':>6}  {'Acc':>6}",
    ]
    for name, iou in results["per_class_iou"].items():
        lines.append(f"{name:<{width}}  {percent(iou):>6}  {percent(results['per_class_accuracy'][name]):>6}")
    return "\n".join(lines)


def _json_ready(value: Any) -> Any:
    # Strict JSON has no NaN: a class absent from the whole split is null.
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    return value


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(_json_ready(payload), indent=2, allow_nan=False))


def _custom_classes_of(model, args: argparse.Namespace) -> dict[int, str] | None:
    """The classes of a model trained on custom data (not ADE20K's or Cityscapes'), as the stored mask values of
    its data (shifted by one under --do_reduce_labels true); None for a model of a preset dataset. A binary model's
    are background (0) and its class (1)."""
    classes = {int(index): name for index, name in model.config.prediction_id2label.items()}
    if args.dataset is not None or any(classes == id2label_for(name) for name in DATASETS):
        return None
    return {index + 1: name for index, name in classes.items()} if args.do_reduce_labels else classes


def evaluate_command_line(argv: list[str] | None = None) -> dict[str, Any]:
    """`setr evaluate` itself: the results it prints (and writes with `--output`)."""
    args = parse_args(argv)

    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched with `accelerate launch` / torchrun
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=needs_cpu_process_group())  # a gloo group on a machine without a GPU
        device = accelerator.device
    else:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    is_main = accelerator is None or accelerator.is_main_process

    model = AutoModelForSemanticSegmentation.from_pretrained(
        args.model, revision=args.revision, dtype=getattr(torch, args.dtype)
    )
    image_processor = AutoImageProcessor.from_pretrained(args.model, revision=args.revision)
    if args.batch_size is not None:
        model.config.slide_batch_size = args.batch_size
    optimize_for_inference(model.to(device))

    def load(id2label):
        return load_segmentation_data(
            args.data,
            args.dataset,
            splits=[args.split],
            revision=args.data_revision,
            cache_dir=args.cache_dir,
            max_samples=args.max_samples,
            config_name=args.dataset_config_name,
            id2label=id2label,
            reduce_labels=args.do_reduce_labels,
            mask_values=args.mask_values,
            image_column=args.image_column,
            label_column=args.label_column,
        )

    try:
        data = load(args.id2label)
    except UndeclaredClassesError:
        # Custom data without an id2label.json: the classes the model was trained on name its mask values.
        model_classes = _custom_classes_of(model, args) if args.id2label is None else None
        if model_classes is None:
            raise
        data = load(model_classes)
    results = evaluate_segmentation(
        model,
        image_processor,
        data,
        split=args.split,
        mode=args.mode,
        accelerator=accelerator,
        progress=not args.no_progress,
        max_samples=args.max_samples,
        num_workers=args.num_workers,
    )
    if is_main:
        print(format_table(results))
        if args.output is not None:
            payload = {
                "model": args.model,
                "data": data.source,
                "dataset": data.dataset,
                "split": args.split,
                "dtype": args.dtype,
                "num_processes": 1 if accelerator is None else accelerator.num_processes,
                **results,
            }
            write_json(args.output, payload)
            print(f"results written to {args.output}")
    return results


def main(argv: list[str] | None = None) -> int:
    """`setr evaluate` (`scripts/evaluate.py`), with bad data as one line naming it, no traceback."""
    try:
        evaluate_command_line(argv)
    except (DatasetFormatError, FileNotFoundError) as error:
        program = os.path.basename(sys.argv[0])  # "setr evaluate" (set by `setr`), or "evaluate.py" (the script)
        print(f"{program}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return 0
