"""Named Qwen3-MoE configs, validation and the Hugging Face config.json round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest

from nki_moe.model.config import CONFIGS, SHAPE_FIELDS, ModelConfig, get_config

REAL = get_config("qwen3-30b-a3b")


def test_named_configs():
    assert list(CONFIGS) == ["qwen3-30b-a3b", "real-width-2layer", "tiny"]
    for name, cfg in CONFIGS.items():
        assert cfg.name == name and cfg.validate() is cfg


def test_real_config_exact_hf_values():
    # [QWEN3-CONFIG]
    expected = dict(
        hidden_size=2048,
        num_hidden_layers=48,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        moe_intermediate_size=768,
        num_experts=128,
        num_experts_per_tok=8,
        norm_topk_prob=True,
        vocab_size=151936,
        rope_theta=1e6,
        rope_scaling=None,
        rms_norm_eps=1e-6,
        max_position_embeddings=40960,
        tie_word_embeddings=False,
        decoder_sparse_step=1,
        mlp_only_layers=(),
        dtype="bfloat16",
        intermediate_size=6144,
        attention_bias=False,
        hidden_act="silu",
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=48,
        bos_token_id=151643,
        eos_token_id=151645,
        router_aux_loss_coef=0.001,
        output_router_logits=False,
        initializer_range=0.02,
    )
    assert {k: getattr(REAL, k) for k in expected} == expected
    assert REAL.q_per_kv == 8
    assert REAL.head_dim * REAL.num_attention_heads == 4096  # not hidden_size


def test_real_width_2layer_and_tiny():
    two = get_config("real-width-2layer")
    diff = {f.name for f in dataclasses.fields(ModelConfig) if getattr(two, f.name) != getattr(REAL, f.name)}
    assert diff == {"name", "num_hidden_layers", "max_window_layers"} and two.num_hidden_layers == 2
    tiny = get_config("tiny")  # the tiny random test model
    # SHAPE_FIELDS: V, H, L, n_q, n_kv, d, E, k, I, norm_topk_prob, rope_theta, rms_norm_eps, tied, dtype
    want = (512, 128, 2, 4, 2, 32, 8, 2, 64, True, 1e6, 1e-6, False, "bfloat16")
    assert tuple(getattr(tiny, f) for f in SHAPE_FIELDS) == want


def test_unknown_name_lists_known():
    with pytest.raises(KeyError, match="qwen3-30b-a3b, real-width-2layer, tiny"):
        get_config("qwen3-235b")


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(num_key_value_heads=5), "num_key_value_heads"),
        (dict(num_experts_per_tok=129), "num_experts_per_tok"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(head_dim=127), "head_dim"),
        (dict(vocab_size=1000), "bos_token_id"),
        (dict(mlp_only_layers=(48,)), "mlp_only_layers"),
        (dict(rms_norm_eps=0.0), "rms_norm_eps"),
    ],
)
def test_validate_names_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        REAL.replace(**changes)


def test_to_hf_dict_is_complete_4_51_layout():
    d = REAL.to_hf_dict()
    assert d["model_type"] == "qwen3_moe" and d["architectures"] == ["Qwen3MoeForCausalLM"]
    assert d["num_experts"] == 128 and "num_local_experts" not in d  # 4.51 spelling ([HF-QWEN3MOE])
    assert d["torch_dtype"] == "bfloat16" and d["rope_theta"] == 1e6 and d["rope_scaling"] is None
    assert d["mlp_only_layers"] == [] and d["transformers_version"] == "4.51.0"
    fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"name", "dtype"}
    assert fields <= set(d)
    assert json.loads(json.dumps(d)) == d


@pytest.mark.parametrize("name", list(CONFIGS))
def test_round_trip(name):
    cfg = get_config(name)
    assert ModelConfig.from_hf_dict(cfg.to_hf_dict(), name=name) == cfg


def test_from_hf_dict_accepts_transformers5_spelling():
    d = REAL.to_hf_dict()
    d["num_local_experts"] = d.pop("num_experts")
    d["dtype"] = d.pop("torch_dtype")
    d["rope_parameters"] = {"rope_theta": d.pop("rope_theta"), "rope_type": "default"}
    del d["rope_scaling"]
    assert ModelConfig.from_hf_dict(d, name="qwen3-30b-a3b") == REAL


def test_from_hf_dict_errors_name_the_field():
    d = REAL.to_hf_dict()
    with pytest.raises(ValueError, match="'head_dim' is missing"):
        ModelConfig.from_hf_dict({k: v for k, v in d.items() if k != "head_dim"})
    with pytest.raises(ValueError, match="'num_experts' is inconsistent"):
        ModelConfig.from_hf_dict({**d, "num_local_experts": 64})
    with pytest.raises(ValueError, match="'rope_theta' is inconsistent"):
        ModelConfig.from_hf_dict({**d, "rope_parameters": {"rope_theta": 1e7, "rope_type": "default"}})
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        ModelConfig.from_hf_dict({**d, "num_experts_per_tok": 200})
    with pytest.raises(ValueError, match="model_type"):
        ModelConfig.from_hf_dict({**d, "model_type": "qwen3"})


def test_transformers_reads_the_dict():
    """transformers 5 loads our 4.51-style dict with the same values (and the defaults we copied)."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.Qwen3MoeConfig.from_dict(REAL.to_hf_dict())
    assert (hf.num_local_experts, hf.num_experts_per_tok, hf.head_dim) == (128, 8, 128)
    assert hf.norm_topk_prob is True
    assert hf.rope_parameters["rope_theta"] == 1e6 and hf.num_hidden_layers == 48
    assert ModelConfig.from_hf_dict(hf.to_dict(), name="qwen3-30b-a3b") == REAL
    defaults = transformers.Qwen3MoeConfig()
    assert (defaults.attention_dropout, defaults.use_cache) == (REAL.attention_dropout, REAL.use_cache)
