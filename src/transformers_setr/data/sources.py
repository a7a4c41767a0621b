"""Where data comes from: each source is a detector (does this Hub id, folder or `datasets` object look like me?)
and a loader (read it into a `SegmentationData`), registered in one table, `SOURCES`, tried in order by
`load_segmentation_data`. A folder no detector recognises is refused in one line that lists what each expects.

ADE20K and Cityscapes are recognised only by their known sources and layouts (below) or when named with `dataset`.
Anything else is custom data, whose classes must be declared (`classes.py`); without a declaration the load is
refused.

Custom sources: a Hub id or local copy with an image and a mask column (`image` / `pixel_values`, `label` /
`annotation` / `semantic_segmentation` by default, or named), a `save_to_disk` folder, a folder of image + mask
files matched by stem (`images/` + `masks/` | `labels/` | `annotations/`, each optionally split into
`train/`, `val/`..., or `train/images/` + `train/masks/`...), or a `datasets.Dataset` / `DatasetDict`. Without a
validation split, `train_val_split` of the train split (default 0.15, fixed seed) becomes one.

Preset sources understood:
- the Hub's ADE20K `zhoubolei/scene_parse_150` (alias `scene_parse_150`). Its `main` branch is a loading script,
  which `datasets` 4+ refuses, so it is read from the Parquet export `refs/convert/parquet` with
  `data_dir="scene_parsing"`; without `data_dir` the `instance_segmentation` files land in the same splits and the
  load fails on their different schema;
- a local copy of that Parquet export (a folder with `scene_parsing/` and `instance_segmentation/`);
- a raw `ADEChallengeData2016/` tree (or its parent), files sorted by path as mmsegmentation does;
- a raw Cityscapes root (`leftImg8bit/`, `gtFine/`): `*_gtFine_labelTrainIds.png` when every image has one, else the
  official `*_gtFine_labelIds.png` mapped to train ids;
- a Hub mirror of Cityscapes such as `Chris1/cityscapes`, or a local folder of Parquet files in the `push_to_hub`
  layout (`image` + `semantic_segmentation`). These store label ids (as R=G=B RGB PNGs), which are mapped.

The preset trees (raw ADE20K, raw Cityscapes, the ADE20K Parquet export) are not recognised in a folder whose
classes the caller declares (or whose `id2label.json` does): that folder is custom data.
"""

import dataclasses
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from transformers.utils import logging

from ..models.setr.configuration_setr import IGNORE_INDEX
from ..presets import HUB_DATASETS
from ._datasets import datasets
from .classes import (
    CUSTOM_DATASET,
    CUSTOM_LABEL_FORMAT,
    ID2LABEL_FILE,
    UNDECLARED_COLORS,
    declare_classes,
    load_id2label_json,
    parse_mask_values,
)
from .dataset import SegmentationData
from .errors import DatasetFormatError, UndeclaredClassesError
from .label_tables import DATASETS
from .masks import JPEG_MASK_REFUSAL
from .splits import (
    DEFAULT_SPLITS,
    DEFAULT_TRAIN_VAL_SPLIT,
    IMAGE_COLUMNS,
    LABEL_COLUMNS,
    by_split_name,
    choose_splits,
    first_rows,
    normalise_split,
    normalised_splits,
    pick_column,
    split_from_files,
    with_validation_split,
)

logger = logging.get_logger(__name__)

IN_MEMORY_SOURCE = "in-memory dataset"  # the `source` of a `datasets` object passed in
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")  # lossless only
MASK_FOLDERS = ("masks", "labels", "annotations")
LOSSY_MASK_SUFFIXES = (".jpg", ".jpeg")
ADE20K_HUB_ID = HUB_DATASETS["ade20k"].hub_id
ADE20K_HUB_ALIASES = ("scene_parse_150", ADE20K_HUB_ID)
# The parquet-converter bot's branch: the only form of the dataset `datasets` >= 4 can load.
ADE20K_PARQUET_REVISION = "refs/convert/parquet"
ADE20K_PARQUET_DATA_DIR = HUB_DATASETS["ade20k"].hub_config  # "scene_parsing"

