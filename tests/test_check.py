"""nki_moe.check: dtype tolerances, degenerate outputs, the 3-way error ratio, logit validation."""

from __future__ import annotations

import numpy as np
import pytest

from nki_moe.check import (
    DIVERGENCE_TOL,
    LOGIT_TOL_MAP,
    TOLERANCES,
    assert_close,
    check_close,
    check_position_logits,
    error_ratio,
    validate_logits,
)


def test_check_close_uses_the_dtype_table():
    e = np.linspace(-2, 2, 101)
    assert check_close(e * (1 + 0.5 * TOLERANCES["bf16"].rtol), e, "bf16")
    bad = check_close(e * (1 + 2 * TOLERANCES["bf16"].rtol) + 0.05, e, "bf16")
    assert not bad and bad.n_bad > 0 and "outside" in bad.message
    assert not check_close(e * (1 + 1e-3), e, "fp32")
    with pytest.raises(AssertionError, match="elements outside"):
        assert_close(e + 1, e, "fp32", name="x")


def test_all_zero_and_all_nan_fail_unless_expected():
    tiny = np.full(8, 1e-7)
    assert not check_close(np.zeros(8), tiny, "fp32")  # within atol, but a kernel that wrote nothing
    assert check_close(np.zeros(8), tiny, "fp32", allow_zero=True)
    assert not check_close(np.full(4, np.nan), np.full(4, np.nan), "fp32")
    assert check_close(np.full(4, np.nan), np.full(4, np.nan), "fp32", allow_nan=True)
    assert not check_close(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    assert not check_close(np.ones(3), np.ones(4))


def test_error_ratio():
    rng = np.random.default_rng(0)
    ref32 = rng.standard_normal(1000)
    ref_bf16 = ref32 * (1 + 2**-9 * rng.choice([-1, 1], 1000))
    faithful = ref32 * (1 + 2**-9 * rng.choice([-1, 1], 1000))
    assert 0.8 < error_ratio(faithful, ref_bf16, ref32).ratio < 1.25
    broken = faithful.copy()
    broken[:10] += 1.0
    r = error_ratio(broken, ref_bf16, ref32)
    assert not r and r.ratio > 10
    assert error_ratio(np.zeros(1000), ref_bf16, ref32).ratio == np.inf
    assert error_ratio(ref32, ref32, ref32, allow_zero=True).ratio == 0.0


def _logits(rng, V=2000):
    return (3 * rng.standard_normal(V)).astype(np.float32)


def test_position_errors_are_relative_to_the_largest_logit_and_shift_free():
    rng = np.random.default_rng(1)
    e = _logits(rng)
    ok = check_position_logits(e + 0.01 * np.abs(e).max() * rng.uniform(-1, 1, e.size), e)
    assert ok.ok and ok.errors[None] <= 0.011
    assert check_position_logits(e + 7.0, e).ok  # a constant offset does not change the distribution
    assert not check_position_logits(e + 7.0, e, remove_shift=False).ok
    a = e.copy()
    top5 = np.argsort(-e)[:5]
    a[top5[1:]] -= 0.04 * np.abs(e[top5]).max()  # 4% off on the top-5: fails top-5's rtol 0.03 only
    res = check_position_logits(a, e, remove_shift=False)
    assert not res.ok and res.errors[5] > LOGIT_TOL_MAP[5][1] and res.errors[None] < LOGIT_TOL_MAP[None][1]


def test_divergence_rule():
    e = np.array([1.0, 5.0, 5.0 - DIVERGENCE_TOL / 2, 4.0, -2.0])
    a = e.copy()
    a[2] += 0.002  # candidate prefers token 2, which the reference scores within the tolerance
    res = check_position_logits(a, e, remove_shift=False)
    assert res.ok and (res.expected_token, res.actual_token) == (1, 2)
    a = e.copy()
    a[3] += 1.1  # candidate prefers token 3, a full logit below the reference's choice
    res = check_position_logits(a, e, remove_shift=False, tol_map={None: (1e-5, 0.5)})
    assert not res.ok and res.divergence_gap == pytest.approx(1.0)


def _toy_lm(V: int, seed: int):
    """A deterministic 'model': next logits are a fixed random function of the last token."""
    table = np.random.default_rng(seed).standard_normal((V, V)).astype(np.float32)

    def generate(ids: np.ndarray, n: int) -> np.ndarray:
        ids, out = list(ids), []
        for _ in range(n):
            out.append(table[ids[-1]])
            ids.append(int(np.argmax(out[-1])))
        return np.stack(out)

    return table, generate


def test_validate_logits_passes_identical_and_restarts_after_an_acceptable_divergence():
    table, ref = _toy_lm(50, 2)
    prompt = np.array([3])
    expected = ref(prompt, 12)
    report = validate_logits(prompt, expected, ref)
    assert report and len(report.positions) == 12 and not report.divergences
    # a candidate whose position-4 argmax flips to the reference's near-tied runner-up
    tok4_ctx = int(np.argmax(expected[3]))
    order = np.argsort(-table[tok4_ctx])
    table2 = table.copy()
    table2[tok4_ctx, order[1]] = table[tok4_ctx, order[0]] - DIVERGENCE_TOL / 4
    table[tok4_ctx, order[1]] = table2[tok4_ctx, order[1]]  # the reference is near-tied there too
    table2[tok4_ctx, order[1]] += DIVERGENCE_TOL / 2  # and the candidate flips it
    expected = ref(prompt, 12)

    def cand(ids, n):
        ids, out = list(ids), []
        for _ in range(n):
            out.append(table2[ids[-1]])
            ids.append(int(np.argmax(out[-1])))
        return np.stack(out)

    report = validate_logits(prompt, expected, cand)
    assert report.divergences and report.ok, report.summary()
    assert len(report.positions) == 12  # teacher forcing resumed after the divergence


def test_validate_logits_fails_a_real_divergence():
    _, ref = _toy_lm(50, 3)
    _, other = _toy_lm(50, 4)
    prompt = np.array([1])
    report = validate_logits(prompt, ref(prompt, 6), other)
    assert not report and "FAIL" in report.summary()
