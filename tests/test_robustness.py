"""What a long training run relies on: property-based agreement with the float64
reference, argument fuzzing, special values, autocast, threads and 64-bit indexing."""

import threading

import pytest
import torch
from helpers import DEVICES, assert_close, available_backends, reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastcae
from fastcae._environment import triton_interpreter_enabled as interpreter_enabled
from fastcae.activations import ACTIVATION_NAMES, ACTIVATIONS
from fastcae.nn import ContractiveAutoencoder

# Every backend that runs here, except the slow Jacobian baseline; the Triton
# interpreter is slow too, so it gets fewer examples.
FAST = [(d, b) for d in DEVICES for b in available_backends(d) if b != "naive"]
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _examples(backend: str) -> int:
    """Examples per backend, capped by the active hypothesis profile (the GPU check loads "gpu-check")."""
    return min(12 if backend == "triton" and interpreter_enabled() else 60, settings().max_examples)


@st.composite
def encoder_problems(draw, device, backend):
    """Random shapes (including 0 and 1), activation, dtype, bias, layout, requires_grad."""
    batch = draw(st.integers(0, 40))
    in_features = draw(st.integers(1, 40))
    hidden = draw(st.integers(1, 40))
    dtypes = [d for d in (torch.float32, torch.float64) if d in fastcae.dispatch.BACKENDS[backend].dtypes]
    dtype = draw(st.sampled_from(dtypes))
    activation = draw(st.sampled_from(ACTIVATION_NAMES))
    with_bias = draw(st.booleans())
    transposed = draw(st.booleans())
    requires_grad = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([0.1, 1.0, 5.0]))
    x = torch.randn(in_features, batch, generator=gen, dtype=torch.float64).t() if transposed else (
        torch.randn(batch, in_features, generator=gen, dtype=torch.float64)
    )  # fmt: skip
    weight = torch.randn(hidden, in_features, generator=gen, dtype=torch.float64) * scale / in_features**0.5
    bias = torch.randn(hidden, generator=gen, dtype=torch.float64) if with_bias else None

    def place(t):
        return None if t is None else t.to(dtype).to(device).requires_grad_(requires_grad)

    return place(x), place(weight), place(bias), activation


def _saturated(x, weight, bias, activation) -> bool:
    """Whether the gradient comparison is meaningless here. The backward takes φ'
    from the saved code h; where a unit saturates past the dtype's resolution of
    h (φ' < 1e-4 in float32), φ' and its gradient vanish, as in PyTorch's own
    sigmoid/tanh backward, while float64 still resolves them. relu is skipped
    near its kink at 0."""
    preact = torch.nn.functional.linear(
        *(None if t is None else t.detach().double() for t in (x, weight, bias))
    )
    if activation == "relu":
        return bool((preact.abs() < 1e-3).any())
    slope = ACTIVATIONS[activation].slope(preact)
    floor = 1e-4 if x.dtype == torch.float32 else 1e-12
    return bool((slope < floor).any())


@pytest.mark.parametrize(("device", "backend"), FAST, ids=[f"{d}-{b}" for d, b in FAST])
def test_property_random_problems_match_the_float64_reference(device, backend):
    @settings(PROPERTY_SETTINGS, max_examples=_examples(backend))
    @given(encoder_problems(device, backend))
    def check(problem):
        x, weight, bias, activation = problem
        h, p = fastcae.encode(x, weight, bias, activation=activation, backend=backend)
        h_ref, p_ref = reference(x, weight, bias, activation)
        assert_close(h, h_ref, x.dtype, what="code")
        assert_close(p, p_ref, x.dtype, what="penalty")
        if x.requires_grad and x.shape[0] > 0 and not _saturated(x, weight, bias, activation):
            loss = h.sum() + p.sum() * 0.5
            grads = torch.autograd.grad(loss, [t for t in (x, weight, bias) if t is not None])
            wide = [t.detach().double().requires_grad_() for t in (x, weight, bias) if t is not None]
            args = (*wide, None) if bias is None else wide
            h64, p64 = fastcae.encode(*args, activation=activation, backend="torch")
            # dz = g_h φ' + 2 g_p φ' φ'' N: the two parts can nearly cancel (a unit past
            # σ's inflection with a large ‖W_j‖²), and the float32 result then carries the
            # rounding error of the parts, not of their sum. The floor scales with the parts.
            from_code = torch.autograd.grad(h64.sum(), wide, retain_graph=True)
            from_penalty = torch.autograd.grad(p64.sum() * 0.5, wide)
            for got, part_h, part_p in zip(grads, from_code, from_penalty, strict=True):
                scale = part_h.abs().max().item() + part_p.abs().max().item()
                assert_close(got, part_h + part_p, x.dtype, what="gradient", scale=scale)

    check()


