"""The activate op: the penalty epilogue on given pre-activations and per-unit norms, differentiable.

    forward:   (z (B, U), N (U,)) -> h = φ(z) (B, U), p_b = Σ_u φ'(z_bu)² N_u (B,)
    backward:  dz = g_h φ' + 2 g_p φ' φ'' N_u,   dN_u = Σ_b g_p φ'²

The encode op's fused pass, with the GEMM left to the caller and ‖W_j‖²
generalized to N_u, the squared norm of unit u's row of ∂z/∂x. A layer whose
z is linear in x, with every input reaching z_u through a distinct path, has
‖∂h_b/∂x_b‖²_F = p_b: the convolutional layer (fastcae/conv.py, N from a
convolution of K² with an all-ones image) calls it on z viewed as
(B, C_out·H_out·W_out).

The same shape as fastcae/ops/encode.py: kernel ops registered with
torch.library (``fastcae::activate_forward`` / ``activate_backward`` from the
C++ extension, csrc/activate.cpp, which run the encode op's pass kernels;
``fastcae::triton_activate_forward`` / ``triton_activate_backward``,
kernels/activate.py) with their fakes and vmap rules, and one
autograd.Function over them whose backward is the fused kernel, or the
differentiable closed form (fastcae/ops/reference.py) where a graph of the
gradient is needed. N is in the accumulation dtype of z's dtype, like p.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._precision import acc_dtype
from ..activations import ACTIVATIONS
from . import loading
from .fused import (
    KernelPair,
    OpAutograd,
    fake_grads,
    from_custom_op_grads,
    graph_needed,
    to_custom_op_grads,
    traced,
)
from .reference import activate_backward_closed_form, activate_jvp_closed_form, activate_torch

ActivateOutputs = tuple[Tensor, Tensor]  # h (B, U), p (B,)
Grads = tuple[Tensor | None, Tensor | None]
ActivateFn = Callable[[Tensor, Tensor, str], ActivateOutputs]


def _activate_forward_fake(preact: Tensor, unit_norms_sq: Tensor, activation: str) -> ActivateOutputs:
    return preact.new_empty(preact.shape), preact.new_empty(preact.shape[:1], dtype=acc_dtype(preact.dtype))


def _activate_backward_fake(
    grad_code, grad_penalty, code, unit_norms_sq, activation, output_mask, *, custom_op=False
) -> Grads:
    grad_preact, _ = fake_grads(code, (code.shape, ()), output_mask, custom_op=custom_op)
    _, grad_norms = fake_grads(unit_norms_sq, ((), unit_norms_sq.shape), output_mask, custom_op=custom_op)
    return grad_preact, grad_norms  # dz in h's dtype, dN in N's (the accumulation dtype)


def _activate_forward_vmap(forward: Callable[..., ActivateOutputs]):
    """The vmap rule of a forward kernel op: with N not batched, the vmapped
    samples join the batch (one call); otherwise one call per vmapped element."""

    def rule(info, in_dims, preact, unit_norms_sq, activation):
        preact_dim, norms_dim = in_dims[:2]
        count = info.batch_size
        if norms_dim is None:
            preacts = preact.movedim(preact_dim, 0)
            batch, units = preacts.shape[1:]
            code, penalty = forward(preacts.reshape(count * batch, units), unit_norms_sq, activation)
            return (code.view(count, batch, units), penalty.view(count, batch)), (0, 0)

        def element(t: Tensor, dim: int | None, i: int) -> Tensor:
            return t if dim is None else t.select(dim, i)

        outputs = [
            forward(element(preact, preact_dim, i), element(unit_norms_sq, norms_dim, i), activation)
            for i in range(count)
        ]
        return tuple(torch.stack(parts) for parts in zip(*outputs, strict=True)), (0, 0)

    return rule


# --- The Triton kernel ops (kernels/activate.py) -------------------------------------------


def _triton_forward(preact: Tensor, unit_norms_sq: Tensor, activation: str) -> ActivateOutputs:
    return loading.triton_kernels("activate").activate_forward(
        preact, unit_norms_sq, ACTIVATIONS[activation].id
    )


def _triton_backward(grad_code, grad_penalty, code, unit_norms_sq, activation, output_mask) -> Grads:
    return loading.triton_kernels("activate").activate_backward(
        grad_code, grad_penalty, code, unit_norms_sq, ACTIVATIONS[activation].id, tuple(output_mask)
    )


@torch.library.custom_op("fastcae::triton_activate_forward", mutates_args=())
def triton_activate_forward(preact: Tensor, unit_norms_sq: Tensor, activation: str) -> ActivateOutputs:
    """The Triton epilogue pass: (h, p) from z (B, U) and N (U,)."""
    return _triton_forward(preact, unit_norms_sq, activation)


@torch.library.custom_op("fastcae::triton_activate_backward", mutates_args=())
def triton_activate_backward(
    grad_code: Tensor | None,
    grad_penalty: Tensor | None,
    code: Tensor,
    unit_norms_sq: Tensor,
    activation: str,
    output_mask: list[bool],
) -> tuple[Tensor, Tensor]:
    """(dz, dN); outputs not asked for in output_mask are empty tensors."""
    grads = _triton_backward(grad_code, grad_penalty, code, unit_norms_sq, activation, output_mask)
    return to_custom_op_grads(grads, code)


triton_activate_forward.register_fake(_activate_forward_fake)
triton_activate_forward.register_vmap(_activate_forward_vmap(triton_activate_forward))


@triton_activate_backward.register_fake
def _(grad_code, grad_penalty, code, unit_norms_sq, activation, output_mask):
    args = (grad_code, grad_penalty, code, unit_norms_sq, activation, output_mask)
    return _activate_backward_fake(*args, custom_op=True)


def _triton_backward_op(grad_code, grad_penalty, code, unit_norms_sq, activation, output_mask) -> Grads:
    grads = triton_activate_backward(grad_code, grad_penalty, code, unit_norms_sq, activation, output_mask)
    return from_custom_op_grads(grads, output_mask)


if loading.extension() is not None:
    torch.library.register_fake("fastcae::activate_forward")(_activate_forward_fake)
    torch.library.register_fake("fastcae::activate_forward_")(
        lambda preact, unit_norms_sq, activation: _activate_forward_fake(preact, unit_norms_sq, activation)[1]
    )
    torch.library.register_fake("fastcae::activate_backward")(_activate_backward_fake)
    torch.library.register_vmap(
        "fastcae::activate_forward", _activate_forward_vmap(torch.ops.fastcae.activate_forward)
    )


# --- One autograd over either kernel pair -----------------------------------------------


def _cpp_forward(*args) -> ActivateOutputs:
    return torch.ops.fastcae.activate_forward.default(*args)


def _cpp_backward(*args) -> Grads:
    return torch.ops.fastcae.activate_backward.default(*args)


KERNELS: dict[str, KernelPair] = {
    "cpp": KernelPair(_cpp_forward, _cpp_backward, _cpp_forward, _cpp_backward),
    "triton": KernelPair(triton_activate_forward, _triton_backward_op, _triton_forward, _triton_backward),
}


class ActivateFunction(torch.autograd.Function):
    """(z, N, activation, kernels) -> (h, p); the compiled form (no custom jvp)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(preact: Tensor, unit_norms_sq: Tensor, activation: str, kernels: str) -> ActivateOutputs:
        return KERNELS[kernels].forward(preact, unit_norms_sq, activation)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _preact, unit_norms_sq, activation, kernels = inputs
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(output[0], unit_norms_sq)
        ctx.activation = activation
        ctx.kernels = kernels

    @staticmethod
    def backward(ctx, grad_code: Tensor | None, grad_penalty: Tensor | None):
        code, unit_norms_sq = ctx.saved_tensors
        mask = tuple(ctx.needs_input_grad[:2])
        grads = _grads(mask, grad_code, grad_penalty, code, unit_norms_sq, ctx.activation, ctx.kernels)
        return (*grads, None, None)


