"""MoE prefill kernels (nki_moe.kernels.moe_prefill) through the ladder harness, strict.

Every version against the NumPy MoE reference by the 3-way error ratio at bf16; the trace's MACs equal the
analytic count of the T·8 (token, expert) pairs plus, for the grouped versions, the padding of each
expert's last block (counted separately); the expert weights read are the touched experts' once (v1: all E;
v2+: once per block). Small widths (H = 512, E = 16, I = 192: a 128-row and a 64-row chunk, as at TP = 4)
for every version, including T not a multiple of the block, T = 640, an empty expert, one hot expert
receiving every token and tied routing; the real widths for the final version. v5+ change only the schedule
(DMA issue order, engine balance, where the combine's sum lives): their outputs equal v4's bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from nki_moe import ops
from nki_moe.kernels.moe_prefill import BLOCK

op = ops.get("moe_prefill")
SMALL = dict(H=512, E=16, inter=192, tp=1)
GROUPED = [v.name for v in op.versions[1:]]
SCHEDULED = [v.name for v in op.versions[5:]]  # v5+: v4's arithmetic, another schedule


def _check(version, T, routing="random", **shape):
    """op.check on seeded inputs; asserts MACs = T·8·3·H·I + the padding slots' 3·H·I each."""
    shape = {**SMALL, **shape}
    args = op.args(T=T, routing=routing, **shape)
    checked = op.check(version, args=args)  # MACs asserted below, padding separately
    kernel = op.version(version).kernel
    pad = ops.moe_block_slots(args[1], BLOCK[kernel]) - T * 8 if kernel in BLOCK else 0
    inter = ops._rank_inter(shape["tp"], shape["inter"])
    assert checked.macs == op.cost(T=T, **shape).macs + pad * 3 * shape["H"] * inter, checked.macs
    return checked, args


def _expert_bytes(**shape) -> int:
    shape = {**SMALL, **shape}
    return int(ops.moe_weight_bytes(1, shape["tp"], 1, shape["H"], shape["inter"]))


@pytest.mark.parametrize("T", (1, 20, 130))
@pytest.mark.parametrize("version", [v.name for v in op.versions])
def test_every_version_small(version, T):
    checked, args = _check(version, T)
    got = ops.moe_expert_read_bytes(checked.trace)
    kernel = op.version(version).kernel
    if version == "v0":  # one expert per (token, slot) pair
        assert got == T * 8 * _expert_bytes()
    elif version == "v1":  # the static loop reads every expert once
        assert got == SMALL["E"] * _expert_bytes()
    else:  # one expert per block in use
        assert got == ops.moe_block_slots(args[1], BLOCK[kernel]) // BLOCK[kernel] * _expert_bytes()


def test_grouped_versions_read_each_touched_expert_once_at_moderate_T():
    """T = 20 over 16 experts: every count < 64, so one block per touched expert: bytes = touched once."""
    for version in GROUPED[1:]:
        checked, args = _check(version, 20)
        assert np.bincount(args[1].ravel()).max() < 64
        assert ops.moe_expert_read_bytes(checked.trace) == ops.moe_touched(args[1]) * _expert_bytes()


