"""Emulated wall time of the final kernel versions at real width vs their NumPy reference.

Run: .venv/bin/python bench/kernels.py [--repeat N] [--lm-head] [--only TEXT] [--profile N]. Prints ratios;
never asserts timings. ``--lm-head`` adds the decode LM head GEMV at N = 151936 (0.62 GB of bf16 weights;
needs ~3 GB of RAM). ``--only`` keeps the kernels whose label contains TEXT. ``--profile N`` runs each kernel
once under cProfile instead (every program of an LNC=2 launch, merged) and prints its N costliest functions.
Inputs, layouts and references come from the op registry (``nki_moe.ops``), as in the notebooks and tests.

Columns: ``instr`` executed instructions (both programs of an LNC=2 launch); ``emulated`` best wall time of
``sim.run``; ``instr/s`` emulated instructions per second (instr ÷ emulated); ``NumPy`` the reference with
NumPy's default BLAS threads and ``NumPy 1T`` with one BLAS thread, the emulator's own setting (``sim.run``
pins OpenBLAS to one thread); ``ratio`` emulated ÷ NumPy and ``ratio 1T`` emulated ÷ NumPy 1T (wall
times), ``cpu 1T`` the same ratio in CPU time (process_time: the steadier one on a shared machine). The
ratios differ only where the reference is a BLAS call (matmul, router); elementwise references are
single-threaded either way. Emulated and reference calls alternate so both see the same machine load; each
reports its best.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import pstats
import time

import nki_moe.sim as sim
from nki_moe.sim import blas

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


def measure(emu, ref, repeat: int) -> tuple[int, tuple, tuple, tuple]:
    """(instructions, emulated, reference, reference with one BLAS thread), each timing a (wall, CPU) pair
    of seconds: the best of ``repeat`` calls, the three calls alternating."""
    n = len(emu().trace)  # also the warm-up (imports, buffer pool)
    ref_1t = single_threaded(ref)
    ref(), ref_1t()
    best = {f: (float("inf"), float("inf")) for f in (emu, ref, ref_1t)}
    for _ in range(repeat):
        for f in best:
            w, c = best_times(f, 1)
            best[f] = (min(best[f][0], w), min(best[f][1], c))
    return n, best[emu], best[ref], best[ref_1t]


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
    )
    total_n = total_t = 0.0
    for label, emu, ref in selected:
        n, (t_emu, c_emu), (t_ref, _), (t_1t, c_1t) = measure(emu, ref, args.repeat)
        total_n, total_t = total_n + n, total_t + t_emu
        print(
            f"{label:40s} {n:6d} {t_emu * 1e3:8.1f}ms {n / t_emu:8.0f} {t_ref * 1e3:7.2f}ms "
            f"{t_1t * 1e3:7.2f}ms {t_emu / t_ref:5.1f}x {t_emu / t_1t:7.1f}x {c_emu / c_1t:5.1f}x"
        )
    rate = total_n / total_t
    print(f"all kernels: {total_n:.0f} instructions in {total_t * 1e3:.1f} ms = {rate:.0f} instr/s")


if __name__ == "__main__":
    main()
