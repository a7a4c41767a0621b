"""timm ViT -> SETR encoder initialisation (`transformers_setr.conversion.from_timm`), against timm itself on small random
models, plus a key/shape check of the full `vit_large_patch16_384` architecture on the meta device."""

from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformers_setr import SetrConfig, SetrForSemanticSegmentation, SetrModel
from transformers_setr.conversion import CheckpointMismatchError
from transformers_setr.conversion.from_timm import (
    TIMM_VIT_PRESETS,
    convert_timm_vit_state_dict,
    load_timm_vit_pretrain,
    map_timm_key,
)
from transformers_setr.presets import TIMM_VIT_LARGE_URL

timm = pytest.importorskip("timm", reason="timm is a dev dependency (pip install -e '.[dev]')")
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

HIDDEN, LAYERS, HEADS, NATIVE_SIZE, PATCH = 32, 4, 2, 64, 16
TOLERANCE = 1e-5


def tiny_timm_vit(seed: int = 0) -> VisionTransformer:
    """A small timm ViT in SETR's configuration (cls token, qkv bias, LayerNorm eps 1e-6), every tensor random:
    norms, biases and the patch-embedding bias included."""
    model = VisionTransformer(
        img_size=NATIVE_SIZE,
        patch_size=PATCH,
        embed_dim=HIDDEN,
        depth=LAYERS,
        num_heads=HEADS,
        mlp_ratio=4,
        qkv_bias=True,
        class_token=True,
        global_pool="token",
        num_classes=0,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    ).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if "norm" in name and name.endswith("weight"):
                tensor.uniform_(0.5, 1.5, generator=generator)
            else:
                tensor.normal_(0, 0.1, generator=generator)
    return model


def setr_config(**overrides) -> SetrConfig:
    kwargs = dict(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=4 * HIDDEN,
        image_size=NATIVE_SIZE,
        patch_size=PATCH,
        use_cls_token=True,
        out_indices=[0, 1, 2, 3],
        decoder_channels=16,
        auxiliary_channels=16,
        mla_channels=8,
        mla_neck_channels=16,
        num_labels=5,
    )
    kwargs.update(overrides)
    if kwargs.get("decoder_type") == "mla":
        kwargs["decoder_channels"] = 4 * kwargs["mla_channels"]
    return SetrConfig(**kwargs)


def timm_block_outputs(model: VisionTransformer, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list]:
    """The tokens entering block 0 and the output of every block, captured with hooks."""
    captured, inputs = [], []
    handles = [model.blocks[0].register_forward_pre_hook(lambda module, args: inputs.append(args[0]))]
    handles += [block.register_forward_hook(lambda m, a, output: captured.append(output)) for block in model.blocks]
    try:
        with torch.no_grad():
            model.forward_features(pixel_values)
    finally:
        for handle in handles:
            handle.remove()
    return inputs[0], captured


