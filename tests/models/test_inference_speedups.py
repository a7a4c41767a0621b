"""The inference fast paths (issue 5) give the plain computation's numbers and never serve stale parameters.

`optimize_for_inference(model)` (issue 22) swaps modules for inference variants that, without autograd, keep the
cast linear weights of autocast (q/k/v stacked for one matmul). With autograd on they run the plain module-by-module
path, so comparing the two checks the fast path. The decoders classify before the last up-sampling (and in float32
under autocast): an mmsegmentation-order head written out here checks that.
"""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from transformers_setr import SetrForSemanticSegmentation
from transformers_setr.models.setr.fast_inference_setr import (
    FrozenWeights,
    InferenceLinear,
    onednn_matmul_usable,
    optimize_for_inference,
)
from transformers_setr.models.setr.modeling_setr import channel_layernorm, upsample_bilinear

from conftest import DECODERS, randomise_batch_norm, tiny_config

FP32_TOLERANCE = 1e-5


def build(decoder_type: str, **overrides) -> SetrForSemanticSegmentation:
    model = SetrForSemanticSegmentation(tiny_config(decoder_type, **overrides)).eval()
    randomise_batch_norm(model)
    # Larger-than-init weights so that logits are O(1) and a stale parameter shows clearly.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "position_embeddings" in name or name.endswith("cls_token"):
                parameter.normal_(0, 0.5)
            elif parameter.dim() > 1:
                parameter.normal_(0, (2 / parameter[0].numel()) ** 0.5)
    return optimize_for_inference(model)


