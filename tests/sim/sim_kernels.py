"""Load the emulator test kernels of tests/sim/kernels/ (a uniquely named module: pytest puts every test
folder on sys.path, so a shared name like `conftest` would resolve to another folder's file)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

KERNELS = Path(__file__).parent / "kernels"


def load_kernels(name: str):
    """Import tests/sim/kernels/<name>.py under a private module name."""
    spec = importlib.util.spec_from_file_location(f"_sim_test_kernels_{name}", KERNELS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
