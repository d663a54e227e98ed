"""fastcae: the contractive autoencoder penalty, fused and nearly free.

h, p = fastcae.encode(x, W, b)              # code (B, H) and ‖∂h/∂x‖²_F per sample (B,)
loss = recon_loss + lam * fastcae.penalty(x, W, b)
"""

from .activations import ACTIVATION_NAMES
from .dispatch import BackendUnavailableError, backends
from .functional import EncoderOutput, encode, penalty, penalty_hessian
from .geometry import ContractionReport, Tangents, contraction_report, jacobian, tangents

__version__ = "0.1.0"

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
    "jacobian",
    "penalty",
    "penalty_hessian",
    "tangents",
]
