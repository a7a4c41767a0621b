"""The one key-rule engine of the converters, and their two tables.

A rule maps a full-match regular expression on a checkpoint key to a template for the transformers key
(`re.Match.expand`), or to nothing (`template=None`: dropped on purpose). `split_qkv` rules split a fused q/k/v
tensor into three (rows in that order) and fill `{qkv}` with `q`, `k`, `v`. `decoders` restricts a rule to some
decoder types. `MMSEG_KEY_RULES` maps mmsegmentation SETR checkpoints onto `SetrForSemanticSegmentation`,
`TIMM_VIT_KEY_RULES` timm ViT weights onto `SetrModel`.
"""

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

QKV_PARTS = ("q", "k", "v")
POSITION_EMBEDDINGS_KEY = "embeddings.position_embeddings"


@dataclass(frozen=True)
class KeyRule:
    pattern: str
    template: str | None
    split_qkv: bool = False
    decoders: tuple[str, ...] | None = None  # None: every decoder type


_HEAD = r"(decode_head|auxiliary_heads\.\d+)"
_BN = r"(weight|bias|running_mean|running_var)"
_UP = ("naive", "pup")
_MLA = ("mla",)


def _conv_module_rules(source: str, target: str, decoders: tuple[str, ...]) -> tuple[KeyRule, KeyRule]:
    """The two rules of an mmcv `ConvModule` (a bias-free conv, then a BatchNorm) at `source`, a pattern whose groups
    `target` refers to: its `conv.weight` and BatchNorm tensors go to the port's `conv` / `batch_norm` at `target`."""
    batch_norm_group = re.compile(source).groups + 1  # the group of `_BN`, after the source's own
    return (
        KeyRule(rf"{source}\.conv\.weight", f"{target}.conv.weight", decoders=decoders),
        KeyRule(rf"{source}\.bn\.{_BN}", f"{target}.batch_norm.\\{batch_norm_group}", decoders=decoders),
    )


MMSEG_KEY_RULES: tuple[KeyRule, ...] = (
    # ViT encoder (mmseg `VisionTransformer`)
    KeyRule(r"backbone\.cls_token", "setr.embeddings.cls_token"),
    KeyRule(r"backbone\.pos_embed", "setr.embeddings.position_embeddings"),
    KeyRule(r"backbone\.patch_embed\.projection\.(weight|bias)", r"setr.embeddings.patch_embeddings.projection.\1"),
    KeyRule(r"backbone\.layers\.(\d+)\.ln1\.(weight|bias)", r"setr.layers.\1.layernorm_before.\2"),
    KeyRule(r"backbone\.layers\.(\d+)\.ln2\.(weight|bias)", r"setr.layers.\1.layernorm_after.\2"),
    KeyRule(
        r"backbone\.layers\.(\d+)\.attn\.attn\.in_proj_(weight|bias)",
        r"setr.layers.\1.attention.{qkv}_proj.\2",
        split_qkv=True,
    ),
    KeyRule(r"backbone\.layers\.(\d+)\.attn\.attn\.out_proj\.(weight|bias)", r"setr.layers.\1.attention.o_proj.\2"),
    KeyRule(r"backbone\.layers\.(\d+)\.ffn\.layers\.0\.0\.(weight|bias)", r"setr.layers.\1.mlp.fc1.\2"),
    KeyRule(r"backbone\.layers\.(\d+)\.ffn\.layers\.1\.(weight|bias)", r"setr.layers.\1.mlp.fc2.\2"),
    # Every head's classifier (`conv_seg`)
    KeyRule(rf"{_HEAD}\.conv_seg\.(weight|bias)", r"\1.classifier.\2"),
    # Naive / PUP heads and their auxiliary heads (`SETRUPHead`): up_convs.j = [ConvModule, Upsample]
    KeyRule(rf"{_HEAD}\.norm\.(weight|bias)", r"\1.layernorm.\2", decoders=_UP),
    *_conv_module_rules(rf"{_HEAD}\.up_convs\.(\d+)\.0", r"\1.stages.\2", decoders=_UP),
    # MLA neck (`MLANeck`): neck output 0 is the deepest level; indices are kept as they are
    KeyRule(r"neck\.norm\.(\d+)\.(weight|bias)", r"neck.layernorms.\1.\2", decoders=_MLA),
    *_conv_module_rules(r"neck\.mla\.channel_proj\.(\d+)", r"neck.channel_projections.\1", decoders=_MLA),
    *_conv_module_rules(r"neck\.mla\.feat_extract\.(\d+)", r"neck.feature_extractors.\1", decoders=_MLA),
    # MLA head (`SETRMLAHead`): up_convs.i = [ConvModule, ConvModule, Upsample]
    *_conv_module_rules(r"decode_head\.up_convs\.(\d+)\.(\d+)", r"decode_head.branches.\1.\2", decoders=_MLA),
    # MLA auxiliary heads (`FCNHead`, concat_input=False); the released ones have no convs
    *_conv_module_rules(r"auxiliary_heads\.(\d+)\.convs\.(\d+)", r"auxiliary_heads.\1.convs.\2", decoders=_MLA),
)


