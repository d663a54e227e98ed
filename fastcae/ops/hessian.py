"""The CAE+H op: the higher-order contractive penalty from pre-activations, differentiable.

    forward:   (z (B, H), z̃ (n, B, H), ‖W_j‖² (H,)) -> p_b = (1/n) Σ_s Σ_j (φ'(z_bj) − φ'(z̃_sbj))² ‖W_j‖²
    backward:  with Δ = φ'(z) − φ'(z̃):
               dz = (2/n) g_b ‖W_j‖² φ''(z) Σ_s Δ,  dz̃_s = −(2/n) g_b ‖W_j‖² φ''(z̃_s) Δ_s,
               d‖W_j‖² = (1/n) Σ_b g_b Σ_s Δ²

The same shape as fastcae/ops/encode.py: kernel ops registered with
torch.library (``fastcae::hessian_forward`` / ``hessian_backward`` from the C++
extension, csrc/hessian.cpp; ``fastcae::triton_hessian_forward`` /
``triton_hessian_backward``, kernels/hessian.py) with their fakes and vmap
rules, and one autograd.Function over them whose backward is the fused kernel,
or the differentiable closed form where a graph of the gradient is needed.
Inputs are float32 or float64 (fastcae.penalty_hessian promotes half precision).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..activations import ACTIVATIONS
from . import loading
from .fused import (
    KernelPair,
    OpAutograd,
    fake_grads,
    from_custom_op_grads,
    graph_needed,
    to_custom_op_grads,
)
from .reference import hessian_backward_closed_form, hessian_jvp_closed_form, hessian_torch

Grads = tuple[Tensor | None, Tensor | None, Tensor | None]
HessianFn = Callable[[Tensor, Tensor, Tensor, str], Tensor]


def _hessian_forward_fake(
    preact: Tensor, noisy_preact: Tensor, row_norms_sq: Tensor, activation: str
) -> Tensor:
    return preact.new_empty((preact.shape[0],))


def _hessian_backward_fake(
    grad_penalty, preact, noisy_preact, row_norms_sq, activation, output_mask, *, custom_op=False
) -> Grads:
    shapes = (preact.shape, noisy_preact.shape, row_norms_sq.shape)
    return fake_grads(preact, shapes, output_mask, custom_op=custom_op)


def _hessian_forward_vmap(forward: Callable[..., Tensor]):
    """The vmap rule of a forward kernel op: with ‖W_j‖² not batched, the vmapped
    samples join the batch (one call); otherwise one call per vmapped element."""

    def rule(info, in_dims, preact, noisy_preact, row_norms_sq, activation):
        preact_dim, noisy_dim, norms_dim = in_dims[:3]
        count = info.batch_size
        if norms_dim is None:
            preact_b = (
                preact.movedim(preact_dim, 0)
                if preact_dim is not None
                else preact.expand(count, *preact.shape)
            )
            noisy_b = (
                noisy_preact.movedim(noisy_dim, 1)
                if noisy_dim is not None
                else noisy_preact.unsqueeze(1).expand(-1, count, -1, -1)
            )  # (n, V, B, H)
            batch, hidden = preact_b.shape[1:]
            penalty = forward(
                preact_b.reshape(count * batch, hidden),
                noisy_b.reshape(noisy_b.shape[0], count * batch, hidden),
                row_norms_sq,
                activation,
            )
            return penalty.view(count, batch), 0

        def element(t: Tensor, dim: int | None, i: int) -> Tensor:
            return t if dim is None else t.select(dim, i)

        penalties = [
            forward(
                element(preact, preact_dim, i),
                element(noisy_preact, noisy_dim, i),
                element(row_norms_sq, norms_dim, i),
                activation,
            )
            for i in range(count)
        ]
        return torch.stack(penalties), 0

    return rule


# --- The Triton kernel ops (kernels/hessian.py) --------------------------------------------


def _triton_forward(preact: Tensor, noisy_preact: Tensor, row_norms_sq: Tensor, activation: str) -> Tensor:
    return loading.triton_kernels("hessian").hessian_forward(
        preact, noisy_preact, row_norms_sq, ACTIVATIONS[activation].id
    )


def _triton_backward(grad_penalty, preact, noisy_preact, row_norms_sq, activation, output_mask) -> Grads:
    return loading.triton_kernels("hessian").hessian_backward(
        grad_penalty, preact, noisy_preact, row_norms_sq, ACTIVATIONS[activation].id, tuple(output_mask)
    )


@torch.library.custom_op("fastcae::triton_hessian_forward", mutates_args=())
def triton_hessian_forward(
    preact: Tensor, noisy_preact: Tensor, row_norms_sq: Tensor, activation: str
) -> Tensor:
    """CAE+H (B,) from z (B, H), z̃ (n, B, H), ‖W_j‖² (H,) with the fused Triton kernel."""
    return _triton_forward(preact, noisy_preact, row_norms_sq, activation)


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
    grads = _triton_backward(grad_penalty, preact, noisy_preact, row_norms_sq, activation, output_mask)
    return to_custom_op_grads(grads, preact)


triton_hessian_forward.register_fake(_hessian_forward_fake)
triton_hessian_forward.register_vmap(_hessian_forward_vmap(triton_hessian_forward))


@triton_hessian_backward.register_fake
def _(grad_penalty, preact, noisy_preact, row_norms_sq, activation, output_mask):
    args = (grad_penalty, preact, noisy_preact, row_norms_sq, activation, output_mask)
    return _hessian_backward_fake(*args, custom_op=True)


def _triton_backward_op(grad_penalty, preact, noisy_preact, row_norms_sq, activation, output_mask) -> Grads:
    grads = triton_hessian_backward(grad_penalty, preact, noisy_preact, row_norms_sq, activation, output_mask)
    return from_custom_op_grads(grads, output_mask)


if loading.extension() is not None:
    torch.library.register_fake("fastcae::hessian_forward")(_hessian_forward_fake)
    torch.library.register_fake("fastcae::hessian_backward")(_hessian_backward_fake)
    torch.library.register_vmap(
        "fastcae::hessian_forward", _hessian_forward_vmap(torch.ops.fastcae.hessian_forward)
    )


# --- One autograd over either kernel pair -----------------------------------------------


def _cpp_forward(*args) -> Tensor:
    return torch.ops.fastcae.hessian_forward.default(*args)


def _cpp_backward(*args) -> Grads:
    return torch.ops.fastcae.hessian_backward.default(*args)


KERNELS: dict[str, KernelPair] = {
    "cpp": KernelPair(_cpp_forward, _cpp_backward, _cpp_forward, _cpp_backward),
    "triton": KernelPair(triton_hessian_forward, _triton_backward_op, _triton_forward, _triton_backward),
}


class HessianFunction(torch.autograd.Function):
    """(z, z̃, ‖W_j‖², activation, kernels) -> p (B,); the compiled form (no custom jvp)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        preact: Tensor, noisy_preact: Tensor, row_norms_sq: Tensor, activation: str, kernels: str
    ) -> Tensor:
        return KERNELS[kernels].forward(preact, noisy_preact, row_norms_sq, activation)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        preact, noisy_preact, row_norms_sq, activation, kernels = inputs
        ctx.save_for_backward(preact, noisy_preact, row_norms_sq)
        ctx.activation = activation
        ctx.kernels = kernels

    @staticmethod
    def backward(ctx, grad_penalty: Tensor):
        mask = tuple(ctx.needs_input_grad[:3])
        if not any(mask):
            return None, None, None, None, None
        saved = ctx.saved_tensors
        if graph_needed(grad_penalty, *saved):
            grads = hessian_backward_closed_form(grad_penalty, *saved, ctx.activation, mask)
        else:
            grads = KERNELS[ctx.kernels].backward(grad_penalty, *saved, ctx.activation, list(mask))
        return (*grads, None, None)


class HessianFunctionWithJvp(HessianFunction):
    """HessianFunction plus its forward-mode rule."""

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        HessianFunction.setup_context(ctx, inputs, output)
        ctx.save_for_forward(*inputs[:3])

    @staticmethod
    def jvp(ctx, preact_dot, noisy_dot, norms_dot, _activation, _kernels):
        return hessian_jvp_closed_form(*ctx.saved_tensors, (preact_dot, noisy_dot, norms_dot), ctx.activation)


AUTOGRAD = OpAutograd(HessianFunction, HessianFunctionWithJvp)


def fused(kernels: str) -> HessianFn:
    """The differentiable CAE+H op over ``KERNELS[kernels]``: (z, z̃, ‖W_j‖², activation) -> p."""
    return AUTOGRAD.op(KERNELS[kernels], kernels, "hessian")


# Every backend's CAE+H op, by backend name.
IMPLEMENTATIONS: dict[str, HessianFn] = {
    "torch": hessian_torch,
    "naive": hessian_torch,
    "cpu": fused("cpp"),
    "cuda": fused("cpp"),
    "triton": fused("triton"),
}
