"""Attention of one TP rank: decode (q/k RMSNorm, RoPE, KV-cache append, GQA over the cache, one token), the
whole decode block fused around it (q|k|v projection in, o projection out), and causal prefill of T tokens.

    qn = rope(rmsnorm(q)), kn = rope(rmsnorm(k))          per head over d, HF rotate-half, position L
    k_cache[L], v_cache[L] = kn, v                         the cache append (rows 0..L-1 are read only)
    out = softmax(qn · K[0..L]ᵀ · d^-0.5) · V[0..L]        query heads g·j … g·j+g-1 share KV head j
    block:  q | k | v = x · w_qkv  ->  the above  ->  y = out · w_o

Shape legend: H hidden, T prompt tokens (prefill), n_q query heads, n_kv KV heads, g = n_q / n_kv, d head_dim
(128), L cached positions (the new token's position), S = L + 1 attended positions, cap cache capacity (> L),
P = 128 partitions, G = H / 128 output columns per partition of the o projection.
Layout: q [1, n_q·d], k, v [1, n_kv·d] (the q/k/v projections' outputs; prefill: [T, ·], cos/sin [T, d]);
x [1, H]; w_qkv [H, (n_q + 2·n_kv)·d] and w_o [n_q·d, H] ([in, out]: HF's weights transposed); caches
[cap, n_kv, d] in HBM (``nki_moe.reference.KVCache`` per layer), written in place at row L (prefill: rows
0..T-1); out [1, n_q·d] (prefill [T, n_q·d]), y [1, H]. bf16 in and
out; PE accumulation, max and sums in fp32. Heads go on partitions for the norms and RoPE (reductions along
the free dim), head_dim goes on partitions for the matmuls (contraction over d, then over positions).
Rounding points follow HF's eager path [HF-QWEN3MOE]: projections rounded to bf16, q·kᵀ and its scaling by
d^-0.5 rounded, softmax in fp32 rounded once, p·v accumulated in fp32 and rounded.

Versions (each adds one idea):
    attention_decode_v0  one core, straightforward: norms + RoPE, append, then per KV head K loaded and
                         PE-transposed per 128 positions, scores [g, S] in SBUF, softmax, p·V
    attention_decode_v1  flash-decoding: the S positions split across the two cores of an LNC=2 launch, each
                         core's (max, sum, unnormalised partial) exchanged by sendrecv and combined
    attention_decode_v2  one core, loads first: every HBM read is issued before any compute and the new
                         k/v rows go into the SBUF tiles directly, so no read waits on the cache append
    attention_block_v0   the block fused on one core: weight-stationary q|k|v GEMV, attention_decode_v2's
                         core, o projection stored from PSUM; no HBM round trip between the stages
    attention_block_v1   both weight streams split across the two cores (q|k|v by contraction rows, o by
                         heads), partial sums swapped by sendrecv; attention split by query heads
    attention_block_v2   the weight halves streamed in ~8 KiB-per-partition chunks: the GEMV starts on the
                         first chunk
    attention_block_v3   the waits left on v2's critical path removed: Kᵀ built while weights stream, the new
                         key placed by the PE, w_o requested after the q|k|v exchange
    attention_block_v4   the DMA plan: w_qkv 8 rows per partition (7.5 KiB descriptors), cache rows nt per
                         partition (slot order), loads in consumption order, the exchange's transfer booked
                         before w_o, o stationaries at a 16 B stride
    attention_block_v5   w_o split by output columns: the [d, n_q/2] attention outputs swapped (during the own
                         heads' o GEMV) instead of y partial sums after it; the new v row by a K = 1 matmul
    attention_block_v6   the chain between the exchanges shortened: the softmax with the positions on all 128
                         partitions (scores out of the PE transposed), q and k normed by one chain
    attention_block_v7   fewer dependent instructions on that chain (fused rsqrt, PSUM-read bias, one
                         division, a one-row last w_qkv chunk, the last w_o chunk after the 2nd exchange)
    attention_block_v8   the layer's input RMSNorm fused in (h, gamma in; each core norms all of h); q|k|v
                         split by columns (k on core 0, v on core 1, swapped while q streams), w_o and
                         w_qkv in a host-side layout with 4-12 KiB descriptors (op attention_layer_decode;
                         run on ``layouts.attention_layer_layout``'s weights, h and gamma first)
    attention_prefill_v0 prefill, one core: norm + RoPE per 128-token tile (all heads per instruction), K/V
                         written to rows 0..T-1; per head and query tile the scores (key tiles past the
                         diagonal skipped, the diagonal masked with -inf) go to an HBM scratch and back
    attention_prefill_v1 the scores stay in SBUF: no scratch, no second pass
    attention_prefill_v2 flash attention: online softmax over 128 queries x 512 keys, running max and sum
    attention_prefill_v3 v1 with each query tile's heads interleaved stage by stage and the PSUM evictions
                         on ACT, so PE, ACT, DVE and GpSimd overlap
    attention_prefill_v4 v3 on the two cores of an LNC=2 launch: the query heads split 4/4, core 0 writes
                         the K cache rows and core 1 the V rows
    attention_prefill_v5 v4 with the prologue's loads issued first and broadcast on chip, the max in bf16, the
                         normalisation on GpSimd, pᵀ evicted four tiles per copy: v4's bits (order-preserving)
    attention_prefill_v6 v5 with the scale folded into the PSUM eviction: one pass fewer, one rounding fewer —
                         the faster variant, not bit-identical to the reference
    attention_prefill_v7 the softmax straight from PSUM: masked max (range_select) on DVE, exp with the scale
                         and −max as bias on ACT, unnormalised exps into p·V, o / Σe at the end (faster)
    attention_prefill_v8 v7 with the prologue pipelined (causal: query tile t needs keys 0 … t only): token
                         tile t + 2 normed (products on GpSimd) while tile t attends, one pipeline over the
                         (tile, head) items
    attention_prefill_v9 v8 with ACT's and DVE's work rebalanced: odd heads' eᵀ evictions on DVE, −max·d^-0.5
                         on ACT before its exp, eᵀ one item ahead of p·V (v8's bits)
    attention_block_prefill_v0  the prefill block (x, w_qkv, w_o in; y out), unfused, one core: q|k|v
                         stored to HBM and read back by v5's passes, the attention output likewise to o
    attention_block_prefill_v1  q/k-norm + RoPE fused into the QKV epilogue: PSUM tiles evicted, normed and
                         rotated on the way to SBUF; q/k/v never touch HBM but for the K/V cache rows
    attention_block_prefill_v2  the o projection as the attention's epilogue, LNC=2 (query heads split,
                         k on core 0 and v on core 1, attention outputs swapped; o in head order: v1's bits)

Issue 16's prefill rungs → these: v0 scores in HBM = v0; v1 SBUF-resident = v1; v2 flash = v2; "q/k-norm +
RoPE fused into the QKV epilogue": the prefill versions norm and rotate q/k per 128-token tile as it is
loaded, but take q, k, v (the projections' outputs); the epilogue fusion proper is attention_block_prefill_v1
(x, w_qkv in; v0 the unfused baseline, v2 the o projection fused too, LNC=2); v4 LNC=2 = v4. v3 (stage
interleave), v5-v9 are the workbook's own.

Run: ``nki_moe.sim.run(attention_block_v7, x, w_qkv, w_o, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache,
L, eps, lnc=2)``; prefill: ``nki_moe.sim.run(attention_prefill_v6, q, k, v, q_norm_w, k_norm_w, cos, sin,
k_cache, v_cache, eps, lnc=2)`` (v5: the order-preserving variant); prefill block:
``nki_moe.sim.run(attention_block_prefill_v2, x, w_qkv, w_o, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache,
eps, lnc=2)``; tests/kernels/test_attention.py.

Limits (asserted at entry):
    d <= 128, d even             v0-v3  one head on the partitions; rotate-half needs two halves
    n_q <= 128, n_q % n_kv == 0  v0-v3  all query heads on the partitions of one tile
    n_q % 2 == 0                 prefill v4  the query heads split evenly over the two cores
    0 <= L < cap                 v0-v3  the new row fits the cache (prefill: 1 <= T <= cap)
    H % 128 == 0                 v0-v3  (block) whole contraction tiles and 128-column o groups
    H % 256 == 0, n_q even       v1-v8  (block) halves of the weights and heads for the two cores
    G/2 <= 8 or 8 | G/2          v4-v8  (block) yᵀ in runs of min(8, G/2) columns per partition
    H % 256 == 0, n_q even, (n_q/2·d) % 128 == 0   prefill block: halves of the o columns and heads
"""

import nki
import nki.isa as nisa
import nki.language as nl

from nki_moe.kernels.tiles import lnc_share, load_transposed

S_TILE = 128  # positions per K transpose and per p·V contraction step (the partitions)
SCORE_TILE = 512  # positions per score matmul (one fp32 PSUM bank)
CHUNK_BYTES = 8192  # block v2: contiguous bytes per partition per weight DMA
NEG_INF = float("-inf")  # causal mask: masked scores, exp(-inf − m) = 0
NEG_BIG = -3.0e38  # the running max of a core without positions (finite: exp(NEG_BIG - m) = 0, no NaN)


def _check(q, k, v, k_cache, v_cache, L):
    """Restate the layout limits; returns (n_q, n_kv, d)."""
    cap, n_kv, d = k_cache.shape
    n_q = q.shape[1] // d
    assert tuple(v_cache.shape) == (cap, n_kv, d), (
        f"v_cache {tuple(v_cache.shape)} != k_cache {(cap, n_kv, d)}"
    )
    assert d <= 128 and d % 2 == 0, f"head_dim {d} must be even and <= 128"
    assert tuple(q.shape) == (1, n_q * d) and n_q <= 128, f"q {tuple(q.shape)}: need [1, n_q·{d}], n_q <= 128"
    assert n_q % n_kv == 0, f"{n_q} query heads not a multiple of {n_kv} KV heads"
    assert tuple(k.shape) == tuple(v.shape) == (1, n_kv * d), f"k {tuple(k.shape)}, v {tuple(v.shape)}"
    assert 0 <= L < cap, f"position L={L} outside the cache's {cap} rows"
    return n_q, n_kv, d


def _broadcast(vec, p):
    """A [1, d] or [d] HBM row broadcast to p partitions (partition-step-0 read), as an SBUF [p, d] tile."""
    d = vec.shape[-1]
    t = nl.ndarray((p, d), dtype=vec.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=vec.ap(pattern=[[0, p], [1, d]], offset=0))
    return t


def _norm_rope(x_t, w_t, cos_t, sin_t, eps, fused_rsqrt=False):
    """bf16 [rows, d] = RoPE(RMSNorm(x_t) · w) per row (a head), at HF's rounding points.

    x_t: SBUF [rows, d] heads on partitions; w_t, cos_t, sin_t: SBUF [>= rows, d] broadcasts of the norm
    weight and of the position's cos/sin row (``_broadcast``); their first ``rows`` partitions are used.
    RMSNorm: x·rstd rounded, then ·w rounded; RoPE: x·cos and rotate_half(x)·sin rounded, their sum rounded.
    ``fused_rsqrt``: rstd = rsqrt(Σx²·(1/d) + eps) by one ACT instruction (scale and bias) instead of a DVE
    tensor_scalar and an ACT rsqrt: the same fp32 operations, one dependent instruction fewer.
    """
    rows, d = x_t.shape
    h = d // 2
    ssum = nl.ndarray((rows, 1), dtype=nl.float32, buffer=nl.sbuf)
    sq = nl.ndarray((rows, d), dtype=nl.float32, buffer=nl.sbuf)  # discarded; only the sum is kept
    nisa.activation(
        dst=sq,
        op=nl.square,
        data=x_t,
        reduce_op=nl.add,
        reduce_res=ssum,
        reduce_cmd=nisa.reduce_cmd.reset_reduce,
    )
    rstd = nl.ndarray((rows, 1), dtype=nl.float32, buffer=nl.sbuf)
    if fused_rsqrt:
        nisa.activation(dst=rstd, op=nl.rsqrt, data=ssum, scale=1.0 / d, bias=eps)
    else:
        nisa.tensor_scalar(dst=rstd, data=ssum, op0=nl.multiply, operand0=1.0 / d, op1=nl.add, operand1=eps)
        nisa.activation(dst=rstd, op=nl.rsqrt, data=rstd)
    xn = nl.ndarray((rows, d), dtype=x_t.dtype, buffer=nl.sbuf)
    nisa.activation(dst=xn, op=nl.copy, data=x_t, scale=rstd)  # bf16(x · rstd)
    nisa.tensor_tensor(dst=xn, data1=xn, data2=w_t[0:rows, :], op=nl.multiply)
    cos_t, sin_t = cos_t[0:rows, :], sin_t[0:rows, :]
    xc = nl.ndarray((rows, d), dtype=x_t.dtype, buffer=nl.sbuf)
    nisa.tensor_tensor(dst=xc, data1=xn, data2=cos_t, op=nl.multiply)
    rs = nl.ndarray((rows, d), dtype=x_t.dtype, buffer=nl.sbuf)  # rotate_half(x)·sin = [-b·s1, a·s2]
    nisa.scalar_tensor_tensor(
        dst=rs[:, 0:h],
        data=xn[:, h:d],
        op0=nl.multiply,
        operand0=-1.0,
        op1=nl.multiply,
        operand1=sin_t[:, 0:h],
    )
    nisa.tensor_tensor(dst=rs[:, h:d], data1=xn[:, 0:h], data2=sin_t[:, h:d], op=nl.multiply)
    out = nl.ndarray((rows, d), dtype=x_t.dtype, buffer=nl.sbuf)
    nisa.tensor_tensor(dst=out, data1=xc, data2=rs, op=nl.add)
    return out


def _transpose(x_t, engine=nisa.vector_engine):
    """SBUF [p, f] -> SBUF [f, p] (same dtype) through one PE transpose into PSUM, evicted by ``engine``."""
    p, f = x_t.shape
    t_psum = nl.ndarray((f, p), dtype=x_t.dtype, buffer=nl.psum)
    nisa.nc_transpose(dst=t_psum, data=x_t)
    t = nl.ndarray((f, p), dtype=x_t.dtype, buffer=nl.sbuf)
    nisa.tensor_copy(dst=t, src=t_psum, engine=engine)
    return t


def _append(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, L, eps, write):
    """q/k norm + RoPE; when ``write``, k and v stored at cache row L. Returns qT [d, n_q] bf16."""
    cap, n_kv, d = k_cache.shape
    n_q = q.shape[1] // d
    q_t = nl.ndarray((n_q, d), dtype=q.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=q_t, src=q.reshape((n_q, d)))
    cos_t, sin_t = _broadcast(cos, n_q), _broadcast(sin, n_q)  # n_kv <= n_q: k uses the first rows
    qT = _transpose(_norm_rope(q_t, _broadcast(q_norm_w, n_q), cos_t, sin_t, eps))
    if write:
        k_t = nl.ndarray((n_kv, d), dtype=k.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=k_t, src=k.reshape((n_kv, d)))
        kn = _norm_rope(k_t, _broadcast(k_norm_w, n_kv), cos_t, sin_t, eps)
        nisa.dma_copy(dst=k_cache[L : L + 1, :, :].reshape((n_kv, d)), src=kn)
        nisa.dma_copy(dst=v_cache[L : L + 1, :, :].reshape((n_kv, d)), src=v.reshape((n_kv, d)))
    return qT


def _build_kT(k_rows, tiles, rows=None):
    """Kᵀ [d, S] of one KV head from its position tiles (SBUF [sz, d] each), PE-transposed per tile; only
    positions < ``rows`` (default all S) are filled."""
    S = tiles[-1][0] + tiles[-1][1]
    rows = S if rows is None else rows
    d = k_rows[0].shape[1]
    kT = nl.ndarray((d, S), dtype=k_rows[0].dtype, buffer=nl.sbuf)
    for i, (s0, sz) in enumerate(tiles):
        n = min(sz, rows - s0)
        if n > 0:
            kT_psum = nl.ndarray((d, n), dtype=k_rows[0].dtype, buffer=nl.psum)
            nisa.nc_transpose(dst=kT_psum, data=k_rows[i][0:n, :])
            nisa.tensor_copy(dst=kT[:, s0 : s0 + n], src=kT_psum)
    return kT


