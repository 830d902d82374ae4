"""The one figure helper: every notebook figure is saved through :func:`save_figure`.

A figure is written as ``figures/<stem>.png``; when ``data`` is given, the plotted numbers are written
beside it as ``figures/<stem>.csv`` (same stem), so every plot can be re-read without the image. Both
record the run that made them (:mod:`nki_moe.paths`): the PNG in its text metadata under ``run``, the CSV
in a first line ``# run: {...}``; a variant run (smoke, another target) writes under
``build/<variant>/figures/``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402

from nki_moe.paths import current_run, output_file  # noqa: E402

_RUN_LINE = "# run: "


def save_figure(fig, stem: str, data: Mapping[str, Sequence] | None = None, dpi: int = 120) -> Path:
    """Save ``fig`` as ``<stem>.png`` (and ``<stem>.csv`` from ``data`` columns) in the run's figures folder.

    Args:
        fig: a matplotlib Figure.
        stem: ``NN_snake_case`` name; ``NN`` is the notebook number of the current run.
        data: optional columns ``{name: values}`` of equal length, written as CSV.
    Returns:
        The PNG path.
    """
    png = output_file("figures", stem, ".png")
    if data is not None and len({len(data[c]) for c in data}) > 1:
        raise ValueError(f"figure {stem}: CSV columns differ in length: { {c: len(data[c]) for c in data} }")
    run = json.dumps(current_run().metadata(), sort_keys=True)
    fig.savefig(png, dpi=dpi, bbox_inches="tight", metadata={"run": run})
    if data is not None:
        with open(png.with_suffix(".csv"), "w", newline="") as fh:
            fh.write(f"{_RUN_LINE}{run}\n")
            writer = csv.writer(fh)
            writer.writerow(list(data))
            writer.writerows(zip(*data.values()))
    plt.close(fig)
    return png


def read_data(path: str | Path) -> tuple[dict, dict[str, list[str]]]:
    """Read a figure's CSV back: ``(run record, {column: values as strings})``.

    (pandas reads the same file with ``read_csv(path, comment="#")``.)
    """
    with open(path, newline="") as fh:
        first = fh.readline()
        if not first.startswith(_RUN_LINE):
            raise ValueError(f"{path}: first line must be the run record '{_RUN_LINE}{{...}}', got {first!r}")
        header, *rows = list(csv.reader(fh))
    return json.loads(first[len(_RUN_LINE) :]), {c: [r[i] for r in rows] for i, c in enumerate(header)}
