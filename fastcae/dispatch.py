"""The backend registry: name -> where it runs and whether it can run here (with the reason).

A backend is a way of computing every op (fastcae/ops/<op>.py holds each op's
implementation per backend name); they differ in where and how fast. "auto"
picks the fastest one available for the inputs' device and dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from . import _autotune
from ._validation import FLOATING_DTYPES, check_choice
from .ops import loading


class BackendUnavailableError(ValueError):
    """A backend was requested by name but cannot run here (the message says why)."""


@dataclass(frozen=True)
class Backend:
    """One way of computing fastcae's ops.

    Attributes:
        name: the value of ``backend=``.
        description: one line for ``fastcae info`` and the docs.
        device_types: device types it accepts (None: any).
        dtypes: input dtypes it accepts.
        unavailable_reason: returns why it cannot run on this machine, or None.
    """

    name: str
    description: str
    device_types: frozenset[str] | None
    dtypes: frozenset[torch.dtype]
    unavailable_reason: Callable[[], str | None]

    def supports(self, x: Tensor) -> bool:
        on_device = self.device_types is None or x.device.type in self.device_types
        return on_device and x.dtype in self.dtypes and self.unavailable_reason() is None


def _always_available() -> str | None:
    return None


def _cpu_unavailable_reason() -> str | None:
    return loading.EXTENSION_ERROR


def _cuda_unavailable_reason() -> str | None:
    if loading.EXTENSION_ERROR is not None:
        return loading.EXTENSION_ERROR
    if not loading.extension_has_cuda():
        return "fastcae._C was built without CUDA (rebuild with a CUDA toolkit, or FASTCAE_CUDA=1)"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend(
            name="torch",
            description="eager closed form in plain PyTorch: the reference every fast path is tested against",
            device_types=None,
            dtypes=frozenset(FLOATING_DTYPES),
            unavailable_reason=_always_available,
        ),
        Backend(
            name="naive",
            description=(
                "true per-sample Jacobian via torch.func.vmap(jacrev), then its squared Frobenius norm"
            ),
            device_types=None,
            dtypes=frozenset(FLOATING_DTYPES),
            unavailable_reason=_always_available,
        ),
        Backend(
            name="cpu",
            description="fused C++ kernels (ATen GEMM + one vectorized pass), CPU tensors",
            device_types=frozenset({"cpu"}),
            dtypes=frozenset(FLOATING_DTYPES),
            unavailable_reason=_cpu_unavailable_reason,
        ),
        Backend(
            name="triton",
            description="fused Triton kernels: GEMM + penalty epilogue; backward: a dz pass, then cuBLAS",
            device_types=loading.triton_device_types(),
            dtypes=loading.triton_dtypes(),
            unavailable_reason=loading.triton_unavailable_reason,
        ),
        Backend(
            name="cuda",
            description="fused CUDA C++ kernels: cuBLAS GEMM, then one fused pass per direction",
            device_types=frozenset({"cuda"}),
            dtypes=frozenset(FLOATING_DTYPES),
            unavailable_reason=_cuda_unavailable_reason,
        ),
    )
}

BACKEND_CHOICES: tuple[str, ...] = ("auto", *BACKENDS)

# Candidates of "auto" per device type, in order of preference. Where several
# fused backends can run, the fastest is measured per problem kind
# (fastcae/_autotune.py); "torch" is the fallback that runs anywhere.
AUTO_PREFERENCE: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu",),
    "cuda": ("triton", "cuda"),
}


def backends() -> dict[str, str | None]:
    """Every backend name mapped to None when it is available here, else to the reason it is not.

    >>> fastcae.backends()
    {'torch': None, 'naive': None, 'cpu': None, ...}
    """
    return {name: backend.unavailable_reason() for name, backend in BACKENDS.items()}


def resolve_backend(
    name: object,
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    activation: str = "sigmoid",
    *,
    timed: bool = True,
) -> str:
    """The name of the backend that runs for ``backend=name`` on these (validated) inputs.

    "auto" times the fused candidates on the encoder layer (x, weight, bias)
    when ``timed`` (fastcae/_autotune.py), else takes the first of them: the
    ops whose fused part is one elementwise pass (the convolutional layer's
    epilogue) do not need the timing.

    Raises:
        ValueError: unknown name, or a named backend that does not run on x's device.
        BackendUnavailableError: a named backend that cannot run on this machine.
        TypeError: a named backend that does not take x's dtype.
    """
    check_choice("backend", name, BACKEND_CHOICES)
    if name == "auto":
        candidates = [n for n in AUTO_PREFERENCE.get(x.device.type, ()) if BACKENDS[n].supports(x)]
        if not candidates:
            return "torch"
        if not timed:
            return candidates[0]
        return _autotune.choose(candidates, x, weight, bias, activation)
    backend = BACKENDS[name]
    reason = backend.unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(f"backend={name!r} is unavailable: {reason}")
    if backend.device_types is not None and x.device.type not in backend.device_types:
        accepted = ", ".join(sorted(backend.device_types))
        raise ValueError(f"backend={name!r} runs on {accepted} tensors, but x is on {x.device}")
    if x.dtype not in backend.dtypes:
        accepted = ", ".join(sorted(str(d) for d in backend.dtypes))
        raise TypeError(f"backend={name!r} takes {accepted}, but x is {x.dtype}")
    return name
