"""Training from a stream (`--streaming`, `data.streaming`): each rank reads its own Parquet shards, once split.

- The split: `datasets.distributed.split_dataset_by_node` (whole shards per rank when their number is a multiple of
  the world size, else every world-size-th row of the stream). Accelerate must not split again: its data loader
  would dispatch rank 0's batches to everyone (`dispatch_batches`, its default for an `IterableDataset`) or keep
  every other batch of each rank's already split stream (`IterableDatasetShard`). So the loader of a
  `StreamingTrainDataset` is prepared as one process's (`prepare_rank_stream_loader`): device placement and the
  end-of-data bookkeeping, no split.
- Each rank's stream is endless: it starts over (pass 1, 2, ...) when its shards run out, so ranks whose shards
  hold different numbers of rows never wait for each other at an epoch's end; `max_steps` ends the run.
- A row's augmentation is seeded from `(seed, pass, shard, position)` (`stream_sample_seed`), its stable key, so a
  run repeated on the same world size and number of data-loader workers sees the same crops in the same order. The
  optional shuffle buffer (`shuffle_buffer_size`) is `datasets`' (`IterableDataset.shuffle`, seeded; the pass is its
  epoch), shard order included.
"""

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from ..data.dataset import SegmentationData
from ..data.errors import DatasetFormatError
from ..data.streaming import shard_seed_key


def stream_sample_seed(seed: int, stream_pass: int, shard: str, position: int) -> int:
    """The seed of one streamed row's augmentation: independent streams per (seed, pass, shard, position)."""
    key = [seed, stream_pass, shard_seed_key(shard), position]
    return int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0] >> 1)


class StreamingTrainDataset(torch.utils.data.IterableDataset):
    """This rank's share of a streamed split, decoded and augmented, endlessly (see the module docstring): items are
    `{"pixel_values", "labels"}` tensors, as `recipe.SegmentationTrainDataset`'s.

    Args:
        data: a `SegmentationData` whose `split` is a `datasets.IterableDataset` (`data.streaming`).
        augmentation: `SetrTrainAugmentation` (image, labels, generator) -> tensors.
        rank, world_size: this process and the number of processes (`split_dataset_by_node`).
        shuffle_buffer_size: rows in `datasets`' shuffle buffer (0: the stream's order).
    """

    def __init__(
        self,
        data: SegmentationData,
        split: str,
        augmentation: Callable,
        seed: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer_size: int = 0,
    ) -> None:
        from datasets.distributed import split_dataset_by_node

        if split not in data.splits:
            raise ValueError(f"{data.source} has no split {split!r}; it has {sorted(data.splits)}")
        stream = data.splits[split]
        self.num_shards = stream.num_shards
        self.rows = split_dataset_by_node(stream, rank=rank, world_size=world_size)
        if shuffle_buffer_size:
            # After the split: `split_dataset_by_node` keeps no shuffling of the dataset it is given, whose order
            # would then be the same every pass. Shuffled here, every rank permutes the shard list with the same
            # seed + pass before taking its shards (datasets' iteration order), so the split stays disjoint.
            self.rows = self.rows.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
        self.data = data
        self.augmentation = augmentation
        self.seed = seed
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer and Accelerate at an epoch's start; the stream counts its own passes instead."""

    def keys(self, stream_pass: int = 0) -> Iterator[tuple[str, int]]:
        """The (shard, position) keys of this rank's rows in one pass, in order, without decoding any image."""
        rows = self.rows.select_columns(["shard", "position"])
        rows.set_epoch(stream_pass)  # on the new dataset: `select_columns` does not carry the epoch over
        for row in rows:
            yield row["shard"], int(row["position"])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        in_worker = torch.utils.data.get_worker_info() is not None
        stream_pass = 0
        while True:
            self.rows.set_epoch(stream_pass)  # the shuffle's epoch: a new order of shards and buffer each pass
            count = 0
            for row in self.rows:
                example = self.data.decode(row)
                seed = stream_sample_seed(self.seed, stream_pass, row["shard"], int(row["position"]))
                pixel_values, labels = self.augmentation(
                    example.image, example.labels, torch.Generator().manual_seed(seed)
                )
                count += 1
                yield {"pixel_values": pixel_values, "labels": labels}
            if count == 0:
                if in_worker:  # a data-loader worker with no shard of its own: the other workers have the rows
                    return
                raise DatasetFormatError(
                    f"{self.data.source}: rank {self.rank} of {self.world_size} has no training rows "
                    f"({self.num_shards} shard(s) split across {self.world_size} processes)"
                )
            stream_pass += 1


def prepare_rank_stream_loader(accelerator: Any, loader: torch.utils.data.DataLoader) -> Any:
    """`accelerator.prepare(loader)` for a loader of a `StreamingTrainDataset`, already split by rank: Accelerate's
    loader as for one process (device placement, `end_of_dataloader`, no dispatching, no second split)."""
    from accelerate.data_loader import prepare_data_loader

    prepared = prepare_data_loader(
        loader,
        accelerator.device,
        num_processes=1,
        process_index=0,
        put_on_device=True,
        dispatch_batches=False,
        non_blocking=accelerator.dataloader_config.non_blocking,
    )
    accelerator._dataloaders.append(prepared)  # as `Accelerator.prepare` records it (for its state and skipping)
    return prepared


__all__ = ["StreamingTrainDataset", "prepare_rank_stream_loader", "stream_sample_seed"]
