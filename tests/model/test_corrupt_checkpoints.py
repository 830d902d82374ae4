"""Corrupt checkpoints: every corruption of a valid tiny checkpoint is a CheckpointError naming the file
(and the tensor key when the fault belongs to one tensor), never a bare safetensors or JSON error.

Each case copies a checkpoint written by ``write_random_checkpoint``, corrupts one thing and returns the
file name and key the message must contain.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from nki_moe.model.checkpoint import write_random_checkpoint
from nki_moe.model.weights import INDEX_NAME, SINGLE_NAME, Checkpoint, CheckpointError

Q = "model.layers.0.self_attn.q_proj.weight"  # [128, 128]
ROUTER = "model.layers.1.mlp.gate.weight"  # [8, 128]
EXTRA = "model.layers.0.mlp.experts.8.up_proj.weight"  # an expert the 8-expert config does not have

Corruption = Callable[[Path], tuple[str, str | None]]  # checkpoint dir -> (file named, key named or None)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("valid")
    return {
        "single": write_random_checkpoint("tiny", root / "single", seed=0, max_shard_bytes=None),
        "sharded": write_random_checkpoint("tiny", root / "sharded", seed=0, max_shard_bytes=300_000),
    }


def _split(file: Path) -> tuple[dict, bytes]:
    """(header dict, data buffer) of a safetensors file."""
    raw = file.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(file: Path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    file.write_bytes(len(text).to_bytes(8, "little") + text + data)


def _first_beyond(file: Path, data_bytes: int) -> str:
    """Key of the first tensor (in data order) that a data buffer of ``data_bytes`` does not hold."""
    header, _ = _split(file)
    spans = sorted((v["data_offsets"][1], k) for k, v in header.items() if k != "__metadata__")
    return next(k for end, k in spans if end > data_bytes)


# --- byte-level corruptions of model.safetensors ---


def _truncate(at: Callable[[int, int], int], names_key: bool) -> Corruption:
    """Cut the file to ``at(file size, header length)`` bytes."""

    def corrupt(ck: Path) -> tuple[str, str | None]:
        file = ck / SINGLE_NAME
        raw = file.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        cut = at(len(raw), n)
        key = _first_beyond(file, cut - 8 - n) if names_key else None
        file.write_bytes(raw[:cut])
        return SINGLE_NAME, key

    return corrupt


def _bytes(change: Callable[[bytes, int], bytes]) -> Corruption:
    """Replace the file by ``change(file bytes, header length)``."""

    def corrupt(ck: Path) -> tuple[str, str | None]:
        file = ck / SINGLE_NAME
        raw = file.read_bytes()
        file.write_bytes(change(raw, int.from_bytes(raw[:8], "little")))
        return SINGLE_NAME, None

    return corrupt


def _noise(size: int) -> bytes:
    return np.random.default_rng(0).bytes(size)


def _header_as(value: object) -> Corruption:
    """Replace the JSON header by ``value`` (keeping the data buffer)."""

    def corrupt(ck: Path) -> tuple[str, str | None]:
        _, data = _split(ck / SINGLE_NAME)
        _join(ck / SINGLE_NAME, value, data)
        return SINGLE_NAME, None

    return corrupt


def _entry(key: str, **changes: object) -> Corruption:
    """Change fields of one header entry (None deletes the field); the message must name the key."""

    def corrupt(ck: Path) -> tuple[str, str | None]:
        header, data = _split(ck / SINGLE_NAME)
        for field, value in changes.items():
            if value is None:
                del header[key][field]
            else:
                header[key][field] = value
        _join(ck / SINGLE_NAME, header, data)
        return SINGLE_NAME, key

    return corrupt


def _shift_offsets(key: str, by: int) -> Corruption:
    def corrupt(ck: Path) -> tuple[str, str | None]:
        header, _ = _split(ck / SINGLE_NAME)
        begin, end = header[key]["data_offsets"]
        return _entry(key, data_offsets=[begin + by, end + by])(ck)

    return corrupt


def _header_edit(change: Callable[[dict], str | None]) -> Corruption:
    """Apply ``change(header)``, which returns the key the message must name (None: a file-level fault)."""

    def corrupt(ck: Path) -> tuple[str, str | None]:
        header, data = _split(ck / SINGLE_NAME)
        key = change(header)
        _join(ck / SINGLE_NAME, header, data)
        return SINGLE_NAME, key

    return corrupt


def _rename_key(header: dict) -> str:
    header[Q.replace("q_proj", "qproj")] = header.pop(Q)
    return Q.replace("q_proj", "qproj")


def _not_an_object(header: dict) -> str:
    header[ROUTER] = 5
    return ROUTER


def _alias_key(header: dict) -> str:
    """A second key over the bytes of another tensor."""
    header[EXTRA] = dict(header[ROUTER])
    return EXTRA


def _metadata_not_text(header: dict) -> None:
    header["__metadata__"] = {"format": 1}  # safetensors requires a text-to-text map


def _replace_file(content: Callable[[Path], None]) -> Corruption:
    def corrupt(ck: Path) -> tuple[str, str | None]:
        (ck / SINGLE_NAME).unlink()
        content(ck / SINGLE_NAME)
        return SINGLE_NAME, None

    return corrupt


# --- sharded checkpoints: shards and the index ---


def _shards(ck: Path) -> list[Path]:
    return sorted(ck.glob("model-*-of-*.safetensors"))


def _weight_map(ck: Path) -> dict[str, str]:
    return json.loads((ck / INDEX_NAME).read_text())["weight_map"]


def _write_map(ck: Path, weight_map: dict) -> None:
    (ck / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _shard_bytes(change: Callable[[bytes], bytes], names_key: bool = False) -> Corruption:
    """Replace the second shard's bytes by ``change(bytes)``."""

    def corrupt(ck: Path) -> tuple[str, str | None]:
        shard = _shards(ck)[1]
        raw = shard.read_bytes()
        new = change(raw)
        key = _first_beyond(shard, len(new) - 8 - int.from_bytes(raw[:8], "little")) if names_key else None
        shard.write_bytes(new)
        return shard.name, key

    return corrupt


