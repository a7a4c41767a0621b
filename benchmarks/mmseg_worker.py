"""The mmsegmentation side of the benchmarks: run by `.venv-mmseg/bin/python`, driven over stdin/stdout.

Started by `benchmarks/common.py:MmsegWorker`; it imports neither transformers nor transformers_setr. Models are
the released SETR configs built by mmsegmentation 1.2.2 itself, with the seeded random weights of the parity
fixtures (`scripts/make_parity_fixtures.py`), and saved as a checkpoint that the driver converts with this package's
converter, so both sides hold the same weights.

Protocol: one JSON object per line on stdin; one answer per request on stdout, prefixed with `@@reply `.
"""

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from common import REPLY_PREFIX, ROOT, timed_sgd_steps, torch_build  # the script's folder is on sys.path


def reply(**message) -> None:
    sys.stdout.write(REPLY_PREFIX + json.dumps(message) + "\n")
    sys.stdout.flush()


class Worker:
    def __init__(self) -> None:
        sys.path.insert(0, str(ROOT / "scripts"))
        import make_parity_fixtures as fixtures  # the one place that builds and randomises mmseg SETR models

        self.fixtures = fixtures
        self.mods = fixtures._import_mmseg()
        self.models: dict[str, object] = {}
        self.pipelines: dict[str, tuple] = {}

    # ------------------------------------------------------------------ models
    def build(self, variant: str, checkpoint: str | None = None, suite: str = "full", keep: bool = True) -> dict:
        import torch

        self.models.clear()  # one ViT-L at a time
        cfg, model = self.fixtures._build_released(variant, suite, self.mods)
        if checkpoint:
            tmp = checkpoint + ".tmp"
            torch.save({"state_dict": model.state_dict(), "meta": {"variant": variant, "suite": suite}}, tmp)
            os.replace(tmp, checkpoint)
        if keep:
            self.models[variant] = model
        backbone = model.backbone
        return {
            "num_layers": len(backbone.layers),
            "num_heads": backbone.layers[0].attn.attn.num_heads,
            "out_indices": [int(index) for index in backbone.out_indices],
            "drop_rate": float(backbone.drop_after_pos.p),
        }

    # --------------------------------------------------------------- inference
    def infer(self, variant: str, mode: str, input: str, dtype: str = "fp32", save: str | None = None) -> dict:
        import torch

        model = self.models[variant]
        inputs = torch.load(input, weights_only=True)
        height, width = inputs.shape[-2:]
        metas = [dict(img_shape=(height, width), ori_shape=(height, width)) for _ in range(inputs.shape[0])]
        run = model.slide_inference if mode == "slide" else model.encode_decode
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            start = time.perf_counter()
            logits = run(inputs, metas)
            seconds = time.perf_counter() - start
        if save:
            logits = logits.float()
            torch.save({"argmax": logits.argmax(1).to(torch.int16), "sample": logits[:, :, ::8, ::8].clone()}, save)
        return {"seconds": seconds, "shape": list(logits.shape)}

    # ----------------------------------------------------------- preprocessing
    def preprocess(self, image: str, scale: list[int], repeats: int) -> dict:
        """mmseg's test pipeline on a decoded BGR image (as LoadImageFromFile leaves it): keep-ratio Resize with
        cv2, PackSegInputs, then the SegDataPreProcessor (BGR->RGB, normalise) of the SETR configs."""
        import numpy as np
        import torch
        from mmcv.transforms import Resize
        from mmseg.datasets.transforms import PackSegInputs
        from mmseg.models.data_preprocessor import SegDataPreProcessor

        bgr = np.load(image)
        resize, pack = Resize(scale=tuple(scale), keep_ratio=True), PackSegInputs()
        preprocessor = SegDataPreProcessor(
            mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0, seg_pad_val=255
        )

        def pipeline():
            results = {"img": bgr, "img_shape": bgr.shape[:2], "ori_shape": bgr.shape[:2]}
            packed = pack(resize(results))
            return preprocessor({"inputs": [packed["inputs"]], "data_samples": [packed["data_samples"]]})

        times = []
        with torch.no_grad():
            for _ in range(repeats):
                start = time.perf_counter()
                output = pipeline()
                times.append(time.perf_counter() - start)
        return {"times": times, "shape": list(output["inputs"].shape)}

    # ------------------------------------------------------------ augmentation
    def augment(self, config: str, files: list[list[str]], batch: int, seed: int, reduce_zero_label: bool) -> dict:
        """One pass of a SETR config's own `train_pipeline` (LoadImageFromFile, LoadAnnotations, RandomResize,
        RandomCrop, RandomFlip, PhotoMetricDistortion, PackSegInputs) over `files` ([image, annotation] paths), then
        mmseg's collate and the model's `SegDataPreProcessor` (training: normalise, pad) per `batch` samples; cv2 on
        one thread. Returns the pass's time."""
        import cv2
        import numpy as np
        import torch
        from mmengine.config import Config
        from mmengine.dataset import Compose, pseudo_collate
        from mmseg.registry import MODELS

        cv2.setNumThreads(1)
        if config not in self.pipelines:
            import mmseg

            cfg = Config.fromfile(str(Path(mmseg.__file__).parent / ".mim" / "configs" / "setr" / config))
            preprocessor = MODELS.build(dict(cfg.model.data_preprocessor))
            self.pipelines[config] = (Compose(cfg.train_pipeline), preprocessor)
        pipeline, preprocessor = self.pipelines[config]
        np.random.seed(seed)
        start = time.perf_counter()
        with torch.no_grad():
            for first in range(0, len(files), batch):
                samples = [
                    pipeline(
                        dict(
                            img_path=image, seg_map_path=annotation, seg_fields=[], reduce_zero_label=reduce_zero_label
                        )
                    )
                    for image, annotation in files[first : first + batch]
                ]
                output = preprocessor(pseudo_collate(samples), training=True)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "shape": list(output["inputs"].shape)}

    # ---------------------------------------------------------------- training
    def train_step(self, variant: str, suite: str, batch: int, size: list[int], steps: int, seed: int) -> dict:
        """One SGD step of mmseg's SETR loss (decode + auxiliary heads) per repeat; times and peak RSS."""
        import torch
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample

        self.build(variant, suite=suite)
        model = self.models[variant]
        model.train()
        generator = torch.Generator().manual_seed(seed)
        height, width = size
        inputs = torch.randn(batch, 3, height, width, generator=generator)
        num_classes = model.decode_head.num_classes
        labels = torch.randint(0, num_classes, (batch, height, width), generator=generator)
        samples = []
        for index in range(batch):
            sample = SegDataSample(metainfo=dict(img_shape=(height, width), pad_shape=(height, width)))
            sample.gt_sem_seg = PixelData(data=labels[index][None])
            samples.append(sample)

        def compute_loss() -> "torch.Tensor":
            losses = model.loss(inputs, samples)
            return sum(value for key, value in losses.items() if "loss" in key)

        return timed_sgd_steps(model, compute_loss, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    worker = Worker()
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        op = message.pop("op")
        try:
            if op == "quit":
                reply(ok=True)
                return
            if op == "hello":
                import mmseg

                reply(mmseg_version=mmseg.__version__, torch_build=torch_build(torch))
                continue
            reply(**getattr(worker, op)(**message))
        except Exception as error:  # report to the driver instead of dying silently
            reply(error=f"{type(error).__name__}: {error}\n{traceback.format_exc()}")


if __name__ == "__main__":
    main()
