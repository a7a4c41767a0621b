"""Convert released mmsegmentation SETR checkpoints into transformers folders.

`scripts/convert_mmseg_to_hf.py` is the command-line front; everything lives here so that it can be tested.

Steps: resolve the source (a preset name, a URL or a local `.pth`; downloads are cached and checked against the
sha256 prefix in the released file name), load it without running any code from it (`load_checkpoint_file`), build
the `SetrConfig` from the state dict itself (widths, depth, patch and image size, decoder kind and its convolutions,
auxiliary heads, number of classes), completed by the mmseg config text the checkpoint carries in `meta["config"]`
(read with `ast`, never executed: heads, feature layers, up-sampling, test protocol) or else by the preset; nothing is
guessed: without either, the head count must be given. Class names come from the checkpoint's `meta` when present
(else the dataset tables); every key is mapped through `conversion.MMSEG_KEY_RULES`. Weights, config, processor
config, code and model card are written into a temporary folder that is renamed into place only when complete
(`write_folder_atomically`; `--overwrite` replaces only what an earlier conversion wrote).
"""

import ast
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from ..data.label_tables import DATASETS
from ..hub import push_folder_to_hub
from ..models.setr.configuration_setr import SetrConfig
from ..models.setr.image_processing_pil_setr import SetrImageProcessorPil
from ..models.setr.modeling_setr import SetrForSemanticSegmentation
from ..presets import PRESETS, RELEASED_ENCODER, CheckpointPreset
from .checkpoints import default_cache_dir, download_cached, load_checkpoint_file, load_mmseg_state_dict

logger = logging.getLogger(__name__)
CACHE_DIR = default_cache_dir()


def resolve_checkpoint(source: str, cache_dir: Path | None = None) -> tuple[Path, CheckpointPreset | None]:
    """A preset name, a URL or a local path -> (local path, the matching preset if any)."""
    if source in PRESETS:
        preset = PRESETS[source]
        return download_cached(preset.url, cache_dir or CACHE_DIR, preset.sha256_prefix), preset
    by_file_name = {preset.file_name: preset for preset in PRESETS.values()}
    if re.match(r"^https?://", source):
        known = by_file_name.get(Path(urlparse(source).path).name)
        return download_cached(source, cache_dir or CACHE_DIR, known.sha256_prefix if known else None), known
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{source!r} is neither a preset ({', '.join(PRESETS)}), a URL, nor an existing file")
    return path, by_file_name.get(path.name)


