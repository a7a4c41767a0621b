"""`--streaming`: training from Parquet shards read as a `datasets.IterableDataset` (tiny model, 4 local shards).

The expected keys are read from the Parquet files with pyarrow here, not through the code under test."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from transformers_setr.cli import main as setr

from helpers.training_runs import (
    TINY,
    TWO_CPU_PROCESSES,
    common_args,
    free_port,
    one_line_refusal,
    run_script,
    step_losses,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SHARD_ROWS = (3, 4, 5, 4)  # rows of the 4 train shards: uneven, as real shards are
CLASSES = {"0": "road", "1": "grass", "2": "sky"}


def write_shards(folder: Path, rows: tuple[int, ...] = SHARD_ROWS, validation: bool = True) -> Path:
    """`data/train-0000k-of-0000n.parquet` (+ one validation shard) of image + label columns, and id2label.json."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    (folder / "data").mkdir(parents=True)

    def table(seed: int, count: int) -> "datasets.Dataset":
        rng = np.random.default_rng(seed)
        images, labels = [], []
        for _ in range(count):
            label = np.zeros((48, 64), np.uint8)
            label[:, int(rng.integers(10, 50)) :] = 1
            label[int(rng.integers(20, 40)) :, :] = 2
            image = (rng.integers(0, 60, (48, 64, 3)) + label[..., None] * 80).astype(np.uint8)
            images.append(Image.fromarray(image))
            labels.append(Image.fromarray(label))
        return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)

    for index, count in enumerate(rows):
        table(index, count).to_parquet(str(folder / "data" / f"train-{index:05d}-of-{len(rows):05d}.parquet"))
    if validation:
        table(99, 2).to_parquet(str(folder / "data" / "validation-00000-of-00001.parquet"))
    (folder / "id2label.json").write_text(json.dumps(CLASSES))
    return folder


def expected_keys(folder: Path) -> set[tuple[str, int]]:
    """(shard, row) of every train row, from the files themselves."""
    files = sorted((folder / "data").glob("train-*.parquet"))
    return {
        (f"train-{i:05d}-of-{len(files):05d}.parquet", row)
        for i, file in enumerate(files)
        for row in range(pq.ParquetFile(file).metadata.num_rows)
    }


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("stream") / "parquet")


def stream_dataset(folder: Path, rank: int, world_size: int, shuffle: int = 0):
    from transformers_setr.data.streaming import load_streaming_data
    from transformers_setr.training.streaming import StreamingTrainDataset

    data = load_streaming_data(folder, splits=("train",))
    return StreamingTrainDataset(
        data, "train", lambda *args: None, seed=3, rank=rank, world_size=world_size, shuffle_buffer_size=shuffle
    )


@pytest.mark.parametrize("shuffle", [0, 4])
def test_two_ranks_see_disjoint_complete_data(shards, shuffle):
    expected = expected_keys(shards)
    assert len(expected) == sum(SHARD_ROWS)
    seen = [list(stream_dataset(shards, rank, 2, shuffle).keys()) for rank in (0, 1)]
    for keys in seen:
        assert len(keys) == len(set(keys))  # no row twice within a rank's pass
    assert set(seen[0]).isdisjoint(seen[1])
    assert set(seen[0]) | set(seen[1]) == expected
    # whole shards per rank (4 shards, 2 ranks): a shard's rows all go to one rank
    assert {shard for shard, _ in seen[0]}.isdisjoint({shard for shard, _ in seen[1]})
    # the next pass of the endless stream: again disjoint and complete, in a new order (and shard assignment) when
    # shuffled (datasets reshuffles the shards with seed + pass before splitting them)
    second = [list(stream_dataset(shards, rank, 2, shuffle).keys(stream_pass=1)) for rank in (0, 1)]
    assert set(second[0]).isdisjoint(second[1]) and set(second[0]) | set(second[1]) == expected
    assert (second != seen) == bool(shuffle)


def test_fewer_shards_than_ranks_still_split_disjoint_and_complete(tmp_path):
    """1 shard, 2 ranks: `split_dataset_by_node` takes every other row instead of whole shards."""
    folder = write_shards(tmp_path / "one", rows=(5,), validation=False)
    seen = [set(stream_dataset(folder, rank, 2).keys()) for rank in (0, 1)]
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == expected_keys(folder)
    assert sorted(len(keys) for keys in seen) == [2, 3]


KEY_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from accelerate import Accelerator
    from transformers_setr.data.streaming import load_streaming_data
    from transformers_setr.evaluation.protocol import needs_cpu_process_group
    from transformers_setr.training.streaming import StreamingTrainDataset, prepare_rank_stream_loader

    class Keys(StreamingTrainDataset):  # one pass of the rank's rows, as (shard number, position) tensors
        def __iter__(self):
            for shard, position in self.keys():
                yield {"shard": int(shard[6:11]), "position": position}

    accelerator = Accelerator(cpu=needs_cpu_process_group())
    data = load_streaming_data(sys.argv[1], splits=("train",))
    dataset = Keys(data, "train", None, rank=accelerator.process_index, world_size=accelerator.num_processes)
    loader = prepare_rank_stream_loader(accelerator, torch.utils.data.DataLoader(dataset, batch_size=2))
    keys = [[s, p] for batch in loader for s, p in zip(batch["shard"].tolist(), batch["position"].tolist())]
    out = f"{sys.argv[2]}/keys_{accelerator.process_index}.json"
    json.dump({"num_processes": accelerator.num_processes, "keys": keys}, open(out, "w"))
    accelerator.end_training()
    """
)


def test_two_launched_processes_read_disjoint_complete_data_through_the_prepared_loader(shards, tmp_path):
    """Under `accelerate launch` (2 gloo processes), through Accelerate's loader: the data is split once."""
    script = tmp_path / "keys.py"
    script.write_text(KEY_SCRIPT)
    run_script([str(script), str(shards), str(tmp_path)], *TWO_CPU_PROCESSES, "--main_process_port", free_port())
    ranks = [json.loads((tmp_path / f"keys_{rank}.json").read_text()) for rank in (0, 1)]
    assert [rank["num_processes"] for rank in ranks] == [2, 2]
    seen = [{(f"train-{s:05d}-of-00004.parquet", p) for s, p in rank["keys"]} for rank in ranks]
    assert sum(len(rank["keys"]) for rank in ranks) == sum(SHARD_ROWS)
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == expected_keys(shards)


