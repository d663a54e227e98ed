"""How backend="auto" chooses among several fast backends for one device: by
timing them there, once per problem kind, like ``torch.backends.cudnn.benchmark``.

On CUDA both "triton" and "cuda" may be available, and which is faster depends
on the GPU, the shape, the dtype and whether a backward pass follows. The
first call for a given kind times the candidates interleaved (forward, plus
backward when gradients are needed) on the call's own inputs and remembers
the winner; later calls look it up. ``FASTCAE_AUTOTUNE=0`` turns timing off:
the first candidate in the preference order is used. Under torch.compile and
torch.func transforms nothing is timed (a cached choice is used if there is
one, else the first candidate).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._environment import backend_autotune_enabled
from ._timing import interleaved_medians

WARMUP_CALLS = 2  # the first includes Triton's own autotuning and compilation
TIMED_CALLS = 5

_CHOICES: dict[tuple, str] = {}


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


def _timed_call(
    encode: Callable, x: Tensor, weight: Tensor, bias: Tensor | None, activation: str, training: bool
) -> Callable[[], None]:
    """One call (forward and, when training, backward) on detached copies of the inputs."""
    inputs = [
        None if t is None else t.detach().requires_grad_(training and t.requires_grad)
        for t in (x, weight, bias)
    ]

    def call() -> None:
        with torch.enable_grad() if training else torch.no_grad():
            code, penalty = encode(inputs[0], inputs[1], inputs[2], activation)
            if training:
                (code.float().mean() + penalty.mean()).backward()

    return call


def choose(candidates: Sequence[str], x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> str:
    """The fastest of the backends named by ``candidates`` (in preference order) for this kind of problem."""
    if len(candidates) == 1:
        return candidates[0]
    training = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    key = problem_key(x, weight, bias, activation, training)
    if _CHOICES.get(key) in candidates:
        return _CHOICES[key]
    if (
        not backend_autotune_enabled()
        or torch.compiler.is_compiling()
        or torch._C._are_functorch_transforms_active()
    ):
        return candidates[0]
    from .ops.encode import IMPLEMENTATIONS

    calls = {
        name: _timed_call(IMPLEMENTATIONS[name], x, weight, bias, activation, training) for name in candidates
    }
    medians = interleaved_medians(calls, TIMED_CALLS, x.device, warmup=WARMUP_CALLS)
    _CHOICES[key] = min(candidates, key=medians.__getitem__)
    return _CHOICES[key]


def choices() -> dict[tuple, str]:
    """The decisions made so far (problem kind -> backend name), for inspection."""
    return dict(_CHOICES)
