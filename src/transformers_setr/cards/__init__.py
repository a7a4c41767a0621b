"""Model cards: of the seven released checkpoints (`build_model_card`), of a trained model
(`build_trained_model_card`) and of any other converted checkpoint (`build_converted_model_card`), filled from the
Markdown templates in `templates/`; `setr cards` (`command`) writes or checks the committed ones.
"""

from .._imports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {"model_card": ("build_model_card", "build_trained_model_card", "build_converted_model_card", "hub_repo_id")},
)
