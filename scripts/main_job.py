#!/usr/bin/env python3
"""The embedded main job: train and evaluate a small SETR end to end, offline, on CPU, in a few minutes.

1. Generates a synthetic dataset in the exact raw ADE20K layout (`ADEChallengeData2016/`: JPEG images, 8-bit PNG
   annotations with values 0..150, `objectInfo150.txt`), with structured, learnable scenes.
2. Trains a small SETR-Naive (the released ADE20K recipe's decoder, optimizer, schedule and augmentation, a reduced
   ViT encoder and crop) with the Hugging Face Trainer (`scripts/train.py`), then evaluates it with the real
   protocol: keep-ratio resize to the test scale, sliding-window inference, logits resized to the original
   ground-truth resolution, mmsegmentation's dataset-level mIoU. Saves a transformers folder (weights, config, image
   processor, model card with the measured mIoU).
3. Segments validation images through `pipeline("image-segmentation")` and writes colour overlays with a class
   legend (prediction | ground truth) to `<output>/overlays/`, enlarged for viewing.
4. Prints the classes present (IoU, accuracy), mIoU / mAcc / aAcc next to the chance levels, and writes
   `<output>/index.html`: the metrics, the class table, the training curve, the overlays and links to the model.

    python scripts/main_job.py [--output outputs/main-job] [--max_steps 600] [--seed 0]
"""

import argparse
import html
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

# A small encoder (4 layers, width 96) and 64×64 crops: a few minutes of CPU training; the rest is the ADE20K recipe.
TINY_ENCODER = json.dumps(
    {
        "hidden_size": 96,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 192,
        "out_indices": [0, 1, 2, 3],
        "decoder_channels": 64,
        "auxiliary_channels": 32,
    }
)
# Marks an output folder as the main job's: only such a folder's data/ and model/ are replaced by a new run.
OUTPUT_MARKER = ".setr-main-job"
PANEL_MIN_SIDE = 512  # overlays are enlarged (nearest neighbour) until each panel is at least this many pixels


def shown(path: Path) -> str:
    """A path as the user typed it: relative to the current folder when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def chance_levels(label_histogram: np.ndarray) -> dict[str, float]:
    """Expected mIoU of two label-free predictors on a set whose ground truth has this class histogram
    (mmseg's metric: classes absent from the ground truth are left out).

    - uniform: every pixel gets one of the K present classes uniformly at random. For a class with pixel fraction
      f: E[I] = f/K, E[pred] = 1/K, so IoU = (f/K) / (1/K + f - f/K).
    - majority: every pixel gets the most frequent class: IoU = f_max for it, 0 for the others.
    """
    fractions = label_histogram[label_histogram > 0] / label_histogram.sum()
    k = len(fractions)
    uniform = np.mean((fractions / k) / (1 / k + fractions - fractions / k))
    return {"uniform": float(uniform), "majority": float(fractions.max() / k), "classes_present": k}


def written_by_main_job(output: Path) -> bool:
    """The marker, or the layout of a main job from before the marker existed."""
    if (output / OUTPUT_MARKER).is_file():
        return True
    entries = {entry.name for entry in output.iterdir()}
    data = output / "data"
    return entries <= {"data", "model", "overlays"} and (
        not data.exists() or {entry.name for entry in data.iterdir()} <= {"ADEChallengeData2016"}
    )


def prepare_output(output: Path) -> None:
    """Refuse a non-empty folder that an earlier main job did not make; clear only what a main job writes."""
    if output.exists() and not output.is_dir():
        raise SystemExit(f"main_job: --output {output} is a file, not a folder (nothing was changed)")
    if output.exists() and any(output.iterdir()) and not written_by_main_job(output):
        raise SystemExit(
            f"main_job: {output} is not empty and was not written by the main job; choose another --output "
            "(nothing was changed)"
        )
    output.mkdir(parents=True, exist_ok=True)
    (output / OUTPUT_MARKER).write_text(
        "written by scripts/main_job.py; its data/, model/ and overlays/ are replaced\n"
    )
    for name in ("data", "model", "overlays"):
        shutil.rmtree(output / name, ignore_errors=True)


def classes_present(eval_results: dict, id2label: dict[int, str]) -> list[tuple[str, float, float]]:
    """(name, IoU, accuracy) of the classes that the ground truth or the prediction holds (a finite IoU), by IoU."""
    rows = []
    for index in range(len(id2label)):
        name = id2label[index]
        iou = eval_results.get(f"eval_IoU-{name}")
        if iou is not None and math.isfinite(iou):
            rows.append((name, iou, eval_results.get(f"eval_Acc-{name}", float("nan"))))
    return sorted(rows, key=lambda row: -row[1])


def format_percent(value: float) -> str:
    return f"{100 * value:.2f}" if math.isfinite(value) else "-"


def class_table_lines(rows: list[tuple[str, float, float]]) -> list[str]:
    width = max([len("class"), *(len(name) for name, _, _ in rows)])
    lines = [f"{'class':<{width}}  {'IoU %':>7}  {'Acc %':>7}"]
    lines += [f"{name:<{width}}  {format_percent(iou):>7}  {format_percent(acc):>7}" for name, iou, acc in rows]
    return lines


def side_by_side(panels: list[tuple[str, Image.Image]], gap: int = 16, header: int = 30) -> Image.Image:
    """Panels left to right on white, each under its title."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=20)
    width = sum(panel.width for _, panel in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, header + max(panel.height for _, panel in panels)), "white")
    draw = ImageDraw.Draw(canvas)
    left = 0
    for title, panel in panels:
        draw.text((left + 4, 4), title, fill="black", font=font)
        canvas.paste(panel, (left, header))
        left += panel.width + gap
    return canvas


