"""The mmsegmentation -> transformers converter: loading safety, config inference, key table, atomic output, Hub."""

import json
import os
import pickle
import random
import runpy
import shutil
import socket
import subprocess
import sys
import warnings
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

import transformers_setr.conversion.from_mmseg as convert_mmseg
from transformers_setr.conversion import CheckpointMismatchError, load_checkpoint_file
from transformers_setr.conversion.from_mmseg import (
    build_converted_model,
    config_from_mmseg_checkpoint,
    convert_checkpoint,
    processor_settings_from_mmseg_config,
    resolve_checkpoint,
)
from transformers_setr.presets import PRESETS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "parity"
# The reduced fixtures have 4 encoder layers and 2 heads; everything else is read from the weights.
CORE_OVERRIDES = {"out_indices": [0, 1, 2, 3], "num_attention_heads": 2}


def core_io(variant: str) -> dict:
    return torch.load(FIXTURES / f"core_{variant}_io.pt", weights_only=True)


def without_config_text(checkpoint: dict) -> dict:
    """The checkpoint as a file whose meta lacks the mmseg config text (e.g. one saved by hand)."""
    return dict(checkpoint, meta={k: v for k, v in checkpoint["meta"].items() if k != "config"})


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
    checkpoint = without_config_text(load_checkpoint_file(str(FIXTURES / "core_pup.pth")))
    with pytest.raises(ValueError, match="pass out_indices"):
        config_from_mmseg_checkpoint(checkpoint, overrides={"num_attention_heads": 2})


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
    # --overwrite replaces what a conversion wrote, never the user's files.
    assert (out / "keep.txt").read_text() == "mine" and (out / "model.safetensors").exists()


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
    seed = next((Path(__file__).resolve().parents[3] / "shared" / "seeds").glob("000_*.txt"), None)
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


# --- Head count and other architecture facts from the mmseg config text in meta (never guessed) ---

# What mmseg 0.x training stores as meta["config"] (`cfg.pretty_text`), for the reduced PUP fixture's architecture:
# `dict(...)` calls, tuples, nested lists and non-literals such as `range(...)` that must never be evaluated.
MMSEG_0X_PUP_CONFIG_TEXT = """\
norm_cfg = dict(type='SyncBN', requires_grad=True)
backbone_norm_cfg = dict(type='LN', eps=1e-06, requires_grad=True)
model = dict(
    type='EncoderDecoder',
    pretrained='pretrain/jx_vit_large_p16_384-b3be5167.pth',
    backbone=dict(
        type='VisionTransformer',
        img_size=(64, 64),
        patch_size=16,
        in_channels=3,
        embed_dims=32,
        num_layers=4,
        num_heads=2,
        out_indices=(0, 1, 2, 3),
        drop_rate=0.1,
        norm_cfg=dict(type='LN', eps=1e-06, requires_grad=True),
        with_cls_token=True,
        interpolate_mode='bilinear'),
    decode_head=dict(
        type='SETRUPHead',
        in_channels=32,
        channels=16,
        in_index=3,
        num_classes=5,
        dropout_ratio=0,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        num_convs=4,
        up_scale=2,
        kernel_size=3,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=[
        dict(
            type='SETRUPHead',
            in_channels=32,
            channels=16,
            in_index=0,
            num_classes=5,
            dropout_ratio=0,
            norm_cfg=dict(type='SyncBN', requires_grad=True),
            num_convs=2,
            up_scale=4,
            kernel_size=3,
            align_corners=False,
            loss_decode=dict(
                type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
        dict(
            type='SETRUPHead',
            in_channels=32,
            channels=16,
            in_index=1,
            num_classes=5,
            dropout_ratio=0,
            norm_cfg=dict(type='SyncBN', requires_grad=True),
            num_convs=2,
            up_scale=4,
            kernel_size=3,
            align_corners=False,
            loss_decode=dict(
                type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
        dict(
            type='SETRUPHead',
            in_channels=32,
            channels=16,
            in_index=2,
            num_classes=5,
            dropout_ratio=0,
            norm_cfg=dict(type='SyncBN', requires_grad=True),
            num_convs=2,
            up_scale=4,
            kernel_size=3,
            align_corners=False,
            loss_decode=dict(
                type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4))
    ],
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=(64, 64), stride=(42, 42)))
dataset_type = 'ADE20KDataset'
data_root = 'data/ade/ADEChallengeData2016'
img_norm_cfg = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
crop_size = (512, 512)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='Resize', img_scale=(2048, 512), ratio_range=(0.5, 2.0)),
    dict(type='RandomCrop', crop_size=(512, 512), cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(
        type='Normalize',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        to_rgb=True),
    dict(type='Pad', size=(512, 512), pad_val=0, seg_pad_val=255),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_semantic_seg'])
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='MultiScaleFlipAug',
        img_scale=(1024, 256),
        flip=False,
        transforms=[
            dict(type='Resize', keep_ratio=True),
            dict(type='RandomFlip'),
            dict(
                type='Normalize',
                mean=[123.675, 116.28, 103.53],
                std=[58.395, 57.12, 57.375],
                to_rgb=True),
            dict(type='ImageToTensor', keys=['img']),
            dict(type='Collect', keys=['img'])
        ])
]
optimizer = dict(
    type='SGD',
    lr=0.001,
    momentum=0.9,
    weight_decay=0.0,
    paramwise_cfg=dict(custom_keys=dict(head=dict(lr_mult=10.0))))
lr_config = dict(policy='poly', power=0.9, min_lr=0.0001, by_epoch=False)
runner = dict(type='IterBasedRunner', max_iters=160000)
work_dir = './work_dirs/setr_pup_512x512_160k_b16_ade20k'
gpu_ids = range(0, 8)
"""


