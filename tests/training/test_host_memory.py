"""Host memory of the training commands (issue 25): freed large blocks are reused, not page-faulted in again."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from transformers_setr.training.host_memory import user_chosen_allocator

ROOT = Path(__file__).resolve().parents[2]

# 128 MiB, allocated, filled and freed ten times; the page faults and seconds of each.
TOUCH_TEN_TIMES = """
import json, resource, sys, time
import torch
from transformers_setr.training.host_memory import keep_freed_host_memory
applied = keep_freed_host_memory() if sys.argv[1] == "keep" else None
rounds = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    block = torch.empty(32 * 2**20).fill_(1.0)
    rounds.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, time.perf_counter() - start))
    del block
print(json.dumps({"applied": applied, "rounds": rounds}))
"""
PAGES = 128 * 2**20 // os.sysconf("SC_PAGE_SIZE")
GLIBC_LINUX = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
needs_glibc = pytest.mark.skipif(not GLIBC_LINUX, reason="glibc's mallopt")


def touch_ten_times(mode: str, **env: str) -> dict:
    environment = {
        k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_MAX_", "LD_PRELOAD", "GLIBC_TUNABLES")
    }
    result = subprocess.run(
        [sys.executable, "-c", TOUCH_TEN_TIMES, mode],
        env={**environment, **env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout.splitlines()[-1])


def transparent_huge_pages_always() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@needs_glibc
def test_freed_blocks_are_reused_without_page_faults():
    kept = touch_ten_times("keep")
    assert kept["applied"] is True
    # Once the heap holds a freed block of the size, reusing it touches no new page. The first rounds may still
    # fault (in 50 runs, only rounds among the first four did): Python's own small blocks can split the freed one.
    faults = [faults for faults, _ in kept["rounds"]]
    assert faults[-3:] == [0, 0, 0] and sum(faults) <= 5 * PAGES, faults
    if not transparent_huge_pages_always():  # with 2 MiB pages, glibc's default faults 64 times, not 32768
        plain = touch_ten_times("plain")
        assert all(faults >= 0.9 * PAGES for faults, _ in plain["rounds"]), plain


@needs_glibc
def test_an_allocator_the_user_chose_is_kept():
    kept = touch_ten_times("keep", MALLOC_MMAP_MAX_="65536")  # glibc's own default, named by the user
    assert kept["applied"] is False
    if not transparent_huge_pages_always():
        assert all(faults >= 0.9 * PAGES for faults, _ in kept["rounds"]), kept


@pytest.mark.parametrize(
    "options, expected",
    [
        ({}, None),
        ({"activation_checkpointing": True}, "activation checkpointing"),
        ({"gradient_checkpointing": True}, "activation checkpointing"),
        ({"activation_checkpointing": True, "gradient_checkpointing": True}, "activation checkpointing"),
        ({"freeze_encoder": True, "lora_rank": 8}, "--freeze_encoder, --lora_rank"),
    ],
)
def test_a_memory_saver_keeps_glibcs_default(options, expected, caplog, monkeypatch):
    import transformers_setr.training.host_memory as host_memory

    calls = []
    monkeypatch.setattr(host_memory, "keep_freed_host_memory", lambda: calls.append(1) or True)
    caplog.set_level(logging.INFO, logger=host_memory.__name__)
    arguments = SimpleNamespace(**{"use_cpu": True, "lora_rank": 0, **options})
    assert host_memory.keep_freed_host_memory_for(arguments) is (expected is None)
    assert calls == ([1] if expected is None else [])
    if expected is not None:
        assert f"({expected} puts memory first)" in caplog.text


def test_what_names_a_users_allocator():
    assert user_chosen_allocator({}) is None
    assert user_chosen_allocator({"LD_PRELOAD": "", "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX"}) is None
    assert user_chosen_allocator({"MALLOC_TRIM_THRESHOLD_": "0"}) == "MALLOC_TRIM_THRESHOLD_"
    assert user_chosen_allocator({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"}) == "GLIBC_TUNABLES"
    assert user_chosen_allocator({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) == "LD_PRELOAD (jemalloc)"
