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
# # 04 · Read only the eight chosen experts' weights: MoE decode
# `y = Σ_k w_k · down_k(silu(gate_k(x)) ⊙ up_k(x))` over each token's 8 of 128 experts, for one TP rank
# (I/t of each expert's 768 intermediate rows) on an LNC=2 launch, T = 1 (decode) to 8 (speculative decode).
#
# ## What & why
# - Napkin math, one token at TP = 4 (I = 192 per rank): 8 experts × 3 × 2048 × 192 × 2 B = 18.9 MB of
#   weights for 9.4 M MACs, ≈ 1 FLOP/byte: HBM-bound, its floor the bytes at the rank's bandwidth (two
#   cores). At TP = 1 a rank reads 75.5 MB. All 128 experts would be 16× that (v0).
# - The op dominates decode (≈ 80 % of the step's weight bytes, notebook 00), so every byte and every DMA
#   fixed cost of the eight expert loads shows in the per-token time.
# - Levers ([DMA-BW], [DMA-INTRO], [PERF]): read exactly the chosen experts by indirect DMA (ids stay in
#   SBUF), ≥ 2 KiB per descriptor, all 16 DMA engines busy, weights as the stationary GEMV operand, both
#   cores streaming, loads issued ahead of the compute, one PSUM read-out per token.
# - The ladder: v0 all experts → v1 selective (indirect DMA) → v2 contiguous gate|up → v3 LNC=2 → v4 the DMA
#   side; v5 fuses RMSNorm and the router into the launch (op `moe_layer_decode`); an fp8 variant (a
#   numerics change) and a TP × dtype design space close the notebook.
# - All Trainium times are ESTIMATES of the nki_moe cost model; the 98.15 µs fused layer ([MEGA] K13) is a
#   published measurement. Terms: [docs/glossary.md](../docs/glossary.md).

# %% tags=["parameters"]
SMOKE = False
TARGET = "trn2"
SEED = 0
TP = 4

# %% [markdown]
# ## Setup
# Inputs (x, the router's ids and weights, one rank's expert weights), reference, cost and versions come from
# the registry; `op.step` prints a version's source, checks it (3-way error ratio, MACs = T·8·3·H·I) and
# profiles it. `bytes_ok` asserts that the trace's HBM reads are the chosen experts' weights within 1 %.

# %%
import inspect

import matplotlib.pyplot as plt
import numpy as np

import nki_moe.sim as sim
from nki_moe import budget, ops, paths, results
from nki_moe.figures import save_figure
from nki_moe.kernels.moe_decode import moe_decode_fp8
from nki_moe.kernels.moe_layouts import dequantize_experts_fp8, quantize_experts_fp8
from nki_moe.ladder import TARGETS, ratio
from nki_moe.perf import calibration
from nki_moe.perf.collectives import all_reduce_time
from nki_moe.perf.hardware import get_hardware
from nki_moe.perf.profile import profile_trace
from nki_moe.plots import series_style
from nki_moe.tables import format_table

paths.start_run("04_moe_decode", smoke=SMOKE, target=TARGET)  # decides where outputs go
op = ops.get("moe_decode").on(TARGET, SEED)
TOKENS = (1, 8) if SMOKE else (1, 2, 4, 8)
E, TOP_K = ops.MOE_E, ops.TOP_K


# %%
def bytes_ok(checked, T, experts, tp=TP):
    """HBM bytes read vs the ``experts`` experts' weights (asserted within 1 %); returns the ratio."""
    r = ops.moe_read_bytes(checked.trace) / ops.moe_weight_bytes(T, tp, experts)
    assert 1 <= r <= 1.01, f"{checked.version}: reads {r:.4f}x the experts' weights"
    return r


# %% [markdown]
# ## Reference
# `moe_experts` groups the (token, slot) pairs by expert (HF's dispatch), scales each expert's output by its
# weight, and `moe_combine` sums them in ascending expert order, rounding after each add in bf16 mode.

# %%
print(inspect.getsource(op.reference))
print(op.expected(op.args(T=1, tp=TP, H=512, E=16), "bf16")[0][0, :6])

