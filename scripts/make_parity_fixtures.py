"""Generate the mmsegmentation parity fixtures for ``transformers_setr``.

This script runs against the *reference* implementation (mmsegmentation 1.2.2)
and never imports ``transformers`` or ``transformers_setr``. It builds reduced,
randomly initialised SETR models (Naive, PUP, MLA) from the real mmseg 1.2.2
ADE20K configs, and writes, for each variant:

* ``core_{variant}.pth``: a checkpoint in the mmseg 0.x release style,
  ``{"meta": {...}, "state_dict": OrderedDict}``.  ``meta`` mimics the released
  files, including numpy scalars and a ``numpy.dtype``; numpy scalars are
  pickled under the numpy 1.x global name ``numpy.core.multiarray.scalar``,
  as in the real 2021 checkpoints.
* ``core_{variant}_io.pt``: reference inputs and outputs (plain tensors, lists,
  dicts, str, int, float and bool only; loadable with
  ``torch.load(path, weights_only=True)``).

Create the reference environment once, from the repository root::

    python3 -m venv .venv-mmseg && .venv-mmseg/bin/pip install torch==2.13.0 mmsegmentation==1.2.2 mmcv-lite==2.1.0 mmengine ftfy regex

Regenerate the fixtures (they are written to ``tests/fixtures/parity/``)::

    .venv-mmseg/bin/python scripts/make_parity_fixtures.py [--out DIR]

The output is deterministic: all seeds are fixed and the checkpoint ``time``
field is a constant string.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import sys
import types
import warnings
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
def _install_mmcv_ops_stub() -> None:
    """Put a stand-in ``mmcv.ops`` into ``sys.modules``.

    mmseg imports a few names from ``mmcv.ops`` at import time (point_sample,
    sigmoid_focal_loss, ...), but mmcv-lite ships no compiled ops. SETR uses
    none of them. Every requested name resolves to a placeholder *class*
    (so ``isinstance`` checks keep working) that raises when instantiated or
    called.
    """
    if "mmcv.ops" in sys.modules:
        return
    stub = types.ModuleType("mmcv.ops")
    stub.__doc__ = "Stand-in for mmcv.ops (mmcv-lite has no compiled ops)."
    cache: dict[str, type] = {}

    def _getattr(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in cache:

            def _unavailable(*args, _name=name, **kwargs):
                raise RuntimeError(f"mmcv.ops.{_name} is not available (mmcv-lite stub)")

            cache[name] = type(name, (), {"__new__": _unavailable, "__module__": "mmcv.ops"})
        return cache[name]

    stub.__getattr__ = _getattr  # PEP 562
    sys.modules["mmcv.ops"] = stub


def _import_mmseg():
    _install_mmcv_ops_stub()
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
def _randomise_(model: nn.Module, gen: torch.Generator) -> None:
    """Overwrite every parameter and buffer with seeded random values."""

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
            else:  # conv/linear weights, in_proj_weight, cls_token, pos_embed, ...
                new = normal(p, 0.0, 0.2)
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
                b.fill_(160000)  # like a 160k-iteration training run; unused in eval
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


def _overrides(model, variant: str) -> dict:
    bb = model.backbone
    layer0 = bb.layers[0]
    fc1 = layer0.ffn.layers[0][0]
    embed_dims = int(bb.cls_token.shape[-1])
    info = {
        "variant": variant,
        "config": CONFIG_FILES[variant],
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
    if variant in ("naive", "pup"):
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


def _save_checkpoint(path: Path, model, cfg, variant: str, mmseg_version: str) -> None:
    state_dict = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
    assert "backbone.patch_embed.projection.bias" in state_dict
    ckpt = {"meta": _meta(cfg, variant, mmseg_version), "state_dict": state_dict}
    torch.save(ckpt, path, pickle_module=_numpy1_pickle_module, pickle_protocol=2)


def _check_checkpoint_loads(path: Path, model) -> None:
    """Self-check: the file loads with weights_only=True once numpy is allow-listed."""
    np_safe = [
        (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
        np.dtype,
        type(np.dtype("float32")),
        type(np.dtype("float64")),
        type(np.dtype("int64")),
    ]
    with torch.serialization.safe_globals(np_safe):
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
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(1)  # avoid any reduction-order variation between runs

    mmseg_mods = _import_mmseg()
    mmseg_version = str(mmseg_mods[0].__version__)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    print(f"mmseg {mmseg_version}, torch {torch.__version__}, numpy {np.__version__}")
    print(f"writing to {out}")
    for variant in CONFIG_FILES:
        cfg, model = _build(variant, mmseg_mods)
        overrides = _overrides(model, variant)

        ckpt_path = out / f"core_{variant}.pth"
        _save_checkpoint(ckpt_path, model, cfg, variant, mmseg_version)
        _check_checkpoint_loads(ckpt_path, model)

        record, summary = _io_record(model, variant, overrides, mmseg_version)
        io_path = out / f"core_{variant}_io.pt"
        torch.save(record, io_path)
        torch.load(io_path, weights_only=True)  # must load without any allow-listing

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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
