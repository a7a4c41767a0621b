#!/usr/bin/env python3
"""The embedded main job: train and evaluate a small SETR end to end, offline, on CPU, in a few minutes.

1. Generates a synthetic dataset in the exact raw ADE20K layout (`ADEChallengeData2016/`: JPEG images, 8-bit PNG
   annotations with values 0..150, `objectInfo150.txt`), with structured, learnable scenes.
2. Trains a small SETR-Naive (the released ADE20K recipe's decoder, optimizer, schedule and augmentation, a reduced
   ViT encoder and crop) with the Hugging Face Trainer (`scripts/train.py`).
3. Evaluates it with the real protocol: keep-ratio resize to the test scale, sliding-window inference, logits
   resized to the original ground-truth resolution, mmsegmentation's dataset-level mIoU; prints mIoU next to the
   chance levels.
4. Saves a transformers folder (weights, config, image processor, model card with the measured mIoU).
5. Segments validation images through `pipeline("image-segmentation")` and writes colour overlays with a class
   legend (prediction | ground truth) to `<output>/overlays/`.

    python scripts/main_job.py [--output outputs/main-job] [--max_steps 600] [--seed 0]
"""

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

# A small encoder (4 layers, width 96) and 64×64 crops: a few minutes of CPU training; the rest is the ADE20K recipe.
TINY_ENCODER = (
    "hidden_size=96,num_hidden_layers=4,num_attention_heads=4,intermediate_size=192,out_indices=[0, 1, 2, 3],"
    "decoder_channels=64,auxiliary_channels=32"
)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "outputs" / "main-job")
    parser.add_argument("--max_steps", type=int, default=600)
    parser.add_argument("--num_train", type=int, default=200)
    parser.add_argument("--num_validation", type=int, default=50)
    parser.add_argument("--num_overlays", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers import pipeline

    import transformers_setr  # noqa: F401  (registers SETR with the Auto classes and the pipeline)
    from transformers_setr.data import load_segmentation_data
    from transformers_setr.synthetic import make_synthetic_ade20k
    from transformers_setr.training_script import main_trainer
    from transformers_setr.visualize import overlay_with_legend

    started = time.perf_counter()
    output = args.output.resolve()
    data_root = output / "data"
    model_dir = output / "model"
    overlays_dir = output / "overlays"
    shutil.rmtree(data_root, ignore_errors=True)
    shutil.rmtree(model_dir, ignore_errors=True)
    print(f"[1/5] synthetic ADE20K-layout dataset -> {data_root}", flush=True)
    ade_root = make_synthetic_ade20k(
        data_root,
        layout="raw",
        num_train=args.num_train,
        num_validation=args.num_validation,
        image_size=(96, 128),
        seed=args.seed,
    )

    print(f"[2/5] training a small SETR-Naive with the Trainer ({args.max_steps} steps)", flush=True)
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
        "--logging_steps", "50",
        "--dataloader_num_workers", "0",
        "--report_to", "none",
        "--seed", str(args.seed),
        "--use_cpu", "true",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    training_started = time.perf_counter()
    main_trainer(train_args)
    training_seconds = time.perf_counter() - training_started

    print("[3/5] evaluation (slide inference, original resolution, dataset-level mIoU)", flush=True)
    eval_results = json.loads((model_dir / "eval_results.json").read_text())
    data = load_segmentation_data(ade_root)
    histogram = np.zeros(256, dtype=np.int64)
    for row in data.splits["validation"]:
        histogram += np.bincount(data.decode(row).labels.ravel(), minlength=256)
    chance = chance_levels(histogram[:150])

    print(f"[4/5] model folder with its card -> {model_dir}", flush=True)
    print(f"[5/5] pipeline('image-segmentation') overlays -> {overlays_dir}", flush=True)
    overlays_dir.mkdir(parents=True, exist_ok=True)
    segmenter = pipeline("image-segmentation", model=str(model_dir))
    config = segmenter.model.config
    written = []
    for index in range(min(args.num_overlays, len(data.splits["validation"]))):
        example = data.example("validation", index)
        prediction = np.full((example.image.height, example.image.width), 255, dtype=np.uint8)
        for segment in segmenter(example.image):
            prediction[np.asarray(segment["mask"]) > 0] = config.label2id[segment["label"]]
        predicted = overlay_with_legend(example.image, prediction, config.id2label, config.palette)
        truth = overlay_with_legend(example.image, example.labels, config.id2label, config.palette)
        canvas = Image.new("RGB", (predicted.width + truth.width + 10, max(predicted.height, truth.height)), "white")
        canvas.paste(predicted, (0, 0))
        canvas.paste(truth, (predicted.width + 10, 0))
        path = overlays_dir / f"{Path(example.file_name).stem}_prediction_vs_truth.png"
        canvas.save(path)
        written.append(path)

    miou = eval_results["eval_mIoU"]
    print()
    print("=" * 78)
    print(
        f"mIoU {100 * miou:.2f}%   mAcc {100 * eval_results['eval_mAcc']:.2f}%   aAcc {100 * eval_results['eval_aAcc']:.2f}%"
    )
    print(
        f"chance: {100 * chance['uniform']:.2f}% (uniform over the {chance['classes_present']} classes present), "
        f"{100 * chance['majority']:.2f}% (always the most frequent class)"
    )
    print(f"validation: {args.num_validation} images, slide inference; training: {training_seconds:.0f} s on CPU")
    print(f"model folder: {model_dir} (README.md is its model card)")
    print(f"overlays (prediction | ground truth): {', '.join(p.name for p in written)} in {overlays_dir}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
