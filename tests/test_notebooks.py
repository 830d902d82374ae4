"""Smoke run of every notebook: each executes headless with SMOKE=True and must not fail a check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import run_all
from nki_moe import paths

NOTEBOOKS = run_all.discover(run_all.ROOT / "notebooks")


def test_every_notebook_is_discovered():
    names = [p.name for p in NOTEBOOKS]
    assert names == sorted(names) and names, "no notebooks/NN_*.py found"
    assert names[0].startswith("00_")


@pytest.mark.notebook
@pytest.mark.parametrize("source", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_smoke(source: Path, tmp_path):
    outcome = run_all.execute(source, tmp_path, {"SMOKE": True}, run_all.KERNEL, timeout=900)
    assert outcome.status == "ok", f"{outcome.failed_cell}\n{outcome.error}"
    results_dir = paths.variant_dirs(smoke=True)[1]
    number = run_all.number(source)
    assert list(results_dir.glob(f"{number}_*.json")), "the notebook recorded no results"
    for res in results_dir.glob(f"{number}_*.json"):
        assert json.loads(res.read_text()), f"{res.name} is empty"
