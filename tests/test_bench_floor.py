"""bench/kernels.py's floor (data_floor): one NumPy step per operand of each traced instruction, through the
same dtype and strided view as the emulator's access, and the matmuls' MACs; nothing timed here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_dtypes
import nki
import nki.isa as nisa
import nki.language as nl
import numpy as np

from nki_moe import ops
from nki_moe.sim import run

BENCH = Path(__file__).resolve().parent.parent / "bench" / "kernels.py"
spec = importlib.util.spec_from_file_location("bench_kernels", BENCH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

BF16 = ml_dtypes.bfloat16


@nki.jit
def _strided_gemv(x, w):
    """y[n] = Σ_k x[k]·w[k, n] with the stationary read as every 4th column (a strided SBUF view)."""
    K, N = w.shape
    y = nl.ndarray((1, N), dtype=nl.float32, buffer=nl.shared_hbm)
    w_t = nl.ndarray((K, N), dtype=w.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=w_t, src=w)
    x_t = nl.ndarray((K, 1), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=x_t, src=x)
    acc = nl.ndarray((N // 4, 4), dtype=nl.float32, buffer=nl.psum)
    for g in range(4):
        nisa.nc_matmul(dst=acc[:, g : g + 1], stationary=w_t[:, g:N:4], moving=x_t)
    out = nl.ndarray((N // 4, 4), dtype=nl.float32, buffer=nl.sbuf)
    nisa.activation(dst=out, op=nl.copy, data=acc)
    nisa.dma_copy(dst=y.reshape((N // 4, 4)), src=out)
    return y


def test_floor_steps_mirror_the_trace():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 1)).astype(BF16)
    w = rng.standard_normal((64, 128)).astype(BF16)
    res = run(_strided_gemv, x, w)
    want = (w.astype(np.float32).T @ x.astype(np.float32)).reshape(-1)  # y[4p + g] = acc[p, g]
    np.testing.assert_allclose(res.outputs[0].reshape(-1), want, rtol=1e-5)  # the kernel is right
    floor = bench.data_floor(res.trace)
    kinds = [k for k, _, _ in floor.steps]
    # 3 DMAs copy; 4 matmuls widen 2 bf16 operands each, multiply, store 1; the fp32 PSUM read is free.
    assert kinds.count("copy") == 3
    assert kinds.count("matmul") == 4
    assert kinds.count("widen") == 8
    assert kinds.count("store") == 5
    strided = [src for k, _, src in floor.steps if k == "widen" and src.shape == (64, 32)]
    assert len(strided) == 4 and all(v.strides == (128 * 2, 4 * 2) for v in strided)  # the emulator's view
    stationary, moving = next((a, b) for k, a, b in floor.steps if k == "matmul")
    assert stationary.shape == (64, 32) and moving.shape == (64, 1)  # [K, M] and [K, N]
    floor()  # runs


def test_floor_runs_on_an_indirect_dma_kernel():
    op = ops.get("router")  # its final version scatters the top-k indices with an indirect DMA
    v = op.final
    args = op.version_args(v, op.args(T=8))
    res = run(op.kernel(v), *args, lnc=v.lnc)
    floor = bench.data_floor(res.trace)
    assert sum(k == "copy" for k, _, _ in floor.steps) == sum(r.engine == "dma" for r in res.trace)
    floor()
