"""Attention kernels (nki_moe.kernels.attention): decode, the fused decode block and prefill, strict.

Every check asserts the output's 3-way error ratio at bf16, the MAC count against the analytic count and
both caches after the kernel (``ops.check_with_cache``): the rows written (row L for decode, rows 0..T-1 for
prefill) equal the reference's new v bit for bit and its k within bf16 tolerance (the RMS's fp32 sum order),
every other row untouched bit for bit (they hold stale values 8x larger, so a kernel reading them fails).
"""

from __future__ import annotations

import numpy as np
import pytest

from nki_moe import budget, ops
from nki_moe.ladder import ratio
from nki_moe.reference import apply_rope, gqa_attention, qk_norm

op, block = ops.get("attention_decode"), ops.get("attention_block_decode")
SMALL = dict(n_q=4, n_kv=2, d=64, cap=16)  # two KV heads (g = 2), half-width heads, a short cache
VERSIONS, BLOCK_VERSIONS = [v.name for v in op.versions], [v.name for v in block.versions]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("L", (20, 639))
def test_every_version_at_real_width(version, L):
    checked, cache = ops.check_with_cache(op, version, L=L)
    assert checked.macs == 2 * 8 * 128 * (L + 1) and len(cache) == 4 and all(cache)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("L", (0, 1, 5, 15))
def test_two_kv_heads_small_width_first_and_last_rows(version, L):
    """L = 0: the first token attends only itself (v1: the second core has no position); L = 15 fills the
    cache's last row."""
    checked, _ = ops.check_with_cache(op, version, seed=3, L=L, **SMALL)
    assert checked.macs == 2 * 4 * 64 * (L + 1)


@pytest.mark.parametrize("L", (127, 128, 511, 512))
def test_final_at_tile_boundaries(L):
    """S = L + 1 positions straddle the 128-position tiles and the 512-position score matmuls."""
    ops.check_with_cache(op, op.final, L=L)


def test_trn3():
    ops.check_with_cache(op, op.final, target="trn3", L=639)
    ops.check_with_cache(op, "v1", target="trn3", L=639)
    ops.check_with_cache(block, block.final, target="trn3", L=639)


@pytest.mark.parametrize("version", BLOCK_VERSIONS)
@pytest.mark.parametrize("L", (20, 128, 639))
def test_fused_block_at_real_width(version, L):
    """x [1, 2048] through q|k|v (1280 columns), attention over L + 1 positions and o (1024 -> 2048)."""
    checked, _ = ops.check_with_cache(block, version, L=L)
    assert checked.macs == 2048 * 1280 + 2 * 8 * 128 * (L + 1) + 1024 * 2048


@pytest.mark.parametrize("version", BLOCK_VERSIONS)
@pytest.mark.parametrize("L", (0, 15))
def test_fused_block_two_kv_heads_small_width(version, L):
    """H = 256: one contraction tile per core; 4 query heads over 2 KV heads split one KV head per core."""
    ops.check_with_cache(block, version, seed=2, L=L, H=256, **SMALL)


def test_order_preserving_versions_are_bit_identical_and_flash_decoding_is_not():
    """v0 and v2 keep the reference's rounding points and normalise before p·V: bit-identical here;
    v1's per-core rescaling changes the accumulation order (within the ratio, not the bits)."""
    share = {}
    for v in VERSIONS:
        c = op.check(v, L=639)
        share[v] = float((c.outputs[0].astype(np.float32) == c.expected[0]).mean())
    assert share["v0"] == share["v2"] == 1.0 and share["v1"] < 0.9


def test_a_stale_cache_row_would_fail_the_check():
    """The check can fail: attending the stale row L instead of the new key is far outside the ratio."""
    args = op.fp32_args(L=20)
    stale = list(args)
    stale[1] = args[7][20].reshape(1, -1)  # the key a kernel reading row L before its append would see
    lowp, fp32 = op.expected(args, "bf16"), op.expected(args, "fp32")
    wrong = op.expected(tuple(stale), "bf16")
    assert ratio(lowp[0], lowp[0], fp32[0])
    assert not ratio(wrong[0], lowp[0], fp32[0])


def test_the_decode_attention_line_of_the_budget_uses_the_estimate():
    est = budget.Estimate(
        "attention_decode", dict(L=639, n_q=8, n_kv=1, d=128, cap=640), "trn2", 9.0, "v2", 1
    )
    lines = {ln.launch.op: ln for ln in budget.decode_budget([est], "trn2", budget.TP4_LNC2).lines}
    assert lines["attention"].kind == "estimate" and lines["attention"].us_each == 9.0
    assert budget.shapes("attention_decode", prefill=640) == [
        dict(L=639, n_kv=1, n_q=8),
        dict(L=639, n_kv=4, n_q=32),
    ]


