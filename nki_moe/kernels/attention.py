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
    attention_prefill_v0 prefill, one core: norm + RoPE per 128-token tile (all heads per instruction), K/V
                         written to rows 0..T-1; per head and query tile the scores (key tiles past the
                         diagonal skipped, the diagonal masked with -inf) go to an HBM scratch and back
    attention_prefill_v1 the scores stay in SBUF: no scratch, no second pass
    attention_prefill_v2 flash attention: online softmax over 128 queries x 512 keys, running max and sum
    attention_prefill_v3 v1 with each query tile's heads interleaved stage by stage and the PSUM evictions
                         on ACT, so PE, ACT, DVE and GpSimd overlap
    attention_prefill_v4 v3 on the two cores of an LNC=2 launch: the query heads split 4/4, core 0 writes
                         the K cache rows and core 1 the V rows

Run: ``nki_moe.sim.run(attention_block_v3, x, w_qkv, w_o, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache,
L, eps, lnc=2)``; prefill: ``nki_moe.sim.run(attention_prefill_v4, q, k, v, q_norm_w, k_norm_w, cos, sin,
k_cache, v_cache, eps, lnc=2)``; checked in tests/kernels/test_attention.py.

Limits (asserted at entry):
    d <= 128, d even             v0-v3  one head on the partitions; rotate-half needs two halves
    n_q <= 128, n_q % n_kv == 0  v0-v3  all query heads on the partitions of one tile
    n_q % 2 == 0                 prefill v4  the query heads split evenly over the two cores
    0 <= L < cap                 v0-v3  the new row fits the cache (prefill: 1 <= T <= cap)
    H % 128 == 0                 v0-v3  (block) whole contraction tiles and 128-column o groups
    H % 256 == 0, n_q even       v1-v3  (block) halves of the weights and heads for the two cores
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


def _norm_rope(x_t, w_t, cos_t, sin_t, eps):
    """bf16 [rows, d] = RoPE(RMSNorm(x_t) · w) per row (a head), at HF's rounding points.

    x_t: SBUF [rows, d] heads on partitions; w_t, cos_t, sin_t: SBUF [>= rows, d] broadcasts of the norm
    weight and of the position's cos/sin row (``_broadcast``); their first ``rows`` partitions are used.
    RMSNorm: x·rstd rounded, then ·w rounded; RoPE: x·cos and rotate_half(x)·sin rounded, their sum rounded.
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
