"""Training a contractive autoencoder end to end: data, loop, evaluation, files.

Three models: one CAE layer (``hidden``); with ``layers`` = [D, H_1, ..., H_L],
a deep CAE trained jointly with the penalty of its whole encoder (``joint``,
:class:`~fastcae.nn.DeepContractiveAutoencoder`) or a stack of CAEs trained
greedily, ``epochs`` per layer, each on the code of the frozen layers below
(:class:`~fastcae.nn.StackedContractiveAutoencoder`).

Runs in one process or, under torchrun, with DistributedDataParallel (NCCL on
GPUs, gloo on CPUs). Every epoch draws one seeded permutation of the training
set, shared by all ranks, and cuts it into global batches; each rank takes
its share of every global batch and scales its loss so that DDP's gradient
average equals the gradient of the global batch's mean loss. A run with N
processes therefore follows the same trajectory as one process with the same
global batches (up to floating-point summation order). Only rank 0 writes.

Files written to ``out`` (rank 0):
    checkpoint.pt   model state, the config and the dataset's description
    metrics.csv     one row per epoch: loss parts, held-out error and ‖J‖_F (of the whole
                    encoder, exact, on the first 1024 held-out samples)
    metrics.json    the config, the last epoch, the contraction report and
                    the linear-probe accuracies (raw inputs vs codes)
"""

from __future__ import annotations

import copy
import csv
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ._validation import check_choice, check_non_negative, check_positive, check_positive_int
from .data import Dataset, load_dataset, train_test_split
from .deep import ESTIMATORS, encoder_layers, jacobian_penalty
from .functional import EncoderOutput
from .geometry import contraction_report, explicit_contraction_report
from .nn import (
    ContractiveAutoencoder,
    ConvContractiveAutoencoder,
    DeepContractiveAutoencoder,
    StackedContractiveAutoencoder,
)

CHECKPOINT_NAME = "checkpoint.pt"
MODELS: tuple[str, ...] = ("dense", "conv")
# Held-out samples whose exact ‖J‖_F is reported every epoch (for deep encoders
# the exact penalty costs far more than a forward pass).
JACOBIAN_EVAL_SAMPLES = 1024
# Held-out samples whose full Jacobian spectrum the summary of a conv model reports.
CONV_CONTRACTION_SAMPLES = 32


class FlatImageAutoencoder(nn.Module):
    """A :class:`ConvContractiveAutoencoder` on flattened images: x (B, D) with
    D = h·w, seen as (B, 1, h, w). It has the dense model's interface
    (``encoder(x)`` -> (code (B, U), penalty), ``decoder_logits(code)`` -> (B, D),
    ``reconstruction_error``, ``loss``), so the training loop, its evaluation
    and DDP treat both alike."""

    def __init__(self, model: ConvContractiveAutoencoder, image_shape: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.image_shape = tuple(image_shape)
        self.in_features = self.image_shape[0] * self.image_shape[1]
        enc = model.encoder
        out_size = tuple(
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip(
                self.image_shape, enc.padding, enc.dilation, enc.kernel_size, enc.stride, strict=True
            )
        )
        self.code_shape = (enc.out_channels, *out_size)

    def images(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], 1, *self.image_shape)

    def encoder(self, x: Tensor) -> EncoderOutput:
        code, penalty = self.model.encoder(self.images(x))
        return EncoderOutput(code.flatten(1), penalty)

    def decoder_logits(self, code: Tensor) -> Tensor:
        codes = code.view(code.shape[0], *self.code_shape)
        return self.model.decoder_logits(codes, self.image_shape).flatten(1)

    def reconstruction_error(self, logits: Tensor, x: Tensor) -> Tensor:
        return self.model.reconstruction_error(logits, x)

    def encode(self, x: Tensor) -> Tensor:
        """The code alone (B, U), flattened."""
        return self.encoder(x).code

    def loss(self, x: Tensor, *, generator: torch.Generator | None = None):
        return self.model.loss(self.images(x))


Autoencoder = (
    ContractiveAutoencoder | DeepContractiveAutoencoder | StackedContractiveAutoencoder | FlatImageAutoencoder
)


