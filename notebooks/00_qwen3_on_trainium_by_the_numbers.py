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
# # 00 · Size up Qwen3-30B-A3B on Trainium by the numbers
# Parameters, bytes, MACs and arithmetic intensity of the model, next to the cited Trn2/Trn3 specs,
# the HBM floor of a decode token, and the competition's baselines and scoring.
#
# ## What & why
# - Qwen3-30B-A3B stores 30.5 B parameters but a token touches only 3.35 B of them: 8 of 128 experts in
#   each of 48 layers. Decoding one token at batch 1 reads ≈ 6.1 GB of bf16 weights for ≈ 6.1 GFLOP,
#   an arithmetic intensity of ≈ 1 FLOP/byte.
# - A Trn2 chip balances 667 TFLOP/s of BF16 against 2.9 TB/s of HBM (≈ 230 FLOP/byte); Trn3 671 against
#   4.9 TB/s (≈ 137). Decode is therefore HBM-bound by two orders of magnitude: its floor is
#   bytes / bandwidth ≈ 2.1 ms (Trn2) and ≈ 1.25 ms (Trn3) per token.
# - Prefill does not escape: after a few dozen tokens it touches nearly all 128 experts per layer
#   (E·(1 − (1 − k/E)^S)), so even a 640-token prefill stays at ≈ 60 FLOP/byte, below the BF16 ridge.
# - Published measurements (10.6 ms Trn2 XLA, 14.4 ms Trn3 XLA, 8.15 ms Trn3 NKI megakernel) sit 5–11.5×
#   above that floor: the gap is what NKI kernels can win, and what the competition score rewards.
# - Every number below comes from a tested function of `nki_moe` (model.counts, perf.hardware,
#   competition); the notebook narrates and plots.
# - Terms (TKG, CTE, LNC, MBU, MFU, HBM floor …): [docs/glossary.md](../docs/glossary.md). New to NKI?
#   Start with `00a_first_kernel.py`.

# %% tags=["parameters"]
SMOKE = False
TARGET = "trn2"
SEED = 0
DECODE_CONTEXT = 640

# %% [markdown]
# ## Setup
# Nothing here is random or expensive; `SEED` is kept for the template, `SMOKE` only shortens one sweep.

# %%
import matplotlib.pyplot as plt

from nki_moe import paths, results
from nki_moe.competition import BASELINES, FIRST_PLACE_TRN3, PROMPTS, SEQ_LEN, submission_scores
from nki_moe.figures import save_figure
from nki_moe.model import counts
from nki_moe.model.config import get_config
from nki_moe.perf import calibration
from nki_moe.perf.calibration import (
    FITS,
    FITTED_KEYS,
    KNOWN_MISSES,
    LADDER_GOALS,
    MEASUREMENTS,
    calibration_table,
    error_stats,
    ladder_stats,
    plot_calibration,
    plot_predicted_vs_published,
    split_stats,
    tutorial_available,
)
from nki_moe.perf.hardware import HARDWARE, SCOPES, get_hardware
from nki_moe.perf.published import QWEN3_DECODE_MEASURED
from nki_moe.perf.roofline import RooflinePoint, decode_step_floor, memory_time, plot_roofline
from nki_moe.plots import plot_bytes_breakdown, plot_decode_floor_vs_measured
from nki_moe.tables import concat_columns, format_table

# %%
paths.start_run("00_qwen3_on_trainium_by_the_numbers", smoke=SMOKE, target=TARGET)  # decides where outputs go
cfg = get_config("qwen3-30b-a3b")
hw = get_hardware(TARGET)
CHIPS = {name: get_hardware(name) for name in ("trn2", "trn3")}
PREFILL_S = (20, 192, 512, 640)  # the prompt tokens of prompts 0, 1 and 4, and the full sequence length
SWEEP_S = (1, 20, 192, 640) if SMOKE else (1, 2, 4, 8, 14, 20, 54, 192, 512, 640, 2048)

# %% [markdown]
# ## The model
# Every field of the Hugging Face config.json is explicit in `ModelConfig` ([QWEN3-CONFIG]). The ones
# that matter for counting: note `head_dim` = 128 although hidden / heads = 64.

