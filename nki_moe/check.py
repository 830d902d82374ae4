"""Numerical checks: tolerances keyed by dtype, the 3-way error ratio, and logit-sequence validation.

Three tools, from the most to the least local:
- :func:`check_close` / :func:`assert_close`: elementwise ``|a − e| <= atol + rtol·|e|`` with the tolerance
  taken from :data:`TOLERANCES` by dtype (a key, a NumPy/ml_dtypes name or a dtype object). All-zero or
  all-NaN actual outputs fail unless explicitly allowed (a kernel that wrote nothing must not pass against a
  reference that is ~0), and so does an output whose magnitude is far from the reference's (the absolute
  tolerance alone must never make a check pass). Equal infinities (attention masks) are equal.
- :func:`error_ratio`: for bf16 kernels, compare the kernel and a bf16 reference against an fp32 reference;
  a ratio near 1 means the kernel is as accurate as the bf16 reference can be.
- :func:`validate_logits`: the competition's logit tolerance map over a greedy generation. Two rules:
  ``rule="workbook"`` (the default, stricter: a non-finite candidate logit fails unless the reference has the
  same masked −inf, a divergence is forgiven only when both sides score the two tokens within 0.001, no
  rounding) and ``rule="competition"``, the competition's own check re-implemented exactly (see
  :func:`check_position_logits`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Tolerance",
    "TOLERANCES",
    "tolerance",
    "CheckResult",
    "check_close",
    "assert_close",
    "ErrorRatio",
    "error_ratio",
    "LOGIT_TOL_MAP",
    "DIVERGENCE_TOL",
    "MAGNITUDE_FACTOR",
    "RULES",
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


# Names for the keys of TOLERANCES: NumPy / ml_dtypes / NKI dtype names (fp8 formats share one tolerance).
_DTYPE_KEYS = {
    "float32": "fp32",
    "tfloat32": "fp32",
    "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float8_e4m3": "fp8",
    "float8_e4m3fn": "fp8",
    "float8_e5m2": "fp8",
}


def tolerance(dtype: object) -> Tolerance:
    """The :data:`TOLERANCES` entry for a key ("bf16"), a dtype name ("bfloat16", "float32") or a dtype
    object (``np.float32``, ``ml_dtypes.bfloat16``, ``np.dtype("float16")``, an ``nl`` dtype).

    Raises ``ValueError`` naming the dtype and the accepted names for anything else (float64 included: no
    kernel computes in it, so it has no tolerance of its own).
    """
    if isinstance(dtype, Tolerance):
        return dtype
    name = dtype if isinstance(dtype, str) else getattr(dtype, "name", None)
    if not isinstance(name, str):
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = None
    if isinstance(name, str):
        key = _DTYPE_KEYS.get(name.lower(), name.lower())
        if key in TOLERANCES:
            return TOLERANCES[key]
    accepted = sorted(TOLERANCES) + sorted(_DTYPE_KEYS)
    raise ValueError(
        f"no tolerance for dtype {dtype!r}; accepted: {', '.join(accepted)} (or their dtype objects)"
    )


# An output whose norm is more than this factor below or above the reference's fails even when every element
# is within atol + rtol·|e| (only possible when atol dominates, i.e. the reference is tiny next to atol).
MAGNITUDE_FACTOR = 2.0


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


def _magnitude_mismatch(a: np.ndarray, e: np.ndarray, factor: float | None) -> str | None:
    """Why ``a``'s magnitude is too far from ``e``'s to be the same result, or None.

    Compares root-mean-square values over the elements finite in both. Skipped when the reference is all
    zero there (no scale to compare with: the all-zero rule decides).
    """
    if factor is None:
        return None
    both = np.isfinite(a) & np.isfinite(e)
    if not both.any():
        return None
    rms_e = float(np.sqrt(np.mean(e[both] ** 2)))
    rms_a = float(np.sqrt(np.mean(a[both] ** 2)))
    if rms_e == 0.0 or rms_e / factor <= rms_a <= rms_e * factor:
        return None
    side = "below" if rms_a < rms_e else "above"
    return (
        f"actual's magnitude (rms {rms_a:.3g}) is far {side} the reference's (rms {rms_e:.3g}, more than "
        f"{factor:g}x): the elementwise test passed only through atol"
    )


def check_close(
    actual: np.ndarray,
    expected: np.ndarray,
    dtype: object = "fp32",
    atol: float | None = None,
    rtol: float | None = None,
    allow_zero: bool = False,
    allow_nan: bool = False,
    name: str = "output",
    magnitude_factor: float | None = MAGNITUDE_FACTOR,
) -> CheckResult:
    """Elementwise closeness ``|a − e| <= atol + rtol·|e|`` with dtype tolerances.

    NaN in ``actual`` fails unless NaN is at the same place in ``expected``; an infinity passes only where
    ``expected`` has the same infinity (a masked −inf equals a masked −inf).

    Args:
        actual: kernel output.
        expected: reference output (same shape).
        dtype: the default atol/rtol: a key of :data:`TOLERANCES`, a dtype name ("bfloat16") or a dtype
            object (see :func:`tolerance`).
        atol, rtol: overrides.
        allow_zero: accept an all-zero ``actual`` (only when zeros are the expected answer).
        allow_nan: accept an all-NaN ``actual``.
        name: used in the message.
        magnitude_factor: fail when the rms of ``actual`` is more than this factor below or above the
            reference's (:data:`MAGNITUDE_FACTOR`); None turns the guard off (for outputs that are
            legitimately noise-sized next to atol).
    Returns:
        A :class:`CheckResult` with the first mismatches described in ``message``.
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        return CheckResult(False, np.inf, np.inf, a.size, a.size, (), f"{name}: shape {a.shape} != {e.shape}")
    tol = tolerance(dtype)
    atol = tol.atol if atol is None else atol
    rtol = tol.rtol if rtol is None else rtol
    same = (np.isnan(a) & np.isnan(e)) | (np.isinf(e) & (a == e))  # the same NaN or the same infinity
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(a - e))
        bad = ~((diff <= atol + rtol * np.abs(e)) | same) | (np.isinf(e) & ~same)  # inf is never "close"
    finite = np.where(np.isnan(diff), np.inf, diff)
    max_abs = float(finite.max()) if finite.size else 0.0
    fin_e = np.abs(e[np.isfinite(e)])
    scale = float(fin_e.max()) if fin_e.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(finite)), a.shape)) if a.size else ()
    reason = _degenerate(a, allow_zero, allow_nan)
    n_bad = int(bad.sum())
    if reason is None and n_bad == 0 and np.any(a):  # an all-zero actual is allow_zero's to judge
        reason = _magnitude_mismatch(a, e, magnitude_factor)
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


