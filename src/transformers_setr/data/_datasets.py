"""`datasets` for the modules of `data` that need it: the real module for the type checker; at run time, the
missing-extra error (`pip install transformers-setr[train]`) when it is not installed."""

from typing import TYPE_CHECKING

from .._imports import require

if TYPE_CHECKING:
    import datasets
else:
    datasets = require("datasets", "loading datasets (transformers_setr.data)")

__all__ = ["datasets"]