def _bad_value():
    return st.one_of(
        st.none(),
        st.integers(),
        st.floats(allow_nan=True),
        st.text(max_size=5),
        st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), max_size=3),
        st.builds(
            lambda n, dt: torch.zeros(n, dtype=dt),
            st.integers(0, 4),
            st.sampled_from([torch.int64, torch.bool, torch.complex64, torch.uint8]),
        ),
        st.builds(lambda shape: torch.randn(shape), st.lists(st.integers(0, 3), max_size=4).map(tuple)),
    )


@settings(max_examples=300, deadline=None)
@given(
    slot=st.sampled_from(["x", "weight", "bias", "activation", "reduction", "backend"]),
    value=_bad_value(),
)
def test_fuzz_invalid_arguments_raise_clear_errors(slot, value):
    """Any invalid argument raises ValueError or TypeError naming it, never another
    error, a crash or a result. (Inputs that happen to be valid must work.)"""
    args = {"x": torch.randn(3, 4), "weight": torch.randn(5, 4), "bias": torch.randn(5),
            "activation": "sigmoid", "reduction": "mean", "backend": "auto"}  # fmt: skip
    args[slot] = value
    try:
        result = fastcae.penalty(args["x"], args["weight"], args["bias"], activation=args["activation"],
                                 reduction=args["reduction"], backend=args["backend"])  # fmt: skip
    except (ValueError, TypeError) as exc:
        named = {"x": "x", "weight": "weight", "bias": "bias"}.get(slot, slot)
        assert named in str(exc), (slot, value, str(exc))
        return
    assert (slot == "bias" and value is None) or isinstance(result, torch.Tensor)


@pytest.mark.parametrize(("device", "backend"), FAST, ids=[f"{d}-{b}" for d, b in FAST])
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_touches_only_its_sample(device, backend, activation, bad):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=gen).to(device)
    weight = (torch.randn(6, 7, generator=gen) * 0.4).to(device)
    bias = torch.randn(6, generator=gen).to(device)
    clean_h, clean_p = fastcae.encode(x, weight, bias, activation=activation, backend=backend)
    x_bad = x.clone()
    x_bad[3, 2] = bad
    h, p = fastcae.encode(x_bad, weight, bias, activation=activation, backend=backend)
    others = torch.tensor([0, 1, 2, 4], device=device)
    torch.testing.assert_close(h[others], clean_h[others], rtol=0, atol=0)
    torch.testing.assert_close(p[others], clean_p[others], rtol=0, atol=0)
    if bad != bad:  # NaN propagates to the affected sample
        assert torch.isnan(p[3]) and torch.isnan(h[3]).all()


@pytest.mark.parametrize(("device", "backend"), FAST, ids=[f"{d}-{b}" for d, b in FAST])
def test_nan_in_a_weight_row_reaches_every_sample_through_that_unit(device, backend):
    weight = torch.randn(6, 7, device=device) * 0.4
    weight[2, 5] = float("nan")
    h, p = fastcae.encode(torch.randn(4, 7, device=device), weight, None, backend=backend)
    assert torch.isnan(p).all() and torch.isnan(h[:, 2]).all()
    assert torch.isfinite(h[:, [0, 1, 3, 4, 5]]).all()


