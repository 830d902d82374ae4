"""MoE router (``Qwen3MoeTopKRouter``): logits → fp32 softmax → top-k → renormalise → cast.

Shape legend: T tokens, H hidden, E experts, k top-k.
"""

from __future__ import annotations

import numpy as np

from nki_moe.reference.numerics import OpCost, Precision, linear, linear_cost, round_to

__all__ = ["softmax", "top_k", "router", "router_cost", "topk_margin", "grouped_order", "routing"]


def softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, in fp32."""
    z = x.astype(np.float32) - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest entries of each row, largest first; equal values keep the lower index first.

    Args:
        x: [T, E].
        k: 1 <= k <= E.
    Returns:
        (values [T, k], indices [T, k] int64).
    """
    # a stable sort of -x puts exact ties in index order, a deterministic rule the emulator can copy
    idx = np.argsort(-x, axis=-1, kind="stable")[:, :k]
    return np.take_along_axis(x, idx, axis=-1), idx.astype(np.int64)


def router(
    h: np.ndarray, w_gate: np.ndarray, k: int, norm_topk_prob: bool, dtype: Precision = "fp32"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Select k experts per token and their combine weights.

    Args:
        h: [T, H] normed hidden states.
        w_gate: [H, E] router weight (the transpose of HF's ``mlp.gate.weight`` [E, H]).
        k: experts per token.
        norm_topk_prob: rescale the k selected probabilities to sum to 1.
        dtype: rounding mode; in bf16 the logits and the final weights are rounded (softmax stays fp32).
    Returns:
        (idx [T, k] int64, weights [T, k] float32, logits [T, E]).
    """
    logits = linear(h, w_gate, dtype)  # [T, H] @ [H, E]
    probs, idx = top_k(softmax(logits), k)
    if norm_topk_prob:
        probs = probs / probs.sum(axis=-1, keepdims=True)
    return idx, round_to(probs, dtype), logits


def topk_margin(logits: np.ndarray, k: int) -> np.ndarray:
    """Gap between the k-th and (k+1)-th largest router logit of each token: how far routing is from a tie.

    Args:
        logits: [T, E].
    Returns:
        [T] float32 margins (>= 0); with k == E there is no competitor and the margin is +inf.
    """
    if k >= logits.shape[-1]:
        return np.full(logits.shape[0], np.inf, np.float32)
    part = -np.partition(-logits, (k - 1, k), axis=-1)
    return (part[:, k - 1] - part[:, k]).astype(np.float32)


def router_cost(tokens: int, hidden: int, experts: int, dtype_bytes: int = 2) -> OpCost:
    """Cost of :func:`router`: T·H·E MACs for the logits (softmax and top-k are elementwise)."""
    return linear_cost(tokens, hidden, experts, dtype_bytes)


def grouped_order(idx: np.ndarray, experts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Routing metadata of the MoE prefill: tokens grouped by expert.

    Args:
        idx: [T, k] expert ids.
        experts: E.
    Returns:
        (counts [E] tokens per expert, pos [T, k] each (token, slot)'s place in the grouped order,
        order [T·k] slot ids t·k + j grouped by expert, tokens ascending within an expert).
    """
    flat = idx.ravel().astype(np.int64)
    order = np.argsort(flat, kind="stable")
    pos = np.empty_like(order)
    pos[order] = np.arange(flat.size)
    return np.bincount(flat, minlength=experts), pos.reshape(idx.shape), order


def routing(x: np.ndarray, w_gate: np.ndarray, dtype: Precision = "fp32", k: int = 8):
    """The router kernels' op with their arguments: top-k (renormalised) plus :func:`grouped_order`.

    Returns:
        (idx [T, k], weights [T, k], counts [E], pos [T, k], order [T·k]).
    """
    idx, weights, _ = router(x, w_gate, k, True, dtype)
    return (idx, weights, *grouped_order(idx, w_gate.shape[1]))
