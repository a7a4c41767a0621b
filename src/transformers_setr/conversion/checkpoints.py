"""mmsegmentation SETR state dict -> transformers `SetrForSemanticSegmentation` state dict.

One declarative table (`MMSEG_KEY_RULES`) holds every key correspondence. A rule maps a regular expression on the
mmsegmentation key to a template for the transformers key; `qkv` rules split the fused `in_proj` tensors into q, k
and v (rows in that order). BatchNorm's `num_batches_tracked` is the only thing dropped. Any key that no rule
matches, any parameter the model lacks or does not receive, and any shape mismatch is an error naming the key.
"""

import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..models.setr.configuration_setr import SetrConfig
from ..models.setr.modeling_setr import SetrForSemanticSegmentation
from .key_rules import MMSEG_KEY_RULES, map_key, rename_state_dict
from .mmseg_reference import numpy_safe_globals

_DROPPED_SUFFIX = ".num_batches_tracked"


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model: names every offending key."""


def _normalise_auxiliary_prefix(key: str) -> str:
    # mmseg names a list of auxiliary heads `auxiliary_head.<i>.`, a single one `auxiliary_head.`.
    if key.startswith("auxiliary_head."):
        rest = key[len("auxiliary_head.") :]
        index, _, tail = rest.partition(".")
        return f"auxiliary_heads.{index}.{tail}" if index.isdigit() else f"auxiliary_heads.0.{rest}"
    return key


def map_mmseg_key(key: str, decoder_type: str) -> list[str] | None:
    """The transformers key(s) for an mmsegmentation key (`MMSEG_KEY_RULES`), or None when no rule matches."""
    return map_key(_normalise_auxiliary_prefix(key), MMSEG_KEY_RULES, decoder_type)


def convert_mmseg_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: SetrConfig,
    expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, torch.Tensor]:
    """Map an mmsegmentation SETR state dict onto `SetrForSemanticSegmentation` keys.

    `expected_shapes` (the target model's `{key: shape}`) turns on the completeness checks: every model key must be
    produced, with the right shape. Raises `CheckpointMismatchError` listing unmapped, missing and mis-shaped keys.
    """
    kept = {key: tensor for key, tensor in state_dict.items() if not key.endswith(_DROPPED_SUFFIX)}
    converted, _, unmapped, split_problems = rename_state_dict(
        kept, lambda key: map_mmseg_key(key, config.decoder_type)
    )
    problems = []
    if unmapped:
        problems.append("keys no rule maps (unexpected in a SETR checkpoint): " + ", ".join(unmapped))
    problems += split_problems
    if expected_shapes is not None:
        problems += fit_problems(converted, expected_shapes, "model")
    if problems:
        raise CheckpointMismatchError("The checkpoint does not fit the SETR model. " + " | ".join(problems))
    return converted


def fit_problems(
    converted: Mapping[str, torch.Tensor],
    expected_shapes: Mapping[str, tuple[int, ...]],
    target: str,
    describe: Callable[[str], str] = str,
) -> list[str]:
    """Missing, extra and mis-shaped keys of a converted state dict against a model's `{key: shape}`, as messages.
    `describe` names a converted key for the user (e.g. with the checkpoint key it came from)."""
    missing = sorted(set(expected_shapes) - set(converted))
    extra = sorted(set(converted) - set(expected_shapes))
    mismatched = [
        f"{describe(key)}: checkpoint {tuple(converted[key].shape)} vs {target} {tuple(expected_shapes[key])}"
        for key in sorted(set(converted) & set(expected_shapes))
        if tuple(converted[key].shape) != tuple(expected_shapes[key])
    ]
    problems = []
    if missing:
        problems.append(f"{target} parameters the checkpoint does not provide: " + ", ".join(missing))
    if extra:
        problems.append(f"checkpoint tensors the {target} has no place for: " + ", ".join(map(describe, extra)))
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched))
    return problems


def load_mmseg_state_dict(model: SetrForSemanticSegmentation, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Convert and load an mmsegmentation state dict into `model`, strictly."""
    expected = {
        key: tuple(value.shape) for key, value in model.state_dict().items() if not key.endswith(_DROPPED_SUFFIX)
    }
    converted = convert_mmseg_state_dict(state_dict, model.config, expected)
    model.load_state_dict(converted, strict=False)


# torch.save writes a zip archive (since torch 1.6) or, in the legacy format, a pickle (protocol 2 unless asked).
_TORCH_FILE_HEADS = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def load_checkpoint_file(path: str) -> dict:
    """Load an mmsegmentation `.pth` without running any code from it.

    `torch.load(weights_only=True)` allows tensors and plain containers; numpy scalars and dtypes (found in the
    released files' `meta`) are the only additions. Anything else is refused with the name of the offending global.
    Every failure is a one-line `ValueError` naming the file (or the `OSError` of reading it).
    """
    import pickle
    import warnings
    import zipfile

    with open(path, "rb") as handle:  # a missing or unreadable file fails here, with its own OSError
        head = handle.read(4)
    if not head.startswith(_TORCH_FILE_HEADS):
        raise ValueError(f"{path} is not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy pickle)")
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # torch's note on odd bytes
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL (\S+)", str(error))
        if refused is None:  # not a forbidden object but bytes the unpickler cannot read
            raise ValueError(
                f"{path} is not a PyTorch checkpoint (or it is corrupt): it cannot be unpickled"
            ) from None
        # torch's own message advises retrying with weights_only=False, i.e. running the file's code: never repeated.
        raise ValueError(
            f"{path} holds objects that are not plain tensors, containers or numpy scalars ({refused.group(1)}); "
            "it is refused so that no code from it runs"
        ) from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, IndexError, KeyError, TypeError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {detail}") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} does not hold a dict but a {type(checkpoint).__name__}")
    return checkpoint


CACHE_DIR_ENV = "TRANSFORMERS_SETR_CACHE"


def default_cache_dir() -> Path:
    """Where downloads are cached: `$TRANSFORMERS_SETR_CACHE`, else `~/.cache/transformers_setr` (read at each call,
    so that a process can redirect it)."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "transformers_setr").expanduser()


def download_cached(
    url: str, cache_dir: str | os.PathLike, hash_prefix: str | None = None, progress: bool = True
) -> Path:
    """The cached copy of `url` (`<cache_dir>/<file name>`), downloaded first when absent, with a progress bar.

    The download goes to a temporary file in the cache directory that is renamed into place once complete (and,
    with `hash_prefix`, once its sha256 starts with it), so an interrupted download never leaves a truncated file
    under the final name.
    """
    directory = Path(cache_dir).expanduser()
    name = os.path.basename(urlparse(url).path)
    if not name:
        raise ValueError(f"{url} does not end in a file name")
    destination = directory / name
    if destination.is_file():
        return destination
    directory.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=directory)
    os.close(handle)
    try:
        torch.hub.download_url_to_file(url, partial, hash_prefix=hash_prefix, progress=progress)
        os.replace(partial, destination)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return destination
