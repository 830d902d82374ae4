"""Tiled elementwise add: out = a + b for a [R, C] input with any R (the last row tile may be ragged)."""

import nki
import nki.isa as nisa
import nki.language as nl


@nki.jit
def tensor_add(a, b):
    """Args: a, b [R, C] (same dtype). Returns: [R, C] in shared HBM."""
    R, C = a.shape
    assert b.shape == (R, C), f"shape mismatch {a.shape} vs {b.shape}"
    P = nl.tile_size.pmax
    out = nl.ndarray((R, C), dtype=a.dtype, buffer=nl.shared_hbm)
    for i in nl.affine_range((R + P - 1) // P):
        rows = min(P, R - i * P)
        a_tile = nl.ndarray((P, C), dtype=a.dtype, buffer=nl.sbuf)
        b_tile = nl.ndarray((P, C), dtype=b.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=a_tile[0:rows, :], src=a[i * P : i * P + rows, :])
        nisa.dma_copy(dst=b_tile[0:rows, :], src=b[i * P : i * P + rows, :])
        sum_tile = nl.ndarray((P, C), dtype=a.dtype, buffer=nl.sbuf)
        # Adds all P partitions; the unused ones of a ragged tile are never stored.
        nisa.tensor_tensor(dst=sum_tile, data1=a_tile, data2=b_tile, op=nl.add)
        nisa.dma_copy(dst=out[i * P : i * P + rows, :], src=sum_tile[0:rows, :])
    return out


@nki.jit
def tensor_add_lnc(a, b):
    """LNC-aware add: program k of n handles rows [k*R/n, (k+1)*R/n). Requires R % (128 * n) == 0."""
    R, C = a.shape
    P = nl.tile_size.pmax
    n = nl.num_programs()
    pid = nl.program_id(0) if n > 1 else 0
    rows_per_prog = R // n
    out = nl.ndarray((R, C), dtype=a.dtype, buffer=nl.shared_hbm)
    for i in nl.affine_range(rows_per_prog // P):
        r0 = pid * rows_per_prog + i * P
        a_tile = nl.ndarray((P, C), dtype=a.dtype, buffer=nl.sbuf)
        b_tile = nl.ndarray((P, C), dtype=b.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=a_tile, src=a[r0 : r0 + P, :])
        nisa.dma_copy(dst=b_tile, src=b[r0 : r0 + P, :])
        nisa.tensor_tensor(dst=a_tile, data1=a_tile, data2=b_tile, op=nl.add)
        nisa.dma_copy(dst=out[r0 : r0 + P, :], src=a_tile)
    return out
