"""Emulated wall time of the final kernel versions at real width vs their NumPy reference.

Run: .venv/bin/python bench/kernels.py [--repeat N] [--lm-head]. Prints ratios; never asserts timings.
``--lm-head`` adds the decode LM head GEMV at N = 151936 (0.62 GB of bf16 weights; needs ~3 GB of RAM).
"""

from __future__ import annotations

import argparse

import numpy as np

import nki_moe.sim as sim

sim.install("sim")

from nki_moe.bench import best_time, bf16, run_kernel, tile_weight  # noqa: E402
from nki_moe.kernels import matmul, rmsnorm, router  # noqa: E402
from nki_moe.reference import add_rms_norm, linear, rms_norm  # noqa: E402
from nki_moe.reference import router as router_ref  # noqa: E402

H = 2048


def cases(lm_head: bool):
    """(label, emulated call, NumPy reference call) at the model's widths."""
    rng = np.random.default_rng(0)
    x, r, w = bf16(rng.standard_normal((640, H))), bf16(rng.standard_normal((640, H))), bf16(rng.random(H))
    xf, rf, wf = (a.astype(np.float32) for a in (x, r, w))
    yield (
        "rmsnorm_v3 [640, 2048] LNC=2",
        lambda: run_kernel(rmsnorm.rmsnorm_v3, x, w, 1e-6, lnc=2),
        lambda: rms_norm(xf, wf, 1e-6, "bf16"),
    )
    yield (
        "add_rmsnorm_v3 [640, 2048] LNC=2",
        lambda: run_kernel(rmsnorm.add_rmsnorm_v3, x, r, w, 1e-6, lnc=2),
        lambda: add_rms_norm(xf, rf, wf, 1e-6, "bf16"),
    )
    widths = [(640, 4096), (1, 4096)] + ([(1, 151936)] if lm_head else [])
    for T, N in widths:
        wq = bf16(rng.standard_normal((H, N)) / 45)
        xq, wqf, wt = x[:T], wq.astype(np.float32), tile_weight(wq)  # v6 takes the pre-tiled weight
        yield (
            f"matmul_v6 [{T}, 2048] x [2048, {N}] LNC=2",
            lambda xq=xq, wt=wt, N=N: run_kernel(matmul.matmul_v6, xq, wt, N, lnc=2),
            lambda xq=xq, wqf=wqf: linear(xq.astype(np.float32), wqf.T, "bf16"),
        )
    wg = bf16(rng.standard_normal((H, 128)) / 20)
    wgf = wg.astype(np.float32)
    yield (
        "router_v2 [640, 2048] x [2048, 128]",
        lambda: run_kernel(router.router_v2, x, wg),
        lambda: router_ref(xf, wgf.T, 8, True, "bf16"),
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
