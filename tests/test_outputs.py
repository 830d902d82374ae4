"""Outputs: where a run writes (committed vs variant folders), the run record in every file, naming rules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jupytext
import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from nki_moe import figures, paths, results

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def out(tmp_path, monkeypatch) -> Path:
    """A fresh output base and no declared run (start_run's state is restored after the test)."""
    monkeypatch.setenv("NKI_MOE_OUT", str(tmp_path))
    monkeypatch.delenv(paths.ENV_NOTEBOOK, raising=False)
    monkeypatch.setattr(paths, "_current", None)
    return tmp_path


@pytest.fixture()
def run(out) -> paths.Run:
    return paths.start_run("99_test_outputs", smoke=False)


def _plot():
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [4, 5, 6])
    return fig


RUN = {"notebook": "99_test_outputs", "target": "trn2", "size": "full", "backend": "sim"}


def test_save_figure_writes_png_and_csv_with_the_run(run, out):
    png = figures.save_figure(_plot(), "99_test_plot", data={"x": [1, 2, 3], "y": np.array([4.0, 5.0, 6.0])})
    assert png == out / "figures" / "99_test_plot.png"
    assert json.loads(Image.open(png).text["run"]) == RUN
    lines = png.with_suffix(".csv").read_text().splitlines()
    assert lines[0] == "# run: " + json.dumps(RUN, sort_keys=True)
    assert figures.read_data(png.with_suffix(".csv")) == (
        RUN,
        {"x": ["1", "2", "3"], "y": ["4.0", "5.0", "6.0"]},
    )


def test_figure_bytes_are_reproducible(run):
    first = figures.save_figure(_plot(), "99_same").read_bytes()
    assert figures.save_figure(_plot(), "99_same").read_bytes() == first


def test_read_data_names_a_csv_without_its_run_line(tmp_path):
    (tmp_path / "old.csv").write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match=r"old\.csv: first line must be the run record"):
        figures.read_data(tmp_path / "old.csv")


@pytest.mark.parametrize("stem", ["plot", "0_plot", "00-Plot", "00_Plot", "99A_plot"])
def test_save_figure_rejects_bad_stems(run, stem):
    fig = _plot()
    with pytest.raises(ValueError, match="NN_snake_case"):
        figures.save_figure(fig, stem)
    plt.close(fig)


def test_outputs_must_carry_the_notebook_number(run):
    with pytest.raises(ValueError, match=r"stem '01_plot' of notebook 99_test_outputs must start with 99_"):
        figures.save_figure(_plot(), "01_plot")
    with pytest.raises(ValueError, match=r"stem '01_x' of notebook 99_test_outputs must start with 99_"):
        results.record("01_x", {"a": 1})


def test_save_figure_rejects_ragged_columns(run, out):
    with pytest.raises(ValueError, match="differ in length"):
        figures.save_figure(_plot(), "99_ragged", data={"x": [1, 2], "y": [1]})
    assert not (out / "figures" / "99_ragged.png").exists(), "nothing is written for a bad figure"


def test_results_round_trip_numpy_values_with_the_run(run, out):
    path = results.record("99_test", {"a": np.float32(1.5), "b": np.arange(3), "c": {"d": (1, "x")}})
    assert path == out / "results" / "99_test.json"
    assert results.load("99_test") == {"a": 1.5, "b": [0, 1, 2], "c": {"d": [1, "x"]}, "run": RUN}


def test_results_reserve_the_run_key(run):
    with pytest.raises(ValueError, match="'run' is reserved"):
        results.record("99_test", {"run": 1})


@pytest.mark.parametrize("bad", [math.nan, math.inf, np.float64("nan")])
def test_results_reject_non_finite(run, bad):
    with pytest.raises(ValueError, match=r"99_bad\.x\.y"):
        results.record("99_bad", {"x": {"y": bad}})


def test_results_reject_unknown_types(run):
    with pytest.raises(TypeError, match="object"):
        results.record("99_bad", {"x": object()})


def test_nothing_is_written_without_a_declared_run(out):
    with pytest.raises(RuntimeError, match=r"no run declared: call nki_moe\.paths\.start_run"):
        results.record("99_test", {"a": 1})
    with pytest.raises(RuntimeError, match="no run declared"):
        figures.save_figure(_plot(), "99_test_plot")
    assert not list(out.rglob("*.*")), "nothing may be written before the run is declared"


