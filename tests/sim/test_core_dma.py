"""dma_copy (casts, dge rules, indirect gather/scatter, oob modes, scalar offsets) and dma_transpose."""

from __future__ import annotations

import ml_dtypes
import nki
import nki.isa as nisa
import nki.language as nl
import numpy as np
import pytest

from nki_moe.sim import NkiUninitializedError, NkiValidationError, last_trace

BF16 = ml_dtypes.bfloat16


def test_dtype_cast_rounds_to_nearest_even():
    @nki.jit
    def k(a):
        t = nl.ndarray(a.shape, dtype=nl.bfloat16, buffer=nl.sbuf)
        nisa.dma_copy(dst=t, src=a)
        out = nl.ndarray(a.shape, dtype=nl.bfloat16, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=t)
        return out

    a = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    out = k(a)
    assert out.dtype == BF16
    np.testing.assert_array_equal(out, a.astype(BF16))
    rec = last_trace()[0]
    assert rec.engine == "dma" and rec.info["dma_bytes"] == 32 * 64 * 2 and rec.info["queue"].startswith("q")


def test_hwdge_needs_equal_dtypes_and_psum_is_not_a_source():
    @nki.jit
    def hw(a):
        t = nl.ndarray(a.shape, dtype=nl.bfloat16, buffer=nl.sbuf)
        nisa.dma_copy(dst=t, src=a, dge_mode=nisa.dge_mode.hwdge)
        return a

    with pytest.raises(NkiValidationError, match="hwdge"):
        hw(np.zeros((4, 4), np.float32))

    @nki.jit
    def from_psum(a):
        p = nl.ndarray((4, 4), dtype=nl.float32, buffer=nl.psum)
        out = nl.ndarray((4, 4), dtype=nl.float32, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=p)
        return out

    with pytest.raises(NkiValidationError, match="cannot read PSUM") as e:
        from_psum(np.zeros((4, 4), np.float32))
    assert e.value.instruction == "dma_copy" and e.value.operand == "src"

    @nki.jit
    def count(a):
        out = nl.ndarray((4, 5), dtype=nl.float32, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=a)
        return out

    with pytest.raises(NkiValidationError, match="element counts") as e:
        count(np.zeros((4, 4), np.float32))
    assert (e.value.limit, e.value.value) == (16, 20)


def test_raw_int_enums_run_with_a_docs_warning_and_invalid_ones_are_rejected():
    # The 0.3 notes reject raw ints, but nki-library passes dge_mode=3: accepted, with a warning.
    from nki_moe.sim.errors import NkiDocsWarning

    def kernel(mode):
        @nki.jit
        def k(a):
            t = nl.ndarray(a.shape, dtype=nl.float32, buffer=nl.sbuf)
            nisa.dma_copy(dst=t, src=a, dge_mode=mode)
            out = nl.ndarray(a.shape, dtype=nl.float32, buffer=nl.shared_hbm)
            nisa.dma_copy(dst=out, src=t)
            return out

        return k

    a = np.arange(16, dtype=np.float32).reshape(4, 4)
    with pytest.warns(NkiDocsWarning, match="dge_mode=3 read as nisa.dge_mode.none"):
        np.testing.assert_array_equal(kernel(3)(a), a)
    with pytest.raises(NkiValidationError, match=r"dge_mode.*unknown=0.*none=3") as e:
        kernel(7)(a)
    assert e.value.operand == "dge_mode" and e.value.value == 7


def _gather_kernel(oob):
    @nki.jit
    def gather(table, idx):
        n = idx.shape[0]
        i_tile = nl.ndarray((n, 1), dtype=nl.uint32, buffer=nl.sbuf)
        nisa.dma_copy(dst=i_tile, src=idx.reshape((n, 1)))
        rows = nl.ndarray((n, table.shape[1]), dtype=table.dtype, buffer=nl.sbuf)
        nisa.memset(dst=rows, value=-1.0)
        src = table.ap(pattern=[[table.shape[1], n], [1, table.shape[1]]], offset=0, vector_offset=i_tile)
        nisa.dma_copy(dst=rows, src=src, oob_mode=oob)
        out = nl.ndarray((n, table.shape[1]), dtype=table.dtype, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=rows)
        return out

    return gather


