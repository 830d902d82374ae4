"""Reproducible fit of the cost model's one fitted constant: software-DGE time per DMA descriptor.

No public source gives the GpSimd cost of writing a software-DGE descriptor. It is fitted here over the
three published fused-MoE TKG latencies whose expert weights move by software-DGE DMAs
(``calibration.FITTED_KEYS``: K13 BF16/trn2, K13b FP8/trn2, K13c FP8/trn3, [MEGA]) by minimising
the summed squared log error; every other constant of the model comes from a cited source. Because those
three points are in-sample for the full fit, the script also fits leave-one-out (on two, predict the
third), which gives their out-of-sample errors (reported in docs/cost-model.md).

Run: .venv/bin/python bench/fit_cost_model.py   (prints the grid, the fits and the per-point errors)
"""

from __future__ import annotations

import math

import nki_moe.perf.dma as dma_model
from nki_moe.perf.calibration import FITTED_KEYS, MEASUREMENTS, predict

_BY_KEY = {m.key: m for m in MEASUREMENTS}


def ratios(value: float, keys=FITTED_KEYS) -> dict[str, float]:
    """predicted / measured of each point at SWDGE_NS_PER_DESCRIPTOR = value."""
    old = dma_model.SWDGE_NS_PER_DESCRIPTOR
    dma_model.SWDGE_NS_PER_DESCRIPTOR = value
    try:
        return {k: predict(_BY_KEY[k]) / _BY_KEY[k].measured for k in keys}
    finally:
        dma_model.SWDGE_NS_PER_DESCRIPTOR = old


def loss(value: float, keys=FITTED_KEYS) -> float:
    """Summed squared log(predicted / measured) over ``keys``."""
    return sum(math.log(r) ** 2 for r in ratios(value, keys).values())


def fit(keys=FITTED_KEYS, lo: float = 0.0, hi: float = 60.0) -> float:
    """Grid (2 ns) then golden-section search of the loss over ``keys``; rounded to 0.1 ns."""
    grid = [lo + 2.0 * k for k in range(int((hi - lo) / 2) + 1)]
    best = min(grid, key=lambda v: loss(v, keys))
    a, b = max(lo, best - 2.0), best + 2.0
    for _ in range(30):
        c, d = a + 0.382 * (b - a), a + 0.618 * (b - a)
        if loss(c, keys) < loss(d, keys):
            b = d
        else:
            a = c
    return round((a + b) / 2, 1)


def main() -> None:
    for v in (0.0, 10.0, 20.0, 30.0, 40.0):
        print(f"{v:5.1f} ns: " + "  ".join(f"{k} {100 * (r - 1):+.0f}%" for k, r in ratios(v).items()))
    opt = fit()
    print(
        f"\nfull fit over {len(FITTED_KEYS)} points: SWDGE_NS_PER_DESCRIPTOR = {opt} ns "
        f"(value in nki_moe/perf/dma.py: {dma_model.SWDGE_NS_PER_DESCRIPTOR})"
    )
    for k, r in ratios(opt).items():
        print(f"  in-sample      {k:16s} {100 * (r - 1):+6.1f} %")
    print("leave-one-out (fit on the other two, predict this one):")
    for k in FITTED_KEYS:
        v = fit(tuple(x for x in FITTED_KEYS if x != k))
        r = ratios(v, (k,))[k]
        print(f"  out-of-sample  {k:16s} {100 * (r - 1):+6.1f} %   (fitted {v} ns)")


if __name__ == "__main__":
    main()