def test_key_table_maps_every_timm_key():
    state_dict = tiny_timm_vit().state_dict()
    assert map_timm_key("blocks.3.attn.qkv.weight") == [f"layers.3.attention.{p}_proj.weight" for p in "qkv"]
    assert map_timm_key("blocks.0.norm1.bias") == ["layers.0.layernorm_before.bias"]
    assert map_timm_key("pos_embed") == ["embeddings.position_embeddings"]
    assert [key for key in state_dict if map_timm_key(key) == []] == ["norm.weight", "norm.bias"]
    assert all(map_timm_key(key) is not None for key in state_dict)
    for dropped in ("head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"):
        assert map_timm_key(dropped) == []
    for foreign in ("blocks.0.ls1.gamma", "norm_pre.weight", "reg_token", "blocks.0.attn.q_norm.weight"):
        assert map_timm_key(foreign) is None


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_every_block_matches_timm_at_the_native_grid(attn_implementation):
    timm_model = tiny_timm_vit()
    # SETR has no pre-norm: timm must not apply one either for the comparison to hold.
    assert isinstance(timm_model.norm_pre, nn.Identity)
    assert timm_model.patch_embed.proj.bias is not None and timm_model.patch_embed.proj.bias.abs().sum() > 0
    config = setr_config(attn_implementation=attn_implementation)
    model = SetrModel(config).eval()
    model.load_state_dict(convert_timm_vit_state_dict(timm_model.state_dict(), config), strict=True)

    pixel_values = torch.randn(2, 3, NATIVE_SIZE, NATIVE_SIZE)
    timm_embeddings, timm_blocks = timm_block_outputs(timm_model, pixel_values)
    with torch.no_grad():
        hidden_states = model(pixel_values, output_hidden_states=True).hidden_states
    assert len(hidden_states) == LAYERS + 1
    torch.testing.assert_close(hidden_states[0], timm_embeddings, atol=TOLERANCE, rtol=0)
    for index, expected in enumerate(timm_blocks):
        torch.testing.assert_close(hidden_states[index + 1], expected, atol=TOLERANCE, rtol=0, msg=f"block {index}")


def independent_bilinear_resize(table: torch.Tensor, source: tuple[int, int], target: tuple[int, int]):
    cls_slot, grid = table[:, :1], table[:, 1:]
    grid = grid.reshape(1, *source, table.shape[-1]).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=target, mode="bilinear", align_corners=False)
    return torch.cat([cls_slot, grid.flatten(2).transpose(1, 2)], dim=1)


@pytest.mark.parametrize("image_size", [128, [128, 64]], ids=["8x8", "8x4"])
def test_position_table_is_resized_once_like_mmseg(image_size):
    timm_model = tiny_timm_vit()
    timm_table = timm_model.pos_embed.detach().clone()
    assert timm_table.shape == (1, 1 + 4 * 4, HIDDEN)  # cls slot first, then the 4x4 grid row-major
    config = setr_config(image_size=image_size)
    converted = convert_timm_vit_state_dict(timm_model.state_dict(), config)

    table = converted["embeddings.position_embeddings"]
    expected = independent_bilinear_resize(timm_table, (4, 4), config.image_grid)
    assert table.shape == (1, 1 + config.image_grid[0] * config.image_grid[1], HIDDEN)
    torch.testing.assert_close(table, expected, atol=1e-6, rtol=0)
    assert torch.equal(table[:, 0], timm_table[:, 0])  # the cls slot is untouched

    model = SetrModel(config).eval()
    model.load_state_dict(converted, strict=True)
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    with torch.no_grad():
        output = model(torch.randn(1, 3, height, width)).last_hidden_state
    assert output.shape == (1, 1 + (height // PATCH) * (width // PATCH), HIDDEN)
    assert torch.isfinite(output).all()


def test_position_table_with_the_right_row_count_is_taken_as_is():
    # mmseg's init_weights resizes only when the shape differs; at the native grid the table is copied verbatim.
    timm_model = tiny_timm_vit()
    converted = convert_timm_vit_state_dict(timm_model.state_dict(), setr_config())
    assert torch.equal(converted["embeddings.position_embeddings"], timm_model.pos_embed.detach())


@pytest.mark.parametrize("decoder_type", ["pup", "naive", "mla"])
def test_loading_fills_the_encoder_and_leaves_the_heads(tmp_path, decoder_type):
    timm_model = tiny_timm_vit()
    path = tmp_path / "vit.pth"
    torch.save(timm_model.state_dict(), path)
    config = setr_config(decoder_type=decoder_type, image_size=96, use_cls_token=decoder_type != "mla")
    model = SetrForSemanticSegmentation(config).eval()
    before = {key: value.clone() for key, value in model.state_dict().items()}

    report = load_timm_vit_pretrain(model, path)

    after = model.state_dict()
    encoder_keys = {key for key in after if key.startswith("setr.")}
    expected = convert_timm_vit_state_dict(timm_model.state_dict(), config)
    assert set(report.loaded_keys) == encoder_keys == {f"setr.{key}" for key in expected}
    assert report.num_loaded == len(encoder_keys)
    assert report.dropped_keys == ("norm.weight", "norm.bias")
    assert report.position_grid_resized == ((4, 4), (6, 6))
    for key, value in after.items():
        if key in encoder_keys:
            assert not torch.equal(value, before[key]), f"{key} was not overwritten"
            assert torch.equal(value, expected[key.removeprefix("setr.")]), key
        else:
            assert torch.equal(value, before[key]), f"{key} (not encoder) changed"
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 96, 96)).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("wrapper", [None, "model", "state_dict"])
def test_file_route_bare_and_wrapped(tmp_path, wrapper):
    timm_model = tiny_timm_vit(seed=1)
    state_dict = timm_model.state_dict()
    path = tmp_path / "timm_vit.pth"
    torch.save(state_dict if wrapper is None else {wrapper: state_dict, "epoch": 3}, path)
    model = SetrModel(setr_config()).eval()

    report = load_timm_vit_pretrain(model, str(path))

    assert report.path == str(path) and report.position_grid_resized is None
    assert report.loaded_keys == tuple(convert_timm_vit_state_dict(state_dict, model.config))  # no prefix
    torch.testing.assert_close(model.embeddings.patch_embeddings.projection.bias, timm_model.patch_embed.proj.bias)
    qkv = timm_model.blocks[2].attn.qkv.weight
    attention = model.layers[2].attention
    assert torch.equal(torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]), qkv)


