"""SetrTrainAugmentation: mmseg parity (recorded fixture), cv2 arithmetic, alignment, padding, cat_max_ratio, seeds."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from transformers_setr.presets import PRESETS
from transformers_setr.training.augmentation import (
    PhotometricDistortionParameters,
    SetrTrainAugmentation,
    TorchRandomSource,
    hsv_to_rgb_uint8,
    photometric_distortion,
    resize_bilinear_uint8,
    resize_nearest,
    rgb_to_hsv_uint8,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "augmentation" / "mmseg_train_pipeline.npz"
MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


class ReplayedDraws:
    """Feeds the draws recorded from mmseg (scripts/make_augmentation_fixture.py) back, checking each call's bounds."""

    def __init__(self, draws: list[dict]) -> None:
        self.draws = list(draws)

    def _next(self, *kinds: str) -> dict:
        assert self.draws, "the augmentation drew more often than mmseg"
        entry = self.draws.pop(0)
        assert entry["kind"] in kinds, f"mmseg drew {entry} here, the augmentation wanted one of {kinds}"
        return entry

    def uniform(self, low: float, high: float) -> float:
        entry = self._next("random_sample", "uniform")
        if entry["kind"] == "random_sample":  # mmcv RandomResize: random_sample() * (max - min) + min
            return entry["value"] * (high - low) + low
        assert entry["args"] == [low, high]
        return entry["value"]

    def randint(self, low: int, high: int) -> int:
        entry = self._next("randint")
        bounds = [0, *entry["args"]] if len(entry["args"]) == 1 else entry["args"]
        assert bounds == [low, high], f"mmseg drew randint{tuple(bounds)}, the augmentation randint({low}, {high})"
        return entry["value"]

    def bernoulli(self, probability: float) -> bool:
        entry = self._next("choice")
        assert entry["args"] == [["horizontal", None]] and entry["p"] == [probability, 1 - probability]
        return entry["value"] == "horizontal"


class RecordingDraws(TorchRandomSource):
    """A torch source that logs its draws."""

    def __init__(self, seed: int) -> None:
        super().__init__(torch.Generator().manual_seed(seed))
        self.log: list[tuple[str, object]] = []

    def uniform(self, low: float, high: float) -> float:
        value = super().uniform(low, high)
        self.log.append(("uniform", value))
        return value

    def randint(self, low: int, high: int) -> int:
        value = super().randint(low, high)
        self.log.append(("randint", value))
        return value

    def bernoulli(self, probability: float) -> bool:
        value = super().bernoulli(probability)
        self.log.append(("bernoulli", value))
        return value

    def crop_offsets(self) -> list[tuple[int, int]]:
        """The (top, left) pairs drawn before the flip."""
        values = [value for kind, value in self.log[: [kind for kind, _ in self.log].index("bernoulli")]]
        randints = values[1:]  # after the resize ratio
        return list(zip(randints[::2], randints[1::2]))


def _denormalise(pixel_values: torch.Tensor) -> np.ndarray:
    return pixel_values.numpy().transpose(1, 2, 0) * STD + MEAN


