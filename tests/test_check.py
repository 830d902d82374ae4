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
    a[2] += 0.0007  # candidate prefers token 2; both sides score the two tokens within the tolerance
    res = check_position_logits(a, e, remove_shift=False)
    assert res.ok and (res.expected_token, res.actual_token) == (1, 2)
    assert res.divergence_gap == pytest.approx(0.0005)
    a[2] += 0.0013  # the candidate's own gap is now 0.0015: the workbook rule and the competition's fail it
    assert not check_position_logits(a, e, remove_shift=False)
    assert not check_position_logits(a, e, remove_shift=False, rule="competition")
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


# ---- issue 11: checks that cannot be fooled -------------------------------------------------------------


def test_nonfinite_candidate_logits_fail_unless_the_reference_masks_the_same_token():
    rng = np.random.default_rng(5)
    e = _logits(rng, 1000)
    a = e.copy()
    a[rng.choice(1000, 990, replace=False)] = np.nan  # 990 of 1,000 NaN
    res = check_position_logits(a, e)
    assert not res and res.n_nonfinite == 990 and "NaN/inf" in res.reason
    top = int(np.argmax(e))
    for bad in (np.nan, np.inf, -np.inf):  # a non-finite top-1
        a = e.copy()
        a[top] = bad
        assert not check_position_logits(a, e), bad
    # the same -inf mask on both sides is left out; a mask only one side applies fails
    e_m, a_m = e.copy(), e.copy() + 0.5
    e_m[:10] = a_m[:10] = -np.inf
    assert check_position_logits(a_m, e_m)
    a_m[10] = -np.inf
    assert not check_position_logits(a_m, e_m)
    a_m[10], e_m[11] = e_m[10] + 0.5, -np.inf
    assert not check_position_logits(a_m, e_m)
    assert not check_position_logits(np.full(1000, np.nan), e)


def test_validate_logits_fails_mostly_nan_candidates():
    table, ref = _toy_lm(50, 6)
    prompt = np.array([2])
    expected = ref(prompt, 8)
    mask = np.random.default_rng(7).random(expected.shape) < 0.98

    def nan_cand(ids, n):
        out = ref(ids, n)
        return np.where(mask[-n:], np.nan, out)

    for rule in ("workbook", "competition"):
        report = validate_logits(prompt, expected, nan_cand, rule=rule)
        assert not report and "FAIL" in report.summary(), rule


def test_tiny_output_fails_even_within_atol():
    rng = np.random.default_rng(8)
    e = 1e-3 * rng.standard_normal(4096)
    tiny = np.full(4096, 1e-9)
    bad = check_close(tiny, e, "bf16")
    assert not bad and "magnitude" in bad.message and bad.n_bad == 0  # every element was within atol
    assert not check_close(100 * e, e, "bf16")  # far above: fails as well
    assert check_close(tiny, e, "bf16", magnitude_factor=None)  # the guard is a default, not a wall
    faithful = e.astype(np.float32).astype("bfloat16").astype(np.float64)
    assert check_close(faithful, e, "bf16")


def test_equal_infinities_are_equal():
    e = np.array([[0.5, -np.inf, -np.inf], [1.0, 2.0, -np.inf]])
    assert check_close(e, e)
    assert check_close(e.copy(), e, "bf16")
    other = e.copy()
    other[0, 1] = -1e30  # finite where the mask is
    assert not check_close(other, e)
    other[0, 1] = np.inf  # the opposite infinity
    assert not check_close(other, e)


def test_dtype_names_and_objects_are_accepted():
    import ml_dtypes
    import nki.language as nl

    from nki_moe.check import tolerance

    for dt in ("bf16", "bfloat16", ml_dtypes.bfloat16, np.dtype(ml_dtypes.bfloat16), nl.bfloat16):
        assert tolerance(dt) is TOLERANCES["bf16"], dt
    for dt in ("float32", np.float32, np.dtype("float32"), "fp32"):
        assert tolerance(dt) is TOLERANCES["fp32"], dt
    assert tolerance(np.float16) is TOLERANCES["fp16"]
    assert tolerance("float8_e4m3fn") is TOLERANCES["fp8"]
    e = np.linspace(1, 2, 16)
    assert check_close(e, e, "float32") and check_close(e, e, np.float32)
    assert error_ratio(e, e * (1 + 2**-9), e, "bfloat16").max_ratio == TOLERANCES["bf16"].max_error_ratio
    with pytest.raises(ValueError, match="float64.*accepted: bf16"):
        check_close(e, e, "float64")


