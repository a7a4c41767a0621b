"""The data module on every synthetic layout, its error messages, and the arguments of its Hub loads (offline)."""

import io
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from transformers_setr.data import (
    LABEL_FORMATS,
    DatasetFormatError,
    SegmentationData,
    load_segmentation_data,
)
from transformers_setr.data.label_tables import cityscapes_label_id_to_train_id
from transformers_setr.data.synthetic import make_synthetic_ade20k, make_synthetic_cityscapes

ADE_SIZE = (40, 56)  # (height, width)
CITYSCAPES_SIZE = (32, 64)
# Hand-written from cityscapesscripts' labels.py, independently of label_tables: every label id the synthetic
# scenes use (unlabeled 0, ego vehicle 1, road 7, sidewalk 8, parking 9, building 11, vegetation 21, terrain 22,
# sky 23, person 24, car 26) and its train id.
CITYSCAPES_EXPECTED_TRAIN_IDS = {0: 255, 1: 255, 7: 0, 8: 1, 9: 255, 11: 2, 21: 8, 22: 9, 23: 10, 24: 11, 26: 13}


pytestmark = pytest.mark.usefixtures("offline_datasets")


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    """Every layout once, all from seed 0 (so the same scenes in each layout of a dataset)."""
    root = tmp_path_factory.mktemp("synthetic")
    ade = {"num_train": 4, "num_validation": 2, "image_size": ADE_SIZE, "seed": 0}
    cityscapes = {"num_train": 4, "num_validation": 3, "image_size": CITYSCAPES_SIZE, "seed": 0}
    return {
        "ade_raw": make_synthetic_ade20k(root / "ade_raw", layout="raw", **ade),
        "ade_parquet": make_synthetic_ade20k(root / "ade_parquet", layout="parquet", **ade),
        "cityscapes_train_ids": make_synthetic_cityscapes(root / "cs_train_ids", **cityscapes),
        "cityscapes_label_ids": make_synthetic_cityscapes(root / "cs_label_ids", train_ids=False, **cityscapes),
        "cityscapes_mirror": make_synthetic_cityscapes(root / "cs_mirror", layout="mirror", **cityscapes),
        "cache": root / "cache",
    }


def reduce_ade20k(raw: np.ndarray) -> np.ndarray:
    """The ADE20K convention written out: 0 -> 255, v -> v - 1."""
    expected = raw.astype(np.int64) - 1
    expected[raw == 0] = 255
    return expected


def read_png(data: bytes | Path) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data) if isinstance(data, bytes) else data))


def test_cityscapes_label_id_table_matches_the_official_ids():
    table = cityscapes_label_id_to_train_id()
    assert table.shape == (256,) and table.dtype == np.uint8
    for label_id, train_id in {7: 0, 8: 1, 26: 13, 33: 18, 0: 255, 9: 255, 18: 255, 29: 255, 34: 255}.items():
        assert table[label_id] == train_id, label_id
    assert sorted(table[table != 255].tolist()) == list(range(19))


def test_ade20k_raw_tree_files(generated):
    root = generated["ade_raw"]
    assert root.name == "ADEChallengeData2016"
    images = sorted(p.name for p in (root / "images" / "training").iterdir())
    assert images == [f"ADE_train_{i:08d}.jpg" for i in range(1, 5)]
    assert sorted(p.name for p in (root / "annotations" / "validation").iterdir()) == [
        "ADE_val_00000001.png",
        "ADE_val_00000002.png",
    ]
    with Image.open(root / "images" / "training" / "ADE_train_00000001.jpg") as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (56, 40))
    with Image.open(root / "annotations" / "training" / "ADE_train_00000001.png") as mask:
        assert (mask.format, mask.mode, mask.size) == ("PNG", "L", (56, 40))
    object_info = (root / "objectInfo150.txt").read_text().splitlines()
    assert object_info[0].split("\t") == ["Idx", "Ratio", "Train", "Val", "Name"]
    assert len(object_info) == 151
    assert object_info[3].split("\t")[::4] == ["3", "sky"] and object_info[8].split("\t")[::4] == ["8", "bed"]
    scenes = (root / "sceneCategories.txt").read_text().splitlines()
    assert [line.split(" ")[0] for line in scenes] == [f"ADE_train_{i:08d}" for i in range(1, 5)] + [
        "ADE_val_00000001",
        "ADE_val_00000002",
    ]