# %%
fields = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
          "num_experts", "num_experts_per_tok", "moe_intermediate_size", "vocab_size", "norm_topk_prob",
          "rope_theta", "max_position_embeddings", "tie_word_embeddings", "dtype")
print(format_table([(f, getattr(cfg, f)) for f in fields], ["field", cfg.name], floatfmt="g"))

# %%
total, active = counts.total_params(cfg), counts.active_params(cfg)
parts, active_parts = counts.param_breakdown(cfg), counts.active_param_breakdown(cfg)
rows = [(p, n, 100 * n / total, active_parts[p]) for p, n in parts.items()]
rows.append(("total", total, 100.0, active))
print(format_table(rows, ["part", "params", "% of total", "active per token"], floatfmt=".2f"))
assert total == 30_532_122_624 and round(total / 1e9, 1) == 30.5  # model card: 30.5 B
assert active == 3_353_032_704 and round(active / 1e9, 1) == 3.4  # card: "3.3B activated" (3.35 B)
assert round((total - parts["embed_tokens"] - parts["lm_head"]) / 1e9, 1) == 29.9  # card: non-embedding

# %% [markdown]
# ## Work per token: MACs, bytes, arithmetic intensity
# MACs (derived from [QWEN3-CONFIG]): 3,041,656,832 + 393,216·T per decode token attending T positions.
# Attention over the context is a small share at the competition's lengths (T ≤ 640).

# %%
rows = [(t, counts.decode_macs(cfg, t), 100 * 393_216 * t / counts.decode_macs(cfg, t),
         counts.decode_arithmetic_intensity(cfg, t)) for t in (1, 20, 640, 4096, 40960)]
print(format_table(rows, ["context T", "decode MACs", "attention %", "FLOP/byte"], floatfmt=".2f"))
assert counts.decode_macs(cfg, DECODE_CONTEXT) == 3_041_656_832 + 393_216 * DECODE_CONTEXT
rows = [(s, counts.prefill_macs(cfg, s) / 1e9, counts.prefill_macs(cfg, s, last_token_logits_only=True) / 1e9)
        for s in PREFILL_S]
print(format_table(rows, ["prefill S", "GMAC (all logits)", "GMAC (last-token logits)"], floatfmt=",.1f"))

# %% [markdown]
# A prefill reads each weight once for all S tokens, but it touches many more experts than a decode
# token: under uniform routing the expected distinct experts per layer is E·(1 − (1 − k/E)^S), which
# reaches ≈ 93 of 128 at S = 20 (prompt 0) and is within 0.001 of 128 from S = 183. Real routers are not
# uniform, so this is an upper estimate of the expert bytes.

# %%
rows = [(s, counts.expected_distinct_experts(cfg, s), sum(counts.prefill_bytes(cfg, s).values()) / 1e9,
         counts.prefill_arithmetic_intensity(cfg, s)) for s in SWEEP_S]
print(format_table(rows, ["tokens S", "E[distinct experts]", "HBM GB", "FLOP/byte"], floatfmt=".2f"))
assert counts.expected_distinct_experts(cfg, 1) == 8 and counts.expected_distinct_experts(cfg, 183) > 127.999

# %% [markdown]
# Bytes of one decode token by op family (bf16 weights, plus the KV cache read at T = `DECODE_CONTEXT`).
# The experts are ≈ 59 % of it, the attention projections ≈ 29 %, the LM head ≈ 10 %.

# %%
weights = counts.decode_weight_bytes(cfg)
decode = counts.decode_bytes(cfg, DECODE_CONTEXT)
decode_total = sum(decode.values())
rows = [(f, b, 100 * b / decode_total) for f, b in decode.items()] + [("total", decode_total, 100.0)]
print(format_table(rows, ["family", "bytes", "%"], floatfmt=".2f"))
assert sum(weights.values()) == 6_083_739_648
# The usual napkin estimate (derived) counts ≈ 6.05 GB: experts + attention + LM head (no router, norms)
assert abs((weights["experts"] + weights["attention"] + weights["lm_head"]) / 1e9 - 6.05) < 0.01
assert counts.kv_cache_bytes_per_token(cfg) == 98_304

