"""Per-instruction cost formulas of the compute engines (TensorE, VectorE, ScalarE, GpSimdE): an estimate.

Every formula is the published NC-v2 "estimated instruction cost" of [ISA-OLD], with the
NC-v3/v4 perf-mode multipliers of [NKI-T2]/[NKI-T3] applied on top and the engine clocks of
:mod:`nki_moe.perf.hardware`. Costs are in cycles of the executing engine; :func:`compute_cost` turns them
into nanoseconds. N is the number of elements per partition of the main input tile. Source tags resolve in
docs/sources.md; ``derived`` marks arithmetic or a reading of the published rules
that the sources do not state outright. No constant here is fitted.
"""

from __future__ import annotations

from dataclasses import dataclass

from nki_moe.perf.hardware import HardwareSpec

__all__ = [
    "MIN_II",
    "GPSIMD_START",
    "MIN_II_DYNAMIC",
    "DEP_LATENCY_CYCLES",
    "ENGINE_OF",
    "InstrCost",
    "matmul_cycles",
    "pe_active_cycles",
    "compute_cost",
    "engine_clock_ghz",
    "main_elements",
    "strided",
]

MIN_II = 64  # [ISA-OLD]: minimum initiation interval of ACT/DVE/POOL instructions, cycles
GPSIMD_START = 150  # [ISA-OLD]: iota/affine_select start cost on GpSimd, cycles
MIN_II_DYNAMIC = 600  # [ISA-OLD]: tensor_copy_dynamic_src/dst (runtime address), cycles
REDUCE_TAIL = 64  # [ISA-OLD]: activation_reduce / tensor_scalar_reduce add MIN_II; ActReadAccumulator ≈ 64
FP32_MATMUL_FACTOR = 4  # [ISA-OLD], [NKI-T1]: fp32 matmul inputs run 4× slower
STATIONARY_CAP = 64  # [ISA-OLD]: max(min(64, N_stationary), N_moving) (fast LoadStationary, [PERF] Opt #7)
# Profiler-style PE activity (see pe_active_cycles): every nc_matmul is shown as a LoadStationary plus a
# MultiplyMoving instruction ([NKI-ISA]). MultiplyMoving issues every ≈ max(N_moving, 64) cycles
# ([NKI-T1], [PERF]); fast LoadStationary is "up to 4× faster than an MM of
# equal free size: a 128-column LS takes ~32 cycles" ([PERF] Opt #7).
MM_ISSUE_MIN = 64  # [NKI-T1], [PERF]: MultiplyMoving issue interval floor, cycles
MM_INIT_LATENCY = 64  # [NKI-T1]: matmul initiation latency, cycles (dependency latency; profiler active)
LS_SPEEDUP = 4  # [PERF] Opt #7: LoadStationary vs an MM of the same free size
STRIDE_BYTES = 16  # [NKI-T1]: an innermost free-dim stride above 16 bytes halves SBUF/PSUM port bandwidth
BCN_AGGR_NUM, BCN_AGGR_DEN = 13, 3  # [ISA-OLD]: bn_aggr costs 13·N/3
RECIPROCAL_FACTOR = 8  # [ISA-OLD]: DVE reciprocal costs 8N
# Dependency latency: a consumer starts this many of its own engine cycles after its producer finishes.
# PE: MM_INIT_LATENCY = 64 cycles [NKI-T1]; the others: ~60 cycles of static overhead per SBUF/PSUM access
# [NKI-T1] (the published ~100-cycle II of dependent tiny DVE/ACT instructions ≈ MIN_II + this, derived).
DEP_LATENCY_CYCLES = {"pe": MM_INIT_LATENCY, "act": 60, "dve": 60, "pool": 60, "sp": 60}
SP_CYCLES = MIN_II  # derived: sync-engine register ops are charged one MIN_II (no published figure)

ENGINE_OF = {"pe": "PE", "act": "ACT", "dve": "DVE", "pool": "POOL", "sp": "ACT"}  # sp: no clock published
_TWO_BYTE = ("bfloat16", "float16")
_FP8 = ("float8_e4m3", "float8_e4m3fn", "float8_e5m2")
_ONE_INPUT_N = {  # opcode -> cost multiple of N with a MIN_II floor ([ISA-OLD] table)
    "tensor_scalar": 1.0,
    "tensor_copy": 1.0,
    "activation": 1.0,
    "bn_stats": 1.0,
    "range_select": 1.0,
    "dropout": 1.0,
    "nc_stream_shuffle": 1.0,
    "nc_transpose": 1.0,
    "tensor_tensor_scan": 2.0,
    "tensor_scalar_cumulative": 2.0,
    "select_reduce": 1.0,
    "rng": 1.0,
    "rand2": 1.0,
}


