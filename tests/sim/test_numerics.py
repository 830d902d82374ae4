"""numerics.py: dtype table, hardware casts, promotion, storage mode.

References here are written independently of the implementation: nearest-value search over every code
point of a format (with the even-pattern tie rule), Python's round() (half to even) for integer casts,
frexp-based mantissa rounding for tfloat32.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nki_moe.sim import numerics as nm

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)
F32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
INT_TYPES = ["int8", "int16", "int32", "uint8", "uint16", "uint32"]


def _code_points(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(values as float64, bit patterns) of every finite code point of a 1- or 2-byte float format."""
    dt = nm.DTYPES[name]
    bits = np.arange(2 ** (8 * dt.itemsize), dtype=np.uint16 if dt.itemsize == 2 else np.uint8)
    with np.errstate(invalid="ignore"):
        vals = bits.view(dt).astype(np.float64)
    ok = np.isfinite(vals)
    return vals[ok], bits[ok].astype(np.int64)


_POINTS = {n: _code_points(n) for n in ("bfloat16", "float16", "float8_e4m3", "float8_e4m3fn", "float8_e5m2")}


def _nearest_even(x: float, name: str) -> float:
    """Round-to-nearest-even by exhaustive search: nearest code point, ties to the even bit pattern."""
    vals, bits = _POINTS[name]
    d = np.abs(vals - x)
    best = d.min()
    cand = np.flatnonzero(d == best)
    if len(cand) > 1:
        even = [c for c in cand if bits[c] % 2 == 0]
        cand = even or cand
    # +0 and -0 are both nearest to 0: keep the sign of x as IEEE rounding does.
    v = vals[cand[0]]
    return math.copysign(v, x) if v == 0 else v


@pytest.mark.parametrize("name", sorted(_POINTS))
@SETTINGS
@given(x=st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float_cast_is_round_to_nearest_even(name: str, x: float) -> None:
    vals, _ = _POINTS[name]
    finite_max = vals.max()
    # Beyond the largest finite value (plus half an ulp) the formats overflow differently (inf/NaN);
    # the finite range is what RNE pins down.
    if abs(x) > finite_max * (1 + 2.0**-12):
        return
    got = float(nm.cast(np.array([x], np.float32), name).astype(np.float64)[0])
    want = _nearest_even(float(np.float32(x)), name)
    if abs(x) > finite_max:
        assert got == want or math.isinf(got) or math.isnan(got)
    else:
        assert got == want and math.copysign(1, got) == math.copysign(1, want)


def _tf32_reference(x: float) -> float:
    """tfloat32 rounding: 10 explicit mantissa bits, nearest even; fp32 subnormals keep quantum 2^-136."""
    if not math.isfinite(x) or x == 0:
        return x
    if abs(x) < 2.0**-126:
        return round(x / 2.0**-136) * 2.0**-136
    m, e = math.frexp(x)  # x = m * 2^e, 0.5 <= |m| < 1
    return math.ldexp(round(m * 2**11), e - 11)


@SETTINGS
@given(x=F32)
def test_tfloat32_rounding(x: float) -> None:
    got = nm.cast(np.array([x], np.float32), "tfloat32")
    assert got.dtype == np.float32
    want = _tf32_reference(float(np.float32(x)))
    g = float(got[0])
    if math.isnan(x):
        assert math.isnan(g)
    elif abs(want) > float(np.finfo(np.float32).max):
        assert math.isinf(g)
    else:
        assert g == want


@pytest.mark.parametrize("name", INT_TYPES)
@SETTINGS
@given(x=F32)
def test_float_to_int_rounds_half_even_and_saturates(name: str, x: float) -> None:
    lo, hi = nm.int_range(name)
    got = int(nm.cast(np.array([x], np.float32), name)[0])
    if math.isnan(x):
        want = 0
    elif math.isinf(x):
        want = hi if x > 0 else lo
    else:
        want = min(max(round(float(np.float32(x))), lo), hi)  # Python round() is half-to-even
    assert got == want


@pytest.mark.parametrize("name", INT_TYPES)
@SETTINGS
@given(x=st.integers(min_value=-(2**40), max_value=2**40))
def test_int_to_int_saturates(name: str, x: int) -> None:
    lo, hi = nm.int_range(name)
    assert int(nm.cast(np.array([x], np.int64), name)[0]) == min(max(x, lo), hi)


def test_half_way_cases() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 127.5, 128.5, -128.5], np.float32)
    assert nm.cast(x, "int8").tolist() == [0, 2, 2, 0, -2, -2, 127, 127, -128]
    assert nm.cast(x, "uint8").tolist() == [0, 2, 2, 0, 0, 0, 128, 128, 0]


