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
# # 07 · Put the kernels together: the assembled model, end to end
# Parity of the kernel model with the reference and transformers, then the competition's five prompts
# estimated end to end (TTFT, decode step, host term, e2e, throughput, score) on Trn2 and Trn3.
#
# ## What & why
# - The score is ≈ speed-up² × (1 + NKI MAC ratio) per prompt, summed over five prompts (latency and
#   throughput are one e2e measurement): the decode step × the generated tokens dominates, and the host
#   time per token is half of the baseline's e2e (27.6 vs 14.37 ms device on Trn3).
# - Napkin math, one decode token at TP = 4: 6.1 GB of weights at the chip's 2.9 TB/s (Trn2) = 2.12 ms, plus
#   96 all-reduces of 4 KiB at ≈ 12 µs = 1.15 ms: a 3.27 ms floor (2.41 ms on Trn3, notebook 00).
# - The prompts are 20 / 192 / 54 / 14 / 512 TOKENS (the CSVs' 18 / 126 / 43 / 10 / 402 count words), so the
#   harness generates 620 / 448 / 586 / 626 / 128 tokens to reach 640.
# - Every time is an ESTIMATE of the nki_moe cost model (one emulated layer per distinct shape × 48 layers,
#   random weights) or an assumption fitted to published figures; the baselines and the 1st place are
#   published measurements ([MOE-REPO], [WIN1]).
# - `nki_moe.model.benchmark` computes everything; the notebook narrates, asserts and plots.

# %% tags=["parameters"]
SMOKE = False
TARGET = "trn2"
SEED = 0
SAMPLING_SHARE = 0.5  # assumed share of the synchronous host time per token that is sampling
ON_DEVICE_SAMPLING = True
ASYNC_MODE = True
GLUE_MS = 0.0  # device time per step outside kernels and all-reduces (the XLA framework's, assumed 0)
DELTA = 0.2  # sensitivity: each cost-model parameter at (1 - DELTA) and (1 + DELTA)

# %% [markdown]
# ## Setup
# One `Estimator` emulates each (kernel, version, shape) once and costs its trace on both chips (and again,
# without emulating, under the sensitivity's perturbed cost model). The full run estimates decode attention
# at six contexts, compares the fused and separate launches of every choice, and prefills each prompt at
# its bucket. SMOKE (labelled): two contexts, the fused launches only, every prompt prefilled at 512 tokens,
# and a chunked prefill MoE (if it runs) at 32 tokens per launch.

# %%
import gc
import time

import matplotlib.pyplot as plt
import numpy as np

from nki_moe import competition, paths, results
from nki_moe.figures import save_figure
from nki_moe.ladder import TARGETS
from nki_moe.model import benchmark as bench
from nki_moe.model.assembled import KernelModel, nki_mac_ratio, parity_run
from nki_moe.model.checkpoint import write_random_checkpoint
from nki_moe.model.weights import Checkpoint
from nki_moe.plots import series_style
from nki_moe.tables import format_table

paths.start_run("07_assembled_model", smoke=SMOKE, target=TARGET)  # decides where outputs go
t_start = time.perf_counter()
CONTEXTS = (14, 639) if SMOKE else bench.DECODE_CONTEXTS
PLAN = dict(attention="block", moe="fused", experts="auto", chunk=32) if SMOKE else dict(
    attention="best", moe="best", experts="best", chunk=bench.CHUNK)
BUCKETS = (512, 640) if SMOKE else bench.CTE_BUCKETS
OPTS = dict(PLAN, decode_contexts=CONTEXTS, buckets=BUCKETS, glue_ms_per_token=GLUE_MS)
est = bench.Estimator()
print(f"decode attention estimated at L = {CONTEXTS}; {PLAN}; CTE buckets {BUCKETS}"
      + (" (SMOKE)" if SMOKE else ""))

# %% [markdown]
# ## The prompts: tokens, not words
# `competition.PROMPTS` holds the token count (`context_len`) and the CSVs' word count (`words`) apart. With
# the token counts every baseline prompt costs the same per generated token (asserted: within 20–24 ms on
# Trn2); with the word counts prompt 4 would stand out.

