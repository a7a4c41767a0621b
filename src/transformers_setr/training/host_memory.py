"""Host memory for training on the CPU: freed blocks kept for reuse instead of handed back to the kernel.

glibc's malloc serves every block above its mmap threshold (at most 32 MiB) with a fresh `mmap` and unmaps it on
`free`. A training step allocates and frees the same large temporaries every time (a 150-class map at 512x512 is
300 MiB per head, before its gradient), so each one is paid again in page faults at its first touch. With mmap off
and the trim threshold at its maximum, freed blocks stay in the heap and the next step reuses them, as PyTorch's
caching allocator does on GPUs and as jemalloc / tcmalloc do when preloaded. A ViT-L PUP step (batch 2, 512x512,
fp32, 2 cores) took 21.7 s instead of 23.2 s in one side-by-side run, 22.1 s instead of 29.3 s in the profiler's
process (`benchmarks/RESULTS.md`, issue 25).

The price is memory: the heap keeps its high-water mark, holes included (that run: peak RSS 11.8 GiB instead of
10.2; a 4-layer model at the same crop, whose 150-class maps dominate: 6.6 instead of 3.3). So both training
commands apply it (`workflow.start_command` -> `keep_freed_host_memory_for`) only to a run on the CPU that asked for
none of the memory savers (activation checkpointing, a frozen encoder, LoRA: each says memory comes first); on a GPU
the host holds no large temporaries. A user who chose an allocator keeps it: a preloaded jemalloc / tcmalloc /
mimalloc, or glibc's own settings in the environment (`MALLOC_MMAP_MAX_`, `MALLOC_TRIM_THRESHOLD_`, `MALLOC_MMAP_THRESHOLD_`,
`GLIBC_TUNABLES=glibc.malloc...`; e.g. `MALLOC_MMAP_MAX_=65536`, glibc's default, turns this off).
"""

import ctypes
import logging
import os
import platform
import sys
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

# glibc's `mallopt` parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
LARGEST_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int
USER_ALLOCATOR_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")
PRELOADED_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")

_applied = False


def user_chosen_allocator(environ: Mapping[str, str] = os.environ) -> str | None:
    """What in the environment says the user chose the allocator's behaviour, or None."""
    for name in USER_ALLOCATOR_VARIABLES:
        if name in environ:
            return name
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    preload = environ.get("LD_PRELOAD", "")
    for allocator in PRELOADED_ALLOCATORS:
        if allocator in preload:
            return f"LD_PRELOAD ({allocator})"
    return None


def keep_freed_host_memory() -> bool:
    """Keep freed blocks in this process's heap for reuse (glibc's `mallopt`); True when in effect. A no-op off
    glibc, and where the user chose the allocator (`user_chosen_allocator`)."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    chosen = user_chosen_allocator()
    if chosen is not None:
        logger.info("host memory: the allocator's settings are the user's (%s)", chosen)
        return False
    libc = ctypes.CDLL("libc.so.6")
    # Threshold first: with it, a later failure of the second call leaves glibc's behaviour as it was.
    if libc.mallopt(M_TRIM_THRESHOLD, LARGEST_TRIM_THRESHOLD) != 1 or libc.mallopt(M_MMAP_MAX, 0) != 1:
        return False
    _applied = True
    logger.info("host memory: freed blocks are kept for reuse (glibc mallopt: no mmap, no trim)")
    return True


def keep_freed_host_memory_for(args: Any) -> bool:
    """`keep_freed_host_memory()` for a training run (either command's arguments) on the CPU that asked for none of
    the memory savers (activation checkpointing, a frozen encoder, LoRA); True when in effect."""
    import torch

    memory_first = [
        flag
        for flag, asked in (
            # the Trainer's `--gradient_checkpointing`, which `--activation_checkpointing` also sets
            (
                "activation checkpointing",
                getattr(args, "activation_checkpointing", False) or getattr(args, "gradient_checkpointing", False),
            ),
            ("--freeze_encoder", getattr(args, "freeze_encoder", False)),
            ("--lora_rank", (getattr(args, "lora_rank", 0) or 0) > 0),
        )
        if asked
    ]
    if memory_first:
        logger.info("host memory: glibc's default (%s puts memory first)", ", ".join(memory_first))
        return False
    if not getattr(args, "use_cpu", False) and torch.accelerator.is_available():
        return False
    return keep_freed_host_memory()
