"""Block sizes and autotune configurations of the Triton kernels.

Only the forward GEMM is autotuned. Its configs aim at Hopper (H100/H200:
64 × 128 tiles for wgmma, 2–4 pipeline stages, 8 warps) and Ampere; every
one compiles for sm_90 without a register spill or a serialized wgmma for
every activation and dtype, aligned or not (scripts/compile_triton.py checks
it in CI). They share BLOCK_K per dtype, so whichever the autotuner picks in a
process, every output element's dot product is accumulated in the same order:
results are bitwise reproducible across processes. Configs whose pipelined
tiles would not fit the device's shared memory for the actual dtype are
pruned before timing. The elementwise kernels (‖W_j‖², the backward's dz) use
fixed blocks: their reductions must not depend on a timing.

FASTCAE_TRITON_AUTOTUNE=0 keeps the first config only (the test suite sets it:
autotuning every test shape would spend minutes compiling). Under the Triton
interpreter (TRITON_INTERPRET=1, how CI runs the kernels on the CPU) one small
config is used, so tests stay fast and still cross tile edges.
"""

from __future__ import annotations

from functools import cache

import triton

from .._environment import triton_autotune_enabled, triton_interpreter_enabled

INTERPRETED = triton_interpreter_enabled()
AUTOTUNE = triton_autotune_enabled()


