"""The user's own data and classes (issue 13): every source, every origin of id2label, reduce labels on and off, the
refusals, and `scripts/train.py` on each synthetic layout learning the user's classes."""

import io
import json
import re
import shutil
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from transformers_setr import SetrForSemanticSegmentation
from transformers_setr.data import DatasetFormatError, load_segmentation_data
from transformers_setr.data import sources as data_module
from transformers_setr.data.label_tables import ADE20K_CLASSES, generate_palette
from transformers_setr.data.synthetic import SIDEWALK_CLASSES, make_synthetic_custom
from transformers_setr.training.augmentation import SetrTrainAugmentation
from transformers_setr.training.train_command import main as main_trainer

from helpers.training_runs import TINY, common_args, run_train_script, step_losses

SIZE = (48, 64)  # (height, width)
THREE_CLASSES = {0: "background", 1: "cat", 2: "dog"}


pytestmark = pytest.mark.usefixtures("offline_datasets")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("custom")
    kwargs = {"num_train": 12, "num_validation": 4, "image_size": SIZE, "seed": 0}
    return {
        layout: make_synthetic_custom(root / layout, layout=layout, **kwargs)
        for layout in ("parquet", "folder", "saved")
    }


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def three_class_rows(count: int = 3) -> dict[str, list]:
    """Images and masks of the user's 3 classes, ids 0, 1, 2 in every mask."""
    rng = np.random.default_rng(0)
    rows = {"image": [], "annotation": []}
    for index in range(count):
        mask = np.zeros((8, 12), np.uint8)
        mask[:, 4:8], mask[:, 8:] = 1, 2
        image = rng.integers(0, 255, (8, 12, 3), dtype=np.uint8)
        rows["image"].append({"bytes": png(image), "path": f"img{index}.png"})
        rows["annotation"].append({"bytes": png(mask), "path": f"img{index}_mask.png"})
    return rows


def write_image_annotation_parquet(folder: Path) -> Path:
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    for split in ("train", "validation"):
        table = datasets.Dataset.from_dict(three_class_rows(), features=features).data.table
        (folder / "data").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder


# --- the worst defect: the user's image + annotation data is never ADE20K ----------------------------------------


def test_image_annotation_data_with_own_classes_is_refused_then_custom_never_ade20k(tmp_path):
    folder = write_image_annotation_parquet(tmp_path / "pets")
    with pytest.raises(DatasetFormatError, match=r"pets: not ADE20K or Cityscapes.*--id2label FILE\.json.*id2label"):
        load_segmentation_data(folder, cache_dir=tmp_path / "cache")

    data = load_segmentation_data(folder, id2label=THREE_CLASSES, cache_dir=tmp_path / "cache")
    assert (data.dataset, data.num_labels, data.id2label) == ("custom", 3, THREE_CLASSES)
    np.testing.assert_array_equal(np.unique(data.example("validation", 0).labels), [0, 1, 2])  # never 255 / "wall"

    ade = load_segmentation_data(folder, "ade20k", cache_dir=tmp_path / "cache")  # only when named
    assert ade.dataset == "ade20k" and ade.num_labels == 150


def test_hub_dataset_with_image_and_annotation_columns_is_custom(monkeypatch):
    calls = []

    def load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict(three_class_rows(4), features=features)})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(data_module, "_hub_id2label", lambda repo, revision: None)
    with pytest.raises(DatasetFormatError, match="someone/pets: not ADE20K or Cityscapes"):
        load_segmentation_data("someone/pets")
    # the repo's id2label.json (the transformers example's convention), and the configuration name passed on
    monkeypatch.setattr(
        data_module, "_hub_id2label", lambda repo, revision: {"0": "background", "1": "cat", "2": "dog"}
    )
    data = load_segmentation_data("someone/pets", config_name="v2")
    assert calls[-1] == ("someone/pets", {"name": "v2", "data_dir": None, "revision": None, "cache_dir": None})
    assert data.id2label == THREE_CLASSES and data.name == "someone/pets"
    # no validation split: train_val_split of train, with a fixed seed
    assert {split: len(rows) for split, rows in data.splits.items()} == {"train": 3, "validation": 1}


