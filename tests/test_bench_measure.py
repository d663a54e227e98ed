"""The benchmarks' measurement setup: glibc's malloc keeps freed memory for reuse;
a benchmark's targets measured over several heap layouts."""

import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

import fastcae
from benchmarks.measure import heap_offsets_kib, shift_heap

ROOT = Path(__file__).resolve().parents[1]

# Prints how much resident memory freeing a touched 8 MiB block gives back.
FREE_A_BLOCK = """
import torch
from benchmarks.measure import _proc_status, keep_freed_memory
note = keep_freed_memory() if {keep} else ""
block = torch.ones(8 << 20, dtype=torch.uint8)
before = _proc_status("VmRSS")
del block
print(note, before - _proc_status("VmRSS"), sep="|")
"""


def freed_bytes(keep: bool) -> tuple[str, int]:
    script = FREE_A_BLOCK.format(keep=keep)
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    note, freed = out.strip().splitlines()[-1].split("|")
    return note, int(freed)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)
def test_keep_freed_memory_keeps_a_freed_block_for_reuse():
    note, freed = freed_bytes(keep=True)
    assert note == "malloc keeps freed memory"
    assert freed < 1 << 20
    _, freed_by_default = freed_bytes(keep=False)  # the control: glibc hands it back
    assert freed_by_default > 6 << 20


def test_heap_shifts_move_later_allocations():
    offsets = heap_offsets_kib(6, seed=3)
    assert offsets[0] == 0 and len(set(offsets)) == 6
    assert all(offset % 4 == 0 and 0 <= offset < 8 << 10 for offset in offsets)
    assert shift_heap(0) is None
    held = shift_heap(64)
    assert held.numel() * held.element_size() > 64 << 10


def test_conv_targets_over_heap_layouts(tmp_path):
    """`python -m benchmarks.conv --layouts 2`: each target's ratio from two processes,
    each shifted differently, and their median (tiny problem, two rounds)."""
    records_path = tmp_path / "layouts.jsonl"
    command = [sys.executable, "-m", "benchmarks.conv", "--layouts", "2", "--rounds", "2", "--jsonl"]
    env = {**os.environ, "FASTCAE_BENCH_QUICK": "1"}
    subprocess.run([*command, str(records_path)], cwd=ROOT, env=env, check=True, capture_output=True)
    records = [json.loads(line) for line in records_path.read_text().splitlines()]
    assert "over 2 heap layouts" in records[0]["line"]
    targets = {record["mode"]: record for record in records if "ratios" in record}
    cpu_backend = fastcae.backends()["cpu"] is None  # None: available (the pairs are fastcae-cpu's)
    assert set(targets) == ({"forward", "train"} if cpu_backend else set())
    for record in targets.values():
        assert len(record["ratios"]) == 2 and all(ratio > 0 for ratio in record["ratios"])
        assert record["median"] == statistics.median(record["ratios"])
