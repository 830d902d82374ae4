"""Cited hardware specs of Trainium chips (trn1, trn2, trn3) and the roofline arithmetic on them.

Every number carries its source tag in docs/sources.md (e.g. ``[T2-ARCH]``); the
usable-SBUF figures come from the KLR compiler front end (``[KLR]``). ``# derived:``
marks arithmetic on cited numbers. Units: clocks in GHz, FLOP rates in TFLOP/s and bandwidths in GB/s or
TB/s in the tables; the helper methods return SI base units (FLOP/s, B/s, bytes).

Scopes: ``"core"`` = one physical NeuronCore; ``"logical_core"`` = ``lnc`` physical cores acting as one
(LNC=2 on Trn2/Trn3 by default [LNC]); ``"chip"`` = the whole device (8 physical = 4 logical cores on
Trn2/Trn3). Chip compute peaks are the published chip figures, which are not exactly 8 × the per-core
figures (Trn2 BF16: 667 [T2-ARCH] vs 8 × 79 = 632 TFLOP/s [NC3]); for kernel modelling use the per-core ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["SCOPES", "Engine", "HardwareSpec", "TRN1", "TRN2", "TRN3", "HARDWARE", "get_hardware"]

SCOPES = ("core", "logical_core", "chip")
_TERA, _GIGA, _GIB, _MIB, _KIB = 1e12, 1e9, 2**30, 2**20, 2**10


@dataclass(frozen=True)
class Engine:
    """One compute engine of a NeuronCore: clock and elements processed per cycle (None: not published)."""

    clock_ghz: float
    elems_per_cycle_bf16: int | None = None  # 16-bit dtypes (and fp8 where stated)
    elems_per_cycle_fp32: int | None = None  # other dtypes


@dataclass(frozen=True)
class HardwareSpec:
    """Published figures of one Trainium generation (per physical core unless the name says chip)."""

    name: str
    core_name: str
    physical_cores_per_chip: int
    lnc: int  # physical cores per logical core (default LNC)
    engines: Mapping[str, Engine]  # "PE" (TensorE), "DVE" (VectorE), "ACT" (ScalarE), "POOL" (GpSimdE)
    tensor_tflops_core: Mapping[str, float]  # dense TensorE peak per physical core, by dtype
    tensor_tflops_chip: Mapping[str, float]  # dense peak per chip, by dtype
    hbm_tbs: float  # HBM bandwidth per chip (the chip page's value where sources conflict)
    hbm_tbs_alt: float | None  # the conflicting value of another official page, if any
    hbm_gib: float  # HBM capacity per chip
    sbuf_partitions: int
    sbuf_bytes_per_partition: int  # physical, per core
    sbuf_usable_bytes_per_partition: int  # kernel-allocatable (nl.tile_size.total_available_sbuf_size)
    sbuf_mib_chip: float
    psum_bytes_per_partition: int
    psum_banks: int
    dma_engines_per_core: int
    dma_gbs_per_engine: float  # peak-table figure (B/ns = GB/s)
    dma_gbs_per_engine_theoretical: float
    dma_tbs_chip: float
    dma_semaphore_us: float  # semaphore-to-start latency of a DMA transfer, cross-engine
    dma_hwdge_us: float | None  # hardware descriptor generation per DMA instruction (None: not published)
    # ---- collectives (nki_moe.perf.collectives); defaults only so that the figures stay keyword-only
    cc_cores: int | None = None  # collective-communication cores per chip (they orchestrate its DMA)
    cc_cores_alt: int | None = None  # the conflicting count of the NKI architecture guide, if any
    neuronlink_tbs_chip: float | None = None  # chip-to-chip NeuronLink (off-chip; None: not published)
    cc_reduce_dma_fraction: float = 0.5  # reduction throughput of collective DMA ÷ plain DMA copy throughput

    # ---- cores -------------------------------------------------------------------------------------
    def cores(self, scope: str) -> int:
        """Physical cores in ``scope`` ('core' | 'logical_core' | 'chip')."""
        return {"core": 1, "logical_core": self.lnc, "chip": self.physical_cores_per_chip}[_scope(scope)]

    @property
    def logical_cores_per_chip(self) -> int:
        """Logical cores per chip at the default LNC (4 on Trn2/Trn3)."""
        return self.physical_cores_per_chip // self.lnc

    # ---- compute -----------------------------------------------------------------------------------
    def peak_flops(self, dtype: str = "bf16", scope: str = "chip") -> float:
        """Dense TensorE peak.

        Args:
            dtype: 'bf16', 'fp8', 'fp32' (and 'mxfp8' on trn3).
            scope: 'core' (published per-core figure), 'logical_core' (lnc × core) or 'chip' (published).
        Returns:
            FLOP/s.
        """
        table = self.tensor_tflops_chip if _scope(scope) == "chip" else self.tensor_tflops_core
        if dtype not in table:
            raise KeyError(f"{self.name}: no TensorE peak for dtype {dtype!r}; known: {', '.join(table)}")
        return table[dtype] * _TERA * (self.lnc if scope == "logical_core" else 1)

    def pe_formula_flops_core(self) -> float:
        """128 × 128 PEs × 2 FLOP × PE clock: the BF16 peak implied by the systolic array, FLOP/s."""
        return 128 * 128 * 2 * self.engines["PE"].clock_ghz * _GIGA

    # ---- memory ------------------------------------------------------------------------------------
    def hbm_bandwidth(self, scope: str = "chip") -> float:
        """HBM bandwidth, B/s; per core = chip / physical cores (derived: cores share the stacks evenly)."""
        return self.hbm_tbs * _TERA * self.cores(scope) / self.physical_cores_per_chip

    def machine_balance(self, dtype: str = "bf16", scope: str = "chip") -> float:
        """Ridge point of the roofline: peak FLOP/s ÷ HBM B/s, in FLOP/byte."""
        return self.peak_flops(dtype, scope) / self.hbm_bandwidth(scope)

    def hbm_bytes(self) -> int:
        """HBM capacity per chip, bytes."""
        return int(self.hbm_gib * _GIB)

    def sbuf_bytes(self, scope: str = "core", usable: bool = False) -> int:
        """SBUF bytes in ``scope``: partitions × bytes per partition × physical cores (physical or usable)."""
        per_partition = self.sbuf_usable_bytes_per_partition if usable else self.sbuf_bytes_per_partition
        return self.sbuf_partitions * per_partition * self.cores(scope)

    def psum_bytes(self, scope: str = "core") -> int:
        """PSUM bytes in ``scope`` (2 MiB per core on every generation)."""
        return self.sbuf_partitions * self.psum_bytes_per_partition * self.cores(scope)

    # ---- DMA ---------------------------------------------------------------------------------------
    def dma_bandwidth(self, scope: str = "core") -> float:
        """DMA bandwidth, B/s: engines × per-engine peak per (logical) core; the published figure per chip."""
        if _scope(scope) == "chip":
            return self.dma_tbs_chip * _TERA
        return self.dma_engines_per_core * self.dma_gbs_per_engine * _GIGA * self.cores(scope)

    def dma_fixed_cost_us(self) -> float:
        """Exposed latency of a dependent small DMA, µs: semaphore-to-start + hwdge (derived; ~1.9 trn2)."""
        return self.dma_semaphore_us + (self.dma_hwdge_us or 0.0)


def _scope(scope: str) -> str:
    """Validate a scope name."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; expected one of {', '.join(SCOPES)}")
    return scope