@pytest.mark.parametrize("source", ["tree", "parent"])
def test_ade20k_raw_tree_loads_and_reduces_labels_once(generated, source):
    root = generated["ade_raw"]
    data = load_segmentation_data(root if source == "tree" else root.parent)
    assert (data.dataset, data.label_format, data.num_labels) == ("ade20k", "ade20k", 150)
    assert data.id2label[2] == "sky" and data.palette[0] == (120, 120, 120)
    assert set(data.splits) == {"train", "validation"}
    for split, folder, prefix, count in (
        ("train", "training", "ADE_train", 4),
        ("validation", "validation", "ADE_val", 2),
    ):
        rows = data.splits[split]
        assert rows.column_names == ["image", "annotation", "file_name"]
        assert rows.features["image"] == datasets.Image(decode=False)
        assert rows.features["annotation"] == datasets.Image(decode=False)
        assert rows["file_name"] == [f"images/{folder}/{prefix}_{i:08d}.jpg" for i in range(1, count + 1)]

    raw_values = set()
    for split, folder in (("train", "training"), ("validation", "validation")):
        for index, row in enumerate(data.splits[split]):
            stem = Path(row["file_name"]).stem
            raw = read_png(root / "annotations" / folder / f"{stem}.png")
            raw_values |= set(np.unique(raw).tolist())
            example = data.example(split, index)
            assert example.labels.dtype == np.uint8
            np.testing.assert_array_equal(example.labels, reduce_ade20k(raw))
            # Decoding again gives the same labels: the reduction is not applied to stored data.
            np.testing.assert_array_equal(data.decode(row).labels, example.labels)
            assert example.image.mode == "RGB"
            expected_image = np.asarray(Image.open(root / "images" / folder / f"{stem}.jpg").convert("RGB"))
            np.testing.assert_array_equal(np.asarray(example.image), expected_image)
    assert 0 in raw_values and len(raw_values - {0}) >= 6  # "other" and several classes occur


def test_ade20k_parquet_export_layout(generated):
    root = generated["ade_parquet"]
    for config in ("scene_parsing", "instance_segmentation"):
        for split in ("train", "validation"):
            assert (root / config / split / "0000.parquet").is_file()
    cache = str(generated["cache"] / "plain")
    scene_parsing = datasets.load_dataset(str(root), data_dir="scene_parsing", cache_dir=cache)
    assert set(scene_parsing) == {"train", "validation"}
    features = scene_parsing["train"].features
    assert isinstance(features["image"], datasets.Image) and isinstance(features["annotation"], datasets.Image)
    assert isinstance(features["scene_category"], datasets.ClassLabel)
    assert scene_parsing["train"][0]["annotation"].mode == "L"
    instances = datasets.load_dataset(str(root), data_dir="instance_segmentation", cache_dir=cache)
    assert instances["train"].column_names == ["image", "annotation"]
    assert instances["train"][0]["annotation"].mode == "RGB"
    # Both configs are there with different schemas: without data_dir they collide, as on the Hub branch.
    with pytest.raises(datasets.exceptions.DatasetGenerationError):
        datasets.load_dataset(str(root), cache_dir=cache)


def test_ade20k_parquet_export_loads_like_the_raw_tree(generated):
    data = load_segmentation_data(generated["ade_parquet"], cache_dir=generated["cache"])
    raw_tree = load_segmentation_data(generated["ade_raw"])
    assert (data.dataset, data.label_format) == ("ade20k", "ade20k")
    assert set(data.splits) == {"train", "validation"}
    assert data.splits["validation"].column_names == ["image", "annotation", "file_name"]
    assert data.splits["validation"]["file_name"] == ["ADE_val_00000001.jpg", "ADE_val_00000002.jpg"]
    table = pq.read_table(generated["ade_parquet"] / "scene_parsing" / "validation" / "0000.parquet")
    stored_annotations = [cell["bytes"] for cell in table.column("annotation").to_pylist()]
    for index, stored in enumerate(stored_annotations):
        example = data.example("validation", index)
        np.testing.assert_array_equal(example.labels, reduce_ade20k(read_png(stored)))
        np.testing.assert_array_equal(example.labels, raw_tree.example("validation", index).labels)
        np.testing.assert_array_equal(
            np.asarray(example.image), np.asarray(raw_tree.example("validation", index).image)
        )


