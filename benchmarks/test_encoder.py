"""The benchmark suite: every method × mode × shape × dtype on one device.

Each benchmark: check the method against the float64 closed form (a wrong
method fails and is reported as wrong, never timed), measure its peak extra
memory over one call, then time it with pytest-benchmark (synchronizing the
device after each call). Naive methods that would exceed the time or memory
budget are skipped with the reason.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from benchmarks.cases import (
    METHODS,
    MODES,
    QUICK,
    Problem,
    dtype_grid,
    naive_budget_skip,
    shape_grid,
)
from benchmarks.conftest import RECORDS, bench_device, progress
from benchmarks.measure import gate_tolerance, peak_extra_memory, reference_result, relative_error
from benchmarks.report import Record
from fastcae._timing import synchronize

DEVICE = bench_device()
# Seconds of timed calls per benchmark (fewer rounds for slow methods).
TARGET_SECONDS = float(os.environ.get("FASTCAE_BENCH_SECONDS", 0.02 if QUICK else 0.5))
NAIVE_BUDGET_SECONDS = float(os.environ.get("FASTCAE_BENCH_NAIVE_BUDGET", 10 if QUICK else 20))
MAX_ROUNDS = 200


def memory_budget() -> int:
    if DEVICE.type == "cuda":
        return torch.cuda.get_device_properties(DEVICE).total_memory // 3
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(8 * 2**30, total // 3)


CASES = [
    (dtype, mode, shape, method)
    for dtype in dtype_grid(DEVICE)
    for mode in MODES
    for shape in shape_grid(DEVICE)
    for method in METHODS
]


def case_id(case) -> str:
    dtype, mode, shape, method = case
    dims = f"{shape.batch}x{shape.in_features}x{shape.hidden}"
    return f"{mode}-{str(dtype).removeprefix('torch.')}-{dims}-{method.name}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_encoder(benchmark, request, case):
    dtype, mode, shape, method = case
    record = Record(str(dtype).removeprefix("torch."), mode, shape.label, method.name, "skipped")
    RECORDS.append(record)
    benchmark.group = f"{mode} {record.dtype} {shape.label}"
    benchmark.extra_info.update(mode=mode, dtype=record.dtype, shape=shape.label, method=method.name)

    def skip(status: str, reason: str) -> None:
        record.status, record.note = status, reason
        benchmark.extra_info.update(status=status, reason=reason)
        pytest.skip(reason)

    reason = method.unavailable(DEVICE, dtype)
    if reason is not None:
        skip("unavailable", reason)
    problem = Problem.make(shape, dtype, DEVICE)
    reason = naive_budget_skip(method, problem, mode, NAIVE_BUDGET_SECONDS, memory_budget())
    if reason is not None:
        skip("skipped", reason)

    run = method.build(problem, mode)
    start = time.perf_counter()
    result = run()  # also the warm-up: compilation, autotuning, first-touch allocations
    synchronize(DEVICE)
    first_call = time.perf_counter() - start
    error = relative_error(result, reference_result(problem, mode, floor=method.kind == "floor"))
    del result
    record.error = error
    benchmark.extra_info["relative_error"] = error
    tolerance = gate_tolerance(dtype, DEVICE)
    if not error <= tolerance:
        record.status = "wrong"
        benchmark.extra_info["status"] = "wrong"
        pytest.fail(f"{method.name} is wrong at {shape.label}: relative error {error:.3g} > {tolerance:.1g}")

    record.peak_bytes = peak_extra_memory(run, DEVICE)
    benchmark.extra_info["peak_extra_bytes"] = record.peak_bytes

    start = time.perf_counter()
    run()
    synchronize(DEVICE)
    one_call = time.perf_counter() - start
    rounds = max(1, min(MAX_ROUNDS, int(TARGET_SECONDS / max(one_call, 1e-6))))
    if method.kind != "naive":
        rounds = max(rounds, 5)

    def timed() -> None:
        run()
        synchronize(DEVICE)

    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0 if one_call > 1 else 1)
    record.status = "ok"
    record.median_s = benchmark.stats.stats.median
    record.rounds = rounds
    benchmark.extra_info["status"] = "ok"
    if first_call > 5 * max(one_call, 1e-3):
        record.note = f"first call {first_call:.2g} s (compile/warm-up), not timed"
    progress(
        request.config,
        f"  {mode:7s} {record.dtype:8s} {shape.label:20s} {method.name:14s} "
        f"median {record.median_s * 1e3:10.3f} ms  ({rounds} rounds, error {error:.1e})",
    )
