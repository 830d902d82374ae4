"""Roofline arithmetic and the roofline plot shared by notebooks (model-level and kernel-level points).

Attainable FLOP/s at arithmetic intensity AI (FLOP/byte) = min(peak FLOP/s, AI × HBM B/s); the ridge point
(machine balance) is peak / bandwidth. Hardware figures come from :mod:`nki_moe.perf.hardware`.

A decode step of the TP deployment has a second floor term the HBM roofline omits: its all-reduces
(:func:`decode_step_floor` = HBM bytes ÷ bandwidth + collectives, both returned;
:mod:`nki_moe.perf.collectives`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nki_moe.perf.collectives import DEFAULT_ALGORITHM, DecodeCollectives, decode_collectives
from nki_moe.perf.hardware import HardwareSpec

__all__ = [
    "RooflinePoint",
    "attainable_flops",
    "memory_time",
    "compute_time",
    "roofline_time",
    "DecodeFloor",
    "decode_step_floor",
    "core_roof",
    "core_style",
    "cores_label",
    "plot_core_roof",
    "plot_roofline",
]

_DTYPE_LABEL = {"bf16": "BF16", "fp8": "FP8", "mxfp8": "MXFP8", "fp32": "FP32"}
_ROOF_STYLE = {"bf16": "-", "fp8": "--", "mxfp8": "--", "fp32": ":"}
# roof (and floor) of a launch by its physical cores; none of these is a version colour (C0…C6) of a sweep
_CORE_STYLE = {1: ("0.15", ":"), 2: ("darkcyan", "--")}
_OTHER_CORES = ("tab:olive", "-.")


@dataclass(frozen=True)
class RooflinePoint:
    """A point to mark: arithmetic intensity and, if measured, achieved FLOP/s (None: put it on the roof)."""

    label: str
    intensity: float  # FLOP/byte
    flops: float | None = None  # achieved FLOP/s
    marker: str = "o"
    color: str | None = None


def attainable_flops(hw: HardwareSpec, intensity: float, dtype: str = "bf16", scope: str = "chip") -> float:
    """Roofline bound min(peak, AI × HBM bandwidth) in FLOP/s for AI in FLOP/byte."""
    if intensity <= 0:
        raise ValueError(f"intensity must be > 0 FLOP/byte, got {intensity}")
    return min(hw.peak_flops(dtype, scope), intensity * hw.hbm_bandwidth(scope))


def memory_time(nbytes: float, hw: HardwareSpec, scope: str = "chip") -> float:
    """Seconds to stream ``nbytes`` at the HBM bandwidth of ``scope`` (a lower bound on any kernel)."""
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    return nbytes / hw.hbm_bandwidth(scope)


def compute_time(flops: float, hw: HardwareSpec, dtype: str = "bf16", scope: str = "chip") -> float:
    """Seconds to execute ``flops`` at the dense TensorE peak of ``dtype`` in ``scope``."""
    if flops < 0:
        raise ValueError(f"flops must be >= 0, got {flops}")
    return flops / hw.peak_flops(dtype, scope)


def roofline_time(
    flops: float, nbytes: float, hw: HardwareSpec, dtype: str = "bf16", scope: str = "chip"
) -> float:
    """Roofline lower bound on time, seconds: max(compute time, memory time)."""
    return max(compute_time(flops, hw, dtype, scope), memory_time(nbytes, hw, scope))


@dataclass(frozen=True)
class DecodeFloor:
    """Lower bound on one decode step (an ESTIMATE): streaming its HBM bytes plus its collectives, seconds."""

    hardware: str
    hbm_bytes: float
    memory_s: float  # hbm_bytes ÷ HBM bandwidth of the scope
    collectives: DecodeCollectives  # count × per all-reduce estimate
    kind: str = "estimate"

    @property
    def collective_s(self) -> float:
        return self.collectives.total_s

    @property
    def total_s(self) -> float:
        """memory_s + collective_s: the all-reduces wait for the layer's output, so they do not overlap it."""
        return self.memory_s + self.collective_s


def decode_step_floor(
    nbytes: float,
    hw: HardwareSpec,
    *,
    tokens: int = 1,
    hidden: int = 2048,
    layers: int = 48,
    allreduces_per_layer: int = 2,
    tp: int = 4,
    dtype_bytes: int = 2,
    algorithm: str = DEFAULT_ALGORITHM,
    scope: str = "chip",
) -> DecodeFloor:
    """Floor of one decode step: ``memory_time(nbytes)`` + the step's all-reduces, each term kept separately.

    Args:
        nbytes: HBM bytes the step reads and writes
            (e.g. ``sum(nki_moe.model.counts.decode_bytes(...).values())``).
        hw: hardware spec.
        tokens, hidden, layers, allreduces_per_layer, tp, dtype_bytes, algorithm: the all-reduces, see
            :func:`nki_moe.perf.collectives.decode_collectives` (defaults: Qwen3-30B-A3B, TP=4, 96 × 4 KiB).
        scope: HBM scope of the memory term (the whole chip by default: a TP=4 step uses all of it).
    """
    coll = decode_collectives(
        tokens,
        hidden=hidden,
        layers=layers,
        allreduces_per_layer=allreduces_per_layer,
        tp=tp,
        dtype_bytes=dtype_bytes,
        target=hw,
        algorithm=algorithm,
    )
    return DecodeFloor(
        hardware=hw.name, hbm_bytes=float(nbytes), memory_s=memory_time(nbytes, hw, scope), collectives=coll
    )


