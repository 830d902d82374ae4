"""Parameter, byte, MAC and arithmetic-intensity counts of a Qwen3-MoE model (one function per quantity).

Symbols: L layers, H hidden, n_q/n_kv heads, d head_dim, E experts, k top-k, I moe_intermediate, V vocab,
T attended positions (decode context, the new token included), S prefill tokens, b bytes per weight element.
Formulas derived from the config [QWEN3-CONFIG]; totals match [QWEN3-CARD]. 1 MAC = 2 FLOP. Norms,
RoPE, softmax, SiLU and top-k are not counted as MACs (< 0.1 %). Byte counts are HBM reads of weights and of
the KV cache; activations are ignored (a few KiB per token at batch 1).
"""

from __future__ import annotations

from nki_moe.model.config import ModelConfig

__all__ = [
    "OP_FAMILIES",
    "param_breakdown",
    "total_params",
    "active_param_breakdown",
    "active_params",
    "kv_cache_bytes_per_token",
    "decode_macs",
    "prefill_macs",
    "expected_distinct_experts",
    "decode_weight_bytes",
    "decode_bytes",
    "prefill_weight_bytes",
    "prefill_bytes",
    "decode_arithmetic_intensity",
    "prefill_arithmetic_intensity",
]

# Op families of the byte breakdowns, in plotting order.
OP_FAMILIES = ("attention", "router", "experts", "lm_head", "norms_embedding")


def _all_moe(cfg: ModelConfig) -> ModelConfig:
    """Return cfg if every layer is an MoE layer; the counts below assume it."""
    if cfg.mlp_only_layers or cfg.decoder_sparse_step != 1:
        raise ValueError(
            f"{cfg.name}: counts assume every layer is MoE; got mlp_only_layers="
            f"{cfg.mlp_only_layers}, decoder_sparse_step={cfg.decoder_sparse_step}"
        )
    return cfg


def _attn_proj_params(cfg: ModelConfig) -> int:
    """q, k, v, o projections of one layer: H·d·(2n_q + 2n_kv)."""
    return cfg.hidden_size * cfg.head_dim * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads)


def _expert_params(cfg: ModelConfig) -> int:
    """gate, up and down projections of ONE expert: 3·H·I."""
    return 3 * cfg.hidden_size * cfg.moe_intermediate_size


def param_breakdown(cfg: ModelConfig) -> dict[str, int]:
    """Stored parameters by part (derived from [QWEN3-CONFIG]).

    Args:
        cfg: model config (every layer MoE).
    Returns:
        ``{part: params}`` over all layers; the values sum to :func:`total_params`. Parts:
        attention_proj L·H·d·(2n_q+2n_kv), qk_norms L·2d, layer_norms L·2H, router L·E·H,
        experts L·E·3·H·I, embed_tokens V·H, lm_head V·H (0 if tied), final_norm H.
    """
    L, H = _all_moe(cfg).num_hidden_layers, cfg.hidden_size
    return {
        "attention_proj": L * _attn_proj_params(cfg),
        "qk_norms": L * 2 * cfg.head_dim,
        "layer_norms": L * 2 * H,
        "router": L * cfg.num_experts * H,
        "experts": L * cfg.num_experts * _expert_params(cfg),
        "embed_tokens": cfg.vocab_size * H,
        "lm_head": 0 if cfg.tie_word_embeddings else cfg.vocab_size * H,
        "final_norm": H,
    }


def total_params(cfg: ModelConfig) -> int:
    """Total stored parameters: L·(H·d·(2n_q+2n_kv) + 2d + 2H + E·H + 3E·H·I) + 2V·H + H (untied)."""
    return sum(param_breakdown(cfg).values())


def active_param_breakdown(cfg: ModelConfig) -> dict[str, int]:
    """Parameters active for one token: :func:`param_breakdown` with k of the E experts per layer.

    Args:
        cfg: model config.
    Returns:
        ``{part: params}``; ``experts`` is L·k·3·H·I. The embedding table is counted whole, as on the model
        card (3.35 B); only one of its V rows is actually read (see :func:`decode_weight_bytes`).
    """
    parts = param_breakdown(cfg)
    parts["experts"] = cfg.num_hidden_layers * cfg.num_experts_per_tok * _expert_params(cfg)
    return parts


def active_params(cfg: ModelConfig) -> int:
    """Active parameters per token: L·(H·d·(2n_q+2n_kv) + 2d + 2H + E·H + 3k·H·I) + 2V·H + H."""
    return sum(active_param_breakdown(cfg).values())


def kv_cache_bytes_per_token(cfg: ModelConfig, dtype_bytes: int = 2) -> int:
    """KV-cache bytes per token: L·2·n_kv·d·b (K and V of every layer); 98,304 B for Qwen3-30B-A3B bf16."""
    return cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * dtype_bytes


