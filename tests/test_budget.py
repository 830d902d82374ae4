"""The per-token budget: launch counts and costs against the analytic counts, estimates vs floors, totals."""

from __future__ import annotations

import json

import pytest

from nki_moe import budget, ops
from nki_moe.ladder import Sweep
from nki_moe.model import counts
from nki_moe.model.config import get_config
from nki_moe.perf.collectives import all_reduce_time
from nki_moe.perf.hardware import get_hardware
from nki_moe.perf.roofline import memory_time

CFG = get_config("qwen3-30b-a3b")
NORMS = ("input_norm", "post_norm", "final_norm")  # the RMSNorms over [T, H]


def _sum(step, field: str) -> int:
    return sum(la.count * getattr(la.cost, field) for la in step)


def test_a_step_has_97_norms_over_the_hidden_dim_and_one_launch_per_op_and_layer():
    step = budget.launches(CFG, 1, 639)
    assert sum(la.count for la in step if la.op in NORMS) == 97 == 2 * CFG.num_hidden_layers + 1
    per_layer = [la.op for la in step if la.count == CFG.num_hidden_layers]
    assert len(per_layer) == 12 and {"q_proj", "o_proj", "router", "experts", "attention"} <= set(per_layer)
    assert [la.op for la in step if la.count == 1] == ["embed", "final_norm", "lm_head"]


@pytest.mark.parametrize("name", ["qwen3-30b-a3b", "real-width-2layer", "tiny"])
def test_decode_macs_and_weight_bytes_equal_the_analytic_counts(name):
    cfg = get_config(name)
    step = budget.launches(cfg, 1, 639)
    assert _sum(step, "macs") == counts.decode_macs(cfg, 640)
    assert _sum(step, "weight_bytes") == sum(counts.decode_weight_bytes(cfg).values())
    kv = sum(la.count * la.cost.act_bytes for la in step if la.op == "attention")
    assert kv >= counts.decode_bytes(cfg, 640)["kv_cache"]  # attention reads every cached K/V once


@pytest.mark.parametrize("tokens", [2, 18, 640])
def test_prefill_macs_and_weight_bytes_equal_the_analytic_counts(tokens):
    step = budget.launches(CFG, tokens, 0)
    assert _sum(step, "macs") == counts.prefill_macs(CFG, tokens, last_token_logits_only=True)
    want = sum(counts.prefill_weight_bytes(CFG, tokens).values())  # the embedding gathers T rows
    assert abs(_sum(step, "weight_bytes") - want) <= CFG.num_hidden_layers  # experts rounded once per layer


def test_tp4_ranks_split_everything_but_the_replicated_router():
    rank = budget.launches(CFG, 1, 639, budget.TP4_LNC2)
    router = CFG.num_hidden_layers * CFG.hidden_size * CFG.num_experts
    assert budget.TP4_LNC2.tp * _sum(rank, "macs") == counts.decode_macs(CFG, 640) + 3 * router
    by_op = {la.op: la for la in rank}
    assert by_op["q_proj"].shape == dict(T=1, K=2048, N=1024) and by_op["o_proj"].shape["K"] == 1024
    assert by_op["input_norm"].shape == dict(T=1, H=2048)  # replicated: the same launch as on one rank


def test_launches_reject_an_empty_step():
    with pytest.raises(ValueError, match="tokens >= 1"):
        budget.launches(CFG, 0, 0)


def test_the_decode_floor_is_notebook_00s():
    total = sum(counts.decode_bytes(CFG, 640).values())
    hbm = 1e6 * memory_time(total, get_hardware("trn2"))  # the whole chip's HBM bandwidth
    assert 2100 < hbm < 2130
    chip = budget.step_floor_us(CFG, "trn2", "decode", 640, budget.TP4_LNC2)
    per_allreduce = all_reduce_time(2 * CFG.hidden_size, 4, "trn2").total_us
    assert chip == pytest.approx(hbm + 2 * CFG.num_hidden_layers * per_allreduce)  # + 96 all-reduces
    assert 1100 < chip - hbm < 1200
    # one rank alone: a quarter of the chip's HBM and no all-reduce
    assert budget.step_floor_us(CFG, "trn2", "decode", 640, budget.SINGLE_LNC2) == pytest.approx(4 * hbm)
    with pytest.raises(ValueError, match="phase"):
        budget.step_floor_us(CFG, "trn2", "generate", 640)


def _est(us=9.0, target="trn2", **shape):
    return budget.Estimate("rmsnorm", shape or dict(T=1, H=2048), target, us, "v3", 2)


def test_an_op_without_a_kernel_or_an_estimate_is_shown_as_its_floor():
    b = budget.decode_budget([_est(T=2, H=2048), _est(target="trn3")], "trn2")  # other shape, other target
    lines = {ln.launch.op: ln for ln in b.lines}
    assert lines["rope"].kind == "floor" and lines["rope"].source == "no kernel yet"
    assert lines["experts"].kind == "floor" and "moe_decode: not estimated" in lines["experts"].source
    assert lines["input_norm"].kind == "floor" and "not estimated at this shape" in lines["input_norm"].source
    assert all(ln.us_each == ln.floor_us_each for ln in b.lines)
    assert "experts" in b.missing and b.estimated_us == 0 and b.missing_us == b.total_us


