"""Emulated wall time of the final kernel versions at real width vs their NumPy reference.

Run: .venv/bin/python bench/kernels.py [--repeat N] [--lm-head]. Prints ratios; never asserts timings.
``--lm-head`` adds the decode LM head GEMV at N = 151936 (0.62 GB of bf16 weights; needs ~3 GB of RAM).
Inputs, layouts and references come from the op registry (``nki_moe.ops``), as in the notebooks and tests.
"""

from __future__ import annotations

import argparse
import time

import nki_moe.sim as sim

sim.install("sim")

from nki_moe import ops  # noqa: E402


def best_time(fn, repeat: int = 3) -> float:
    """Best wall time of ``fn()`` in seconds over ``repeat`` calls."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def cases(lm_head: bool):
    """(label, emulated call, NumPy reference call) of each op's final version at the model's widths."""
    shapes = {
        "rmsnorm": [dict(T=640)],
        "add_rmsnorm": [dict(T=640)],
        "router": [dict(T=640)],
        "matmul": [dict(T=640, N=4096), dict(T=1, N=4096)] + ([dict(T=1, N=151936)] if lm_head else []),
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--lm-head", action="store_true")
    args = ap.parse_args()
    print(f"{'kernel':48s} {'instr':>6s} {'emulated':>10s} {'NumPy':>10s} {'ratio':>8s}")
    for label, emu, ref in cases(args.lm_head):
        n = len(emu().trace)
        t_emu, t_ref = best_time(emu, args.repeat), best_time(ref, args.repeat)
        print(f"{label:48s} {n:6d} {t_emu * 1e3:8.1f}ms {t_ref * 1e3:8.2f}ms {t_emu / t_ref:7.1f}x")


if __name__ == "__main__":
    main()
