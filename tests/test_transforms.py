"""torch.func transforms and higher-order derivatives of the fused ops, on every backend.

Every fused backend must give the values of the "torch" backend (plain
autograd on the closed form) under grad, vjp, jacrev, jacfwd, jvp, vmap (over
inputs, over a batch of models' weights, and vmap(grad) per-sample
gradients), functional_call, hessian, forward-mode AD, and double backward
(gradgradcheck in float64).

Which path runs (tested at the end): a plain forward launches the forward
kernel; vmap runs it through the kernel op's vmap rule (one call over the
flattened batch); an eager backward launches the fused backward kernel;
double backward and torch.func transforms run the closed-form backward of
fastcae/ops/reference.py (differentiable again); jvp/jacfwd use the closed-form
tangent.
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from helpers import DEVICES, available_backends, make_inputs

import fastcae
from fastcae.activations import ACTIVATION_NAMES
from fastcae.nn import ContractiveEncoder
from fastcae.ops import encode as encode_op
from fastcae.ops.fused import KernelPair

FUSED = [(d, b) for d in DEVICES for b in available_backends(d) if b not in ("torch", "naive")]
IDS = [f"{d}-{b}" for d, b in FUSED]
DTYPE = torch.float64


def problem(device, seed=0, batch=3, in_features=4, hidden=5):
    x, weight, bias = make_inputs(batch, in_features, hidden, dtype=DTYPE, device=device, seed=seed)
    return x, weight, bias


def encode(backend, activation):
    def run(x, weight, bias):
        return fastcae.encode(x, weight, bias, activation=activation, backend=backend)

    return run


def loss_of(backend, activation):
    """A scalar that uses h and p, so every term of the backward matters."""

    def loss(x, weight, bias):
        h, p = encode(backend, activation)(x, weight, bias)
        return (h.sin().sum(dim=1) + p).sum()

    return loss


TRANSFORMS = {
    "grad": lambda f, x, w, b: torch.func.grad(f, argnums=(0, 1, 2))(x, w, b),
    "vjp": lambda f, x, w, b: torch.func.vjp(f, x, w, b)[1](torch.tensor(1.0, dtype=DTYPE, device=x.device)),
    "jacrev": lambda f, x, w, b: torch.func.jacrev(f, argnums=(0, 1))(x, w, b),
    "jacfwd": lambda f, x, w, b: torch.func.jacfwd(f, argnums=(0, 1))(x, w, b),
    "jvp": lambda f, x, w, b: torch.func.jvp(f, (x, w, b), (x.cos(), w.sin(), b.cos())),
    "hessian": lambda f, x, w, b: torch.func.hessian(f, argnums=1)(x, w, b),
}


@pytest.mark.parametrize(("device", "backend"), FUSED, ids=IDS)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_transform_matches_the_torch_backend(device, backend, activation, transform):
    x, weight, bias = problem(device, seed=len(activation))
    got = TRANSFORMS[transform](loss_of(backend, activation), x, weight, bias)
    want = TRANSFORMS[transform](loss_of("torch", activation), x, weight, bias)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(("device", "backend"), FUSED, ids=IDS)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_vmap_over_inputs_and_over_models(device, backend, activation):
    x, weight, bias = problem(device, seed=1)
    many_x = torch.stack([x, 2 * x, -x])  # (3, B, D)
    many_weights = torch.stack([weight, 0.5 * weight, weight.flip(0)])  # 3 models
    many_biases = torch.stack([bias, -bias, 0 * bias])
    fused, reference = encode(backend, activation), encode("torch", activation)
    over_inputs = torch.func.vmap(fused, in_dims=(0, None, None))(many_x, weight, bias)
    torch.testing.assert_close(
        over_inputs, torch.func.vmap(reference, in_dims=(0, None, None))(many_x, weight, bias)
    )
    over_models = torch.func.vmap(fused, in_dims=(None, 0, 0))(x, many_weights, many_biases)
    torch.testing.assert_close(
        over_models, torch.func.vmap(reference, in_dims=(None, 0, 0))(x, many_weights, many_biases)
    )
    both = torch.func.vmap(fused)(many_x, many_weights, many_biases)
    torch.testing.assert_close(both, torch.func.vmap(reference)(many_x, many_weights, many_biases))


@pytest.mark.parametrize(("device", "backend"), FUSED, ids=IDS)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_per_sample_gradients(device, backend, activation):
    """vmap(grad): the gradient of each sample's loss with respect to the shared weights."""
    x, weight, bias = problem(device, seed=2, batch=4)

    def sample_loss(backend):
        def loss(weight, bias, sample):
            h, p = encode(backend, activation)(sample.unsqueeze(0), weight, bias)
            return h.sin().sum() + p.sum()

        return loss

    per_sample = torch.func.vmap(
        torch.func.grad(sample_loss(backend), argnums=(0, 1)), in_dims=(None, None, 0)
    )
    expected = torch.func.vmap(torch.func.grad(sample_loss("torch"), argnums=(0, 1)), in_dims=(None, None, 0))
    got = per_sample(weight, bias, x)
    assert got[0].shape == (4, *weight.shape)
    torch.testing.assert_close(got, expected(weight, bias, x))


