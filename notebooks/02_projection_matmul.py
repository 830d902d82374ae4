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
# # 02 · Climb the projection matmul ladder to the HBM roof
# `y[T, N] = x[T, 2048] @ w[2048, N]` for q (4096), k/v (512), o (2048) and the LM head (151936), from a naive
# tiled kernel to a blocked, double-buffered one with GEMV operand placement — on an LNC=2 launch.
#
# ## What & why
# - Napkin math: FLOPs = 2·T·K·N; bytes ≈ 2·(K·N + T·K + T·N). Decode (T = 1) is ≈ 1 FLOP/byte: the LM head
#   reads 0.62 GB → 859 µs floor on the 725 GB/s of two Trn2 cores (508 µs on Trn3); the q projection
#   reads 16.8 MB → 23 µs.
# - Prefill T = 640, q: 10.7 GFLOP over 24.6 MB = 436 FLOP/byte, above the 218 FLOP/byte BF16 ridge of a Trn2
#   core → compute-bound, floor 68 µs on two cores (79 TFLOP/s each).
# - Levers (trainium.md §3–4): ≥ 2–4 KiB per partition per DMA, x reused across column tiles, PSUM banks
#   double-buffered so the PE never waits on evictions, and for GEMV the weights as the *stationary* operand
#   (fast weight load; one 128-column matmul issues every ~64 cycles instead of one 512-column one every 512).
# - Every version splits the N columns between the two cores (`kernel[2]`).
#   All times are cost-model ESTIMATES.

# %% tags=["parameters"]
SMOKE = False
TARGET = "trn2"
SEED = 0

# %% [markdown]
# ## Setup

# %%
import inspect

import matplotlib.pyplot as plt
import numpy as np

from nki_moe import results
from nki_moe.bench import Version, bf16, plot_sweep, roofline_points, run_kernel, sweep, sweep_table
from nki_moe.check import error_ratio
from nki_moe.figures import save_figure
from nki_moe.kernels import matmul as K
from nki_moe.perf.hardware import get_hardware
from nki_moe.perf.profile import profile, profile_trace
from nki_moe.perf.roofline import plot_roofline
from nki_moe.reference import linear, linear_cost
from nki_moe.tables import format_table

HIDDEN, N_SWEEP, VOCAB = 2048, 4096, 151936
TOKENS = (1, 18, 128) if SMOKE else (1, 18, 128, 402, 640)
SHOW_T = TOKENS[-1]


# %%
def make_args(T, N=N_SWEEP):
    """Seeded bf16 x [T, K] and w [K, N]."""
    rng = np.random.default_rng(SEED + T)
    return bf16(rng.standard_normal((T, HIDDEN))), bf16(rng.standard_normal((HIDDEN, N)) / 45)


def cost(T, N=N_SWEEP):
    """(FLOPs, HBM bytes) of the projection (one function for roofline and report)."""
    c = linear_cost(T, HIDDEN, N)
    return 2.0 * c.macs, float(c.bytes)


# %%
def check(kernel, T=SHOW_T, N=N_SWEEP):
    """Emulate at LNC=2 (strict), assert the 3-way error ratio and the trace's MAC count."""
    x, w = make_args(T, N)
    res = run_kernel(kernel, x, w, target=TARGET, lnc=2)
    xf, wt = x.astype(np.float32), w.astype(np.float32).T
    ratio = error_ratio(res.outputs.astype(np.float32), linear(xf, wt, "bf16"), linear(xf, wt))
    assert ratio, ratio.message
    assert res.mac_count() == linear_cost(T, HIDDEN, N).macs
    return ratio.message


def prof(kernel, T=SHOW_T, N=N_SWEEP):
    flops, nbytes = cost(T, N)
    return profile(kernel, *make_args(T, N), target=TARGET, lnc=2, flops=flops, hbm_bytes=nbytes)


# %% [markdown]
# ## Reference
# `nki_moe.reference.linear` is `x @ w.T` in fp32 on the HF [N, K] weight; the kernels take `w = W.T` [K, N].

# %%
print(inspect.getsource(linear))
x, w = make_args(2, 8)
print(linear(x.astype(np.float32), w.astype(np.float32).T, "bf16"))

# %% [markdown]
# ## v0 · naive tiled
# Per (token tile, 512 columns, k tile): x loaded already transposed by an element-strided DMA (2-byte
# descriptors), a [128, 512] w tile, one matmul. Checked at T = 18 (the naive x load is slow to emulate too).

# %%
print(inspect.getsource(K.matmul_v0))
print(check(K.matmul_v0, T=18))
print(prof(K.matmul_v0, T=18).summary())

# %% [markdown]
# The DMA queues are the whole story: KT·N/512 transposing x loads of 2-byte descriptors per token tile.
#
# ## v1 · hoisted x loads
# x is read once per token tile (4 KiB per partition) and transposed on the PE (128×128 bf16 transposes,
# eight per PSUM bank), then reused by every column tile.

# %%
print(inspect.getsource(K.load_transposed))
print(check(K.matmul_v1))
print(prof(K.matmul_v1).summary())