@pytest.mark.parametrize(("device", "backend"), FAST, ids=[f"{d}-{b}" for d, b in FAST])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "softplus"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_huge_preactivations_saturate_without_nan(device, backend, activation, dtype):
    x = torch.tensor([[1.0], [-1.0], [0.5]], dtype=dtype, device=device)
    weight = torch.tensor([[1e4], [-3e4], [5e3], [1e6]], dtype=dtype, device=device)
    h, p = fastcae.encode(x, weight, None, activation=activation, backend=backend)
    assert torch.isfinite(h).all() and torch.isfinite(p).all() and (p >= 0).all()
    if activation != "softplus":  # σ' and tanh' vanish when every unit saturates
        assert torch.equal(p, torch.zeros_like(p))


@pytest.mark.parametrize(("device", "backend"), FAST, ids=[f"{d}-{b}" for d, b in FAST])
def test_all_saturated_units_give_exactly_zero(device, backend):
    weight = torch.full((8, 3), 200.0, device=device)
    h, p = fastcae.encode(
        torch.ones(4, 3, device=device), weight, None, activation="sigmoid", backend=backend
    )
    assert torch.equal(h, torch.ones_like(h)) and torch.equal(p, torch.zeros_like(p))


def test_autocast_casts_like_linear_and_keeps_a_float32_penalty():
    x = torch.rand(6, 8)
    weight = torch.randn(5, 8, requires_grad=True)
    bias = torch.randn(5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h, p = fastcae.encode(x, weight, bias)
        hessian = fastcae.penalty_hessian(x, weight, bias, generator=torch.Generator().manual_seed(0))
    assert h.dtype == torch.bfloat16 and p.dtype == torch.float32 and hessian.dtype == torch.float32
    (h.float().sum() + p.sum()).backward()
    assert weight.grad.dtype == torch.float32 and bias.grad.dtype == torch.float32
    _, p_ref = reference(x.bfloat16(), weight.bfloat16(), bias.bfloat16(), "sigmoid")
    assert_close(p, p_ref, torch.bfloat16, what="penalty under autocast")


@pytest.mark.parametrize("device", DEVICES)
def test_training_under_autocast_stays_finite(device):
    torch.manual_seed(0)
    model = ContractiveAutoencoder(32, 16, contractive_weight=0.5, hessian_weight=0.1).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.rand(64, 32, device=device)
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    losses = []
    for _ in range(20):
        with torch.autocast(device, dtype=dtype):
            loss = model.loss(x).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("device", "backend"),
    [t for t in FAST if not (t[1] == "triton" and interpreter_enabled())],
    ids=lambda v: str(v),
)
def test_two_threads_at_once(device, backend):
    """The Triton interpreter patches module state while it runs, so it is
    not exercised from threads; compiled Triton on a GPU is."""
    gen = torch.Generator().manual_seed(1)
    inputs = [(torch.randn(64, 40, generator=gen).to(device), torch.randn(50, 40, generator=gen).to(device))
              for _ in range(2)]  # fmt: skip
    expected = [fastcae.encode(x, w, None, backend=backend) for x, w in inputs]
    results, errors = [None, None], []

    def work(i):
        try:
            for _ in range(50):
                results[i] = fastcae.encode(*inputs[i], None, backend=backend)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for got, want in zip(results, expected, strict=True):
        assert torch.equal(got.code, want.code) and torch.equal(got.penalty, want.penalty)


@pytest.mark.slow
@pytest.mark.skipif("cpu" not in available_backends(), reason="fastcae._C is not built")
def test_more_than_2_31_elements_in_a_batch_of_codes():
    """B·H > 2³¹: every index in the CPU kernels is 64-bit (bfloat16 keeps this at ~13 GB)."""
    batch, hidden = 65537, 32768  # 2,147,516,416 elements
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, generator=gen).bfloat16()
    weight = torch.randn(hidden, 1, generator=gen).bfloat16().requires_grad_()
    h, p = fastcae.encode(x, weight, None, backend="cpu")
    tail = slice(batch - 3, batch)
    h_ref, p_ref = reference(x[tail], weight, None, "sigmoid")
    assert_close(h[tail], h_ref, torch.bfloat16, what="last codes")
    assert_close(p[tail], p_ref, torch.bfloat16, what="last penalties")
    del h
    p.sum().backward()
    assert torch.isfinite(weight.grad).all()
