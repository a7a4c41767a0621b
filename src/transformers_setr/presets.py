"""The seven released mmsegmentation SETR checkpoints and their recipes: the one table the converter, the model
cards and the training presets read.

Numbers are mmsegmentation's, as reported in its SETR model zoo (V100; `miou_reported` single-scale slide,
`miou_ms_flip_reported` multi-scale + flip), not re-measured here.
"""

from dataclasses import dataclass
from typing import Any

from .models.setr.configuration_setr import default_slide_stride

MMSEG_DOWNLOAD_ROOT = "https://download.openmmlab.com/mmsegmentation/v0.5/setr"
HUB_ORGANISATION = "transformers-setr"
TIMM_VIT_LARGE_URL = (
    "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-vitjx/jx_vit_large_p16_384-b3be5167.pth"
)
MMSEG_CODE_LICENSE = "apache-2.0"
# The SETR page of the mmsegmentation model zoo (source of every reported number below) and its config folder.
MMSEG_MODEL_ZOO_URL = "https://github.com/open-mmlab/mmsegmentation/tree/main/configs/setr"
MMSEG_CONFIG_URL_ROOT = "https://github.com/open-mmlab/mmsegmentation/blob/main/configs/setr"
MMSEG_BENCHMARK_DEVICE = "V100"  # where mmsegmentation measured `memory_gb` (training, per GPU) and `fps`
# The encoder's initialisation on the Hub: the original ViT-L/16 of Dosovitskiy et al. (ImageNet-21k pre-training,
# ImageNet-1k fine-tuning at 384), i.e. the JAX release that timm's `jx_vit_large_p16_384` (TIMM_VIT_LARGE_URL) was
# converted from. timm's Hub weights for `vit_large_patch16_384` are the later AugReg ones, a different training run.
PRETRAINED_ENCODER_HUB_ID = "google/vit-large-patch16-384"
# The encoder of every released checkpoint: ViT-L/16 (the head count is the one thing its weights do not show).
RELEASED_ENCODER = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16}


@dataclass(frozen=True)
class DatasetHubInfo:
    pretty_name: str
    hub_id: str  # the Hub dataset id for `datasets:` metadata and model-index `dataset.type`
    hub_config: str  # the configuration / annotation set (model-index `dataset.config` of measured results)
    train_images: int
    val_images: int
    eval_split: str = "validation"


HUB_DATASETS: dict[str, DatasetHubInfo] = {
    "ade20k": DatasetHubInfo("ADE20K", "zhoubolei/scene_parse_150", "scene_parsing", 20_210, 2_000),
    "cityscapes": DatasetHubInfo("Cityscapes", "cityscapes", "gtFine", 2_975, 500),
}


@dataclass(frozen=True)
class CheckpointPreset:
    name: str  # our preset name and the Hub repo name
    file_name: str  # the released .pth
    mmseg_config: str  # the mmsegmentation 1.x config that describes it
    mmseg_v0_config: str  # the mmsegmentation 0.x config that trained it (without `.py`)
    dataset: str  # "ade20k" or "cityscapes"
    decoder_type: str
    crop_size: int  # training crop = slide window = position grid * 16
    test_scale: tuple[int, int]  # mmseg Resize(scale=(long, short), keep_ratio=True)
    batch_size: int  # total over GPUs
    gpus: int
    iterations: int
    learning_rate: float
    miou_reported: float
    miou_ms_flip_reported: float
    memory_gb: float
    fps: float | None
    auxiliary_num_convs: int

    @property
    def slide_stride(self) -> int:
        """The evaluation stride (mmseg's `test_cfg`: 341 for the 512 crop, 512 for 768), by the one rule."""
        return default_slide_stride(self.crop_size)

    @property
    def url(self) -> str:
        directory = self.file_name.rsplit("_", 2)[0]  # the file name without the date and hash
        return f"{MMSEG_DOWNLOAD_ROOT}/{directory}/{self.file_name}"

    @property
    def sha256_prefix(self) -> str:
        """mmsegmentation's `publish_model.py` appends the first 8 hex digits of the file's sha256."""
        return self.file_name.rsplit("-", 1)[1].removesuffix(".pth")

    @property
    def config_url(self) -> str:
        return f"{MMSEG_CONFIG_URL_ROOT}/{self.mmseg_config}.py"

    @property
    def log_url(self) -> str:
        """mmsegmentation's training log (`.log.json`) published next to the checkpoint."""
        return self.url.rsplit("-", 1)[0] + ".log.json"

    @property
    def hub_repo_id(self) -> str:
        return f"{HUB_ORGANISATION}/{self.name}"

    @property
    def num_labels(self) -> int:
        return 150 if self.dataset == "ade20k" else 19

    @property
    def architecture(self) -> dict[str, Any]:
        """The `SetrConfig` fields of the released model but its classes (`data.label_tables` holds those): the
        ViT-L/16 encoder, the decoder and its auxiliary heads, the crop (= position grid), the slide protocol."""
        return dict(
            RELEASED_ENCODER,
            decoder_type=self.decoder_type,
            image_size=self.crop_size,
            auxiliary_num_convs=self.auxiliary_num_convs,
            inference_mode="slide",
            slide_crop_size=self.crop_size,
            slide_stride=self.slide_stride,
        )


