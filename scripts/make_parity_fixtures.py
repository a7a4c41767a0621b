"""Generate the mmsegmentation parity fixtures for ``transformers_setr``.

This script runs against the *reference* implementation (mmsegmentation 1.2.2)
and never imports ``transformers`` or ``transformers_setr``. It has three suites
(``--suite``, default ``core``; ``all`` = core + checkpoints):

* ``core``: reduced, randomly initialised SETR models (Naive, PUP, MLA) built
  from the real mmseg 1.2.2 ADE20K configs (details below).
* ``checkpoints``: the seven released SETR models (``RELEASED``), each from its
  own config with ``patch_bias=True``, its real classes (150 / 19), ``img_size``
  (512 / 768), head structure and ``test_cfg`` (slide), but a reduced encoder
  (``CKPT_ENCODER``: 32 wide, 4 layers, 2 heads) and head widths / 16. Writes
  ``{variant}.pth`` and ``{variant}_io.pt`` next to the core files (CI).
* ``full``: the same seven at full ViT-L size (random weights, ~1.2 GB per
  checkpoint), written to ``--out`` (default under the system temp directory,
  never into the repository): for a developer-run heavy test.

For the checkpoints and full suites the io file records, per input size and
mode (``whole``: ``encode_decode``; ``slide``: ``inference`` with the config's
slide ``test_cfg``), a fixed sample of the logits, per-channel sums and a CRC of
the argmax map; the inputs are regenerated from their seeds, not stored (see
``_released_record``; the schema is in DEVELOPERS.md).

Core suite, for each variant:

* ``core_{variant}.pth``: a checkpoint in the mmseg 0.x release style,
  ``{"meta": {...}, "state_dict": OrderedDict}``.  ``meta`` mimics the released
  files, including numpy scalars and a ``numpy.dtype``; numpy scalars are
  pickled under the numpy 1.x global name ``numpy.core.multiarray.scalar``,
  as in the real 2021 checkpoints.
* ``core_{variant}_io.pt``: reference inputs and outputs (plain tensors, lists,
  dicts, str, int, float and bool only; loadable with
  ``torch.load(path, weights_only=True)``).

Create the reference environment once, from the repository root::

    python3 -m venv .venv-mmseg && .venv-mmseg/bin/pip install -c constraints.txt torch mmsegmentation==1.2.2 mmcv-lite==2.1.0 mmengine ftfy regex

Regenerate the fixtures (they are written to ``tests/fixtures/parity/``)::

    .venv-mmseg/bin/python scripts/make_parity_fixtures.py [--out DIR]
    .venv-mmseg/bin/python scripts/make_parity_fixtures.py --suite checkpoints

The full-size suite (slow; select with ``--variants`` and ``--sizes``)::

    .venv-mmseg/bin/python scripts/make_parity_fixtures.py --suite full [--out DIR]

The output is deterministic: all seeds are fixed, the checkpoint ``time``
field is a constant string, and everything runs on one CPU thread. Files are
written under a temporary name and moved into place once complete and verified.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import importlib.util
import io
import math
import os
import pickle
import shutil
import sys
import tempfile
import time
import types
import warnings
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "parity"

CONFIG_FILES = {
    "naive": "setr_vit-l_naive_8xb2-160k_ade20k-512x512.py",
    "pup": "setr_vit-l_pup_8xb2-160k_ade20k-512x512.py",
    "mla": "setr_vit-l_mla_8xb2-160k_ade20k-512x512.py",
}
WEIGHT_SEEDS = {"naive": 1001, "pup": 1002, "mla": 1003}

# Reduced hyper-parameters.
IMG_SIZE = (64, 64)
EMBED_DIMS = 32
NUM_LAYERS = 4
NUM_HEADS = 2
MLP_RATIO = 4
OUT_INDICES = (0, 1, 2, 3)
NUM_CLASSES = 5
UP_HEAD_CHANNELS = 16  # naive/pup decode and auxiliary SETRUPHeads
MLA_NECK_OUT = 16
MLA_CHANNELS = 8
MLA_HEAD_CHANNELS = 32  # must equal 4 * MLA_CHANNELS (asserted by mmseg)
MLA_AUX_CHANNELS = 16  # FCNHead(num_convs=0) asserts in_channels == channels

# (name, shape, seed). Inputs are already "normalised" (~N(0, 1)).
CASES = [
    ("1x64x64_no_interp", (1, 3, 64, 64), 2001),
    ("1x50x77_pad_interp", (1, 3, 50, 77), 2002),
    ("2x32x128_same_tokens_no_interp", (2, 3, 32, 128), 2003),
    ("1x96x80_interp", (1, 3, 96, 80), 2004),
]

# The io files hold full-resolution float32 logits for four inputs plus the
# auxiliary-head logits, so some of them cannot stay below 1 MiB; warn above
# that and refuse to write anything absurd.
SOFT_MAX_FILE_BYTES = 1024 * 1024
HARD_MAX_FILE_BYTES = 2 * 1024 * 1024


# ---------------------------------------------------------------------------
# mmseg import (mmcv-lite has no compiled ops)
# ---------------------------------------------------------------------------
def _load_reference_helpers():
    """`transformers_setr/conversion/mmseg_reference.py` by path: the one mmcv.ops stub and numpy allow-list (this
    script runs where transformers_setr is not installed)."""
    path = Path(__file__).resolve().parents[1] / "src" / "transformers_setr" / "conversion" / "mmseg_reference.py"
    spec = importlib.util.spec_from_file_location("setr_mmseg_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mmseg_reference = _load_reference_helpers()


def _import_mmseg():
    mmseg_reference.install_mmcv_ops_stub()
    # mmcv-lite / mmseg deprecation and "missing op" chatter is irrelevant here.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(mmcv|mmseg|mmengine)(\.|$)")
    import mmseg
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    return mmseg, Config, MODELS, revert_sync_batchnorm


# ---------------------------------------------------------------------------
# model construction
# ---------------------------------------------------------------------------
def _reduce_config(cfg, variant: str) -> None:
    """Apply the reduced-size overrides in place; everything else is kept."""
    m = cfg.model
    m.pretrained = None
    m.data_preprocessor = dict(
        type="SegDataPreProcessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=IMG_SIZE,
    )
    bb = m.backbone
    bb.update(
        patch_bias=True,  # released checkpoints carry the bias; mmseg>=1.2 drops it by default
        img_size=IMG_SIZE,
        embed_dims=EMBED_DIMS,
        num_layers=NUM_LAYERS,
        num_heads=NUM_HEADS,
        mlp_ratio=MLP_RATIO,
        out_indices=OUT_INDICES,
        init_cfg=None,
        pretrained=None,
    )
    if variant in ("naive", "pup"):
        m.decode_head.update(in_channels=EMBED_DIMS, channels=UP_HEAD_CHANNELS, num_classes=NUM_CLASSES)
        for aux in m.auxiliary_head:
            assert aux.type == "SETRUPHead", aux.type
            aux.update(in_channels=EMBED_DIMS, channels=UP_HEAD_CHANNELS, num_classes=NUM_CLASSES)
    elif variant == "mla":
        m.neck.update(in_channels=[EMBED_DIMS] * 4, out_channels=MLA_NECK_OUT)
        m.decode_head.update(
            in_channels=(MLA_NECK_OUT,) * 4,
            mla_channels=MLA_CHANNELS,
            channels=MLA_HEAD_CHANNELS,
            num_classes=NUM_CLASSES,
        )
        for aux in m.auxiliary_head:
            assert aux.type == "FCNHead", aux.type
            aux.update(in_channels=MLA_NECK_OUT, channels=MLA_AUX_CHANNELS, num_classes=NUM_CLASSES)
    else:
        raise ValueError(variant)


@torch.no_grad()
def _randomise_(model: nn.Module, gen: torch.Generator, iters: int = 160000, fan_in_scaled: bool = False) -> None:
    """Overwrite every parameter and buffer with seeded random values.

    Core suite: matrix/conv weights (and cls_token, pos_embed) ~ N(0, 0.2), fine at width 32. The released-model
    suites use `fan_in_scaled=True`: a flat N(0, 0.2) would make ViT-L (fan-in 1024 / 4096) and 3x3x256
    convolutions blow up (logits ~1e4+), so matrix/conv weights are He-style N(0, 2/fan_in) and cls_token/pos_embed
    N(0, 0.5): activations and logits stay O(1) (large enough that argmax near-ties stay rare). LayerNorm /
    BatchNorm affine parameters and BN running statistics are non-trivial in both.
    """

    def normal(t, mean, std):
        return torch.empty(t.shape, dtype=t.dtype).normal_(mean, std, generator=gen)

    def uniform(t, lo, hi):
        return torch.empty(t.shape, dtype=t.dtype).uniform_(lo, hi, generator=gen)

    touched = set()
    for mod_name, mod in model.named_modules():
        if mod_name == "data_preprocessor" or mod_name.startswith("data_preprocessor."):
            continue  # non-persistent mean/std buffers; not part of the state_dict
        prefix = f"{mod_name}." if mod_name else ""
        is_ln = isinstance(mod, nn.LayerNorm)
        is_bn = isinstance(mod, nn.modules.batchnorm._BatchNorm)
        for name, p in mod.named_parameters(recurse=False):
            if is_ln and name == "weight":
                new = normal(p, 1.0, 0.1)
            elif is_bn and name == "weight":
                new = uniform(p, 0.5, 1.5)
            elif name.endswith("bias"):
                new = normal(p, 0.0, 0.1)
            elif not fan_in_scaled:  # conv/linear weights, in_proj_weight, cls_token, pos_embed, ...
                new = normal(p, 0.0, 0.2)
            elif name in ("pos_embed", "cls_token"):
                new = normal(p, 0.0, 0.5)
            elif p.dim() >= 2:  # conv / linear / in_proj weights: fan-in = all but dim 0
                new = normal(p, 0.0, math.sqrt(2.0 / p[0].numel()))
            else:
                raise RuntimeError(f"unexpected parameter {prefix}{name} {tuple(p.shape)}")
            p.copy_(new)
            touched.add(prefix + name)
        for name, b in mod.named_buffers(recurse=False):
            if b is None:
                continue
            if is_bn and name == "running_mean":
                b.copy_(normal(b, 0.0, 0.2))
            elif is_bn and name == "running_var":
                b.copy_(uniform(b, 0.5, 2.0))
            elif is_bn and name == "num_batches_tracked":
                b.fill_(iters)  # like a training run of that length; unused in eval
            else:
                raise RuntimeError(f"unexpected buffer {prefix}{name}")
            touched.add(prefix + name)
    missing = set(model.state_dict()) - touched
    if missing:
        raise RuntimeError(f"not randomised: {sorted(missing)}")


def _build(variant: str, mmseg_mods):
    mmseg, Config, MODELS, revert_sync_batchnorm = mmseg_mods
    cfg_path = Path(mmseg.__file__).parent / ".mim" / "configs" / "setr" / CONFIG_FILES[variant]
    cfg = Config.fromfile(str(cfg_path))
    _reduce_config(cfg, variant)
    torch.manual_seed(WEIGHT_SEEDS[variant])
    model = MODELS.build(cfg.model)
    model = revert_sync_batchnorm(model)
    model.eval()
    gen = torch.Generator().manual_seed(WEIGHT_SEEDS[variant])
    _randomise_(model, gen)
    return cfg, model


# ---------------------------------------------------------------------------
# hyper-parameters read back from the built model
# ---------------------------------------------------------------------------
def _up_head_info(head) -> dict:
    first = head.up_convs[0]
    return {
        "type": type(head).__name__,
        "in_channels": int(head.in_channels),
        "channels": int(head.channels),
        "num_classes": int(head.num_classes),
        "in_index": int(head.in_index),
        "num_convs": len(head.up_convs),
        "kernel_size": int(first[0].conv.kernel_size[0]),
        "up_scale": int(first[1].scale_factor),
        "layer_norm_eps": float(head.norm.eps),
        "batch_norm_eps": float(first[0].bn.eps),
        "align_corners": bool(head.align_corners),
    }


def _mla_head_info(head) -> dict:
    branch = head.up_convs[0]
    return {
        "type": type(head).__name__,
        "in_channels": [int(c) for c in head.in_channels],
        "channels": int(head.channels),
        "mla_channels": int(head.mla_channels),
        "num_classes": int(head.num_classes),
        "in_index": [int(i) for i in head.in_index],
        "up_scale": int(branch[2].scale_factor),
        "kernel_size": int(branch[0].conv.kernel_size[0]),
        "batch_norm_eps": float(branch[0].bn.eps),
        "align_corners": bool(head.align_corners),
    }


def _fcn_head_info(head) -> dict:
    return {
        "type": type(head).__name__,
        "in_channels": int(head.in_channels),
        "channels": int(head.channels),
        "num_classes": int(head.num_classes),
        "in_index": int(head.in_index),
        "num_convs": int(head.num_convs),
        "kernel_size": int(head.kernel_size),
        "concat_input": bool(head.concat_input),
        "align_corners": bool(head.align_corners),
    }


def _overrides(model, variant: str, config_name: str | None = None) -> dict:
    bb = model.backbone
    layer0 = bb.layers[0]
    fc1 = layer0.ffn.layers[0][0]
    embed_dims = int(bb.cls_token.shape[-1])
    info = {
        "variant": variant,
        "config": config_name or CONFIG_FILES[variant],
        "img_size": [int(s) for s in bb.img_size],
        "patch_size": int(bb.patch_size),
        "num_channels": int(bb.patch_embed.projection.in_channels),
        "embed_dims": embed_dims,
        "num_layers": len(bb.layers),
        "num_heads": int(layer0.attn.attn.num_heads),
        "mlp_ratio": int(fc1.out_features // embed_dims),
        "intermediate_size": int(fc1.out_features),
        "out_indices": [int(i) for i in bb.out_indices],
        "with_cls_token": bool(bb.with_cls_token),
        "interpolate_mode": str(bb.interpolate_mode),
        "patch_bias": bb.patch_embed.projection.bias is not None,
        "final_norm": bool(bb.final_norm),
        "layer_norm_eps": float(layer0.ln1.eps),
        "qkv_bias": layer0.attn.attn.in_proj_bias is not None,
        "num_pos_embed": int(bb.pos_embed.shape[1]),
        "num_classes": int(model.decode_head.num_classes),
        "align_corners": bool(model.align_corners),
    }
    if not model.with_neck:  # naive / pup
        info["decode_head"] = _up_head_info(model.decode_head)
        info["auxiliary_heads"] = [_up_head_info(h) for h in model.auxiliary_head]
    else:
        neck = model.neck
        info["neck"] = {
            "type": type(neck).__name__,
            "in_channels": [int(c) for c in neck.in_channels],
            "out_channels": int(neck.out_channels),
            "layer_norm_eps": float(neck.norm[0].eps),
            "batch_norm_eps": float(neck.mla.channel_proj[0].bn.eps),
        }
        info["decode_head"] = _mla_head_info(model.decode_head)
        info["auxiliary_heads"] = [_fcn_head_info(h) for h in model.auxiliary_head]
    return info


# ---------------------------------------------------------------------------
# checkpoint writing (mmseg 0.x release style)
# ---------------------------------------------------------------------------
_NP2_SCALAR = b"cnumpy._core.multiarray\nscalar\n"
_NP1_SCALAR = b"cnumpy.core.multiarray\nscalar\n"


class _Numpy1NamesPickler(pickle.Pickler):
    """Pickler that writes numpy scalars under their numpy 1.x global name.

    The released checkpoints were pickled (protocol 2) with numpy 1.x, where
    numpy scalars reduce to ``numpy.core.multiarray.scalar``; numpy >= 2
    writes ``numpy._core.multiarray.scalar``. Protocol-2 GLOBAL opcodes are
    newline-delimited text, so the name can be rewritten without touching
    anything else. Both names resolve to the same function at load time.
    """

    def __init__(self, file, protocol=None, **kwargs):
        self._target = file
        self._buf = io.BytesIO()
        super().__init__(self._buf, protocol, **kwargs)

    def dump(self, obj):
        super().dump(obj)
        data = self._buf.getvalue()
        if _NP2_SCALAR in data:
            data = data.replace(_NP2_SCALAR, _NP1_SCALAR)
        self._target.write(data)


_numpy1_pickle_module = types.ModuleType("numpy1_names_pickle")
_numpy1_pickle_module.Pickler = _Numpy1NamesPickler
_numpy1_pickle_module.Unpickler = pickle.Unpickler


def _meta(cfg, variant: str, mmseg_version: str) -> dict:
    return {
        "env_info": (
            "sys.platform: linux\nPython: 3.7.10\nCUDA available: True\n"
            "PyTorch: 1.8.1\nMMCV: 1.3.7\nMMSegmentation: 0.15.0+abc1234"
        ),
        "config": cfg.pretty_text,
        "seed": np.int64(WEIGHT_SEEDS[variant]),
        "exp_name": CONFIG_FILES[variant],
        "mmcv_version": "1.3.7",
        "mmseg_version": "0.15.0+abc1234",
        "generated_with_mmseg_version": mmseg_version,
        "CLASSES": ("wall", "building", "sky", "floor", "tree"),
        "PALETTE": [[120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3]],
        "epoch": np.int64(1),
        "iter": np.int64(160000),
        "time": "Sat Jun 19 19:12:58 2021",
        "mIoU": np.float64(0.4828),
        "dtype": np.dtype("float32"),
        "hook_msgs": {"last_ckpt": f"work_dirs/{variant}/iter_160000.pth", "best_score": np.float64(0.4828)},
    }


@contextlib.contextmanager
def _atomic_target(path: Path):
    """Yield a temporary path to write ``path`` to; move it into place only on success.

    The temporary file lives in a fresh hidden directory next to ``path`` and has the
    *same file name*: ``torch.save`` names the root folder inside its zip archive after
    the file's stem, so writing to another name would change the bytes. An interrupted
    run leaves no partial file under the final name.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp_dir / path.name
        os.replace(tmp_dir / path.name, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _save_checkpoint(path: Path, model, meta: dict) -> None:
    """Write (atomically) and verify an mmseg 0.x release-style checkpoint."""
    state_dict = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
    assert "backbone.patch_embed.projection.bias" in state_dict
    ckpt = {"meta": meta, "state_dict": state_dict}
    with _atomic_target(path) as tmp:
        torch.save(ckpt, tmp, pickle_module=_numpy1_pickle_module, pickle_protocol=2)
        del ckpt, state_dict
        _check_checkpoint_loads(tmp, model)


def _save_io(path: Path, record: dict) -> None:
    """Write (atomically) an io record; it must load without any allow-listing."""
    with _atomic_target(path) as tmp:
        torch.save(record, tmp)
        torch.load(tmp, weights_only=True)


def _check_checkpoint_loads(path: Path, model) -> None:
    """Self-check: the file loads with weights_only=True once numpy is allow-listed."""
    with torch.serialization.safe_globals(mmseg_reference.numpy_safe_globals()):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ref = model.state_dict()
    assert list(ckpt["state_dict"]) == list(ref)
    for k, v in ref.items():
        assert torch.equal(ckpt["state_dict"][k], v), k
    meta = ckpt["meta"]
    assert isinstance(meta["seed"], np.int64) and isinstance(meta["mIoU"], np.float64)
    assert meta["dtype"] == np.dtype("float32")


# ---------------------------------------------------------------------------
# reference outputs
# ---------------------------------------------------------------------------
def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().contiguous()


@torch.no_grad()
def _io_record(model, variant: str, overrides: dict, mmseg_version: str):
    cases = []
    summary = []
    aux_logits = None
    backbone_features = None
    neck_features = None
    for i, (name, shape, seed) in enumerate(CASES):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(shape, generator=gen, dtype=torch.float32)
        b, _, h, w = shape
        metas = [dict(img_shape=(h, w), ori_shape=(h, w)) for _ in range(b)]
        head_logits = model._forward(x)
        crop_logits = model.encode_decode(x, metas)
        assert crop_logits.shape == (b, NUM_CLASSES, h, w), crop_logits.shape
        for t in (head_logits, crop_logits):
            assert torch.isfinite(t).all()
            if float(t.std()) < 1e-2:
                raise RuntimeError(f"degenerate logits for {variant}/{name}: std {float(t.std())}")
        head_logits = _plain(head_logits)
        crop_logits = _plain(crop_logits)
        if torch.equal(head_logits, crop_logits):
            # Head resolution == input size (PUP on multiples of 16): the final
            # resize is an exact identity. Store one tensor twice so torch.save
            # writes the storage only once (keeps the file small).
            crop_logits = head_logits
        cases.append(
            {
                "name": name,
                "pixel_values": _plain(x),
                "head_logits": head_logits,
                "crop_logits": crop_logits,
            }
        )
        summary.append(
            (
                name,
                tuple(x.shape),
                tuple(head_logits.shape),
                tuple(crop_logits.shape),
                float(head_logits.std()),
                float(crop_logits.std()),
            )
        )
        if i == 0:
            feats_bb = model.backbone(x)
            feats = model.extract_feat(x)
            aux_logits = [_plain(aux.forward(feats)) for aux in model.auxiliary_head]
            backbone_features = [_plain(f) for f in feats_bb]
            if model.with_neck:
                neck_features = [_plain(f) for f in feats]
    record = {
        "variant": variant,
        "overrides": overrides,
        "mmseg_version": mmseg_version,
        "torch_version": str(torch.__version__),
        "numpy_version": str(np.__version__),
        "cases": cases,
        # raw forward of every auxiliary head on the (backbone or neck)
        # features of cases[0]; same order as auxiliary_head.{i}
        "aux_logits": aux_logits,
        # backbone outputs (one per out_index) for cases[0]
        "backbone_features": backbone_features,
    }
    if neck_features is not None:
        record["neck_features"] = neck_features  # MLANeck outputs for cases[0]
    return record, summary


# ---------------------------------------------------------------------------
# "checkpoints" and "full" suites: the seven released SETR models
# ---------------------------------------------------------------------------
# name -> mmseg 1.x config, dataset, and what the released file looked like (file name, v0.x config name,
# iterations, single-scale mIoU), read from the package's presets table (a plain module: no transformers needed).
PRESET_OF_VARIANT = {
    "ade20k-naive": "setr-naive-vit-large-ade20k-512",
    "ade20k-pup": "setr-pup-vit-large-ade20k-512",
    "ade20k-mla-b8": "setr-mla-vit-large-ade20k-512-b8",
    "ade20k-mla-b16": "setr-mla-vit-large-ade20k-512-b16",
    "cityscapes-naive": "setr-naive-vit-large-cityscapes-768",
    "cityscapes-pup": "setr-pup-vit-large-cityscapes-768",
    "cityscapes-mla": "setr-mla-vit-large-cityscapes-768",
}


def _load_presets() -> dict:
    """`transformers_setr/presets.py` without the package (this script runs where transformers is not
    installed): the file is run as `presets` of a stand-in package whose only other module holds the one slide-stride
    rule, `default_slide_stride`, taken from `configuration_setr.py` itself (its other code needs transformers)."""
    package_root = REPO_ROOT / "src" / "transformers_setr"
    config_tree = ast.parse((package_root / "models" / "setr" / "configuration_setr.py").read_text())
    (rule,) = [n for n in config_tree.body if isinstance(n, ast.FunctionDef) and n.name == "default_slide_stride"]
    for name in ("setr_reference", "setr_reference.models", "setr_reference.models.setr"):
        sys.modules.setdefault(name, types.ModuleType(name)).__path__ = []
    configuration = types.ModuleType("setr_reference.models.setr.configuration_setr")
    exec(compile(ast.Module([rule], type_ignores=[]), "configuration_setr.py", "exec"), configuration.__dict__)
    sys.modules[configuration.__name__] = configuration
    spec = importlib.util.spec_from_file_location("setr_reference.presets", package_root / "presets.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module.PRESETS


def _released_table() -> dict:
    presets = _load_presets()
    table = {}
    for variant, preset_name in PRESET_OF_VARIANT.items():
        preset = presets[preset_name]
        table[variant] = dict(
            config=f"{preset.mmseg_config}.py",
            dataset=preset.dataset,
            file=preset.file_name,
            v0_config=f"{preset.mmseg_v0_config}.py",
            iters=preset.iterations,
            miou=round(preset.miou_reported / 100, 4),
        )
    return table


RELEASED = _released_table()
RELEASED_WEIGHT_SEEDS = {name: 3001 + i for i, name in enumerate(RELEASED)}
DATASET_CLASS = {"ade20k": "ADE20KDataset", "cityscapes": "CityscapesDataset"}
# mmseg era that trained each dataset's checkpoints (only used in the fake ``meta``).
DATASET_ERA = {
    "ade20k": dict(mmseg="0.15.0+abc1234", mmcv="1.3.7", torch="1.8.1"),
    "cityscapes": dict(mmseg="0.19.0+abc1234", mmcv="1.3.16", torch="1.8.1"),
}

# "checkpoints" suite: reduced encoder only ...
CKPT_ENCODER = dict(embed_dims=32, num_layers=4, num_heads=2, mlp_ratio=4, out_indices=(0, 1, 2, 3))
# ... but the configs' head widths (256 / neck 256 / mla 128 / MLA head 512) make the
# PUP and MLA checkpoints 16-18 MB each (the 3x3 256->256 convs), so every head width is
# reduced by 16, to the same values as the core suite (UP_HEAD_CHANNELS, MLA_*).

# Input cases: (H, W) -> seed of
#     numpy.random.default_rng(seed).standard_normal((1, 3, H, W), dtype=numpy.float32)
CASE_SEEDS = {
    (512, 512): 5001,
    (512, 683): 5002,
    (300, 437): 5003,
    (776, 800): 5004,
}
INPUT_GENERATOR = "numpy.random.default_rng(seed).standard_normal((1, 3, H, W), dtype=numpy.float32)"
# 512x512: one ADE window (== whole); 512x683: 1x2 ADE windows; 300x437: smaller than the
# crop (one window == whole image). All three are single windows for Cityscapes' 768 crop,
# so the Cityscapes variants get 776x800 too (2x2 overlapping 768x768 windows, at
# y1 in {0, 8} and x1 in {0, 32}: different offsets per axis, so a swapped axis shows).
DEFAULT_SIZES = {
    "ade20k": [(512, 512), (512, 683), (300, 437)],
    "cityscapes": [(512, 512), (512, 683), (300, 437), (776, 800)],
}
SAMPLE_CHANNELS = {"ade20k": [0, 1, 37, 75, 111, 149], "cityscapes": [0, 5, 11, 13, 18]}
SAMPLE_ROWS = (3, 8)  # start, step
SAMPLE_COLS = (5, 8)
NEAR_TIE = 1e-4  # top-1 minus top-2 logit below this counts as an argmax near-tie

DEFAULT_FULL_OUT = Path(tempfile.gettempdir()) / "setr-parity-full"
CKPT_SUITE_SOFT_MAX_BYTES = 8 * 1024 * 1024  # whole checkpoints suite


def _released_cfg(name: str, suite: str, mmseg_mods):
    mmseg, Config, _, _ = mmseg_mods
    spec = RELEASED[name]
    cfg = Config.fromfile(str(Path(mmseg.__file__).parent / ".mim" / "configs" / "setr" / spec["config"]))
    m = cfg.model
    m.pretrained = None
    m.backbone.patch_bias = True  # the released checkpoints carry the bias; mmseg>=1.2 drops it by default
    if suite == "checkpoints":
        m.backbone.update(CKPT_ENCODER)
        width = CKPT_ENCODER["embed_dims"]
        if m.get("neck") is not None:
            assert m.neck.type == "MLANeck" and m.decode_head.type == "SETRMLAHead", m.decode_head.type
            m.neck.update(in_channels=[width] * 4, out_channels=MLA_NECK_OUT)
            m.decode_head.update(
                in_channels=(MLA_NECK_OUT,) * 4, mla_channels=MLA_CHANNELS, channels=MLA_HEAD_CHANNELS
            )
            for aux in m.auxiliary_head:
                assert aux.type == "FCNHead" and aux.num_convs == 0, aux.type
                aux.update(in_channels=MLA_NECK_OUT, channels=MLA_AUX_CHANNELS)
        else:
            assert m.decode_head.type == "SETRUPHead", m.decode_head.type
            m.decode_head.update(in_channels=width, channels=UP_HEAD_CHANNELS)
            for aux in m.auxiliary_head:
                assert aux.type == "SETRUPHead", aux.type
                aux.update(in_channels=width, channels=UP_HEAD_CHANNELS)
    elif suite != "full":
        raise ValueError(suite)
    return cfg


def _dataset_meta(dataset: str) -> tuple[tuple, list]:
    import mmseg.datasets

    metainfo = getattr(mmseg.datasets, DATASET_CLASS[dataset]).METAINFO
    classes = tuple(str(c) for c in metainfo["classes"])
    palette = [[int(v) for v in color] for color in metainfo["palette"]]
    assert len(classes) == len(palette)
    return classes, palette


def _released_meta(cfg, name: str, mmseg_version: str) -> dict:
    spec = RELEASED[name]
    era = DATASET_ERA[spec["dataset"]]
    classes, palette = _dataset_meta(spec["dataset"])
    stamp = "_".join(spec["file"].rsplit("-", 1)[0].split("_")[-2:])  # e.g. 20210619_191258
    when = datetime.datetime.strptime(stamp, "%Y%m%d_%H%M%S")
    return {
        "env_info": (
            f"sys.platform: linux\nPython: 3.7.10\nCUDA available: True\n"
            f"PyTorch: {era['torch']}\nMMCV: {era['mmcv']}\nMMSegmentation: {era['mmseg']}"
        ),
        "config": cfg.pretty_text,
        "seed": np.int64(RELEASED_WEIGHT_SEEDS[name]),
        "exp_name": spec["v0_config"],
        "mmcv_version": era["mmcv"],
        "mmseg_version": era["mmseg"],
        "generated_with_mmseg_version": mmseg_version,
        "CLASSES": classes,
        "PALETTE": palette,
        "epoch": np.int64(1),
        "iter": np.int64(spec["iters"]),
        "time": when.strftime("%a %b %d %H:%M:%S %Y"),
        "mIoU": np.float64(spec["miou"]),
        "dtype": np.dtype("float32"),
        "hook_msgs": {
            "last_ckpt": f"work_dirs/{spec['v0_config'][:-3]}/iter_{spec['iters']}.pth",
            "best_score": np.float64(spec["miou"]),
        },
    }


def _build_released(name: str, suite: str, mmseg_mods):
    _, _, MODELS, revert_sync_batchnorm = mmseg_mods
    cfg = _released_cfg(name, suite, mmseg_mods)
    torch.manual_seed(RELEASED_WEIGHT_SEEDS[name])
    model = MODELS.build(cfg.model)
    model = revert_sync_batchnorm(model)
    model.eval()
    gen = torch.Generator().manual_seed(RELEASED_WEIGHT_SEEDS[name])
    _randomise_(model, gen, RELEASED[name]["iters"], fan_in_scaled=True)
    return cfg, model


def _released_overrides(model, name: str) -> dict:
    spec = RELEASED[name]
    info = _overrides(model, name, spec["config"])
    tc = model.test_cfg
    info["dataset"] = spec["dataset"]
    info["test_cfg"] = {
        "mode": str(tc["mode"]),
        "crop_size": [int(v) for v in tc["crop_size"]],
        "stride": [int(v) for v in tc["stride"]],
    }
    classes, _ = _dataset_meta(spec["dataset"])
    assert info["num_classes"] == len(classes), (info["num_classes"], len(classes))
    assert info["patch_bias"], "patch_bias must be on"
    return info


def _slide_windows(h: int, w: int, crop: tuple[int, int], stride: tuple[int, int]) -> dict:
    """mmseg's EncoderDecoder.slide_inference window grid, as boxes [y1, y2, x1, x2]."""
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    h_grids = max(h - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w - w_crop + w_stride - 1, 0) // w_stride + 1
    boxes = []
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * h_stride, wi * w_stride
            y2, x2 = min(y1 + h_crop, h), min(x1 + w_crop, w)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            boxes.append([y1, y2, x1, x2])
    return {"h_grids": h_grids, "w_grids": w_grids, "num_windows": len(boxes), "boxes": boxes}


def _make_input(size: tuple[int, int]) -> torch.Tensor:
    h, w = size
    x = np.random.default_rng(CASE_SEEDS[size]).standard_normal((1, 3, h, w), dtype=np.float32)
    return torch.from_numpy(x)


def _summarise_logits(logits: torch.Tensor, channels: list[int]) -> dict:
    assert logits.dim() == 4 and logits.shape[0] == 1 and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    lg = logits[0]
    num_classes = lg.shape[0]
    pred = lg.argmax(dim=0)
    top2 = lg.topk(2, dim=0).values
    margin = top2[0] - top2[1]
    near = (margin < NEAR_TIE).flatten().nonzero().flatten()
    # at the near-tie pixels: the argmax (first index on exact ties, unlike topk's indices)
    # and the best of the other classes
    near_logits = lg.flatten(1)[:, near]
    first = pred.flatten()[near]
    others = near_logits.clone()
    others[first, torch.arange(near.numel())] = -math.inf
    near_classes = torch.stack([first, others.argmax(dim=0)], dim=1)
    return {
        "logits_shape": [int(s) for s in logits.shape],
        "logits_sampled": lg[channels, SAMPLE_ROWS[0] :: SAMPLE_ROWS[1], SAMPLE_COLS[0] :: SAMPLE_COLS[1]]
        .contiguous()
        .clone(),
        "channel_sums": lg.double().sum(dim=(1, 2)),
        "argmax_crc": int(zlib.crc32(pred.to(torch.uint8).numpy().tobytes())),
        "argmax_hist": torch.bincount(pred.flatten(), minlength=num_classes),
        "argmax_margin_min": float(margin.min()),
        "argmax_near_ties": int(near.numel()),
        # the near-tie pixels (flat row-major indices into H*W) and their top-1, top-2 classes:
        # a re-implementation may legitimately pick the top-2 class there
        "argmax_near_tie_index": near.clone(),
        "argmax_near_tie_classes": near_classes,
        "logits_std": float(lg.std()),
        "logits_abs_max": float(lg.abs().max()),
    }


@torch.no_grad()
def _slide(model, x: torch.Tensor, metas: list[dict]) -> tuple[torch.Tensor, list[list[int]]]:
    """``model.inference`` (test_cfg mode 'slide'), recording the windows mmseg really used."""
    assert model.test_cfg["mode"] == "slide", model.test_cfg
    width = x.shape[-1]
    seen = []
    original = model.encode_decode

    def spy(crop, crop_metas):
        # crop = inputs[:, :, y1:y2, x1:x2] is a view of x: its storage offset gives y1, x1.
        off = crop.storage_offset()
        y1, x1 = divmod(off, width)
        seen.append([y1, y1 + crop.shape[-2], x1, x1 + crop.shape[-1]])
        return original(crop, crop_metas)

    model.encode_decode = spy
    try:
        logits = model.inference(x, metas)
    finally:
        del model.encode_decode
    return logits, seen


@torch.no_grad()
def _released_record(model, name: str, suite: str, sizes, overrides: dict, mmseg_version: str, check_predict: bool):
    dataset = RELEASED[name]["dataset"]
    channels = SAMPLE_CHANNELS[dataset]
    num_classes = overrides["num_classes"]
    assert max(channels) < num_classes
    tc = overrides["test_cfg"]
    cases, summary = [], []
    for size in sizes:
        h, w = size
        x = _make_input(size)
        base = {
            "size": [h, w],
            "seed": CASE_SEEDS[size],
            "input_shape": [1, 3, h, w],
            "input_sum": float(x.double().sum()),
            "input_abs_sum": float(x.double().abs().sum()),
        }
        # whole: the whole image through backbone + head, resized to img_shape (== input size)
        t0 = time.perf_counter()
        metas = [dict(ori_shape=(h, w), img_shape=(h, w), pad_shape=(h, w))]
        whole = model.encode_decode(x, metas)
        t_whole = time.perf_counter() - t0
        assert whole.shape == (1, num_classes, h, w), whole.shape
        whole_case = {"name": f"{h}x{w}/whole", "mode": "whole", **base, **_summarise_logits(whole, channels)}
        cases.append(whole_case)
        # slide: mmseg's sliding-window inference (fresh metas: slide_inference mutates metas[0])
        t0 = time.perf_counter()
        metas = [dict(ori_shape=(h, w), img_shape=(h, w), pad_shape=(h, w))]
        slide, seen = _slide(model, x, metas)
        t_slide = time.perf_counter() - t0
        assert slide.shape == (1, num_classes, h, w), slide.shape
        windows = _slide_windows(h, w, tc["crop_size"], tc["stride"])
        if seen != windows["boxes"]:
            raise RuntimeError(f"{name} {size}: mmseg used windows {seen}, formula gives {windows['boxes']}")
        if check_predict:  # the public entry point gives the same logits and prediction
            sample = model.predict(x)[0]
            assert torch.equal(sample.seg_logits.data, slide[0]), f"{name} {size}: predict() differs"
            assert torch.equal(sample.pred_sem_seg.data[0], slide[0].argmax(0)), f"{name} {size}: predict() argmax"
        same = bool(torch.equal(slide, whole))
        if same:
            # One window covering the image: slide == whole bit for bit. Reuse the
            # tensors so torch.save stores each storage once.
            slide_summary = {k: v for k, v in whole_case.items() if k not in ("name", "mode")}
        else:
            slide_summary = {**base, **_summarise_logits(slide, channels)}
        cases.append(
            {
                "name": f"{h}x{w}/slide",
                "mode": "slide",
                **slide_summary,
                "windows": windows,
                "same_as_whole": same,
            }
        )
        for case, secs in ((whole_case, t_whole), (cases[-1], t_slide)):
            if case["logits_std"] < 1e-2 or int((case["argmax_hist"] > 0).sum()) < 2:
                raise RuntimeError(f"degenerate logits for {name}/{case['name']}")
            summary.append((case, secs))
    record = {
        "suite": suite,
        "variant": name,
        "dataset": dataset,
        "released_checkpoint": RELEASED[name]["file"],
        "overrides": overrides,
        "mmseg_version": mmseg_version,
        "torch_version": str(torch.__version__),
        "numpy_version": str(np.__version__),
        "input_generator": INPUT_GENERATOR,
        "sampling": {
            "channels": list(channels),
            "rows": {"start": SAMPLE_ROWS[0], "step": SAMPLE_ROWS[1]},
            "cols": {"start": SAMPLE_COLS[0], "step": SAMPLE_COLS[1]},
            "expr": (
                f"logits[0, {list(channels)}, {SAMPLE_ROWS[0]}::{SAMPLE_ROWS[1]}, {SAMPLE_COLS[0]}::{SAMPLE_COLS[1]}]"
            ),
            "channel_sums": "logits[0].double().sum(dim=(1, 2))",
            "argmax_crc": "zlib.crc32(logits[0].argmax(0).to(torch.uint8).numpy().tobytes())",
            "argmax_hist": "torch.bincount(logits[0].argmax(0).flatten(), minlength=num_classes)",
            "argmax_near_ties": f"pixels whose top-1 minus top-2 logit is below {NEAR_TIE}",
            "argmax_near_tie_threshold": NEAR_TIE,
            "argmax_near_tie_index": "flat (row-major, H*W) indices of those pixels, int64",
            "argmax_near_tie_classes": "(n, 2) int64: the argmax class and the runner-up class at each of them",
        },
        "cases": cases,
    }
    return record, summary


def _run_released(suite: str, names: list[str], sizes_arg, out: Path, mmseg_mods, mmseg_version: str) -> int:
    total = 0
    for name in names:
        t_start = time.perf_counter()
        cfg, model = _build_released(name, suite, mmseg_mods)
        t_built = time.perf_counter()
        overrides = _released_overrides(model, name)
        ckpt_path = out / f"{name}.pth"
        _save_checkpoint(ckpt_path, model, _released_meta(cfg, name, mmseg_version))
        t_saved = time.perf_counter()
        sizes = sizes_arg or DEFAULT_SIZES[RELEASED[name]["dataset"]]
        record, summary = _released_record(
            model, name, suite, sizes, overrides, mmseg_version, check_predict=(suite == "checkpoints")
        )
        io_path = out / f"{name}_io.pt"
        _save_io(io_path, record)
        t_done = time.perf_counter()
        n_params = sum(v.numel() for v in model.state_dict().values())
        print(
            f"\n[{suite}/{name}] {RELEASED[name]['config']}\n"
            f"  embed_dims {overrides['embed_dims']}, layers {overrides['num_layers']}, "
            f"pos_embed rows {overrides['num_pos_embed']}, classes {overrides['num_classes']}, "
            f"test_cfg {overrides['test_cfg']}, state_dict {len(model.state_dict())} entries / {n_params:,} values\n"
            f"  build+randomise {t_built - t_start:.1f}s, save+verify checkpoint {t_saved - t_built:.1f}s, "
            f"cases {t_done - t_saved:.1f}s"
        )
        for case, secs in summary:
            extra = ""
            if case["mode"] == "slide":
                win = case["windows"]
                extra = f" windows {win['h_grids']}x{win['w_grids']} {win['boxes']}" + (
                    " (== whole)" if case["same_as_whole"] else ""
                )
            print(
                f"  {case['name']:16s} {secs:7.2f}s  std {case['logits_std']:.4f}  max|.| "
                f"{case['logits_abs_max']:.3f}  classes hit {int((case['argmax_hist'] > 0).sum())}  "
                f"near-ties {case['argmax_near_ties']}{extra}"
            )
        for p in (ckpt_path, io_path):
            size = os.path.getsize(p)
            total += size
            print(f"  {p.name:28s} {size / 1024:10.1f} KiB")
        del model
    return total


# ---------------------------------------------------------------------------
def _run_core(out: Path, names: list[str], mmseg_mods, mmseg_version: str) -> None:
    for variant in names:
        cfg, model = _build(variant, mmseg_mods)
        overrides = _overrides(model, variant)

        ckpt_path = out / f"core_{variant}.pth"
        _save_checkpoint(ckpt_path, model, _meta(cfg, variant, mmseg_version))

        record, summary = _io_record(model, variant, overrides, mmseg_version)
        io_path = out / f"core_{variant}_io.pt"
        _save_io(io_path, record)

        n_keys = len(model.state_dict())
        print(f"\n[{variant}] {CONFIG_FILES[variant]}  state_dict entries: {n_keys}")
        for name, xs, hs, cs, hstd, cstd in summary:
            print(
                f"  {name:32s} in {str(xs):18s} head {str(hs):18s} std {hstd:7.4f}  crop {str(cs):18s} std {cstd:7.4f}"
            )
        for i, a in enumerate(record["aux_logits"]):
            print(
                f"  aux_head[{i}] (in_index {overrides['auxiliary_heads'][i]['in_index']}): "
                f"{tuple(a.shape)} std {float(a.std()):.4f}"
            )
        for p in (ckpt_path, io_path):
            size = os.path.getsize(p)
            print(f"  {p.name:22s} {size / 1024:8.1f} KiB")
            if size >= HARD_MAX_FILE_BYTES:
                raise RuntimeError(f"{p} is {size} bytes (limit {HARD_MAX_FILE_BYTES})")
            if size >= SOFT_MAX_FILE_BYTES:
                print(f"  WARNING: {p.name} is over {SOFT_MAX_FILE_BYTES // 1024} KiB")


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, got {text!r}") from None
    if (h, w) not in CASE_SEEDS:
        known = ", ".join(f"{a}x{b}" for a, b in CASE_SEEDS)
        raise argparse.ArgumentTypeError(f"{text}: no input seed for this size (known: {known})")
    return h, w


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--suite",
        choices=("core", "checkpoints", "full", "all"),
        default="core",
        help="core: reduced naive/pup/mla (default); checkpoints: the seven released models with a reduced "
        "encoder (CI); full: the seven at full ViT-L size (~1.2 GB each, developer-run); all: core + checkpoints",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        metavar="NAME",
        help=f"only these variants (core: {', '.join(CONFIG_FILES)}; checkpoints/full: {', '.join(RELEASED)})",
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=_parse_size,
        metavar="HxW",
        help="checkpoints/full: only these input sizes (default: "
        + "; ".join(f"{d}: {' '.join(f'{h}x{w}' for h, w in s)}" for d, s in DEFAULT_SIZES.items())
        + ")",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output directory (default: {DEFAULT_OUT}; for --suite full: {DEFAULT_FULL_OUT})",
    )
    args = parser.parse_args(argv)

    suites = {"all": ["core", "checkpoints"]}.get(args.suite, [args.suite])
    known = {"core": list(CONFIG_FILES), "checkpoints": list(RELEASED), "full": list(RELEASED)}
    if args.variants:
        unknown = [v for v in args.variants if not any(v in known[s] for s in suites)]
        if unknown:
            parser.error(f"unknown variant(s) for --suite {args.suite}: {', '.join(unknown)}")
    if args.sizes and "core" in suites and len(suites) == 1:
        parser.error("--sizes applies to the checkpoints and full suites only")
    out: Path = args.out or (DEFAULT_FULL_OUT if args.suite == "full" else DEFAULT_OUT)
    if args.suite == "full" and out.resolve().is_relative_to(REPO_ROOT):
        parser.error(f"--suite full writes ~1.2 GB per variant; choose an --out outside the repository ({REPO_ROOT})")

    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(1)  # avoid any reduction-order variation between runs

    mmseg_mods = _import_mmseg()
    mmseg_version = str(mmseg_mods[0].__version__)
    out.mkdir(parents=True, exist_ok=True)

    print(f"mmseg {mmseg_version}, torch {torch.__version__}, numpy {np.__version__}")
    print(f"writing to {out}")
    for suite in suites:
        names = [v for v in known[suite] if not args.variants or v in args.variants]
        t0 = time.perf_counter()
        if suite == "core":
            _run_core(out, names, mmseg_mods, mmseg_version)
            continue
        total = _run_released(suite, names, args.sizes, out, mmseg_mods, mmseg_version)
        print(f"\n{suite} suite: {len(names)} variant(s), {total / 2**20:.2f} MiB, {time.perf_counter() - t0:.1f}s")
        if suite == "checkpoints" and total > CKPT_SUITE_SOFT_MAX_BYTES:
            print(f"WARNING: the checkpoints suite is over {CKPT_SUITE_SOFT_MAX_BYTES / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
