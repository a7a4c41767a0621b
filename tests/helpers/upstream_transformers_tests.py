"""transformers' shared contract tests (`ModelTesterMixin`, `ConfigTester`, `ImageProcessingTestMixin`), loaded from
the source distribution of the installed transformers version.

The upstream `tests/` files are not in the transformers wheel and are never committed here: `load()` downloads the
sdist once with pip (`pip download --no-deps --no-binary :all: transformers==<version>`), extracts its `tests/*.py`
into `~/.cache/transformers_setr/upstream-tests/transformers-<version>/` (`TRANSFORMERS_SETR_CACHE` moves the root)
and imports them as the package `transformers_upstream_tests`, a name that cannot clash with this repository's own
`tests/` modules (pytest imports those as top-level modules: `tests/` has no `__init__.py`).

Extraction goes to a temporary folder next to the target, renamed into place when complete: a second process racing
for the same version either wins the rename or finds the finished folder and discards its own copy.

The sdist lacks `tests/__init__.py` (written empty) and four helpers that the three modules import (the exporters and
generation mixins, `config_common_kwargs`, `fetch_hub_objects_for_ci`); `_install_stand_ins` provides minimal
versions of them, and of the `parameterized` package when it is not installed.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import transformers

PACKAGE = "transformers_upstream_tests"
MODULES = ("test_configuration_common", "test_modeling_common", "test_image_processing_common")

# Stands in for the COCO photo (two cats, 640x480) that `test_backends_equivalence` downloads from the Hub.
COCO_CATS_IMAGE_URL_SUFFIX = "000000039769.jpg"


class UpstreamTestsUnavailable(RuntimeError):
    """The upstream test files cannot be had (no network to the package index, no sdist for this version)."""


def cache_root() -> Path:
    root = Path(os.environ.get("TRANSFORMERS_SETR_CACHE", Path.home() / ".cache" / "transformers_setr"))
    return root / "upstream-tests" / f"transformers-{transformers.__version__}"


def _complete(tests_dir: Path) -> bool:
    return all((tests_dir / f"{module}.py").is_file() for module in (*MODULES, "__init__"))


def _download_tests(target: Path) -> None:
    """Fetch the sdist with pip and extract its `tests/*.py` into `target` (atomically)."""
    version = transformers.__version__
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as work:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--disable-pip-version-check",
            "--quiet",
            f"transformers=={version}",
            "--dest",
            work,
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise UpstreamTestsUnavailable(f"pip download of transformers=={version} failed: {error}") from error
        archives = sorted(Path(work).glob(f"transformers-{version}.tar.gz"))
        if result.returncode != 0 or not archives:
            message = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise UpstreamTestsUnavailable(
                f"pip could not download the transformers=={version} sdist (exit {result.returncode}): "
                + " | ".join(message)
            )
        staging = Path(work) / "tests"
        staging.mkdir()
        prefix = f"transformers-{version}/tests/"
        with tarfile.open(archives[0]) as archive:
            for member in archive.getmembers():
                name = member.name
                # Only the top-level test modules: plain files, no sub-folders, no links.
                if member.isfile() and name.startswith(prefix) and "/" not in name[len(prefix) :]:
                    source = archive.extractfile(member)
                    (staging / name[len(prefix) :]).write_bytes(source.read())
        # The repository's (empty) tests/__init__.py, which the sdist omits: test_configuration_common.py execs it
        # through `direct_transformers_import(Path(__file__).parent)`.
        (staging / "__init__.py").write_text("")
        if not _complete(staging):
            raise UpstreamTestsUnavailable(f"the transformers=={version} sdist has no {', '.join(MODULES)}")
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # not a lost race: a real error
                raise
            shutil.rmtree(staging, ignore_errors=True)
            if not _complete(target):  # a broken cache is an error, not a reason to skip
                raise RuntimeError(
                    f"{target} is incomplete (not made by this loader?); delete it to download again"
                ) from None


def _module(name: str, doc: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name, doc)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def _stand_in_image(cache: Path) -> Path:
    """A deterministic 640x480 RGB photo-like image (smooth gradients, edges and noise), written once."""
    path = cache / "coco-stand-in-000000039769.png"
    if path.is_file():
        return path
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(39769)
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    image = np.stack(
        [
            128 + 100 * np.sin(xx / 37.0) * np.cos(yy / 53.0),
            128 + 90 * np.cos((xx + yy) / 71.0),
            64 + 0.25 * xx + 60 * (((xx // 80) + (yy // 60)) % 2),
        ],
        axis=-1,
    )
    image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    with tempfile.NamedTemporaryFile(dir=cache, suffix=".png", delete=False) as handle:
        Image.fromarray(image).save(handle, format="PNG")
    os.replace(handle.name, path)
    return path


class _ExpandedTests:
    """What `parameterized.expand(params)` returns for a test method: on class creation (`__set_name__`) it replaces
    itself with one method per parameter set, named as parameterized names them (`test_x_0`, `test_x_1_<first str
    argument>`, the index zero-padded to the widest one)."""

    def __init__(self, params, func):
        self.params = [p if isinstance(p, tuple) else (p,) for p in params]
        self.func = func

    def __set_name__(self, owner, name):
        delattr(owner, name)
        digits = len(str(len(self.params) - 1))
        for index, args in enumerate(self.params):
            suffix = f"_{index:0{digits}d}"
            if args and isinstance(args[0], str):
                suffix += "_" + re.sub("[^a-zA-Z0-9_]+", "_", args[0])

            def test(self_, _args=args, _func=self.func):
                return _func(self_, *_args)

            functools.update_wrapper(test, self.func)
            test.__name__ = test.__qualname__ = name + suffix
            setattr(owner, name + suffix, test)


class _Parameterized:
    """Stands in for `parameterized.parameterized` of the `parameterized` package (a test dependency of
    transformers, not of this project) when that is not installed: only `expand`, the one form the three modules
    use (always the outermost decorator of a test method)."""

    @staticmethod
    def expand(params):
        return lambda func: _ExpandedTests(list(params), func)


def _install_stand_ins(cache: Path) -> None:
    """Minimal versions of the helpers that the three upstream modules import but the sdist does not ship."""
    try:
        import parameterized  # noqa: F401
    except ImportError:
        _module("parameterized", _Parameterized.__doc__, parameterized=_Parameterized)
    _module(
        f"{PACKAGE}.exporters",
        "Stands in for transformers' tests/exporters package (not in the sdist).",
        __path__=[],
    )
    # `ModelTesterMixin` derives from `ExportTesterMixin` (the torch.export tests of tests/exporters/test_export.py,
    # not shipped): without it those tests are absent, not skipped.
    _module(
        f"{PACKAGE}.exporters.test_export",
        "Stands in for tests/exporters/test_export.py: an empty ExportTesterMixin.",
        ExportTesterMixin=type("ExportTesterMixin", (), {}),
    )
    _module(f"{PACKAGE}.generation", "Stands in for tests/generation (not in the sdist).", __path__=[])
    # Only used in `issubclass` checks (SETR cannot generate, so its tester must not derive from it).
    _module(
        f"{PACKAGE}.generation.test_utils",
        "Stands in for tests/generation/test_utils.py: an empty GenerationTesterMixin.",
        GenerationTesterMixin=type("GenerationTesterMixin", (), {}),
    )
    _module(f"{PACKAGE}.utils", "Stands in for tests/utils (not in the sdist).", __path__=[])
    # tests/utils/test_configuration_utils.py: `config_common_kwargs` gives every attribute of the base
    # `PreTrainedConfig` a non-default value (the values of upstream's transformers 5 file);
    # `ConfigTester.check_config_arguments_init` checks that a config keeps each one.
    _module(
        f"{PACKAGE}.utils.test_configuration_utils",
        "Stands in for tests/utils/test_configuration_utils.py: only `config_common_kwargs`.",
        config_common_kwargs={
            "return_dict": False,
            "output_hidden_states": True,
            "output_attentions": True,
            "dtype": "float16",
            "chunk_size_feed_forward": 5,
            "architectures": ["BertModel"],
            "id2label": {0: "label"},
            "label2id": {"label": "0"},
            "problem_type": "regression",
        },
    )

    # utils/fetch_hub_objects_for_ci.py maps Hub URLs to files pre-downloaded by transformers' CI. Offline, the one
    # image the image-processing mixin needs (the COCO cats photo) is replaced by a local deterministic image.
    def url_to_local_path(url: str, return_url_if_not_found: bool = True) -> str:
        if url.endswith(COCO_CATS_IMAGE_URL_SUFFIX):
            return str(_stand_in_image(cache))
        return url

    _module(
        "fetch_hub_objects_for_ci",
        "Stands in for transformers' utils/fetch_hub_objects_for_ci.py (not in the sdist).",
        url_to_local_path=url_to_local_path,
    )


def load() -> types.SimpleNamespace:
    """Import the upstream common test modules (downloading them on first use); raises `UpstreamTestsUnavailable`."""
    if PACKAGE in sys.modules and all(f"{PACKAGE}.{module}" in sys.modules for module in MODULES):
        return types.SimpleNamespace(**{m: sys.modules[f"{PACKAGE}.{m}"] for m in MODULES})
    cache = cache_root()
    tests_dir = cache / "tests"
    if not _complete(tests_dir):
        _download_tests(tests_dir)
    package = _module(PACKAGE, f"transformers {transformers.__version__} tests/ (sdist)", __path__=[str(tests_dir)])
    package.__file__ = str(tests_dir / "__init__.py")
    _install_stand_ins(cache)
    return types.SimpleNamespace(**{m: importlib.import_module(f"{PACKAGE}.{m}") for m in MODULES})
