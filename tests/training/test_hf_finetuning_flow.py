"""The stock transformers fine-tuning flow of `examples/pytorch/semantic-segmentation/run_semantic_segmentation.py`,
in spirit, on a tiny SETR: a checkpoint with 150 labels and a palette, re-headed for a new 3-class `id2label` with
`ignore_mismatched_sizes=True`, the image processor in `Dataset.set_transform`, the stock `Trainer` with a
`compute_metrics` like the example's (argmax of the up-sampled logits, mIoU by numpy), then `save_pretrained` and a
reload. Also the label rule of `SetrConfig` this flow relies on: a changed `id2label` rebuilds `label2id` and drops a
palette that no longer fits.
"""

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset
from torch.nn import functional as F
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, Trainer, TrainingArguments

from transformers_setr import SetrConfig, SetrForSemanticSegmentation, SetrImageProcessorPil
from transformers_setr.data.label_tables import ADE20K_CLASSES, ADE20K_PALETTE

from conftest import tiny_config

NEW_ID2LABEL = {0: "background", 1: "cat", 2: "dog"}


def _pretrained_folder(path) -> str:
    """A tiny 'pretrained' ADE20K SETR (150 labels, the dataset's palette) and its processor, as on the Hub."""
    config = tiny_config(
        "naive",
        image_size=32,
        id2label=dict(enumerate(ADE20K_CLASSES)),
        palette=[list(colour) for colour in ADE20K_PALETTE],
    )
    SetrForSemanticSegmentation(config).save_pretrained(path)
    SetrImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def _dataset(count: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for _ in range(count):
        labels = rng.integers(0, 3, size=(40, 48), dtype=np.uint8)
        labels[:4] = 255  # ignored pixels, as in real annotations
        image = (np.stack([labels * 80] * 3, axis=-1) + rng.integers(0, 40, (40, 48, 3))).astype(np.uint8)
        images.append(PIL.Image.fromarray(image))
        annotations.append(PIL.Image.fromarray(labels))
    return Dataset.from_dict({"image": images, "annotation": annotations})


def _mean_iou(predictions: np.ndarray, labels: np.ndarray, num_labels: int, ignore_index: int = 255) -> float:
    valid = labels != ignore_index
    ious = []
    for label in range(num_labels):
        predicted, actual = (predictions == label) & valid, (labels == label) & valid
        union = np.logical_or(predicted, actual).sum()
        if union:
            ious.append(np.logical_and(predicted, actual).sum() / union)
    return float(np.mean(ious))


def test_stock_trainer_finetuning_flow_with_new_labels(tmp_path):
    pretrained = _pretrained_folder(tmp_path / "pretrained")
    label2id = {label: index for index, label in NEW_ID2LABEL.items()}
    model = AutoModelForSemanticSegmentation.from_pretrained(
        pretrained, id2label=NEW_ID2LABEL, label2id=label2id, ignore_mismatched_sizes=True
    )
    assert model.config.num_labels == 3 and model.config.label2id == label2id
    assert model.config.palette is None  # the 150 ADE20K colours described the old labels
    assert model.decode_head.classifier.out_channels == 3
    processor = AutoImageProcessor.from_pretrained(pretrained)

    def transforms(batch: dict) -> dict:
        # As the example: the processor turns images and annotations into pixel_values and labels.
        images = [image.convert("RGB") for image in batch["image"]]
        encoded = processor(images, segmentation_maps=batch["annotation"])
        return {"pixel_values": encoded["pixel_values"], "labels": encoded["labels"]}

    train, validation = _dataset(8, seed=0), _dataset(4, seed=1)
    train.set_transform(transforms)
    validation.set_transform(transforms)

    def collate(examples: list[dict]) -> dict:
        return {
            "pixel_values": torch.stack([torch.as_tensor(example["pixel_values"]) for example in examples]),
            "labels": torch.stack([torch.as_tensor(example["labels"]) for example in examples]),
        }

    received = []

    def compute_metrics(eval_pred) -> dict:
        logits, labels = eval_pred
        received.append(type(logits))
        upsampled = F.interpolate(torch.from_numpy(logits), size=labels.shape[-2:], mode="bilinear")
        predictions = upsampled.argmax(dim=1).numpy()
        return {"mean_iou": _mean_iou(predictions, labels, num_labels=len(NEW_ID2LABEL))}

    arguments = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=3,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=2,
        learning_rate=1e-3,
        remove_unused_columns=False,  # the transform needs the image and annotation columns
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=collate,
        compute_metrics=compute_metrics,
    )
    trainer.train()
    metrics = trainer.evaluate()
    # The Trainer's predictions are the logits alone: auxiliary logits must not reach compute_metrics.
    assert received == [np.ndarray]
    assert 0.0 <= metrics["eval_mean_iou"] <= 1.0 and np.isfinite(metrics["eval_loss"])

    trainer.save_model(str(tmp_path / "finetuned"))
    processor.save_pretrained(str(tmp_path / "finetuned"))
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(str(tmp_path / "finetuned")).eval()
    assert reloaded.config.id2label == NEW_ID2LABEL and reloaded.config.label2id == label2id
    assert reloaded.config.palette is None
    pixel_values = collate([validation[0]])["pixel_values"]
    model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values).logits, model(pixel_values).logits)


