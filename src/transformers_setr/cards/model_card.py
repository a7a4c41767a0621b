"""Hugging Face Hub model cards: of the seven converted mmsegmentation SETR checkpoints (`build_model_card`), of a
trained model (`build_trained_model_card`) and of any other converted checkpoint (`build_converted_model_card`).

The text is Markdown in `templates/` (package data, filled by `templating`). The metadata is built with
`ModelCardData` and `EvalResult` (the YAML is generated, never written by hand). Facts come from one place each: the
architecture from the model's `SetrConfig` (`architecture`: the layers feeding the heads, the parameter count of the
model built on the meta device), the checkpoints and recipes from `presets.py`, class names from `label_tables.py`;
the reported numbers are mmsegmentation's, marked as such. `setr cards` writes the released cards to `model_cards/`
and checks that the committed ones are current; the converter writes the same card as `README.md`.

Hub repository names (`HUB_REPO_NAME_SCHEME`): each checkpoint goes to `{HUB_ORGANISATION}/{preset.name}`, which is
`preset.hub_repo_id`. Preset names read `setr-{decoder}-vit-large-{dataset}-{crop}`, with `-b8` / `-b16` added to the
two ADE20K MLA checkpoints, which differ only in their batch size.
"""

import json
import math
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..data.label_tables import id2label_for
from ..inference.multi_scale import MMSEG_TTA_RATIOS
from ..models.setr.configuration_setr import SetrConfig
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
from .architecture import (
    auxiliary_description,
    decoder_description,
    encoder_name,
    encoder_parameters,
    encoder_shape,
    parameter_count_text,
)
from .templating import CITATION, DATASET_TEXTS, CardTemplate, TemplateFields, fill, template

HUB_REPO_NAME_SCHEME = "{organisation}/{preset_name}"
"""Repo id of a converted checkpoint (see `hub_repo_id`); the default equals `preset.hub_repo_id`."""

TASK_TYPE = "image-segmentation"  # the Hub pipeline tag; there is no separate semantic-segmentation tag
TASK_NAME = "Semantic Segmentation"
METRIC_TYPE = "mean_iou"
REPORTED_SOURCE_NAME = "mmsegmentation SETR model zoo"
CONVERTER_SCRIPT = "scripts/convert_mmseg_to_hf.py"
MMSEG_REFERENCE_VERSION = "1.2.2"
MMSEG_TTA_RATIOS_TEXT = ", ".join(str(ratio) for ratio in MMSEG_TTA_RATIOS)
CARD_TAGS = ["vision", "image-segmentation", "semantic-segmentation", "setr", "vit"]

# `measured=` protocols and how the card names them; the evaluation modes of a trained model's metrics.
MEASURED_PROTOCOLS = {
    "slide": "single-scale slide inference",
    "whole": "single-scale whole-image inference",
    "ms+flip": "multi-scale + flip",
}
MEASURED_KEYS = {"mIoU", "protocol", "split", "notes", "dataset_config", "dataset_revision", "source_url"}
EVAL_MODE_PROTOCOLS = {"slide": "slide", "whole": "whole", "ms_flip": "ms+flip"}

DECODER_NAMES = {"naive": "Naive", "pup": "PUP", "mla": "MLA"}

# What the trained card says of the default optimizer and schedule (`training.recipe.describe_optimization`).
SETR_OPTIMIZATION = (
    "SGD (momentum 0.9, no weight decay), decode and auxiliary heads at 10× the base learning rate, poly decay "
    "(power 0.9) to 1e-4"
)


def _card(card_data: ModelCardData, body: str) -> ModelCard:
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


def _card_data(name: str, *, tags: list[str], **fields: Any) -> ModelCardData:
    common: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": TASK_TYPE, "license": MMSEG_CODE_LICENSE}
    return ModelCardData(model_name=name, tags=CARD_TAGS + tags, **common, **fields)


