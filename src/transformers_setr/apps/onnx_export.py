"""`setr export-onnx`: a SETR model as an ONNX graph for onnxruntime (and any ONNX runtime), its session wrapper
with the sliding windows outside the graph, and the parity checker against PyTorch.

    setr export-onnx --model converted/setr-pup-ade20k --output setr-pup-ade20k.onnx --check photo.jpg
    python scripts/export_onnx.py --model DIR --output model.onnx

The graph is the whole-image forward: `pixel_values` (batch, 3, 16·h, 16·w) -> `logits` at the decoder's resolution
(the model's `inference_mode="whole"`), batch, height and width dynamic. It comes from `torch.onnx.export(...,
dynamo=True)` (torch.export, then onnxscript), opset `OPSET`. `OnnxSetr` pads an image to a multiple of the patch
size (bottom/right zeros, what the model does inside) and runs `modeling_setr.slide_window_logits` around the session
for sliding-window inference, so slide logits are averaged exactly as the PyTorch model averages them.

Backbone models (`SetrConfig.backbone_config`) export the same way, patch 14 or 16. transformers' `torch_int`
(`int()` outside `torch.jit` tracing) would bake the example's patch grid into the graph of the families that size
their position tables with it (dinov2_with_registers, BEiT's relative position bias): it is kept symbolic during the
export (`symbolic_torch_int`), and every graph is run at a second input size against the model before it is written
(`check_other_size`), so a graph fixed to one size is refused, never written.
"""

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .._imports import MissingExtraError, require
from ..models.setr.configuration_setr import check_slide_window
from ..models.setr.image_processing_base_setr import labels_from_scores
from ..models.setr.modeling_setr import SetrForSemanticSegmentation, slide_window_logits
from . import OneLineArgumentParser

# Opset 18: the dynamo exporter's translation of every op SETR uses (LayerNormalization needs 17, Resize's
# `antialias` attribute 18), and old enough for the runtimes people deploy on (onnxruntime >= 1.14, TensorRT 8.6,
# OpenVINO 2023).
OPSET = 18
# The opsets torch 2.14's dynamo exporter writes: its translations (torchlib) start at 18 (below, it exports 18 and
# tries onnx's version converter, which fails for SETR's graph and then keeps 18), and torch declares 23 its highest
# (`torch.onnx._constants.ONNX_MAX_OPSET`). Other values are refused before anything is exported.
MIN_OPSET, MAX_OPSET = 18, 23
METADATA_KEY = "transformers_setr"  # the facts the session wrapper needs, as JSON in the graph's metadata


class WholeImageLogits(torch.nn.Module):
    """The exported function: `pixel_values` -> whole-image logits (no sliding windows, no labels)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, inference_mode="whole").logits


def export_metadata(config) -> dict[str, Any]:
    crop, stride = config.slide_window
    return {
        # "built-in" (mmseg's position-table rule, see `OnnxSetr.logits`) or the backbone's model type
        "encoder": "built-in" if config.backbone_config is None else config.backbone_config.model_type,
        "patch_size": config.patch_size,
        "image_grid": list(config.image_grid),
        "num_labels": config.num_labels,
        "inference_mode": config.inference_mode,
        "slide_crop_size": list(crop),
        "slide_stride": list(stride),
        "slide_batch_size": config.slide_batch_size,
        "id2label": {str(k): v for k, v in config.id2label.items()},
        "opset": OPSET,
    }


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(
            f"--opset {opset} is not supported: torch {torch.__version__.split('+')[0]}'s ONNX exporter writes opsets "
            f"{MIN_OPSET} to {MAX_OPSET} (default {OPSET})"
        )


def keep_symbolic(value: Any) -> Any:
    """transformers' `torch_int` for `torch.export`: a symbolic size stays symbolic (`int()` would specialise it)."""
    return value if isinstance(value, torch.SymInt) else int(value)


@contextlib.contextmanager
def symbolic_torch_int(model: torch.nn.Module) -> Iterator[None]:
    """During an export: `torch_int` of the modules `model` is built from (a backbone family's modeling file) keeps
    symbolic sizes symbolic; restored afterwards."""
    from transformers.utils.generic import torch_int

    modules = {sys.modules[type(module).__module__] for module in model.modules()}
    patched = [module for module in modules if getattr(module, "torch_int", None) is torch_int]
    for module in patched:
        setattr(module, "torch_int", keep_symbolic)  # noqa: B010 (a module global, unknown to the type checker)
    try:
        yield
    finally:
        for module in patched:
            setattr(module, "torch_int", torch_int)  # noqa: B010