def test_cityscapes_raw_tree_files(generated):
    root = generated["cityscapes_train_ids"]
    stem = "aachen_000000_000019"
    with Image.open(root / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png") as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (64, 32))
    gt = root / "gtFine" / "train" / "aachen"
    label_ids = read_png(gt / f"{stem}_gtFine_labelIds.png")
    with Image.open(gt / f"{stem}_gtFine_instanceIds.png") as instance_image:
        assert instance_image.mode == "I;16"
        instance_ids = np.asarray(instance_image)
    with Image.open(gt / f"{stem}_gtFine_color.png") as colour:
        assert colour.mode == "RGBA"
    # Instance ids: label id * 1000 + index for cars and people, the label id elsewhere.
    grouped = instance_ids >= 1000
    np.testing.assert_array_equal(instance_ids[grouped] // 1000, label_ids[grouped])
    assert set(np.unique(label_ids[grouped]).tolist()) <= {24, 26}
    np.testing.assert_array_equal(instance_ids[~grouped], label_ids[~grouped])
    assert (gt / f"{stem}_gtFine_labelTrainIds.png").is_file()
    assert list((root / "gtFine" / "val").iterdir())  # val cities exist
    assert not list(generated["cityscapes_label_ids"].rglob("*_labelTrainIds.png"))


def test_cityscapes_layouts_give_the_same_train_ids(generated):
    loaded = {
        layout: load_segmentation_data(generated[layout], cache_dir=generated["cache"])
        for layout in ("cityscapes_train_ids", "cityscapes_label_ids", "cityscapes_mirror")
    }
    assert {layout: data.label_format for layout, data in loaded.items()} == {
        "cityscapes_train_ids": "cityscapes-train-ids",
        "cityscapes_label_ids": "cityscapes-label-ids",
        "cityscapes_mirror": "cityscapes-label-ids",
    }
    for data in loaded.values():
        assert data.dataset == "cityscapes" and data.num_labels == 19
        assert set(data.splits) == {"train", "validation"}
        assert len(data.splits["train"]) == 4 and len(data.splits["validation"]) == 3
    assert loaded["cityscapes_train_ids"].splits["validation"]["file_name"][0] == (
        "leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png"
    )

    label_id_files = sorted(
        (generated["cityscapes_label_ids"] / "gtFine").rglob("*_gtFine_labelIds.png"), key=lambda p: p.as_posix()
    )
    mirror_tables = {
        split: pq.read_table(generated["cityscapes_mirror"] / "data" / f"{split}-00000-of-00001.parquet")
        for split in ("train", "validation")
    }
    seen_label_ids = set()
    for split in ("train", "validation"):
        mirror_masks = [cell["bytes"] for cell in mirror_tables[split].column("semantic_segmentation").to_pylist()]
        for index in range(len(loaded["cityscapes_mirror"].splits[split])):
            examples = {layout: data.example(split, index) for layout, data in loaded.items()}
            reference = examples["cityscapes_train_ids"]
            for example in examples.values():
                np.testing.assert_array_equal(example.labels, reference.labels)
                np.testing.assert_array_equal(np.asarray(example.image), np.asarray(reference.image))
            # Independent expectation: the label ids on disk mapped with the hand-written table.
            directory = "train" if split == "train" else "val"
            label_ids_path = [p for p in label_id_files if p.parent.parent.name == directory][index]
            label_ids = read_png(label_ids_path)
            assert set(np.unique(label_ids).tolist()) <= set(CITYSCAPES_EXPECTED_TRAIN_IDS)
            seen_label_ids |= set(np.unique(label_ids).tolist())
            expected = np.vectorize(CITYSCAPES_EXPECTED_TRAIN_IDS.get)(label_ids)
            np.testing.assert_array_equal(reference.labels, expected)
            # The mirror stores the same label ids as R=G=B.
            rgb = read_png(mirror_masks[index])
            assert rgb.ndim == 3 and rgb.shape[2] == 3
            for channel in range(3):
                np.testing.assert_array_equal(rgb[..., channel], label_ids)
    assert {0, 1, 9} & seen_label_ids and len(seen_label_ids - {0, 1, 9}) >= 6


def test_split_selection_and_max_samples(generated):
    data = load_segmentation_data(generated["cityscapes_label_ids"], splits=["val"], max_samples=2)
    assert list(data.splits) == ["validation"] and len(data.splits["validation"]) == 2
    assert data.example("val", 1).file_name.startswith("leftImg8bit/val/")
    mirror = load_segmentation_data(
        generated["cityscapes_mirror"], splits=["validation"], max_samples=1, cache_dir=generated["cache"]
    )
    assert list(mirror.splits) == ["validation"] and len(mirror.splits["validation"]) == 1
    with pytest.raises(DatasetFormatError, match="no split"):
        load_segmentation_data(generated["ade_raw"], splits=["test"])


def test_wrong_dataset_unknown_layout_and_missing_folder(generated, tmp_path):
    with pytest.raises(DatasetFormatError, match="dataset='cityscapes'"):
        load_segmentation_data(generated["ade_raw"], dataset="cityscapes")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match="not a known segmentation layout"):
        load_segmentation_data(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_segmentation_data(tmp_path / "missing")


# --- errors, each naming the file -------------------------------------------------------------------------------


@pytest.fixture
def small_ade(tmp_path) -> Path:
    return make_synthetic_ade20k(tmp_path, num_train=2, num_validation=1, image_size=(32, 48), seed=3)


def test_exif_orientation_is_applied_and_checked_against_the_mask(small_ade):
    image_path = small_ade / "images" / "training" / "ADE_train_00000001.jpg"
    original = Image.open(image_path).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"

    # Stored rotated with the tag: once transposed it matches its mask again.
    original.transpose(Image.Transpose.ROTATE_90).save(image_path, exif=exif, quality=95)
    example = load_segmentation_data(small_ade).example("train", 0)
    assert example.image.size == original.size
    assert np.abs(np.asarray(example.image, dtype=np.int16) - np.asarray(original, dtype=np.int16)).mean() < 8

    # Stored upright with the tag: the displayed image is 32x48 against a 48x32 mask.
    original.save(image_path, exif=exif, quality=95)
    with pytest.raises(DatasetFormatError, match=r"ADE_train_00000001\.jpg.*EXIF orientation 6"):
        load_segmentation_data(small_ade).example("train", 0)


@pytest.mark.parametrize("which", ["image", "annotation"])
def test_corrupt_file(small_ade, which):
    if which == "image":
        path = small_ade / "images" / "training" / "ADE_train_00000002.jpg"
    else:
        path = small_ade / "annotations" / "training" / "ADE_train_00000002.png"
    path.write_bytes(b"this is not an image")
    data = load_segmentation_data(small_ade)
    data.example("train", 0)  # the intact sample is fine
    with pytest.raises(DatasetFormatError, match=rf"{path.name}.*cannot read the {which}"):
        data.example("train", 1)


def test_ade20k_value_above_150(small_ade):
    path = small_ade / "annotations" / "training" / "ADE_train_00000001.png"
    mask = read_png(path).copy()
    mask[3, 5] = 200
    Image.fromarray(mask).save(path)
    with pytest.raises(DatasetFormatError, match=r"ADE_train_00000001\.png.*unexpected label values 200 \(1 pixels\)"):
        load_segmentation_data(small_ade).example("train", 0)


def test_missing_annotation_is_named(small_ade):
    (small_ade / "annotations" / "validation" / "ADE_val_00000001.png").unlink()
    with pytest.raises(DatasetFormatError, match=r"ADE_val_00000001\.png: annotation of .*ADE_val_00000001\.jpg"):
        load_segmentation_data(small_ade)


def test_cityscapes_bad_masks(tmp_path):
    root = make_synthetic_cityscapes(
        tmp_path / "cs", num_train=2, num_validation=1, image_size=(32, 64), train_ids=False
    )
    gt = root / "gtFine" / "train" / "aachen"
    unequal = gt / "aachen_000000_000019_gtFine_labelIds.png"
    rgb = np.zeros((32, 64, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 7, 7, 7
    rgb[10, 20] = (7, 8, 7)
    Image.fromarray(rgb).save(unequal)
    out_of_range = next(gt.parent.glob("*/*_000001_000019_gtFine_labelIds.png"))
    Image.fromarray(np.full((32, 64), 40, dtype=np.uint8)).save(out_of_range)

    data = load_segmentation_data(root)
    assert data.label_format == "cityscapes-label-ids"
    with pytest.raises(DatasetFormatError, match=r"aachen_000000_000019_gtFine_labelIds\.png.*unequal channels"):
        data.example("train", 0)
    with pytest.raises(DatasetFormatError, match=rf"{out_of_range.name}.*unexpected label values 40.*0\.\.33"):
        data.example("train", 1)
    np.testing.assert_array_equal(data.example("validation", 0).labels.shape, (32, 64))


def test_train_id_values_are_checked():
    data = SegmentationData("cityscapes", "cityscapes-train-ids", datasets.DatasetDict(), "test")
    np.testing.assert_array_equal(data.to_train_ids(np.array([[0, 18, 255]], dtype=np.uint8)), [[0, 18, 255]])
    with pytest.raises(DatasetFormatError, match=r"mask\.png: unexpected label values 19, 254"):
        data.to_train_ids(np.array([[19, 254, 3]], dtype=np.uint8), "mask.png")
    with pytest.raises(ValueError, match="does not belong"):
        SegmentationData("ade20k", "cityscapes-label-ids", datasets.DatasetDict(), "test")
    assert LABEL_FORMATS == ("ade20k", "cityscapes-train-ids", "cityscapes-label-ids")


# --- Hub sources: the arguments of datasets.load_dataset (no network here) ---------------------------------------


def encoded(array: np.ndarray, image_format: str = "PNG") -> dict:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format)
    return {"bytes": buffer.getvalue(), "path": None}


@pytest.fixture
def fake_hub(monkeypatch):
    calls = []
    image = encoded(np.full((4, 6, 3), 128, dtype=np.uint8), "JPEG")
    ade_mask = np.array([[0, 1, 150, 3, 3, 3]] * 4, dtype=np.uint8)
    city_mask = np.repeat(np.array([[7, 26, 33, 0, 9, 23]] * 4, dtype=np.uint8)[..., None], 3, axis=2)

    def load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        if "scene_parse_150" in path:
            features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
            split = {"image": [image], "annotation": [encoded(ade_mask) | {"path": "ADE_val_00000001.png"}]}
            test = {"image": [image], "annotation": [None]}
            return datasets.DatasetDict(
                {
                    "train": datasets.Dataset.from_dict(split, features=features),
                    "validation": datasets.Dataset.from_dict(split, features=features),
                    "test": datasets.Dataset.from_dict(test, features=features),
                }
            )
        features = datasets.Features({"image": datasets.Image(), "semantic_segmentation": datasets.Image()})
        split = datasets.Dataset.from_dict(
            {"image": [image], "semantic_segmentation": [encoded(city_mask)]}, features=features
        )
        return datasets.DatasetDict({"train": split, "val": split})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


@pytest.mark.parametrize("source", ["zhoubolei/scene_parse_150", "scene_parse_150"])
def test_ade20k_hub_id_loads_the_parquet_export(fake_hub, source, tmp_path):
    data = load_segmentation_data(source, cache_dir=tmp_path / "cache")
    assert fake_hub == [
        (
            "zhoubolei/scene_parse_150",
            {"data_dir": "scene_parsing", "revision": "refs/convert/parquet", "cache_dir": str(tmp_path / "cache")},
        )
    ]
    assert (data.dataset, data.label_format, data.source) == ("ade20k", "ade20k", "zhoubolei/scene_parse_150")
    assert set(data.splits) == {"train", "validation"}  # the unlabelled test split is left out unless asked for
    np.testing.assert_array_equal(data.example("validation", 0).labels[0], [255, 0, 149, 2, 2, 2])
    assert data.splits["train"]["file_name"] == ["train/0"]  # no path stored: split/index


def test_ade20k_hub_revision_and_test_split(fake_hub):
    data = load_segmentation_data(
        "scene_parse_150", splits=["test"], revision="e660d866a1351c70bcf07925d2600b60bd6e3bc3"
    )
    assert fake_hub[0][1]["revision"] == "e660d866a1351c70bcf07925d2600b60bd6e3bc3"
    assert fake_hub[0][1]["data_dir"] == "scene_parsing"
    with pytest.raises(DatasetFormatError, match="test/0: the row has no annotation"):
        data.example("test", 0)


def test_cityscapes_hub_mirror(fake_hub):
    data = load_segmentation_data("Chris1/cityscapes")
    assert fake_hub == [("Chris1/cityscapes", {"data_dir": None, "revision": None, "cache_dir": None})]
    assert (data.dataset, data.label_format) == ("cityscapes", "cityscapes-label-ids")
    assert set(data.splits) == {"train", "validation"}  # "val" normalised
    assert data.splits["validation"].column_names == ["image", "annotation", "file_name"]
    np.testing.assert_array_equal(data.example("validation", 0).labels[0], [0, 13, 18, 255, 255, 10])


# --- the generator ---------------------------------------------------------------------------------------------


def file_contents(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "make, layout",
    [
        (make_synthetic_ade20k, "raw"),
        (make_synthetic_ade20k, "parquet"),
        (make_synthetic_cityscapes, "raw"),
        (make_synthetic_cityscapes, "mirror"),
    ],
)
def test_generator_is_deterministic_and_writes_atomically(tmp_path, make, layout):
    kwargs = {"layout": layout, "num_train": 2, "num_validation": 1, "image_size": (24, 32)}
    first = make(tmp_path / "a", seed=5, **kwargs)
    second = make(tmp_path / "b", seed=5, **kwargs)
    other = make(tmp_path / "c", seed=6, **kwargs)
    assert file_contents(first) == file_contents(second)
    assert file_contents(first) != file_contents(other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary folders left
    with pytest.raises(FileExistsError):
        make(tmp_path / "a", seed=5, **kwargs)


def test_synthetic_scenes_are_learnable_from_colour(generated):
    """A nearest-mean-colour classifier fitted on train pixels labels most validation pixels right."""
    for layout in ("ade_raw", "cityscapes_train_ids"):
        data = load_segmentation_data(generated[layout])
        colours, labels = [], []
        for index in range(len(data.splits["train"])):
            example = data.example("train", index)
            colours.append(np.asarray(example.image, dtype=np.float64).reshape(-1, 3))
            labels.append(example.labels.ravel())
        colours, labels = np.concatenate(colours), np.concatenate(labels)
        classes = np.unique(labels[labels != 255])
        assert 6 <= len(classes) <= 10
        means = np.stack([colours[labels == c].mean(axis=0) for c in classes])
        correct = total = 0
        for index in range(len(data.splits["validation"])):
            example = data.example("validation", index)
            pixels = np.asarray(example.image, dtype=np.float64).reshape(-1, 3)
            predicted = classes[((pixels[:, None] - means[None]) ** 2).sum(-1).argmin(axis=1)]
            scored = example.labels.ravel() != 255
            correct += int((predicted[scored] == example.labels.ravel()[scored]).sum())
            total += int(scored.sum())
        assert correct / total > 0.75, layout


def test_a_mistyped_local_path_is_named_not_sent_to_the_hub(fake_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    # `data/ade` has the shape of a Hub id `owner/name`, but `data/` is a folder here: a local path that is missing.
    with pytest.raises(FileNotFoundError, match=r"data/ade: no such folder \(.*/data/ade does not exist\)"):
        load_segmentation_data("data/ade")
    for source in ("./data/ade", "../x", "data/ade/train", "~/no-such-folder/ade", str(tmp_path / "ade")):
        with pytest.raises(FileNotFoundError, match="no such folder"):
            load_segmentation_data(source)
    assert fake_hub == []  # none of them went to the Hub


def test_a_hub_id_that_fails_also_says_no_local_folder(monkeypatch, tmp_path, fake_hub):
    monkeypatch.chdir(tmp_path)
    load_segmentation_data("zhoubolei/scene_parse_150")  # real Hub ids still go to the Hub
    assert [path for path, _ in fake_hub] == ["zhoubolei/scene_parse_150"]

    def unreachable(path, **kwargs):
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(
        FileNotFoundError,
        match=r"ade20k-copy: no such local folder \(.*ade20k-copy does not exist\), "
        r"and loading it as a Hub dataset id failed: Couldn't reach 'ade20k-copy'",
    ):
        load_segmentation_data("ade20k-copy")
