"""Logits parity with mmsegmentation 1.2.2 on reduced random-weight SETR models.

The fixtures in `tests/fixtures/parity/` were produced by the reference implementation itself:
`.venv-mmseg/bin/python scripts/make_parity_fixtures.py` (see DEVELOPERS.md). mmsegmentation is not needed here.
"""

from pathlib import Path

import pytest
import torch

from transformers_setr import SetrConfig, SetrForSemanticSegmentation
from transformers_setr.conversion import load_checkpoint_file, load_mmseg_state_dict

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "parity"
TOLERANCE = 1e-4


def config_from_fixture(overrides: dict, classes: tuple[str, ...]) -> SetrConfig:
    """The SetrConfig of a reduced mmseg model, from the hyper-parameters the fixture script read back from it."""
    decode = overrides["decode_head"]
    auxiliary = overrides["auxiliary_heads"]
    mla = decode["type"] == "SETRMLAHead"
    kwargs = dict(
        decoder_type="mla" if mla else ("pup" if decode["num_convs"] > 1 else "naive"),
        hidden_size=overrides["embed_dims"],
        num_hidden_layers=overrides["num_layers"],
        num_attention_heads=overrides["num_heads"],
        intermediate_size=overrides["intermediate_size"],
        image_size=list(overrides["img_size"]),
        patch_size=overrides["patch_size"],
        layer_norm_eps=overrides["layer_norm_eps"],
        use_cls_token=overrides["with_cls_token"],
        out_indices=list(overrides["out_indices"]),
        decoder_channels=decode["channels"],
        decoder_up_scale=decode["up_scale"],
        decoder_kernel_size=decode["kernel_size"],
        auxiliary_in_indices=[head["in_index"] for head in auxiliary],
        auxiliary_num_convs=auxiliary[0]["num_convs"],
        auxiliary_kernel_size=auxiliary[0]["kernel_size"],
        auxiliary_channels=auxiliary[0]["channels"],
        id2label=dict(enumerate(classes)),
    )
    if mla:
        kwargs.update(mla_channels=decode["mla_channels"], mla_neck_channels=overrides["neck"]["out_channels"])
        kwargs["decoder_num_convs"] = 2
    else:
        kwargs.update(decoder_num_convs=decode["num_convs"], decoder_in_index=decode["in_index"])
        kwargs["auxiliary_up_scale"] = auxiliary[0]["up_scale"]
    return SetrConfig(**kwargs)


def converted_model(variant: str) -> tuple[SetrForSemanticSegmentation, dict]:
    io = torch.load(FIXTURES / f"core_{variant}_io.pt", weights_only=True)
    checkpoint = load_checkpoint_file(str(FIXTURES / f"core_{variant}.pth"))
    config = config_from_fixture(io["overrides"], tuple(checkpoint["meta"]["CLASSES"]))
    model = SetrForSemanticSegmentation(config).eval()
    load_mmseg_state_dict(model, checkpoint["state_dict"])
    return model, io


@pytest.mark.parametrize("variant", ["naive", "pup", "mla"])
def test_logits_match_mmsegmentation(variant):
    model, io = converted_model(variant)
    errors = {}
    for case in io["cases"]:
        with torch.no_grad():
            logits = model(case["pixel_values"]).logits
        assert logits.shape == case["head_logits"].shape, case["name"]
        errors[case["name"]] = (logits - case["head_logits"]).abs().max().item()
        # mmseg's encode_decode: the same logits resized bilinearly to the (unpadded) input.
        resized = torch.nn.functional.interpolate(
            logits, size=case["pixel_values"].shape[-2:], mode="bilinear", align_corners=False
        )
        errors[case["name"] + "/crop"] = (resized - case["crop_logits"]).abs().max().item()
        assert case["head_logits"].std() > 1e-2, "degenerate fixture"
    print(f"{variant}: max abs logit error per case {errors}")
    assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.parametrize("variant", ["naive", "pup", "mla"])
def test_auxiliary_heads_match_mmsegmentation(variant):
    model, io = converted_model(variant)
    case = io["cases"][0]
    with torch.no_grad():
        outputs = model.setr(case["pixel_values"], output_hidden_states=True)
        grid = (case["pixel_values"].shape[-2] // 16, case["pixel_values"].shape[-1] // 16)
        features = model.feature_maps(outputs.hidden_states, grid)
        for head, index, expected in zip(model.auxiliary_heads, model.config.auxiliary_in_indices, io["aux_logits"]):
            assert (head(features[index]) - expected).abs().max().item() < TOLERANCE


def test_checkpoint_meta_carries_numpy_scalars_and_loads_safely():
    checkpoint = load_checkpoint_file(str(FIXTURES / "core_pup.pth"))
    assert set(checkpoint) >= {"meta", "state_dict"}
    assert "backbone.patch_embed.projection.bias" in checkpoint["state_dict"]
    assert any(type(value).__module__ == "numpy" for value in checkpoint["meta"].values())
