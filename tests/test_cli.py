"""The fastcae console script and the training loop, DDP included."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastcae.cli import main
from fastcae.train import TrainConfig, encode_all, load_checkpoint, train

QUICK_TRAIN = ["--hidden", "16", "--epochs", "2", "--batch-size", "64", "--device", "cpu", "--no-progress"]


def run_cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "fastcae", *args], capture_output=True, text=True, timeout=timeout
    )


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("torch", "naive", "cpu", "triton", "cuda"):
        assert f"  {name}" in out
    assert "fastcae 0.1.0" in out


def test_train_writes_checkpoint_metrics_and_reloads(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", *QUICK_TRAIN, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "linear probe accuracy" in printed and "of singular values < 1" in printed
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,loss,reconstruction,contractive") and len(rows) == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["hidden"] == 16 and metrics["final"]["epoch"] == 2
    assert 0.5 < metrics["linear_probe"]["codes"] <= 1 and 0.5 < metrics["linear_probe"]["raw_inputs"] <= 1
    assert 0 <= metrics["contraction"]["fraction_singular_values_below_one"] <= 1

    # The checkpoint reproduces the trained model's codes.
    model, contents = load_checkpoint(out)
    assert contents["dataset"] == {"name": "digits", "image_shape": (8, 8)}
    from fastcae.data import load_digits

    x = load_digits().x[:50]
    config = TrainConfig(hidden=16, epochs=2, batch_size=64, device="cpu")
    retrained = train(config, progress=False).model
    torch.testing.assert_close(encode_all(model, x), encode_all(retrained, x), rtol=0, atol=0)


@pytest.mark.parametrize("joint", [True, False], ids=["joint", "stacked"])
def test_train_a_deep_encoder_jointly_or_stacked(tmp_path, joint):
    from fastcae.nn import DeepContractiveAutoencoder, StackedContractiveAutoencoder

    out = tmp_path / "run"
    args = ["--layers", "64,24,12", *(["--joint", "--estimator", "projection"] if joint else [])]
    quick = ["--epochs", "2", "--batch-size", "64", "--device", "cpu", "--no-progress"]
    assert main(["train", "--dataset", "digits", *args, *quick, "--out", str(out)]) == 0
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + (2 if joint else 2 * 2)  # a stack trains --epochs per layer
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["layers"] == [64, 24, 12] and metrics["config"]["joint"] is joint
    assert 0 <= metrics["contraction"]["fraction_singular_values_below_one"] <= 1
    model, _ = load_checkpoint(out)
    assert isinstance(model, DeepContractiveAutoencoder if joint else StackedContractiveAutoencoder)
    assert encode_all(model, torch.rand(5, 64)).shape == (5, 12)
    assert main(["filters", "--checkpoint", str(out), "--out", str(tmp_path / "f.png"), "--count", "4"]) == 0


def test_train_loss_goes_down_and_lambda_contracts(tmp_path):
    data_args = {"hidden": 32, "epochs": 15, "batch_size": 64, "device": "cpu", "lr": 3e-3}
    contractive = train(TrainConfig(contractive_weight=1.0, **data_args), progress=False)
    plain = train(TrainConfig(contractive_weight=0.0, **data_args), progress=False)
    assert contractive.history[-1].loss < contractive.history[0].loss
    # The penalty's whole point: a smaller Jacobian than the same AE without it.
    assert contractive.history[-1].test_jacobian_frobenius < plain.history[-1].test_jacobian_frobenius


def test_train_on_a_user_npz_file(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "data.npz",
        x=rng.integers(0, 256, size=(90, 4, 4), dtype=np.uint8),
        y=rng.integers(0, 3, 90),
    )
    assert (
        main(["train", "--dataset", str(tmp_path / "data.npz"), *QUICK_TRAIN, "--out", str(tmp_path / "r")])
        == 0
    )
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["config"]["dataset"].endswith("data.npz")


def test_tangents_and_filters_figures(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *QUICK_TRAIN, "--out", str(out)]) == 0
    assert (
        main(["tangents", "--checkpoint", str(out), "--out", str(tmp_path / "t.png"), "--samples", "3"]) == 0
    )
    assert (
        main(["filters", "--checkpoint", str(out / "checkpoint.pt"), "--out", str(tmp_path / "f.png")]) == 0
    )
    for name in ("t.png", "f.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_a_conv_model_reload_and_draw_its_kernels(tmp_path):
    out = tmp_path / "conv"
    args = ["--model", "conv", "--hidden", "4", "--kernel", "3", "--stride", "2", "--padding", "1"]
    assert main(["train", *args, *QUICK_TRAIN[2:], "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["contraction"]["jacobian_frobenius_mean"]
    model, _ = load_checkpoint(out)
    x = torch.rand(5, 64)
    assert encode_all(model, x).shape == (5, 4 * 4 * 4)
    # The conv layer's penalty is the exact ‖J‖²_F of the model's flattened encoder.
    jacobian = torch.func.vmap(torch.func.jacrev(lambda s: model.encode(s.unsqueeze(0))[0]))(x)
    torch.testing.assert_close(model.encoder(x).penalty, jacobian.pow(2).sum((1, 2)), rtol=1e-4, atol=1e-6)
    assert main(["filters", "--checkpoint", str(out), "--out", str(tmp_path / "k.png")]) == 0
    assert main(["tangents", "--checkpoint", str(out), "--out", str(tmp_path / "t.png")]) == 2


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["train", "--dataset", "mnist-please", "--out", "x"], "unknown dataset 'mnist-please'"),
        (["train", "--dataset", "/no/such/file.npy", "--out", "x"], "/no/such/file.npy"),
        (["train", "--lambda", "-0.5", "--out", "x"], "--lambda: must be a non-negative number"),
        (["train", "--hidden", "0", "--out", "x"], "--hidden: must be a positive integer"),
        (["train", "--hidden", "many", "--out", "x"], "--hidden"),
        (["train", "--activation", "gelu", "--out", "x"], "--activation"),
        (["train", "--device", "tpu", "--out", "x"], "--device"),
        (["train"], "--out"),
        (["tangents", "--checkpoint", "/no/such/run", "--out", "t.png"], "no checkpoint at /no/such/run"),
        (["frobnicate"], "invalid choice"),
        (["train", "--layers", "64,abc", "--out", "x"], "--layers: must be sizes separated by commas"),
        (["train", "--layers", "64", "--out", "x"], "--layers: must list the input size"),
        (["train", "--layers", "64,0", "--out", "x"], "--layers: must be a positive integer"),
        (["train", "--layers", "60,8", "--joint", "--out", "x"], "the dataset has 64 features"),
        (["train", "--joint", "--out", "x"], "give its sizes with --layers"),
        (["train", "--layers", "64,8", "--hessian-weight", "1", "--out", "x"], "--hessian-weight is for one"),
        (["train", "--estimator", "guess", "--out", "x"], "--estimator"),
        (["train", "--projections", "0", "--out", "x"], "--projections: must be a positive integer"),
        (["train", "--model", "conv", "--untied", "--out", "x"], "--untied applies to --model dense only"),
        (
            ["train", "--model", "conv", "--layers", "64,8", "--out", "x"],
            "cannot be combined with --model conv",
        ),
        (["train", "--model", "mlp", "--out", "x"], "--model"),
        (["train", "--model", "conv", "--padding", "-1", "--out", "x"], "--padding"),
    ],
)
def test_bad_arguments_give_one_line_and_status_2(args, words, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert "Traceback" not in err


def test_bad_arguments_from_the_console_script_are_one_line():
    result = run_cli("train", "--hidden", "-3", "--out", "x", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    """torchrun with 2 CPU processes follows the single-process trajectory on the same global batches."""
    args = ["train", "--dataset", "digits", "--hidden", "24", "--epochs", "2", "--batch-size", "50",
            "--device", "cpu", "--backend", "cpu", "--no-progress"]  # fmt: skip
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "fastcae",
    ]
    ddp = subprocess.run([*launcher, *args, "--out", str(tmp_path / "ddp")], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = run_cli(*args, "--out", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr[-3000:]
    ddp_state = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)["model_state"]
    single_state = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=True)["model_state"]
    assert ddp_state.keys() == single_state.keys()
    for name in single_state:
        torch.testing.assert_close(ddp_state[name], single_state[name], rtol=1e-4, atol=1e-5, msg=name)
    ddp_metrics = (tmp_path / "ddp" / "metrics.csv").read_text().splitlines()
    assert len(ddp_metrics) == 3  # only rank 0 wrote, once


def test_missing_optional_package_is_one_line(monkeypatch, capsys, tmp_path):
    """Without scikit-learn (an optional extra) `train` says what to install instead of a traceback."""
    # None in sys.modules makes `import sklearn...` raise ModuleNotFoundError, even if imported before.
    for name in [n for n in sys.modules if n == "sklearn" or n.startswith("sklearn.")] + ["sklearn"]:
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["train", *QUICK_TRAIN, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "scikit-learn" in err
