"""Colour overlays of segmentation maps with a legend of the classes present."""

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def colorize(segmentation: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; ignored or unknown ids are black."""
    segmentation = np.asarray(segmentation)
    lookup = np.zeros((max(len(palette), ignore_index + 1, int(segmentation.max(initial=0)) + 1), 3), dtype=np.uint8)
    lookup[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    lookup[ignore_index] = 0
    return lookup[segmentation]


def overlay_with_legend(
    image: Image.Image,
    segmentation: np.ndarray,
    id2label: Mapping[int, str],
    palette: Sequence[Sequence[int]],
    alpha: float = 0.5,
    ignore_index: int = 255,
) -> Image.Image:
    """Blend the coloured segmentation over the image and append a legend of the classes present, by area."""
    image = image.convert("RGB")
    segmentation = np.asarray(segmentation)
    if segmentation.shape != (image.height, image.width):
        raise ValueError(f"segmentation {segmentation.shape} does not match the image ({image.height}, {image.width})")
    colours = colorize(segmentation, palette, ignore_index)
    blended = (np.asarray(image, dtype=np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).round()
    blended = Image.fromarray(blended.astype(np.uint8))

    ids, counts = np.unique(segmentation[segmentation != ignore_index], return_counts=True)
    present = [int(i) for i in ids[np.argsort(-counts)]]
    font = ImageFont.load_default()
    row = 16
    legend_width = 10 + max((int(font.getlength(f"{i}: {id2label.get(i, i)}")) for i in present), default=0) + 30
    canvas = Image.new("RGB", (image.width + legend_width, max(image.height, row * len(present) + 10)), "white")
    canvas.paste(blended, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for position, class_id in enumerate(present):
        top = 5 + position * row
        colour = tuple(int(c) for c in palette[class_id]) if class_id < len(palette) else (0, 0, 0)
        draw.rectangle([image.width + 8, top, image.width + 20, top + 12], fill=colour, outline="black")
        draw.text((image.width + 26, top), f"{class_id}: {id2label.get(class_id, class_id)}", fill="black", font=font)
    return canvas
