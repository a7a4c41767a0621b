"""PyTorch SETR (SEgmentation TRansformer), matching mmsegmentation's implementation op for op.

Encoder: a plain ViT (pre-norm, LayerNorm eps 1e-6, exact GELU, no final norm) with mmsegmentation's input
handling: bottom/right zero padding to a multiple of the patch size, and a bilinear resize of the position table
to the padded patch grid only when the token count differs from the training grid's.
Decoders: Naive and PUP (`SETRUPHead`), MLA (`MLANeck` + `SETRMLAHead`), and the auxiliary heads used in training.

Each forward is the plain computation, as in transformers' ViT; attention goes through transformers' attention
interface (SDPA by default). The decoders apply their 1x1 classifier before the last bilinear up-sampling (the two
commute), which gives the same logits up to float rounding for a fraction of the work, and in float32 under
autocast. The CPU inference speed-ups are not here: `fast_inference_setr.optimize_for_inference(model)` swaps
modules for inference variants (see `docs/architecture.md`).

This file is shipped next to the weights for `trust_remote_code` users: it imports only torch, transformers and
the configuration file.
"""

import contextlib
import importlib
import importlib.util
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import load_backbone
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, SemanticSegmenterOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, logging
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_setr import (
    MODEL_INFERENCE_MODES,
    DecoderType,
    SetrConfig,
    backbone_encoder_facts,
    check_slide_window,
    resolved,
)
from .loss_setr import head_loss, pixel_cross_entropy, resize_to_labels

logger = logging.get_logger(__name__)

# What `save_pretrained` writes into `config.json` so that every Auto class resolves for `trust_remote_code` users.
SETR_AUTO_MAP = {
    "AutoConfig": "configuration_setr.SetrConfig",
    "AutoModel": "modeling_setr.SetrModel",
    "AutoModelForSemanticSegmentation": "modeling_setr.SetrForSemanticSegmentation",
}


