"""fastcae: the contractive autoencoder penalty, fused and nearly free.

h, p = fastcae.encode(x, W, b)              # code (B, H) and ‖∂h/∂x‖²_F per sample (B,)
loss = recon_loss + lam * fastcae.penalty(x, W, b)
h, p = fastcae.encode_conv2d(x, K, b, stride=2, padding=1)  # a Conv2d layer, exact, O(output)
fastcae.jacobian_penalty(encoder, x)        # ‖∂f(x)/∂x‖²_F of a whole (deep) encoder

The submodules ``fastcae.nn``, ``fastcae.data``, ``fastcae.train``,
``fastcae.plots`` and ``fastcae.cli`` are imported on first access (PEP 562),
so ``import fastcae`` does not load their dependencies.
"""

import importlib

from .activations import ACTIVATION_NAMES
from .conv import encode_conv2d, penalty_conv2d
from .deep import jacobian_penalty
from .dispatch import BackendUnavailableError, backends
from .functional import EncoderOutput, encode, penalty, penalty_hessian
from .geometry import ContractionReport, Tangents, contraction_report, jacobian, tangents

__version__ = "0.1.0"

_LAZY_SUBMODULES = frozenset({"cli", "data", "nn", "plots", "train"})


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY_SUBMODULES)


__all__ = [
    "ACTIVATION_NAMES",
    "BackendUnavailableError",
    "ContractionReport",
    "EncoderOutput",
    "Tangents",
    "__version__",
    "backends",
    "contraction_report",
    "encode",
    "encode_conv2d",
    "jacobian",
    "jacobian_penalty",
    "penalty",
    "penalty_conv2d",
    "penalty_hessian",
    "tangents",
]
