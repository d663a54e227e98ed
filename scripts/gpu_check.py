#!/usr/bin/env python3
"""The GPU check: one command, done in 8 minutes, on a GPU machine lent for minutes.

    python3 scripts/gpu_check.py --out OUT      # or: make gpu-check OUT=OUT
    python3 scripts/gpu_check.py --plan         # the phases, their budgets and why each fits

Made for a machine with one recent GPU, ~16 cores, torch + triton + nvcc +
pytest (xdist, timeout, benchmark) + hypothesis + compute-sanitizer installed,
no network and no package index (nothing is installed; PIP_NO_INDEX=1). The
highest-value results come first; every phase is a subprocess (own process
group) with its own time limit: SIGTERM at the limit, SIGKILL GRACE_S later.
Each phase streams its output into its file in OUT as it runs, and summary.txt
gets one line per phase as soon as it ends (and a final line), so a phase that
is killed, or the whole command cut short, loses nothing already written.

Timeline (t = seconds from the start; budgets of the real run, see --plan):

  t=0     build        in the background: setup.py build_ext of fastcae._C with
                       its CUDA kernels for the local GPU's architecture only,
                       MAX_JOBS = cores, into build/gpu-check/ (not into fastcae/)
  t=0     env          environment report into summary.txt
  t≈10    triton-tests the GPU tests of the Triton backend (-m "gpu and not slow"
                       -k triton), pytest-xdist, niced under the build
  t≈10    warm         meanwhile, niced: the targets' warm-up calls only (Triton
                       autotune configs and torch.compile graphs into the disk
                       caches), stopped when the targets phase starts
  build and triton-tests done:
          backends     install the built module, check its cubins, fastcae.backends()
          cuda-tests   the other GPU tests (-k "not triton"): the cuda backend,
                       torch/naive on CUDA, cuda vs triton
          targets      benchmarks/targets.py --device cuda, lines as measured
          sanitizer    compute-sanitizer memcheck + racecheck at once, small calls
                       of each GPU backend, forward and backward
          bench        the benchmark grid, in what time is left

If the build fails, the Triton phases run anyway and cuda-tests says
"skipped: build failed". A phase is not started with less than its minimum
left; the run ends by --total (480 s). OUT holds at most 8 files:

  summary.txt        env report, one line per phase (tallies, failing tests, TARGET lines), final line
  build.log          the build, then the cubin check
  tests.log          both test phases (pytest -v: one line per test as it ends)
  targets.log        the targets' output as measured
  targets.jsonl      one JSON record per measurement, appended as measured
  sanitizer.log      both tools' output, prefixed [memcheck] / [racecheck]
  bench.log          the benchmark grid's output
  artifacts.tar.gz   JUnit XML of each test phase, the warm-up log, the benchmark
                     grid's .md/.json/.png, the plan; rewritten after every phase

For the CPU test of this script (tests/test_gpu_check.py): --fake PHASE=CMD
replaces a phase's command by a shell command, --fake-all CMD every other one,
--time-scale F multiplies every budget, minimum and the total.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOTAL_S = 480.0
GRACE_S = 3.0  # SIGTERM -> SIGKILL
OUT_FILES = (
    "summary.txt",
    "build.log",
    "tests.log",
    "targets.log",
    "targets.jsonl",
    "sanitizer.log",
    "bench.log",
    "artifacts.tar.gz",
)


@dataclass(frozen=True)
class Phase:
    """One phase. ``budget``: its time limit (s); ``minimum``: not started with less left."""

    name: str
    budget: float
    minimum: float
    starts: str
    why: str
    log: str  # file in OUT (or in the work folder if it starts with "work/")
    kind: str = (
        "fixed"  # fixed | background | elastic (may use time bench would get) | leftover | opportunistic
    )


PHASES: list[Phase] = [
    Phase(
        "env",
        15,
        3,
        "t=0 (the build starts first)",
        "nvidia-smi twice, one Python that imports torch/triton/fastcae: ~5 s",
        "summary.txt",
    ),
    Phase(
        "build",
        270,
        60,
        "t=0, in the background",
        "one nvcc job per .cu with torch headers takes ~2-4 min at -O3 for ONE architecture; all sources "
        "compile at once (MAX_JOBS = cores; a process pool if ninja is missing), so the build takes about "
        "its slowest .cu; the test phases run niced under it",
        "build.log",
        "background",
    ),
    Phase(
        "triton-tests",
        200,
        30,
        "after env, beside the build",
        "~450 GPU tests of the Triton backend (the CPU suite's 443 Triton cases on CUDA, bf16/fp16 "
        "included, and tests/test_gpu.py's) need ~250-450 kernel compiles (forward GEMM per activation, "
        "dtype, bias and alignment; the elementwise kernels) at 0.3-3.7 s each: ~100-1,700 CPU-s over 12 "
        "xdist workers grouped by (activation, dtype), so a variant compiles in one worker: ~15 s start-up "
        "+ ~10-140 s of compiles; the two-process and two-thread autotune tests (~30-60 s) and the 2^31 "
        "test (~10 s) run in their own workers meanwhile; hypothesis at 10 examples",
        "tests.log",
    ),
    Phase(
        "warm",
        0,
        15,
        "after env, beside the tests (stopped when targets start)",
        "opportunistic (nice 19): the targets' warm-up calls fill the Triton and Inductor disk caches "
        "while the build runs, so the targets phase loads instead of compiling (cold: 4 forward autotune "
        "configs x 3 dtype/precision variants + the elementwise kernels, and 12 Inductor graphs at "
        "~5-20 s each: 1-4 min); no budget of its own",
        "work/warm.log",
        "opportunistic",
    ),
    Phase(
        "backends",
        15,
        5,
        "when the build and triton-tests are done",
        "copy one file, read its fatbin, import fastcae: ~5 s",
        "summary.txt",
    ),
    Phase(
        "cuda-tests",
        60,
        20,
        "after backends",
        "~1,000 GPU tests (the CPU suite's 322 torch, 286 naive and ~380 extension cases on CUDA, "
        "auto, cuda vs triton), no Triton compile left (disk cache), ~10-50 ms each: ~15 s start-up "
        "+ ~30 s over 8 workers; a few torch.compile tests ~10 s each",
        "tests.log",
    ),
    Phase(
        "targets",
        90,
        30,
        "after cuda-tests",
        "6 problems x 2 modes x ~6 methods, 25 interleaved rounds: ~25 s of timed calls (largest: fp32 "
        "train at (8192, 4096, 4096), ~50 ms a call) + warm-up from the caches warm filled (~30-50 s) + "
        "float64 gates; most telling lines first; may run on into time bench would get",
        "targets.log",
        "elastic",
    ),
    Phase(
        "sanitizer",
        45,
        20,
        "after targets",
        "memcheck and racecheck run at once, each one Python (torch import + CUDA init under the tool "
        "~10-20 s) making 2 small calls per backend from cached kernels",
        "sanitizer.log",
    ),
    Phase(
        "bench",
        0,
        30,
        "last, in what is left",
        "the grid is long (192 cases); it runs until the total is reached, its lines streamed",
        "bench.log",
        "leftover",
    ),
]
PHASE_NAMES = [p.name for p in PHASES]


def critical_path(phases: list[Phase]) -> float:
    """Worst-case end of the last bounded phase: the build's budget (env and triton-tests run
    beside it, and must fit within it) plus everything that waits for it."""
    by_name = {p.name: p for p in phases}
    beside = by_name["env"].budget + by_name["triton-tests"].budget
    after = sum(by_name[n].budget for n in ("backends", "cuda-tests", "targets", "sanitizer"))
    return max(by_name["build"].budget, beside) + after


def seconds(value: float) -> str:
    """Seconds as the summary shows them (tenths for the scaled-down runs of the CPU test)."""
    return f"{value:.0f}s" if abs(value) >= 20 else f"{value:.1f}s"


def plan_text(phases: list[Phase], total: float) -> str:
    lines = [f"GPU check plan: done by t={total:.0f} s. Phases in order (budget = time limit):", ""]
    lines.append(f"  {'phase':13s} {'budget':>8s} {'min':>5s}  starts")
    for phase in phases:
        budget = {"opportunistic": "(spare)", "leftover": "(rest)"}.get(phase.kind, f"{phase.budget:.0f} s")
        lines.append(f"  {phase.name:13s} {budget:>8s} {phase.minimum:4.0f}s  {phase.starts}")
        lines += textwrap.wrap(
            f"why it fits: {phase.why}", 100, initial_indent=" " * 16, subsequent_indent=" " * 16
        )
    by_name = {p.name: p for p in phases}
    beside = by_name["env"].budget + by_name["triton-tests"].budget
    lines += [
        "",
        f"  beside the build: env {by_name['env'].budget:.0f} + triton-tests "
        f"{by_name['triton-tests'].budget:.0f} = {beside:.0f} s <= build {by_name['build'].budget:.0f} s",
        "  after the build: "
        + " + ".join(
            f"{n} {by_name[n].budget:.0f}" for n in ("backends", "cuda-tests", "targets", "sanitizer")
        ),
        f"total: {critical_path(phases):.0f} s (worst case; bench gets what the others leave, "
        "typically 60-150 s)",
    ]
    return "\n".join(lines)


# --- running phases -----------------------------------------------------------------------------


class Clock:
    def __init__(self, total: float) -> None:
        self.start = time.monotonic()
        self.total = total

    def now(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.total - self.now()


@dataclass
class Outcome:
    status: str  # ok | failed | killed | skipped
    detail: str = ""
    elapsed: float = 0.0
    limit: float = 0.0
    code: int | None = None


def stop_group(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM to the phase's process group, SIGKILL after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.scale = args.time_scale
        self.clock = Clock(args.total * self.scale)
        self.grace = max(0.2, GRACE_S * self.scale)
        self.out = Path(args.out).resolve()
        self.work = Path(tempfile.mkdtemp(prefix="fastcae-gpu-check-"))
        self.summary = self.out / "summary.txt"
        self.fakes = dict(args.fake or [])
        self.results: dict[str, Outcome] = {}
        self.running: dict[
            str, tuple
        ] = {}  # name -> (process, log file, deadline, start), times from the clock
        self.archs: list[str] = []
        self.env = self._environment()

    # paths and environment

    def log_path(self, phase: Phase) -> Path:
        if phase.log.startswith("work/"):
            return self.work / phase.log.removeprefix("work/")
        return self.out / phase.log

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        cache = ROOT / "build" / "gpu-check"
        env.update(PYTHONUNBUFFERED="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env.setdefault("TRITON_CACHE_DIR", str(cache / "triton-cache"))
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache / "inductor-cache"))
        env.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
        env.pop("TRITON_INTERPRET", None)
        return env

    def note(self, text: str) -> None:
        print(text, flush=True)
        with self.summary.open("a") as summary:
            summary.write(text + "\n")

    # the phases' commands

    def command(self, phase: Phase) -> list[str] | str:
        if phase.name in self.fakes:
            return self.fakes[phase.name]
        if self.args.fake_all is not None:
            return self.args.fake_all
        python = [sys.executable]
        steps = [*python, str(ROOT / "scripts" / "gpu_steps.py")]
        # the build keeps priority; the warm-up only takes what nothing else wants
        nice = ["nice", "-n", "10"] if shutil.which("nice") else []
        nicest = ["nice", "-n", "19"] if shutil.which("nice") else []
        if phase.name == "env":
            return [*steps, "env"]
        if phase.name == "build":
            return [*steps, "build", "--build-dir", str(ROOT / "build" / "gpu-check")]
        if phase.name == "backends":
            return [*steps, "backends", *self.archs]
        if phase.name == "triton-tests":
            return [*nice, *self.pytest_command("triton", "triton", workers=max(2, min(12, self.cores - 4)))]
        if phase.name == "cuda-tests":
            return self.pytest_command("not triton", "cuda", workers=max(2, min(8, self.cores // 2)))
        if phase.name == "warm":
            return [*nicest, *python, "-m", "benchmarks.targets", "--device", "cuda", "--warm-only"]
        if phase.name == "targets":
            return [
                *python,
                "-m",
                "benchmarks.targets",
                "--device",
                "cuda",
                "--jsonl",
                str(self.out / "targets.jsonl"),
            ]
        if phase.name == "sanitizer":
            return [*steps, "sanitize"]
        if phase.name == "bench":
            return [*python, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", "-rfE"]
        raise ValueError(phase.name)

    def pytest_command(self, keyword: str, tag: str, workers: int) -> list[str]:
        command = [sys.executable, "-m", "pytest", "tests", "-m", "gpu and not slow", "-k", keyword]
        command += ["-p", "no:cacheprovider", "-v", "-rfE", "--tb=short", "--durations=15"]
        command += [f"--junitxml={self.work / f'tests-{tag}.xml'}", "--hypothesis-profile=gpu-check"]
        if importlib.util.find_spec("xdist") is not None:
            command += ["-n", str(workers), "--dist", "loadgroup", "--max-worker-restart", "4"]
        if importlib.util.find_spec("pytest_timeout") is not None:
            command += ["--timeout", "180"]
            if importlib.util.find_spec("xdist") is not None:
                command += ["--timeout-method", "thread"]  # a hung GPU call: that worker restarts
        return command

    @property
    def cores(self) -> int:
        return os.cpu_count() or 1

    # starting, waiting, stopping

    def limit(self, phase: Phase) -> float:
        """The time limit a phase gets if started now."""
        left = self.clock.left() - self.grace
        if phase.kind == "leftover":
            return left
        if phase.kind == "elastic":
            later = PHASE_NAMES[PHASE_NAMES.index(phase.name) + 1 :]
            reserved = sum(self.budget(p) for p in PHASES if p.name in later and p.kind == "fixed")
            return min(left, max(self.budget(phase), left - reserved))
        return min(self.budget(phase), left)

    def budget(self, phase: Phase) -> float:
        if self.scale == 1:
            return phase.budget
        return max(phase.budget * self.scale, 1.0)  # scaled down (CPU test): room for a process to start

    def start(self, phase: Phase, limit: float | None = None, extra_env: dict | None = None) -> bool:
        """Start a phase in its own process group; False (and a summary line) if it cannot start."""
        limit = self.limit(phase) if limit is None else limit
        minimum = phase.minimum * self.scale
        if limit < minimum:
            self.finish(
                phase, Outcome("skipped", f"only {seconds(max(limit, 0))} left (minimum {seconds(minimum)})")
            )
            return False
        command = self.command(phase)
        log = self.log_path(phase).open("a")
        shown = command if isinstance(command, str) else " ".join(command)
        log.write(
            f"==== {phase.name}: started at t={seconds(self.clock.now())}, limit {seconds(limit)}: {shown}\n"
        )
        log.flush()
        env = dict(self.env, **(extra_env or {}))
        process = subprocess.Popen(
            command,
            shell=isinstance(command, str),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.running[phase.name] = (process, log, self.clock.now() + limit, self.clock.now())
        print(
            f"[t={seconds(self.clock.now()):>5s}] {phase.name} started (limit {seconds(limit)})", flush=True
        )
        return True

    def wait(self, name: str, stop_early: bool = False) -> Outcome | None:
        """Wait for a started phase until it ends or reaches its limit (stop_early: stop it now)."""
        if name not in self.running:
            return self.results.get(name)
        process, log, deadline, started = self.running.pop(name)
        killed = False
        try:
            process.wait(timeout=0 if stop_early else max(0.0, deadline - self.clock.now()))
        except subprocess.TimeoutExpired:
            stop_group(process, self.grace)
            killed = True
        elapsed = self.clock.now() - started
        limit = deadline - started
        status = "stopped" if killed else f"exit {process.returncode}"
        newline = "" if ends_with_newline(Path(log.name)) else "\n"
        log.write(f"{newline}==== {name}: {status} after {seconds(elapsed)}\n")
        log.close()
        if killed and stop_early:
            outcome = Outcome("stopped", "its spare time ended", elapsed, limit, process.returncode)
        elif killed:
            outcome = Outcome(
                "killed", f"at its limit of {seconds(limit)}", elapsed, limit, process.returncode
            )
        elif process.returncode == 0:
            outcome = Outcome("ok", "", elapsed, limit, 0)
        else:
            outcome = Outcome("failed", f"exit {process.returncode}", elapsed, limit, process.returncode)
        self.finish(PHASES[PHASE_NAMES.index(name)], outcome)
        return outcome

    def run(self, phase: Phase, **kwargs) -> Outcome | None:
        if self.start(phase, **kwargs):
            return self.wait(phase.name)
        return self.results[phase.name]

    def finish(self, phase: Phase, outcome: Outcome) -> None:
        self.results[phase.name] = outcome
        timing = (
            f"{seconds(outcome.elapsed)} of {seconds(outcome.limit)}" if outcome.status != "skipped" else ""
        )
        status = outcome.status.upper() if outcome.status != "ok" else "ok"
        line = (
            f"[t={seconds(self.clock.now()):>5s}] {phase.name:13s} {status:8s} {timing:14s} {outcome.detail}"
        )
        self.note(line.rstrip())
        for line in details(phase, self.log_path(phase), self.work):
            self.note(f"    {line}")
        self.pack()

    def skip(self, name: str, why: str) -> None:
        self.finish(PHASES[PHASE_NAMES.index(name)], Outcome("skipped", why))

    def stop_all(self) -> None:
        for name in list(self.running):
            self.wait(name, stop_early=True)

    def pack(self) -> None:
        """artifacts.tar.gz from the work folder, replaced atomically."""
        partial = self.out / ".artifacts.tar.gz.partial"
        with tarfile.open(partial, "w:gz") as tar:
            for path in sorted(self.work.rglob("*")):
                if path.is_file():
                    tar.add(path, arcname=str(path.relative_to(self.work)))
        os.replace(partial, self.out / "artifacts.tar.gz")

    # the whole check

    def prepare(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for name in OUT_FILES:
            (self.out / name).unlink(missing_ok=True)
        self.summary.write_text("")
        (self.work / "plan.txt").write_text(plan_text(PHASES, self.clock.total) + "\n")
        self.archs = detect_archs() if self.args.fake_all is None else []
        if self.archs:
            self.env["TORCH_CUDA_ARCH_LIST"] = ";".join(self.archs)
        self.env["FASTCAE_BENCH_OUT"] = str(self.work / "bench")
        self.env["FASTCAE_BENCH_SECONDS"] = "0.2"
        kernels = ROOT / "fastcae" / "kernels"
        if self.args.fake_all is None and not kernels.exists():  # what the install's package_dir maps
            kernels.symlink_to(Path("..") / "kernels")
            self.note("linked fastcae/kernels -> ../kernels (fastcae is not installed here)")

    def check(self) -> int:
        self.prepare()
        phases = {p.name: p for p in PHASES}
        self.note(f"fastcae GPU check in {ROOT}, total {seconds(self.clock.total)}; results in {self.out}")
        self.note("== environment ==")
        build_limit = min(self.budget(phases["build"]), self.clock.left() - self.grace)
        build_started = self.start(phases["build"], limit=build_limit)
        self.run(phases["env"])
        self.note("== phases ==")
        self.start(phases["warm"], limit=max(0.0, self.clock.left() - self.grace))
        self.run(phases["triton-tests"])
        build = self.wait("build") if build_started else self.results["build"]
        built = build.status == "ok" and self.install()
        self.run(phases["backends"])
        if built:
            self.run(phases["cuda-tests"])
        elif build.status == "ok":
            self.skip("cuda-tests", "build failed: it made no fastcae/_C*.so")
        else:
            self.skip(
                "cuda-tests", f"build failed ({build.status}{': ' + build.detail if build.detail else ''})"
            )
        self.wait("warm", stop_early=True)
        self.run(phases["targets"])
        self.run(phases["sanitizer"])
        self.run(phases["bench"])
        return self.final()

    def install(self) -> bool:
        """Put the built module into fastcae/ (after the Triton phase: its workers saw one fastcae)."""
        if "build" in self.fakes or self.args.fake_all is not None:
            return True
        built = sorted((ROOT / "build" / "gpu-check" / "lib" / "fastcae").glob("_C*.so"))
        if not built:
            self.note("    install: no fastcae/_C*.so in build/gpu-check/lib")
            return False
        partial = ROOT / "fastcae" / (built[-1].name + ".partial")
        shutil.copy2(built[-1], partial)
        os.replace(partial, ROOT / "fastcae" / built[-1].name)
        self.note(f"    installed {built[-1].name} into fastcae/")
        return True

    def final(self) -> int:
        counts = {}
        for outcome in self.results.values():
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
        tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        bad = [
            n
            for n, o in self.results.items()
            if o.status in ("failed", "killed") and n not in ("warm", "bench")
        ]
        verdict = "ALL PHASES OK" if not bad else f"ATTENTION: {', '.join(bad)}"
        files = len(list(self.out.iterdir()))
        self.note(f"== done at t={seconds(self.clock.now())}: {tally}; {verdict}; {files} files in OUT")
        self.pack()
        shutil.rmtree(self.work, ignore_errors=True)
        return 0 if not bad else 1


def ends_with_newline(path: Path) -> bool:
    with path.open("rb") as file:
        if file.seek(0, os.SEEK_END) == 0:
            return True
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"


def detect_archs() -> list[str]:
    """Compute capabilities of the visible GPUs ("9.0"), from nvidia-smi (no CUDA context)."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return sorted(
        {line.strip() for line in done.stdout.splitlines() if re.fullmatch(r"\d+\.\d+", line.strip())}
    )


