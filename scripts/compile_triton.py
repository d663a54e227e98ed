"""Compile the Triton kernels ahead of time for NVIDIA GPUs, without a GPU, and read ptxas's report.

Triton lowers a kernel all the way to a cubin for a named target (sm_90 =
Hopper, sm_80 = Ampere) on a machine with no GPU. Each kernel is compiled with
the specialization a real call gets, in two variants:

- **aligned (16)**: pointers 16-byte aligned, sizes and row strides divisible by
  16 (Triton's ``tt.divisibility`` attribute), unit strides constant — what a
  call with D and H multiples of 16 gets;
- **rows of 8 (8)**: no divisibility known to Triton, row strides multiples of 8
  (the forward's ROW_ALIGN hint; e.g. D = 1000), unit strides constant;
- **unaligned (1)**: nothing known (e.g. D = 999), unit strides constant.

For each variant ptxas's own report (``-v``, as Triton runs it) gives registers,
spill bytes and its notes; the script fails the run on a spill, on a
serialized wgmma (ptxas C7515), on a config that does not fit shared memory,
and where a half-precision GEMM does not use tensor cores.

    python scripts/compile_triton.py [--arch 90 80] [--mode shipped|representative] [--jobs N]

``--mode shipped`` (default) covers every autotune config the kernels ship
that the shared-memory pruning keeps, for every activation and dtype, aligned
and not; ``representative`` one config and activation per kernel and dtype.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

SHARED_MEMORY_BYTES = {80: 163 * 1024, 90: 227 * 1024}
# (pointer element type, input precision) per input dtype
DTYPES = {
    "fp32-ieee": ("fp32", "ieee"),
    "fp32-tf32": ("fp32", "tf32"),
    "bf16": ("bf16", "ieee"),
    "fp16": ("fp16", "ieee"),
    "fp64": ("fp64", "ieee"),
}
ELEMENT_SIZES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp64": 8}
ACTIVATIONS = range(5)


@dataclass(frozen=True)
class KernelSpec:
    """How a kernel is launched: its accumulator-typed pointers, its int arguments
    that are multiples of 16 in an aligned call, the ones that are 1 (unit
    strides), and its flag combinations."""

    name: str
    accumulator_pointers: tuple[str, ...] = ()
    aligned_ints: tuple[str, ...] = ()
    unit_ints: tuple[str, ...] = ()
    flag_sets: tuple[tuple[tuple[str, object], ...], ...] = ((),)
    gemm: bool = False  # uses tl.dot: tensor cores expected for 16-bit inputs
    float_inputs_only: bool = False  # CAE+H: float32/float64 inputs


def _specs():
    from fastcae.kernels import activate, encode, hessian

    return {
        "forward": (
            encode._encode_forward_kernel,
            KernelSpec(
                "forward",
                accumulator_pointers=("penalty_partial_ptr", "row_norms_sq_ptr"),
                aligned_ints=("B", "D_ROWS", "H", "B_BUCKET", "stride_xb", "stride_wh"),
                unit_ints=("stride_xd", "stride_wd"),
                flag_sets=((("HAS_BIAS", True),), (("HAS_BIAS", False),)),
                gemm=True,
            ),
        ),
        "row_norms_sq": (
            encode._row_norms_sq_kernel,
            KernelSpec(
                "row_norms_sq",
                accumulator_pointers=("row_norms_sq_ptr",),
                aligned_ints=("D", "H", "stride_wh"),
                unit_ints=("stride_wd",),
            ),
        ),
        "grad_preact": (
            encode._grad_preact_kernel,
            KernelSpec(
                "grad_preact",
                accumulator_pointers=("grad_penalty_ptr", "row_norms_sq_ptr", "partials_ptr"),
                aligned_ints=("B", "H", "CHUNK_ROWS", "stride_gcb"),
                flag_sets=tuple(
                    (("HAS_GRAD_CODE", a), ("HAS_GRAD_PENALTY", b))
                    for a, b in ((True, True), (True, False), (False, True))
                ),
            ),
        ),
        "activate": (
            activate._activate_kernel,
            KernelSpec(
                "activate",
                accumulator_pointers=("unit_norms_sq_ptr", "penalty_partial_ptr"),
                aligned_ints=("B", "U"),
            ),
        ),
        "hessian_forward": (
            hessian._hessian_forward_kernel,
            KernelSpec("hessian_forward", aligned_ints=("B", "H", "COPY_STRIDE"), float_inputs_only=True),
        ),
        "hessian_backward": (
            hessian._hessian_backward_kernel,
            KernelSpec(
                "hessian_backward",
                aligned_ints=("B", "H", "COPY_STRIDE"),
                flag_sets=(
                    (("NEED_PREACT", True), ("NEED_NOISY", True)),
                    (("NEED_PREACT", False), ("NEED_NOISY", True)),
                ),
                float_inputs_only=True,
            ),
        ),
    }


def _jit(kernel):
    """The JITFunction under the autotune/heuristics wrappers."""
    import triton

    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn
    return kernel


def shipped_configs(kernel_name: str) -> list:
    """The configs an autotuned kernel ships, or its one fixed launch config."""
    from fastcae.kernels import tuning

    kernel, _ = _specs()[kernel_name]
    if hasattr(kernel, "configs"):
        return list(kernel.configs)
    return [
        {
            "row_norms_sq": tuning.ROW_NORMS_CONFIG,
            "grad_preact": tuning.GRAD_PREACT_CONFIG,
            "activate": tuning.ACTIVATE_CONFIG,
            "hessian_forward": tuning.HESSIAN_CONFIG,
            "hessian_backward": tuning.HESSIAN_CONFIG,
        }[kernel_name]
    ]


@dataclass(frozen=True)
class Variant:
    kernel: str
    dtype: str
    activation: int
    flags: tuple[tuple[str, object], ...]
    config_index: int
    alignment: int  # 16, 8 or 1: see the module docstring


def _constexprs_and_signature(fn, spec: KernelSpec, variant: Variant, config) -> tuple[dict, dict, dict]:
    from triton.backends.compiler import BaseBackend

    element, precision = DTYPES[variant.dtype]
    acc = "fp64" if element == "fp64" else "fp32"
    constexprs = {**dict(variant.flags), **config.kwargs}
    for name, value in (
        ("ACTIVATION", variant.activation),
        ("INPUT_PRECISION", precision),
        ("ACC_FP64", acc == "fp64"),
    ):
        if name in fn.arg_names:
            constexprs[name] = value
    constexprs.update({name: 1 for name in spec.unit_ints})
    if "ROW_ALIGN" in fn.arg_names:
        constexprs["ROW_ALIGN"] = variant.alignment
    constexprs.update(_fixed_constexprs(variant.kernel, ELEMENT_SIZES[element], precision))
    signature, attrs = {}, {}
    for index, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        if name.endswith("_ptr"):
            pointer = acc if name in spec.accumulator_pointers or spec.float_inputs_only else element
            signature[name] = "*" + pointer
        else:
            signature[name] = "i32"
        # Pointers from torch's allocator are 16-byte aligned in every variant.
        if name.endswith("_ptr") or (variant.alignment == 16 and name in spec.aligned_ints):
            attrs[(index,)] = BaseBackend.parse_attr("D")
    return constexprs, signature, attrs


def _fixed_constexprs(kernel: str, element_size: int, precision: str) -> dict:
    """The forward's block sizes set by heuristics rather than its configs."""
    from fastcae.kernels import tuning

    if kernel == "forward":
        return {"BLOCK_H": tuning.FORWARD_BLOCK_H, "BLOCK_K": tuning.forward_block_k(element_size, precision)}
    return {}


