"""run_all.py: discovery, parameter filtering, failure reporting, summary and report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import run_all

GOOD = """# %% tags=["parameters"]
SMOKE = False
N = 3

# %%
from nki_moe import results
assert isinstance(SMOKE, bool)
results.record("01_good", {"smoke": SMOKE, "n": N})
"""

BAD = """# %%
x = 1

# %%
assert x == 2, "x is not two"
"""

NOPARAMS = """# %%
from nki_moe import results
results.record("03_noparams", {"ran": True})
"""


@pytest.fixture()
def books(tmp_path: Path) -> Path:
    folder = tmp_path / "notebooks"
    folder.mkdir()
    (folder / "01_good.py").write_text(GOOD)
    (folder / "02_bad.py").write_text(BAD)
    (folder / "03_noparams.py").write_text(NOPARAMS)
    (folder / "helper.py").write_text("x = 1\n")  # not NN_*: ignored
    return folder


def test_discover_orders_and_filters(books):
    assert [p.name for p in run_all.discover(books)] == ["01_good.py", "02_bad.py", "03_noparams.py"]
    assert [p.name for p in run_all.discover(books, {"03"})] == ["03_noparams.py"]
    with pytest.raises(SystemExit, match="99"):
        run_all.discover(books, {"99"})


def test_failure_is_reported_with_its_cell(books, tmp_path, capsys):
    rc = run_all.main(["--notebooks", str(books), "--build", str(tmp_path / "build"), "--smoke"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAILED 02_bad: cell" in out and "x is not two" in out
    assert "not run (stopped at the first failure" in out and "03_noparams" in out
    summary = json.loads((tmp_path / "build" / "run_summary.json").read_text())
    assert [o["status"] for o in summary["outcomes"]] == ["ok", "failed"]
    executed = Path(summary["outcomes"][1]["executed"])
    assert "x is not two" in executed.read_text(), "the executed copy keeps the error cell"


def test_keep_going_passes_only_declared_parameters(books, tmp_path, capsys):
    rc = run_all.main(
        [
            "--notebooks",
            str(books),
            "--build",
            str(tmp_path / "build"),
            "--smoke",
            "--keep-going",
            "--target",
            "trn3",
        ]
    )
    assert rc == 1
    summary = json.loads((tmp_path / "build" / "run_summary.json").read_text())
    assert [o["status"] for o in summary["outcomes"]] == ["ok", "failed", "ok"]
    # 03 has no parameters cell: SMOKE/TARGET must not be injected (it would still run, but the
    # executed copy must hold no injected-parameters cell)
    executed = json.loads(Path(summary["outcomes"][2]["executed"]).read_text())
    assert not any("injected-parameters" in c["metadata"].get("tags", []) for c in executed["cells"])
    good = json.loads(Path(summary["outcomes"][0]["executed"]).read_text())
    injected = [c for c in good["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and "SMOKE = True" in "".join(injected[0]["source"])
    assert "TARGET" not in "".join(injected[0]["source"]), "01_good declares no TARGET"
    report = (tmp_path / "build" / "report.html").read_text()
    assert "01_good" in report and "failed" in report


def test_backend_neuron_is_refused_without_the_sdk(books, tmp_path, capsys):
    if run_all.neuron_available():
        pytest.skip("the Neuron SDK is installed here")
    with pytest.raises(SystemExit):
        run_all.main(["--notebooks", str(books), "--build", str(tmp_path), "--backend", "neuron"])
    assert "Neuron SDK" in capsys.readouterr().err


def test_run_does_not_leak_its_environment(books, tmp_path, monkeypatch):
    monkeypatch.delenv("NEURON_PLATFORM_TARGET_OVERRIDE", raising=False)
    monkeypatch.setenv("NKI_MOE_BACKEND", "sim")
    run_all.main(
        [
            "--notebooks",
            str(books),
            "--build",
            str(tmp_path),
            "--only",
            "01",
            "--target",
            "trn3",
            "--no-report",
        ]
    )
    assert "NEURON_PLATFORM_TARGET_OVERRIDE" not in os.environ
    assert os.environ["NKI_MOE_BACKEND"] == "sim"
