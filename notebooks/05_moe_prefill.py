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
# # 05 · Read each touched expert once: MoE prefill
# `y = Σ_k w_k · down_k(silu(gate_k(x)) ⊙ up_k(x))` for a whole prompt at once (T = 14 … 640 tokens), one TP
# rank (I = 768 / TP of each expert's rows) on an LNC=2 launch: the (token, slot) pairs grouped by expert.
#
# ## What & why
# - Napkin math at TP = 4 (I = 192): one expert is 3 × 2048 × 192 × 2 B = 2.36 MB; T·8 assignments touch
#   E·(1 − (1 − 8/E)^T) experts: 92 at T = 20, all 128 from T ≈ 64 on (302 MB). The MACs are T·8·3·H·I
#   (4.8 G at T = 512): ≈ 16 FLOP/byte at T = 512, still HBM-bound on one rank's two cores.
# - The decode kernels (notebook 04) read one expert per (token, slot) pair: T·8·2.36 MB, 9.7 GB at T = 512,
#   32× the touched experts' weights. Grouping the pairs by expert is the prefill lever ([NXDI] blockwise).
# - The ladder: v0 per token (decode's GEMVs) → v1 grouped on device, every expert read once → v2 blocks of 64
#   slots, one dynamic loop over the blocks in use → v3 LNC=2 → v4 the DMA side (prefetch, all 16 engines) →
#   v5 no dependent small DMA behind the bulk → v6 the DMA engines balanced → v7 the combine's sum in PSUM.
# - Checks: 3-way error ratio vs the NumPy MoE layer; MACs = T·8·3·H·I + the padding (printed apart); expert
#   bytes read = the touched experts' weights (v2+: once per block); ragged T, an empty expert, a hot expert,
#   tied routing. All Trainium times are ESTIMATES of the nki_moe cost model.

# %% tags=["parameters"]
SMOKE = False
TARGET = "trn2"
SEED = 0
TP = 4

# %% [markdown]
# ## Setup
# Inputs, reference, cost and versions from the registry (`moe_prefill`; the decode ladder `moe_decode` for
# the crossover). `checked` runs the harness's check (error ratio) and asserts the MAC count with its padding
# term; `profiles` costs one trace on both chips. SMOKE uses narrow widths (H = 512, E = 16): its times mean
# nothing.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

from nki_moe import ops, paths, results
from nki_moe.figures import save_figure
from nki_moe.ladder import TARGETS
from nki_moe.plots import series_style
from nki_moe.tables import format_table

paths.start_run("05_moe_prefill", smoke=SMOKE, target=TARGET)
op = ops.get("moe_prefill").on(TARGET, SEED)
dec = ops.get("moe_decode").on(TARGET, SEED)
SHAPE = dict(tp=1, H=512, E=16, inter=192) if SMOKE else dict(tp=TP)
STEP_T, BIG_T = (20, 64) if SMOKE else (20, 512)
SWEEP_T = (1, 20, 64) if SMOKE else (1, 14, 20, 54, 192, 512, 640)
V0_T = (1, 20) if SMOKE else (1, 14, 20, 54)  # v0 emulated here; beyond, its µs extrapolate linearly in T
DEC_T = (1, 8, 20) if SMOKE else (1, 2, 4, 8, 14, 20, 54)
names = [v.name for v in op.versions]
H, INTER = SHAPE.get("H", ops.HIDDEN), ops._rank_inter(SHAPE["tp"], SHAPE.get("inter", ops.MOE_I))


# %%
def checked(v, T, routing="random", ladder=op):
    """Check v at T: error ratio, and MACs = T·8·3·H·I + the blocks' padding (the registry's padding_macs);
    returns (Checked, args, padding slots)."""
    args = ladder.args(T=T, routing=routing, **SHAPE)
    c = ladder.check(v, args=args, T=T, routing=routing, **SHAPE)
    return c, args, c.padding_macs // (3 * H * INTER)


