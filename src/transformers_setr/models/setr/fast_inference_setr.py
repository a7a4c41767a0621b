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
"""SETR's inference fast path: tensors derived from parameters, built once and reused while nothing can change them.

What runs differently (only without autograd, outside `torch.compile` / tracing, for unhooked `nn.Linear`s):
- on CPU, float32 and bfloat16 projections go straight to oneDNN's matmul (`dense`): on an AVX-512 EPYC it ran
  ViT-L's projections at ~210 GFLOP/s in float32 where `F.linear` (MKL's sgemm) ran at ~185, and ~5% faster in
  bfloat16 (where `F.linear` already calls oneDNN, with the same result). float32 logits move by ~1e-6;
- the MLP's exact GELU and the two residual adds overwrite the fresh projection outputs in place
  (`output_is_overwritable`): no new 4-17 MB buffer per op, whose first touch costs page faults (measured 5% of a
  ViT-L forward in float32); the numbers are the same bits.
- the Naive / PUP heads run on channels-last maps (`decoder_in_channels_last`).

What is cached (under the same conditions):
- under autocast, the weights autocast would cast on every call (`inference_linear`), in oneDNN's packed layout
  where oneDNN serves (`cast_matmul_weights`), and the q/k/v weights stacked for one fused matmul
  (`fused_qkv_states`, measured a few percent faster in bf16 on CPU; float32 keeps the three projections' own
  weights, so that it holds no second copy of them);
- the position table resized to a patch grid other than the training one (`cached_for_inference`).

When a cached tensor is dropped (the invalidation rules, all here):
- an entry is used only while every source parameter is the same storage at the same version, device, dtype and
  shape (`InferenceTensorCache`): optimizer steps, `load_state_dict` and `copy_` under `no_grad` bump the version;
- `SetrPreTrainedModel` clears every cache when the model is moved or cast (`to`, `half`, ...) and when it enters
  training mode, so caches hold memory only during inference (`clear_inference_caches`);
- writes through `.data` bypass the version counter: call `model.clear_inference_caches()` after them;
- a replaced or hooked linear layer (quantised layers, adapters, DeepSpeed / accelerate hooks) is never bypassed
  (`is_plain_linear`).

This file is shipped next to the weights with `modeling_setr.py`: it imports only torch.
"""

import functools
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def inference_caching_allowed() -> bool:
    """Derived tensors may be cached only when autograd records nothing (they would cut parameters out of the
    graph) and outside `torch.compile` / tracing (which should see the plain computation)."""
    return not (torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing())


def active_autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype in effect for `device_type`, or None (also for device types without autocast: meta)."""
    if not torch.amp.is_autocast_available(device_type) or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def autocast_dtype(tensor: torch.Tensor, parameter: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast would cast `parameter` to for a matmul on `tensor`'s device, or None when it would not."""
    dtype = active_autocast_dtype(tensor.device.type)
    return dtype if dtype is not None and dtype != parameter.dtype and parameter.is_floating_point() else None


def is_plain_linear(*modules: nn.Module) -> bool:
    """Only an unhooked `nn.Linear` may be bypassed with its (fused or cast) weights: a subclass or a replacement
    (quantised layers, adapters), a forward hook (DeepSpeed ZeRO-3 gathering) or a patched `forward` (accelerate's
    offloading) must see its own call."""
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return False
    return all(
        type(m) is nn.Linear and not (m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__)
        for m in modules
    )


