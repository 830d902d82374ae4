"""Leaf tile helpers shared by the kernel families (pure NKI; inlined into the calling kernel at trace time).

Shape legend: T tokens, K contraction (hidden), P = nl.tile_size.pmax = 128 partitions, KT = K / P tiles.
"""

import nki.isa as nisa
import nki.language as nl


def lnc_share(n_units):
    """(first, count) of ``n_units`` work units owned by this program of an LNC launch (even split)."""
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    per = -(-n_units // n_prog)
    first = min(n_units, pid * per)
    return first, min(n_units, first + per) - first


def token_tiles(T):
    """(first token, tokens) of each ≤128-token tile of T tokens (tokens go on the partitions)."""
    P = nl.tile_size.pmax
    return [(t0, min(P, T - t0)) for t0 in range(0, T, P)]


def load_transposed_naive(x, t0, tsz, k0):
    """xT[k, t] = x[t0 + t, k0 + k] for one [128, tsz] tile by an element-strided DMA (2-byte chunks)."""
    K = x.shape[1]
    P = nl.tile_size.pmax
    xT = nl.ndarray((P, tsz), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=xT, src=x.ap(pattern=[[1, P], [K, tsz]], offset=t0 * K + k0))
    return xT


def load_transposed(x, t0, tsz):
    """xT [128, KT, tsz] with xT[p, kt, t] = x[t0 + t, kt·128 + p]: one contiguous load, PE transposes.

    Args:
        x: [T, K] in HBM, K % 128 == 0; rows t0 .. t0 + tsz (tsz <= 128) are loaded.
    Returns:
        SBUF tile [128, KT, tsz] in x.dtype, contraction on the partitions.
    """
    K = x.shape[1]
    P = nl.tile_size.pmax
    KT = K // P
    x_rows = nl.ndarray((P, K), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=x_rows[0:tsz, :], src=x[t0 : t0 + tsz, :])
    xT = nl.ndarray((P, KT, tsz), dtype=x.dtype, buffer=nl.sbuf)
    group = 8  # eight [128, 128] bf16 transposes fill one 2 KiB PSUM bank; evicted with one copy
    for g0 in range(0, KT, group):
        gsz = min(group, KT - g0)
        xT_psum = nl.ndarray((P, gsz, tsz), dtype=x.dtype, buffer=nl.psum)
        for g in range(gsz):
            k0 = (g0 + g) * P
            nisa.nc_transpose(dst=xT_psum[:, g, :], data=x_rows[0:tsz, k0 : k0 + P])
        nisa.tensor_copy(dst=xT[:, g0 : g0 + gsz, :], src=xT_psum)
    return xT
