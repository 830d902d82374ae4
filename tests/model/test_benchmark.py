"""nki_moe.model.benchmark: launches, host fit, e2e arithmetic, sensitivity patching, NKI ratio, timeline.

Kernel times come from a stand-in estimator (a fixed µs per launch, linear in the context for attention) so
the arithmetic can be checked by hand; one test costs a real (small) kernel under the patched cost model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from nki_moe import competition
from nki_moe.model import benchmark as bench
from nki_moe.model import counts
from nki_moe.model.config import get_config
from nki_moe.perf import collectives, hardware
from nki_moe.perf.perfetto import validate_trace_events

CFG = get_config("qwen3-30b-a3b")


class FakeEstimator(bench.Estimator):
    """10 µs per launch; attention 20 + 0.01·L µs (linear in the cached positions L)."""

    def us(self, kernel, shape, target):
        base = 20.0 + 0.01 * shape["L"] if "L" in shape else 10.0
        return base * (1.5 if target == "trn2" else 1.0)


def test_estimates_use_the_kernel_models_versions():
    """The step estimates cost the kernels the kernel model runs: attention_prefill v5 (order-preserving),
    not the op's faster final version; every other op at its final version unless the model chose else."""
    from nki_moe import ops
    from nki_moe.model.assembled import _OP_FAMILIES, DEFAULT_KERNELS

    est = bench.Estimator()
    final = ops.get("attention_prefill").final.name
    assert bench.kernel_model_versions()["attention_prefill"] == "v5" != final
    for switch, kernel in DEFAULT_KERNELS.items():
        family = next(f for f in _OP_FAMILIES[switch] if any(v.kernel == kernel for v in ops.get(f).versions))
        assert ops.get(family).version(est.version(family)).kernel == kernel, (switch, family)
    assert bench.Estimator({}).version("attention_prefill") == final


def test_bucket():
    assert [bench.bucket(p.context_len) for p in competition.PROMPTS] == [128, 256, 128, 128, 512]
    assert bench.bucket(640) == 640
    with pytest.raises(ValueError, match="641"):
        bench.bucket(641)


def test_decode_launches_add_up_to_the_model_macs():
    """The separate plan's MACs on one rank × 4 ranks = the model's decode MACs (router replicated on every
    rank; the LM head's vocabulary share padded to 128: 32 columns more per rank)."""
    context = 640
    launches = bench.decode_launches(context, CFG, 4, "separate", "separate")
    rank = sum(la.count * la.macs for la in launches)
    router = next(la for la in launches if la.kernel == "router")
    pad = 4 * 38016 - CFG.vocab_size
    model = 4 * rank - 3 * router.count * router.macs - pad * CFG.hidden_size
    assert model == counts.decode_macs(CFG, context)
    assert sum(la.count for la in launches if la.kind == "collective") == 96


def test_decode_plan_counts_per_layer():
    launches = bench.decode_launches(100, CFG)
    by_op = {la.op: la for la in launches}
    assert by_op["attention (q|k|v .. o)"].shape == dict(L=99, n_q=8, n_kv=1)
    assert by_op["norm + router + experts"].kernel == "moe_layer_decode"
    assert all(la.count == 48 for la in launches if la.where == "layer")
    assert [la.op for la in launches if la.where == "step"] == ["embed", "final_norm", "lm_head", "sampling"]
    assert by_op["lm_head"].shape == dict(T=1, N=38016)  # 151936 / 4 = 37984, padded to a multiple of 128


def test_prefill_chunks_and_experts_choice():
    launches = bench.prefill_launches(300, CFG, experts="chunked", moe="separate", chunk=128)
    chunks = {la.shape["T"]: la.count for la in launches if la.kernel == "moe_decode"}
    assert chunks == {128: 96, 44: 48}
    fused = bench.prefill_launches(300, CFG, experts="chunked", moe="fused", chunk=128)
    assert {la.kernel for la in fused if la.group == "moe"} == {"moe_layer_decode"}
    with pytest.raises(ValueError, match="experts"):
        bench.prefill_launches(300, CFG, experts="nope")


def test_host_fit_reproduces_the_anchors():
    host = bench.fit_host_model(0.5)
    fits = {f["key"]: f for f in host.fit}
    gen = np.array([p.generated_tokens for p in competition.PROMPTS])
    for f in fits.values():  # the least-squares line passes through the anchors within 2.5 %
        assert max(abs(r) for r in f["residual_pct"]) < 2.5
        assert math.isclose(f["host_ms"], f["slope_ms"] - f["device_ms"])
    slope = np.polyfit(gen, competition.FIRST_PLACE_TRN3.latency_ms, 1)[0]
    assert math.isclose(host.per_token_ms("trn3"), slope - 5.45, rel_tol=1e-9)  # ODS + async: the 1st place
    sync = host.with_(on_device_sampling=False, async_mode=False)
    assert math.isclose(sync.per_token_ms("trn2"), fits["baseline trn2"]["host_ms"])
    assert math.isclose(sync.per_request_ms("trn3"), fits["baseline trn3"]["intercept_ms"])
    other = bench.fit_host_model(0.25)  # another split between sampling and async: same fitted total
    assert math.isclose(other.per_token_ms("trn3"), host.per_token_ms("trn3"))
    assert other.with_(async_mode=False).per_token_ms("trn3") > host.with_(async_mode=False).per_token_ms(
        "trn3"
    )
    assert math.isclose(host.with_(scale=1.2).per_token_ms("trn2"), 1.2 * host.per_token_ms("trn2"))