def _squeeze_interpreter_index() -> None:
    """Let the interpreter of Triton 3.6 run loops over runtime bounds under NumPy >= 2.4.

    The interpreter holds a scalar kernel argument (B, D, H) as an array of
    shape (1,), and Triton 3.6's ``tensor.__index__`` is ``int(array)``, which
    NumPy 2.4+ refuses ("only 0-dimensional arrays can be converted to Python
    scalars"). So every ``range(0, D, BLOCK)`` (or ``range(tl.cdiv(D, BLOCK))``,
    or ``tl.range``) fails there, whatever its form. Triton 3.8 squeezes the
    array first; this applies the same one-line change to older interpreters.
    Compiled kernels are untouched: only the interpreter reads ``__index__``.
    """
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    patch_tensor = getattr(interpreter, "_patch_lang_tensor", None)
    if patch_tensor is None or getattr(patch_tensor, "squeezes_index", False):
        return

    def patch_tensor_squeezing_index(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patch_tensor_squeezing_index.squeezes_index = True
    interpreter._patch_lang_tensor = patch_tensor_squeezing_index


if INTERPRETED:
    _squeeze_interpreter_index()

# Width (hidden units) of one forward tile. It is not autotuned: the launcher
# sizes the per-tile penalty buffer (B, cdiv(H, BLOCK_H)) with it, and the
# penalty's summation order follows it.
FORWARD_BLOCK_H = 16 if INTERPRETED else 128
# The reduction step of the forward GEMM, per input element size in bytes;
# exact float32 (FMA products, no tensor cores) takes 16: its operand
# fragments live in registers, and 32 spilled in the epilogue of tanh and
# softplus under Triton 3.6.
FORWARD_BLOCK_K = {2: 64, 4: 32, 8: 32}
FORWARD_BLOCK_K_EXACT_FP32 = 16


def _config(num_warps: int, num_stages: int, **blocks: int) -> triton.Config:
    return triton.Config(blocks, num_warps=num_warps, num_stages=num_stages)


# The fixed launch configs of the elementwise kernels (blocks and warps),
# chosen so that no activation spills in float64 (scripts/compile_triton.py,
# with triton 3.6 and 3.8: 8 × 128 CAE+H tiles spilled 16 B in float64 tanh
# under 3.6).
ROW_NORMS_CONFIG = (
    _config(4, 1, BLOCK_R=16, BLOCK_D=16) if INTERPRETED else _config(4, 1, BLOCK_R=32, BLOCK_D=128)
)
GRAD_PREACT_CONFIG = (
    _config(1, 1, BLOCK_B=16, BLOCK_H=16) if INTERPRETED else _config(4, 1, BLOCK_B=4, BLOCK_H=256)
)
ACTIVATE_CONFIG = (
    _config(1, 1, BLOCK_B=16, BLOCK_U=16) if INTERPRETED else _config(4, 1, BLOCK_B=4, BLOCK_U=256)
)
HESSIAN_CONFIG = (
    _config(1, 1, BLOCK_B=16, BLOCK_H=16) if INTERPRETED else _config(8, 1, BLOCK_B=4, BLOCK_H=128)
)


def forward_block_h(hidden: int) -> int:
    if INTERPRETED or hidden > 64:
        return FORWARD_BLOCK_H
    return max(16, triton.next_power_of_2(hidden))


def batch_bucket(batch: int) -> int:
    """The autotune key's batch: the next power of two, so a new batch size
    (a ragged last batch) re-uses the tuning of its bucket."""
    return 1 << max(batch - 1, 0).bit_length()


@cache
def _shared_memory_bytes() -> int:
    """Opt-in shared memory per block of the current GPU (160 KiB if unknown)."""
    try:
        import torch

        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return int(getattr(props, "shared_memory_per_block_optin", 160 * 1024))
    except Exception:
        return 160 * 1024


# The GEMMs without tensor cores get a narrower tile of their own: 64 × 128
# float64 accumulators spill in the epilogue of sigmoid, tanh and softplus, and
# so does exact float32 (FMA products, INPUT_PRECISION "ieee") with tanh and
# softplus under Triton 3.6 (56-80 B at 255 registers; clean under 3.8).
NARROW_FORWARD_CONFIG = _config(8, 2, BLOCK_B=32, GROUP_B=8)


def forward_configs() -> list[triton.Config]:
    """Tiles of z = x Wᵀ: BLOCK_B rows of x (BLOCK_H and BLOCK_K are set per call)."""
    if INTERPRETED:
        return [_config(1, 1, BLOCK_B=16, GROUP_B=2)]
    # The first fits shared memory for every dtype on Ampere and Hopper: it is
    # the one config when autotuning is off.
    # 64 × 128 tiles with 8 warps: a 128-row tile spills in the epilogue of
    # tanh/softplus with 8 warps and is capped at 128 registers with 16.
    configs = [
        _config(8, 3, BLOCK_B=64, GROUP_B=8),
        _config(8, 4, BLOCK_B=64, GROUP_B=8),
        _config(8, 2, BLOCK_B=64, GROUP_B=8),
        _config(8, 3, BLOCK_B=64, GROUP_B=4),
    ]
    return (configs if AUTOTUNE else configs[:1]) + [NARROW_FORWARD_CONFIG]


def forward_block_k(element_size: int, input_precision: str) -> int:
    if INTERPRETED:
        return 16
    if element_size == 4 and input_precision == "ieee":
        return FORWARD_BLOCK_K_EXACT_FP32
    return FORWARD_BLOCK_K[element_size]


def forward_prune(configs, named_args, **kwargs):
    """Keep the configs of the input dtype and precision (float64 and exact float32
    have the narrow one) whose pipelined x and W tiles fit shared memory:
    num_stages · element size · (BLOCK_B + BLOCK_H) · BLOCK_K bytes (what Triton
    allocates; scripts/compile_triton.py checks it)."""
    element_size = (
        named_args["element_size"] if "element_size" in named_args else named_args["x_ptr"].element_size()
    )
    narrow = element_size == 8 or (element_size == 4 and kwargs.get("INPUT_PRECISION") == "ieee")
    block_h = forward_block_h(named_args["H"])
    block_k = forward_block_k(element_size, kwargs.get("INPUT_PRECISION", "ieee"))
    budget = _shared_memory_bytes()
    for_dtype = [c for c in configs if (c is NARROW_FORWARD_CONFIG) == narrow] or configs
    fitting = [
        c
        for c in for_dtype
        if c.num_stages * element_size * (c.kwargs["BLOCK_B"] + block_h) * block_k <= budget
    ]
    return fitting or for_dtype[:1]


# Pruners by kernel name, for scripts/compile_triton.py.
PRUNERS = {"forward": forward_prune}
