"""`setr segment`: segment images, folders, globs or URLs with a SETR model and write, per image, the label map
(`labels/<name>.png`, class ids as pixel values), a colour overlay with a legend (`overlays/<name>.png`), the
per-class pixel shares (`classes/<name>.json`), and an `index.html` showing every overlay with its classes. With
`--save_confidence`, also the per-pixel confidence (`confidence/<name>.png`, see `confidence_map_image`).

    setr segment photos/ --model converted/setr-pup-ade20k --output segmented/
    python scripts/segment.py 'photos/*.jpg' https://example.com/street.jpg --model DIR --mode slide

Labels follow SETR's evaluation protocol (`transformers_setr.evaluation`): keep-ratio resize by the model's image
processor, the chosen inference mode, logits resized bilinearly to the original size, argmax (a binary model, one logit
channel: background / its class by the logit's sign). The last resize is done a few classes at a time, so a very large
photo never holds num_labels x H x W logits (150 x 8000 x 8000 float32 would be 38 GB); the confidence is accumulated
in the same pass. Every file is written to a temporary name and renamed; an unreadable file is reported and skipped,
and the exit status is 1 when any image failed.
"""

import argparse
import contextlib
import dataclasses
import glob
import io
import json
import os
import sys
import time
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ..data.label_tables import generate_palette
from ..files import save_json_atomically, write_bytes_atomically
from ..inference.predict import INFERENCE_MODES, predict_ms_flip_probabilities
from ..inference.visualize import overlay_with_legend
from ..models.setr.fast_inference_setr import optimize_for_inference
from ..models.setr.image_processing_base_setr import (
    UnsupportedImageError,
    class_probabilities,
    confidence_from_probabilities,
    decode_image,
    labels_from_scores,
)
from . import OneLineArgumentParser
from .segment_shards import (
    SUMMARY,
    ProcessGroupError,
    Ranks,
    manifest_part,
    merge_manifests,
    remove_stale_temporaries,
    start_process_group,
    write_index_pages,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The largest full-resolution logits block held at once (a few classes at a time beyond it).
MAX_LOGITS_BYTES = 256 * 2**20
# Overlays are for looking at: larger photos are shown at this longest side (the label map keeps full resolution).
DEFAULT_OVERLAY_MAX_SIDE = 2048
URL_TIMEOUT_S = 30
OUTPUT_FOLDERS = ("labels", "overlays", "classes", "confidence")
# The confidence map's PNG holds round(p * CONFIDENCE_SCALE) in 16 bits: p to within 1 / 131070.
CONFIDENCE_SCALE = 65535


class InputError(ValueError):
    """An image that cannot be segmented (unreadable, unsupported, too large for the mode); it is skipped."""


@dataclass(frozen=True)
class SegmentOptions:
    """What `setr segment` does with each image, on either engine (its flags of the same names): the protocol
    (`mode`, None: the model's), autocast `dtype`, `skip_existing`, `save_confidence`, and the overlay."""

    mode: str | None = None
    dtype: str = "float32"
    skip_existing: bool = False
    save_confidence: bool = False
    alpha: float = 0.5  # the overlay's opacity of the colours
    side_by_side: bool = False  # the photo next to its overlay
    overlay_max_side: int = DEFAULT_OVERLAY_MAX_SIDE

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "SegmentOptions":
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})


# ----------------------------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class ImageSource:
    """One image to segment: where it comes from (`location`, a path or URL as given) and its output name."""

    location: str
    name: str  # output name without extension, relative to the output folders ("sub/photo")
    is_url: bool = False


def is_url(text: str) -> bool:
    return urllib.parse.urlsplit(text).scheme in ("http", "https")


def image_extensions() -> set[str]:
    return {extension.lower() for extension in Image.registered_extensions()}


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder)


