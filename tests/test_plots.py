"""Plot helpers return the numbers they draw."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from nki_moe.perf.published import QWEN3_DECODE_MEASURED  # noqa: E402
from nki_moe.plots import plot_bytes_breakdown, plot_decode_floor_vs_measured  # noqa: E402


def test_published_points():
    assert [(m.hardware, m.ms_per_token) for m in QWEN3_DECODE_MEASURED] == [
        ("trn2", 10.56),
        ("trn3", 14.37),
        ("trn3", 8.15),
    ]


def test_decode_floor_vs_measured_columns():
    fig, ax = plt.subplots()
    cols = plot_decode_floor_vs_measured(
        ax, {"trn2": 2.0, "trn3": 1.0}, QWEN3_DECODE_MEASURED, {"trn2": 1.9}, subject="decode"
    )
    plt.close(fig)
    assert cols["hardware"] == ["trn2", "trn2", "trn3", "trn3", "trn3"]
    assert cols["kind"][:2] == ["HBM floor (estimate)", "measured (published)"]
    assert cols["x_floor"] == pytest.approx([1.0, 5.28, 1.0, 14.37, 8.15])


def test_bytes_breakdown_columns():
    fig, ax = plt.subplots()
    cols = plot_bytes_breakdown(ax, {"experts": 3.0, "attention": 1.0}, subject="toy")
    plt.close(fig)
    assert cols == {"family": ["experts", "attention"], "bytes": [3.0, 1.0], "share": [0.75, 0.25]}
