"""The precision rules every backend follows, in one place.

- Accumulation: float64 inputs accumulate in float64; float32, bfloat16 and
  float16 inputs in float32. The penalty and ‖W_j‖² are returned in that dtype.
- Float32 GEMMs on CUDA follow PyTorch's matmul precision: TF32 where the user
  allowed it, exact float32 ("ieee") otherwise.
"""

from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of inputs of ``dtype`` (also the penalty's dtype)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def cuda_fp32_uses_tf32() -> bool:
    """Whether float32 matmuls on CUDA may use TF32, read through the API the running torch offers.

    torch ≥ 2.9 has ``torch.backends.cuda.matmul.fp32_precision`` ("tf32", "ieee"
    or "none"), which reflects the legacy setters too; once a user sets it, the
    legacy getters (``allow_tf32``, ``get_float32_matmul_precision``) raise. Older
    torch only has ``allow_tf32``.
    """
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        return matmul.fp32_precision == "tf32"
    return bool(matmul.allow_tf32)
