"""timm ViT weights -> the SETR encoder: the ImageNet initialisation SETR trains from.

mmsegmentation trains SETR from timm's `jx_vit_large_p16_384` (`vit_large_patch16_384`, a 24x24 patch grid, so
`pos_embed` is (1, 577, 1024) with the cls slot first). Its `tools/model_converters/vit2mmseg.py` renames the keys,
and `VisionTransformer.init_weights` resizes the position table once, when its shape differs from the model's,
to the training grid (32x32 at 512, 48x48 at 768) with the bilinear, align_corners=False `resize_pos_embed` (cls
slot kept), then loads with `strict=False`: timm's final `norm.*` and classifier `head.*` go unused, because SETR
has no final LayerNorm.

Here one declarative table (`TIMM_VIT_KEY_RULES`) maps timm keys to `SetrModel` keys; rules with no template drop
a key deliberately. Any other key, any encoder parameter the file does not provide and any shape mismatch is an
error naming the key, so a checkpoint with extra machinery (layer scale, q/k norms, a pre-norm, register tokens,
a position table without a cls slot) is refused instead of loaded half-way. Only the encoder is written: decode and
auxiliary heads keep their initialisation.
"""

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..models.setr.configuration_setr import SetrConfig
from ..models.setr.modeling_setr import SetrModel, resize_position_embeddings
from ..presets import TIMM_VIT_LARGE_URL
from .checkpoints import (
    CheckpointMismatchError,
    default_cache_dir,
    download_cached,
    fit_problems,
    load_checkpoint_file,
)
from .key_rules import POSITION_EMBEDDINGS_KEY, TIMM_VIT_KEY_RULES, map_key, rename_state_dict

TIMM_VIT_PRESETS: dict[str, str] = {"vit-large-p16-384": TIMM_VIT_LARGE_URL}


def map_timm_key(key: str) -> list[str] | None:
    """The `SetrModel` key(s) for a timm ViT key (`TIMM_VIT_KEY_RULES`): one key, three for a fused `qkv`, `[]` for
    a key dropped on purpose, `None` when no rule matches."""
    return map_key(key, TIMM_VIT_KEY_RULES)


def _square_grid(rows: int) -> tuple[int, int] | None:
    """The (side, side) patch grid of a timm position table with `rows` rows (cls slot first), or None."""
    side = math.isqrt(max(rows - 1, 0))
    return (side, side) if side > 0 and side * side == rows - 1 else None