def _whole_logits_match(model, variant: str) -> bool:
    for case in core_io(variant)["cases"]:
        with torch.no_grad():
            logits = model(case["pixel_values"], inference_mode="whole").logits
        if (logits - case["head_logits"]).abs().max().item() >= 1e-4:
            return False
    return True


def test_architecture_is_read_from_the_meta_config_text(tmp_path):
    """No overrides at all: the heads, feature layers and test protocol come from meta["config"] (1.x fixture text
    and a hand-written 0.x text), and the converted model reproduces mmseg."""
    folder, model = convert_checkpoint(str(FIXTURES / "core_pup.pth"), tmp_path / "out")
    assert model.config.num_attention_heads == 2 and model.config.out_indices == [0, 1, 2, 3]
    assert model.config.decoder_up_scale == 2 and model.config.auxiliary_in_indices == [0, 1, 2]
    assert _whole_logits_match(AutoModelForSemanticSegmentation.from_pretrained(folder).eval(), "pup")
    card = (folder / "README.md").read_text()  # a non-preset conversion gets a card, with no reported numbers
    assert "core_pup.pth" in card and "2 heads" in card
    assert "model-index" not in card and "mIoU" not in card and "48.24" not in card
    processor = json.loads((folder / "preprocessor_config.json").read_text())  # the text's test pipeline
    assert processor["size"] == {"shortest_edge": 512, "longest_edge": 2048} and processor["do_reduce_labels"]

    checkpoint = load_checkpoint_file(str(FIXTURES / "core_pup.pth"))
    checkpoint["meta"]["config"] = MMSEG_0X_PUP_CONFIG_TEXT
    config = config_from_mmseg_checkpoint(checkpoint)
    assert (config.num_attention_heads, config.out_indices, config.use_cls_token) == (2, [0, 1, 2, 3], True)
    assert (config.layer_norm_eps, config.decoder_up_scale, config.auxiliary_up_scale) == (1e-6, 2, 4)
    assert (config.slide_crop_size, config.slide_stride) == ([64, 64], [42, 42])
    assert processor_settings_from_mmseg_config(MMSEG_0X_PUP_CONFIG_TEXT) == {
        "test_scale": (1024, 256),
        "reduce_labels": True,
    }
    # A file whose (training-only) auxiliary heads were stripped still converts with the text's encoder settings.
    state_dict = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("auxiliary_head.")}
    model = build_converted_model(dict(checkpoint, state_dict=state_dict))
    assert not model.config.use_auxiliary_head and model.config.num_attention_heads == 2


