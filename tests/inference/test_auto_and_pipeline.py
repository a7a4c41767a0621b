"""Auto classes, pipeline("image-segmentation") and trust_remote_code loading."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, pipeline
from transformers.utils import is_torchvision_available

from transformers_setr import SetrForSemanticSegmentation, SetrImageProcessorPil
from transformers_setr.data.label_tables import id2label_for

from conftest import randomise_batch_norm, tiny_config

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def photograph() -> Image.Image:
    return Image.fromarray(skimage_data.coffee())  # a real 600x400 photograph shipped with scikit-image


@pytest.fixture
def saved_model(tmp_path):
    """A tiny random SETR-PUP with ADE20K's 150 class names, saved with its processor."""
    model = SetrForSemanticSegmentation(tiny_config("pup", id2label=id2label_for("ade20k"))).eval()
    randomise_batch_norm(model)
    folder = tmp_path / "setr-tiny"
    model.save_pretrained(folder)
    SetrImageProcessorPil(size={"shortest_edge": 128, "longest_edge": 512}).save_pretrained(folder)
    return model, folder


def test_saved_folder_has_code_and_a_complete_auto_map(saved_model):
    _, folder = saved_model
    files = {path.name for path in folder.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= files
    assert {"configuration_setr.py", "modeling_setr.py", "image_processing_pil_setr.py"} <= files
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_setr.SetrConfig",
        "AutoModel": "modeling_setr.SetrModel",
        "AutoModelForSemanticSegmentation": "modeling_setr.SetrForSemanticSegmentation",
    }
    processor_map = json.loads((folder / "preprocessor_config.json").read_text())["auto_map"]["AutoImageProcessor"]
    assert processor_map["pil"] == "image_processing_pil_setr.SetrImageProcessorPil"
    if "torchvision" in processor_map:
        assert "image_processing_setr.py" in files


def test_auto_image_processor_backends(saved_model):
    _, folder = saved_model
    assert type(AutoImageProcessor.from_pretrained(folder, backend="pil")).__name__ == "SetrImageProcessorPil"
    expected = "SetrImageProcessor" if is_torchvision_available() else "SetrImageProcessorPil"
    assert type(AutoImageProcessor.from_pretrained(folder)).__name__ == expected


def test_pipeline_on_a_real_photograph(saved_model, photograph, caplog):
    model, folder = saved_model
    with caplog.at_level(logging.WARNING):
        segmenter = pipeline("image-segmentation", model=str(folder))
        results = segmenter(photograph)
    assert "not supported" not in caplog.text
    # One mask per class present, at the original size, named from id2label.
    processor = AutoImageProcessor.from_pretrained(folder)
    inputs = processor(images=photograph, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[photograph.size[::-1]])[0]
    present = sorted(torch.unique(expected).tolist())
    assert sorted(model.config.label2id[r["label"]] for r in results) == present
    union = np.zeros(photograph.size[::-1], dtype=int)
    for result in results:
        mask = np.array(result["mask"])
        assert result["mask"].size == photograph.size and result["score"] is None
        assert np.array_equal(mask > 0, expected.numpy() == model.config.label2id[result["label"]])
        union += mask > 0
    assert (union == 1).all()  # the masks partition the image


