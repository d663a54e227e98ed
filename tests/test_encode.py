"""Every backend on every device present against the float64 closed form:
values and gradients, over activations, dtypes, odd shapes, layouts and
bias/no bias. On a machine without a GPU the "triton" backend runs under the
Triton interpreter; with one, the same grid runs on CUDA too."""

import pytest
import torch
from helpers import DEVICES, assert_close, available_backends, make_inputs, reference, skip_unless_supported

import fastcae
import fastcae.ops.hessian
from fastcae._environment import triton_interpreter_enabled as interpreter_enabled
from fastcae.activations import ACTIVATION_NAMES

TARGETS = [(device, backend) for device in DEVICES for backend in available_backends(device)]
FAST_TARGETS = [(d, b) for d, b in TARGETS if b not in ("torch", "naive")]
TARGET_IDS = [f"{d}-{b}" for d, b in TARGETS]
FAST_TARGET_IDS = [f"{d}-{b}" for d, b in FAST_TARGETS]
# (33, 20, 515): B < H and 3 groups of 256 units, the C++ kernels' column slabs
# on two threads (uneven slabs, a short last group); the others take its rows path.
SHAPES = [
    (1, 1, 1),
    (3, 5, 7),
    (17, 33, 15),
    (2, 3, 257),
    (300, 17, 4),
    (127, 300, 65),
    (64, 784, 128),
    (33, 20, 515),
]
# Under the Triton interpreter a kernel call at these shapes takes seconds: run them in float32 only.
HEAVY_FOR_INTERPRETER = {(127, 300, 65), (64, 784, 128)}
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def test_cpu_backend_is_built():
    assert "cpu" in available_backends("cpu"), fastcae.backends()


@pytest.mark.usefixtures("poison_empty")
@pytest.mark.parametrize(("device", "backend"), TARGETS, ids=TARGET_IDS)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_float64_reference(device, backend, activation, dtype, shape):
    if backend == "naive" and shape[0] * shape[1] * shape[2] > 200_000:
        pytest.skip("naive materializes (B, H, D); covered at smaller shapes")
    if backend == "naive" and dtype not in (torch.float32, torch.float64):
        pytest.skip("naive is the float32/float64 baseline, not a reduced-precision path")
    skip_unless_supported(backend, dtype)
    interpreted = backend == "triton" and interpreter_enabled()
    if interpreted and shape in HEAVY_FOR_INTERPRETER and dtype != torch.float32:
        pytest.skip("interpreted Triton at this shape: float32 only, to keep CI fast")
    x, weight, bias = make_inputs(
        *shape, dtype=dtype, device=device, seed=ACTIVATION_NAMES.index(activation) * 1000 + sum(shape)
    )
    h, p = fastcae.encode(x, weight, bias, activation=activation, backend=backend)
    h_ref, p_ref = reference(x, weight, bias, activation)
    assert h.dtype == dtype and h.shape == h_ref.shape
    assert p.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(h, h_ref, dtype, what="code")
    assert_close(p, p_ref, dtype, what="penalty")


@pytest.mark.usefixtures("poison_empty")
@pytest.mark.parametrize(("device", "backend"), TARGETS, ids=TARGET_IDS)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("layout", ["transposed", "sliced"])
@pytest.mark.parametrize("bias", [True, False])
def test_noncontiguous_inputs(device, backend, activation, layout, bias):
    x, weight, b = make_inputs(19, 23, 37, layout=layout, bias=bias, device=device, seed=3)
    assert not x.is_contiguous() and not weight.is_contiguous()
    h, p = fastcae.encode(x, weight, b, activation=activation, backend=backend)
    h_ref, p_ref = reference(x, weight, b, activation)
    assert_close(h, h_ref, torch.float32, what="code")
    assert_close(p, p_ref, torch.float32, what="penalty")


def _as_float32(t):
    return None if t is None else t.to(torch.float32)


def _loss(h, p, grad_code_weight, grad_penalty_weight):
    """A loss using h, p or both, with weights that make every element matter."""
    loss = 0
    if grad_code_weight is not None:
        loss = loss + (h.to(grad_code_weight.dtype) * grad_code_weight).sum()
    if grad_penalty_weight is not None:
        loss = loss + (p * grad_penalty_weight).sum()
    return loss


