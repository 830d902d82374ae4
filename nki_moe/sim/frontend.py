"""The module registered as `nki` by install(): jit, simulate and the language/isa/typing submodules."""

from __future__ import annotations

from . import isa, language
from . import nki_typing as typing  # noqa: F401 (nki.typing)
from .errors import NkiValidationError  # noqa: F401
from .jit import Kernel, jit, simulate  # noqa: F401

__version__ = "0.3.0+nki_moe.sim"
EMULATED = True
__all__ = ["jit", "simulate", "language", "isa", "typing", "Kernel", "NkiValidationError"]
