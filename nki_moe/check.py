"""Numerical checks: tolerances keyed by dtype, the 3-way error ratio, and logit-sequence validation.

Three tools, from the most to the least local:
- :func:`check_close` / :func:`assert_close`: elementwise ``|a − e| <= atol + rtol·|e|`` with the tolerance
  taken from :data:`TOLERANCES` by dtype. All-zero or all-NaN actual outputs fail unless explicitly allowed
  (a kernel that wrote nothing must not pass against a reference that is ~0).
- :func:`error_ratio`: for bf16 kernels, compare the kernel and a bf16 reference against an fp32 reference;
  a ratio near 1 means the kernel is as accurate as the bf16 reference can be.
- :func:`validate_logits`: the competition's logit tolerance map over a greedy generation, with its rule
  for greedy divergence (re-implemented here; see the function).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Tolerance",
    "TOLERANCES",
    "CheckResult",
    "check_close",
    "assert_close",
    "ErrorRatio",
    "error_ratio",
    "LOGIT_TOL_MAP",
    "DIVERGENCE_TOL",
    "PositionCheck",
    "LogitReport",
    "check_position_logits",
    "validate_logits",
]


@dataclass(frozen=True)
class Tolerance:
    """Elementwise tolerance and the largest acceptable 3-way error ratio for one dtype."""

    atol: float
    rtol: float
    max_error_ratio: float


# The one tolerance table. bf16 has 8 significant bits (relative spacing 2^-8 = 3.9e-3); a few roundings
# in a row give ~1e-2. fp32 checks compare implementations that differ only in summation order.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-5, rtol=1e-4, max_error_ratio=4.0),
    "bf16": Tolerance(atol=1e-2, rtol=2e-2, max_error_ratio=2.0),
    "fp16": Tolerance(atol=1e-3, rtol=2e-3, max_error_ratio=2.0),
    "fp8": Tolerance(atol=6e-2, rtol=1.25e-1, max_error_ratio=2.0),
}


@dataclass(frozen=True)
class CheckResult:
    """Outcome of :func:`check_close`; truthy when the check passed."""

    ok: bool
    max_abs: float
    max_rel: float  # max |a − e| / max|e| (0 when e is all zero)
    n_bad: int
    n_total: int
    worst_index: tuple[int, ...]
    message: str

    def __bool__(self) -> bool:
        return self.ok


def _degenerate(actual: np.ndarray, allow_zero: bool, allow_nan: bool) -> str | None:
    """Why ``actual`` is an output that must not pass silently, or None."""
    if actual.size and not allow_nan and np.isnan(actual).all():
        return "actual is all NaN"
    if actual.size and not allow_zero and not np.any(actual):
        return "actual is all zero"
    return None


def check_close(
    actual: np.ndarray,
    expected: np.ndarray,
    dtype: str = "fp32",
    atol: float | None = None,
    rtol: float | None = None,
    allow_zero: bool = False,
    allow_nan: bool = False,
    name: str = "output",
) -> CheckResult:
    """Elementwise closeness ``|a − e| <= atol + rtol·|e|`` with dtype tolerances.

    NaN in ``actual`` fails unless NaN is at the same place in ``expected``.

    Args:
        actual: kernel output.
        expected: reference output (same shape).
        dtype: key of :data:`TOLERANCES` giving the default atol/rtol.
        atol, rtol: overrides.
        allow_zero: accept an all-zero ``actual`` (only when zeros are the expected answer).
        allow_nan: accept an all-NaN ``actual``.
        name: used in the message.
    Returns:
        A :class:`CheckResult` with the first mismatches described in ``message``.
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        return CheckResult(False, np.inf, np.inf, a.size, a.size, (), f"{name}: shape {a.shape} != {e.shape}")
    tol = TOLERANCES[dtype]
    atol = tol.atol if atol is None else atol
    rtol = tol.rtol if rtol is None else rtol
    diff = np.abs(a - e)
    same_nan = np.isnan(a) & np.isnan(e)
    bad = ~((diff <= atol + rtol * np.abs(e)) | same_nan)
    finite = np.where(np.isnan(diff), np.inf, diff)
    max_abs = float(finite.max()) if finite.size else 0.0
    scale = float(np.nanmax(np.abs(e))) if e.size and not np.isnan(e).all() else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(finite)), a.shape)) if a.size else ()
    reason = _degenerate(a, allow_zero, allow_nan)
    n_bad = int(bad.sum())
    ok = reason is None and n_bad == 0
    if ok:
        msg = f"{name}: ok (max abs {max_abs:.3g}, max rel {max_rel:.3g}, atol {atol:g}, rtol {rtol:g})"
    else:
        first = [tuple(int(j) for j in i) for i in np.argwhere(bad)[:5]]
        shown = ", ".join(f"{i}: {a[i]:.6g} vs {e[i]:.6g}" for i in first)
        msg = (
            f"{name}: {reason + '; ' if reason else ''}{n_bad}/{a.size} elements outside atol {atol:g} + "
            f"rtol {rtol:g}; max abs {max_abs:.3g} at {worst}; first mismatches {shown}"
        )
    return CheckResult(ok, max_abs, max_rel, n_bad, a.size, worst, msg)