# --- sources and id2label origins -----------------------------------------------------------------------------------


def stored_masks(parquet_file: Path) -> list[np.ndarray]:
    """The masks as written, read with pyarrow and PIL only."""
    cells = pq.read_table(parquet_file).column("label").to_pylist()
    return [np.asarray(Image.open(io.BytesIO(cell["bytes"]))) for cell in cells]


def test_sidewalk_layout_with_reduce_labels_off_and_on(layouts):
    root = layouts["parquet"]
    raw = stored_masks(root / "data" / "validation-00000-of-00001.parquet")
    assert any((mask == 0).any() for mask in raw)  # "unlabeled" occurs

    plain = load_segmentation_data(root)  # id2label.json of the folder; 0 is a class (the transformers example)
    assert plain.num_labels == 35 and plain.id2label[0] == "unlabeled" and plain.id2label[34] == "void-unclear"
    assert plain.splits["validation"].column_names == ["image", "annotation", "file_name"]
    for index, mask in enumerate(raw):
        np.testing.assert_array_equal(plain.example("validation", index).labels, mask)

    reduced = load_segmentation_data(root, reduce_labels=True)  # 0 = unlabelled: 34 classes, reduced once
    assert reduced.num_labels == 34 and reduced.id2label[0] == "flat-road" and reduced.id2label[33] == "void-unclear"
    for index, mask in enumerate(raw):
        expected = np.where(mask == 0, 255, mask.astype(np.int64) - 1)
        np.testing.assert_array_equal(reduced.example("validation", index).labels, expected)


def test_folder_layouts_pair_images_and_masks_by_stem(layouts, tmp_path):
    data = load_segmentation_data(layouts["folder"])  # images/{train,val} + masks/{train,val}, P-mode masks
    assert {split: len(rows) for split, rows in data.splits.items()} == {"train": 12, "validation": 4}
    example = data.example("validation", 1)
    mask = np.asarray(Image.open(layouts["folder"] / "masks" / "val" / "validation_0001.png"))  # palette indices
    np.testing.assert_array_equal(example.labels, mask)
    assert example.file_name == "images/val/validation_0001.jpg"

    # train/images + train/labels, and a flat images/ + masks/ split by train_val_split (the same split every time)
    per_split = tmp_path / "per_split"
    for split, name in (("train", "train"), ("val", "validation")):
        shutil.copytree(layouts["folder"] / "images" / split, per_split / name / "images")
        shutil.copytree(layouts["folder"] / "masks" / split, per_split / name / "labels")
    shutil.copy(layouts["folder"] / "id2label.json", per_split)
    assert len(load_segmentation_data(per_split).splits["validation"]) == 4
    flat = tmp_path / "flat"
    shutil.copytree(layouts["folder"] / "images" / "train", flat / "images")
    shutil.copytree(layouts["folder"] / "masks" / "train", flat / "masks")
    shutil.copy(layouts["folder"] / "id2label.json", flat)
    first, second = load_segmentation_data(flat), load_segmentation_data(flat, train_val_split=0.25)
    assert {split: len(rows) for split, rows in first.splits.items()} == {"train": 10, "validation": 2}
    assert first.splits["validation"]["file_name"] == load_segmentation_data(flat).splits["validation"]["file_name"]
    assert len(second.splits["validation"]) == 3
    assert not set(first.splits["train"]["file_name"]) & set(first.splits["validation"]["file_name"])