# %% [markdown]
# ## The hardware
# Cited figures (`nki_moe.perf.hardware`; source tags in the module). A logical core is 2 physical
# cores (LNC=2); the chip rows use the published chip peaks, which exceed 8 × the per-core figure
# (Trn2 BF16 667 vs 632 TFLOP/s). Trn1 is kept for calibration only. Trn3's FP8 column is the MXFP8 figure.

# %%
rows = []
for h in HARDWARE.values():
    fp8 = "mxfp8" if "mxfp8" in h.tensor_tflops_chip else "fp8"
    for scope in SCOPES:
        rows.append((h.name, scope, h.cores(scope), h.peak_flops("bf16", scope) / 1e12,
                     h.peak_flops(fp8, scope) / 1e12, h.hbm_bandwidth(scope) / 1e9,
                     h.machine_balance("bf16", scope), h.sbuf_bytes(scope, usable=True) / 2**20,
                     h.dma_bandwidth(scope) / 1e9))
headers = ["chip", "scope", "cores", "BF16 TF/s", "FP8 TF/s", "HBM GB/s", "BF16 FLOP/B", "SBUF MiB usable",
           "DMA GB/s"]
print(format_table(rows, headers, floatfmt=",.1f"))
assert [round(h.machine_balance("bf16")) for h in CHIPS.values()] == [230, 137]  # [T2-ARCH], [T3-ARCH]

# %% [markdown]
# Inside one physical core of the `TARGET` chip: engine clocks and widths, on-chip memory per partition
# (usable = what a kernel may allocate) and the DMA figures a kernel cost model starts from.

# %%
rows = [(name, e.clock_ghz, e.elems_per_cycle_bf16, e.elems_per_cycle_fp32) for name, e in hw.engines.items()]
print(format_table(rows, ["engine", "GHz", "elem/cycle 16-bit", "elem/cycle 32-bit"], floatfmt="g",
                   title=f"{TARGET}: engines of one {hw.core_name}"))
rows = [("SBUF bytes per partition", hw.sbuf_bytes_per_partition, hw.sbuf_usable_bytes_per_partition),
        ("SBUF bytes per core", hw.sbuf_bytes("core"), hw.sbuf_bytes("core", usable=True)),
        ("PSUM bytes per partition", hw.psum_bytes_per_partition, hw.psum_bytes_per_partition),
        ("PSUM banks", hw.psum_banks, hw.psum_banks),
        ("DMA engines per core", hw.dma_engines_per_core, hw.dma_engines_per_core),
        ("DMA GB/s per engine", hw.dma_gbs_per_engine, hw.dma_gbs_per_engine),
        ("DMA fixed cost, µs (derived)", hw.dma_fixed_cost_us(), hw.dma_fixed_cost_us())]
print(format_table(rows, ["per core", "physical", "usable"], floatfmt="g"))

# %% [markdown]
# ## Decode floor vs published measurements
# Floor = bytes per decode token / chip HBM bandwidth; the "alt" column uses the conflicting bandwidth of
# the NKI architecture guides (3.0 TB/s Trn2, 4.7 TB/s Trn3). Measured points are TKG step times at batch 1
# ([SNU], [MEGA]), all running the model on one chip at TP=4.

# %%
floors_ms = {n: 1e3 * memory_time(decode_total, h) for n, h in CHIPS.items()}
floors_alt_ms = {n: 1e3 * decode_total / (h.hbm_tbs_alt * 1e12) for n, h in CHIPS.items()}
rows = [(n, floors_ms[n], floors_alt_ms[n], m.label, m.ms_per_token, m.ms_per_token / floors_ms[n], m.source)
        for n in CHIPS for m in QWEN3_DECODE_MEASURED if m.hardware == n]
print(format_table(rows, ["chip", "floor ms", "alt floor ms", "measured", "ms/token", "× floor", "source"],
                   floatfmt=".2f"))
assert 2.0 < floors_ms["trn2"] < 2.2 and 1.2 < floors_ms["trn3"] < 1.3
over_floor = {f"{m.hardware} {m.label}": m.ms_per_token / floors_ms[m.hardware]
              for m in QWEN3_DECODE_MEASURED}
