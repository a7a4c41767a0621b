"""Files written so that nothing is ever half-written: a temporary name in the same folder, then a rename."""

import json
import os
from pathlib import Path
from typing import Any


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary name unique to this process (never two writers on one temporary file), then
    rename it to `path`; a failed write leaves no temporary file and the old `path` untouched. The folder is created
    when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """`write_bytes_atomically` for UTF-8 text (newlines written as given)."""
    write_bytes_atomically(path, text.encode("utf-8"))


def save_json_atomically(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    write_text_atomically(path, json.dumps(payload, indent=2, sort_keys=True, default=float) + "\n")
