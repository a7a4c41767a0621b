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
"""SETR's CPU inference fast path, applied in one step: `model = optimize_for_inference(model)`.

The step swaps modules, in place, for inference variants (subclasses that keep the same parameters, buffers and
hooks, so `state_dict`, `save_pretrained` and output capturing are unchanged):
- every `nn.Linear` (of any encoder) -> `InferenceLinear`: on CPU, float32 and bfloat16 projections go straight to
  oneDNN's matmul (`dense`), ~210 GFLOP/s for ViT-L's projections in float32 where `F.linear` (MKL) ran at ~185 on
  an AVX-512 EPYC (float32 logits move by ~1e-6 against `F.linear`); under autocast it keeps the weights cast (and
  oneDNN-packed, ~5% faster in bf16) instead of casting them on every call;
- `SetrAttention` -> `InferenceSetrAttention`: under autocast, q/k/v in one matmul with stacked cast weights;
- `SetrMLP` / `SetrLayer` -> exact GELU and residual sums written into the fresh projection outputs when no hook can
  hold them: no new 4-17 MB buffer per op, whose first touch costs page faults (the same bits);
- `SetrUpHead` -> the Naive / PUP head on channels-last maps: oneDNN's convolutions skip a layout reorder per call
  (ViT-L PUP head at 512x512: -8% in float32, -17% under bf16 autocast). MLA's neck and head measured slower so.
Modules it does not know (another encoder's attention, norms, convolutions) stay as they are; their `nn.Linear`s
are swapped all the same.

Training and gradients are untouched: every variant computes exactly as the plain module (its `super().forward`)
whenever autograd records, in training mode, under `torch.compile` / tracing.

Invalidation by construction: the only derived tensors (the cast / stacked / packed weights of the autocast path)
are built from the parameters as `optimize_for_inference` found them (`FrozenWeights`). A module whose parameters
have changed since (an optimizer step, `load_state_dict`, `to`) computes as the plain module and warns once until
`optimize_for_inference` is called again, which rebuilds them. Nothing else is cached.

This file is shipped next to the weights with `modeling_setr.py`: it imports only torch, transformers and it.
"""

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import GELUActivation
from transformers.utils import logging

from .modeling_setr import (
    SetrAttention,
    SetrLayer,
    SetrMLP,
    SetrUpHead,
    channel_layernorm_nhwc,
)

logger = logging.get_logger(__name__)

__all__ = ["optimize_for_inference"]


def fast_path_applies(module: nn.Module) -> bool:
    """The variants run their own computation only in eval mode, without autograd (cast weights would cut the
    parameters out of the graph) and outside `torch.compile` / tracing (which should see the plain computation)."""
    return not (module.training or torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing())


def active_autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype in effect for `device_type`, or None (also for device types without autocast: meta)."""
    if not torch.amp.is_autocast_available(device_type) or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def autocast_dtype(tensor: torch.Tensor, parameter: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast would cast `parameter` to for a matmul on `tensor`'s device, or None when it would not."""
    dtype = active_autocast_dtype(tensor.device.type)
    return dtype if dtype is not None and dtype != parameter.dtype and parameter.is_floating_point() else None


def has_hooks(*modules: nn.Module) -> bool:
    """Whether a forward hook (of the module or global) may see, and keep, what these modules return."""
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


# oneDNN's matmul (the op inductor's CPU fusions call); absent from builds without oneDNN.
ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


@functools.cache
def onednn_matmul_built() -> bool:
    """This torch build has oneDNN's matmul and its weight packing (asked once: it cannot change in a process)."""
    ops = ("_linear_pointwise", "_reorder_linear_weight")
    return torch.backends.mkldnn.is_available() and all(hasattr(torch.ops.mkldnn, op) for op in ops)


def onednn_matmul_usable(device: torch.device, dtype: torch.dtype) -> bool:
    """oneDNN's matmul serves `dtype` on `device`: CPU, float32 or bfloat16, oneDNN built and not disabled."""
    # bool(): torch types the flag as the `ContextProp` descriptor that serves it
    return (
        device.type == "cpu"
        and dtype in ONEDNN_DTYPES
        and bool(torch.backends.mkldnn.enabled)
        and onednn_matmul_built()
    )


