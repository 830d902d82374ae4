"""Kernel benchmarking helpers for the kernel notebooks and bench/: run, time, sweep and plot versions.

Every Trainium time here is an ESTIMATE of the nki_moe cost model (``nki_moe.perf``), never a measurement.
One emulator run gives the instruction trace; the same trace is costed for each target (the kernels'
instruction streams do not depend on the target), so a sweep over T × versions runs each kernel once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import ml_dtypes
import numpy as np

__all__ = [
    "Version",
    "bf16",
    "run_kernel",
    "best_time",
    "sweep",
    "plot_sweep",
    "roofline_points",
    "sweep_table",
    "TARGETS",
    "tile_weight",
    "busiest_engine",
    "final_summary",
    "summary_lines",
]

TARGETS = ("trn2", "trn3")


def bf16(a) -> np.ndarray:
    """``a`` rounded to a bfloat16 array."""
    return np.asarray(a, dtype=np.float32).astype(ml_dtypes.bfloat16)


def tile_weight(w, n_prog: int = 2, n_block: int = 2048) -> np.ndarray:
    """Host-side layout of ``matmul_v5``: w [K, N] → [nb, 128, K/128, NB] column blocks, zero padded.

    NB = min(n_block, N / n_prog rounded up to 128) so every core gets a block; done once per weight.
    """
    K, N = w.shape
    nb_w = min(n_block, 128 * -(-N // (128 * n_prog)))
    nb = -(-N // nb_w)
    padded = np.zeros((K, nb * nb_w), dtype=w.dtype)
    padded[:, :N] = w
    return np.ascontiguousarray(padded.reshape(K // 128, 128, nb, nb_w).transpose(2, 1, 0, 3))


def run_kernel(kernel, *args, target: str = "trn2", lnc: int = 1, strict: bool = True):
    """Run ``kernel(*args)`` on the emulator (strict mode by default); returns the ``SimResult``."""
    import nki_moe.sim as sim

    return sim.run(kernel, *args, target=target, lnc=lnc, strict=strict)


def best_time(fn: Callable[[], object], repeat: int = 3) -> float:
    """Best wall time of ``fn()`` in seconds over ``repeat`` calls."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@dataclass(frozen=True)
class Version:
    """One kernel version of a ladder: label, jitted kernel, LNC degree of its launch."""

    label: str
    kernel: object
    lnc: int = 1


def sweep(
    versions: Sequence[Version],
    tokens: Sequence[int],
    make_args: Callable[[int], tuple],
    cost: Callable[[int], tuple[float, float]],
    targets: Sequence[str] = TARGETS,
) -> list[dict]:
    """Estimated latency of every version at every T on every target.

    Args:
        versions: the ladder.
        tokens: values of T.
        make_args: T -> kernel arguments (seeded).
        cost: T -> analytic (FLOPs, HBM bytes) of the op, for the roofline.
        targets: cost-model targets.
    Returns:
        Rows {version, T, target, latency_us, roofline_us, pct_roofline, mfu, mbu, flops, bytes, busy_*}.
    """
    from nki_moe.perf.profile import profile_trace

    rows = []
    for T in tokens:
        args = make_args(T)
        flops, nbytes = cost(T)
        for v in versions:
            trace = run_kernel(v.kernel, *args, lnc=v.lnc).trace
            for target in targets:
                p = profile_trace(trace, target, v.label, None, flops, nbytes)
                rows.append(
                    dict(
                        version=v.label,
                        T=T,
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
    return rows


def sweep_table(rows: Sequence[dict], target: str) -> list[tuple]:
    """(version, T, latency µs, roofline µs, % of roofline) rows of one target, for format_table."""
    return [
        (r["version"], r["T"], r["latency_us"], r["roofline_us"], r["pct_roofline"])
        for r in rows
        if r["target"] == target
    ]


def plot_sweep(rows: Sequence[dict], title: str):
    """Figure: latency (µs, log) and % of roofline vs T, one line per version, one column per target.

    Returns:
        (figure, CSV columns of the plotted numbers).
    """
    import matplotlib.pyplot as plt

    targets = sorted({r["target"] for r in rows})
    fig, axes = plt.subplots(2, len(targets), figsize=(5.5 * len(targets), 7), squeeze=False, sharex=True)
    for col, target in enumerate(targets):
        mine = [r for r in rows if r["target"] == target]
        for label in dict.fromkeys(r["version"] for r in mine):
            pts = sorted((r["T"], r["latency_us"], r["pct_roofline"]) for r in mine if r["version"] == label)
            T, lat, pct = zip(*pts)
            axes[0, col].plot(T, lat, "o-", label=label)
            axes[1, col].plot(T, pct, "o-", label=label)
        floor = {}
        for r in mine:  # the lowest floor: versions launched on more cores have a lower one
            floor[r["T"]] = min(floor.get(r["T"], np.inf), r["roofline_us"])
        axes[0, col].plot(sorted(floor), [floor[t] for t in sorted(floor)], "k--", label="roofline floor")
        axes[0, col].set(
            title=f"{title} — {target} (estimated)",
            ylabel="latency µs (cost model)",
            xscale="log",
            yscale="log",
        )
        axes[1, col].set(xlabel="tokens T", ylabel="% of roofline", ylim=(0, 105))
        axes[1, col].axhline(70, color="0.6", lw=1, ls=":")
        for ax in axes[:, col]:
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    keys = ("version", "T", "target", "latency_us", "roofline_us", "pct_roofline")
    return fig, {k: [r[k] for r in rows] for k in keys}


def roofline_points(rows: Sequence[dict], T: int, target: str) -> list:
    """``RooflinePoint`` of every version at T on ``target`` (achieved FLOP/s = analytic FLOPs / latency)."""
    from nki_moe.perf.roofline import RooflinePoint

    # one colour per version (the same in every call), one marker per T, so overlapping points stay legible
    versions = list(dict.fromkeys(r["version"] for r in rows))
    marker = "o" if T == min(r["T"] for r in rows) else "s"
    pts = []
    for r in rows:
        if r["T"] == T and r["target"] == target and r["flops"] > 0:
            achieved = r["flops"] / (r["latency_us"] * 1e-6)
            color = f"C{versions.index(r['version']) % 10}"
            label = f"{r['version']} T={T}"
            pts.append(RooflinePoint(label, r["flops"] / r["bytes"], achieved, marker, color))
    return pts


def busiest_engine(p, compute_only: bool = False) -> str:
    """Engine with the largest busy time of a ``ProfileResult`` (what a "bound by <engine>" claim names)."""
    busy = {e: b for e, b in p.busy_us.items() if not (compute_only and e == "dma")}
    return max(busy, key=busy.get)


def final_summary(rows: Sequence[dict], version: str, tokens: Sequence[int]) -> dict:
    """{"<target>_T<T>": {latency_us, pct_roofline, roofline_us}} of one version, for results JSON."""
    keys = ("latency_us", "pct_roofline", "roofline_us")
    return {
        f"{r['target']}_T{r['T']}": {k: r[k] for k in keys}
        for r in rows
        if r["version"] == version and r["T"] in tokens
    }


def summary_lines(summary: dict, label: str) -> list[str]:
    """One takeaway sentence per entry of :func:`final_summary` (numbers printed, never hand-written)."""
    return [
        f"{label} {key.replace('_T', ' T=')}: {v['latency_us']:.2f} µs (estimated), "
        f"{v['pct_roofline']:.1f} % of its {v['roofline_us']:.2f} µs roofline floor"
        for key, v in summary.items()
    ]
