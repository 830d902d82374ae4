"""``profile(kernel, *args, target=...)``: run a kernel in the emulator and estimate its Trainium timeline.

Every time reported here is an *estimate* of the cost model (:mod:`nki_moe.perf.costs`,
:mod:`nki_moe.perf.dma`, :mod:`nki_moe.perf.schedule`), not a measurement; the calibration table
(:mod:`nki_moe.perf.calibration`) states how far it is from published measurements.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from nki_moe.perf.hardware import HardwareSpec, get_hardware
from nki_moe.perf.perfetto import write_perfetto
from nki_moe.perf.roofline import roofline_time
from nki_moe.perf.schedule import COMPUTE_ENGINES, Schedule, schedule_trace

__all__ = ["ProfileResult", "profile", "profile_trace", "trace_flops_bytes"]

_ENGINES = (*COMPUTE_ENGINES, "dma")


def trace_flops_bytes(trace) -> tuple[int, int, str]:
    """(TensorE FLOPs = 2 × MACs without transposes, HBM bytes moved by DMAs, dtype of most MACs)."""
    by_dtype: dict[str, int] = {}
    hbm = 0
    for r in trace:
        info = r.info
        if "K" in info and not info.get("is_transpose", False):
            mac = info["K"] * info["M"] * info["N"]
            kind = (
                "fp8"
                if info.get("perf_mode") == "double_row"
                else "fp32"
                if info.get("dtype") in ("float32", "tfloat32")
                else "bf16"
            )
            by_dtype[kind] = by_dtype.get(kind, 0) + mac
        if r.opcode == "dma_compute":  # several sources: count the HBM ends only (sources and dst)
            hbm += sum(a.nbytes for a in r.accesses if a.buffer in ("private_hbm", "shared_hbm"))
        elif r.engine == "dma" and any(a.buffer in ("private_hbm", "shared_hbm") for a in r.accesses):
            hbm += int(info.get("dma_bytes", 0))
    macs = sum(by_dtype.values())
    dtype = max(by_dtype, key=by_dtype.get) if by_dtype else "bf16"  # the peak of the dominant MACs
    return 2 * macs, hbm, dtype


@dataclass
class ProfileResult:
    """Estimated profile of one kernel launch (all times are cost-model estimates)."""

    name: str
    target: str
    programs: int
    n_instructions: int
    latency_us: float
    busy_us: dict[str, float]  # per engine, summed over cores (dma: union of transfer intervals per core)
    utilisation: dict[str, float]  # busy / (latency × cores)
    critical_share: dict[str, float]
    flops: float  # from the trace (2 × MACs)
    hbm_bytes: float  # from the trace (DMA bytes touching HBM)
    dma_bytes: float
    peak_dtype: str
    mfu: float
    mbu: float
    dma_gbs: float  # achieved HBM bandwidth over the whole latency, GB/s
    intensity: float  # FLOP / HBM byte
    roofline_us: float  # roofline lower bound with the analytic (or trace) counts
    pct_of_roofline: float  # roofline_us / latency_us
    analytic_flops: float | None = None
    analytic_bytes: float | None = None
    trace_path: Path | None = None
    schedule: Schedule | None = field(default=None, repr=False)
    trace: object = field(default=None, repr=False)
    # Per engine, summed over cores: activity as the neuron profiler defines it (its "PE active",
    # "DMA active" figures; Schedule.active_ns): PE counts LoadStationary + MultiplyMoving of every matmul,
    # DMA spans descriptors-in-queue → last byte. ``busy_us`` stays the throughput occupancy the latency
    # schedule uses.
    engine_active_us: dict[str, float] = field(default_factory=dict)

    @property
    def engine_busy_us(self) -> dict[str, float]:
        """Throughput occupancy per engine (summed over cores), = ``busy_us``."""
        return self.busy_us

    @property
    def active_share(self) -> dict[str, float]:
        """Profiler-style "engine X % active": engine_active_us / (latency × cores)."""
        den = self.latency_us * self.programs
        return {e: (a / den if den > 0 else 0.0) for e, a in self.engine_active_us.items()}

    def summary(self) -> str:
        """Profiler-style text summary (labelled as an estimate)."""
        lines = [
            f"{self.name} on {self.target} ({self.programs} core{'s' if self.programs > 1 else ''}), "
            f"{self.n_instructions} instructions — ESTIMATED by the nki_moe cost model",
            f"  latency (estimate)   {self.latency_us:10.2f} us",
            f"  roofline bound       {self.roofline_us:10.2f} us   "
            f"({100 * self.pct_of_roofline:.1f} % of roofline)",
            f"  MFU {100 * self.mfu:5.1f} % ({self.peak_dtype})   MBU {100 * self.mbu:5.1f} %   "
            f"HBM {self.hbm_bytes / 2**20:.2f} MiB at {self.dma_gbs:.0f} GB/s   "
            f"{self.flops / 1e9:.3f} GFLOP   AI {self.intensity:.1f} FLOP/B",
            "  engine   busy us   util %   critical-path %   active us (profiler def.)   active %",
        ]
        share = self.active_share
        for e in _ENGINES:
            if self.busy_us.get(e, 0.0) > 0 or self.critical_share.get(e, 0.0) > 0:
                lines.append(
                    f"  {e:6s} {self.busy_us.get(e, 0.0):9.2f} {100 * self.utilisation.get(e, 0.0):8.1f} "
                    f"{100 * self.critical_share.get(e, 0.0):12.1f} "
                    f"{self.engine_active_us.get(e, 0.0):21.2f} {100 * share.get(e, 0.0):16.1f}"
                )
        lines.append(f"  (waiting on the critical path: {100 * self.critical_share.get('wait', 0.0):.1f} %)")
        if self.trace_path is not None:
            lines.append(f"  trace: {self.trace_path} (open in https://ui.perfetto.dev)")
        return "\n".join(lines)


def profile_trace(
    trace,
    target: str | HardwareSpec = "trn2",
    *,
    name: str = "kernel",
    trace_path: str | Path | bool | None = None,
    flops: float | None = None,
    hbm_bytes: float | None = None,
) -> ProfileResult:
    """Estimate the profile of an existing emulator trace.

    Args:
        trace: :class:`nki_moe.sim.trace.Trace`.
        target: 'trn1', 'trn2', 'trn3' or a spec.
        name: label.
        trace_path: where to write the Perfetto JSON; True: ``build/traces/<name>_<target>.json``;
            None/False: not written.
        flops, hbm_bytes: the op's analytic counts for the roofline (default: counted from the trace).
    Returns:
        :class:`ProfileResult`.
    """
    hw = get_hardware(target) if isinstance(target, str) else target
    if trace_path is True:
        from nki_moe.paths import out_dir

        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        tag = target if isinstance(target, str) else hw.name
        trace_path = out_dir("build") / "traces" / f"{safe}_{tag}.json"
    elif trace_path is False:
        trace_path = None
    sched = schedule_trace(trace, hw)
    programs = len({int(p) for p in sched.pid}) or 1
    lat_ns = max(sched.latency_ns, 1e-9)
    busy = {e: sched.busy_ns(e) / 1e3 for e in _ENGINES}
    active = {e: sched.active_ns(e) / 1e3 for e in _ENGINES}
    util = {e: busy[e] * 1e3 / (lat_ns * programs) for e in _ENGINES}
    t_flops, t_bytes, dtype = trace_flops_bytes(trace)
    f = float(flops if flops is not None else t_flops)
    b = float(hbm_bytes if hbm_bytes is not None else t_bytes)
    scope_cores = programs
    peak = hw.peak_flops(dtype, "core") * scope_cores
    hbm_bw = hw.hbm_bandwidth("core") * scope_cores
    mfu = t_flops / (lat_ns * 1e-9 * peak)
    mbu = t_bytes / (lat_ns * 1e-9 * hbm_bw)
    roof_s = max(roofline_time(f, b, hw, dtype, "core") / scope_cores, 0.0)
    path = None
    if trace_path is not None:
        path = write_perfetto(sched, trace, trace_path, name=name)
    return ProfileResult(
        name=name,
        target=hw.name,
        programs=programs,
        n_instructions=len(sched.end),
        latency_us=lat_ns / 1e3,
        busy_us=busy,
        utilisation=util,
        critical_share=sched.critical_share(),
        flops=float(t_flops),
        hbm_bytes=float(t_bytes),
        dma_bytes=float(sched.dma_bytes.sum()),
        peak_dtype=dtype,
        mfu=mfu,
        mbu=mbu,
        dma_gbs=t_bytes / lat_ns,
        intensity=(f / b if b else float("inf")),
        roofline_us=roof_s * 1e6,
        pct_of_roofline=roof_s * 1e9 / lat_ns,
        analytic_flops=flops,
        analytic_bytes=hbm_bytes,
        trace_path=path,
        schedule=sched,
        trace=trace,
        engine_active_us=active,
    )


def profile(
    kernel,
    *args,
    target: str = "trn2",
    lnc: int | None = None,
    name: str | None = None,
    trace_path: str | Path | None | bool = True,
    flops: float | None = None,
    hbm_bytes: float | None = None,
    **kwargs,
) -> ProfileResult:
    """Run ``kernel(*args)`` in the emulator and estimate its latency, engine breakdown and roofline.

    Args:
        kernel: an ``@nki.jit`` kernel (``kernel[2]`` or ``lnc=2`` for LNC=2).
        *args: kernel arguments (NumPy arrays).
        target: 'trn1' | 'trn2' | 'trn3'.
        lnc: LNC degree (default: the kernel's).
        name: label (default: the kernel's function name).
        trace_path: Perfetto JSON path; True (default) writes ``build/traces/<name>_<target>.json``,
            None/False writes nothing.
        flops, hbm_bytes: analytic op counts for the roofline (default: counted from the trace).
        **kwargs: passed to the kernel.
    Returns:
        :class:`ProfileResult`; ``.summary()`` prints a profiler-style table, ``.outputs`` is not kept
        (use ``nki_moe.sim.last_result()``).
    """
    from nki_moe.sim import run  # local: perf must stay importable without running the emulator

    res = run(kernel, *args, target=target, lnc=lnc, **kwargs)
    fn = getattr(kernel, "fn", kernel)
    label = name or getattr(fn, "__name__", "kernel")
    return profile_trace(
        res.trace, target, name=label, trace_path=trace_path, flops=flops, hbm_bytes=hbm_bytes
    )
