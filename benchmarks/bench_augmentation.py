"""The training data pipeline, per CPU core: files on disk -> the collated batch, this package against mmseg 1.2.2.

    .venv/bin/python benchmarks/bench_augmentation.py                  # ADE- and Cityscapes-sized, 8 images each
    .venv/bin/python benchmarks/bench_augmentation.py --datasets ade20k --images 4 --repeats 2
    .venv/bin/python benchmarks/bench_augmentation.py --no-mmseg       # ours only (no .venv-mmseg needed)

Photographs: scikit-image's sample photos (astronaut, coffee, chelsea, rocket, ...), resized with PIL (bicubic) to
the ADE20K size (683x512, JPEG quality 90) and the Cityscapes size (2048x1024, PNG, as Cityscapes ships them). Their
annotations are synthetic but photo-shaped: each pixel's class is its RGB colour quantised to 4 levels per channel
(64 classes, regions follow the photo's edges), stored as 8-bit PNG: ADE values 1..64 (0 would be "other", removed by
reduce_zero_label), Cityscapes train ids 0..18 (the colour class mod 19).

Both sides decode the files and run the released config's training augmentation with its own defaults (ADE20K:
scale (2048, 512), crop 512, reduce_zero_label; Cityscapes: scale (2048, 1024), crop 768), then collate `--batch`
samples:
- ours: `PIL.Image.open` + `decode_image` (the data module's decode), the label PNG read as stored, ADE's zero-label
  reduction, `SetrTrainAugmentation.from_preset(...)` with a seeded generator per sample, `train_collate`;
- mmseg: the config's `train_pipeline` from `LoadImageFromFile` (cv2) and `LoadAnnotations` to `PackSegInputs`, then
  `pseudo_collate` and the model's `SegDataPreProcessor` (normalise, pad) in training mode (`mmseg_worker.py`).

Each side runs one process on one thread (torch and cv2 set to 1: images/s per core). A repeat runs each side once
over the same files, alternating; images/s is the best pass. The random draws differ between the sides (mmseg's
numpy global state vs our generators) but follow the same distributions, so over the passes both do the same work on
average; `--images` sets how many files a pass holds (the random scale ratio changes the work per image up to 4x).

`workers for N images/s` = ceil(N / ours per core): the DataLoader workers a GPU consuming N images/s needs, one core
each (the defaults of `setr train` / `setr train-loop` follow from it: see `training_dataloader_workers`).
"""

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MmsegWorker, add_torch_check_argument, format_table, print_report, spread  # noqa: E402

from transformers_setr.models.setr.image_processing_base_setr import decode_image  # noqa: E402
from transformers_setr.presets import PRESETS  # noqa: E402
from transformers_setr.training.augmentation import SetrTrainAugmentation  # noqa: E402
from transformers_setr.training.recipe import train_collate  # noqa: E402

DATASETS = {  # name -> (photo size W x H, image format, preset, mmseg config)
    "ade20k": ((683, 512), "jpg", "setr-pup-vit-large-ade20k-512", "setr_vit-l_pup_8xb2-160k_ade20k-512x512.py"),
    "cityscapes": (
        (2048, 1024), "png", "setr-pup-vit-large-cityscapes-768", "setr_vit-l_pup_8xb1-80k_cityscapes-768x768.py",
    ),
}  # fmt: skip
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "cat", "retina", "logo")
# Training rates the workers are sized for (images/s consumed by the GPUs of one machine).
GPU_RATES = {
    "seed recipe, 8 V100 x 2 images at ~1.5 steps/s (mmseg's ViT-L logs)": 24.0,
    "one H100, ViT-L bf16 (issue 25: tens of images/s)": 40.0,
    "8 H100": 320.0,
}


def write_photos(folder: Path, dataset: str, count: int) -> list[list[str]]:
    import skimage.data

    (width, height), extension, _, _ = DATASETS[dataset]
    files = []
    for index in range(count):
        photo = getattr(skimage.data, PHOTOS[index % len(PHOTOS)])()
        image = PIL.Image.fromarray(photo).convert("RGB").resize((width, height), PIL.Image.BICUBIC)
        if index >= len(PHOTOS):  # more files than photos: mirrored copies, so that no two files are the same
            image = image.transpose(PIL.Image.FLIP_LEFT_RIGHT)
        colours = np.asarray(image) // 64
        classes = colours[..., 0].astype(np.int32) * 16 + colours[..., 1] * 4 + colours[..., 2]
        labels = classes + 1 if dataset == "ade20k" else classes % 19
        image_path, label_path = folder / f"{dataset}_{index}.{extension}", folder / f"{dataset}_{index}_labels.png"
        image.save(image_path, quality=90) if extension == "jpg" else image.save(image_path)
        PIL.Image.fromarray(labels.astype(np.uint8)).save(label_path)
        files.append([str(image_path), str(label_path)])
    return files


