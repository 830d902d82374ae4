"""Router, expert SwiGLU and MoE combine against transformers' modules and a dense per-token formulation.

The references take [in, out] weights (``x @ w``); transformers' modules get the [out, in] transpose.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Qwen3MoeConfig
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts, Qwen3MoeTopKRouter

from nki_moe.reference import (
    expert_mlp,
    moe_block,
    moe_combine,
    moe_experts,
    router,
    silu,
    top_k,
    topk_margin,
)

TORCH = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _cfg(E: int, k: int, H: int, inter: int, norm: bool = True) -> Qwen3MoeConfig:
    return Qwen3MoeConfig(
        hidden_size=H, num_experts=E, num_experts_per_tok=k, moe_intermediate_size=inter, norm_topk_prob=norm
    )


def _bf16(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(x).to(torch.bfloat16).float().numpy()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("norm", [True, False])
def test_router_matches_transformers(dtype, norm):
    T, H, E, k = 33, 96, 16, 4
    rng = np.random.default_rng(0)
    h = _bf16(rng.standard_normal((T, H)).astype(np.float32))
    w = _bf16((0.3 * rng.standard_normal((E, H))).astype(np.float32))
    hf = Qwen3MoeTopKRouter(_cfg(E, k, H, 8, norm)).to(TORCH[dtype])
    with torch.no_grad():
        hf.weight.copy_(torch.from_numpy(w))
        logits_t, weights_t, idx_t = hf(torch.from_numpy(h).to(TORCH[dtype]))
    idx, weights, logits = router(h, w.T, k, norm, dtype)  # HF [E, H] -> [H, E] view
    np.testing.assert_allclose(
        logits, logits_t.float().numpy(), rtol=1e-5 if dtype == "fp32" else 8e-3, atol=1e-5
    )
    # bf16 logits tie exactly now and then; torch.topk orders tied entries arbitrarily, we by index, so
    # compare the selected sets and each expert's weight
    o, o_t = np.argsort(idx, -1), np.argsort(idx_t.numpy(), -1)
    np.testing.assert_array_equal(np.take_along_axis(idx, o, -1), np.take_along_axis(idx_t.numpy(), o_t, -1))
    np.testing.assert_allclose(
        np.take_along_axis(weights, o, -1),
        np.take_along_axis(weights_t.float().numpy(), o_t, -1),
        rtol=1e-5 if dtype == "fp32" else 8e-3,
    )
    if norm:
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5 if dtype == "fp32" else 2e-2)


def test_top_k_ties_keep_lower_index_and_margin():
    x = np.array([[1.0, 3.0, 3.0, 0.5, 3.0]], np.float32)
    vals, idx = top_k(x, 2)
    np.testing.assert_array_equal(idx, [[1, 2]])
    np.testing.assert_array_equal(vals, [[3.0, 3.0]])
    np.testing.assert_array_equal(topk_margin(x, 2), [0.0])  # a tie has zero margin
    np.testing.assert_allclose(topk_margin(x, 3), [2.0])
    assert np.isinf(topk_margin(x, 5)[0])


def test_expert_mlp_explicit():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 10)).astype(np.float32)
    wg, wu = rng.standard_normal((2, 10, 7)).astype(np.float32)  # [H, I]
    wd = rng.standard_normal((7, 10)).astype(np.float32)  # [I, H]
    g = x.astype(np.float64) @ wg
    want = (g / (1 + np.exp(-g)) * (x @ wu)) @ wd
    np.testing.assert_allclose(expert_mlp(x, wg, wu, wd), want, rtol=1e-4, atol=1e-4)
    assert np.isfinite(silu(np.array([-1e4, 1e4], np.float32))).all()


def _dense_moe(h, idx, w, gate_up, down):
    """Per token, per selected expert, the weighted sum in float64: no dispatch, no grouping."""
    inter = down.shape[1]
    out = np.zeros(h.shape)
    for t in range(h.shape[0]):
        for j in range(idx.shape[1]):
            e = idx[t, j]
            x = h[t : t + 1].astype(np.float64)
            out[t] += w[t, j] * expert_mlp(x, gate_up[e, :, :inter], gate_up[e, :, inter:], down[e])[0]
    return out


@pytest.mark.parametrize("T,E,k", [(1, 8, 2), (13, 8, 2), (5, 6, 6), (40, 16, 3)])
def test_moe_matches_dense_per_token_loop(T, E, k):
    rng = np.random.default_rng(T + E)
    H, inter = 24, 11
    h = rng.standard_normal((T, H)).astype(np.float32)
    w_router = rng.standard_normal((H, E)).astype(np.float32)
    gate_up = (0.3 * rng.standard_normal((E, H, 2 * inter))).astype(np.float32)
    down = (0.3 * rng.standard_normal((E, inter, H))).astype(np.float32)
    out, idx, w = moe_block(h, w_router, gate_up, down, k, True)
    np.testing.assert_allclose(out, _dense_moe(h, idx, w, gate_up, down), rtol=1e-4, atol=1e-5)


def test_expert_without_tokens_and_forced_routing():
    rng = np.random.default_rng(2)
    T, H, E, inter = 4, 8, 5, 3
    h = rng.standard_normal((T, H)).astype(np.float32)
    gate_up = rng.standard_normal((E, H, 2 * inter)).astype(np.float32)
    down = rng.standard_normal((E, inter, H)).astype(np.float32)
    idx = np.array([[0, 3]] * T)  # experts 1, 2, 4 receive nothing
    w = np.full((T, 2), 0.5, np.float32)
    gate_up[[1, 2, 4]] = np.nan  # never read
    out, got_idx, _ = moe_block(h, np.zeros((H, E), np.float32), gate_up, down, 2, True, routing=(idx, w))
    assert np.isfinite(out).all() and got_idx is idx
    np.testing.assert_allclose(out, _dense_moe(h, idx, w, gate_up, down), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("T", [1, 9, 64])
def test_moe_bf16_matches_transformers_eager_experts(T):
    """Same routing in, transformers' eager Qwen3MoeExperts in bf16 vs our bf16 mode: same rounding order."""
    E, k, H, inter = 8, 3, 64, 32
    rng = np.random.default_rng(T)
    h = _bf16(rng.standard_normal((T, H)).astype(np.float32))
    gate_up = _bf16((0.2 * rng.standard_normal((E, 2 * inter, H))).astype(np.float32))  # HF layout
    down = _bf16((0.2 * rng.standard_normal((E, H, inter))).astype(np.float32))
    idx = np.stack([rng.permutation(E)[:k] for _ in range(T)])
    w = _bf16(rng.dirichlet(np.ones(k), size=T).astype(np.float32))
    cfg = _cfg(E, k, H, inter)
    cfg._experts_implementation = "eager"
    hf = Qwen3MoeExperts(cfg).to(torch.bfloat16)
    with torch.no_grad():
        hf.gate_up_proj.copy_(torch.from_numpy(gate_up))
        hf.down_proj.copy_(torch.from_numpy(down))
        want = hf(torch.from_numpy(h).bfloat16(), torch.from_numpy(idx), torch.from_numpy(w).bfloat16())
    got = moe_combine(
        moe_experts(h, idx, w, gate_up.transpose(0, 2, 1), down.transpose(0, 2, 1), "bf16"), idx, "bf16"
    )
    want = want.float().numpy()
    assert np.mean(got != want) < 0.02  # bit-identical but for rare fp32 summation-order rounding flips
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=1e-2)
