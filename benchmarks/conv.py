"""The convolutional layer's penalty: its problem, methods, and its targets.

    python -m benchmarks.conv [--device cpu] [--rounds 30] [--jsonl out.jsonl] [--batch 4]
                              [--shape B,C_in,size,C_out,kernel] [--naive-budget-gib 20]
                              [--layouts 8]

A problem is an image-autoencoder layer (default B = 64, 3×32×32 → 64×16×16,
3×3 kernel, stride 2, padding 1, sigmoid) with a tied transposed-conv decoder
for the training step. Methods:

- "conv-only": the floor. Forward: F.conv2d + in-place sigmoid, no penalty;
  train: the plain conv autoencoder step (no penalty).
- "fastcae-<backend>": fastcae.encode_conv2d (conv through ATen, the fused
  epilogue) and, for train, the same step plus λ·mean(p).
- "torch": the same with backend="torch" (the eager closed form).
- "naive": the true per-sample Jacobian (B, C_out·H_out·W_out, C_in·H_in·W_in)
  through torch.func, skipped where it would not fit the memory budget.

Every method is checked against the float64 closed form before it is timed.
The targets (CPU): forward ≤ 1.05× the floor, a training step ≤ 1.10× the
plain step; each ratio from its own interleaved run of the two methods
(fastcae._timing.interleaved_medians), every line printed as it is measured.
With --layouts K the run is repeated in K processes, each with its heap
shifted differently (a CPU step's ratio depends a few percent on where its
buffers land: benchmarks.measure.shift_heap), and each target is reported as
the median and range of the K ratios.
Nothing here asserts. tests in benchmarks/test_conv.py run the same methods
under pytest-benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

import fastcae
from benchmarks.cases import LAMBDA, QUICK
from benchmarks.measure import (
    across_heap_layouts,
    device_name,
    gate_tolerance,
    heap_offsets_kib,
    keep_freed_memory,
    peak_extra_memory,
    relative_error,
    shift_heap,
)
from fastcae._timing import interleaved_medians, synchronize

STRIDE, PADDING = 2, 1


@dataclass(frozen=True)
class ConvShape:
    batch: int
    in_channels: int
    size: int
    out_channels: int
    kernel: int

    @property
    def label(self) -> str:
        out = (self.size + 2 * PADDING - self.kernel) // STRIDE + 1
        return (
            f"B={self.batch}, {self.in_channels}×{self.size}×{self.size} → {self.out_channels}×{out}×{out}, "
            f"{self.kernel}×{self.kernel} stride {STRIDE}"
        )


def conv_shape() -> ConvShape:
    return ConvShape(4, 2, 9, 5, 3) if QUICK else ConvShape(64, 3, 32, 64, 3)


@dataclass
class ConvProblem:
    """x (B, C_in, S, S) in [0, 1], kernel K (C_out, C_in, k, k), biases b (C_out,), c (C_in,)."""

    shape: ConvShape
    x: Tensor
    weight: Tensor
    bias: Tensor
    decoder_bias: Tensor

    @classmethod
    def make(cls, shape: ConvShape, dtype: torch.dtype, device: torch.device, seed: int = 0) -> ConvProblem:
        gen = torch.Generator().manual_seed(seed)
        fan_in = shape.in_channels * shape.kernel**2
        tensors = (
            torch.rand(shape.batch, shape.in_channels, shape.size, shape.size, generator=gen),
            torch.randn(shape.out_channels, shape.in_channels, shape.kernel, shape.kernel, generator=gen)
            / fan_in**0.5,
            0.1 * torch.randn(shape.out_channels, generator=gen),
            0.1 * torch.randn(shape.in_channels, generator=gen),
        )
        x, weight, bias, decoder_bias = (t.to(device=device, dtype=dtype) for t in tensors)
        return cls(shape, x, weight.requires_grad_(), bias.requires_grad_(), decoder_bias.requires_grad_())

    @property
    def parameters(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.weight, self.bias, self.decoder_bias

    def in_float64(self) -> ConvProblem:
        def widen(t: Tensor) -> Tensor:
            return t.detach().to(torch.float64).requires_grad_(t.requires_grad)

        return ConvProblem(
            self.shape, *(widen(t) for t in (self.x, self.weight, self.bias, self.decoder_bias))
        )


def _decoder_logits(problem: ConvProblem, code: Tensor) -> Tensor:
    size = problem.x.shape[-1]
    output_padding = size - ((code.shape[-1] - 1) * STRIDE - 2 * PADDING + problem.shape.kernel)
    return F.conv_transpose2d(code, problem.weight, problem.decoder_bias, STRIDE, PADDING, output_padding)


def _step(problem: ConvProblem, code: Tensor, penalty: Tensor | None) -> tuple[Tensor, ...]:
    logits = _decoder_logits(problem, code)
    loss = F.binary_cross_entropy_with_logits(logits.float(), problem.x.float(), reduction="none")
    loss = loss.flatten(1).sum(1).mean()
    if penalty is not None:
        loss = loss + LAMBDA * penalty.mean()
    loss.backward()
    return tuple(p.grad for p in problem.parameters)


def _encode(problem: ConvProblem, backend: str) -> tuple[Tensor, Tensor]:
    return fastcae.encode_conv2d(
        problem.x, problem.weight, problem.bias, stride=STRIDE, padding=PADDING, backend=backend
    )


def build(problem: ConvProblem, method: str, mode: str) -> Callable[[], tuple]:
    """One iteration of ``method`` in ``mode``: (h, p) for "forward", the gradients
    of (K, b, c) for "train"."""

    def clear() -> None:
        for p in problem.parameters:
            p.grad = None

    if method == "conv-only":
        if mode == "forward":

            def floor() -> tuple:
                with torch.no_grad():
                    return F.conv2d(problem.x, problem.weight, problem.bias, STRIDE, PADDING).sigmoid_(), None

            return floor

        def plain_step() -> tuple:
            clear()
            code = torch.sigmoid(F.conv2d(problem.x, problem.weight, problem.bias, STRIDE, PADDING))
            return _step(problem, code, None)

        return plain_step
    backend = method.removeprefix("fastcae-")
    if mode == "forward":

        def forward() -> tuple:
            with torch.no_grad():
                return _encode(problem, backend)

        return forward

    def cae_step() -> tuple:
        clear()
        return _step(problem, *_encode(problem, backend))

    return cae_step


def reference(problem: ConvProblem, mode: str, floor: bool) -> tuple:
    """What a method must return, from the float64 closed form."""
    wide = problem.in_float64()
    return build(wide, "conv-only" if floor else "fastcae-torch", mode)()


def methods(device: torch.device) -> list[str]:
    fused = [
        f"fastcae-{name}"
        for name in ("cpu", "cuda", "triton")
        if fastcae.backends()[name] is None and (device.type == "cuda") == (name != "cpu")
    ]
    return ["conv-only", *fused, "torch", "naive"]


# Peak memory of the naive method per element of its (B, U, D) Jacobian, in elements
# of the dtype: measured 17 (forward) and 28 (training step) at B = 4, 3×32×32 → 64×16×16
# on the CPU (vmap(jacrev) keeps several Jacobian-sized temporaries).
NAIVE_COPIES = 32


def naive_fits(problem: ConvProblem, budget_bytes: int) -> bool:
    """Whether the naive method's peak memory, NAIVE_COPIES × its (B, U, D) Jacobian, fits the budget."""
    shape = problem.shape
    out = (shape.size + 2 * PADDING - shape.kernel) // STRIDE + 1
    units = shape.out_channels * out * out
    inputs = shape.in_channels * shape.size**2
    return NAIVE_COPIES * shape.batch * units * inputs * problem.x.element_size() <= budget_bytes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=10 if QUICK else 40)
    parser.add_argument("--jsonl", type=Path, default=None)
    parser.add_argument("--batch", type=int, default=None, help="B instead of the default")
    parser.add_argument(
        "--shape",
        default=None,
        help="B,C_in,size,C_out,kernel instead of the default (e.g. 64,64,16,128,3: the next layer)",
    )
    parser.add_argument(
        "--naive-budget-gib",
        type=float,
        default=4.0,
        help="memory the naive method may take (B = 4 at the default shape needs 26 GiB by the estimate)",
    )
    parser.add_argument(
        "--layouts",
        type=int,
        default=1,
        help="run in this many processes, each with its heap shifted differently, and report the "
        "targets' spread (CPU; see benchmarks.measure.shift_heap)",
    )
    parser.add_argument("--heap-offset-kib", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    def line(text: str, **record) -> None:
        print(text, flush=True)
        if args.jsonl is not None:
            with args.jsonl.open("a") as out:
                out.write(json.dumps({"line": text, **record}) + "\n")

    if args.layouts > 1:
        _targets_across_layouts(args, line)
        return
    allocator = keep_freed_memory()
    heap_shift = shift_heap(args.heap_offset_kib)  # held to the end of the run
    shape = conv_shape() if args.shape is None else ConvShape(*(int(n) for n in args.shape.split(",")))
    if args.batch is not None:
        shape = dataclasses.replace(shape, batch=args.batch)
    problem = ConvProblem.make(shape, torch.float32, device)
    line(
        f"conv penalty on {device_name(device)}, float32, {problem.shape.label}, torch {torch.__version__}"
        + (f"; {allocator}" if allocator else "")
        + (f"; heap shifted by {args.heap_offset_kib} KiB" if heap_shift is not None else "")
    )
    tolerance = gate_tolerance(torch.float32, device)
    for mode in ("forward", "train"):
        runs = {}
        for name in methods(device):
            if name == "naive" and not naive_fits(problem, args.naive_budget_gib * 2**30):
                budget = f"{args.naive_budget_gib:g} GiB"
                line(f"  {mode} naive: skipped (its estimated peak memory exceeds {budget})")
                continue
            run = build(problem, name, "forward" if mode == "forward" else "train")
            start = time.perf_counter()
            result = run()
            synchronize(device)
            first = time.perf_counter() - start
            error = relative_error(result, reference(problem, mode, floor=name == "conv-only"))
            if not error <= tolerance:
                line(f"  {mode} {name}: WRONG, relative error {error:.3g}: not timed", method=name, mode=mode)
                continue
            peak = peak_extra_memory(run, device)
            line(
                f"  {mode} {name}: first call {first * 1e3:.1f} ms, relative error {error:.1e}, "
                f"peak extra memory {peak / 2**20 if peak is not None else float('nan'):.1f} MiB",
                method=name,
                mode=mode,
                peak_bytes=peak,
            )
            runs[name] = run
        medians = interleaved_medians(runs, args.rounds, device)
        for name, seconds in sorted(medians.items(), key=lambda item: item[1]):
            ratio = seconds / medians["conv-only"]
            line(
                f"  {mode} {name:16s} {seconds * 1e3:9.3f} ms  {ratio:7.3f}× conv-only",
                mode=mode,
                method=name,
            )
        goal = 1.05 if mode == "forward" else 1.10
        for name in [n for n in runs if n.startswith("fastcae-") and n != "fastcae-torch"]:
            pair = interleaved_medians(
                {name: runs[name], "conv-only": runs["conv-only"]}, args.rounds, device
            )
            ratio = pair[name] / pair["conv-only"]
            outcome = "met" if ratio <= goal else "NOT met"
            line(
                f"  TARGET {mode} {name} / conv-only (paired run): {ratio:.3f} (goal ≤ {goal}) -> {outcome}",
                mode=mode,
                method=name,
                ratio=ratio,
                goal=goal,
            )


def _targets_across_layouts(args: argparse.Namespace, line: Callable[..., None]) -> None:
    """The targets' paired ratios from ``args.layouts`` runs of this benchmark, each in a
    fresh process with its heap shifted differently: every ratio, then median and range."""
    child_args = ["--device", args.device, "--rounds", str(args.rounds)]
    for flag, value in (("--shape", args.shape), ("--batch", args.batch)):
        if value is not None:
            child_args += [flag, str(value)]
    offsets = heap_offsets_kib(args.layouts)
    runs = across_heap_layouts("benchmarks.conv", child_args, offsets)
    line(f"{runs[0][0]['line']}; targets over {len(runs)} heap layouts (shifts {offsets} KiB)")
    ratios: dict[tuple[str, str], list[float]] = {}
    goals: dict[tuple[str, str], float] = {}
    for records in runs:
        for record in records:
            if "ratio" in record:
                key = (record["mode"], record["method"])
                ratios.setdefault(key, []).append(record["ratio"])
                goals[key] = record["goal"]
    for (mode, method), values in ratios.items():
        median, goal = statistics.median(values), goals[(mode, method)]
        outcome = "met" if median <= goal else "NOT met"
        line(
            f"  TARGET {mode} {method} / conv-only over {len(values)} heap layouts: median {median:.3f} "
            f"(range {min(values):.3f}-{max(values):.3f}; each: {', '.join(f'{v:.3f}' for v in values)}) "
            f"(goal ≤ {goal}) -> {outcome}",
            mode=mode,
            method=method,
            ratios=values,
            median=median,
            goal=goal,
        )


if __name__ == "__main__":
    main()
