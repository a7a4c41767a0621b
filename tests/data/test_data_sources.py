"""The source table of `data/sources.py`: each detector recognises its own layout (the synthetic ones), the first
match in `SOURCES` loads it, `load_segmentation_data` walks that table, and a folder no source knows is refused in
one line."""

from pathlib import Path

import datasets
import pytest

from transformers_setr.cli import main as setr
from transformers_setr.data import DatasetFormatError, load_segmentation_data
from transformers_setr.data import sources as data_sources
from transformers_setr.data.sources import SOURCES, CustomOptions, LoadRequest
from transformers_setr.data.synthetic import (
    make_synthetic_ade20k,
    make_synthetic_cityscapes,
    make_synthetic_custom,
    make_synthetic_defects,
)

from helpers.training_runs import common_args

SIZE = {"num_train": 2, "num_validation": 1, "image_size": (32, 32)}


pytestmark = pytest.mark.usefixtures("offline_datasets")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    return {
        "ade20k raw": make_synthetic_ade20k(root / "ade", layout="raw", **SIZE),  # .../ADEChallengeData2016
        "ade20k raw, its parent": root / "ade",
        "ade20k parquet export": make_synthetic_ade20k(root / "ade_parquet", layout="parquet", **SIZE),
        "cityscapes raw": make_synthetic_cityscapes(root / "cityscapes", layout="raw", **SIZE),
        "cityscapes mirror": make_synthetic_cityscapes(root / "mirror", layout="mirror", **SIZE),
        "custom parquet": make_synthetic_custom(root / "custom_parquet", layout="parquet", **SIZE),
        "custom folder": make_synthetic_custom(root / "custom_folder", layout="folder", **SIZE),
        "custom saved": make_synthetic_custom(root / "custom_saved", layout="saved", **SIZE),
        "defects": make_synthetic_defects(root / "defects", num_train=2, num_validation=1, size=32),
    }


def request(**custom) -> LoadRequest:
    """What `load_segmentation_data(source, **custom)` asks of the detectors (no dataset named, default splits)."""
    return LoadRequest(None, None, None, None, None, None, CustomOptions(**custom))


def recognising(where, load_request: LoadRequest) -> list[str]:
    """The sources whose detector recognises `where`, in table order."""
    return [source.name for source in SOURCES if source.detect(where, load_request) is not None]


# Written by hand from the layouts: the first name is the source that loads it; the others are the generic sources
# later in the table that would also read it (a raw ADE20K tree has images/ and annotations/, an image + mask
# layout; the Parquet export is a folder of Parquet files).
EXPECTED = {
    "ade20k raw": ["ade20k-raw", "image-mask-folders"],
    "ade20k raw, its parent": ["ade20k-raw"],
    "ade20k parquet export": ["ade20k-parquet-export", "parquet-files"],
    "cityscapes raw": ["cityscapes-raw"],
    "cityscapes mirror": ["parquet-files"],
    "custom parquet": ["parquet-files"],
    "custom folder": ["image-mask-folders"],
    "custom saved": ["saved-dataset"],
    "defects": ["image-mask-folders"],
}


def test_the_table_holds_each_source_once_in_its_order():
    assert [source.name for source in SOURCES] == [
        "in-memory",
        "ade20k-hub",
        "hub",
        "ade20k-raw",
        "cityscapes-raw",
        "ade20k-parquet-export",
        "saved-dataset",
        "parquet-files",
        "image-mask-folders",
    ]


@pytest.mark.parametrize("layout", sorted(EXPECTED))
def test_each_detector_recognises_its_own_layout_and_no_other(layouts, layout):
    assert recognising(layouts[layout], request()) == EXPECTED[layout]


def test_the_raw_ade20k_detector_finds_the_tree_below_its_parent(layouts):
    ade20k_raw = next(source for source in SOURCES if source.name == "ade20k-raw")
    assert ade20k_raw.detect(layouts["ade20k raw, its parent"], request()) == layouts["ade20k raw"]


def test_hub_ids_and_datasets_objects_are_recognised_by_their_sources_only():
    assert recognising("scene_parse_150", request()) == ["ade20k-hub", "hub"]
    assert recognising("zhoubolei/scene_parse_150", request()) == ["ade20k-hub", "hub"]
    assert recognising("someone/pets", request()) == ["hub"]
    table = datasets.Dataset.from_dict({"image": ["a.png"], "label": ["a_mask.png"]})
    assert recognising(table, request()) == ["in-memory"]
    assert recognising(datasets.DatasetDict({"train": table}), request()) == ["in-memory"]


def test_declared_classes_make_a_preset_tree_custom_data(layouts):
    declared = request(id2label={0: "a", 1: "b"})
    assert recognising(layouts["ade20k raw"], declared) == ["image-mask-folders"]
    assert recognising(layouts["ade20k raw, its parent"], declared) == []
    assert recognising(layouts["cityscapes raw"], declared) == []
    assert recognising(layouts["ade20k parquet export"], declared) == ["parquet-files"]


def test_load_segmentation_data_walks_the_table(layouts, monkeypatch):
    assert load_segmentation_data(layouts["cityscapes raw"]).dataset == "cityscapes"
    without_cityscapes = tuple(source for source in SOURCES if source.name != "cityscapes-raw")
    monkeypatch.setattr(data_sources, "SOURCES", without_cityscapes)
    with pytest.raises(DatasetFormatError, match="not a known segmentation layout") as refusal:
        load_segmentation_data(layouts["cityscapes raw"])
    assert "Cityscapes" not in str(refusal.value) and "ADEChallengeData2016/" in str(refusal.value)

    seen = []

    def load_and_record(found, load_request):
        seen.append(found)
        return "loaded by the first source"

    first = data_sources.Source("first", lambda where, load_request: where, load_and_record)
    monkeypatch.setattr(data_sources, "SOURCES", (first, *SOURCES))
    assert load_segmentation_data(layouts["custom folder"]) == "loaded by the first source"
    assert seen == [layouts["custom folder"].resolve()]


def test_an_unrecognised_folder_is_one_line_naming_every_layout(tmp_path, capsys):
    folder = tmp_path / "holiday photos"
    (folder / "beach").mkdir(parents=True)
    (folder / "beach" / "notes.txt").write_text("not a dataset")
    try:
        code = setr(["train", *common_args(folder, tmp_path / "run")])
    except SystemExit as exit_info:
        code = exit_info.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert lines[-1] == (
        f"setr train: error: {folder.resolve()}: not a known segmentation layout; expected ADEChallengeData2016/ "
        "(images/, annotations/), a Cityscapes root (leftImg8bit/, gtFine/), the scene_parse_150 Parquet export "
        "(scene_parsing/), a save_to_disk folder with image and mask columns, a folder of Parquet files, or image + "
        "mask files (images/ and one of masks/, labels/, annotations/, optionally per split)"
    )
    assert "Traceback" not in "\n".join(lines)
    assert not (tmp_path / "run").exists()
