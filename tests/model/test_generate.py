"""Generation loop: cached decode equals uncached recomputation; timing, eos and sampling behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from nki_moe.model.checkpoint import write_random_checkpoint
from nki_moe.model.generate import generate
from nki_moe.model.weights import Checkpoint
from nki_moe.reference import ReferenceModel


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return ReferenceModel(Checkpoint(write_random_checkpoint("tiny", tmp_path_factory.mktemp("gen"), seed=3)))


def test_cached_decode_equals_full_recompute(model):
    prompt = np.array([7, 1, 300, 45, 2])
    res = generate(model, prompt, 8, keep_routing=True)
    for i in range(8):
        ids = np.concatenate([prompt, res.tokens[:i]])
        logits, _ = model.forward(ids)  # no cache: every position recomputed
        np.testing.assert_allclose(res.logits[i], logits[-1], rtol=1e-5, atol=1e-6)
        assert res.tokens[i] == np.argmax(logits[-1])
    assert res.ttft_s > 0 and res.decode_s > 0 and res.decode_tokens_per_s > 0
    assert [r.shape for r in res.routing] == [(5 + 7, 2)] * 2


def test_eos_stops_and_sampling_is_seeded(model):
    prompt = np.array([9, 9, 9])
    greedy = generate(model, prompt, 6)
    stopped = generate(model, prompt, 6, eos_token_id=int(greedy.tokens[2]))
    assert len(stopped.tokens) <= 3 and stopped.tokens[-1] == greedy.tokens[2]
    a = generate(model, prompt, 6, temperature=1.0, top_p=0.9, seed=5, keep_logits=False)
    b = generate(model, prompt, 6, temperature=1.0, top_p=0.9, seed=5, keep_logits=False)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert a.logits.size == 0
    with pytest.raises(ValueError):
        generate(model, np.array([], dtype=np.int64), 3)
