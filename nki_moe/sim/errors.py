"""The one exception type the emulator raises for NKI rule violations, plus its location helper."""

from __future__ import annotations

import os
import sys
import warnings

SIM_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_frame(depth: int = 1):
    """First frame outside nki_moe/sim (the kernel line that issued the call)."""
    f = sys._getframe(depth)
    while f is not None and f.f_code.co_filename.startswith(SIM_DIR):
        f = f.f_back
    return f


def user_callers(f) -> tuple:
    """(file, line) of the user frames above frame ``f`` up to the kernel entry (a call path)."""
    out = []
    f = f.f_back if f is not None else None
    while f is not None and not f.f_code.co_filename.startswith(SIM_DIR):
        out.append((f.f_code.co_filename, f.f_lineno))
        f = f.f_back
    return tuple(out)


def user_location(depth: int = 2) -> str:
    f = user_frame(depth)
    return f"{f.f_code.co_filename}:{f.f_lineno}" if f is not None else "<unknown>"


class NkiValidationError(Exception):
    """A kernel broke a hardware/compiler rule that the emulator enforces.

    Attributes: instruction, operand, limit, value, location ("file:line" of the kernel code).
    """

    def __init__(
        self,
        message: str,
        instruction: str | None = None,
        operand: str | None = None,
        limit=None,
        value=None,
        location: str | None = None,
    ):
        self.instruction = instruction
        self.operand = operand
        self.limit = limit
        self.value = value
        self.location = location if location is not None else user_location(2)
        self.detail = message
        parts = []
        if instruction:
            parts.append(instruction)
        if operand:
            parts.append(f"operand '{operand}'")
        head = " ".join(parts)
        text = f"{head}: {message}" if head else message
        if limit is not None or value is not None:
            text += f" (limit: {limit}, got: {value})"
        text += f" [at {self.location}]"
        super().__init__(text)


class NkiCapacityError(NkiValidationError):
    """Live SBUF/PSUM allocations exceed the target's capacity."""


class NkiUninitializedError(NkiValidationError):
    """A value derived from never-written memory reached an output or an address."""


class NkiDependencyError(NkiValidationError):
    """An affine_range iteration reads data an earlier iteration of the same loop wrote (a loop-carried
    value), or writes HBM elements an earlier iteration wrote (the result would depend on the order)."""


class NkiKwargError(NkiValidationError, TypeError):
    """An unexpected keyword argument to an ISA instruction (NKI 2.28+ rejects them).

    Also a TypeError, so code written for Python's own "got an unexpected keyword argument" still catches it.
    """


class NkiUnsupportedError(NkiValidationError, NotImplementedError):
    """A documented NKI API that the emulator does not emulate was used (named, with the kernel line)."""


class NkiDtypeError(NkiValidationError, TypeError):
    """A dtype NKI does not have (e.g. float64); also a TypeError, as NumPy raises for unknown dtypes."""


class NkiDocsWarning(UserWarning):
    """Code the NKI 0.3 docs say is rejected, but AWS's own current kernels use (so the compiler accepts it):
    the emulator runs it and says so once per kernel line."""


_DOCS_WARNED: dict = {}  # warnings registry: an NkiDocsWarning once per kernel line


def docs_warning(location: str | None, message: str) -> None:
    """Warn (NkiDocsWarning, once per kernel line): this code follows AWS's kernels, not the docs."""
    filename, lineno = "<kernel>", 0
    if location and ":" in location:
        f, _, line = location.rpartition(":")
        if line.isdigit():
            filename, lineno = f, int(line)
    warnings.warn_explicit(message, NkiDocsWarning, filename, lineno, registry=_DOCS_WARNED)


class NkiBackendError(ImportError):
    """The requested NKI backend is not available."""