def second_grid(config) -> tuple[int, int]:
    """A small patch grid unlike the example's, for `check_other_size`: not square, no side of 1 (torch.export
    specialises sizes 0 and 1), and for the built-in encoder not the position table's token count (where mmseg adds
    the table unresized)."""
    grid = (2, 3)
    return (3, 4) if grid[0] * grid[1] == config.image_grid[0] * config.image_grid[1] else grid


def check_other_size(
    program: torch.export.ExportedProgram, model: SetrForSemanticSegmentation, example: torch.Tensor
) -> None:
    """Run the exported program at a second input size against the model: `RuntimeError` (one line) when the graph
    was fixed to the example's size (a failed guard) or computes something else there."""
    patch = model.config.patch_size
    grid = second_grid(model.config)
    pixel_values = torch.randn(
        1, example.shape[1], grid[0] * patch, grid[1] * patch, generator=torch.Generator().manual_seed(0)
    )
    pixel_values = pixel_values.to(example.device)
    with torch.no_grad():
        expected = model(pixel_values=pixel_values, inference_mode="whole").logits
        try:
            logits = program.module()(pixel_values)
        except Exception as error:  # a guard of the example's size: torch.export's AssertionError
            detail = " ".join(str(error).split())[:200]
            raise RuntimeError(
                f"the exported graph works only at the example input size (at {tuple(pixel_values.shape[-2:])}: "
                f"{detail}); this encoder's forward does not export with a dynamic height and width"
            ) from error
    difference = float((logits - expected).abs().max()) if logits.shape == expected.shape else float("inf")
    if not difference <= 1e-4 * max(1.0, float(expected.abs().max())):
        raise RuntimeError(
            f"the exported graph computes other logits at {tuple(pixel_values.shape[-2:])} than the model "
            f"(max abs difference {difference:.2e}): it was fixed to the example input size"
        )


def export_onnx(model: SetrForSemanticSegmentation, output: str | os.PathLike, opset: int = OPSET) -> Path:
    """Export `model` to `output`, written to a temporary name and renamed;
    `ValueError` for an opset outside `MIN_OPSET`..`MAX_OPSET`, `RuntimeError` when the graph is not written at it
    or does not hold at a second input size (`check_other_size`).

    The example input has batch 2 and a patch grid one row and two columns larger than the position table, so that
    the graph keeps the general path (batch not specialised to 1, the table resized to the input's grid).
    """
    check_opset(opset)
    config = model.config
    model = model.eval()
    patch = config.patch_size
    grid_height, grid_width = config.image_grid
    example = torch.zeros(2, config.num_channels, (grid_height + 1) * patch, (grid_width + 2) * patch)
    example = example.to(next(model.parameters()).device)
    dims = torch.export.Dim
    dynamic_shapes = {
        "pixel_values": {
            0: dims("batch", min=1, max=1024),
            2: patch * dims("height_patches", min=1, max=4096),
            3: patch * dims("width_patches", min=1, max=4096),
        }
    }
    with torch.no_grad(), symbolic_torch_int(model):
        # torch.export here, not inside torch.onnx.export: its fallback ("draft export") would silently accept a graph
        # fixed to the example's size.
        exported = torch.export.export(
            WholeImageLogits(model).eval(), (example,), dynamic_shapes=dynamic_shapes, strict=False
        )
    check_other_size(exported, model, example)
    with torch.no_grad():
        program = torch.onnx.export(
            exported,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["pixel_values"],
            output_names=["logits"],
            verbose=False,
        )
    assert program is not None, "dynamo=True always returns an ONNXProgram (None is the legacy exporter's)"
    written = program.model.opset_imports.get("")
    if written != opset:  # the exporter falls back to its own opset when a conversion fails, and says so only in a log
        raise RuntimeError(f"the exporter wrote opset {written}, not the {opset} asked for")
    metadata = export_metadata(config)
    metadata["opset"] = opset
    program.model.metadata_props[METADATA_KEY] = json.dumps(metadata)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        program.save(str(tmp), external_data=False)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