def _competition_reference(a, e, tol_map, div_tol):
    """The competition's per-position rule written out with torch (topk, round(decimals)), independently
    of nki_moe.check: −inf dropped on either side, least-squares shift, rounded errors, candidate gap."""
    import torch

    a, e = torch.tensor(a, dtype=torch.float64), torch.tensor(e, dtype=torch.float64)
    keep = ~((a == -torch.inf) | (e == -torch.inf))
    a, e = a[keep], e[keep]
    A = np.vstack([e.numpy(), np.ones(len(e))]).T
    shift = np.linalg.lstsq(A, a.numpy(), rcond=None)[0][1]
    a = a - shift
    ok = True
    for k, (atol, rtol) in tol_map.items():
        if k is None:
            ek, ak = e, a
        else:
            idx = torch.topk(e, k).indices
            ek, ak = e[idx], a[idx]
        err = (torch.abs(ak - ek) - atol) / torch.max(torch.abs(ek))
        decimals = len(str(rtol).split(".")[1])
        ok &= bool(torch.all(torch.round(err, decimals=decimals) <= rtol))
    g, c = int(e.argmax()), int(a.argmax())
    if g != c:
        ok &= bool(torch.abs(a[c] - a[g]) < div_tol)
    return ok


def test_competition_rule_matches_an_independent_transcription():
    rng = np.random.default_rng(9)
    outcomes = []
    for i in range(200):
        e = _logits(rng, 2000).astype(np.float64)
        noise = rng.choice([0.005, 0.02, 0.029, 0.031, 0.06]) * np.abs(e).max()
        a = e + noise * rng.uniform(-1, 1, e.size) + rng.normal()
        if i % 5 == 0:
            a[rng.choice(2000, 3)] = -np.inf
        if i % 7 == 0:
            second = np.argsort(-e)[1]
            a[second] = a[np.argmax(e)] + rng.choice([0.0004, 0.003])
        got = check_position_logits(a, e, rule="competition")
        want = _competition_reference(a, e, LOGIT_TOL_MAP, DIVERGENCE_TOL)
        assert got.ok == want, i
        outcomes.append(want)
    assert 20 < sum(outcomes) < 180  # both outcomes exercised


def test_competition_rule_differs_from_the_workbook_rule_where_documented():
    rng = np.random.default_rng(10)
    e = _logits(rng, 500).astype(np.float64)
    top = np.argsort(-e)
    # 1. rounding: an error of 0.0304 rounds to 0.03 (passes the competition), 0.0304 > 0.03 (fails ours)
    a = e.copy()
    a[top[2]] -= 0.0304 * np.abs(e[top[:5]]).max()  # the scale of the top-5 (and top-50) sets
    assert check_position_logits(a, e, remove_shift=False, rule="competition")
    assert not check_position_logits(a, e, remove_shift=False)
    # 2. divergence judged on the candidate's gap: the reference's top two are 0.5 apart
    e2 = e.copy()
    e2[top[1]] = e2[top[0]] - 0.5
    a = e2.copy()
    a[top[1]] = a[top[0]] + 0.0005
    comp = check_position_logits(a, e2, remove_shift=False, rule="competition", tol_map={None: (1e-5, 0.05)})
    ours = check_position_logits(a, e2, remove_shift=False, tol_map={None: (1e-5, 0.05)})
    assert comp and comp.actual_token == top[1] and not ours and "reference 0.5" in ours.reason
    # 3. a candidate -inf where the reference is finite: dropped by the competition, a failure for us
    a = e.copy()
    a[top[3]] = -np.inf
    assert check_position_logits(a, e, rule="competition") and not check_position_logits(a, e)
    with pytest.raises(ValueError, match="rule 'strict'"):
        check_position_logits(e, e, rule="strict")
