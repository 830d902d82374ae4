"""Load a Hugging Face Qwen3-MoE checkpoint (safetensors, single file or sharded), lazily per layer.

Shape legend: V vocab, H hidden, n_q/n_kv heads, d head_dim, E experts, I moe_intermediate.
On disk experts are per-expert 2-D tensors (``mlp.experts.{e}.gate_proj.weight`` [I, H] …); in memory we
stack them the way transformers 5 does, ``gate_up`` [E, 2I, H] (gate rows first) and ``down`` [E, H, I]
([HF-QWEN3MOE]). Arrays are float32 (bf16 weights convert exactly), so the NumPy reference can run
BLAS matmuls; the embedding table stays in its stored dtype because only looked-up rows are needed.

The whole header set is validated when a :class:`Checkpoint` is opened — every missing, unexpected,
mis-shaped or mis-typed tensor is reported in one :class:`CheckpointError` naming the key and what was
expected — and no tensor data is read until a layer is asked for, so nothing is ever half-loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import torch
from safetensors import safe_open

from nki_moe.model.config import SHAPE_FIELDS, ModelConfig

__all__ = [
    "CheckpointError",
    "LayerWeights",
    "GlobalWeights",
    "Checkpoint",
    "expected_tensors",
    "SAFETENSORS_DTYPES",
    "INDEX_NAME",
    "SINGLE_NAME",
]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# config.json dtype name -> safetensors header dtype
SAFETENSORS_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


class CheckpointError(ValueError):
    """A checkpoint that does not match its config: the message names each offending key."""


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer's weights, float32, HF names in the comments."""

    input_norm: np.ndarray  # [H]          input_layernorm.weight
    wq: np.ndarray  # [n_q·d, H]           self_attn.q_proj.weight
    wk: np.ndarray  # [n_kv·d, H]          self_attn.k_proj.weight
    wv: np.ndarray  # [n_kv·d, H]          self_attn.v_proj.weight
    wo: np.ndarray  # [H, n_q·d]           self_attn.o_proj.weight
    q_norm: np.ndarray  # [d]              self_attn.q_norm.weight
    k_norm: np.ndarray  # [d]              self_attn.k_norm.weight
    post_norm: np.ndarray  # [H]           post_attention_layernorm.weight
    router: np.ndarray  # [E, H]           mlp.gate.weight
    gate_up: np.ndarray  # [E, 2I, H]      mlp.experts.{e}.gate_proj / up_proj, stacked
    down: np.ndarray  # [E, H, I]          mlp.experts.{e}.down_proj, stacked


@dataclass(frozen=True)
class GlobalWeights:
    """Weights outside the decoder layers."""

    embed: np.ndarray  # [V, H] in the stored dtype (bf16 as ml_dtypes.bfloat16)
    final_norm: np.ndarray  # [H] float32
    lm_head: np.ndarray  # [V, H] float32 (the embedding when tie_word_embeddings)


_LAYER_KEYS = {  # LayerWeights field -> key suffix under model.layers.{i}.
    "input_norm": "input_layernorm.weight",
    "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight",
    "wo": "self_attn.o_proj.weight",
    "q_norm": "self_attn.q_norm.weight",
    "k_norm": "self_attn.k_norm.weight",
    "post_norm": "post_attention_layernorm.weight",
    "router": "mlp.gate.weight",
}


def _layer_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    H, d, inter = cfg.hidden_size, cfg.head_dim, cfg.moe_intermediate_size
    n_q, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    return {
        "input_norm": (H,),
        "wq": (n_q * d, H),
        "wk": (n_kv * d, H),
        "wv": (n_kv * d, H),
        "wo": (H, n_q * d),
        "q_norm": (d,),
        "k_norm": (d,),
        "post_norm": (H,),
        "router": (cfg.num_experts, H),
        "gate_proj": (inter, H),
        "up_proj": (inter, H),
        "down_proj": (H, inter),
    }


