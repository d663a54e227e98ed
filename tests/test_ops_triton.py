"""The Triton backend beyond the shared grid: its custom ops, determinism
and the GPU-only dtypes. Runs under the Triton interpreter on a
CPU-only machine and on the GPU where one is present."""

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
