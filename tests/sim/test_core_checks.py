"""Strictness: SBUF/PSUM capacity, uninitialised-data taint, affine_range independence, error fields."""

from __future__ import annotations

import nki
import nki.isa as nisa
import nki.language as nl
import numpy as np
import pytest

from nki_moe.sim import (
    NkiCapacityError,
    NkiDependencyError,
    NkiUninitializedError,
    NkiValidationError,
    run,
)

X = np.zeros((128, 64), np.float32)


# ---- capacity ---------------------------------------------------------------------------------------


def test_sbuf_overflow_names_the_allocation_and_lists_live_ones():
    @nki.jit
    def k(a):
        big_weights = nl.ndarray((128, 40000), dtype=nl.float32, buffer=nl.sbuf)  # 160000 B/partition
        scratch = nl.ndarray((128, 16384), dtype=nl.float32, buffer=nl.sbuf)  # +65536 B > 212984
        del big_weights, scratch
        return a

    with pytest.raises(NkiCapacityError) as e:
        k(X)
    err = e.value
    assert err.operand == "scratch" and err.limit == 212984 and err.value == 160000 + 65536
    assert "big_weights" in str(err) and "test_core_checks.py" in err.location
    # trn3 has more SBUF: the same kernel fits.
    assert run(k, X, target="trn3").peak_sbuf_bytes == 160000 + 65536


def test_allocations_are_released_per_iteration_and_by_gc():
    @nki.jit
    def k(a):
        for _i in nl.affine_range(8):
            t = nl.ndarray((128, 30000), dtype=nl.float32, buffer=nl.sbuf)  # 120000 B: fits only alone
            nisa.memset(dst=t, value=0.0)
        for _i in range(4):  # plain Python range: rebinding frees the previous tile
            u = nl.ndarray((128, 20000), dtype=nl.float32, buffer=nl.sbuf)
            del u
        return a

    res = run(k, X)
    assert res.peak_sbuf_bytes == 120000


def test_psum_has_eight_banks():
    @nki.jit
    def k(a, n):
        tiles = [nl.ndarray((128, 512), dtype=nl.float32, buffer=nl.psum) for _ in range(n)]
        assert len(tiles) == n
        return a

    assert run(k, X, 8).peak_psum_banks == 8
    with pytest.raises(NkiCapacityError, match="PSUM banks") as e:
        k(X, 9)
    assert e.value.limit == 8 and e.value.value == 9


# ---- uninitialised data -----------------------------------------------------------------------------


