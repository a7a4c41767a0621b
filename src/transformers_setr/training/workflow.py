"""What `setr train` (`train_command`, the Hugging Face Trainer) and `setr train-loop` (`train_loop_command`, a plain
Accelerate loop) share: the model and data arguments and their parsing, the data, the model and image processor, the
output folder checks, the model card with the measured mIoU and the push to the Hub.
"""

import functools
import json
import logging
import os
import re
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from huggingface_hub.errors import StrictDataclassError
from transformers import HfArgumentParser, set_seed

from ..cli import parse_config_overrides
from ..conversion.from_mmseg import processor_for
from ..conversion.from_timm import TIMM_VIT_PRESETS
from ..data.classes import UNDECLARED_COLORS, parse_mask_values
from ..data.dataset import SegmentationData
from ..data.errors import DatasetFormatError
from ..data.label_tables import DATASETS
from ..data.report import data_report
from ..data.sources import load_segmentation_data
from ..data.splits import DEFAULT_TRAIN_VAL_SPLIT, normalise_split
from ..evaluation.protocol import SegmentationEvalDataset, eval_collate
from ..files import write_text_atomically
from ..hub import push_folder_to_hub
from ..models.setr.configuration_setr import (
    BACKBONE_MIRRORED_FIELDS,
    BUILT_IN_ENCODER_FIELDS,
    IGNORE_INDEX,
    SetrConfig,
    default_slide_stride,
)
from ..models.setr.modeling_setr import SetrForSemanticSegmentation
from ..presets import (
    BACKBONE_NORMALISATION,
    HUB_DATASETS,
    IMAGENET_NORMALISATION,
    PRESETS,
    RELEASED_ENCODER,
    BackboneRecipe,
    CheckpointPreset,
    backbone_recipe,
)
from .adapt import adapt_for_training, trainable_parameter_count
from .augmentation import SetrTrainAugmentation
from .host_memory import keep_freed_host_memory_for
from .recipe import (
    RecipeArguments,
    SegmentationTrainDataset,
    SetrTrainer,
    SetrTrainingArguments,
    config_for_preset,
    describe_optimization,
    encoder_family,
    recipe_training_defaults,
)
from .streaming import StreamingTrainDataset

logger = logging.getLogger("transformers_setr.train")

DEFAULT_PRESET = "setr-pup-vit-large-ade20k-512"
DEFAULT_SHUFFLE_BUFFER = 1000  # --streaming: rows in the shuffle buffer
TIMM_BACKBONE_DEFAULT = "vit-large-p16-384"  # `convert_timm.TIMM_VIT_PRESETS`: the weights SETR trains from
HUB_PUSH_IGNORE = ["checkpoint-*", "checkpoint-*/**", "step_*/**", "runs/**", "*.tmp"]


@dataclass
class ModelArguments:
    preset: str = field(
        default=DEFAULT_PRESET,
        metadata={
            "help": "released recipe: dataset, decoder, crop, batch, iterations, lr",
            "choices": sorted(PRESETS),
        },
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "start from this SETR folder or Hub id instead of a fresh model"}
    )
    backbone: str | None = field(
        default=None,
        metadata={
            "help": "the encoder of a fresh model: another encoder in place of the built-in ViT (a transformers "
            "DINOv2 / DINOv3 / BEiT checkpoint as a Hub id or save_pretrained folder, or a timm ViT name), with its "
            "pretrained weights; or weights for the built-in ViT (a timm ViT preset name, URL or .pth file; 'none': "
            f"random). Default: {TIMM_BACKBONE_DEFAULT} for a ViT-L/16 encoder, random otherwise"
        },
    )
    backbone_recipe: str = field(
        default="auto",
        metadata={
            "help": "with an encoder --backbone: 'auto' trains with its family's recipe (presets.backbone_recipe: "
            "DINOv2's frozen protocol, BEiT / MAE's AdamW + layer decay + warm-up...; every value overridable by "
            "its own flag), 'none' with the preset's SETR recipe",
            "choices": ["auto", "none"],
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": 'SetrConfig fields for a fresh model, as a JSON object: \'{"hidden_size": 64, "num_hidden_layers": 4}\'; '
            'with --model_name_or_path only the loss and inference fields ("loss", "loss_sampler", ...); with an '
            "encoder --backbone only SETR's own fields (heads, out_indices, loss, inference). "
            '{"num_labels": 1}: a binary model of two-class data'
        },
    )
    # The recipe `--backbone_recipe auto` applied (set by `parse_arguments`; not an option).
    recipe: BackboneRecipe | None = field(default=None, init=False, repr=False)
    recipe_overridden: tuple[str, ...] = field(default=(), init=False, repr=False)  # its values the user replaced


