"""Streaming data (`--streaming`): Parquet shards read as a `datasets.IterableDataset`, never downloaded in full.

The shards are the data files `datasets` resolves for a local folder of `.parquet` files or a Hub dataset id (the
same code: `datasets.load_dataset_builder(...).config.data_files`, read through `datasets`' `xopen`, which streams
`hf://` files). Each shard is one source of the stream (`IterableDataset.from_generator` with the file list as
`gen_kwargs`), so `datasets.distributed.split_dataset_by_node` gives each rank whole files, and every row carries a
stable key: its `shard` (the file's name) and its `position` in that file. The training augmentation is seeded from
that key (`training.streaming`), so a run is reproducible whatever rank or data-loader worker reads a row.

What is read up front, and only that:
- the classes come from their declaration (`id2label`, an `id2label.json` next to the data or in the Hub repo) or
  the preset layouts (ADE20K's Parquet export, a Cityscapes mirror), never from scanning the masks;
- the data report reads the first `REPORT_ROWS` rows of the train stream (`report_sample`), and says so;
- the evaluation split is read into memory (the image files' bytes): all of it, or its first `max_eval_samples` rows.
  A stream has no validation split carved out of train: data without one trains with evaluation off.
"""

import dataclasses
import hashlib
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from transformers.utils import logging

from .._imports import require
from ._datasets import datasets
from .dataset import SegmentationData
from .errors import DatasetFormatError
from .sources import (
    ADE20K_HUB_ALIASES,
    ADE20K_HUB_ID,
    ADE20K_PARQUET_DATA_DIR,
    ADE20K_PARQUET_REVISION,
    CustomOptions,
    custom_data,
    local_folder,
    preset_annotation_column,
    undeclared_classes_error,
)
from .splits import IMAGE_COLUMNS, LABEL_COLUMNS, is_image_struct, normalise_split, pick_column

if TYPE_CHECKING:  # the real module for the type checker; at run time, the missing-extra error
    import pyarrow.parquet as pq
else:
    pq = require("pyarrow.parquet", "streaming data (transformers_setr.data)")

logger = logging.get_logger(__name__)

REPORT_ROWS = 64  # rows of the train stream the data report reads
KEY_COLUMNS = ("shard", "position")  # the stable key of a row: its file's name and its row number in that file
STREAM_FEATURES = datasets.Features(
    {
        "image": datasets.Image(decode=False),
        "annotation": datasets.Image(decode=False),
        "file_name": datasets.Value("string"),
        "shard": datasets.Value("string"),
        "position": datasets.Value("int64"),
    }
)
_READ_BATCH_ROWS = 64  # rows decoded from Parquet at a time (images are large: keep the batch small)
STREAMING_SOURCES = "a local folder of .parquet files or a Hub dataset id (its Parquet files)"


def _rows_of_shards(files: list[str], names: list[str], image_column: str, label_column: str) -> Iterator[dict]:
    """The rows of the Parquet `files` in order, with their key (`names[i]`: the file's name, row number)."""
    from datasets.utils.file_utils import xopen

    for file, name in zip(files, names):
        with xopen(file, "rb") as handle:
            table = pq.ParquetFile(handle)
            position = 0
            for batch in table.iter_batches(batch_size=_READ_BATCH_ROWS, columns=[image_column, label_column]):
                for row in batch.to_pylist():
                    image = row[image_column]
                    yield {
                        "image": image,
                        "annotation": row[label_column],
                        "file_name": (image.get("path") if isinstance(image, dict) else None) or f"{name}:{position}",
                        "shard": name,
                        "position": position,
                    }
                    position += 1


def shard_seed_key(shard: str) -> int:
    """A shard's name as a 64-bit integer, the same on every machine and Python run (unlike `hash`)."""
    return int.from_bytes(hashlib.sha256(shard.encode()).digest()[:8], "little")