TIMM_VIT_KEY_RULES: tuple[KeyRule, ...] = (
    # Embeddings; `pos_embed` is (1, 1 + grid_h * grid_w, C), cls slot first, the grid row-major.
    KeyRule(r"cls_token", "embeddings.cls_token"),
    KeyRule(r"pos_embed", POSITION_EMBEDDINGS_KEY),
    KeyRule(r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embeddings.projection.\1"),
    # Pre-norm blocks
    KeyRule(r"blocks\.(\d+)\.norm1\.(weight|bias)", r"layers.\1.layernorm_before.\2"),
    KeyRule(r"blocks\.(\d+)\.norm2\.(weight|bias)", r"layers.\1.layernorm_after.\2"),
    KeyRule(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"layers.\1.attention.{qkv}_proj.\2", split_qkv=True),
    KeyRule(r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"layers.\1.attention.o_proj.\2"),
    KeyRule(r"blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"layers.\1.mlp.fc1.\2"),
    KeyRule(r"blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"layers.\1.mlp.fc2.\2"),
    # Dropped on purpose: everything after the last block. SETR has no final LayerNorm (mmseg `final_norm=False`)
    # and no classifier; mmseg loads with strict=False and ignores them.
    KeyRule(r"norm\.(weight|bias)", None),
    KeyRule(r"fc_norm\.(weight|bias)", None),
    KeyRule(r"pre_logits\.fc\.(weight|bias)", None),  # the representation layer of older in21k checkpoints
    KeyRule(r"head\.(weight|bias)", None),
    KeyRule(r"head_drop\..*", None),  # a Dropout: holds no tensors in timm, listed for completeness
)


def map_key(key: str, rules: Sequence[KeyRule], decoder_type: str | None = None) -> list[str] | None:
    """The target key(s) of `key` under the first matching rule: one key, three for a fused q/k/v, `[]` for a key
    dropped on purpose, `None` when no rule matches."""
    for rule in rules:
        if rule.decoders is not None and decoder_type not in rule.decoders:
            continue
        match = re.fullmatch(rule.pattern, key)
        if match is None:
            continue
        if rule.template is None:
            return []
        target = match.expand(rule.template)
        return [target.replace("{qkv}", part) for part in QKV_PARTS] if rule.split_qkv else [target]
    return None


def rename_state_dict(
    state_dict: Mapping[str, torch.Tensor], targets_of: Callable[[str], list[str] | None]
) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str], list[str]]:
    """Apply a key mapping (`map_key` with a table) to a state dict.

    Returns the converted tensors, the source key of each converted key, the keys no rule maps, and the problems
    (a fused q/k/v tensor whose first dimension does not split into three).
    """
    converted: dict[str, torch.Tensor] = {}
    source_of: dict[str, str] = {}
    unmapped, problems = [], []
    for key, tensor in state_dict.items():
        targets = targets_of(key)
        if targets is None:
            unmapped.append(key)
            continue
        if len(targets) == len(QKV_PARTS):
            if tensor.dim() == 0 or tensor.shape[0] % len(QKV_PARTS):
                problems.append(
                    f"{key} (shape {tuple(tensor.shape)}): the first dimension does not split into q, k, v"
                )
                continue
            pieces = tensor.chunk(len(QKV_PARTS), dim=0)
        else:
            pieces = (tensor,) * len(targets)
        for target, piece in zip(targets, pieces):
            converted[target] = piece.contiguous()
            source_of[target] = key
    return converted, source_of, unmapped, problems
