"""Router top-8 kernels (nki_moe.kernels.router) through the ladder harness, trn2 and trn3, strict.

Indices must equal the reference exactly, including ties (equal probabilities: lower expert index first);
router_v2's counts, positions and grouped order must equal ``nki_moe.reference.grouped_order`` exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from nki_moe import ops
from nki_moe.ops import bf16
from nki_moe.reference import linear, topk_margin

op = ops.get("router")
H, E, TOPK = 2048, 128, 8
TOKENS = (1, 18, 128, 402, 640)


@pytest.mark.parametrize("target", ["trn2", "trn3"])
@pytest.mark.parametrize("T", TOKENS)
def test_final_router_every_shape(T, target):
    checked = op.check(op.final, target=target, T=T)
    assert len(checked.outputs) == 5  # idx, weights, counts, pos, order: all compared


@pytest.mark.parametrize("version", ["v0", "v1"])
@pytest.mark.parametrize("T", (18, 402))
def test_every_version(version, T):
    op.check(version, seed=1, T=T)


@pytest.mark.parametrize("version", [v.name for v in op.versions])
def test_constructed_ties(version):
    """Experts in runs of 3 identical gate columns: exact ties inside the top 8 and across its boundary."""
    op.check(version, seed=5, T=200, groups=3)
    logits = linear(*op.fp32_args(seed=5, T=200, groups=3), "bf16")
    assert (topk_margin(logits, TOPK) == 0).mean() > 0.5  # most tokens tie at the 8th/9th place


def test_all_equal_logits_pick_the_first_eight():
    args = bf16(np.ones((3, H))), bf16(np.full((H, E), 0.01))
    checked = op.check(op.final, args=args)
    np.testing.assert_array_equal(checked.outputs[0], np.tile(np.arange(TOPK), (3, 1)))
    np.testing.assert_allclose(checked.outputs[1].astype(np.float32), 1 / TOPK, rtol=1e-2)


def test_expert_with_zero_tokens_and_empty_groups():
    """18 tokens, 144 slots: most of the 128 experts get no token; counts and order still exact."""
    checked = op.check(op.final, seed=7, T=18)
    assert (checked.outputs[2] == 0).any()
