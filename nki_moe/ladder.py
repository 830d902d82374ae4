"""The ladder harness: one op, its seeded inputs, reference, cost and kernel versions; check, profile, sweep.

A :class:`Ladder` is what every kernel notebook, the kernel tests and bench/ build on::

    op = nki_moe.ops.get("rmsnorm")
    print(op.source("v3"))                 # the kernel version, as a reader should see it
    op.check("v3", T=640)                  # emulate (strict), assert against the reference, MACs = analytic
    op.profile("v3", T=640).summary()      # cost-model ESTIMATE, Perfetto trace under build/traces/
    sw = op.sweep(T=(1, 128, 640))         # every version × T × target, each kernel emulated once
    fig, data = sw.plot("RMSNorm"); fig, cols = op.roofline(sw, T=640)

Kernels and the reference take the same arguments in the same layout (``make_args``); a version that wants
its weights laid out differently names a host-side ``layout`` (``nki_moe.kernels.layouts``) applied to those
arguments once, as a model loader would at load time.

Every Trainium time here is an ESTIMATE of the nki_moe cost model (``nki_moe.perf``), never a measurement.
One emulator run gives the instruction trace; the same trace is costed for each target (the kernels'
instruction streams do not depend on the target).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from nki_moe.check import CheckResult, ErrorRatio, check_close, error_ratio

__all__ = ["TARGETS", "Version", "Ladder", "Checked", "Sweep", "exact", "ratio", "busiest_engine"]

TARGETS = ("trn2", "trn3")
_AXIS = {"T": "tokens T", "N": "output features N", "L": "cached positions L"}  # sweep x-axis labels
Outcome = ErrorRatio | CheckResult


@dataclass(frozen=True)
class Version:
    """One rung: its label, the kernel function's name in the op's module, its LNC degree and layout."""

    name: str
    kernel: str
    lnc: int = 1
    layout: Callable[[tuple, int], tuple] | None = None  # (op's arguments, LNC) -> this version's arguments


@dataclass(frozen=True)
class Checked:
    """What :meth:`Ladder.check` verified: every outcome passed (else it raised)."""

    version: str
    shape: dict
    outputs: tuple  # the kernel's outputs
    expected: tuple  # the reference at the kernel's precision
    outcomes: tuple[Outcome, ...]
    macs: int
    trace: Any = None  # the emulator trace, for costing without a second run
    padding_macs: int = 0  # MACs beyond the ideal the version computes by design (Ladder.padding_macs)

    @property
    def ratio(self) -> float | None:
        """The first 3-way error ratio among the outcomes (None when only exact checks ran)."""
        return next((o.ratio for o in self.outcomes if isinstance(o, ErrorRatio)), None)

    @property
    def message(self) -> str:
        return f"{self.version} {_shape_label(self.shape)}: " + "; ".join(o.message for o in self.outcomes)


def ratio(actual, lowp, fp32, name: str = "y") -> ErrorRatio:
    """3-way error ratio of one output, its message prefixed with the output's name."""
    r = error_ratio(np.asarray(actual, np.float32), lowp, fp32)
    return ErrorRatio(r.kernel_error, r.reference_error, r.ratio, r.max_ratio, f"{name}: {r.message}")


def exact(actual, expected, name: str) -> CheckResult:
    """Bit-exact equality (indices, counts, the residual stream); zeros are legitimate values here."""
    return check_close(
        np.asarray(actual), np.asarray(expected), atol=0.0, rtol=0.0, allow_zero=True, name=name
    )


def busiest_engine(p, compute_only: bool = False) -> str:
    """Engine with the largest busy time of a ``ProfileResult`` (what a "bound by <engine>" claim names)."""
    busy = {e: b for e, b in p.busy_us.items() if not (compute_only and e == "dma")}
    return max(busy, key=busy.get)


def _shape_label(shape: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items())


def _f32(a):
    """Float arrays (bf16 included) as fp32, for the reference; integers and scalars as they are."""
    floating = isinstance(a, np.ndarray) and (a.dtype.kind == "f" or a.dtype.name == "bfloat16")
    return a.astype(np.float32) if floating else a


