"""Reading annotation files (and image cells): the stored label values of a mask, or the colours of a colour mask.

Masks are read unchanged (no mode conversion, no EXIF rotation), as mmsegmentation does. A cell is what a `datasets`
column of `Image(decode=False)` holds (`{"bytes", "path"}`), a path, or an already decoded PIL image.
"""

import io
import os
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DatasetFormatError

# Why JPEG masks are refused (after "<file>: a JPEG mask ..."), by the reader and by the folder loader.
JPEG_MASK_REFUSAL = (
    "JPEG is lossy, its compression turns the values along every edge into values of no class (or of other "
    "classes): save the masks as PNG (lossless)"
)


def cell_file_name(value: Any, fallback: str) -> str:
    """The file a cell refers to (its path; Parquet exports keep the base name), else `fallback`."""
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str | os.PathLike) else None
    return str(path) if path else fallback


def open_cell(value: Any, name: str, what: str) -> Image.Image:
    """Open an `Image(decode=False)` cell ({"bytes", "path"}), a path or an already decoded PIL image, fully read."""
    if isinstance(value, Image.Image):
        return value
    data, path = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (None, value)
    if data is not None:
        source = io.BytesIO(data)
    elif path:
        source = path
    else:
        raise DatasetFormatError(f"{name}: the {what} has neither bytes nor a path")
    try:
        image = Image.open(source)
        image.load()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:  # what Pillow raises on bad files
        raise DatasetFormatError(f"{name}: cannot read the {what}: {error}") from error
    return image


def open_mask(value: Any, name: str) -> Image.Image:
    """An annotation cell, opened; a JPEG mask is refused."""
    mask = open_cell(value, name, "annotation")
    if mask.format == "JPEG":
        raise DatasetFormatError(f"{name}: a JPEG mask; {JPEG_MASK_REFUSAL}")
    return mask


def read_colour_mask(value: Any, name: str) -> np.ndarray:
    """The colours of a colour mask as an (H, W) int32 array of 0xRRGGBB (P masks through their palette)."""
    mask = open_mask(value, name)
    if mask.mode not in ("RGB", "RGBA", "P"):
        raise DatasetFormatError(
            f"{name}: a mask of mode {mask.mode!r} (one channel), but id2label gives the classes' colours: colour "
            "masks are RGB (or drop the colours from id2label to read label values)"
        )
    rgb = np.asarray(mask.convert("RGB")).astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def colour_name(packed: int) -> str:
    """0xRRGGBB -> "(r, g, b)"."""
    return f"({packed >> 16 & 255}, {packed >> 8 & 255}, {packed & 255})"


def read_label_values(value: Any, name: str) -> np.ndarray:
    """The stored label values of an annotation as an (H, W) integer array (no mode conversion, no EXIF rotation)."""
    mask = open_mask(value, name)
    if mask.mode in ("L", "P", "I", "I;16", "I;16L", "I;16B"):  # P: the palette indices are the labels
        return np.asarray(mask)
    if mask.mode == "RGB":  # e.g. Cityscapes mirrors: label ids stored as R=G=B
        rgb = np.asarray(mask)
        unequal = (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 0] != rgb[..., 2])
        if unequal.any():
            y, x = (int(i[0]) for i in np.nonzero(unequal))
            raise DatasetFormatError(
                f"{name}: RGB annotation with unequal channels ({int(unequal.sum())} pixels, e.g. (x={x}, y={y}) = "
                f"{tuple(int(c) for c in rgb[y, x])}); only single-channel label maps or RGB ones with R=G=B are "
                'read as label values; for colour masks give each class its colour in id2label: {"0": {"name": '
                '"road", "color": [128, 64, 128]}, ...}'
            )
        return rgb[..., 0]
    raise DatasetFormatError(
        f"{name}: annotation of mode {mask.mode!r} is not a label map; expected a single-channel PNG (L, P, I;16) "
        "or an RGB one with R=G=B"
    )