@pytest.mark.parametrize("version", ["v1", "v2", *SCHEDULED])
def test_empty_experts_cost_nothing_from_v2_on(version):
    """routing='half': experts E/2 … E − 1 get no token; v2+ read no byte of them, v1 reads every expert."""
    checked, args = _check(version, 20, routing="half")
    assert (args[1] < SMALL["E"] // 2).all()
    want = (SMALL["E"] if version == "v1" else ops.moe_touched(args[1])) * _expert_bytes()
    assert ops.moe_expert_read_bytes(checked.trace) == want


@pytest.mark.parametrize("version", GROUPED)
def test_one_hot_expert_receives_every_token(version):
    """routing='hot': expert 0 is every token's slot 0 (130 pairs: 2 tiles of 128 / 3 blocks of 64)."""
    checked, args = _check(version, 130, routing="hot")
    assert (args[1][:, 0] == 0).all() and np.bincount(args[1].ravel())[0] == 130


@pytest.mark.parametrize("version", ["v0", "v2", *SCHEDULED])
def test_tied_routing(version):
    """routing='ties': equal logits, every token picks experts 0 … 7 (lower first) at weight 1/8."""
    _, args = _check(version, 20, routing="ties")
    assert (args[1] == np.arange(8)).all() and (args[2].astype(np.float32) == 0.125).all()


@pytest.mark.parametrize("T", (63, 65, 640))
def test_final_version_ragged_and_largest_T(T):
    _check(op.final.name, T)


@pytest.mark.parametrize("version", SCHEDULED[:-1])
def test_scheduled_versions_ragged_T(version):
    _check(version, 65)


@pytest.mark.parametrize(
    ("T", "routing"), [(20, "random"), (65, "random"), (130, "hot"), (20, "ties"), (20, "half")]
)
def test_scheduled_versions_are_bit_identical_to_v4(T, routing):
    """v5+ reorder DMAs, move the output's column halves and the combine's fp32 sum: the same adds in the
    same order, so y is v4's bit for bit (the competition compares generated tokens)."""
    args = op.args(T=T, routing=routing, **SMALL)
    want = np.asarray(op.run("v4", args).outputs).view(np.uint16)
    for version in SCHEDULED:
        got = np.asarray(op.run(version, args).outputs).view(np.uint16)
        assert np.array_equal(got, want), (version, int((got != want).sum()))


def test_final_version_rejects_more_than_640_tokens():
    with pytest.raises(AssertionError, match="T=641"):
        op.run(op.final, op.args(T=641, **SMALL))


def test_lnc2_cores_split_the_blocks_evenly():
    """The interleaved split: the two cores' matmul counts differ by at most one block's."""
    checked, _ = _check(op.final.name, 130, routing="hot")
    per_core = [sum(1 for r in checked.trace if r.opcode == "nc_matmul" and int(r.pid) == p) for p in (0, 1)]
    per_block = 2 * 2 * (SMALL["H"] // 128) + 2 * 1  # gate/up: 2 chunks x 2 halves x KT; down: 2 chunks
    assert abs(per_core[0] - per_core[1]) <= per_block and min(per_core) > 0


@pytest.mark.parametrize("target", ["trn2", "trn3"])
def test_final_version_real_widths_tp4(target):
    """H = 2048, E = 128, I = 192: checked, and its estimate lies above the floor of its two cores."""
    checked, args = _check(op.final.name, 14, H=2048, E=128, inter=768, tp=4)
    prof = op.profile(op.final, target=target, trace=checked.trace, trace_path=False, T=14, tp=4)
    assert prof.latency_us > prof.roofline_us > 0
    assert ops.moe_expert_read_bytes(checked.trace) == ops.moe_touched(args[1]) * _expert_bytes(
        H=2048, inter=768, tp=4
    )


def test_the_harness_counts_block_padding_in_its_mac_check():
    """Ladder.check asserts trace MACs = ideal + the registry's padding_macs; a wrong padding term fails."""
    from dataclasses import replace

    T = 20
    c = op.check("v4", T=T, **SMALL)
    args = op.args(T=T, **SMALL)
    slots = ops.moe_block_slots(args[1], BLOCK["moe_prefill_v4"]) - 8 * T
    assert slots > 0 and c.padding_macs == slots * 3 * SMALL["H"] * SMALL["inter"]
    assert op.check("v0", T=T, **SMALL).padding_macs == 0  # per-token: no blocks, no padding
    wrong = replace(op, padding_macs=lambda kernel, a: 0)
    with pytest.raises(AssertionError, match="MACs, the op's cost function"):
        wrong.check("v4", T=T, **SMALL)
