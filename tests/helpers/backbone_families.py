"""Tiny random configs of the encoder families SETR's heads take (transformers and timm), and the maps the heads
must read, computed by hand."""

import torch
from transformers import BeitConfig, Dinov2Config, Dinov2WithRegistersConfig, DINOv3ViTConfig

from transformers_setr import SetrConfig, SetrForSemanticSegmentation

SMALL = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)
HEADS = dict(num_labels=3, image_size=64, auxiliary_channels=16, mla_channels=8, mla_neck_channels=16)
TRANSFORMERS_FAMILIES = {
    "dinov2": lambda: Dinov2Config(patch_size=14, image_size=28, **SMALL),
    "dinov2_with_registers": lambda: Dinov2WithRegistersConfig(
        patch_size=14, image_size=28, num_register_tokens=2, **SMALL
    ),
    "dinov3_vit": lambda: DINOv3ViTConfig(patch_size=16, image_size=32, num_register_tokens=2, **SMALL),
    "beit": lambda: BeitConfig(
        patch_size=16, image_size=32, use_relative_position_bias=True, use_absolute_position_embeddings=True, **SMALL
    ),
}
# timm name -> (patch size, extra model args); tiny versions of the four families of the issue
TIMM_FAMILIES = {
    "deit3_small_patch16_224": {},
    "eva02_tiny_patch14_224.mim_in22k": {},
    "vit_large_patch16_224.augreg_in21k": {},
    "vit_large_patch16_224.mae": {},
}
TIMM_SMALL = dict(depth=4, embed_dim=32, num_heads=2, img_size=32)


def setr_config(backbone_config, decoder_type="pup", **kwargs) -> SetrConfig:
    heads = {**HEADS, "decoder_channels": 32 if decoder_type == "mla" else 16, **kwargs}
    return SetrConfig(backbone_config=backbone_config, decoder_type=decoder_type, out_indices=[0, 1, 2, 3], **heads)


def randomised(model: SetrForSemanticSegmentation) -> SetrForSemanticSegmentation:
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2)
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1, 0.1)
                module.bias.normal_(0, 0.1)
    return model.eval()


def expected_maps(model: SetrForSemanticSegmentation, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """The backbone's own hidden states of SETR's layers, computed here: prefix tokens removed, normalised where the
    family does, reshaped to NCHW."""
    config, backbone = model.config, model.backbone
    patch = config.patch_size
    height, width = (-(-side // patch) for side in pixel_values.shape[-2:])
    padded = torch.nn.functional.pad(pixel_values, (0, width * patch - pixel_values.shape[-1], 0, 0))
    padded = torch.nn.functional.pad(padded, (0, 0, 0, height * patch - pixel_values.shape[-2]))
    family = config.backbone_config.model_type
    if family == "timm_backbone":
        timm_model = backbone._backbone.model
        captured = []
        hooks = [block.register_forward_hook(lambda m, i, o: captured.append(o)) for block in timm_model.blocks]
        backbone(padded)
        for hook in hooks:
            hook.remove()
        states, prefix, norm = captured, timm_model.num_prefix_tokens, None
    else:
        extra = {"interpolate_pos_encoding": True} if family == "beit" else {}
        states = list(backbone(padded, output_hidden_states=True, **extra).hidden_states)[1:]
        prefix = 1 + getattr(config.backbone_config, "num_register_tokens", 0)
        norm = {"dinov2": "layernorm", "dinov2_with_registers": "layernorm", "dinov3_vit": "norm"}.get(family)
    maps = []
    for index in config.out_indices:
        tokens = states[index]
        last = index == config.num_hidden_layers - 1
        if norm and (config.backbone_config.apply_layernorm or (family == "dinov3_vit" and last)):
            tokens = getattr(backbone, norm)(tokens)
        maps.append(tokens[:, prefix:].reshape(1, height, width, -1).permute(0, 3, 1, 2))
    return maps


def timm_config(name: str):
    from transformers_setr.models.setr.modeling_setr import _pretrained_timm_backbone

    args = {**TIMM_SMALL, **({"img_size": 28} if "patch14" in name else {})}
    return _pretrained_timm_backbone(name, {"architecture": name, "model_args": args})[0]


ALL_FAMILIES = [*TRANSFORMERS_FAMILIES, *TIMM_FAMILIES]


def family_config(family: str):
    return TRANSFORMERS_FAMILIES[family]() if family in TRANSFORMERS_FAMILIES else timm_config(family)
