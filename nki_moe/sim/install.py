"""Backend selection: the Neuron SDK's `nki` on a Trainium host, this emulator elsewhere."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types

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
            for name in _EMULATED_NAMES:
                if _is_emulated(sys.modules.get(name)):
                    sys.modules.pop(name, None)
        return "neuron"
    from . import frontend, isa, language, nki_typing

    sys.modules["nki"] = frontend
    sys.modules["nki.language"] = language
    sys.modules["nki.isa"] = isa
    sys.modules["nki.typing"] = nki_typing
    sys.modules["nki.collectives"] = frontend.collectives
    sys.modules["nki.isa.constants"] = isa.constants
    if not _real_neuronxcc_available():
        # SDK 2.2x kernels import the same API under neuronxcc.nki (`import neuronxcc.nki.typing as nt`,
        # [NKILIB] router_topk); without the real package those paths name the emulator too.
        sys.modules.setdefault("neuronxcc", _neuronxcc_package())
        for name in ("language", "isa", "typing"):
            sys.modules[f"neuronxcc.nki.{name}"] = sys.modules[f"nki.{name}"]
        sys.modules["neuronxcc.nki.isa.constants"] = isa.constants
        sys.modules["neuronxcc.nki"] = frontend
    return "sim"


# Every module name install() may bind to the emulator.
_EMULATED_NAMES = (
    "nki",
    "nki.language",
    "nki.isa",
    "nki.typing",
    "nki.collectives",
    "nki.isa.constants",
    "neuronxcc.nki",
    "neuronxcc.nki.language",
    "neuronxcc.nki.isa",
    "neuronxcc.nki.typing",
    "neuronxcc.nki.isa.constants",
    "neuronxcc",
)


def _is_emulated(mod) -> bool:
    """Whether a sys.modules entry is one of the emulator's modules (or its stand-ins), not a real package."""
    return mod is not None and (
        getattr(mod, "EMULATED", False) or getattr(mod, "__name__", "").startswith(__package__ + ".")
    )


def _real_neuronxcc_available() -> bool:
    mod = sys.modules.get("neuronxcc")
    if mod is not None and not getattr(mod, "EMULATED", False):
        return True
    return importlib.machinery.PathFinder.find_spec("neuronxcc") is not None  # on sys.path, not sys.modules


def _neuronxcc_package():
    from . import frontend

    pkg = types.ModuleType("neuronxcc", "Emulated stand-in: neuronxcc.nki is the emulator's nki.")
    pkg.__path__ = []  # a package, so `import neuronxcc.nki.typing` resolves through sys.modules
    # A spec, so importlib.util.find_spec("neuronxcc") answers instead of raising; EMULATED marks it.
    pkg.__spec__ = importlib.machinery.ModuleSpec("neuronxcc", None, is_package=True)
    pkg.nki = frontend
    pkg.EMULATED = True
    return pkg


def active_backend() -> str:
    mod = sys.modules.get("nki")
    if mod is None:
        return "none"
    return "sim" if getattr(mod, "EMULATED", False) else "neuron"
