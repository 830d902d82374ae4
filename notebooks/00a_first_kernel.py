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
# # 00a · Write, check and profile your first NKI kernel
# A ten-line kernel `out = alpha·x + y` on one [128, C] tile: emulated on the laptop, checked against NumPy,
# broken on purpose to see a strict error, profiled by the cost model, its trace opened in Perfetto — and
# where a real kernel goes in the package.
#
# ## What & why
# - An NKI kernel moves tiles between HBM and on-chip SBUF with DMAs and computes on them with engine
#   instructions (`nki.isa`). Rows sit on SBUF's 128 partitions, columns along the free dim.
# - Napkin math (C = 512, bf16): 3 tiles of 128 KiB cross HBM (x, y in, out back) = 384 KiB → 1.1 µs at one
#   Trn2 core's 362 GB/s; one DVE pass of 512 elements per partition ≈ 0.5 µs; but the loads and the store
#   that depends on them each pay a ~2 µs DMA fixed cost: this kernel is latency-bound, not bandwidth-bound.
# - The emulator (`nki_moe.sim`) runs the unmodified `@nki.jit` kernel on NumPy arrays and rejects anything
#   the hardware would (partitions, buffers, dtypes, uninitialised reads), naming the limit and the line.
# - Every Trainium time here is an ESTIMATE of the nki_moe cost model, not a measurement.
# - Terms (SBUF, PSUM, DVE, DMA, LNC, roofline, Perfetto …): [docs/glossary.md](../docs/glossary.md).

# %% tags=["parameters"]
SMOKE = False
TARGET = "trn2"
SEED = 0
COLS = 512

# %% [markdown]
# ## Setup
# `start_run` binds `import nki` to the emulator (the real SDK on a Trainium host) and decides where the
# outputs go. Editing kernels in `nki_moe/kernels/` from JupyterLab? The next cell's two magics re-import an
# edited module before each cell runs, so a kernel change needs no kernel restart (harmless headless).

# %%
# %load_ext autoreload
# %autoreload 2

# %%
import os

import numpy as np
from IPython.display import FileLink, display

import nki_moe.sim as sim
from nki_moe import ops, paths, results
from nki_moe.check import check_close
from nki_moe.perf.profile import profile_trace
from nki_moe.sim.errors import NkiValidationError

paths.start_run("00a_first_kernel", smoke=SMOKE, target=TARGET)  # decides where outputs go
import nki
import nki.isa as nisa
import nki.language as nl

C = 128 if SMOKE else COLS
ALPHA = 0.5
rng = np.random.default_rng(SEED)
x, y = ops.bf16(rng.standard_normal((128, C))), ops.bf16(rng.standard_normal((128, C)))

# %% [markdown]
# ## Reference
# The answer in NumPy, fp32: what the kernel must reproduce up to its bf16 output rounding.

# %%
expected = ALPHA * x.astype(np.float32) + y.astype(np.float32)
print(expected[:2, :4])


# %% [markdown]
# ## The kernel
# Allocate the output in HBM, load both inputs into SBUF tiles, one DVE instruction computes
# `(x · alpha) + y` in fp32 and rounds once to bf16, one DMA stores the tile. No loop: the whole input is one
# tile, so it needs R ≤ 128 rows (kept out of the kernel on purpose, to let the emulator say it below).

# %%
@nki.jit
def scale_add(x, y, alpha):
    """out = alpha·x + y. Args: x, y [R, C] bf16, rows on partitions; alpha float. Returns: out [R, C]."""
    R, C = x.shape
    out = nl.ndarray((R, C), dtype=x.dtype, buffer=nl.shared_hbm)
    x_t = nl.ndarray((R, C), dtype=x.dtype, buffer=nl.sbuf)
    y_t = nl.ndarray((R, C), dtype=y.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=x_t, src=x)
    nisa.dma_copy(dst=y_t, src=y)
    o_t = nl.ndarray((R, C), dtype=x.dtype, buffer=nl.sbuf)
    nisa.scalar_tensor_tensor(dst=o_t, data=x_t, op0=nl.multiply, operand0=alpha, op1=nl.add, operand1=y_t)
    nisa.dma_copy(dst=out, src=o_t)
    return out


# %% [markdown]
# ## Run it on the emulator and check it
# Called like a function on NumPy arrays; `check_close` compares with the bf16 tolerance of the project's
# one tolerance table and lists the first mismatches if any (asserted).

