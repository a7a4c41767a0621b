"""mmseg's IoUMetric written out with numpy histograms, independent of `transformers_setr.evaluation`: the
reference the metric tests compare with."""

import numpy as np


def mmseg_reference(predictions, labels, num_labels, ignore_index=255):
    """mmseg's IoUMetric, written out: per-image histograms of the non-ignored pixels, dataset sums, nanmean."""
    total = np.zeros((4, num_labels))
    for prediction, label in zip(predictions, labels):
        keep = label != ignore_index
        prediction, label = prediction[keep], label[keep]
        bins = dict(bins=num_labels, range=(0, num_labels - 1))
        intersect = np.histogram(prediction[prediction == label], **bins)[0]
        area_prediction = np.histogram(prediction, **bins)[0]
        area_label = np.histogram(label, **bins)[0]
        total += [intersect, area_prediction + area_label - intersect, area_prediction, area_label]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou, accuracy = total[0] / total[1], total[0] / total[3]
    return {
        "areas": total,
        "mIoU": np.nanmean(iou),
        "mAcc": np.nanmean(accuracy),
        "aAcc": total[0].sum() / total[3].sum(),
        "iou": iou,
        "accuracy": accuracy,
    }