def loss_curve_svg(steps: list[int], losses: list[float], width: int = 560, height: int = 240) -> str:
    """The training loss against the step as a small self-contained SVG (no plotting library needed)."""
    if not steps:
        return "<p>No training loss was logged.</p>"
    left, right, top, bottom = 56, 12, 12, 36
    low, high = min(losses), max(losses)
    span_y = (high - low) or 1.0
    span_x = (max(steps) - min(steps)) or 1

    def x(step: int) -> float:
        return left + (step - min(steps)) / span_x * (width - left - right)

    def y(loss: float) -> float:
        return top + (high - loss) / span_y * (height - top - bottom)

    points = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in zip(steps, losses))
    axis = f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#444"/>'
    axis += f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#444"/>'
    labels = (
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{high:.3g}</text>'
        f'<text x="{left - 6}" y="{height - bottom}" text-anchor="end">{low:.3g}</text>'
        f'<text x="{left}" y="{height - bottom + 16}" text-anchor="middle">{min(steps)}</text>'
        f'<text x="{width - right}" y="{height - bottom + 16}" text-anchor="end">{max(steps)}</text>'
        f'<text x="{(left + width - right) / 2:.0f}" y="{height - 4}" text-anchor="middle">step</text>'
        f'<text x="14" y="{(top + height - bottom) / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(top + height - bottom) / 2:.0f})">loss</text>'
    )
    dots = "".join(f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="2.5"/>' for s, v in zip(steps, losses))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="12" '
        f'font-family="sans-serif" role="img" aria-label="training loss against step">{axis}{labels}'
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{points}"/>'
        f'<g fill="#1f77b4">{dots}</g></svg>'
    )


def write_index_html(
    output: Path,
    summary_lines: list[str],
    rows: list[tuple[str, float, float]],
    curve: str,
    overlays: list[tuple[Path, list[str], list[str]]],
    model_dir: Path,
) -> Path:
    """`index.html` beside the outputs, with relative links only (the folder can be moved or served as it is)."""
    table = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{format_percent(iou)}</td><td>{format_percent(acc)}</td></tr>"
        for name, iou, acc in rows
    )
    figures = "".join(
        f'<figure><img src="{html.escape(path.relative_to(output).as_posix())}" alt="{html.escape(path.stem)}">'
        f"<figcaption>{html.escape(path.stem)}: prediction (left) | ground truth (right).<br>"
        f"Predicted: {html.escape(', '.join(predicted))}.<br>Ground truth: {html.escape(', '.join(truth))}."
        "</figcaption></figure>"
        for path, predicted, truth in overlays
    )
    model = html.escape(model_dir.relative_to(output).as_posix())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>SETR main job</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1800px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 10px;text-align:right}}td:first-child{{text-align:left}}
