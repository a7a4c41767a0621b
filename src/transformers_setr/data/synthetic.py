"""Small synthetic ADE20K and Cityscapes datasets in the exact on-disk layouts of the real ones.

They exist so that the loaders, the training scripts and the evaluation can be exercised offline and fast. The scenes
are structured and learnable rather than noise: a sky band on top, ground split into road / sidewalk / grass below a
random horizon, buildings, trees, cars and people, each class with its own base colour and texture, plus pixel noise
and random lighting. Only a handful of classes occur (8 per dataset, plus unlabelled regions), so that a tiny SETR
learns them in minutes on a CPU. Everything is a pure function of `seed`: the same seed gives the same scenes in
every layout of a dataset (raw tree, Parquet export, Hub mirror), which the loader tests rely on.

Each generator writes into a temporary folder next to the target and renames it into place at the end, so an
interrupted run never leaves a half-written dataset behind.
"""

import io
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .label_tables import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    CITYSCAPES_TRAIN_ID_TO_LABEL_ID,
    cityscapes_label_id_to_train_id,
)

ADE20K_LAYOUTS = ("raw", "parquet")
CITYSCAPES_LAYOUTS = ("raw", "mirror")

# The scene "roles" and their look. A role is drawn with its base colour (RGB) and a texture; the dataset decides
# which class id each role is annotated with. "other" is an unlabelled region whose colour changes per image.
_ROLES = ("sky", "building", "tree", "road", "sidewalk", "grass", "car", "person", "other", "ego_vehicle", "parking")
_ROLE_COLOURS: dict[str, tuple[int, int, int]] = {
    "sky": (120, 165, 225),
    "building": (150, 105, 95),
    "tree": (45, 125, 45),
    "road": (95, 95, 100),
    "sidewalk": (185, 175, 150),
    "grass": (120, 190, 70),
    "car": (35, 55, 175),
    "person": (205, 60, 85),
    "ego_vehicle": (30, 30, 35),
    "parking": (175, 125, 155),
}

# ADE20K: roles -> class names of label_tables (raw annotation value = class index + 1; 0 = "other").
_ADE20K_ROLE_CLASSES = {
    "sky": "sky",
    "building": "building",
    "tree": "tree",
    "road": "road",
    "sidewalk": "sidewalk",
    "grass": "grass",
    "car": "car",
    "person": "person",
}
# Cityscapes: roles -> train class names of label_tables (label id via CITYSCAPES_TRAIN_ID_TO_LABEL_ID) ...
_CITYSCAPES_ROLE_CLASSES = {
    "sky": "sky",
    "building": "building",
    "tree": "vegetation",
    "road": "road",
    "sidewalk": "sidewalk",
    "grass": "terrain",
    "car": "car",
    "person": "person",
}
# ... and the void roles, with their official label ids and colours (cityscapesscripts `labels.py`; not trained on,
# train id 255). They make the labelId -> trainId mapping matter in the synthetic data.
_CITYSCAPES_VOID_ROLES: dict[str, tuple[int, tuple[int, int, int]]] = {
    "other": (0, (0, 0, 0)),  # unlabeled
    "ego_vehicle": (1, (0, 0, 0)),  # ego vehicle
    "parking": (9, (250, 170, 160)),  # parking
}
_CITYSCAPES_INSTANCE_ROLES = ("car", "person")  # classes with instances in instanceIds.png (id * 1000 + index)
_CITYSCAPES_CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt", "lindau")}

# Placeholder scene categories: the real sceneCategories.txt / `scene_category` ClassLabel has 1055 names taken
# from the ADE20K index; these few are only there so that the files and the column have the right shape.
_ADE20K_SCENE_CATEGORIES = ("highway", "park", "street")
# Placeholder category ids for the RGB masks of the `instance_segmentation` config (R = category, G = instance);
# the real config uses its own 100-class list, which nothing in this project reads.
_ADE20K_INSTANCE_CATEGORIES = {"car": 1, "person": 2, "tree": 3}


