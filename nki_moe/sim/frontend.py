"""The module registered as `nki` by install(): jit, simulate and the language/isa/typing/collectives
submodules (collectives and the NKI 1 entry points are documented but not emulated: using them raises)."""

from __future__ import annotations

from . import isa, language
from . import nki_typing as typing  # noqa: F401 (nki.typing)
from .errors import NkiValidationError  # noqa: F401
from .jit import Kernel, jit, simulate  # noqa: F401
from .numerics import normalize_dtype
from .unsupported import module_getattr, stub_module

collectives = stub_module("nki.collectives")


class _DtypeMeta(type):
    def __instancecheck__(cls, obj) -> bool:
        try:
            normalize_dtype(obj)
        except TypeError:
            return False
        return True


class dtype(metaclass=_DtypeMeta):  # noqa: N801 (NKI spelling)
    """`nki.dtype`: the type of NKI dtypes, an annotation (`dtype: nki.dtype = nl.bfloat16`, [NKILIB]).

    The emulator's dtypes are their names (`nl.bfloat16 == "bfloat16"`); ``isinstance(x, nki.dtype)`` is True
    for every name, alias or NumPy/ml_dtypes dtype the emulator accepts, and ``nki.dtype(x)`` returns the
    canonical name.
    """

    def __new__(cls, x) -> str:
        return normalize_dtype(x, "nki.dtype")


__getattr__ = module_getattr("nki", globals())
__version__ = "0.3.0+nki_moe.sim"
EMULATED = True
__all__ = [
    "jit",
    "simulate",
    "language",
    "isa",
    "typing",
    "collectives",
    "dtype",
    "Kernel",
    "NkiValidationError",
]
