"""Test configuration.

Without a CUDA device the Triton kernels run under the Triton interpreter,
which must be switched on before triton is first imported.

GPU selection (scripts/gpu_check.py runs ``-m "gpu and not slow"``): every test
that runs on a CUDA device gets the ``gpu`` marker here, i.e. a test

- whose parameters put it on CUDA (its parameter id contains "cuda"),
- that is skipped without CUDA (a skipif whose reason names CUDA or a GPU),
- or that is marked ``gpu`` already (tests/test_gpu.py).

The marker only adds a way to select; what ``pytest tests`` runs is unchanged.
Under ``pytest-xdist --dist loadgroup`` the GPU tests of the Triton backend are
also grouped by (activation, dtype), so one worker compiles each group's kernel
variants instead of every worker compiling all of them.
"""

import os

import pytest
import torch
from hypothesis import settings

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# One config per Triton kernel: tests check correctness, and autotuning every
# test shape on a GPU would spend minutes compiling.
os.environ.setdefault("FASTCAE_TRITON_AUTOTUNE", "0")

# Fewer property-test examples where every new shape may compile a kernel
# (the GPU check passes --hypothesis-profile=gpu-check).
settings.register_profile("gpu-check", max_examples=10, deadline=None)


def _skipped_without_gpu(item: pytest.Item) -> bool:
    for mark in item.iter_markers("skipif"):
        reason = str(mark.kwargs.get("reason", "")).lower()
        if "cuda" in reason or "gpu" in reason:
            return True
    return False


def runs_on_gpu(item: pytest.Item) -> bool:
    """Whether the test runs on a CUDA device (see the module docstring)."""
    callspec = getattr(item, "callspec", None)
    return (
        item.get_closest_marker("gpu") is not None
        or (callspec is not None and "cuda" in callspec.id)
        or _skipped_without_gpu(item)
    )


def compile_group(item: pytest.Item) -> str | None:
    """The xdist group of a Triton test: its activation and dtype, which pick the kernel variants."""
    callspec = getattr(item, "callspec", None)
    if callspec is None or "triton" not in item.nodeid or "activation" not in callspec.params:
        return None
    parts = ["triton", str(callspec.params["activation"])]
    if "dtype" in callspec.params:
        parts.append(str(callspec.params["dtype"]).removeprefix("torch."))
    return "-".join(parts)


@pytest.hookimpl(tryfirst=True)  # before -m deselects, and before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    grouping = getattr(config.option, "dist", "no") == "loadgroup"
    for item in items:
        if not runs_on_gpu(item):
            continue
        item.add_marker(pytest.mark.gpu)
        group = compile_group(item) if grouping else None
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture
def poison_empty():
    """torch.empty returns NaN-filled memory, so an output element a kernel
    forgets to write fails the comparison instead of passing by luck."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(previous)
