"""Every notebook figure follows the plot rules (conventions, notebook template step 9).

Each figure is rendered from small synthetic data (latencies shaped like the notebooks' sweeps, no
emulation) and audited: titles say which numbers are estimates (and the chip), axes are labelled, legends
have at most 8 entries, no two series of an axes are identical, a series drawn over another at a shared
point stays visible, panel titles do not overlap, and a roofline ranks a faster version higher against
the roof of its own launch's cores.
"""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import LogFormatter, ScalarFormatter  # noqa: E402

from nki_moe import ops  # noqa: E402
from nki_moe.ladder import Sweep  # noqa: E402
from nki_moe.perf.calibration import MEASUREMENTS, CalibrationRow, plot_calibration  # noqa: E402
from nki_moe.perf.hardware import get_hardware  # noqa: E402
from nki_moe.perf.published import QWEN3_DECODE_MEASURED  # noqa: E402
from nki_moe.perf.roofline import RooflinePoint, core_roof, plot_roofline, roofline_time  # noqa: E402
from nki_moe.plots import SAME, plot_bytes_breakdown, plot_decode_floor_vs_measured  # noqa: E402

SIZES = (1, 18, 128, 402, 640)
# trn2 latencies (µs) in the shape of the notebooks' sweeps: rmsnorm v0 = v1 = v2 at small T; matmul v3 = v2
# exactly (as the trn3 sweep has it), v4 = v3 from T = 128; router v1 on two cores is the fastest
LATENCY = {
    "rmsnorm": {
        "v0": (10.73, 13.78, 15.0, 33.82, 44.45),
        "v1": (10.73, 13.78, 15.0, 34.05, 43.37),
        "v2": (10.73, 12.86, 15.0, 19.36, 26.97),
        "v3": (9.29, 11.42, 13.56, 17.11, 22.16),
    },
    "matmul": {
        "v0": (96.79, 409.43, 2486.68, 5779.48, 8581.44),
        "v1": (89.27, 140.07, 141.39, 401.15, 488.42),
        "v2": (41.32, 46.47, 47.69, 93.46, 109.97),
        "v3": (41.32, 46.47, 47.69, 93.46, 109.97),
        "v4": (32.83, 38.22, 47.69, 93.46, 109.97),
        "v5": (31.57, 36.95, 46.31, 92.08, 108.58),
        "v6": (29.55, 36.95, 46.31, 92.08, 108.58),
    },
    "router": {
        "v0": (11.4, 12.53, 13.72, 35.4, 44.21),
        "v1": (11.01, 12.15, 13.33, 20.42, 27.51),
        "v2": (18.36, 31.49, 33.33, 103.9, 129.92),
    },
}
# HBM bytes each kernel really moves / the op's ideal bytes: rmsnorm v0/v1 reload x (the old roofline ranked
# v0 best because its MBU counted these reloads)
RELOADS = {"rmsnorm": {"v0": 1.5, "v1": 1.5, "v2": 1.2, "v3": 1.2}}
SHAPE = {"rmsnorm": {}, "matmul": {"N": 4096}, "router": {}}


def synthetic_sweep(name: str) -> Sweep:
    """A Sweep of op ``name`` with the rows Ladder.sweep makes, from LATENCY (trn3: 0.8 × trn2)."""
    op, rows = ops.get(name), []
    for version, latencies in LATENCY[name].items():
        cores = op.version(version).lnc
        for T, us in zip(SIZES, latencies):
            flops, nbytes = op.flops_bytes(T=T, **SHAPE[name])
            for target, scale in (("trn2", 1.0), ("trn3", 0.8)):
                hw, t = get_hardware(target), us * scale
                floor = roofline_time(flops, nbytes, hw, "bf16", "core") / cores * 1e6
                own = nbytes * RELOADS.get(name, {}).get(version, 1.0)
                peak, bw = core_roof(hw, cores)
                rows.append(
                    dict(
                        version=version,
                        T=T,
                        target=target,
                        cores=cores,
                        latency_us=t,
                        roofline_us=floor,
                        pct_roofline=100 * floor / t,
                        mfu=flops / (t * 1e-6 * peak),
                        mbu=own / (t * 1e-6 * bw),
                        flops=flops,
                        bytes=nbytes,
                    )
                )
    return Sweep(rows, "T")


# ---- the audit ----------------------------------------------------------------------------------------


def _suptitle(fig) -> str:
    return fig._suptitle.get_text() if fig._suptitle is not None else ""


def _labelled(ax, axis: str) -> bool:
    """An axis label, or named (categorical) ticks, on this axes or one it shares the axis with."""
    for a in getattr(ax, f"get_shared_{axis}_axes")().get_siblings(ax):
        ax_axis = getattr(a, f"{axis}axis")
        named = not isinstance(ax_axis.get_major_formatter(), (ScalarFormatter, LogFormatter))  # not numbers
        if ax_axis.get_label_text() or named:
            return True
    return False


