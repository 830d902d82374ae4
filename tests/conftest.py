"""Shared test setup: outputs go to a temporary folder, never into the committed figures/results."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import nki_moe.sim

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run_all.py lives at the top level
# Every test runs NKI code on the emulator, whatever is installed (kernels, notebooks, calibration).
os.environ["NKI_MOE_BACKEND"] = "sim"
nki_moe.sim.install("sim")


@pytest.fixture(autouse=True)
def _emulator_installed():
    """Keep `nki` bound to the emulator for every test (a test may switch backends)."""
    nki_moe.sim.install("sim")
    yield


@pytest.fixture(autouse=True, scope="session")
def _outputs_to_tmp(tmp_path_factory):
    """Redirect figures/, results/ and build/ written through nki_moe.paths to a session temp dir."""
    old = os.environ.get("NKI_MOE_OUT")
    os.environ["NKI_MOE_OUT"] = str(tmp_path_factory.mktemp("out"))
    yield
    if old is None:
        os.environ.pop("NKI_MOE_OUT", None)
    else:
        os.environ["NKI_MOE_OUT"] = old
