"""Argument checks for the public API, in one place.

Every check runs before any kernel. Messages name the argument and what was
expected; wrong types and dtypes raise TypeError, wrong shapes, devices and
values raise ValueError.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from .activations import ACTIVATION_NAMES

REDUCTIONS: tuple[str, ...] = ("none", "sum", "mean")
FLOATING_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _quoted(choices: Iterable[str]) -> str:
    return ", ".join(repr(c) for c in choices)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise naming ``name``."""
    if isinstance(value, str) and value in choices:
        return value
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {_quoted(choices)}; got {type(value).__name__}")
    raise ValueError(f"{name} must be one of {_quoted(choices)}; got {value!r}")


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int ≥ 1 (not a bool), else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_non_negative(name: str, value: object) -> float:
    """``value`` as a float if it is a real number ≥ 0 (not a bool, not NaN), else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


def check_positive(name: str, value: object) -> float:
    """``value`` as a float if it is a real number > 0 (not a bool, not NaN), else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def check_int_in_range(
    name: str, value: object, low: int, high: int, low_name: str = "", high_name: str = ""
) -> int:
    """Return ``value`` if it is an int with low ≤ value ≤ high; TypeError for a non-int,
    ValueError naming ``name`` (and the bounds, by ``low_name``/``high_name`` if given) otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        low_text = f"{low_name} = {low}" if low_name else str(low)
        high_text = f"{high_name} = {high}" if high_name else str(high)
        raise ValueError(f"{name} must satisfy {low_text} <= {name} <= {high_text}, got {value}")
    return value


def check_tensor(name: str, value: object) -> Tensor:
    """Return ``value`` if it is a floating-point tensor, else raise TypeError naming ``name``."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOATING_DTYPES:
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got {value.dtype}"
        )
    return value


def check_encoder_args(x: object, weight: object, bias: object, activation: object) -> None:
    """Validate the arguments of an encoder layer h = φ(x Wᵀ + b).

    Expects x (B, D), weight (H, D), bias (H,) or None, all floating point with
    one dtype and on one device, and a known activation name.
    """
    # Runs on every call, right after the previous call's kernels have flushed
    # the interpreter's data from the caches: a few attribute reads, no temporaries.
    x = check_tensor("x", x)
    weight = check_tensor("weight", weight)
    if x.dim() != 2:
        hint = " (add a batch dimension with x.unsqueeze(0))" if x.dim() == 1 else ""
        raise ValueError(f"x must be 2-D (batch, in_features), got shape {tuple(x.shape)}{hint}")
    if weight.dim() != 2:
        raise ValueError(
            f"weight must be 2-D (hidden_features, in_features), got shape {tuple(weight.shape)}"
        )
    if x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"x has {x.shape[1]} features (shape {tuple(x.shape)}) but weight expects {weight.shape[1]} "
            f"(shape {tuple(weight.shape)}): weight must be (hidden_features, in_features)"
        )
    dtype, device = x.dtype, x.device
    _check_like_x("weight", weight, dtype, device)
    if bias is not None:
        bias = check_tensor("bias", bias)
        if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        _check_like_x("bias", bias, dtype, device)
    check_choice("activation", activation, ACTIVATION_NAMES)


def check_chain_args(x: object, layers: Sequence[tuple[object, object, object]]) -> None:
    """Validate a stack of encoder layers (weight, bias, activation), bottom first, applied to x.

    Each layer as in :func:`check_encoder_args`, with in_features equal to the
    hidden_features of the layer below (D for the first).
    """
    if not layers:
        raise ValueError("an encoder needs at least one layer")
    check_encoder_args(x, *layers[0])
    for index, (weight, bias, activation) in enumerate(layers[1:], start=1):
        below = layers[index - 1][0].shape[0]
        weight = check_tensor(f"weight of layer {index}", weight)
        if weight.dim() != 2 or weight.shape[1] != below:
            raise ValueError(
                f"weight of layer {index} must be (hidden_features, {below}) to take the {below} codes of "
                f"layer {index - 1}, got shape {tuple(weight.shape)}"
            )
        _check_like_x(f"weight of layer {index}", weight, x.dtype, x.device)
        if bias is not None:
            bias = check_tensor(f"bias of layer {index}", bias)
            if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
                raise ValueError(
                    f"bias of layer {index} must have shape ({weight.shape[0]},), got {tuple(bias.shape)}"
                )
            _check_like_x(f"bias of layer {index}", bias, x.dtype, x.device)
        check_choice(f"activation of layer {index}", activation, ACTIVATION_NAMES)


