"""Cited hardware figures and the per-core / logical-core / chip arithmetic ([T2-ARCH], [KLR])."""

from __future__ import annotations

import pytest

from nki_moe.perf.hardware import HARDWARE, get_hardware

TRN1, TRN2, TRN3 = (get_hardware(n) for n in ("trn1", "trn2", "trn3"))


def test_get_hardware():
    assert list(HARDWARE) == ["trn1", "trn2", "trn3"]
    with pytest.raises(KeyError, match="trn1, trn2, trn3"):
        get_hardware("inf2")


def test_cores_and_scopes():
    assert (TRN2.cores("core"), TRN2.cores("logical_core"), TRN2.cores("chip")) == (1, 2, 8)
    assert TRN2.logical_cores_per_chip == TRN3.logical_cores_per_chip == 4
    assert TRN1.cores("chip") == 2 and TRN1.logical_cores_per_chip == 2
    with pytest.raises(ValueError, match="scope"):
        TRN2.peak_flops("bf16", "device")


def test_clocks():
    def clocks(hw):
        return [hw.engines[e].clock_ghz for e in ("PE", "DVE", "ACT", "POOL")]

    assert clocks(TRN2) == [2.4, 0.96, 1.2, 1.2]
    assert clocks(TRN3) == [2.4, 1.2, 1.2, 1.2]
    assert clocks(TRN1) == [2.8, 1.12, 1.4, 1.4]


def test_peak_flops():
    assert TRN2.peak_flops("bf16", "core") == 79e12
    assert TRN2.peak_flops("bf16", "logical_core") == 158e12
    assert TRN2.peak_flops("bf16", "chip") == 667e12
    assert (TRN2.peak_flops("fp8"), TRN2.peak_flops("fp32")) == (1299e12, 181e12)
    assert [TRN3.peak_flops(d) for d in ("bf16", "mxfp8", "fp32")] == [671e12, 2517e12, 183e12]
    assert TRN3.peak_flops("fp8") == 2 * 671e12  # derived: double_row = 2 × BF16
    assert TRN3.peak_flops("mxfp8", "core") == 315e12
    assert TRN1.peak_flops("bf16", "core") == 92e12 and TRN1.peak_flops("bf16") == 190e12
    with pytest.raises(KeyError, match="mxfp8"):
        TRN2.peak_flops("mxfp8")
    # derived: 128 × 128 × 2 × 2.4 GHz ([NKI-T2]) = 78.6 TFLOP/s ≈ the published 79 ([NC3])
    assert TRN2.pe_formula_flops_core() == pytest.approx(78.6432e12)
    assert TRN2.peak_flops("bf16", "core") * 8 == 632e12 != TRN2.peak_flops("bf16", "chip")  # §9 conflict


def test_hbm():
    assert TRN2.hbm_bandwidth() == pytest.approx(2.9e12) and TRN2.hbm_tbs_alt == 3.0
    assert TRN3.hbm_bandwidth() == pytest.approx(4.9e12) and TRN3.hbm_tbs_alt == 4.7
    assert TRN2.hbm_bandwidth("core") == pytest.approx(362.5e9)  # §1.2 [derived] ≈ 362 GB/s
    assert TRN2.hbm_bandwidth("logical_core") == pytest.approx(725e9)
    assert TRN1.hbm_bandwidth() == pytest.approx(820e9)
    assert [hw.hbm_bytes() // 2**30 for hw in (TRN1, TRN2, TRN3)] == [32, 96, 144]


def test_machine_balance():
    # derived from [T2-ARCH], [T3-ARCH], [NC3]
    assert TRN2.machine_balance("bf16", "chip") == pytest.approx(230, abs=0.5)
    assert TRN2.machine_balance("bf16", "core") == pytest.approx(218, abs=0.5)
    assert TRN2.machine_balance("fp8", "chip") == pytest.approx(448, abs=0.5)
    assert TRN3.machine_balance("bf16", "chip") == pytest.approx(137, abs=0.5)
    assert TRN3.machine_balance("mxfp8", "chip") == pytest.approx(514, abs=0.5)
    assert TRN2.machine_balance("bf16", "logical_core") == TRN2.machine_balance("bf16", "core")


def test_sbuf_psum():
    assert TRN2.sbuf_bytes("core") == 28 * 2**20 and TRN3.sbuf_bytes("core") == 32 * 2**20
    assert TRN1.sbuf_bytes("core") == 24 * 2**20
    assert (
        TRN1.sbuf_usable_bytes_per_partition,
        TRN2.sbuf_usable_bytes_per_partition,
        TRN3.sbuf_usable_bytes_per_partition,
    ) == (180_224, 212_984, 245_752)
    assert TRN2.sbuf_bytes("logical_core", usable=True) == 2 * 128 * 212_984
    assert TRN2.sbuf_bytes("chip") == TRN2.sbuf_mib_chip * 2**20  # 8 × 28 MiB = 224 MiB
    assert TRN3.sbuf_bytes("chip") == TRN3.sbuf_mib_chip * 2**20
    assert TRN1.sbuf_bytes("chip") == TRN1.sbuf_mib_chip * 2**20
    for hw in HARDWARE.values():
        assert hw.psum_bytes("core") == 2 * 2**20 and hw.psum_bytes_per_partition // hw.psum_banks == 2048


def test_dma():
    assert TRN2.dma_bandwidth("core") == pytest.approx(368e9)
    assert TRN3.dma_bandwidth("core") == pytest.approx(528e9)
    assert TRN1.dma_bandwidth("core") == pytest.approx(272e9)
    assert TRN3.dma_bandwidth("logical_core") == pytest.approx(1056e9)
    assert (TRN2.dma_bandwidth("chip"), TRN3.dma_bandwidth("chip")) == (3.5e12, 4.9e12)
    assert TRN3.dma_bandwidth("core") * 8 == pytest.approx(4.224e12)  # §2.2 [derived] 4.2 TB/s
    assert TRN2.dma_engines_per_core * TRN2.cores("chip") == 128
    assert TRN2.dma_fixed_cost_us() == pytest.approx(1.9)  # §3 [derived] ≈ 1.3 + 0.6 µs
    assert TRN1.dma_fixed_cost_us() == pytest.approx(1.3)
