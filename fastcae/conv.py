"""The convolutional encoder layer and its exact contractive penalty, in O(output) memory.

For h = φ(z), z = conv2d(x, K, b, stride, padding, dilation, groups), x (B, C_in,
H_in, W_in), output unit u = (c, i, j) depends on the inputs in its receptive
field through the kernel K_c, one distinct input pixel per tap, and taps that
land in the zero padding contribute nothing. So row u of the Jacobian
∂z_b/∂x_b holds the inside taps of K_c, and

    p_b = ‖∂h_b/∂x_b‖²_F = Σ_u φ'(z_bu)² N_u,   N_u = Σ_{taps of u inside x} K_c²

N depends only on K and the geometry: it is conv2d(1, K², same geometry) of
one all-ones image, computed as one small product of Σ_{c'} K² with the
geometry's tap mask (conv2d_unit_norms_sq), differentiable to K. The
penalty is then the encode op's epilogue with per-unit norms N
(fastcae/ops/activate.py) on z viewed as (B, C_out·H_out·W_out): the
convolution runs through ATen (cuDNN, oneDNN) and autograd, the epilogue and
its backward through the fused kernels.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from ._constants import constant_tensors
from ._precision import acc_dtype
from ._validation import check_conv2d_args, check_reduction
from .activations import ACTIVATIONS
from .dispatch import resolve_backend
from .functional import EncoderOutput, _autocast_dtype, _cast_for_autocast, _reduce
from .ops import activate as activate_op

Padding = int | tuple[int, int] | str


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
def _tap_masks(
    input_hw: tuple[int, int],
    kernel_hw: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int] | str,
    dilation: tuple[int, int],
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The masks of one geometry, in ``dtype``: rows M_h (H_out, kH), columns M_w (W_out, kW),
    and T (kH·kW, H_out·W_out), T[(k, l), (i, j)] = M_h[i, k] M_w[j, l], or None where it
    would have more than MAX_TAP_MASK_ENTRIES entries. Made once per geometry: about
    20 small ops, ~200 µs of a CPU forward."""
    masks = []
    for size, kernel, step, pad, dilate in zip(
        input_hw, kernel_hw, stride, _pads(padding, kernel_hw, dilation), dilation, strict=True
    ):
        extent = dilate * (kernel - 1) + 1
        out = size if padding == "same" else (size + 2 * pad - extent) // step + 1
        masks.append(_inside_taps(size, out, kernel, step, dilate, pad, device).to(dtype))
    rows, cols = masks
    taps = None
    if rows.numel() * cols.numel() <= MAX_TAP_MASK_ENTRIES:
        taps = (rows.t()[:, None, :, None] * cols.t()[None, :, None, :]).flatten(2).flatten(0, 1)
    return rows, cols, taps


