"""Test configuration.

Without a CUDA device the Triton kernels run under the Triton interpreter,
which must be switched on before triton is first imported.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# One config per Triton kernel: tests check correctness, and autotuning every
# test shape on a GPU would spend minutes compiling.
os.environ.setdefault("FASTCAE_TRITON_AUTOTUNE", "0")