def _encoder_shapes(config: SetrConfig) -> dict[str, tuple[int, ...]]:
    """`{key: shape}` of a `SetrModel` for `config`, built on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        encoder = SetrModel(config)
    return {key: tuple(value.shape) for key, value in encoder.state_dict().items()}


def convert_timm_vit_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: SetrConfig,
    expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, torch.Tensor]:
    """Map a timm `VisionTransformer` state dict onto `SetrModel` keys (no `setr.` prefix).

    The position table is resized to `config.image_grid` exactly as mmsegmentation's `init_weights` does: only when
    its row count differs from the model's, from the square grid timm stores, bilinearly with align_corners=False,
    the cls slot kept. (So, as in mmseg, a table with the right row count is taken as it is.)

    `expected_shapes` is the target encoder's `{key: shape}`; by default it is read from a `SetrModel(config)` built
    on the meta device. Raises `CheckpointMismatchError` listing keys no rule maps, encoder parameters the state dict
    does not provide, tensors the encoder has no place for, and shape mismatches.
    """
    if expected_shapes is None:
        expected_shapes = _encoder_shapes(config)
    converted, source_of, unmapped, problems = rename_state_dict(state_dict, map_timm_key)

    if POSITION_EMBEDDINGS_KEY in converted and POSITION_EMBEDDINGS_KEY in expected_shapes:
        table = converted[POSITION_EMBEDDINGS_KEY]
        wanted_rows = expected_shapes[POSITION_EMBEDDINGS_KEY][1]
        if table.ndim == 3 and table.shape[0] == 1 and table.shape[1] != wanted_rows:
            source_grid = _square_grid(table.shape[1])
            if source_grid is None:
                problems.append(
                    f"pos_embed: {table.shape[1]} rows are not a cls slot plus a square patch grid (timm's layout; "
                    "tables without a cls slot, `no_embed_class=True`, are not SETR's)"
                )
            else:
                resized = resize_position_embeddings(table.float(), source_grid, config.image_grid)
                converted[POSITION_EMBEDDINGS_KEY] = resized.to(table.dtype)

    if unmapped:
        problems.insert(0, "keys no rule maps (not part of a plain timm ViT): " + ", ".join(unmapped))
    problems += fit_problems(converted, expected_shapes, "encoder", lambda key: f"{source_of[key]} (as {key})")
    if problems:
        raise CheckpointMismatchError("The timm ViT checkpoint does not fit the SETR encoder. " + " | ".join(problems))
    return converted


@dataclass(frozen=True)
class TimmLoadReport:
    """What `load_timm_vit_pretrain` did."""

    source: str  # what was asked for: a preset name, a URL or a path
    path: str  # the local file read
    loaded_keys: tuple[str, ...]  # model keys written, with the base-model prefix where there is one
    dropped_keys: tuple[str, ...]  # timm keys left out on purpose (final norm, classifier)
    position_grid_resized: tuple[tuple[int, int], tuple[int, int]] | None  # (from, to) when the table was resized

    @property
    def num_loaded(self) -> int:
        return len(self.loaded_keys)

    def __str__(self) -> str:
        resized = (
            f"; position table resized {self.position_grid_resized[0]} -> {self.position_grid_resized[1]}"
            if self.position_grid_resized
            else ""
        )
        dropped = ", ".join(self.dropped_keys) or "none"
        return f"loaded {self.num_loaded} encoder tensors from {self.path}; dropped: {dropped}{resized}"


def _is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def timm_cache_dir() -> Path:
    """The default download cache of timm weights: `timm/` in the package's cache (`$TRANSFORMERS_SETR_CACHE`, else
    `~/.cache/transformers_setr`)."""
    return default_cache_dir() / "timm"


def resolve_timm_source(
    source: str | os.PathLike, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> Path:
    """A local file for a preset name (`TIMM_VIT_PRESETS`), a URL (downloaded once into the cache) or a path."""
    source = os.fspath(source)
    url = TIMM_VIT_PRESETS.get(source, source)
    if _is_url(url):
        if cache_dir is None:
            cache_dir = timm_cache_dir()
        return download_cached(url, cache_dir, progress=progress)
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{source!r} is neither a file, an http(s) URL nor a preset name ({', '.join(TIMM_VIT_PRESETS)})"
        )
    return path


def timm_state_dict_from_checkpoint(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """The model weights of a loaded timm `.pth`: a bare state dict, or one wrapped as `{"state_dict": ...}` or
    `{"model": ...}`; a `module.` prefix on every key (DistributedDataParallel) is removed."""
    state_dict = checkpoint
    for wrapper in ("state_dict", "model"):
        if isinstance(state_dict.get(wrapper), Mapping):
            state_dict = state_dict[wrapper]
            break
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
    not_tensors = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"not a state dict: these entries are not tensors: {', '.join(map(str, not_tensors))}")
    return dict(state_dict)


def load_timm_vit_pretrain(
    model: torch.nn.Module,
    source: str | os.PathLike = "vit-large-p16-384",
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> TimmLoadReport:
    """Initialise the encoder of a `SetrModel` or `SetrForSemanticSegmentation` from a timm ViT checkpoint.

    `source` is a preset name (`"vit-large-p16-384"`, the `jx_vit_large_p16_384` weights SETR trains from), an
    http(s) URL (cached in `timm_cache_dir()` unless `cache_dir` says otherwise) or a local
    `.pth` path. The file is read with `transformers_setr.conversion.load_checkpoint_file` (no code from it runs).
    Every encoder parameter is overwritten, strictly; heads and neck are left as they are.
    """
    path = resolve_timm_source(source, cache_dir, progress)
    if path.suffix == ".npz":
        raise ValueError(f"{path}: timm's JAX .npz checkpoints are not supported; use a PyTorch .pth state dict")
    state_dict = timm_state_dict_from_checkpoint(load_checkpoint_file(str(path)))

    prefix_name = getattr(model, "base_model_prefix", "")
    encoder = getattr(model, prefix_name, model) if prefix_name else model
    prefix = f"{prefix_name}." if encoder is not model else ""
    if not isinstance(encoder, SetrModel):
        raise TypeError(f"expected a SetrModel or a model holding one as `{prefix_name}`, got {type(model).__name__}")

    expected = {key: tuple(value.shape) for key, value in encoder.state_dict().items()}
    converted = convert_timm_vit_state_dict(state_dict, encoder.config, expected)
    encoder.load_state_dict(converted, strict=True)

    source_table = state_dict.get("pos_embed")
    resized = None
    if source_table is not None and source_table.shape[1] != expected[POSITION_EMBEDDINGS_KEY][1]:
        source_grid = _square_grid(source_table.shape[1])
        if source_grid is not None:  # always: the conversion refuses a table that is not square
            resized = (source_grid, encoder.config.image_grid)
    return TimmLoadReport(
        source=os.fspath(source),
        path=str(path),
        loaded_keys=tuple(prefix + key for key in converted),
        dropped_keys=tuple(key for key in state_dict if map_timm_key(key) == []),
        position_grid_resized=resized,
    )


__all__ = [
    "TIMM_VIT_KEY_RULES",
    "TIMM_VIT_PRESETS",
    "TimmLoadReport",
    "convert_timm_vit_state_dict",
    "load_timm_vit_pretrain",
    "map_timm_key",
    "resolve_timm_source",
    "timm_state_dict_from_checkpoint",
]
