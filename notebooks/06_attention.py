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
#   stream, ~13.5 µs on the two cores of one LNC=2 rank (Trn2), so splitting the weights over both cores,
#   streaming them at full DMA efficiency and keeping the fixed costs (exchanges, the store) off the tail is
#   what matters there (v4-v8; v8 also does the layer's input RMSNorm).
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

import nki_moe.sim as sim
from nki_moe import budget, ops, paths, results
from nki_moe.figures import save_figure
from nki_moe.kernels import attention as attn_kernels
from nki_moe.kernels import rmsnorm as norm_kernels
from nki_moe.ladder import busiest_engine
from nki_moe.perf.hardware import get_hardware
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


def big_dmas(prof, core=0):
    """(bytes, bytes per descriptor, first byte µs, last byte µs) of a profile's HBM DMAs of >= 20 KB."""
    s, out = prof.schedule, []
    for i in range(len(prof.trace.records)):
        if s.engine[i] == "dma" and s.pid[i] == core and s.hbm_bytes[i] >= 20_000:
            out.append((int(s.dma_bytes[i]), int(s.rules[i].split(" B/desc")[0].split(", ")[-1]),
                        round(float(s.busy_start[i]) / 1e3, 2), round(float(s.end[i]) / 1e3, 2)))
    return out


def exchanges(prof, core=0):
    """(issue µs, done µs) of each sendrecv of one core."""
    s = prof.schedule
    return [(round(float(s.start[i]) / 1e3, 2), round(float(s.end[i]) / 1e3, 2))
            for i, rec in enumerate(prof.trace.records) if rec.opcode == "sendrecv" and s.pid[i] == core]


def tail_us(prof):
    """Latency after the last byte of the big (weight and cache) loads: the work HBM time cannot hide."""
    return prof.latency_us - max(end for *_, end in big_dmas(prof))


print("v3 loads (bytes, B/descriptor, first byte µs, last byte µs):", big_dmas(q3)[:4], "…")
print("v3 exchanges (issue, done µs):", exchanges(q3), f"after the last weight byte {tail_us(q3):.1f} µs")

# %% [markdown]
# Where v3's time goes (printed above; asserted below against v4): w_qkv streams at one 2.5 KiB row per
# partition per descriptor and the cache rows at 256 B (each DMA's efficiency b/(b + 512) in the cost model:
# 0.83 and 0.33), the PE — in order — builds Kᵀ from the cache rows before the GEMV, so the GEMV waits for
# the last cache row behind all of w_qkv, and the o projection reads its stationaries every 16th column
# (32 B: a strided read, 2× slower). After the last weight byte ~13 µs remain: the GEMV, an exchange, the
# norms, the softmax on 4 of 128 lanes, the o GEMV, a second exchange and the store.
#
# ### block v4 · the DMA plan
# w_qkv with nb = 8 consecutive rows on each partition (x loaded to match): 7.5 KiB per descriptor; the
# cache rows 5 to a partition (1.25 KiB); loads in the order they are consumed, the GEMV before the Kᵀ
# transposes on the PE; w_o requested right after the first exchange (the exchange's transfer is booked on
# the DMA engines first, the weights fill around it); yᵀ[p, a·8 + b] = y[a·1024 + p·8 + b], so the o
# stationaries read every 8th column (16 B: no penalty) and each core stores one contiguous half of y.

# %%
b4, q4 = block.step("v4", L=SHOW_L)
_ = ops.check_with_cache(block, "v4", L=SHOW_L)
print("v4 loads:", big_dmas(q4)[:4], "…")
print("v4 exchanges:", exchanges(q4), f"tail after the last weight byte {tail_us(q4):.1f} µs")
desc = {v: min(b for n, b, *_ in big_dmas(p) if n > 200_000) for v, p in (("v3", q3), ("v4", q4))}
kv_desc = {v: min(b for n, b, *_ in big_dmas(p) if n <= 200_000) for v, p in (("v3", q3), ("v4", q4))}
print(f"smallest weight descriptor {desc}, cache-row descriptor {kv_desc} (bytes)")
assert desc["v4"] > desc["v3"] and kv_desc["v4"] > kv_desc["v3"] and q4.latency_us < q3.latency_us

# %% [markdown]
# ### block v5 · w_o split by output columns: the attention outputs swapped instead of partial sums
# v4 still ends with a chain after its last weight byte: the o GEMV over its heads, a sendrecv of the
# [128, 16] partial sums (~2 µs of fixed cost), the add and the store. v5 splits w_o by columns (2 KiB
# descriptors, this core's heads' rows first): each core attends its 4 heads, multiplies them with its
# rows while the cores swap their [d, 4] attention outputs, adds the peer's heads and stores its half of
# y from PSUM. The new v row enters p·V as one K = 1 matmul (v4 DMA-copied it into the V tile, behind w_o).