def _tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


@dataclass(frozen=True)
class Ladder:
    """An op and its kernel versions, with the registry's pointers (notebook, figures, tests).

    Args:
        name: the op's registry name.
        title: one line for tables and plot titles.
        module: the kernel module (``nki_moe.kernels.<family>``).
        make_args: ``make_args(seed, **shape)`` -> the kernels' (and the reference's) arguments, seeded.
        reference: ``reference(*args, dtype)`` -> the outputs of the final version (fp32 or bf16 mode).
        cost: ``cost(**shape)`` -> :class:`nki_moe.reference.OpCost` (FLOPs = 2·MACs, HBM bytes).
        compare: ``compare(outputs, lowp, fp32)`` -> outcomes to assert (a version may return a prefix of
            the reference's outputs).
        versions: the ladder, v0 first.
        padding_macs: ``padding_macs(kernel, args)`` -> MACs a version computes beyond the op's ideal by
            design (e.g. token blocks padded to a fixed size), counted separately: the MAC check asserts
            trace MACs = ideal + padding. None: every version does exactly the ideal MACs.
        notebook, figures, tests: where the op is built, plotted and tested (paths relative to the root).
    """

    name: str
    title: str
    module: str
    make_args: Callable[..., tuple]
    reference: Callable[..., Any]
    cost: Callable[..., Any]
    compare: Callable[[tuple, tuple, tuple], Sequence[Outcome]]
    versions: tuple[Version, ...]
    padding_macs: Callable[[str, tuple], int] | None = None
    notebook: str = ""
    figures: tuple[str, ...] = ()
    tests: tuple[str, ...] = ()
    seed: int = 0
    target: str = "trn2"

    # ---- lookup ------------------------------------------------------------------------------------
    def version(self, v: str | Version) -> Version:
        if isinstance(v, Version):
            return v
        for ver in self.versions:
            if ver.name == v:
                return ver
        raise KeyError(f"op {self.name!r} has no version {v!r}; versions: {[x.name for x in self.versions]}")

    def kernel(self, v: str | Version):
        """The jitted kernel of version ``v``."""
        return getattr(importlib.import_module(self.module), self.version(v).kernel)

    def source(self, v: str | Version) -> str:
        """The version's source code, as the notebooks print it."""
        return inspect.getsource(getattr(self.kernel(v), "fn", self.kernel(v)))

    @property
    def final(self) -> Version:
        return self.versions[-1]

    def on(self, target: str | None = None, seed: int | None = None) -> Ladder:
        """This op with another default target and/or input seed (what a notebook's parameters set)."""
        return replace(self, target=target or self.target, seed=self.seed if seed is None else seed)

    # ---- inputs ------------------------------------------------------------------------------------
    def args(self, seed: int | None = None, **shape) -> tuple:
        """The op's arguments (kernel = reference layout) for ``shape``."""
        return self.make_args(self.seed if seed is None else seed, **shape)

    def fp32_args(self, seed: int | None = None, **shape) -> tuple:
        """The op's arguments with float arrays promoted to fp32: what the reference computes on."""
        return tuple(_f32(a) for a in self.args(seed, **shape))

    def version_args(self, v: str | Version, args: tuple, lnc: int | None = None) -> tuple:
        """``args`` in the layout version ``v`` takes at LNC ``lnc`` (default its own): host side, once."""
        ver = self.version(v)
        return ver.layout(args, ver.lnc if lnc is None else lnc) if ver.layout else args

    def expected(self, args: tuple, dtype: str) -> tuple:
        """The reference's outputs on ``args`` (arrays promoted to fp32) in ``dtype`` mode."""
        return _tuple(self.reference(*map(_f32, args), dtype=dtype))

    def flops_bytes(self, **shape) -> tuple[float, float]:
        """(FLOPs, HBM bytes) of the op from its cost function, for the roofline."""
        c = self.cost(**shape)
        return 2.0 * c.macs, float(c.bytes)

    # ---- emulate, check, profile -----------------------------------------------------------------
    def run(
        self,
        v: str | Version,
        args: tuple | None = None,
        target: str | None = None,
        lnc: int | None = None,
        **shape,
    ):
        """Emulate version ``v`` (strict) on ``args`` (default: seeded inputs of ``shape``): a SimResult."""
        import nki_moe.sim as sim

        ver = self.version(v)
        args = self.args(**shape) if args is None else args
        lnc = ver.lnc if lnc is None else lnc
        return sim.run(
            self.kernel(ver),
            *self.version_args(ver, args, lnc),
            target=target or self.target,
            lnc=lnc,
            strict=True,
        )

    def check(
        self,
        v: str | Version,
        args: tuple | None = None,
        target: str | None = None,
        lnc: int | None = None,
        seed: int | None = None,
        **shape,
    ) -> Checked:
        """Emulate ``v`` and assert its outputs against the reference and its MAC count against the cost.

        Raises:
            AssertionError: naming the version, the shape and the failed outcome's message.
        """
        args = self.args(seed, **shape) if args is None else args
        res = self.run(v, args, target, lnc)
        outputs = _tuple(res.outputs)
        lowp, fp32 = self.expected(args, "bf16"), self.expected(args, "fp32")
        outcomes = tuple(self.compare(outputs, lowp, fp32))
        label = f"{self.name} {self.version(v).name} {_shape_label(shape)}"
        for o in outcomes:
            assert o, f"{label}: {o.message}"
        macs = res.mac_count()
        pad = self.padding_macs(self.version(v).kernel, args) if self.padding_macs else 0
        if shape:
            want = self.cost(**shape).macs
            assert macs == want + pad, f"{label}: trace has {macs} MACs, the op's cost function {want}" + (
                f" + {pad} of padding" if pad else ""
            )
        return Checked(self.version(v).name, dict(shape), outputs, lowp, outcomes, macs, res.trace, pad)

    def profile(self, v: str | Version, target: str | None = None, trace_path=True, trace=None, **shape):
        """Cost-model profile (an ESTIMATE) of ``v`` at ``shape``; writes a Perfetto trace by default.

        ``trace``: an emulator trace of this version and shape already at hand (e.g. ``Checked.trace``);
        otherwise the version is emulated on the op's seeded inputs.
        """
        from nki_moe.perf.profile import profile_trace

        ver = self.version(v)
        trace = self.run(ver, **shape).trace if trace is None else trace
        flops, nbytes = self.flops_bytes(**shape)
        name = f"{self.name}_{ver.name}_{'_'.join(f'{k}{x}' for k, x in shape.items())}"
        return profile_trace(
            trace, target or self.target, name=name, trace_path=trace_path, flops=flops, hbm_bytes=nbytes
        )

    def step(self, v: str | Version, show_source: bool = True, **shape):
        """One rung of a notebook: print the version's source, check it, profile it; (Checked, profile)."""
        if show_source:
            print(self.source(v))
        checked = self.check(v, **shape)
        print(checked.message)
        prof = self.profile(v, trace=checked.trace, **shape)
        print(prof.summary())
        return checked, prof

    def sweep(
        self, versions: Sequence[str] | None = None, targets: Sequence[str] = TARGETS, **shape
    ) -> Sweep:
        """Estimated latency of ``versions`` (default all) over the one sequence-valued entry of ``shape``.

        Example: ``op.sweep(T=(1, 18, 640), N=4096)``; each (version, T) is emulated once and its trace is
        costed on every target.
        """
        from nki_moe.perf.profile import profile_trace

        swept = [k for k, x in shape.items() if isinstance(x, (list, tuple, range))]
        assert len(swept) == 1, f"sweep needs exactly one sequence-valued shape entry, got {shape}"
        key = swept[0]
        ladder = [self.version(v) for v in versions] if versions else list(self.versions)
        rows = []
        for value in shape[key]:
            point = {**shape, key: value}
            args = self.args(**point)
            flops, nbytes = self.flops_bytes(**point)
            for ver in ladder:
                trace = self.run(ver, args).trace
                for target in targets:
                    p = profile_trace(trace, target, name=ver.name, flops=flops, hbm_bytes=nbytes)
                    rows.append(
                        dict(
                            version=ver.name,
                            **{key: value},
                            target=target,
                            cores=ver.lnc,  # the launch's cores (a core left idle at T=1 counts)
                            latency_us=p.latency_us,
                            roofline_us=p.roofline_us,
                            pct_roofline=100 * p.pct_of_roofline,
                            mfu=p.mfu,
                            mbu=p.mbu,
                            flops=flops,
                            bytes=nbytes,
                            **{f"busy_{e}_us": b for e, b in p.busy_us.items()},
                        )
                    )
        sweep = Sweep(rows, key, self.name)
        from nki_moe import device

        if device.enabled():  # run_all.py --backend neuron on a Trainium host: the measured column
            chip = self.target
            for value in shape[key]:
                for ver in ladder:
                    device.measure(self, ver.name, target=chip, **{**shape, key: value})
        return sweep

    def save_figures(self, sweep: Sweep, title: str | None = None, **at) -> list:
        """Save the sweep figure and the roofline figure (at sizes ``at``) under the op's figure stems.

        ``title``: the op and its shape (default the op's title); the figures add the kernels and sizes.
        """
        from nki_moe.figures import save_figure

        sweep_stem, roof_stem = self.figures
        fig, data = sweep.plot(self.figure_title(sweep, title))
        paths = [save_figure(fig, sweep_stem, data)]
        fig, data = self.roofline(sweep, title, **at)
        return paths + [save_figure(fig, roof_stem, data)]

    def figure_title(self, sweep: Sweep, title: str | None = None) -> str:
        """'<title> · <kernel>_v0…v3': the op with its shape and the kernels a figure of ``sweep`` shows."""
        names = list(dict.fromkeys(r["version"] for r in sweep.rows))
        first, last = self.version(names[0]), self.version(names[-1])
        kernels = first.kernel if first == last else f"{first.kernel}…{last.name}"
        return f"{title or self.title} · {kernels}"

    def roofline(self, sweep: Sweep, title: str | None = None, **at):
        """Figure of every version at the sizes ``at`` (``T=(1, 640)``), one panel per target in the sweep.

        Every version sits at the op's ideal arithmetic intensity (its cost function's FLOPs / bytes) at the
        FLOP/s it achieves on those ideal FLOPs, so at one size a faster version is always higher; each launch
        is drawn against the roof of its own cores (1 core, or 2 for LNC=2). Versions within ``SAME`` of each
        other are one point with a merged label. An op without FLOPs (a norm) is drawn as achieved HBM
        bandwidth (ideal bytes / estimated time) against the HBM roof of each launch's cores.

        Returns:
            (figure, CSV columns: one row per target, size and version, with the label it is drawn under).
        """
        import matplotlib.pyplot as plt

        from nki_moe.perf.hardware import get_hardware

        key = sweep.key
        sizes = tuple(at[key]) if isinstance(at[key], (list, tuple)) else (at[key],)
        rows = [r for r in sweep.rows if r[key] in sizes]
        targets = sorted({r["target"] for r in rows})
        flop_op = sweep._has_flops
        fig, axes = plt.subplots(
            1, len(targets), figsize=(6.5 * len(targets), 5), squeeze=False, layout="constrained"
        )
        drawn: dict = {}
        for ax, target in zip(axes[0], targets):
            hw = get_hardware(target)
            drawn.update((_flop_roofline if flop_op else _bandwidth_roofline)(ax, hw, sweep, target, sizes))
            ax.set_title(_chip(target))
        what = "roofline" if flop_op else "achieved HBM bandwidth vs the HBM roof of each launch's cores"
        fig.suptitle(
            f"{self.figure_title(sweep, title)} at {key} = {', '.join(map(str, sizes))}:\n"
            f"{what} (cost-model estimates)"
        )
        cols = {
            "target": [r["target"] for r in rows],
            "version": [r["version"] for r in rows],
            key: [r[key] for r in rows],
            "cores": [r["cores"] for r in rows],
            "latency_us": [r["latency_us"] for r in rows],
            "intensity_flop_per_byte": [r["flops"] / r["bytes"] for r in rows],
            "achieved_tflops": [r["flops"] / r["latency_us"] * 1e-6 for r in rows],
            "achieved_gbs": [r["bytes"] / r["latency_us"] * 1e-3 for r in rows],
            "pct_roofline": [r["pct_roofline"] for r in rows],
            "mbu_own_traffic": [r["mbu"] for r in rows],  # the kernel's own HBM traffic, reloads included
            "label": [f"{r['version']} {key}={r[key]}" for r in rows],
            "drawn_as": [drawn[r["target"], r[key], r["version"]] for r in rows],
        }
        return fig, cols