TRN1 = HardwareSpec(
    name="trn1",
    core_name="NeuronCore-v2",
    physical_cores_per_chip=2,  # [NKI-T1]
    lnc=1,  # LNC=2 is a Trn2/Trn3 feature [LNC]; a Trn1 core is its own logical core
    engines={
        "PE": Engine(2.8),  # [NKI-T1]
        "DVE": Engine(1.12, 128, 128),  # [NKI-T1]: 128 lanes
        "ACT": Engine(1.4, 128, 128),  # [NKI-T1]
        "POOL": Engine(1.4, 128, 128),  # [NKI-T1]
    },
    # [NKI-T1]: "92 TFLOPS" BF16/FP16/TF32/cFP8 and 23 FP32 per core
    tensor_tflops_core={"bf16": 92.0, "fp8": 92.0, "fp32": 23.0},
    tensor_tflops_chip={
        "bf16": 190.0,  # [NKI-T1], [T2-ARCH] comparison table (2 × 92 = 184)
        "fp8": 184.0,  # derived: 2 cores × 92 (no chip figure published)
        "fp32": 46.0,  # derived: 2 cores × 23 (no chip figure published)
    },
    hbm_tbs=0.82,  # [NKI-T1]: 820 GB/s
    hbm_tbs_alt=None,
    hbm_gib=32,  # [NKI-T1]
    sbuf_partitions=128,  # [NKI-T1]
    sbuf_bytes_per_partition=192 * _KIB,  # [NKI-T1]: 24 MiB = 128 × 192 KiB
    sbuf_usable_bytes_per_partition=180224,  # [KLR]: 192 KiB − 16 KiB compiler reserve
    sbuf_mib_chip=48,  # [T2-ARCH] comparison ("Trn1: 48")
    psum_bytes_per_partition=16 * _KIB,  # [NKI-T1]: 2 MiB = 128 × 16 KiB
    psum_banks=8,  # [NKI-T1]: 8 banks × 2 KiB
    dma_engines_per_core=16,  # [NKI-T1]
    dma_gbs_per_engine=17.0,  # [DMA-BW]: 17 B/ns → 272 GB/s per core
    dma_gbs_per_engine_theoretical=27.2,  # [DMA-INTRO]: 27.2 GB/s on v2 and v3
    dma_tbs_chip=1.0,  # [NKI-T1]
    dma_semaphore_us=1.3,  # [DMA-BW]: "~1300 ns cross-engine"
    dma_hwdge_us=None,  # not published for NC-v2
    cc_cores=6,  # [NKI-T1]: "6 CC-Cores for collective communication"
    neuronlink_tbs_chip=None,  # [NKI-T1]: 4 NeuronLink-v2 per Trainium chip; no bandwidth on these pages
    cc_reduce_dma_fraction=0.5,  # [NKI-T3]: 50 % "via DMA collective compute engines prior to NeuronCore-v4"
)