# %%
b5, q5 = block.step("v5", L=SHOW_L)
_ = ops.check_with_cache(block, "v5", L=SHOW_L)
print("v5 exchanges:", exchanges(q5), f"tail after the last weight byte {tail_us(q5):.1f} µs")
assert tail_us(q5) < tail_us(q4) and q5.latency_us < q4.latency_us

# %% [markdown]
# ### block v6 · the chain between the exchanges: 128-lane softmax, q and k normed in one pass
# From the first exchange's end to the second's issue v5 runs ~8 µs of dependent instructions: two norm
# chains and a softmax over [4, 640] scores (each DVE/ACT pass 640 elements on 4 partitions). v6 takes
# the scores out of the PE transposed — positions on all 128 partitions, 5 per partition — so every pass
# touches 5 elements; the max and the sum cross the partitions by PE transposes and a free-dim reduce,
# p·V needs no transposes of p, and the core's q heads and the KV head are normed by one chain.

# %%
b6, q6 = block.step("v6", L=SHOW_L)
_ = ops.check_with_cache(block, "v6", L=SHOW_L)
chain = {v: exchanges(p)[1][0] - exchanges(p)[0][1] for v, p in (("v5", q5), ("v6", q6))}
print({v: f"{x:.2f} µs between the exchanges" for v, x in chain.items()})
assert chain["v6"] < chain["v5"] and q6.latency_us < q5.latency_us
assert np.array_equal(b6.outputs[0], b5.outputs[0])  # the same values: the lanes change no rounding

# %% [markdown]
# ### block v7 · fewer dependent instructions between the exchanges
# Each dependent step costs ~60 ns of latency on top of its own time. v7: the last w_qkv chunk is one row
# per partition (the GEMV left after the last byte shrinks), rstd = rsqrt(Σx²/d + eps) in one ACT
# instruction, the max broadcast in bf16 and the exp's bias read from PSUM, one division for all heads
# (a step-0 access pattern broadcasts the sums over the slots), the new v row placed while ACT runs the
# exps, and the last w_o chunk requested after the second exchange (whose transfer then goes first).

# %%
b7, q7 = block.step("v7", L=SHOW_L)
_ = ops.check_with_cache(block, "v7", L=SHOW_L)
chain["v7"] = exchanges(q7)[1][0] - exchanges(q7)[0][1]
print({v: f"{x:.2f} µs" for v, x in chain.items()}, f"v7 {q7.latency_us:.2f} µs, floor {q7.roofline_us:.2f}")
assert chain["v7"] < chain["v6"] and q7.latency_us < q6.latency_us
assert np.array_equal(b7.outputs[0], b6.outputs[0])
for v in block.versions:
    print(ops.check_with_cache(block, v, seed=2, L=15, H=256, n_q=4, n_kv=2, d=64, cap=16)[0].message)

# %% [markdown]
# ## Sweep of the fused block over L (estimated)

# %%
bsweep = block.sweep(L=LENGTHS)
print(bsweep.table(TARGET))
block.save_figures(bsweep, L=(LENGTHS[0], SHOW_L))
blat = {tg: bsweep.latency(tg) for tg in ("trn2", "trn3")}
ladder = ("v7", "v6", "v5", "v4", "v3", "v1", "v0")
assert all(all(blat[tg][a, L] < blat[tg][b, L] for a, b in zip(ladder, ladder[1:]))
           for tg in blat for L in LENGTHS)

# %% [markdown]
# ## Bit-identical to the reference's accumulation order?
# The competition needs token-identical output (its logit rule [TORCH-NEURONX], [MOE-REPO]), so each
# version's share of output elements equal to the bf16 reference bit for bit is printed (L = SHOW_L).
# Asserted: the order-preserving attention versions (v0, v2: the reference's rounding points, normalised
# before p·V) are bit-identical; flash-decoding (v1) is not (its per-core rescaling reorders the sums). The
# blocks keep the reference's rounding points but not NumPy's summation order (the projections accumulate
# over PE tiles, v1-v3 add two per-core partials, v4-v7 contract w_qkv in blocked rows and sum the softmax
# lanes first): on these inputs v4-v7 give the reference's bits on every element (asserted at SHOW_L) —
# the final block v7 is both the fastest and the order-preserving variant here; nothing guarantees it for
# every input, since the fp32 sums are ordered differently.

# %%
same = lambda c: float((c.outputs[0].astype(np.float32) == c.expected[0]).mean())  # noqa: E731
bits = {f"attention_{c.version}": same(c) for c in (c0, c1, c2)}
bits |= {f"block_{c.version}": same(c) for c in (b0, b1, b2, b3, b4, b5, b6, b7)}
print({k: f"{100 * x:.1f} %" for k, x in bits.items()})
assert bits["attention_v0"] == bits["attention_v2"] == 1.0 and bits["attention_v1"] < 0.9
assert all(bits[f"block_v{i}"] == 1.0 for i in range(4, 8))

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
    fused[tg] = blat[tg]["v7", SHOW_L]
    print(f"{tg} L={SHOW_L}: separate launches {separate[tg]:.1f} µs, fused block v7 {fused[tg]:.1f} µs "
          f"(estimates); published: {published[tg].label} {published[tg].us} µs ({published[tg].source})")