prefill = ops.get("attention_prefill")
PREFILL_VERSIONS = [v.name for v in prefill.versions]


@pytest.mark.parametrize("version", PREFILL_VERSIONS)
@pytest.mark.parametrize("T", (14, 129, 640))
def test_prefill_every_version(version, T):
    """Causal masks exact (-inf handled as equal), cache rows 0..T-1 written, the rest untouched; T = 129
    leaves a one-token last tile; MACs = the tiled count (key tiles past each query tile skipped)."""
    checked, _ = ops.check_with_cache(prefill, version, T=T)
    pairs = sum(min(128, T - q0) * min(T, q0 + 128) for q0 in range(0, T, 128))
    assert checked.macs == 2 * 8 * 128 * pairs >= 2 * 8 * 128 * T * (T + 1) // 2


@pytest.mark.parametrize("version", PREFILL_VERSIONS)
def test_prefill_two_kv_heads_small_width(version):
    ops.check_with_cache(prefill, version, seed=4, T=20, n_q=4, n_kv=2, d=64, cap=32)


def test_prefill_v4_splits_kv_heads_across_the_cores():
    """n_q = 6 over n_kv = 3 (g = 2): core 0 takes query heads 0-2 (KV heads 0 and 1), core 1 heads 3-5
    (KV heads 1 and 2): a KV head shared by both cores; the same bits on one core as on two."""
    small = dict(seed=4, T=20, n_q=6, n_kv=3, d=64, cap=32)
    two, _ = ops.check_with_cache(prefill, "v4", **small)
    one = prefill.check("v4", lnc=1, **small)
    assert np.array_equal(one.outputs[0], two.outputs[0])


def test_prefill_v4_writes_each_cache_once_and_rejects_odd_head_counts():
    """Each core stores its 4 heads' columns of out and one cache's rows (core 0 K, core 1 V): HBM bytes
    written per core = T·(n_q/2 + n_kv)·d·2, nothing written twice. v4 gives v3's bits."""
    T = 129
    c4, c3 = prefill.check("v4", T=T), prefill.check("v3", T=T)
    written = {0: 0, 1: 0}
    for rec in c4.trace:
        for a in rec.accesses:
            if a.mode == "w" and not a.on_chip:
                written[rec.pid] += a.nbytes
    assert written == {0: T * (4 + 1) * 128 * 2, 1: T * (4 + 1) * 128 * 2}
    assert np.array_equal(c4.outputs[0], c3.outputs[0])
    with pytest.raises(AssertionError, match="3 query heads do not split evenly over 2 cores"):
        prefill.check("v4", seed=4, T=20, n_q=3, n_kv=1, d=64, cap=32)


def test_prefill_trn3_and_bits():
    """The order-preserving prefill (v1: normalised before p·V) is bit-identical on almost every element;
    flash (v2) is not. The final rung is v9 (LNC=2, the faster, not order-preserving variant)."""
    assert prefill.final.name == "v9" and prefill.final.lnc == 2
    ops.check_with_cache(prefill, prefill.final, target="trn3", T=512)
    share = {}
    for v in ("v1", "v2"):
        c = prefill.check(v, T=192)
        share[v] = float((c.outputs[0].astype(np.float32) == c.expected[0]).mean())
    assert share["v1"] > 0.99 and share["v2"] < 0.9


def test_an_off_by_one_causal_mask_would_fail_the_check():
    """The check can fail: queries missing their own key (the mask shifted by one) fail the ratio."""
    args = prefill.fp32_args(T=20)
    lowp, fp32 = prefill.expected(args, "bf16"), prefill.expected(args, "fp32")
    q, k, v, qw, kw, cos, sin, kc, vc, eps = args
    qn = apply_rope(qk_norm(q.reshape(20, -1, 128), qw, eps, "bf16"), cos, sin, "bf16")
    kn = apply_rope(qk_norm(k.reshape(20, 1, 128), kw, eps, "bf16"), cos, sin, "bf16")
    shifted = gqa_attention(qn[1:], kn, v.reshape(20, 1, 128), 0, "bf16")  # token t + 1 sees keys 0..t
    assert ratio(lowp[0][1:], lowp[0][1:], fp32[0][1:])
    assert not ratio(shifted.reshape(19, -1), lowp[0][1:], fp32[0][1:])


