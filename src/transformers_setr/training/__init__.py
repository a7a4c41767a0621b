"""Training: augmentation (`augmentation`), the SETR recipe (`recipe`: optimizer groups, schedules, layer decay,
`SetrTrainer`), freezing and LoRA (`adapt`), what both command lines share (`workflow`: the model and data arguments,
data, model, output folder, card) and the commands themselves (`train_command`: `setr train` with the Trainer;
`train_loop_command`: `setr train-loop` with Accelerate). Needs the `[train]` extra.
"""

from .._imports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "recipe": (
            "HEAD_PARAMETER_KEY",
            "split_parameter_groups",
            "build_sgd_optimizer",
            "poly_learning_rate",
            "build_poly_scheduler",
            "OPTIMIZERS",
            "SCHEDULES",
            "RecipeArguments",
            "build_optimizer",
            "build_scheduler",
            "default_dataloader_workers",
            "check_recipe_arguments",
            "ENCODER_LAYER_PATTERNS",
            "encoder_family",
            "encoder_layer_id",
            "parameter_groups",
            "warmup_poly_learning_rate",
            "sample_seed",
            "SegmentationTrainDataset",
            "train_collate",
            "config_for_preset",
            "recipe_training_defaults",
            "SetrTrainingArguments",
            "AugmentationEpochCallback",
            "uses_sync_batch_norm",
            "format_log_line",
            "CompactProgressCallback",
            "CompactPrinterCallback",
            "SetrTrainer",
            "PRESETS",
        ),
    },
)
