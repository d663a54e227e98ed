"""The conv_norms op: N, the squared norm of each output unit's row of a convolution's
Jacobian ∂z/∂x, from the kernel K alone, and the convolutional layer's CPU epilogue
with N and its gradient inside one autograd node.

For z = conv2d(x, K, ...), unit (c, i, j) reads the input through the taps (k, l)
of K_c that land inside x (0 ≤ i·s_h − p_h + k·d_h < H_in, the same in width;
one distinct input pixel per tap), so

    N_cij = Σ_{c', k, l} K[c, c', k, l]² · [tap (k, l) of (i, j) lands inside x],
    ∂N_cij/∂K[c, c', k, l] = 2 K[c, c', k, l] · [the same],

which is conv2d(1, K², same geometry) of one all-ones image. Two forms:

- :func:`conv2d_unit_norms_sq`: ATen ops, every device, differentiable
  (autograd gives dK): one small product of S = Σ_{c'} K² with the
  geometry's 0/1 tap mask;
- C++ (CPU: csrc/cpu/conv_norms_cpu.cpp), inside the kernel ops
  ``fastcae::conv2d_activate_`` (N, then the activate op's in-place forward on
  the layer's own output z) and ``conv2d_activate_backward`` (dz, then dK
  through N), which :func:`conv2d_epilogue_in_place` runs under one C++
  autograd node (csrc/conv_layer.cpp). In a CPU training step every small ATen
  op, autograd node and line of Python costs several microseconds; N's five
  ops and their backward measured ~0.05 of a first-layer conv autoencoder step.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .._constants import constant_tensors
from .._precision import acc_dtype
from . import loading
from .activate import from_units, units_view
from .reference import activate_backward_closed_form


class ConvGeometry(NamedTuple):
    """One convolution's geometry, each a (height, width) pair; ``pad_before`` is the
    zeros before the input on each axis (F.conv2d puts the odd pixel of "same" after
    it). The first four are the kernel ops' geometry arguments, in their order."""

    input_hw: tuple[int, int]
    stride: tuple[int, int]
    pad_before: tuple[int, int]
    dilation: tuple[int, int]
    output_hw: tuple[int, int]


def pads_before(
    padding: tuple[int, int] | str, kernel_hw: tuple[int, int], dilation: tuple[int, int]
) -> tuple[int, int]:
    """The zeros before the input on each axis for F.conv2d's ``padding``."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        return tuple((d * (k - 1)) // 2 for k, d in zip(kernel_hw, dilation, strict=True))
    return padding


@constant_tensors
def conv_geometry(
    input_hw: tuple[int, int],
    kernel_hw: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int] | str,
    dilation: tuple[int, int],
) -> ConvGeometry:
    """The geometry of F.conv2d(x, K, stride=stride, padding=padding, dilation=dilation)
    for x (…, H_in, W_in) and K (…, kH, kW), from validated pairs (padding: a pair, "same"
    or "valid"). Made once per argument set (a few µs of every layer call otherwise)."""
    pads = pads_before(padding, kernel_hw, dilation)
    output_hw = tuple(
        size if padding == "same" else (size + 2 * pad - dilate * (kernel - 1) - 1) // step + 1
        for size, kernel, step, pad, dilate in zip(input_hw, kernel_hw, stride, pads, dilation, strict=True)
    )
    return ConvGeometry(tuple(input_hw), stride, pads, dilation, output_hw)


def _inside_taps(
    input_size: int, output_size: int, kernel: int, stride: int, dilation: int, pad_before: int, device
) -> Tensor:
    """M (output_size, kernel): 1 where tap k of output position i lands inside the input
    (0 ≤ i·stride − pad_before + k·dilation < input_size), else 0."""
    position = torch.arange(output_size, device=device)[:, None] * stride - pad_before
    source = position + torch.arange(kernel, device=device)[None, :] * dilation
    return (source >= 0) & (source < input_size)


# Above this many entries (kH·kW·H_out·W_out) a geometry's tap mask is not formed
# and N comes from its row and column masks (two products instead of one).
MAX_TAP_MASK_ENTRIES = 1 << 22


@constant_tensors
def tap_masks(
    geometry: ConvGeometry, kernel_hw: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The masks of one geometry, in ``dtype``: rows M_h (H_out, kH), columns M_w (W_out, kW),
    and T (kH·kW, H_out·W_out), T[(k, l), (i, j)] = M_h[i, k] M_w[j, l], or None where it
    would have more than MAX_TAP_MASK_ENTRIES entries. Made once per geometry: about
    20 small ops, ~200 µs of a CPU forward."""
    rows, cols = (
        _inside_taps(size, out, kernel, step, dilate, pad, device).to(dtype)
        for size, out, kernel, step, pad, dilate in zip(
            geometry.input_hw, geometry.output_hw, kernel_hw, geometry.stride, geometry.pad_before,
            geometry.dilation, strict=True,
        )
    )  # fmt: skip
    taps = None
    if rows.numel() * cols.numel() <= MAX_TAP_MASK_ENTRIES:
        taps = (rows.t()[:, None, :, None] * cols.t()[None, :, None, :]).flatten(2).flatten(0, 1)
    return rows, cols, taps


