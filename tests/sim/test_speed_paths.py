"""Speed paths of the emulator (bench/kernels.py) keep the results and the checks of the plain code.

Covered: bf16/fp8 widening of strided views (gathered first), the fp32 -> low-precision cast without an
intermediate copy, dropping a taint mask once piecewise writes have cleared it, a PSUM tile marked fully
matmul-written after column-by-column matmuls, PE transposes out of a strided slice of a wide tile,
float64 activation functions evaluated in chunks, and memset storing one converted value.
Each test is a minimal kernel of its own showing the construct, with an illegal twin where a check applies.
"""

from __future__ import annotations

import warnings

import ml_dtypes
import nki
import nki.isa as nisa
import nki.language as nl
import numpy as np
import pytest

from nki_moe.sim import NkiUninitializedError, numerics, run

BF16 = ml_dtypes.bfloat16


# ---- numerics: to_f32 and cast --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [BF16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2, np.float16])
def test_to_f32_of_strided_views_is_the_elementwise_cast(dtype):
    bits = np.dtype(dtype).itemsize * 8
    every = np.arange(2**bits, dtype=np.uint16 if bits == 16 else np.uint8).view(dtype)  # NaN payloads too
    rows = every.reshape(-1, 256)
    wide = np.repeat(rows, 3, axis=1)  # column j of rows is wide[:, 3j + 1]
    views = (wide[:, 1::3], wide[::2, 1::3], wide[:, ::-3], rows[:, 7:8], rows.T)
    for v in views:
        with np.errstate(all="ignore"):
            expected = np.array([[float(np.float32(x)) for x in r] for r in v.tolist()], np.float32)
            want_bits = v.astype(np.float32).view(np.uint32)  # the strided cast the old code did
        got = numerics.to_f32(v)
        assert got.dtype == np.float32 and got.shape == v.shape
        np.testing.assert_array_equal(got.view(np.uint32), want_bits)
        finite = np.isfinite(expected)
        np.testing.assert_array_equal(got[finite], expected[finite])


def test_cast_to_low_precision_is_bit_exact_and_never_aliases():
    rng = np.random.default_rng(3)
    with np.errstate(all="ignore"):  # magnitudes beyond fp32 become inf on purpose
        f = (rng.standard_normal(4096) * np.exp(rng.uniform(-90, 90, 4096))).astype(np.float32)
    f[:4] = [np.nan, -np.inf, np.inf, -0.0]
    for name, dt in (("bfloat16", BF16), ("float8_e4m3fn", ml_dtypes.float8_e4m3fn), ("float16", np.float16)):
        with np.errstate(all="ignore"):
            want = f.astype(dt)
            got = numerics.cast(f, name)
        assert got.dtype == dt
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
    for name in ("float32", "tfloat32"):  # results a tile may adopt as its buffer: never the input's memory
        out = numerics.cast(f, name)
        assert out.dtype == np.float32 and not np.shares_memory(out, f)
    np.testing.assert_array_equal(numerics.cast(f, "float32").view(np.uint32), f.view(np.uint32))


# ---- taint masks cleared by piecewise writes ------------------------------------------------------------

_COLS, _CHUNK = 256, 16  # 16 column DMAs, each 1/16 of the tile