# ---- the fused block's later rungs (v4-v7) and prefill v5 / v6 --------------------------------------------
def _shares(op_, versions, **shape):
    """Per version: (output, share of output elements equal to the bf16 reference bit for bit)."""
    out = {}
    for v in versions:
        c = op_.check(v, **shape)
        out[v] = (c.outputs[0], float((c.outputs[0].astype(np.float32) == c.expected[0]).mean()))
    return out


def test_fused_block_v4_to_v7_same_bits_and_bit_identical_at_the_last_row():
    """v4-v7 change the loads, the split of w_o, the softmax's layout and the instruction count, never a
    rounding point or the sums' values: the same bits as each other, and every output element equal to the
    bf16 reference at L = 639 (v3, whose w_qkv rows are contracted in another grouping, is not)."""
    s = _shares(block, ("v3", "v4", "v5", "v6", "v7"), L=639)
    assert all(np.array_equal(s["v4"][0], s[v][0]) for v in ("v5", "v6", "v7"))
    assert s["v7"][1] == 1.0 > s["v3"][1]


@pytest.mark.parametrize("version", ("v4", "v5", "v6", "v7"))
@pytest.mark.parametrize("L", (127, 128, 200, 512))
def test_fused_block_blocked_cache_rows_ragged_slots(version, L):
    """nt = ceil((L + 1) / 128) cache rows per partition: L = 127 one full slot; 128 (two slots of 65 and
    64 positions), 200 and 512 ragged slots — the 128-lane softmax (v6, v7) masks the padding partitions."""
    checked, _ = ops.check_with_cache(block, version, L=L)
    assert checked.macs == 2048 * 1280 + 2 * 8 * 128 * (L + 1) + 1024 * 2048


def test_fused_block_v4_weight_dmas_have_large_descriptors():
    """v3 read w_qkv one 2.5 KiB row per partition per descriptor and the cache rows at 256 B; v4's blocked
    rows: every weight DMA moves >= 4 KiB per descriptor (w_qkv 5-7.5 KiB, w_o 4 KiB rows), the cache rows
    1.25 KiB (5 rows) at L = 639."""
    from nki_moe.perf.dma import dma_cost
    from nki_moe.perf.hardware import get_hardware

    hw = get_hardware("trn2")
    for v, w_min, kv_min in (("v3", 2560, 256), ("v4", 4096, 1280)):
        trace = block.run(v, L=639).trace
        chunks = {}
        for rec in trace.records:
            if rec.engine == "dma" and rec.pid == 0 and rec.opcode == "dma_copy":
                c = dma_cost(rec, hw)
                if c.touches_hbm and c.nbytes >= 20_000:  # not the broadcasts, x or a remainder row
                    chunks.setdefault("w" if c.nbytes > 200_000 else "kv", []).append(c.chunk_bytes)
        assert min(chunks["w"]) == w_min and min(chunks["kv"]) == kv_min, (v, chunks)


def test_fused_block_v5_has_no_exchange_in_its_tail():
    """v4 swaps y partial sums after the o projection; v5-v7 swap the [d, n_q/2] attention outputs before
    it and each core stores its half of y once: HBM bytes written per core = H/2·2 + one cache row."""
    for v in ("v5", "v6", "v7"):
        c = block.check(v, L=639)
        written = {0: 0, 1: 0}
        for rec in c.trace.records:
            for a in rec.accesses:
                if a.mode == "w" and not a.on_chip:
                    written[rec.pid] += a.nbytes
        assert written == {0: 1024 * 2 + 128 * 2, 1: 1024 * 2 + 128 * 2}, (v, written)


def test_fused_block_later_rungs_are_faster_at_the_last_row():
    """Estimates (trn2, L = 639): each of v4-v7 beats the one before; v7 is within 1.7x of its HBM floor."""
    lat = {}
    for v in ("v3", "v4", "v5", "v6", "v7"):
        p = block.profile(v, trace_path=False, L=639)
        lat[v] = (p.latency_us, p.roofline_us)
    us = [lat[v][0] for v in ("v3", "v4", "v5", "v6", "v7")]
    assert all(a > b for a, b in zip(us, us[1:])) and lat["v7"][0] < 1.7 * lat["v7"][1], lat


