"""How backend="auto" chooses among several fast backends for one device: by
timing them there, once per problem kind, like ``torch.backends.cudnn.benchmark``.

On CUDA both "triton" and "cuda" may be available, and which is faster depends
on the GPU, the shape, the dtype and whether a backward pass follows. The
first call for a given kind times each candidate (forward, plus backward when
gradients are needed) on the call's own inputs and remembers the winner; later
calls look it up. ``FASTCAE_AUTOTUNE=0`` turns timing off: the first
candidate in the preference order is used. Under torch.compile nothing is
timed (a cached choice is used if there is one, else the first candidate).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .dispatch import Backend

WARMUP_CALLS = 2  # the first includes Triton's own autotuning and compilation
TIMED_CALLS = 5

_CHOICES: dict[tuple, str] = {}


def enabled() -> bool:
    return os.environ.get("FASTCAE_AUTOTUNE", "1") not in ("0", "", "false", "off")


def problem_key(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str, training: bool) -> tuple:
    """What decides the winner. The batch is bucketed to the next power of two
    so a training run with a ragged last batch does not time again."""
    batch_bucket = 1 << max(int(x.shape[0]) - 1, 0).bit_length()
    return (
        str(x.device),
        x.dtype,
        activation,
        bias is not None,
        batch_bucket,
        x.shape[1],
        weight.shape[0],
        training,
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_backend(
    backend: Backend, x: Tensor, weight: Tensor, bias: Tensor | None, activation: str, training: bool
):
    """Median seconds of one call (forward and, when training, backward) on detached copies."""
    inputs = [
        None if t is None else t.detach().requires_grad_(training and t.requires_grad)
        for t in (x, weight, bias)
    ]

    def call() -> None:
        code, penalty = backend.encode(inputs[0], inputs[1], inputs[2], activation)
        if training:
            (code.float().mean() + penalty.mean()).backward()

    with torch.enable_grad() if training else torch.no_grad():
        for _ in range(WARMUP_CALLS):
            call()
        samples = []
        for _ in range(TIMED_CALLS):
            _synchronize(x.device)
            start = time.perf_counter()
            call()
            _synchronize(x.device)
            samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def choose(
    candidates: Sequence[Backend], x: Tensor, weight: Tensor, bias: Tensor | None, activation: str
) -> Backend:
    """The fastest of ``candidates`` (in preference order) for this call's kind of problem."""
    if len(candidates) == 1:
        return candidates[0]
    training = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    key = problem_key(x, weight, bias, activation, training)
    by_name = {backend.name: backend for backend in candidates}
    if key in _CHOICES and _CHOICES[key] in by_name:
        return by_name[_CHOICES[key]]
    if not enabled() or torch.compiler.is_compiling():
        return candidates[0]
    timings = {
        backend.name: _time_backend(backend, x, weight, bias, activation, training) for backend in candidates
    }
    _CHOICES[key] = min(timings, key=timings.__getitem__)
    return by_name[_CHOICES[key]]


def choices() -> dict[tuple, str]:
    """The decisions made so far (problem kind -> backend name), for inspection."""
    return dict(_CHOICES)
