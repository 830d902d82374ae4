"""Rotary position embedding, rotate-half (NeoX/Llama) form, as in ``Qwen3MoeRotaryEmbedding``.

Shape legend: T tokens, n heads, d head_dim.
cos/sin are computed in fp32 and cast to the activation dtype; the rotation ``x·cos + rotate_half(x)·sin``
is then three bf16 ops in HF (two products and a sum, each rounded).
"""

from __future__ import annotations

import numpy as np

from nki_moe.reference.numerics import OpCost, Precision, round_to

__all__ = ["rope_inv_freq", "rope_cos_sin", "rotate_half", "apply_rope", "rope_cost"]


def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """Inverse frequencies ``1 / θ^(2i/d)``, i = 0..d/2-1, in fp32 as HF computes them. Returns [d/2]."""
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    return (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float32)


def rope_cos_sin(
    positions: np.ndarray, head_dim: int, theta: float, dtype: Precision = "fp32"
) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables for the given absolute positions.

    Args:
        positions: [T] integer positions.
        head_dim: d (even).
        theta: RoPE base (1e6 for Qwen3-30B-A3B).
        dtype: rounding mode of the returned tables.
    Returns:
        (cos [T, d], sin [T, d]); both halves of the last axis repeat the d/2 frequencies.
    """
    freqs = np.asarray(positions, dtype=np.float32)[:, None] * rope_inv_freq(head_dim, theta)[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)  # [T, d]
    return round_to(np.cos(emb), dtype), round_to(np.sin(emb), dtype)


def rotate_half(x: np.ndarray) -> np.ndarray:
    """``[a, b] -> [-b, a]`` over the last axis (a = first half, b = second half)."""
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, dtype: Precision = "fp32") -> np.ndarray:
    """Rotate queries or keys.

    Args:
        x: [T, n, d].
        cos, sin: [T, d] from :func:`rope_cos_sin`.
    Returns:
        [T, n, d].
    """
    c, s = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    return round_to(round_to(x * c, dtype) + round_to(rotate_half(x) * s, dtype), dtype)


def rope_cost(tokens: int, heads: int, head_dim: int, dtype_bytes: int = 2) -> OpCost:
    """Cost of :func:`apply_rope` on [T, n, d]: 0 MACs (elementwise); reads x and cos/sin, writes x."""
    return OpCost(
        macs=0,
        weight_bytes=0,
        act_bytes=(2 * tokens * heads * head_dim + 2 * tokens * head_dim) * dtype_bytes,
    )