assert all(fused[tg] < separate[tg] and fused[tg] < published[tg].us for tg in fused)

# %% [markdown]
# ## The decode layer: the input RMSNorm inside the block (op `attention_layer_decode`)
# Notebook 07's decode step launches an RMSNorm of [1, 2048] before every block: ~9 µs per layer that is
# almost all fixed DMA latency (two dependent loads and a store), 48 times per token. `attention_block_v8`
# (op `attention_layer_decode`, v0) takes the residual stream h and the norm's weight instead of x and
# normalises on chip while the first weight bytes stream: each core loads all of h (4 KiB) and sums its
# squares with one ones matmul (no extra exchange), rounding as `rmsnorm_v3` does. Its other changes over
# v7: the q|k|v columns split by core (core 0 its query heads + k, core 1 its query heads + v, each over
# the whole contraction; the k|v block streams first and is swapped while the q columns stream), and a
# load-time layout (`nki_moe.kernels.layouts.attention_layer_layout`, applied once per layer like
# `tile_weight`) that makes every core's w_qkv and w_o blocks one contiguous run per partition: w_o moves
# at 8/6/2 KiB per descriptor instead of 2 KiB. Asserted: bit-identical to `rmsnorm_v3` then v7 (y and both
# caches), and faster than the two launches at every L on both chips.

# %%
layer = ops.get("attention_layer_decode").on(TARGET, SEED)
lc, lq = layer.step("v0", L=SHOW_L)
_ = ops.check_with_cache(layer, "v0", L=SHOW_L)
h_, gamma_, w_qkv_, w_o_, qw_, kw_, cos_, sin_, kc_, vc_, L_, eps_ = layer.args(L=SHOW_L)
x_ = sim.run(norm_kernels.rmsnorm_v3, h_, gamma_, eps_, lnc=2).outputs
y7_ = sim.run(attn_kernels.attention_block_v7, x_, w_qkv_, w_o_, qw_, kw_, cos_, sin_, kc_.copy(), vc_.copy(),
              L_, eps_, lnc=2).outputs  # y [1, H] (the caches are written in place)
assert np.array_equal(np.asarray(lc.outputs[0]).view(np.uint16), np.asarray(y7_).view(np.uint16))
lsweep = layer.sweep(L=LENGTHS)
print(lsweep.table(TARGET))
norm_us = {e.target: e.us for e in budget.estimate(ops.get("rmsnorm").on(TARGET, SEED), [dict(T=1)],
                                                     versions=("v3",))}
llat = {tg: lsweep.latency(tg) for tg in ("trn2", "trn3")}
for tg in ("trn2", "trn3"):
    two = norm_us[tg] + blat[tg]["v7", SHOW_L]
    print(f"{tg} L={SHOW_L}: rmsnorm_v3 {norm_us[tg]:.2f} + block v7 {blat[tg]['v7', SHOW_L]:.2f} = "
          f"{two:.2f} µs as two launches; the layer kernel {llat[tg]['v0', SHOW_L]:.2f} µs (estimates), "
          f"saving {48 * (two - llat[tg]['v0', SHOW_L]) / 1e3:.2f} ms per 48-layer token")
assert all(llat[tg]["v0", L] < norm_us[tg] + blat[tg]["v7", L] for tg in llat for L in LENGTHS)
assert all(llat[tg]["v0", L] < blat[tg]["v7", L] for tg in llat for L in LENGTHS)  # even without the norm
layer_final = lsweep.final("v0", LENGTHS)
layer_x_floor = {k: v["latency_us"] / v["roofline_us"] for k, v in layer_final.items()}
print({k: f"{x:.2f}× its floor" for k, x in layer_x_floor.items()})

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
# ### prefill v5 · the prologue's DMA plan, the vector passes rebalanced
# v4's schedule: ~30 % of the latency waiting; every token tile's loads queued behind the previous tile's
# K-cache store (which waits for its norm), cos/sin and the norm weights DMA-broadcast to [tsz, heads, d]
# at 256 B per descriptor; DVE the busiest engine (the max written in fp32 costs N per score instead of
# N/2, the normalisation N). v5: every load issued first, cos/sin and the weights read once per tile and
# broadcast over the heads on chip (step-0 access patterns), Σx² per head on ACT (no DVE reduce), the V
# rows copied to the cache HBM→HBM; the max in bf16 (exact: a max of bf16 scores); the normalisation on
# GpSimd (idle but for the masks); the pᵀ tiles transposed four to a PSUM bank and evicted by one copy,
# alternately on DVE and ACT. The same values at the same rounding points: v4's bits.

