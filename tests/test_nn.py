"""The CAE modules and the CAE+H penalty."""

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICES, assert_close, available_backends, make_inputs

import fastcae
from fastcae.activations import ACTIVATION_NAMES, ACTIVATIONS
from fastcae.nn import ContractiveAutoencoder, ContractiveEncoder, StackedContractiveAutoencoder

BACKEND = "cpu" if "cpu" in available_backends() else "torch"


def test_encoder_matches_functional_api():
    encoder = ContractiveEncoder(12, 7, activation="tanh", backend=BACKEND)
    x = torch.randn(5, 12)
    code, penalty = encoder(x)
    expected = fastcae.encode(x, encoder.weight, encoder.bias, activation="tanh", backend="torch")
    torch.testing.assert_close(code, expected.code)
    torch.testing.assert_close(penalty, expected.penalty)
    assert "hidden_features=7" in repr(encoder)


@pytest.mark.parametrize("decoder_activation", ["sigmoid", "identity"])
@pytest.mark.parametrize("tied", [True, False])
def test_autoencoder_loss_is_the_papers_objective(decoder_activation, tied):
    torch.manual_seed(0)
    model = ContractiveAutoencoder(
        10, 6, decoder_activation=decoder_activation, tied=tied, contractive_weight=0.3, backend=BACKEND
    ).double()
    x = torch.rand(8, 10, dtype=torch.float64)
    w, b = model.encoder.weight, model.encoder.bias
    decoder_weight = w if tied else model.decoder_weight
    h = torch.sigmoid(x @ w.t() + b)
    logits = h @ decoder_weight + model.decoder_bias
    if decoder_activation == "sigmoid":
        reconstruction = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").sum(1).mean()
    else:
        reconstruction = (logits - x).pow(2).sum(1).mean()
    contractive = ((h * (1 - h)) ** 2 @ (w**2).sum(1)).mean()
    loss = model.loss(x)
    torch.testing.assert_close(loss.reconstruction, reconstruction.detach())
    torch.testing.assert_close(loss.contractive, contractive.detach())
    torch.testing.assert_close(loss.total, reconstruction + 0.3 * contractive)
    assert loss.hessian.item() == 0.0
    out = model(x)
    torch.testing.assert_close(out.code, h)
    expected_r = torch.sigmoid(logits) if decoder_activation == "sigmoid" else logits
    torch.testing.assert_close(out.reconstruction, expected_r)
    names = {name for name, _ in model.named_parameters()}
    assert ("decoder_weight" in names) == (not tied)


def test_tied_decoder_shares_the_encoder_weight_gradient():
    model = ContractiveAutoencoder(6, 4, backend=BACKEND)
    model.loss(torch.rand(3, 6)).total.backward()
    assert model.encoder.weight.grad is not None and model.decoder_bias.grad is not None
    assert len(list(model.parameters())) == 3  # W, b, c


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"contractive_weight": -1.0}, "contractive_weight"),
        ({"decoder_activation": "relu"}, "decoder_activation"),
        ({"activation": "gelu"}, "activation"),
        ({"hessian_samples": 0}, "hessian_samples"),
    ],
)
def test_autoencoder_rejects_bad_settings(kwargs, word):
    with pytest.raises(ValueError, match=word):
        ContractiveAutoencoder(4, 3, **kwargs)


def test_hidden_features_must_be_positive():
    with pytest.raises(ValueError, match="hidden_features"):
        ContractiveEncoder(4, 0)


def test_state_dict_round_trip():
    model = ContractiveAutoencoder(9, 5, tied=False, backend=BACKEND)
    copy = ContractiveAutoencoder(9, 5, tied=False, backend=BACKEND)
    copy.load_state_dict(model.state_dict())
    x = torch.rand(4, 9)
    torch.testing.assert_close(copy(x).reconstruction, model(x).reconstruction, rtol=0, atol=0)


def hessian_by_definition(x, weight, bias, activation, noise):
    """E‖J(x) − J(x+ε)‖²_F with the explicit Jacobians of every corrupted copy."""
    act = ACTIVATIONS[activation]

    def jac(inputs):
        return act.slope(F.linear(inputs, weight, bias)).unsqueeze(-1) * weight

    return torch.stack([(jac(x) - jac(x + eps)).pow(2).sum(dim=(1, 2)) for eps in noise]).mean(dim=0)


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_penalty_hessian_matches_its_definition(activation):
    x, weight, bias = make_inputs(6, 9, 7, dtype=torch.float64, seed=2)
    got = fastcae.penalty_hessian(
        x, weight, bias, activation=activation, sigma=0.3, n_samples=5,
        generator=torch.Generator().manual_seed(4), reduction="none",
    )  # fmt: skip
    noise = torch.randn((5, 6, 9), generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 0.3
    torch.testing.assert_close(got, hessian_by_definition(x, weight, bias, activation, noise))


def test_penalty_hessian_is_reproducible_and_differentiable():
    x, weight, bias = make_inputs(5, 6, 4, dtype=torch.float64, seed=3, requires_grad=True)

    def run(seed):
        return fastcae.penalty_hessian(
            x, weight, bias, sigma=0.2, generator=torch.Generator().manual_seed(seed)
        )

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))

    def hessian_of(*tensors):
        return fastcae.penalty_hessian(*tensors, sigma=0.2, generator=torch.Generator().manual_seed(1))

    assert torch.autograd.gradcheck(hessian_of, (x, weight, bias))


