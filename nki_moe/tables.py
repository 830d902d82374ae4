"""Plain-text tables for notebooks (no pandas): ints with thousands separators, floats by format spec."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["format_table", "concat_columns"]


def _cell(value: Any, floatfmt: str) -> str:
    """Format one cell."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return format(value, floatfmt)
    return str(value)


def format_table(
    rows: Sequence[Sequence[Any]],
    headers: Sequence[str],
    floatfmt: str | Sequence[str] = ",.4g",
    title: str | None = None,
) -> str:
    """Render rows as an aligned text table (numbers right-aligned, text left-aligned, None as "-").

    Args:
        rows: table rows, each with ``len(headers)`` cells.
        headers: column names.
        floatfmt: format spec for floats, one for all columns or one per column.
        title: optional line printed above the table.
    Returns:
        The table as one string.
    """
    fmts = [floatfmt] * len(headers) if isinstance(floatfmt, str) else list(floatfmt)
    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(f"row {i} has {len(row)} cells, expected {len(headers)}: {row!r}")
    cells = [[_cell(v, fmts[j]) for j, v in enumerate(row)] for row in rows]
    numeric = [
        all(
            row[j] is None or (isinstance(row[j], (int, float)) and not isinstance(row[j], bool))
            for row in rows
        )
        for j in range(len(headers))
    ]
    widths = [max([len(h)] + [len(r[j]) for r in cells]) for j, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        padded = (v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric))
        return "  ".join(padded).rstrip()

    out = [title] if title else []
    out += [line(list(headers)), "  ".join("-" * w for w in widths)] + [line(r) for r in cells]
    return "\n".join(out)


def concat_columns(*tables: Mapping[str, Sequence]) -> dict[str, list]:
    """Stack column dicts with the same keys (e.g. the data of two subplots) into one."""
    keys = list(tables[0])
    for t in tables[1:]:
        if list(t) != keys:
            raise ValueError(f"column names differ: {keys} vs {list(t)}")
    return {k: [v for t in tables for v in t[k]] for k in keys}