@pytest.mark.parametrize(("device", "backend"), FUSED, ids=IDS)
def test_functional_call_and_the_jacobian_of_a_module(device, backend):
    """torch.func.functional_call over a ContractiveEncoder, and jacrev of its code:
    the analysis the CAE papers do on a trained model."""
    torch.manual_seed(0)
    layer = ContractiveEncoder(4, 5, backend=backend).to(device=device, dtype=DTYPE)
    reference = ContractiveEncoder(4, 5, backend="torch").to(device=device, dtype=DTYPE)
    reference.load_state_dict(layer.state_dict())
    params = dict(layer.named_parameters())
    x = torch.randn(3, 4, dtype=DTYPE, device=device)

    def penalty_of(module):
        return lambda params, x: torch.func.functional_call(module, params, (x,)).penalty.sum()

    torch.testing.assert_close(
        torch.func.grad(penalty_of(layer))(params, x), torch.func.grad(penalty_of(reference))(params, x)
    )
    jacobian = torch.func.jacrev(lambda x: layer(x).code)(x)
    torch.testing.assert_close(jacobian, torch.func.jacrev(lambda x: reference(x).code)(x))
    # ‖J_b‖²_F from the full Jacobian is the penalty.
    per_sample = torch.einsum("bhbd->bhd", jacobian).pow(2).sum(dim=(1, 2))
    torch.testing.assert_close(per_sample, layer(x).penalty)


@pytest.mark.parametrize(("device", "backend"), FUSED, ids=IDS)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_forward_mode_ad(device, backend, activation):
    x, weight, bias = problem(device, seed=3)
    tangents = (torch.randn_like(x), torch.randn_like(weight), torch.randn_like(bias))
    results = []
    for name in (backend, "torch"):
        with fwAD.dual_level():
            duals = [fwAD.make_dual(p, t) for p, t in zip((x, weight, bias), tangents, strict=True)]
            h, p = encode(name, activation)(*duals)
            results.append([fwAD.unpack_dual(h).tangent, fwAD.unpack_dual(p).tangent])
    torch.testing.assert_close(results[0], results[1])


def _away_from_relu_kink(x, weight, bias):
    with torch.no_grad():
        z = x @ weight.t() + bias
        bias.add_(torch.where(z.abs().min(dim=0).values < 0.05, 0.3, 0.0))
    assert (x @ weight.t() + bias).abs().min() > 1e-3


@pytest.mark.parametrize(("device", "backend"), FUSED, ids=IDS)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_gradgradcheck(device, backend, activation):
    """Double backward in float64 of encode (h and p), penalty and penalty_hessian."""
    x, weight, bias = (t.requires_grad_() for t in problem(device, seed=4))
    if activation == "relu":
        _away_from_relu_kink(x, weight, bias)
    inputs = (x, weight, bias)
    code_and_penalty = loss_of(backend, activation)

    def penalty(*t):
        return fastcae.penalty(*t, activation=activation, reduction="none", backend=backend)

    def hessian(*t):
        generator = torch.Generator(device=device).manual_seed(0)
        return fastcae.penalty_hessian(
            *t,
            activation=activation,
            sigma=0.3,
            n_samples=2,
            generator=generator,
            reduction="none",
            backend=backend,
        )

    for fn in (code_and_penalty, penalty, hessian):
        assert torch.autograd.gradgradcheck(fn, inputs), fn.__name__