# %%
pc5, pp5 = prefill.step("v5", T=SHOW_T)
_ = ops.check_with_cache(prefill, "v5", T=SHOW_T)
print({e: f"{pp4.busy_us[e] / 2:.1f} → {pp5.busy_us[e] / 2:.1f} µs per core"
       for e in ("pe", "act", "dve", "pool")})
assert np.array_equal(pc5.outputs[0], pc4.outputs[0]) and pp5.latency_us < pp4.latency_us
assert pp5.busy_us["dve"] < pp4.busy_us["dve"]

# %% [markdown]
# ### prefill v6 · the faster variant: the scale folded into the PSUM eviction
# HF rounds q·kᵀ to bf16 and then the scaled scores again; v6 evicts s = bf16(q·kᵀ·d^-0.5) in one
# instruction per head, alternately ACT and DVE: one pass over every score fewer and ACT's evictions
# halved. One rounding fewer is not the reference's order: the faster, not order-preserving variant (v5
# is the order-preserving one).

# %%
pc6, pp6 = prefill.step("v6", T=SHOW_T)
_ = ops.check_with_cache(prefill, "v6", T=SHOW_T)
print(f"v5 {pp5.latency_us:.2f} µs → v6 {pp6.latency_us:.2f} µs; bit-identical to the reference: "
      f"v5 {100 * same(pc5):.1f} %, v6 {100 * same(pc6):.1f} %")
assert pp6.latency_us < pp5.latency_us and same(pc6) < 0.9 < same(pc5)

# %% [markdown]
# ### prefill v7 · the softmax straight from PSUM, the normalisation deferred
# v6 still copies every score out of PSUM, masks it on GpSimd, takes the max, exps it and divides it by
# Σe (GpSimd) before p·V. v7 reads PSUM directly: DVE's max pass masks the diagonal bank in place
# (`range_select`: keys past the query become FP32_MIN), ACT's exp takes scale = d^-0.5 and bias =
# −max·d^-0.5 and writes the unnormalised bf16 exps, and o = (e·V) / Σe is divided once per [tq, d] at
# its eviction (flash-style): of v6's five passes over every score, two are left (the max, the exp). The
# faster variant again (no bf16 scores, no bf16 p).

# %%
pc7, pp7 = prefill.step("v7", T=SHOW_T)
_ = ops.check_with_cache(prefill, "v7", T=SHOW_T)
print(f"v6 {pp6.latency_us:.2f} µs → v7 {pp7.latency_us:.2f} µs; bit-identical: v7 {100 * same(pc7):.1f} %")
print({e: f"{pp6.busy_us[e] / 2:.1f} → {pp7.busy_us[e] / 2:.1f} µs per core"
       for e in ("pe", "act", "dve", "pool")})
trn3_us = {v: prefill.profile(v, target="trn3", trace_path=False, T=SHOW_T).latency_us for v in ("v6", "v7")}
print(f"trn3: v6 {trn3_us['v6']:.2f} µs → v7 {trn3_us['v7']:.2f} µs")
assert pp7.latency_us < pp6.latency_us and trn3_us["v7"] < trn3_us["v6"]
assert same(pc7) < 0.9 and {r.opcode for r in pc7.trace if r.engine == "pool"} == {"iota"}  # no mask pass

# %% [markdown]
# ### prefill v8 · the prologue pipelined into the attention
# v7's schedule: the norms, RoPE and transposes of all tiles (~14 µs at T = 512, mostly DVE) run before the
# first score. Causal attention lets query tile t start once key tiles 0 … t exist, so v8 norms token tile
# t + 2 while tile t attends, with the norm's elementwise products on GpSimd (idle since v7) beside ACT's
# exps and DVE's maxima, and runs the (tile, head) items as one software pipeline across the tiles (scores
# and max two items ahead, the exp one ahead, then p·V). The same per-head instructions as v7: v7's bits.

# %%
pc8, pp8 = prefill.step("v8", T=SHOW_T)
_ = ops.check_with_cache(prefill, "v8", T=SHOW_T)
print(f"v7 {pp7.latency_us:.2f} µs → v8 {pp8.latency_us:.2f} µs "
      f"({pp8.latency_us / pp8.roofline_us:.1f}× the PE floor {pp8.roofline_us:.2f} µs)")
trn3_us["v8"] = prefill.profile("v8", target="trn3", trace_path=False, T=SHOW_T).latency_us
print(f"trn3: v7 {trn3_us['v7']:.2f} µs → v8 {trn3_us['v8']:.2f} µs")
assert pp8.latency_us < pp7.latency_us and trn3_us["v8"] < trn3_us["v7"]
assert np.array_equal(pc8.outputs[0], pc7.outputs[0])

