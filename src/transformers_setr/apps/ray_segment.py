"""`setr segment` on a Ray cluster with Ray Data (the `[ray]` extra): `segment_with_ray`, and `setr segment --engine
ray`.

    import ray
    from transformers_setr.apps.ray_segment import segment_with_ray

    ray.init()  # or ray.init(address="auto") on a cluster
    segment_with_ray("converted/setr-pup-ade20k", ["photos/"], "segmented/", concurrency=4, num_gpus=1)

The images are listed on the driver (files, folders, globs, URLs as `setr segment` takes them) or read from a parquet
table (a `path` column of image files, or an `image` column of encoded bytes or `datasets`' {"bytes", "path"} with a
`name` column or paths to name the outputs). `map_batches` runs `SegmentPredictor`, a stateful class: each of its
`concurrency` replicas loads the model once (`num_gpus` each), decodes its batch, segments it with the same
protocol and code as `setr segment` (`predict_label_maps`) and writes the same files (`labels/`, `overlays/`,
`classes/`, `confidence/`: the output folder must be visible to every worker, as for several nodes under torchrun).
The driver streams the rows into `class_shares.parquet`: one row per image (name, source, status, error, size)
and one column of pixel shares per class.
"""

import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._imports import require
from .segment import (
    DTYPES,
    ImageSource,
    InputError,
    Outputs,
    SegmentOptions,
    _processed_size,
    expand_inputs,
    load_image,
    load_model,
    predict_label_maps,
    save_outputs,
)

CLASS_SHARES = "class_shares.parquet"
_ROW_COLUMNS = ("name", "source", "status", "error", "width", "height")


def share_columns(id2label: dict[int, str]) -> list[str]:
    """The parquet's column of each predicted class: its label (`label (id)` when two classes share a label)."""
    labels = [str(id2label[i]) for i in sorted(id2label)]
    return [f"{label} ({i})" if labels.count(label) > 1 else label for i, label in zip(sorted(id2label), labels)]


class SegmentPredictor:
    """The `map_batches` class: one model per replica, loaded once. A batch (`location` or `image_bytes`, `name`)
    becomes the same outputs as `setr segment` writes and one row per image for the class-share table."""

    def __init__(self, model: str, output_dir: str, options: SegmentOptions) -> None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # Ray sets CUDA_VISIBLE_DEVICES
        self.model, self.processor = load_model(model, device)
        self.model_name, self.dtype = model, DTYPES[options.dtype]
        self.mode = options.mode or self.model.config.inference_mode
        self.options = dataclasses.replace(options, mode=self.mode)
        self.outputs = Outputs(Path(output_dir), confidence=options.save_confidence)
        id2label = self.model.config.prediction_id2label
        self.columns = dict(zip(sorted(id2label), share_columns(id2label)))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        rows: list[dict[str, Any]] = []
        todo: dict[tuple, list[tuple[int, ImageSource, Any]]] = {}  # processed size -> images of one model batch
        for index, name in enumerate(batch["name"]):
            location = str(batch["location"][index])
            source = ImageSource(location, str(name))
            rows.append({"name": source.name, "source": location, "status": "failed", "error": None})
            if self.options.skip_existing and (record := self.outputs.existing_record(source.name)) is not None:
                rows[index].update(self._shares(record), status="skipped")
                continue
            try:
                data = batch["image_bytes"][index] if "image_bytes" in batch else None
                image = load_image(source, None if data is None else bytes(data))
            except InputError as error:
                rows[index]["error"] = str(error)
                continue
            size = (image.height, image.width) if self.mode == "ms_flip" else _processed_size(self.processor, image)
            todo.setdefault(size, []).append((index, source, image))
        for group in todo.values():
            self._segment(group, rows)
        columns = (*_ROW_COLUMNS, *self.columns.values())
        return {column: [row.get(column) for row in rows] for column in columns}

    def _segment(self, group: list[tuple[int, ImageSource, Any]], rows: list[dict[str, Any]]) -> None:
        try:
            predictions = predict_label_maps(
                self.model,
                self.processor,
                [image for _, _, image in group],
                self.mode,
                self.dtype,
                confidence=self.outputs.confidence,
            )
        except (InputError, ValueError, RuntimeError) as error:
            if len(group) > 1:
                for item in group:
                    self._segment([item], rows)
            else:
                rows[group[0][0]]["error"] = str(error).splitlines()[0]
            return
        for (index, source, image), prediction in zip(group, predictions):
            labels, confidence = prediction if isinstance(prediction, tuple) else (prediction, None)
            try:
                record = save_outputs(
                    self.outputs,
                    source,
                    image,
                    labels,
                    self.model.config,
                    self.options,
                    model_name=self.model_name,
                    confidence=confidence,
                )
            except OSError as error:
                rows[index]["error"] = f"cannot write its outputs: {error}"
                continue
            rows[index].update(self._shares(record), status="segmented")

    def _shares(self, record: dict[str, Any]) -> dict[str, Any]:
        shares = dict.fromkeys(self.columns.values(), 0.0)
        shares.update({self.columns[entry["id"]]: entry["share"] for entry in record["classes"]})
        return {"width": record["width"], "height": record["height"], **shares}


