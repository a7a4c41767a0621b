"""mmsegmentation's mean IoU as an `evaluate` metric, loadable offline.

    import evaluate
    from transformers_setr.evaluation.metrics import evaluate_metric_path

    metric = evaluate.load(evaluate_metric_path())
    metric.compute(predictions=[...], references=[...], num_labels=150, ignore_index=255)

Same call and result keys as the Hub's `mean_iou` metric (`evaluate.load("mean_iou")`, which needs the network), and
the same numbers as `transformers_setr.evaluation.metrics.MeanIoU`, whose code it uses: areas summed over the dataset, classes
absent from the whole set skipped by the means. `label_map`, then `reduce_labels`, apply to the references only, as
in `mean_iou`. Unlike `mean_iou`, a reference value outside `[0, num_labels)` that is not `ignore_index` is an error
instead of being dropped silently.

The `evaluate` machinery encodes every map to an image in an Arrow cache; for large evaluations use `MeanIoU`
directly, which only keeps the (4, num_labels) sums.
"""

import datasets
import evaluate
import numpy as np

from transformers_setr.evaluation.metrics import intersect_and_union, summarize_areas

_DESCRIPTION = """
Mean Intersection-over-Union as mmsegmentation (and SETR) report it: per-class intersections and unions summed over
all images, IoU per class, mean over the classes present in the predictions or the references of the whole set.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of 2-D integer arrays or PIL images): predicted class-id maps, one per image.
    references (`list` of 2-D integer arrays or PIL images): ground-truth maps, each the size of its prediction.
    num_labels (`int`): number of classes.
    ignore_index (`int`): reference value of the pixels that are not evaluated (usually 255).
    nan_to_num (`float`, *optional*): replaces NaN in the results (after the means, as `mean_iou` does).
    label_map (`dict[int, int]`, *optional*): old -> new reference values, all looked up in the original values.
    reduce_labels (`bool`, *optional*, defaults to `False`): on references, 0 -> 255 and v -> v - 1 (ADE20K's
        "reduce zero label"); 255 stays 255.

Returns:
    mean_iou (`float`), mean_accuracy (`float`), overall_accuracy (`float`), per_category_iou (`ndarray` of shape
    (num_labels,)), per_category_accuracy (`ndarray` of shape (num_labels,)).
"""

_CITATION = """\
@software{MMSegmentation_Contributors_OpenMMLab_Semantic_Segmentation_2020,
author = {{MMSegmentation Contributors}},
license = {Apache-2.0},
month = {7},
title = {{OpenMMLab Semantic Segmentation Toolbox and Benchmark}},
url = {https://github.com/open-mmlab/mmsegmentation},
year = {2020}
}"""


def prepare_reference(reference, label_map: dict[int, int] | None, reduce_labels: bool) -> np.ndarray:
    """`mean_iou`'s reference handling: `label_map` (looked up in the original values), then `reduce_labels`."""
    original = np.asarray(reference).astype(np.int64)
    reference = original.copy()
    if label_map is not None:
        for old, new in label_map.items():
            reference[original == int(old)] = int(new)
    if reduce_labels:
        reference = np.where(reference == 0, 255, reference) - 1
        reference[reference == 254] = 255
    return reference


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SetrMeanIoU(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # Maps of any size per image; the same features as the Hub's `mean_iou`.
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Image()}),
            reference_urls=[
                "https://github.com/open-mmlab/mmsegmentation/blob/main/mmseg/evaluation/metrics/iou_metric.py"
            ],
        )

    def _compute(
        self,
        predictions,
        references,
        num_labels: int,
        ignore_index: int,
        nan_to_num: float | None = None,
        label_map: dict[int, int] | None = None,
        reduce_labels: bool = False,
    ) -> dict:
        if len(predictions) != len(references):
            raise ValueError(f"got {len(predictions)} predictions for {len(references)} references")
        total = np.zeros((4, num_labels), dtype=np.int64)
        for index, (prediction, reference) in enumerate(zip(predictions, references)):
            prediction = np.asarray(prediction).astype(np.int64)
            reference = prepare_reference(reference, label_map, reduce_labels)
            try:
                total += intersect_and_union(prediction, reference, num_labels, ignore_index).numpy()
            except ValueError as error:
                raise ValueError(f"image {index}: {error}") from None
        summary = summarize_areas(total)
        results = {
            "mean_iou": summary["mIoU"],
            "mean_accuracy": summary["mAcc"],
            "overall_accuracy": summary["aAcc"],
            "per_category_iou": np.array(list(summary["per_class_iou"].values())),
            "per_category_accuracy": np.array(list(summary["per_class_accuracy"].values())),
        }
        if nan_to_num is not None:
            results = {key: np.nan_to_num(value, nan=nan_to_num) for key, value in results.items()}
        return results
