"""fastcae.geometry: the explicit Jacobian, tangents and the contraction report against
torch.func and a float64 SVD of the explicit Jacobian; local PCA on a known plane."""

from types import SimpleNamespace

import pytest
import torch
from helpers import make_inputs

import fastcae
from fastcae import geometry
from fastcae.activations import ACTIVATIONS
from fastcae.geometry import contraction_report, jacobian, local_pca_tangents, tangents

# (batch, in_features D, hidden H): the H×H Gram branch (H < D), H = D, and the D×D branch (H > D).
SHAPES = [(5, 9, 4), (4, 6, 6), (5, 4, 9)]


def explicit_svd(x, weight, bias, activation):
    """Singular values (B, m) and right singular vectors (B, m, D) of the float64 explicit Jacobian."""
    to64 = [None if t is None else t.to(torch.float64) for t in (x, weight, bias)]
    _, values, vh = torch.linalg.svd(jacobian(*to64, activation=activation), full_matrices=False)
    return values, vh


def assert_orthonormal(directions, atol=1e-12):
    gram = directions @ directions.transpose(1, 2)
    eye = torch.eye(directions.shape[1], dtype=directions.dtype).expand_as(gram)
    torch.testing.assert_close(gram, eye, rtol=0, atol=atol)


def assert_canonical_signs(directions):
    pivot = directions.abs().argmax(dim=-1, keepdim=True)
    assert (directions.gather(-1, pivot) > 0).all()


def jacobian_times(x, weight, bias, activation, directions):
    """J_b v for every direction v (B, k, D) -> (B, k, H), without the explicit Jacobian."""
    z = x @ weight.T + (0 if bias is None else bias)
    return ACTIVATIONS[activation].slope(z)[:, None, :] * (directions @ weight.T)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("bias", [True, False])
def test_jacobian_matches_torch_func(activation, bias):
    x, weight, b = make_inputs(4, 7, 5, dtype=torch.float64, bias=bias, seed=1)

    def code(sample):
        z = sample @ weight.T + (0 if b is None else b)
        return ACTIVATIONS[activation].forward(z)

    expected = torch.func.vmap(torch.func.jacrev(code))(x)
    torch.testing.assert_close(
        jacobian(x, weight, b, activation=activation), expected, rtol=1e-12, atol=1e-14
    )