# %% [markdown]
# ## v0 · all experts, weighted by a dense routing vector
# The naive baseline: stream every expert, GEMMs over all T tokens, scale by `dense[t, e]` (0 unless
# chosen). Checked without the harness's MAC assertion (it is for 8 experts); asserted instead: MACs and
# bytes are E/8 = 16× the selective ones.

# %%
print(op.source("v0"))
c0 = op.check("v0", args=op.args(T=1, tp=TP))
print(c0.message)
assert c0.macs == op.cost(T=1, tp=TP).macs * E // TOP_K and bytes_ok(c0, 1, E)
p0 = op.profile("v0", trace=c0.trace, T=1, tp=TP)
print(p0.summary())

# %% [markdown]
# ## v1 · selective: the ids drive indirect DMAs of the chosen experts
# Each (token, slot) pair loads its expert's gate, up and down weights with `scalar_offset` = the id (a
# register loaded from the SBUF copy of `idx`). The contraction is tiled h = kt·128 + p, so each partition
# reads KT runs of I elements: 384 B at I = 192, below the 2 KiB a descriptor needs.

# %%
c1, p1 = op.step("v1", T=1, tp=TP)
print(f"HBM reads / 8 experts' weights: {bytes_ok(c1, 1, TOP_K):.4f}")

# %% [markdown]
# ## v2 · gate|up in one contiguous DMA per expert
# HF's [H, 2I] rows already hold gate then up side by side; tiling the contraction as h = p·KT + kt makes
# partition p's share of an expert rows p·KT … p·KT + KT − 1, one run of KT·2I elements (12 KiB at
# TP = 4): one DMA for gate and up at ≥ 2 KiB per descriptor, and x loads in the same order with one DMA
# (no PE transposes). No host-side copy of the weights is needed.

# %%
c2, p2 = op.step("v2", T=1, tp=TP)
print(f"HBM reads / 8 experts' weights: {bytes_ok(c2, 1, TOP_K):.4f}")

# %% [markdown]
# ## v3 · LNC=2: four slots per core, the partial sums crossing by `sendrecv`
# Core c runs slots 4c … 4c + 3 of every token (equal bytes whatever the routing, unlike a split of the
# experts by owner), then owns half of H: it sends the other half of its partial and adds the one it gets.

# %%
c3, p3 = op.step("v3", T=1, tp=TP)
print(f"HBM reads / 8 experts' weights: {bytes_ok(c3, 1, TOP_K):.4f}")

# %% [markdown]
# ## v4 · the DMA side: loads issued ahead, all 16 engines, one PSUM read-out per token
# The weight DMAs of pair n + DEPTH are issued before pair n computes (software prefetch in program order);
# the 64-row down chunk at I = 192 alternates between partitions 0–63 and 64–127 so all 16 DMA engines
# carry it (8 partitions per engine); w_k is folded into act so a token's slots accumulate in one [1, H]
# PSUM row (4 banks), read out once instead of a DVE scale-and-add per slot and bank.

# %%
c4, p4 = op.step("v4", T=1, tp=TP)
print(f"HBM reads / 8 experts' weights: {bytes_ok(c4, 1, TOP_K):.4f}")

# %% [markdown]
# ## v5 · the fused layer: RMSNorm → router → top-8 → experts in one launch
# Registered as op `moe_layer_decode`: its inputs are the residual stream h, gamma and the router weight, its
# outputs y, the ids and the weights. Both cores normalise and route (each reads the 0.5 MiB router weight:
# no exchange before the first expert DMA, as in K13), in v2's layout (h = p·KT + kt on the partitions, the
# cross-partition sum of squares a ones matmul); the ids go from `nc_find_index8` straight into the register
# of v4's expert DMAs. Checked: y by the error ratio, ids exact (equal logits: lower expert first), weights
# bf16-close, MACs = the cost function's (norm and router counted once per core).

# %%
layer = ops.get("moe_layer_decode").on(TARGET, SEED)
c5, _ = layer.step("v0", T=1, tp=TP)
fused = {tg: layer.profile("v0", target=tg, trace=c5.trace, trace_path=False, T=1, tp=TP) for tg in TARGETS}
for T in TOKENS[1:]:
    print(layer.check("v0", T=T, tp=TP).message)