def _linear_macs_per_token(cfg: ModelConfig) -> int:
    """Projection MACs of one token with all-position logits: L·(attn proj + E·H + k·3·H·I) + V·H."""
    per_layer = _attn_proj_params(cfg) + cfg.num_experts * cfg.hidden_size
    per_layer += cfg.num_experts_per_tok * _expert_params(cfg)
    return _all_moe(cfg).num_hidden_layers * per_layer + cfg.vocab_size * cfg.hidden_size


def _attn_core_macs_per_position(cfg: ModelConfig) -> int:
    """QKᵀ and PV MACs of one query attending one position, all layers: L·2·n_q·d."""
    return cfg.num_hidden_layers * 2 * cfg.num_attention_heads * cfg.head_dim


def decode_macs(cfg: ModelConfig, context: int) -> int:
    """MACs to decode one token attending ``context`` positions (itself included).

    MAC_decode(T) = L·(H·d·(2n_q+2n_kv) + E·H + 3k·H·I) + V·H + L·2·n_q·d·T
    (= 3,041,656,832 + 393,216·T for Qwen3-30B-A3B).

    Args:
        cfg: model config.
        context: T >= 1, attended positions.
    Returns:
        MACs (int); FLOPs are twice this.
    """
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    return _linear_macs_per_token(cfg) + _attn_core_macs_per_position(cfg) * context


def prefill_macs(
    cfg: ModelConfig, seq_len: int, last_token_logits_only: bool = False, cached: int = 0
) -> int:
    """MACs of a causal prefill of ``seq_len`` tokens after ``cached`` already-cached positions.

    MAC_prefill(S) = linear·S + L·2·n_q·d·(S·P + S(S+1)/2), with linear = :func:`decode_macs` minus its
    attention term; with last-token-only logits (what HF ``generate`` does) subtract (S−1)·V·H.

    Args:
        cfg: model config.
        seq_len: S >= 1, new tokens.
        last_token_logits_only: run lm_head for the last position only.
        cached: P >= 0, positions already in the KV cache.
    Returns:
        MACs (int).
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if cached < 0:
        raise ValueError(f"cached must be >= 0, got {cached}")
    macs = _linear_macs_per_token(cfg) * seq_len
    macs += _attn_core_macs_per_position(cfg) * (seq_len * cached + seq_len * (seq_len + 1) // 2)
    if last_token_logits_only:
        macs -= (seq_len - 1) * cfg.vocab_size * cfg.hidden_size
    return macs


def expected_distinct_experts(cfg: ModelConfig, tokens: int) -> float:
    """Expected number of distinct experts a layer touches for ``tokens`` tokens under uniform routing.

    Each token picks k of E experts; a given expert is missed by one token with probability 1 − k/E, so
    E[distinct] = E·(1 − (1 − k/E)^S). Tokens are treated as independent and routing as uniform, which real
    routers are not (popular experts make the true count lower). For Qwen3-30B-A3B it is 8 at S=1, ≈ 87.9 at
    S=18, ≈ 127.96 at S=126 and within 0.001 of 128 from S=183 (S·k ≈ 1,500): a prefill of more than a
    few dozen tokens reads nearly every expert of every layer.

    Args:
        cfg: model config.
        tokens: S >= 0.
    Returns:
        Expected distinct experts per layer, in [0, E].
    """
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens}")
    E, k = cfg.num_experts, cfg.num_experts_per_tok
    return E * (1.0 - (1.0 - k / E) ** tokens)


def _weight_bytes(
    cfg: ModelConfig, experts_per_layer: float, dtype_bytes: int, embedding_rows: int = 1
) -> dict[str, float]:
    """Weight bytes of one forward pass over ``experts_per_layer`` experts and ``embedding_rows`` rows."""
    L, H, b = _all_moe(cfg).num_hidden_layers, cfg.hidden_size, dtype_bytes
    return {
        "attention": L * _attn_proj_params(cfg) * b,
        "router": L * cfg.num_experts * H * b,
        "experts": L * experts_per_layer * _expert_params(cfg) * b,
        "lm_head": cfg.vocab_size * H * b,
        # per layer: 2 RMSNorm weights (2H) + q_norm, k_norm (2d); final norm H; an embedding row H per token.
        "norms_embedding": (L * (2 * H + 2 * cfg.head_dim) + H + embedding_rows * H) * b,
    }


def decode_weight_bytes(cfg: ModelConfig, dtype_bytes: int = 2) -> dict[str, int]:
    """Weight bytes read from HBM to decode one token at batch 1, by op family.

    attention L·H·d·(2n_q+2n_kv)·b; router L·E·H·b; experts L·k·3·H·I·b; lm_head V·H·b;
    norms_embedding (L·(2H+2d) + H + H)·b (layer and q/k norms, final norm, one embedding row).
    Total 6,083,739,648 B for Qwen3-30B-A3B in bf16.

    Args:
        cfg: model config.
        dtype_bytes: b, bytes per weight element (2 for bf16, 1 for fp8).
    Returns:
        ``{family: bytes}`` with the keys of :data:`OP_FAMILIES`.
    """
    parts = _weight_bytes(cfg, cfg.num_experts_per_tok, dtype_bytes)
    return {family: int(value) for family, value in parts.items()}


def decode_bytes(
    cfg: ModelConfig, context: int, dtype_bytes: int = 2, kv_dtype_bytes: int = 2
) -> dict[str, int]:
    """HBM bytes read to decode one token attending ``context`` positions: weights plus the KV cache.

    :func:`decode_weight_bytes` plus ``kv_cache`` = T·L·2·n_kv·d·b_kv (the new token's own K/V write is
    ignored).

    Args:
        cfg: model config.
        context: T >= 1 attended positions.
        dtype_bytes: bytes per weight element.
        kv_dtype_bytes: bytes per KV-cache element.
    Returns:
        ``{family: bytes}``: the :data:`OP_FAMILIES` and ``kv_cache``.
    """
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    out = decode_weight_bytes(cfg, dtype_bytes)
    out["kv_cache"] = context * kv_cache_bytes_per_token(cfg, kv_dtype_bytes)
    return out


def prefill_weight_bytes(cfg: ModelConfig, seq_len: int, dtype_bytes: int = 2) -> dict[str, float]:
    """Weight bytes read once for a prefill of ``seq_len`` tokens, by op family.

    As :func:`decode_weight_bytes`, except that the experts term uses the expected distinct experts per
    layer, L·E·(1 − (1 − k/E)^S)·3·H·I·b (:func:`expected_distinct_experts`), so it is fractional, and the
    embedding gathers S rows (min(S, V): an upper bound when tokens repeat). Each other weight is assumed to
    be read from HBM once per prefill (ideal reuse across the S tokens).

    Args:
        cfg: model config.
        seq_len: S >= 1 tokens.
        dtype_bytes: bytes per weight element.
    Returns:
        ``{family: bytes}`` with the keys of :data:`OP_FAMILIES`.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    rows = min(seq_len, cfg.vocab_size)
    return _weight_bytes(cfg, expected_distinct_experts(cfg, seq_len), dtype_bytes, rows)


