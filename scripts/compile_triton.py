"""Compile the Triton kernels ahead of time for NVIDIA GPUs, without a GPU.

Triton can lower a kernel all the way to a cubin for a named target (here
sm_90 = Hopper, sm_80 = Ampere) on a machine with no GPU. This proves the GPU
code path compiles (the interpreter, which CI uses to check the numbers, never
compiles), that the GEMM kernels use tensor cores (wgmma on Hopper, mma on
Ampere) and that every autotune config fits in shared memory.

    python scripts/compile_triton.py [--arch 90 80] [--configs | --full]

By default a representative set (every kernel × every dtype, every activation
once, the default config); --configs compiles every autotune config that the
shared-memory pruning keeps for each dtype (one activation); --full compiles
every activation × dtype × flag combination with every such config.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import dataclass

import triton
from fastcae.kernels import encode, hessian, tuning
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

SHARED_MEMORY_BYTES = {80: 163 * 1024, 90: 227 * 1024}
# (pointer element type, input precision) per input dtype
DTYPES = {
    "fp32-ieee": ("fp32", "ieee"),
    "fp32-tf32": ("fp32", "tf32"),
    "bf16": ("bf16", "ieee"),
    "fp16": ("fp16", "ieee"),
    "fp64": ("fp64", "ieee"),
}


@dataclass(frozen=True)
class Variant:
    kernel: str
    dtype: str
    activation: int
    flags: tuple[tuple[str, bool], ...]
    config: triton.Config


def _jit(kernel):
    """The JITFunction under the autotune/heuristics wrappers."""
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn
    return kernel


def _signature(fn, pointer_types: dict[str, str], constexprs: dict) -> dict[str, str]:
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*" + pointer_types.get(name, pointer_types["*"])
        else:
            signature[name] = "i32"
    return signature


def compile_variant(variant: Variant, arch: int):
    element, precision = DTYPES[variant.dtype]
    acc = "fp64" if element == "fp64" else "fp32"
    constexprs = {"ACTIVATION": variant.activation, **dict(variant.flags), **variant.config.kwargs}
    if variant.kernel == "forward":
        fn = _jit(encode._encode_forward_kernel)
        pointers = {"*": element, "penalty_partial_ptr": acc, "row_norms_sq_ptr": acc}
        constexprs |= {"INPUT_PRECISION": precision, "ACC_FP64": acc == "fp64", "BLOCK_H": 128}
    elif variant.kernel == "grad_input":
        fn = _jit(encode._grad_input_kernel)
        pointers = {"*": element, "grad_penalty_ptr": acc, "row_norms_sq_ptr": acc}
        constexprs |= {"INPUT_PRECISION": precision, "ACC_FP64": acc == "fp64"}
    elif variant.kernel == "grad_weight":
        fn = _jit(encode._grad_weight_kernel)
        pointers = {"*": element, "grad_penalty_ptr": acc, "row_norms_sq_ptr": acc}
        constexprs |= {"INPUT_PRECISION": precision, "ACC_FP64": acc == "fp64"}
    else:  # CAE+H kernels take float32/float64 pre-activations
        fn = _jit(
            hessian._hessian_forward_kernel
            if variant.kernel == "hessian_forward"
            else hessian._hessian_backward_kernel
        )
        pointers = {"*": acc}
        constexprs |= {"BLOCK_B": hessian.BLOCK_B, "BLOCK_H": hessian.BLOCK_H}
    source = ASTSource(fn, _signature(fn, pointers, constexprs), constexprs)
    options = {"num_warps": variant.config.num_warps, "num_stages": variant.config.num_stages}
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


FLAG_SETS = {
    "forward": [(("HAS_BIAS", True),), (("HAS_BIAS", False),)],
    "grad_input": [
        (("HAS_GRAD_CODE", a), ("HAS_GRAD_PENALTY", b))
        for a, b in ((True, True), (True, False), (False, True))
    ],
    "grad_weight": [
        (("HAS_GRAD_CODE", a), ("HAS_GRAD_PENALTY", b), ("NEED_GRAD_WEIGHT", w), ("NEED_GRAD_BIAS", True))
        for a, b in ((True, True), (True, False), (False, True))
        for w in (True, False)
    ],
    "hessian_forward": [()],
    "hessian_backward": [
        (("NEED_PREACT", True), ("NEED_NOISY", True)),
        (("NEED_PREACT", False), ("NEED_NOISY", True)),
    ],
}
CONFIGS = {
    "forward": tuning.forward_configs,
    "grad_input": tuning.grad_input_configs,
    "grad_weight": tuning.grad_weight_configs,
    "hessian_forward": lambda: [triton.Config({}, num_warps=4, num_stages=1)],
    "hessian_backward": lambda: [triton.Config({}, num_warps=4, num_stages=1)],
}


PRUNERS = {
    "forward": (tuning.forward_prune, "x_ptr"),
    "grad_input": (tuning.grad_input_prune, "weight_ptr"),
    "grad_weight": (tuning.grad_weight_prune, "x_ptr"),
}
ELEMENT_SIZES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp64": 8}


class _ElementSized:
    """Stands in for a tensor argument: the pruners only ask for its element size."""

    def __init__(self, size: int) -> None:
        self.size = size

    def element_size(self) -> int:
        return self.size


def kept_configs(kernel: str, dtype: str, arch: int) -> list[triton.Config]:
    """The autotune configs the shared-memory pruning keeps for this dtype on this arch."""
    configs = CONFIGS[kernel]()
    if kernel not in PRUNERS:
        return configs
    prune, element_arg = PRUNERS[kernel]
    budget = tuning._shared_memory_bytes
    tuning._shared_memory_bytes = lambda: SHARED_MEMORY_BYTES[arch]
    try:
        args = {element_arg: _ElementSized(ELEMENT_SIZES[DTYPES[dtype][0]]), "H": 1024}
        return prune(configs, args)
    finally:
        tuning._shared_memory_bytes = budget


def variants(mode: str, arch: int) -> list[Variant]:
    out = []
    for kernel, flag_sets in FLAG_SETS.items():
        dtypes = ["fp32-ieee", "fp64"] if kernel.startswith("hessian") else list(DTYPES)
        for dtype in dtypes:
            configs = kept_configs(kernel, dtype, arch)
            for activation, flags, config in itertools.product(range(5), flag_sets, configs):
                first = flags == flag_sets[0]
                chosen = {
                    "representative": activation == dtypes.index(dtype) % 5
                    and first
                    and config is configs[0],
                    "configs": activation == 0 and first,
                    "full": True,
                }[mode]
                if chosen:
                    out.append(Variant(kernel, dtype, activation, flags, config))
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--configs", action="store_const", const="configs", dest="mode")
    mode.add_argument("--full", action="store_const", const="full", dest="mode")
    args = parser.parse_args(argv)
    failures = total = 0
    start = time.perf_counter()
    for arch in args.arch:
        todo = variants(args.mode or "representative", arch)
        total += len(todo)
        for variant in todo:
            label = (
                f"sm_{arch} {variant.kernel} {variant.dtype} act={variant.activation} "
                f"{dict(variant.flags)} {variant.config.kwargs} warps={variant.config.num_warps} "
                f"stages={variant.config.num_stages}"
            )
            try:
                compiled = compile_variant(variant, arch)
            except Exception as exc:  # report every failure, then exit non-zero
                failures += 1
                print(f"FAIL {label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                continue
            shared = compiled.metadata.shared
            fits = shared <= SHARED_MEMORY_BYTES[arch]
            tensor_cores = "wgmma" in compiled.asm["ptx"] or "mma.sync" in compiled.asm["ptx"]
            if not fits:
                failures += 1
            print(f"{'ok  ' if fits else 'FAIL'} {label}: shared {shared} B, tensor cores {tensor_cores}")
    print(f"{total - failures} compiled, {failures} failed, {time.perf_counter() - start:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
