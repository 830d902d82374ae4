"""Load a Hugging Face Qwen3-MoE checkpoint (safetensors, single file or sharded), lazily per layer.

Shape legend: V vocab, H hidden, n_q/n_kv heads, d head_dim, E experts, I moe_intermediate.
On disk experts are per-expert 2-D tensors (``mlp.experts.{e}.gate_proj.weight`` [I, H] …); in memory we
stack them the way transformers 5 does, ``gate_up`` [E, 2I, H] (gate rows first) and ``down`` [E, H, I]
([HF-QWEN3MOE]). Arrays are float32 (bf16 weights convert exactly), so the NumPy reference can run
BLAS matmuls; the embedding table stays in its stored dtype because only looked-up rows are needed.

The whole header set is validated when a :class:`Checkpoint` is opened — every missing, unexpected,
mis-shaped or mis-typed tensor, every file that is not safetensors (empty, truncated, corrupt header) and
every tensor whose byte range does not fit is reported in one :class:`CheckpointError` naming the file and
the key — and no tensor data is read until a layer is asked for, so nothing is ever half-loaded. The headers
are parsed here rather than by ``safe_open`` because safetensors' own errors name neither the file nor, for
most header faults, the tensor ([SAFETENSORS]: 8-byte little-endian header length, UTF-8 JSON header of
``{key: {dtype, shape, data_offsets}}``, then the data buffer).

Tensor data is read through ``safe_open(framework="pt")``, which memory-maps each shard
(``torch.UntypedStorage.from_file``, [SAFETENSORS]); ``get_tensor`` returns a view and the float32
conversion is the only copy. Values are never checked by safetensors ([SAFETENSORS]); ``verify=True``
scans each tensor for NaN/±inf when it is loaded.
"""

from __future__ import annotations

import json
import math
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from nki_moe.model.config import SHAPE_FIELDS, ConfigError, ModelConfig, load_config

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
_ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4}  # bytes per element of each SAFETENSORS_DTYPES value
# safetensors refuses headers above 100 MB ([SAFETENSORS]); a larger length field means "not safetensors",
# and bounding it keeps a multi-GB non-safetensors file from being read as a header.
_MAX_HEADER_BYTES = 100_000_000


