"""Projection matmul kernels (nki_moe.kernels.matmul) against nki_moe.reference.linear, trn2 and trn3, strict.

The LM head (N = 151936, 0.62 GB of bf16) runs the same code path as any N that is a multiple of 128;
tests use a 4096-column slice plus a ragged 2176-column width (a partial last block). The final version
(v6) takes the pre-tiled weight of ``nki_moe.bench.tile_weight``.
"""

from __future__ import annotations

import numpy as np
import pytest

from nki_moe.bench import bf16, run_kernel, tile_weight
from nki_moe.check import error_ratio
from nki_moe.kernels import matmul as K
from nki_moe.reference import linear, linear_cost

HIDDEN = 2048
WIDTHS = {"q": 4096, "kv": 512, "o": 2048, "lm_head_slice": 4096, "ragged": 2176}
TOKENS = (1, 18, 128, 402, 640)


def _inputs(T: int, N: int, K_: int = HIDDEN, seed: int = 0):
    rng = np.random.default_rng(seed + T + N)
    return bf16(rng.standard_normal((T, K_))), bf16(rng.standard_normal((K_, N)) / np.sqrt(K_))


def _check(y, x, w):
    wt = w.astype(np.float32).T  # reference takes the HF [N, K] layout
    ratio = error_ratio(
        y.astype(np.float32), linear(x.astype(np.float32), wt, "bf16"), linear(x.astype(np.float32), wt)
    )
    assert ratio, ratio.message


def _cases():
    for T in TOKENS:
        names = WIDTHS if T in (1, 640) else ("kv", "ragged")
        for name in names:
            yield T, name


@pytest.mark.parametrize("target", ["trn2", "trn3"])
@pytest.mark.parametrize(("T", "width"), list(_cases()))
def test_final_matmul_every_shape(T, width, target):
    x, w = _inputs(T, WIDTHS[width])
    res = run_kernel(K.matmul_v6, x, tile_weight(w), w.shape[1], target=target, lnc=2)
    _check(res.outputs, x, w)
    assert res.mac_count() == linear_cost(T, HIDDEN, WIDTHS[width]).macs


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize(("T", "N"), [(1, 1024), (130, 640)])
def test_every_version(version, T, N):
    x, w = _inputs(T, N, seed=1)
    args = (x, tile_weight(w), N) if version >= 5 else (x, w)
    res = run_kernel(getattr(K, f"matmul_v{version}"), *args, lnc=2)
    _check(res.outputs, x, w)
    assert res.mac_count() == linear_cost(T, HIDDEN, N).macs


def test_lnc1_launch_and_small_k():
    x, w = _inputs(5, 384, K_=256, seed=2)
    _check(run_kernel(K.matmul_v4, x, w, lnc=1).outputs, x, w)
    for T in (1, 5):
        _check(run_kernel(K.matmul_v6, x[:T], tile_weight(w, n_prog=1), 384, lnc=1).outputs, x[:T], w)


def test_v6_rejects_wrong_column_count():
    x, w = _inputs(1, 512)
    with pytest.raises(AssertionError, match="n_cols"):
        run_kernel(K.matmul_v6, x, tile_weight(w), 1024, lnc=2)


def test_rejects_k_not_multiple_of_128():
    x, w = _inputs(2, 128, K_=200)
    with pytest.raises(AssertionError, match="multiple of 128"):
        run_kernel(K.matmul_v4, x, w)