def assert_close(actual: np.ndarray, expected: np.ndarray, dtype: str = "fp32", **kwargs) -> CheckResult:
    """:func:`check_close` that raises ``AssertionError`` with its message on failure."""
    result = check_close(actual, expected, dtype, **kwargs)
    if not result.ok:
        raise AssertionError(result.message)
    return result


@dataclass(frozen=True)
class ErrorRatio:
    """3-way comparison against an fp32 reference; truthy when ``ratio <= max_ratio``."""

    kernel_error: float  # ||kernel − fp32 ref|| / ||fp32 ref||
    reference_error: float  # ||low-precision ref − fp32 ref|| / ||fp32 ref||
    ratio: float  # kernel_error / reference_error
    max_ratio: float
    message: str

    def __bool__(self) -> bool:
        return self.ratio <= self.max_ratio


def error_ratio(
    kernel: np.ndarray,
    reference_lowp: np.ndarray,
    reference_fp32: np.ndarray,
    dtype: str = "bf16",
    max_ratio: float | None = None,
    allow_zero: bool = False,
) -> ErrorRatio:
    """How much less accurate a low-precision kernel is than a low-precision reference.

    Both are measured against the fp32 reference by relative Frobenius error. A ratio of 1 means the kernel's
    rounding error is that of a faithful bf16 computation; a real bug shows up as a ratio of 10 or more.

    Args:
        kernel: kernel output.
        reference_lowp: the reference run at the kernel's precision (e.g. ``dtype="bf16"`` mode).
        reference_fp32: the reference in fp32.
        dtype: key of :data:`TOLERANCES` for the default ``max_ratio``.
        max_ratio: override.
        allow_zero: accept an all-zero kernel output.
    Returns:
        An :class:`ErrorRatio` (all-zero / all-NaN kernels get ratio inf unless allowed).
    """
    k, lo, hi = (np.asarray(x, dtype=np.float64) for x in (kernel, reference_lowp, reference_fp32))
    limit = TOLERANCES[dtype].max_error_ratio if max_ratio is None else max_ratio
    norm = float(np.linalg.norm(hi)) or 1.0
    k_err = float(np.linalg.norm(k - hi)) / norm
    r_err = float(np.linalg.norm(lo - hi)) / norm
    reason = _degenerate(k, allow_zero, False)
    if reason or np.isnan(k_err):
        ratio = np.inf
    elif r_err == 0.0:
        ratio = 0.0 if k_err == 0.0 else np.inf
    else:
        ratio = k_err / r_err
    msg = (
        f"{reason + '; ' if reason else ''}kernel error {k_err:.3g}, {dtype} reference error {r_err:.3g}, "
        f"ratio {ratio:.3g} (limit {limit:g})"
    )
    return ErrorRatio(k_err, r_err, ratio, limit, msg)


# ---- logit validation ------------------------------------------------------------------------------------

# The competition's tolerance map: top-k -> (atol, rtol); None means all V logits of the position.
LOGIT_TOL_MAP: dict[int | None, tuple[float, float]] = {
    None: (1e-5, 0.05),
    1000: (1e-5, 0.03),
    50: (1e-5, 0.03),
    5: (1e-5, 0.03),
}
# A greedy divergence is tolerated only between tokens the reference scores within this much.
DIVERGENCE_TOL = 1e-3


@dataclass(frozen=True)
class PositionCheck:
    """Logit check of one generated position."""

    ok: bool
    errors: dict[int | None, float]  # per top-k: max (|a − e| − atol) / max|e| over those logits
    expected_token: int
    actual_token: int
    divergence_gap: float  # e[expected_token] − e[actual_token] (0 without divergence)
    shift: float  # constant removed from the actual logits


def _shift(actual: np.ndarray, expected: np.ndarray) -> float:
    """Intercept of the least-squares line actual ≈ slope·expected + intercept (a constant logit offset)."""
    e_mean, a_mean = expected.mean(), actual.mean()
    var = float(np.mean((expected - e_mean) ** 2))
    slope = float(np.mean((expected - e_mean) * (actual - a_mean))) / var if var > 0 else 0.0
    return float(a_mean - slope * e_mean)


