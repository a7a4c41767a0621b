"""Multi-node training proven on one host: two `torchrun --nnodes 2 --nproc_per_node 1` processes (node ranks 0 and
1, a static rendezvous on 127.0.0.1 at a free port) train the Trainer path and the Accelerate loop. Each node's
process has LOCAL_RANK 0, which is what a second machine looks like: only the global main process may write the
shared output folder. Their losses equal one process with gradient accumulation 2 within 1e-6 (measured: equal), their
weights within float32 reduction order."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers.training_runs import (
    PYTHON,
    ROOT,
    common_args,
    free_port,
    loop_args,
    run_script,
    step_losses,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def two_nodes(script: str, args: list[str], timeout: int = 600) -> list[subprocess.CompletedProcess]:
    """Node 0 and node 1, each one process, started as two torchrun commands would be on two machines."""
    port = free_port()
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    nodes = []
    for node_rank in (0, 1):
        command = [
            PYTHON, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
            "--node_rank", str(node_rank), "--master_addr", "127.0.0.1", "--master_port", port, script, *args,
        ]  # fmt: skip
        nodes.append(
            subprocess.Popen(
                command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    results = []
    for node in nodes:
        stdout, stderr = node.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(node.args, node.returncode, stdout, stderr))
    for node_rank, result in enumerate(results):
        assert result.returncode == 0, f"node {node_rank}: " + result.stdout[-2000:] + result.stderr[-5000:]
    return results


def assert_same_weights(single_dir: Path, double_dir: Path) -> None:
    single_weights, double_weights = (
        load_file(single_dir / "model.safetensors"),
        load_file(double_dir / "model.safetensors"),
    )
    assert single_weights.keys() == double_weights.keys()
    for key, value in single_weights.items():
        if "running_" in key or "num_batches_tracked" in key:
            continue  # DDP broadcasts rank 0's BatchNorm statistics; a single process accumulates both micro-batches
        torch.testing.assert_close(double_weights[key], value, rtol=1e-4, atol=2e-5, msg=key)


def test_trainer_on_two_nodes_matches_one_process_with_accumulation_and_resumes(ade_root, tmp_path):
    single_dir, nodes_dir, resumed_dir = tmp_path / "single", tmp_path / "nodes", tmp_path / "resumed"
    shared = {"max_steps": 4, "do_eval": "false", "save_strategy": "steps", "save_steps": 2}
    run_script(common_args(ade_root, single_dir, gradient_accumulation_steps=2, **shared), PYTHON, "scripts/train.py")
    two_nodes("scripts/train.py", common_args(ade_root, nodes_dir, **shared))

    # one group of two (2 images per device, 2 processes, no accumulation), not two single-process runs
    assert "global batch 4," in (nodes_dir / "README.md").read_text()
    state = json.loads((nodes_dir / "trainer_state.json").read_text())
    assert state["train_batch_size"] == 2 and state["log_history"][0]["epoch"] == 0.25
    single, nodes = step_losses(single_dir), step_losses(nodes_dir)
    assert sorted(single) == sorted(nodes) == [1, 2, 3, 4]
    for step in single:
        assert nodes[step] == pytest.approx(single[step], rel=0, abs=1e-6), (step, single, nodes)
    assert_same_weights(single_dir, nodes_dir)
    assert not [path.name for path in nodes_dir.rglob("*.tmp")]

    # resume on two nodes from the shared folder's step-2 checkpoint: steps 3 and 4 repeat
    resumed_dir.mkdir()
    subprocess.run(["cp", "-r", str(nodes_dir / "checkpoint-2"), str(resumed_dir)], check=True)
    two_nodes("scripts/train.py", common_args(ade_root, resumed_dir, **shared, resume_from_checkpoint="last"))
    resumed = step_losses(resumed_dir)
    assert sorted(resumed) == [1, 2, 3, 4]  # steps 1 and 2 come from the checkpoint's state
    for step in (3, 4):
        assert resumed[step] == pytest.approx(nodes[step], rel=1e-5, abs=1e-6), (step, resumed, nodes)


def test_accelerate_loop_on_two_nodes_matches_one_process_with_accumulation_and_resumes(ade_root, tmp_path):
    single_dir, nodes_dir, resumed_dir = tmp_path / "single", tmp_path / "nodes", tmp_path / "resumed"
    run_script(
        loop_args(ade_root, single_dir, "--gradient_accumulation_steps", "2", "--do_eval", "false"),
        PYTHON,
        "scripts/train_no_trainer.py",
    )
    two_nodes("scripts/train_no_trainer.py", loop_args(ade_root, nodes_dir, "--do_eval", "false"))
    single = json.loads((single_dir / "train_losses.json").read_text())
    nodes = json.loads((nodes_dir / "train_losses.json").read_text())
    assert (single["num_processes"], nodes["num_processes"]) == (1, 2)
    assert nodes["losses"] == pytest.approx(single["losses"], rel=0, abs=1e-6)
    assert_same_weights(single_dir, nodes_dir)

    resumed_dir.mkdir()
    subprocess.run(["cp", "-r", str(nodes_dir / "step_2"), str(resumed_dir)], check=True)
    two_nodes(
        "scripts/train_no_trainer.py",
        loop_args(ade_root, resumed_dir, "--resume_from_checkpoint", "last", "--do_eval", "false"),
    )
    resumed = json.loads((resumed_dir / "train_losses.json").read_text())
    assert resumed["num_processes"] == 2 and resumed["first_step"] == 3
    assert resumed["losses"] == pytest.approx(nodes["losses"][2:], rel=1e-5, abs=1e-6)
