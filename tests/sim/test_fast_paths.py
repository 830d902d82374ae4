"""The emulator's speed paths keep the semantics of the straightforward code they replace.

Covered: the lane-interleaved sequential fold, the distinct-values path of nc_find_index8, deferred
poisoning (fresh tiles, partially written HBM outputs), recycled buffers, tiles adopting a computed
result as their buffer (with cached views), and deferred affine_range write stamps.
"""

from __future__ import annotations

import nki
import nki.isa as nisa
import nki.language as nl
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nki_moe.sim import NkiDependencyError, NkiUninitializedError, run
from nki_moe.sim import semantics as S

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)


@SETTINGS
@given(
    rows=st.integers(1, 160),
    cols=st.sampled_from([1, 2, 7, 31, 32, 64, 100, 1024, 1056]),
    scale=st.floats(0.0, 30.0),
    seed=st.integers(0, 2**16),
    mult=st.booleans(),
)
def test_lane_fold_is_the_sequential_fp32_fold(rows, cols, scale, seed, mult):
    rng = np.random.default_rng(seed)
    uf = np.multiply if mult else np.add
    with np.errstate(all="ignore"):  # wide magnitudes overflow to inf on purpose
        v = rng.standard_normal((rows, cols)) * np.exp(scale * rng.standard_normal((rows, cols)))
        v = (1.0 + v * 1e-3 if mult else v).astype(np.float32)
        start = rng.standard_normal(rows).astype(np.float32)
        expected = uf.accumulate(np.concatenate([start[:, None], v], axis=1), axis=1)[:, -1]
        got = S._lane_fold(uf, start, v)
    np.testing.assert_array_equal(got, expected)


def test_lane_fold_on_strided_views():
    big = np.random.default_rng(1).standard_normal((64, 4096)).astype(np.float32)
    for v in (big[:, :2048], big[:, 3:67], big[::2, 1024:3072]):
        start = np.zeros(v.shape[0], np.float32)
        expected = np.add.accumulate(np.concatenate([start[:, None], v], axis=1), axis=1)[:, -1]
        np.testing.assert_array_equal(S._lane_fold(np.add, start, v), expected)


@SETTINGS
@given(
    p=st.integers(1, 40),
    f=st.integers(8, 48),
    levels=st.integers(1, 10),
    nan_vals=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_find_index8_matches_the_claiming_walk(p, f, levels, nan_vals, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, levels, (p, f)).astype(np.float32)
    data[rng.random((p, f)) < 0.05] = np.nan
    vals = rng.integers(0, levels + 2, (p, 8)).astype(np.float32)
    if nan_vals:
        vals[:, rng.integers(0, 8)] = np.nan
    np.testing.assert_array_equal(S.nc_find_index8(data, vals), S._find_index8_claiming(data, vals))


# ---- deferred poisoning --------------------------------------------------------------------------------


def test_unwritten_part_of_a_tile_reads_as_poison_in_relaxed_mode():
    @nki.jit
    def k(x, xi):
        t = nl.ndarray((4, 8), dtype=nl.float32, buffer=nl.sbuf)
        nisa.dma_copy(dst=t[0:2], src=x[0:2])
        ti = nl.ndarray((4, 8), dtype=nl.int32, buffer=nl.sbuf)
        out = nl.ndarray((4, 8), dtype=nl.float32, buffer=nl.shared_hbm)
        outi = nl.ndarray((4, 8), dtype=nl.int32, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=t)
        nisa.dma_copy(dst=outi, src=ti)
        return out, outi

    x = np.ones((4, 8), np.float32)
    out, outi = run(k, x, x.astype(np.int32), strict=False).outputs
    np.testing.assert_array_equal(out[0:2], 1.0)
    assert np.isnan(out[2:]).all()
    assert (outi == np.iinfo(np.int32).max).all()


def test_partially_written_output_shows_poison_until_written(capsys):
    @nki.jit
    def k(x):
        out = nl.ndarray((4, 3), dtype=nl.float32, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out[0:2], src=x[0:2])
        nl.device_print("partial", out)
        nisa.dma_copy(dst=out[2:4], src=x[2:4])
        return out

    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(k(x), x)
    printed = capsys.readouterr().out
    assert printed.count("nan") == 6 and "5." in printed


def test_partially_written_output_is_still_reported():
    @nki.jit
    def k(x):
        out = nl.ndarray((4, 3), dtype=nl.float32, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out[0:3], src=x[0:3])
        return out

    with pytest.raises(NkiUninitializedError, match="3 of 12 elements never written"):
        k(np.ones((4, 3), np.float32))


# ---- recycled buffers and adopted results ---------------------------------------------------------------


@nki.jit
def _exp_copy(x):
    t = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.sbuf)
    view = t[0 : x.shape[0]]  # created (and its strided view cached) before t adopts a new buffer
    nisa.dma_copy(dst=view, src=x)
    nisa.activation(dst=t, op=nl.exp, data=t)
    out = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=view)
    return out


def test_outputs_of_successive_runs_do_not_share_memory():
    x = np.zeros((128, 64), np.float32)
    first = _exp_copy(x)
    second = _exp_copy(x + 1)
    assert not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, 1.0)
    np.testing.assert_allclose(second, np.e, rtol=1e-6)
    np.testing.assert_array_equal(x, 0.0)  # inputs are never recycled


def test_views_see_a_result_the_tile_adopted():
    x = np.random.default_rng(0).standard_normal((128, 64)).astype(np.float32)
    np.testing.assert_allclose(_exp_copy(x), np.exp(x), rtol=1e-6)


def test_returning_the_same_tensor_twice_gives_two_arrays():
    @nki.jit
    def k(x):
        out = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=x)
        return out, out

    a, b = k(np.ones((2, 2), np.float32))
    assert not np.shares_memory(a, b)
    np.testing.assert_array_equal(a, b)


# ---- deferred affine_range stamps ------------------------------------------------------------------------


@pytest.mark.parametrize("writes", [1, 70])  # 70: more than the stamp log holds before it is applied
def test_dependency_on_the_first_iteration_is_found(writes):
    # acc is the last allocation before the loop (its serial equals the loop's start serial), and only
    # iteration 0 writes it: the read in iteration 1 is a loop-carried dependency.
    @nki.jit
    def k(x):
        acc = nl.ndarray((128, 8), dtype=nl.float32, buffer=nl.sbuf)
        nisa.memset(dst=acc, value=0.0)
        for i in nl.affine_range(2):
            if i == 0:
                for j in range(x.shape[1]):
                    nisa.memset(dst=acc[:, j % 8 : j % 8 + 1], value=float(j))
            else:
                t = nl.ndarray((128, 8), dtype=nl.float32, buffer=nl.sbuf)
                nisa.tensor_copy(dst=t, src=acc)
        return x

    with pytest.raises(NkiDependencyError, match="earlier iteration"):
        k(np.zeros((1, writes), np.float32))
