"""Emulator speed: wall time of real-width kernels in nki_moe.sim divided by their NumPy reference.

Run: .venv/bin/python bench/emulator.py [--repeat N]. Prints ratios (goal <= 3x); never asserts timings.
Kernels: tests/sim/kernels/ (RMSNorm [640, 2048], matmul [128, 2048] x [2048, 768], top-8 [640, 128]).

Then the emulator's instruction rate where Python overhead dominates: a loop of one instruction kind on a
small tile (fp32/bf16 [128, 64]; matmul K=128, M=N=64), as instructions per second of CPU time. That rate
bounds a kernel of many small instructions (decode); the rates at real widths are in bench/kernels.py.

Fairness: both sides run with one OpenBLAS thread (nki_moe.sim.run forces it for the emulated kernel; the
reference is timed inside the same `blas.single_threaded()`), emulated and reference runs alternate so
both see the same machine load, and each side reports its best of N. The references are the plain
vectorised NumPy formulations (described in the output), not loops. CPU time (process_time) is printed
too: on a shared machine it is the steadier of the two.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np

import nki_moe.sim as sim
from nki_moe.sim import blas

sim.install("sim")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: tests.sim.kernels
import nki  # noqa: E402
import nki.isa as nisa  # noqa: E402
import nki.language as nl  # noqa: E402

from tests.sim.kernels import matmul, rmsnorm, topk  # noqa: E402

BF16 = ml_dtypes.bfloat16


def _time(fn) -> tuple[float, float]:
    """(wall, cpu) seconds of one call."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def cases():
    """(name, emulated callable, reference callable, what the reference computes)."""
    rng = np.random.default_rng(0)
    rms, mm, top = rmsnorm, matmul, topk
    x = rng.standard_normal((640, 2048)).astype(np.float32)
    w = rng.standard_normal(2048).astype(np.float32)
    yield (
        "rmsnorm [640, 2048] fp32",
        lambda: rms.rmsnorm(x, w, 1e-6),
        lambda: x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + 1e-6) * w,
        "x / sqrt(mean(x*x, -1) + eps) * w, whole array",
    )
    lhsT = rng.standard_normal((2048, 128)).astype(BF16)
    rhs = rng.standard_normal((2048, 768)).astype(BF16)
    yield (
        "matmul [128, 2048] x [2048, 768] bf16",
        lambda: mm.matmul_tiled(lhsT, rhs),
        lambda: (lhsT.astype(np.float32).T @ rhs.astype(np.float32)).astype(BF16),
        "bf16 -> fp32, one fp32 GEMM (OpenBLAS), round to bf16",
    )
    logits = rng.standard_normal((640, 128)).astype(np.float32)

    def top8_ref():
        idx = np.argpartition(-logits, 8, axis=1)[:, :8]
        vals = np.take_along_axis(logits, idx, axis=1)
        order = np.argsort(-vals, axis=1)
        return np.take_along_axis(vals, order, axis=1), np.take_along_axis(idx, order, axis=1)

    yield "top-8 [640, 128] fp32", lambda: top.top8(logits), top8_ref, "argpartition 8, then sort those 8"


LOOP = 400  # instructions per rate kernel


def _rate_kernel(kind: str):
    """A kernel running LOOP instructions of `kind` on [128, 64] tiles (x [128, 64] in; y out)."""

    @nki.jit
    def k(x):
        a = nl.ndarray((128, 64), dtype=x.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=a, src=x)
        b = nl.ndarray((128, 64), dtype=x.dtype, buffer=nl.sbuf)
        acc = nl.ndarray((64, 64), dtype=nl.float32, buffer=nl.psum)
        for i in range(LOOP):
            if kind == "tensor_copy":
                nisa.tensor_copy(dst=b, src=a)
            elif kind == "tensor_tensor":
                nisa.tensor_tensor(dst=b, data1=a, data2=a, op=nl.add)
            elif kind == "tensor_scalar":
                nisa.tensor_scalar(dst=b, data=a, op0=nl.multiply, operand0=0.5, op1=nl.add, operand1=1.0)
            elif kind == "activation":
                nisa.activation(dst=b, op=nl.exp, data=a, scale=0.5)
            elif kind == "dma_copy":
                nisa.dma_copy(dst=b, src=x)
            else:
                nisa.nc_matmul(dst=acc, stationary=a, moving=a, accumulate=i > 0)
        if kind == "nc_matmul":
            nisa.tensor_copy(dst=b[0:64, :], src=acc)
            nisa.tensor_copy(dst=b[64:128, :], src=acc)
        y = nl.ndarray((128, 64), dtype=x.dtype, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=y, src=b)
        return y

    return k


def rates(repeat: int) -> None:
    """Instructions per second of CPU time for each rate kernel (best of `repeat`)."""
    rng = np.random.default_rng(1)
    print(f"\ninstruction rate: {LOOP} instructions per kernel, [128, 64] tiles, CPU time, best of {repeat}")
    for kind, dtype in (
        ("tensor_copy", np.float32),
        ("tensor_tensor", BF16),
        ("tensor_scalar", BF16),
        ("activation", BF16),
        ("dma_copy", BF16),
        ("nc_matmul", BF16),
    ):
        k = _rate_kernel(kind)
        x = rng.standard_normal((128, 64)).astype(dtype)
        n = len(sim.run(k, x).trace)  # warm-up
        best = min(_time(lambda k=k, x=x: sim.run(k, x))[1] for _ in range(repeat))
        name = np.dtype(dtype).name
        print(f"  {kind:14s} {name:9s} {n / best:9.0f} instr/s  {best / n * 1e6:6.1f} us/instr")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    print(f"best of {args.repeat}, emulated and reference alternating; OpenBLAS 1 thread for both")
    head = f"{'kernel':38s} {'instrs':>6s} {'emulated':>9s} {'numpy':>8s} {'ratio':>6s} {'cpu ratio':>9s}"
    print(head)
    notes = []
    for name, emulated, reference, what in cases():
        with blas.single_threaded():
            emulated(), reference()  # warm-up (imports, caches, buffer pool)
            emu, ref = [], []
            for _ in range(args.repeat):
                emu.append(_time(emulated))
                ref.append(_time(reference))
        n = len(sim.last_trace())
        (we, ce), (wr, cr) = (tuple(min(col) for col in zip(*runs)) for runs in (emu, ref))
        print(f"{name:38s} {n:6d} {we * 1e3:7.2f}ms {wr * 1e3:6.2f}ms {we / wr:5.1f}x {ce / cr:8.1f}x")
        notes.append(f"  {name}: reference = {what}")
    print("\n".join(notes))
    rates(max(3, args.repeat // 3))


if __name__ == "__main__":
    main()
