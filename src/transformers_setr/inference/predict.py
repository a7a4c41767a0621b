"""The one entry to SETR's inference modes: `whole`, `slide` (the model's own, `config.inference_mode`) and
`ms_flip` (multi-scale + flip, `multi_scale.py`), each giving class ids at the image's original size with
mmsegmentation's protocol (logits resized bilinearly, `align_corners=False`, then argmax; a binary model's single
logit is thresholded at 0, `labels_from_scores`).
"""

import torch
import torch.nn.functional as F
from PIL import Image

from ..models.setr.configuration_setr import MODEL_INFERENCE_MODES
from ..models.setr.image_processing_base_setr import labels_from_scores
from .multi_scale import multi_scale_flip_probabilities

INFERENCE_MODES = (*MODEL_INFERENCE_MODES, "ms_flip")

__all__ = ["INFERENCE_MODES", "check_mode", "predict_batch", "predict_labels", "predict_ms_flip_probabilities"]


def check_mode(mode: str, what: str = "inference") -> None:
    if mode not in INFERENCE_MODES:
        raise ValueError(f"{what} mode must be one of {INFERENCE_MODES}, got {mode!r}")


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def check_eval(model: torch.nn.Module) -> None:
    # In train mode BatchNorm uses batch statistics and `forward` skips the sliding windows: wrong numbers, silently.
    if model.training:
        raise ValueError("the model is in training mode; call model.eval() before predicting for evaluation")


def predict_batch(
    model: torch.nn.Module, pixel_values: torch.Tensor, output_size: tuple[int, int], mode: str
) -> torch.Tensor:
    """(B, H, W) class ids for `whole` / `slide`: logits -> input size -> `output_size` (bilinear) -> argmax."""
    pixel_values = pixel_values.to(model_device(model))
    logits = model(pixel_values=pixel_values, inference_mode=mode).logits.float()
    # mmseg first resizes the decoder output to the network input (the naive and MLA heads output 1/4 of it), then
    # the input-size logits to the original image: two bilinear steps, kept for identical numbers.
    input_size = tuple(pixel_values.shape[-2:])
    if tuple(logits.shape[-2:]) != input_size:
        logits = F.interpolate(logits, size=input_size, mode="bilinear", align_corners=False)
    if tuple(logits.shape[-2:]) != tuple(output_size):
        logits = F.interpolate(logits, size=tuple(output_size), mode="bilinear", align_corners=False)
    return labels_from_scores(logits, dim=1)


@torch.inference_mode()
def predict_ms_flip_probabilities(
    model: torch.nn.Module, image: Image.Image, image_processor, output_size: tuple[int, int]
) -> torch.Tensor:
    """(C, H, W) class probabilities of `ms_flip` at `output_size`, averaged over the views (a binary model: (1, H, W),
    the averaged foreground probability): what `predict_labels` takes the labels of."""
    check_eval(model)
    output_size = (int(output_size[0]), int(output_size[1]))
    probabilities = multi_scale_flip_probabilities(model, image_processor, image)
    if tuple(probabilities.shape[-2:]) != output_size:
        probabilities = F.interpolate(probabilities[None], size=output_size, mode="bilinear", align_corners=False)[0]
    return probabilities


@torch.inference_mode()
def predict_labels(
    model: torch.nn.Module,
    pixel_values: torch.Tensor | None,
    output_size: tuple[int, int] | torch.Size,
    mode: str,
    image: Image.Image | None = None,
    image_processor=None,
) -> torch.Tensor:
    """
    (H, W) class ids of one image at `output_size` (its original size), with SETR's evaluation protocol.

    Args:
        model: a `SetrForSemanticSegmentation` in eval mode.
        pixel_values: (3, h, w) or (1, 3, h, w), the processed image (unused for `ms_flip`).
        output_size: (H, W) of the ground truth.
        mode: `"whole"` or `"slide"` (the model's inference on `pixel_values`, logits resized bilinearly with
            `align_corners=False`, then argmax) or `"ms_flip"` (`multi_scale_flip_probabilities` on the
            original `image` with `image_processor`, each view with the model's configured inference mode).
    """
    check_mode(mode, "evaluation")
    check_eval(model)
    output_size = (int(output_size[0]), int(output_size[1]))
    if mode == "ms_flip":
        if image is None or image_processor is None:
            raise ValueError("ms_flip evaluation needs the original image and the image processor")
        probabilities = predict_ms_flip_probabilities(model, image, image_processor, output_size)
        return labels_from_scores(probabilities, dim=0, probabilities=True)
    if pixel_values is None:
        raise ValueError(f"{mode} evaluation needs pixel_values")
    if pixel_values.ndim == 3:
        pixel_values = pixel_values[None]
    if pixel_values.ndim != 4 or pixel_values.shape[0] != 1:
        raise ValueError(f"predict_labels takes one image, got pixel_values of shape {tuple(pixel_values.shape)}")
    return predict_batch(model, pixel_values, output_size, mode)[0]
