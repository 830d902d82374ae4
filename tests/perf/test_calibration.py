"""Calibration table: the model against published measurements (trainium.md §5), within the agreed error."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from nki_moe.perf.calibration import (  # noqa: E402
    KNOWN_MISSES,
    MEASUREMENTS,
    analytic_counts,
    calibration_table,
    error_stats,
    plot_calibration,
    run_calibration_kernel,
)
from nki_moe.perf.profile import trace_flops_bytes  # noqa: E402


@pytest.fixture(scope="module")
def rows():
    return calibration_table()


def test_goal_median_and_max(rows):
    assert len(rows) >= 6
    stats = error_stats(rows)
    assert stats["median_abs_error"] <= 0.25, stats
    for r in rows:
        bound = 0.60 if r.measurement.key in KNOWN_MISSES else 0.50  # known misses: reported, kept in check
        assert abs(r.error) <= bound, (r.measurement.key, r.predicted, r.measurement.measured)


def test_known_misses_are_real(rows):
    """A point listed as a miss must still miss (so the list cannot hide a silent change)."""
    errs = {r.measurement.key: r.error for r in rows}
    for key in KNOWN_MISSES:
        assert abs(errs[key]) > 0.5, (key, errs[key])


@pytest.mark.parametrize("kernel", sorted({m.kernel for m in MEASUREMENTS}))
def test_analytic_counts_match_trace(kernel):
    macs, nbytes = analytic_counts(kernel)
    flops, hbm, _ = trace_flops_bytes(run_calibration_kernel(kernel, "trn2"))
    assert flops == 2 * macs
    assert hbm == nbytes


def test_plot_calibration(rows):
    fig, ax = plt.subplots(figsize=(8, 4))
    cols = plot_calibration(ax, rows)
    assert len(cols["key"]) == len(rows) and len(ax.collections) >= 1
    plt.close(fig)