# Against 6.05 GB the measured steps are 5–12× above the HBM roofline; with router, norms and the KV cache
# at T = 640 the Trn2 ratio is 4.98
assert all(4.5 < r < 12 for r in over_floor.values())

# %% [markdown]
# The HBM floor leaves out a cost every TP deployment pays: each layer ends attention and the MoE with an
# all-reduce across the 4 ranks, 96 per token. The collective model (`nki_moe.perf.collectives`, one fitted
# launch constant, see docs/cost-model.md) puts each at ≈ 12 µs on Trn2, so the step's floor at TP = 4 is the
# HBM term plus ≈ 1.15 ms of all-reduces (an estimate, not a measurement).

# %%
step_floor = {n: decode_step_floor(decode_total, h, tokens=1, hidden=cfg.hidden_size,
                                   layers=cfg.num_hidden_layers, tp=4) for n, h in CHIPS.items()}
step_floor_ms = {n: {"hbm": 1e3 * f.memory_s, "collectives": 1e3 * f.collective_s, "total": 1e3 * f.total_s}
                 for n, f in step_floor.items()}
rows = [(n, d["hbm"], d["collectives"], d["total"]) for n, d in step_floor_ms.items()]
print(format_table(rows, ["chip", "HBM ms", "96 all-reduces ms", "step floor ms"], floatfmt=".2f"))
assert abs(step_floor_ms["trn2"]["hbm"] - floors_ms["trn2"]) < 1e-9  # the same HBM term as above
assert 1.1 < step_floor_ms["trn2"]["collectives"] < 1.2  # 96 × ≈ 12 µs
over_step_floor = {f"{m.hardware} {m.label}": m.ms_per_token / step_floor_ms[m.hardware]["total"]
                   for m in QWEN3_DECODE_MEASURED}
print("published measurements over the step floor: "
      + ", ".join(f"{k} {x:.1f}×" for k, x in over_step_floor.items()))
assert all(2.5 < r < 8 for r in over_step_floor.values())

# %% [markdown]
# ## Figures
# (a) Roofline of one chip. Model phases are placed on the BF16 roof at their arithmetic intensity:
# decode and every prefill length sit on the HBM slope, left of the ridge.

# %%
decode_ai = counts.decode_arithmetic_intensity(cfg, DECODE_CONTEXT)
points = [RooflinePoint(f"decode (T={DECODE_CONTEXT}): {decode_ai:.2f} FLOP/B", decode_ai, marker="*",
                        color="tab:red")]
for s, m, c in zip(PREFILL_S, "osD^", ("tab:orange", "tab:green", "tab:purple", "tab:brown")):
    ai = counts.prefill_arithmetic_intensity(cfg, s)
    points.append(RooflinePoint(f"prefill S={s}: {ai:.1f} FLOP/B", ai, marker=m, color=c))
fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True, layout="constrained")
data = concat_columns(plot_roofline(axes[0], CHIPS["trn2"], points, dtypes=("bf16", "fp8")),
                      plot_roofline(axes[1], CHIPS["trn3"], points, dtypes=("bf16", "mxfp8")))
for ax in axes:
    ax.legend(loc="lower right", fontsize=7.5)
axes[1].set_ylabel("")
fig.suptitle("Qwen3-30B-A3B (bf16, batch 1) at its roofline bound on one Trn2 / Trn3 chip (estimate)")
save_figure(fig, "00_roofline", data=data)

# %% [markdown]
# (b) Decode ms/token: the HBM floor (an estimate, with the conflicting-bandwidth range as error bar)
# against published measurements.

# %%
fig, ax = plt.subplots(figsize=(7.5, 4.8))
per_token = f"{decode_total / 1e9:.2f} GB/token"
data = plot_decode_floor_vs_measured(ax, floors_ms, QWEN3_DECODE_MEASURED, floors_alt_ms,
                                     subject=f"Qwen3-30B-A3B decode, batch 1 ({per_token})")
save_figure(fig, "00_decode_floor_vs_measured", data=data)

