"""The activation table (fastcae/activations.py) is the one source of the ids:
the C++ kernels' list and the Triton constants must agree with it, and its
derivatives written from h must agree with autograd's."""

import pytest
import torch

from fastcae.activations import ACTIVATION_NAMES, ACTIVATIONS
from fastcae.ops import loading


def test_ids_are_the_positions_in_the_table():
    assert [ACTIVATIONS[name].id for name in ACTIVATION_NAMES] == list(range(len(ACTIVATION_NAMES)))


@pytest.mark.skipif(loading.extension() is None, reason="fastcae._C is not built")
def test_the_cpp_kernels_list_the_same_activations_with_the_same_ids():
    assert loading.extension().activations() == [(name, ACTIVATIONS[name].id) for name in ACTIVATION_NAMES]


@pytest.mark.skipif(loading.triton_unavailable_reason() is not None, reason="triton unavailable")
def test_the_triton_kernels_read_the_same_ids():
    activations = loading.triton_kernels("activations")
    constants = {"sigmoid": activations.SIGMOID, "tanh": activations.TANH, "softplus": activations.SOFTPLUS,
                 "relu": activations.RELU}  # fmt: skip
    for name, constant in constants.items():
        assert getattr(constant, "value", constant) == ACTIVATIONS[name].id, name
    # identity is every kernel's `else` branch: its id must be the one no constant takes.
    assert ACTIVATIONS["identity"].id not in {getattr(c, "value", c) for c in constants.values()}


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_derivatives_from_the_code_match_autograd(activation):
    """slope_from_code(φ(z)) = φ'(z) and curvature_from_code(φ(z), φ'(z)) = φ''(z)."""
    act = ACTIVATIONS[activation]
    z = torch.linspace(-6, 6, 101, dtype=torch.float64)
    z = z[z.abs() > 1e-3].requires_grad_()  # relu has a kink at 0
    (slope,) = torch.autograd.grad(act.forward(z).sum(), z, create_graph=True)
    if slope.requires_grad:
        (curvature,) = torch.autograd.grad(slope.sum(), z, allow_unused=True, materialize_grads=True)
    else:  # a constant slope (identity)
        curvature = torch.zeros_like(slope)
    h = act.forward(z.detach())
    torch.testing.assert_close(act.slope_from_code(h), slope.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        act.curvature_from_code(h, act.slope(z.detach())), curvature, rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_nan_gives_a_nan_slope(activation):
    act = ACTIVATIONS[activation]
    nan = torch.tensor([float("nan")], dtype=torch.float64)
    assert torch.isnan(act.slope(nan)).all() and torch.isnan(act.slope_from_code(nan)).all()


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_tangent_from_code_is_the_slope_times_the_tangent_to_second_order(activation):
    """tangent_from_code(u, h) = u φ'(z) (broadcast over leading dims of u), NaN included,
    with first and second derivatives equal to those of u * slope_from_code(h)."""
    act = ACTIVATIONS[activation]
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(4, 5, generator=generator, dtype=torch.float64) * 3
    z = torch.where(z.abs() < 1e-3, z + 0.1, z)  # relu has a kink at 0
    h = act.forward(z).requires_grad_()
    u = torch.randn(2, 4, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(act.tangent_from_code(u, h), u * act.slope_from_code(h))
    if activation == "relu":  # its slope from the code jumps at h = 0, where half the codes are
        h = h.detach()
    torch.autograd.gradcheck(act.tangent_from_code, (u, h))
    torch.autograd.gradgradcheck(act.tangent_from_code, (u, h))
    nan = torch.tensor([float("nan")], dtype=torch.float64)
    assert torch.isnan(act.tangent_from_code(torch.ones(1, dtype=torch.float64), nan)).all()