class OnnxSetr:
    """An onnxruntime session of an exported SETR with the model's inference protocol around it.

    `logits(pixel_values)` is the model's `inference_mode="whole"` output, `slide_logits` its sliding-window one
    (windows cut, batched and averaged by `modeling_setr.slide_window_logits`, the PyTorch model's own loop).
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] = ("CPUExecutionProvider",), threads=None):
        onnxruntime = require("onnxruntime", "running an exported SETR")

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=list(providers))
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ValueError(f"{path}: not a graph written by `setr export-onnx` (no {METADATA_KEY} metadata)")
        self.metadata = json.loads(meta[METADATA_KEY])
        self.patch_size = int(self.metadata["patch_size"])
        self.encoder = self.metadata.get("encoder", "built-in")  # graphs written before backbones: the built-in one
        self.image_grid = tuple(self.metadata["image_grid"])
        self.inference_mode = self.metadata["inference_mode"]
        self.slide_window = check_slide_window(self.metadata["slide_crop_size"], self.metadata["slide_stride"])
        self.slide_batch_size = int(self.metadata["slide_batch_size"])

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Whole-image logits of (B, 3, H, W) float32 `pixel_values`, any H and W (padded to the patch size)."""
        pixel_values = torch.as_tensor(pixel_values, dtype=torch.float32)
        height, width = pixel_values.shape[-2:]
        grid = (math.ceil(height / self.patch_size), math.ceil(width / self.patch_size))
        same_tokens = grid != self.image_grid and grid[0] * grid[1] == self.image_grid[0] * self.image_grid[1]
        if self.encoder == "built-in" and same_tokens:
            # mmseg adds the table unresized when only the token count matches; the graph always resizes it. (A
            # backbone resizes its table by the grid's shape, in the graph as in PyTorch.)
            raise ValueError(
                f"an input of {height}x{width} has a {grid[0]}x{grid[1]} patch grid with as many tokens as the "
                f"{self.image_grid[0]}x{self.image_grid[1]} position table but another shape: the exported graph "
                "cannot reproduce the PyTorch model there; use another size"
            )
        pad_bottom, pad_right = grid[0] * self.patch_size - height, grid[1] * self.patch_size - width
        if pad_bottom or pad_right:  # what the model's patch embedding does inside
            pixel_values = F.pad(pixel_values, (0, pad_right, 0, pad_bottom))
        (logits,) = self.session.run(["logits"], {"pixel_values": pixel_values.contiguous().numpy()})
        return torch.from_numpy(logits)

    def slide_logits(self, pixel_values: torch.Tensor, crop_size=None, stride=None, batch_size=None) -> torch.Tensor:
        """Sliding-window logits at the input resolution, as `SetrForSemanticSegmentation.slide_inference`."""
        default_crop, default_stride = self.slide_window
        with torch.inference_mode():
            return slide_window_logits(
                torch.as_tensor(pixel_values, dtype=torch.float32),
                self.logits,
                default_crop if crop_size is None else crop_size,
                default_stride if stride is None else stride,
                self.slide_batch_size if batch_size is None else batch_size,
            )

    def __call__(self, pixel_values: torch.Tensor, inference_mode: str | None = None) -> torch.Tensor:
        mode = inference_mode or self.inference_mode
        if mode not in ("whole", "slide"):
            raise ValueError(f"inference_mode must be 'whole' or 'slide', got {mode!r}")
        return self.slide_logits(pixel_values) if mode == "slide" else self.logits(pixel_values)


