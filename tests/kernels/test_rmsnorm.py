"""RMSNorm kernels (nki_moe.kernels.rmsnorm) against nki_moe.reference.norms; trn2 and trn3, strict mode."""

from __future__ import annotations

import numpy as np
import pytest

from nki_moe.bench import bf16, run_kernel
from nki_moe.check import assert_close, error_ratio
from nki_moe.kernels import rmsnorm as K
from nki_moe.reference import add_rms_norm, add_rms_norm_cost, rms_norm, rms_norm_cost

H, EPS = 2048, 1e-6
TOKENS = (1, 18, 128, 402, 640)
VERSIONS = (0, 1, 2, 3)


def _inputs(T: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = bf16(rng.standard_normal((T, H)) * 2.0)
    res = bf16(rng.standard_normal((T, H)))
    w = bf16(1.0 + 0.1 * rng.standard_normal(H))
    return x, res, w


def _lnc(version: int) -> int:
    return 2 if version >= 2 else 1


@pytest.mark.parametrize("target", ["trn2", "trn3"])
@pytest.mark.parametrize("T", TOKENS)
def test_final_rmsnorm_every_shape(T, target):
    x, _, w = _inputs(T)
    res = run_kernel(K.rmsnorm_v3, x, w, EPS, target=target, lnc=2)
    f32 = [a.astype(np.float32) for a in (x, w)]
    ratio = error_ratio(res.outputs.astype(np.float32), rms_norm(*f32, EPS, "bf16"), rms_norm(*f32, EPS))
    assert ratio, ratio.message
    assert res.mac_count() == rms_norm_cost(T, H).macs == 0


@pytest.mark.parametrize("target", ["trn2", "trn3"])
@pytest.mark.parametrize("T", TOKENS)
def test_final_add_rmsnorm_every_shape(T, target):
    x, r, w = _inputs(T, seed=1)
    y, h = run_kernel(K.add_rmsnorm_v3, x, r, w, EPS, target=target, lnc=2).outputs
    f32 = [a.astype(np.float32) for a in (x, r, w)]
    y_lo, h_lo = add_rms_norm(*f32, EPS, "bf16")
    y_hi, _ = add_rms_norm(*f32, EPS)
    np.testing.assert_array_equal(h.astype(np.float32), h_lo)  # one bf16 add, same rounding as HF
    ratio = error_ratio(y.astype(np.float32), y_lo, y_hi)
    assert ratio, ratio.message
    assert add_rms_norm_cost(T, H).macs == 0


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("T", (18, 402))
def test_every_version(version, T):
    x, r, w = _inputs(T, seed=2)
    y = run_kernel(getattr(K, f"rmsnorm_v{version}"), x, w, EPS, lnc=_lnc(version)).outputs
    ya, h = run_kernel(getattr(K, f"add_rmsnorm_v{version}"), x, r, w, EPS, lnc=_lnc(version)).outputs
    f32 = [a.astype(np.float32) for a in (x, w)]
    assert_close(y.astype(np.float32), rms_norm(*f32, EPS, "bf16"), "bf16")
    y_ref, h_ref = add_rms_norm(x.astype(np.float32), r.astype(np.float32), w.astype(np.float32), EPS, "bf16")
    assert_close(ya.astype(np.float32), y_ref, "bf16")
    np.testing.assert_array_equal(h.astype(np.float32), h_ref)


def test_odd_width_and_lnc1_launch_of_final():
    """H not a multiple of 128 and the LNC=2 kernel launched on one core."""
    rng = np.random.default_rng(3)
    x, w = bf16(rng.standard_normal((130, 200))), bf16(rng.standard_normal(200))
    y = run_kernel(K.rmsnorm_v3, x, w, EPS, lnc=1).outputs
    ref = rms_norm(x.astype(np.float32), w.astype(np.float32), EPS, "bf16")
    assert_close(y.astype(np.float32), ref, "bf16")


def test_rejects_bad_weight_shape():
    x, _, w = _inputs(4)
    with pytest.raises(AssertionError, match="weight shape"):
        run_kernel(K.rmsnorm_v3, x, w[:100], EPS)
