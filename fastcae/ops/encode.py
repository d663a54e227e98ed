"""The encode op: the encoder layer and its contractive penalty as one differentiable op.

    forward:   (x (B, D), W (H, D), b (H,)?) -> h = φ(x Wᵀ + b) (B, H), p_b = Σ_j φ'(z_bj)² ‖W_j‖² (B,)
    backward:  dz = g_h ⊙ φ' + 2 g_p φ' φ'' ‖W_j‖²
               dx = dz W,  dW = dzᵀ x + diag(2 Σ_b g_p φ'²) W,  db = Σ_b dz

Two layers, as in flash-attention's interface:

- Kernel ops, registered with torch.library (what torch.compile traces as
  opaque nodes): ``fastcae::encode_forward`` / ``encode_backward`` from the C++
  extension (csrc/encode.cpp; CPU and CUDA kernels) and
  ``fastcae::triton_encode_forward`` / ``triton_encode_backward`` (kernels/encode.py).
  This module registers their fake kernels and the vmap rule of the forwards.
  The forward returns ‖W_j‖² (H,) too, which the backward reuses.
- One ``torch.autograd.Function`` over them, shared by eager and compiled
  calls: it saves x, W, h and ‖W_j‖², runs the fused backward kernel, and
  where a graph of the gradient is needed (double backward, torch.func
  transforms) runs the closed-form backward of fastcae/ops/reference.py
  instead, whose ops autograd can differentiate again. Its forward-mode rule
  (jvp, jacfwd) is the closed-form tangent; vmap follows from the kernel ops'
  vmap rules (generate_vmap_rule).

``torch.library.register_autograd`` is not used for the autograd: the Function
it generates has no setup_context, which torch.func rejects.
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
)
from .reference import encode_backward_closed_form, encode_jvp_closed_form, encode_naive, encode_torch

EncodeOutputs = tuple[Tensor, Tensor, Tensor]  # h (B, H), p (B,), ‖W_j‖² (H,)
Grads = tuple[Tensor | None, Tensor | None, Tensor | None]
EncodeFn = Callable[[Tensor, Tensor, "Tensor | None", str], "tuple[Tensor, Tensor]"]


def _encode_forward_fake(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> EncodeOutputs:
    batch, hidden = x.shape[0], weight.shape[0]
    acc = acc_dtype(x.dtype)
    return x.new_empty((batch, hidden)), x.new_empty((batch,), dtype=acc), x.new_empty((hidden,), dtype=acc)


def _encode_forward_vmap(forward: Callable[..., EncodeOutputs]):
    """The vmap rule of a forward kernel op. A batch of inputs for one layer (W
    and b not batched) is one call over the flattened batch; a batch of layers
    (vmap over models' weights) is one fused call per layer."""

    def rule(info, in_dims, x, weight, bias, activation):
        x_dim, weight_dim, bias_dim = in_dims[:3]
        if weight_dim is None and bias_dim is None:
            xs = x.movedim(x_dim, 0)
            count, batch = xs.shape[:2]
            code, penalty, row_norms_sq = forward(
                xs.reshape(count * batch, xs.shape[2]), weight, bias, activation
            )
            return (code.view(count, batch, -1), penalty.view(count, batch), row_norms_sq), (0, 0, None)

        def layer(t: Tensor | None, dim: int | None, i: int) -> Tensor | None:
            return t if t is None or dim is None else t.select(dim, i)

        outputs = [
            forward(layer(x, x_dim, i), layer(weight, weight_dim, i), layer(bias, bias_dim, i), activation)
            for i in range(info.batch_size)
        ]
        return tuple(torch.stack(parts) for parts in zip(*outputs, strict=True)), (0, 0, 0)

    return rule


def _encode_backward_fake(
    grad_code, grad_penalty, x, weight, code, row_norms_sq, activation, output_mask, *, custom_op=False
) -> Grads:
    return fake_grads(x, (x.shape, weight.shape, weight.shape[:1]), output_mask, custom_op=custom_op)


# --- The Triton kernel ops (kernels/encode.py) ---------------------------------------------


def _triton_forward(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> EncodeOutputs:
    return loading.triton_kernels("encode").encode_forward(x, weight, bias, ACTIVATIONS[activation].id)


def _triton_backward(
    grad_code, grad_penalty, x, weight, code, row_norms_sq, activation, output_mask
) -> Grads:
    return loading.triton_kernels("encode").encode_backward(
        grad_code, grad_penalty, x, weight, code, row_norms_sq, ACTIVATIONS[activation].id, tuple(output_mask)
    )


@torch.library.custom_op("fastcae::triton_encode_forward", mutates_args=())
def triton_encode_forward(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> EncodeOutputs:
    """The fused Triton forward: (h, p, ‖W_j‖²)."""
    return _triton_forward(x, weight, bias, activation)


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
    """The fused Triton backward: (dx, dW, db); outputs not asked for in
    output_mask are empty tensors (a custom op cannot return None)."""
    grads = _triton_backward(grad_code, grad_penalty, x, weight, code, row_norms_sq, activation, output_mask)
    return to_custom_op_grads(grads, x)


triton_encode_forward.register_fake(_encode_forward_fake)
triton_encode_forward.register_vmap(_encode_forward_vmap(triton_encode_forward))


@triton_encode_backward.register_fake
def _(grad_code, grad_penalty, x, weight, code, row_norms_sq, activation, output_mask):
    args = (grad_code, grad_penalty, x, weight, code, row_norms_sq, activation, output_mask)
    return _encode_backward_fake(*args, custom_op=True)


def _triton_backward_op(
    grad_code, grad_penalty, x, weight, code, row_norms_sq, activation, output_mask
) -> Grads:
    grads = triton_encode_backward(
        grad_code, grad_penalty, x, weight, code, row_norms_sq, activation, output_mask
    )
    return from_custom_op_grads(grads, output_mask)


if loading.extension() is not None:
    torch.library.register_fake("fastcae::encode_forward")(_encode_forward_fake)
    torch.library.register_fake("fastcae::encode_backward")(_encode_backward_fake)
    torch.library.register_vmap(
        "fastcae::encode_forward", _encode_forward_vmap(torch.ops.fastcae.encode_forward)
    )


# --- One autograd over either kernel pair -----------------------------------------------


def _cpp_forward(x, weight, bias, activation) -> EncodeOutputs:
    return torch.ops.fastcae.encode_forward.default(x, weight, bias, activation)


def _cpp_backward(*args) -> Grads:
    return torch.ops.fastcae.encode_backward.default(*args)


KERNELS: dict[str, KernelPair] = {
    "cpp": KernelPair(_cpp_forward, _cpp_backward, _cpp_forward, _cpp_backward),
    "triton": KernelPair(triton_encode_forward, _triton_backward_op, _triton_forward, _triton_backward),
}


class EncodeFunction(torch.autograd.Function):
    """(x, W, b, activation, kernels) -> (h, p, ‖W_j‖²); ‖W_j‖² is not differentiable.

    Used as is under torch.compile (Dynamo cannot trace a custom jvp); eager
    calls use EncodeFunctionWithJvp, which adds the forward-mode rule.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        x: Tensor, weight: Tensor, bias: Tensor | None, activation: str, kernels: str
    ) -> EncodeOutputs:
        return KERNELS[kernels].forward(x, weight, bias, activation)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, bias, activation, kernels = inputs
        code, _penalty, row_norms_sq = output
        ctx.mark_non_differentiable(row_norms_sq)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight, code, row_norms_sq)
        ctx.activation = activation
        ctx.kernels = kernels
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_code: Tensor | None, grad_penalty: Tensor | None, _grad_row_norms_sq):
        x, weight, code, row_norms_sq = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        mask = (need_x, need_weight, need_bias and ctx.has_bias)
        if (grad_code is None and grad_penalty is None) or not any(mask):
            return None, None, None, None, None
        if graph_needed(grad_code, grad_penalty, x, weight, code):
            grads = encode_backward_closed_form(
                grad_code, grad_penalty, x, weight, code, ctx.activation, mask
            )
        else:
            grads = KERNELS[ctx.kernels].backward(
                grad_code, grad_penalty, x, weight, code, row_norms_sq, ctx.activation, list(mask)
            )
        return (*grads, None, None)


class EncodeFunctionWithJvp(EncodeFunction):
    """EncodeFunction plus its forward-mode rule (torch.func.jvp, jacfwd, forward_ad)."""

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        EncodeFunction.setup_context(ctx, inputs, output)
        ctx.save_for_forward(inputs[0], inputs[1], output[0])

    @staticmethod
    def jvp(ctx, x_dot, weight_dot, bias_dot, _activation, _kernels):
        x, weight, code = ctx.saved_tensors
        code_dot, penalty_dot = encode_jvp_closed_form(
            x, weight, code, (x_dot, weight_dot, bias_dot), ctx.activation
        )
        return code_dot, penalty_dot, None


AUTOGRAD = OpAutograd(EncodeFunction, EncodeFunctionWithJvp)


def fused(kernels: str) -> EncodeFn:
    """The differentiable encode op over ``KERNELS[kernels]``: (x, W, b, activation) -> (h, p)."""
    return AUTOGRAD.op(KERNELS[kernels], kernels, "encode", outputs=2)  # not ‖W_j‖²


# Every backend's encode op, by backend name (fastcae/dispatch.py lists the backends).
IMPLEMENTATIONS: dict[str, EncodeFn] = {
    "torch": encode_torch,
    "naive": encode_naive,
    "cpu": fused("cpp"),
    "cuda": fused("cpp"),
    "triton": fused("triton"),
}