def expand_inputs(
    inputs: Sequence[str], output: Path | None = None
) -> tuple[list[ImageSource], list[tuple[str, str]]]:
    """The images named by `inputs` (files, folders searched recursively for image files, globs, URLs), in order,
    each once, with unique output names; and (input, problem) for each input that names nothing.

    Inside folders only files with an image extension are taken (a README or `.DS_Store` is not an image the user
    asked for); a file named explicitly is tried whatever its extension. The output folder is never read as input.
    """
    extensions = image_extensions()
    output = output.resolve() if output is not None else None
    found: list[tuple[str, str, bool]] = []  # (location, name, is_url)
    problems = []
    for text in inputs:
        if is_url(text):
            stem = Path(urllib.parse.unquote(urllib.parse.urlsplit(text).path)).stem or "image"
            found.append((text, stem, True))
            continue
        path = Path(text).expanduser()
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in extensions
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and not _inside(p, output)
            )
            found += [(str(p), str(p.relative_to(path).with_suffix("")), False) for p in files]
            if not files:
                problems.append((text, "no image files in this folder"))
        elif path.is_file():
            found.append((str(path), path.stem, False))
        elif glob.has_magic(text):
            files = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
            files = [p for p in files if p.is_file() and not _inside(p, output)]
            found += [(str(p), p.stem, False) for p in files]
            if not files:
                problems.append((text, "no file matches this pattern"))
        else:
            problems.append((text, "no such file or folder"))
    sources, seen, names = [], set(), set()
    for location, name, url in found:
        key = location if url else str(Path(location).resolve())
        if key in seen:
            continue
        seen.add(key)
        unique, counter = name, 2
        while unique.lower() in names:  # case-insensitive: the outputs may land on a case-insensitive disk
            unique, counter = f"{name}-{counter}", counter + 1
        names.add(unique.lower())
        sources.append(ImageSource(location, unique, url))
    return sources, problems


