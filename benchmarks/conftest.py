"""pytest-benchmark configuration of the suite: device, output files, progress
lines and the report at the end.

    pytest benchmarks                          # CPU (or FASTCAE_BENCH_DEVICE=cuda)
    FASTCAE_BENCH_QUICK=1 pytest benchmarks    # tiny grid, naive included: CI smoke run

Outputs under benchmarks/results/ (or FASTCAE_BENCH_OUT), named by device:
<device>.json (pytest-benchmark), <device>.md (tables), <device>.png (plot).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import torch

from benchmarks.cases import QUICK
from benchmarks.measure import device_name, device_slug, keep_freed_memory
from benchmarks.report import Record, markdown, plot, text_table
from fastcae._precision import cuda_fp32_uses_tf32

RECORDS: list[Record] = []
ALLOCATOR = ""  # keep_freed_memory's note, set when the session starts


def bench_device() -> torch.device:
    requested = os.environ.get("FASTCAE_BENCH_DEVICE")
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def output_dir() -> Path:
    return Path(os.environ.get("FASTCAE_BENCH_OUT", Path(__file__).parent / "results"))


def output_stem() -> str:
    return device_slug(bench_device()) + ("-quick" if QUICK else "")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    global ALLOCATOR
    ALLOCATOR = keep_freed_memory()
    # The pytest-benchmark JSON goes next to the markdown unless asked elsewhere.
    if getattr(config.option, "benchmark_json", None) is None and hasattr(config.option, "benchmark_json"):
        out = output_dir()
        out.mkdir(parents=True, exist_ok=True)
        config.option.benchmark_json = out / f"{output_stem()}.json"
    # pytest-benchmark's own table: keep it to the columns that matter here.
    if hasattr(config.option, "benchmark_columns") and config.option.benchmark_columns is None:
        config.option.benchmark_columns = ["median", "iqr", "rounds"]


def progress(config: pytest.Config, line: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(line)


def run_header() -> str:
    device = bench_device()
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    precision = ""
    if device.type == "cuda":
        precision = f", float32 matmuls in {'TF32' if cuda_fp32_uses_tf32() else 'IEEE float32'}"
    return (
        f"## {device_name(device)}{' (quick grid)' if QUICK else ''}\n\n"
        f"Measured {when} with torch {torch.__version__}{precision}"
        f"{'; ' + ALLOCATOR if ALLOCATOR else ''}; activation sigmoid, λ = 0.1. "
        "Medians per call; speedups are how many times faster than the named method at the same shape; "
        "'/ floor' is the time relative to the encoder (train: a plain autoencoder step) without any penalty."
    )


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not RECORDS:
        return
    out = output_dir()
    out.mkdir(parents=True, exist_ok=True)
    stem = output_stem()
    header = run_header()
    (out / f"{stem}.md").write_text(markdown(RECORDS, header) + f"\n![time vs size]({stem}.png)\n")
    plotted = plot(RECORDS, out / f"{stem}.png", device_name(bench_device()))
    terminalreporter.section("fastcae benchmark summary")
    terminalreporter.write_line(header.replace("## ", ""))
    terminalreporter.write_line("")
    terminalreporter.write_line(text_table(RECORDS))
    written = [f"{stem}.md"] + ([f"{stem}.png"] if plotted else []) + [f"{stem}.json"]
    terminalreporter.write_line(f"Wrote {', '.join(written)} in {out}")