@pytest.mark.parametrize(
    "smoke, target, backend, name",
    [
        (False, None, "sim", ""),
        (False, "trn2", "sim", ""),
        (True, None, "sim", "smoke"),
        (False, "trn3", "sim", "trn3"),
        (True, "trn3", "sim", "smoke-trn3"),
        (False, None, "neuron", "neuron"),
    ],
)
def test_variant_dirs(out, smoke, target, backend, name):
    assert paths.variant(smoke, target, backend) == name
    build = out / "build" / name if name else out / "build"
    figs, res = (build / "figures", build / "results") if name else (out / "figures", out / "results")
    assert paths.variant_dirs(smoke, target, backend) == (figs, res, build)


def test_variant_rejects_unknown_target_and_backend():
    with pytest.raises(ValueError, match="unknown target 'trn9': expected one of trn1, trn2, trn3"):
        paths.variant(False, "trn9")
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        paths.variant(False, None, "gpu")


@pytest.mark.parametrize("smoke, target, folder", [(True, "trn2", "smoke"), (False, "trn3", "trn3")])
def test_a_variant_run_writes_under_its_build_folder(out, smoke, target, folder):
    run = paths.start_run("99_test_outputs", smoke=smoke, target=target)
    assert run.size == ("smoke" if smoke else "full") and run.target == target
    png = figures.save_figure(_plot(), "99_plot", data={"x": [1]})
    res = results.record("99_numbers", {"a": 1})
    assert png.parent == out / "build" / folder / "figures"
    assert res.parent == out / "build" / folder / "results"
    assert json.loads(res.read_text())["run"] == run.metadata()
    assert paths.out_dir("build") == out / "build" / folder, "traces of a variant stay in its build folder"
    assert not (out / "figures").exists() and not (out / "results").exists()


def test_a_device_run_keeps_the_emulator_and_writes_the_neuron_variant(out, monkeypatch):
    """run_all.py --backend neuron: kernels stay emulated (estimates), the run is the neuron variant."""
    import nki

    monkeypatch.setenv("NKI_MOE_BACKEND", "sim")
    monkeypatch.setenv("NKI_MOE_DEVICE", "1")
    run = paths.start_run("99_test_outputs", smoke=True)
    assert run.backend == "neuron"
    assert getattr(nki, "EMULATED", False), "the notebook's nki is still the emulator"
    res = results.record("99_numbers", {"a": 1})
    assert res.parent == out / "build" / "smoke-neuron" / "results"
    assert not (out / "results").exists()


def test_start_run_checks_the_notebook_name(out, monkeypatch):
    with pytest.raises(ValueError, match="must be a file stem like"):
        paths.start_run("rmsnorm", smoke=False)
    monkeypatch.setenv(paths.ENV_NOTEBOOK, "01_rmsnorm")
    with pytest.raises(ValueError, match=r"start_run\('02_other'\) is called by notebook 01_rmsnorm"):
        paths.start_run("02_other", smoke=False)
    with pytest.raises(ValueError, match="unknown target 'trn9'"):
        paths.start_run("01_rmsnorm", smoke=False, target="trn9")


@pytest.mark.parametrize(
    "source", sorted((ROOT / "notebooks").glob("[0-9][0-9]*_*.py")), ids=lambda p: p.stem
)
def test_notebook_default_target_is_the_committed_one(source):
    """The committed outputs are those of the default target: a notebook's TARGET default must be it."""
    cell = next(c for c in jupytext.read(source).cells if "parameters" in c.metadata.get("tags", []))
    params: dict = {}
    exec(cell.source, params)  # the parameters cell holds literals only
    assert params.get("TARGET", paths.DEFAULT_TARGET) == paths.DEFAULT_TARGET, (
        f"{source.name}: TARGET = {params['TARGET']!r}; the committed outputs are {paths.DEFAULT_TARGET}'s"
    )
    assert f'paths.start_run("{source.stem}", smoke=SMOKE' in source.read_text(), (
        f"{source.name}: its setup cell must declare its run with paths.start_run({source.stem!r}, ...)"
    )