@pytest.mark.usefixtures("poison_empty")
@pytest.mark.parametrize(("device", "backend"), TARGETS, ids=TARGET_IDS)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("uses", ["code", "penalty", "both"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1), (17, 33, 15), (64, 100, 130)], ids=str)
def test_gradients_match_float64_reference(device, backend, activation, uses, dtype, shape):
    if backend == "naive" and dtype != torch.float32:
        pytest.skip("naive in reduced precision is not a reference-grade path")
    skip_unless_supported(backend, dtype)
    x, weight, bias = make_inputs(*shape, dtype=dtype, device=device, seed=7, requires_grad=True)
    gen = torch.Generator().manual_seed(11)
    code_weight = (
        torch.randn(shape[0], shape[2], generator=gen, dtype=torch.float64).to(device)
        if uses != "penalty"
        else None
    )
    penalty_weight = (
        torch.randn(shape[0], generator=gen, dtype=torch.float64).to(device) if uses != "code" else None
    )

    h, p = fastcae.encode(x, weight, bias, activation=activation, backend=backend)
    loss = _loss(h, p, _as_float32(code_weight), _as_float32(penalty_weight))
    # materialize_grads: for "identity" the naive p does not depend on x at all.
    grads = torch.autograd.grad(loss, (x, weight, bias), allow_unused=True, materialize_grads=True)

    inputs64 = [t.detach().to(torch.float64).requires_grad_() for t in (x, weight, bias)]
    h64, p64 = fastcae.encode(*inputs64, activation=activation, backend="torch")
    loss64 = _loss(h64, p64, code_weight, penalty_weight)
    expected = torch.autograd.grad(loss64, inputs64, allow_unused=True, materialize_grads=True)
    for name, got, want in zip(("grad_x", "grad_weight", "grad_bias"), grads, expected, strict=False):
        assert got.dtype == dtype
        assert_close(got, want, dtype, what=name)


@pytest.mark.parametrize(("device", "backend"), TARGETS, ids=TARGET_IDS)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_float64(device, backend, activation, bias):
    x, weight, b = make_inputs(
        5, 7, 6, dtype=torch.float64, bias=bias, device=device, seed=5, requires_grad=True
    )
    if activation == "relu":  # keep every pre-activation away from the kink at 0
        with torch.no_grad():
            z = x @ weight.t() + (b if b is not None else 0)
            x.add_(torch.where(z.abs().min(dim=1).values < 0.05, 0.3, 0.0).unsqueeze(1))
        assert (x @ weight.t() + (b if b is not None else 0)).abs().min() > 1e-3
    inputs = tuple(t for t in (x, weight, b) if t is not None)

    def split(*tensors):
        return tensors if bias else (*tensors, None)

    def code_only(*tensors):
        return fastcae.encode(*split(*tensors), activation=activation, backend=backend).code

    def penalty_only(*tensors):
        return fastcae.penalty(*split(*tensors), activation=activation, reduction="none", backend=backend)

    def combined(*tensors):
        h, p = fastcae.encode(*split(*tensors), activation=activation, backend=backend)
        return (h.sin().sum(dim=1) + p.log1p()).sum()

    for fn in (code_only, penalty_only, combined):
        assert torch.autograd.gradcheck(fn, inputs), fn.__name__


