"""Shared pieces of the benchmarks: the mmseg worker process (and its torch check), timing, the floor (a GEMM rate
measured in the same run, and the model's FLOPs), the machine line and the result tables.

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
# /proc/cpuinfo flags of the vector and matrix extensions the GEMM kernels use, as the header names them.
CPU_EXTENSIONS = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX512_VNNI",
    "avx512_bf16": "AVX512_BF16",
    "avx512_fp16": "AVX512_FP16",
    "amx_tile": "AMX",
    "amx_bf16": "AMX-BF16",
    "amx_fp16": "AMX-FP16",
    "amx_int8": "AMX-INT8",
}
# The torch build that mmseg ran on in this run (set by MmsegWorker), for the header of each table.
MMSEG_TORCH: dict[str, str] = {}


def command_line() -> str:
    """The command that produced the table, as it can be pasted back into a shell from the repository root."""
    executable = os.path.relpath(sys.executable, ROOT) if Path(sys.executable).is_relative_to(ROOT) else sys.executable
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    return shlex.join([executable, script, *sys.argv[1:]])


def cpu_model_and_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """The CPU's model name and feature flags, from the first processor in /proc/cpuinfo."""
    cpu, flags = None, set()
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu is None:
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return cpu or platform.processor() or "unknown CPU", flags


def cpu_extensions(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    """The vector and matrix extensions of this CPU (from /proc/cpuinfo) and the kernels torch picked."""
    import torch

    _, flags = cpu_model_and_flags(cpuinfo)
    found = [name for flag, name in CPU_EXTENSIONS.items() if flag in flags]
    if not flags:
        found = ["unknown (no /proc/cpuinfo flags)"]
    elif not any(flag.startswith("amx") for flag in flags):
        found.append("no AMX")
    return f"{', '.join(found)}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}"


def torch_build(module: Any = None) -> str:
    """`torch.__version__` and the commit it was built from (the same version string can be another build)."""
    if module is None:
        import torch as module
    return f"{module.__version__} (git {module.version.git_version[:10]})"


def machine_line(threads: int | None = None) -> str:
    """CPU model and extensions, cores, load, the torch build of both sides and thread count, for each header."""
    import torch

    cpu, _ = cpu_model_and_flags()
    load = ""
    if START_LOAD is not None:
        start, end = (" / ".join(f"{value:.2f}" for value in values) for values in (START_LOAD, os.getloadavg()))
        load = f" load average (1/5/15 min) {start} at start, {end} at the end;"
    threads = threads or torch.get_num_threads()
    ours = torch_build()
    if not MMSEG_TORCH:
        sides = f"torch {ours}"
    elif MMSEG_TORCH["build"] == ours:
        sides = f"torch {ours} on both sides"
    else:
        sides = f"**torch differs**: ours {ours}, mmseg {MMSEG_TORCH['build']} (--allow-torch-mismatch)"
    return f"{cpu} ({cpu_extensions()}), {os.cpu_count()} logical CPUs;{load} {sides}, {threads} threads"


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

    def __init__(
        self, python: str | os.PathLike | None = None, threads: int | None = None, allow_torch_mismatch: bool = False
    ):
        python = Path(python or MMSEG_PYTHON)
        if not python.exists():
            raise SystemExit(
                f"error: {python} not found: the mmseg reference environment is needed (see DEVELOPERS.md, or pass "
                "--mmseg-python)"
            )
        command = [str(python), str(WORKER)]
        if threads:
            command += ["--threads", str(threads)]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, cwd=ROOT
        )
        hello = self.request(op="hello")
        self.version, self.torch_build = hello["mmseg_version"], hello["torch_build"]
        check_same_torch(self, python, allow_torch_mismatch)

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


def add_torch_check_argument(parser: Any) -> None:
    parser.add_argument(
        "--allow-torch-mismatch",
        action="store_true",
        help="run even when mmseg's interpreter has another torch build than ours (the header then says so)",
    )


def check_same_torch(worker: MmsegWorker, python: Path, allow_mismatch: bool) -> None:
    """Both sides must run the same torch build, or part of every ratio is the torch difference: refuse, or with
    `allow_mismatch` warn loudly; the table headers name the build(s)."""
    ours = torch_build()
    MMSEG_TORCH["build"] = worker.torch_build
    if worker.torch_build == ours:
        print(f"torch {ours} on both sides (mmseg in {python})", flush=True)
        return
    message = (
        f"{python} runs torch {worker.torch_build}, this interpreter {ours}: the ratios would include the "
        "difference between the torch builds"
    )
    if not allow_mismatch:
        worker.close()
        raise SystemExit(
            f"error: {message}. Install the same torch in the mmseg environment (benchmarks/README.md), or pass "
            "--allow-torch-mismatch"
        )
    print(f"WARNING: {message} (--allow-torch-mismatch given; the headers say so)", file=sys.stderr, flush=True)


DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # the benchmarks' dtype names -> torch's
GEMM_SIZE = 4096  # n of the n x n x n matmul that measures the floor: 137 GFLOP, ~1 s in fp32 on 2 cores


def add_floor_argument(parser: Any) -> None:
    parser.add_argument(
        "--gemm-size", type=int, default=GEMM_SIZE, help=f"n of the n^3 matmul that measures the floor ({GEMM_SIZE})"
    )


def onednn_mm(a: Any, b: Any) -> Any:
    """a @ b through oneDNN's matmul (the op the model's CPU inference path calls, `fast_inference_setr.dense`)."""
    import torch

    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


def gemm_libraries() -> dict[str, Callable[[Any, Any], Any]]:
    """The dense matmuls torch offers on this build: `torch.mm` (MKL / OpenBLAS) and, where built, oneDNN's."""
    import torch

    from transformers_setr.models.setr.fast_inference_setr import onednn_matmul_usable

    libraries: dict[str, Callable[[Any, Any], Any]] = {"torch.mm": torch.mm}
    if onednn_matmul_usable(torch.device("cpu"), torch.float32):  # the model's own test for its CPU matmul
        libraries["oneDNN"] = lambda a, b: onednn_mm(a, b.t())  # b.t(): the (out, in) weight layout of a linear
    return libraries


class GemmFloor:
    """The floor of a timing: the model's FLOPs at the machine's dense matmul rate, measured in this run.

    The rate is that of one square `size`^3 matmul (fresh random operands) per dtype, at the thread count set in this
    process (`set_threads`, the contestants' count), through each matmul library torch offers (`gemm_libraries`):
    the floor takes the fastest, since the model may use any of them (on an AVX-512 EPYC oneDNN's float32 matmul ran
    ~1.2x MKL's). Call `measure` between the contestants' runs, like one more contestant, so it sees the machine they
    saw; the rate is the best over all measurements (times are minima over repeats, as for the contestants). bf16 is
    the dtype autocast gives the matmuls.
    """

    def __init__(self, size: int = GEMM_SIZE, dtypes: Sequence[str] = ("fp32", "bf16")):
        if size < 1:
            raise SystemExit(f"error: --gemm-size must be positive, got {size}")
        self.size, self.libraries = size, gemm_libraries()
        self.times = {dtype: {library: [] for library in self.libraries} for dtype in dtypes}

    def measure(self, dtypes: Sequence[str] | None = None) -> None:
        """Time one matmul per dtype and library (all of this floor's dtypes by default)."""
        import torch

        for name in dtypes or self.times:
            for library, matmul in self.libraries.items():
                times = self.times[name][library]
                generator = torch.Generator().manual_seed(len(times))
                a, b = (
                    torch.randn(self.size, self.size, generator=generator).to(getattr(torch, DTYPES[name]))
                    for _ in "ab"
                )
                with torch.inference_mode():
                    if not times:
                        matmul(a, b)  # the first call of a dtype: one-time kernel setup, not timed
                    start = time.perf_counter()
                    matmul(a, b)
                    times.append(time.perf_counter() - start)
                del a, b

    def library_rate(self, dtype: str, library: str) -> float:
        return 2 * self.size**3 / min(self.times[dtype][library]) / 1e9

    def rate(self, dtype: str) -> float:
        """GFLOP/s of the best measurement so far over the libraries (measuring once if there is none)."""
        if not all(self.times[dtype].values()):
            self.measure([dtype])
        return max(self.library_rate(dtype, library) for library in self.libraries)

    def seconds(self, gflop: float, dtype: str) -> float:
        return gflop / self.rate(dtype)

    def multiple(self, seconds: float, gflop: float, dtype: str) -> str:
        """A timing as "× floor" (time / (GFLOP / rate)), formatted for a table."""
        return f"{seconds / self.seconds(gflop, dtype):.2f}"

    def note(self, threads: int) -> str:
        for dtype in self.times:
            self.rate(dtype)  # measured at least once
        rates = "; ".join(
            f"{dtype} {self.rate(dtype):.0f} GFLOP/s ("
            + ", ".join(
                f"{library} {self.library_rate(dtype, library):.0f}, best of {len(times)}, noise {spread(times)}"
                for library, times in by_library.items()
            )
            + ")"
            for dtype, by_library in self.times.items()
        )
        return (
            f"Floor: the model's GFLOP / the best matmul rate measured in this run, {self.size}^3 on {threads} "
            f"threads through {' and '.join(self.libraries)}: {rates}. `× floor` = time / floor, against the fp32 "
            "rate for fp32 and the bf16 rate for bf16 autocast. GFLOP are counted by "
            "torch.utils.flop_counter.FlopCounterMode on our model (meta device): matmuls, convolutions and "
            "attention's two matmuls, 2 per multiply-add; not the elementwise ops, norms, softmax or resizes."
        )