def _flop_roofline(ax, hw, sweep: Sweep, target: str, sizes: tuple) -> dict:
    """Roofline panel of one target: the roof of each launch's cores, one marker shape per size, versions
    labelled directly; returns {(target, size, version): the label it is drawn under}."""
    from matplotlib.lines import Line2D

    from nki_moe.perf.roofline import plot_core_roof
    from nki_moe.plots import label_column, merge_close

    cores = {r["version"]: r["cores"] for r in sweep.rows if r["target"] == target}
    for n in sorted(set(cores.values())):
        plot_core_roof(ax, hw, n)
    drawn, columns, handles = {}, [], []
    for size in sizes:
        points = sorted(sweep.roofline_points(size, target), key=lambda p: (p.color, p.flops))
        marks = []  # (TFLOP/s, label, colour): one marker each
        for colour in dict.fromkeys(p.color for p in points):  # never merge launches on different cores
            mine = [(p.label, [p.flops]) for p in points if p.color == colour]
            for names, (y,) in merge_close(mine):
                n = cores[names[0]]
                launch = "" if len(set(cores.values())) == 1 else " (1 core)" if n == 1 else f" (LNC={n})"
                label = ", ".join(names) + launch
                marks.append((y / 1e12, label, colour))
                drawn.update({(target, size, v): label for v in names})
                # hollow: a launch on other cores at nearly the same point shows through
                ax.loglog(
                    [points[0].intensity], [y / 1e12], points[0].marker, color=colour, mfc="none", mew=2, ms=9
                )
        columns.append((points[0].intensity, marks))
        handles.append(
            Line2D(
                [], [], marker=points[0].marker, color="0.4", mfc="none", ls="", label=f"{sweep.key} = {size}"
            )
        )
    ax.set_xlim(0.3, 3000)
    for intensity, marks in columns:  # after every point is drawn: the labels need the final y range
        label_column(ax, intensity, *zip(*marks))
    ax.legend(
        handles=ax.get_legend_handles_labels()[0] + handles,
        fontsize=7,
        loc="upper left",
        title="points: the colour of their launch's roof",
        title_fontsize=7,
    )
    ax.set_xlabel("arithmetic intensity of the op, FLOP / byte (ideal counts of its cost function)")
    ax.set_ylabel("TFLOP/s on the op's ideal FLOPs (points: estimate)")
    ax.grid(True, which="both", alpha=0.3)
    return drawn