@pytest.mark.parametrize(("device", "backend"), FAST_TARGETS, ids=FAST_TARGET_IDS)
@pytest.mark.parametrize("needs", ["x", "weight", "bias"])
def test_gradient_only_where_asked(device, backend, needs):
    x, weight, bias = make_inputs(9, 11, 13, dtype=torch.float64, device=device)
    wanted = {"x": x, "weight": weight, "bias": bias}[needs].requires_grad_()
    (grad,) = torch.autograd.grad(fastcae.penalty(x, weight, bias, backend=backend), wanted)
    inputs64 = [t.detach().clone().requires_grad_(t is wanted) for t in (x, weight, bias)]
    (expected,) = torch.autograd.grad(
        fastcae.penalty(*inputs64, backend="torch"), [t for t in inputs64 if t.requires_grad]
    )
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize(("device", "backend"), TARGETS, ids=TARGET_IDS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_reductions(device, backend, reduction):
    x, weight, bias = make_inputs(6, 5, 4, dtype=torch.float64, device=device)
    per_sample = fastcae.encode(x, weight, bias, backend=backend).penalty
    got = fastcae.penalty(x, weight, bias, reduction=reduction, backend=backend)
    expected = {"none": per_sample, "sum": per_sample.sum(), "mean": per_sample.mean()}[reduction]
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(("device", "backend"), TARGETS, ids=TARGET_IDS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_empty_batch(device, backend, reduction):
    x, weight, bias = make_inputs(0, 5, 4, device=device, requires_grad=True)
    h, p = fastcae.encode(x, weight, bias, backend=backend)
    assert h.shape == (0, 4) and p.shape == (0,)
    loss = fastcae.penalty(x, weight, bias, reduction=reduction, backend=backend)
    assert loss.shape == ((0,) if reduction == "none" else ())
    if reduction != "none":
        assert loss.item() == 0.0
        loss.backward()
        assert torch.equal(weight.grad, torch.zeros_like(weight))
        assert torch.equal(bias.grad, torch.zeros_like(bias))


@pytest.mark.parametrize(
    ("device", "backend"),
    [t for t in TARGETS if t[1] != "naive"],
    ids=[i for i in TARGET_IDS if "naive" not in i],
)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_nan_in_x_reaches_only_its_sample(device, backend, activation):
    x, weight, bias = make_inputs(4, 6, 5, device=device)
    x[2, 3] = float("nan")
    h, p = fastcae.encode(x, weight, bias, activation=activation, backend=backend)
    assert torch.isnan(p[2]) and torch.isnan(h[2]).all()
    keep = torch.tensor([0, 1, 3], device=device)
    assert torch.isfinite(p[keep]).all() and torch.isfinite(h[keep]).all()


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "softplus"])
def test_naive_nan_in_x_reaches_only_its_sample(activation):
    """The naive Jacobian propagates NaN for smooth activations (autograd's relu
    derivative at NaN is 0, so relu and identity are excluded for "naive")."""
    x, weight, bias = make_inputs(4, 6, 5)
    x[1, 0] = float("nan")
    p = fastcae.penalty(x, weight, bias, activation=activation, reduction="none", backend="naive")
    assert torch.isnan(p[1]) and torch.isfinite(p[[0, 2, 3]]).all()


@pytest.mark.parametrize(("device", "backend"), FAST_TARGETS, ids=FAST_TARGET_IDS)
def test_torch_compile_matches_eager_without_graph_breaks(device, backend):
    """The encode and CAE+H ops under torch.compile(fullgraph=True): no graph
    break, the eager values and gradients."""
    x, weight, bias = make_inputs(16, 12, 20, device=device, seed=1)
    generator_seed = 3

    def loss_fn(x, weight, bias, noise):
        h, p = fastcae.encode(x, weight, bias, backend=backend)
        z = torch.nn.functional.linear(x, weight, bias)
        hessian = fastcae.ops.hessian.IMPLEMENTATIONS[backend](
            z, z + noise @ weight.t(), weight.pow(2).sum(1), "sigmoid"
        )
        return (h.pow(2).sum(dim=1) + 0.1 * p + hessian).mean()

    noise = 0.1 * torch.randn(2, 16, 12, generator=torch.Generator().manual_seed(generator_seed)).to(device)
    explanation = torch._dynamo.explain(loss_fn)(x, weight, bias, noise)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    # aot_eager on CPU (no C++ toolchain needed); Inductor where a GPU is present.
    compiled = torch.compile(loss_fn, backend="aot_eager" if device == "cpu" else "inductor", fullgraph=True)
    eager_inputs = [t.clone().requires_grad_() for t in (x, weight, bias)]
    compiled_inputs = [t.clone().requires_grad_() for t in (x, weight, bias)]
    eager = loss_fn(*eager_inputs, noise)
    eager.backward()
    result = compiled(*compiled_inputs, noise)
    result.backward()
    torch.testing.assert_close(result, eager)
    for a, b in zip(compiled_inputs, eager_inputs, strict=True):
        torch.testing.assert_close(a.grad, b.grad)
