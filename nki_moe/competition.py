"""The nki-moe competition (MLSys 2026, Qwen3-30B-A3B): prompts, published baselines, score formula, results.

Sources: [MOE-REPO] ``prompt_data_trn2.csv`` (commit c92219f) and ``prompt_data_trn3.csv``
(commit 097ad9b), the scoring in ``main.py``; [WIN1] the 1st-place Trn3 records (thustorage/NKI-MoE).
Latency is the end-to-end p99 in ms; throughput is the NxDI benchmark throughput in tokens/s
(= 640 / mean e2e seconds in the CSVs, derived).

Token counts: the CSVs' "Context Length" column (18 / 126 / 43 / 10 / 402) counts whitespace-separated
words, not tokens. ``main.py`` tokenizes each prompt with the plain Qwen3 tokenizer (no chat template):
20 / 192 / 54 / 14 / 512 tokens, so the harness generates 620 / 448 / 586 / 626 / 128 tokens to reach
:data:`SEQ_LEN`. Only the token counts give the baselines a uniform cost per generated token (≈ 20 ms on
Trn2, host included); the word counts would put the 1st place's prompt 4 at an impossible 4.3 ms/token
(derived from [MOE-REPO] and [WIN1]). ``Prompt.context_len`` is the token count; the CSV's word count is
kept as ``Prompt.words``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "SEQ_LEN",
    "Prompt",
    "Baseline",
    "Submission",
    "PROMPTS",
    "BASELINES",
    "FIRST_PLACE_TRN3",
    "score",
    "submission_scores",
]

SEQ_LEN = 640  # [MOE-REPO] main.py --seq-len default: every prompt generates until 640 tokens in total


@dataclass(frozen=True)
class Prompt:
    """One competition prompt: its id, context (input) length in tokens, and the CSVs' word count."""

    id: int
    context_len: int  # tokens of the prompt under the Qwen3 tokenizer (what the model runs)
    words: int  # the CSVs' "Context Length": whitespace-separated words ([MOE-REPO]), not tokens
    seq_col: int  # the CSVs' "seq" column; main.py does not read it ([MOE-REPO])

    @property
    def generated_tokens(self) -> int:
        """Tokens generated to reach :data:`SEQ_LEN` (620 for prompt 0)."""
        return SEQ_LEN - self.context_len


@dataclass(frozen=True)
class Baseline:
    """Published baseline of one prompt on one platform."""

    prompt_id: int
    latency_ms: float  # e2e p99
    throughput: float  # tokens/s


@dataclass(frozen=True)
class Submission:
    """Published per-prompt results of one submission (tuples indexed by prompt id)."""

    team: str
    platform: str
    latency_ms: tuple[float, ...]
    throughput: tuple[float, ...]
    nki_mac_ratio: float
    published_scores: tuple[float, ...]


# Token counts: prompts.txt of [MOE-REPO] under the Qwen3 tokenizer (module docstring); words, "seq": the
# [MOE-REPO] prompt_data_trn2.csv / prompt_data_trn3.csv columns "Context Length" and "seq".
PROMPTS = (
    Prompt(0, context_len=20, words=18, seq_col=64),
    Prompt(1, context_len=192, words=126, seq_col=256),
    Prompt(2, context_len=54, words=43, seq_col=128),
    Prompt(3, context_len=14, words=10, seq_col=64),
    Prompt(4, context_len=512, words=402, seq_col=640),
)


def _baselines(*rows: tuple[float, float]) -> tuple[Baseline, ...]:
    """One Baseline per prompt of PROMPTS, in order, from (latency_ms, throughput) rows."""
    return tuple(Baseline(p.id, lat, tput) for p, (lat, tput) in zip(PROMPTS, rows, strict=True))


BASELINES: dict[str, tuple[Baseline, ...]] = {
    # [MOE-REPO] prompt_data_trn2.csv (commit c92219f, 2026-03-05)
    "trn2": _baselines(
        (12498.0, 51.86),
        (9432.19, 70.24),
        (12089.08, 54.40),
        (12868.67, 50.89),
        (3041.92, 217.74),
    ),
    # [MOE-REPO] prompt_data_trn3.csv (commit 097ad9b, 2026-04-15)
    "trn3": _baselines(
        (17138.28, 37.87),
        (12427.41, 52.34),
        (16208.29, 40.25),
        (17177.15, 37.93),
        (3871.62, 168.39),
    ),
}

# [WIN1] thustorage/NKI-MoE, qwen3-30b-a3b-trn3_score_records.csv.
FIRST_PLACE_TRN3 = Submission(
    team="thustorage/NKI-MoE (1st place)",
    platform="trn3",
    latency_ms=(4078.66, 3056.97, 3821.14, 4095.84, 1012.88),
    throughput=(160.43, 215.68, 168.93, 157.64, 640.34),
    nki_mac_ratio=0.9929,
    published_scores=(35.48, 33.38, 35.48, 34.74, 28.97),
)


def _positive(name: str, value: float) -> float:
    """Return value if it is a finite number > 0, else raise ValueError naming the argument."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def score(
    latency_ms: float,
    throughput: float,
    base_latency_ms: float,
    base_throughput: float,
    nki_mac_ratio: float,
    accuracy: float = 1.0,
) -> float:
    """Per-prompt score: accuracy × (base_latency / latency) × (throughput / base_throughput) × (1 + ratio).

    [MOE-REPO] main.py (the (1 + ratio) multiplier since commit 669c355).

    Args:
        latency_ms: e2e p99 latency of the submission, ms (> 0).
        throughput: submission throughput, tokens/s (> 0).
        base_latency_ms: baseline latency of the same prompt, ms (> 0).
        base_throughput: baseline throughput, tokens/s (> 0).
        nki_mac_ratio: share of matmul MACs inside NKI kernels, in [0, 1].
        accuracy: 1 if the output passed the accuracy check, else 0.
    Returns:
        The (unrounded) score; a baseline run without NKI scores 1.
    """
    latency_ms = _positive("latency_ms", latency_ms)
    throughput = _positive("throughput", throughput)
    base_latency_ms = _positive("base_latency_ms", base_latency_ms)
    base_throughput = _positive("base_throughput", base_throughput)
    if not 0.0 <= nki_mac_ratio <= 1.0:
        raise ValueError(f"nki_mac_ratio must be in [0, 1], got {nki_mac_ratio!r}")
    if accuracy not in (0, 1):
        raise ValueError(f"accuracy must be 0 or 1, got {accuracy!r}")
    return accuracy * (base_latency_ms / latency_ms) * (throughput / base_throughput) * (1.0 + nki_mac_ratio)


def submission_scores(sub: Submission) -> list[float]:
    """Scores of every prompt of ``sub`` against the published baselines of its platform (unrounded)."""
    base = BASELINES[sub.platform]
    return [
        score(lat, tput, b.latency_ms, b.throughput, sub.nki_mac_ratio)
        for lat, tput, b in zip(sub.latency_ms, sub.throughput, base, strict=True)
    ]