def dense(hidden_states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear` without autograd (autocast off, operands of one dtype), through oneDNN's matmul where it serves;
    `weight` may be oneDNN-packed (`cast_matmul_weights`)."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(hidden_states.contiguous(), weight, bias, "none", [], "")
    if (
        onednn_matmul_usable(hidden_states.device, hidden_states.dtype)
        and hidden_states.dtype == weight.dtype
        and (bias is None or bias.dtype == weight.dtype)
        and hidden_states.is_contiguous()
        and weight.is_contiguous()
    ):
        return torch.ops.mkldnn._linear_pointwise(hidden_states, weight, bias, "none", [], "")
    return F.linear(hidden_states, weight, bias)


# A weight and its bias, cast (and packed) for `dense`.
CastWeights = tuple[torch.Tensor, torch.Tensor | None]


def cast_matmul_weights(
    weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, pack: bool = True
) -> CastWeights:
    """`weight` and `bias` cast to `dtype` for `dense`, the weight (with `pack`) in oneDNN's packed layout where oneDNN
    serves."""
    weight, bias = weight.to(dtype), None if bias is None else bias.to(dtype)
    if pack and onednn_matmul_usable(weight.device, dtype):
        weight = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)
    return weight, bias


def parameter_state(tensors: tuple[torch.Tensor, ...]) -> tuple:
    """What identifies the values of `tensors`: storage, version (every in-place write that autograd sees: optimizer
    steps, `load_state_dict`, `copy_`), device, dtype and shape. Inference tensors have no version; they cannot be
    written outside `torch.inference_mode` either."""
    return tuple((t.data_ptr(), None if t.is_inference() else t._version, t.device, t.dtype, t.shape) for t in tensors)


class FrozenWeights:
    """Tensors derived from `sources` (cast, stacked, packed weights), valid for the parameters as they were when the
    module was optimized. `get` builds an entry on first use and returns None once the sources have changed: the
    module then computes as the plain one (and warns once) until `optimize_for_inference` runs again."""

    def __init__(self, owner: str, sources: tuple[torch.Tensor, ...]):
        self.owner = owner
        self.state = parameter_state(sources)
        self.sources = tuple(s.detach() for s in sources)  # held: a freed storage's address cannot come back
        self.entries: dict[object, CastWeights] = {}
        self.warned = False

    def get(
        self, key: object, sources: tuple[torch.Tensor, ...], build: Callable[[], CastWeights]
    ) -> CastWeights | None:
        if parameter_state(sources) != self.state:
            if not self.warned:
                logger.warning(
                    f"{self.owner}: its parameters changed after optimize_for_inference; computing without the fast "
                    "path until optimize_for_inference(model) is called again"
                )
                self.warned = True
            return None
        if key not in self.entries:
            self.entries[key] = build()
        return self.entries[key]


def cast_weights_key(dtype: torch.dtype, device: torch.device) -> tuple:
    """Packed weights serve only while oneDNN does (`torch.backends.mkldnn.flags`): that is part of the key."""
    return (dtype, onednn_matmul_usable(device, dtype))


class InferenceLinear(nn.Linear):
    """`nn.Linear` on oneDNN's matmul for CPU inference, with the weights autocast casts kept cast (and packed)."""

    def prepare(self) -> None:
        self.frozen = FrozenWeights(type(self).__name__, self.sources())

    def sources(self) -> tuple[torch.Tensor, ...]:
        return (self.weight,) if self.bias is None else (self.weight, self.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not fast_path_applies(self):
            return super().forward(hidden_states)
        dtype = autocast_dtype(hidden_states, self.weight)
        if dtype is None:
            if hidden_states.dtype != self.weight.dtype or active_autocast_dtype(hidden_states.device.type):
                return super().forward(hidden_states)  # let the layer cast, promote or raise as it would
            return dense(hidden_states, self.weight, self.bias)
        cast = self.frozen.get(
            cast_weights_key(dtype, hidden_states.device),
            self.sources(),
            lambda: cast_matmul_weights(self.weight, self.bias, dtype),
        )
        if cast is None:
            return super().forward(hidden_states)
        weight, bias = cast
        with torch.autocast(hidden_states.device.type, enabled=False):
            return dense(hidden_states.to(dtype), weight, bias)


class InferenceSetrAttention(SetrAttention):
    """`SetrAttention` whose q/k/v run as one matmul on stacked cast weights under autocast."""

    def prepare(self) -> None:
        # Only plain projections are stacked: an adapter or a quantised layer on q/k/v must see its own call.
        self.fusable = all(type(p) in (nn.Linear, InferenceLinear) for p in (self.q_proj, self.k_proj, self.v_proj))
        self.frozen = FrozenWeights(type(self).__name__, self.qkv_sources() if self.fusable else ())

    def qkv_sources(self) -> tuple[torch.Tensor, ...]:
        projections = (self.q_proj, self.k_proj, self.v_proj)
        return (*(p.weight for p in projections), *(p.bias for p in projections if p.bias is not None))

    def fused_qkv_weights(self, dtype: torch.dtype, device: torch.device, pack: bool = True) -> CastWeights | None:
        """The q/k/v weights (and biases) stacked for one matmul and cast to `dtype` (`pack`: in oneDNN's packed
        layout where oneDNN serves); None once the parameters changed (`FrozenWeights`)."""
        sources = self.qkv_sources()
        weights, biases = sources[:3], sources[3:]

        def build() -> CastWeights:
            return cast_matmul_weights(torch.cat(weights), torch.cat(biases) if biases else None, dtype, pack)

        key = cast_weights_key(dtype, device) if pack else (dtype, "unpacked")
        return self.frozen.get(key, sources, build)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        projections = (self.q_proj, self.k_proj, self.v_proj)
        fused, dtype = None, None
        plain = self.fusable and all(type(p) in (nn.Linear, InferenceLinear) for p in projections)
        if plain and not has_hooks(*projections) and fast_path_applies(self):
            dtype = autocast_dtype(hidden_states, self.q_proj.weight)
        if dtype is not None:
            fused = self.fused_qkv_weights(dtype, hidden_states.device)
        if fused is None:
            return super().forward(hidden_states, attention_mask, **kwargs)
        with torch.autocast(hidden_states.device.type, enabled=False):
            qkv = dense(hidden_states.to(dtype), *fused)
        query, key, value = qkv.view(*hidden_states.shape[:-1], 3, -1, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return self.attend(query, key, value, attention_mask, **kwargs)


class InferenceSetrMLP(SetrMLP):
    """`SetrMLP` with the exact GELU written into fc1's fresh output (the same bits as `F.gelu`)."""

    def prepare(self) -> None:
        self.exact_gelu = type(self.activation_fn) is GELUActivation and self.activation_fn.act is F.gelu

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        in_place = self.exact_gelu and isinstance(self.fc1, InferenceLinear) and not has_hooks(self.fc1)
        if not (in_place and fast_path_applies(self)):
            return super().forward(hidden_states)
        return self.fc2(torch.ops.aten.gelu_(self.fc1(hidden_states)))


def overwritable(output_module: nn.Module, projection: nn.Module) -> bool:
    """`output_module` returns `projection`'s output as computed: a fresh tensor that no hook can hold."""
    return isinstance(projection, InferenceLinear) and not has_hooks(output_module, projection)


def add_residual(residual: torch.Tensor, update: torch.Tensor, in_place: bool) -> torch.Tensor:
    """`residual + update`, written into `update` when it may be overwritten (the same bits: addition commutes)."""
    if in_place and update.dtype == residual.dtype and update.shape == residual.shape:
        return update.add_(residual)
    return residual + update


class InferenceSetrLayer(SetrLayer):
    """`SetrLayer` with the residual sums written into the fresh attention / MLP outputs where no hook sees them."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        if not fast_path_applies(self):
            return super().forward(hidden_states, attention_mask, **kwargs)
        attention_output, _ = self.attention(self.layernorm_before(hidden_states), attention_mask, **kwargs)
        in_place = overwritable(self.attention, self.attention.o_proj)
        hidden_states = add_residual(hidden_states, attention_output, in_place)
        mlp_output = self.mlp(self.layernorm_after(hidden_states))
        return add_residual(hidden_states, mlp_output, overwritable(self.mlp, self.mlp.fc2))


class InferenceSetrUpHead(SetrUpHead):
    """The Naive / PUP head on channels-last maps on CPU (contiguous NCHW logits all the same)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.device.type != "cpu" or not fast_path_applies(self):
            return super().forward(features)
        return self.decode(channel_layernorm_nhwc(self.layernorm, features))


# The swaps, by exact type: a subclass or a replacement (quantised layers, adapters) is someone else's computation.
INFERENCE_VARIANTS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: InferenceLinear,
    SetrAttention: InferenceSetrAttention,
    SetrMLP: InferenceSetrMLP,
    SetrLayer: InferenceSetrLayer,
    SetrUpHead: InferenceSetrUpHead,
}


def inference_variant(module: nn.Module) -> nn.Module | None:
    """`module` as its inference variant (sharing its parameters, buffers, submodules and hooks), the module itself
    re-prepared when it is one already, or None when there is none (or its `forward` is patched, as accelerate's
    offloading does)."""
    if type(module) in INFERENCE_VARIANTS.values():
        variant = module
    elif type(module) in INFERENCE_VARIANTS and "forward" not in module.__dict__:
        variant = INFERENCE_VARIANTS[type(module)].__new__(INFERENCE_VARIANTS[type(module)])
        variant.__dict__.update(module.__dict__)
    else:
        return None
    prepare = getattr(variant, "prepare", None)
    if prepare is not None:
        prepare()
    return variant


def optimize_for_inference(model: nn.Module) -> nn.Module:
    """Put `model` in eval mode and swap, in place, the modules that have a CPU inference variant (see the module
    docstring); returns `model`. Call it again after changing the parameters to rebuild the cast weights."""
    model.eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            variant = inference_variant(child)
            if variant is not None and variant is not child:
                setattr(parent, name, variant)
    return model
