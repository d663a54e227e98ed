"""Fit the host float exp's polynomial (csrc/include/fastcae/cae_math.h, exp_float::kPoly).

exp(r) ≈ 1 + r + r² P(r) on the reduced range [-ln2/2, ln2/2], P of the given
degree, minimizing the maximum relative error of exp by Lawson's iteration
(reweighted least squares) on Chebyshev nodes. Prints P's float32
coefficients, highest power first, then exp's two (1, 1): the polynomial of
degree + 2 that the kernels evaluate by Horner's rule; and the fit's error
before rounding.

    python scripts/fit_exp_polynomial.py [--degree 4]
"""

from __future__ import annotations

import argparse

import numpy as np


def fit(degree: int, nodes: int = 4000, iterations: int = 60) -> tuple[np.ndarray, float]:
    half_ln2 = np.log(2) / 2
    r = np.cos(np.linspace(0, np.pi, nodes)) * half_ln2
    r = r[np.abs(r) > 1e-12]
    target = (np.expm1(r) - r) / r**2  # what P approximates
    scale = r**2 / np.exp(r)  # P's error times this is exp's relative error
    basis = np.vander(r, degree + 1)
    weights = np.ones_like(r)
    for _ in range(iterations):
        coeffs, *_ = np.linalg.lstsq(basis * (scale * weights)[:, None], target * scale * weights, rcond=None)
        error = np.abs((basis @ coeffs - target) * scale)
        weights *= np.sqrt(error / error.max()) + 1e-3
        weights /= weights.max()
    return coeffs, float(error.max())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--degree", type=int, default=4, help="degree of P (exp's is two more)")
    args = parser.parse_args()
    coeffs, error = fit(args.degree)
    print(f"max relative error of exp before rounding: {error:.3g}")
    print(", ".join([*(f"{np.float32(c):.7e}f" for c in coeffs), "1.0f", "1.0f"]))


if __name__ == "__main__":
    main()