def compare(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    """Max abs logit difference and argmax agreement (share of pixels with the same class; a binary model's classes
    are its logit's sign, `labels_from_scores`)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"logits of shape {tuple(candidate.shape)}, PyTorch's are {tuple(reference.shape)}")
    agreement = labels_from_scores(reference.float(), dim=1) == labels_from_scores(candidate.float(), dim=1)
    return {
        "max_abs_diff": float((reference.float() - candidate.float()).abs().max()),
        "argmax_agreement": float(agreement.double().mean()),
    }


@torch.inference_mode()
def check_parity(model, onnx_model: OnnxSetr, pixel_values: Sequence[torch.Tensor], slide: bool = True) -> list[dict]:
    """PyTorch against onnxruntime on each (1, 3, h, w) input: whole logits, and (with `slide`) slide logits."""
    rows = []
    for values in pixel_values:
        values = values if values.ndim == 4 else values[None]
        size = "x".join(map(str, values.shape[-2:]))
        reference = model(pixel_values=values, inference_mode="whole").logits
        rows.append({"size": size, "mode": "whole", **compare(reference, onnx_model.logits(values))})
        if slide:
            reference = model.slide_inference(values)
            rows.append({"size": size, "mode": "slide", **compare(reference, onnx_model.slide_logits(values))})
    return rows


def parity_table(rows: Sequence[dict]) -> str:
    lines = ["| input | mode | max abs logit diff | argmax agreement |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {r['size']} | {r['mode']} | {r['max_abs_diff']:.2e} | {100 * r['argmax_agreement']:.4f}% |" for r in rows
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="setr export-onnx",
        description="Export a SETR model to ONNX (whole-image forward, dynamic batch, height and width; opset "
        f"{OPSET}) and optionally check it against PyTorch on images.",
    )
    parser.add_argument("--model", required=True, help="a saved model folder or a Hub id")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=OPSET, help="ONNX opset (default: %(default)s)")
    parser.add_argument(
        "--check", nargs="+", metavar="IMAGE", help="images to compare onnxruntime with PyTorch on (whole and slide)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    return parser


def _fail(message: str) -> int:
    print(f"setr export-onnx: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def model_files(model_name: str) -> list[Path]:
    """The files a model is read from: every file of its local folder, or of its Hub download's snapshot folder
    (links into the cache's blobs); none for a name that is neither."""
    folder = Path(model_name).expanduser()
    if not folder.is_dir():
        from transformers.utils import cached_file

        try:
            config = cached_file(model_name, "config.json", local_files_only=True)
        except (OSError, ValueError):
            return []
        if config is None:
            return []
        folder = Path(config).parent
    return [folder, *(path for path in folder.rglob("*") if path.is_file())]


def writes_over_input(output: Path, inputs: Sequence[Path]) -> Path | None:
    """The input (a model file or folder, a --check image) that writing `output` would replace: the same path after
    resolving links, or the same file under another name (a hard link); None when there is none."""
    target = output.expanduser().resolve()
    for path in inputs:
        try:
            if path.resolve() == target or (output.exists() and os.path.samefile(path, output)):
                return path
        except OSError:
            continue
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = Path(args.output)
    try:
        check_opset(args.opset)
    except ValueError as error:
        return _fail(str(error))
    for what, inputs in (
        (f"the model {args.model}'s own", model_files(args.model)),
        ("the --check image", [Path(path) for path in args.check or ()]),
    ):
        replaced = writes_over_input(output, inputs)
        if replaced is not None:
            return _fail(f"--output {output} would write over {what} {replaced}; write the .onnx file elsewhere")
    if output.is_dir():
        return _fail(f"--output {output} is a folder; give the .onnx file to write")
    if output.exists() and not args.overwrite:
        return _fail(f"--output {output} exists; pass --overwrite to replace it")
    try:
        require("onnx", "the ONNX export")
        require("onnxscript", "the ONNX export")
    except MissingExtraError as error:
        return _fail(str(error))
    from .segment import ImageSource, InputError, load_image, load_model

    try:
        model, processor = load_model(args.model, "cpu")
    except ValueError as error:
        return _fail(str(error))
    replaced = writes_over_input(output, model_files(args.model))  # a Hub id: its files are known once downloaded
    if replaced is not None:
        return _fail(f"--output {output} would write over the model {args.model}'s own {replaced}; write it elsewhere")
    start = time.perf_counter()
    try:
        export_onnx(model, output, opset=args.opset)
    except OSError as error:
        return _fail(f"cannot write {output}: {error}")
    except Exception as error:  # the exporter's own failures (torch.export, onnxscript): one line, no traceback
        detail = " ".join(str(error).split())[:300]
        print(f"setr export-onnx: error: the export failed ({type(error).__name__}: {detail})", file=sys.stderr)
        return 1
    print(f"setr export-onnx: wrote {output} (opset {args.opset}) in {time.perf_counter() - start:.1f} s")
    if not args.check:
        return 0
    try:
        onnx_model = OnnxSetr(output)
    except ImportError as error:
        return _fail(f"the check needs onnxruntime: pip install 'transformers-setr[onnx]' ({error})")
    pixel_values: list[torch.Tensor] = []
    failed = 0
    for path in args.check:
        try:
            image = load_image(ImageSource(path, Path(path).stem))
        except InputError as error:
            print(f"setr export-onnx: {path}: {error}", file=sys.stderr)
            failed += 1
            continue
        pixel_values.append(processor(images=image, return_tensors="pt")["pixel_values"])
    rows = check_parity(model, onnx_model, pixel_values)
    print(parity_table(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
