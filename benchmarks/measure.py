"""Correctness gate, peak memory and device naming for the benchmark suite."""

from __future__ import annotations

import ctypes
import json
import platform
import random
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.cases import Problem, encoder_floor, plain_autoencoder_step, train_step
from fastcae._precision import cuda_fp32_uses_tf32
from fastcae._timing import synchronize
from fastcae.ops.reference import encode_torch

# Relative error allowed by the gate before a method is timed (norm-wise:
# max |error| / max |reference|). The test suite holds the kernels to 1e-5 in
# float32; the gate only has to tell a correct method from a wrong one, and
# the naive baselines accumulate a (B, H, D) tensor in float32.
GATE = {torch.float32: 1e-4, torch.float64: 1e-9, torch.bfloat16: 3e-2, torch.float16: 3e-2}


def gate_tolerance(dtype: torch.dtype, device: torch.device) -> float:
    if dtype == torch.float32 and device.type == "cuda" and cuda_fp32_uses_tf32():
        return 2e-3
    return GATE[dtype]


def reference_result(problem: Problem, mode: str, floor: bool) -> tuple[Tensor | None, ...]:
    """What a method must return, from the float64 closed form."""
    wide = problem.in_float64()
    if mode == "forward":
        if floor:
            return encoder_floor(wide)
        with torch.no_grad():
            return encode_torch(wide.x, wide.weight, wide.bias, "sigmoid")
    if floor:
        return plain_autoencoder_step(wide)
    return train_step(wide, lambda x, w, b: encode_torch(x, w, b, "sigmoid"))


def relative_error(result: tuple, expected: tuple) -> float:
    """The worst norm-wise relative error over the returned tensors (NaN -> inf)."""
    worst = 0.0
    for got, want in zip(result, expected, strict=True):
        if want is None:
            continue
        got = got.detach().to(torch.float64)
        want = want.detach().to(torch.float64)
        if got.shape != want.shape or not torch.isfinite(got).all():
            return float("inf")
        scale = want.abs().max().item() if want.numel() else 0.0
        error = (got - want).abs().max().item() if want.numel() else 0.0
        worst = max(worst, error / max(scale, 1e-30))
    return worst


_libc = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory() -> str:
    """Make glibc's malloc keep freed memory for reuse: blocks up to 32 MiB from the
    heap, which is never trimmed. Returns a note for the run's header ("" if not applied).

    By default a freed block of a few MiB is often handed back to the OS, and the
    next allocation of its size page-faults in fresh pages (on a 2-core VM about
    2 ms per 4 MiB, several times the convolution of benchmarks/conv.py); whether
    it is depends on the order of earlier allocations, so one call of F.conv2d
    measured 0.2 or 2.7 ms by what ran before it. Kept memory is the steady state of
    a training loop, and what jemalloc or tcmalloc (PyTorch's advice for CPUs)
    give anyway; every method of a run gets it alike. Peak memory is still the
    touched pages: peak_extra_memory trims the heap first.
    """
    if _libc is None or platform.libc_ver()[0] != "glibc":
        return ""
    settings = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20))
    applied = all(_libc.mallopt(parameter, value) == 1 for parameter, value in settings)
    return "malloc keeps freed memory" if applied else ""


def shift_heap(kib: int) -> Tensor | None:
    """Hold an untouched block of ``kib`` KiB from the heap (keep the returned tensor
    alive), so that everything allocated after it lands at other addresses.

    A CPU training step's ratio to another depends on where its buffers land: in
    a process timing only the conv step pair, it measured 1.08 to 1.25 over eight
    such shifts on one VM, steady within each process (BENCHMARKS.md). Running a benchmark in
    several processes, each shifted differently (across_heap_layouts), samples
    that spread instead of reporting one draw of it. Call after keep_freed_memory
    and before the problem is made. None for 0.
    """
    if kib <= 0:
        return None
    return torch.empty(kib * 256 + 1, dtype=torch.float32)  # +1: not a whole number of pages


def across_heap_layouts(module: str, args: list[str], offsets_kib: list[int]) -> list[list[dict]]:
    """Run ``python -m module *args --heap-offset-kib K --jsonl FILE`` once per offset,
    each in a fresh process, and return each run's JSON records."""
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for index, offset in enumerate(offsets_kib):
            records_path = Path(folder) / f"layout-{index}.jsonl"
            command = [sys.executable, "-m", module, *args, "--heap-offset-kib", str(offset)]
            subprocess.run([*command, "--jsonl", str(records_path)], check=True, stdout=subprocess.DEVNULL)
            with records_path.open() as records:
                runs.append([json.loads(line) for line in records])
    return runs


def heap_offsets_kib(count: int, seed: int = 0) -> list[int]:
    """``count`` heap shifts: 0 (the unshifted process), then random page multiples below 8 MiB."""
    rng = random.Random(seed)
    return [0, *(4 * rng.randrange(1, 2048) for _ in range(count - 1))][:count]


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_extra_memory(run: Callable[[], tuple], device: torch.device) -> int | None:
    """Bytes allocated at the peak of one call beyond what was live before it.

    CUDA: the caching allocator's peak statistic. CPU (Linux): the process's
    peak RSS, reset just before the call, after free heap pages are handed
    back to the OS (malloc_trim), so reused memory is counted when touched.
    None where neither is available.
    """
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = run()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del result
        return peak
    if _libc is None:
        return None
    try:
        _libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current RSS
        before = _proc_status("VmRSS")
        result = run()
        peak = _proc_status("VmHWM") - before
    except OSError:
        return None
    del result
    return max(peak, 0)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def device_slug(device: torch.device) -> str:
    """A file-name-safe form of device_name, e.g. 'nvidia-h100-80gb-hbm3'."""
    name = re.sub(r"\((r|tm)\)", "", device_name(device).lower())
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")
