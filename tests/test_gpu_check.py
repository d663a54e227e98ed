"""scripts/gpu_check.py on the CPU, so the GPU check cannot rot between GPU runs: its plan fits
8 minutes in the required order, and its orchestration (time limits, SIGTERM then SIGKILL, the
summary after every phase, at most 8 files) works with the phases' commands replaced by stand-ins
and every budget scaled down 100×. A few seconds in all."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.py"
REQUIRED_ORDER = ["env", "build", "triton-tests", "cuda-tests", "targets", "sanitizer", "bench"]


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


gpu_check = load_script()


def run_check(out: Path, *options: str) -> tuple[subprocess.CompletedProcess, str, float]:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--time-scale", "0.01", *options],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, (out / "summary.txt").read_text(), time.monotonic() - start


def phase_lines(summary: str) -> dict[str, str]:
    """Phase name -> its line in summary.txt ("[t=  1.2s] name  STATUS ...")."""
    lines = {}
    for line in summary.splitlines():
        match = re.match(r"\[t=\s*[\d.]+s\] (\S+)\s", line)
        if match:
            lines[match.group(1)] = line
    return lines


def test_plan_fits_eight_minutes_in_the_required_order():
    done = subprocess.run([sys.executable, str(SCRIPT), "--plan"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    total = float(re.search(r"^total: (\d+) s", done.stdout, re.MULTILINE).group(1))
    assert total <= 480
    listed = [
        line.split()[0] for line in done.stdout.splitlines() if re.match(r"  \S+\s+(\d+ s|\(\w+\))", line)
    ]
    assert [name for name in listed if name in REQUIRED_ORDER] == REQUIRED_ORDER
    assert gpu_check.critical_path(gpu_check.PHASES) <= 480
    by_name = {p.name: p for p in gpu_check.PHASES}
    assert by_name["env"].budget + by_name["triton-tests"].budget <= by_name["build"].budget
    assert all(p.minimum <= p.budget or p.kind in ("leftover", "opportunistic") for p in gpu_check.PHASES)
    assert len(gpu_check.OUT_FILES) <= 8


def test_a_phase_over_its_budget_is_killed_and_the_next_one_runs(tmp_path):
    """targets sleeps past its limit (SIGTERM ends it); sanitizer ignores SIGTERM (SIGKILL ends it);
    bench then has less than its minimum left and is not started."""
    out = tmp_path / "out"
    done, summary, elapsed = run_check(
        out,
        "--fake-all",
        "echo 'tests/test_x.py::test_y[cuda] PASSED'",
        "--fake",
        "targets=sleep 30",
        "--fake",
        "sanitizer=trap '' TERM; sleep 30",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    lines = phase_lines(summary)
    assert list(lines) == [
        "env",
        "triton-tests",
        "build",
        "backends",
        "cuda-tests",
        "warm",
        "targets",
        "sanitizer",
        "bench",
    ]
    for name in ("env", "build", "triton-tests", "backends", "cuda-tests"):
        assert " ok " in lines[name], summary
    assert "KILLED" in lines["targets"] and "KILLED" in lines["sanitizer"], summary
    assert "SKIPPED" in lines["bench"] and "left" in lines["bench"], summary
    assert "results in the log: passed 1" in summary
    assert summary.rstrip().splitlines()[-1].startswith("== done at t=")
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and set(files) <= set(gpu_check.OUT_FILES), files
    assert elapsed < 20  # 4.8 s of scaled budgets, plus the kill grace


def test_a_failed_build_skips_the_cuda_phases_only(tmp_path):
    out = tmp_path / "out"
    done, summary, _ = run_check(out, "--fake-all", "true", "--fake", "build=echo nvcc error >&2; exit 3")
    lines = phase_lines(summary)
    assert "FAILED" in lines["build"] and "exit 3" in lines["build"]
    assert " ok " in lines["triton-tests"]
    assert "SKIPPED" in lines["cuda-tests"] and "build failed" in lines["cuda-tests"]
    for name in ("targets", "sanitizer", "bench"):
        assert " ok " in lines[name], summary
    assert "nvcc error" in (out / "build.log").read_text()
    assert "ATTENTION: build" in summary.splitlines()[-1]
    assert done.returncode == 1


def test_the_real_commands(tmp_path):
    """What the phases run without stand-ins (nothing is started here)."""
    args = gpu_check.parse_args(["--out", str(tmp_path)])
    runner = gpu_check.Runner(args)
    phases = {p.name: p for p in gpu_check.PHASES}
    triton = runner.command(phases["triton-tests"])
    cuda = runner.command(phases["cuda-tests"])
    for command, keyword in ((triton, "triton"), (cuda, "not triton")):
        assert command[command.index("-m", command.index("pytest") + 1) + 1] == "gpu and not slow"
        assert command[command.index("-k") + 1] == keyword
        assert any(part.startswith("--junitxml=") for part in command)
        assert "--hypothesis-profile=gpu-check" in command
    assert runner.command(phases["targets"])[-2:] == ["--jsonl", str(tmp_path.resolve() / "targets.jsonl")]
    for name in ("env", "build", "backends", "sanitizer"):
        command = runner.command(phases[name])
        assert Path(command[1]).exists() and command[1].endswith("gpu_steps.py"), command
    assert runner.env["PIP_NO_INDEX"] == "1" and runner.env["PYTHONUNBUFFERED"] == "1"


def test_steps_script_parses_its_steps():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_steps.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 and "sanitize-driver" in done.stdout


def test_summary_of_a_test_phase_from_its_log(tmp_path):
    log = tmp_path / "tests.log"
    log.write_text(
        "==== triton-tests: started at t=10s, limit 200s: pytest ...\n"
        "12 workers [3 items]\n"
        "[gw0] [ 33%] PASSED tests/test_a.py::test_one[cuda-triton]\n"
        "[gw1] [ 66%] FAILED tests/test_a.py::test_two[cuda-triton]\n"
        "[gw0] [100%] SKIPPED tests/test_a.py::test_three[cuda-triton]\n"
        "FAILED tests/test_a.py::test_two[cuda-triton] - AssertionError: code\n"
        "==== 1 failed, 1 passed, 1 skipped in 12.0s ====\n"
        "==== triton-tests: exit 1 after 40s\n"
    )
    phase = {p.name: p for p in gpu_check.PHASES}["triton-tests"]
    lines = gpu_check.details(phase, log, tmp_path)
    assert "12 workers [3 items]" in lines
    assert "results in the log: failed 1, passed 1, skipped 1" in lines
    assert "FAILED tests/test_a.py::test_two[cuda-triton] - AssertionError: code" in lines
    assert any("1 failed, 1 passed" in line for line in lines)


@pytest.mark.parametrize("id_part", ["cuda-triton", "cuda-cuda"], ids=["triton-test", "extension-test"])
def test_gpu_marker_and_compile_groups(id_part):
    """tests/conftest.py marks CUDA-parametrized tests "gpu" and groups the Triton ones for xdist."""
    conftest = importlib.util.spec_from_file_location("tests_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(conftest)
    conftest.loader.exec_module(module)

    class CallSpec:
        id = f"{id_part}-sigmoid-torch.bfloat16"
        params: ClassVar[dict] = {"activation": "sigmoid", "dtype": "torch.bfloat16"}

    class Item:
        nodeid = f"tests/test_encode.py::test_forward[{CallSpec.id}]"
        callspec = CallSpec()

        def get_closest_marker(self, name):
            return None

        def iter_markers(self, name):
            return iter(())

    assert module.runs_on_gpu(Item())
    group = module.compile_group(Item())
    assert group == ("triton-sigmoid-bfloat16" if "triton" in id_part else None)