# `--smoke` runs of the scripts: a reduced encoder (64 wide, 4 layers) with the real heads at small width.
SMOKE_ENCODER = dict(
    hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=256, out_indices=[0, 1, 2, 3],
    mla_channels=8, mla_neck_channels=16, auxiliary_channels=16,
)  # fmt: skip


# What FlopCounterMode counts, by the profile's categories (`profile_inference.py`): on the meta device attention
# runs as its two batched matmuls (bmm), the projections and the MLP as addmm (mm in backward).
FLOP_KINDS = ("GEMMs", "attention (SDPA)", "patch embedding conv", "decoder convolutions")


def gflop_by_kind(counter: Any) -> dict[str, float]:
    """A finished FlopCounterMode's counts in GFLOP by FLOP_KINDS (convolutions split by the module that ran them)."""
    kinds = dict.fromkeys(FLOP_KINDS, 0.0)
    patch_embedding = 0
    for module, counts in counter.get_flop_counts().items():
        if module.endswith(".embeddings"):
            patch_embedding += sum(value for op, value in counts.items() if "convolution" in str(op))
    for op, value in counter.get_flop_counts()["Global"].items():
        name = str(op)
        if "convolution" in name:
            kinds["decoder convolutions"] += value / 1e9
        elif "bmm" in name or "attention" in name:
            kinds["attention (SDPA)"] += value / 1e9
        else:
            kinds["GEMMs"] += value / 1e9
    kinds["patch embedding conv"] = patch_embedding / 1e9
    kinds["decoder convolutions"] -= patch_embedding / 1e9  # every other convolution is the decoder's (heads, neck)
    return kinds


def inference_gflop_by_kind(config: Any, height: int, width: int, mode: str) -> dict[str, float]:
    """FLOPs of one image (all its windows) on our fp32 model, counted on the meta device (no compute)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from transformers_setr.models.setr.modeling_setr import SetrForSemanticSegmentation, slide_windows

    with torch.device("meta"):
        model = SetrForSemanticSegmentation(config).eval()
        crop, stride = config.slide_window
        windows = len(slide_windows(height, width, crop, stride)) if mode == "slide" else 1
        window = (min(crop[0], height), min(crop[1], width)) if mode == "slide" else (height, width)
        pixel_values = torch.zeros(1, 3, *window)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(pixel_values, inference_mode="whole")
    return {kind: value * windows for kind, value in gflop_by_kind(counter).items()}


def count_inference_gflop(config: Any, height: int, width: int, mode: str) -> float:
    return sum(inference_gflop_by_kind(config, height, width, mode).values())


def training_gflop_by_kind(config: Any, batch: int, height: int, width: int) -> dict[str, float]:
    """FLOPs of one training step's forward (decode and auxiliary losses) and backward, on the meta device. The
    useful work: recomputation under activation checkpointing is not counted; the optimizer's elementwise update
    neither."""
    from unittest import mock

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from transformers_setr.models.setr.modeling_setr import SetrForSemanticSegmentation

    with torch.device("meta"):
        model = SetrForSemanticSegmentation(config).train()
        pixel_values = torch.zeros(batch, 3, height, width)
        labels = torch.zeros(batch, height, width, dtype=torch.long)
    # The label check reads values, which meta tensors lack; the FLOPs do not depend on it.
    modeling = sys.modules[type(model).__module__]
    with mock.patch.object(modeling, "check_labels", lambda *args: None), FlopCounterMode(display=False) as counter:
        model(pixel_values, labels=labels).loss.backward()
    return gflop_by_kind(counter)


def count_training_gflop(config: Any, batch: int, height: int, width: int) -> float:
    return sum(training_gflop_by_kind(config, batch, height, width).values())


def scratch_dir() -> tempfile.TemporaryDirectory:
    """Where the worker's checkpoints, inputs and outputs go (never into the repository)."""
    return tempfile.TemporaryDirectory(prefix="setr-bench-")