@dataclass(frozen=True)
class InstrCost:
    """Estimated cost of one instruction on its engine."""

    engine: str  # trace engine name: 'pe' | 'act' | 'dve' | 'pool' | 'sp'
    cycles: float
    ns: float
    rule: str  # which published formula applied (shown in the Perfetto args)
    active_cycles: float | None = None  # profiler-style activity when it differs from ``cycles`` (PE matmuls)

    @property
    def active_ns(self) -> float:
        """Time the profiler shows the engine active for this instruction (ns); = ``ns`` unless documented."""
        if self.active_cycles is None or not self.cycles:
            return self.ns
        return self.ns * self.active_cycles / self.cycles


def engine_clock_ghz(engine: str, hw: HardwareSpec) -> float:
    """Clock of a trace engine ('pe', 'act', 'dve', 'pool', 'sp') in GHz."""
    return hw.engines[ENGINE_OF[engine]].clock_ghz


def matmul_cycles(
    K: int, M: int, N: int, dtype: str, *, is_transpose: bool = False, perf_mode: str = "none"
) -> tuple[float, str]:
    """PE cycles of one nc_matmul: ``max(min(64, M), N)`` ([ISA-OLD]), ×4 for fp32 inputs.

    Args:
        K: contraction (partitions; doubled in the record for double_row), M: stationary free size,
        N: moving free size, dtype: operand dtype, is_transpose: PE transpose (``max(P, min(64, F))``,
        the same expression with P = N and F = M), perf_mode: 'double_row' runs K=256 in the BF16 time.
    Returns:
        (cycles, rule).
    """
    base = max(min(STATIONARY_CAP, M), N)
    if dtype in ("float32", "tfloat32") and not is_transpose:
        return FP32_MATMUL_FACTOR * base, "4·max(min(64,M),N) fp32"
    if is_transpose:
        # [NKI-T2]: transpose mode is 2× faster than an fp32 "transpose", i.e. the BF16 rate.
        return base, "max(P,min(64,F)) transpose"
    rule = "max(min(64,M),N) double_row" if perf_mode == "double_row" else "max(min(64,M),N)"
    return base, rule


def pe_active_cycles(
    K: int, M: int, N: int, dtype: str, *, is_transpose: bool = False, perf_mode: str = "none"
) -> float:
    """PE cycles the profiler shows as *active* for one nc_matmul: LoadStationary + MultiplyMoving.

    The profiler shows each nc_matmul as two PE instructions, LoadStationary (LS) and MultiplyMoving (MM)
    ([NKI-ISA]), and counts both durations as PE activity, although the throughput formula
    ``max(min(64, M), N)`` of :func:`matmul_cycles` (used by the latency schedule) hides LS behind the
    previous MM. Published durations ([NKI-T1], [PERF]):

    * MM: issues every ≈ ``max(N_moving, 64)`` cycles ([NKI-T1], [PERF]);
    * LS: fast LoadStationary is up to 4× faster than an MM of equal free size, a 128-column LS ~32 cycles
      ([PERF] Opt #7), i.e. ``max(M_stationary, 64) / 4`` cycles (derived: the MM of free size M costs
      ``max(M, 64)``; 128 columns → 32 cycles as published);

    so ``active = max(M, 64)/4 + max(N, 64)``, ×4 for fp32 inputs (both instructions, derived from the 4×
    fp32 matmul rate), plus ``MM_INIT_LATENCY`` = 64 cycles per matmul ([NKI-T1]): the profiler times each
    instruction from its start, so the initiation latency that back-to-back matmuls pipeline away in the
    throughput formula is inside every instruction's duration (derived reading, the same argument as for
    the hidden LoadStationary; not fitted). A PE transpose is a matmul of the data (stationary) with an
    identity (moving): the same expression with M = F and N = P. Nothing here is fitted.
    """
    del K, perf_mode  # the published LS/MM durations depend on the free sizes only
    ls = max(M, MM_ISSUE_MIN) / LS_SPEEDUP
    mm = max(N, MM_ISSUE_MIN)
    factor = FP32_MATMUL_FACTOR if dtype in ("float32", "tfloat32") and not is_transpose else 1
    return factor * (ls + mm) + MM_INIT_LATENCY


