"""RMSNorm, QK-norm and RoPE against transformers' own modules (torch) and explicit loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeRMSNorm, apply_rotary_pos_emb

from nki_moe.reference import add_rms_norm, apply_rope, qk_norm, rms_norm, rope_cos_sin, rotate_half

TORCH = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _bf16(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(x).to(torch.bfloat16).float().numpy()


def _hf_norm(x: np.ndarray, w: np.ndarray, eps: float, dtype: str) -> np.ndarray:
    norm = Qwen3MoeRMSNorm(w.shape[0], eps).to(TORCH[dtype])
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(w))
        return norm(torch.from_numpy(x).to(TORCH[dtype])).float().numpy()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(1, 128), (5, 129), (3, 4, 32), (17, 2048)])
def test_rms_norm_matches_transformers(dtype, shape):
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal(shape)).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(shape[-1])).astype(np.float32)
    if dtype == "bf16":
        x, w = _bf16(x), _bf16(w)
    got = rms_norm(x, w, 1e-6, dtype)
    want = _hf_norm(x, w, 1e-6, dtype)
    if dtype == "fp32":
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    else:  # two roundings, same places: identical except where fp32 sum order flips a rounding
        assert np.mean(got != want) < 1e-3
        np.testing.assert_allclose(got, want, rtol=8e-3, atol=1e-6)


def test_rms_norm_explicit_loop_and_eps():
    x = np.array([[0.0, 0.0, 0.0], [1.0, -2.0, 2.0]], np.float32)
    w = np.array([1.0, 2.0, 3.0], np.float32)
    got = rms_norm(x, w, eps=1e-6)
    assert np.all(got[0] == 0)  # eps keeps zero rows finite
    rms = np.sqrt((1 + 4 + 4) / 3 + 1e-6)
    np.testing.assert_allclose(got[1], [1 / rms, -4 / rms, 6 / rms], rtol=1e-6)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_add_rms_norm_is_add_then_norm(dtype):
    rng = np.random.default_rng(1)
    x, r = (_bf16(rng.standard_normal((7, 96)).astype(np.float32)) for _ in range(2))
    w = _bf16((1 + 0.1 * rng.standard_normal(96)).astype(np.float32))
    normed, new_r = add_rms_norm(x, r, w, 1e-6, dtype)
    want_r = (torch.from_numpy(r).to(TORCH[dtype]) + torch.from_numpy(x).to(TORCH[dtype])).float().numpy()
    np.testing.assert_array_equal(new_r, want_r)
    np.testing.assert_array_equal(normed, rms_norm(want_r, w, 1e-6, dtype))


def test_qk_norm_normalises_each_head_with_one_shared_weight():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 8)).astype(np.float32)
    w = rng.standard_normal(8).astype(np.float32)
    got = qk_norm(x, w, 1e-6)
    for t in range(3):
        for h in range(5):
            v = x[t, h]
            want = w * v / np.sqrt(np.mean(v * v) + 1e-6)
            np.testing.assert_allclose(got[t, h], want, rtol=1e-5, atol=1e-6)


def test_rotate_half_explicit():
    x = np.arange(8, dtype=np.float32)
    np.testing.assert_array_equal(rotate_half(x), [-4, -5, -6, -7, 0, 1, 2, 3])


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("head_dim,theta,start", [(128, 1e6, 0), (32, 1e6, 37), (6, 1e4, 1000)])
def test_rope_matches_transformers(dtype, head_dim, theta, start):
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeRotaryEmbedding

    cfg = Qwen3MoeConfig(
        hidden_size=head_dim * 2,
        num_attention_heads=2,
        head_dim=head_dim,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
    )
    rotary = Qwen3MoeRotaryEmbedding(cfg)
    T = 5
    pos = torch.arange(start, start + T)[None]
    rng = np.random.default_rng(3)
    q = _bf16(rng.standard_normal((T, 3, head_dim)).astype(np.float32))
    k = _bf16(rng.standard_normal((T, 1, head_dim)).astype(np.float32))
    qt, kt = (torch.from_numpy(a).to(TORCH[dtype]).transpose(0, 1)[None] for a in (q, k))  # [1, n, T, d]
    cos_t, sin_t = rotary(qt, pos)
    q_hf, k_hf = apply_rotary_pos_emb(qt, kt, cos_t, sin_t)
    cos, sin = rope_cos_sin(np.arange(start, start + T), head_dim, theta, dtype)
    np.testing.assert_allclose(cos, cos_t[0].float().numpy(), atol=1e-6 if dtype == "fp32" else 0)
    got_q, got_k = apply_rope(q, cos, sin, dtype), apply_rope(k, cos, sin, dtype)
    tol = {"fp32": dict(rtol=1e-5, atol=1e-5), "bf16": dict(rtol=8e-3, atol=8e-3)}[dtype]
    np.testing.assert_allclose(got_q, q_hf[0].transpose(0, 1).float().numpy(), **tol)
    np.testing.assert_allclose(got_k, k_hf[0].transpose(0, 1).float().numpy(), **tol)


def test_rope_is_a_rotation_of_dim_pairs():
    """Dims i and i + d/2 rotate together by angle pos·θ^(-2i/d): norms of each pair are preserved."""
    rng = np.random.default_rng(4)
    d, T = 16, 4
    x = rng.standard_normal((T, 2, d)).astype(np.float32)
    pos = np.array([0, 1, 7, 300])
    cos, sin = rope_cos_sin(pos, d, 1e4)
    y = apply_rope(x, cos, sin)
    np.testing.assert_allclose(y[0], x[0], atol=1e-6)  # position 0 is the identity
    pair = lambda a: np.hypot(a[..., : d // 2], a[..., d // 2 :])
    np.testing.assert_allclose(pair(y), pair(x), rtol=1e-5)
    for t in range(T):
        for i in range(d // 2):
            ang = pos[t] * 1e4 ** (-2 * i / d)
            a, b = x[t, :, i], x[t, :, i + d // 2]
            np.testing.assert_allclose(y[t, :, i], a * np.cos(ang) - b * np.sin(ang), atol=2e-4)
