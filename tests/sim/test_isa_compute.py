"""isa_compute.py through real kernels launched by the emulator.

Positive tests: hypothesis over partition counts (1..128), legal start partitions, free offsets and dtypes,
checked against plain NumPy formulas. Negative tests: one per enforced constraint class, asserting that the
error names the instruction, the operand and the kernel line (file:line of the nisa call).
"""

from __future__ import annotations

import linecache
import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nki_moe import sim
from nki_moe.sim import isa as nisa
from nki_moe.sim import language as nl
from nki_moe.sim.errors import NkiValidationError

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
BF16 = ml_dtypes.bfloat16
NP = {
    "float32": np.float32,
    "bfloat16": BF16,
    "float16": np.float16,
    "int32": np.int32,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "uint32": np.uint32,
}


def run(body, *arrays, target: str = "trn2", **kw):
    """Launch `body(*hbm_inputs)` as a kernel; returns its outputs."""

    def kernel(*hbm):
        return body(*hbm)

    return sim.run(kernel, *arrays, target=target, **kw).outputs


def sb(shape, dtype="float32", buffer=None):
    return nl.ndarray(tuple(shape), dtype=dtype, buffer=buffer or nl.sbuf)


def load(x, p0: int = 0, f0: int = 0, dtype=None):
    """Copy an HBM (P, F) input into a 128-partition SBUF tile at partition p0 / free offset f0."""
    p, f = x.shape
    big = sb((128, f0 + f), dtype or x.dtype)
    view = big[p0 : p0 + p, f0 : f0 + f]
    nisa.dma_copy(dst=view, src=x)
    return view


def store(t):
    out = nl.ndarray(t.shape, dtype=t.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=t)
    return out


@st.composite
def placement(draw, max_p: int = 128):
    """(partitions, start partition, free offset) obeying the start-partition rule."""
    p = draw(st.integers(1, max_p))
    starts = [0] if p > 64 else ([0, 64] if p > 32 else [0, 32, 64, 96])
    return p, draw(st.sampled_from(starts)), draw(st.integers(0, 3))


def rand(seed: int, shape, dtype="float32", lo=-4.0, hi=4.0) -> np.ndarray:
    g = np.random.default_rng(seed)
    if np.issubdtype(np.dtype(NP[dtype]), np.integer):
        info = np.iinfo(NP[dtype])
        return g.integers(max(info.min, -100), min(info.max, 100), size=shape).astype(NP[dtype])
    return g.uniform(lo, hi, size=shape).astype(np.float32).astype(NP[dtype])


def f64(x) -> np.ndarray:
    return np.asarray(x).astype(np.float64)


# ---- positive tests ---------------------------------------------------------------------------------------


@SETTINGS
@given(
    pl=placement(),
    f=st.integers(1, 40),
    seed=st.integers(0, 999),
    dtype=st.sampled_from(["float32", "bfloat16", "float16"]),
    op=st.sampled_from(["add", "subtract", "multiply", "maximum", "greater"]),
)
def test_tensor_tensor_float(pl, f, seed, dtype, op) -> None:
    p, p0, f0 = pl
    a, b = rand(seed, (p, f), dtype), rand(seed + 1, (p, f), dtype)

    def body(x, y):
        d = sb((128, f + f0), dtype)[p0 : p0 + p, f0:]
        nisa.tensor_tensor(dst=d, data1=load(x, p0, f0), data2=load(y, p0), op=getattr(nl, op))
        return store(d)

    got = run(body, a, b)
    fn = {
        "add": np.add,
        "subtract": np.subtract,
        "multiply": np.multiply,
        "maximum": np.maximum,
        "greater": lambda u, v: (u > v).astype(np.float32),
    }[op]
    want = fn(a.astype(np.float32), b.astype(np.float32)).astype(np.float32).astype(NP[dtype])
    np.testing.assert_array_equal(f64(got), f64(want))