def test_pipeline_with_in_memory_objects(saved_model, photograph):
    model, _ = saved_model
    segmenter = pipeline("image-segmentation", model=model, image_processor=SetrImageProcessorPil())
    results = segmenter([photograph, photograph.convert("L")])
    assert len(results) == 2 and all(r[0]["mask"].size == photograph.size for r in results)


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "transformers_setr":
                raise ModuleNotFoundError("transformers_setr is blocked in this test")
    sys.meta_path.insert(0, Block())
    import json, torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel, AutoModelForSemanticSegmentation, pipeline
    folder, image_path, out_path = sys.argv[1:4]
    try:
        AutoModelForSemanticSegmentation.from_pretrained(folder)
        refused = False
    except ValueError as error:
        refused = "trust_remote_code" in str(error)
    model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
    encoder = AutoModel.from_pretrained(folder, trust_remote_code=True)
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True, backend="pil")
    default_processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    image = Image.open(image_path)
    with torch.no_grad():
        logits = model(**processor(images=image, return_tensors="pt")).logits
    results = pipeline("image-segmentation", model=folder, trust_remote_code=True)(image)
    torch.save(logits, out_path)
    print("RESULT " + json.dumps({
        "refused_without_flag": refused,
        "model": type(model).__module__ + "." + type(model).__name__,
        "encoder": type(encoder).__name__,
        "processor": type(processor).__name__,
        "default_processor": type(default_processor).__name__,
        "labels": sorted(r["label"] for r in results),
        "setr_imported": any(m.startswith("transformers_setr") for m in sys.modules),
    }))
    """
)


def test_trust_remote_code_without_the_package(saved_model, photograph, tmp_path):
    model, folder = saved_model
    image_path, out_path = tmp_path / "photo.png", tmp_path / "logits.pt"
    photograph.save(image_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    completed = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_SCRIPT, str(folder), str(image_path), str(out_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.split("RESULT ", 1)[1])
    assert report["refused_without_flag"] is True
    assert report["model"].startswith("transformers_modules.") and report["model"].endswith(
        "SetrForSemanticSegmentation"
    )
    assert (report["encoder"], report["processor"], report["setr_imported"]) == (
        "SetrModel",
        "SetrImageProcessorPil",
        False,
    )
    processor = SetrImageProcessorPil.from_pretrained(folder)
    with torch.no_grad():
        expected = model(**processor(images=Image.open(image_path), return_tensors="pt")).logits
    assert torch.equal(torch.load(out_path), expected)
    assert report["default_processor"] == (
        "SetrImageProcessor" if is_torchvision_available() else "SetrImageProcessorPil"
    )
    assert report["labels"] and all(label in model.config.label2id for label in report["labels"])


@pytest.mark.parametrize("inference_mode", ["whole", "slide"])
def test_pipeline_batches_images_of_different_sizes(saved_model, photograph, inference_mode):
    # The stock collation concatenates pixel_values (a crash for different sizes), and padding would change SETR's
    # masks; each image must get exactly the masks it gets alone.
    model, folder = saved_model
    if inference_mode == "slide":
        model.config.inference_mode, model.config.slide_stride = "slide", 40
        model.save_pretrained(folder)
    # With batch_size=3 the two crops of the same size run together, next to an image of another size.
    small = photograph.resize((240, 160))  # the masks are resized to the image: small ones keep the test fast
    images = [small, small.crop((0, 0, 120, 160)), small.crop((20, 0, 140, 160))]
    segmenter = pipeline("image-segmentation", model=str(folder))
    alone = [segmenter(image) for image in images]
    assert sum(len(results) for results in alone) > len(images)  # several classes: the comparison means something
    for batch_size in (2, 3):
        batched = segmenter(images, batch_size=batch_size)
        assert len(batched) == len(images)
        for image, expected, results in zip(images, alone, batched):
            assert [r["label"] for r in results] == [r["label"] for r in expected]
            for result, reference in zip(results, expected):
                assert result["mask"].size == image.size
                assert np.array_equal(np.array(result["mask"]), np.array(reference["mask"]))


def test_pipeline_refuses_16_bit_images_and_empty_lists(saved_model, tmp_path):
    _, folder = saved_model
    segmenter = pipeline("image-segmentation", model=str(folder))
    deep = Image.fromarray((np.arange(64 * 80, dtype=np.uint16).reshape(64, 80) * 12).astype(np.uint16))
    deep.save(tmp_path / "depth.png")
    assert Image.open(tmp_path / "depth.png").mode == "I;16"
    # transformers' load_image would clip it to 8 bits before the processor could refuse it.
    for given in (str(tmp_path / "depth.png"), deep, [deep, deep]):
        with pytest.raises(ValueError, match="mode 'I;16'.*8-bit"):
            segmenter(given)
    with pytest.raises(ValueError, match="No images were given"):
        segmenter([])
    with pytest.raises(ValueError, match="No images were given"):
        segmenter([], batch_size=2)


def test_pipeline_is_unchanged_for_other_models(photograph):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor
    from transformers.pipelines import ImageSegmentationPipeline

    config = SegformerConfig(hidden_sizes=[8, 8, 8, 8], decoder_hidden_size=8, depths=[1, 1, 1, 1], num_labels=3)
    model = SegformerForSemanticSegmentation(config).eval()
    processor = SegformerImageProcessor(size={"height": 64, "width": 64})
    registered = pipeline("image-segmentation", model=model, image_processor=processor)
    stock = ImageSegmentationPipeline(model=model, image_processor=processor)
    images = [photograph, photograph.crop((0, 0, 200, 300))]
    for got, expected in zip(registered(images, batch_size=2), stock(images, batch_size=2)):
        assert [r["label"] for r in got] == [r["label"] for r in expected]
        assert all(np.array_equal(np.array(a["mask"]), np.array(b["mask"])) for a, b in zip(got, expected))


def test_pipeline_gives_the_processor_the_image_as_it_is(saved_model, photograph):
    # load_image's convert("RGB") would drop the alpha channel; the processor composites it onto white.
    model, folder = saved_model
    rgba = photograph.resize((240, 160)).convert("RGBA")
    alpha = np.full((160, 240), 255, dtype=np.uint8)
    alpha[:, :120] = 0  # the left half transparent: white for the processor
    rgba.putalpha(Image.fromarray(alpha))
    segmenter = pipeline("image-segmentation", model=str(folder))
    processor, modes_seen = segmenter.image_processor, []

    class RecordingProcessor:
        def __call__(self, images, **kwargs):
            modes_seen.extend(image.mode for image in images)
            return processor(images=images, **kwargs)

        def __getattr__(self, name):
            return getattr(processor, name)

    segmenter.image_processor = RecordingProcessor()
    results = segmenter(rgba)
    assert modes_seen == ["RGBA"]
    with torch.no_grad():
        outputs = model(**processor(images=rgba, return_tensors="pt"))
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[(160, 240)])[0]
    assert sorted(model.config.label2id[r["label"]] for r in results) == sorted(torch.unique(expected).tolist())
    for result in results:
        class_id = model.config.label2id[result["label"]]
        assert np.array_equal(np.array(result["mask"]) > 0, expected.numpy() == class_id)
