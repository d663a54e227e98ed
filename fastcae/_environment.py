"""The environment variables fastcae reads, in one place.

- ``TRITON_INTERPRET=1``: Triton runs its kernels on the CPU with numpy (set
  before triton is imported); the "triton" backend then takes CPU tensors.
- ``FASTCAE_TRITON_AUTOTUNE=0``: the Triton kernels keep one config each
  instead of timing their autotune lists (the test suite sets it).
- ``FASTCAE_AUTOTUNE=0``: backend="auto" takes the first candidate of its
  preference list instead of timing the candidates.
- ``FASTCAE_CPU_INTRINSICS=0``: the C++ CPU kernels run the float32 sigmoid
  forward with their portable loop instead of its AVX-512 pass
  (csrc/cpu/sigmoid_avx512.h); read by the extension once, at first use.
"""

from __future__ import annotations

import os

_OFF = ("", "0", "false", "off", "no")


def _flag(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() not in _OFF


def triton_interpreter_enabled() -> bool:
    return _flag("TRITON_INTERPRET", "0")


def triton_autotune_enabled() -> bool:
    """Whether the Triton kernels autotune (never under the interpreter)."""
    return _flag("FASTCAE_TRITON_AUTOTUNE", "1") and not triton_interpreter_enabled()


def backend_autotune_enabled() -> bool:
    return _flag("FASTCAE_AUTOTUNE", "1")
