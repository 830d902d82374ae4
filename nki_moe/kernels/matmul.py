"""Projection matmul y[T, N] = x[T, K] @ w[K, N] for the model's projections (q, k/v, o, LM head).

Shape legend: T tokens (any count >= 1), K contraction (2048 in the model; 4096 for o), N output features
(q 4096, k/v 512, o 2048, LM head 151936), P = nl.tile_size.pmax = 128 partitions, KT = K / P.
Layout: x and y row-major [T, ·]; w row-major [K, N] (``W.T`` of the Hugging Face [N, K] weight), so a
[128, n] slab of w is already contraction-on-partitions. bf16 in, fp32 PSUM accumulation, y in x.dtype.
Every version splits the N columns between the programs of an LNC=2 launch (``kernel[2]``).

Versions (each adds one idea):
    matmul_v0  naive tiled: per (token tile, 512 columns, k tile) a strided transposed x load and a w load
    matmul_v1  hoisted loads: x loaded once per token tile, transposed on the PE, reused by every column tile
    matmul_v2  blocked free dims: w read in [128, KT, 2048] blocks (4 KiB per partition per DMA), y per block
    matmul_v3  double-buffered PSUM and w blocks, PSUM evictions alternating between ACT and DVE
    matmul_v4  operand placement for GEMV (T < 128): w stationary, tokens moving, y transposed back on the PE
    matmul_v5  pre-tiled weights (``layouts.tile_weight``): one contiguous run per partition per block DMA
    matmul_v6  decode (T = 1) stores yᵀ straight from the stationary-weight layout: no PE transposes

Run: ``nki_moe.sim.run(matmul_v6, x, tile_weight(w), N, lnc=2)`` with ``tile_weight`` from
nki_moe.kernels.layouts; checked in tests/kernels/test_matmul.py.

Limits (asserted at entry; x [T, K], w [K, N]; v5/v6 take w_t [nb, 128, KT, NB] and n_cols = N):
    T >= 1                        v0-v6  at least one token
    K % 128 == 0                  v0-v6  whole [128, ·] contraction tiles (v5/v6: K == 128·KT of w_t)
    N % 128 == 0                  v4-v6  whole 128-column stationary tiles
    (nb - 1) * NB < N <= nb * NB  v5-v6  w_t's blocks hold exactly the N columns
"""

import nki
import nki.isa as nisa
import nki.language as nl

from nki_moe.kernels.tiles import lnc_share, load_transposed, load_transposed_naive, token_tiles

N_TILE = 512  # one fp32 PSUM bank per partition; the moving free-size limit on trn2
N_BLOCK = 2048  # columns per w block: 4 KiB contiguous per partition per DMA
CHUNK_BYTES = 8192  # v5: contiguous bytes per partition per weight DMA (94 % DMA efficiency)


def _check(x, w, n_multiple=1):
    """Restate the layout limits of x [T, K] @ w [K, N]; returns (T, K, N)."""
    P = nl.tile_size.pmax
    T, K = x.shape
    K_, N = w.shape
    assert K == K_, f"contraction mismatch: x has K={K}, w has K={K_}"
    assert K % P == 0, f"K={K} must be a multiple of {P}"
    assert T >= 1, f"need at least one token, got T={T}"
    assert N % n_multiple == 0, f"N={N} must be a multiple of {n_multiple}"
    return T, K, N


def _check_tiled(x, w_t, n_cols):
    """Restate the layout limits of x [T, K] @ a pre-tiled w_t [nb, 128, KT, NB]; returns (T, K)."""
    T, K = x.shape
    nb, P, KT, NB = w_t.shape
    assert K == KT * P, f"contraction mismatch: x has K={K}, w_t has {KT}x{P}"
    assert T >= 1, f"need at least one token, got T={T}"
    assert n_cols % P == 0 and (nb - 1) * NB < n_cols <= nb * NB, f"n_cols={n_cols} vs {nb} blocks of {NB}"
    return T, K