class InferenceTensorCache:
    """Tensors derived from parameters (a fused or cast weight, a resized position table), kept for inference.

    An entry is reused only while each of its source tensors is the same storage at the same version, device, dtype
    and shape. `_version` counts every in-place write that autograd sees (optimizer steps, `load_state_dict`,
    `copy_` under `no_grad`); the entry holds a detached alias of each source so that a freed storage's address
    cannot come back under new values and match by accident. Writes through `.data` bypass the version counter:
    call `SetrPreTrainedModel.clear_inference_caches()` after them. The model clears its caches when it is moved or
    cast (`to`, `half`, ...) and when it enters training mode, so they hold memory only during inference.
    """

    def __init__(self, max_entries: int = 4):
        self.max_entries = max_entries
        self._entries: OrderedDict = OrderedDict()

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key, sources: Sequence[torch.Tensor], build: Callable[[], object]):
        if any(source.is_inference() for source in sources):
            return build()  # inference tensors have no version counter: nothing to key on
        state = tuple((s.data_ptr(), s._version, s.device, s.dtype, s.shape) for s in sources)
        entry = self._entries.get(key)
        if entry is not None and entry[0] == state:
            self._entries.move_to_end(key)
            return entry[2]
        value = build()
        self._entries[key] = (state, tuple(s.detach() for s in sources), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value


def cached_for_inference(
    cache: InferenceTensorCache, key, sources: Sequence[torch.Tensor], build: Callable[[], object]
):
    """`build()`, cached in `cache` under `key` when caching is allowed (see the module docstring)."""
    if not inference_caching_allowed():
        return build()
    return cache.get(key, sources, build)


# oneDNN's matmul (the op inductor's CPU fusions call); absent from builds without oneDNN.
ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


@functools.cache
def onednn_matmul_built() -> bool:
    """This torch build has oneDNN's matmul and its weight packing (asked once: it cannot change in a process)."""
    ops = ("_linear_pointwise", "_reorder_linear_weight")
    return torch.backends.mkldnn.is_available() and all(hasattr(torch.ops.mkldnn, op) for op in ops)


def onednn_matmul_usable(device: torch.device, dtype: torch.dtype) -> bool:
    """oneDNN's matmul serves `dtype` on `device`: CPU, float32 or bfloat16, oneDNN built and not disabled."""
    return device.type == "cpu" and dtype in ONEDNN_DTYPES and torch.backends.mkldnn.enabled and onednn_matmul_built()


def dense(hidden_states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear` without autograd (autocast off, operands of one dtype), through oneDNN's matmul where it serves
    (see the module docstring); `weight` may be oneDNN-packed (`cast_matmul_weights`)."""
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


def cast_matmul_weights(
    weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, pack: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`weight` and `bias` cast to `dtype` for `dense`, the weight (with `pack`) in oneDNN's packed layout where oneDNN
    serves:
    packed bfloat16 matmuls measured ~5% faster than unpacked on an AVX-512 EPYC, for the memory of the cast copy
    that autocast inference keeps anyway."""
    weight, bias = weight.to(dtype), None if bias is None else bias.to(dtype)
    if pack and onednn_matmul_usable(weight.device, dtype):
        weight = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)
    return weight, bias


def cast_weights_key(key: object, dtype: torch.dtype, device: torch.device) -> tuple:
    """The cache key of cast weights: packed ones only serve while oneDNN does (`torch.backends.mkldnn.flags`)."""
    return (key, dtype, onednn_matmul_usable(device, dtype))


def inference_linear(
    linear: nn.Linear, hidden_states: torch.Tensor, cache: InferenceTensorCache, key: str
) -> torch.Tensor:
    """`linear(hidden_states)`; without autograd, through `dense`, with the weights autocast would cast on every
    call cast (and packed) once and cached, and the input cast as autocast would."""
    if not is_plain_linear(linear) or not inference_caching_allowed():
        return linear(hidden_states)
    dtype = autocast_dtype(hidden_states, linear.weight)
    if dtype is None:
        if hidden_states.dtype != linear.weight.dtype or active_autocast_dtype(hidden_states.device.type):
            return linear(hidden_states)  # let the layer cast, promote or raise as it would
        return dense(hidden_states, linear.weight, linear.bias)
    sources = (linear.weight,) if linear.bias is None else (linear.weight, linear.bias)
    weight, bias = cache.get(
        cast_weights_key(key, dtype, hidden_states.device),
        sources,
        lambda: cast_matmul_weights(linear.weight, linear.bias, dtype),
    )
    with torch.autocast(hidden_states.device.type, enabled=False):
        return dense(hidden_states.to(dtype), weight, bias)


def only_output_capturing_hooks(module: nn.Module) -> bool:
    """No forward hook on `module` but transformers' own output capturing (which keeps the attention weights and the
    layer outputs, never the tensors overwritten here): nothing else can hold the module's output."""
    hooks = (*module._forward_hooks.values(), *module._forward_pre_hooks.values())
    return all(getattr(hook, "__name__", None) == "output_capturing_hook" for hook in hooks)


def output_is_overwritable(linear: nn.Module, *modules: nn.Module) -> bool:
    """Whether `linear`'s output (returned through `modules`) is a fresh tensor that no one else holds and that
    autograd does not record, so that the next elementwise op may overwrite it in place."""
    return inference_caching_allowed() and is_plain_linear(linear) and all(map(only_output_capturing_hooks, modules))


def add_residual(residual: torch.Tensor, update: torch.Tensor, overwritable: bool) -> torch.Tensor:
    """`residual + update`, written into `update` when it may be overwritten (the same bits: addition commutes)."""
    if overwritable and update.dtype == residual.dtype and update.shape == residual.shape:
        return update.add_(residual)
    return residual + update


def decoder_in_channels_last(features: torch.Tensor) -> bool:
    """Whether the Naive / PUP head runs on channels-last maps: CPU inference (under the module's conditions), where
    oneDNN's convolutions then skip a layout reorder per call (ViT-L PUP head at 512x512: -8% in float32, -17% under
    bf16 autocast, including making the logits contiguous again; MLA's neck and head measured slower, so they keep
    NCHW). Training keeps the plain NCHW layout."""
    return features.device.type == "cpu" and inference_caching_allowed()


def fused_qkv_parameters(
    attention: nn.Module, dtype: torch.dtype, for_matmul: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`attention`'s q/k/v weights (and biases) stacked for one matmul and cast to `dtype`; cached. `for_matmul`:
    in the layout `dense` takes fastest (`cast_matmul_weights`: oneDNN-packed where oneDNN serves)."""
    projections = (attention.q_proj, attention.k_proj, attention.v_proj)
    weights = [projection.weight for projection in projections]
    biases = [projection.bias for projection in projections if projection.bias is not None]

    def build() -> tuple[torch.Tensor, torch.Tensor | None]:
        return cast_matmul_weights(torch.cat(weights), torch.cat(biases) if biases else None, dtype, for_matmul)

    key = cast_weights_key("qkv", dtype, weights[0].device) if for_matmul else ("qkv", dtype)
    return attention.inference_cache.get(key, (*weights, *biases), build)


def fused_qkv_states(
    attention: nn.Module, hidden_states: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(query, key, value), each (batch, heads, tokens, head_dim), from one matmul with cached cast weights, when
    running under autocast without autograd; None otherwise (the attention then projects as usual)."""
    projections = (attention.q_proj, attention.k_proj, attention.v_proj)
    if not (inference_caching_allowed() and is_plain_linear(*projections)):
        return None
    dtype = autocast_dtype(hidden_states, attention.q_proj.weight)
    if dtype is None:
        return None
    weight, bias = fused_qkv_parameters(attention, dtype, for_matmul=True)
    with torch.autocast(hidden_states.device.type, enabled=False):
        qkv = dense(hidden_states.to(dtype), weight, bias)
    qkv = qkv.view(*hidden_states.shape[:-1], 3, -1, attention.head_dim)
    query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return query, key, value


def clear_inference_caches(model: nn.Module) -> None:
    """Drop every cached tensor of `model`'s modules; they are rebuilt on the next forward without autograd."""
    for module in model.modules():
        cache = getattr(module, "inference_cache", None)
        if isinstance(cache, InferenceTensorCache):
            cache.clear()