def assert_close(actual: np.ndarray, expected: np.ndarray, dtype: object = "fp32", **kwargs) -> CheckResult:
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
    dtype: object = "bf16",
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
        dtype: the default ``max_ratio``: a key of :data:`TOLERANCES`, a dtype name or object.
        max_ratio: override.
        allow_zero: accept an all-zero kernel output.
    Returns:
        An :class:`ErrorRatio` (all-zero / all-NaN kernels get ratio inf unless allowed).
    """
    k, lo, hi = (np.asarray(x, dtype=np.float64) for x in (kernel, reference_lowp, reference_fp32))
    limit = tolerance(dtype).max_error_ratio if max_ratio is None else max_ratio
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

# The competition's tolerance map ([MOE-REPO] main.py): top-k -> (atol, rtol); None means all V logits.
LOGIT_TOL_MAP: dict[int | None, tuple[float, float]] = {
    None: (1e-5, 0.05),
    1000: (1e-5, 0.03),
    50: (1e-5, 0.03),
    5: (1e-5, 0.03),
}
# A greedy divergence is tolerated only between tokens scored within this much.
DIVERGENCE_TOL = 1e-3
# "workbook": the default, stricter than the competition in every respect; "competition": its rule exactly.
RULES = ("workbook", "competition")


@dataclass(frozen=True)
class PositionCheck:
    """Logit check of one generated position; truthy when it passed."""

    ok: bool
    errors: dict[int | None, float]  # per top-k: max (|a − e| − atol) / max|e| over those logits
    expected_token: int
    actual_token: int
    divergence_gap: float  # the gap between the two greedy tokens that decided (0 without divergence)
    shift: float  # constant removed from the actual logits
    n_nonfinite: int = 0  # candidate logits that are NaN/±inf where the reference is not the same −inf
    rule: str = "workbook"
    reason: str = ""  # why it failed ("" when ok)

    def __bool__(self) -> bool:
        return self.ok


def _shift(actual: np.ndarray, expected: np.ndarray) -> float:
    """Intercept of the least-squares line actual ≈ slope·expected + intercept (a constant logit offset)."""
    e_mean, a_mean = expected.mean(), actual.mean()
    var = float(np.mean((expected - e_mean) ** 2))
    slope = float(np.mean((expected - e_mean) * (actual - a_mean))) / var if var > 0 else 0.0
    return float(a_mean - slope * e_mean)


def _decimals(x: float) -> int:
    """Digits after the decimal point of a tolerance as written (0.05 -> 2, 1e-3 -> 3, 0.125 -> 3)."""
    text = repr(float(x))
    mantissa, _, exp = text.partition("e")
    digits = len(mantissa.split(".")[1].rstrip("0")) if "." in mantissa else 0
    return max(digits - int(exp or 0), 0)


def _top_ids(e: np.ndarray, k: int | None) -> np.ndarray:
    """Indices of the k largest values of e (all when k is None), largest first, ties by index."""
    order = np.argsort(-e, kind="stable")
    return order if k is None else order[: min(k, e.size)]


def _competition_position(
    a: np.ndarray, e: np.ndarray, tol_map, divergence_tol: float, remove_shift: bool
) -> PositionCheck:
    """The competition's per-position check, exactly: [TORCH-NEURONX] logit_validation, as the harness
    ([MOE-REPO] main.py) runs it through [NXDI].

    Logits that are −inf on either side are dropped; the least-squares constant shift of the candidate is
    removed; for each k the error of the reference's top-k logits is ``(|a − e| − atol) / max|e|``, and the
    position passes when every error **rounded to rtol's decimals** is ≤ rtol (the reported error is the
    unrounded maximum). When the greedy tokens differ, the divergence is forgiven when the **candidate's**
    logits of the two tokens differ by less than ``divergence_tol``. NaN or +inf in the candidate fail
    through the arithmetic (NaN is never ≤ rtol).
    """
    keep = ~((a == -np.inf) | (e == -np.inf))
    ids_kept = np.flatnonzero(keep)
    ak, ek = a[keep], e[keep]
    shift = 0.0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if remove_shift and ek.size:
            A = np.vstack([ek, np.ones(ek.size)]).T
            try:
                shift = float(np.linalg.lstsq(A, ak, rcond=None)[0][1])
            except np.linalg.LinAlgError:  # NaN/inf in the reference
                shift = float("nan")
            ak = ak - shift
        errors: dict[int | None, float] = {}
        ok = True
        for k, (atol, rtol) in tol_map.items():
            top = _top_ids(ek, k)
            err = (np.abs(ak[top] - ek[top]) - atol) / np.max(np.abs(ek[top]))
            ok &= bool(np.all(np.round(err, _decimals(rtol)) <= rtol))
            errors[k] = float(np.max(err)) if err.size else 0.0
        exp_k, act_k = int(np.argmax(ek)), int(np.argmax(ak))
        gap = float(abs(ak[act_k] - ak[exp_k])) if exp_k != act_k else 0.0
    if exp_k != act_k:
        ok &= gap < divergence_tol
    n_bad = int(np.sum(~np.isfinite(ak)))
    reason = "" if ok else "outside the competition's tolerance map or an unforgiven divergence"
    return PositionCheck(
        bool(ok), errors, int(ids_kept[exp_k]), int(ids_kept[act_k]), gap, shift, n_bad, "competition", reason
    )


def check_position_logits(
    actual: np.ndarray,
    expected: np.ndarray,
    tol_map: Mapping[int | None, tuple[float, float]] = LOGIT_TOL_MAP,
    divergence_tol: float = DIVERGENCE_TOL,
    remove_shift: bool = True,
    rule: str = "workbook",
) -> PositionCheck:
    """Check one position's logits against the reference's.

    For each k of ``tol_map`` take the reference's k largest logits (all when k is None) and the candidate's
    logits at the same token ids; the error is ``(|a − e| − atol) / max|e|`` over that set — relative to the
    largest reference logit of the set, not to each logit, so near-zero logits do not blow up. Softmax
    ignores a constant offset, so by default the least-squares constant offset of the candidate is removed
    first.

    ``rule="workbook"`` (default) is stricter than the competition everywhere: a candidate logit that is NaN
    or ±inf fails unless the reference has −inf at the same token (a mask both apply; those tokens are left
    out), and a finite candidate logit where the reference masks −inf fails too; errors are not rounded; a
    greedy divergence is forgiven only when **both** the reference and the candidate score the two tokens
    within ``divergence_tol``. ``rule="competition"`` is the competition's check exactly (see
    ``_competition_position``: −inf on either side dropped, errors rounded to rtol's decimals, divergence
    judged on the candidate's logits only).

    Args:
        actual: [V] candidate logits.
        expected: [V] reference logits.
        tol_map: top-k -> (atol, rtol).
        divergence_tol: largest tolerated gap between the two greedy tokens.
        remove_shift: subtract the constant offset first.
        rule: "workbook" or "competition" (:data:`RULES`).
    Returns:
        A :class:`PositionCheck`.
    """
    if rule not in RULES:
        raise ValueError(f"rule {rule!r}: expected one of {RULES}")
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape or a.ndim != 1:
        raise ValueError(f"logits must be two [V] vectors: actual {a.shape}, expected {e.shape}")
    if rule == "competition":
        return _competition_position(a, e, tol_map, divergence_tol, remove_shift)
    masked = (e == -np.inf) & (a == -np.inf)  # the same mask on both sides: left out
    keep = ~masked
    bad_actual = keep & ~np.isfinite(a)  # NaN/±inf the reference does not share
    bad_expected = keep & ~np.isfinite(e)  # the reference masks (or is broken) where the candidate is finite
    n_bad = int(bad_actual.sum())
    valid = keep & ~bad_actual & ~bad_expected
    if not valid.any():
        nan = float("nan")
        errs = {k: nan for k in tol_map}
        return PositionCheck(False, errs, -1, -1, nan, 0.0, n_bad, rule, "no finite logits to compare")
    shift = _shift(a[valid], e[valid]) if remove_shift else 0.0
    a_s = np.where(valid, a - shift, -np.inf)
    e_v = np.where(valid, e, -np.inf)
    order = np.argsort(-e_v, kind="stable")
    errors: dict[int | None, float] = {}
    reasons = []
    if n_bad:
        reasons.append(f"{n_bad} candidate logit(s) NaN/inf where the reference is not the same -inf")
    if bad_expected.any():
        n_mask = int(bad_expected.sum())
        reasons.append(f"{n_mask} logit(s) the reference masks (-inf) are finite in the candidate")
    if np.isnan(actual).all() or not np.any(actual):
        reasons.append("candidate logits all NaN or all zero")
    n_valid = int(valid.sum())
    for k, (atol, rtol) in tol_map.items():
        ids = order[: n_valid if k is None else min(k, n_valid)]
        scale = np.abs(e[ids]).max()
        err = float(((np.abs(a_s[ids] - e[ids]) - atol) / scale).max()) if scale > 0 else np.inf
        errors[k] = err
        if not err <= rtol:
            reasons.append(f"top-{'all' if k is None else k} error {err:.3g} > rtol {rtol:g}")
    # The greedy tokens over all V: a NaN/inf candidate top-1 is its argmax too (and already fails).
    exp_tok = int(order[0])
    a_pick = np.where(masked, -np.inf, np.nan_to_num(a - shift, nan=np.inf, posinf=np.inf))
    act_tok = int(np.argmax(a_pick))
    gap = 0.0
    if exp_tok != act_tok:
        ref_gap = float(e[exp_tok] - e[act_tok]) if np.isfinite(e[act_tok]) else np.inf
        cand_gap = float(abs(a_s[act_tok] - a_s[exp_tok])) if valid[act_tok] else np.inf
        gap = max(ref_gap, cand_gap)
        if not gap < divergence_tol:
            reasons.append(
                f"greedy divergence (reference token {exp_tok}, candidate {act_tok}) with gap {gap:.3g} "
                f"(reference {ref_gap:.3g}, candidate {cand_gap:.3g}) >= {divergence_tol:g}"
            )
    return PositionCheck(not reasons, errors, exp_tok, act_tok, gap, shift, n_bad, rule, "; ".join(reasons))


def _nan_inf(x: float) -> float:
    return np.inf if np.isnan(x) else x


@dataclass
class LogitReport:
    """Outcome of :func:`validate_logits`; truthy when every position passed."""

    ok: bool
    positions: list[PositionCheck]
    divergences: list[int] = field(default_factory=list)  # positions where the greedy tokens differed
    max_errors: dict[int | None, float] = field(default_factory=dict)
    rule: str = "workbook"

    def __bool__(self) -> bool:
        return self.ok

    def summary(self) -> str:
        """One line: pass/fail, the rule, max error per top-k, divergences, failing positions and why."""
        errs = ", ".join(f"top-{'all' if k is None else k} {v:.3g}" for k, v in self.max_errors.items())
        bad = [i for i, p in enumerate(self.positions) if not p.ok]
        why = f" (position {bad[0]}: {self.positions[bad[0]].reason})" if bad else ""
        return (
            f"{'PASS' if self.ok else 'FAIL'} ({self.rule} rule): {len(self.positions)} positions; "
            f"max errors {errs}; divergences at {self.divergences or 'none'}; "
            f"failing positions {bad or 'none'}{why}"
        )


def validate_logits(
    prompt: np.ndarray,
    expected_logits: np.ndarray,
    generate: Callable[[np.ndarray, int], np.ndarray],
    tol_map: Mapping[int | None, tuple[float, float]] = LOGIT_TOL_MAP,
    divergence_tol: float = DIVERGENCE_TOL,
    remove_shift: bool = True,
    rule: str = "workbook",
) -> LogitReport:
    """Validate a candidate's greedy generation against reference logits, position by position.

    The reference's greedy tokens are ``argmax(expected_logits[i])``. The candidate generates greedily from
    the prompt; every position up to its first divergence from the reference tokens is checked with
    :func:`check_position_logits`. A divergence makes later candidate positions incomparable, so the
    candidate is restarted from the prompt plus the reference tokens up to and including the diverging
    position, and checking resumes after it — until all N positions are covered (the competition's teacher
    forcing). The report fails if any position fails.

    Args:
        prompt: [S] token ids.
        expected_logits: [N, V] reference logits of the N generated positions.
        generate: ``generate(ids, n) -> [n, V]`` logits of n greedy steps continuing ``ids``.
        tol_map, divergence_tol, remove_shift, rule: see :func:`check_position_logits`.
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
        if actual.shape[0] < n - start:
            raise ValueError(f"generate returned {actual.shape[0]} positions for {n - start} asked")
        for j in range(n - start):
            check = check_position_logits(
                actual[j], expected_logits[start + j], tol_map, divergence_tol, remove_shift, rule
            )
            positions.append(check)
            if check.actual_token != check.expected_token:
                divergences.append(start + j)
                break
        start = len(positions)
    # NaN errors (a position without a finite logit) count as infinitely bad in the maximum.
    max_errors = {k: max(_nan_inf(p.errors[k]) for p in positions) for k in tol_map}
    return LogitReport(all(p.ok for p in positions), positions, divergences, max_errors, rule)
