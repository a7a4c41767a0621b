"""Record mmsegmentation's SETR training pipeline on small synthetic samples, for ``tests/training/test_augmentation.py``.

Runs in the reference environment (mmsegmentation 1.2.2, see DEVELOPERS.md) and never imports ``transformers`` or
``transformers_setr``::

    .venv-mmseg/bin/python scripts/make_augmentation_fixture.py [--out PATH]

The pipeline is the ``train_pipeline`` of mmseg's ``setr_vit-l_pup_8xb2-160k_ade20k-512x512`` config without the
two loading steps, with a smaller ``RandomResize`` scale and ``RandomCrop`` size (``SCALE``, ``CROP_SIZE``), followed
by the config's ``SegDataPreProcessor`` (``size=CROP_SIZE``, training mode). Every numpy draw the transforms make
(``random_sample``, ``randint``, ``uniform``, ``choice``) is recorded in order, so the test can replay them through
``SetrTrainAugmentation.apply`` and compare the outputs exactly.

Sample sizes keep every crop 64 pixels wide: cv2's vectorised HSV -> RGB conversion (truncating) then converts all
pixels, whereas its scalar remainder for other widths rounds (see ``hsv_to_rgb_uint8``).

Output (default ``tests/fixtures/augmentation/mmseg_train_pipeline.npz``, written under a temporary name and then
renamed): per case ``i``: ``image_{i}`` (H, W, 3) uint8 RGB, ``labels_{i}`` (H, W) uint8, ``pixel_values_{i}`` (3, 64,
64) float32, ``target_{i}`` (64, 64) int64, ``draws_{i}`` (JSON list of ``{"kind", "args", "value"}``); plus
``metadata`` (JSON: versions, scale, crop size, ratio range, config).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import warnings
from pathlib import Path

import cv2
import mmcv
import mmengine
import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import Compose


def _load_reference_helpers():
    """`transformers_setr/conversion/mmseg_reference.py` by path: the one mmcv.ops stub and numpy allow-list (this
    script runs where transformers_setr is not installed)."""
    path = Path(__file__).resolve().parents[1] / "src" / "transformers_setr" / "conversion" / "mmseg_reference.py"
    spec = importlib.util.spec_from_file_location("setr_mmseg_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mmseg_reference = _load_reference_helpers()


mmseg_reference.install_mmcv_ops_stub()
warnings.filterwarnings("ignore", category=UserWarning, module=r"(mmcv|mmseg|mmengine)(\.|$)")
import mmseg  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "augmentation" / "mmseg_train_pipeline.npz"
CONFIG = "setr/setr_vit-l_pup_8xb2-160k_ade20k-512x512.py"
CROP_SIZE = (64, 64)
SCALE = (160, 96)
# (height, width) of the inputs: every resized image is at least 64 px wide; some are less than 64 px high (padding).
IMAGE_SIZES = [(48, 80), (36, 72), (40, 96), (60, 100)]
NUM_CASES = 12


def make_sample(seed: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A colourful image and a label map dominated by class 0, with a few rectangles of classes 1-4 and of 255."""
    rng = np.random.default_rng(seed)
    height, width = size
    coarse = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)[:height, :width]
    image = np.clip(coarse + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    labels = np.zeros((height, width), dtype=np.uint8)
    for value in (1, 2, 3, 4, 255):
        if rng.random() < 0.8:
            top, left = rng.integers(0, height - 6), rng.integers(0, width - 6)
            labels[top : top + rng.integers(3, height // 3), left : left + rng.integers(3, width // 3)] = value
    return image, labels


class DrawRecorder:
    """Wraps the global numpy draws the mmcv/mmseg transforms make and logs them in call order."""

    NAMES = ("random_sample", "randint", "uniform", "choice")

    def __init__(self) -> None:
        self.draws: list[dict] = []
        self._originals = {name: getattr(np.random, name) for name in self.NAMES}

    def __enter__(self) -> DrawRecorder:
        for name, original in self._originals.items():
            setattr(np.random, name, self._wrap(name, original))
        return self

    def __exit__(self, *exc_info) -> None:
        for name, original in self._originals.items():
            setattr(np.random, name, original)

    def _wrap(self, name, original):
        def recorded(*args, **kwargs):
            value = original(*args, **kwargs)
            if name == "choice":  # RandomFlip: choice(["horizontal", None], p=[prob, 1 - prob])
                entry = {"kind": name, "args": [[_plain(x) for x in args[0]]], "p": [float(p) for p in kwargs["p"]]}
            elif kwargs:
                raise RuntimeError(f"unexpected keyword arguments to np.random.{name}: {kwargs}")
            else:
                entry = {"kind": name, "args": [_plain(a) for a in args]}
            entry["value"] = _plain(value)
            self.draws.append(entry)
            return value

        return recorded


def _plain(value):
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    raise TypeError(f"cannot record {value!r}")


def build_pipeline(config_root: Path):
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(str(config_root / CONFIG))
    steps = []
    for step in cfg.train_pipeline:
        step = dict(step)
        if step["type"] in ("LoadImageFromFile", "LoadAnnotations"):
            continue
        if step["type"] == "RandomResize":
            step["scale"] = SCALE
            ratio_range = tuple(step["ratio_range"])
        if step["type"] == "RandomCrop":
            step["crop_size"] = CROP_SIZE
        steps.append(step)
    preprocessor_cfg = dict(cfg.model.data_preprocessor)
    preprocessor_cfg["size"] = CROP_SIZE
    preprocessor = MODELS.build(preprocessor_cfg)
    return Compose(steps), preprocessor, steps, preprocessor_cfg, ratio_range


def run_case(pipeline, preprocessor, image_rgb: np.ndarray, labels: np.ndarray, seed: int):
    results = dict(
        img=np.ascontiguousarray(image_rgb[..., ::-1]),  # mmseg loads BGR
        gt_seg_map=labels.copy(),
        seg_fields=["gt_seg_map"],
        img_shape=labels.shape,
        ori_shape=labels.shape,
        reduce_zero_label=False,
    )
    np.random.seed(seed)
    with DrawRecorder() as recorder:
        packed = pipeline(results)
    batch = preprocessor({"inputs": [packed["inputs"]], "data_samples": [packed["data_samples"]]}, training=True)
    pixel_values = batch["inputs"][0].numpy().astype(np.float32)
    target = batch["data_samples"][0].gt_sem_seg.data[0].numpy().astype(np.int64)
    return pixel_values, target, recorder.draws


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config_root = Path(mmseg.__file__).parent / ".mim" / "configs"
    pipeline, preprocessor, steps, preprocessor_cfg, ratio_range = build_pipeline(config_root)

    arrays = {}
    coverage = {"flip": set(), "brightness": set(), "mode": set(), "padded": set(), "redrawn": set()}
    for case in range(NUM_CASES):
        image, labels = make_sample(1000 + case, IMAGE_SIZES[case % len(IMAGE_SIZES)])
        pixel_values, target, draws = run_case(pipeline, preprocessor, image, labels, seed=case)
        arrays.update(
            {
                f"image_{case}": image,
                f"labels_{case}": labels,
                f"pixel_values_{case}": pixel_values,
                f"target_{case}": target,
                f"draws_{case}": np.array(json.dumps(draws)),
            }
        )
        kinds = [d["kind"] for d in draws]
        choice = kinds.index("choice")
        coverage["flip"].add(draws[choice]["value"])
        coverage["brightness"].add(draws[choice + 1]["value"])
        coverage["redrawn"].add(choice - 1 > 2)  # more than one (y, x) pair before the flip
        coverage["padded"].add(bool((target == 255).all(axis=1).any()))
        print(f"case {case}: {len(draws)} draws, {(choice - 1) // 2} crop windows, flip={draws[choice]['value']}")
    missing = {key: values for key, values in coverage.items() if key != "mode" and len(values) < 2}
    if missing:
        raise SystemExit(f"the cases do not cover both outcomes of: {missing}; change NUM_CASES or the seeds")

    arrays["metadata"] = np.array(
        json.dumps(
            {
                "mmseg": mmseg.__version__,
                "mmcv": mmcv.__version__,
                "mmengine": mmengine.__version__,
                "opencv": cv2.__version__,
                "numpy": np.__version__,
                "config": CONFIG,
                "pipeline": steps,
                "data_preprocessor": preprocessor_cfg,
                "scale": SCALE,
                "crop_size": CROP_SIZE,
                "ratio_range": ratio_range,
            },
            default=str,
        )
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{args.out.name}.", suffix=".tmp", dir=args.out.parent)
    os.close(handle)
    try:
        with open(temporary, "wb") as file:
            np.savez_compressed(file, **arrays)
        np.load(temporary, allow_pickle=False)  # loadable without pickle
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates the file private
        os.replace(temporary, args.out)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
