"""Plot helpers for notebooks: each draws on a given Axes and returns the plotted numbers as CSV columns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.patches import Patch

from nki_moe.perf.published import MeasuredDecode

__all__ = [
    "FAMILY_LABELS",
    "SAME",
    "merge_close",
    "series_style",
    "label_column",
    "plot_decode_floor_vs_measured",
    "plot_bytes_breakdown",
]

# Values closer than this (relative) are one mark on the log axes of these figures (less than a marker's
# width): drawn once, their labels merged.
SAME = 0.05
_MARKERS = "osD^vPX*"
_LINES = ("-", "--", "-.", ":")

FAMILY_LABELS = {
    "attention": "attention (q,k,v,o proj.)",
    "router": "router",
    "experts": "experts (top-k only)",
    "lm_head": "LM head",
    "norms_embedding": "norms + embedding row",
    "kv_cache": "KV cache",
}
_FLOOR, _MEASURED = "HBM floor (estimate)", "measured (published)"


def merge_close(
    items: Sequence[tuple[str, Sequence[float]]], rel: float = SAME
) -> list[tuple[list[str], list]]:
    """Group labelled value sequences that lie within ``rel`` of their group's first member everywhere.

    Returns ``[(labels, values of the first member)]`` in first-seen order (a group of one: a plain series).
    """
    groups: list[tuple[list[str], list]] = []
    for label, values in items:
        v = np.asarray(values, dtype=float)
        for labels, first in groups:
            f = np.asarray(first, dtype=float)
            if f.shape == v.shape and np.all(np.abs(v - f) <= rel * np.minimum(np.abs(v), np.abs(f))):
                labels.append(label)
                break
        else:
            groups.append(([label], list(values)))
    return groups


def series_style(i: int) -> dict:
    """Line2D style of the ``i``-th series: colour, hollow marker and dash all differ, so a series drawn over
    another (equal at some sizes) leaves the one beneath visible."""
    return dict(
        color=f"C{i % 10}", marker=_MARKERS[i % len(_MARKERS)], ls=_LINES[i % len(_LINES)], mfc="none"
    )


def label_column(
    ax, x: float, ys: Sequence[float], texts: Sequence[str], colors: Sequence, fontsize=8
) -> None:
    """Label points that share one ``x`` on a log-y axes directly, to their right: labels are spread apart
    vertically (one text line at least) and joined to their point by a leader line."""
    lo, hi = np.log10(ax.get_ylim())
    height_pt = ax.get_position().height * ax.figure.get_figheight() * 72
    gap = 1.4 * fontsize * (hi - lo) / height_pt
    order = np.argsort(ys)
    want = np.log10(np.asarray(ys, dtype=float)[order])
    pos = want.copy()
    for k in range(1, len(pos)):
        pos[k] = max(pos[k], pos[k - 1] + gap)
    pos -= (pos - want).mean()  # centre the stack on its points
    for k, i in enumerate(order):
        ax.annotate(
            texts[i],
            (x, ys[i]),
            xytext=(14, 10 ** pos[k]),
            textcoords=("offset points", "data"),
            va="center",
            fontsize=fontsize,
            color=colors[i],
            arrowprops=dict(arrowstyle="-", color=colors[i], lw=0.6, shrinkA=0, shrinkB=4),
        )


def plot_decode_floor_vs_measured(
    ax,
    floors_ms: Mapping[str, float],
    measured: Sequence[MeasuredDecode],
    floors_alt_ms: Mapping[str, float] | None = None,
    *,
    subject: str,
) -> dict[str, list]:
    """Bars of decode ms/token per chip: the HBM-roofline floor (hatched) beside published measurements.

    Args:
        ax: matplotlib Axes.
        floors_ms: ``{hardware: ms per token}`` floor, bytes per token / chip HBM bandwidth.
        measured: published measurements; only those of a hardware in ``floors_ms`` are drawn.
        floors_alt_ms: optional floor with the conflicting bandwidth figure, drawn as an error bar.
        subject: what is timed, the title's start (the title adds the chips and which bars are estimates).
    Returns:
        Columns ``{hardware, kind, label, ms_per_token, x_floor}`` (x_floor = ms / floor of that chip).
    """
    cols: dict[str, list] = {"hardware": [], "kind": [], "label": [], "ms_per_token": [], "x_floor": []}
    x, positions, names, groups = 0.0, [], [], []
    for hw, floor in floors_ms.items():
        bars = [(_FLOOR, "HBM floor", floor)]
        bars += [(_MEASURED, m.label, m.ms_per_token) for m in measured if m.hardware == hw]
        start = x
        for kind, label, ms in bars:
            est = kind == _FLOOR
            err = None
            if est and floors_alt_ms and hw in floors_alt_ms:
                alt = floors_alt_ms[hw]
                err = [[max(0.0, ms - alt)], [max(0.0, alt - ms)]]
            ax.bar(
                x,
                ms,
                0.8,
                color="white" if est else "tab:blue",
                edgecolor="tab:red" if est else "k",
                hatch="//" if est else None,
                yerr=err,
                capsize=4,
            )
            note = "" if est else f"\n{ms / floor:.1f}× floor"
            ax.text(x, ms + 0.2, f"{ms:.2f} ms{note}", ha="center", va="bottom", fontsize=8)
            for key, value in zip(cols, (hw, kind, label, ms, ms / floor)):
                cols[key].append(value)
            positions.append(x)
            names.append(label)
            x += 1
        groups.append(((start + x - 1) / 2, hw.capitalize()))
        x += 0.6
    ax.set_xticks(positions, names, rotation=20, ha="right", fontsize=8)
    for center, name in groups:
        ax.text(
            center,
            -0.2,
            name,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="top",
            fontsize=11,
            fontweight="bold",
        )
    handles = [
        Patch(facecolor="white", edgecolor="tab:red", hatch="//", label=_FLOOR),
        Patch(facecolor="tab:blue", edgecolor="k", label=_MEASURED),
    ]
    ax.legend(handles=handles, loc="upper left", fontsize=8)
    if floors_alt_ms:
        ax.text(
            0.99,
            0.98,
            "error bar on a floor: the other published\nHBM bandwidth of that chip",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=7,
            color="0.3",
        )
    ax.set_ylabel("decode time per token, ms (batch 1)")
    ax.set_ylim(0, max(cols["ms_per_token"]) * 1.25)
    chips = " and ".join(hw.capitalize() for hw in floors_ms)
    ax.set_title(f"{subject} on {chips}:\nHBM floor (estimate) vs published measurements", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    return cols


def plot_bytes_breakdown(
    ax,
    breakdown: Mapping[str, float],
    unit: float = 1e9,
    unit_name: str = "GB",
    *,
    subject: str,
) -> dict[str, list]:
    """Horizontal bars of bytes per op family, annotated with value and share of the total.

    Args:
        ax: matplotlib Axes.
        breakdown: ``{family: bytes}`` in display order (top to bottom).
        unit: bytes per displayed unit (1e9 → GB).
        unit_name: axis unit label.
        subject: the model and context, in the title (which adds the total and that the counts are analytic,
            the same on every chip).
    Returns:
        Columns ``{family, bytes, share}``.
    """
    families, values = list(breakdown), [float(v) for v in breakdown.values()]
    total = sum(values)
    y = list(range(len(families)))[::-1]
    ax.barh(y, [v / unit for v in values], color="tab:blue", edgecolor="k")
    for yi, v in zip(y, values):
        shown = f"{v / unit:.3f} {unit_name}" if v >= 0.01 * unit else f"{v / 1e6:.2f} MB"
        ax.text(
            v / unit + total / unit * 0.01, yi, f"{shown} ({100 * v / total:.3g} %)", va="center", fontsize=9
        )
    ax.set_yticks(y, [FAMILY_LABELS.get(f, f) for f in families])
    ax.set_xlabel(f"bytes read from HBM per decode token, {unit_name}")
    ax.set_ylabel("op family")
    ax.set_xlim(0, max(values) / unit * 1.45)
    ax.set_title(
        f"HBM bytes per decode token, {subject}: total {total / unit:.2f} {unit_name}\n"
        "(analytic count, the same on every chip)",
        fontsize=10,
    )
    ax.grid(True, axis="x", alpha=0.3)
    return {"family": families, "bytes": values, "share": [v / total for v in values]}
