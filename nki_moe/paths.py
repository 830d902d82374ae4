"""Project directories (figures/, results/, build/) resolved from the repository root."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def out_dir(kind: str) -> Path:
    """Return (and create) an output directory: ``figures``, ``results`` or ``build``.

    ``NKI_MOE_OUT`` relocates all three (tests use it so they never touch the committed outputs).
    """
    if kind not in ("figures", "results", "build"):
        raise ValueError(f"unknown output kind {kind!r}: expected 'figures', 'results' or 'build'")
    base = Path(os.environ.get("NKI_MOE_OUT", ROOT))
    path = base / kind
    path.mkdir(parents=True, exist_ok=True)
    return path