# %%
rows = [(p.id, p.words, p.context_len, p.generated_tokens, bench.bucket(p.context_len),
         b.latency_ms / p.generated_tokens)
        for p, b in zip(competition.PROMPTS, competition.BASELINES["trn2"])]
print(format_table(rows, ["prompt", "words (CSV)", "tokens", "generated", "CTE bucket",
                          "trn2 baseline ms/token"], floatfmt=".2f"))
assert [p.context_len for p in competition.PROMPTS] == [20, 192, 54, 14, 512]
assert all(20 < r[-1] < 24 for r in rows)

# %% [markdown]
# ## Parity: the kernel model against the reference and transformers
# `parity_run` generates greedily through the kernel model (every op a kernel, emulated), the NumPy
# reference in bf16 and, from the same checkpoint files, transformers; tokens, every layer's expert sets and
# the competition's logit validation must agree. `tiny` (H = 128) runs its router, experts and attention
# block in NumPy (the kernels need top-8, H % 512 == 0 and H % 256 == 0: recorded fallbacks), checked against
# transformers too; `real-width-2layer` runs every op as a kernel, checked against the reference only (the
# reference equals transformers on that checkpoint, tests/model/test_parity.py; both models at real width
# would need ≈ 13 GB); its 32-token prompt prefills through the MoE prefill kernel, and 4 decode steps keep
# the run short (tests/model/test_assembled.py generates 32). SMOKE: tiny only, without transformers. Random
# checkpoints under the build folder.

# %%
def checkpoint(name):
    """A random checkpoint of config ``name`` under build/checkpoints (written once; deterministic)."""
    folder = paths.out_dir("build") / "checkpoints" / name
    if not (folder / "config.json").exists():
        write_random_checkpoint(name, folder, seed=SEED)
    return folder


# %%
PARITY = {"tiny": (12, 8 if SMOKE else 32)} | ({} if SMOKE else {"real-width-2layer": (32, 4)})
parity, models = {}, {}
for name, (length, steps) in PARITY.items():
    folder = checkpoint(name)
    models[name] = KernelModel(weights := Checkpoint(folder))
    prompt = np.random.default_rng(SEED).integers(0, weights.cfg.vocab_size, length)
    hf = folder if name == "tiny" and not SMOKE else None  # transformers on tiny (see above)
    parity[name] = parity_run(weights, prompt, steps=steps, hf_path=hf, model=models[name])
    print(name, parity[name].summary())
    assert parity[name].ok, name
if not SMOKE:
    assert not parity["real-width-2layer"].fallbacks, parity["real-width-2layer"].fallbacks

# %% [markdown]
# ## The NKI MAC ratio, as the competition computes it
# The competition reads rank 0's context-encoding graph at the smallest bucket and one token-generation step:
# MACs inside NKI custom calls over all MACs. From the kernel model's launch records (`LaunchRecord.nki`,
# MACs from the emulator traces) of the parity run's prefill (32 tokens: from 20 the kernel model's
# prefill MoE switch is used, as at the 128-token bucket) and its first decode step on `real-width-2layer`
# (every layer the same launches as the 48-layer model). The plan's own ratio (the smallest bucket, 128
# tokens, + one decode step, from the ops' cost functions) is printed beside it. SMOKE: `tiny`, whose
# router and experts fall back (its ratio is printed; the score uses the plan's).

# %%
def prefill_and_one_step(records):
    """The records of the first prefill and of the first decode step after it (up to its lm_head)."""
    pre = [r for r in records[: next(i for i, r in enumerate(records) if r.phase == "decode")]]
    rest = records[len(pre):]
    return pre + rest[: next(i for i, r in enumerate(rest) if r.op == "lm_head") + 1]


