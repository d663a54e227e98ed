"""Checks only a GPU can run: half precision on every backend, PyTorch's float32
matmul precision settings, a transposed operand past 2³¹ elements, Triton
autotuning from two threads, the two fused GPU backends against each other,
and tensors on a device that is not the current one.

Every GPU test is marked ``gpu`` (scripts/gpu_check.py selects ``-m gpu``) and
skipped without CUDA. Tests whose id names "triton" run in the GPU check's
Triton phase, the others after the CUDA build. The helpers the GPU tests rely
on are checked on the CPU at the end of this file.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import assert_close, make_inputs, reference

import fastcae
from fastcae.dispatch import BACKENDS

HAS_CUDA = torch.cuda.is_available()
TESTS_DIR = Path(__file__).resolve().parent
ROOT = TESTS_DIR.parent
GPU_BACKENDS = ["torch", "naive", "triton", "cuda", "auto"]
FUSED_GPU_BACKENDS = ["triton", "cuda"]


def gpu_test(function):
    """Marked ``gpu`` and skipped without a CUDA device."""
    function = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")(function)
    return pytest.mark.gpu(function)


def require_backend(backend: str, dtype: torch.dtype | None = None, device_type: str = "cuda") -> None:
    """Skip unless ``backend`` runs here on ``device_type`` tensors of ``dtype``."""
    if backend == "auto":
        return
    reason = fastcae.backends()[backend]
    if reason is not None:
        pytest.skip(f"backend {backend!r} is unavailable: {reason}")
    record = BACKENDS[backend]
    if record.device_types is not None and device_type not in record.device_types:
        pytest.skip(f"backend {backend!r} does not run on {device_type} tensors here")
    if dtype is not None and dtype not in record.dtypes:
        pytest.skip(f"backend {backend!r} does not take {dtype} here")


def upstream_weights(batch: int, hidden: int, device, seed: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """Random float32 weights of the code and the penalty in the test loss (h·G).sum() + (p·g).sum()."""
    gen = torch.Generator().manual_seed(seed)
    code_weight = torch.randn(batch, hidden, generator=gen).to(device)
    penalty_weight = torch.randn(batch, generator=gen).to(device)
    return code_weight, penalty_weight


def loss_of(code, penalty, code_weight, penalty_weight):
    return (code.to(code_weight.dtype) * code_weight).sum() + (
        penalty.to(penalty_weight.dtype) * penalty_weight
    ).sum()


def float64_gradients(x, weight, bias, activation, code_weight, penalty_weight):
    """Gradients of the test loss from the float64 closed form ("torch" backend), on the inputs' device."""
    wide = [None if t is None else t.detach().double().requires_grad_() for t in (x, weight, bias)]
    code, penalty = fastcae.encode(*wide, activation=activation, backend="torch")
    loss = loss_of(code, penalty, code_weight.double(), penalty_weight.double())
    present = [t for t in wide if t is not None]
    return torch.autograd.grad(loss, present)


# --- half precision on every backend ------------------------------------------------------------


@gpu_test
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "softplus"])
@pytest.mark.parametrize("shape", [(64, 100, 130), (257, 784, 1000)], ids=str)
def test_half_precision_matches_float64(backend, dtype, activation, shape):
    """h and p within the half-precision tolerance of float64, and the gradients (except
    naive's: the Jacobian baseline is not a reduced-precision path)."""
    require_backend(backend, dtype)
    x, weight, bias = make_inputs(*shape, dtype=dtype, device="cuda", seed=sum(shape), requires_grad=True)
    code, penalty = fastcae.encode(x, weight, bias, activation=activation, backend=backend)
    code_ref, penalty_ref = reference(x, weight, bias, activation)
    assert code.dtype == dtype and penalty.dtype == torch.float32
    assert_close(code, code_ref, dtype, what=f"{backend} code")
    assert_close(penalty, penalty_ref, dtype, what=f"{backend} penalty")
    if backend == "naive":
        return
    code_weight, penalty_weight = upstream_weights(shape[0], shape[2], "cuda")
    grads = torch.autograd.grad(loss_of(code, penalty, code_weight, penalty_weight), (x, weight, bias))
    expected = float64_gradients(x, weight, bias, activation, code_weight, penalty_weight)
    for name, got, want in zip(("dx", "dW", "db"), grads, expected, strict=True):
        assert got.dtype == dtype
        assert_close(got, want, dtype, what=f"{backend} {name}")


# --- PyTorch's float32 matmul precision ---------------------------------------------------------

# setting -> allowed relative error against float64 (TF32 carries 10 mantissa bits)
PRECISION_SETTINGS = {
    "fp32_precision=tf32": 2e-3,
    "fp32_precision=ieee": 1e-5,
    "set_float32_matmul_precision=high": 2e-3,
    "set_float32_matmul_precision=highest": 1e-5,
}


