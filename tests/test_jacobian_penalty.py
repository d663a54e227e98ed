"""The whole-encoder penalty fastcae.jacobian_penalty: exact, projected, any encoder; the deep modules."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastcae
from fastcae import deep
from fastcae.activations import ACTIVATION_NAMES
from fastcae.deep import Layer, encode_chain, jacobian_penalty
from fastcae.nn import (
    ContractiveAutoencoder,
    ContractiveEncoder,
    DeepContractiveAutoencoder,
    DeepContractiveEncoder,
    StackedContractiveAutoencoder,
)

# 1-4 layers; tapering, widening, a bottleneck: the Gram closing, the direct one, several orders.
SIZES = [[6, 4], [7, 5, 3], [4, 9, 6], [9, 4, 8, 3], [5, 3, 8, 2, 6]]
DRAWS = 3000
Z_BOUND = 5.0


def true_penalty(encoder, x: torch.Tensor) -> torch.Tensor:
    """‖J_b‖²_F from torch.func.vmap(jacrev) of the encoder's code, sample by sample."""
    code = encoder.encode if hasattr(encoder, "encode") else encoder

    def per_sample(sample):
        return code(sample.unsqueeze(0)).squeeze(0)

    return torch.func.vmap(torch.func.jacrev(per_sample))(x).square().sum((1, 2))


def deep_encoder(sizes, activation="tanh", bias=True, seed=0) -> DeepContractiveEncoder:
    torch.manual_seed(seed)
    encoder = DeepContractiveEncoder(sizes, activation=activation, bias=bias).double()
    with torch.no_grad():
        for layer in encoder.layers:
            if layer.bias is not None:
                layer.bias.uniform_(-0.5, 0.5)  # the default zero bias would hide a wrong bias term
    return encoder


def sequential(sizes, seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    modules = []
    for a, b in itertools.pairwise(sizes):
        modules += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*modules).double()


def gradients(value: torch.Tensor, tensors) -> list[torch.Tensor]:
    """d value / d tensors, zeros where value does not depend on one (identity layers and x)."""
    grads = torch.autograd.grad(value, tensors, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors, strict=True)]