# %% [markdown]
# ## v2 · blocked free dims
# w is read in [128, KT, 2048] blocks — one DMA per k tile with 4 KiB contiguous per partition — and each
# block is used by every token tile before the next is loaded; y leaves in [T, 2048] blocks.

# %%
print(inspect.getsource(K._blocked))
print(check(K.matmul_v2))
print(prof(K.matmul_v2).summary())

# %% [markdown]
# ## v3 · double-buffered PSUM and loads
# Two w-block buffers and two sets of four PSUM banks rotate, so block b+1 streams in while block b is
# multiplied; evictions alternate between ACT and DVE.

# %%
print(check(K.matmul_v3))
print(prof(K.matmul_v3).summary())

# %% [markdown]
# ## v4 · operand placement for GEMV
# For T < 128 the weights become the stationary operand (128 columns × one k tile per matmul, ≈ 64 PE cycles)
# and the tokens the moving one; the k loop runs outermost so the PE starts on each k slab as its DMA lands;
# results come out as yᵀ [n, T] and are PE-transposed back. T ≥ 128 keeps v3's placement.

# %%
print(inspect.getsource(K._w_stationary_block))
for T in (1, SHOW_T):
    print(check(K.matmul_v4, T=T))
p4 = prof(K.matmul_v4, T=1)
print(p4.summary())

# %% [markdown]
# ## The model's projections with the final version (T = 1 and T = SHOW_T, estimated)
# The LM head at its full 151936 columns runs only at full size (13 s, 1.3 GB of emulator memory); SMOKE uses
# a 16384-column slice of the same code path.

# %%
widths = {"q": 4096, "k/v": 512, "o": 2048, "lm_head": 16384 if SMOKE else VOCAB}
proj = []
for name, N in widths.items():
    for T in (1, SHOW_T):
        trace = run_kernel(K.matmul_v4, *make_args(T, N), lnc=2).trace
        for tg in ("trn2", "trn3"):
            p = profile_trace(trace, tg, f"v4 {name}", None, *cost(T, N))
            proj.append((name, N, T, tg, p.latency_us, p.roofline_us, 100 * p.pct_of_roofline, 100 * p.mbu,
                         100 * p.mfu))
print(format_table(proj, ["proj", "N", "T", "target", "µs (est.)", "floor µs", "% roof", "MBU %", "MFU %"],
                   floatfmt=".1f"))

# %% [markdown]
# ## Sweep over T (N = 4096), every version, trn2 and trn3 (estimated)

# %%
VERSIONS = [Version(f"v{i}", getattr(K, f"matmul_v{i}"), 2) for i in range(5)]
if SMOKE:
    VERSIONS = VERSIONS[1:]  # v0's element-strided loads are slow to emulate at T = 128
rows = sweep(VERSIONS, TOKENS, make_args, cost)
HEAD = ["version", "T", "µs (est.)", "floor µs", "% roof"]
print(format_table(sweep_table(rows, TARGET), HEAD, floatfmt=".1f"))
fig, data = plot_sweep(rows, f"matmul [T, 2048] x [2048, {N_SWEEP}]")
save_figure(fig, "02_projection_matmul_sweep", data)

# %% [markdown]
# ## Roofline points (two cores of the target, at T = 1 and T = SHOW_T)

# %%
hw = get_hardware(TARGET)
fig, ax = plt.subplots(figsize=(8, 5))
pts = roofline_points(rows, 1, TARGET) + roofline_points(rows, SHOW_T, TARGET)
cols = plot_roofline(ax, hw, pts, dtypes=("bf16",), scope="logical_core", intensity_range=(0.3, 3000))
ax.legend(fontsize=7)
save_figure(fig, "02_projection_matmul_roofline", cols)

# %% [markdown]
# ## Takeaways
# - LM head decode (T = 1, N = 151936), final v4 at LNC=2: ≈ 981 µs on trn2 = 88 % of the 859 µs HBM floor
#   (≈ 676 µs, 75 % on trn3); the DMA queues are ≈ 90 % busy and 4 KiB descriptors cap DMA efficiency at 89 %.
# - Decode q projection (N = 4096): ≈ 33 µs, 70 % of its 23 µs floor on trn2; with one 2048-column block per
#   core the first DMA's fixed latency and the final transpose/store are exposed. k/v (N = 512) and o are
#   smaller still and further from the floor (fixed latencies dominate; see the projection table).
# - Prefill T = 640, q: ≈ 109 µs = 62 % of the 68 µs compute floor on trn2; the PE is the busiest engine and
#   the ladder's big wins are v1 (hoisting x: ≈ 17× over v0's 8.6 ms) and v2 (blocked w: ≈ 4.4×).
#   k/v (N = 512) stays at ≈ 25–30 % of its floor at both T: one block per core exposes every fixed latency.
# - MAC counts from every trace equal T·K·N (PE transposes are not counted as MACs).

# %%
table = {f"{r[0]}_T{r[2]}_{r[3]}": {"latency_us": r[4], "floor_us": r[5], "pct_roofline": r[6]} for r in proj}
print(table)
results.record("02_projection_matmul", {"estimated_by": "nki_moe cost model", "final_version": "v4", "lnc": 2,
                                        "projections": table, "lm_head_columns": widths["lm_head"]})