def profiles(v, c, T, ladder=op, trace_path=False):
    """{target: ProfileResult} of one trace (Perfetto file for the notebook's target when asked)."""
    return {tg: ladder.profile(v, target=tg, trace=c.trace, trace_path=trace_path and tg == TARGET, T=T,
                               **SHAPE) for tg in TARGETS}


# %%
def bytes_vs_min(c, args):
    """Expert weight bytes read ÷ the touched experts' weights once."""
    touched = ops.moe_touched(args[1])
    return ops.moe_expert_read_bytes(c.trace) / ops.moe_weight_bytes(1, SHAPE["tp"], touched, H,
                                                                     SHAPE.get("inter", ops.MOE_I))


EST = {}  # (version, T, target) -> ProfileResult
INFO = {}  # (version, T) -> (bytes ÷ min, padding slots, error ratio)

# %% [markdown]
# ## Reference
# `ops.moe_decode` is the layer's maths at any T: `moe_experts` (HF's dispatch: pairs grouped by expert, each
# expert's weights read once) then `moe_combine` (ascending expert order, bf16 rounding after each add).

# %%
ref_args = op.args(T=BIG_T, **SHAPE)
t0 = time.perf_counter()  # the reference alone (its fp32 widening included), not the inputs' generation
ref_y = op.expected(ref_args, "bf16")[0]
REF_S = time.perf_counter() - t0
print(f"reference (bf16 mode) at T={BIG_T}: {REF_S:.2f} s, y[0, :4] = {ref_y[0, :4]}")

# %% [markdown]
# ## v0 · per token: the decode kernel's selective GEMVs
# moe_decode_v4's loop for every (token, slot) pair, any T ≤ 640: each pair loads its expert by indirect DMA
# (4 pairs ahead), 4 slots per core. An expert chosen by n pairs is read n times: T·8 experts' bytes.

# %%
c, args, pad = checked("v0", STEP_T)
print(op.source("v0")[:1500], "…")
print(c.message)
EST.update({("v0", STEP_T, tg): p for tg, p in profiles("v0", c, STEP_T, trace_path=True).items()})
INFO["v0", STEP_T] = (bytes_vs_min(c, args), pad, c.ratio)
print(EST["v0", STEP_T, TARGET].summary())

# %% [markdown]
# v0 streams one expert per pair: its bytes are T·8 experts' (printed: × the touched experts'), DMA-bound from
# the first token on; its time grows linearly in T.

# %%
print(f"v0 T={STEP_T}: expert bytes read = {INFO['v0', STEP_T][0]:.2f}x the touched experts' weights")


# %% [markdown]
# ## v1 · grouped on device: every expert's weights read once
# The router's one-hot counts, a prefix sum over the experts for each group's offset and a scatter of
# (token, weight) into expert-contiguous slots build the grouped order on device (as router_v2 does in
# notebook 03); then a static loop over the E experts: weights in (gate|up one 12 KiB run per partition), a
# dynamic loop over ceil(c_e / 128) tiles of its tokens (gathered by indirect DMA, PE-transposed),
# weights-stationary GEMMs, w_k applied at the PSUM eviction, rows stored by slot; the combine gathers each
# token's 8 rows and sums them.

# %%
def rung(v, T=STEP_T, show=True):
    """One rung: source (first lines), check, profiles on both chips; records EST and INFO."""
    c, args, pad = checked(v, T)
    if show:
        print(op.source(v)[:1200], "…")
    print(c.message, f"| padding slots {pad} | expert bytes {bytes_vs_min(c, args):.3f}x the touched")
    EST.update({(v, T, tg): p for tg, p in profiles(v, c, T, trace_path=show).items()})
    INFO[v, T] = (bytes_vs_min(c, args), pad, c.ratio)
    return c


c1 = rung("v1")
print(EST["v1", STEP_T, TARGET].summary())

