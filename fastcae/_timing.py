"""Timing of device work: one home for backend="auto" and the benchmarks.

On CUDA a call is timed with CUDA events recorded on the current stream
around it, after the device went idle, so launch overhead counts whenever the
host is the bottleneck; on the CPU with ``time.perf_counter``. Methods compared
with each other are timed interleaved (each round runs every method once, in
a shuffled order), so drifting machine load hits them alike.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Mapping

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(run: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``run`` takes, starting from an idle device."""
    synchronize(device)
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start_s = time.perf_counter()
    run()
    return time.perf_counter() - start_s


def interleaved_samples(
    methods: Mapping[str, Callable[[], object]],
    rounds: int,
    device: torch.device,
    *,
    warmup: int = 2,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Seconds per call of each method over ``rounds`` interleaved rounds.

    ``warmup`` untimed calls of each method come first (compilation,
    autotuning, first-touch allocations).
    """
    for run in methods.values():
        for _ in range(warmup):
            run()
    samples: dict[str, list[float]] = {name: [] for name in methods}
    order = list(methods)
    shuffle = random.Random(seed)
    for _ in range(rounds):
        shuffle.shuffle(order)
        for name in order:
            samples[name].append(time_call(methods[name], device))
    return samples


def interleaved_medians(
    methods: Mapping[str, Callable[[], object]],
    rounds: int,
    device: torch.device,
    *,
    warmup: int = 2,
    seed: int = 0,
) -> dict[str, float]:
    """Median seconds per call of each method, timed interleaved (see interleaved_samples)."""
    samples = interleaved_samples(methods, rounds, device, warmup=warmup, seed=seed)
    return {name: statistics.median(values) for name, values in samples.items()}
