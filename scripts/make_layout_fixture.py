#!/usr/bin/env python3
"""Write `tests/fixtures/pre-0.2-folder/`: a tiny SETR model and processor saved by the flat 0.1 package (before
the package had rooms), with its logits, so that the tests can check that such folders still load, with the same
logits, both through the registered classes and with `trust_remote_code` (the code files saved in the folder).

    git worktree add /tmp/setr-0.1 9fb6deb    # the last revision of the flat layout
    python scripts/make_layout_fixture.py --old-checkout /tmp/setr-0.1

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

import torch

import transformers_setr
from transformers_setr import SetrConfig, SetrForSemanticSegmentation, SetrImageProcessorPil

assert Path(transformers_setr.__file__).parent.name == "transformers_setr"
assert (Path(transformers_setr.__file__).parent / "modeling_setr.py").is_file(), "not the flat 0.1 layout"
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
print("saved", sorted(p.name for p in out.iterdir()))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-checkout", required=True, type=Path, help="a checkout of the flat 0.1 layout")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(args.old_checkout.resolve() / "src")}
    args.output.mkdir(parents=True, exist_ok=True)
    # Run from the output folder, so that the installed (new) package is not picked up from the current directory.
    subprocess.run([sys.executable, "-c", SAVE_WITH_OLD_CODE, str(args.output.resolve())], env=env, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