# %% [markdown]
# v1 reads every expert once — including the ones no token chose (the static loop) — and pads each expert's
# last tile to 128 slots: at small T most of its matmul columns are padding.
#
# ## v2 · blocks of 64 slots, one dynamic loop over the blocks in use (NxDI's blockwise layout)
# A block → expert table (block b's expert = the number of experts whose blocks end at or before b, computed
# with the experts on the partitions) and one `nl.dynamic_range` over the Σ_e ceil(c_e / 64) blocks in use: an
# expert without tokens has no block (no DMA, no matmul), padding < 64 slots per expert. An expert spanning
# several blocks is read once per block.

# %%
c2 = rung("v2")
print(EST["v2", STEP_T, TARGET].summary())

# %% [markdown]
# ## v3 · LNC=2: the blocks interleaved between the cores
# Block b runs on core b mod 2 (a dynamic loop of step 2: the cores' counts differ by at most one block
# whatever the routing); both cores build the counts and the block table, each scatters half of the token
# tiles into the shared slot table (two core barriers), and each core combines one half of H. Splitting I
# instead would send a [64, 2048] fp32 partial per block across the cores.

# %%
c3 = rung("v3")
print(EST["v3", STEP_T, TARGET].summary())

# %% [markdown]
# ## v4 · the DMA side: the next block's weights in flight, all 16 engines busy
# The weight DMAs of this core's next block are issued before this block's gather and compute (two weight
# buffers in flight); the 64-row down chunk (I = 192) lands on partitions 64-127 (its act computed there by
# `tile_position`), so DMA engines 8-15 carry it while the 64-row token gather and output store run on
# engines 0-7. Every weight descriptor is a 4-12 KiB row.

# %%
c4 = rung("v4")
print(EST["v4", STEP_T, TARGET].summary())

# %% [markdown]
# ## v5 · no dependent small DMA behind the bulk
# v4's schedule at T = 512 (printed below, after every version has run there): the next block's expert id and
# table rows went out after 2.36 MB of weights on the same DMA engines, so the weights after them waited
# ≈ 3 µs per block; and the routing table was written by 8 dependent indirect DMAs per token tile (≈ 2 µs of
# fixed latency each, serialised across the cores through the shared table). v5 fetches the next block's rows
# and token gather one block ahead, the expert id two ahead before the next weights, and writes each token
# tile's 8·128 table entries with one indirect DMA (an index per pair).

# %%
c5 = rung("v5")
print(EST["v5", STEP_T, TARGET].summary())

# %% [markdown]
# ## v6 · the DMA engines balanced
# With B = 64, the token gather, the output store and the 64-row down chunk each use 8 of the 16 DMA engines:
# v4/v5 put the gather and the store on engines 0-7 and the chunk on 8-15 (≈ 9.3 against 7.7 µs per block).
# v6's down projection writes column half h of the block's output on partitions 64h … 64h + 63
# (`tile_position`), so the store is one [128, H/2] transfer on all 16 engines (2 KiB rows).

# %%
c6 = rung("v6")
print(EST["v6", STEP_T, TARGET].summary())

# %% [markdown]
# ## v7 · the combine's running sum in PSUM
# After the last block each core sums 8 gathered rows per token in fp32: 7 vector adds of [128, H/2] per
# token tile, at 2N cycles with both operands in SBUF ([ISA-OLD]). With the sum in PSUM each add reads one
# PSUM and one SBUF operand (N cycles): the combine is bound by its gathers. The same adds in the same order.

# %%
c7 = rung("v7")
print(EST["v7", STEP_T, TARGET].summary())

# %% [markdown]
# ## Checks of the final version
# Ragged T (not a multiple of the block), an empty expert (routing "half": experts E/2 … E − 1 get no token:
# none of their bytes is read), one hot expert (every token's slot 0 is expert 0), tied routing (equal logits:
# experts 0 … 7 at weight 1/8 for every token).