def _delete_shard(ck: Path) -> tuple[str, str | None]:
    shard = _shards(ck)[1]
    key = min(k for k, v in _weight_map(ck).items() if v == shard.name)
    shard.unlink()
    return shard.name, key


def _index_text(text: str) -> Corruption:
    def corrupt(ck: Path) -> tuple[str, str | None]:
        (ck / INDEX_NAME).write_text(text)
        return INDEX_NAME, None

    return corrupt


def _map_edit(change: Callable[[dict, list[str]], tuple[str, str]]) -> Corruption:
    """Apply ``change(weight_map, shard names)``, which returns the (file, key) the message must name."""

    def corrupt(ck: Path) -> tuple[str, str | None]:
        weight_map = _weight_map(ck)
        named = change(weight_map, [s.name for s in _shards(ck)])
        _write_map(ck, weight_map)
        return named

    return corrupt


def _move_key(weight_map: dict, shards: list[str]) -> tuple[str, str]:
    """The index says Q lives in a shard that does not hold it."""
    other = next(s for s in shards if s != weight_map[Q])
    weight_map[Q] = other
    return other, Q


def _drop_key(weight_map: dict, shards: list[str]) -> tuple[str, str]:
    """The index forgets a key its shard holds."""
    return weight_map.pop(Q), Q


def _phantom_key(weight_map: dict, shards: list[str]) -> tuple[str, str]:
    weight_map[EXTRA] = shards[0]
    return shards[0], EXTRA


def _typo_shard(weight_map: dict, shards: list[str]) -> tuple[str, str]:
    weight_map[Q] = "model-00009-of-00009.safetensors"
    return weight_map[Q], Q


def _map_value(value: object) -> Callable[[dict, list[str]], tuple[str, str]]:
    def change(weight_map: dict, shards: list[str]) -> tuple[str, str]:
        weight_map[Q] = value
        return INDEX_NAME, Q

    return change


def _swap_shard_names(ck: Path) -> tuple[str, str | None]:
    a, b = _shards(ck)[:2]
    a.rename(ck / "tmp")
    b.rename(a)
    (ck / "tmp").rename(b)
    return a.name, None


def _shard_extra(key_of: Callable[[Path], str]) -> Corruption:
    """Add a tensor to the second shard without listing it in the index."""

    def corrupt(ck: Path) -> tuple[str, str | None]:
        shard = _shards(ck)[1]
        tensors = load_file(str(shard))
        key = key_of(ck)
        tensors[key] = torch.zeros(64, 128, dtype=torch.bfloat16)
        save_file(tensors, str(shard), metadata={"format": "pt"})
        return shard.name, key

    return corrupt


