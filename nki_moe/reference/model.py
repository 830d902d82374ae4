"""The whole Qwen3-MoE forward in NumPy: embedding, decoder layers, final norm, LM head, KV cache.

Shape legend: T new tokens, P cached positions, H hidden, V vocab, L layers, k top-k.
Weights come from any object with ``cfg``, ``layer(i) -> LayerWeights`` and ``globals -> GlobalWeights``
(``nki_moe.model.weights.Checkpoint``), so a layer can be loaded just before it runs. Those hold the
Hugging Face [out, in] layout; the ops take the kernels' [in, out] layout (``x @ w``), so
:meth:`ReferenceModel.forward` converts each layer once, as it reads it, with
:meth:`KernelLayerWeights.from_hf` (transposed views: no copy, and the same BLAS calls as ``x @ W.T``,
so the same bits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from nki_moe.reference.attention import (
    KVCache,
    attention_block,
    attention_core_cost,
    o_proj_cost,
    qkv_proj_cost,
)
from nki_moe.reference.experts import moe_block, moe_block_cost
from nki_moe.reference.norms import add_rms_norm, add_rms_norm_cost, rms_norm, rms_norm_cost
from nki_moe.reference.numerics import OpCost, Precision, linear, linear_cost, round_to
from nki_moe.reference.rope import rope_cos_sin, rope_cost
from nki_moe.reference.router import router

if TYPE_CHECKING:
    from nki_moe.model.config import ModelConfig
    from nki_moe.model.weights import GlobalWeights, LayerWeights

__all__ = [
    "WeightSource",
    "KernelLayerWeights",
    "Routing",
    "embed",
    "lm_head",
    "decoder_layer",
    "ReferenceModel",
    "op_costs",
    "embed_cost",
    "lm_head_cost",
]


class WeightSource(Protocol):
    """What the reference model needs from a checkpoint."""

    cfg: ModelConfig

    def layer(self, i: int) -> LayerWeights: ...

    @property
    def globals(self) -> GlobalWeights: ...


@dataclass(frozen=True)
class KernelLayerWeights:
    """One decoder layer's weights in the kernels' [in, out] layout: every projection is ``x @ w``."""

    input_norm: np.ndarray  # [H]
    wq: np.ndarray  # [H, n_q·d]
    wk: np.ndarray  # [H, n_kv·d]
    wv: np.ndarray  # [H, n_kv·d]
    wo: np.ndarray  # [n_q·d, H]
    q_norm: np.ndarray  # [d]
    k_norm: np.ndarray  # [d]
    post_norm: np.ndarray  # [H]
    router: np.ndarray  # [H, E]
    gate_up: np.ndarray  # [E, H, 2I]  gate columns then up columns
    down: np.ndarray  # [E, I, H]

    @classmethod
    def from_hf(cls, w: LayerWeights) -> KernelLayerWeights:
        """Transposed views of a checkpoint layer's HF [out, in] matrices (norm vectors unchanged)."""
        return cls(
            input_norm=w.input_norm,
            wq=w.wq.T,
            wk=w.wk.T,
            wv=w.wv.T,
            wo=w.wo.T,
            q_norm=w.q_norm,
            k_norm=w.k_norm,
            post_norm=w.post_norm,
            router=w.router.T,
            gate_up=w.gate_up.transpose(0, 2, 1),  # [E, 2I, H] -> [E, H, 2I]
            down=w.down.transpose(0, 2, 1),  # [E, H, I] -> [E, I, H]
        )


@dataclass(frozen=True)
class Routing:
    """Router decisions of one layer for the T tokens of a forward pass."""

    idx: np.ndarray  # [T, k] int64, largest probability first
    weights: np.ndarray  # [T, k] float32
    logits: np.ndarray  # [T, E] router logits