def _tiny_augmentation(**overrides) -> SetrTrainAugmentation:
    kwargs = dict(crop_size=(32, 32), scale=(64, 32))
    kwargs.update(overrides)
    return SetrTrainAugmentation(**kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Parity with mmsegmentation


def test_matches_mmseg_train_pipeline_for_recorded_draws():
    # The fixture holds mmseg 1.2.2's own output (RandomResize, RandomCrop(cat_max_ratio), RandomFlip,
    # PhotoMetricDistortion, SegDataPreProcessor) and every numpy draw it made; replaying those draws must give the
    # same tensors, bit for bit. The cases cover crops accepted at once / after re-draws / never (11th window),
    # padding, flips, both contrast positions, saturation and hue.
    data = np.load(FIXTURE, allow_pickle=False)
    metadata = json.loads(str(data["metadata"]))
    augmentation = SetrTrainAugmentation(
        crop_size=tuple(metadata["crop_size"]), scale=tuple(metadata["scale"]), ratio_range=metadata["ratio_range"]
    )
    cases = sorted(int(name.removeprefix("image_")) for name in data.files if name.startswith("image_"))
    assert len(cases) >= 8
    for case in cases:
        draws = ReplayedDraws(json.loads(str(data[f"draws_{case}"])))
        pixel_values, labels = augmentation.apply(data[f"image_{case}"], data[f"labels_{case}"], draws)
        assert not draws.draws, f"case {case}: mmseg drew {len(draws.draws)} more times"
        assert torch.equal(labels, torch.from_numpy(data[f"target_{case}"])), f"case {case}"
        torch.testing.assert_close(
            pixel_values, torch.from_numpy(data[f"pixel_values_{case}"]), rtol=0, atol=0, msg=f"case {case}"
        )


def test_resize_is_cv2_bit_exact():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    labels = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    # up, down, 2x exactly (cv2 switches to INTER_AREA there), identity, and mixed directions
    for size in [(74, 106), (91, 130), (15, 21), (18, 26), (37, 53), (30, 80)]:
        expected = cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(resize_bilinear_uint8(image, size), expected, err_msg=str(size))
        expected_labels = cv2.resize(labels, size[::-1], interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(resize_nearest(labels, size), expected_labels, err_msg=str(size))


def test_resize_window_equals_resize_then_crop():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    for size, window in [((60, 80), (7, 11, 32, 40)), ((12, 16), (0, 3, 12, 13)), ((46, 62), (14, 30, 32, 32))]:
        top, left, height, width = window
        full = resize_bilinear_uint8(image, size)
        np.testing.assert_array_equal(
            resize_bilinear_uint8(image, size, window), full[top : top + height, left : left + width]
        )
        labels = image[..., 0]
        np.testing.assert_array_equal(
            resize_nearest(labels, size, window), resize_nearest(labels, size)[top : top + height, left : left + width]
        )


def test_hsv_conversions_match_cv2():
    cv2 = pytest.importorskip("cv2")
    rgb = np.random.default_rng(2).integers(0, 256, (128, 512, 3), dtype=np.uint8)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    np.testing.assert_array_equal(rgb_to_hsv_uint8(rgb), hsv)
    # mmseg converts BGR with BGR2HSV; the same pixels in RGB with RGB2HSV give the same HSV
    np.testing.assert_array_equal(cv2.cvtColor(np.ascontiguousarray(rgb[..., ::-1]), cv2.COLOR_BGR2HSV), hsv)
    # 512 px rows: cv2's vectorised HSV->RGB path (float32 with FMA, truncation) converts every pixel
    np.testing.assert_array_equal(hsv_to_rgb_uint8(hsv), cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))


def test_rgb_to_hsv_known_colours():
    colours = [(255, 0, 0), (255, 255, 0), (0, 255, 0), (0, 255, 255), (0, 0, 255), (255, 0, 255), (128, 128, 128)]
    expected = [(0, 255, 255), (30, 255, 255), (60, 255, 255), (90, 255, 255), (120, 255, 255), (150, 255, 255)]
    expected += [(0, 0, 128)]
    # (255, 128, 0): hue 128 * 30 / 255 = 15.06 -> 15; (100, 50, 50): saturation 50 * 255 / 100 = 127.5 -> 128
    colours += [(255, 128, 0), (100, 50, 50)]
    expected += [(15, 255, 255), (0, 128, 100)]
    hsv = rgb_to_hsv_uint8(np.array([colours], dtype=np.uint8))
    np.testing.assert_array_equal(hsv[0], np.array(expected))
    # back to RGB: cv2 truncates, and in float32 90 * (6 / 180) = 3.0000002 and 150 * (6 / 180) = 5.0000005, so the
    # falling channel of cyan and magenta is 255 * (1 - 2e-7) -> 254 (cv2 gives the same)
    back = [(255, 0, 0), (255, 255, 0), (0, 255, 0), (0, 254, 255), (0, 0, 255), (255, 0, 254)]
    np.testing.assert_array_equal(hsv_to_rgb_uint8(hsv[:, :6]), np.array([back], dtype=np.uint8))


# ---------------------------------------------------------------------------------------------------------------------
# Photometric steps


def test_brightness_adds_delta_clips_and_truncates():
    row = np.array([[[0] * 3, [5] * 3, [100] * 3, [250] * 3, [255] * 3]], dtype=np.uint8)
    brighter = photometric_distortion(row, PhotometricDistortionParameters(brightness_delta=10.7))
    darker = photometric_distortion(row, PhotometricDistortionParameters(brightness_delta=-10.7))
    np.testing.assert_array_equal(brighter[0, :, 0], [10, 15, 110, 255, 255])
    np.testing.assert_array_equal(darker[0, :, 0], [0, 0, 89, 239, 244])


def test_contrast_multiplies_clips_and_truncates():
    row = np.array([[[0] * 3, [5] * 3, [100] * 3, [250] * 3, [255] * 3]], dtype=np.uint8)
    for contrast_last in (False, True):  # alone, the position does not matter
        higher = photometric_distortion(
            row, PhotometricDistortionParameters(contrast_alpha=1.5, contrast_last=contrast_last)
        )
        lower = photometric_distortion(
            row, PhotometricDistortionParameters(contrast_alpha=0.5, contrast_last=contrast_last)
        )
        np.testing.assert_array_equal(higher[0, :, 0], [0, 7, 150, 255, 255])
        np.testing.assert_array_equal(lower[0, :, 0], [0, 2, 50, 125, 127])


def test_contrast_position_changes_result_with_saturation():
    # contrast before vs after the saturation step (mmseg's two modes) differ once a colour saturates
    image = np.array([[[200, 100, 50], [30, 60, 90]]], dtype=np.uint8)
    first = photometric_distortion(image, PhotometricDistortionParameters(contrast_alpha=1.4, saturation_alpha=1.5))
    last = photometric_distortion(
        image, PhotometricDistortionParameters(contrast_alpha=1.4, saturation_alpha=1.5, contrast_last=True)
    )
    assert not np.array_equal(first, last)
    # contrast first: (280, 140, 70) -> clipped red 255; contrast last: red of the re-saturated colour * 1.4 -> 255
    assert first[0, 0, 0] == 255 and last[0, 0, 0] == 255


def test_hue_shift_wraps_modulo_180():
    red = np.array([[[255, 0, 0]]], dtype=np.uint8)
    shifted_back = photometric_distortion(red, PhotometricDistortionParameters(hue_delta=-18))
    shifted_on = photometric_distortion(red, PhotometricDistortionParameters(hue_delta=30))
    # hue 0 - 18 -> 162 (a magenta-ish red: R = V, G = 0), not a clipped 0
    assert shifted_back[0, 0, 0] == 255 and shifted_back[0, 0, 1] == 0 and shifted_back[0, 0, 2] > 100
    assert rgb_to_hsv_uint8(shifted_back)[0, 0, 0] == 162
    np.testing.assert_array_equal(shifted_on[0, 0], [255, 255, 0])  # hue 30 = yellow


def test_saturation_scales_s_channel():
    image = np.array([[[255, 153, 153]]], dtype=np.uint8)  # V = 255, S = 102 * 255 / 255 = 102
    assert rgb_to_hsv_uint8(image)[0, 0, 1] == 102
    grey = photometric_distortion(image, PhotometricDistortionParameters(saturation_alpha=0.0))
    vivid = photometric_distortion(image, PhotometricDistortionParameters(saturation_alpha=1.5))
    np.testing.assert_array_equal(grey[0, 0], [255, 255, 255])  # S = 0: every channel is V
    # S = 153: green and blue become 255 * (1 - 0.6) = 102 (101 after cv2's truncation of 101.99999)
    assert vivid[0, 0, 0] == 255 and vivid[0, 0, 1] == vivid[0, 0, 2] and 101 <= vivid[0, 0, 1] <= 102


# ---------------------------------------------------------------------------------------------------------------------
# Geometry


def test_resize_follows_mmcv_rule():
    augmentation = _tiny_augmentation()  # scale (64, 32)
    # target scale (int(64 r), int(32 r)); factor = min(long / max(h, w), short / min(h, w)); int(x * factor + 0.5)
    assert augmentation.resized_size((40, 60), 0.5) == (16, 24)  # (32, 16): min(32/60, 16/40) = 0.4
    assert augmentation.resized_size((40, 60), 2.0) == (64, 96)  # (128, 64): 1.6
    assert augmentation.resized_size((40, 60), 0.77) == (24, 36)  # (49, 24): min(0.8167, 0.6) = 0.6
    # (83, 41): factor 41 / 40, and 60 * (41 / 40) = 61.49999999999999 in float64, so int(x + 0.5) = 61, as in mmcv
    assert augmentation.resized_size((40, 60), 1.3) == (41, 61)
    assert augmentation.resized_size((60, 40), 1.0) == (48, 32)  # (64, 32): min(64/60, 32/40) = 0.8


def test_random_resize_range_through_pipeline():
    # A crop larger than any resized image keeps it whole; its unpadded part shows the size before cropping.
    augmentation = _tiny_augmentation(crop_size=(100, 100), photometric_distortion=False)
    image = np.full((40, 60, 3), 90, dtype=np.uint8)
    labels = np.zeros((40, 60), dtype=np.uint8)
    ratios = []
    for seed in range(30):
        draws = RecordingDraws(seed)
        _, output_labels = augmentation.apply(image, labels, draws)
        ratio = draws.log[0][1]
        ratios.append(ratio)
        height = int((output_labels[:, 0] != 255).sum())
        width = int((output_labels[0] != 255).sum())
        assert (height, width) == augmentation.resized_size((40, 60), ratio)
        assert 16 <= height <= 64 and 24 <= width <= 96
    assert min(ratios) >= 0.5 and max(ratios) < 2.0 and max(ratios) - min(ratios) > 1.0


def _colour_coded_sample(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    palette = np.array([[230, 25, 25], [25, 230, 25], [25, 25, 230], [230, 230, 25], [25, 230, 230], [230, 25, 230]])
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, (4, 5)).repeat(12, 0).repeat(12, 1)[:40, :60].astype(np.uint8)
    labels[28:, :12] = 255
    image = np.where(labels[..., None] == 255, 128, palette[np.minimum(labels, 5)]).astype(np.uint8)
    return image, labels, palette


def test_image_and_labels_stay_aligned():
    image, labels, palette = _colour_coded_sample()
    augmentation = _tiny_augmentation(photometric_distortion=False)
    flips = set()
    for seed in range(12):
        draws = RecordingDraws(seed)
        pixel_values, output_labels = augmentation.apply(image, labels, draws)
        flips.add(draws.log[[kind for kind, _ in draws.log].index("bernoulli")][1])
        colours = _denormalise(pixel_values)
        output_labels = output_labels.numpy()
        # pixels whose 5x5 neighbourhood has one (non-ignore) label: bilinear mixes nothing there
        padded = np.pad(output_labels, 2, constant_values=255)
        windows = np.lib.stride_tricks.sliding_window_view(padded, (5, 5))
        interior = (windows == output_labels[..., None, None]).all(axis=(-1, -2)) & (output_labels != 255)
        assert interior.sum() > 50, f"seed {seed}: too few pixels to check"
        np.testing.assert_allclose(colours[interior], palette[output_labels[interior]], atol=1e-3, err_msg=f"{seed}")
    assert flips == {True, False}


def test_flip_mirrors_image_and_labels():
    image, labels, _ = _colour_coded_sample(1)
    kwargs = dict(scale=(120, 80), photometric_distortion=False)  # always larger than the crop: no padding
    for seed in range(3):
        plain = _tiny_augmentation(flip_prob=0.0, **kwargs)(image, labels, torch.Generator().manual_seed(seed))
        flipped = _tiny_augmentation(flip_prob=1.0, **kwargs)(image, labels, torch.Generator().manual_seed(seed))
        assert torch.equal(flipped[0], plain[0].flip(-1)) and torch.equal(flipped[1], plain[1].flip(-1))
        assert not torch.equal(plain[1], flipped[1])


def test_padding_bottom_right_after_normalisation():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, (40, 60), dtype=np.uint8)
    # ratio 1, scale (24, 12): factor min(24/60, 12/40) = 0.3 -> 12x18 inside a 32x32 crop
    augmentation = _tiny_augmentation(
        scale=(24, 12), ratio_range=(1.0, 1.0), flip_prob=0.0, photometric_distortion=False
    )
    pixel_values, output_labels = augmentation(image, labels, torch.Generator().manual_seed(0))
    assert pixel_values.shape == (3, 32, 32) and pixel_values.dtype == torch.float32
    assert output_labels.shape == (32, 32) and output_labels.dtype == torch.int64
    assert (output_labels[12:] == 255).all() and (output_labels[:, 18:] == 255).all()
    assert (output_labels[:12, :18] != 255).all()
    assert (pixel_values[:, 12:] == 0).all() and (pixel_values[:, :, 18:] == 0).all()
    expected = (resize_bilinear_uint8(image, (12, 18)).astype(np.float32) - MEAN) / STD
    torch.testing.assert_close(pixel_values[:, :12, :18], torch.from_numpy(expected.transpose(2, 0, 1)))
    np.testing.assert_array_equal(output_labels[:12, :18].numpy(), resize_nearest(labels, (12, 18)))