PRESETS: dict[str, CheckpointPreset] = {
    preset.name: preset
    for preset in (
        CheckpointPreset(
            name="setr-naive-vit-large-ade20k-512",
            file_name="setr_naive_512x512_160k_b16_ade20k_20210619_191258-061f24f5.pth",
            mmseg_config="setr_vit-l_naive_8xb2-160k_ade20k-512x512",
            mmseg_v0_config="setr_naive_512x512_160k_b16_ade20k",
            dataset="ade20k",
            decoder_type="naive",
            crop_size=512,
            test_scale=(2048, 512),
            batch_size=16,
            gpus=8,
            iterations=160_000,
            learning_rate=0.01,
            miou_reported=48.28,
            miou_ms_flip_reported=49.56,
            memory_gb=18.40,
            fps=4.72,
            auxiliary_num_convs=2,
        ),
        CheckpointPreset(
            name="setr-pup-vit-large-ade20k-512",
            file_name="setr_pup_512x512_160k_b16_ade20k_20210619_191343-7e0ce826.pth",
            mmseg_config="setr_vit-l_pup_8xb2-160k_ade20k-512x512",
            mmseg_v0_config="setr_pup_512x512_160k_b16_ade20k",
            dataset="ade20k",
            decoder_type="pup",
            crop_size=512,
            test_scale=(2048, 512),
            batch_size=16,
            gpus=8,
            iterations=160_000,
            learning_rate=0.001,
            miou_reported=48.24,
            miou_ms_flip_reported=49.99,
            memory_gb=19.54,
            fps=4.50,
            auxiliary_num_convs=2,
        ),
        CheckpointPreset(
            name="setr-mla-vit-large-ade20k-512-b8",
            file_name="setr_mla_512x512_160k_b8_ade20k_20210619_191118-c6d21df0.pth",
            mmseg_config="setr_vit-l-mla_8xb1-160k_ade20k-512x512",
            mmseg_v0_config="setr_mla_512x512_160k_b8_ade20k",
            dataset="ade20k",
            decoder_type="mla",
            crop_size=512,
            test_scale=(2048, 512),
            batch_size=8,
            gpus=8,
            iterations=160_000,
            learning_rate=0.001,
            miou_reported=47.34,
            miou_ms_flip_reported=49.05,
            memory_gb=10.96,
            fps=None,
            auxiliary_num_convs=0,
        ),
        CheckpointPreset(
            name="setr-mla-vit-large-ade20k-512-b16",
            file_name="setr_mla_512x512_160k_b16_ade20k_20210619_191057-f9741de7.pth",
            mmseg_config="setr_vit-l_mla_8xb2-160k_ade20k-512x512",
            mmseg_v0_config="setr_mla_512x512_160k_b16_ade20k",
            dataset="ade20k",
            decoder_type="mla",
            crop_size=512,
            test_scale=(2048, 512),
            batch_size=16,
            gpus=8,
            iterations=160_000,
            learning_rate=0.001,
            miou_reported=47.39,
            miou_ms_flip_reported=49.37,
            memory_gb=17.30,
            fps=5.25,
            auxiliary_num_convs=0,
        ),
        CheckpointPreset(
            name="setr-naive-vit-large-cityscapes-768",
            file_name="setr_naive_vit-large_8x1_768x768_80k_cityscapes_20211123_000505-20728e80.pth",
            mmseg_config="setr_vit-l_naive_8xb1-80k_cityscapes-768x768",
            mmseg_v0_config="setr_vit-large_naive_8x1_768x768_80k_cityscapes",
            dataset="cityscapes",
            decoder_type="naive",
            crop_size=768,
            test_scale=(2049, 1025),
            batch_size=8,
            gpus=8,
            iterations=80_000,
            learning_rate=0.01,
            miou_reported=78.10,
            miou_ms_flip_reported=80.22,
            memory_gb=24.06,
            fps=0.39,
            auxiliary_num_convs=1,
        ),
        CheckpointPreset(
            name="setr-pup-vit-large-cityscapes-768",
            file_name="setr_pup_vit-large_8x1_768x768_80k_cityscapes_20211122_155115-f6f37b8f.pth",
            mmseg_config="setr_vit-l_pup_8xb1-80k_cityscapes-768x768",
            mmseg_v0_config="setr_vit-large_pup_8x1_768x768_80k_cityscapes",
            dataset="cityscapes",
            decoder_type="pup",
            crop_size=768,
            test_scale=(2049, 1025),
            batch_size=8,
            gpus=8,
            iterations=80_000,
            learning_rate=0.01,
            miou_reported=79.21,
            miou_ms_flip_reported=81.02,
            memory_gb=27.96,
            fps=0.37,
            auxiliary_num_convs=2,
        ),
        CheckpointPreset(
            name="setr-mla-vit-large-cityscapes-768",
            file_name="setr_mla_vit-large_8x1_768x768_80k_cityscapes_20211119_101003-7f8dccbe.pth",
            mmseg_config="setr_vit-l_mla_8xb1-80k_cityscapes-768x768",
            mmseg_v0_config="setr_vit-large_mla_8x1_768x768_80k_cityscapes",
            dataset="cityscapes",
            decoder_type="mla",
            crop_size=768,
            test_scale=(2049, 1025),
            batch_size=8,
            gpus=8,
            iterations=80_000,
            learning_rate=0.002,
            miou_reported=77.00,
            miou_ms_flip_reported=79.59,
            memory_gb=24.10,
            fps=0.41,
            auxiliary_num_convs=0,
        ),
    )
}


