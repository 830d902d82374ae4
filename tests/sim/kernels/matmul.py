"""Tiled matmul result[M, N] = lhsT[K, M]^T @ rhs[K, N] with K accumulation in PSUM (tutorial structure)."""

import nki
import nki.isa as nisa
import nki.language as nl


def _matmul_tiles(lhsT, rhs, result, n_lo, n_hi, accumulate_flag):
    """Compute result[:, n_lo:n_hi] tile by tile; accumulate_flag picks the nc_matmul accumulate= style."""
    K, M = lhsT.shape
    TILE_M = nl.tile_size.gemm_stationary_fmax
    TILE_K = nl.tile_size.pmax
    width = n_hi - n_lo
    n_tiles = -(-width // nl.tile_size.gemm_moving_fmax)
    TILE_N = width // n_tiles  # the widest even split of the columns into tiles <= 512
    for m in nl.affine_range(M // TILE_M):
        for n in nl.affine_range((n_hi - n_lo) // TILE_N):
            n0 = n_lo + n * TILE_N
            res_psum = nl.ndarray((TILE_M, TILE_N), dtype=nl.float32, buffer=nl.psum)
            for k in nl.affine_range(K // TILE_K):
                lhsT_tile = nl.ndarray((TILE_K, TILE_M), dtype=lhsT.dtype, buffer=nl.sbuf)
                rhs_tile = nl.ndarray((TILE_K, TILE_N), dtype=rhs.dtype, buffer=nl.sbuf)
                nisa.dma_copy(
                    dst=lhsT_tile, src=lhsT[k * TILE_K : (k + 1) * TILE_K, m * TILE_M : (m + 1) * TILE_M]
                )
                nisa.dma_copy(dst=rhs_tile, src=rhs[k * TILE_K : (k + 1) * TILE_K, n0 : n0 + TILE_N])
                acc = None if accumulate_flag is None else k > 0
                nisa.nc_matmul(dst=res_psum, stationary=lhsT_tile, moving=rhs_tile, accumulate=acc)
            res_sb = nl.ndarray((TILE_M, TILE_N), dtype=result.dtype, buffer=nl.sbuf)
            nisa.tensor_copy(dst=res_sb, src=res_psum)
            nisa.dma_copy(dst=result[m * TILE_M : (m + 1) * TILE_M, n0 : n0 + TILE_N], src=res_sb)


@nki.jit
def matmul_tiled(lhsT, rhs):
    """Args: lhsT [K, M], rhs [K, N]; K, M multiples of 128, N in even tiles <= 512. Returns [M, N]."""
    K, M = lhsT.shape
    K_, N = rhs.shape
    assert K == K_, f"contraction mismatch {K} vs {K_}"
    result = nl.ndarray((M, N), dtype=lhsT.dtype, buffer=nl.shared_hbm)
    _matmul_tiles(lhsT, rhs, result, 0, N, None)
    return result


@nki.jit
def matmul_tiled_explicit(lhsT, rhs):
    """Same as matmul_tiled with accumulate=(k > 0) instead of auto-detection."""
    K, M = lhsT.shape
    result = nl.ndarray((M, rhs.shape[1]), dtype=lhsT.dtype, buffer=nl.shared_hbm)
    _matmul_tiles(lhsT, rhs, result, 0, rhs.shape[1], True)
    return result


@nki.jit
def matmul_lnc(lhsT, rhs):
    """LNC-sharded matmul: program k computes the k-th half of the N columns."""
    K, M = lhsT.shape
    N = rhs.shape[1]
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    result = nl.ndarray((M, N), dtype=lhsT.dtype, buffer=nl.shared_hbm)
    width = N // n_prog
    _matmul_tiles(lhsT, rhs, result, pid * width, (pid + 1) * width, None)
    return result
