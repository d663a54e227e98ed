"""The convolutional penalty under pytest-benchmark: every method of
benchmarks/conv.py × mode, checked against the float64 closed form before it
is timed, with its peak extra memory. `python -m benchmarks.conv` measures the
targets (interleaved ratios)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import bench_device
from benchmarks.conv import ConvProblem, build, conv_shape, methods, naive_fits, reference
from benchmarks.measure import gate_tolerance, peak_extra_memory, relative_error
from fastcae._timing import synchronize

DEVICE = bench_device()
CASES = [(mode, name) for mode in ("forward", "train") for name in methods(DEVICE)]


@pytest.mark.parametrize(("mode", "method"), CASES, ids=[f"conv-{m}-{n}" for m, n in CASES])
def test_conv(benchmark, mode, method):
    problem = ConvProblem.make(conv_shape(), torch.float32, DEVICE)
    benchmark.group = f"conv {mode} float32 {problem.shape.label}"
    if method == "naive" and not naive_fits(problem, 4 * 2**30):
        pytest.skip("the naive method's estimated peak memory exceeds 4 GiB")
    run = build(problem, method, mode)
    error = relative_error(run(), reference(problem, mode, floor=method == "conv-only"))
    assert error <= gate_tolerance(torch.float32, DEVICE), f"{method} is wrong: relative error {error:.3g}"
    benchmark.extra_info.update(mode=mode, method=method, relative_error=error)
    benchmark.extra_info["peak_extra_bytes"] = peak_extra_memory(run, DEVICE)

    def timed() -> None:
        run()
        synchronize(DEVICE)

    benchmark.pedantic(timed, rounds=5 if method == "naive" else 20, iterations=1, warmup_rounds=1)
