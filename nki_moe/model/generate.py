"""Generation with the NumPy reference model: prefill, then one token at a time against the KV cache.

Any model with the reference's ``cfg``, ``new_cache`` and ``forward`` runs too (the kernel-assembled
``nki_moe.model.assembled.KernelModel``).

Shape legend: S prompt tokens, N new tokens, V vocab, L layers, k top-k.
Reports time to first token (the prefill plus choosing the first token) and decode tokens/s (the N − 1
steps after it), the two numbers the competition scores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from nki_moe.reference.model import ReferenceModel
from nki_moe.reference.sampling import greedy, sample

__all__ = ["GenerationResult", "generate"]


@dataclass
class GenerationResult:
    """Output of :func:`generate`.

    Attributes:
        tokens: [N] generated ids (stops early at eos).
        logits: [N, V] logits that produced each token (empty when not kept).
        routing: per layer [S + N − 1, k] selected experts, sorted ascending per row (empty when not kept).
        ttft_s: prefill + first token, seconds.
        decode_s: the remaining steps, seconds.
    """

    tokens: np.ndarray
    logits: np.ndarray
    ttft_s: float
    decode_s: float
    routing: list[np.ndarray] = field(default_factory=list)

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens per second over the decode steps (excluding the first token); 0 with a single token."""
        steps = len(self.tokens) - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else 0.0


def generate(
    model: ReferenceModel,
    prompt: np.ndarray,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    eos_token_id: int | None = None,
    keep_logits: bool = True,
    keep_routing: bool = False,
) -> GenerationResult:
    """Generate up to ``max_new_tokens`` tokens after ``prompt``.

    Args:
        model: the reference model, or any model with its ``cfg``, ``new_cache`` and ``forward``
            (``nki_moe.model.assembled.KernelModel``).
        prompt: [S] token ids, S >= 1.
        max_new_tokens: N >= 1.
        temperature: 0 is greedy; otherwise sampling with ``top_k`` / ``top_p`` from a generator seeded
            with ``seed``.
        eos_token_id: stop after generating it (None: never stop early).
        keep_logits: return the [N, V] logits.
        keep_routing: return each layer's expert choices.
    Returns:
        A :class:`GenerationResult`.
    """
    prompt = np.asarray(prompt, dtype=np.int64).reshape(-1)
    if prompt.size == 0 or max_new_tokens < 1:
        raise ValueError("need a non-empty prompt and max_new_tokens >= 1")
    rng = np.random.default_rng(seed)

    def pick(logits: np.ndarray) -> int:
        return greedy(logits) if temperature == 0 else sample(logits, rng, temperature, top_k, top_p)

    cache = model.new_cache(capacity=prompt.size + max_new_tokens)
    routing: list[list[np.ndarray]] = [[] for _ in range(model.cfg.num_hidden_layers)]

    def step(ids: np.ndarray) -> np.ndarray:
        logits, layers = model.forward(ids, cache, last_only=True)
        if keep_routing:
            for i, r in enumerate(layers):
                routing[i].append(np.sort(r.idx, axis=-1))
        return logits[-1]

    t0 = time.perf_counter()
    logits = [step(prompt)]
    tokens = [pick(logits[-1])]
    t1 = time.perf_counter()
    while len(tokens) < max_new_tokens and tokens[-1] != eos_token_id:
        logits.append(step(np.array([tokens[-1]])))
        tokens.append(pick(logits[-1]))
    t2 = time.perf_counter()
    return GenerationResult(
        tokens=np.array(tokens, dtype=np.int64),
        logits=np.stack(logits) if keep_logits else np.empty((0, 0), np.float32),
        ttft_s=t1 - t0,
        decode_s=t2 - t1,
        routing=[np.concatenate(r) for r in routing] if keep_routing else [],
    )
