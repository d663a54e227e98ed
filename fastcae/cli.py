"""The ``fastcae`` console script: info, train, tangents, filters, bench.

    fastcae info
    fastcae train --dataset digits --hidden 256 --lambda 0.1 --epochs 50 --out runs/cae
    fastcae train --dataset mnist.npz --layers 784,500,250 --joint --out runs/deep   (a deep CAE)
    fastcae train --dataset mnist.npz --layers 784,500,250 --out runs/stacked        (stacked CAEs)
    fastcae tangents --checkpoint runs/cae --out tangents.png
    fastcae filters --checkpoint runs/cae --out filters.png
    fastcae bench [pytest arguments]
    torchrun --nproc_per_node=2 -m fastcae train ...        (DistributedDataParallel)

Bad arguments give one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_USAGE = 2
# Imported by some commands only; a missing one is a one-line error, not a traceback.
OPTIONAL_PACKAGES = {"sklearn": "scikit-learn", "skimage": "scikit-image", "matplotlib": "matplotlib",
                     "pytest": "pytest", "pytest_benchmark": "pytest-benchmark"}  # fmt: skip


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the usage block too
        raise UsageError(f"{self.prog}: error: {message}")


def _argument(convert, check, name: str):
    """An argparse type: convert the text, then apply fastcae's own check of the value."""

    def parse(text: str):
        try:
            return check("value", convert(text))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("value ")) from None

    parse.__name__ = name
    return parse


