"""Per-instruction cost formulas against hand-computed cycles ([ISA-OLD], [NKI-T1], [PERF])."""

from __future__ import annotations

import pytest
from _records import dma, hbm, matmul, rec, sb

from nki_moe.perf.costs import compute_cost, matmul_cycles, pe_active_cycles
from nki_moe.perf.dma import contiguous_bytes, dma_cost, dma_efficiency, transfer_ns
from nki_moe.perf.hardware import get_hardware

TRN1, TRN2, TRN3 = (get_hardware(n) for n in ("trn1", "trn2", "trn3"))


def test_matmul_formula():
    assert matmul_cycles(128, 128, 512, "bfloat16")[0] == 512  # max(min(64,128), 512)
    assert matmul_cycles(128, 128, 1, "bfloat16")[0] == 64  # GEMV, weights stationary: one MM per 64 cycles
    assert matmul_cycles(128, 32, 16, "bfloat16")[0] == 32  # small stationary: min(64, 32)
    assert matmul_cycles(128, 128, 512, "float32")[0] == 4 * 512
    assert matmul_cycles(256, 128, 512, "float8_e4m3", perf_mode="double_row")[0] == 512  # K=256 same time
    assert matmul_cycles(128, 128, 128, "bfloat16", is_transpose=True)[0] == 128  # max(P, min(64, F))
    r = rec("nc_matmul", "pe", [], K=128, M=128, N=512, dtype="bfloat16")
    assert compute_cost(r, TRN2).ns == pytest.approx(512 / 2.4)


def test_pe_activity_counts_load_stationary():
    """Profiler PE activity = LS (max(M,64)/4; 128 columns: ~32 cycles, [PERF]) + MM (max(N,64))."""
    # LS + MM + MM_INIT_LATENCY (64, [NKI-T1]) per instruction
    assert pe_active_cycles(128, 128, 1, "bfloat16") == 32 + 64 + 64  # GEMV: 2.5× its throughput cost
    assert pe_active_cycles(128, 64, 1, "bfloat16") == 16 + 64 + 64
    assert pe_active_cycles(128, 128, 512, "bfloat16") == 32 + 512 + 64
    assert pe_active_cycles(128, 128, 1, "float32") == 4 * (32 + 64) + 64
    r = rec("nc_matmul", "pe", [], K=128, M=128, N=1, dtype="bfloat16")
    c = compute_cost(r, TRN2)
    assert c.ns == pytest.approx(64 / 2.4) and c.active_ns == pytest.approx(160 / 2.4)
    v = rec("tensor_copy", "dve", [sb("src", "r", 1), sb("dst", "w", 2)])
    assert compute_cost(v, TRN2).active_ns == compute_cost(v, TRN2).ns  # no documented difference


def test_vector_engine_formulas_and_perf_modes():
    copy_sb = rec("tensor_copy", "dve", [sb("src", "r", 1), sb("dst", "w", 2)])
    assert compute_cost(copy_sb, TRN1).cycles == 512  # NC-v2: max(MIN_II, N)
    assert compute_cost(copy_sb, TRN2).cycles == 128  # v3 perf mode 4x (SBUF bf16 unit stride)
    assert compute_cost(copy_sb, TRN2).ns == pytest.approx(128 / 0.96)
    copy_psum = rec(
        "tensor_copy", "dve", [sb("src", "r", 1, dtype="float32", buffer="psum"), sb("dst", "w", 2)]
    )
    assert compute_cost(copy_psum, TRN2).cycles == 512  # fp32 PSUM source: no perf mode
    tiny = rec("tensor_copy", "dve", [sb("src", "r", 1, F=8, dtype="float32"), sb("dst", "w", 2, F=8)])
    assert compute_cost(tiny, TRN2).cycles == 64  # MIN_II floor
    tt = rec(
        "tensor_tensor",
        "dve",
        [
            sb("a", "r", 1, dtype="float32"),
            sb("b", "r", 2, dtype="float32"),
            sb("dst", "w", 3, dtype="float32"),
        ],
        op="multiply",
    )
    assert compute_cost(tt, TRN2).cycles == 1024  # 2N for two SBUF fp32 inputs
    recip = rec("reciprocal", "dve", [sb("d", "r", 1, F=100, dtype="float32"), sb("o", "w", 2, F=100)])
    assert compute_cost(recip, TRN2).cycles == 800  # 8N
    red = rec("tensor_reduce", "dve", [sb("d", "r", 1, F=1024), sb("o", "w", 2, F=1)], op="add")
    assert compute_cost(red, TRN1).cycles == 512  # N/2 for bf16 add


def test_scalar_gpsimd_and_stride():
    act = rec(
        "activation",
        "act",
        [sb("d", "r", 1, F=1024, dtype="float32"), sb("o", "w", 2, F=1024, dtype="float32")],
    )
    assert compute_cost(act, TRN2).cycles == 1024
    assert compute_cost(act, TRN2).ns == pytest.approx(1024 / 1.2)
    act_red = rec(
        "activation_reduce",
        "act",
        [sb("d", "r", 1, F=1024, dtype="float32"), sb("o", "w", 2, F=1024, dtype="float32")],
    )
    assert compute_cost(act_red, TRN2).cycles == 1024 + 64
    act_bf16 = rec("activation", "act", [sb("d", "r", 1, F=1024), sb("o", "w", 2, F=1024)])
    assert compute_cost(act_bf16, TRN3).cycles == 512  # v4 ScalarE: 256 elem/cycle for 2-byte dtypes
    iota = rec("iota", "pool", [sb("o", "w", 1, F=100, dtype="float32")])
    assert compute_cost(iota, TRN2).cycles == 250  # 150 + N
    strided = rec(
        "activation",
        "act",
        [sb("d", "r", 1, F=256, dtype="float32", stride=8), sb("o", "w", 2, F=256, dtype="float32")],
    )
    assert compute_cost(strided, TRN2).cycles == 2 * 256  # 32-byte stride halves port bandwidth


