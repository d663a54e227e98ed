"""The backend registry: listing, "auto", measured choice, and life without the extension."""

import subprocess
import sys

import pytest
import torch
from helpers import available_backends, make_inputs

import fastcae
from fastcae import _autotune, dispatch
from fastcae.ops import encode as encode_op


def test_backends_lists_every_backend_with_a_reason_or_none():
    listing = fastcae.backends()
    assert set(listing) == {"torch", "naive", "cpu", "triton", "cuda"}
    assert listing["torch"] is None and listing["naive"] is None
    for name, reason in listing.items():
        assert reason is None or (isinstance(reason, str) and reason), name
    if not torch.cuda.is_available():
        assert "CUDA" in listing["cuda"]


def test_auto_picks_the_fused_cpu_kernel_on_cpu():
    x, weight = torch.randn(2, 3), torch.randn(4, 3)
    expected = "cpu" if "cpu" in available_backends() else "torch"
    assert dispatch.resolve_backend("auto", x, weight) == expected


def test_auto_falls_back_to_torch_where_no_fused_backend_runs(monkeypatch):
    monkeypatch.setitem(dispatch.AUTO_PREFERENCE, "cpu", ())
    x, weight = torch.randn(2, 3), torch.randn(4, 3)
    assert dispatch.resolve_backend("auto", x, weight) == "torch"


@pytest.fixture
def fresh_choices(monkeypatch):
    monkeypatch.setattr(_autotune, "_CHOICES", {})
    monkeypatch.setenv("FASTCAE_AUTOTUNE", "1")


@pytest.mark.usefixtures("fresh_choices")
def test_auto_times_the_candidates_once_per_problem_kind(monkeypatch):
    """With two candidates, "auto" measures both and keeps the faster; the same
    kind of problem is not timed again (shown on the CPU with a slowed-down twin)."""
    calls = []
    fast = encode_op.IMPLEMENTATIONS["torch"]

    def slow_encode(*args):
        calls.append("slow")
        x = args[0]
        for _ in range(20):
            x = x + 0  # measurably slower than the real thing
        return fast(*args)

    monkeypatch.setitem(encode_op.IMPLEMENTATIONS, "slow", slow_encode)
    x, weight, bias = make_inputs(8, 5, 6)
    assert _autotune.choose(["slow", "torch"], x, weight, bias, "sigmoid") == "torch"
    timed = len(calls)
    assert timed == _autotune.WARMUP_CALLS + _autotune.TIMED_CALLS
    x2, _, _ = make_inputs(7, 5, 6)  # same batch bucket (8): no new timing
    assert _autotune.choose(["slow", "torch"], x2, weight, bias, "sigmoid") == "torch"
    assert len(calls) == timed
    assert list(_autotune.choices().values()) == ["torch"]


@pytest.mark.usefixtures("fresh_choices")
def test_autotune_off_uses_the_preference_order(monkeypatch):
    monkeypatch.setenv("FASTCAE_AUTOTUNE", "0")
    x, weight, bias = make_inputs(4, 3, 2)
    assert _autotune.choose(["naive", "torch"], x, weight, bias, "tanh") == "naive"
    assert _autotune.choices() == {}


@pytest.mark.usefixtures("fresh_choices")
def test_autotune_measures_the_training_call_separately():
    x, weight, bias = make_inputs(4, 3, 2, requires_grad=True)
    candidates = ["naive", "torch"]
    _autotune.choose(candidates, x, weight, bias, "sigmoid")
    with torch.no_grad():
        _autotune.choose(candidates, x, weight, bias, "sigmoid")
    assert sorted(key[-1] for key in _autotune.choices()) == [False, True]
    assert weight.grad is None  # timing ran on detached copies


def test_import_without_the_extension_keeps_torch_and_naive():
    code = (
        "import sys; sys.modules['fastcae._C'] = None\n"
        "import torch, fastcae\n"
        "listing = fastcae.backends()\n"
        "assert listing['torch'] is None and listing['naive'] is None, listing\n"
        "assert 'fastcae._C' in listing['cpu'], listing\n"
        "x, w = torch.randn(3, 4), torch.randn(5, 4)\n"
        "assert fastcae.penalty(x, w).shape == ()\n"
        "try:\n"
        "    fastcae.penalty(x, w, backend='cpu')\n"
        "except fastcae.BackendUnavailableError as e:\n"
        "    print('refused:', e)\n"
        "else:\n"
        "    raise SystemExit('cpu backend ran without its extension')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "refused: backend='cpu' is unavailable" in result.stdout