# Fine-tuning recipes of the encoder families `setr train --backbone` takes (`--backbone_recipe auto`): training-option
# values (the names of `RecipeArguments` / `TrainingArguments`) that replace the preset's SETR recipe (SGD, heads at
# 10x, poly 0.9 to 1e-4). Every value is a default that an explicit flag overrides. Each recipe names its source; a
# value that could not be checked against its source is listed in `unconfirmed`.
_ADAMW_LAYER_DECAY = {"optim": "adamw_torch", "lr_scheduler_type": "poly", "poly_power": 1.0, "poly_min_lr": 0.0}


# The pixel normalisation each encoder family was pretrained with (RGB, 0-1 scale), for a checkpoint that ships no
# `preprocessor_config.json`: the released DINOv2 / DINOv3 checkpoints use ImageNet's statistics (DINOv2's processor
# class, `BitImageProcessor`, defaults to CLIP's), BEiT's use 0.5 / 0.5. timm models carry theirs in `pretrained_cfg`.
IMAGENET_NORMALISATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
BACKBONE_NORMALISATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "dinov2": IMAGENET_NORMALISATION,
    "dinov2_with_registers": IMAGENET_NORMALISATION,
    "dinov3_vit": IMAGENET_NORMALISATION,
    "beit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


@dataclass(frozen=True)
class BackboneRecipe:
    name: str  # "beit-large": the family and, where the recipe depends on it, the size
    description: str  # for the model card and the log
    source: str  # where the numbers come from
    arguments: dict[str, Any]
    unconfirmed: tuple[str, ...] = ()  # the `arguments` not checked against `source`

    @property
    def summary(self) -> str:
        """One line for a model card: the recipe, its source, what is unconfirmed."""
        caveat = f" (not confirmed from the source: {', '.join(self.unconfirmed)})" if self.unconfirmed else ""
        return f"{self.description}, after {self.source}{caveat}"


# DINOv2's frozen-encoder segmentation protocol (paper Sec. 7.3 / Table 10: linear head on the frozen encoder's patch
# tokens, "+ms" on the last four layers with multi-scale test-time augmentation), trained as the release's mmseg
# configs (`dinov2_vit*14_ade20k_{linear,ms}_config.py`) do: AdamW lr 1e-3, weight decay 1e-4 (corroborated by
# third-party copies of those configs), 40k iterations, linear warm-up of 1500 then poly power 1 to 0 (as recalled
# from the release; not confirmed here). The heads have no 10x multiplier there.
_DINOV2_FROZEN = BackboneRecipe(
    name="dinov2-frozen",
    description="DINOv2's frozen-encoder protocol: encoder frozen, AdamW (lr 1e-3, weight decay 1e-4), 1500 warm-up "
    "steps, poly (power 1) to 0, 40k steps",
    source="the DINOv2 paper's linear / multi-scale segmentation evaluation (Oquab et al. 2023, Table 10)",
    arguments={
        **_ADAMW_LAYER_DECAY,
        "freeze_encoder": True,
        "learning_rate": 1e-3,
        "weight_decay": 1e-4,
        "head_lr_multiplier": 1.0,
        "warmup_steps": 1500,
        "max_steps": 40_000,
    },
    unconfirmed=("warmup_steps", "max_steps", "poly_power"),
)