# %% [markdown]
# (c) Where the bytes of a decode token go.

# %%
fig, ax = plt.subplots(figsize=(8, 3.8))
data = plot_bytes_breakdown(ax, decode, subject=f"Qwen3-30B-A3B bf16, context T = {DECODE_CONTEXT}")
save_figure(fig, "00_decode_bytes_breakdown", data=data)

# %% [markdown]
# ## The competition
# Five prompts, each generated to 640 tokens in total; score per prompt =
# accuracy × (base latency / latency) × (throughput / base throughput) × (1 + NKI MAC ratio).
# Published baselines ([MOE-REPO] prompt CSVs): the Trn3 baseline is ~1.3–1.4× slower than the Trn2 one.
# The CSVs' "Context Length" (18 / 126 / 43 / 10 / 402) counts whitespace-separated words; the harness
# tokenizes the prompts with the Qwen3 tokenizer: 20 / 192 / 54 / 14 / 512 tokens, so it generates
# 620 / 448 / 586 / 626 / 128 tokens. Only the token counts give every baseline prompt the same cost per
# generated token (the last column; with the word counts prompt 4 would be an outlier).

# %%
rows = [(p.id, p.words, p.context_len, p.generated_tokens, b2.latency_ms, b2.throughput, b3.latency_ms,
         b3.throughput, b3.latency_ms / b2.latency_ms, b2.latency_ms / p.generated_tokens)
        for p, b2, b3 in zip(PROMPTS, BASELINES["trn2"], BASELINES["trn3"])]
print(format_table(rows, ["prompt", "words", "tokens", "generated", "trn2 ms", "trn2 tok/s", "trn3 ms",
                          "trn3 tok/s", "trn3/trn2", "trn2 ms/gen. token"], floatfmt=",.2f"))
base_ms_per_token = {n: BASELINES[n][0].latency_ms / PROMPTS[0].generated_tokens for n in CHIPS}
print({n: round(v, 2) for n, v in base_ms_per_token.items()}, "ms per generated token (prompt 0, e2e)")
assert all(p.context_len + p.generated_tokens == SEQ_LEN for p in PROMPTS)

# %% [markdown]
# The published 1st-place Trn3 results, re-scored with `competition.score`: the published scores come
# out exactly with ordinary rounding to 2 decimals.

# %%
scores = submission_scores(FIRST_PLACE_TRN3)
rows = [(i, lat, tp, s, pub) for i, (lat, tp, s, pub) in enumerate(zip(
    FIRST_PLACE_TRN3.latency_ms, FIRST_PLACE_TRN3.throughput, scores, FIRST_PLACE_TRN3.published_scores))]
print(format_table(rows, ["prompt", "latency ms", "tok/s", "score (ours)", "score (published)"],
                   floatfmt=".4g"))
assert [round(s, 2) for s in scores] == list(FIRST_PLACE_TRN3.published_scores)
first_ms_per_token = FIRST_PLACE_TRN3.latency_ms[0] / PROMPTS[0].generated_tokens
assert 6 < first_ms_per_token < 7  # derived from [WIN1]: ≈ 6.5 ms per generated token

# %% [markdown]
# ## How good are the time estimates? — the cost model's calibration
# Every kernel time in later notebooks is an *estimate* of `nki_moe.perf` (published per-instruction costs
# over the emulator's trace). To know how far to trust it, each published kernel measurement ([MEGA] …)
# is re-created as an NKI kernel with the same structure and shapes (`nki_moe.kernels.calibration`),
# or, for the NKI matmul tutorial's Trn1 ladder, the public tutorial kernels are run unmodified, and
# estimated. Goal: median |error| ≤ 25 %, none above 50 %. Two constants are fitted, each on stated points
# (`FITS`: software-DGE time per descriptor on the three MoE latencies; Trn1's sustained HBM share on the
# tutorial's first version): hollow markers; every other point is out of sample.
# SMOKE estimates only the cheap kernels (DMA example, attention block).

# %%
CHEAP = ("dma_1engine", "attn")  # the 2048³ matmuls and the MoE layer take ~15 s more, the tutorial ~2 min
cal = calibration_table([m for m in MEASUREMENTS if (not SMOKE or m.kernel in CHEAP)
                         and (tutorial_available() or not m.kernel.startswith("mmtut_"))])
