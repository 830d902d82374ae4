"""Safetensors loader (single file and sharded, lazy, strict) and the random-checkpoint writer."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from nki_moe.model import weights
from nki_moe.model.checkpoint import routing_plan, write_random_checkpoint
from nki_moe.model.config import DTYPES, get_config
from nki_moe.model.weights import (
    INDEX_NAME,
    SAFETENSORS_DTYPES,
    SINGLE_NAME,
    Checkpoint,
    CheckpointError,
    expected_tensors,
)
from nki_moe.reference import ReferenceModel, topk_margin

TINY = get_config("tiny")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return write_random_checkpoint(TINY, tmp_path_factory.mktemp("single"), seed=0, max_shard_bytes=None)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return write_random_checkpoint(TINY, tmp_path_factory.mktemp("sharded"), seed=0, max_shard_bytes=300_000)


def test_writer_layout(single, sharded):
    assert (single / SINGLE_NAME).is_file() and not (single / INDEX_NAME).exists()
    index = json.loads((sharded / INDEX_NAME).read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert set(index["weight_map"]) == set(expected_tensors(TINY))
    assert len(index["weight_map"]) == 3 + 2 * (9 + 3 * 8)
    on_disk = load_file(str(single / SINGLE_NAME))
    assert on_disk["model.layers.1.mlp.experts.7.down_proj.weight"].shape == (128, 64)
    assert all(t.dtype == torch.bfloat16 for t in on_disk.values())
    assert json.loads((single / "config.json").read_text())["num_experts"] == 8


def test_single_and_sharded_load_identically_and_stack_experts(single, sharded):
    a, b = Checkpoint(single), Checkpoint(sharded)
    assert a.cfg.num_experts == 8
    on_disk = load_file(str(single / SINGLE_NAME))
    for i in range(TINY.num_hidden_layers):
        la, lb = a.layer(i), b.layer(i)
        for field in la.__dataclass_fields__:
            np.testing.assert_array_equal(getattr(la, field), getattr(lb, field))
        for e in (0, 5):
            pre = f"model.layers.{i}.mlp.experts.{e}."
            disk = {
                p: on_disk[f"{pre}{p}.weight"].float().numpy() for p in ("gate_proj", "up_proj", "down_proj")
            }
            np.testing.assert_array_equal(la.gate_up[e, :64], disk["gate_proj"])
            np.testing.assert_array_equal(la.gate_up[e, 64:], disk["up_proj"])
            np.testing.assert_array_equal(la.down[e], disk["down_proj"])
    np.testing.assert_array_equal(a.globals.embed.astype(np.float32), b.globals.embed.astype(np.float32))
    assert a.globals.lm_head.dtype == np.float32 and a.layer(0).wq.shape == (128, 128)


def test_loading_is_lazy_per_layer(sharded):
    ck = Checkpoint(sharded, cache_layers=False)
    assert not ck._layers and ck._globals is None  # opening reads headers only
    first = ck.layer(1)
    assert not ck._layers and ck.layer(1) is not first  # not cached: one layer resident at a time
    cached = Checkpoint(sharded)
    assert cached.layer(0) is cached.layer(0)
    with pytest.raises(IndexError):
        cached.layer(2)


def _rewrite(src, dst, change):
    """Copy a single-file checkpoint, applying ``change(tensors)`` to its tensor dict."""
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / SINGLE_NAME))
    change(tensors)
    save_file(tensors, str(dst / SINGLE_NAME))
    return dst


@pytest.mark.parametrize(
    "change,pattern",
    [
        (
            lambda t: t.pop("model.layers.1.mlp.experts.3.up_proj.weight"),
            r"missing tensor 'model.layers.1.mlp.experts.3.up_proj.weight' \(expected shape \[64, 128\]\)",
        ),
        (
            lambda t: t.update(
                {"model.layers.0.mlp.experts.8.up_proj.weight": torch.zeros(64, 128).bfloat16()}
            ),
            r"unexpected tensor 'model.layers.0.mlp.experts.8.up_proj.weight'",
        ),
        (
            lambda t: t.update(
                {"model.layers.0.self_attn.q_norm.weight": torch.ones(64, dtype=torch.bfloat16)}
            ),
            r"'model.layers.0.self_attn.q_norm.weight' has shape \[64\], expected \[32\]",
        ),
        (
            lambda t: t.update({"lm_head.weight": t["lm_head.weight"].float()}),
            r"'lm_head.weight' has dtype F32, expected BF16",
        ),
    ],
)
def test_bad_checkpoints_name_the_key(single, tmp_path, change, pattern):
    bad = _rewrite(single, tmp_path / "bad", change)
    with pytest.raises(CheckpointError, match=pattern):
        Checkpoint(bad)


def test_missing_shard_and_config_mismatch(sharded, tmp_path):
    bad = shutil.copytree(sharded, tmp_path / "bad")
    next(bad.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="shard model-00002-of-.* is missing"):
        Checkpoint(bad)
    with pytest.raises(CheckpointError, match="num_experts: config 16 vs config.json 8"):
        Checkpoint(sharded, cfg=TINY.replace(num_experts=16))
    with pytest.raises(CheckpointError, match="config.json is missing"):
        Checkpoint(tmp_path)


def test_every_config_dtype_has_a_safetensors_dtype():
    assert tuple(SAFETENSORS_DTYPES) == DTYPES


NAN_KEY = "model.layers.0.mlp.experts.3.down_proj.weight"
INF_KEY = "model.layers.1.self_attn.k_proj.weight"


@pytest.fixture(scope="module")
def non_finite(single, tmp_path_factory):
    """The single-file checkpoint with one NaN in layer 0 and one inf in layer 1."""

    def poison(t):
        t[NAN_KEY][5, 7] = float("nan")
        t[INF_KEY][0, 1] = float("inf")

    return _rewrite(single, tmp_path_factory.mktemp("non_finite") / "ck", poison)


def test_verify_names_nan_and_inf_when_their_layer_loads(non_finite):
    ck = Checkpoint(non_finite, verify=True)  # opening scans nothing
    assert ck.globals.final_norm.shape == (128,)  # clean tensors load under verify
    with pytest.raises(
        CheckpointError,
        match=rf"{SINGLE_NAME}: tensor '{NAN_KEY}' has 1 NaN and 0 ±inf values \(first at index \[5, 7\]\)",
    ):
        ck.layer(0)
    with pytest.raises(
        CheckpointError,
        match=rf"{SINGLE_NAME}: tensor '{INF_KEY}' has 0 NaN and 1 ±inf values \(first at index \[0, 1\]\)",
    ):
        ck.layer(1)


def test_without_verify_non_finite_values_load_unscanned(non_finite, monkeypatch):
    def no_scan(*args):
        raise AssertionError("verify=False must not scan tensors")

    monkeypatch.setattr(weights, "_check_finite", no_scan)
    ck = Checkpoint(non_finite)
    assert np.isnan(ck.layer(0).down[3, 5, 7]) and np.isinf(ck.layer(1).wk[0, 1])
    assert np.isfinite(ck.layer(0).wq).all()


def test_file_changed_after_open_names_file_and_key(single, tmp_path):
    ck_dir = shutil.copytree(single, tmp_path / "ck")
    ck = Checkpoint(ck_dir)  # validated; no data read yet
    file = ck_dir / SINGLE_NAME
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(
        CheckpointError, match=rf"{SINGLE_NAME}: cannot read tensor 'model.layers.0.input_layernorm.weight'"
    ):
        ck.layer(0)


def test_writer_is_deterministic_and_independent_of_sharding(single, sharded, tmp_path):
    again = write_random_checkpoint(TINY, tmp_path / "again", seed=0, max_shard_bytes=None)
    assert (again / SINGLE_NAME).read_bytes() == (single / SINGLE_NAME).read_bytes()
    other = Checkpoint(write_random_checkpoint(TINY, tmp_path / "seed1", seed=1, max_shard_bytes=None))
    assert not np.array_equal(other.layer(0).wq, Checkpoint(single).layer(0).wq)


def test_random_routing_is_decisive(single):
    """The writer's routing margin (k-th minus (k+1)-th router logit) is far above bf16 rounding."""
    model = ReferenceModel(Checkpoint(single), "bf16")
    ids = np.random.default_rng(0).integers(0, TINY.vocab_size, 200)
    _, routings = model.forward(ids)
    for r in routings:
        rel = topk_margin(r.logits, TINY.num_experts_per_tok) / np.abs(r.logits).max(-1)
        assert rel.min() > 0.1  # 0.1 of the largest logit ≈ 25 bf16 ulps
    plan = routing_plan(TINY, 0)
    experts = np.sort(routings[0].idx, -1)
    group = plan.token_group[ids]
    for g in np.unique(group):  # every token of a group picks that group's experts
        assert len({tuple(row) for row in experts[group == g]}) == 1