# --- what each phase adds to summary.txt ----------------------------------------------------------

RESULT_WORD = re.compile(r"\b(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")


def _phase_section(log: Path, name: str) -> list[str]:
    """The lines a phase wrote into a shared log (between its start and end markers)."""
    if not log.exists():
        return []
    lines, inside = [], False
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(f"==== {name}: started"):
            inside, lines = True, []
        elif line.startswith(f"==== {name}:"):
            inside = False
        elif inside:
            lines.append(line)
    return lines


def test_tally(lines: list[str], junit: Path) -> list[str]:
    out = []
    if junit.exists():
        with contextlib.suppress(ElementTree.ParseError):
            root = ElementTree.parse(junit).getroot()
            suite = root if root.tag == "testsuite" else root.find("testsuite")
            if suite is not None:
                keys = ("tests", "failures", "errors", "skipped")
                out.append(
                    "junit: "
                    + ", ".join(f"{k} {suite.get(k, '?')}" for k in keys)
                    + f", {suite.get('time')} s"
                )
    counts: dict[str, int] = {}
    failing = []
    out += [line.strip() for line in lines if re.search(r"workers \[\d+ items?\]|^collected \d+", line)][:1]
    for line in lines:
        if line.startswith(("FAILED ", "ERROR ")):  # the -rfE short summary
            failing.append(line)
            continue
        match = RESULT_WORD.search(line)
        if match and "::" in line:
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    if counts:
        out.append("results in the log: " + ", ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items())))
    tail = [line for line in lines[-3:] if re.search(r"\d+ (passed|failed|error)", line)]
    out += tail
    if not failing:  # killed before the short summary: failures from the per-test lines
        failing = [line.strip() for line in lines if re.search(r"\b(FAILED|ERROR)\b", line) and "::" in line]
    out += failing[:40] + ([f"... and {len(failing) - 40} more"] if len(failing) > 40 else [])
    return out


def details(phase: Phase, log: Path, work: Path) -> list[str]:
    """The lines of a phase's output worth having in summary.txt."""
    if phase.log == "summary.txt":
        return []
    lines = _phase_section(log, phase.name)
    if phase.name.endswith("-tests"):
        return test_tally(lines, work / f"tests-{phase.name.removesuffix('-tests')}.xml")
    if phase.name == "targets":
        goals = [line.strip() for line in lines if "TARGET " in line or line.startswith("done in")]
        failed = [line.strip() for line in lines if "FAILED in warm-up" in line or "WRONG" in line]
        return goals + failed + ([] if goals else lines[-5:])
    if phase.name == "sanitizer":
        keys = ("ERROR SUMMARY", "RACECHECK SUMMARY", "result:", "driver: done", "FAILED", "not found")
        return [line for line in lines if any(k in line for k in keys)][:20] or lines[-5:]
    if phase.name == "bench":
        start = next((i for i, line in enumerate(lines) if "fastcae benchmark summary" in line), None)
        timed = sum(1 for line in lines if " median " in line)
        return [f"{timed} benchmarks timed"] + (
            lines[start : start + 60] if start is not None else lines[-3:]
        )
    if phase.name == "build":
        return [line for line in lines if line.startswith("build:")][-3:] + lines[-5:]
    return lines[-5:]


# --- entry point --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", help="output folder (or --out)")
    parser.add_argument("--out", dest="out_option", help="output folder")
    parser.add_argument(
        "--plan", action="store_true", help="print the phases with their budgets, run nothing"
    )
    parser.add_argument(
        "--total", type=float, default=TOTAL_S, help=f"seconds for the whole check ({TOTAL_S:.0f})"
    )
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiply every budget (CPU tests)")

    def fake(text: str) -> tuple[str, str]:
        name, _, command = text.partition("=")
        if name not in PHASE_NAMES:
            raise argparse.ArgumentTypeError(f"unknown phase {name!r} (phases: {', '.join(PHASE_NAMES)})")
        return name, command

    parser.add_argument(
        "--fake", action="append", type=fake, metavar="PHASE=CMD", help="stand-in shell command"
    )
    parser.add_argument("--fake-all", metavar="CMD", help="stand-in for every phase without its own --fake")
    args = parser.parse_args(argv)
    args.out = args.out_option or args.out
    if not args.plan and not args.out:
        parser.error("an output folder is needed (--out OUT)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plan:
        print(plan_text(PHASES, args.total))
        return 0
    runner = Runner(args)

    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    try:
        return runner.check()
    except KeyboardInterrupt as exc:
        runner.stop_all()
        runner.note(
            f"== interrupted ({exc}) at t={seconds(runner.clock.now())}; results so far in {runner.out}"
        )
        with contextlib.suppress(OSError):
            runner.pack()
        return 2


if __name__ == "__main__":
    sys.exit(main())
