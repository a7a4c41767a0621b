"""SETR heads on other encoders through transformers' backbone API (`SetrConfig(backbone_config=...)`)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModel, Dinov2Config

from transformers_setr import SetrConfig, SetrForSemanticSegmentation

from helpers.backbone_families import (
    ALL_FAMILIES,
    HEADS,
    SMALL,
    TIMM_SMALL,
    TRANSFORMERS_FAMILIES,
    expected_maps,
    family_config,
    randomised,
    setr_config,
)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_heads_read_the_backbones_own_hidden_states(family):
    torch.manual_seed(1)
    model = randomised(SetrForSemanticSegmentation(setr_config(family_config(family))))
    pixel_values = torch.randn(1, 3, 100, 150)
    with torch.no_grad():
        maps, _ = model.backbone_feature_maps(pixel_values)
        expected = expected_maps(model, pixel_values)
        logits = model(pixel_values).logits
        by_hand = model.decode_head(expected[model.config.decoder_in_index])
    assert len(maps) == 4 and all(torch.equal(a, b) for a, b in zip(maps, expected))
    assert torch.equal(logits, by_hand)


@pytest.mark.parametrize("decoder_type", ["naive", "pup", "mla"])
def test_every_decoder_and_auxiliary_head_on_a_patch_14_backbone(decoder_type):
    torch.manual_seed(2)
    model = randomised(SetrForSemanticSegmentation(setr_config(Dinov2Config(patch_size=14, **SMALL), decoder_type)))
    pixel_values = torch.randn(1, 3, 100, 150)
    with torch.no_grad():
        logits = model(pixel_values).logits
        maps = expected_maps(model, pixel_values)
        features = model.neck(maps) if model.neck is not None else maps
        assert torch.equal(logits, model.decode(features))
        slide = model(pixel_values, inference_mode="slide").logits
    assert slide.shape == (1, 3, 100, 150) and torch.isfinite(slide).all()
    # windows of 64 over 100x150: each is padded to 70 (a multiple of 14) inside the model
    assert model.config.slide_window == ((64, 64), (42, 42))
    model.train()
    labels = torch.randint(0, 3, (2, 100, 150))
    output = model(torch.randn(2, 3, 100, 150), labels=labels)
    assert len(output.auxiliary_logits) == len(model.config.auxiliary_in_indices)
    output.loss.backward()
    assert model.backbone.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("family", ["dinov2_with_registers", "deit3_small_patch16_224"])
def test_round_trip_and_trust_remote_code_give_identical_logits(family, tmp_path):
    model = randomised(SetrForSemanticSegmentation(setr_config(family_config(family), "mla")))
    pixel_values = torch.randn(1, 3, 100, 150)
    with torch.no_grad():
        logits = model(pixel_values).logits
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    with torch.no_grad():
        reloaded = SetrForSemanticSegmentation.from_pretrained(folder).eval()
        assert torch.equal(reloaded(pixel_values).logits, logits)
    torch.save(pixel_values, tmp_path / "x.pt")
    script = textwrap.dedent(
        """
        import sys, json, torch
        from transformers import AutoModelForSemanticSegmentation
        model = AutoModelForSemanticSegmentation.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
        with torch.no_grad():
            torch.save(model(torch.load(sys.argv[2])).logits, sys.argv[3])
        print("RESULT " + json.dumps([type(model).__module__, any(m.startswith("transformers_setr") for m in sys.modules)]))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run(
        [sys.executable, "-c", script, str(folder), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    module, imported = json.loads(done.stdout.split("RESULT ")[-1])
    assert not module.startswith("transformers_setr") and not imported
    assert torch.equal(torch.load(tmp_path / "y.pt"), logits)


@pytest.mark.parametrize("family", [*TRANSFORMERS_FAMILIES, "eva02_tiny_patch14_224.mim_in22k"])
def test_from_backbone_loads_a_saved_encoder(family, tmp_path):
    folder = tmp_path / "encoder"
    torch.manual_seed(3)
    if family in TRANSFORMERS_FAMILIES:
        encoder = AutoModel.from_config(TRANSFORMERS_FAMILIES[family]())
        encoder.save_pretrained(folder)
        weights = {k: v for k, v in encoder.state_dict().items() if "pooler" not in k}
    else:
        import timm

        args = {**TIMM_SMALL, "img_size": 28}
        encoder = timm.create_model(family, pretrained=False, **args)
        timm.models._hub.save_for_hf(encoder, folder, model_args=args)
        weights = encoder.state_dict()
    model = SetrForSemanticSegmentation.from_backbone(
        folder, "pup", id2label={0: "a", 1: "b"}, out_indices=[0, 1, 2, 3], image_size=56
    )
    assert model.config.id2label == {0: "a", 1: "b"} and str(tmp_path) not in model.config.to_json_string()
    loaded = model.backbone.state_dict()
    for key, value in weights.items():
        matches = [k for k in loaded if k.endswith(key.removeprefix("beit."))]
        if matches:
            assert torch.equal(loaded[matches[0]], value), key
    assert sum(1 for key in weights if any(k.endswith(key.removeprefix("beit.")) for k in loaded)) >= len(loaded) * 0.9


def test_config_without_backbone_is_unchanged():
    assert "backbone_config" not in SetrConfig().to_json_string()
    assert SetrConfig().to_dict()["backbone_config"] is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(backbone_config=Dinov2Config(out_indices=[2, 3], **SMALL)), "contradicts SETR's out_indices"),
        (dict(backbone_config=Dinov2Config(**SMALL), use_cls_token=False), "exists only in the built-in encoder"),
        (dict(backbone_config=Dinov2Config(**SMALL), hidden_size=64), "contradicts the dinov2 backbone's 32"),
        (dict(backbone_config=Dinov2Config(**SMALL), intermediate_size=8), "belongs to the built-in encoder"),
        (dict(backbone_config={"model_type": "resnet"}), "SETR does not take a 'resnet' backbone"),
        (dict(backbone="facebook/dinov2-small"), "SetrConfig takes no backbone="),
    ],
)
def test_refusals_are_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        SetrConfig(out_indices=[0, 1, 2, 3], **kwargs)
    assert "\n" not in str(error.value)