@dataclass
class SetrSemanticSegmenterOutput(SemanticSegmenterOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `labels` is provided):
        The decode head's loss plus `auxiliary_loss_weight` times that of each auxiliary head, each on logits resized
        bilinearly to the label size, ignoring `semantic_loss_ignore_index`. By default cross-entropy averaged over all
        pixels, ignored ones included (mmsegmentation's `avg_non_ignore=False`), or for a binary model
        (`num_labels=1`) BCE as SegFormer; `config.loss` / `config.loss_sampler` choose others (`loss_setr.py`).
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels, logits_height, logits_width)`):
        Scores at the decoder's resolution, as transformers models return them: the input padded to a multiple of
        `patch_size` (PUP), or a quarter of that (Naive, MLA). Resize them to the (unpadded) input or original image
        size, e.g. with the image processor's `post_process_semantic_segmentation`.
    hidden_states, attentions:
        As returned by [`SetrModel`] when asked for.
    auxiliary_logits (`tuple(torch.FloatTensor)`, *optional*, returned when `labels` is provided):
        Logits of each auxiliary head. They are computed only for the loss, so inference never pays for them.
    """

    auxiliary_logits: tuple[torch.Tensor, ...] | None = None


def patch_grid_size(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """Patch grid of an input after bottom/right padding to a multiple of the patch size."""
    return math.ceil(height / patch_size), math.ceil(width / patch_size)


def pad_to_patch_multiple(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Zero-pad the bottom/right to a multiple of the patch size: mmsegmentation's rule, for every encoder (the
    built-in one, and the backbones, whose patch embeddings would otherwise drop the remainder)."""
    height, width = pixel_values.shape[-2:]
    grid = patch_grid_size(height, width, patch_size)
    pad_bottom, pad_right = grid[0] * patch_size - height, grid[1] * patch_size - width
    if pad_bottom or pad_right:
        pixel_values = F.pad(pixel_values, (0, pad_right, 0, pad_bottom))
    return pixel_values


def timm_model_arguments(backbone_config: PreTrainedConfig) -> dict:
    """What `timm.create_model` needs besides the name for a SETR encoder: the saved model arguments (depth, width,
    ... of a custom size) and `dynamic_img_size`, so that any input size works with timm's own position-embedding
    resampling."""
    return {**(getattr(backbone_config, "model_args", None) or {}), "dynamic_img_size": True}


def build_backbone(config: SetrConfig) -> nn.Module:
    """The encoder of a `backbone_config` model, with random weights: transformers' backbone loading
    (`load_backbone`); timm ViTs through transformers' `TimmBackbone` (which returns the intermediate blocks through
    timm's `forward_intermediates`), given the model arguments the config carries."""
    backbone_config = config.backbone_config
    assert isinstance(backbone_config, PreTrainedConfig)  # `SetrConfig` builds a dict into its config
    if backbone_config.model_type != "timm_backbone":
        return load_backbone(config)
    if importlib.util.find_spec("timm") is None:
        raise ImportError(
            f"this SETR model's encoder is the timm model {backbone_config.backbone!r}: pip install timm"
        )
    from transformers import TimmBackbone, TimmBackboneConfig

    # `model_type` "timm_backbone" is `TimmBackboneConfig`'s (AutoConfig builds that class from a dict)
    return TimmBackbone(cast(TimmBackboneConfig, backbone_config), **timm_model_arguments(backbone_config))


def resize_position_embeddings(
    position_embeddings: torch.Tensor, source_grid: tuple[int, int], target_grid: tuple[int, int], num_prefix: int = 1
) -> torch.Tensor:
    """mmsegmentation's `resize_pos_embed`: keep the cls slot, resize the grid bilinearly (align_corners=False)."""
    prefix, grid = position_embeddings[:, :num_prefix], position_embeddings[:, num_prefix:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, source_grid[0], source_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=target_grid, mode="bilinear", align_corners=False)
    return torch.cat((prefix, grid.flatten(2).transpose(1, 2)), dim=1)


def upsample_bilinear(features: torch.Tensor, scale: int) -> torch.Tensor:
    """mmsegmentation's `Upsample`: an explicit `int(size * scale)` target, bilinear, align_corners=False."""
    height, width = features.shape[-2:]
    # `torch.sym_int`, not `int`: the same number, but a symbolic height stays symbolic under `torch.export`
    # (`int` would bake the example's size into an exported graph).
    size = (torch.sym_int(height * scale), torch.sym_int(width * scale))
    return F.interpolate(features, size=size, mode="bilinear", align_corners=False)


def classify(classifier: nn.Conv2d, features: torch.Tensor) -> torch.Tensor:
    """A head's 1x1 classifier, in float32 even under autocast: bf16 logits (8-bit mantissa, steps of 1/64 at
    |logit| ~ 2) would let rounding decide close argmaxes and blur the average of overlapping slide windows."""
    device_type = features.device.type
    # `is_autocast_available` first: the meta device (FLOP counting) has no autocast state to ask about.
    autocast = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    if classifier.weight.dtype == torch.float32 and autocast:
        with torch.autocast(device_type, enabled=False):
            return classifier(features.float())
    return classifier(features)


class SetrPatchEmbeddings(nn.Module):
    """Zero-pads the bottom/right to a multiple of the patch size, then embeds patches with a strided conv."""

    def __init__(self, config: SetrConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.projection = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=config.patch_embeddings_bias,
        )

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        height, width = pixel_values.shape[-2:]
        grid = patch_grid_size(height, width, self.patch_size)
        pad_bottom, pad_right = grid[0] * self.patch_size - height, grid[1] * self.patch_size - width
        if pad_bottom or pad_right:
            pixel_values = F.pad(pixel_values, (0, pad_right, 0, pad_bottom))
        embeddings = self.projection(pixel_values).flatten(2).transpose(1, 2)
        return embeddings, grid


class SetrEmbeddings(nn.Module):
    """Patch embeddings, cls token and position embeddings, with mmsegmentation's resize rule."""

    def __init__(self, config: SetrConfig):
        super().__init__()
        self.grid = config.image_grid
        self.use_cls_token = config.use_cls_token
        self.patch_embeddings = SetrPatchEmbeddings(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1] + 1, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def position_embeddings_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """The table for a patch grid. Resized only when the token count differs, exactly as mmsegmentation (a
        16x64 grid under a 32x32 table is added as is, in row-major order)."""
        if grid[0] * grid[1] == self.grid[0] * self.grid[1]:
            return self.position_embeddings
        return resize_position_embeddings(self.position_embeddings, self.grid, grid)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        embeddings, grid = self.patch_embeddings(pixel_values)
        cls_tokens = self.cls_token.expand(embeddings.shape[0], -1, -1)
        embeddings = torch.cat((cls_tokens, embeddings), dim=1) + self.position_embeddings_for(grid)
        embeddings = self.dropout(embeddings)
        if not self.use_cls_token:
            # MLA: the cls token only carries its position slot away; patch tokens keep `pos_embed[:, 1:]`.
            embeddings = embeddings[:, 1:]
        return embeddings, grid


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class SetrAttention(nn.Module):
    def __init__(self, config: SetrConfig):
        super().__init__()
        self.config = config
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        # Without this, transformers' SDPA path defaults to causal attention.
        self.is_causal = False
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        return self.attend(query_states, key_states, value_states, attention_mask, **kwargs)

    def attend(
        self,
        query_states: torch.Tensor,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention over (batch, heads, tokens, head_dim) states, then the output projection."""
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*attn_output.shape[:2], -1).contiguous()  # (batch, tokens, hidden)
        attn_output = self.o_proj(attn_output)
        return attn_output, attn_weights


class SetrMLP(nn.Module):
    def __init__(self, config: SetrConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.activation_fn(self.fc1(hidden_states))
        return self.fc2(self.dropout(hidden_states))


class SetrLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: SetrConfig):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = SetrAttention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SetrMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        attention_output, _ = self.attention(self.layernorm_before(hidden_states), attention_mask, **kwargs)
        hidden_states = hidden_states + self.dropout(attention_output)
        mlp_output = self.mlp(self.layernorm_after(hidden_states))
        return hidden_states + self.dropout(mlp_output)


class SetrConvBatchNormReLU(nn.Module):
    """mmcv `ConvModule` with a norm: conv without bias, BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, batch_norm_eps: float):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.batch_norm = nn.BatchNorm2d(out_channels, eps=batch_norm_eps)
        self.activation = nn.ReLU(inplace=True)  # on the fresh BatchNorm output: saves a full-size copy

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.activation(self.batch_norm(self.conv(features)))


def channel_layernorm(layernorm: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channels of an NCHW map (mmsegmentation flattens to NLC and back)."""
    return channel_layernorm_nhwc(layernorm, features).contiguous()


def channel_layernorm_nhwc(layernorm: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """`channel_layernorm` in the NHWC layout LayerNorm writes (an NCHW-shaped view with channels-last strides)."""
    return layernorm(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SetrUpHead(nn.Module):
    """mmsegmentation `SETRUPHead` (Naive and PUP): LN, then per stage conv-BN-ReLU and bilinear up-sampling, then
    the 1x1 classifier last."""

    def __init__(
        self, config: SetrConfig, in_channels: int, channels: int, num_convs: int, kernel_size: int, up_scale: int
    ):
        super().__init__()
        self.up_scale = up_scale
        self.layernorm = nn.LayerNorm(in_channels, eps=config.layer_norm_eps)
        self.stages = nn.ModuleList(
            SetrConvBatchNormReLU(in_channels if i == 0 else channels, channels, kernel_size, config.batch_norm_eps)
            for i in range(num_convs)
        )
        self.classifier = nn.Conv2d(channels, config.num_labels, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.decode(channel_layernorm(self.layernorm, features))

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """The stages and the classifier on the normalised map (in whatever memory layout it comes)."""
        if not self.stages:
            return classify(self.classifier, features).contiguous()
        for stage in self.stages[:-1]:
            features = upsample_bilinear(stage(features), self.up_scale)
        # mmsegmentation up-samples the last stage, then classifies. A 1x1 conv commutes with bilinear up-sampling
        # (its weights per output pixel sum to one), so classify first: the same logits up to rounding, with the
        # classifier on a quarter of the pixels (PUP: 512x512 -> 256x256) and num_labels channels to interpolate.
        return upsample_bilinear(classify(self.classifier, self.stages[-1](features)).contiguous(), self.up_scale)


class SetrMLANeck(nn.Module):
    """mmsegmentation `MLANeck`: per-level LN and 1x1 projection, top-down cumulative sums from the deepest level,
    then a 3x3 conv per level. Output 0 is built from the deepest level alone."""

    def __init__(self, config: SetrConfig):
        super().__init__()
        levels, channels, eps = config.num_feature_levels, config.mla_neck_channels, config.batch_norm_eps
        self.layernorms = nn.ModuleList(
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) for _ in range(levels)
        )
        self.channel_projections = nn.ModuleList(
            SetrConvBatchNormReLU(config.hidden_size, channels, 1, eps) for _ in range(levels)
        )
        self.feature_extractors = nn.ModuleList(
            SetrConvBatchNormReLU(channels, channels, 3, eps) for _ in range(levels)
        )

    def forward(self, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        projected = [
            projection(channel_layernorm(layernorm, features))
            for layernorm, projection, features in zip(self.layernorms, self.channel_projections, feature_maps)
        ]
        outputs, running_sum = [], None
        for extractor, features in zip(self.feature_extractors, reversed(projected)):
            running_sum = features if running_sum is None else running_sum + features
            outputs.append(extractor(running_sum))
        return outputs


class SetrMLAHead(nn.Module):
    """mmsegmentation `SETRMLAHead`: per neck output, convs then x`up_scale`; concatenate; 1x1 classifier."""

    def __init__(self, config: SetrConfig):
        super().__init__()
        self.up_scale = resolved(config.decoder_up_scale)
        eps, mla = config.batch_norm_eps, config.mla_channels
        self.branches = nn.ModuleList(
            nn.Sequential(
                *(
                    SetrConvBatchNormReLU(
                        config.mla_neck_channels if i == 0 else mla, mla, resolved(config.decoder_kernel_size), eps
                    )
                    for i in range(resolved(config.decoder_num_convs))
                )
            )
            for _ in range(config.num_feature_levels)
        )
        self.classifier = nn.Conv2d(resolved(config.decoder_channels), config.num_labels, kernel_size=1)

    def forward(self, neck_outputs: list[torch.Tensor]) -> torch.Tensor:
        features = torch.cat([branch(x) for branch, x in zip(self.branches, neck_outputs)], dim=1)
        # mmsegmentation up-samples each branch, concatenates, then classifies; the 1x1 classifier commutes with the
        # (shared) bilinear up-sampling, so classify at the neck's resolution and up-sample num_labels channels once.
        return upsample_bilinear(classify(self.classifier, features), self.up_scale)


class SetrFCNHead(nn.Module):
    """mmsegmentation `FCNHead` (concat_input=False), the MLA auxiliary head: optional convs, 1x1 classifier."""

    def __init__(self, config: SetrConfig, in_channels: int):
        super().__init__()
        channels = config.auxiliary_channels if config.auxiliary_num_convs else in_channels
        self.convs = nn.Sequential(
            *(
                SetrConvBatchNormReLU(
                    in_channels if i == 0 else channels,
                    channels,
                    resolved(config.auxiliary_kernel_size),
                    config.batch_norm_eps,
                )
                for i in range(resolved(config.auxiliary_num_convs))
            )
        )
        self.classifier = nn.Conv2d(channels, config.num_labels, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return classify(self.classifier, self.convs(features))


class SetrPreTrainedModel(PreTrainedModel):
    config: SetrConfig
    base_model_prefix = "setr"
    main_input_name = "pixel_values"
    input_modalities = ("image",)  # type: ignore[assignment]  # a tuple as transformers' ViT; typed str | list[str]
    supports_gradient_checkpointing = True
    _no_split_modules = ["SetrEmbeddings", "SetrLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {"hidden_states": SetrLayer, "attentions": SetrAttention}
    _input_embed_layer = "patch_embeddings"

    def __init__(self, config: SetrConfig, *inputs, **kwargs):
        # `from_pretrained` applies its keyword arguments (`palette=...`) to the built config by setattr, past the
        # config's own checks: check again, so that a bad combination fails here rather than at `save_pretrained`.
        config.validate()
        super().__init__(config, *inputs, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        init_buffers = getattr(module, "init_non_persistent_buffers", None)
        if callable(init_buffers):  # timm modules (rotary tables), as TimmBackbone does
            init_buffers()
        if isinstance(module, SetrEmbeddings):
            init.trunc_normal_(module.position_embeddings, std=self.config.initializer_range)
            init.trunc_normal_(module.cls_token, std=self.config.initializer_range)
        elif isinstance(module, (SetrUpHead, SetrMLAHead, SetrFCNHead)):
            # mmsegmentation initialises the classifier with std 0.01.
            init.normal_(module.classifier.weight, std=0.01)
            if module.classifier.bias is not None:  # always: the classifiers are built with a bias
                init.zeros_(module.classifier.bias)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # Complete the auto_map: transformers writes only the saved class's entry, so AutoModel would not resolve
        # from a folder saved by the head model.
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **SETR_AUTO_MAP}
        return super().save_pretrained(save_directory, *args, **kwargs)


class SetrModel(SetrPreTrainedModel):
    """The SETR encoder: a plain ViT without final LayerNorm. `last_hidden_state` holds the tokens of the last layer
    (the cls token first when `config.use_cls_token`), for the padded patch grid in row-major order."""

    def __init__(self, config: SetrConfig):
        if config.backbone_config is not None:
            raise ValueError(
                "SetrModel is the built-in encoder; the encoder of a backbone_config model is its backbone "
                "(SetrForSemanticSegmentation(config).backbone, or AutoBackbone.from_config(config.backbone_config))"
            )
        super().__init__(config)
        self.embeddings = SetrEmbeddings(config)
        self.layers = nn.ModuleList(SetrLayer(config) for _ in range(config.num_hidden_layers))
        # Whether forward looks for NaN / inf in its input; off inside SetrForSemanticSegmentation, which checks once.
        self.check_input_values = True
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Normalised images of any size; sides that are not multiples of `patch_size` are zero-padded at the
            bottom/right.
        """
        check_pixel_values(pixel_values, self.config, check_values=self.check_input_values)
        expected_dtype = self.embeddings.patch_embeddings.projection.weight.dtype
        hidden_states, _ = self.embeddings(pixel_values.to(expected_dtype))
        for layer in self.layers:
            hidden_states = layer(hidden_states, None, **kwargs)
        return BaseModelOutput(last_hidden_state=hidden_states)


def check_pixel_values(pixel_values: torch.Tensor, config: SetrConfig, check_values: bool = False) -> None:
    """Refuse what the model would silently turn into garbage logits. `check_values` adds the one pass over the
    values (NaN / inf), done once per call by the entry points; the structural checks cost nothing."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"pixel_values has dtype {pixel_values.dtype}; SETR expects normalised float images: use "
            "SetrImageProcessor (or AutoImageProcessor) to resize and normalise them"
        )
    if pixel_values.ndim != 4:
        raise ValueError(
            f"pixel_values must have shape (batch_size, num_channels, height, width), got {tuple(pixel_values.shape)}"
        )
    if pixel_values.shape[1] != config.num_channels:
        raise ValueError(
            f"pixel_values has {pixel_values.shape[1]} channels but the model expects {config.num_channels} "
            f"(shape {tuple(pixel_values.shape)}; images are channels-first)"
        )
    if pixel_values.shape[0] == 0 or pixel_values.shape[2] == 0 or pixel_values.shape[3] == 0:
        raise ValueError(f"pixel_values is empty: shape {tuple(pixel_values.shape)}")
    # A data-dependent branch: skipped under torch.compile / tracing (it would break the graph) and on the meta
    # device (no values).
    no_values = torch.compiler.is_compiling() or torch.jit.is_tracing() or pixel_values.device.type == "meta"
    if check_values and not no_values and not torch.isfinite(pixel_values).all():
        raise ValueError(
            "pixel_values contains NaN or infinite values; each would spread to the logits of every pixel it "
            "reaches. Check the images (and any preprocessing before SetrImageProcessor)"
        )


class SetrForSemanticSegmentation(SetrPreTrainedModel):
    # The loss is normalised here; the Trainer must not pass `num_items_in_batch` (it would skip dividing by the
    # gradient-accumulation steps and count ignored pixels).
    accepts_loss_kwargs = False

    def __init__(self, config: SetrConfig):
        super().__init__(config)
        if config.backbone_config is None:
            self.setr = SetrModel(config)
            self.setr.check_input_values = False  # checked once per call here, not once per slide window
        else:
            self.backbone = build_backbone(config)
        self.neck: SetrMLANeck | None
        self.decode_head: SetrMLAHead | SetrUpHead
        if config.decoder_type == "mla":
            self.neck = SetrMLANeck(config)
            self.decode_head = SetrMLAHead(config)
        else:
            self.neck = None
            self.decode_head = SetrUpHead(
                config,
                config.hidden_size,
                resolved(config.decoder_channels),
                resolved(config.decoder_num_convs),
                resolved(config.decoder_kernel_size),
                resolved(config.decoder_up_scale),
            )
        self.auxiliary_heads = None
        if config.use_auxiliary_head:
            self.auxiliary_heads = nn.ModuleList(
                self._build_auxiliary_head() for _ in resolved(config.auxiliary_in_indices)
            )
        self.post_init()

    def _build_auxiliary_head(self) -> nn.Module:
        config = self.config
        if config.decoder_type == "mla":
            return SetrFCNHead(config, config.mla_neck_channels)
        return SetrUpHead(
            config,
            config.hidden_size,
            config.auxiliary_channels,
            resolved(config.auxiliary_num_convs),
            resolved(config.auxiliary_kernel_size),
            config.auxiliary_up_scale,
        )

    @property
    def encoder(self) -> nn.Module:
        """The encoder: the built-in `SetrModel` (`self.setr`), or the backbone (`self.backbone`)."""
        return self.setr if self.config.backbone_config is None else self.backbone

    @classmethod
    def from_backbone(
        cls,
        backbone: str | os.PathLike,
        decoder_type: DecoderType = "pup",
        num_labels: int | None = None,
        id2label: dict[int, str] | None = None,
        **config_kwargs,
    ) -> "SetrForSemanticSegmentation":
        """A fresh SETR whose encoder holds a pretrained backbone's weights; the heads are initialised as
        mmsegmentation does (random).

        Args:
            backbone: a transformers checkpoint of a `dinov2`, `dinov2_with_registers`, `dinov3_vit` or `beit` model
                (a Hub id such as `"facebook/dinov2-large"`, or a folder written by `save_pretrained`), or a timm
                ViT (a timm name such as `"vit_large_patch16_224.augreg_in21k"`, `"timm/<name>"`, or a folder written
                by timm's `save_for_hf`).
            decoder_type: `"naive"`, `"pup"` or `"mla"`.
            num_labels, id2label: the classes.
            config_kwargs: any other `SetrConfig` field (`out_indices`, `image_size`, ...).

        Every encoder weight must come from the checkpoint: a checkpoint that lacks some is refused.
        """
        backbone_config, load_weights = _pretrained_backbone(os.fspath(backbone))
        if id2label is not None:
            config_kwargs["id2label"] = id2label
        if num_labels is not None:
            config_kwargs["num_labels"] = num_labels
        config = SetrConfig(decoder_type=decoder_type, backbone_config=backbone_config, **config_kwargs)
        model = cls(config)
        assert isinstance(config.backbone_config, PreTrainedConfig)  # built from `backbone_config` above
        load_weights(model.backbone, config.backbone_config)
        return model

    def feature_maps(self, hidden_states: tuple[torch.Tensor, ...], grid: tuple[int, int]) -> list[torch.Tensor]:
        """The NCHW maps of the `out_indices` layers (the MLA neck applied when present)."""
        maps = []
        for index in resolved(self.config.out_indices):
            tokens = hidden_states[index + 1]
            if self.config.use_cls_token:
                tokens = tokens[:, 1:]
            maps.append(tokens.unflatten(1, grid).permute(0, 3, 1, 2).contiguous())
        return self.neck(maps) if self.neck is not None else maps

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.neck is not None:
            return self.decode_head(features)
        return self.decode_head(features[self.config.decoder_in_index])

    def backbone_feature_maps(
        self, pixel_values: torch.Tensor, output_hidden_states: bool | int | list[int] | None = None, **kwargs
    ) -> tuple[list[torch.Tensor], BaseModelOutput]:
        """The maps SETR's heads read from a backbone (before the MLA neck): the input padded bottom/right to a
        multiple of the patch size, then the backbone's own `feature_maps` of the `out_indices` layers (prefix tokens
        dropped, reshaped, normalised where the family does; its own position-embedding interpolation)."""
        backbone_config = self.config.backbone_config
        assert isinstance(backbone_config, PreTrainedConfig)  # called only with a backbone
        pixel_values = pad_to_patch_multiple(pixel_values, self.config.patch_size)
        pixel_values = pixel_values.to(next(self.backbone.parameters()).dtype)
        if backbone_config.model_type == "timm_backbone":
            if output_hidden_states or kwargs.get("output_attentions"):
                raise ValueError("a timm backbone returns neither hidden states nor attentions, only its feature maps")
            outputs = self.backbone(pixel_values, return_dict=True)
        else:
            if backbone_config.model_type == "beit":
                kwargs["interpolate_pos_encoding"] = True  # BEiT interpolates its position tables only when told
            outputs = self.backbone(
                pixel_values, output_hidden_states=output_hidden_states or None, return_dict=True, **kwargs
            )
        return list(outputs.feature_maps), outputs

    def _encode_decode(
        self, pixel_values: torch.Tensor, output_hidden_states: bool | int | list[int] | None, **kwargs
    ) -> tuple[torch.Tensor, list[torch.Tensor], BaseModelOutput]:
        if self.config.backbone_config is not None:
            maps, outputs = self.backbone_feature_maps(pixel_values, output_hidden_states, **kwargs)
            features = self.neck(maps) if self.neck is not None else maps
            return self.decode(features), features, outputs
        # The decoder reads the `out_indices` layers whatever the caller asked for: capture those too, then return
        # only the hidden states asked for (all of them for `True`; the selected indices, others None, for a list).
        needed = {i + 1 for i in resolved(self.config.out_indices)}
        count = self.config.num_hidden_layers + 1
        requested = None  # indices into all hidden states (negative ones count from the end), as capture_outputs
        if isinstance(output_hidden_states, int) and not isinstance(output_hidden_states, bool):
            output_hidden_states = [output_hidden_states]
        if isinstance(output_hidden_states, (list, tuple)):
            requested = {i % count for i in output_hidden_states if -count <= i < count}
        capture = True if output_hidden_states is True else sorted(needed | (requested or set()))
        outputs = self.setr(pixel_values, output_hidden_states=capture, return_dict=True, **kwargs)
        height, width = pixel_values.shape[-2:]
        grid = patch_grid_size(height, width, self.config.patch_size)
        features = self.feature_maps(outputs.hidden_states, grid)
        if requested is not None:
            outputs.hidden_states = tuple(
                state if index in requested else None for index, state in enumerate(outputs.hidden_states)
            )
        elif capture is not True:
            outputs.hidden_states = None  # captured for the decoder only
        return self.decode(features), features, outputs

    def slide_inference(
        self,
        pixel_values: torch.Tensor,
        crop_size: int | tuple[int, int] | None = None,
        stride: int | tuple[int, int] | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """mmsegmentation's sliding-window inference (`slide_inference`); logits at the input resolution.

        Windows of `crop_size` every `stride` (the last one clamped to the border; an image smaller than the window is
        one window of its own size), each window's logits resized bilinearly to the window, summed into place and
        divided by the number of windows covering each pixel: an average of logits, not probabilities. Windows run
        `batch_size` at a time (all windows have the same size), which bounds memory on large images. Defaults come
        from the config (`slide_crop_size`, `slide_stride`, `slide_batch_size`).
        """
        check_pixel_values(pixel_values, self.config, check_values=True)
        default_crop, default_stride = self.config.slide_window
        return slide_window_logits(
            pixel_values,
            lambda windows: self._encode_decode(windows, None)[0],
            default_crop if crop_size is None else crop_size,
            default_stride if stride is None else stride,
            self.config.slide_batch_size if batch_size is None else batch_size,
        )

    @can_return_tuple
    # `output_hidden_states` is a named parameter (it also takes layer indices), so it never reaches `kwargs`, whose
    # TypedDict lists it too
    def forward(  # type: ignore[misc]
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        inference_mode: str | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SetrSemanticSegmenterOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Normalised images (see [`SetrImageProcessor`]); any size.
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            Ground-truth class ids for the loss, the same size as `pixel_values`; `config.semantic_loss_ignore_index`
            (255) marks pixels to ignore.
        inference_mode (`str`, *optional*):
            `"whole"` or `"slide"`, overriding `config.inference_mode` for this call. Sliding windows apply only in
            eval mode without `labels`, and return logits at the input resolution.
        """
        inference_mode = inference_mode or self.config.inference_mode
        if inference_mode not in MODEL_INFERENCE_MODES:
            raise ValueError(f"inference_mode must be one of {MODEL_INFERENCE_MODES}, got {inference_mode!r}")
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if inference_mode == "slide" and labels is None and not self.training:
            return self._slide_forward(pixel_values, output_hidden_states, **kwargs)
        check_pixel_values(pixel_values, self.config, check_values=True)
        if labels is not None:
            check_labels(labels, pixel_values, self.config)

        logits, features, outputs = self._encode_decode(pixel_values, output_hidden_states, **kwargs)
        loss, auxiliary_logits = None, None
        if labels is not None:
            loss, auxiliary_logits = self._loss(logits, features, labels)

        return SetrSemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            auxiliary_logits=auxiliary_logits,
        )

    def _slide_forward(
        self, pixel_values: torch.Tensor, output_hidden_states, **kwargs
    ) -> SetrSemanticSegmenterOutput:
        if output_hidden_states or kwargs.get("output_attentions", self.config.output_attentions):
            raise ValueError(
                "Hidden states and attentions are per window in sliding-window inference; "
                "call the model with inference_mode='whole' to get them."
            )
        return SetrSemanticSegmenterOutput(logits=self.slide_inference(pixel_values))

    def _loss(
        self, logits: torch.Tensor, features: list[torch.Tensor], labels: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """The decode head's loss plus `auxiliary_loss_weight` times each auxiliary head's (mmsegmentation's sum), each
        head with the configured loss (`config.loss`, `config.loss_sampler`)."""
        loss = self._head_loss(logits, labels)
        if self.auxiliary_heads is None:
            return loss, None
        # One head at a time: each loss's temporaries are freed before the next head runs.
        auxiliary_logits = []
        for head, index in zip(self.auxiliary_heads, resolved(self.config.auxiliary_in_indices)):
            auxiliary_logits.append(head(features[index]))
            loss = loss + self.config.auxiliary_loss_weight * self._head_loss(auxiliary_logits[-1], labels)
        return loss, tuple(auxiliary_logits)

    def _head_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        config = self.config
        if config.loss is None and config.loss_sampler is None and not config.is_binary:
            return segmentation_loss(logits, labels, config.semantic_loss_ignore_index)  # the released recipe's
        return head_loss(logits, labels, config.semantic_loss_ignore_index, config.loss, config.loss_sampler)


def slide_windows(
    height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of mmsegmentation's sliding windows, row by row; the last window is clamped to the border."""
    rows = max(height - crop[0] + stride[0] - 1, 0) // stride[0] + 1
    columns = max(width - crop[1] + stride[1] - 1, 0) // stride[1] + 1
    windows = []
    for row in range(rows):
        for column in range(columns):
            y2, x2 = min(row * stride[0] + crop[0], height), min(column * stride[1] + crop[1], width)
            windows.append((max(y2 - crop[0], 0), y2, max(x2 - crop[1], 0), x2))
    return windows


def slide_window_logits(
    pixel_values: torch.Tensor,
    window_logits: Callable[[torch.Tensor], torch.Tensor],
    crop_size: int | tuple[int, int],
    stride: int | tuple[int, int],
    batch_size: int,
) -> torch.Tensor:
    """mmsegmentation's sliding-window averaging around any per-window forward (the model's own, or an exported
    graph's): `window_logits` maps a (n, C, h, w) batch of windows to their (n, num_labels, h', w') logits.

    Windows of `crop_size` every `stride` (`slide_windows`), each window's logits resized bilinearly to the window,
    summed into place in float32 and divided by the number of windows covering each pixel.
    """
    # Without autograd the windows run under inference_mode (no version counters or view tracking); the sums are
    # kept outside it, so the caller gets an ordinary tensor. (Not under torch.compile, whose graphs take the
    # caller's mode.)
    eager_no_grad = not (torch.is_grad_enabled() or torch.compiler.is_compiling())
    window_context = torch.inference_mode() if eager_no_grad else contextlib.nullcontext()
    crop, stride = check_slide_window(crop_size, stride)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"sliding-window batch_size must be a positive int, got {batch_size!r}")
    images, _, height, width = pixel_values.shape
    windows = slide_windows(height, width, crop, stride)
    window_height, window_width = min(crop[0], height), min(crop[1], width)
    logits_sum: torch.Tensor | None = None
    count: torch.Tensor | None = None
    # Window-major order: the windows of one image stay together for the accumulation below.
    crops = [(w, i) for w in range(len(windows)) for i in range(images)]
    for start in range(0, len(crops), batch_size):
        chunk = crops[start : start + batch_size]
        with window_context:
            batch = torch.stack(
                [pixel_values[i, :, windows[w][0] : windows[w][1], windows[w][2] : windows[w][3]] for w, i in chunk]
            )
            logits = window_logits(batch)
            # Accumulate in float32 even under autocast: the average of overlapping windows is taken in full
            # precision (a no-op for a float32 model).
            logits = F.interpolate(
                logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits,
                size=(window_height, window_width),
                mode="bilinear",
                align_corners=False,
            )
        if logits_sum is None:
            logits_sum = logits.new_zeros((images, logits.shape[1], height, width))
            count = logits.new_zeros((1, 1, height, width))
        for (w, i), one_window in zip(chunk, logits):
            y1, y2, x1, x2 = windows[w]
            logits_sum[i, :, y1:y2, x1:x2] += one_window
    assert logits_sum is not None and count is not None  # at least one window: `check_slide_window`, non-empty input
    for y1, y2, x1, x2 in windows:
        count[..., y1:y2, x1:x2] += 1
    return logits_sum / count


def _pretrained_backbone(source: str) -> tuple[PreTrainedConfig, Callable[[nn.Module, PreTrainedConfig], None]]:
    """The backbone config of a pretrained encoder, and the function that loads its weights into a built backbone."""
    folder_config = os.path.join(source, "config.json")
    saved = None
    if os.path.isdir(source):
        if not os.path.isfile(folder_config):
            raise ValueError(f"backbone folder {source} has no config.json (save_pretrained or timm's save_for_hf)")
        with open(folder_config, encoding="utf-8") as file:
            saved = json.load(file)
    is_timm = (saved is not None and "architecture" in saved and "model_type" not in saved) or (
        saved is None and (source.startswith(("timm/", "hf-hub:")) or "/" not in source)
    )
    if is_timm:
        return _pretrained_timm_backbone(source, saved)
    backbone_config = AutoConfig.from_pretrained(source)
    if saved is not None:
        backbone_config.name_or_path = ""  # a Hub id names the encoder in the saved config; a local path would not
    backbone_encoder_facts(backbone_config)  # refuses an unsupported family before anything is built

    def load_weights(backbone: nn.Module, built_config: PreTrainedConfig) -> None:
        assert isinstance(backbone, PreTrainedModel)
        # The backbone's own class: `AutoBackbone.from_pretrained` asks the Hub whether a local folder is a repo.
        # `output_loading_info=True` returns (model, info); transformers types the return as the model alone
        loaded = type(backbone).from_pretrained(source, config=built_config, output_loading_info=True)
        pretrained, info = cast(tuple[PreTrainedModel, dict[str, list[str]]], loaded)
        if info["missing_keys"]:
            missing = sorted(info["missing_keys"])
            raise ValueError(f"backbone checkpoint {source} lacks encoder weights: {missing[:5]}")
        backbone.load_state_dict(pretrained.state_dict())

    return backbone_config, load_weights


def _pretrained_timm_backbone(
    source: str, saved: dict | None
) -> tuple[PreTrainedConfig, Callable[[nn.Module, PreTrainedConfig], None]]:
    """A timm ViT as a `timm_backbone` config that records the model name and arguments (never a local path), and
    its weights from `timm.create_model(pretrained=True)` (Hub, cache or `local-dir:`)."""
    # The one use of timm in the shipped files, only for a timm backbone. In a try block: transformers' check of a
    # `trust_remote_code` file (`check_imports`) skips imports there, so a folder without a timm encoder loads
    # where timm is not installed.
    try:
        import timm
    except ImportError as error:
        raise ImportError(f"backbone {source!r} is a timm model: pip install timm") from error
    from transformers import TimmBackboneConfig

    if saved is not None:
        name, model_args, timm_source = (
            saved["architecture"],
            dict(saved.get("model_args") or {}),
            f"local-dir:{source}",
        )
    else:
        name = source.removeprefix("hf-hub:").removeprefix("timm/")
        model_args, timm_source = {}, source if source.startswith("hf-hub:") else name
        if source.startswith("timm/"):
            timm_source = f"hf-hub:{source}"
    if not timm.is_model(name.split(".")[0]):
        raise ValueError(f"backbone {source!r} is neither a transformers checkpoint nor a timm model name")
    with torch.device("meta"):
        probe = timm.create_model(name, pretrained=False, **model_args)
    blocks, patch_embed = getattr(probe, "blocks", None), getattr(probe, "patch_embed", None)
    if blocks is None or patch_embed is None or not hasattr(probe, "forward_intermediates"):
        raise ValueError(f"timm model {name!r} is not a plain ViT (blocks, patch_embed, forward_intermediates)")
    backbone_config = TimmBackboneConfig(backbone=name, num_channels=patch_embed.proj.in_channels)
    backbone_config.model_args = model_args
    backbone_config.hidden_size = cast(int, probe.embed_dim)  # timm ViTs' width, an int
    backbone_config.num_hidden_layers = len(blocks)
    backbone_config.patch_size = list(patch_embed.patch_size)

    def load_weights(backbone: nn.Module, built_config: PreTrainedConfig) -> None:
        pretrained = timm.create_model(
            timm_source,
            pretrained=True,
            features_only=True,
            out_indices=built_config.out_indices,
            **timm_model_arguments(built_config),
        )
        timm_model = backbone._backbone  # `TimmBackbone` wraps the timm model
        assert isinstance(timm_model, nn.Module)
        timm_model.load_state_dict(pretrained.state_dict())

    return backbone_config, load_weights


def check_labels(labels: torch.Tensor, pixel_values: torch.Tensor, config: SetrConfig) -> None:
    expected = (pixel_values.shape[0], *pixel_values.shape[-2:])
    if labels.ndim != 3 or tuple(labels.shape) != expected:
        raise ValueError(
            f"labels must have shape (batch_size, height, width) = {expected} to match pixel_values "
            f"{tuple(pixel_values.shape)}, got {tuple(labels.shape)}"
        )
    if labels.is_floating_point():
        raise ValueError(f"labels must hold integer class ids, got dtype {labels.dtype}")
    ignore = config.semantic_loss_ignore_index
    classes = len(config.prediction_id2label)  # a binary model's labels are 0 (background) and 1
    invalid = (labels != ignore) & ((labels < 0) | (labels >= classes))
    if invalid.any():
        bad = torch.unique(labels[invalid])[:10].tolist()
        raise ValueError(f"labels contain values {bad} outside [0, {classes}) that are not the ignore index {ignore}")


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """mmsegmentation's decode-head loss: logits resized bilinearly to the labels, cross-entropy ignoring
    `ignore_index`, mean over all pixels (ignored pixels count in the denominator with a zero loss)."""
    return pixel_cross_entropy(resize_to_labels(logits, labels).float(), labels.long(), ignore_index).mean()


SetrConfig.register_for_auto_class()
SetrModel.register_for_auto_class("AutoModel")
SetrForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")

__all__ = ["SetrForSemanticSegmentation", "SetrModel", "SetrPreTrainedModel", "SetrSemanticSegmenterOutput"]
