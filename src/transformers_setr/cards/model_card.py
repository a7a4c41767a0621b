"""Hugging Face Hub model cards for the seven converted mmsegmentation SETR checkpoints.

`build_model_card(preset)` returns a `huggingface_hub.ModelCard` whose metadata is built with `ModelCardData` and
`EvalResult` (the YAML is generated, never written by hand) and whose body is `CARD_TEMPLATE` filled from the preset.
Every fact comes from `presets.py` (checkpoint, recipe, reported numbers, Hub ids) or `label_tables.py` (class
names); the numbers are mmsegmentation's, marked as such. `scripts/make_model_cards.py` writes the cards to
`model_cards/` and checks that the committed ones are current; the converter writes the same card as `README.md`.

Hub repository names (`HUB_REPO_NAME_SCHEME`): each checkpoint goes to `{HUB_ORGANISATION}/{preset.name}`, which is
`preset.hub_repo_id`. Preset names read `setr-{decoder}-vit-large-{dataset}-{crop}`, with `-b8` / `-b16` added to the
two ADE20K MLA checkpoints, which differ only in their batch size.
"""

import json
import math
from pathlib import Path
from string import Template

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..data.label_tables import id2label_for
from ..inference.multi_scale import MMSEG_TTA_RATIOS
from ..models.setr.image_processing_base_setr import get_setr_resize_output_size
from ..models.setr.modeling_setr import slide_windows
from ..presets import (
    HUB_DATASETS,
    HUB_ORGANISATION,
    MMSEG_BENCHMARK_DEVICE,
    MMSEG_CODE_LICENSE,
    MMSEG_MODEL_ZOO_URL,
    PRETRAINED_ENCODER_HUB_ID,
    TIMM_VIT_LARGE_URL,
    CheckpointPreset,
)

HUB_REPO_NAME_SCHEME = "{organisation}/{preset_name}"
"""Repo id of a converted checkpoint (see `hub_repo_id`); the default equals `preset.hub_repo_id`."""

TASK_TYPE = "image-segmentation"  # the Hub pipeline tag; there is no separate semantic-segmentation tag
TASK_NAME = "Semantic Segmentation"
METRIC_TYPE = "mean_iou"
REPORTED_SOURCE_NAME = "mmsegmentation SETR model zoo"
CONVERTER_SCRIPT = "scripts/convert_mmseg_to_hf.py"
MMSEG_REFERENCE_VERSION = "1.2.2"
MMSEG_TTA_RATIOS_TEXT = ", ".join(str(ratio) for ratio in MMSEG_TTA_RATIOS)

# `measured=` protocols and how the card names them.
MEASURED_PROTOCOLS = {
    "slide": "single-scale slide inference",
    "whole": "single-scale whole-image inference",
    "ms+flip": "multi-scale + flip",
}
MEASURED_KEYS = {"mIoU", "protocol", "split", "notes", "dataset_config", "dataset_revision", "source_url"}

DECODER_NAMES = {"naive": "Naive", "pup": "PUP", "mla": "MLA"}

DECODER_DESCRIPTIONS = {
    "naive": (
        "**Naive** decoder: the output of encoder layer 24 goes through a LayerNorm, a 1×1 convolution (256 "
        "channels) + BatchNorm + ReLU, a bilinear ×4 up-sampling and a 1×1 classifier. Logits come out at 1/4 of the "
        "(padded) input resolution."
    ),
    "pup": (
        "**PUP** (progressive up-sampling) decoder: the output of encoder layer 24 goes through a LayerNorm and four "
        "stages of 3×3 convolution (256 channels) + BatchNorm + ReLU + bilinear ×2 up-sampling, then a 1×1 "
        "classifier. Logits come out at the full (padded) input resolution."
    ),
    "mla": (
        "**MLA** (multi-level feature aggregation) decoder: the outputs of encoder layers 6, 12, 18 and 24 each go "
        "through a LayerNorm and a 1×1 convolution to 256 channels, are summed top-down (deepest first) and refined by "
        "a 3×3 convolution (the MLA neck); each of the four levels then passes two 3×3 convolutions (128 channels) "
        "and a bilinear ×4 up-sampling, and the concatenation (512 channels) feeds a 1×1 classifier. Logits come out "
        "at 1/4 of the (padded) input resolution. The cls token is dropped right after the position embedding is "
        "added, before the first encoder layer."
    ),
}

CITATION = """\
@article{zheng2020rethinking,
  title={Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective with Transformers},
  author={Zheng, Sixiao and Lu, Jiachen and Zhao, Hengshuang and Zhu, Xiatian and Luo, Zekun and Wang, Yabiao and Fu, Yanwei and Feng, Jianfeng and Xiang, Tao and Torr, Philip HS and others},
  journal={arXiv preprint arXiv:2012.15840},
  year={2020}
}"""

