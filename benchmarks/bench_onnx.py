#!/usr/bin/env python3
"""onnxruntime (CPU) against PyTorch eager on the same SETR weights, side by side in one process (issue 14).

The model is exported with `setr export-onnx`'s function (`transformers_setr.apps.onnx_export.export_onnx`) and run
through its session wrapper: the whole image, and slide (the windows cut and averaged outside the graph by the
model's own loop). Inputs are scikit-image photographs through the ADE20K processor (keep-ratio 512x2048): astronaut
-> 512x512 (one window), coffee -> 512x768 (two 512 windows, stride 341). The two runtimes alternate, fp32, batch 1.

    python benchmarks/bench_onnx.py                 # ViT-L/16 PUP, ADE20K's 150 classes (random weights)
    python benchmarks/bench_onnx.py --model small   # hidden 384, 12 layers (quick)
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, print_report, set_threads, spread  # noqa: E402

MODELS = {
    "vit-large": {},  # the released ADE20K SETR-PUP architecture (SetrConfig's defaults)
    "small": {
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 6,
        "intermediate_size": 1536,
        "out_indices": [5, 7, 9, 11],
        "decoder_channels": 128,
        "auxiliary_channels": 64,
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=tuple(MODELS), default="vit-large")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    threads = set_threads(args.threads)

    import torch
    from PIL import Image
    from skimage import data

    from transformers_setr import SetrConfig, SetrForSemanticSegmentation, SetrImageProcessorPil
    from transformers_setr.apps.onnx_export import OPSET, OnnxSetr, compare, export_onnx
    from transformers_setr.data.label_tables import id2label_for
    from transformers_setr.models.setr.fast_inference_setr import optimize_for_inference

    torch.manual_seed(0)
    config = SetrConfig(
        decoder_type="pup", id2label=id2label_for("ade20k"), inference_mode="slide", **MODELS[args.model]
    )
    model = optimize_for_inference(SetrForSemanticSegmentation(config))  # eager as `setr segment` runs it
    processor = SetrImageProcessorPil(size={"shortest_edge": 512, "longest_edge": 2048})
    photos = {"astronaut": data.astronaut(), "coffee": data.coffee()}
    inputs = {
        name: processor(images=Image.fromarray(array), return_tensors="pt")["pixel_values"]
        for name, array in photos.items()
    }
    with tempfile.TemporaryDirectory(prefix="setr-bench-onnx-") as tmp:
        start = time.perf_counter()
        path = export_onnx(model, Path(tmp) / "setr.onnx")
        export_s = time.perf_counter() - start
        session = OnnxSetr(path, threads=threads)
        rows = []
        cases = [("astronaut", "whole"), ("astronaut", "slide"), ("coffee", "slide")]
        for name, mode in cases:
            pixel_values = inputs[name]
            size = "x".join(map(str, pixel_values.shape[-2:]))

            def eager(pixel_values=pixel_values, mode=mode):
                with torch.inference_mode():
                    return model(pixel_values=pixel_values, inference_mode=mode).logits

            def onnx(pixel_values=pixel_values, mode=mode):
                return session(pixel_values, mode)

            eager(), onnx()  # warm-up (caches, allocator, session arenas)
            times = {"eager": [], "onnx": []}
            for _ in range(args.repeats):
                for label, function in (("eager", eager), ("onnx", onnx)):
                    start = time.perf_counter()
                    result = function()
                    times[label].append(time.perf_counter() - start)
                    if label == "eager":
                        reference = result
                    else:
                        agreement = compare(reference, result)
            eager_s, onnx_s = statistics.median(times["eager"]), statistics.median(times["onnx"])
            rows.append(
                [
                    f"{name} {size}",
                    mode,
                    f"{eager_s:.3f}",
                    f"{onnx_s:.3f}",
                    f"{onnx_s / eager_s:.2f}",
                    f"{spread(times['eager'])} / {spread(times['onnx'])}",
                    f"{agreement['max_abs_diff']:.1e}",
                    f"{100 * agreement['argmax_agreement']:.3f}%",
                ]
            )
    headers = ["photo, input", "mode", "PyTorch s", "onnxruntime s", "ort / torch", "spread", "max |Δlogit|", "argmax"]
    import onnxruntime

    print_report(
        f"onnxruntime vs PyTorch eager, {args.model} SETR-PUP, 150 classes, fp32, batch 1",
        format_table(headers, rows),
        notes=[
            f"Median of {args.repeats} alternating runs after one warm-up; spread = max/min per runtime. Export "
            f"(torch.onnx dynamo, opset {OPSET}) took {export_s:.0f} s. onnxruntime {onnxruntime.__version__}, "
            f"CPUExecutionProvider, {threads} intra-op threads; slide windows cut and averaged by the model's loop "
            "around the session."
        ],
        threads=threads,
    )


if __name__ == "__main__":
    main()
