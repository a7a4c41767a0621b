"""Colour overlays of segmentation maps with a legend of the classes present."""

import math
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..models.setr.configuration_setr import IGNORE_INDEX
from ..models.setr.image_processing_base_setr import decode_image


def colorize(
    segmentation: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
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
    ignore_index: int = IGNORE_INDEX,
    font_size: int | None = None,
) -> Image.Image:
    """Blend the coloured segmentation over the image and append a legend of the classes present, by area.

    `font_size`: the legend's text height in pixels (None: PIL's small built-in bitmap font).
    """
    image = decode_image(image)
    segmentation = np.asarray(segmentation)
    if segmentation.shape != (image.height, image.width):
        raise ValueError(f"segmentation {segmentation.shape} does not match the image ({image.height}, {image.width})")
    colours = colorize(segmentation, palette, ignore_index)
    blended = (np.asarray(image, dtype=np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).round()
    blended_image = Image.fromarray(blended.astype(np.uint8))

    ids, counts = np.unique(segmentation[segmentation != ignore_index], return_counts=True)
    present = [int(i) for i in ids[np.argsort(-counts)]]
    font = ImageFont.load_default() if font_size is None else ImageFont.load_default(size=font_size)
    row = 16 if font_size is None else font_size + 8
    legend_width = 10 + max((int(font.getlength(f"{i}: {id2label.get(i, i)}")) for i in present), default=0) + row + 14
    canvas = Image.new("RGB", (image.width + legend_width, max(image.height, row * len(present) + 10)), "white")
    canvas.paste(blended_image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for position, class_id in enumerate(present):
        top = 5 + position * row
        colour = tuple(int(c) for c in palette[class_id]) if class_id < len(palette) else (0, 0, 0)
        draw.rectangle([image.width + 8, top, image.width + 8 + row - 4, top + row - 4], fill=colour, outline="black")
        draw.text(
            (image.width + row + 10, top), f"{class_id}: {id2label.get(class_id, class_id)}", fill="black", font=font
        )
    return canvas


def upscale_for_display(
    image: Image.Image, segmentations: Sequence[np.ndarray], min_side: int = 512
) -> tuple[Image.Image, list[np.ndarray]]:
    """Enlarge a small image and its label maps by one integer factor, nearest-neighbour, until both sides reach
    `min_side`: every class id stays exactly as predicted, and every source pixel becomes a block of equal size."""
    factor = max(1, math.ceil(min_side / min(image.height, image.width)))
    if factor == 1:
        return image, [np.asarray(segmentation) for segmentation in segmentations]
    enlarged = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    return enlarged, [np.asarray(s).repeat(factor, axis=0).repeat(factor, axis=1) for s in segmentations]