def prefill_bytes(
    cfg: ModelConfig, seq_len: int, dtype_bytes: int = 2, kv_dtype_bytes: int = 2
) -> dict[str, float]:
    """HBM bytes of a prefill of ``seq_len`` tokens: :func:`prefill_weight_bytes` plus the KV-cache write.

    ``kv_cache`` = S·L·2·n_kv·d·b_kv, written once (attention reads it back from on-chip memory).

    Returns:
        ``{family: bytes}``: the :data:`OP_FAMILIES` and ``kv_cache``.
    """
    out = prefill_weight_bytes(cfg, seq_len, dtype_bytes)
    out["kv_cache"] = float(seq_len * kv_cache_bytes_per_token(cfg, kv_dtype_bytes))
    return out


def decode_arithmetic_intensity(cfg: ModelConfig, context: int, dtype_bytes: int = 2) -> float:
    """FLOP per HBM byte of one decode token: 2·MAC_decode(T) / (weight bytes + T·KV bytes per token).

    About 1 FLOP/B for Qwen3-30B-A3B in bf16, two orders of magnitude below any machine balance.

    Args:
        cfg: model config.
        context: T >= 1 attended positions.
        dtype_bytes: bytes per weight and KV element.
    Returns:
        FLOP/byte.
    """
    return 2 * decode_macs(cfg, context) / sum(decode_bytes(cfg, context, dtype_bytes, dtype_bytes).values())


def prefill_arithmetic_intensity(
    cfg: ModelConfig, seq_len: int, dtype_bytes: int = 2, last_token_logits_only: bool = True
) -> float:
    """FLOP per HBM byte of a prefill of ``seq_len`` tokens (no cached prefix).

    2·MAC_prefill(S) / (:func:`prefill_bytes` total). Defaults to last-token-only logits, as generation does.

    Args:
        cfg: model config.
        seq_len: S >= 1 tokens.
        dtype_bytes: bytes per weight and KV element.
        last_token_logits_only: see :func:`prefill_macs`.
    Returns:
        FLOP/byte.
    """
    flops = 2 * prefill_macs(cfg, seq_len, last_token_logits_only)
    return flops / sum(prefill_bytes(cfg, seq_len, dtype_bytes, dtype_bytes).values())