CARD_TEMPLATE = Template(
    """\
# $title

SETR ([Zheng et al., *Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective with Transformers*, \
CVPR 2021](https://arxiv.org/abs/2012.15840)) segments images with a plain ViT encoder and a light convolutional \
decoder. This repository holds **mmsegmentation's released $decoder checkpoint for $dataset_name**, converted to the \
Hugging Face `transformers` format of the `transformers_setr` package. The weights are mmsegmentation's, unchanged: nothing was trained or fine-tuned here, and $accuracy_status

## Model details

| | |
|---|---|
| Variant | SETR-$decoder, ViT-L/16 encoder, $dataset_name ($num_labels classes) |
| Encoder | ViT-L/16: 24 layers, width 1024, 16 heads, MLP 4096, LayerNorm eps 1e-6, exact GELU, no final LayerNorm \
($encoder_parameters parameters) |
| Training crop / position grid | $crop×$crop / $grid×$grid patches (+ cls token) |
| Schedule | $iterations_text iterations, batch $batch_size ($gpus GPUs × $per_gpu), base learning rate $learning_rate |
| Initialisation | ViT-L/16 pre-trained on ImageNet-21k and fine-tuned on ImageNet-1k at 384 ([`$base_model`]\
(https://huggingface.co/$base_model), see *Provenance*) |
| Original checkpoint | [`$file_name`]($url) |
| mmsegmentation config | [`$mmseg_config`]($config_url) (trained with the 0.x config `$mmseg_v0_config.py`) |
| Licence | $license_text |

$decoder_description

$auxiliary_description

### Training recipe (mmsegmentation's, as in its config; not re-run here)

- Data: the $dataset_name training set ($train_images images); $train_labels
- Augmentation: random keep-ratio resize to the test scale $test_scale_text × a ratio in [0.5, 2.0], random \
$crop×$crop crop (re-drawn, up to 10 times, while one class covers more than 75 % of it), horizontal flip (p = 0.5), photometric distortion, \
padding to the crop size (label 255).
- Optimiser: SGD, momentum 0.9, weight decay 0, base learning rate $learning_rate with a 10× multiplier on the \
decode and auxiliary heads (the encoder${neck_lr} keep${keep_s} 1×); poly schedule (power 0.9, minimum 1e-4), no warm-up; SyncBN across the $gpus GPUs.
- Loss: cross-entropy ignoring 255 on the decode head, plus 0.4 × that of each auxiliary head.
- Encoder initialisation: timm's `jx_vit_large_p16_384` ([download]($timm_url)) renamed to mmsegmentation's \
keys (what `tools/model_converters/vit2mmseg.py` does in current releases); its 24×24 position table was resized bilinearly to $grid×$grid.

## Provenance

- Original checkpoint: $url (the file name ends with the first 8 hex digits of its sha256, `$sha256_prefix`; \
training log: $log_url).
- Reported numbers: the [mmsegmentation SETR model zoo]($zoo_url).
- Conversion: `python $converter --checkpoint $preset_name --output <folder> --verify`. The converter maps every \
tensor by name (nothing is dropped but BatchNorm's `num_batches_tracked`) and writes the weights, `config.json`, the \
image-processor config, the modelling code (for `trust_remote_code`) and this card. `--verify` runs \
mmsegmentation $mmseg_version itself on the original checkpoint with `model.backbone.patch_bias=True` and requires \
the logits to match (max |Δ| ≤ 1e-4 on seeded random inputs of several sizes, whole-image and slide inference). `patch_bias=True` \
matters: mmsegmentation ≥ 1.2.0 builds the patch embedding without a bias by default and silently drops the trained \
one, so stock 1.2.x configs do not reproduce the released model.
- Base model: mmsegmentation initialised the encoder from timm's `jx_vit_large_p16_384-b3be5167.pth`, the original \
ViT-L/16 of Dosovitskiy et al. (Google's JAX release: ImageNet-21k pre-training, ImageNet-1k fine-tuning at \
384×384) converted to PyTorch. `base_model` points at [`$base_model`](https://huggingface.co/$base_model), the \
`transformers` conversion of that same JAX release. timm's Hub weights for `vit_large_patch16_384` \
(`timm/vit_large_patch16_384.augreg_in21k_ft_in1k`) are not it: they come from the later AugReg training run \
(Steiner et al., 2021), and timm publishes no Hub copy of the original ViT-L/16-384 weights. The two conversions of \
the JAX release were not compared tensor by tensor here.

## Inference protocol

mmsegmentation evaluated this checkpoint with **sliding-window inference**: the image is resized keep-ratio to the \
test scale (`{"shortest_edge": $shortest_edge, "longest_edge": $longest_edge}`), windows of $crop×$crop are taken \
with stride $stride (the last row and column of windows are aligned with the bottom and right edges), their logits \
are averaged where they overlap, and the result is resized bilinearly to the original image size before the argmax. \
The converted `config.json` sets `inference_mode="slide"`, `slide_crop_size=$crop` and `slide_stride=$stride`, so \
`model(**inputs)` and the `image-segmentation` pipeline follow this protocol by default and return logits at the \
resized input's resolution ($window_example). `model.config.inference_mode = "whole"` (or \
`model(**inputs, inference_mode="whole")`) runs the whole image through the model at once instead, returning \
logits at the decoder's resolution; that is not how the numbers below were obtained.

The ms+flip number comes from mmsegmentation's test-time augmentation: the test scale times each ratio in \
($tta_ratios), each view with and without a horizontal flip, each view's logits resized to the original size and \
the **softmax probabilities averaged**. `transformers_setr.inference.multi_scale_flip_segmentation(model, processor, \
image)` implements it.

## Preprocessing

The image processor reproduces mmsegmentation's test pipeline: RGB, keep-ratio resize with the scale factor \
`min($longest_edge / long side, $shortest_edge / short side)` and sizes rounded as `int(x × factor + 0.5)`, \
bilinear **without** antialiasing on 8-bit pixels, then normalisation with mmsegmentation's mean (123.675, 116.28, \
103.53) and std (58.395, 57.12, 57.375) on the 0–255 scale (ImageNet's mean and std). $label_preprocessing

## Results

$results_table

$results_notes

## How to use

With the `transformers_setr` package installed (distribution name `transformers-setr`; importing it registers SETR \
with the Auto classes and the pipeline):

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

import transformers_setr  # noqa: F401  (registers SETR)

repo_id = "$repo_id"
processor = AutoImageProcessor.from_pretrained(repo_id)
model = AutoModelForSemanticSegmentation.from_pretrained(repo_id).eval()

image = Image.open("$example_image").convert("RGB")
inputs = processor(images=image, return_tensors="pt")
with torch.no_grad():
    outputs = model(**inputs)  # sliding-window inference, as the checkpoint was evaluated
segmentation = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
print({model.config.id2label[i] for i in segmentation.unique().tolist()})
```

With the pipeline (one binary mask per class present; `score` is `None` for semantic segmentation):

```python
from transformers import pipeline

import transformers_setr  # noqa: F401

segmenter = pipeline("image-segmentation", model="$repo_id")
for segment in segmenter("$example_image"):
    print(segment["label"], segment["mask"].size)
```

Without the package: the repository ships its modelling and processing code, so `trust_remote_code=True` loads it \
with plain `transformers` (≥ 5.23):

```python
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

repo_id = "$repo_id"
model = AutoModelForSemanticSegmentation.from_pretrained(repo_id, trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained(repo_id, trust_remote_code=True)
segmenter = pipeline("image-segmentation", model=repo_id, trust_remote_code=True)
```

## Labels

Output channel *c* is class `id2label[c]` ($label_summary).

<details>
<summary>id2label ($num_labels classes)</summary>

```json
$id2label_json
```

</details>

## Limitations

- Memory and speed: every $crop×$crop window is $tokens tokens ($token_note) through 24 ViT-L layers; a \
$example_original_size image becomes $example_windows. `config.slide_batch_size` (default 4) windows run at once: \
lower it to save memory. With `attn_implementation="eager"` (needed for attention maps) each window materialises \
16 × ${tokens}² attention scores per layer (≈ $eager_attention_mib MiB in float32). Training needed \
$memory_gb GB per GPU at batch $per_gpu per GPU ($device).
- The `image-segmentation` pipeline returns `score=None` for every mask (transformers' convention for semantic \
segmentation); use the logits for confidences.
- $tests_limitation
- The model predicts only the $num_labels $dataset_name classes and was trained only on $domain; expect worse \
results on other imagery. $dataset_name's own terms of use apply to the training data and may bear on \
what you do with a model trained on it.

## Citation

```bibtex
$citation
```
"""
)


