"""Test-time augmentation as mmsegmentation evaluates SETR: multi-scale + flip.

Single-scale sliding-window inference is the model's own (`SetrForSemanticSegmentation.slide_inference`, used by
`forward` when `config.inference_mode == "slide"`). Multi-scale needs the original image at several sizes, so it
lives here, next to the image processor: for each ratio r the image is resized keep-ratio to the dataset's test scale
times r (mmsegmentation 0.x `MultiScaleFlipAug`, which produced the reported ms+flip numbers), each view (and its
horizontal flip) is segmented with the model's protocol, its logits are resized to the original size, and the class
probabilities of all views (softmax; a binary model's sigmoid, `class_probabilities`) are averaged.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from ..models.setr.image_processing_base_setr import class_probabilities, labels_from_scores

MMSEG_TTA_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def _test_scale(image_processor) -> tuple[int, int]:
    size = image_processor.size
    longest, shortest = size.get("longest_edge"), size.get("shortest_edge")
    if not (longest and shortest):
        raise ValueError(
            f"multi-scale inference needs a keep-ratio processor size (shortest/longest edge), got {size}"
        )
    return longest, shortest


@torch.inference_mode()
def multi_scale_flip_probabilities(
    model,
    image_processor,
    image: Image.Image,
    ratios: Sequence[float] = MMSEG_TTA_RATIOS,
    flip: bool = True,
    inference_mode: str | None = None,
) -> torch.Tensor:
    """Class probabilities (num_labels, H, W) at the original size, averaged over scales (and flips); for a binary
    model (one channel) the averaged foreground probability."""
    longest, shortest = _test_scale(image_processor)
    height, width = image.height, image.width
    device = next(model.parameters()).device
    total, views = None, 0
    for ratio in ratios:
        size = {"longest_edge": int(longest * ratio), "shortest_edge": int(shortest * ratio)}
        pixel_values = image_processor(images=image, size=size, return_tensors="pt")["pixel_values"].to(device)
        for flipped in (False, True) if flip else (False,):
            inputs = pixel_values.flip(-1) if flipped else pixel_values
            logits = model(pixel_values=inputs, inference_mode=inference_mode).logits
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            probabilities = class_probabilities(logits.float(), dim=1)[0]
            if flipped:
                probabilities = probabilities.flip(-1)
            total = probabilities if total is None else total + probabilities
            views += 1
    if total is None:
        raise ValueError("multi-scale inference needs at least one ratio")
    return total / views


def multi_scale_flip_segmentation(model, image_processor, image: Image.Image, **kwargs) -> torch.Tensor:
    """(H, W) class ids from `multi_scale_flip_probabilities`."""
    probabilities = multi_scale_flip_probabilities(model, image_processor, image, **kwargs)
    return labels_from_scores(probabilities, dim=0, probabilities=True)