# --- exact ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: "-".join(map(str, s)))
def test_exact_matches_vmap_jacrev_in_float64(sizes, activation, bias):
    encoder = deep_encoder(sizes, activation, bias)
    x = torch.randn(7, sizes[0], dtype=torch.float64, requires_grad=True)
    got = jacobian_penalty(encoder, x, estimator="exact", reduction="none")
    want = true_penalty(encoder, x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    tensors = [x, *encoder.parameters()]
    for g, w in zip(gradients(got.sum(), tensors), gradients(want.sum(), tensors), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


def test_one_layer_exact_is_fastcae_penalty():
    layer = ContractiveEncoder(9, 5, activation="softplus").double()
    x = torch.randn(6, 9, dtype=torch.float64)
    expected = fastcae.penalty(x, layer.weight, layer.bias, activation="softplus", reduction="none")
    for encoder in (layer, [layer], nn.ModuleList([layer]), ContractiveAutoencoder(9, 5).double()):
        if isinstance(encoder, ContractiveAutoencoder):
            encoder.encoder.load_state_dict(layer.state_dict())
            encoder.encoder.activation = "softplus"
        got = jacobian_penalty(encoder, x, estimator="exact", reduction="none")
        assert torch.equal(got, expected)


def test_layers_of_mixed_activations_and_stacks_are_chains():
    torch.manual_seed(1)
    layers = [ContractiveEncoder(6, 5, activation="relu"), ContractiveEncoder(5, 4, activation="sigmoid")]
    layers = [layer.double() for layer in layers]
    x = torch.randn(5, 6, dtype=torch.float64)

    def code(batch):
        for layer in layers:
            batch = layer(batch).code
        return batch

    want = true_penalty(code, x)
    for encoder in (layers, tuple(layers), nn.Sequential(*layers)):
        torch.testing.assert_close(jacobian_penalty(encoder, x, estimator="exact", reduction="none"), want)
    stack = StackedContractiveAutoencoder([6, 5, 4]).double()
    torch.testing.assert_close(
        jacobian_penalty(stack, x, estimator="exact", reduction="none"), true_penalty(stack.encode, x)
    )


def test_chunks_recomputed_in_the_backward_pass_give_the_same_values_and_gradients(monkeypatch):
    encoder = deep_encoder([9, 4, 8, 3], "sigmoid")
    x = torch.randn(13, 9, dtype=torch.float64, requires_grad=True)
    tensors = [x, *encoder.parameters()]
    whole = jacobian_penalty(encoder, x, estimator="exact")
    expected = gradients(whole, tensors)
    calls = []

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return torch.utils.checkpoint.checkpoint(*args, **kwargs)

    monkeypatch.setattr(deep, "_BUDGET_ELEMENTS", 500)  # chunks of a few samples, recomputed
    monkeypatch.setattr(deep, "checkpoint", counting_checkpoint)
    chunked = jacobian_penalty(encoder, x, estimator="exact")
    torch.testing.assert_close(chunked, whole)
    for g, w in zip(gradients(chunked, tensors), expected, strict=True):
        torch.testing.assert_close(g, w)
    count = len(calls)
    assert count > 2
    with torch.no_grad():  # no graph to keep: chunks, none recomputed
        torch.testing.assert_close(jacobian_penalty(encoder, x, estimator="exact"), whole.detach())
    assert len(calls) == count


def test_chain_order_is_the_cheapest_parenthesization():
    # CLRS's matrix-chain example: 15125 scalar multiplications, ((A1 (A2 A3)) ((A4 A5) A6)).
    cost, splits, _ = deep._chain_order([30, 35, 15, 5, 10, 20, 25])
    assert cost == 15125
    assert splits[0, 5] == 2 and splits[0, 2] == 0 and splits[3, 5] == 4
    plan = deep._exact_plan((784, 500, 250), 256)
    assert plan.gram and plan.cost < 250 * 500 * 784  # through W_1 W_1ᵀ: 250·500² + G amortized
    assert not deep._exact_plan((64, 256, 512), 256).gram  # wider than the input: J itself is cheaper


def test_second_derivatives_of_the_exact_penalty(monkeypatch):
    encoder = deep_encoder([5, 4, 3], "softplus")
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    weight = encoder.layers[0].weight

    def hessian_vector(chunked: bool):
        if chunked:
            monkeypatch.setattr(deep, "_BUDGET_ELEMENTS", 60)
        (grad,) = torch.autograd.grad(
            jacobian_penalty(encoder, x, estimator="exact"), weight, create_graph=True
        )
        return torch.autograd.grad(grad.square().sum(), [x, weight])

    def reference():
        (grad,) = torch.autograd.grad(true_penalty(encoder, x).mean(), weight, create_graph=True)
        return torch.autograd.grad(grad.square().sum(), [x, weight])

    for chunked in (False, True):
        for g, w in zip(hessian_vector(chunked), reference(), strict=True):
            torch.testing.assert_close(g, w)


def test_gradcheck_in_float64():
    torch.manual_seed(0)

    def layers(t):
        return [
            Layer(t[0], t[1], "sigmoid", "auto"),
            Layer(t[2], t[3], "tanh", "auto"),
            Layer(t[4], None, "softplus", "auto"),
        ]

    tensors = [
        torch.randn(shape, dtype=torch.float64, requires_grad=True)
        for shape in [(4, 5), (4,), (6, 4), (6,), (3, 6), (3, 5)]
    ]

    def exact(*t):
        return encode_chain(layers(t), t[5], estimator="exact").penalty

    def projected(*t):
        generator = torch.Generator().manual_seed(3)
        return encode_chain(
            layers(t), t[5], estimator="projection", n_projections=2, generator=generator
        ).penalty

    assert torch.autograd.gradcheck(exact, tensors)
    assert torch.autograd.gradgradcheck(exact, tensors)
    assert torch.autograd.gradcheck(projected, tensors)
    net = sequential([5, 4, 3])
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    for estimator in ("exact", "projection"):
        generator = torch.Generator()

        def generic(x, estimator=estimator, generator=generator):
            generator.manual_seed(5)
            return jacobian_penalty(net, x, estimator=estimator, generator=generator, reduction="none")

        assert torch.autograd.gradcheck(generic, (x,))


def test_exact_on_any_encoder_uses_torch_func():
    net = sequential([6, 5, 4])
    x = torch.randn(5, 6, dtype=torch.float64)
    torch.testing.assert_close(
        jacobian_penalty(net, x, estimator="exact", reduction="none"), true_penalty(net, x)
    )
    wide = sequential([3, 7, 9])  # D < H: jacfwd
    x = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(
        jacobian_penalty(wide, x, estimator="exact", reduction="none"), true_penalty(wide, x)
    )
    fn = lambda batch: torch.sin(batch @ torch.ones(3, 2, dtype=torch.float64))  # noqa: E731
    torch.testing.assert_close(
        jacobian_penalty(fn, x, estimator="exact", reduction="none"), true_penalty(fn, x)
    )


# --- projection -------------------------------------------------------------------------------------


def draws(encoder, x, count=1, n=DRAWS, seed=0, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return torch.stack(
            [
                jacobian_penalty(
                    encoder,
                    x,
                    estimator="projection",
                    n_projections=count,
                    generator=generator,
                    reduction="none",
                    **kwargs,
                )
                for _ in range(n)
            ]
        )


def assert_unbiased(samples: torch.Tensor, expected: torch.Tensor) -> None:
    """Each column's mean over the draws within Z_BOUND standard errors of the exact value."""
    error = samples.std(0) / samples.shape[0] ** 0.5
    z = (samples.mean(0) - expected) / error.clamp_min(1e-300)
    assert z.abs().max() < Z_BOUND, f"z-scores {z}"


# (sizes, n_projections, the side that has the lower variance per cost)
PROJECTION_CASES = [
    ([6, 5, 12], 1, "input"),
    ([12, 8, 3], 2, "output"),
    ([4, 6, 5, 7], 1, "input"),
    ([9, 4, 8, 3], 1, "output"),
]


@pytest.mark.parametrize("case", PROJECTION_CASES, ids=lambda c: f"{'-'.join(map(str, c[0]))}-k{c[1]}-{c[2]}")
def test_projection_estimate_is_unbiased(case):
    sizes, count, side = case
    assert deep._projection_side(sizes, count, deep._chain_tangent_costs(sizes)) == side
    encoder = deep_encoder(sizes, "sigmoid")
    x = torch.randn(6, sizes[0], dtype=torch.float64)
    assert_unbiased(draws(encoder, x, count), true_penalty(encoder, x))


@pytest.mark.parametrize("sizes", [[7, 5, 3], [3, 5, 7]], ids=["output-side", "input-side"])
def test_projection_estimate_of_any_encoder_is_unbiased(sizes):
    net = sequential(sizes)
    x = torch.randn(5, sizes[0], dtype=torch.float64)
    assert_unbiased(draws(net, x, 2, n=1000), true_penalty(net, x))


@pytest.mark.parametrize("sizes", [[8, 6, 3], [3, 6, 8]])
def test_gradient_of_the_projection_estimate_is_unbiased(sizes):
    encoder = deep_encoder(sizes, "tanh")
    x = torch.randn(5, sizes[0], dtype=torch.float64)
    parameters = list(encoder.parameters())
    exact = torch.cat([g.flatten() for g in gradients(true_penalty(encoder, x).mean(), parameters)])
    generator = torch.Generator().manual_seed(1)
    samples = torch.stack(
        [
            torch.cat(
                [
                    g.flatten()
                    for g in gradients(
                        jacobian_penalty(encoder, x, estimator="projection", generator=generator), parameters
                    )
                ]
            )
            for _ in range(2000)
        ]
    )
    assert_unbiased(samples, exact)


def test_orthonormal_directions_have_lower_variance_than_iid_gaussian_ones():
    # Output side (H = 6 < D = 10, k = 4): orthonormal q_i against i.i.d. N(0, I) directions.
    encoder = deep_encoder([10, 8, 6], "sigmoid")
    assert deep._projection_side([10, 8, 6], 4, deep._chain_tangent_costs([10, 8, 6])) == "output"
    x = torch.randn(4, 10, dtype=torch.float64)
    jacobian = deep.chain_jacobian(deep.encoder_layers(encoder), x).detach()  # (B, H, D)
    exact = jacobian.square().sum((1, 2))
    orthonormal = draws(encoder, x, 4)
    generator = torch.Generator().manual_seed(9)
    gaussian = torch.randn(DRAWS, 4, *jacobian.shape[:2], generator=generator, dtype=torch.float64)
    iid = torch.einsum("nkbh,bhd->nkbd", gaussian, jacobian).square().sum(-1).mean(1)
    assert_unbiased(iid, exact)
    relative_orthonormal = orthonormal.var(0) / exact**2
    relative_iid = iid.var(0) / exact**2
    assert (relative_orthonormal < 0.7 * relative_iid).all()
    # The closed form of the module docstring: 2(n − k)(nρ − 1) / (k (n − 1)(n + 2)), ρ = Σσ⁴/(Σσ²)².
    squares = torch.linalg.svdvals(jacobian).square()
    rho = squares.square().sum(-1) / squares.sum(-1) ** 2
    n, k = 6, 4
    theory = 2 * (n - k) * (n * rho - 1) / (k * (n - 1) * (n + 2))
    torch.testing.assert_close(relative_orthonormal, theory, rtol=0.15, atol=0.0)
    torch.testing.assert_close(relative_iid, 2 * rho / k, rtol=0.15, atol=0.0)


@pytest.mark.parametrize("dim", [1, 5, 8, 13, 784])
def test_random_signs_are_fair_independent_and_reproducible(dim):
    signs = deep.random_signs(4000, dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert signs.shape == (1, 4000, dim) and signs.dtype == torch.float64
    assert torch.equal(signs.abs(), torch.ones_like(signs))
    # Each coordinate is ±1 with probability 1/2 and coordinates are uncorrelated:
    # E[s sᵀ] = I, each entry of the mean within 5 standard errors (1/sqrt(4000)).
    second_moment = torch.einsum("bi,bj->ij", signs[0], signs[0]) / signs.shape[1]
    assert (second_moment - torch.eye(dim, dtype=torch.float64)).abs().max() < 5 / 4000**0.5
    assert signs[0].mean(0).abs().max() < 5 / 4000**0.5
    again = deep.random_signs(4000, dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(signs, again)


def test_one_direction_is_hutchinsons_estimate_with_its_variance():
    # k = 1 uses random signs: unbiased, relative variance 2(ρ − Σ_i A_ii²/(tr A)²) with
    # A = JᵀJ on the input side (module docstring), below i.i.d. Gaussian's 2ρ.
    sizes = [6, 5, 12]
    assert deep._projection_side(sizes, 1, deep._chain_tangent_costs(sizes)) == "input"
    encoder = deep_encoder(sizes, "sigmoid")
    x = torch.randn(4, 6, dtype=torch.float64)
    jacobian = deep.chain_jacobian(deep.encoder_layers(encoder), x).detach()  # (B, H, D)
    gram = jacobian.transpose(1, 2) @ jacobian  # A = JᵀJ (B, D, D)
    trace = gram.diagonal(dim1=1, dim2=2).sum(-1)
    samples = draws(encoder, x, 1)
    assert_unbiased(samples, trace)
    rho = gram.square().sum((1, 2)) / trace**2
    theory = 2 * (rho - gram.diagonal(dim1=1, dim2=2).square().sum(-1) / trace**2)
    torch.testing.assert_close(samples.var(0) / trace**2, theory, rtol=0.15, atol=0.0)
    assert (theory < 2 * rho).all()


def test_projection_is_reproducible_with_a_generator_and_exact_with_a_full_basis():
    encoder = deep_encoder([9, 4, 8, 3], "relu")
    x = torch.randn(5, 9, dtype=torch.float64)

    def estimate(seed, count=1):
        generator = torch.Generator().manual_seed(seed)
        return jacobian_penalty(encoder, x, estimator="projection", n_projections=count, generator=generator)

    assert torch.equal(estimate(4), estimate(4))
    assert not torch.equal(estimate(4), estimate(5))
    exact = jacobian_penalty(encoder, x, estimator="exact")
    torch.testing.assert_close(estimate(4, count=3), exact)  # k = H_L: a full basis of the output side
    torch.testing.assert_close(estimate(4, count=50), exact)
    directions = deep.orthonormal_projections(7, 5, 3, dtype=torch.float64)
    gram = torch.einsum("kbd,jbd->bkj", directions, directions)
    torch.testing.assert_close(gram, torch.eye(3, dtype=torch.float64).expand(7, 3, 3))


def test_auto_is_exact_when_cheap_and_projected_otherwise():
    small = deep_encoder([6, 4, 3])
    x = torch.randn(5, 6, dtype=torch.float64)
    assert torch.equal(jacobian_penalty(small, x), jacobian_penalty(small, x, estimator="exact"))
    mnist = DeepContractiveEncoder([784, 500, 250])
    x = torch.rand(3, 784)
    seeded = [{"generator": torch.Generator().manual_seed(2)} for _ in range(2)]
    auto = jacobian_penalty(mnist, x, **seeded[0])
    assert torch.equal(auto, jacobian_penalty(mnist, x, estimator="projection", **seeded[1]))
    assert deep._auto_estimator_for_chain([784, 500, 250], 256, 1) == "projection"
    assert deep._auto_estimator_for_chain([784, 500], 256, 1) == "exact"  # one layer: the fused op
    net = sequential([30, 3])  # min(D, H) = 3 VJPs ≤ 4 forward passes: exact
    x = torch.randn(4, 30, dtype=torch.float64)
    assert torch.equal(jacobian_penalty(net, x), jacobian_penalty(net, x, estimator="exact"))


def test_reductions_empty_batch_and_dtypes():
    encoder = deep_encoder([6, 4, 3])
    x = torch.randn(5, 6, dtype=torch.float64)
    per_sample = jacobian_penalty(encoder, x, estimator="exact", reduction="none")
    torch.testing.assert_close(
        jacobian_penalty(encoder, x, estimator="exact", reduction="sum"), per_sample.sum()
    )
    torch.testing.assert_close(jacobian_penalty(encoder, x, estimator="exact"), per_sample.mean())
    for estimator in ("exact", "projection"):
        empty = jacobian_penalty(encoder, x[:0], estimator=estimator, reduction="none")
        assert empty.shape == (0,)
        assert jacobian_penalty(encoder, x[:0], estimator=estimator).item() == 0.0
        assert jacobian_penalty(sequential([6, 3]), x[:0], estimator=estimator, reduction="none").shape == (
            0,
        )
    single = encoder.float()
    value = jacobian_penalty(single, x.float(), estimator="exact", reduction="none")
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, per_sample.float(), rtol=1e-5, atol=1e-6)


# --- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"estimator": "bogus"}, ValueError, "estimator"),
        ({"estimator": 3}, TypeError, "estimator"),
        ({"n_projections": 0}, ValueError, "n_projections"),
        ({"n_projections": -2}, ValueError, "n_projections"),
        ({"n_projections": 1.5}, ValueError, "n_projections"),
        ({"n_projections": True}, ValueError, "n_projections"),
        ({"reduction": "max"}, ValueError, "reduction"),
        ({"generator": 7}, TypeError, "generator"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs, error, words):
    with pytest.raises(error, match=words):
        jacobian_penalty(deep_encoder([4, 3, 2]), torch.randn(3, 4, dtype=torch.float64), **kwargs)


def test_bad_encoders_and_inputs_raise_clear_errors():
    x = torch.randn(10, 4)
    with pytest.raises(TypeError, match="encoder must be a module or callable"):
        jacobian_penalty(42, x)
    with pytest.raises(TypeError, match="encoder must be a module or callable"):
        jacobian_penalty([ContractiveEncoder(4, 3), nn.Linear(3, 2)], x)
    with pytest.raises(TypeError, match="must return a tensor"):
        jacobian_penalty(lambda batch: (batch, batch), x)
    with pytest.raises(ValueError, match=r"codes \(B, H\)"):
        jacobian_penalty(lambda batch: batch.sum(0, keepdim=True), x)
    with pytest.raises(ValueError, match="must be 2-D"):
        jacobian_penalty(nn.Linear(4, 3), x[0])
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        jacobian_penalty(nn.Linear(4, 3), x.tolist())
    with pytest.raises(ValueError, match="layer 1"):
        jacobian_penalty([ContractiveEncoder(4, 3), ContractiveEncoder(5, 2)], x)
    with pytest.raises(ValueError, match="x has 4 features"):
        jacobian_penalty(DeepContractiveEncoder([6, 3, 2]), x)


@pytest.mark.parametrize(
    "encoder",
    [
        nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)),
        lambda batch: batch - batch.mean(0),
        nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5)),
        lambda batch: torch.softmax(batch @ batch.t(), dim=1) @ batch,
    ],
    ids=["batchnorm-training", "centering", "dropout", "attention-over-the-batch"],
)
@pytest.mark.parametrize("estimator", ["exact", "projection"])
def test_encoders_that_mix_samples_are_refused(encoder, estimator):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="mixes samples"):
        jacobian_penalty(encoder, torch.randn(16, 4), estimator=estimator)