# %%
ratio_model = "tiny" if SMOKE else "real-width-2layer"
records = prefill_and_one_step(models[ratio_model].launches)
NKI_RATIO, PLAN_RATIO = nki_mac_ratio(records), bench.plan_mac_ratio()
fallbacks = sorted({(r.op, r.reason) for r in records if r.fallback})
print(f"NKI MAC ratio of {ratio_model} ({PARITY[ratio_model][0]}-token prefill + 1 decode step, "
      f"{len(records)} launches): {NKI_RATIO:.4f}; fallbacks: {fallbacks or 'none'}; "
      f"the plan's (128 + 1): {PLAN_RATIO:.4f}")
SCORE_RATIO = PLAN_RATIO if SMOKE else NKI_RATIO  # tiny's fallbacks are not the real model's
del models, records, weights  # the real-width kernel model holds a bf16 copy of its weights
gc.collect()

# %% [markdown]
# ## The decode step, op by op (estimates)
# One rank at context 640 (the last step; the cheapest of the fused and separate attention and MoE
# launches, each estimated). Beside it the step's floor: its HBM bytes at the chip's bandwidth plus the 96
# all-reduces (collective model), notebook 00's.

# %%
decode = {tg: bench.step_estimates(tg, est, "decode", context=640, **PLAN) for tg in TARGETS}
floor = {tg: bench.floor_ms(tg) for tg in TARGETS}
print(decode[TARGET].table())
for tg in TARGETS:
    step_ms = decode[tg].total_us / 1e3
    print(f"{tg}: decode step {step_ms:.3f} ms (estimate) = {step_ms / floor[tg]['total']:.2f}x its floor "
          f"{floor[tg]['hbm']:.2f} + {floor[tg]['collectives']:.2f} = {floor[tg]['total']:.2f} ms; "
          + "; ".join(decode[tg].notes))

# %% [markdown]
# ## The host term: fitted to the published anchors (an assumption you can change)
# Per anchor, its five e2e latencies against the generated tokens (least squares): the slope is the e2e cost
# per token, minus the anchor's published device step = the host per token; the intercept is what does not
# scale with tokens (TTFT + per-request overhead; used whole as the per-request overhead: conservative,
# it counts the anchor's TTFT on top of ours). On-device sampling is assumed to remove `SAMPLING_SHARE` of
# the synchronous host time; async mode keeps the fraction that makes both together the 1st place's.

# %%
host = bench.fit_host_model(SAMPLING_SHARE, on_device_sampling=ON_DEVICE_SAMPLING, async_mode=ASYNC_MODE)
rows = [(f["key"], f["slope_ms"], f["device_ms"], f["host_ms"], f["intercept_ms"],
         max(map(abs, f["residual_pct"])), f["source"]) for f in host.fit]
print(format_table(rows, ["anchor", "e2e ms/token", "device ms", "host ms", "intercept ms", "max |res| %",
                          "source"], floatfmt=".2f"))
print(f"host per token with on-device sampling={ON_DEVICE_SAMPLING}, async={ASYNC_MODE}: "
      + ", ".join(f"{tg} {host.per_token_ms(tg):.2f} ms + {host.per_request_ms(tg):.0f} ms per request"
                  for tg in TARGETS) + f" (async keeps {host.async_keep:.3f})")
assert all(max(map(abs, f["residual_pct"])) < 2.5 for f in host.fit)

# %% [markdown]
# ## The five prompts end to end (estimates)
# TTFT = the prefill at the prompt's bucket (one rank: its kernels, 96 all-reduces of [T, 2048], head);
# then the decode steps at contexts ctx + 1 … 639 (attention interpolated linearly between the estimated
# contexts), the host term per generated token and per request. Score = the competition's formula with
# latency = e2e and throughput = 640 / e2e (p99 = mean), the NKI ratio above, accuracy 1 (parity above).

# %%
table = {tg: bench.prompt_estimates(tg, est, host, SCORE_RATIO, **OPTS) for tg in TARGETS}
first = competition.submission_scores(competition.FIRST_PLACE_TRN3)
HEAD = ["prompt", "tokens", "bucket", "generated", "TTFT ms", "device ms/tok", "host ms/tok", "e2e ms",
        "tok/s", "score"]
