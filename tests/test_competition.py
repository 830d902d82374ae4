"""Competition data ([MOE-REPO], [WIN1]) and the score formula."""

from __future__ import annotations

import pytest

from nki_moe.competition import BASELINES, FIRST_PLACE_TRN3, PROMPTS, SEQ_LEN, score, submission_scores


def test_prompts_and_baselines():
    assert [p.context_len for p in PROMPTS] == [18, 126, 43, 10, 402]
    assert [p.generated_tokens for p in PROMPTS] == [622, 514, 597, 630, 238] and SEQ_LEN == 640
    assert [b.latency_ms for b in BASELINES["trn2"]] == [12498, 9432.19, 12089.08, 12868.67, 3041.92]
    assert [b.throughput for b in BASELINES["trn3"]] == [37.87, 52.34, 40.25, 37.93, 168.39]
    for plat in ("trn2", "trn3"):
        assert [b.prompt_id for b in BASELINES[plat]] == [p.id for p in PROMPTS]
        for b in BASELINES[plat]:  # §7.1 [derived]: throughput = 640 / mean e2e s, and p99 >= mean latency
            assert 1.0 <= b.throughput * b.latency_ms / 1e3 / SEQ_LEN < 1.04
    # §7.2: the Trn3 baseline is 1.3-1.4x slower than Trn2 on every prompt
    ratios = [b3.latency_ms / b2.latency_ms for b2, b3 in zip(BASELINES["trn2"], BASELINES["trn3"])]
    assert all(1.27 < r < 1.4 for r in ratios)


def test_score_formula():
    assert score(100.0, 10.0, 100.0, 10.0, 0.0) == 1.0
    assert score(50.0, 20.0, 100.0, 10.0, 0.5) == pytest.approx(2 * 2 * 1.5)
    assert score(50.0, 20.0, 100.0, 10.0, 1.0, accuracy=0) == 0.0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(latency_ms=0.0), "latency_ms"),
        (dict(latency_ms=-5.0), "latency_ms"),
        (dict(throughput=0.0), "throughput"),
        (dict(base_latency_ms=-1.0), "base_latency_ms"),
        (dict(base_throughput=float("nan")), "base_throughput"),
        (dict(nki_mac_ratio=1.5), "nki_mac_ratio"),
        (dict(accuracy=0.5), "accuracy"),
    ],
)
def test_score_rejects_bad_inputs(kwargs, name):
    args = dict(latency_ms=1.0, throughput=1.0, base_latency_ms=1.0, base_throughput=1.0, nki_mac_ratio=0.0)
    with pytest.raises(ValueError, match=name):
        score(**{**args, **kwargs})


def test_first_place_scores_reproduced():
    """The published 1st-place scores follow from their latency/throughput/ratio with plain rounding.

    Unrounded: 35.4753, 33.3850, 35.4789, 34.7358, 28.9677; Python's round(., 2) gives the published
    values, so no special rounding rule (nor a ratio other than the published 0.9929) is needed.
    """
    scores = submission_scores(FIRST_PLACE_TRN3)
    assert [round(s, 2) for s in scores] == list(FIRST_PLACE_TRN3.published_scores)
    assert scores == pytest.approx([35.4753, 33.3850, 35.4789, 34.7358, 28.9677], abs=1e-4)
