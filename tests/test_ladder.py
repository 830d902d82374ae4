"""nki_moe.ladder: check (and that it fails when it must), sweep rows, the sweep figure, roofline points."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from nki_moe import ops
from nki_moe.kernels.layouts import tile_weight
from nki_moe.ladder import busiest_engine
from nki_moe.reference import linear, linear_cost

op = ops.get("matmul")
TINY = dict(N=256, K=128)


def test_check_passes_and_reports():
    checked = op.check("v4", T=3, **TINY)
    assert checked.ratio is not None and checked.ratio < 2 and checked.macs == 3 * 128 * 256
    assert checked.message.startswith("v4 T=3 N=256 K=128: y: kernel error")


def test_check_fails_on_a_wrong_reference_and_a_wrong_mac_count():
    wrong = dataclasses.replace(op, reference=lambda x, w, dtype: 1.05 * linear(x, w, dtype))
    with pytest.raises(AssertionError, match=r"matmul v4 T=3 N=256 K=128: y: kernel error .* ratio"):
        wrong.check("v4", T=3, **TINY)
    miscounted = dataclasses.replace(op, cost=lambda T, N, K: linear_cost(T, K, N + 1))
    with pytest.raises(AssertionError, match="MACs"):
        miscounted.check("v4", T=3, **TINY)


def test_lookup_errors_name_what_exists():
    with pytest.raises(KeyError, match="versions: \\['v0'"):
        op.version("v9")
    with pytest.raises(KeyError, match="registered ops"):
        ops.get("softmax_v0")


def test_sweep_rows_plot_and_points():
    sweep = op.sweep(["v4"], T=(1, 3), **TINY)
    rows = sweep.rows
    assert len(rows) == 4 and {r["target"] for r in rows} == {"trn2", "trn3"}
    assert all(0 < r["pct_roofline"] <= 100 and r["latency_us"] > 0 for r in rows)
    assert set(sweep.latency("trn2")) == {("v4", 1), ("v4", 3)}
    assert "µs (est.)" in sweep.table("trn2")
    fig, data = sweep.plot("tiny")
    assert len(data["latency_us"]) == 4
    pts = sweep.roofline_points(3, "trn2")
    assert len(pts) == 1 and pts[0].flops > 0
    fig, cols = op.roofline(sweep, T=(1, 3))
    assert "v4 T=3" in cols["label"]
    assert set(sweep.final("v4", (3,))) == {"trn2_T3", "trn3_T3"}
    assert sweep.summary_lines("v4", (3,), "v4")[0].startswith("v4 trn2 T=3: ")
    with pytest.raises(AssertionError, match="exactly one sequence"):
        op.sweep(["v4"], T=3, **TINY)


def test_busiest_engine():
    assert busiest_engine(type("P", (), {"busy_us": {"dma": 3.0, "pe": 2.0, "act": 1.0}})) == "dma"
    assert busiest_engine(type("P", (), {"busy_us": {"dma": 3.0, "pe": 2.0}}), compute_only=True) == "pe"


def test_tile_weight_layout_and_padding():
    w = np.arange(256 * 640, dtype=np.float32).reshape(256, 640)
    wt = tile_weight(w)  # 640 columns over 2 cores -> blocks of 384, the second padded by 128
    assert wt.shape == (2, 128, 2, 384)
    b, p, kt, j = 1, 5, 1, 7
    assert wt[b, p, kt, j] == w[kt * 128 + p, b * 384 + j]
    assert not wt[1, :, :, 256:].any()
    assert tile_weight(w, n_prog=1, n_block=256).shape == (3, 128, 2, 256)
