"""Projection matmul y[T, N] = x[T, K] @ w[K, N] for the model's projections (q, k/v, o, LM head).

Shape legend: T tokens (any count >= 1), K contraction (multiple of 128; 2048 in the model), N output
features (q 4096, k/v 512, o 2048, LM head 151936), P = 128 partitions, KT = K / 128.
Layout: x and y row-major [T, ·]; w row-major [K, N] (``W.T`` of the Hugging Face [N, K] weight), so a
[128, n] slab of w is already contraction-on-partitions. bf16 in, fp32 PSUM accumulation, y in x.dtype.
Every version splits the N columns between the programs of an LNC=2 launch (``kernel[2]``).

Versions (each adds one idea):
    v0  naive tiled: per (token tile, 512 columns, k tile) an element-strided transposed x load and a w load
    v1  hoisted loads: x loaded once per token tile, transposed on the PE, reused by every column tile
    v2  blocked free dims: w read in [128, KT, 2048] blocks (4 KiB per partition per DMA), y in 2048 blocks
    v3  double-buffered PSUM and w blocks, PSUM evictions alternating between ACT and DVE
    v4  operand placement for GEMV (T < 128): w stationary (fast weight load), tokens moving, y transposed
        back on the PE; T >= 128 keeps v3's placement
    v5  pre-tiled weights: w stored once (host side, ``nki_moe.bench.tile_weight``) as column blocks
        [nb, 128, KT, NB], so each partition's slice of a block is one contiguous run and a DMA of kg k tiles
        reads kg·NB·2 B per partition (≥ 8 KiB) instead of N/2·2 B rows; blocks split between the cores

Run: ``nki_moe.sim.run(matmul_v4, x, w, lnc=2)``; checked in tests/kernels/test_matmul.py.
"""

import nki
import nki.isa as nisa
import nki.language as nl

from nki_moe.kernels.tiles import lnc_share, load_transposed, load_transposed_naive

N_TILE = 512  # one fp32 PSUM bank per partition; the moving free-size limit on trn2
N_BLOCK = 2048  # columns per w block: 4 KiB contiguous per partition per DMA
CHUNK_BYTES = 8192  # v5: contiguous bytes per partition per weight DMA (94 % DMA efficiency)


def _check(x, w, n_multiple=1):
    """Restate the layout limits; returns (T, K, N)."""
    T, K = x.shape
    K_, N = w.shape
    assert K == K_, f"contraction mismatch: x has K={K}, w has K={K_}"
    assert K % 128 == 0, f"K={K} must be a multiple of 128"
    assert T >= 1, f"need at least one token, got T={T}"
    assert N % n_multiple == 0, f"N={N} must be a multiple of {n_multiple}"
    return T, K, N