@dataclass(frozen=True)
class Report:
    label: str
    ok: bool
    registers: int
    spill_bytes: int
    serialized_wgmma: bool
    shared: int
    tensor_cores: bool
    problems: tuple[str, ...]
    notes: tuple[str, ...]


def compile_variant(variant: Variant, arch: int) -> Report:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel, spec = _specs()[variant.kernel]
    fn = _jit(kernel)
    config = shipped_configs(variant.kernel)[variant.config_index]
    constexprs, signature, attrs = _constexprs_and_signature(fn, spec, variant, config)
    label = (
        f"sm_{arch} {variant.kernel} {variant.dtype} act={variant.activation} {dict(variant.flags)} "
        f"{config.kwargs} w{config.num_warps} s{config.num_stages} align {variant.alignment}"
    )
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    log = io.StringIO()
    try:
        source = ASTSource(fn, signature, constexprs, attrs)
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as exc:  # reported, then the run fails
        message = str(exc).splitlines()[0] if str(exc) else ""
        return Report(label, False, 0, 0, False, 0, False, (f"{type(exc).__name__}: {message}",), ())
    ptxas = log.getvalue()
    registers = max((int(m) for m in re.findall(r"Used (\d+) registers", ptxas)), default=-1)
    spill_bytes = sum(int(m) for m in re.findall(r"(\d+) bytes spill (?:stores|loads)", ptxas))
    serialized = "C7515" in ptxas
    notes = tuple(line.strip() for line in ptxas.splitlines() if re.search(r"warning|C\d{4}", line))
    shared = compiled.metadata.shared
    ptx = compiled.asm["ptx"]
    tensor_cores = "wgmma" in ptx or "mma.sync" in ptx
    problems = []
    if registers < 0:
        problems.append("no ptxas report")
    if spill_bytes:
        problems.append(f"spills {spill_bytes} B")
    if serialized:
        problems.append("serialized wgmma (C7515)")
    if shared > SHARED_MEMORY_BYTES[arch]:
        problems.append(f"shared memory {shared} B > {SHARED_MEMORY_BYTES[arch]} B")
    if spec.gemm and DTYPES[variant.dtype][0] in ("bf16", "fp16") and not tensor_cores:
        problems.append("16-bit GEMM without tensor cores")
    return Report(
        label, not problems, registers, spill_bytes, serialized, shared, tensor_cores, tuple(problems), notes
    )