# ---------------------------------------------------------------------------------------------------------------------
# cat_max_ratio


def _count_crop_windows(labels: np.ndarray, cat_max_ratio: float = 0.75) -> int:
    # image = crop = 20x20 and ratio 1: every window is the whole image, so only the accept/reject decision varies
    augmentation = SetrTrainAugmentation(
        crop_size=(20, 20), scale=(20, 20), ratio_range=(1.0, 1.0), cat_max_ratio=cat_max_ratio
    )
    draws = RecordingDraws(0)
    image = np.zeros((*labels.shape, 3), dtype=np.uint8)
    augmentation.apply(image, labels, draws)
    return len(draws.crop_offsets())


def _stripes(*fractions: tuple[int, float]) -> np.ndarray:
    labels = np.concatenate([np.full(round(400 * fraction), value) for value, fraction in fractions])
    return labels.reshape(20, 20).astype(np.uint8)


def test_cat_max_ratio_decisions():
    assert _count_crop_windows(_stripes((0, 0.7), (1, 0.3))) == 1  # 0.70 < 0.75: accepted at once
    assert _count_crop_windows(_stripes((0, 0.75), (1, 0.25))) == 11  # not strictly below: 10 re-draws
    assert _count_crop_windows(_stripes((0, 0.7), (1, 0.2), (255, 0.1))) == 11  # ignore excluded: 0.7 / 0.9
    assert _count_crop_windows(_stripes((0, 0.6), (255, 0.4))) == 11  # one class only
    assert _count_crop_windows(_stripes((255, 1.0))) == 11  # nothing labelled
    assert _count_crop_windows(_stripes((0, 0.75), (1, 0.25)), cat_max_ratio=1.0) == 1  # check disabled


