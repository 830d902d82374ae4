"""semantics.py against independent references.

Every reference below is written differently from the implementation: explicit per-element / per-row
Python loops over small shapes with numpy fp32 scalars, Python's sorted(), math.* transcendentals, or the
NumPy formulations of the public NKI ISA golden tests. Hypothesis draws the shapes and values.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nki_moe.sim import alu
from nki_moe.sim import semantics as S

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
f32 = np.float32
VALS = st.floats(min_value=-100, max_value=100, width=32, allow_nan=False)
SMALL_INTS = st.integers(min_value=-8, max_value=8).map(float)


@st.composite
def tiles(draw, n: int = 1, vals=VALS, max_p: int = 6, max_f: int = 12) -> list[np.ndarray]:
    """n float32 tiles of one random (P, F) shape."""
    p = draw(st.integers(1, max_p))
    f = draw(st.integers(1, max_f))
    return [draw(hnp.arrays(np.float32, (p, f), elements=vals)) for _ in range(n)]


def _scalar_op(op: alu.Op):
    """A scalar reference of an ALU op built from Python/numpy-scalar arithmetic."""
    return {
        "add": lambda a, b: f32(a) + f32(b),
        "subtract": lambda a, b: f32(a) - f32(b),
        "multiply": lambda a, b: f32(a) * f32(b),
        "maximum": lambda a, b: max(f32(a), f32(b)),
        "max": lambda a, b: max(f32(a), f32(b)),
        "minimum": lambda a, b: min(f32(a), f32(b)),
        "min": lambda a, b: min(f32(a), f32(b)),
        "equal": lambda a, b: f32(a == b),
        "not_equal": lambda a, b: f32(a != b),
        "greater": lambda a, b: f32(a > b),
        "greater_equal": lambda a, b: f32(a >= b),
        "less": lambda a, b: f32(a < b),
        "less_equal": lambda a, b: f32(a <= b),
        "logical_and": lambda a, b: f32(bool(a) and bool(b)),
        "logical_or": lambda a, b: f32(bool(a) or bool(b)),
        "logical_xor": lambda a, b: f32(bool(a) != bool(b)),
        "abs_max": lambda a, b: max(abs(f32(a)), abs(f32(b))),
        "abs_min": lambda a, b: min(abs(f32(a)), abs(f32(b))),
    }[op.name]


BIN_OPS = [
    alu.OPS[n]
    for n in (
        "add",
        "subtract",
        "multiply",
        "maximum",
        "minimum",
        "equal",
        "not_equal",
        "greater",
        "greater_equal",
        "less",
        "less_equal",
        "logical_and",
        "logical_or",
        "logical_xor",
        "abs_max",
        "abs_min",
    )
]
RED_OPS = [
    alu.OPS[n]
    for n in (
        "add",
        "multiply",
        "maximum",
        "minimum",
        "max",
        "min",
        "abs_max",
        "logical_and",
        "logical_or",
        "logical_xor",
    )
]


def _loop2(fn, a: np.ndarray, b) -> np.ndarray:
    out = np.empty(a.shape, np.float32)
    for i, j in np.ndindex(a.shape):
        bv = (
            b[i, 0]
            if isinstance(b, np.ndarray) and b.shape[1] == 1
            else (b[i, j] if isinstance(b, np.ndarray) else b)
        )
        out[i, j] = fn(a[i, j], bv)
    return out


def _seq_fold(fn, row, init) -> np.float32:
    acc = f32(init)
    for x in row:
        acc = f32(fn(x, acc))
    return acc


# ---- elementwise ------------------------------------------------------------------------------------------


@SETTINGS
@given(ts=tiles(2, vals=st.one_of(VALS, SMALL_INTS)), op=st.sampled_from(BIN_OPS))
def test_tensor_tensor_arith(ts, op) -> None:
    a, b = ts
    np.testing.assert_array_equal(S.tensor_tensor(a, b, op), _loop2(_scalar_op(op), a, b))


BITOPS = {
    "bitwise_and": lambda a, b, w: a & b,
    "bitwise_or": lambda a, b, w: a | b,
    "bitwise_xor": lambda a, b, w: a ^ b,
    "left_shift": lambda a, b, w: (a << b) & ((1 << w) - 1),
    "right_shift": lambda a, b, w: (a & ((1 << w) - 1)) >> b,
    "right_shift_arithmetic": lambda a, b, w: a >> b,
}


@SETTINGS
@given(
    dtype=st.sampled_from([np.int8, np.int16, np.int32, np.uint8, np.uint16, np.uint32]),
    name=st.sampled_from(sorted(BITOPS)),
    data=st.data(),
)
def test_bitvec_tensor_tensor(dtype, name, data) -> None:
    info = np.iinfo(dtype)
    width = info.bits
    shape = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 8)))
    a = data.draw(hnp.arrays(dtype, shape, elements=st.integers(int(info.min), int(info.max))))
    shift = "shift" in name
    b = data.draw(
        hnp.arrays(
            dtype,
            shape,
            elements=st.integers(0, width - 1) if shift else st.integers(int(info.min), int(info.max)),
        )
    )
    got = S.tensor_tensor(a, b, alu.OPS[name])
    assert got.dtype == dtype
    for i, j in np.ndindex(shape):
        raw = BITOPS[name](int(a[i, j]), int(b[i, j]), width)
        want = np.array(raw & ((1 << width) - 1), dtype=np.uint64).astype(np.uint64)
        want = int(want)
        if info.min < 0 and want >= 2 ** (width - 1):
            want -= 2**width
        assert int(got[i, j]) == want, (name, a[i, j], b[i, j])


@SETTINGS
@given(
    ts=tiles(1, vals=st.one_of(VALS, SMALL_INTS)),
    op0=st.sampled_from(BIN_OPS),
    op1=st.sampled_from([None, *BIN_OPS[:6]]),
    rev0=st.booleans(),
    rev1=st.booleans(),
    vec0=st.booleans(),
    data=st.data(),
)
def test_tensor_scalar(ts, op0, op1, rev0, rev1, vec0, data) -> None:
    (x,) = ts
    p = x.shape[0]
    o0 = data.draw(hnp.arrays(np.float32, (p, 1), elements=VALS)) if vec0 else float(data.draw(VALS))
    o1 = float(data.draw(SMALL_INTS))
    got = S.tensor_scalar(x, op0, o0, rev0, op1, o1, rev1)
    f0 = _scalar_op(op0)
    step0 = _loop2((lambda a, b: f0(b, a)) if rev0 else f0, x, o0)
    if op1 is None:
        want = step0
    else:
        f1 = _scalar_op(op1)
        want = _loop2((lambda a, b: f1(b, a)) if rev1 else f1, step0, o1)
    np.testing.assert_array_equal(got, want)


@SETTINGS
@given(
    ts=tiles(2),
    op0=st.sampled_from(BIN_OPS[:5]),
    op1=st.sampled_from(BIN_OPS[:5]),
    s=VALS,
    rev0=st.booleans(),
    rev1=st.booleans(),
)
def test_scalar_tensor_tensor(ts, op0, op1, s, rev0, rev1) -> None:
    x, y = ts
    got = S.scalar_tensor_tensor(x, op0, s, op1, y, rev0, rev1)
    f0, f1 = _scalar_op(op0), _scalar_op(op1)
    want = np.empty_like(x)
    for i, j in np.ndindex(x.shape):
        t = f0(s, x[i, j]) if rev0 else f0(x[i, j], s)
        want[i, j] = f1(y[i, j], t) if rev1 else f1(t, y[i, j])
    np.testing.assert_array_equal(got, want)


_MATH = {
    "exp": math.exp,
    "tanh": math.tanh,
    "sigmoid": lambda x: 1 / (1 + math.exp(-x)),
    "silu": lambda x: x / (1 + math.exp(-x)),
    "gelu": lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2))),
    "gelu_apprx_tanh": lambda x: 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "gelu_apprx_sigmoid": lambda x: x / (1 + math.exp(-1.702 * x)),
    "softplus": lambda x: math.log1p(math.exp(x)),
    "mish": lambda x: x * math.tanh(math.log1p(math.exp(x))),
    "erf": math.erf,
    "square": lambda x: x * x,
    "relu": lambda x: max(x, 0.0),
    "copy": lambda x: x,
    "abs": abs,
    "sign": lambda x: float((x > 0) - (x < 0)),
    "sin": math.sin,
    "arctan": math.atan,
}


@SETTINGS
@given(
    ts=tiles(1, vals=st.floats(-20, 20, width=32)),
    name=st.sampled_from(sorted(_MATH)),
    scale=st.floats(-2, 2, width=32),
    bias_vec=st.booleans(),
    data=st.data(),
)
def test_activation(ts, name, scale, bias_vec, data) -> None:
    (x,) = ts
    p = x.shape[0]
    bias_el = st.floats(-2, 2, width=32)
    bias = data.draw(hnp.arrays(np.float32, (p, 1), elements=bias_el)) if bias_vec else None
    got = S.activation(x, alu.OPS[name], scale, bias)
    for i, j in np.ndindex(x.shape):
        z = float(f32(f32(x[i, j]) * f32(scale)) + (f32(bias[i, 0]) if bias_vec else f32(0)))
        want = _MATH[name](float(f32(z)))
        assert got[i, j] == pytest.approx(want, rel=2e-6, abs=1e-6), (name, z)


def test_activation_log_sqrt_rsqrt_reciprocal() -> None:
    x = np.array([[0.25, 1.0, 3.0, 1e-8, 7e5]], np.float32)
    np.testing.assert_allclose(S.activation(x, alu.log), np.log(x.astype(np.float64)), rtol=1e-7)
    np.testing.assert_allclose(S.activation(x, alu.sqrt), np.sqrt(x.astype(np.float64)), rtol=1e-7)
    np.testing.assert_allclose(S.activation(x, alu.rsqrt), 1 / np.sqrt(x.astype(np.float64)), rtol=1e-7)
    np.testing.assert_array_equal(
        S.reciprocal(x), np.array([[4.0, 1.0, f32(1) / f32(3), f32(1e8), f32(1) / f32(7e5)]], np.float32)
    )


def test_special_values_raise_no_warnings() -> None:
    x = np.array([[np.nan, np.inf, -np.inf, 0.0, -0.0, 1e38, -1e38, 1e-45]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for op in set(alu.OPS.values()):
            if op.is_bitvec:
                continue
            out = alu.apply(op, x, x)
            assert out.dtype == np.float32 and out.shape == x.shape, op.name
        S.exponential(x, 1.0)
        S.reciprocal(x)
        S.tensor_reduce(x, alu.add, (8,), (1,))


def test_erf_matches_math() -> None:
    xs = np.linspace(-7, 7, 20001)
    want = np.array([math.erf(v) for v in xs])
    assert np.max(np.abs(alu.erf64(xs) - want)) < 1e-14


# ---- reductions / scans -----------------------------------------------------------------------------------


@st.composite
def reduce_case(draw):
    p = draw(st.integers(1, 4))
    free = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    x = draw(hnp.arrays(np.float32, (p, *free), elements=st.one_of(VALS, SMALL_INTS)))
    first = draw(st.integers(1, len(free)))
    return x, free, tuple(range(first, len(free) + 1))


@SETTINGS
@given(case=reduce_case(), op=st.sampled_from(RED_OPS), negate=st.booleans())
def test_tensor_reduce(case, op, negate) -> None:
    x, free, axes = case
    p = x.shape[0]
    got = S.tensor_reduce(x.reshape(p, -1), op, free, axes, negate)
    kept_shape = free[: axes[0] - 1]
    fn = (
        _scalar_op(op)
        if op.name not in ("add", "multiply")
        else ((lambda a, b: f32(a) + f32(b)) if op.name == "add" else (lambda a, b: f32(a) * f32(b)))
    )
    want = np.empty((p, int(np.prod(kept_shape, dtype=int))), np.float32)
    for i in range(p):
        for k, kidx in enumerate(itertools.product(*[range(n) for n in kept_shape])):
            row = x[(i, *kidx)].reshape(-1)
            v = _seq_fold(fn, row, op.identity)
            want[i, k] = -v if negate else v
    np.testing.assert_array_equal(got, want)


def test_tensor_reduce_rejects_non_trailing_axes() -> None:
    with pytest.raises(ValueError, match="trailing"):
        S.tensor_reduce(np.zeros((2, 6), np.float32), alu.add, (2, 3), (1,))


@SETTINGS
@given(ts=tiles(1, vals=SMALL_INTS), data=st.data())
def test_bitvec_reduce(ts, data) -> None:
    x = ts[0].astype(np.int32)
    name = data.draw(st.sampled_from(["bitwise_and", "bitwise_or", "bitwise_xor"]))
    got = S.tensor_reduce(x, alu.OPS[name], (x.shape[1],), (1,))
    for i in range(x.shape[0]):
        acc = -1 if name == "bitwise_and" else 0
        for v in x[i]:
            acc = BITOPS[name](int(v), acc, 32)
        assert int(got[i, 0]) == acc


CUM_OPS = [alu.OPS[n] for n in ("add", "subtract", "multiply", "maximum", "minimum")]


@SETTINGS
@given(
    ts=tiles(1, vals=st.one_of(SMALL_INTS, VALS)),
    op0=st.sampled_from(BIN_OPS[:5]),
    op1=st.sampled_from(CUM_OPS),
    imm0=SMALL_INTS,
    rev0=st.booleans(),
    cmd=st.sampled_from([S.RESET_REDUCE, S.REDUCE, S.LOAD_REDUCE]),
    imm1=SMALL_INTS,
)
def test_tensor_scalar_cumulative(ts, op0, op1, imm0, rev0, cmd, imm1) -> None:
    (x,) = ts
    p = x.shape[0]
    prev_acc = np.arange(p, dtype=np.float32) - 1
    init = S.cumulative_init(op1, cmd, prev_acc, imm1)
    got = S.tensor_scalar_cumulative(x, op0, imm0, op1, init, rev0)
    f0 = _scalar_op(op0)
    f1 = {
        "add": lambda a, r: f32(a) + f32(r),
        "subtract": lambda a, r: f32(a) - f32(r),
        "multiply": lambda a, r: f32(a) * f32(r),
        "maximum": max,
        "minimum": min,
    }[op1.name]
    for i in range(p):
        reg = {S.RESET_REDUCE: f32(op1.identity), S.REDUCE: prev_acc[i], S.LOAD_REDUCE: f32(imm1)}[cmd]
        for j in range(x.shape[1]):
            t = f0(imm0, x[i, j]) if rev0 else f0(x[i, j], imm0)
            reg = f32(f1(t, reg))
            assert got[i, j] == reg


@SETTINGS
@given(
    ts=tiles(2, vals=st.floats(-2, 2, width=32)),
    op0=st.sampled_from(BIN_OPS[:5]),
    op1=st.sampled_from(BIN_OPS[:5]),
    init=st.floats(-2, 2, width=32),
    rev0=st.booleans(),
    rev1=st.booleans(),
)
def test_tensor_tensor_scan(ts, op0, op1, init, rev0, rev1) -> None:
    a, b = ts
    got = S.tensor_tensor_scan(a, b, init, op0, op1, rev0, rev1)
    f0, f1 = _scalar_op(op0), _scalar_op(op1)
    for i in range(a.shape[0]):
        prev = f32(init)
        for j in range(a.shape[1]):
            t = f0(prev, a[i, j]) if rev0 else f0(a[i, j], prev)
            prev = f32(f1(b[i, j], t) if rev1 else f1(t, b[i, j]))
            assert got[i, j] == prev or (math.isnan(got[i, j]) and math.isnan(prev))


@SETTINGS
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from([S.IDLE, S.RESET, S.REDUCE, S.RESET_REDUCE, S.LOAD_REDUCE]),
            hnp.arrays(np.float32, (3, 4), elements=SMALL_INTS),
            SMALL_INTS,
        ),
        min_size=1,
        max_size=6,
    ),
    op=st.sampled_from([alu.add, alu.maximum, alu.minimum, alu.multiply]),
)
def test_accumulator_commands(steps, op) -> None:
    acc = np.zeros(3, np.float32)
    model = [f32(0)] * 3
    fn = _scalar_op(op)
    for cmd, vals, init in steps:
        acc = S.accumulate(acc, vals, op, cmd, init)
        for i in range(3):
            if cmd == S.RESET:
                model[i] = f32(op.identity)
            elif cmd != S.IDLE:
                start = {S.REDUCE: model[i], S.RESET_REDUCE: f32(op.identity), S.LOAD_REDUCE: f32(init)}[cmd]
                model[i] = _seq_fold(fn, vals[i], start)
        np.testing.assert_array_equal(acc, np.array(model, np.float32))


@SETTINGS
@given(
    ts=tiles(1, vals=st.one_of(VALS, SMALL_INTS), max_p=8, max_f=5),
    op=st.sampled_from([alu.add, alu.maximum, alu.minimum]),
)
def test_tensor_partition_reduce(ts, op) -> None:
    (x,) = ts
    got = S.tensor_partition_reduce(x, op)
    fn = _scalar_op(op)
    assert got.shape == (1, x.shape[1])
    for j in range(x.shape[1]):
        assert got[0, j] == _seq_fold(fn, x[:, j], op.identity)


# ---- selection --------------------------------------------------------------------------------------------


@SETTINGS
@given(ts=tiles(2), data=st.data(), rev=st.booleans(), scalar_src=st.booleans())
def test_tensor_copy_predicated(ts, data, rev, scalar_src) -> None:
    old, src = ts
    pred = data.draw(hnp.arrays(np.uint8, old.shape, elements=st.integers(0, 3)))
    s = f32(7.5) if scalar_src else src
    got = S.tensor_copy_predicated(old, s, pred, rev)
    for i, j in np.ndindex(old.shape):
        take = (pred[i, j] != 0) != rev
        assert got[i, j] == ((s if scalar_src else src[i, j]) if take else old[i, j])


@SETTINGS
@given(ts=tiles(1), data=st.data(), rev=st.booleans(), on_false=VALS)
def test_select_reduce(ts, data, rev, on_false) -> None:
    (x,) = ts
    pred = data.draw(hnp.arrays(np.int8, x.shape, elements=st.integers(-1, 1)))
    got = S.select_reduce(pred, x, on_false, rev)
    for i, j in np.ndindex(x.shape):
        assert got[i, j] == (x[i, j] if (pred[i, j] != 0) != rev else f32(on_false))


CMP_OPS = [alu.OPS[n] for n in ("equal", "less", "less_equal", "greater", "greater_equal")]


@SETTINGS
@given(
    ts=tiles(1),
    c0=st.sampled_from(CMP_OPS),
    c1=st.sampled_from(CMP_OPS),
    start=st.integers(-3, 3),
    data=st.data(),
)
def test_range_select(ts, c0, c1, start, data) -> None:
    (x,) = ts
    p, f = x.shape
    b0 = data.draw(hnp.arrays(np.float32, (p, 1), elements=st.integers(-2, 14).map(float)))
    b1 = data.draw(hnp.arrays(np.float32, (p, 1), elements=st.integers(-2, 14).map(float)))
    got = S.range_select(x, c0, c1, b0, b1, start)
    g0, g1 = _scalar_op(c0), _scalar_op(c1)
    for i, j in np.ndindex(x.shape):
        keep = g0(start + j, b0[i, 0]) and g1(start + j, b1[i, 0])
        assert got[i, j] == (x[i, j] if keep else f32(-3.4028235e38))


@st.composite
def patterns(draw):
    n = draw(st.integers(1, 3))
    return [[draw(st.integers(-5, 5)), draw(st.integers(1, 4))] for _ in range(n)]


@SETTINGS
@given(pattern=patterns(), offset=st.integers(-50, 50), cm=st.integers(-3, 3), p=st.integers(1, 6))
def test_iota(pattern, offset, cm, p) -> None:
    got = S.iota(pattern, offset, cm, p)
    for i in range(p):
        vals = [
            offset + i * cm + sum(k * s for k, (s, _) in zip(idx, pattern))
            for idx in itertools.product(*[range(n) for _, n in pattern])
        ]
        assert got[i].tolist() == vals


def test_iota_wraps_int32() -> None:
    assert S.iota([[1, 2]], 2**31 - 1, 0, 1).tolist() == [[2**31 - 1, -(2**31)]]


@SETTINGS
@given(
    pattern=patterns(),
    offset=st.integers(-10, 10),
    cm=st.integers(-3, 3),
    p=st.integers(1, 6),
    cmp=st.sampled_from(CMP_OPS),
    on_false=VALS,
    data=st.data(),
)
def test_affine_select(pattern, offset, cm, p, cmp, on_false, data) -> None:
    f = int(np.prod([n for _, n in pattern]))
    x = data.draw(hnp.arrays(np.float32, (p, f), elements=VALS))
    got = S.affine_select(pattern, cm, x, on_false, cmp, offset)
    g = _scalar_op(cmp)
    for i in range(p):
        for k, idx in enumerate(itertools.product(*[range(n) for _, n in pattern])):
            v = offset + i * cm + sum(a * s for a, (s, _) in zip(idx, pattern))
            assert got[i, k] == (x[i, k] if g(v, 0) else f32(on_false))


def test_memset_value_kinds() -> None:
    assert S.memset_value_error(2.5, "int32") is not None
    assert S.memset_value_error(2.0, "int32") is None  # integral floats run (nki-library passes 0.0)
    assert S.memset_value_error(2, "int32") is None
    assert S.memset_value_error(0, "float32") is None
    assert S.memset_value_error(1.5, "bfloat16") is None
    assert S.memset_value_error(1, "float8_e4m3fn_x4") is not None
    assert S.memset_value_error(0, "float8_e4m3fn_x4") is None
    assert S.memset_value_error("x", "float32") is not None


# ---- top-8 ------------------------------------------------------------------------------------------------

TIE_VALS = st.integers(0, 6).map(float)


@SETTINGS
@given(ts=tiles(1, vals=st.one_of(VALS, TIE_VALS), max_f=40))
def test_max8(ts) -> None:
    (x,) = ts
    if x.shape[1] < 8:
        x = np.concatenate([x, np.zeros((x.shape[0], 8), np.float32)], axis=1)
    got = S.max8(x)
    for i in range(x.shape[0]):
        assert got[i].tolist() == sorted(x[i].tolist(), reverse=True)[:8]


def _vals_from(row: np.ndarray, draw) -> list[float]:
    return [draw(st.one_of(st.sampled_from(row.tolist()), st.just(99.5))) for _ in range(8)]


@SETTINGS
@given(ts=tiles(1, vals=TIE_VALS, max_f=20), data=st.data())
def test_nc_find_index8_ties_ascending(ts, data) -> None:
    (x,) = ts
    vals = np.array([_vals_from(x[i], data.draw) for i in range(x.shape[0])], np.float32)
    got = S.nc_find_index8(x, vals)
    for i in range(x.shape[0]):
        used: set[int] = set()
        for k in range(8):
            pos = next((j for j, v in enumerate(x[i]) if v == vals[i, k] and j not in used), None)
            if pos is None:
                assert got[i, k] == 0xFFFFFFFF
            else:
                used.add(pos)
                assert got[i, k] == pos


@SETTINGS
@given(ts=tiles(1, vals=TIE_VALS, max_f=20), data=st.data(), imm=st.floats(-1e9, -1e8, width=32))
def test_nc_match_replace8_reverse_order(ts, data, imm) -> None:
    (x,) = ts
    vals = np.array([_vals_from(x[i], data.draw) for i in range(x.shape[0])], np.float32)
    out, idx = S.nc_match_replace8(x, vals, imm)
    for i in range(x.shape[0]):
        row = x[i].tolist()
        done: set[int] = set()
        for k in reversed(range(8)):
            pos = next((j for j, v in enumerate(row) if v == vals[i, k] and j not in done), None)
            assert idx[i, k] == (0xFFFFFFFF if pos is None else pos)
            if pos is not None:
                done.add(pos)
        want = [f32(imm) if j in done else v for j, v in enumerate(row)]
        assert out[i].tolist() == want


def test_match_replace8_doc_example() -> None:
    data = np.array([[1, 2, 3, 4, 8, 8, 8, 8, 8, 8, 8]], np.float32)
    vals = np.array([[3, 8, 8, 8, 8, 8, 8, 8]], np.float32)
    _, idx = S.nc_match_replace8(data, vals, -1.0)
    assert idx.tolist() == [[2, 10, 9, 8, 7, 6, 5, 4]]
    assert S.nc_find_index8(data, vals).tolist() == [[2, 4, 5, 6, 7, 8, 9, 10]]


# ---- cross-partition --------------------------------------------------------------------------------------


@SETTINGS
@given(pd=st.integers(1, 96), data=st.data())
def test_nc_stream_shuffle(pd, data) -> None:
    ps = data.draw(st.integers(1, 96))
    src = np.arange(ps * 3, dtype=np.float32).reshape(ps, 3)
    old = -np.ones((pd, 3), np.float32)
    quad_src = min(ps, 32)
    mask = [data.draw(st.one_of(st.integers(0, quad_src - 1), st.just(255))) for _ in range(32)]
    needed = [(i // 32) * 32 + mask[i % 32] for i in range(pd) if mask[i % 32] != 255]
    if any(s >= ps for s in needed):
        with pytest.raises(ValueError):
            S.nc_stream_shuffle(src, old, mask)
        return
    got = S.nc_stream_shuffle(src, old, mask)
    for i in range(pd):
        m = mask[i % 32]
        want = old[i] if m == 255 else src[(i // 32) * 32 + m]
        assert got[i].tolist() == want.tolist()


def test_stream_shuffle_golden_rotation() -> None:
    a = np.random.default_rng(0).random((32, 8)).astype(np.float32)
    got = S.nc_stream_shuffle(a, a, [(i - 1) % 32 for i in range(32)])
    want = a.copy()
    want[list(range(32))] = a[[(i - 1) % 32 for i in range(32)]]
    np.testing.assert_array_equal(got, want)


@SETTINGS
@given(cores=st.integers(1, 3), cols=st.integers(1, 3), nepi=st.sampled_from([1, 2, 4]), data=st.data())
def test_local_gather_golden(cores, cols, nepi, data) -> None:
    p = cores * 16
    groups = data.draw(st.integers(1, 6))
    src = np.arange(p * groups * nepi, dtype=np.float32).reshape(p, groups * nepi)
    index = data.draw(hnp.arrays(np.uint16, (p, cols), elements=st.integers(0, groups - 1)))
    nvalid = data.draw(st.integers(1, 16 * cols))
    got = S.local_gather(src, (index * nepi).astype(np.uint16), nepi, nvalid)
    # golden formulation from the NKI ISA local_gather test
    want = np.empty((p, nvalid, nepi), np.float32)
    src3 = src.reshape(p, groups, nepi)
    for c in range(cores):
        s, e = c * 16, (c + 1) * 16
        idx = index[s:e].flatten(order="F")[:nvalid]
        want[s:e] = np.take(src3[s:e], idx, axis=1)
    np.testing.assert_array_equal(got, want.reshape(p, -1))


@SETTINGS
@given(ts=tiles(1), data=st.data())
def test_nc_n_gather(ts, data) -> None:
    (x,) = ts
    k = data.draw(st.integers(1, 6))
    idx = data.draw(hnp.arrays(np.uint32, (x.shape[0], k), elements=st.integers(0, x.shape[1] - 1)))
    got = S.nc_n_gather(x, idx)
    for i, j in np.ndindex(idx.shape):
        assert got[i, j] == x[i, int(idx[i, j])]


def test_nc_transpose() -> None:
    x = np.arange(12, dtype=np.int16).reshape(3, 4)
    np.testing.assert_array_equal(S.nc_transpose(x), x.T)


# ---- statistics -------------------------------------------------------------------------------------------


@SETTINGS
@given(ts=tiles(1, max_f=40), chunks=st.integers(1, 4))
def test_bn_stats_aggr(ts, chunks) -> None:
    (x,) = ts
    x64 = x.astype(np.float64)
    st6 = S.bn_stats(x)
    for i in range(x.shape[0]):
        ev, od = x64[i, 0::2], x64[i, 1::2]
        assert st6[i, 0] == len(ev) and st6[i, 3] == len(od)
        assert st6[i, 1] == pytest.approx(ev.mean(), rel=1e-6, abs=1e-5)
        assert st6[i, 2] == pytest.approx(ev.var() * len(ev), rel=1e-5, abs=1e-3)
        if len(od):
            assert st6[i, 4] == pytest.approx(od.mean(), rel=1e-6, abs=1e-5)
            assert st6[i, 5] == pytest.approx(od.var() * len(od), rel=1e-5, abs=1e-3)
    # aggregate chunked stats: same mean / population variance as the whole row
    parts = np.array_split(np.arange(x.shape[1]), min(chunks, x.shape[1]))
    cat = np.concatenate([S.bn_stats(x[:, pidx]) for pidx in parts], axis=1)
    agg = S.bn_aggr(cat)
    np.testing.assert_allclose(agg[:, 0], x64.mean(axis=1), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(agg[:, 1], x64.var(axis=1), rtol=1e-4, atol=1e-3)


def _golden_bounds(seq: np.ndarray) -> np.ndarray:
    """The NKI ISA sequence_bounds golden loops."""
    n = len(seq)
    lo, hi = np.zeros(n), np.zeros(n)
    lo[0] = 0 if seq[0] != 0 else n
    for i in range(1, n):
        lo[i] = n if seq[i] == 0 else (lo[i - 1] if seq[i] == seq[i - 1] else i)
    hi[-1] = n if seq[-1] != 0 else -1
    for i in range(n - 2, -1, -1):
        hi[i] = -1 if seq[i] == 0 else (hi[i + 1] if seq[i] == seq[i + 1] else i + 1)
    return np.concatenate([lo, hi])


@SETTINGS
@given(seq=st.lists(st.integers(0, 4), min_size=1, max_size=30), sort=st.booleans())
def test_sequence_bounds(seq, sort) -> None:
    s = np.array(sorted(seq) if sort else seq, np.float32)[None, :]
    got = S.sequence_bounds(s)
    np.testing.assert_array_equal(got[0], _golden_bounds(s[0]))


def test_sequence_bounds_doc_example() -> None:
    got = S.sequence_bounds(np.array([[0, 1, 1, 2, 2, 2, 0, 3, 3]], np.int32))
    assert got.tolist() == [[9, 1, 1, 3, 3, 3, 9, 7, 7, -1, 3, 3, 6, 6, 6, -1, 9, 9]]


@SETTINGS
@given(ts=tiles(1), prob=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_dropout(ts, prob, seed) -> None:
    (x,) = ts
    u = np.random.default_rng(seed).random(x.shape, dtype=np.float32)
    got = S.dropout(x, prob, u)
    for i, j in np.ndindex(x.shape):
        assert got[i, j] == (0.0 if u[i, j] < f32(prob) else x[i, j])


def test_sums_accumulate_sequentially_in_fp32() -> None:
    # 1e8 + 1 rounds back to 1e8 in fp32, so a lane-sequential sum never moves; a pairwise or
    # wider-precision sum would give 1e8 + 127.
    row = np.array([[1e8] + [1.0] * 127], np.float32)
    assert S.tensor_reduce(row, alu.add, (128,), (1,))[0, 0] == np.float32(1e8)
    assert S.accumulate(np.zeros(1, np.float32), row, alu.add, S.RESET_REDUCE)[0] == np.float32(1e8)
