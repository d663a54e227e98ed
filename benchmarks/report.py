"""Tables (terminal and markdown) and the log-log plot of a benchmark run."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.cases import METHOD_NAMES


@dataclass
class Record:
    """The outcome of one (dtype, mode, shape, method) benchmark."""

    dtype: str
    mode: str
    shape: str
    method: str
    status: str  # "ok", "wrong", "skipped", "unavailable"
    median_s: float | None = None
    rounds: int = 0
    peak_bytes: int | None = None
    error: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


def _format_time(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def _format_bytes(count: int | None) -> str:
    if count is None:
        return "—"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count} B"


def _ratio(numerator: float | None, denominator: float | None, suffix: str = "×") -> str:
    if numerator is None or denominator is None or denominator == 0:
        return "—"
    return f"{numerator / denominator:.3g}{suffix}"


COLUMNS = [
    "shape (B, D, H)",
    "method",
    "median",
    "vs naive-loop",
    "vs naive-vmap",
    "vs torch",
    "/ floor",
    "peak extra memory",
    "note",
]


def table_rows(records: list[Record]) -> dict[tuple[str, str], list[list[str]]]:
    """Rows per (dtype, mode): speedups are how many times faster than the
    naive and eager methods at the same shape; "/ floor" is the time relative
    to the encoder (or plain autoencoder step) with no penalty."""
    by_group: dict[tuple[str, str], dict[str, dict[str, Record]]] = defaultdict(lambda: defaultdict(dict))
    order: dict[tuple[str, str], list[str]] = defaultdict(list)
    for record in records:
        group = (record.dtype, record.mode)
        if record.shape not in by_group[group]:
            order[group].append(record.shape)
        by_group[group][record.shape][record.method] = record
    tables = {}
    for group, shapes in by_group.items():
        rows = []
        for shape in order[group]:
            results = shapes[shape]
            medians = {name: r.median_s for name, r in results.items() if r.status == "ok"}
            for name in METHOD_NAMES:
                record = results.get(name)
                if record is None:
                    continue
                t = medians.get(name)
                note = record.note
                if record.status == "wrong":
                    note = f"WRONG: relative error {record.error:.2g}. {note}".strip()
                elif record.status in ("skipped", "unavailable"):
                    note = f"{record.status}: {note}"
                rows.append(
                    [
                        shape,
                        name,
                        _format_time(t),
                        _ratio(medians.get("naive-loop"), t) if name != "naive-loop" else "",
                        _ratio(medians.get("naive-vmap"), t) if name != "naive-vmap" else "",
                        _ratio(medians.get("torch"), t) if name != "torch" else "",
                        _ratio(t, medians.get("encoder-only"), "") if name != "encoder-only" else "1",
                        _format_bytes(record.peak_bytes) if record.status == "ok" else "—",
                        note,
                    ]
                )
        tables[group] = rows
    return tables


def markdown(records: list[Record], header: str) -> str:
    lines = [header, ""]
    for (dtype, mode), rows in table_rows(records).items():
        lines += [
            f"### {mode}, {dtype}",
            "",
            "| " + " | ".join(COLUMNS) + " |",
            "|" + " --- |" * len(COLUMNS),
        ]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def text_table(records: list[Record]) -> str:
    """The end-of-run table for the terminal (notes shortened)."""
    out = []
    for (dtype, mode), rows in table_rows(records).items():
        rows = [[*row[:-1], row[-1][:60]] for row in rows]
        widths = [max(len(str(r[i])) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
        out.append(f"== {mode}, {dtype} ==")
        out.append("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)))
        previous_shape = None
        for row in rows:
            shown = [row[0] if row[0] != previous_shape else "", *row[1:]]
            previous_shape = row[0]
            out.append("  ".join(str(c).ljust(w) for c, w in zip(shown, widths, strict=True)))
        out.append("")
    return "\n".join(out)


SCAN_AXES = (
    ("batch", 0, "B (batch)"),
    ("in_features", 1, "D (input features)"),
    ("hidden", 2, "H (hidden units)"),
)


def _dims(label: str) -> tuple[int, int, int]:
    batch, in_features, hidden = (int(v) for v in label.strip("()").split(","))
    return batch, in_features, hidden


def plot(records: list[Record], path: Path, title: str) -> bool:
    """Time vs problem size, log-log, one line per method: one row per (dtype,
    mode), one panel per scanned dimension (B, D or H varied around the first
    shape of the grid, the others fixed). Returns False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    if not records:
        return False
    groups = sorted({(r.dtype, r.mode) for r in records}, key=lambda g: (g[0], g[1] != "forward"))
    base = _dims(records[0].shape)
    shapes = {_dims(r.shape) for r in records}
    # Each panel: (x value of a shape, x label, the shapes it plots).
    scans = []
    for _, axis, label in SCAN_AXES:
        in_scan = sorted(s for s in shapes if all(s[i] == base[i] for i in range(3) if i != axis))
        if len(in_scan) >= 2:
            scans.append((lambda dims, axis=axis: dims[axis], label, in_scan, axis))
    if not scans:  # a grid without scans (e.g. the quick grid): one panel over B·D·H
        scans.append((lambda dims: dims[0] * dims[1] * dims[2], "B·D·H", sorted(shapes), None))
    fig, axes = plt.subplots(
        len(groups), len(scans), figsize=(5.2 * len(scans), 4.2 * len(groups)), squeeze=False
    )
    for row, (dtype, mode) in enumerate(groups):
        for col, (x_of, label, in_scan, axis) in enumerate(scans):
            ax = axes[row][col]
            for name in METHOD_NAMES:
                points = sorted(
                    (x_of(_dims(r.shape)), r.median_s)
                    for r in records
                    if (r.dtype, r.mode, r.method) == (dtype, mode, name)
                    and r.status == "ok"
                    and _dims(r.shape) in in_scan
                )
                if points:
                    xs, ys = zip(*points, strict=True)
                    color = f"C{METHOD_NAMES.index(name)}"  # one color per method in every panel
                    ax.plot(xs, [y * 1e3 for y in ys], marker="o", label=name, color=color)
            others = [f"{n}={base[i]}" for i, n in enumerate("BDH") if axis is not None and i != axis]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("median time per call (ms)")
            ax.set_title(f"{mode}, {dtype}" + (f" ({', '.join(others)})" if others else ""), fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
