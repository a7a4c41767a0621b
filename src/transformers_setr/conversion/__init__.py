"""Conversion of the released checkpoints: the mmsegmentation SETR checkpoints (`from_mmseg`) and the timm ViT
pretrain (`from_timm`), the one key-rule engine and checkpoint loading (`checkpoints`), the reference-side helpers
run with mmsegmentation (`mmseg_reference`), and the commands `setr convert` (`convert_command`) and
`setr convert-timm` (`convert_timm_command`). The released checkpoints themselves are `transformers_setr.presets`.
"""

from .._imports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "key_rules": ("KeyRule", "MMSEG_KEY_RULES", "TIMM_VIT_KEY_RULES", "map_key", "rename_state_dict"),
        "checkpoints": (
            "CheckpointMismatchError",
            "map_mmseg_key",
            "convert_mmseg_state_dict",
            "fit_problems",
            "load_mmseg_state_dict",
            "load_checkpoint_file",
            "CACHE_DIR_ENV",
            "default_cache_dir",
            "download_cached",
        ),
    },
)