def load_image(source: ImageSource, data: bytes | None = None) -> Image.Image:
    """The image through the processors' `decode_image` (8-bit RGB, upright, transparency onto white, as in training);
    `InputError` naming the problem otherwise. With `data`, the image is those encoded bytes (`source` names it)."""
    try:
        if data is not None:
            return decode_image(io.BytesIO(data))
        if not source.is_url:
            return decode_image(source.location)
        request = urllib.request.Request(source.location, headers={"User-Agent": "transformers-setr"})
        with urllib.request.urlopen(request, timeout=URL_TIMEOUT_S) as response:
            return decode_image(io.BytesIO(response.read()))
    except UnsupportedImageError as error:
        raise InputError(str(error)) from None
    except UnidentifiedImageError:
        raise InputError("not an image file (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as error:
        raise InputError(f"too large to decode safely ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data, network errors
        raise InputError(f"cannot be read: {error}") from None


# ----------------------------------------------------------------------------------------------------------------
# The model and the label maps


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def load_model(model_name: str, device: torch.device | str = "cpu"):
    """(model in eval mode on `device`, its image processor) from a folder or a Hub id; `ValueError` naming the
    problem when either cannot be loaded."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    import transformers_setr  # noqa: F401  (registers SETR with the Auto classes)

    path = Path(model_name).expanduser()
    if not path.exists() and (path.is_absolute() or model_name.startswith((".", "~")) or model_name.count("/") > 1):
        raise ValueError(f"--model {model_name}: cannot load a model (no such folder)")
    if path.exists() and not path.is_dir():
        raise ValueError(f"--model {model_name}: cannot load a model (a file; give the saved model's folder)")
    try:
        model = AutoModelForSemanticSegmentation.from_pretrained(model_name)
    except (OSError, ValueError, KeyError) as error:
        where = "the folder" if path.is_dir() else "not a folder here, and as a Hub id"
        detail = " ".join(str(error).split())[:300]
        raise ValueError(f"--model {model_name}: cannot load a model ({where}: {detail})") from None
    if model.config.model_type != "setr":
        raise ValueError(f"--model {model_name}: a {model.config.model_type!r} model, not SETR")
    try:
        processor = AutoImageProcessor.from_pretrained(model_name)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"--model {model_name}: no image processor (preprocessor_config.json) next to the weights; it sets the "
            f"test scale ({' '.join(str(error).split())[:200]})"
        ) from None
    return optimize_for_inference(model.to(device)), processor


def palette_of(config) -> list[tuple[int, int, int]]:
    """A colour for each predicted class (`config.prediction_id2label`): the model's palette (the dataset's, for
    converted checkpoints), else the generated one of custom classes. A binary model's one colour is its class's,
    after the generated background colour."""
    num_classes = len(config.prediction_id2label)
    generated = list(generate_palette(num_classes))
    if config.palette is not None and len(config.palette) == config.num_labels:
        own = [(int(red), int(green), int(blue)) for red, green, blue in config.palette]
        return generated[:1] + own if config.is_binary else own
    return generated


def autocast_context(device: torch.device, dtype: torch.dtype):
    """float32: the model as it is; bfloat16/float16: autocast (the classifier and the window averaging stay in
    float32, see `modeling_setr.classify`)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def upsampled_argmax(
    logits: torch.Tensor, output_size: tuple[int, int], max_bytes: int = MAX_LOGITS_BYTES
) -> torch.Tensor:
    """(H, W) class ids of (1, C, h, w) logits resized bilinearly (align_corners=False) to `output_size`, in bounded
    memory: `upsampled_prediction` without the confidence."""
    return upsampled_prediction(logits, output_size, max_bytes)[0]


def upsampled_prediction(
    logits: torch.Tensor, output_size: tuple[int, int], max_bytes: int = MAX_LOGITS_BYTES, confidence: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(H, W) class ids of (1, C, h, w) logits resized bilinearly (align_corners=False) to `output_size`, and with
    `confidence` the (H, W) float32 probability of the predicted class, a few channels at a time so that at most about
    `max_bytes` of full-resolution logits exist at once.

    Bilinear resizing treats channels independently, so each channel is computed exactly as in one call over all
    of them; the running maximum keeps the first class on ties, as `argmax` does. The labels are therefore those of
    `labels_from_scores(F.interpolate(logits, output_size))`, bit for bit (int64 when that fits in `max_bytes`, else
    int32); a binary model's single channel is thresholded at 0. The confidence is the largest softmax probability of
    those resized logits, `confidence_from_probabilities(class_probabilities(...))`: when the channels do not fit at
    once it is accumulated in the same pass as 1 / sum_c exp(logit_c - running max) (the online softmax), equal to it
    up to float rounding.
    """
    height, width = output_size
    channels = logits.shape[1]
    # With the confidence, the probabilities of the block exist beside its logits: half as many channels at a time.
    chunk = max(1, max_bytes // (height * width * logits.element_size() * (2 if confidence else 1)))
    if channels == 1 or chunk >= channels:
        if tuple(logits.shape[-2:]) != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        labels = labels_from_scores(logits, dim=1)[0]
        if not confidence:
            return labels, None
        return labels, confidence_from_probabilities(class_probabilities(logits.float(), dim=1), dim=1)[0]
    best: torch.Tensor | None = None
    labels = torch.zeros((height, width), dtype=torch.int32, device=logits.device)
    better = torch.empty((height, width), dtype=torch.bool, device=logits.device)
    total = torch.ones((height, width), dtype=torch.float32, device=logits.device) if confidence else None
    for start in range(0, channels, chunk):
        part = logits[:, start : start + chunk]
        if tuple(part.shape[-2:]) != (height, width):
            part = F.interpolate(part, size=(height, width), mode="bilinear", align_corners=False)
        # One channel at a time, in place: a reduction over the channels of a full-size block is several times
        # slower on CPU than these element-wise passes.
        for offset, channel in enumerate(part[0]):
            if best is None:
                best = channel.clone()
                continue
            torch.gt(channel, best, out=better)  # strictly: an earlier class keeps a tie
            if total is not None:
                # sum_c exp(logit_c - max) with a moving max: exp(-|channel - best|) scales the old sum when the
                # channel is the new max, else it is the channel's own term.
                factor = (channel - best).abs_().neg_().exp_()
                total = torch.where(better, total * factor + 1, total + factor)
            torch.maximum(best, channel, out=best)
            labels.masked_fill_(better, start + offset)
        del part
    return labels, (total.reciprocal_() if total is not None else None)


@overload
def predict_label_maps(
    model,
    processor,
    images: Sequence[Image.Image],
    mode: str,
    dtype: torch.dtype = ...,
    confidence: Literal[False] = ...,
) -> list[np.ndarray]: ...
@overload
def predict_label_maps(
    model, processor, images: Sequence[Image.Image], mode: str, dtype: torch.dtype = ..., *, confidence: Literal[True]
) -> list[tuple[np.ndarray, np.ndarray]]: ...
@overload
def predict_label_maps(
    model, processor, images: Sequence[Image.Image], mode: str, dtype: torch.dtype = ..., *, confidence: bool
) -> list[np.ndarray] | list[tuple[np.ndarray, np.ndarray]]: ...
@torch.inference_mode()
def predict_label_maps(
    model,
    processor,
    images: Sequence[Image.Image],
    mode: str,
    dtype: torch.dtype = torch.float32,
    confidence: bool = False,
) -> list[np.ndarray] | list[tuple[np.ndarray, np.ndarray]]:
    """(H, W) class ids for each image, with SETR's evaluation protocol (`evaluation.predict_labels`); images of
    one processed size run through the model together (`whole` and `slide`). With `confidence`, (class ids, float32
    probability of the predicted class) for each image: the largest of the probabilities whose argmax gave the label.

    For `whole` and `slide` the logits go through mmseg's two bilinear steps (decoder output -> network input ->
    original size) with the last one in bounded memory (`upsampled_prediction`), which gives `predict_labels`' labels;
    the confidence is the softmax of those logits (slide: of the window logits the model averaged). `ms_flip` averages
    the views' probabilities at full resolution (`predict_ms_flip_probabilities`, the labels' own), so it refuses
    images whose probabilities would not fit in `MAX_LOGITS_BYTES` x 16.
    """
    if mode not in INFERENCE_MODES:
        raise ValueError(f"mode must be one of {INFERENCE_MODES}, got {mode!r}")
    device = next(model.parameters()).device
    num_labels = model.config.num_labels
    results: list[Any] = []
    if mode == "ms_flip":
        for image in images:
            if num_labels * image.height * image.width * 4 > MAX_LOGITS_BYTES * 16:
                raise InputError(
                    f"{image.width}x{image.height} is too large for ms_flip (it averages {num_labels} full-size "
                    "probability maps); use --mode slide or whole"
                )
            with autocast_context(device, dtype):
                probabilities = predict_ms_flip_probabilities(model, image, processor, (image.height, image.width))
            labels = labels_from_scores(probabilities, dim=0, probabilities=True).cpu().numpy()
            if confidence:
                results.append((labels, confidence_from_probabilities(probabilities, dim=0).float().cpu().numpy()))
            else:
                results.append(labels)
        return results
    pixel_values = [processor(images=image, return_tensors="pt")["pixel_values"][0] for image in images]
    if len({tuple(p.shape) for p in pixel_values}) > 1:
        raise ValueError("predict_label_maps batches images of one processed size; group them first")
    batch = torch.stack(pixel_values).to(device)
    with autocast_context(device, dtype):
        logits = model(pixel_values=batch, inference_mode=mode).logits
    logits = logits.float()
    input_size = tuple(batch.shape[-2:])
    if tuple(logits.shape[-2:]) != input_size:
        logits = F.interpolate(logits, size=input_size, mode="bilinear", align_corners=False)
    for i, image in enumerate(images):
        label_map, probability = upsampled_prediction(
            logits[i : i + 1], (image.height, image.width), confidence=confidence
        )
        if probability is not None:
            results.append((label_map.cpu().numpy(), probability.cpu().numpy()))
        else:
            results.append(label_map.cpu().numpy())
    return results


def class_shares(labels: np.ndarray, id2label: dict[int, str]) -> list[dict[str, Any]]:
    """The classes present, by decreasing area: id, label, pixel count and share of the image."""
    counts = np.bincount(labels.ravel(), minlength=len(id2label))
    total = labels.size
    order = np.argsort(-counts, kind="stable")
    return [
        {"id": int(i), "label": id2label.get(int(i), str(i)), "pixels": int(counts[i]), "share": counts[i] / total}
        for i in order
        if counts[i]
    ]


# ----------------------------------------------------------------------------------------------------------------
# Outputs


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def label_map_image(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """Palette-mode PNG whose pixel values are the class ids (coloured by the palette in viewers); 16-bit grey for
    more than 256 classes."""
    if len(palette) > 256:
        return Image.fromarray(labels.astype(np.uint16))
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = [c for colour in palette for c in colour]
    image.putpalette(flat + [0] * (768 - len(flat)))
    return image


def confidence_map_image(confidence: np.ndarray) -> Image.Image:
    """The confidence map as a 16-bit greyscale PNG: pixel value round(p * 65535) for the probability p of the
    predicted class (read it back as `value / 65535`)."""
    scaled = np.rint(np.clip(confidence, 0.0, 1.0) * CONFIDENCE_SCALE).astype(np.uint16)
    return Image.fromarray(scaled)


def fit_for_display(image: Image.Image, labels: np.ndarray, max_side: int) -> tuple[Image.Image, np.ndarray]:
    """Shrink a photo larger than `max_side` (bilinear) and its label map (nearest) for the overlay."""
    scale = max_side / max(image.width, image.height)
    if scale >= 1:
        return image, labels
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    small_labels = Image.fromarray(labels.astype(np.int32)).resize(size, Image.Resampling.NEAREST)
    return image.resize(size, Image.Resampling.BILINEAR), np.asarray(small_labels).astype(labels.dtype)


def legend_font_size(image: Image.Image) -> int:
    return int(min(40, max(12, min(image.width, image.height) / 32)))


def render_overlay(image: Image.Image, labels: np.ndarray, config, options: SegmentOptions) -> Image.Image:
    """`visualize.overlay_with_legend` (the colours of the model's classes over the photo, with a legend of those
    present) at most `options.overlay_max_side` large, optionally right of the photo itself."""
    image, labels = fit_for_display(image, labels, options.overlay_max_side)
    font_size = legend_font_size(image)
    overlay = overlay_with_legend(
        image, labels, config.prediction_id2label, palette_of(config), options.alpha, font_size=font_size
    )
    if not options.side_by_side:
        return overlay
    gap = 16
    canvas = Image.new("RGB", (image.width + gap + overlay.width, overlay.height), "white")
    canvas.paste(image, (0, 0))
    canvas.paste(overlay, (image.width + gap, 0))
    return canvas


@dataclass
class Outputs:
    folder: Path
    confidence: bool = False  # also the confidence maps (`--save_confidence`)

    def paths(self, name: str) -> dict[str, Path]:
        paths = {
            "labels": self.folder / "labels" / f"{name}.png",
            "overlay": self.folder / "overlays" / f"{name}.png",
        }
        if self.confidence:
            paths["confidence"] = self.folder / "confidence" / f"{name}.png"
        paths["classes"] = self.folder / "classes" / f"{name}.json"  # last: written last, it marks the image done
        return paths

    def complete(self, name: str) -> bool:
        return self.existing_record(name) is not None

    def existing_record(self, name: str) -> dict[str, Any] | None:
        """The record of an image segmented earlier into this folder, or None when it must be (re)done: some output
        is missing, or the class file is not this command's record of this image (each file is renamed into place
        whole, the class file last, so an interrupted image has none)."""
        paths = self.paths(name)
        if not all(path.is_file() for path in paths.values()):
            return None
        try:
            record = json.loads(paths["classes"].read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("name") != name or not isinstance(record.get("classes"), list):
            return None
        return record


def save_outputs(
    outputs: Outputs,
    source: ImageSource,
    image: Image.Image,
    labels: np.ndarray,
    config,
    options: SegmentOptions,
    *,
    model_name: str,
    confidence: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write the label map, the overlay, the confidence map (when `outputs.confidence`) and the class shares of one
    image (each atomically, the JSON last: it marks the image as done); returns the JSON record. `options.mode` is
    the mode the image was segmented with."""
    id2label = config.prediction_id2label
    paths = outputs.paths(source.name)
    write_bytes_atomically(paths["labels"], png_bytes(label_map_image(labels, palette_of(config))))
    write_bytes_atomically(paths["overlay"], png_bytes(render_overlay(image, labels, config, options)))
    if outputs.confidence:
        if confidence is None:
            raise ValueError("the outputs include confidence maps, but no confidence was computed")
        write_bytes_atomically(paths["confidence"], png_bytes(confidence_map_image(confidence)))
    record = {
        "source": source.location,
        "name": source.name,
        "width": image.width,
        "height": image.height,
        "model": model_name,
        "mode": options.mode,
        "labels": paths["labels"].relative_to(outputs.folder).as_posix(),
        "overlay": paths["overlay"].relative_to(outputs.folder).as_posix(),
        "classes": class_shares(labels, id2label),
    }
    if outputs.confidence:
        record["confidence"] = paths["confidence"].relative_to(outputs.folder).as_posix()
        record["confidence_scale"] = CONFIDENCE_SCALE
    write_bytes_atomically(paths["classes"], (json.dumps(record, indent=2) + "\n").encode())
    return record


