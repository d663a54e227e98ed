"""The "triton" backend: the fused Triton kernels of fastcae.kernels as one
differentiable op.

Eager calls go through a torch.autograd.Function (the cheapest launch path);
under torch.compile the same launchers run inside the custom ops
``fastcae::triton_encode_forward`` / ``triton_encode_backward``, which the
compiler treats as opaque (fake kernels registered), so a compiled model
calling fastcae has no graph break.

Runs on CUDA tensors, and on CPU tensors under the Triton interpreter
(TRITON_INTERPRET=1, set before triton is imported), which is how CI tests it.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor

from ..activations import ACTIVATIONS
from .reference import empty_encode_outputs


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_PROBED: dict[str, str | None] = {}


@torch.compiler.assume_constant_result  # torch.compile calls it once instead of tracing it
def unavailable_reason() -> str | None:
    """Why the Triton backend cannot run here, or None (probed once)."""
    if "reason" not in _PROBED:
        _PROBED["reason"] = _probe()
    return _PROBED["reason"]


def _probe() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if not torch.cuda.is_available() and not interpreter_enabled():
        return "no CUDA device (set TRITON_INTERPRET=1 before importing triton to run it on the CPU)"
    try:
        from ..kernels import encode  # noqa: F401  (compiles nothing; checks the import)
    except Exception as exc:  # an incompatible triton: say so instead of failing later
        return f"fastcae.kernels failed to import: {type(exc).__name__}: {exc}"
    return None


def device_types() -> frozenset[str]:
    return frozenset({"cuda", "cpu"}) if interpreter_enabled() else frozenset({"cuda"})


def dtypes() -> frozenset[torch.dtype]:
    # The interpreter computes with numpy, which has no bfloat16.
    if interpreter_enabled():
        return frozenset({torch.float16, torch.float32, torch.float64})
    return frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


def _kernels():
    from ..kernels import encode

    return encode


def _forward(
    x: Tensor, weight: Tensor, bias: Tensor | None, activation: str
) -> tuple[Tensor, Tensor, Tensor]:
    return _kernels().encode_forward(x, weight, bias, ACTIVATIONS[activation].id)


def _backward(
    grad_code: Tensor | None,
    grad_penalty: Tensor | None,
    saved: tuple[Tensor, Tensor, Tensor, Tensor],
    activation: str,
    output_mask: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    x, weight, code, row_norms_sq = saved
    return _kernels().encode_backward(
        grad_code, grad_penalty, x, weight, code, row_norms_sq, ACTIVATIONS[activation].id, output_mask
    )


class TritonEncodeFunction(torch.autograd.Function):
    """(x, W, b) -> (h, p): saves x, W, h, ‖W_j‖²; backward runs the two fused kernels."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, activation: str):
        code, penalty, row_norms_sq = _forward(x, weight, bias, activation)
        ctx.save_for_backward(x, weight, code, row_norms_sq)
        ctx.activation = activation
        ctx.has_bias = bias is not None
        ctx.set_materialize_grads(False)
        return code, penalty

    @staticmethod
    def backward(ctx, grad_code: Tensor | None, grad_penalty: Tensor | None):
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        need_bias = need_bias and ctx.has_bias
        if (grad_code is None and grad_penalty is None) or not (need_x or need_weight or need_bias):
            return None, None, None, None
        grad_x, grad_weight, grad_bias = _backward(
            grad_code, grad_penalty, ctx.saved_tensors, ctx.activation, (need_x, need_weight, need_bias)
        )
        return grad_x, grad_weight, grad_bias, None