@dataclass
class TrainConfig:
    """Everything that defines a training run (the CLI's flags)."""

    dataset: str = "digits"
    model: str = "dense"  # "conv": a ConvContractiveAutoencoder on the dataset's images
    hidden: int = 256  # hidden units (dense) or channels (conv)
    kernel: int = 3  # conv only: kernel size, stride and zero padding
    stride: int = 1
    padding: int = 1
    activation: str = "sigmoid"
    decoder_activation: str = "sigmoid"
    contractive_weight: float = 0.1
    hessian_weight: float = 0.0
    tied: bool = True
    epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    test_fraction: float = 0.2
    device: str = "auto"
    backend: str = "auto"
    out: str | None = None
    layers: list[int] | None = None
    joint: bool = False
    estimator: str = "auto"
    n_projections: int = 1

    def validate(self) -> None:
        """Raise ValueError naming the first bad field (the CLI turns it into a one-line error)."""
        check_choice("--model", self.model, MODELS)
        check_positive_int("--hidden", self.hidden)
        check_positive_int("--kernel", self.kernel)
        check_positive_int("--stride", self.stride)
        if isinstance(self.padding, bool) or not isinstance(self.padding, int) or self.padding < 0:
            raise ValueError(f"--padding must be a non-negative integer, got {self.padding!r}")
        if self.model == "conv" and not self.tied:
            raise ValueError("--untied applies to --model dense only (the conv decoder is the tied kernel)")
        if self.model == "conv" and self.hessian_weight > 0:
            raise ValueError("--hessian-weight applies to --model dense only")
        check_positive_int("--epochs", self.epochs)
        check_positive_int("--batch-size", self.batch_size)
        check_non_negative("--lambda", self.contractive_weight)
        check_non_negative("--hessian-weight", self.hessian_weight)
        check_positive("--lr", self.lr)
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"--device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        check_choice("--estimator", self.estimator, ESTIMATORS)
        check_positive_int("--projections", self.n_projections)
        if self.layers is None:
            if self.joint:
                raise ValueError("--joint trains a deep encoder: give its sizes with --layers D,H1,H2,...")
            return
        if len(self.layers) < 2:
            raise ValueError(
                f"--layers must list the input size and at least one hidden size, got {self.layers}"
            )
        for size in self.layers:
            check_positive_int("--layers", size)
        if self.model == "conv":
            raise ValueError("--layers builds a dense deep encoder; it cannot be combined with --model conv")
        if self.hessian_weight > 0:
            raise ValueError("--hessian-weight is for one layer; it cannot be combined with --layers")


@dataclass
class EpochMetrics:
    epoch: int
    loss: float
    reconstruction: float
    contractive: float
    hessian: float
    test_reconstruction: float
    test_jacobian_frobenius: float
    seconds: float


@dataclass
class TrainResult:
    model: Autoencoder
    history: list[EpochMetrics]
    summary: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: rank, world size and device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> Distributed:
    """Join the torchrun process group if there is one (WORLD_SIZE > 1), and pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name == "cuda" and world_size > 1:
        device_name = f"cuda:{local_rank}"
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device_name} was asked for but no CUDA device is available")
    if world_size > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world_size, device)


class _LossModule(nn.Module):
    """Wraps the autoencoder so DDP sees the loss computation as its forward: the model's
    loss, or for a stack in greedy training, the loss of layer ``stage``."""

    def __init__(self, model: Autoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, generator: torch.Generator | None = None, stage: int | None = None):
        if stage is not None:
            return self.model.layer_loss(x, stage)
        return self.model.loss(x, generator=generator)


def global_batches(num_samples: int, batch_size: int, seed: int, epoch: int) -> list[Tensor]:
    """The epoch's global batches of sample indices, identical on every rank."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(num_samples, generator=generator)
    return list(order.split(batch_size))


def _evaluate(model: Autoencoder, x: Tensor, batch_size: int = 1024) -> tuple[float, float]:
    """Mean reconstruction error on x and mean ‖J‖_F (the square root of the whole encoder's
    exact penalty) on its first JACOBIAN_EVAL_SAMPLES samples."""
    errors = []
    with torch.no_grad():
        for chunk in x.split(batch_size):
            errors.append(model.reconstruction_error(model.decoder_logits(model.encode(chunk)), chunk))
        if not errors:
            return float("nan"), float("nan")
        if isinstance(model, FlatImageAutoencoder):  # the conv layer's own penalty is exact
            penalty = model.encoder(x[:JACOBIAN_EVAL_SAMPLES]).penalty
        else:
            penalty = jacobian_penalty(model, x[:JACOBIAN_EVAL_SAMPLES], estimator="exact", reduction="none")
    return torch.cat(errors).mean().item(), penalty.sqrt().mean().item()


