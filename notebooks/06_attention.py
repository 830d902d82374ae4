# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python (nki-moe)
#     language: python
#     name: nki-moe
# ---

# %% [markdown]
# # 06 · Attend over the KV cache: decode, the fused decode block, causal prefill
# One decode token on one TP rank (TP = 4: 8 query heads, 1 KV head of 128): q/k RMSNorm, RoPE at position
# L, the append of k and v to the HBM cache, GQA over L + 1 positions; then the whole block with the q|k|v
# and o projections fused around it; then the prefill of T prompt tokens (causal, cache rows 0..T-1).
#
# ## What & why
# - Napkin math (printed below from the cost functions): attention alone at L = 639 is 2·8·128·640 = 1.3 M
#   MACs against 0.33 MB of K/V: under 1 µs of one core's HBM time. A kernel this small is bound by its
#   dependent chain (load → norm → transpose → q·kᵀ → softmax → p·V → store), each DMA with ~2 µs of fixed
#   cost, not by bytes or FLOPs.
# - The fused block adds 9.4 MB of weights (w_qkv [2048, 1280], w_o [1024, 2048]): its floor is the weight
#   stream, ~13.5 µs on the two cores of one LNC=2 rank (Trn2), so splitting the weights over both cores is
#   what matters there.
# - Prefill at T = 512 (printed below): 0.34 G MACs per rank — 8.5 µs of one Trn2 core's PE — but every
#   score also passes through the PSUM eviction, the scale, the mask, the max, exp and the normalisation:
#   the vector engines, not the PE, set the pace.
# - Checks: the output's 3-way error ratio at bf16; both caches after the kernel: row L equal to the
#   reference's new v bit for bit and its k (after norm + RoPE) within bf16 tolerance (the RMS's fp32 sum
#   order is not NumPy's: a rare one-ulp flip), every other row untouched bit for bit — rows past L hold stale
#   values 8× larger, so reading them fails; MACs = analytic. All times are cost-model ESTIMATES.
# - Terms (GQA, RoPE, LNC, PE, DVE, ACT, roofline …): [docs/glossary.md](../docs/glossary.md).

# %% tags=["parameters"]
SMOKE = False
TARGET = "trn2"
SEED = 0

# %% [markdown]
# ## Setup
# Inputs, reference, cost and versions come from the registry: `attention_decode` (q, k, v in: the
# projections' outputs) and `attention_block_decode` (x in, y out). `ops.check_with_cache` runs `op.check`
# and then compares both caches with the reference's (the rows written, and every other row untouched).

# %%
import inspect

import numpy as np

from nki_moe import budget, ops, paths, results
from nki_moe.ladder import busiest_engine
from nki_moe.perf.published import QWEN3_LAYER_MEASURED
from nki_moe.reference import gqa_attention

paths.start_run("06_attention", smoke=SMOKE, target=TARGET)  # decides where outputs go
op = ops.get("attention_decode").on(TARGET, SEED)
block = ops.get("attention_block_decode").on(TARGET, SEED)
prefill = ops.get("attention_prefill").on(TARGET, SEED)
LENGTHS = (20, 128) if SMOKE else (20, 128, 512, 639)
SHOW_L = LENGTHS[-1]
PREFILL_T = (14, 54, 128) if SMOKE else (14, 20, 54, 192, 512, 640)  # the competition's prompts and 640
SHOW_T = PREFILL_T[-2]
for name, c in (("attention", op.cost(L=SHOW_L)), ("fused block", block.cost(L=SHOW_L)),
                ("prefill", prefill.cost(T=SHOW_T))):
    print(f"{name} at L={SHOW_L} / T={SHOW_T}: {c.macs / 1e6:.2f} M MACs, {c.bytes / 1e6:.2f} MB "
          f"(weights {c.weight_bytes / 1e6:.2f} MB)")

# %% [markdown]
# ## Reference
# `nki_moe.ops.attention_decode` (the kernels' signature) composes `qk_norm`, `apply_rope` and
# `gqa_attention` of `nki_moe.reference` (HF's eager rounding points); it returns the output and the two rows
# the kernels append.

# %%
print(inspect.getsource(op.reference))
print(inspect.getsource(gqa_attention))

# %% [markdown]
# ## v0 · one core, straightforward
# Norm + RoPE with heads on partitions, append, then per KV head: K loaded and PE-transposed per 128
# positions, scores [g, S] in SBUF, fp32 softmax, p·V accumulated over position tiles in PSUM.

