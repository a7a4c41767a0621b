import pytest
import torch

from transformers_setr import SetrConfig

DECODERS = ("naive", "pup", "mla")


def tiny_config(decoder_type: str = "pup", **overrides) -> SetrConfig:
    """A small SETR with the released architecture's structure (4 feature levels, auxiliary heads)."""
    kwargs = dict(
        decoder_type=decoder_type,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=64,
        out_indices=[0, 1, 2, 3],
        mla_channels=8,
        mla_neck_channels=16,
        decoder_channels=32 if decoder_type == "mla" else 16,
        auxiliary_channels=16,
        num_labels=5,
    )
    kwargs.update(overrides)
    if "id2label" in overrides:
        kwargs.pop("num_labels")
    return SetrConfig(**kwargs)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomise_batch_norm(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics, so that eval-mode parity checks exercise them."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.normal_(0, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0, 0.1, generator=generator)


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    from transformers_setr.data.synthetic import make_synthetic_ade20k

    return make_synthetic_ade20k(
        tmp_path_factory.mktemp("ade"), layout="raw", num_train=16, num_validation=4, image_size=(48, 64), seed=0
    )


@pytest.fixture
def offline_datasets(monkeypatch, tmp_path):
    """No Hub, and a fresh `datasets` cache: for the tests that load data (`pytest.mark.usefixtures`)."""
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets-cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # read at import time, so set it here too
