"""Training less than the whole model: a frozen encoder, or LoRA adapters (the `peft` library) on the encoder.

- `--freeze_encoder`: the encoder's parameters (`model.encoder`: the built-in `model.setr` or a backbone; embeddings,
  every layer, a final norm) get `requires_grad=False`; the MLA neck and the heads train.
- `--lora_rank R`: `peft` LoRA of rank R on the encoder's attention and MLP projections (`LORA_TARGET_MODULES`, per
  encoder family: `q_proj`, `k_proj`, `v_proj`, `o_proj`, `fc1`, `fc2` and their kin); the neck and the heads are
  trained fully (`modules_to_save`). The encoder's own weights
  are frozen. At the end the run saves the adapter in `OUTPUT/adapter/` (`PeftModel.from_pretrained(base, ...)`
  loads it on the model the run started from) and the merged model (`merge_and_unload`) in `OUTPUT/`, a plain SETR
  folder that `from_pretrained` loads without `peft`.

Both combine with activation checkpointing (non-reentrant, so frozen inputs still carry the adapters' gradients).
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from .._imports import require
from ..models.setr.modeling_setr import SetrForSemanticSegmentation

if TYPE_CHECKING:  # peft is optional ([train]); typing_extensions comes with torch
    from peft import PeftModel
    from typing_extensions import TypeIs

ADAPTER_FOLDER = "adapter"
# The encoder's linear projections, by module name, per encoder family (`recipe.encoder_family`): the built-in
# `SetrAttention` / `SetrMLP` (modeling_setr.py), transformers' DINOv2 / DINOv3 / BEiT layers, timm's ViT blocks.
_TRANSFORMERS_PROJECTIONS = r"attention\.(?:q_proj|k_proj|v_proj|o_proj)|mlp\.(?:fc1|fc2|weights_in|weights_out)"
LORA_TARGET_MODULES_BY_FAMILY: dict[str, str] = {
    "setr": r".*\bsetr\.layers\.\d+\.(?:attention\.(?:q_proj|k_proj|v_proj|o_proj)|mlp\.(?:fc1|fc2))",
    "dinov2": rf".*\bbackbone\.encoder\.layer\.\d+\.(?:{_TRANSFORMERS_PROJECTIONS})",
    "dinov2_with_registers": rf".*\bbackbone\.encoder\.layer\.\d+\.(?:{_TRANSFORMERS_PROJECTIONS})",
    "dinov3_vit": r".*\bbackbone\.model\.layer\.\d+\.(?:attention\.(?:q_proj|k_proj|v_proj|o_proj)|"
    r"mlp\.(?:up_proj|down_proj|gate_proj))",
    "beit": r".*\bbackbone\.beit\.layers\.\d+\.(?:attention\.(?:q_proj|k_proj|v_proj|o_proj)|mlp\.(?:fc1|fc2))",
    "timm_backbone": r".*\bbackbone\._backbone\.model\.blocks\.\d+\.(?:attn\.(?:qkv|proj)|mlp\.(?:fc1|fc2|fc1_g|fc1_x))",
}
LORA_TARGET_MODULES = LORA_TARGET_MODULES_BY_FAMILY["setr"]
FULLY_TRAINED_MODULES = ("neck", "decode_head", "auxiliary_heads")


def freeze_encoder(model: SetrForSemanticSegmentation) -> int:
    """`requires_grad=False` on every encoder parameter (`model.encoder`); returns how many tensors were frozen."""
    parameters = list(model.encoder.parameters())
    for parameter in parameters:
        parameter.requires_grad_(False)
    return len(parameters)


def add_lora(model: SetrForSemanticSegmentation, rank: int, alpha: float = 16.0, dropout: float = 0.0) -> "PeftModel":
    """`model` wrapped by `peft.get_peft_model`: LoRA on the encoder's projections, neck and heads fully trained."""
    require("peft", "LoRA training (--lora_rank)")
    from peft import LoraConfig, get_peft_model

    from .recipe import encoder_family

    family = encoder_family(model.config)
    if family == "timm_backbone" and any(name.endswith(".attn.q_bias") for name, _ in model.named_parameters()):
        # EVA-style attention calls `F.linear` with `qkv.weight` and its own biases: a LoRA on `qkv` would never run
        raise ValueError(
            f"--lora_rank: timm {getattr(model.config.backbone_config, 'backbone', '')}'s attention bypasses its qkv module "
            "(separate q / v biases), so LoRA cannot wrap it; use --freeze_encoder or full fine-tuning"
        )

    modules_to_save = []
    for name in FULLY_TRAINED_MODULES:
        module = getattr(model, name, None)
        if isinstance(module, nn.ModuleList):  # peft wraps modules, not lists of them: each auxiliary head
            modules_to_save += [f"{name}.{index}" for index in range(len(module))]
        elif module is not None:
            modules_to_save.append(name)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates an int but scales by alpha / r: a float is fine
        lora_dropout=dropout,
        target_modules=LORA_TARGET_MODULES_BY_FAMILY[family],
        modules_to_save=modules_to_save,
        bias="none",
    )
    return get_peft_model(model, config)


def adapt_for_training(model: SetrForSemanticSegmentation, args: Any) -> "SetrForSemanticSegmentation | PeftModel":
    """The model as the options ask: encoder frozen (`freeze_encoder`), wrapped with LoRA (`lora_rank`), or as is."""
    if args.freeze_encoder:
        freeze_encoder(model)
    if args.lora_rank:
        return add_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout)
    return model


def is_lora_model(model: object) -> "TypeIs[PeftModel]":
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def trainable_parameter_count(model: nn.Module) -> tuple[int, int]:
    """(trainable, all) parameter counts."""
    counts = [(parameter.numel(), parameter.requires_grad) for parameter in model.parameters()]
    return sum(n for n, trainable in counts if trainable), sum(n for n, _ in counts)


def save_trained_model(
    model: "SetrForSemanticSegmentation | PeftModel", output_dir: str | Path
) -> SetrForSemanticSegmentation:
    """Save the trained model in `output_dir` and return the model saved there. A LoRA model: the adapter in
    `output_dir/adapter/`, then the merged plain SETR model (`merge_and_unload`, which consumes the wrapper) in
    `output_dir`."""
    output_dir = Path(output_dir)
    if is_lora_model(model):
        model.save_pretrained(str(output_dir / ADAPTER_FOLDER))
        merged: SetrForSemanticSegmentation = model.merge_and_unload()  # the base model, LoRA folded into its weights
        model = merged
    model.save_pretrained(str(output_dir))
    return model


__all__ = [
    "ADAPTER_FOLDER",
    "LORA_TARGET_MODULES",
    "LORA_TARGET_MODULES_BY_FAMILY",
    "adapt_for_training",
    "add_lora",
    "freeze_encoder",
    "is_lora_model",
    "save_trained_model",
    "trainable_parameter_count",
]
