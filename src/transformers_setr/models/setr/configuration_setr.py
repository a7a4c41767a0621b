# Copyright 2026 The transformers-setr developers.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""SETR model configuration.

This file is shipped next to the weights for `trust_remote_code` users: it imports only `transformers` and
`huggingface_hub`.
"""

import copy
from collections.abc import Sequence
from numbers import Integral
from typing import TYPE_CHECKING, Literal, TypeGuard, TypeVar, cast, get_args

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import logging

from .loss_setr import loss_config_errors

logger = logging.get_logger(__name__)

# Per-decoder defaults, taken from the released mmsegmentation SETR configs (ADE20K, ViT-L/16).
# `None` in a config field means "use the value of this table for the chosen decoder".
_DECODER_DEFAULTS: dict[str, dict] = {
    "naive": {
        "out_indices": [9, 14, 19, 23],
        "use_cls_token": True,
        "decoder_channels": 256,
        "decoder_num_convs": 1,
        "decoder_kernel_size": 1,
        "decoder_up_scale": 4,
        "auxiliary_in_indices": [0, 1, 2],
        "auxiliary_num_convs": 2,
        "auxiliary_kernel_size": 1,
    },
    "pup": {
        "out_indices": [9, 14, 19, 23],
        "use_cls_token": True,
        "decoder_channels": 256,
        "decoder_num_convs": 4,
        "decoder_kernel_size": 3,
        "decoder_up_scale": 2,
        "auxiliary_in_indices": [0, 1, 2],
        "auxiliary_num_convs": 2,
        "auxiliary_kernel_size": 3,
    },
    "mla": {
        "out_indices": [5, 11, 17, 23],
        "use_cls_token": False,
        "decoder_channels": 512,
        "decoder_num_convs": 2,
        "decoder_kernel_size": 3,
        "decoder_up_scale": 4,
        "auxiliary_in_indices": [0, 1, 2, 3],
        "auxiliary_num_convs": 0,
        "auxiliary_kernel_size": 1,
    },
}

DEFAULT_NUM_LABELS = 150  # ADE20K, the dataset of the default (PUP) checkpoint
IGNORE_INDEX = 255  # the label of unscored pixels, in the loss, the metric, the processors and the datasets

# What `forward` does without labels in eval mode (`config.inference_mode`); the package adds multi-scale + flip.
InferenceMode = Literal["whole", "slide"]
MODEL_INFERENCE_MODES: tuple[str, ...] = get_args(InferenceMode)
DecoderType = Literal["naive", "pup", "mla"]

_Value = TypeVar("_Value")


def resolved(value: _Value | None) -> _Value:
    """A decoder-dependent field (`out_indices`, `decoder_channels`, ...: `None` in the dataclass means the decoder's
    default), which `SetrConfig` fills at construction, typed without `None` for its readers; a `ValueError` if one
    was set back to `None` on a built config."""
    if value is None:
        raise ValueError("a decoder-dependent SetrConfig field is None: its default is filled only at construction")
    return value


# The encoders SETR's heads take through transformers' backbone API (`backbone_config.model_type`): plain ViTs whose
# stage 0 is the embeddings ("stem") and stage i + 1 the output of layer i, and timm ViTs through `TimmBackbone`,
# whose stage i is block i. The value: the offset from SETR's 0-based layer index to the backbone's stage index.
BACKBONE_STAGE_OFFSET: dict[str, int] = {
    "dinov2": 1,
    "dinov2_with_registers": 1,
    "dinov3_vit": 1,
    "beit": 1,
    "timm_backbone": 0,
}
# The fields of the built-in encoder that mirror the backbone's with a `backbone_config` (the heads, the padding and
# the sliding windows read them), and those that have no meaning then. Either kind set to another value is refused.
BACKBONE_MIRRORED_FIELDS = ("hidden_size", "num_hidden_layers", "patch_size", "num_channels")
BUILT_IN_ENCODER_FIELDS = (
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "qkv_bias",
    "patch_embeddings_bias",
)
# transformers' ways of naming a backbone inside a head config: they would build a config from the Hub, never load
# its weights (transformers 5 ignores `use_pretrained_backbone`); SETR takes a built `backbone_config` instead.
BACKBONE_LOADING_KWARGS = ("backbone", "use_timm_backbone", "backbone_kwargs", "use_pretrained_backbone")


def backbone_encoder_facts(backbone_config: PreTrainedConfig) -> dict[str, int]:
    """The backbone's `hidden_size`, `num_hidden_layers`, `patch_size` and `num_channels` (the fields SETR mirrors),
    or a `ValueError` in one line for a backbone SETR does not take. timm configs carry them as attributes written by
    `SetrForSemanticSegmentation.from_backbone` (the timm model name alone does not say them)."""
    model_type = backbone_config.model_type
    if model_type not in BACKBONE_STAGE_OFFSET:
        raise ValueError(
            f"SETR does not take a {model_type!r} backbone: its heads read plain ViT layers from one of "
            f"{sorted(BACKBONE_STAGE_OFFSET)} (timm ViTs as 'timm_backbone')"
        )
    if model_type in ("dinov2", "dinov2_with_registers", "dinov3_vit", "beit") and not getattr(
        backbone_config, "reshape_hidden_states", True
    ):
        raise ValueError(f"backbone_config.reshape_hidden_states=False: SETR's heads need the {model_type} maps")
    if model_type == "beit" and getattr(backbone_config, "add_fpn", False):
        raise ValueError("backbone_config.add_fpn=True: SETR's heads read BEiT's plain layers, not its FPN")
    facts = {name: getattr(backbone_config, name, None) for name in BACKBONE_MIRRORED_FIELDS}
    if isinstance(facts["patch_size"], (list, tuple)):
        if len(set(facts["patch_size"])) != 1:
            raise ValueError(f"SETR needs square patches, the backbone has patch_size {facts['patch_size']}")
        facts["patch_size"] = facts["patch_size"][0]
    known = {name: value for name, value in facts.items() if isinstance(value, int)}
    missing = [name for name in facts if name not in known]
    if missing:
        raise ValueError(
            f"the {model_type} backbone_config does not say its {', '.join(missing)}: build the model with "
            "SetrForSemanticSegmentation.from_backbone(name), which reads them from the encoder"
        )
    return known


def default_backbone_out_indices(num_layers: int, decoder_type: str) -> list[int] | None:
    """SETR's layers for a backbone of `num_layers` layers: the decoder's own for 24 (ViT-L, as the released
    configs), else the last layer of each quarter (12 layers: [2, 5, 8, 11]), every layer below 4."""
    if num_layers == 24:
        return None  # the decoder default
    if num_layers < 4:
        return list(range(num_layers))
    return [num_layers * quarter // 4 - 1 for quarter in (1, 2, 3, 4)]


def backbone_stage_indices(config: "SetrConfig") -> list[int]:
    """The one map from SETR's `out_indices` (encoder layers from 0) to the backbone's stage indices
    (transformers ViTs: stage 0 is the embeddings, "stem"; timm: stage i is block i)."""
    if config.backbone_config is None:
        raise ValueError("the built-in encoder has no backbone stages")
    assert isinstance(config.backbone_config, PreTrainedConfig)  # `SetrConfig` builds a dict into its config
    offset = BACKBONE_STAGE_OFFSET[config.backbone_config.model_type]
    return [index + offset for index in resolved(config.out_indices)]


def int_pair(value: int | Sequence[int], name: str, positive: bool = False) -> tuple[int, int]:
    """An int (both sides) or a pair of ints as (height, width), or a `ValueError` naming `name`. The one reader of
    size pairs: the sliding window here, the training augmentation's crop and scale."""

    def is_int(v: object) -> TypeGuard[int]:  # numpy integers too, as ints
        return isinstance(v, Integral) and not isinstance(v, bool)

    values = [value] * 2 if is_int(value) else value
    if not isinstance(values, Sequence) or len(values) != 2 or not all(is_int(v) for v in values):
        raise ValueError(f"{name} must be an int or a pair of ints (height, width), got {value!r}")
    if positive and min(values) < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return int(values[0]), int(values[1])


