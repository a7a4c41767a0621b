"""`pipeline("image-segmentation")` for SETR: transformers' pipeline with SETR's own input loading and batching.

Registered by `registration.register_pipeline` as the task's implementation. For any other model it is transformers'
`ImageSegmentationPipeline` unchanged; for SETR (`config.model_type == "setr"`) it differs in these places:

- images are opened without `load_image`'s `convert("RGB")`, which clips 16-bit images to 8 bits and drops alpha:
  only upright (EXIF, for the target size), the image processor gets the rest of `decode_image` (the one decode,
  shared with the training data and `setr segment`): alpha onto white, or its refusal of 16-bit images;
- a batch (`batch_size > 1`) may hold images of different sizes: the stock collation concatenates `pixel_values`,
  which fails for different sizes, and padding would change SETR's result (the position table is resized to the
  padded grid, zeros become tokens). Images of the same size run together, the others separately, so each image
  gets exactly the masks it gets with `batch_size=1`;
- an empty list of images is an error naming the problem, not an `IndexError`; a path that looks like a file and
  does not exist is "no such file", not a base64 decoding error;
- the model gets the CPU inference variants of its modules (`optimize_for_inference`, in place; autograd and training
  mode compute as before);
- the masks are named by `config.prediction_id2label`, so a binary model (`num_labels=1`, its logit thresholded into
  background and its class by the image processor) gives a mask for each of the two classes.
"""

import base64
import io
import os
import string
from typing import Any

import numpy as np
import PIL.Image
import torch
from huggingface_hub.utils import httpx
from transformers import ImageSegmentationPipeline

from ..models.setr.fast_inference_setr import optimize_for_inference
from ..models.setr.image_processing_base_setr import upright


def is_setr(model: Any) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) == "setr"


# What base64 text may hold (the alphabet, padding and line breaks): a string with any other character (`.`, `\\`,
# `:`, `~`, ...) is not base64 data, so it was meant as a path or URL.
BASE64_CHARACTERS = frozenset(string.ascii_letters + string.digits + "+/=\n\r\t ")


def looks_like_a_path(text: str) -> bool:
    """A string that cannot be base64 data (`no/such.jpg`, `C:\\photo`, `~/photo`): meant as a local file."""
    return not text.startswith("data:") and any(character not in BASE64_CHARACTERS for character in text)


def open_image(image: str | PIL.Image.Image, timeout: float | None = None) -> PIL.Image.Image:
    """transformers' `load_image` (URL, local file, base64 string or PIL image; EXIF orientation applied) without its
    final `convert("RGB")`, so that the image processor decodes the image's mode (`decode_image`)."""
    if isinstance(image, str):
        if image.startswith(("http://", "https://")):
            image = PIL.Image.open(io.BytesIO(httpx.get(image, timeout=timeout, follow_redirects=True).content))
        elif os.path.isfile(image):
            image = PIL.Image.open(image)
        elif looks_like_a_path(image):
            raise FileNotFoundError(f"no such file: {image}")
        else:
            if image.startswith("data:image/"):
                image = image.split(",")[1]
            try:
                image = PIL.Image.open(io.BytesIO(base64.decodebytes(image.encode())))
            except Exception as error:
                raise ValueError(
                    f"Incorrect image source: {str(image)[:100]!r} is no file here, no URL (http:// or https://) and no "
                    f"base64 image data ({error})"
                ) from error
    elif not isinstance(image, PIL.Image.Image):
        raise TypeError(
            f"Incorrect image type {type(image).__name__}: expected a URL, a local path, a base64 string or a PIL image."
        )
    return upright(image)


class SetrImageSegmentationPipeline(ImageSegmentationPipeline):
    """`ImageSegmentationPipeline`, with SETR's image loading and batching of different sizes (see the module)."""

    # The `type: ignore[override]`s: the hooks below take the parameters of `ImageSegmentationPipeline`'s own
    # (untyped) hooks, which the base `Pipeline` types as `input_, **parameters: dict`.

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if is_setr(self.model):
            optimize_for_inference(self.model)  # in place: the CPU inference variants (`fast_inference_setr`)

    def __call__(self, inputs: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        images = kwargs.get("images", inputs)
        if is_setr(self.model) and isinstance(images, (list, tuple)) and len(images) == 0:
            raise ValueError("No images were given (empty list): pass an image or a non-empty list of images.")
        return super().__call__(inputs, **kwargs)

    def preprocess(  # type: ignore[override]
        self, image: Any, subtask: str | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        if not is_setr(self.model):
            return super().preprocess(image, subtask=subtask, timeout=timeout)
        image = open_image(image, timeout=timeout)
        assert self.image_processor is not None  # the task loads it with the model
        pixel_values = self.image_processor(images=[image], return_tensors="pt")["pixel_values"].to(self.dtype)
        # Lists, not tensors: the stock collation then gathers them as they are instead of concatenating them.
        return {"pixel_values": [pixel_values], "target_size": [(image.height, image.width)]}

    def _forward(self, model_inputs: dict[str, Any]) -> Any:  # type: ignore[override]
        if not is_setr(self.model):
            return super()._forward(model_inputs)
        images, target_sizes = model_inputs["pixel_values"], model_inputs["target_size"]
        if isinstance(images[0], torch.Tensor):  # batch_size=1: one preprocessed item, as `preprocess` made it
            outputs = self.model(pixel_values=images[0])
            outputs["target_size"] = target_sizes
            return outputs
        # batch_size > 1: a list of items, each a list of one (1, 3, H, W) tensor. One model call per input size.
        images = [item[0] for item in images]
        by_size: dict[tuple[int, ...], list[int]] = {}
        for index, pixel_values in enumerate(images):
            by_size.setdefault(tuple(pixel_values.shape), []).append(index)
        logits: list[torch.Tensor | None] = [None] * len(images)
        outputs = None
        for indices in by_size.values():
            outputs = self.model(pixel_values=torch.cat([images[i] for i in indices]))
            for i, image_logits in zip(indices, outputs.logits):
                logits[i] = image_logits
        # A list of per-image logits: the pipeline's iterator unbatches it item by item (sizes may differ).
        outputs = type(outputs)(logits=logits)
        outputs["target_size"] = target_sizes
        return outputs

    def postprocess(self, model_outputs: Any, subtask: str | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        if not is_setr(self.model):
            return super().postprocess(model_outputs, subtask=subtask, **kwargs)
        if subtask not in ("semantic", None):
            raise ValueError(f"Subtask {subtask} is not supported for SETR, a semantic segmentation model")
        image_processor: Any = self.image_processor  # SETR's (maybe remote code): its own post-processing
        segmentation = image_processor.post_process_semantic_segmentation(
            model_outputs, target_sizes=model_outputs["target_size"]
        )[0].numpy()
        id2label = self.model.config.prediction_id2label
        annotation = []
        for label in np.unique(segmentation):
            mask = PIL.Image.fromarray(((segmentation == label) * 255).astype(np.uint8), mode="L")
            annotation.append({"score": None, "label": id2label[int(label)], "mask": mask})
        return annotation
