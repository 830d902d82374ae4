"""Tensor views: indexing, slicing with steps, reshape, view (bitcast), .ap access patterns, errors."""

from __future__ import annotations

import ml_dtypes
import nki
import nki.isa as nisa
import nki.language as nl
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nki_moe.sim import NkiValidationError


def hbm_view_copy(make_view):
    """A kernel that DMA-copies make_view(a) (any HBM view) into a fresh output of the same shape."""

    @nki.jit
    def k(a):
        v = make_view(a)
        out = nl.ndarray(v.shape, dtype=v.dtype, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=v)
        return out

    return k


def test_hbm_int_index_drops_dim_and_slices_with_steps():
    a = np.arange(2 * 6 * 10, dtype=np.float32).reshape(2, 6, 10)
    out = hbm_view_copy(lambda t: t[1, 1:6:2, ::-3])(a)
    np.testing.assert_array_equal(out, a[1, 1:6:2, ::-3])


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 11),
    st.integers(1, 12),
    st.integers(1, 4),
    st.integers(0, 15),
    st.integers(1, 16),
    st.integers(-3, 3).filter(bool),
)
def test_slices_match_numpy(r0, r1, rs, c0, c1, cs):
    a = np.arange(12 * 16, dtype=np.int32).reshape(12, 16)
    key = (slice(r0, r1, rs), slice(c0, c1, cs) if cs > 0 else slice(c1 - 1, c0 - 1 if c0 else None, cs))
    want = a[key]
    if want.size == 0:
        with pytest.raises(NkiValidationError, match="empty slice"):
            hbm_view_copy(lambda t: t[key])(a)
        return
    np.testing.assert_array_equal(hbm_view_copy(lambda t: t[key])(a), want)


def test_reshape_and_ellipsis_and_newaxis():
    a = np.arange(4 * 6, dtype=np.float32).reshape(4, 6)
    np.testing.assert_array_equal(hbm_view_copy(lambda t: t.reshape((2, 12)))(a), a.reshape(2, 12))
    np.testing.assert_array_equal(hbm_view_copy(lambda t: t.reshape(3, -1))(a), a.reshape(3, 8))
    np.testing.assert_array_equal(hbm_view_copy(lambda t: t[..., 2])(a), a[..., 2])
    np.testing.assert_array_equal(hbm_view_copy(lambda t: t[None, 1])(a), a[None, 1])
    # A strided view whose dims still merge reshapes without a copy (numpy's rule).
    np.testing.assert_array_equal(
        hbm_view_copy(lambda t: t[:, 0:6:2].reshape(12))(a), a[:, 0:6:2].reshape(12)
    )
    with pytest.raises(NkiValidationError, match="non-contiguous"):
        hbm_view_copy(lambda t: t[:, 0:4].reshape(16))(a)
    with pytest.raises(NkiValidationError, match="element count"):
        hbm_view_copy(lambda t: t.reshape(5, 5))(a)


def test_view_bitcast_roundtrips():
    a = np.linspace(-3, 3, 64, dtype=np.float32).reshape(8, 8)
    out = hbm_view_copy(lambda t: t.view(nl.int32))(a)
    np.testing.assert_array_equal(out, a.view(np.int32))
    out = hbm_view_copy(lambda t: t.view(nl.uint8))(a)
    assert out.shape == (8, 32)
    np.testing.assert_array_equal(out, a.view(np.uint8))
    b = a.astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(hbm_view_copy(lambda t: t.view(nl.uint16))(b), b.view(np.uint16))
    u8 = a.view(np.uint8)
    np.testing.assert_array_equal(
        hbm_view_copy(lambda t: t[:, 4:12].view(nl.float32))(u8), u8[:, 4:12].view(np.float32)
    )