def test_save_to_disk_folder_and_datasets_objects(layouts):
    before = sorted(path.name for path in layouts["saved"].iterdir())
    saved = load_segmentation_data(layouts["saved"])  # image + annotation columns, id2label.json: not ADE20K
    assert saved.dataset == "custom" and saved.num_labels == 35
    dataset_dict = datasets.load_from_disk(str(layouts["saved"]))
    from_object = load_segmentation_data(dataset_dict, id2label=dict(enumerate(SIDEWALK_CLASSES)))
    for index in range(4):
        np.testing.assert_array_equal(
            from_object.example("validation", index).labels, saved.example("validation", index).labels
        )
    with pytest.raises(DatasetFormatError, match="in-memory dataset: not ADE20K or Cityscapes"):
        load_segmentation_data(dataset_dict)
    one_split = load_segmentation_data(
        dataset_dict["train"], id2label=dict(enumerate(SIDEWALK_CLASSES)), max_samples=2
    )
    assert {split: len(rows) for split, rows in one_split.splits.items()} == {"train": 2, "validation": 2}
    assert sorted(path.name for path in layouts["saved"].iterdir()) == before  # nothing written into the folder


def test_id2label_argument_file_and_its_errors(layouts, tmp_path):
    names = tmp_path / "names.json"
    names.write_text(json.dumps({str(i): f"class {i}" for i in range(40)}))
    data = load_segmentation_data(layouts["folder"], id2label=names)  # the argument wins over the folder's file
    assert data.num_labels == 40 and data.id2label[39] == "class 39"
    # keys that are not 0..N-1 are the stored mask values (issue 21): classes in key order, other values refused
    names.write_text(json.dumps({"0": "a", "2": "b"}))
    mapped = load_segmentation_data(layouts["folder"], id2label=names)
    assert mapped.id2label == {0: "a", 1: "b"} and mapped.mask_values == (0, 2)
    with pytest.raises(
        DatasetFormatError,
        match=r"validation_0000\.png.*unexpected label values 1, 18, .*expected the stored values 0, 2 of the 2 classes and the ignore index 255",
    ):
        mapped.example("validation", 0)
    names.write_text(json.dumps({"0": "a", "-2": "b"}))
    with pytest.raises(DatasetFormatError, match=r"names\.json: id2label key -2 is negative; keys are mask values"):
        load_segmentation_data(layouts["folder"], id2label=names)
    names.write_text("{not json")
    with pytest.raises(DatasetFormatError, match="names.json: cannot read id2label JSON"):
        load_segmentation_data(layouts["folder"], id2label=names)
    with pytest.raises(ValueError, match="ADE20K, with its own classes"):
        load_segmentation_data("scene_parse_150", id2label=THREE_CLASSES)


def test_values_outside_id2label_name_the_file_and_values(layouts, tmp_path):
    data = load_segmentation_data(layouts["folder"], id2label={i: SIDEWALK_CLASSES[i] for i in range(20)})
    with pytest.raises(
        DatasetFormatError, match=r"masks/val/validation_0000\.png.*unexpected label values (2[0-9], )*30"
    ):
        data.example("validation", 0)
    # rows without file names are named split/index
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    rows = three_class_rows(2)
    rows = {"image": [{"bytes": c["bytes"], "path": None} for c in rows["image"]], "label": rows["annotation"][:1] * 2}
    rows["label"][1] = {"bytes": png(np.full((8, 12), 7, np.uint8)), "path": None}
    objects = datasets.Dataset.from_dict(rows, features=features)
    data = load_segmentation_data(objects, id2label=THREE_CLASSES, train_val_split=None)
    with pytest.raises(DatasetFormatError, match=r"train/1.*unexpected label values 7 \(96 pixels\).*0\.\.2"):
        data.example("train", 1)


