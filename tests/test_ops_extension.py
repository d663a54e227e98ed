"""The C++/CUDA kernel ops as torch.library ops (opcheck; a gradient through a
direct call is a clear error), the extension's report of itself,
determinism, and the CPU's two sigmoid passes (portable and AVX-512) over
the whole float range. The "cpu" backend runs here always, the "cuda"
backend where a GPU is present."""

import os
import subprocess
import sys

import pytest
import torch
from helpers import DEVICES, available_backends, make_inputs

import fastcae
from fastcae.activations import ACTIVATION_NAMES
from fastcae.ops.reference import activate_backward_closed_form

# The extension's backend of each device: "cpu" on CPU tensors, "cuda" on CUDA tensors.
TARGETS = [(device, device) for device in DEVICES if device in available_backends(device)]
pytestmark = pytest.mark.skipif(not TARGETS, reason="fastcae._C is not built")


def forward_samples():
    for device, _ in TARGETS:
        for activation in ACTIVATION_NAMES:
            for bias in (True, False):
                x, weight, b = make_inputs(7, 9, 5, bias=bias, device=device, seed=len(activation))
                yield (x, weight, b, activation)
        x, weight, b = make_inputs(6, 4, 3, dtype=torch.bfloat16, device=device, seed=2)
        yield (x, weight, b, "tanh")
        x, weight, b = make_inputs(0, 4, 3, device=device, seed=2)
        yield (x, weight, b, "sigmoid")


@pytest.mark.parametrize(
    "args", list(forward_samples()), ids=lambda a: f"{a[0].device.type}-{a[3]}-{a[0].dtype}-{a[0].shape[0]}"
)
def test_opcheck_encode_forward(args):
    torch.library.opcheck(torch.ops.fastcae.encode_forward.default, args)


@pytest.mark.parametrize("device", [d for d, _ in TARGETS])
@pytest.mark.parametrize("mask", [[True, True, True], [False, True, False], [True, False, False]])
@pytest.mark.parametrize("grads", ["both", "code", "penalty"])
def test_opcheck_encode_backward(device, mask, grads):
    x, weight, bias = make_inputs(5, 6, 4, device=device, seed=9)
    code, _, row_norms_sq = torch.ops.fastcae.encode_forward(x, weight, bias, "softplus")
    grad_code = torch.randn_like(code) if grads != "penalty" else None
    grad_penalty = torch.randn(5, device=device) if grads != "code" else None
    torch.library.opcheck(
        torch.ops.fastcae.encode_backward.default,
        (grad_code, grad_penalty, x, weight, code, row_norms_sq, "softplus", mask),
    )


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="fastcae._C is not built")
def test_extension_reports_its_build():
    from fastcae import _C

    assert isinstance(_C.built_with_cuda(), bool)
    assert _C.cpu_kernel_isa()
    assert _C.cuda_archs() == "" or _C.built_with_cuda()


# z over the range where σ, σ' and their float32 rounding change character: results
# in the denormal range and below it (the exp's clamp at -104), saturation, ±inf,
# NaN, ±0 and a denormal z; 1003 units, so rows end in a partial vector of 16, and
# 63 rows, so the backward's last chunk ends in rows swept one at a time.
SIGMOID_SWEEP = """
import sys, torch, fastcae
z = torch.linspace(-112.0, 40.0, 63 * 1003).view(63, 1003).double()  # float32 values
z[0, :8] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-42, -1e-42, -104.0])
norms = torch.rand(1003, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
code, penalty = torch.ops.fastcae.activate_forward(z.float(), norms.float(), "sigmoid")
gen = torch.Generator().manual_seed(1)
grad_code, grad_penalty = torch.randn(63, 1003, generator=gen), torch.randn(63, generator=gen)
mask = [True, True]
grads = torch.ops.fastcae.activate_backward(grad_code, grad_penalty, code, norms.float(), "sigmoid", mask)
torch.save((z, norms, code, penalty, grad_code, grad_penalty, *grads), sys.argv[1])
"""