def test_ap_pattern_offset_and_dtype():
    a = np.arange(8 * 16, dtype=np.float32).reshape(8, 16)
    out = hbm_view_copy(lambda t: t.ap(pattern=[[32, 3], [2, 4]], offset=5))(a)
    flat = a.reshape(-1)
    want = np.array([[flat[5 + 32 * i + 2 * j] for j in range(4)] for i in range(3)])
    np.testing.assert_array_equal(out, want)
    out = hbm_view_copy(lambda t: t.ap(pattern=[[0, 3], [1, 16]], offset=16))(a)  # broadcast a row
    np.testing.assert_array_equal(out, np.broadcast_to(a[1], (3, 16)))
    out = hbm_view_copy(lambda t: t.ap(pattern=[[4, 2], [1, 4]], offset=2, dtype=nl.uint16))(a)
    np.testing.assert_array_equal(out, a.view(np.uint16).reshape(-1)[[[2, 3, 4, 5], [6, 7, 8, 9]]])
    with pytest.raises(NkiValidationError, match="outside its tensor"):
        hbm_view_copy(lambda t: t.ap(pattern=[[16, 8], [1, 17]], offset=0))(a)


def test_on_chip_views_keep_partition_dim_and_reject_bad_patterns():
    seen = {}

    @nki.jit
    def k(a):
        t = nl.ndarray((128, 4, 8), dtype=nl.float32, buffer=nl.sbuf)
        seen["int0"] = t[3].shape
        seen["int1"] = t[:, 2].shape
        seen["pattern"] = t[0:64, 1, 2:6].get_pattern()
        seen["offset"] = t[64:128, 1, 2:6].offset
        seen["reshape"] = t.reshape((128, 32)).shape
        for bad in (lambda: t[0:128:2], lambda: t.reshape((64, 64)), lambda: t[0:129], lambda: t[:, 4]):
            with pytest.raises(NkiValidationError):
                bad()
        with pytest.raises(NkiValidationError, match="partition step"):
            t.ap(pattern=[[8, 128], [1, 8]], offset=0)
        return a

    k(np.zeros((1, 1), np.float32))
    assert seen["int0"] == (1, 4, 8)
    assert seen["int1"] == (128, 8)
    assert seen["pattern"] == [[32, 64], [1, 4]]
    assert seen["offset"] == 64 * 32 + 8 + 2


def test_sbuf_roundtrip_through_views():
    @nki.jit
    def k(a):
        t = nl.ndarray((64, 2, 32), dtype=nl.float32, buffer=nl.sbuf)
        nisa.dma_copy(dst=t, src=a.reshape((64, 2, 32)))
        out = nl.ndarray((64, 32), dtype=nl.float32, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=t[:, 1, :])
        return out

    a = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    np.testing.assert_array_equal(k(a), a.reshape(64, 2, 32)[:, 1, :])


def test_partition_limits_and_start_partition_rule():
    @nki.jit
    def too_big(a):
        nl.ndarray((256, 8), dtype=nl.float32, buffer=nl.sbuf)
        return a

    with pytest.raises(NkiValidationError, match="partition dimension") as e:
        too_big(np.zeros((1, 1), np.float32))
    assert e.value.limit == 128 and e.value.value == 256

    @nki.jit
    def bad_start(a):
        t = nl.ndarray((128, 8), dtype=nl.float32, buffer=nl.sbuf)
        nisa.memset(dst=t, value=0.0)
        nisa.memset(dst=t[16:48], value=1.0)
        return a

    with pytest.raises(NkiValidationError, match="start at partition") as e:
        bad_start(np.zeros((1, 1), np.float32))
    assert e.value.value == 16


def test_lvalue_assignment_is_rejected():
    @nki.jit
    def k(a):
        t = nl.ndarray((128, 8), dtype=nl.float32, buffer=nl.sbuf)
        t[0:1, :] = 1.0
        return a

    with pytest.raises(NkiValidationError, match="lvalue"):
        k(np.zeros((1, 1), np.float32))


def test_dtypes_are_strings():
    assert nl.bfloat16 == "bfloat16" and nl.float32 == "float32" and nl.float8_e4m3 == "float8_e4m3"
    assert nl.sbuf == "sbuf" and nl.hbm is nl.private_hbm