# %% [markdown]
# ### prefill v9 · the engines rebalanced
# v8's busiest engines per core are ACT (exps, all eᵀ PSUM evictions, the norms' Σx² and scaling) and DVE
# (the fp32 max from PSUM, the divisions, −max·d^-0.5); GpSimd cannot read PSUM, so it cannot take the
# evictions. v9 moves the odd heads' eᵀ evictions to DVE (2× rate for a bf16 copy out of PSUM) and the −max
# scaling to ACT just before its exp, and issues the eᵀ transposes one item ahead of p·V, so no in-order queue
# waits on another engine's eviction (v8's loop chained eviction → p·V → scores → transposes per item). The
# same instructions on the same values: v8's bits.

# %%
pc9, pp9 = prefill.step("v9", T=SHOW_T)
_ = ops.check_with_cache(prefill, "v9", T=SHOW_T)
print(f"v8 {pp8.latency_us:.2f} µs → v9 {pp9.latency_us:.2f} µs "
      f"({pp9.latency_us / pp9.roofline_us:.1f}× the PE floor {pp9.roofline_us:.2f} µs)")
trn3_us["v9"] = prefill.profile("v9", target="trn3", trace_path=False, T=SHOW_T).latency_us
print(f"trn3: v8 {trn3_us['v8']:.2f} µs → v9 {trn3_us['v9']:.2f} µs")
print({f"prefill_{v}": {e: round(p.busy_us[e] / 2, 2) for e in ("pe", "act", "dve", "pool")}
       for v, p in (("v8", pp8), ("v9", pp9))})  # µs per core (the two cores run the same work)
assert pp9.latency_us < pp8.latency_us and trn3_us["v9"] < trn3_us["v8"]
assert np.array_equal(pc9.outputs[0], pc8.outputs[0])

# %% [markdown]
# ### Prefill sweep over T (estimated)

# %%
psweep = prefill.sweep(T=PREFILL_T)
print(psweep.table(TARGET))
prefill.save_figures(psweep, T=(PREFILL_T[0], SHOW_T))
plat = {tg: psweep.latency(tg) for tg in ("trn2", "trn3")}
pladder = ("v9", "v8", "v7", "v6", "v5", "v4", "v3", "v1", "v0")
assert all(all(plat[tg][a, T] < plat[tg][b, T] for a, b in zip(pladder, pladder[1:]))
           for tg in plat for T in PREFILL_T)
lnc2_gain = {(tg, T): plat[tg]["v3", T] / plat[tg]["v4", T] for tg in plat for T in PREFILL_T}
assert all(x > (1.5 if T >= 512 else 1.2) for (_, T), x in lnc2_gain.items())
assert all(busiest_engine(p, compute_only=True) == "dve" for p in (pp0, pp1, pp2, pp3, pp4))
print({f"prefill_{c.version}": busiest_engine(p, compute_only=True)
       for c, p in ((pc5, pp5), (pc6, pp6), (pc7, pp7), (pc8, pp8), (pc9, pp9))})
if SHOW_T >= 512:  # at the short prompts the prologue's DVE work still dominates
    assert all(busiest_engine(p, compute_only=True) == "act" for p in (pp5, pp6))
    assert busiest_engine(pp7, compute_only=True) == "dve"  # the max from PSUM (fp32: N) and the prologue
print({f"prefill_{c.version}": f"{100 * same(c):.1f} % bit-identical"
       for c in (pc0, pc1, pc2, pc3, pc4, pc5, pc6, pc7, pc8, pc9)})
assert same(pc5) == same(pc4) == same(pc3) == same(pc1) > 0.95 > 0.9 > max(same(pc2), same(pc6), same(pc7))

# %% [markdown]
# Asserted at every T on both chips: v9 < v8 < v7 < v6 < v5 < v4 < v3 < v1 < v0 (the scores in SBUF beat the
# HBM round trip; overlapping the heads' stages beats the per-head chain; two cores beat one — by over 1.2× at
# every T and over 1.5× at T ≥ 512: at the short prompts the fixed DMA costs do not halve; planned loads and
# rebalanced passes beat v4; one pass fewer beats v5, by little: the latency is the dependent chain's, not one
# engine's work; the softmax read from PSUM beats v6; the prologue pipelined into the attention beats v7, by
# most at the long prompts, where there is more attention to hide it behind; the engines rebalanced beat v8,
# most at the long prompts, where the per-item loop dominates); v0-v4's busiest compute engine
# is DVE (the scale, the max and the normalisation each pass over every score), v5's and v6's ACT at T ≥ 512
# (the evictions and the exps), v7's DVE (the fp32 max from PSUM and the prologue). The flash version (v2)
# adds per-block rescaling work on DVE and does not pay at T ≤ 640, where a whole score row block fits in
# SBUF; it is not bit-identical, while v1, v3, v4 and v5 keep the reference's rounding points and give the
# same bits (> 95 % bit-identical to the reference; the rest trace back to a one-ulp difference of a normed q
# or k: the RMS's fp32 sum order). v6-v9 are faster variants (v9 the fastest, v7's and v8's bits) and v5 the
# order-preserving one.