@contextlib.contextmanager
def matmul_precision(setting: str) -> Iterator[None]:
    """Apply one float32 matmul setting through the API it names; restore the previous one
    through the same API (a mix of the legacy and new APIs makes the legacy getters raise)."""
    api, value = setting.split("=")
    if api == "fp32_precision":
        matmul = torch.backends.cuda.matmul
        if not hasattr(matmul, "fp32_precision"):
            pytest.skip(f"torch {torch.__version__} has no torch.backends.cuda.matmul.fp32_precision")
        previous = matmul.fp32_precision
        matmul.fp32_precision = value
        try:
            yield
        finally:
            matmul.fp32_precision = previous
    else:
        previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(value)
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(previous)


@gpu_test
@pytest.mark.parametrize("backend", ["torch", "triton", "cuda", "auto"])
@pytest.mark.parametrize("setting", list(PRECISION_SETTINGS))
def test_float32_matmul_precision_settings(backend, setting):
    """Under each setting the call raises nothing (kernels must read the setting through an
    API that works after fp32_precision was set) and stays within TF32's or IEEE's bound."""
    require_backend(backend, torch.float32)
    tolerance = PRECISION_SETTINGS[setting]
    x, weight, bias = make_inputs(256, 512, 384, device="cuda", seed=3, requires_grad=True)
    code_weight, penalty_weight = upstream_weights(256, 384, "cuda")
    with matmul_precision(setting):
        code, penalty = fastcae.encode(x, weight, bias, backend=backend)
        grads = torch.autograd.grad(loss_of(code, penalty, code_weight, penalty_weight), (x, weight, bias))
        torch.cuda.synchronize()
    code_ref, penalty_ref = reference(x, weight, bias, "sigmoid")
    expected = float64_gradients(x, weight, bias, "sigmoid", code_weight, penalty_weight)
    pairs = [("code", code, code_ref), ("penalty", penalty, penalty_ref)]
    pairs += list(zip(("dx", "dW", "db"), grads, expected, strict=True))
    for name, got, want in pairs:
        got64, want64 = got.detach().double().cpu(), want.detach().double().cpu()
        scale = want64.abs().max().item()
        torch.testing.assert_close(
            got64, want64, rtol=tolerance, atol=tolerance * scale, msg=lambda m, n=name: f"{setting} {n}: {m}"
        )


# --- a transposed operand with more than 2³¹ elements -------------------------------------------


def check_rows_against_float64(
    backend: str,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    samples: list[int],
    units: list[int],
    chunk: int,
) -> None:
    """Run ``backend`` forward and backward on the full problem; compare rows ``samples`` of
    h, p and dx and rows ``units`` of dW with a float64 reference built chunk by chunk of units.

    The loss (h·G).sum() + (p·g).sum() is a sum over units of terms that each depend on one
    row of W only, so the reference of a chunk of units is the closed form ("torch" backend,
    float64) on that chunk: h is the concatenation, p and dx the sums over the chunks, and
    dW's row j that of a problem holding unit j alone. No float64 copy of W is made.
    """
    dtype, device = x.dtype, x.device
    batch, hidden = x.shape[0], weight.shape[0]
    code_weight, penalty_weight = upstream_weights(batch, hidden, device)
    x = x.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    code, penalty = fastcae.encode(x, weight, bias, backend=backend)
    grad_x, grad_weight = torch.autograd.grad(
        loss_of(code, penalty, code_weight, penalty_weight), (x, weight)
    )
    code_rows = code[samples].detach().double().cpu()
    penalty = penalty.detach().double().cpu()
    grad_x_rows = grad_x[samples].double().cpu()
    grad_weight_rows = grad_weight[units].double().cpu()
    del code, grad_x, grad_weight

    x64 = x.detach().double().requires_grad_()
    code_ref, penalty_ref = [], torch.zeros(batch, dtype=torch.float64, device=device)
    grad_x_ref = torch.zeros(x.shape, dtype=torch.float64, device=device)
    for start in range(0, hidden, chunk):
        part = slice(start, min(start + chunk, hidden))
        w64 = weight.detach()[part].double()
        b64 = bias.detach()[part].double()
        h64, p64 = fastcae.encode(x64, w64, b64, backend="torch")
        loss = loss_of(h64, p64, code_weight[:, part].double(), penalty_weight.double())
        (g,) = torch.autograd.grad(loss, (x64,))
        code_ref.append(h64.detach()[samples].cpu())
        penalty_ref += p64.detach()
        grad_x_ref += g
    code_ref = torch.cat(code_ref, dim=1)
    w64 = weight.detach()[units].double().requires_grad_()
    h64, p64 = fastcae.encode(x64.detach(), w64, bias.detach()[units].double(), backend="torch")
    (grad_weight_ref,) = torch.autograd.grad(
        loss_of(h64, p64, code_weight[:, units].double(), penalty_weight.double()), (w64,)
    )
    assert_close(code_rows, code_ref, dtype, what=f"{backend} code rows {samples}")
    assert_close(penalty, penalty_ref, dtype, what=f"{backend} penalty")
    assert_close(grad_x_rows, grad_x_ref[samples], dtype, what=f"{backend} dx rows {samples}")
    assert_close(grad_weight_rows, grad_weight_ref, dtype, what=f"{backend} dW rows {units}")


