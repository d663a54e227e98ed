"""The C++ backends ("cpu", and "cuda" when compiled in): the ops
``torch.ops.fastcae.encode_forward`` / ``encode_backward`` of ``fastcae._C``.

The schemas, kernels (one TORCH_LIBRARY_IMPL per device) and the autograd
formula are registered in C++ (csrc/ops.cpp); this module adds the fake (meta)
implementations that let torch.compile trace through the ops. The fused
forward is one differentiable op:

    forward:  (x, W, b) -> (h, p, ‖W_j‖²)       saves x, W, h, ‖W_j‖²
    backward: dz = g_h ⊙ φ' + 2 g_p φ' φ'' ‖W_j‖²
              dx = dz W,  dW = dzᵀ x + diag(2 Σ_b g_p φ'²) W,  db = Σ_b dz
"""

from __future__ import annotations

import torch
from torch import Tensor

from .reference import empty_encode_outputs

try:
    from .. import _C  # registers torch.ops.fastcae.* as a side effect
except ImportError as exc:  # the package works without its extension: "torch"/"naive" remain
    _C = None
    LOAD_ERROR: str | None = f"the C++ extension fastcae._C could not be imported ({exc})"
else:
    LOAD_ERROR = None


def built_with_cuda() -> bool:
    return _C is not None and _C.built_with_cuda()


def encode_extension(
    x: Tensor, weight: Tensor, bias: Tensor | None, activation: str
) -> tuple[Tensor, Tensor]:
    """h (B, H) and p (B,) from the fused C++/CUDA op of x's device."""
    code, penalty, _row_norms_sq = torch.ops.fastcae.encode_forward.default(x, weight, bias, activation)
    return code, penalty


def hessian_extension(preact: Tensor, noisy_preact: Tensor, row_norms_sq: Tensor, activation: str) -> Tensor:
    """CAE+H (B,) from z (B, H), z̃ (n, B, H), ‖W_j‖² (H,) with the fused C++/CUDA op."""
    return torch.ops.fastcae.hessian_forward(preact, noisy_preact, row_norms_sq, activation)


def _encode_forward_fake(
    x: Tensor, weight: Tensor, bias: Tensor | None, activation: str
) -> tuple[Tensor, Tensor, Tensor]:
    return empty_encode_outputs(x, weight)


def _encode_backward_fake(
    grad_code: Tensor | None,
    grad_penalty: Tensor | None,
    x: Tensor,
    weight: Tensor,
    code: Tensor,
    row_norms_sq: Tensor,
    activation: str,
    output_mask: list[bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    need_x, need_weight, need_bias = output_mask
    return (
        x.new_empty(x.shape) if need_x else None,
        weight.new_empty(weight.shape) if need_weight else None,
        weight.new_empty((weight.shape[0],)) if need_bias else None,
    )


def _hessian_forward_fake(
    preact: Tensor, noisy_preact: Tensor, row_norms_sq: Tensor, activation: str
) -> Tensor:
    return preact.new_empty((preact.shape[0],))


def _hessian_backward_fake(grad_penalty, preact, noisy_preact, row_norms_sq, activation, output_mask):
    shapes = (preact.shape, noisy_preact.shape, row_norms_sq.shape)
    return tuple(
        preact.new_empty(shape) if need else None for shape, need in zip(shapes, output_mask, strict=True)
    )


def _hessian_setup_context(ctx, inputs, output) -> None:
    preact, noisy_preact, row_norms_sq, activation = inputs
    ctx.save_for_backward(preact, noisy_preact, row_norms_sq)
    ctx.activation = activation


def _hessian_backward(ctx, grad_penalty: Tensor):
    mask = list(ctx.needs_input_grad[:3])
    if not any(mask):
        return None, None, None, None
    grads = torch.ops.fastcae.hessian_backward(grad_penalty, *ctx.saved_tensors, ctx.activation, mask)
    return (*grads, None)


if _C is not None:
    torch.library.register_fake("fastcae::encode_forward")(_encode_forward_fake)
    torch.library.register_fake("fastcae::encode_backward")(_encode_backward_fake)
    torch.library.register_fake("fastcae::hessian_forward")(_hessian_forward_fake)
    torch.library.register_fake("fastcae::hessian_backward")(_hessian_backward_fake)
    torch.library.register_autograd(
        "fastcae::hessian_forward", _hessian_backward, setup_context=_hessian_setup_context
    )