def test_cat_max_ratio_redraws_until_a_mixed_window():
    # 20x80 map: class 1 in columns 50-59, class 0 elsewhere. A 20x20 window at left x is accepted iff it has at
    # least 6 class-1 columns (class 0 below 75 %), i.e. 36 <= x <= 54.
    labels = np.zeros((20, 80), dtype=np.uint8)
    labels[:, 50:60] = 1
    image = np.zeros((20, 80, 3), dtype=np.uint8)
    augmentation = SetrTrainAugmentation(
        crop_size=(20, 20), scale=(80, 20), ratio_range=(1.0, 1.0), photometric_distortion=False, flip_prob=0.0
    )
    redrawn = 0
    for seed in range(40):
        draws = RecordingDraws(seed)
        _, output_labels = augmentation.apply(image, labels, draws)
        offsets = draws.crop_offsets()
        accepted = [36 <= left <= 54 for _, left in offsets]
        expected_windows = accepted.index(True) + 1 if True in accepted[:10] else 11
        assert len(offsets) == expected_windows, f"seed {seed}"
        chosen_left = offsets[-1][1]
        np.testing.assert_array_equal(output_labels.numpy(), labels[:, chosen_left : chosen_left + 20])
        redrawn += len(offsets) > 1
    assert redrawn >= 10  # a plain random crop would be accepted only ~31 % of the time