@dataclass
class DataArguments:
    data: str | None = field(
        default=None,
        metadata={
            "help": "data source: a Hub dataset id or a local folder (raw ADEChallengeData2016 / Cityscapes tree, "
            "parquet export, save_to_disk folder, images/ + masks/ files). Default: the preset's Hub dataset "
            "(ADE20K only)"
        },
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "the same as --data (the transformers examples' name)"}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "the Hub dataset's configuration"})
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "say that the data is ADE20K or Cityscapes (recognised from their known sources and layouts "
            "otherwise); anything else is custom data with declared classes",
            "choices": sorted(DATASETS),
        },
    )
    id2label: str | None = field(
        default=None,
        metadata={
            "help": 'custom data: a JSON file {"0": "name", ...} naming the mask values as stored. Default: the '
            "id2label.json of the dataset folder or Hub repo"
        },
    )
    do_reduce_labels: bool | None = field(
        default=None,
        metadata={
            "help": "custom data: true when mask value 0 means unlabelled (ignored; value v is class v-1, id2label's "
            "entry 0 dropped). Default false, as in the transformers example (0 is a class). ADE20K always reduces"
        },
    )
    image_column: str | None = field(
        default=None, metadata={"help": "custom table data: the image column (default: image, pixel_values)"}
    )
    label_column: str | None = field(
        default=None,
        metadata={"help": "custom table data: the mask column (default: label, annotation, semantic_segmentation)"},
    )
    train_val_split: float = field(
        default=DEFAULT_TRAIN_VAL_SPLIT,
        metadata={"help": "custom data without a validation split: the fraction of train that becomes one"},
    )
    ignore_index: int = field(
        default=IGNORE_INDEX,
        metadata={"help": "custom data: the mask value that is not a class and not scored (above 255: 16-bit masks)"},
    )
    mask_values: str | None = field(
        default=None,
        metadata={
            "help": "custom data: the stored mask value of each class, in class order: '0,255' for binary masks "
            "stored 0/255 (0 is class 0, 255 class 1). Default: the keys of id2label"
        },
    )
    undeclared_colors: str = field(
        default="error",
        metadata={
            "help": "custom colour masks (id2label gives each class a color): a colour of no class is an error, "
            "or the ignore index",
            "choices": list(UNDECLARED_COLORS),
        },
    )
    train_split: str = field(default="train")
    eval_split: str = field(default="validation")
    max_train_samples: int | None = field(default=None)
    max_eval_samples: int | None = field(default=None)
    crop_size: int | None = field(default=None, metadata={"help": "training crop; unset: the preset's"})
    scale: str | None = field(
        default=None, metadata={"help": "'long,short' resize scale; unset: the preset's test scale"}
    )
    ratio_range: str = field(default="0.5,2.0", metadata={"help": "random resize ratio range 'low,high'"})
    data_cache_dir: str | None = field(default=None, metadata={"help": "datasets cache directory"})
    streaming: bool = field(
        default=False,
        metadata={
            "help": "train from a stream of Parquet shards (a local folder of .parquet files or a Hub dataset id), "
            "never downloaded in full: shards split per process, augmentation seeded per row (shard, position); "
            "needs --max_steps; the evaluation split is read into memory"
        },
    )
    shuffle_buffer_size: int | None = field(
        default=None,
        metadata={
            "help": f"--streaming: rows in the seeded shuffle buffer (datasets' IterableDataset.shuffle; 0: the "
            f"stream's order). Default {DEFAULT_SHUFFLE_BUFFER}"
        },
    )

    def __post_init__(self):
        if self.crop_size is not None and self.crop_size < 1:
            raise ValueError(f"--crop_size must be a positive number of pixels, got {self.crop_size}")
        if not self.streaming and self.shuffle_buffer_size is not None:
            raise ValueError("--shuffle_buffer_size is for --streaming (a map-style dataset is shuffled whole)")
        if self.shuffle_buffer_size is not None and self.shuffle_buffer_size < 0:
            raise ValueError(f"--shuffle_buffer_size must not be negative, got {self.shuffle_buffer_size}")
        if self.streaming and self.max_train_samples is not None:
            raise ValueError(
                "--max_train_samples is not for --streaming (a stream split across processes has no first rows); "
                "--max_steps bounds the run"
            )
        if self.streaming and self.train_val_split != DEFAULT_TRAIN_VAL_SPLIT:
            raise ValueError(
                "--train_val_split is not for --streaming: no validation split is carved out of a stream; give the "
                "data a validation split (validation-*.parquet) or pass --do_eval false"
            )


def _int_pair(text: str, what: str) -> tuple[int, int]:
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise ValueError(f"{what} must be two integers 'a,b', got {text!r}")
    return int(parts[0]), int(parts[1])


def build_argument_parser(*extra: type) -> HfArgumentParser:
    """The parser of `ModelArguments`, `DataArguments` and a command's own arguments (`extra` dataclasses)."""
    # transformers types `DataClassType` as a NewType of Any, which no class matches; any dataclass is what it takes
    return HfArgumentParser((ModelArguments, DataArguments, *extra))  # type: ignore[arg-type]


def parse_arguments(argv: list[str], extra=(), parser: HfArgumentParser | None = None) -> tuple:
    """Parse `ModelArguments`, `DataArguments` and the `extra` dataclasses (or the command's `parser`, from its
    `build_parser()`); the preset's recipe values are the defaults, then those of an encoder `--backbone`'s family
    (`--backbone_recipe auto`), and the options given win over both."""
    json_file = argv[0] if len(argv) == 1 and argv[0].endswith(".json") else None
    if json_file:  # all arguments in one JSON file, as in the Hugging Face examples
        from_file = json.loads(Path(json_file).read_text())
        if not isinstance(from_file, dict):
            raise ValueError(f"{json_file}: expected a JSON object of argument names and values")
        preset_name = from_file.get("preset", DEFAULT_PRESET)
        if preset_name not in PRESETS:
            raise ValueError(f"{json_file}: preset {preset_name!r} is not one of {', '.join(sorted(PRESETS))}")
        given = set(from_file)
        early_fields = ("backbone", "backbone_recipe", "model_name_or_path")
        early = ModelArguments(**{name: from_file[name] for name in early_fields if name in from_file})
    else:
        # Only `--preset` (and the encoder) are needed first, for the defaults; `--help` is left to the full parser,
        # which lists all.
        pre = HfArgumentParser(ModelArguments, add_help=False)  # type: ignore[arg-type]  # (as above)
        early = pre.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)[0]
        preset_name = early.preset
        given = {arg[2:].partition("=")[0].replace("-", "_") for arg in argv if arg.startswith("--")}
    preset = PRESETS[preset_name]
    parser = parser or build_argument_parser(*extra)
    defaults = {
        **recipe_training_defaults(preset),
        "do_train": True,
        "do_eval": True,
        "eval_strategy": "steps",  # mmseg evaluates every eval_steps (16k / 8k) and logs every 50 iterations
        "logging_steps": 50,
    }
    recipe = recipe_for_backbone(early, given)
    if recipe is not None:
        defaults.update(recipe_defaults(recipe, given))
    defaults = {key: value for key, value in defaults.items() if _has_option(parser, key)}
    if json_file:
        parsed = parser.parse_dict({**defaults, **from_file})
    else:
        parser.set_defaults(**defaults)
        _describe_preset_values(parser, preset)
        parsed = parser.parse_args_into_dataclasses(args=argv)
    parsed[0].recipe = recipe
    if recipe is not None:
        parsed[0].recipe_overridden = tuple(sorted(set(recipe.arguments) - set(recipe_defaults(recipe, given))))
    return parsed