def _layer_decay_recipe(
    name: str, source: str, lr: float, decay: float, warmup: int, unconfirmed: tuple[str, ...] = ()
) -> BackboneRecipe:
    """BEiT / MAE's end-to-end fine-tuning: AdamW (weight decay 0.05), layer-wise lr decay, linear warm-up, poly
    (power 1) to 0, 160k steps, heads at the base lr (mmseg's `LayerDecayOptimizerConstructor`, no head multiplier)."""
    return BackboneRecipe(
        name=name,
        description=f"AdamW (lr {lr:g}, weight decay 0.05), layer-wise lr decay {decay}, {warmup} warm-up steps, "
        "poly (power 1) to 0, 160k steps",
        source=source,
        arguments={
            **_ADAMW_LAYER_DECAY,
            "learning_rate": lr,
            "weight_decay": 0.05,
            "layer_decay": decay,
            "head_lr_multiplier": 1.0,
            "warmup_steps": warmup,
            "max_steps": 160_000,
        },
        unconfirmed=unconfirmed,
    )


# mmsegmentation 1.2.2's configs, read from the package: `beit/beit-base_upernet_8xb2-160k_ade20k-640x640.py`
# (lr 3e-5, decay 0.9, warm-up 1500), `beit/beit-large_upernet_8xb1-amp-160k_ade20k-640x640.py` (2e-5, 0.95, 3000),
# `mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py` (1e-4, 0.65, 1500); all AdamW, weight decay 0.05, poly
# power 1 to 0 over 160k iterations.
_BEIT_BASE = _layer_decay_recipe("beit-base", "mmsegmentation's BEiT-B UperNet ADE20K config", 3e-5, 0.9, 1500)
_BEIT_LARGE = _layer_decay_recipe("beit-large", "mmsegmentation's BEiT-L UperNet ADE20K config", 2e-5, 0.95, 3000)
_MAE = _layer_decay_recipe(
    "mae", "mmsegmentation's MAE ViT-B UperNet ADE20K config (the MAE paper, Table 5)", 1e-4, 0.65, 1500
)
# DeiT III and EVA-02 fine-tune their segmentation models with AdamW and layer-wise decay as BEiT does (UperNet,
# ADE20K); their own numbers were not found here, so BEiT-B's stand in and are marked unconfirmed.
_UNCONFIRMED_LAYER_DECAY = ("learning_rate", "layer_decay", "warmup_steps")
_DEIT3 = _layer_decay_recipe(
    "deit3", "BEiT-B's mmsegmentation config (DeiT III's own values not found)", 3e-5, 0.9, 1500,
    _UNCONFIRMED_LAYER_DECAY,
)  # fmt: skip
_EVA02 = _layer_decay_recipe(
    "eva02", "BEiT-B's mmsegmentation config (EVA-02's own values not found)", 3e-5, 0.9, 1500,
    _UNCONFIRMED_LAYER_DECAY,
)  # fmt: skip
# A supervised ImageNet-21k ViT (AugReg) is what SETR's own encoder is: SETR's recipe, the preset's, as it is.
_SETR_RECIPE = BackboneRecipe(
    name="setr",
    description="SETR's own recipe (the preset's: SGD, heads at 10x, poly 0.9)",
    source="the SETR paper and mmsegmentation's SETR configs (a supervised ViT, as SETR's encoder)",
    arguments={},
)


def backbone_recipe(model_type: str, num_hidden_layers: int, timm_name: str | None = None) -> BackboneRecipe:
    """The recipe of an encoder family: `model_type` of its backbone config (`timm_backbone` for timm, whose model
    name `timm_name` says the family), its depth choosing between sizes where the source does."""
    if model_type in ("dinov2", "dinov2_with_registers", "dinov3_vit"):
        return _DINOV2_FROZEN  # DINOv3's own protocol is not reproduced: DINOv2's frozen one stands in
    if model_type == "beit":
        return _BEIT_LARGE if num_hidden_layers >= 24 else _BEIT_BASE
    if model_type == "timm_backbone" and timm_name:
        name = timm_name.removeprefix("timm/")
        if name.startswith("deit3"):
            return _DEIT3
        if name.startswith("eva02"):
            return _EVA02
        if name.split(".")[-1].startswith("mae"):
            return _MAE
    return _SETR_RECIPE


BACKBONE_RECIPES: tuple[BackboneRecipe, ...] = (
    _DINOV2_FROZEN, _BEIT_BASE, _BEIT_LARGE, _MAE, _DEIT3, _EVA02, _SETR_RECIPE,
)  # fmt: skip
