"""Speed caches and reuse in the emulator keep every check of the plain code (no timings asserted here).

Covered: the free-byte-range cache (nc_matmul's PSUM bank rule, keyed by pattern and offset), the inlined
start-partition rule, the fast paths of tensor indexing (':' and in-range ints), the clean-read fast path
(a later read of a never-written tile still fails), dynamic offsets checked on every iteration of a loop
that runs the same instruction line, reusable LNC=2 worker threads (identical results, errors in either
program, launches after an error, and a forked child), the garbage collector paused during a launch and
restored, and a kernel's tiles freed when it returns (no reference cycle through its frame).
Each test is a minimal kernel of its own showing the construct, with an illegal twin where a check applies.
"""

from __future__ import annotations

import gc
import os
import signal
import weakref

import ml_dtypes
import nki
import nki.isa as nisa
import nki.language as nl
import numpy as np
import pytest

from nki_moe.sim import NkiUninitializedError, NkiValidationError, run

BF16 = ml_dtypes.bfloat16


# ---- cached free_byte_range: nc_matmul's one-bank rule -------------------------------------------------


def _bank_kernel(starts):
    @nki.jit
    def k(a):
        x = nl.ndarray((128, 128), dtype=a.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=x, src=a)
        acc = nl.ndarray((128, 1024), dtype=nl.float32, buffer=nl.psum)  # two 2 KiB banks per partition
        y = nl.ndarray((128, 128), dtype=nl.float32, buffer=nl.sbuf)
        for s in starts:  # the same call site, the same pattern, different offsets
            nisa.nc_matmul(dst=acc[:, s : s + 128], stationary=x, moving=x)
            nisa.tensor_copy(dst=y, src=acc[:, s : s + 128])
        out = nl.ndarray((128, 128), dtype=nl.float32, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=y)
        return out

    return k


def test_matmul_bank_rule_checked_at_every_offset_of_a_cached_pattern():
    a = np.random.default_rng(0).standard_normal((128, 128)).astype(np.float32)
    ref = a.T @ a
    np.testing.assert_allclose(_bank_kernel([0, 128, 384, 512])(a), ref, rtol=1e-4, atol=1e-3)
    # 448 + 128 fp32 = bytes [1792, 2304): crosses the bank boundary at 2048, after the same pattern passed
    with pytest.raises(NkiValidationError, match="one 2 KiB PSUM bank") as e:
        _bank_kernel([0, 128, 448])(a)
    assert e.value.instruction == "nc_matmul" and e.value.value == "bytes [1792, 2304)"


# ---- inlined start-partition rule ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "p0, n, ok",
    [
        (0, 128, True),
        (64, 64, True),
        (32, 64, False),
        (64, 48, True),
        (32, 48, False),
        (96, 32, True),
        (32, 32, True),
        (16, 16, False),
        (0, 65, True),
    ],
)
def test_start_partition_rule(p0, n, ok):
    @nki.jit
    def k(a):
        t = nl.ndarray((128, 8), dtype=a.dtype, buffer=nl.sbuf)
        nisa.memset(dst=t, value=1.0)
        u = nl.ndarray((128, 8), dtype=a.dtype, buffer=nl.sbuf)
        nisa.memset(dst=u, value=0.0)
        nisa.tensor_copy(dst=u[p0 : p0 + n, :], src=t[p0 : p0 + n, :])
        out = nl.ndarray((128, 8), dtype=a.dtype, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=u)
        return out

    a = np.zeros((128, 8), np.float32)
    if ok:
        want = np.zeros((128, 8), np.float32)
        want[p0 : p0 + n] = 1.0
        np.testing.assert_array_equal(k(a), want)
    else:
        with pytest.raises(NkiValidationError, match="must start at partition") as e:
            k(a)
        assert e.value.value == p0 and e.value.instruction == "tensor_copy"


# ---- indexing fast paths -------------------------------------------------------------------------------


def test_fast_index_paths_build_the_same_views_and_keep_the_bounds_check():
    seen = {}

    @nki.jit
    def k(a):
        t = nl.ndarray((128, 4, 16), dtype=a.dtype, buffer=nl.sbuf)
        views = {
            "colon": t[:, 2, :],
            "explicit": t[0:128, 2:3, 0:16],
            "negative": t[:, -2, :],
            "numpy int": t[:, np.int64(2), :],
        }
        seen.update({name: (v.get_pattern(), v.offset) for name, v in views.items()})
        with pytest.raises(NkiValidationError, match="index out of bounds"):
            t[:, 4, :]
        with pytest.raises(NkiValidationError, match="index out of bounds"):
            t[:, -5]
        return a

    run(k, np.zeros((1, 1), np.float32))
    assert seen["colon"] == ([[64, 128], [1, 16]], 32) == seen["negative"] == seen["numpy int"]
    assert seen["explicit"] == ([[64, 128], [16, 1], [1, 16]], 32)


# ---- clean-read fast path and value checks in loops ------------------------------------------------------