def is_encoder_backbone(source: str | None) -> bool:
    """Whether `--backbone` names an encoder that replaces the built-in ViT (a transformers checkpoint folder or Hub
    id, a timm model name: `SetrForSemanticSegmentation.from_backbone`), rather than weights for the built-in ViT
    ('none', a timm ViT preset name, an http(s) URL, a checkpoint file)."""
    if not source or source == "none" or source in TIMM_VIT_PRESETS or source.startswith(("http://", "https://")):
        return False
    path = Path(source)
    return not (path.is_file() or path.suffix in (".pth", ".pt", ".bin", ".npz", ".safetensors"))


def recipe_for_backbone(model_args: "ModelArguments", given: set[str]) -> BackboneRecipe | None:
    """The recipe of the `--backbone` encoder's family with `--backbone_recipe auto`, None otherwise; the
    contradictions of `--backbone` and `--backbone_recipe` with the other model options are refused here, before
    anything is read."""
    encoder = is_encoder_backbone(model_args.backbone)
    if "backbone_recipe" in given and not encoder:
        raise CommandLineError(
            "--backbone_recipe is for an encoder --backbone (a transformers checkpoint or a timm ViT name), "
            f"not {model_args.backbone or 'the built-in ViT'}"
        )
    if model_args.backbone not in (None, "none") and model_args.model_name_or_path:  # "none": nothing to load
        raise CommandLineError(
            f"--backbone {model_args.backbone} builds a fresh model and --model_name_or_path "
            f"{model_args.model_name_or_path} loads a trained one: give one of them"
        )
    if not encoder or model_args.backbone_recipe == "none":
        return None
    assert model_args.backbone is not None
    backbone_config = encoder_backbone_config(model_args.backbone)
    return backbone_recipe(
        backbone_config.model_type,
        int(getattr(backbone_config, "num_hidden_layers", 0)),
        getattr(backbone_config, "backbone", None),
    )


