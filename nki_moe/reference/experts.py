"""Expert SwiGLU MLPs and the MoE combine (``Qwen3MoeExperts``, eager implementation).

Shape legend: T tokens, H hidden, E experts, k top-k, I moe_intermediate, n tokens routed to one expert.
Weights are [in, out] (each projection is ``x @ w``, see :func:`nki_moe.reference.numerics.linear`), the
transposes of HF's: ``gate_up`` [E, H, 2I] (gate columns then up columns), ``down`` [E, I, H].
HF's eager loop visits experts in ascending index, scales each expert's output by its routing weight
and ``index_add_``s it into a buffer of the activation dtype, so in bf16 every token's sum is rounded after
each expert, in ascending expert order. :func:`moe_combine` reproduces that order.
"""

from __future__ import annotations

import numpy as np

from nki_moe.reference.numerics import OpCost, Precision, linear, linear_cost, round_to
from nki_moe.reference.router import router, router_cost

__all__ = [
    "silu",
    "expert_mlp",
    "moe_experts",
    "moe_combine",
    "moe_block",
    "expert_mlp_cost",
    "moe_experts_cost",
    "moe_combine_cost",
    "moe_block_cost",
]


def silu(x: np.ndarray) -> np.ndarray:
    """``x / (1 + exp(-x))`` in fp32, the formula torch uses (exp overflow gives the correct -0)."""
    with np.errstate(over="ignore"):
        return x / (np.float32(1.0) + np.exp(-x))


def expert_mlp(
    x: np.ndarray, w_gate: np.ndarray, w_up: np.ndarray, w_down: np.ndarray, dtype: Precision = "fp32"
) -> np.ndarray:
    """One expert: ``down(silu(gate(x)) * up(x))``.

    Args:
        x: [n, H] tokens routed to this expert.
        w_gate, w_up: [H, I]; w_down: [I, H].
        dtype: rounding mode.
    Returns:
        [n, H].
    """
    gate = linear(x, w_gate, dtype)  # [n, H] @ [H, I]
    up = linear(x, w_up, dtype)  # [n, H] @ [H, I]
    act = round_to(round_to(silu(gate), dtype) * up, dtype)
    return linear(act, w_down, dtype)  # [n, I] @ [I, H]


def moe_experts(
    h: np.ndarray,
    idx: np.ndarray,
    weights: np.ndarray,
    w_gate_up: np.ndarray,
    w_down: np.ndarray,
    dtype: Precision = "fp32",
) -> np.ndarray:
    """Run every selected (token, expert) pair and scale by its routing weight, without summing.

    Tokens are grouped per expert so each expert's weights are read once (HF's dispatch).

    Args:
        h: [T, H] normed hidden states.
        idx: [T, k] selected experts; weights: [T, k] routing weights.
        w_gate_up: [E, H, 2I], gate columns then up columns (HF's fused ``gate_up_proj`` [E, 2I, H]ᵀ).
        w_down: [E, I, H].
        dtype: rounding mode.
    Returns:
        [T, k, H]: slot j of token t holds ``weights[t, j] · expert_{idx[t, j]}(h[t])``.
    """
    T, k = idx.shape
    inter = w_down.shape[1]
    out = np.zeros((T, k, h.shape[1]), np.float32)
    flat = idx.reshape(-1)  # [T·k]
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(w_gate_up.shape[0] + 1))
    for e in np.nonzero(np.diff(bounds))[0]:  # only experts that received tokens
        pairs = order[bounds[e] : bounds[e + 1]]  # flat (token, slot) positions routed to e
        tok, slot = pairs // k, pairs % k
        y = expert_mlp(h[tok], w_gate_up[e, :, :inter], w_gate_up[e, :, inter:], w_down[e], dtype)  # [n, H]
        out[tok, slot] = round_to(y * weights[tok, slot][:, None], dtype)
    return out


