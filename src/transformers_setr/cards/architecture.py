"""What a card says of a model's architecture, derived from its `SetrConfig`: the encoder layers feeding the decode
and auxiliary heads (`out_indices`, `auxiliary_in_indices`), the heads in words, the output resolution, and the
encoder's parameter count from the model built on the meta device. Nothing here is typed from a released model."""

from collections.abc import Sequence
from fractions import Fraction

import torch

from ..models.setr.configuration_setr import SetrConfig, resolved
from ..models.setr.modeling_setr import SetrModel, build_backbone
from .templating import fill_paragraph

_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _in_words(count: int) -> str:
    return _NUMBER_WORDS[count] if count < len(_NUMBER_WORDS) else str(count)


def _and_list(items: list[int]) -> str:
    """`[6, 12, 18, 24]` -> "6, 12, 18 and 24"."""
    return ", ".join(str(item) for item in items[:-1]) + (" and " if len(items) > 1 else "") + str(items[-1])


def _kernel(size: int | None) -> str:
    return f"{size}×{size}"


def feature_layers(config: SetrConfig, indices: Sequence[int] | None = None) -> list[int]:
    """The 1-based encoder layers of `out_indices` (all, or the `indices` into it that a head reads)."""
    out_indices = list(config.out_indices or [])
    return [out_indices[index] + 1 for index in (range(len(out_indices)) if indices is None else indices)]


def encoder_parameters(config: SetrConfig) -> int:
    """Parameters of the encoder `config` describes (the built-in ViT or the backbone), counted on the model built on
    the meta device (no memory)."""
    with torch.device("meta"):
        if config.backbone_config is None:
            return sum(parameter.numel() for parameter in SetrModel(config).parameters())
        return sum(parameter.numel() for parameter in build_backbone(config).parameters())


# The encoder families in words (`SetrConfig.backbone_config.model_type`); timm ViTs are named by their timm name.
ENCODER_FAMILY_NAMES = {
    "dinov2": "DINOv2",
    "dinov2_with_registers": "DINOv2 with registers",
    "dinov3_vit": "DINOv3 ViT",
    "beit": "BEiT",
}


def encoder_name(config: SetrConfig) -> str:
    """The encoder's family in words: "ViT" (the built-in encoder), "DINOv2 (transformers `dinov2`)", "timm
    `eva02_large_patch14_448.mim_in22k`"."""
    backbone_config = config.backbone_config
    if backbone_config is None:
        return "ViT"
    assert not isinstance(backbone_config, dict), "SetrConfig builds a dict into its backbone config"
    if backbone_config.model_type == "timm_backbone":
        return f"timm `{backbone_config.backbone}`"
    family = ENCODER_FAMILY_NAMES.get(backbone_config.model_type, backbone_config.model_type)
    return f"{family} (transformers `{backbone_config.model_type}`)"


def encoder_shape(config: SetrConfig) -> str:
    """ "24 layers, width 1024, 16 heads, patch 16" (the heads where the encoder's config says them)."""
    source = config if config.backbone_config is None else config.backbone_config
    heads = getattr(source, "num_attention_heads", None)
    parts = [f"{config.num_hidden_layers} layers", f"width {config.hidden_size}"]
    parts += [f"{heads} heads"] if isinstance(heads, int) else []
    return ", ".join([*parts, f"patch {config.patch_size}"])


def parameter_count_text(count: int) -> str:
    """305458176 -> "305.5 M"; a tiny model's count in full."""
    return f"{count / 1e6:.1f} M" if count >= 1e6 else f"{count:,}"


def _output_resolution(config: SetrConfig) -> str:
    stages = 1 if config.decoder_type == "mla" else config.decoder_num_convs
    scale = Fraction(resolved(config.decoder_up_scale) ** resolved(stages), config.patch_size)
    return "the full (padded) input resolution" if scale == 1 else f"{scale} of the (padded) input resolution"


def decoder_description(config: SetrConfig) -> str:
    """The decode head in words, from the config's decoder fields."""
    layers = feature_layers(config)
    return fill_paragraph(
        f"decoder_{config.decoder_type}.md",
        config=config,
        decoder_layer=layers[config.decoder_in_index],
        feature_layers=_and_list(layers),
        levels=_in_words(len(layers)),
        stages=_in_words(resolved(config.decoder_num_convs)),
        kernel=_kernel(config.decoder_kernel_size),
        output_resolution=_output_resolution(config),
    )


def auxiliary_description(config: SetrConfig) -> str:
    """The auxiliary heads in words: FCN heads on the MLA neck, SETR-UP heads on encoder layers otherwise."""
    indices, convs = list(config.auxiliary_in_indices or []), config.auxiliary_num_convs
    return fill_paragraph(
        "auxiliary_mla.md" if config.decoder_type == "mla" else "auxiliary_up.md",
        config=config,
        heads=_in_words(len(indices)),
        feature_layers=_and_list(feature_layers(config, indices)),
        convs=f"{convs} convolution{'s' if convs != 1 else ''}",
        kernel=_kernel(config.auxiliary_kernel_size),
    )