# %%
c0, p0 = op.step("v0", L=SHOW_L)
print(ops.check_with_cache(op, "v0", L=SHOW_L)[1])
print({e: f"{100 * s:.0f} %" for e, s in p0.critical_share.items()})
assert p0.critical_share["dma"] + p0.critical_share["wait"] > 0.5 and p0.pct_of_roofline < 0.1

# %% [markdown]
# Where the time goes (asserted): DMA and waiting are over half of v0's critical path and it reaches < 10 %
# of its floor. The loads are issued where they are needed, so each one's fixed cost is in series with the
# compute before it, and the K/V rows are read only after the append's write to HBM lands.
#
# ## v1 · flash-decoding: positions split across the two cores
# Each core keeps (max, sum, unnormalised p·V) of its half of the positions; one `sendrecv` swaps the
# packets and each core combines them and stores half of the head dim.

# %%
c1, p1 = op.step("v1", L=SHOW_L)
_ = ops.check_with_cache(op, "v1", L=SHOW_L)

# %% [markdown]
# ## v2 · one core, every load first
# q, k, the broadcasts and cache rows 0..L-1 are requested before any compute; the new k (after norm +
# RoPE) and v rows are copied into the last K/V tiles on chip while the append runs in parallel.

# %%
c2, p2 = op.step("v2", L=SHOW_L)
_ = ops.check_with_cache(op, "v2", L=SHOW_L)

# %% [markdown]
# ### Two KV heads, half-width heads, the first token
# n_q = 4, n_kv = 2 (g = 2), d = 64, a 16-row cache: L = 0 (the token attends only itself; v1's second core
# has no position) and L = 15 (the cache's last row).

# %%
for v in op.versions:
    for L in (0, 15):
        print(ops.check_with_cache(op, v, seed=3, L=L, n_q=4, n_kv=2, d=64, cap=16)[0].message)

# %% [markdown]
# ## Sweep over L, every version, trn2 and trn3 (estimated)

# %%
sweep = op.sweep(L=LENGTHS)
print(sweep.table(TARGET))
op.save_figures(sweep, L=(LENGTHS[0], SHOW_L))
lat = {tg: sweep.latency(tg) for tg in ("trn2", "trn3")}
assert all(lat[tg]["v2", L] < lat[tg]["v0", L] < lat[tg]["v1", L] for tg in lat for L in LENGTHS)

# %% [markdown]
# Asserted at every L on both chips: v2 < v0 < v1. Flash-decoding loses: at these lengths the work it splits
# is a fraction of a µs per core, while it adds a `sendrecv` (a DMA's fixed cost), the combine, and the
# q/k norm + RoPE on both cores. It would pay at long contexts or with many KV heads per core, not for one KV
# head and L ≤ 639. v2's gain is the loads' fixed costs overlapping instead of adding up.
#
# ## The fused block: q|k|v projection + attention + o projection in one kernel
# ### block v0 · one core
# Weight-stationary GEMVs give q|k|v as [d, head] columns (transposed to heads on partitions for the norms),
# attention as in v2, and the o projection stores yᵀ[p, c] = y[p·16 + c] straight from PSUM.

# %%
b0, q0 = block.step("v0", L=SHOW_L)
_ = ops.check_with_cache(block, "v0", L=SHOW_L)
assert q0.critical_share["dma"] > 0.4  # the 9.4 MB weight stream on one core's queues

# %% [markdown]
# ### block v1 · both weight streams split across the two cores
# q|k|v by contraction rows (each core reads half of w_qkv; the [128, 10] fp32 partial sums are swapped and
# added — the same sum on both cores), attention by query heads (4 per core), o by heads (each core reads
# its heads' rows of w_o; the [128, 16] partials are swapped and added; each core stores half of y).

# %%
b1, q1 = block.step("v1", L=SHOW_L)
_ = ops.check_with_cache(block, "v1", L=SHOW_L)

# %% [markdown]
# ### block v2 · weights streamed in ~8 KiB-per-partition chunks
# v1 waits for the whole 2.5 MB half of w_qkv before its first matmul; v2 issues it in three chunks and the
# GEMV starts on the first.

# %%
b2, q2 = block.step("v2", L=SHOW_L)
_ = ops.check_with_cache(block, "v2", L=SHOW_L)

# %% [markdown]
# ### block v3 · the waits left on v2's critical path removed
# v2's schedule showed the q|k|v exchange queued behind w_o's loads and an SBUF→SBUF DMA of the new key on
# the critical path. v3 builds Kᵀ of rows 0..L-1 on the PE while the weights stream, places the new key's
# column with a PE transpose, and requests w_o after the exchange.