def test_read_of_a_never_written_tile_fails_after_clean_reads_of_the_same_line():
    @nki.jit
    def k(a, n_fresh):
        out = nl.ndarray((128, 8), dtype=a.dtype, buffer=nl.shared_hbm)
        acc = nl.ndarray((128, 8), dtype=a.dtype, buffer=nl.sbuf)
        nisa.memset(dst=acc, value=0.0)
        for i in range(3):
            t = nl.ndarray((128, 8), dtype=a.dtype, buffer=nl.sbuf)
            if i < 3 - n_fresh:
                nisa.dma_copy(dst=t, src=a)
            nisa.tensor_tensor(dst=acc, data1=acc, data2=t, op=nl.add)  # one call site, three tiles
        nisa.dma_copy(dst=out, src=acc)
        return out

    a = np.ones((128, 8), np.float32)
    np.testing.assert_array_equal(k(a, 0), 3 * a)
    with pytest.raises(NkiUninitializedError):
        k(a, 1)


def test_dynamic_offset_checked_on_every_iteration():
    @nki.jit
    def k(table, rows):
        out = nl.ndarray((4, 8), dtype=table.dtype, buffer=nl.shared_hbm)
        row = nl.ndarray((1, 8), dtype=table.dtype, buffer=nl.sbuf)
        for i in range(4):
            w = nl.ndarray((1, 1), dtype=nl.int32, buffer=nl.sbuf)
            nisa.dma_copy(dst=w, src=rows[i : i + 1].reshape((1, 1)))
            src = table.ap(pattern=[[8, 1], [1, 8]], offset=0, scalar_offset=w, indirect_dim=0)
            nisa.dma_copy(dst=row, src=src)
            nisa.dma_copy(dst=out[i : i + 1, :], src=row)
        return out

    table = np.arange(40, dtype=np.float32).reshape(5, 8)
    np.testing.assert_array_equal(k(table, np.array([4, 0, 2, 1], np.int32)), table[[4, 0, 2, 1]])
    with pytest.raises(NkiValidationError, match="outside its tensor") as e:
        k(table, np.array([4, 0, 2, 5], np.int32))  # only the last iteration is out of bounds
    assert e.value.instruction == "dma_copy" and "offset 5" in str(e.value.value)


# ---- LNC=2 worker reuse --------------------------------------------------------------------------------


@nki.jit
def _lnc_kernel(a, fail_pid):
    pid = nl.program_id(0)
    out = nl.ndarray((2, 4), dtype=nl.float32, buffer=nl.shared_hbm)
    mine = nl.ndarray((1, 4), dtype=nl.float32, buffer=nl.sbuf)
    nisa.dma_copy(dst=mine, src=a[pid : pid + 1, :])
    got = nl.ndarray((1, 4), dtype=nl.float32, buffer=nl.sbuf)
    nisa.sendrecv(src=mine, dst=got, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=0)
    if pid == fail_pid:
        bad = nl.ndarray((1, 4), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_copy(dst=got, src=bad)  # reads a never-written tile
    nisa.dma_copy(dst=out[pid : pid + 1, :], src=got)
    return out


def test_lnc_launches_reuse_workers_and_survive_errors_in_either_program():
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    first = run(_lnc_kernel[2], a, -1)
    np.testing.assert_array_equal(first.outputs, a[::-1])
    for fail_pid in (0, 1):
        with pytest.raises(NkiUninitializedError):
            run(_lnc_kernel[2], a, fail_pid)
        again = run(_lnc_kernel[2], a, -1)  # the next launch is unaffected
        np.testing.assert_array_equal(again.outputs, a[::-1])
        assert [(r.opcode, r.pid, r.line) for r in again.trace] == [
            (r.opcode, r.pid, r.line) for r in first.trace
        ]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_lnc_launch_in_a_forked_child_after_the_parent_made_workers():
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    run(_lnc_kernel[2], a, -1)  # the parent now has an idle worker thread; a fork does not copy it
    pid = os.fork()
    if pid == 0:  # child: must not wait on the parent's (absent) worker
        signal.alarm(60)
        try:
            ok = np.array_equal(run(_lnc_kernel[2], a, -1).outputs, a[::-1])
        except BaseException:  # noqa: BLE001 - any failure is a non-zero exit status
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


# ---- garbage collector and the kernel frame --------------------------------------------------------------


def test_gc_state_is_restored_after_a_launch_and_after_an_error():
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert gc.isenabled()
    run(_lnc_kernel[2], a, -1)
    assert gc.isenabled()
    with pytest.raises(NkiUninitializedError):
        run(_lnc_kernel[2], a, 1)
    assert gc.isenabled()
    gc.disable()
    try:
        run(_lnc_kernel[2], a, -1)
        assert not gc.isenabled()  # a caller's own choice is kept
    finally:
        gc.enable()


def test_tiles_are_freed_when_the_kernel_returns():
    refs = []

    @nki.jit
    def k(a):
        t = nl.ndarray((128, 64), dtype=a.dtype, buffer=nl.sbuf)  # bound to a local of the kernel frame
        nisa.dma_copy(dst=t, src=a)
        refs.append(weakref.ref(t.st))
        out = nl.ndarray((128, 64), dtype=a.dtype, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=t)
        return out

    gc.disable()  # only reference counting may free it
    try:
        run(k, np.ones((128, 64), BF16))
        assert refs[0]() is None
    finally:
        gc.enable()
