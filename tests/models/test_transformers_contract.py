"""The parts of transformers' shared test contract that SETR once broke, checked without the upstream suite (which
`test_upstream_common.py` runs when the transformers sdist can be downloaded)."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from transformers_setr import SetrForSemanticSegmentation
from transformers_setr.models.setr import configuration_setr

from conftest import DECODERS, tiny_config


@pytest.mark.parametrize("decoder_type", DECODERS)
def test_hidden_states_selected_by_index_need_not_include_the_decoder_layers(decoder_type):
    # The decoder reads layers 2 and 3 (hidden states 3 and 4); the caller asks for the embeddings and the last one.
    config = tiny_config(
        decoder_type,
        out_indices=[1, 2, 3],
        auxiliary_in_indices=[0, 1],
        decoder_channels=24 if decoder_type == "mla" else 16,
    )
    model = SetrForSemanticSegmentation(config).eval()
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        everything = model(pixel_values, output_hidden_states=True)
        selected = model(pixel_values, output_hidden_states=[0, -1])
        plain = model(pixel_values)
    assert len(everything.hidden_states) == config.num_hidden_layers + 1
    assert len(selected.hidden_states) == len(everything.hidden_states)
    for index, state in enumerate(selected.hidden_states):
        if index in (0, config.num_hidden_layers):
            assert torch.equal(state, everything.hidden_states[index])
        else:
            assert state is None
    assert plain.hidden_states is None
    assert torch.equal(selected.logits, plain.logits) and torch.equal(everything.logits, plain.logits)


@pytest.fixture(params=["pil", "torchvision"])
def processor_class(request):
    if request.param == "pil":
        from transformers_setr import SetrImageProcessorPil

        return SetrImageProcessorPil
    pytest.importorskip("torchvision")
    from transformers_setr.models.setr.image_processing_setr import SetrImageProcessor

    return SetrImageProcessor


def test_other_channel_counts_pass_through_without_rgb_conversion(processor_class):
    rng = np.random.default_rng(0)
    processor = processor_class(size={"height": 8, "width": 10})
    for channels in (4, 5):
        image = rng.integers(0, 256, (12, 16, channels), dtype=np.uint8)
        out = processor(
            image,
            do_convert_rgb=False,
            input_data_format="channels_last",
            image_mean=[0.0] * channels,
            image_std=[1.0] * channels,
            return_tensors="pt",
        )["pixel_values"]
        assert tuple(out.shape) == (1, channels, 8, 10)
    # By default RGBA is composited onto white and other counts are refused.
    assert processor(image[..., :4], return_tensors="pt")["pixel_values"].shape[1] == 3
    with pytest.raises(ValueError, match="5 channels"):
        processor(image, input_data_format="channels_last")


def test_configuration_file_carries_its_copyright_year():
    # transformers' common tests read the year the model was added from this header (2023 and later: the strict
    # `test_can_init_all_missing_weights` runs).
    source = Path(configuration_setr.__file__).read_text(encoding="utf-8")
    assert re.search(r"^# Copyright 2026 ", source, re.MULTILINE)