def test_changed_id2label_keeps_a_fitting_palette_and_rebuilds_label2id(tmp_path):
    palette = [[10, 20, 30], [40, 50, 60], [70, 80, 90]]
    config = tiny_config("pup", id2label={0: "a", 1: "b", 2: "c"}, palette=palette)
    config.save_pretrained(tmp_path)
    renamed = {0: "x", 1: "y", 2: "z"}
    reloaded = SetrConfig.from_pretrained(tmp_path, id2label=renamed)
    assert reloaded.palette == palette  # still one colour per label: kept
    assert reloaded.label2id == {"x": 0, "y": 1, "z": 2}
    # JSON-style string keys, and `num_labels` (transformers' setter), go through the same rule.
    reloaded.id2label = {"0": "p", "1": "q"}
    assert reloaded.id2label == {0: "p", 1: "q"} and reloaded.label2id == {"p": 0, "q": 1}
    assert reloaded.palette is None
    config.num_labels = 4
    assert config.palette is None and len(config.label2id) == 4
    # A palette given with the new labels replaces the dropped one.
    with_palette = SetrConfig.from_pretrained(tmp_path, id2label={0: "u", 1: "v"}, palette=[[1, 1, 1], [2, 2, 2]])
    assert with_palette.palette == [[1, 1, 1], [2, 2, 2]]


def test_mismatched_palette_given_with_id2label_is_refused():
    with pytest.raises(Exception, match=r"palette must hold one \[r, g, b\] per label \(2\), got 3"):
        SetrConfig(id2label={0: "a", 1: "b"}, palette=[[0, 0, 0]] * 3)


def test_label2id_given_with_id2label_is_kept():
    config = SetrConfig(id2label={0: "label"}, label2id={"label": "0"})
    assert config.label2id == {"label": "0"}
    assert SetrConfig(id2label={0: "a", 1: "b"}).label2id == {"a": 0, "b": 1}
    assert SetrConfig(label2id={"a": 1, "b": 0}).id2label == {1: "a", 0: "b"}


def test_mismatched_palette_given_to_from_pretrained_fails_at_loading(tmp_path):
    config = tiny_config("naive", image_size=32, num_labels=3)
    SetrForSemanticSegmentation(config).save_pretrained(tmp_path)
    with pytest.raises(Exception, match=r"palette must hold one \[r, g, b\] per label \(3\), got 2"):
        SetrForSemanticSegmentation.from_pretrained(tmp_path, palette=[[0, 0, 0], [1, 1, 1]])


@pytest.mark.parametrize(
    ("id2label", "message"),
    [
        ({1: "a", 2: "b"}, r"keys must be 0\.\.1, got \[1, 2\]"),
        ({"cat": 0}, "must map class ids"),
        (["a"], "must map"),
    ],
)
def test_bad_id2label_given_to_from_pretrained_is_refused(tmp_path, id2label, message):
    tiny_config("naive", num_labels=3).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        SetrConfig.from_pretrained(tmp_path, id2label=id2label)
    with pytest.raises(Exception, match=message):
        SetrConfig(id2label=id2label)
