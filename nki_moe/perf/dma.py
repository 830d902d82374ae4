"""DMA cost model: fixed issue latency, 16 engines per core, efficiency by contiguous bytes, HBM share.

An estimate built from published figures (source tags in docs/sources.md):

* descriptor generation: ~600 ns per hwdge DMA instruction on one of 2 DGE instances per core
  ([DGE], [NKI-T2]); software DGE (``queue == 'pool'``) runs on GpSimd, charged the same time there
  (derived: no separate figure is published);
* semaphore-to-start latency ~1300 ns between the trigger and the first byte ([DMA-BW]); it is latency,
  not occupancy, so DMAs in flight overlap it;
* the transfer is split over the engines that serve its partitions (8 partitions per engine, 16 engines per
  core, [DMA-INTRO], [DMA-BW]); an HBM↔HBM transfer uses all 16;
* each engine moves ``dma_gbs_per_engine`` B/ns ([DMA-BW]: 23 on Trn2, 33 on Trn3, 17 on Trn1) times the
  efficiency below (per-packet overhead is DMA-engine time, [DMA-BW]); the bytes are then capped by the
  core's share of HBM bandwidth when the transfer touches HBM (chip HBM ÷ physical cores, derived, times
  ``HBM_SUSTAINED_FRACTION``): ``min(engine × efficiency, HBM share)``, the two limits being independent
  ("channel utilization and per-engine throughput are independent concerns", [DMA-BW]);
* efficiency by contiguous bytes per descriptor b: ``b / (b + DESC_OVERHEAD_BYTES)``. The constant 512 B is
  derived from the published thresholds ([DMA-BW], [DMA-INTRO]): ≥4 KiB per partition "close to
  saturation" (89 %), 2 KiB "recommended minimum" (80 %), <256 B "heavily overhead-bound" (≤33 %).
  Element size and strides enter through b: an access whose innermost dimension is element-strided has
  b = one element, so its descriptor count is its element count (a transposing ``dma_copy`` through an
  access pattern pays that; ``dma_transpose`` uses the DMA engine's transpose mode instead, next item);
* DMA transposes run at 90 % (HBM→SBUF) and 50 % (SBUF→SBUF) of DMA throughput ([NKI-T2]);
* software DGE writes every descriptor on GpSimd: ``SWDGE_NS_PER_DESCRIPTOR`` per descriptor on top of the
  600 ns. This is the one FITTED constant of the model: no source gives it; it is fitted over the three
  published fused-MoE measurements that use software-DGE DMAs (K13, K13b, K13c) by
  ``bench/fit_cost_model.py`` (the published trn3 profile shows GpSimd 45 % busy in that kernel, [MEGA]).
* ``HBM_SUSTAINED_FRACTION['trn1']`` is the second FITTED constant: the share of a Trn1 core's HBM bandwidth
  (820 GB/s ÷ 2 cores, [NKI-T1]) its DMAs sustain on the row-strided tile loads of the published Trn1
  matmul tutorial ([MM-TUT-OLD]). Those four versions take ≈ 10 ns per KB moved whatever their descriptor
  sizes (256 B–4 KiB), i.e. ≈ 100 GB/s, a bytes limit the [DMA-BW] engine figures (272 GB/s) do not give;
  fitted on ONE version (``mmtut_tiled_trn1``) by ``bench/fit_cost_model.py``, the other three are held out.
  Trn2/Trn3 keep 1.0: none of their published points needs a lower HBM ceiling (the trn2 MoE layer moves
  ≈ 165 GB/s per core, [MEGA]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nki_moe.perf.hardware import HardwareSpec

__all__ = [
    "DESC_OVERHEAD_BYTES",
    "HBM_SUSTAINED_FRACTION",
    "SWDGE_NS_PER_DESCRIPTOR",
    "hbm_engine_cap",
    "PARTITIONS_PER_ENGINE",
    "DmaCost",
    "contiguous_bytes",
    "dma_cost",
    "dma_efficiency",
    "transfer_ns",
]

DESC_OVERHEAD_BYTES = 512  # derived from the [DMA-BW] size thresholds (see module docstring)
PARTITIONS_PER_ENGINE = 8  # [DMA-BW]: "each engine serves 8 partitions" (128 / 16)
TRANSPOSE_HBM_FRACTION = 0.9  # [NKI-T2]: dma_transpose HBM→SBUF up to ~90 % of DMA throughput
TRANSPOSE_SBUF_FRACTION = 0.5  # [NKI-T2]: SBUF→SBUF at most 50 %
_HBM = ("private_hbm", "shared_hbm")
SWDGE_NS_PER_DESCRIPTOR = 28.4  # FITTED over K13/K13b/K13c by bench/fit_cost_model.py (see docstring)
# Share of the per-core HBM bandwidth DMAs sustain. trn1: FITTED on mmtut_tiled_trn1 by
# bench/fit_cost_model.py (docstring); trn2/trn3: 1.0 (not fitted, no published point asks for less).
HBM_SUSTAINED_FRACTION: dict[str, float] = {"trn1": 0.266, "trn2": 1.0, "trn3": 1.0}


@dataclass(frozen=True)
class DmaCost:
    """Static cost parts of one DMA instruction (the scheduler adds queueing and contention)."""

    nbytes: int
    engines: tuple[int, ...]  # DMA engine indices used (0..15)
    ns_per_engine: float  # transfer time on each engine used
    dge_ns: float  # descriptor generation (occupies a DGE instance, or GpSimd for swdge)
    latency_ns: float  # semaphore-to-start latency (pure latency)
    chunk_bytes: int  # contiguous bytes per descriptor
    descriptors: int  # nbytes / chunk_bytes
    efficiency: float
    rate_bytes_per_ns: float  # per engine, after efficiency
    touches_hbm: bool


def contiguous_bytes(acc) -> int:
    """Bytes of the longest contiguous run of an access (partition dim excluded on chip)."""
    dims = list(acc.pat[1:] if acc.pstep else acc.pat)
    run, expect = 1, 1
    for step, num in reversed(dims):
        if num == 1:
            continue
        if step != expect:
            break
        run *= num
        expect = run
    return max(1, run) * acc.itemsize


def dma_efficiency(chunk_bytes: float) -> float:
    """Fraction of engine bandwidth achieved with descriptors of ``chunk_bytes`` contiguous bytes."""
    return chunk_bytes / (chunk_bytes + DESC_OVERHEAD_BYTES)


def hbm_engine_cap(hw: HardwareSpec) -> float:
    """Per-engine HBM ceiling, B/ns: chip HBM ÷ physical cores ÷ 16 engines × ``HBM_SUSTAINED_FRACTION``."""
    share = hw.hbm_tbs * 1e3 / hw.physical_cores_per_chip / hw.dma_engines_per_core
    return share * HBM_SUSTAINED_FRACTION.get(hw.name, 1.0)


def _is_end(operand: str) -> bool:
    """An operand a DMA moves data between: dst, src, and dma_compute's srcs[i]."""
    return operand in ("dst", "src") or operand.startswith("srcs[")