def _data(artist) -> np.ndarray:
    if isinstance(artist, matplotlib.lines.Line2D):
        return np.asarray(artist.get_xydata(), float)  # in axis units (categorical x included)
    return np.asarray(artist.get_offsets(), float)


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def assert_titles(fig, words: tuple[str, ...]) -> None:
    """Each axes has a title or the figure a suptitle, and the two together say each of ``words``."""
    sup = _suptitle(fig)
    for ax in fig.axes:
        heading = f"{sup} {ax.get_title()}".lower()
        assert heading.strip(), f"axes {ax.get_title()!r} of figure {sup!r}: no title and no suptitle"
        for word in words:
            assert word.lower() in heading, (
                f"axes {ax.get_title()!r} of figure {sup!r}: does not say {word!r}"
            )


def assert_labels(fig) -> None:
    """Both axes of every panel are labelled (or have categorical ticks)."""
    for ax in fig.axes:
        assert _labelled(ax, "x") and _labelled(ax, "y"), f"axes {ax.get_title()!r}: an axis has no label"


def assert_short_legends(fig) -> None:
    """No legend has more than 8 entries."""
    for legend in [ax.get_legend() for ax in fig.axes if ax.get_legend()] + fig.legends:
        texts = [t.get_text() for t in legend.get_texts()]
        assert len(texts) <= 8, f"{len(texts)} legend entries > 8: {texts}"


def assert_no_duplicates(fig) -> None:
    """No two lines or collections of one axes have identical data."""
    for ax in fig.axes:
        series = [a for a in ax.get_lines() + ax.collections if len(_data(a))]
        for a, b in itertools.combinations(series, 2):
            da, db = _data(a), _data(b)
            same = da.shape == db.shape and np.allclose(da, db, rtol=1e-9, atol=0)
            assert not same, f"axes {ax.get_title()!r}: {a.get_label()!r} and {b.get_label()!r} are identical"


def assert_nothing_hidden(fig) -> None:
    """A series drawn over another at a shared point has another marker shape and a hollow marker."""
    for ax in fig.axes:
        lines = [a for a in ax.get_lines() if len(a.get_xdata()) > 1 and a.get_marker() not in ("None", "")]
        for a, b in itertools.combinations(lines, 2):  # b is drawn over a
            if {tuple(p) for p in _data(a)} & {tuple(p) for p in _data(b)}:
                hides = a.get_marker() == b.get_marker() or b.get_markerfacecolor() != "none"
                assert not hides, f"axes {ax.get_title()!r}: {b.get_label()!r} hides {a.get_label()!r}"


def assert_titles_apart(fig) -> None:
    """No two panel titles (nor a panel title and the suptitle) overlap once drawn."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    titles = [ax.title for ax in fig.axes if ax.get_title()] + ([fig._suptitle] if _suptitle(fig) else [])
    for a, b in itertools.combinations(titles, 2):
        ea, eb = a.get_window_extent(renderer), b.get_window_extent(renderer)
        assert not _overlap(ea, eb), f"titles {a.get_text()!r} and {b.get_text()!r} overlap"


RULES = (
    assert_labels,
    assert_short_legends,
    assert_no_duplicates,
    assert_nothing_hidden,
    assert_titles_apart,
)


def audit(fig, words: tuple[str, ...]) -> None:
    """Assert every plot rule on a rendered figure; ``words`` must appear in each panel's (sup)title."""
    assert_titles(fig, words)
    for rule in RULES:
        rule(fig)


def _drawn_values(ax) -> list[float]:
    """y of every single-point marker and height of every bar in ``ax``."""
    marks = [float(line.get_ydata()[0]) for line in ax.get_lines() if len(line.get_ydata()) == 1]
    return marks + [p.get_height() for p in ax.patches if isinstance(p, Rectangle)]


def assert_faster_is_higher(cols: dict, key: str, value: str) -> None:
    """At every (target, size), a version with a lower latency has a higher ``value`` column."""
    groups: dict = {}
    for target, size, lat, y, label in zip(
        cols["target"], cols[key], cols["latency_us"], cols[value], cols["label"]
    ):
        groups.setdefault((target, size), []).append((lat, y, label))
    for where, pts in groups.items():
        pts.sort()
        for (la, ya, na), (lb, yb, nb) in zip(pts, pts[1:]):
            assert la == lb or ya > yb, (
                f"{where}: {na} ({la:.2f} µs) drawn at {ya:.3g}, not above {nb} ({lb:.2f} µs) at {yb:.3g}"
            )