def _columns(N, unit):
    """[lo, hi) of the output columns owned by this program (whole ``unit``-column tiles)."""
    first, count = lnc_share(-(-N // unit))
    return first * unit, min(N, (first + count) * unit)


def _evict_balanced(dst, src, i):
    """PSUM → SBUF copy (with the cast to y's dtype) of the i-th tile: even i on DVE, odd i on ACT."""
    if i % 2 == 1:
        nisa.tensor_copy(dst=dst, src=src, engine=nisa.scalar_engine)
    else:
        nisa.tensor_copy(dst=dst, src=src, engine=nisa.vector_engine)


def _k_groups(KT, NB):
    """[k0, k1) k-tile ranges of one pre-tiled block's DMAs: kg tiles (kg·NB·2 B ≈ CHUNK_BYTES per partition)
    each, the last k tile alone so the PE work left after the last byte lands is one k tile's."""
    kg = max(1, min(KT - 1, CHUNK_BYTES // (NB * 2)))
    return [(k0, min(k0 + kg, KT - 1)) for k0 in range(0, KT - 1, kg)] + [(KT - 1, KT)]


# ---- v0: naive tiled ------------------------------------------------------------------------------------
@nki.jit
def matmul_v0(x, w):
    """Args: x [T, K] bf16, w [K, N] bf16 (K % 128 == 0). Returns: y [T, N] in x.dtype."""
    T, K, N = _check(x, w)
    P = nl.tile_size.pmax
    y = nl.ndarray((T, N), dtype=x.dtype, buffer=nl.shared_hbm)
    n_lo, n_hi = _columns(N, N_TILE)
    for t0, tsz in token_tiles(T):
        for n0 in range(n_lo, n_hi, N_TILE):
            nsz = min(N_TILE, n_hi - n0)
            acc = nl.ndarray((tsz, nsz), dtype=nl.float32, buffer=nl.psum)
            for kt in range(K // P):
                xT = load_transposed_naive(x, t0, tsz, kt * P)
                w_t = nl.ndarray((P, nsz), dtype=w.dtype, buffer=nl.sbuf)
                nisa.dma_copy(dst=w_t, src=w[kt * P : (kt + 1) * P, n0 : n0 + nsz])
                nisa.nc_matmul(dst=acc, stationary=xT, moving=w_t, accumulate=kt > 0)
            y_t = nl.ndarray((tsz, nsz), dtype=x.dtype, buffer=nl.sbuf)
            nisa.tensor_copy(dst=y_t, src=acc)
            nisa.dma_copy(dst=y[t0 : t0 + tsz, n0 : n0 + nsz], src=y_t)
    return y


# ---- v1: hoisted x loads (one contiguous load + PE transposes per token tile) -----------------------------
@nki.jit
def matmul_v1(x, w):
    """As matmul_v0, with x loaded and transposed once per token tile."""
    T, K, N = _check(x, w)
    P = nl.tile_size.pmax
    y = nl.ndarray((T, N), dtype=x.dtype, buffer=nl.shared_hbm)
    n_lo, n_hi = _columns(N, N_TILE)
    for t0, tsz in token_tiles(T):
        xT = load_transposed(x, t0, tsz)  # [128, KT, tsz]
        for n0 in range(n_lo, n_hi, N_TILE):
            nsz = min(N_TILE, n_hi - n0)
            acc = nl.ndarray((tsz, nsz), dtype=nl.float32, buffer=nl.psum)
            for kt in range(K // P):
                w_t = nl.ndarray((P, nsz), dtype=w.dtype, buffer=nl.sbuf)
                nisa.dma_copy(dst=w_t, src=w[kt * P : (kt + 1) * P, n0 : n0 + nsz])
                nisa.nc_matmul(dst=acc, stationary=xT[:, kt, :], moving=w_t, accumulate=kt > 0)
            y_t = nl.ndarray((tsz, nsz), dtype=x.dtype, buffer=nl.sbuf)
            nisa.tensor_copy(dst=y_t, src=acc)
            nisa.dma_copy(dst=y[t0 : t0 + tsz, n0 : n0 + nsz], src=y_t)
    return y


# ---- v2: blocked free dims (w in [128, KT, 2048] blocks, each read once; y written per block) -------------
@nki.jit
def matmul_v2(x, w):
    """As matmul_v1 with w read in [128, KT, 2048] blocks (single buffered) and y written per block."""
    T, K, N = _check(x, w)
    P = nl.tile_size.pmax
    KT = K // P
    y = nl.ndarray((T, N), dtype=x.dtype, buffer=nl.shared_hbm)
    n_lo, n_hi = _columns(N, N_TILE)
    tiles = token_tiles(T)
    xTs = [load_transposed(x, t0, tsz) for t0, tsz in tiles]
    w_blk = nl.ndarray((P, KT, N_BLOCK), dtype=w.dtype, buffer=nl.sbuf)
    psum = [nl.ndarray((P, N_TILE), dtype=nl.float32, buffer=nl.psum) for _ in range(N_BLOCK // N_TILE)]
    for n0 in range(n_lo, n_hi, N_BLOCK):
        nsz = min(N_BLOCK, n_hi - n0)
        for kt in range(KT):  # nsz·2 B contiguous per partition per DMA
            nisa.dma_copy(dst=w_blk[:, kt, 0:nsz], src=w[kt * P : (kt + 1) * P, n0 : n0 + nsz])
        for (t0, tsz), xT in zip(tiles, xTs):
            y_blk = nl.ndarray((tsz, nsz), dtype=y.dtype, buffer=nl.sbuf)
            for s, s0 in enumerate(range(0, nsz, N_TILE)):
                ssz = min(N_TILE, nsz - s0)
                acc = psum[s][0:tsz, 0:ssz]
                for kt in range(KT):
                    nisa.nc_matmul(
                        dst=acc,
                        stationary=xT[:, kt, 0:tsz],
                        moving=w_blk[:, kt, s0 : s0 + ssz],
                        accumulate=kt > 0,
                    )
                nisa.tensor_copy(dst=y_blk[:, s0 : s0 + ssz], src=acc, engine=nisa.vector_engine)
            nisa.dma_copy(dst=y[t0 : t0 + tsz, n0 : n0 + nsz], src=y_blk)
    return y


# ---- v3: double buffering (two w blocks and PSUM sets rotate) and ACT/DVE-balanced evictions -------------
@nki.jit
def matmul_v3(x, w):
    """As matmul_v2 with two rotating w-block and PSUM buffer sets and ACT/DVE-balanced evictions."""
    T, K, N = _check(x, w)
    P = nl.tile_size.pmax
    KT = K // P
    y = nl.ndarray((T, N), dtype=x.dtype, buffer=nl.shared_hbm)
    n_lo, n_hi = _columns(N, N_TILE)
    tiles = token_tiles(T)
    xTs = [load_transposed(x, t0, tsz) for t0, tsz in tiles]
    w_bufs = [nl.ndarray((P, KT, N_BLOCK), dtype=w.dtype, buffer=nl.sbuf) for _ in range(2)]
    psum_sets = [
        [nl.ndarray((P, N_TILE), dtype=nl.float32, buffer=nl.psum) for _ in range(N_BLOCK // N_TILE)]
        for _ in range(2)
    ]
    step = 0  # (block, token tile) counter: picks the PSUM set
    for b, n0 in enumerate(range(n_lo, n_hi, N_BLOCK)):
        nsz = min(N_BLOCK, n_hi - n0)
        w_blk = w_bufs[b % 2]
        for kt in range(KT):
            nisa.dma_copy(dst=w_blk[:, kt, 0:nsz], src=w[kt * P : (kt + 1) * P, n0 : n0 + nsz])
        for (t0, tsz), xT in zip(tiles, xTs):
            psum = psum_sets[step % 2]
            y_blk = nl.ndarray((tsz, nsz), dtype=y.dtype, buffer=nl.sbuf)
            for s, s0 in enumerate(range(0, nsz, N_TILE)):
                ssz = min(N_TILE, nsz - s0)
                acc = psum[s][0:tsz, 0:ssz]
                for kt in range(KT):
                    nisa.nc_matmul(
                        dst=acc,
                        stationary=xT[:, kt, 0:tsz],
                        moving=w_blk[:, kt, s0 : s0 + ssz],
                        accumulate=kt > 0,
                    )
                _evict_balanced(y_blk[:, s0 : s0 + ssz], acc, s)
            nisa.dma_copy(dst=y[t0 : t0 + tsz, n0 : n0 + nsz], src=y_blk)
            step += 1
    return y


# ---- v4: operand placement for GEMV (weights stationary, tokens moving) -----------------------------------
@nki.jit
def matmul_v4(x, w):
    """As matmul_v3; for T < 128 (decode, short prompts) w is the stationary operand. N % 128 == 0.

    T < 128: per 128 columns acc[n, t] = w[:, n]ᵀ x[t]ᵀ, k outermost so the PE starts on each k slab as
    soon as its DMA lands; a block's accumulators share PSUM banks (512 // T column tiles per bank), and yᵀ
    is transposed back to [t, n] on the PE. T >= 128 keeps v3's placement (tokens stationary).
    """
    T, K, N = _check(x, w, n_multiple=128)
    P = nl.tile_size.pmax
    KT = K // P
    y = nl.ndarray((T, N), dtype=x.dtype, buffer=nl.shared_hbm)
    n_lo, n_hi = _columns(N, P if T < P else N_TILE)  # w stationary: the split unit is one 128-column tile
    tiles = token_tiles(T)
    xTs = [load_transposed(x, t0, tsz) for t0, tsz in tiles]
    w_bufs = [nl.ndarray((P, KT, N_BLOCK), dtype=w.dtype, buffer=nl.sbuf) for _ in range(2)]
    psum_sets = [
        [nl.ndarray((P, N_TILE), dtype=nl.float32, buffer=nl.psum) for _ in range(N_BLOCK // N_TILE)]
        for _ in range(2 if T >= P else 0)
    ]
    step = 0
    for b, n0 in enumerate(range(n_lo, n_hi, N_BLOCK)):
        nsz = min(N_BLOCK, n_hi - n0)
        w_blk = w_bufs[b % 2]
        for kt in range(KT):
            nisa.dma_copy(dst=w_blk[:, kt, 0:nsz], src=w[kt * P : (kt + 1) * P, n0 : n0 + nsz])
        if T < P:
            xT, G, per_bank = xTs[0], nsz // P, max(1, N_TILE // T)
            accs = [
                nl.ndarray((P, min(per_bank, G - g0), T), dtype=nl.float32, buffer=nl.psum)
                for g0 in range(0, G, per_bank)
            ]
            for kt in range(KT):
                for g in range(G):
                    nisa.nc_matmul(
                        dst=accs[g // per_bank][:, g % per_bank, :],
                        stationary=w_blk[:, kt, g * P : (g + 1) * P],
                        moving=xT[:, kt, 0:T],
                        accumulate=kt > 0,
                    )
            yT = nl.ndarray((P, G, T), dtype=y.dtype, buffer=nl.sbuf)
            for i, acc in enumerate(accs):
                _evict_balanced(yT[:, i * per_bank : i * per_bank + acc.shape[1], :], acc, i)
            y_psum = nl.ndarray((T, nsz), dtype=y.dtype, buffer=nl.psum)
            for g in range(G):
                nisa.nc_transpose(dst=y_psum[:, g * P : (g + 1) * P], data=yT[:, g, :])
            y_blk = nl.ndarray((T, nsz), dtype=y.dtype, buffer=nl.sbuf)
            nisa.tensor_copy(dst=y_blk, src=y_psum)
            nisa.dma_copy(dst=y[0:T, n0 : n0 + nsz], src=y_blk)
            continue
        for (t0, tsz), xT in zip(tiles, xTs):
            psum = psum_sets[step % 2]
            y_blk = nl.ndarray((tsz, nsz), dtype=y.dtype, buffer=nl.sbuf)
            for s, s0 in enumerate(range(0, nsz, N_TILE)):
                ssz = min(N_TILE, nsz - s0)
                acc = psum[s][0:tsz, 0:ssz]
                for kt in range(KT):
                    nisa.nc_matmul(
                        dst=acc,
                        stationary=xT[:, kt, 0:tsz],
                        moving=w_blk[:, kt, s0 : s0 + ssz],
                        accumulate=kt > 0,
                    )
                _evict_balanced(y_blk[:, s0 : s0 + ssz], acc, s)
            nisa.dma_copy(dst=y[t0 : t0 + tsz, n0 : n0 + nsz], src=y_blk)
            step += 1
    return y


# ---- v5: pre-tiled weights (one contiguous run per partition per block) ---------------------------------
@nki.jit
def matmul_v5(x, w_t, n_cols):
    """As matmul_v4 on a pre-tiled weight; whole blocks are split between the cores.

    Args: x [T, K] bf16; w_t [nb, 128, KT, NB] bf16 with w_t[b, p, kt, j] = w[kt·128 + p, b·NB + j] (zero
    padded past n_cols; ``nki_moe.kernels.layouts.tile_weight``); n_cols = N, a multiple of 128.
    Returns: y [T, N] in x.dtype. Each partition's slice of a block is one contiguous run, so a DMA of kg k
    tiles reads kg·NB·2 B per partition (≥ 8 KiB) instead of N/2·2 B rows.
    """
    T, K = _check_tiled(x, w_t, n_cols)
    nb, P, KT, NB = w_t.shape
    y = nl.ndarray((T, n_cols), dtype=x.dtype, buffer=nl.shared_hbm)
    tiles = token_tiles(T)
    xTs = [load_transposed(x, t0, tsz) for t0, tsz in tiles]
    w_bufs = [nl.ndarray((P, KT, NB), dtype=w_t.dtype, buffer=nl.sbuf) for _ in range(2)]
    psum_sets = [
        [nl.ndarray((P, N_TILE), dtype=nl.float32, buffer=nl.psum) for _ in range(-(-NB // N_TILE))]
        for _ in range(2 if T >= P else 0)
    ]
    step = 0
    first, count = lnc_share(nb)
    for i, b in enumerate(range(first, first + count)):
        n0, nsz = b * NB, min(NB, n_cols - b * NB)
        w_blk = w_bufs[i % 2]
        for k0, k1 in _k_groups(KT, NB):
            nisa.dma_copy(dst=w_blk[:, k0:k1, 0:nsz], src=w_t[b, :, k0:k1, 0:nsz])
        if T < P:  # v4's stationary-weight GEMV
            xT, G, per_bank = xTs[0], nsz // P, max(1, N_TILE // T)
            accs = [
                nl.ndarray((P, min(per_bank, G - g0), T), dtype=nl.float32, buffer=nl.psum)
                for g0 in range(0, G, per_bank)
            ]
            for kt in range(KT):
                for g in range(G):
                    nisa.nc_matmul(
                        dst=accs[g // per_bank][:, g % per_bank, :],
                        stationary=w_blk[:, kt, g * P : (g + 1) * P],
                        moving=xT[:, kt, 0:T],
                        accumulate=kt > 0,
                    )
            yT = nl.ndarray((P, G, T), dtype=y.dtype, buffer=nl.sbuf)
            for j, acc in enumerate(accs):
                _evict_balanced(yT[:, j * per_bank : j * per_bank + acc.shape[1], :], acc, j)
            y_psum = nl.ndarray((T, nsz), dtype=y.dtype, buffer=nl.psum)
            for g in range(G):
                nisa.nc_transpose(dst=y_psum[:, g * P : (g + 1) * P], data=yT[:, g, :])
            y_blk = nl.ndarray((T, nsz), dtype=y.dtype, buffer=nl.sbuf)
            nisa.tensor_copy(dst=y_blk, src=y_psum)
            nisa.dma_copy(dst=y[0:T, n0 : n0 + nsz], src=y_blk)
            continue
        for (t0, tsz), xT in zip(tiles, xTs):
            psum = psum_sets[step % 2]
            y_blk = nl.ndarray((tsz, nsz), dtype=y.dtype, buffer=nl.sbuf)
            for s, s0 in enumerate(range(0, nsz, N_TILE)):
                ssz = min(N_TILE, nsz - s0)
                acc = psum[s][0:tsz, 0:ssz]
                for kt in range(KT):
                    nisa.nc_matmul(
                        dst=acc,
                        stationary=xT[:, kt, 0:tsz],
                        moving=w_blk[:, kt, s0 : s0 + ssz],
                        accumulate=kt > 0,
                    )
                _evict_balanced(y_blk[:, s0 : s0 + ssz], acc, s)
            nisa.dma_copy(dst=y[t0 : t0 + tsz, n0 : n0 + nsz], src=y_blk)
            step += 1
    return y


# ---- v6: decode results stored straight from the stationary-weight layout ----------------------------------
@nki.jit
def matmul_v6(x, w_t, n_cols):
    """As matmul_v5; for T = 1 each block's yᵀ is stored as it lands in PSUM.

    T = 1: the stationary of group g is columns g, g+G, … so partition p accumulates columns p·G … p·G+G−1
    and yᵀ [128, G] is stored as is (G·2 B per partition): no PE transposes, no single-partition PSUM copy.
    Args and Returns as matmul_v5.
    """
    T, K = _check_tiled(x, w_t, n_cols)
    nb, P, KT, NB = w_t.shape
    y = nl.ndarray((T, n_cols), dtype=x.dtype, buffer=nl.shared_hbm)
    tiles = token_tiles(T)
    xTs = [load_transposed(x, t0, tsz) for t0, tsz in tiles]
    w_bufs = [nl.ndarray((P, KT, NB), dtype=w_t.dtype, buffer=nl.sbuf) for _ in range(2)]
    psum_sets = [
        [nl.ndarray((P, N_TILE), dtype=nl.float32, buffer=nl.psum) for _ in range(-(-NB // N_TILE))]
        for _ in range(2 if T >= P else 0)
    ]
    step = 0
    first, count = lnc_share(nb)
    for i, b in enumerate(range(first, first + count)):
        n0, nsz = b * NB, min(NB, n_cols - b * NB)
        w_blk = w_bufs[i % 2]
        for k0, k1 in _k_groups(KT, NB):
            nisa.dma_copy(dst=w_blk[:, k0:k1, 0:nsz], src=w_t[b, :, k0:k1, 0:nsz])
        if T == 1:  # yᵀ[p, g] = y[n0 + p·G + g]: strided stationary columns, one direct store
            xT, G = xTs[0], nsz // P
            acc = nl.ndarray((P, G), dtype=nl.float32, buffer=nl.psum)
            for kt in range(KT):
                for g in range(G):
                    nisa.nc_matmul(
                        dst=acc[:, g : g + 1],
                        stationary=w_blk[:, kt, g:nsz:G],
                        moving=xT[:, kt, 0:1],
                        accumulate=kt > 0,
                    )
            yT = nl.ndarray((P, G), dtype=y.dtype, buffer=nl.sbuf)
            nisa.tensor_copy(dst=yT, src=acc)
            nisa.dma_copy(dst=y.ap(pattern=[[G, P], [1, G]], offset=n0), src=yT)
            continue
        if T < P:  # v4's stationary-weight GEMV
            xT, G, per_bank = xTs[0], nsz // P, max(1, N_TILE // T)
            accs = [
                nl.ndarray((P, min(per_bank, G - g0), T), dtype=nl.float32, buffer=nl.psum)
                for g0 in range(0, G, per_bank)
            ]
            for kt in range(KT):
                for g in range(G):
                    nisa.nc_matmul(
                        dst=accs[g // per_bank][:, g % per_bank, :],
                        stationary=w_blk[:, kt, g * P : (g + 1) * P],
                        moving=xT[:, kt, 0:T],
                        accumulate=kt > 0,
                    )
            yT = nl.ndarray((P, G, T), dtype=y.dtype, buffer=nl.sbuf)
            for j, acc in enumerate(accs):
                _evict_balanced(yT[:, j * per_bank : j * per_bank + acc.shape[1], :], acc, j)
            y_psum = nl.ndarray((T, nsz), dtype=y.dtype, buffer=nl.psum)
            for g in range(G):
                nisa.nc_transpose(dst=y_psum[:, g * P : (g + 1) * P], data=yT[:, g, :])
            y_blk = nl.ndarray((T, nsz), dtype=y.dtype, buffer=nl.sbuf)
            nisa.tensor_copy(dst=y_blk, src=y_psum)
            nisa.dma_copy(dst=y[0:T, n0 : n0 + nsz], src=y_blk)
            continue
        for (t0, tsz), xT in zip(tiles, xTs):
            psum = psum_sets[step % 2]
            y_blk = nl.ndarray((tsz, nsz), dtype=y.dtype, buffer=nl.sbuf)
            for s, s0 in enumerate(range(0, nsz, N_TILE)):
                ssz = min(N_TILE, nsz - s0)
                acc = psum[s][0:tsz, 0:ssz]
                for kt in range(KT):
                    nisa.nc_matmul(
                        dst=acc,
                        stationary=xT[:, kt, 0:tsz],
                        moving=w_blk[:, kt, s0 : s0 + ssz],
                        accumulate=kt > 0,
                    )
                _evict_balanced(y_blk[:, s0 : s0 + ssz], acc, s)
            nisa.dma_copy(dst=y[t0 : t0 + tsz, n0 : n0 + nsz], src=y_blk)
            step += 1
    return y