def _attend(qT, kT, v_rows, tiles):
    """o [g, d] bf16 = softmax(bf16(bf16(q·kᵀ)·d^-0.5)) · V of one KV head over SBUF-resident K/V.

    qT [d, g], kT [d, S] (d on partitions); v_rows: per position tile (s0, sz) of ``tiles`` an SBUF [sz, d]
    tile. The rounding points of v0 (normalise before p·V): bit-identical to v0.
    """
    d, g = qT.shape
    S = kT.shape[1]
    scores = nl.ndarray((g, S), dtype=qT.dtype, buffer=nl.sbuf)
    for c0 in range(0, S, SCORE_TILE):
        csz = min(SCORE_TILE, S - c0)
        s_psum = nl.ndarray((g, csz), dtype=nl.float32, buffer=nl.psum)
        nisa.nc_matmul(dst=s_psum, stationary=qT, moving=kT[:, c0 : c0 + csz])
        nisa.tensor_copy(dst=scores[:, c0 : c0 + csz], src=s_psum)
    nisa.tensor_scalar(dst=scores, data=scores, op0=nl.multiply, operand0=d**-0.5)
    neg_max = nl.ndarray((g, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_reduce(dst=neg_max, op=nl.maximum, data=scores, axis=1, negate=True)
    e = nl.ndarray((g, S), dtype=nl.float32, buffer=nl.sbuf)
    total = nl.ndarray((g, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.activation(
        dst=e,
        op=nl.exp,
        data=scores,
        bias=neg_max,
        reduce_op=nl.add,
        reduce_res=total,
        reduce_cmd=nisa.reduce_cmd.reset_reduce,
    )
    p = nl.ndarray((g, S), dtype=qT.dtype, buffer=nl.sbuf)
    nisa.tensor_scalar(dst=p, data=e, op0=nl.divide, operand0=total)
    o_psum = nl.ndarray((g, d), dtype=nl.float32, buffer=nl.psum)
    for i, (s0, sz) in enumerate(tiles):
        pT = _transpose(p[:, s0 : s0 + sz])
        nisa.nc_matmul(dst=o_psum, stationary=pT, moving=v_rows[i], accumulate=i > 0)
    o = nl.ndarray((g, d), dtype=qT.dtype, buffer=nl.sbuf)
    nisa.tensor_copy(dst=o, src=o_psum)
    return o


# ---- v0: one core, straightforward -----------------------------------------------------------------------
@nki.jit
def attention_decode_v0(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, L, eps):
    """Args: q [1, n_q·d], k, v [1, n_kv·d] bf16; q_norm_w, k_norm_w [d]; cos, sin [1, d] (row L of the
    RoPE table); k_cache, v_cache [cap, n_kv, d] (row L written in place); L int; eps float.
    Returns: out [1, n_q·d] in q.dtype."""
    n_q, n_kv, d = _check(q, k, v, k_cache, v_cache, L)
    g, S = n_q // n_kv, L + 1
    out = nl.ndarray((1, n_q * d), dtype=q.dtype, buffer=nl.shared_hbm)
    qT = _append(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, L, eps, write=True)
    tiles = [(s0, min(S_TILE, S - s0)) for s0 in range(0, S, S_TILE)]
    for j in range(n_kv):
        kT = nl.ndarray((d, S), dtype=k_cache.dtype, buffer=nl.sbuf)  # K[0..L]ᵀ, row L just written
        v_tiles = []
        for s0, sz in tiles:
            k_rows = nl.ndarray((sz, d), dtype=k_cache.dtype, buffer=nl.sbuf)
            nisa.dma_copy(dst=k_rows, src=k_cache[s0 : s0 + sz, j, :])
            kT_psum = nl.ndarray((d, sz), dtype=k_cache.dtype, buffer=nl.psum)
            nisa.nc_transpose(dst=kT_psum, data=k_rows)
            nisa.tensor_copy(dst=kT[:, s0 : s0 + sz], src=kT_psum)
            v_rows = nl.ndarray((sz, d), dtype=v_cache.dtype, buffer=nl.sbuf)
            nisa.dma_copy(dst=v_rows, src=v_cache[s0 : s0 + sz, j, :])
            v_tiles.append(v_rows)
        scores = nl.ndarray((g, S), dtype=q.dtype, buffer=nl.sbuf)
        for c0 in range(0, S, SCORE_TILE):
            csz = min(SCORE_TILE, S - c0)
            s_psum = nl.ndarray((g, csz), dtype=nl.float32, buffer=nl.psum)
            nisa.nc_matmul(dst=s_psum, stationary=qT[:, j * g : (j + 1) * g], moving=kT[:, c0 : c0 + csz])
            nisa.tensor_copy(dst=scores[:, c0 : c0 + csz], src=s_psum)  # bf16(q·kᵀ)
        nisa.tensor_scalar(dst=scores, data=scores, op0=nl.multiply, operand0=d**-0.5)  # bf16(· d^-0.5)
        neg_max = nl.ndarray((g, 1), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_reduce(dst=neg_max, op=nl.maximum, data=scores, axis=1, negate=True)
        e = nl.ndarray((g, S), dtype=nl.float32, buffer=nl.sbuf)
        total = nl.ndarray((g, 1), dtype=nl.float32, buffer=nl.sbuf)
        nisa.activation(
            dst=e,
            op=nl.exp,
            data=scores,
            bias=neg_max,
            reduce_op=nl.add,
            reduce_res=total,
            reduce_cmd=nisa.reduce_cmd.reset_reduce,
        )
        p = nl.ndarray((g, S), dtype=q.dtype, buffer=nl.sbuf)
        nisa.tensor_scalar(dst=p, data=e, op0=nl.divide, operand0=total)  # bf16(e / Σe), as the reference
        o_psum = nl.ndarray((g, d), dtype=nl.float32, buffer=nl.psum)
        for i, (s0, sz) in enumerate(tiles):
            pT = _transpose(p[:, s0 : s0 + sz])  # [sz, g]: positions on the partitions
            nisa.nc_matmul(dst=o_psum, stationary=pT, moving=v_tiles[i], accumulate=i > 0)
        o = nl.ndarray((g, d), dtype=q.dtype, buffer=nl.sbuf)
        nisa.tensor_copy(dst=o, src=o_psum)
        nisa.dma_copy(dst=out[0:1, j * g * d : (j + 1) * g * d].reshape((g, d)), src=o)
    return out


# ---- v1: flash-decoding, positions split across the two cores, (max, sum, partial) combined ---------------
@nki.jit
def attention_decode_v1(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, L, eps):
    """As attention_decode_v0 on this core's share of the S positions; launch ``[2]``.

    Each core keeps its own max m_c, sum l_c = Σ exp(s − m_c) and unnormalised o_c = Σ bf16(exp(s − m_c))·v;
    one sendrecv swaps the [g, 2 + d] packets and each core combines o = Σ o_c·e^(m_c−m) / Σ l_c·e^(m_c−m)
    (m = max m_c) and stores half of the d columns. The core owning position L appends the cache row.
    """
    n_q, n_kv, d = _check(q, k, v, k_cache, v_cache, L)
    g, S = n_q // n_kv, L + 1
    out = nl.ndarray((1, n_q * d), dtype=q.dtype, buffer=nl.shared_hbm)
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    first, count = lnc_share(S)
    owner = count > 0 and first + count == S  # this core's share ends at position L: it appends the row
    qT = _append(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, L, eps, write=owner)
    tiles = [(s0, min(S_TILE, first + count - s0)) for s0 in range(first, first + count, S_TILE)]
    c_lo, c_hi = pid * d // n_prog, (pid + 1) * d // n_prog  # this core's output columns
    for j in range(n_kv):
        mine = nl.ndarray((g, 2 + d), dtype=nl.float32, buffer=nl.sbuf)  # [m_c, l_c, o_c]
        if count == 0:
            nisa.memset(dst=mine, value=0.0)
            nisa.memset(dst=mine[:, 0:1], value=NEG_BIG)
        else:
            kT = nl.ndarray((d, count), dtype=k_cache.dtype, buffer=nl.sbuf)
            v_tiles = []
            for s0, sz in tiles:
                k_rows = nl.ndarray((sz, d), dtype=k_cache.dtype, buffer=nl.sbuf)
                nisa.dma_copy(dst=k_rows, src=k_cache[s0 : s0 + sz, j, :])
                kT_psum = nl.ndarray((d, sz), dtype=k_cache.dtype, buffer=nl.psum)
                nisa.nc_transpose(dst=kT_psum, data=k_rows)
                nisa.tensor_copy(dst=kT[:, s0 - first : s0 - first + sz], src=kT_psum)
                v_rows = nl.ndarray((sz, d), dtype=v_cache.dtype, buffer=nl.sbuf)
                nisa.dma_copy(dst=v_rows, src=v_cache[s0 : s0 + sz, j, :])
                v_tiles.append(v_rows)
            scores = nl.ndarray((g, count), dtype=q.dtype, buffer=nl.sbuf)
            for c0 in range(0, count, SCORE_TILE):
                csz = min(SCORE_TILE, count - c0)
                s_psum = nl.ndarray((g, csz), dtype=nl.float32, buffer=nl.psum)
                nisa.nc_matmul(dst=s_psum, stationary=qT[:, j * g : (j + 1) * g], moving=kT[:, c0 : c0 + csz])
                nisa.tensor_copy(dst=scores[:, c0 : c0 + csz], src=s_psum)
            nisa.tensor_scalar(dst=scores, data=scores, op0=nl.multiply, operand0=d**-0.5)
            nisa.tensor_reduce(dst=mine[:, 0:1], op=nl.maximum, data=scores, axis=1)
            neg_max = nl.ndarray((g, 1), dtype=nl.float32, buffer=nl.sbuf)
            nisa.tensor_scalar(dst=neg_max, data=mine[:, 0:1], op0=nl.multiply, operand0=-1.0)
            e = nl.ndarray((g, count), dtype=q.dtype, buffer=nl.sbuf)  # bf16: the PE's operand
            nisa.activation(
                dst=e,
                op=nl.exp,
                data=scores,
                bias=neg_max,
                reduce_op=nl.add,
                reduce_res=mine[:, 1:2],
                reduce_cmd=nisa.reduce_cmd.reset_reduce,
            )
            o_psum = nl.ndarray((g, d), dtype=nl.float32, buffer=nl.psum)
            for i, (s0, sz) in enumerate(tiles):
                eT = _transpose(e[:, s0 - first : s0 - first + sz])
                nisa.nc_matmul(dst=o_psum, stationary=eT, moving=v_tiles[i], accumulate=i > 0)
            nisa.tensor_copy(dst=mine[:, 2 : 2 + d], src=o_psum)
        theirs = nl.ndarray((g, 2 + d), dtype=nl.float32, buffer=nl.sbuf)
        if n_prog > 1:
            nisa.sendrecv(src=mine, dst=theirs, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=j)
        else:
            nisa.memset(dst=theirs, value=0.0)
            nisa.memset(dst=theirs[:, 0:1], value=NEG_BIG)
        m = nl.ndarray((g, 1), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_tensor(dst=m, data1=mine[:, 0:1], data2=theirs[:, 0:1], op=nl.maximum)
        o = nl.ndarray((g, d), dtype=q.dtype, buffer=nl.sbuf)
        num = nl.ndarray((g, c_hi - c_lo), dtype=nl.float32, buffer=nl.sbuf)
        den = nl.ndarray((g, 1), dtype=nl.float32, buffer=nl.sbuf)
        for part, first_part in ((mine, True), (theirs, False)):
            a = nl.ndarray((g, 1), dtype=nl.float32, buffer=nl.sbuf)  # e^(m_c − m)
            nisa.tensor_tensor(dst=a, data1=part[:, 0:1], data2=m, op=nl.subtract)
            nisa.activation(dst=a, op=nl.exp, data=a)
            if first_part:
                nisa.tensor_scalar(dst=num, data=part[:, 2 + c_lo : 2 + c_hi], op0=nl.multiply, operand0=a)
                nisa.tensor_tensor(dst=den, data1=part[:, 1:2], data2=a, op=nl.multiply)
            else:
                nisa.scalar_tensor_tensor(
                    dst=num,
                    data=part[:, 2 + c_lo : 2 + c_hi],
                    op0=nl.multiply,
                    operand0=a,
                    op1=nl.add,
                    operand1=num,
                )
                nisa.scalar_tensor_tensor(
                    dst=den, data=part[:, 1:2], op0=nl.multiply, operand0=a, op1=nl.add, operand1=den
                )
        nisa.tensor_scalar(dst=o[:, c_lo:c_hi], data=num, op0=nl.divide, operand0=den)
        o_hbm = out[0:1, j * g * d : (j + 1) * g * d].reshape((g, d))
        nisa.dma_copy(dst=o_hbm[:, c_lo:c_hi], src=o[:, c_lo:c_hi])
    return out


# ---- v2: every load issued first; the new rows placed in SBUF, never read back from the cache ------------
@nki.jit
def attention_decode_v2(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, L, eps):
    """As attention_decode_v0 with its DMAs reordered: q, k, the broadcasts and cache rows 0..L-1 are
    requested before any compute, so their fixed latencies overlap; the new k row (after norm + RoPE) and
    v row are copied into the last K/V tiles on chip while the append to the cache proceeds in parallel."""
    n_q, n_kv, d = _check(q, k, v, k_cache, v_cache, L)
    g, S = n_q // n_kv, L + 1
    out = nl.ndarray((1, n_q * d), dtype=q.dtype, buffer=nl.shared_hbm)
    tiles = [(s0, min(S_TILE, S - s0)) for s0 in range(0, S, S_TILE)]
    s_last = tiles[-1][0]
    q_t = nl.ndarray((n_q, d), dtype=q.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=q_t, src=q.reshape((n_q, d)))
    k_t = nl.ndarray((n_kv, d), dtype=k.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=k_t, src=k.reshape((n_kv, d)))
    qw_t, kw_t = _broadcast(q_norm_w, n_q), _broadcast(k_norm_w, n_kv)
    cos_t, sin_t = _broadcast(cos, n_q), _broadcast(sin, n_q)
    k_rows, v_rows = [], []  # [j][tile]: positions on partitions; the last tile's row L is filled below
    for j in range(n_kv):
        k_rows.append([nl.ndarray((sz, d), dtype=k_cache.dtype, buffer=nl.sbuf) for _, sz in tiles])
        v_rows.append([nl.ndarray((sz, d), dtype=v_cache.dtype, buffer=nl.sbuf) for _, sz in tiles])
        for i, (s0, sz) in enumerate(tiles):
            old = min(sz, L - s0)  # rows of this tile already in the cache (row L is not)
            if old > 0:
                nisa.dma_copy(dst=k_rows[j][i][0:old, :], src=k_cache[s0 : s0 + old, j, :])
                nisa.dma_copy(dst=v_rows[j][i][0:old, :], src=v_cache[s0 : s0 + old, j, :])
        nisa.dma_copy(dst=v_rows[j][-1][L - s_last : L - s_last + 1, :], src=v[0:1, j * d : (j + 1) * d])
    kn = _norm_rope(k_t, kw_t, cos_t, sin_t, eps)
    nisa.dma_copy(dst=k_cache[L : L + 1, :, :].reshape((n_kv, d)), src=kn)
    nisa.dma_copy(dst=v_cache[L : L + 1, :, :].reshape((n_kv, d)), src=v.reshape((n_kv, d)))
    qT = _transpose(_norm_rope(q_t, qw_t, cos_t, sin_t, eps))
    for j in range(n_kv):
        nisa.dma_copy(dst=k_rows[j][-1][L - s_last : L - s_last + 1, :], src=kn[j : j + 1, :])  # on chip
        o = _attend(qT[:, j * g : (j + 1) * g], _build_kT(k_rows[j], tiles), v_rows[j], tiles)
        nisa.dma_copy(dst=out[0:1, j * g * d : (j + 1) * g * d].reshape((g, d)), src=o)
    return out


def _check_block(x, w_qkv, w_o, k_cache, L):
    """Restate the fused block's layout limits; returns (H, n_q, n_kv, d)."""
    cap, n_kv, d = k_cache.shape
    H = x.shape[1]
    n_q = w_o.shape[0] // d
    assert tuple(x.shape) == (1, H) and H % 128 == 0, f"x {tuple(x.shape)}: one token, H % 128 == 0"
    assert tuple(w_qkv.shape) == (H, (n_q + 2 * n_kv) * d), f"w_qkv {tuple(w_qkv.shape)} vs H={H}"
    assert tuple(w_o.shape) == (n_q * d, H), f"w_o {tuple(w_o.shape)} != {(n_q * d, H)}"
    assert d <= 128 and d % 2 == 0 and n_q <= 128 and n_q % n_kv == 0, f"heads {n_q}/{n_kv} of {d}"
    assert 0 <= L < cap, f"position L={L} outside the cache's {cap} rows"
    return H, n_q, n_kv, d


def _load_slabs(w, r0, rows, c0, cols, p):
    """SBUF [p, rows // p, cols] with [i, t, c] = w[r0 + t·p + i, c0 + c]: contraction slabs, one DMA."""
    N = w.shape[1]
    t = nl.ndarray((p, rows // p, cols), dtype=w.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=t, src=w.ap(pattern=[[N, p], [p * N, rows // p], [1, cols]], offset=r0 * N + c0))
    return t


def _gemv_heads(w_t, xT, heads):
    """[d, heads] fp32 PSUM: column h = Σ_kt w_t[:, kt, h·d:(h+1)·d]ᵀ xT[:, kt] (weight stationary, T = 1)."""
    P, KT, N = w_t.shape
    d = N // heads
    acc = nl.ndarray((d, heads), dtype=nl.float32, buffer=nl.psum)
    for kt in range(KT):
        for h in range(heads):
            nisa.nc_matmul(
                dst=acc[:, h : h + 1],
                stationary=w_t[:, kt, h * d : (h + 1) * d],
                moving=xT[:, kt, 0:1],
                accumulate=kt > 0,
            )
    return acc


# ---- block v0: QKV + norms + RoPE + append + attention + o projection in one kernel, one core -----------
@nki.jit
def attention_block_v0(x, w_qkv, w_o, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, L, eps):
    """The whole decode attention block with no HBM round trip between its stages.

    Args: x [1, H] bf16 (the normed hidden state); w_qkv [H, (n_q + 2·n_kv)·d] (q | k | v columns, [in, out]);
    w_o [n_q·d, H]; the rest as attention_decode_v0. Returns: y [1, H] in x.dtype (before the residual add).
    Every load is issued first (weights, x, cache rows 0..L-1); q/k/v come out of weight-stationary GEMVs
    as [d, head] columns, are PE-transposed to heads on partitions for the norms and RoPE, attend as in
    attention_decode_v2, and the o projection stores yᵀ[p, c] = y[p·G + c] straight from PSUM (G = H / 128).
    """
    H, n_q, n_kv, d = _check_block(x, w_qkv, w_o, k_cache, L)
    P, g, S, G = nl.tile_size.pmax, n_q // n_kv, L + 1, H // 128
    y = nl.ndarray((1, H), dtype=x.dtype, buffer=nl.shared_hbm)
    heads = n_q + 2 * n_kv
    w_t = _load_slabs(w_qkv, 0, H, 0, heads * d, P)  # [128, KT, heads·d]
    wo_t = _load_slabs(w_o, 0, n_q * d, 0, H, d)  # [d, n_q, H]: head h's rows are contraction tile h
    xT = load_transposed(x, 0, 1)
    qw_t, kw_t = _broadcast(q_norm_w, n_q), _broadcast(k_norm_w, n_kv)
    cos_t, sin_t = _broadcast(cos, n_q), _broadcast(sin, n_q)
    tiles = [(s0, min(S_TILE, S - s0)) for s0 in range(0, S, S_TILE)]
    s_last = tiles[-1][0]
    k_rows = [
        [nl.ndarray((sz, d), dtype=k_cache.dtype, buffer=nl.sbuf) for _, sz in tiles] for _ in range(n_kv)
    ]
    v_rows = [
        [nl.ndarray((sz, d), dtype=v_cache.dtype, buffer=nl.sbuf) for _, sz in tiles] for _ in range(n_kv)
    ]
    for j in range(n_kv):
        for i, (s0, sz) in enumerate(tiles):
            old = min(sz, L - s0)
            if old > 0:
                nisa.dma_copy(dst=k_rows[j][i][0:old, :], src=k_cache[s0 : s0 + old, j, :])
                nisa.dma_copy(dst=v_rows[j][i][0:old, :], src=v_cache[s0 : s0 + old, j, :])
    qkvT = nl.ndarray((d, heads), dtype=x.dtype, buffer=nl.sbuf)
    nisa.tensor_copy(dst=qkvT, src=_gemv_heads(w_t, xT, heads))  # bf16(x @ w): HF's rounding point
    q_t = _transpose(qkvT[:, 0:n_q])  # [n_q, d]
    kn = _norm_rope(_transpose(qkvT[:, n_q : n_q + n_kv]), kw_t, cos_t, sin_t, eps)
    v_t = _transpose(qkvT[:, n_q + n_kv : heads])  # [n_kv, d]
    nisa.dma_copy(dst=k_cache[L : L + 1, :, :].reshape((n_kv, d)), src=kn)
    nisa.dma_copy(dst=v_cache[L : L + 1, :, :].reshape((n_kv, d)), src=v_t)
    qT = _transpose(_norm_rope(q_t, qw_t, cos_t, sin_t, eps))
    outT = nl.ndarray((d, n_q), dtype=x.dtype, buffer=nl.sbuf)  # attention output, head h in column h
    for j in range(n_kv):
        nisa.dma_copy(dst=k_rows[j][-1][L - s_last : L - s_last + 1, :], src=kn[j : j + 1, :])
        nisa.dma_copy(dst=v_rows[j][-1][L - s_last : L - s_last + 1, :], src=v_t[j : j + 1, :])
        o = _attend(qT[:, j * g : (j + 1) * g], _build_kT(k_rows[j], tiles), v_rows[j], tiles)
        o_psum = nl.ndarray((d, g), dtype=x.dtype, buffer=nl.psum)
        nisa.nc_transpose(dst=o_psum, data=o)
        nisa.tensor_copy(dst=outT[:, j * g : (j + 1) * g], src=o_psum)
    y_psum = nl.ndarray((P, G), dtype=nl.float32, buffer=nl.psum)
    for h in range(n_q):
        for c in range(G):
            nisa.nc_matmul(
                dst=y_psum[:, c : c + 1],
                stationary=wo_t[:, h, c:H:G],
                moving=outT[:, h : h + 1],
                accumulate=h > 0,
            )
    yT = nl.ndarray((P, G), dtype=x.dtype, buffer=nl.sbuf)
    nisa.tensor_copy(dst=yT, src=y_psum)
    nisa.dma_copy(dst=y.ap(pattern=[[G, P], [1, G]], offset=0), src=yT)
    return y


# ---- block v1: both weight streams split across the two cores, partial sums exchanged ----------------------
@nki.jit
def attention_block_v1(x, w_qkv, w_o, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, L, eps):
    """As attention_block_v0 with each core reading half of every weight; launch ``[2]``. H % 256 == 0.

    q|k|v: core c contracts rows [c·H/2, (c+1)·H/2) of w_qkv for all heads and the [d, heads] fp32 partial
    sums are swapped by sendrecv and added (the same sum on both cores). Attention: core c takes query heads
    [c·n_q/2, (c+1)·n_q/2). o_proj: core c contracts its heads' rows of w_o; the [128, G] partials are
    swapped and added, and core c stores its half of y. Core 0 appends the k row, core 1 the v row.
    """
    H, n_q, n_kv, d = _check_block(x, w_qkv, w_o, k_cache, L)
    P, g, S, G = nl.tile_size.pmax, n_q // n_kv, L + 1, H // 128
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    assert n_prog == 2 and H % 256 == 0 and n_q % 2 == 0, (
        f"LNC=2, H % 256 == 0, even n_q: {n_prog}, {H}, {n_q}"
    )
    y = nl.ndarray((1, H), dtype=x.dtype, buffer=nl.shared_hbm)
    heads, KT = n_q + 2 * n_kv, H // P
    h0, h1 = pid * n_q // 2, (pid + 1) * n_q // 2  # this core's query heads
    kv = [j for j in range(n_kv) if j * g < h1 and (j + 1) * g > h0]  # the KV heads they attend
    w_t = _load_slabs(w_qkv, pid * H // 2, H // 2, 0, heads * d, P)  # [128, KT/2, heads·d]
    wo_t = _load_slabs(w_o, h0 * d, (h1 - h0) * d, 0, H, d)  # [d, n_q/2, H]
    xT = load_transposed(x, 0, 1)
    qw_t, kw_t = _broadcast(q_norm_w, h1 - h0), _broadcast(k_norm_w, n_kv)
    cos_t, sin_t = _broadcast(cos, max(h1 - h0, n_kv)), _broadcast(sin, max(h1 - h0, n_kv))
    tiles = [(s0, min(S_TILE, S - s0)) for s0 in range(0, S, S_TILE)]
    s_last = tiles[-1][0]
    k_rows = {j: [nl.ndarray((sz, d), dtype=k_cache.dtype, buffer=nl.sbuf) for _, sz in tiles] for j in kv}
    v_rows = {j: [nl.ndarray((sz, d), dtype=v_cache.dtype, buffer=nl.sbuf) for _, sz in tiles] for j in kv}
    for j in kv:
        for i, (s0, sz) in enumerate(tiles):
            old = min(sz, L - s0)
            if old > 0:
                nisa.dma_copy(dst=k_rows[j][i][0:old, :], src=k_cache[s0 : s0 + old, j, :])
                nisa.dma_copy(dst=v_rows[j][i][0:old, :], src=v_cache[s0 : s0 + old, j, :])
    mine = nl.ndarray((d, heads), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=mine, src=_gemv_heads(w_t, xT[:, pid * KT // 2 : (pid + 1) * KT // 2, :], heads))
    theirs = nl.ndarray((d, heads), dtype=nl.float32, buffer=nl.sbuf)
    nisa.sendrecv(src=mine, dst=theirs, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=0)
    qkvT = nl.ndarray((d, heads), dtype=x.dtype, buffer=nl.sbuf)
    nisa.tensor_tensor(dst=qkvT, data1=mine, data2=theirs, op=nl.add)  # bf16(x @ w), commutative: same bits
    kn = _norm_rope(_transpose(qkvT[:, n_q : n_q + n_kv]), kw_t, cos_t, sin_t, eps)
    v_t = _transpose(qkvT[:, n_q + n_kv : heads])
    if pid == 0:
        nisa.dma_copy(dst=k_cache[L : L + 1, :, :].reshape((n_kv, d)), src=kn)
    else:
        nisa.dma_copy(dst=v_cache[L : L + 1, :, :].reshape((n_kv, d)), src=v_t)
    qT = _transpose(_norm_rope(_transpose(qkvT[:, h0:h1]), qw_t, cos_t, sin_t, eps))  # [d, n_q/2]
    outT = nl.ndarray((d, h1 - h0), dtype=x.dtype, buffer=nl.sbuf)
    for j in kv:
        a, b = max(h0, j * g), min(h1, (j + 1) * g)  # this core's query heads of KV head j
        nisa.dma_copy(dst=k_rows[j][-1][L - s_last : L - s_last + 1, :], src=kn[j : j + 1, :])
        nisa.dma_copy(dst=v_rows[j][-1][L - s_last : L - s_last + 1, :], src=v_t[j : j + 1, :])
        o = _attend(qT[:, a - h0 : b - h0], _build_kT(k_rows[j], tiles), v_rows[j], tiles)
        o_psum = nl.ndarray((d, b - a), dtype=x.dtype, buffer=nl.psum)
        nisa.nc_transpose(dst=o_psum, data=o)
        nisa.tensor_copy(dst=outT[:, a - h0 : b - h0], src=o_psum)
    y_psum = nl.ndarray((P, G), dtype=nl.float32, buffer=nl.psum)
    for h in range(h1 - h0):
        for c in range(G):
            nisa.nc_matmul(
                dst=y_psum[:, c : c + 1],
                stationary=wo_t[:, h, c:H:G],
                moving=outT[:, h : h + 1],
                accumulate=h > 0,
            )
    y_mine = nl.ndarray((P, G), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=y_mine, src=y_psum)
    y_theirs = nl.ndarray((P, G), dtype=nl.float32, buffer=nl.sbuf)
    nisa.sendrecv(src=y_mine, dst=y_theirs, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=1)
    p0, p1 = pid * P // 2, (pid + 1) * P // 2  # this core's partitions of yᵀ: y[p0·G : p1·G], contiguous
    yT = nl.ndarray((P, G), dtype=x.dtype, buffer=nl.sbuf)
    nisa.tensor_tensor(dst=yT[p0:p1, :], data1=y_mine[p0:p1, :], data2=y_theirs[p0:p1, :], op=nl.add)
    nisa.dma_copy(dst=y[0:1, p0 * G : p1 * G].reshape((p1 - p0, G)), src=yT[p0:p1, :])
    return y


# ---- block v2: the weights streamed in ~8 KiB-per-partition chunks, in the order the PE consumes them -----
@nki.jit
def attention_block_v2(x, w_qkv, w_o, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, L, eps):
    """As attention_block_v1 with each weight half read in chunks of whole contraction tiles (about
    CHUNK_BYTES per partition each): w_qkv first, then the cache rows, then w_o; the q|k|v GEMV of a chunk
    starts when that chunk lands instead of after the whole 2.5 MB, and w_o streams in during attention."""
    H, n_q, n_kv, d = _check_block(x, w_qkv, w_o, k_cache, L)
    P, g, S, G = nl.tile_size.pmax, n_q // n_kv, L + 1, H // 128
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    assert n_prog == 2 and H % 256 == 0 and n_q % 2 == 0, (
        f"LNC=2, H % 256 == 0, even n_q: {n_prog}, {H}, {n_q}"
    )
    y = nl.ndarray((1, H), dtype=x.dtype, buffer=nl.shared_hbm)
    heads, KT = n_q + 2 * n_kv, H // P
    h0, h1 = pid * n_q // 2, (pid + 1) * n_q // 2  # this core's query heads
    kv = [j for j in range(n_kv) if j * g < h1 and (j + 1) * g > h0]  # the KV heads they attend
    xT = load_transposed(x, 0, 1)
    r0, kg = pid * H // 2, max(1, CHUNK_BYTES // (heads * d * 2))  # k tiles per w_qkv chunk
    w_chunks = [
        _load_slabs(w_qkv, r0 + k0 * P, min(kg, KT // 2 - k0) * P, 0, heads * d, P)
        for k0 in range(0, KT // 2, kg)
    ]
    qw_t, kw_t = _broadcast(q_norm_w, h1 - h0), _broadcast(k_norm_w, n_kv)
    cos_t, sin_t = _broadcast(cos, max(h1 - h0, n_kv)), _broadcast(sin, max(h1 - h0, n_kv))
    tiles = [(s0, min(S_TILE, S - s0)) for s0 in range(0, S, S_TILE)]
    s_last = tiles[-1][0]
    k_rows = {j: [nl.ndarray((sz, d), dtype=k_cache.dtype, buffer=nl.sbuf) for _, sz in tiles] for j in kv}
    v_rows = {j: [nl.ndarray((sz, d), dtype=v_cache.dtype, buffer=nl.sbuf) for _, sz in tiles] for j in kv}
    for j in kv:
        for i, (s0, sz) in enumerate(tiles):
            old = min(sz, L - s0)
            if old > 0:
                nisa.dma_copy(dst=k_rows[j][i][0:old, :], src=k_cache[s0 : s0 + old, j, :])
                nisa.dma_copy(dst=v_rows[j][i][0:old, :], src=v_cache[s0 : s0 + old, j, :])
    hg = max(1, CHUNK_BYTES // (H * 2))  # heads per w_o chunk, requested now, consumed last
    wo_chunks = [
        _load_slabs(w_o, (h0 + a) * d, min(hg, h1 - h0 - a) * d, 0, H, d) for a in range(0, h1 - h0, hg)
    ]
    acc = nl.ndarray((d, heads), dtype=nl.float32, buffer=nl.psum)
    for c, w_t in enumerate(w_chunks):  # chunk c holds k tiles c·kg … of this core's half
        for kk in range(w_t.shape[1]):
            kt = pid * KT // 2 + c * kg + kk
            for h in range(heads):
                nisa.nc_matmul(
                    dst=acc[:, h : h + 1],
                    stationary=w_t[:, kk, h * d : (h + 1) * d],
                    moving=xT[:, kt, 0:1],
                    accumulate=c + kk > 0,
                )
    mine = nl.ndarray((d, heads), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=mine, src=acc)
    theirs = nl.ndarray((d, heads), dtype=nl.float32, buffer=nl.sbuf)
    nisa.sendrecv(src=mine, dst=theirs, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=0)
    qkvT = nl.ndarray((d, heads), dtype=x.dtype, buffer=nl.sbuf)
    nisa.tensor_tensor(dst=qkvT, data1=mine, data2=theirs, op=nl.add)  # bf16(x @ w), commutative: same bits
    kn = _norm_rope(_transpose(qkvT[:, n_q : n_q + n_kv]), kw_t, cos_t, sin_t, eps)
    v_t = _transpose(qkvT[:, n_q + n_kv : heads])
    if pid == 0:
        nisa.dma_copy(dst=k_cache[L : L + 1, :, :].reshape((n_kv, d)), src=kn)
    else:
        nisa.dma_copy(dst=v_cache[L : L + 1, :, :].reshape((n_kv, d)), src=v_t)
    qT = _transpose(_norm_rope(_transpose(qkvT[:, h0:h1]), qw_t, cos_t, sin_t, eps))  # [d, n_q/2]
    outT = nl.ndarray((d, h1 - h0), dtype=x.dtype, buffer=nl.sbuf)
    for j in kv:
        a, b = max(h0, j * g), min(h1, (j + 1) * g)  # this core's query heads of KV head j
        nisa.dma_copy(dst=k_rows[j][-1][L - s_last : L - s_last + 1, :], src=kn[j : j + 1, :])
        nisa.dma_copy(dst=v_rows[j][-1][L - s_last : L - s_last + 1, :], src=v_t[j : j + 1, :])
        o = _attend(qT[:, a - h0 : b - h0], _build_kT(k_rows[j], tiles), v_rows[j], tiles)
        o_psum = nl.ndarray((d, b - a), dtype=x.dtype, buffer=nl.psum)
        nisa.nc_transpose(dst=o_psum, data=o)
        nisa.tensor_copy(dst=outT[:, a - h0 : b - h0], src=o_psum)
    y_psum = nl.ndarray((P, G), dtype=nl.float32, buffer=nl.psum)
    for h in range(h1 - h0):
        wo_t = wo_chunks[h // hg]
        for c in range(G):
            nisa.nc_matmul(
                dst=y_psum[:, c : c + 1],
                stationary=wo_t[:, h % hg, c:H:G],
                moving=outT[:, h : h + 1],
                accumulate=h > 0,
            )
    y_mine = nl.ndarray((P, G), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=y_mine, src=y_psum)
    y_theirs = nl.ndarray((P, G), dtype=nl.float32, buffer=nl.sbuf)
    nisa.sendrecv(src=y_mine, dst=y_theirs, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=1)
    p0, p1 = pid * P // 2, (pid + 1) * P // 2  # this core's partitions of yᵀ: y[p0·G : p1·G], contiguous
    yT = nl.ndarray((P, G), dtype=x.dtype, buffer=nl.sbuf)
    nisa.tensor_tensor(dst=yT[p0:p1, :], data1=y_mine[p0:p1, :], data2=y_theirs[p0:p1, :], op=nl.add)
    nisa.dma_copy(dst=y[0:1, p0 * G : p1 * G].reshape((p1 - p0, G)), src=yT[p0:p1, :])
    return y


# ---- block v3: no DMA left on the critical path after the weights: Kᵀ early, w_o after the exchange -----
@nki.jit
def attention_block_v3(x, w_qkv, w_o, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, L, eps):
    """As attention_block_v2 with two waits its schedule showed removed: Kᵀ of cache rows 0..L-1 is built
    by the PE while the weights stream and the new key's column is placed by a PE transpose (no SBUF→SBUF
    DMA on the critical path); w_o is requested after the q|k|v exchange, which no longer queues behind it."""
    H, n_q, n_kv, d = _check_block(x, w_qkv, w_o, k_cache, L)
    P, g, S, G = nl.tile_size.pmax, n_q // n_kv, L + 1, H // 128
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    assert n_prog == 2 and H % 256 == 0 and n_q % 2 == 0, (
        f"LNC=2, H % 256 == 0, even n_q: {n_prog}, {H}, {n_q}"
    )
    y = nl.ndarray((1, H), dtype=x.dtype, buffer=nl.shared_hbm)
    heads, KT = n_q + 2 * n_kv, H // P
    h0, h1 = pid * n_q // 2, (pid + 1) * n_q // 2  # this core's query heads
    kv = [j for j in range(n_kv) if j * g < h1 and (j + 1) * g > h0]  # the KV heads they attend
    xT = load_transposed(x, 0, 1)
    r0, kg = pid * H // 2, max(1, CHUNK_BYTES // (heads * d * 2))  # k tiles per w_qkv chunk
    w_chunks = [
        _load_slabs(w_qkv, r0 + k0 * P, min(kg, KT // 2 - k0) * P, 0, heads * d, P)
        for k0 in range(0, KT // 2, kg)
    ]
    qw_t, kw_t = _broadcast(q_norm_w, h1 - h0), _broadcast(k_norm_w, n_kv)
    cos_t, sin_t = _broadcast(cos, max(h1 - h0, n_kv)), _broadcast(sin, max(h1 - h0, n_kv))
    tiles = [(s0, min(S_TILE, S - s0)) for s0 in range(0, S, S_TILE)]
    s_last = tiles[-1][0]
    k_rows = {j: [nl.ndarray((sz, d), dtype=k_cache.dtype, buffer=nl.sbuf) for _, sz in tiles] for j in kv}
    v_rows = {j: [nl.ndarray((sz, d), dtype=v_cache.dtype, buffer=nl.sbuf) for _, sz in tiles] for j in kv}
    for j in kv:
        for i, (s0, sz) in enumerate(tiles):
            old = min(sz, L - s0)
            if old > 0:
                nisa.dma_copy(dst=k_rows[j][i][0:old, :], src=k_cache[s0 : s0 + old, j, :])
                nisa.dma_copy(dst=v_rows[j][i][0:old, :], src=v_cache[s0 : s0 + old, j, :])
    kTs = {j: _build_kT(k_rows[j], tiles, rows=L) for j in kv}  # the new row's column is filled below
    acc = nl.ndarray((d, heads), dtype=nl.float32, buffer=nl.psum)
    for c, w_t in enumerate(w_chunks):  # chunk c holds k tiles c·kg … of this core's half
        for kk in range(w_t.shape[1]):
            kt = pid * KT // 2 + c * kg + kk
            for h in range(heads):
                nisa.nc_matmul(
                    dst=acc[:, h : h + 1],
                    stationary=w_t[:, kk, h * d : (h + 1) * d],
                    moving=xT[:, kt, 0:1],
                    accumulate=c + kk > 0,
                )
    mine = nl.ndarray((d, heads), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=mine, src=acc)
    theirs = nl.ndarray((d, heads), dtype=nl.float32, buffer=nl.sbuf)
    nisa.sendrecv(src=mine, dst=theirs, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=0)
    hg = max(1, CHUNK_BYTES // (H * 2))  # heads per w_o chunk: streamed in during attention
    wo_chunks = [
        _load_slabs(w_o, (h0 + a) * d, min(hg, h1 - h0 - a) * d, 0, H, d) for a in range(0, h1 - h0, hg)
    ]
    qkvT = nl.ndarray((d, heads), dtype=x.dtype, buffer=nl.sbuf)
    nisa.tensor_tensor(dst=qkvT, data1=mine, data2=theirs, op=nl.add)  # bf16(x @ w), commutative: same bits
    kn = _norm_rope(_transpose(qkvT[:, n_q : n_q + n_kv]), kw_t, cos_t, sin_t, eps)
    v_t = _transpose(qkvT[:, n_q + n_kv : heads])
    if pid == 0:
        nisa.dma_copy(dst=k_cache[L : L + 1, :, :].reshape((n_kv, d)), src=kn)
    else:
        nisa.dma_copy(dst=v_cache[L : L + 1, :, :].reshape((n_kv, d)), src=v_t)
    qT = _transpose(_norm_rope(_transpose(qkvT[:, h0:h1]), qw_t, cos_t, sin_t, eps))  # [d, n_q/2]
    knT = _transpose(kn)  # [d, n_kv]
    outT = nl.ndarray((d, h1 - h0), dtype=x.dtype, buffer=nl.sbuf)
    for j in kv:
        a, b = max(h0, j * g), min(h1, (j + 1) * g)  # this core's query heads of KV head j
        nisa.tensor_copy(dst=kTs[j][:, L : L + 1], src=knT[:, j : j + 1])
        nisa.dma_copy(dst=v_rows[j][-1][L - s_last : L - s_last + 1, :], src=v_t[j : j + 1, :])
        o = _attend(qT[:, a - h0 : b - h0], kTs[j], v_rows[j], tiles)
        o_psum = nl.ndarray((d, b - a), dtype=x.dtype, buffer=nl.psum)
        nisa.nc_transpose(dst=o_psum, data=o)
        nisa.tensor_copy(dst=outT[:, a - h0 : b - h0], src=o_psum)
    y_psum = nl.ndarray((P, G), dtype=nl.float32, buffer=nl.psum)
    for h in range(h1 - h0):
        wo_t = wo_chunks[h // hg]
        for c in range(G):
            nisa.nc_matmul(
                dst=y_psum[:, c : c + 1],
                stationary=wo_t[:, h % hg, c:H:G],
                moving=outT[:, h : h + 1],
                accumulate=h > 0,
            )
    y_mine = nl.ndarray((P, G), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=y_mine, src=y_psum)
    y_theirs = nl.ndarray((P, G), dtype=nl.float32, buffer=nl.sbuf)
    nisa.sendrecv(src=y_mine, dst=y_theirs, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=1)
    p0, p1 = pid * P // 2, (pid + 1) * P // 2  # this core's partitions of yᵀ: y[p0·G : p1·G], contiguous
    yT = nl.ndarray((P, G), dtype=x.dtype, buffer=nl.sbuf)
    nisa.tensor_tensor(dst=yT[p0:p1, :], data1=y_mine[p0:p1, :], data2=y_theirs[p0:p1, :], op=nl.add)
    nisa.dma_copy(dst=y[0:1, p0 * G : p1 * G].reshape((p1 - p0, G)), src=yT[p0:p1, :])
    return y


def _slots(L, P):
    """The blocked position order of S = L + 1 positions: nt = ceil(S / P) consecutive rows per partition,
    position i·nt + t on partition i, slot t. Returns (nt, slots) with slots[t] = (column offset of slot t in
    the compact Kᵀ / score order, its positions, its cached positions (< L))."""
    S = L + 1
    nt = -(-S // P)
    slots, off = [], 0
    for s in range(nt):
        n = len(range(s, S, nt))
        slots.append((off, n, len(range(s, L, nt))))
        off += n
    return nt, slots


def _blocked_rows(cache, j, L, nt, t=None):
    """Cache rows 0..L-1 of KV head j as SBUF [P, nt, d] with [i, t] = row i·nt + t: nt·d contiguous
    elements per partition (one descriptor of nt rows when n_kv = 1, not nt of one row); the new row L
    belongs at [L // nt, L % nt] and is placed by the caller. ``t``: the destination (default a new tile)."""
    cap, n_kv, d = cache.shape
    P, row = nl.tile_size.pmax, n_kv * d
    if t is None:
        t = nl.ndarray((P, nt, d), dtype=cache.dtype, buffer=nl.sbuf)
    full, rest = L // nt, L % nt  # partitions with nt cached rows; cached rows on partition `full`
    if full:
        src = cache.ap(pattern=[[nt * row, full], [row, nt], [1, d]], offset=j * d)
        nisa.dma_copy(dst=t[0:full, :, :], src=src)
    if rest:
        src = cache.ap(pattern=[[nt * row, 1], [row, rest], [1, d]], offset=full * nt * row + j * d)
        nisa.dma_copy(dst=t[full : full + 1, 0:rest, :], src=src)
    return t


def _blocked_kT(k_blk, slots, engine=nisa.vector_engine):
    """Kᵀ [d, S] in slot order from the blocked cached rows (one PE transpose per slot, evicted by
    ``engine``); the new key's column (the last of slot L % nt) is left for the caller."""
    d = k_blk.shape[2]
    S = slots[-1][0] + slots[-1][1]
    kT = nl.ndarray((d, S), dtype=k_blk.dtype, buffer=nl.sbuf)
    for s, (off, _, m) in enumerate(slots):
        if m > 0:
            kT_psum = nl.ndarray((d, m), dtype=k_blk.dtype, buffer=nl.psum)
            nisa.nc_transpose(dst=kT_psum, data=k_blk[0:m, s, :])
            nisa.tensor_copy(dst=kT[:, off : off + m], src=kT_psum, engine=engine)
    return kT


def _qkv_blocked(x, w_qkv, r0, rows, last=0):
    """Issue the loads of x and of rows r0 .. r0 + rows - 1 of w_qkv with nb = rows / P consecutive rows per
    partition (row r0 + i·nb + t on partition i), in chunks of ~CHUNK_BYTES per partition (``last`` > 0: the
    final ``last`` rows per partition as a chunk of their own, so the GEMV left after the last byte is
    short). Returns (x_blk [P, nb], [(t0, chunk [P, tsz, N])])."""
    P = nl.tile_size.pmax
    N = w_qkv.shape[1]
    nb = rows // P
    x_blk = nl.ndarray((P, nb), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=x_blk, src=x.ap(pattern=[[nb, P], [1, nb]], offset=r0))
    tc = max(1, CHUNK_BYTES // (N * 2))
    last = min(last, nb - 1)
    bounds = [(t0, min(tc, nb - last - t0)) for t0 in range(0, nb - last, tc)] + (
        [(nb - last, last)] if last else []
    )
    chunks = []
    for t0, tsz in bounds:
        w_t = nl.ndarray((P, tsz, N), dtype=w_qkv.dtype, buffer=nl.sbuf)
        src = w_qkv.ap(pattern=[[nb * N, P], [N, tsz], [1, N]], offset=(r0 + t0) * N)
        nisa.dma_copy(dst=w_t, src=src)
        chunks.append((t0, w_t))
    return x_blk, chunks


def _gemv_blocked(x_blk, chunks, heads):
    """[d, heads] fp32 PSUM of x · w over the blocked rows (weight stationary, one matmul per row tile and
    head, accumulated in PSUM as the chunks land)."""
    N = chunks[0][1].shape[2]
    d = N // heads
    acc = nl.ndarray((d, heads), dtype=nl.float32, buffer=nl.psum)
    for t0, w_t in chunks:
        for tt in range(w_t.shape[1]):
            for h in range(heads):
                nisa.nc_matmul(
                    dst=acc[:, h : h + 1],
                    stationary=w_t[:, tt, h * d : (h + 1) * d],
                    moving=x_blk[:, t0 + tt : t0 + tt + 1],
                    accumulate=t0 + tt > 0,
                )
    return acc


def _o_groups(G):
    """gb: output columns per run of the o projection's yᵀ layout, yᵀ[p, a·gb + b] = y[a·P·gb + p·gb + b]:
    each stationary reads every gb-th column of w_o, a 16-byte stride for gb = 8 (no strided penalty), and
    there are at least two blocks a (each core stores whole blocks: a contiguous half of y)."""
    gb = max(1, min(8, G // 2))
    assert G % (2 * gb) == 0, f"{G} output columns per partition: not a multiple of {2 * gb}"
    return gb


def _o_proj(wo_chunks, hg, outT, n_heads, c0, cols, gb, y_psum):
    """y_psum[p, a·gb + b] += Σ_h outT[:, h] · w_o[head h rows, c0 + a·P·gb + p·gb + b] over n_heads local
    heads (chunk h // hg of ``wo_chunks`` holds head h; chunk columns relative to c0)."""
    P = nl.tile_size.pmax
    for h in range(n_heads):
        wo_t = wo_chunks[h // hg]
        for c in range(cols // P):
            a, b = divmod(c, gb)
            nisa.nc_matmul(
                dst=y_psum[:, c : c + 1],
                stationary=wo_t[:, h % hg, a * P * gb + b : (a + 1) * P * gb : gb],
                moving=outT[:, h : h + 1],
                accumulate=h > 0,
            )


def _store_y(y, yT, y0, gb):
    """Store yᵀ [P, na·gb] (the _o_groups layout, na blocks) into y[y0 : y0 + P·na·gb] (one range)."""
    P = nl.tile_size.pmax
    na = yT.shape[1] // gb
    dst = y.ap(pattern=[[gb, P], [P * gb, na], [1, gb]], offset=y0)
    nisa.dma_copy(dst=dst, src=yT)


# ---- block v4: the DMA plan: >= 7.5 KiB weight descriptors, blocked cache rows, the exchange not queued --
@nki.jit
def attention_block_v4(x, w_qkv, w_o, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, L, eps):
    """As attention_block_v3 with every load planned for the DMA engines. v3's schedule: w_qkv streamed
    at 2.5 KiB per descriptor (one row per partition), the cache rows at 256 B (eff 0.33), the GEMV waited
    behind the PE's Kᵀ transposes for the cache rows, and the o projection read its stationaries at a
    32-byte stride (2× slower). v4:

    * w_qkv: partition i holds rows r0 + i·nb + t, t < nb = H / 256 (x loaded to match): 7.5 KiB
      descriptors (3 rows) in three chunks;
    * cache rows: nt = ceil(S / 128) consecutive rows per partition (1.25 KiB at L = 639); positions in slot
      order (slot t = rows i·nt + t) for K and V alike, so the softmax and p·V see the same permutation;
    * DMA order: w_qkv, cache rows, the first w_o head; then the q|k|v exchange and the new v row; then the
      rest of w_o — the exchange gets the engines when it is ready instead of after 1.5 MB of weights;
    * the PE runs the GEMV before the Kᵀ transposes; yᵀ[p, a·8 + b] = y[a·1024 + p·8 + b] so the o
      projection's stationaries read every 8th column (16 B stride, no penalty).
    """
    H, n_q, n_kv, d = _check_block(x, w_qkv, w_o, k_cache, L)
    P, g, G = nl.tile_size.pmax, n_q // n_kv, H // 128
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    assert n_prog == 2 and H % 256 == 0 and n_q % 2 == 0, (
        f"LNC=2, H % 256 == 0, even n_q: {n_prog}, {H}, {n_q}"
    )
    y = nl.ndarray((1, H), dtype=x.dtype, buffer=nl.shared_hbm)
    heads = n_q + 2 * n_kv
    h0, h1 = pid * n_q // 2, (pid + 1) * n_q // 2  # this core's query heads
    kv = [j for j in range(n_kv) if j * g < h1 and (j + 1) * g > h0]  # the KV heads they attend
    x_blk, w_chunks = _qkv_blocked(x, w_qkv, pid * H // 2, H // 2)
    qw_t, kw_t = _broadcast(q_norm_w, h1 - h0), _broadcast(k_norm_w, n_kv)
    cos_t, sin_t = _broadcast(cos, max(h1 - h0, n_kv)), _broadcast(sin, max(h1 - h0, n_kv))
    nt, slots = _slots(L, P)
    k_blk = {j: _blocked_rows(k_cache, j, L, nt) for j in kv}
    v_blk = {j: _blocked_rows(v_cache, j, L, nt) for j in kv}
    mine = nl.ndarray((d, heads), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=mine, src=_gemv_blocked(x_blk, w_chunks, heads))
    kTs = {j: _blocked_kT(k_blk[j], slots) for j in kv}  # PE: after the GEMV
    theirs = nl.ndarray((d, heads), dtype=nl.float32, buffer=nl.sbuf)
    nisa.sendrecv(src=mine, dst=theirs, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=0)
    hg = max(1, CHUNK_BYTES // (H * 2))  # heads per w_o chunk
    wo_chunks = [  # issued after the exchange: its transfer slot is booked first, w_o fills around it
        _load_slabs(w_o, (h0 + a) * d, min(hg, h1 - h0 - a) * d, 0, H, d) for a in range(0, h1 - h0, hg)
    ]
    qkvT = nl.ndarray((d, heads), dtype=x.dtype, buffer=nl.sbuf)
    nisa.tensor_tensor(dst=qkvT, data1=mine, data2=theirs, op=nl.add)  # bf16(x @ w), commutative: same bits
    v_t = _transpose(qkvT[:, n_q + n_kv : heads])
    pL, sL = divmod(L, nt)  # the new position's partition and slot
    for j in kv:
        nisa.dma_copy(dst=v_blk[j][pL : pL + 1, sL, :], src=v_t[j : j + 1, :])
    kn = _norm_rope(_transpose(qkvT[:, n_q : n_q + n_kv]), kw_t, cos_t, sin_t, eps)
    if pid == 0:
        nisa.dma_copy(dst=k_cache[L : L + 1, :, :].reshape((n_kv, d)), src=kn)
    else:
        nisa.dma_copy(dst=v_cache[L : L + 1, :, :].reshape((n_kv, d)), src=v_t)
    qT = _transpose(_norm_rope(_transpose(qkvT[:, h0:h1]), qw_t, cos_t, sin_t, eps))  # [d, n_q/2]
    knT = _transpose(kn)  # [d, n_kv]
    outT = nl.ndarray((d, h1 - h0), dtype=x.dtype, buffer=nl.sbuf)
    tiles = [(off, n) for off, n, _ in slots]
    for j in kv:
        a, b = max(h0, j * g), min(h1, (j + 1) * g)  # this core's query heads of KV head j
        col = slots[sL][0] + pL  # the new key's column in slot order
        nisa.tensor_copy(dst=kTs[j][:, col : col + 1], src=knT[:, j : j + 1])
        v_rows = [v_blk[j][0:n, s, :] for s, (_, n, _) in enumerate(slots)]
        o = _attend(qT[:, a - h0 : b - h0], kTs[j], v_rows, tiles)
        o_psum = nl.ndarray((d, b - a), dtype=x.dtype, buffer=nl.psum)
        nisa.nc_transpose(dst=o_psum, data=o)
        nisa.tensor_copy(dst=outT[:, a - h0 : b - h0], src=o_psum)
    gb = _o_groups(G)
    y_psum = nl.ndarray((P, G), dtype=nl.float32, buffer=nl.psum)
    _o_proj(wo_chunks, hg, outT, h1 - h0, 0, H, gb, y_psum)
    y_mine = nl.ndarray((P, G), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=y_mine, src=y_psum)
    y_theirs = nl.ndarray((P, G), dtype=nl.float32, buffer=nl.sbuf)
    nisa.sendrecv(src=y_mine, dst=y_theirs, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=1)
    c0, c1 = pid * G // 2, (pid + 1) * G // 2  # this core's columns of yᵀ: y[pid·H/2 : (pid+1)·H/2]
    yT = nl.ndarray((P, G), dtype=x.dtype, buffer=nl.sbuf)
    nisa.tensor_tensor(dst=yT[:, c0:c1], data1=y_mine[:, c0:c1], data2=y_theirs[:, c0:c1], op=nl.add)
    _store_y(y, yT[:, c0:c1], pid * H // 2, gb)
    return y


def _attend_new_v(qT, kT, v_rows, tiles, col, v_new):
    """_attend with the new position's value row outside the V tiles: position ``col`` of kT is the new
    key, tiles exclude it from their V rows (the caller's slots), and its p·V term is one K = 1 matmul with
    v_new [1, d] (partition 0), added last. Returns o [g, d] bf16."""
    d, g = qT.shape
    S = kT.shape[1]
    scores = nl.ndarray((g, S), dtype=qT.dtype, buffer=nl.sbuf)
    for c0 in range(0, S, SCORE_TILE):
        csz = min(SCORE_TILE, S - c0)
        s_psum = nl.ndarray((g, csz), dtype=nl.float32, buffer=nl.psum)
        nisa.nc_matmul(dst=s_psum, stationary=qT, moving=kT[:, c0 : c0 + csz])
        nisa.tensor_copy(dst=scores[:, c0 : c0 + csz], src=s_psum)
    nisa.tensor_scalar(dst=scores, data=scores, op0=nl.multiply, operand0=d**-0.5)
    neg_max = nl.ndarray((g, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_reduce(dst=neg_max, op=nl.maximum, data=scores, axis=1, negate=True)
    e = nl.ndarray((g, S), dtype=nl.float32, buffer=nl.sbuf)
    total = nl.ndarray((g, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.activation(
        dst=e,
        op=nl.exp,
        data=scores,
        bias=neg_max,
        reduce_op=nl.add,
        reduce_res=total,
        reduce_cmd=nisa.reduce_cmd.reset_reduce,
    )
    p = nl.ndarray((g, S), dtype=qT.dtype, buffer=nl.sbuf)
    nisa.tensor_scalar(dst=p, data=e, op0=nl.divide, operand0=total)
    o_psum = nl.ndarray((g, d), dtype=nl.float32, buffer=nl.psum)
    first = True
    for (s0, sz), v_t in zip(tiles, v_rows):
        if sz > 0:
            nisa.nc_matmul(
                dst=o_psum, stationary=_transpose(p[:, s0 : s0 + sz]), moving=v_t, accumulate=not first
            )
            first = False
    nisa.nc_matmul(dst=o_psum, stationary=_transpose(p[:, col : col + 1]), moving=v_new, accumulate=not first)
    o = nl.ndarray((g, d), dtype=qT.dtype, buffer=nl.sbuf)
    nisa.tensor_copy(dst=o, src=o_psum)
    return o


def _heads_per_chunk(nh, target):
    """The largest divisor of nh that is <= target (>= 1): w_o chunks never straddle the own/peer heads."""
    return max(k for k in range(1, nh + 1) if nh % k == 0 and k <= max(1, target))


# ---- block v5: attention outputs swapped instead of y partials; the o projection split by columns ----------
@nki.jit
def attention_block_v5(x, w_qkv, w_o, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, L, eps):
    """As attention_block_v4 with the second exchange moved off the tail. v4 split w_o by heads, so its y
    was two partial sums: after the last w_o byte came the o GEMV, a sendrecv (~2 µs of fixed cost), the add
    and the store. v5 splits w_o by output columns (each core reads w_o[:, its half of y], 2 KiB
    descriptors, its own heads' rows first): after the attention of its n_q/2 heads a core multiplies them
    with its rows while the two cores swap their [d, n_q/2] attention outputs, then adds the peer's heads'
    products and stores its half of y straight from PSUM. The new v row is no longer DMA-copied into the V
    tile (behind w_o on the engines): its p·V term is one K = 1 matmul, added last."""
    H, n_q, n_kv, d = _check_block(x, w_qkv, w_o, k_cache, L)
    P, g, G = nl.tile_size.pmax, n_q // n_kv, H // 128
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    assert n_prog == 2 and H % 256 == 0 and n_q % 2 == 0, (
        f"LNC=2, H % 256 == 0, even n_q: {n_prog}, {H}, {n_q}"
    )
    y = nl.ndarray((1, H), dtype=x.dtype, buffer=nl.shared_hbm)
    heads, Hc, nh = n_q + 2 * n_kv, H // 2, n_q // 2  # Hc: this core's columns y[pid·Hc : (pid+1)·Hc]
    h0, h1 = pid * nh, (pid + 1) * nh  # this core's query heads
    kv = [j for j in range(n_kv) if j * g < h1 and (j + 1) * g > h0]  # the KV heads they attend
    x_blk, w_chunks = _qkv_blocked(x, w_qkv, pid * Hc, Hc)
    qw_t, kw_t = _broadcast(q_norm_w, nh), _broadcast(k_norm_w, n_kv)
    cos_t, sin_t = _broadcast(cos, max(nh, n_kv)), _broadcast(sin, max(nh, n_kv))
    nt, slots = _slots(L, P)
    k_blk = {j: _blocked_rows(k_cache, j, L, nt) for j in kv}
    v_blk = {j: _blocked_rows(v_cache, j, L, nt) for j in kv}
    mine = nl.ndarray((d, heads), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=mine, src=_gemv_blocked(x_blk, w_chunks, heads))
    kTs = {j: _blocked_kT(k_blk[j], slots) for j in kv}
    theirs = nl.ndarray((d, heads), dtype=nl.float32, buffer=nl.sbuf)
    nisa.sendrecv(src=mine, dst=theirs, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=0)
    hg = _heads_per_chunk(nh, CHUNK_BYTES // 2 // (Hc * 2))  # w_o chunks of ~4 KiB per partition
    order = list(range(h0, h1)) + [h for h in range(n_q) if not h0 <= h < h1]  # own heads' rows first
    wo_chunks = [  # chunk c holds heads order[c·hg …]; issued after the exchange (its slot is booked first)
        _load_slabs(w_o, order[a] * d, min(hg, n_q - a) * d, pid * Hc, Hc, d) for a in range(0, n_q, hg)
    ]
    qkvT = nl.ndarray((d, heads), dtype=x.dtype, buffer=nl.sbuf)
    nisa.tensor_tensor(dst=qkvT, data1=mine, data2=theirs, op=nl.add)  # bf16(x @ w), commutative: same bits
    v_new = {j: _transpose(qkvT[:, n_q + n_kv + j : n_q + n_kv + j + 1]) for j in range(n_kv)}  # [1, d]
    kn = _norm_rope(_transpose(qkvT[:, n_q : n_q + n_kv]), kw_t, cos_t, sin_t, eps)
    if pid == 0:
        nisa.dma_copy(dst=k_cache[L : L + 1, :, :].reshape((n_kv, d)), src=kn)
    else:
        for j in range(n_kv):
            nisa.dma_copy(dst=v_cache[L : L + 1, j, :], src=v_new[j])
    qT = _transpose(_norm_rope(_transpose(qkvT[:, h0:h1]), qw_t, cos_t, sin_t, eps))  # [d, n_q/2]
    knT = _transpose(kn)  # [d, n_kv]
    pL, sL = divmod(L, nt)
    col = slots[sL][0] + pL  # the new key's column in slot order (the last of slot sL)
    tiles = [(off, m if s == sL else n) for s, (off, n, m) in enumerate(slots)]  # V rows without row L
    outT = nl.ndarray((d, n_q), dtype=x.dtype, buffer=nl.sbuf)  # column h: head order[h]
    for j in kv:
        a, b = max(h0, j * g), min(h1, (j + 1) * g)  # this core's query heads of KV head j
        nisa.tensor_copy(dst=kTs[j][:, col : col + 1], src=knT[:, j : j + 1])
        v_rows = [v_blk[j][0:sz, s, :] if sz else None for s, (_, sz) in enumerate(tiles)]
        o = _attend_new_v(qT[:, a - h0 : b - h0], kTs[j], v_rows, tiles, col, v_new[j])
        o_psum = nl.ndarray((d, b - a), dtype=x.dtype, buffer=nl.psum)
        nisa.nc_transpose(dst=o_psum, data=o)
        nisa.tensor_copy(dst=outT[:, a - h0 : b - h0], src=o_psum)
    nisa.sendrecv(
        src=outT[:, 0:nh], dst=outT[:, nh:n_q], send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=1
    )
    gb = _o_groups(G)  # runs of min(8, G/2) columns: this core's half of y
    y_psum = nl.ndarray((P, G // 2), dtype=nl.float32, buffer=nl.psum)
    _o_proj(wo_chunks, hg, outT, n_q, 0, Hc, gb, y_psum)  # own heads first: they run during the swap
    yT = nl.ndarray((P, G // 2), dtype=x.dtype, buffer=nl.sbuf)
    nisa.tensor_copy(dst=yT, src=y_psum)
    _store_y(y, yT, pid * Hc, gb)
    return y


def _lane_bcast(col, zeros_gp):
    """[gq, 1] fp32 values -> PSUM [P, gq] fp32 with every partition holding them (a [gq, P] tile of
    copies, PE-transposed: a transpose, not a MAC)."""
    gq, P = zeros_gp.shape
    rows = nl.ndarray((gq, P), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_scalar(dst=rows, data=zeros_gp, op0=nl.add, operand0=col)
    b = nl.ndarray((P, gq), dtype=nl.float32, buffer=nl.psum)
    nisa.nc_transpose(dst=b, data=rows)
    return b


def _attend_lanes(qT, kT, v_blk, slots, zeros_gp, mask=None, fast=False, before_pv=None, zeros_bf=None):
    """o [d, gq] fp32 PSUM = softmax(bf16(bf16(q·kᵀ)·d^-0.5)) · V with the positions on the partitions.

    qT [d, gq] bf16; kT [d, S] bf16 in slot order (slots[t] = (column offset, positions n_t, _));
    v_blk [P, nt, d]: slot t's n_t value rows on partitions 0..n_t-1. The scores come out of the PE
    transposed, sᵀ [P, gq, nt] (position i·nt + t of head h at [i, h, t]), so the evictions, scale, exps and
    divisions touch nt (5 at L = 639) elements per partition instead of S (640) on gq partitions; the row
    max and sum cross the partitions by PE transposes and a free-dim reduce. ``mask`` [P, gq, nt] (0 or
    -inf) removes the padding partitions of short slots. Rounding points as the reference: bf16 scores,
    bf16 scaled scores, fp32 exp and sum, p = bf16(e / Σe) before p·V; the sum's order differs (lanes first).
    ``fast``: fewer dependent instructions, the same values — the broadcast max in bf16 (exact: a bf16
    score), the exp bias and the divisor read from PSUM (no eviction), one division for all heads (the
    sum broadcast along the slots by a step-0 access pattern). ``before_pv``: called after the exps
    (work for DVE while ACT runs them)."""
    d, gq = qT.shape
    P, nt = v_blk.shape[0], len(slots)
    sc = nl.ndarray((P, gq, nt), dtype=nl.float32, buffer=nl.psum)
    if mask is not None:
        nisa.memset(dst=sc, value=0.0)  # the padding partitions of short slots: finite before the mask
    for s, (off, n, _) in enumerate(slots):
        nisa.nc_matmul(dst=sc[0:n, :, s], stationary=kT[:, off : off + n], moving=qT)
    st = nl.ndarray((P, gq, nt), dtype=qT.dtype, buffer=nl.sbuf)
    nisa.activation(dst=st, op=nl.copy, data=sc)  # bf16(q·kᵀ)
    if mask is None:
        nisa.tensor_scalar(dst=st, data=st, op0=nl.multiply, operand0=d**-0.5)
    else:
        nisa.scalar_tensor_tensor(
            dst=st, data=st, op0=nl.multiply, operand0=d**-0.5, op1=nl.add, operand1=mask
        )  # bf16(s·d^-0.5 + 0) or -inf
    mx = nl.ndarray((P, gq), dtype=qT.dtype, buffer=nl.sbuf)  # a max of bf16 values: exact in bf16
    nisa.tensor_reduce(dst=mx, op=nl.maximum, data=st, axis=2)
    mxT = nl.ndarray((gq, P), dtype=qT.dtype, buffer=nl.psum)
    nisa.nc_transpose(dst=mxT, data=mx)
    neg = nl.ndarray((gq, 1), dtype=qT.dtype if fast else nl.float32, buffer=nl.sbuf)
    nisa.tensor_reduce(dst=neg, op=nl.maximum, data=mxT, axis=1, negate=True)
    if fast:
        rows = nl.ndarray((gq, P), dtype=qT.dtype, buffer=nl.sbuf)
        nisa.tensor_scalar(dst=rows, data=zeros_bf, op0=nl.add, operand0=neg)
        neg_b = nl.ndarray((P, gq), dtype=qT.dtype, buffer=nl.psum)
        nisa.nc_transpose(dst=neg_b, data=rows)
    else:
        neg_b = nl.ndarray((P, gq), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_copy(dst=neg_b, src=_lane_bcast(neg, zeros_gp), engine=nisa.scalar_engine)
    e = nl.ndarray((P, gq, nt), dtype=nl.float32, buffer=nl.sbuf)
    part = nl.ndarray((P, gq), dtype=nl.float32, buffer=nl.sbuf)
    for h in range(gq):
        nisa.activation(
            dst=e[:, h, :],
            op=nl.exp,
            data=st[:, h, :],
            bias=neg_b[:, h : h + 1],
            reduce_op=nl.add,
            reduce_res=part[:, h : h + 1],
            reduce_cmd=nisa.reduce_cmd.reset_reduce,
        )
    if before_pv is not None:
        before_pv()
    partT = nl.ndarray((gq, P), dtype=nl.float32, buffer=nl.psum)
    nisa.nc_transpose(dst=partT, data=part)
    tot = nl.ndarray((gq, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_reduce(dst=tot, op=nl.add, data=partT, axis=1)
    p = nl.ndarray((P, gq, nt), dtype=qT.dtype, buffer=nl.sbuf)
    if fast:
        tot_b = _lane_bcast(tot, zeros_gp)  # PSUM [P, gq]
        tot_bs = nl.ndarray((P, gq), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_copy(dst=tot_bs, src=tot_b, engine=nisa.scalar_engine)
        nisa.tensor_tensor(
            dst=p, data1=e, data2=tot_bs.ap(pattern=[[gq, P], [1, gq], [0, nt]], offset=0), op=nl.divide
        )
    else:
        tot_b = nl.ndarray((P, gq), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_copy(dst=tot_b, src=_lane_bcast(tot, zeros_gp), engine=nisa.scalar_engine)
        for h in range(gq):
            nisa.tensor_scalar(dst=p[:, h, :], data=e[:, h, :], op0=nl.divide, operand0=tot_b[:, h : h + 1])
    o_psum = nl.ndarray((d, gq), dtype=nl.float32, buffer=nl.psum)
    for s, (_, n, _) in enumerate(slots):
        nisa.nc_matmul(dst=o_psum, stationary=v_blk[0:n, s, :], moving=p[0:n, :, s], accumulate=s > 0)
    return o_psum


def _slot_mask(slots, gq, P):
    """[P, gq, nt] fp32: 0 where partition i holds a position of slot t (i < n_t), -inf elsewhere; None when
    every slot is full."""
    if all(n == P for _, n, _ in slots):
        return None
    mask = nl.ndarray((P, gq, len(slots)), dtype=nl.float32, buffer=nl.sbuf)
    nisa.memset(dst=mask, value=0.0)
    for s, (_, n, _) in enumerate(slots):
        if n < P:  # keep partition i iff n - 1 - i >= 0
            nisa.affine_select(
                dst=mask[:, :, s],
                pattern=[[0, gq]],
                channel_multiplier=-1,
                on_true_tile=mask[:, :, s],
                on_false_value=NEG_INF,
                cmp_op=nl.greater_equal,
                offset=n - 1,
            )
    return mask


# ---- block v6: the post-exchange chain shortened: 128-lane softmax, q and k normed in one pass ---------
@nki.jit
def attention_block_v6(x, w_qkv, w_o, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, L, eps):
    """As attention_block_v5 with the chain between the two exchanges shortened (v5's schedule: after the
    q|k|v exchange, ~3 µs of norms and ~3 µs of softmax on 4 of 128 lanes, each DVE/ACT pass over 640
    scores): the scores come out of the PE transposed, positions on all 128 partitions (``_attend_lanes``:
    5 elements per partition per pass, max and sum across the partitions by PE transposes), p·V needs no
    transposes of p, and q and k are normed and rotated by one instruction chain (rows = this core's q
    heads, then the KV heads). The new v row enters its V tile by a PE transpose of a one-column tile
    (partition L // nt is not an allowed start partition for an engine write)."""
    H, n_q, n_kv, d = _check_block(x, w_qkv, w_o, k_cache, L)
    P, g, G = nl.tile_size.pmax, n_q // n_kv, H // 128
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    assert n_prog == 2 and H % 256 == 0 and n_q % 2 == 0, (
        f"LNC=2, H % 256 == 0, even n_q: {n_prog}, {H}, {n_q}"
    )
    y = nl.ndarray((1, H), dtype=x.dtype, buffer=nl.shared_hbm)
    heads, Hc, nh = n_q + 2 * n_kv, H // 2, n_q // 2
    h0, h1 = pid * nh, (pid + 1) * nh
    nr = nh + n_kv  # rows of the one norm chain: this core's q heads, then the KV heads
    kv = [j for j in range(n_kv) if j * g < h1 and (j + 1) * g > h0]
    x_blk, w_chunks = _qkv_blocked(x, w_qkv, pid * Hc, Hc)
    w_nr = nl.ndarray((nr, d), dtype=q_norm_w.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=w_nr[0:nh, :], src=q_norm_w.ap(pattern=[[0, nh], [1, d]], offset=0))
    nisa.dma_copy(dst=w_nr[nh:nr, :], src=k_norm_w.ap(pattern=[[0, n_kv], [1, d]], offset=0))
    cos_t, sin_t = _broadcast(cos, nr), _broadcast(sin, nr)
    nt, slots = _slots(L, P)
    v_blk = {}
    for j in kv:  # zeroed first: the new row's partition is added into, the padding rows stay finite
        v_blk[j] = nl.ndarray((P, nt, d), dtype=v_cache.dtype, buffer=nl.sbuf)
        nisa.memset(dst=v_blk[j], value=0.0)
    k_blk = {j: _blocked_rows(k_cache, j, L, nt) for j in kv}
    for j in kv:
        _blocked_rows(v_cache, j, L, nt, v_blk[j])
    z = {}  # [d, P] zeros per KV head: the new v goes into column L // nt
    for j in kv:
        z[j] = nl.ndarray((d, P), dtype=x.dtype, buffer=nl.sbuf)
        nisa.memset(dst=z[j], value=0.0)
    mine = nl.ndarray((d, heads), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=mine, src=_gemv_blocked(x_blk, w_chunks, heads))
    kTs = {j: _blocked_kT(k_blk[j], slots) for j in kv}
    theirs = nl.ndarray((d, heads), dtype=nl.float32, buffer=nl.sbuf)
    nisa.sendrecv(src=mine, dst=theirs, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=0)
    hg = _heads_per_chunk(nh, CHUNK_BYTES // 2 // (Hc * 2))
    order = list(range(h0, h1)) + [h for h in range(n_q) if not h0 <= h < h1]  # own heads' rows first
    wo_chunks = [
        _load_slabs(w_o, order[a] * d, min(hg, n_q - a) * d, pid * Hc, Hc, d) for a in range(0, n_q, hg)
    ]
    zeros_gp = nl.ndarray((g, P), dtype=nl.float32, buffer=nl.sbuf)
    nisa.memset(dst=zeros_gp, value=0.0)
    qk = nl.ndarray((d, nr), dtype=x.dtype, buffer=nl.sbuf)  # bf16(x @ w) of the rows to norm
    nisa.tensor_tensor(dst=qk[:, 0:nh], data1=mine[:, h0:h1], data2=theirs[:, h0:h1], op=nl.add)
    kc = slice(n_q, n_q + n_kv)
    nisa.tensor_tensor(dst=qk[:, nh:nr], data1=mine[:, kc], data2=theirs[:, kc], op=nl.add)
    vT = nl.ndarray((d, n_kv), dtype=x.dtype, buffer=nl.sbuf)
    vc = slice(n_q + n_kv, heads)
    nisa.tensor_tensor(dst=vT, data1=mine[:, vc], data2=theirs[:, vc], op=nl.add)
    normed = _norm_rope(_transpose(qk), w_nr, cos_t, sin_t, eps)  # [nr, d]
    pL, sL = divmod(L, nt)
    for j in kv:  # v_blk[pL, sL] = v: a [d, P] tile holding v in column pL, PE-transposed, added
        nisa.tensor_copy(dst=z[j][:, pL : pL + 1], src=vT[:, j : j + 1], engine=nisa.scalar_engine)
        zT = nl.ndarray((P, d), dtype=x.dtype, buffer=nl.psum)
        nisa.nc_transpose(dst=zT, data=z[j])
        nisa.tensor_tensor(dst=v_blk[j][:, sL, :], data1=v_blk[j][:, sL, :], data2=zT, op=nl.add)
    if pid == 0:
        nisa.dma_copy(dst=k_cache[L : L + 1, :, :].reshape((n_kv, d)), src=normed[nh:nr, :])
    else:
        nisa.dma_copy(dst=v_cache[L : L + 1, :, :].reshape((n_kv, d)), src=_transpose(vT))
    qkT = _transpose(normed)  # [d, nr]: q heads h0.., then the normed keys
    col = slots[sL][0] + pL
    mask = _slot_mask(slots, g, P)
    outT = nl.ndarray((d, n_q), dtype=x.dtype, buffer=nl.sbuf)  # column h: head order[h]
    for j in kv:
        a, b = max(h0, j * g), min(h1, (j + 1) * g)
        nisa.tensor_copy(dst=kTs[j][:, col : col + 1], src=qkT[:, nh + j : nh + j + 1])
        m = None if mask is None else mask[:, 0 : b - a, :]
        o_psum = _attend_lanes(qkT[:, a - h0 : b - h0], kTs[j], v_blk[j], slots, zeros_gp[0 : b - a, :], m)
        nisa.tensor_copy(dst=outT[:, a - h0 : b - h0], src=o_psum)
    nisa.sendrecv(
        src=outT[:, 0:nh], dst=outT[:, nh:n_q], send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=1
    )
    gb = _o_groups(G)  # runs of min(8, G/2) columns: this core's half of y
    y_psum = nl.ndarray((P, G // 2), dtype=nl.float32, buffer=nl.psum)
    _o_proj(wo_chunks, hg, outT, n_q, 0, Hc, gb, y_psum)
    yT = nl.ndarray((P, G // 2), dtype=x.dtype, buffer=nl.sbuf)
    nisa.tensor_copy(dst=yT, src=y_psum)
    _store_y(y, yT, pid * Hc, gb)
    return y


# ---- block v7: fewer dependent instructions between the exchanges ------------------------------------------
@nki.jit
def attention_block_v7(x, w_qkv, w_o, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, L, eps):
    """As attention_block_v6 with the dependent chain between the two exchanges cut by ~1 µs (v6's
    schedule: after the q|k|v exchange every step of norm, RoPE and softmax waits ~60 ns on the previous
    one, and the GEMV's last 2-row chunk left 20 matmuls after the last w_qkv byte): the last w_qkv chunk is
    one row per partition; rstd = rsqrt(Σx²/d + eps) is one ACT instruction; the softmax's max is broadcast
    in bf16 and the exp reads its bias straight from PSUM; one division serves all heads (step-0 access
    pattern); the new v row is placed while ACT runs the exps. Same values as v6, fewer instructions."""
    H, n_q, n_kv, d = _check_block(x, w_qkv, w_o, k_cache, L)
    P, g, G = nl.tile_size.pmax, n_q // n_kv, H // 128
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    assert n_prog == 2 and H % 256 == 0 and n_q % 2 == 0, (
        f"LNC=2, H % 256 == 0, even n_q: {n_prog}, {H}, {n_q}"
    )
    y = nl.ndarray((1, H), dtype=x.dtype, buffer=nl.shared_hbm)
    heads, Hc, nh = n_q + 2 * n_kv, H // 2, n_q // 2
    h0, h1 = pid * nh, (pid + 1) * nh
    nr = nh + n_kv  # rows of the one norm chain: this core's q heads, then the KV heads
    kv = [j for j in range(n_kv) if j * g < h1 and (j + 1) * g > h0]
    x_blk, w_chunks = _qkv_blocked(x, w_qkv, pid * Hc, Hc, last=1)
    w_nr = nl.ndarray((nr, d), dtype=q_norm_w.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=w_nr[0:nh, :], src=q_norm_w.ap(pattern=[[0, nh], [1, d]], offset=0))
    nisa.dma_copy(dst=w_nr[nh:nr, :], src=k_norm_w.ap(pattern=[[0, n_kv], [1, d]], offset=0))
    cos_t, sin_t = _broadcast(cos, nr), _broadcast(sin, nr)
    nt, slots = _slots(L, P)
    v_blk = {}
    for j in kv:  # zeroed first: the new row's partition is added into, the padding rows stay finite
        v_blk[j] = nl.ndarray((P, nt, d), dtype=v_cache.dtype, buffer=nl.sbuf)
        nisa.memset(dst=v_blk[j], value=0.0)
    k_blk = {j: _blocked_rows(k_cache, j, L, nt) for j in kv}
    for j in kv:
        _blocked_rows(v_cache, j, L, nt, v_blk[j])
    z = {}  # [d, P] zeros per KV head: the new v goes into column L // nt
    for j in kv:
        z[j] = nl.ndarray((d, P), dtype=x.dtype, buffer=nl.sbuf)
        nisa.memset(dst=z[j], value=0.0)
    mine = nl.ndarray((d, heads), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=mine, src=_gemv_blocked(x_blk, w_chunks, heads))
    kTs = {j: _blocked_kT(k_blk[j], slots) for j in kv}
    theirs = nl.ndarray((d, heads), dtype=nl.float32, buffer=nl.sbuf)
    nisa.sendrecv(src=mine, dst=theirs, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=0)
    hg = _heads_per_chunk(nh, CHUNK_BYTES // 2 // (Hc * 2))
    order = list(range(h0, h1)) + [h for h in range(n_q) if not h0 <= h < h1]  # own heads' rows first
    late = n_q - hg if n_q > hg else n_q  # the last w_o chunk is requested after the second exchange
    wo_chunks = [
        _load_slabs(w_o, order[a] * d, min(hg, n_q - a) * d, pid * Hc, Hc, d) for a in range(0, late, hg)
    ]
    zeros_gp = nl.ndarray((g, P), dtype=nl.float32, buffer=nl.sbuf)
    nisa.memset(dst=zeros_gp, value=0.0)
    zeros_bf = nl.ndarray((g, P), dtype=x.dtype, buffer=nl.sbuf)
    nisa.memset(dst=zeros_bf, value=0.0)
    qk = nl.ndarray((d, nr), dtype=x.dtype, buffer=nl.sbuf)  # bf16(x @ w) of the rows to norm
    nisa.tensor_tensor(dst=qk[:, 0:nh], data1=mine[:, h0:h1], data2=theirs[:, h0:h1], op=nl.add)
    kc = slice(n_q, n_q + n_kv)
    nisa.tensor_tensor(dst=qk[:, nh:nr], data1=mine[:, kc], data2=theirs[:, kc], op=nl.add)
    vT = nl.ndarray((d, n_kv), dtype=x.dtype, buffer=nl.sbuf)
    vc = slice(n_q + n_kv, heads)
    nisa.tensor_tensor(dst=vT, data1=mine[:, vc], data2=theirs[:, vc], op=nl.add)
    normed = _norm_rope(_transpose(qk), w_nr, cos_t, sin_t, eps, fused_rsqrt=True)  # [nr, d]
    pL, sL = divmod(L, nt)

    def place_v(j):  # v_blk[pL, sL] = v: a [d, P] tile holding v in column pL, PE-transposed, added
        nisa.tensor_copy(dst=z[j][:, pL : pL + 1], src=vT[:, j : j + 1])
        zT = nl.ndarray((P, d), dtype=x.dtype, buffer=nl.psum)
        nisa.nc_transpose(dst=zT, data=z[j])
        nisa.tensor_tensor(dst=v_blk[j][:, sL, :], data1=v_blk[j][:, sL, :], data2=zT, op=nl.add)

    if pid == 0:
        nisa.dma_copy(dst=k_cache[L : L + 1, :, :].reshape((n_kv, d)), src=normed[nh:nr, :])
    else:
        nisa.dma_copy(dst=v_cache[L : L + 1, :, :].reshape((n_kv, d)), src=_transpose(vT))
    qkT = _transpose(normed)  # [d, nr]: q heads h0.., then the normed keys
    col = slots[sL][0] + pL
    mask = _slot_mask(slots, g, P)
    outT = nl.ndarray((d, n_q), dtype=x.dtype, buffer=nl.sbuf)  # column h: head order[h]
    for j in kv:
        a, b = max(h0, j * g), min(h1, (j + 1) * g)
        nisa.tensor_copy(dst=kTs[j][:, col : col + 1], src=qkT[:, nh + j : nh + j + 1])
        m = None if mask is None else mask[:, 0 : b - a, :]
        o_psum = _attend_lanes(
            qkT[:, a - h0 : b - h0], kTs[j], v_blk[j], slots, zeros_gp[0 : b - a, :], m,
            fast=True, before_pv=lambda j=j: place_v(j), zeros_bf=zeros_bf[0 : b - a, :],
        )  # fmt: skip
        nisa.tensor_copy(dst=outT[:, a - h0 : b - h0], src=o_psum)
    nisa.sendrecv(
        src=outT[:, 0:nh], dst=outT[:, nh:n_q], send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=1
    )
    wo_chunks += [  # after the exchange in program order: its transfer is booked on the engines first
        _load_slabs(w_o, order[a] * d, min(hg, n_q - a) * d, pid * Hc, Hc, d) for a in range(late, n_q, hg)
    ]
    gb = _o_groups(G)  # runs of min(8, G/2) columns: this core's half of y
    y_psum = nl.ndarray((P, G // 2), dtype=nl.float32, buffer=nl.psum)
    _o_proj(wo_chunks, hg, outT, n_q, 0, Hc, gb, y_psum)
    yT = nl.ndarray((P, G // 2), dtype=x.dtype, buffer=nl.sbuf)
    nisa.tensor_copy(dst=yT, src=y_psum)
    _store_y(y, yT, pid * Hc, gb)
    return y


def _check_layer(h, gamma, w_qkv, w_o, k_cache, L):
    """Restate the layer kernel's limits (weights in ``layouts.attention_layer_layout``'s order); returns
    (H, n_q, n_kv, d)."""
    cap, n_kv, d = k_cache.shape
    H, P = h.shape[1], nl.tile_size.pmax
    assert tuple(h.shape) == (1, H) and H % 256 == 0, f"h {tuple(h.shape)}: one token, H % 256 == 0"
    assert tuple(gamma.shape) == (H,), f"gamma {tuple(gamma.shape)} != ({H},): the input norm's weight"
    n_q = w_o.shape[2]
    assert tuple(w_o.shape) == (2, d, n_q, H // 2) and n_q % 2 == 0, (
        f"w_o {tuple(w_o.shape)} != (2, {d}, n_q, {H // 2}) with n_q even (attention_layer_layout)"
    )
    cols = (n_kv + n_q // 2) * d
    assert tuple(w_qkv.shape) == (2, P, (H // P) * cols), (
        f"w_qkv {tuple(w_qkv.shape)} != {(2, P, (H // P) * cols)} (attention_layer_layout)"
    )
    assert d <= 128 and d % 2 == 0 and n_q <= 128 and n_q % n_kv == 0, f"heads {n_q}/{n_kv} of {d}"
    assert 0 <= L < cap, f"position L={L} outside the cache's {cap} rows"
    return H, n_q, n_kv, d


def _row_chunks(R, last):
    """(first row, rows) chunks of R weight rows per partition: all but ``last``, then ``last`` (the GEMV
    left after the last byte is short; the first chunk holds the first half, R / 2 rows, at least)."""
    last = max(1, min(last, R // 2))
    return [(0, R - last), (R - last, last)]


def _gemv_halves(x_blk, w_t, r0, nb, heads, accs):
    """Accumulate rows r0 … of the blocked weight chunk w_t [P, rows, heads·d] into accs[hf] [d, heads]
    (slot r = hf·nb + t: half hf, t-th row of the partition), one matmul per row and head."""
    d = w_t.shape[2] // heads
    for rr in range(w_t.shape[1]):
        hf, t = divmod(r0 + rr, nb)
        for j in range(heads):
            nisa.nc_matmul(
                dst=accs[hf][:, j : j + 1],
                stationary=w_t[:, rr, j * d : (j + 1) * d],
                moving=x_blk[:, r0 + rr : r0 + rr + 1],
                accumulate=t > 0,
            )


def _bcast_rows(vecs, p):
    """[d] or [1, d] HBM rows -> SBUF [p, d] copies of each: one 256 B descriptor per row instead of p (the
    DMA engines' time), broadcast on chip by two PE transposes and an add to zeros (bit-exact), the rows
    stage by stage so PE, DVE and ACT overlap."""
    d, n = vecs[0].shape[-1], len(vecs)
    row = nl.ndarray((1, n, d), dtype=vecs[0].dtype, buffer=nl.sbuf)
    for k, v in enumerate(vecs):
        nisa.dma_copy(dst=row[0:1, k, :], src=v.ap(pattern=[[0, 1], [1, d]], offset=0))
    zeros = nl.ndarray((d, p), dtype=nl.float32, buffer=nl.sbuf)
    nisa.memset(dst=zeros, value=0.0)
    col = nl.ndarray((d, n), dtype=row.dtype, buffer=nl.psum)
    for k in range(n):
        nisa.nc_transpose(dst=col[:, k : k + 1], data=row[0:1, k, :])
    cols = [nl.ndarray((d, p), dtype=row.dtype, buffer=nl.sbuf) for _ in range(n)]
    for k in range(n):
        nisa.tensor_scalar(dst=cols[k], data=zeros, op0=nl.add, operand0=col[:, k : k + 1])
    out = []
    for k in range(n):
        b_psum = nl.ndarray((p, d), dtype=row.dtype, buffer=nl.psum)
        nisa.nc_transpose(dst=b_psum, data=cols[k])
        b = nl.ndarray((p, d), dtype=row.dtype, buffer=nl.sbuf)
        nisa.tensor_copy(dst=b, src=b_psum, engine=nisa.scalar_engine)
        out.append(b)
    return out


# ---- block v8: the input RMSNorm fused in; q|k|v by columns per core, k and v swapped before q is done -----
@nki.jit
def attention_block_v8(h, gamma, w_qkv, w_o, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, L, eps):
    """The decode attention half of a layer in one launch (``attention_block_v8[2]``): x = RMSNorm(h)·gamma,
    rounded as the model's rmsnorm (bf16(h·rstd), then bf16(·gamma)), then attention_block_v7's work on x,
    with v7's bits. v7's schedule (21.85 µs at L = 639 on trn2, estimate): after the last w_qkv byte the
    q|k|v exchange (~2 µs of fixed DMA cost) opens the chain of norms and softmax, and w_o streams at 2 KiB
    per descriptor to the end. v8, with host-side layouts (``layouts.attention_layer_layout``):

    * every core loads all of h and gamma (one 4 KiB descriptor each, on DMA engines 8 and 12), blocks them
      as the weight rows by PE transposes and sums the squares itself (a ones matmul across the partitions):
      no exchange, done while the first weight bytes stream;
    * q|k|v split by columns: core 0 computes its query heads and the k heads over the whole contraction,
      core 1 its query heads and the v heads (v7's two halves of the sum: the same bits); the k|v block
      streams first, its rows are swapped while the q columns stream, the new key is normed, rotated and
      written before the last q byte: the chain after it starts at the q heads' norm;
    * w_o per core with each partition's heads contiguous (8 / 6 / 2 KiB descriptors), w_qkv in 4-12 KiB;
      the q/k norm weights and cos/sin as one row each, broadcast on chip (four descriptors, not 13); the
      attention outputs swapped as [n_q/2, d] rows on DMA engine 4 (256 B, not 8 B, per descriptor);
    * the padding mask of short slots (``_slot_mask``: a memset and one GpSimd affine_select per slot, ~0.26
      µs each) depends on L only: built at the start, while the weights stream, not after q's norm, where
      its nt selects sat on the critical path (L = 512: 5 slots, 20.89 µs = 1.56x; now 19.76 µs = 1.47x).

    Estimates (trn2, x the HBM floor of the block plus the norm's reads) at L = 20 / 128 / 512 / 639:
    19.38 / 19.46 / 19.76 / 19.68 µs = 1.48 / 1.48 / 1.47 / 1.46x, at most 1.484x over every L = 0 … 639
    (v7 1.62x at L = 639, rmsnorm_v3 + v7 31.1 µs as two launches); trn3 16.77 / 16.84 / 17.03 / 16.94 µs
    (v7 18.29 at L = 639).

    Args: h [1, H] bf16 (the residual stream), gamma [H] (the input norm's weight); w_qkv
    [2, 128, (H/128)·(n_kv + n_q/2)·d] and w_o [2, d, n_q, H/2]: ``attention_layer_layout`` of w_qkv
    [H, (n_q + 2·n_kv)·d] and w_o [n_q·d, H]; the rest as attention_block_v7's. Returns: y [1, H] (before
    the residual add); cache row L written in place."""
    H, n_q, n_kv, d = _check_layer(h, gamma, w_qkv, w_o, k_cache, L)
    P, g, G = nl.tile_size.pmax, n_q // n_kv, H // 128
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    assert n_prog == 2, f"LNC=2 launch (attention_block_v8[2]), got {n_prog} programs"
    y = nl.ndarray((1, H), dtype=h.dtype, buffer=nl.shared_hbm)
    Hc, nh, nb = H // 2, n_q // 2, H // 256
    R, ckv, cq = 2 * nb, n_kv * d, nh * d  # rows per partition; columns of the k|v block and the q block
    F = w_qkv.shape[2]
    h0, h1 = pid * nh, (pid + 1) * nh
    kv = [j for j in range(n_kv) if j * g < h1 and (j + 1) * g > h0]
    # loads in consumption order (the DMA engines take them in program order): the k|v block, h, gamma,
    # the first q chunk, the k|v swap, the norm weights and cos/sin, the last q chunk, the cache rows, w_o
    w_kv = nl.ndarray((P, R, ckv), dtype=w_qkv.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=w_kv, src=w_qkv.ap(pattern=[[F, P], [ckv, R], [1, ckv]], offset=pid * P * F))
    rows_t = nl.ndarray((97, H), dtype=h.dtype, buffer=nl.sbuf)  # h on partition 64, gamma on 96
    nisa.dma_copy(dst=rows_t[64:65, :], src=h)  # one 4 KiB descriptor each, on DMA engines of their own
    nisa.dma_copy(dst=rows_t[96:97, :], src=gamma.ap(pattern=[[0, 1], [1, H]], offset=0))
    q_chunks = []
    for r0, rows in _row_chunks(R, R // 4):
        q_chunks.append((r0, nl.ndarray((P, rows, cq), dtype=w_qkv.dtype, buffer=nl.sbuf)))
    r0, w_t = q_chunks[0]
    src = w_qkv.ap(pattern=[[F, P], [cq, w_t.shape[1]], [1, cq]], offset=pid * P * F + R * ckv + r0 * cq)
    nisa.dma_copy(dst=w_t, src=src)
    nt, slots = _slots(L, P)
    v_blk, z = {}, {}  # z: [d, P] zeros per KV head, the new v goes into column L // nt
    for j in kv:  # zeroed first: the new row's partition is added into, the padding rows stay finite
        v_blk[j] = nl.ndarray((P, nt, d), dtype=v_cache.dtype, buffer=nl.sbuf)
        nisa.memset(dst=v_blk[j], value=0.0)
        z[j] = nl.ndarray((d, P), dtype=h.dtype, buffer=nl.sbuf)
        nisa.memset(dst=z[j], value=0.0)
    zeros_gp = nl.ndarray((g, P), dtype=nl.float32, buffer=nl.sbuf)
    nisa.memset(dst=zeros_gp, value=0.0)
    zeros_bf = nl.ndarray((g, P), dtype=h.dtype, buffer=nl.sbuf)
    nisa.memset(dst=zeros_bf, value=0.0)
    mask = _slot_mask(slots, g, P)  # depends on L only: built on GpSimd while the weights stream
    # h and gamma blocked as the weights' rows by PE transposes ([i, hf·nb + t] = row hf·Hc + i·nb + t),
    # RMSNorm of h: per-partition sums of squares, summed across the partitions by a ones matmul
    x_raw = nl.ndarray((P, R), dtype=h.dtype, buffer=nl.psum)
    g_t = nl.ndarray((P, R), dtype=gamma.dtype, buffer=nl.psum)
    for dst, p in ((x_raw, 64), (g_t, 96)):
        for r in range(R):
            hf, t = divmod(r, nb)
            nisa.nc_transpose(dst=dst[:, r : r + 1], data=rows_t[p : p + 1, hf * Hc + t : (hf + 1) * Hc : nb])
    sq = nl.ndarray((P, R), dtype=nl.float32, buffer=nl.sbuf)  # discarded; only the sum is kept
    ss = nl.ndarray((P, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.activation(
        dst=sq,
        op=nl.square,
        data=x_raw,
        reduce_op=nl.add,
        reduce_res=ss,
        reduce_cmd=nisa.reduce_cmd.reset_reduce,
    )
    ones = nl.ndarray((P, P), dtype=nl.float32, buffer=nl.sbuf)
    nisa.memset(dst=ones, value=1.0)
    tot = nl.ndarray((P, 1), dtype=nl.float32, buffer=nl.psum)  # every partition: Σ h²
    nisa.nc_matmul(dst=tot, stationary=ones, moving=ss)
    rstd = nl.ndarray((P, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.activation(dst=rstd, op=nl.rsqrt, data=tot, scale=1.0 / H, bias=eps)
    xr = nl.ndarray((P, R), dtype=h.dtype, buffer=nl.sbuf)
    nisa.activation(dst=xr, op=nl.copy, data=x_raw, scale=rstd)  # bf16(h · rstd): HF's rounding point
    x_blk = nl.ndarray((P, R), dtype=h.dtype, buffer=nl.sbuf)
    nisa.tensor_tensor(dst=x_blk, data1=xr, data2=g_t, op=nl.multiply)  # bf16(· gamma)
    # k (core 0) or v (core 1) over the whole contraction in v7's halves, swapped as rows while q streams
    acc_kv = [nl.ndarray((d, n_kv), dtype=nl.float32, buffer=nl.psum) for _ in range(2)]
    _gemv_halves(x_blk, w_kv, 0, nb, n_kv, acc_kv)
    kv_half = nl.ndarray((d, n_kv), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=kv_half, src=acc_kv[0])
    kvT_mine = nl.ndarray((d, n_kv), dtype=h.dtype, buffer=nl.sbuf)
    nisa.tensor_tensor(dst=kvT_mine, data1=kv_half, data2=acc_kv[1], op=nl.add)  # bf16(x @ w), v7's sum
    kv_mine = _transpose(kvT_mine)  # [n_kv, d]: d·2 contiguous bytes per descriptor for the swap
    kv_theirs = nl.ndarray((n_kv, d), dtype=h.dtype, buffer=nl.sbuf)
    nisa.sendrecv(src=kv_mine, dst=kv_theirs, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=0)
    k_new, v_new = (kv_mine, kv_theirs) if pid == 0 else (kv_theirs, kv_mine)  # [n_kv, d] each
    qw_t, kw_t, cos_t, sin_t = _bcast_rows((q_norm_w, k_norm_w, cos, sin), max(nh, n_kv))
    for r0, w_t in q_chunks[1:]:  # after the swap in program order: its transfer is booked first
        src = w_qkv.ap(pattern=[[F, P], [cq, w_t.shape[1]], [1, cq]], offset=pid * P * F + R * ckv + r0 * cq)
        nisa.dma_copy(dst=w_t, src=src)
    k_blk = {j: _blocked_rows(k_cache, j, L, nt) for j in kv}
    for j in kv:
        _blocked_rows(v_cache, j, L, nt, v_blk[j])
    acc_q = [nl.ndarray((d, nh), dtype=nl.float32, buffer=nl.psum) for _ in range(2)]
    r0, w_t = q_chunks[0]
    _gemv_halves(x_blk, w_t, r0, nb, nh, acc_q)  # the first chunk holds the first half's nb rows
    # the new key normed and rotated, and the cache row written, while the last q rows stream
    kn = _norm_rope(k_new, kw_t, cos_t, sin_t, eps, fused_rsqrt=True)  # [n_kv, d]
    q_half = nl.ndarray((d, nh), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=q_half, src=acc_q[0])
    # w_o chunks: the own heads, the peer's but one, then (after the o swap) the last one
    chunk_heads = [nh, nh - 1, 1] if nh > 1 else [1, 1]
    starts = [sum(chunk_heads[:i]) for i in range(len(chunk_heads))]
    wo_t = []
    for a, nhd in zip(starts[:-1], chunk_heads[:-1]):
        t = nl.ndarray((d, nhd, Hc), dtype=w_o.dtype, buffer=nl.sbuf)
        nisa.dma_copy(
            dst=t, src=w_o.ap(pattern=[[n_q * Hc, d], [Hc, nhd], [1, Hc]], offset=(pid * d * n_q + a) * Hc)
        )
        wo_t.append(t)
        if a == 0:  # the cache row after the own heads' w_o: the engines reach it once it is ready
            if pid == 0:
                nisa.dma_copy(dst=k_cache[L : L + 1, :, :].reshape((n_kv, d)), src=kn)
            else:
                nisa.dma_copy(dst=v_cache[L : L + 1, :, :].reshape((n_kv, d)), src=v_new)
    for r0, w_t in q_chunks[1:]:
        _gemv_halves(x_blk, w_t, r0, nb, nh, acc_q)
    qT_raw = nl.ndarray((d, nh), dtype=h.dtype, buffer=nl.sbuf)
    nisa.tensor_tensor(dst=qT_raw, data1=q_half, data2=acc_q[1], op=nl.add)
    qn = _norm_rope(_transpose(qT_raw), qw_t, cos_t, sin_t, eps, fused_rsqrt=True)  # [nh, d]
    kTs = {j: _blocked_kT(k_blk[j], slots, nisa.scalar_engine) for j in kv}  # ACT evicts, DVE norms q
    knT, vT = (_transpose(t, nisa.scalar_engine) for t in (kn, v_new))  # [d, n_kv], off DVE's chain
    qT = _transpose(qn)  # [d, nh]
    pL, sL = divmod(L, nt)

    def place_v(j):  # v_blk[pL, sL] = v: a [d, P] tile holding v in column pL, PE-transposed, added
        nisa.tensor_copy(dst=z[j][:, pL : pL + 1], src=vT[:, j : j + 1])
        zT = nl.ndarray((P, d), dtype=h.dtype, buffer=nl.psum)
        nisa.nc_transpose(dst=zT, data=z[j])
        nisa.tensor_tensor(dst=v_blk[j][:, sL, :], data1=v_blk[j][:, sL, :], data2=zT, op=nl.add)

    col = slots[sL][0] + pL
    outT = nl.ndarray((d, n_q), dtype=h.dtype, buffer=nl.sbuf)  # column k: head o_pid(k), own heads first
    for j in kv:
        a, b = max(h0, j * g), min(h1, (j + 1) * g)
        nisa.tensor_copy(dst=kTs[j][:, col : col + 1], src=knT[:, j : j + 1])
        m = None if mask is None else mask[:, 0 : b - a, :]
        o_psum = _attend_lanes(
            qT[:, a - h0 : b - h0], kTs[j], v_blk[j], slots, zeros_gp[0 : b - a, :], m,
            fast=True, before_pv=lambda j=j: place_v(j), zeros_bf=zeros_bf[0 : b - a, :],
        )  # fmt: skip
        nisa.tensor_copy(dst=outT[:, a - h0 : b - h0], src=o_psum)
    # the attention outputs swapped as rows [nh, d] on partitions 32.. (d·2 bytes per descriptor, one DMA
    # engine of their own) instead of [d, nh] columns (8 B descriptors on all 16 engines)
    o_ps = nl.ndarray((32 + nh, d), dtype=h.dtype, buffer=nl.psum)
    nisa.nc_transpose(dst=o_ps[32 : 32 + nh, :], data=outT[:, 0:nh])
    o_rows = nl.ndarray((32 + nh, d), dtype=h.dtype, buffer=nl.sbuf)
    nisa.tensor_copy(dst=o_rows[32 : 32 + nh, :], src=o_ps[32 : 32 + nh, :])
    o_peer = nl.ndarray((32 + nh, d), dtype=h.dtype, buffer=nl.sbuf)
    o_mine, o_theirs = o_rows[32 : 32 + nh, :], o_peer[32 : 32 + nh, :]
    nisa.sendrecv(src=o_mine, dst=o_theirs, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=1)
    a, nhd = starts[-1], chunk_heads[-1]  # the last w_o chunk after the exchange: its transfer goes first
    t = nl.ndarray((d, nhd, Hc), dtype=w_o.dtype, buffer=nl.sbuf)
    nisa.dma_copy(
        dst=t, src=w_o.ap(pattern=[[n_q * Hc, d], [Hc, nhd], [1, Hc]], offset=(pid * d * n_q + a) * Hc)
    )
    wo_t.append(t)
    gb = _o_groups(G)  # runs of min(8, G/2) columns: this core's half of y
    y_psum = nl.ndarray((P, G // 2), dtype=nl.float32, buffer=nl.psum)
    for k in range(n_q):  # v7's order: own heads (during the swap), then the peer's
        if k == nh:  # the peer's rows back to columns, after the own heads' matmuls on the PE
            oT_ps = nl.ndarray((d, nh), dtype=h.dtype, buffer=nl.psum)
            nisa.nc_transpose(dst=oT_ps, data=o_theirs)
            nisa.tensor_copy(dst=outT[:, nh:n_q], src=oT_ps)
        c = max(i for i, s in enumerate(starts) if s <= k)
        for cc in range(Hc // P):
            a, b = divmod(cc, gb)
            nisa.nc_matmul(
                dst=y_psum[:, cc : cc + 1],
                stationary=wo_t[c][:, k - starts[c], a * P * gb + b : (a + 1) * P * gb : gb],
                moving=outT[:, k : k + 1],
                accumulate=k > 0,
            )
    yT = nl.ndarray((P, G // 2), dtype=h.dtype, buffer=nl.sbuf)
    nisa.tensor_copy(dst=yT, src=y_psum)
    _store_y(y, yT, pid * Hc, gb)
    return y


# ======== prefill (context encoding): T tokens from position 0, causal ======================================
def _check_prefill(q, k, v, k_cache, v_cache):
    """Restate the prefill layout limits; returns (T, n_q, n_kv, d)."""
    cap, n_kv, d = k_cache.shape
    T = q.shape[0]
    n_q = q.shape[1] // d
    assert tuple(v_cache.shape) == (cap, n_kv, d), (
        f"v_cache {tuple(v_cache.shape)} != k_cache {(cap, n_kv, d)}"
    )
    assert d <= 128 and d % 2 == 0 and n_q % n_kv == 0, f"heads {n_q}/{n_kv} of {d}"
    assert tuple(q.shape) == (T, n_q * d) and tuple(k.shape) == tuple(v.shape) == (T, n_kv * d), "q/k/v rows"
    assert 1 <= T <= cap, f"T={T} tokens must fit the cache's {cap} rows"
    return T, n_q, n_kv, d


def _heads_broadcast(vec, t0, p, heads, per_row):
    """SBUF [p, heads, d]: row t0 + i of ``vec`` [·, d] (``per_row``; else the one row of a [d] weight) on
    partition i, repeated for every head (partition- and head-step-0 HBM reads)."""
    d = vec.shape[-1]
    t = nl.ndarray((p, heads, d), dtype=vec.dtype, buffer=nl.sbuf)
    step = d if per_row else 0
    nisa.dma_copy(dst=t, src=vec.ap(pattern=[[step, p], [0, heads], [1, d]], offset=t0 * step))
    return t


def _norm_rope_heads(x_t, w_b, cos_b, sin_b, eps):
    """bf16 [p, heads, d] = RoPE(RMSNorm(x_t) · w) of every (token, head) row: _norm_rope with the tokens on
    partitions and all heads in one instruction per step (w_b, cos_b, sin_b: [p, heads, d] broadcasts)."""
    p, heads, d = x_t.shape
    h = d // 2
    sq = nl.ndarray((p, heads, d), dtype=nl.float32, buffer=nl.sbuf)
    nisa.activation(dst=sq, op=nl.square, data=x_t)
    rstd = nl.ndarray((p, heads), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_reduce(dst=rstd, op=nl.add, data=sq, axis=2)
    nisa.tensor_scalar(dst=rstd, data=rstd, op0=nl.multiply, operand0=1.0 / d, op1=nl.add, operand1=eps)
    nisa.activation(dst=rstd, op=nl.rsqrt, data=rstd)
    xn = nl.ndarray((p, heads, d), dtype=x_t.dtype, buffer=nl.sbuf)
    for hd in range(heads):  # bf16(x · rstd): one per-partition scale per head
        nisa.activation(dst=xn[:, hd, :], op=nl.copy, data=x_t[:, hd, :], scale=rstd[:, hd : hd + 1])
    nisa.tensor_tensor(dst=xn, data1=xn, data2=w_b, op=nl.multiply)
    xc = nl.ndarray((p, heads, d), dtype=x_t.dtype, buffer=nl.sbuf)
    nisa.tensor_tensor(dst=xc, data1=xn, data2=cos_b, op=nl.multiply)
    rs = nl.ndarray((p, heads, d), dtype=x_t.dtype, buffer=nl.sbuf)
    nisa.scalar_tensor_tensor(
        dst=rs[:, :, 0:h],
        data=xn[:, :, h:d],
        op0=nl.multiply,
        operand0=-1.0,
        op1=nl.multiply,
        operand1=sin_b[:, :, 0:h],
    )
    nisa.tensor_tensor(dst=rs[:, :, h:d], data1=xn[:, :, 0:h], data2=sin_b[:, :, h:d], op=nl.multiply)
    out = nl.ndarray((p, heads, d), dtype=x_t.dtype, buffer=nl.sbuf)
    nisa.tensor_tensor(dst=out, data1=xc, data2=rs, op=nl.add)
    return out


def _prefill_inputs(
    q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps, q_heads=None, write_k=True, write_v=True
):
    """Norm + RoPE of every token tile, K/V appended to cache rows 0..T-1; returns (qT [d, nh, T],
    kT [d, n_kv, T] bf16 with d on partitions, v tiles [tsz, n_kv, d] per 128-token tile, the tiles).

    q_heads (h0, h1): only query heads h0..h1-1 are loaded and normed (nh = h1 - h0; default all n_q);
    write_k / write_v: whether this program writes k_cache / v_cache rows 0..T-1 (LNC=2: one each)."""
    T = q.shape[0]
    cap, n_kv, d = k_cache.shape
    h0, h1 = q_heads or (0, q.shape[1] // d)
    nh = h1 - h0
    tiles = [(t0, min(S_TILE, T - t0)) for t0 in range(0, T, S_TILE)]
    qT = nl.ndarray((d, nh, T), dtype=q.dtype, buffer=nl.sbuf)
    kT = nl.ndarray((d, n_kv, T), dtype=k.dtype, buffer=nl.sbuf)
    v_tiles = []
    nb = max(nh, n_kv)  # the cos/sin broadcasts serve q (nh heads) and k (n_kv heads)
    for t0, tsz in tiles:
        cos_b, sin_b = _heads_broadcast(cos, t0, tsz, nb, True), _heads_broadcast(sin, t0, tsz, nb, True)
        for x, w, c0, heads, xT in ((q, q_norm_w, h0, nh, qT), (k, k_norm_w, 0, n_kv, kT)):
            x_t = nl.ndarray((tsz, heads, d), dtype=x.dtype, buffer=nl.sbuf)
            nisa.dma_copy(dst=x_t, src=x[t0 : t0 + tsz, c0 * d : (c0 + heads) * d].reshape((tsz, heads, d)))
            w_b = _heads_broadcast(w, 0, tsz, heads, False)
            xn = _norm_rope_heads(x_t, w_b, cos_b[:, 0:heads, :], sin_b[:, 0:heads, :], eps)
            if x is k and write_k:
                nisa.dma_copy(dst=k_cache[t0 : t0 + tsz, :, :], src=xn)
            for hd in range(heads):
                t_psum = nl.ndarray((d, tsz), dtype=x.dtype, buffer=nl.psum)
                nisa.nc_transpose(dst=t_psum, data=xn[:, hd, :])
                nisa.tensor_copy(dst=xT[:, hd, t0 : t0 + tsz], src=t_psum)
        v_t = nl.ndarray((tsz, n_kv, d), dtype=v.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=v_t, src=v[t0 : t0 + tsz, :].reshape((tsz, n_kv, d)))
        if write_v:
            nisa.dma_copy(dst=v_cache[t0 : t0 + tsz, :, :], src=v_t)
        v_tiles.append(v_t)
    return qT, kT, v_tiles, tiles


def _causal_softmax_pv(s, q0, v_tiles, j, evict=nisa.vector_engine):
    """o [tq, d] bf16 = softmax(s) · V of one head's query tile at q0 over keys 0..nk-1 (nk = q0 + tq).

    s: SBUF [tq, nk] bf16 scores (scaled); keys past each query (the diagonal tile's upper triangle) are set
    to -inf first. v_tiles: the prefill's [tsz, n_kv, d] V tiles; j: the KV head; evict: the engine that
    copies pᵀ tiles out of PSUM.
    """
    tq, nk = s.shape
    d = v_tiles[0].shape[2]
    nisa.affine_select(  # key q0 + c is kept iff c <= p (value p - c >= 0)
        dst=s[:, q0:nk],
        pattern=[[-1, nk - q0]],
        channel_multiplier=1,
        on_true_tile=s[:, q0:nk],
        on_false_value=NEG_INF,
        cmp_op=nl.greater_equal,
    )
    neg_max = nl.ndarray((tq, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_reduce(dst=neg_max, op=nl.maximum, data=s, axis=1, negate=True)
    e = nl.ndarray((tq, nk), dtype=nl.float32, buffer=nl.sbuf)
    total = nl.ndarray((tq, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.activation(
        dst=e,
        op=nl.exp,
        data=s,
        bias=neg_max,
        reduce_op=nl.add,
        reduce_res=total,
        reduce_cmd=nisa.reduce_cmd.reset_reduce,
    )
    p = nl.ndarray((tq, nk), dtype=s.dtype, buffer=nl.sbuf)
    nisa.tensor_scalar(dst=p, data=e, op0=nl.divide, operand0=total)
    o_psum = nl.ndarray((tq, d), dtype=nl.float32, buffer=nl.psum)
    for i, k0 in enumerate(range(0, nk, S_TILE)):
        ksz = min(S_TILE, nk - k0)
        nisa.nc_matmul(
            dst=o_psum,
            stationary=_transpose(p[:, k0 : k0 + ksz], evict),
            moving=v_tiles[i][:, j, :],
            accumulate=i > 0,
        )
    o = nl.ndarray((tq, d), dtype=s.dtype, buffer=nl.sbuf)
    nisa.tensor_copy(dst=o, src=o_psum)
    return o


# ---- prefill v0: scores materialised in HBM, then softmax and p·V per query tile ---------------------------
@nki.jit
def attention_prefill_v0(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps):
    """Args: q [T, n_q·d], k, v [T, n_kv·d] bf16 (positions 0..T-1); q_norm_w, k_norm_w [d]; cos, sin [T, d];
    k_cache, v_cache [cap, n_kv, d] (rows 0..T-1 written); eps. Returns: out [T, n_q·d] in q.dtype.

    Pass 1 writes every head's bf16 scores [tq, keys 0..q0+tq-1] of every 128-query tile to an HBM scratch
    (key tiles past the query tile are never computed); pass 2 reads each row block back, masks the
    diagonal tile, and does the softmax and p·V.
    """
    T, n_q, n_kv, d = _check_prefill(q, k, v, k_cache, v_cache)
    g = n_q // n_kv
    out = nl.ndarray((T, n_q * d), dtype=q.dtype, buffer=nl.shared_hbm)
    qT, kT, v_tiles, tiles = _prefill_inputs(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps)
    scores_hbm = nl.ndarray((n_q, T, T), dtype=q.dtype, buffer=nl.hbm)  # scratch
    for h in range(n_q):
        for q0, tq in tiles:
            for c0 in range(0, q0 + tq, SCORE_TILE):
                csz = min(SCORE_TILE, q0 + tq - c0)
                s_psum = nl.ndarray((tq, csz), dtype=nl.float32, buffer=nl.psum)
                nisa.nc_matmul(
                    dst=s_psum, stationary=qT[:, h, q0 : q0 + tq], moving=kT[:, h // g, c0 : c0 + csz]
                )
                s_t = nl.ndarray((tq, csz), dtype=q.dtype, buffer=nl.sbuf)
                nisa.tensor_copy(dst=s_t, src=s_psum)  # bf16(q·kᵀ)
                nisa.tensor_scalar(dst=s_t, data=s_t, op0=nl.multiply, operand0=d**-0.5)  # bf16(· d^-0.5)
                nisa.dma_copy(dst=scores_hbm[h, q0 : q0 + tq, c0 : c0 + csz], src=s_t)
    for h in range(n_q):
        for q0, tq in tiles:
            s = nl.ndarray((tq, q0 + tq), dtype=q.dtype, buffer=nl.sbuf)
            nisa.dma_copy(dst=s, src=scores_hbm[h, q0 : q0 + tq, 0 : q0 + tq])
            o = _causal_softmax_pv(s, q0, v_tiles, h // g)
            nisa.dma_copy(dst=out[q0 : q0 + tq, h * d : (h + 1) * d], src=o)
    return out


# ---- prefill v1: the scores stay in SBUF -----------------------------------------------------------------
@nki.jit
def attention_prefill_v1(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps):
    """As attention_prefill_v0 with each query tile's score row block [tq, q0 + tq] kept in SBUF between the
    score matmuls and the softmax: no HBM scratch, no second pass."""
    T, n_q, n_kv, d = _check_prefill(q, k, v, k_cache, v_cache)
    g = n_q // n_kv
    out = nl.ndarray((T, n_q * d), dtype=q.dtype, buffer=nl.shared_hbm)
    qT, kT, v_tiles, tiles = _prefill_inputs(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps)
    for h in range(n_q):
        for q0, tq in tiles:
            s = nl.ndarray((tq, q0 + tq), dtype=q.dtype, buffer=nl.sbuf)
            for c0 in range(0, q0 + tq, SCORE_TILE):
                csz = min(SCORE_TILE, q0 + tq - c0)
                s_psum = nl.ndarray((tq, csz), dtype=nl.float32, buffer=nl.psum)
                nisa.nc_matmul(
                    dst=s_psum, stationary=qT[:, h, q0 : q0 + tq], moving=kT[:, h // g, c0 : c0 + csz]
                )
                nisa.tensor_copy(dst=s[:, c0 : c0 + csz], src=s_psum)
            nisa.tensor_scalar(dst=s, data=s, op0=nl.multiply, operand0=d**-0.5)
            o = _causal_softmax_pv(s, q0, v_tiles, h // g)
            nisa.dma_copy(dst=out[q0 : q0 + tq, h * d : (h + 1) * d], src=o)
    return out


# ---- prefill v2: flash attention (online softmax over 512-key blocks) -------------------------------------
@nki.jit
def attention_prefill_v2(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps):
    """As attention_prefill_v1 with an online softmax: per 128 queries × 512 keys block the running max m,
    sum l and unnormalised o = Σ bf16(exp(s − m))·v are rescaled by exp(m_old − m_new); only the block that
    meets the diagonal is masked; o / l at the end. Scores never exceed one [128, 512] block."""
    T, n_q, n_kv, d = _check_prefill(q, k, v, k_cache, v_cache)
    g = n_q // n_kv
    out = nl.ndarray((T, n_q * d), dtype=q.dtype, buffer=nl.shared_hbm)
    qT, kT, v_tiles, tiles = _prefill_inputs(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps)
    for h in range(n_q):
        for q0, tq in tiles:
            m = nl.ndarray((tq, 1), dtype=nl.float32, buffer=nl.sbuf)
            nisa.memset(dst=m, value=NEG_BIG)
            l_sum = nl.ndarray((tq, 1), dtype=nl.float32, buffer=nl.sbuf)
            nisa.memset(dst=l_sum, value=0.0)
            o_acc = nl.ndarray((tq, d), dtype=nl.float32, buffer=nl.sbuf)
            nisa.memset(dst=o_acc, value=0.0)
            for c0 in range(0, q0 + tq, SCORE_TILE):
                csz = min(SCORE_TILE, q0 + tq - c0)
                s_psum = nl.ndarray((tq, csz), dtype=nl.float32, buffer=nl.psum)
                nisa.nc_matmul(
                    dst=s_psum, stationary=qT[:, h, q0 : q0 + tq], moving=kT[:, h // g, c0 : c0 + csz]
                )
                s = nl.ndarray((tq, csz), dtype=q.dtype, buffer=nl.sbuf)
                nisa.tensor_copy(dst=s, src=s_psum)
                nisa.tensor_scalar(dst=s, data=s, op0=nl.multiply, operand0=d**-0.5)
                if c0 + csz > q0:  # the block meets the diagonal: key c0 + c kept iff c0 + c <= q0 + p
                    nisa.affine_select(
                        dst=s,
                        pattern=[[-1, csz]],
                        channel_multiplier=1,
                        on_true_tile=s,
                        on_false_value=NEG_INF,
                        cmp_op=nl.greater_equal,
                        offset=q0 - c0,
                    )
                m_new = nl.ndarray((tq, 1), dtype=nl.float32, buffer=nl.sbuf)
                nisa.tensor_reduce(dst=m_new, op=nl.maximum, data=s, axis=1)
                nisa.tensor_tensor(dst=m_new, data1=m_new, data2=m, op=nl.maximum)
                neg = nl.ndarray((tq, 1), dtype=nl.float32, buffer=nl.sbuf)
                nisa.tensor_scalar(dst=neg, data=m_new, op0=nl.multiply, operand0=-1.0)
                e = nl.ndarray((tq, csz), dtype=q.dtype, buffer=nl.sbuf)  # bf16: the PE's operand
                l_blk = nl.ndarray((tq, 1), dtype=nl.float32, buffer=nl.sbuf)
                nisa.activation(
                    dst=e,
                    op=nl.exp,
                    data=s,
                    bias=neg,
                    reduce_op=nl.add,
                    reduce_res=l_blk,
                    reduce_cmd=nisa.reduce_cmd.reset_reduce,
                )
                alpha = nl.ndarray((tq, 1), dtype=nl.float32, buffer=nl.sbuf)  # exp(m_old − m_new)
                nisa.activation(dst=alpha, op=nl.exp, data=m, bias=neg)
                nisa.scalar_tensor_tensor(
                    dst=l_sum, data=l_sum, op0=nl.multiply, operand0=alpha, op1=nl.add, operand1=l_blk
                )
                pv = nl.ndarray((tq, d), dtype=nl.float32, buffer=nl.psum)
                for u, k0 in enumerate(range(0, csz, S_TILE)):
                    ksz = min(S_TILE, csz - k0)
                    nisa.nc_matmul(
                        dst=pv,
                        stationary=_transpose(e[:, k0 : k0 + ksz]),
                        moving=v_tiles[(c0 + k0) // S_TILE][:, h // g, :],
                        accumulate=u > 0,
                    )
                nisa.scalar_tensor_tensor(
                    dst=o_acc, data=o_acc, op0=nl.multiply, operand0=alpha, op1=nl.add, operand1=pv
                )
                nisa.tensor_copy(dst=m, src=m_new)
            o = nl.ndarray((tq, d), dtype=q.dtype, buffer=nl.sbuf)
            nisa.tensor_scalar(dst=o, data=o_acc, op0=nl.divide, operand0=l_sum)
            nisa.dma_copy(dst=out[q0 : q0 + tq, h * d : (h + 1) * d], src=o)
    return out


# ---- prefill v3: heads interleaved stage by stage, PSUM evictions on ACT -----------------------------------
@nki.jit
def attention_prefill_v3(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps):
    """As attention_prefill_v1 with each query tile's heads processed stage by stage (all heads' scores,
    then all scalings, masks, maxima, exps, normalisations, p·V) so that every engine works on one head's
    stage while the next engine takes the previous head's; the score, pᵀ and output PSUM evictions move to ACT
    (the same roundings), leaving DVE the scale, the max and the normalisation."""
    T, n_q, n_kv, d = _check_prefill(q, k, v, k_cache, v_cache)
    g = n_q // n_kv
    out = nl.ndarray((T, n_q * d), dtype=q.dtype, buffer=nl.shared_hbm)
    qT, kT, v_tiles, tiles = _prefill_inputs(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps)
    for q0, tq in tiles:
        nk = q0 + tq
        s = [nl.ndarray((tq, nk), dtype=q.dtype, buffer=nl.sbuf) for _ in range(n_q)]
        for h in range(n_q):  # PE and ACT
            for c0 in range(0, nk, SCORE_TILE):
                csz = min(SCORE_TILE, nk - c0)
                s_psum = nl.ndarray((tq, csz), dtype=nl.float32, buffer=nl.psum)
                nisa.nc_matmul(
                    dst=s_psum, stationary=qT[:, h, q0 : q0 + tq], moving=kT[:, h // g, c0 : c0 + csz]
                )
                nisa.activation(dst=s[h][:, c0 : c0 + csz], op=nl.copy, data=s_psum)  # bf16(q·kᵀ)
        for h in range(n_q):  # DVE, then GpSimd
            nisa.tensor_scalar(dst=s[h], data=s[h], op0=nl.multiply, operand0=d**-0.5)
        for h in range(n_q):
            nisa.affine_select(
                dst=s[h][:, q0:nk],
                pattern=[[-1, tq]],
                channel_multiplier=1,
                on_true_tile=s[h][:, q0:nk],
                on_false_value=NEG_INF,
                cmp_op=nl.greater_equal,
            )
        neg_max = nl.ndarray((tq, n_q), dtype=nl.float32, buffer=nl.sbuf)
        total = nl.ndarray((tq, n_q), dtype=nl.float32, buffer=nl.sbuf)
        for h in range(n_q):  # DVE
            nisa.tensor_reduce(dst=neg_max[:, h : h + 1], op=nl.maximum, data=s[h], axis=1, negate=True)
        e = [nl.ndarray((tq, nk), dtype=nl.float32, buffer=nl.sbuf) for _ in range(n_q)]
        for h in range(n_q):  # ACT
            nisa.activation(
                dst=e[h],
                op=nl.exp,
                data=s[h],
                bias=neg_max[:, h : h + 1],
                reduce_op=nl.add,
                reduce_res=total[:, h : h + 1],
                reduce_cmd=nisa.reduce_cmd.reset_reduce,
            )
        for h in range(n_q):  # DVE: p = bf16(e / Σe) into s[h]
            nisa.tensor_scalar(dst=s[h], data=e[h], op0=nl.divide, operand0=total[:, h : h + 1])
        o = nl.ndarray((tq, n_q, d), dtype=q.dtype, buffer=nl.sbuf)
        for h in range(n_q):  # PE and ACT
            o_psum = nl.ndarray((tq, d), dtype=nl.float32, buffer=nl.psum)
            for i, k0 in enumerate(range(0, nk, S_TILE)):
                ksz = min(S_TILE, nk - k0)
                nisa.nc_matmul(
                    dst=o_psum,
                    stationary=_transpose(s[h][:, k0 : k0 + ksz], nisa.scalar_engine),
                    moving=v_tiles[i][:, h // g, :],
                    accumulate=i > 0,
                )
            nisa.tensor_copy(dst=o[:, h, :], src=o_psum, engine=nisa.scalar_engine)
        nisa.dma_copy(dst=out[q0 : q0 + tq, :].reshape((tq, n_q, d)), src=o)
    return out


# ---- prefill v4: v3 on each core's half of the query heads (LNC=2), one cache written per core -------------
@nki.jit
def attention_prefill_v4(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps):
    """As attention_prefill_v3 on this core's share of the query heads; launch ``[2]``, n_q % 2 == 0.

    Core c takes query heads [c·n_q/2, (c+1)·n_q/2): their norm + RoPE, scores, softmax, p·V and their
    columns of out. Heads, not query blocks: every head costs the same under the causal mask (query blocks
    would give the core holding the last block the longest rows) and no exchange is needed. Both cores norm
    and transpose all n_kv KV heads and load V (the K/V work is 1/g of the q work); core 0 writes k_cache,
    core 1 v_cache, so each row is written once and the two stores run on different cores' queues."""
    T, n_q, n_kv, d = _check_prefill(q, k, v, k_cache, v_cache)
    g = n_q // n_kv
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    assert n_q % n_prog == 0, f"{n_q} query heads do not split evenly over {n_prog} cores"
    h0, nh = lnc_share(n_q)  # this core's query heads h0 .. h0 + nh - 1
    out = nl.ndarray((T, n_q * d), dtype=q.dtype, buffer=nl.shared_hbm)
    qT, kT, v_tiles, tiles = _prefill_inputs(
        q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps,
        q_heads=(h0, h0 + nh), write_k=pid == 0, write_v=pid == n_prog - 1,
    )  # fmt: skip
    for q0, tq in tiles:
        nk = q0 + tq
        s = [nl.ndarray((tq, nk), dtype=q.dtype, buffer=nl.sbuf) for _ in range(nh)]
        for h in range(nh):  # PE and ACT; h is local, KV head (h0 + h) // g
            for c0 in range(0, nk, SCORE_TILE):
                csz = min(SCORE_TILE, nk - c0)
                s_psum = nl.ndarray((tq, csz), dtype=nl.float32, buffer=nl.psum)
                nisa.nc_matmul(
                    dst=s_psum,
                    stationary=qT[:, h, q0 : q0 + tq],
                    moving=kT[:, (h0 + h) // g, c0 : c0 + csz],
                )
                nisa.activation(dst=s[h][:, c0 : c0 + csz], op=nl.copy, data=s_psum)  # bf16(q·kᵀ)
        for h in range(nh):  # DVE, then GpSimd
            nisa.tensor_scalar(dst=s[h], data=s[h], op0=nl.multiply, operand0=d**-0.5)
        for h in range(nh):
            nisa.affine_select(
                dst=s[h][:, q0:nk],
                pattern=[[-1, tq]],
                channel_multiplier=1,
                on_true_tile=s[h][:, q0:nk],
                on_false_value=NEG_INF,
                cmp_op=nl.greater_equal,
            )
        neg_max = nl.ndarray((tq, nh), dtype=nl.float32, buffer=nl.sbuf)
        total = nl.ndarray((tq, nh), dtype=nl.float32, buffer=nl.sbuf)
        for h in range(nh):  # DVE
            nisa.tensor_reduce(dst=neg_max[:, h : h + 1], op=nl.maximum, data=s[h], axis=1, negate=True)
        e = [nl.ndarray((tq, nk), dtype=nl.float32, buffer=nl.sbuf) for _ in range(nh)]
        for h in range(nh):  # ACT
            nisa.activation(
                dst=e[h],
                op=nl.exp,
                data=s[h],
                bias=neg_max[:, h : h + 1],
                reduce_op=nl.add,
                reduce_res=total[:, h : h + 1],
                reduce_cmd=nisa.reduce_cmd.reset_reduce,
            )
        for h in range(nh):  # DVE: p = bf16(e / Σe) into s[h]
            nisa.tensor_scalar(dst=s[h], data=e[h], op0=nl.divide, operand0=total[:, h : h + 1])
        o = nl.ndarray((tq, nh, d), dtype=q.dtype, buffer=nl.sbuf)
        for h in range(nh):  # PE and ACT
            o_psum = nl.ndarray((tq, d), dtype=nl.float32, buffer=nl.psum)
            for i, k0 in enumerate(range(0, nk, S_TILE)):
                ksz = min(S_TILE, nk - k0)
                nisa.nc_matmul(
                    dst=o_psum,
                    stationary=_transpose(s[h][:, k0 : k0 + ksz], nisa.scalar_engine),
                    moving=v_tiles[i][:, (h0 + h) // g, :],
                    accumulate=i > 0,
                )
            nisa.tensor_copy(dst=o[:, h, :], src=o_psum, engine=nisa.scalar_engine)
        nisa.dma_copy(dst=out[q0 : q0 + tq, h0 * d : (h0 + nh) * d].reshape((tq, nh, d)), src=o)
    return out


def _heads_view(t, heads):
    """[p, d] SBUF tile read as [p, heads, d] (step 0 over the heads: one row serves every head)."""
    p, d = t.shape
    return t.ap(pattern=[[d, p], [0, heads], [1, d]], offset=0)


def _norm_rope_heads_b(x_t, w_b, cos_t, sin_n, eps, engine=nisa.vector_engine):
    """_norm_rope_heads with [p, d] operands broadcast over the heads on chip (``_heads_views``) and fewer
    DVE passes: Σx² per head accumulated by ACT (one activation per head, no DVE reduce), rotate_half·sin
    as two plain products with a pre-negated sin (sin_n = [-sin_lo, sin_hi]). The same roundings. ``engine``:
    the engine of the elementwise products (prefill v8: GpSimd)."""
    p, heads, d = x_t.shape
    h = d // 2
    sq = nl.ndarray((p, heads, d), dtype=nl.float32, buffer=nl.sbuf)  # discarded
    ssum = nl.ndarray((p, heads), dtype=nl.float32, buffer=nl.sbuf)
    for hd in range(heads):
        nisa.activation(
            dst=sq[:, hd, :],
            op=nl.square,
            data=x_t[:, hd, :],
            reduce_op=nl.add,
            reduce_res=ssum[:, hd : hd + 1],
            reduce_cmd=nisa.reduce_cmd.reset_reduce,
        )
    rstd = nl.ndarray((p, heads), dtype=nl.float32, buffer=nl.sbuf)
    nisa.activation(dst=rstd, op=nl.rsqrt, data=ssum, scale=1.0 / d, bias=eps)
    xn = nl.ndarray((p, heads, d), dtype=x_t.dtype, buffer=nl.sbuf)
    for hd in range(heads):  # bf16(x · rstd)
        nisa.activation(dst=xn[:, hd, :], op=nl.copy, data=x_t[:, hd, :], scale=rstd[:, hd : hd + 1])
    nisa.tensor_tensor(dst=xn, data1=xn, data2=_heads_view(w_b[0:p, :], heads), op=nl.multiply, engine=engine)
    xc = nl.ndarray((p, heads, d), dtype=x_t.dtype, buffer=nl.sbuf)
    nisa.tensor_tensor(dst=xc, data1=xn, data2=_heads_view(cos_t, heads), op=nl.multiply, engine=engine)
    rs = nl.ndarray((p, heads, d), dtype=x_t.dtype, buffer=nl.sbuf)
    s_lo = sin_n.ap(pattern=[[d, p], [0, heads], [1, h]], offset=0)
    s_hi = sin_n.ap(pattern=[[d, p], [0, heads], [1, h]], offset=h)
    nisa.tensor_tensor(dst=rs[:, :, 0:h], data1=xn[:, :, h:d], data2=s_lo, op=nl.multiply, engine=engine)
    nisa.tensor_tensor(dst=rs[:, :, h:d], data1=xn[:, :, 0:h], data2=s_hi, op=nl.multiply, engine=engine)
    out = nl.ndarray((p, heads, d), dtype=x_t.dtype, buffer=nl.sbuf)
    nisa.tensor_tensor(dst=out, data1=xc, data2=rs, op=nl.add, engine=engine)
    return out


def _neg_sin(s_t, engine=nisa.vector_engine):
    """[-sin_lo, sin_hi] of a [tsz, d] sin tile, on ``engine``: the pre-negated operand of
    ``_norm_rope_heads_b``."""
    tsz, d = s_t.shape
    h = d // 2
    sin_n = nl.ndarray((tsz, d), dtype=s_t.dtype, buffer=nl.sbuf)
    nisa.tensor_scalar(dst=sin_n[:, 0:h], data=s_t[:, 0:h], op0=nl.multiply, operand0=-1.0, engine=engine)
    nisa.tensor_copy(dst=sin_n[:, h:d], src=s_t[:, h:d], engine=engine)
    return sin_n


def _heads_T(xn, xT, t0):
    """Each head of xn [tsz, heads, d] PE-transposed into xT[:, head, t0 : t0 + tsz] (d on the partitions);
    returns xn."""
    tsz, heads, d = xn.shape
    for hd in range(heads):
        t_psum = nl.ndarray((d, tsz), dtype=xn.dtype, buffer=nl.psum)
        nisa.nc_transpose(dst=t_psum, data=xn[:, hd, :])
        nisa.tensor_copy(dst=xT[:, hd, t0 : t0 + tsz], src=t_psum)
    return xn


def _prefill_inputs_b(
    q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps, q_heads, write_k, write_v
):
    """_prefill_inputs with its DMAs planned: every load is issued before any compute (v0-v4 issued each
    token tile's loads after the previous tile's K-cache store, which waits for its norm, so the loads
    queued behind compute); cos/sin rows and the norm weights are loaded once per tile as [tsz, d] and
    broadcast over the heads on chip (v0-v4 DMA-broadcast them to [tsz, heads, d] at 256 B per
    descriptor); the V rows go to the cache HBM→HBM; the K rows are stored after the last norm."""
    T = q.shape[0]
    cap, n_kv, d = k_cache.shape
    P = nl.tile_size.pmax
    h0, h1 = q_heads
    nh = h1 - h0
    tiles = [(t0, min(S_TILE, T - t0)) for t0 in range(0, T, S_TILE)]
    if write_v:
        nisa.dma_copy(dst=v_cache[0:T, :, :], src=v.reshape((T, n_kv, d)))
    qw_b, kw_b = _broadcast(q_norm_w, P), _broadcast(k_norm_w, P)  # first: every tile's norm needs them
    loads = []
    for t0, tsz in tiles:  # in the order the norms consume them
        q_t = nl.ndarray((tsz, nh, d), dtype=q.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=q_t, src=q[t0 : t0 + tsz, h0 * d : h1 * d].reshape((tsz, nh, d)))
        c_t = nl.ndarray((tsz, d), dtype=cos.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=c_t, src=cos[t0 : t0 + tsz, :])
        s_t = nl.ndarray((tsz, d), dtype=sin.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=s_t, src=sin[t0 : t0 + tsz, :])
        k_t = nl.ndarray((tsz, n_kv, d), dtype=k.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=k_t, src=k[t0 : t0 + tsz, :].reshape((tsz, n_kv, d)))
        v_t = nl.ndarray((tsz, n_kv, d), dtype=v.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=v_t, src=v[t0 : t0 + tsz, :].reshape((tsz, n_kv, d)))
        loads.append((q_t, k_t, v_t, (c_t, s_t)))
    qT = nl.ndarray((d, nh, T), dtype=q.dtype, buffer=nl.sbuf)
    kT = nl.ndarray((d, n_kv, T), dtype=k.dtype, buffer=nl.sbuf)
    kns = []
    for (t0, _), (q_t, k_t, _, (c_t, s_t)) in zip(tiles, loads):
        sin_n = _neg_sin(s_t)
        _heads_T(_norm_rope_heads_b(q_t, qw_b, c_t, sin_n, eps), qT, t0)
        kns.append(_heads_T(_norm_rope_heads_b(k_t, kw_b, c_t, sin_n, eps), kT, t0))
    if write_k:
        for (t0, tsz), kn in zip(tiles, kns):
            nisa.dma_copy(dst=k_cache[t0 : t0 + tsz, :, :], src=kn)
    return qT, kT, [ld[2] for ld in loads], tiles


def _transposes_grouped(p, step, engine, group=4):
    """The [ksz, tq] PE transposes of p [tq, nk]'s key tiles of ``step`` columns, ``group`` of them per PSUM
    tile (one bank: group·tq bf16 per partition) evicted by one ``engine`` copy instead of one per tile.
    Returns the SBUF transposes in key order."""
    tq, nk = p.shape
    tiles = [(k0, min(step, nk - k0)) for k0 in range(0, nk, step)]
    out = []
    for g0 in range(0, len(tiles), group):
        grp = tiles[g0 : g0 + group]
        if len({sz for _, sz in grp}) > 1:  # a short last tile: on its own
            grp, rest = grp[:-1], grp[-1:]
        else:
            rest = []
        for part in (grp, rest):
            if not part:
                continue
            sz = part[0][1]
            t_psum = nl.ndarray((sz, len(part), tq), dtype=p.dtype, buffer=nl.psum)
            for j, (k0, _) in enumerate(part):
                nisa.nc_transpose(dst=t_psum[:, j, :], data=p[:, k0 : k0 + sz])
            t = nl.ndarray((sz, len(part), tq), dtype=p.dtype, buffer=nl.sbuf)
            nisa.tensor_copy(dst=t, src=t_psum, engine=engine)
            out += [t[:, j, :] for j in range(len(part))]
    return out


def _prefill_attend_tile(qT, kT, v_tiles, q0, tq, h0, g, fold_scale=False, after_scores=None):
    """o [tq, nh, d] bf16 (SBUF) of query tile [q0, q0 + tq) for the nh local query heads h0 … of qT
    [d, nh, T] over keys 0 … q0 + tq − 1 of kT [d, n_kv, T] and the V tiles [tsz, n_kv, d]: the passes of
    prefill v5, stage by stage over the heads — scores evicted by ACT (bf16(q·kᵀ)), scaled on DVE, the
    diagonal masked on GpSimd, the max in bf16 on DVE, exp and Σ on ACT, p = bf16(e / Σe) on GpSimd, pᵀ four
    tiles per PSUM bank (``_transposes_grouped``), p·V. ``fold_scale`` (v6): s = bf16(q·kᵀ·d^-0.5) at the
    eviction, alternately ACT and DVE — one pass and one rounding fewer (not the reference's).
    ``after_scores``: called after the score matmuls (PE work to run while ACT, DVE and GpSimd do the
    softmax)."""
    d, nh = qT.shape[0], qT.shape[1]
    nk = q0 + tq
    s = [nl.ndarray((tq, nk), dtype=qT.dtype, buffer=nl.sbuf) for _ in range(nh)]
    for h in range(nh):  # PE, then ACT (v6: ACT for even heads, DVE for odd ones)
        for c0 in range(0, nk, SCORE_TILE):
            csz = min(SCORE_TILE, nk - c0)
            s_psum = nl.ndarray((tq, csz), dtype=nl.float32, buffer=nl.psum)
            nisa.nc_matmul(
                dst=s_psum,
                stationary=qT[:, h, q0 : q0 + tq],
                moving=kT[:, (h0 + h) // g, c0 : c0 + csz],
            )
            if not fold_scale:
                nisa.activation(dst=s[h][:, c0 : c0 + csz], op=nl.copy, data=s_psum)  # bf16(q·kᵀ)
            elif h % 2 == 0:
                nisa.activation(dst=s[h][:, c0 : c0 + csz], op=nl.copy, data=s_psum, scale=d**-0.5)
            else:
                nisa.tensor_scalar(dst=s[h][:, c0 : c0 + csz], data=s_psum, op0=nl.multiply, operand0=d**-0.5)
    if after_scores is not None:
        after_scores()
    if not fold_scale:
        for h in range(nh):  # DVE, then GpSimd
            nisa.tensor_scalar(dst=s[h], data=s[h], op0=nl.multiply, operand0=d**-0.5)
    for h in range(nh):
        nisa.affine_select(
            dst=s[h][:, q0:nk],
            pattern=[[-1, tq]],
            channel_multiplier=1,
            on_true_tile=s[h][:, q0:nk],
            on_false_value=NEG_INF,
            cmp_op=nl.greater_equal,
        )
    neg_max = nl.ndarray((tq, nh), dtype=qT.dtype, buffer=nl.sbuf)  # bf16: exact, N/2 on DVE
    total = nl.ndarray((tq, nh), dtype=nl.float32, buffer=nl.sbuf)
    for h in range(nh):  # DVE
        nisa.tensor_reduce(dst=neg_max[:, h : h + 1], op=nl.maximum, data=s[h], axis=1, negate=True)
    e = [nl.ndarray((tq, nk), dtype=nl.float32, buffer=nl.sbuf) for _ in range(nh)]
    for h in range(nh):  # ACT
        nisa.activation(
            dst=e[h],
            op=nl.exp,
            data=s[h],
            bias=neg_max[:, h : h + 1],
            reduce_op=nl.add,
            reduce_res=total[:, h : h + 1],
            reduce_cmd=nisa.reduce_cmd.reset_reduce,
        )
    for h in range(nh):  # GpSimd: p = bf16(e / Σe) into s[h]
        nisa.tensor_scalar(
            dst=s[h], data=e[h], op0=nl.divide, operand0=total[:, h : h + 1], engine=nisa.gpsimd_engine
        )
    o = nl.ndarray((tq, nh, d), dtype=qT.dtype, buffer=nl.sbuf)
    for h in range(nh):  # PE, DVE and ACT
        pT = _transposes_grouped(s[h], S_TILE, (nisa.vector_engine, nisa.scalar_engine)[h % 2])
        o_psum = nl.ndarray((tq, d), dtype=nl.float32, buffer=nl.psum)
        for i, pT_i in enumerate(pT):
            nisa.nc_matmul(
                dst=o_psum, stationary=pT_i, moving=v_tiles[i][:, (h0 + h) // g, :], accumulate=i > 0
            )
        nisa.tensor_copy(dst=o[:, h, :], src=o_psum, engine=nisa.scalar_engine)
    return o


def _prefill_lnc2(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps, fold_scale):
    """Prefill v5 / v6 on this core's share of the query heads (``_prefill_inputs_b``, then
    ``_prefill_attend_tile`` per query tile, its heads' columns of out stored). Returns out."""
    T, n_q, n_kv, d = _check_prefill(q, k, v, k_cache, v_cache)
    g = n_q // n_kv
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    assert n_q % n_prog == 0, f"{n_q} query heads do not split evenly over {n_prog} cores"
    h0, nh = lnc_share(n_q)
    out = nl.ndarray((T, n_q * d), dtype=q.dtype, buffer=nl.shared_hbm)
    qT, kT, v_tiles, tiles = _prefill_inputs_b(
        q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps,
        q_heads=(h0, h0 + nh), write_k=pid == 0, write_v=pid == n_prog - 1,
    )  # fmt: skip
    for q0, tq in tiles:
        o = _prefill_attend_tile(qT, kT, v_tiles, q0, tq, h0, g, fold_scale)
        nisa.dma_copy(dst=out[q0 : q0 + tq, h0 * d : (h0 + nh) * d].reshape((tq, nh, d)), src=o)
    return out


# ---- prefill v5: v4 with the prologue's DMA plan and the vector passes rebalanced -----------------------
@nki.jit
def attention_prefill_v5(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps):
    """As attention_prefill_v4 (LNC=2, query heads split) with the time v4's schedule showed outside the
    score passes removed and the passes moved off DVE (v4: ~30 % of the latency waiting, the busiest engine
    DVE): the prologue's loads all issued first, cos/sin and the norm weights broadcast over the heads on
    chip (``_prefill_inputs_b``); the row max written in bf16 (exact: a max of bf16 scores; the N/2 rule
    instead of N); the normalisation p = bf16(e / Σe) on GpSimd (idle but for the causal masks); the pᵀ
    tiles transposed four to a PSUM bank and evicted by one copy, alternately on DVE and ACT (v4: one ACT
    copy per tile). The same values at the same rounding points as v4: bit-identical. The per-tile passes:
    ``_prefill_attend_tile``."""
    return _prefill_lnc2(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps, fold_scale=False)


# ---- prefill v6: the faster variant: scale folded into the PSUM eviction (one rounding fewer) --------------
@nki.jit
def attention_prefill_v6(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps):
    """As attention_prefill_v5 with the scores evicted from PSUM already scaled, s = bf16(q·kᵀ·d^-0.5), by
    one instruction per head — alternately ACT (activation scale) and DVE (tensor_scalar) — instead of an
    ACT eviction bf16(q·kᵀ) followed by a DVE pass bf16(s·d^-0.5). One pass over every score fewer and the
    evictions split between the two engines (v5: ACT the busiest engine). NOT the reference's rounding
    points: HF rounds q·kᵀ to bf16 before the scaling, so a score can differ by one bf16 ulp and the output
    is not bit-identical (the order-preserving variant is v5)."""
    return _prefill_lnc2(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps, fold_scale=True)


def _partition_index(P):
    """fp32 [P, 1] SBUF tile holding p on partition p (the causal bound of ``range_select``)."""
    idx_i = nl.ndarray((P, 1), dtype=nl.int32, buffer=nl.sbuf)
    nisa.iota(dst=idx_i, pattern=[[0, 1]], offset=0, channel_multiplier=1)
    idx = nl.ndarray((P, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=idx, src=idx_i)
    return idx


def _evict_alternate(h):
    """The engine evicting head h's eᵀ tiles from PSUM: DVE for even heads, ACT for odd ones (as v5)."""
    return (nisa.vector_engine, nisa.scalar_engine)[h % 2]


def _scores_max(qT, kT, q0, tq, h, h0, g, p_idx, neg, neg_on_dve=True):
    """PE: head h's scores of query tile [q0, q0 + tq) over keys 0 … q0 + tq − 1, one PSUM bank per ≤ 512
    keys; DVE: their row max read from PSUM, the bank holding the diagonal tile masked in place by the same
    pass (``range_select``: keys past the query set to FP32_MIN), neg[:, h] = −max·d^-0.5. Returns the
    banks [(c0, PSUM [tq, csz])]; ``neg_on_dve=False`` (prefill v9): (banks, the fp32 max [tq, 1]), neg
    left to the caller."""
    d, nk = qT.shape[0], q0 + tq
    blocks = [(c0, min(SCORE_TILE, nk - c0)) for c0 in range(0, nk, SCORE_TILE)]
    m = nl.ndarray((tq, len(blocks)), dtype=nl.float32, buffer=nl.sbuf)
    banks = []
    for b, (c0, csz) in enumerate(blocks):
        s_psum = nl.ndarray((tq, csz), dtype=nl.float32, buffer=nl.psum)
        nisa.nc_matmul(
            dst=s_psum, stationary=qT[:, h, q0 : q0 + tq], moving=kT[:, (h0 + h) // g, c0 : c0 + csz]
        )
        if c0 + csz > q0:  # key c0 + j kept iff c0 + j − q0 <= p
            nisa.range_select(
                dst=s_psum,
                on_true_tile=s_psum,
                comp_op0=nl.greater_equal,
                comp_op1=nl.less_equal,
                bound0=float(c0 - q0),
                bound1=p_idx[0:tq, :],
                reduce_res=m[:, b : b + 1],
                range_start=float(c0 - q0),
            )
        else:
            nisa.tensor_reduce(dst=m[:, b : b + 1], op=nl.maximum, data=s_psum, axis=1)
        banks.append((c0, s_psum))
    if len(blocks) > 1:
        nisa.tensor_reduce(dst=m[:, 0:1], op=nl.maximum, data=m, axis=1)
    if not neg_on_dve:
        return banks, m[:, 0:1]
    nisa.tensor_scalar(dst=neg[:, h : h + 1], data=m[:, 0:1], op0=nl.multiply, operand0=-(d**-0.5))
    return banks


def _exp(banks, h, neg, total, scale, dtype):
    """ACT: e = exp(s·scale + neg[:, h]) [tq, nk] in ``dtype`` (bf16: p·V's operand) and total[:, h] = Σe
    (fp32), one pass per bank read straight from PSUM (the banks of ``_scores_max``). Returns e."""
    tq, nk = neg.shape[0], banks[-1][0] + banks[-1][1].shape[1]
    e = nl.ndarray((tq, nk), dtype=dtype, buffer=nl.sbuf)
    for b, (c0, s_psum) in enumerate(banks):
        nisa.activation(
            dst=e[:, c0 : c0 + s_psum.shape[1]],
            op=nl.exp,
            data=s_psum,
            scale=scale,
            bias=neg[:, h : h + 1],
            reduce_op=nl.add,
            reduce_res=total[:, h : h + 1],
            reduce_cmd=nisa.reduce_cmd.reset_reduce if b == 0 else nisa.reduce_cmd.reduce,
        )
    return e


def _pv(e, v_tiles, h, kv, total, o, evict):
    """eᵀ by PE transposes evicted by the ``evict`` engine, p·V with the unnormalised e (KV head kv), then on
    DVE o[:, h, :] = (e·V) / Σe at the [tq, d] eviction (flash-style deferred normalisation)."""
    _pv_matmuls(_transposes_grouped(e, S_TILE, evict), v_tiles, h, kv, total, o)


def _pv_matmuls(eT, v_tiles, h, kv, total, o):
    """p·V from the eᵀ tiles [ksz, tq] (key order) and the V tiles (KV head kv), then on DVE
    o[:, h, :] = (e·V) / Σe at the [tq, d] eviction: the second half of ``_pv``."""
    tq, d = o.shape[0], o.shape[2]
    o_psum = nl.ndarray((tq, d), dtype=nl.float32, buffer=nl.psum)
    for i, pT_i in enumerate(eT):
        nisa.nc_matmul(dst=o_psum, stationary=pT_i, moving=v_tiles[i][:, kv, :], accumulate=i > 0)
    nisa.tensor_scalar(dst=o[:, h, :], data=o_psum, op0=nl.divide, operand0=total[:, h : h + 1])


def _softmax_state(tq, nh, d, dtype):
    """Per query tile: (neg [tq, nh] = −max·d^-0.5, total [tq, nh] = Σe, o [tq, nh, d] the output)."""
    neg = nl.ndarray((tq, nh), dtype=nl.float32, buffer=nl.sbuf)
    total = nl.ndarray((tq, nh), dtype=nl.float32, buffer=nl.sbuf)
    return neg, total, nl.ndarray((tq, nh, d), dtype=dtype, buffer=nl.sbuf)


# ---- prefill v7: the softmax straight from PSUM: one ACT pass per score, the normalisation deferred -------
@nki.jit
def attention_prefill_v7(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps):
    """As attention_prefill_v6 with the scores never copied out of PSUM: the masked row max read from PSUM
    on DVE (the diagonal mask folded into that pass by ``range_select``, ``_scores_max``), the exp reading
    PSUM with scale = d^-0.5 and bias = −max·d^-0.5 (``_exp``), the unnormalised bf16 exps into p·V and o
    divided by Σe at the [tq, d] eviction (flash-style deferred normalisation, ``_pv``); head h + 1's scores
    and max issued before head h's exp. Gone per score: v6's PSUM eviction, the GpSimd mask and the GpSimd
    normalisation pass — of five passes over every score two are left (DVE's max, ACT's exp). Estimate
    (trn2, T = 512): 32.83 µs against v6's 34.62 (12.9 % of the PE floor; 34.96 before the cost model's
    row-pitch HBM regions, 2026-12-04); the prologue (norms, RoPE,
    transposes: ~14 µs before the first score) is v6's, and the busiest engine is now DVE (~17 µs per
    core: the fp32 max from PSUM costs N per score, the bf16 max of v6 N/2). The faster variant: not the
    reference's rounding points (no bf16 scores, no bf16 p): ~33 % of the outputs bit-identical to the
    reference at T = 512, all within the ratio (v5 is the order-preserving version)."""
    T, n_q, n_kv, d = _check_prefill(q, k, v, k_cache, v_cache)
    g = n_q // n_kv
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    assert n_q % n_prog == 0, f"{n_q} query heads do not split evenly over {n_prog} cores"
    h0, nh = lnc_share(n_q)
    out = nl.ndarray((T, n_q * d), dtype=q.dtype, buffer=nl.shared_hbm)
    qT, kT, v_tiles, tiles = _prefill_inputs_b(
        q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps,
        q_heads=(h0, h0 + nh), write_k=pid == 0, write_v=pid == n_prog - 1,
    )  # fmt: skip
    p_idx = _partition_index(S_TILE)
    for q0, tq in tiles:  # head h + 1's scores and max issued before head h's exp: PE and DVE a head ahead
        neg, total, o = _softmax_state(tq, nh, d, q.dtype)
        banks = _scores_max(qT, kT, q0, tq, 0, h0, g, p_idx, neg)
        for h in range(nh):
            nxt = _scores_max(qT, kT, q0, tq, h + 1, h0, g, p_idx, neg) if h + 1 < nh else None
            e = _exp(banks, h, neg, total, d**-0.5, q.dtype)
            _pv(e, v_tiles, h, (h0 + h) // g, total, o, _evict_alternate(h))
            banks = nxt
        nisa.dma_copy(dst=out[q0 : q0 + tq, h0 * d : (h0 + nh) * d].reshape((tq, nh, d)), src=o)
    return out


def _prefill_loads(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, q_heads, write_v):
    """v5's loads (``_prefill_inputs_b``), all issued before any compute, in the order v8 consumes them:
    per 128-token tile q, k, cos, sin and v (the norm weights' [P, d] broadcasts after the first tile's
    q, k, cos and sin: only its products need them), then the V rows to the cache HBM→HBM.
    Returns ((q_norm_w, k_norm_w) broadcasts, per tile (q, k, v, (cos, sin)) SBUF tiles, the tiles)."""
    T = q.shape[0]
    cap, n_kv, d = k_cache.shape
    h0, h1 = q_heads
    tiles = [(t0, min(S_TILE, T - t0)) for t0 in range(0, T, S_TILE)]

    def load(src, shape):
        t = nl.ndarray(shape, dtype=src.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=t, src=src.reshape(shape))
        return t

    loads = []
    for n, (t0, tsz) in enumerate(tiles):
        rows = slice(t0, t0 + tsz)
        q_t, k_t = load(q[rows, h0 * d : h1 * d], (tsz, h1 - h0, d)), load(k[rows, :], (tsz, n_kv, d))
        cs = load(cos[rows, :], (tsz, d)), load(sin[rows, :], (tsz, d))
        if n == 0:
            wb = _broadcast(q_norm_w, S_TILE), _broadcast(k_norm_w, S_TILE)
        loads.append((q_t, k_t, load(v[rows, :], (tsz, n_kv, d)), cs))
    if write_v:
        nisa.dma_copy(dst=v_cache[0:T, :, :], src=v.reshape((T, n_kv, d)))
    return wb, loads, tiles


# ---- prefill v8: v7 with the prologue pipelined into the attention, its products on GpSimd -----------------
@nki.jit
def attention_prefill_v8(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps):
    """As attention_prefill_v7 with the prologue pipelined into the attention. Causal: query tile t needs
    key tiles 0 … t only, so token tile t + 2 is normed and rotated while tile t attends, its elementwise
    products on GpSimd (idle in v7's attention; tile 0's on DVE, nothing to overlap yet) beside ACT's exps
    and DVE's maxima, its Qᵀ/Kᵀ placed (PE transposes) just before its first scores. The (tile, head) items
    run as a software pipeline across the tiles: scores and max two items ahead, the exp one ahead, then
    p·V, its eᵀ tiles evicted by ACT (DVE now has the max). The loads all first, as v5's
    (``_prefill_loads``). The same per-head instructions as v7 on other engines and in another order: v7's
    bits. Estimate (trn2, T = 512): 24.25 µs (17.5 % of the PE floor, 5.7× it; v7 32.83; 26.69 before the
    cost model's row-pitch HBM regions, which stopped ordering the two cores' stores into the same rows).
    What is left: per core ACT ~13.2 µs (exps, eᵀ evictions, the norms' Σx² and scaling) and DVE ~11.5 µs
    (the max from PSUM, the divisions, the Qᵀ/Kᵀ evictions) against a 4.25 µs floor; ~3 µs before the first
    load lands; ~2.4 µs after the last instruction (the last out store)."""
    T, n_q, n_kv, d = _check_prefill(q, k, v, k_cache, v_cache)
    g = n_q // n_kv
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    assert n_q % n_prog == 0, f"{n_q} query heads do not split evenly over {n_prog} cores"
    h0, nh = lnc_share(n_q)
    out = nl.ndarray((T, n_q * d), dtype=q.dtype, buffer=nl.shared_hbm)
    (qw_b, kw_b), loads, tiles = _prefill_loads(
        q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, (h0, h0 + nh), write_v=pid == n_prog - 1
    )
    qT = nl.ndarray((d, nh, T), dtype=q.dtype, buffer=nl.sbuf)
    kT = nl.ndarray((d, n_kv, T), dtype=k.dtype, buffer=nl.sbuf)
    p_idx = _partition_index(S_TILE)
    normed = {}

    def norm(i):  # ACT and GpSimd (tile 0: DVE, nothing to overlap yet), beside tile i − 1's attention
        q_t, k_t, _, (c_t, s_t) = loads[i]
        eng = nisa.gpsimd_engine if i > 0 else nisa.vector_engine
        sin_n = _neg_sin(s_t, eng)
        normed[i] = [
            _norm_rope_heads_b(x_t, w_b, c_t, sin_n, eps, eng) for x_t, w_b in ((q_t, qw_b), (k_t, kw_b))
        ]

    def place(i):  # PE transposes (DVE evictions) into Qᵀ, Kᵀ; this core's K-cache rows
        t0, tsz = tiles[i]
        qn, kn = normed.pop(i)
        _heads_T(qn, qT, t0)
        _heads_T(kn, kT, t0)
        if pid == 0:
            nisa.dma_copy(dst=k_cache[t0 : t0 + tsz, :, :], src=kn)

    v_tiles = [ld[2] for ld in loads]
    items = [(i, h) for i in range(len(tiles)) for h in range(nh)]  # (query tile, head), in order
    state, banks, exps = {}, {}, {}

    def scores(n):  # stage 1 of item n: PE scores, DVE max (the tile's Qᵀ/Kᵀ placed before its first head)
        i, h = items[n]
        if h == 0:
            place(i)
            state[i] = _softmax_state(tiles[i][1], nh, d, q.dtype)
        banks[n] = _scores_max(qT, kT, *tiles[i], h, h0, g, p_idx, state[i][0])

    def exp(n):  # stage 2: ACT's exp pass from PSUM
        i, h = items[n]
        exps[n] = _exp(banks.pop(n), h, state[i][0], state[i][1], d**-0.5, q.dtype)

    for i in range(min(2, len(tiles))):
        norm(i)
    for n in range(min(2, len(items))):
        scores(n)
    exp(0)
    for n, (i, h) in enumerate(items):  # program order: scores 2 items ahead, exp 1 ahead, then p·V
        if h == min(2, nh - 1) and i + 2 < len(tiles):
            norm(i + 2)  # two tiles ahead: its GpSimd chain has a whole tile's attention to run beside
        if n + 2 < len(items):
            scores(n + 2)
        if n + 1 < len(items):
            exp(n + 1)
        _pv(exps.pop(n), v_tiles, h, (h0 + h) // g, *state[i][1:], nisa.scalar_engine)  # stage 3, DVE spared
        if h == nh - 1:
            q0, tq = tiles[i]
            nisa.dma_copy(
                dst=out[q0 : q0 + tq, h0 * d : (h0 + nh) * d].reshape((tq, nh, d)), src=state.pop(i)[2]
            )
    return out


# ---- prefill v9: v8 with ACT's and DVE's per-item work rebalanced, each queue fed in dependency order ------
@nki.jit
def attention_prefill_v9(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps):
    """As attention_prefill_v8 with the per-(tile, head) work rebalanced between ACT and DVE, the two busiest
    engines (v8 per core, trn2, T = 512: ACT ~13.2 µs, DVE ~11.5), and each engine's share issued where its
    in-order queue does not stall on another engine:

    * the eᵀ PSUM evictions of the odd heads on DVE (its 2× PSUM-source bf16 rate), the even heads' on ACT
      (v8: all on ACT; v7 split them the other way round, DVE taking the even heads);
    * neg = −max·d^-0.5 on ACT (a tensor_scalar multiply: the same fp32 product), issued just before its
      exp (v8: on DVE right after the max), so DVE's queue holds only the maxima, the evictions and the
      divisions;
    * the eᵀ transposes and their evictions one item ahead of the p·V matmuls: in v8's order PE ran
      S(n + 2), T(n), PV(n), so T(n) waited behind S(n + 2) behind PV(n − 1) behind ACT's eviction of
      n − 1 — one chain eviction → p·V → scores → transposes → eviction per item (~1.1 µs at T = 512, ACT
      then idle); here PE runs S(n + 2), T(n), PV(n − 1) and an eviction has a whole item to land.

    GpSimd cannot read PSUM (the exps, evictions and maxima all do); moving v8's SBUF-only norm scalings or
    the negs onto it was tried and measured slower (its in-order queue holds the next tiles' norm chains).
    The same instructions as v8 on the same values (a copy, an fp32 product, on other engines): v8's bits.
    Estimate (trn2, T = 512): 21.14 µs against v8's 24.25 (4.98× the PE floor; trn3 19.37 against 21.56);
    per core ACT ~11.9 µs (busiest; v8 13.2), DVE ~11.7, GpSimd ~6.8 (its norm products, as v8), PE ~7.5.

    Tried beyond v9 and not kept (estimates, T = 512): the scores a second time transposed (sᵀ = K·qᵀ in PSUM,
    −max and the causal mask added by a matmul against −I, eᵀ = exp straight from PSUM in p·V's layout, Σe
    from a ones column appended to V), so no eᵀ transposes or evictions: trn2 20.97 µs (−0.8 %), trn3 20.16
    (+4 %). The PE takes what ACT and DVE lose (per core PE 9.6, ACT 10.7, DVE 10.4 µs), and the latency is
    not the busy time: the critical path is ~4.8 µs of input loads, the GpSimd norm chain (~2.4 µs a tile)
    that gates each tile's Qᵀ/Kᵀ, the last tile's PE-bound items and ~2.4 µs of the last output store."""
    T, n_q, n_kv, d = _check_prefill(q, k, v, k_cache, v_cache)
    g = n_q // n_kv
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    assert n_q % n_prog == 0, f"{n_q} query heads do not split evenly over {n_prog} cores"
    h0, nh = lnc_share(n_q)
    out = nl.ndarray((T, n_q * d), dtype=q.dtype, buffer=nl.shared_hbm)
    (qw_b, kw_b), loads, tiles = _prefill_loads(
        q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, (h0, h0 + nh), write_v=pid == n_prog - 1
    )
    qT = nl.ndarray((d, nh, T), dtype=q.dtype, buffer=nl.sbuf)
    kT = nl.ndarray((d, n_kv, T), dtype=k.dtype, buffer=nl.sbuf)
    p_idx = _partition_index(S_TILE)
    normed = {}

    def norm(i):  # as v8: ACT and GpSimd (tile 0: DVE), beside tile i − 1's attention
        q_t, k_t, _, (c_t, s_t) = loads[i]
        eng = nisa.gpsimd_engine if i > 0 else nisa.vector_engine
        sin_n = _neg_sin(s_t, eng)
        normed[i] = [
            _norm_rope_heads_b(x_t, w_b, c_t, sin_n, eps, eng) for x_t, w_b in ((q_t, qw_b), (k_t, kw_b))
        ]

    def place(i):  # as v8: PE transposes (DVE evictions) into Qᵀ, Kᵀ; this core's K-cache rows
        t0, tsz = tiles[i]
        qn, kn = normed.pop(i)
        _heads_T(qn, qT, t0)
        _heads_T(kn, kT, t0)
        if pid == 0:
            nisa.dma_copy(dst=k_cache[t0 : t0 + tsz, :, :], src=kn)

    v_tiles = [ld[2] for ld in loads]
    items = [(i, h) for i in range(len(tiles)) for h in range(nh)]  # (query tile, head), in order
    state, banks, exps, eTs = {}, {}, {}, {}

    def scores(n):  # stage 1: PE scores, DVE max (the tile's Qᵀ/Kᵀ placed before its first head)
        i, h = items[n]
        if h == 0:
            place(i)
            state[i] = _softmax_state(tiles[i][1], nh, d, q.dtype)
        banks[n] = _scores_max(qT, kT, *tiles[i], h, h0, g, p_idx, state[i][0], neg_on_dve=False)

    def exp(n):  # stage 2, ACT: neg = −max·d^-0.5, then the exp pass from PSUM
        i, h = items[n]
        item_banks, m = banks.pop(n)
        neg, total = state[i][0], state[i][1]
        nisa.tensor_scalar(
            dst=neg[:, h : h + 1], data=m, op0=nl.multiply, operand0=-(d**-0.5), engine=nisa.scalar_engine
        )
        exps[n] = _exp(item_banks, h, neg, total, d**-0.5, q.dtype)

    def transpose(n):  # stage 3: PE's eᵀ tiles, evicted by ACT (even heads) or DVE (odd heads)
        evict = (nisa.scalar_engine, nisa.vector_engine)[items[n][1] % 2]
        eTs[n] = _transposes_grouped(exps.pop(n), S_TILE, evict)

    def pv(n):  # stage 4: p·V, o / Σe on DVE; the tile's out columns stored after its last head
        i, h = items[n]
        _pv_matmuls(eTs.pop(n), v_tiles, h, (h0 + h) // g, *state[i][1:])
        if h == nh - 1:
            q0, tq = tiles[i]
            nisa.dma_copy(
                dst=out[q0 : q0 + tq, h0 * d : (h0 + nh) * d].reshape((tq, nh, d)), src=state.pop(i)[2]
            )

    for i in range(min(2, len(tiles))):
        norm(i)
    for n in range(min(2, len(items))):
        scores(n)
    exp(0)
    for n, (i, h) in enumerate(items):  # scores 2 items ahead, exp 1 ahead, eᵀ 1 ahead of p·V (v8: with it)
        if h == min(2, nh - 1) and i + 2 < len(tiles):
            norm(i + 2)
        if n + 2 < len(items):
            scores(n + 2)
        if n + 1 < len(items):
            exp(n + 1)
        transpose(n)
        if n > 0:
            pv(n - 1)
    pv(len(items) - 1)
    return out


# ======== the prefill block: q|k|v projection + prefill attention + o projection ============================
def _check_block_prefill(x, w_qkv, w_o, k_cache, v_cache):
    """Restate the prefill block's layout limits; returns (T, H, n_q, n_kv, d)."""
    cap, n_kv, d = k_cache.shape
    T, H = x.shape
    n_q = w_o.shape[0] // d
    assert tuple(v_cache.shape) == (cap, n_kv, d), f"v_cache {tuple(v_cache.shape)} != {(cap, n_kv, d)}"
    assert H % 256 == 0, f"hidden {H}: whole contraction tiles and two halves of the o columns"
    assert tuple(w_qkv.shape) == (H, (n_q + 2 * n_kv) * d), f"w_qkv {tuple(w_qkv.shape)} vs H={H}"
    assert tuple(w_o.shape) == (n_q * d, H), f"w_o {tuple(w_o.shape)} != {(n_q * d, H)}"
    assert d <= 128 and d % 2 == 0 and n_q % n_kv == 0, f"heads {n_q}/{n_kv} of {d}"
    assert n_q % 2 == 0 and (n_q // 2 * d) % 128 == 0, (
        f"{n_q} heads of {d}: whole o contraction tiles per half"
    )
    assert 1 <= T <= cap, f"T={T} tokens must fit the cache's {cap} rows"
    return T, H, n_q, n_kv, d


def _col_blocks(spans):
    """[(c0, size)] column blocks of at most SCORE_TILE (one fp32 PSUM bank) inside each [a, b) span."""
    return [(c0, min(SCORE_TILE, b - c0)) for a, b in spans for c0 in range(a, b, SCORE_TILE)]


def _qkv_spans(n_q, n_kv, d):
    """The projection's column spans: the two halves of the q columns, k, v. Every version uses these
    PSUM blocks, so each core of an LNC=2 launch runs the very matmuls of the one-core versions."""
    half, k0, v0 = n_q // 2 * d, n_q * d, (n_q + n_kv) * d
    return [(0, half), (half, k0), (k0, v0), (v0, v0 + n_kv * d)]


def _weight_rows(w, c0, cols):
    """Per contraction tile kt an SBUF [P, cols] view of w[kt·P : (kt+1)·P, c0 : c0 + cols], loaded in
    chunks of whole tiles of about CHUNK_BYTES per partition: a GEMM starts on the first chunk."""
    P = nl.tile_size.pmax
    KT, kg = w.shape[0] // P, max(1, CHUNK_BYTES // (cols * 2))
    rows = []
    for k0 in range(0, KT, kg):
        t = _load_slabs(w, k0 * P, min(kg, KT - k0) * P, c0, cols, P)
        rows += [t[:, j, :] for j in range(t.shape[1])]
    return rows


def _project_rows(stat, w_rows, blocks, c_base, out):
    """out[:, c0 − o0 : …] = bf16(Σ_kt stat[kt]ᵀ · w_rows[kt][:, c0 − c_base : …]) per column block
    (c0, size), o0 the first block's column: stat [P, tsz] stationaries in contraction order (tokens on the
    PSUM partitions), w_rows the ``_weight_rows`` views whose column 0 is column c_base; one PSUM bank per
    block accumulated over the contraction tiles, evicted by DVE (bf16: HF's rounding point)."""
    tsz = stat[0].shape[1]
    o0 = blocks[0][0]
    for c0, size in blocks:
        acc = nl.ndarray((tsz, size), dtype=nl.float32, buffer=nl.psum)
        for kt, st in enumerate(stat):
            w_kt = w_rows[kt][:, c0 - c_base : c0 - c_base + size]
            nisa.nc_matmul(dst=acc, stationary=st, moving=w_kt, accumulate=kt > 0)
        nisa.tensor_copy(dst=out[:, c0 - o0 : c0 - o0 + size], src=acc)


def _o_proj_rows(stat, wo_rows, blocks, c_base, y, t0):
    """y[t0 : t0 + tsz, the blocks' columns] = bf16(o · w_o) from the contraction-tile stationaries
    (``_project_rows``), one store."""
    tsz = stat[0].shape[1]
    c0, c1 = blocks[0][0], blocks[-1][0] + blocks[-1][1]
    y_t = nl.ndarray((tsz, c1 - c0), dtype=y.dtype, buffer=nl.sbuf)
    _project_rows(stat, wo_rows, blocks, c_base, y_t)
    nisa.dma_copy(dst=y[t0 : t0 + tsz, c0:c1], src=y_t)


def _o_proj_from_hbm(o_hbm, wo_rows, y, tiles):
    """v0, v1: y = o · w_o with the attention output read back from HBM (one core; the o column blocks of
    the two halves of y, as v2's cores); wo_rows: ``_weight_rows`` of all of w_o."""
    H = y.shape[1]
    blocks = _col_blocks([(0, H // 2), (H // 2, H)])
    for t0, tsz in tiles:
        oT = load_transposed(o_hbm, t0, tsz)  # [P, KT, tsz]
        _o_proj_rows([oT[:, kt, :] for kt in range(oT.shape[1])], wo_rows, blocks, 0, y, t0)


def _block_prefill_inputs(
    x, w_qkv, w_o, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps, split, on_tile=None
):
    """The fused QKV epilogue: per 128-token tile x · w_qkv in PSUM, evicted to bf16 and — without leaving
    the chip — q and k normed and rotated (``_norm_rope_heads_b``), Qᵀ/Kᵀ built by PE transposes, K/V
    stored to cache rows 0..T-1. Returns (qT [d, nh, T], kT [d, n_kv, T], v tiles [tsz, n_kv, d], tiles)
    as ``_prefill_inputs_b``, and this core's ``_weight_rows`` of w_o.

    Loads in consumption order: the first x tile, w_qkv in chunks, the other x tiles, cos/sin, w_o (needed
    after the first query tile's attention); each x tile PE-transposed in its turn (``_transposes_grouped``).
    ``split`` (LNC=2): this core projects its half of the q heads and one of k (core 0) or v (core 1) —
    every column once over the two cores — writes that cache, swaps its [tsz, n_kv, d] k or v tile with
    the peer's by sendrecv, and loads w_o[:, its half of y]. ``on_tile(t0, tsz, qT, kT, v_tiles,
    wo_rows)``: called once a tile's q, k and v are in place (v2 attends there)."""
    T, H = x.shape
    cap, n_kv, d = k_cache.shape
    P, N = nl.tile_size.pmax, w_qkv.shape[1]
    n_q = N // d - 2 * n_kv
    pid = nl.program_id(0) if split else 0
    spans = _qkv_spans(n_q, n_kv, d)
    tiles = [(t0, min(S_TILE, T - t0)) for t0 in range(0, T, S_TILE)]
    x_rows = []

    def load_x(t0, tsz):  # token rows on the partitions; PE-transposed in the tile's turn
        x_rows.append(nl.ndarray((tsz, H), dtype=x.dtype, buffer=nl.sbuf))
        nisa.dma_copy(dst=x_rows[-1], src=x[t0 : t0 + tsz, :])

    load_x(*tiles[0])
    if split:  # this core's q columns, then its k or v columns
        (c0, c1), (kv0, kv1) = spans[pid], spans[2 + pid]
        w_q, w_kv = _weight_rows(w_qkv, c0, c1 - c0), _weight_rows(w_qkv, kv0, kv1 - kv0)
    else:  # all columns: whole rows per descriptor
        (c0, c1), (kv0, kv1) = (0, n_q * d), (n_q * d, N)
        w_q = w_kv = _weight_rows(w_qkv, 0, N)
    q_base, kv_base = (c0, kv0) if split else (0, 0)
    for t0, tsz in tiles[1:]:
        load_x(t0, tsz)
    nh = (c1 - c0) // d
    qw_b, kw_b = _broadcast(q_norm_w, P), _broadcast(k_norm_w, P)
    cs = []
    for t0, tsz in tiles:
        c_t = nl.ndarray((tsz, d), dtype=cos.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=c_t, src=cos[t0 : t0 + tsz, :])
        s_t = nl.ndarray((tsz, d), dtype=sin.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=s_t, src=sin[t0 : t0 + tsz, :])
        cs.append((c_t, s_t))
    Hc = H // 2 if split else H
    wo_rows = _weight_rows(w_o, pid * Hc, Hc)
    qT = nl.ndarray((d, nh, T), dtype=x.dtype, buffer=nl.sbuf)
    kT = nl.ndarray((d, n_kv, T), dtype=x.dtype, buffer=nl.sbuf)
    v_tiles = []
    q_blocks = [b for b in _col_blocks(spans[:2]) if c0 <= b[0] < c1]
    kv_blocks = [b for b in _col_blocks(spans[2:]) if kv0 <= b[0] < kv1]
    for (t0, tsz), x_t, (c_t, s_t) in zip(tiles, x_rows, cs):
        stat = _transposes_grouped(x_t, P, nisa.vector_engine, group=8)  # xᵀ [P, tsz] per contraction tile
        qkv = nl.ndarray((tsz, (nh * d + kv1 - kv0)), dtype=x.dtype, buffer=nl.sbuf)
        _project_rows(stat, w_q, q_blocks, q_base, qkv[:, 0 : nh * d])
        _project_rows(stat, w_kv, kv_blocks, kv_base, qkv[:, nh * d :])
        rows = qkv.reshape((tsz, nh + (kv1 - kv0) // d, d))  # [tsz, heads, d] of this core's columns
        sin_n = _neg_sin(s_t)
        _heads_T(_norm_rope_heads_b(rows[:, 0:nh, :], qw_b, c_t, sin_n, eps), qT, t0)
        kn = v_t = None
        if not split or pid == 0:
            kn = _norm_rope_heads_b(rows[:, nh : nh + n_kv, :], kw_b, c_t, sin_n, eps)
            nisa.dma_copy(dst=k_cache[t0 : t0 + tsz, :, :], src=kn)
        if not split or pid == 1:
            v_t = rows[:, nh + (0 if split else n_kv) :, :]  # the n_kv v heads
            nisa.dma_copy(dst=v_cache[t0 : t0 + tsz, :, :], src=v_t)
        if split:
            mine = kn if pid == 0 else v_t
            theirs = nl.ndarray((tsz, n_kv, d), dtype=x.dtype, buffer=nl.sbuf)
            nisa.sendrecv(src=mine, dst=theirs, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=0)
            kn, v_t = (kn, theirs) if pid == 0 else (theirs, v_t)
        _heads_T(kn, kT, t0)
        v_tiles.append(v_t)
        if on_tile is not None:  # the tile's keys are in place: its queries can attend now
            on_tile(t0, tsz, qT, kT, v_tiles, wo_rows)
    return qT, kT, v_tiles, tiles, wo_rows


# ---- block prefill v0: unfused: q|k|v and the attention output through HBM -------------------------------
@nki.jit
def attention_block_prefill_v0(x, w_qkv, w_o, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps):
    """The prefill attention block as three stages joined through HBM, one core.

    Args: x [T, H] bf16 (after the input RMSNorm); w_qkv [H, (n_q + 2·n_kv)·d], w_o [n_q·d, H] ([in, out],
    the decode block's layout); q_norm_w, k_norm_w [d]; cos, sin [T, d] (positions 0..T-1); k_cache,
    v_cache [cap, n_kv, d] (rows 0..T-1 written); eps. Returns: y [T, H] in x.dtype (this rank's partial of
    the o projection, before the all-reduce and the residual add).
    Stage 1: x · w_qkv per 128-token tile, bf16, stored to q/k/v scratch in HBM; stage 2: the passes of
    attention_prefill_v5 on one core reading q/k/v back (``_prefill_inputs_b``, ``_prefill_attend_tile``),
    the output to an HBM scratch; stage 3: o · w_o reading it back (``_o_proj_from_hbm``)."""
    T, H, n_q, n_kv, d = _check_block_prefill(x, w_qkv, w_o, k_cache, v_cache)
    P, g, N = nl.tile_size.pmax, n_q // n_kv, w_qkv.shape[1]
    y = nl.ndarray((T, H), dtype=x.dtype, buffer=nl.shared_hbm)
    scratch = [nl.ndarray((T, n * d), dtype=x.dtype, buffer=nl.hbm) for n in (n_q, n_kv, n_kv)]  # q, k, v
    w_rows = _weight_rows(w_qkv, 0, N)
    blocks = _col_blocks(_qkv_spans(n_q, n_kv, d))
    for t0, tsz in [(t0, min(S_TILE, T - t0)) for t0 in range(0, T, S_TILE)]:
        xT = load_transposed(x, t0, tsz)
        qkv = nl.ndarray((tsz, N), dtype=x.dtype, buffer=nl.sbuf)
        _project_rows([xT[:, kt, :] for kt in range(H // P)], w_rows, blocks, 0, qkv)
        for dst, c0 in zip(scratch, (0, n_q * d, (n_q + n_kv) * d)):
            nisa.dma_copy(dst=dst[t0 : t0 + tsz, :], src=qkv[:, c0 : c0 + dst.shape[1]])
    qT, kT, v_tiles, tiles = _prefill_inputs_b(
        *scratch, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps,
        q_heads=(0, n_q), write_k=True, write_v=True,
    )  # fmt: skip
    wo_rows = _weight_rows(w_o, 0, H)
    o_hbm = nl.ndarray((T, n_q * d), dtype=x.dtype, buffer=nl.hbm)
    for q0, tq in tiles:
        o = _prefill_attend_tile(qT, kT, v_tiles, q0, tq, 0, g)
        nisa.dma_copy(dst=o_hbm[q0 : q0 + tq, :].reshape((tq, n_q, d)), src=o)
    _o_proj_from_hbm(o_hbm, wo_rows, y, tiles)
    return y


# ---- block prefill v1: q/k-norm + RoPE fused into the QKV epilogue -----------------------------------------
@nki.jit
def attention_block_prefill_v1(x, w_qkv, w_o, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps):
    """As attention_block_prefill_v0 with the projection's PSUM tiles evicted, normed and rotated on the
    way to SBUF (``_block_prefill_inputs``): q, k and v never touch HBM but for the K/V cache rows; the
    attention runs on the SBUF tiles. The attention output still goes through HBM to the o projection. The
    same instructions on the same values: v0's bits."""
    T, H, n_q, n_kv, d = _check_block_prefill(x, w_qkv, w_o, k_cache, v_cache)
    g = n_q // n_kv
    y = nl.ndarray((T, H), dtype=x.dtype, buffer=nl.shared_hbm)
    qT, kT, v_tiles, tiles, wo_rows = _block_prefill_inputs(
        x, w_qkv, w_o, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps, split=False
    )
    o_hbm = nl.ndarray((T, n_q * d), dtype=x.dtype, buffer=nl.hbm)
    for q0, tq in tiles:
        o = _prefill_attend_tile(qT, kT, v_tiles, q0, tq, 0, g)
        nisa.dma_copy(dst=o_hbm[q0 : q0 + tq, :].reshape((tq, n_q, d)), src=o)
    _o_proj_from_hbm(o_hbm, wo_rows, y, tiles)
    return y


# ---- block prefill v2: the o projection as the attention's epilogue, LNC=2 ---------------------------------
@nki.jit
def attention_block_prefill_v2(x, w_qkv, w_o, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps):
    """As attention_block_prefill_v1 on the two cores of an LNC=2 launch with the o projection fused: no
    HBM round trip left. Split as prefill v4-v6: core c projects, norms and attends query heads
    [c·n_q/2, (c+1)·n_q/2); core 0 projects k (and writes the K rows), core 1 v (the V rows), swapped per
    token tile. Each query tile's [tq, n_q/2, d] attention output is PE-transposed to [P, ·, tq] and
    swapped with the peer's; core c then multiplies all n_q heads with w_o[:, its half of y] and stores
    y[:, that half]. Order-preserving: the o contraction runs over the heads in order 0 … n_q − 1 on both
    cores (not own heads first, whose other order of the fp32 sums would change bits), and every PSUM
    block is the one-core versions' matmul: v1's bits. Pipelined: a query tile attends as soon as its
    keys are projected (``on_tile``), and its o projection runs during the next tile's softmax
    (``after_scores``), so the swap's latency hides behind it."""
    T, H, n_q, n_kv, d = _check_block_prefill(x, w_qkv, w_o, k_cache, v_cache)
    P, g, Hc = nl.tile_size.pmax, n_q // n_kv, H // 2
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    assert n_prog == 2, f"attention_block_prefill_v2 is an LNC=2 kernel, launched on {n_prog} core(s)"
    y = nl.ndarray((T, H), dtype=x.dtype, buffer=nl.shared_hbm)
    h0, nh = lnc_share(n_q)
    blocks = _col_blocks([(pid * Hc, (pid + 1) * Hc)])
    kc = nh * d // P  # contraction tiles per core
    pending = []  # the previous query tile's o projection: (stationaries, w_o rows, its first token)

    def o_proj_pending():
        if pending:
            stat, wo_rows, t0 = pending.pop()
            _o_proj_rows(stat, wo_rows, blocks, pid * Hc, y, t0)

    def attend(q0, tq, qT, kT, v_tiles, wo_rows):
        o = _prefill_attend_tile(qT, kT, v_tiles, q0, tq, h0, g, after_scores=o_proj_pending)
        o = o.reshape((tq, nh * d))
        t_psum = nl.ndarray((P, kc, tq), dtype=x.dtype, buffer=nl.psum)
        for j in range(kc):
            nisa.nc_transpose(dst=t_psum[:, j, :], data=o[:, j * P : (j + 1) * P])
        mine = nl.ndarray((P, kc, tq), dtype=x.dtype, buffer=nl.sbuf)
        nisa.tensor_copy(dst=mine, src=t_psum)
        theirs = nl.ndarray((P, kc, tq), dtype=x.dtype, buffer=nl.sbuf)
        nisa.sendrecv(src=mine, dst=theirs, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=1)
        halves = (mine, theirs) if pid == 0 else (theirs, mine)  # heads 0 … n_q − 1 in order
        pending.append(([t[:, j, :] for t in halves for j in range(kc)], wo_rows, q0))

    _block_prefill_inputs(
        x, w_qkv, w_o, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps, split=True, on_tile=attend
    )
    o_proj_pending()
    return y