# %% [markdown]
# ## v6 – v8 · the fused layer's head and tail
# v5's schedule on core 0 (T = 1, trn2, estimated): the first expert byte moves at 10.3 µs (h queued behind
# the router weights, four small DMAs before the first expert DMA) and 8.2 µs pass after the last one
# (one-partition PSUM read-outs of [1, 1024], sendrecv, add, output DMA): ~18 of its 46 µs with HBM idle.
# **v6** (the head): h first, the router in two DMAs and computed transposed, the expert DMAs right after
# the ids, the softmax weights broadcast by a one-hot matmul. **v7** (the tail): the down projection split
# by output column, each core projecting all 8 slots onto its half of H from acts exchanged mid-stream, y
# transposed on [128, 8] PSUM: nothing crosses over after the last weight byte (its half rows are 2 KiB DMA
# runs). **v8**: a core's first 2 slots on full down rows again, their partial sums in the same exchange.
# All three are bit-identical to v5 on the test inputs (tests/kernels/test_moe_decode.py).

# %%
c6, _ = layer.step("v1", T=1, tp=TP)

# %%
c7, _ = layer.step("v2", T=1, tp=TP)

# %%
c8, _ = layer.step("v3", T=1, tp=TP)
rungs = {"v0": c5, "v1": c6, "v2": c7, "v3": c8}
fused_rungs = {(v, tg): layer.profile(v, target=tg, trace=c.trace, trace_path=False, T=1, tp=TP)
               for v, c in rungs.items() for tg in TARGETS}
rows_f = [(v, layer.version(v).kernel, *(fused_rungs[v, tg].latency_us for tg in TARGETS),
           fused_rungs[v, "trn2"].latency_us / fused_rungs[v, "trn2"].roofline_us) for v in rungs]
print(format_table(rows_f, ["version", "kernel", "trn2 µs (est.)", "trn3 µs (est.)", "trn2 x floor"]))
assert all(fused_rungs[a, tg].latency_us > fused_rungs[b, tg].latency_us
           for tg in TARGETS for a, b in zip(rungs, list(rungs)[1:]))
y5 = np.asarray(c5.outputs[0], np.float32)
assert all(np.array_equal(y5, np.asarray(c.outputs[0], np.float32)) for c in rungs.values())

# %% [markdown]
# ## Checks of the final version
# T ∈ TOKENS (an expert chosen by several tokens happens at random already; `repeat` forces it: 8 tokens
# over 10 experts), and a routing with every expert in [0, 64) — what an expert-owner split puts on one
# core; the slot split keeps both cores' bytes equal (asserted).

# %%
for T in TOKENS:
    c = op.check(op.final, T=T, tp=TP)
    print(c.message, f"reads {bytes_ok(c, T, TOP_K * T):.4f}x the pairs' weights")
print(op.check(op.final, T=8, tp=TP, routing="repeat").message)
ch = op.check(op.final, T=2, tp=TP, routing="half")
dmas = [r for r in ch.trace if r.engine == "dma"]
per_core = [sum(r.info["dma_bytes"] for r in dmas if int(r.pid) == p) for p in (0, 1)]
assert per_core[0] == per_core[1], per_core
print("routing all in [0, 64): bytes per core", per_core)

# %% [markdown]
# ## TP = 1: a whole expert per rank
# The same kernel at I = 768 (6 chunks of 128 rows; only one load ahead fits SBUF: 72 KiB per partition per
# expert). Checked at T = 1 and profiled on both chips.

# %%
c_tp1 = op.check(op.final, T=1, tp=1)
print(c_tp1.message, f"reads {bytes_ok(c_tp1, 1, TOP_K, tp=1):.4f}x")
p_tp1 = {tg: op.profile(op.final, target=tg, trace=c_tp1.trace, T=1, tp=1) for tg in ("trn2", "trn3")}
print(p_tp1[TARGET].summary())

