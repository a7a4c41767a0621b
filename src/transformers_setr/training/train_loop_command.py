"""`setr train-loop` (`scripts/train_no_trainer.py`): the SETR recipe as a plain Accelerate loop (no Trainer).
The model and data arguments are those of `setr train` (`workflow`); the loop's own are `LoopArguments`.
Checkpoints (`--checkpointing_steps`) are Accelerate states in `<output_dir>/step_<N>`; `--resume_from_checkpoint
last` continues from the newest one.
"""

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from ..evaluation.protocol import needs_cpu_process_group
from ..files import save_json_atomically
from ..inference.predict import INFERENCE_MODES
from .adapt import save_trained_model
from .recipe import (
    RecipeArguments,
    check_recipe_arguments,
    default_dataloader_workers,
    optimizer_from_arguments,
    scheduler_from_arguments,
    train_collate,
)
from .streaming import StreamingTrainDataset, prepare_rank_stream_loader
from .workflow import (
    adapt_model,
    build_argument_parser,
    build_train_dataset,
    data_errors_as_one_line,
    exit_with_error,
    load_data_and_model,
    push_repo_id,
    push_trained_folder,
    start_command,
    training_record,
    write_model_card,
)

logger = logging.getLogger("transformers_setr.train")


@dataclass
class LoopArguments(RecipeArguments):
    """Arguments of the plain Accelerate loop (`scripts/train_no_trainer.py`); the optimizer, schedule, layer decay,
    freezing and LoRA options are `RecipeArguments`, the same as `setr train`'s."""

    output_dir: str = field(default="setr-output")
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "write over a non-empty --output_dir (refused otherwise, unless resuming)"}
    )
    per_device_train_batch_size: int = field(default=2)
    gradient_accumulation_steps: int = field(default=1)
    max_steps: int = field(default=160_000)
    learning_rate: float = field(default=0.001)
    weight_decay: float = field(default=0.0)
    mixed_precision: str = field(default="no", metadata={"choices": ["no", "bf16", "fp16"]})
    activation_checkpointing: bool = field(default=False, metadata={"help": "recompute encoder layers in backward"})
    seed: int = field(default=42)
    checkpointing_steps: int = field(default=16_000, metadata={"help": "save the loop state every N steps"})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "a step_* folder, or 'last'"})
    logging_steps: int = field(default=50)
    eval_mode: str = field(default="slide", metadata={"choices": list(INFERENCE_MODES)})
    do_eval: bool = field(default=True)
    dataloader_num_workers: int = field(
        default_factory=default_dataloader_workers,
        metadata={"help": "DataLoader workers augmenting the training images (default: default_dataloader_workers)"},
    )
    push_to_hub: bool = field(default=False)
    hub_model_id: str | None = field(default=None)
    hub_token: str | None = field(default=None)

    def __post_init__(self):
        if self.max_steps < 1:
            raise ValueError(f"--max_steps must be at least 1, got {self.max_steps}")
        check_recipe_arguments(self)


LOOP_STATE_FILE = "loop_state.json"


def _last_step_folder(output_dir: Path) -> Path | None:
    folders = [p for p in output_dir.glob("step_*") if (p / LOOP_STATE_FILE).is_file()]
    return max(folders, key=lambda p: int(p.name.split("_")[1]), default=None)


def build_parser() -> HfArgumentParser:
    """The model, data and loop arguments."""
    return build_argument_parser(LoopArguments)


