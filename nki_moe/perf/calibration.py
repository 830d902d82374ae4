"""Calibration of the cost model against published Trainium measurements (trainium.md §5).

``MEASUREMENTS`` is the table as data; :func:`predict` re-runs the matching calibration kernel
(:mod:`nki_moe.perf.calibration_kernels`, NKI 2 code with the published structure and shapes) in the
emulator and returns the model's estimate in the same unit; :func:`calibration_table` joins both with the
signed relative error. Traces are cached per process (the kernels are deterministic).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nki_moe.perf.profile import ProfileResult, profile_trace

__all__ = [
    "Measurement",
    "MEASUREMENTS",
    "KNOWN_MISSES",
    "CalibrationRow",
    "predict",
    "calibration_table",
    "error_stats",
    "analytic_counts",
    "plot_calibration",
    "run_calibration_kernel",
]


@dataclass(frozen=True)
class Measurement:
    """One published measurement the model must reproduce."""

    key: str
    description: str
    source: str  # trainium.md §5 id + source tag
    hardware: str
    measured: float
    unit: str  # 'ns' | 'us' | 'MFU %'
    metric: str  # 'latency' | 'mfu' | 'dma_transfer' | 'dma_active'
    kernel: str  # key of _KERNELS


MEASUREMENTS: tuple[Measurement, ...] = (
    Measurement(
        "dma_32k_1engine",
        "32 KiB HBM→SBUF DMA on 4 partitions (one engine), transfer time",
        "§3 DMA example, [DMA-INTRO]",
        "trn2",
        1416.0,
        "ns",
        "dma_transfer",
        "dma_1engine",
    ),
    Measurement(
        "mm2048_v1",
        "2048³ BF16 matmul, loads in K loop, single buffers",
        "K2c [AUTOTUNE]",
        "trn2",
        16.0,
        "MFU %",
        "mfu",
        "mm_v1",
    ),
    Measurement(
        "mm2048_v2",
        "2048³ BF16 matmul, loads hoisted, one PSUM tile",
        "K2c [AUTOTUNE]",
        "trn2",
        59.0,
        "MFU %",
        "mfu",
        "mm_v2",
    ),
    Measurement(
        "mm2048_v3",
        "2048³ BF16 matmul, + double-buffered PSUM accumulator",
        "K2c [AUTOTUNE]",
        "trn2",
        83.7,
        "MFU %",
        "mfu",
        "mm_v3",
    ),
    Measurement(
        "mm2048_v4",
        "2048³ BF16 matmul, streaming double-buffered loads",
        "K2c [AUTOTUNE]",
        "trn2",
        89.5,
        "MFU %",
        "mfu",
        "mm_v4",
    ),
    Measurement(
        "moe_bf16_trn2",
        "fused MoE TKG layer, BF16 weights, LNC=2",
        "K13 [MEGA]",
        "trn2",
        98.15,
        "us",
        "latency",
        "moe_bf16",
    ),
    Measurement(
        "moe_bf16_trn2_dma",
        "fused MoE TKG layer, BF16: DMA active time",
        "K13 [MEGA]",
        "trn2",
        65.0,
        "us",
        "dma_active",
        "moe_bf16",
    ),
    Measurement(
        "moe_fp8_trn2",
        "fused MoE TKG layer, FP8 weights as stationary, LNC=2",
        "K13b [MEGA]",
        "trn2",
        90.54,
        "us",
        "latency",
        "moe_fp8",
    ),
    Measurement(
        "moe_fp8_trn3",
        "fused MoE TKG layer, FP8 weights, LNC=2",
        "K13c [MEGA]",
        "trn3",
        89.80,
        "us",
        "latency",
        "moe_fp8",
    ),
)

# Points the model misses by more than the 50 % bound, with the reason (reported, not tuned away).
KNOWN_MISSES = {
    "mm2048_v1": "a literal single-buffer program exposes ~2 µs of DMA issue latency per K step (model: 7 % "
    "MFU); the measured kernel went through the Neuron compiler, whose allocator rotates "
    "addresses ([AUTOTUNE] learnings: AddressRotation worth ~48 pp MFU), so its loads overlap",
}


def _bf16():
    import ml_dtypes

    return ml_dtypes.bfloat16


@functools.cache
def _inputs(kernel: str):
    """Deterministic inputs (and static kwargs) of a calibration kernel."""
    rng = np.random.default_rng(0)
    bf = _bf16()
    if kernel == "dma_1engine":
        return (rng.standard_normal((4, 4096)).astype(bf),), {}
    if kernel.startswith("mm_"):
        a = rng.standard_normal((2048, 2048)).astype(bf)
        b = rng.standard_normal((2048, 2048)).astype(bf)
        return (a, b), {}
    if kernel.startswith("moe_"):
        import ml_dtypes

        H, E, inter = 2048, 128, 192
        wdt = ml_dtypes.float8_e4m3fn if kernel == "moe_fp8" else bf
        x = rng.standard_normal((1, H)).astype(bf)
        g = (1 + 0.1 * rng.standard_normal((1, H))).astype(bf)
        wr = (0.05 * rng.standard_normal((H, E))).astype(bf)
        wgu = (0.03 * rng.standard_normal((E, H, 2 * inter))).astype(wdt)
        wd = (0.03 * rng.standard_normal((E, inter, H))).astype(wdt)
        return (x, g, wr, wgu, wd), {"experts": (3, 17, 42, 64, 77, 90, 101, 126)}
    raise KeyError(kernel)


def _kernel(kernel: str):
    import nki_moe.sim as sim

    sim.install("sim")
    from nki_moe.perf.calibration_kernels import dma, matmul, moe

    table = {
        "dma_1engine": dma.dma_single_engine,
        "mm_v1": matmul.matmul_v1,
        "mm_v2": matmul.matmul_v2,
        "mm_v3": matmul.matmul_v3,
        "mm_v4": matmul.matmul_v4,
        "moe_bf16": moe.moe_decode_layer[2],
        "moe_fp8": moe.moe_decode_layer[2],
    }
    return table[kernel]


@functools.cache
def run_calibration_kernel(kernel: str, target: str):
    """Emulator trace of a calibration kernel on ``target`` (cached)."""
    from nki_moe.sim import run

    args, kwargs = _inputs(kernel)
    return run(_kernel(kernel), *args, target=target, **kwargs).trace


def analytic_counts(kernel: str) -> tuple[float, float]:
    """(MACs, HBM bytes) of a calibration kernel from the op's shapes (checked against the trace in tests)."""
    if kernel == "dma_1engine":
        return 0.0, 2 * 4 * 4096 * 2.0
    if kernel.startswith("mm_"):
        n = 2048
        reads = {"mm_v1": n * n * (n // 512) + n * n * (n // 128), "mm_v4": n * n * (n // 512) + n * n}
        elems = reads.get(kernel, 2 * n * n)  # v2/v3 read each operand once
        return float(n**3), float(2 * (elems + n * n))
    if kernel.startswith("moe_"):
        H, E, inter, k, cores = 2048, 128, 192, 8, 2
        wb = 1 if kernel == "moe_fp8" else 2
        macs = cores * (H * E + k * (H * 2 * inter + inter * H // cores)) + cores * (128 * 128 + 128 * 8)
        nbytes = cores * (k * (H * 2 * inter + inter * H // cores) * wb + H * E * 2 + 2 * H * 2) + H * 2
        return float(macs), float(nbytes)
    raise KeyError(kernel)


def _metric(m: Measurement, prof: ProfileResult) -> float:
    sched = prof.schedule
    if m.metric == "latency":
        return prof.latency_us
    if m.metric == "mfu":
        return 100.0 * prof.mfu
    if m.metric == "dma_transfer":
        i = next(i for i, e in enumerate(sched.engine) if e == "dma")
        return float(sched.end[i] - sched.busy_start[i])
    if m.metric == "dma_active":
        return prof.busy_us["dma"] / prof.programs
    raise KeyError(m.metric)


def predict(m: Measurement) -> float:
    """Model estimate of one measurement, in its unit (runs the calibration kernel; traces cached)."""
    prof = profile_trace(run_calibration_kernel(m.kernel, m.hardware), m.hardware, m.key)
    return _metric(m, prof)


@dataclass(frozen=True)
class CalibrationRow:
    """A measurement, the model's estimate and the signed relative error (predicted / measured − 1)."""

    measurement: Measurement
    predicted: float

    @property
    def error(self) -> float:
        return self.predicted / self.measurement.measured - 1.0


def calibration_table(measurements: Sequence[Measurement] = MEASUREMENTS) -> list[CalibrationRow]:
    """Predict every measurement; returns rows in table order."""
    return [CalibrationRow(m, predict(m)) for m in measurements]


def error_stats(rows: Sequence[CalibrationRow]) -> dict[str, float]:
    """Median and maximum absolute relative error of the rows."""
    errs = np.abs([r.error for r in rows])
    return {"median_abs_error": float(np.median(errs)), "max_abs_error": float(errs.max()), "n": len(errs)}


def plot_calibration(ax, rows: Sequence[CalibrationRow]) -> dict[str, list]:
    """Predicted / measured ratio per published point (log scale) with the ±25 % and ±50 % bands.

    Args:
        ax: matplotlib Axes.
        rows: output of :func:`calibration_table`.
    Returns:
        Columns ``{key, source, unit, measured, predicted, error}`` of what was drawn (for a CSV).
    """
    ratios = [r.predicted / r.measurement.measured for r in rows]
    y = np.arange(len(rows))[::-1]
    ax.axvspan(0.5, 1.5, color="0.92", label="±50 %")
    ax.axvspan(0.75, 1.25, color="0.82", label="±25 % (goal: median)")
    ax.axvline(1.0, color="k", lw=1)
    ax.scatter(ratios, y, c=["C0" if abs(q - 1) <= 0.5 else "C3" for q in ratios], zorder=3)
    for yy, r, q in zip(y, rows, ratios):
        ax.annotate(
            f"{r.predicted:.3g} vs {r.measurement.measured:.3g} {r.measurement.unit}",
            (q, yy),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(y, [f"{r.measurement.key} ({r.measurement.hardware})" for r in rows])
    ax.set_xscale("log")
    ax.set_xlim(0.25, 4.0)
    ax.set_xlabel("estimated / published (log scale)")
    ax.set_title("Cost model (estimate) vs published Trainium measurements")
    ax.legend(loc="lower right", fontsize=8)
    return {
        "key": [r.measurement.key for r in rows],
        "source": [r.measurement.source for r in rows],
        "unit": [r.measurement.unit for r in rows],
        "measured": [r.measurement.measured for r in rows],
        "predicted": [r.predicted for r in rows],
        "error": [r.error for r in rows],
    }
