"""Calibration table: the model against published measurements (docs/sources.md), within the agreed error."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from nki_moe.perf.calibration import (  # noqa: E402
    FITTED_KEYS,
    KNOWN_MISSES,
    MEASUREMENTS,
    analytic_counts,
    calibration_table,
    error_stats,
    plot_calibration,
    run_calibration_kernel,
    split_stats,
    tutorial_available,
)
from nki_moe.perf.profile import trace_flops_bytes  # noqa: E402

# the Trn1 tutorial points need the nki-samples checkout (skipped without it, see tests/perf/test_ladders.py)
AVAILABLE = [m for m in MEASUREMENTS if tutorial_available() or not m.kernel.startswith("mmtut_")]


@pytest.fixture(scope="module")
def rows():
    return calibration_table(AVAILABLE)


def test_goal_median_and_max(rows):
    assert len(rows) >= 6
    stats = error_stats(rows)
    assert stats["median_abs_error"] <= 0.25, stats
    for r in rows:
        bound = 0.70 if r.measurement.key in KNOWN_MISSES else 0.50  # known misses: reported, kept in check
        assert abs(r.error) <= bound, (r.measurement.key, r.predicted, r.measurement.measured)


def test_known_misses_are_exactly_the_misses(rows):
    """KNOWN_MISSES lists exactly the points beyond ±50 % (so the list cannot hide a silent change)."""
    misses = {r.measurement.key for r in rows if abs(r.error) > 0.5}
    assert misses == set(KNOWN_MISSES), (misses, sorted(KNOWN_MISSES))


def test_activity_points_use_profiler_definitions(rows):
    """PE/DMA 'active' points are the profiler-style activity: PE above the throughput busy time; DMA
    equal to the transfer intervals when every DMA is hwdge (attention), above them when the weights come
    through software DGE (the MoE layer: descriptor fetch before the data)."""
    from nki_moe.perf.calibration import run_calibration_kernel
    from nki_moe.perf.profile import profile_trace

    seen = set()
    for r in rows:
        m = r.measurement
        if m.metric in ("pe_active", "dma_active"):
            trace = run_calibration_kernel(m.kernel, m.hardware)
            prof = profile_trace(trace, m.hardware)
            eng = "pe" if m.metric == "pe_active" else "dma"
            assert r.predicted == pytest.approx(prof.engine_active_us[eng] / prof.programs)
            busy = prof.busy_us[eng] / prof.programs
            modes = {r.info.get("dge_mode") for r in trace if r.engine == "dma"}
            if eng == "dma" and modes == {"hwdge"}:
                assert r.predicted == pytest.approx(busy)
                seen.add("hwdge")
            else:
                assert r.predicted > busy
                seen.add("swdge" if eng == "dma" else "pe")
    assert seen == {"hwdge", "swdge", "pe"}


@pytest.mark.parametrize("kernel", sorted({m.kernel for m in AVAILABLE}))
def test_analytic_counts_match_trace(kernel):
    macs, nbytes = analytic_counts(kernel)
    target = next(m.hardware for m in AVAILABLE if m.kernel == kernel)  # the trace the table already ran
    flops, hbm, _ = trace_flops_bytes(run_calibration_kernel(kernel, target))
    assert flops == 2 * macs
    assert hbm == nbytes


def test_plot_calibration(rows):
    fig, ax = plt.subplots(figsize=(8, 4))
    cols = plot_calibration(ax, rows)
    assert len(cols["key"]) == len(rows) and len(ax.collections) >= 1
    plt.close(fig)


def test_latencies_and_mfus_within_bound(rows):
    """Every latency / MFU / transfer point (not the profiler activity figures) is within ±25 %."""
    for r in rows:
        if r.measurement.metric in ("latency", "mfu", "dma_transfer"):
            assert abs(r.error) <= 0.25, (r.measurement.key, r.error)


def test_out_of_sample_goal(rows):
    """Issue 13's goal on the points no constant was fitted on: median 20 % and max 40 %, over every
    out-of-sample point (profiler activity figures included) and over the latencies, MFUs and transfers."""
    timing = [r for r in rows if r.measurement.metric in ("latency", "mfu", "dma_transfer")]
    oos = split_stats(timing)["out_of_sample"]
    # the Trn1 tutorial ladder's 3 held-out points need the nki-samples checkout (calibration.TUTORIAL_ROOT)
    assert oos["n"] >= (10 if tutorial_available() else 7)
    assert oos["median_abs_error"] <= 0.20 and oos["max_abs_error"] <= 0.40, oos
    every = split_stats(rows)["out_of_sample"]
    assert every["n"] == oos["n"] + 6  # + the six activity figures
    assert every["median_abs_error"] <= 0.20 and every["max_abs_error"] <= 0.40, every


def test_fitted_keys_and_sources():
    keys = {m.key for m in MEASUREMENTS}
    assert set(FITTED_KEYS) <= keys and set(KNOWN_MISSES) <= keys
    assert not set(FITTED_KEYS) & set(KNOWN_MISSES)
    assert all(m.source and m.measured > 0 for m in MEASUREMENTS)


def _untile(w):
    """[n, 128, H] tiled weight layout of the attention kernel → [H, n·128]."""
    n, p, H = w.shape
    return w.reshape(n, p, H // p, p).transpose(2, 1, 0, 3).reshape(H, n * p)


def test_attention_kernel_matches_numpy():
    """The attention calibration kernel computes decode attention (not just the right instruction mix)."""
    from nki_moe.perf.calibration import _inputs, _kernel
    from nki_moe.sim import run

    args, _ = _inputs("attn")
    x, wq, wk, wv, wo, qn, kn, cos, sin, kc, vc, pos = (np.asarray(a, np.float32) for a in args)
    out, k_new, v_new = run(_kernel("attn"), *args, target="trn2").outputs
    d, n = 128, int(pos[0, 0])

    def rms_rope(v, w):
        v = v / np.sqrt((v**2).mean(-1, keepdims=True) + 1e-6) * w[0]
        rot = np.concatenate([-v[..., d // 2 :], v[..., : d // 2]], -1)
        return v * cos[0] + rot * sin[0]

    q = rms_rope((x[0] @ _untile(wq)).reshape(-1, d), qn) / np.sqrt(d)
    k, v = rms_rope(x[0] @ _untile(wk[None]), kn), x[0] @ _untile(wv[None])
    s = q @ np.vstack([kc[:n], k]).T
    p = np.exp(s - s.max(1, keepdims=True))
    ref = ((p / p.sum(1, keepdims=True)) @ np.vstack([vc[:n], v])).reshape(-1) @ wo
    np.testing.assert_allclose(np.asarray(out, np.float32)[0], ref, atol=0.02 * np.abs(ref).max())
    np.testing.assert_allclose(np.asarray(k_new, np.float32)[0], k, atol=0.02 * np.abs(k).max())
    np.testing.assert_allclose(np.asarray(v_new, np.float32)[0], v, atol=0.02 * np.abs(v).max())