for tg in TARGETS:
    print(format_table([r.row() + (r.base_ms,) for r in table[tg]], HEAD + ["baseline e2e ms"],
                       floatfmt=",.2f", title=f"{tg}: estimates, score sum {bench.score_sum(table[tg]):.1f}"))
print(f"1st place (trn3, measured): e2e {competition.FIRST_PLACE_TRN3.latency_ms} ms, scores "
      f"{[round(s, 2) for s in first]} = {sum(first):.1f}")
prefill_notes = bench.step_estimates(TARGET, est, "prefill", tokens=BUCKETS[0], **PLAN).notes
print("prefill:", *prefill_notes)

# %% [markdown]
# ### Every assumption beside the score
# The score sum of each target with the assumptions it rests on; what-if lines change one of them.

# %%
ASSUMPTIONS = [
    "kernel times: nki_moe cost-model estimates of the versions the kernel model runs (each op's final "
    f"version, except {est.versions or 'none'}: token parity), one emulated layer per shape x 48 (random "
    "weights); decode attention interpolated linearly in the context",
    "residual adds, embedding gather at their HBM floor; sampling on device = logits floor + an all-gather",
    f"no device time between launches (GLUE_MS = {GLUE_MS}); 96 all-reduces per step from the collective "
    "model (12.0 us each on trn2, fitted on one published point)",
    f"prefill at the NxDI-style buckets {BUCKETS} (assumed); " + " ".join(prefill_notes),
    f"host: {host.per_token_ms('trn3'):.2f} / {host.per_token_ms('trn2'):.2f} ms per token (trn3 / trn2) "
    f"and {host.per_request_ms('trn3'):.0f} / {host.per_request_ms('trn2'):.0f} ms per request, fitted as "
    f"above (sampling share {SAMPLING_SHARE} assumed; trn2's async terms scaled from trn3's)",
    f"p99 = mean latency; accuracy 1 (token-identical parity); NKI MAC ratio {SCORE_RATIO:.4f}",
]
print("\n".join(f"- {a}" for a in ASSUMPTIONS))

# %%
WHAT_IF = {
    "as estimated": {},
    "+1.26 ms/step framework glue (published Trn2 XLA step, [MEGA-CC])": dict(glue_ms_per_token=1.26),
    "no per-request overhead (optimistic)": "request0",
    "synchronous host, host sampling": "sync",
}
what_if = {}
for label, change in WHAT_IF.items():
    h = host.with_(request_async_ms={t: 0.0 for t in TARGETS}) if change == "request0" else host
    h = h.with_(on_device_sampling=False, async_mode=False) if change == "sync" else h
    kw = {**OPTS, **(change if isinstance(change, dict) else {})}
    what_if[label] = {tg: bench.score_sum(bench.prompt_estimates(tg, est, h, SCORE_RATIO, **kw))
                      for tg in TARGETS}
print(format_table([(k, v["trn2"], v["trn3"]) for k, v in what_if.items()], ["case", "trn2 sum", "trn3 sum"],
                   floatfmt=".1f", title=f"score sums (estimates); 1st place trn3 measured {sum(first):.1f}"))

# %% [markdown]
# ## Figure: e2e latency and score per prompt
# Estimated (ours, both chips) beside the published baseline and the 1st place's measured results (trn3).

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")
x, w = np.arange(len(competition.PROMPTS)), 0.16
series = [("baseline trn2 (measured)", [b.latency_ms for b in competition.BASELINES["trn2"]], None),
          ("ours trn2 (estimate)", [r.e2e_ms for r in table["trn2"]], [r.score for r in table["trn2"]]),
          ("baseline trn3 (measured)", [b.latency_ms for b in competition.BASELINES["trn3"]], None),
          ("ours trn3 (estimate)", [r.e2e_ms for r in table["trn3"]], [r.score for r in table["trn3"]]),
          ("1st place trn3 (measured)", list(competition.FIRST_PLACE_TRN3.latency_ms), first)]
for k, (label, lat, sc) in enumerate(series):
    ax1.bar(x + (k - 2) * w, lat, w, label=label, **{"color": series_style(k)["color"]})
    if sc is not None:
        ax2.bar(x + (k - 2) * w, sc, w, label=f"{label}: sum {sum(sc):.1f}", color=series_style(k)["color"])