if not tutorial_available():
    print(f"the Trn1 tutorial ladder is left out: no nki-samples checkout at {calibration.TUTORIAL_ROOT} "
          "(git clone https://github.com/aws-neuron/nki-samples there, or set NKI_SAMPLES / NKI_MOE_EXT)")
print("fitted constants and their points:", FITS)
rows = [(r.measurement.key, r.measurement.hardware, r.measurement.source[:34], r.measurement.measured,
         r.predicted, r.measurement.unit, 100 * r.error, "fit" if r.measurement.key in FITTED_KEYS else "")
        for r in cal]
print(format_table(rows, ["point", "hw", "source", "published", "estimate", "unit", "error %", "in fit"],
                   floatfmt=".4g"))
cal_stats = error_stats(cal)
cal_stats_oos = error_stats([r for r in cal if r.measurement.key not in FITTED_KEYS])
misses = sorted(r.measurement.key for r in cal if abs(r.error) > 0.5)
print({k: round(v, 3) for k, v in cal_stats.items()}, "out of sample:", cal_stats_oos)
assert cal_stats["median_abs_error"] <= 0.25, cal_stats
assert misses == sorted(k for k in KNOWN_MISSES if k in {r.measurement.key for r in cal}), misses

# %% [markdown]
# Six points are *profiler activity* figures ("PE active", "DMA active"), not latencies. They are estimated
# the way the profiler counts activity, not as throughput: each matmul is a LoadStationary plus a
# MultiplyMoving instruction (the latency schedule hides the former), and a DMA is active while its packets
# move ([PROF-SCHEMA]): a hardware-DGE DMA from its first byte, a software-DGE DMA from when its descriptors
# reach the queue (the engines fetch them first). They are the least accurate points (−17 … +32 %;
# docs/cost-model.md).

# %%
fig, ax = plt.subplots(figsize=(9, 0.32 * len(cal) + 1.6))
cal_data = plot_calibration(ax, cal)
fig.tight_layout()
save_figure(fig, "00_cost_model_calibration", data=cal_data)
plt.show()

# %% [markdown]
# ### Held out: do the estimates rank versions right?
# A workbook that helps choose optimisations must above all order a kernel's versions right and get the
# spread between the slowest and the fastest right. Per speed-up ladder (versions of one kernel on one
# chip): median and max |error|, the spread ratio (estimated slowest/fastest ÷ published; < 1 means the
# model compresses the ladder) and Kendall's τ (1 = every pair ordered as published). The figure plots
# every point's estimate against the published value; filled markers are held out, lines join a ladder.

# %%
split = split_stats(cal)
print("in sample:", split["in_sample"], "| out of sample:", split["out_of_sample"])
lstats = ladder_stats(cal)
print(format_table(
    [(name, st["hardware"], st["n"], 100 * st["median_abs_error"], 100 * st["max_abs_error"],
      st["spread_published"], st["spread_predicted"], st["spread_ratio"], st["kendall_tau"],
      ", ".join(st["in_fit"]) or "-") for name, st in lstats.items()],
    ["ladder", "hw", "n", "median %", "max %", "published spread", "est. spread", "ratio", "tau", "fit on"],
    floatfmt=".3g"))
for name, st in lstats.items():
    assert st["kendall_tau"] == LADDER_GOALS["kendall_tau"], (name, st)
    assert abs(st["spread_ratio"] - 1) <= LADDER_GOALS["spread_within"], (name, st)

fig, ax = plt.subplots(figsize=(7, 7))
pvp_data = plot_predicted_vs_published(ax, cal)
fig.tight_layout()
save_figure(fig, "00_cost_model_predicted_vs_published", data=pvp_data)
plt.show()