# ----------------------------------------------------------------------------------------------------------------
# The command


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="setr segment",
        description="Segment images, folders, globs or URLs with a SETR model: label maps (PNG, class ids as values), "
        "colour overlays with a legend, per-class pixel shares (JSON) and an index.html.",
    )
    parser.add_argument("inputs", nargs="+", help="image files, folders (searched recursively), globs or URLs")
    parser.add_argument("--model", required=True, help="a saved model folder or a Hub id")
    parser.add_argument("--output", default="segmented", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--mode", choices=INFERENCE_MODES, default=None, help="inference mode (default: the model's protocol)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="bfloat16/float16: autocast")
    parser.add_argument("--batch_size", type=int, default=1, help="images of one processed size run together")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the colours, 0..1")
    parser.add_argument("--side_by_side", action="store_true", help="the photo next to its overlay")
    overlay_help = "longest side of the overlays; larger photos are shown smaller (label maps keep full size)"
    parser.add_argument("--overlay_max_side", type=int, default=DEFAULT_OVERLAY_MAX_SIDE, help=overlay_help)
    parser.add_argument("--skip_existing", action="store_true", help="skip images whose outputs all exist")
    parser.add_argument(
        "--save_confidence",
        action="store_true",
        help="also write confidence/<name>.png: the probability of the predicted class per pixel, as a 16-bit PNG "
        "of round(p * 65535)",
    )
    parser.add_argument(
        "--num_workers",
        type=int,
        default=0,
        help="processes that decode the images, and threads that encode and write the outputs, while the model runs "
        "(default: %(default)s, all in the main process)",
    )
    parser.add_argument(
        "--engine",
        choices=("torch", "ray"),
        default="torch",
        help="torch: this process, or one share per process under torchrun / accelerate launch; ray: Ray Data on the "
        "cluster `ray.init()` finds (needs the [ray] extra)",
    )
    parser.add_argument("--concurrency", type=int, default=None, help="--engine ray: model replicas (default: 1)")
    parser.add_argument("--num_gpus", type=float, default=None, help="--engine ray: GPUs per replica (default: 0)")
    return parser


def _fail(message: str) -> int:
    print(f"setr segment: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _check_arguments(args: argparse.Namespace) -> str | None:
    if args.batch_size < 1:
        return f"--batch_size must be at least 1, got {args.batch_size}"
    if not 0 <= args.alpha <= 1:
        return f"--alpha must be between 0 and 1, got {args.alpha}"
    if args.overlay_max_side < 16:
        return f"--overlay_max_side must be at least 16, got {args.overlay_max_side}"
    if args.num_workers < 0:
        return f"--num_workers must be at least 0, got {args.num_workers}"
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        return f"--output {output} is a file, not a folder"
    if args.engine == "ray":
        if args.concurrency is not None and args.concurrency < 1:
            return f"--concurrency must be at least 1, got {args.concurrency}"
        if args.num_gpus is not None and args.num_gpus < 0:
            return f"--num_gpus must be at least 0, got {args.num_gpus}"
        if args.device != "auto":
            return "--device is for --engine torch; with --engine ray, --num_gpus places each model replica"
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return "--engine ray runs from one driver process; do not start it under torchrun or accelerate launch"
    else:
        for flag in ("concurrency", "num_gpus"):
            if getattr(args, flag) is not None:
                return f"--{flag} is for --engine ray; under --engine torch, start processes with torchrun"
    return None


class ImageReader(torch.utils.data.Dataset):
    """A rank's images for a DataLoader: item i is (i, image or None, problem or None, earlier record or None), decoded
    in the loader's worker processes. With `outputs` (`--skip_existing`) an image whose outputs are complete is not
    decoded: its earlier record is returned instead."""

    def __init__(self, sources: Sequence[ImageSource], outputs: Outputs | None = None) -> None:
        self.sources = sources
        self.outputs = outputs

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[int, Image.Image | None, str | None, dict[str, Any] | None]:
        source = self.sources[index]
        if self.outputs is not None:
            record = self.outputs.existing_record(source.name)
            if record is not None:
                return index, None, None, record
        try:
            return index, load_image(source), None, None
        except InputError as error:
            return index, None, str(error), None


def _as_is(item: Any) -> Any:
    return item


class _OrderedManifest:
    """This rank's manifest part, one JSON line per image in the order of its share, although images finish out of
    order (a batch waits for its images, writes run in threads): a slot is taken when an image arrives and the lines
    go out once every earlier slot is filled."""

    def __init__(self, path: Path, on_record) -> None:
        self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed by close(), in main's finally)
        self.slots: deque[list[Any]] = deque()
        self.on_record = on_record

    def slot(self) -> list[Any]:
        slot: list[Any] = [None]
        self.slots.append(slot)
        return slot

    def flush(self, wait: bool = False) -> None:
        while self.slots and self.slots[0][0] is not None:
            value = self.slots[0][0]
            if isinstance(value, Future):
                if not (wait or value.done()):
                    return
                value = value.result()
            self.slots.popleft()
            self.on_record(value)
            self.file.write(json.dumps(value) + "\n")

    def close(self) -> None:
        self.flush(wait=True)
        self.file.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = _check_arguments(args)
    if problem:
        return _fail(problem)
    if args.engine == "ray":
        from .ray_segment import segment_command_with_ray

        return segment_command_with_ray(args)
    try:
        ranks = start_process_group()
    except ProcessGroupError as error:
        return _fail(str(error))
    try:
        return _segment_share(args, ranks)
    finally:
        ranks.close()


def _segment_share(args: argparse.Namespace, ranks: Ranks) -> int:
    """`setr segment` in one process: its share of the images (all of them alone), then, on rank 0 once every rank
    is done, the merged manifest, the summary and the index pages."""
    # Every rank sees the same arguments and files: a refusal is printed once, by rank 0, and every rank exits.
    fail = _fail if ranks.is_main else (lambda message: 2)
    output = Path(args.output)
    sources, input_problems = expand_inputs(args.inputs, output)
    if not sources:
        return fail("; ".join(f"{text}: {problem}" for text, problem in input_problems) or "no images to segment")
    try:
        device = pick_device(args.device)
        if args.device == "auto" and device.type == "cuda" and ranks.world_size > 1:
            device = torch.device("cuda", ranks.local_rank % torch.cuda.device_count())
        model, processor = load_model(args.model, device)
    except ValueError as error:
        return fail(str(error))
    mode = args.mode or model.config.inference_mode
    dtype = DTYPES[args.dtype]
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return fail(f"--output {output}: {error}")
    outputs = Outputs(output, confidence=args.save_confidence)
    options = dataclasses.replace(SegmentOptions.from_args(args), mode=mode)
    if ranks.is_main:
        for text, problem in input_problems:
            print(f"setr segment: {text}: {problem}", file=sys.stderr)
    mine = ranks.share(sources)
    remove_stale_temporaries(output, (path for source in mine for path in outputs.paths(source.name).values()))
    counts = {"images": len(mine), "segmented": 0, "skipped": 0, "failed": 0, "model_seconds": 0.0}
    where = f" (rank {ranks.rank} of {ranks.world_size})" if ranks.world_size > 1 else ""
    progress = tqdm(
        total=len(mine), unit="image", desc=f"segment{where}", dynamic_ncols=True, disable=not ranks.is_main
    )

    def on_record(record: dict[str, Any]) -> None:
        counts[record["status"]] += 1
        if record["status"] == "failed":
            tqdm.write(f"setr segment: {record['source']}: {record['error']}", file=sys.stderr)
        progress.update(1)

    def failure(source: ImageSource, problem: str) -> dict[str, Any]:
        return {"source": source.location, "name": source.name, "status": "failed", "error": problem}

    writer = ThreadPoolExecutor(args.num_workers) if args.num_workers else None
    in_flight: deque[Future] = deque()

    def write(source: ImageSource, image: Image.Image, labels: np.ndarray, confidence: np.ndarray | None) -> dict:
        try:
            record = save_outputs(
                outputs, source, image, labels, model.config, options, model_name=args.model, confidence=confidence
            )
        except OSError as error:
            return failure(source, f"cannot write its outputs: {error}")
        return {**record, "status": "segmented"}

    def run(batch: list[tuple[ImageSource, Image.Image, list[Any]]]) -> None:
        # Images of one processed size go through the model together; each keeps its own failure.
        started = time.perf_counter()
        try:
            predictions = predict_label_maps(
                model, processor, [image for _, image, _ in batch], mode, dtype, confidence=args.save_confidence
            )
        except (InputError, ValueError, RuntimeError) as error:
            counts["model_seconds"] += time.perf_counter() - started
            if len(batch) > 1:
                for item in batch:
                    run([item])
                return
            batch[0][2][0] = failure(batch[0][0], str(error).splitlines()[0])
            return
        counts["model_seconds"] += time.perf_counter() - started
        for (source, image, slot), prediction in zip(batch, predictions):
            labels, confidence = prediction if isinstance(prediction, tuple) else (prediction, None)
            if writer is None:
                slot[0] = write(source, image, labels, confidence)
                continue
            slot[0] = writer.submit(write, source, image, labels, confidence)
            in_flight.append(slot[0])
            while len(in_flight) > 2 * args.num_workers:  # bounded memory: the label maps waiting to be written
                in_flight.popleft().result()

    def processed_size(image: Image.Image) -> tuple:
        return (image.height, image.width) if mode == "ms_flip" else _processed_size(processor, image)

    loader = torch.utils.data.DataLoader(
        ImageReader(mine, outputs if args.skip_existing else None),
        batch_size=None,
        num_workers=args.num_workers,
        collate_fn=_as_is,
    )
    start = time.perf_counter()
    pending: list[tuple[ImageSource, Image.Image, list[Any]]] = []
    manifest = _OrderedManifest(manifest_part(output, ranks), on_record)
    try:
        for index, image, problem, earlier in loader:
            source, slot = mine[index], manifest.slot()
            if problem is not None:
                slot[0] = failure(source, problem)
            elif image is None:
                slot[0] = {**earlier, "status": "skipped"}
            else:
                if pending and (
                    len(pending) >= args.batch_size or processed_size(pending[0][1]) != processed_size(image)
                ):
                    run(pending)
                    pending = []
                pending.append((source, image, slot))
                if mode == "ms_flip" or args.batch_size == 1:
                    run(pending)
                    pending = []
            manifest.flush()
        if pending:
            run(pending)
    finally:
        if writer is not None:
            writer.shutdown(wait=True)
        manifest.close()
        progress.close()
    counts["seconds"] = time.perf_counter() - start
    if ranks.world_size > 1:
        print(
            f"setr segment: rank {ranks.rank} of {ranks.world_size}: {counts['images']} images, "
            f"{counts['segmented']} segmented, {counts['skipped']} skipped (already done), {counts['failed']} failed",
            file=sys.stderr,
            flush=True,
        )
    ranks.barrier()
    per_rank = ranks.gather(counts)
    failed = len(input_problems) + sum(rank["failed"] for rank in per_rank)
    if ranks.is_main:
        failed += _write_index(args, ranks, output, mode, model.config, input_problems, per_rank)
    ranks.barrier()  # the others wait for the index: a launcher may tear the group down when one rank exits
    return 1 if failed else 0


def _write_index(args, ranks: Ranks, output: Path, mode: str, config, input_problems, per_rank) -> int:
    """Rank 0: the merged manifest, `summary.json`, the index pages and the last line; the number of failures it
    adds (an index it could not write)."""
    elapsed = max(rank["seconds"] for rank in per_rank)
    summary: dict[str, Any] = {
        "model": args.model,
        "mode": mode,
        "world_size": ranks.world_size,
        "images": sum(rank["images"] for rank in per_rank),
        "seconds": elapsed,
        "ranks": [{"rank": i, **rank} for i, rank in enumerate(per_rank)],
    }
    try:
        summary.update(merge_manifests(output, ranks, input_problems, config.prediction_id2label))
        summary["images_per_second"] = summary["segmented"] / elapsed if elapsed > 0 else None
        summary["pages"] = write_index_pages(output, summary, f"SETR segmentation: {args.model} ({mode})")
        save_json_atomically(output / SUMMARY, summary)
    except (OSError, ProcessGroupError) as error:
        print(f"setr segment: cannot write the index of {output}: {error}", file=sys.stderr)
        return 1
    rate = f", {summary['images_per_second']:.2f} images/s" if summary["segmented"] and elapsed > 0 else ""
    processes = f" on {ranks.world_size} processes" if ranks.world_size > 1 else ""
    print(
        f"setr segment: {summary['segmented']} segmented, {summary['skipped']} skipped (already done), "
        f"{summary['failed']} failed{rate}{processes}; {output / 'index.html'}",
        file=sys.stderr,
    )
    return 0


def _processed_size(processor, image: Image.Image) -> tuple[int, int]:
    """The size the processor resizes `image` to (its keep-ratio test scale), without processing it."""
    from ..models.setr.image_processing_base_setr import get_setr_resize_output_size

    if not getattr(processor, "do_resize", True):
        return image.height, image.width
    return get_setr_resize_output_size((image.height, image.width), processor.size)


if __name__ == "__main__":
    raise SystemExit(main())
