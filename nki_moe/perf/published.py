"""Published model-level decode measurements of Qwen3-30B-A3B on one chip ([SNU], [MEGA], [MEGA-CC]).

Data only: every point is a measured time per generated token at batch 1, quoted with its source tag.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MeasuredDecode",
    "QWEN3_DECODE_MEASURED",
    "MeasuredLayer",
    "QWEN3_LAYER_MEASURED",
    "layer_step_ms",
]


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


@dataclass(frozen=True)
class MeasuredLayer:
    """One published per-layer (or per-kernel) decode figure of Qwen3-30B-A3B at batch 1, TP=4, one chip."""

    hardware: str  # "trn2" | "trn3"
    part: str  # "attention" | "moe" | "allreduce" | "layer" | "after_layers" | "framework"
    label: str
    us: float  # µs per layer (per call for an all-reduce; per step for after_layers / framework)
    source: str
    note: str = ""


# Measured by third parties (not by this repository); the cost model's own fused kernels are NOT these
# kernels, so these are data for comparison, not calibration points (docs/cost-model.md, "Published layer
# figures").
QWEN3_LAYER_MEASURED = (
    # Trn2 XLA baseline decode step 10.6 ms = 48 × (attention 55 + MoE 103 + 2 × 12 µs all-reduce)
    #   + ≈ 550 µs after the layers + ≈ 1.26 ms framework
    MeasuredLayer("trn2", "attention", "XLA baseline attention", 55.0, "[MEGA-CC] docs/winning_strategy.md"),
    MeasuredLayer("trn2", "moe", "XLA baseline MoE", 103.0, "[MEGA-CC] docs/winning_strategy.md"),
    MeasuredLayer(
        "trn2", "allreduce", "all-reduce (×2 per layer)", 12.0, "[MEGA-CC] docs/winning_strategy.md"
    ),
    MeasuredLayer(
        "trn2",
        "after_layers",
        "after the 48 layers (norm, LM head)",
        550.0,
        "[MEGA-CC] docs/winning_strategy.md",
        "per step",
    ),
    MeasuredLayer(
        "trn2", "framework", "framework overhead", 1260.0, "[MEGA-CC] docs/winning_strategy.md", "per step"
    ),
    # Trn3 (KevGomes megakernel README): wall time per decode layer, XLA + NKI MoE → full megakernel
    MeasuredLayer(
        "trn3", "layer", "XLA + nkilib MoE layer", 165.26, "[MEGA] megakernels/qwen3_moe/README.md"
    ),
    MeasuredLayer("trn3", "layer", "NKI megakernel layer", 134.47, "[MEGA] megakernels/qwen3_moe/README.md"),
    MeasuredLayer("trn3", "moe", "fused MoE TKG FP8 (K13c)", 89.80, "[MEGA] OPTIMIZATION_LOG_TRN3.md"),
    MeasuredLayer("trn3", "moe", "fused MoE TKG MXFP4 (v15c)", 72.88, "[MEGA] trn3_round_2_report.md"),
    MeasuredLayer("trn3", "attention", "attention TKG v13bc (K15b)", 53.71, "[MEGA] trn3_round_2_report.md"),
)


def layer_step_ms(hardware: str = "trn2", layers: int = 48) -> float:
    """The published per-layer decomposition of a decode step put back together, ms (derived):
    layers × (attention + MoE + 2 all-reduces) + after-layers + framework."""
    if hardware != "trn2":
        raise ValueError(f"only the trn2 step is published as a per-layer decomposition, not {hardware!r}")
    by = {m.part: m.us for m in QWEN3_LAYER_MEASURED if m.hardware == hardware}
    return (
        layers * (by["attention"] + by["moe"] + 2 * by["allreduce"]) + by["after_layers"] + by["framework"]
    ) / 1e3