def test_head_count_is_never_guessed(tmp_path):
    checkpoint = without_config_text(load_checkpoint_file(str(FIXTURES / "core_pup.pth")))
    # Before: hidden_size // 64 = 1 head, silently (the fixture has 2).
    with pytest.raises(ValueError, match=r"num_attention_heads .*--num-attention-heads"):
        config_from_mmseg_checkpoint(checkpoint, overrides={"out_indices": [0, 1, 2, 3]})
    model = build_converted_model(checkpoint, overrides=CORE_OVERRIDES)  # given explicitly, it converts
    assert _whole_logits_match(model, "pup")
    # A config text is parsed, never run: an expression in it is ignored (and the heads are then still unknown).
    marker = tmp_path / "ran"
    checkpoint["meta"]["config"] = f"model = __import__('os').system('touch {marker}')\nnum_heads = 2\n"
    with pytest.raises(ValueError, match="num_attention_heads"):
        config_from_mmseg_checkpoint(checkpoint, overrides={"out_indices": [0, 1, 2, 3]})
    checkpoint["meta"]["config"] = "/configs/_base_/models/setr_pup.py\nmodel = dict("  # not Python: as if absent
    with pytest.raises(ValueError, match="num_attention_heads is unknown"):
        config_from_mmseg_checkpoint(checkpoint, overrides={"out_indices": [0, 1, 2, 3]})
    assert not marker.exists()


def test_meta_config_of_another_model_is_refused():
    checkpoint = load_checkpoint_file(str(FIXTURES / "core_pup.pth"))
    checkpoint["meta"]["config"] = MMSEG_0X_PUP_CONFIG_TEXT.replace("embed_dims=32", "embed_dims=1024")
    with pytest.raises(ValueError, match=r"describes another model than the weights: embed_dims 1024 vs 32"):
        config_from_mmseg_checkpoint(checkpoint)
    checkpoint["meta"]["config"] = MMSEG_0X_PUP_CONFIG_TEXT.replace("num_heads=2", "num_heads=3")
    with pytest.raises(ValueError, match="does not divide the width 32"):
        config_from_mmseg_checkpoint(checkpoint)


# --- The command line (scripts/convert_mmseg_to_hf.py, as the README runs it): malformed files, data loss ---

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "convert_mmseg_to_hf.py"


# Explicit, so that the data-loss tests reach the output stage on any version of the converter.
CORE_OVERRIDES_JSON = json.dumps(CORE_OVERRIDES)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def cli_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """The script's own `main()` in this process (cheap): its exit code and stderr, with the warnings it would print
    there. An exception it lets through fails the test, as a traceback would."""
    main = runpy.run_path(str(SCRIPT))["main"]
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *args])
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main()
    return code, capsys.readouterr().err + "".join(f"{warning.message}\n" for warning in caught)


def assert_one_line_error(code: int, stderr: str, names: Path) -> None:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("Writing model shards")]
    assert code != 0, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert str(names) in lines[0], stderr
    assert "Traceback" not in stderr and "weights_only=False" not in stderr and "weights_only` set to" not in stderr


def _malformed(tmp_path: Path, case: str) -> Path:
    path = tmp_path / f"{case}.pth"
    if case == "random-bytes":
        path.write_bytes(bytes(random.Random(0).getrandbits(8) for _ in range(4096)))
        return path
    checkpoint = load_checkpoint_file(str(FIXTURES / "core_pup.pth"))
    state_dict = OrderedDict(checkpoint["state_dict"])
    if case == "state-dict-is-a-tensor":
        checkpoint["state_dict"] = torch.zeros(3)
    elif case == "legacy-random-pickle":
        path.write_bytes(b"\x80\x05" + bytes(random.Random(1).getrandbits(8) for _ in range(4096)))
        return path
    else:
        if case == "missing-ffn-key":
            del state_dict["backbone.layers.0.ffn.layers.0.0.weight"]
        elif case == "missing-decoder-key":
            del state_dict["decode_head.up_convs.0.0.conv.weight"]
        elif case == "0-d-pos-embed":
            state_dict["backbone.pos_embed"] = torch.tensor(1.0)
        elif case == "non-tensor-value":
            state_dict["decode_head.norm.bias"] = [0.0] * 32
        checkpoint["state_dict"] = state_dict
    torch.save(checkpoint, path)
    return path