# %% [markdown]
# ## The prefill block: q|k|v projection + attention + o projection in one kernel
# Issue 16's prefill rung "q/k-norm + RoPE fused into the QKV epilogue" needs the projection inside the
# kernel: `attention_block_prefill` takes x [T, 2048] (after the input RMSNorm), w_qkv [2048, 1280] and
# w_o [1024, 2048] (the decode block's layout) and returns this rank's y [T, 2048] (before the all-reduce),
# writing cache rows 0..T-1. Reference: the projection, `attention_prefill` and o_proj composed
# (`nki_moe.ops.attention_block_prefill`). Every version runs attention_prefill_v5's passes
# (`_prefill_attend_tile`, order-preserving) and the same projection matmuls (PSUM blocks of ≤ 512
# columns: each core's half of q, k, v).
# - v0 unfused, one core: q/k/v stored to HBM after the projection and read back by v5's prologue; the
#   attention output stored and read back by the o projection.
# - v1 the epilogue fusion, one core: each token tile's PSUM blocks evicted to bf16, normed and rotated on
#   the way to SBUF, Qᵀ/Kᵀ by PE transposes; q/k/v never touch HBM (only the K/V cache rows). The loads in
#   consumption order: the first x tile, w_qkv in ~8 KiB-per-partition chunks, the other x tiles, w_o.
# - v2 the o projection as the attention's epilogue, LNC=2: the query heads split 4/4 (as prefill v4-v6),
#   core 0 projects k (K rows), core 1 v (V rows), swapped per token tile; each query tile's attention output
#   is swapped and each core multiplies all 8 heads, in head order (order-preserving: v1's bits), with its
#   half of w_o's columns; a tile attends as soon as its keys exist and its o GEMM runs during the next
#   tile's softmax.

# %%
bprefill = ops.get("attention_block_prefill").on(TARGET, SEED)
BLOCK_T = (20, 54) if SMOKE else PREFILL_T
SHOW_BT = BLOCK_T[-1] if SMOKE else 512
bcost = bprefill.cost(T=SHOW_BT)
print(f"prefill block at T={SHOW_BT}: {bcost.macs / 1e9:.2f} G MACs, {bcost.bytes / 1e6:.2f} MB (minimum)")


def hbm_bytes(trace):
    """Bytes the DMAs of a trace read from or wrote to HBM (both cores)."""
    return sum(a.nbytes for rec in trace for a in rec.accesses if not a.on_chip)


bp = {}
for v in ("v0", "v1", "v2"):  # the step of each rung: its source, both caches checked, its profile
    if v != "v0":
        print(bprefill.source(v))
    checked, _ = ops.check_with_cache(bprefill, v, T=SHOW_BT)
    prof = bprefill.profile(v, trace=checked.trace, T=SHOW_BT)
    print(checked.message, prof.summary(), sep="\n")
    bp[v] = (checked, prof, hbm_bytes(checked.trace))
    print(f"{v}: {prof.latency_us:.1f} µs ({100 * prof.pct_of_roofline:.0f} % of its floor), "
          f"HBM {bp[v][2] / 1e6:.2f} MB, bit-identical to the reference: {100 * same(checked):.1f} %")
qkv_trip = 2 * SHOW_BT * 1280 * 2  # q|k|v written and read back
assert bp["v0"][2] - bp["v1"][2] >= qkv_trip
assert all(np.array_equal(bp["v0"][0].outputs[0], bp[v][0].outputs[0]) for v in ("v1", "v2"))
assert bp["v2"][1].latency_us < bp["v1"][1].latency_us < bp["v0"][1].latency_us

# %% [markdown]
# Asserted at T = SHOW_BT: v1 moves at least the q/k/v round trip (2·T·1280·2 bytes) less than v0, the three
# versions give the same bits (v2 on two cores), and each rung is faster. Bit-identical to the reference on
# most, not all, elements: the projections' fp32 sums run in PE-tile order, not NumPy's (one-ulp flips
# before the norms; within the ratio everywhere). v2 reads x, cos/sin and the norm weights on both cores,
# which costs about what the attention output's round trip saved: its gain is the second core.
#
# ### Sweep over T (estimated), and the fusion's saving