# %% [markdown]
# ## Sweep over T, every version, trn2 and trn3 (estimated)
# Each (version, T) is emulated once and costed on both chips. Beyond T = 1 every version reads one expert
# per (token, slot) pair, while the floor counts each distinct expert once (uniform routing), so % of floor
# falls with T: loading an expert once for all the tokens that chose it is the next step.

# %%
sweep = op.sweep(T=TOKENS, tp=TP)
print(sweep.table(TARGET))
op.save_figures(sweep, T=(1, TOKENS[-1]), title=f"MoE decode, TP={TP} (I = {768 // TP} per rank)")

# %% [markdown]
# ### Every version at T = 1 on both chips
# Estimated µs and % of the floor of its launch's cores, HBM bytes read ÷ the 8 experts' weights, and the
# achieved HBM bandwidth as a share of those cores' roof (MBU, the kernel's own traffic). The Perfetto traces
# of each version's profile are under build/traces/ (the final one: `moe_decode_v4_T1_tp4_trn2.json`).

# %%
at = {(r["version"], r["T"], r["target"]): r for r in sweep.rows}
checked = dict(zip(names := [v.name for v in op.versions], (c0, c1, c2, c3, c4)))
cols = [(tg, k) for tg in ("trn2", "trn3") for k in ("latency_us", "pct_roofline")]
table = [(v, op.version(v).lnc, *(at[v, 1, tg][k] for tg, k in cols),
          ops.moe_read_bytes(checked[v].trace) / ops.moe_weight_bytes(1, TP), 100 * at[v, 1, "trn2"]["mbu"])
         for v in names]
print(format_table(table, ["version", "LNC", "trn2 µs", "% floor", "trn3 µs", "% floor", "bytes / min",
                           "trn2 MBU %"]))

# %% [markdown]
# ## Beside the published fused layer ([MEGA] K13)
# K13 (98.15 µs measured, Trn2, TP = 4, LNC = 2, BF16) fuses RMSNorm, router and top-8 with the experts, and
# both its cores read every chosen expert's gate|up (each computes all of I, then half of H of down). Its
# re-creation in `nki_moe.kernels.calibration.moe` is estimated by the same cost model: the difference in
# bytes, in fixed costs and in what the model assumes, printed from both.

# %%
k13 = next(m for m in calibration.MEASUREMENTS if m.key == "moe_bf16_trn2")
k13_est = calibration.predict(k13)
k13_bytes = calibration.analytic_counts(k13.kernel)[1]
ours = sweep.latency("trn2")[op.final.name, 1]
print(f"K13 measured {k13.measured:.2f} µs; its re-creation estimated {k13_est:.2f} µs; fused moe_decode_v5 "
      f"estimated {fused['trn2'].latency_us:.2f} µs; experts only ({op.final.kernel}) {ours:.2f} µs")
rank_bw = get_hardware("trn2").hbm_bandwidth("logical_core")
for who, b in (("K13", k13_bytes), ("moe_decode_v5", ops.moe_read_bytes(c5.trace))):
    print(f"{who}: {b / 2**20:.1f} MiB -> {1e6 * b / rank_bw:.1f} µs at the rank's {rank_bw / 1e9:.0f} GB/s")

# %% [markdown]
# Where the difference comes from: (1) bytes — K13's two cores each read every chosen expert's gate|up (each
# computes all of I), ours split the slots, so each expert byte leaves HBM once (both read the router
# weight); (2) fixed costs — both run RMSNorm, the router and top-8 before the first expert load, a
# dependent chain; v5 - v4 is its estimated price here; (3) cost-model assumptions — our `scalar_offset` DMAs
# are costed as hardware-DGE DMAs (600 ns each; AWS's kernels issue such DMAs on hwdge, [NKILIB-MOE]) while
# K13's re-creation keeps its software-DGE DMAs, whose per-descriptor GpSimd time is the model's one fitted
# constant; and the register carrying an expert id is not a dependency the scheduler tracks, so the first
# weight DMA does not wait for the ≈ 2 µs id load (optimistic by at most that much).

