"""Next-token selection from logits: greedy, and temperature / top-k / top-p sampling.

Shape legend: V vocabulary.
"""

from __future__ import annotations

import numpy as np

__all__ = ["greedy", "sample"]


def greedy(logits: np.ndarray) -> int:
    """Index of the largest logit (the first one on an exact tie, as ``torch.argmax``).

    Args:
        logits: [V].
    """
    return int(np.argmax(logits))


def sample(
    logits: np.ndarray,
    rng: np.random.Generator,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> int:
    """Draw a token from ``softmax(logits / temperature)`` restricted to top-k, then to the top-p nucleus.

    ``temperature == 0`` is greedy. top-p keeps the smallest set of most likely tokens whose probability
    reaches ``top_p`` (the token that crosses the threshold is kept, so at least one token survives).

    Args:
        logits: [V].
        rng: seeded generator (the only source of randomness).
        temperature: > 0 softens or sharpens; 0 selects greedily.
        top_k: keep the k most likely tokens (None: all).
        top_p: nucleus mass in (0, 1] (None: 1).
    Returns:
        The token id.
    """
    if temperature == 0:
        return greedy(logits)
    z = logits.astype(np.float64) / temperature
    order = np.argsort(-z, kind="stable")  # most likely first
    if top_k is not None:
        order = order[: max(1, top_k)]
    p = np.exp(z[order] - z[order[0]])
    p /= p.sum()
    if top_p is not None and top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(p), top_p) + 1)  # include the token that reaches top_p
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    return int(order[rng.choice(len(order), p=p)])
