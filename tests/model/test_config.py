"""Named Qwen3-MoE configs, validation and the Hugging Face config.json round trip."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from nki_moe.model.config import (
    CONFIGS,
    DTYPES,
    SHAPE_FIELDS,
    ConfigError,
    ModelConfig,
    get_config,
    load_config,
)

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
        # features the reference forward does not compute are refused, not silently run as the default
        (dict(hidden_act="gelu"), "hidden_act='gelu' is not implemented"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling=.* is not implemented"),
        (dict(attention_bias=True), "attention_bias=True is not implemented"),
        (dict(use_sliding_window=True), "use_sliding_window=True is not implemented"),
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


def _config_file(tmp_path, **changes):
    """config.json of the tiny config with some keys changed, in a directory of its own."""
    path = tmp_path / "ck" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({**get_config("tiny").to_hf_dict(), **changes}))
    return path


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("rope_theta", "abc", "rope_theta must be a finite number, got 'abc' (str)"),
        ("rms_norm_eps", "small", "rms_norm_eps must be a finite number, got 'small' (str)"),
        ("rope_theta", float("nan"), "rope_theta must be a finite number, got nan"),
        ("rms_norm_eps", float("inf"), "rms_norm_eps must be a finite number, got inf"),
        ("router_aux_loss_coef", True, "router_aux_loss_coef must be a finite number, got True (bool)"),
        ("torch_dtype", "float8", "must be one of bfloat16, float16, float32, got 'float8'"),
        ("torch_dtype", 16, "dtype must be a string, got 16 (int)"),
        ("norm_topk_prob", "false", "norm_topk_prob must be a boolean (true/false), got 'false' (str)"),
        ("norm_topk_prob", 1, "norm_topk_prob must be a boolean (true/false), got 1 (int)"),
        ("tie_word_embeddings", 0, "tie_word_embeddings must be a boolean (true/false), got 0 (int)"),
        ("hidden_size", 128.0, "hidden_size must be an integer, got 128.0 (float)"),
        ("hidden_size", True, "hidden_size must be an integer, got True (bool)"),
        ("num_experts", "8", "num_experts must be an integer, got '8' (str)"),
        ("max_window_layers", 2.0, "max_window_layers must be an integer, got 2.0 (float)"),
        ("sliding_window", 4096.0, "sliding_window must be an integer or null, got 4096.0 (float)"),
        ("bos_token_id", 1.0, "bos_token_id must be an integer or null, got 1.0 (float)"),
        ("mlp_only_layers", [1.0], "mlp_only_layers must be a list of integers, got (1.0,) (tuple)"),
        ("mlp_only_layers", 5, "mlp_only_layers must be a list of integers, got 5 (int)"),
        ("hidden_act", 5, "hidden_act must be a string, got 5 (int)"),
        ("rope_scaling", "yarn", "rope_scaling must be an object or null, got 'yarn' (str)"),
        ("rope_parameters", "default", "'rope_parameters' must be an object, got 'default'"),
    ],
)
def test_wrong_types_name_file_and_field(tmp_path, key, value, message):
    path = _config_file(tmp_path, **{key: value})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '{"model_type": "qwen3_moe",',
            "not valid JSON: Expecting property name enclosed in double quotes: line 1",
        ),
        ("", "not valid JSON: Expecting value: line 1 column 1"),
        ("\udcff", "not valid JSON"),
        ("[]", "a config.json must hold a JSON object, got list"),
    ],
)
def test_unreadable_config_json_names_the_file(tmp_path, text, message):
    path = tmp_path / "config.json"
    path.write_text(text, errors="surrogateescape")  # "\udcff" writes the single byte 0xff
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {message}"):
        load_config(path)


def test_json_integers_are_accepted_as_floats(tmp_path):
    """An integer where a float is expected (``"rope_theta": 1000000``) is the same number."""
    cfg = load_config(_config_file(tmp_path, rope_theta=1000000, rms_norm_eps=1, attention_dropout=0))
    assert cfg == get_config("tiny").replace(name="ck", rms_norm_eps=1.0)
    assert cfg.rope_theta == 1e6


def test_replace_checks_types_too():
    with pytest.raises(ConfigError, match="norm_topk_prob must be a boolean"):
        REAL.replace(norm_topk_prob="false")
    assert issubclass(ConfigError, ValueError) and DTYPES == ("bfloat16", "float16", "float32")
