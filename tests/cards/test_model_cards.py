"""Model cards: the committed `model_cards/*.md` are current, parse, and say what the presets and label tables say."""

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

from transformers_setr import SetrConfig, SetrForSemanticSegmentation, SetrImageProcessorPil
from transformers_setr.cards.architecture import auxiliary_description, decoder_description, encoder_parameters
from transformers_setr.cards.model_card import (
    CITATION,
    CONVERTER_SCRIPT,
    HUB_REPO_NAME_SCHEME,
    build_converted_model_card,
    build_model_card,
    hub_repo_id,
    keep_ratio_size,
    preset_config,
    slide_window_grid,
)
from transformers_setr.data.label_tables import id2label_for
from transformers_setr.presets import (
    HUB_DATASETS,
    HUB_ORGANISATION,
    MMSEG_CODE_LICENSE,
    MMSEG_MODEL_ZOO_URL,
    PRESETS,
    PRETRAINED_ENCODER_HUB_ID,
)

from conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]
CARDS_DIR = ROOT / "model_cards"
REPORTED = "reported by mmsegmentation, not re-measured"
MEASURED = "measured with transformers_setr"
PRESET_NAMES = list(PRESETS)


def _load_script():
    spec = importlib.util.spec_from_file_location("make_model_cards", ROOT / "scripts" / "make_model_cards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_model_cards = _load_script()


def _metrics(card: ModelCard) -> list[dict]:
    """Every metric of the model-index with its result's dataset and source attached."""
    (entry,) = card.data.to_dict()["model-index"]
    return [
        {**metric, "dataset": result["dataset"], "source": result.get("source"), "task": result["task"]}
        for result in entry["results"]
        for metric in result["metrics"]
    ]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


# --- the committed cards -------------------------------------------------------------------------------------------


def test_committed_cards_equal_the_generated_ones():
    assert make_model_cards.stale_cards(CARDS_DIR) == [], "run: python scripts/make_model_cards.py"
    assert sorted(path.name for path in CARDS_DIR.glob("*.md")) == sorted(f"{name}.md" for name in PRESETS)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_card_metadata(name):
    preset = PRESETS[name]
    card = ModelCard.load(CARDS_DIR / f"{name}.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "image-segmentation"
    assert data["license"] == MMSEG_CODE_LICENSE == "apache-2.0"
    assert data["tags"] == [
        "vision",
        "image-segmentation",
        "semantic-segmentation",
        "setr",
        "vit",
        "mmsegmentation",
        preset.dataset,
    ]
    assert data["datasets"] == [HUB_DATASETS[preset.dataset].hub_id]
    assert data["datasets"] == [{"ade20k": "zhoubolei/scene_parse_150", "cityscapes": "cityscapes"}[preset.dataset]]
    assert data["metrics"] == ["mean_iou"]
    assert data["base_model"] == PRETRAINED_ENCODER_HUB_ID == "google/vit-large-patch16-384"
    assert data["model-index"][0]["name"] == name


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_model_index_holds_the_reported_numbers_named_as_reported(name):
    preset = PRESETS[name]
    card = ModelCard.load(CARDS_DIR / f"{name}.md")
    metrics = _metrics(card)
    assert [metric["value"] for metric in metrics] == [preset.miou_reported, preset.miou_ms_flip_reported]
    assert "single-scale" in metrics[0]["name"] and "multi-scale + flip" in metrics[1]["name"]
    dataset = HUB_DATASETS[preset.dataset]
    for metric in metrics:
        assert metric["type"] == "mean_iou"
        assert REPORTED in metric["name"] and MEASURED not in metric["name"]
        assert metric["task"]["type"] == "image-segmentation"
        assert metric["dataset"] == {"name": dataset.pretty_name, "type": dataset.hub_id, "split": "validation"}
        assert metric["source"] == {"url": MMSEG_MODEL_ZOO_URL, "name": "mmsegmentation SETR model zoo"}
    # the EvalResult view of the same metadata
    assert [result.metric_value for result in card.data.eval_results] == [
        preset.miou_reported,
        preset.miou_ms_flip_reported,
    ]


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_body_states_the_variant_provenance_and_protocol(name):
    preset = PRESETS[name]
    text = (CARDS_DIR / f"{name}.md").read_text(encoding="utf-8")
    longest, shortest = preset.test_scale
    for fact in (
        preset.url,
        preset.log_url,
        preset.config_url,
        preset.mmseg_config,
        f"{preset.mmseg_v0_config}.py",
        f"python {CONVERTER_SCRIPT} --checkpoint {preset.name}",
        "model.backbone.patch_bias=True",
        "mmsegmentation 1.2.2",
        f"{preset.crop_size}×{preset.crop_size}",
        f"{preset.iterations:,} iterations",
        f"batch {preset.batch_size} ({preset.gpus} GPUs × {preset.batch_size // preset.gpus})",
        f"base learning rate {preset.learning_rate}",
        f'{{"shortest_edge": {shortest}, "longest_edge": {longest}}}',
        f'`inference_mode="slide"`, `slide_crop_size={preset.crop_size}` and `slide_stride={preset.slide_stride}`',
        "0.5, 0.75, 1.0, 1.25, 1.5, 1.75",
        "softmax probabilities averaged",
        "123.675, 116.28, 103.53",
        "58.395, 57.12, 57.375",
        f"| {preset.miou_reported:.2f} | {preset.memory_gb:.2f} GB |",
        f"| {preset.miou_ms_flip_reported:.2f} |",
        "score=None",
        "not** been re-measured",
        "random weights",
        f"```bibtex\n{CITATION}\n```",
        PRETRAINED_ENCODER_HUB_ID,
        "jx_vit_large_p16_384",
        "augreg",
    ):
        assert fact in text, fact
    assert (f"| {preset.fps:.2f} |" if preset.fps is not None else "| not reported |") in text
    if preset.dataset == "ade20k":
        assert "`do_reduce_labels=True`" in text and "raw ADE20K annotation value *c* + 1" in text
    else:
        assert "trainIds" in text and "`do_reduce_labels` stays `False`" in text


def test_citation_is_the_model_zoo_one():
    seeds = sorted(Path("/work/shared/seeds").glob("000_*.txt"))
    if not seeds:
        pytest.skip("the mmsegmentation model-zoo seed page is not available here")
    assert f"```bibtex\n{CITATION}\n```" in seeds[0].read_text(encoding="utf-8")


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_usage_snippets_use_the_repo_id(name):
    preset = PRESETS[name]
    text = (CARDS_DIR / f"{name}.md").read_text(encoding="utf-8")
    blocks = _python_blocks(text)
    assert len(blocks) == 3
    ids = re.findall(r'(?:repo_id = |model=)"([^"]+)"', "".join(blocks))
    assert ids and set(ids) == {preset.hub_repo_id}
    assert "import transformers_setr" in blocks[0] and "AutoModelForSemanticSegmentation" in blocks[0]
    assert "AutoImageProcessor" in blocks[0] and "post_process_semantic_segmentation" in blocks[0]
    assert 'pipeline("image-segmentation", model=' in blocks[1]
    assert "transformers_setr" not in blocks[2] and blocks[2].count("trust_remote_code=True") == 3


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_labels_in_the_card_match_the_label_tables(name):
    preset = PRESETS[name]
    text = (CARDS_DIR / f"{name}.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"<details>.*?```json\n(.*?)```\s*</details>", text, flags=re.S)
    labels = {int(index): label for index, label in json.loads(block).items()}
    assert labels == id2label_for(preset.dataset)
    assert len(labels) == preset.num_labels
    if preset.dataset == "ade20k":
        assert len(labels) == 150 and labels[7] == "bed "


# --- hub naming, helpers, facts the cards rely on --------------------------------------------------------------------


def test_hub_repo_name_scheme():
    for preset in PRESETS.values():
        assert hub_repo_id(preset) == preset.hub_repo_id == f"{HUB_ORGANISATION}/{preset.name}"
        assert HUB_REPO_NAME_SCHEME.format(organisation="org", preset_name=preset.name) == f"org/{preset.name}"


def test_worked_examples():
    assert keep_ratio_size(1024, 2048, (2049, 1025)) == (1025, 2049)
    assert keep_ratio_size(480, 640, (2048, 512)) == (512, 683)
    assert slide_window_grid(1025, 2049, 768, 512) == (2, 4)
    assert slide_window_grid(512, 683, 512, 341) == (1, 2)
    assert slide_window_grid(300, 300, 512, 341) == (1, 1)


def vit_parameters(width: int, layers: int, mlp: int, positions: int, patch: int = 16) -> int:
    """A ViT encoder's parameters counted by hand: patch embedding with bias, cls token, position table, per layer
    two LayerNorms, q/k/v/o with biases and the MLP; no final LayerNorm."""
    layer = 2 * 2 * width + 4 * (width * width + width) + (width * mlp + mlp) + (mlp * width + width)
    return 3 * patch * patch * width + width + width + positions * width + layers * layer


def test_parameter_counts_come_from_the_model_built_from_the_config():
    # the encoder counts of the released models (mmsegmentation, plus the patch-embedding bias)
    assert vit_parameters(1024, 24, 4096, 32 * 32 + 1) == 304_147_456
    assert vit_parameters(1024, 24, 4096, 48 * 48 + 1) == 305_458_176
    for name, count, text in (
        ("setr-pup-vit-large-ade20k-512", 304_147_456, "(304.1 M parameters)"),
        ("setr-mla-vit-large-cityscapes-768", 305_458_176, "(305.5 M parameters)"),
    ):
        assert encoder_parameters(preset_config(PRESETS[name])) == count
        assert text in (CARDS_DIR / f"{name}.md").read_text(encoding="utf-8")
    # any other config: its own count, in the converted card too
    config = tiny_config("naive", num_hidden_layers=3, out_indices=[0, 1, 2])
    assert encoder_parameters(config) == vit_parameters(32, 3, 64, 4 * 4 + 1)
    card = str(build_converted_model_card(config, checkpoint_name="/somewhere/tiny.pth"))
    assert (
        f"- Encoder: ViT, 3 layers, width 32, 2 heads, patch 16 ({vit_parameters(32, 3, 64, 17):,} parameters);"
        in card
    )
    assert "/somewhere" not in card and "`tiny.pth`" in card


def test_the_heads_are_described_from_the_config():
    # the released ones: the layers feeding the heads are out_indices (+1) and the auxiliary heads' indices into them
    assert "encoder layers 6, 12, 18 and 24 each go" in decoder_description(
        preset_config(PRESETS["setr-mla-vit-large-ade20k-512-b8"])
    )
    naive = preset_config(PRESETS["setr-naive-vit-large-cityscapes-768"])
    assert "the output of encoder layer 24 goes through a LayerNorm, a 1×1 convolution (256 channels)" in (
        decoder_description(naive)
    )
    assert "three auxiliary SETR-UP heads on encoder layers 10, 15 and 20 (1 convolution each, a 1×1 kernel" in (
        auxiliary_description(naive)
    )
    # another architecture: another text, never the released one's
    mla = SetrConfig.for_decoder("mla", num_hidden_layers=8, out_indices=[1, 3, 5, 7], decoder_up_scale=2)
    text = decoder_description(mla)
    assert "encoder layers 2, 4, 6 and 8 each go" in text and "1/8 of the (padded) input resolution" in text
    assert "six" not in text and "24" not in text
    assert "four auxiliary FCN heads" in auxiliary_description(mla)
    pup = SetrConfig.for_decoder("pup", num_hidden_layers=12, out_indices=[2, 5, 8, 11], auxiliary_in_indices=[0, 2])
    assert "output of encoder layer 12 goes through a LayerNorm and four stages of 3×3 convolution" in (
        decoder_description(pup)
    )
    assert "at the full (padded) input resolution" in decoder_description(pup)
    assert "two auxiliary SETR-UP heads on encoder layers 3 and 9 (2 convolutions each, a 3×3 kernel" in (
        auxiliary_description(pup)
    )


def test_the_templates_are_package_data():
    from importlib.resources import files

    templates = files("transformers_setr.cards").joinpath("templates")
    names = {path.name for path in templates.iterdir()}
    assert {"released.md", "trained.md", "converted.md", "usage.md", "citation.bib", "datasets.json"} <= names
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '"cards/templates/*"' in pyproject


def test_card_references_exist():
    from transformers_setr.conversion.from_mmseg import processor_for
    from transformers_setr.inference import multi_scale_flip_segmentation

    assert callable(multi_scale_flip_segmentation)
    assert (ROOT / CONVERTER_SCRIPT).is_file()
    fields = SetrConfig.__dataclass_fields__
    assert {"inference_mode", "slide_crop_size", "slide_stride", "slide_batch_size"} <= set(fields)
    for preset in PRESETS.values():
        processor = processor_for(preset, None)
        longest, shortest = preset.test_scale
        assert processor.size["shortest_edge"] == shortest and processor.size["longest_edge"] == longest
        assert processor.do_reduce_labels == (preset.dataset == "ade20k")


# --- measured results and options -----------------------------------------------------------------------------------


def test_measured_result_appears_only_when_given():
    preset = PRESETS["setr-pup-vit-large-ade20k-512"]
    plain = build_model_card(preset)
    assert MEASURED not in str(plain) and len(plain.data.eval_results) == 2

    measured = {"mIoU": 48.1, "protocol": "slide", "split": "validation", "notes": "2,000 images, float32."}
    card = ModelCard(str(build_model_card(preset, measured=measured)))  # round trip through the text
    metrics = _metrics(card)
    assert len(metrics) == 3
    reported, extra = metrics[:2], metrics[2]
    assert all(REPORTED in metric["name"] for metric in reported)
    assert extra["value"] == 48.1 and MEASURED in extra["name"] and "reported" not in extra["name"]
    assert extra["source"] is None  # not attributed to mmsegmentation's page
    assert extra["dataset"]["split"] == "validation" and extra["dataset"]["config"] == "scene_parsing"
    assert [metric["value"] for metric in reported] == [preset.miou_reported, preset.miou_ms_flip_reported]
    assert "| 48.10 |" in card.text and "2,000 images, float32." in card.text
    assert "not** been re-measured" not in card.text


def test_measured_result_with_its_own_source_and_protocol():
    preset = PRESETS["setr-naive-vit-large-cityscapes-768"]
    card = build_model_card(
        preset,
        measured={"mIoU": 80.0, "protocol": "ms+flip", "source_url": "https://example.org/eval.log"},
    )
    extra = _metrics(ModelCard(str(card)))[2]
    assert extra["source"] == {"url": "https://example.org/eval.log", "name": "transformers_setr evaluation"}
    assert "multi-scale + flip" in extra["name"] and extra["dataset"]["config"] == "gtFine"


@pytest.mark.parametrize(
    "measured, message",
    [
        ({"protocol": "slide"}, "needs 'mIoU'"),
        ({"mIoU": 0.481}, "in percent"),
        ({"mIoU": 101}, "in percent"),
        ({"mIoU": float("nan")}, "finite"),
        ({"mIoU": "48"}, "finite"),
        ({"mIoU": 48.1, "protocol": "tta"}, "protocol"),
        ({"mIoU": 48.1, "accuracy": 1}, "unknown keys"),
        ({"mIoU": 48.1, "dataset_config": None}, "dataset_config or dataset_revision"),
    ],
)
def test_invalid_measured_results_are_refused(measured, message):
    with pytest.raises(ValueError, match=message):
        build_model_card(PRESETS["setr-pup-vit-large-ade20k-512"], measured=measured)


def test_repo_id_override():
    preset = PRESETS["setr-mla-vit-large-ade20k-512-b8"]
    text = str(build_model_card(preset, repo_id="someone/my-setr"))
    ids = re.findall(r'(?:repo_id = |model=)"([^"]+)"', "".join(_python_blocks(text)))
    assert set(ids) == {"someone/my-setr"} and preset.hub_repo_id not in text


def test_cards_save_and_load(tmp_path):
    preset = PRESETS["setr-pup-vit-large-cityscapes-768"]
    card = build_model_card(preset)
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert str(loaded) == str(card)
    assert loaded.data.to_dict() == card.data.to_dict()


# --- the generator script ---------------------------------------------------------------------------------------------


def test_script_writes_and_checks(tmp_path, capsys):
    assert make_model_cards.main(["--output-dir", str(tmp_path)]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(f"{name}.md" for name in PRESETS)
    assert make_model_cards.main(["--check", "--output-dir", str(tmp_path)]) == 0

    card = tmp_path / f"{PRESET_NAMES[0]}.md"
    card.write_text(card.read_text(encoding="utf-8").replace("48.28", "48.30"), encoding="utf-8")
    assert make_model_cards.main(["--check", "--output-dir", str(tmp_path)]) == 1
    assert PRESET_NAMES[0] in capsys.readouterr().err

    assert make_model_cards.main(["--output-dir", str(tmp_path)]) == 0
    (tmp_path / f"{PRESET_NAMES[1]}.md").unlink()
    assert make_model_cards.main(["--check", "--output-dir", str(tmp_path)]) == 1
    assert make_model_cards.main(["--output-dir", str(tmp_path)]) == 0
    (tmp_path / "setr-old.md").write_text("stale", encoding="utf-8")
    assert make_model_cards.main(["--check", "--output-dir", str(tmp_path)]) == 1
    assert "setr-old.md" in capsys.readouterr().err


def test_script_writes_atomically(tmp_path, monkeypatch):
    target = tmp_path / "card.md"
    target.write_text("old", encoding="utf-8")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)  # what the atomic write renames with
    with pytest.raises(OSError):
        make_model_cards.write_atomically(target, "new")
    assert target.read_text(encoding="utf-8") == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["card.md"]  # no temporary file left behind


# --- the usage snippets run (on a tiny random-weight model standing in for the Hub repo) -------------------------


@pytest.fixture
def stand_in_repo(tmp_path):
    config = tiny_config("pup", inference_mode="slide", slide_crop_size=64, slide_stride=43)
    folder = tmp_path / "setr-stand-in"
    SetrForSemanticSegmentation(config).eval().save_pretrained(folder)
    SetrImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 256}).save_pretrained(folder)
    image = tmp_path / "photo.png"
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (70, 100, 3), generator=generator, dtype=torch.uint8).numpy()
    Image.fromarray(pixels).save(image)
    return folder, image


