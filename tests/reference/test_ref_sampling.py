"""Greedy and top-k / top-p sampling."""

from __future__ import annotations

import numpy as np

from nki_moe.reference import greedy, sample


def test_greedy_takes_first_of_ties():
    assert greedy(np.array([0.0, 2.0, 2.0, 1.0])) == 1


def test_degenerate_settings_are_greedy():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(1000).astype(np.float32)
    best = greedy(logits)
    assert all(sample(logits, rng, temperature=0.0) == best for _ in range(5))
    assert all(sample(logits, rng, top_k=1) == best for _ in range(5))
    assert all(sample(logits, rng, top_p=1e-9) == best for _ in range(5))


def test_top_k_and_top_p_restrict_support_and_match_probabilities():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(1)
    draws = np.array([sample(logits, rng, top_k=2) for _ in range(4000)])
    assert set(draws) == {0, 1}
    np.testing.assert_allclose(np.mean(draws == 0), 0.5 / 0.8, atol=0.03)
    # nucleus 0.85: 0.5 + 0.3 < 0.85, so the token that crosses it (0.15) is kept, the 0.05 one is not
    draws = np.array([sample(logits, rng, top_p=0.85) for _ in range(4000)])
    assert set(draws) == {0, 1, 2}
    np.testing.assert_allclose(np.bincount(draws) / 4000, np.array([0.5, 0.3, 0.15]) / 0.95, atol=0.03)


def test_sampling_is_deterministic_per_seed_and_temperature_sharpens():
    logits = np.random.default_rng(2).standard_normal(50)
    a = [sample(logits, np.random.default_rng(9), temperature=0.7) for _ in range(3)]
    b = [sample(logits, np.random.default_rng(9), temperature=0.7) for _ in range(3)]
    assert a == b
    rng = np.random.default_rng(3)
    cold = np.mean([sample(logits, rng, temperature=0.05) == greedy(logits) for _ in range(300)])
    hot = np.mean([sample(logits, rng, temperature=5.0) == greedy(logits) for _ in range(300)])
    assert cold > 0.9 > 0.3 > hot
