"""Losses chosen in the config (`SetrConfig.loss`, `loss_sampler`), binary models (`num_labels=1`) and the stock
re-head flow (issue 21). The loss values are compared with mmsegmentation 1.2.2's own functions: the fixtures come
from `scripts/make_loss_fixtures.py`, run in the reference environment."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoModelForSemanticSegmentation, SegformerConfig, SegformerForSemanticSegmentation

from transformers_setr import SetrConfig, SetrForSemanticSegmentation, SetrImageProcessorPil
from transformers_setr.cli import main as setr
from transformers_setr.models.setr.loss_setr import head_loss, ohem_pixel_weights
from transformers_setr.models.setr.modeling_setr import segmentation_loss

from conftest import tiny_config
from helpers.training_runs import TINY_FIELDS

FIXTURES = torch.load(Path(__file__).resolve().parents[1] / "fixtures" / "losses" / "losses.pt", weights_only=True)
CASES = {case["name"]: case for case in FIXTURES["cases"]}


pytestmark = pytest.mark.usefixtures("offline_datasets")


# --- definitions: mmseg's values -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_matches_mmseg(name):
    case = CASES[name]
    value = head_loss(case["logits"], case["labels"], 255, case["loss"], case["loss_sampler"])
    assert FIXTURES["mmseg_version"] == "1.2.2"
    assert abs(value.item() - case["value"]) <= 1e-6, (value.item(), case["value"])


def test_fixtures_exercise_what_they_name():
    """The cases are not degenerate: ignored pixels are present, OHEM keeps a strict subset of the labelled pixels,
    and each option changes the value."""
    for name in ("ce_default", "dice_sigmoid", "focal_default", "ohem_thresh", "bce_default"):
        assert (CASES[name]["labels"] == 255).any(), name
    for name in ("ohem_thresh", "ohem_thresh_min_kept_dominates", "ohem_top_loss", "bce_ohem_top_loss"):
        case = CASES[name]
        valid = case["labels"] != 255
        sampler = {k: v for k, v in case["loss_sampler"].items() if k != "type"}
        weights = ohem_pixel_weights(
            case["logits"],
            case["labels"],
            255,
            thresh=sampler.get("thresh"),
            min_kept=sampler["min_kept"],
            pixel_losses=lambda c=case: head_loss_per_pixel(c),
        )
        kept = int(weights[valid].sum())
        assert 0 < kept < int(valid.sum()) and not weights[~valid].any(), (name, kept)
        plain = head_loss(case["logits"], case["labels"], 255, case["loss"], None)
        assert abs(plain.item() - case["value"]) > 1e-3, name
    assert CASES["ce_default"]["value"] != pytest.approx(
        head_loss(CASES["ce_default"]["logits"], CASES["ce_default"]["labels"], 255, [{"type": "dice"}], None).item()
    )


def head_loss_per_pixel(case) -> torch.Tensor:
    from transformers_setr.models.setr.loss_setr import _term_loss

    return sum(
        term.get("weight", 1.0) * _term_loss(term, case["logits"], case["labels"], 255, None, reduce=False)
        for term in case["loss"]
    )


@pytest.mark.parametrize("avg_non_ignore", [False, True])
def test_class_weighted_cross_entropy_with_ignored_pixels_is_pytorchs_weighted_mean(avg_non_ignore):
    """mmseg 1.2.2 fails on ignored pixels with class weights; the package's extension is PyTorch's weighted mean."""
    case = CASES["ce_default"]
    weights = [0.5, 1.0, 2.0, 4.0]
    term = {"type": "cross_entropy", "class_weight": weights, "avg_non_ignore": avg_non_ignore}
    value = head_loss(case["logits"], case["labels"], 255, [term], None)
    expected = F.cross_entropy(case["logits"], case["labels"], weight=torch.tensor(weights), ignore_index=255)
    assert value.item() == pytest.approx(expected.item(), abs=1e-6)


def test_default_loss_is_unchanged_and_equals_an_explicit_cross_entropy():
    torch.manual_seed(0)
    model = SetrForSemanticSegmentation(tiny_config("pup")).eval()
    pixels, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    labels[:, :4] = 255
    with torch.no_grad():
        output = model(pixels, labels=labels)
        expected = segmentation_loss(output.logits, labels, 255) + 0.4 * sum(
            segmentation_loss(logits, labels, 255) for logits in output.auxiliary_logits
        )
        assert torch.equal(output.loss, expected)  # loss=None: the released recipe's path, bit for bit
        model.config.loss = [{"type": "cross_entropy"}]
        explicit = model(pixels, labels=labels).loss
    # mmseg divides by (pixels + float32 eps): equal to the default within rounding
    assert explicit.item() == pytest.approx(output.loss.item(), rel=1e-6)


def test_model_loss_sums_the_terms_over_every_head():
    torch.manual_seed(0)
    loss = [{"type": "cross_entropy", "class_weight": [1.0, 2.0, 1.0, 1.0, 3.0]}, {"type": "dice", "weight": 0.5}]
    config = tiny_config("naive", loss=loss, auxiliary_loss_weight=0.3)
    model = SetrForSemanticSegmentation(config).eval()
    pixels, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    with torch.no_grad():
        output = model(pixels, labels=labels)
        heads = [head_loss(output.logits, labels, 255, loss, None)]
        heads += [0.3 * head_loss(logits, labels, 255, loss, None) for logits in output.auxiliary_logits]
    assert len(heads) == 4 and output.loss.item() == pytest.approx(sum(heads).item(), rel=1e-6)
    dice_only = SetrForSemanticSegmentation(tiny_config("naive", loss=[{"type": "dice"}]))
    dice_only.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert dice_only.eval()(pixels, labels=labels).loss.item() != pytest.approx(output.loss.item(), rel=1e-3)


# --- configuration --------------------------------------------------------------------------------------------


def test_loss_round_trips_through_config_json(tmp_path):
    loss = [
        {"type": "cross_entropy", "class_weight": [1.0, 5.0, 1.0, 1.0, 1.0], "avg_non_ignore": True},
        {"type": "focal", "gamma": 2.0, "alpha": 0.25, "weight": 0.5},
    ]
    sampler = {"type": "ohem", "thresh": 0.7, "min_kept": 1000}
    # (focal cannot take OHEM's weights: the round trip uses the sampler with CE alone)
    model = SetrForSemanticSegmentation(tiny_config("mla", loss=loss[:1], loss_sampler=sampler))
    model.save_pretrained(tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["loss"] == loss[:1] and saved["loss_sampler"] == sampler
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "a")
    assert reloaded.config.loss == loss[:1] and reloaded.config.loss_sampler == sampler
    SetrConfig(num_labels=5, loss=loss).save_pretrained(tmp_path / "b")
    assert SetrConfig.from_pretrained(tmp_path / "b").loss == loss


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(loss=[{"type": "lovasz"}]), "loss[0]: unknown type 'lovasz'"),
        (
            dict(loss=[{"type": "cross_entropy", "class_weight": [1, 2]}]),
            "class_weight has 2 entries for num_labels=5",
        ),
        (dict(loss=[{"type": "dice", "weight": -1}]), "weight must be a number >= 0"),
        (dict(loss=[{"type": "dice", "exponent": 2}]), "dice has no option 'exponent'"),
        (dict(loss=[{"type": "focal", "alpha": 1.5}]), "alpha must be a number in [0, 1]"),
        (dict(loss=[]), "loss must be a non-empty list"),
        (dict(loss=[{"type": "binary_cross_entropy"}]), "binary_cross_entropy is for binary models"),
        (dict(num_labels=1, loss=[{"type": "cross_entropy"}]), "cross_entropy needs num_labels > 1"),
        (dict(loss_sampler={"type": "ohem", "min_kept": 1}), "min_kept must be an int > 1"),
        (dict(loss_sampler={"type": "topk"}), "loss_sampler must be null or"),
        (dict(loss=[{"type": "dice"}], loss_sampler={"type": "ohem"}), "which dice cannot take"),
    ],
)
def test_invalid_loss_configs_are_refused_in_one_line(kwargs, message):
    with pytest.raises(Exception) as error:
        SetrConfig(**{"num_labels": 5, **kwargs})
    reason = str(error.value.__cause__ or error.value)
    assert message in reason and "\n" not in reason, reason


# --- binary models --------------------------------------------------------------------------------------------


def test_binary_model_trains_with_segformers_bce_and_thresholds_to_two_classes():
    torch.manual_seed(0)
    model = SetrForSemanticSegmentation(tiny_config("pup", id2label={0: "lesion"}, use_auxiliary_head=False))
    assert model.config.is_binary and model.config.prediction_id2label == {0: "background", 1: "lesion"}
    pixels, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 2, (2, 64, 64))
    labels[0, :8] = 255
    output = model(pixels, labels=labels)
    # transformers' SegFormer, num_labels == 1 (modeling_segformer.py), written out here
    upsampled = F.interpolate(output.logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    valid = ((labels >= 0) & (labels != 255)).float()
    expected = F.binary_cross_entropy_with_logits(upsampled.squeeze(1), labels.float(), reduction="none") * valid
    assert output.logits.shape[1] == 1 and output.loss.item() == pytest.approx(expected.mean().item(), rel=1e-6)
    output.loss.backward()
    with pytest.raises(ValueError, match=r"labels contain values \[2\] outside \[0, 2\)"):
        model(pixels, labels=torch.full((2, 64, 64), 2))
    processor = SetrImageProcessorPil()
    maps = processor.post_process_semantic_segmentation(output, target_sizes=[(40, 50), (64, 64)])
    assert maps[0].shape == (40, 50) and set(maps[1].unique().tolist()) <= {0, 1}
    assert torch.equal(maps[1], (upsampled[1, 0] > 0).long()) and 0 < maps[1].sum() < 64 * 64


def write_binary_folder(root: Path, count: int = 8, size: int = 32) -> Path:
    """Photographs of one bright square (the class 'lesion', about 10 % of the pixels) on noise, masks 0/1."""
    rng = np.random.default_rng(0)
    for split, number in (("train", count), ("val", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for index in range(number):
            image = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            mask = np.zeros((size, size), np.uint8)
            top, left = rng.integers(0, size - 10, 2)
            image[top : top + 10, left : left + 10] = 230
            mask[top : top + 10, left : left + 10] = 1
            Image.fromarray(image).save(root / "images" / split / f"{index}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{index}.png")
    (root / "id2label.json").write_text(json.dumps({"0": "background", "1": "lesion"}))
    return root


def train_args(data: Path, output_dir: Path, overrides: dict, steps: int = 8) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--config_overrides",
        json.dumps({**TINY_FIELDS, **overrides}),
        "--crop_size",
        "32",
        "--scale",
        "64,32",
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "0.05",
        "--max_steps",
        str(steps),
        "--logging_steps",
        "1",
        "--eval_strategy",
        "no",
        "--do_eval",
        "false",
        "--output_dir",
        str(output_dir),
        "--report_to",
        "none",
    ]


def logged_losses(output_dir: Path) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def test_setr_train_builds_a_binary_model_with_bce_and_dice(tmp_path):
    data = write_binary_folder(tmp_path / "lesions")
    output_dir = tmp_path / "binary"
    overrides = {"num_labels": 1, "loss": [{"type": "binary_cross_entropy"}, {"type": "dice", "weight": 1.0}]}
    assert setr(train_args(data, output_dir, overrides)) == 0
    config = json.loads((output_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "lesion"} and config["loss"] == overrides["loss"]
    losses = logged_losses(output_dir)
    assert len(losses) == 8 and all(np.isfinite(losses)) and min(losses[-3:]) < losses[0]
    model = AutoModelForSemanticSegmentation.from_pretrained(output_dir).eval()
    assert model.config.is_binary and model.config.prediction_id2label == {0: "background", 1: "lesion"}


def test_setr_train_with_a_loss_list_and_ohem(tmp_path):
    data = write_binary_folder(tmp_path / "lesions")
    output_dir = tmp_path / "weighted"
    loss = [{"type": "cross_entropy", "class_weight": [1.0, 10.0], "avg_non_ignore": True}]
    overrides = {"loss": loss, "loss_sampler": {"type": "ohem", "thresh": 0.7, "min_kept": 64}}
    assert setr(train_args(data, output_dir, overrides, steps=6)) == 0
    config = json.loads((output_dir / "config.json").read_text())
    assert config["num_labels"] == 2 if "num_labels" in config else len(config["id2label"]) == 2
    assert config["loss"] == loss and config["loss_sampler"] == overrides["loss_sampler"]
    assert all(np.isfinite(logged_losses(output_dir)))


def test_accelerate_loop_trains_a_binary_model_with_its_loss(tmp_path):
    data = write_binary_folder(tmp_path / "lesions", count=4)
    output_dir = tmp_path / "loop"
    loss = [{"type": "binary_cross_entropy", "avg_non_ignore": True}, {"type": "dice", "naive_dice": True}]
    arguments = train_args(data, output_dir, {"num_labels": 1, "loss": loss}, steps=3)
    for flag in ("--eval_strategy", "--report_to"):  # Trainer options the loop does not have
        index = arguments.index(flag)
        del arguments[index : index + 2]
    assert setr(["train-loop", *arguments[1:], "--checkpointing_steps", "1000"]) == 0
    assert json.loads((output_dir / "config.json").read_text())["loss"] == loss
    losses = json.loads((output_dir / "train_losses.json").read_text())["losses"]
    assert len(losses) == 3 and all(np.isfinite(losses))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"loss": [{"type": "dice", "weight": -1}]}, "loss[0]: weight must be a number >= 0, got -1"),
        ({"loss": [{"type": "cross_entropy", "class_weight": [1.0]}]}, "class_weight has 1 entries for num_labels=2"),
        ({"num_labels": 3}, "only num_labels=1 may be given"),
        ({"num_labels": 1, "loss": [{"type": "cross_entropy"}]}, "cross_entropy needs num_labels > 1"),
    ],
)
def test_setr_train_refuses_a_bad_loss_in_one_line(tmp_path, capsys, overrides, message):
    data = write_binary_folder(tmp_path / "lesions", count=2)
    with pytest.raises(SystemExit) as exit_:
        setr(train_args(data, tmp_path / "out", overrides, steps=1))
    error = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and error.startswith("setr train: error: --config_overrides")
    assert message in error and "\n" not in error and "Traceback" not in error, error
    assert not (tmp_path / "out" / "config.json").exists()


def test_fine_tuning_a_saved_model_into_a_binary_one_with_its_loss(tmp_path, capsys):
    data = write_binary_folder(tmp_path / "lesions", count=4)
    SetrForSemanticSegmentation(tiny_config("naive", palette=[[9, 9, 9]] * 5)).save_pretrained(tmp_path / "base")
    loss = [{"type": "binary_cross_entropy", "class_weight": [4.0]}, {"type": "dice"}]
    arguments = train_args(data, tmp_path / "run", {"num_labels": 1, "loss": loss}, steps=2)
    arguments[arguments.index("--config_overrides") + 1] = json.dumps({"num_labels": 1, "loss": loss})
    assert setr([*arguments, "--model_name_or_path", str(tmp_path / "base")]) == 0
    model = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "run")
    assert model.config.id2label == {0: "lesion"} and model.config.loss == loss and model.config.palette is None
    assert model.config.hidden_size == 32 and model.decode_head.classifier.out_channels == 1
    # the architecture is the checkpoint's: a different value is refused, the same one accepted
    arguments[arguments.index("--config_overrides") + 1] = json.dumps({"hidden_size": 64})
    with pytest.raises(SystemExit):
        setr([*arguments, "--model_name_or_path", str(tmp_path / "base"), "--output_dir", str(tmp_path / "other")])
    error = capsys.readouterr().err
    assert "--config_overrides ['hidden_size'] cannot change a model loaded with --model_name_or_path" in error


def test_binary_needs_two_class_data(tmp_path, capsys):
    data = write_binary_folder(tmp_path / "lesions", count=2)
    (data / "id2label.json").write_text(json.dumps({"0": "background", "1": "lesion", "2": "scar"}))
    with pytest.raises(SystemExit):
        setr(train_args(data, tmp_path / "out", {"num_labels": 1}, steps=1))
    assert "num_labels=1 (a binary model) needs data with two classes" in capsys.readouterr().err


# --- the stock re-head flow -----------------------------------------------------------------------------------


def tiny_segformer(id2label: dict[int, str]) -> SegformerForSemanticSegmentation:
    sizes = dict(num_encoder_blocks=4, depths=[1] * 4, num_attention_heads=[1] * 4, hidden_sizes=[8] * 4)
    return SegformerForSemanticSegmentation(SegformerConfig(**sizes, decoder_hidden_size=8, id2label=id2label))


def test_reheading_with_num_labels_does_what_stock_transformers_does(tmp_path):
    three = {0: "sky", 1: "road", 2: "car"}
    tiny_segformer(three).save_pretrained(tmp_path / "segformer")
    model = SetrForSemanticSegmentation(tiny_config("pup", id2label=three, palette=[[1, 2, 3]] * 3))
    model.save_pretrained(tmp_path / "setr")
    generic = {i: f"LABEL_{i}" for i in range(7)}
    stock = AutoModelForSemanticSegmentation.from_pretrained(
        tmp_path / "segformer", num_labels=7, ignore_mismatched_sizes=True
    )
    ours = AutoModelForSemanticSegmentation.from_pretrained(
        tmp_path / "setr", num_labels=7, ignore_mismatched_sizes=True
    )
    assert stock.config.id2label == ours.config.id2label == generic
    assert ours.config.label2id == stock.config.label2id and ours.config.palette is None
    assert ours.decode_head.classifier.out_channels == 7 and stock.decode_head.classifier.out_channels == 7
    assert ours(torch.randn(1, 3, 64, 64)).logits.shape[1] == 7
    # the same count keeps the names (and the palette)
    same = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "setr", num_labels=3)
    assert same.config.id2label == three and same.config.palette == [[1, 2, 3]] * 3
    # at construction, both warn and the count wins
    assert SetrConfig(num_labels=7, id2label=three).id2label == SegformerConfig(num_labels=7, id2label=three).id2label
    # a binary re-head
    binary = AutoModelForSemanticSegmentation.from_pretrained(
        tmp_path / "setr", num_labels=1, ignore_mismatched_sizes=True
    )
    assert binary.config.is_binary and binary.config.id2label == {0: "LABEL_0"}
