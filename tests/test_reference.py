"""The closed form ("torch") and the "naive" backend against the true Jacobian.

This proves the reference that every fast backend is then tested against.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import make_inputs

import fastcae
from fastcae.activations import ACTIVATIONS


def true_jacobian_penalty(x, weight, bias, activation):
    """‖∂h_b/∂x_b‖²_F by torch.autograd.functional.jacobian, one sample at a time."""
    act = ACTIVATIONS[activation]
    penalties = []
    for sample in x:
        jac = torch.autograd.functional.jacobian(lambda s: act.forward(F.linear(s, weight, bias)), sample)
        penalties.append(jac.pow(2).sum())
    return torch.stack(penalties)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("backend", ["torch", "naive"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (6, 9, 4)])
def test_formula_matches_true_jacobian(activation, backend, bias, shape):
    x, weight, b = make_inputs(*shape, dtype=torch.float64, bias=bias, seed=sum(shape))
    h, p = fastcae.encode(x, weight, b, activation=activation, backend=backend)
    expected = true_jacobian_penalty(x, weight, b, activation)
    torch.testing.assert_close(p, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        h, ACTIVATIONS[activation].forward(F.linear(x, weight, b)), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_slope_matches_autograd(activation):
    """φ'(z) of the activation table equals autograd's derivative of φ."""
    act = ACTIVATIONS[activation]
    z = torch.linspace(-6, 6, 101, dtype=torch.float64)
    z = z[z.abs() > 1e-3].requires_grad_()  # relu is not differentiable at 0
    (expected,) = torch.autograd.grad(act.forward(z).sum(), z)
    torch.testing.assert_close(act.slope(z.detach()), expected, rtol=1e-12, atol=1e-14)


def test_sigmoid_penalty_is_the_cae_formula():
    """Rifai et al. (2011): Σ_j (h_j (1 - h_j))² Σ_i W_ji²."""
    x, weight, b = make_inputs(4, 6, 5, dtype=torch.float64)
    h = torch.sigmoid(x @ weight.t() + b)
    expected = ((h * (1 - h)) ** 2 * (weight**2).sum(dim=1)).sum(dim=1)
    torch.testing.assert_close(fastcae.penalty(x, weight, b, reduction="none", backend="torch"), expected)
