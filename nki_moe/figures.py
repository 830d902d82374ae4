"""The one figure helper: every notebook figure is saved through :func:`save_figure`.

A figure is written as ``figures/<stem>.png``; when ``data`` is given, the plotted numbers are written
beside it as ``figures/<stem>.csv`` (same stem), so every plot can be re-read without the image.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402

from nki_moe.paths import out_dir  # noqa: E402

_STEM = re.compile(r"^\d\d_[a-z0-9_]+$")


def save_figure(fig, stem: str, data: Mapping[str, Sequence] | None = None, dpi: int = 120) -> Path:
    """Save ``fig`` as ``figures/<stem>.png`` (and ``<stem>.csv`` from ``data`` columns).

    Args:
        fig: a matplotlib Figure.
        stem: ``NN_snake_case`` name; ``NN`` is the notebook number.
        data: optional columns ``{name: values}`` of equal length, written as CSV.
    Returns:
        The PNG path.
    """
    if not _STEM.match(stem):
        raise ValueError(f"figure stem {stem!r} must look like 'NN_snake_case' (NN = notebook number)")
    folder = out_dir("figures")
    png = folder / f"{stem}.png"
    fig.savefig(png, dpi=dpi, bbox_inches="tight")
    if data is not None:
        columns = list(data)
        lengths = {len(data[c]) for c in columns}
        if len(lengths) > 1:
            raise ValueError(
                f"figure {stem}: CSV columns differ in length: { {c: len(data[c]) for c in columns} }"
            )
        with open(folder / f"{stem}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            writer.writerows(zip(*(data[c] for c in columns)))
    plt.close(fig)
    return png