# The annotation column of the Parquet layouts: ADE20K's export and the Cityscapes mirrors.
ANNOTATION_COLUMNS = {"annotation": "ade20k", "semantic_segmentation": "cityscapes"}
_HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")

# What a source is given: a local folder (resolved), a Hub id, or a `datasets` object.
Location: TypeAlias = "Path | str | datasets.Dataset | datasets.DatasetDict"


@dataclass
class CustomOptions:
    """What the caller said about custom data (None: not said)."""

    id2label: dict[int, str] | str | os.PathLike | None = None  # of the stored mask values, or a JSON file
    reduce_labels: bool | None = None
    image_column: str | None = None
    label_column: str | None = None
    train_val_split: float | None = DEFAULT_TRAIN_VAL_SPLIT
    ignore_index: int = IGNORE_INDEX
    palette: Sequence[Sequence[int]] | None = None
    mask_values: tuple[int, ...] | None = None
    undeclared_colors: str = "error"

    @property
    def declares_classes(self) -> bool:
        """Whether the caller said anything about the classes (then the data is custom)."""
        return self.id2label is not None or self.reduce_labels is not None or self.mask_values is not None

    def checked(self, dataset: str | None) -> "CustomOptions":
        """These options, parsed (`mask_values`, `ignore_index`) and checked for a load of `dataset` (None: inferred):
        the one check of both loaders (`load_segmentation_data`, `data.streaming.load_streaming_data`)."""
        if dataset is not None and dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(DATASETS)}")
        if self.undeclared_colors not in UNDECLARED_COLORS:
            raise ValueError(f"undeclared_colors must be one of {UNDECLARED_COLORS}, got {self.undeclared_colors!r}")
        checked = dataclasses.replace(
            self, ignore_index=int(self.ignore_index), mask_values=parse_mask_values(self.mask_values)
        )
        if dataset is not None and checked.declares_classes:
            raise ValueError(
                f"dataset={dataset!r} has its own classes; id2label / reduce_labels / mask_values are for custom data"
            )
        return checked

    def declared_id2label(
        self, folder: Path | None, hub_id: str | None, revision: str | None
    ) -> tuple[Any, str] | None:
        """(id2label as declared, where it came from), or None when nothing declares classes; checked by
        `declare_classes`."""
        if isinstance(self.id2label, dict):
            return self.id2label, "id2label argument"
        if self.id2label is not None:
            return load_id2label_json(self.id2label), str(self.id2label)
        if folder is not None and (folder / ID2LABEL_FILE).is_file():
            return load_id2label_json(folder / ID2LABEL_FILE), str(folder / ID2LABEL_FILE)
        if hub_id is not None:
            found = _hub_id2label(hub_id, revision)
            if found is not None:
                return found, f"{hub_id}/{ID2LABEL_FILE}"
        return None


@dataclass(frozen=True)
class LoadRequest:
    """The arguments of `load_segmentation_data`, checked: what every detector and loader reads."""

    dataset: str | None  # "ade20k" | "cityscapes" when the caller named it
    splits: Sequence[str] | None  # the split names asked for (None: the defaults)
    max_samples: int | None
    revision: str | None
    cache_dir: str | None
    config_name: str | None
    custom: CustomOptions


@dataclass(frozen=True)
class Source:
    """One kind of source: `detect` returns what `load` reads (a folder, a layout, a Hub id) when the location is of
    this kind, else None; `expected` describes a folder of this kind for the refusal of an unknown one."""

    name: str
    detect: Callable[[Location, LoadRequest], Any]
    load: Callable[[Any, LoadRequest], SegmentationData]
    expected: str | None = None


def _hub_id2label(repo_id: str, revision: str | None) -> dict | None:
    """The `id2label.json` of a Hub dataset repo, None when it has none or the Hub cannot be reached."""
    from huggingface_hub import constants, hf_hub_download

    # Offline (either library's switch): the cache only, never a network attempt that has to time out.
    offline = bool(datasets.config.HF_HUB_OFFLINE or constants.HF_HUB_OFFLINE)
    try:
        path = hf_hub_download(
            repo_id, ID2LABEL_FILE, repo_type="dataset", revision=revision, local_files_only=offline
        )
    except Exception:  # no such file, offline, no such repo: the refusal below says how to declare the classes
        return None
    try:
        return json.loads(Path(path).read_text())
    except ValueError as error:
        raise DatasetFormatError(f"{repo_id}/{ID2LABEL_FILE}: not JSON: {error}") from None


