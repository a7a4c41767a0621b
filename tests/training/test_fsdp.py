"""FSDP: refused on the CPU, where accelerate 1.15 would silently run DDP instead (its `AcceleratorState` forms an
FSDP run only on GPU-like devices)."""

import json
from pathlib import Path

import pytest

from helpers.training_runs import (
    PYTHON,
    TWO_CPU_PROCESSES_TORCHRUN,
    common_args,
    free_port,
    loop_args,
    one_line_refusal,
    run_script,
)


def test_fsdp_is_refused_on_the_cpu_in_both_commands(ade_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "never"
    message = one_line_refusal(["train", *common_args(ade_root, out, fsdp="full_shard")], capsys)
    assert message.startswith("setr train: error: --fsdp: FSDP needs GPUs in accelerate 1.15") and "DDP" in message
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --use_fsdp` sets
    for command, args in (("train", common_args(ade_root, out)), ("train-loop", loop_args(ade_root, out))):
        message = one_line_refusal([command, *args], capsys)
        assert f"setr {command}: error: accelerate launch --use_fsdp" in message and "silently run DDP" in message
    assert not out.exists()


def test_head_and_layer_decay_groups_survive_fsdp2_wrapping_on_two_gloo_processes(tmp_path):
    """`fully_shard` as Accelerate applies it (`tests/training/fsdp2_groups_check.py`): every optimizer group keeps its
    parameters, by name, its lr (heads 10x, layer decay) and weight decay; the parameters are sharded (DTensors);
    3 AdamW steps on the same batch on both ranks give the losses of the unsharded model on one process."""
    script = str(Path(__file__).parent / "fsdp2_groups_check.py")
    run_script([script, str(tmp_path)], *TWO_CPU_PROCESSES_TORCHRUN, "--master_port", free_port())
    run_script([script, str(tmp_path), "plain"], PYTHON)
    plain = json.loads((tmp_path / "groups_plain.json").read_text())
    for rank in (0, 1):
        sharded = json.loads((tmp_path / f"groups_{rank}.json").read_text())
        assert sharded["world_size"] == 2 and sharded["sharded"]
        assert sharded["after"] == sharded["before"] == plain["before"]
        heads = next(group for group in sharded["after"] if group[0] == "heads")
        assert heads[1] == pytest.approx(0.1) and all("head" in name for name in heads[3])
        assert sharded["losses"] == pytest.approx(plain["losses"], rel=1e-5, abs=1e-6)
