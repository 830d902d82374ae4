"""nc_matmul (fp32 accumulation, accumulate rules, limits, double_row) and nc_transpose."""

from __future__ import annotations

import ml_dtypes
import nki
import nki.isa as nisa
import nki.language as nl
import numpy as np
import pytest

from nki_moe.sim import NkiUninitializedError, NkiValidationError, run

BF16 = ml_dtypes.bfloat16
FP8 = ml_dtypes.float8_e4m3


def mm_kernel(steps, dst_dtype="float32", psum_shape=None, **mm_kw):
    """Runs nc_matmul once per step on SBUF copies of (a, b); returns the PSUM tile evicted to HBM.

    steps: list of accumulate= values.
    """

    @nki.jit
    def k(a, b):
        K, M = a.shape
        N = b.shape[-1] if b.ndim == 2 else b.shape[-1]
        at = nl.ndarray(a.shape, dtype=a.dtype, buffer=nl.sbuf)
        bt = nl.ndarray(b.shape, dtype=b.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=at, src=a)
        nisa.dma_copy(dst=bt, src=b)
        shape = psum_shape or (M, N)
        ps = nl.ndarray(shape, dtype=dst_dtype, buffer=nl.psum)
        for acc in steps:
            nisa.nc_matmul(
                dst=ps[:, 0:N] if psum_shape else ps, stationary=at, moving=bt, accumulate=acc, **mm_kw
            )
        sb = nl.ndarray((M, N), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_copy(dst=sb, src=ps[:, 0:N] if psum_shape else ps)
        out = nl.ndarray((M, N), dtype=nl.float32, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=sb)
        return out

    return k


def _inputs(K, M, N, dtype=BF16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((K, M)).astype(dtype), rng.standard_normal((K, N)).astype(dtype)


def test_matches_fp32_matmul_of_bf16_inputs():
    a, b = _inputs(128, 96, 512)
    res = run(mm_kernel([None]), a, b)
    ref = a.astype(np.float32).T @ b.astype(np.float32)
    np.testing.assert_allclose(res.outputs, ref, rtol=1e-5, atol=1e-4)
    mm = [r for r in res.trace if r.opcode == "nc_matmul"]
    assert (mm[0].K, mm[0].M, mm[0].N, mm[0].is_transpose) == (128, 96, 512, False)
    assert res.mac_count() == 128 * 96 * 512


@pytest.mark.parametrize(
    ("steps", "factor"),
    [([None], 1), ([None, None, None], 3), ([False, True], 2), ([False, True, False], 1), ([None, False], 1)],
)
def test_accumulate_rules(steps, factor):
    a, b = _inputs(64, 32, 128, seed=1)
    ref = a.astype(np.float32).T @ b.astype(np.float32)
    np.testing.assert_allclose(mm_kernel(steps)(a, b), factor * ref, rtol=1e-5, atol=1e-4)


def test_accumulate_true_on_fresh_psum_warns():
    a, b = _inputs(32, 32, 32, seed=2)
    with pytest.warns(UserWarning, match="never written by a matmul"):
        run(mm_kernel([True]), a, b, strict=False)
    # In strict mode the poisoned PSUM contents reaching the output is an error as well.
    with pytest.warns(UserWarning), pytest.raises(NkiUninitializedError):
        mm_kernel([True])(a, b)


def test_double_row_fp8():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((64, 2, 32)).astype(FP8)
    b = rng.standard_normal((64, 2, 128)).astype(FP8)

    @nki.jit
    def k(a, b):
        at = nl.ndarray(a.shape, dtype=a.dtype, buffer=nl.sbuf)
        bt = nl.ndarray(b.shape, dtype=b.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=at, src=a)
        nisa.dma_copy(dst=bt, src=b)
        ps = nl.ndarray((32, 128), dtype=nl.float32, buffer=nl.psum)
        nisa.nc_matmul(dst=ps, stationary=at, moving=bt, perf_mode=nisa.matmul_perf_mode.double_row)
        sb = nl.ndarray((32, 128), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_copy(dst=sb, src=ps)
        out = nl.ndarray((32, 128), dtype=nl.float32, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=sb)
        return out

    res = run(k, a, b)
    ref = a.astype(np.float32).reshape(128, 32).T @ b.astype(np.float32).reshape(128, 128)
    np.testing.assert_allclose(res.outputs, ref, rtol=1e-5, atol=1e-4)
    assert res.mac_count() == 128 * 32 * 128
    with pytest.raises(NkiValidationError, match="fp8"):
        run(k, a.astype(BF16), b.astype(BF16))


@pytest.mark.parametrize(
    ("shape_a", "shape_b", "kw", "match"),
    [
        ((128, 129), (128, 64), {}, "partition dimension"),  # dst [M, N] cannot exist
        ((128, 64), (128, 513), {}, "moving free size N"),
        ((64, 64), (32, 64), {}, "same partition"),
        ((64, 64), (64, 64), {"tile_position": (0, 0)}, "both be given"),
        ((64, 64), (64, 64), {"tile_position": (32, 0), "tile_size": (64, 64)}, "multiple of the tile size"),
        ((64, 64), (64, 64), {"tile_position": (0, 0), "tile_size": (32, 64)}, "row tile size"),
    ],
)
def test_limits(shape_a, shape_b, kw, match):
    rng = np.random.default_rng(4)
    a = rng.standard_normal(shape_a).astype(BF16)
    b = rng.standard_normal(shape_b).astype(BF16)
    with pytest.raises(NkiValidationError, match=match):
        mm_kernel([None], **kw)(a, b)


def test_tile_position_accepted():
    a, b = _inputs(64, 64, 64, seed=5)
    out = mm_kernel([None], tile_position=(64, 0), tile_size=(64, 64))(a, b)
    np.testing.assert_allclose(out, a.astype(np.float32).T @ b.astype(np.float32), rtol=1e-5, atol=1e-4)


def test_fp32_must_pair_with_fp32_and_dst_dtype_rules():
    a, b = _inputs(32, 32, 32, seed=6)
    with pytest.raises(NkiValidationError, match="fp32/tf32"):
        mm_kernel([None])(a.astype(np.float32), b)
    with pytest.raises(NkiValidationError, match="dst must be fp32") as e:
        mm_kernel([None], dst_dtype="bfloat16")(a, b)
    assert e.value.operand == "dst"
    out = run(mm_kernel([None], dst_dtype="bfloat16"), a, b, target="trn3").outputs
    ref = (a.astype(np.float32).T @ b.astype(np.float32)).astype(BF16).astype(np.float32)
    np.testing.assert_array_equal(out, ref)


def test_n_limit_and_psum_bank_rule_follow_target():
    a, b = _inputs(32, 32, 1024, seed=7)
    with pytest.raises(NkiValidationError, match="moving free size N"):
        run(mm_kernel([None], psum_shape=(32, 1024)), a, b, target="trn2")
    out = run(mm_kernel([None], psum_shape=(32, 1024)), a, b, target="trn3").outputs
    np.testing.assert_allclose(out, a.astype(np.float32).T @ b.astype(np.float32), rtol=1e-5, atol=1e-4)

    @nki.jit
    def crosses_bank(a, b):
        at = nl.ndarray(a.shape, dtype=a.dtype, buffer=nl.sbuf)
        bt = nl.ndarray(b.shape, dtype=b.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=at, src=a)
        nisa.dma_copy(dst=bt, src=b)
        ps = nl.ndarray((32, 1024), dtype=nl.float32, buffer=nl.psum)
        nisa.nc_matmul(dst=ps[:, 256 : 512 + 256], stationary=at, moving=bt[:, 0:512])
        return a

    with pytest.raises(NkiValidationError, match="one 2 KiB PSUM bank"):
        crosses_bank(a, b)


def test_operand_buffers():
    @nki.jit
    def k(a, b):
        at = nl.ndarray(a.shape, dtype=a.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=at, src=a)
        dst = nl.ndarray((a.shape[1], b.shape[1]), dtype=nl.float32, buffer=nl.sbuf)
        nisa.nc_matmul(dst=dst, stationary=at, moving=at)
        return a

    with pytest.raises(NkiValidationError, match="not allowed") as e:
        k(*_inputs(32, 32, 32))
    assert e.value.operand == "dst" and e.value.value == "sbuf"


def test_pe_and_vector_transpose_are_bit_exact():
    @nki.jit
    def k(a, small):
        at = nl.ndarray(a.shape, dtype=a.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=at, src=a)
        tp = nl.ndarray((a.shape[1], a.shape[0]), dtype=a.dtype, buffer=nl.psum)
        nisa.nc_transpose(dst=tp, data=at)
        sb = nl.ndarray(tp.shape, dtype=a.dtype, buffer=nl.sbuf)
        nisa.tensor_copy(dst=sb, src=tp)
        out = nl.ndarray(tp.shape, dtype=a.dtype, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=sb)
        st = nl.ndarray(small.shape, dtype=small.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=st, src=small)
        sv = nl.ndarray((small.shape[1], small.shape[0]), dtype=small.dtype, buffer=nl.sbuf)
        nisa.nc_transpose(dst=sv, data=st, engine=nisa.engine.vector)
        out2 = nl.ndarray(sv.shape, dtype=small.dtype, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out2, src=sv)
        return out, out2

    a = np.random.default_rng(8).standard_normal((128, 96)).astype(BF16)
    a[3, 5] = np.nan
    small = np.arange(16 * 32, dtype=np.int32).reshape(16, 32)
    res = run(k, a, small)
    out, out2 = res.outputs
    np.testing.assert_array_equal(out.view(np.uint16), a.T.view(np.uint16))
    np.testing.assert_array_equal(out2, small.T)
    assert res.mac_count() == 0 and res.mac_count(include_transposes=True) == 128 * 96 * 128
    engines = {r.opcode + "@" + r.engine for r in res.trace if r.opcode == "nc_transpose"}
    assert engines == {"nc_transpose@pe", "nc_transpose@dve"}


def test_transpose_rules():
    @nki.jit
    def k(a, dt, eng):
        at = nl.ndarray(a.shape, dtype=a.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=at, src=a)
        buf = nl.psum if eng == nisa.engine.tensor else nl.sbuf
        tp = nl.ndarray((a.shape[1], a.shape[0]), dtype=dt, buffer=buf)
        nisa.nc_transpose(dst=tp, data=at, engine=eng)
        return a

    a = np.zeros((64, 64), np.float32)
    with pytest.raises(NkiValidationError, match="dst.dtype == data.dtype"):
        k(a, nl.bfloat16, nisa.engine.tensor)
    with pytest.raises(NkiValidationError, match="32x32"):
        k(a, nl.float32, nisa.engine.vector)


def test_is_transpose_matmul_with_identity():
    @nki.jit
    def k(a):
        at = nl.ndarray(a.shape, dtype=a.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=at, src=a)
        ident = nl.shared_identity_matrix(a.shape[0], dtype=a.dtype)
        tp = nl.ndarray((a.shape[1], a.shape[0]), dtype=a.dtype, buffer=nl.psum)
        nisa.nc_matmul(dst=tp, stationary=at, moving=ident, is_transpose=True)
        sb = nl.ndarray(tp.shape, dtype=a.dtype, buffer=nl.sbuf)
        nisa.tensor_copy(dst=sb, src=tp)
        out = nl.ndarray(tp.shape, dtype=a.dtype, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=sb)
        return out

    a = np.random.default_rng(9).standard_normal((64, 32)).astype(BF16)
    res = run(k, a)
    np.testing.assert_array_equal(res.outputs, a.T)
    assert res.mac_count() == 0