def test_prefill_v5_bit_identical_to_v4_and_v6_not():
    """v5 plans the DMAs and moves passes between engines (same rounding points): v4's bits, on one core as
    on two and with a KV head shared by the cores; v6 folds the scale into the eviction (one rounding
    fewer): within the ratio, not bit-identical, and faster (estimate, T = 512)."""
    for shape in (dict(T=129), dict(seed=4, T=20, n_q=6, n_kv=3, d=64, cap=32)):
        c4, c5 = prefill.check("v4", **shape), prefill.check("v5", **shape)
        assert np.array_equal(c4.outputs[0], c5.outputs[0])
    one = prefill.check("v5", lnc=1, seed=4, T=20, n_q=6, n_kv=3, d=64, cap=32)
    assert np.array_equal(one.outputs[0], c5.outputs[0])
    s = _shares(prefill, ("v5", "v6"), T=192)
    assert s["v5"][1] > 0.99 and s["v6"][1] < 0.9
    lat = {v: prefill.profile(v, trace_path=False, T=512).latency_us for v in ("v4", "v5", "v6")}
    assert lat["v6"] < lat["v5"] < 0.8 * lat["v4"], lat


# ---- the prefill block: q|k|v projection + prefill attention + o projection -------------------------------
bprefill = ops.get("attention_block_prefill")
BPREFILL_VERSIONS = [v.name for v in bprefill.versions]


def _bprefill_macs(T, H=2048, n_q=8, n_kv=1, d=128):
    """QKV T·H·(n_q + 2·n_kv)·d + the attention's tiled (query, key) pairs, 2·n_q·d each + o T·n_q·d·H."""
    pairs = sum(min(128, T - q0) * min(T, q0 + 128) for q0 in range(0, T, 128))
    return T * H * (n_q + 2 * n_kv) * d + 2 * n_q * d * pairs + T * n_q * d * H


def _hbm_bytes(trace):
    """Bytes every DMA of a trace read from or wrote to HBM, both cores."""
    return sum(a.nbytes for rec in trace for a in rec.accesses if not a.on_chip)


@pytest.mark.parametrize("version", BPREFILL_VERSIONS)
@pytest.mark.parametrize("T", (20, 200))
def test_prefill_block_every_version(version, T):
    """x [T, 2048] through q|k|v (1280 columns), causal attention over T and o (1024 -> 2048): the 3-way
    ratio at bf16, both caches' rows 0..T-1 equal to the reference's (the rest untouched), MACs = QKV +
    attention pairs + o. T = 20: one short token tile; T = 200: a full tile and a short one."""
    checked, cache = ops.check_with_cache(bprefill, version, T=T)
    assert checked.macs == _bprefill_macs(T) and len(cache) == 4 and all(cache)


@pytest.mark.parametrize("version", BPREFILL_VERSIONS)
def test_prefill_block_two_kv_heads_small_width(version):
    """H = 256, 4 query heads of 64 over 2 KV heads: v2's cores attend one KV head each, k and v of both
    KV heads are swapped, and a contraction tile of the o projection spans two heads."""
    checked, _ = ops.check_with_cache(bprefill, version, seed=4, T=20, H=256, n_q=4, n_kv=2, d=64, cap=32)
    assert checked.macs == _bprefill_macs(20, H=256, n_q=4, n_kv=2, d=64)


def test_prefill_block_versions_same_bits_and_the_round_trips_they_remove():
    """v0-v2 run the same matmuls, norms and softmax passes on the same values: the same bits (v2 on two
    cores, its o contraction in head order). HBM traffic: v1 saves v0's q/k/v round trip (written and read
    back, 2·T·1280·2 bytes; v0 also copies V HBM→HBM); v2 saves the attention output's (2·T·1024·2) and
    instead reads x, cos/sin and the norm weights on both cores."""
    T = 200
    c = {v: bprefill.check(v, T=T) for v in BPREFILL_VERSIONS}
    assert all(np.array_equal(c["v0"].outputs[0], c[v].outputs[0]) for v in ("v1", "v2"))
    hbm = {v: _hbm_bytes(c[v].trace) for v in c}
    assert hbm["v0"] - hbm["v1"] >= 2 * T * 1280 * 2, hbm
    second_core = T * 2048 * 2 + 2 * T * 128 * 2 + 2 * 128 * 128 * 2  # x; cos, sin; two [128, d] broadcasts
    assert hbm["v2"] == hbm["v1"] - 2 * T * 1024 * 2 + second_core, hbm