# %% [markdown]
# ## fp8 experts: a numerics change, not a rung
# `moe_decode_fp8` is v4 on float8_e4m3 weights with per-channel scales (gate/up per output column, down per
# input row, so every scale folds into act; host-side layout `nki_moe.kernels.moe_layouts`): half the weight
# bytes. Its kernel error is checked against the reference on the dequantised weights (3-way ratio); its
# accuracy cost is the error of its output against the fp32 reference on the original bf16 weights, beside
# the bf16 kernel's. Measured here, on random weights; the real model's logits would need their own check.

# %%
x, idx, w, gu, dn = op.args(T=1, tp=TP)
fp8_w = quantize_experts_fp8(gu, dn)
r8 = sim.run(moe_decode_fp8, x, idx, w, *fp8_w, lnc=2)
deq = [op.expected((x, idx, w, *dequantize_experts_fp8(*fp8_w)), d)[0] for d in ("bf16", "fp32")]
print("fp8 kernel vs its dequantised reference:", ratio(r8.outputs, *deq).message)
ref32 = op.expected(op.args(T=1, tp=TP), "fp32")[0]
rel = {name: float(np.sqrt(((np.asarray(y, np.float32) - ref32) ** 2).mean() / (ref32**2).mean()))
       for name, y in (("bf16 v4", c4.outputs[0]), ("fp8", r8.outputs))}
print("relative RMS error vs the fp32 reference, bf16 weights:", {k: f"{v:.1e}" for k, v in rel.items()})
assert ratio(r8.outputs, *deq) and rel["fp8"] > 5 * rel["bf16 v4"]

# %% [markdown]
# ## Design space: TP degree × weight dtype (estimates)
# One rank's MoE decode (T = 1) at TP = 1, 2, 4 (LNC = 2 ranks) and 8 (LNC = 1: 8 ranks of one core) in
# bf16 (v4) and fp8, beside each configuration's floor (its weight bytes at the rank's cores' bandwidth),
# with what the choice costs elsewhere: the layer's MoE all-reduce of the [1, 2048] bf16 output across the
# ranks (collective model, an estimate) and the expert weights each rank holds for 48 layers.

# %%
LNC = {1: 2, 2: 2, 4: 2, 8: 1}  # the chip's 8 cores hold at most 4 LNC=2 ranks


def design_point(tp, dtype):
    """{target: ProfileResult} of one rank's final kernel (bf16 v4 or the fp8 variant) at TP = tp, T = 1."""
    args, c = op.args(T=1, tp=tp), op.cost(T=1, tp=tp)
    kernel = op.kernel(op.final) if dtype == "bf16" else moe_decode_fp8
    args = args if dtype == "bf16" else (*args[:3], *quantize_experts_fp8(*args[3:]))
    wbytes = sum(a.nbytes for a in args[3:]) * TOP_K / E  # the 8 chosen experts' share (+ their scales)
    trace = sim.run(kernel, *args, lnc=LNC[tp]).trace
    return {tg: profile_trace(trace, tg, flops=2 * c.macs, hbm_bytes=c.act_bytes + wbytes) for tg in TARGETS}