def _shard_names(files: Sequence[str]) -> list[str]:
    """Each file's name as the key's shard: the path below the common folder (Hub URLs and local paths alike)."""
    paths = [str(file) for file in files]
    common = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    return [os.path.relpath(path, common) if common else path for path in paths]


def _data_files(
    source: str, *, data_dir: str | None, revision: str | None, cache_dir: str | None, name: str | None
) -> dict[str, list[str]]:
    """split -> its Parquet files, as `datasets` resolves them for `load_dataset(source, streaming=True)`."""
    config = {"name": name} if name else {}
    try:
        builder = datasets.load_dataset_builder(
            source, **config, data_dir=data_dir, revision=revision, cache_dir=cache_dir
        )
    except (ConnectionError, FileNotFoundError, ValueError) as error:  # no such repo, offline, no data files
        raise DatasetFormatError(f"--streaming: {source}: {' '.join(str(error).split())}") from None
    if type(builder).__module__.split(".")[-1] != "parquet" or not builder.config.data_files:
        raise DatasetFormatError(
            f"--streaming reads Parquet shards ({STREAMING_SOURCES}); {source} is read as "
            f"{type(builder).__module__.split('.')[-1]} data: train without --streaming, or convert it to Parquet"
        )
    return {
        normalise_split(split): [str(file) for file in files] for split, files in builder.config.data_files.items()
    }


def load_streaming_data(
    source: str | os.PathLike,
    dataset: str | None = None,
    *,
    splits: Sequence[str] = ("train", "validation"),
    revision: str | None = None,
    cache_dir: str | None = None,
    config_name: str | None = None,
    max_eval_samples: int | None = None,
    **custom_options: Any,
) -> SegmentationData:
    """The data of `source` (`STREAMING_SOURCES`) as a `SegmentationData` whose first split in `splits` (train) is a
    `datasets.IterableDataset` of rows with the stable key columns `shard` and `position`, not split by rank yet, and
    whose other splits (evaluation) are read into memory (`max_eval_samples`: their first rows only). A split of
    `splits` after the first that the data lacks is left out. The classes: as `load_segmentation_data`, whose custom
    data keywords `custom_options` are (`id2label`, `reduce_labels`, `image_column`, `label_column`, `ignore_index`,
    `mask_values`, `undeclared_colors`; a stream has no `train_val_split` or `palette`)."""
    custom = CustomOptions(train_val_split=None, palette=None, **custom_options).checked(dataset)
    folder = local_folder(source)
    hub_id = None if folder is not None else str(source)
    data_dir = None
    if hub_id in ADE20K_HUB_ALIASES:  # the Parquet export of ADE20K (see `sources`)
        hub_id, dataset, data_dir = ADE20K_HUB_ID, "ade20k", ADE20K_PARQUET_DATA_DIR
        revision = revision or ADE20K_PARQUET_REVISION
    elif folder is not None and (folder / ADE20K_PARQUET_DATA_DIR).is_dir() and not custom.declares_classes:
        dataset, data_dir = dataset or "ade20k", ADE20K_PARQUET_DATA_DIR
    if folder is not None and next(folder.rglob("*.parquet"), None) is None:
        raise DatasetFormatError(
            f"--streaming reads Parquet shards ({STREAMING_SOURCES}); {source} holds no .parquet file: train "
            "without --streaming (which reads this folder as it is), or convert it to Parquet"
        )
    where = str(folder) if folder is not None else str(hub_id)
    files_by_split = _data_files(where, data_dir=data_dir, revision=revision, cache_dir=cache_dir, name=config_name)
    wanted = [normalise_split(split) for split in splits]
    if wanted[0] not in files_by_split:
        raise DatasetFormatError(f"{source}: no {wanted[0]} split; available: {sorted(files_by_split)}")
    features = _schema(files_by_split[wanted[0]][0])
    columns = list(features)

    stored_id2label: dict | None = None
    origin = ""
    if dataset is None:
        declared = custom.declared_id2label(folder, hub_id, revision)
        said_nothing = custom.image_column is None and custom.label_column is None and not custom.declares_classes
        if declared is not None:
            stored_id2label, origin = declared
        elif "image" in columns and "semantic_segmentation" in columns and "label" not in columns and said_nothing:
            dataset = "cityscapes"  # a Cityscapes mirror: label ids as RGB PNGs
        else:
            raise undeclared_classes_error(str(source), columns)
    if dataset is not None:
        image, label = "image", preset_annotation_column(columns, str(source))
    else:
        image = pick_column(columns, custom.image_column, IMAGE_COLUMNS, "image", str(source))
        label = pick_column(columns, custom.label_column, LABEL_COLUMNS, "label", str(source))
    for column, what in ((image, "image"), (label, "label")):
        feature = features[column]
        if not (
            isinstance(feature, datasets.Image) or feature == datasets.Value("string") or is_image_struct(feature)
        ):
            raise DatasetFormatError(
                f"{source}: the {what} column {column!r} holds {feature}, not images; name the right one with "
                f"--{what}_column"
            )

    streams: dict[str, Any] = {}
    for index, split in enumerate(dict.fromkeys(wanted)):
        if split not in files_by_split:
            continue
        files = files_by_split[split]
        stream = datasets.IterableDataset.from_generator(
            _rows_of_shards,
            features=STREAM_FEATURES,
            gen_kwargs={"files": files, "names": _shard_names(files), "image_column": image, "label_column": label},
        )
        if index == 0:
            streams[split] = stream
        else:  # evaluation: in memory, so that it has a length and every rank evaluates its share of it
            rows = list(stream.take(max_eval_samples) if max_eval_samples is not None else stream)
            streams[split] = datasets.Dataset.from_list(rows, features=STREAM_FEATURES)
    name = hub_id or (folder.name if folder is not None else None)
    source_name = hub_id or str(folder)
    logger.info(
        "%s: streaming %d Parquet shard(s) of %s%s",
        source_name,
        len(files_by_split[wanted[0]]),
        wanted[0],
        "".join(f"; {split}: {len(rows)} rows in memory" for split, rows in streams.items() if split != wanted[0]),
    )
    splits_dict = datasets.DatasetDict(streams)  # a mapping of split -> table, as `SegmentationData.splits` reads it
    if dataset is not None:
        label_format = "ade20k" if dataset == "ade20k" else "cityscapes-label-ids"
        return SegmentationData(dataset, label_format, splits_dict, source_name)
    assert stored_id2label is not None, "custom data: declared above"
    return custom_data(splits_dict, source_name, stored_id2label, origin, custom, name=name)


