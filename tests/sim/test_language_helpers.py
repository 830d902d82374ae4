"""nl.softmax / rms_norm / where / broadcast_to / expand_dims (0.3 experimental wrappers) and the unified
unknown-keyword error of ISA instructions."""

from __future__ import annotations

import nki
import nki.isa as nisa
import nki.language as nl
import numpy as np
import pytest

from nki_moe.sim import NkiKwargError, NkiValidationError, run


def _out(shape, dtype=nl.float32):
    return nl.ndarray(shape, dtype=dtype, buffer=nl.shared_hbm)


@nki.jit
def _helpers(x, cond, w):
    t = nl.load(x)
    outs = [nl.softmax(t), nl.rms_norm(t, nl.load(w), axis=1, n=x.shape[1], epsilon=1e-5)]
    outs.append(nl.where(nl.load(cond), t, -2.5))
    outs.append(nl.broadcast_to(nl.expand_dims(nl.load(x[:, 0:1]), 2), (x.shape[0], 1, 7)))
    res = []
    for o in outs:
        r = _out(o.shape)
        nl.store(r, o)
        res.append(r)
    return tuple(res)


@pytest.mark.parametrize("rows", [128, 45])
def test_helpers_match_numpy_and_run_as_instructions(rows):
    rng = np.random.default_rng(rows)
    x = (3 * rng.standard_normal((rows, 80))).astype(np.float32)
    cond = (rng.random((rows, 80)) > 0.5).astype(np.float32)
    w = rng.standard_normal((rows, 80)).astype(np.float32)
    res = run(_helpers, x, cond, w)
    soft, norm, sel, bcast = res.outputs
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(soft, e / e.sum(axis=1, keepdims=True), rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(norm, x / np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-5) * w, rtol=1e-5)
    np.testing.assert_array_equal(sel, np.where(cond != 0, x, np.float32(-2.5)))
    np.testing.assert_array_equal(bcast, np.broadcast_to(x[:, :1, None], (rows, 1, 7)))
    ops = {r.opcode for r in res.trace}
    assert {"tensor_reduce", "activation", "reciprocal", "tensor_copy_predicated", "tensor_copy"} <= ops


def test_where_with_tile_operands_and_integer_result():
    @nki.jit
    def k(c, a, b):
        o = nl.where(nl.load(c), nl.load(a), nl.load(b))
        r = _out(o.shape, o.dtype)
        nl.store(r, o)
        return r

    c = np.array([[1, 0, 2, 0]] * 4, np.uint8)
    a = np.arange(16, dtype=np.int32).reshape(4, 4)
    b = -a
    out = k(c, a, b)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, np.where(c != 0, a, b))


def test_rms_norm_without_weight_and_softmax_on_3d_tiles():
    @nki.jit
    def k(x):
        t = nl.load(x)
        s, n = nl.softmax(t, axis=(1, 2)), nl.rms_norm(t, axis=(1, 2))
        r1, r2 = _out(s.shape), _out(n.shape)
        nl.store(r1, s)
        nl.store(r2, n)
        return r1, r2

    x = np.random.default_rng(0).standard_normal((16, 4, 8)).astype(np.float32)
    soft, norm = k(x)
    flat = x.reshape(16, 32)
    e = np.exp(flat - flat.max(axis=1, keepdims=True))
    np.testing.assert_allclose(soft.reshape(16, 32), e / e.sum(axis=1, keepdims=True), rtol=2e-5, atol=1e-7)
    rms = np.sqrt((flat**2).mean(axis=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(norm.reshape(16, 32), flat / rms, rtol=1e-5)


@pytest.mark.parametrize(
    "body, match",
    [
        (lambda t: nl.softmax(t, axis=0), "free axes"),
        (lambda t: nl.rms_norm(t, nl.load_transpose2d(t)), "x's shape"),
        (lambda t: nl.broadcast_to(t, (64, 8)), "partition count"),
        (lambda t: nl.broadcast_to(t, (32, 9)), "size-1"),
        (lambda t: nl.expand_dims(t, 0), "axis"),
        (lambda t: nl.where(t, t, "no"), "tiles or scalars"),
    ],
)
def test_helper_misuse_is_a_validation_error(body, match):
    @nki.jit
    def k(x):
        body(nl.load(x))
        return x

    with pytest.raises(NkiValidationError, match=match):
        k(np.zeros((32, 8), np.float32))


def test_softmax_of_hbm_tensor_is_rejected():
    @nki.jit
    def k(x):
        nl.softmax(x)
        return x

    with pytest.raises(NkiValidationError, match="SBUF/PSUM tile"):
        k(np.zeros((4, 4), np.float32))


# ---- unknown keyword arguments: one error type for every instruction ------------------------------------


def _call(which):
    def body(x):
        t = nl.ndarray((128, 64), dtype=nl.float32, buffer=nl.sbuf)
        if which == "dma_copy":
            nisa.dma_copy(dst=t, src=x, bogus=1)
        elif which == "nc_matmul":
            p = nl.ndarray((64, 64), dtype=nl.float32, buffer=nl.psum)
            nisa.nc_matmul(dst=p, stationary=t, moving=t, bogus=1)
        elif which == "tensor_tensor":
            nisa.tensor_tensor(dst=t, data1=t, data2=t, op=nl.add, bogus=1)
        elif which == "activation":
            nisa.activation(dst=t, op=nl.exp, data=t, bogus=1)
        return x

    return nki.jit(body)


@pytest.mark.parametrize("which", ["dma_copy", "nc_matmul", "tensor_tensor", "activation"])
def test_unknown_kwarg_is_both_validation_and_type_error(which):
    x = np.zeros((128, 64), np.float32)
    with pytest.raises(NkiKwargError) as info:
        _call(which)(x)
    err = info.value
    assert isinstance(err, TypeError) and isinstance(err, NkiValidationError)
    assert err.instruction == which and err.operand == "bogus"
    assert f"{which}() got an unexpected keyword argument 'bogus'" in str(err)
    assert "test_language_helpers.py" in err.location


def test_02_kwargs_are_accepted_only_in_compat_mode():
    @nki.jit
    def k(x):
        t = nl.ndarray((128, 64), dtype=nl.float32, buffer=nl.sbuf)
        nisa.dma_copy(dst=t, src=x, unique_indices=True)
        return x

    x = np.zeros((128, 64), np.float32)
    with pytest.raises(NkiKwargError):
        k(x)
    run(k, x, compat="0.2")