# %%
for routing, T in (("half", STEP_T), ("ties", STEP_T), ("hot", 54)):
    c, args, pad = checked(op.final.name, T, routing)
    print(f"{routing:5s} T={T}: {c.message}; padding {pad}; expert bytes {bytes_vs_min(c, args):.3f}x")
    if routing == "half":
        assert bytes_vs_min(c, args) == 1.0  # the empty experts cost no byte

# %% [markdown]
# ## Every version at T = BIG_T (512: the competition's longest prompt)
# v0 is not emulated this far (T·8 = 4096 pairs); its time is extrapolated linearly from its emulated points
# (it is T·8 identical pairs), and marked so.

# %%
for v in names[1:]:
    rung(v, BIG_T, show=False)
for T in V0_T:
    if ("v0", T) not in INFO:
        c, args, pad = checked("v0", T)
        EST.update({("v0", T, tg): p for tg, p in profiles("v0", c, T).items()})
        INFO["v0", T] = (bytes_vs_min(c, args), pad, c.ratio)

# %% [markdown]
# Where the time goes at T = BIG_T on the notebook's target, core 0 (estimates): the routing before the
# first weight DMA, the block loop, the combine after the last matmul, and the mean busy µs of DMA engines 0-7
# and 8-15.

# %%
def phase_us(v, T=BIG_T, tg=TARGET):
    """(routing, loop, combine, engines 0-7 busy, engines 8-15 busy) µs on core 0."""
    s, recs = EST[v, T, tg].schedule, list(EST[v, T, tg].trace)
    mine = [i for i in range(len(recs)) if s.pid[i] == 0]
    w_dmas = [i for i in mine if recs[i].engine == "dma" and any(a.alloc == 4 for a in recs[i].accesses)]
    w0 = min(s.start[i] for i in w_dmas)  # the first expert weight DMA
    mm = max(s.end[i] for i in mine if recs[i].opcode == "nc_matmul")
    busy = [np.mean([s.dma_engines_busy_ns[0, e] for e in half]) / 1e3 for half in (range(8), range(8, 16))]
    return w0 / 1e3, (mm - w0) / 1e3, s.latency_ns / 1e3 - mm / 1e3, *busy


PHASES = {v: phase_us(v) for v in names[4:]}
print(format_table([(v, *p) for v, p in PHASES.items()],
                   ["version", "routing µs", "loop µs", "combine µs", "DMA 0-7 busy µs", "DMA 8-15 busy µs"]))

# %%
V0_FIT = {tg: np.polyfit(V0_T[-2:], [EST["v0", T, tg].latency_us for T in V0_T[-2:]], 1) for tg in TARGETS}


def v0_us(T, tg):
    """v0's estimate: emulated where it was, else the line through its two largest emulated T."""
    return EST["v0", T, tg].latency_us if ("v0", T, tg) in EST else float(np.polyval(V0_FIT[tg], T))


def us_at(v, T, tg):
    """Estimated µs of version v at T (v0 extrapolated beyond its emulated T)."""
    return v0_us(T, tg) if v == "v0" else EST[v, T, tg].latency_us


# %% [markdown]
# ## The T sweep of the final version, and the crossover against the decode kernel
# The final version at every T of the sweep (each emulated once, costed on both chips); notebook 04's final
# decode kernel (moe_decode_v4, T ≤ 128) at small T: below the crossover its selective loads win.

# %%
for T in SWEEP_T:
    if (op.final.name, T) not in INFO:
        rung(op.final.name, T, show=False)
DEC = {}
for T in DEC_T:
    c = dec.check(dec.final, T=T, **SHAPE)
    DEC.update({(T, tg): p.latency_us for tg, p in profiles(dec.final.name, c, T, ladder=dec).items()})
    if (op.final.name, T) not in INFO:
        rung(op.final.name, T, show=False)

