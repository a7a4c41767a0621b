"""The mmsegmentation -> transformers converter: loading safety, config inference, key table, atomic output, Hub."""

import json
import os
import pickle
import shutil
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

import transformers_setr.convert_mmseg as convert_mmseg
from transformers_setr.conversion import CheckpointMismatchError, load_checkpoint_file
from transformers_setr.convert_mmseg import (
    build_converted_model,
    config_from_mmseg_checkpoint,
    convert_checkpoint,
    resolve_checkpoint,
)
from transformers_setr.presets import PRESETS

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
# The reduced fixtures have 4 encoder layers and 2 heads; everything else is read from the weights.
CORE_OVERRIDES = {"out_indices": [0, 1, 2, 3], "num_attention_heads": 2}


def core_io(variant: str) -> dict:
    return torch.load(FIXTURES / f"core_{variant}_io.pt", weights_only=True)


@pytest.mark.parametrize("variant", ["naive", "pup", "mla"])
def test_config_is_read_from_the_weights(variant):
    checkpoint = load_checkpoint_file(str(FIXTURES / f"core_{variant}.pth"))
    config = config_from_mmseg_checkpoint(checkpoint, overrides=CORE_OVERRIDES)
    reference = core_io(variant)["overrides"]
    decode = reference["decode_head"]
    assert config.decoder_type == variant
    assert (config.hidden_size, config.num_hidden_layers) == (reference["embed_dims"], reference["num_layers"])
    assert config.intermediate_size == reference["intermediate_size"]
    assert config.image_size == reference["img_size"][0] and config.patch_embeddings_bias
    assert config.use_cls_token == reference["with_cls_token"]
    assert config.num_labels == decode["num_classes"]
    assert config.id2label == dict(enumerate(checkpoint["meta"]["CLASSES"]))  # names from meta
    assert config.palette == [list(colour) for colour in checkpoint["meta"]["PALETTE"]]
    assert len(config.auxiliary_in_indices) == len(reference["auxiliary_heads"])
    if variant == "mla":
        assert (config.mla_channels, config.mla_neck_channels) == (
            decode["mla_channels"],
            reference["neck"]["out_channels"],
        )
    else:
        assert (config.decoder_num_convs, config.decoder_kernel_size) == (decode["num_convs"], decode["kernel_size"])
        assert config.auxiliary_num_convs == reference["auxiliary_heads"][0]["num_convs"]
    assert config.inference_mode == "slide"


@pytest.mark.parametrize("variant", ["naive", "pup", "mla"])
def test_converted_folder_reproduces_mmseg_logits(variant, tmp_path):
    folder, _ = convert_checkpoint(str(FIXTURES / f"core_{variant}.pth"), tmp_path / variant, overrides=CORE_OVERRIDES)
    files = {path.name for path in folder.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "modeling_setr.py"} <= files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"
    model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    AutoImageProcessor.from_pretrained(folder)
    for case in core_io(variant)["cases"]:
        with torch.no_grad():
            logits = model(case["pixel_values"], inference_mode="whole").logits
        assert (logits - case["head_logits"]).abs().max().item() < 1e-4, case["name"]


def test_too_few_layers_without_out_indices_is_explained():
    checkpoint = load_checkpoint_file(str(FIXTURES / "core_pup.pth"))
    with pytest.raises(ValueError, match="pass out_indices"):
        config_from_mmseg_checkpoint(checkpoint)


class _Hostile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pth"
    torch.save({"meta": {"payload": _Hostile(marker)}, "state_dict": {}}, path)
    with pytest.raises(ValueError, match="refused so that no code from it runs"):
        load_checkpoint_file(str(path))
    with pytest.raises(ValueError, match="refused"):
        convert_checkpoint(str(path), tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
    # A plain (non-zip) pickle with the same payload is refused too.
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps({"state_dict": _Hostile(marker)}))
    with pytest.raises(ValueError):
        load_checkpoint_file(str(legacy))
    assert not marker.exists()


