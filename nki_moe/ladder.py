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
        if shape:
            want = self.cost(**shape).macs
            assert macs == want, f"{label}: trace has {macs} MACs, the op's cost function {want}"
        return Checked(self.version(v).name, dict(shape), outputs, lowp, outcomes, macs, res.trace)

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
        return Sweep(rows, key)

    def save_figures(self, sweep: Sweep, title: str | None = None, scope: str = "logical_core", **at) -> list:
        """Save the sweep figure and the roofline figure (at sizes ``at``) under the op's figure stems."""
        from nki_moe.figures import save_figure

        sweep_stem, roof_stem = self.figures
        fig, data = sweep.plot(title or self.title)
        paths = [save_figure(fig, sweep_stem, data)]
        fig, data = self.roofline(sweep, scope=scope, **at)
        return paths + [save_figure(fig, roof_stem, data)]

    def roofline(self, sweep: Sweep, target: str | None = None, scope: str = "logical_core", **at):
        """Figure of every version's roofline point at the given sizes (``T=(1, 640)``).

        An op with FLOPs is drawn on the log-log roofline of the launch's cores; an op without (a norm) by its
        achieved share of the HBM roof (MBU) per version, both targets. Returns (figure, CSV columns).
        """
        import matplotlib.pyplot as plt

        from nki_moe.perf.hardware import get_hardware
        from nki_moe.perf.roofline import plot_roofline

        target = target or self.target
        values = at[sweep.key] if isinstance(at[sweep.key], (list, tuple)) else (at[sweep.key],)
        if all(r["flops"] == 0 for r in sweep.rows):
            rows = [r for r in sweep.rows if r[sweep.key] == values[-1]]
            fig, ax = plt.subplots(figsize=(6, 3.5))
            for tg, marker in zip(TARGETS, "os"):
                mine = [r for r in rows if r["target"] == tg]
                ax.plot([r["version"] for r in mine], [100 * r["mbu"] for r in mine], marker + "-", label=tg)
            ax.set(
                ylabel="% of HBM roof (MBU, estimated)",
                ylim=(0, 100),
                title=f"{self.title} {sweep.key}={values[-1]}: roofline point per version (estimate)",
            )
            ax.legend()
            return fig, {k: [r[k] for r in rows] for k in ("version", "target", "mbu")}
        fig, ax = plt.subplots(figsize=(8, 5))
        pts = [p for v in values for p in sweep.roofline_points(v, target)]
        cols = plot_roofline(
            ax, get_hardware(target), pts, dtypes=("bf16",), scope=scope, intensity_range=(0.3, 3000)
        )
        ax.set_title(f"{self.title} on {target}: roofline points (estimate)")
        ax.legend(fontsize=7, loc="upper left", ncol=2)
        return fig, cols


@dataclass
class Sweep:
    """Rows of :meth:`Ladder.sweep`: {version, <key>, target, latency_us, roofline_us, pct_roofline, ...}."""

    rows: list[dict]
    key: str = "T"

    def latency(self, target: str = "trn2") -> dict[tuple[str, Any], float]:
        """{(version, size): estimated µs} on ``target``."""
        return {(r["version"], r[self.key]): r["latency_us"] for r in self.rows if r["target"] == target}

    def table(self, target: str, floatfmt: str = ".2f") -> str:
        """A printed table (version, size, µs, floor µs, % of roofline) of one target."""
        from nki_moe.tables import format_table

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
        """Figure: latency (µs, log) and % of roofline vs size, one line per version, one column per target.

        Returns:
            (figure, CSV columns of the plotted numbers).
        """
        import matplotlib.pyplot as plt

        key = self.key
        targets = sorted({r["target"] for r in self.rows})
        fig, axes = plt.subplots(2, len(targets), figsize=(5.5 * len(targets), 7), squeeze=False, sharex=True)
        for col, target in enumerate(targets):
            mine = [r for r in self.rows if r["target"] == target]
            for label in dict.fromkeys(r["version"] for r in mine):
                pts = sorted(
                    (r[key], r["latency_us"], r["pct_roofline"]) for r in mine if r["version"] == label
                )
                size, lat, pct = zip(*pts)
                axes[0, col].plot(size, lat, "o-", label=label)
                axes[1, col].plot(size, pct, "o-", label=label)
            floor: dict = {}
            for r in mine:  # the lowest floor: versions launched on more cores have a lower one
                floor[r[key]] = min(floor.get(r[key], np.inf), r["roofline_us"])
            axes[0, col].plot(sorted(floor), [floor[t] for t in sorted(floor)], "k--", label="roofline floor")
            axes[0, col].set(
                title=f"{title} — {target} (estimated)",
                ylabel="latency µs (cost model)",
                xscale="log",
                yscale="log",
            )
            axes[1, col].set(xlabel=_AXIS.get(key, key), ylabel="% of roofline", ylim=(0, 105))
            axes[1, col].axhline(70, color="0.6", lw=1, ls=":")
            for ax in axes[:, col]:
                ax.grid(True, which="both", alpha=0.3)
        axes[0, 0].legend(fontsize=8)
        keys = ("version", key, "target", "latency_us", "roofline_us", "pct_roofline")
        return fig, {k: [r[k] for r in self.rows] for k in keys}

    def roofline_points(self, size, target: str) -> list:
        """``RooflinePoint`` of each version at ``size`` on ``target`` (achieved FLOP/s = FLOPs / latency)."""
        from nki_moe.perf.roofline import RooflinePoint

        # one colour per version (the same in every call), one marker per size, so overlaps stay legible
        versions = list(dict.fromkeys(r["version"] for r in self.rows))
        marker = "o" if size == min(r[self.key] for r in self.rows) else "s"
        return [
            RooflinePoint(
                f"{r['version']} {self.key}={size}",
                r["flops"] / r["bytes"],
                r["flops"] / (r["latency_us"] * 1e-6),
                marker,
                f"C{versions.index(r['version']) % 10}",
            )
            for r in self.rows
            if r[self.key] == size and r["target"] == target and r["flops"] > 0
        ]
