#!/usr/bin/env python3
"""Write a folder saved by an older revision of the package: a tiny SETR model and processor, with its logits (and,
with `--processor-outputs`, what both image processors made of a few awkward images), so that the tests can check
that such folders still load with the same logits and pixels, through the registered classes and with
`trust_remote_code` (the code files saved in the folder).

    # the flat 0.1 layout (before the package had rooms): tests/fixtures/pre-0.2-folder/
    git worktree add /tmp/setr-0.1 9fb6deb
    python scripts/make_layout_fixture.py --old-checkout /tmp/setr-0.1
    # main before the issue-22 redesign (woven fast path, the old image processors): tests/fixtures/pre-redesign-folder/
    git worktree add /tmp/setr-f6907dd f6907dd
    python scripts/make_layout_fixture.py --old-checkout /tmp/setr-f6907dd \
        --output tests/fixtures/pre-redesign-folder --processor-outputs

The model is built and saved by the OLD code (run in a subprocess with the old `src/` on the path).
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "tests" / "fixtures" / "pre-0.2-folder"

SAVE_WITH_OLD_CODE = r"""
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import transformers_setr
from transformers_setr import SetrConfig, SetrForSemanticSegmentation, SetrImageProcessorPil

assert Path(transformers_setr.__file__).resolve().is_relative_to(Path(sys.argv[2]).resolve()), "not the old checkout"
out = Path(sys.argv[1])
torch.manual_seed(0)
config = SetrConfig(
    hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=32,
    out_indices=[0, 1, 2, 3], decoder_type="pup", decoder_channels=16, auxiliary_channels=8, num_labels=5,
    inference_mode="slide", slide_crop_size=32, slide_stride=21,
)
model = SetrForSemanticSegmentation(config).eval()
with torch.no_grad():  # non-trivial BatchNorm statistics
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
model.save_pretrained(out)
SetrImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 64}).save_pretrained(out)
generator = torch.Generator().manual_seed(1)
pixel_values = torch.randn(1, 3, 40, 56, generator=generator)
with torch.no_grad():
    whole = model(pixel_values, inference_mode="whole").logits
    slide = model(pixel_values).logits
torch.save({"pixel_values": pixel_values, "whole": whole, "slide": slide}, out / "expected_logits.pt")
if sys.argv[3] == "processor-outputs":
    from transformers_setr import SetrImageProcessor

    # awkward inputs a processor rewrite could change: RGBA (alpha), grey, 16-bit grey, an odd size, a uint8 array
    rng = np.random.default_rng(2)
    images = {
        "rgba.png": Image.fromarray(rng.integers(0, 256, (37, 53, 4), dtype=np.uint8), "RGBA"),
        "grey.png": Image.fromarray(rng.integers(0, 256, (45, 31), dtype=np.uint8), "L"),
        "grey16.png": Image.fromarray(rng.integers(0, 65536, (29, 41), dtype=np.uint16)),
        "rgb.png": Image.fromarray(rng.integers(0, 256, (70, 33, 3), dtype=np.uint8), "RGB"),
    }
    (out / "images").mkdir()
    for name, image in images.items():
        image.save(out / "images" / name)
    outputs = {}
    for backend, processor in (("pil", SetrImageProcessorPil.from_pretrained(out)), ("torchvision", SetrImageProcessor.from_pretrained(out))):
        for name in sorted(images):
            try:
                outputs[f"{backend}/{name}"] = processor(Image.open(out / "images" / name), return_tensors="pt")["pixel_values"]
            except ValueError as error:  # refused (e.g. 16-bit): the refusal is the behaviour to keep
                outputs[f"{backend}/{name}"] = str(error)
        array = np.asarray(images["rgb.png"])
        outputs[f"{backend}/array"] = processor(array, return_tensors="pt")["pixel_values"]
    torch.save(outputs, out / "expected_pixel_values.pt")
print("saved", sorted(p.name for p in out.iterdir()))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-checkout", required=True, type=Path, help="a checkout of the flat 0.1 layout")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument(
        "--processor-outputs", action="store_true", help="also save what the processors make of images"
    )
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(args.old_checkout.resolve() / "src")}
    args.output.mkdir(parents=True, exist_ok=True)
    # Run from the output folder, so that the installed (new) package is not picked up from the current directory.
    subprocess.run(
        [
            sys.executable,
            "-c",
            SAVE_WITH_OLD_CODE,
            str(args.output.resolve()),
            str(args.old_checkout.resolve()),
            "processor-outputs" if args.processor_outputs else "",
        ],
        env=env,
        check=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