def expected_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every on-disk key of a Qwen3-MoE checkpoint with its shape, in file order.

    Args:
        cfg: model config (every layer MoE).
    Returns:
        ``{key: shape}``; 3 + L·(9 + 3E) keys (69 for ``tiny``).
    """
    if cfg.mlp_only_layers or cfg.decoder_sparse_step != 1:
        raise ValueError(f"{cfg.name}: only all-MoE models are supported")
    shapes = _layer_shapes(cfg)
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, cfg.hidden_size)}
    for i in range(cfg.num_hidden_layers):
        for name, suffix in _LAYER_KEYS.items():
            out[f"model.layers.{i}.{suffix}"] = shapes[name]
        for e in range(cfg.num_experts):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                out[f"model.layers.{i}.mlp.experts.{e}.{proj}.weight"] = shapes[proj]
    out["model.norm.weight"] = (cfg.hidden_size,)
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = (cfg.vocab_size, cfg.hidden_size)
    return out


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """float32 copy of a tensor (exact for bf16/fp16)."""
    return t.to(torch.float32).numpy()


class Checkpoint:
    """A validated, lazily loaded Hugging Face Qwen3-MoE checkpoint directory.

    Args:
        path: directory with config.json and either model.safetensors or model.safetensors.index.json +
            shards.
        cfg: expected config; defaults to the directory's config.json. When given, its shape-defining
            fields must agree with config.json.
        cache_layers: keep loaded layers in memory (fast repeated decode); False reloads each layer on
            every access, so at most one layer is resident (a 48-layer real-width prefill).
    Raises:
        CheckpointError: listing every missing / unexpected key and every shape or dtype mismatch.
    """

    def __init__(self, path: str | Path, cfg: ModelConfig | None = None, cache_layers: bool = True) -> None:
        self.path = Path(path)
        config_file = self.path / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{config_file} is missing")
        file_cfg = ModelConfig.from_hf_dict(json.loads(config_file.read_text()), name=self.path.name)
        if cfg is not None:
            _check_same_shapes(cfg, file_cfg)
        self.cfg = cfg or file_cfg
        self.cache_layers = cache_layers
        self._layers: dict[int, LayerWeights] = {}
        self._globals: GlobalWeights | None = None
        self._handles: dict[Path, object] = {}
        self._file_of = self._index()
        self._validate()

    def _index(self) -> dict[str, Path]:
        """key -> shard file, from the index json or the single file's header."""
        index_file = self.path / INDEX_NAME
        if index_file.is_file():
            weight_map = json.loads(index_file.read_text()).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index_file} has no 'weight_map' object")
            return {key: self.path / name for key, name in weight_map.items()}
        single = self.path / SINGLE_NAME
        if not single.is_file():
            raise CheckpointError(f"{self.path} has neither {SINGLE_NAME} nor {INDEX_NAME}")
        with safe_open(single, framework="pt") as f:
            return {key: single for key in f.keys()}

    def _validate(self) -> None:
        """Check keys, shapes and dtypes against the config from the safetensors headers only."""
        want = expected_tensors(self.cfg)
        want_dtype = SAFETENSORS_DTYPES.get(self.cfg.dtype)
        problems = [
            f"missing tensor {k!r} (expected shape {list(s)})"
            for k, s in want.items()
            if k not in self._file_of
        ]
        problems += [
            f"unexpected tensor {k!r} (not part of a {self.cfg.num_hidden_layers}-layer, "
            f"{self.cfg.num_experts}-expert Qwen3-MoE)"
            for k in self._file_of
            if k not in want
        ]
        for file in sorted(set(self._file_of.values())):
            if not file.is_file():
                problems.append(f"shard {file.name} listed in {INDEX_NAME} is missing")
                continue
            with safe_open(file, framework="pt") as f:
                present = set(f.keys())
                for key in [k for k, v in self._file_of.items() if v == file]:
                    if key not in present:
                        problems.append(
                            f"tensor {key!r} is listed in {INDEX_NAME} but absent from {file.name}"
                        )
                        continue
                    if key not in want:
                        continue
                    sl = f.get_slice(key)
                    shape, dtype = tuple(sl.get_shape()), sl.get_dtype()
                    if shape != want[key]:
                        problems.append(f"tensor {key!r} has shape {list(shape)}, expected {list(want[key])}")
                    if want_dtype is not None and dtype != want_dtype:
                        problems.append(
                            f"tensor {key!r} has dtype {dtype}, expected {want_dtype} "
                            f"(config dtype {self.cfg.dtype})"
                        )
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise CheckpointError(
                f"checkpoint {self.path} does not match config {self.cfg.name!r}:\n  {shown}{more}"
            )

    def tensor(self, key: str) -> torch.Tensor:
        """One tensor as stored (torch, stored dtype); shard handles are opened once and kept."""
        file = self._file_of[key]
        if file not in self._handles:
            self._handles[file] = safe_open(file, framework="pt")  # memory-maps the shard, reads nothing
        return self._handles[file].get_tensor(key)

    def layer(self, i: int) -> LayerWeights:
        """Weights of decoder layer ``i`` (loaded on first access; cached when ``cache_layers``)."""
        if i in self._layers:
            return self._layers[i]
        if not 0 <= i < self.cfg.num_hidden_layers:
            raise IndexError(f"layer {i} outside [0, {self.cfg.num_hidden_layers})")
        prefix = f"model.layers.{i}."
        arrays = {name: _to_numpy(self.tensor(prefix + suffix)) for name, suffix in _LAYER_KEYS.items()}
        E, H, inter = self.cfg.num_experts, self.cfg.hidden_size, self.cfg.moe_intermediate_size
        gate_up = np.empty((E, 2 * inter, H), np.float32)
        down = np.empty((E, H, inter), np.float32)
        for e in range(E):  # convert straight into the stacked arrays, no intermediate fp32 copies
            ex = f"{prefix}mlp.experts.{e}."
            torch.from_numpy(gate_up[e, :inter]).copy_(self.tensor(ex + "gate_proj.weight"))
            torch.from_numpy(gate_up[e, inter:]).copy_(self.tensor(ex + "up_proj.weight"))
            torch.from_numpy(down[e]).copy_(self.tensor(ex + "down_proj.weight"))
        weights = LayerWeights(gate_up=gate_up, down=down, **arrays)
        if self.cache_layers:
            self._layers[i] = weights
        return weights

    @property
    def globals(self) -> GlobalWeights:
        """Embedding, final norm and lm_head (loaded once)."""
        if self._globals is None:
            embed_t = self.tensor("model.embed_tokens.weight")
            if embed_t.dtype == torch.bfloat16:  # keep 2 bytes per entry; rows are converted on lookup
                embed = embed_t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
            else:
                embed = _to_numpy(embed_t)
            lm_head = (
                embed.astype(np.float32)
                if self.cfg.tie_word_embeddings
                else _to_numpy(self.tensor("lm_head.weight"))
            )
            self._globals = GlobalWeights(
                embed=embed, final_norm=_to_numpy(self.tensor("model.norm.weight")), lm_head=lm_head
            )
        return self._globals

    def drop_layers(self) -> None:
        """Forget cached layers (frees their memory)."""
        self._layers.clear()


def _check_same_shapes(cfg: ModelConfig, file_cfg: ModelConfig) -> None:
    """Raise CheckpointError if the fields that define tensor shapes or the forward differ."""
    diff = [
        f"{f}: config {getattr(cfg, f)!r} vs config.json {getattr(file_cfg, f)!r}"
        for f in SHAPE_FIELDS
        if getattr(cfg, f) != getattr(file_cfg, f)
    ]
    if diff:
        raise CheckpointError("config.json disagrees with the expected config: " + "; ".join(diff))