def _parquet_rows(tables: list[str]) -> Any:
    """The Ray dataset of parquet tables of images: `location` and `name` (and `image_bytes`) columns."""
    ray = require("ray", "segment_with_ray")
    table = ", ".join(tables)
    dataset = ray.data.read_parquet(tables)
    names = dataset.schema().names
    if "path" in names:

        def from_paths(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            paths = [str(path) for path in batch["path"]]
            given = batch.get("name")
            return {"location": np.array(paths), "name": np.array(given if given is not None else _stems(paths))}

        return dataset.map_batches(from_paths, batch_format="numpy")
    if "image" in names:

        def from_images(batch: dict[str, np.ndarray]) -> dict[str, Any]:
            images = list(batch["image"])
            data = [image["bytes"] if isinstance(image, dict) else image for image in images]
            paths = [str(image.get("path") or "") if isinstance(image, dict) else "" for image in images]
            if "name" in batch:
                names_ = [str(name) for name in batch["name"]]
            elif all(paths):
                names_ = _stems(paths)
            else:
                raise ValueError(f"{table}: images without a path need a `name` column to name their outputs")
            return {
                "location": [path or name for path, name in zip(paths, names_)],
                "name": names_,
                "image_bytes": data,
            }

        return dataset.map_batches(from_images, batch_format="numpy")
    raise ValueError(f"{table}: a parquet table of images needs a `path` or an `image` column, it has {names}")


def _stems(paths: Sequence[str]) -> list[str]:
    return [Path(path).stem for path in paths]


def segment_with_ray(
    model: str,
    inputs: Sequence[str] | str,
    output_dir: str | os.PathLike,
    *,
    concurrency: int = 1,
    num_gpus: float = 0,
    batch_size: int = 1,
    **options: Any,
) -> dict[str, Any]:
    """Segment `inputs` (image files, folders, globs, URLs; or one `.parquet` table, see the module) with the SETR
    `model` (a folder or Hub id) on Ray Data: `concurrency` model replicas of `num_gpus` GPUs each, `batch_size`
    images per `map_batches` call (those of one processed size run through the model together). Writes
    `setr segment`'s files into `output_dir` and `class_shares.parquet`; returns the counts by status and the
    table's path. `options`: those of `setr segment` (`SegmentOptions`: `mode`, `dtype`, `skip_existing`,
    `save_confidence`, `alpha`, `side_by_side`, `overlay_max_side`). Starts a local Ray (`ray.init()`) unless one is
    running."""
    segment_options = SegmentOptions(**options)  # a wrong keyword is a TypeError here, before Ray starts
    ray = require("ray", "segment_with_ray")
    pyarrow = require("pyarrow", "segment_with_ray")
    import pyarrow.parquet as parquet
    from transformers import AutoConfig

    import transformers_setr  # noqa: F401  (registers SETR with the Auto classes)

    output = Path(output_dir)
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output} is a file, not a folder")
    id2label = AutoConfig.from_pretrained(model).prediction_id2label
    if not ray.is_initialized():
        ray.init()
    inputs = [str(inputs)] if isinstance(inputs, (str, os.PathLike)) else [str(text) for text in inputs]
    tables = [text for text in inputs if text.endswith(".parquet")]
    if tables and len(tables) < len(inputs):
        raise ValueError("give either images (files, folders, globs, URLs) or parquet tables of images, not both")
    problems: list[tuple[str, str]] = []
    if tables:
        dataset = _parquet_rows(tables)
    else:
        sources, problems = expand_inputs(inputs, output)
        if not sources:
            raise ValueError("; ".join(f"{t}: {p}" for t, p in problems) or "no images to segment")
        dataset = ray.data.from_items([{"location": s.location, "name": s.name} for s in sources])
    output.mkdir(parents=True, exist_ok=True)
    results = dataset.map_batches(
        SegmentPredictor,
        fn_constructor_kwargs=dict(model=model, output_dir=str(output), options=segment_options),
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=concurrency,
        num_gpus=num_gpus,
    )
    columns = share_columns(id2label)
    schema = pyarrow.schema(
        [(name, pyarrow.string()) for name in _ROW_COLUMNS[:4]]
        + [("width", pyarrow.int64()), ("height", pyarrow.int64())]
        + [(column, pyarrow.float64()) for column in columns]
    )
    counts = {"segmented": 0, "skipped": 0, "failed": len(problems)}
    temporary = output / f".{CLASS_SHARES}.{os.getpid()}.tmp"
    try:
        with parquet.ParquetWriter(temporary, schema) as writer:
            if problems:
                writer.write_table(
                    pyarrow.Table.from_pylist(
                        [{"source": t, "status": "failed", "error": p} for t, p in problems], schema=schema
                    )
                )
            for batch in results.iter_batches(batch_format="pyarrow"):  # streamed: the driver holds one batch
                table = batch.select(schema.names).cast(schema)
                for source, status, error in zip(
                    *(table.column(c).to_pylist() for c in ("source", "status", "error"))
                ):
                    counts[status] += 1
                    if error:
                        print(f"setr segment: {source}: {error}", file=sys.stderr)
                writer.write_table(table)
        temporary.replace(output / CLASS_SHARES)
    finally:
        temporary.unlink(missing_ok=True)
    return {**counts, "class_shares": str(output / CLASS_SHARES)}


def segment_command_with_ray(args) -> int:
    """`setr segment --engine ray`: `segment_with_ray` with the command's options; one-line errors."""
    try:
        require("ray", "setr segment --engine ray")
        result = segment_with_ray(
            args.model,
            args.inputs,
            args.output,
            concurrency=args.concurrency or 1,
            num_gpus=args.num_gpus or 0,
            batch_size=args.batch_size,
            **dataclasses.asdict(SegmentOptions.from_args(args)),
        )
    except (ImportError, ValueError, OSError) as error:
        print(f"setr segment: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(
        f"setr segment: {result['segmented']} segmented, {result['skipped']} skipped (already done), "
        f"{result['failed']} failed with Ray; {result['class_shares']}",
        file=sys.stderr,
    )
    return 1 if result["failed"] else 0


__all__ = ["SegmentPredictor", "segment_with_ray", "share_columns"]
