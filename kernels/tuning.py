"""Block sizes and autotune configurations of the Triton kernels.

On a GPU the GEMM-shaped kernels are autotuned over configs aimed at Hopper
(H100/H200: 128-wide tiles for wgmma, 3–5 pipeline stages, 4–8 warps) and
Ampere, keyed on the problem size and dtype. Under the Triton interpreter
(TRITON_INTERPRET=1, how CI runs them on the CPU) one small config is used,
so tests stay fast and still cross several tiles.
"""

from __future__ import annotations

import os

import triton

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# Width (hidden units) of one forward tile. It is not autotuned because the
# launcher sizes the per-tile penalty buffer (B, cdiv(H, BLOCK_H)) with it.
INTERPRETER_BLOCK_H = 16


def forward_block_h(hidden: int) -> int:
    if INTERPRETED:
        return INTERPRETER_BLOCK_H
    return 128 if hidden > 64 else max(16, triton.next_power_of_2(hidden))


def _config(num_warps: int, num_stages: int, **blocks: int) -> triton.Config:
    return triton.Config(blocks, num_warps=num_warps, num_stages=num_stages)


def forward_configs() -> list[triton.Config]:
    """Tiles of z = x Wᵀ: BLOCK_B rows of x, BLOCK_K of the reduction; BLOCK_H is fixed above."""
    if INTERPRETED:
        return [_config(1, 1, BLOCK_B=16, BLOCK_K=16, GROUP_B=2)]
    return [
        _config(8, 3, BLOCK_B=128, BLOCK_K=64, GROUP_B=8),
        _config(8, 4, BLOCK_B=128, BLOCK_K=32, GROUP_B=8),
        _config(4, 4, BLOCK_B=128, BLOCK_K=32, GROUP_B=8),
        _config(4, 4, BLOCK_B=64, BLOCK_K=64, GROUP_B=8),
        _config(4, 5, BLOCK_B=64, BLOCK_K=32, GROUP_B=8),
        _config(8, 3, BLOCK_B=256, BLOCK_K=64, GROUP_B=4),
        _config(4, 3, BLOCK_B=32, BLOCK_K=64, GROUP_B=8),
    ]


def grad_input_configs() -> list[triton.Config]:
    """Tiles of dx = dz W: BLOCK_B × BLOCK_D outputs, reduction over BLOCK_H hidden units."""
    if INTERPRETED:
        return [_config(1, 1, BLOCK_B=16, BLOCK_D=16, BLOCK_H=16, GROUP_B=2)]
    return [
        _config(8, 3, BLOCK_B=128, BLOCK_D=128, BLOCK_H=64, GROUP_B=8),
        _config(4, 4, BLOCK_B=128, BLOCK_D=64, BLOCK_H=32, GROUP_B=8),
        _config(4, 4, BLOCK_B=64, BLOCK_D=128, BLOCK_H=32, GROUP_B=8),
        _config(4, 4, BLOCK_B=64, BLOCK_D=64, BLOCK_H=64, GROUP_B=8),
        _config(8, 3, BLOCK_B=128, BLOCK_D=256, BLOCK_H=64, GROUP_B=4),
        _config(4, 5, BLOCK_B=32, BLOCK_D=64, BLOCK_H=64, GROUP_B=8),
    ]


def grad_weight_configs() -> list[triton.Config]:
    """Tiles of dW = dzᵀ x: BLOCK_H × BLOCK_D outputs, reduction over BLOCK_B samples."""
    if INTERPRETED:
        return [_config(1, 1, BLOCK_H=16, BLOCK_D=16, BLOCK_B=16, GROUP_H=2)]
    return [
        _config(8, 3, BLOCK_H=128, BLOCK_D=128, BLOCK_B=64, GROUP_H=8),
        _config(4, 4, BLOCK_H=128, BLOCK_D=64, BLOCK_B=32, GROUP_H=8),
        _config(4, 4, BLOCK_H=64, BLOCK_D=128, BLOCK_B=32, GROUP_H=8),
        _config(4, 4, BLOCK_H=64, BLOCK_D=64, BLOCK_B=64, GROUP_H=8),
        _config(8, 3, BLOCK_H=128, BLOCK_D=256, BLOCK_B=64, GROUP_H=4),
        _config(4, 5, BLOCK_H=32, BLOCK_D=64, BLOCK_B=64, GROUP_H=8),
    ]
