"""Figures of a trained CAE: encoder filters and tangent vectors (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .geometry import local_pca_tangents, tangents
from .nn import ContractiveAutoencoder


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show(ax, vector: Tensor, image_shape: tuple[int, int], *, symmetric: bool) -> None:
    """Draw one vector as an image; signed vectors (filters, tangents) on a symmetric gray scale."""
    image = vector.detach().float().cpu().reshape(image_shape).numpy()
    if symmetric:
        limit = float(abs(image).max()) or 1.0
        ax.imshow(image, cmap="gray", vmin=-limit, vmax=limit)
    else:
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_filters(weight: Tensor, image_shape: tuple[int, int], path: Path, *, count: int = 64) -> None:
    """The first ``count`` rows of the encoder weight (H, D) as images, largest norm first."""
    plt = _pyplot()
    order = weight.norm(dim=1).argsort(descending=True)[:count]
    columns = min(len(order), 8)
    rows = -(-len(order) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.2 * columns, 1.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, unit in zip(axes.flat, order.tolist(), strict=False):
        ax.axis("on")
        _show(ax, weight[unit], image_shape, symmetric=True)
    fig.suptitle(f"encoder filters (largest ‖W_j‖ first), {weight.shape[0]} units")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_tangents(
    model: ContractiveAutoencoder,
    data: Tensor,
    image_shape: tuple[int, int],
    path: Path,
    *,
    samples: int = 6,
    k: int = 4,
    neighbors: int = 12,
) -> None:
    """Rows of: an input image, its k leading CAE tangent vectors (right singular
    vectors of the encoder's Jacobian) and the k local-PCA tangents of its
    nearest neighbours in ``data`` (N, D), as in the CAE tangent figures."""
    plt = _pyplot()
    encoder = model.encoder
    picks = torch.linspace(0, data.shape[0] - 1, samples).round().long()
    queries = data[picks].to(encoder.weight.device)
    with torch.no_grad():
        cae = tangents(queries, encoder.weight, encoder.bias, activation=encoder.activation, k=k)
    pca = local_pca_tangents(queries.cpu(), data.cpu(), n_neighbors=neighbors, k=k)
    columns = 1 + 2 * k
    fig, axes = plt.subplots(samples, columns, figsize=(1.1 * columns, 1.15 * samples), squeeze=False)
    for row in range(samples):
        _show(axes[row, 0], queries[row], image_shape, symmetric=False)
        for i in range(k):
            _show(axes[row, 1 + i], cae.directions[row, i], image_shape, symmetric=True)
            _show(axes[row, 1 + k + i], pca[row, i], image_shape, symmetric=True)
    axes[0, 0].set_title("input", fontsize=8)
    for i in range(k):
        axes[0, 1 + i].set_title(f"CAE {i + 1}", fontsize=8)
        axes[0, 1 + k + i].set_title(f"local PCA {i + 1}", fontsize=8)
    fig.suptitle("leading tangent directions: CAE Jacobian vs local PCA of nearest neighbours", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
