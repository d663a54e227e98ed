"""benchmarks/targets.py on the quick shapes (FASTCAE_BENCH_QUICK=1), CPU goals and GPU goals alike,
so neither path rots between runs on a GPU. Checks the output format, not timings."""

from __future__ import annotations

import json

import pytest

from benchmarks import targets
from benchmarks.cases import QUICK

pytestmark = pytest.mark.skipif(
    not QUICK, reason="runs the targets on the quick shapes (FASTCAE_BENCH_QUICK=1)"
)


def records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cpu_goals_write_every_line_as_json(tmp_path, capsys):
    targets.main(["--device", "cpu", "--rounds", "2", "--no-compile", "--out-dir", str(tmp_path)])
    printed = capsys.readouterr().out.splitlines()
    (jsonl,) = tmp_path.glob("*-targets.jsonl")
    (text,) = tmp_path.glob("*-targets.txt")
    written = records(jsonl)
    assert [r["line"] for r in written] == printed == text.read_text().splitlines()
    goals = [r for r in written if r["kind"] == "target"]
    assert {g["description"] for g in goals} >= {
        "forward cpu / encoder-only (pair)",
        "train cpu / plain AE step (pair)",
        "train naive / cpu",
    }
    assert all(isinstance(g["met"], bool) and g["value"] > 0 for g in goals)
    assert written[-1]["kind"] == "done"


def test_gpu_goals_run_on_the_cpu_backend(tmp_path, capsys):
    """The GPU goals' code, on the CPU with the "cpu" backend standing in for triton/cuda."""
    out = tmp_path / "targets.jsonl"
    targets.main(
        [
            "--device",
            "cpu",
            "--goals",
            "gpu",
            "--rounds",
            "2",
            "--no-compile",
            "--backends",
            "cpu",
            "--jsonl",
            str(out),
        ]
    )
    written = records(out)
    goals = [r for r in written if r["kind"] == "target"]
    descriptions = [g["description"] for g in goals]
    assert any("host overhead of fastcae.encode, fastcae-auto" in d for d in descriptions)
    assert any(
        d.startswith("forward (64, 48, 40) bfloat16 fastcae-auto / encoder alone") for d in descriptions
    )
    assert any(d.startswith("train (64, 48, 40) bfloat16 fastcae-cpu / torch") for d in descriptions)
    assert any("TF32" in d for d in descriptions)
    assert any("naive-vmap / fastcae-cpu" in d for d in descriptions)
    assert any("extra memory" in d for d in descriptions)
    assert any("auto picks" in d for d in descriptions)  # one fused candidate here: "not measured"
    assert not [r for r in written if r["kind"] in ("error", "wrong")], [r["line"] for r in written]
    assert written[-1]["kind"] == "done"
    # printed as measured, one line per record
    assert capsys.readouterr().out.splitlines() == [r["line"] for r in written]


def test_warm_only_calls_every_setting_and_times_nothing(capsys):
    targets.main(["--device", "cpu", "--warm-only", "--no-compile", "--backends", "cpu"])
    printed = capsys.readouterr().out
    assert printed.count("warm ") == len(targets.gpu_settings())
    assert "TARGET" not in printed and "medians" not in printed and "FAILED" not in printed
