"""Bad input raises a clear error naming the argument, before any kernel runs."""

import pytest
import torch
from helpers import available_backends, make_inputs

import fastcae
from fastcae.ops import encode as encode_op
from fastcae.ops import hessian as hessian_op


@pytest.fixture
def no_kernel_may_run(monkeypatch):
    """Replace every backend's ops with ones that fail the test if called."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a kernel ran before the arguments were validated")

    for table in (encode_op.IMPLEMENTATIONS, hessian_op.IMPLEMENTATIONS):
        for name in list(table):
            monkeypatch.setitem(table, name, forbidden)


def good():
    x, weight, bias = make_inputs(4, 5, 3)
    return {"x": x, "weight": weight, "bias": bias}


BAD_CASES = [
    # (description, overrides, keyword overrides, exception, words in the message)
    ("x not a tensor", {"x": [[1.0] * 5] * 4}, {}, TypeError, ["x", "torch.Tensor"]),
    ("x 1-D", {"x": torch.randn(5)}, {}, ValueError, ["x", "2-D", "unsqueeze"]),
    ("x 3-D", {"x": torch.randn(2, 4, 5)}, {}, ValueError, ["x", "2-D"]),
    ("weight 1-D", {"weight": torch.randn(5)}, {}, ValueError, ["weight", "2-D"]),
    ("feature mismatch", {"weight": torch.randn(3, 6)}, {}, ValueError, ["features", "weight"]),
    ("bias wrong length", {"bias": torch.randn(4)}, {}, ValueError, ["bias", "(3,)"]),
    ("bias 2-D", {"bias": torch.randn(1, 3)}, {}, ValueError, ["bias", "(3,)"]),
    ("integer x", {"x": torch.ones(4, 5, dtype=torch.int64)}, {}, TypeError, ["x", "floating", "int64"]),
    (
        "integer weight",
        {"weight": torch.ones(3, 5, dtype=torch.int32)},
        {},
        TypeError,
        ["weight", "floating"],
    ),
    (
        "mixed dtypes",
        {"weight": torch.randn(3, 5, dtype=torch.float64)},
        {},
        TypeError,
        ["weight", "dtype", "float32"],
    ),
    ("mixed bias dtype", {"bias": torch.randn(3, dtype=torch.float16)}, {}, TypeError, ["bias", "dtype"]),
    (
        "mixed devices",
        {"weight": torch.randn(3, 5, device="meta")},
        {},
        ValueError,
        ["weight", "device", "meta"],
    ),
    ("unknown activation", {}, {"activation": "gelu"}, ValueError, ["activation", "sigmoid", "'gelu'"]),
    ("activation not a string", {}, {"activation": torch.sigmoid}, TypeError, ["activation", "string"]),
    ("unknown backend", {}, {"backend": "fortran"}, ValueError, ["backend", "'fortran'", "'auto'"]),
    ("unknown reduction", {}, {"reduction": "max"}, ValueError, ["reduction", "'mean'"]),
]


@pytest.mark.usefixtures("no_kernel_may_run")
@pytest.mark.parametrize(
    ("what", "tensors", "options", "error", "words"), BAD_CASES, ids=[c[0] for c in BAD_CASES]
)
def test_bad_input_raises_before_any_kernel(what, tensors, options, error, words):
    args = {**good(), **tensors}
    with pytest.raises(error) as info:
        fastcae.penalty(args["x"], args["weight"], args["bias"], **options)
    message = str(info.value)
    for word in words:
        assert word in message, f"{what}: {word!r} not in {message!r}"


@pytest.mark.usefixtures("no_kernel_may_run")
def test_encode_validates_like_penalty():
    with pytest.raises(ValueError, match="activation"):
        fastcae.encode(*good().values(), activation="swish")


@pytest.mark.usefixtures("no_kernel_may_run")
def test_backend_on_wrong_device_is_refused():
    x, weight, bias = (t.to("meta") for t in good().values())
    with pytest.raises(ValueError, match=r"backend='cpu' runs on cpu tensors, but x is on meta"):
        fastcae.encode(x, weight, bias, backend="cpu")


@pytest.mark.usefixtures("no_kernel_may_run")
@pytest.mark.parametrize("name", [n for n, reason in fastcae.backends().items() if reason is not None])
def test_unavailable_backend_says_why(name):
    reason = fastcae.backends()[name]
    with pytest.raises(fastcae.BackendUnavailableError, match="unavailable") as info:
        fastcae.encode(*good().values(), backend=name)
    assert reason in str(info.value)
    assert isinstance(info.value, ValueError)


def test_cpp_ops_check_their_inputs_too():
    """Direct torch.ops calls skip the Python validation; the C++ checks still catch bad shapes."""
    if "cpu" not in available_backends():
        pytest.skip("extension not built")
    with pytest.raises(ValueError, match="features"):
        torch.ops.fastcae.encode_forward(torch.randn(2, 3), torch.randn(4, 5), None, "sigmoid")
    with pytest.raises(ValueError, match="activation"):
        torch.ops.fastcae.encode_forward(torch.randn(2, 3), torch.randn(4, 3), None, "gelu")
