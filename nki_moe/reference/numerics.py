"""Precision modes, bf16 rounding, the projection primitive and the per-op cost record.

Every reference op computes in fp32 (NumPy matmuls accumulate in fp32). In ``"bf16"`` mode an op also
rounds its result to bf16 at exactly the places Hugging Face transformers does when the model runs in
bfloat16 (each torch op on bf16 tensors returns a bf16 tensor); the values stay stored as float32 arrays
that happen to be bf16-representable. ``"fp32"`` mode never rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import ml_dtypes
import numpy as np

__all__ = ["Precision", "PRECISIONS", "round_to", "linear", "linear_cost", "OpCost"]

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16")


def round_to(x: np.ndarray, dtype: Precision) -> np.ndarray:
    """Return ``x`` as float32, rounded to the nearest bf16 value (ties to even) when ``dtype == "bf16"``."""
    if dtype == "bf16":
        return x.astype(ml_dtypes.bfloat16).astype(np.float32)
    if dtype != "fp32":
        raise ValueError(f"dtype must be one of {PRECISIONS}, got {dtype!r}")
    return x if x.dtype == np.float32 else x.astype(np.float32)


def linear(x: np.ndarray, w: np.ndarray, dtype: Precision = "fp32") -> np.ndarray:
    """A bias-free projection ``x @ w``, accumulated in fp32 (the kernels' layout: contraction on rows).

    ``torch.nn.functional.linear(x, W)`` with the Hugging Face [N, K] weight ``W`` is ``linear(x, W.T)``;
    pass the transposed view, not a copy (the same BLAS call, so the same bits).

    Args:
        x: [..., K] activations.
        w: [K, N] weight, [in_features, out_features].
        dtype: rounding mode of the result.
    Returns:
        [..., N] float32.
    """
    return round_to(x @ w, dtype)  # [..., K] @ [K, N]


@dataclass(frozen=True)
class OpCost:
    """Work of one op: matmul MACs and the bytes it moves.

    ``macs`` counts multiply-adds done as matrix products only (what a tensor engine does); elementwise
    work (norms, RoPE, softmax, SiLU, top-k) is 0 here, matching the convention of
    ``nki_moe.model.counts``. ``weight_bytes`` are parameter bytes read once;
    ``act_bytes`` are activation / KV-cache bytes read plus written.
    """

    macs: int
    weight_bytes: int
    act_bytes: int

    @property
    def bytes(self) -> int:
        """All bytes moved: weights plus activations."""
        return self.weight_bytes + self.act_bytes

    def __add__(self, other: OpCost) -> OpCost:
        return OpCost(
            self.macs + other.macs, self.weight_bytes + other.weight_bytes, self.act_bytes + other.act_bytes
        )


def linear_cost(tokens: int, in_features: int, out_features: int, dtype_bytes: int = 2) -> OpCost:
    """Cost of :func:`linear` on ``tokens`` rows: T·K·N MACs, N·K weights, T·(K+N) activations."""
    return OpCost(
        macs=tokens * in_features * out_features,
        weight_bytes=in_features * out_features * dtype_bytes,
        act_bytes=tokens * (in_features + out_features) * dtype_bytes,
    )