def _engines(rec) -> tuple[int, ...]:
    """DMA engines serving the transfer: by partition (8 per engine) for on-chip ends, all 16 otherwise."""
    on_chip = [a for a in rec.accesses if a.pstep and _is_end(a.operand)]
    if not on_chip:
        return tuple(range(16))
    a = max(on_chip, key=lambda x: x.p_count)
    p0, pc = a.p_start, a.p_count
    first = p0 // PARTITIONS_PER_ENGINE
    last = (p0 + pc - 1) // PARTITIONS_PER_ENGINE
    return tuple(range(first, min(last, 15) + 1))


def dma_cost(rec, hw: HardwareSpec) -> DmaCost:
    """Static cost of a DMA record (``dma_copy``, ``dma_transpose``, ``sendrecv``).

    Args:
        rec: trace record with engine 'dma' and ``info['dma_bytes']``.
        hw: hardware spec.
    Returns:
        :class:`DmaCost`.
    """
    nbytes = int(rec.info.get("dma_bytes", 0))
    ends = [a for a in rec.accesses if _is_end(a.operand)]
    touches_hbm = any(a.buffer in _HBM for a in ends)
    chunk = min((contiguous_bytes(a) for a in ends), default=nbytes) if ends else nbytes
    chunk = max(1, min(chunk, nbytes or 1))
    engines = _engines(rec)
    eff = dma_efficiency(chunk)
    if rec.opcode == "dma_transpose":
        eff *= TRANSPOSE_HBM_FRACTION if touches_hbm else TRANSPOSE_SBUF_FRACTION
    rate_eff = hw.dma_gbs_per_engine * eff  # B/ns per engine after per-packet overhead
    if touches_hbm:
        rate_eff = min(rate_eff, hbm_engine_cap(hw))  # derived: the core's HBM share, spread over 16 engines
    ns = nbytes / len(engines) / rate_eff if nbytes else 0.0
    dge = (hw.dma_hwdge_us if hw.dma_hwdge_us is not None else 0.0) * 1e3
    descriptors = max(1, math.ceil(nbytes / chunk)) if nbytes else 0
    if rec.info.get("queue") == "pool":
        dge += descriptors * SWDGE_NS_PER_DESCRIPTOR
    return DmaCost(
        nbytes=nbytes,
        engines=engines,
        ns_per_engine=ns,
        dge_ns=dge,
        latency_ns=hw.dma_semaphore_us * 1e3,
        chunk_bytes=int(chunk),
        descriptors=descriptors,
        efficiency=eff,
        rate_bytes_per_ns=rate_eff,
        touches_hbm=touches_hbm,
    )


def transfer_ns(
    nbytes: int, partitions: int, chunk_bytes: int, hw: HardwareSpec, *, hbm: bool = True
) -> float:
    """Transfer time of an isolated DMA (no issue latency), ns: a hand-check helper for tests and notes."""
    n_eng = max(1, min(16, math.ceil(partitions / PARTITIONS_PER_ENGINE)))
    rate = hw.dma_gbs_per_engine * dma_efficiency(chunk_bytes)
    if hbm:
        rate = min(rate, hbm_engine_cap(hw))
    return nbytes / n_eng / rate