def test_storing_uninitialised_data_is_an_error():
    @nki.jit
    def k(a):
        t = nl.ndarray((128, 64), dtype=nl.float32, buffer=nl.sbuf)
        nisa.dma_copy(dst=t[0:100], src=a[0:100])
        u = nl.ndarray((128, 64), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_scalar(dst=u, data=t, op0=nl.multiply, operand0=2.0)
        out = nl.ndarray((128, 64), dtype=nl.float32, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=u)  # rows 100..127 were never loaded
        return out

    with pytest.raises(NkiUninitializedError, match="uninitialised") as e:
        k(X)
    assert e.value.instruction == "dma_copy" and e.value.operand == "dst"
    out = run(k, X, strict=False).outputs
    assert np.isnan(out[100:]).all() and (out[:100] == 0).all()  # NaN poison is visible


def test_ragged_tile_compute_is_fine_if_only_valid_rows_are_stored():
    @nki.jit
    def k(a):
        t = nl.ndarray((128, 64), dtype=nl.float32, buffer=nl.sbuf)
        nisa.dma_copy(dst=t[0:100], src=a[0:100])
        u = nl.ndarray((128, 64), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_scalar(dst=u, data=t, op0=nl.add, operand0=1.0)
        out = nl.ndarray((100, 64), dtype=nl.float32, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=u[0:100])
        return out

    np.testing.assert_array_equal(k(X), np.ones((100, 64), np.float32))


def test_returning_partially_written_output_is_an_error():
    @nki.jit
    def k(a):
        out = nl.ndarray((128, 64), dtype=nl.float32, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out[0:64], src=a[0:64])
        return out

    with pytest.raises(NkiUninitializedError, match="never written") as e:
        k(X)
    assert e.value.instruction == "return"


def test_taint_flows_through_reductions_per_partition():
    @nki.jit
    def k(a):
        t = nl.ndarray((128, 64), dtype=nl.float32, buffer=nl.sbuf)
        nisa.dma_copy(dst=t[:, 0:63], src=a[:, 0:63])  # one column never written
        s = nl.ndarray((128, 1), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_reduce(dst=s, op=nl.add, data=t, axis=1)
        out = nl.ndarray((128, 1), dtype=nl.float32, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=s)
        return out

    with pytest.raises(NkiUninitializedError):
        k(X)


# ---- affine_range independence ----------------------------------------------------------------------


def test_loop_carried_dependency_in_affine_range_is_reported():
    @nki.jit
    def k(a):
        acc = nl.ndarray((128, 64), dtype=nl.float32, buffer=nl.sbuf)
        nisa.memset(dst=acc, value=0.0)
        for _i in nl.affine_range(4):
            t = nl.ndarray((128, 64), dtype=nl.float32, buffer=nl.sbuf)
            nisa.dma_copy(dst=t, src=a)
            nisa.tensor_tensor(dst=acc, data1=acc, data2=t, op=nl.add)  # WRITE_LINE
        out = nl.ndarray((128, 64), dtype=nl.float32, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=acc)
        return out

    with pytest.raises(NkiDependencyError, match="earlier iteration") as e:
        k(X)
    line = next(i for i, s in enumerate(open(__file__).read().splitlines(), 1) if "WRITE_LINE" in s)
    assert f"test_core_checks.py:{line}" in e.value.location
    assert f"test_core_checks.py:{line}" in str(e.value).split("(written by")[1]  # the writer's file:line
    # The same loop with sequential_range is a legal carry.

    @nki.jit
    def ok(a):
        acc = nl.ndarray((128, 64), dtype=nl.float32, buffer=nl.sbuf)
        nisa.memset(dst=acc, value=0.0)
        for _i in nl.sequential_range(4):
            t = nl.ndarray((128, 64), dtype=nl.float32, buffer=nl.sbuf)
            nisa.dma_copy(dst=t, src=a)
            nisa.tensor_tensor(dst=acc, data1=acc, data2=t, op=nl.add)
        out = nl.ndarray((128, 64), dtype=nl.float32, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=acc)
        return out

    a = np.ones((128, 64), np.float32)
    np.testing.assert_array_equal(ok(a), 4 * a)


def test_legitimate_affine_patterns_pass():
    @nki.jit
    def k(a):
        out = nl.ndarray((128, 256), dtype=nl.float32, buffer=nl.shared_hbm)
        outer = nl.ndarray((128, 256), dtype=nl.float32, buffer=nl.sbuf)  # distinct slice per iteration
        scratch = nl.ndarray((128, 64), dtype=nl.float32, buffer=nl.sbuf)  # rewritten before each read
        for i in nl.affine_range(4):
            nisa.dma_copy(dst=scratch, src=a[:, i * 64 : (i + 1) * 64])
            for j in nl.affine_range(2):
                nisa.tensor_scalar(
                    dst=outer[:, i * 64 + j * 32 : i * 64 + (j + 1) * 32],
                    data=scratch[:, j * 32 : (j + 1) * 32],
                    op0=nl.multiply,
                    operand0=2.0,
                )
            ps = nl.ndarray((64, 64), dtype=nl.float32, buffer=nl.psum)  # per-iteration accumulator
            for _k in nl.affine_range(2):
                nisa.nc_matmul(dst=ps, stationary=scratch, moving=scratch)
        nisa.dma_copy(dst=out, src=outer)
        return out

    a = np.arange(128 * 256, dtype=np.float32).reshape(128, 256) % 7
    np.testing.assert_array_equal(k(a), 2 * a)


# ---- error fields -----------------------------------------------------------------------------------


def test_error_carries_instruction_operand_limit_value_and_location():
    @nki.jit
    def k(a):
        t = nl.ndarray((128, 64), dtype=nl.float32, buffer=nl.sbuf)
        u = nl.ndarray((64, 64), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_copy(dst=u, src=t)  # BAD_LINE
        return a

    with pytest.raises(NkiValidationError) as e:
        k(X)
    err = e.value
    line = next(i for i, s in enumerate(open(__file__).read().splitlines(), 1) if "BAD_LINE" in s)
    assert err.instruction == "tensor_copy"
    assert err.location.endswith(f"test_core_checks.py:{line}")
    assert err.location in str(err) and err.instruction in str(err)
    assert err.operand is not None and err.operand in str(err)