# %%
TPS = (4, 8) if SMOKE else (1, 2, 4, 8)
space = {(tp, dt): design_point(tp, dt) for tp in TPS for dt in ("bf16", "fp8")}
ar_us = {tp: 1e6 * all_reduce_time(2 * 2048, tp, TARGET, lnc=LNC[tp]).total_s for tp in TPS}
mem_gb = {(tp, dt): 48 * E * 3 * 2048 * (768 // tp) * (2 if dt == "bf16" else 1) / 1e9 for tp, dt in space}
rows = [(tp, dt, p[TARGET].latency_us, p[TARGET].roofline_us, ar_us[tp], p[TARGET].latency_us + ar_us[tp],
         mem_gb[tp, dt]) for (tp, dt), p in space.items()]
print(format_table(rows, ["TP", "dtype", "µs (est.)", "floor µs", "all-reduce µs", "MoE + AR µs",
                          "expert GB/rank"]))
best = min(rows, key=lambda r: (r[1] != "bf16", r[5]))  # bf16 first: fp8 is a numerics change
SPACE_COLS = ("tp", "dtype", "latency_us", "floor_us", "allreduce_us", "moe_plus_ar_us", "expert_gb_per_rank")
print(f"assembled model (bf16): TP={best[0]}, {best[5]:.1f} µs per layer's MoE + its all-reduce (est.)")

# %%
fig, ax = plt.subplots(figsize=(10, 4.8), layout="constrained")
for k, dt in enumerate(("bf16", "fp8")):
    xs, est_us = np.arange(len(TPS)) + (k - 0.5) * 0.38, [space[tp, dt][TARGET].latency_us for tp in TPS]
    ax.bar(xs, est_us, 0.36, color=series_style(k)["color"], label=f"{dt}: the kernel (estimate)")
    ax.bar(xs, [ar_us[tp] for tp in TPS], 0.36, bottom=est_us, color="0.75", hatch="//",
           label=None if k else "+ the MoE all-reduce (estimate)")
    ax.plot(xs, [space[tp, dt][TARGET].roofline_us for tp in TPS], "k_", ms=20, mew=2,
            label=None if k else "HBM floor of the rank's cores")
    for x_, tp, u in zip(xs, TPS, est_us):
        ax.annotate(f"{mem_gb[tp, dt]:.1f} GB", (x_, u + ar_us[tp]), ha="center", va="bottom", fontsize=7)
ax.set(xticks=range(len(TPS)), xticklabels=[f"TP={tp} x LNC={LNC[tp]}" for tp in TPS],
       ylabel="µs per layer and rank (estimate)", title=f"MoE decode layer, T = 1, {TARGET}: TP degree x "
       "weight dtype (cost-model estimates; labels: expert weights per rank, 48 layers)")
ax.legend(fontsize=8)
ax.set_ylim(0, 1.12 * max(r[5] for r in rows))  # room for the labels
save_figure(fig, "04_moe_decode_design_space", {k: [r[i] for r in rows] for i, k in enumerate(SPACE_COLS)})

# %% [markdown]
# ## Takeaways
# Printed from the sweep and the profiles (estimates). Asserted: each rung is faster than the one before at
# T = 1 on both chips; v1 reads 1/16 of v0's bytes; the final version is within 1.5× of its HBM floor at
# TP = 4 and within 1.3× at TP = 1 on trn2 (the goals); the fused layer v5 moves fewer bytes than
# K13 and its estimate is below K13's measured time. Since the cost model orders a DMA whose offset is a
# register after the instruction that loaded it (register dependencies, docs/cost-model.md), the id load
# (≈ 2 µs of DMA fixed cost) sits in front of the first expert byte: v4 loads the ids first, keeps one
# register per pair in flight and splits its one-partition PSUM read-out between ACT and DVE to stay
# within the goal. The fused layer's rungs v6 – v8 (head, tail, full rows back) each beat the one before on
# both chips (asserted in their section); v8 is at ~1.36× its floor at T = 1 on trn2, just above the 1.35×
# asked for: what remains is the dependent head (h, router weights, top-8: first expert byte at 6.8 µs), the
# 2 KiB runs of the split slots' half rows and the output DMA's fixed cost.

# %%
print("\n".join(sweep.summary_lines(op.final.name, (1, TOKENS[-1]), f"{op.final.kernel} TP={TP}")))
us = {tg: sweep.latency(tg) for tg in ("trn2", "trn3")}
assert all(us[tg][a, 1] > us[tg][b, 1] for tg in us for a, b in zip(names, names[1:]))
assert abs(ops.moe_read_bytes(c0.trace) / ops.moe_read_bytes(c1.trace) - E / TOP_K) < 0.01 * E / TOP_K
final_pct = {tg: at[op.final.name, 1, tg]["pct_roofline"] for tg in ("trn2", "trn3")}
tp1_pct = {tg: 100 * p.pct_of_roofline for tg, p in p_tp1.items()}
print(f"TP=1 {op.final.kernel}: " + ", ".join(f"{tg} {p.latency_us:.1f} µs ({tp1_pct[tg]:.0f} % of floor)"
                                              for tg, p in p_tp1.items()))
assert final_pct["trn2"] > 100 / 1.5 and tp1_pct["trn2"] > 100 / 1.3
assert k13_bytes > ops.moe_read_bytes(c5.trace) and fused["trn2"].latency_us < k13.measured
print("fused v5 (T=1): " + ", ".join(f"{tg} {p.latency_us:.1f} µs ({100 * p.pct_of_roofline:.0f} % of floor)"
                                     for tg, p in fused.items()))
print(f"fused {layer.final.kernel} (T=1): " + ", ".join(
    f"{tg} {fused_rungs[layer.final.name, tg].latency_us:.1f} µs "
    f"({100 * fused_rungs[layer.final.name, tg].pct_of_roofline:.0f} % of floor)" for tg in TARGETS))

# %% [markdown]
# Design space (asserted): fp8 halves every configuration's floor and is faster at every TP on both chips; the
# assembled model's choice is the bf16 configuration with the least MoE + all-reduce time per layer (fp8 is
# a numerics change whose error, printed, would need the model's logit check first).

# %%
floors = {dt: [space[tp, dt][TARGET].roofline_us for tp in TPS] for dt in ("bf16", "fp8")}
assert all(0.49 < f8 / b16 < 0.52 for b16, f8 in zip(*floors.values()))  # fp8: half the weight bytes
assert all(space[tp, "fp8"][tg].latency_us < space[tp, "bf16"][tg].latency_us for tp in TPS for tg in TARGETS)
saved = best[2] - space[best[0], "fp8"][TARGET].latency_us
print(f"design space: bf16 TP={best[0]} for the assembled model ({best[5]:.1f} µs with its all-reduce); fp8 "
      f"would save {saved:.1f} µs per layer at a {rel['fp8'] / rel['bf16 v4']:.0f}x larger output error")

# %% [markdown]
# ## This notebook's line of the per-token budget
# One experts launch per layer and decode step on every rank. At TP = 4 × LNC = 2 its line is the final
# version's T = 1 estimate at I = 192; on one LNC=2 launch (TP = 1) the estimate at I = 768. Prefill lines
# stay floors: this is a decode kernel. Asserted: every line at or above its floor. Estimates.

# %%
est = budget.estimates_from_sweep(op, sweep, versions=(op.final.name,), tp=TP)
est += budget.estimate(op, [dict(T=1, tp=1)], versions=(op.final.name,)) if TP != 1 else []
lines = budget.notebook_lines(("moe_decode",), est, TARGET, prefill=512)
print(lines[f"decode_{budget.TP4_LNC2.key}"].table())
print("\n".join(b.summary() for b in lines.values()))
assert all(ln.us_each >= ln.floor_us_each for b in lines.values() for ln in b.lines)
assert not lines[f"decode_{budget.TP4_LNC2.key}"].missing

# %%
results.record("04_moe_decode", {
    "estimated_by": "nki_moe cost model", "final_version": op.final.name, "lnc": op.final.lnc, "tp": TP,
    "final": sweep.final(op.final.name, (1, TOKENS[-1])), "pct_of_floor_T1": final_pct,
    "tp1": {tg: {"latency_us": p.latency_us, "pct_roofline": tp1_pct[tg]} for tg, p in p_tp1.items()},
    "per_version_T1_us": {tg: {v: us[tg][v, 1] for v in names} for tg in us},
    "fused_v5_T1": {tg: {"latency_us": p.latency_us, "pct_roofline": 100 * p.pct_of_roofline}
                    for tg, p in fused.items()},
    "fused_T1_us": {tg: {layer.version(v).kernel: fused_rungs[v, tg].latency_us for v in rungs}
                    for tg in TARGETS},
    "k13": {"measured_us": k13.measured, "recreation_estimate_us": k13_est, "bytes": k13_bytes},
    "fp8_relative_rms_error": rel, "design_space": [dict(zip(SPACE_COLS, r)) for r in rows],
    "assembled_choice_tp": best[0],
    "budget": budget.results_entry(est, lines)})
