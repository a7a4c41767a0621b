"""Import mechanics of the package, in one place: lazy exports of the rooms, the module paths from before the
package had rooms, and the error that names a missing extra."""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType

PACKAGE = __name__.rpartition(".")[0]
DISTRIBUTION = "transformers-setr"

# The flat modules of 0.1 and where their code lives now. `import transformers_setr.modeling_setr` (and every other
# old path) gives the module object itself, so its names, `isinstance` checks and monkeypatching all still work.
# The old `inference`, `conversion`, `data`, `training` and `evaluation` modules are the rooms of the same names,
# which re-export what those modules had.
MOVED_MODULES = {
    "configuration_setr": "models.setr.configuration_setr",
    "modeling_setr": "models.setr.modeling_setr",
    "image_processing_pil_setr": "models.setr.image_processing_pil_setr",
    "image_processing_setr": "models.setr.image_processing_setr",
    "segmentation_pipeline": "inference.pipeline",
    "visualize": "inference.visualize",
    "convert_mmseg": "conversion.from_mmseg",
    "convert_timm": "conversion.from_timm",
    "presets": "conversion.presets",
    "mmseg_reference": "conversion.mmseg_reference",
    "label_tables": "data.label_tables",
    "synthetic": "data.synthetic",
    "augmentation": "training.augmentation",
    "training_script": "training.commands",
    "metrics": "evaluation.metrics",
    "model_card": "cards.model_card",
}

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

    `exports` maps a submodule (relative to `package`) to the names it provides.
    """
    where = {name: submodule for submodule, names in exports.items() for name in names}

    def __getattr__(name: str) -> object:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__, sorted(name for name in where if not name.startswith("_"))


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves the module paths of `MOVED_MODULES` to the modules that now hold their code."""

    def __init__(self) -> None:
        self._real_specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != PACKAGE or name not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(f"{PACKAGE}.{MOVED_MODULES[spec.name.rpartition('.')[2]]}")
        self._real_specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system has just set the alias's spec on the real module: give it back its own.
        module.__spec__ = self._real_specs.pop(module.__spec__.name, module.__spec__)


def install_moved_module_finder() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