def undeclared_classes_error(source: str, columns: Sequence[str] | None) -> UndeclaredClassesError:
    found = f" (columns {list(columns)})" if columns is not None else ""
    return UndeclaredClassesError(
        f"{source}: not ADE20K or Cityscapes by its source or layout{found}, so it is read as custom data, whose "
        f"classes must be declared: pass --id2label FILE.json (Python: id2label={{0: 'name', ...}}) or put an "
        f'{ID2LABEL_FILE} ({{"0": "name", ...}}, the mask values as stored) next to the data; pass '
        "--dataset ade20k / cityscapes if it really is one of those"
    )


def _check_dataset(found: str, asked: str | None, source: str) -> str:
    if asked is not None and asked != found:
        raise DatasetFormatError(f"{source} holds {found} data, but dataset={asked!r} was asked for")
    return found


def custom_data(
    splits: datasets.DatasetDict,
    source: str,
    stored_id2label: dict[int, str],
    origin: str,
    options: CustomOptions,
    name: str | None,
) -> SegmentationData:
    reduce_labels = bool(options.reduce_labels)
    declaration = declare_classes(
        stored_id2label, origin, reduce_labels=reduce_labels, mask_values=options.mask_values
    )
    logger.info(
        "%s: custom data, %d classes from %s, reduce_labels=%s, ignore index %d",
        source,
        len(declaration.classes),
        origin,
        reduce_labels,
        options.ignore_index,
    )
    # The declaration's fields (classes, mask values, mask colours) are `SegmentationData`'s, by name.
    return SegmentationData(
        CUSTOM_DATASET,
        CUSTOM_LABEL_FORMAT,
        splits,
        source,
        reduce_labels=reduce_labels,
        custom_palette=options.palette,
        ignore_index=options.ignore_index,
        name=name,
        undeclared_colors=options.undeclared_colors,
        **dataclasses.asdict(declaration),
    )


def preset_annotation_column(columns: Sequence[str], source: str) -> str:
    """The mask column of an ADE20K / Cityscapes table (`ANNOTATION_COLUMNS`), beside its `image` column."""
    annotation_column = next((column for column in ANNOTATION_COLUMNS if column in columns), None)
    if "image" not in columns or annotation_column is None:
        raise DatasetFormatError(
            f"{source}: expected an 'image' column and one of {list(ANNOTATION_COLUMNS)}, found columns {list(columns)}"
        )
    return annotation_column


def _preset_from_table(
    loaded: datasets.Dataset | datasets.DatasetDict, dataset: str | None, request: LoadRequest, source: str
) -> SegmentationData:
    """Normalise what `datasets.load_dataset` returned for a Parquet source of ADE20K or Cityscapes (`dataset`; None:
    told by the annotation column)."""
    by_name = by_split_name(loaded, source)
    chosen = choose_splits(request.splits, list(by_name), source)

    columns = by_name[chosen[0]].column_names
    annotation_column = preset_annotation_column(columns, source)
    dataset = dataset or ANNOTATION_COLUMNS[annotation_column]
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(DATASETS)}")
    # Parquet copies of Cityscapes (the Hub mirrors) store label ids, never train ids.
    label_format = "ade20k" if dataset == "ade20k" else "cityscapes-label-ids"
    splits = normalised_splits(by_name, chosen, "image", annotation_column, request.max_samples, source)
    return SegmentationData(dataset, label_format, splits, source)


