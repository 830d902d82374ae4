"""Shared test setup: outputs go to a temporary folder, never into the committed figures/results."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# transformers' bf16 results on the CPU depend on the instructions torch dispatches to: with AVX-512 (and
# oneDNN's avx512_bf16 dot products) the summation order differs from the AVX2 path, and on random weights,
# whose logits are nearly tied, one bf16 ulp flips a greedy token within a few steps. The parity tests pin
# the AVX2 path (every x86-64 CI machine has it) so they compare against the same transformers numbers
# everywhere; set the variables yourself to test another path. Set before anything imports torch.
os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import pytest  # noqa: E402

import nki_moe.sim  # noqa: E402

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
