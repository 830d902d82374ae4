"""Reproducible fits of the cost model's fitted constants (``calibration.FITS``), with held-out errors.

Two constants have no public source and are fitted here; every other constant of the model is cited.

* ``dma.SWDGE_NS_PER_DESCRIPTOR``: GpSimd time per software-DGE descriptor, fitted over the three published
  fused-MoE TKG latencies whose expert weights move by software-DGE DMAs (K13 BF16/trn2, K13b FP8/trn2,
  K13c FP8/trn3, [MEGA]) by minimising the summed squared log error. Those three points are in sample, so
  the script also fits leave-one-out (on two, predict the third).
* ``dma.HBM_SUSTAINED_FRACTION['trn1']``: the share of a Trn1 core's HBM bandwidth its DMAs sustain, fitted
  on ONE point, the naive version of the Trn1 matmul-tutorial ladder (``mmtut_tiled_trn1``, [MM-TUT-OLD]),
  by solving predicted = published (bisection; the latency falls monotonically with the fraction). The
  other three versions of that ladder are held out and reported with the ladder's rank agreement and spread.

The two fits are independent: the software DGE is not used on trn1 and the trn1 fraction touches no
trn2/trn3 point.

Run: .venv/bin/python bench/fit_cost_model.py   (prints the fits and the per-point errors; ~3 min)
     .venv/bin/python bench/fit_cost_model.py --measured [trn2|trn3]   (your own chip's measurements, from
     ``results/measured_<target>.csv`` written by ``nki_moe.device.measure``: each re-estimated with the
     current model, with per-op median/max |error| and rank agreement; docs/device.md)
"""

from __future__ import annotations

import math
import statistics
import sys

import nki_moe.perf.dma as dma_model
from nki_moe.perf.calibration import FITS, MEASUREMENTS, calibration_table, ladder_stats, predict

_BY_KEY = {m.key: m for m in MEASUREMENTS}
SWDGE = "dma.SWDGE_NS_PER_DESCRIPTOR"
TRN1 = "dma.HBM_SUSTAINED_FRACTION['trn1']"


def _get(param: str) -> float:
    return dma_model.SWDGE_NS_PER_DESCRIPTOR if param == SWDGE else dma_model.HBM_SUSTAINED_FRACTION["trn1"]


def _set(param: str, value: float) -> None:
    if param == SWDGE:
        dma_model.SWDGE_NS_PER_DESCRIPTOR = value
    else:
        dma_model.HBM_SUSTAINED_FRACTION["trn1"] = value


def ratios(value: float, keys=FITS[SWDGE], param: str = SWDGE) -> dict[str, float]:
    """predicted / measured of each point with ``param`` set to ``value`` (restored afterwards)."""
    old = _get(param)
    _set(param, value)
    try:
        return {k: predict(_BY_KEY[k]) / _BY_KEY[k].measured for k in keys}
    finally:
        _set(param, old)


def loss(value: float, keys=FITS[SWDGE], param: str = SWDGE) -> float:
    """Summed squared log(predicted / measured) over ``keys``."""
    return sum(math.log(r) ** 2 for r in ratios(value, keys, param).values())


def fit(keys=FITS[SWDGE], lo: float = 0.0, hi: float = 60.0) -> float:
    """SWDGE ns per descriptor: grid (2 ns) then golden-section search of the loss; rounded to 0.1 ns."""
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


def fit_trn1_fraction(keys=FITS[TRN1], lo: float = 0.05, hi: float = 1.0, steps: int = 14) -> float:
    """HBM_SUSTAINED_FRACTION['trn1'] solving mean log(predicted / measured) = 0 (bisection); 3 decimals."""

    def log_ratio(v: float) -> float:
        return sum(math.log(r) for r in ratios(v, keys, TRN1).values()) / len(keys)

    if log_ratio(hi) > 0:  # still too slow at the full HBM share: the bound is not HBM
        return hi
    for _ in range(steps):
        mid = (lo + hi) / 2
        if log_ratio(mid) > 0:  # predicted slower than published: more bandwidth
            lo = mid
        else:
            hi = mid
    return round((lo + hi) / 2, 3)