def plain_logits(model: SetrForSemanticSegmentation, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
    """Logits through the plain path: autograd on disables every cache and the fused projection."""
    with torch.enable_grad():
        return model(pixel_values, **kwargs).logits.detach()


def cache_sizes(model: torch.nn.Module) -> int:
    return sum(len(m.frozen.entries) for m in model.modules() if isinstance(getattr(m, "frozen", None), FrozenWeights))


@pytest.mark.parametrize("decoder_type", DECODERS)
@pytest.mark.parametrize("size", [(64, 64), (50, 77)])  # the training grid, and a padded grid with a resized table
def test_fast_inference_path_matches_the_plain_path(decoder_type, size):
    model = build(decoder_type)
    pixel_values = torch.randn(2, 3, *size)
    expected = plain_logits(model, pixel_values, inference_mode="whole")
    with torch.no_grad():
        fast = model(pixel_values, inference_mode="whole").logits
    # Nothing is cached in float32 (the projections run on the parameters as they are; tables are resized per call).
    assert cache_sizes(model) == 0
    assert (fast - expected).abs().max().item() < FP32_TOLERANCE
    with torch.inference_mode():  # cached tensors built under no_grad are reused under inference_mode
        again = model(pixel_values, inference_mode="whole").logits
    assert (again - expected).abs().max().item() < FP32_TOLERANCE


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_slide_inference_fast_path_matches_and_returns_an_ordinary_tensor(decoder_type):
    model = build(decoder_type)
    pixel_values = torch.randn(2, 3, 64, 100)  # three 64x64 windows per image, batched 4 at a time
    expected = plain_logits(model, pixel_values, inference_mode="slide")
    with torch.no_grad():
        fast = model(pixel_values, inference_mode="slide").logits
    assert (fast - expected).abs().max().item() < FP32_TOLERANCE
    assert not fast.is_inference()
    fast /= 2  # in-place use outside inference_mode must work


def mmseg_order_up_head(head, features: torch.Tensor) -> torch.Tensor:
    """mmsegmentation's SETRUPHead order: every stage conv-BN-ReLU then up-sampling, classifier last."""
    features = channel_layernorm(head.layernorm, features)
    for stage in head.stages:
        features = stage.activation(stage.batch_norm(stage.conv(features)))
        features = upsample_bilinear(features, head.up_scale)
    return head.classifier(features)


def mmseg_order_mla_head(head, neck_outputs: list[torch.Tensor]) -> torch.Tensor:
    """mmsegmentation's SETRMLAHead order: each branch up-sampled, concatenated, then classified."""
    branches = [upsample_bilinear(branch(x), head.up_scale) for branch, x in zip(head.branches, neck_outputs)]
    return head.classifier(torch.cat(branches, dim=1))


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_classifier_before_upsampling_gives_mmsegmentation_logits(decoder_type):
    model = build(decoder_type, num_labels=7)
    head = model.decode_head
    with torch.no_grad():
        if decoder_type == "mla":
            inputs = [torch.randn(2, model.config.mla_neck_channels, 5, 6) for _ in range(4)]
            expected, actual = mmseg_order_mla_head(head, inputs), head(inputs)
        else:
            features = torch.randn(2, model.config.hidden_size, 5, 6)
            expected, actual = mmseg_order_up_head(head, features), head(features)
    assert actual.shape == expected.shape
    assert expected.abs().max() > 0.1
    assert (actual - expected).abs().max().item() < FP32_TOLERANCE


def sgd_step_on_everything(model: SetrForSemanticSegmentation, pixel_values: torch.Tensor) -> None:
    model.train()
    labels = torch.randint(0, model.config.num_labels, (pixel_values.shape[0], *pixel_values.shape[-2:]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(pixel_values, labels=labels).loss.backward()
    optimizer.step()
    model.eval()


@pytest.mark.parametrize("decoder_type", ["pup", "mla"])
def test_a_training_step_invalidates_the_caches(decoder_type):
    model = build(decoder_type)
    pixel_values = torch.randn(1, 3, 50, 77)  # 4x5 grid: the 4x4 table is resized (and cached)
    with torch.no_grad():
        before = model(pixel_values).logits
    table_before = model.setr.embeddings.position_embeddings.detach().clone()
    sgd_step_on_everything(model, torch.randn(1, 3, 64, 64))
    assert not torch.equal(model.setr.embeddings.position_embeddings, table_before)
    with torch.no_grad():
        after = model(pixel_values).logits
    expected = plain_logits(copy.deepcopy(model), pixel_values)
    assert (after - before).abs().max() > 1e-3
    assert (after - expected).abs().max().item() < FP32_TOLERANCE


def test_a_training_step_retires_the_cast_weights_until_optimized_again(caplog):
    model = build("pup")
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(pixel_values)  # builds the bf16 weights
    sgd_step_on_everything(model, pixel_values)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = plain_logits(model, pixel_values)
        with torch.no_grad():
            after_training = model(pixel_values).logits
        assert "changed after optimize_for_inference" in caplog.text
        optimize_for_inference(model)
        with torch.no_grad():
            optimized_again = model(pixel_values).logits
    assert torch.equal(after_training, expected)  # the plain computation, not the stale weights
    assert (optimized_again - expected).abs().max() < 0.05 * expected.abs().max()


def test_in_place_parameter_writes_in_eval_mode_invalidate_the_caches():
    """No `train()` in between: the parameters' version counters alone must expire the cached tensors."""
    model = build("pup")
    pixel_values = torch.randn(1, 3, 50, 77)
    embeddings = model.setr.embeddings
    with torch.no_grad():
        model(pixel_values)
        resized_before = embeddings.position_embeddings_for((4, 5)).clone()
        embeddings.position_embeddings.mul_(-1.0)
        assert torch.equal(embeddings.position_embeddings_for((4, 5)), -resized_before)
        assert (model(pixel_values).logits - plain_logits(model, pixel_values)).abs().max() < FP32_TOLERANCE

    old_weights = copy.deepcopy(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            model(pixel_values)  # caches the bf16 weights
            model.setr.layers[0].attention.v_proj.weight.add_(0.3)  # only v: the stacked q/k/v must be rebuilt
            model.setr.layers[1].mlp.fc1.bias.sub_(0.2)
            model.setr.layers[2].attention.o_proj.weight.mul_(2.0)
            cached = model(pixel_values).logits
        expected, stale = plain_logits(model, pixel_values), plain_logits(old_weights, pixel_values)
    # Same bf16 rounding as the plain path, far from what the stale weights would give.
    assert (cached - expected).abs().max() < 0.1 * (stale - expected).abs().max()


def test_load_state_dict_and_dtype_moves_refresh_the_caches():
    model, other = build("naive"), build("naive")
    with torch.no_grad():
        other.setr.embeddings.position_embeddings.normal_()
    pixel_values = torch.randn(1, 3, 50, 77)
    with torch.no_grad():
        model(pixel_values)
        model.load_state_dict(other.state_dict())
        loaded = model(pixel_values).logits
        assert torch.equal(loaded, other(pixel_values).logits)
    model.double()
    with torch.no_grad():
        as_double = model(pixel_values.double()).logits
    assert as_double.dtype == torch.float64
    assert (as_double - loaded).abs().max().item() < FP32_TOLERANCE


def test_hooked_or_replaced_projections_are_called_not_bypassed():
    model = build("pup")
    calls = []
    model.setr.layers[0].attention.q_proj.register_forward_hook(lambda module, args, output: calls.append("q"))
    model.setr.layers[1].mlp.fc1 = torch.nn.Sequential(model.setr.layers[1].mlp.fc1)  # e.g. an adapter wrapper
    model.setr.layers[1].mlp.fc1.register_forward_hook(lambda module, args, output: calls.append("fc1"))
    fc2 = model.setr.layers[2].mlp.fc2
    plain_forward = fc2.forward
    fc2.forward = lambda hidden_states: calls.append("fc2") or plain_forward(hidden_states)  # as accelerate patches
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(1, 3, 64, 64))
    assert calls == ["q", "fc1", "fc2", "q", "fc1", "fc2"]
    attention = model.setr.layers[1].attention
    attention.q_proj = torch.nn.Sequential(attention.q_proj)  # a wrapped q/k/v projection is never stacked
    optimize_for_inference(model)  # again, with the wrappers and the patched forward in place
    assert not model.setr.layers[1].attention.fusable and model.setr.layers[0].attention.fusable
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(1, 3, 64, 64))
    assert calls[6:] == ["q", "fc1", "fc2"]


def test_bf16_autocast_caches_cast_weights_and_matches_plain_autocast():
    model = build("pup")
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = plain_logits(model, pixel_values)
        with torch.no_grad():
            fast = model(pixel_values).logits
    attention = model.setr.layers[0].attention
    weight, bias = attention.fused_qkv_weights(torch.bfloat16, torch.device("cpu"), pack=False)
    assert weight.dtype == bias.dtype == torch.bfloat16 and weight.shape == (3 * 32, 32)
    assert torch.equal(weight[32:64], attention.k_proj.weight.to(torch.bfloat16))
    # Logits come from a float32 classifier; bf16 rounding differs only where the fused matmul sums in another order.
    assert fast.dtype == expected.dtype == torch.float32
    assert (fast - expected).abs().max().item() < 0.05 * expected.abs().max().item()
    assert (fast.argmax(1) == expected.argmax(1)).float().mean() > 0.97
    with torch.no_grad():
        fp32 = model(pixel_values).logits
    assert fp32.dtype == torch.float32 and (fp32 - plain_logits(model, pixel_values)).abs().max() < FP32_TOLERANCE


def test_model_built_under_inference_mode_still_runs():
    with torch.inference_mode():
        model = build("mla")  # optimized with inference-tensor parameters
        logits = model(torch.randn(1, 3, 50, 77)).logits
    assert logits.shape == (1, 5, 16, 20) and cache_sizes(model) == 0


def test_frozen_weights_are_built_once_and_never_for_changed_sources():
    source = torch.zeros(3)
    frozen = FrozenWeights("test", (source,))
    built = []
    for key in ("a", "b", "a", "b"):
        frozen.get(key, (source,), lambda key=key: built.append(key) or torch.ones(1))
    assert built == ["a", "b"] and len(frozen.entries) == 2
    with torch.no_grad():
        source.add_(1.0)
    assert frozen.get("c", (source,), lambda: built.append("c") or torch.ones(1)) is None
    assert frozen.get("a", (source,), lambda: torch.ones(1)) is None and built == ["a", "b"]
    assert frozen.get("a", (torch.zeros(3),), lambda: torch.ones(1)) is None  # another tensor entirely


def test_optimizing_changes_no_parameter_gradient_or_state_dict_key():
    plain = SetrForSemanticSegmentation(tiny_config("mla")).eval()
    randomise_batch_norm(plain)
    optimized = optimize_for_inference(copy.deepcopy(plain))
    assert list(optimized.state_dict()) == list(plain.state_dict())
    assert isinstance(optimized.setr.layers[0].mlp.fc1, InferenceLinear)
    pixel_values = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, plain.config.num_labels, (2, 64, 64))
    for model in (plain, optimized):
        model.train()
        torch.manual_seed(0)  # the same dropout masks
        model(pixel_values, labels=labels).loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), optimized.named_parameters()):
        assert torch.equal(a.grad, b.grad), name