def test_from_backbone_refuses_an_unknown_encoder(tmp_path):
    with pytest.raises(ValueError, match="neither a transformers checkpoint nor a timm model") as error:
        SetrForSemanticSegmentation.from_backbone("no_such_model_anywhere")
    assert "\n" not in str(error.value)


def test_fast_path_on_a_backbone_model():
    from transformers_setr.models.setr.fast_inference_setr import optimize_for_inference

    model = randomised(SetrForSemanticSegmentation(setr_config(Dinov2Config(patch_size=14, **SMALL))))
    pixel_values = torch.randn(1, 3, 100, 150)
    with torch.no_grad():
        plain = model(pixel_values).logits
        fast = optimize_for_inference(model)(pixel_values).logits
    assert torch.allclose(plain, fast, atol=1e-5) and (plain.argmax(1) == fast.argmax(1)).float().mean() > 0.999


@pytest.mark.parametrize(
    ("layers", "decoder_type", "expected"),
    [(24, "pup", [9, 14, 19, 23]), (24, "mla", [5, 11, 17, 23]), (12, "naive", [2, 5, 8, 11])],
)
def test_default_layers_at_the_real_depths(layers, decoder_type, expected):
    """ViT-L depth (24) reads the decoder's released layers, ViT-B depth (12) the last of each quarter; the maps the
    heads read are those layers' hidden states (narrow encoders of the real depth: the glue depends on depth only)."""
    backbone = Dinov2Config(patch_size=14, image_size=28, **{**SMALL, "num_hidden_layers": layers})
    heads = {**HEADS, "decoder_channels": 32 if decoder_type == "mla" else 16}
    config = SetrConfig(backbone_config=backbone, decoder_type=decoder_type, **heads)
    assert config.out_indices == expected
    model = randomised(SetrForSemanticSegmentation(config))
    pixel_values = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        maps, _ = model.backbone_feature_maps(pixel_values, None)
    for got, want in zip(maps, expected_maps(model, pixel_values), strict=True):
        assert torch.equal(got, want)