def loop_args(folder: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "train-loop", "--preset", "setr-naive-vit-large-ade20k-512", "--data", str(folder), "--streaming", "true",
        "--config_overrides", TINY, "--crop_size", "32", "--scale", "128,32", "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "2", "--learning_rate", "0.01", "--logging_steps", "1",
        "--checkpointing_steps", "3", "--seed", "3", "--max_steps", "6", "--do_eval", "false",
        "--shuffle_buffer_size", "4", *extra,
    ]  # fmt: skip


def losses_of(output_dir: Path) -> dict:
    return json.loads((output_dir / "train_losses.json").read_text())


def test_a_streaming_run_repeated_gives_the_same_losses_and_resumes_exactly(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert setr(loop_args(shards, tmp_path / "a")) == 0
    assert setr(loop_args(shards, tmp_path / "b")) == 0
    assert setr(loop_args(shards, tmp_path / "seed", "--seed", "4")) == 0
    first, again, other = losses_of(tmp_path / "a"), losses_of(tmp_path / "b"), losses_of(tmp_path / "seed")
    assert len(first["losses"]) == 6 and first["num_processes"] == 1
    # 6 steps x 2 rows = 12 of the 16 rows, then the stream's next pass: the same losses, bit for bit
    assert again["losses"] == first["losses"]
    assert other["losses"] != first["losses"]  # another seed: other shuffles and crops

    # resume from the step-3 state in a fresh folder: the stream's consumed rows are read again and skipped
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "a" / "step_3", resumed / "step_3")
    assert setr(loop_args(shards, resumed, "--resume_from_checkpoint", "last")) == 0
    assert losses_of(resumed)["first_step"] == 4
    assert losses_of(resumed)["losses"] == pytest.approx(first["losses"][3:], rel=1e-6, abs=1e-7)


def test_two_process_streaming_trainer_run(shards, tmp_path):
    """`setr train --streaming` on 2 gloo processes: one group (global batch 4), each rank on its own shards."""
    output_dir = tmp_path / "two"
    args = common_args(shards, output_dir, max_steps=4, do_eval="false", streaming="true", shuffle_buffer_size=4)
    run_script(args, *TWO_CPU_PROCESSES, "--main_process_port", free_port(), "scripts/train.py")
    assert "global batch 4," in (output_dir / "README.md").read_text()
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["train_batch_size"] == 2
    losses = step_losses(output_dir)
    assert sorted(losses) == [1, 2, 3, 4] and all(np.isfinite(list(losses.values())))


def test_streaming_refusals_are_one_line(shards, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "never"
    # a folder of image + mask files: not Parquet
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "masks").mkdir()
    Image.new("RGB", (8, 8)).save(raw / "images" / "a.png")
    Image.new("L", (8, 8)).save(raw / "masks" / "a.png")
    (raw / "id2label.json").write_text(json.dumps(CLASSES))
    assert "no .parquet file" in one_line_refusal(loop_args(raw, out), capsys)
    # a Hub id that cannot be reached (offline): one line, naming it
    offline = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "transformers_setr", *loop_args(Path("nobody-xyz/nothing"), out)],
        env=offline, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "nobody-xyz/nothing" in lines[-1] and lines[-1].startswith("setr train-loop: error: --streaming: ")
    # no validation split while evaluating: none is carved out of a stream
    no_validation = write_shards(tmp_path / "novalidation", validation=False)
    message = one_line_refusal([*loop_args(no_validation, out), "--do_eval", "true"], capsys)
    assert "no validation split" in message and "--do_eval false" in message
    # options a stream cannot honour
    trainer = ["train", *common_args(shards, out, streaming="true")]
    assert "--num_train_epochs" in one_line_refusal([*trainer, "--num_train_epochs", "2"], capsys)
    assert "--max_train_samples" in one_line_refusal([*loop_args(shards, out), "--max_train_samples", "4"], capsys)
    assert "--shuffle_buffer_size is for --streaming" in one_line_refusal(
        ["train-loop", *loop_args(shards, out)[1:][:-2], "--streaming", "false", "--shuffle_buffer_size", "4"], capsys
    )
    assert not out.exists()


def test_augmentation_seeds_are_pinned():
    """The map-style path still seeds from (seed, epoch, index) (value from the code before streaming existed); a
    streamed row from (seed, pass, shard, position), with the shard's name hashed by sha256, never `hash()`."""
    from transformers_setr.training.recipe import sample_seed
    from transformers_setr.training.streaming import stream_sample_seed

    assert sample_seed(3, 1, 7) == 2219947408961387175
    assert stream_sample_seed(3, 1, "train-00000-of-00004.parquet", 2) == 6563644271311003872
    assert stream_sample_seed(3, 1, "train-00001-of-00004.parquet", 2) != 6563644271311003872