def test_prompt_estimates_arithmetic():
    est, host = FakeEstimator(), bench.fit_host_model()
    rows = bench.prompt_estimates("trn3", est, host, 1.0, decode_contexts=(14, 639))
    assert [r.generated for r in rows] == [620, 448, 586, 626, 128]
    for r, b in zip(rows, competition.BASELINES["trn3"]):
        device = r.device_ms_per_token * (r.generated - 1)
        assert math.isclose(r.e2e_ms, r.ttft_ms + device + r.generated * r.host_ms_per_token + r.request_ms)
        assert math.isclose(r.tokens_per_s, 640 / (r.e2e_ms / 1e3))
        assert math.isclose(
            r.score, competition.score(r.e2e_ms, r.tokens_per_s, b.latency_ms, b.throughput, 1.0)
        )
    # the step is linear in the context here, so interpolating between two contexts is exact
    p = competition.PROMPTS[0]
    exact = sum(bench.step_estimates("trn3", est, "decode", context=c).total_us for c in range(21, 640)) / 1e3
    assert math.isclose(rows[0].device_ms_per_token * 619, exact, rel_tol=1e-9)
    assert rows[0].bucket == bench.bucket(p.context_len)
    slower = bench.prompt_estimates("trn3", est, host.with_(scale=2.0), 1.0, decode_contexts=(14, 639))
    assert bench.score_sum(slower) < bench.score_sum(rows)
    assert bench.score_sum(rows) == pytest.approx(sum(r.score for r in rows))


def test_decode_best_plan_is_the_cheapest():
    step = bench.step_estimates("trn2", FakeEstimator(), "decode", context=640)
    totals = [
        sum(
            bench._line(la, FakeEstimator(), "trn2").total_us
            for la in bench.decode_launches(640, CFG, 4, a, m)
        )
        for a in bench.attention_plans()
        for m in ("fused", "separate")
    ]
    assert step.total_us == pytest.approx(min(totals)) and "decode plan" in step.notes[0]


def test_patched_cost_model_scales_and_restores():
    hw0, launch0, hop0 = hardware.get_hardware("trn2"), collectives.LAUNCH_US, collectives.HOP_US
    ar0 = collectives.all_reduce_time(4096, 4, "trn2").total_us
    with pytest.raises(RuntimeError):
        with bench.patched_cost_model(hbm_bandwidth=1.2, dma_fixed_cost=0.8, allreduce_latency=1.2):
            hw = hardware.get_hardware("trn2")
            assert hw.hbm_tbs == pytest.approx(1.2 * hw0.hbm_tbs)
            assert hw.dma_semaphore_us == pytest.approx(0.8 * hw0.dma_semaphore_us)
            assert hw.dma_hwdge_us == pytest.approx(0.8 * hw0.dma_hwdge_us)
            assert collectives.all_reduce_time(4096, 4, "trn2").total_us > ar0
            raise RuntimeError("restored even on an error")
    assert hardware.get_hardware("trn2") is hw0
    assert (collectives.LAUNCH_US, collectives.HOP_US) == (launch0, hop0)


def test_patched_cost_model_recosts_a_kept_trace():
    """A real kernel (rmsnorm at T = 1): emulated once, re-costed slower under a larger DMA fixed cost."""
    est = bench.Estimator()
    base = est.us("rmsnorm", dict(T=1), "trn2")
    with bench.patched_cost_model(dma_fixed_cost=2.0):
        slow = est.us("rmsnorm", dict(T=1), "trn2")
    assert slow > base + 1.0  # its dependent DMAs pay the fixed cost more than once
    assert est.us("rmsnorm", dict(T=1), "trn2") == base and len(est.emulated) == 1


def test_sensitivity_directions():
    rows = bench.sensitivity(
        "trn3", FakeEstimator(), bench.fit_host_model(), 1.0, 0.2, decode_contexts=(14, 639)
    )
    by = {r["parameter"]: r for r in rows}
    assert set(by) == set(bench.SENSITIVITY_PARAMETERS)
    for name in ("host_term", "allreduce_latency"):  # more time -> lower score
        assert by[name]["score_high"] < by[name]["base"] < by[name]["score_low"]
    assert by["hbm_bandwidth"]["score_high"] >= by["hbm_bandwidth"]["score_low"]


@dataclass
class _Rec:
    macs: int
    nki: bool


def test_nki_mac_ratio():
    assert bench.nki_mac_ratio([_Rec(99, True), _Rec(1, False), _Rec(0, False)]) == 0.99
    with pytest.raises(ValueError, match="no MACs"):
        bench.nki_mac_ratio([_Rec(0, True)])
    assert bench.plan_mac_ratio() == 1.0  # every MAC of the plan is in a registry kernel


def test_step_trace_is_one_whole_step():
    step = bench.step_estimates("trn2", FakeEstimator(), "decode", context=640)
    obj = bench.step_trace_events(step)
    validate_trace_events(obj)
    slices = [e for e in obj["traceEvents"] if e["ph"] == "X"]
    assert len(slices) == sum(ln.launch.count for ln in step.lines)
    assert obj["otherData"]["total_us"] == pytest.approx(step.total_us)
    end = max(e["ts"] + e["dur"] for e in slices)
    assert end == pytest.approx(step.total_us)