def test_url_and_preset_routes_download_once_into_the_cache(tmp_path, monkeypatch):
    source_file = tmp_path / "source.pth"
    torch.save(tiny_timm_vit().state_dict(), source_file)
    calls = []

    def fake_download(url, destination, hash_prefix=None, progress=True):
        calls.append(url)
        Path(destination).write_bytes(source_file.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    cache = tmp_path / "cache"
    url = "https://example.invalid/weights/vit_tiny-0123abcd.pth"
    for _ in range(2):
        report = load_timm_vit_pretrain(SetrModel(setr_config()), url, cache_dir=cache, progress=False)
    assert calls == [url]
    assert report.path == str(cache / "vit_tiny-0123abcd.pth")

    report = load_timm_vit_pretrain(SetrModel(setr_config()), "vit-large-p16-384", cache_dir=cache, progress=False)
    assert TIMM_VIT_PRESETS["vit-large-p16-384"] == TIMM_VIT_LARGE_URL
    assert calls == [url, TIMM_VIT_LARGE_URL]
    assert report.path == str(cache / "jx_vit_large_p16_384-b3be5167.pth")
    assert sorted(path.name for path in cache.iterdir()) == [
        "jx_vit_large_p16_384-b3be5167.pth",
        "vit_tiny-0123abcd.pth",
    ]


def test_interrupted_download_leaves_nothing_behind(tmp_path, monkeypatch):
    def failing_download(url, destination, hash_prefix=None, progress=True):
        Path(destination).write_bytes(b"truncated")
        raise ConnectionError("connection reset")

    monkeypatch.setattr(torch.hub, "download_url_to_file", failing_download)
    cache = tmp_path / "cache"
    with pytest.raises(ConnectionError):
        load_timm_vit_pretrain(SetrModel(setr_config()), "https://example.invalid/x.pth", cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_missing_source_names_the_presets(tmp_path):
    with pytest.raises(FileNotFoundError, match="vit-large-p16-384"):
        load_timm_vit_pretrain(SetrModel(setr_config()), tmp_path / "nope.pth")


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda sd: sd.update({"blocks.4.norm1.weight": torch.ones(HIDDEN)}), "blocks.4.norm1.weight"),
        (lambda sd: sd.update({"blocks.1.ls1.gamma": torch.ones(HIDDEN)}), "blocks.1.ls1.gamma"),
        (lambda sd: sd.pop("blocks.2.mlp.fc2.bias"), "layers.2.mlp.fc2.bias"),
        (lambda sd: sd.pop("cls_token"), "embeddings.cls_token"),
        (lambda sd: sd.update({"blocks.0.mlp.fc1.weight": torch.ones(64, HIDDEN)}), "blocks.0.mlp.fc1.weight"),
        (lambda sd: sd.update({"blocks.3.attn.qkv.bias": torch.ones(95)}), "blocks.3.attn.qkv.bias"),
        (lambda sd: sd.update({"pos_embed": torch.ones(1, 36, HIDDEN)}), "pos_embed"),
    ],
    ids=["extra-block", "foreign-key", "missing-key", "missing-cls", "wrong-shape", "qkv-not-divisible", "no-cls"],
)
def test_mismatched_state_dicts_are_refused_by_name(tmp_path, edit, named):
    state_dict = dict(tiny_timm_vit().state_dict())
    edit(state_dict)
    with pytest.raises(CheckpointMismatchError, match=named.replace(".", r"\.")):
        convert_timm_vit_state_dict(state_dict, setr_config())
    # The loader refuses the same file without touching the model.
    path = tmp_path / "bad.pth"
    torch.save(state_dict, path)
    model = SetrModel(setr_config())
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError):
        load_timm_vit_pretrain(model, path)
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())


