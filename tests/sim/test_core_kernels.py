"""End-to-end: the test kernels in tests/sim/kernels/ match NumPy references."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import nki_moe.sim as sim
from tests.sim.kernels import matmul as mm_k
from tests.sim.kernels import rmsnorm as rms_k
from tests.sim.kernels import tensor_add as add_k
from tests.sim.kernels import topk as top_k

BF16 = ml_dtypes.bfloat16


@pytest.mark.parametrize("rows", [128, 300, 37])
def test_tensor_add_ragged_rows(rows):
    rng = np.random.default_rng(rows)
    a = rng.standard_normal((rows, 96)).astype(np.float32)
    b = rng.standard_normal((rows, 96)).astype(np.float32)
    np.testing.assert_array_equal(add_k.tensor_add(a, b), a + b)


def test_tensor_add_bf16_rounds_like_numpy():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((128, 64)).astype(BF16)
    b = rng.standard_normal((128, 64)).astype(BF16)
    out = add_k.tensor_add(a, b)
    assert out.dtype == BF16
    np.testing.assert_array_equal(out, (a.astype(np.float32) + b.astype(np.float32)).astype(BF16))


@pytest.mark.parametrize("kernel", ["matmul_tiled", "matmul_tiled_explicit"])
def test_tiled_matmul_bf16_inputs_fp32_accumulation(kernel):
    rng = np.random.default_rng(2)
    lhsT = rng.standard_normal((384, 256)).astype(BF16)
    rhs = rng.standard_normal((384, 1024)).astype(BF16)
    res = sim.run(getattr(mm_k, kernel), lhsT, rhs)
    ref = (lhsT.astype(np.float32).T @ rhs.astype(np.float32)).astype(BF16)
    # fp32 accumulation then one bf16 rounding: at most one bf16 ulp from the reference.
    np.testing.assert_allclose(res.outputs.astype(np.float32), ref.astype(np.float32), rtol=2**-7, atol=1e-2)
    assert res.mac_count() == 384 * 256 * 1024
    assert res.peak_psum_banks >= 1


def test_rmsnorm_matches_reference_with_ragged_rows():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 512)).astype(np.float32)
    w = rng.standard_normal(512).astype(np.float32)
    out = rms_k.rmsnorm(x, w, 1e-6)
    ref = x / np.sqrt((x**2).mean(axis=-1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert sim.last_trace().mac_count() == 0


def test_top8_values_and_indices():
    rng = np.random.default_rng(4)
    x = rng.permuted(np.tile(np.arange(128, dtype=np.float32), (256, 1)), axis=1)
    vals, idx = top_k.top8(x)
    order = np.argsort(-x, axis=1)[:, :8]
    np.testing.assert_array_equal(idx, order)
    np.testing.assert_array_equal(vals, np.take_along_axis(x, order, axis=1))
