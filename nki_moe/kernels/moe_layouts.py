"""Host-side expert weight layouts for the MoE decode kernels (pure NumPy, once per weight at load time).

quantize_experts_fp8(w_gate_up, w_down)  bf16 experts -> float8_e4m3 weights + per-channel fp32 scales for
                                         ``moe_decode_fp8`` (a numerics change: bytes halved)
dequantize_experts_fp8(...)              the fp32 weights those fp8 values and scales stand for
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

__all__ = ["FP8", "FP8_MAX", "scale_chunks", "quantize_experts_fp8", "dequantize_experts_fp8"]

FP8 = ml_dtypes.float8_e4m3  # Neuron's e4m3 (nl.float8_e4m3): largest finite value 240
FP8_MAX = float(ml_dtypes.finfo(FP8).max)
P = 128


def scale_chunks(inter: int) -> list[tuple[int, int]]:
    """(first row, rows) of the <=128-row chunks of the intermediate dim (the kernels' ``i_chunks``)."""
    return [(i0, min(P, inter - i0)) for i0 in range(0, inter, P)]


def quantize_experts_fp8(
    w_gate_up: np.ndarray, w_down: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel fp8: gate/up columns (their output channels) and down rows (its input channels) scaled to
    the fp8 range, so every scale lands on the partition of its intermediate row in the kernel.

    Args:
        w_gate_up: [E, H, 2I]; w_down: [E, I, H] (bf16 or fp32).
    Returns:
        (gate_up [E, H, 2I] fp8, down [E, I, H] fp8, scales [E, 128, 3, C] fp32): scales[e, p, k, c] is the
        scale of row i0_c + p of chunk c for k = gate, up, down; a chunk of <= 64 rows is also written at
        partitions 64 + p (``moe_decode_v4`` alternates such a chunk between both halves).
    """
    E, H, I2 = w_gate_up.shape
    inter = I2 // 2
    chunks = scale_chunks(inter)
    gu_q = np.empty((E, H, I2), FP8)
    dn_q = np.empty((E, inter, H), FP8)
    scales = np.zeros((E, P, 3, len(chunks)), np.float32)
    for e in range(E):  # one expert at a time: TP = 1 holds 1.2 GB of bf16 experts
        gu = w_gate_up[e].astype(np.float32)
        dn = w_down[e].astype(np.float32)
        s_gu = np.maximum(np.abs(gu).max(axis=0), 1e-30) / FP8_MAX  # [2I]
        s_dn = np.maximum(np.abs(dn).max(axis=1), 1e-30) / FP8_MAX  # [I]
        gu_q[e] = gu / s_gu
        dn_q[e] = dn / s_dn[:, None]
        per_row = np.stack([s_gu[:inter], s_gu[inter:], s_dn])  # [3, I]
        for c, (i0, isz) in enumerate(chunks):
            for p0 in (0, 64) if isz <= 64 else (0,):
                scales[e, p0 : p0 + isz, :, c] = per_row[:, i0 : i0 + isz].T
    return gu_q, dn_q, scales


def dequantize_experts_fp8(
    gu_q: np.ndarray, dn_q: np.ndarray, scales: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The fp32 [E, H, 2I] and [E, I, H] weights that :func:`quantize_experts_fp8`'s output represents."""
    inter = dn_q.shape[1]
    per_row = np.zeros((dn_q.shape[0], 3, inter), np.float32)
    for c, (i0, isz) in enumerate(scale_chunks(inter)):
        per_row[:, :, i0 : i0 + isz] = scales[:, :isz, :, c].transpose(0, 2, 1)
    s_gu = np.concatenate([per_row[:, 0], per_row[:, 1]], axis=1)  # [E, 2I]
    return gu_q.astype(np.float32) * s_gu[:, None, :], dn_q.astype(np.float32) * per_row[:, 2, :, None]