def core_roof(hw: HardwareSpec, cores: int, dtype: str = "bf16") -> tuple[float, float]:
    """(peak FLOP/s, HBM B/s) of a launch on ``cores`` physical cores: the per-core figures × cores, the roof
    the cost model's floor uses for that launch (LNC=2 → two cores' share of the chip's HBM)."""
    return hw.peak_flops(dtype, "core") * cores, hw.hbm_bandwidth("core") * cores


def core_style(cores: int) -> tuple[str, str]:
    """(colour, line style) of a launch on ``cores`` physical cores: its roof, floor and points."""
    return _CORE_STYLE.get(cores, _OTHER_CORES)


def cores_label(cores: int) -> str:
    """'1 core' / '2 cores (LNC=2)': how a legend names a launch's cores."""
    return "1 core" if cores == 1 else f"{cores} cores (LNC={cores})"


def plot_core_roof(
    ax,
    hw: HardwareSpec,
    cores: int,
    *,
    dtype: str = "bf16",
    intensity_range: tuple[float, float] = (0.3, 3000.0),
) -> None:
    """Draw the roofline of a launch on ``cores`` physical cores: one line, HBM slope then compute roof."""
    peak, bw = core_roof(hw, cores, dtype)
    x = np.geomspace(*intensity_range, 256)
    colour, style = core_style(cores)
    label = (
        f"roof of {cores_label(cores)}: {bw / 1e12:.2f} TB/s, "
        f"{peak / 1e12:,.0f} TFLOP/s {_DTYPE_LABEL.get(dtype, dtype)}"
    )
    ax.loglog(x, np.minimum(peak, x * bw) / 1e12, style, color=colour, lw=1.8, label=label)


def plot_roofline(
    ax,
    hw: HardwareSpec,
    points: Sequence[RooflinePoint],
    *,
    dtypes: Sequence[str] = ("bf16", "fp8"),
    scope: str = "chip",
    intensity_range: tuple[float, float] = (0.3, 3000.0),
    point_dtype: str = "bf16",
) -> dict[str, list]:
    """Draw a log-log roofline (one compute roof per dtype, the HBM roof) and mark ``points``.

    Args:
        ax: matplotlib Axes.
        hw: hardware spec.
        points: points to mark; those without ``flops`` are placed on the ``point_dtype`` roof.
        dtypes: compute roofs to draw (keys of ``hw.tensor_tflops_chip``).
        scope: 'core', 'logical_core' or 'chip'.
        intensity_range: x range, FLOP/byte.
        point_dtype: roof used to place points without a measured ``flops``.
    Returns:
        Columns ``{hardware, kind, label, intensity_flop_per_byte, tflops}`` of what was drawn (for a CSV).
    """
    names = ("hardware", "kind", "label", "intensity_flop_per_byte", "tflops")
    cols: dict[str, list] = {name: [] for name in names}

    def add(kind: str, label: str, intensity: float, flops: float) -> None:
        for key, value in zip(cols, (hw.name, kind, label, intensity, flops / 1e12)):
            cols[key].append(value)

    x = np.geomspace(*intensity_range, 256)
    slope = x[x <= max(hw.machine_balance(d, scope) for d in dtypes)]
    ax.loglog(
        slope,
        slope * hw.hbm_bandwidth(scope) / 1e12,
        color="0.45",
        lw=4,
        alpha=0.35,
        label=f"HBM {hw.hbm_bandwidth(scope) / 1e12:.2f} TB/s",
    )
    for dtype in dtypes:
        peak, ridge = hw.peak_flops(dtype, scope), hw.machine_balance(dtype, scope)
        label = f"{_DTYPE_LABEL.get(dtype, dtype)} {peak / 1e12:,.0f} TFLOP/s (ridge {ridge:.0f} FLOP/B)"
        ax.loglog(
            x,
            np.minimum(peak, x * hw.hbm_bandwidth(scope)) / 1e12,
            _ROOF_STYLE.get(dtype, "-"),
            lw=2,
            label=label,
        )
        add("roof", dtype, ridge, peak)
    for p in points:
        flops = attainable_flops(hw, p.intensity, point_dtype, scope) if p.flops is None else p.flops
        ax.loglog([p.intensity], [flops / 1e12], p.marker, color=p.color, ms=8, mec="k", label=p.label)
        add("point", p.label, p.intensity, flops)
    ax.set_xlim(*intensity_range)
    ax.set_xlabel("arithmetic intensity (FLOP / byte of HBM traffic)")
    ax.set_ylabel(f"attainable TFLOP/s per {scope.replace('_', ' ')}")
    placed = "at their roofline bound" if any(p.flops is None for p in points) else "achieved"
    ax.set_title(
        f"{hw.name.capitalize()} ({hw.core_name}), one {scope.replace('_', ' ')}:\n"
        f"roofs from published peaks; points {placed} (estimate)",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    return cols