def _grads(mask, grad_code, grad_penalty, code, unit_norms_sq, activation: str, kernels: str) -> Grads:
    """(dz, dN) where ``mask`` asks: the fused backward kernel, or the differentiable
    closed form where a graph of the gradient is needed."""
    if (grad_code is None and grad_penalty is None) or not any(mask):
        return None, None
    if graph_needed(grad_code, grad_penalty, code, unit_norms_sq):
        return activate_backward_closed_form(grad_code, grad_penalty, code, unit_norms_sq, activation, mask)
    return KERNELS[kernels].backward(grad_code, grad_penalty, code, unit_norms_sq, activation, list(mask))


class ActivateFunctionWithJvp(ActivateFunction):
    """ActivateFunction plus its forward-mode rule."""

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ActivateFunction.setup_context(ctx, inputs, output)
        ctx.save_for_forward(output[0], inputs[1])

    @staticmethod
    def jvp(ctx, preact_dot, norms_dot, _activation, _kernels):
        code, unit_norms_sq = ctx.saved_tensors
        return activate_jvp_closed_form(code, unit_norms_sq, (preact_dot, norms_dot), ctx.activation)


AUTOGRAD = OpAutograd(ActivateFunction, ActivateFunctionWithJvp)


def fused(kernels: str) -> ActivateFn:
    """The differentiable activate op over ``KERNELS[kernels]``: (z, N, activation) -> (h, p)."""
    return AUTOGRAD.op(KERNELS[kernels], kernels, "activate")


# --- The (B, U) views of z, and when h can go over z (CPU) ------------------------------


def units_view(t: Tensor, channels_last: bool) -> Tensor:
    """t (B, C, H, W) as (B, U) in its memory order: a view of a contiguous or a
    channels-last t (B, …) (channels_last says which), a copy of any other."""
    units = t.shape[1:].numel()  # not -1: an empty batch has no size to infer it from
    if channels_last:
        return t.permute(0, 2, 3, 1).reshape(t.shape[0], units)
    return t.reshape(t.shape[0], units)


def from_units(flat: Tensor, like: Tensor, channels_last: bool) -> Tensor:
    """The inverse of units_view: flat (B, U) as a tensor of like's shape and memory order."""
    if channels_last:
        batch, channels, height, width = like.shape
        return flat.view(batch, height, width, channels).permute(0, 3, 1, 2)
    return flat.view(like.shape)


def writes_in_place(preact: Tensor, channels_last: bool) -> bool:
    """Whether the CPU kernel ``activate_forward_`` can write h over ``preact`` (the
    convolutional layer's epilogue, fastcae/ops/conv_norms.py): a CPU tensor whose
    (B, U) view in memory order is a view (contiguous, or channels-last as flagged), in
    eager mode with no forward-mode AD, with the C++ extension built."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    dense = preact.is_contiguous(memory_format=layout)
    return (
        preact.device.type == "cpu"
        and dense
        and loading.extension() is not None
        and not traced()
        and torch.autograd.forward_ad._current_level < 0
    )


# Every backend's activate op, by backend name. "naive" has no epilogue of its
# own: the convolutional layer's naive backend forms the true Jacobian (fastcae/conv.py).
IMPLEMENTATIONS: dict[str, ActivateFn] = {
    "torch": activate_torch,
    "naive": activate_torch,
    "cpu": fused("cpp"),
    "cuda": fused("cpp"),
    "triton": fused("triton"),
}
