"""benchmarks/deep.py on its quick stand-in problem (FASTCAE_BENCH_QUICK=1): the output format
and the exact gate, not the timings."""

from __future__ import annotations

import json

import pytest

from benchmarks import deep
from benchmarks.cases import QUICK

pytestmark = pytest.mark.skipif(not QUICK, reason="runs on the quick problem (FASTCAE_BENCH_QUICK=1)")


def test_every_line_is_written_as_json_and_the_goals_are_reported(tmp_path, capsys):
    deep.main(["--rounds", "2", "--exact-rounds", "1", "--draws", "5", "--out-dir", str(tmp_path)])
    printed = capsys.readouterr().out.splitlines()
    (jsonl,) = tmp_path.glob("*-deep.jsonl")
    (text,) = tmp_path.glob("*-deep.txt")
    written = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["line"] for r in written] == printed == text.read_text().splitlines()
    (gate,) = [r for r in written if r["kind"] == "gate"]
    assert gate["error"] < 1e-4
    goals = {r["description"] for r in written if r["kind"] == "target"}
    assert goals == {
        "step fastcae projection n=1 / plain deep AE (pair)",
        "step JacobianReg n=1 / fastcae projection n=1 (pair)",
        "exact fwd+bwd vmap(jacrev) / fastcae (pair)",
        "exact peak memory fastcae / vmap(jacrev)",
    }
    assert {r.get("method") for r in written if r["kind"] == "quality"} - {None} == {
        f"{method} n={n}" for method in ("fastcae projection", "JacobianReg") for n in deep.PROJECTIONS
    }
    assert written[-1]["kind"] == "done"
