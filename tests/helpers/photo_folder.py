"""Real photographs (scikit-image's data) and a small saved SETR for the tools' tests (`setr segment`, the demo,
the ONNX export)."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from transformers_setr import SetrForSemanticSegmentation, SetrImageProcessorPil

from conftest import randomise_batch_norm, tiny_config

CLASS_NAMES = ("wall", "sky", "tree", "person", "road", "car")


def save_tiny_model(
    folder: Path,
    decoder_type: str = "pup",
    inference_mode: str = "slide",
    seed: int = 0,
    class_names: tuple[str, ...] = CLASS_NAMES,
):
    """A tiny random SETR (64x64 training crop, 64/43 slide windows, six named classes, or `class_names`: one name
    makes a binary model) and a processor whose test scale is (short 64, long 256): saved as `save_pretrained` writes
    a released model."""
    config = tiny_config(
        decoder_type,
        id2label=dict(enumerate(class_names)),
        inference_mode=inference_mode,
        slide_crop_size=64,
        slide_stride=43,
    )
    model = SetrForSemanticSegmentation(config).eval()
    randomise_batch_norm(model, seed)
    # He-scaled weights (the 0.02 init gives one class everywhere), so that several classes appear in each photograph.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0, (2 / parameter[0].numel()) ** 0.5, generator=generator)
    model.save_pretrained(folder)
    processor = SetrImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 256})
    processor.save_pretrained(folder)
    return model, processor


def photographs() -> dict[str, Image.Image]:
    """Real photographs of mixed sizes and modes: RGB, grey (camera) and RGBA (coffee with an alpha gradient)."""
    from skimage import data

    coffee = Image.fromarray(data.coffee()).convert("RGBA")
    alpha = np.tile(np.linspace(60, 255, coffee.width, dtype=np.uint8), (coffee.height, 1))
    coffee.putalpha(Image.fromarray(alpha))
    return {
        "astronaut.jpg": Image.fromarray(data.astronaut()),  # 512x512 RGB
        "camera.png": Image.fromarray(data.camera()),  # 512x512 grey (L)
        "coffee.png": coffee,  # 600x400 RGBA
        "chelsea.jpg": Image.fromarray(data.chelsea()),  # 451x300 RGB
    }


def write_photo_folder(folder: Path, corrupt: bool = True) -> dict[str, Image.Image]:
    """The photographs as files (plus, with `corrupt`, a truncated JPEG and a text file that is not an image)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = photographs()
    for name, image in images.items():
        image.save(folder / name)
    if corrupt:
        data = (folder / "astronaut.jpg").read_bytes()
        (folder / "broken.jpg").write_bytes(data[: len(data) // 3])  # a download cut short
        (folder / "notes.txt").write_text("not an image\n")
    return images