def check_generator(generator: object, device: torch.device) -> None:
    """Accept None or a torch.Generator on ``device``'s type (where random draws for x are made)."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but x is on {device}")


def _check_like_x(name: str, tensor: Tensor, dtype: torch.dtype, device: torch.device) -> None:
    if tensor.dtype != dtype:
        raise TypeError(f"{name} has dtype {tensor.dtype} but x has {dtype}: all tensors need one dtype")
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device} but x is on {device}: all tensors need one device")


def check_reduction(reduction: object) -> str:
    return check_choice("reduction", reduction, REDUCTIONS)


def check_pair(name: str, value: object, *, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each ≥ minimum, as a pair (F.conv2d's convention)."""
    if type(value) is int and value >= minimum:  # the common case, on every call of a conv layer
        return value, value
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
    ):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum} in each dimension, got {value!r}")
    return int(pair[0]), int(pair[1])


CONV_PADDING_STRINGS: tuple[str, ...] = ("same", "valid")


def check_conv2d_args(
    x: object,
    weight: object,
    bias: object,
    stride: object,
    padding: object,
    dilation: object,
    groups: object,
    activation: object,
) -> tuple[tuple[int, int], str | tuple[int, int], tuple[int, int]]:
    """Validate a convolutional encoder layer h = φ(conv2d(x, K, b, ...)).

    Expects x (B, C_in, H_in, W_in), weight K (C_out, C_in/groups, kH, kW), bias
    (C_out,) or None, one floating dtype and device, the geometry as F.conv2d
    takes it (padding "same" only with stride 1) and a kernel that fits the
    padded input. Returns (stride, padding, dilation) normalized to pairs
    (padding stays a string if given as one).
    """
    x = check_tensor("x", x)
    weight = check_tensor("weight", weight)
    if x.dim() != 4:
        hint = " (add a batch dimension with x.unsqueeze(0))" if x.dim() == 3 else ""
        raise ValueError(f"x must be 4-D (batch, channels, height, width), got shape {tuple(x.shape)}{hint}")
    if weight.dim() != 4:
        raise ValueError(
            "weight must be 4-D (out_channels, in_channels / groups, kernel_height, kernel_width), "
            f"got shape {tuple(weight.shape)}"
        )
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"groups must be an int, got {type(groups).__name__}")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    out_channels, group_channels = weight.shape[:2]
    if x.shape[1] % groups or out_channels % groups:
        raise ValueError(
            f"groups = {groups} must divide both x's channels ({x.shape[1]}) and weight's out_channels "
            f"({out_channels})"
        )
    if group_channels * groups != x.shape[1]:
        raise ValueError(
            f"x has {x.shape[1]} channels but weight (shape {tuple(weight.shape)}) with groups = {groups} "
            f"expects {group_channels * groups}"
        )
    dtype, device = x.dtype, x.device
    _check_like_x("weight", weight, dtype, device)
    if bias is not None:
        bias = check_tensor("bias", bias)
        if bias.dim() != 1 or bias.shape[0] != out_channels:
            raise ValueError(f"bias must have shape ({out_channels},), got {tuple(bias.shape)}")
        _check_like_x("bias", bias, dtype, device)
    stride_pair = check_pair("stride", stride, minimum=1)
    dilation_pair = check_pair("dilation", dilation, minimum=1)
    if isinstance(padding, str):
        check_choice("padding", padding, CONV_PADDING_STRINGS)
        if padding == "same" and stride_pair != (1, 1):
            raise ValueError(f'padding="same" needs stride 1, got stride={stride!r}')
        padding_value: str | tuple[int, int] = padding
        pads = (0, 0) if padding == "valid" else None
    else:
        padding_value = pads = check_pair("padding", padding, minimum=0)
    check_choice("activation", activation, ACTIVATION_NAMES)
    if pads is not None:
        for axis, name in ((0, "height"), (1, "width")):
            extent = dilation_pair[axis] * (weight.shape[2 + axis] - 1) + 1
            padded = x.shape[2 + axis] + 2 * pads[axis]
            if extent > padded:
                raise ValueError(
                    f"weight's kernel spans {extent} pixels in {name} (kernel {weight.shape[2 + axis]}, "
                    f"dilation {dilation_pair[axis]}) but x's padded {name} is only {padded} "
                    f"({x.shape[2 + axis]} + 2 × padding {pads[axis]})"
                )
    return stride_pair, padding_value, dilation_pair