def _sigmoid_sweep(path, **env) -> tuple[torch.Tensor, ...]:
    subprocess.run([sys.executable, "-c", SIGMOID_SWEEP, str(path)], check=True, env={**os.environ, **env})
    return torch.load(path)


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="fastcae._C is not built")
@pytest.mark.parametrize("intrinsics", ["1", "0"])
def test_cpu_sigmoid_forward_over_the_whole_float_range(tmp_path, intrinsics):
    """h and p of the float32 sigmoid pass (FASTCAE_CPU_INTRINSICS=1: the AVX-512
    pass where the CPU has it; 0: the portable loop) against float64: h within
    2.5e-7 relative where σ is a normal float, within one denormal step below,
    NaN kept to its row, exact 0 and 1 at the infinities; and the backward pass
    (dz, dN) on those codes."""
    sweep = _sigmoid_sweep(tmp_path / "sweep.pt", FASTCAE_CPU_INTRINSICS=intrinsics)
    z, norms, code, penalty, grad_code, grad_penalty, grad_preact, grad_norms = sweep
    want = torch.sigmoid(z)
    slope = want * torch.sigmoid(-z)
    finite = ~torch.isnan(z)
    error = (code.double() - want).abs()[finite]
    normal = want[finite] >= torch.finfo(torch.float32).tiny
    assert (error[normal] <= 2.5e-7 * want[finite][normal]).all()
    assert (error[~normal] <= 2.0**-149).all()
    assert torch.isnan(code[0, 0]) and code[0, 1] == 1 and code[0, 2] == 0
    want_penalty = (slope.square() * norms).nan_to_num().sum(dim=1)
    assert torch.isnan(penalty[0]) and torch.isfinite(penalty[1:]).all()
    # σ'² underflows float32 in the rows of very negative z: there p is only near 0.
    torch.testing.assert_close(penalty[1:].double(), want_penalty[1:], rtol=1e-6, atol=1e-35)
    # The backward pass on those codes against its formula in float64 from the same h:
    # within a few roundings of its terms' sizes.
    h, g_h, g_p = code.double(), grad_code.double(), grad_penalty.double()[:, None]
    s = h * (1 - h)
    code_term, penalty_term = g_h * s, 2 * g_p * s * s * (1 - 2 * h) * norms
    size = code_term.abs() + penalty_term.abs()
    error = (grad_preact.double() - (code_term + penalty_term)).abs()
    rows = slice(1, None)  # row 0 holds the NaN and infinities
    assert (error[rows] <= 1e-6 * size[rows] + 2.0**-140).all()
    assert torch.isnan(grad_preact[0, 0]) and torch.isnan(grad_norms[0])
    want_norms = (g_p * s * s).sum(dim=0)
    scale = (g_p.abs() * s * s).sum(dim=0)
    assert ((grad_norms.double() - want_norms).abs()[1:] <= 1e-5 * scale[1:] + 2.0**-140).all()


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="fastcae._C is not built")
def test_cpu_sigmoid_passes_agree(tmp_path):
    """The AVX-512 pass computes the portable loop's h (same formulas and
    polynomial; vscalefps rounds into the denormal range as the two-step scaling
    does): bit for bit with GCC 12, held here to an ulp, since where a compiler
    fuses the portable loop's multiply-adds may differ; p sums in another order."""
    from fastcae import _C

    if "intrinsics" not in _C.cpu_kernel_isa():
        pytest.skip("this CPU runs only the portable sigmoid pass (no AVX-512)")
    _, _, code, penalty, *_ = _sigmoid_sweep(tmp_path / "avx512.pt")
    portable = _sigmoid_sweep(tmp_path / "portable.pt", FASTCAE_CPU_INTRINSICS="0")
    _, _, portable_code, portable_penalty, *_ = portable
    torch.testing.assert_close(code, portable_code, rtol=2**-23, atol=2**-149, equal_nan=True)
    torch.testing.assert_close(penalty, portable_penalty, rtol=1e-6, atol=0, equal_nan=True)


