"""2048³ BF16 matmul MFU ladder of [AUTOTUNE] learnings.md (K2c), one NeuronCore.

result[M, N] = lhsT[K, M]^T @ rhs[K, N]; every version issues the same 1,024 nc_matmuls
(stationary [128, 128] × moving [128, 512]); they differ only in where loads happen and how many buffers
each operand has (the published ladder: ~16 % → 59 % → 83.7 % → 89.5 % MFU).

  v1  loads inside the K loop, tiles declared in the loop body (compiler rotation, no explicit buffers)
  v2  whole operands hoisted into SBUF (one DMA per 512-column block), one PSUM tile
  v3  v2 + double-buffered PSUM accumulator (and output tile)
  v4  streaming: 512-column operand blocks loaded ahead into double buffers, double-buffered PSUM
"""

import nki
import nki.isa as nisa
import nki.language as nl

TILE_K = 128  # partitions (contraction per matmul)
TILE_M = 128  # stationary free size
TILE_N = 512  # moving free size (one 2 KiB fp32 PSUM bank)


def _check(lhsT, rhs):
    K, M = lhsT.shape
    K2, N = rhs.shape
    assert K == K2, f"contraction mismatch {K} vs {K2}"
    assert K % TILE_K == 0 and M % TILE_N == 0 and N % TILE_N == 0, f"shapes must tile: {K}, {M}, {N}"
    return K, M, N


def _drain(res, psum, out_sb, m0, n0):
    """PSUM → SBUF (cast to bf16) → HBM for one [128, 512] output tile."""
    nisa.tensor_copy(dst=out_sb, src=psum)
    nisa.dma_copy(dst=res[m0 : m0 + TILE_M, n0 : n0 + TILE_N], src=out_sb)


@nki.jit
def matmul_v1(lhsT, rhs):
    """v1: per-tile loads inside the K loop. lhsT [K, M], rhs [K, N] bf16 → [M, N].

    Each tile is declared once in the body of its loop, with no explicit extra buffers: the compiler
    rotates such in-loop tiles over a few physical buffers (cost model: ``DEFAULT_ROTATION``).
    """
    K, M, N = _check(lhsT, rhs)
    res = nl.ndarray((M, N), dtype=lhsT.dtype, buffer=nl.shared_hbm)
    for m in nl.sequential_range(M // TILE_M):
        for n in nl.sequential_range(N // TILE_N):
            psum = nl.ndarray((TILE_M, TILE_N), dtype=nl.float32, buffer=nl.psum)
            for k in nl.sequential_range(K // TILE_K):
                k0 = k * TILE_K
                a_sb = nl.ndarray((TILE_K, TILE_M), dtype=lhsT.dtype, buffer=nl.sbuf)
                b_sb = nl.ndarray((TILE_K, TILE_N), dtype=rhs.dtype, buffer=nl.sbuf)
                nisa.dma_copy(dst=a_sb, src=lhsT[k0 : k0 + TILE_K, m * TILE_M : (m + 1) * TILE_M])
                nisa.dma_copy(dst=b_sb, src=rhs[k0 : k0 + TILE_K, n * TILE_N : (n + 1) * TILE_N])
                nisa.nc_matmul(dst=psum, stationary=a_sb, moving=b_sb, accumulate=k > 0)
            out_sb = nl.ndarray((TILE_M, TILE_N), dtype=lhsT.dtype, buffer=nl.sbuf)
            _drain(res, psum, out_sb, m * TILE_M, n * TILE_N)
    return res


def _load_block(dst, src, c0):
    """One DMA: src[:, c0:c0+512] ([K, 512] in HBM) → dst [128, K/128, 512] (K tiles on the free axis)."""
    K, W = src.shape
    nisa.dma_copy(dst=dst, src=src.ap([[W, TILE_K], [TILE_K * W, K // TILE_K], [1, TILE_N]], offset=c0))


def _ladder(lhsT, rhs, n_psum_buf, streaming):
    """Shared body of v2–v4: 512-wide operand blocks in SBUF, K accumulated in PSUM.

    streaming=False hoists both whole operands before the loops; True walks the (n, m) blocks in order and
    issues the loads of block t+1 before the matmuls of block t, into the other of two buffers.
    """
    K, M, N = _check(lhsT, rhs)
    KT, MB, NB = K // TILE_K, M // TILE_N, N // TILE_N
    res = nl.ndarray((M, N), dtype=lhsT.dtype, buffer=nl.shared_hbm)
    n_a, n_b = (2, 2) if streaming else (MB, NB)
    a_blk = [nl.ndarray((TILE_K, KT, TILE_N), dtype=lhsT.dtype, buffer=nl.sbuf) for _ in range(n_a)]
    b_blk = [nl.ndarray((TILE_K, KT, TILE_N), dtype=rhs.dtype, buffer=nl.sbuf) for _ in range(n_b)]
    psums = [nl.ndarray((TILE_M, TILE_N), dtype=nl.float32, buffer=nl.psum) for _ in range(n_psum_buf)]
    outs = [nl.ndarray((TILE_M, TILE_N), dtype=lhsT.dtype, buffer=nl.sbuf) for _ in range(n_psum_buf)]
    blocks = [(nb, mb) for nb in range(NB) for mb in range(MB)]

    def a_of(t):
        return a_blk[t % 2] if streaming else a_blk[blocks[t][1]]

    def b_of(t):
        return b_blk[blocks[t][0] % 2] if streaming else b_blk[blocks[t][0]]

    def load(t):
        nb, mb = blocks[t]
        if t == 0 or blocks[t - 1][0] != nb:
            _load_block(b_of(t), rhs, nb * TILE_N)
        _load_block(a_of(t), lhsT, mb * TILE_N)

    if streaming:
        load(0)
    else:
        for nb in range(NB):
            _load_block(b_blk[nb], rhs, nb * TILE_N)
        for mb in range(MB):
            _load_block(a_blk[mb], lhsT, mb * TILE_N)
    u = 0
    for t in nl.sequential_range(len(blocks)):
        if streaming and t + 1 < len(blocks):
            load(t + 1)
        nb, mb = blocks[t]
        a, b = a_of(t), b_of(t)
        for mi in nl.sequential_range(TILE_N // TILE_M):
            psum, out_sb = psums[u % n_psum_buf], outs[u % n_psum_buf]
            for k in nl.sequential_range(KT):
                nisa.nc_matmul(
                    dst=psum,
                    stationary=a[:, k, mi * TILE_M : (mi + 1) * TILE_M],
                    moving=b[:, k, :],
                    accumulate=k > 0,
                )
            _drain(res, psum, out_sb, mb * TILE_N + mi * TILE_M, nb * TILE_N)
            u += 1
    return res


@nki.jit
def matmul_v2(lhsT, rhs):
    """v2: both operands hoisted into SBUF (block DMAs before the loops), one PSUM tile."""
    return _ladder(lhsT, rhs, 1, False)


@nki.jit
def matmul_v3(lhsT, rhs):
    """v3: v2 with the PSUM accumulator (and output staging tile) double-buffered."""
    return _ladder(lhsT, rhs, 2, False)


@nki.jit
def matmul_v4(lhsT, rhs):
    """v4: streaming 512-column blocks into double buffers (loads run ahead), double-buffered PSUM."""
    return _ladder(lhsT, rhs, 2, True)