def _bandwidth_roofline(ax, hw, sweep: Sweep, target: str, sizes: tuple) -> dict:
    """Panel of one target for an op without FLOPs: a bar per version (and size) of its achieved bandwidth
    on the ideal bytes, coloured as the HBM roof of its launch's cores; returns {(target, size, version):
    the label it is drawn under}."""
    from nki_moe.perf.roofline import core_roof, core_style, cores_label

    key = sweep.key
    rows = [r for r in sweep.rows if r["target"] == target and r[key] in sizes]
    versions = list(dict.fromkeys(r["version"] for r in rows))
    at = {(r[key], r["version"]): r for r in rows}
    ticks, names = [], []
    for i, size in enumerate(sizes):
        for j, v in enumerate(versions):
            r, x = at[size, v], i * (len(versions) + 1) + j
            gbs = r["bytes"] / r["latency_us"] * 1e-3
            ax.bar(x, gbs, 0.8, color=core_style(r["cores"])[0], edgecolor="k", alpha=0.75)
            ax.annotate(
                f"{r['latency_us']:.1f} µs",
                (x, gbs),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                fontsize=8,
            )
            ticks.append(x)
            names.append(v if len(sizes) == 1 else f"{v}\n{key}={size}")
    for n in sorted({r["cores"] for r in rows}):
        colour, style = core_style(n)
        bw = core_roof(hw, n)[1]
        ax.axhline(
            bw / 1e9,
            color=colour,
            ls=style,
            lw=1.8,
            label=f"HBM roof of {cores_label(n)}: {bw / 1e9:.0f} GB/s",
        )
    ax.set_xticks(ticks, names)
    ax.set_ylim(0, 1.15 * ax.get_ylim()[1])
    ax.set_xlabel("version (bar colour: the roof of its launch's cores; label: estimated time)")
    ax.set_ylabel("achieved HBM GB/s on the op's ideal bytes (estimate)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return {(r["target"], r[key], r["version"]): r["version"] for r in rows}


_SIZE_MARKERS = "osD^v"  # roofline marker of the 1st, 2nd, … size of a sweep


def _chip(target: str) -> str:
    """A panel's title: 'Trn2 (NeuronCore-v3)'."""
    from nki_moe.perf.hardware import get_hardware

    hw = get_hardware(target)
    return f"{hw.name.capitalize()} ({hw.core_name})"


@dataclass
class Sweep:
    """Rows of :meth:`Ladder.sweep`: {version, <key>, target, latency_us, roofline_us, pct_roofline, ...}."""

    rows: list[dict]
    key: str = "T"
    op: str | None = None  # the registry op (names its device measurements, nki_moe.device)

    def latency(self, target: str = "trn2") -> dict[tuple[str, Any], float]:
        """{(version, size): estimated µs} on ``target``."""
        return {(r["version"], r[self.key]): r["latency_us"] for r in self.rows if r["target"] == target}

    def table(self, target: str, floatfmt: str = ".2f") -> str:
        """A printed table (version, size, µs, floor µs, % of roofline) of one target; with a measured column
        when this op was measured on a ``target`` chip (``results/measured_<target>.csv``, nki_moe.device)."""
        from nki_moe import device
        from nki_moe.tables import format_table

        if self.op is not None and device.measured_column(self.op, target, self.key):
            return device.sweep_table(self, self.op, target, floatfmt=floatfmt)

        body = [
            (r["version"], r[self.key], r["latency_us"], r["roofline_us"], r["pct_roofline"])
            for r in self.rows
            if r["target"] == target
        ]
        return format_table(body, ["version", self.key, "µs (est.)", "floor µs", "% roof"], floatfmt=floatfmt)

    def final(self, version: str, sizes: Sequence) -> dict:
        """{"<target>_<key><size>": {latency_us, pct_roofline, roofline_us}} of one version (results JSON)."""
        keys = ("latency_us", "pct_roofline", "roofline_us")
        return {
            f"{r['target']}_{self.key}{r[self.key]}": {k: r[k] for k in keys}
            for r in self.rows
            if r["version"] == version and r[self.key] in sizes
        }

    def summary_lines(self, version: str, sizes: Sequence, label: str) -> list[str]:
        """One takeaway sentence per (target, size) of ``version`` (numbers printed, never hand-written)."""
        return [
            f"{label} {key.replace('_' + self.key, f' {self.key}=')}: {v['latency_us']:.2f} µs (estimated), "
            f"{v['pct_roofline']:.1f} % of its {v['roofline_us']:.2f} µs roofline floor"
            for key, v in self.final(version, sizes).items()
        ]

    def plot(self, title: str):
        """Figure: latency (µs) and the achieved rate in hardware units vs size, one column per target.

        The rate is on the op's ideal counts: TFLOP/s (GB/s for an op without FLOPs) = ideal FLOPs (bytes) /
        estimated time, drawn against the roof of each launch's cores; the µs panel shows each launch's floor.
        Versions within ``SAME`` of each other at every size are one line with a merged label.

        Returns:
            (figure, CSV columns of the plotted numbers).
        """
        import matplotlib.pyplot as plt

        from nki_moe.perf.hardware import get_hardware
        from nki_moe.perf.roofline import core_style, cores_label, roofline_time
        from nki_moe.plots import merge_close, series_style

        key = self.key
        targets = sorted({r["target"] for r in self.rows})
        versions = list(dict.fromkeys(r["version"] for r in self.rows))
        ideal, unit, scale = ("flops", "TFLOP/s", 1e12) if self._has_flops else ("bytes", "GB/s", 1e9)
        counts = "FLOPs" if self._has_flops else "bytes"
        fig, axes = plt.subplots(
            2,
            len(targets),
            figsize=(5.5 * len(targets), 7.5),
            squeeze=False,
            sharex=True,
            layout="constrained",
        )
        drawn = {}
        for col, target in enumerate(targets):
            top, bottom = axes[:, col]
            at = {(r["version"], r[key]): r for r in self.rows if r["target"] == target}
            sizes = sorted({size for _, size in at})
            rate = [at[versions[0], t][ideal] / scale for t in sizes]  # the same for every version
            series = [(v, [at[v, t]["latency_us"] for t in sizes]) for v in versions]
            for names, lat in merge_close(series):
                label, style = ", ".join(names), series_style(versions.index(names[0]))
                top.plot(sizes, lat, label=label, **style)
                bottom.plot(sizes, [q / (us * 1e-6) for q, us in zip(rate, lat)], label=label, **style)
                drawn.update({(v, target): label for v in names})
            roofs = []  # the bottom legend: the roofs only, versions are named above
            hw = get_hardware(target)
            for n in sorted({r["cores"] for r in at.values()}):
                first = [at[versions[0], t] for t in sizes]
                floor = [1e6 * roofline_time(r["flops"], r["bytes"], hw, "bf16", "core") / n for r in first]
                colour, style = core_style(n)
                top.plot(sizes, floor, style, color=colour, lw=1.8, label=f"floor of {cores_label(n)}")
                roof = [q / (us * 1e-6) for q, us in zip(rate, floor)]
                roofs.append(
                    bottom.plot(sizes, roof, style, color=colour, lw=1.8, label=f"roof of {cores_label(n)}")[
                        0
                    ]
                )
            top.set(title=_chip(target), ylabel="latency, µs (estimate)", xscale="log", yscale="log")
            bottom.set(
                xlabel=_AXIS.get(key, key), ylabel=f"achieved {unit} on the op's ideal {counts}", yscale="log"
            )
            top.legend(fontsize=7, framealpha=0.6)
            bottom.legend(handles=roofs, fontsize=7, framealpha=0.6)
            for ax in (top, bottom):
                ax.grid(True, which="both", alpha=0.3)
        fig.suptitle(f"{title}: latency and achieved {unit} vs {_AXIS.get(key, key)} (cost-model estimates)")
        keys = ("version", key, "target", "cores", "latency_us", "roofline_us", "pct_roofline")
        cols = {k: [r[k] for r in self.rows] for k in keys}
        cols["achieved_tflops"] = [r["flops"] / r["latency_us"] * 1e-6 for r in self.rows]
        cols["achieved_gbs"] = [r["bytes"] / r["latency_us"] * 1e-3 for r in self.rows]
        cols["drawn_as"] = [drawn[r["version"], r["target"]] for r in self.rows]
        return fig, cols

    @property
    def _has_flops(self) -> bool:
        return any(r["flops"] > 0 for r in self.rows)

    def roofline_points(self, size, target: str) -> list:
        """``RooflinePoint`` of each version at ``size`` on ``target``: the op's ideal intensity, the FLOP/s
        achieved on its ideal FLOPs, coloured as the roof of the launch's cores, one marker per size."""
        from nki_moe.perf.roofline import RooflinePoint, core_style

        marker = _SIZE_MARKERS[sorted({r[self.key] for r in self.rows}).index(size) % len(_SIZE_MARKERS)]
        return [
            RooflinePoint(
                r["version"],
                r["flops"] / r["bytes"],
                r["flops"] / (r["latency_us"] * 1e-6),
                marker,
                core_style(r["cores"])[0],
            )
            for r in self.rows
            if r[self.key] == size and r["target"] == target and r["flops"] > 0
        ]
