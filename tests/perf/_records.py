"""Synthetic trace records for the cost-model tests (no emulator needed)."""

from __future__ import annotations

from nki_moe.sim.trace import Access, Record

ITEM = {"bfloat16": 2, "float32": 4, "float8_e4m3": 1, "uint32": 4}


def sb(operand, mode, alloc, P=128, F=512, dtype="bfloat16", buffer="sbuf", p0=0, f0=0, stride=1):
    """Access to an on-chip [P, F] tile (allocation ``alloc``, row size F·stride elements)."""
    row = F * stride
    return Access(
        operand, mode, buffer, dtype, ITEM[dtype], p0 * row + f0, ((row, P), (stride, F)), row, alloc
    )


def hbm(operand, mode, alloc, n, dtype="bfloat16", off=0, run=None):
    """Access to n elements of an HBM tensor, in contiguous runs of ``run`` elements (default: one run)."""
    run = run or n
    pat = ((1, n),) if run == n else ((2 * run, n // run), (1, run))
    return Access(operand, mode, "private_hbm", dtype, ITEM[dtype], off, pat, 0, alloc)


def rec(opcode, engine, accesses, pid=0, **info):
    return Record(opcode, engine, accesses, "synthetic.py", 1, pid, info)


def dma(dst, src, queue="q0", pid=0, dge_mode="unknown", **info):
    nbytes = max(dst.nbytes, src.nbytes)
    return rec(
        "dma_copy", "dma", [src, dst], pid=pid, dma_bytes=nbytes, queue=queue, dge_mode=dge_mode, **info
    )


def matmul(dst, st, mv, K=128, M=128, N=512, dtype="bfloat16", pid=0, **kw):
    return rec(
        "nc_matmul",
        "pe",
        [st, mv, dst],
        pid=pid,
        K=K,
        M=M,
        N=N,
        dtype=dtype,
        is_transpose=False,
        perf_mode=kw.get("perf_mode", "none"),
    )