def moe_combine(expert_out: np.ndarray, idx: np.ndarray, dtype: Precision = "fp32") -> np.ndarray:
    """Sum each token's k weighted expert outputs in ascending expert index (HF's accumulation order).

    Args:
        expert_out: [T, k, H] from :func:`moe_experts`.
        idx: [T, k] expert of each slot.
        dtype: rounding mode; bf16 rounds after every addition.
    Returns:
        [T, H].
    """
    order = np.argsort(idx, axis=-1, kind="stable")  # [T, k]
    ordered = np.take_along_axis(expert_out, order[:, :, None], axis=1)
    acc = ordered[:, 0].copy()
    for j in range(1, idx.shape[1]):
        acc = round_to(acc + ordered[:, j], dtype)
    return acc


def moe_block(
    h: np.ndarray,
    w_router: np.ndarray,
    w_gate_up: np.ndarray,
    w_down: np.ndarray,
    k: int,
    norm_topk_prob: bool,
    dtype: Precision = "fp32",
    routing: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse MoE block: router, experts, combine (no shared expert).

    Args:
        h: [T, H] normed hidden states.
        w_router: [H, E]; w_gate_up: [E, H, 2I]; w_down: [E, I, H].
        k: experts per token; norm_topk_prob: renormalise the selected probabilities.
        dtype: rounding mode.
        routing: optional (idx [T, k], weights [T, k]) to use instead of the router's own choice, so an
            expert kernel can be checked on exactly the reference's routing (docs/reference-model.md).
    Returns:
        (out [T, H], idx [T, k], weights [T, k]).
    """
    if routing is None:
        idx, weights, _ = router(h, w_router, k, norm_topk_prob, dtype)
    else:
        idx, weights = routing
    out = moe_combine(moe_experts(h, idx, weights, w_gate_up, w_down, dtype), idx, dtype)
    return out, idx, weights


def expert_mlp_cost(tokens: int, hidden: int, inter: int, dtype_bytes: int = 2) -> OpCost:
    """Cost of one :func:`expert_mlp` call on n tokens: 3·n·H·I MACs, 3·H·I weights."""
    return (
        linear_cost(tokens, hidden, inter, dtype_bytes)
        + linear_cost(tokens, hidden, inter, dtype_bytes)
        + linear_cost(tokens, inter, hidden, dtype_bytes)
    )


def moe_experts_cost(
    tokens: int, hidden: int, inter: int, k: int, experts_touched: float, dtype_bytes: int = 2
) -> OpCost:
    """Cost of :func:`moe_experts`: T·k·3·H·I MACs; weights of the experts touched, each read once.

    Args:
        tokens: T.
        experts_touched: distinct experts receiving tokens (k at T = 1; see
            ``nki_moe.model.counts.expected_distinct_experts`` for larger T).
    """
    pair = expert_mlp_cost(tokens * k, hidden, inter, dtype_bytes)
    return OpCost(
        macs=pair.macs,
        weight_bytes=int(round(experts_touched * 3 * hidden * inter * dtype_bytes)),
        act_bytes=pair.act_bytes,
    )


def moe_combine_cost(tokens: int, hidden: int, k: int, dtype_bytes: int = 2) -> OpCost:
    """Cost of :func:`moe_combine`: 0 MACs (a weighted sum, elementwise); reads T·k·H, writes T·H."""
    return OpCost(macs=0, weight_bytes=0, act_bytes=tokens * (k + 1) * hidden * dtype_bytes)


def moe_block_cost(
    tokens: int, hidden: int, inter: int, experts: int, k: int, experts_touched: float, dtype_bytes: int = 2
) -> OpCost:
    """Cost of :func:`moe_block`: router + experts + combine."""
    return (
        router_cost(tokens, hidden, experts, dtype_bytes)
        + moe_experts_cost(tokens, hidden, inter, k, experts_touched, dtype_bytes)
        + moe_combine_cost(tokens, hidden, k, dtype_bytes)
    )