def measured_report(target: str | None = None) -> int:
    """Print the device measurements of ``target`` (all targets: None) against the current cost model."""
    from nki_moe import device
    from nki_moe.perf.calibration import kendall_tau

    rows = device.calibration_rows(target, reestimate=True)
    if not rows:
        where = device.measurements_path(target or "trn2").parent
        print(f"no device-timed measurements in {where} (run nki_moe.device.measure on a Trainium host)")
        return 1
    by_op: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        print(
            f"  {r['key']:48s} estimate {r['estimate_us']:9.2f} us  measured {r['measured_us']:9.2f} us  "
            f"{100 * r['error']:+6.1f} %"
        )
        by_op.setdefault((r["op"], r["hardware"]), []).append(r)
    errs = [abs(r["error"]) for r in rows]
    print(
        f"all {len(rows)} points: median |error| {100 * statistics.median(errs):.1f} %, "
        f"max {100 * max(errs):.1f} %"
    )
    for (op, hw), rs in sorted(by_op.items()):
        shapes = {tuple(sorted(r["shape"].items())) for r in rs}
        for shape in sorted(shapes):
            pts = [r for r in rs if tuple(sorted(r["shape"].items())) == shape]
            if len(pts) > 1:  # a ladder at one shape: are its versions ranked right?
                tau = kendall_tau([r["estimate_us"] for r in pts], [r["measured_us"] for r in pts])
                print(f"  {op} {hw} {dict(shape)}: {len(pts)} versions, Kendall tau {tau:.2f}")
    return 0


def main() -> None:
    if "--measured" in sys.argv:
        i = sys.argv.index("--measured")
        target = sys.argv[i + 1] if len(sys.argv) > i + 1 else None
        sys.exit(measured_report(target))
    for v in (0.0, 10.0, 20.0, 30.0, 40.0):
        print(f"{v:5.1f} ns: " + "  ".join(f"{k} {100 * (r - 1):+.0f}%" for k, r in ratios(v).items()))
    opt = fit()
    print(f"\nfull fit over {len(FITS[SWDGE])} points: {SWDGE} = {opt} ns (in dma.py: {_get(SWDGE)})")
    for k, r in ratios(opt).items():
        print(f"  in-sample      {k:18s} {100 * (r - 1):+6.1f} %")
    print("leave-one-out (fit on the other two, predict this one):")
    for k in FITS[SWDGE]:
        v = fit(tuple(x for x in FITS[SWDGE] if x != k))
        r = ratios(v, (k,))[k]
        print(f"  out-of-sample  {k:18s} {100 * (r - 1):+6.1f} %   (fitted {v} ns)")

    f = fit_trn1_fraction()
    print(f"\nfit on {FITS[TRN1]}: {TRN1} = {f} (in dma.py: {_get(TRN1)})")
    ladder = [m for m in MEASUREMENTS if m.ladder == "mmtut_trn1"]
    old = _get(TRN1)
    _set(TRN1, f)
    try:
        rows = calibration_table(ladder)
    finally:
        _set(TRN1, old)
    for r in rows:
        tag = "in-sample    " if r.measurement.key in FITS[TRN1] else "out-of-sample"
        print(
            f"  {tag}  {r.measurement.key:28s} {r.predicted:7.2f} vs {r.measurement.measured:6.2f} ms "
            f"{100 * r.error:+6.1f} %"
        )
    st = ladder_stats(rows)["mmtut_trn1"]
    oos = st["out_of_sample"]
    print(
        f"  ladder: tau {st['kendall_tau']:.2f}, spread {st['spread_predicted']:.2f}x vs "
        f"{st['spread_published']:.2f}x (ratio {st['spread_ratio']:.2f}), held-out median "
        f"{100 * oos['median_abs_error']:.1f} %, max {100 * oos['max_abs_error']:.1f} %"
    )


if __name__ == "__main__":
    main()
