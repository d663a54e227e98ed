"""The performance targets of the issues, measured in one process, each line as soon as it is measured.

    python -m benchmarks.targets [--out-dir benchmarks/results]   # CPU, float32, (256, 784, 1024)
    python -m benchmarks.targets --device cuda --jsonl t.jsonl     # the GPU goals

The methods are those of the benchmark suite (benchmarks/cases.py: METHODS,
plus ``fastcae_method("auto")``), with its activation (sigmoid), λ and training
step. Each method is called twice before any timing (torch.compile, Triton
autotuning, fastcae's "auto" choice and first-touch allocations happen there;
the first call's time is reported) and checked against the float64 closed form
(a method off by more than the benchmark gate is reported and not timed).
Timing is ``fastcae._timing.interleaved_medians``: every round runs each method
once, in a shuffled order, so drifting load hits them alike; on CUDA each call
is timed with CUDA events from an idle device, on the CPU with perf_counter.

Every line is printed (flushed) as soon as it is measured and, with --jsonl or
--out-dir, appended at once as one JSON record to the JSON-lines file (and the
line to the text file), so a run cut short keeps what it measured. A TARGET line
says the measured value, the goal, and met / NOT met; nothing here asserts.

CPU goals (float32, (256, 784, 1024)). On the CPU each target ratio comes from
its own interleaved run of just the two methods it compares, after the table of
all of them: on a 2-core machine with 2 MiB of L2 per core, a call's time depends
on which method ran just before it (a method whose threads split W the way the
previous call's did finds its half of W in its core's L2). In a pair both
methods have the same predecessors.
  forward with "cpu" ≤ 1.03× the encoder alone (addmm + in-place sigmoid), and
  faster than torch.compile of the closed form; a CAE training step with "cpu"
  ≤ 1.05× a plain autoencoder step, and ≥ 500× faster than with "naive".

GPU goals, at (B, D, H) = (4096, 784, 1024) and (8192, 4096, 4096), in bfloat16
and float32 (PyTorch's default precision, and TF32 via
torch.set_float32_matmul_precision("high")):
  forward (h and p) ≤ 1.05× the encoder alone at the same precision, for the
  backend "auto" picks (and for triton and cuda, each); a CAE training step
  (tied decoder, BCE with logits + λ·mean penalty, backward to W, b, c) ≤ 1.05×
  a plain autoencoder step; faster than the eager closed form and than
  torch.compile of it; ≥ 1.5× the eager closed form's step at (4096, 784, 1024)
  in bf16; ≥ 100× the naive Jacobian's step at (256, 784, 1024); peak extra
  memory of the penalty over the encoder alone O(B + H) (reported in floats per
  (B + H), goal ≤ 8); host overhead of one fastcae.encode call on a tiny problem
  ≤ 20 µs; "auto" picks the measured faster of triton and cuda.
Order: host overhead, the bf16 (4096, 784, 1024) problem, the naive step, the
rest, so the most telling lines come first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

import fastcae
from benchmarks.cases import (
    ACTIVATION,
    LAMBDA,
    METHODS_BY_NAME,
    QUICK,
    Method,
    Problem,
    Shape,
    fastcae_method,
    naive_budget_skip,
)
from benchmarks.measure import (
    device_name,
    device_slug,
    gate_tolerance,
    keep_freed_memory,
    peak_extra_memory,
    reference_result,
    relative_error,
)
from fastcae import _autotune
from fastcae._precision import cuda_fp32_uses_tf32
from fastcae._timing import interleaved_medians, synchronize

FLOOR = "encoder-only"  # forward: addmm + in-place sigmoid; train: the plain autoencoder step
BASELINES = ["torch", "torch.compile"]
NAIVE = "naive-vmap"
FUSED_CANDIDATES = ("triton", "cuda", "cpu")
WARMUP_CALLS = 2
HOST_OVERHEAD_CALLS = 50  # calls per timed sample of the host-overhead measurement


@dataclass(frozen=True)
class Setting:
    """One problem of the GPU goals: a shape, a dtype and, for float32, the matmul precision."""

    shape: Shape
    dtype: torch.dtype
    tf32: bool = False

    @property
    def label(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{self.shape.label} {dtype}{' TF32' if self.tf32 else ''}"


def gpu_shapes() -> tuple[Shape, Shape, Shape, Shape]:
    """(main, large, naive, tiny) of the GPU goals; small stand-ins under FASTCAE_BENCH_QUICK."""
    if QUICK:
        return Shape(64, 48, 40), Shape(96, 64, 80), Shape(16, 24, 20), Shape(8, 16, 16)
    return Shape(4096, 784, 1024), Shape(8192, 4096, 4096), Shape(256, 784, 1024), Shape(8, 16, 16)


def cpu_shape() -> Shape:
    return Shape(32, 48, 40) if QUICK else Shape(256, 784, 1024)


def gpu_settings() -> list[Setting]:
    main, large, _, _ = gpu_shapes()
    return [
        Setting(main, torch.bfloat16),
        Setting(main, torch.float32),
        Setting(main, torch.float32, tf32=True),
        Setting(large, torch.bfloat16),
        Setting(large, torch.float32),
        Setting(large, torch.float32, tf32=True),
    ]


@contextlib.contextmanager
def matmul_precision(tf32: bool) -> Iterator[None]:
    """TF32 float32 matmuls inside (through the legacy setter, which every torch and the
    kernels' readers understand); the previous setting restored on exit."""
    if not tf32:
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


class Report:
    """Prints each line at once and appends it (text) and its record (JSON lines) to the files."""

    def __init__(self, jsonl: Path | None = None, text: Path | None = None, device: str = "") -> None:
        self.jsonl, self.text, self.device = jsonl, text, device
        for path in (jsonl, text):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("")
        self.targets: list[dict] = []

    def line(self, text: str, **record: object) -> None:
        print(text, flush=True)
        if self.text is not None:
            with self.text.open("a") as out:
                out.write(text + "\n")
        if self.jsonl is not None:
            record = {"kind": record.pop("kind", "line"), "device": self.device, **record, "line": text}
            with self.jsonl.open("a") as out:
                out.write(json.dumps(record, default=str) + "\n")

    def target(self, description: str, value: float | None, goal: str, met: bool | None, **extra) -> None:
        if value is None:
            text = f"  TARGET {description}: not measured ({extra.get('why', 'no value')}; {goal})"
        else:
            outcome = "met" if met else "NOT met"
            text = f"  TARGET {description}: {value:.3f} ({goal}) -> {outcome}"
        record = {"description": description, "value": value, "goal": goal, "met": met, **extra}
        self.targets.append(record)
        self.line(text, kind="target", **record)


def method_named(name: str) -> Method:
    """A method of benchmarks.cases by name; "fastcae-<backend>" for any backend, "auto" included."""
    if name in METHODS_BY_NAME:
        return METHODS_BY_NAME[name]
    return fastcae_method(name.removeprefix("fastcae-"))


def fused_backends(device: torch.device, wanted: list[str] | None) -> list[str]:
    """The fused backends that run on ``device`` here (or those asked for)."""
    if wanted:
        return wanted
    found = []
    for name in FUSED_CANDIDATES:
        method = fastcae_method(name)
        if method.unavailable(device, torch.float32) is None:
            found.append(name)
    return found


def warm_up(
    problem: Problem, mode: str, names: list[str], report: Report, label: str, check: bool = True
) -> dict[str, Callable[[], tuple]]:
    """Build each method, call it WARMUP_CALLS times outside any timing, check it against float64.

    Returns the methods that ran and passed the gate. The first call's time (compile,
    autotune, first-touch) is reported, so cold costs are visible and never timed.
    """
    device = problem.device
    expected: dict[bool, tuple] = {}  # the float64 closed form, with and without the penalty

    def reference_for(floor: bool) -> tuple:
        if floor not in expected:
            expected[floor] = reference_result(problem, mode, floor=floor)
        return expected[floor]

    tolerance = gate_tolerance(problem.dtype, device)
    ready = {}
    for name in names:
        method = method_named(name)
        reason = method.unavailable(device, problem.dtype)
        if reason is not None:
            report.line(
                f"  {mode} {name}: unavailable ({reason})",
                kind="unavailable",
                problem=label,
                mode=mode,
                method=name,
                reason=reason,
            )
            continue
        try:
            run = method.build(problem, mode)
            start = time.perf_counter()
            result = run()
            synchronize(device)
            first_call = time.perf_counter() - start
            for _ in range(WARMUP_CALLS - 1):
                run()
            synchronize(device)
        except Exception as exc:  # report, keep measuring the others
            report.line(
                f"  {mode} {name}: FAILED in warm-up: {type(exc).__name__}: {exc}"[:400],
                kind="error",
                problem=label,
                mode=mode,
                method=name,
            )
            continue
        error = None
        if check:
            error = relative_error(result, reference_for(method.kind == "floor"))
            if not error <= tolerance:
                report.line(
                    f"  {mode} {name}: WRONG, relative error {error:.3g} > {tolerance:.1g}: not timed",
                    kind="wrong",
                    problem=label,
                    mode=mode,
                    method=name,
                    relative_error=error,
                )
                continue
        del result
        report.line(
            f"  {mode} {name}: ready, first call {first_call * 1e3:.1f} ms"
            + ("" if error is None else f", relative error {error:.1e}"),
            kind="warmup",
            problem=label,
            mode=mode,
            method=name,
            first_call_s=first_call,
            relative_error=error,
        )
        ready[name] = run
    return ready


def timed_table(
    runs: dict[str, Callable[[], tuple]],
    rounds: int,
    device: torch.device,
    report: Report,
    title: str,
    baseline: str,
    **record,
) -> dict[str, float]:
    """Median seconds per call of each method, interleaved; one line per method, fastest first."""
    if not runs:
        return {}
    medians = interleaved_medians(runs, rounds, device, warmup=0)
    report.line(f"{title} ({rounds} interleaved rounds, medians):", **record)
    reference = medians.get(baseline)
    for name, seconds in sorted(medians.items(), key=lambda item: item[1]):
        ratio = f"   {seconds / reference:6.3f}× {baseline}" if reference else ""
        report.line(
            f"  {name:20s} {seconds * 1e3:10.3f} ms{ratio}",
            kind="median",
            method=name,
            seconds=seconds,
            **record,
        )
    return medians


def ratio_target(
    report: Report, description: str, medians: dict, name: str, base: str, goal: str, ok
) -> None:
    """TARGET medians[name] / medians[base] (value < 1: name is faster)."""
    if name in medians and base in medians:
        value = medians[name] / medians[base]
        report.target(description, value, goal, bool(ok(value)))
    else:
        missing = ", ".join(m for m in (name, base) if m not in medians)
        report.target(description, None, goal, None, why=f"{missing} not measured")


# --- GPU ----------------------------------------------------------------------------------------


def measure_host_overhead(device: torch.device, fused: list[str], rounds: int, report: Report) -> None:
    """µs per fastcae.encode call where the GPU work is negligible: CUDA events around a loop
    of calls measure the host's launch time (the device waits for the host)."""
    _, _, _, tiny = gpu_shapes()
    problem = Problem.make(tiny, torch.float32, device)
    names = [f"fastcae-{b}" for b in ["auto", *fused]] + [FLOOR]
    runs = warm_up(problem, "forward", names, report, f"host overhead {tiny.label}")

    def loop(run):
        def calls():
            for _ in range(HOST_OVERHEAD_CALLS):
                run()

        return calls

    x, w, b = problem.x, problem.weight, problem.bias

    def encode_recording_graph():  # what a training step pays: autograd records the call
        return fastcae.encode(x, w, b, activation=ACTIVATION, backend="auto")

    encode_recording_graph()
    loops = {name: loop(run) for name, run in runs.items()}
    loops["fastcae-auto (autograd)"] = loop(encode_recording_graph)
    medians = interleaved_medians(loops, max(5, rounds // 2), device, warmup=1)
    report.line(f"host overhead per call at {tiny.label} float32 ({HOST_OVERHEAD_CALLS} calls per sample):")
    for name, seconds in sorted(medians.items(), key=lambda item: item[1]):
        per_call_us = seconds / HOST_OVERHEAD_CALLS * 1e6
        report.line(f"  {name:24s} {per_call_us:8.1f} µs", kind="host_overhead", method=name, us=per_call_us)
    for name in [f"fastcae-{b}" for b in ["auto", *fused]]:
        if name in medians:
            value = medians[name] / HOST_OVERHEAD_CALLS * 1e6
            report.target(
                f"host overhead of fastcae.encode, {name} (µs per call)", value, "goal ≤ 20", value <= 20
            )


def auto_choice_target(report: Report, label: str, mode: str, chosen: str | None, medians: dict) -> None:
    fused = {name: medians[f"fastcae-{name}"] for name in ("triton", "cuda") if f"fastcae-{name}" in medians}
    description = f"{mode} {label}: auto picks the faster of triton/cuda"
    if chosen is None or len(fused) < 2:
        report.target(
            description,
            None,
            "goal: its pick is the measured faster",
            None,
            why=f"auto chose {chosen or 'without timing'}; measured {sorted(fused)}",
        )
        return
    fastest = min(fused, key=fused.__getitem__)
    value = fused[chosen] / fused[fastest] if chosen in fused else float("inf")
    report.target(
        f"{description} (picked {chosen}, measured fastest {fastest}; time of pick / fastest)",
        value,
        "goal ≤ 1.02",
        value <= 1.02,
        chosen=chosen,
        fastest=fastest,
    )


def memory_targets(problem: Problem, label: str, fused: list[str], report: Report) -> None:
    """Peak extra memory of a forward beyond the encoder alone, in floats per (B + H)."""
    device = problem.device

    def forward_of(name: str) -> Callable[[], tuple]:
        return method_named(name).build(problem, "forward")

    floor = peak_extra_memory(forward_of(FLOOR), device)
    if floor is None:
        return
    shape = problem.shape
    unit = (shape.batch + shape.hidden) * 4
    for backend in ["auto", *fused]:
        name = f"fastcae-{backend}"
        if method_named(name).unavailable(device, problem.dtype) is not None:
            continue
        peak = peak_extra_memory(forward_of(name), device)
        extra = peak - floor
        report.line(
            f"  peak extra memory {label} forward {name}: {peak / 2**20:.2f} MiB vs encoder alone "
            f"{floor / 2**20:.2f} MiB: +{extra / 2**10:.1f} KiB",
            kind="memory",
            problem=label,
            method=name,
            peak_bytes=peak,
            floor_bytes=floor,
        )
        report.target(
            f"penalty's extra memory {label} {name} (floats per (B + H))",
            extra / unit,
            "goal ≤ 8: O(B + H), no B×H temporary",
            extra / unit <= 8,
            extra_bytes=extra,
        )


def measure_setting(
    setting: Setting, device: torch.device, fused: list[str], rounds: int, report: Report, compile_: bool
) -> None:
    label = setting.label
    main_shape = gpu_shapes()[0]
    with matmul_precision(setting.tf32):
        precision = "TF32" if setting.dtype == torch.float32 and cuda_fp32_uses_tf32() else "default"
        report.line(f"== {label} (float32 matmuls: {precision}) ==", kind="problem", problem=label)
        problem = Problem.make(setting.shape, setting.dtype, device)
        fastcae_names = [f"fastcae-{b}" for b in ["auto", *fused]]
        names = setting_methods(fused, compile_)
        for mode in ("forward", "train"):
            before = _autotune.choices()
            runs = warm_up(problem, mode, names, report, label)
            new_choices = [v for k, v in _autotune.choices().items() if k not in before]
            chosen = new_choices[-1] if new_choices else None
            floor_name = "encoder alone" if mode == "forward" else "plain AE step"
            medians = timed_table(
                runs, rounds, device, report, f"{mode} {label}", FLOOR, problem=label, mode=mode
            )
            for name in fastcae_names:
                ratio_target(
                    report,
                    f"{mode} {label} {name} / {floor_name}",
                    medians,
                    name,
                    FLOOR,
                    "goal ≤ 1.05",
                    lambda v: v <= 1.05,
                )
            for name in fastcae_names:
                for base in BASELINES:
                    goal, ok = "goal < 1: faster", (lambda v: v < 1)
                    if mode == "train" and base == "torch" and setting == Setting(main_shape, torch.bfloat16):
                        goal, ok = "goal ≤ 1/1.5 = 0.667: ≥ 1.5× faster", (lambda v: v <= 1 / 1.5)
                    ratio_target(report, f"{mode} {label} {name} / {base}", medians, name, base, goal, ok)
            auto_choice_target(report, label, mode, chosen, medians)
            del runs
        memory_targets(problem, label, fused, report)
        del problem
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_naive(device: torch.device, fused: list[str], report: Report) -> None:
    """The training step against the naive Jacobian's, 3 rounds."""
    _, _, shape, _ = gpu_shapes()
    problem = Problem.make(shape, torch.float32, device)
    label = f"{shape.label} float32"
    report.line(f"== naive Jacobian step, {label} ==", kind="problem", problem=label)
    budget = (
        torch.cuda.get_device_properties(device).total_memory // 3 if device.type == "cuda" else 8 * 2**30
    )
    skip = naive_budget_skip(method_named(NAIVE), problem, "train", 30.0, budget)
    if skip is not None:
        report.line(f"  {NAIVE}: skipped ({skip})", kind="unavailable", problem=label, method=NAIVE)
        return
    fastcae_names = [f"fastcae-{b}" for b in ["auto", *fused]]
    runs = warm_up(problem, "train", [NAIVE, *fastcae_names], report, label)
    medians = timed_table(runs, 3, device, report, f"train {label}", NAIVE, problem=label, mode="train")
    for name in fastcae_names:
        ratio_target(
            report,
            f"train {label} {NAIVE} / {name} (speedup)",
            medians,
            NAIVE,
            name,
            "goal ≥ 100",
            lambda v: v >= 100,
        )


def run_gpu_goals(args: argparse.Namespace, device: torch.device, report: Report) -> None:
    fused = fused_backends(device, args.backends)
    versions = f"torch {torch.__version__}"
    with contextlib.suppress(ImportError):
        import triton

        versions += f", triton {triton.__version__}"
    sms = (
        f", {torch.cuda.get_device_properties(device).multi_processor_count} SMs"
        if device.type == "cuda"
        else ""
    )
    report.line(
        f"{device_name(device)}{sms}; {versions}; fused backends {fused}; {args.rounds} rounds; "
        f"activation {ACTIVATION}, λ = {LAMBDA}",
        kind="header",
        fused=fused,
    )
    measure_host_overhead(device, fused, args.rounds, report)
    settings = gpu_settings()
    measure_setting(settings[0], device, fused, args.rounds, report, not args.no_compile)
    measure_naive(device, fused, report)
    for setting in settings[1:]:
        measure_setting(setting, device, fused, args.rounds, report, not args.no_compile)


def setting_methods(fused: list[str], compile_: bool) -> list[str]:
    """The methods timed at each setting of the GPU goals."""
    fastcae_names = [f"fastcae-{b}" for b in ["auto", *fused]]
    return [FLOOR, "torch", *(["torch.compile"] if compile_ else []), *fastcae_names]


def warm_gpu_goals(args: argparse.Namespace, device: torch.device) -> None:
    """Only the warm-up calls, in the order run_gpu_goals makes them, so torch.compile sees the
    same sequence of shapes and dtypes (same recompiles, same automatic-dynamic choices) and the
    Triton and Inductor caches on disk hold what the timed run will ask for."""
    fused = fused_backends(device, args.backends)
    report = Report()
    _, _, _, tiny = gpu_shapes()
    host = Problem.make(tiny, torch.float32, device)
    warm_up(
        host, "forward", [*(f"fastcae-{b}" for b in ["auto", *fused]), FLOOR], report, "host", check=False
    )
    for setting in gpu_settings():
        with matmul_precision(setting.tf32):
            problem = Problem.make(setting.shape, setting.dtype, device)
            report.line(f"warm {setting.label}", kind="problem")
            for mode in ("forward", "train"):
                names = setting_methods(fused, not args.no_compile)
                warm_up(problem, mode, names, report, setting.label, check=False)
            del problem


# --- CPU ----------------------------------------------------------------------------------------


def paired_ratio(runs: dict, name: str, base: str, rounds: int, device: torch.device) -> float:
    """median(name) / median(base) from an interleaved run of just these two."""
    medians = interleaved_medians({key: runs[key] for key in (name, base)}, rounds, device)
    return medians[name] / medians[base]


def run_cpu_goals(args: argparse.Namespace, device: torch.device, report: Report) -> None:
    shape = cpu_shape()
    problem = Problem.make(shape, torch.float32, device)
    label = f"{shape.label} float32"
    report.line(
        f"CPU {device_name(device)}, float32, (B, D, H) = {shape.label}, {args.rounds} interleaved rounds",
        kind="header",
    )
    compiled = [] if args.no_compile else ["torch.compile"]
    names = [FLOOR, "torch", *compiled, "fastcae-cpu"]
    pairs = {}

    forward = warm_up(problem, "forward", names, report, label)
    timed_table(
        forward,
        args.rounds,
        device,
        report,
        "forward (h and p), all methods interleaved",
        FLOOR,
        problem=label,
        mode="forward",
    )
    if {"fastcae-cpu", FLOOR} <= forward.keys():
        pairs["forward cpu / encoder-only"] = value = paired_ratio(
            forward, "fastcae-cpu", FLOOR, args.rounds, device
        )
        report.target("forward cpu / encoder-only (pair)", value, "goal ≤ 1.03", value <= 1.03)
    if {"fastcae-cpu", "torch.compile"} <= forward.keys():
        pairs["forward torch.compile / cpu"] = value = paired_ratio(
            forward, "torch.compile", "fastcae-cpu", args.rounds, device
        )
        report.target("forward torch.compile / cpu (pair)", value, "goal > 1", value > 1)

    train = warm_up(problem, "train", names, report, label)
    timed_table(
        train,
        args.rounds,
        device,
        report,
        "training step (forward + backward, tied decoder, BCE + 0.1·penalty), all methods interleaved",
        FLOOR,
        problem=label,
        mode="train",
    )
    if {"fastcae-cpu", FLOOR} <= train.keys():
        pairs["train cpu / plain AE step"] = value = paired_ratio(
            train, "fastcae-cpu", FLOOR, args.rounds, device
        )
        report.target("train cpu / plain AE step (pair)", value, "goal ≤ 1.05", value <= 1.05)

    naive = warm_up(problem, "train", [NAIVE, "fastcae-cpu"], report, label)
    medians = timed_table(
        naive,
        3,
        device,
        report,
        "training step vs the naive Jacobian",
        "fastcae-cpu",
        problem=label,
        mode="train",
    )
    if {NAIVE, "fastcae-cpu"} <= medians.keys():
        value = medians[NAIVE] / medians["fastcae-cpu"]
        report.target("train naive / cpu", value, "goal ≥ 500", value >= 500)

    def forward_with(name: str) -> Callable[[], tuple]:
        return method_named(name).build(problem, "forward")

    memory = {name: peak_extra_memory(forward_with(name), device) for name in (FLOOR, "fastcae-cpu", NAIVE)}
    if None not in memory.values():
        added_kib = (memory["fastcae-cpu"] - memory[FLOOR]) / 2**10
        # p (B,), ‖W_j‖² (H,) and the per-group penalties (B, ⌈H/256⌉) of the C++ kernel
        groups = -(-shape.hidden // 256)
        bound_kib = (shape.batch * (groups + 1) + shape.hidden) * 4 / 2**10
        report.line(
            f"peak extra memory of a forward: encoder-only {memory[FLOOR] / 2**20:.2f} MiB, "
            f"cpu {memory['fastcae-cpu'] / 2**20:.2f} MiB (the penalty adds {added_kib:.1f} KiB; "
            f"B(⌈H/256⌉ + 1) + H floats = {bound_kib:.1f} KiB), naive {memory[NAIVE] / 2**30:.2f} GiB",
            kind="memory",
            peak_bytes=memory,
        )
    report.line("pairs: " + json.dumps(pairs), kind="pairs", pairs=pairs)


# --- entry point --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--goals", choices=["cpu", "gpu"], help="which goals (default: those of the device)")
    parser.add_argument(
        "--rounds", type=int, help="interleaved rounds (default: 200 on the CPU, 25 on a GPU)"
    )
    parser.add_argument(
        "--out-dir", help="append <device>-targets.txt and <device>-targets.jsonl here as measured"
    )
    parser.add_argument("--jsonl", help="append one JSON record per measurement to this file as measured")
    parser.add_argument(
        "--backends",
        type=lambda s: [b for b in s.split(",") if b],
        help="fused backends to measure (default: those available on the device)",
    )
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out (quick checks)")
    parser.add_argument(
        "--warm-only",
        action="store_true",
        help="only the warm-up calls (compile caches), nothing timed or written",
    )
    args = parser.parse_args(argv)
    args.goals = args.goals or ("gpu" if args.device == "cuda" else "cpu")
    if args.rounds is None:
        args.rounds = 25 if args.goals == "gpu" else 200
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.warm_only:
        warm_gpu_goals(args, device)
        return
    jsonl = Path(args.jsonl) if args.jsonl else None
    text = None
    if args.out_dir:
        stem = Path(args.out_dir) / f"{device_slug(device)}-targets"
        text = stem.with_suffix(".txt")
        jsonl = jsonl or stem.with_suffix(".jsonl")
    report = Report(jsonl, text, device_name(device))
    allocator = keep_freed_memory()
    if allocator:
        report.line(f"CPU allocator: {allocator}", kind="header")
    start = time.perf_counter()
    if args.goals == "gpu":
        run_gpu_goals(args, device, report)
    else:
        run_cpu_goals(args, device, report)
    met = sum(1 for t in report.targets if t["met"])
    unmeasured = sum(1 for t in report.targets if t["met"] is None)
    report.line(
        f"done in {time.perf_counter() - start:.0f} s: {met} of {len(report.targets)} targets met, "
        f"{unmeasured} not measured",
        kind="done",
        met=met,
        total=len(report.targets),
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