MALFORMED = [
    "random-bytes",
    "legacy-random-pickle",
    "state-dict-is-a-tensor",
    "missing-ffn-key",
    "missing-decoder-key",
    "0-d-pos-embed",
    "non-tensor-value",
]


@pytest.mark.parametrize("case", MALFORMED)
def test_cli_malformed_checkpoint_is_one_line_naming_the_file(case, tmp_path, monkeypatch, capsys):
    path = _malformed(tmp_path, case)
    out = str(tmp_path / "out")
    code, stderr = cli_main(
        monkeypatch, capsys, "--checkpoint", str(path), "--output", out, "--overrides", CORE_OVERRIDES_JSON
    )
    assert_one_line_error(code, stderr, path)
    if case in ("random-bytes", "legacy-random-pickle"):
        assert "not a PyTorch checkpoint" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # nothing written, nothing left


def test_cli_output_folder_holding_the_input_is_refused(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    source = folder / "setr.pth"
    shutil.copyfile(FIXTURES / "core_naive.pth", source)
    (folder / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    # Before: everything in the folder, the .pth included, was deleted and the exit code was 0.
    result = run_cli(
        "--checkpoint", str(source), "--output", str(folder), "--overwrite", "--overrides", CORE_OVERRIDES_JSON
    )
    assert_one_line_error(result.returncode, result.stderr, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]


def test_cli_overwrite_keeps_user_files_and_removes_only_stale_temporary_folders(tmp_path):
    out = tmp_path / "converted"
    convert_checkpoint(str(FIXTURES / "core_pup.pth"), out, overrides=CORE_OVERRIDES)  # an earlier conversion
    (out / "notes.txt").write_text("mine")
    (out / "eval").mkdir()
    (out / "eval" / "results.json").write_text("{}")
    # A killed conversion's temporary folder (owner file, dead pid) and two look-alikes that must stay: one without
    # the owner file, one whose process still runs.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / ".converted.setr-convert-tmp-killed"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    owner = {"pid": int(dead.stdout), "host": socket.gethostname()}
    (stale / ".setr-convert-owner.json").write_text(json.dumps(owner))
    unowned = tmp_path / ".converted.setr-convert-tmp-mine"
    unowned.mkdir()
    alive = tmp_path / ".other.setr-convert-tmp-running"
    alive.mkdir()
    (alive / ".setr-convert-owner.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))

    source = str(FIXTURES / "core_naive.pth")
    result = run_cli("--checkpoint", source, "--output", str(out), "--overwrite", "--overrides", CORE_OVERRIDES_JSON)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "config.json").read_text())["decoder_type"] == "naive"  # conversion outputs replaced
    assert (out / "notes.txt").read_text() == "mine" and (out / "eval" / "results.json").exists()
    assert not stale.exists() and unowned.exists() and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, unowned.name, alive.name])


