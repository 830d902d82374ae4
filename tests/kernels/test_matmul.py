"""Projection matmul kernels (nki_moe.kernels.matmul) through the ladder harness, trn2 and trn3, strict.

The LM head (N = 151936, 0.62 GB of bf16) runs the same code path as any N that is a multiple of 128;
tests use a 4096-column slice plus a ragged 2176-column width (a partial last block). v5/v6 take the
pre-tiled weight of ``nki_moe.kernels.layouts.tile_weight`` (the harness applies it).
"""

from __future__ import annotations

import pytest

import nki_moe.sim as sim
from nki_moe import ops
from nki_moe.kernels.layouts import tile_weight

op = ops.get("matmul")
WIDTHS = {"q": 4096, "kv": 512, "o": 2048, "lm_head_slice": 4096, "ragged": 2176}
TOKENS = (1, 18, 128, 402, 640)


def _cases():
    for T in TOKENS:
        for name in WIDTHS if T in (1, 640) else ("kv", "ragged"):
            yield T, name


@pytest.mark.parametrize("target", ["trn2", "trn3"])
@pytest.mark.parametrize(("T", "width"), list(_cases()))
def test_final_matmul_every_shape(T, width, target):
    op.check(op.final, target=target, T=T, N=WIDTHS[width])  # error ratio and MACs = T·K·N


@pytest.mark.parametrize("version", [v.name for v in op.versions[:-1]])
@pytest.mark.parametrize(("T", "N"), [(1, 1024), (130, 640)])
def test_every_version(version, T, N):
    op.check(version, seed=1, T=T, N=N)


def test_lnc1_launch_and_small_k():
    op.check("v4", lnc=1, seed=2, T=5, N=384, K=256)
    for T in (1, 5):  # the layout tiles the weight for one core when launched on one
        op.check("v6", lnc=1, seed=2, T=T, N=384, K=256)


def test_v6_rejects_wrong_column_count():
    x, w = op.args(T=1, N=512)
    with pytest.raises(AssertionError, match="n_cols"):
        sim.run(op.kernel("v6"), x, tile_weight(w), 1024, lnc=2)


def test_rejects_k_not_multiple_of_128():
    with pytest.raises(AssertionError, match="multiple of 128"):
        op.run("v4", T=2, N=128, K=200)