# %%
fin = op.final.name
faster = {tg: [T for T in DEC_T if EST[fin, T, tg].latency_us < DEC[T, tg]] for tg in TARGETS}
CROSS = {tg: min(f, default=None) for tg, f in faster.items()}
Ts = sorted({*SWEEP_T, *DEC_T})
rows = [(T, DEC.get((T, TARGET), float("nan")), EST[fin, T, TARGET].latency_us,
         EST[fin, T, TARGET].roofline_us, v0_us(T, TARGET), INFO[fin, T][0]) for T in Ts]
print(format_table(rows, ["T", "decode v4 µs", f"prefill {fin} µs", "floor µs", "v0 µs", "bytes/min"]))
print("crossover (smallest T where the prefill kernel is faster):", CROSS)
if not SMOKE:  # the switch the assembled model (notebook 07) uses is this notebook's trn2 crossover
    from nki_moe.model.assembled import MOE_PREFILL_MIN_TOKENS

    assert CROSS["trn2"] == MOE_PREFILL_MIN_TOKENS, (CROSS, MOE_PREFILL_MIN_TOKENS)

# %% [markdown]
# ## Plots
# Left: estimated µs vs T of the decode kernel, v0 (dashed where extrapolated) and the final prefill version
# beside its floor, both chips. Right: the per-version estimates at T = STEP_T and BIG_T (trn2) as a share of
# the floor. All estimates.

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
for tg in TARGETS:  # colour and marker: the kernel; solid trn2, dotted trn3
    ls = "-" if tg == "trn2" else ":"
    series = ((f"decode {dec.final.kernel}", DEC_T, [DEC[T, tg] for T in DEC_T]),
              (f"{op.versions[0].kernel} (> {V0_T[-1]}: extrapolated)", Ts, [v0_us(T, tg) for T in Ts]),
              (op.final.kernel, SWEEP_T, [EST[fin, T, tg].latency_us for T in SWEEP_T]))
    for k, (label, xs, ys) in enumerate(series):
        axes[0].plot(xs, ys, label=f"{label} {tg}", **{**series_style(k), "ls": ls})
    floor = [EST[fin, T, tg].roofline_us for T in SWEEP_T]
    axes[0].plot(SWEEP_T, floor, ls, color="k", lw=1, label=f"floor {tg}")
axes[0].set(xscale="log", yscale="log", xlabel="tokens T", ylabel="µs (estimate)", title="MoE layer vs T")
axes[0].legend(fontsize=7)
for k, T in enumerate((STEP_T, BIG_T)):
    floor = [EST[v if (v, T) in INFO else fin, T, "trn2"].roofline_us for v in names]  # v0: LNC=2 as fin
    pct = [100 * f / us_at(v, T, "trn2") for v, f in zip(names, floor)]
    axes[1].bar(np.arange(len(pct)) + 0.4 * k, pct, 0.4, label=f"T={T}", color=series_style(k)["color"])
axes[1].set(xticks=np.arange(len(names)) + 0.2, xticklabels=names, ylabel="% of the floor (trn2, estimate)",
            title="every version: floor ÷ estimate (v0 at T = BIG_T: extrapolated)")
axes[1].legend(fontsize=8)
fig.suptitle(f"MoE prefill, TP={SHAPE['tp']}, I={INTER}: cost-model estimates")
SW_COLS = {"T": [r[0] for r in rows], "decode_us": [r[1] for r in rows], "prefill_us": [r[2] for r in rows],
           "floor_us": [r[3] for r in rows], "v0_us": [r[4] for r in rows]}
save_figure(fig, "05_moe_prefill_sweep", SW_COLS)

# %% [markdown]
# ## Takeaways
# Printed from the estimates (cost model, not measurements): the per-version table at T = STEP_T and BIG_T on
# both chips, the final version's ratio to its floor at BIG_T (the goal: 1.3×), where it beats v0.
# Asserted: a crossover against the decode kernel exists on both chips; v2+ read every touched expert once at
# T = STEP_T; from the crossover on, the final version beats v0 at every T of the sweep; (full run) the final
# version within 1.3x of its floor at BIG_T on trn2.

