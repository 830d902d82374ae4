"""Per-op MAC/byte counts add up to the config-level counts of nki_moe.model.counts."""

from __future__ import annotations

import pytest

from nki_moe.model import counts
from nki_moe.model.config import get_config
from nki_moe.reference import (
    OpCost,
    attention_core_cost,
    expert_mlp_cost,
    lm_head_cost,
    moe_experts_cost,
    op_costs,
    qkv_proj_cost,
    router_cost,
)

NAMES = ["qwen3-30b-a3b", "real-width-2layer", "tiny"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("context", [1, 7, 4096])
def test_decode_macs_sum_to_counts(name, context):
    cfg = get_config(name)
    costs = op_costs(cfg, tokens=1, cached=context - 1)
    assert sum(c.macs for c in costs.values()) == counts.decode_macs(cfg, context)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "seq,cached,last_only", [(1, 0, False), (13, 0, False), (640, 0, True), (5, 100, False)]
)
def test_prefill_macs_sum_to_counts(name, seq, cached, last_only):
    cfg = get_config(name)
    costs = op_costs(cfg, tokens=seq, cached=cached, last_only=last_only)
    assert sum(c.macs for c in costs.values()) == counts.prefill_macs(cfg, seq, last_only, cached)


@pytest.mark.parametrize("name", NAMES)
def test_decode_weight_bytes_match_counts(name):
    cfg = get_config(name)
    costs = op_costs(cfg, tokens=1)
    want = counts.decode_weight_bytes(cfg)
    assert costs["qkv_proj"].weight_bytes + costs["o_proj"].weight_bytes == want["attention"]
    assert costs["lm_head"].weight_bytes == want["lm_head"]
    moe = costs["moe"].weight_bytes
    assert moe == want["router"] + want["experts"]
    norms = sum(costs[k].weight_bytes for k in ("embed", "rms_norm", "qk_norm", "add_rms_norm"))
    assert norms == want["norms_embedding"]


def test_single_op_formulas():
    cfg = get_config("qwen3-30b-a3b")
    H, d, inter = cfg.hidden_size, cfg.head_dim, cfg.moe_intermediate_size
    assert qkv_proj_cost(3, H, 32, 4, d).macs == 3 * H * d * 40
    assert router_cost(2, H, 128).macs == 2 * H * 128
    assert expert_mlp_cost(5, H, inter).macs == 5 * 3 * H * inter
    assert moe_experts_cost(1, H, inter, 8, 8).weight_bytes == 8 * 3 * H * inter * 2
    assert lm_head_cost(1, H, cfg.vocab_size).weight_bytes == cfg.vocab_size * H * 2
    # causal: 3 new tokens after 4 cached attend 5, 6, 7 positions
    assert attention_core_cost(3, 4, 32, 4, d).macs == 2 * 32 * d * (5 + 6 + 7)
    assert (OpCost(1, 2, 3) + OpCost(4, 5, 6)).bytes == 16
