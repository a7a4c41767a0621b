"""Shared pieces of the benchmarks: the mmseg worker process, timing, the machine line and the result tables.

Not a package module: the scripts next to this file import it by path (`python benchmarks/bench_*.py`).
"""

import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MMSEG_PYTHON = ROOT / ".venv-mmseg" / "bin" / "python"
WORKER = Path(__file__).with_name("mmseg_worker.py")
START_LOAD = os.getloadavg() if hasattr(os, "getloadavg") else None
REPLY_PREFIX = "@@reply "  # the worker's answers; everything else on its stdout is mmseg chatter


def command_line() -> str:
    """The command that produced the table, as it can be pasted back into a shell from the repository root."""
    executable = os.path.relpath(sys.executable, ROOT) if Path(sys.executable).is_relative_to(ROOT) else sys.executable
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    return shlex.join([executable, script, *sys.argv[1:]])


def machine_line(threads: int | None = None) -> str:
    """CPU model, cores, torch version and thread count, for the header of each table."""
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ""
    if START_LOAD is not None:
        start, end = (" / ".join(f"{value:.2f}" for value in values) for values in (START_LOAD, os.getloadavg()))
        load = f" load average (1/5/15 min) {start} at start, {end} at the end;"
    threads = threads or torch.get_num_threads()
    return f"{cpu}, {os.cpu_count()} logical CPUs;{load} torch {torch.__version__}, {threads} threads"


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed_sgd_steps(model: Any, compute_loss: Callable[[], Any], steps: int) -> dict:
    """`steps` SGD steps (lr 0.01, momentum 0.9) on `compute_loss()`, used by both sides of the training benchmark:
    per-step times, the process's peak RSS, the RSS just before the first step and the first loss."""
    import resource

    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    baseline = current_rss_bytes()
    times, first_loss = [], None
    for _ in range(steps):
        start = time.perf_counter()
        loss = compute_loss()
        first_loss = loss.item() if first_loss is None else first_loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"times": times, "peak_rss": peak, "baseline_rss": baseline, "first_loss": first_loss}


def set_threads(threads: int | None) -> int:
    import torch

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def time_call(function: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def spread(times: Sequence[float]) -> str:
    """max/min of repeated timings: how noisy the machine was for this row."""
    return f"{max(times) / min(times):.2f}" if times else "-"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-markdown table (also readable as plain text)."""
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |"
    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    body = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join([line, rule, *body])


def print_report(title: str, table: str, notes: Sequence[str] = (), threads: int | None = None) -> None:
    print()
    print(f"## {title}")
    print()
    print(f"Command: `{command_line()}`")
    print(f"Machine: {machine_line(threads)}; {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print()
    print(table)
    for note in notes:
        print(f"\n{note}")
    sys.stdout.flush()


class MmsegWorker:
    """mmsegmentation 1.2.2 in its own interpreter (`.venv-mmseg`), driven one JSON request at a time.

    Only one side computes at any moment (the other waits on the pipe), so timings taken alternately in the two
    processes see the same machine.
    """

    def __init__(self, python: str | os.PathLike | None = None, threads: int | None = None):
        python = Path(python or MMSEG_PYTHON)
        if not python.exists():
            raise FileNotFoundError(
                f"{python} not found: the mmseg reference environment is needed (see DEVELOPERS.md, or pass "
                "--mmseg-python)"
            )
        command = [str(python), str(WORKER)]
        if threads:
            command += ["--threads", str(threads)]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, cwd=ROOT
        )
        self.version = self.request(op="hello")["mmseg_version"]

    def request(self, **message: Any) -> dict:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith(REPLY_PREFIX):
                reply = json.loads(line[len(REPLY_PREFIX) :])
                if "error" in reply:
                    raise RuntimeError(f"mmseg worker failed on {message.get('op')}: {reply['error']}")
                return reply
        raise RuntimeError(f"mmseg worker exited (code {self.process.wait()}) during {message.get('op')}")

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(RuntimeError):
                self.request(op="quit")
            self.process.wait(timeout=60)

    def __enter__(self) -> "MmsegWorker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def scratch_dir() -> tempfile.TemporaryDirectory:
    """Where the worker's checkpoints, inputs and outputs go (never into the repository)."""
    return tempfile.TemporaryDirectory(prefix="setr-bench-")