@pytest.mark.parametrize(("image_size", "grid"), [(512, 32), (768, 48)])
def test_vit_large_patch16_384_covers_the_default_setr_encoder_on_meta(image_size, grid):
    """The full-size key/shape check without memory: timm's ViT-L/16 @ 384 and SETR's default ViT-L on meta."""
    with torch.device("meta"):
        timm_model = timm.create_model("vit_large_patch16_384", pretrained=False)
        setr = SetrForSemanticSegmentation(SetrConfig(image_size=image_size))
    state_dict = timm_model.state_dict()
    assert state_dict["pos_embed"].shape == (1, 577, 1024)
    assert state_dict["blocks.0.norm1.weight"].is_meta and timm_model.blocks[0].norm1.eps == 1e-6
    assert isinstance(timm_model.norm_pre, nn.Identity)
    expected = {key: tuple(value.shape) for key, value in setr.setr.state_dict().items()}

    converted = convert_timm_vit_state_dict(state_dict, setr.config, expected)

    assert set(converted) == set(expected)
    assert converted["embeddings.position_embeddings"].shape == (1, 1 + grid * grid, 1024)
    assert sorted(key for key in state_dict if map_timm_key(key) == []) == [
        "head.bias",
        "head.weight",
        "norm.bias",
        "norm.weight",
    ]


@pytest.mark.heavy
def test_full_size_vit_large_patch16_384_matches_timm_block_for_block():
    """Real memory, full size (random weights; nothing is downloaded): every block of SETR's default encoder at the
    384 grid against timm's `vit_large_patch16_384`."""
    timm_model = timm.create_model("vit_large_patch16_384", pretrained=False).eval()
    config = SetrConfig(image_size=384, attn_implementation="eager")
    model = SetrModel(config).eval()
    model.load_state_dict(convert_timm_vit_state_dict(timm_model.state_dict(), config), strict=True)
    pixel_values = torch.randn(1, 3, 384, 384)
    timm_embeddings, timm_blocks = timm_block_outputs(timm_model, pixel_values)
    with torch.no_grad():
        hidden_states = model(pixel_values, output_hidden_states=True).hidden_states
    torch.testing.assert_close(hidden_states[0], timm_embeddings, atol=1e-5, rtol=0)
    for index, expected in enumerate(timm_blocks):
        torch.testing.assert_close(hidden_states[index + 1], expected, atol=1e-4, rtol=1e-4, msg=f"block {index}")
