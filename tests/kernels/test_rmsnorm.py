"""RMSNorm kernels (nki_moe.kernels.rmsnorm) through the ladder harness; trn2 and trn3, strict mode.

Every check asserts the 3-way error ratio of y against the bf16 and fp32 references, MACs = 0, and for the
fused variant h = x + residual bit-exact (one bf16 add, rounded as HF's).
"""

from __future__ import annotations

import pytest

from nki_moe import ops

op, fused = ops.get("rmsnorm"), ops.get("add_rmsnorm")
TOKENS = (1, 18, 128, 402, 640)


@pytest.mark.parametrize("target", ["trn2", "trn3"])
@pytest.mark.parametrize("T", TOKENS)
def test_final_rmsnorm_every_shape(T, target):
    op.check(op.final, target=target, T=T)


@pytest.mark.parametrize("target", ["trn2", "trn3"])
@pytest.mark.parametrize("T", TOKENS)
def test_final_add_rmsnorm_every_shape(T, target):
    fused.check(fused.final, target=target, seed=1, T=T)


@pytest.mark.parametrize("version", [v.name for v in op.versions])
@pytest.mark.parametrize("T", (18, 402))
def test_every_version(version, T):
    op.check(version, seed=2, T=T)
    fused.check(version, seed=2, T=T)


def test_odd_width_and_lnc1_launch_of_final():
    """H not a multiple of 128 and the LNC=2 kernel launched on one core."""
    op.check(op.final, lnc=1, seed=3, T=130, H=200)


def test_rejects_bad_weight_shape():
    x, w, eps = op.args(T=4)
    with pytest.raises(AssertionError, match="weight shape"):
        op.run(op.final, args=(x, w[:100], eps))
