"""Shared test helpers: input factories, the float64 reference and tolerances."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from fastcae.dispatch import BACKENDS
from fastcae.ops.reference import encode_torch

# (rtol, atol as a fraction of the reference's largest magnitude) per dtype:
# float32 ≤ 1e-5 relative with IEEE math, bf16/fp16 ≤ 2e-2. The absolute floor
# is there because elements near 0 inherit the GEMM's rounding error, which
# scales with the magnitude of the whole dot product, not of its result.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (2e-2, 2e-2),
}


DEVICES: list[str] = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def available_backends(device: str = "cpu") -> list[str]:
    """Named backends that can run on ``device`` here."""
    device_type = torch.device(device).type
    return [
        name
        for name, backend in BACKENDS.items()
        if backend.unavailable_reason() is None
        and (backend.device_types is None or device_type in backend.device_types)
    ]


def skip_unless_supported(backend: str, dtype: torch.dtype) -> None:
    """Skip a test for a dtype the backend does not take here (e.g. bfloat16 under the Triton interpreter)."""
    if dtype not in BACKENDS[backend].dtypes:
        pytest.skip(f"backend {backend!r} does not take {dtype} here")


def make_inputs(
    batch: int,
    in_features: int,
    hidden: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    bias: bool = True,
    layout: str = "contiguous",
    seed: int = 0,
    requires_grad: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Fresh random (x, weight, bias) with nonzero values.

    ``layout``: "contiguous"; "transposed" (x and weight are transposed views of
    column-major storage); "sliced" (every other column of wider tensors, bias
    a strided slice).
    Weights are scaled like nn.Linear's init so pre-activations are O(1).
    """
    gen = torch.Generator().manual_seed(seed)
    scale = 2.0 / max(in_features, 1) ** 0.5

    def rand(*shape: int, multiplier: float = 1.0) -> Tensor:
        values = torch.randn(*shape, generator=gen, dtype=torch.float64) * multiplier
        return values.to(dtype=dtype).to(device)  # rounded on the CPU, before any layout trick

    if layout == "contiguous":
        x = rand(batch, in_features)
        weight = rand(hidden, in_features, multiplier=scale)
        b = rand(hidden, multiplier=0.5)
    elif layout == "transposed":
        x = rand(in_features, batch).t()
        weight = rand(in_features, hidden, multiplier=scale).t()
        b = rand(hidden, multiplier=0.5)
    elif layout == "sliced":
        x = rand(batch, 2 * in_features)[:, ::2]
        weight = rand(hidden, 2 * in_features, multiplier=scale)[:, 1::2]
        b = rand(2 * hidden, multiplier=0.5)[::2]
    else:
        raise ValueError(f"unknown layout {layout!r}")
    if not bias:
        b = None
    if requires_grad:
        for t in (x, weight, b):
            if t is not None:
                t.requires_grad_()
    return x, weight, b


def reference(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> tuple[Tensor, Tensor]:
    """h and p in float64 from the inputs' values (the "torch" closed form, itself
    checked against the true Jacobian in test_reference.py)."""

    def to64(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.detach().cpu().to(torch.float64)

    return encode_torch(to64(x), to64(weight), to64(bias), activation)


def assert_close(
    actual: Tensor, expected: Tensor, dtype: torch.dtype, *, what: str = "", scale: float | None = None
) -> None:
    """Compare with the float64 reference: relative tolerance of the dtype, an
    absolute floor scaled by the reference's magnitude (or by ``scale``: the size of
    the terms of a sum that cancels, whose rounding errors the result inherits),
    NaN never passing."""
    rtol, atol_fraction = TOLERANCES[dtype]
    expected = expected.to(torch.float64)
    actual = actual.detach().to(device="cpu", dtype=torch.float64)
    expected = expected.detach().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert not torch.isnan(actual).any(), f"{what}: NaN in result"
    if scale is None:
        scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(
        actual, expected, rtol=rtol, atol=atol_fraction * max(scale, 1e-30), msg=lambda m: f"{what}: {m}"
    )