# %%
b3, q3 = block.step("v3", L=SHOW_L)
_ = ops.check_with_cache(block, "v3", L=SHOW_L)
for v in block.versions:
    print(ops.check_with_cache(block, v, seed=2, L=15, H=256, n_q=4, n_kv=2, d=64, cap=16)[0].message)

# %% [markdown]
# ## Sweep of the fused block over L (estimated)

# %%
bsweep = block.sweep(L=LENGTHS)
print(bsweep.table(TARGET))
block.save_figures(bsweep, L=(LENGTHS[0], SHOW_L))
blat = {tg: bsweep.latency(tg) for tg in ("trn2", "trn3")}
assert all(blat[tg]["v3", L] < blat[tg]["v1", L] < blat[tg]["v0", L] for tg in blat for L in LENGTHS)

# %% [markdown]
# ## Bit-identical to the reference's accumulation order?
# The competition needs token-identical output (its logit rule [TORCH-NEURONX], [MOE-REPO]), so each
# version's share of output elements equal to the bf16 reference bit for bit is printed (L = SHOW_L).
# Asserted: the order-preserving attention versions (v0, v2: the reference's rounding points, normalised
# before p·V) are bit-identical; flash-decoding (v1) is not (its per-core rescaling reorders the sums). The
# blocks' projections accumulate over 128-row PE tiles (and v1-v3 add two per-core partials), not NumPy's
# order: close, not identical.

# %%
same = lambda c: float((c.outputs[0].astype(np.float32) == c.expected[0]).mean())  # noqa: E731
bits = {f"attention_{c.version}": same(c) for c in (c0, c1, c2)}
bits |= {f"block_{c.version}": same(c) for c in (b0, b1, b2, b3)}
print({k: f"{100 * x:.1f} %" for k, x in bits.items()})
assert bits["attention_v0"] == bits["attention_v2"] == 1.0 and bits["attention_v1"] < 0.9

# %% [markdown]
# ## Fused or separate launches, and the published per-layer attention
# The same work as separate launches: the q, k, v projections and o_proj (notebook 02's `matmul_v6`,
# estimated here at this rank's shapes), plus the best attention version. Published per-layer attention
# figures (measured by third parties, full attention blocks; `nki_moe.perf.published`) are printed beside.

# %%
mm = ops.get("matmul").on(TARGET, SEED)
mm_shapes = {"q_proj": dict(T=1, K=2048, N=1024), "k_proj": dict(T=1, K=2048, N=128),
             "v_proj": dict(T=1, K=2048, N=128), "o_proj": dict(T=1, K=1024, N=2048)}
mm_est = {(name, e.target): e.us for name, s in mm_shapes.items()
          for e in budget.estimate(mm, [s], versions=("v6",))}
published = {m.hardware: m for m in QWEN3_LAYER_MEASURED if m.part == "attention"}
separate, fused = {}, {}
for tg in ("trn2", "trn3"):
    separate[tg] = sum(mm_est[n, tg] for n in mm_shapes) + min(lat[tg][v.name, SHOW_L] for v in op.versions)
    fused[tg] = blat[tg]["v3", SHOW_L]
    print(f"{tg} L={SHOW_L}: separate launches {separate[tg]:.1f} µs, fused block v3 {fused[tg]:.1f} µs "
          f"(estimates); published: {published[tg].label} {published[tg].us} µs ({published[tg].source})")
assert all(fused[tg] < separate[tg] and fused[tg] < published[tg].us for tg in fused)

# %% [markdown]
# ## Prefill (context encoding): T tokens from position 0, causal
# Norm + RoPE per 128-token tile with all heads in one instruction per step, K/V written to cache rows
# 0..T-1, Qᵀ and Kᵀ by PE transposes. Per head and 128-query tile only keys 0 … q0 + tq − 1 are computed in
# every version (key tiles past the diagonal skipped: the cost function counts exactly these MACs, 20 % more
# than the ideal T(T+1)/2 pairs at T = 640); the diagonal tile is masked with `affine_select` (−inf).
# ### prefill v0 · scores materialised in HBM
# Pass 1 writes each query tile's bf16 scores to an HBM scratch; pass 2 reads them back for the softmax.

# %%
pc0, pp0 = prefill.step("v0", T=SHOW_T)
_ = ops.check_with_cache(prefill, "v0", T=SHOW_T)

# %% [markdown]
# ### prefill v1 · the scores stay in SBUF
# Each query tile's [tq, q0 + tq] score block goes from PSUM to SBUF, softmax, p·V: no scratch, no 2nd pass.