def test_jacobian_is_differentiable():
    x, weight, b = make_inputs(3, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: jacobian(*t, activation="tanh"), (x, weight, b))


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("shape", SHAPES)
def test_tangents_match_explicit_svd(activation, shape):
    x, weight, b = make_inputs(*shape, dtype=torch.float64, seed=sum(shape))
    k = min(shape[1], shape[2])
    values, vh = explicit_svd(x, weight, b, activation)
    result = tangents(x, weight, b, activation=activation, k=k)
    # The Gram matrix resolves σ to about sqrt(m·ε)·σ_max = 4e-8·σ_max (smaller ones become 0).
    largest = values[:, :1]
    torch.testing.assert_close(result.singular_values, values[:, :k], rtol=1e-10, atol=1e-7 * largest.max())
    assert (result.singular_values[:, :-1] >= result.singular_values[:, 1:]).all()
    assert_orthonormal(result.directions)
    assert_canonical_signs(result.directions)
    # The same vectors up to sign, where σ is well resolved (with relu, units that are off make
    # J_b lose rank and the directions of σ = 0 are not unique).
    resolved = values[:, :k] > 1e-3 * largest
    reference = vh[:, :k] * (result.directions * vh[:, :k]).sum(-1, keepdim=True).sign()
    torch.testing.assert_close(result.directions[resolved], reference[resolved], rtol=0, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tangents_return_the_input_dtype_and_the_leading_k(dtype):
    x, weight, b = make_inputs(3, 10, 6, dtype=dtype, seed=2)
    full = tangents(x.double(), weight.double(), b.double(), k=6)
    result = tangents(x, weight, b, k=2)
    assert result.singular_values.dtype == result.directions.dtype == dtype
    assert result.singular_values.shape == (3, 2) and result.directions.shape == (3, 2, 10)
    torch.testing.assert_close(result.singular_values, full.singular_values[:, :2].to(dtype))
    torch.testing.assert_close(result.directions, full.directions[:, :2].to(dtype))


@pytest.mark.parametrize(
    ("hidden", "features", "gram_size"), [(4, 9, 4), (6, 6, 6), (9, 4, 4)], ids=["H<D", "H=D", "H>D"]
)
def test_tangents_use_the_smaller_gram_matrix(monkeypatch, hidden, features, gram_size):
    shapes = []
    eigh = torch.linalg.eigh

    def spy(matrix, *args, **kwargs):
        shapes.append(tuple(matrix.shape))
        return eigh(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", spy)
    tangents(*make_inputs(3, features, hidden, dtype=torch.float64), k=2)
    assert shapes == [(3, gram_size, gram_size)]


def test_tangents_with_many_input_features():
    """D = 200000: the (B, H, D) Jacobian would be 51 MB, the Gram matrices are (4, 8, 8)."""
    x, weight, b = make_inputs(4, 200_000, 8, dtype=torch.float64, seed=3)
    result = tangents(x, weight, b, k=8)
    assert result.directions.shape == (4, 8, 200_000)
    assert_orthonormal(result.directions)
    # ‖J_b v_i‖ = σ_i for a right singular vector.
    images = jacobian_times(x, weight, b, "sigmoid", result.directions)
    torch.testing.assert_close(images.norm(dim=-1), result.singular_values, rtol=1e-9, atol=0)


@pytest.mark.parametrize(("hidden", "features"), [(6, 10), (10, 4)], ids=["H<D", "H>D"])
def test_tangents_for_zero_singular_values(hidden, features):
    """relu units that are off make J_b rank-deficient: σ = 0 is returned exactly, with unit
    directions orthogonal to the others that J_b maps to zero."""
    x, weight, b = make_inputs(3, features, hidden, dtype=torch.float64, seed=4)
    b[: hidden - 2] = -100.0  # only the last two units can be on
    k = min(hidden, features)
    values, _ = explicit_svd(x, weight, b, "relu")
    result = tangents(x, weight, b, activation="relu", k=k)
    assert (result.singular_values[:, 2:] == 0).all()
    torch.testing.assert_close(result.singular_values, values[:, :k], rtol=1e-10, atol=1e-12)
    assert_orthonormal(result.directions)
    assert_canonical_signs(result.directions)
    images = jacobian_times(x, weight, b, "relu", result.directions[:, 2:])
    torch.testing.assert_close(images, torch.zeros_like(images), rtol=0, atol=1e-12)


def test_tangents_when_every_unit_is_off():
    """J_b = 0: the completion of nothing is the first k standard basis vectors."""
    x, weight, b = make_inputs(2, 7, 3, dtype=torch.float64)
    result = tangents(x, weight, torch.full_like(b, -100.0), activation="relu", k=3)
    assert (result.singular_values == 0).all()
    torch.testing.assert_close(result.directions, torch.eye(3, 7, dtype=torch.float64).expand(2, 3, 7))


def test_tangents_are_sign_deterministic():
    """For identity, (W, b) and (-W, -b) give J_b = ±W: the same singular vectors up to sign,
    which the sign rule must turn into the same vectors."""
    x, weight, b = make_inputs(3, 8, 5, dtype=torch.float64, seed=5)
    first = tangents(x, weight, b, activation="identity", k=3).directions
    flipped = tangents(x, -weight, -b, activation="identity", k=3).directions
    torch.testing.assert_close(first, flipped, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [0, -1, 5])
def test_tangents_reject_k_out_of_range(k):
    with pytest.raises(ValueError, match="k must satisfy"):
        tangents(*make_inputs(2, 6, 4), k=k)


@pytest.mark.parametrize("k", [2.0, True, "2"])
def test_tangents_reject_non_int_k(k):
    with pytest.raises(TypeError, match="k must be an int"):
        tangents(*make_inputs(2, 6, 4), k=k)


def test_tangents_validate_encoder_args():
    x, weight, b = make_inputs(2, 6, 4)
    with pytest.raises(ValueError, match="activation"):
        tangents(x, weight, b, activation="gelu")
    with pytest.raises(ValueError, match="weight expects"):
        tangents(x, weight[:, :5], b)
    with pytest.raises(TypeError, match="bias has dtype"):
        tangents(x, weight, b.double())


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("shape", SHAPES)
def test_contraction_report_matches_explicit_svd(activation, shape):
    x, weight, b = make_inputs(*shape, dtype=torch.float64, seed=6)
    values, _ = explicit_svd(x, weight, b, activation)
    report = contraction_report((weight, b, activation), x)
    penalty = fastcae.penalty(x, weight, b, activation=activation, reduction="none", backend="torch")
    assert report.num_samples == shape[0]
    assert report.frobenius_mean == pytest.approx(penalty.sqrt().mean().item(), rel=1e-12)
    assert report.fraction_below_one == pytest.approx((values < 1).double().mean().item())
    torch.testing.assert_close(report.spectrum, values.mean(0), rtol=1e-10, atol=1e-12)
    assert report.top_singular_values == pytest.approx(values.mean(0)[:5].tolist(), rel=1e-10, abs=1e-12)
    assert len(report.top_singular_values) == min(5, shape[1], shape[2])


def test_contraction_report_counts_contracted_directions():
    """Identity encoder W = diag(0.5, 2, 0.5): a third of the singular values exceed 1."""
    x = torch.randn(4, 3, dtype=torch.float64)
    weight = torch.diag(torch.tensor([0.5, 2.0, 0.5], dtype=torch.float64))
    report = contraction_report((weight, None), x, activation="identity")
    assert report.fraction_below_one == pytest.approx(2 / 3)
    assert report.top_singular_values == pytest.approx((2.0, 0.5, 0.5))
    assert report.frobenius_mean == pytest.approx(4.5**0.5)
    text = str(report)
    assert "4 samples" in text and "66.7%" in text and "2, 0.5, 0.5" in text


def test_contraction_report_accepts_modules_and_objects():
    x, weight, b = make_inputs(6, 5, 3, seed=7)
    expected = contraction_report((weight, b), x, activation="tanh")
    encoder = SimpleNamespace(weight=weight, bias=b, activation="tanh")
    linear = torch.nn.Linear(5, 3)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(b)
    for model, activation in [
        (encoder, None),
        (SimpleNamespace(encoder=encoder, decoder=None), None),
        ((weight, b, "tanh"), None),
        ([weight, b], "tanh"),
        (linear, "tanh"),  # no activation attribute: it comes from the argument
    ]:
        report = contraction_report(model, x, activation=activation)
        assert report.frobenius_mean == pytest.approx(expected.frobenius_mean, rel=1e-6)
        torch.testing.assert_close(report.spectrum, expected.spectrum)
    default = contraction_report((weight, b), x)
    assert default.frobenius_mean == pytest.approx(
        contraction_report((weight, b, "sigmoid"), x).frobenius_mean
    )


def test_contraction_report_rejects_bad_models():
    x, weight, b = make_inputs(2, 5, 3)
    with pytest.raises(TypeError, match="model_or_weights"):
        contraction_report(object(), x)
    with pytest.raises(ValueError, match="model_or_weights"):
        contraction_report((weight,), x)
    with pytest.raises(ValueError, match="conflicts"):
        contraction_report((weight, b, "tanh"), x, activation="relu")
    with pytest.raises(ValueError, match="at least one sample"):
        contraction_report((weight, b), x[:0])
    with pytest.raises(ValueError, match="weight expects"):
        contraction_report((weight[:, :4], b), x)


def test_contraction_report_in_chunks(monkeypatch):
    """Batches larger than the memory budget are processed in chunks with the same result."""
    x, weight, b = make_inputs(7, 6, 9, dtype=torch.float64, seed=8)
    whole = contraction_report((weight, b), x)
    whole_tangents = tangents(x, weight, b, k=3)
    monkeypatch.setattr(geometry, "_CHUNK_ELEMENTS", 1)
    torch.testing.assert_close(contraction_report((weight, b), x).spectrum, whole.spectrum)
    chunked = tangents(x, weight, b, k=3)
    torch.testing.assert_close(chunked.singular_values, whole_tangents.singular_values)
    torch.testing.assert_close(chunked.directions, whole_tangents.directions)


def plane_data(num_points, seed=0):
    """Points of a random 2-D plane through an offset in 10-D, and the plane's orthonormal basis (2, 10)."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(10, 2, generator=gen, dtype=torch.float64)).Q.T
    offset = torch.randn(10, generator=gen, dtype=torch.float64)
    coordinates = torch.randn(num_points, 2, generator=gen, dtype=torch.float64)
    return coordinates @ basis + offset, basis


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_local_pca_recovers_a_plane(dtype):
    data, basis = plane_data(200)
    data = data.to(dtype)
    directions = local_pca_tangents(data[:20], data, n_neighbors=8, k=2)
    assert directions.shape == (20, 2, 10) and directions.dtype == dtype
    directions = directions.double()
    assert_orthonormal(directions, atol=1e-5)
    assert_canonical_signs(directions)
    # Projecting onto the plane leaves each direction unchanged.
    residual = directions - directions @ basis.T @ basis
    assert residual.abs().max() < (1e-12 if dtype == torch.float64 else 1e-5)


def test_local_pca_excludes_only_the_query_copy():
    """A query that is a data point does not count itself; a query off the data uses n points."""
    data = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.1], [10.0, 10.0], [0.0, 0.0]], dtype=torch.float64)
    # Neighbours of (0, 0): its second copy, (1, 0) and (2, 0.1), not (10, 10).
    direction = local_pca_tangents(data[:1], data, n_neighbors=3, k=1)[0, 0]
    _, _, vh = torch.linalg.svd(data[[4, 1, 2]] - data[[4, 1, 2]].mean(0))
    torch.testing.assert_close(direction, vh[0] * vh[0, 0].sign())
    # A query not in data keeps its n nearest, here all N points.
    outside = torch.tensor([[5.0, 5.0]], dtype=torch.float64)
    assert local_pca_tangents(outside, data, n_neighbors=5, k=1).shape == (1, 1, 2)
    with pytest.raises(ValueError, match="own copy"):
        local_pca_tangents(data[:1], data, n_neighbors=5, k=1)


def test_local_pca_validates_arguments():
    data = torch.randn(20, 4)
    with pytest.raises(ValueError, match="n_neighbors must satisfy k"):
        local_pca_tangents(data, data, n_neighbors=3, k=3)
    with pytest.raises(ValueError, match="n_neighbors must satisfy"):
        local_pca_tangents(data, data, n_neighbors=21, k=2)
    with pytest.raises(ValueError, match="k must satisfy"):
        local_pca_tangents(data, data, n_neighbors=10, k=5)
    with pytest.raises(ValueError, match="features"):
        local_pca_tangents(data[:, :3], data)
    with pytest.raises(ValueError, match="2-D"):
        local_pca_tangents(data[0], data)
    with pytest.raises(TypeError, match="dtype"):
        local_pca_tangents(data.double(), data)
    with pytest.raises(TypeError, match="k must be an int"):
        local_pca_tangents(data, data, k=2.5)


@pytest.mark.parametrize("sizes", [[6, 5, 3], [3, 5, 4, 7]], ids=["tapering", "widening"])
def test_contraction_report_of_a_deep_encoder_is_the_whole_jacobians(sizes):
    from fastcae.nn import DeepContractiveAutoencoder, StackedContractiveAutoencoder

    torch.manual_seed(0)
    x = torch.randn(9, sizes[0], dtype=torch.float64)
    for model in (DeepContractiveAutoencoder(sizes).double(), StackedContractiveAutoencoder(sizes).double()):
        jac = torch.func.vmap(torch.func.jacrev(lambda sample, m=model: m.encode(sample[None])[0]))(x)
        values = torch.linalg.svdvals(jac)
        report = contraction_report(model, x.float())  # computed in float64 whatever the input
        assert report.frobenius_mean == pytest.approx(jac.square().sum((1, 2)).sqrt().mean().item(), rel=1e-6)
        assert report.fraction_below_one == pytest.approx((values < 1).double().mean().item())
        torch.testing.assert_close(report.spectrum, values.mean(0), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="layers of a stack"):
        contraction_report(model, x, activation="tanh")
    with pytest.raises(ValueError, match="at least one sample"):
        contraction_report(model, x[:0])