class CheckpointError(ValueError):
    """A checkpoint that is unreadable or does not match its config: the message names each offending file
    and key."""


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
        verify: scan every tensor for NaN/±inf as it is loaded (per layer, on first access), raising a
            CheckpointError naming the key and file. Off by default: it reads every value once more.
    Raises:
        CheckpointError: listing every unreadable file (not safetensors, truncated, corrupt header or index,
            invalid config.json) and every missing / unexpected key and shape, dtype or byte-range mismatch.
    """

    def __init__(
        self,
        path: str | Path,
        cfg: ModelConfig | None = None,
        cache_layers: bool = True,
        *,
        verify: bool = False,
    ) -> None:
        self.path = Path(path)
        config_file = self.path / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{config_file} is missing")
        try:
            file_cfg = load_config(config_file, name=self.path.name)
        except ConfigError as e:
            raise CheckpointError(str(e)) from e
        if cfg is not None:
            _check_same_shapes(cfg, file_cfg)
        self.cfg = cfg or file_cfg
        self.cache_layers = cache_layers
        self.verify = verify
        self._layers: dict[int, LayerWeights] = {}
        self._globals: GlobalWeights | None = None
        self._handles: dict[Path, Any] = {}
        self._file_of = self._index()
        self._validate()

    def _index(self) -> dict[str, Path]:
        """key -> shard file, from the index json or the single file's header."""
        index_file = self.path / INDEX_NAME
        if index_file.is_file():
            try:
                index = json.loads(index_file.read_bytes())
            except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not text
                raise CheckpointError(f"{index_file}: not valid JSON: {e}") from None
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index_file} has no 'weight_map' object")
            # a shard is a file of this directory: no paths, which could also point outside it
            bad = {
                k: v
                for k, v in weight_map.items()
                if not isinstance(v, str) or v in ("", "..") or Path(v).name != v
            }
            if bad:
                shown = ", ".join(f"{k!r}: {v!r}" for k, v in list(bad.items())[:5])
                raise CheckpointError(
                    f"{index_file}: weight_map values must be file names in {self.path}; "
                    f"{len(bad)} are not: {shown}"
                )
            return {key: self.path / name for key, name in weight_map.items()}
        single = self.path / SINGLE_NAME
        if not single.is_file():
            raise CheckpointError(f"{self.path} has neither {SINGLE_NAME} nor {INDEX_NAME}")
        try:
            entries, _ = _read_header(single)
        except CheckpointError as e:
            raise CheckpointError(f"checkpoint {self.path}: {e}") from None
        return dict.fromkeys(entries, single)

    def _validate(self) -> None:
        """Check every file, key, shape, dtype and byte range against the config, from the headers only."""
        want = expected_tensors(self.cfg)
        problems = [
            f"missing tensor {k!r} (expected shape {list(s)})"
            for k, s in want.items()
            if k not in self._file_of
        ]
        problems += [
            f"{file.name}: unexpected tensor {k!r} (not part of a {self.cfg.num_hidden_layers}-layer, "
            f"{self.cfg.num_experts}-expert Qwen3-MoE)"
            for k, file in self._file_of.items()
            if k not in want
        ]
        for file in sorted(set(self._file_of.values())):
            problems += self._file_problems(file, want)
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise CheckpointError(
                f"checkpoint {self.path} is not a valid {self.cfg.name!r} checkpoint "
                f"({len(problems)} problem{'s' * (len(problems) > 1)}):\n  {shown}{more}"
            )

    def _file_problems(self, file: Path, want: dict[str, tuple[int, ...]]) -> list[str]:
        """Problems of one safetensors file: unreadable, disagreeing with the index, or bad header entries."""
        listed = {k for k, f in self._file_of.items() if f == file}
        if not file.is_file():
            return [
                f"shard {file.name} listed in {INDEX_NAME} is missing "
                f"(listed for {len(listed)} tensor{'s' * (len(listed) > 1)}, e.g. {min(listed)!r})"
            ]
        try:
            entries, buffer_bytes = _read_header(file)
        except CheckpointError as e:
            return [str(e)]
        problems = [
            f"{file.name}: tensor {k!r} is listed in {INDEX_NAME} but absent from the file"
            for k in sorted(listed - entries.keys())
        ]
        problems += [
            f"{file.name}: tensor {k!r} is in the file but {INDEX_NAME} does not list it there"
            for k in entries
            if k not in listed
        ]
        problems += _header_problems(file.name, entries, buffer_bytes, want, self.cfg.dtype)
        if not problems:  # backstop for anything else safetensors refuses (e.g. a non-string __metadata__)
            try:
                with safe_open(file, framework="pt"):
                    pass
            except SafetensorError as e:
                problems.append(f"{file.name}: safetensors cannot open it: {e}")
        return problems

    def tensor(self, key: str) -> torch.Tensor:
        """One tensor as stored (torch, stored dtype); shard handles are opened once and kept.

        Raises CheckpointError naming the file and key if the file no longer reads (changed on disk after
        validation) or, with ``verify``, if the tensor holds NaN/±inf.
        """
        file = self._file_of[key]
        try:
            if file not in self._handles:
                self._handles[file] = safe_open(file, framework="pt")  # memory-maps the shard, reads nothing
            t = self._handles[file].get_tensor(key)
        except SafetensorError as e:
            raise CheckpointError(f"{file.name}: cannot read tensor {key!r}: {e}") from None
        if self.verify:
            _check_finite(t, key, file.name)
        return t

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


