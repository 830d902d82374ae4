"""Parameter, byte, MAC and intensity counts against exact values derived from [QWEN3-CONFIG]."""

from __future__ import annotations

import math

import pytest

from nki_moe.model import counts
from nki_moe.model.config import get_config

REAL = get_config("qwen3-30b-a3b")
TINY = get_config("tiny")


def test_total_and_active_params():
    assert counts.total_params(REAL) == 30_532_122_624
    assert counts.active_params(REAL) == 3_353_032_704
    parts = counts.param_breakdown(REAL)
    assert parts["experts"] == 28_991_029_248
    assert parts["attention_proj"] == 48 * 18_874_368
    assert counts.total_params(REAL) - parts["embed_tokens"] - parts["lm_head"] == 29_909_792_768
    assert counts.active_params(REAL) - parts["embed_tokens"] == 3_041_867_776
    assert counts.total_params(TINY) == 625_408  # as transformers counts it ([HF-QWEN3MOE])
    two = get_config("real-width-2layer")
    assert (counts.total_params(two) - 2 * 311_164_928 - 2048) // 2 == 623_120_640  # per layer, §4 / §6.3


@pytest.mark.parametrize("name", ["tiny", "qwen3-30b-a3b"])
def test_matches_transformers_model(name):
    """Built on the meta device (no memory), the HF model has exactly total_params parameters (~3 s)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = get_config(name)
    with torch.device("meta"):
        model = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig.from_dict(cfg.to_hf_dict()))
    assert sum(p.numel() for p in model.parameters()) == counts.total_params(cfg)


def test_kv_cache_bytes():
    assert counts.kv_cache_bytes_per_token(REAL) == 98_304
    assert counts.kv_cache_bytes_per_token(REAL, dtype_bytes=1) == 49_152


def test_macs():
    assert counts.decode_macs(REAL, 1) == 3_041_656_832 + 393_216
    for t in (1, 18, 640, 40960):
        assert counts.decode_macs(REAL, t) == 3_041_656_832 + 393_216 * t
    s = 128
    assert counts.prefill_macs(REAL, s) == 3_041_656_832 * s + 393_216 * s * (s + 1) // 2
    assert counts.prefill_macs(REAL, s) == 392_578_465_792  # §5 table: 392.6 G
    assert counts.prefill_macs(REAL, s, last_token_logits_only=True) == (
        counts.prefill_macs(REAL, s) - (s - 1) * 311_164_928
    )
    assert round(counts.prefill_macs(REAL, 2048, True) / 1e12, 3) == 6.417  # §5 table
    assert counts.prefill_macs(REAL, 4, cached=10) == 3_041_656_832 * 4 + 393_216 * (40 + 10)
    assert counts.prefill_macs(REAL, 1) == counts.decode_macs(REAL, 1)
    with pytest.raises(ValueError, match="context"):
        counts.decode_macs(REAL, 0)
    with pytest.raises(ValueError, match="seq_len"):
        counts.prefill_macs(REAL, 0)


def test_expected_distinct_experts():
    assert counts.expected_distinct_experts(REAL, 0) == 0
    assert counts.expected_distinct_experts(REAL, 1) == pytest.approx(8)
    assert counts.expected_distinct_experts(REAL, 18) == pytest.approx(128 * (1 - (15 / 16) ** 18))
    assert counts.expected_distinct_experts(REAL, 183) > 127.999
    assert counts.expected_distinct_experts(TINY, 1) == pytest.approx(2)


def test_decode_bytes():
    w = counts.decode_weight_bytes(REAL)
    assert tuple(w) == counts.OP_FAMILIES
    assert w == {
        "attention": 1_811_939_328,
        "router": 25_165_824,
        "experts": 3_623_878_656,
        "lm_head": 622_329_856,
        "norms_embedding": 425_984,
    }
    assert sum(w.values()) == 6_083_739_648
    # derived napkin figure: experts + attention + lm_head ≈ 6.05 GB (router and norms omitted)
    assert (w["experts"] + w["attention"] + w["lm_head"]) / 1e9 == pytest.approx(6.05, rel=2e-3)
    # derived from [QWEN3-CONFIG]: ≈ active params without the embedding table × 2 B
    assert sum(w.values()) == 2 * (3_041_867_776 + 2048)
    assert sum(counts.decode_weight_bytes(REAL, dtype_bytes=1).values()) == 6_083_739_648 // 2
    full = counts.decode_bytes(REAL, 640)
    assert full["kv_cache"] == 640 * 98_304 and sum(full.values()) == 6_083_739_648 + 640 * 98_304


def test_prefill_bytes():
    one = counts.prefill_weight_bytes(REAL, 1)
    assert one == pytest.approx(counts.decode_weight_bytes(REAL))
    big = counts.prefill_weight_bytes(REAL, 640)
    assert big["experts"] == pytest.approx(48 * 128 * 3 * 2048 * 768 * 2)  # every expert, 57.98 GB
    assert counts.prefill_bytes(REAL, 640)["kv_cache"] == 640 * 98_304


def test_arithmetic_intensity():
    ai_decode = counts.decode_arithmetic_intensity(REAL, 1)
    assert ai_decode == pytest.approx(2 * 3_041_656_832 * (1 + 393_216 / 3_041_656_832) / 6_083_837_952)
    assert ai_decode == pytest.approx(1.0, abs=1e-3)
    ai = [counts.prefill_arithmetic_intensity(REAL, s) for s in (1, 18, 126, 402, 640)]
    assert ai == sorted(ai) and ai[0] == pytest.approx(ai_decode)
    s = 640
    flops = 2 * counts.prefill_macs(REAL, s, last_token_logits_only=True)
    nbytes = sum(counts.prefill_bytes(REAL, s).values())
    assert ai[-1] == pytest.approx(flops / nbytes) and 60 < ai[-1] < 61
    assert math.isclose(
        counts.prefill_arithmetic_intensity(REAL, s, last_token_logits_only=False),
        2 * counts.prefill_macs(REAL, s) / nbytes,
    )


def test_counts_reject_dense_layers():
    with pytest.raises(ValueError, match="mlp_only_layers"):
        counts.total_params(REAL.replace(mlp_only_layers=(0,)))
