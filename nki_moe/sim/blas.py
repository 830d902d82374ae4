"""Single-threaded BLAS while emulating: tile matmuls are small, and OpenBLAS threads only add contention."""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os

import numpy as np

_api: tuple | None = None


def _find() -> tuple | None:
    base = os.path.dirname(os.path.dirname(np.__file__))
    for pattern in (
        "numpy.libs/libscipy_openblas*.so*",
        "numpy/.libs/libscipy_openblas*.so*",
        "numpy.libs/libopenblas*.so*",
    ):
        for path in glob.glob(os.path.join(base, pattern)):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for get, set_ in (
                ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                ("openblas_get_num_threads", "openblas_set_num_threads"),
            ):
                if hasattr(lib, get) and hasattr(lib, set_):
                    g, s = getattr(lib, get), getattr(lib, set_)
                    g.restype = ctypes.c_int
                    s.argtypes = [ctypes.c_int]
                    return g, s
    return None


@contextlib.contextmanager
def single_threaded():
    """Run the block with one BLAS thread (no-op when numpy's OpenBLAS cannot be found)."""
    global _api
    if _api is None:
        _api = _find() or ()
    if not _api:
        yield
        return
    get, set_ = _api
    old = get()
    set_(1)
    try:
        yield
    finally:
        set_(old)
