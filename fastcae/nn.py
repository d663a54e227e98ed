"""Contractive autoencoder modules on top of the fused penalty.

- :class:`ContractiveEncoder`: one encoder layer h = φ(x Wᵀ + b) returning the
  code and the per-sample penalty ‖∂h/∂x‖²_F, for users who put a contractive
  penalty on their own models.
- :class:`ContractiveAutoencoder`: encoder plus a decoder r = ψ(h W + c) whose
  weight is the encoder's, transposed (tied) by default. An untied decoder lets
  the encoder shrink its weights by ε while the decoder scales up by 1/ε: the
  penalty goes to 0 and nothing is learned, so untying is opt-in.
- :class:`StackedContractiveAutoencoder`: CAEs trained greedily layer by layer
  (each reconstructs the code of the one below and is contractive on its own),
  then optionally fine-tuned jointly.
- :class:`ContractiveConv2d`: a convolutional encoder layer with its exact
  penalty (:func:`fastcae.encode_conv2d`), laid out like ``nn.Conv2d``.
- :class:`ConvContractiveAutoencoder`: a conv encoder with a tied
  transposed-conv decoder (the same kernel), for images.
- :class:`DeepContractiveEncoder`: a stack of encoder layers with the penalty of
  the whole stack's Jacobian ‖∂h_L/∂x‖²_F (:func:`fastcae.jacobian_penalty`).
- :class:`DeepContractiveAutoencoder`: that encoder and a mirrored decoder,
  trained jointly: the alternative to stacking single-layer CAEs.

Losses follow the CAE papers: the reconstruction error is summed over features
and averaged over the batch, and the penalties are averaged over the batch:

    loss = mean_b [ L(x_b, r_b) ] + λ mean_b ‖J(x_b)‖²_F (+ γ mean_b E‖J(x_b) − J(x_b + ε)‖²_F)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._precision import acc_dtype
from ._validation import check_choice, check_non_negative, check_pair, check_positive_int
from .activations import ACTIVATION_NAMES, ACTIVATIONS
from .conv import encode_conv2d
from .deep import ESTIMATORS, encode_chain, encoder_layers
from .functional import EncoderOutput, encode, penalty_hessian

DECODER_ACTIVATIONS: tuple[str, ...] = ("sigmoid", "identity")


class AutoencoderOutput(NamedTuple):
    """reconstruction (B, D), code (B, H), per-sample penalty (B,)."""

    reconstruction: Tensor
    code: Tensor
    penalty: Tensor


class AutoencoderLoss(NamedTuple):
    """The total loss and its parts (scalars), for the optimizer and for logging."""

    total: Tensor
    reconstruction: Tensor
    contractive: Tensor
    hessian: Tensor


class ContractiveEncoder(nn.Module):
    """One encoder layer h = φ(x Wᵀ + b) with its contractive penalty.

    Args:
        in_features: D.
        hidden_features: H.
        activation: φ, one of fastcae.ACTIVATION_NAMES.
        bias: whether the layer has a bias b (H,).
        backend: passed to :func:`fastcae.encode` ("auto" picks the fastest).

    Shapes: ``forward(x)`` takes x (B, D) and returns
    ``EncoderOutput(code (B, H), penalty (B,))``.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        activation: str = "sigmoid",
        bias: bool = True,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.hidden_features = check_positive_int("hidden_features", hidden_features)
        self.activation = check_choice("activation", activation, ACTIVATION_NAMES)
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(hidden_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(hidden_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform weight (the CAE papers' choice), zero bias."""
        nn.init.xavier_uniform_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor):
        return encode(x, self.weight, self.bias, activation=self.activation, backend=self.backend)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, hidden_features={self.hidden_features}, "
            f"activation={self.activation!r}, bias={self.bias is not None}, backend={self.backend!r}"
        )


class ContractiveAutoencoder(nn.Module):
    """A contractive autoencoder: h = φ(x Wᵀ + b), r = ψ(h W' + c), W' = W by default.

    Args:
        in_features: D.
        hidden_features: H.
        activation: encoder activation φ.
        decoder_activation: ψ, "sigmoid" (binary cross-entropy, inputs in [0, 1])
            or "identity" (squared error).
        tied: decode with the encoder's weight (True, the CAE of Rifai et al.)
            or with a separate (H, D) weight.
        contractive_weight: λ, the weight of the mean penalty ‖∂h/∂x‖²_F.
        hessian_weight: γ of the CAE+H term E‖J(x) − J(x + ε)‖²_F (0 turns it off).
        hessian_sigma, hessian_samples: σ and the number of corrupted copies of CAE+H.
        backend: passed to :func:`fastcae.encode`.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        activation: str = "sigmoid",
        decoder_activation: str = "sigmoid",
        tied: bool = True,
        contractive_weight: float = 0.1,
        hessian_weight: float = 0.0,
        hessian_sigma: float = 0.1,
        hessian_samples: int = 4,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.encoder = ContractiveEncoder(
            in_features, hidden_features, activation=activation, backend=backend, **factory
        )
        self.decoder_activation = check_choice("decoder_activation", decoder_activation, DECODER_ACTIVATIONS)
        self.tied = bool(tied)
        self.contractive_weight = check_non_negative("contractive_weight", contractive_weight)
        self.hessian_weight = check_non_negative("hessian_weight", hessian_weight)
        self.hessian_sigma = check_non_negative("hessian_sigma", hessian_sigma)
        self.hessian_samples = check_positive_int("hessian_samples", hessian_samples)
        self.decoder_weight = (
            None if tied else nn.Parameter(torch.empty(hidden_features, in_features, **factory))
        )
        self.decoder_bias = nn.Parameter(torch.zeros(in_features, **factory))
        if self.decoder_weight is not None:
            nn.init.xavier_uniform_(self.decoder_weight)

    @property
    def in_features(self) -> int:
        return self.encoder.in_features

    @property
    def hidden_features(self) -> int:
        return self.encoder.hidden_features

    def decoder_logits(self, code: Tensor) -> Tensor:
        """h W' + c (B, D), before ψ."""
        weight = self.encoder.weight if self.decoder_weight is None else self.decoder_weight
        return torch.addmm(self.decoder_bias, code, weight)

    def decode(self, code: Tensor) -> Tensor:
        """r = ψ(h W' + c), (B, H) -> (B, D)."""
        logits = self.decoder_logits(code)
        return torch.sigmoid(logits) if self.decoder_activation == "sigmoid" else logits

    def encode(self, x: Tensor) -> Tensor:
        """The code h (B, H)."""
        return self.encoder(x).code

    def forward(self, x: Tensor) -> AutoencoderOutput:
        code, penalty = self.encoder(x)
        return AutoencoderOutput(self.decode(code), code, penalty)

    def reconstruction_error(self, logits: Tensor, x: Tensor) -> Tensor:
        """Per-sample reconstruction error summed over features (B,), from the decoder's logits:
        binary cross-entropy for a sigmoid decoder (computed from logits, which is stable),
        squared error for an identity decoder."""
        return _reconstruction_error(logits, x, self.decoder_activation)

    def loss(self, x: Tensor, *, generator: torch.Generator | None = None) -> AutoencoderLoss:
        """Reconstruction error + λ·mean penalty (+ γ·mean CAE+H term), with the parts.

        ``generator`` seeds the CAE+H noise (on x's device) for reproducible runs.
        """
        code, penalty = self.encoder(x)
        reconstruction = self.reconstruction_error(self.decoder_logits(code), x).mean()
        contractive = penalty.mean()
        total = reconstruction + self.contractive_weight * contractive
        if self.hessian_weight > 0:
            hessian = penalty_hessian(
                x,
                self.encoder.weight,
                self.encoder.bias,
                activation=self.encoder.activation,
                sigma=self.hessian_sigma,
                n_samples=self.hessian_samples,
                generator=generator,
            )
            total = total + self.hessian_weight * hessian
        else:
            hessian = total.new_zeros(())
        return AutoencoderLoss(total, reconstruction.detach(), contractive.detach(), hessian.detach())

    def extra_repr(self) -> str:
        return (
            f"decoder_activation={self.decoder_activation!r}, tied={self.tied}, "
            f"contractive_weight={self.contractive_weight}, hessian_weight={self.hessian_weight}"
        )


class ContractiveConv2d(nn.Module):
    """A convolutional encoder layer h = φ(conv2d(x, K, b)) with its exact contractive penalty.

    Parameters are laid out like ``nn.Conv2d``'s (``weight`` (C_out, C_in / groups,
    kH, kW), ``bias`` (C_out,)) and initialized the same way, so
    ``load_state_dict`` from an ``nn.Conv2d`` works.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation,
        groups, bias: as in ``nn.Conv2d`` (padding: int, pair, "same" or "valid").
        padding_mode: "zeros" only. With "reflect", "replicate" or "circular"
            padding an input pixel can feed one output unit through several
            taps, so the unit's Jacobian row sums those taps before squaring and
            the penalty is no longer Σ φ'² N: rejected rather than computed wrongly.
        activation: φ, one of fastcae.ACTIVATION_NAMES.
        backend: passed to :func:`fastcae.encode_conv2d`.

    Shapes: ``forward(x)`` takes x (B, C_in, H_in, W_in) and returns
    ``EncoderOutput(code (B, C_out, H_out, W_out), penalty (B,))``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        activation: str = "sigmoid",
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.groups = check_positive_int("groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups = {groups} must divide in_channels ({in_channels}) and out_channels ({out_channels})"
            )
        if padding_mode != "zeros":
            check_choice("padding_mode", padding_mode, ("zeros", "reflect", "replicate", "circular"))
            raise ValueError(
                f"padding_mode={padding_mode!r} is not supported: a padded pixel that repeats an input "
                "pixel makes that pixel feed a unit through several taps, which the penalty's closed "
                'form does not count; use padding_mode="zeros"'
            )
        self.kernel_size = check_pair("kernel_size", kernel_size, minimum=1)
        self.stride = check_pair("stride", stride, minimum=1)
        self.dilation = check_pair("dilation", dilation, minimum=1)
        if isinstance(padding, str):
            self.padding: tuple[int, int] | str = check_choice("padding", padding, ("same", "valid"))
            if padding == "same" and self.stride != (1, 1):
                raise ValueError(f'padding="same" needs stride 1, got stride={stride!r}')
        else:
            self.padding = check_pair("padding", padding, minimum=0)
        self.padding_mode = padding_mode
        self.activation = check_choice("activation", activation, ACTIVATION_NAMES)
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size, **factory)
        )
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Conv2d's initialization: Kaiming-uniform weight, uniform bias in ±1/√fan_in."""
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / fan_in**0.5 if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor):
        return encode_conv2d(
            x,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            activation=self.activation,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"bias={self.bias is not None}, activation={self.activation!r}, backend={self.backend!r}"
        )