def test_truncated_file_gives_a_clear_error(tmp_path):
    data = (FIXTURES / "core_naive.pth").read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint_file(str(truncated))


def test_extra_missing_and_misshaped_keys_are_named():
    checkpoint = load_checkpoint_file(str(FIXTURES / "core_pup.pth"))
    state_dict = OrderedDict(checkpoint["state_dict"])
    extra = dict(checkpoint, state_dict=OrderedDict(state_dict, **{"decode_head.mystery.weight": torch.zeros(1)}))
    with pytest.raises(CheckpointMismatchError, match=r"decode_head\.mystery\.weight"):
        build_converted_model(extra, overrides=CORE_OVERRIDES)
    missing_sd = OrderedDict((k, v) for k, v in state_dict.items() if k != "backbone.layers.2.ln2.weight")
    with pytest.raises(CheckpointMismatchError, match=r"setr\.layers\.2\.layernorm_after\.weight"):
        build_converted_model(dict(checkpoint, state_dict=missing_sd), overrides=CORE_OVERRIDES)
    misshaped = OrderedDict(state_dict)
    misshaped["decode_head.norm.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointMismatchError, match=r"decode_head\.layernorm\.bias: checkpoint \(7,\)"):
        build_converted_model(dict(checkpoint, state_dict=misshaped), overrides=CORE_OVERRIDES)
    # num_batches_tracked is the only key dropped silently.
    assert any(k.endswith("num_batches_tracked") for k in state_dict)


def test_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(convert_mmseg.SetrImageProcessorPil, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        convert_checkpoint(str(FIXTURES / "core_naive.pth"), tmp_path / "out", overrides=CORE_OVERRIDES)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_checkpoint(str(FIXTURES / "core_naive.pth"), out, overrides=CORE_OVERRIDES)
    assert (out / "keep.txt").read_text() == "mine"
    convert_checkpoint(str(FIXTURES / "core_naive.pth"), out, overrides=CORE_OVERRIDES, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()


def test_preset_names_and_urls_resolve_through_the_cache(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, destination, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        shutil.copyfile(FIXTURES / "core_naive.pth", destination)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    preset = PRESETS["setr-pup-vit-large-ade20k-512"]
    path, found = resolve_checkpoint(preset.name, cache_dir=tmp_path)
    assert found is preset and path == tmp_path / preset.file_name
    assert calls == [(preset.url, "7e0ce826")]
    resolve_checkpoint(preset.name, cache_dir=tmp_path)  # cached: no second download
    assert len(calls) == 1
    path, found = resolve_checkpoint(PRESETS["setr-mla-vit-large-cityscapes-768"].url, cache_dir=tmp_path)
    assert found.name == "setr-mla-vit-large-cityscapes-768" and calls[-1][1] == "7f8dccbe"
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        resolve_checkpoint("no-such-thing", cache_dir=tmp_path)


def test_preset_urls_match_the_model_zoo_page():
    seed = next((Path(__file__).parents[2] / "shared" / "seeds").glob("000_*.txt"), None)
    if seed is None:
        pytest.skip("the seed documents are not beside this checkout")
    text = seed.read_text()
    for preset in PRESETS.values():
        assert preset.url in text, preset.name
        assert f"{preset.miou_reported:.2f}" in text and f"{preset.miou_ms_flip_reported:.2f}" in text


def test_push_to_hub_uploads_the_folder(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(
        huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw))
    )
    monkeypatch.setattr(
        huggingface_hub.HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw["repo_id"], kw)) or "url"
    )
    folder, _ = convert_checkpoint(
        str(FIXTURES / "core_mla.pth"), tmp_path / "out", overrides=CORE_OVERRIDES, push_to_hub="me/setr-test"
    )
    assert [c[:2] for c in calls] == [("create", "me/setr-test"), ("upload", "me/setr-test")]
    assert calls[1][2]["folder_path"] == str(folder)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "setr"