def _from_table(
    loaded: datasets.Dataset | datasets.DatasetDict,
    request: LoadRequest,
    source: str,
    *,
    folder: Path | None = None,
    hub_id: str | None = None,
) -> SegmentationData:
    """A table source that is not a known ADE20K layout: ADE20K / Cityscapes when named with `dataset`, a
    Cityscapes mirror (`image` + `semantic_segmentation`, label ids) when no classes are declared, else custom data
    with declared classes; refused otherwise."""
    by_name = by_split_name(loaded, source)
    if request.dataset in DATASETS:
        return _preset_from_table(by_name, request.dataset, request, source)
    options, wanted = request.custom, request.splits
    declared = options.declared_id2label(folder, hub_id, request.revision)
    columns = next(iter(by_name.values())).column_names if by_name else []
    if declared is None:
        cityscapes_mirror = "image" in columns and "semantic_segmentation" in columns and "label" not in columns
        said_nothing = options.image_column is None and options.label_column is None and options.reduce_labels is None
        if cityscapes_mirror and said_nothing:
            logger.info("%s: image + semantic_segmentation columns and no id2label: a Cityscapes mirror", source)
            return _preset_from_table(by_name, "cityscapes", request, source)
        raise undeclared_classes_error(source, columns)
    stored_id2label, origin = declared
    columns = by_name["train"].column_names if "train" in by_name else columns
    image_column = pick_column(columns, options.image_column, IMAGE_COLUMNS, "image", source)
    label_column = pick_column(columns, options.label_column, LABEL_COLUMNS, "label", source)
    asked = [normalise_split(split) for split in wanted] if wanted is not None else list(DEFAULT_SPLITS)
    wanted_now = [split for split in by_name if split in ("train", *asked)] or list(by_name)
    normalised = normalised_splits(by_name, wanted_now, image_column, label_column, None, source)
    by_name = with_validation_split(dict(normalised), wanted, options.train_val_split, source)
    chosen = choose_splits(wanted, list(by_name), source)
    splits = first_rows(by_name, chosen, request.max_samples)
    return custom_data(
        splits, source, stored_id2label, origin, options, name=hub_id or (folder.name if folder else None)
    )


def _load_parquet(
    path_or_id: str,
    *,
    data_dir: str | None,
    revision: str | None,
    cache_dir: str | None,
    name: str | None = None,
) -> datasets.DatasetDict:
    # Looked up on the module at call time (tests replace it to check the arguments of Hub loads).
    config = {"name": name} if name else {}
    return datasets.load_dataset(path_or_id, **config, data_dir=data_dir, revision=revision, cache_dir=cache_dir)


def _load_hub(source: str, hub_id: str, **kwargs: Any) -> datasets.DatasetDict:
    """`_load_parquet` for a Hub id; when the Hub has nothing (or cannot be reached), the error also says that no
    local folder of that name exists: `source` may be a mistyped local path."""
    try:
        return _load_parquet(hub_id, **kwargs)
    except (ConnectionError, FileNotFoundError) as error:  # datasets' DatasetNotFoundError is a FileNotFoundError
        raise FileNotFoundError(
            f"{source}: no such local folder ({Path(source).absolute()} does not exist), and loading it as a Hub "
            f"dataset id failed: {error}"
        ) from error


def local_folder(source: str | os.PathLike) -> Path | None:
    """The local folder `source` names, or None for a Hub id (`name` or `owner/name` that is not a local path)."""
    if isinstance(source, os.PathLike):
        path = Path(source).expanduser()
    else:
        path = Path(str(source)).expanduser()
        # A Hub id shape, unless it reads `data/ade` and `data/` is a folder here: then it is a mistyped local path.
        mistyped_local = bool(path.parent.name) and path.parent.is_dir()
        if not path.exists() and _HUB_ID_PATTERN.match(str(source)) and not mistyped_local:
            return None
    if not path.exists():
        raise FileNotFoundError(f"{source}: no such folder ({path.absolute()} does not exist)")
    if not path.is_dir():
        raise DatasetFormatError(f"{source}: expected a dataset folder, found a file")
    return path.resolve()


def _location(source: str | os.PathLike | datasets.Dataset | datasets.DatasetDict) -> Location:
    """What the detectors look at: a `datasets` object as it is, a local folder (resolved), else a Hub id."""
    if isinstance(source, datasets.Dataset | datasets.DatasetDict):
        return source
    folder = local_folder(source)
    return str(source) if folder is None else folder


# ---- The sources: a detector and a loader each, in the order of `SOURCES`.


def _detect_in_memory(where: Location, request: LoadRequest) -> datasets.Dataset | datasets.DatasetDict | None:
    return where if isinstance(where, datasets.Dataset | datasets.DatasetDict) else None


