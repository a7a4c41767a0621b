import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForSemanticSegmentation

from transformers_setr import SetrConfig, SetrForSemanticSegmentation, SetrModel

from conftest import DECODERS, randomise_batch_norm, tiny_config


def build(decoder_type: str, **overrides) -> SetrForSemanticSegmentation:
    model = SetrForSemanticSegmentation(tiny_config(decoder_type, **overrides)).eval()
    randomise_batch_norm(model)
    return model


# ---------------------------------------------------------------- config


def test_default_config_is_the_released_ade20k_pup_model():
    config = SetrConfig()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (1024, 24, 16)
    assert (config.intermediate_size, config.layer_norm_eps, config.hidden_act) == (4096, 1e-6, "gelu")
    assert config.qkv_bias and config.patch_embeddings_bias and config.use_cls_token
    assert (config.image_size, config.patch_size, config.num_labels) == (512, 16, 150)
    assert config.decoder_type == "pup" and config.out_indices == [9, 14, 19, 23]
    assert (config.decoder_channels, config.decoder_num_convs, config.decoder_kernel_size) == (256, 4, 3)
    assert config.auxiliary_in_indices == [0, 1, 2] and config.auxiliary_loss_weight == 0.4
    assert len(config.label2id) == 150 and config.label2id[config.id2label[7]] == 7


def test_decoder_defaults_follow_the_released_configs():
    naive, mla = SetrConfig(decoder_type="naive"), SetrConfig(decoder_type="mla")
    assert (naive.decoder_num_convs, naive.decoder_kernel_size, naive.decoder_up_scale) == (1, 1, 4)
    assert (mla.out_indices, mla.use_cls_token, mla.decoder_channels) == ([5, 11, 17, 23], False, 512)
    assert (mla.auxiliary_in_indices, mla.auxiliary_num_convs) == ([0, 1, 2, 3], 0)


def test_label_maps_are_always_both_set():
    only_id2label = SetrConfig(id2label={0: "sky", 1: "road"})
    assert only_id2label.label2id == {"sky": 0, "road": 1} and only_id2label.num_labels == 2
    only_label2id = SetrConfig(label2id={"sky": 0, "road": 1})
    assert only_label2id.id2label == {0: "sky", 1: "road"}
    counted = SetrConfig(num_labels=19)
    assert len(counted.id2label) == len(counted.label2id) == 19


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(hidden_size=30, num_attention_heads=4), "divisible by num_attention_heads"),
        (dict(out_indices=[1, 24]), "out_indices"),
        (dict(out_indices=[3, 1, 2, 0]), "strictly increasing"),
        (dict(decoder_type="mla", decoder_channels=100), "decoder_channels must be 512"),
        (dict(decoder_kernel_size=5), "decoder_kernel_size must be 1 or 3"),
        (dict(image_size=500), "multiples of patch_size"),
        (dict(auxiliary_in_indices=[0, 7]), "auxiliary_in_indices"),
        (dict(decoder_in_index=4), "decoder_in_index"),
        (dict(decoder_type="pup", auxiliary_num_convs=0), "auxiliary_num_convs must be >= 1"),
        (dict(id2label={0: "a", 2: "b"}), "keys must be 0..1"),
        (dict(num_labels=2, palette=[[0, 0, 0]]), "palette must hold one"),
        (dict(slide_stride=0), r"crop size \(512, 512\) and stride \(0, 0\) must be positive"),
        (dict(slide_crop_size=-64), "must be positive"),
        (dict(slide_crop_size=64, slide_stride=[32, 65]), r"stride \(32, 65\) is larger than the crop size"),
        (dict(slide_crop_size=[64, 64, 64]), "crop size must be an int or a pair of ints"),
    ],
)
def test_invalid_configs_raise_a_clear_error(kwargs, message):
    with pytest.raises(Exception, match=message):
        SetrConfig(**kwargs)


