"""The benchmark report writer: tables and plots for full and quick grids."""

import pytest

from benchmarks.report import Record, markdown, plot, text_table


def records(shapes):
    out = []
    for shape in shapes:
        size = shape[0] * shape[1] * shape[2]  # time grows with it, like a real run
        label = f"({shape[0]}, {shape[1]}, {shape[2]})"
        out.append(Record("float32", "forward", label, "encoder-only", "ok", median_s=1e-3 * size / 1e6))
        out.append(Record("float32", "forward", label, "fastcae-cpu", "ok", median_s=1.1e-3 * size / 1e6))
        out.append(Record("float32", "forward", label, "naive-vmap", "skipped", note="predicted 99 s"))
    return out


SCANNED = [(256, 784, 1024), (64, 784, 1024), (1024, 784, 1024), (256, 196, 1024), (256, 784, 256)]
UNSCANNED = [(8, 16, 12), (33, 20, 17)]


@pytest.mark.parametrize("shapes", [SCANNED, UNSCANNED], ids=["scans", "quick grid"])
def test_plot_writes_a_png(tmp_path, shapes):
    path = tmp_path / "plot.png"
    assert plot(records(shapes), path, "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tables_show_ratios_and_skip_reasons():
    rows = records(SCANNED[:1])
    table = markdown(rows, "## header")
    assert "| (256, 784, 1024) | fastcae-cpu |" in table and "| 1.1 |" in table
    assert "skipped: predicted 99 s" in table
    assert "fastcae-cpu" in text_table(rows)
