"""The convolutional encoder layer and its exact contractive penalty, in O(output) memory.

For h = φ(z), z = conv2d(x, K, b, stride, padding, dilation, groups), x (B, C_in,
H_in, W_in), output unit u = (c, i, j) depends on the inputs in its receptive
field through the kernel K_c, one distinct input pixel per tap, and taps that
land in the zero padding contribute nothing. So row u of the Jacobian
∂z_b/∂x_b holds the inside taps of K_c, and

    p_b = ‖∂h_b/∂x_b‖²_F = Σ_u φ'(z_bu)² N_u,   N_u = Σ_{taps of u inside x} K_c²

N depends only on K and the geometry: it is conv2d(1, K², same geometry) of
one all-ones image (the conv_norms op, fastcae/ops/conv_norms.py). The
penalty is then the encode op's epilogue with per-unit norms N
(fastcae/ops/activate.py) on z viewed as (B, C_out·H_out·W_out): the
convolution runs through ATen (cuDNN, oneDNN) and autograd, the epilogue and
its backward through the fused kernels; on the CPU, N and dK too, inside the
epilogue's autograd node.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from ._precision import acc_dtype
from ._validation import check_conv2d_args, check_reduction
from .activations import ACTIVATIONS
from .dispatch import AUTO_PREFERENCE, resolve_backend
from .functional import EncoderOutput, _autocast_dtype, _cast_for_autocast, _reduce
from .ops import activate as activate_op
from .ops import conv_norms, loading

Padding = int | tuple[int, int] | str


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


def _cpu_call(backend: object):
    """The C++ call of the whole layer (fastcae._C.conv2d_encode_cpu,
    csrc/include/fastcae/conv_layer.h) where this call could be one it serves, else
    None: not traced by torch.compile, no forward-mode AD, and the backend "cpu" or
    "auto" choosing it. The C++ side checks the rest, or declines."""
    if torch.compiler.is_compiling() or torch.autograd.forward_ad._current_level >= 0:
        return None
    if backend != "cpu" and (backend != "auto" or AUTO_PREFERENCE.get("cpu", ())[:1] != ("cpu",)):
        return None
    extension = loading.extension()
    return None if extension is None else extension.conv2d_encode_cpu


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
    # A plain call on the CPU runs what follows in one C++ call: this Python costs ~8%
    # of an image layer's forward (csrc/include/fastcae/conv_layer.h).
    cpu_call = _cpu_call(backend)
    if cpu_call is not None:
        encoded = cpu_call(x, weight, bias, stride, padding, dilation, groups, activation)
        if encoded is not None:
            return EncoderOutput(*encoded)
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
        stride, padding, dilation, _groups = geometry
        norms_geometry = conv_norms.conv_geometry(x.shape[2:], weight.shape[2:], stride, padding, dilation)
        if name == "cpu" and activate_op.writes_in_place(preact, channels_last):
            # z is this call's own: h goes over it, as an in-place activation would.
            epilogue = conv_norms.conv2d_epilogue_in_place
            return EncoderOutput(*epilogue(preact, weight, norms_geometry, activation, channels_last))
        # N (U,) in z's memory order.
        norms = conv_norms.conv2d_unit_norms_sq(weight, norms_geometry, channels_last=channels_last)
        flat_norms = conv_norms.flat_units(norms, channels_last)
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