def embed(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Look up token rows (unscaled). Args: table [V, H] any float dtype; ids [T]. Returns [T, H] float32."""
    return table[np.asarray(ids)].astype(np.float32)


def lm_head(h: np.ndarray, w: np.ndarray, dtype: Precision = "fp32") -> np.ndarray:
    """Logits ``h @ w``. Args: h [T, H] final-normed; w [H, V] (``lm_head.weight``ᵀ). Returns [T, V] fp32."""
    return linear(h, w, dtype)


def decoder_layer(
    x: np.ndarray,
    w: KernelLayerWeights,
    cfg: ModelConfig,
    cos: np.ndarray,
    sin: np.ndarray,
    cache: KVCache | None,
    layer: int,
    dtype: Precision = "fp32",
    routing: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, Routing]:
    """``x + Attn(norm(x))`` then ``+ MoE(norm(·))``.

    Args:
        x: [T, H] residual stream.
        w: the layer's weights in kernel layout (:meth:`KernelLayerWeights.from_hf` of a checkpoint layer).
        cfg: model config.
        cos, sin: [T, d] RoPE tables of the T positions.
        cache: KV cache (None: attend within the T tokens).
        layer: layer index.
        dtype: rounding mode.
        routing: optional forced (idx, weights), see :func:`nki_moe.reference.experts.moe_block`.
    Returns:
        (new residual [T, H], the layer's routing).
    """
    eps = cfg.rms_norm_eps
    h = rms_norm(x, w.input_norm, eps, dtype)
    attn = attention_block(h, w.wq, w.wk, w.wv, w.wo, w.q_norm, w.k_norm, cos, sin, eps, cache, layer, dtype)
    h, x = add_rms_norm(attn, x, w.post_norm, eps, dtype)
    if routing is None:
        idx, weights, logits = router(h, w.router, cfg.num_experts_per_tok, cfg.norm_topk_prob, dtype)
    else:
        (idx, weights), logits = routing, np.empty((h.shape[0], 0), np.float32)
    out, _, _ = moe_block(
        h, w.router, w.gate_up, w.down, cfg.num_experts_per_tok, cfg.norm_topk_prob, dtype, (idx, weights)
    )
    return round_to(x + out, dtype), Routing(idx, weights, logits)


class ReferenceModel:
    """NumPy Qwen3-MoE for causal LM: prefill and decode with a KV cache.

    Args:
        weights: a weight source (``nki_moe.model.weights.Checkpoint``).
        dtype: ``"fp32"`` (no rounding) or ``"bf16"`` (rounds where HF's bf16 model does).
    """

    def __init__(self, weights: WeightSource, dtype: Precision = "fp32") -> None:
        self.weights = weights
        self.cfg = weights.cfg
        self.dtype = dtype

    def new_cache(self, capacity: int = 256) -> KVCache:
        """An empty KV cache for this model."""
        return KVCache(self.cfg.num_hidden_layers, self.cfg.num_key_value_heads, self.cfg.head_dim, capacity)

    def forward(
        self, ids: np.ndarray, cache: KVCache | None = None, last_only: bool = False
    ) -> tuple[np.ndarray, list[Routing]]:
        """Run T new tokens after the ``cache.length`` cached ones (prefill when the cache is empty).

        Args:
            ids: [T] token ids.
            cache: KV cache, updated in place; None runs without one (positions start at 0).
            last_only: compute logits for the last position only (what generation needs).
        Returns:
            (logits [T or 1, V] float32, one :class:`Routing` per layer).
        """
        cfg, dtype = self.cfg, self.dtype
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        start = 0 if cache is None else cache.length
        cos, sin = rope_cos_sin(np.arange(start, start + ids.size), cfg.head_dim, cfg.rope_theta, dtype)
        g = self.weights.globals
        x = embed(g.embed, ids)
        routings = []
        for i in range(cfg.num_hidden_layers):
            w = KernelLayerWeights.from_hf(self.weights.layer(i))  # HF [out, in] -> [in, out] views
            x, r = decoder_layer(x, w, cfg, cos, sin, cache, i, dtype)
            routings.append(r)
        if last_only:
            x = x[-1:]
        h = rms_norm(x, g.final_norm, cfg.rms_norm_eps, dtype)
        return lm_head(h, g.lm_head.T, dtype), routings  # [V, H] -> [H, V] view


def embed_cost(tokens: int, hidden: int, dtype_bytes: int = 2) -> OpCost:
    """Cost of :func:`embed`: 0 MACs; reads T rows of the table (the weight bytes), writes [T, H]."""
    return OpCost(macs=0, weight_bytes=tokens * hidden * dtype_bytes, act_bytes=tokens * hidden * dtype_bytes)


def lm_head_cost(tokens: int, hidden: int, vocab: int, dtype_bytes: int = 2) -> OpCost:
    """Cost of :func:`lm_head` on T rows: T·H·V MACs."""
    return linear_cost(tokens, hidden, vocab, dtype_bytes)


def op_costs(
    cfg: ModelConfig,
    tokens: int,
    cached: int = 0,
    last_only: bool = False,
    experts_touched: float | None = None,
    dtype_bytes: int = 2,
) -> dict[str, OpCost]:
    """Cost of every op of one forward pass, summed over layers, keyed by op.

    Sum of ``macs`` equals ``nki_moe.model.counts.prefill_macs(cfg, T, last_only, P)`` (and
    ``decode_macs(cfg, P + 1)`` for T = 1).

    Args:
        cfg: model config.
        tokens: T new tokens.
        cached: P positions already in the KV cache.
        last_only: LM head on the last position only.
        experts_touched: distinct experts per layer (default min(E, T·k), the upper bound).
        dtype_bytes: bytes per weight/activation element.
    Returns:
        ``{op: OpCost}`` for embed, rms_norm (input + final), qkv_proj, qk_norm, rope, attention_core, o_proj,
        add_rms_norm, moe (router + experts + combine), lm_head.
    """
    T, L, H = tokens, cfg.num_hidden_layers, cfg.hidden_size
    n_q, n_kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    touched = experts_touched
    if touched is None:
        touched = min(cfg.num_experts, T * cfg.num_experts_per_tok)

    def times(c: OpCost, n: int) -> OpCost:
        return OpCost(c.macs * n, c.weight_bytes * n, c.act_bytes * n)

    return {
        "embed": embed_cost(T, H, dtype_bytes),
        "rms_norm": times(rms_norm_cost(T, H, dtype_bytes), L)
        + rms_norm_cost(1 if last_only else T, H, dtype_bytes),
        "qkv_proj": times(qkv_proj_cost(T, H, n_q, n_kv, d, dtype_bytes), L),
        "qk_norm": times(rms_norm_cost(T * n_q, d, dtype_bytes) + rms_norm_cost(T * n_kv, d, dtype_bytes), L),
        "rope": times(rope_cost(T, n_q + n_kv, d, dtype_bytes), L),
        "attention_core": times(attention_core_cost(T, cached, n_q, n_kv, d, dtype_bytes), L),
        "o_proj": times(o_proj_cost(T, H, n_q, d, dtype_bytes), L),
        "add_rms_norm": times(add_rms_norm_cost(T, H, dtype_bytes), L),
        "moe": times(
            moe_block_cost(
                T,
                H,
                cfg.moe_intermediate_size,
                cfg.num_experts,
                cfg.num_experts_per_tok,
                touched,
                dtype_bytes,
            ),
            L,
        ),
        "lm_head": lm_head_cost(1 if last_only else T, H, cfg.vocab_size, dtype_bytes),
    }
