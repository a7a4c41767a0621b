"""Reference logits from mmsegmentation itself, for `convert_mmseg_to_hf.py --verify`.

Run by file path with an interpreter that has mmsegmentation 1.2.x (see DEVELOPERS.md); it imports neither
transformers nor transformers_setr:

    .venv-mmseg/bin/python src/transformers_setr/mmseg_reference.py --config NAME_OR_PATH --checkpoint FILE.pth \
        --sizes 512x512 512x683 --mode slide --out reference.pt

Inputs are regenerated from `numpy.random.default_rng(seed)` so that both sides see the same tensor.
"""

import argparse
import sys
import types
from pathlib import Path


def reference_inputs(height: int, width: int, seed: int):
    import numpy as np
    import torch

    return torch.from_numpy(np.random.default_rng(seed).standard_normal((1, 3, height, width), dtype=np.float32))


def _stub_mmcv_ops() -> None:
    # mmcv-lite has no compiled ops and mmseg imports mmcv.ops eagerly; SETR uses none of them.
    class _Placeholder:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("mmcv.ops is a stub: compiled ops are unavailable")

    def placeholder(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder

    module = types.ModuleType("mmcv.ops")
    module.__getattr__ = placeholder
    sys.modules["mmcv.ops"] = module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="mmseg config name (configs/setr/NAME.py) or path")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--sizes", nargs="+", default=["512x512"], help="HxW input sizes")
    parser.add_argument("--mode", choices=["whole", "slide"], default="slide")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    _stub_mmcv_ops()
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
    import numpy as np
    from numpy._core.multiarray import scalar

    dtypes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    allowed = [(scalar, "numpy.core.multiarray.scalar"), scalar, np.dtype, *dtypes]
    with torch.serialization.safe_globals(allowed):
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
