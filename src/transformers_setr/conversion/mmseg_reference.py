"""The reference side: what runs with mmsegmentation itself, in its own interpreter.

- `install_mmcv_ops_stub()`: the one stand-in for `mmcv.ops` (mmcv-lite has no compiled ops and mmseg imports them
  eagerly; SETR uses none). `scripts/make_parity_fixtures.py`, `scripts/make_augmentation_fixture.py` and
  `benchmarks/mmseg_worker.py` load this file by path
  (`importlib.util.spec_from_file_location`).
- `numpy_safe_globals()`: the numpy objects released mmseg checkpoints carry in `meta`, allowed by
  `torch.load(weights_only=True)`; the converter uses the same list.
- Run as a script: reference logits for `setr convert --verify`.

It imports only the standard library at module level (numpy and torch inside functions), never transformers or
transformers_setr:

    .venv-mmseg/bin/python src/transformers_setr/conversion/mmseg_reference.py --config NAME_OR_PATH --checkpoint FILE.pth \
        --sizes 512x512 512x683 --mode slide --out reference.pt

Inputs are regenerated from `numpy.random.default_rng(seed)` so that both sides see the same tensor.
"""

import argparse
import importlib
import sys
import types
from pathlib import Path


def reference_inputs(height: int, width: int, seed: int):
    import numpy as np
    import torch

    return torch.from_numpy(np.random.default_rng(seed).standard_normal((1, 3, height, width), dtype=np.float32))


def install_mmcv_ops_stub() -> None:
    """Put a stand-in `mmcv.ops` into `sys.modules` (unless one is there): every name it is asked for resolves to a
    placeholder class (so `isinstance` checks keep working) that raises when instantiated."""
    if "mmcv.ops" in sys.modules:
        return
    placeholders: dict[str, type] = {}

    def placeholder(name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in placeholders:

            def unavailable(*args, _name=name, **kwargs):
                raise RuntimeError(f"mmcv.ops.{_name} is a stub: mmcv-lite has no compiled ops")

            placeholders[name] = type(name, (), {"__new__": unavailable, "__module__": "mmcv.ops"})
        return placeholders[name]

    module = types.ModuleType("mmcv.ops")
    module.__doc__ = "Stand-in for mmcv.ops (mmcv-lite has no compiled ops)."
    module.__dict__["__getattr__"] = placeholder  # PEP 562: the module's own __getattr__, found in its dict
    sys.modules["mmcv.ops"] = module


def numpy_safe_globals() -> list:
    """What released mmseg checkpoints carry in `meta` besides plain containers: numpy scalars and dtypes.

    Files pickled under numpy 1 name the scalar reconstructor `numpy.core.multiarray.scalar`, numpy 2 writes
    `numpy._core.multiarray.scalar`; both names are allowed, pointing at the installed function.
    """
    import numpy as np

    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy 1
        multiarray = importlib.import_module("numpy.core.multiarray")
    scalar = multiarray.scalar
    dtype_classes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return [
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
        *dtype_classes,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="mmseg config name (configs/setr/NAME.py) or path")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--sizes", nargs="+", default=["512x512"], help="HxW input sizes")
    parser.add_argument("--mode", choices=["whole", "slide"], default="slide")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    install_mmcv_ops_stub()
    import mmseg
    import torch
    from mmengine.model import revert_sync_batchnorm
    from mmseg.apis import init_model

    config = Path(args.config)
    if not config.exists():
        config = Path(mmseg.__file__).parent / ".mim" / "configs" / "setr" / f"{args.config}.py"
    model = init_model(str(config), None, device="cpu", cfg_options={"model.backbone.patch_bias": True})
    model = revert_sync_batchnorm(model).eval()
    # mmengine's loader uses torch.load(weights_only=True), which rejects the numpy scalars of the released `meta`;
    # allow exactly those (never weights_only=False: the file may come from anywhere).
    with torch.serialization.safe_globals(numpy_safe_globals()):
        checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint.get("state_dict", checkpoint), strict=True)
    torch.set_num_threads(1)
    results = {"mmseg_version": mmseg.__version__, "mode": args.mode, "cases": []}
    for index, size in enumerate(args.sizes):
        height, width = (int(v) for v in size.split("x"))
        inputs = reference_inputs(height, width, args.seed + index)
        metas = [dict(img_shape=(height, width), ori_shape=(height, width))]
        with torch.no_grad():
            logits = (
                model.slide_inference(inputs, metas) if args.mode == "slide" else model.encode_decode(inputs, metas)
            )
        results["cases"].append({"size": (height, width), "seed": args.seed + index, "logits": logits})
        print(f"{size}: logits {tuple(logits.shape)}", flush=True)
    torch.save(results, args.out)


if __name__ == "__main__":
    main()