def hub_repo_id(preset: CheckpointPreset, organisation: str = HUB_ORGANISATION) -> str:
    """`HUB_REPO_NAME_SCHEME` filled in: `{organisation}/{preset.name}` (`preset.hub_repo_id` for the default)."""
    return HUB_REPO_NAME_SCHEME.format(organisation=organisation, preset_name=preset.name)


def _validate_measured(measured: dict) -> dict:
    unknown = set(measured) - MEASURED_KEYS
    if unknown:
        raise ValueError(f"unknown keys in `measured`: {sorted(unknown)}; allowed: {sorted(MEASURED_KEYS)}")
    if "mIoU" not in measured:
        raise ValueError("`measured` needs 'mIoU' (in percent, e.g. 48.1)")
    value = measured["mIoU"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"measured mIoU must be a finite number, got {value!r}")
    if not 1 < value <= 100:
        raise ValueError(
            f"measured mIoU {value!r} is outside (1, 100]: give it in percent like the reported numbers "
            "(48.1, not 0.481)"
        )
    protocol = measured.get("protocol", "slide")
    if protocol not in MEASURED_PROTOCOLS:
        raise ValueError(f"measured protocol must be one of {sorted(MEASURED_PROTOCOLS)}, got {protocol!r}")
    return {**measured, "protocol": protocol}


