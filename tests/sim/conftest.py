"""Emulator tests: keep `nki` bound to the emulator."""

from __future__ import annotations

import pytest

import nki_moe.sim as sim

sim.install("sim")


@pytest.fixture(autouse=True)
def _emulator_installed():
    """Keep `nki` bound to the emulator (a test may switch backends)."""
    sim.install("sim")
    yield