@pytest.mark.parametrize(("device", "backend"), TARGETS)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_outputs_and_gradients_are_bitwise_deterministic(device, backend, activation):
    x, weight, bias = make_inputs(300, 70, 90, device=device, seed=4)

    def run():
        inputs = [t.clone().requires_grad_() for t in (x, weight, bias)]
        h, p = fastcae.encode(*inputs, activation=activation, backend=backend)
        (h.sum(dim=1) * 0.3 + p).sum().backward()
        return [h.detach(), p.detach(), *(t.grad for t in inputs)]

    first, second = run(), run()
    for a, b in zip(first, second, strict=False):
        assert torch.equal(a, b)


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="fastcae._C is not built")
@pytest.mark.parametrize(("batch", "hidden"), [(301, 50), (301, 1030), (101, 600)])
def test_results_do_not_depend_on_thread_count(batch, hidden):
    """h, p, dW and db are bitwise the same on one thread and on all of them.
    With two threads (301, 50) takes the rows path and the others the column
    slabs (600 units: uneven slabs); on one thread all take the slabs, so the
    two paths agree bitwise. dx is ATen's GEMM dz W, whose reduction over H
    MKL may split between threads, so it is only close."""
    x, weight, bias = make_inputs(batch, 40, hidden, seed=8)
    threads = torch.get_num_threads()

    def run():
        inputs = [t.clone().requires_grad_() for t in (x, weight, bias)]
        h, p = fastcae.encode(*inputs, backend="cpu")
        (h.sum(dim=1) * 0.3 + p).sum().backward()
        return [h.detach(), p.detach(), *(t.grad for t in inputs)]

    try:
        torch.set_num_threads(1)
        single = run()
    finally:
        torch.set_num_threads(threads)
    h, p, grad_x, grad_weight, grad_bias = run()
    outputs = (h, p, grad_weight, grad_bias)
    for name, a, b in zip(("h", "p", "dW", "db"), single[:2] + single[3:], outputs, strict=True):
        assert torch.equal(a, b), name
    torch.testing.assert_close(single[2], grad_x, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="fastcae._C is not built")