def _reported_eval_results(preset: CheckpointPreset) -> list[EvalResult]:
    dataset = HUB_DATASETS[preset.dataset]
    common = {
        "task_type": TASK_TYPE,
        "task_name": TASK_NAME,
        "dataset_type": dataset.hub_id,
        "dataset_name": dataset.pretty_name,
        "dataset_split": dataset.eval_split,
        # No `dataset_config`: mmsegmentation scored the official validation files, not a `load_dataset` config.
        # It also keeps these results apart from a measured one (the Hub groups results by task and dataset).
        "metric_type": METRIC_TYPE,
        "source_name": REPORTED_SOURCE_NAME,
        "source_url": MMSEG_MODEL_ZOO_URL,
    }
    slide = f"slide {preset.crop_size}/{preset.slide_stride}"
    return [
        EvalResult(
            metric_value=preset.miou_reported,
            metric_name=f"mIoU (%), single-scale {slide} (reported by mmsegmentation, not re-measured)",
            **common,
        ),
        EvalResult(
            metric_value=preset.miou_ms_flip_reported,
            metric_name="mIoU (%), multi-scale + flip (reported by mmsegmentation, not re-measured)",
            **common,
        ),
    ]


def _measured_eval_result(preset: CheckpointPreset, measured: dict) -> EvalResult:
    dataset = HUB_DATASETS[preset.dataset]
    config = measured.get("dataset_config", dataset.hub_config)
    revision = measured.get("dataset_revision")
    if config is None and revision is None:
        raise ValueError(
            "a measured result needs a dataset_config or dataset_revision: without either the Hub would merge it "
            "with mmsegmentation's reported results under their source"
        )
    return EvalResult(
        task_type=TASK_TYPE,
        task_name=TASK_NAME,
        dataset_type=dataset.hub_id,
        dataset_name=dataset.pretty_name,
        dataset_config=config,
        dataset_split=measured.get("split", dataset.eval_split),
        dataset_revision=revision,
        metric_type=METRIC_TYPE,
        metric_value=measured["mIoU"],
        metric_name=f"mIoU (%), {MEASURED_PROTOCOLS[measured['protocol']]} (measured with transformers_setr)",
        source_name="transformers_setr evaluation" if measured.get("source_url") else None,
        source_url=measured.get("source_url"),
    )


def build_card_data(preset: CheckpointPreset, *, measured: dict | None = None) -> ModelCardData:
    """The card's metadata: licence, tags, datasets, base model and the model-index (mmseg's numbers, then ours)."""
    dataset = HUB_DATASETS[preset.dataset]
    eval_results = _reported_eval_results(preset)
    if measured is not None:
        eval_results.append(_measured_eval_result(preset, _validate_measured(measured)))
    return ModelCardData(
        model_name=preset.name,
        library_name="transformers",
        pipeline_tag=TASK_TYPE,
        license=MMSEG_CODE_LICENSE,
        tags=[
            "vision",
            "image-segmentation",
            "semantic-segmentation",
            "setr",
            "vit",
            "mmsegmentation",
            preset.dataset,
        ],
        datasets=[dataset.hub_id],
        metrics=[METRIC_TYPE],
        base_model=PRETRAINED_ENCODER_HUB_ID,
        eval_results=eval_results,
    )


def keep_ratio_size(height: int, width: int, test_scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale to `test_scale` = (long, short): the (height, width) the processor produces."""
    longest, shortest = test_scale
    return get_setr_resize_output_size((height, width), {"shortest_edge": shortest, "longest_edge": longest})


def vit_large_parameters(num_positions: int) -> int:
    """Parameters of SETR's ViT-L/16 encoder (patch embedding with bias, cls token, `num_positions` positions, 24
    layers, no final LayerNorm)."""
    width, mlp, layers = 1024, 4096, 24
    patch_embedding = 3 * 16 * 16 * width + width
    layer = 4 * width + (width * 3 * width + 3 * width) + (width * width + width) + (width * mlp + mlp)
    layer += mlp * width + width
    return patch_embedding + width + num_positions * width + layers * layer


def slide_window_grid(height: int, width: int, crop: int, stride: int) -> tuple[int, int]:
    """Rows and columns of mmsegmentation's sliding windows over a (height, width) input."""
    windows = slide_windows(height, width, (crop, crop), (stride, stride))
    return len({(y1, y2) for y1, y2, _, _ in windows}), len({(x1, x2) for _, _, x1, x2 in windows})


# A typical original image per dataset, (height, width), for the worked examples in the card.
_EXAMPLE_SIZES = {"ade20k": (480, 640), "cityscapes": (1024, 2048)}
_EXAMPLE_IMAGES = {"ade20k": "room.jpg", "cityscapes": "street.png"}
_DOMAINS = {
    "ade20k": "ADE20K's indoor and outdoor scenes",
    "cityscapes": "Cityscapes' street scenes of 50 (mostly German) cities, seen from a car by day",
}