def test_wrong_types_are_rejected_by_the_strict_dataclass():
    with pytest.raises(Exception, match="decoder_type"):
        SetrConfig(decoder_type="upernet")
    with pytest.raises(Exception, match="hidden_size"):
        SetrConfig(hidden_size="1024")


def test_config_round_trip(tmp_path):
    config = tiny_config("mla", id2label={i: f"class {i}" for i in range(5)})
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(reloaded, SetrConfig)
    saved, loaded = config.to_dict(), reloaded.to_dict()
    saved.pop("_name_or_path"), loaded.pop("_name_or_path")
    assert loaded == saved
    assert reloaded.id2label[3] == "class 3" and reloaded.label2id["class 3"] == 3


# ---------------------------------------------------------------- model


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_save_load_round_trip_gives_identical_logits(decoder_type, tmp_path):
    model = build(decoder_type)
    pixel_values = torch.randn(2, 3, 50, 77)
    with torch.no_grad():
        expected = model(pixel_values).logits
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, SetrForSemanticSegmentation)
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values).logits, expected)
    # The encoder alone loads from the same folder.
    encoder = AutoModel.from_pretrained(tmp_path)
    assert isinstance(encoder, SetrModel)
    torch.testing.assert_close(encoder.embeddings.cls_token, model.setr.embeddings.cls_token, rtol=0, atol=0)


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_sdpa_and_eager_attention_agree(decoder_type):
    model = build(decoder_type)
    assert model.config._attn_implementation == "sdpa"
    pixel_values = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        sdpa = model(pixel_values).logits
        model.set_attn_implementation("eager")
        eager = model(pixel_values).logits
    assert (sdpa - eager).abs().max().item() < 1e-5


def test_attention_is_not_causal():
    # transformers' SDPA path is causal unless the module says otherwise; the first token must see the last one.
    model = build("pup")
    pixel_values = torch.randn(1, 3, 64, 64)
    changed = pixel_values.clone()
    changed[..., -16:, -16:] += 1.0  # only the last patch
    with torch.no_grad():
        first = model.setr(pixel_values).last_hidden_state[:, 0]
        second = model.setr(changed).last_hidden_state[:, 0]
    assert (first - second).abs().max() > 1e-4


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_hidden_states_and_attentions(decoder_type):
    model = build(decoder_type)
    model.set_attn_implementation("eager")
    config = model.config
    pixel_values = torch.randn(2, 3, 50, 77)  # padded grid 4 x 5
    tokens = 4 * 5 + (1 if config.use_cls_token else 0)
    with torch.no_grad():
        out = model(pixel_values, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert all(h.shape == (2, tokens, config.hidden_size) for h in out.hidden_states)
    assert len(out.attentions) == config.num_hidden_layers
    assert all(a.shape == (2, config.num_attention_heads, tokens, tokens) for a in out.attentions)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, config.num_attention_heads, tokens))
    with torch.no_grad():
        plain = model(pixel_values)
    assert plain.hidden_states is None and plain.auxiliary_logits is None and plain.loss is None
    torch.testing.assert_close(plain.logits, out.logits, rtol=0, atol=0)
    encoder_out = model.setr(pixel_values, output_hidden_states=True)
    torch.testing.assert_close(encoder_out.hidden_states[-1], encoder_out.last_hidden_state)


def test_mla_drops_the_cls_token_but_keeps_its_position_slot():
    model = build("mla")
    embeddings = model.setr.embeddings
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        tokens, grid = embeddings(pixel_values)
        patches, _ = embeddings.patch_embeddings(pixel_values)
    assert grid == (4, 4) and tokens.shape[1] == 16
    torch.testing.assert_close(tokens, patches + embeddings.position_embeddings[:, 1:])


