"""nki_moe.bench: sweep rows, the sweep figure and roofline points, on a tiny kernel."""

from __future__ import annotations

import numpy as np

import nki_moe.sim as sim
from nki_moe.bench import (
    Version,
    best_time,
    bf16,
    busiest_engine,
    final_summary,
    plot_sweep,
    roofline_points,
    summary_lines,
    sweep,
    sweep_table,
    tile_weight,
)

sim.install("sim")

from nki_moe.kernels import matmul  # noqa: E402


def _args(T):
    rng = np.random.default_rng(T)
    return bf16(rng.standard_normal((T, 128))), bf16(rng.standard_normal((128, 256)))


def _cost(T):
    return 2.0 * T * 128 * 256, 2.0 * (128 * 256 + T * (128 + 256))


def test_sweep_rows_plot_and_points():
    rows = sweep([Version("v4", matmul.matmul_v4, 2)], (1, 3), _args, _cost)
    assert len(rows) == 4 and {r["target"] for r in rows} == {"trn2", "trn3"}
    assert all(0 < r["pct_roofline"] <= 100 and r["latency_us"] > 0 for r in rows)
    assert [t[1] for t in sweep_table(rows, "trn2")] == [1, 3]
    fig, data = plot_sweep(rows, "tiny")
    assert len(data["latency_us"]) == 4
    pts = roofline_points(rows, 3, "trn2")
    assert len(pts) == 1 and pts[0].flops > 0
    assert best_time(lambda: None, 2) >= 0
    assert busiest_engine(type("P", (), {"busy_us": {"dma": 3.0, "pe": 2.0, "act": 1.0}})) == "dma"
    assert busiest_engine(type("P", (), {"busy_us": {"dma": 3.0, "pe": 2.0}}), compute_only=True) == "pe"
    summary = final_summary(rows, "v4", (3,))
    assert set(summary) == {"trn2_T3", "trn3_T3"}
    assert summary_lines(summary, "v4")[0].startswith("v4 trn2 T=3: ")


def test_tile_weight_layout_and_padding():
    w = np.arange(256 * 640, dtype=np.float32).reshape(256, 640)
    wt = tile_weight(w)  # 640 columns over 2 cores -> blocks of 384, the second padded by 128
    assert wt.shape == (2, 128, 2, 384)
    b, p, kt, j = 1, 5, 1, 7
    assert wt[b, p, kt, j] == w[kt * 128 + p, b * 384 + j]
    assert not wt[1, :, :, 256:].any()
    assert tile_weight(w, n_prog=1, n_block=256).shape == (3, 128, 2, 256)