@pytest.mark.parametrize("name", ["setr-pup-vit-large-ade20k-512", "setr-mla-vit-large-cityscapes-768"])
def test_usage_snippets_run(name, stand_in_repo, capsys):
    folder, image = stand_in_repo
    preset = PRESETS[name]
    for block in _python_blocks(str(build_model_card(preset))):
        code = block.replace(preset.hub_repo_id, str(folder))
        code = re.sub(r'"(room\.jpg|street\.png)"', f'"{image}"', code)
        assert preset.hub_repo_id not in code
        namespace = {}
        exec(compile(code, f"<{name} card snippet>", "exec"), namespace)
        if "segmenter" in namespace:
            segments = namespace["segmenter"](str(image))
            assert segments and all(segment["score"] is None for segment in segments)
    assert capsys.readouterr().out  # the snippets print their results


def test_a_template_placeholder_reads_a_field_or_fails_loudly():
    from transformers_setr.cards.templating import CardTemplate, TemplateFields

    preset = PRESETS["setr-pup-vit-large-ade20k-512"]
    fields = TemplateFields(preset=preset, text={"domain": "rooms"})
    # a sentence's full stop, a file suffix in braces and a key of a mapping
    filled = CardTemplate("$preset.name. ${preset.mmseg_v0_config}.py $text.domain, $$5").substitute(fields)
    assert filled == f"{preset.name}. {preset.mmseg_v0_config}.py rooms, $5"
    with pytest.raises(AttributeError, match="no_such_fact"):
        CardTemplate("$preset.no_such_fact").substitute(fields)
    with pytest.raises(KeyError):
        CardTemplate("$config.num_hidden_layers").substitute(fields)
    with pytest.raises(KeyError):
        CardTemplate("$text.no_such_text").substitute(fields)
