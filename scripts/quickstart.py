#!/usr/bin/env python3
"""Set up the project's virtual environment (`.venv`) if needed, then run the main job or the test suite.

    python3 scripts/quickstart.py main      # the main job (extra arguments go to it)
    python3 scripts/quickstart.py test      # the test suite (extra arguments go to pytest)

Needs only `python3` (3.11+) with its `venv` module. The environment is rebuilt when `pyproject.toml` or
`constraints.txt` change; a stamp file records what it was built from.
"""

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".quickstart-stamp"
PYTHON = VENV / "bin" / "python"
COMMANDS = {
    "main": [str(PYTHON), str(ROOT / "scripts" / "main_job.py")],
    "test": [str(PYTHON), "-m", "pytest"],
}


def environment_fingerprint() -> str:
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "constraints.txt"):
        digest.update((ROOT / name).read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def ensure_environment() -> None:
    fingerprint = environment_fingerprint()
    if PYTHON.exists() and STAMP.exists() and STAMP.read_text() == fingerprint:
        return
    if not PYTHON.exists():
        print(f"[quickstart] creating {VENV.relative_to(ROOT)}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("[quickstart] installing transformers-setr and its dependencies (first run takes a few minutes)", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "-c", str(ROOT / "constraints.txt"), "-e", f"{ROOT}[dev]"], check=True, cwd=ROOT)
    STAMP.write_text(fingerprint)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        return 2
    if sys.version_info < (3, 11):  # noqa: UP036  (this script must explain itself on an old python3)
        print(f"transformers-setr needs Python 3.11 or newer; this is {sys.version.split()[0]}", file=sys.stderr)
        return 2
    ensure_environment()
    command = COMMANDS[sys.argv[1]] + sys.argv[2:]
    return subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode


if __name__ == "__main__":
    sys.exit(main())
