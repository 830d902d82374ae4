"""profile(): emulator run + cost model + Perfetto file + summary."""

from __future__ import annotations

import json

import numpy as np
import pytest

import nki_moe.sim as sim
from nki_moe.perf.perfetto import validate_trace_events
from nki_moe.perf.profile import profile


@pytest.fixture(scope="module")
def kernels():
    sim.install("sim")
    from nki_moe.perf.calibration_kernels import dma

    return dma


def test_profile_dma_kernel(kernels, tmp_path):
    import ml_dtypes

    src = np.arange(4 * 4096, dtype=np.float32).reshape(4, 4096).astype(ml_dtypes.bfloat16)
    res = profile(kernels.dma_single_engine, src, target="trn2", trace_path=tmp_path / "dma.json")
    np.testing.assert_array_equal(sim.last_result().outputs, src)
    assert res.latency_us > 0 and res.programs == 1 and res.n_instructions == 2
    assert res.hbm_bytes == 2 * src.nbytes
    assert res.mfu == 0.0 and 0 < res.mbu < 1
    assert 0 < res.pct_of_roofline <= 1
    text = res.summary()
    assert "ESTIMATED" in text and "dma" in text
    validate_trace_events(json.loads(res.trace_path.read_text()))
    faster = profile(kernels.dma_single_engine, src, target="trn3", trace_path=None)
    assert faster.latency_us < res.latency_us and faster.trace_path is None
