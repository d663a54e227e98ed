"""The whole-encoder penalty (fastcae.jacobian_penalty) against its anchors, in one command.

    python -m benchmarks.deep [--out-dir benchmarks/results] [--rounds 15] [--draws 200]

The problem: an MNIST-sized deep encoder, sizes 784-500-250, sigmoid, B = 256,
float32, in a deep autoencoder with a tied, mirrored decoder
(fastcae.nn.DeepContractiveAutoencoder; binary cross-entropy with logits),
λ = 0.1, inputs uniform in [0, 1], the model's initial weights. Measured:

- one training step (loss, backward; no optimizer) with the penalty estimated
  from n = 1 and n = 4 random projections by fastcae ("projection": orthonormal
  directions on the side of lower variance per cost, here the input side, through
  the layers' slopes from the same forward pass), by JacobianReg (Hoffman,
  Roberts & Yaida 2019, facebookresearch/jacobian_regularizer; its published
  algorithm reimplemented here: per sample, n directions v uniform on the unit
  sphere of the code space, each ‖vᵀJ‖² a vector-Jacobian product through
  autograd with create_graph, scaled by H/n), and with no penalty (λ = 0, the
  plain deep autoencoder): time and peak extra memory;
- the exact penalty's forward and backward (to the encoder's parameters):
  fastcae's per-sample chain through W_1 W_1ᵀ against torch.func.vmap(jacrev)
  of the encoder, both checked against each other first (values and gradients);
- the quality of the estimates: their relative standard error per sample
  (std over ``--draws`` draws / the exact value, averaged over the batch), and
  that error at equal cost, RSE × sqrt(extra time of the step over the plain
  step / JacobianReg's extra time): what it would be if the projections were
  bought with JacobianReg's time; with the flatness ρ = Σσ⁴/(Σσ²)² of the
  Jacobians' spectra (1/H_L for a flat one), on which the two sides' variances
  depend (DEVELOPERS.md, "Deep encoders").

CPU goals (the issue's): a training step with fastcae's projection estimate at
n = 1 ≤ 1.5× the plain deep autoencoder's step; the exact penalty's forward +
backward ≥ 2× faster than vmap(jacrev), with a lower peak memory. And the step
faster than JacobianReg's at the same n.

Timing is ``fastcae._timing.interleaved_medians``; each TARGET ratio comes from
its own interleaved run of the two methods it compares (benchmarks/targets.py's
CPU convention). Memory is ``benchmarks.measure.peak_extra_memory``. Every line
is printed and appended to ``<device>-deep.txt`` and ``<device>-deep.jsonl`` in
--out-dir (or --jsonl alone) as soon as it is measured; nothing here asserts.
FASTCAE_BENCH_QUICK=1 runs a tiny stand-in problem (a smoke test of the script).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

import fastcae
from benchmarks.cases import QUICK
from benchmarks.measure import device_name, device_slug, keep_freed_memory, peak_extra_memory
from benchmarks.targets import Report
from fastcae._timing import interleaved_medians
from fastcae.deep import chain_jacobian, encoder_layers
from fastcae.nn import DeepContractiveAutoencoder

SIZES = [48, 32, 16] if QUICK else [784, 500, 250]
BATCH = 32 if QUICK else 256
LAMBDA = 0.1
PROJECTIONS = (1, 4)


def make_models(device: torch.device) -> dict[str, DeepContractiveAutoencoder]:
    """The same initial weights with no penalty, fastcae's estimate at each n, and the exact penalty."""
    torch.manual_seed(0)
    plain = DeepContractiveAutoencoder(SIZES, contractive_weight=0.0, device=device)
    models = {"plain": plain}
    for n in PROJECTIONS:
        models[f"projection-{n}"] = DeepContractiveAutoencoder(
            SIZES, contractive_weight=LAMBDA, estimator="projection", n_projections=n, device=device
        )
    models["exact"] = DeepContractiveAutoencoder(
        SIZES, contractive_weight=LAMBDA, estimator="exact", device=device
    )
    for model in models.values():
        model.load_state_dict(plain.state_dict())
    return models


