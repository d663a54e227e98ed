"""Where the fused kernels come from, and whether they can run here.

- The C++ extension ``fastcae._C`` (CPU kernels, and CUDA kernels when built
  with a toolkit): imported once; importing it registers ``torch.ops.fastcae.*``.
  Without it, fastcae still works with the plain-PyTorch backends.
- The Triton kernels ``fastcae.kernels``: imported lazily (importing triton is
  slow) and probed once. They run on CUDA tensors, and on CPU tensors under the
  Triton interpreter (``TRITON_INTERPRET=1`` set before triton is imported).
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

import torch

from .._environment import triton_interpreter_enabled

# The kernel ops every op module registers fakes and vmap rules for.
EXTENSION_OPS: tuple[str, ...] = ("encode_forward", "activate_forward", "hessian_forward")

try:
    from .. import _C  # registers torch.ops.fastcae.* as a side effect
except ImportError as exc:
    _C = None
    EXTENSION_ERROR: str | None = f"the C++ extension fastcae._C could not be imported ({exc})"
else:
    EXTENSION_ERROR = None
    _missing = [op for op in EXTENSION_OPS if not hasattr(torch.ops.fastcae, op)]
    if _missing:  # a build older than these sources: say so rather than fail at import
        _C = None
        EXTENSION_ERROR = (
            f"the C++ extension fastcae._C is out of date (it lacks {', '.join(_missing)}): rebuild it with "
            "`pip install --no-build-isolation -e .`"
        )


def extension() -> ModuleType | None:
    """The loaded extension module, or None (EXTENSION_ERROR says why)."""
    return _C


def extension_has_cuda() -> bool:
    return _C is not None and _C.built_with_cuda()


def triton_kernels(name: str) -> ModuleType:
    """The Triton kernel module ``fastcae.kernels.<name>``, imported on first use."""
    return importlib.import_module(f"fastcae.kernels.{name}")


_TRITON_PROBE: dict[str, str | None] = {}


@torch.compiler.assume_constant_result  # torch.compile calls it once instead of tracing it
def triton_unavailable_reason() -> str | None:
    """Why the Triton kernels cannot run here, or None (probed once)."""
    if "reason" not in _TRITON_PROBE:
        _TRITON_PROBE["reason"] = _probe_triton()
    return _TRITON_PROBE["reason"]


def _probe_triton() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if not torch.cuda.is_available() and not triton_interpreter_enabled():
        return "no CUDA device (set TRITON_INTERPRET=1 before importing triton to run it on the CPU)"
    try:
        triton_kernels("encode")  # compiles nothing; checks the import
    except Exception as exc:  # an incompatible triton: say so instead of failing later
        return f"fastcae.kernels failed to import: {type(exc).__name__}: {exc}"
    return None


def triton_device_types() -> frozenset[str]:
    return frozenset({"cuda", "cpu"}) if triton_interpreter_enabled() else frozenset({"cuda"})


def triton_dtypes() -> frozenset[torch.dtype]:
    # The interpreter computes with numpy, which has no bfloat16.
    if triton_interpreter_enabled():
        return frozenset({torch.float16, torch.float32, torch.float64})
    return frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