def conv2d_unit_norms_sq(weight: Tensor, geometry: ConvGeometry, *, channels_last: bool = False) -> Tensor:
    """N (C_out, H_out, W_out) in ATen ops: the squared norm of each output unit's row of ∂z/∂x.

    With S = Σ_{c'} K² (C_out, kH·kW) (the groups only select which input
    channels a kernel has, and S sums them) and the geometry's tap mask
    T (kH·kW, H_out·W_out), one small product,

        N = S T   (or Nᵀ = Tᵀ Sᵀ, channels-last),

    and where T would be large, since a tap lands inside when it does so in
    both its row and its column, N_c = M_h S_c M_wᵀ with the row and column
    masks M_h (H_out, kH), M_w (W_out, kW). In the accumulation dtype,
    differentiable with respect to ``weight``; with ``channels_last`` its
    memory is in that order, (H_out, W_out, C_out), on either path.
    """
    compute = acc_dtype(weight.dtype)
    rows, cols, taps = tap_masks(geometry, tuple(weight.shape[2:]), compute, weight.device)
    tap_norms = weight.to(compute).square().sum(dim=1)  # S (C_out, kH, kW)
    out_channels, out_hw = weight.shape[0], geometry.output_hw
    if taps is None:
        norms = rows @ (tap_norms @ cols.t())  # (H_out, kH) @ (C_out, kH, W_out)
        return norms.permute(1, 2, 0).contiguous().permute(2, 0, 1) if channels_last else norms
    if channels_last:
        return (taps.t() @ tap_norms.view(out_channels, -1).t()).view(*out_hw, out_channels).permute(2, 0, 1)
    return (tap_norms.view(out_channels, -1) @ taps).view(out_channels, *out_hw)


def flat_units(norms: Tensor, channels_last: bool) -> Tensor:
    """N (C, H, W) as (U,) in z's memory order: a view, as conv2d_unit_norms_sq lays it out."""
    return (norms.permute(1, 2, 0) if channels_last else norms).reshape(-1)


if loading.extension() is not None:

    @torch.library.register_fake("fastcae::conv2d_activate_")
    def _(preact, weight, input_hw, stride, pad_before, dilation, activation, channels_last):
        acc = acc_dtype(preact.dtype)
        units = preact.shape[1:].numel()
        return preact.new_empty(preact.shape[:1], dtype=acc), preact.new_empty((units,), dtype=acc)

    @torch.library.register_fake("fastcae::conv2d_activate_backward")
    def _(grad_code, grad_penalty, code, unit_norms_sq, weight, *geometry_activation_layout_mask):
        output_mask = geometry_activation_layout_mask[-1]
        grad_preact = torch.empty_like(code) if output_mask[0] else None
        grad_weight = (
            torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else None
        )
        return grad_preact, grad_weight


def differentiable_epilogue_grads(
    grad_code: Tensor | None,
    grad_penalty: Tensor | None,
    code: Tensor,
    weight: Tensor,
    geometry: list[int],
    activation: str,
    channels_last: bool,
    mask: tuple[bool, bool],
) -> tuple[Tensor | None, Tensor | None]:
    """(dz, dK) of the layer's CPU epilogue in differentiable ops, for its C++ autograd
    node (csrc/conv_layer.cpp) where the backward must itself be differentiable: the
    activate op's closed-form backward with N in ATen ops, dK by autograd through N.
    ``geometry``: the kernel ops' (input_hw, stride, pad_before, dilation), flat."""
    pairs = [tuple(geometry[i : i + 2]) for i in range(0, 8, 2)]
    conv = ConvGeometry(*pairs, output_hw=tuple(code.shape[2:]))
    flat_grad_code = None if grad_code is None else units_view(grad_code, channels_last)
    with torch.enable_grad():
        norms = flat_units(conv2d_unit_norms_sq(weight, conv, channels_last=channels_last), channels_last)
        grad_preact, grad_norms = activate_backward_closed_form(
            flat_grad_code, grad_penalty, units_view(code, channels_last), norms, activation, mask
        )
        grad_weight = None
        if mask[1]:
            (grad_weight,) = torch.autograd.grad(norms, weight, grad_norms, create_graph=True)
    if grad_preact is not None:
        grad_preact = from_units(grad_preact, code, channels_last)
    return grad_preact, grad_weight


def conv2d_epilogue_in_place(
    preact: Tensor, weight: Tensor, geometry: ConvGeometry, activation: str, channels_last: bool
) -> tuple[Tensor, Tensor]:
    """The "cpu" backend's epilogue of the convolutional layer on z = conv2d(x, K, ...)
    (see activate.writes_in_place): (h, the same tensor as z, and p (B,)), differentiable
    with respect to z and K (through N), by the C++ autograd node over the kernel ops
    (``fastcae._C.conv2d_epilogue_in_place``, csrc/include/fastcae/conv_layer.h). Eager calls only."""
    epilogue = loading.extension().conv2d_epilogue_in_place
    return epilogue(preact, weight, *geometry[:4], activation, channels_last)