def test_another_encoders_linears_are_swapped_and_its_other_modules_left_alone():
    encoder = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.GELU(), torch.nn.Linear(16, 4)
    )
    expected_plain = copy.deepcopy(encoder)
    optimize_for_inference(encoder)
    assert [type(m).__name__ for m in encoder] == ["InferenceLinear", "LayerNorm", "GELU", "InferenceLinear"]
    inputs = torch.randn(3, 5, 8)
    with torch.no_grad():
        assert (encoder(inputs) - expected_plain(inputs)).abs().max() < FP32_TOLERANCE


def test_save_pretrained_after_cached_inference(tmp_path):
    model = build("naive")
    pixel_values = torch.randn(1, 3, 50, 77)
    with torch.no_grad():
        expected = model(pixel_values).logits
    model.save_pretrained(tmp_path)
    assert set(model.state_dict()) == set(type(model).from_pretrained(tmp_path).state_dict())
    reloaded = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert (reloaded(pixel_values).logits - expected).abs().max().item() < FP32_TOLERANCE


def test_forward_on_the_meta_device_for_flop_counting():
    """benchmarks/ count FLOPs on the meta device: no autocast query may fail there."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = optimize_for_inference(SetrForSemanticSegmentation(tiny_config("pup")))
        pixel_values = torch.zeros(1, 3, 64, 64)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        logits = model(pixel_values).logits
    assert logits.device.type == "meta" and counter.get_total_flops() > 0


class OperatorLog(TorchDispatchMode):
    """The aten / mkldnn operators a forward dispatches, by name."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def dispatched(model, pixel_values) -> tuple[torch.Tensor, list[str]]:
    with OperatorLog() as log:
        logits = model(pixel_values).logits
    return logits, log.names


