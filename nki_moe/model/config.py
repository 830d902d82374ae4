"""Qwen3-MoE model configuration: one frozen dataclass, a few named configs, Hugging Face round trip.

Shape legend used across the package: T tokens, L layers, H hidden, n_q/n_kv query/KV heads, d head_dim,
E experts, k top-k, I moe_intermediate, V vocab.

Every field of the real model is set explicitly ([HF-QWEN3MOE]: the ``Qwen3MoeConfig`` defaults are a
different, 24-layer model with ``norm_topk_prob=False``). The target checkpoint is the April 2025
``Qwen/Qwen3-30B-A3B`` release (RoPE θ 1e6, context 40,960), not the ``-2507`` releases (θ 1e7, 262,144).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ModelConfig", "ConfigError", "CONFIGS", "DTYPES", "SHAPE_FIELDS", "get_config", "load_config"]

# Weight dtypes a config may name (config.json ``torch_dtype`` / ``dtype``).
DTYPES = ("bfloat16", "float16", "float32")

# Keys of the 4.51-style config.json that transformers 5 renames ([HF-QWEN3MOE]): old name -> new name.
_HF_RENAMES = {"num_experts": "num_local_experts", "torch_dtype": "dtype"}


class ConfigError(ValueError):
    """A config that is malformed or inconsistent: the message names the field (and the file, when read from
    one)."""


def _is_int(value: Any) -> bool:
    """A JSON integer: bool is an int subclass in Python but not an integer in config.json."""
    return isinstance(value, int) and not isinstance(value, bool)


# ModelConfig annotation -> (what config.json must hold, check). As transformers 5's strict config
# ([HF-QWEN3MOE]): 2048.0 is not an int, 1 and "false" are not bools. An integer is accepted wherever a float
# is expected (Python's numeric tower; "rope_theta": 1000000 is common), while transformers 5.24 accepts it
# for rope_theta and attention_dropout but rejects it for rms_norm_eps and router_aux_loss_coef.
_TYPE_CHECKS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "int": ("an integer", _is_int),
    "int | None": ("an integer or null", lambda v: v is None or _is_int(v)),
    "float": (
        "a finite number",
        lambda v: isinstance(v, float | int) and not isinstance(v, bool) and math.isfinite(v),
    ),
    "bool": ("a boolean (true/false)", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "tuple[int, ...]": ("a list of integers", lambda v: isinstance(v, tuple) and all(map(_is_int, v))),
    "Mapping[str, Any] | None": ("an object or null", lambda v: v is None or isinstance(v, Mapping)),
}


def _tagged(*tags: str) -> Any:
    """A required ModelConfig field carrying tags: "positive" (``validate`` checks it is a positive int),
    "shape" (it defines tensor shapes or the forward, so a checkpoint's config.json must agree)."""
    return dataclasses.field(metadata=dict.fromkeys(tags, True))


@dataclass(frozen=True)
class ModelConfig:
    """A Qwen3-MoE (``Qwen3MoeForCausalLM``) configuration; field names follow Hugging Face config.json.

    Counting code (``nki_moe.model.counts``) assumes every layer is MoE, i.e. ``mlp_only_layers == ()`` and
    ``decoder_sparse_step == 1``, as in Qwen3-30B-A3B.
    """

    name: str
    vocab_size: int = _tagged("positive", "shape")  # V: rows of embed_tokens and lm_head
    hidden_size: int = _tagged("positive", "shape")  # H
    num_hidden_layers: int = _tagged("positive", "shape")  # L
    num_attention_heads: int = _tagged("positive", "shape")  # n_q
    # n_kv (GQA: n_q / n_kv query heads share one KV head)
    num_key_value_heads: int = _tagged("positive", "shape")
    # d; explicit, NOT hidden_size / num_attention_heads for the real model
    head_dim: int = _tagged("positive", "shape")
    num_experts: int = _tagged("positive", "shape")  # E (transformers 5 calls it num_local_experts)
    num_experts_per_tok: int = _tagged("positive", "shape")  # k (top-k)
    moe_intermediate_size: int = _tagged("positive", "shape")  # I, per expert
    # dense-MLP width; no layer uses it when mlp_only_layers == ()
    intermediate_size: int = _tagged("positive")
    norm_topk_prob: bool = _tagged("shape")  # renormalise the k selected router probabilities to sum to 1
    decoder_sparse_step: int = _tagged("positive")
    mlp_only_layers: tuple[int, ...]
    max_position_embeddings: int = _tagged("positive")
    max_window_layers: int
    rope_theta: float = _tagged("shape")
    rope_scaling: Mapping[str, Any] | None
    rms_norm_eps: float = _tagged("shape")
    hidden_act: str
    attention_bias: bool
    attention_dropout: float
    use_sliding_window: bool
    sliding_window: int | None
    tie_word_embeddings: bool = _tagged("shape")
    dtype: str = _tagged("shape")  # weight dtype, "bfloat16"
    bos_token_id: int | None
    eos_token_id: int | None
    router_aux_loss_coef: float
    output_router_logits: bool
    initializer_range: float
    use_cache: bool

    @property
    def q_per_kv(self) -> int:
        """Query heads served by one KV head (GQA group size)."""
        return self.num_attention_heads // self.num_key_value_heads

    def validate(self) -> ModelConfig:
        """Check types and internal consistency; raise :class:`ConfigError` naming the offending field.

        Returns ``self``.
        """
        for field in dataclasses.fields(self):
            what, ok = _TYPE_CHECKS[field.type]
            value = getattr(self, field.name)
            if not ok(value):
                raise ConfigError(
                    f"{self.name}: {field.name} must be {what}, got {value!r} ({type(value).__name__})"
                )
        for field in _POSITIVE_FIELDS:
            value = getattr(self, field)
            if value <= 0:
                raise ConfigError(f"{self.name}: {field} must be a positive int, got {value!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(
                f"{self.name}: dtype (config.json torch_dtype) must be one of {', '.join(DTYPES)}, "
                f"got {self.dtype!r}"
            )
        for field, supported, what in _IMPLEMENTED:
            value = getattr(self, field)
            if value != supported:
                raise ConfigError(
                    f"{self.name}: {field}={value!r} is not implemented by the reference forward "
                    f"(it computes {what}; expected {field}={supported!r})"
                )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"{self.name}: num_attention_heads={self.num_attention_heads} is not divisible "
                f"by num_key_value_heads={self.num_key_value_heads}"
            )
        if self.num_experts_per_tok > self.num_experts:
            raise ConfigError(
                f"{self.name}: num_experts_per_tok={self.num_experts_per_tok} exceeds "
                f"num_experts={self.num_experts}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"{self.name}: head_dim={self.head_dim} must be even (rotate_half RoPE)")
        if not self.rope_theta > 0:
            raise ConfigError(f"{self.name}: rope_theta must be > 0, got {self.rope_theta!r}")
        if not self.rms_norm_eps > 0:
            raise ConfigError(f"{self.name}: rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        for field in ("bos_token_id", "eos_token_id"):
            token = getattr(self, field)
            if token is not None and not 0 <= token < self.vocab_size:
                raise ConfigError(
                    f"{self.name}: {field}={token} is outside the vocabulary [0, {self.vocab_size})"
                )
        bad_layers = [i for i in self.mlp_only_layers if not 0 <= i < self.num_hidden_layers]
        if bad_layers:
            raise ConfigError(
                f"{self.name}: mlp_only_layers has indices {bad_layers} outside "
                f"[0, num_hidden_layers={self.num_hidden_layers})"
            )
        return self

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with some fields changed (e.g. ``name``, ``num_hidden_layers``)."""
        return dataclasses.replace(self, **changes).validate()

    def to_hf_dict(self) -> dict[str, Any]:
        """A complete Hugging Face config.json dict in the 4.51 layout the checkpoint ships with.

        Written as transformers 4.51 does (``num_experts``, ``torch_dtype``, top-level ``rope_theta``), which
        transformers 5 also loads ([HF-QWEN3MOE]); a v5-only ``num_local_experts`` would make 4.x tools
        silently fall back to 128 experts.

        Returns:
            A JSON-serialisable dict with every key explicit.
        """
        out: dict[str, Any] = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe"}
        for field in dataclasses.fields(self):
            if field.name == "name":
                continue
            value = getattr(self, field.name)
            if field.name == "mlp_only_layers":
                value = list(value)
            elif field.name == "rope_scaling" and value is not None:
                value = dict(value)
            out["torch_dtype" if field.name == "dtype" else field.name] = value
        out["transformers_version"] = "4.51.0"
        return dict(sorted(out.items()))

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], name: str = "hf") -> ModelConfig:
        """Build a validated config from a Hugging Face config.json dict (4.51 or transformers 5 layout).

        Args:
            d: the parsed config.json. Both spellings of renamed keys are accepted (``num_experts`` /
                ``num_local_experts``, ``torch_dtype`` / ``dtype``, ``rope_theta`` / ``rope_parameters``);
                when both are present they must agree.
            name: name given to the resulting config.
        Returns:
            The config. Raises :class:`ConfigError` naming the config field that is missing, inconsistent
            or of the wrong type.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"a config.json must hold a JSON object, got {type(d).__name__}")
        if not isinstance(d.get("rope_parameters", {}), Mapping):
            raise ConfigError(
                f"config field 'rope_parameters' must be an object, got {d['rope_parameters']!r}"
            )
        model_type = d.get("model_type")
        if model_type != "qwen3_moe":
            raise ConfigError(f"model_type must be 'qwen3_moe', got {model_type!r}")
        values: dict[str, Any] = {"name": name}
        for field in dataclasses.fields(cls):
            if field.name != "name":
                values[field.name] = _hf_value(d, field.name)
        if isinstance(values["mlp_only_layers"], list):  # anything else is left for validate() to name
            values["mlp_only_layers"] = tuple(values["mlp_only_layers"])
        return cls(**values).validate()


def _fields_tagged(tag: str) -> tuple[str, ...]:
    """Names of the ModelConfig fields declared with `tag`, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(ModelConfig) if tag in f.metadata)


# Fields whose other values would change the forward pass in ways the reference does not compute: a config
# carrying them must fail loudly rather than be run as plain SiLU experts with unscaled RoPE.
_IMPLEMENTED = (
    ("hidden_act", "silu", "SwiGLU experts with SiLU"),
    ("rope_scaling", None, "RoPE without scaling"),
    ("attention_bias", False, "q/k/v/o projections without bias"),
    ("use_sliding_window", False, "full causal attention"),
)
_POSITIVE_FIELDS = _fields_tagged("positive")
SHAPE_FIELDS = _fields_tagged("shape")  # must agree between an expected config and a checkpoint's config.json


def _hf_value(d: Mapping[str, Any], field: str) -> Any:
    """Read one config field from a config.json dict, reconciling the transformers 4/5 spellings."""
    spellings = {"dtype": ("torch_dtype", "dtype")}.get(field, (field, _HF_RENAMES.get(field, field)))
    found = {key: d[key] for key in dict.fromkeys(spellings) if key in d}
    if field == "rope_theta" and isinstance(d.get("rope_parameters"), Mapping):
        found["rope_parameters.rope_theta"] = d["rope_parameters"].get("rope_theta")
    if field == "rope_scaling" and "rope_scaling" not in d and "rope_parameters" in d:
        rope_type = d["rope_parameters"].get("rope_type", "default")
        found["rope_parameters.rope_type"] = None if rope_type == "default" else dict(d["rope_parameters"])
    if not found:
        looked_for = " / ".join(dict.fromkeys(spellings))
        raise ConfigError(f"config field {field!r} is missing (looked for {looked_for})")
    distinct = {repr(v) for v in found.values()}
    if len(distinct) > 1:
        raise ConfigError(f"config field {field!r} is inconsistent: {found}")
    return next(iter(found.values()))


# Qwen/Qwen3-30B-A3B config.json, every value as published ([QWEN3-CONFIG]).
QWEN3_30B_A3B = ModelConfig(
    name="qwen3-30b-a3b",
    vocab_size=151936,
    hidden_size=2048,
    num_hidden_layers=48,
    num_attention_heads=32,
    num_key_value_heads=4,
    head_dim=128,
    num_experts=128,
    num_experts_per_tok=8,
    moe_intermediate_size=768,
    intermediate_size=6144,  # present in the file, used by no layer (mlp_only_layers == [])
    norm_topk_prob=True,
    decoder_sparse_step=1,
    mlp_only_layers=(),
    max_position_embeddings=40960,
    max_window_layers=48,
    rope_theta=1000000.0,
    rope_scaling=None,
    rms_norm_eps=1e-06,
    hidden_act="silu",
    attention_bias=False,
    attention_dropout=0.0,  # not listed in §1.1; the Qwen3MoeConfig default (checked in tests/model)
    use_sliding_window=False,
    sliding_window=None,
    tie_word_embeddings=False,
    dtype="bfloat16",
    bos_token_id=151643,
    eos_token_id=151645,
    router_aux_loss_coef=0.001,
    output_router_logits=False,
    initializer_range=0.02,
    use_cache=True,  # not listed in §1.1; the Qwen3MoeConfig default (checked in tests/model)
).validate()

# Real widths, 2 layers: one real-width layer is ~1.2 GiB bf16 (623,120,640 params × 2 B), fits CPU CI.
REAL_WIDTH_2LAYER = QWEN3_30B_A3B.replace(name="real-width-2layer", num_hidden_layers=2, max_window_layers=2)

# The tiny random test model (625,408 params).
TINY = QWEN3_30B_A3B.replace(
    name="tiny",
    vocab_size=512,
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    num_experts=8,
    num_experts_per_tok=2,
    moe_intermediate_size=64,
    intermediate_size=128,  # unused; k·I, the same relation as the real model's 6144 = 8·768
    max_window_layers=2,
    bos_token_id=None,  # the real ids (151643/151645) lie outside a 512-row vocabulary
    eos_token_id=None,
)

CONFIGS: dict[str, ModelConfig] = {c.name: c for c in (QWEN3_30B_A3B, REAL_WIDTH_2LAYER, TINY)}


def load_config(path: str | Path, name: str | None = None) -> ModelConfig:
    """Read and validate a Hugging Face config.json.

    Args:
        path: the config.json file.
        name: name given to the config; defaults to the name of the file's directory.
    Returns:
        The config.
    Raises:
        ConfigError: naming the file, and the field (or, for invalid JSON, the line and column).
    """
    path = Path(path)
    try:
        d = json.loads(path.read_bytes())
    except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not text
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    try:
        return ModelConfig.from_hf_dict(d, name=path.parent.name if name is None else name)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def get_config(name: str) -> ModelConfig:
    """Return a named config: ``'qwen3-30b-a3b'``, ``'real-width-2layer'`` or ``'tiny'``.

    Raises ``KeyError`` listing the known names for an unknown one.
    """
    try:
        return CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown model config {name!r}; known configs: {', '.join(CONFIGS)}") from None