def _ade20k_role_values() -> dict[str, int]:
    values = {role: ADE20K_CLASSES.index(name) + 1 for role, name in _ADE20K_ROLE_CLASSES.items()}
    values["other"] = 0
    return values


def _cityscapes_role_label_ids() -> dict[str, int]:
    label_ids = {
        role: CITYSCAPES_TRAIN_ID_TO_LABEL_ID[CITYSCAPES_CLASSES.index(name)]
        for role, name in _CITYSCAPES_ROLE_CLASSES.items()
    }
    label_ids.update({role: label_id for role, (label_id, _) in _CITYSCAPES_VOID_ROLES.items()})
    return label_ids


def _texture(role: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W) brightness offsets that give each role a recognisable pattern."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if role == "sky":  # lighter towards the horizon
        return 30.0 * yy / max(height - 1, 1) - 10.0
    if role == "building":  # a grid of dark windows
        phase_y, phase_x = rng.integers(0, 8), rng.integers(0, 6)
        windows = (((yy + phase_y) % 8) < 4) & (((xx + phase_x) % 6) < 3)
        return np.where(windows, -45.0, 8.0)
    if role in ("tree", "other"):  # blotches: coarse noise upsampled
        coarse = rng.normal(0.0, 22.0, size=(height // 4 + 2, width // 4 + 2)).astype(np.float32)
        return np.kron(coarse, np.ones((4, 4), dtype=np.float32))[:height, :width]
    if role == "sidewalk":  # paving slabs
        return np.where((yy % 7 == 0) | (xx % 9 == 0), -35.0, 0.0)
    if role == "grass":  # fine vertical blades
        return 14.0 * np.sin(2 * np.pi * xx / 3.0)
    if role == "person":  # horizontal bands of clothing
        return 22.0 * np.sign(np.sin(2 * np.pi * yy / 6.0))
    if role == "car":  # diagonal highlights
        return 14.0 * np.sin(2 * np.pi * (xx + yy) / 7.0)
    if role == "parking":
        return 16.0 * np.sin(2 * np.pi * (xx - yy) / 5.0)
    return np.zeros((height, width), dtype=np.float32)  # road, ego vehicle: plain (pixel noise only)


def _render_scene(
    rng: np.random.Generator, height: int, width: int, void_roles: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One street scene: (H, W, 3) uint8 image, (H, W) role indices, (H, W) instance numbers (0 = none)."""
    role_index = {role: index for index, role in enumerate(_ROLES)}
    roles = np.full((height, width), role_index["sky"], dtype=np.uint8)
    instances = np.zeros((height, width), dtype=np.int32)
    yy, xx = np.mgrid[0:height, 0:width]

    horizon = int(height * rng.uniform(0.3, 0.5))
    ground = yy >= horizon
    # A road narrowing towards a vanishing point, sidewalk on its left, grass on its right.
    depth = np.clip((yy - horizon) / max(height - horizon, 1), 0.0, 1.0)
    vanishing_x = width * rng.uniform(0.35, 0.65)
    left = vanishing_x - 2 - depth * (vanishing_x - width * rng.uniform(0.0, 0.25))
    right = vanishing_x + 2 + depth * (width * rng.uniform(0.75, 1.0) - vanishing_x)
    roles[ground & (xx < left)] = role_index["sidewalk"]
    roles[ground & (xx >= right)] = role_index["grass"]
    roles[ground & (xx >= left) & (xx < right)] = role_index["road"]

    for _ in range(rng.integers(1, 4)):
        x0 = int(rng.uniform(0, 0.85) * width)
        x1 = min(width, x0 + int(rng.uniform(0.12, 0.35) * width))
        top = int(rng.uniform(0.05, 0.3) * height)
        roles[top : horizon + 1, x0:x1] = role_index["building"]
    for _ in range(rng.integers(0, 3)):
        centre_y, centre_x = horizon - rng.uniform(0.0, 0.15) * height, rng.uniform(0, 1) * width
        radius_y, radius_x = rng.uniform(0.1, 0.2) * height, rng.uniform(0.05, 0.12) * width
        roles[((yy - centre_y) / radius_y) ** 2 + ((xx - centre_x) / radius_x) ** 2 <= 1] = role_index["tree"]
    if rng.uniform() < 0.6:
        y0, x0 = int(rng.uniform(0.0, 0.8) * height), int(rng.uniform(0.0, 0.85) * width)
        roles[y0 : y0 + max(3, height // 8), x0 : x0 + max(3, width // 10)] = role_index["other"]
    if void_roles and rng.uniform() < 0.5:
        y0 = int(horizon + rng.uniform(0.3, 0.6) * (height - horizon))
        x0 = int(rng.uniform(0.55, 0.8) * width)
        roles[y0 : y0 + max(3, height // 10), x0 : x0 + max(4, width // 6)] = role_index["parking"]

    instance_number = 0
    for _ in range(rng.integers(0, 4)):  # cars on the road, larger when nearer
        bottom = int(horizon + rng.uniform(0.35, 1.0) * (height - horizon))
        car_height = max(3, int((0.08 + 0.2 * (bottom - horizon) / max(height - horizon, 1)) * height))
        car_width = int(car_height * rng.uniform(1.6, 2.2))
        x0 = int(rng.uniform(0.1, 0.9) * width - car_width / 2)
        box = (slice(max(0, bottom - car_height), bottom), slice(max(0, x0), max(0, x0 + car_width)))
        instance_number += 1
        roles[box], instances[box] = role_index["car"], instance_number
    for _ in range(rng.integers(0, 3)):  # people, mostly on the sidewalk
        feet = horizon + rng.uniform(0.2, 1.0) * (height - horizon)
        person_height = (0.15 + 0.25 * (feet - horizon) / max(height - horizon, 1)) * height
        centre_x = rng.uniform(0.02, 0.3) * width if rng.uniform() < 0.7 else rng.uniform(0, 1) * width
        ellipse = ((yy - (feet - person_height / 2)) / (person_height / 2)) ** 2 + (
            (xx - centre_x) / max(person_height * 0.18, 1.0)
        ) ** 2 <= 1
        instance_number += 1
        roles[ellipse], instances[ellipse] = role_index["person"], instance_number
    if void_roles and rng.uniform() < 0.5:  # the bonnet of the recording car
        roles[height - max(2, int(rng.uniform(0.06, 0.12) * height)) :, :] = role_index["ego_vehicle"]
    instances[~np.isin(roles, [role_index["car"], role_index["person"]])] = 0

    colours = dict(_ROLE_COLOURS, other=tuple(int(c) for c in rng.integers(40, 216, size=3)))
    image: np.ndarray = np.zeros((height, width, 3), dtype=np.float32)
    for role in _ROLES:
        where = roles == role_index[role]
        if where.any():
            shade = np.asarray(colours[role], dtype=np.float32) + _texture(role, rng, height, width)[..., None]
            image[where] = shade[where]
    gain, tint = rng.uniform(0.8, 1.2), rng.uniform(-10.0, 10.0, size=3)  # lighting
    image = image * gain + tint + rng.normal(0.0, 6.0, size=image.shape)
    return np.clip(image.round(), 0, 255).astype(np.uint8), roles, instances


def _scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    # One stream per (seed, split, image): a scene does not depend on how many images the other split has.
    return np.random.default_rng([seed, {"train": 0, "validation": 1}[split], index])


class _Scene(NamedTuple):
    split: str  # "train" | "validation"
    number: int  # the scene's index in its split
    split_size: int
    rng: np.random.Generator  # the scene's own stream, after rendering (for what the dataset draws next)
    image: np.ndarray
    roles: np.ndarray
    instances: np.ndarray


def _scenes(
    seed: int, num_train: int, num_validation: int, image_size: tuple[int, int], void_roles: bool
) -> Iterator[_Scene]:
    """The scenes of both splits in order, train first; `image_size` is (height, width)."""
    height, width = image_size
    for split, count in (("train", num_train), ("validation", num_validation)):
        for index in range(count):
            rng = _scene_rng(seed, split, index)
            yield _Scene(split, index, count, rng, *_render_scene(rng, height, width, void_roles))


def _role_table(values: dict[str, int]) -> np.ndarray:
    """Role index -> the stored value of its class (uint8); 0 for a role without one."""
    table = np.zeros(len(_ROLES), dtype=np.uint8)
    for role, value in values.items():
        table[_ROLES.index(role)] = value
    return table


def _write_push_to_hub_layout(folder: Path, splits: dict[str, dict[str, list]], features: dict) -> None:
    """`data/{split}-00000-of-00001.parquet`, the layout `push_to_hub` writes."""
    for split, rows in splits.items():
        _write_parquet(rows, features, folder / "data" / f"{split}-00000-of-00001.parquet")


def _encode(array: np.ndarray, image_format: str, **save_options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format, **save_options)
    return buffer.getvalue()


@contextmanager
def _atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary folder next to `target`; rename it to `target` when the block succeeds."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} already exists and is not an empty folder; choose a new location")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    temporary.mkdir()
    try:
        yield temporary
        if target.exists():
            target.rmdir()
        os.rename(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _check_arguments(layout: str, layouts: tuple[str, ...], num_train: int, num_validation: int, image_size) -> None:
    if layout not in layouts:
        raise ValueError(f"unknown layout {layout!r}; choose one of {layouts}")
    if num_train < 1 or num_validation < 1:
        raise ValueError(
            f"need at least one image per split, got num_train={num_train}, num_validation={num_validation}"
        )
    if len(image_size) != 2 or min(image_size) < 16:
        raise ValueError(f"image_size must be (height, width) with both at least 16, got {image_size}")


def _write_parquet(rows: dict[str, list], features: dict, path: Path) -> None:
    """One Parquet file with the `datasets` feature types in its schema metadata (what `to_parquet` writes)."""
    import datasets  # imported here: the generators of raw trees do not need it
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = datasets.Dataset.from_dict(rows, features=datasets.Features(features)).data.table
    pq.write_table(table, path)


def make_synthetic_ade20k(
    root: str | os.PathLike,
    *,
    layout: str = "raw",
    num_train: int = 16,
    num_validation: int = 8,
    image_size: tuple[int, int] = (96, 128),
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Write a small ADE20K SceneParsing-150 stand-in and return the folder to load (`progress`: a tqdm bar).

    layout "raw": `root/ADEChallengeData2016/{images,annotations}/{training,validation}/ADE_{train,val}_%08d.{jpg,png}`
    with `objectInfo150.txt` and `sceneCategories.txt`; returns the `ADEChallengeData2016` folder.
    layout "parquet": the Hub's `refs/convert/parquet` branch of `zhoubolei/scene_parse_150`:
    `root/scene_parsing/{train,validation}/0000.parquet` (image, annotation, scene_category) and
    `root/instance_segmentation/{train,validation}/0000.parquet` (image, RGB annotation); returns `root`.
    Images are JPEG, annotations 8-bit L PNG with raw values 0..150 (0 = "other"). `image_size` is (height, width).
    """
    _check_arguments(layout, ADE20K_LAYOUTS, num_train, num_validation, image_size)
    value_of_role = _role_table(_ade20k_role_values())

    samples: dict[str, list[dict]] = {"train": [], "validation": []}
    bar = tqdm(total=num_train + num_validation, desc="data", unit="img", disable=not progress)
    for scene in _scenes(seed, num_train, num_validation, image_size, void_roles=False):
        bar.update(1)
        prefix = "ADE_train" if scene.split == "train" else "ADE_val"
        instance_rgb = np.zeros((*image_size, 3), dtype=np.uint8)
        for role, category in _ADE20K_INSTANCE_CATEGORIES.items():
            instance_rgb[scene.roles == _ROLES.index(role), 0] = category
        instance_rgb[..., 1] = scene.instances  # trees are "stuff" here: instance 0
        samples[scene.split].append(
            {
                "stem": f"{prefix}_{scene.number + 1:08d}",
                "jpeg": _encode(scene.image, "JPEG", quality=90),
                "annotation": value_of_role[scene.roles],
                "instance": instance_rgb,
                "scene": _ADE20K_SCENE_CATEGORIES[int(scene.rng.integers(len(_ADE20K_SCENE_CATEGORIES)))],
            }
        )

    bar.close()
    if layout == "raw":
        target = Path(root) / "ADEChallengeData2016"
        with _atomic_directory(target) as folder:
            for split, directory in (("train", "training"), ("validation", "validation")):
                (folder / "images" / directory).mkdir(parents=True)
                (folder / "annotations" / directory).mkdir(parents=True)
                for sample in samples[split]:
                    (folder / "images" / directory / f"{sample['stem']}.jpg").write_bytes(sample["jpeg"])
                    Image.fromarray(sample["annotation"]).save(
                        folder / "annotations" / directory / f"{sample['stem']}.png"
                    )
            (folder / "objectInfo150.txt").write_text(_object_info_150(samples))
            (folder / "sceneCategories.txt").write_text(
                "".join(f"{s['stem']} {s['scene']}\n" for split in ("train", "validation") for s in samples[split])
            )
        return target

    import datasets

    target = Path(root)
    with _atomic_directory(target) as folder:
        scene_feature = datasets.ClassLabel(names=list(_ADE20K_SCENE_CATEGORIES))
        for split in ("train", "validation"):
            images = [{"bytes": s["jpeg"], "path": f"{s['stem']}.jpg"} for s in samples[split]]
            _write_parquet(
                {
                    "image": images,
                    "annotation": [
                        {"bytes": _encode(s["annotation"], "PNG"), "path": f"{s['stem']}.png"} for s in samples[split]
                    ],
                    "scene_category": [scene_feature.str2int(s["scene"]) for s in samples[split]],
                },
                {"image": datasets.Image(), "annotation": datasets.Image(), "scene_category": scene_feature},
                folder / "scene_parsing" / split / "0000.parquet",
            )
            _write_parquet(
                {
                    "image": images,
                    "annotation": [
                        {"bytes": _encode(s["instance"], "PNG"), "path": f"{s['stem']}.png"} for s in samples[split]
                    ],
                },
                {"image": datasets.Image(), "annotation": datasets.Image()},
                folder / "instance_segmentation" / split / "0000.parquet",
            )
    return target


def _object_info_150(samples: dict[str, list[dict]]) -> str:
    """objectInfo150.txt: Idx, pixel Ratio (train), images containing the class in Train / Val, Name."""
    train_pixels = np.zeros(len(ADE20K_CLASSES) + 1, dtype=np.int64)
    image_counts = {split: np.zeros(len(ADE20K_CLASSES) + 1, dtype=np.int64) for split in samples}
    for split, split_samples in samples.items():
        for sample in split_samples:
            counts = np.bincount(sample["annotation"].ravel(), minlength=len(ADE20K_CLASSES) + 1)
            image_counts[split] += counts > 0
            if split == "train":
                train_pixels += counts
    total = max(int(train_pixels.sum()), 1)
    lines = ["Idx\tRatio\tTrain\tVal\tName"]
    for index, name in enumerate(ADE20K_CLASSES, start=1):
        # The real file lists ';'-separated synonyms and has no trailing spaces ('bed', not mmseg's 'bed ').
        lines.append(
            f"{index}\t{train_pixels[index] / total:.4f}\t{image_counts['train'][index]}\t"
            f"{image_counts['validation'][index]}\t{name.strip()}"
        )
    return "\n".join(lines) + "\n"


def make_synthetic_cityscapes(
    root: str | os.PathLike,
    *,
    layout: str = "raw",
    num_train: int = 16,
    num_validation: int = 8,
    image_size: tuple[int, int] = (64, 128),
    seed: int = 0,
    train_ids: bool = True,
) -> Path:
    """Write a small Cityscapes (gtFine) stand-in at `root` and return `root`.

    layout "raw": `leftImg8bit/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_leftImg8bit.png` (RGB PNG) and
    `gtFine/{train,val}/<city>/..._gtFine_{labelIds,color,instanceIds}.png` (8-bit L label ids 0..33, RGBA colours,
    16-bit instance ids = label id * 1000 + index for cars and people), plus `..._gtFine_labelTrainIds.png` when
    `train_ids` (what cityscapesscripts / mmseg's converter make; not part of the official download). There are no
    `polygons.json` files. layout "mirror": a Hub mirror like `Chris1/cityscapes` in the `push_to_hub` layout,
    `data/{train,validation}-00000-of-00001.parquet` with `image` and `semantic_segmentation` (RGB PNG, R=G=B=labelId);
    `train_ids` does not apply to it (mirrors store label ids).
    `image_size` is (height, width).
    """
    _check_arguments(layout, CITYSCAPES_LAYOUTS, num_train, num_validation, image_size)
    label_id_of_role = _role_table(_cityscapes_role_label_ids())
    colour_of_label_id = np.zeros((256, 4), dtype=np.uint8)
    for train_id, label_id in enumerate(CITYSCAPES_TRAIN_ID_TO_LABEL_ID):
        colour_of_label_id[label_id] = (*CITYSCAPES_PALETTE[train_id], 255)
    for label_id, colour in _CITYSCAPES_VOID_ROLES.values():
        colour_of_label_id[label_id] = (*colour, 255)
    train_id_of_label_id = cityscapes_label_id_to_train_id()

    with _atomic_directory(Path(root)) as folder:
        mirror_rows: dict[str, dict[str, list]] = {}
        for scene in _scenes(seed, num_train, num_validation, image_size, void_roles=True):
            directory = "train" if scene.split == "train" else "val"
            cities = _CITYSCAPES_CITIES[directory]
            # Contiguous blocks per city, so that sorting the files by path keeps the generation order.
            city = cities[scene.number * len(cities) // scene.split_size]
            stem = f"{city}_{scene.number:06d}_000019"
            label_ids = label_id_of_role[scene.roles]
            image_png = _encode(scene.image, "PNG")
            if layout == "mirror":
                rows = mirror_rows.setdefault(scene.split, {"image": [], "semantic_segmentation": []})
                rows["image"].append({"bytes": image_png, "path": f"{stem}_leftImg8bit.png"})
                rgb_label_ids = np.repeat(label_ids[..., None], 3, axis=2)
                rows["semantic_segmentation"].append(
                    {"bytes": _encode(rgb_label_ids, "PNG"), "path": f"{stem}_gtFine_labelIds.png"}
                )
                continue
            image_folder = folder / "leftImg8bit" / directory / city
            label_folder = folder / "gtFine" / directory / city
            image_folder.mkdir(parents=True, exist_ok=True)
            label_folder.mkdir(parents=True, exist_ok=True)
            (image_folder / f"{stem}_leftImg8bit.png").write_bytes(image_png)
            Image.fromarray(label_ids).save(label_folder / f"{stem}_gtFine_labelIds.png")
            Image.fromarray(colour_of_label_id[label_ids]).save(label_folder / f"{stem}_gtFine_color.png")
            instance_ids = label_ids.astype(np.uint16)
            has_instance = np.isin(scene.roles, [_ROLES.index(role) for role in _CITYSCAPES_INSTANCE_ROLES])
            instance_ids[has_instance] = (
                label_ids[has_instance].astype(np.uint16) * 1000 + scene.instances[has_instance]
            )
            Image.fromarray(instance_ids).save(label_folder / f"{stem}_gtFine_instanceIds.png")
            if train_ids:
                Image.fromarray(train_id_of_label_id[label_ids]).save(
                    label_folder / f"{stem}_gtFine_labelTrainIds.png"
                )
        if layout == "mirror":
            import datasets

            features = {"image": datasets.Image(), "semantic_segmentation": datasets.Image()}
            _write_push_to_hub_layout(folder, mirror_rows, features)
    return Path(root)


CUSTOM_LAYOUTS = ("parquet", "folder", "saved")
# The classes of `segments/sidewalk-semantic` (id2label.json of that repo): 35, and 0 = "unlabeled".
SIDEWALK_CLASSES = (
    "unlabeled",
    "flat-road",
    "flat-sidewalk",
    "flat-crosswalk",
    "flat-cyclinglane",
    "flat-parkingdriveway",
    "flat-railtrack",
    "flat-curb",
    "human-person",
    "human-rider",
    "vehicle-car",
    "vehicle-truck",
    "vehicle-bus",
    "vehicle-tramtrain",
    "vehicle-motorcycle",
    "vehicle-bicycle",
    "vehicle-caravan",
    "vehicle-cartrailer",
    "construction-building",
    "construction-door",
    "construction-wall",
    "construction-fenceguardrail",
    "construction-bridge",
    "construction-tunnel",
    "construction-stairs",
    "object-pole",
    "object-trafficsign",
    "object-trafficlight",
    "nature-vegetation",
    "nature-terrain",
    "sky",
    "void-ground",
    "void-dynamic",
    "void-static",
    "void-unclear",
)
_SIDEWALK_ROLE_CLASSES = {
    "sky": "sky",
    "building": "construction-building",
    "tree": "nature-vegetation",
    "road": "flat-road",
    "sidewalk": "flat-sidewalk",
    "grass": "nature-terrain",
    "car": "vehicle-car",
    "person": "human-person",
    "other": "unlabeled",
}


def make_synthetic_custom(
    root: str | os.PathLike,
    *,
    layout: str = "parquet",
    num_train: int = 16,
    num_validation: int = 8,
    image_size: tuple[int, int] = (64, 96),
    seed: int = 0,
) -> Path:
    """Write a small dataset of the user's own classes, in the style of `segments/sidewalk-semantic` (35 classes,
    mask value 0 = "unlabeled", the others the class ids of `id2label.json`), at `root`; return `root`.

    layout "parquet": the `push_to_hub` layout of that repo, `data/{train,validation}-00000-of-00001.parquet` with
    `pixel_values` (JPEG) and `label` (8-bit L PNG) columns, and `id2label.json` at the top.
    layout "folder": `images/{train,val}/<stem>.jpg` and `masks/{train,val}/<stem>.png` (P mode, the palette
    indices are the labels), `id2label.json` at the top.
    layout "saved": `DatasetDict.save_to_disk` with `image` and `annotation` columns (the ADE20K column names, on
    data that is not ADE20K) and `id2label.json` in the folder.
    """
    _check_arguments(layout, CUSTOM_LAYOUTS, num_train, num_validation, image_size)
    import json

    import datasets

    value_of_role = _role_table({role: SIDEWALK_CLASSES.index(name) for role, name in _SIDEWALK_ROLE_CLASSES.items()})
    mask_palette = [channel for index in range(256) for channel in ((index * 37) % 256, (index * 91) % 256, index)]
    id2label = json.dumps({str(index): name for index, name in enumerate(SIDEWALK_CLASSES)}, indent=1)

    with _atomic_directory(Path(root)) as folder:
        tables: dict[str, dict[str, list]] = {}
        for scene in _scenes(seed, num_train, num_validation, image_size, void_roles=False):
            values = value_of_role[scene.roles]
            stem = f"{scene.split}_{scene.number:04d}"
            if layout == "folder":
                directory = "train" if scene.split == "train" else "val"
                (folder / "images" / directory).mkdir(parents=True, exist_ok=True)
                (folder / "masks" / directory).mkdir(parents=True, exist_ok=True)
                Image.fromarray(scene.image).save(folder / "images" / directory / f"{stem}.jpg", quality=95)
                mask = Image.fromarray(values, mode="L").convert("P")
                mask.putpalette(mask_palette)
                mask.save(folder / "masks" / directory / f"{stem}.png")
                continue
            rows = tables.setdefault(scene.split, {"image": [], "label": []})
            rows["image"].append({"bytes": _encode(scene.image, "JPEG", quality=95), "path": f"{stem}.jpg"})
            rows["label"].append({"bytes": _encode(values, "PNG"), "path": f"{stem}.png"})
        if layout == "parquet":
            hub_tables = {
                split: {"pixel_values": rows["image"], "label": rows["label"]} for split, rows in tables.items()
            }
            _write_push_to_hub_layout(
                folder, hub_tables, {"pixel_values": datasets.Image(), "label": datasets.Image()}
            )
        elif layout == "saved":
            features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
            splits = {
                split: datasets.Dataset.from_dict({"image": rows["image"], "annotation": rows["label"]}, features)
                for split, rows in tables.items()
            }
            datasets.DatasetDict(splits).save_to_disk(str(folder / "saved"))
            for path in (folder / "saved").iterdir():  # save_to_disk wants a new folder: move its content up
                path.rename(folder / path.name)
            (folder / "saved").rmdir()
        (folder / "id2label.json").write_text(id2label + "\n")
    return Path(root)


DEFECT_CLASSES = ("background", "defect")


def _scratch_mask(rng: np.random.Generator, size: int, share: float) -> np.ndarray:
    """A thin straight scratch (2 or 3 px wide) at a random angle whose area is about `share` of the image."""
    angle = rng.uniform(0, np.pi)
    centre_y, centre_x = rng.uniform(size * 0.3, size * 0.7, 2)
    half_width = 1.0 if rng.random() < 0.5 else 1.6
    length = share * size * size / (2 * half_width)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    along = (xx - centre_x) * np.cos(angle) + (yy - centre_y) * np.sin(angle)
    across = -(xx - centre_x) * np.sin(angle) + (yy - centre_y) * np.cos(angle)
    return (np.abs(across) <= half_width) & (np.abs(along) <= length / 2)


def make_synthetic_defects(
    root: str | os.PathLike,
    *,
    num_train: int = 64,
    num_validation: int = 32,
    size: int = 64,
    foreground_share: float = 0.02,
    seed: int = 0,
) -> Path:
    """Write an imbalanced binary dataset stored the way people store binary masks, at `root`; return `root`.

    `images/{train,val}/<stem>.png`: a noisy grey texture with one thin, slightly brighter scratch covering about
    `foreground_share` of the pixels; `masks/{train,val}/<stem>.png`: 8-bit masks of 0 (background) and 255 (the
    scratch); `id2label.json`: `{"0": "background", "1": "defect"}`. Training on it needs `--mask_values 0,255`.
    """
    _check_arguments("folder", ("folder",), num_train, num_validation, (size, size))
    import json

    rng = np.random.default_rng(seed)
    with _atomic_directory(Path(root)) as folder:
        for split, count in (("train", num_train), ("val", num_validation)):
            (folder / "images" / split).mkdir(parents=True)
            (folder / "masks" / split).mkdir(parents=True)
            for index in range(count):
                mask = _scratch_mask(rng, size, foreground_share)
                image = rng.uniform(90, 150) + rng.normal(0, 14, (size, size))
                image = image + 6 * np.sin(np.arange(size) / rng.uniform(3, 9))[None]
                image[mask] += rng.uniform(28, 40)
                rgb = np.clip(np.repeat(image[..., None], 3, axis=2), 0, 255).astype(np.uint8)
                Image.fromarray(rgb).save(folder / "images" / split / f"{index:04d}.png")
                Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "masks" / split / f"{index:04d}.png")
        id2label = {str(index): name for index, name in enumerate(DEFECT_CLASSES)}
        (folder / "id2label.json").write_text(json.dumps(id2label) + "\n")
    return Path(root)
