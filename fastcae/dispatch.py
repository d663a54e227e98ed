"""The backend registry: name -> availability (with the reason) -> op.

Every backend computes the same thing, ``(x, weight, bias, activation) ->
(h (B, H), p (B,))``, differentiably; they differ in where and how fast.
"auto" picks the fastest one available for the inputs' device and dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._validation import FLOATING_DTYPES, check_choice
from .ops import extension
from .ops import triton as triton_ops
from .ops.reference import encode_naive, encode_torch

EncodeFn = Callable[[Tensor, Tensor, "Tensor | None", str], "tuple[Tensor, Tensor]"]


class BackendUnavailableError(ValueError):
    """A backend was requested by name but cannot run here (the message says why)."""


@dataclass(frozen=True)
class Backend:
    """One way of computing the encoder and its penalty.

    Attributes:
        name: the value of ``backend=``.
        description: one line for ``fastcae info`` and the docs.
        encode: the differentiable op.
        device_types: device types it accepts (None: any).
        dtypes: input dtypes it accepts.
        unavailable_reason: returns why it cannot run on this machine, or None.
    """

    name: str
    description: str
    encode: EncodeFn
    device_types: frozenset[str] | None
    dtypes: frozenset[torch.dtype]
    unavailable_reason: Callable[[], str | None]

    def supports(self, x: Tensor) -> bool:
        on_device = self.device_types is None or x.device.type in self.device_types
        return on_device and x.dtype in self.dtypes and self.unavailable_reason() is None


def _always_available() -> str | None:
    return None


def _cpu_unavailable_reason() -> str | None:
    return extension.LOAD_ERROR


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend(
            "torch",
            "eager closed form in plain PyTorch: the reference every fast path is tested against",
            encode_torch,
            None,
            frozenset(FLOATING_DTYPES),
            _always_available,
        ),
        Backend(
            "naive",
            "true per-sample Jacobian via torch.func.vmap(jacrev), then its squared Frobenius norm",
            encode_naive,
            None,
            frozenset(FLOATING_DTYPES),
            _always_available,
        ),
        Backend(
            "cpu",
            "fused C++ kernels (ATen GEMM + one vectorized pass), CPU tensors",
            extension.encode_extension,
            frozenset({"cpu"}),
            frozenset(FLOATING_DTYPES),
            _cpu_unavailable_reason,
        ),
        Backend(
            "triton",
            "fused Triton kernels: GEMM with the penalty in its epilogue; backward GEMMs recompute dz from h",
            triton_ops.encode_triton,
            triton_ops.device_types(),
            triton_ops.dtypes(),
            triton_ops.unavailable_reason,
        ),
    )
}

# Preference of "auto" per device type, fastest first; "torch" runs anywhere.
AUTO_PREFERENCE: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu", "torch"),
    "cuda": ("triton", "torch"),
}


def backends() -> dict[str, str | None]:
    """Every backend name mapped to None when it is available here, else to the reason it is not.

    >>> fastcae.backends()
    {'torch': None, 'naive': None, 'cpu': None, ...}
    """
    return {name: backend.unavailable_reason() for name, backend in BACKENDS.items()}


def resolve_backend(name: object, x: Tensor) -> Backend:
    """The backend that will run for ``backend=name`` on inputs like ``x``.

    Raises:
        ValueError: unknown name, or a named backend that does not run on x's device.
        BackendUnavailableError: a named backend that cannot run on this machine.
        TypeError: a named backend that does not take x's dtype.
    """
    check_choice("backend", name, ("auto", *BACKENDS))
    if name == "auto":
        for candidate in AUTO_PREFERENCE.get(x.device.type, ()):
            backend = BACKENDS[candidate]
            if backend.supports(x):
                return backend
        return BACKENDS["torch"]
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
    return backend