figure{{margin:1em 0}}img{{max-width:100%;image-rendering:pixelated}}pre{{background:#f6f6f6;padding:8px}}</style>
</head><body>
<h1>SETR main job</h1>
<pre>{html.escape(chr(10).join(summary_lines))}</pre>
<p>Model folder: <a href="{model}/">{model}/</a> (model card: <a href="{model}/README.md">{model}/README.md</a>,
all metrics: <a href="{model}/eval_results.json">{model}/eval_results.json</a>)</p>
<h2>Classes present</h2>
<table><tr><th>class</th><th>IoU %</th><th>Acc %</th></tr>{table}</table>
<h2>Training loss</h2>
{curve}
<h2>Overlays</h2>
{figures}
</body></html>
"""
    path = output / "index.html"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "outputs" / "main-job")
    parser.add_argument("--max_steps", type=int, default=600)
    parser.add_argument("--num_train", type=int, default=200)
    parser.add_argument("--num_validation", type=int, default=50)
    parser.add_argument("--num_overlays", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    output = args.output.resolve()
    prepare_output(output)

    from tqdm.auto import tqdm
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    import transformers_setr  # noqa: F401  (registers SETR with the Auto classes and the pipeline)
    from transformers_setr.data import load_segmentation_data
    from transformers_setr.data.synthetic import make_synthetic_ade20k
    from transformers_setr.inference.visualize import overlay_with_legend, upscale_for_display
    from transformers_setr.training.train_command import main as train

    hf_logging.disable_progress_bar()  # one bar per phase: not transformers' one-item weight loading/saving bars
    started = time.perf_counter()
    data_root = output / "data"
    model_dir = output / "model"
    overlays_dir = output / "overlays"
    print(f"[1/4] synthetic ADE20K-layout dataset -> {shown(data_root)}", flush=True)
    ade_root = make_synthetic_ade20k(
        data_root,
        layout="raw",
        num_train=args.num_train,
        num_validation=args.num_validation,
        image_size=(96, 128),
        seed=args.seed,
        progress=True,
    )

    print(
        f"[2/4] training a small SETR-Naive with the Trainer ({args.max_steps} steps), then evaluating it "
        "(slide inference, original resolution, dataset-level mIoU)",
        flush=True,
    )
    train_args = [
        "--preset", "setr-naive-vit-large-ade20k-512",
        "--data", str(ade_root),
        "--config_overrides", TINY_ENCODER,
        "--crop_size", "64",
        "--scale", "256,64",
        "--output_dir", str(model_dir),
        "--max_steps", str(args.max_steps),
        "--per_device_train_batch_size", "8",
        "--learning_rate", "0.01",
        "--eval_strategy", "no",
        "--save_strategy", "no",
        "--logging_steps", str(max(1, min(50, args.max_steps // 12))),  # about 12 points on the loss curve
        "--dataloader_num_workers", "0",
        "--report_to", "none",
        "--seed", str(args.seed),
        "--use_cpu", "true",
    ]  # fmt: skip
    training_started = time.perf_counter()
    train(train_args)
    training_seconds = time.perf_counter() - training_started

    eval_results = json.loads((model_dir / "eval_results.json").read_text())
    data = load_segmentation_data(ade_root)
    histogram = np.zeros(256, dtype=np.int64)
    for row in data.splits["validation"]:
        histogram += np.bincount(data.decode(row).labels.ravel(), minlength=256)
    chance = chance_levels(histogram[:150])

    print(f"[3/4] pipeline('image-segmentation') overlays -> {shown(overlays_dir)}", flush=True)
    overlays_dir.mkdir(parents=True, exist_ok=True)
    segmenter = pipeline("image-segmentation", model=str(model_dir))
    config = segmenter.model.config
    overlays = []
    count = min(args.num_overlays, len(data.splits["validation"]))
    for index in tqdm(range(count), desc="overlays", unit="img"):
        example = data.example("validation", index)
        prediction = np.full((example.image.height, example.image.width), 255, dtype=np.uint8)
        for segment in segmenter(example.image):
            prediction[np.asarray(segment["mask"]) > 0] = config.label2id[segment["label"]]
        image, (prediction_large, truth_large) = upscale_for_display(
            example.image, [prediction, example.labels], PANEL_MIN_SIDE
        )
        predicted = overlay_with_legend(image, prediction_large, config.id2label, config.palette, font_size=18)
        truth = overlay_with_legend(image, truth_large, config.id2label, config.palette, font_size=18)
        canvas = side_by_side([("prediction", predicted), ("ground truth", truth)])
        path = overlays_dir / f"{Path(example.file_name).stem}_prediction_vs_truth.png"
        tmp = path.with_name(f".{path.name}.tmp")
        canvas.save(tmp, format="PNG")
        tmp.replace(path)
        names = [
            [config.id2label[int(i)] for i in np.unique(labels) if int(i) in config.id2label]
            for labels in (prediction, example.labels)
        ]
        overlays.append((path, *names))

    print("[4/4] report", flush=True)
    rows = classes_present(eval_results, config.id2label)
    summary_lines = [
        f"mIoU {100 * eval_results['eval_mIoU']:.2f}%   mAcc {100 * eval_results['eval_mAcc']:.2f}%   "
        f"aAcc {100 * eval_results['eval_aAcc']:.2f}%",
        f"chance: {100 * chance['uniform']:.2f}% (uniform over the {chance['classes_present']} classes present), "
        f"{100 * chance['majority']:.2f}% (always the most frequent class)",
        f"validation: {args.num_validation} images, slide inference; training: {training_seconds:.0f} s on CPU",
    ]
    state = json.loads((model_dir / "trainer_state.json").read_text())
    logged = [(entry["step"], entry["loss"]) for entry in state["log_history"] if "loss" in entry]
    curve = loss_curve_svg([step for step, _ in logged], [loss for _, loss in logged])
    index = write_index_html(output, summary_lines, rows, curve, overlays, model_dir)

    print()
    print("=" * 78)
    print("\n".join(class_table_lines(rows)))
    print()
    print("\n".join(summary_lines))
    print(f"model folder: {shown(model_dir)} (README.md is its model card)")
    print(f"overlays (prediction | ground truth): {len(overlays)} in {shown(overlays_dir)}")
    print(f"report: {shown(index)}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