ax1.set(xticks=x, xticklabels=[f"{p.id}\n{p.context_len} tok" for p in competition.PROMPTS], ylabel="e2e ms",
        title="e2e latency per prompt")
ax2.set(xticks=x, xticklabels=[str(p.id) for p in competition.PROMPTS], ylabel="score",
        title="score per prompt")
for ax in (ax1, ax2):
    ax.legend(fontsize=7)
fig.suptitle("Qwen3-30B-A3B, TP=4 x LNC=2: our e2e and score (cost-model estimates + fitted host term) vs "
             "published results")
save_figure(fig, "07_e2e_score", {s[0]: s[1] for s in series})

# %% [markdown]
# ## The per-token budget (estimates)
# Each op group's share of the decode step at context 640 beside the step's floor (HBM + all-reduces). The
# Perfetto trace of one whole step (launches back to back on rank 0's timeline, layer 0's kernels with
# their engine schedules) is written under the build folder's traces.

# %%
groups = list(dict.fromkeys(g for tg in TARGETS for g in decode[tg].by_group()))
fig, ax = plt.subplots(figsize=(11, 4.2), layout="constrained")
for i, tg in enumerate(TARGETS):
    left, shares = 0.0, decode[tg].by_group()
    for k, g in enumerate(groups):
        ax.barh(2 * i, shares.get(g, 0) / 1e3, left=left, color=series_style(k)["color"],
                label=g if i == 0 else None)
        left += shares.get(g, 0) / 1e3
    ax.barh(2 * i + 0.8, floor[tg]["hbm"], color="0.55", hatch="//", label="floor: HBM" if i == 0 else None)
    ax.barh(2 * i + 0.8, floor[tg]["collectives"], left=floor[tg]["hbm"], color="0.8", hatch="..",
            label="floor: all-reduces" if i == 0 else None)
    ax.annotate(f"{left:.2f} ms = {left / floor[tg]['total']:.2f}x floor", (left, 2 * i), xytext=(4, -3),
                textcoords="offset points", fontsize=8)
ax.set(yticks=[0, 0.8, 2, 2.8], yticklabels=["trn2 step", "trn2 floor", "trn3 step", "trn3 floor"],
       xlabel="ms per decode token (estimate), one rank",
       title="Decode step at context 640 by op (cost-model estimates) vs its floor (HBM + all-reduces)")
ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.2))
ax.set_xlim(0, 1.25 * max(d.total_us / 1e3 for d in decode.values()))  # room for the labels
save_figure(fig, "07_decode_budget", {"group": groups, **{f"{tg}_ms": [decode[tg].by_group().get(g, 0) / 1e3
                                                                      for g in groups] for tg in TARGETS}})

# %%
trace_file = paths.out_dir("build") / "traces" / f"07_decode_step_{TARGET}.json"
trace_path = bench.write_step_trace(decode[TARGET], trace_file, est)
print(f"Perfetto trace of one decode step on {TARGET}: {trace_path} (open in https://ui.perfetto.dev)")

# %% [markdown]
# ## Sensitivity: the score under ±20 % on each main parameter (estimates)
# Each of HBM bandwidth, DMA fixed cost (semaphore + descriptor generation), all-reduce latency (launch +
# hop) and the host term scaled by (1 ± DELTA), the rest as estimated; the cost model's module values are
# patched and restored (`bench.patched_cost_model`) and the kept traces re-costed. SMOKE: trn3 only. The
# HBM bars are one-sided: a DMA engine moves min(its own rate, its share of HBM), and on Trn2 the two are
# nearly equal (23 vs 22.7 B/ns per engine), on Trn3 the engine is the limit (33 vs 38 B/ns), so more HBM
# bandwidth buys nothing the cost model can see, less costs time.

# %%
sens = {tg: bench.sensitivity(tg, est, host, SCORE_RATIO, DELTA, **OPTS)
        for tg in (("trn3",) if SMOKE else TARGETS)}
