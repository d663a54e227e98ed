"""The local geometry of an encoder layer: its Jacobian, tangent directions and contraction.

For an encoder layer h = φ(z), z = x Wᵀ + b, with x (B, D), W (H, D), b (H,),
the Jacobian of sample b is

    J_b = ∂h_b/∂x_b = diag(φ'(z_b)) W        (H, D)

Its right singular vectors with the largest singular values are the input
directions the encoder keeps (the tangents of the data manifold in the CAE
papers); singular values below 1 are directions it contracts.

Only :func:`jacobian` holds the (B, H, D) tensor. The others take the
singular values from the smaller of the two Gram matrices of J_b, whose
eigenvalues are the σ²:

    H ≤ D:  J_b J_bᵀ = diag(φ'_b) (W Wᵀ) diag(φ'_b)    (H, H), one W Wᵀ for the batch
    H > D:  J_bᵀ J_b = Wᵀ diag(φ'_b²) W               (D, D), from J of a chunk of samples

With H ≤ D, eigh gives the left singular vectors u and the right ones follow
as v ∝ J_bᵀ u = Wᵀ (φ'_b ⊙ u), a (k, H) @ (H, D) product, orthonormalised by a
QR factorisation in order of decreasing σ.

Squaring J squares its condition number: an eigenvalue of the Gram matrix is
only known to about m·ε·σ²_max (m its size), so a singular value is resolved
down to σ_max·sqrt(m·ε). That is 1e-7·σ_max in float64 but 1e-2·σ_max in
float32, which is why everything is computed in float64. Smaller singular
values are returned as exactly 0 rather than as rounding noise.

Batches are processed in chunks sized so that no intermediate holds more than
``_CHUNK_ELEMENTS`` float64 values, since B Gram matrices can outgrow memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ._validation import check_encoder_args, check_int_in_range, check_tensor
from .activations import ACTIVATIONS
from .deep import Layer, chain_jacobian, encoder_layers

_CHUNK_ELEMENTS = 1 << 24
_EPS64 = torch.finfo(torch.float64).eps


def jacobian(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, activation: str = "sigmoid") -> Tensor:
    """The explicit Jacobian ∂h_b/∂x_b = diag(φ'(z_b)) W of every sample.

    Memory is B·H·D: meant for small problems and for checking the other
    functions of this module, which never form it.

    Args:
        x: inputs, shape (B, D).
        weight: encoder weight W, shape (H, D).
        bias: encoder bias, shape (H,), or None.
        activation: φ, as in :func:`fastcae.encode`.

    Returns:
        Shape (B, H, D) in x's dtype, differentiable with respect to x, weight
        and bias.

    Raises:
        TypeError, ValueError: as :func:`fastcae.encode` for bad arguments.
    """
    check_encoder_args(x, weight, bias, activation)
    z = x @ weight.T
    if bias is not None:
        z = z + bias
    return ACTIVATIONS[activation].slope(z)[:, :, None] * weight


class Tangents(NamedTuple):
    """What :func:`tangents` returns, per sample: the k largest singular values of J_b (B, k),
    descending, and the matching right singular vectors (B, k, D), orthonormal."""

    singular_values: Tensor
    directions: Tensor


def tangents(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    activation: str = "sigmoid",
    k: int = 8,
) -> Tangents:
    """The k leading singular values and right singular vectors of every J_b = diag(φ'(z_b)) W.

    The right singular vectors are the input-space directions along which the
    encoder varies most at x_b: the tangent plane of the data manifold that a
    contractive autoencoder learns. Computed in float64 through the smaller Gram
    matrix of J_b (see the module docstring), never forming (B, H, D).

    Each direction is a unit vector, flipped so that its largest-magnitude
    component is positive. Singular values too small to resolve in float64
    (below σ_max·sqrt(m·ε)) are returned as 0; their directions are still unit
    vectors orthogonal to the others, which J_b maps to (numerically) zero.
    With H > D they come from eigh; with H ≤ D, where u ↦ J_bᵀu/σ is undefined,
    they complete the resolved directions to an orthonormal set (by the QR
    factorisation that orthonormalises those). Any such completion is a valid
    right singular vector for σ = 0; which one is returned is deterministic but
    otherwise arbitrary.

    Args:
        x, weight, bias, activation: as in :func:`jacobian`.
        k: how many singular values, 1 ≤ k ≤ min(H, D).

    Returns:
        ``Tangents(singular_values, directions)`` of shapes (B, k) and (B, k, D),
        in x's dtype, on x's device. Not differentiable: eigenvector derivatives
        do not exist where singular values repeat.

    Raises:
        TypeError: as :func:`jacobian`, or k not an int.
        ValueError: as :func:`jacobian`, or k out of range.
    """
    check_encoder_args(x, weight, bias, activation)
    hidden, features = weight.shape
    check_int_in_range("k", k, 1, min(hidden, features), high_name="min(hidden_features, in_features)")
    with torch.no_grad():
        w, slopes, wwt = _float64_layer(x, weight, bias, activation)
        values, directions = [], []
        for chunk in slopes.split(_chunk_size(hidden, features, k)):
            eigvals, eigvecs = torch.linalg.eigh(_gram(chunk, w, wwt))
            singular = _singular_values(eigvals)[:, :k]
            top = eigvecs.flip(-1)[:, :, :k]
            if wwt is None:
                vectors = top.transpose(1, 2)
            else:
                vectors = _right_vectors(chunk, w, top, resolved=singular > 0)
            values.append(singular)
            directions.append(_fix_signs(vectors))
        return Tangents(
            torch.cat(values).to(x.dtype),
            torch.cat(directions).to(x.dtype),
        )


# eq=False: the generated __eq__ would compare the spectrum tensors, which has no truth value.
@dataclass(frozen=True, eq=False)
class ContractionReport:
    """The contraction of an encoder layer over a batch, as reported in the CAE papers.

    Attributes:
        num_samples: B.
        frobenius_mean: mean over samples of ‖J_b‖_F (the square root of the
            contractive penalty).
        fraction_below_one: fraction of all B·min(H, D) singular values that are
            < 1, i.e. of directions the encoder contracts.
        top_singular_values: the mean over samples of the 5 largest singular
            values (fewer if min(H, D) < 5).
        spectrum: shape (min(H, D),), float64 on the CPU: the mean over samples
            of the singular values sorted in descending order.
    """

    num_samples: int
    frobenius_mean: float
    fraction_below_one: float
    top_singular_values: tuple[float, ...]
    spectrum: Tensor

    def __str__(self) -> str:
        top = ", ".join(f"{value:.4g}" for value in self.top_singular_values)
        return (
            f"Contraction over {self.num_samples} samples ({self.spectrum.numel()} singular values each):\n"
            f"  mean Jacobian norm ‖J‖_F:    {self.frobenius_mean:.4g}\n"
            f"  singular values below 1:    {self.fraction_below_one:.1%}\n"
            f"  mean top singular values:   {top}"
        )


def contraction_report(
    model_or_weights: object, x: Tensor, *, activation: str | None = None
) -> ContractionReport:
    """Summarise the singular spectrum of the encoder's Jacobian over the samples x.

    Args:
        model_or_weights: the encoder layer, as a tuple (weight, bias) or
            (weight, bias, activation), or an object with attributes ``weight``,
            ``bias`` and ``activation`` (such as an encoder module; ``activation``
            may be missing when given here), or an object whose ``encoder``
            attribute is one (such as an autoencoder module). weight is (H, D),
            bias (H,) or None. Or a stack of fastcae layers
            (:func:`fastcae.deep.encoder_layers`: a deep or stacked model, a list
            of encoder layers), whose whole Jacobian J_b = D_L W_L ⋯ D_1 W_1 (H_L, D)
            is then summarised, formed explicitly one chunk of samples at a time.
        x: inputs, shape (B, D) with B ≥ 1.
        activation: φ; by default the model's, else "sigmoid". If both are given
            they must agree. Not for stacks, whose layers name their own.

    Returns:
        A :class:`ContractionReport`; ``print`` it for a summary. Computed in
        float64 through the smaller Gram matrix of each J_b, without gradients.

    Raises:
        TypeError: model_or_weights of an unsupported kind; bad tensors as in
            :func:`jacobian`.
        ValueError: a tuple of the wrong length, conflicting activations, an
            empty batch or weight; bad shapes as in :func:`jacobian`.
    """
    layers = encoder_layers(model_or_weights)
    if layers is not None and len(layers) > 1:
        if activation is not None:
            raise ValueError("activation= is for one layer; the layers of a stack name their own")
        return _chain_contraction_report(layers, x)
    weight, bias, activation = _encoder_parameters(model_or_weights, activation)
    check_encoder_args(x, weight, bias, activation)
    hidden, features = weight.shape
    rank = min(hidden, features)
    if x.shape[0] == 0:
        raise ValueError("x must hold at least one sample, got an empty batch")
    if rank == 0:
        raise ValueError(f"weight must have at least one row and one column, got shape {tuple(weight.shape)}")
    with torch.no_grad():
        w, slopes, wwt = _float64_layer(x, weight, bias, activation)
        # The closed form of ‖J_b‖²_F, exact where the Gram eigenvalues are rounded.
        frobenius = (slopes.square() @ w.square().sum(1)).sqrt()
        spectrum_sum = torch.zeros(rank, dtype=torch.float64, device=w.device)
        below_one = 0
        for chunk in slopes.split(_chunk_size(hidden, features, 0)):
            singular = _singular_values(torch.linalg.eigvalsh(_gram(chunk, w, wwt)))
            spectrum_sum += singular.sum(0)
            below_one += int((singular < 1).sum())
        spectrum = (spectrum_sum / x.shape[0]).cpu()
    return ContractionReport(
        num_samples=x.shape[0],
        frobenius_mean=frobenius.mean().item(),
        fraction_below_one=below_one / (x.shape[0] * rank),
        top_singular_values=tuple(spectrum[:5].tolist()),
        spectrum=spectrum,
    )


def _chain_contraction_report(layers: tuple[Layer, ...], x: Tensor) -> ContractionReport:
    """:func:`contraction_report` of a stack of layers, from its explicit Jacobians in float64."""
    check_tensor("x", x)
    if x.dim() == 2 and x.shape[0] == 0:
        raise ValueError("x must hold at least one sample, got an empty batch")
    wide = [
        Layer(layer.weight.detach().double(), _double(layer.bias), layer.activation, layer.backend)
        for layer in layers
    ]
    hidden, features = wide[-1].weight.shape[0], x.shape[-1]
    rank = min(hidden, features)
    per_sample = hidden * features + 2 * rank * rank
    frobenius, below_one = [], 0
    spectrum_sum = torch.zeros(rank, dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for chunk in x.detach().double().split(max(1, _CHUNK_ELEMENTS // per_sample)):
            jac = chain_jacobian(wide, chunk)  # (c, H_L, D)
            gram = jac @ jac.transpose(1, 2) if hidden <= features else jac.transpose(1, 2) @ jac
            singular = _singular_values(torch.linalg.eigvalsh(gram))
            frobenius.append(jac.square().sum((1, 2)).sqrt())
            spectrum_sum += singular.sum(0)
            below_one += int((singular < 1).sum())
    spectrum = (spectrum_sum / x.shape[0]).cpu()
    return ContractionReport(
        num_samples=x.shape[0],
        frobenius_mean=torch.cat(frobenius).mean().item(),
        fraction_below_one=below_one / (x.shape[0] * rank),
        top_singular_values=tuple(spectrum[:5].tolist()),
        spectrum=spectrum,
    )


def _double(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.detach().double()


def local_pca_tangents(queries: Tensor, data: Tensor, *, n_neighbors: int = 10, k: int = 4) -> Tensor:
    """Tangent directions estimated by local PCA, the classical baseline for :func:`tangents`.

    For each query, takes its n_neighbors nearest points of ``data`` (Euclidean),
    leaving out one exact copy of the query if ``data`` holds it (so querying
    the data set's own points does not count each point as its own neighbour;
    further copies are kept, as genuine neighbours), and returns the top-k
    principal directions of their differences from their mean.

    Args:
        queries: shape (Q, D).
        data: shape (N, D), same dtype and device as queries.
        n_neighbors: neighbours per query; n_neighbors > k, since n centred
            points span at most n - 1 directions, and n_neighbors ≤ N.
        k: principal directions per query, 1 ≤ k ≤ D.

    Returns:
        Shape (Q, k, D) in queries' dtype: orthonormal directions in order of
        decreasing variance, each flipped so that its largest-magnitude
        component is positive. Not differentiable.

    Raises:
        TypeError: non-tensor or non-floating inputs, mixed dtypes, non-int counts.
        ValueError: wrong shapes, mixed devices, counts out of range, or a query
            left with fewer than n_neighbors points once its copy is removed.
    """
    check_tensor("queries", queries)
    check_tensor("data", data)
    for name, tensor in (("queries", queries), ("data", data)):
        if tensor.dim() != 2:
            raise ValueError(f"{name} must be 2-D (num_points, features), got shape {tuple(tensor.shape)}")
    if queries.shape[1] != data.shape[1]:
        raise ValueError(
            f"queries have {queries.shape[1]} features but data has {data.shape[1]}: they must match"
        )
    if data.dtype != queries.dtype:
        raise TypeError(f"data has dtype {data.dtype} but queries has {queries.dtype}: they must match")
    if data.device != queries.device:
        raise ValueError(f"data is on {data.device} but queries is on {queries.device}: they must match")
    num_points, features = data.shape
    check_int_in_range("k", k, 1, features, high_name="in_features")
    check_int_in_range(
        "n_neighbors", n_neighbors, k + 1, num_points, low_name="k + 1", high_name="the number of data points"
    )
    with torch.no_grad():
        query64, data64 = queries.to(torch.float64), data.to(torch.float64)
        candidates = min(n_neighbors + 1, num_points)  # one spare, for the query's own copy
        neighbours = torch.cat(
            [
                _nearest_excluding_self(chunk, data64, n_neighbors, candidates)
                for chunk in query64.split(max(1, _CHUNK_ELEMENTS // (num_points + candidates * features)))
            ]
        )
        centred = neighbours - neighbours.mean(dim=1, keepdim=True)
        principal = torch.linalg.svd(centred, full_matrices=False).Vh[:, :k]
        return _fix_signs(principal).to(queries.dtype)


def _float64_layer(
    x: Tensor, weight: Tensor, bias: Tensor | None, activation: str
) -> tuple[Tensor, Tensor, Tensor | None]:
    """W (H, D) and φ'(z) (B, H) in float64, and W Wᵀ (H, H) when the H×H Gram is the smaller."""
    w = weight.detach().to(torch.float64)
    z = x.detach().to(torch.float64) @ w.T
    if bias is not None:
        z = z + bias.detach().to(torch.float64)
    hidden, features = w.shape
    return w, ACTIVATIONS[activation].slope(z), w @ w.T if hidden <= features else None


def _chunk_size(hidden: int, features: int, k: int) -> int:
    """Samples per chunk so that the Gram matrices, their eigenvectors and k directions fit the budget."""
    size = min(hidden, features)
    per_sample = 2 * size * size + 3 * k * features
    if hidden > features:
        per_sample += hidden * features  # the chunk's J_b, from which its D×D Gram is built
    return max(1, _CHUNK_ELEMENTS // per_sample)


def _gram(slopes: Tensor, w: Tensor, wwt: Tensor | None) -> Tensor:
    """The smaller Gram matrix of each J_b: J Jᵀ (c, H, H) if W Wᵀ is given, else Jᵀ J (c, D, D)."""
    if wwt is not None:
        return slopes[:, :, None] * wwt * slopes[:, None, :]
    scaled = slopes[:, :, None] * w
    return scaled.transpose(1, 2) @ scaled


def _singular_values(eigvals: Tensor) -> Tensor:
    """Descending singular values (c, m) from ascending Gram eigenvalues (c, m), with the
    unresolved ones (σ² ≤ m·ε·σ²_max, including small negative eigenvalues) set to 0;
    NaN stays NaN."""
    tolerance = eigvals[:, -1:] * (eigvals.shape[1] * _EPS64)
    return torch.where(eigvals <= tolerance, 0, eigvals).sqrt().flip(-1)


def _right_vectors(slopes: Tensor, w: Tensor, left: Tensor, resolved: Tensor) -> Tensor:
    """Orthonormal right singular vectors (c, k, D) from left ones (c, H, k), resolved (c, k)
    where σ > 0."""
    # J_bᵀ u = Wᵀ (φ'_b ⊙ u), as (c, k, H) @ (H, D).
    images = (slopes[:, :, None] * left).transpose(1, 2) @ w
    # A Householder QR in order of decreasing σ normalises the images and removes their rounding
    # error, which for small σ lies mostly along the directions of larger σ (u's error is
    # amplified by σ_j/σ_i there). The unresolved slots are a suffix and enter as zero columns:
    # their reflections are the identity, so Q's columns there are unit vectors orthogonal to
    # the resolved directions, which span J_b's numerical row space.
    factors, tau = torch.geqrf(torch.where(resolved[:, :, None], images, 0).transpose(1, 2))
    return torch.linalg.householder_product(factors, tau).transpose(1, 2)


def _fix_signs(vectors: Tensor) -> Tensor:
    """Flip each vector (..., D) so that its largest-magnitude component is positive, making
    singular vectors, defined only up to sign, deterministic."""
    pivot = vectors.abs().argmax(dim=-1, keepdim=True)
    return vectors * vectors.gather(-1, pivot).sign()


def _nearest_excluding_self(queries: Tensor, data: Tensor, n_neighbors: int, candidates: int) -> Tensor:
    """The n_neighbors nearest points (q, n, D) of ``data`` to each query, without one exact copy of it."""
    order = torch.cdist(queries, data).topk(candidates, dim=1, largest=False).indices
    points = data[order]
    is_copy = (points == queries[:, None, :]).all(dim=-1)
    has_copy = is_copy.any(dim=1)
    # Drop the first exact copy; the distances come from a GEMM, so a copy is not exactly 0 away.
    keep = torch.ones_like(is_copy)
    keep[has_copy, is_copy[has_copy].int().argmax(dim=1)] = False
    keep &= keep.cumsum(dim=1) <= n_neighbors
    if bool((keep.sum(dim=1) < n_neighbors).any()):
        raise ValueError(
            f"n_neighbors = {n_neighbors} but data holds only {data.shape[0] - 1} points besides a query's "
            f"own copy: lower n_neighbors"
        )
    return points[keep].view(queries.shape[0], n_neighbors, data.shape[1])


def _encoder_parameters(model_or_weights: object, activation: str | None) -> tuple[object, object, object]:
    """(weight, bias, activation) from the forms :func:`contraction_report` accepts."""
    if isinstance(model_or_weights, (tuple, list)):
        if len(model_or_weights) not in (2, 3):
            raise ValueError(
                "model_or_weights as a sequence must be (weight, bias) or (weight, bias, activation), "
                f"got {len(model_or_weights)} items"
            )
        weight, bias, *rest = model_or_weights
        own = rest[0] if rest else None
    else:
        layer = model_or_weights
        if not hasattr(layer, "weight") and hasattr(layer, "encoder"):
            layer = layer.encoder
        if not (hasattr(layer, "weight") and hasattr(layer, "bias")):
            raise TypeError(
                "model_or_weights must be a tuple (weight, bias[, activation]), an object with weight and "
                f"bias attributes, or one with an encoder attribute holding one; got {type(layer).__name__}"
            )
        weight, bias, own = layer.weight, layer.bias, getattr(layer, "activation", None)
    if activation is None:
        return weight, bias, "sigmoid" if own is None else own
    if own is not None and own != activation:
        raise ValueError(f"activation={activation!r} conflicts with the model's activation {own!r}")
    return weight, bias, activation


def explicit_contraction_report(encoder: Callable[[Tensor], Tensor], x: Tensor) -> ContractionReport:
    """:func:`contraction_report` for any encoder, from its explicit per-sample Jacobians.

    ``encoder`` maps a batch (B, ...) to codes (B, ...) sample by sample (a
    convolutional or a deep encoder); each J_b (U × D, flattened) is formed
    with torch.func in x's dtype (pass a float64 copy of the model and x for
    exact spectra) and its singular values taken directly, one sample at a
    time: meant for a few held-out samples of small images.
    """
    check_tensor("x", x)
    if x.shape[0] == 0:
        raise ValueError("x must hold at least one sample, got an empty batch")
    samples = x.detach()

    def code_of(sample: Tensor) -> Tensor:
        return encoder(sample.unsqueeze(0))[0].flatten()

    spectra, frobenius = [], []
    with torch.no_grad():
        for sample in samples:
            jacobian = torch.func.jacrev(code_of)(sample).flatten(1).double()  # (U, D)
            spectra.append(torch.linalg.svdvals(jacobian))
            frobenius.append(jacobian.norm())
    singular = torch.stack(spectra)  # (B, min(U, D)), descending
    spectrum = singular.mean(dim=0).cpu()
    return ContractionReport(
        num_samples=samples.shape[0],
        frobenius_mean=torch.stack(frobenius).mean().item(),
        fraction_below_one=(singular < 1).double().mean().item(),
        top_singular_values=tuple(spectrum[:5].tolist()),
        spectrum=spectrum,
    )