class ConvContractiveAutoencoder(nn.Module):
    """A convolutional CAE: h = φ(conv2d(x, K, b)), r = ψ(conv_transpose2d(h, K, c)).

    The decoder is the encoder's transposed convolution with the same kernel K
    (tied, as the dense CAE ties W): an untied decoder lets the encoder shrink
    K by ε and the decoder grow by 1/ε, driving the penalty to 0 without
    learning contraction. The decoder's output size is matched to the input's
    (output_padding is computed per call).

    Args:
        in_channels, hidden_channels, kernel_size, stride, padding, dilation,
        groups, bias, activation, backend: the encoder, as in :class:`ContractiveConv2d`
            (padding as ints: the transposed convolution needs a symmetric one).
        decoder_activation: ψ, "sigmoid" (binary cross-entropy, inputs in [0, 1])
            or "identity" (squared error).
        contractive_weight: λ, the weight of the mean penalty ‖∂h/∂x‖²_F.

    ``loss(x)`` with x (B, C_in, H, W) returns an :class:`AutoencoderLoss` like
    :class:`ContractiveAutoencoder`'s: the reconstruction error summed over
    pixels and averaged over the batch, plus λ times the mean penalty.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        activation: str = "sigmoid",
        decoder_activation: str = "sigmoid",
        contractive_weight: float = 0.1,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(padding, str):
            raise TypeError(f"padding must be an int or a pair of ints (symmetric), got {padding!r}")
        factory = {"device": device, "dtype": dtype}
        self.encoder = ContractiveConv2d(
            in_channels, hidden_channels, kernel_size, stride, padding, dilation, groups, bias,
            activation=activation, backend=backend, **factory,
        )  # fmt: skip
        self.decoder_activation = check_choice("decoder_activation", decoder_activation, DECODER_ACTIVATIONS)
        self.contractive_weight = check_non_negative("contractive_weight", contractive_weight)
        self.decoder_bias = nn.Parameter(torch.zeros(in_channels, **factory))

    def decoder_logits(self, code: Tensor, image_size: tuple[int, int]) -> Tensor:
        """conv_transpose2d(h, K, c) (B, C_in, H, W) for images of ``image_size``, before ψ."""
        enc = self.encoder
        output_padding = tuple(
            size - ((code_size - 1) * s - 2 * p + d * (k - 1) + 1)
            for size, code_size, s, p, d, k in zip(
                image_size,
                code.shape[2:],
                enc.stride,
                enc.padding,
                enc.dilation,
                enc.kernel_size,
                strict=True,
            )
        )
        return F.conv_transpose2d(
            code,
            enc.weight,
            self.decoder_bias,
            enc.stride,
            enc.padding,
            output_padding,
            enc.groups,
            enc.dilation,
        )

    def forward(self, x: Tensor) -> AutoencoderOutput:
        code, penalty = self.encoder(x)
        logits = self.decoder_logits(code, x.shape[2:])
        reconstruction = torch.sigmoid(logits) if self.decoder_activation == "sigmoid" else logits
        return AutoencoderOutput(reconstruction, code, penalty)

    def reconstruction_error(self, logits: Tensor, x: Tensor) -> Tensor:
        """Per-sample reconstruction error summed over channels and pixels (B,), from the logits."""
        return _reconstruction_error(logits, x, self.decoder_activation)

    def loss(self, x: Tensor) -> AutoencoderLoss:
        """Reconstruction error + λ·mean penalty, with the parts."""
        code, penalty = self.encoder(x)
        reconstruction = self.reconstruction_error(self.decoder_logits(code, x.shape[2:]), x).mean()
        contractive = penalty.mean()
        total = reconstruction + self.contractive_weight * contractive
        return AutoencoderLoss(total, reconstruction.detach(), contractive.detach(), total.new_zeros(()))

    def extra_repr(self) -> str:
        return f"decoder_activation={self.decoder_activation!r}, contractive_weight={self.contractive_weight}"


Batches = Callable[[], Iterable[Tensor]]


class StackedContractiveAutoencoder(nn.Module):
    """A stack of CAEs, sizes = [D, H1, H2, ...], trained greedily then jointly.

    Layer i is a :class:`ContractiveAutoencoder` (sizes[i] -> sizes[i+1]). The
    first layer decodes with ``decoder_activation``; the layers above
    reconstruct codes, which lie in [0, 1] for sigmoid encoders (binary
    cross-entropy) and are unbounded otherwise (squared error).

    Args:
        sizes: [D, H1, H2, ...], at least two entries.
        activation, contractive_weight, tied, backend: as in :class:`ContractiveAutoencoder`,
            shared by every layer.
        decoder_activation: ψ of the first layer.
    """

    def __init__(
        self,
        sizes: list[int],
        *,
        activation: str = "sigmoid",
        decoder_activation: str = "sigmoid",
        contractive_weight: float = 0.1,
        tied: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"sizes must list at least the input and one hidden size, got {sizes!r}")
        inner_decoder = "sigmoid" if activation == "sigmoid" else "identity"
        self.layers = nn.ModuleList(
            ContractiveAutoencoder(
                sizes[i],
                sizes[i + 1],
                activation=activation,
                decoder_activation=decoder_activation if i == 0 else inner_decoder,
                tied=tied,
                contractive_weight=contractive_weight,
                backend=backend,
            )
            for i in range(len(sizes) - 1)
        )

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    def encode(self, x: Tensor, depth: int | None = None) -> Tensor:
        """The code of layer ``depth`` (default: the top), (B, D) -> (B, sizes[depth])."""
        for layer in self.layers[: len(self.layers) if depth is None else depth]:
            x = layer.encoder(x).code
        return x

    def decoder_logits(self, code: Tensor) -> Tensor:
        """Decode the top code (B, H_L) down through the stack: the first layer's logits (B, D), before ψ."""
        for layer in list(reversed(self.layers))[:-1]:
            code = layer.decode(code)
        return self.layers[0].decoder_logits(code)

    def reconstruction_error(self, logits: Tensor, x: Tensor) -> Tensor:
        """Per-sample reconstruction error of the input (B,), by the first layer's decoder."""
        return self.layers[0].reconstruction_error(logits, x)

    def forward(self, x: Tensor) -> AutoencoderOutput:
        """Encode through every layer and decode back down; penalty is the sum of the layers' penalties."""
        code, penalty = (
            x,
            x.new_zeros(x.shape[0], dtype=acc_dtype(x.dtype)),
        )
        for layer in self.layers:
            code, layer_penalty = layer.encoder(code)
            penalty = penalty + layer_penalty
        reconstruction = code
        for layer in reversed(self.layers):
            reconstruction = layer.decode(reconstruction)
        return AutoencoderOutput(reconstruction, code, penalty)

    def loss(self, x: Tensor) -> AutoencoderLoss:
        """Joint fine-tuning loss: input reconstruction error through the whole
        stack + Σ_i λ_i mean penalty of layer i."""
        code = x
        contractive_terms = []
        for layer in self.layers:
            code, layer_penalty = layer.encoder(code)
            contractive_terms.append(layer.contractive_weight * layer_penalty.mean())
        reconstruction = self.reconstruction_error(self.decoder_logits(code), x).mean()
        contractive = torch.stack(contractive_terms).sum()
        total = reconstruction + contractive
        return AutoencoderLoss(total, reconstruction.detach(), contractive.detach(), total.new_zeros(()))

    def pretrain(
        self,
        batches: Batches,
        *,
        epochs: int = 10,
        lr: float = 1e-3,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
        on_epoch: Callable[[int, int, float], None] | None = None,
    ) -> list[list[float]]:
        """Greedy layer-wise training: layer i learns to reconstruct the code of
        the (frozen) layers below it, with its own contractive penalty.

        Args:
            batches: returns a fresh iterable of input batches (B, D) per epoch.
            epochs: epochs per layer.
            on_epoch: called as on_epoch(layer, epoch, mean_loss), e.g. for progress output.

        Returns:
            The mean loss of every epoch, per layer.
        """
        history = []
        for depth, layer in enumerate(self.layers):
            report = (
                None if on_epoch is None else (lambda epoch, loss, depth=depth: on_epoch(depth, epoch, loss))
            )
            history.append(
                _train_epochs(
                    layer.parameters(),
                    batches,
                    lambda x, depth=depth: self.layer_loss(x, depth).total,
                    epochs,
                    lr,
                    optimizer,
                    report,
                )
            )
        return history

    def layer_loss(self, x: Tensor, depth: int) -> AutoencoderLoss:
        """The greedy loss of layer ``depth``: its CAE loss on the code of the (frozen) layers below."""
        with torch.no_grad():
            inputs = self.encode(x, depth)
        return self.layers[depth].loss(inputs)

    def fine_tune(
        self,
        batches: Batches,
        *,
        epochs: int = 10,
        lr: float = 1e-4,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
        on_epoch: Callable[[int, float], None] | None = None,
    ) -> list[float]:
        """Joint training of all layers on :meth:`loss`; returns the mean loss per epoch."""
        return _train_epochs(
            self.parameters(), batches, lambda x: self.loss(x).total, epochs, lr, optimizer, on_epoch
        )


