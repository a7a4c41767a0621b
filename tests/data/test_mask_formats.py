"""Masks as people store them (issue 21): 0/255 binary masks, colour masks, JPEG masks, the data report before
training, data errors as one line, bare {bytes, path} Parquet columns. `setr train` is driven as a user types it."""

import io
import json
import re
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from transformers_setr.cli import main as setr
from transformers_setr.data import DatasetFormatError, load_segmentation_data
from transformers_setr.data.report import data_report, sample_indices

from helpers.training_runs import common_args

SIZE = (40, 48)  # (height, width)
BINARY = {"0": "background", "1": "foreground"}
ROAD, CAR, SKY = (128, 64, 128), (0, 0, 142), (70, 130, 180)
COLOURED = {
    "0": {"name": "road", "color": list(ROAD)},
    "1": {"name": "car", "color": list(CAR)},
    "2": {"name": "sky", "color": list(SKY)},
}


pytestmark = pytest.mark.usefixtures("offline_datasets")


def foreground_of(index: int) -> np.ndarray:
    """A box per image (its position and height change with the index): 14-21 % of the pixels."""
    mask = np.zeros(SIZE, bool)
    top, left = 4 + index % 5, 6 + (3 * index) % 7
    mask[top : top + 14 + index % 5, left : left + 22] = True
    return mask