def ours_pass(augmentation: SetrTrainAugmentation, files: list[list[str]], reduce_zero_label: bool, batch: int,
              seed: int) -> float:  # fmt: skip
    start = time.perf_counter()
    for first in range(0, len(files), batch):
        samples = []
        for offset, (image_path, label_path) in enumerate(files[first : first + batch]):
            image = decode_image(PIL.Image.open(image_path))
            labels = np.asarray(PIL.Image.open(label_path))
            if reduce_zero_label:  # mmseg's LoadAnnotations(reduce_zero_label=True): 0 -> 255, others - 1
                labels = labels - np.uint8(1)  # uint8 wraps 0 to 255
            generator = torch.Generator().manual_seed(seed * 100003 + first + offset)
            pixel_values, target = augmentation(image, labels, generator)
            samples.append({"pixel_values": pixel_values, "labels": target})
        train_collate(samples)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--images", type=int, default=8, help="files per pass")
    parser.add_argument("--batch", type=int, default=2, help="samples per collated batch (the seed's per GPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-mmseg", action="store_true", help="ours only")
    parser.add_argument("--mmseg-python", default=None)
    add_torch_check_argument(parser)
    args = parser.parse_args()
    for name in ("images", "batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    torch.set_num_threads(1)
    rows, worker_rows, mmseg_version = [], [], None
    worker = None if args.no_mmseg else MmsegWorker(args.mmseg_python, 1, args.allow_torch_mismatch)
    try:
        with tempfile.TemporaryDirectory(prefix="setr-bench-augmentation-") as folder:
            for dataset in args.datasets:
                size, extension, preset, config = DATASETS[dataset]
                files = write_photos(Path(folder), dataset, args.images)
                augmentation = SetrTrainAugmentation.from_preset(PRESETS[preset])
                times: dict[str, list[float]] = {"ours": [], "mmseg": []}
                print(f"[{dataset}] {len(files)} photos of {size[0]}x{size[1]} ({extension})", flush=True)
                for repeat in range(args.repeats):
                    times["ours"].append(ours_pass(augmentation, files, dataset == "ade20k", args.batch, repeat))
                    if worker is not None:
                        reply = worker.request(
                            op="augment", config=config, files=files, batch=args.batch, seed=repeat,
                            reduce_zero_label=dataset == "ade20k",
                        )  # fmt: skip
                        times["mmseg"].append(reply["seconds"])
                ours_rate = len(files) / min(times["ours"])
                row = [dataset, f"{size[0]}x{size[1]} {extension}", f"{ours_rate:.2f}", spread(times["ours"])]
                if worker is not None:
                    mmseg_rate = len(files) / min(times["mmseg"])
                    row += [f"{mmseg_rate:.2f}", spread(times["mmseg"]), f"{ours_rate / mmseg_rate:.2f}"]
                    mmseg_version = worker.version
                rows.append(row)
                worker_rows.append([dataset, *(str(math.ceil(rate / ours_rate)) for rate in GPU_RATES.values())])
    finally:
        if worker is not None:
            worker.close()
    headers = ["dataset", "photos", "ours images/s per core", "ours noise"]
    if worker is not None:
        headers += ["mmseg images/s per core", "mmseg noise", "ours / mmseg"]
    workers_table = format_table(
        ["dataset", *(f"workers for {rate:g} images/s ({name})" for name, rate in GPU_RATES.items())], worker_rows
    )
    notes = [
        f"{args.images} photos per pass (scikit-image's samples resized, synthetic photo-shaped annotations), "
        f"collated by {args.batch}, best of {args.repeats} passes, one process on one thread per side"
        + (f"; mmseg {mmseg_version} in .venv-mmseg." if mmseg_version else "; mmseg not run (--no-mmseg)."),
        "DataLoader workers needed (one core each) = ceil(images/s consumed / ours per core):\n\n" + workers_table,
    ]
    print_report("Training augmentation: files to the collated batch, per core", format_table(headers, rows), notes, 1)


if __name__ == "__main__":
    main()
