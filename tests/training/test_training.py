"""Training end to end on a tiny SETR and a synthetic ADE20K tree: the Trainer script, resume, Accelerate."""

import json
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from transformers_setr import SetrForSemanticSegmentation
from transformers_setr.cli import parse_config_overrides
from transformers_setr.training import AugmentationEpochCallback, uses_sync_batch_norm
from transformers_setr.training.train_command import main as main_trainer
from transformers_setr.training.train_loop_command import _revert_sync_batch_norm

from helpers.training_runs import (
    PYTHON,
    ROOT,
    TWO_CPU_PROCESSES,
    TWO_CPU_PROCESSES_TORCHRUN,
    common_args,
    epoch_at_first_step,
    free_port,
    loop_args,
    run_script,
    step_losses,
)


def test_trainer_run_learns_evaluates_and_writes_a_complete_folder(ade_root, tmp_path):
    output_dir = tmp_path / "run"
    main_trainer(common_args(ade_root, output_dir, max_steps=40, logging_steps=5, max_eval_samples=3))

    losses = list(step_losses(output_dir).values())
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < 0.8 * sum(losses[:2]) / 2, losses

    model = SetrForSemanticSegmentation.from_pretrained(output_dir)
    assert model.config.num_labels == 150 and model.config.inference_mode == "slide"
    assert (output_dir / "preprocessor_config.json").is_file()
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert 0.0 <= results["eval_mIoU"] <= 1.0 and 0.0 < results["eval_aAcc"] <= 1.0
    card = (output_dir / "README.md").read_text()
    assert "model-index" in card and f"{100 * results['eval_mIoU']:.2f}" in card
    assert "setr-naive-vit-large-ade20k-512" in card
    # local data: named by its folder, not claimed to be the Hub dataset, and no machine path in the card
    assert "ADEChallengeData2016" in card and "zhoubolei" not in card and str(ade_root.parent) not in card


def test_resume_after_a_kill_gives_the_same_next_step_loss(ade_root, tmp_path):
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    shared = {"max_steps": 6, "save_strategy": "steps", "save_steps": 3, "do_eval": "false"}
    result = run_script(common_args(ade_root, reference_dir, **shared), PYTHON, "scripts/train.py")
    assert "host memory: freed blocks are kept for reuse" in result.stderr  # `training.host_memory` (issue 25)
    reference = step_losses(reference_dir)

    # Kill the run (SIGKILL, no clean-up) once its step-3 checkpoint is complete, then resume from it.
    process = subprocess.Popen(
        [PYTHON, "scripts/train.py", *common_args(ade_root, killed_dir, **shared)],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = killed_dir / "checkpoint-3"
    deadline = time.monotonic() + 300
    while not (checkpoint / "trainer_state.json").is_file() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    for later in killed_dir.glob("checkpoint-*"):
        if later != checkpoint:  # if it got further before the kill, resume from step 3 anyway
            shutil.rmtree(later)

    run_script(
        common_args(ade_root, killed_dir, **shared, resume_from_checkpoint=str(checkpoint)), PYTHON, "scripts/train.py"
    )
    resumed = step_losses(killed_dir)
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), (step, resumed, reference)


def assert_same_weights(single_dir: Path, double_dir: Path) -> None:
    """The saved weights of one process with accumulation and of two processes, within float32 reduction order."""
    single_weights = load_file(single_dir / "model.safetensors")
    double_weights = load_file(double_dir / "model.safetensors")
    assert single_weights.keys() == double_weights.keys()
    for key, value in single_weights.items():
        if "running_" in key or "num_batches_tracked" in key:
            continue  # DDP broadcasts rank 0's BatchNorm statistics; a single process accumulates both micro-batches
        torch.testing.assert_close(double_weights[key], value, rtol=1e-4, atol=2e-5, msg=key)