def _piecewise(skip: int | None, seen: dict):
    @nki.jit
    def k(x):
        t = nl.ndarray((128, _COLS), dtype=nl.bfloat16, buffer=nl.sbuf)
        for c in range(0, _COLS, _CHUNK):
            if c != skip:
                nisa.dma_copy(dst=t[:, c : c + _CHUNK], src=x[:, c : c + _CHUNK])
        seen["taint"] = t.st.taint
        y = nl.ndarray((128, _COLS), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_copy(dst=y, src=t)  # reads every element (the uninitialised check)
        out = nl.ndarray((128, _COLS), dtype=nl.float32, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=y)
        return out

    return k


def test_tile_written_piecewise_drops_its_taint_mask():
    x = np.random.default_rng(4).standard_normal((128, _COLS)).astype(BF16)
    seen: dict = {}
    out = _piecewise(None, seen)(x)
    assert seen["taint"] is None  # no per-read mask scan once every element was written
    np.testing.assert_array_equal(out, x.astype(np.float32))


def test_tile_missing_one_piece_is_still_reported():
    x = np.ones((128, _COLS), BF16)
    seen: dict = {}
    with pytest.raises(NkiUninitializedError, match="uninitialised"):
        _piecewise(5 * _CHUNK, seen)(x)
    assert seen["taint"] is not None and seen["taint"].sum() == 128 * _CHUNK


def _rows_output(skip: int | None):
    @nki.jit
    def k(x):
        out = nl.ndarray((64, 8), dtype=nl.float32, buffer=nl.shared_hbm)
        for r in range(0, 64, 4):  # 16 row DMAs of 1/16 of the output each
            if r != skip:
                t = nl.ndarray((4, 8), dtype=nl.float32, buffer=nl.sbuf)
                nisa.dma_copy(dst=t, src=x[r : r + 4])
                nisa.dma_copy(dst=out[r : r + 4], src=t)
        back = nl.ndarray((64, 8), dtype=nl.float32, buffer=nl.sbuf)
        nisa.dma_copy(dst=back, src=out)  # reading the output applies any pending poison fill
        out2 = nl.ndarray((64, 8), dtype=nl.float32, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out2, src=back)
        return out, out2

    return k


def test_output_written_piecewise_reads_back_its_values():
    x = np.arange(512, dtype=np.float32).reshape(64, 8)
    out, out2 = _rows_output(None)(x)
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(out2, x)


def test_output_missing_rows_is_still_reported():
    with pytest.raises(NkiUninitializedError):
        _rows_output(8)(np.ones((64, 8), np.float32))


# ---- PSUM tiles matmul-written column by column -----------------------------------------------------------

_G = 16


def _gemv(first_acc: bool, seen: dict):
    @nki.jit
    def k(w, v):
        w_t = nl.ndarray((128, 128 * _G), dtype=nl.bfloat16, buffer=nl.sbuf)
        nisa.dma_copy(dst=w_t, src=w)
        v_t = nl.ndarray((128, 1), dtype=nl.bfloat16, buffer=nl.sbuf)
        nisa.dma_copy(dst=v_t, src=v)
        acc = nl.ndarray((128, _G), dtype=nl.float32, buffer=nl.psum)
        for step in range(2):
            for g in range(_G):  # column g = w columns g, g + G, ...: strided stationary, one PSUM column
                nisa.nc_matmul(
                    dst=acc[:, g : g + 1],
                    stationary=w_t[:, g : 128 * _G : _G],
                    moving=v_t,
                    accumulate=step > 0 or (first_acc and g == _G - 1),
                )
            seen[step] = acc.st.mm_full
        y = nl.ndarray((128, _G), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_copy(dst=y, src=acc)
        out = nl.ndarray((128, _G), dtype=nl.float32, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=y)
        return out

    return k


def test_psum_written_column_by_column_counts_as_matmul_written():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((128, 128 * _G)).astype(BF16)
    v = rng.standard_normal((128, 1)).astype(BF16)
    seen: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 'accumulate onto PSUM never written' warning
        out = _gemv(False, seen)(w, v)
    assert seen == {0: True, 1: True}
    w32, v32 = w.astype(np.float32), v.astype(np.float32)[:, 0]
    col = np.stack([w32[:, g::_G].T @ v32 for g in range(_G)], axis=1)  # [128, G]
    np.testing.assert_allclose(out, 2 * col, rtol=1e-5, atol=1e-4)


def test_accumulating_onto_an_unwritten_column_still_warns():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((128, 128 * _G)).astype(BF16)
    v = rng.standard_normal((128, 1)).astype(BF16)
    seen: dict = {}
    # The other 15 columns were matmul-written first: the warning is about the last one alone.
    with pytest.warns(UserWarning, match="never written by a matmul") as caught:
        run(_gemv(True, seen), w, v, strict=False)
    assert len([c for c in caught if "never written by a matmul" in str(c.message)]) == 1


# ---- PE transposes out of a wide tile -------------------------------------------------------------------


@nki.jit
def _transpose_blocks(x):
    """out[:, b*128:(b+1)*128] = x[:, b*128:(b+1)*128].T for each 128-column block of x [128, 1024]."""
    t = nl.ndarray((128, 1024), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=x)
    tp = nl.ndarray((128, 8, 128), dtype=x.dtype, buffer=nl.psum)
    for b in range(8):
        nisa.nc_transpose(dst=tp[:, b, :], data=t[:, b * 128 : (b + 1) * 128])
    s = nl.ndarray((128, 8, 128), dtype=x.dtype, buffer=nl.sbuf)
    nisa.tensor_copy(dst=s, src=tp)
    out = nl.ndarray((128, 1024), dtype=x.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=s.reshape((128, 1024)))
    return out


def test_pe_transpose_of_a_strided_slice_is_bit_exact():
    bits = np.random.default_rng(7).integers(0, 2**16, (128, 1024), dtype=np.uint16)
    bits[0, :8] = [0x7FC1, 0xFFFF, 0x7F81, 0x8000, 0x0001, 0x7F80, 0xFF80, 0x0000]  # NaN payloads, ±0, inf
    x = bits.view(BF16)
    out = _transpose_blocks(x)
    want = np.concatenate([bits[:, b * 128 : (b + 1) * 128].T for b in range(8)], axis=1)
    np.testing.assert_array_equal(out.view(np.uint16), want)


# ---- float64 activations evaluated in chunks --------------------------------------------------------------


def test_chunked_activations_match_their_piecewise_evaluation():
    from nki_moe.sim import alu

    rng = np.random.default_rng(8)
    n = 3 * alu._CHUNK64 + 123  # several chunks and a ragged tail
    with np.errstate(all="ignore"):
        x = (rng.standard_normal(n) * np.exp(rng.uniform(-8, 8, n))).astype(np.float32)
    x[:7] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -88.7]
    tile = x[: 128 * (n // 128)].reshape(128, -1)
    names = [k for k, op in alu.OPS.items() if op.kind == "activation" and k != "prelu"] + ["rsqrt"]
    assert {"exp", "silu", "gelu", "tanh", "rsqrt"} <= set(names)
    for name in names:
        op = alu.OPS[name]
        with np.errstate(all="ignore"):
            whole = op.fn(x)
            small = np.concatenate([op.fn(x[i : i + 1000]) for i in range(0, n, 1000)])  # one pass each
            whole_2d = op.fn(tile)
        assert whole.dtype == np.float32 and whole_2d.shape == tile.shape
        np.testing.assert_array_equal(whole.view(np.uint32), small.view(np.uint32), err_msg=name)
        flat_2d = whole_2d.reshape(-1).view(np.uint32)
        np.testing.assert_array_equal(flat_2d, whole[: tile.size].view(np.uint32), err_msg=name)


# ---- memset: one converted value, broadcast ---------------------------------------------------------------

_MEMSETS = [
    ("bfloat16", 0.0),
    ("bfloat16", -3.3e38),
    ("bfloat16", 1.0 / 3.0),
    ("float32", 1.5),
    ("float16", 70000.0),
    ("float8_e4m3fn", 1000.0),
    ("float8_e5m2", -1e-9),
    ("int32", 7),
    ("int32", 2.0),
    ("uint8", 255),
    ("int16", -32768),
]


@pytest.mark.parametrize(("dtype", "value"), _MEMSETS)
def test_memset_stores_the_value_cast_once(dtype, value):
    full = np.full((64, 4), value, np.int64 if numerics.is_int(dtype) else np.float32)
    want_bits = numerics.cast(full, dtype)  # the old implementation: a full tile, cast element by element

    @nki.jit
    def k(x):
        t = nl.ndarray((128, 16), dtype=dtype, buffer=nl.sbuf)
        nisa.memset(dst=t, value=0)
        nisa.memset(dst=t[64:128, 4:8], value=value)  # a part: the rest keeps its earlier value
        out = nl.ndarray((128, 16), dtype=dtype, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=t)
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float value into an int tile: a docs warning
        out = np.asarray(k(np.zeros(1, np.float32)))
    zero = numerics.cast(np.zeros(1, np.float32), dtype).view(np.uint8)
    expect = np.broadcast_to(zero.reshape(1, 1, -1), (128, 16, zero.size)).copy()
    expect[64:128, 4:8] = want_bits.view(np.uint8).reshape(64, 4, -1)
    np.testing.assert_array_equal(out.view(np.uint8).reshape(128, 16, -1), expect)
