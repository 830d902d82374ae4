"""RMSNorm (layer, fused residual add, per-head q/k) as in ``Qwen3MoeRMSNorm``.

Shape legend: T tokens, H hidden, n heads, d head_dim.
HF computes ``x·rsqrt(mean(x²)+eps)`` in fp32, casts that back to the activation dtype and only then
multiplies by the weight, so in bf16 there are two roundings ([HF-QWEN3MOE]).
"""

from __future__ import annotations

import numpy as np

from nki_moe.reference.numerics import OpCost, Precision, round_to

__all__ = ["rms_norm", "add_rms_norm", "qk_norm", "rms_norm_cost", "add_rms_norm_cost"]


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float, dtype: Precision = "fp32") -> np.ndarray:
    """RMS-normalise over the last axis, then scale by ``weight``.

    Args:
        x: [..., D] activations (bf16-valued in bf16 mode).
        weight: [D] scale.
        eps: added to the mean square.
        dtype: rounding mode.
    Returns:
        [..., D] float32.
    """
    x32 = x.astype(np.float32, copy=False)
    inv_rms = 1.0 / np.sqrt(np.mean(np.square(x32), axis=-1, keepdims=True) + np.float32(eps))
    return round_to(weight * round_to(x32 * inv_rms, dtype), dtype)


def add_rms_norm(
    x: np.ndarray, residual: np.ndarray, weight: np.ndarray, eps: float, dtype: Precision = "fp32"
) -> tuple[np.ndarray, np.ndarray]:
    """Residual add fused with the following RMSNorm: ``r = residual + x; return rms_norm(r), r``.

    Args:
        x: [T, H] block output (attention or MoE).
        residual: [T, H] residual stream before the block.
        weight: [H] norm scale.
        eps: RMSNorm epsilon.
        dtype: rounding mode (the sum is rounded, as HF's bf16 add is).
    Returns:
        (normed [T, H], new residual [T, H]).
    """
    r = round_to(residual + x, dtype)
    return rms_norm(r, weight, eps, dtype), r


def qk_norm(x: np.ndarray, weight: np.ndarray, eps: float, dtype: Precision = "fp32") -> np.ndarray:
    """Per-head RMSNorm of queries or keys over head_dim, one weight shared by all heads (before RoPE).

    Args:
        x: [T, n, d] projected queries or keys.
        weight: [d].
    Returns:
        [T, n, d].
    """
    return rms_norm(x, weight, eps, dtype)


def rms_norm_cost(tokens: int, width: int, dtype_bytes: int = 2) -> OpCost:
    """Cost of :func:`rms_norm` (also :func:`qk_norm` with width = n·d rows of d): 0 MACs (elementwise)."""
    return OpCost(macs=0, weight_bytes=width * dtype_bytes, act_bytes=2 * tokens * width * dtype_bytes)


def add_rms_norm_cost(tokens: int, width: int, dtype_bytes: int = 2) -> OpCost:
    """Cost of :func:`add_rms_norm`: reads x and residual, writes normed and the new residual."""
    return OpCost(macs=0, weight_bytes=width * dtype_bytes, act_bytes=4 * tokens * width * dtype_bytes)
