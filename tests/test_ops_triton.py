"""The Triton backend beyond the shared grid: its custom ops, determinism
and the GPU-only dtypes. Runs under the Triton interpreter on a
CPU-only machine and on the GPU where one is present."""

import contextlib
import os
import subprocess
import sys

import helpers
import pytest
import torch
from helpers import assert_close, available_backends, make_inputs, reference

import fastcae
from fastcae.activations import ACTIVATION_NAMES

DEVICES = [d for d in helpers.DEVICES if "triton" in available_backends(d)]
pytestmark = pytest.mark.skipif(
    not DEVICES, reason=f"triton backend unavailable: {fastcae.backends().get('triton')}"
)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_outputs_and_gradients_are_bitwise_deterministic(device, activation):
    x, weight, bias = make_inputs(40, 37, 50, device=device, seed=4)

    def run():
        inputs = [t.clone().requires_grad_() for t in (x, weight, bias)]
        h, p = fastcae.encode(*inputs, activation=activation, backend="triton")
        (h.sum(dim=1) * 0.3 + p).sum().backward()
        return [h.detach(), p.detach(), *(t.grad for t in inputs)]

    for a, b in zip(run(), run(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_custom_ops(device):
    x, weight, bias = make_inputs(9, 17, 18, device=device, seed=6)
    torch.library.opcheck(torch.ops.fastcae.triton_encode_forward.default, (x, weight, bias, "tanh"))
    code, _, row_norms_sq = torch.ops.fastcae.triton_encode_forward(x, weight, None, "tanh")
    grad_code = torch.randn_like(code)
    grad_penalty = torch.randn(9, device=device)
    torch.library.opcheck(
        torch.ops.fastcae.triton_encode_backward.default,
        (
            grad_code,
            grad_penalty,
            x,
            weight,
            code,
            row_norms_sq,
            "tanh",
            [True, True, False],
        ),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_hessian_custom_ops(device):
    gen = torch.Generator().manual_seed(0)
    preact = torch.randn(6, 5, generator=gen).to(device)
    noisy = preact + 0.3 * torch.randn(3, 6, 5, generator=gen).to(device)
    norms = torch.rand(5, generator=gen).to(device)
    torch.library.opcheck(
        torch.ops.fastcae.triton_hessian_forward.default, (preact, noisy, norms, "softplus")
    )
    torch.library.opcheck(
        torch.ops.fastcae.triton_hessian_backward.default,
        (
            torch.randn(6, device=device),
            preact,
            noisy,
            norms,
            "softplus",
            [True, True, True],
        ),
    )


@pytest.mark.skipif("cuda" not in DEVICES, reason="bfloat16/float16 Triton runs need a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (127, 300, 65), (300, 784, 1000)], ids=str)
def test_half_precision_on_gpu(dtype, activation, shape):
    x, weight, bias = make_inputs(*shape, dtype=dtype, device="cuda", seed=2, requires_grad=True)
    h, p = fastcae.encode(x, weight, bias, activation=activation, backend="triton")
    h_ref, p_ref = reference(x, weight, bias, activation)
    assert p.dtype == torch.float32
    assert_close(h, h_ref, dtype, what="code")
    assert_close(p, p_ref, dtype, what="penalty")
    (h.float().sum() + p.sum()).backward()
    inputs64 = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    h64, p64 = fastcae.encode(*inputs64, activation=activation, backend="torch")
    (h64.sum() + p64.sum()).backward()
    for got, want in zip((x, weight, bias), inputs64, strict=True):
        assert_close(got.grad, want.grad, dtype, what="gradient")


@pytest.mark.skipif("cuda" not in DEVICES, reason="TF32 is a CUDA setting")
def test_float32_follows_pytorch_matmul_precision():
    x, weight, bias = make_inputs(256, 512, 384, device="cuda", seed=3)
    _h_ref, p_ref = reference(x, weight, bias, "sigmoid")
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        _h_exact, p_exact = fastcae.encode(x, weight, bias, backend="triton")
        assert_close(p_exact, p_ref, torch.float32, what="ieee penalty")
        torch.set_float32_matmul_precision("high")
        _h_tf32, p_tf32 = fastcae.encode(x, weight, bias, backend="triton")
    finally:
        torch.set_float32_matmul_precision(previous)
    rel = ((p_tf32.double() - p_ref).abs().max() / p_ref.abs().max()).item()
    assert rel <= 2e-3


@pytest.mark.parametrize("device", DEVICES)
def test_offsets_past_2_31_in_transposed_operands(device):
    """Strides whose products with an index pass 2³¹ (a transposed view of a large
    operand): the kernels' offsets are 64-bit. x and W here are tiny views with a
    stride of 2³⁰ along D, over one float16 storage of 2³¹ + 16 elements (4 GiB
    reserved; only the few elements used are written)."""
    stride = 2**30
    storage = torch.empty(2 * stride + 16, dtype=torch.float16, device=device)
    x = storage.as_strided((3, 3), (1, stride))
    weight = storage.as_strided((4, 3), (1, stride), storage_offset=4)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x.copy_(torch.randn(3, 3, generator=gen).half())
        weight.copy_(0.5 * torch.randn(4, 3, generator=gen).half())
    h, p = fastcae.encode(x, weight, None, activation="tanh", backend="triton")
    h_ref, p_ref = reference(x, weight, None, "tanh")
    assert_close(h, h_ref, torch.float16, what="code")
    assert_close(p, p_ref, torch.float16, what="penalty")


def test_the_autotune_key_buckets_the_batch():
    """A new batch size re-uses its power-of-two bucket's tuning instead of timing
    every config again (about a second per kernel on a GPU)."""
    from fastcae.kernels import encode, tuning

    assert "B" not in encode._encode_forward_kernel.keys and "B_BUCKET" in encode._encode_forward_kernel.keys
    assert [tuning.batch_bucket(b) for b in (0, 1, 2, 3, 33, 64, 65)] == [1, 1, 2, 4, 64, 64, 128]


def test_row_alignment_hint():
    from fastcae.kernels import encode

    assert encode._row_alignment(1024, 784, 784) == 16
    assert encode._row_alignment(1000, 1000, 1000) == 8
    assert encode._row_alignment(300, 300, 784) == 4
    assert encode._row_alignment(999, 999, 999) == 1


def test_launches_go_to_the_tensors_device(monkeypatch):
    """Triton launches on the current CUDA device: a tensor on another one gets a
    device guard (mocked here: one GPU or none cannot show it)."""
    from fastcae.kernels import encode

    class FakeTensor:
        is_cuda = True
        device = torch.device("cuda", 1)

    entered = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(
        torch.cuda, "device", lambda device: entered.append(device) or contextlib.nullcontext()
    )
    with encode._on_device(FakeTensor()):
        pass
    assert entered == [torch.device("cuda", 1)]
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    with encode._on_device(FakeTensor()):
        pass
    assert len(entered) == 1


@pytest.mark.parametrize("device", DEVICES)
def test_the_forward_launch_holds_the_lock(device, monkeypatch):
    """Triton's autotuner is not thread-safe while it times configs: every
    forward launch holds the module's lock."""
    from fastcae.kernels import encode

    held = []
    kernel = encode._encode_forward_kernel

    class Spy:
        keys = kernel.keys

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                held.append(encode._LAUNCH_LOCK.locked())
                return kernel[grid](*args, **kwargs)

            return launch

    monkeypatch.setattr(encode, "_encode_forward_kernel", Spy())
    x, weight, bias = make_inputs(5, 6, 7, device=device)
    fastcae.encode(x, weight, bias, backend="triton")
    assert held == [True]


@pytest.mark.skipif("cuda" not in DEVICES, reason="autotuning runs on a GPU")
def test_results_are_bitwise_equal_across_processes_with_autotuning():
    """Two processes may pick different autotune configs; the configs share
    BLOCK_K and BLOCK_H, so h, p and the gradients are the same bits."""
    script = (
        "import hashlib, torch, fastcae\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x = torch.randn(4096, 784, generator=g).cuda().bfloat16()\n"
        "w = (0.05 * torch.randn(1024, 784, generator=g)).cuda().bfloat16().requires_grad_()\n"
        "h, p = fastcae.encode(x, w, None, backend='triton')\n"
        "(h.float().sum() + p.sum()).backward()\n"
        "data = b''.join(t.float().cpu().numpy().tobytes() for t in (h, p, w.grad))\n"
        "print(hashlib.sha256(data).hexdigest())\n"
    )
    env = {**os.environ, "FASTCAE_TRITON_AUTOTUNE": "1"}
    digests = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
        for _ in range(2)
    ]
    assert all(d.returncode == 0 for d in digests), [d.stderr[-2000:] for d in digests]
    assert digests[0].stdout == digests[1].stdout


@pytest.mark.parametrize(
    ("element_size", "precision", "rows"),
    [(8, "ieee", 32), (4, "ieee", 32), (4, "tf32", 64), (2, "ieee", 64)],
)
def test_forward_tile_rows_by_dtype_and_precision(element_size, precision, rows):
    """The GEMMs without tensor cores (float64, exact float32) take the 32-row tile:
    64 rows spill in their epilogue (compile_triton.py's report, Triton 3.6)."""
    from fastcae.kernels import tuning

    configs = tuning.NARROW_FORWARD_CONFIG, tuning._config(8, 3, BLOCK_B=64, GROUP_B=8)
    kept = tuning.forward_prune(
        list(configs), {"element_size": element_size, "H": 1024}, INPUT_PRECISION=precision
    )
    assert {c.kwargs["BLOCK_B"] for c in kept} == {rows}
