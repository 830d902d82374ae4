"""The registry of ops: each op's kernel module, reference, cost, inputs, versions, notebook, figures, tests.

A newcomer finds kernel → reference → notebook → figure by the op's name alone::

    from nki_moe import ops
    op = ops.get("matmul")      # a nki_moe.ladder.Ladder
    op.module, op.reference, op.notebook, op.figures, op.tests

The tests, the report and the README's op table iterate over :data:`OPS` (a test keeps the README equal to
:func:`readme_table`). Inputs are seeded: ``make_args(seed, **shape)`` draws from
``default_rng(seed + T)``, so a notebook, a test and a benchmark asking for the same shape get the same data.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from nki_moe.check import check_close
from nki_moe.kernels.layouts import tile_weight
from nki_moe.ladder import Ladder, Version, exact, ratio
from nki_moe.reference import add_rms_norm, add_rms_norm_cost, linear, linear_cost, rms_norm, rms_norm_cost
from nki_moe.reference.router import router_cost, routing

__all__ = ["OPS", "get", "bf16", "readme_table"]

HIDDEN = 2048
EPS = 1e-6


def bf16(a) -> np.ndarray:
    """``a`` rounded to a bfloat16 array."""
    return np.asarray(a, dtype=np.float32).astype(ml_dtypes.bfloat16)


# ---- RMSNorm and the fused residual add ------------------------------------------------------------------
def _norm_args(seed: int, T: int, H: int = HIDDEN) -> tuple:
    """x [T, H] (scale 2), w [H] (≈ 1), eps."""
    rng = np.random.default_rng(seed + T)
    return bf16(2 * rng.standard_normal((T, H))), bf16(1 + 0.1 * rng.standard_normal(H)), EPS


def _add_norm_args(seed: int, T: int, H: int = HIDDEN) -> tuple:
    """x, residual [T, H], w [H], eps (the kernels' argument order)."""
    x, w, eps = _norm_args(seed, T, H)
    residual = bf16(np.random.default_rng(seed + T + 1).standard_normal((T, H)))
    return x, residual, w, eps


def _compare_y(out, lowp, fp32):
    """The one output y by its 3-way error ratio."""
    return [ratio(out[0], lowp[0], fp32[0])]


def _compare_add_norm(out, lowp, fp32):
    """y by its error ratio; h (the new residual stream) bit-exact: one bf16 add, rounded as HF's."""
    return [ratio(out[0], lowp[0], fp32[0]), exact(out[1].astype(np.float32), lowp[1], "h")]


# ---- projections -------------------------------------------------------------------------------------------
def _matmul_args(seed: int, T: int, N: int = 4096, K: int = HIDDEN) -> tuple:
    """x [T, K], w [K, N] (the kernels' layout: ``W.T`` of the HF [N, K] weight)."""
    rng = np.random.default_rng(seed + T)
    return bf16(rng.standard_normal((T, K))), bf16(rng.standard_normal((K, N)) / 45)


def _matmul_cost(T: int, N: int = 4096, K: int = HIDDEN):
    return linear_cost(T, K, N)


def _tiled(args: tuple, lnc: int) -> tuple:
    """(x, w) → (x, w pre-tiled for ``lnc`` cores, N): the load-time layout of matmul_v5/v6."""
    x, w = args
    return x, tile_weight(w, n_prog=lnc), w.shape[1]


# ---- router ----------------------------------------------------------------------------------------------
def _router_args(seed: int, T: int, groups: int = 1, H: int = HIDDEN, E: int = 128) -> tuple:
    """x [T, H], w_gate [H, E]; ``groups`` > 1 repeats gate columns in runs (constructed ties)."""
    rng = np.random.default_rng(seed + T)
    base = rng.standard_normal((H, -(-E // groups))) / 20
    return bf16(rng.standard_normal((T, H))), bf16(base[:, np.arange(E) // groups])


def _router_cost(T: int, groups: int = 1, H: int = HIDDEN, E: int = 128):
    """The router's cost (``groups`` changes only the values, not the work)."""
    return router_cost(T, H, E)


def _compare_router(out, lowp, fp32):
    """Indices exact (ties: lower expert first); weights bf16-close; routing metadata exact when emitted."""
    got = [
        exact(out[0].astype(np.int64), lowp[0], "idx"),
        check_close(out[1].astype(np.float32), lowp[1], "bf16", name="weights"),
    ]
    names = ("counts", "pos", "order")
    for name, a, e in zip(names, out[2:], lowp[2:]):
        got.append(exact(a.reshape(e.shape).astype(np.int64), e, name))
    return got


def _versions(kernel: str, lnc: tuple[int, ...], layout: tuple | None = None) -> tuple[Version, ...]:
    """v0 … vN of ``<kernel>_vI`` with each version's LNC degree (and host-side layout)."""
    layout = layout or (None,) * len(lnc)
    return tuple(Version(f"v{i}", f"{kernel}_v{i}", n, lay) for i, (n, lay) in enumerate(zip(lnc, layout)))


OPS: dict[str, Ladder] = {
    op.name: op
    for op in (
        Ladder(
            name="rmsnorm",
            title="RMSNorm [T, 2048] bf16",
            module="nki_moe.kernels.rmsnorm",
            make_args=_norm_args,
            reference=rms_norm,
            cost=lambda T, H=HIDDEN: rms_norm_cost(T, H),
            compare=_compare_y,
            versions=_versions("rmsnorm", lnc=(1, 1, 2, 2)),
            notebook="notebooks/01_rmsnorm.py",
            figures=("01_rmsnorm_sweep", "01_rmsnorm_roofline"),
            tests=("tests/kernels/test_rmsnorm.py",),
        ),
        Ladder(
            name="add_rmsnorm",
            title="residual add + RMSNorm [T, 2048] bf16",
            module="nki_moe.kernels.rmsnorm",
            make_args=_add_norm_args,
            reference=add_rms_norm,
            cost=lambda T, H=HIDDEN: add_rms_norm_cost(T, H),
            compare=_compare_add_norm,
            versions=_versions("add_rmsnorm", lnc=(1, 1, 2, 2)),
            notebook="notebooks/01_rmsnorm.py",
            tests=("tests/kernels/test_rmsnorm.py",),
        ),
        Ladder(
            name="matmul",
            title="projection matmul [T, 2048] x [2048, N]",
            module="nki_moe.kernels.matmul",
            make_args=_matmul_args,
            reference=linear,
            cost=_matmul_cost,
            compare=_compare_y,
            versions=_versions("matmul", lnc=(2,) * 7, layout=(None,) * 5 + (_tiled, _tiled)),
            notebook="notebooks/02_projection_matmul.py",
            figures=("02_projection_matmul_sweep", "02_projection_matmul_roofline"),
            tests=("tests/kernels/test_matmul.py",),
        ),
        Ladder(
            name="router",
            title="router top-8 [T, 2048] x [2048, 128]",
            module="nki_moe.kernels.router",
            make_args=_router_args,
            reference=routing,
            cost=_router_cost,
            compare=_compare_router,
            versions=_versions("router", lnc=(1, 2, 1)),
            notebook="notebooks/03_router_top8.py",
            figures=("03_router_top8_sweep", "03_router_top8_roofline"),
            tests=("tests/kernels/test_router.py",),
        ),
    )
}


def get(name: str) -> Ladder:
    """The registered op ``name``; the error lists the known ones."""
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"no op {name!r}; registered ops: {sorted(OPS)}") from None


def readme_table() -> str:
    """The README's op table (markdown), generated from :data:`OPS`."""
    lines = ["| op | kernels | reference | notebook | figures | tests |", "|---|---|---|---|---|---|"]
    for op in OPS.values():
        ref = f"{op.reference.__module__}.{op.reference.__name__}"
        versions = f"`{op.module}` {op.versions[0].kernel}…{op.final.kernel.rsplit('_', 1)[1]}"
        figs = ", ".join(f"`{f}`" for f in op.figures) or "—"
        tests = ", ".join(f"`{t}`" for t in op.tests)
        lines.append(f"| `{op.name}` | {versions} | `{ref}` | `{op.notebook}` | {figs} | {tests} |")
    return "\n".join(lines)
