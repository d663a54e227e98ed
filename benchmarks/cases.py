"""What the benchmark suite measures: the shape grid, the methods and the two modes.

A *problem* is one encoder layer at a shape (B, D, H), with a tied decoder for
the training step. A *method* turns a problem into a callable for a mode:

- "forward": compute the code h (B, H) and the per-sample penalty p (B,);
- "train":   forward, tied decoder logits h W + c, binary cross-entropy with
             logits + λ·mean(p), backward to W, b and c.

Every method is checked against a float64 evaluation of the closed form
before it is timed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

import fastcae
from fastcae._timing import time_call
from fastcae.ops.reference import encode_torch

LAMBDA = 0.1
ACTIVATION = "sigmoid"
QUICK = os.environ.get("FASTCAE_BENCH_QUICK", "") not in ("", "0")


@dataclass(frozen=True)
class Shape:
    batch: int
    in_features: int
    hidden: int

    @property
    def label(self) -> str:
        return f"({self.batch}, {self.in_features}, {self.hidden})"


def _scan(base: tuple[int, int, int], batches, in_features, hiddens) -> list[Shape]:
    """The base shape (first) plus one-at-a-time scans of B, D and H around it."""
    b0, d0, h0 = base
    shapes = [Shape(b0, d0, h0)]
    shapes += [Shape(b, d0, h0) for b in batches]
    shapes += [Shape(b0, d, h0) for d in in_features]
    shapes += [Shape(b0, d0, h) for h in hiddens]
    return shapes


def shape_grid(device: torch.device) -> list[Shape]:
    if QUICK:
        return [Shape(8, 16, 12), Shape(33, 20, 17)]
    if device.type == "cuda":
        # Scans around the issues' (4096, 784, 1024), plus their (8192, 4096, 4096).
        return [
            *_scan((4096, 784, 1024), batches=(256, 16384), in_features=(4096,), hiddens=(4096,)),
            Shape(8192, 4096, 4096),
        ]
    return _scan((256, 784, 1024), batches=(64, 1024), in_features=(196, 3136), hiddens=(256, 4096))


def dtype_grid(device: torch.device) -> list[torch.dtype]:
    return [torch.float32, torch.bfloat16] if device.type == "cuda" else [torch.float32]


@dataclass
class Problem:
    """Inputs of one benchmark: x (B, D) in [0, 1], tied weight W (H, D), biases b (H,), c (D,)."""

    shape: Shape
    dtype: torch.dtype
    device: torch.device
    x: Tensor
    weight: Tensor
    bias: Tensor
    decoder_bias: Tensor

    @classmethod
    def make(cls, shape: Shape, dtype: torch.dtype, device: torch.device, seed: int = 0) -> Problem:
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(shape.batch, shape.in_features, generator=gen)
        # nn.Linear-like scale keeps the sigmoid units out of saturation.
        weight = torch.randn(shape.hidden, shape.in_features, generator=gen) / shape.in_features**0.5
        bias = 0.1 * torch.randn(shape.hidden, generator=gen)
        decoder_bias = 0.1 * torch.randn(shape.in_features, generator=gen)

        def place(t: Tensor, grad: bool) -> Tensor:
            return t.to(device=device, dtype=dtype).requires_grad_(grad)

        return cls(
            shape,
            dtype,
            device,
            place(x, False),
            place(weight, True),
            place(bias, True),
            place(decoder_bias, True),
        )

    @property
    def parameters(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.weight, self.bias, self.decoder_bias

    def in_float64(self) -> Problem:
        def widen(t: Tensor) -> Tensor:
            return t.detach().to(torch.float64).requires_grad_(t.requires_grad)

        return Problem(
            self.shape,
            torch.float64,
            self.device,
            widen(self.x),
            widen(self.weight),
            widen(self.bias),
            widen(self.decoder_bias),
        )


EncodeFn = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def train_step(problem: Problem, encode: EncodeFn) -> tuple[Tensor, ...]:
    """One CAE step without the optimizer: returns the gradients of W, b and c."""
    for param in problem.parameters:
        param.grad = None
    code, penalty = encode(problem.x, problem.weight, problem.bias)
    logits = code @ problem.weight + problem.decoder_bias  # tied decoder
    reconstruction_loss = F.binary_cross_entropy_with_logits(logits.float(), problem.x.float())
    loss = reconstruction_loss + LAMBDA * penalty.mean()
    loss.backward()
    return tuple(param.grad for param in problem.parameters)


def plain_autoencoder_step(problem: Problem) -> tuple[Tensor, ...]:
    """The same step with no penalty at all: the floor of the training mode."""
    for param in problem.parameters:
        param.grad = None
    code = torch.sigmoid(F.linear(problem.x, problem.weight, problem.bias))
    logits = code @ problem.weight + problem.decoder_bias
    F.binary_cross_entropy_with_logits(logits.float(), problem.x.float()).backward()
    return tuple(param.grad for param in problem.parameters)


def encoder_floor(problem: Problem) -> tuple[Tensor, None]:
    """The encoder alone at its best: one addmm and an in-place sigmoid, no penalty."""
    with torch.no_grad():
        return torch.addmm(problem.bias, problem.x, problem.weight.t()).sigmoid_(), None


def naive_loop_encode(x: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """The literal baseline: torch.autograd.functional.jacobian, one sample at a time."""
    create_graph = torch.is_grad_enabled() and weight.requires_grad

    def encoder(sample: Tensor) -> Tensor:
        return torch.sigmoid(F.linear(sample, weight, bias))

    penalties = [
        torch.autograd.functional.jacobian(encoder, sample, create_graph=create_graph).float().pow(2).sum()
        for sample in x
    ]
    return encoder(x), torch.stack(penalties) if penalties else x.new_zeros(0)


@dataclass(frozen=True)
class Method:
    """One way to compute the penalty (or the floor without it).

    Attributes:
        name: short id used in test ids, tables and the plot.
        description: one line for BENCHMARKS.md.
        kind: "naive", "baseline", "floor" or "fastcae".
        unavailable: (device, dtype) -> reason it cannot run, or None.
        build: (problem, mode) -> a callable that runs one iteration and returns
            (h, p) for "forward" and the gradients of (W, b, c) for "train".
    """

    name: str
    description: str
    kind: str
    unavailable: Callable[[torch.device, torch.dtype], str | None]
    build: Callable[[Problem, str], Callable[[], tuple]]


def _runs_anywhere(device: torch.device, dtype: torch.dtype) -> str | None:
    return None


def _encode_method(encode: EncodeFn) -> Callable[[Problem, str], Callable[[], tuple]]:
    def build(problem: Problem, mode: str) -> Callable[[], tuple]:
        if mode == "forward":

            def forward() -> tuple:
                with torch.no_grad():
                    return encode(problem.x, problem.weight, problem.bias)

            return forward
        return lambda: train_step(problem, encode)

    return build


def _fastcae_backend(name: str) -> EncodeFn:
    def encode(x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
        return fastcae.encode(x, weight, bias, activation=ACTIVATION, backend=name)

    return encode


def _fastcae_unavailable(name: str) -> Callable[[torch.device, torch.dtype], str | None]:
    def unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
        if name == "auto":  # runs everywhere: the best fused backend, else "torch"
            return None
        reason = fastcae.backends().get(name, f"fastcae has no backend {name!r}")
        if reason is not None:
            return reason
        from fastcae.dispatch import BACKENDS

        backend = BACKENDS[name]
        if backend.device_types is not None and device.type not in backend.device_types:
            return f"runs on {'/'.join(sorted(backend.device_types))} tensors only"
        if dtype not in backend.dtypes:
            return f"does not take {str(dtype).removeprefix('torch.')} here"
        return None

    return unavailable


def fastcae_method(name: str) -> Method:
    """The method that runs ``fastcae.encode(..., backend=name)`` ("auto" included)."""
    return Method(
        f"fastcae-{name}",
        f'fastcae backend="{name}"',
        "fastcae",
        _fastcae_unavailable(name),
        _encode_method(_fastcae_backend(name)),
    )


_COMPILE_PROBE: dict[str, str | None] = {}


def _compile_unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    """torch.compile needs a C++ compiler on the CPU and Triton on CUDA; probe once."""
    if device.type not in _COMPILE_PROBE:
        if device.type == "cpu" and shutil.which(os.environ.get("CXX", "g++")) is None:
            _COMPILE_PROBE[device.type] = "no C++ compiler for Inductor's CPU code"
        else:
            try:
                torch.compile(lambda t: t.sigmoid() * 2)(torch.ones(4, device=device))
                _COMPILE_PROBE[device.type] = None
            except Exception as exc:  # report why, keep the rest of the suite running
                _COMPILE_PROBE[device.type] = f"torch.compile failed here: {type(exc).__name__}: {exc}"[:200]
    return _COMPILE_PROBE[device.type]


_COMPILED: dict[str, Callable] = {}


def _compiled(mode: str) -> Callable:
    """One compiled function per mode, shared by all shapes (as a user would hold it)."""
    if mode not in _COMPILED:
        if mode == "forward":
            _COMPILED[mode] = torch.compile(lambda x, w, b: encode_torch(x, w, b, ACTIVATION))
        else:

            def loss_fn(x: Tensor, weight: Tensor, bias: Tensor, decoder_bias: Tensor) -> Tensor:
                code, penalty = encode_torch(x, weight, bias, ACTIVATION)
                logits = code @ weight + decoder_bias
                return F.binary_cross_entropy_with_logits(logits.float(), x.float()) + LAMBDA * penalty.mean()

            _COMPILED[mode] = torch.compile(loss_fn)
    return _COMPILED[mode]


def _build_compiled(problem: Problem, mode: str) -> Callable[[], tuple]:
    fn = _compiled(mode)
    if mode == "forward":

        def forward() -> tuple:
            with torch.no_grad():
                return fn(problem.x, problem.weight, problem.bias)

        return forward

    def step() -> tuple:
        for param in problem.parameters:
            param.grad = None
        fn(problem.x, *problem.parameters).backward()
        return tuple(param.grad for param in problem.parameters)

    return step


def _build_floor(problem: Problem, mode: str) -> Callable[[], tuple]:
    if mode == "forward":
        return lambda: encoder_floor(problem)
    return lambda: plain_autoencoder_step(problem)


METHODS: list[Method] = [
    Method(
        "naive-loop",
        "true Jacobian by torch.autograd.functional.jacobian, sample by sample, then ‖J‖²_F",
        "naive",
        _runs_anywhere,
        _encode_method(naive_loop_encode),
    ),
    Method(
        "naive-vmap",
        'true Jacobian by torch.func.vmap(jacrev) (fastcae backend="naive"), then ‖J‖²_F',
        "naive",
        _runs_anywhere,
        _encode_method(_fastcae_backend("naive")),
    ),
    Method(
        "torch",
        'eager closed form Σ_j φ\'(z_j)² ‖W_j‖² (fastcae backend="torch")',
        "baseline",
        _runs_anywhere,
        _encode_method(_fastcae_backend("torch")),
    ),
    Method(
        "torch.compile",
        "torch.compile of the closed form (the whole loss in train mode)",
        "baseline",
        _compile_unavailable,
        _build_compiled,
    ),
    Method(
        "encoder-only",
        "floor: the encoder with no penalty, addmm + in-place sigmoid (train: a plain autoencoder step)",
        "floor",
        _runs_anywhere,
        _build_floor,
    ),
    *(fastcae_method(name) for name in ("cpu", "triton", "cuda")),
]
METHOD_NAMES = [m.name for m in METHODS]
METHODS_BY_NAME = {m.name: m for m in METHODS}
MODES = ["forward", "train"]


def naive_budget_skip(
    method: Method, problem: Problem, mode: str, budget_s: float, memory_budget: int
) -> str | None:
    """Why a naive method must be skipped at this problem, or None.

    Memory: the vmap Jacobian alone is B·H·D elements (and its graph in train
    mode several times that). Time: both naive methods cost linearly in B, so
    a probe on 2 samples, extrapolated, predicts the time of the check and the
    timed round together.
    """
    if method.kind != "naive":
        return None
    shape = problem.shape
    element_size = 4 if problem.dtype != torch.float64 else 8
    if method.name == "naive-vmap":
        copies = 3 if mode == "forward" else 8
        needed = shape.batch * shape.hidden * shape.in_features * element_size * copies
        if needed > memory_budget:
            return (
                f"needs ~{needed / 2**30:.1f} GiB for the (B, H, D) Jacobian, "
                f"budget {memory_budget / 2**30:.1f} GiB"
            )
    probe_batch = min(2, shape.batch)
    probe = Problem.make(Shape(probe_batch, shape.in_features, shape.hidden), problem.dtype, problem.device)
    run = method.build(probe, mode)
    run()
    per_sample = time_call(run, problem.device) / probe_batch
    predicted = 2 * per_sample * shape.batch
    if predicted > budget_s:
        return (
            f"predicted {predicted:.0f} s (probe on {probe_batch} samples) "
            f"exceeds the {budget_s:.0f} s budget"
        )
    return None