def jacobian_reg_penalty(model: DeepContractiveAutoencoder, x: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The code (B, H) and JacobianReg's estimate of ‖J_b‖²_F (B,): (H/n) Σ_i ‖v_iᵀ J_b‖², v_i uniform
    on the unit sphere of R^H, independent, each through a vector-Jacobian product kept for the
    backward pass (autograd.grad with create_graph); x must require grad."""
    inputs = x.detach().requires_grad_()
    code = model.encode(inputs)
    total = code.new_zeros(code.shape[0])
    for _ in range(count):
        direction = torch.randn_like(code)
        direction = direction / direction.norm(dim=1, keepdim=True)
        (pullback,) = torch.autograd.grad(code, inputs, direction, create_graph=torch.is_grad_enabled())
        total = total + pullback.square().sum(1)
    return code, total * (code.shape[1] / count)


def step_methods(models: dict[str, DeepContractiveAutoencoder], x: Tensor) -> dict[str, Callable[[], object]]:
    """One training step each (loss and backward, gradients left in the parameters)."""

    def step(model: DeepContractiveAutoencoder, loss_of: Callable[[], Tensor]) -> Callable[[], object]:
        def run() -> object:
            for parameter in model.parameters():
                parameter.grad = None
            loss_of().backward()
            return None

        return run

    def jacobian_reg_loss(model: DeepContractiveAutoencoder, count: int) -> Tensor:
        code, penalty = jacobian_reg_penalty(model, x, count)
        reconstruction = model.reconstruction_error(model.decoder_logits(code), x).mean()
        return reconstruction + LAMBDA * penalty.mean()

    methods = {"plain deep AE": step(models["plain"], lambda: models["plain"].loss(x).total)}
    for n in PROJECTIONS:
        model = models[f"projection-{n}"]
        methods[f"fastcae projection n={n}"] = step(model, lambda model=model: model.loss(x).total)
        methods[f"JacobianReg n={n}"] = step(model, lambda model=model, n=n: jacobian_reg_loss(model, n))
    return methods


def exact_methods(model: DeepContractiveAutoencoder, x: Tensor) -> dict[str, Callable[[], tuple]]:
    """The exact penalty's forward and backward, returning (penalty, gradients of the encoder)."""
    parameters = list(model.encoder.parameters())

    def with_gradients(penalty_of: Callable[[], Tensor]) -> Callable[[], tuple]:
        def run() -> tuple:
            penalty = penalty_of()
            return (penalty.detach(), *torch.autograd.grad(penalty.mean(), parameters))

        return run

    def per_sample(sample: Tensor) -> Tensor:
        return model.encode(sample.unsqueeze(0)).squeeze(0)

    def vmap_jacrev() -> Tensor:
        return torch.func.vmap(torch.func.jacrev(per_sample))(x).square().sum((1, 2))

    return {
        "fastcae exact": with_gradients(
            lambda: fastcae.jacobian_penalty(model.encoder, x, estimator="exact", reduction="none")
        ),
        "vmap(jacrev)": with_gradients(vmap_jacrev),
    }


def relative_error(got: tuple, want: tuple) -> float:
    return max(
        ((g - w).abs().max() / w.abs().max().clamp_min(1e-30)).item() for g, w in zip(got, want, strict=True)
    )


def spectrum_flatness(model: DeepContractiveAutoencoder, x: Tensor) -> float:
    """Mean over samples of ρ = Σσ⁴/(Σσ²)² of the whole encoder's Jacobian."""
    squares = torch.linalg.svdvals(chain_jacobian(encoder_layers(model), x).double()).square()
    return (squares.square().sum(-1) / squares.sum(-1).square()).mean().item()


def relative_standard_errors(
    models: dict[str, DeepContractiveAutoencoder], x: Tensor, draws: int
) -> dict[str, float]:
    """Per-sample std of each estimate over the draws / its exact value, averaged over the batch."""
    exact = fastcae.jacobian_penalty(models["exact"].encoder, x, estimator="exact", reduction="none").detach()
    errors = {}
    generator = torch.Generator(device=x.device).manual_seed(0)
    for n in PROJECTIONS:
        encoder = models[f"projection-{n}"].encoder
        with torch.no_grad():
            ours = torch.stack([encoder(x, generator=generator).penalty for _ in range(draws)])
        theirs = torch.stack(
            [jacobian_reg_penalty(models[f"projection-{n}"], x, n)[1].detach() for _ in range(draws)]
        )
        errors[f"fastcae projection n={n}"] = (ours.std(0) / exact).mean().item()
        errors[f"JacobianReg n={n}"] = (theirs.std(0) / exact).mean().item()
    return errors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--rounds", type=int, default=3 if QUICK else 15, help="interleaved rounds per timing"
    )
    parser.add_argument("--exact-rounds", type=int, default=2 if QUICK else 5)
    parser.add_argument(
        "--draws", type=int, default=20 if QUICK else 200, help="draws per estimate for the RSE"
    )
    parser.add_argument("--out-dir", default=None, help="append <device>-deep.txt and .jsonl here")
    parser.add_argument("--jsonl", default=None, help="append the JSON lines here (instead of --out-dir)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    stem = device_slug(device) + ("-quick" if QUICK else "") + "-deep"
    jsonl = (
        Path(args.jsonl) if args.jsonl else (Path(args.out_dir) / f"{stem}.jsonl" if args.out_dir else None)
    )
    text = Path(args.out_dir) / f"{stem}.txt" if args.out_dir else None
    report = Report(jsonl, text, device_name(device))
    sizes = "-".join(map(str, SIZES))
    allocator = keep_freed_memory()
    report.line(
        f"deep encoder {sizes} sigmoid, B = {BATCH}, float32, λ = {LAMBDA}, on {device_name(device)}, "
        f"torch {torch.__version__}" + (f"; {allocator}" if allocator else ""),
        kind="header",
    )
    torch.manual_seed(1)
    x = torch.rand(BATCH, SIZES[0], device=device)
    models = make_models(device)

    steps = step_methods(models, x)
    medians = interleaved_medians(steps, args.rounds, device)
    base = medians["plain deep AE"]
    for name, seconds in medians.items():
        memory = peak_extra_memory(steps[name], device)
        report.line(
            f"  step {name:26s} {seconds * 1e3:9.2f} ms  {seconds / base:5.2f}× plain  "
            f"peak +{(memory or 0) / 2**20:7.1f} MiB",
            kind="median",
            method=name,
            seconds=seconds,
            peak_bytes=memory,
        )
    pair = interleaved_medians(
        {k: steps[k] for k in ("plain deep AE", "fastcae projection n=1")}, args.rounds, device
    )
    ratio = pair["fastcae projection n=1"] / pair["plain deep AE"]
    report.target("step fastcae projection n=1 / plain deep AE (pair)", ratio, "goal ≤ 1.5", ratio <= 1.5)
    pair = interleaved_medians(
        {k: steps[k] for k in ("fastcae projection n=1", "JacobianReg n=1")}, args.rounds, device
    )
    speedup = pair["JacobianReg n=1"] / pair["fastcae projection n=1"]
    report.target("step JacobianReg n=1 / fastcae projection n=1 (pair)", speedup, "goal > 1", speedup > 1)

    exact = exact_methods(models["exact"], x)
    error = relative_error(exact["fastcae exact"](), exact["vmap(jacrev)"]())
    gate = f"  exact: fastcae vs vmap(jacrev), values and gradients: relative error {error:.1e}"
    report.line(gate, kind="gate", error=error)
    timing = interleaved_medians(exact, args.exact_rounds, device, warmup=1)
    memory = {name: peak_extra_memory(run, device) for name, run in exact.items()}
    for name, seconds in timing.items():
        report.line(
            f"  exact penalty fwd+bwd {name:14s} {seconds * 1e3:9.1f} ms  "
            f"peak +{(memory[name] or 0) / 2**20:7.1f} MiB",
            kind="median",
            method=name,
            seconds=seconds,
            peak_bytes=memory[name],
        )
    speedup = timing["vmap(jacrev)"] / timing["fastcae exact"]
    report.target("exact fwd+bwd vmap(jacrev) / fastcae (pair)", speedup, "goal ≥ 2", speedup >= 2)
    if memory["fastcae exact"] is not None and memory["vmap(jacrev)"]:
        ratio = memory["fastcae exact"] / memory["vmap(jacrev)"]
        report.target("exact peak memory fastcae / vmap(jacrev)", ratio, "goal < 1", ratio < 1)

    errors = relative_standard_errors(models, x, args.draws)
    extra = {name: medians[name] - base for name in errors}
    for name, rse in errors.items():
        cost = max(extra[name], 0.0) / max(extra["JacobianReg n=1"], 1e-9)
        report.line(
            f"  estimate {name:26s} RSE per sample {rse:.4f}  extra step time {extra[name] * 1e3:8.2f} ms  "
            f"RSE at JacobianReg n=1's cost {rse * cost**0.5:.4f}",
            kind="quality",
            method=name,
            rse=rse,
            extra_seconds=extra[name],
        )
    rho = spectrum_flatness(models["exact"], x[:32])
    flat = f"ρ of the Jacobians' spectra {rho:.4f} (flat: 1/H_L = {1 / SIZES[-1]:.4f}; one direction: 1)"
    report.line(f"  {flat}", kind="quality", rho=rho)
    met = sum(bool(t["met"]) for t in report.targets)
    report.line(f"done: {met} of {len(report.targets)} targets met", kind="done")


if __name__ == "__main__":
    main()
