"""`setr train` (`scripts/train.py`): train or fine-tune SETR with the Hugging Face Trainer and mmsegmentation's SETR
recipe.

    # one of the seven released recipes, e.g. SETR-Naive on ADE20K (backbone from the converted ViT-L pretrain)
    setr train --preset setr-naive-vit-large-ade20k-512 --output_dir runs/naive-ade --bf16
    # several GPUs / nodes: the same command under accelerate (or torchrun)
    accelerate launch --multi_gpu --num_processes 8 -m transformers_setr train --preset setr-pup-vit-large-ade20k-512

The arguments are `ModelArguments`, `DataArguments` (`workflow`) and `SetrTrainingArguments` (`recipe`); every field
of the preset's recipe (batch, iterations, lr, crop...) is a default that the command line can override.
"""

from pathlib import Path
from typing import Any, cast

import torch
from transformers import HfArgumentParser

from ..models.setr.configuration_setr import SetrConfig
from .adapt import is_lora_model, save_trained_model
from .recipe import SetrTrainingArguments, uses_sync_batch_norm
from .workflow import (
    CommandLineError,
    adapt_model,
    build_argument_parser,
    build_trainer,
    data_errors_as_one_line,
    exit_with_error,
    load_data_and_model,
    push_repo_id,
    push_trained_folder,
    resolve_resume_checkpoint,
    start_command,
    training_record,
    write_model_card,
)


def build_parser() -> HfArgumentParser:
    """The model, data and Trainer arguments (`TrainingArguments`' fields with the SETR recipe's)."""
    return build_argument_parser(SetrTrainingArguments)


@data_errors_as_one_line
def main(argv: list[str] | None = None) -> int:
    """`setr train` (`scripts/train.py`): the Trainer path."""
    model_args, data_args, training_args = start_command(
        argv, build_parser(), lambda args: args.resume_from_checkpoint if args.do_train else None
    )
    try:
        resume = training_args.resume_from_checkpoint if training_args.do_train else None
        resume = resolve_resume_checkpoint(
            resume, training_args.output_dir, overwrite=training_args.overwrite_output_dir
        )
    except CommandLineError as error:
        exit_with_error(str(error))
    preset, data, model, processor = load_data_and_model(
        model_args, data_args, training_args.seed, evaluate=training_args.do_eval
    )
    model = adapt_model(model, training_args)
    if uses_sync_batch_norm(training_args):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    push_repo = push_repo_id(training_args.hub_model_id, training_args.push_to_hub, training_args.output_dir)
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False  # we push once, with our card

    trainer = build_trainer(
        model, processor, data, training_args, data_args, train=training_args.do_train, evaluate=training_args.do_eval
    )
    training = training_record(preset, data, data_args, model.config, training_args, training_args.world_size)
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=resume)
        if not is_lora_model(model):  # a LoRA model is saved at the end: its adapter, then merged
            trainer.save_model()
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
        training["train_loss"] = result.training_loss
    metrics = None
    if training_args.do_eval:
        metrics = trainer.evaluate()
        # The summary only: the per-class IoUs and accuracies (NaN for absent classes) stay in eval_results.json.
        trainer.log_metrics(
            "eval", {key: value for key, value in metrics.items() if not key.startswith(("eval_IoU-", "eval_Acc-"))}
        )
        trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
        saved = trainer.accelerator.unwrap_model(model)
        if is_lora_model(saved) and training_args.do_train:
            saved = save_trained_model(saved, training_args.output_dir)
        processor.save_pretrained(training_args.output_dir)
        summary = _summary_from_eval(metrics, model.config) if metrics else None
        if summary is not None:
            summary["mode"] = training_args.eval_mode
        write_model_card(
            training_args.output_dir,
            saved,
            model_args,
            data,
            data_args,
            summary,
            training,
            repo_id=push_repo,
        )
        if push_to_hub:
            assert push_repo is not None, "push_repo_id names a repository whenever push_to_hub"
            push_trained_folder(training_args.output_dir, push_repo, training_args.hub_token)
    # Every process leaves together, after the process group is torn down: a rank that exits while rank 0 is still
    # writing, with the group alive, can abort in gloo's teardown ("terminate called without an active exception").
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return 0


def _summary_from_eval(metrics: dict[str, float], config: SetrConfig) -> dict[str, Any]:
    """The Trainer's `eval_*` floats back into `summarize_areas` form (fractions; per-class by name)."""
    per_class = {
        name: metrics.get(f"eval_IoU-{name}", float("nan"))
        for name in (cast(dict[int, str], config.id2label)[i] for i in range(config.num_labels))
    }
    return {
        "mIoU": metrics["eval_mIoU"],
        "mAcc": metrics["eval_mAcc"],
        "aAcc": metrics["eval_aAcc"],
        "per_class_iou": per_class,
    }