def _load_in_memory(loaded: datasets.Dataset | datasets.DatasetDict, request: LoadRequest) -> SegmentationData:
    return _from_table(loaded, request, IN_MEMORY_SOURCE)


def _detect_ade20k_hub(where: Location, request: LoadRequest) -> str | None:
    return where if isinstance(where, str) and where in ADE20K_HUB_ALIASES else None


def _load_ade20k_hub(alias: str, request: LoadRequest) -> SegmentationData:
    _check_dataset("ade20k", request.dataset, alias)
    if request.custom.declares_classes:
        raise ValueError(
            f"{alias} is ADE20K, with its own classes; id2label / reduce_labels / mask_values do not apply"
        )
    loaded = _load_hub(
        alias,
        ADE20K_HUB_ID,
        data_dir=ADE20K_PARQUET_DATA_DIR,
        revision=request.revision or ADE20K_PARQUET_REVISION,
        cache_dir=request.cache_dir,
    )
    return _preset_from_table(loaded, "ade20k", request, ADE20K_HUB_ID)


def _detect_hub(where: Location, request: LoadRequest) -> str | None:
    return where if isinstance(where, str) else None


def _load_hub_table(hub_id: str, request: LoadRequest) -> SegmentationData:
    loaded = _load_hub(
        hub_id, hub_id, data_dir=None, revision=request.revision, cache_dir=request.cache_dir, name=request.config_name
    )
    return _from_table(loaded, request, hub_id, hub_id=hub_id)


def _preset_folder(where: Location, request: LoadRequest) -> Path | None:
    """The folder, when it may hold a preset tree: a local folder whose classes neither the caller (`id2label`,
    `reduce_labels`, `mask_values`) nor an `id2label.json` in it declares."""
    if not isinstance(where, Path) or request.custom.declares_classes:
        return None
    return where if request.dataset is not None or not (where / ID2LABEL_FILE).is_file() else None


def _detect_ade20k_raw(where: Location, request: LoadRequest) -> Path | None:
    """The `ADEChallengeData2016` tree: the folder itself or its child of that name."""
    folder = _preset_folder(where, request)
    if folder is None:
        return None
    for root in (folder, folder / "ADEChallengeData2016"):
        has_splits = any((root / "images" / split).is_dir() for split in ("training", "validation"))
        if has_splits and (root / "annotations").is_dir():
            return root
    return None


def _load_ade20k_raw(root: Path, request: LoadRequest) -> SegmentationData:
    _check_dataset("ade20k", request.dataset, str(root))
    folders = {"train": "training", "validation": "validation"}
    available = [split for split, folder in folders.items() if (root / "images" / folder).is_dir()]
    splits = {}
    for split in choose_splits(request.splits, available, str(root)):
        image_folder, annotation_folder = root / "images" / folders[split], root / "annotations" / folders[split]
        # mmsegmentation lists the image folder recursively for the suffix and sorts by path.
        images = sorted(image_folder.rglob("*.jpg"), key=lambda path: path.as_posix())[: request.max_samples]
        if not images:
            raise DatasetFormatError(f"{image_folder}: no .jpg images")
        annotations = [annotation_folder / path.relative_to(image_folder).with_suffix(".png") for path in images]
        missing = [(image, path) for image, path in zip(images, annotations) if not path.is_file()]
        if missing:
            raise DatasetFormatError(
                f"{missing[0][1]}: annotation of {missing[0][0]} not found ({len(missing)} missing in {annotation_folder})"
            )
        splits[split] = split_from_files(images, annotations, root)
    return SegmentationData("ade20k", "ade20k", datasets.DatasetDict(splits), str(root))


def _detect_cityscapes_raw(where: Location, request: LoadRequest) -> Path | None:
    folder = _preset_folder(where, request)
    return (
        folder if folder is not None and (folder / "leftImg8bit").is_dir() and (folder / "gtFine").is_dir() else None
    )