def _label_texts(preset: CheckpointPreset) -> tuple[str, str, str]:
    """(training-label note, preprocessing note, id2label summary) for the preset's dataset."""
    if preset.dataset == "ade20k":
        return (
            'annotation 0 ("other objects") is ignored and the 150 classes are shifted down by one.',
            "Segmentation maps (`segmentation_maps=`, resized with nearest neighbour) follow ADE20K's convention "
            "through `do_reduce_labels=True`, set in this checkpoint's processor: raw value 0 becomes 255 (ignored) "
            "and raw value *v* becomes *v* − 1. So output class *c* is raw ADE20K annotation value *c* + 1.",
            "ADE20K's 150 SceneParsing classes in mmsegmentation's spelling, including the trailing space of "
            "`'bed '`; class *c* is raw annotation value *c* + 1",
        )
    return (
        "fine annotations as trainIds (19 classes, 255 ignored).",
        "Segmentation maps (`segmentation_maps=`, resized with nearest neighbour) must hold Cityscapes **trainIds** "
        "(0–18, 255 ignored), as `*_gtFine_labelTrainIds.png` from cityscapesScripts; map labelIds (0–33) to "
        "trainIds first. `do_reduce_labels` stays `False`.",
        "Cityscapes' 19 evaluation classes in trainId order",
    )


def _results_table(preset: CheckpointPreset, measured: dict | None) -> str:
    fps = f"{preset.fps:.2f}" if preset.fps is not None else "not reported"
    dataset = HUB_DATASETS[preset.dataset]
    header = [
        f"| {dataset.pretty_name} {dataset.eval_split} | mIoU (%) | memory | fps | source |",
        "|---|---|---|---|---|",
    ]
    rows = [
        f"| single-scale, slide {preset.crop_size}×{preset.crop_size} / stride {preset.slide_stride} | "
        f"{preset.miou_reported:.2f} | {preset.memory_gb:.2f} GB | {fps} | reported by mmsegmentation "
        f"({MMSEG_BENCHMARK_DEVICE}), not re-measured |",
        f"| multi-scale ({MMSEG_TTA_RATIOS_TEXT}) + flip | {preset.miou_ms_flip_reported:.2f} | | | "
        "reported by mmsegmentation, not re-measured |",
    ]
    if measured is not None:
        split = measured.get("split", dataset.eval_split)
        rows.append(
            f"| {MEASURED_PROTOCOLS[measured['protocol']]} ({split}) | {measured['mIoU']:.2f} | | | "
            "**measured with transformers_setr** |"
        )
    return "\n".join(header + rows)