# %%
pc1, pp1 = prefill.step("v1", T=SHOW_T)
_ = ops.check_with_cache(prefill, "v1", T=SHOW_T)

# %% [markdown]
# ### prefill v2 · flash attention: online softmax over 128 queries × 512 keys
# Running max and sum per query row, the unnormalised p·V rescaled by exp(m_old − m_new) per block; only the
# block meeting the diagonal is masked.

# %%
pc2, pp2 = prefill.step("v2", T=SHOW_T)
_ = ops.check_with_cache(prefill, "v2", T=SHOW_T)
for v in prefill.versions:
    print(ops.check_with_cache(prefill, v, seed=4, T=20, n_q=4, n_kv=2, d=64, cap=32)[0].message)

# %% [markdown]
# ### prefill v3 · heads interleaved stage by stage, PSUM evictions on ACT
# v1's chain per (head, query tile) — scores, scale, mask, max, exp, normalise, p·V — leaves each engine
# waiting on the previous one. v3 runs each stage for all heads of a query tile before the next stage, so
# one head's max overlaps another's exp, and moves the PSUM evictions to ACT (same roundings, v1's bits).

# %%
pc3, pp3 = prefill.step("v3", T=SHOW_T)
_ = ops.check_with_cache(prefill, "v3", T=SHOW_T)
print({e: f"{pp1.busy_us[e]:.1f} → {pp3.busy_us[e]:.1f} µs" for e in ("pe", "act", "dve", "pool")})

# %% [markdown]
# ### prefill v4 · LNC=2: the query heads split 4/4 between the two cores
# v3 on each core's half of the query heads (norm + RoPE, scores, softmax, p·V, its columns of out). Heads,
# not query blocks: under the causal mask every head costs the same, while the core holding the last query
# block would have the longest rows; no exchange is needed. Both cores norm the one KV head and load V (1/8
# of the q work); core 0 writes the K cache rows and core 1 the V rows, so each row is written once.

# %%
pc4, pp4 = prefill.step("v4", T=SHOW_T)
_ = ops.check_with_cache(prefill, "v4", T=SHOW_T)
print({e: f"{pp3.busy_us[e]:.1f} → {pp4.busy_us[e]:.1f} µs (both cores)" for e in ("pe", "act", "dve")})
print(f"v3 {pp3.latency_us:.1f} µs → v4 {pp4.latency_us:.1f} µs ({pp3.latency_us / pp4.latency_us:.2f}×)")
assert np.array_equal(pc4.outputs[0], pc3.outputs[0])  # the same instructions per head: v3's bits

# %% [markdown]
# ### Prefill sweep over T (estimated)

# %%
psweep = prefill.sweep(T=PREFILL_T)
print(psweep.table(TARGET))
prefill.save_figures(psweep, T=(PREFILL_T[0], SHOW_T))
plat = {tg: psweep.latency(tg) for tg in ("trn2", "trn3")}
assert all(plat[tg]["v4", T] < plat[tg]["v3", T] < plat[tg]["v1", T] < plat[tg]["v0", T]
           for tg in plat for T in PREFILL_T)
lnc2_gain = {(tg, T): plat[tg]["v3", T] / plat[tg]["v4", T] for tg in plat for T in PREFILL_T}
assert all(x > (1.5 if T >= 512 else 1.2) for (_, T), x in lnc2_gain.items())
assert all(busiest_engine(p, compute_only=True) == "dve" for p in (pp0, pp1, pp2, pp3, pp4))
print({f"prefill_{c.version}": f"{100 * same(c):.1f} % bit-identical" for c in (pc0, pc1, pc2, pc3, pc4)})
assert same(pc4) == same(pc3) == same(pc1) > 0.95 > 0.9 > same(pc2)

# %% [markdown]
# Asserted at every T on both chips: v4 < v3 < v1 < v0 (the scores in SBUF beat the HBM round trip;
# overlapping the heads' stages beats the per-head chain; two cores beat one — by over 1.2× at every T and
# over 1.5× at T ≥ 512: at the short prompts the fixed DMA costs do not halve); every version's busiest
# compute engine is DVE (the scale, the max and the normalisation each pass over every score). The flash
# version (v2) adds per-block rescaling work on DVE and does not pay at T ≤ 640, where a whole score row
# block fits in SBUF; it is not bit-identical, while v1 and v3 keep the reference's rounding points and give
# the same bits (> 95 % bit-identical to the reference; the rest trace back to a one-ulp difference of a
# normed q or k: the RMS's fp32 sum order); v4 runs v3's instructions per head and gives v3's bits.

