"""Write a random-weight Hugging Face Qwen3-MoE checkpoint directory for any named config.

The directory holds config.json (the 4.51 layout of ``ModelConfig.to_hf_dict``) and bf16 safetensors in
the on-disk Hub layout (per-expert 2-D tensors), sharded with model.safetensors.index.json when larger
than ``max_shard_bytes``. Both our loader and transformers' ``from_pretrained`` read it.

Initialisation (deterministic from ``seed``; each tensor has its own child seed, so the values do not
depend on the sharding):
- projections, embeddings and lm_head N(0, std²) with std 0.02, as HF's ``_init_weights``;
- norm weights 1 + N(0, 0.1²), so a reference that forgot a norm weight would be caught;
- a router that routes decisively. With i.i.d. router weights the gap between a token's k-th and
  (k+1)-th router logit is a continuous random variable with density at 0, so over enough tokens some
  gaps fall within bf16 noise and top-k flips between two correct implementations (docs/reference-model.md);
  scaling the router does not help, because bf16 noise scales with the logits. Instead routing is made a
  function of a discrete code: the embedding carries, in r = ceil(log2(E/k)) reserved hidden dims, a ±c
  code selecting one of E/k expert groups (k experts each, a different random partition per layer).
  o_proj and every expert's down_proj have zero rows for those dims, so the residual stream keeps the
  code unchanged through all layers; the router row of an expert in group g is
  ``router_scale·(code_g + router_spread·n_e)`` on the reserved dims plus small dense noise on the rest
  (so every router column is exercised). Two different codes differ in at least one ±1 sign, so the
  selected group leads the next by about 2/r of the logit scale: a margin of many bf16 ulps for every
  token. ``nki_moe.reference.topk_margin`` measures it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from nki_moe.model.config import ModelConfig, get_config
from nki_moe.model.weights import INDEX_NAME, SINGLE_NAME, expected_tensors

__all__ = ["write_random_checkpoint", "init_tensor", "routing_plan", "RoutingPlan"]

_TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class RoutingPlan:
    """The discrete routing structure of a random checkpoint (see the module docstring).

    Attributes:
        dims: [r] reserved hidden dims carrying the code.
        codes: [G, r] ±1 code of each expert group (G = E/k).
        token_group: [V] group of each token id.
        members: [L, E] group of each expert in each layer.
    """

    dims: np.ndarray
    codes: np.ndarray
    token_group: np.ndarray
    members: np.ndarray


@functools.lru_cache(maxsize=8)
def routing_plan(cfg: ModelConfig, seed: int) -> RoutingPlan:
    """The routing plan of the checkpoint written for (cfg, seed)."""
    E, k = cfg.num_experts, cfg.num_experts_per_tok
    groups = max(2, E // k)
    r = int(np.ceil(np.log2(groups)))
    rng = np.random.default_rng([seed, 7])
    dims = np.sort(rng.choice(cfg.hidden_size, size=r, replace=False))
    bits = (np.arange(groups)[:, None] >> np.arange(r)[None, :]) & 1  # distinct binary patterns
    codes = (2.0 * bits - 1.0).astype(np.float32)
    token_group = rng.integers(0, groups, size=cfg.vocab_size)
    members = np.stack([rng.permutation(E) % groups for _ in range(cfg.num_hidden_layers)])
    return RoutingPlan(dims=dims, codes=codes, token_group=token_group, members=members)


_POOL_SIZE = 1 << 26  # 64 Mi normals (256 MiB)


@functools.lru_cache(maxsize=1)
def _normal_pool(seed: int) -> np.ndarray:
    """A pool of N(0, 1) float32 values shared by all large tensors of a checkpoint."""
    return np.random.default_rng([seed, 11]).standard_normal(_POOL_SIZE, dtype=np.float32)


def _normal_pool_draw(seed: int, rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """N(0, std²) values of ``shape`` scaled from random windows of the pool.

    Drawing ~1.8 G fresh normals for a real-width checkpoint takes ~20 s on a 2-core machine; windows at
    random (non-aligned) offsets of one 64 Mi pool take ~2 s. Each tensor still gets its own values: two
    tensors share a window only by chance, and never row-aligned in practice.
    """
    pool, n = _normal_pool(seed), int(np.prod(shape))
    out = np.empty(n, np.float32)
    for start in range(0, n, _POOL_SIZE // 2):
        size = min(_POOL_SIZE // 2, n - start)
        offset = int(rng.integers(0, _POOL_SIZE - size + 1))
        np.multiply(pool[offset : offset + size], np.float32(std), out=out[start : start + size])
    return out.reshape(shape)


def init_tensor(
    cfg: ModelConfig,
    key: str,
    shape: tuple[int, ...],
    seed: int,
    std: float = 0.02,
    code_scale: float = 1.0,
    router_scale: float = 2.0,
    router_spread: float = 0.05,
    router_dense: float = 0.05,
) -> np.ndarray:
    """The float32 initial value of one checkpoint tensor (scheme in the module docstring).

    Args:
        cfg: model config.
        key: on-disk key.
        shape: its shape.
        seed: checkpoint seed.
        std: std of projections, embeddings and lm_head.
        code_scale: c, magnitude of the routing code in the embedding.
        router_scale: router weight on the code dims.
        router_spread: per-expert variation on the code dims, relative (sets how unequal the k routing
            weights of a token are).
        router_dense: std·√H of the router's dense noise on the other dims.
    Returns:
        float32 array of ``shape``.
    """
    # a child seed per key: values are independent of generation order and sharding
    rng = np.random.default_rng([seed, int.from_bytes(key.encode(), "little") % (2**63)])
    plan = routing_plan(cfg, seed)
    if key.endswith("norm.weight"):
        return (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    if key.endswith("mlp.gate.weight"):
        E, H = shape
        w = rng.standard_normal((E, H), dtype=np.float32) * np.float32(router_dense / np.sqrt(H))
        layer = int(key.split(".")[2])
        spread = router_spread * rng.standard_normal((E, len(plan.dims)), dtype=np.float32)
        w[:, plan.dims] = router_scale * (plan.codes[plan.members[layer]] + spread)
        return w
    w = _normal_pool_draw(seed, rng, shape, std)
    if key == "model.embed_tokens.weight":
        w[:, plan.dims] = code_scale * plan.codes[plan.token_group]
    elif key.endswith(("self_attn.o_proj.weight", "down_proj.weight")):
        w[plan.dims, :] = 0.0  # blocks never write the code dims: the residual keeps the code
    return w


def _plan_shards(sizes: dict[str, int], max_shard_bytes: int | None) -> list[list[str]]:
    """Group keys (in order) into shards of at most ``max_shard_bytes`` (a single oversized tensor alone)."""
    shards: list[list[str]] = [[]]
    used = 0
    for key, size in sizes.items():
        if max_shard_bytes is not None and shards[-1] and used + size > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += size
    return shards


def write_random_checkpoint(
    cfg: ModelConfig | str,
    out_dir: str | Path,
    seed: int = 0,
    max_shard_bytes: int | None = 2**30,
    **init_kwargs: float,
) -> Path:
    """Write config.json + random safetensors for ``cfg`` into ``out_dir`` (created if needed).

    Memory stays at about one shard: tensors are generated shard by shard.

    Args:
        cfg: a config or a name for :func:`nki_moe.model.config.get_config`.
        out_dir: target directory.
        seed: weights are a deterministic function of (cfg, seed).
        max_shard_bytes: shard size limit; None writes a single model.safetensors.
        init_kwargs: forwarded to :func:`init_tensor` (``std``, ``code_scale``, ``router_*``).
    Returns:
        The directory path.
    """
    cfg = get_config(cfg) if isinstance(cfg, str) else cfg
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch_dtype = _TORCH_DTYPES[cfg.dtype]
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    shapes = expected_tensors(cfg)
    sizes = {k: int(np.prod(s)) * itemsize for k, s in shapes.items()}
    shards = _plan_shards(sizes, max_shard_bytes)
    names = (
        [SINGLE_NAME]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for name, keys in zip(names, shards):
        tensors = {
            k: torch.from_numpy(init_tensor(cfg, k, shapes[k], seed, **init_kwargs)).to(torch_dtype)
            for k in keys
        }
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        del tensors
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(sizes.values())},
            "weight_map": {k: name for name, keys in zip(names, shards) for k in keys},
        }
        (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2) + "\n")
    return out