def write_folder(
    root: Path, masks_of, *, id2label=BINARY, mask_suffix: str = ".png", num_train: int = 6, num_validation: int = 2
) -> Path:
    """images/{train,val}/<i>.png + masks/{train,val}/<i><mask_suffix>, `masks_of(index, foreground)` -> mask."""
    rng = np.random.default_rng(0)
    for split, count in (("train", num_train), ("val", num_validation)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for index in range(count):
            foreground = foreground_of(index)
            image = rng.integers(0, 90, (*SIZE, 3), dtype=np.uint8)
            image[foreground] += 150  # bright foreground: learnable in a few steps
            Image.fromarray(image).save(root / "images" / split / f"{index}.png")
            mask = masks_of(index, foreground)
            Image.fromarray(mask).save(
                root / "masks" / split / f"{index}{mask_suffix}", **({"quality": 90} if mask_suffix == ".jpg" else {})
            )
    (root / "id2label.json").write_text(json.dumps(id2label))
    return root


def zero_255(index: int, foreground: np.ndarray) -> np.ndarray:
    return np.where(foreground, 255, 0).astype(np.uint8)


def train(folder: Path, output_dir: Path, capsys, **overrides) -> tuple[int, str]:
    """`setr train --data FOLDER ...` in-process: (exit code, the last stderr line)."""
    try:
        code = setr(["train", *common_args(folder, output_dir, **overrides)])
    except SystemExit as exit_info:
        code = exit_info.code
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


# --- 0/255 binary masks --------------------------------------------------------------------------------------------


def test_zero_255_masks_with_classes_0_and_1_are_refused_in_one_line(tmp_path, capsys):
    folder = write_folder(tmp_path / "lesions", zero_255)
    code, error = train(folder, tmp_path / "run", capsys)
    assert code == 2
    assert error == (
        f"setr train: error: {folder}/masks/train/0.png, {folder}/masks/train/1.png, {folder}/masks/train/2.png, ...: "
        "the masks hold only the values 0 and 255, but id2label declares the classes 0 ('background') and 1 "
        "('foreground') and 255 is the ignore index: the 'foreground' pixels would be ignored and nothing but "
        "'background' trained. Pass --mask_values 0,255 (Python: mask_values=[0, 255]) or key id2label by the stored "
        'values: {"0": "background", "255": "foreground"}'
    )
    assert not (tmp_path / "run").exists()


def test_mask_values_0_255_trains_the_foreground(tmp_path, capsys, caplog):
    from transformers_setr.presets import PRESETS
    from transformers_setr.training.recipe import SetrTrainingArguments
    from transformers_setr.training.workflow import (
        DataArguments,
        ModelArguments,
        build_model,
        build_train_dataset,
        load_data,
        parse_arguments,
    )

    folder = write_folder(tmp_path / "lesions", zero_255)
    argv = common_args(folder, tmp_path / "run", mask_values="0,255", max_steps=4, eval_strategy="no")
    with caplog.at_level("INFO", logger="transformers_setr.train"):
        code, _ = train(folder, tmp_path / "run", capsys, mask_values="0,255", max_steps=4)
    assert code == 0
    report = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Data report"))
    assert report.splitlines()[0] == (
        "Data report: lesions, 2 classes, ignore index 255; stored values -> classes 0->0, 255->1"
    )
    expected = np.mean([foreground_of(i).mean() for i in range(6)])
    assert re.search(rf"1 foreground +{100 * expected:.1f}%", report), report
    assert re.search(r"\(ignored\) +0\.0% +0\.0%", report), report
    results = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert results["eval_IoU-foreground"] == results["eval_IoU-foreground"]  # a number, not NaN: it was scored

    # the training dataset of the same command line yields the foreground as class 1 (what reaches the loss)
    model_args, data_args, training_args = parse_arguments(argv, (SetrTrainingArguments,))
    assert isinstance(data_args, DataArguments) and isinstance(model_args, ModelArguments)
    data = load_data(PRESETS[model_args.preset], data_args)
    model, processor = build_model(model_args, data_args, data)
    dataset = build_train_dataset(data, data_args, model, processor, seed=0)
    labels = np.concatenate([dataset[i]["labels"].numpy().ravel() for i in range(len(dataset))])
    assert set(np.unique(labels).tolist()) <= {0, 1, 255} and (labels == 1).mean() > 0.1


def test_id2label_keyed_by_stored_values_is_the_same_mapping(tmp_path):
    folder = write_folder(tmp_path / "lesions", zero_255, id2label={"0": "background", "255": "foreground"})
    data = load_segmentation_data(folder)
    assert data.id2label == {0: "background", 1: "foreground"} and data.mask_values == (0, 255)
    example = data.example("train", 2)
    np.testing.assert_array_equal(example.labels, foreground_of(2).astype(np.uint8))
    # other stored values are refused, naming them; the ignore index (not a class's value here) stays ignored
    assert "0->0, 255->1" in str(data_report(data))
    with pytest.raises(DatasetFormatError, match=r"unexpected label values 7 \(3 pixels\); expected the stored "):
        data.to_train_ids(np.array([0, 255, 7, 7, 7]), "m.png")
    keyed = load_segmentation_data(folder, id2label={0: "background", 128: "foreground"})
    np.testing.assert_array_equal(keyed.to_train_ids(np.array([0, 128, 255])), [0, 1, 255])


def test_masks_with_nothing_labelled_are_refused(tmp_path, capsys):
    folder = write_folder(tmp_path / "empty", lambda index, foreground: np.full(SIZE, 255, np.uint8))
    code, error = train(folder, tmp_path / "run", capsys)
    assert code == 2
    assert error == (
        f"setr train: error: {folder}/masks/train/0.png, {folder}/masks/train/1.png, {folder}/masks/train/2.png, ...: "
        "no labelled pixel in the train masks read (6 of 6): every pixel is the ignore index 255, nothing to train "
        "on; if 255 marks a class, give the stored value of each class with --mask_values (e.g. 0,255)"
    )


@pytest.mark.parametrize(
    "mask_values, message",
    [
        ("0,x", "--mask_values must be the stored mask values of the classes in class order, e.g. 0,255; got '0,x'"),
        ("0,0", "--mask_values must be distinct non-negative mask values, one per class; got '0,0'"),
        ("0,128,255", "--mask_values 0,128,255: 3 values for the 2 classes of {folder}/id2label.json; give one "
         "stored value per class, in class order"),
    ],
)  # fmt: skip
def test_bad_mask_values_are_one_line(tmp_path, capsys, mask_values, message):
    folder = write_folder(tmp_path / "lesions", zero_255)
    code, error = train(folder, tmp_path / "run", capsys, mask_values=mask_values)
    assert (code, error) == (2, "setr train: error: " + message.format(folder=folder))


# --- colour masks ---------------------------------------------------------------------------------------------------


def colour_mask(index: int, foreground: np.ndarray) -> np.ndarray:
    mask = np.empty((*SIZE, 3), np.uint8)
    mask[:] = ROAD
    mask[: SIZE[0] // 4] = SKY
    mask[foreground] = CAR
    return mask


def test_colour_masks_map_through_the_declared_colours(tmp_path, capsys):
    folder = write_folder(tmp_path / "streets", colour_mask, id2label=COLOURED)
    data = load_segmentation_data(folder)
    assert data.id2label == {0: "road", 1: "car", 2: "sky"} and data.palette == (ROAD, CAR, SKY)
    labels = data.example("train", 1).labels
    expected = np.zeros(SIZE, np.uint8)
    expected[: SIZE[0] // 4] = 2
    expected[foreground_of(1)] = 1
    np.testing.assert_array_equal(labels, expected)
    # an undeclared colour: one line naming it, the file and its pixels; or ignored when the user says so
    mask = np.asarray(Image.open(folder / "masks" / "train" / "3.png")).copy()
    mask[0, :5] = (255, 0, 0)
    Image.fromarray(mask).save(folder / "masks" / "train" / "3.png")
    code, error = train(folder, tmp_path / "run", capsys)
    assert (code, error) == (
        2,
        f"setr train: error: {folder}/masks/train/3.png: colours of no class (255, 0, 0) (5 pixels); id2label gives "
        "the colours (128, 64, 128), (0, 0, 142), (70, 130, 180): declare every colour (or pass --undeclared_colors "
        "ignore to ignore the others)",
    )
    ignoring = load_segmentation_data(folder, undeclared_colors="ignore")
    assert (ignoring.example("train", 3).labels[0, :5] == 255).all()
    report = data_report(ignoring)
    assert report.ignored_pixels["train"] == 5 and report.ignored_pixels["validation"] == 0


def test_colour_declarations_are_checked(tmp_path):
    grey = write_folder(tmp_path / "grey", zero_255, id2label=COLOURED)
    with pytest.raises(
        DatasetFormatError,
        match=r"0\.png \(annotation of images/train/0\.png\): a mask of mode 'L' \(one channel\), but id2label gives",
    ):
        load_segmentation_data(grey).example("train", 0)
    half = {"0": {"name": "road", "color": [1, 2, 3]}, "1": "car"}
    with pytest.raises(DatasetFormatError, match=r"gives colours to some classes but not to 1 \('car'\)"):
        load_segmentation_data(grey, id2label=half)
    with pytest.raises(DatasetFormatError, match=r"id2label\[0\]'s color must be \[r, g, b\] with 0\.\.255"):
        load_segmentation_data(grey, id2label={"0": {"name": "road", "color": [1, 2, 300]}})
    with pytest.raises(DatasetFormatError, match="two classes have the same colour"):
        load_segmentation_data(
            grey, id2label={"0": {"name": "a", "color": [1, 2, 3]}, "1": {"name": "b", "color": [1, 2, 3]}}
        )
    # colour masks without colours in id2label: the refusal says how to declare them
    colour = write_folder(tmp_path / "colour", colour_mask, id2label={"0": "road", "1": "car", "2": "sky"})
    with pytest.raises(
        DatasetFormatError, match=r'unequal channels.*give each class its colour in id2label: \{"0": \{"name"'
    ):
        load_segmentation_data(colour).example("train", 0)


# --- JPEG masks, sizes, unreadable files, empty splits --------------------------------------------------------------


def test_jpeg_masks_are_refused_with_the_reason(tmp_path, capsys):
    folder = write_folder(tmp_path / "lesions", zero_255, mask_suffix=".jpg")
    code, error = train(folder, tmp_path / "run", capsys)
    assert (code, error) == (
        2,
        f"setr train: error: {folder}/masks/train/0.jpg: a JPEG mask (6 of 6 masks are JPEG); JPEG is lossy, its "
        "compression turns the values along every edge into values of no class (or of other classes): save the "
        "masks as PNG (lossless)",
    )
    # what the compression does: values that were never stored
    stored = np.asarray(Image.open(folder / "masks" / "train" / "0.jpg"))
    assert len(np.unique(stored)) > 2
    # JPEG bytes in a table column are refused the same way
    buffer = io.BytesIO()
    Image.fromarray(zero_255(0, foreground_of(0))).save(buffer, format="JPEG")
    image = io.BytesIO()
    Image.fromarray(np.zeros((*SIZE, 3), np.uint8)).save(image, format="PNG")
    rows = {
        "image": [{"bytes": image.getvalue(), "path": "a.png"}],
        "label": [{"bytes": buffer.getvalue(), "path": "a.jpg"}],
    }
    table = datasets.Dataset.from_dict(
        rows, features=datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    )
    data = load_segmentation_data(table, id2label=BINARY, train_val_split=None)
    with pytest.raises(DatasetFormatError, match=r"^a\.jpg \(annotation of a\.png\): a JPEG mask; JPEG is lossy"):
        data.example("train", 0)


def test_a_mask_of_another_size_is_one_line_before_and_during_training(tmp_path, capsys, monkeypatch):
    def masks(index, foreground):
        mask = zero_255(index, foreground)
        return mask[:30] if index == 4 else mask

    folder = write_folder(tmp_path / "lesions", masks)
    code, error = train(folder, tmp_path / "run", capsys, mask_values="0,255")
    assert (code, error) == (
        2,
        f"setr train: error: {folder}/masks/train/4.png: the mask is 48x30 but its image images/train/4.png is "
        "48x40; a mask must have its image's size",
    )
    # beyond the report's sample (here only the first mask is read) the training's own check stops the run in one
    # line, also from a data-loader worker process
    from transformers_setr.training import workflow

    real_report = workflow.data_report
    monkeypatch.setattr(workflow, "data_report", lambda *args, **kwargs: real_report(*args, **kwargs, max_masks=1))
    for workers in ("0", "1"):
        code, error = train(
            folder, tmp_path / f"run{workers}", capsys, mask_values="0,255", dataloader_num_workers=workers
        )
        assert (code, error) == (
            2,
            "setr train: error: images/train/4.png: the image is 48x40 but its annotation "
            f"{folder}/masks/train/4.png (annotation of images/train/4.png) is 48x30",
        ), workers


def test_unreadable_files_and_empty_splits_are_one_line(tmp_path, capsys):
    folder = write_folder(tmp_path / "lesions", zero_255)
    (folder / "masks" / "train" / "2.png").write_bytes(b"not a png")
    code, error = train(folder, tmp_path / "run", capsys, mask_values="0,255")
    assert code == 2
    assert error.startswith(
        f"setr train: error: {folder}/masks/train/2.png: cannot read the annotation: cannot identify"
    )
    (folder / "masks" / "train" / "2.png").write_bytes((folder / "masks" / "train" / "1.png").read_bytes())
    (folder / "images" / "train" / "5.png").write_bytes(b"\x89PNG broken")
    code, error = train(folder, tmp_path / "run", capsys, mask_values="0,255")
    assert code == 2 and error.startswith("setr train: error: images/train/5.png: cannot read the image: "), error
    (folder / "images" / "train" / "5.png").unlink()
    (folder / "masks" / "train" / "5.png").unlink()
    code, error = train(folder, tmp_path / "run", capsys, mask_values="0,255", max_train_samples=0)
    assert (code, error) == (2, f"setr train: error: {folder}: the train split has no images (limited to 0 rows)")


# --- the data report ------------------------------------------------------------------------------------------------


def test_data_report_shares_sample_and_warnings(tmp_path):
    folder = write_folder(
        tmp_path / "three",
        lambda index, foreground: np.where(foreground, 0, 255).astype(np.uint8),
        id2label={"0": "lesion", "1": "vessel", "2": "nerve"},
        num_train=12,
    )
    data = load_segmentation_data(folder)
    report = data_report(data, ["train", "val"], max_masks=5)
    read = sample_indices(12, 5)
    assert read.tolist() == [0, 3, 6, 8, 11] and report.masks_read == {"train": 5, "validation": 2}
    stems = [int(Path(name).stem) for name in data.splits["train"]["file_name"]]  # rows in file-name order
    expected = np.mean([foreground_of(stems[row]).mean() for row in read])
    shares, ignored = report.share("train")
    assert shares[0] == pytest.approx(expected) and ignored == pytest.approx(1 - expected)
    text = str(report)
    assert "train 12 images (5 masks read); validation 2 images (all masks read)" in text
    assert "(shares of a deterministic, evenly spaced sample of the masks)" in text
    assert report.warnings == [
        "2 of the 3 classes never appear in the train masks read: vessel, nerve",
        f"{100 * (1 - expected):.1f}% of the train pixels are ignored (the ignore index 255)",
        f"{100 * (1 - np.mean([foreground_of(i).mean() for i in range(2)])):.1f}% of the validation pixels are "
        "ignored (the ignore index 255)",
    ]
    assert text.splitlines()[-3:] == [f"  warning: {warning}" for warning in report.warnings]
    assert str(data_report(data, ["train", "val"], max_masks=5)) == text  # the same sample every time


# --- Parquet with a bare {bytes, path} image column ------------------------------------------------------------------


def test_parquet_with_bare_bytes_path_structs_is_read(tmp_path):
    root = tmp_path / "bare"
    (root / "data").mkdir(parents=True)

    def png(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()

    rows = [
        {
            "image": {"bytes": png(np.full((*SIZE, 3), index, np.uint8)), "path": f"{index}.png"},
            "label": {"bytes": png(foreground_of(index).astype(np.uint8)), "path": f"{index}_mask.png"},
        }
        for index in range(4)
    ]
    pq.write_table(pa.Table.from_pylist(rows), root / "data" / "train-00000-of-00001.parquet")  # no datasets metadata
    (root / "id2label.json").write_text(json.dumps(BINARY))
    data = load_segmentation_data(root, cache_dir=tmp_path / "cache", train_val_split=None)
    example = data.example("train", 3)
    assert example.file_name == "3.png" and np.asarray(example.image)[0, 0, 0] == 3
    np.testing.assert_array_equal(example.labels, foreground_of(3).astype(np.uint8))
