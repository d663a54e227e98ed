"""The convolutional layer's penalty (fastcae.encode_conv2d / penalty_conv2d) and
the activate op under it: every backend against the true per-sample Jacobian
of F.conv2d in float64, over kernel sizes, strides, paddings, dilations,
groups and activations; gradients, double backward, torch.func, torch.compile,
half precision, NaN, empty batches and bad input."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICES, assert_close, available_backends, skip_unless_supported

import fastcae
from fastcae._environment import triton_interpreter_enabled as interpreter_enabled
from fastcae.activations import ACTIVATION_NAMES, ACTIVATIONS
from fastcae.ops import activate, conv_norms
from fastcae.ops.conv_norms import ConvGeometry

TARGETS = [(device, backend) for device in DEVICES for backend in available_backends(device)]
FAST_TARGETS = [(d, b) for d, b in TARGETS if b not in ("torch", "naive")]
FAST_IDS = [f"{d}-{b}" for d, b in FAST_TARGETS]
needs_extension = pytest.mark.skipif(
    "cpu" not in available_backends("cpu"), reason="the C++ extension is not built"
)


def random_geometry(seed: int) -> dict:
    """A random conv layer: kernel (non-square too, 1×1), stride, padding (ints,
    pairs, "same", "valid"), dilation, groups, bias, odd image sizes."""
    rng = random.Random(seed)
    groups = rng.choice([1, 1, 2, 3])
    kernel = (rng.choice([1, 2, 3, 5]), rng.choice([1, 2, 3]))
    dilation = (rng.choice([1, 2]), rng.choice([1, 2]))
    stride = (rng.choice([1, 2, 3]), rng.choice([1, 2]))
    padding = rng.choice([0, 1, (2, 1), "valid", "same"])
    if padding == "same":
        stride = (1, 1)
    pads = (
        (0, 0)
        if padding in ("valid", "same")
        else (padding, padding)
        if isinstance(padding, int)
        else padding
    )
    height = rng.randint(max(1, dilation[0] * (kernel[0] - 1) + 1 - 2 * pads[0]), 11)
    width = rng.randint(max(1, dilation[1] * (kernel[1] - 1) + 1 - 2 * pads[1]), 10)
    return {
        "batch": rng.randint(1, 5),
        "in_channels": groups * rng.randint(1, 3),
        "out_channels": groups * rng.randint(1, 3),
        "size": (height, width),
        "kernel": kernel,
        "bias": rng.random() < 0.7,
        "conv": {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups},
    }


def make_conv_inputs(geometry: dict, *, dtype=torch.float64, device="cpu", seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    groups = geometry["conv"]["groups"]
    c_in, c_out = geometry["in_channels"], geometry["out_channels"]
    fan_in = c_in // groups * geometry["kernel"][0] * geometry["kernel"][1]

    def rand(*shape, scale=1.0):
        t = (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)
        return t.requires_grad_(requires_grad)

    x = rand(geometry["batch"], c_in, *geometry["size"])
    weight = rand(c_out, c_in // groups, *geometry["kernel"], scale=2 / fan_in**0.5)
    bias = rand(c_out, scale=0.5) if geometry["bias"] else None
    return x, weight, bias


# Small enough for gradcheck's numerical Jacobian (every input element twice,
# under the Triton interpreter too), with groups, stride, padding and dilation.
TINY = {
    "batch": 2, "in_channels": 2, "out_channels": 4, "size": (5, 4), "kernel": (3, 2), "bias": True,
    "conv": {"stride": (2, 1), "padding": 1, "dilation": (1, 2), "groups": 2},
}  # fmt: skip


def true_penalty(x, weight, bias, conv: dict, activation: str):
    """h and ‖∂h_b/∂x_b‖²_F from the explicit per-sample Jacobian of F.conv2d, in float64."""
    act = ACTIVATIONS[activation]
    x, weight = x.detach().cpu().double(), weight.detach().cpu().double()
    bias = None if bias is None else bias.detach().cpu().double()

    def code_of(sample):
        return act.forward(F.conv2d(sample.unsqueeze(0), weight, bias, **conv)[0])

    jacobian = torch.func.vmap(torch.func.jacrev(code_of))(x)
    return torch.func.vmap(code_of)(x), jacobian.pow(2).flatten(1).sum(dim=1)


@pytest.mark.usefixtures("poison_empty")
@pytest.mark.parametrize(("device", "backend"), TARGETS, ids=[f"{d}-{b}" for d, b in TARGETS])
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("seed", range(6))
def test_matches_the_true_jacobian(device, backend, activation, seed):
    geometry = random_geometry(seed * 7 + len(activation))
    x, weight, bias = make_conv_inputs(geometry, device=device, seed=seed)
    code, penalty = fastcae.encode_conv2d(
        x, weight, bias, activation=activation, backend=backend, **geometry["conv"]
    )
    expected_code, expected_penalty = true_penalty(x, weight, bias, geometry["conv"], activation)
    assert code.dtype == x.dtype and penalty.dtype == torch.float64
    assert_close(code, expected_code, torch.float64, what=f"code {geometry}")
    assert_close(penalty, expected_penalty, torch.float64, what=f"penalty {geometry}")


@pytest.mark.usefixtures("poison_empty")
@pytest.mark.parametrize(("device", "backend"), FAST_TARGETS, ids=FAST_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_low_precision_against_float64(device, backend, dtype, activation):
    skip_unless_supported(backend, dtype)
    # 65 output channels × 3 × 3: more units than one tile or penalty group holds.
    geometry = {
        "batch": 5, "in_channels": 4, "out_channels": 65, "size": (7, 6), "kernel": (3, 3), "bias": True,
        "conv": {"stride": (2, 2), "padding": 1, "dilation": (1, 1), "groups": 1},
    }  # fmt: skip
    x, weight, bias = make_conv_inputs(geometry, dtype=dtype, device=device, seed=3, requires_grad=True)
    code, penalty = fastcae.encode_conv2d(
        x, weight, bias, activation=activation, backend=backend, **geometry["conv"]
    )
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    ref_code, ref_penalty = fastcae.encode_conv2d(
        x64, w64, b64, activation=activation, backend="torch", **geometry["conv"]
    )
    assert penalty.dtype == torch.float32
    assert_close(code, ref_code, dtype, what="code")
    assert_close(penalty, ref_penalty, dtype, what="penalty")
    upstream = torch.randn(code.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    loss = (code.float() * upstream.to(device, torch.float32)).sum() + penalty.sum()
    ref_loss = (ref_code * upstream).sum() + ref_penalty.sum()
    grads = torch.autograd.grad(loss, (x, weight, bias))
    ref_grads = torch.autograd.grad(ref_loss, (x64, w64, b64))
    for name, got, want in zip(("x", "weight", "bias"), grads, ref_grads, strict=True):
        assert_close(got, want, dtype, what=f"grad {name}")


# The reference backends ("torch", "naive") are plain autograd: one activation each.
GRADCHECK_CASES = [
    (d, b, a) for d, b in TARGETS for a in ACTIVATION_NAMES if (d, b) in FAST_TARGETS or a == "tanh"
]


@pytest.mark.parametrize(("device", "backend", "activation"), GRADCHECK_CASES)
def test_gradcheck(device, backend, activation):
    geometry = TINY
    x, weight, bias = make_conv_inputs(geometry, device=device, seed=5, requires_grad=True)
    inputs = (x, weight) if bias is None else (x, weight, bias)

    def penalty_and_code(*args):
        return fastcae.encode_conv2d(*args, activation=activation, backend=backend, **geometry["conv"])

    # relu/identity: φ'' is 0 except at the kink, which random inputs avoid. Under the
    # Triton interpreter every numerical evaluation takes ~0.1 s: fast mode (a random
    # projection of the Jacobian, a few evaluations) there.
    fast = backend == "triton" and interpreter_enabled()
    assert torch.autograd.gradcheck(penalty_and_code, inputs, fast_mode=fast)


@pytest.mark.parametrize(("device", "backend"), FAST_TARGETS, ids=FAST_IDS)
@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "softplus"])
def test_gradgradcheck(device, backend, activation):
    geometry = TINY
    x, weight, bias = make_conv_inputs(geometry, device=device, seed=6, requires_grad=True)
    inputs = (x, weight) if bias is None else (x, weight, bias)

    def penalty_and_code(*args):
        return fastcae.encode_conv2d(*args, activation=activation, backend=backend, **geometry["conv"])

    fast = backend == "triton" and interpreter_enabled()
    assert torch.autograd.gradgradcheck(penalty_and_code, inputs, fast_mode=fast)


@pytest.mark.parametrize(("device", "backend"), FAST_TARGETS, ids=FAST_IDS)
def test_torch_func_transforms_match_the_torch_backend(device, backend):
    geometry = random_geometry(300)
    x, weight, bias = make_conv_inputs(geometry, device=device, seed=7)
    conv = geometry["conv"]

    def per_sample_penalty(weight, sample, name):
        return fastcae.penalty_conv2d(sample.unsqueeze(0), weight, bias, backend=name, **conv)

    def code_of(sample, name):
        return fastcae.encode_conv2d(sample.unsqueeze(0), weight, bias, backend=name, **conv).code[0]

    for transform in (
        lambda name: torch.func.vmap(torch.func.grad(per_sample_penalty), in_dims=(None, 0, None))(
            weight, x, name
        ),
        lambda name: torch.func.jacrev(code_of)(x[0], name),
        lambda name: torch.func.jacfwd(code_of)(x[0], name),
        lambda name: torch.func.jvp(lambda w: per_sample_penalty(w, x[0], name), (weight,), (weight,))[1],
    ):
        torch.testing.assert_close(transform(backend), transform("torch"))


@pytest.mark.parametrize(("device", "backend"), FAST_TARGETS, ids=FAST_IDS)
def test_torch_compile_without_graph_breaks(device, backend):
    if backend == "triton" and interpreter_enabled():
        pytest.skip("torch.compile of a Triton custom op needs a GPU")
    geometry = random_geometry(400)
    x, weight, bias = make_conv_inputs(
        geometry, dtype=torch.float32, device=device, seed=8, requires_grad=True
    )
    torch._dynamo.reset()

    def loss(x, weight, bias):
        code, penalty = fastcae.encode_conv2d(x, weight, bias, backend=backend, **geometry["conv"])
        return code.sum() + penalty.mean()

    compiled = torch.compile(loss, fullgraph=True)
    inputs = tuple(t for t in (x, weight, bias) if t is not None)
    eager_grads = torch.autograd.grad(loss(x, weight, bias), inputs)
    compiled_grads = torch.autograd.grad(compiled(x, weight, bias), inputs)
    for got, want in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("device", "backend"), TARGETS, ids=[f"{d}-{b}" for d, b in TARGETS])
def test_nan_stays_in_its_sample_and_empty_batch_works(device, backend):
    geometry = random_geometry(500)
    geometry["batch"] = 3
    x, weight, bias = make_conv_inputs(geometry, device=device, seed=9)
    x[1, 0, 0, 0] = float("nan")
    penalty = fastcae.penalty_conv2d(x, weight, bias, reduction="none", backend=backend, **geometry["conv"])
    assert torch.isnan(penalty[1]) and not torch.isnan(penalty[[0, 2]]).any()
    empty = x[:0].clone().requires_grad_()
    code, penalty = fastcae.encode_conv2d(empty, weight, bias, backend=backend, **geometry["conv"])
    assert code.shape[0] == 0 and penalty.shape == (0,)
    (code.sum() + penalty.sum()).backward()
    assert empty.grad.shape == empty.shape
    assert fastcae.penalty_conv2d(empty, weight, bias, backend=backend, **geometry["conv"]).item() == 0


@pytest.mark.parametrize(("device", "backend"), FAST_TARGETS, ids=FAST_IDS)
def test_channels_last_input(device, backend):
    geometry = random_geometry(600)
    x, weight, bias = make_conv_inputs(geometry, device=device, seed=10)
    x_cl = x.to(memory_format=torch.channels_last)
    weight_cl = weight.to(memory_format=torch.channels_last)
    code, penalty = fastcae.encode_conv2d(x_cl, weight_cl, bias, backend=backend, **geometry["conv"])
    expected_code, expected_penalty = true_penalty(x, weight, bias, geometry["conv"], "sigmoid")
    assert_close(code, expected_code, torch.float64, what="code")
    assert_close(penalty, expected_penalty, torch.float64, what="penalty")


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="the C++ extension is not built")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_cpu_epilogue_over_the_convolution_output_matches_a_new_buffer(channels_last):
    """The "cpu" backend writes h over the convolution's own output, with N and dK from
    the conv_norms kernels (conv2d_epilogue_in_place): the same values and gradients as
    the out-of-place kernel with N in ATen ops (which round N's sums in another order);
    an in-place change to h afterwards is caught by autograd rather than corrupting the
    gradient."""
    conv = {"stride": 2, "padding": 1}
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(5, 3, 9, 7, generator=gen)
    weight = (0.3 * torch.randn(4, 3, 3, 3, generator=gen)).requires_grad_()
    bias = torch.randn(4, generator=gen).requires_grad_()
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    outputs = {}
    for in_place in (True, False):
        with pytest.MonkeyPatch.context() as patch:
            if not in_place:
                patch.setattr(fastcae.conv, "_cpu_call", lambda backend: None)
                patch.setattr(activate, "writes_in_place", lambda *args: False)
            code, penalty = fastcae.encode_conv2d(x, weight, bias, activation="tanh", backend="cpu", **conv)
            grads = torch.autograd.grad((code.sin().sum() + penalty.sum()), (weight, bias))
            outputs[in_place] = (code, penalty, *grads)
    for got, want in zip(outputs[True], outputs[False], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    code, penalty = fastcae.encode_conv2d(x, weight, bias, backend="cpu", **conv)
    code.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (code.sum() + penalty.sum()).backward()


def _norms_geometry(geometry: dict) -> ConvGeometry:
    """conv_geometry of a random layer, its output size checked against F.conv2d's."""
    conv, size = geometry["conv"], geometry["size"]
    pairs = {key: (v, v) if isinstance(v, int) else v for key, v in conv.items()}
    ones = torch.ones(1, geometry["in_channels"], *size)
    kernel = torch.zeros(
        geometry["out_channels"], geometry["in_channels"] // conv["groups"], *geometry["kernel"]
    )
    norms_geometry = conv_norms.conv_geometry(
        size, geometry["kernel"], pairs["stride"], pairs["padding"], pairs["dilation"]
    )
    assert norms_geometry.output_hw == tuple(F.conv2d(ones, kernel, **conv).shape[2:])
    return norms_geometry


def _layer_output(
    weight: torch.Tensor, geometry: ConvGeometry, channels_last: bool, fill=None
) -> torch.Tensor:
    """A (1, C_out, H_out, W_out) tensor in the layer's layout: zeros, or ``fill``'s values."""
    out = torch.zeros(1, weight.shape[0], *geometry.output_hw, dtype=weight.dtype)
    if fill is not None:
        out.copy_(fill)
    return out.to(memory_format=torch.channels_last) if channels_last else out


def _unflatten(
    flat: torch.Tensor, out_channels: int, geometry: ConvGeometry, channels_last: bool
) -> torch.Tensor:
    if channels_last:
        return flat.view(*geometry.output_hw, out_channels).permute(2, 0, 1)
    return flat.view(out_channels, *geometry.output_hw)


def _norms_by(form: str, weight: torch.Tensor, geometry: ConvGeometry, channels_last: bool) -> torch.Tensor:
    """N (C, H, W) by the ATen ops, or by the C++ kernel inside conv2d_activate_ (flat in z's
    memory order, unflattened here)."""
    if form == "aten":
        return conv_norms.conv2d_unit_norms_sq(weight, geometry, channels_last=channels_last)
    preact = _layer_output(weight, geometry, channels_last)
    _, flat = torch.ops.fastcae.conv2d_activate_(
        preact, weight.detach(), *geometry[:4], "sigmoid", channels_last
    )
    return _unflatten(flat, weight.shape[0], geometry, channels_last)


NORMS_FORMS = ["aten", pytest.param("cpp", marks=needs_extension)]


@pytest.mark.parametrize("form", NORMS_FORMS)
def test_unit_norms_count_only_the_taps_inside_the_image(form):
    # 1 channel, 3×3 kernel of ones, padding 1 on a 3×3 image: corners see 4 taps,
    # edges 6, the center 9.
    weight = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    geometry = conv_norms.conv_geometry((3, 3), (3, 3), (1, 1), (1, 1), (1, 1))
    assert _norms_by(form, weight, geometry, False)[0].tolist() == [[4, 6, 4], [6, 9, 6], [4, 6, 4]]


@pytest.mark.parametrize("form", NORMS_FORMS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("seed", range(40))
def test_unit_norms_equal_a_convolution_of_ones(seed, channels_last, form):
    """N by either form against its definition, conv2d(1, K²), and dK through N (the C++
    backward kernel, or autograd of the ATen ops) against autograd of that convolution,
    for dN_u = φ'(h_u)² (the kernel's dN for one sample with g_p = 1, sigmoid)."""
    geometry = random_geometry(900 + seed)
    _, weight, _ = make_conv_inputs(geometry, seed=seed)
    weight.requires_grad_()
    ones = torch.ones((1, geometry["in_channels"], *geometry["size"]), dtype=torch.float64)
    expected = F.conv2d(ones, weight.square(), None, **geometry["conv"])[0]
    norms_geometry = _norms_geometry(geometry)
    got = _norms_by(form, weight, norms_geometry, channels_last)
    torch.testing.assert_close(got, expected)
    assert got.permute(1, 2, 0).is_contiguous() if channels_last else got.is_contiguous()
    gen = torch.Generator().manual_seed(seed)
    code = _layer_output(
        weight, norms_geometry, channels_last, torch.rand(expected.shape, generator=gen, dtype=torch.float64)
    )
    grad_norms = (code * (1 - code)).square()[0]
    (want,) = torch.autograd.grad(expected, weight, grad_norms)
    if form == "aten":
        (grad_weight,) = torch.autograd.grad(got, weight, grad_norms)
    else:
        flat_norms = (got.permute(1, 2, 0) if channels_last else got).reshape(-1)
        grad_preact, grad_weight = torch.ops.fastcae.conv2d_activate_backward(
            None, torch.ones(1, dtype=torch.float64), code, flat_norms, weight.detach(), *norms_geometry[:4],
            "sigmoid", channels_last, [False, True],
        )  # fmt: skip
        assert grad_preact is None
    torch.testing.assert_close(grad_weight, want)


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_unit_norms_kernel_in_low_precision_accumulates_in_float32(dtype):
    geometry = random_geometry(77)
    _, weight, _ = make_conv_inputs(geometry, seed=7)
    norms_geometry = _norms_geometry(geometry)
    low = weight.to(dtype)
    preact = _layer_output(low, norms_geometry, False)
    _, got = torch.ops.fastcae.conv2d_activate_(preact, low, *norms_geometry[:4], "sigmoid", False)
    assert got.dtype == torch.float32
    wide = low.double().requires_grad_()
    wide_norms = conv_norms.conv2d_unit_norms_sq(wide, norms_geometry).reshape(-1)
    torch.testing.assert_close(got.double(), wide_norms.detach(), rtol=1e-6, atol=1e-6)
    grad_penalty = torch.ones(1)
    _, grad_weight = torch.ops.fastcae.conv2d_activate_backward(
        None, grad_penalty, preact, got, low, *norms_geometry[:4], "sigmoid", False, [False, True]
    )
    assert grad_weight.dtype == dtype
    slope = preact.double() * (1 - preact.double())  # h = σ(0) = 1/2 everywhere, written by the forward
    (want,) = torch.autograd.grad(wide_norms, wide, slope.square().reshape(-1))
    # One rounding to dtype at the end (the sums are float32).
    tolerance = {torch.float32: 1e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
    torch.testing.assert_close(grad_weight.double(), want, rtol=tolerance, atol=tolerance)


@needs_extension
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck_conv2d_activate_ops(channels_last):
    geometry = random_geometry(31)
    x, weight, _ = make_conv_inputs(geometry, seed=3)
    norms_geometry = _norms_geometry(geometry)
    preact = F.conv2d(x, weight, None, **geometry["conv"])
    if channels_last:
        preact = preact.contiguous(memory_format=torch.channels_last)
    args = (*norms_geometry[:4], "tanh", channels_last)
    torch.library.opcheck(torch.ops.fastcae.conv2d_activate_.default, (preact.clone(), weight, *args))
    code = preact.clone()
    version = code._version
    _, norms = torch.ops.fastcae.conv2d_activate_(code, weight, *args)
    assert code._version > version  # autograd then catches a use of z saved before it
    gen = torch.Generator().manual_seed(3)
    grad_code = torch.randn(code.shape, generator=gen, dtype=code.dtype)
    grad_penalty = torch.randn(code.shape[0], generator=gen, dtype=code.dtype)
    for grads, mask in (((grad_code, grad_penalty), [True, True]), ((None, grad_penalty), [False, True])):
        torch.library.opcheck(
            torch.ops.fastcae.conv2d_activate_backward.default, (*grads, code, norms, weight, *args, mask)
        )


@needs_extension
def test_conv2d_activate_kernels_reject_bad_arguments():
    weight = torch.rand(2, 1, 3, 3)
    preact = torch.rand(1, 2, 3, 3)
    geometry = ((5, 5), (1, 1), (0, 0), (1, 1))
    with pytest.raises(ValueError, match="weight must be 4-D"):
        torch.ops.fastcae.conv2d_activate_(preact, weight[0], *geometry, "tanh", False)
    with pytest.raises(ValueError, match="stride must be two integers >= 1"):
        torch.ops.fastcae.conv2d_activate_(preact, weight, (5, 5), (0, 1), (0, 0), (1, 1), "tanh", False)
    with pytest.raises(ValueError, match="preact has 3 channels but weight has 2"):
        torch.ops.fastcae.conv2d_activate_(torch.rand(1, 3, 3, 3), weight, *geometry, "tanh", False)
    with pytest.raises(ValueError, match="preact must be channels-last"):
        torch.ops.fastcae.conv2d_activate_(torch.rand(1, 2, 3, 3), weight, *geometry, "tanh", True)
    with pytest.raises(ValueError, match="activation must be one of"):
        torch.ops.fastcae.conv2d_activate_(preact, weight, *geometry, "swish", False)
    _, norms = torch.ops.fastcae.conv2d_activate_(
        preact.requires_grad_(False), weight, *geometry, "tanh", False
    )
    with pytest.raises(ValueError, match="grad_code must have shape"):
        torch.ops.fastcae.conv2d_activate_backward(
            torch.rand(1, 2, 3, 2), None, preact, norms, weight, *geometry, "tanh", False, [True, False]
        )
    penalty, _ = torch.ops.fastcae.conv2d_activate_(
        torch.rand(1, 2, 3, 3), weight.requires_grad_(), *geometry, "tanh", False
    )
    with pytest.raises(RuntimeError, match="not implemented"):  # a kernel, not a differentiable op
        penalty.sum().backward()


@pytest.mark.parametrize("channels_last", [False, True])
def test_unit_norms_of_a_geometry_too_large_for_its_tap_mask(channels_last):
    # 7×7 taps × 300×300 outputs: more entries than MAX_TAP_MASK_ENTRIES, so N
    # comes from the row and column masks.
    weight = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    geometry = conv_norms.conv_geometry((300, 300), (7, 7), (1, 1), (3, 3), (1, 1))
    _, _, taps = conv_norms.tap_masks(geometry, (7, 7), torch.float64, torch.device("cpu"))
    assert taps is None
    expected = F.conv2d(torch.ones(1, 3, 300, 300, dtype=torch.float64), weight.square(), padding=3)[0]
    got = conv_norms.conv2d_unit_norms_sq(weight, geometry, channels_last=channels_last)
    torch.testing.assert_close(got, expected)
    assert got.permute(1, 2, 0).is_contiguous() if channels_last else got.is_contiguous()


BAD_INPUTS = [
    ({"x": torch.rand(3, 5, 5)}, ValueError, "x must be 4-D"),
    ({"weight": torch.rand(4, 2, 3)}, ValueError, "weight must be 4-D"),
    ({"x": torch.rand(2, 3, 5, 5)}, ValueError, "x has 3 channels"),
    ({"groups": 3}, ValueError, "groups = 3 must divide"),
    ({"groups": 0}, ValueError, "groups must be >= 1"),
    ({"groups": 1.0}, TypeError, "groups must be an int"),
    ({"weight": torch.rand(4, 2, 7, 3)}, ValueError, "kernel spans 7 pixels in height"),
    ({"padding": "same", "stride": 2}, ValueError, 'padding="same" needs stride 1'),
    ({"padding": "full"}, ValueError, "padding must be one of"),
    ({"padding": -1}, ValueError, "padding must be >= 0"),
    ({"stride": (1, 0)}, ValueError, "stride must be >= 1"),
    ({"dilation": (1, 2, 3)}, TypeError, "dilation must be an int or a pair"),
    ({"bias": torch.rand(3)}, ValueError, "bias must have shape"),
    ({"weight": torch.rand(4, 2, 3, 3, dtype=torch.float64)}, TypeError, "weight has dtype"),
    ({"x": torch.ones(2, 2, 5, 5, dtype=torch.int64)}, TypeError, "x must be a floating-point tensor"),
    ({"activation": "gelu"}, ValueError, "activation must be one of"),
    ({"backend": "fast"}, ValueError, "backend must be one of"),
]


@pytest.mark.parametrize(("override", "error", "message"), BAD_INPUTS)
def test_bad_input_names_the_argument(override, error, message):
    args = {"x": torch.rand(2, 2, 5, 5), "weight": torch.rand(4, 2, 3, 3), "bias": torch.rand(4)}
    args.update(override)
    x, weight, bias = args.pop("x"), args.pop("weight"), args.pop("bias")
    with pytest.raises(error, match=message):
        fastcae.encode_conv2d(x, weight, bias, **args)


def test_penalty_conv2d_reductions():
    geometry = random_geometry(700)
    x, weight, bias = make_conv_inputs(geometry, seed=11)
    per_sample = fastcae.penalty_conv2d(x, weight, bias, reduction="none", **geometry["conv"])
    total = fastcae.penalty_conv2d(x, weight, bias, reduction="sum", **geometry["conv"])
    mean = fastcae.penalty_conv2d(x, weight, bias, **geometry["conv"])
    torch.testing.assert_close(total, per_sample.sum())
    torch.testing.assert_close(mean, per_sample.mean())


@pytest.mark.parametrize(("device", "backend"), FAST_TARGETS, ids=FAST_IDS)
@pytest.mark.parametrize("grads", ["both", "code", "penalty"])
def test_activate_op_backward_matches_its_closed_form(device, backend, grads):
    """The kernel ops under the conv penalty, against the closed form, including the
    unit-norm gradient dN = Σ_b g_p φ'² that reaches the kernel K through N."""
    from fastcae.ops.reference import activate_backward_closed_form

    gen = torch.Generator().manual_seed(12)
    preact = torch.randn(37, 300, generator=gen, dtype=torch.float64).to(device)
    norms = torch.rand(300, generator=gen, dtype=torch.float64).to(device)
    code, _ = activate.activate_torch(preact, norms, "tanh")
    grad_code = (
        torch.randn(37, 300, generator=gen, dtype=torch.float64).to(device) if grads != "penalty" else None
    )
    grad_penalty = torch.randn(37, generator=gen, dtype=torch.float64).to(device) if grads != "code" else None
    got = activate.KERNELS["triton" if backend == "triton" else "cpp"].backward_launch(
        grad_code, grad_penalty, code, norms, "tanh", [True, True]
    )
    want = activate_backward_closed_form(grad_code, grad_penalty, code, norms, "tanh", (True, True))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_contractive_conv2d_loads_an_nn_conv2d_state_dict():
    conv = torch.nn.Conv2d(4, 6, (3, 2), stride=2, padding=1, dilation=(1, 2), groups=2)
    layer = fastcae.nn.ContractiveConv2d(4, 6, (3, 2), stride=2, padding=1, dilation=(1, 2), groups=2)
    layer.load_state_dict(conv.state_dict())
    x = torch.rand(3, 4, 9, 8)
    code, penalty = layer(x)
    torch.testing.assert_close(code, torch.sigmoid(conv(x)))
    expected = fastcae.penalty_conv2d(
        x, conv.weight, conv.bias, stride=2, padding=1, dilation=(1, 2), groups=2, reduction="none"
    )
    torch.testing.assert_close(penalty, expected)


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_contractive_conv2d_rejects_padding_that_repeats_pixels(padding_mode):
    with pytest.raises(ValueError, match="padding_mode"):
        fastcae.nn.ContractiveConv2d(1, 2, 3, padding=1, padding_mode=padding_mode)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding"), [((8, 8), 3, 1, 1), ((9, 7), 3, 2, 1), ((10, 10), (4, 3), 2, 0)]
)
def test_conv_autoencoder_reconstructs_the_input_shape_and_learns(size, kernel, stride, padding):
    torch.manual_seed(0)
    model = fastcae.nn.ConvContractiveAutoencoder(2, 5, kernel, stride, padding, contractive_weight=0.1)
    x = torch.rand(16, 2, *size)
    assert model(x).reconstruction.shape == x.shape
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.loss(x)
    for _ in range(30):
        optimizer.zero_grad()
        model.loss(x).total.backward()
        optimizer.step()
    last = model.loss(x)
    assert last.total < first.total
    assert torch.isclose(first.total, first.reconstruction + 0.1 * first.contractive)


def test_a_geometry_first_seen_in_inference_mode_still_trains():
    # The tap masks are made once per geometry; made first under inference_mode, they
    # must still be usable (saved for backward) by a later differentiable call.
    x = torch.rand(2, 3, 11, 9, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    with torch.inference_mode():
        fastcae.penalty_conv2d(x, weight.detach(), stride=(2, 1), padding=(1, 2), backend="torch")
    fastcae.penalty_conv2d(x, weight, stride=(2, 1), padding=(1, 2), backend="torch").backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all()


# fastcae._C.conv2d_encode_cpu: a plain CPU call of the whole layer from C++
# (csrc/include/fastcae/conv_layer.h); None hands the call to the Python path.


def _cpu_call():
    from fastcae.ops import loading

    return loading.extension().conv2d_encode_cpu


def _python_path(*args, **kwargs):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fastcae.conv, "_cpu_call", lambda backend: None)
        return fastcae.encode_conv2d(*args, **kwargs)


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("seed", range(24))
def test_cpu_call_is_the_python_path_to_the_bit(seed, dtype):
    """Values and gradients, with and without autograd, over random layers."""
    geometry = random_geometry(900 + seed)
    x, weight, bias = make_conv_inputs(geometry, dtype=dtype, seed=seed, requires_grad=True)
    if seed % 3 == 1:
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    inputs = [t for t in (x, weight, bias) if t is not None]
    activation = ACTIVATION_NAMES[seed % len(ACTIVATION_NAMES)]
    conv = geometry["conv"]
    assert _cpu_call()(x, weight, bias, *conv.values(), activation) is not None  # a call it serves
    outputs = {}
    for path, encode in (("c++", fastcae.encode_conv2d), ("python", _python_path)):
        code, penalty = encode(x, weight, bias, activation=activation, **conv)
        gen = torch.Generator().manual_seed(seed)
        grad_code = torch.randn(code.shape, generator=gen, dtype=torch.float64).to(code.dtype)
        grad_penalty = torch.randn(penalty.shape, generator=gen, dtype=torch.float64).to(penalty.dtype)
        grads = torch.autograd.grad((code * grad_code).sum() + (penalty * grad_penalty).sum(), inputs)
        with torch.no_grad():
            outputs[path] = (code, penalty, *grads, *encode(x, weight, bias, activation=activation, **conv))
    for got, want in zip(outputs["c++"], outputs["python"], strict=True):
        assert torch.equal(got, want) and got.stride() == want.stride() and got.dtype == want.dtype


@needs_extension
def test_cpu_epilogue_node_double_backward_and_hooks():
    """The C++ autograd node of the epilogue: a differentiable backward where
    create_graph asks for one (gradgradcheck), saved-tensor hooks, and an in-place
    change to h after the call caught by autograd."""
    x, weight, bias = make_conv_inputs(TINY, seed=3, requires_grad=True)
    conv = TINY["conv"]

    def layer(x, weight, bias):
        code, penalty = fastcae.encode_conv2d(x, weight, bias, activation="tanh", backend="cpu", **conv)
        return code.sin(), penalty

    assert "Conv2dEpilogue" in layer(x, weight, bias)[1].grad_fn.name()
    assert torch.autograd.gradgradcheck(layer, (x, weight, bias))
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        code, penalty = fastcae.encode_conv2d(x, weight, bias, backend="cpu", **conv)
    assert any(t.data_ptr() == code.data_ptr() and t.shape == code.shape for t in packed)  # h, saved
    (code.sum() + penalty.sum()).backward()
    code, penalty = fastcae.encode_conv2d(x, weight, bias, backend="cpu", **conv)
    code.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (code.sum() + penalty.sum()).backward()


class _Logged(torch.Tensor):
    """A subclass with its own __torch_function__ (it must see F.conv2d)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return super().__torch_function__(func, types, args, kwargs or {})


@needs_extension
def test_cpu_call_declines_what_the_python_path_must_handle():
    args = {"x": torch.rand(2, 2, 5, 5), "weight": torch.rand(4, 2, 3, 3), "bias": torch.rand(4)}
    # The geometry of test_bad_input_names_the_argument, which BAD_INPUTS modify.
    geometry = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "activation": "sigmoid"}
    call = _cpu_call()

    def served(**override) -> bool:
        merged = {**args, **geometry, **override}
        return call(*(merged[k] for k in ("x", "weight", "bias", "stride", "padding", "dilation", "groups",
                                          "activation"))) is not None  # fmt: skip

    assert served() and served(bias=None) and served(padding="same") and served(stride=[2, 1])
    assert served(weight=torch.nn.Parameter(args["weight"])) and served(bias=args["bias"].requires_grad_())
    # Everything check_conv2d_args rejects (the Python path raises, naming the argument).
    for override, _, _ in BAD_INPUTS:
        if "backend" not in override:
            assert not served(**override), override
    for override in (
        {"stride": True}, {"stride": 2.0}, {"padding": (1,)}, {"dilation": [1, 0]}, {"groups": True},
        {"activation": b"sigmoid"}, {"x": torch.rand(2, 2, 0, 5)}, {"x": torch.rand(2, 2, 5, 5).tolist()},
        {"bias": torch.rand(4, dtype=torch.float64)}, {"weight": torch.rand(4, 2, 3, 3, device="meta")},
        {"x": torch.rand(2, 2, 5, 5).as_subclass(_Logged)},
    ):  # fmt: skip
        assert not served(**override), override
    # What surrounds the call: autocast, a torch.func transform, Python modes.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not served()
    seen = []
    torch.func.vmap(lambda x: seen.append(served(x=x[None])) or x)(args["x"])
    assert seen == [False]
    with torch.overrides.TorchFunctionMode():
        assert not served()
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        assert not served()
    # And the Python side: backends other than "cpu" / "auto", torch.compile, forward AD.
    assert fastcae.conv._cpu_call("cpu") is call and fastcae.conv._cpu_call("auto") is call
    assert fastcae.conv._cpu_call("torch") is None and fastcae.conv._cpu_call("naive") is None
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        assert fastcae.conv._cpu_call("cpu") is None
