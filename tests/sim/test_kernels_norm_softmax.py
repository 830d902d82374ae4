"""End-to-end: RMSNorm with an nc_stream_shuffle weight broadcast, and a free-dim softmax, against NumPy.

fp32 runs are checked at fp32 tolerance (the kernels sum sequentially in fp32, NumPy pairwise). bf16 runs
use both a tolerance of one bf16 epsilon (2^-7) relative to the fp32 reference, and the 3-way error
ratio: the kernel's error against the fp32 reference divided by that of a naive bf16 reference (rounding
to bf16 after every step), which must stay <= 2.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import nki_moe.sim as sim
from tests.sim.kernels import rmsnorm as norm_k
from tests.sim.kernels import softmax as soft_k

BF16 = ml_dtypes.bfloat16
BF16_EPS = 2.0**-7
SHAPES = [(128, 256), (200, 512), (37, 1000), (384, 64)]


def _bf(a: np.ndarray) -> np.ndarray:
    """Round to bf16 and back to fp32 (one bf16 step of the naive reference)."""
    return a.astype(BF16).astype(np.float32)


def _error_ratio(kernel: np.ndarray, naive_bf16: np.ndarray, fp32: np.ndarray) -> float:
    k = np.abs(kernel.astype(np.float32) - fp32).max()
    b = np.abs(naive_bf16.astype(np.float32) - fp32).max()
    return float(k / max(b, np.finfo(np.float32).tiny))


def _rmsnorm_ref(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x, w = x.astype(np.float32), w.astype(np.float32)
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w


def _rmsnorm_naive_bf16(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x, w = x.astype(np.float32), w.astype(np.float32)
    ms = _bf(_bf(x * x).mean(axis=-1, keepdims=True))
    return _bf(_bf(x * _bf(1.0 / np.sqrt(ms + eps))) * w)


def _softmax_ref(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_naive_bf16(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    e = _bf(np.exp(_bf(x - x.max(axis=-1, keepdims=True))))
    return _bf(e / _bf(e.sum(axis=-1, keepdims=True)))


@pytest.mark.parametrize("rows,hidden", SHAPES)
def test_rmsnorm_shuffle_fp32(rows, hidden):
    rng = np.random.default_rng(rows * 7 + hidden)
    x = rng.standard_normal((rows, hidden)).astype(np.float32)
    w = rng.standard_normal(hidden).astype(np.float32)
    res = sim.run(norm_k.rmsnorm_shuffle, x, w, 1e-6)
    np.testing.assert_allclose(res.outputs, _rmsnorm_ref(x, w, 1e-6), rtol=1e-5, atol=1e-5)
    counts = res.trace.counts()
    # The weight reaches the partitions through one shuffle plus two quadrant-doubling DMAs.
    assert counts[("dve", "nc_stream_shuffle")] == 1
    assert res.mac_count() == 0


@pytest.mark.parametrize("rows,hidden", SHAPES[:3])
def test_rmsnorm_shuffle_bf16(rows, hidden):
    rng = np.random.default_rng(rows + hidden)
    x = rng.standard_normal((rows, hidden)).astype(BF16)
    w = (1.0 + 0.1 * rng.standard_normal(hidden)).astype(BF16)
    out = norm_k.rmsnorm_shuffle(x, w, 1e-6)
    assert out.dtype == BF16
    ref = _rmsnorm_ref(x, w, 1e-6)
    np.testing.assert_allclose(out.astype(np.float32), ref, rtol=BF16_EPS, atol=BF16_EPS * 1e-3)
    assert _error_ratio(out, _rmsnorm_naive_bf16(x, w, 1e-6), ref) <= 2.0


def test_rmsnorm_shuffle_broadcasts_the_weight_to_every_partition():
    # A constant input row makes every output row equal to w / sqrt(1 + eps): any partition the
    # shuffle or the quadrant DMAs missed would show NaN poison or a wrong row.
    x = np.ones((128, 96), np.float32)
    w = np.arange(96, dtype=np.float32)
    out = norm_k.rmsnorm_shuffle(x, w, 0.0)
    np.testing.assert_array_equal(out, np.broadcast_to(w, (128, 96)))


@pytest.mark.parametrize("rows,cols", SHAPES)
def test_softmax_fp32(rows, cols):
    rng = np.random.default_rng(rows * 3 + cols)
    x = (4.0 * rng.standard_normal((rows, cols))).astype(np.float32)
    res = sim.run(soft_k.softmax, x)
    np.testing.assert_allclose(res.outputs, _softmax_ref(x), rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(res.outputs.sum(axis=1), 1.0, rtol=1e-4)
    acts = [r for r in res.trace if r.opcode == "activation"]
    assert acts and all(r.info["op"] == "exp" for r in acts)


@pytest.mark.parametrize("rows,cols", SHAPES[:3])
def test_softmax_bf16(rows, cols):
    rng = np.random.default_rng(rows + 5 * cols)
    x = (3.0 * rng.standard_normal((rows, cols))).astype(BF16)
    out = soft_k.softmax(x)
    assert out.dtype == BF16
    ref = _softmax_ref(x)
    np.testing.assert_allclose(out.astype(np.float32), ref, rtol=BF16_EPS, atol=1e-30)
    assert _error_ratio(out, _softmax_naive_bf16(x), ref) <= 2.0


def test_softmax_is_shift_invariant_and_handles_large_logits():
    # exp(x - max) keeps 1e4-sized logits finite; a row of equal values is uniform.
    x = np.full((200, 32), 1e4, np.float32)
    x[:, 0] += 1.0
    out = soft_k.softmax(x)
    np.testing.assert_allclose(out, _softmax_ref(x), rtol=1e-5)
    assert np.isfinite(out).all()