def build_model_card(
    preset: CheckpointPreset, *, measured: dict | None = None, repo_id: str | None = None
) -> ModelCard:
    """The Hub model card of a converted SETR checkpoint.

    Args:
        preset: one of `presets.PRESETS`.
        measured: an mIoU measured with this package, added as a separate model-index result marked as measured
            (mmsegmentation's reported numbers are always there, marked as reported). Keys: `mIoU` (percent,
            required), `protocol` (`"slide"`, the default, `"whole"` or `"ms+flip"`), `split` (default
            `"validation"`), `notes` (free text for the card body), `dataset_config` / `dataset_revision` (what was
            loaded; the config defaults to the dataset table's) and `source_url` (e.g. an evaluation log).
        repo_id: the Hub repository the card is for (used in the usage snippets); defaults to `preset.hub_repo_id`.
    """
    if measured is not None:
        measured = _validate_measured(measured)
    repo_id = repo_id or hub_repo_id(preset)
    dataset = HUB_DATASETS[preset.dataset]
    card_data = build_card_data(preset, measured=measured)
    id2label = id2label_for(preset.dataset)
    train_labels, label_preprocessing, label_summary = _label_texts(preset)
    longest_edge, shortest_edge = preset.test_scale
    grid = preset.crop_size // 16
    positions = grid * grid + 1  # the position table has a cls slot for every decoder
    tokens = positions if preset.decoder_type != "mla" else grid * grid  # MLA drops the cls token
    example_h, example_w = _EXAMPLE_SIZES[preset.dataset]
    resized_h, resized_w = keep_ratio_size(example_h, example_w, preset.test_scale)
    rows, cols = slide_window_grid(resized_h, resized_w, preset.crop_size, preset.slide_stride)
    windows = f"{resized_w}×{resized_h} after resizing, i.e. {rows}×{cols} = {rows * cols} windows"
    decoder = DECODER_NAMES[preset.decoder_type]

    results_notes = (
        "`memory` is mmsegmentation's training memory per GPU and `fps` its inference speed, both measured by "
        f"mmsegmentation on {MMSEG_BENCHMARK_DEVICE} (not re-measured)."
    )
    if measured is None:
        accuracy_status = (
            "its accuracy has **not** been re-measured with this package: the numbers below are mmsegmentation's."
        )
        tests_limitation = (
            "Accuracy not re-measured: this package's tests run on random weights (and on small reduced models "
            "checked against mmsegmentation), not on ADE20K or Cityscapes; the mIoU above is mmsegmentation's report."
        )
    else:
        accuracy_status = (
            f"its mIoU was measured with this package ({MEASURED_PROTOCOLS[measured['protocol']]}), next to "
            "mmsegmentation's reported numbers below."
        )
        tests_limitation = (
            "Only the result marked as measured was computed with this package; the other numbers are "
            "mmsegmentation's reports. The package's automated tests run on random weights."
        )
        if measured.get("notes"):
            results_notes += f" Measured result: {measured['notes']}"

    if preset.decoder_type == "mla":
        auxiliary = (
            "Training also used four auxiliary FCN heads (a 1×1 classifier each) on the four MLA neck outputs; "
            "their weights are included but they run only when a loss is computed."
        )
    else:
        layers = "a 1×1" if preset.decoder_type == "naive" else "a 3×3"
        convs = f"{preset.auxiliary_num_convs} convolution{'s' if preset.auxiliary_num_convs > 1 else ''}"
        auxiliary = (
            f"Training also used three auxiliary SETR-UP heads on encoder layers 10, 15 and 20 ({convs} each, "
            f"{layers} kernel, ×4 up-sampling); their weights are included but they run only when a loss is computed."
        )

    body = CARD_TEMPLATE.substitute(
        title=(
            f"SETR-{decoder} (ViT-L/16) on {dataset.pretty_name}, {preset.crop_size}×{preset.crop_size}, "
            f"{preset.iterations // 1000}k iterations, batch {preset.batch_size}"
        ),
        decoder=decoder,
        dataset_name=dataset.pretty_name,
        accuracy_status=accuracy_status,
        num_labels=len(id2label),
        crop=preset.crop_size,
        grid=grid,
        iterations_text=f"{preset.iterations:,}",
        batch_size=preset.batch_size,
        gpus=preset.gpus,
        per_gpu=preset.batch_size // preset.gpus,
        learning_rate=preset.learning_rate,
        base_model=PRETRAINED_ENCODER_HUB_ID,
        file_name=preset.file_name,
        url=preset.url,
        mmseg_config=preset.mmseg_config,
        config_url=preset.config_url,
        mmseg_v0_config=preset.mmseg_v0_config,
        license_text=(
            f"`{MMSEG_CODE_LICENSE}`, the licence under which mmsegmentation releases its code and model zoo"
        ),
        decoder_description=DECODER_DESCRIPTIONS[preset.decoder_type],
        neck_lr=" and the MLA neck" if preset.decoder_type == "mla" else "",
        keep_s="" if preset.decoder_type == "mla" else "s",
        auxiliary_description=auxiliary,
        train_images=f"{dataset.train_images:,}",
        train_labels=train_labels,
        test_scale_text=f"{longest_edge}×{shortest_edge}",
        timm_url=TIMM_VIT_LARGE_URL,
        sha256_prefix=preset.sha256_prefix,
        log_url=preset.log_url,
        zoo_url=MMSEG_MODEL_ZOO_URL,
        converter=CONVERTER_SCRIPT,
        preset_name=preset.name,
        mmseg_version=MMSEG_REFERENCE_VERSION,
        shortest_edge=shortest_edge,
        longest_edge=longest_edge,
        stride=preset.slide_stride,
        window_example=f"a {example_w}×{example_h} image becomes {windows}",
        tta_ratios=MMSEG_TTA_RATIOS_TEXT,
        label_preprocessing=label_preprocessing,
        results_table=_results_table(preset, measured),
        device=MMSEG_BENCHMARK_DEVICE,
        results_notes=results_notes,
        repo_id=repo_id,
        example_image=_EXAMPLE_IMAGES[preset.dataset],
        label_summary=label_summary,
        id2label_json=json.dumps({str(index): name for index, name in id2label.items()}, indent=1),
        tokens=f"{tokens:,}",
        token_note="the patches; MLA drops the cls token" if preset.decoder_type == "mla" else "patches + cls",
        encoder_parameters=f"{vit_large_parameters(positions) / 1e6:.1f} M",
        example_original_size=f"{example_w}×{example_h}",
        example_windows=windows,
        eager_attention_mib=round(16 * tokens * tokens * 4 / 2**20),
        memory_gb=f"{preset.memory_gb:.2f}",
        tests_limitation=tests_limitation,
        domain=_DOMAINS[preset.dataset],
        citation=CITATION,
    )
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