def _kept_config_indices(kernel_name: str, dtype: str, arch: int) -> list[int]:
    """The configs the shared-memory pruning keeps for this dtype on this arch."""
    from fastcae.kernels import tuning

    configs = shipped_configs(kernel_name)
    prune = tuning.PRUNERS.get(kernel_name)
    if prune is None:
        return list(range(len(configs)))
    budget = tuning._shared_memory_bytes
    tuning._shared_memory_bytes = lambda: SHARED_MEMORY_BYTES[arch]
    try:
        element, precision = DTYPES[dtype]
        kept = prune(configs, {"element_size": ELEMENT_SIZES[element], "H": 1024}, INPUT_PRECISION=precision)
    finally:
        tuning._shared_memory_bytes = budget
    return [configs.index(c) for c in kept]


def variants(mode: str, arch: int) -> list[Variant]:
    out = []
    for name, (kernel, spec) in _specs().items():
        dtypes = ["fp32-ieee", "fp64"] if spec.float_inputs_only else list(DTYPES)
        if not spec.gemm:  # the input precision only matters to tl.dot
            dtypes = [d for d in dtypes if d != "fp32-tf32"]
        for dtype in dtypes:
            indices = _kept_config_indices(name, dtype, arch)
            alignments = (16, 8, 1) if name == "forward" else (16, 1)
            activations = ACTIVATIONS if "ACTIVATION" in _jit(kernel).arg_names else (0,)
            for activation, flags, index, alignment in itertools.product(
                activations, spec.flag_sets, indices, alignments
            ):
                if mode == "representative" and not (
                    activation == dtypes.index(dtype) % len(activations)
                    and flags == spec.flag_sets[0]
                    and index == indices[0]
                ):
                    continue
                out.append(Variant(name, dtype, activation, flags, index, alignment))
    return out


def _worker_init(cache_dir: str) -> None:
    os.environ["TRITON_CACHE_DIR"] = cache_dir  # a fresh cache: ptxas runs, so its report is printed
    os.environ.pop("TRITON_INTERPRET", None)
    import triton

    triton.knobs.nvidia.dump_ptxas_log = True


def _compile(args: tuple[Variant, int]) -> Report:
    return compile_variant(*args)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90])
    parser.add_argument("--mode", choices=["shipped", "representative"], default="shipped")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--kernels", nargs="+", help="only these kernels (default: all)")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), help="only these dtypes (default: all)")
    parser.add_argument("--quiet", action="store_true", help="print only the problems and the summary")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    work = [
        (v, arch)
        for arch in args.arch
        for v in variants(args.mode, arch)
        if (args.kernels is None or v.kernel in args.kernels)
        and (args.dtypes is None or v.dtype in args.dtypes)
    ]
    failures = 0
    with tempfile.TemporaryDirectory() as cache_dir:
        with ProcessPoolExecutor(args.jobs, initializer=_worker_init, initargs=(cache_dir,)) as pool:
            for report in pool.map(_compile, work, chunksize=4):
                failures += not report.ok
                if report.ok and args.quiet:
                    continue
                status = "ok  " if report.ok else "FAIL"
                detail = "; ".join(report.problems) if report.problems else ""
                print(
                    f"{status} {report.label}: {report.registers} registers, spills {report.spill_bytes} B, "
                    f"shared {report.shared} B, tensor cores {report.tensor_cores}"
                    + (f" -- {detail}" if detail else ""),
                    flush=True,
                )
    print(f"{len(work) - failures} clean, {failures} with problems, {time.perf_counter() - start:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
