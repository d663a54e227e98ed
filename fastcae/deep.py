"""The contractive penalty of a whole multi-layer encoder, exact and estimated.

An encoder of L layers h_l = φ_l(z_l), z_l = h_{l-1} W_lᵀ + b_l, with h_0 = x (B, D),
W_l (H_l, H_{l-1}) and H_0 = D, has the per-sample Jacobian

    J_b = ∂h_L/∂x_b = D_L W_L D_{L-1} W_{L-1} ⋯ D_1 W_1       (H_L, D),  D_l = diag(φ_l'(z_{l,b}))

and the penalty p_b = ‖J_b‖²_F. The top diagonal only scales rows, so

    p_b = Σ_k φ_L'(z_{L,bk})² q_bk,   q_bk = ‖(M_b)_k‖²,   M_b = W_L D_{L-1} W_{L-1} ⋯ D_1 W_1

For one layer M = W, and p is the fused closed form of :func:`fastcae.encode`.
For more, M_b is a product of per-sample matrices (every junction carries a
sample's diagonal), computed two ways:

- **exact**: M_b by batched GEMMs in the association order of least arithmetic
  (a matrix-chain search over the layer sizes), closed either with W_1 in the
  product or through the Gram matrix G = W_1 W_1ᵀ (H_1, H_1), computed once per
  call: q_bk = ⟨(M'_b G)_k, (M'_b)_k⟩ with M'_b = W_L ⋯ W_2 D_1 (H_L, H_1), which
  replaces the widest factor (H_1 × D) by an H_1 × H_1 one. A tapering MNIST
  encoder 784-500-250 costs H_L·H_1² = 62.5 M multiply-adds per sample that way
  against H_L·H_1·D = 98 M for J_b itself, and torch.func's vmap(jacrev) spends
  about 129 M (one VJP per output, the first through an identity). The batch is
  processed in chunks so that no temporary outgrows ``_BUDGET_ELEMENTS``; where
  what autograd would keep for the backward pass outgrows it too, each chunk is
  recomputed in the backward pass instead (activation checkpointing).
- **projection**: an unbiased estimate from k orthonormal directions per sample,
  ‖J‖²_F ≈ (n/k) Σ_i ‖J q_i‖² (forward mode, q_i in the input space, n = D) or
  (n/k) Σ_i ‖q_iᵀ J‖² (reverse mode, n = H_L). With Q (n, k) the first k columns
  of a Haar-random orthogonal matrix, E[Q Qᵀ] = (k/n) I makes it unbiased, and
  its relative variance is 2(n − k)(nρ − 1) / (k (n − 1)(n + 2)) with
  ρ = Σσ⁴/(Σσ²)², below the 2ρ/k of k i.i.d. Gaussian directions and 0 at k = n.
  One direction (k = 1) is a vector of random signs instead (Hutchinson's
  estimator, ‖J s‖² with s ∈ {±1}ⁿ): unbiased, relative variance
  2(ρ − Σ_i A_ii²/(tr A)²) with A = JᵀJ (or J Jᵀ), which is at most (n + 2)/n
  times that of one uniform unit vector and lower wherever A's diagonal is
  uneven; and 8 signs come from one random byte, about 5× cheaper than the
  Gaussians a unit vector needs (those cost 5–10% of a training step at MNIST
  size on the CPU).

Encoders made of fastcae layers (:class:`fastcae.nn.ContractiveEncoder` and the
modules built of them) use the formulas above on their weights; any other
encoder goes through torch.func (jacrev/jacfwd, jvp) and autograd (vjp).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ._constants import constant_tensors
from ._precision import acc_dtype
from ._validation import (
    check_chain_args,
    check_choice,
    check_generator,
    check_positive_int,
    check_reduction,
    check_tensor,
)
from .activations import ACTIVATIONS, Activation
from .functional import EncoderOutput, _reduce, encode

ESTIMATORS: tuple[str, ...] = ("auto", "exact", "projection")

# "auto" takes the exact value when it costs at most this many encoder forward
# passes (or n_projections of them, if more), the cost of a projection estimate.
AUTO_EXACT_FORWARDS = 4
# Elements one chunk of the exact penalty may hold in temporaries, and the
# batch's saved tensors before chunks are recomputed in the backward pass
# instead (256 MiB in float32).
_BUDGET_ELEMENTS = 1 << 26
# Temporaries of a chunk's backward pass, in units of its intermediates' size
# (the Gram step's M' G and dM', the scaled operand, autograd's elementwise products).
_BACKWARD_COPIES = 4
# Samples of the batch-consistency probe of encoders fastcae cannot see into.
_PROBE_SAMPLES = 8


class Layer(NamedTuple):
    """One fastcae encoder layer: weight (H, D_in), bias (H,) or None, activation name, backend."""

    weight: Tensor
    bias: Tensor | None
    activation: str
    backend: str


def encoder_layers(encoder: object) -> tuple[Layer, ...] | None:
    """The layers of an encoder made of fastcae layers, bottom first, or None for any other.

    Recognized: :class:`~fastcae.nn.ContractiveEncoder`, a list, tuple,
    ``nn.Sequential`` or ``nn.ModuleList`` of them (composed: each takes the
    code of the one before), :class:`~fastcae.nn.DeepContractiveEncoder`, and the
    autoencoders :class:`~fastcae.nn.ContractiveAutoencoder`,
    :class:`~fastcae.nn.StackedContractiveAutoencoder` and
    :class:`~fastcae.nn.DeepContractiveAutoencoder` (their encoders).
    """
    from . import nn as fnn  # fastcae.nn imports this module

    if isinstance(encoder, fnn.ContractiveEncoder):
        modules = [encoder]
    elif isinstance(encoder, (fnn.ContractiveAutoencoder, fnn.DeepContractiveAutoencoder)):
        return encoder_layers(encoder.encoder)
    elif isinstance(encoder, fnn.DeepContractiveEncoder):
        modules = list(encoder.layers)
    elif isinstance(encoder, fnn.StackedContractiveAutoencoder):
        modules = [layer.encoder for layer in encoder.layers]
    elif isinstance(encoder, (list, tuple, torch.nn.Sequential, torch.nn.ModuleList)):
        modules = list(encoder)
        if not modules or not all(isinstance(m, fnn.ContractiveEncoder) for m in modules):
            return None
    else:
        return None
    return tuple(Layer(m.weight, m.bias, m.activation, m.backend) for m in modules)


def jacobian_penalty(
    encoder: object,
    x: Tensor,
    *,
    estimator: str = "auto",
    n_projections: int = 1,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
) -> Tensor:
    """The contractive penalty ‖∂f(x_b)/∂x_b‖²_F of a whole encoder f, per sample.

    .. math::
        p_b = \\|J_b\\|_F^2, \\qquad J_b = ∂f(x_b)/∂x_b = D_L W_L ⋯ D_1 W_1 \\text{ (fastcae layers)}

    Args:
        encoder: a module or callable mapping x (B, D) to codes (B, H) sample by
            sample; or an encoder made of fastcae layers (see :func:`encoder_layers`),
            whose weights give the penalty in closed form.
        x: inputs, shape (B, D).
        estimator:
            - "exact": the true value. Fastcae layers: one layer is the fused
              :func:`fastcae.penalty`; more, the per-sample product
              W_L D_{L-1} ⋯ D_1 W_1 by batched GEMMs in the association order of
              least arithmetic (through W_1 W_1ᵀ where that is cheaper), in
              chunks of bounded memory. Other encoders: torch.func's
              vmap(jacrev) (vmap(jacfwd) when D < H).
            - "projection": unbiased, from ``n_projections`` orthonormal random
              directions per sample (one: random signs) on the input side (forward mode, ‖J q‖²) or the
              output side (reverse mode, ‖qᵀ J‖²): the side whose estimate has the
              lower variance for its cost. The relative variance of k orthonormal
              directions in n dimensions is proportional to (1 − k/n)/k (see the
              module docstring), so the side with the lower
              (1 − k/n) × (multiply-adds of the tangent pass and its backward) is
              taken; forward mode saves the backward GEMM of the first layer's
              input, so a tapering stack of fastcae layers (D > H_L) is projected
              on the input side at small k, on the output side as k nears H_L. For
              other encoders, whose cost fastcae cannot see, the smaller side
              (the input side on a tie). ``n_projections`` ≥ n gives a full basis:
              the exact value.
            - "auto": "exact" when it costs at most max(4, n_projections) of the
              encoder's forward passes, which a projection estimate costs; else
              "projection". Fastcae layers: counted in multiply-adds (one layer is
              always exact); other encoders: exact takes min(D, H) passes.
        n_projections: k ≥ 1, directions per sample of the projection estimate.
        generator: a torch.Generator on x's device, for reproducible directions.
        reduction: "none" (B,), "sum", or "mean" over the batch.

    Returns:
        The penalty in float32 (float64 for float64 inputs), differentiable with
        respect to the encoder's parameters and x (to second order on fastcae
        layers).

    Raises:
        TypeError: an encoder that is neither callable nor made of fastcae layers,
            one that does not return a tensor, a non-tensor x.
        ValueError: bad shapes, an unknown estimator or reduction, n_projections
            not a positive integer, a generator on another device, or an encoder
            caught mixing samples: its codes for a batch of 8 samples differ from
            its codes for the two halves of that batch (BatchNorm in training
            mode, batch statistics, attention across the batch; also dropout and
            other randomness, which has no Jacobian). Mixing that leaves those
            codes equal is not caught.
    """
    check_tensor("x", x)
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (batch, in_features), got shape {tuple(x.shape)}")
    check_choice("estimator", estimator, ESTIMATORS)
    check_positive_int("n_projections", n_projections)
    check_reduction(reduction)
    check_generator(generator, x.device)
    layers = encoder_layers(encoder)
    if layers is not None:
        per_sample = encode_chain(
            layers, x, estimator=estimator, n_projections=n_projections, generator=generator
        ).penalty
    elif callable(encoder):
        per_sample = _penalty_of_function(encoder, x, estimator, n_projections, generator)
    else:
        raise TypeError(
            "encoder must be a module or callable mapping x (B, D) to codes (B, H), or fastcae "
            f"encoder layers; got {type(encoder).__name__}"
        )
    return _reduce(per_sample, reduction)


def encode_chain(
    layers: Sequence[Layer],
    x: Tensor,
    *,
    estimator: str = "auto",
    n_projections: int = 1,
    generator: torch.Generator | None = None,
) -> EncoderOutput:
    """The code h_L (B, H_L) of a stack of fastcae layers and its whole penalty ‖J_b‖²_F (B,).

    One forward pass gives both: the penalty reuses its pre-activations, so a
    model that decodes the code pays for the encoder once. Arguments as in
    :func:`jacobian_penalty`; ``layers`` bottom first.
    """
    check_chain_args(x, [(layer.weight, layer.bias, layer.activation) for layer in layers])
    sizes = [x.shape[1], *(layer.weight.shape[0] for layer in layers)]
    if estimator == "auto":
        estimator = _auto_estimator_for_chain(sizes, x.shape[0], n_projections)
    if estimator == "exact" and len(layers) == 1:
        layer = layers[0]
        return encode(x, layer.weight, layer.bias, activation=layer.activation, backend=layer.backend)
    code, codes = _chain_forward(layers, x)
    compute = acc_dtype(x.dtype)
    weights = [layer.weight.to(compute) for layer in layers]
    if estimator == "exact":
        penalty = _exact_chain_penalty(_slopes(layers, codes), weights)
    else:
        side = _projection_side(sizes, n_projections, _chain_tangent_costs(sizes))
        activations = [ACTIVATIONS[layer.activation] for layer in layers]
        penalty = _projected_chain_penalty(codes, activations, weights, side, n_projections, generator)
    return EncoderOutput(code, penalty)


def _chain_forward(layers: Sequence[Layer], x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """h_L and every layer's code h_l (B, H_l) in the accumulation dtype.

    The penalty takes the slopes φ_l'(z_l) from the codes, as the fused backward
    pass does: one elementwise step on a tensor the forward pass has anyway (from
    z, a sigmoid's slope costs two more sigmoids, and their backward). A unit
    saturated past the resolution of its code gets slope 0, off by less than that
    resolution.
    """
    compute = acc_dtype(x.dtype)
    code, codes = x, []
    for layer in layers:
        code = ACTIVATIONS[layer.activation].forward(F.linear(code, layer.weight, layer.bias))
        codes.append(code.to(compute))
    return code, codes


def _slopes(layers: Sequence[Layer], codes: Sequence[Tensor]) -> list[Tensor]:
    """φ_l'(z_l) (B, H_l) of every layer, from its code."""
    return [
        ACTIVATIONS[layer.activation].slope_from_code(code) for layer, code in zip(layers, codes, strict=True)
    ]


# --- exact: the per-sample matrix chain ------------------------------------------------------------


class _ChainPlan(NamedTuple):
    """How the exact penalty multiplies a chain.

    gram: close through G = W_1 W_1ᵀ (the chain is W_L ⋯ W_2, then D_1) or not (W_L ⋯ W_1).
    splits: for factors i..j of the chain (left to right, W_L first), the k where
        the product splits into (i..k)(k+1..j).
    cost: multiply-adds per sample, G amortized over the batch.
    per_sample_elements: elements of one sample's per-sample intermediates.
    """

    gram: bool
    splits: dict[tuple[int, int], int]
    cost: float
    per_sample_elements: int


def _chain_order(dims: Sequence[int]) -> tuple[float, dict[tuple[int, int], int], int]:
    """Matrix-chain order of factors i with shapes (dims[i], dims[i+1]): the least
    multiply-adds, the split of every sub-chain, and the elements of every
    per-sample intermediate along that order (products and diagonally scaled factors)."""
    count = len(dims) - 1
    cost: dict[tuple[int, int], float] = {(i, i): 0.0 for i in range(count)}
    splits: dict[tuple[int, int], int] = {}
    for length in range(2, count + 1):
        for i in range(count - length + 1):
            j = i + length - 1
            options = {
                k: cost[i, k] + cost[k + 1, j] + dims[i] * dims[k + 1] * dims[j + 1] for k in range(i, j)
            }
            splits[i, j] = min(options, key=options.get)
            cost[i, j] = options[splits[i, j]]

    def elements(i: int, j: int) -> int:
        if i == j:
            return 0
        k = splits[i, j]
        scaled = min(dims[i] * dims[k + 1], dims[k + 1] * dims[j + 1])  # the operand the diagonal scales
        return elements(i, k) + elements(k + 1, j) + scaled + dims[i] * dims[j + 1]

    return cost[0, count - 1], splits, elements(0, count - 1)


@functools.lru_cache(maxsize=256)
def _exact_plan(sizes: tuple[int, ...], batch: int) -> _ChainPlan:
    """The cheaper of the two closings for sizes [D, H_1, ..., H_L], L ≥ 2."""
    top, hidden_1, features = sizes[-1], sizes[1], sizes[0]
    direct_cost, direct_splits, direct_elements = _chain_order(sizes[::-1])
    gram_cost, gram_splits, gram_elements = _chain_order(sizes[:0:-1])
    gram_cost += top * hidden_1 * hidden_1 + hidden_1 * hidden_1 * features / max(batch, 1)
    gram_elements += 2 * top * hidden_1  # M' (the chain scaled by D_1) and M' G
    if gram_cost < direct_cost:
        return _ChainPlan(True, gram_splits, gram_cost, gram_elements)
    return _ChainPlan(False, direct_splits, direct_cost, direct_elements)


def _product(factors: Sequence[Tensor], junctions: Sequence[Tensor], splits: dict, i: int, j: int) -> Tensor:
    """Factors i..j with junction diagonal s between factors s and s+1: shared factors
    are (m, n), products per sample (c, m, n). The diagonal scales the smaller operand."""
    if i == j:
        return factors[i]
    k = splits[i, j]
    left = _product(factors, junctions, splits, i, k)
    right = _product(factors, junctions, splits, k + 1, j)
    diagonal = junctions[k]
    if left.shape[-2] <= right.shape[-1]:
        return torch.matmul(left * diagonal[:, None, :], right)
    return torch.matmul(left, diagonal[:, :, None] * right)


class _RowGram(torch.autograd.Function):
    """q_bk = ⟨(M_b G)_k, (M_b)_k⟩ for M (c, m, n) and a symmetric G (n, n): (c, m).

    Backward: dM = 2 dq ⊙ (M G) (the product the forward pass kept), and
    dG = Σ_bk dq_bk M_bkᵀ M_bk, one GEMM over the stacked rows; autograd's
    rule for a matmul would multiply by G once more.
    """

    @staticmethod
    def forward(rows: Tensor, gram: Tensor) -> tuple[Tensor, Tensor]:
        product = torch.matmul(rows, gram)
        return (product * rows).sum(-1), product

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        rows, gram = inputs
        ctx.save_for_backward(rows, gram, output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad_q: Tensor, _grad_product: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        rows, gram, product = ctx.saved_tensors
        if torch.is_grad_enabled():  # a graph of the gradient is wanted: M G from the inputs
            product = torch.matmul(rows, gram)
        weighted = grad_q.unsqueeze(-1) * rows
        grad_rows = 2 * grad_q.unsqueeze(-1) * product if ctx.needs_input_grad[0] else None
        grad_gram = None
        if ctx.needs_input_grad[1]:
            width = rows.shape[-1]
            grad_gram = weighted.reshape(-1, width).t() @ rows.reshape(-1, width)
        return grad_rows, grad_gram


def _exact_chunk(plan: _ChainPlan, count: int, *tensors: Tensor) -> Tensor:
    """p of one chunk: tensors = slopes d_1..d_L (c, H_l), then the chain's factors, then G
    (gram plans)."""
    slopes, rest = tensors[:count], tensors[count:]
    if plan.gram:
        factors, gram = rest[:-1], rest[-1]
    else:
        factors, gram = rest, None
    # Factor i is W_{L-i}; the junction between factors s and s+1 is D_{L-s-1}.
    junctions = [slopes[count - 2 - s] for s in range(len(factors) - 1)]
    chain = _product(factors, junctions, plan.splits, 0, len(factors) - 1)
    if plan.gram:
        chain = chain * slopes[0][:, None, :]  # D_1 closes M'
        row_norms_sq = _RowGram.apply(chain, gram)[0]
    else:
        row_norms_sq = chain.square().sum(-1)
    return (slopes[-1].square() * row_norms_sq).sum(-1)


def _exact_chain_penalty(slopes: Sequence[Tensor], weights: Sequence[Tensor]) -> Tensor:
    """‖J_b‖²_F of a chain of L ≥ 2 layers from its slopes and weights (see the module docstring)."""
    batch = slopes[0].shape[0]
    sizes = (weights[0].shape[1], *(w.shape[0] for w in weights))
    plan = _exact_plan(sizes, batch)
    factors = list(weights[::-1] if not plan.gram else weights[:0:-1])
    if plan.gram:
        factors.append(weights[0] @ weights[0].t())
    chunk = max(1, _BUDGET_ELEMENTS // (_BACKWARD_COPIES * plan.per_sample_elements))
    needs_graph = torch.is_grad_enabled() and any(t.requires_grad for t in (*slopes, *factors))
    recompute = needs_graph and batch * plan.per_sample_elements > _BUDGET_ELEMENTS
    run = functools.partial(_exact_chunk, plan, len(slopes))
    parts = []
    # split, not slicing: the backward pass concatenates the chunks' gradients once
    # instead of scattering each into a zeroed (B, H_l) tensor.
    for pieces in zip(*(d.split(chunk) for d in slopes), strict=True):
        if recompute:
            parts.append(checkpoint(run, *pieces, *factors, use_reentrant=False, preserve_rng_state=False))
        else:
            parts.append(run(*pieces, *factors))
    return torch.cat(parts) if parts else slopes[0].new_zeros(0)


# --- projection estimates -------------------------------------------------------------------------


def _chain_tangent_costs(sizes: Sequence[int]) -> tuple[float, float]:
    """Multiply-adds per sample of one projection with its backward pass: forward mode
    (its input-side direction is constant, so the first layer's GEMM has no input
    gradient) and reverse mode."""
    forward = _forward_cost(sizes)
    return 3 * forward - sizes[0] * sizes[1], 3 * forward


def _projection_side(sizes: Sequence[int], count: int, costs: tuple[float, float]) -> str:
    """ "input" (forward mode) or "output" (reverse mode): the lower (1 − k/n) × cost."""
    scores = {
        side: (1 - min(count, dim) / dim) * cost
        for side, dim, cost in (("input", sizes[0], costs[0]), ("output", sizes[-1], costs[1]))
    }
    return "output" if scores["output"] < scores["input"] else "input"


def orthonormal_projections(
    batch: int,
    dim: int,
    count: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """min(count, dim) orthonormal directions in R^dim per sample, shape (k, batch, dim).

    The first k columns of a Haar-random orthogonal matrix: the Q factor of a
    Gaussian (dim, k) matrix spans a uniformly random k-dimensional subspace, so
    E[Σ_i q_i q_iᵀ] = (k/dim) I.
    """
    if count == 1 or dim == 1:  # the Q factor of one column is the column, normalized
        gaussian = torch.randn(1, batch, dim, generator=generator, dtype=dtype, device=device)
        return gaussian / torch.linalg.vector_norm(gaussian, dim=-1, keepdim=True)
    gaussian = torch.randn(batch, dim, min(count, dim), generator=generator, dtype=dtype, device=device)
    return torch.linalg.qr(gaussian).Q.permute(2, 0, 1)


@constant_tensors
def _byte_signs(dtype: torch.dtype, device: torch.device) -> Tensor:
    """(256, 8): row v holds the bits of the byte v as ±1."""
    bits = (torch.arange(256, device=device)[:, None] >> torch.arange(8, device=device)) & 1
    return (2 * bits - 1).to(dtype)


def random_signs(
    batch: int,
    dim: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """One Rademacher direction per sample, shape (1, batch, dim): independent ±1, each
    value with probability 1/2, 8 of them from one random byte (looked up in a table:
    0.1 ms for 256 × 784 on the CPU, against 0.5 ms for as many Gaussians)."""
    device = torch.device("cpu") if device is None else torch.device(device)
    per_row = -(-dim // 8)
    random_bytes = torch.randint(0, 256, (batch * per_row,), generator=generator, device=device)
    signs = _byte_signs(dtype, device).index_select(0, random_bytes)
    return signs.view(1, batch, per_row * 8)[..., :dim]


def _projection_directions(
    batch: int, dim: int, count: int, generator: torch.Generator | None, dtype: torch.dtype, device
) -> tuple[Tensor, float]:
    """The directions q_i (k, B, dim) of the projection estimate and its factor c, with
    E[c Σ_i q_i q_iᵀ] = I: random signs for one direction (c = 1), else min(count, dim)
    orthonormal ones (c = dim / k); see the module docstring."""
    if count == 1:
        return random_signs(batch, dim, generator=generator, dtype=dtype, device=device), 1.0
    directions = orthonormal_projections(batch, dim, count, generator=generator, dtype=dtype, device=device)
    return directions, dim / directions.shape[0]


def _projected_chain_penalty(
    codes: Sequence[Tensor],
    activations: Sequence[Activation],
    weights: Sequence[Tensor],
    side: str,
    count: int,
    generator: torch.Generator | None,
) -> Tensor:
    """c Σ_i ‖J_b q_i‖² (input side) or c Σ_i ‖q_iᵀ J_b‖² (output side), through the
    layers' weights and slopes (from their codes): k tangents of shape (k, B, ·) per
    layer, one GEMM and one elementwise step each."""
    batch, compute = codes[0].shape[0], codes[0].dtype
    dim = weights[0].shape[1] if side == "input" else weights[-1].shape[0]
    directions, factor = _projection_directions(batch, dim, count, generator, compute, codes[0].device)
    layers = list(zip(activations, weights, codes, strict=True))
    # One direction stays 2-D: plain GEMMs, and no sum over directions (fewer ops per step).
    tangent = directions[0] if directions.shape[0] == 1 else directions
    if side == "input":
        for act, weight, code in layers:
            tangent = act.tangent_from_code(F.linear(tangent, weight), code)
    else:
        act, _, code = layers[-1]
        tangent = act.tangent_from_code(tangent, code)
        for (_, weight, _), (act, _, code) in zip(layers[:0:-1], layers[-2::-1], strict=True):
            tangent = act.tangent_from_code(torch.matmul(tangent, weight), code)
        tangent = torch.matmul(tangent, weights[0])
    squares = tangent.square().sum(-1)
    if squares.dim() == 2:
        squares = squares.sum(0)
    return squares if factor == 1 else squares * factor


# --- any other encoder: torch.func and autograd ---------------------------------------------------


def _penalty_of_function(
    encoder: Callable[[Tensor], Tensor],
    x: Tensor,
    estimator: str,
    count: int,
    generator: torch.Generator | None,
) -> Tensor:
    """The penalty of an encoder fastcae cannot see into (see :func:`jacobian_penalty`)."""
    compute = acc_dtype(x.dtype)
    batch, features = x.shape
    if batch == 0:
        return x.new_zeros(0, dtype=compute)
    hidden = _check_per_sample(encoder, x)
    if estimator == "auto":
        exact = min(features, hidden) <= max(AUTO_EXACT_FORWARDS, count)
        estimator = "exact" if exact else "projection"
    if estimator == "exact":
        return _exact_function_penalty(encoder, x, hidden).to(compute)
    side = _projection_side((features, hidden), count, (1.0, 1.0))
    dim = features if side == "input" else hidden
    directions, factor = _projection_directions(batch, dim, count, generator, x.dtype, x.device)
    total = x.new_zeros(batch, dtype=compute)
    if side == "input":
        for direction in directions:
            total = total + torch.func.jvp(encoder, (x,), (direction,))[1].to(compute).square().sum(-1)
    else:
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            inputs = x if x.requires_grad else x.detach().requires_grad_()
            codes = encoder(inputs)
            for direction in directions if codes.requires_grad else ():  # else J = 0
                (pullback,) = torch.autograd.grad(
                    codes, inputs, direction, create_graph=keep_graph, retain_graph=True, allow_unused=True
                )
                if pullback is not None:
                    total = total + pullback.to(compute).square().sum(-1)
        if not keep_graph:
            total = total.detach()
    return total * factor


def _exact_function_penalty(encoder: Callable[[Tensor], Tensor], x: Tensor, hidden: int) -> Tensor:
    """Σ J_b² by torch.func: vmap over samples of jacrev (one VJP per output) or, when the
    input is narrower, jacfwd (one JVP per input); in chunks of bounded (c, H, D) Jacobians."""

    def per_sample(sample: Tensor) -> Tensor:
        return encoder(sample.unsqueeze(0)).squeeze(0)

    features = x.shape[1]
    jacobian_of = torch.func.jacrev if hidden <= features else torch.func.jacfwd
    chunk = max(1, _BUDGET_ELEMENTS // (_BACKWARD_COPIES * hidden * features))
    jacobian = torch.func.vmap(jacobian_of(per_sample), chunk_size=chunk)(x)
    return jacobian.square().sum((1, 2))


def _check_per_sample(encoder: Callable[[Tensor], Tensor], x: Tensor) -> int:
    """H of the encoder's codes, after checking that it maps (B, D) to (B, H) sample by
    sample: its codes for the first ≤ 8 samples must equal those of the two halves."""
    probe = x[: min(x.shape[0], _PROBE_SAMPLES)].detach()
    with torch.no_grad():
        whole = encoder(probe)
        if not isinstance(whole, Tensor):
            raise TypeError(f"encoder must return a tensor of codes (B, H), got {type(whole).__name__}")
        if whole.dim() != 2 or whole.shape[0] != probe.shape[0]:
            raise ValueError(
                f"encoder must map x (B, D) to codes (B, H); for x of shape {tuple(probe.shape)} it "
                f"returned shape {tuple(whole.shape)}"
            )
        if probe.shape[0] < 2:
            return whole.shape[1]
        half = probe.shape[0] // 2
        halves = torch.cat([encoder(probe[:half]), encoder(probe[half:])])
    scale = whole.abs().max().item() if whole.numel() else 0.0
    tolerance = max(1e-3, 8 * torch.finfo(whole.dtype).eps) * max(scale, 1e-30)
    if not torch.allclose(whole, halves, rtol=0.0, atol=tolerance, equal_nan=True):
        gap = (whole - halves).abs().max().item()
        raise ValueError(
            f"encoder mixes samples: its codes for {probe.shape[0]} samples differ by up to {gap:.3g} from "
            "its codes for the two halves of that batch, so it has no per-sample Jacobian (BatchNorm in "
            "training mode, batch statistics, randomness such as dropout: call encoder.eval())"
        )
    return whole.shape[1]


def _auto_estimator_for_chain(sizes: Sequence[int], batch: int, count: int) -> str:
    """ "exact" when it costs at most max(4, k) encoder forward passes (one layer: always)."""
    if len(sizes) == 2:
        return "exact"
    exact = _exact_plan(tuple(sizes), batch).cost
    return "exact" if exact <= max(AUTO_EXACT_FORWARDS, count) * _forward_cost(sizes) else "projection"


def _forward_cost(sizes: Sequence[int]) -> int:
    """Multiply-adds per sample of the encoder's forward pass, Σ_l H_{l-1} H_l."""
    return sum(a * b for a, b in itertools.pairwise(sizes))


def chain_jacobian(layers: Sequence[Layer], x: Tensor) -> Tensor:
    """The explicit per-sample Jacobian J_b = D_L W_L ⋯ D_1 W_1 (B, H_L, D) of fastcae layers.

    Memory B·H_L·D: for spectra of small batches (:func:`fastcae.contraction_report`)
    and for checks. Computed from the top, in x's dtype, differentiable.
    """
    check_chain_args(x, [(layer.weight, layer.bias, layer.activation) for layer in layers])
    slopes = _slopes(layers, _chain_forward(layers, x)[1])
    product = slopes[-1][:, :, None] * layers[-1].weight.to(slopes[-1].dtype)
    for layer, slope in zip(layers[-2::-1], slopes[-2::-1], strict=True):
        product = torch.matmul(product * slope[:, None, :], layer.weight.to(slope.dtype))
    return product.to(x.dtype)


__all__ = [
    "AUTO_EXACT_FORWARDS",
    "ESTIMATORS",
    "Layer",
    "chain_jacobian",
    "encode_chain",
    "encoder_layers",
    "jacobian_penalty",
    "orthonormal_projections",
]