# The end of the trained and converted cards: the pipeline snippet, trust_remote_code, the citation.
SHORT_USAGE_AND_CITATION = """## How to use

```python
from transformers import pipeline

import transformers_setr  # noqa: F401  (registers SETR)

segmenter = pipeline("image-segmentation", model="$repo_id")
for segment in segmenter("image.jpg"):
    print(segment["label"], segment["mask"].size)
```

Without the package, `trust_remote_code=True` loads the modelling and processing code shipped in this repository.

## Citation

```bibtex
$citation
```
"""


# What the trained card says of the default optimizer and schedule (`training.recipe.describe_optimization`).
SETR_OPTIMIZATION = (
    "SGD (momentum 0.9, no weight decay), decode and auxiliary heads at 10× the base learning rate, poly decay "
    "(power 0.9) to 1e-4"
)

TRAINED_CARD_TEMPLATE = Template(
    """
# $title

A SETR-$decoder semantic-segmentation model (Zheng et al., CVPR 2021) trained with `transformers_setr`'s \
reproduction of the mmsegmentation recipe ($recipe_name): $optimization, random resize (0.5–2.0) / crop \
(`cat_max_ratio` 0.75) / flip / photometric distortion.

- Encoder: ViT, $encoder; $num_labels classes; training crop $crop×$crop.$classes
- Training data: $data_source ($train_split split).
- Training: $steps steps, global batch $global_batch, base learning rate $learning_rate$train_loss.
- Initialised from: $init.

## Evaluation

Measured with `transformers_setr` ($protocol) on the `$eval_split` split of $data_source: every image is scored \
at its original ground-truth resolution and the intersections and unions are summed over the whole split before \
dividing (mmsegmentation's `IoUMetric`; classes absent from the split are left out of the mean).

$results

<details>
<summary>Per-class IoU (%)</summary>

$per_class

</details>

"""
    + SHORT_USAGE_AND_CITATION
)

EVAL_MODE_PROTOCOLS = {"slide": "slide", "whole": "whole", "ms_flip": "ms+flip"}


def build_trained_model_card(
    config,
    *,
    preset: CheckpointPreset,
    data,
    eval_split: str,
    metrics: dict | None,
    training: dict,
    repo_id: str | None = None,
    base_model: str | None = None,
) -> ModelCard:
    """The model card of a model trained with `scripts/train.py` / `scripts/train_no_trainer.py`.

    `metrics` is `metrics.summarize_areas` output (fractions) plus `"mode"` (`whole` / `slide` / `ms_flip`); its mIoU,
    mAcc and aAcc go into the `model-index` (in percent) as measured results. `data` is the `SegmentationData` used.
    """
    from ..data.sources import IN_MEMORY_SOURCE  # here: the card module does not otherwise need `datasets`

    decoder = DECODER_NAMES[config.decoder_type]
    name = repo_id.split("/")[-1] if repo_id else f"setr-{config.decoder_type}-{data.dataset}-trained"
    custom = getattr(data, "is_custom", False)
    hub_dataset = None if custom else HUB_DATASETS.get(data.dataset)
    layout = hub_dataset.pretty_name if hub_dataset else data.dataset
    local_folder = Path(str(data.source)).name if Path(str(data.source)).exists() else None
    if custom:
        # The user's data and classes: named as the user named them, never as ADE20K / Cityscapes.
        dataset_type = local_folder or str(data.source)
        dataset_name, dataset_config = data.name, None
        data_source = f"a local folder `{local_folder}`" if local_folder else f"`{data.source}`"
        data_source += f" (custom data, {data.num_labels} classes{', labels reduced' if data.reduce_labels else ''})"
    elif local_folder is not None:
        # Local data is not known to be the real dataset (it may be a subset or synthetic): say what it was, and
        # keep machine paths out of a card meant for the Hub.
        dataset_type, dataset_name, dataset_config = local_folder, f"local data in the {layout} layout", None
        data_source = f"a local folder `{local_folder}` in the {layout} layout"
    else:
        dataset_type, dataset_name = str(data.source), layout
        dataset_config = hub_dataset.hub_config if hub_dataset and data.source == hub_dataset.hub_id else None
        data_source = f"`{data.source}`"
    eval_results = []
    results = "Not evaluated."
    per_class = "Not evaluated."
    protocol = "not evaluated"
    if metrics is not None:
        protocol = MEASURED_PROTOCOLS[EVAL_MODE_PROTOCOLS[metrics.get("mode", "slide")]]
        for key, label in (("mIoU", "mIoU"), ("mAcc", "mAcc"), ("aAcc", "aAcc")):
            eval_results.append(
                EvalResult(
                    task_type=TASK_TYPE,
                    task_name=TASK_NAME,
                    dataset_type=dataset_type,
                    dataset_name=dataset_name,
                    dataset_split=eval_split,
                    dataset_config=dataset_config,
                    metric_type=METRIC_TYPE if key == "mIoU" else key.lower(),
                    metric_value=round(100 * float(metrics[key]), 2),
                    metric_name=f"{label} (%), {protocol} (measured with transformers_setr)",
                )
            )
        results = "\n".join(
            [
                "| metric | value (%) |",
                "|---|---|",
                *(f"| {key} | {100 * float(metrics[key]):.2f} |" for key in ("mIoU", "mAcc", "aAcc")),
            ]
        )
        per_class_iou = metrics.get("per_class_iou", {})
        absent = [label for label, value in per_class_iou.items() if math.isnan(value)]
        per_class = "\n".join(
            ["| class | IoU (%) |", "|---|---|"]
            + [f"| {label} | {100 * value:.2f} |" for label, value in per_class_iou.items() if not math.isnan(value)]
        )
        if absent:
            per_class += f"\n\n{len(absent)} classes were neither in the ground truth nor predicted (left out)."
    card_data = ModelCardData(
        model_name=name,
        library_name="transformers",
        pipeline_tag=TASK_TYPE,
        license=MMSEG_CODE_LICENSE,
        tags=["vision", "image-segmentation", "semantic-segmentation", "setr", "vit"]
        + ([] if custom else [data.dataset]),
        # only Hub ids: not a local folder, nor a `datasets` object passed in
        datasets=[dataset_type] if local_folder is None and data.source != IN_MEMORY_SOURCE else None,
        metrics=[METRIC_TYPE],
        base_model=base_model,
        eval_results=eval_results or None,
    )
    encoder = (
        f"{config.num_hidden_layers} layers, width {config.hidden_size}, {config.num_attention_heads} heads, "
        f"patch {config.patch_size}"
    )
    train_loss = training.get("train_loss")
    body = TRAINED_CARD_TEMPLATE.substitute(
        title=f"SETR-{decoder} trained on "
        + (data.name if custom else layout if local_folder is None else f"{layout}-layout data"),
        decoder=decoder,
        recipe_name=f"preset `{preset.name}`",
        optimization=training.get("optimization", SETR_OPTIMIZATION),
        encoder=encoder,
        num_labels=config.num_labels,
        classes=f"\n- Classes: {', '.join(config.id2label[i] for i in range(config.num_labels))}." if custom else "",
        crop=training.get("crop", config.slide_window[0][0]),
        data_source=data_source,
        train_split=training.get("train_split", "train"),
        steps=training.get("steps", "?"),
        global_batch=training.get("global_batch", "?"),
        learning_rate=training.get("learning_rate", "?"),
        train_loss=f", final average training loss {train_loss:.4f}" if train_loss is not None else "",
        init=base_model or training.get("init", "a fresh model (see the training log)"),
        protocol=protocol,
        eval_split=eval_split,
        results=results,
        per_class=per_class,
        repo_id=repo_id or name,
        citation=CITATION,
    )
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