def test_to_f32_exact_and_int32_rounding() -> None:
    for name in ("bfloat16", "float8_e4m3", "float8_e5m2", "float16", "int16", "uint16"):
        raw = np.arange(0, 2 ** (8 * min(nm.itemsize(name), 2)), 7, dtype=np.uint32)
        if nm.is_float(name):
            dt = nm.np_dtype(name)
            raw = raw.astype(np.uint16 if dt.itemsize == 2 else np.uint8).view(dt)
        else:
            raw = raw.astype(nm.np_dtype(name))
        f = nm.to_f32(raw)
        assert f.dtype == np.float32
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(f.astype(np.float64), raw.astype(np.float64))
    big = np.array([2**24 + 1, 2**24 + 3, -(2**31)], np.int32)
    assert nm.to_f32(big).tolist() == [2.0**24, 2.0**24 + 4, -(2.0**31)]


def test_dtype_table_and_normalize() -> None:
    assert nm.np_dtype("bfloat16") == np.dtype(ml_dtypes.bfloat16)
    assert nm.np_dtype("tfloat32") == np.float32
    assert nm.normalize_dtype(np.float32) == "float32"
    assert nm.normalize_dtype(np.dtype("float16")) == "float16"
    assert nm.normalize_dtype(ml_dtypes.float8_e5m2) == "float8_e5m2"
    assert nm.normalize_dtype("bf16") == "bfloat16"
    assert nm.normalize_dtype(bool) == "bool_"
    assert nm.itemsize("bfloat16") == 2 and nm.itemsize("bool_") == 1 and nm.itemsize("tfloat32") == 4
    assert nm.is_float("tfloat32") and nm.is_int("bool_") and not nm.is_int("float8_e4m3")
    with pytest.raises(TypeError, match="float64"):
        nm.normalize_dtype(np.float64)
    with pytest.raises(TypeError):
        nm.normalize_dtype("float64")


@pytest.mark.parametrize(
    "a, b, want",
    [
        ("float16", "int32", "float16"),
        ("float32", "bfloat16", "float32"),
        ("float16", "bfloat16", "float32"),
        ("float8_e4m3", "float8_e5m2", "bfloat16"),
        ("float8_e4m3", "float16", "float16"),
        ("float8_e5m2", "bfloat16", "bfloat16"),
        ("float32", "tfloat32", "float32"),
        ("int8", "uint8", "int16"),
        ("int8", "uint16", "int32"),
        ("int16", "uint8", "int16"),
        ("uint8", "uint16", "uint16"),
        ("int32", "uint32", "float32"),
        ("int32", "int8", "int32"),
        ("bool_", "int8", "int8"),
    ],
)
def test_promotion(a: str, b: str, want: str) -> None:
    assert nm.promote(a, b) == want
    assert nm.promote(b, a) == want


def test_scalar_promotion() -> None:
    assert nm.promote("float16", nm.scalar_dtype(1.2)) == "float32"
    assert nm.promote("int8", nm.scalar_dtype(3)) == "int32"
    assert nm.scalar_dtype(True) == "uint8"


def test_storage_mode_switch() -> None:
    x = np.array([1.0 + 2.0**-10], np.float32)
    old = nm.precise()
    try:
        nm.set_precise(True)
        assert nm.np_storage_dtype("bfloat16") == np.dtype(ml_dtypes.bfloat16)
        assert float(nm.cast(x, "bfloat16")[0]) == 1.0
        nm.set_precise(False)
        assert not nm.precise()
        assert nm.np_storage_dtype("bfloat16") == np.float32
        assert nm.np_storage_dtype("float8_e4m3") == np.float32
        assert nm.np_storage_dtype("int8") == np.int8
        y = nm.cast(x, "bfloat16")
        assert y.dtype == np.float32 and float(y[0]) == float(x[0])
        # tfloat32 always rounds (it is a float32 container in both modes)
        assert float(nm.cast(np.array([1.0 + 2.0**-12], np.float32), "tfloat32")[0]) == 1.0
    finally:
        nm.set_precise(old)


def test_bool_and_packed_casts() -> None:
    assert nm.cast(np.array([0.0, 0.4, 2.0, np.nan]), "bool_").tolist() == [False, False, True, False]
    assert nm.cast(np.array([0.0]), "float8_e4m3fn_x4").dtype == np.uint32
    assert nm.is_packed("float4_e2m1fn_x4")
