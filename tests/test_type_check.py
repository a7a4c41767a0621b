"""The type checker on the package: mypy, with the configuration in pyproject.toml (`[tool.mypy]`), finds no error in
`src/`. The cache (`.mypy_cache/`, git-ignored) makes a repeated run take seconds; a cold run about half a minute."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "src"


def run_mypy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_mypy_finds_no_error_in_src():
    result = run_mypy()  # `files = ["src"]` in the configuration
    assert result.returncode == 0, f"mypy found errors in src/:\n{result.stdout}{result.stderr}"
    checked = re.search(r"Success: no issues found in (\d+) source files", result.stdout)
    assert checked, result.stdout
    # every module of the package was checked, not a subset the configuration happened to name
    assert int(checked.group(1)) == len(list(SOURCES.rglob("*.py")))


def test_configuration_checks_unannotated_functions(tmp_path):
    """The project's settings apply: an error inside a function without annotations is reported
    (`check_untyped_defs`), which mypy's defaults would let pass."""
    careless = tmp_path / "careless.py"
    careless.write_text('def total(values):\n    count = 0\n    return count + "items"\n')
    result = run_mypy("--cache-dir", str(tmp_path / "cache"), str(careless))
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'careless.py:3: error: Unsupported operand types for + ("int" and "str")' in result.stdout