fig, axes = plt.subplots(1, len(sens), figsize=(6.5 * len(sens), 3.6), squeeze=False, layout="constrained")
for ax, (tg, rows_) in zip(axes[0], sens.items()):
    base = rows_[0]["base"]
    for k, r in enumerate(sorted(rows_, key=lambda r: abs(r["score_high"] - r["score_low"]))):
        for f, s, c in ((r["low"], r["score_low"], "tab:blue"), (r["high"], r["score_high"], "tab:red")):
            ax.barh(k, s - base, left=base, color=c, alpha=0.7, label=f"x{f:.1f}" if k == 0 else None)
        ax.text(max(r["score_low"], r["score_high"]), k, f" {r['parameter']}", va="center", fontsize=8)
    ax.axvline(base, color="k", lw=1)
    ax.set(yticks=[], xlabel="score sum (estimate)", title=f"{tg}: score sum {base:.1f} under ±{DELTA:.0%}")
    ax.legend(fontsize=7)
save_figure(fig, "07_sensitivity", {k: [r[k] for tg in sens for r in sens[tg]] for k in
                                    ("parameter", "low", "high", "score_low", "score_high", "base")}
            | {"target": [tg for tg in sens for _ in sens[tg]]})

# %% [markdown]
# ## Takeaways
# Printed from the estimates. Asserted: the score sums and steps are finite and positive; every decode step
# is above its floor; the host fit's residuals are below 2.5 %; the parity runs passed. The goals
# (trn2 step within 1.3x of its floor, trn3 score sum above 168, NKI ratio >= 0.99) are printed as met or not.

# %%
sums = {tg: bench.score_sum(table[tg]) for tg in TARGETS}
step_ms = {tg: decode[tg].total_us / 1e3 for tg in TARGETS}
assert all(step_ms[tg] > floor[tg]["total"] for tg in TARGETS) and all(s > 0 for s in sums.values())
goals = {"trn2 step within 1.3x of its floor": step_ms["trn2"] / floor["trn2"]["total"] <= 1.3,
         f"trn3 score sum above the 1st place's {sum(first):.1f}": sums["trn3"] > sum(first),
         "NKI MAC ratio >= 0.99": SCORE_RATIO >= 0.99}
for tg in TARGETS:
    print(f"{tg}: step {step_ms[tg]:.2f} ms ({step_ms[tg] / floor[tg]['total']:.2f}x floor), e2e "
          f"{', '.join(f'{r.e2e_ms:,.0f}' for r in table[tg])} ms, score sum {sums[tg]:.1f} (estimates)")
print("\n".join(f"goal: {k}: {'met' if v else 'NOT met'}" for k, v in goals.items()))
print(f"notebook run: {time.perf_counter() - t_start:.0f} s")

# %%
results.record("07_assembled_model", {
    "estimated_by": "nki_moe cost model + host term fitted to published anchors",
    "decode_contexts": list(CONTEXTS), "prefill_chunk": OPTS["chunk"],
    "prompts": {tg: [dict(zip(HEAD, r.row())) | {"base_e2e_ms": r.base_ms} for r in table[tg]]
                for tg in TARGETS},
    "score_sum": sums, "first_place_score_sum": sum(first), "decode_step_ms": step_ms, "floor_ms": floor,
    "decode_notes": {tg: list(decode[tg].notes) for tg in TARGETS}, "prefill_notes": list(prefill_notes),
    "host_fit": list(host.fit), "host_per_token_ms": {tg: host.per_token_ms(tg) for tg in TARGETS},
    "host_per_request_ms": {tg: host.per_request_ms(tg) for tg in TARGETS}, "sampling_share": SAMPLING_SHARE,
    "nki_mac_ratio": {"kernel_model": NKI_RATIO, "plan": PLAN_RATIO, "used": SCORE_RATIO,
                      "model": ratio_model},
    "parity_ok": {k: v.ok for k, v in parity.items()}, "assumptions": ASSUMPTIONS, "what_if": what_if,
    "sensitivity": sens, "goals": goals,
    "budget": {"estimates": [e.as_dict() for e in est.estimates(TARGETS)]}})
