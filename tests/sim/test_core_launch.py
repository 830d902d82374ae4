"""Launch: jit/simulate/run, LNC=2, targets/tile_size, backend selection, arguments, nl helpers."""

from __future__ import annotations

import importlib.util
import sys

import nki
import nki.isa as nisa
import nki.language as nl
import numpy as np
import pytest

import nki_moe.sim as sim
from nki_moe.sim import NkiBackendError, NkiValidationError, run
from tests.sim.kernels import matmul as mm_k
from tests.sim.kernels import tensor_add as add_k


def test_lnc2_splits_work_by_program_id():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((512, 64)).astype(np.float32)
    b = rng.standard_normal((512, 64)).astype(np.float32)
    res = run(add_k.tensor_add_lnc[2], a, b)
    np.testing.assert_array_equal(res.outputs, a + b)
    assert {r.pid for r in res.trace} == {0, 1} and res.programs == 2
    np.testing.assert_array_equal(add_k.tensor_add_lnc(a, b), a + b)  # same kernel at LNC=1
    lhsT = rng.standard_normal((128, 128)).astype(np.float32)
    rhs = rng.standard_normal((128, 1024)).astype(np.float32)
    np.testing.assert_allclose(mm_k.matmul_lnc[2](lhsT, rhs), lhsT.T @ rhs, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(
        nki.simulate(mm_k.matmul_lnc[2])(lhsT, rhs), lhsT.T @ rhs, rtol=1e-4, atol=1e-3
    )


def test_program_ids_barrier_and_sendrecv():
    @nki.jit
    def k(a):
        pid = nl.program_id(0)
        out = nl.ndarray((2, 4), dtype=nl.float32, buffer=nl.shared_hbm)
        mine = nl.ndarray((1, 4), dtype=nl.float32, buffer=nl.sbuf)
        nisa.dma_copy(dst=mine, src=a[pid : pid + 1, :])
        nisa.dma_copy(dst=out[pid : pid + 1, :], src=mine)
        nisa.core_barrier(out, (0, 1))
        # after the barrier each core sees the other's row in shared HBM
        other = nl.ndarray((1, 4), dtype=nl.float32, buffer=nl.sbuf)
        nisa.dma_copy(dst=other, src=out[1 - pid : 2 - pid, :])
        got = nl.ndarray((1, 4), dtype=nl.float32, buffer=nl.sbuf)
        nisa.sendrecv(src=other, dst=got, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=0)
        res = nl.ndarray((2, 4), dtype=nl.float32, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=res[pid : pid + 1, :], src=got)
        assert nl.num_programs() == 2 and nl.program_ndim() == 1
        return res

    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(k[2](a), a)  # each core got its own row back via the other core


def test_launch_grid_rules():
    with pytest.raises(NkiValidationError, match="1 or 2"):
        add_k.tensor_add[3]
    with pytest.raises(NkiValidationError, match="1-D"):
        add_k.tensor_add[2, 2]
    a = np.zeros((256, 8), np.float32)
    with pytest.raises(NkiValidationError, match="trn2 or trn3"):
        run(add_k.tensor_add_lnc[2], a, a, target="trn1")


def test_target_switch_changes_tile_size_and_version(monkeypatch):
    seen = {}

    @nki.jit
    def k(a):
        seen["sbuf"] = nl.tile_size.total_available_sbuf_size
        seen["ver"] = nisa.get_nc_version()
        return a

    x = np.zeros((1, 1), np.float32)
    for target, size, ver in (("trn1", 180224, 2), ("gen3", 212984, 3), ("trn3", 245752, 4)):
        run(k, x, target=target)
        assert seen == {"sbuf": size, "ver": ver}
    monkeypatch.setenv("NEURON_PLATFORM_TARGET_OVERRIDE", "gen4")
    k(x)
    assert seen["sbuf"] == 245752 and nl.tile_size.total_available_sbuf_size == 245752
    with sim.options(target="trn1"):
        k(x)
        assert seen["ver"] == nisa.nc_version.gen2
    monkeypatch.delenv("NEURON_PLATFORM_TARGET_OVERRIDE")
    k(x)
    assert seen["sbuf"] == 212984  # trn2 is the default
    with pytest.raises(ValueError, match="unknown NKI target"):
        run(k, x, target="trn9")


def test_platform_target_is_accepted_with_a_warning():
    with pytest.warns(UserWarning, match="platform_target"):

        @nki.jit(platform_target="trn3")
        def k(a):
            out = nl.ndarray(a.shape, dtype=a.dtype, buffer=nl.hbm)  # 0.2 style output buffer
            nisa.dma_copy(dst=out, src=a)
            return out, nl.tile_size.total_available_sbuf_size

    with pytest.warns(UserWarning, match="shared_hbm"):
        out, size = k(np.ones((4, 4), np.float32))
    assert size == 245752 and (out == 1).all()


def test_private_hbm_output_is_rejected_in_0_3():
    @nki.jit
    def k(a):
        out = nl.ndarray(a.shape, dtype=a.dtype, buffer=nl.hbm)
        nisa.dma_copy(dst=out, src=a)
        return out

    with pytest.raises(NkiValidationError, match="shared_hbm"):
        k(np.ones((4, 4), np.float32))


def test_switching_to_the_real_package_unbinds_every_emulated_module(tmp_path, monkeypatch):
    """install("neuron") with a real `nki` on sys.path (a stand-in package here) drops nki, nki.language,
    nki.isa, nki.typing, nki.isa.constants, the neuronxcc stand-ins ... so imports reach the real one."""
    real = tmp_path / "nki"
    (real / "language").mkdir(parents=True)
    (real / "__init__.py").write_text("REAL = True\n")
    (real / "language" / "__init__.py").write_text("REAL = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert sim.install("sim") == "sim" and sys.modules["nki.language"].__name__.startswith("nki_moe.sim")
    try:
        assert sim.install("neuron") == "neuron"
        assert not [
            n
            for n, m in sys.modules.items()
            if n.split(".")[0] in ("nki", "neuronxcc")
            and m is not None
            and m.__name__.startswith("nki_moe.sim")
        ]
        import nki.language as real_nl

        assert real_nl.REAL and sim.active_backend() == "neuron"
    finally:
        for name in [n for n in sys.modules if n == "nki" or n.startswith("nki.")]:
            sys.modules.pop(name)
        assert sim.install("sim") == "sim"


def test_backend_neuron_raises_clearly_when_absent(monkeypatch):
    if sim.real_nki_available() and sys.modules.get("nki") is None:
        pytest.skip("the real Neuron SDK is installed")
    monkeypatch.setenv("NKI_MOE_BACKEND", "neuron")
    with pytest.raises(NkiBackendError, match="NKI_MOE_BACKEND=neuron"):
        sim.install()
    monkeypatch.setenv("NKI_MOE_BACKEND", "sim")
    assert sim.install() == "sim" and sys.modules["nki"].EMULATED
    assert sim.active_backend() == "sim"


def test_arguments_in_place_updates_and_dtypes():
    @nki.jit
    def bump(x, scale):
        t = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=t, src=x)
        nisa.tensor_scalar(dst=t, data=t, op0=nl.multiply, operand0=scale)
        nisa.dma_copy(dst=x, src=t)
        return x

    x = np.ones((8, 8), np.float32)
    out = bump(x, 3.0)
    assert (x == 3).all() and (out == 3).all()
    strided = np.ones((8, 16), np.float32)[:, ::2]  # non-contiguous: copied in and written back
    bump(strided, 2.0)
    assert (strided == 2).all()
    with pytest.raises(NkiValidationError, match="float64"):
        bump(np.ones((8, 8)), 2.0)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_torch_cpu_tensors():
    import torch

    a = torch.arange(128 * 8, dtype=torch.float32).reshape(128, 8)
    b = torch.ones(128, 8, dtype=torch.bfloat16)
    out = add_k.tensor_add(a.to(torch.bfloat16), b)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16
    assert torch.equal(out, a.to(torch.bfloat16) + b)


def test_precise_vs_fp32_storage_mode():
    @nki.jit
    def k(a):
        t = nl.ndarray(a.shape, dtype=nl.bfloat16, buffer=nl.sbuf)
        nisa.dma_copy(dst=t, src=a)
        out = nl.ndarray(a.shape, dtype=nl.float32, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=t)
        return out

    a = np.full((4, 4), 1 + 2**-10, np.float32)
    assert (k(a) == 1.0).all()  # rounded through bf16
    assert (run(k, a, precise=False).outputs == a).all()  # fp32 storage keeps the value
    with sim.options(precise=False):
        assert (k(a) == a).all()


def test_high_level_nl_helpers():
    @nki.jit
    def k(x, w):
        xt = nl.load(x)
        wt = nl.load(w)
        y = nl.add(nl.exp(xt), 1.0)
        mm = nl.matmul(wt, xt, transpose_x=True)  # w^T @ x in PSUM
        s = nl.sum(y, axis=1)
        out = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
        nl.store(out, y)
        mo = nl.ndarray(mm.shape, dtype=nl.float32, buffer=nl.shared_hbm)
        nl.store(mo, nl.copy(mm))
        so = nl.ndarray(s.shape, dtype=nl.float32, buffer=nl.shared_hbm)
        nl.store(so, s)
        return out, mo, so

    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    w = rng.standard_normal((64, 16)).astype(np.float32)
    out, mo, so = k(x, w)
    np.testing.assert_allclose(out, np.exp(x) + 1, rtol=1e-5)
    np.testing.assert_allclose(mo, w.T @ x, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(so[:, 0], (np.exp(x) + 1).sum(axis=1), rtol=1e-5)


def test_isa_outside_a_kernel_is_an_error():
    with pytest.raises(NkiValidationError, match="inside"):
        nl.ndarray((4, 4), dtype=nl.float32)


def test_trace_records_operands_and_last_trace():
    a = np.zeros((128, 64), np.float32)
    add_k.tensor_add(a, a)
    tr = sim.last_trace()
    tt = next(r for r in tr if r.opcode == "tensor_tensor")
    dst = next(x for x in tt.accesses if x.mode == "w")
    assert (dst.buffer, dst.p_start, dst.p_count, dst.byte_lo, dst.byte_hi, dst.elems) == (
        "sbuf",
        0,
        128,
        0,
        256,
        64,
    )
    assert tt.location.endswith("tensor_add.py:" + str(tt.line)) and tt.pid == 0
    assert "dma_copy" in tr.summary()