def _eval_result(value: float, metric_name: str, metric_type: str = METRIC_TYPE, **dataset: Any) -> EvalResult:
    task: dict[str, Any] = {"task_type": TASK_TYPE, "task_name": TASK_NAME}
    return EvalResult(**task, **dataset, metric_type=metric_type, metric_value=value, metric_name=metric_name)


# --- the released checkpoints ------------------------------------------------------------------------------------


def hub_repo_id(preset: CheckpointPreset, organisation: str = HUB_ORGANISATION) -> str:
    """`HUB_REPO_NAME_SCHEME` filled in: `{organisation}/{preset.name}` (`preset.hub_repo_id` for the default)."""
    return HUB_REPO_NAME_SCHEME.format(organisation=organisation, preset_name=preset.name)


def preset_config(preset: CheckpointPreset) -> SetrConfig:
    """The released model's config: its architecture from `presets.py`, its classes from `label_tables.py`."""
    return SetrConfig(**preset.architecture, id2label=id2label_for(preset.dataset))


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
    # No `dataset_config`: mmsegmentation scored the official validation files, not a `load_dataset` config. It also
    # keeps these results apart from a measured one (the Hub groups results by task and dataset).
    common = dict(dataset_type=dataset.hub_id, dataset_name=dataset.pretty_name, dataset_split=dataset.eval_split)
    common.update(source_name=REPORTED_SOURCE_NAME, source_url=MMSEG_MODEL_ZOO_URL)
    reported = "(reported by mmsegmentation, not re-measured)"
    slide = f"single-scale slide {preset.crop_size}/{preset.slide_stride}"
    return [
        _eval_result(preset.miou_reported, f"mIoU (%), {slide} {reported}", **common),
        _eval_result(preset.miou_ms_flip_reported, f"mIoU (%), multi-scale + flip {reported}", **common),
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
    source: dict[str, Any] = {"source_name": "transformers_setr evaluation" if measured.get("source_url") else None}
    return _eval_result(
        measured["mIoU"],
        f"mIoU (%), {MEASURED_PROTOCOLS[measured['protocol']]} (measured with transformers_setr)",
        dataset_type=dataset.hub_id,
        dataset_name=dataset.pretty_name,
        dataset_config=config,
        dataset_split=measured.get("split", dataset.eval_split),
        dataset_revision=revision,
        **source,
        source_url=measured.get("source_url"),
    )


def build_card_data(preset: CheckpointPreset, *, measured: dict | None = None) -> ModelCardData:
    """The card's metadata: licence, tags, datasets, base model and the model-index (mmseg's numbers, then ours)."""
    eval_results = _reported_eval_results(preset)
    if measured is not None:
        eval_results.append(_measured_eval_result(preset, _validate_measured(measured)))
    return _card_data(
        preset.name,
        tags=["mmsegmentation", preset.dataset],
        datasets=[HUB_DATASETS[preset.dataset].hub_id],
        metrics=[METRIC_TYPE],
        base_model=PRETRAINED_ENCODER_HUB_ID,
        eval_results=eval_results,
    )


def keep_ratio_size(height: int, width: int, test_scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale to `test_scale` = (long, short): the (height, width) the processor produces."""
    longest, shortest = test_scale
    return get_setr_resize_output_size((height, width), {"shortest_edge": shortest, "longest_edge": longest})


def slide_window_grid(height: int, width: int, crop: int, stride: int) -> tuple[int, int]:
    """Rows and columns of mmsegmentation's sliding windows over a (height, width) input."""
    windows = slide_windows(height, width, (crop, crop), (stride, stride))
    return len({(y1, y2) for y1, y2, _, _ in windows}), len({(x1, x2) for _, _, x1, x2 in windows})


def _accuracy_texts(preset: CheckpointPreset, measured: dict | None) -> dict[str, str]:
    """What the card says of its accuracy: mmsegmentation's numbers only, or also one measured with this package."""
    if measured is None:
        return {
            "accuracy_status": "its accuracy has **not** been re-measured with this package: the numbers below are "
            "mmsegmentation's.",
            "tests_limitation": "Accuracy not re-measured: this package's tests run on random weights (and on small "
            "reduced models checked against mmsegmentation), not on ADE20K or Cityscapes; the mIoU above is "
            "mmsegmentation's report.",
            "measured_row": "",
            "measured_notes": "",
        }
    protocol = MEASURED_PROTOCOLS[measured["protocol"]]
    split = measured.get("split", HUB_DATASETS[preset.dataset].eval_split)
    return {
        "accuracy_status": f"its mIoU was measured with this package ({protocol}), next to mmsegmentation's "
        "reported numbers below.",
        "tests_limitation": "Only the result marked as measured was computed with this package; the other numbers "
        "are mmsegmentation's reports. The package's automated tests run on random weights.",
        "measured_row": f"\n| {protocol} ({split}) | {measured['mIoU']:.2f} | | | **measured with transformers_setr** |",
        "measured_notes": f" Measured result: {measured['notes']}" if measured.get("notes") else "",
    }


def _released_facts(preset: CheckpointPreset, config: SetrConfig) -> dict[str, Any]:
    """What the released card computes from the preset and the config; the template reads the rest from them."""
    dataset = HUB_DATASETS[preset.dataset]
    decoder = DECODER_NAMES[preset.decoder_type]
    grid_height, grid_width = config.image_grid
    tokens = grid_height * grid_width + (1 if config.use_cls_token else 0)
    text = DATASET_TEXTS[preset.dataset]
    example_h, example_w = text["example_size"]
    resized_h, resized_w = keep_ratio_size(example_h, example_w, preset.test_scale)
    rows, cols = slide_window_grid(resized_h, resized_w, preset.crop_size, preset.slide_stride)
    windows = f"{resized_w}×{resized_h} after resizing, i.e. {rows}×{cols} = {rows * cols} windows"
    return {
        "preset": preset,
        "config": config,
        "dataset": dataset,
        "text": text,
        "title": f"SETR-{decoder} (ViT-L/16) on {dataset.pretty_name}, {preset.crop_size}×{preset.crop_size}, "
        f"{preset.iterations // 1000}k iterations, batch {preset.batch_size}",
        "decoder": decoder,
        "iterations_text": f"{preset.iterations:,}",
        "per_gpu": preset.batch_size // preset.gpus,
        "neck_lr": " and the MLA neck" if preset.decoder_type == "mla" else "",
        "keep_s": "" if preset.decoder_type == "mla" else "s",
        "train_images": f"{dataset.train_images:,}",
        "test_scale_text": "×".join(str(side) for side in preset.test_scale),
        "longest_edge": preset.test_scale[0],
        "shortest_edge": preset.test_scale[1],
        "memory_gb": f"{preset.memory_gb:.2f}",
        "miou_reported": f"{preset.miou_reported:.2f}",
        "miou_ms_flip_reported": f"{preset.miou_ms_flip_reported:.2f}",
        "fps": f"{preset.fps:.2f}" if preset.fps is not None else "not reported",
        "layer_norm_eps": f"{config.layer_norm_eps:.0e}".replace("e-0", "e-"),
        "encoder_parameters": parameter_count_text(encoder_parameters(config)),
        "grid": grid_height if grid_height == grid_width else f"{grid_height}×{grid_width}",
        "decoder_description": decoder_description(config),
        "auxiliary_description": auxiliary_description(config),
        "tokens": f"{tokens:,}",
        "token_note": "patches + cls" if config.use_cls_token else "the patches; MLA drops the cls token",
        "eager_attention_mib": round(config.num_attention_heads * tokens * tokens * 4 / 2**20),
        "id2label_json": json.dumps({str(index): name for index, name in (config.id2label or {}).items()}, indent=1),
        "window_example": f"a {example_w}×{example_h} image becomes {windows}",
        "example_original_size": f"{example_w}×{example_h}",
        "example_windows": windows,
    }


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
    body = fill(
        "released.md",
        **_released_facts(preset, preset_config(preset)),
        **_accuracy_texts(preset, measured),
        license_text=f"`{MMSEG_CODE_LICENSE}`, the licence under which mmsegmentation releases its code and model zoo",
        base_model=PRETRAINED_ENCODER_HUB_ID,
        timm_url=TIMM_VIT_LARGE_URL,
        zoo_url=MMSEG_MODEL_ZOO_URL,
        converter=CONVERTER_SCRIPT,
        mmseg_version=MMSEG_REFERENCE_VERSION,
        tta_ratios=MMSEG_TTA_RATIOS_TEXT,
        device=MMSEG_BENCHMARK_DEVICE,
        repo_id=repo_id or hub_repo_id(preset),
        citation=CITATION,
    )
    return _card(build_card_data(preset, measured=measured), body)


# --- trained and converted models --------------------------------------------------------------------------------


def _short_card(name: str, config: SetrConfig, **fields: Any) -> str:
    """`templates/{name}` and the usage and citation that end every card but the released ones."""
    text = f"{template(name).template}\n{template('usage.md').template}"
    fields.update(
        config=config,
        decoder=DECODER_NAMES[config.decoder_type],
        encoder_name=encoder_name(config),
        encoder=encoder_shape(config),
        encoder_parameters=parameter_count_text(encoder_parameters(config)),
        citation=CITATION,
    )
    return CardTemplate(text).substitute(TemplateFields(fields))


def _trained_dataset(data: Any) -> tuple[dict[str, Any], str, str]:
    """(the model-index dataset fields, the data named in the body, the title's data) of a trained model's data."""
    custom = getattr(data, "is_custom", False)
    hub_dataset = None if custom else HUB_DATASETS.get(data.dataset)
    layout = hub_dataset.pretty_name if hub_dataset else data.dataset
    local_folder = Path(str(data.source)).name if Path(str(data.source)).exists() else None
    if custom:
        # The user's data and classes: named as the user named them, never as ADE20K / Cityscapes.
        dataset = {"dataset_type": local_folder or str(data.source), "dataset_name": data.name}
        source = f"a local folder `{local_folder}`" if local_folder else f"`{data.source}`"
        reduced = ", labels reduced" if data.reduce_labels else ""
        return dataset, f"{source} (custom data, {data.num_labels} classes{reduced})", data.name
    if local_folder is not None:
        # Local data is not known to be the real dataset (it may be a subset or synthetic): say what it was, and
        # keep machine paths out of a card meant for the Hub.
        dataset = {"dataset_type": local_folder, "dataset_name": f"local data in the {layout} layout"}
        return dataset, f"a local folder `{local_folder}` in the {layout} layout", f"{layout}-layout data"
    config = hub_dataset.hub_config if hub_dataset and data.source == hub_dataset.hub_id else None
    return (
        {"dataset_type": str(data.source), "dataset_name": layout, "dataset_config": config},
        f"`{data.source}`",
        layout,
    )


def _evaluation_texts(metrics: dict | None, dataset: dict[str, Any], split: str) -> tuple[list[EvalResult], dict]:
    """The measured results of a trained model: model-index entries and the body's tables."""
    if metrics is None:
        return [], {"protocol": "not evaluated", "results": "Not evaluated.", "per_class": "Not evaluated."}
    protocol = MEASURED_PROTOCOLS[EVAL_MODE_PROTOCOLS[metrics.get("mode", "slide")]]
    keys = ("mIoU", "mAcc", "aAcc")
    eval_results = [
        _eval_result(
            round(100 * float(metrics[key]), 2),
            f"{key} (%), {protocol} (measured with transformers_setr)",
            METRIC_TYPE if key == "mIoU" else key.lower(),
            **dataset,
            dataset_split=split,
        )
        for key in keys
    ]
    results = [
        "| metric | value (%) |",
        "|---|---|",
        *(f"| {key} | {100 * float(metrics[key]):.2f} |" for key in keys),
    ]
    per_class_iou = metrics.get("per_class_iou", {})
    scored = [f"| {label} | {100 * value:.2f} |" for label, value in per_class_iou.items() if not math.isnan(value)]
    per_class = "\n".join(["| class | IoU (%) |", "|---|---|", *scored])
    absent = sum(math.isnan(value) for value in per_class_iou.values())
    if absent:
        per_class += f"\n\n{absent} classes were neither in the ground truth nor predicted (left out)."
    return eval_results, {"protocol": protocol, "results": "\n".join(results), "per_class": per_class}


def build_trained_model_card(
    config: SetrConfig,
    *,
    preset: CheckpointPreset,
    data: Any,
    eval_split: str,
    metrics: dict | None,
    training: dict,
    repo_id: str | None = None,
    base_model: str | None = None,
) -> ModelCard:
    """The model card of a model trained with `setr train` / `setr train-loop`.

    `metrics` is `metrics.summarize_areas` output (fractions) plus `"mode"` (`whole` / `slide` / `ms_flip`); its mIoU,
    mAcc and aAcc go into the `model-index` (in percent) as measured results. `data` is the `SegmentationData` used.
    """
    from ..data.sources import IN_MEMORY_SOURCE  # here: the card module does not otherwise need `datasets`

    name = repo_id.split("/")[-1] if repo_id else f"setr-{config.decoder_type}-{data.dataset}-trained"
    custom = getattr(data, "is_custom", False)
    dataset, data_source, title_data = _trained_dataset(data)
    eval_results, evaluation = _evaluation_texts(metrics, dataset, eval_split)
    # only Hub ids: not a local folder, nor a `datasets` object passed in
    hub_id = not Path(str(data.source)).exists() and data.source != IN_MEMORY_SOURCE
    card_data = _card_data(
        name,
        tags=[] if custom else [data.dataset],
        datasets=[dataset["dataset_type"]] if hub_id else None,
        metrics=[METRIC_TYPE],
        base_model=base_model,
        eval_results=eval_results or None,
    )
    train_loss = training.get("train_loss")
    id2label: dict[Any, str] = dict(config.id2label or {})
    classes = ", ".join(id2label[i] for i in range(len(id2label)))
    body = _short_card(
        "trained.md",
        config,
        **evaluation,
        title=f"SETR-{DECODER_NAMES[config.decoder_type]} trained on {title_data}",
        recipe_name=f"preset `{preset.name}`",
        optimization=training.get("optimization", SETR_OPTIMIZATION),
        classes=f"\n- Classes: {classes}." if custom else "",
        crop=training.get("crop", config.slide_window[0][0]),
        data_source=data_source,
        train_split=training.get("train_split", "train"),
        steps=training.get("steps", "?"),
        global_batch=training.get("global_batch", "?"),
        learning_rate=training.get("learning_rate", "?"),
        train_loss=f", final average training loss {train_loss:.4f}" if train_loss is not None else "",
        init=base_model or training.get("init", "a fresh model (see the training log)"),
        backbone_recipe=f"\n- Recipe: {training['recipe']}." if training.get("recipe") else "",
        eval_split=eval_split,
        repo_id=repo_id or name,
    )
    return _card(card_data, body)


def build_converted_model_card(config: SetrConfig, *, checkpoint_name: str, repo_id: str | None = None) -> ModelCard:
    """The model card of a converted checkpoint that is not a preset: what it is, and no reported numbers.

    `checkpoint_name` is the source file's name (never a machine path)."""
    name = repo_id.split("/")[-1] if repo_id else f"setr-{config.decoder_type}-converted"
    crop, stride = config.slide_window
    protocol = (
        f"sliding windows of {crop[0]}×{crop[1]}, stride {stride[0]}×{stride[1]}"
        if config.inference_mode == "slide"
        else "the whole image at once"
    )
    height, width = (config.image_size,) * 2 if isinstance(config.image_size, int) else config.image_size
    body = _short_card(
        "converted.md",
        config,
        title=f"SETR-{DECODER_NAMES[config.decoder_type]} (converted from mmsegmentation)",
        checkpoint_name=Path(checkpoint_name).name,
        converter=CONVERTER_SCRIPT,
        image_size=f"{height}×{width}",
        protocol=protocol,
        repo_id=repo_id or name,
    )
    return _card(_card_data(name, tags=[]), body)