# %%
bsweep_p = bprefill.sweep(T=BLOCK_T)
print(bsweep_p.table(TARGET))
fig, data = bsweep_p.plot(bprefill.figure_title(bsweep_p))
save_figure(fig, "06_attention_block_prefill_sweep", data)
bplat = {tg: bsweep_p.latency(tg) for tg in ("trn2", "trn3")}
assert all(bplat[tg]["v2", T] < bplat[tg]["v1", T] < bplat[tg]["v0", T] for tg in bplat for T in BLOCK_T)
saved_bytes = bp["v0"][2] - bp["v1"][2]  # the epilogue fusion (v0 -> v1) at SHOW_BT
saved_us = {(tg, T): bplat[tg]["v0", T] - bplat[tg]["v1", T] for tg in bplat for T in BLOCK_T}
print(f"QKV-epilogue fusion at T={SHOW_BT}: {saved_bytes / 1e6:.2f} MB less HBM traffic (q/k/v round trip "
      f"{qkv_trip / 1e6:.2f} MB); µs saved per T:")
print({f"{tg} T={T}": f"{x:.1f} µs" for (tg, T), x in saved_us.items()})
assert saved_bytes >= qkv_trip and all(x > 0 for x in saved_us.values())
bfinal = bsweep_p.final("v2", BLOCK_T)
print("\n".join(bsweep_p.summary_lines("v2", (BLOCK_T[0], BLOCK_T[-1]), "attention_block_prefill_v2")))
block_prefill_final = {"final_version": "v2", "lnc": 2, "final": bfinal, "order_preserving": True,
                       "fusion_saving": {"bytes_at_T": {SHOW_BT: saved_bytes},
                                         "us": {f"{tg}_T{T}": x for (tg, T), x in saved_us.items()}}}

# %% [markdown]
# Asserted at every T on both chips: v2 < v1 < v0; the QKV-epilogue fusion (v0 → v1) saves at least the
# q/k/v round trip in bytes (at SHOW_BT) and time at every T (printed: the round trip's DMAs and their
# fixed costs, on the one core's queue, in series with the projection). v2 is the final rung and the
# order-preserving one (v1's bits). It stays far from its floor (printed): DMA is its largest
# critical-path share — the 9.4 MB of weights stream at 256 B to 2 KiB per descriptor (a core's k or v
# columns, the column halves of a row of w_qkv and w_o), x is read by both cores, and the per-tile
# exchanges add fixed costs — and the PE waits on each tile's softmax chain. Next steps: a load-time
# layout of the weights (whole rows per core), x transposed once and swapped instead of read twice.
# For the per-token budget, this op would replace a prefill's q/k/v/o projection launches and its attention
# launch (nki_moe.budget is not changed here).

# %% [markdown]
# ## Takeaways
# Printed from the sweeps (estimates). Asserted: the attention core stays below 10 % of its (sub-µs) floor at
# every L — latency-bound, its next step is fewer dependent instructions, not bandwidth. The fused block v7 is
# the fastest block at every L and beats the separate launches and the published per-layer figures above; on
# trn2 it reaches 55-67 % of its HBM floor (v3: 40 %), i.e. 1.5-1.8× the floor: the 1.5× goal is not met
# (trn3: 35-50 %, its HBM is faster, the fixed costs are not). What is left (v7's schedule, printed): ~2 µs
# before the first byte; a weight stream slower than the HBM share — w_o's column halves move 2 KiB per
# descriptor (a row is 4 KiB: in the reference layout a core's half cannot be longer; a load-time layout would
# lift it) and the cache rows 1.25 KiB; after the last weight byte the last w_o chunk's GEMV and the store
# (~2.7 µs). The second exchange now overlaps the stream; it cannot go without computing every head's
# attention on both cores (the MACs would exceed the analytic count) or swapping partial sums after the o GEMV
# (v4: slower). The decode LAYER kernel (block v8, op `attention_layer_decode`: the input RMSNorm inside,
# q|k|v split by columns, a load-time layout with 4-12 KiB descriptors) lifts two of those limits: with the
# norm included it is faster than v7 alone at every L, saves the separate norm launch (~9 µs per layer) and
# reaches the 1.5× goal at every L on trn2 (asserted; 1.46-1.48×, its short slots' padding mask built while
# the weights stream; trn3 ~2.1×, its HBM is faster, the fixed costs are not). Prefill v9 (the fastest, a
# faster variant; v5 the order-preserving one) stays below 30 % of its two cores' PE floor (printed: ~5.0× it
# at T = 512 on trn2): the T = 512 goal of 1.5× is not met and cannot be with these passes — the busiest
# engine's own work per core (ACT: exps, half the eᵀ evictions, the norms; DVE close behind; asserted below)
# still exceeds 1.5× the floor, and so do the ~3 µs before the first load lands plus the ~2.4 µs of the last
# output store after the last instruction. No standalone launch can reach it on this cost model (asserted):
# the DMA fixed cost (1.9 µs) before the first operand lands and again after the last result, around at least
# the PE floor, is ≥ 8.05 µs = 1.9× the floor at T = 512; only inside a fused prefill layer, where those costs
# overlap the weight stream, is the goal meaningful. A transposed-scores variant (no eᵀ transposes) was tried
# beyond v9 and not kept (its docstring: −0.8 % trn2, +4 % trn3). Both caches pass in every check.