HESSIAN_TARGETS = [(d, b) for d in DEVICES for b in available_backends(d) if b != "naive"]


@pytest.mark.parametrize(("device", "backend"), HESSIAN_TARGETS, ids=[f"{d}-{b}" for d, b in HESSIAN_TARGETS])
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_fused_penalty_hessian_matches_the_reference_with_gradients(device, backend, activation):
    """Each backend's CAE+H (fused on cpu/cuda/triton) against the float64 definition, with gradients."""
    x, weight, bias = make_inputs(19, 23, 37, dtype=torch.float64, device=device, seed=5, requires_grad=True)

    def hessian(*tensors, backend=backend):
        generator = torch.Generator(device=device).manual_seed(3)
        return fastcae.penalty_hessian(*tensors, activation=activation, sigma=0.3, n_samples=3,
                                       generator=generator, reduction="none", backend=backend)  # fmt: skip

    got = hessian(x, weight, bias)
    expected = hessian(x, weight, bias, backend="torch")
    assert_close(got, expected, torch.float64, what="CAE+H")
    loss_weights = torch.linspace(0.5, 1.5, 19, dtype=torch.float64, device=device)
    grads = torch.autograd.grad((got * loss_weights).sum(), (x, weight, bias))
    expected_grads = torch.autograd.grad((expected * loss_weights).sum(), (x, weight, bias))
    for name, g, e in zip(("x", "weight", "bias"), grads, expected_grads, strict=True):
        assert_close(g, e, torch.float64, what=f"grad {name}")
    small = make_inputs(4, 5, 6, dtype=torch.float64, device=device, seed=1, requires_grad=True)
    assert torch.autograd.gradcheck(hessian, small)


@pytest.mark.parametrize(("device", "backend"), HESSIAN_TARGETS, ids=[f"{d}-{b}" for d, b in HESSIAN_TARGETS])
def test_fused_penalty_hessian_float32_and_determinism(device, backend):
    x, weight, bias = make_inputs(33, 20, 40, device=device, seed=8)

    def hessian():
        generator = torch.Generator(device=device).manual_seed(0)
        return fastcae.penalty_hessian(
            x, weight, bias, sigma=0.2, n_samples=4, generator=generator, reduction="none", backend=backend
        )

    first, second = hessian(), hessian()
    assert first.dtype == torch.float32 and torch.equal(first, second)
    # The same float32 noise the function draws, then the definition in float64.
    noise = (
        torch.randn((4, 33, 20), generator=torch.Generator(device=device).manual_seed(0), device=device) * 0.2
    )
    wide = [t.double() for t in (x, weight, bias)]
    assert_close(first, hessian_by_definition(*wide, "sigmoid", noise.double()), torch.float32, what="CAE+H")


def test_penalty_hessian_vanishes_without_noise_and_validates():
    x, weight, bias = make_inputs(4, 5, 3)
    assert abs(fastcae.penalty_hessian(x, weight, bias, sigma=0.0).item()) < 1e-12
    with pytest.raises(ValueError, match="sigma"):
        fastcae.penalty_hessian(x, weight, bias, sigma=-0.1)
    with pytest.raises(ValueError, match="n_samples"):
        fastcae.penalty_hessian(x, weight, bias, n_samples=0)
    with pytest.raises(ValueError, match="activation"):
        fastcae.penalty_hessian(x, weight, bias, activation="selu")


def test_hessian_weight_enters_the_loss():
    torch.manual_seed(0)
    model = ContractiveAutoencoder(8, 5, hessian_weight=2.0, hessian_sigma=0.5, backend=BACKEND)
    x = torch.rand(6, 8)
    loss = model.loss(x, generator=torch.Generator().manual_seed(0))
    assert loss.hessian.item() > 0
    torch.testing.assert_close(
        loss.total.detach(),
        loss.reconstruction + model.contractive_weight * loss.contractive + 2.0 * loss.hessian,
    )


def test_stacked_autoencoder_pretrains_each_layer_and_fine_tunes():
    torch.manual_seed(0)
    x = torch.rand(64, 16)
    stack = StackedContractiveAutoencoder([16, 12, 6], contractive_weight=0.05, backend=BACKEND)
    assert stack.encode(x).shape == (64, 6) and stack.encode(x, depth=1).shape == (64, 12)
    before = [layer.encoder.weight.detach().clone() for layer in stack.layers]
    history = stack.pretrain(lambda: x.split(16), epochs=30, lr=1e-2)
    assert len(history) == 2 and all(h[-1] < h[0] for h in history)
    assert all(
        not torch.equal(b, layer.encoder.weight) for b, layer in zip(before, stack.layers, strict=True)
    )
    losses = stack.fine_tune(lambda: x.split(16), epochs=20, lr=1e-3)
    assert losses[-1] < losses[0]
    out = stack(x)
    assert out.reconstruction.shape == x.shape and out.penalty.shape == (64,)


def test_stacked_layer_penalties_are_their_own():
    stack = StackedContractiveAutoencoder([5, 4, 3], backend=BACKEND)
    x = torch.rand(7, 5)
    h1, p1 = stack.layers[0].encoder(x)
    _, p2 = stack.layers[1].encoder(h1)
    torch.testing.assert_close(stack(x).penalty, p1 + p2)
