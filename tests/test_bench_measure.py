"""The benchmarks' measurement setup: glibc's malloc keeps freed memory for reuse."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

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