TRN2 = HardwareSpec(
    name="trn2",
    core_name="NeuronCore-v3",
    physical_cores_per_chip=8,  # [T2-ARCH], [NKI-T2]
    lnc=2,  # [LNC]: default LNC=2, 4 logical cores per chip
    engines={
        "PE": Engine(2.4),  # [NKI-T2]
        "DVE": Engine(0.96, 512, 256),  # [NKI-T2]: 512 elem/cycle BF16/FP16, 256 others
        "ACT": Engine(1.2, 128, 128),  # [NKI-T2]: 128 elem/cycle (one per partition)
        "POOL": Engine(1.2),  # [NKI-T2]: 8 processors × 512-bit SIMD; no elem/cycle figure published
    },
    tensor_tflops_core={"bf16": 79.0, "fp8": 158.0, "fp32": 20.0},  # [NC3], [NKI-T2] (fp8 = double_row)
    tensor_tflops_chip={"bf16": 667.0, "fp8": 1299.0, "fp32": 181.0},  # [T2-ARCH]
    hbm_tbs=2.9,  # [T2-ARCH] (chip page; rendered NKI guide agrees)
    hbm_tbs_alt=3.0,  # [NKI-T2] HEAD source says "3TB/s"
    hbm_gib=96,  # [T2-ARCH], [NKI-T2]: 4 stacks of 24 GB
    sbuf_partitions=128,  # [NKI-T2]
    sbuf_bytes_per_partition=224 * _KIB,  # [NKI-T2]: 28 MiB = 128 × 224 KiB
    sbuf_usable_bytes_per_partition=212984,  # [KLR]
    sbuf_mib_chip=224,  # [T2-ARCH]
    psum_bytes_per_partition=16 * _KIB,  # [NKI-T2]: 2 MiB = 128 × 16 KiB
    psum_banks=8,  # [NKI-T2]: 8 banks × 2 KiB = 512 fp32
    dma_engines_per_core=16,  # [NKI-T2], [DMA-INTRO]: 128 per chip
    dma_gbs_per_engine=23.0,  # [DMA-BW]: 23 B/ns → 368 GB/s per core
    dma_gbs_per_engine_theoretical=27.2,  # [DMA-INTRO]
    dma_tbs_chip=3.5,  # [T2-ARCH] ("with inline memory compression/decompression")
    dma_semaphore_us=1.3,  # [DMA-BW]
    dma_hwdge_us=0.6,  # [DGE], [NKI-T2]: ~600 ns per hwdge DMA instruction
    cc_cores=16,  # [T2-ARCH]: "16 CC-Cores orchestrate collective communication"
    cc_cores_alt=20,  # [NKI-T2]: "20 CC-Cores" (the two pages conflict)
    neuronlink_tbs_chip=1.28,  # [T2-ARCH]: NeuronLink-v3, 1.28 TB/s per chip
    cc_reduce_dma_fraction=0.5,  # [NKI-T3]: 50 % of DMA throughput before NeuronCore-v4
)

