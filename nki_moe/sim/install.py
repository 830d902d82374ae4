"""Backend selection: the Neuron SDK's `nki` on a Trainium host, this emulator elsewhere."""

from __future__ import annotations

import importlib.machinery
import os
import sys

from .errors import NkiBackendError

ENV_BACKEND = "NKI_MOE_BACKEND"


def real_nki_available() -> bool:
    """Whether a non-emulated `nki` package is importable (searched on sys.path, ignoring sys.modules)."""
    mod = sys.modules.get("nki")
    if mod is not None and not getattr(mod, "EMULATED", False):
        return True
    try:
        return importlib.machinery.PathFinder.find_spec("nki") is not None
    except (ImportError, ValueError):
        return False


def requested_backend() -> str:
    v = os.environ.get(ENV_BACKEND, "").strip().lower()
    if v in ("", "auto"):
        return "auto"
    if v not in ("sim", "neuron"):
        raise ValueError(f"{ENV_BACKEND}={v!r}: use 'sim', 'neuron' or leave it unset")
    return v


def install(backend: str | None = None) -> str:
    """Make `import nki` and its `language`, `isa`, `typing`, `collectives` submodules resolve.

    Returns 'sim' or 'neuron'.

    backend (or $NKI_MOE_BACKEND): 'sim' forces the emulator; 'neuron' requires the real package (raises
    NkiBackendError when it is absent); unset picks the real package when importable, else the emulator.
    """
    choice = (backend or requested_backend()).lower()
    if choice == "neuron" or (choice == "auto" and real_nki_available()):
        if not real_nki_available():
            raise NkiBackendError(
                f"{ENV_BACKEND}=neuron but the Neuron SDK package 'nki' is not importable here. Install the "
                "Neuron SDK on a Trainium host (pip install neuronx-cc from the Neuron repository), or unset "
                f"{ENV_BACKEND} / set it to 'sim' to use the NumPy emulator"
            )
        mod = sys.modules.get("nki")
        if mod is not None and getattr(mod, "EMULATED", False):
            for name in ("nki", "nki.language", "nki.isa", "nki.typing", "nki.collectives"):
                sys.modules.pop(name, None)
        return "neuron"
    from . import frontend, isa, language, nki_typing

    sys.modules["nki"] = frontend
    sys.modules["nki.language"] = language
    sys.modules["nki.isa"] = isa
    sys.modules["nki.typing"] = nki_typing
    sys.modules["nki.collectives"] = frontend.collectives
    return "sim"


def active_backend() -> str:
    mod = sys.modules.get("nki")
    if mod is None:
        return "none"
    return "sim" if getattr(mod, "EMULATED", False) else "neuron"