def test_per_sample_encoders_in_eval_mode_pass_the_probe():
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Dropout(0.5), nn.Sigmoid()).double().eval()
    x = torch.randn(16, 4, dtype=torch.float64)
    torch.testing.assert_close(
        jacobian_penalty(net, x, estimator="exact", reduction="none"), true_penalty(net, x)
    )
    assert jacobian_penalty(net, x[:1]).shape == ()  # one sample: nothing to mix


# --- the deep modules -------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [True, False])
def test_deep_autoencoder_loss_is_reconstruction_plus_the_whole_encoder_penalty(tied):
    torch.manual_seed(0)
    model = DeepContractiveAutoencoder(
        [8, 6, 4], tied=tied, contractive_weight=0.3, estimator="exact", decoder_activation="identity"
    ).double()
    x = torch.rand(5, 8, dtype=torch.float64)
    (w1, b1), (w2, b2) = [(layer.weight, layer.bias) for layer in model.encoder.layers]
    h1 = torch.sigmoid(F.linear(x, w1, b1))
    h2 = torch.sigmoid(F.linear(h1, w2, b2))
    back1, back2 = (w1, w2) if tied else tuple(model.decoder_weights)
    r1 = torch.sigmoid(h2 @ back2 + model.decoder_biases[1])
    logits = r1 @ back1 + model.decoder_biases[0]
    reconstruction = (logits - x).square().sum(1).mean()
    contractive = true_penalty(model.encoder, x).mean()
    loss = model.loss(x)
    torch.testing.assert_close(loss.reconstruction, reconstruction.detach())
    torch.testing.assert_close(loss.contractive, contractive.detach())
    torch.testing.assert_close(loss.total, reconstruction + 0.3 * contractive)
    out = model(x)
    torch.testing.assert_close(out.code, h2)
    torch.testing.assert_close(out.reconstruction, logits)
    names = {name for name, _ in model.named_parameters()}
    assert any(name.startswith("decoder_weights") for name in names) == (not tied)
    assert model.in_features == 8 and model.hidden_features == 4 and model.sizes == [8, 6, 4]


