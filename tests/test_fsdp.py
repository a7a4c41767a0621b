"""FSDP: refused on the CPU, where accelerate 1.15 would silently run DDP instead (its `AcceleratorState` forms an
FSDP run only on GPU-like devices)."""

import pytest
from test_training import ade_root, common_args, loop_args  # noqa: F401 (ade_root: the synthetic ADE20K fixture)

from transformers_setr.cli import main as setr


def refusal(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        setr(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "Traceback" not in error[0], error
    return error[0]


def test_fsdp_is_refused_on_the_cpu_in_both_commands(ade_root, tmp_path, capsys, monkeypatch):  # noqa: F811
    out = tmp_path / "never"
    message = refusal(["train", *common_args(ade_root, out, fsdp="full_shard")], capsys)
    assert message.startswith("setr train: error: --fsdp: FSDP needs GPUs in accelerate 1.15") and "DDP" in message
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --use_fsdp` sets
    for command, args in (("train", common_args(ade_root, out)), ("train-loop", loop_args(ade_root, out))):
        message = refusal([command, *args], capsys)
        assert f"setr {command}: error: accelerate launch --use_fsdp" in message and "silently run DDP" in message
    assert not out.exists()