def _load_cityscapes_raw(root: Path, request: LoadRequest) -> SegmentationData:
    _check_dataset("cityscapes", request.dataset, str(root))
    folders = {"train": "train", "validation": "val", "test": "test"}
    available = [split for split, folder in folders.items() if (root / "leftImg8bit" / folder).is_dir()]
    listing = {}
    for split in choose_splits(request.splits, available, str(root)):
        image_folder = root / "leftImg8bit" / folders[split]
        images = sorted(image_folder.rglob("*_leftImg8bit.png"), key=lambda path: path.as_posix())
        images = images[: request.max_samples]
        if not images:
            raise DatasetFormatError(f"{image_folder}: no *_leftImg8bit.png images")
        stems = [
            root
            / "gtFine"
            / folders[split]
            / path.relative_to(image_folder).parent
            / path.name.removesuffix("_leftImg8bit.png")
            for path in images
        ]
        listing[split] = (images, stems)
    # One label format for the whole load: train ids only if every image has them (they are made by a converter,
    # not downloaded), otherwise the official label ids, mapped.
    all_stems = [stem for _, stems in listing.values() for stem in stems]
    with_train_ids = sum(Path(f"{stem}_gtFine_labelTrainIds.png").is_file() for stem in all_stems)
    suffix = "_gtFine_labelTrainIds.png" if with_train_ids == len(all_stems) else "_gtFine_labelIds.png"
    if 0 < with_train_ids < len(all_stems):
        logger.warning(
            f"{root}: only {with_train_ids} of {len(all_stems)} images have *_gtFine_labelTrainIds.png; "
            "using *_gtFine_labelIds.png (mapped to train ids) for all of them"
        )
    splits = {}
    for split, (images, stems) in listing.items():
        annotations = [Path(f"{stem}{suffix}") for stem in stems]
        missing = [(image, path) for image, path in zip(images, annotations) if not path.is_file()]
        if missing:
            raise DatasetFormatError(
                f"{missing[0][1]}: annotation of {missing[0][0]} not found ({len(missing)} missing)"
            )
        splits[split] = split_from_files(images, annotations, root)
    label_format = "cityscapes-train-ids" if suffix == "_gtFine_labelTrainIds.png" else "cityscapes-label-ids"
    return SegmentationData("cityscapes", label_format, datasets.DatasetDict(splits), str(root))


def _detect_ade20k_parquet_export(where: Location, request: LoadRequest) -> Path | None:
    folder = _preset_folder(where, request)
    return folder if folder is not None and (folder / ADE20K_PARQUET_DATA_DIR).is_dir() else None


def _load_ade20k_parquet_export(folder: Path, request: LoadRequest) -> SegmentationData:
    _check_dataset("ade20k", request.dataset, str(folder))
    loaded = _load_parquet(str(folder), data_dir=ADE20K_PARQUET_DATA_DIR, revision=None, cache_dir=request.cache_dir)
    return _preset_from_table(loaded, "ade20k", request, str(folder))


def _detect_saved_dataset(where: Location, request: LoadRequest) -> Path | None:
    """A `save_to_disk` folder: of a DatasetDict, or of a single Dataset."""
    if not isinstance(where, Path):
        return None
    saved_dict = (where / "dataset_dict.json").is_file()
    saved_split = (where / "state.json").is_file() and (where / "dataset_info.json").is_file()
    return where if saved_dict or saved_split else None


def _load_saved_dataset(folder: Path, request: LoadRequest) -> SegmentationData:
    return _from_table(datasets.load_from_disk(str(folder)), request, str(folder), folder=folder)


def _detect_parquet_files(where: Location, request: LoadRequest) -> Path | None:
    return where if isinstance(where, Path) and next(where.rglob("*.parquet"), None) is not None else None


def _load_parquet_files(folder: Path, request: LoadRequest) -> SegmentationData:
    loaded = _load_parquet(str(folder), data_dir=None, revision=None, cache_dir=request.cache_dir)
    return _from_table(loaded, request, str(folder), folder=folder)