# %%
table = [(v, op.version(v).lnc, *(us_at(v, T, tg) for T in (STEP_T, BIG_T) for tg in TARGETS),
          INFO[v, BIG_T][0] if (v, BIG_T) in INFO else float("nan")) for v in names]
print(format_table(table, ["version", "LNC", f"T={STEP_T} trn2 µs", "trn3 µs", f"T={BIG_T} trn2 µs",
                           "trn3 µs", f"bytes/min T={BIG_T}"]))
gap = {tg: EST[fin, BIG_T, tg].latency_us / EST[fin, BIG_T, tg].roofline_us for tg in TARGETS}
print(f"{op.final.kernel} T={BIG_T}: " + ", ".join(f"{tg} {EST[fin, BIG_T, tg].latency_us:.1f} µs = {g:.2f}x "
                                                  f"its floor" for tg, g in gap.items()))
beats = {tg: [T for T in SWEEP_T if EST[fin, T, tg].latency_us < v0_us(T, tg)] for tg in TARGETS}
print(f"{op.final.kernel} beats v0 at T = {beats}; the issue's goal (1.3x of the floor at T = {BIG_T}) is "
      f"{'met' if gap['trn2'] <= 1.3 else 'missed'} on trn2")
assert all(c is not None for c in CROSS.values()) and all(INFO[v, STEP_T][0] == 1.0 for v in names[2:])
if not SMOKE:  # issue 15's goal, met by the final version on trn2 (estimate)
    assert gap["trn2"] <= 1.3, gap
assert all(T in beats[tg] for tg in TARGETS for T in SWEEP_T if T >= CROSS[tg])

# %%
t0 = time.perf_counter()
op.run(op.final, ref_args)
EMU_S = time.perf_counter() - t0
print(f"emulated {op.final.kernel} at T={BIG_T}: {EMU_S:.1f} s = {EMU_S / REF_S:.1f}x the NumPy reference "
      f"({REF_S:.2f} s)")

# %% [markdown]
# ## Closing note
# The table above holds every version's estimate at T = STEP_T and BIG_T (v0 beyond its emulated T:
# extrapolated) and the sweep table the crossover: below it the assembled model should run notebook 04's
# selective decode kernel for a prompt, from it on this prefill kernel. Where v4's time went at large T: DMA
# fixed costs (the routing table's dependent scatters, the ids and rows queued behind the weights), 64-row
# transfers on half of the DMA engines and a combine bound by its fp32 adds (the phase table above; the
# Perfetto traces under build/traces/), not the PE; v5-v7 remove one each. Not built: issue 15's v5 (the
# combine fused into the down projection's epilogue; see the kernel module's header for why a DMA
# read-modify-write costs more DMA time than the combine it removes and would not keep v4's output bit for
# bit).

# %%
results.record("05_moe_prefill", {
    "estimated_by": "nki_moe cost model", "final_version": fin, "lnc": op.final.lnc, "tp": SHAPE["tp"],
    "per_version_us": {f"{v}_T{T}_{tg}": p.latency_us for (v, T, tg), p in EST.items()},
    "v0_T512_extrapolated_us": {tg: v0_us(BIG_T, tg) for tg in TARGETS},
    "final_over_floor_T_big": gap, "floor_us": {f"T{T}_{tg}": EST[fin, T, tg].roofline_us for T in SWEEP_T
                                                for tg in TARGETS},
    "decode_us": {f"T{T}_{tg}": d for (T, tg), d in DEC.items()}, "crossover_T": CROSS,
    "bytes_over_min": {f"{v}_T{T}": b for (v, T), (b, _, _) in INFO.items()},
    "padding_slots": {f"{v}_T{T}": pad for (v, T), (_, pad, _) in INFO.items()},
    "emulated_over_reference_wall": EMU_S / REF_S, "final_beats_v0_at_T": beats})