def test_missing_mask_and_wrong_columns_are_named(layouts, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(layouts["folder"], broken)
    (broken / "masks" / "train" / "train_0003.png").unlink()
    with pytest.raises(DatasetFormatError, match=r"train_0003\.jpg: no mask .*train_0003\.png.*1 of 12"):
        load_segmentation_data(broken)
    (broken / "id2label.json").unlink()
    with pytest.raises(DatasetFormatError, match="broken: not ADE20K or Cityscapes.*--id2label"):
        load_segmentation_data(broken)
    with pytest.raises(DatasetFormatError, match=r"no label column 'mask'; columns: \['pixel_values', 'label'\]"):
        load_segmentation_data(layouts["parquet"], label_column="mask")
    classification = datasets.Dataset.from_dict(
        {"image": three_class_rows(2)["image"], "label": [0, 1]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    with pytest.raises(DatasetFormatError, match="the label column 'label' holds .*int64.*not images.*--label_column"):
        load_segmentation_data(classification, id2label=THREE_CLASSES)
    renamed = load_segmentation_data(layouts["parquet"], image_column="pixel_values", label_column="label")
    assert renamed.num_labels == 35


def test_many_classes_16_bit_masks_and_a_configurable_ignore_index():
    """300 classes: 16-bit masks, train ids above 255 kept through decode and augmentation; ignore index 1000."""
    rng = np.random.default_rng(1)
    values = rng.integers(0, 300, (16, 20)).astype(np.uint16)
    values[:2] = 1000
    rows = {"image": [png(rng.integers(0, 255, (16, 20, 3), dtype=np.uint8))], "label": [png(values)]}
    objects = datasets.Dataset.from_dict(
        rows, features=datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    )
    data = load_segmentation_data(
        objects, id2label={i: f"c{i}" for i in range(300)}, ignore_index=1000, train_val_split=None
    )
    example = data.example("train", 0)
    np.testing.assert_array_equal(example.labels, values)
    assert len(data.palette) == 300 and len(set(data.palette)) == 300
    augmentation = SetrTrainAugmentation(
        crop_size=(24, 24), scale=(40, 20), ratio_range=(1.0, 1.0), ignore_index=1000, num_labels=300, flip_prob=0.0
    )
    _, labels = augmentation(example.image, example.labels, torch.Generator().manual_seed(0))
    assert labels.shape == (24, 24) and labels.max() == 1000 and (labels[(labels != 1000)] > 255).any()
    assert set(torch.unique(labels).tolist()) <= set(np.unique(values).tolist())
    # P and L masks as PIL images give their stored indices
    for mode in ("L", "P"):
        mask = Image.fromarray((values % 7).astype(np.uint8), mode="L").convert(mode)
        _, labels = SetrTrainAugmentation(crop_size=(16, 20), scale=(20, 16), ratio_range=(1.0, 1.0), flip_prob=0.0)(
            example.image, mask, torch.Generator().manual_seed(0)
        )
        assert set(torch.unique(labels).tolist()) <= set(range(7)) | {255}


def test_generated_palette_is_deterministic_and_distinct():
    palette = generate_palette(35)
    assert palette == generate_palette(35) and len(set(palette)) == 35
    assert all(len(colour) == 3 and all(0 <= c <= 255 for c in colour) for colour in palette)


# --- scripts/train.py on each layout ---------------------------------------------------------------------------

RUN = {
    "config_overrides": TINY,
    "crop_size": "32",
    "scale": "128,32",
    "per_device_train_batch_size": "4",
    "learning_rate": "0.05",
    "max_steps": "60",
    "logging_steps": "10",
    "eval_mode": "whole",
}


def cli(**arguments: str) -> list[str]:
    return [item for key, value in arguments.items() for item in (f"--{key}", str(value))]


@pytest.fixture(scope="module")
def tiny_ade20k_model(tmp_path_factory) -> Path:
    """A converted-style SETR folder with ADE20K's 150 classes, to fine-tune from."""
    from transformers_setr.cli import parse_config_overrides
    from transformers_setr.conversion.from_mmseg import processor_for
    from transformers_setr.presets import PRESETS
    from transformers_setr.training import config_for_preset

    preset = PRESETS["setr-naive-vit-large-ade20k-512"]
    overrides = parse_config_overrides(TINY) | {"image_size": 32, "slide_crop_size": 32, "slide_stride": 21}
    torch.manual_seed(0)
    model = SetrForSemanticSegmentation(config_for_preset(preset, **overrides))
    folder = tmp_path_factory.mktemp("tiny-ade20k")
    model.save_pretrained(folder)
    processor_for(None, model.config).save_pretrained(folder)  # test scale (128, 32): the slide window's
    return folder


@pytest.fixture(scope="module")
def trained(layouts, tiny_ade20k_model, tmp_path_factory) -> dict[str, dict]:
    """One short CPU run of scripts/train.py per layout, as the README writes it."""
    out = tmp_path_factory.mktemp("runs")
    commands = {
        # the sidewalk layout through --dataset_name, 0 = unlabeled is a class (35)
        "parquet": cli(dataset_name=layouts["parquet"], data_cache_dir=out / "cache"),
        # a folder of pairs, fine-tuned from a converted ADE20K folder: a new 35-class head
        "folder": cli(data=layouts["folder"], model_name_or_path=tiny_ade20k_model),
        # a save_to_disk DatasetDict with image + annotation columns, 0 = unlabelled (34 classes)
        "saved": cli(data=layouts["saved"], do_reduce_labels="true"),
    }
    runs = {}
    for layout, data_arguments in commands.items():
        output_dir = out / layout
        result = run_train_script([*data_arguments, *cli(**RUN, output_dir=output_dir, report_to="none")])
        assert result.returncode == 0, result.stderr[-4000:]
        runs[layout] = {
            "dir": output_dir,
            "stdout": result.stdout + result.stderr,
            "data": load_segmentation_data(layouts[layout], reduce_labels=layout == "saved" or None),
        }
    return runs


def chance_miou(data) -> float:
    """mIoU of the best constant prediction (the most frequent class everywhere) on the validation split."""
    labels = np.concatenate(
        [data.example("validation", i).labels.ravel() for i in range(len(data.splits["validation"]))]
    )
    labels = labels[labels != 255]
    counts = np.bincount(labels)
    return counts.max() / labels.size / np.count_nonzero(counts)


@pytest.mark.parametrize("layout", ["parquet", "folder", "saved"])
def test_train_script_learns_the_users_classes(trained, layout):
    run = trained[layout]
    output_dir, data = run["dir"], run["data"]
    losses = list(step_losses(output_dir).values())
    assert losses[-1] < 0.75 * losses[0], losses
    results = json.loads((output_dir / "eval_results.json").read_text())
    chance = chance_miou(data)
    assert results["eval_mIoU"] > 2 * chance, (results["eval_mIoU"], chance)
    names = list(data.id2label.values())
    assert len(names) == (34 if layout == "saved" else 35)
    assert {key.removeprefix("eval_IoU-") for key in results if key.startswith("eval_IoU-")} == set(names)

    model = SetrForSemanticSegmentation.from_pretrained(output_dir)
    assert list(model.config.id2label.values()) == names and model.config.label2id[names[1]] == 1
    assert len(model.config.palette) == len(names)
    card = (output_dir / "README.md").read_text()
    assert f"- Classes: {', '.join(names)}." in card
    assert "ADE20K" not in card and "ade20k\n" not in card and "scene_parse" not in card
    assert f"trained on {output_dir.parent.name}" not in card  # named by its folder, not a machine path
    assert re.search(rf"^# SETR-\w+ trained on {layout}$", card, re.M) and f"{100 * results['eval_mIoU']:.2f}" in card

    from transformers import pipeline

    import transformers_setr  # noqa: F401

    segmenter = pipeline("image-segmentation", model=str(output_dir))
    segments = segmenter(data.example("validation", 0).image)
    assert segments and {segment["label"] for segment in segments} <= set(names)
    assert {"sky", "flat-road"} & {segment["label"] for segment in segments}


def test_fine_tuning_keeps_the_decoder_and_replaces_the_classifier(trained, tiny_ade20k_model):
    assert "new classifier for the 35 classes of folder (the model had 150)" in trained["folder"]["stdout"]
    from transformers_setr.training.workflow import DataArguments, ModelArguments, build_model

    base = SetrForSemanticSegmentation.from_pretrained(tiny_ade20k_model).state_dict()
    data = trained["folder"]["data"]
    model, _ = build_model(
        ModelArguments(preset="setr-naive-vit-large-ade20k-512", model_name_or_path=str(tiny_ade20k_model)),
        DataArguments(crop_size=32),
        data,
    )
    changed = {key for key, value in model.state_dict().items() if value.shape != base[key].shape}
    assert changed and all(key.endswith(("classifier.weight", "classifier.bias")) for key in changed), changed
    for key, value in model.state_dict().items():
        if key not in changed:
            torch.testing.assert_close(value, base[key], rtol=0, atol=0, msg=key)
    assert model.config.num_labels == 35 and model.config.id2label[30] == "sky"


def test_train_script_refuses_undeclared_classes_in_one_line(tmp_path, capsys):
    folder = write_image_annotation_parquet(tmp_path / "pets")
    with pytest.raises(SystemExit) as exit_info:
        main_trainer(common_args(folder, tmp_path / "run", data_cache_dir=tmp_path / "cache"))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(r"\S+: error: \S*pets: not ADE20K or Cityscapes .*--id2label FILE\.json", error), error
    assert not (tmp_path / "run").exists()


def test_resuming_a_custom_run_repeats_the_next_steps(layouts, tmp_path):
    shared = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2, "data_cache_dir": tmp_path / "cache"}
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    main_trainer(common_args(layouts["folder"], reference_dir, do_eval="false", **shared))
    resumed_dir.mkdir()
    shutil.copytree(reference_dir / "checkpoint-2", resumed_dir / "checkpoint-2")
    main_trainer(common_args(layouts["folder"], resumed_dir, do_eval="false", resume_from_checkpoint="last", **shared))
    reference, resumed = step_losses(reference_dir), step_losses(resumed_dir)
    for step in (3, 4):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), (step, resumed, reference)


def test_evaluate_script_on_custom_data(trained, layouts, tmp_path):
    import subprocess

    from helpers.training_runs import PYTHON, ROOT, SCRIPT_ENV

    output = tmp_path / "results.json"
    command = [PYTHON, "scripts/evaluate.py", "--model", str(trained["saved"]["dir"]), "--data", str(layouts["saved"])]
    command += ["--do_reduce_labels", "true", "--mode", "whole", "--num_workers", "0", "--no_progress"]
    result = subprocess.run(
        [*command, "--output", str(output)], cwd=ROOT, env={**__import__("os").environ, **SCRIPT_ENV},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(output.read_text())
    trained_results = json.loads((trained["saved"]["dir"] / "eval_results.json").read_text())
    # the same protocol; the reloaded weights and a fresh process may flip a near-tie pixel or two
    assert results["mIoU"] == pytest.approx(trained_results["eval_mIoU"], abs=1e-4)
    assert "flat-road" in results["per_class_iou"] and results["dataset"] == "custom"
    assert ADE20K_CLASSES[0] not in results["per_class_iou"]


def test_readme_python_api_snippet_runs(tiny_ade20k_model, tmp_path, monkeypatch, capsys):
    from helpers.training_runs import ROOT

    section = (ROOT / "README.md").read_text().split("## Fine-tune on your own data", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_ade20k_model, tmp_path / "setr-naive-ade20k")
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    splits = {split: datasets.Dataset.from_dict(three_class_rows(4), features=features) for split in ("train", "val")}
    datasets.DatasetDict(splits).save_to_disk("my-dataset")
    # shorter and on the CPU; everything else as written
    short = snippet
    for long, quick in (
        ("max_steps=8000", "max_steps=3"),
        ("crop_size=512", "crop_size=32"),
        ("per_device_train_batch_size=8", "per_device_train_batch_size=2, use_cpu=True, report_to='none'"),
    ):
        assert long in short
        short = short.replace(long, quick)
    exec(compile(short, "README.md", "exec"), {})

    assert "'eval_IoU-cat'" in capsys.readouterr().out
    model = SetrForSemanticSegmentation.from_pretrained(tmp_path / "setr-pets")
    assert model.config.id2label == THREE_CLASSES and len(model.config.palette) == 3
    assert (tmp_path / "setr-pets" / "preprocessor_config.json").is_file()


def test_accelerate_loop_trains_on_custom_data(layouts, tmp_path):
    import os
    import subprocess

    from helpers.training_runs import PYTHON, ROOT, SCRIPT_ENV

    output_dir = tmp_path / "loop"
    command = [PYTHON, "scripts/train_no_trainer.py", *cli(data=layouts["saved"], do_reduce_labels="true")]
    command += cli(**RUN, output_dir=output_dir, checkpointing_steps=1000)
    result = subprocess.run(
        command, cwd=ROOT, env={**os.environ, **SCRIPT_ENV}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((output_dir / "eval_results.json").read_text())
    data = load_segmentation_data(layouts["saved"], reduce_labels=True)
    assert set(results["per_class_iou"]) == set(data.id2label.values()) and results["mIoU"] > 2 * chance_miou(data)
    losses = json.loads((output_dir / "train_losses.json").read_text())["losses"]
    assert losses[-1] < 0.75 * losses[0]
    assert "- Classes: flat-road, flat-sidewalk" in (output_dir / "README.md").read_text()


def test_ignore_index_option_of_the_training_commands(layouts, tmp_path):
    """--ignore_index: the mask value of custom data that is not a class (nor scored, nor a training target)."""
    from transformers_setr.presets import PRESETS
    from transformers_setr.training.workflow import CommandLineError, DataArguments, build_model, load_data

    preset = PRESETS["setr-naive-vit-large-ade20k-512"]
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({str(i): name for i, name in enumerate(SIDEWALK_CLASSES[:34])}))
    data_args = DataArguments(data=str(layouts["folder"]), id2label=str(classes), ignore_index=34, crop_size=32)
    data = load_data(preset, data_args)
    assert data.ignore_index == 34 and data.num_labels == 34
    from transformers_setr.training.workflow import ModelArguments

    model, _ = build_model(ModelArguments(preset=preset.name, config_overrides=TINY, backbone="none"), data_args, data)
    assert model.config.semantic_loss_ignore_index == 34
    with pytest.raises(CommandLineError, match="the ignore index 34 is also a class .'void-unclear'."):
        load_data(preset, DataArguments(data=str(layouts["folder"]), ignore_index=34))


def test_hub_id2label_lookup_stays_offline_when_offline(monkeypatch, tmp_path):
    """Offline, the repo's id2label.json comes from the cache only: no network attempt that has to time out."""
    import huggingface_hub

    calls = []

    def hf_hub_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs))
        path = tmp_path / "id2label.json"
        path.write_text(json.dumps({"0": "background", "1": "cat", "2": "dog"}))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    assert data_module._hub_id2label("someone/pets", None) == {"0": "background", "1": "cat", "2": "dog"}
    assert calls == [
        ("someone/pets", "id2label.json", {"repo_type": "dataset", "revision": None, "local_files_only": True})
    ]


def test_evaluate_script_refuses_undeclared_classes_in_one_line(tiny_ade20k_model, tmp_path):
    import os
    import subprocess

    from helpers.training_runs import PYTHON, ROOT, SCRIPT_ENV

    folder = write_image_annotation_parquet(tmp_path / "pets")
    command = [PYTHON, "scripts/evaluate.py", "--model", str(tiny_ade20k_model), "--data", str(folder)]
    command += ["--cache_dir", str(tmp_path / "cache"), "--num_workers", "0", "--no_progress"]
    result = subprocess.run(
        command, cwd=ROOT, env={**os.environ, **SCRIPT_ENV}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert re.search(r"^evaluate\.py: error: \S*pets: not ADE20K or Cityscapes .*--id2label", result.stderr, re.M)
    assert "Traceback" not in result.stderr