def _schema(file: str) -> "datasets.Features":
    """The `datasets` features of a Parquet file, from its schema (and the Hugging Face metadata in it)."""
    from datasets.utils.file_utils import xopen

    try:
        with xopen(file, "rb") as handle:
            schema = pq.read_schema(handle)
    except (OSError, ValueError) as error:
        raise DatasetFormatError(f"{file}: cannot read the Parquet schema: {error}") from None
    return datasets.Features.from_arrow_schema(schema)


def is_stream(table: Any) -> bool:
    """Whether a split of a `SegmentationData` is a stream (has no length)."""
    return isinstance(table, datasets.IterableDataset)


def report_sample(data: SegmentationData, rows: int = REPORT_ROWS) -> SegmentationData:
    """`data` with each streamed split replaced by its first `rows` rows, in memory: what the data report reads of
    a stream (the classes are declared, so nothing else needs the whole stream)."""
    sampled = {
        split: datasets.Dataset.from_list(list(table.take(rows)), features=STREAM_FEATURES)
        if is_stream(table)
        else table
        for split, table in data.splits.items()
    }
    return dataclasses.replace(data, splits=datasets.DatasetDict(sampled))


__all__ = ["KEY_COLUMNS", "REPORT_ROWS", "STREAMING_SOURCES", "is_stream", "load_streaming_data", "report_sample"]