def encode_all(model: Autoencoder, x: Tensor, batch_size: int = 1024) -> Tensor:
    with torch.no_grad():
        return torch.cat([model.encode(chunk) for chunk in x.split(batch_size)])


def linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, seed: int = 0) -> float:
    """Held-out accuracy of a logistic regression fit on (train_x, train_y)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x.double().cpu().numpy())
    classifier = LogisticRegression(max_iter=2000, random_state=seed)
    classifier.fit(scaler.transform(train_x.double().cpu().numpy()), train_y.cpu().numpy())
    return float(classifier.score(scaler.transform(test_x.double().cpu().numpy()), test_y.cpu().numpy()))


def build_model(
    config: TrainConfig, in_features: int, device: torch.device, image_shape: tuple[int, int] | None = None
) -> Autoencoder:
    """The model the config describes: one CAE layer, a conv CAE on the images, a joint
    deep CAE, or a CAE stack."""
    if config.model == "conv":
        if image_shape is None:
            raise ValueError(f"--model conv needs image data; dataset {config.dataset!r} has no image shape")
        conv = ConvContractiveAutoencoder(
            1,
            config.hidden,
            config.kernel,
            config.stride,
            config.padding,
            activation=config.activation,
            decoder_activation=config.decoder_activation,
            contractive_weight=config.contractive_weight,
            backend=config.backend,
            device=device,
        )
        return FlatImageAutoencoder(conv, image_shape)
    if config.layers is not None:
        if config.layers[0] != in_features:
            raise ValueError(
                f"--layers starts with {config.layers[0]} inputs but the dataset has {in_features} features"
            )
        common = {
            "activation": config.activation,
            "decoder_activation": config.decoder_activation,
            "tied": config.tied,
            "contractive_weight": config.contractive_weight,
            "backend": config.backend,
        }
        if config.joint:
            return DeepContractiveAutoencoder(
                list(config.layers),
                estimator=config.estimator,
                n_projections=config.n_projections,
                device=device,
                **common,
            )
        return StackedContractiveAutoencoder(list(config.layers), **common).to(device)
    return ContractiveAutoencoder(
        in_features,
        config.hidden,
        activation=config.activation,
        decoder_activation=config.decoder_activation,
        tied=config.tied,
        contractive_weight=config.contractive_weight,
        hessian_weight=config.hessian_weight,
        backend=config.backend,
        device=device,
    )


def train(config: TrainConfig, *, progress: bool = True, data: Dataset | None = None) -> TrainResult:
    """Train a CAE as configured; write files to config.out (rank 0) and return the model and metrics."""
    config.validate()
    dist = setup_distributed(config.device)
    dataset = data if data is not None else load_dataset(config.dataset)
    train_set, test_set = train_test_split(dataset, config.test_fraction, seed=config.seed)
    train_x = train_set.x.to(dist.device)
    test_x = test_set.x.to(dist.device)

    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = build_model(config, dataset.x.shape[1], dist.device, dataset.image_shape)
    # A stack trains layer by layer (config.epochs each); the others in one stage.
    greedy = isinstance(model, StackedContractiveAutoencoder)
    stages = [e // config.epochs for e in range(config.epochs * len(model.layers))] if greedy else None
    epochs = config.epochs if stages is None else len(stages)
    loss_module: nn.Module = _LossModule(model)
    if dist.world_size > 1:
        device_ids = [dist.device.index] if dist.device.type == "cuda" else None
        # In greedy training the other layers' parameters take no part in a stage's loss.
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=device_ids, find_unused_parameters=greedy
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    noise = torch.Generator(device=dist.device).manual_seed(config.seed + 7919 * dist.rank)

    history: list[EpochMetrics] = []
    for epoch in range(epochs):
        start = time.perf_counter()
        stage = None if stages is None else stages[epoch]
        batches = global_batches(train_x.shape[0], config.batch_size, config.seed, epoch)
        bar = _progress_bar(len(batches), epoch, epochs, enabled=progress and dist.is_main)
        sums = torch.zeros(4, dtype=torch.float64)
        seen = 0
        for indices in batches:
            local = indices[dist.rank :: dist.world_size].to(dist.device)
            parts = loss_module(train_x[local], noise, stage)
            # DDP averages gradients over ranks; weighting by the local share makes
            # that average the gradient of the global batch's mean loss.
            scale = local.numel() * dist.world_size / indices.numel()
            optimizer.zero_grad(set_to_none=True)
            (parts.total * scale).backward()
            optimizer.step()
            values = torch.stack(
                [parts.total.detach(), parts.reconstruction, parts.contractive, parts.hessian]
            )
            sums += values.double().cpu() * local.numel()
            seen += local.numel()
            if bar is not None:
                bar.set_postfix(
                    loss=f"{values[0]:.4g}", rec=f"{values[1]:.4g}", jac=f"{values[2]:.4g}", refresh=False
                )
                bar.update()
        if dist.world_size > 1:
            totals = torch.cat([sums, torch.tensor([float(seen)], dtype=torch.float64)]).to(dist.device)
            torch.distributed.all_reduce(totals)
            sums, seen = totals[:4].cpu(), int(totals[4].item())
        means = (sums / max(seen, 1)).tolist()
        test_error, test_frobenius = _evaluate(model, test_x)
        history.append(
            EpochMetrics(epoch + 1, *means, test_error, test_frobenius, time.perf_counter() - start)
        )
        if bar is not None:
            bar.set_postfix(
                loss=f"{means[0]:.4g}", test_rec=f"{test_error:.4g}", test_jac=f"{test_frobenius:.4g}"
            )
            bar.close()

    summary = _summarize(config, model, dataset, train_set, test_set, history) if dist.is_main else {}
    if dist.is_main and config.out:
        write_run(Path(config.out), config, model, dataset, history, summary)
    if dist.world_size > 1:
        torch.distributed.barrier()
    return TrainResult(model, history, summary)


def _progress_bar(total: int, epoch: int, epochs: int, *, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=True, dynamic_ncols=True)


def _contraction(model, x: Tensor):
    """The contraction report of a dense model (closed form, every sample) or of a
    conv model (explicit float64 Jacobians of the first CONV_CONTRACTION_SAMPLES)."""
    if isinstance(model, FlatImageAutoencoder):
        wide = copy.deepcopy(model).double()
        return explicit_contraction_report(wide.encode, x[:CONV_CONTRACTION_SAMPLES].double())
    return contraction_report(model, x)


def _summarize(config, model, dataset, train_set, test_set, history) -> dict:
    device = next(model.parameters()).device
    report = _contraction(model, test_set.x.to(device))
    layers = encoder_layers(model)
    weights = [layer.weight.detach() for layer in layers] if layers else [model.model.encoder.weight.detach()]
    summary = {
        "final": asdict(history[-1]),
        "contraction": {
            "jacobian_frobenius_mean": report.frobenius_mean,
            "fraction_singular_values_below_one": report.fraction_below_one,
            "top_singular_values": list(report.top_singular_values),
        },
        "encoder_weight_norm": torch.stack([w.norm() for w in weights]).norm().item(),
    }
    if dataset.y is not None:
        train_codes = encode_all(model, train_set.x.to(device))
        test_codes = encode_all(model, test_set.x.to(device))
        summary["linear_probe"] = {
            "raw_inputs": linear_probe(train_set.x, train_set.y, test_set.x, test_set.y, config.seed),
            "codes": linear_probe(train_codes, train_set.y, test_codes, test_set.y, config.seed),
        }
    return summary


def write_run(out: Path, config, model, dataset, history, summary) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "config": asdict(config),
            "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "in_features": model.in_features,
            "dataset": {"name": dataset.name, "image_shape": dataset.image_shape},
        },
        out / CHECKPOINT_NAME,
    )
    with open(out / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(history[0])))
        writer.writeheader()
        writer.writerows(asdict(row) for row in history)
    with open(out / "metrics.json", "w") as handle:
        json.dump({"config": asdict(config), **summary}, handle, indent=2)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Autoencoder, dict]:
    """The model saved by :func:`train` and the checkpoint's other contents (config, dataset).

    The model is rebuilt with backend="auto", so a checkpoint trained with, say,
    the "cuda" backend loads on any machine.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    config = TrainConfig(**{**checkpoint["config"], "backend": "auto"})
    image_shape = checkpoint["dataset"]["image_shape"]
    model = build_model(
        config, checkpoint["in_features"], torch.device(device), tuple(image_shape) if image_shape else None
    )
    model.load_state_dict(checkpoint["model_state"])
    model.eval()
    return model, checkpoint