def _pads(
    padding: tuple[int, int] | str, kernel_hw: tuple[int, int], dilation: tuple[int, int]
) -> tuple[int, int]:
    """The zeros before the input on each axis; F.conv2d puts the odd pixel of "same" after it."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        return tuple((d * (k - 1)) // 2 for k, d in zip(kernel_hw, dilation, strict=True))
    return padding


def conv2d_unit_norms_sq(
    weight: Tensor,
    input_size: tuple[int, int, int],
    stride: tuple[int, int],
    padding: tuple[int, int] | str,
    dilation: tuple[int, int],
    groups: int,
    *,
    channels_last: bool = False,
) -> Tensor:
    """N (C_out, H_out, W_out): the squared norm of each output unit's row of ∂z/∂x.

    N_cij = Σ_{c', k, l} K[c, c', k, l]² · [tap (k, l) of (i, j) lands inside x],
    which is conv2d(1, K², same geometry) of an all-ones image. With
    S = Σ_{c'} K² (C_out, kH·kW) (the groups only select which input channels a
    kernel has, and S sums them) and the geometry's 0/1 tap mask
    T (kH·kW, H_out·W_out), that is one small product,

        N = S T   (or Nᵀ = Tᵀ Sᵀ, channels-last),

    and where T would be large, since a tap lands inside when it does so in
    both its row and its column, N_c = M_h S_c M_wᵀ with the row and column
    masks M_h (H_out, kH), M_w (W_out, kW). In the accumulation dtype,
    differentiable with respect to ``weight``; with ``channels_last`` its
    memory is in that order, (H_out, W_out, C_out), on either path.
    """
    compute = acc_dtype(weight.dtype)
    kernel_hw = tuple(weight.shape[2:])
    rows, cols, taps = _tap_masks(
        tuple(input_size[1:]), kernel_hw, stride, padding, dilation, compute, weight.device
    )
    tap_norms = weight.to(compute).square().sum(dim=1)  # S (C_out, kH, kW)
    out_channels, out_hw = weight.shape[0], (rows.shape[0], cols.shape[0])
    if taps is None:
        norms = rows @ (tap_norms @ cols.t())  # (H_out, kH) @ (C_out, kH, W_out)
        return norms.permute(1, 2, 0).contiguous().permute(2, 0, 1) if channels_last else norms
    if channels_last:
        return (taps.t() @ tap_norms.view(out_channels, -1).t()).view(*out_hw, out_channels).permute(2, 0, 1)
    return (tap_norms.view(out_channels, -1) @ taps).view(out_channels, *out_hw)


def _is_channels_last(preact: Tensor) -> bool:
    """Whether z (B, C, H, W) is laid out channels-last (and not also contiguous)."""
    return (
        not torch._C._are_functorch_transforms_active()
        and not preact.is_contiguous()
        and preact.is_contiguous(memory_format=torch.channels_last)
    )


def _encode_conv2d_naive(
    x: Tensor, weight: Tensor, bias: Tensor | None, geometry: tuple, activation: str
) -> tuple[Tensor, Tensor]:
    """‖∂h_b/∂x_b‖²_F of the true per-sample Jacobian (B, C_out, H_out, W_out, C_in, H_in, W_in)."""
    act = ACTIVATIONS[activation]
    if x.shape[0] == 0:  # vmap cannot map over an empty batch
        code = act.forward(F.conv2d(x, weight, bias, *geometry))
        return code, code.new_zeros((0,), dtype=acc_dtype(x.dtype))

    def code_of(sample: Tensor) -> tuple[Tensor, Tensor]:
        code = act.forward(F.conv2d(sample.unsqueeze(0), weight, bias, *geometry)[0])
        return code, code

    jacobian, code = torch.func.vmap(torch.func.jacrev(code_of, has_aux=True))(x)
    penalty = jacobian.to(acc_dtype(x.dtype)).pow(2).flatten(1).sum(dim=1)
    return code, penalty


def encode_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: Padding = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    activation: str = "sigmoid",
    backend: str = "auto",
) -> EncoderOutput:
    """A convolutional encoder layer and the exact contractive penalty of every sample.

    .. math::
        h = φ(\\mathrm{conv2d}(x, K, b)), \\qquad
        p_b = \\|∂h_b/∂x_b\\|_F^2 = \\sum_{c,i,j} φ'(z_{bcij})^2 N_{cij}

    with N_cij the sum of K_c² over the taps of unit (c, i, j) that land inside
    the (zero-padded) input. No Jacobian is formed: memory is O(output).

    Args:
        x: inputs, shape (B, C_in, H_in, W_in).
        weight: kernel K, shape (C_out, C_in / groups, kH, kW) (``nn.Conv2d.weight``).
        bias: shape (C_out,), or None.
        stride, padding, dilation, groups: as in ``F.conv2d`` (padding: an int, a
            pair, "valid", or "same" with stride 1); the padding is zeros.
        activation: φ, as in :func:`fastcae.encode`.
        backend: as in :func:`fastcae.encode`. The convolution runs through
            ATen; "cpu", "cuda" and "triton" run the epilogue (h, p and their
            backward) in the encode op's fused pass, "torch" in eager PyTorch,
            "naive" forms the true Jacobian. "auto" takes the first fused
            backend of the device (cpu; triton, then cuda) without timing: the
            epilogue is one elementwise pass on either.

    Returns:
        ``EncoderOutput(code, penalty)``: h (B, C_out, H_out, W_out) in x's dtype,
        p (B,) in float32 (float64 for float64 inputs); differentiable with
        respect to x, weight and bias. Under torch.autocast the inputs are cast
        like F.conv2d's.

    Raises:
        TypeError: non-tensor or non-floating inputs, mixed dtypes, geometry of the wrong type.
        ValueError: wrong ranks or shapes, channels not divisible by groups, a
            kernel larger than the padded input, padding "same" with a stride,
            unknown activation or backend.
    """
    geometry = check_conv2d_args(x, weight, bias, stride, padding, dilation, groups, activation)
    geometry = (*geometry, groups)
    autocast_dtype = _autocast_dtype(x.device.type)
    autocast_off = contextlib.nullcontext()
    if autocast_dtype is not None:
        x, weight, bias = _cast_for_autocast((x, weight, bias), autocast_dtype)
        autocast_off = torch.autocast(x.device.type, enabled=False)
    name = resolve_backend(backend, x, timed=False)
    with autocast_off:  # inputs are cast already; p accumulates in float32
        if name == "naive":
            return EncoderOutput(*_encode_conv2d_naive(x, weight, bias, geometry, activation))
        preact = F.conv2d(x, weight, bias, *geometry)
        channels_last = _is_channels_last(preact)
        input_size = tuple(x.shape[1:])
        unit_norms_sq = conv2d_unit_norms_sq(weight, input_size, *geometry, channels_last=channels_last)
        # N (U,) in z's memory order: a view, as conv2d_unit_norms_sq laid it out so.
        flat_norms = (unit_norms_sq.permute(1, 2, 0) if channels_last else unit_norms_sq).reshape(-1)
        if name == "cpu" and activate_op.writes_in_place(preact, channels_last):
            # z is this call's own: h goes over it, as an in-place activation would.
            code, penalty = activate_op.activate_in_place(preact, flat_norms, activation, channels_last)
            return EncoderOutput(code, penalty)
        flat_preact = activate_op.units_view(preact, channels_last)
        flat_code, penalty = activate_op.IMPLEMENTATIONS[name](flat_preact, flat_norms, activation)
    return EncoderOutput(activate_op.from_units(flat_code, preact, channels_last), penalty)


def penalty_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: Padding = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    activation: str = "sigmoid",
    reduction: str = "mean",
    backend: str = "auto",
) -> Tensor:
    """The contractive penalty ‖∂h/∂x‖²_F of the convolutional layer h = φ(conv2d(x, K, b)).

    Args:
        x, weight, bias, stride, padding, dilation, groups, activation, backend:
            as in :func:`encode_conv2d`.
        reduction: "none" (shape (B,)), "sum", or "mean" over the batch (0 for an empty batch).

    Returns:
        The penalty, float32 (float64 for float64 inputs), differentiable with
        respect to x, weight and bias.
    """
    check_reduction(reduction)
    per_sample = encode_conv2d(
        x, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups,
        activation=activation, backend=backend,
    ).penalty  # fmt: skip
    return _reduce(per_sample, reduction)