@SETTINGS
@given(
    pl=placement(),
    f=st.integers(1, 20),
    seed=st.integers(0, 999),
    op=st.sampled_from(["add", "multiply", "subtract", "bitwise_xor", "bitwise_and"]),
)
def test_tensor_tensor_int32_exact_on_gpsimd(pl, f, seed, op) -> None:
    p, p0, f0 = pl
    g = np.random.default_rng(seed)
    a = g.integers(-(2**30), 2**30, size=(p, f)).astype(np.int32)
    b = g.integers(-(2**30), 2**30, size=(p, f)).astype(np.int32)

    def body(x, y):
        d = sb((128, f), "int32")[p0 : p0 + p]
        nisa.tensor_tensor(dst=d, data1=load(x, p0, f0), data2=load(y, p0), op=getattr(nl, op))
        return store(d)

    got = run(body, a, b)
    assert sim.last_trace()[-2].engine == "pool"
    x, y = a.astype(np.int64), b.astype(np.int64)
    want = {"add": x + y, "multiply": x * y, "subtract": x - y, "bitwise_xor": x ^ y, "bitwise_and": x & y}[
        op
    ]
    np.testing.assert_array_equal(got, np.clip(want, -(2**31), 2**31 - 1))


@SETTINGS
@given(
    pl=placement(),
    f=st.integers(1, 24),
    seed=st.integers(0, 999),
    vec=st.booleans(),
    dtype=st.sampled_from(["float32", "bfloat16"]),
    rev=st.booleans(),
)
def test_tensor_scalar(pl, f, seed, vec, dtype, rev) -> None:
    p, p0, f0 = pl
    a = rand(seed, (p, f), dtype)
    v = rand(seed + 7, (p, 1))

    def body(x, s):
        d = sb((128, f), dtype)[p0 : p0 + p]
        op0 = load(s, p0) if vec else 1.5
        nisa.tensor_scalar(
            dst=d,
            data=load(x, p0, f0),
            op0=nl.subtract,
            operand0=op0,
            reverse0=rev,
            op1=nl.multiply,
            operand1=2.0,
        )
        return store(d)

    got = run(body, a, v)
    s = v if vec else np.float32(1.5)
    x = a.astype(np.float32)
    want = ((s - x) if rev else (x - s)).astype(np.float32) * np.float32(2.0)
    np.testing.assert_array_equal(f64(got), f64(want.astype(np.float32).astype(NP[dtype])))


@SETTINGS
@given(
    pl=placement(),
    f=st.integers(1, 24),
    seed=st.integers(0, 999),
    op=st.sampled_from(["exp", "tanh", "silu", "gelu", "sigmoid", "square"]),
)
def test_activation_with_accumulator(pl, f, seed, op) -> None:
    p, p0, f0 = pl
    a = rand(seed, (p, f))
    bias = rand(seed + 1, (p, 1), lo=-1, hi=1)

    def body(x, b):
        d = sb((128, f))[p0 : p0 + p]
        res = sb((128, 1))[p0 : p0 + p]
        xt, bt = load(x, p0, f0), load(b, p0)
        nisa.activation(
            dst=d,
            op=getattr(nl, op),
            data=xt,
            bias=bt,
            scale=0.5,
            reduce_op=nl.add,
            reduce_res=res,
            reduce_cmd=nisa.reduce_cmd.reset_reduce,
        )
        # a second instruction keeps accumulating (reduce) onto the same lanes
        nisa.activation(
            dst=d,
            op=getattr(nl, op),
            data=xt,
            bias=bt,
            scale=0.5,
            reduce_op=nl.add,
            reduce_res=res,
            reduce_cmd=nisa.reduce_cmd.reduce,
        )
        return store(d), store(res)

    got, res = run(body, a, bias)
    import math

    fn = {
        "exp": math.exp,
        "tanh": math.tanh,
        "silu": lambda z: z / (1 + math.exp(-z)),
        "gelu": lambda z: 0.5 * z * (1 + math.erf(z / math.sqrt(2))),
        "sigmoid": lambda z: 1 / (1 + math.exp(-z)),
        "square": lambda z: z * z,
    }[op]
    z = (a * np.float32(0.5) + bias).astype(np.float32)
    want = np.vectorize(fn)(z.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=3e-6, atol=1e-6)
    np.testing.assert_allclose(res[:, 0], 2 * want.sum(axis=1), rtol=1e-5, atol=1e-5)


