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

from . import _autotune
from ._validation import FLOATING_DTYPES, check_choice
from .ops import extension
from .ops import triton as triton_ops
from .ops.reference import encode_naive, encode_torch, hessian_torch

EncodeFn = Callable[[Tensor, Tensor, "Tensor | None", str], "tuple[Tensor, Tensor]"]
HessianFn = Callable[[Tensor, Tensor, Tensor, str], Tensor]


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
        hessian: the CAE+H op from pre-activations, (z, z̃, ‖W_j‖², activation) -> (B,).
    """

    name: str
    description: str
    encode: EncodeFn
    device_types: frozenset[str] | None
    dtypes: frozenset[torch.dtype]
    unavailable_reason: Callable[[], str | None]
    hessian: HessianFn = hessian_torch

    def supports(self, x: Tensor) -> bool:
        on_device = self.device_types is None or x.device.type in self.device_types
        return on_device and x.dtype in self.dtypes and self.unavailable_reason() is None


def _always_available() -> str | None:
    return None


def _cpu_unavailable_reason() -> str | None:
    return extension.LOAD_ERROR


def _cuda_unavailable_reason() -> str | None:
    if extension.LOAD_ERROR is not None:
        return extension.LOAD_ERROR
    if not extension.built_with_cuda():
        return "fastcae._C was built without CUDA (rebuild with a CUDA toolkit, or FASTCAE_CUDA=1)"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


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
            extension.hessian_extension,
        ),
        Backend(
            "triton",
            "fused Triton kernels: GEMM with the penalty in its epilogue; backward GEMMs recompute dz from h",
            triton_ops.encode_triton,
            triton_ops.device_types(),
            triton_ops.dtypes(),
            triton_ops.unavailable_reason,
            triton_ops.hessian_triton,
        ),
        Backend(
            "cuda",
            "fused CUDA C++ kernels: cuBLAS GEMM, then one fused pass per direction",
            extension.encode_extension,
            frozenset({"cuda"}),
            frozenset(FLOATING_DTYPES),
            _cuda_unavailable_reason,
            extension.hessian_extension,
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
    name: object, x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str = "sigmoid"
) -> Backend:
    """The backend that will run for ``backend=name`` on these (validated) inputs.

    Raises:
        ValueError: unknown name, or a named backend that does not run on x's device.
        BackendUnavailableError: a named backend that cannot run on this machine.
        TypeError: a named backend that does not take x's dtype.
    """
    check_choice("backend", name, BACKEND_CHOICES)
    if name == "auto":
        candidates = [BACKENDS[n] for n in AUTO_PREFERENCE.get(x.device.type, ()) if BACKENDS[n].supports(x)]
        if not candidates:
            return BACKENDS["torch"]
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
    return backend