@pytest.mark.parametrize(("device", "backend"), FUSED, ids=IDS)
def test_a_jacobian_penalty_through_a_chain_of_layers(device, backend):
    """A second-order use of the op's backward: the Jacobian penalty of a two-layer
    chain of ContractiveEncoders, differentiated with respect to both layers'
    weights and biases (once silently wrong on the C++ backend)."""
    torch.manual_seed(1)
    layers = [ContractiveEncoder(4, 5, backend=backend), ContractiveEncoder(5, 3, backend=backend)]
    layers = [layer.to(device=device, dtype=DTYPE) for layer in layers]
    x = torch.randn(2, 4, dtype=DTYPE, device=device, requires_grad=True)

    def chain_penalty(backend):
        h = x
        for layer in layers:
            h = fastcae.encode(h, layer.weight, layer.bias, backend=backend).code
        # ‖∂h/∂x‖²_F by one VJP per output unit, kept in the graph.
        rows = [torch.autograd.grad(h[:, j].sum(), x, create_graph=True)[0] for j in range(h.shape[1])]
        return torch.stack(rows).pow(2).sum()

    params = [p for layer in layers for p in layer.parameters()]
    got = torch.autograd.grad(chain_penalty(backend), params)
    want = torch.autograd.grad(chain_penalty("torch"), params)
    torch.testing.assert_close(got, want)


# --- Which path runs --------------------------------------------------------------------


@pytest.fixture
def counted_cpp_kernels(monkeypatch):
    """Counts the launches of the C++ encode kernels, by direct launch or through the op."""
    if "cpu" not in available_backends("cpu"):
        pytest.skip("fastcae._C is not built")
    counts = {"forward": 0, "backward": 0}
    pair = encode_op.KERNELS["cpp"]

    def counting(kind, fn):
        def wrapped(*args):
            counts[kind] += 1
            return fn(*args)

        return wrapped

    monkeypatch.setitem(
        encode_op.KERNELS,
        "cpp",
        KernelPair(
            counting("forward", pair.forward_op),
            counting("backward", pair.backward_op),
            counting("forward", pair.forward_launch),
            counting("backward", pair.backward_launch),
        ),
    )
    monkeypatch.setitem(encode_op.IMPLEMENTATIONS, "cpu", encode_op.fused("cpp"))
    return counts


def test_eager_backward_runs_the_fused_kernels(counted_cpp_kernels):
    x, weight, bias = make_inputs(5, 4, 3, requires_grad=True)
    fastcae.penalty(x, weight, bias, backend="cpu").backward()
    assert counted_cpp_kernels == {"forward": 1, "backward": 1}


def test_double_backward_runs_the_closed_form_then_the_fused_kernel(counted_cpp_kernels):
    x, weight, bias = make_inputs(5, 4, 3, dtype=DTYPE, requires_grad=True)
    (grad_x,) = torch.autograd.grad(fastcae.penalty(x, weight, bias, backend="cpu"), x, create_graph=True)
    assert counted_cpp_kernels == {"forward": 1, "backward": 0}  # the closed form, differentiable
    grad_x.pow(2).sum().backward()  # reaches h's producer: the fused backward kernel
    assert counted_cpp_kernels["backward"] == 1


def test_func_grad_runs_the_closed_form_backward(counted_cpp_kernels):
    x, weight, bias = make_inputs(5, 4, 3, dtype=DTYPE)
    torch.func.grad(lambda w: fastcae.penalty(x, w, bias, backend="cpu"))(weight)
    assert counted_cpp_kernels == {"forward": 1, "backward": 0}


def test_vmap_runs_one_fused_forward_over_the_flattened_batch(counted_cpp_kernels):
    x, weight, bias = make_inputs(5, 4, 3)
    torch.func.vmap(lambda x: fastcae.encode(x, weight, bias, backend="cpu").penalty)(torch.stack([x, x, x]))
    assert counted_cpp_kernels == {"forward": 1, "backward": 0}


def test_inference_launches_the_kernel_without_the_function(counted_cpp_kernels, monkeypatch):
    def forbidden(*args):
        raise AssertionError("the autograd.Function ran for a call without autograd")

    monkeypatch.setattr(encode_op.AUTOGRAD, "apply", forbidden)
    x, weight, bias = make_inputs(5, 4, 3, requires_grad=True)
    with torch.no_grad():
        fastcae.encode(x, weight, bias, backend="cpu")
    fastcae.encode(x.detach(), weight.detach(), bias.detach(), backend="cpu")
    assert counted_cpp_kernels == {"forward": 2, "backward": 0}
