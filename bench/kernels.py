"""Emulated wall time of the final kernel versions at real width vs their NumPy reference.

Run: .venv/bin/python bench/kernels.py [--repeat N] [--floor] [--lm-head] [--only TEXT] [--profile N]. Prints
ratios; never asserts timings. ``--floor`` adds the floor columns (below). ``--lm-head`` adds the decode LM
head GEMV at N = 151936 (0.62 GB of bf16 weights; needs ~3 GB of RAM). ``--only`` keeps the kernels whose
label contains TEXT. ``--profile N`` runs each kernel once under cProfile instead (every program of an LNC=2
launch, merged) and prints its N costliest functions. Inputs, layouts and references come from the op
registry (``nki_moe.ops``), as in the notebooks and tests.

Columns: ``instr`` executed instructions (both programs of an LNC=2 launch); ``emulated`` best wall time of
``sim.run``; ``instr/s`` emulated instructions per second (instr ÷ emulated); ``NumPy`` the reference with
NumPy's default BLAS threads and ``NumPy 1T`` with one BLAS thread, the emulator's own setting (``sim.run``
pins OpenBLAS to one thread); ``ratio`` emulated ÷ NumPy and ``ratio 1T`` emulated ÷ NumPy 1T (wall
times), ``cpu 1T`` the same ratio in CPU time (process_time: the steadier one on a shared machine). The
ratios differ only where the reference is a BLAS call (matmul, router); elementwise references are
single-threaded either way. Emulated and reference calls alternate so both see the same machine load; each
reports its best.

``--floor``: ``floor`` is the wall time of the kernel's own operand traffic as bare NumPy calls built from its
trace (``data_floor``): every operand of every executed instruction read once and written once, through the
same dtype and strided view as in the emulator, plus the matmuls' MACs as fp32 BLAS calls; no other compute,
no checks, no bookkeeping, no Python beyond one loop. ``floor/ref`` is that time ÷ NumPy 1T and
``emu/floor`` the emulator's time ÷ the floor. It bounds from below any emulator that carries out the
instructions one at a time on NumPy with the hardware's dtypes (bf16 tiles, one copy per DMA): where
``floor/ref`` exceeds a target ratio, no saving in the emulator's own Python can reach that target.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import pstats
import time

import numpy as np

import nki_moe.sim as sim
from nki_moe.sim import blas, numerics

sim.install("sim")

from nki_moe import ops  # noqa: E402


def best_time(fn, repeat: int = 3) -> float:
    """Best wall time of ``fn()`` in seconds over ``repeat`` calls."""
    return best_times(fn, repeat)[0]


def best_times(fn, repeat: int = 3) -> tuple[float, float]:
    """(best wall time, best CPU time) of ``fn()`` in seconds over ``repeat`` calls."""
    wall = cpu = float("inf")
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, time.process_time() - c)
    return wall, cpu


def single_threaded(fn):
    """``fn`` run under one BLAS thread (the emulator's setting)."""

    def run():
        with blas.single_threaded():
            return fn()

    return run


def cases(lm_head: bool):
    """(label, emulated call, NumPy reference call) of each op's final version at the model's widths."""
    shapes = {
        "rmsnorm": [dict(T=640)],
        "add_rmsnorm": [dict(T=640)],
        "router": [dict(T=640)],
        "matmul": [dict(T=640, N=4096), dict(T=1, N=4096)] + ([dict(T=1, N=151936)] if lm_head else []),
        "moe_decode": [dict(T=1, tp=4)],
        "moe_layer_decode": [dict(T=1, tp=4)],
        "attention_decode": [dict(L=639)],
        "attention_block_decode": [dict(L=639)],
        "attention_layer_decode": [dict(L=639)],
        "attention_prefill": [dict(T=512)],
        "moe_prefill": [dict(T=512, tp=4)],
    }
    for name, points in shapes.items():
        op = ops.get(name)
        v = op.final
        for shape in points:
            args = op.args(**shape)
            kernel_args = op.version_args(v, args)  # the load-time layout, done once as a loader would
            ref_args = op.fp32_args(**shape)
            label = f"{v.kernel} {' '.join(f'{k}={x}' for k, x in shape.items())} LNC={v.lnc}"
            yield (
                label,
                lambda op=op, v=v, a=kernel_args: sim.run(op.kernel(v), *a, lnc=v.lnc),
                lambda op=op, a=ref_args: op.reference(*a, dtype="bf16"),
            )


def data_floor(trace):
    """A callable doing the trace's data movement as plain NumPy calls (see ``--floor`` in the docstring).

    Each allocation the trace touches gets one flat byte buffer, and each operand access the same strided
    view of it (dtype, offset, pattern) as in the emulator, built once outside the timing. Per record: a
    DMA copies its source view into its destination view (converting where the dtypes differ; an indirect
    one into a contiguous array of the source's size, as its destination access spans every row it may
    reach); a compute instruction widens each operand it reads that is not stored in fp32 (fp32 reads are
    free, as in the emulator), a matmul (not a transpose) multiplies fp32 [K, M]ᵀ by [K, N] (its MACs, the
    only compute counted), and each result is stored into its destination view from an fp32 array of that
    shape. Views are built for non-negative strides (all the bench's kernels).
    """
    extent: dict[int, int] = {}  # allocation serial -> bytes its views reach
    for rec in trace:
        for a in rec.accesses:
            isz = a.itemsize
            hi = a.off + sum(max(0, st * (n - 1)) for st, n in a.pat) + 1
            extent[a.alloc] = max(extent.get(a.alloc, 0), hi * isz)
    memory = {serial: np.zeros(nbytes, np.uint8) for serial, nbytes in extent.items()}

    def view(a) -> np.ndarray:
        dt, isz = numerics.DTYPES[a.dtype], a.itemsize
        shape, strides = tuple(n for _, n in a.pat), tuple(st * isz for st, _ in a.pat)
        return np.ndarray(shape, dt, memory[a.alloc], a.off * isz, strides)

    # ("copy", dst, src) | ("widen", None, src) | ("matmul", stationary, moving) | ("store", dst, fp32 values)
    steps = []
    for rec in trace:
        reads = [view(a) for a in rec.accesses if a.mode == "r" and a.dtype in numerics.DTYPES]
        writes = [view(a) for a in rec.accesses if a.mode == "w" and a.dtype in numerics.DTYPES]
        if rec.engine == "dma":  # source and destination; an indirect DMA's index operand is not counted
            if reads and writes:
                r, w = reads[0], writes[0]
                # An indirect DMA's destination access spans the rows it may touch: copy the source's count.
                steps.append(("copy", w if w.size == r.size else np.empty(r.shape, w.dtype), r))
            continue
        steps += [("widen", None, r) for r in reads if r.dtype != np.float32]
        info = rec.info
        if "K" in info and not info.get("is_transpose"):  # the PE's MACs, as one fp32 BLAS call
            K, M, N = info["K"], info["M"], info["N"]
            steps.append(("matmul", np.zeros((K, M), np.float32), np.zeros((K, N), np.float32)))
        steps += [("store", w, np.zeros(w.shape, np.float32)) for w in writes]

    def run() -> None:
        for kind, dst, src in steps:
            if kind == "widen":
                numerics.to_f32(src)  # the emulator's widening (a contiguous gather first where faster)
            elif kind == "matmul":
                dst.T @ src
            elif dst.shape == src.shape and dst.dtype == src.dtype:
                np.copyto(dst, src)
            else:
                dst[...] = src.reshape(dst.shape).astype(dst.dtype, copy=False)

    run.steps = steps
    return run


def measure(emu, ref, repeat: int, floor: bool = False) -> tuple[int, tuple, tuple, tuple, tuple]:
    """(instructions, emulated, reference, reference with one BLAS thread, data floor or None), each timing
    a (wall, CPU) pair of seconds: the best of ``repeat`` calls, the calls alternating."""
    trace = emu().trace  # also the warm-up (imports, buffer pool)
    n = len(trace)
    ref_1t = single_threaded(ref)
    ref(), ref_1t()
    fns = [emu, ref, ref_1t]
    if floor:
        fl = data_floor(trace)
        fl()
        fns.append(fl)
    del trace
    best = {f: (float("inf"), float("inf")) for f in fns}
    for _ in range(repeat):
        for f in best:
            w, c = best_times(f, 1)
            best[f] = (min(best[f][0], w), min(best[f][1], c))
    return n, best[emu], best[ref], best[ref_1t], (best[fns[3]] if floor else None)


def profile(label: str, emu, top: int) -> None:
    """One emulated call under cProfile, every program thread included, top `top` functions by own time."""
    jit = importlib.import_module("nki_moe.sim.jit")
    run_program, profiles = jit._run_program, []

    def profiled(*a, **kw):  # each program runs in its own thread: one profiler per program
        prof = cProfile.Profile()
        profiles.append(prof)
        return prof.runcall(run_program, *a, **kw)

    emu()  # warm-up
    jit._run_program = profiled
    try:
        emu()
    finally:
        jit._run_program = run_program
    stats = pstats.Stats(profiles[0])
    for prof in profiles[1:]:
        stats.add(prof)
    print(f"==== {label}")
    stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--lm-head", action="store_true")
    ap.add_argument("--floor", action="store_true", help="add the data-movement floor columns")
    ap.add_argument("--only", default="", help="only the kernels whose label contains this text")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile each kernel, print N rows")
    args = ap.parse_args()
    selected = [c for c in cases(args.lm_head) if args.only in c[0]]
    if args.profile:
        for label, emu, _ in selected:
            profile(label, emu, args.profile)
        return
    print(
        f"{'kernel':40s} {'instr':>6s} {'emulated':>10s} {'instr/s':>8s} {'NumPy':>9s} {'NumPy 1T':>9s} "
        f"{'ratio':>6s} {'ratio 1T':>8s} {'cpu 1T':>6s}"
        + (f" {'floor':>9s} {'floor/ref':>9s} {'emu/floor':>9s}" if args.floor else "")
    )
    total_n = total_t = 0.0
    for label, emu, ref in selected:
        n, (t_emu, c_emu), (t_ref, _), (t_1t, c_1t), fl = measure(emu, ref, args.repeat, args.floor)
        total_n, total_t = total_n + n, total_t + t_emu
        extra = f" {fl[0] * 1e3:7.2f}ms {fl[0] / t_1t:8.1f}x {t_emu / fl[0]:8.1f}x" if fl else ""
        print(
            f"{label:40s} {n:6d} {t_emu * 1e3:8.1f}ms {n / t_emu:8.0f} {t_ref * 1e3:7.2f}ms "
            f"{t_1t * 1e3:7.2f}ms {t_emu / t_ref:5.1f}x {t_emu / t_1t:7.1f}x {c_emu / c_1t:5.1f}x{extra}"
        )
    rate = total_n / total_t
    print(f"all kernels: {total_n:.0f} instructions in {total_t * 1e3:.1f} ms = {rate:.0f} instr/s")


if __name__ == "__main__":
    main()