def test_indirect_gather_and_oob_modes():
    table = np.arange(10 * 8, dtype=np.float32).reshape(10, 8)
    idx = np.array([3, 0, 9, 3], dtype=np.uint32)
    np.testing.assert_array_equal(_gather_kernel(nisa.oob_mode.error)(table, idx), table[idx])
    bad = np.array([3, 12, 1, 0], dtype=np.uint32)
    with pytest.raises(NkiValidationError, match="out of bounds") as e:
        _gather_kernel(nisa.oob_mode.error)(table, bad)
    assert "12" in str(e.value.value)
    out = _gather_kernel(nisa.oob_mode.skip)(table, bad)
    np.testing.assert_array_equal(out[[0, 2, 3]], table[[3, 1, 0]])
    np.testing.assert_array_equal(out[1], -1.0)  # skipped row keeps the old contents


def test_indirect_scatter_updates_input_in_place():
    @nki.jit
    def scatter(cache, idx, rows):
        n = idx.shape[0]
        i_tile = nl.ndarray((n, 1), dtype=nl.uint32, buffer=nl.sbuf)
        nisa.dma_copy(dst=i_tile, src=idx.reshape((n, 1)))
        r_tile = nl.ndarray(rows.shape, dtype=rows.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=r_tile, src=rows)
        dst = cache.ap(pattern=[[cache.shape[1], n], [1, cache.shape[1]]], offset=0, vector_offset=i_tile)
        nisa.dma_copy(dst=dst, src=r_tile)
        return cache

    cache = np.zeros((6, 4), np.float32)
    rows = np.arange(8, dtype=np.float32).reshape(2, 4) + 1
    out = scatter(cache, np.array([4, 1], np.uint32), rows)
    want = np.zeros((6, 4), np.float32)
    want[[4, 1]] = rows
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(cache, want)  # the input array was updated in place


def test_uninitialised_index_is_an_error():
    @nki.jit
    def k(table):
        i_tile = nl.ndarray((4, 1), dtype=nl.uint32, buffer=nl.sbuf)
        rows = nl.ndarray((4, 8), dtype=table.dtype, buffer=nl.sbuf)
        src = table.ap(pattern=[[8, 4], [1, 8]], offset=0, vector_offset=i_tile)
        nisa.dma_copy(dst=rows, src=src)
        return table

    with pytest.raises(NkiUninitializedError, match="uninitialised"):
        k(np.zeros((10, 8), np.float32))


def test_scalar_offset_from_a_tensor_and_register():
    @nki.jit
    def k(table, which):
        w = nl.ndarray((1, 1), dtype=nl.int32, buffer=nl.sbuf)
        nisa.dma_copy(dst=w, src=which.reshape((1, 1)))
        out = nl.ndarray((2, 8), dtype=table.dtype, buffer=nl.shared_hbm)
        row = nl.ndarray((1, 8), dtype=table.dtype, buffer=nl.sbuf)
        nisa.dma_copy(
            dst=row, src=table.ap(pattern=[[8, 1], [1, 8]], offset=0, scalar_offset=w, indirect_dim=0)
        )
        nisa.dma_copy(dst=out[0:1, :], src=row)
        reg = nisa.register_alloc(2)
        nisa.dma_copy(dst=row, src=table.ap(pattern=[[8, 1], [1, 8]], offset=0, scalar_offset=reg))
        nisa.dma_copy(dst=out[1:2, :], src=row)
        return out

    table = np.arange(40, dtype=np.float32).reshape(5, 8)
    np.testing.assert_array_equal(k(table, np.array([3], np.int32)), table[[3, 2]])
    with pytest.raises(NkiValidationError, match="outside its tensor"):
        k(table, np.array([7], np.int32))


def test_dma_transpose():
    @nki.jit
    def k(a):
        t = nl.ndarray((a.shape[1], a.shape[0]), dtype=a.dtype, buffer=nl.sbuf)
        nisa.dma_transpose(dst=t, src=a)
        out = nl.ndarray(t.shape, dtype=a.dtype, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=t)
        return out

    a = np.arange(16 * 48, dtype=np.float32).reshape(16, 48).astype(BF16)
    np.testing.assert_array_equal(k(a), a.T)