# ---------------------------------------------------------------------------------------------------------------------
# Seeds, inputs, presets


def test_same_seed_same_output_different_seed_different_output():
    image, labels, _ = _colour_coded_sample(2)
    augmentation = _tiny_augmentation()
    first = augmentation(image, labels, torch.Generator().manual_seed(7))
    again = augmentation(image, labels, torch.Generator().manual_seed(7))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    others = [augmentation(image, labels, torch.Generator().manual_seed(seed))[0] for seed in (8, 9, 10)]
    assert all(not torch.equal(first[0], other) for other in others)


def test_pil_and_array_inputs_agree():
    image, labels, _ = _colour_coded_sample(3)
    augmentation = _tiny_augmentation()
    from_array = augmentation(image, labels, torch.Generator().manual_seed(1))
    from_pil = augmentation(PIL.Image.fromarray(image), labels, torch.Generator().manual_seed(1))
    from_rgba = augmentation(
        PIL.Image.fromarray(image).convert("RGBA"), labels.astype(np.int64), torch.Generator().manual_seed(1)
    )
    for other in (from_pil, from_rgba):
        assert torch.equal(from_array[0], other[0]) and torch.equal(from_array[1], other[1])


def test_from_preset():
    ade = SetrTrainAugmentation.from_preset(PRESETS["setr-naive-vit-large-ade20k-512"])
    assert (ade.crop_size, ade.scale, ade.ratio_range, ade.cat_max_ratio) == (
        (512, 512),
        (2048, 512),
        (0.5, 2.0),
        0.75,
    )
    cityscapes = SetrTrainAugmentation.from_preset(PRESETS["setr-pup-vit-large-cityscapes-768"])
    assert (cityscapes.crop_size, cityscapes.scale) == ((768, 768), (2049, 1025))
    image, labels, _ = _colour_coded_sample(4)
    pixel_values, output_labels = ade(image, labels, torch.Generator().manual_seed(0))
    assert pixel_values.shape == (3, 512, 512) and output_labels.shape == (512, 512)