def test_dma_model():
    assert dma_efficiency(4096) == pytest.approx(4096 / 4608)  # ≥4 KiB: ~89 % ("close to saturation")
    assert dma_efficiency(256) < 0.34  # <256 B: overhead-bound
    # Published single-engine example: 32 KiB on 4 partitions, one engine at 23 B/ns (HBM share 22.7 B/ns):
    # min(engine rate × efficiency, HBM share) = 23 × 8192/8704 = 21.6 B/ns (the engine side binds).
    d = dma(sb("dst", "w", 1, P=4, F=4096), hbm("src", "r", 2, 4 * 4096))
    c = dma_cost(d, TRN2)
    assert c.engines == (0,)
    assert c.chunk_bytes == 8192
    share = 2.9e3 / 8 / 16  # B/ns per engine
    assert c.ns_per_engine == pytest.approx(32768 / min(23 * 8192 / (8192 + 512), share))
    assert transfer_ns(32768, 4, 8192, TRN2) == pytest.approx(c.ns_per_engine)
    assert c.dge_ns == pytest.approx(600) and c.latency_ns == pytest.approx(1300)
    # A [128, 128] bf16 load uses all 16 engines; a strided HBM source limits the descriptor size.
    full = dma(sb("dst", "w", 1, P=128, F=128), hbm("src", "r", 2, 128 * 128, run=128))
    assert dma_cost(full, TRN2).engines == tuple(range(16))
    assert contiguous_bytes(full.accesses[0]) == 256
    assert dma_cost(full, TRN2).chunk_bytes == 256
    assert dma_cost(full, TRN3).rate_bytes_per_ns > dma_cost(full, TRN2).rate_bytes_per_ns


def test_hbm_cap_is_independent_of_packet_efficiency():
    """Trn1: the sustained HBM share (fitted fraction) caps bytes/ns after the engines' packet overhead,
    so 256 B and 1 KiB descriptors move at nearly the same rate once the HBM side binds ([MM-TUT-OLD])."""
    from nki_moe.perf.dma import HBM_SUSTAINED_FRACTION, hbm_engine_cap

    assert HBM_SUSTAINED_FRACTION["trn2"] == HBM_SUSTAINED_FRACTION["trn3"] == 1.0
    cap = hbm_engine_cap(TRN1)
    assert cap == pytest.approx(820 / 2 / 16 * HBM_SUSTAINED_FRACTION["trn1"])
    small = dma(sb("dst", "w", 1, P=128, F=128), hbm("src", "r", 2, 128 * 128, run=128))  # 256 B rows
    large = dma(sb("dst", "w", 1, P=128, F=512), hbm("src", "r", 2, 128 * 512, run=512))  # 1 KiB rows
    r_small, r_large = (dma_cost(x, TRN1).rate_bytes_per_ns for x in (small, large))
    assert r_large == pytest.approx(cap)  # 17 × 0.67 = 11.3 B/ns at the engine: the HBM share binds
    assert r_small == pytest.approx(min(17 * 256 / 768, cap))
    assert r_large / r_small < 1.25  # on trn2 (no cap binding) the same two differ by 2x
    assert dma_cost(large, TRN2).rate_bytes_per_ns / dma_cost(small, TRN2).rate_bytes_per_ns == pytest.approx(
        2.0
    )
    # SBUF→SBUF never touches HBM: no cap
    on_chip = dma(sb("dst", "w", 1, P=128, F=512), sb("src", "r", 2, P=128, F=512))
    assert dma_cost(on_chip, TRN1).rate_bytes_per_ns == pytest.approx(17 * 1024 / 1536)


def test_element_strided_dma_pays_one_descriptor_per_element():
    """A transposing dma_copy through an access pattern (element-strided source) has 2-byte descriptors."""
    tr = dma(sb("dst", "w", 1, P=128, F=128), hbm("src", "r", 2, 128 * 128, run=1))
    c = dma_cost(tr, TRN2)
    assert c.chunk_bytes == 2 and c.descriptors == 128 * 128
    assert c.efficiency == pytest.approx(2 / 514)


def test_matmul_strided_operand_halves_fetch():
    """[NKI-T1] 16-byte stride rule on the PE operand fetch: a moving operand read every 2nd element
    (4-byte stride, bf16) is unit-stride enough; every 16th (32 bytes) doubles the matmul's cycles."""

    def mm(stride):
        return matmul(
            sb("dst", "w", 3, F=512, dtype="float32", buffer="psum"),
            sb("st", "r", 1, F=128),
            sb("mv", "r", 2, F=512, stride=stride),
        )

    assert compute_cost(mm(1), TRN2).cycles == 512
    assert compute_cost(mm(2), TRN2).cycles == 512
    c = compute_cost(mm(16), TRN2)
    assert c.cycles == 1024 and "strided" in c.rule
    assert c.active_cycles == 2 * (32 + 512) + 64  # the stride doubles the streaming, not the init latency