def test_two_processes_match_one_process_with_the_same_global_batch(ade_root, tmp_path):
    """2 CPU processes (TWO_CPU_PROCESSES) with 2 images each == 1 process, 2 images × 2 accumulation.

    Same samples per step (Accelerate shards batch i to process i % 2; the augmentation depends only on the sample),
    the same BatchNorm batches (2 images), gradients averaged over the same 4 images. Tolerance: float32 reduction
    order (all-reduce vs accumulation) over 6 SGD steps.
    """
    single_dir, double_dir = tmp_path / "single", tmp_path / "double"
    shared = {"max_steps": 6, "do_eval": "false"}
    run_script(common_args(ade_root, single_dir, gradient_accumulation_steps=2, **shared), PYTHON, "scripts/train.py")
    run_script(
        common_args(ade_root, double_dir, **shared), *TWO_CPU_PROCESSES, "--main_process_port", free_port(),
        "scripts/train.py",
    )  # fmt: skip
    # the run's own record of its global batch: 2 per device × 2 processes (no accumulation)
    assert "global batch 4," in (double_dir / "README.md").read_text()
    # 4 of the 16 images per optimizer step in both runs: 2 per process × 2 processes, and 2 × 2 accumulation
    assert epoch_at_first_step(single_dir) == epoch_at_first_step(double_dir) == 0.25
    assert json.loads((double_dir / "trainer_state.json").read_text())["train_batch_size"] == 2
    single, double = step_losses(single_dir), step_losses(double_dir)
    assert sorted(single) == sorted(double) == [1, 2, 3, 4, 5, 6]
    for step in single:
        assert double[step] == pytest.approx(single[step], rel=1e-4, abs=1e-5), (step, single, double)
    assert_same_weights(single_dir, double_dir)


@pytest.fixture(scope="module")
def two_process_loop(ade_root, tmp_path_factory) -> Path:
    """`accelerate launch --multi_gpu --num_processes 2 scripts/train_no_trainer.py`: 4 steps of 2 × 2 images."""
    output_dir = tmp_path_factory.mktemp("loop") / "loop"
    launch = (*TWO_CPU_PROCESSES, "--main_process_port", free_port(), "scripts/train_no_trainer.py")
    run_script(loop_args(ade_root, output_dir), *launch)
    return output_dir


def test_no_trainer_loop_on_two_processes_resumes_and_saves(ade_root, two_process_loop, tmp_path):
    output_dir = two_process_loop
    record = json.loads((output_dir / "train_losses.json").read_text())
    assert record["num_processes"] == 2  # one group of two, not two single-process runs racing on one folder
    full = record["losses"]
    assert len(full) == 4 and all(loss > 0 for loss in full)
    assert (output_dir / "step_2" / "loop_state.json").is_file()
    assert not [path.name for path in output_dir.rglob("*.tmp")]
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert results["num_images"] == 2 and 0 <= results["mIoU"] <= 1
    assert SetrForSemanticSegmentation.from_pretrained(output_dir).config.num_labels == 150

    # resume from step 2 in a fresh output, launched by torchrun this time: steps 3 and 4 repeat exactly
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(output_dir / "step_2", resumed_dir / "step_2")
    launch = (*TWO_CPU_PROCESSES_TORCHRUN, "--master_port", free_port(), "scripts/train_no_trainer.py")
    resumed_args = loop_args(ade_root, resumed_dir, "--resume_from_checkpoint", "last", "--do_eval", "false")
    result = run_script(resumed_args, *launch)
    # each rank reuses its freed host memory (`training.host_memory`, issue 25)
    assert result.stderr.count("host memory: freed blocks are kept for reuse") == 2
    resumed = json.loads((resumed_dir / "train_losses.json").read_text())
    assert resumed["num_processes"] == 2 and resumed["first_step"] == 3
    assert resumed["losses"] == pytest.approx(full[2:], rel=1e-5, abs=1e-6)


def test_no_trainer_two_processes_match_one_process_with_the_same_global_batch(ade_root, two_process_loop, tmp_path):
    """2 processes × 2 images == 1 process × 2 images × 2 accumulation: same samples, losses and weights.

    The seedable sampler's batch i goes to process i % 2, so each step sees the same 4 images in both runs, and
    BatchNorm the same 2-image batches. Tolerance: float32 reduction order (all-reduce vs accumulation), 4 SGD steps.
    """
    single_dir = tmp_path / "single"
    run_script(
        loop_args(ade_root, single_dir, "--gradient_accumulation_steps", "2", "--do_eval", "false"),
        PYTHON,
        "scripts/train_no_trainer.py",
    )
    single = json.loads((single_dir / "train_losses.json").read_text())
    double = json.loads((two_process_loop / "train_losses.json").read_text())
    assert (single["num_processes"], double["num_processes"]) == (1, 2)
    assert "global batch 4," in (single_dir / "README.md").read_text()
    assert "global batch 4," in (two_process_loop / "README.md").read_text()
    assert double["losses"] == pytest.approx(single["losses"], rel=1e-4, abs=1e-5)
    assert_same_weights(single_dir, two_process_loop)


def test_no_trainer_loop_forms_a_cpu_group_only_without_an_accelerator(monkeypatch):
    from transformers_setr.evaluation import needs_cpu_process_group

    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not needs_cpu_process_group()  # one process: Accelerate's own device choice
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert needs_cpu_process_group()
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    assert not needs_cpu_process_group()  # GPUs: NCCL on them, never forced onto the CPU