def test_prefill_block_fusion_is_faster_and_order_preserving_at_t512():
    """Estimates (trn2, T = 512): each rung beats the one before; v2 runs both cores and gives v1's bits.
    Against the reference's NumPy order the projections' fp32 sums differ (PE tiles): not every element
    is bit-identical, all within the ratio."""
    lat, out = {}, {}
    for v in BPREFILL_VERSIONS:
        c = bprefill.check(v, T=512)
        lat[v] = bprefill.profile(v, trace_path=False, trace=c.trace, T=512).latency_us
        out[v] = c.outputs[0]
    assert lat["v2"] < lat["v1"] < lat["v0"], lat
    assert np.array_equal(out["v2"], out["v1"])
    same = float((out["v2"].astype(np.float32) == c.expected[0]).mean())
    assert 0.5 < same < 1.0, same
    assert bprefill.final.name == "v2" and bprefill.final.lnc == 2


# ---- prefill v7 / v8 / v9: the softmax straight from PSUM, the prologue pipelined, the engines rebalanced --
@pytest.mark.parametrize("version", ("v7", "v8", "v9"))
@pytest.mark.parametrize("T", (20, 200, 512))
def test_prefill_v7_v8_match_the_reference_with_the_caches(version, T):
    """The masked max from PSUM (range_select), one exp pass from PSUM and the deferred normalisation: the
    ratio, both caches (checked by check_with_cache), MACs = the tiled count (the mask adds no matmul)."""
    checked, cache = ops.check_with_cache(prefill, version, T=T)
    pairs = sum(min(128, T - q0) * min(T, q0 + 128) for q0 in range(0, T, 128))
    assert checked.macs == 2 * 8 * 128 * pairs and len(cache) == 4 and all(cache)


def test_prefill_v7_v8_faster_variants_one_core_as_two():
    """v7 and v8 run the same per-head instructions (v8 only reorders the prologue and moves its products to
    GpSimd: the same roundings): the same bits, on one core as on two, with a KV head shared by the cores.
    Not the reference's rounding points (unnormalised bf16 exps, one division at the end): not
    bit-identical; faster than v6 (estimates, T = 512, trn2 and trn3)."""
    small = dict(seed=4, T=20, n_q=6, n_kv=3, d=64, cap=32)
    c7, c8 = prefill.check("v7", **small), prefill.check("v8", **small)
    one = prefill.check("v8", lnc=1, **small)
    assert np.array_equal(c7.outputs[0], c8.outputs[0]) and np.array_equal(one.outputs[0], c8.outputs[0])
    s = _shares(prefill, ("v7", "v8"), T=200)
    assert np.array_equal(s["v7"][0], s["v8"][0]) and s["v8"][1] < 0.9
    for target in ("trn2", "trn3"):
        lat = {
            v: prefill.profile(v, target=target, trace_path=False, T=512).latency_us
            for v in ("v6", "v7", "v8")
        }
        assert lat["v8"] < lat["v7"] < lat["v6"], (target, lat)


def test_prefill_v9_rebalanced_v8_bits_and_faster():
    """v9 runs v8's instructions on the same values (eᵀ evictions of odd heads on DVE, neg on ACT, eᵀ one
    item ahead of p·V): v8's bits, on one core as on two; the busiest engine per core less busy than v8's
    and the latency lower (estimates, T = 512, trn2 and trn3)."""
    small = dict(seed=4, T=20, n_q=6, n_kv=3, d=64, cap=32)
    c8, c9 = prefill.check("v8", **small), prefill.check("v9", **small)
    one = prefill.check("v9", lnc=1, **small)
    assert np.array_equal(c8.outputs[0], c9.outputs[0]) and np.array_equal(one.outputs[0], c9.outputs[0])
    s = _shares(prefill, ("v8", "v9"), T=200)
    assert np.array_equal(s["v8"][0], s["v9"][0])
    for target in ("trn2", "trn3"):
        p = {v: prefill.profile(v, target=target, trace_path=False, T=512) for v in ("v8", "v9")}
        busiest = {v: max(_per_core_busy(p[v].schedule).values()) for v in p}
        assert busiest["v9"] < busiest["v8"], (target, busiest)
        assert p["v9"].latency_us < p["v8"].latency_us, (target, p["v9"].latency_us, p["v8"].latency_us)


def _per_core_busy(sched):
    """(core, engine) -> busy ns of the compute engines in an estimated schedule."""
    busy = {}
    for i, eng in enumerate(sched.engine):
        if eng in ("pe", "act", "dve", "pool"):
            key = (int(sched.pid[i]), eng)
            busy[key] = busy.get(key, 0.0) + float(sched.end[i] - sched.busy_start[i])
    return busy
