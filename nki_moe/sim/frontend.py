"""The module registered as `nki` by install(): jit, simulate and the language/isa/typing/collectives
submodules (collectives and the NKI 1 entry points are documented but not emulated: using them raises)."""

from __future__ import annotations

from . import isa, language
from . import nki_typing as typing  # noqa: F401 (nki.typing)
from .errors import NkiValidationError  # noqa: F401
from .jit import Kernel, jit, simulate  # noqa: F401
from .unsupported import module_getattr, stub_module

collectives = stub_module("nki.collectives")
__getattr__ = module_getattr("nki", globals())
__version__ = "0.3.0+nki_moe.sim"
EMULATED = True
__all__ = ["jit", "simulate", "language", "isa", "typing", "collectives", "Kernel", "NkiValidationError"]
