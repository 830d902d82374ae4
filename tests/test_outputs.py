"""The figure and results helpers: naming rules, CSV beside the PNG, JSON round trip, bad values."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from nki_moe import figures, results


def test_save_figure_writes_png_and_csv():
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [4, 5, 6])
    png = figures.save_figure(fig, "99_test_plot", data={"x": [1, 2, 3], "y": np.array([4.0, 5.0, 6.0])})
    assert png == Path(os.environ["NKI_MOE_OUT"]) / "figures" / "99_test_plot.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.reader(open(png.with_suffix(".csv"))))
    assert rows == [["x", "y"], ["1", "4.0"], ["2", "5.0"], ["3", "6.0"]]


@pytest.mark.parametrize("stem", ["plot", "0_plot", "00-Plot", "00_Plot"])
def test_save_figure_rejects_bad_stems(stem):
    fig, _ = plt.subplots()
    with pytest.raises(ValueError, match="NN_snake_case"):
        figures.save_figure(fig, stem)
    plt.close(fig)


def test_save_figure_rejects_ragged_columns():
    fig, _ = plt.subplots()
    with pytest.raises(ValueError, match="differ in length"):
        figures.save_figure(fig, "99_ragged", data={"x": [1, 2], "y": [1]})


def test_results_round_trip_numpy_values():
    path = results.record("99_test", {"a": np.float32(1.5), "b": np.arange(3), "c": {"d": (1, "x")}})
    assert path.name == "99_test.json"
    assert results.load("99_test") == {"a": 1.5, "b": [0, 1, 2], "c": {"d": [1, "x"]}}


@pytest.mark.parametrize("bad", [math.nan, math.inf, np.float64("nan")])
def test_results_reject_non_finite(bad):
    with pytest.raises(ValueError, match=r"99_bad\.x\.y"):
        results.record("99_bad", {"x": {"y": bad}})


def test_results_reject_unknown_types():
    with pytest.raises(TypeError, match="object"):
        results.record("99_bad", {"x": object()})
