"""The metric against a direct numpy transcription of mmseg's `IoUMetric` formula, streaming, the `evaluate` module
(loaded offline from its folder) and the Trainer `compute_metrics` hook."""

import inspect
import math

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from transformers_setr.evaluation.metrics import (
    MeanIoU,
    evaluate_metric_path,
    intersect_and_union,
    summarize_areas,
    trainer_compute_metrics,
)

from helpers.miou_reference import mmseg_reference

# datasets' Image feature (what the evaluate module stores maps as, like evaluate's mean_iou) warns on int64 maps.
pytestmark = pytest.mark.filterwarnings("ignore:Downcasting array dtype:UserWarning")

NUM_LABELS = 7
ABSENT = 5  # in neither predictions nor labels: NaN IoU and accuracy, skipped by the means
PREDICTED_ONLY = 3  # predicted but never in the ground truth: IoU 0, accuracy NaN


def random_maps(seed, sizes=((9, 13), (16, 16), (5, 21), (12, 7)), num_labels=NUM_LABELS):
    """Noisy predictions of random labels; 20% ignore pixels (random predictions there), a few out-of-range
    predictions (255 or num_labels), class ABSENT nowhere and PREDICTED_ONLY only in predictions."""
    rng = np.random.default_rng(seed)
    label_classes = [c for c in range(num_labels) if c not in (ABSENT, PREDICTED_ONLY)]
    prediction_classes = [c for c in range(num_labels) if c != ABSENT]
    predictions, labels = [], []
    for height, width in sizes:
        label = rng.choice(label_classes, size=(height, width)).astype(np.uint8)
        prediction = np.where(
            rng.random((height, width)) < 0.6, label, rng.choice(prediction_classes, (height, width))
        )
        prediction[rng.random((height, width)) < 0.03] = 255
        prediction[rng.random((height, width)) < 0.03] = num_labels
        label[rng.random((height, width)) < 0.2] = 255
        predictions.append(prediction.astype(np.int64))
        labels.append(label)
    return predictions, labels