onednn = pytest.mark.skipif(
    not onednn_matmul_usable(torch.device("cpu"), torch.float32), reason="this torch build has no oneDNN matmul"
)


@onednn
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
@pytest.mark.parametrize("decoder_type", DECODERS)
def test_inference_projections_run_on_onednn_and_match_the_plain_path(decoder_type):
    model = build(decoder_type)
    pixel_values = torch.randn(2, 3, 64, 64)
    expected = plain_logits(model, pixel_values)
    projections = 6 * model.config.num_hidden_layers  # q, k, v, o, fc1, fc2
    with torch.no_grad():
        fast, names = dispatched(model, pixel_values)
        assert names.count("_linear_pointwise") == projections and "addmm" not in names
        with torch.backends.mkldnn.flags(enabled=False):  # the user's switch is obeyed
            switched_off, names_off = dispatched(model, pixel_values)
        assert "_linear_pointwise" not in names_off and names_off.count("addmm") == projections
    for logits in (fast, switched_off):
        assert (logits - expected).abs().max().item() < FP32_TOLERANCE


@onednn
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_bf16_inference_packs_the_cast_weights_once_and_obeys_the_onednn_switch():
    model = build("pup")
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = plain_logits(model, pixel_values)
        with torch.no_grad():
            fast, names = dispatched(model, pixel_values)
            again, _ = dispatched(model, pixel_values)
            with torch.backends.mkldnn.flags(enabled=False):
                switched_off, names_off = dispatched(model, pixel_values)
    layers = model.config.num_hidden_layers
    assert names.count("_linear_pointwise") == 4 * layers  # fused q/k/v, o, fc1, fc2
    assert torch.equal(again, fast)  # the second call reuses the packed weights
    cached = list(model.setr.layers[0].mlp.fc1.frozen.entries.values())
    assert any(weight.is_mkldnn for weight, _ in cached)  # packed for oneDNN
    assert any(not weight.is_mkldnn for weight, _ in cached)  # and plain ones while oneDNN was switched off
    assert "_linear_pointwise" not in names_off
    for logits in (fast, switched_off):
        assert (logits - expected).abs().max().item() < 0.05 * expected.abs().max().item()
        assert (logits.argmax(1) == expected.argmax(1)).float().mean() > 0.97


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_in_place_sums_leave_every_captured_hidden_state_intact(decoder_type):
    model = build(decoder_type)
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.enable_grad():
        expected = model.setr(pixel_values, output_hidden_states=True).hidden_states
    with torch.no_grad():
        captured = model.setr(pixel_values, output_hidden_states=True).hidden_states
    assert len(captured) == len(expected) == model.config.num_hidden_layers + 1
    for fast, plain in zip(captured, expected):
        assert (fast - plain.detach()).abs().max().item() < FP32_TOLERANCE


def test_a_users_hook_keeps_the_attention_and_mlp_outputs_it_was_given():
    model = build("naive")
    seen = []

    def keep(module, args, output):
        kept = output[0] if isinstance(output, tuple) else output
        seen.append((kept, kept.clone()))

    model.setr.layers[1].attention.register_forward_hook(keep)
    model.setr.layers[2].mlp.register_forward_hook(keep)
    with torch.no_grad():
        with_hooks = model(torch.randn(1, 3, 64, 64)).logits
    assert len(seen) == 2 and all(torch.equal(kept, copy) for kept, copy in seen)
    assert torch.isfinite(with_hooks).all()


@pytest.mark.parametrize("decoder_type", ["naive", "pup"])
def test_up_head_runs_channels_last_in_cpu_inference_and_returns_contiguous_logits(decoder_type):
    model = build(decoder_type)
    layouts = []
    model.decode_head.stages[0].conv.register_forward_pre_hook(
        lambda module, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    pixel_values = torch.randn(2, 3, 64, 64)
    expected = plain_logits(model, pixel_values)
    with torch.no_grad():
        fast = model(pixel_values).logits
    assert layouts == [False, True]  # NCHW with autograd (training), channels-last without
    assert fast.is_contiguous() and fast.view(2, 5, -1).shape[-1] == fast.shape[-1] * fast.shape[-2]
    assert (fast - expected).abs().max().item() < FP32_TOLERANCE