def build_parser() -> argparse.ArgumentParser:
    from ._validation import check_int_in_range, check_non_negative, check_positive, check_positive_int
    from .activations import ACTIVATION_NAMES
    from .deep import ESTIMATORS
    from .nn import DECODER_ACTIVATIONS

    _positive_int = _argument(int, check_positive_int, "positive integer")
    _non_negative_int = _argument(
        int, lambda name, v: check_int_in_range(name, v, 0, 2**31), "non-negative integer"
    )
    _non_negative_float = _argument(float, check_non_negative, "non-negative number")
    _positive_float = _argument(float, check_positive, "positive number")
    _sizes = _argument(_size_list, _check_sizes, "layer sizes")

    parser = _Parser(prog="fastcae", description="Contractive autoencoders with a fused Jacobian penalty.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    commands.add_parser("info", help="versions, devices, backends and why others are unavailable")

    train = commands.add_parser("train", help="train a contractive autoencoder")
    train.add_argument("--dataset", default="digits", help="'digits', 'patches', or a .npy/.npz/IDX file")
    train.add_argument("--model", choices=("dense", "conv"), default="dense",
                       help="dense CAE, or a conv CAE on the dataset's images (tied decoder)")  # fmt: skip
    train.add_argument("--hidden", type=_positive_int, default=256, help="hidden units H (conv: channels)")
    train.add_argument("--kernel", type=_positive_int, default=3, help="conv: kernel size")
    train.add_argument("--stride", type=_positive_int, default=1, help="conv: stride")
    train.add_argument("--padding", type=_non_negative_int, default=1, help="conv: zero padding")
    train.add_argument("--layers", type=_sizes, default=None, metavar="D,H1,H2,...",
                       help="a deep encoder of these sizes (D first) instead of one layer of --hidden: "
                            "stacked CAEs trained greedily, --epochs per layer, or with --joint, "
                            "one deep CAE")  # fmt: skip
    train.add_argument("--joint", action="store_true",
                       help="train the --layers jointly, penalizing the whole Jacobian")  # fmt: skip
    train.add_argument("--estimator", choices=ESTIMATORS, default="auto",
                       help="--joint: the penalty exact, or estimated by random projections")  # fmt: skip
    train.add_argument("--projections", type=_positive_int, default=1,
                       help="--joint: random projections per sample of the estimate")  # fmt: skip
    train.add_argument("--activation", choices=ACTIVATION_NAMES, default="sigmoid")
    train.add_argument("--decoder-activation", choices=DECODER_ACTIVATIONS, default="sigmoid")
    train.add_argument("--lambda", dest="contractive_weight", type=_non_negative_float, default=0.1,
                       help="weight λ of the contractive penalty")  # fmt: skip
    train.add_argument("--hessian-weight", type=_non_negative_float, default=0.0, help="weight γ of CAE+H")
    train.add_argument("--untied", action="store_true", help="give the decoder its own weight")
    train.add_argument("--epochs", type=_positive_int, default=50)
    train.add_argument("--batch-size", type=_positive_int, default=128)
    train.add_argument("--lr", type=_positive_float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    train.add_argument("--backend", default="auto", help="fastcae backend (see `fastcae info`)")
    train.add_argument("--out", required=True, help="run folder: checkpoint.pt, metrics.csv, metrics.json")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")

    tangents = commands.add_parser("tangents", help="plot leading tangent vectors next to local-PCA tangents")
    tangents.add_argument("--checkpoint", required=True, help="a checkpoint.pt or the run folder holding it")
    tangents.add_argument("--out", required=True, help="PNG file to write")
    tangents.add_argument("--samples", type=_positive_int, default=6, help="number of input images")
    tangents.add_argument("--k", type=_positive_int, default=4, help="tangents per image")
    tangents.add_argument("--neighbors", type=_positive_int, default=12, help="neighbours for local PCA")

    filters = commands.add_parser("filters", help="plot the encoder weights as images")
    filters.add_argument("--checkpoint", required=True, help="a checkpoint.pt or the run folder holding it")
    filters.add_argument("--out", required=True, help="PNG file to write")
    filters.add_argument("--count", type=_positive_int, default=64, help="number of filters")

    commands.add_parser("bench", help="run the benchmark suite (pytest-benchmark); extra args go to pytest")
    return parser


def _size_list(text: str) -> list[int]:
    """ "784,500,250" -> [784, 500, 250]."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"value must be sizes separated by commas, like 784,500,250; got {text!r}") from None


def _check_sizes(name: str, sizes: list[int]) -> list[int]:
    from ._validation import check_positive_int

    if len(sizes) < 2:
        raise ValueError(f"{name} must list the input size and at least one hidden size, got {sizes}")
    for size in sizes:
        check_positive_int(name, size)
    return sizes


def cmd_info(args: argparse.Namespace) -> int:
    import platform

    import torch

    import fastcae
    from fastcae.ops import loading

    print(f"fastcae {fastcae.__version__}, torch {torch.__version__}, Python {platform.python_version()}")
    try:
        import triton

        print(f"triton {triton.__version__}")
    except ImportError:
        print("triton: not installed")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            memory = props.total_memory / 2**30
            print(f"cuda:{i}: {props.name} (sm_{props.major}{props.minor}, {memory:.0f} GiB)")
    else:
        print(f"CUDA: no device (torch built with CUDA {torch.version.cuda})")
    _C = loading.extension()
    if _C is not None:
        archs = f" for {_C.cuda_archs()}" if _C.built_with_cuda() else ""
        print(f"extension: built {'with' if _C.built_with_cuda() else 'without'} CUDA{archs}; "
              f"CPU kernels: {_C.cpu_kernel_isa()}")  # fmt: skip
    print("backends:")
    for name, reason in fastcae.backends().items():
        print(f"  {name:7s} {'available' if reason is None else 'unavailable: ' + reason}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .data import DatasetError
    from .train import TrainConfig, train

    config = TrainConfig(
        dataset=args.dataset,
        model=args.model,
        hidden=args.hidden,
        kernel=args.kernel,
        stride=args.stride,
        padding=args.padding,
        activation=args.activation,
        decoder_activation=args.decoder_activation,
        contractive_weight=args.contractive_weight,
        hessian_weight=args.hessian_weight,
        tied=not args.untied,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        backend=args.backend,
        out=args.out,
        layers=args.layers,
        joint=args.joint,
        estimator=args.estimator,
        n_projections=args.projections,
    )
    try:
        result = train(config, progress=not args.no_progress)
    except (DatasetError, ValueError) as exc:
        raise UsageError(f"fastcae train: error: {exc}") from exc
    if result.summary:
        _print_summary(result.summary, args.out)
    return 0


def _print_summary(summary: dict, out: str) -> None:
    final, contraction = summary["final"], summary["contraction"]
    print(
        f"epoch {final['epoch']}: loss {final['loss']:.4g}, "
        f"held-out reconstruction {final['test_reconstruction']:.4g}"
    )
    print(
        f"contraction: mean ‖J‖_F {contraction['jacobian_frobenius_mean']:.4g}, "
        f"{100 * contraction['fraction_singular_values_below_one']:.1f}% of singular values < 1"
    )
    if "linear_probe" in summary:
        probe = summary["linear_probe"]
        print(f"linear probe accuracy: raw inputs {probe['raw_inputs']:.3f}, codes {probe['codes']:.3f}")
    print(f"wrote {out}/checkpoint.pt, metrics.csv, metrics.json")


def _load(checkpoint: str):
    from .data import DatasetError, load_dataset
    from .train import load_checkpoint

    try:
        model, contents = load_checkpoint(checkpoint)
        data = load_dataset(contents["config"]["dataset"])
    except (FileNotFoundError, DatasetError) as exc:
        raise UsageError(f"fastcae: error: {exc}") from exc
    image_shape = contents["dataset"]["image_shape"]
    if image_shape is None:
        raise UsageError(f"fastcae: error: dataset {data.name!r} has no image shape to draw")
    return model, data, tuple(image_shape)


def cmd_tangents(args: argparse.Namespace) -> int:
    from .deep import encoder_layers
    from .plots import plot_tangents

    model, data, image_shape = _load(args.checkpoint)
    layers = encoder_layers(model)
    if layers is None:
        raise UsageError("fastcae tangents: error: tangents are drawn for dense models (--model dense) only")
    if len(layers) > 1:
        raise UsageError("fastcae tangents: error: the checkpoint's encoder has several layers; tangents "
                         "are drawn for one-layer models")  # fmt: skip
    plot_tangents(model, data.x, image_shape, Path(args.out), samples=args.samples, k=args.k,
                  neighbors=args.neighbors)  # fmt: skip
    print(f"wrote {args.out}")
    return 0


def cmd_filters(args: argparse.Namespace) -> int:
    from .deep import encoder_layers
    from .plots import plot_filters

    model, _, image_shape = _load(args.checkpoint)
    layers = encoder_layers(model)
    if layers is not None:
        filters = layers[0].weight.detach()  # of a deep encoder, the filters on the input
    else:  # a conv model: its kernels (C_out, 1, k, k) as k × k images
        kernels = model.model.encoder.weight.detach()
        filters, image_shape = kernels.flatten(1), tuple(kernels.shape[2:])
    plot_filters(filters, image_shape, Path(args.out), count=args.count)
    print(f"wrote {args.out}")
    return 0


def cmd_bench(extra: Sequence[str]) -> int:
    import pytest

    suite = Path(__file__).resolve().parent.parent / "benchmarks"
    if not suite.is_dir():
        raise UsageError(
            "fastcae bench: error: the benchmark suite (benchmarks/) ships with the source checkout"
        )
    return int(pytest.main([str(suite), "-p", "no:cacheprovider", *extra]))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["bench"]:
            return cmd_bench(argv[1:])
        args = build_parser().parse_args(argv)
        handler = {"info": cmd_info, "train": cmd_train, "tangents": cmd_tangents, "filters": cmd_filters}
        return handler[args.command](args)
    except UsageError as exc:
        print(str(exc).splitlines()[0], file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as exc:
        root = (exc.name or "").split(".")[0]
        if root not in OPTIONAL_PACKAGES:
            raise
        print(f"fastcae: error: this command needs {OPTIONAL_PACKAGES[root]} "
              f"(pip install 'fastcae[toolkit]' installs the toolkit's extras)", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