def assert_summary_matches(summary, reference):
    assert summary["mIoU"] == pytest.approx(reference["mIoU"], abs=1e-12)
    assert summary["mAcc"] == pytest.approx(reference["mAcc"], abs=1e-12)
    assert summary["aAcc"] == pytest.approx(reference["aAcc"], abs=1e-12)
    np.testing.assert_allclose(list(summary["per_class_iou"].values()), reference["iou"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(list(summary["per_class_accuracy"].values()), reference["accuracy"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_areas_and_summary_match_mmseg_formula(seed):
    predictions, labels = random_maps(seed)
    reference = mmseg_reference(predictions, labels, NUM_LABELS)
    areas = sum(
        intersect_and_union(torch.from_numpy(prediction), torch.from_numpy(label), NUM_LABELS)
        for prediction, label in zip(predictions, labels)
    )
    assert areas.dtype == torch.int64 and areas.shape == (4, NUM_LABELS)
    np.testing.assert_array_equal(areas.numpy(), reference["areas"])
    assert_summary_matches(summarize_areas(areas), reference)


def test_absent_classes_are_skipped_not_zero():
    predictions, labels = random_maps(0)
    summary = summarize_areas(
        sum(intersect_and_union(prediction, label, NUM_LABELS) for prediction, label in zip(predictions, labels))
    )
    iou = np.array(list(summary["per_class_iou"].values()))
    accuracy = np.array(list(summary["per_class_accuracy"].values()))
    assert math.isnan(iou[ABSENT]) and math.isnan(accuracy[ABSENT])
    assert iou[PREDICTED_ONLY] == 0 and math.isnan(accuracy[PREDICTED_ONLY])
    present = [c for c in range(NUM_LABELS) if c != ABSENT]
    assert summary["mIoU"] == pytest.approx(iou[present].mean())
    assert summary["mIoU"] > np.nan_to_num(iou).mean()  # counting the absent class as 0 would lower it


def test_ignored_pixels_and_out_of_range_predictions():
    labels = torch.tensor([[0, 1, 255], [1, 1, 255]])
    predictions = torch.tensor([[0, 255, 1], [1, 2, 0]])  # a "255" prediction on a labelled pixel is a miss
    areas = intersect_and_union(predictions, labels, num_labels=3)
    # class 0: I=1 P=1 L=1; class 1: I=1 P=1 L=3; class 2: I=0 P=1 L=0 (pixels under ignore never count)
    expected = torch.tensor([[1, 1, 0], [1, 3, 1], [1, 1, 1], [1, 3, 0]])
    torch.testing.assert_close(areas, expected)
    summary = summarize_areas(areas, id2label={0: "wall", 1: "sky", 2: "tree"})
    assert summary["aAcc"] == pytest.approx(2 / 4)
    assert summary["per_class_iou"] == {"wall": 1.0, "sky": 1 / 3, "tree": 0.0}
    assert math.isnan(summary["per_class_accuracy"]["tree"])
    assert summary["mAcc"] == pytest.approx((1 + 1 / 3) / 2)


def test_batched_maps_equal_sum_over_images():
    predictions, labels = random_maps(3, sizes=((8, 10),) * 5)
    one_call = intersect_and_union(np.stack(predictions), np.stack(labels), NUM_LABELS)
    per_image = sum(
        intersect_and_union(prediction, label, NUM_LABELS) for prediction, label in zip(predictions, labels)
    )
    torch.testing.assert_close(one_call, per_image)


def test_streaming_in_chunks_equals_one_shot():
    predictions, labels = random_maps(4, sizes=((6, 9), (11, 4), (7, 7), (3, 30), (10, 10), (8, 5), (9, 9)))
    one_shot = intersect_and_union(
        np.concatenate([p.ravel() for p in predictions]),
        np.concatenate([label.ravel() for label in labels]),
        NUM_LABELS,
    )
    metric = MeanIoU(NUM_LABELS)
    for start in range(0, len(predictions), 3):  # chunks of 3, 3, 1 images, maps of different sizes
        for prediction, label in zip(predictions[start : start + 3], labels[start : start + 3]):
            metric.update(prediction, label)
    torch.testing.assert_close(metric.total_areas(), one_shot)
    assert_summary_matches(metric.compute(), mmseg_reference(predictions, labels, NUM_LABELS))

    per_sample = torch.stack(
        [intersect_and_union(prediction, label, NUM_LABELS) for prediction, label in zip(predictions, labels)]
    )
    streamed = MeanIoU(NUM_LABELS)
    streamed.update_areas(per_sample[:4])  # (B, 4, C) batches
    streamed.update_areas(per_sample[4:])
    torch.testing.assert_close(streamed.total_areas(), one_shot)
    streamed.reset()
    assert streamed.total_areas().sum() == 0


def reference_areas(prediction, label, num_labels, ignore_index):
    """mmseg's per-image histograms, with any ignore index and any integer dtype (values compared as int64)."""
    prediction, label = np.asarray(prediction).astype(np.int64), np.asarray(label).astype(np.int64)
    return mmseg_reference([prediction], [label], num_labels, ignore_index)["areas"]


@pytest.mark.parametrize("label_dtype", [np.uint8, np.int16, np.int32, np.int64])
@pytest.mark.parametrize("prediction_dtype", [np.uint8, np.int32, np.int64])
@pytest.mark.parametrize("ignore_index", [255, -1, 0, 2])
def test_areas_for_every_dtype_and_ignore_index(label_dtype, prediction_dtype, ignore_index):
    """The joint-histogram path must equal the plain per-pixel rule for every dtype pairing, with out-of-range
    predictions (negative, num_labels, 255, large) and the ignore value below, inside or above the classes."""
    rng = np.random.default_rng(7)
    num_labels = 5
    label = rng.integers(0, num_labels, (23, 31))
    if ignore_index != 0 or np.dtype(label_dtype).kind == "i":
        label[rng.random(label.shape) < 0.15] = ignore_index
    if np.dtype(label_dtype) == np.uint8 and ignore_index < 0:
        label[label < 0] = 0  # uint8 cannot hold it: no pixel is ignored then
    prediction = np.where(rng.random(label.shape) < 0.6, label, rng.integers(0, num_labels, label.shape))
    prediction[prediction < 0] = 0
    out_of_range = [num_labels, 255] if np.dtype(prediction_dtype) == np.uint8 else [-3, num_labels, 255, 10**6]
    prediction[rng.random(label.shape) < 0.1] = rng.choice(out_of_range)
    label, prediction = label.astype(label_dtype), prediction.astype(prediction_dtype)
    label_before, prediction_before = label.copy(), prediction.copy()
    areas = intersect_and_union(torch.from_numpy(prediction), torch.from_numpy(label), num_labels, ignore_index)
    assert areas.dtype == torch.int64
    np.testing.assert_array_equal(label, label_before)  # the inputs are left as they were
    np.testing.assert_array_equal(prediction, prediction_before)
    np.testing.assert_array_equal(areas.numpy(), reference_areas(prediction, label, num_labels, ignore_index))


def test_areas_for_labels_spanning_many_values():
    """An ignore index far from the classes (e.g. 65535) leaves the joint histogram for int64 masks: same areas."""
    rng = np.random.default_rng(3)
    label = rng.integers(0, 4, (17, 19)).astype(np.int64)
    label[rng.random(label.shape) < 0.2] = 65535
    prediction = rng.integers(-1, 6, label.shape)
    areas = intersect_and_union(prediction, label, 4, ignore_index=65535)
    np.testing.assert_array_equal(areas.numpy(), reference_areas(prediction, label, 4, 65535))
    with pytest.raises(ValueError, match=r"values \[70000\] outside \[0, 4\)"):
        label[0, 0] = 70000
        intersect_and_union(prediction, label, 4, ignore_index=65535)


def test_bad_inputs_are_reported():
    with pytest.raises(ValueError, match=r"values \[9\] outside \[0, 7\)"):
        intersect_and_union(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 9], [255, 1]]), NUM_LABELS)
    with pytest.raises(ValueError, match="same shape"):
        intersect_and_union(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), NUM_LABELS)
    with pytest.raises(ValueError, match="integer class ids"):
        intersect_and_union(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long), NUM_LABELS)
    with pytest.raises(ValueError, match="shape"):
        MeanIoU(NUM_LABELS).update_areas(torch.zeros(4, NUM_LABELS + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"values \[-2, 7\] outside \[0, 7\)"):
        intersect_and_union(
            torch.zeros(3, dtype=torch.uint8), torch.tensor([-2, 7, 255], dtype=torch.int16), NUM_LABELS
        )
    with pytest.raises(ValueError, match=r"values \[7, 200\] outside"):
        intersect_and_union(
            torch.zeros(3, dtype=torch.uint8), torch.tensor([7, 200, 255], dtype=torch.uint8), NUM_LABELS
        )
    with pytest.raises(ValueError, match="integer class ids"):
        intersect_and_union(torch.zeros(2, dtype=torch.bool), torch.zeros(2, dtype=torch.long), NUM_LABELS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_tensors_give_the_same_areas():
    predictions, labels = random_maps(5)
    for prediction, label in zip(predictions, labels):
        cpu = intersect_and_union(torch.from_numpy(prediction), torch.from_numpy(label), NUM_LABELS)
        gpu = intersect_and_union(torch.from_numpy(prediction).cuda(), torch.from_numpy(label).cuda(), NUM_LABELS)
        assert gpu.is_cuda
        torch.testing.assert_close(gpu.cpu(), cpu)


# --- the evaluate module -------------------------------------------------------------------------------------------


@pytest.fixture
def setr_mean_iou(tmp_path, monkeypatch):
    """`evaluate.load` of the packaged metric folder, offline, with every cache under tmp_path."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    import evaluate

    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path / "modules")
    return evaluate.load(evaluate_metric_path(), cache_dir=str(tmp_path / "evaluate"))


def test_evaluate_module_loads_offline_and_equals_mean_iou(setr_mean_iou, tmp_path):
    assert (tmp_path / "modules").is_dir()  # the script was copied into the temporary modules cache
    predictions, labels = random_maps(6)
    result = setr_mean_iou.compute(predictions=predictions, references=labels, num_labels=NUM_LABELS, ignore_index=255)
    assert set(result) == {
        "mean_iou",
        "mean_accuracy",
        "overall_accuracy",
        "per_category_iou",
        "per_category_accuracy",
    }
    metric = MeanIoU(NUM_LABELS)
    for prediction, label in zip(predictions, labels):
        metric.update(prediction, label)
    summary = metric.compute()
    assert result["mean_iou"] == summary["mIoU"]
    assert result["mean_accuracy"] == summary["mAcc"]
    assert result["overall_accuracy"] == summary["aAcc"]
    np.testing.assert_array_equal(result["per_category_iou"], list(summary["per_class_iou"].values()))
    np.testing.assert_array_equal(result["per_category_accuracy"], list(summary["per_class_accuracy"].values()))

    # add_batch streaming gives the same result
    for start in range(0, len(predictions), 2):
        setr_mean_iou.add_batch(predictions=predictions[start : start + 2], references=labels[start : start + 2])
    streamed = setr_mean_iou.compute(num_labels=NUM_LABELS, ignore_index=255)
    assert streamed["mean_iou"] == result["mean_iou"]


def test_evaluate_module_reproduces_official_mean_iou_example(setr_mean_iou):
    # The example and its printed output from the docstring of evaluate's metrics/mean_iou/mean_iou.py.
    predictions = [
        np.array([[1, 2], [3, 4], [5, 255]]),
        np.array([[2, 7], [9, 2], [3, 6]]),
        np.array([[2, 2, 3], [8, 2, 4], [3, 255, 2]]),
    ]
    references = [
        np.array([[0, 3], [5, 4], [6, 255]]),
        np.array([[1, 7], [9, 2], [3, 6]]),
        np.array([[1, 2, 2], [8, 2, 1], [3, 255, 1]]),
    ]
    result = setr_mean_iou.compute(
        predictions=predictions, references=references, num_labels=10, ignore_index=255, reduce_labels=False
    )
    assert result["mean_iou"] == pytest.approx(0.47750000000000004)
    assert result["mean_accuracy"] == pytest.approx(0.5916666666666666)
    assert result["overall_accuracy"] == pytest.approx(0.5263157894736842)
    np.testing.assert_allclose(result["per_category_iou"], [0, 0, 0.375, 0.4, 0.5, 0, 0.5, 1, 1, 1])
    np.testing.assert_allclose(
        result["per_category_accuracy"], [0, 0, 0.75, 0.66666667, 1, 0, 0.5, 1, 1, 1], atol=1e-8
    )


def test_evaluate_module_reduce_labels_and_label_map_apply_to_references_only(setr_mean_iou):
    rng = np.random.default_rng(7)
    raw_references = [rng.integers(0, NUM_LABELS + 1, size=(9, 11)).astype(np.uint8) for _ in range(3)]
    raw_references[0][0, :4] = 255
    predictions = [rng.integers(0, NUM_LABELS, size=(9, 11)) for _ in range(3)]

    # reduce_labels: 0 -> 255 (ignored), v -> v - 1, 255 stays 255; the predictions are left alone.
    reduced = [np.where(r == 0, 255, np.where(r == 255, 255, r.astype(np.int64) - 1)) for r in raw_references]
    result = setr_mean_iou.compute(
        predictions=predictions, references=raw_references, num_labels=NUM_LABELS, ignore_index=255, reduce_labels=True
    )
    expected = mmseg_reference(predictions, reduced, NUM_LABELS)
    assert result["mean_iou"] == pytest.approx(expected["mIoU"])
    np.testing.assert_allclose(result["per_category_iou"], expected["iou"])

    # label_map looks every value up in the ORIGINAL references (a swap stays a swap), then reduce_labels applies.
    label_map = {1: 2, 2: 1, 7: 0}
    mapped = []
    for reference in raw_references:
        swapped = reference.astype(np.int64).copy()
        swapped[reference == 1], swapped[reference == 2], swapped[reference == 7] = 2, 1, 0
        mapped.append(np.where(swapped == 0, 255, np.where(swapped == 255, 255, swapped - 1)))
    result = setr_mean_iou.compute(
        predictions=predictions,
        references=raw_references,
        num_labels=NUM_LABELS,
        ignore_index=255,
        label_map=label_map,
        reduce_labels=True,
    )
    expected = mmseg_reference(predictions, mapped, NUM_LABELS)
    assert result["mean_iou"] == pytest.approx(expected["mIoU"])
    np.testing.assert_allclose(result["per_category_accuracy"], expected["accuracy"])


def test_evaluate_module_nan_to_num_replaces_outputs_after_the_means(setr_mean_iou):
    predictions, labels = random_maps(8)
    plain = setr_mean_iou.compute(predictions=predictions, references=labels, num_labels=NUM_LABELS, ignore_index=255)
    filled = setr_mean_iou.compute(
        predictions=predictions, references=labels, num_labels=NUM_LABELS, ignore_index=255, nan_to_num=0
    )
    assert math.isnan(plain["per_category_iou"][ABSENT]) and filled["per_category_iou"][ABSENT] == 0
    assert filled["mean_iou"] == plain["mean_iou"]  # evaluate's mean_iou takes the nanmean first


# --- Trainer compute_metrics ----------------------------------------------------------------------------------------


def test_trainer_compute_metrics_accumulates_and_resets():
    compute_metrics = trainer_compute_metrics(NUM_LABELS, id2label={i: f"class{i}" for i in range(NUM_LABELS)})
    assert "compute_result" in inspect.signature(compute_metrics).parameters  # what the Trainer checks

    def run_evaluation(predictions, labels, batch_size):
        per_sample = torch.stack(
            [intersect_and_union(prediction, label, NUM_LABELS) for prediction, label in zip(predictions, labels)]
        )
        outputs = []
        for start in range(0, len(per_sample), batch_size):
            batch = per_sample[start : start + batch_size]
            last = start + batch_size >= len(per_sample)
            eval_pred = EvalPrediction(predictions=batch, label_ids=torch.zeros(len(batch)))
            outputs.append(compute_metrics(eval_pred, compute_result=last))
        return outputs

    first = random_maps(9, sizes=((8, 8),) * 5)
    outputs = run_evaluation(*first, batch_size=2)
    assert outputs[:-1] == [{}, {}]
    reference = mmseg_reference(*first, NUM_LABELS)
    result = outputs[-1]
    assert all(isinstance(value, float) for value in result.values())
    assert result["mIoU"] == pytest.approx(reference["mIoU"])
    assert result["mAcc"] == pytest.approx(reference["mAcc"])
    assert result["aAcc"] == pytest.approx(reference["aAcc"])
    assert result["IoU-class0"] == pytest.approx(reference["iou"][0])
    assert math.isnan(result[f"IoU-class{ABSENT}"])

    # The next evaluation starts from zero.
    second = random_maps(10, sizes=((8, 8),) * 3)
    result = run_evaluation(*second, batch_size=3)[-1]
    assert result["mIoU"] == pytest.approx(mmseg_reference(*second, NUM_LABELS)["mIoU"])

    with pytest.raises(ValueError, match="per-sample areas"):
        compute_metrics(
            EvalPrediction(predictions=torch.zeros(2, 5, 5), label_ids=torch.zeros(2)), compute_result=True
        )


def test_evaluate_metric_path_ships_the_script():
    from pathlib import Path

    folder = Path(evaluate_metric_path())
    assert (folder / f"{folder.name}.py").is_file()
