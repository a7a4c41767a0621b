#!/usr/bin/env python3
"""Peak memory of `setr segment --mode slide` on a very large photograph (issue 14).

Builds a small random SETR with ADE20K's 150 classes, its released test protocol (keep-ratio resize to 512x2048,
slide 512/341) and processor, writes scikit-image's astronaut enlarged to SIDE x SIDE as a JPEG, runs
`scripts/segment.py` on it in a subprocess and prints the child's peak RSS, its time, and what holding the full-size
logits would have needed.

    python benchmarks/segment_memory.py [--side 8000] [--save_confidence]
"""

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=8000)
    parser.add_argument("--save_confidence", action="store_true", help="also write the confidence map")
    args = parser.parse_args()

    import numpy as np
    from PIL import Image
    from skimage import data

    from transformers_setr import SetrConfig, SetrForSemanticSegmentation, SetrImageProcessorPil
    from transformers_setr.data.label_tables import id2label_for

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = SetrConfig(
            decoder_type="pup",
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=128,
            out_indices=[0, 1, 2, 3],
            decoder_channels=32,
            auxiliary_channels=16,
            image_size=512,
            id2label=id2label_for("ade20k"),
            inference_mode="slide",
            slide_crop_size=512,
            slide_stride=341,
        )
        SetrForSemanticSegmentation(config).eval().save_pretrained(tmp / "model")
        SetrImageProcessorPil(size={"shortest_edge": 512, "longest_edge": 2048}).save_pretrained(tmp / "model")
        photo = Image.fromarray(data.astronaut()).resize((args.side, args.side), Image.Resampling.BILINEAR)
        photo.save(tmp / "large.jpg", quality=90)
        del photo
        command = [
            sys.executable,
            str(ROOT / "scripts" / "segment.py"),
            str(tmp / "large.jpg"),
            "--model",
            str(tmp / "model"),
            "--mode",
            "slide",
            "--output",
            str(tmp / "out"),
            *(["--save_confidence"] if args.save_confidence else []),
        ]
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
        if result.returncode:
            raise SystemExit(f"segment failed ({result.returncode}): {result.stderr[-2000:]}")
        labels = np.asarray(Image.open(tmp / "out" / "labels" / "large.png"))
        overlay = Image.open(tmp / "out" / "overlays" / "large.png")
        full_logits = 150 * args.side * args.side * 4 / 2**30
        print(
            f"photo {args.side}x{args.side} (JPEG), model: random SETR-PUP, hidden 64, 4 layers, 150 classes, "
            f"slide 512/341 at the 512x2048 test scale"
        )
        print(
            f"label map {labels.shape[1]}x{labels.shape[0]} {labels.dtype}, overlay {overlay.width}x{overlay.height}"
        )
        if args.save_confidence:
            confidence = Image.open(tmp / "out" / "confidence" / "large.png")
            print(f"confidence map {confidence.width}x{confidence.height} {confidence.mode}")
        print(f"peak RSS of the segment process: {peak:.2f} GiB; wall time {elapsed:.1f} s")
        print(f"full-resolution float32 logits would be {full_logits:.1f} GiB")


if __name__ == "__main__":
    main()