class DeepContractiveEncoder(nn.Module):
    """Encoder layers h_l = φ(h_{l-1} W_lᵀ + b_l), l = 1..L, with the penalty of the whole stack.

    The penalty is ‖∂h_L/∂x_b‖²_F = ‖D_L W_L ⋯ D_1 W_1‖²_F per sample (not the sum
    of the layers' own penalties), exact or estimated as in
    :func:`fastcae.jacobian_penalty`, from the same forward pass as the code.

    Args:
        sizes: [D, H_1, ..., H_L], at least two entries.
        activation, bias, backend: as in :class:`ContractiveEncoder`, shared by every layer
            (the backend serves the one-layer exact case, which is the fused op).
        estimator: "auto", "exact" or "projection".
        n_projections: directions per sample of the projection estimate.

    Shapes: ``forward(x)`` takes x (B, D) and returns
    ``EncoderOutput(code (B, H_L), penalty (B,))``; ``encode(x)`` the code alone.
    """

    def __init__(
        self,
        sizes: list[int],
        *,
        activation: str = "sigmoid",
        bias: bool = True,
        estimator: str = "auto",
        n_projections: int = 1,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"sizes must list at least the input and one hidden size, got {sizes!r}")
        self.estimator = check_choice("estimator", estimator, ESTIMATORS)
        self.n_projections = check_positive_int("n_projections", n_projections)
        factory = {"device": device, "dtype": dtype}
        self.layers = nn.ModuleList(
            ContractiveEncoder(
                sizes[i], sizes[i + 1], activation=activation, bias=bias, backend=backend, **factory
            )
            for i in range(len(sizes) - 1)
        )

    @property
    def sizes(self) -> list[int]:
        return [self.layers[0].in_features, *(layer.hidden_features for layer in self.layers)]

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> EncoderOutput:
        """Code and whole-encoder penalty; ``generator`` seeds the projections (on x's device)."""
        layers = encoder_layers(self)
        return encode_chain(
            layers, x, estimator=self.estimator, n_projections=self.n_projections, generator=generator
        )

    def encode(self, x: Tensor) -> Tensor:
        """The code h_L (B, H_L), without the penalty."""
        for layer in self.layers:
            x = ACTIVATIONS[layer.activation].forward(F.linear(x, layer.weight, layer.bias))
        return x

    def extra_repr(self) -> str:
        return f"estimator={self.estimator!r}, n_projections={self.n_projections}"