def test_no_trainer_loop_refuses_launched_processes_that_formed_no_group(ade_root, tmp_path):
    """A launch Accelerate does not turn into a group (here: WORLD_SIZE=2, a device it has no backend for)."""
    code = (
        "import sys, torch; torch.accelerator.is_available = lambda: True; "
        "from transformers_setr.training.train_loop_command import main; sys.exit(main(sys.argv[1:]))"
    )
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2"}
    environment.pop("LOCAL_RANK", None)
    result = subprocess.run(
        [PYTHON, "-c", code, *loop_args(ade_root, tmp_path / "never", "--max_steps", "1", "--do_eval", "false")],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "launched as 2 processes but Accelerate formed a group of 1" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "never").exists()


def test_push_to_hub_uploads_the_final_folder_once_with_our_card(ade_root, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(
        huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id))
    )
    monkeypatch.setattr(
        huggingface_hub.HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)) or "https://hub/commit"
    )
    output_dir = tmp_path / "pushed"
    main_trainer(
        common_args(
            ade_root, output_dir, max_steps=2, max_eval_samples=1, push_to_hub="true", hub_model_id="me/setr-x"
        )
    )
    assert [call[0] for call in calls] == ["create", "upload"]
    upload = calls[1][1]
    assert upload["repo_id"] == "me/setr-x" and Path(upload["folder_path"]) == output_dir
    assert "checkpoint-*" in upload["ignore_patterns"]
    card = (output_dir / "README.md").read_text()
    assert "me/setr-x" in card and "mean_iou" in card


def test_config_overrides_parse_json_and_reject_unknown_fields():
    assert parse_config_overrides('{"hidden_size": 64, "out_indices": [0, 1, 2, 3], "decoder_type": "mla"}') == {
        "hidden_size": 64,
        "out_indices": [0, 1, 2, 3],
        "decoder_type": "mla",
    }
    with pytest.raises(ValueError, match="not SetrConfig fields"):
        parse_config_overrides('{"hidden_sise": 64}')
    with pytest.raises(ValueError, match="JSON object"):
        parse_config_overrides('["hidden_size"]')
    # the old name=value list is refused, with the JSON to write instead
    with pytest.raises(ValueError, match='must be a JSON object.*"hidden_size": ...'):
        parse_config_overrides("hidden_size=64,decoder_type=mla")


def test_sync_batch_norm_only_for_several_gpu_processes_and_reverted_for_saving():
    class Args:
        sync_batch_norm = True
        world_size = 2
        device = torch.device("cpu")

    assert not uses_sync_batch_norm(Args())  # SyncBatchNorm has no CPU kernel
    Args.device = torch.device("cuda")
    assert uses_sync_batch_norm(Args())
    Args.world_size = 1
    assert not uses_sync_batch_norm(Args())

    from conftest import tiny_config

    model = SetrForSemanticSegmentation(tiny_config("pup"))
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    reverted = _revert_sync_batch_norm(synced)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in reverted.modules())
    assert reverted.state_dict().keys() == model.state_dict().keys()


def test_epoch_callback_follows_the_trainer_state():
    class Dataset:
        epoch = None

        def set_epoch(self, epoch):
            self.epoch = epoch

    class State:
        epoch = 2.5  # restored from a checkpoint in the middle of epoch 2

    dataset = Dataset()
    AugmentationEpochCallback(dataset).on_epoch_begin(None, State(), None)
    assert dataset.epoch == 2
    State.epoch = 3.0
    AugmentationEpochCallback(dataset).on_epoch_begin(None, State(), None)
    assert dataset.epoch == 3


def test_bf16_activation_checkpointing_and_ms_flip_evaluation(ade_root, tmp_path, caplog):
    output_dir = tmp_path / "bf16"
    caplog.set_level(logging.INFO, logger="transformers_setr.training.host_memory")
    main_trainer(
        common_args(
            ade_root,
            output_dir,
            max_steps=2,
            bf16="true",
            activation_checkpointing="true",
            eval_mode="ms_flip",
            max_eval_samples=1,
        )
    )
    # checkpointing puts memory first: glibc's allocator is left as it is (`training.host_memory`, issue 25)
    assert "host memory: glibc's default (activation checkpointing puts memory first)" in caplog.text
    losses = step_losses(output_dir)
    assert len(losses) == 2 and all(0 < loss < 100 for loss in losses.values())
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert 0.0 <= results["eval_mIoU"] <= 1.0
    assert "multi-scale + flip" in (output_dir / "README.md").read_text()