def check_position_logits(
    actual: np.ndarray,
    expected: np.ndarray,
    tol_map: Mapping[int | None, tuple[float, float]] = LOGIT_TOL_MAP,
    divergence_tol: float = DIVERGENCE_TOL,
    remove_shift: bool = True,
) -> PositionCheck:
    """Check one position's logits against the reference's.

    For each k of ``tol_map`` take the reference's k largest logits (all when k is None) and the candidate's
    logits at the same token ids; the error is ``max(|a − e| − atol) / max|e|`` over that set — relative to
    the largest reference logit of the set, not to each logit, so near-zero logits do not blow up — and must
    not exceed rtol. Softmax ignores a constant offset, so by default the least-squares constant offset of
    the candidate is removed first. When the greedy tokens differ, the position passes only if the reference
    scores the two tokens within ``divergence_tol`` (then its own top two are that close too).

    Args:
        actual: [V] candidate logits.
        expected: [V] reference logits.
        tol_map: top-k -> (atol, rtol).
        divergence_tol: largest tolerated reference gap between the two greedy tokens.
        remove_shift: subtract the constant offset first.
    Returns:
        A :class:`PositionCheck`.
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(e)  # a masked (-inf) token is excluded, as in the competition
    shift = _shift(a[keep], e[keep]) if remove_shift else 0.0
    a = np.where(keep, a - shift, -np.inf)
    e_valid = np.where(keep, e, -np.inf)
    order = np.argsort(-e_valid, kind="stable")
    errors: dict[int | None, float] = {}
    ok = not (np.isnan(actual).all() or not np.any(actual))
    for k, (atol, rtol) in tol_map.items():
        ids = order[: int(keep.sum()) if k is None else min(k, int(keep.sum()))]
        scale = np.abs(e[ids]).max()
        err = float(((np.abs(a[ids] - e[ids]) - atol) / scale).max()) if scale > 0 else np.inf
        errors[k] = err
        ok &= err <= rtol
    exp_tok, act_tok = int(order[0]), int(np.argmax(a))
    gap = float(e[exp_tok] - e[act_tok]) if exp_tok != act_tok else 0.0
    ok &= gap < divergence_tol if exp_tok != act_tok else True
    return PositionCheck(bool(ok), errors, exp_tok, act_tok, gap, shift)


@dataclass
class LogitReport:
    """Outcome of :func:`validate_logits`; truthy when every position passed."""

    ok: bool
    positions: list[PositionCheck]
    divergences: list[int] = field(default_factory=list)  # positions where the greedy tokens differed
    max_errors: dict[int | None, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.ok

    def summary(self) -> str:
        """One line: pass/fail, max error per top-k, divergences."""
        errs = ", ".join(f"top-{'all' if k is None else k} {v:.3g}" for k, v in self.max_errors.items())
        bad = [i for i, p in enumerate(self.positions) if not p.ok]
        return (
            f"{'PASS' if self.ok else 'FAIL'}: {len(self.positions)} positions; max errors {errs}; "
            f"divergences at {self.divergences or 'none'}; failing positions {bad or 'none'}"
        )


def validate_logits(
    prompt: np.ndarray,
    expected_logits: np.ndarray,
    generate: Callable[[np.ndarray, int], np.ndarray],
    tol_map: Mapping[int | None, tuple[float, float]] = LOGIT_TOL_MAP,
    divergence_tol: float = DIVERGENCE_TOL,
    remove_shift: bool = True,
) -> LogitReport:
    """Validate a candidate's greedy generation against reference logits, position by position.

    The reference's greedy tokens are ``argmax(expected_logits[i])``. The candidate generates greedily from
    the prompt; every position up to its first divergence from the reference tokens is checked with
    :func:`check_position_logits`. A divergence makes later candidate positions incomparable, so the
    candidate is restarted from the prompt plus the reference tokens up to and including the diverging
    position, and checking resumes after it — until all N positions are covered. The report fails if any
    position fails, including a divergence where the reference does not score both tokens within
    ``divergence_tol``.

    Args:
        prompt: [S] token ids.
        expected_logits: [N, V] reference logits of the N generated positions.
        generate: ``generate(ids, n) -> [n, V]`` logits of n greedy steps continuing ``ids``.
        tol_map, divergence_tol, remove_shift: see :func:`check_position_logits`.
    Returns:
        A :class:`LogitReport`.
    """
    expected_logits = np.asarray(expected_logits)
    n = expected_logits.shape[0]
    ref_tokens = expected_logits.argmax(axis=-1)
    positions: list[PositionCheck] = []
    divergences: list[int] = []
    start = 0
    while start < n:
        ids = np.concatenate([np.asarray(prompt), ref_tokens[:start]]).astype(np.int64)
        actual = np.asarray(generate(ids, n - start))
        for j in range(n - start):
            check = check_position_logits(
                actual[j], expected_logits[start + j], tol_map, divergence_tol, remove_shift
            )
            positions.append(check)
            if check.actual_token != check.expected_token:
                divergences.append(start + j)
                break
        start = len(positions)
    max_errors = {k: max(p.errors[k] for p in positions) for k in tol_map}
    return LogitReport(all(p.ok for p in positions), positions, divergences, max_errors)
