"""Emulator tests: install the emulator as `nki` and load the test kernels from tests/sim/kernels/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import nki_moe.sim as sim

sim.install("sim")
KERNELS = Path(__file__).parent / "kernels"


def load_kernels(name: str):
    """Import tests/sim/kernels/<name>.py under a private module name."""
    spec = importlib.util.spec_from_file_location(f"_sim_test_kernels_{name}", KERNELS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _emulator_installed():
    """Keep `nki` bound to the emulator (a test may switch backends)."""
    sim.install("sim")
    yield
