"""Reproducible fit of the cost model's one fitted constant: software-DGE time per DMA descriptor.

No public source gives the GpSimd cost of writing a software-DGE descriptor. It is fitted here over the
three published fused-MoE TKG measurements that move their expert weights with software-DGE DMAs
(trainium.md §5 K13 BF16/trn2, K13b FP8/trn2, K13c FP8/trn3) by minimising the summed squared log error of
the estimated latency; every other constant of the model comes from a cited source.

Run: .venv/bin/python bench/fit_cost_model.py   (prints the grid, the optimum and the per-point errors)
"""

from __future__ import annotations

import math

import nki_moe.perf.dma as dma_model
from nki_moe.perf.calibration import MEASUREMENTS, predict

FIT_KEYS = ("moe_bf16_trn2", "moe_fp8_trn2", "moe_fp8_trn3")


def loss(value: float) -> tuple[float, dict[str, float]]:
    """Summed squared log(predicted / measured) over the fit points at SWDGE_NS_PER_DESCRIPTOR = value."""
    old = dma_model.SWDGE_NS_PER_DESCRIPTOR
    dma_model.SWDGE_NS_PER_DESCRIPTOR = value
    try:
        errs = {m.key: predict(m) / m.measured for m in MEASUREMENTS if m.key in FIT_KEYS}
    finally:
        dma_model.SWDGE_NS_PER_DESCRIPTOR = old
    return sum(math.log(r) ** 2 for r in errs.values()), errs


def main() -> None:
    grid = [2.0 * k for k in range(0, 21)]
    results = [(v, *loss(v)) for v in grid]
    for v, val, errs in results:
        print(
            f"{v:5.1f} ns  loss {val:.4f}  "
            + "  ".join(f"{k} {100 * (r - 1):+.0f}%" for k, r in errs.items())
        )
    best = min(results, key=lambda t: t[1])[0]
    lo, hi = max(0.0, best - 2.0), best + 2.0
    for _ in range(30):  # golden-section refinement around the grid optimum
        a, b = lo + 0.382 * (hi - lo), lo + 0.618 * (hi - lo)
        if loss(a)[0] < loss(b)[0]:
            hi = b
        else:
            lo = a
    opt = round((lo + hi) / 2, 1)
    val, errs = loss(opt)
    print(
        f"\nfitted SWDGE_NS_PER_DESCRIPTOR = {opt} ns (loss {val:.4f}); value in nki_moe/perf/dma.py: "
        f"{dma_model.SWDGE_NS_PER_DESCRIPTOR}"
    )
    for k, r in errs.items():
        print(f"  {k:16s} {100 * (r - 1):+6.1f} %")


if __name__ == "__main__":
    main()
