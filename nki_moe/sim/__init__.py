"""NumPy emulator of the AWS NKI 2 kernel API (`nki`, `nki.language`, `nki.isa`): strict, traced, CPU-only.

Use `nki_moe.sim.install()` to make `import nki` resolve to it (unless the real package is present), then
call @nki.jit kernels on NumPy arrays, or `nki_moe.sim.run(kernel, *args, target=..., lnc=...)` for the
trace and peak SBUF/PSUM usage.
"""

from __future__ import annotations

from . import isa, language
from .errors import (
    NkiBackendError,
    NkiCapacityError,
    NkiDependencyError,
    NkiKwargError,
    NkiUninitializedError,
    NkiValidationError,
)
from .install import active_backend, install, real_nki_available
from .jit import Kernel, RunResult, jit, last_result, last_trace, run, simulate
from .runtime import options
from .target import TARGETS, resolve_target
from .trace import Trace

__all__ = [
    "Kernel",
    "NkiBackendError",
    "NkiCapacityError",
    "NkiDependencyError",
    "NkiKwargError",
    "NkiUninitializedError",
    "NkiValidationError",
    "RunResult",
    "TARGETS",
    "Trace",
    "active_backend",
    "install",
    "isa",
    "jit",
    "language",
    "last_result",
    "last_trace",
    "options",
    "real_nki_available",
    "resolve_target",
    "run",
    "simulate",
]