# %% [markdown]
# ## Takeaways
# - Qwen3-30B-A3B: 30,532,122,624 parameters, 3,353,032,704 active per token; a bf16 decode token reads
#   6.08 GB of weights (+ 98,304 B of KV cache per attended position) for 6.1 GFLOP: ≈ 1 FLOP/byte.
# - Decode is HBM-bound on both chips: the floor is ≈ 2.1 ms/token on Trn2 and ≈ 1.25 ms on Trn3. The
#   measured 10.56 ms (Trn2 XLA), 14.37 ms (Trn3 XLA) and 8.15 ms (Trn3 NKI megakernel) are 5–11.5× above
#   it, so fixed per-layer costs, not bandwidth, dominate today. At the competition's TP = 4 the 96
#   all-reduces add ≈ 1.15 ms (an estimate of the collective model): the step floor is ≈ 3.3 ms on Trn2
#   and ≈ 2.4 ms on Trn3, and the measured steps are 3–6× above it.
# - Prefill touches nearly all 128 experts per layer after a few dozen tokens, so its intensity grows
#   only to ≈ 60 FLOP/byte at 640 tokens: below the BF16 ridge of either chip (230 / 137 FLOP/byte).
# - The competition score multiplies the latency and throughput speed-ups by (1 + NKI MAC ratio); the 1st
#   place (≈ 4.2× on each axis, ratio 0.9929) re-scores to its published 35.48 … 28.97 exactly.
# - The cost model's estimates reproduce 20 published Trn1/Trn2/Trn3 measurements, 16 of them out of
#   sample, with a held-out median |error| of ≈ 7 % and none beyond 50 % (held-out latencies and MFUs
#   within ±14 %; profiler activity figures within −17 … +46 %). Both published speed-up ladders (the
#   2048³ matmul on Trn2, the NKI tutorial's four versions on Trn1) are ranked exactly with their spread
#   within 10 %.

# %%
summary = {
    "params_total": total, "params_active": active,
    "kv_cache_bytes_per_token": counts.kv_cache_bytes_per_token(cfg),
    "decode_weight_bytes": sum(weights.values()), "decode_context": DECODE_CONTEXT,
    "decode_bytes_at_context": decode_total, "decode_flop_per_byte_at_context": decode_ai,
    "prefill_flop_per_byte": {str(s): counts.prefill_arithmetic_intensity(cfg, s) for s in PREFILL_S},
    "machine_balance_bf16_chip": {n: h.machine_balance("bf16") for n, h in CHIPS.items()},
    "decode_floor_ms": floors_ms, "decode_floor_alt_ms": floors_alt_ms, "measured_over_floor": over_floor,
    "decode_step_floor_tp4_ms": step_floor_ms, "measured_over_step_floor": over_step_floor,
    "first_place_scores": scores, "first_place_e2e_ms_per_token_prompt0": first_ms_per_token,
    "cost_model_points": cal_stats["n"], "cost_model_median_abs_error": cal_stats["median_abs_error"],
    "cost_model_max_abs_error": cal_stats["max_abs_error"],
    "cost_model_median_abs_error_out_of_sample": cal_stats_oos["median_abs_error"],
    "cost_model_in_sample": split["in_sample"], "cost_model_out_of_sample": split["out_of_sample"],
    "cost_model_ladders": lstats,
    "cost_model_known_misses": misses,
}
print(f"{total / 1e9:.2f} B parameters, {active / 1e9:.2f} B active per token; a decode token at context "
      f"{DECODE_CONTEXT} reads {decode_total / 1e9:.2f} GB for {decode_ai:.2f} FLOP/byte.")
print("decode floor (estimate from HBM bandwidth): "
      + ", ".join(f"{n} {ms:.2f} ms/token" for n, ms in floors_ms.items()))
print("published measurements over that floor: " + ", ".join(f"{k} {x:.1f}×" for k, x in over_floor.items()))
print("step floor at TP = 4 (HBM + 96 all-reduces, estimate): "
      + ", ".join(f"{n} {d['hbm']:.2f} + {d['collectives']:.2f} = {d['total']:.2f} ms"
                  for n, d in step_floor_ms.items()))
print(f"cost model vs {cal_stats['n']} published points: median |error| {cal_stats['median_abs_error']:.1%}, "
      f"max {cal_stats['max_abs_error']:.1%} (estimates)")
results.record("00_by_the_numbers", summary)
