"""Kernel tests run on the emulator (strict mode: uninitialised reads, capacity, affine independence)."""

from __future__ import annotations

import pytest

import nki_moe.sim as sim

sim.install("sim")


@pytest.fixture(autouse=True)
def _emulator_installed():
    """Keep `nki` bound to the emulator and strict mode on (another test may switch them)."""
    sim.install("sim")
    yield