def strided(acc) -> bool:
    """Whether an on-chip access has an innermost free-dim stride above 16 bytes ([NKI-T1])."""
    if not acc.pstep or len(acc.pat) < 2:
        return False
    step, num = acc.pat[-1]
    return num > 1 and abs(step) * acc.itemsize > STRIDE_BYTES


def main_elements(rec) -> int:
    """N: elements per partition of the largest on-chip read (the written tile when nothing is read)."""
    reads = [a.elems for a in rec.accesses if a.mode == "r" and a.pstep]
    if reads:
        return max(reads)
    writes = [a.elems for a in rec.accesses if a.pstep]
    return max(writes) if writes else 1


def _perf_mode_divisor(rec, engine: str, nc_version: int) -> float:
    """NC-v3/v4 automatic perf modes of VectorE (and v4 ScalarE), [NKI-T2]/[NKI-T3]."""
    if nc_version < 3:
        return 1.0
    op = rec.opcode
    acc = [a for a in rec.accesses if a.pstep]
    all16 = bool(acc) and all(a.dtype in _TWO_BYTE or a.dtype in _FP8 for a in acc)
    in_sbuf = all(a.buffer == "sbuf" for a in acc)
    unit = not any(
        strided(a) or (len(a.pat) > 1 and abs(a.pat[-1][0]) != 1 and a.pat[-1][1] > 1) for a in acc
    )
    if engine == "dve":
        if op in ("tensor_copy", "tensor_scalar"):
            if all16 and in_sbuf and unit:
                return 4.0  # [NKI-T2]: 4× for SBUF↔SBUF 2-byte unit stride
            if all16:
                return 2.0  # [NKI-T2]: 2× when stride ≠ 1 or one side is in PSUM
        if op == "tensor_tensor" and all16 and in_sbuf:
            return 2.0  # [NKI-T2]: 2× for tensor_tensor, both inputs in SBUF, all BF16/FP16
        return 1.0
    if engine == "act" and nc_version >= 4:
        if all16:
            return 2.0  # [NKI-T3]: ScalarE 256 elem/cycle for BF16/FP16/FP8 (and tensor_scalar/copy 2× mode)
    return 1.0


def _vector_cycles(rec, engine: str, N: int) -> tuple[float, str]:
    """[ISA-OLD] cost table for ACT/DVE/POOL instructions (before perf-mode divisors)."""
    op, info = rec.opcode, rec.info
    acc = [a for a in rec.accesses if a.pstep]
    bf16 = bool(acc) and all(a.dtype in _TWO_BYTE for a in acc)
    if op in (
        "iota",
        "affine_select",
        "nc_n_gather",
        "tensor_partition_reduce",
        "sequence_bounds",
        "shared_identity_matrix",
        "nonzero_with_count",  # a GpSimd scan like iota's; no published cost of its own
    ):
        return GPSIMD_START + N, "150+N"
    if op == "local_gather":
        return GPSIMD_START + N, "150+N (local_gather, C≈1)"
    if op == "core_barrier":
        return MIN_II, "MIN_II (barrier)"
    if op == "activation_reduce" or op == "tensor_scalar_reduce":
        return max(MIN_II, N) + REDUCE_TAIL, "max(MIN_II,N)+MIN_II"
    if op == "tensor_tensor":
        reads = [a for a in rec.accesses if a.mode == "r" and a.pstep]
        one_psum = any(a.buffer == "psum" for a in reads) and any(a.buffer == "sbuf" for a in reads)
        fast_op = info.get("op") in ("add", "multiply", "subtract")
        if one_psum or (bf16 and fast_op and all(a.buffer == "sbuf" for a in acc)):
            return max(MIN_II, N), "max(MIN_II,N)"
        return max(MIN_II, 2 * N), "max(MIN_II,2N)"
    if op == "scalar_tensor_tensor":
        fast = bf16 and info.get("op0") == "subtract" and info.get("op1") == "multiply" and N % 2 == 0
        return (N, "N") if fast else (2 * N, "2N")
    if op == "tensor_reduce":
        fast = bf16 and info.get("op") in ("add", "max", "maximum")
        return (N / 2, "N/2") if fast else (N, "N")
    if op == "bn_aggr":
        return max(MIN_II, BCN_AGGR_NUM * N / BCN_AGGR_DEN), "max(MIN_II,13N/3)"
    if op == "reciprocal":
        return max(MIN_II, RECIPROCAL_FACTOR * N), "max(MIN_II,8N)"
    if op == "memset":
        w = [a for a in rec.accesses if a.mode == "w"]
        if w and w[0].dtype in _TWO_BYTE:
            return max(MIN_II, N / 2), "max(MIN_II,N/2)"
        return max(MIN_II, N), "max(MIN_II,N)"
    if op == "tensor_copy_predicated":
        both_sbuf = all(a.buffer == "sbuf" for a in acc)
        return (max(MIN_II, 2 * N), "max(MIN_II,2N)") if both_sbuf else (max(MIN_II, N), "max(MIN_II,N)")
    if op in ("max8", "nc_find_index8", "nc_match_replace8"):
        return max(MIN_II, N), "max(MIN_II,N)"  # [ISA-OLD] gives N (min() read as max(), derived)
    if op == "exponential":
        # [NKI-T3]: VectorE exponential has 4× the throughput of ScalarE activation(exp) (N cycles).
        return max(MIN_II, N / 4), "max(MIN_II,N/4) exponential"
    if op in ("tensor_copy_dynamic_src", "tensor_copy_dynamic_dst"):
        return max(MIN_II_DYNAMIC, N), "max(600,N)"
    if rec.engine == "pool" and op == "tensor_scalar" and info.get("op0") == "rsqrt":
        return 4 * max(MIN_II, N), "4·max(MIN_II,N) pool rsqrt"  # [SHARED]
    mult = _ONE_INPUT_N.get(op, 1.0)
    rule = "max(MIN_II,N)" if mult == 1.0 else f"max(MIN_II,{mult:g}N)"
    return max(MIN_II, mult * N), rule