def assert_roofs_of_launches(fig, sweep: Sweep, flop_op: bool) -> None:
    """Each panel draws the roof of every launch's cores (a line at its peak TFLOP/s or HBM GB/s)."""
    targets = sorted({r["target"] for r in sweep.rows})
    for ax, target in zip(fig.axes, targets):
        hw = get_hardware(target)
        tops = {
            round(float(np.max(line.get_ydata())), 6) for line in ax.get_lines() if len(line.get_ydata()) > 1
        }
        for n in sorted({r["cores"] for r in sweep.rows}):
            peak, bw = core_roof(hw, n)
            want = round(peak / 1e12 if flop_op else bw / 1e9, 6)
            assert want in tops, (
                f"{target}: no roof of the {n}-core launches ({want}); roofs drawn: {sorted(tops)}"
            )


def assert_points_drawn(fig, cols: dict, value: str) -> None:
    """Every version's value is drawn (as its own mark or one within SAME of it) in its target's panel."""
    panels = dict(zip(sorted(set(cols["target"])), fig.axes))
    for target, y, label in zip(cols["target"], cols[value], cols["label"]):
        drawn = _drawn_values(panels[target])
        assert any(abs(d - y) <= SAME * y for d in drawn), f"{target} {label}: {y:.3g} is not drawn"


# ---- the figures --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("name", ["rmsnorm", "matmul", "router"])
def test_sweep_figure(name):
    op, sweep = ops.get(name), synthetic_sweep(name)
    fig, cols = sweep.plot(op.figure_title(sweep))
    audit(fig, ("estimate", op.versions[0].kernel))
    for ax in fig.axes[: len(fig.axes) // 2]:  # the top (µs) row names the chip
        assert ax.get_title().split()[0] in ("Trn2", "Trn3")
    units = [ax.get_ylabel() for ax in fig.axes]
    assert any("GB/s" in u or "TFLOP/s" in u for u in units), f"no panel in hardware units: {units}"
    assert {len(c) for c in cols.values()} == {len(sweep.rows)}
    assert {"cores", "achieved_gbs", "achieved_tflops", "drawn_as"} <= set(cols)
    if name == "matmul":
        assert cols["drawn_as"][cols["version"].index("v3")] == "v2, v3"


@pytest.mark.parametrize("name, sizes", [("rmsnorm", (640,)), ("matmul", (1, 640)), ("router", (1, 640))])
def test_roofline_figure(name, sizes):
    op, sweep = ops.get(name), synthetic_sweep(name)
    fig, cols = op.roofline(sweep, T=sizes)
    flop_op = name != "rmsnorm"
    audit(fig, ("estimate", op.versions[0].kernel, f"T = {', '.join(map(str, sizes))}"))
    assert [ax.get_title().split()[0] for ax in fig.axes] == ["Trn2", "Trn3"]
    value = "achieved_tflops" if flop_op else "achieved_gbs"
    assert_faster_is_higher(cols, "T", value)
    assert_points_drawn(fig, cols, value)
    assert_roofs_of_launches(fig, sweep, flop_op)


def test_roofline_merges_coinciding_versions():
    sweep = synthetic_sweep("matmul")
    _, cols = ops.get("matmul").roofline(sweep, T=(1, 640))
    drawn = dict(zip(zip(cols["target"], cols["label"]), cols["drawn_as"]))
    assert drawn["trn2", "v3 T=640"] == drawn["trn2", "v6 T=640"] == "v2, v3, v4, v5, v6"
    assert drawn["trn2", "v4 T=1"] == "v4, v5" and drawn["trn2", "v3 T=1"] == "v2, v3"  # v4: 4 % above v5


def test_model_roofline_figure():
    points = [RooflinePoint("decode", 1.07, marker="*"), RooflinePoint("prefill S=640", 60.4, marker="o")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True, layout="constrained")  # as notebook 00
    for ax, chip, dtypes in zip(axes, ("trn2", "trn3"), (("bf16", "fp8"), ("bf16", "mxfp8"))):
        plot_roofline(ax, get_hardware(chip), points, dtypes=dtypes)
        ax.legend(fontsize=7)
    fig.suptitle("Qwen3-30B-A3B (bf16, batch 1)")  # the helper's panel titles must say the rest
    audit(fig, ("estimate", "published"))
    assert [ax.get_title().split()[0] for ax in axes] == ["Trn2", "Trn3"]


def test_decode_figures():
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    plot_decode_floor_vs_measured(ax, {"trn2": 2.1, "trn3": 1.25}, QWEN3_DECODE_MEASURED, subject="decode")
    audit(fig, ("estimate", "published", "Trn2", "Trn3"))
    fig, ax = plt.subplots(figsize=(8, 3.8))
    plot_bytes_breakdown(ax, {"experts": 3.6, "attention": 1.8, "lm_head": 0.6}, subject="toy")
    audit(fig, ("analytic", "every chip"))


def test_calibration_figure():
    fig, ax = plt.subplots(figsize=(9, 6))
    plot_calibration(ax, [CalibrationRow(m, m.measured * 1.1) for m in MEASUREMENTS])
    audit(fig, ("estimate", "published"))