def test_overwrite_never_replaces_a_file_no_conversion_wrote(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    with pytest.raises(FileExistsError, match=r"README\.md, which no earlier conversion wrote there"):
        convert_checkpoint(str(FIXTURES / "core_naive.pth"), out, overrides=CORE_OVERRIDES, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["README.md"] and (out / "README.md").read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_cli_unwritable_output_parent_is_one_line(tmp_path, monkeypatch, capsys):
    parent = tmp_path / "locked"
    parent.mkdir()
    if os.geteuid() != 0:  # root writes anywhere: there the refusal is simulated
        parent.chmod(0o555)
    else:

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(parent))

        monkeypatch.setattr(convert_mmseg.tempfile, "mkdtemp", refuse)
    try:
        source = str(FIXTURES / "core_naive.pth")
        code, stderr = cli_main(
            monkeypatch,
            capsys,
            "--checkpoint",
            source,
            "--output",
            str(parent / "out"),
            "--overrides",
            CORE_OVERRIDES_JSON,
        )
    finally:
        parent.chmod(0o755)
    assert_one_line_error(code, stderr, parent / "out")
    assert "Permission denied" in stderr and list(parent.iterdir()) == []


def _vit_large_pup_shapes() -> dict:
    """A released PUP checkpoint's state dict as shapes only (meta tensors, no memory): what the config reads."""
    shape = {
        "backbone.pos_embed": (1, 1025, 1024),
        "backbone.patch_embed.projection.weight": (1024, 3, 16, 16),
        "backbone.patch_embed.projection.bias": (1024,),
        "decode_head.conv_seg.weight": (150, 256, 1, 1),
        **{f"backbone.layers.{i}.ffn.layers.0.0.weight": (4096, 1024) for i in range(24)},
        **{f"decode_head.up_convs.{i}.0.conv.weight": (256, 1024 if i == 0 else 256, 3, 3) for i in range(4)},
    }
    return {"state_dict": {key: torch.empty(size, device="meta") for key, size in shape.items()}}


def test_released_encoder_heads_come_from_the_preset_and_only_there():
    checkpoint = _vit_large_pup_shapes()  # no meta at all
    config = config_from_mmseg_checkpoint(checkpoint, PRESETS["setr-pup-vit-large-ade20k-512"])
    assert (config.num_attention_heads, config.hidden_size, config.out_indices) == (16, 1024, [9, 14, 19, 23])
    with pytest.raises(ValueError, match="num_attention_heads is not in the checkpoint's meta"):
        config_from_mmseg_checkpoint(checkpoint)  # same shapes, not a preset: 16 would be a guess
    assert config_from_mmseg_checkpoint(checkpoint, overrides={"num_attention_heads": 8}).num_attention_heads == 8


def test_temporary_folder_names_its_owner(tmp_path, monkeypatch):
    """What the stale-folder test above fabricates is what a conversion really leaves when it is killed."""
    seen = []

    def spy_save(self, folder, *args, **kwargs):
        seen.extend(
            (entry.name, json.loads((entry / ".setr-convert-owner.json").read_text()))
            for entry in tmp_path.iterdir()
            if entry.name.startswith(".out.setr-convert-tmp-")
        )
        return original(self, folder, *args, **kwargs)

    original = convert_mmseg.SetrImageProcessorPil.save_pretrained
    monkeypatch.setattr(convert_mmseg.SetrImageProcessorPil, "save_pretrained", spy_save)
    convert_checkpoint(str(FIXTURES / "core_naive.pth"), tmp_path / "out", overrides=CORE_OVERRIDES)
    assert [owner for _, owner in seen] == [{"pid": os.getpid(), "host": socket.gethostname()}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert ".setr-convert-owner.json" not in {p.name for p in (tmp_path / "out").iterdir()}


def test_cli_head_count_option_for_a_checkpoint_without_config_text(tmp_path, monkeypatch, capsys):
    source = tmp_path / "no-config.pth"
    torch.save(without_config_text(load_checkpoint_file(str(FIXTURES / "core_pup.pth"))), source)
    layers = json.dumps({"out_indices": [0, 1, 2, 3]})
    code, stderr = cli_main(monkeypatch, capsys, "--checkpoint", str(source), "--output", str(tmp_path / "a"))
    assert_one_line_error(code, stderr, source)
    assert "--num-attention-heads" in stderr
    code, stderr = cli_main(
        monkeypatch, capsys, "--checkpoint", str(source), "--output", str(tmp_path / "b"), "--overrides", layers,
        "--num-attention-heads", "2",
    )  # fmt: skip
    assert code == 0, stderr
    assert json.loads((tmp_path / "b" / "config.json").read_text())["num_attention_heads"] == 2
