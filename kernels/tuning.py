"""Block sizes and autotune configurations of the Triton kernels.

Each GEMM-shaped kernel has one safe default config (fits shared memory even
for float64 on an A100) and, on a GPU, a list of configs aimed at Hopper
(H100/H200: 128/256-wide tiles for wgmma, 3–5 pipeline stages, 4–8 warps) and
Ampere that the autotuner times per (B, D, H, activation, precision, dtypes).
Configs whose pipelined operand tiles would not fit the device's shared memory
for the actual dtype are pruned before timing.

FASTCAE_TRITON_AUTOTUNE=0 keeps the default config only (the test suite sets
it: autotuning every test shape would spend minutes compiling). Under the
Triton interpreter (TRITON_INTERPRET=1, how CI runs the kernels on the CPU)
one small config is used, so tests stay fast and still cross tile edges.
"""

from __future__ import annotations

from functools import cache

import triton

from .._environment import triton_autotune_enabled, triton_interpreter_enabled

INTERPRETED = triton_interpreter_enabled()
AUTOTUNE = triton_autotune_enabled()

# Width (hidden units) of one forward tile. It is not autotuned because the
# launcher sizes the per-tile penalty buffer (B, cdiv(H, BLOCK_H)) with it.
INTERPRETER_BLOCK_H = 16


def forward_block_h(hidden: int) -> int:
    if INTERPRETED:
        return INTERPRETER_BLOCK_H
    return 128 if hidden > 64 else max(16, triton.next_power_of_2(hidden))


def _config(num_warps: int, num_stages: int, **blocks: int) -> triton.Config:
    return triton.Config(blocks, num_warps=num_warps, num_stages=num_stages)


@cache
def _shared_memory_bytes() -> int:
    """Opt-in shared memory per block of the current GPU (160 KiB if unknown)."""
    try:
        import torch

        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return int(getattr(props, "shared_memory_per_block_optin", 160 * 1024))
    except Exception:
        return 160 * 1024


def _pruner(operand_tiles, element_arg: str, fixed_blocks=None):
    """An early_config_prune keeping configs whose pipelined tiles fit shared
    memory: num_stages · element size · Σ rows·cols of the tiles loaded per
    stage (this matches what Triton allocates; scripts/compile_triton.py
    checks it). fixed_blocks(named_args) supplies block sizes not in the configs."""

    def prune(configs, named_args, **kwargs):
        element_size = named_args[element_arg].element_size()
        budget = _shared_memory_bytes()
        fixed = fixed_blocks(named_args) if fixed_blocks else {}
        fitting = []
        for config in configs:
            blocks = {**kwargs, **fixed, **config.kwargs}
            elements = sum(blocks[rows] * blocks[cols] for rows, cols in operand_tiles)
            if config.num_stages * element_size * elements <= budget:
                fitting.append(config)
        return fitting or configs[:1]  # the default config always fits

    return prune


def _configs(default: triton.Config, tuned: list[triton.Config], interpreted: triton.Config):
    if INTERPRETED:
        return [interpreted]
    return [default, *tuned] if AUTOTUNE else [default]


def forward_configs() -> list[triton.Config]:
    """Tiles of z = x Wᵀ: BLOCK_B rows of x, BLOCK_K of the reduction; BLOCK_H is fixed above."""
    return _configs(
        _config(4, 3, BLOCK_B=64, BLOCK_K=32, GROUP_B=8),
        [
            _config(8, 3, BLOCK_B=128, BLOCK_K=64, GROUP_B=8),
            _config(8, 4, BLOCK_B=128, BLOCK_K=32, GROUP_B=8),
            _config(4, 4, BLOCK_B=128, BLOCK_K=32, GROUP_B=8),
            _config(4, 4, BLOCK_B=64, BLOCK_K=64, GROUP_B=8),
            _config(8, 3, BLOCK_B=256, BLOCK_K=64, GROUP_B=4),
        ],
        _config(1, 1, BLOCK_B=16, BLOCK_K=16, GROUP_B=2),
    )


forward_prune = _pruner(
    [("BLOCK_B", "BLOCK_K"), ("BLOCK_H", "BLOCK_K")],
    "x_ptr",
    lambda args: {"BLOCK_H": forward_block_h(args["H"])},
)


def grad_input_configs() -> list[triton.Config]:
    """Tiles of dx = dz W: BLOCK_B × BLOCK_D outputs, reduction over BLOCK_H hidden units."""
    return _configs(
        _config(4, 3, BLOCK_B=64, BLOCK_D=64, BLOCK_H=32, GROUP_B=8),
        [
            _config(8, 3, BLOCK_B=128, BLOCK_D=128, BLOCK_H=64, GROUP_B=8),
            _config(4, 4, BLOCK_B=128, BLOCK_D=64, BLOCK_H=32, GROUP_B=8),
            _config(4, 4, BLOCK_B=64, BLOCK_D=128, BLOCK_H=32, GROUP_B=8),
            _config(4, 4, BLOCK_B=64, BLOCK_D=64, BLOCK_H=64, GROUP_B=8),
            _config(8, 3, BLOCK_B=128, BLOCK_D=256, BLOCK_H=64, GROUP_B=4),
        ],
        _config(1, 1, BLOCK_B=16, BLOCK_D=16, BLOCK_H=16, GROUP_B=2),
    )


# The backward kernels stream three tiles per stage: h and g_h (B × H), and W or x.
grad_input_prune = _pruner(
    [("BLOCK_B", "BLOCK_H"), ("BLOCK_B", "BLOCK_H"), ("BLOCK_H", "BLOCK_D")], "weight_ptr"
)


def grad_weight_configs() -> list[triton.Config]:
    """Tiles of dW = dzᵀ x: BLOCK_H × BLOCK_D outputs, reduction over BLOCK_B samples."""
    return _configs(
        _config(4, 3, BLOCK_H=64, BLOCK_D=64, BLOCK_B=32, GROUP_H=8),
        [
            _config(8, 3, BLOCK_H=128, BLOCK_D=128, BLOCK_B=64, GROUP_H=8),
            _config(4, 4, BLOCK_H=128, BLOCK_D=64, BLOCK_B=32, GROUP_H=8),
            _config(4, 4, BLOCK_H=64, BLOCK_D=128, BLOCK_B=32, GROUP_H=8),
            _config(4, 4, BLOCK_H=64, BLOCK_D=64, BLOCK_B=64, GROUP_H=8),
            _config(8, 3, BLOCK_H=128, BLOCK_D=256, BLOCK_B=64, GROUP_H=4),
        ],
        _config(1, 1, BLOCK_H=16, BLOCK_D=16, BLOCK_B=16, GROUP_H=2),
    )


grad_weight_prune = _pruner([("BLOCK_H", "BLOCK_B"), ("BLOCK_H", "BLOCK_B"), ("BLOCK_B", "BLOCK_D")], "x_ptr")