def test_plain_deep_autoencoder_skips_the_penalty_and_training_lowers_the_loss():
    torch.manual_seed(0)
    plain = DeepContractiveAutoencoder([16, 12, 6], contractive_weight=0.0)
    x = torch.rand(32, 16)
    assert plain.loss(x).contractive.item() == 0.0
    x = torch.sigmoid(4 * torch.randn(32, 2) @ torch.randn(2, 16))  # near a 2-D manifold: learnable
    model = DeepContractiveAutoencoder([16, 12, 6], contractive_weight=0.1, estimator="projection")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        loss = model.loss(x, generator=generator).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    state = model.state_dict()
    clone = DeepContractiveAutoencoder([16, 12, 6], contractive_weight=0.1, estimator="projection")
    clone.load_state_dict(state)
    torch.testing.assert_close(clone.encode(x), model.encode(x))


def test_deep_modules_validate_their_settings():
    with pytest.raises(ValueError, match="sizes"):
        DeepContractiveAutoencoder([8])
    with pytest.raises(ValueError, match="estimator"):
        DeepContractiveEncoder([8, 4], estimator="sometimes")
    with pytest.raises(ValueError, match="n_projections"):
        DeepContractiveAutoencoder([8, 4, 2], n_projections=0)
    with pytest.raises(ValueError, match="contractive_weight"):
        DeepContractiveAutoencoder([8, 4, 2], contractive_weight=-1.0)
    assert "n_projections=3" in repr(DeepContractiveEncoder([8, 4, 2], n_projections=3))