# %% [markdown]
# ## Takeaways
# Printed from the sweeps (estimates). Asserted: the attention core stays below 10 % of its (sub-µs) floor at
# every L — latency-bound, its next step is fewer dependent instructions, not bandwidth; the fused block v3 is
# the fastest block at every L and beats the separate launches and the published per-layer figures above,
# but sits at 25–50 % of its HBM floor (the 1.5× goal is not met: after its weights land, a chain of two
# exchanges, norms, softmax over 8 of 128 DVE lanes and the store remains); prefill v4 (LNC=2, the heads
# split over both cores) stays below 20 % of its two cores' PE floor (the T = 512 goal of 1.5× is not met:
# DVE passes over every score dominate; next: the scale folded into the eviction, heads batched per DVE
# instruction); both caches pass in every check (unwritten rows bit-exact).

# %%
print("\n".join(sweep.summary_lines("v2", (LENGTHS[0], SHOW_L), "attention_decode_v2 (1 core)")))
print("\n".join(bsweep.summary_lines("v3", (LENGTHS[0], SHOW_L), "attention_block_v3 (LNC=2)")))
assert all(r["pct_roofline"] < 10 for r in sweep.rows)
final = bsweep.final("v3", LENGTHS)
assert all(25 < v["pct_roofline"] < 50 for v in final.values())  # 2-4x its floor: not the 1.5x goal
ratio_floor = {k: v["latency_us"] / v["roofline_us"] for k, v in final.items()}
print({k: f"{x:.2f}× its floor" for k, x in ratio_floor.items()})
print("\n".join(psweep.summary_lines("v4", (PREFILL_T[0], SHOW_T), "attention_prefill_v4 (LNC=2)")))
assert all(r["pct_roofline"] < 20 for r in psweep.rows)  # DVE-bound, far from the PE floor

# %% [markdown]
# ## This notebook's line of the per-token budget
# `nki_moe.budget` gives a decode step's attention launch (48 per token) the best `attention_decode`
# estimate at its shape: L = 639, 8/1 heads per rank at TP = 4 × LNC = 2, 32/4 heads on one LNC=2 launch (the
# kernels take any head counts; estimated here); a prefill of SHOW_T tokens the best `attention_prefill`.
# The q/k norm and RoPE lines stay floors although these kernels include them (sub-µs each in decode); the
# fused block has no line of its own yet (it would replace the projections' lines too): printed beside.
# Estimates, not measurements.

# %%
est = budget.estimates_from_sweep(op, sweep if 639 in LENGTHS else op.sweep(L=(639,)))  # the step's L
est += budget.estimates_from_sweep(op, op.sweep(L=(639,), n_q=32, n_kv=4), n_q=32, n_kv=4)
est += budget.estimates_from_sweep(prefill, psweep)
est += budget.estimates_from_sweep(prefill, prefill.sweep(T=(SHOW_T,), n_q=32, n_kv=4), n_q=32, n_kv=4)
lines = {f"decode_{dep.key}": budget.decode_budget(est, TARGET, dep).only("attention_decode")
         for dep in budget.DEPLOYMENTS}
lines |= {f"prefill{SHOW_T}_{dep.key}": budget.prefill_budget(est, SHOW_T, TARGET, dep)
          .only("attention_prefill") for dep in budget.DEPLOYMENTS}
print(lines["decode_tp4_lnc2"].table())
print("\n".join(b.summary() for b in lines.values()))
assert all(not b.missing and all(ln.us_each >= ln.floor_us_each for ln in b.lines) for b in lines.values())
if SHOW_L == 639:
    print(f"fused block v3, 48 launches: {48 * fused[TARGET] / 1e3:.2f} ms per token per rank (est.) against "
          f"{48 * separate[TARGET] / 1e3:.2f} ms as separate launches")

# %%
prefill_final = {"final_version": "v4", "lnc": 2, "final": psweep.final("v4", (PREFILL_T[0], SHOW_T))}
results.record("06_attention", {"estimated_by": "nki_moe cost model", "final_version": "v2", "lnc": 1,
                                "final": sweep.final("v2", (LENGTHS[0], SHOW_L)), "bit_identical_share": bits,
                                "ops": {"attention_block_decode": {"final_version": "v3", "lnc": 2,
                                                                   "final": final, "x_floor": ratio_floor},
                                        "attention_prefill": prefill_final},
                                "separate_launches_us": separate, "fused_block_us": fused,
                                "budget": budget.results_entry(est, lines)})