def test_an_estimate_at_the_launch_shape_replaces_the_floor_and_the_best_one_wins():
    b = budget.decode_budget([_est(12.0), _est(9.0)], "trn2", budget.TP4_LNC2)
    lines = {ln.launch.op: ln for ln in b.lines}
    for op in ("input_norm", "final_norm"):
        assert (
            lines[op].kind == "estimate"
            and lines[op].us_each == 9.0
            and lines[op].source == "rmsnorm v3 (LNC=2)"
        )
    assert lines["q_norm"].kind == "floor"  # [8, 128] rows: another shape of the same kernel
    assert "input_norm" not in b.missing and b.estimated_us == 49 * 9.0


def test_totals_add_up_and_a_notebook_line_is_a_subset():
    b = budget.prefill_budget([_est(5.0, T=128, H=2048), _est(1.0)], 128, "trn2", budget.SINGLE_LNC2)
    assert b.total_us == pytest.approx(sum(ln.launch.count * ln.us_each for ln in b.lines))
    assert b.total_us == pytest.approx(b.estimated_us + b.missing_us)
    norms = b.only("rmsnorm")
    assert [ln.launch.op for ln in norms.lines] == ["input_norm", "q_norm", "k_norm", "final_norm"]
    assert norms.estimated_us == 48 * 5.0 + 1.0 and norms.floor_us == b.floor_us
    assert norms.share_of_floor() == pytest.approx(norms.total_us / b.floor_us)
    d = json.loads(json.dumps(norms.as_dict()))
    assert d["total_us"] == pytest.approx(sum(x["total_us"] for x in d["lines"]))
    assert d["missing"] == ["q_norm", "k_norm"] and "estimates" in d["estimated_by"]
    assert "LNC=2" in norms.summary() and "%" in norms.summary()
    with pytest.raises(KeyError, match="experts_kernel"):
        b.only("experts_kernel")


def test_shapes_name_every_launch_of_a_kernel_across_deployments():
    mm = budget.shapes("matmul", prefill=640)
    assert dict(T=1, K=4096, N=2048) in mm and dict(T=640, K=1024, N=2048) in mm  # o_proj, 1 and 4 ranks
    assert dict(T=1, K=2048, N=151936) in mm and dict(T=640, K=2048, N=151936) not in mm  # last-token logits
    assert budget.shapes("add_rmsnorm", prefill=18) == [dict(T=1, H=2048), dict(T=18, H=2048)]
    with pytest.raises(KeyError, match="'attention'"):
        budget.shapes("attention", prefill=18)


def test_estimates_from_a_sweep_take_the_fastest_version_with_the_full_shape():
    op = ops.get("router")
    rows = [dict(version=v, T=1, target="trn2", latency_us=us) for v, us in (("v0", 11.0), ("v1", 10.0))]
    rows.append(dict(version="v2", T=1, target="trn2", latency_us=18.0))
    (best,) = budget.estimates_from_sweep(op, Sweep(rows))
    assert (best.version, best.us, best.lnc) == ("v1", 10.0, 2)
    assert best.shape == dict(T=1, groups=1, H=2048, E=128)  # defaults filled: what launches look up
    (final,) = budget.estimates_from_sweep(op, Sweep(rows), versions=("v2",))
    assert (final.version, final.us) == ("v2", 18.0)


def test_estimate_runs_the_kernel_once_per_shape_and_skips_known_shapes():
    op = ops.get("rmsnorm")
    got = budget.estimate(op, [dict(T=4, H=128)], versions=("v3",))
    assert sorted(e.target for e in got) == ["trn2", "trn3"] and all(
        e.us > 1 and e.version == "v3" for e in got
    )
    assert budget.estimate(op, [dict(T=4, H=128)], versions=("v3",), known=got[:1]) == []


def test_recorded_estimates_read_the_results_and_name_a_bad_entry(tmp_path):
    good = _est(T=640, H=2048)
    (tmp_path / "01_rmsnorm.json").write_text(json.dumps({"budget": {"estimates": [good.as_dict()]}}))
    (tmp_path / "00_by_the_numbers.json").write_text(json.dumps({"decode_floor_ms": {"trn2": 2.1}}))
    assert budget.recorded_estimates(tmp_path) == [good]
    (tmp_path / "03_router_top8.json").write_text(json.dumps({"budget": {"estimates": [{"op": "router"}]}}))
    with pytest.raises(ValueError, match=r"03_router_top8.json: budget.estimates\[0\]"):
        budget.recorded_estimates(tmp_path)


def test_a_notebook_line_covers_decode_and_prefill_on_both_deployments_and_is_recorded():
    est = [_est(9.0), _est(20.0, T=18, H=2048)]
    lines = budget.notebook_lines(("rmsnorm",), est, "trn2", prefill=18)
    assert sorted(lines) == ["decode_lnc2", "decode_tp4_lnc2", "prefill18_lnc2", "prefill18_tp4_lnc2"]
    tp4 = budget.step_floor_us(CFG, "trn2", "decode", budget.DECODE_CONTEXT, budget.TP4_LNC2)
    assert lines["decode_tp4_lnc2"].floor_us == pytest.approx(tp4)  # HBM + the 96 all-reduces
    assert lines["decode_lnc2"].floor_us > 2 * tp4  # one rank: a quarter of the bandwidth, no all-reduce
    assert all({ln.launch.kernel for ln in b.lines} == {"rmsnorm"} for b in lines.values())
    entry = json.loads(json.dumps(budget.results_entry(est, lines)))
    assert [budget.Estimate.from_dict(d) for d in entry["estimates"]] == est
    assert entry["prefill18_tp4_lnc2"]["lines"][0]["us_each"] == 20.0  # input norm [18, 2048]
