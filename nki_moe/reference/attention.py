"""Grouped-query attention with QK-norm and RoPE, prefill (causal) and decode against a KV cache.

Shape legend: T new tokens, S cached + new positions, H hidden, n_q query heads, n_kv KV heads,
g = n_q / n_kv query heads per KV head, d head_dim.
Mirrors HF's eager path (``eager_attention_forward``): scores ``(q·kᵀ)·d^-0.5`` (two bf16 roundings),
softmax in fp32 cast back, then ``p·v``. KV head j serves query heads g·j … g·j+g-1 (``repeat_kv``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nki_moe.reference.norms import qk_norm
from nki_moe.reference.numerics import OpCost, Precision, linear, linear_cost, round_to
from nki_moe.reference.rope import apply_rope

__all__ = [
    "KVCache",
    "gqa_attention",
    "attention_block",
    "qkv_proj_cost",
    "o_proj_cost",
    "attention_core_cost",
]


@dataclass
class KVCache:
    """Per-layer K and V after QK-norm and RoPE, grown as tokens arrive.

    Attributes:
        keys, values: per layer, [capacity, n_kv, d] float32 (bf16-valued in bf16 mode).
        length: positions filled (the same for every layer once a forward pass has finished).
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    capacity: int = 256
    keys: list[np.ndarray] = field(init=False)
    values: list[np.ndarray] = field(init=False)
    lengths: list[int] = field(init=False)

    def __post_init__(self) -> None:
        shape = (self.capacity, self.num_kv_heads, self.head_dim)
        self.keys = [np.zeros(shape, np.float32) for _ in range(self.num_layers)]
        self.values = [np.zeros(shape, np.float32) for _ in range(self.num_layers)]
        self.lengths = [0] * self.num_layers

    @property
    def length(self) -> int:
        """Positions cached in layer 0 (the position of the next token)."""
        return self.lengths[0]

    def append(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store [T, n_kv, d] keys/values of ``layer``; return all cached [S, n_kv, d] keys and values."""
        start, stop = self.lengths[layer], self.lengths[layer] + k.shape[0]
        if stop > self.keys[layer].shape[0]:  # grow geometrically so decode stays amortised O(1)
            new_cap = max(stop, 2 * self.keys[layer].shape[0])
            for store in (self.keys, self.values):
                grown = np.zeros((new_cap, self.num_kv_heads, self.head_dim), np.float32)
                grown[:start] = store[layer][:start]
                store[layer] = grown
        self.keys[layer][start:stop] = k
        self.values[layer][start:stop] = v
        self.lengths[layer] = stop
        return self.keys[layer][:stop], self.values[layer][:stop]


def gqa_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, q_offset: int, dtype: Precision = "fp32"
) -> np.ndarray:
    """Causal grouped-query attention of T queries over S keys.

    Query t sits at absolute position ``q_offset + t`` and attends keys 0 … q_offset + t. Prefill is
    ``q_offset = 0, S = T``; a decode step is ``T = 1, q_offset = S - 1``.

    Args:
        q: [T, n_q, d] queries (after QK-norm and RoPE).
        k, v: [S, n_kv, d] keys and values, S >= q_offset + T.
        q_offset: absolute position of the first query.
        dtype: rounding mode.
    Returns:
        [T, n_q, d] attention output per head.
    """
    T, n_q, d = q.shape
    S, n_kv, _ = k.shape
    g = n_q // n_kv
    if n_q % n_kv or S < q_offset + T:
        raise ValueError(f"bad shapes: q {q.shape}, k {k.shape}, q_offset {q_offset}")
    # [T, n_kv, g, d] -> [n_kv, g·T, d]: each KV head meets its g query heads in one batched matmul
    qg = q.reshape(T, n_kv, g, d).transpose(1, 2, 0, 3).reshape(n_kv, g * T, d)
    scores = round_to(qg @ k.transpose(1, 2, 0), dtype)  # [n_kv, g·T, d] @ [n_kv, d, S] -> [n_kv, g·T, S]
    scores = round_to(scores * np.float32(d**-0.5), dtype)
    scores = scores.reshape(n_kv, g, T, S)
    allowed = np.arange(S)[None, :] <= (q_offset + np.arange(T))[:, None]  # [T, S] causal mask
    scores = np.where(allowed, scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p = round_to(p / p.sum(axis=-1, keepdims=True), dtype)  # fp32 softmax, cast back
    out = round_to(p.reshape(n_kv, g * T, S) @ v.transpose(1, 0, 2), dtype)  # [n_kv, g·T, S] @ [n_kv, S, d]
    return out.reshape(n_kv, g, T, d).transpose(2, 0, 1, 3).reshape(T, n_q, d)


def attention_block(
    h: np.ndarray,
    wq: np.ndarray,
    wk: np.ndarray,
    wv: np.ndarray,
    wo: np.ndarray,
    q_norm_w: np.ndarray,
    k_norm_w: np.ndarray,
    cos: np.ndarray,
    sin: np.ndarray,
    eps: float,
    cache: KVCache | None = None,
    layer: int = 0,
    dtype: Precision = "fp32",
) -> np.ndarray:
    """Self-attention of one decoder layer: projections, QK-norm, RoPE, cache update, GQA, o_proj.

    Args:
        h: [T, H] normed input.
        wq: [H, n_q·d]; wk, wv: [H, n_kv·d]; wo: [n_q·d, H] ([in, out]: HF's ``*_proj.weight`` transposed).
        q_norm_w, k_norm_w: [d].
        cos, sin: [T, d] for the T new positions.
        eps: RMSNorm epsilon of the QK-norm.
        cache: KV cache to append to and attend over; None attends over the T tokens only.
        layer: index of this layer in ``cache``.
        dtype: rounding mode.
    Returns:
        [T, H] attention output (before the residual add).
    """
    T = h.shape[0]
    d = q_norm_w.shape[0]
    q = qk_norm(linear(h, wq, dtype).reshape(T, -1, d), q_norm_w, eps, dtype)  # [T, n_q, d]
    k = qk_norm(linear(h, wk, dtype).reshape(T, -1, d), k_norm_w, eps, dtype)  # [T, n_kv, d]
    v = linear(h, wv, dtype).reshape(T, -1, d)  # [T, n_kv, d]
    q, k = apply_rope(q, cos, sin, dtype), apply_rope(k, cos, sin, dtype)
    q_offset = 0
    if cache is not None:
        q_offset = cache.lengths[layer]
        k, v = cache.append(layer, k, v)  # [S, n_kv, d]
    out = gqa_attention(q, k, v, q_offset, dtype)  # [T, n_q, d]
    return linear(out.reshape(T, -1), wo, dtype)  # [T, n_q·d] @ [n_q·d, H]


def qkv_proj_cost(
    tokens: int, hidden: int, n_q: int, n_kv: int, head_dim: int, dtype_bytes: int = 2
) -> OpCost:
    """Cost of the q, k, v projections: T·H·d·(n_q + 2·n_kv) MACs."""
    return linear_cost(tokens, hidden, (n_q + 2 * n_kv) * head_dim, dtype_bytes)


def o_proj_cost(tokens: int, hidden: int, n_q: int, head_dim: int, dtype_bytes: int = 2) -> OpCost:
    """Cost of o_proj: T·n_q·d·H MACs."""
    return linear_cost(tokens, n_q * head_dim, hidden, dtype_bytes)


def attention_core_cost(
    tokens: int, cached: int, n_q: int, n_kv: int, head_dim: int, dtype_bytes: int = 2
) -> OpCost:
    """Cost of :func:`gqa_attention` for T new tokens after P cached positions, causal.

    MACs: QKᵀ and PV, 2·n_q·d per (query, attended key) pair, over T·P + T(T+1)/2 pairs (masked pairs are
    not counted). Bytes: q in, out, and K/V of all P + T positions read once.
    """
    pairs = tokens * cached + tokens * (tokens + 1) // 2
    kv = 2 * (cached + tokens) * n_kv * head_dim
    return OpCost(
        macs=2 * n_q * head_dim * pairs,
        weight_bytes=0,
        act_bytes=(2 * tokens * n_q * head_dim + kv) * dtype_bytes,
    )
