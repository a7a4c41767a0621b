"""Convert released mmsegmentation SETR checkpoints into transformers folders.

`scripts/convert_mmseg_to_hf.py` is the command-line front; everything lives here so that it can be tested.

Steps: resolve the source (a preset name, a URL or a local `.pth`; downloads are cached and checked against the
sha256 prefix in the released file name), load it without running any code from it (`load_checkpoint_file`), build
the `SetrConfig` from the state dict itself (widths, depth, patch and image size, decoder kind and its convolutions,
auxiliary heads, number of classes) completed by the preset (test protocol, heads and out_indices that weights do
not reveal), take class names from the checkpoint's `meta` when present (else the dataset tables), map every key
through `conversion.MMSEG_KEY_RULES`, and write weights, config, processor config, code and model card into a
temporary folder that is renamed into place only when complete.
"""

import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from .configuration_setr import SetrConfig
from .conversion import default_cache_dir, download_cached, load_checkpoint_file, load_mmseg_state_dict
from .image_processing_pil_setr import SetrImageProcessorPil
from .label_tables import DATASETS
from .modeling_setr import SetrForSemanticSegmentation
from .presets import PRESETS, CheckpointPreset

CACHE_DIR = default_cache_dir()


def resolve_checkpoint(source: str, cache_dir: Path | None = None) -> tuple[Path, CheckpointPreset | None]:
    """A preset name, a URL or a local path -> (local path, the matching preset if any)."""
    if source in PRESETS:
        preset = PRESETS[source]
        return download_cached(preset.url, cache_dir or CACHE_DIR, preset.sha256_prefix), preset
    by_file_name = {preset.file_name: preset for preset in PRESETS.values()}
    if re.match(r"^https?://", source):
        file_name = Path(urlparse(source).path).name
        preset = by_file_name.get(file_name)
        return download_cached(source, cache_dir or CACHE_DIR, preset.sha256_prefix if preset else None), preset
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{source!r} is neither a preset ({', '.join(PRESETS)}), a URL, nor an existing file")
    return path, by_file_name.get(path.name)