@SETTINGS
@given(
    p=st.integers(1, 128),
    d1=st.integers(1, 5),
    d2=st.integers(1, 6),
    seed=st.integers(0, 999),
    both=st.booleans(),
    op=st.sampled_from(["add", "maximum", "minimum"]),
    negate=st.booleans(),
)
def test_tensor_reduce(p, d1, d2, seed, both, op, negate) -> None:
    a = rand(seed, (p, d1, d2))

    def body(x):
        t = sb((p, d1, d2))
        nisa.dma_copy(dst=t, src=x)
        d = sb((p, 1) if both else (p, d1))
        nisa.tensor_reduce(dst=d, op=getattr(nl, op), data=t, axis=(1, 2) if both else 2, negate=negate)
        return store(d)

    got = run(body, a)
    fn = {"add": np.sum, "maximum": np.max, "minimum": np.min}[op]
    want = fn(a.astype(np.float64), axis=(1, 2) if both else 2).reshape(got.shape)
    np.testing.assert_allclose(got, -want if negate else want, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(
    pl=placement(),
    f=st.integers(1, 30),
    seed=st.integers(0, 999),
    src_dt=st.sampled_from(["float32", "bfloat16", "int32", "int8"]),
    dst_dt=st.sampled_from(["float32", "bfloat16", "int32", "uint8"]),
    engine=st.sampled_from([nisa.engine.unknown, nisa.engine.vector, nisa.engine.gpsimd, nisa.engine.scalar]),
)
def test_tensor_copy_casts(pl, f, seed, src_dt, dst_dt, engine) -> None:
    p, p0, f0 = pl
    a = rand(seed, (p, f), src_dt)

    def body(x):
        d = sb((128, f), dst_dt)[p0 : p0 + p]
        nisa.tensor_copy(dst=d, src=load(x, p0, f0), engine=engine)
        return store(d)

    got = run(body, a)
    x = a.astype(np.float32)
    if np.issubdtype(np.dtype(NP[dst_dt]), np.integer):
        info = np.iinfo(NP[dst_dt])
        want = np.clip(np.rint(x), info.min, info.max).astype(NP[dst_dt])
    else:
        want = x.astype(NP[dst_dt])
    np.testing.assert_array_equal(f64(got), f64(want))


@SETTINGS
@given(
    pl=placement(),
    n=st.integers(1, 4),
    m=st.integers(1, 6),
    off=st.integers(-20, 20),
    cm=st.integers(-3, 3),
    dtype=st.sampled_from(["int32", "float32", "int16"]),
)
def test_iota_and_affine_select(pl, n, m, off, cm, dtype) -> None:
    p, p0, _ = pl
    pattern = [[m, n], [1, m]]

    def body():
        d = sb((128, n * m), dtype)[p0 : p0 + p]
        nisa.iota(dst=d, pattern=pattern, offset=off, channel_multiplier=cm)
        sel = sb((128, n * m), "float32")[p0 : p0 + p]
        ones = sb((128, n * m), "float32")[p0 : p0 + p]
        nisa.memset(dst=ones, value=1.0)
        nisa.affine_select(
            dst=sel,
            pattern=pattern,
            channel_multiplier=cm,
            on_true_tile=ones,
            on_false_value=-5.0,
            cmp_op=nl.greater_equal,
            offset=off,
        )
        return store(d), store(sel)

    got, sel = run(body)
    pp = np.arange(p)[:, None]
    j = np.arange(n * m)[None, :]
    want = off + pp * cm + j  # [[m, n], [1, m]] enumerates 0..n*m-1
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(sel, np.where(want >= 0, 1.0, -5.0))


@SETTINGS
@given(p=st.integers(1, 128), f=st.integers(8, 64), seed=st.integers(0, 999), ties=st.booleans())
def test_topk_chain(p, f, seed, ties) -> None:
    g = np.random.default_rng(seed)
    a = (g.integers(0, 5, size=(p, f)) if ties else g.standard_normal((p, f))).astype(np.float32)

    def body(x):
        t = load(x)
        m8 = sb((p, 8))
        nisa.max8(dst=m8, src=t)
        idx = sb((p, 8), "uint32")
        nisa.nc_find_index8(dst=idx, data=t, vals=m8)
        rep = sb((p, f))
        idx2 = sb((p, 8), "uint32")
        nisa.nc_match_replace8(dst=rep, data=t, vals=m8, imm=-1e30, dst_idx=idx2)
        return store(m8), store(idx), store(rep), store(idx2)

    m8, idx, rep, idx2 = run(body, a)
    np.testing.assert_array_equal(m8, -np.sort(-a, axis=1)[:, :8])
    # the 8 found indices are distinct and point at the 8 values; match_replace removes exactly them
    for i in range(p):
        assert len(set(idx[i].tolist())) == 8 and np.array_equal(a[i, idx[i]], m8[i])
        assert sorted(idx2[i].tolist()) == sorted(idx[i].tolist())
        kept = np.delete(a[i], idx[i])
        np.testing.assert_array_equal(np.sort(rep[i][rep[i] > -1e29]), np.sort(kept))


@SETTINGS
@given(dst_p=st.sampled_from([32, 64, 96, 128]), f=st.integers(1, 16), seed=st.integers(0, 999))
def test_stream_shuffle_broadcast_idiom(dst_p, f, seed) -> None:
    a = rand(seed, (1, f))

    def body(x):
        src = load(x)
        d = sb((dst_p, f))
        for q in range(dst_p // 32):
            nisa.nc_stream_shuffle(dst=d[q * 32 : (q + 1) * 32], src=src, shuffle_mask=[0] * 32)
        return store(d)

    np.testing.assert_array_equal(run(body, a), np.repeat(a, dst_p, axis=0))


@SETTINGS
@given(p=st.integers(1, 128), chunks=st.integers(1, 3), f=st.integers(1, 512), seed=st.integers(0, 999))
def test_bn_stats_aggr(p, chunks, f, seed) -> None:
    a = rand(seed, (p, chunks * f))

    def body(x):
        t = load(x)
        stats = sb((p, 6 * chunks))
        for c in range(chunks):
            nisa.bn_stats(dst=stats[:, 6 * c : 6 * c + 6], data=t[:, c * f : (c + 1) * f])
        mv = sb((p, 2))
        nisa.bn_aggr(dst=mv, data=stats)
        return store(mv)

    mv = run(body, a)
    np.testing.assert_allclose(mv[:, 0], a.astype(np.float64).mean(1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mv[:, 1], a.astype(np.float64).var(1), rtol=1e-4, atol=1e-5)


@SETTINGS
@given(pl=placement(), f=st.integers(1, 24), seed=st.integers(0, 999))
def test_range_select_and_select_reduce(pl, f, seed) -> None:
    p, p0, f0 = pl
    a = rand(seed, (p, f))
    g = np.random.default_rng(seed)
    lo = g.integers(-2, f, size=(p, 1)).astype(np.float32)
    hi = lo + g.integers(0, f, size=(p, 1)).astype(np.float32)
    pred = g.integers(0, 2, size=(p, f)).astype(np.uint8)

    def body(x, b0, b1, pr):
        xt = load(x, p0, f0)
        d = sb((128, f))[p0 : p0 + p]
        res = sb((128, 1))[p0 : p0 + p]
        nisa.range_select(
            dst=d,
            on_true_tile=xt,
            comp_op0=nl.greater_equal,
            comp_op1=nl.less,
            bound0=load(b0, p0),
            bound1=load(b1, p0),
            reduce_res=res,
        )
        d2 = sb((128, f))[p0 : p0 + p]
        res2 = sb((128, 1))[p0 : p0 + p]
        nisa.select_reduce(
            dst=d2,
            predicate=load(pr, p0),
            on_true=xt,
            on_false=-7.0,
            reduce_res=res2,
            reduce_cmd=nisa.reduce_cmd.reset_reduce,
        )
        return store(d), store(res), store(d2), store(res2)

    d, res, d2, res2 = run(body, a, lo, hi, pred)
    j = np.arange(f)[None, :]
    keep = (j >= lo) & (j < hi)
    want = np.where(keep, a, np.float32(-3.4028235e38))
    np.testing.assert_array_equal(d, want)
    np.testing.assert_array_equal(res[:, 0], want.max(axis=1))
    want2 = np.where(pred != 0, a, np.float32(-7.0))
    np.testing.assert_array_equal(d2, want2)
    np.testing.assert_array_equal(res2[:, 0], want2.max(axis=1))


@SETTINGS
@given(
    pl=placement(),
    f=st.integers(1, 20),
    seed=st.integers(0, 999),
    op1=st.sampled_from(["add", "maximum", "multiply"]),
)
def test_cumulative_and_scan(pl, f, seed, op1) -> None:
    p, p0, f0 = pl
    a = rand(seed, (p, f), lo=0.5, hi=1.5)
    b = rand(seed + 1, (p, f))

    def body(x, y):
        xt, yt = load(x, p0, f0), load(y, p0)
        c = sb((128, 2 * f))[p0 : p0 + p]
        nisa.tensor_scalar_cumulative(
            dst=c[:, :f],
            src=xt,
            op0=nl.multiply,
            op1=getattr(nl, op1),
            imm0=1.0,
            reduce_cmd=nisa.reduce_cmd.reset_reduce,
        )
        nisa.tensor_scalar_cumulative(
            dst=c[:, f:],
            src=xt,
            op0=nl.multiply,
            op1=getattr(nl, op1),
            imm0=1.0,
            reduce_cmd=nisa.reduce_cmd.reduce,
        )
        s = sb((128, f))[p0 : p0 + p]
        nisa.tensor_tensor_scan(dst=s, data0=xt, data1=yt, initial=0.0, op0=nl.multiply, op1=nl.add)
        return store(c), store(s)

    c, s = run(body, a, b)
    acc = {"add": np.cumsum, "maximum": np.maximum.accumulate, "multiply": np.cumprod}[op1]
    twice = np.concatenate([a, a], axis=1).astype(np.float64)
    np.testing.assert_allclose(c, acc(twice, axis=1), rtol=1e-5)
    want = np.zeros((p, f))
    prev = np.zeros(p)
    for j in range(f):
        prev = a[:, j] * prev + b[:, j]
        want[:, j] = prev
    np.testing.assert_allclose(s, want, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(
    cores=st.integers(1, 8), cols=st.integers(1, 4), nepi=st.sampled_from([1, 2, 4]), seed=st.integers(0, 99)
)
def test_local_gather(cores, cols, nepi, seed) -> None:
    p = 16 * cores
    groups = 8
    g = np.random.default_rng(seed)
    src = g.standard_normal((p, groups * nepi)).astype(np.float32)
    index = g.integers(0, groups, size=(p, cols)).astype(np.uint16)
    nvalid = int(g.integers(1, 16 * cols + 1))

    def body(s, i):
        d = sb((p, nvalid * nepi))
        nisa.local_gather(
            dst=d, src_buffer=load(s), index=load(i), num_elem_per_idx=nepi, num_valid_indices=nvalid
        )
        return store(d)

    got = run(body, src, (index * nepi).astype(np.uint16))
    for c in range(cores):
        rows = slice(16 * c, 16 * c + 16)
        idx = index[rows].flatten(order="F")[:nvalid]
        want = np.take(src[rows].reshape(16, groups, nepi), idx, axis=1).reshape(16, -1)
        np.testing.assert_array_equal(got[rows], want)


def test_misc_gpsimd_and_vector_ops() -> None:
    g = np.random.default_rng(5)
    a = g.standard_normal((8, 6)).astype(np.float32)
    idx = g.integers(0, 6, size=(8, 3)).astype(np.uint32)
    seg = np.array([[0, 1, 1, 2, 2, 2, 0, 3, 3]], np.float32)
    pred = g.integers(0, 2, size=(8, 6)).astype(np.uint8)

    def body(x, ix, sg, pr):
        xt = load(x)
        gat = sb((8, 3))
        nisa.nc_n_gather(dst=gat, data=xt, indices=load(ix))
        pr_red = sb((1, 6))
        nisa.tensor_partition_reduce(dst=pr_red, op=nl.add, data=xt)
        bounds = sb((1, 2, 9), "int32")
        nisa.sequence_bounds(dst=bounds, segment_ids=load(sg))
        rec = sb((8, 6))
        nisa.reciprocal(dst=rec, data=xt)
        cp = sb((8, 6))
        nisa.memset(dst=cp, value=0.0)
        nisa.tensor_copy_predicated(dst=cp, src=xt, predicate=load(pr))
        stt = sb((8, 6))
        nisa.scalar_tensor_tensor(dst=stt, data=xt, op0=nl.multiply, operand0=2.0, op1=nl.add, operand1=xt)
        tsr, red = sb((8, 6)), sb((8, 1))
        nisa.tensor_scalar_reduce(
            dst=tsr, data=xt, op0=nl.add, operand0=1.0, reduce_op=nl.max, reduce_res=red
        )
        return [store(t) for t in (gat, pr_red, bounds, rec, cp, stt, tsr, red)]

    gat, pr_red, bounds, rec, cp, stt, tsr, red = run(body, a, idx, seg, pred)
    np.testing.assert_array_equal(gat, np.take_along_axis(a, idx.astype(np.int64), axis=1))
    np.testing.assert_allclose(pr_red[0], a.sum(0), rtol=1e-6, atol=1e-6)
    assert bounds.reshape(-1).tolist() == [9, 1, 1, 3, 3, 3, 9, 7, 7, -1, 3, 3, 6, 6, 6, -1, 9, 9]
    np.testing.assert_array_equal(rec, np.float32(1) / a)
    np.testing.assert_array_equal(cp, np.where(pred != 0, a, 0))
    np.testing.assert_array_equal(stt, a * np.float32(2) + a)
    np.testing.assert_array_equal(tsr, a + np.float32(1))
    np.testing.assert_array_equal(red[:, 0], (a + np.float32(1)).max(1))


def test_exponential_trn3_and_dropout_determinism() -> None:
    a = np.random.default_rng(1).standard_normal((4, 10)).astype(np.float32)

    def body(x):
        xt = load(x)
        mx = sb((4, 1))
        nisa.tensor_reduce(dst=mx, op=nl.maximum, data=xt, axis=1)
        e, s = sb((4, 10)), sb((4, 1))
        nisa.exponential(dst=e, src=xt, max_value=mx, reduce_res=s, reduce_cmd=nisa.reduce_cmd.reset_reduce)
        dr = sb((4, 10))
        nisa.dropout(dst=dr, data=xt, prob=0.5)
        return store(e), store(s), store(dr)

    e, s, dr = run(body, a, target="trn3")
    want = np.exp(a.astype(np.float64) - a.max(1, keepdims=True))
    np.testing.assert_allclose(e, want, rtol=1e-6)
    np.testing.assert_allclose(s[:, 0], want.sum(1), rtol=1e-5)
    assert set(np.flatnonzero(dr == 0)) <= set(range(a.size)) and np.all((dr == 0) | (dr == a))
    _, _, dr2 = run(body, a, target="trn3")
    np.testing.assert_array_equal(dr, dr2)  # seeded per program: reproducible


def test_rng_state_round_trip() -> None:
    def body():
        state = sb((4, 24), "uint32")
        nisa.rand_get_state(dst=state)
        r1, r2 = sb((4, 5), "uint32"), sb((4, 5), "uint32")
        nisa.rng(dst=r1)
        nisa.rand_set_state(src_seeds=state)
        nisa.rng(dst=r2)
        return store(r1), store(r2)

    r1, r2 = run(body)
    np.testing.assert_array_equal(r1, r2)


def test_uninitialised_taint_flows_through_compute() -> None:
    def body():
        a = sb((4, 8))
        nisa.memset(dst=a[:, :4], value=1.0)  # columns 4..7 stay uninitialised
        d = sb((4, 8))
        nisa.tensor_scalar(dst=d, data=a, op0=nl.add, operand0=1.0)
        return store(d)

    with pytest.raises(sim.NkiUninitializedError):
        run(body)


def test_fp32_storage_mode() -> None:
    a = (np.arange(8, dtype=np.float32) + np.float32(2.0**-10)).reshape(1, 8)

    def body(x):
        d = sb((1, 8), "bfloat16")
        nisa.tensor_copy(dst=d, src=load(x))
        d2 = sb((1, 8))
        nisa.tensor_copy(dst=d2, src=d)
        return store(d2)

    np.testing.assert_array_equal(run(body, a, precise=False), a)  # no bf16 rounding in fp32 mode
    np.testing.assert_array_equal(run(body, a, precise=True), a.astype(BF16).astype(np.float32))


# ---- negative tests: one per constraint class -------------------------------------------------------------


def _t(shape=(4, 8), dtype="float32", buffer=None):
    return sb(shape, dtype, buffer)


def neg_partition_mismatch():
    nisa.tensor_tensor(dst=_t(), data1=_t(), data2=_t((8, 8)), op=nl.add)


def neg_elements_mismatch():
    nisa.tensor_copy(dst=_t((4, 7)), src=_t())


def neg_two_psum_inputs():
    nisa.tensor_tensor(dst=_t(), data1=_t(buffer=nl.psum), data2=_t(buffer=nl.psum), op=nl.add)


def neg_gpsimd_psum():
    nisa.iota(dst=_t(dtype="int32", buffer=nl.psum), pattern=[[1, 8]])


def neg_bitvec_float():
    nisa.tensor_tensor(dst=_t(), data1=_t(), data2=_t(), op=nl.bitwise_and)


def neg_op_class_mismatch():
    nisa.tensor_scalar(
        dst=_t(dtype="int32"), data=_t(dtype="int32"), op0=nl.add, operand0=1, op1=nl.bitwise_or, operand1=1
    )


def neg_not_an_alu_op():
    nisa.tensor_scalar(dst=_t(), data=_t(), op0=nl.exp, operand0=0.0)


def neg_not_an_activation():
    nisa.activation(dst=_t(), op=nl.add, data=_t())


def neg_reduce_axis0():
    nisa.tensor_reduce(dst=_t((1, 8)), op=nl.add, data=_t(), axis=0)


def neg_reduce_not_trailing():
    nisa.tensor_reduce(dst=_t((4, 3)), op=nl.add, data=_t((4, 2, 3)), axis=1)


def neg_reduce_op():
    nisa.tensor_reduce(dst=_t((4, 1)), op=nl.divide, data=_t(), axis=1)


def neg_bn_stats_fmax():
    nisa.bn_stats(dst=_t((4, 6)), data=_t((4, 513)))


def neg_bn_aggr_multiple():
    nisa.bn_aggr(dst=_t((4, 2)), data=_t((4, 7)))


def neg_max8_elements():
    nisa.max8(dst=_t((4, 8)), src=_t((4, 7)))


def neg_find_index8_dtype():
    nisa.nc_find_index8(dst=_t((4, 8)), data=_t((4, 16)), vals=_t((4, 8)))


def neg_range_select_false_value():
    nisa.range_select(
        dst=_t(),
        on_true_tile=_t(),
        comp_op0=nl.less,
        comp_op1=nl.less,
        bound0=_t((4, 1)),
        bound1=_t((4, 1)),
        on_false_value=-1.0,
    )


def neg_memset_kind():
    nisa.memset(dst=_t(dtype="int32"), value=2.5)  # 2.0 runs (with a warning); 2.5 is no int


def neg_local_gather_partitions():
    nisa.local_gather(dst=_t((8, 8)), src_buffer=_t((8, 8)), index=_t((8, 1), "uint16"))


def neg_local_gather_index_dtype():
    nisa.local_gather(dst=_t((16, 16)), src_buffer=_t((16, 8)), index=_t((16, 1), "int32"))


def neg_local_gather_elem():
    nisa.local_gather(
        dst=_t((16, 48)), src_buffer=_t((16, 8)), index=_t((16, 1), "uint16"), num_elem_per_idx=3
    )


def neg_exponential_trn2():
    nisa.exponential(dst=_t(), src=_t())


def neg_range_select_trn1():
    nisa.range_select(
        dst=_t(), on_true_tile=_t(), comp_op0=nl.less, comp_op1=nl.less, bound0=_t((4, 1)), bound1=_t((4, 1))
    )


def neg_copy_scalar_trn1():
    nisa.tensor_copy(dst=_t(), src=_t(), engine=nisa.engine.scalar)


def neg_engine():
    nisa.tensor_tensor(dst=_t(), data1=_t(), data2=_t(), op=nl.add, engine=nisa.engine.scalar)


def neg_shuffle_mask():
    nisa.nc_stream_shuffle(dst=_t((32, 8)), src=_t((32, 8)), shuffle_mask=[40] * 32)


def neg_shuffle_start():
    big = _t((128, 8))
    nisa.nc_stream_shuffle(dst=_t((64, 8)), src=big[32:33], shuffle_mask=[0] * 32)


def neg_cumulative_int32():
    nisa.tensor_scalar_cumulative(
        dst=_t(dtype="int32"), src=_t(dtype="int32"), op0=nl.add, op1=nl.add, imm0=1.0
    )


def neg_activation_scale_dtype():
    nisa.activation(dst=_t(), op=nl.exp, data=_t(), scale=_t((4, 1), "bfloat16"))


def neg_select_pred_dtype():
    nisa.select_reduce(dst=_t(), predicate=_t(), on_true=_t(), on_false=0.0)


def neg_raw_int_reduce_cmd():
    # a raw int that is a member's value runs (nki-library passes them); one that is no member is an error
    nisa.activation(dst=_t(), op=nl.exp, data=_t(), reduce_cmd=9)


def neg_partition_reduce_dst():
    nisa.tensor_partition_reduce(dst=_t((2, 8)), op=nl.add, data=_t())


def neg_iota_pattern():
    nisa.iota(dst=_t(dtype="int32"), pattern=[[1, 7]])


def neg_partition_limit():
    big = nl.ndarray((128, 8), dtype="float32", buffer=nl.sbuf)
    nisa.tensor_copy(dst=big[0:64], src=big[32:96])


def neg_predicate_dtype():
    nisa.tensor_copy_predicated(dst=_t(), src=_t(), predicate=_t())


NEGATIVE = [
    (neg_partition_mismatch, "trn2", "tensor_tensor", "data2"),
    (neg_elements_mismatch, "trn2", "tensor_copy", "dst"),
    (neg_two_psum_inputs, "trn2", "tensor_tensor", "data2"),
    (neg_gpsimd_psum, "trn2", "iota", "dst"),
    (neg_bitvec_float, "trn2", "tensor_tensor", "dst"),
    (neg_op_class_mismatch, "trn2", "tensor_scalar", "op1"),
    (neg_not_an_alu_op, "trn2", "tensor_scalar", "op0"),
    (neg_not_an_activation, "trn2", "activation", "op"),
    (neg_reduce_axis0, "trn2", "tensor_reduce", "axis"),
    (neg_reduce_not_trailing, "trn2", "tensor_reduce", "axis"),
    (neg_reduce_op, "trn2", "tensor_reduce", "op"),
    (neg_bn_stats_fmax, "trn2", "bn_stats", "data"),
    (neg_bn_aggr_multiple, "trn2", "bn_aggr", "data"),
    (neg_max8_elements, "trn2", "max8", "src"),
    (neg_find_index8_dtype, "trn2", "nc_find_index8", "dst"),
    (neg_range_select_false_value, "trn2", "range_select", "on_false_value"),
    (neg_memset_kind, "trn2", "memset", "value"),
    (neg_local_gather_partitions, "trn2", "local_gather", "src_buffer"),
    (neg_local_gather_index_dtype, "trn2", "local_gather", "index"),
    (neg_local_gather_elem, "trn2", "local_gather", "num_elem_per_idx"),
    (neg_exponential_trn2, "trn2", "exponential", None),
    (neg_range_select_trn1, "trn1", "range_select", None),
    (neg_copy_scalar_trn1, "trn1", "tensor_copy", "engine"),
    (neg_engine, "trn2", "tensor_tensor", "engine"),
    (neg_shuffle_mask, "trn2", "nc_stream_shuffle", "shuffle_mask"),
    (neg_shuffle_start, "trn2", "nc_stream_shuffle", "src"),
    (neg_cumulative_int32, "trn2", "tensor_scalar_cumulative", "src"),
    (neg_activation_scale_dtype, "trn2", "activation", "scale"),
    (neg_select_pred_dtype, "trn2", "select_reduce", "predicate"),
    (neg_raw_int_reduce_cmd, "trn2", "activation", "reduce_cmd"),
    (neg_partition_reduce_dst, "trn2", "tensor_partition_reduce", "dst"),
    (neg_iota_pattern, "trn2", "iota", "pattern"),
    (neg_partition_limit, "trn2", "tensor_copy", "src"),
    (neg_predicate_dtype, "trn2", "tensor_copy_predicated", "predicate"),
]


def _assert_names_kernel_line(err: NkiValidationError, instruction: str, operand: str | None) -> None:
    assert err.instruction == instruction
    assert instruction in str(err)
    if operand is not None:
        assert err.operand == operand, str(err)
        assert f"'{operand}'" in str(err)
    file, line = err.location.rsplit(":", 1)
    assert os.path.samefile(file, __file__), err.location
    assert f"nisa.{instruction}(" in linecache.getline(file, int(line)), err.location
    assert err.location in str(err)


@pytest.mark.parametrize(
    "body, target, instruction, operand", NEGATIVE, ids=[n[0].__name__ for n in NEGATIVE]
)
def test_constraint_errors(body, target, instruction, operand) -> None:
    with pytest.raises(NkiValidationError) as info:
        run(body, target=target)
    _assert_names_kernel_line(info.value, instruction, operand)
    if operand is None:
        assert target in str(info.value)  # target-gated instructions name the target


def test_unknown_kwarg_is_a_type_error_naming_it() -> None:
    def body():
        nisa.tensor_copy(dst=_t(), src=_t(), out_dtype="float32")

    with pytest.raises(TypeError, match="unexpected keyword argument 'out_dtype'") as info:
        run(body)
    _assert_names_kernel_line(info.value, "tensor_copy", "out_dtype")


def test_local_gather_out_of_bounds() -> None:
    idx = np.full((16, 1), 60, np.uint16)

    def body(i):
        s = _t((16, 8))
        nisa.memset(dst=s, value=0.0)
        nisa.local_gather(dst=_t((16, 16)), src_buffer=s, index=load(i))

    with pytest.raises(NkiValidationError, match="out-of-bounds") as info:
        run(body, idx)
    _assert_names_kernel_line(info.value, "local_gather", "index")