def test_position_table_resize_rule():
    model = build("pup")
    embeddings = model.setr.embeddings
    table = embeddings.position_embeddings
    # Same token count as the 4x4 training grid: added as is, even though the grid is 2x8.
    assert embeddings.position_embeddings_for((2, 8)) is table
    # Different count: bilinear, align_corners=False, cls slot untouched, computed independently here.
    resized = embeddings.position_embeddings_for((4, 5))
    grid = table[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(4, 5), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(resized[:, 1:], expected)
    torch.testing.assert_close(resized[:, :1], table[:, :1])


@pytest.mark.parametrize("decoder_type", DECODERS)
@pytest.mark.parametrize(("height", "width"), [(50, 77), (37, 16), (96, 130), (64, 64)])
def test_any_input_size(decoder_type, height, width):
    """Sides that are not multiples of 16, smaller and larger than the 64x64 training size."""
    model = build(decoder_type)
    grid_h, grid_w = math.ceil(height / 16), math.ceil(width / 16)
    factor = 16 if decoder_type == "pup" else 4
    pixel_values = torch.randn(1, 3, height, width)
    with torch.no_grad():
        logits = model(pixel_values).logits
    assert logits.shape == (1, 5, grid_h * factor, grid_w * factor)
    # Corner padding: zeros appended at the bottom/right in normalised space change nothing.
    padded = F.pad(pixel_values, (0, grid_w * 16 - width, 0, grid_h * 16 - height))
    with torch.no_grad():
        torch.testing.assert_close(model(padded).logits, logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_gradient_checkpointing_gives_the_same_gradients(decoder_type):
    model = build(decoder_type).train()
    pixel_values = torch.randn(2, 3, 48, 64)
    labels = torch.randint(0, 5, (2, 48, 64))

    def gradients():
        model.zero_grad()
        model(pixel_values, labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    # BatchNorm in train mode updates running stats on every forward; freeze them for a fair comparison.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    plain = gradients()
    model.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.setr.layers)
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and len(plain) > 20
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def _reference_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """mmseg's reduction written out: per-pixel -log p(label) on valid pixels, summed, divided by ALL pixels."""
    logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    log_probs = logits.log_softmax(dim=1)
    valid = labels != ignore_index
    picked = log_probs.gather(1, torch.where(valid, labels, 0).unsqueeze(1)).squeeze(1)
    return -(picked * valid).sum() / labels.numel()


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_loss_with_auxiliary_heads_and_ignored_pixels(decoder_type):
    model = build(decoder_type)
    pixel_values = torch.randn(2, 3, 50, 77)
    labels = torch.randint(0, 5, (2, 50, 77))
    labels[:, :10] = 255
    with torch.no_grad():
        out = model(pixel_values, labels=labels)
    assert len(out.auxiliary_logits) == len(model.config.auxiliary_in_indices)
    expected = _reference_cross_entropy(out.logits, labels, 255)
    expected = expected + sum(0.4 * _reference_cross_entropy(aux, labels, 255) for aux in out.auxiliary_logits)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    # Ignored pixels add nothing to the numerator but count in the denominator (mmseg's avg_non_ignore=False).
    all_ignored = torch.full_like(labels, 255)
    with torch.no_grad():
        assert model(pixel_values, labels=all_ignored).loss.item() == 0.0
    # Without auxiliary heads the loss is the decode head's alone.
    no_aux = build(decoder_type, use_auxiliary_head=False)
    no_aux.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(
            no_aux(pixel_values, labels=labels).loss, _reference_cross_entropy(out.logits, labels, 255)
        )


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_loss_gradients_equal_the_nchw_reference(decoder_type):
    """The loss resizes in channels-last memory and reads those classes as the last axis (issue 25): its gradients
    are the written-out NCHW computation's, to float32 rounding."""
    model = build(decoder_type).eval()  # BatchNorm on its running statistics: one graph serves both losses
    labels = torch.randint(0, 5, (2, 50, 77))
    labels[:, :10] = 255
    out = model(torch.randn(2, 3, 50, 77), labels=labels)
    reference = _reference_cross_entropy(out.logits, labels, 255)
    reference = reference + sum(0.4 * _reference_cross_entropy(aux, labels, 255) for aux in out.auxiliary_logits)
    parameters = [p for p in model.parameters() if p.requires_grad]
    ours = torch.autograd.grad(out.loss, parameters, retain_graph=True, allow_unused=True)
    written_out = torch.autograd.grad(reference, parameters, allow_unused=True)
    compared = 0
    for mine, theirs in zip(ours, written_out):
        assert (mine is None) == (theirs is None)
        if mine is not None:
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-8)
            compared += 1
    assert compared > 20


def test_tuple_outputs_and_config_return_dict_false():
    model = build("naive")
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        as_tuple = model(pixel_values, return_dict=False)
        model.config.return_dict = False
        from_config = model(pixel_values)
    assert isinstance(as_tuple, tuple) and isinstance(from_config, tuple)
    torch.testing.assert_close(as_tuple[0], from_config[0])


@pytest.mark.parametrize(
    ("pixel_values", "labels", "message"),
    [
        (torch.randn(1, 4, 32, 32), None, "4 channels but the model expects 3"),
        (torch.randn(1, 1, 32, 32), None, "1 channels but the model expects 3"),
        (torch.randn(3, 32, 32), None, "must have shape"),
        (torch.randn(1, 3, 0, 32), None, "empty"),
        (torch.randn(2, 3, 32, 32), torch.zeros(2, 16, 16, dtype=torch.long), "labels must have shape"),
        (torch.randn(2, 3, 32, 32), torch.zeros(1, 32, 32, dtype=torch.long), "labels must have shape"),
        (torch.randn(1, 3, 32, 32), torch.full((1, 32, 32), 7), r"outside \[0, 5\)"),
        (torch.randn(1, 3, 32, 32), torch.zeros(1, 32, 32), "integer class ids"),
    ],
)
def test_bad_inputs_give_clear_errors(pixel_values, labels, message):
    model = build("pup")
    with pytest.raises(ValueError, match=message):
        model(pixel_values, labels=labels)


def test_auxiliary_heads_do_not_run_at_inference():
    model = build("pup")
    calls = []
    for head in model.auxiliary_heads:
        head.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert calls == []
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32), labels=torch.zeros(1, 32, 32, dtype=torch.long))
    assert len(calls) == 3


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_integer_pixel_values_are_refused_naming_the_processor(dtype):
    # Integer images are un-normalised 0-255 values: cast to float they give garbage logits.
    images = torch.randint(0, 255, (1, 3, 32, 32)).to(dtype)
    message = f"pixel_values has dtype {dtype}; SETR expects normalised float images: use SetrImageProcessor"
    for model in (build("pup"), build("pup", inference_mode="slide"), SetrModel(tiny_config("pup"))):
        with pytest.raises(ValueError, match=message):
            model(images)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_pixel_values_are_refused(value):
    images = torch.randn(1, 3, 40, 40)
    images[0, 1, 17, 23] = value  # one pixel would poison the logits around it
    head, slide = build("naive"), build("naive", inference_mode="slide", slide_crop_size=32, slide_stride=16)
    calls = [
        lambda: head(images),
        lambda: slide(images),
        lambda: head.slide_inference(images, crop_size=32, stride=16),
        lambda: SetrModel(tiny_config("naive"))(images),
        lambda: head(images, labels=torch.zeros(1, 40, 40, dtype=torch.long)),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="pixel_values contains NaN or infinite values"):
            call()


def test_the_finiteness_check_runs_once_per_call(monkeypatch):
    # Cheap on the hot path: one pass over the input per call, not one per slide window.
    model = build("pup", inference_mode="slide", slide_crop_size=32, slide_stride=16)
    calls = []
    isfinite = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda x: calls.append(tuple(x.shape)) or isfinite(x))
    images = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        model(images)  # 3 x 5 windows
        model(images, inference_mode="whole")
    assert calls == [(2, 3, 64, 80), (2, 3, 64, 80)]