class DeepContractiveAutoencoder(nn.Module):
    """A deep autoencoder trained jointly with the contractive penalty of its whole encoder.

    Encoder: :class:`DeepContractiveEncoder` over sizes = [D, H_1, ..., H_L]. The
    decoder mirrors it, r_{l-1} = φ(r_l W'_l + c_{l-1}) for l = L..2 and
    r = ψ(r_1 W'_1 + c_0), with W'_l = W_l (tied, the default) or separate weights:

        loss = mean_b L(x_b, r_b) + λ mean_b ‖∂h_L/∂x_b‖²_F

    Unlike :class:`StackedContractiveAutoencoder`, whose layers are each
    contractive on their own code, the penalty here is on the Jacobian of the
    whole encoder, the quantity a deep CAE means to keep small.

    Args:
        sizes: [D, H_1, ..., H_L], at least two entries.
        activation: φ of every encoder layer and of the decoder's hidden layers.
        decoder_activation: ψ of the output, "sigmoid" (binary cross-entropy,
            inputs in [0, 1]) or "identity" (squared error).
        tied: decode with the encoder's weights, transposed.
        contractive_weight: λ (0: a plain deep autoencoder; the penalty is then not computed).
        estimator, n_projections: how the penalty is computed (:func:`fastcae.jacobian_penalty`).
        backend: passed to :class:`ContractiveEncoder`.
    """

    def __init__(
        self,
        sizes: list[int],
        *,
        activation: str = "sigmoid",
        decoder_activation: str = "sigmoid",
        tied: bool = True,
        contractive_weight: float = 0.1,
        estimator: str = "auto",
        n_projections: int = 1,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.encoder = DeepContractiveEncoder(
            sizes,
            activation=activation,
            estimator=estimator,
            n_projections=n_projections,
            backend=backend,
            **factory,
        )
        self.decoder_activation = check_choice("decoder_activation", decoder_activation, DECODER_ACTIVATIONS)
        self.tied = bool(tied)
        self.contractive_weight = check_non_negative("contractive_weight", contractive_weight)
        # decoder_weights[l] maps code l+1 back to code l: (sizes[l+1], sizes[l]), as W_{l+1}.
        self.decoder_weights = (
            None
            if tied
            else nn.ParameterList(
                nn.init.xavier_uniform_(torch.empty(sizes[i + 1], sizes[i], **factory))
                for i in range(len(sizes) - 1)
            )
        )
        self.decoder_biases = nn.ParameterList(torch.zeros(size, **factory) for size in sizes[:-1])

    @property
    def sizes(self) -> list[int]:
        return self.encoder.sizes

    @property
    def in_features(self) -> int:
        return self.sizes[0]

    @property
    def hidden_features(self) -> int:
        return self.sizes[-1]

    def encode(self, x: Tensor) -> Tensor:
        """The code h_L (B, H_L)."""
        return self.encoder.encode(x)

    def decoder_logits(self, code: Tensor) -> Tensor:
        """The decoder's output before ψ (B, D), from the code (B, H_L)."""
        weights = (
            [layer.weight for layer in self.encoder.layers]
            if self.decoder_weights is None
            else list(self.decoder_weights)
        )
        hidden = ACTIVATIONS[self.encoder.layers[0].activation].forward
        for level in range(len(weights) - 1, 0, -1):
            code = hidden(torch.addmm(self.decoder_biases[level], code, weights[level]))
        return torch.addmm(self.decoder_biases[0], code, weights[0])

    def decode(self, code: Tensor) -> Tensor:
        """r (B, D) from the code (B, H_L)."""
        logits = self.decoder_logits(code)
        return torch.sigmoid(logits) if self.decoder_activation == "sigmoid" else logits

    def reconstruction_error(self, logits: Tensor, x: Tensor) -> Tensor:
        """Per-sample reconstruction error (B,), as :meth:`ContractiveAutoencoder.reconstruction_error`."""
        return _reconstruction_error(logits, x, self.decoder_activation)

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> AutoencoderOutput:
        code, penalty = self.encoder(x, generator=generator)
        return AutoencoderOutput(self.decode(code), code, penalty)

    def loss(self, x: Tensor, *, generator: torch.Generator | None = None) -> AutoencoderLoss:
        """Reconstruction error + λ·mean whole-encoder penalty, with the parts.

        ``generator`` seeds the projections of the estimate (on x's device).
        """
        if self.contractive_weight > 0:
            code, penalty = self.encoder(x, generator=generator)
            contractive = penalty.mean()
        else:
            code = self.encoder.encode(x)
            contractive = x.new_zeros((), dtype=acc_dtype(x.dtype))
        reconstruction = self.reconstruction_error(self.decoder_logits(code), x).mean()
        total = reconstruction + self.contractive_weight * contractive
        return AutoencoderLoss(total, reconstruction.detach(), contractive.detach(), total.new_zeros(()))

    def extra_repr(self) -> str:
        return (
            f"decoder_activation={self.decoder_activation!r}, tied={self.tied}, "
            f"contractive_weight={self.contractive_weight}"
        )


def _reconstruction_error(logits: Tensor, x: Tensor, decoder_activation: str) -> Tensor:
    """:meth:`ContractiveAutoencoder.reconstruction_error` for a decoder activation ψ,
    summed over every dimension but the batch (features, or channels and pixels)."""
    if decoder_activation == "sigmoid":
        errors = F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none")
    else:
        errors = (logits - x).pow(2)
    return errors.flatten(1).sum(dim=1)


def _train_epochs(
    parameters: Iterable[nn.Parameter],
    batches: Batches,
    loss_of: Callable[[Tensor], Tensor],
    epochs: int,
    lr: float,
    optimizer: Callable[..., torch.optim.Optimizer],
    on_epoch: Callable[[int, float], None] | None,
) -> list[float]:
    """Minimize loss_of over the batches for some epochs; returns each epoch's mean loss."""
    opt = optimizer(parameters, lr=lr)
    losses = []
    for epoch in range(epochs):
        total, count = 0.0, 0
        for x in batches():
            loss = loss_of(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + loss.item(), count + 1
        losses.append(total / max(count, 1))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    return losses


__all__ = [
    "AutoencoderLoss",
    "AutoencoderOutput",
    "ContractiveAutoencoder",
    "ContractiveEncoder",
    "DeepContractiveAutoencoder",
    "DeepContractiveEncoder",
    "StackedContractiveAutoencoder",
]
