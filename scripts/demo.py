#!/usr/bin/env python3
"""A tour of the transformers-setr API on RANDOM weights (no download, runs offline on CPU).

It builds a SETR-PUP model with the released ADE20K architecture but a reduced encoder (so that it runs in
seconds), saves it with its image processor, reloads it through the Auto classes, segments a real photograph with
`pipeline("image-segmentation")` and writes the masks and a colour overlay. The weights are random, so the
segmentation is noise: this shows the plumbing, not the accuracy. Converted checkpoints and training come with the
converter and training scripts.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

import transformers_setr  # noqa: F401  (registers SETR with the Auto classes and the pipeline)
from transformers_setr import SetrConfig, SetrForSemanticSegmentation, SetrImageProcessor
from transformers_setr.label_tables import ADE20K_PALETTE, id2label_for
from transformers_setr.visualize import overlay_with_legend


def sample_photograph() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("outputs/demo"), help="where to write the results")
    parser.add_argument("--image", type=Path, help="an image to segment (default: a photograph from scikit-image)")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    print("SETR-PUP, ADE20K architecture (150 classes), encoder reduced to 4 layers of width 192; RANDOM weights.")
    config = SetrConfig(
        decoder_type="pup",
        hidden_size=192,
        num_hidden_layers=4,
        num_attention_heads=3,
        intermediate_size=768,
        out_indices=[0, 1, 2, 3],
        id2label=id2label_for("ade20k"),
        palette=[list(colour) for colour in ADE20K_PALETTE],
    )
    model = SetrForSemanticSegmentation(config).eval()
    processor = (
        SetrImageProcessor()
    )  # mmseg's ADE20K test pipeline: keep-ratio resize to (2048, 512), ImageNet mean/std
    folder = args.output / "setr-pup-random"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    print(
        f"saved model, processor and code (for trust_remote_code) to {folder}: {sorted(p.name for p in folder.iterdir())}"
    )

    model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    print(f"reloaded {type(model).__name__} and {type(processor).__name__} through the Auto classes")

    image = Image.open(args.image).convert("RGB") if args.image else sample_photograph()
    inputs = processor(images=image, return_tensors="pt")
    start = time.perf_counter()
    with torch.inference_mode():
        outputs = model(**inputs)
    print(
        f"image {image.width}x{image.height} -> pixel_values {tuple(inputs['pixel_values'].shape)} -> "
        f"logits {tuple(outputs.logits.shape)} in {time.perf_counter() - start:.2f} s"
    )
    segmentation = processor.post_process_semantic_segmentation(outputs, target_sizes=[(image.height, image.width)])[0]

    segmenter = pipeline("image-segmentation", model=model, image_processor=processor)
    results = segmenter(image)
    print(f"pipeline: {len(results)} masks at {results[0]['mask'].size}, e.g. {[r['label'] for r in results[:5]]}")
    for index, result in enumerate(results[:5]):
        result["mask"].save(args.output / f"mask_{index:02d}.png")

    overlay = overlay_with_legend(image, segmentation.numpy(), model.config.id2label, model.config.palette)
    overlay.save(args.output / "overlay.png")
    np.save(args.output / "segmentation.npy", segmentation.numpy())
    print(f"wrote {args.output / 'overlay.png'} and the first masks; the model is untrained, so they are noise.")


if __name__ == "__main__":
    main()