def _checkpoint_meta(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The checkpoint's `meta` (what training recorded: the config text, CLASSES, PALETTE), or {} when it has none."""
    meta = checkpoint.get("meta")
    return meta if isinstance(meta, Mapping) else {}


def _count_indices(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(match.group(1)) for key in state_dict if (match := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def _dataset_for(num_labels: int, preset: CheckpointPreset | None) -> str | None:
    if preset is not None:
        return preset.dataset
    return {len(table["classes"]): name for name, table in DATASETS.items()}.get(num_labels)


class _Unreadable:
    """A value in an mmseg config text that is not a plain literal (a name, an expression): never evaluated."""

    def __repr__(self) -> str:
        return "<not a literal>"


UNREADABLE = _Unreadable()


class MmsegConfigTextError(ValueError):
    """`meta["config"]` is not Python source (it is then ignored, as if absent)."""


def _literal(node: ast.AST) -> Any:
    """The value of a literal node: constants, tuples, lists, `{...}` and `dict(key=...)`; else `UNREADABLE`."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Tuple):
        return tuple(_literal(element) for element in node.elts)
    if isinstance(node, ast.List):
        return [_literal(element) for element in node.elts]
    if isinstance(node, ast.Dict) and all(key is not None for key in node.keys):
        keys = [_literal(key) for key in node.keys if key is not None]  # (all are: `**spread` keys are None)
        if all(isinstance(key, (str, int, float)) for key in keys):
            return {key: _literal(value) for key, value in zip(keys, node.values)}
    is_dict_call = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict"
    if is_dict_call and isinstance(node, ast.Call) and not node.args and all(k.arg is not None for k in node.keywords):
        return {keyword.arg: _literal(keyword.value) for keyword in node.keywords}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _literal(node.operand)
        if isinstance(operand, (int, float)) and not isinstance(operand, bool):
            return -operand if isinstance(node.op, ast.USub) else operand
    return UNREADABLE


def parse_mmseg_config_text(text: str) -> dict[str, Any]:
    """The top-level assignments of an mmseg config text (`Config.pretty_text`, which training stores in the
    checkpoint as `meta["config"]`), read with `ast` and never executed. Values that are not literals (names,
    expressions) are `UNREADABLE`. Raises `MmsegConfigTextError` when the text is not Python."""
    try:
        tree = ast.parse(text, mode="exec")
        values = {}
        for statement in tree.body:
            if not isinstance(statement, ast.Assign) or len(statement.targets) != 1:
                continue
            target = statement.targets[0]
            if isinstance(target, ast.Name):
                values[target.id] = _literal(statement.value)
        return values
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise MmsegConfigTextError(f"meta['config'] is not readable Python ({type(error).__name__})") from None


def _mmseg_int(value: Any, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"meta['config'] has {name}={value!r}, not an integer >= {minimum}")
    return value


def _mmseg_pair(value: Any, name: str) -> list[int] | int:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return [_mmseg_int(item, name, 1) for item in value]
    return _mmseg_int(value, name, 1)


def _mmseg_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def settings_from_mmseg_config(text: str, num_layers: int) -> dict[str, Any]:
    """`SetrConfig` fields the weights do not reveal, from an mmseg config text (see `parse_mmseg_config_text`),
    plus the shape facts the text states (`embed_dims`, ... under `"_stated"`) for checking against the weights.

    Read: `backbone` `num_heads`, `out_indices`, `with_cls_token`, `norm_cfg.eps`; `decode_head` `in_index`,
    `up_scale`; every `auxiliary_head`'s `in_index`, `up_scale` and loss weight; `test_cfg` (slide window).
    A field the text leaves out takes mmseg's default where mmseg has one (e.g. `up_scale=4`, LayerNorm eps 1e-5).
    """
    model = _mmseg_dict(parse_mmseg_config_text(text).get("model"))
    backbone = _mmseg_dict(model.get("backbone"))
    settings: dict[str, Any] = {}
    stated: dict[str, Any] = {}
    if backbone:
        if "num_heads" in backbone:
            settings["num_attention_heads"] = _mmseg_int(backbone["num_heads"], "backbone.num_heads", 1)
        out_indices = backbone.get("out_indices", -1)  # mmseg's default: the last layer
        if out_indices == -1:
            out_indices = num_layers - 1
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        if isinstance(out_indices, (tuple, list)):
            settings["out_indices"] = [_mmseg_int(index, "backbone.out_indices") for index in out_indices]
        if isinstance(backbone.get("with_cls_token", True), bool):
            settings["use_cls_token"] = backbone.get("with_cls_token", True)
        norm_cfg = backbone.get("norm_cfg", {"type": "LN"})  # mmseg's default; eps then is torch's, 1e-5
        eps = norm_cfg.get("eps", 1e-5) if isinstance(norm_cfg, dict) else None
        if isinstance(eps, float):
            settings["layer_norm_eps"] = eps
        for name in ("embed_dims", "num_layers", "patch_size", "img_size"):
            if name in backbone:
                stated[name] = backbone[name]
    decode_head = _mmseg_dict(model.get("decode_head"))
    if decode_head.get("type") in ("SETRUPHead", "SETRMLAHead"):
        settings["decoder_up_scale"] = _mmseg_int(decode_head.get("up_scale", 4), "decode_head.up_scale", 1)
        if decode_head["type"] == "SETRUPHead" and isinstance(decode_head.get("in_index", -1), int):
            settings["decoder_in_index"] = decode_head.get("in_index", -1)
        if "num_classes" in decode_head:
            stated["num_classes"] = decode_head["num_classes"]
    auxiliary = model.get("auxiliary_head")
    auxiliary = [auxiliary] if isinstance(auxiliary, dict) else auxiliary
    if isinstance(auxiliary, list) and all(isinstance(head, dict) for head in auxiliary):
        stated["num_auxiliary_heads"] = len(auxiliary)
        if auxiliary:
            in_indices = [head.get("in_index", -1) for head in auxiliary]
            if all(isinstance(index, int) and not isinstance(index, bool) for index in in_indices):
                settings["auxiliary_in_indices"] = in_indices
            up_scales = {head.get("up_scale", 4) for head in auxiliary if head.get("type") == "SETRUPHead"}
            if len(up_scales) > 1:
                raise ValueError(f"meta['config'] gives the auxiliary heads different up_scale values {up_scales}")
            if up_scales:
                settings["auxiliary_up_scale"] = _mmseg_int(up_scales.pop(), "auxiliary_head.up_scale", 1)
            weights = {_mmseg_dict(head.get("loss_decode")).get("loss_weight") for head in auxiliary}
            weight = weights.pop() if len(weights) == 1 else None
            if isinstance(weight, (int, float)):
                settings["auxiliary_loss_weight"] = float(weight)
    test_cfg = _mmseg_dict(model.get("test_cfg"))
    if test_cfg.get("mode") == "slide" and "crop_size" in test_cfg and "stride" in test_cfg:
        settings["inference_mode"] = "slide"
        settings["slide_crop_size"] = _mmseg_pair(test_cfg["crop_size"], "test_cfg.crop_size")
        settings["slide_stride"] = _mmseg_pair(test_cfg["stride"], "test_cfg.stride")
    elif test_cfg.get("mode") == "whole":
        settings["inference_mode"] = "whole"
    settings["_stated"] = stated
    return settings


def _tensor_shape(state_dict: Mapping[str, torch.Tensor], key: str, ndim: int) -> torch.Size:
    if key not in state_dict:
        raise ValueError(f"not an mmsegmentation SETR checkpoint: missing {key}")
    shape = state_dict[key].shape
    if len(shape) != ndim:
        raise ValueError(f"{key} has shape {tuple(shape)}; a SETR checkpoint has a {ndim}-d tensor there")
    return shape


def _check_state_dict(state_dict: Any) -> None:
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"'state_dict' is a {type(state_dict).__name__}, not a mapping of names to tensors")
    not_tensors = [
        f"{key} ({type(value).__name__})" for key, value in state_dict.items() if not torch.is_tensor(value)
    ]
    if not_tensors:
        raise ValueError(f"'state_dict' entries that are not tensors: {', '.join(map(str, not_tensors[:5]))}")


def _check_stated(stated: Mapping[str, Any], found: Mapping[str, Any]) -> None:
    """The config text must describe these weights (else it belongs to another model: nothing of it is used)."""
    contradictions = [
        f"{name} {stated[name]!r} vs {found[name]!r} in the weights"
        for name in found
        if name in stated and stated[name] != found[name]
    ]
    if contradictions:
        raise ValueError("meta['config'] describes another model than the weights: " + "; ".join(contradictions))


def config_from_mmseg_checkpoint(
    checkpoint: Mapping[str, Any], preset: CheckpointPreset | None = None, overrides: Mapping[str, Any] | None = None
) -> SetrConfig:
    """Build the `SetrConfig` of an mmseg SETR checkpoint from its tensors, `meta`, the preset and `overrides`.

    Weights reveal widths, depth, patch size, the position grid, the decoder kind, conv counts and kernels and the
    number of classes. They do not reveal the attention heads, `out_indices`, up-sampling factors, which feature
    levels the auxiliary heads read or the test protocol: those come from the mmseg config text the checkpoint
    carries (`meta["config"]`), else from the preset (the released ViT-L/16 and its configs, the decoder defaults).
    `overrides` win over both. Without any of them the head count is an error: it is never guessed.
    """
    state_dict = checkpoint["state_dict"]
    _check_state_dict(state_dict)
    pos_embed = _tensor_shape(state_dict, "backbone.pos_embed", 3)
    patch_weight = _tensor_shape(state_dict, "backbone.patch_embed.projection.weight", 4)
    classifier = _tensor_shape(state_dict, "decode_head.conv_seg.weight", 4)
    hidden_size = pos_embed[-1]
    patch_size = patch_weight[-1]
    positions = pos_embed[1] - 1
    if positions < 1 or patch_size < 1:
        raise ValueError(f"backbone.pos_embed {tuple(pos_embed)} / patch size {patch_size} give no patch positions")
    num_layers = _count_indices(state_dict, "backbone.layers.")
    if num_layers == 0:
        raise ValueError("not an mmsegmentation SETR checkpoint: no backbone.layers.*")
    num_labels = classifier[0]
    meta = _checkpoint_meta(checkpoint)
    config_text = meta.get("config")
    text_note = "not in the checkpoint's meta['config']"
    try:
        from_text = settings_from_mmseg_config(config_text, num_layers) if isinstance(config_text, str) else {}
    except MmsegConfigTextError as error:
        from_text, text_note = {}, f"unknown ({error})"
    stated = from_text.pop("_stated", {})
    stated_image_size = stated.pop("img_size", None)
    if isinstance(stated_image_size, int) and not isinstance(stated_image_size, bool):
        stated_image_size = [stated_image_size, stated_image_size]
    if isinstance(stated_image_size, (tuple, list)) and len(stated_image_size) == 2:
        stated_image_size = [_mmseg_int(size, "backbone.img_size", 1) for size in stated_image_size]
        if (stated_image_size[0] // patch_size) * (stated_image_size[1] // patch_size) != positions:
            raise ValueError(
                f"meta['config'] describes another model than the weights: img_size {stated_image_size} vs "
                f"{positions} positions in backbone.pos_embed"
            )
    else:
        stated_image_size = None
    grid = round(positions**0.5)
    if grid * grid == positions:
        image_size: int | list[int] = grid * patch_size
    elif stated_image_size is not None:
        image_size = stated_image_size
    else:
        raise ValueError(f"backbone.pos_embed has {positions} patch positions, not a square grid; pass image_size")
    is_mla = any(key.startswith("neck.") for key in state_dict)
    num_aux = _count_indices(state_dict, "auxiliary_head.")
    found = {
        "embed_dims": hidden_size,
        "num_layers": num_layers,
        "patch_size": patch_size,
        "num_classes": num_labels,
        "num_auxiliary_heads": num_aux,
    }
    if num_aux == 0:  # auxiliary heads (training only) may have been stripped from the file: their settings go too
        stated.pop("num_auxiliary_heads", None)
        from_text = {name: value for name, value in from_text.items() if not name.startswith("auxiliary_")}
    _check_stated(stated, found)
    kwargs: dict[str, Any] = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        intermediate_size=_tensor_shape(state_dict, "backbone.layers.0.ffn.layers.0.0.weight", 2)[0],
        patch_size=patch_size,
        image_size=image_size,
        patch_embeddings_bias="backbone.patch_embed.projection.bias" in state_dict,
    )
    if is_mla:
        branch_convs = _count_indices(state_dict, "decode_head.up_convs.0.")
        first_branch = _tensor_shape(state_dict, "decode_head.up_convs.0.0.conv.weight", 4)
        kwargs.update(
            decoder_type="mla",
            mla_neck_channels=_tensor_shape(state_dict, "neck.mla.channel_proj.0.conv.weight", 4)[0],
            mla_channels=first_branch[0],
            decoder_channels=classifier[1],
            decoder_num_convs=branch_convs,
            decoder_kernel_size=first_branch[-1],
            auxiliary_num_convs=_count_indices(state_dict, "auxiliary_head.0.convs.") if num_aux else 0,
        )
        if num_aux and kwargs["auxiliary_num_convs"]:
            first = _tensor_shape(state_dict, "auxiliary_head.0.convs.0.conv.weight", 4)
            kwargs["auxiliary_channels"] = first[0]
            kwargs["auxiliary_kernel_size"] = first[-1]
    else:
        num_convs = _count_indices(state_dict, "decode_head.up_convs.")
        first_conv = _tensor_shape(state_dict, "decode_head.up_convs.0.0.conv.weight", 4)
        kernel = first_conv[-1]
        kwargs.update(
            decoder_type="pup" if num_convs > 1 or kernel == 3 else "naive",
            decoder_channels=first_conv[0],
            decoder_num_convs=num_convs,
            decoder_kernel_size=kernel,
        )
        if num_aux:
            first = _tensor_shape(state_dict, "auxiliary_head.0.up_convs.0.0.conv.weight", 4)
            kwargs.update(
                auxiliary_num_convs=_count_indices(state_dict, "auxiliary_head.0.up_convs."),
                auxiliary_channels=first[0],
                auxiliary_kernel_size=first[-1],
            )
    kwargs["use_auxiliary_head"] = num_aux > 0
    if num_aux:
        kwargs["auxiliary_in_indices"] = list(range(num_aux))

    dataset = _dataset_for(num_labels, preset)
    classes = meta.get("CLASSES")
    if isinstance(classes, (list, tuple)) and len(classes) == num_labels:
        kwargs["id2label"] = {index: str(name) for index, name in enumerate(classes)}
    elif dataset is not None and len(DATASETS[dataset]["classes"]) == num_labels:
        kwargs["id2label"] = dict(enumerate(DATASETS[dataset]["classes"]))
    else:
        kwargs["num_labels"] = num_labels
    palette = meta.get("PALETTE")
    if isinstance(palette, (list, tuple)) and len(palette) == num_labels:
        try:
            kwargs["palette"] = [[int(c) for c in colour] for colour in palette]
        except (TypeError, ValueError):
            raise ValueError("meta['PALETTE'] is not a list of [r, g, b] colours") from None
    elif dataset is not None and len(DATASETS[dataset]["palette"]) == num_labels:
        kwargs["palette"] = [list(colour) for colour in DATASETS[dataset]["palette"]]
    kwargs.update(inference_mode="slide", slide_crop_size=kwargs["image_size"])
    if preset is not None:
        kwargs.update(slide_crop_size=preset.crop_size, slide_stride=preset.slide_stride)
        if (hidden_size, num_layers) == (RELEASED_ENCODER["hidden_size"], RELEASED_ENCODER["num_hidden_layers"]):
            kwargs["num_attention_heads"] = RELEASED_ENCODER["num_attention_heads"]
    kwargs.update(from_text)
    kwargs.update(overrides or {})
    # A 24-layer encoder without out_indices takes the released configs' feature layers (the decoder defaults).
    needed = ("num_attention_heads",) if kwargs["num_hidden_layers"] == 24 else ("num_attention_heads", "out_indices")
    missing = [name for name in needed if name not in kwargs]
    if missing:
        raise ValueError(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} {text_note} and not shown by the "
            f"weights ({hidden_size} wide, {num_layers} layers, not a released preset): pass {' and '.join(missing)} "
            "(command line: --num-attention-heads N, --overrides '{\"out_indices\": [...]}')"
        )
    heads = kwargs["num_attention_heads"]
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or hidden_size % heads:
        raise ValueError(f"num_attention_heads={heads!r} does not divide the width {hidden_size}")
    try:
        return SetrConfig(**kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"these settings do not make a SetrConfig: {str(error).splitlines()[0]}") from None


def _pipeline_steps(steps: Any) -> list[dict]:
    """The transforms of an mmseg pipeline, those nested in 0.x `MultiScaleFlipAug` included."""
    found = []
    for step in steps if isinstance(steps, list) else []:
        if isinstance(step, dict):
            found.append(step)
            found += _pipeline_steps(step.get("transforms"))
    return found


def processor_settings_from_mmseg_config(text: str) -> dict[str, Any]:
    """The test scale (`(long, short)`) and `reduce_labels` an mmseg config text gives its test pipeline, where it
    states them: 1.x `Resize(scale=..., keep_ratio=True)`, 0.x `MultiScaleFlipAug(img_scale=...)`, and
    `LoadAnnotations(reduce_zero_label=...)` (mmseg's default: False) in the test or train pipeline."""
    try:
        values = parse_mmseg_config_text(text)
    except MmsegConfigTextError:
        return {}
    settings: dict[str, Any] = {}
    test_steps = _pipeline_steps(values.get("test_pipeline"))
    for step in test_steps:
        scale = step.get("scale") if step.get("type") == "Resize" and step.get("keep_ratio") else None
        scale = step.get("img_scale") if step.get("type") == "MultiScaleFlipAug" else scale
        if isinstance(scale, (tuple, list)) and len(scale) == 2:
            settings["test_scale"] = (_mmseg_int(scale[0], "test scale", 1), _mmseg_int(scale[1], "test scale", 1))
            break
    for step in test_steps + _pipeline_steps(values.get("train_pipeline")):
        if step.get("type") == "LoadAnnotations" and isinstance(step.get("reduce_zero_label", False), bool):
            settings["reduce_labels"] = step.get("reduce_zero_label", False)
            break
    return settings


def processor_for(
    preset: CheckpointPreset | None,
    config: SetrConfig,
    test_scale: tuple[int, int] | None = None,
    reduce_labels: bool | None = None,
) -> SetrImageProcessorPil:
    """The image processor of a checkpoint: its dataset's test scale and label convention (the preset's, else the
    given ones, read from the checkpoint's mmseg config text, else the slide window's and ADE20K's 150 classes)."""
    if preset is not None:
        test_scale = preset.test_scale
        reduce_labels = preset.dataset == "ade20k"
    if test_scale is None:
        crop = config.slide_window[0][0]
        test_scale = (crop * 4, crop)
    if reduce_labels is None:
        reduce_labels = config.num_labels == 150
    longest, shortest = test_scale
    return SetrImageProcessorPil(
        size={"shortest_edge": shortest, "longest_edge": longest}, do_reduce_labels=reduce_labels
    )


def build_converted_model(
    checkpoint: Mapping[str, Any], preset: CheckpointPreset | None = None, overrides: Mapping[str, Any] | None = None
) -> SetrForSemanticSegmentation:
    """A `SetrForSemanticSegmentation` holding the checkpoint's weights; every key accounted for."""
    if "state_dict" not in checkpoint:
        raise ValueError(f"the checkpoint has no 'state_dict' (top-level keys: {sorted(checkpoint)})")
    config = config_from_mmseg_checkpoint(checkpoint, preset, overrides)
    model = SetrForSemanticSegmentation(config).eval()
    load_mmseg_state_dict(model, checkpoint["state_dict"])
    return model


# Every converted folder lists the files its conversion wrote; --overwrite replaces those and never any other file.
CONVERSION_MANIFEST = ".setr-conversion.json"
# A conversion writes into `.{output name}.setr-convert-tmp-XXXX` beside the output, with an owner file naming its
# process, so that a later run can remove the folder a killed one left (and nothing else).
_TMP_INFIX = ".setr-convert-tmp-"
_TMP_OWNER = ".setr-convert-owner.json"


def _is_within(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies inside it (as written and with links resolved)."""
    for candidate, base in ((path.absolute(), folder.absolute()), (path.resolve(), folder.resolve())):
        if candidate == base or base in candidate.parents:
            return True
    return False


def _process_is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporary_folders(parent: Path) -> list[Path]:
    """Remove the temporary folders killed conversions left in `parent`: only folders named as the converter names
    them, holding its owner file, written on this host by a process that no longer runs."""
    removed: list[Path] = []
    try:
        candidates = [entry for entry in Path(parent).iterdir() if _TMP_INFIX in entry.name]
    except OSError:
        return removed
    for entry in candidates:
        if entry.is_symlink() or not entry.is_dir():
            continue
        try:
            owner = json.loads((entry / _TMP_OWNER).read_text())
        except (OSError, ValueError):
            continue
        pid = owner.get("pid") if isinstance(owner, dict) else None
        if not isinstance(pid, int) or owner.get("host") != socket.gethostname() or _process_is_running(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        logger.warning("removed %s, left by a conversion that was killed", entry)
        removed.append(entry)
    return removed


def read_conversion_manifest(folder: Path) -> set[str]:
    """The names of the files a conversion wrote into `folder` (empty when it has no valid manifest)."""
    try:
        names = json.loads((Path(folder) / CONVERSION_MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    if not isinstance(names, list):
        return set()
    return {name for name in names if isinstance(name, str) and name not in ("", ".", "..") and "/" not in name}


def _write_manifest(folder: Path, names: set[str], scratch: Path) -> None:
    staged = scratch / f"{CONVERSION_MANIFEST}.new"
    staged.write_text(json.dumps({"files": sorted(names)}, indent=1) + "\n")
    os.replace(staged, Path(folder) / CONVERSION_MANIFEST)


def _replace_conversion_files(staging: Path, output_dir: Path, names: set[str]) -> None:
    """Move the new files of `staging` into an existing `output_dir`, file by file (each rename atomic), replacing
    only what the earlier conversion's manifest lists; files it does not list are never touched."""
    previous = read_conversion_manifest(output_dir)
    existing = {entry.name for entry in output_dir.iterdir()}
    foreign = sorted((names & existing) - previous)
    if foreign:
        raise FileExistsError(
            f"{output_dir} holds {', '.join(foreign)}, which no earlier conversion wrote there (its "
            f"{CONVERSION_MANIFEST} does not list them): --overwrite replaces only a conversion's own files; move them "
            "away or choose another --output"
        )
    _write_manifest(output_dir, previous | names, staging)  # a crash from here on leaves every file accounted for
    for name in sorted(names):
        os.replace(staging / name, output_dir / name)
    for name in sorted(previous - names):
        stale = output_dir / name
        if stale.is_file() or stale.is_symlink():
            stale.unlink()
    _write_manifest(output_dir, names, staging)


def write_folder_atomically(output_dir: Path, write, overwrite: bool = False) -> Path:
    """Run `write(tmp_dir)` in a temporary sibling folder, then move the result to `output_dir`.

    A new `output_dir` appears at once (one rename). With `overwrite`, an existing folder keeps every file that no
    earlier conversion wrote (`CONVERSION_MANIFEST`): the new files replace the old conversion's one by one, and a
    name that would replace another file is an error, raised before anything changes.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() or output_dir.is_symlink():
        if not output_dir.is_dir():
            raise FileExistsError(f"{output_dir} exists and is not a folder")
        if not overwrite:
            raise FileExistsError(f"{output_dir} exists; pass overwrite=True (--overwrite) to replace it")
    parent = output_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporary_folders(parent)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}{_TMP_INFIX}", dir=parent))
    except OSError as error:
        raise type(error)(f"cannot write {output_dir}: {error.strerror or error} in {parent}") from None
    try:
        (tmp_dir / _TMP_OWNER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        umask = os.umask(0)
        os.umask(umask)
        tmp_dir.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should look like a plain mkdir
        write(tmp_dir)
        names = {entry.name for entry in tmp_dir.iterdir()} - {_TMP_OWNER, CONVERSION_MANIFEST}
        if output_dir.exists():
            _replace_conversion_files(tmp_dir, output_dir, names)
            shutil.rmtree(tmp_dir)
        else:
            _write_manifest(tmp_dir, names, tmp_dir)
            (tmp_dir / _TMP_OWNER).unlink()
            tmp_dir.rename(output_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return output_dir


def convert_checkpoint(
    source: str,
    output_dir: str | Path,
    *,
    overrides: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    cache_dir: Path | None = None,
) -> tuple[Path, SetrForSemanticSegmentation]:
    """Convert one mmseg SETR checkpoint into a transformers folder (and optionally push it).

    Errors about the checkpoint are `ValueError`s whose one-line message starts with the file."""
    path, preset = resolve_checkpoint(source, cache_dir)
    if _is_within(path, Path(output_dir)):
        raise ValueError(f"{output_dir} holds the checkpoint being converted ({path}): choose another --output")
    checkpoint = load_checkpoint_file(str(path))
    meta = _checkpoint_meta(checkpoint)
    config_text = meta.get("config") if isinstance(meta.get("config"), str) else None
    try:
        model = build_converted_model(checkpoint, preset, overrides)
        from_text = processor_settings_from_mmseg_config(config_text) if config_text is not None else {}
        processor = processor_for(preset, model.config, **from_text)
    except ValueError as error:
        raise type(error)(f"{path}: {error}") from None

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        if preset is not None:
            from ..cards.model_card import build_model_card

            card = build_model_card(preset, repo_id=push_to_hub)
        else:
            from ..cards.model_card import build_converted_model_card

            card = build_converted_model_card(model.config, checkpoint_name=path.name, repo_id=push_to_hub)
        card.save(folder / "README.md")

    folder = write_folder_atomically(Path(output_dir), write, overwrite=overwrite)
    if push_to_hub:
        # only the files this conversion wrote (its manifest), never other files kept in the folder
        push_folder_to_hub(
            folder,
            push_to_hub,
            commit_message="Upload converted SETR checkpoint",
            allow_patterns=sorted(read_conversion_manifest(folder)) or None,
        )
    return folder, model


def find_mmseg_python(explicit: str | None = None) -> str | None:
    """An interpreter with mmsegmentation: the one given, this one, or the repository's `.venv-mmseg`."""
    import importlib.util
    import sys

    if explicit:
        return explicit
    if importlib.util.find_spec("mmseg") is not None:
        return sys.executable
    candidate = Path(__file__).resolve().parents[3] / ".venv-mmseg" / "bin" / "python"
    return str(candidate) if candidate.exists() else None


def verify_against_mmseg(
    model: SetrForSemanticSegmentation,
    checkpoint_path: str | Path,
    mmseg_config: str,
    sizes: tuple[str, ...] = ("512x512", "512x683"),
    mode: str = "slide",
    mmseg_python: str | None = None,
) -> dict[str, float]:
    """Max |logit difference| with mmsegmentation itself on seeded random inputs, per input size."""
    import subprocess

    from .mmseg_reference import reference_inputs

    python = find_mmseg_python(mmseg_python)
    if python is None:
        raise RuntimeError("--verify needs mmsegmentation: install it (see DEVELOPERS.md) or pass --mmseg-python")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "reference.pt"
        script = Path(__file__).with_name("mmseg_reference.py")
        command = [python, str(script), "--config", mmseg_config, "--checkpoint", str(checkpoint_path)]
        command += ["--sizes", *sizes, "--mode", mode, "--out", str(out)]
        subprocess.run(command, check=True)
        reference = torch.load(out, weights_only=True)
    errors = {}
    for case in reference["cases"]:
        height, width = case["size"]
        inputs = reference_inputs(height, width, case["seed"])
        with torch.no_grad():
            if mode == "slide":
                logits = model.slide_inference(inputs)
            else:
                logits = model(inputs, inference_mode="whole").logits
                logits = torch.nn.functional.interpolate(
                    logits, size=(height, width), mode="bilinear", align_corners=False
                )
        errors[f"{height}x{width}"] = (logits - case["logits"]).abs().max().item()
    return errors
