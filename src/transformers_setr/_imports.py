"""Import mechanics of the package, in one place: lazy exports of the rooms and the error that names a missing
extra."""

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType

PACKAGE = __name__.rpartition(".")[0]
DISTRIBUTION = "transformers-setr"

# What each extra brings (pyproject.toml's optional dependencies), for the error message.
EXTRAS = {
    "datasets": "train",
    "pyarrow": "train",
    "accelerate": "train",
    "evaluate": "train",
    "peft": "train",
    "torchvision": "torchvision",
    "gradio": "demo",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "ray": "ray",
}


class MissingExtraError(ImportError):
    """A feature needs an optional dependency that is not installed; the message names the `pip install` command."""

    def __init__(self, module: str, extra: str, feature: str | None = None):
        self.extra = extra
        what = feature or f"this part of {PACKAGE}"
        super().__init__(
            f"{what} needs `{module}`, which is not installed: pip install '{DISTRIBUTION}[{extra}]'", name=module
        )


def require(module: str, feature: str | None = None) -> ModuleType:
    """Import an optional dependency, or raise `MissingExtraError` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.partition(".")[0]
        if getattr(error, "name", None) not in (module, top) and not str(error).startswith(f"No module named '{top}"):
            raise  # installed but broken: the original error says more
        raise MissingExtraError(top, EXTRAS.get(top, "all"), feature) from error


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """`__getattr__`, `__dir__` and `__all__` for a package whose names live in its submodules, imported on first use.

    `exports` maps a submodule (relative to `package`) to the public names it provides; a room never re-exports a
    private name.
    """
    where = {name: submodule for submodule, names in exports.items() for name in names}
    private = sorted(name for name in where if name.startswith("_"))
    if private:
        raise ValueError(f"{package} would re-export private names {private}")

    def __getattr__(name: str) -> object:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__, sorted(where)