@pytest.mark.parametrize(
    ("image", "labels", "message"),
    [
        (np.zeros((10, 12, 3), np.uint8), np.zeros((10, 11), np.uint8), "same size"),
        (np.zeros((10, 12, 3), np.float32), np.zeros((10, 12), np.uint8), "8-bit RGB"),
        (np.zeros((10, 12, 4), np.uint8), np.zeros((10, 12), np.uint8), "8-bit RGB"),
        (np.zeros((10, 12, 3), np.uint8), np.full((10, 12), 300, np.int64), r"\[0, 255\]"),
        (np.zeros((10, 12, 3), np.uint8), np.zeros((10, 12), np.float32), "integer"),
        (np.zeros((10, 12, 3), np.uint8), np.zeros((10, 12, 1), np.uint8), "integer"),
    ],
)
def test_bad_inputs_are_rejected(image, labels, message):
    with pytest.raises(ValueError, match=message):
        _tiny_augmentation()(image, labels, torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"crop_size": (0, 32)}, "crop_size"),
        ({"ratio_range": (2.0, 0.5)}, "ratio_range"),
        ({"cat_max_ratio": 0.0}, "cat_max_ratio"),
        ({"flip_prob": 1.5}, "flip_prob"),
        ({"image_std": (1.0, 0.0, 1.0)}, "image_std"),
        ({"ignore_index": -1}, "ignore_index"),
    ],
)
def test_bad_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _tiny_augmentation(**kwargs)


def test_generator_must_be_a_cpu_generator():
    image, labels, _ = _colour_coded_sample()
    with pytest.raises(TypeError, match="torch.Generator"):
        _tiny_augmentation()(image, labels, 0)


def test_opencv_and_numpy_paths_give_the_same_samples(monkeypatch):
    """Issue 25: with OpenCV installed the pipeline calls cv2 for the resize and the HSV round trips (mmseg's own
    kernels, ~2x faster); without it, the numpy reproductions. Same seeds, same pixels, for crops whose rows are whole
    64-pixel blocks (every crop of an image at least as large as the crop; see the module notes for the others)."""
    pytest.importorskip("cv2")
    from transformers_setr.training import augmentation as module

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (150, 230, 3), dtype=np.uint8)
    labels = (np.arange(150)[:, None] // 30 * 5 + np.arange(230)[None, :] // 40).astype(np.uint8)
    augment = SetrTrainAugmentation(crop_size=(64, 128), scale=(260, 170), ratio_range=(0.6, 1.6))
    with_cv2 = [augment(image, labels, torch.Generator().manual_seed(seed)) for seed in range(12)]
    monkeypatch.setattr(module, "_cv2", None)
    for seed, (pixel_values, target) in enumerate(with_cv2):
        numpy_pixel_values, numpy_target = augment(image, labels, torch.Generator().manual_seed(seed))
        assert torch.equal(pixel_values, numpy_pixel_values), seed
        assert torch.equal(target, numpy_target), seed