def check_slide_window(
    crop_size: int | Sequence[int], stride: int | Sequence[int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (crop, stride) of sliding-window inference as (height, width) pairs, or a `ValueError` naming the problem.

    The stride may not exceed the crop: larger steps leave pixels no window covers (mmsegmentation asserts full
    coverage), whose average would be 0 / 0.
    """
    crop, step = int_pair(crop_size, "sliding-window crop size"), int_pair(stride, "sliding-window stride")
    if min(crop) < 1 or min(step) < 1:
        raise ValueError(f"sliding-window crop size {crop} and stride {step} must be positive")
    if step[0] > crop[0] or step[1] > crop[1]:
        raise ValueError(
            f"sliding-window stride {step} is larger than the crop size {crop}: the windows would leave gaps; use a "
            "stride of at most the crop size"
        )
    return crop, step


def default_slide_stride(crop_size: int) -> int:
    """The one rule for the sliding-window stride of a window side: two thirds, rounded down. It gives the released
    configs' strides (341 for a 512 window, 512 for 768); the presets, the training scripts and `slide_window` use it.
    """
    return crop_size * 2 // 3


def checked_id2label(id2label: dict, contiguous: bool = True) -> dict[int, str]:
    """`id2label` with int keys (JSON gives strings), which must be the class ids 0..n-1 when `contiguous`; a
    `ValueError` names the problem. The one checker of label maps: the datasets' (`data.classes`) add their own rules
    on top."""
    if not isinstance(id2label, dict):
        raise ValueError(f"id2label must map class ids 0..n-1 to names, got {str(id2label)[:200]}")
    checked = {}
    for index, label in id2label.items():
        try:
            checked[int(index)] = label
        except (TypeError, ValueError):
            raise ValueError(
                f"id2label must map class ids 0..n-1 to names: key {index!r} is not an integer class id"
            ) from None
    if contiguous and sorted(checked) != list(range(len(checked))):
        keys = sorted(checked)
        shown = f"{keys[:10]}"[:-1] + (", ...]" if len(keys) > 10 else "]")
        raise ValueError(f"id2label keys must be 0..{len(checked) - 1}, got {shown}.")
    return checked


@strict
class SetrConfig(PreTrainedConfig):
    r"""
    Configuration of a SETR model (Zheng et al., CVPR 2021) as implemented in mmsegmentation: a plain ViT encoder and
    a Naive, PUP or MLA decoder. The defaults give the released ADE20K SETR-PUP model (ViT-L/16, 512x512, 150
    classes).

    The decoder-dependent fields (marked "decoder default") may be left `None`: they take the chosen decoder's value
    from the released configs at construction (`SetrConfig.for_decoder("mla", ...)` says so). `from_pretrained(folder,
    decoder_type=...)` switches a saved config's decoder: a field still at the old decoder's value moves to the new
    one's, a value set by hand is kept.

    Args:
        hidden_size (`int`, *optional*, defaults to 1024):
            Width of the ViT encoder (ViT-L: 1024).
        num_hidden_layers (`int`, *optional*, defaults to 24):
            Number of encoder layers.
        num_attention_heads (`int`, *optional*, defaults to 16):
            Attention heads per encoder layer; must divide `hidden_size`.
        intermediate_size (`int`, *optional*, defaults to 4096):
            Width of the encoder MLPs.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of the encoder MLPs (exact GELU, as mmsegmentation).
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout after the attention projection and the MLP.
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on the attention weights.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated normal initialisation of linear layers and embeddings.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the encoder LayerNorms (SETR has no final LayerNorm).
        image_size (`int` or `[height, width]`, *optional*, defaults to 512):
            The training crop. It fixes the position-embedding grid (`image_size // patch_size`); other input sizes
            resize the table bilinearly, as mmsegmentation does.
        patch_size (`int`, *optional*, defaults to 16):
            Side of the square patches (a strided convolution).
        num_channels (`int`, *optional*, defaults to 3):
            Channels of the input images.
        qkv_bias (`bool`, *optional*, defaults to `True`):
            Whether the query, key and value projections have a bias.
        patch_embeddings_bias (`bool`, *optional*, defaults to `True`):
            Whether the patch embedding has a bias (the released checkpoints carry one).
        use_cls_token (`bool`, *optional*, decoder default):
            Whether the cls token passes through the encoder layers: Naive and PUP `True`; MLA `False` (dropped after
            the position embedding is added).
        out_indices (`list[int]`, *optional*, decoder default):
            0-based encoder layers whose outputs feed the decoder and the auxiliary heads: Naive/PUP `[9, 14, 19,
            23]`, MLA `[5, 11, 17, 23]`.
        decoder_type (`str`, *optional*, defaults to `"pup"`):
            `"naive"`, `"pup"` or `"mla"`.
        decoder_in_index (`int`, *optional*, defaults to -1):
            Which of `out_indices` feeds the Naive/PUP head (the last one).
        decoder_channels (`int`, *optional*, decoder default):
            Convolution width of the Naive/PUP head (256); the MLA head's concatenated width (512).
        decoder_num_convs (`int`, *optional*, decoder default):
            Conv-BN-ReLU stages of the head: Naive 1, PUP 4, MLA 2 per branch.
        decoder_kernel_size (`int`, *optional*, decoder default):
            Kernel size of those convolutions: Naive 1, PUP 3, MLA 3.
        decoder_up_scale (`int`, *optional*, decoder default):
            Bilinear up-sampling after each stage: Naive 4, PUP 2, MLA 4 (once).
        mla_channels (`int`, *optional*, defaults to 128):
            Channels of each MLA branch (`decoder_channels == len(out_indices) * mla_channels`).
        mla_neck_channels (`int`, *optional*, defaults to 256):
            Output channels of the MLA neck.
        batch_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the decoders' BatchNorms.
        use_auxiliary_head (`bool`, *optional*, defaults to `True`):
            Whether to build the auxiliary heads (training only: they cost nothing at inference).
        auxiliary_in_indices (`list[int]`, *optional*, decoder default):
            Indices into `out_indices` (MLA: into the neck outputs) read by the auxiliary heads: Naive/PUP `[0, 1,
            2]`, MLA `[0, 1, 2, 3]`.
        auxiliary_channels (`int`, *optional*, defaults to 256):
            Convolution width of the auxiliary heads.
        auxiliary_num_convs (`int`, *optional*, decoder default):
            Convolutions per auxiliary head: Naive/PUP 2, MLA 0 (an FCN head straight on the neck output).
        auxiliary_kernel_size (`int`, *optional*, decoder default):
            Kernel size of those convolutions: Naive 1, PUP 3, MLA 1.
        auxiliary_up_scale (`int`, *optional*, defaults to 4):
            Up-sampling of the Naive/PUP auxiliary heads.
        auxiliary_loss_weight (`float`, *optional*, defaults to 0.4):
            Weight of each auxiliary head's loss, as mmsegmentation.
        semantic_loss_ignore_index (`int`, *optional*, defaults to 255):
            Label of the pixels the loss ignores.
        loss (`list[dict]`, *optional*):
            The loss of every head, a weighted sum of terms defined as mmsegmentation 1.2.2 defines them
            (`loss_setr.py`): each `{"type": ..., "weight": 1.0, ...options}` with type `"cross_entropy"`
            (`class_weight`, `avg_non_ignore`), `"binary_cross_entropy"` (binary models; `class_weight=[w]` is BCE's
            `pos_weight`, `avg_non_ignore`), `"dice"` (`use_sigmoid`, `naive_dice`, `eps`) or `"focal"` (`gamma`,
            `alpha`, `class_weight`). `None` (the default): cross-entropy averaged over all pixels, as the released
            configs; for a binary model (`num_labels=1`) BCE over the labelled pixels, as SegFormer.
        loss_sampler (`dict`, *optional*):
            `{"type": "ohem", "thresh": 0.7, "min_kept": 100000}`: mmsegmentation's `OHEMPixelSampler`, which keeps
            only the hard pixels in each head's cross-entropy / BCE terms.
        inference_mode (`str`, *optional*, defaults to `"whole"`):
            What `forward` does without `labels` in eval mode. `"whole"` returns logits at the decoder's resolution
            (transformers' convention); `"slide"` runs mmsegmentation's sliding-window inference and returns logits at
            the input resolution (the converted checkpoints use it, as they were evaluated that way).
        slide_crop_size (`int` or `[h, w]`, *optional*):
            Window of sliding-window inference; defaults to `image_size`.
        slide_stride (`int` or `[h, w]`, *optional*):
            Window stride, at most the window (larger steps would leave gaps); defaults to two thirds of the window,
            rounded down (341 for 512, 512 for 768, as the released configs).
        slide_batch_size (`int`, *optional*, defaults to 4):
            Windows run through the model at once (bounds memory on large images).
        backbone_config (`PreTrainedConfig` or `dict`, *optional*):
            Another encoder for SETR's heads, built by transformers' backbone loading (`AutoBackbone`, random
            weights; `SetrForSemanticSegmentation.from_backbone` loads pretrained ones): a `dinov2`,
            `dinov2_with_registers`, `dinov3_vit` or `beit` config, or a `timm_backbone` one for timm ViTs. `None`
            (the default) keeps the built-in ViT. With a backbone, `hidden_size`, `num_hidden_layers`, `patch_size`
            and `num_channels` mirror the backbone's, the other built-in encoder fields must stay at their defaults,
            `out_indices` (SETR's layers, from 0) sets the backbone's stages (`backbone_stage_indices`; for depths
            other than 24 it defaults to the last layer of each quarter), and the heads read the backbone's
            `feature_maps`: its hidden states without prefix tokens, reshaped, normalised where the family does.
        palette (`list[[r, g, b]]`, *optional*):
            A colour per label for visualisations (the dataset's, for converted checkpoints). Setting a new
            `id2label` on a built config (`from_pretrained(..., id2label=...)`) drops a palette that no longer has one
            colour per label.
        kwargs (*optional*):
            The common [`PreTrainedConfig`] arguments (`id2label`, `label2id`, `num_labels`, ...). `num_labels`
            defaults to 150 (ADE20K).

    Example:

    ```python
    >>> from transformers_setr import SetrConfig, SetrForSemanticSegmentation

    >>> config = SetrConfig(decoder_type="mla", num_labels=19)  # the MLA decoder's defaults fill the `None` fields
    >>> model = SetrForSemanticSegmentation(config)  # random weights
    ```
    """

    model_type = "setr"
    # The auxiliary heads' logits (returned with `labels`, for the loss) must not reach the Trainer's predictions
    # (`compute_metrics` gets the logits alone, as for other segmentation models).
    keys_to_ignore_at_inference = ["auxiliary_logits"]
    # `optional`: `None` keeps the built-in encoder (transformers' heads would build a default backbone instead).
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="dinov2", optional=True),
    }

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-6
    image_size: int | list[int] | tuple[int, int] = 512
    patch_size: int = 16
    num_channels: int = 3
    qkv_bias: bool = True
    patch_embeddings_bias: bool = True
    use_cls_token: bool | None = None
    out_indices: list[int] | tuple[int, ...] | None = None

    decoder_type: DecoderType = "pup"
    decoder_in_index: int = -1
    decoder_channels: int | None = None
    decoder_num_convs: int | None = None
    decoder_kernel_size: int | None = None
    decoder_up_scale: int | None = None
    mla_channels: int = 128
    mla_neck_channels: int = 256
    batch_norm_eps: float = 1e-5

    use_auxiliary_head: bool = True
    auxiliary_in_indices: list[int] | tuple[int, ...] | None = None
    auxiliary_channels: int = 256
    auxiliary_num_convs: int | None = None
    auxiliary_kernel_size: int | None = None
    auxiliary_up_scale: int = 4
    auxiliary_loss_weight: float = 0.4

    semantic_loss_ignore_index: int = IGNORE_INDEX
    loss: list[dict] | None = None
    loss_sampler: dict | None = None

    inference_mode: InferenceMode = "whole"
    slide_crop_size: int | list[int] | tuple[int, int] | None = None
    slide_stride: int | list[int] | tuple[int, int] | None = None
    slide_batch_size: int = 4

    palette: list[list[int]] | None = None
    backbone_config: dict | PreTrainedConfig | None = None

    if TYPE_CHECKING:  # for the type checker only (no field, no runtime change): construction always sets the labels

        @property
        def num_labels(self) -> int: ...

        @num_labels.setter
        def num_labels(self, num_labels: int) -> None: ...

    def __post_init__(self, **kwargs):
        given = [name for name in BACKBONE_LOADING_KWARGS if kwargs.pop(name, None) not in (None, False, {})]
        if given:
            raise ValueError(
                f"SetrConfig takes no {given[0]}=: pass backbone_config (a built config), or load pretrained weights "
                "with SetrForSemanticSegmentation.from_backbone(name)"
            )
        if self.backbone_config is not None:
            self._adopt_backbone()
        defaults = _DECODER_DEFAULTS.get(self.decoder_type, {})
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, list(value) if isinstance(value, list) else value)
        if self.out_indices is not None:
            self.out_indices = list(self.out_indices)
        if self.auxiliary_in_indices is not None:
            self.auxiliary_in_indices = list(self.auxiliary_in_indices)
        if isinstance(self.image_size, tuple):
            self.image_size = list(self.image_size)
        for name in ("slide_crop_size", "slide_stride"):
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))
        if self.backbone_config is not None:
            self._align_backbone_stages()
        self._complete_label_maps(kwargs)
        super().__post_init__(**kwargs)

    def _adopt_backbone(self) -> None:
        """Build the backbone config (from a dict: `config.json`), mirror its encoder facts, refuse what contradicts
        them, and default `out_indices` to its depth."""
        if isinstance(self.backbone_config, dict):
            if "model_type" not in self.backbone_config:
                raise ValueError("backbone_config needs a model_type (e.g. 'dinov2') to say which encoder it is")
            spec = self.sub_configs_defaults["backbone_config"]
            self.backbone_config, _ = spec.create_subconfig("backbone_config", dict(self.backbone_config))
        else:
            self.backbone_config = copy.deepcopy(self.backbone_config)  # its stages are set below
        assert isinstance(self.backbone_config, PreTrainedConfig)
        facts = backbone_encoder_facts(self.backbone_config)
        model_type = self.backbone_config.model_type
        fields = type(self).__dataclass_fields__
        problems = [
            f"{name}={getattr(self, name)!r} contradicts the {model_type} backbone's {value}"
            for name, value in facts.items()
            if getattr(self, name) not in (fields[name].default, value)
        ]
        problems += [
            f"{name}={getattr(self, name)!r} belongs to the built-in encoder (set it in backbone_config)"
            for name in BUILT_IN_ENCODER_FIELDS
            if getattr(self, name) != fields[name].default
        ]
        if self.use_cls_token is False:
            problems.append(
                "use_cls_token=False (MLA's cls token dropped before layer 1) exists only in the built-in encoder; "
                f"the {model_type} backbone keeps its prefix tokens through its layers and SETR drops them from the maps"
            )
        if problems:
            raise ValueError(f"Invalid SetrConfig with a backbone: {problems[0]}")
        for name, value in facts.items():
            setattr(self, name, value)
        self.use_cls_token = True
        if self.out_indices is None:
            self.out_indices = default_backbone_out_indices(self.num_hidden_layers, self.decoder_type)

    def _align_backbone_stages(self) -> None:
        """Set the backbone's out_indices from SETR's (the one source of truth); a backbone config that names other
        stages than its default (the last one) is a contradiction, refused in one line."""
        if any(not 0 <= index < self.num_hidden_layers for index in resolved(self.out_indices)):
            return  # `validate_architecture` names the bad indices
        stages = backbone_stage_indices(self)
        assert isinstance(self.backbone_config, PreTrainedConfig)  # built by `_adopt_backbone`
        current = self.backbone_config.out_indices
        last_stage = BACKBONE_STAGE_OFFSET[self.backbone_config.model_type] + self.num_hidden_layers - 1
        if current not in (None, stages, [last_stage], [-1]):
            raise ValueError(
                f"Invalid SetrConfig: backbone_config.out_indices {current} contradicts SETR's out_indices "
                f"{self.out_indices} (layers from 0), which are the backbone's stages {stages}; set out_indices only"
            )
        self.backbone_config.out_indices = stages

    def _complete_label_maps(self, kwargs: dict) -> None:
        """Set both `id2label` and `label2id`, keeping what the caller gave and deriving only what is missing
        (transformers leaves `label2id` empty given only `id2label`)."""
        num_labels = kwargs.get("num_labels")
        if self.id2label is None and self.label2id is not None:
            self.id2label = {int(index): name for name, index in self.label2id.items()}
        if self.id2label is not None:
            self.id2label = checked_id2label(self.id2label)
            if num_labels is not None and num_labels != len(self.id2label):
                # Stock transformers' rule (the re-head flow `from_pretrained(folder, num_labels=7,
                # ignore_mismatched_sizes=True)` passes the saved id2label with the new count): warn, and the count
                # wins with generic names; the saved label2id and palette described the old labels.
                logger.warning(
                    f"You passed `num_labels={num_labels}` which is incompatible to the `id2label` map of length "
                    f"`{len(self.id2label)}`: the labels become LABEL_0..LABEL_{num_labels - 1}."
                )
                self.id2label = {index: f"LABEL_{index}" for index in range(max(num_labels, 0))}
                self.label2id = None
                if self.palette is not None and len(self.palette) != num_labels:
                    self.palette = None
            kwargs.pop("num_labels", None)
            if self.label2id is None:
                self.label2id = {name: index for index, name in self.id2label.items()}
        else:
            kwargs["num_labels"] = DEFAULT_NUM_LABELS if num_labels is None else num_labels

    def to_diff_dict(self) -> dict:
        """`PreTrainedConfig.to_diff_dict` (what `save_pretrained` writes), without `backbone_config` when it is
        `None`: a built-in model's config.json stays as it was before backbones existed (conversions, cards and saved
        folders unchanged); `to_dict` keeps the key, as transformers' composite configs do."""
        output = super().to_diff_dict()
        if output.get("backbone_config", False) is None:
            del output["backbone_config"]
        return output

    @classmethod
    def for_decoder(cls, decoder_type: DecoderType, **kwargs) -> "SetrConfig":
        """The config of a `decoder_type` model ("naive", "pup" or "mla"): every decoder-dependent field not given in
        `kwargs` takes that decoder's value from the released configs. The one place decoder defaults are resolved
        is construction (`__post_init__`); a built config's `decoder_type` is not meant to change (build another, or
        load with `from_pretrained(..., decoder_type=...)`)."""
        return cls(decoder_type=decoder_type, **kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "SetrConfig":
        """`PreTrainedConfig.from_dict`, with `decoder_type` among `kwargs` (`from_pretrained(folder,
        decoder_type="mla")`) applied before construction rather than set on the built config as transformers does
        with other kwargs: the saved decoder-dependent fields that hold the saved decoder's defaults give way to the
        new decoder's, a value set by hand is kept (`validate` reports a combination the model cannot build)."""
        if "decoder_type" in kwargs:
            config_dict = dict(config_dict)
            saved = config_dict.get("decoder_type", cls.__dataclass_fields__["decoder_type"].default)
            for name, default in _DECODER_DEFAULTS.get(saved, {}).items():
                if config_dict.get(name) in (None, default):
                    config_dict.pop(name, None)
            config_dict["decoder_type"] = kwargs.pop("decoder_type")
        return super().from_dict(config_dict, **kwargs)

    def __setattr__(self, name: str, value) -> None:
        # The one attribute hook, for the label maps: a new `id2label` on a built config (transformers' own
        # `config.num_labels = n` setter, and `from_pretrained(..., id2label=...)`, which it applies by setattr after
        # construction, including the re-head flow) replaces the label set, so the old `label2id` and palette that
        # described the old labels must follow; no other place sees every such assignment.
        relabel = name == "id2label" and value is not None and self.__dict__.get("_post_init_done", False)
        if relabel:
            value = checked_id2label(value)
        super().__setattr__(name, value)
        if relabel:
            self._labels_changed(value)

    def _labels_changed(self, id2label: dict[int, str]) -> None:
        """The one rule for the label-dependent fields when `id2label` changes on a built config: `label2id` is rebuilt
        from it (a `label2id` given with it is set after it, as `from_pretrained` does), and a palette whose length no
        longer matches is dropped (one of the right length is kept). A palette given to the constructor with
        `id2label` is checked instead (`validate_architecture`): a mismatch there is the caller's error."""
        self.label2id = {label: index for index, label in id2label.items()}
        if self.palette is not None and len(self.palette) != len(id2label):
            logger.info(
                f"id2label now has {len(id2label)} labels: dropping the palette of {len(self.palette)} colours."
            )
            self.palette = None

    @property
    def image_grid(self) -> tuple[int, int]:
        """Height and width of the position-embedding grid (`image_size // patch_size`)."""
        height, width = (
            (self.image_size, self.image_size) if isinstance(self.image_size, int) else tuple(self.image_size)
        )
        return height // self.patch_size, width // self.patch_size

    @property
    def slide_window(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(crop, stride) of sliding-window inference, each as (height, width); `ValueError` if they are invalid."""
        crop = self.slide_crop_size if self.slide_crop_size is not None else self.image_size
        if self.slide_stride is not None:
            return check_slide_window(crop, self.slide_stride)
        crop = check_slide_window(crop, 1)[0]
        return check_slide_window(crop, tuple(map(default_slide_stride, crop)))

    @property
    def is_binary(self) -> bool:
        """One output channel: a binary model (sigmoid + BCE, as SegFormer with `num_labels=1`), whose predictions are
        thresholded into two classes, background (0) and `id2label[0]` (1)."""
        return self.num_labels == 1

    @property
    def prediction_id2label(self) -> dict[int, str]:
        """The classes that predicted label maps hold: `id2label`, or for a binary model background (0) and its one
        label (1)."""
        id2label = cast(dict[int, str], self.id2label)  # int keys: every id2label goes through `checked_id2label`
        if self.is_binary:
            return {0: "background", 1: id2label[0]}
        return dict(id2label)

    @property
    def num_feature_levels(self) -> int:
        return len(resolved(self.out_indices))

    def validate_architecture(self):
        """Reject combinations the model cannot build, with a message naming the fields."""
        super().validate_architecture()
        errors = []
        backbone = self.backbone_config is not None
        if not backbone and self.hidden_size % self.num_attention_heads:
            errors.append(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})"
            )
        if self.patch_size < 1:
            errors.append(f"patch_size must be positive, got {self.patch_size}")
        sizes = [self.image_size] if isinstance(self.image_size, int) else list(self.image_size)
        if backbone:  # the backbone owns its position embeddings: image_size is only the crop and the slide window
            if len(sizes) not in (1, 2) or any(size < self.patch_size for size in sizes):
                errors.append(f"image_size {self.image_size} must be one or two sizes of at least patch_size")
        elif len(sizes) not in (1, 2) or any(size < self.patch_size or size % self.patch_size for size in sizes):
            errors.append(
                f"image_size {self.image_size} must be one or two positive multiples of patch_size ({self.patch_size})"
            )
        if not self.out_indices:
            errors.append("out_indices must name at least one encoder layer")
        else:
            if any(not 0 <= index < self.num_hidden_layers for index in self.out_indices):
                errors.append(
                    f"out_indices {self.out_indices} must lie in [0, num_hidden_layers={self.num_hidden_layers})"
                )
            if sorted(set(self.out_indices)) != list(self.out_indices):
                errors.append(f"out_indices {self.out_indices} must be strictly increasing")
            levels = len(self.out_indices)
            if not -levels <= self.decoder_in_index < levels:
                errors.append(f"decoder_in_index {self.decoder_in_index} is out of range for {levels} out_indices")
            if self.auxiliary_in_indices and any(not -levels <= i < levels for i in self.auxiliary_in_indices):
                errors.append(
                    f"auxiliary_in_indices {self.auxiliary_in_indices} are out of range for {levels} feature levels"
                )
            if self.decoder_type == "mla" and self.decoder_channels != levels * self.mla_channels:
                errors.append(
                    f"the MLA head concatenates {levels} branches of mla_channels={self.mla_channels}: decoder_channels "
                    f"must be {levels * self.mla_channels}, got {self.decoder_channels}"
                )
        if self.decoder_type in ("naive", "pup"):
            if resolved(self.decoder_num_convs) < 1:
                errors.append(f"decoder_num_convs must be >= 1 for the {self.decoder_type} head")
            if self.decoder_kernel_size not in (1, 3):
                errors.append(
                    f"decoder_kernel_size must be 1 or 3 (mmsegmentation's SETRUPHead), got {self.decoder_kernel_size}"
                )
            if self.use_auxiliary_head and resolved(self.auxiliary_num_convs) < 1:
                errors.append("auxiliary_num_convs must be >= 1 for Naive/PUP auxiliary heads")
        if resolved(self.decoder_kernel_size) % 2 == 0 or (self.auxiliary_kernel_size or 1) % 2 == 0:
            errors.append("kernel sizes must be odd so that convolutions keep the feature size")
        for name in (
            "decoder_channels",
            "decoder_up_scale",
            "auxiliary_up_scale",
            "mla_channels",
            "mla_neck_channels",
        ):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.auxiliary_num_convs is not None and self.auxiliary_num_convs < 0:
            errors.append(f"auxiliary_num_convs must be >= 0, got {self.auxiliary_num_convs}")
        if self.use_auxiliary_head and not self.auxiliary_in_indices:
            errors.append("use_auxiliary_head=True needs auxiliary_in_indices")
        if self.auxiliary_loss_weight < 0:
            errors.append(f"auxiliary_loss_weight must be >= 0, got {self.auxiliary_loss_weight}")
        try:
            _ = self.slide_window
        except ValueError as error:
            errors.append(str(error))
        if self.slide_batch_size < 1:
            errors.append(f"slide_batch_size must be >= 1, got {self.slide_batch_size}")
        if self.palette is not None and (
            len(self.palette) != self.num_labels or any(len(colour) != 3 for colour in self.palette)
        ):
            errors.append(f"palette must hold one [r, g, b] per label ({self.num_labels}), got {len(self.palette)}")
        if self.num_labels is None or self.num_labels < 1:
            errors.append("a SETR model needs at least one label")
        else:
            errors += loss_config_errors(self.loss, self.loss_sampler, self.num_labels)
        if errors:
            raise ValueError("Invalid SetrConfig: " + "; ".join(errors) + ".")


__all__ = [
    "BACKBONE_STAGE_OFFSET",
    "IGNORE_INDEX",
    "MODEL_INFERENCE_MODES",
    "SetrConfig",
    "backbone_stage_indices",
    "check_slide_window",
    "checked_id2label",
    "default_slide_stride",
    "int_pair",
    "resolved",
]