def _read_header(file: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's header entries (``__metadata__`` dropped) and the size of its data buffer.

    Raises:
        CheckpointError: naming the file when it is not safetensors: shorter than the 8-byte length field, a
            length beyond the file (truncated) or the 100 MB limit, a header that is not a UTF-8 JSON object.
    """
    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{file.name}: {size} bytes, too short for a safetensors file")
        n = int.from_bytes(head, "little")
        limit = min(size - 8, _MAX_HEADER_BYTES)
        if n > limit:
            raise CheckpointError(
                f"{file.name}: header length field says {n} bytes, at most {limit} are possible "
                f"(file of {size} bytes truncated, or not a safetensors file)"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError or JSONDecodeError
        raise CheckpointError(f"{file.name}: the {n}-byte header is not UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file.name}: the header is not a JSON object (got {type(header).__name__})")
    header.pop("__metadata__", None)
    return header, size - 8 - n


def _is_index(value: Any) -> bool:
    """A non-negative JSON integer."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _well_formed(entry: Any) -> bool:
    """A header entry as the format defines it: dtype string, shape of sizes, data_offsets [begin, end]."""
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
        return False
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    return (
        isinstance(shape, list)
        and all(map(_is_index, shape))
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(map(_is_index, offsets))
        and offsets[0] <= offsets[1]
    )


def _header_problems(
    name: str, entries: dict[str, Any], buffer_bytes: int, want: dict[str, tuple[int, ...]], dtype: str
) -> list[str]:
    """Problems of one file's header entries, each naming the file and key: malformed entries, shape and
    dtype against the config, byte sizes, and tensors that do not tile the data buffer exactly."""
    want_dtype = SAFETENSORS_DTYPES[dtype]
    problems: list[str] = []
    spans: list[tuple[int, int, str]] = []
    for key, entry in entries.items():
        if not _well_formed(entry):
            problems.append(f"{name}: tensor {key!r} has a malformed header entry {reprlib.repr(entry)}")
            continue
        begin, end = entry["data_offsets"]
        spans.append((begin, end, key))
        if key not in want:
            continue
        shape = tuple(entry["shape"])
        if shape != want[key]:
            problems.append(f"{name}: tensor {key!r} has shape {list(shape)}, expected {list(want[key])}")
        if entry["dtype"] != want_dtype:
            problems.append(
                f"{name}: tensor {key!r} has dtype {entry['dtype']}, expected {want_dtype} "
                f"(config dtype {dtype})"
            )
        elif shape == want[key] and end - begin != math.prod(shape) * _ITEMSIZE[want_dtype]:
            problems.append(
                f"{name}: tensor {key!r} has data_offsets [{begin}, {end}] ({end - begin} bytes), expected "
                f"{math.prod(shape) * _ITEMSIZE[want_dtype]} bytes for {want_dtype} {list(shape)}"
            )
    end_so_far = 0
    for begin, end, key in sorted(spans):
        if begin != end_so_far:
            problems.append(
                f"{name}: tensor {key!r} starts at data byte {begin}, expected {end_so_far} "
                "(tensors must tile the data buffer without gaps or overlaps)"
            )
        if end > buffer_bytes:
            problems.append(
                f"{name}: tensor {key!r} ends at data byte {end}, beyond the {buffer_bytes}-byte data buffer "
                "(file truncated?)"
            )
        end_so_far = max(end_so_far, end)
    if end_so_far < buffer_bytes:
        problems.append(f"{name}: {buffer_bytes - end_so_far} bytes after the last tensor's data")
    return problems


def _check_finite(t: torch.Tensor, key: str, file_name: str) -> None:
    """Raise CheckpointError naming the key and file if ``t`` holds NaN or ±inf."""
    # max propagates NaN: one reduction, ~15x faster than an elementwise isfinite on bf16 (CPUs without
    # native bf16 convert every element); the elementwise pass runs only to describe a bad tensor
    if t.numel() == 0 or torch.isfinite(t.abs().max()):
        return
    bad = ~torch.isfinite(t)
    n_nan, n_bad = int(torch.isnan(t).sum()), int(bad.sum())
    first = np.unravel_index(int(bad.flatten().nonzero()[0, 0]), tuple(t.shape))
    raise CheckpointError(
        f"{file_name}: tensor {key!r} has {n_nan} NaN and {n_bad - n_nan} ±inf values "
        f"(first at index {[int(i) for i in first]})"
    )