@torch.library.custom_op("fastcae::triton_encode_forward", mutates_args=())
def triton_encode_forward(
    x: Tensor, weight: Tensor, bias: Tensor | None, activation: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Custom-op form of the fused forward, for torch.compile: (h, p, ‖W_j‖²)."""
    return _forward(x, weight, bias, activation)


@triton_encode_forward.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> tuple[Tensor, Tensor, Tensor]:
    return empty_encode_outputs(x, weight)


@torch.library.custom_op("fastcae::triton_encode_backward", mutates_args=())
def triton_encode_backward(
    grad_code: Tensor | None,
    grad_penalty: Tensor | None,
    x: Tensor,
    weight: Tensor,
    code: Tensor,
    row_norms_sq: Tensor,
    activation: str,
    output_mask: list[bool],
) -> tuple[Tensor, Tensor, Tensor]:
    """Custom-op form of the fused backward: (dx, dW, db); outputs not asked
    for in output_mask are empty tensors (custom ops cannot return None)."""
    grads = _backward(
        grad_code, grad_penalty, (x, weight, code, row_norms_sq), activation, tuple(output_mask)
    )
    return tuple(g if g is not None else x.new_empty(0) for g in grads)


@triton_encode_backward.register_fake
def _(grad_code, grad_penalty, x, weight, code, row_norms_sq, activation, output_mask):
    shapes = (x.shape, weight.shape, weight.shape[:1])
    return tuple(
        x.new_empty(shape if need else (0,)) for shape, need in zip(shapes, output_mask, strict=True)
    )


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, activation = inputs
    code, _penalty, row_norms_sq = output
    ctx.mark_non_differentiable(row_norms_sq)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, weight, code, row_norms_sq)
    ctx.activation = activation
    ctx.has_bias = bias is not None


def _custom_op_backward(ctx, grad_code, grad_penalty, _grad_row_norms_sq):
    need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
    need_bias = need_bias and ctx.has_bias
    if (grad_code is None and grad_penalty is None) or not (need_x or need_weight or need_bias):
        return None, None, None, None
    mask = [need_x, need_weight, need_bias]
    grads = triton_encode_backward(grad_code, grad_penalty, *ctx.saved_tensors, ctx.activation, mask)
    return (*(g if need else None for g, need in zip(grads, mask, strict=True)), None)


triton_encode_forward.register_autograd(_custom_op_backward, setup_context=_setup_context)


@torch.library.custom_op("fastcae::triton_hessian_forward", mutates_args=())
def triton_hessian_forward(
    preact: Tensor, noisy_preact: Tensor, row_norms_sq: Tensor, activation: str
) -> Tensor:
    """CAE+H (B,) from z (B, H), z̃ (n, B, H), ‖W_j‖² (H,) with the fused Triton kernels."""
    from ..kernels import hessian

    return hessian.hessian_forward(preact, noisy_preact, row_norms_sq, ACTIVATIONS[activation].id)


@triton_hessian_forward.register_fake
def _(preact, noisy_preact, row_norms_sq, activation):
    return preact.new_empty((preact.shape[0],))


@torch.library.custom_op("fastcae::triton_hessian_backward", mutates_args=())
def triton_hessian_backward(
    grad_penalty: Tensor,
    preact: Tensor,
    noisy_preact: Tensor,
    row_norms_sq: Tensor,
    activation: str,
    output_mask: list[bool],
) -> tuple[Tensor, Tensor, Tensor]:
    """(dz, dz̃, d‖W_j‖²); outputs not asked for in output_mask are empty tensors."""
    from ..kernels import hessian

    grads = hessian.hessian_backward(
        grad_penalty, preact, noisy_preact, row_norms_sq, ACTIVATIONS[activation].id, tuple(output_mask)
    )
    return tuple(g if g is not None else preact.new_empty(0) for g in grads)


@triton_hessian_backward.register_fake
def _(grad_penalty, preact, noisy_preact, row_norms_sq, activation, output_mask):
    shapes = (preact.shape, noisy_preact.shape, row_norms_sq.shape)
    return tuple(
        preact.new_empty(shape if need else (0,)) for shape, need in zip(shapes, output_mask, strict=True)
    )


def _hessian_setup_context(ctx, inputs, output) -> None:
    preact, noisy_preact, row_norms_sq, activation = inputs
    ctx.save_for_backward(preact, noisy_preact, row_norms_sq)
    ctx.activation = activation


def _hessian_backward(ctx, grad_penalty):
    mask = list(ctx.needs_input_grad[:3])
    if not any(mask):
        return None, None, None, None
    grads = triton_hessian_backward(grad_penalty, *ctx.saved_tensors, ctx.activation, mask)
    return (*(g if need else None for g, need in zip(grads, mask, strict=True)), None)


triton_hessian_forward.register_autograd(_hessian_backward, setup_context=_hessian_setup_context)


def hessian_triton(preact: Tensor, noisy_preact: Tensor, row_norms_sq: Tensor, activation: str) -> Tensor:
    return triton_hessian_forward(preact, noisy_preact, row_norms_sq, activation)


def encode_triton(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> tuple[Tensor, Tensor]:
    """h (B, H) and p (B,) from the fused Triton kernels."""
    if torch.compiler.is_compiling():
        code, penalty, _row_norms_sq = triton_encode_forward(x, weight, bias, activation)
        return code, penalty
    return TritonEncodeFunction.apply(x, weight, bias, activation)
