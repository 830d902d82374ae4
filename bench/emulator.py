"""Emulator speed: wall time of real-width kernels in nki_moe.sim divided by their NumPy reference.

Run: .venv/bin/python bench/emulator.py [--repeat N]. Prints ratios (goal <= 3x); never asserts timings.
Kernels: tests/sim/kernels/ (RMSNorm [640, 2048], matmul [128, 2048] x [2048, 768], top-8 [640, 128]).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import ml_dtypes
import numpy as np

import nki_moe.sim as sim

sim.install("sim")
KERNELS = Path(__file__).resolve().parent.parent / "tests" / "sim" / "kernels"
BF16 = ml_dtypes.bfloat16


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_kernels_{name}", KERNELS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def cases():
    rng = np.random.default_rng(0)
    rms, mm, top = _load("rmsnorm"), _load("matmul"), _load("topk")
    x = rng.standard_normal((640, 2048)).astype(np.float32)
    w = rng.standard_normal(2048).astype(np.float32)
    yield (
        "rmsnorm [640, 2048] fp32",
        lambda: rms.rmsnorm(x, w, 1e-6),
        lambda: x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + 1e-6) * w,
    )
    lhsT = rng.standard_normal((2048, 128)).astype(BF16)
    rhs = rng.standard_normal((2048, 768)).astype(BF16)
    yield (
        "matmul [128, 2048] x [2048, 768] bf16",
        lambda: mm.matmul_tiled(lhsT, rhs),
        lambda: (lhsT.astype(np.float32).T @ rhs.astype(np.float32)).astype(BF16),
    )
    logits = rng.standard_normal((640, 128)).astype(np.float32)

    def top8_ref():
        idx = np.argpartition(-logits, 8, axis=1)[:, :8]
        vals = np.take_along_axis(logits, idx, axis=1)
        order = np.argsort(-vals, axis=1)
        return np.take_along_axis(vals, order, axis=1), np.take_along_axis(idx, order, axis=1)

    yield "top-8 [640, 128] fp32", lambda: top.top8(logits), top8_ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"{'kernel':40s} {'instrs':>7s} {'emulated':>10s} {'numpy':>10s} {'ratio':>7s}")
    for name, emulated, reference in cases():
        emulated()  # warm-up (imports, caches)
        t_emu = _best(emulated, args.repeat)
        t_ref = _best(reference, args.repeat)
        n = len(sim.last_trace())
        print(f"{name:40s} {n:7d} {t_emu * 1e3:8.2f}ms {t_ref * 1e3:8.2f}ms {t_emu / t_ref:6.1f}x")


if __name__ == "__main__":
    main()