# %%
out = scale_add(x, y, ALPHA)
check = check_close(out, expected, "bf16", name="out")
print(out.dtype, out.shape, "|", check.message)
assert check

# %% [markdown]
# ## A strict error, on purpose
# 256 rows do not fit the 128 partitions of one SBUF tile. The emulator stops at the allocation and names
# the operand, the limit, the value and the kernel's line; the official simulator is more lenient about
# several such limits (docs/emulator.md). Real kernels restate their limits as asserts at entry, with the
# offending value in the message.

# %%
try:
    scale_add(ops.bf16(rng.standard_normal((256, C))), ops.bf16(rng.standard_normal((256, C))), ALPHA)
    raise AssertionError("the emulator accepted a 256-row SBUF tile")
except NkiValidationError as err:
    strict_error = str(err)
print(strict_error)
assert "partition dimension exceeds the architecture limit (limit: 128, got: 256)" in strict_error

# %% [markdown]
# ## Profile it (cost-model ESTIMATE) and open the trace
# `sim.run` returns the outputs and the instruction trace; `profile_trace` schedules that trace on the
# target's engines and writes a Perfetto trace. Open it at https://ui.perfetto.dev → *Open trace file*
# (in JupyterLab, the link below points at the file: right-click → *Download*, then open that in Perfetto).
# Each engine is a track; each instruction a slice with its operands and source line.

# %%
res = sim.run(scale_add, x, y, ALPHA, target=TARGET)
prof = profile_trace(res.trace, TARGET, name="00a_scale_add", trace_path=True, hbm_bytes=3 * x.nbytes)
print(prof.summary())
print(f"Perfetto trace: {prof.trace_path}  (https://ui.perfetto.dev → Open trace file)")
display(FileLink(os.path.relpath(prof.trace_path)))
assert prof.latency_us > 2 * prof.roofline_us  # latency-bound: the dependent DMAs' fixed costs dominate

# %% [markdown]
# ## Where a real kernel goes
# A notebook kernel is fine for a tutorial; the workbook's kernels live in the package so that tests,
# notebooks and benchmarks share one source:
# - `nki_moe/kernels/<op>.py`: pure NKI, `<op>_v0 … <op>_vN`, each under a one-line banner naming its idea,
#   a docstring with shapes and limits, asserts at entry;
# - `nki_moe/reference/<family>.py`: the NumPy reference with the kernels' signature and an `<op>_cost`;
# - `nki_moe/ops.py`: one `Ladder` entry in `OPS` ties them together, e.g.
#   ```python
#   Ladder(name="scale_add", title="alpha·x + y [128, C] bf16", module="nki_moe.kernels.scale_add",
#          make_args=_scale_add_args, reference=scale_add_ref, cost=scale_add_cost, compare=_compare_y,
#          versions=_versions("scale_add", lnc=(1,)), notebook="notebooks/NN_scale_add.py",
#          tests=("tests/kernels/test_scale_add.py",))
#   ```
#   after which `ops.get("scale_add").step("v0", C=512)` prints, checks and profiles it, and the README's op
#   table gains a row (`ops.readme_table()`; a test keeps the README equal to it).
# - `tests/kernels/test_<op>.py` and a notebook `notebooks/NN_<op>.py` that stays thin on the package.
#
# An existing entry, for comparison:

# %%
op = ops.get("rmsnorm")
print(op.module, [v.kernel for v in op.versions], op.reference.__name__, op.notebook, op.tests, sep="\n")

# %% [markdown]
# ## Takeaways
# Printed from the run (estimates): the check's error, the strict error's limit, and the estimated latency
# against the roofline floor of the three tiles' bytes — asserted latency-bound above.

# %%
print(f"- scale_add [128, {C}] bf16: {check.message}")
print(f"- 256 rows: {strict_error.split(' [at ')[0]}")
print(f"- {prof.latency_us:.2f} µs on {TARGET} (estimate) vs a {prof.roofline_us:.2f} µs HBM floor: "
      f"{100 * prof.pct_of_roofline:.0f} % of the roofline; busiest engine busy "
      f"{max(prof.busy_us.values()):.2f} µs")
results.record("00a_first_kernel", {"estimated_by": "nki_moe cost model", "cols": C,
                                    "max_abs_error": check.max_abs, "latency_us": prof.latency_us,
                                    "roofline_us": prof.roofline_us, "trace_file": prof.trace_path.name,
                                    "strict_error": strict_error.split(" [at ")[0]})