@data_errors_as_one_line
def main(argv: list[str] | None = None) -> int:
    """`setr train-loop` (`scripts/train_no_trainer.py`): the same recipe as a plain Accelerate loop."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration
    from tqdm.auto import tqdm

    from ..evaluation.protocol import evaluate_segmentation

    model_args, data_args, args = start_command(argv, build_parser(), lambda args: args.resume_from_checkpoint)
    accelerator = Accelerator(
        cpu=needs_cpu_process_group(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    launched = os.environ.get("WORLD_SIZE")  # set by torchrun / `accelerate launch`
    if launched is not None and int(launched) != accelerator.num_processes:
        exit_with_error(
            f"launched as {launched} processes but Accelerate formed a group of {accelerator.num_processes} "
            f"on {accelerator.device.type}: the processes would train separately"
        )
    preset, data, model, processor = load_data_and_model(model_args, data_args, args.seed, evaluate=args.do_eval)
    model = adapt_model(model, args)
    if args.activation_checkpointing:  # after LoRA: peft would hook the embeddings' (tuple) output for checkpointing
        model.activation_checkpointing_enable()
    if accelerator.num_processes > 1 and accelerator.device.type in ("cuda", "xpu"):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    train_dataset = build_train_dataset(
        data,
        data_args,
        model,
        processor,
        args.seed,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
    )
    streamed = isinstance(train_dataset, StreamingTrainDataset)  # split by rank already, endless, no sampler
    loader = torch.utils.data.DataLoader(
        train_dataset,
        batch_size=args.per_device_train_batch_size,
        shuffle=not streamed,
        drop_last=not streamed,
        collate_fn=train_collate,
        num_workers=args.dataloader_num_workers,
    )
    optimizer = optimizer_from_arguments(model, args)
    # Not prepared: Accelerate's scheduler wrapper steps once per process; the schedule counts optimizer steps.
    scheduler = scheduler_from_arguments(optimizer, args, args.max_steps)
    if streamed:
        model, optimizer = accelerator.prepare(model, optimizer)
        loader = prepare_rank_stream_loader(accelerator, loader)
    else:
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)

    output_dir = Path(args.output_dir)
    step, epoch, batches_done = 0, 0, 0
    resume = args.resume_from_checkpoint
    if resume == "last":
        resume = _last_step_folder(output_dir)
    if resume:
        accelerator.load_state(str(resume))
        state = json.loads((Path(resume) / LOOP_STATE_FILE).read_text())
        step, epoch, batches_done = state["step"], state["epoch"], state["batches_in_epoch"]
        logger.info("resumed from %s at step %d", resume, step)

    model.train()
    progress = tqdm(total=args.max_steps, initial=step, disable=not accelerator.is_local_main_process, desc="train")
    running_loss, losses = 0.0, []
    while step < args.max_steps:
        train_dataset.set_epoch(epoch)
        loader.set_epoch(epoch)
        epoch_loader = accelerator.skip_first_batches(loader, batches_done) if batches_done else loader
        for batch in epoch_loader:
            batches_done += 1
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            running_loss += loss.detach().float() / args.gradient_accumulation_steps
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            step_loss = accelerator.reduce(running_loss, reduction="mean").item()
            running_loss = 0.0
            losses.append(step_loss)
            progress.update(1)
            if step % args.logging_steps == 0 or step == args.max_steps:
                accelerator.print(json.dumps({"step": step, "loss": step_loss, "lr": scheduler.get_last_lr()[0]}))
            if step % args.checkpointing_steps == 0 or step == args.max_steps:
                folder = output_dir / f"step_{step}"
                accelerator.save_state(str(folder))
                if accelerator.is_main_process:
                    save_json_atomically(
                        folder / LOOP_STATE_FILE,
                        {"step": step, "epoch": epoch, "batches_in_epoch": batches_done, "loss": step_loss},
                    )
            if step >= args.max_steps:
                break
        else:
            epoch, batches_done = epoch + 1, 0
    progress.close()

    metrics = None
    unwrapped = accelerator.unwrap_model(model)
    if args.do_eval:
        eval_dataset_split = data_args.eval_split
        metrics = evaluate_segmentation(
            unwrapped,
            processor,
            data,
            split=eval_dataset_split,
            mode=args.eval_mode,
            accelerator=accelerator,
            max_samples=data_args.max_eval_samples,
            progress=accelerator.is_local_main_process,
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _revert_sync_batch_norm(unwrapped)
        unwrapped = save_trained_model(unwrapped, output_dir)
        processor.save_pretrained(output_dir)
        training = training_record(preset, data, data_args, unwrapped.config, args, accelerator.num_processes)
        training["train_loss"] = sum(losses) / len(losses) if losses else None
        if metrics is not None:
            metrics = {**metrics, "mode": args.eval_mode}
            save_json_atomically(output_dir / "eval_results.json", metrics)
        save_json_atomically(
            output_dir / "train_losses.json",
            {"losses": losses, "first_step": step - len(losses) + 1, "num_processes": accelerator.num_processes},
        )
        repo_id = push_repo_id(args.hub_model_id, args.push_to_hub, output_dir)
        write_model_card(output_dir, unwrapped, model_args, data, data_args, metrics, training, repo_id=repo_id)
        if args.push_to_hub:
            assert repo_id is not None, "push_repo_id names a repository whenever push_to_hub"
            push_trained_folder(output_dir, repo_id, args.hub_token)
    accelerator.end_training()
    return 0


def _revert_sync_batch_norm(module: torch.nn.Module) -> torch.nn.Module:
    """Every SyncBatchNorm inside `module` -> BatchNorm2d (same parameters and statistics), in place, so that the
    saved model loads anywhere; returns `module`."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.SyncBatchNorm):
            plain = torch.nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine)
            plain.load_state_dict(child.state_dict())
            module.add_module(name, plain)
        else:
            _revert_sync_batch_norm(child)
    return module