@gpu_test
@pytest.mark.parametrize("backend", FUSED_GPU_BACKENDS)
def test_transposed_weight_past_2_31_elements(backend):
    """W (46341, 46341) bf16 viewed transposed: strides (1, 46341), so its last column sits
    past offset 2³¹ − 1. Rows of h, p, dx and dW against float64 (the last units included)."""
    require_backend(backend, torch.bfloat16)
    side = 46341  # side² = 2,147,488,281 > 2³¹
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs ~20 GiB of GPU memory")
    gen = torch.Generator(device="cuda").manual_seed(0)
    storage = torch.randn(side, side, generator=gen, device="cuda", dtype=torch.bfloat16)
    weight = storage.mul_(2.0 / side**0.5).t()  # (H, D) with strides (1, H)
    assert weight.numel() > 2**31 and weight.stride() == (1, side)
    x = torch.randn(16, side, generator=gen, device="cuda", dtype=torch.bfloat16)
    bias = 0.5 * torch.randn(side, generator=gen, device="cuda", dtype=torch.bfloat16)
    last_safe = 2**31 - 1 - (side - 1) * side  # units j ≤ this keep W[j, D-1] below 2³¹
    units = [0, last_safe, last_safe + 1, side - 1]
    try:
        check_rows_against_float64(backend, x, weight, bias, samples=[0, 15], units=units, chunk=4096)
    finally:
        del storage, weight
        torch.cuda.empty_cache()


# --- Triton autotuning from two threads ---------------------------------------------------------

AUTOTUNE_THREADS = textwrap.dedent(
    """
    import importlib, json, sys, threading
    import torch
    from helpers import assert_close, make_inputs
    import fastcae

    tuning = importlib.import_module("fastcae.kernels.tuning")
    report = {"autotune": getattr(tuning, "AUTOTUNE", None), "errors": []}
    shapes = [(96, 200, 136), (80, 168, 200)]  # fresh: no other test uses them
    barrier = threading.Barrier(len(shapes))

    def work(index, shape):
        try:
            x, w, b = make_inputs(*shape, device="cuda", seed=index, requires_grad=True)
            barrier.wait()  # both threads reach the autotuner together
            results = []
            for _ in range(3):
                h, p = fastcae.encode(x, w, b, backend="triton")
                grads = torch.autograd.grad(h.sum() + p.sum(), (x, w, b))
                results.append([t.detach().clone() for t in (h, p, *grads)])
            torch.cuda.synchronize()
            for later in results[1:]:
                assert all(torch.equal(a, b) for a, b in zip(results[0], later)), "results changed"
            wide = [t.detach().double().requires_grad_() for t in (x, w, b)]
            h64, p64 = fastcae.encode(*wide, backend="torch")
            expected = [h64, p64, *torch.autograd.grad(h64.sum() + p64.sum(), wide)]
            for name, got, want in zip(("h", "p", "dx", "dW", "db"), results[0], expected):
                assert_close(got, want, torch.float32, what=f"{shape} {name}")
        except BaseException as exc:
            report["errors"].append(f"{shape}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(i, s)) for i, s in enumerate(shapes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print("RESULT " + json.dumps(report))
    """
)


