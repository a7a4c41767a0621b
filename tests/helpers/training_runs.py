"""The runs the training tests share: the tiny model, the command lines as users type them, the launchers of two
CPU processes, and reading what a run wrote."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

# Two CPU processes with gloo. `accelerate launch --cpu --num_processes 2` is NOT that in accelerate 1.15: `--cpu`
# selects the simple launcher, which starts one process (several CPU processes need `--mpirun_hostfile`), so the
# run would silently be single-process. `--multi_gpu` selects torch.distributed.run, which on a machine without
# CUDA gives gloo processes on the CPU; the tests check the samples per step.
TWO_CPU_PROCESSES = (
    PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
    "--mixed_precision", "no", "--dynamo_backend", "no",
)  # fmt: skip
# The same two CPU processes through torchrun: the loop must form a gloo group under either launcher.
TWO_CPU_PROCESSES_TORCHRUN = (PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1")


def free_port() -> str:
    """A port no one listens on now (the OS picks it), for the launcher's rendezvous: fixed ports may collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


TINY_FIELDS = {
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "out_indices": [0, 1, 2, 3],
    "decoder_channels": 16,
    "auxiliary_channels": 8,
}
TINY = json.dumps(TINY_FIELDS)


def common_args(ade_root: Path, output_dir: Path, **overrides) -> list[str]:
    args = {
        "preset": "setr-naive-vit-large-ade20k-512",
        "data": str(ade_root),
        "config_overrides": TINY,
        "crop_size": "32",
        "scale": "128,32",
        "output_dir": str(output_dir),
        "per_device_train_batch_size": "2",
        "learning_rate": "0.01",
        "max_steps": "6",
        "logging_steps": "1",
        "eval_strategy": "no",
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": "true",
        "disable_tqdm": "true",
        "seed": "3",
        "dataloader_num_workers": "0",
    }
    args.update({key: str(value) for key, value in overrides.items()})
    return [item for key, value in args.items() for item in (f"--{key}", value)]


def step_losses(output_dir: Path) -> dict[int, float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


def epoch_at_first_step(output_dir: Path) -> float:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return next(entry["epoch"] for entry in state["log_history"] if entry.get("step") == 1)


def run_script(args: list[str], *launcher: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    environment.update(env or {})
    result = subprocess.run([*launcher, *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def loop_args(ade_root: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--preset", "setr-naive-vit-large-ade20k-512", "--data", str(ade_root), "--config_overrides", TINY,
        "--crop_size", "32", "--scale", "128,32", "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "2", "--learning_rate", "0.01", "--logging_steps", "1",
        "--checkpointing_steps", "2", "--max_eval_samples", "2", "--seed", "3", "--max_steps", "4", *extra,
    ]  # fmt: skip


SCRIPT_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "400"}


def run_train_script(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """`python scripts/train.py ARGS`, as the README writes it."""
    environment = {**os.environ, **SCRIPT_ENV, **(env or {})}
    return subprocess.run(
        [PYTHON, "scripts/train.py", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600
    )


def one_line_refusal(argv: list[str], capsys) -> str:
    """`setr ARGV` in-process: exit code 2 and exactly one line on stderr, no traceback; returns that line."""
    from transformers_setr.cli import main as setr

    capsys.readouterr()  # what came before
    with pytest.raises(SystemExit) as exit_info:
        setr(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "Traceback" not in error[0], error
    return error[0]