def _key_of_first_shard(ck: Path) -> str:
    """A key the index maps to the first shard (so its copy in the second is not listed there)."""
    first = _shards(ck)[0].name
    return min(k for k, v in _weight_map(ck).items() if v == first)


# --- config.json ---


def _config_text(text: str) -> Corruption:
    def corrupt(ck: Path) -> tuple[str, str | None]:
        (ck / "config.json").write_text(text)
        return "config.json", None

    return corrupt


def _config_field(field: str, value: object) -> Corruption:
    def corrupt(ck: Path) -> tuple[str, str | None]:
        d = json.loads((ck / "config.json").read_text())
        d[field] = value
        (ck / "config.json").write_text(json.dumps(d))
        return "config.json", field

    return corrupt


CASES: dict[str, tuple[str, Corruption]] = {
    # truncation at several offsets: inside the length field, the header, the data
    "empty file": ("single", _truncate(lambda size, n: 0, names_key=False)),
    "truncated to 1 byte": ("single", _truncate(lambda size, n: 1, names_key=False)),
    "truncated inside the length field": ("single", _truncate(lambda size, n: 7, names_key=False)),
    "only the length field": ("single", _truncate(lambda size, n: 8, names_key=False)),
    "truncated inside the header": ("single", _truncate(lambda size, n: 8 + n // 2, names_key=False)),
    "truncated one byte into the header": ("single", _truncate(lambda size, n: 9, names_key=False)),
    "header only, no data": ("single", _truncate(lambda size, n: 8 + n, names_key=True)),
    "one data byte": ("single", _truncate(lambda size, n: 8 + n + 1, names_key=True)),
    "truncated mid-data": ("single", _truncate(lambda size, n: size // 2, names_key=True)),
    "last byte missing": ("single", _truncate(lambda size, n: size - 1, names_key=True)),
    # overwritten bytes
    "all zero bytes": ("single", _bytes(lambda raw, n: bytes(len(raw)))),
    "zeroed header": ("single", _bytes(lambda raw, n: raw[:8] + bytes(n) + raw[8 + n :])),
    "zeroed length field": ("single", _bytes(lambda raw, n: bytes(8) + raw[8:])),
    "random bytes": ("single", _bytes(lambda raw, n: _noise(len(raw)))),
    "random header bytes": ("single", _bytes(lambda raw, n: raw[:8] + _noise(n) + raw[8 + n :])),
    "random length field": ("single", _bytes(lambda raw, n: _noise(8) + raw[8:])),
    "length field too big (2**40)": (
        "single",
        _bytes(lambda raw, n: (2**40).to_bytes(8, "little") + raw[8:]),
    ),
    "length field = file size": ("single", _bytes(lambda raw, n: len(raw).to_bytes(8, "little") + raw[8:])),
    "length field one too big": ("single", _bytes(lambda raw, n: (n + 1).to_bytes(8, "little") + raw[8:])),
    "length field big-endian": ("single", _bytes(lambda raw, n: n.to_bytes(8, "big") + raw[8:])),
    "header not UTF-8": ("single", _bytes(lambda raw, n: raw[:8] + b"\xff" * n + raw[8 + n :])),
    "header JSON invalid": ("single", _bytes(lambda raw, n: raw[:8] + b"[" + raw[9:])),
    "header JSON cut short": (
        "single",
        _bytes(lambda raw, n: raw[:8] + raw[8 : 8 + n].rstrip()[:-1].ljust(n) + raw[8 + n :]),
    ),
    "trailing bytes after the data": ("single", _bytes(lambda raw, n: raw + b"junk")),
    "header is a JSON list": ("single", _header_as([1, 2])),
    "header is a JSON string": ("single", _header_as("tensors")),
    # per-tensor header faults
    "data_offsets end beyond the buffer": ("single", _entry(ROUTER, data_offsets=[0, 10**9])),
    "data_offsets reversed": ("single", _entry(ROUTER, data_offsets=[2048, 0])),
    "data_offsets shifted by 2": ("single", _shift_offsets(ROUTER, 2)),
    "data_offsets three numbers": ("single", _entry(ROUTER, data_offsets=[0, 1, 2])),
    "data_offsets strings": ("single", _entry(ROUTER, data_offsets=["0", "2048"])),
    "data_offsets missing": ("single", _entry(ROUTER, data_offsets=None)),
    "dtype unknown (BF17)": ("single", _entry(ROUTER, dtype="BF17")),
    "dtype lowercase (bf16)": ("single", _entry(ROUTER, dtype="bf16")),
    "dtype F32, bytes of bf16": ("single", _entry(ROUTER, dtype="F32")),
    "dtype F16 (same size)": ("single", _entry(ROUTER, dtype="F16")),
    "dtype missing": ("single", _entry(ROUTER, dtype=None)),
    "dtype a number": ("single", _entry(ROUTER, dtype=16)),
    "shape negative": ("single", _entry(ROUTER, shape=[-8, 128])),
    "shape transposed": ("single", _entry(ROUTER, shape=[128, 8])),
    "shape with a string": ("single", _entry(ROUTER, shape=["8", 128])),
    "shape with an extra dim": ("single", _entry(ROUTER, shape=[1, 8, 128])),
    "shape missing": ("single", _entry(ROUTER, shape=None)),
    "entry not an object": ("single", _header_edit(_not_an_object)),
    "key renamed": ("single", _header_edit(_rename_key)),
    "second key over another tensor's bytes": ("single", _header_edit(_alias_key)),
    "__metadata__ value not a string": ("single", _header_edit(_metadata_not_text)),
    # not a safetensors file at all
    "a torch.save pickle": ("single", _replace_file(lambda f: torch.save({"w": torch.zeros(4)}, f))),
    "a JSON text file": ("single", _replace_file(lambda f: f.write_text('{"weight": [1, 2, 3]}'))),
    "a directory": ("single", _replace_file(lambda f: f.mkdir())),
    # shards
    "shard truncated mid-data": ("sharded", _shard_bytes(lambda raw: raw[: len(raw) // 2], names_key=True)),
    "shard empty": ("sharded", _shard_bytes(lambda raw: b"")),
    "shard zero bytes": ("sharded", _shard_bytes(lambda raw: bytes(len(raw)))),
    "shard random bytes": ("sharded", _shard_bytes(lambda raw: _noise(len(raw)))),
    "shard missing": ("sharded", _delete_shard),
    "shard names swapped": ("sharded", _swap_shard_names),
    "shard with an unexpected extra key": ("sharded", _shard_extra(lambda ck: EXTRA)),
    "shard with a key the index puts elsewhere": ("sharded", _shard_extra(_key_of_first_shard)),
    # the index
    "index invalid JSON": ("sharded", _index_text('{"weight_map": {')),
    "index empty file": ("sharded", _index_text("")),
    "index is a JSON list": ("sharded", _index_text("[]")),
    "index without weight_map": ("sharded", _index_text('{"metadata": {}}')),
    "index weight_map a list": ("sharded", _index_text('{"weight_map": []}')),
    "index names a key absent from its shard": ("sharded", _map_edit(_move_key)),
    "index forgets a key": ("sharded", _map_edit(_drop_key)),
    "index names a key no shard has": ("sharded", _map_edit(_phantom_key)),
    "index points at a missing file": ("sharded", _map_edit(_typo_shard)),
    "index value a number": ("sharded", _map_edit(_map_value(1))),
    "index value a path outside": ("sharded", _map_edit(_map_value("../model.safetensors"))),
    # config.json
    "config.json invalid JSON": ("single", _config_text('{"model_type": "qwen3_moe",')),
    "config.json empty": ("single", _config_text("")),
    "config.json a JSON list": ("single", _config_text("[]")),
    "config rope_theta a string": ("single", _config_field("rope_theta", "abc")),
    "config torch_dtype float8": ("single", _config_field("torch_dtype", "float8")),
    "config norm_topk_prob the string false": ("single", _config_field("norm_topk_prob", "false")),
    "config hidden_size a float": ("single", _config_field("hidden_size", 128.0)),
}


def test_enough_distinct_corruptions():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", list(CASES))
def test_corruption_is_a_checkpoint_error_naming_file_and_key(case, sources, tmp_path):
    kind, corrupt = CASES[case]
    ck = shutil.copytree(sources[kind], tmp_path / "ck")
    file_name, key = corrupt(ck)
    with pytest.raises(CheckpointError) as err:
        Checkpoint(ck)
    message = str(err.value)
    assert file_name in message, message
    assert key is None or repr(key) in message or key in message, message