@gpu_test
def test_triton_autotune_from_two_threads():
    """FASTCAE_TRITON_AUTOTUNE is read when fastcae.kernels is imported, so this runs in a
    fresh process with autotuning on: two threads reach the autotuner at the same time on shapes
    of their own (forward and backward run); results must match float64 and not change between
    calls."""
    require_backend("triton", torch.float32)
    env = dict(os.environ, FASTCAE_TRITON_AUTOTUNE="1", PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS_DIR), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    done = subprocess.run(
        [sys.executable, "-c", AUTOTUNE_THREADS], env=env, capture_output=True, text=True, timeout=170
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, (
        f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    )
    report = json.loads(lines[-1].removeprefix("RESULT "))
    assert report["autotune"] in (True, None), f"autotuning was off in the subprocess: {report}"
    assert not report["errors"], "\n".join(report["errors"])


# --- the two fused GPU backends against each other ----------------------------------------------


@gpu_test
def test_fused_backends_agree_in_bfloat16():
    """cuda and triton at (4096, 784, 1024) in bf16: each against float64 and against the other."""
    require_backend("triton", torch.bfloat16)
    require_backend("cuda", torch.bfloat16)
    shape = (4096, 784, 1024)
    x, weight, bias = make_inputs(*shape, dtype=torch.bfloat16, device="cuda", seed=5, requires_grad=True)
    code_weight, penalty_weight = upstream_weights(shape[0], shape[2], "cuda")
    results = {}
    for backend in FUSED_GPU_BACKENDS:
        code, penalty = fastcae.encode(x, weight, bias, backend=backend)
        grads = torch.autograd.grad(loss_of(code, penalty, code_weight, penalty_weight), (x, weight, bias))
        results[backend] = [code.detach(), penalty.detach(), *grads]
    wide = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    code64, penalty64 = fastcae.encode(*wide, backend="torch")
    grads64 = torch.autograd.grad(
        loss_of(code64, penalty64, code_weight.double(), penalty_weight.double()), wide
    )
    expected = [code64.detach(), penalty64.detach(), *grads64]
    names = ("code", "penalty", "dx", "dW", "db")
    for backend, got in results.items():
        for name, a, want in zip(names, got, expected, strict=True):
            assert_close(a, want, torch.bfloat16, what=f"{backend} {name} vs float64")
    for name, a, b in zip(names, results["triton"], results["cuda"], strict=True):
        assert_close(a, b.double(), torch.bfloat16, what=f"triton vs cuda {name}")


# --- a tensor on a device that is not the current one -------------------------------------------


@gpu_test
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("backend", ["triton", "cuda", "auto"])
def test_inputs_on_a_non_current_device(backend):
    """Inputs on cuda:1 while cuda:0 is current: outputs and gradients land on cuda:1 and are right."""
    require_backend(backend, torch.float32)
    assert torch.cuda.current_device() == 0
    x, weight, bias = make_inputs(70, 90, 130, device="cuda:1", seed=4, requires_grad=True)
    code_weight, penalty_weight = upstream_weights(70, 130, "cuda:1")
    code, penalty = fastcae.encode(x, weight, bias, backend=backend)
    grads = torch.autograd.grad(loss_of(code, penalty, code_weight, penalty_weight), (x, weight, bias))
    assert torch.cuda.current_device() == 0
    assert all(t.device == torch.device("cuda:1") for t in (code, penalty, *grads))
    code_ref, penalty_ref = reference(x, weight, bias, "sigmoid")
    assert_close(code, code_ref, torch.float32, what="code")
    assert_close(penalty, penalty_ref, torch.float32, what="penalty")
    expected = float64_gradients(x, weight, bias, "sigmoid", code_weight, penalty_weight)
    for name, got, want in zip(("dx", "dW", "db"), grads, expected, strict=True):
        assert_close(got, want, torch.float32, what=name)


# --- the helpers above, on the CPU (so they cannot rot between GPU runs) -------------------------


def test_row_check_harness_on_cpu():
    """The chunked float64 reference of the 2³¹ test, on a small transposed bf16 problem."""
    require_backend("cpu", torch.bfloat16, device_type="cpu")
    side = 70
    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(side, side, generator=gen) * 2 / side**0.5).bfloat16().t()
    x = torch.randn(16, side, generator=gen).bfloat16()
    bias = (0.5 * torch.randn(side, generator=gen)).bfloat16()
    check_rows_against_float64("cpu", x, weight, bias, samples=[0, 15], units=[0, 33, side - 1], chunk=16)


def test_row_check_harness_catches_a_wrong_row():
    """The harness fails when one unit's gradient row is off (here: a backend that scales it)."""
    side, gen = 40, torch.Generator().manual_seed(1)
    weight = (torch.randn(side, side, generator=gen) / side**0.5).t()
    x, bias = torch.randn(16, side, generator=gen), torch.randn(side, generator=gen)

    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, w):
            return w.clone()

        @staticmethod
        def backward(ctx, grad):
            grad = grad.clone()
            grad[side - 1] *= 1.5
            return grad

    original = fastcae.encode

    def wrong_encode(x, weight, bias=None, backend="auto", **kwargs):
        if backend == "wrong":
            return original(x, Wrong.apply(weight), bias, backend="torch", **kwargs)
        return original(x, weight, bias, backend=backend, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fastcae, "encode", wrong_encode)
        with pytest.raises(AssertionError, match="dW rows"):
            check_rows_against_float64("wrong", x, weight, bias, samples=[0], units=[0, side - 1], chunk=8)


def test_matmul_precision_settings_are_restored():
    """Each setting of the precision test is undone on exit, leaving the legacy getters usable."""
    before = torch.get_float32_matmul_precision()
    for setting in PRECISION_SETTINGS:
        try:
            with matmul_precision(setting):
                pass
        except pytest.skip.Exception:
            continue
        assert torch.get_float32_matmul_precision() == before
        assert isinstance(torch.backends.cuda.matmul.allow_tf32, bool)
