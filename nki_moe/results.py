"""Takeaway numbers of each notebook, recorded as ``results/<stem>.json`` with the run that made them.

The file holds the recorded values plus a top-level ``"run"`` (notebook, target, size, backend); a variant
run (smoke, another target) writes under ``build/<variant>/results/`` (:mod:`nki_moe.paths`). The HTML
report of ``run_all.py`` reads these files to show the key numbers of every notebook.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nki_moe.paths import current_run, output_file


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
    """Write ``values`` (a flat or nested mapping of numbers/strings) and the current run to ``<stem>.json``.

    Needs a run declared by :func:`nki_moe.paths.start_run`; ``stem`` starts with its notebook number.
    """
    path = output_file("results", stem, ".json")
    if "run" in values:
        raise ValueError(f"results {stem}: the key 'run' is reserved for the run record; rename it")
    content = {"run": current_run().metadata(), **_plain(dict(values), stem)}
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    return path


def load(stem: str) -> dict:
    """Read ``<stem>.json`` of the current run's results folder back (values and ``"run"``)."""
    return json.loads(output_file("results", stem, ".json").read_text())
