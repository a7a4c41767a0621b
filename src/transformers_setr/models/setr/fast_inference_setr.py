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

What is cached (only without autograd, outside `torch.compile` / tracing):
- under autocast, the weights autocast would cast on every call (`cached_cast_linear`), and the q/k/v weights stacked
  for one fused matmul (`fused_qkv_states`, measured a few percent faster in bf16 on CPU; in float32 the three
  separate matmuls measured faster, so float32 takes the plain path);
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


def cached_cast_linear(
    linear: nn.Linear, hidden_states: torch.Tensor, cache: InferenceTensorCache, key: str
) -> torch.Tensor:
    """`linear(hidden_states)`, with the weights autocast would cast on every call cast once and cached."""
    if not is_plain_linear(linear) or not inference_caching_allowed():
        return linear(hidden_states)
    dtype = autocast_dtype(hidden_states, linear.weight)
    if dtype is None:
        return linear(hidden_states)
    sources = (linear.weight,) if linear.bias is None else (linear.weight, linear.bias)
    weight, bias = cache.get(
        (key, dtype),
        sources,
        lambda: (linear.weight.to(dtype), None if linear.bias is None else linear.bias.to(dtype)),
    )
    return F.linear(hidden_states, weight, bias)


def fused_qkv_parameters(attention: nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`attention`'s q/k/v weights (and biases) stacked for one matmul and cast to `dtype`; cached."""
    projections = (attention.q_proj, attention.k_proj, attention.v_proj)
    weights = [projection.weight for projection in projections]
    biases = [projection.bias for projection in projections if projection.bias is not None]

    def build() -> tuple[torch.Tensor, torch.Tensor | None]:
        return torch.cat(weights).to(dtype), torch.cat(biases).to(dtype) if biases else None

    return attention.inference_cache.get(("qkv", dtype), (*weights, *biases), build)


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
    weight, bias = fused_qkv_parameters(attention, dtype)
    qkv = F.linear(hidden_states, weight, bias).view(*hidden_states.shape[:-1], 3, -1, attention.head_dim)
    query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return query, key, value


def clear_inference_caches(model: nn.Module) -> None:
    """Drop every cached tensor of `model`'s modules; they are rebuilt on the next forward without autograd."""
    for module in model.modules():
        cache = getattr(module, "inference_cache", None)
        if isinstance(cache, InferenceTensorCache):
            cache.clear()