def encoder_backbone_config(source: str) -> Any:
    """The backbone config of an encoder `--backbone` (read from its folder, the Hub or timm), or a one-line
    `CommandLineError`."""
    from ..models.setr.modeling_setr import _pretrained_backbone

    try:
        return _pretrained_backbone(source)[0]
    except (OSError, ValueError, ImportError) as error:  # not found, not a supported family, timm missing
        raise CommandLineError(f"--backbone {source}: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


# A recipe value is left out when the user gave an option it would contradict: the user's option wins.
RECIPE_VALUE_CONFLICTS = {
    "freeze_encoder": ("layer_decay", "lora_rank"),
    "layer_decay": ("freeze_encoder",),
    "poly_power": ("lr_scheduler_type",),
    "poly_min_lr": ("lr_scheduler_type",),
    "optim": ("sgd_momentum",),
}


def recipe_defaults(recipe: BackboneRecipe, given: set[str]) -> dict[str, Any]:
    """The recipe's option values that become defaults: all but those the user gave or contradicted."""
    return {
        name: value
        for name, value in recipe.arguments.items()
        if name not in given and not given.intersection(RECIPE_VALUE_CONFLICTS.get(name, ()))
    }


def _has_option(parser, dest: str) -> bool:
    return any(action.dest == dest for action in parser._actions)


def _describe_preset_values(parser, preset: CheckpointPreset) -> None:
    """Name, in `--help`, the preset's values of the options whose default (None) means "the preset's"."""
    hub = HUB_DATASETS[preset.dataset].hub_id if preset.dataset == "ade20k" else "none, pass --data"
    preset_values = {
        "data": hub,
        "crop_size": preset.crop_size,
        "scale": ",".join(map(str, preset.test_scale)),
    }
    for action in parser._actions:
        if action.dest in preset_values:
            action.help = f"{action.help or ''} [{preset.name}: {preset_values[action.dest]}]".strip()


def data_source_for(preset: CheckpointPreset, data_args: DataArguments) -> str:
    if data_args.data and data_args.dataset_name and data_args.data != data_args.dataset_name:
        raise CommandLineError(f"--data {data_args.data} and --dataset_name {data_args.dataset_name} disagree")
    source = data_args.data or data_args.dataset_name
    if source:
        return source
    if preset.dataset == "ade20k":
        return HUB_DATASETS["ade20k"].hub_id
    raise CommandLineError(
        "Cityscapes cannot be downloaded from the Hub under its licence: pass --data with a local Cityscapes root "
        "(leftImg8bit/ + gtFine/) or a Hub mirror id"
    )


def load_data(preset: CheckpointPreset, data_args: DataArguments, *, evaluate: bool = True) -> SegmentationData:
    """The data of both training commands; a bad source or class declaration is a `CommandLineError`. With
    `--streaming`, the evaluation split is read (into memory) only when `evaluate`."""
    try:
        source = data_source_for(preset, data_args)
        default_data = not (data_args.data or data_args.dataset_name)
        # what both loaders take from the data arguments
        shared: dict[str, Any] = dict(
            cache_dir=data_args.data_cache_dir,
            config_name=data_args.dataset_config_name,
            id2label=data_args.id2label,
            reduce_labels=data_args.do_reduce_labels,
            image_column=data_args.image_column,
            label_column=data_args.label_column,
            ignore_index=data_args.ignore_index,
            mask_values=parse_mask_values(data_args.mask_values, "--mask_values"),
            undeclared_colors=data_args.undeclared_colors,
        )
        dataset = data_args.dataset or (preset.dataset if default_data else None)
        if data_args.streaming:
            from ..data.streaming import load_streaming_data

            splits = (data_args.train_split, data_args.eval_split) if evaluate else (data_args.train_split,)
            return load_streaming_data(
                source, dataset, splits=splits, max_eval_samples=data_args.max_eval_samples, **shared
            )
        return load_segmentation_data(source, dataset, train_val_split=data_args.train_val_split, **shared)
    except (DatasetFormatError, FileNotFoundError) as error:
        raise CommandLineError(str(error)) from None
    except ValueError as error:  # bad argument combinations of load_segmentation_data
        raise CommandLineError(str(error)) from None


class CommandLineError(ValueError):
    """A problem with an argument or a file it names: the command lines report it in one line, without traceback."""


class OutputDirError(CommandLineError):
    """The output folder or the checkpoint to resume from does not allow the run the command line asks for."""


def check_output_dir(output_dir: str | os.PathLike, *, overwrite: bool, resume: bool) -> None:
    """Refuse to train into a folder that already holds something (an earlier run's model, card, results, or
    anything else) unless the command line asks to overwrite it or to resume from it (the rule of the Hugging Face
    examples). Used by both training commands, before anything is written."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"--output_dir {path} exists and is not a folder")
    if overwrite or resume or not path.is_dir() or next(path.iterdir(), None) is None:
        return
    raise OutputDirError(
        f"--output_dir {path} is not empty (an earlier run's output?); pass --overwrite_output_dir to write over it, "
        "or --resume_from_checkpoint last to continue that run"
    )


TRAINER_CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")
TRAINER_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def trainer_checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why `folder` is not a complete Trainer checkpoint, or None when it is one.

    The Trainer writes a checkpoint in this order: weights (and config), `optimizer.pt`, `scheduler.pt`, the RNG
    states, and last `trainer_state.json`. A run killed while saving therefore leaves no (or a truncated)
    `trainer_state.json`; resuming also needs the weights, optimizer and scheduler, so those must be present and not
    truncated (their headers / zip directories are read, not the tensors).
    """
    folder = Path(folder)
    state_file = folder / "trainer_state.json"
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError:
        return "no trainer_state.json (the Trainer writes it last)"
    except (OSError, ValueError) as error:
        return f"unreadable trainer_state.json ({error})"
    if not isinstance(state, dict) or "global_step" not in state:
        return "trainer_state.json has no global_step"
    weights = next((folder / name for name in TRAINER_WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        return f"no model weights ({', '.join(TRAINER_WEIGHT_FILES)})"
    try:
        if weights.name == "model.safetensors":
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt"):
                pass
        elif weights.name.endswith(".index.json"):
            shards = set(json.loads(weights.read_text())["weight_map"].values())
            missing = sorted(name for name in shards if not (folder / name).is_file())
            if missing:
                return f"missing weight shards: {', '.join(missing)}"
        else:
            zipfile.ZipFile(weights).close()
    except Exception as error:  # any failure to read the header means the file cannot be loaded
        return f"unreadable {weights.name} ({type(error).__name__}: {error})"
    for name in ("optimizer.pt", "scheduler.pt"):
        try:
            zipfile.ZipFile(folder / name).close()  # torch.save's zip format; a truncated file has no directory
        except FileNotFoundError:
            return f"no {name}"
        except (OSError, zipfile.BadZipFile) as error:
            return f"unreadable {name} ({error})"
    return None


def resolve_resume_checkpoint(
    requested: str | None, output_dir: str | os.PathLike, *, overwrite: bool = False
) -> str | None:
    """The checkpoint `--resume_from_checkpoint` means: a path is checked and kept; `last` is the newest complete
    `checkpoint-N` in `output_dir`, skipping (and naming) incomplete newer ones. `last` with no checkpoint starts
    from scratch (None) only in an empty or absent folder, or with `overwrite`; otherwise it is an error."""
    if not requested:
        return None
    if requested != "last":
        problem = trainer_checkpoint_problem(requested) if Path(requested).is_dir() else "not a folder"
        if problem:
            raise OutputDirError(f"--resume_from_checkpoint {requested}: not a complete checkpoint: {problem}")
        return requested
    output = Path(output_dir)
    candidates = []
    if output.is_dir():
        for folder in output.iterdir():
            match = TRAINER_CHECKPOINT_PATTERN.fullmatch(folder.name)
            if match and folder.is_dir():
                candidates.append((int(match.group(1)), folder))
    skipped: list[str] = []
    for _, folder in sorted(candidates, reverse=True):
        problem = trainer_checkpoint_problem(folder)
        if problem is None:
            if skipped:
                logger.warning(
                    "--resume_from_checkpoint last: resuming from %s, the newest complete checkpoint; skipped the "
                    "incomplete %s",
                    folder,
                    "; ".join(skipped),
                )
            else:
                logger.info("--resume_from_checkpoint last: resuming from %s", folder)
            return str(folder)
        skipped.append(f"{folder} ({problem})")
    if overwrite or not output.is_dir() or next(output.iterdir(), None) is None:
        logger.info("--resume_from_checkpoint last: no checkpoint in %s, starting from scratch", output)
        return None
    found = f"only incomplete checkpoints: {'; '.join(skipped)}" if skipped else "no checkpoint-* folder"
    raise OutputDirError(
        f"--resume_from_checkpoint last: {output} holds {found}; pass --overwrite_output_dir to start over in it"
    )


def exit_with_error(message: str) -> NoReturn:
    """A command-line error: one line on stderr, exit status 2 (argparse's), no traceback."""
    print(f"{Path(sys.argv[0]).name}: error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(2)


def _is_vit_large(config: SetrConfig) -> bool:
    return (config.hidden_size, config.num_hidden_layers, config.patch_size) == (1024, 24, 16)


def build_model(
    model_args: ModelArguments, data_args: DataArguments, data: SegmentationData
) -> tuple[SetrForSemanticSegmentation, Any]:
    """A model for `data` and the image processor of its test pipeline."""
    preset = PRESETS[model_args.preset]
    palette: list[list[int]] | None = [list(colour) for colour in data.palette]
    try:
        overrides = parse_config_overrides(model_args.config_overrides)
    except ValueError as error:
        raise CommandLineError(f"--config_overrides: {error}") from None
    id2label = data.id2label
    if "num_labels" in overrides:
        id2label = _binary_id2label(overrides.pop("num_labels"), data)
        palette = None  # a binary model's predictions are 0/1 maps; the visualisers colour them
    if model_args.model_name_or_path:
        model = _pretrained_model(model_args.model_name_or_path, overrides, id2label, palette, data)
    elif is_encoder_backbone(model_args.backbone):
        assert model_args.backbone is not None
        model = _model_on_backbone(model_args.backbone, preset, data_args, overrides, id2label, palette)
    else:
        if data_args.crop_size:
            overrides.setdefault("image_size", data_args.crop_size)
            overrides.setdefault("slide_crop_size", data_args.crop_size)
            overrides.setdefault("slide_stride", default_slide_stride(data_args.crop_size))
        if data.dataset != preset.dataset or len(id2label) != preset.num_labels:
            overrides.setdefault("id2label", id2label)
            overrides.setdefault("palette", palette)
        model = SetrForSemanticSegmentation(_checked_config(lambda: config_for_preset(preset, **overrides)))
        backbone = model_args.backbone or (TIMM_BACKBONE_DEFAULT if _is_vit_large(model.config) else "none")
        if backbone != "none":
            from ..conversion.from_timm import load_timm_vit_pretrain

            try:
                report = load_timm_vit_pretrain(model, backbone)
            except (OSError, ValueError) as error:  # a missing, unreadable or mismatched file, a failed download
                raise CommandLineError(f"--backbone {backbone}: {error}") from None
            logger.info("encoder initialised from %s: %s", backbone, report)
    model.config.semantic_loss_ignore_index = data.ignore_index
    processor = processor_for(
        preset if data.dataset == preset.dataset else None,
        model.config,
        reduce_labels=data.reduce_labels if data.is_custom else None,
    )
    if data_args.scale:
        longest, shortest = _int_pair(data_args.scale, "--scale")
        processor.size = {"shortest_edge": shortest, "longest_edge": longest}
    # The encoder sees pixels normalised as in its pretraining, in training (the augmentation reads the processor's)
    # and in every use of the saved processor: a saved model's own processor, a --backbone encoder's.
    normalisation = None
    if model_args.model_name_or_path:
        normalisation = _saved_normalisation(model_args.model_name_or_path)
    elif model.config.backbone_config is not None and model_args.backbone:
        normalisation = backbone_normalisation(model_args.backbone, model.config.backbone_config)
    if normalisation is not None:
        processor.image_mean, processor.image_std = (list(values) for values in normalisation)
    return model, processor


def _model_on_backbone(
    source: str,
    preset: CheckpointPreset,
    data_args: DataArguments,
    overrides: dict[str, Any],
    id2label: dict[int, str],
    palette: list | None,
) -> SetrForSemanticSegmentation:
    """A fresh SETR of the preset's decoder and heads whose encoder is the pretrained `--backbone` encoder
    (`SetrForSemanticSegmentation.from_backbone`); `--config_overrides` may set SETR's own fields only."""
    encoder_fields = sorted(set(overrides) & {*BACKBONE_MIRRORED_FIELDS, *BUILT_IN_ENCODER_FIELDS, "backbone_config"})
    if encoder_fields:
        raise CommandLineError(
            f"--config_overrides {encoder_fields}: the encoder is --backbone {source}'s; give only SETR's own fields "
            "(heads, out_indices, loss, inference)"
        )
    # The preset's decoder, heads, crop and slide protocol, without its ViT-L encoder (the backbone's instead)
    kwargs: dict[str, Any] = {
        name: value for name, value in preset.architecture.items() if name not in RELEASED_ENCODER
    } | {"id2label": id2label, "palette": palette}
    if data_args.crop_size:
        kwargs.update(
            image_size=data_args.crop_size,
            slide_crop_size=data_args.crop_size,
            slide_stride=default_slide_stride(data_args.crop_size),
        )
    kwargs.update(overrides)
    decoder_type = kwargs.pop("decoder_type")
    try:
        model = SetrForSemanticSegmentation.from_backbone(source, decoder_type=decoder_type, **kwargs)
    except (OSError, ImportError) as error:  # not found (offline, a wrong id), timm missing
        raise CommandLineError(f"--backbone {source}: {_first_line(error)}") from None
    except (ValueError, TypeError, StrictDataclassError) as error:  # the config's own refusals, one line each
        reason = error.__cause__ if isinstance(error, StrictDataclassError) and error.__cause__ else error
        raise CommandLineError(f"--backbone {source}: {_first_line(reason)}") from None
    logger.info("encoder %s (%s) with its pretrained weights", source, encoder_family(model.config))
    return model


Normalisation = tuple[tuple[float, ...], tuple[float, ...]]


def backbone_normalisation(source: str, backbone_config: Any) -> Normalisation:
    """The pixel mean and std (RGB, 0-1 scale) the `--backbone` encoder was pretrained with: a timm model's
    `pretrained_cfg`; a transformers checkpoint's own `preprocessor_config.json`, else its family's
    (`presets.BACKBONE_NORMALISATION`)."""
    if backbone_config.model_type == "timm_backbone":
        from timm.models import get_pretrained_cfg

        pretrained = get_pretrained_cfg(backbone_config.backbone)
        if pretrained is not None:
            return tuple(pretrained.mean), tuple(pretrained.std)
        return _saved_normalisation(source) or IMAGENET_NORMALISATION
    return _saved_normalisation(source) or BACKBONE_NORMALISATION[backbone_config.model_type]


def _saved_normalisation(source: str) -> Normalisation | None:
    """The mean and std of the image processor saved with a checkpoint (a folder or Hub id), if it has one."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError):  # no preprocessor_config.json in the checkpoint
        return None
    if not getattr(processor, "do_normalize", False) or getattr(processor, "image_mean", None) is None:
        return None
    return tuple(processor.image_mean), tuple(processor.image_std)


# What `--config_overrides` may change on a model loaded with `--model_name_or_path` (its architecture is the
# checkpoint's): the training loss and the inference protocol.
PRETRAINED_OVERRIDES = (
    "loss",
    "loss_sampler",
    "auxiliary_loss_weight",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "inference_mode",
    "slide_crop_size",
    "slide_stride",
    "slide_batch_size",
)


def _checked_config(build: Callable[[], SetrConfig]) -> SetrConfig:
    """A config from `--config_overrides`, or a `CommandLineError` with the config's own one-line reason."""
    try:
        return build()
    except (ValueError, TypeError, StrictDataclassError) as error:
        reason = error.__cause__ if isinstance(error, StrictDataclassError) and error.__cause__ else error
        raise CommandLineError(f"--config_overrides: {reason}") from None


def _binary_id2label(num_labels: object, data: SegmentationData) -> dict[int, str]:
    """`{"num_labels": 1}`: a binary model (one sigmoid channel) of two-class data; its one label is the data's
    class 1 (the foreground), class 0 being the background. Any other count is the data's to give."""
    if num_labels != 1:
        raise CommandLineError(
            f"--config_overrides: num_labels={num_labels!r}: the classes come from the data ({data.num_labels}); only "
            "num_labels=1 may be given (a binary model of two-class data)"
        )
    if data.num_labels != 2:
        raise CommandLineError(
            f"--config_overrides: num_labels=1 (a binary model) needs data with two classes, background (0) and "
            f"foreground (1); {data.name} has {data.num_labels}"
        )
    return {0: data.id2label[1]}


def _pretrained_model(
    name_or_path: str, overrides: dict[str, Any], id2label: dict[int, str], palette: list | None, data
) -> SetrForSemanticSegmentation:
    """The model of `--model_name_or_path` with the data's classes (a new classifier when they differ, every other
    weight kept) and the allowed `--config_overrides`."""
    config = SetrConfig.from_pretrained(name_or_path)
    # Other fields may be restated (the same value), not changed.
    fixed = sorted(
        name for name in set(overrides) - set(PRETRAINED_OVERRIDES) if getattr(config, name, None) != overrides[name]
    )
    if fixed:
        raise CommandLineError(
            f"--config_overrides {fixed} cannot change a model loaded with --model_name_or_path (its architecture is "
            f"the checkpoint's); allowed: {', '.join(PRETRAINED_OVERRIDES)}"
        )
    relabel = {int(k): v for k, v in (config.id2label or {}).items()} != id2label
    if relabel:
        # The user's classes: a new classifier (the main and auxiliary heads' last convolutions, whose shapes
        # change), every other weight kept.
        logger.info(
            "new classifier for the %d classes of %s (the model had %d)",
            len(id2label),
            data.name,
            config.num_labels,
        )
        config.id2label = id2label  # also rebuilds label2id and drops a palette of the wrong length
        config.palette = palette

    def apply_overrides() -> SetrConfig:
        for name, value in overrides.items():
            setattr(config, name, value)  # type-checked by the strict dataclass
        config.validate()
        return config

    _checked_config(apply_overrides)
    return SetrForSemanticSegmentation.from_pretrained(name_or_path, config=config, ignore_mismatched_sizes=relabel)


def build_train_dataset(
    data: SegmentationData,
    data_args: DataArguments,
    model: SetrForSemanticSegmentation,
    processor,
    seed: int,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> "SegmentationTrainDataset | StreamingTrainDataset":
    """The augmented training split; with `--streaming`, this rank's share of the stream (`rank` of `world_size`)."""
    crop = data_args.crop_size or model.config.slide_window[0][0]
    scale = (processor.size["longest_edge"], processor.size["shortest_edge"])
    low, high = (float(value) for value in data_args.ratio_range.split(","))
    augmentation = SetrTrainAugmentation(
        crop_size=(crop, crop),
        scale=scale,
        ratio_range=(low, high),
        ignore_index=data.ignore_index,
        num_labels=data.num_labels,
        image_mean=tuple(255 * value for value in processor.image_mean),
        image_std=tuple(255 * value for value in processor.image_std),
    )
    if data_args.streaming:
        buffer = DEFAULT_SHUFFLE_BUFFER if data_args.shuffle_buffer_size is None else data_args.shuffle_buffer_size
        return StreamingTrainDataset(
            data,
            normalise_split(data_args.train_split),
            augmentation,
            seed,
            rank=rank,
            world_size=world_size,
            shuffle_buffer_size=buffer,
        )
    return SegmentationTrainDataset(data, data_args.train_split, augmentation, seed, data_args.max_train_samples)


def build_eval_dataset(data: SegmentationData, data_args: DataArguments, processor, keep_images: bool = False):
    return SegmentationEvalDataset(
        data, processor, split=data_args.eval_split, keep_images=keep_images, max_samples=data_args.max_eval_samples
    )


def build_trainer(
    model: SetrForSemanticSegmentation,
    processor,
    data: SegmentationData,
    training_args: SetrTrainingArguments,
    data_args: DataArguments | None = None,
    *,
    train: bool | None = None,
    evaluate: bool | None = None,
) -> SetrTrainer:
    """A `SetrTrainer` for `data` with SETR's augmentation, evaluation protocol and metric (what `scripts/train.py`
    runs; `data_args` gives the crop, scale, splits and sample limits, default `DataArguments()`). `train` /
    `evaluate`: whether to give it the training / evaluation split (default: when `data` has that split)."""
    from ..evaluation.metrics import trainer_compute_metrics

    data_args = data_args or DataArguments()
    if train is None:
        train = normalise_split(data_args.train_split) in data.splits
    if evaluate is None:
        evaluate = normalise_split(data_args.eval_split) in data.splits
    return SetrTrainer(
        model=model,
        args=training_args,
        train_dataset=build_train_dataset(
            data,
            data_args,
            model,
            processor,
            training_args.seed,
            rank=training_args.process_index,
            world_size=training_args.world_size,
        )
        if train
        else None,
        eval_dataset=build_eval_dataset(data, data_args, processor, keep_images=training_args.eval_mode == "ms_flip")
        if evaluate
        else None,
        data_collator=eval_collate,  # stacks fixed-size training crops too
        processing_class=processor,
        compute_metrics=trainer_compute_metrics(
            len(model.config.prediction_id2label), model.config.prediction_id2label
        ),
    )


def write_model_card(
    output_dir: str | Path,
    model: SetrForSemanticSegmentation,
    model_args: ModelArguments,
    data: SegmentationData,
    data_args: DataArguments,
    metrics: dict[str, Any] | None,
    training: dict[str, Any],
    repo_id: str | None = None,
) -> Path:
    from ..cards.model_card import build_trained_model_card

    base_model = model_args.model_name_or_path
    if is_encoder_backbone(model_args.backbone):
        assert model_args.backbone is not None
        facts = backbone_card_facts(model_args.backbone, model_args.recipe, model_args.recipe_overridden)
        training = {**training, **facts}
        base_model = training.pop("base_model")
    card = build_trained_model_card(
        model.config,
        preset=PRESETS[model_args.preset],
        data=data,
        eval_split=data_args.eval_split,
        metrics=metrics,
        training=training,
        repo_id=repo_id,
        base_model=base_model,
    )
    path = Path(output_dir) / "README.md"
    write_text_atomically(path, str(card))
    return path


def backbone_card_facts(
    source: str, recipe: BackboneRecipe | None, overridden: tuple[str, ...] = ()
) -> dict[str, Any]:
    """What the card of a model trained on an encoder `--backbone` says of it: where the encoder's weights came from
    (a Hub id or timm name as given; a local folder by its name only, never a machine path), the recipe, and the
    `base_model` metadata (a Hub id only)."""
    folder = Path(source)
    local = folder.is_dir()
    named = f"a local folder `{folder.name}`" if local else f"`{source}`"
    hub_id = not local and "/" in source and not source.startswith(("timm/", "hf-hub:"))
    if recipe is None:
        recipe_text = "the preset's SETR recipe (`--backbone_recipe none`)"
    else:
        changed = (
            f"; replaced on the command line: {', '.join(f'--{name}' for name in overridden)}" if overridden else ""
        )
        recipe_text = f"{recipe.name} (`--backbone_recipe auto`): {recipe.summary}{changed}"
    return {
        "init": f"the pretrained encoder from {named} (`from_backbone`), heads initialised as mmsegmentation does",
        "recipe": recipe_text,
        "base_model": source if hub_id else None,
    }


def start_command(argv: list[str] | None, parser: HfArgumentParser, resume: Callable[[Any], Any]) -> tuple:
    """What both training commands do first: parse the arguments with the command's `parser`, set up logging and
    check the output folder before any process writes (so the checks see it as the user left it)."""
    try:
        model_args, data_args, args = parse_arguments(list(sys.argv[1:] if argv is None else argv), parser=parser)
    except ValueError as error:  # the arguments' own checks (`check_recipe_arguments`, TrainingArguments')
        exit_with_error(str(error))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        check_streaming_arguments(data_args, args)
        check_fsdp_arguments(args)
        check_output_dir(args.output_dir, overwrite=args.overwrite_output_dir, resume=bool(resume(args)))
    except CommandLineError as error:
        exit_with_error(str(error))
    keep_freed_host_memory_for(args)  # a CPU step's large temporaries reuse freed memory (`host_memory`)
    return model_args, data_args, args


def check_fsdp_arguments(args: Any) -> None:
    """Refuse FSDP where Accelerate would not run it: accelerate 1.15 forms an FSDP run only on GPU-like devices
    (`AcceleratorState`: MULTI_GPU, MULTI_XPU, ...); on the CPU (`Accelerator(cpu=True)`, the gloo group of our
    CPU processes) `--use_fsdp` / `--fsdp` are dropped without a word and DDP runs."""
    import torch

    asked = "--fsdp" if getattr(args, "fsdp", None) else None
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        asked = asked or "accelerate launch --use_fsdp (ACCELERATE_USE_FSDP=true)"
    on_cpu = bool(getattr(args, "use_cpu", False)) or not torch.accelerator.is_available()
    if asked and on_cpu:
        raise CommandLineError(
            f"{asked}: FSDP needs GPUs in accelerate 1.15: on the CPU it would silently run DDP (every process "
            "holding the whole model); drop it on the CPU, or run on GPUs"
        )


def check_streaming_arguments(data_args: DataArguments, args: Any) -> None:
    """What `--streaming` refuses of a command's own arguments (`args`: either command's)."""
    if not data_args.streaming:
        return
    if args.max_steps <= 0:
        raise CommandLineError(f"--streaming needs --max_steps (a stream's length is not known), got {args.max_steps}")
    epochs = getattr(args, "num_train_epochs", None)  # the Trainer's; its default is 3
    if epochs is not None and epochs != 3.0:
        raise CommandLineError(
            "--num_train_epochs is not for --streaming: a stream's length is not known, so it has no epochs; "
            "--max_steps gives the run's length"
        )


def load_data_and_model(
    model_args: "ModelArguments", data_args: "DataArguments", seed: int, *, evaluate: bool = True
) -> tuple[CheckpointPreset, SegmentationData, SetrForSemanticSegmentation, Any]:
    """The data (refused in one line when `evaluate` and a stream has no evaluation split), its report, the model."""
    set_seed(seed)
    preset = PRESETS[model_args.preset]
    try:
        data = load_data(preset, data_args, evaluate=evaluate)
        if data_args.streaming and evaluate and normalise_split(data_args.eval_split) not in data.splits:
            raise CommandLineError(
                f"--streaming: {data.source} has no {normalise_split(data_args.eval_split)} split, and none is "
                "carved out of a stream: pass --do_eval false, or give the data one (validation-*.parquet)"
            )
        report_data(data, data_args)
        model, processor = build_model(model_args, data_args, data)
    except CommandLineError as error:
        exit_with_error(str(error))
    return preset, data, model, processor


def report_data(data: SegmentationData, data_args: DataArguments) -> None:
    """The data report of the run's splits, logged once (rank 0); its refusals are `CommandLineError`s."""
    splits = [s for s in (data_args.train_split, data_args.eval_split) if normalise_split(s) in data.splits]
    streamed = data_args.streaming
    if streamed:  # the report reads a bounded sample of the stream, never all of it
        from ..data.streaming import REPORT_ROWS, report_sample

        data = report_sample(data)
    limits = {
        normalise_split(data_args.train_split): data_args.max_train_samples,
        normalise_split(data_args.eval_split): data_args.max_eval_samples,
    }
    try:
        report = data_report(data, splits, max_rows=limits, train_split=data_args.train_split)
    except DatasetFormatError as error:
        raise CommandLineError(str(error)) from None
    if int(os.environ.get("RANK", "0")) == 0:
        note = ""
        if streamed:
            train = normalise_split(data_args.train_split)
            note = f"\n  (--streaming: the {train} figures are of the stream's first {REPORT_ROWS} rows)"
        logger.info("%s%s", report, note)


def data_errors_as_one_line(command: Callable[..., int]) -> Callable[..., int]:
    """A data file found broken during training (unreadable, a mask of the wrong size...: the data report reads
    only a sample) ends the command in one line, not a traceback (also when raised in a data-loader worker)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> int:
        try:
            return command(*args, **kwargs)
        except DatasetFormatError as error:
            message = str(error)
            if "Traceback" in message:  # re-raised by torch's DataLoader: the worker's traceback, then the message
                message = message.strip().splitlines()[-1].partition(f"{type(error).__name__}: ")[2] or message
            exit_with_error(message)

    return run


def adapt_model(model: SetrForSemanticSegmentation, args: RecipeArguments):
    """The model with its encoder frozen or LoRA-wrapped as the options ask (`training.adapt`)."""
    try:
        adapted = adapt_for_training(model, args)
    except ValueError as error:  # an encoder LoRA cannot wrap
        exit_with_error(str(error))
    if args.freeze_encoder or args.lora_rank:
        trainable, total = trainable_parameter_count(adapted)
        logger.info("training %d of %d parameters (%.2f%%)", trainable, total, 100 * trainable / total)
    return adapted


def training_record(
    preset: CheckpointPreset,
    data: SegmentationData,
    data_args: DataArguments,
    config: SetrConfig,
    args: Any,
    num_processes: int,
) -> dict[str, Any]:
    """What the model card says of a training run (`args`: either command's arguments, which share these names)."""
    return {
        "preset": preset.name,
        "data": data.source,
        "steps": args.max_steps,
        "global_batch": args.per_device_train_batch_size * num_processes * args.gradient_accumulation_steps,
        "learning_rate": args.learning_rate,
        "crop": data_args.crop_size or config.slide_window[0][0],
        "optimization": describe_optimization(args),
    }


def push_repo_id(hub_model_id: str | None, push_to_hub: bool, output_dir: str | os.PathLike) -> str | None:
    return hub_model_id or (Path(output_dir).name if push_to_hub else None)


def push_trained_folder(folder: str | Path, repo_id: str, token: str | None = None) -> str:
    """Upload the final model folder (not the intermediate checkpoints) to the Hub."""
    return push_folder_to_hub(
        folder, repo_id, token=token, commit_message="Upload trained SETR model", ignore_patterns=HUB_PUSH_IGNORE
    )