def _detect_image_mask_folders(where: Location, request: LoadRequest) -> tuple[Path, dict] | None:
    """(the folder, split -> (image folder, mask folder)) of a folder of image + mask files, None when it is not
    one."""
    if not isinstance(where, Path):
        return None

    def mask_folder(parent: Path) -> Path | None:
        return next((parent / name for name in MASK_FOLDERS if (parent / name).is_dir()), None)

    known = {"train", "validation", "test"}
    per_split = {}
    for child in sorted(where.iterdir()):  # train/images + train/masks, val/images + val/masks
        if child.is_dir() and normalise_split(child.name) in known and (child / "images").is_dir():
            masks = mask_folder(child)
            if masks is not None:
                per_split[normalise_split(child.name)] = (child / "images", masks)
    if per_split:
        return where, per_split
    masks = mask_folder(where)
    if not (where / "images").is_dir() or masks is None:
        return None
    for child in sorted((where / "images").iterdir()):  # images/train + masks/train
        if child.is_dir() and normalise_split(child.name) in known and (masks / child.name).is_dir():
            per_split[normalise_split(child.name)] = (child, masks / child.name)
    return where, per_split or {"train": (where / "images", masks)}


def _files_by_stem(folder: Path, suffixes: Sequence[str], what: str) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.rglob("*"), key=lambda path: path.as_posix()):
        if path.is_file() and path.suffix.lower() in suffixes:
            stem = path.relative_to(folder).with_suffix("").as_posix()
            if stem in files:
                raise DatasetFormatError(f"{folder}: two {what} files for {stem!r}: {files[stem].name}, {path.name}")
            files[stem] = path
    return files


