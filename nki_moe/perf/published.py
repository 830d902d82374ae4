"""Published model-level decode measurements of Qwen3-30B-A3B on one chip ([SNU], [MEGA]).

Data only: every point is a measured time per generated token at batch 1, quoted with its source tag.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MeasuredDecode", "QWEN3_DECODE_MEASURED"]


@dataclass(frozen=True)
class MeasuredDecode:
    """One published decode (token-generation, TKG) step time of Qwen3-30B-A3B at batch 1 on one chip."""

    hardware: str  # "trn2" | "trn3"
    label: str
    ms_per_token: float
    source: str


QWEN3_DECODE_MEASURED = (
    # NxDI XLA baseline, TP=4, LNC=2, prompt 0: TKG avg 10.56 ms (p50 10.55, p99 10.97)
    MeasuredDecode(
        "trn2", "XLA TKG (NxDI baseline)", 10.56, "[SNU] analysis/deep_profile_baseline/prompt0/report.json"
    ),
    # XLA, 640 output tokens: TKG p50 14.37 ms
    MeasuredDecode("trn3", "XLA TKG", 14.37, "[MEGA] megakernels/qwen3_moe/README.md"),
    # full 48-layer NKI megakernel: 8.15 ms (1.76x XLA)
    MeasuredDecode("trn3", "NKI megakernel", 8.15, "[MEGA] megakernels/qwen3_moe/README.md"),
)