def compute_cost(rec, hw: HardwareSpec, *, nc_version: int | None = None) -> InstrCost:
    """Estimated duration of one non-DMA trace record on its engine.

    Args:
        rec: a :class:`nki_moe.sim.trace.Record` whose engine is 'pe', 'act', 'dve', 'pool' or 'sp'.
        hw: hardware spec (clocks).
        nc_version: NeuronCore version (2 trn1, 3 trn2, 4 trn3); derived from ``hw.name`` when None.
    Returns:
        :class:`InstrCost` (cycles of the engine and nanoseconds).
    """
    engine = rec.engine
    ncv = nc_version if nc_version is not None else {"trn1": 2, "trn2": 3, "trn3": 4}[hw.name]
    clock = engine_clock_ghz(engine, hw)
    if engine == "sp":
        return InstrCost(engine, SP_CYCLES, SP_CYCLES / clock, "MIN_II (sync engine)")
    if engine == "pe":
        info = rec.info
        if "K" in info:
            shape = (info["K"], info["M"], info["N"], info.get("dtype", "bfloat16"))
            mode = dict(is_transpose=bool(info.get("is_transpose")), perf_mode=info.get("perf_mode", "none"))
            cycles, rule = matmul_cycles(*shape, **mode)
            active = pe_active_cycles(*shape, **mode)
            if any(a.mode == "r" and a.buffer == "sbuf" and strided(a) for a in rec.accesses):
                # [NKI-T1]: an innermost free-dim stride above 16 bytes halves the SBUF read port bandwidth;
                # the operand fetch (moving streams one column per cycle) runs at half rate (derived)
                cycles, rule = 2 * cycles, rule + " ×2 strided operand"
                active = 2 * active - MM_INIT_LATENCY  # the data streaming doubles, not the init latency
            return InstrCost(engine, cycles, cycles / clock, rule, active)
        return InstrCost(engine, float(MIN_II), MIN_II / clock, "MIN_II")
    N = main_elements(rec)
    cycles, rule = _vector_cycles(rec, engine, N)
    div = _perf_mode_divisor(rec, engine, ncv)
    if div != 1.0:
        cycles = max(MIN_II, cycles / div)
        rule += f" /{div:g} perf mode"
    if any(strided(a) for a in rec.accesses):
        cycles *= 2  # [NKI-T1]: innermost stride > 16 B halves port bandwidth
        rule += " ×2 strided"
    return InstrCost(engine, cycles, cycles / clock, rule)