def _load_image_mask_folders(found: tuple[Path, dict], request: LoadRequest) -> SegmentationData:
    root, layout = found
    if request.dataset is not None:
        raise DatasetFormatError(f"{root}: a folder of image + mask pairs is custom data, not {request.dataset}")
    options = request.custom
    declared = options.declared_id2label(root, None, None)
    if declared is None:
        raise undeclared_classes_error(str(root), None)
    stored_id2label, origin = declared
    by_name = {}
    for split, (image_folder, mask_folder) in layout.items():
        images = _files_by_stem(image_folder, IMAGE_SUFFIXES, "image")
        masks = _files_by_stem(mask_folder, MASK_SUFFIXES, "mask")
        if not images:
            raise DatasetFormatError(f"{image_folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
        missing = [stem for stem in images if stem not in masks]
        lossy = _files_by_stem(mask_folder, LOSSY_MASK_SUFFIXES, "mask") if missing else {}
        lossy_missing = [stem for stem in missing if stem in lossy]
        if lossy_missing:
            raise DatasetFormatError(
                f"{lossy[lossy_missing[0]]}: a JPEG mask ({len(lossy_missing)} of {len(images)} masks are JPEG); "
                f"{JPEG_MASK_REFUSAL}"
            )
        if missing:
            raise DatasetFormatError(
                f"{images[missing[0]]}: no mask {mask_folder / missing[0]}.png (masks are matched by file stem; "
                f"{len(missing)} of {len(images)} images have none)"
            )
        unmatched = [stem for stem in masks if stem not in images]
        if unmatched:
            logger.warning(
                "%s: %d masks without an image (e.g. %s), not used", mask_folder, len(unmatched), unmatched[0]
            )
        stems = list(images)
        by_name[split] = split_from_files([images[s] for s in stems], [masks[s] for s in stems], root)
    by_name = with_validation_split(by_name, request.splits, options.train_val_split, str(root))
    chosen = choose_splits(request.splits, list(by_name), str(root))
    splits = first_rows(by_name, chosen, request.max_samples)
    return custom_data(splits, str(root), stored_id2label, origin, options, name=root.name)


SOURCES: tuple[Source, ...] = (
    Source("in-memory", _detect_in_memory, _load_in_memory),
    Source("ade20k-hub", _detect_ade20k_hub, _load_ade20k_hub),
    Source("hub", _detect_hub, _load_hub_table),
    Source("ade20k-raw", _detect_ade20k_raw, _load_ade20k_raw, "ADEChallengeData2016/ (images/, annotations/)"),
    Source(
        "cityscapes-raw", _detect_cityscapes_raw, _load_cityscapes_raw, "a Cityscapes root (leftImg8bit/, gtFine/)"
    ),
    Source(
        "ade20k-parquet-export",
        _detect_ade20k_parquet_export,
        _load_ade20k_parquet_export,
        f"the scene_parse_150 Parquet export ({ADE20K_PARQUET_DATA_DIR}/)",
    ),
    Source(
        "saved-dataset",
        _detect_saved_dataset,
        _load_saved_dataset,
        "a save_to_disk folder with image and mask columns",
    ),
    Source("parquet-files", _detect_parquet_files, _load_parquet_files, "a folder of Parquet files"),
    Source(
        "image-mask-folders",
        _detect_image_mask_folders,
        _load_image_mask_folders,
        f"image + mask files (images/ and one of {', '.join(f'{name}/' for name in MASK_FOLDERS)}, optionally per "
        "split)",
    ),
)


def unknown_layout_error(folder: Path, sources: Sequence[Source] = SOURCES) -> DatasetFormatError:
    """The refusal of a folder no source recognises: what each kind of folder looks like."""
    expected = [source.expected for source in sources if source.expected]
    listed = ", ".join(expected[:-1]) + f", or {expected[-1]}" if len(expected) > 1 else "".join(expected)
    return DatasetFormatError(f"{folder}: not a known segmentation layout; expected {listed}")


def load_segmentation_data(
    source: str | os.PathLike | datasets.Dataset | datasets.DatasetDict,
    dataset: str | None = None,
    *,
    splits: Sequence[str] | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    max_samples: int | None = None,
    config_name: str | None = None,
    id2label: dict[int, str] | str | os.PathLike | None = None,
    reduce_labels: bool | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    train_val_split: float | None = DEFAULT_TRAIN_VAL_SPLIT,
    ignore_index: int = IGNORE_INDEX,
    palette: Sequence[Sequence[int]] | None = None,
    mask_values: str | Sequence[int] | None = None,
    undeclared_colors: str = "error",
) -> SegmentationData:
    """Load ADE20K, Cityscapes or custom data (see the module docstring for the sources and rules): the first source
    of `SOURCES` whose detector recognises `source` loads it.

    Args:
        source: Hub id (`zhoubolei/scene_parse_150`, `scene_parse_150`, a Cityscapes mirror such as
            `Chris1/cityscapes`, any dataset with image and mask columns), local folder, or a `datasets.Dataset` /
            `DatasetDict`.
        dataset: "ade20k" or "cityscapes"; inferred from the known sources / layouts when None, checked when given.
        splits: split names to keep ("val" means "validation"); default train and validation where present.
        revision: Hub revision; for ADE20K the default is the Parquet export `refs/convert/parquet`.
        cache_dir: `datasets` cache for Hub and local Parquet sources (raw trees are read in place).
        max_samples: keep only the first `max_samples` rows of each split.
        config_name: the Hub dataset's configuration.
        id2label: custom data: names of the stored mask values (a dict or an `id2label.json` path); default the
            `id2label.json` of the dataset folder or Hub repo.
        reduce_labels: custom data: stored 0 means "unlabelled" (ignored) and value v is class v - 1. Default off.
        image_column, label_column: custom table data: the columns (default: the first of `IMAGE_COLUMNS` /
            `LABEL_COLUMNS` present).
        train_val_split: custom data without a validation split: this fraction of train becomes it (fixed seed).
        ignore_index: custom data: the mask value that is not scored (default 255).
        palette: custom data: one RGB colour per class; default the colours of colour masks, else
            `label_tables.generate_palette`.
        mask_values: custom data: the stored mask value of each class in class order (`[0, 255]` or `"0,255"`:
            value 0 is class 0, 255 class 1); other values than these and the ignore index are errors.
        undeclared_colors: custom colour masks: what a colour that no class has becomes, "error" (the default: the
            decode names the colour, the file and the pixel count) or "ignore" (the ignore index).
    """
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be at least 1, got {max_samples}")
    custom = CustomOptions(
        id2label,
        reduce_labels,
        image_column,
        label_column,
        train_val_split,
        ignore_index,
        palette,
        parse_mask_values(mask_values),
        undeclared_colors,
    ).checked(dataset)
    wanted = [splits] if isinstance(splits, str) else splits
    request = LoadRequest(
        dataset, wanted, max_samples, revision, None if cache_dir is None else str(cache_dir), config_name, custom
    )
    where = _location(source)
    for kind in SOURCES:
        found = kind.detect(where, request)
        if found is not None:
            return kind.load(found, request)
    raise unknown_layout_error(Path(str(where)), SOURCES)