CONVERTED_CARD_TEMPLATE = Template(
    """
# $title

A SETR-$decoder semantic-segmentation model (Zheng et al., CVPR 2021) converted from the mmsegmentation checkpoint \
`$checkpoint_name` with `transformers_setr` (`$converter`). It is not one of the seven released checkpoints, so \
mmsegmentation's model-zoo numbers do not apply to it.

- Encoder: ViT, $encoder; $num_labels classes; training image size $image_size (the position table's grid).
- Inference protocol: $protocol.

## Evaluation

No results are reported for this checkpoint: it has not been evaluated.

"""
    + SHORT_USAGE_AND_CITATION
)


def build_converted_model_card(config, *, checkpoint_name: str, repo_id: str | None = None) -> ModelCard:
    """The model card of a converted checkpoint that is not a preset: what it is, and no reported numbers.

    `checkpoint_name` is the source file's name (never a machine path)."""
    decoder = DECODER_NAMES[config.decoder_type]
    name = repo_id.split("/")[-1] if repo_id else f"setr-{config.decoder_type}-converted"
    card_data = ModelCardData(
        model_name=name,
        library_name="transformers",
        pipeline_tag=TASK_TYPE,
        license=MMSEG_CODE_LICENSE,
        tags=["vision", "image-segmentation", "semantic-segmentation", "setr", "vit"],
    )
    crop, stride = config.slide_window
    protocol = (
        f"sliding windows of {crop[0]}×{crop[1]}, stride {stride[0]}×{stride[1]}"
        if config.inference_mode == "slide"
        else "the whole image at once"
    )
    height, width = (config.image_size,) * 2 if isinstance(config.image_size, int) else config.image_size
    body = CONVERTED_CARD_TEMPLATE.substitute(
        title=f"SETR-{decoder} (converted from mmsegmentation)",
        decoder=decoder,
        checkpoint_name=Path(checkpoint_name).name,
        converter=CONVERTER_SCRIPT,
        encoder=(
            f"{config.num_hidden_layers} layers, width {config.hidden_size}, {config.num_attention_heads} heads, "
            f"patch {config.patch_size}"
        ),
        num_labels=config.num_labels,
        image_size=f"{height}×{width}",
        protocol=protocol,
        repo_id=repo_id or name,
        citation=CITATION,
    )
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")
