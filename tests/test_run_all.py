"""run_all.py: discovery, parameter filtering, failure reporting, output folders, summary and report."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import run_all

GOOD = """# %% tags=["parameters"]
SMOKE = False
N = 3

# %%
from nki_moe import paths, results
paths.start_run("01_good", smoke=SMOKE)
assert isinstance(SMOKE, bool)
results.record("01_good", {"smoke": SMOKE, "n": N})
"""

BAD = """# %% tags=["parameters"]
SMOKE = False

# %% [markdown]
# The third cell fails.

# %%
assert SMOKE == 2, "SMOKE is not two"
"""

NOPARAMS = """# %%
from nki_moe import paths, results
paths.start_run("03_noparams", smoke=False)
results.record("03_noparams", {"ran": True})
"""

EXITS = """# %% tags=["parameters"]
SMOKE = False

# %%
import sys
sys.exit(0)

# %%
from nki_moe import paths, results
paths.start_run("04_exits", smoke=SMOKE)
results.record("04_exits", {"ran": True})
"""

UNDECLARED = """# %%
from nki_moe import results
results.record("05_undeclared", {"ran": True})
"""

MISNAMED = """# %%
from nki_moe import paths
paths.start_run("01_good", smoke=False)
"""


def _write(folder: Path, books: dict[str, str]) -> Path:
    folder.mkdir()
    for name, text in books.items():
        (folder / name).write_text(text)
    return folder


@pytest.fixture()
def out(tmp_path, monkeypatch) -> Path:
    """A fresh NKI_MOE_OUT for the run (the notebook kernels inherit it)."""
    monkeypatch.setenv("NKI_MOE_OUT", str(tmp_path / "out"))
    return tmp_path / "out"


@pytest.fixture()
def books(tmp_path: Path) -> Path:
    return _write(
        tmp_path / "notebooks",
        {"01_good.py": GOOD, "02_bad.py": BAD, "03_noparams.py": NOPARAMS, "helper.py": "x = 1\n"},
    )


def test_discover_orders_and_filters(books):
    (books / "00a_first_kernel.py").write_text(NOPARAMS)
    (books / "00_intro.py").write_text(NOPARAMS)
    names = ["00_intro.py", "00a_first_kernel.py", "01_good.py", "02_bad.py", "03_noparams.py"]
    assert [p.name for p in run_all.discover(books)] == names
    assert [p.name for p in run_all.discover(books, {"03"})] == ["03_noparams.py"]
    assert [p.name for p in run_all.discover(books, {"00a"})] == ["00a_first_kernel.py"]
    assert [p.name for p in run_all.discover(books, {"00"})] == ["00_intro.py"]
    with pytest.raises(SystemExit, match="99"):
        run_all.discover(books, {"99"})


def test_a_file_not_named_as_a_notebook_is_named_on_stderr(books, capsys):
    run_all.discover(books)
    err = capsys.readouterr().err  # helper.py is not run, and not skipped silently
    assert f"not a notebook, not run: {books / 'helper.py'}" in err and "NN_snake_case.py" in err


@pytest.mark.parametrize("only", ["", ",", "01,"])
def test_only_with_an_empty_entry_is_an_error(books, out, only):
    with pytest.raises(SystemExit, match="has an empty entry"):
        run_all.main(["--notebooks", str(books), "--only", only, "--no-report"])
    assert not out.exists(), "nothing ran"


def test_failure_is_reported_with_its_source_cell(books, out, capsys):
    rc = run_all.main(["--notebooks", str(books), "--smoke"])
    stdout = capsys.readouterr().out
    assert rc == 1
    # the source counts 3 cells (parameters, markdown, the assert); papermill's injected cell is not counted
    assert "FAILED 02_bad: cell 3 of 3: assert SMOKE == 2" in stdout and "SMOKE is not two" in stdout
    assert "not run (stopped at the first failure" in stdout and "03_noparams" in stdout
    summary = json.loads((out / "build" / "smoke" / "run_summary.json").read_text())
    assert [o["status"] for o in summary["outcomes"]] == ["ok", "failed"]
    executed = Path(summary["outcomes"][1]["executed"])
    assert "SMOKE is not two" in executed.read_text(), "the executed copy keeps the error cell"


def test_a_smoke_run_leaves_the_committed_outputs_alone(books, out):
    run_all.main(["--notebooks", str(books), "--smoke", "--only", "01,03", "--no-report"])
    smoke = out / "build" / "smoke"
    assert [p.name for p in (smoke / "results").iterdir()] == ["01_good.json"]
    # 03 has no SMOKE parameter: it ran at full size, so its outputs are the full-size ones
    assert [p.name for p in (out / "results").iterdir()] == ["03_noparams.json"]
    assert json.loads((out / "results" / "03_noparams.json").read_text())["run"]["size"] == "full"
    assert (smoke / "executed" / "01_good.ipynb").is_file()
    assert not (out / "build" / "executed").exists(), "executed copies of a variant stay in its folder"
    summary = json.loads((smoke / "run_summary.json").read_text())
    assert (summary["variant"], summary["size"]) == ("smoke", "smoke")
    assert [o["notebook"] for o in summary["outcomes"]] == ["01_good", "03_noparams"]
    good = json.loads((smoke / "results" / "01_good.json").read_text())
    assert good["run"] == {"notebook": "01_good", "target": "trn2", "size": "smoke", "backend": "sim"}


def test_keep_going_passes_only_declared_parameters(books, out):
    rc = run_all.main(["--notebooks", str(books), "--smoke", "--keep-going", "--target", "trn3"])
    assert rc == 1
    build = out / "build" / "smoke-trn3"
    summary = json.loads((build / "run_summary.json").read_text())
    assert summary["variant"] == "smoke-trn3"
    assert [o["status"] for o in summary["outcomes"]] == ["ok", "failed", "ok"]
    # 03 has no parameters cell: SMOKE/TARGET must not be injected (it would still run, but the
    # executed copy must hold no injected-parameters cell)
    executed = json.loads(Path(summary["outcomes"][2]["executed"]).read_text())
    assert not any("injected-parameters" in c["metadata"].get("tags", []) for c in executed["cells"])
    good = json.loads(Path(summary["outcomes"][0]["executed"]).read_text())
    injected = [c for c in good["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and "SMOKE = True" in "".join(injected[0]["source"])
    assert "TARGET" not in "".join(injected[0]["source"]), "01_good declares no TARGET"
    report = (build / "report.html").read_text()
    assert "01_good" in report and "failed" in report


def test_a_notebook_that_exits_early_fails(tmp_path, out, capsys):
    books = _write(tmp_path / "notebooks", {"04_exits.py": EXITS})
    rc = run_all.main(["--notebooks", str(books), "--no-report"])
    stdout = capsys.readouterr().out
    assert rc == 1, "sys.exit(0) in a cell is not a successful run"
    assert "FAILED 04_exits: cell 2 of 3: import sys" in stdout
    assert "SystemExit: 0; 1 later code cell(s) never ran" in stdout
    assert not (out / "results" / "04_exits.json").exists()


def test_recording_without_a_declared_run_fails_the_notebook(tmp_path, out, capsys):
    books = _write(tmp_path / "notebooks", {"05_undeclared.py": UNDECLARED, "06_misnamed.py": MISNAMED})
    rc = run_all.main(["--notebooks", str(books), "--keep-going", "--no-report"])
    stdout = capsys.readouterr().out
    assert rc == 1
    assert "FAILED 05_undeclared: cell 1 of 1" in stdout and "RuntimeError: no run declared" in stdout
    assert "FAILED 06_misnamed: cell 1 of 1" in stdout
    assert "start_run('01_good') is called by notebook 06_misnamed" in stdout
    assert not (out / "results").exists()


def test_kernels_do_not_warn_about_tcp(tmp_path, out, capfd):
    books = _write(tmp_path / "notebooks", {"03_noparams.py": NOPARAMS})
    assert run_all.main(["--notebooks", str(books), "--no-report"]) == 0
    captured = capfd.readouterr()  # file-descriptor level: the kernel process writes there
    assert "03_noparams ok" in captured.out
    assert "without encryption" not in captured.out + captured.err


def test_backend_neuron_is_refused_without_the_sdk(books, out, capsys):
    if run_all.neuron_available():
        pytest.skip("the Neuron SDK is installed here")
    with pytest.raises(SystemExit):
        run_all.main(["--notebooks", str(books), "--backend", "neuron"])
    assert "Neuron SDK" in capsys.readouterr().err


def test_run_does_not_leak_its_environment(books, out, monkeypatch):
    monkeypatch.delenv("NEURON_PLATFORM_TARGET_OVERRIDE", raising=False)
    monkeypatch.setenv("NKI_MOE_BACKEND", "sim")
    run_all.main(["--notebooks", str(books), "--only", "01", "--target", "trn3", "--no-report"])
    assert "NEURON_PLATFORM_TARGET_OVERRIDE" not in os.environ and "NKI_MOE_NOTEBOOK" not in os.environ
    assert os.environ["NKI_MOE_BACKEND"] == "sim"


def test_make_lab_allows_root_only_as_root():
    plan = subprocess.run(["make", "-n", "lab"], cwd=run_all.ROOT, capture_output=True, text=True, check=True)
    lab = next(line for line in plan.stdout.splitlines() if "jupyter lab" in line)
    assert ("--allow-root" in lab) == (os.getuid() == 0), lab


def test_backend_neuron_without_the_sdk_names_what_is_missing_and_runs_nothing(
    books, out, capsys, monkeypatch
):
    from nki_moe import device

    monkeypatch.setattr(device, "_importable", lambda module: False)  # as on a host without the SDK
    monkeypatch.setattr(run_all, "execute", lambda *a, **k: pytest.fail("a notebook ran without the SDK"))
    with pytest.raises(SystemExit) as exit_:
        run_all.main(["--notebooks", str(books), "--backend", "neuron"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "usage:" not in err  # one clear error, not a usage dump
    for part in ("--backend neuron", "neuronx-cc", "torch-neuronx", device.PIP_INDEX, "docs/device.md"):
        assert part in err, part
    assert not out.exists(), "nothing ran, nothing was written"


def test_backend_neuron_with_the_sdk_asks_the_notebooks_to_measure(books, out, monkeypatch):
    from nki_moe import device

    monkeypatch.setattr(device, "_importable", lambda module: True)
    monkeypatch.delenv("NKI_MOE_DEVICE", raising=False)
    seen = []

    def execute(source, build, wanted, kernel, timeout):
        seen.append((os.environ.get("NKI_MOE_BACKEND"), os.environ.get("NKI_MOE_DEVICE"), build.name))
        return run_all.Outcome(source.stem, "ok", 0.0, str(build / "executed" / f"{source.stem}.ipynb"))

    monkeypatch.setattr(run_all, "execute", execute)
    assert (
        run_all.main(["--notebooks", str(books), "--only", "01", "--backend", "neuron", "--no-report"]) == 0
    )
    # the notebooks keep the emulator (start_run records "neuron" from NKI_MOE_DEVICE); outputs: build/neuron/
    assert seen == [("sim", "1", "neuron")]
    assert "NKI_MOE_DEVICE" not in os.environ