def _columns(N, unit):
    """[lo, hi) of the output columns owned by this program (whole ``unit``-column tiles)."""
    first, count = lnc_share(-(-N // unit))
    return first * unit, min(N, (first + count) * unit)


def _token_tiles(T):
    """(first token, tokens) of each ≤128-token tile."""
    P = 128
    return [(t0, min(P, T - t0)) for t0 in range(0, T, P)]


def _evict(dst, src, i, balanced):
    """PSUM → SBUF copy (with the cast to y's dtype); alternating ACT/DVE when ``balanced``."""
    if balanced and i % 2 == 1:
        nisa.tensor_copy(dst=dst, src=src, engine=nisa.scalar_engine)
    else:
        nisa.tensor_copy(dst=dst, src=src, engine=nisa.vector_engine)


# ---- v0: naive tiled ------------------------------------------------------------------------------------
@nki.jit
def matmul_v0(x, w):
    """Args: x [T, K] bf16, w [K, N] bf16 (K % 128 == 0). Returns: y [T, N] in x.dtype."""
    T, K, N = _check(x, w)
    P = nl.tile_size.pmax
    y = nl.ndarray((T, N), dtype=x.dtype, buffer=nl.shared_hbm)
    n_lo, n_hi = _columns(N, N_TILE)
    for t0, tsz in _token_tiles(T):
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
    for t0, tsz in _token_tiles(T):
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


# ---- v2 / v3: blocked free dims; then double buffering ----------------------------------------------------
def _load_w_block(w, w_blk, n0, nsz):
    """w[:, n0:n0+nsz] into w_blk [128, KT, ≥nsz]: one DMA per k tile, nsz·2 B contiguous."""
    P = 128
    for kt in range(w.shape[0] // P):
        nisa.dma_copy(dst=w_blk[:, kt, 0:nsz], src=w[kt * P : (kt + 1) * P, n0 : n0 + nsz])


def _x_stationary_block(xT, w_blk, y, t0, tsz, n0, nsz, psum_set, balanced):
    """y[t0:t0+tsz, n0:n0+nsz] = x tile @ w block: tokens stationary, 512-column moving tiles."""
    KT = xT.shape[1]
    y_blk = nl.ndarray((tsz, nsz), dtype=y.dtype, buffer=nl.sbuf)
    for s, s0 in enumerate(range(0, nsz, N_TILE)):
        ssz = min(N_TILE, nsz - s0)
        acc = psum_set[s][0:tsz, 0:ssz]
        for kt in range(KT):
            nisa.nc_matmul(
                dst=acc, stationary=xT[:, kt, 0:tsz], moving=w_blk[:, kt, s0 : s0 + ssz], accumulate=kt > 0
            )
        _evict(y_blk[:, s0 : s0 + ssz], acc, s, balanced)
    nisa.dma_copy(dst=y[t0 : t0 + tsz, n0 : n0 + nsz], src=y_blk)


def _blocked(x, w, n_buf, balanced):
    """y = x @ w by [128, KT, N_BLOCK] w blocks, each read once; ``n_buf`` w/PSUM buffer sets rotate."""
    T, K, N = _check(x, w)
    P = nl.tile_size.pmax
    y = nl.ndarray((T, N), dtype=x.dtype, buffer=nl.shared_hbm)
    n_lo, n_hi = _columns(N, N_TILE)
    tiles = _token_tiles(T)
    xTs = [load_transposed(x, t0, tsz) for t0, tsz in tiles]
    w_bufs = [nl.ndarray((P, K // P, N_BLOCK), dtype=w.dtype, buffer=nl.sbuf) for _ in range(n_buf)]
    psum_sets = [
        [nl.ndarray((P, N_TILE), dtype=nl.float32, buffer=nl.psum) for _ in range(N_BLOCK // N_TILE)]
        for _ in range(n_buf)
    ]
    step = 0
    for b, n0 in enumerate(range(n_lo, n_hi, N_BLOCK)):
        nsz = min(N_BLOCK, n_hi - n0)
        w_blk = w_bufs[b % n_buf]
        _load_w_block(w, w_blk, n0, nsz)
        for (t0, tsz), xT in zip(tiles, xTs):
            _x_stationary_block(xT, w_blk, y, t0, tsz, n0, nsz, psum_sets[step % n_buf], balanced)
            step += 1
    return y


@nki.jit
def matmul_v2(x, w):
    """As matmul_v1 with w read in [128, KT, 2048] blocks (single buffered) and y written per block."""
    return _blocked(x, w, 1, False)


@nki.jit
def matmul_v3(x, w):
    """As matmul_v2 with two rotating w-block and PSUM buffer sets and ACT/DVE-balanced evictions."""
    return _blocked(x, w, 2, True)


# ---- v4: operand placement for GEMV (weights stationary, tokens moving) -----------------------------------
def _w_stationary_block(xT, w_blk, y, T, n0, nsz):
    """y[:, n0:n0+nsz] for T < 128: acc[n, t] = w[:, n]ᵀ x[t]ᵀ per 128 columns, PE-transposed to [t, n].

    The k loop is outermost so the PE starts on each k slab as soon as its DMA lands; the block's
    accumulators share PSUM banks (512 // T column tiles per bank, at most 4 banks for 2048 columns).
    """
    P = 128
    KT = xT.shape[1]
    G = nsz // P
    per_bank = max(1, N_TILE // T)
    accs = [
        nl.ndarray((P, min(per_bank, G - b0), T), dtype=nl.float32, buffer=nl.psum)
        for b0 in range(0, G, per_bank)
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
        _evict(yT[:, i * per_bank : i * per_bank + acc.shape[1], :], acc, i, True)
    y_psum = nl.ndarray((T, nsz), dtype=y.dtype, buffer=nl.psum)
    for g in range(G):
        nisa.nc_transpose(dst=y_psum[:, g * P : (g + 1) * P], data=yT[:, g, :])
    y_blk = nl.ndarray((T, nsz), dtype=y.dtype, buffer=nl.sbuf)
    nisa.tensor_copy(dst=y_blk, src=y_psum)
    nisa.dma_copy(dst=y[0:T, n0 : n0 + nsz], src=y_blk)


@nki.jit
def matmul_v4(x, w):
    """As matmul_v3; for T < 128 (decode, short prompts) w is the stationary operand. N % 128 == 0."""
    T, K, N = _check(x, w, n_multiple=128)
    if T >= 128:
        return _blocked(x, w, 2, True)
    P = nl.tile_size.pmax
    y = nl.ndarray((T, N), dtype=x.dtype, buffer=nl.shared_hbm)
    n_lo, n_hi = _columns(N, P)
    xT = load_transposed(x, 0, T)
    w_bufs = [nl.ndarray((P, K // P, N_BLOCK), dtype=w.dtype, buffer=nl.sbuf) for _ in range(2)]
    for b, n0 in enumerate(range(n_lo, n_hi, N_BLOCK)):
        nsz = min(N_BLOCK, n_hi - n0)
        _load_w_block(w, w_bufs[b % 2], n0, nsz)
        _w_stationary_block(xT, w_bufs[b % 2], y, T, n0, nsz)
    return y


# ---- v5: pre-tiled weights (one contiguous run per partition per block) ---------------------------------
def _load_tiled_block(w_t, b, w_blk, nsz):
    """Block b of a pre-tiled weight into w_blk [128, KT, ≥nsz]: kg k tiles per DMA (kg·NB·2 B per partition),
    the last k tile alone so the PE work left after the last byte lands is one k tile's."""
    KT, NB = w_t.shape[2], w_t.shape[3]
    kg = max(1, min(KT - 1, CHUNK_BYTES // (NB * 2)))
    for k0, k1 in [(k0, min(k0 + kg, KT - 1)) for k0 in range(0, KT - 1, kg)] + [(KT - 1, KT)]:
        nisa.dma_copy(dst=w_blk[:, k0:k1, 0:nsz], src=w_t[b, :, k0:k1, 0:nsz])


def _tiled(x, w_t, n_cols, direct):
    """y = x @ w from a pre-tiled weight (see matmul_v5); ``direct``: T = 1 via _w_stationary_direct."""
    T, K = x.shape
    nb, P, KT, NB = w_t.shape
    assert K == KT * P, f"contraction mismatch: x has K={K}, w_t has {KT}x{P}"
    assert n_cols % P == 0 and (nb - 1) * NB < n_cols <= nb * NB, f"n_cols={n_cols} vs {nb} blocks of {NB}"
    y = nl.ndarray((T, n_cols), dtype=x.dtype, buffer=nl.shared_hbm)
    tiles = _token_tiles(T)
    xTs = [load_transposed(x, t0, tsz) for t0, tsz in tiles]
    w_bufs = [nl.ndarray((P, KT, NB), dtype=w_t.dtype, buffer=nl.sbuf) for _ in range(2)]
    psum_sets = [
        [nl.ndarray((P, N_TILE), dtype=nl.float32, buffer=nl.psum) for _ in range(-(-NB // N_TILE))]
        for _ in range(2 if T >= P else 0)
    ]
    first, count = lnc_share(nb)
    for i, b in enumerate(range(first, first + count)):
        n0, nsz = b * NB, min(NB, n_cols - b * NB)
        _load_tiled_block(w_t, b, w_bufs[i % 2], nsz)
        if T < P:
            block = _w_stationary_direct if direct and T == 1 else _w_stationary_block
            block(xTs[0], w_bufs[i % 2], y, T, n0, nsz)
        for j, ((t0, tsz), xT) in enumerate(zip(tiles, xTs) if T >= P else ()):
            step = i * len(tiles) + j
            _x_stationary_block(xT, w_bufs[i % 2], y, t0, tsz, n0, nsz, psum_sets[step % 2], True)
    return y


@nki.jit
def matmul_v5(x, w_t, n_cols):
    """As matmul_v4 on a pre-tiled weight.

    Args: x [T, K] bf16; w_t [nb, 128, KT, NB] bf16 with w_t[b, p, kt, j] = w[kt·128 + p, b·NB + j] (zero
    padded past n_cols; ``nki_moe.bench.tile_weight``); n_cols = N, a multiple of 128. Returns: y [T, N].
    """
    return _tiled(x, w_t, n_cols, direct=False)


# ---- v6: decode results stored straight from the stationary-weight layout ----------------------------------
def _w_stationary_direct(xT, w_blk, y, T, n0, nsz):
    """y[0, n0:n0+nsz] for T = 1: the stationary of group g is columns g, g+G, … so partition p accumulates
    columns p·G … p·G+G−1 and yᵀ [128, G] is stored as is (G·2 B per partition): no PE transposes, no
    single-partition PSUM copy."""
    P = 128
    KT, G = xT.shape[1], nsz // P
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


@nki.jit
def matmul_v6(x, w_t, n_cols):
    """As matmul_v5; for T = 1 each block's yᵀ is stored directly (see _w_stationary_direct)."""
    return _tiled(x, w_t, n_cols, direct=True)