TRN3 = HardwareSpec(
    name="trn3",
    core_name="NeuronCore-v4",
    physical_cores_per_chip=8,  # [T3-ARCH], [NKI-T3]
    lnc=2,  # [LNC], [NKI-T3]: LNC works as on Trn2
    engines={
        "PE": Engine(2.4),  # [NKI-T3]
        "DVE": Engine(1.2, 512, 256),  # [NKI-T3]: 512 elem/cycle BF16/FP16/FP8, 256 others
        "ACT": Engine(1.2, 256, 128),  # [NKI-T3]: 256 BF16/FP16/FP8, 128 others
        "POOL": Engine(1.2, 128, 128),  # [NKI-T3]: 128 elem/cycle for every dtype
    },
    tensor_tflops_core={
        "bf16": 79.0,  # [NC4], [NKI-T3]
        "fp8": 158.0,  # derived: FP8 double_row = 2 × BF16 [NKI-T2], still available on v4 [ISA-NEW]
        "mxfp8": 315.0,  # [NC4], [NKI-T3] (MXFP8/MXFP4)
        "fp32": 20.0,  # [NC4], [NKI-T3]
    },
    tensor_tflops_chip={
        "bf16": 671.0,  # [T3-ARCH]
        "fp8": 1342.0,  # derived: 2 × the chip BF16 figure (double_row); no chip figure published
        "mxfp8": 2517.0,  # [T3-ARCH], [AIWIRE]
        "fp32": 183.0,  # [T3-ARCH]
    },
    hbm_tbs=4.9,  # [T3-ARCH] and press
    hbm_tbs_alt=4.7,  # [NKI-T3]
    hbm_gib=144,  # [T3-ARCH], [NKI-T3]
    sbuf_partitions=128,  # [NKI-T3]
    sbuf_bytes_per_partition=256 * _KIB,  # derived: 32 MiB per core [NKI-T3], [NC4] / 128 partitions
    sbuf_usable_bytes_per_partition=245752,  # [KLR]
    sbuf_mib_chip=256,  # [T3-ARCH]
    psum_bytes_per_partition=16 * _KIB,  # [NKI-T3]: 2 MiB per core, unchanged
    psum_banks=8,  # [NKI-T3]
    dma_engines_per_core=16,  # [NKI-T3], [DMA-INTRO]
    dma_gbs_per_engine=33.0,  # [DMA-BW]: 33 B/ns → 528 GB/s per core
    dma_gbs_per_engine_theoretical=38.4,  # [NKI-T3], [DMA-INTRO]
    dma_tbs_chip=4.9,  # [T3-ARCH] ("with inline computation")
    dma_semaphore_us=1.3,  # [DMA-BW]
    dma_hwdge_us=0.6,  # [DGE] (published for hwdge generally; not separately for v4)
    cc_cores=16,  # [T3-ARCH]
    cc_cores_alt=20,  # [NKI-T3]
    neuronlink_tbs_chip=2.56,  # [T3-ARCH]: NeuronLink-v4, 2.56 TB/s per device
    # [NKI-T3]: DMA read-add-write keeps plain-copy throughput on NC-v4. No source says the runtime's
    # collectives use it (no nki.isa API yet): an assumption, visible only for messages of ≳ 100 KiB.
    cc_reduce_dma_fraction=1.0,
)

HARDWARE: dict[str, HardwareSpec] = {hw.name: hw for hw in (TRN1, TRN2, TRN3)}


def get_hardware(name: str) -> HardwareSpec:
    """Return the spec of 'trn1', 'trn2' or 'trn3'; ``KeyError`` listing the known names otherwise."""
    try:
        return HARDWARE[name]
    except KeyError:
        raise KeyError(f"unknown hardware {name!r}; known: {', '.join(HARDWARE)}") from None