# %%
print("\n".join(sweep.summary_lines("v2", (LENGTHS[0], SHOW_L), "attention_decode_v2 (1 core)")))
print("\n".join(bsweep.summary_lines("v7", (LENGTHS[0], SHOW_L), "attention_block_v7 (LNC=2)")))
assert all(r["pct_roofline"] < 10 for r in sweep.rows)
final = bsweep.final("v7", LENGTHS)
ratio_floor = {k: v["latency_us"] / v["roofline_us"] for k, v in final.items()}
print({k: f"{x:.2f}× its floor" for k, x in ratio_floor.items()})
lo_hi = {"trn2": (55, 67), "trn3": (35, 50)}  # trn2: 1.5-1.8× its floor, not the 1.5× goal
assert all(lo_hi[k[:4]][0] < v["pct_roofline"] < lo_hi[k[:4]][1] for k, v in final.items())
assert all(x > 1.5 for x in ratio_floor.values())
v7_tail = tail_us(q7)
print(f"v7 at L={SHOW_L}: first byte {min(b for _, _, b, _ in big_dmas(q7)):.2f} µs, last weight byte "
      f"{max(e for *_, e in big_dmas(q7)):.2f} µs, then {v7_tail:.2f} µs (exchange, o GEMV, store)")
print("\n".join(lsweep.summary_lines("v0", (LENGTHS[0], SHOW_L), "attention_layer_decode v0 = block v8")))
assert all(x <= 1.5 for k, x in layer_x_floor.items() if k.startswith("trn2"))
assert all(x > 1.5 for k, x in layer_x_floor.items() if k.startswith("trn3"))
print("\n".join(psweep.summary_lines("v9", (PREFILL_T[0], SHOW_T), "attention_prefill_v9 (LNC=2)")))
assert all(r["pct_roofline"] < 30 for r in psweep.rows)  # far from the PE floor (v9, T = 640, trn3: ~26 %)
busiest = max(pp9.busy_us[e] for e in ("pe", "act", "dve", "pool")) / 2  # per core
print(f"prefill v9 T={SHOW_T}: {pp9.latency_us / pp9.roofline_us:.2f}× its floor; busiest engine "
      f"{busiest:.1f} µs per core, 1.5× floor {1.5 * pp9.roofline_us:.1f} µs")
if SHOW_T >= 512:
    assert busiest > 1.5 * pp9.roofline_us and pp9.latency_us > 1.5 * pp9.roofline_us
# A lower bound of any standalone launch on this cost model: the DMA fixed cost before its first operand
# lands, at least the PE floor of work, and the fixed cost again after its last result.
fixed = get_hardware(TARGET).dma_fixed_cost_us()
bound = 2 * fixed + pp9.roofline_us
print(f"standalone bound T={SHOW_T}: {fixed:.1f} + {pp9.roofline_us:.2f} + {fixed:.1f} = {bound:.2f} µs = "
      f"{bound / pp9.roofline_us:.2f}× the floor (v9 {pp9.latency_us:.2f} µs)")
assert pp9.latency_us > bound
if SHOW_T >= 512:
    assert bound > 1.5 * pp9.roofline_us  # the 1.5× goal is out of reach of a standalone launch

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
    print(f"fused block v7, 48 launches: {48 * fused[TARGET] / 1e3:.2f} ms per token per rank (est.) against "
          f"{48 * separate[TARGET] / 1e3:.2f} ms as separate launches")

# %%
prefill_final = {"final_version": "v9", "lnc": 2, "final": psweep.final("v9", (PREFILL_T[0], SHOW_T)),
                 "order_preserving_version": "v5",
                 "order_preserving": psweep.final("v5", (PREFILL_T[0], SHOW_T))}
results.record("06_attention", {"estimated_by": "nki_moe cost model", "final_version": "v2", "lnc": 1,
                                "final": sweep.final("v2", (LENGTHS[0], SHOW_L)), "bit_identical_share": bits,
                                "ops": {"attention_block_decode": {"final_version": "v7", "lnc": 2,
                                                                   "final": final, "x_floor": ratio_floor},
                                        "attention_layer_decode": {"final_version": "v0", "lnc": 2,
                                                                   "kernel": "attention_block_v8",
                                                                   "final": layer_final,
                                                                   "x_floor": layer_x_floor},
                                        "attention_prefill": prefill_final,
                                        "attention_block_prefill": block_prefill_final},
                                "separate_launches_us": separate, "fused_block_us": fused,
                                "budget": budget.results_entry(est, lines)})
