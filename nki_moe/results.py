"""Takeaway numbers of each notebook, recorded as ``results/<stem>.json``.

The HTML report of ``run_all.py`` reads these files to show the key numbers of every notebook.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nki_moe.paths import out_dir

_STEM = re.compile(r"^\d\d_[a-z0-9_]+$")


def _plain(value: Any, where: str) -> Any:
    """Convert NumPy scalars/arrays and tuples into JSON values; reject NaN and unknown types."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "tolist"):  # numpy scalar or array
        return _plain(value.tolist(), where)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"result {where} is {value}: results must be finite numbers")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"result {where} has type {type(value).__name__}, which is not JSON-serialisable")


def record(stem: str, values: Mapping[str, Any]) -> Path:
    """Write ``values`` (a flat or nested mapping of numbers/strings) to ``results/<stem>.json``."""
    if not _STEM.match(stem):
        raise ValueError(f"results stem {stem!r} must look like 'NN_snake_case' (NN = notebook number)")
    path = out_dir("results") / f"{stem}.json"
    path.write_text(json.dumps(_plain(dict(values), stem), indent=2, sort_keys=True) + "\n")
    return path


def load(stem: str) -> dict:
    """Read ``results/<stem>.json`` back."""
    return json.loads((out_dir("results") / f"{stem}.json").read_text())