@pytest.mark.parametrize(("batch", "units"), [(8, 5000), (40, 4200)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_activate_backward_over_unit_tiles_does_not_depend_on_thread_count(batch, units, dtype):
    """The activate op's CPU backward runs in tasks of one chunk of 16 rows × one tile of
    units (2048 at 16 rows): here one or three chunks and three tiles, the last one
    partial. dz and dN are bitwise the same on one thread and on all, and match the
    closed form."""
    gen = torch.Generator().manual_seed(units)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    code = torch.rand(batch, units, generator=gen, dtype=torch.float64).to(dtype)
    norms = torch.rand(units, generator=gen, dtype=torch.float64).to(acc)
    grad_code = torch.randn(batch, units, generator=gen, dtype=torch.float64).to(dtype)
    grad_penalty = torch.randn(batch, generator=gen, dtype=torch.float64).to(acc)
    args = (grad_code, grad_penalty, code, norms, "tanh", [True, True])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = torch.ops.fastcae.activate_backward(*args)
    finally:
        torch.set_num_threads(threads)
    grads = torch.ops.fastcae.activate_backward(*args)
    for a, b in zip(single, grads, strict=True):
        assert torch.equal(a, b)
    want = activate_backward_closed_form(*(t.double() for t in args[:4]), "tanh", (True, True))
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    for got, expected in zip(grads, want, strict=True):
        torch.testing.assert_close(got.double(), expected, rtol=tolerance, atol=tolerance)


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="fastcae._C is not built")
@pytest.mark.parametrize("threads", ["one", "all"])
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_gradcheck_cpu_column_slabs(threads, activation):
    """gradcheck of the CPU kernels where they split H into column slabs: with
    B < H and 450 units (8 groups of 64, the last one short) two threads take
    that path, and one thread takes it at any size (test_encode's gradchecks
    use shapes that take the rows path on two threads)."""
    x, weight, bias = make_inputs(3, 4, 450, dtype=torch.float64, seed=11, requires_grad=True)
    if activation == "relu":  # keep every pre-activation away from the kink at 0
        with torch.no_grad():
            z = x @ weight.t() + bias
            bias.add_(torch.where(z.abs().min(dim=0).values < 0.05, 0.3, 0.0))
        assert (x @ weight.t() + bias).abs().min() > 1e-3

    def combined(*tensors):
        h, p = fastcae.encode(*tensors, activation=activation, backend="cpu")
        return (h.sin().sum(dim=1) + p.log1p()).sum()

    def penalty_only(*tensors):
        return fastcae.penalty(*tensors, activation=activation, reduction="none", backend="cpu")

    previous = torch.get_num_threads()
    try:
        if threads == "one":
            torch.set_num_threads(1)
        for fn in (combined, penalty_only):
            assert torch.autograd.gradcheck(fn, (x, weight, bias)), fn.__name__
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("device", [d for d, _ in TARGETS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck_hessian_ops(device, dtype):
    gen = torch.Generator().manual_seed(0)
    preact = torch.randn(6, 5, generator=gen, dtype=dtype).to(device)
    noisy = preact + 0.3 * torch.randn(3, 6, 5, generator=gen, dtype=dtype).to(device)
    norms = torch.rand(5, generator=gen, dtype=dtype).to(device)
    torch.library.opcheck(torch.ops.fastcae.hessian_forward.default, (preact, noisy, norms, "tanh"))
    grad = torch.randn(6, generator=gen, dtype=dtype).to(device)
    for mask in ([True, True, True], [False, True, False]):
        torch.library.opcheck(
            torch.ops.fastcae.hessian_backward.default, (grad, preact, noisy, norms, "tanh", mask)
        )


@pytest.mark.parametrize("device", [d for d, _ in TARGETS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_opcheck_activate_ops(device, dtype):
    gen = torch.Generator().manual_seed(0)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    preact = torch.randn(6, 70, generator=gen).to(device, dtype)
    norms = torch.rand(70, generator=gen).to(device, acc)
    for activation in ACTIVATION_NAMES:
        torch.library.opcheck(torch.ops.fastcae.activate_forward.default, (preact, norms, activation))
    code, _ = torch.ops.fastcae.activate_forward(preact, norms, "sigmoid")
    grad_code = torch.randn(6, 70, generator=gen).to(device, dtype)
    grad_penalty = torch.randn(6, generator=gen).to(device, acc)
    for grads, mask in (((grad_code, grad_penalty), [True, True]), ((None, grad_penalty), [False, True])):
        torch.library.opcheck(
            torch.ops.fastcae.activate_backward.default, (*grads, code, norms, "sigmoid", mask)
        )
    torch.library.opcheck(torch.ops.fastcae.activate_forward.default, (preact[:0], norms, "tanh"))
    if device == "cpu":  # the in-place forward: h over z, the same values as the out-of-place one
        for activation in ACTIVATION_NAMES:
            in_place = torch.ops.fastcae.activate_forward_.default
            torch.library.opcheck(in_place, (preact.clone(), norms, activation))
            overwritten = preact.clone()
            version = overwritten._version
            penalty = torch.ops.fastcae.activate_forward_(overwritten, norms, activation)
            code, want = torch.ops.fastcae.activate_forward(preact, norms, activation)
            assert overwritten._version > version
            assert torch.equal(overwritten, code) and torch.equal(penalty, want)
        with pytest.raises(ValueError, match="contiguous"):
            torch.ops.fastcae.activate_forward_(preact.t().contiguous().t(), norms, "sigmoid")


@pytest.mark.parametrize("device", [d for d, _ in TARGETS])
def test_a_gradient_through_a_kernel_op_called_directly_is_a_clear_error(device):
    """The kernel ops are not differentiable (fastcae.encode is): backward through
    a direct call raises instead of giving zero gradients."""
    x, weight, bias = make_inputs(4, 5, 3, device=device, requires_grad=True)
    _code, penalty, _ = torch.ops.fastcae.encode_forward(x, weight, bias, "sigmoid")
    with pytest.raises(RuntimeError, match="not implemented"):
        penalty.sum().backward()