def _count_indices(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(match.group(1)) for key in state_dict if (match := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def _dataset_for(num_labels: int, preset: CheckpointPreset | None) -> str | None:
    if preset is not None:
        return preset.dataset
    return {len(table["classes"]): name for name, table in DATASETS.items()}.get(num_labels)


def config_from_mmseg_checkpoint(
    checkpoint: Mapping[str, Any], preset: CheckpointPreset | None = None, overrides: Mapping[str, Any] | None = None
) -> SetrConfig:
    """Build the `SetrConfig` of an mmseg SETR checkpoint from its tensors, `meta`, the preset and `overrides`.

    Weights reveal widths, depth, patch size, the position grid, the decoder kind, conv counts and kernels and the
    number of classes. They do not reveal the attention heads, `out_indices`, up-sampling factors or which feature
    levels the auxiliary heads read: those come from the released configs (the decoder defaults), from `overrides`
    for other architectures.
    """
    state_dict = checkpoint["state_dict"]
    required = ("backbone.pos_embed", "backbone.patch_embed.projection.weight", "decode_head.conv_seg.weight")
    missing = [key for key in required if key not in state_dict]
    if missing:
        raise ValueError(f"not an mmsegmentation SETR checkpoint: missing {', '.join(missing)}")
    hidden_size = state_dict["backbone.pos_embed"].shape[-1]
    patch_size = state_dict["backbone.patch_embed.projection.weight"].shape[-1]
    positions = state_dict["backbone.pos_embed"].shape[1] - 1
    grid = round(positions**0.5)
    if grid * grid != positions:
        raise ValueError(f"backbone.pos_embed has {positions} patch positions, not a square grid; pass image_size")
    num_layers = _count_indices(state_dict, "backbone.layers.")
    num_labels = state_dict["decode_head.conv_seg.weight"].shape[0]
    is_mla = any(key.startswith("neck.") for key in state_dict)
    kwargs: dict[str, Any] = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=max(hidden_size // 64, 1),
        intermediate_size=state_dict["backbone.layers.0.ffn.layers.0.0.weight"].shape[0],
        patch_size=patch_size,
        image_size=grid * patch_size,
        patch_embeddings_bias="backbone.patch_embed.projection.bias" in state_dict,
    )
    num_aux = _count_indices(state_dict, "auxiliary_head.")
    if is_mla:
        branch_convs = _count_indices(state_dict, "decode_head.up_convs.0.")
        kwargs.update(
            decoder_type="mla",
            mla_neck_channels=state_dict["neck.mla.channel_proj.0.conv.weight"].shape[0],
            mla_channels=state_dict["decode_head.up_convs.0.0.conv.weight"].shape[0],
            decoder_channels=state_dict["decode_head.conv_seg.weight"].shape[1],
            decoder_num_convs=branch_convs,
            decoder_kernel_size=state_dict["decode_head.up_convs.0.0.conv.weight"].shape[-1],
            auxiliary_num_convs=_count_indices(state_dict, "auxiliary_head.0.convs.") if num_aux else 0,
        )
        if num_aux and kwargs["auxiliary_num_convs"]:
            kwargs["auxiliary_channels"] = state_dict["auxiliary_head.0.convs.0.conv.weight"].shape[0]
            kwargs["auxiliary_kernel_size"] = state_dict["auxiliary_head.0.convs.0.conv.weight"].shape[-1]
    else:
        num_convs = _count_indices(state_dict, "decode_head.up_convs.")
        kernel = state_dict["decode_head.up_convs.0.0.conv.weight"].shape[-1]
        kwargs.update(
            decoder_type="pup" if num_convs > 1 or kernel == 3 else "naive",
            decoder_channels=state_dict["decode_head.up_convs.0.0.conv.weight"].shape[0],
            decoder_num_convs=num_convs,
            decoder_kernel_size=kernel,
        )
        if num_aux:
            first = "auxiliary_head.0.up_convs.0.0.conv.weight"
            kwargs.update(
                auxiliary_num_convs=_count_indices(state_dict, "auxiliary_head.0.up_convs."),
                auxiliary_channels=state_dict[first].shape[0],
                auxiliary_kernel_size=state_dict[first].shape[-1],
            )
    kwargs["use_auxiliary_head"] = num_aux > 0
    if num_aux:
        kwargs["auxiliary_in_indices"] = list(range(num_aux))

    dataset = _dataset_for(num_labels, preset)
    classes = (checkpoint.get("meta") or {}).get("CLASSES")
    if classes is not None and len(classes) == num_labels:
        kwargs["id2label"] = {index: str(name) for index, name in enumerate(classes)}
    elif dataset is not None and len(DATASETS[dataset]["classes"]) == num_labels:
        kwargs["id2label"] = dict(enumerate(DATASETS[dataset]["classes"]))
    else:
        kwargs["num_labels"] = num_labels
    palette = (checkpoint.get("meta") or {}).get("PALETTE")
    if palette is not None and len(palette) == num_labels:
        kwargs["palette"] = [[int(c) for c in colour] for colour in palette]
    elif dataset is not None and len(DATASETS[dataset]["palette"]) == num_labels:
        kwargs["palette"] = [list(colour) for colour in DATASETS[dataset]["palette"]]
    kwargs.update(inference_mode="slide", slide_crop_size=kwargs["image_size"])
    if preset is not None:
        kwargs.update(slide_crop_size=preset.crop_size, slide_stride=preset.slide_stride)
    kwargs.update(overrides or {})
    if kwargs["num_hidden_layers"] != 24 and "out_indices" not in kwargs:
        raise ValueError(
            f"the encoder has {kwargs['num_hidden_layers']} layers, not the released 24: pass out_indices "
            "(and any other non-default field) as overrides"
        )
    return SetrConfig(**kwargs)


def processor_for(preset: CheckpointPreset | None, config: SetrConfig) -> SetrImageProcessorPil:
    """The image processor of a checkpoint: its dataset's test scale and label convention."""
    if preset is not None:
        longest, shortest = preset.test_scale
        reduce_labels = preset.dataset == "ade20k"
    else:
        crop = config.slide_window[0][0]
        longest, shortest = crop * 4, crop
        reduce_labels = config.num_labels == 150
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


def write_folder_atomically(output_dir: Path, write, overwrite: bool = False) -> Path:
    """Run `write(tmp_dir)` in a temporary sibling folder, then rename it to `output_dir`."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} exists; pass overwrite=True (--overwrite) to replace it")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp_dir.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should look like a plain mkdir
    try:
        write(tmp_dir)
        if output_dir.exists():
            backup = output_dir.with_name(f".{output_dir.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            output_dir.rename(backup)
            tmp_dir.rename(output_dir)
            shutil.rmtree(backup)
        else:
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
    """Convert one mmseg SETR checkpoint into a transformers folder (and optionally push it)."""
    path, preset = resolve_checkpoint(source, cache_dir)
    checkpoint = load_checkpoint_file(str(path))
    model = build_converted_model(checkpoint, preset, overrides)
    processor = processor_for(preset, model.config)

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        if preset is not None:
            from .model_card import build_model_card

            build_model_card(preset, repo_id=push_to_hub).save(folder / "README.md")

    folder = write_folder_atomically(Path(output_dir), write, overwrite=overwrite)
    if push_to_hub:
        push_folder_to_hub(folder, push_to_hub)
    return folder, model


def push_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    token: str | None = None,
    *,
    ignore_patterns: list[str] | None = None,
    commit_message: str = "Upload converted SETR checkpoint",
) -> str:
    """Create the model repo if needed and upload the folder (weights, configs, code, card)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        commit_message=commit_message,
        ignore_patterns=ignore_patterns,
    )
    return getattr(commit, "commit_url", str(commit))


def find_mmseg_python(explicit: str | None = None) -> str | None:
    """An interpreter with mmsegmentation: the one given, this one, or the repository's `.venv-mmseg`."""
    import importlib.util
    import sys

    if explicit:
        return explicit
    if importlib.util.find_spec("mmseg") is not None:
        return sys.executable
    candidate = Path(__file__).resolve().parents[2] / ".venv-mmseg" / "bin" / "python"
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
