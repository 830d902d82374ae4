"""Run transformers' own ``Qwen3MoeForCausalLM`` on a checkpoint directory: the independent side of parity.

Shape legend: S prompt tokens, N decode steps, V vocab, L layers, k top-k.
The model is loaded through transformers' loader from the same files our loader reads, with the eager
attention and the eager (per-expert loop) experts implementation pinned ([HF-QWEN3MOE]), offline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["GreedyRun", "load_hf_model", "hf_greedy"]

_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class GreedyRun:
    """Prefill + greedy decode of one prompt.

    Attributes:
        tokens: [N] generated ids (the first one comes from the prefill's last position).
        logits: [N, V] float32 logits that chose each generated token (prefill last position first).
        prefill_logits: [S, V] float32 logits of every prompt position.
        routing: [L] arrays [S + N - 1, k] of selected experts per token (sorted ascending per row), for the
            prompt tokens and every generated token that was fed back.
    """

    tokens: np.ndarray
    logits: np.ndarray
    prefill_logits: np.ndarray
    routing: list[np.ndarray]


def load_hf_model(path: str | Path, dtype: str = "bf16") -> torch.nn.Module:
    """``Qwen3MoeForCausalLM.from_pretrained`` with eager attention and experts, no network access.

    Args:
        path: checkpoint directory (config.json + safetensors).
        dtype: ``"bf16"`` or ``"fp32"``.
    Returns:
        The model in eval mode.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import Qwen3MoeForCausalLM

    model = Qwen3MoeForCausalLM.from_pretrained(
        str(path), dtype=_DTYPES[dtype], attn_implementation="eager", experts_implementation="eager"
    )
    return model.eval()


def hf_greedy(model: torch.nn.Module, prompt: np.ndarray, steps: int) -> GreedyRun:
    """Prefill ``prompt`` (all-position logits) then ``steps - 1`` greedy decode steps with HF's KV cache.

    Args:
        model: from :func:`load_hf_model`.
        prompt: [S] token ids.
        steps: N >= 1 tokens to generate.
    Returns:
        A :class:`GreedyRun`.
    """
    captured: list[list[np.ndarray]] = [[] for _ in model.model.layers]

    def hook(layer: int):
        def fn(_module, _inputs, output):  # Qwen3MoeTopKRouter returns (logits, weights, indices)
            captured[layer].append(np.sort(output[2].cpu().numpy(), axis=-1))

        return fn

    handles = [lyr.mlp.gate.register_forward_hook(hook(i)) for i, lyr in enumerate(model.model.layers)]
    try:
        with torch.inference_mode():
            out = model(
                torch.as_tensor(np.asarray(prompt)[None, :], dtype=torch.long),
                use_cache=True,
                logits_to_keep=0,
            )
            prefill = out.logits[0].float().numpy()
            cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
            logits = [prefill[-1]]
            tokens = [int(np.argmax(prefill[-1]))]
            for _ in range(steps - 1):
                out = model(torch.tensor([[tokens[-1]]]), cache=cache, use_cache=True)
                cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
                logits.append(out.logits[0, -1].float().numpy())
                tokens.append(int(np.argmax(logits[-1])))
    finally:
        for h in handles:
            h.remove()
    return GreedyRun(
        tokens=np.array(tokens),
        logits=np.stack(logits),
        prefill_logits=prefill,
        routing=[np.concatenate(c) for c in captured],
    )
