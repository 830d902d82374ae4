"""GQA attention (prefill, decode, KV cache) against an explicit float64 loop and transformers' eager path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.models.qwen3_moe.modeling_qwen3_moe import eager_attention_forward

from nki_moe.reference import KVCache, attention_block, gqa_attention, rope_cos_sin


def _loop_attention(q, k, v, q_offset):
    """Per query, per head: softmax over allowed keys, float64."""
    T, n_q, d = q.shape
    g = n_q // k.shape[1]
    out = np.zeros((T, n_q, d))
    for t in range(T):
        keys = q_offset + t + 1
        for h in range(n_q):
            j = h // g  # KV head j serves query heads g·j … g·j+g-1
            s = k[:keys, j].astype(np.float64) @ q[t, h] / np.sqrt(d)
            p = np.exp(s - s.max())
            out[t, h] = (p / p.sum()) @ v[:keys, j]
    return out


@pytest.mark.parametrize(
    "T,S,n_q,n_kv,d",
    [(1, 1, 4, 2, 8), (7, 7, 4, 2, 32), (5, 13, 6, 3, 6), (1, 29, 32, 4, 128), (9, 9, 3, 1, 5)],
)
def test_gqa_matches_explicit_loop(T, S, n_q, n_kv, d):
    rng = np.random.default_rng(T * 100 + S)
    q = rng.standard_normal((T, n_q, d)).astype(np.float32)
    k = rng.standard_normal((S, n_kv, d)).astype(np.float32)
    v = rng.standard_normal((S, n_kv, d)).astype(np.float32)
    offset = S - T
    np.testing.assert_allclose(
        gqa_attention(q, k, v, offset), _loop_attention(q, k, v, offset), rtol=1e-4, atol=1e-5
    )


def test_gqa_bf16_matches_transformers_eager():
    rng = np.random.default_rng(5)
    T, n_q, n_kv, d = 11, 8, 2, 16
    q, k, v = (
        torch.randn(1, n, T, d, generator=torch.Generator().manual_seed(i), dtype=torch.bfloat16)
        for i, n in enumerate((n_q, n_kv, n_kv))
    )
    mask = torch.full((T, T), torch.finfo(torch.bfloat16).min, dtype=torch.bfloat16).triu(1)[None, None]
    module = torch.nn.Module()
    module.num_key_value_groups, module.training = n_q // n_kv, False
    want, _ = eager_attention_forward(module, q, k, v, mask, scaling=d**-0.5)
    to_np = lambda t: t[0].transpose(0, 1).float().numpy()  # [T, n, d]
    got = gqa_attention(to_np(q), to_np(k), to_np(v), 0, "bf16")
    want = want[0].float().numpy()
    assert rng is not None and np.mean(got != want) < 0.02
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)


def test_prefill_equals_token_by_token_decode_with_cache():
    rng = np.random.default_rng(6)
    H, n_q, n_kv, d, T = 48, 4, 2, 8, 6
    wq = rng.standard_normal((H, n_q * d)).astype(np.float32) * 0.1  # [in, out]
    wk = rng.standard_normal((H, n_kv * d)).astype(np.float32) * 0.1
    wv = rng.standard_normal((H, n_kv * d)).astype(np.float32) * 0.1
    wo = rng.standard_normal((n_q * d, H)).astype(np.float32) * 0.1
    qn, kn = (1 + 0.1 * rng.standard_normal((2, d))).astype(np.float32)
    h = rng.standard_normal((T, H)).astype(np.float32)
    cos, sin = rope_cos_sin(np.arange(T), d, 1e6)
    whole = attention_block(h, wq, wk, wv, wo, qn, kn, cos, sin, 1e-6, KVCache(1, n_kv, d, capacity=2), 0)
    cache = KVCache(1, n_kv, d, capacity=1)  # forces the cache to grow
    steps = [
        attention_block(h[t : t + 1], wq, wk, wv, wo, qn, kn, cos[t : t + 1], sin[t : t + 1], 1e-6, cache, 0)
        for t in range(T)
    ]
    np.testing.assert_allclose(np.concatenate(steps), whole, rtol=1e-5, atol=1e-6)
    assert cache.length == T


def test_first_token_attends_only_itself():
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal((4, 2, 4)).astype(np.float32) for _ in range(3))
    out = gqa_attention(q, k, v, 0)
    np.testing.assert_allclose(out[0], v[0], rtol=1e-6)
