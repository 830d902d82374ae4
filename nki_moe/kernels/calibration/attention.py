"""Fused attention decode (TKG) block of Qwen3-30B-A3B at TP=4: [MEGA] attn_tkg/OPTIMIZATION_LOG.md (K15).

One token, one rank: QKV projections (8 Q heads, 1 KV head, d=128) → per-head RMSNorm of q and k → RoPE →
two-pass decode attention over S_prior cached tokens + the new one → O-projection to H. Structure of the
published v13_BC (59.47 µs on Trn2 at LNC=2, [MEGA] K15; 53.71 µs for the v13bc variant on Trn3,
K15b): a single program (the published kernel has no SPMD grid); all 8 Wq head tiles and 8 Wo head tiles
are loaded as [128, 2048] DMAs (512 KiB each, 4 KiB contiguous per partition), all with hardware DGE; vectors
live as columns [d, heads]; cross-partition sums are matmuls with an all-ones matrix; [P, 1] → [P, n]
broadcasts are two PE transposes; K-cache tiles are loaded as [S, d] and transposed on TensorE; the mask is
built on chip from the position. Pass 1 computes and masks every score tile and the global max; pass 2
exponentiates, sums (ones matmul) and accumulates V. HBM bytes ≈ 9.4 MB of weights + 0.33 MB of cache.

Layouts (chosen so every weight DMA reads contiguous rows and the maths is x @ W):
  x [1, H]; wq [Hq, 128, H] with wq[h, p, t·128 + c] = Wq[t·128 + p, h·128 + c] (Wq [H, Hq·d]);
  wk, wv [128, H] in the same tiled layout; wo [Hq·d, H]; q_norm, k_norm, cos, sin [1, d];
  k_cache, v_cache [S_prior, d] (S_prior multiple of 128); pos [1, 1] int32 = valid cached tokens.
"""

import nki
import nki.isa as nisa
import nki.language as nl

P = 128
F_MAX = 512  # one fp32 PSUM bank
EPS = 1e-6
NEG = -1e9  # additive mask of invalid cache rows
F32, BF16 = nl.float32, nl.bfloat16


def _sb(shape, dtype=F32, buffer=nl.sbuf):
    return nl.ndarray(shape, dtype=dtype, buffer=buffer)


def _evict(psum, dtype=F32):
    """PSUM → SBUF copy (the ACT/DVE read-out every matmul result needs)."""
    out = _sb(psum.shape, dtype)
    nisa.tensor_copy(dst=out, src=psum)
    return out


def _broadcast(col, n):
    """[P, 1] fp32 → [P, n] by two PE transposes of a stride-0 view (the published broadcast idiom)."""
    t = _evict(_transpose(col.ap([[1, P], [0, n]]), (n, P)))
    return _evict(_transpose(t, (P, n)))


def _transpose(data, shape):
    ps = _sb(shape, F32, nl.psum)
    nisa.nc_transpose(dst=ps, data=data)
    return ps


def _load_col(vec):
    """[1, d] bf16 HBM vector → [d, 1] fp32 column."""
    col = _sb((P, 1), BF16)
    nisa.dma_copy(dst=col, src=vec.ap([[1, P], [1, 1]]), dge_mode=nisa.dge_mode.hwdge)
    return _evict(col)


def _gemv(w_tile, x_cols, n_t):
    """[P, 1] fp32 PSUM: Σ_t w_tile[:, t-th 128 block]ᵀ · x_cols[:, t] (weights stationary)."""
    ps = _sb((P, 1), F32, nl.psum)
    for t in nl.sequential_range(n_t):
        nisa.nc_matmul(
            dst=ps, stationary=w_tile[:, t * P : (t + 1) * P], moving=x_cols[:, t : t + 1], accumulate=t > 0
        )
    return ps


def _rmsnorm_rope(v, ones, w_b, cos_b, sin_b):
    """Per-column RMSNorm over the d partitions (ones matmul), weight, then RoPE; v [P, n] fp32."""
    n = v.shape[1]
    sq = _sb((P, n), BF16)
    nisa.tensor_tensor(dst=sq, data1=v, data2=v, op=nl.multiply)
    tot = _sb((P, n), F32, nl.psum)
    nisa.nc_matmul(dst=tot, stationary=ones, moving=sq)
    ms = _sb((P, n))
    nisa.tensor_scalar(dst=ms, data=tot, op0=nl.multiply, operand0=1.0 / P, op1=nl.add, operand1=EPS)
    nisa.activation(dst=ms, op=nl.rsqrt, data=ms)
    vn = _sb((P, n))
    nisa.tensor_tensor(dst=vn, data1=v, data2=ms, op=nl.multiply)
    nisa.tensor_tensor(dst=vn, data1=vn, data2=w_b, op=nl.multiply)
    half = P // 2
    rot = _sb((P, n))  # rotate_half: [-v[half:], v[:half]]
    nisa.tensor_scalar(dst=rot[0:half, :], data=vn[half:P, :], op0=nl.multiply, operand0=-1.0)
    nisa.tensor_copy(dst=rot[half:P, :], src=vn[0:half, :])
    out = _sb((P, n))
    nisa.tensor_tensor(dst=out, data1=vn, data2=cos_b, op=nl.multiply)
    nisa.tensor_tensor(dst=rot, data1=rot, data2=sin_b, op=nl.multiply)
    nisa.tensor_tensor(dst=out, data1=out, data2=rot, op=nl.add)
    return out


def _mask(pos_f, iota_p, s_t, n):
    """[P, n] additive mask of K-cache tile s_t: 0 where s_t·128 + p < pos, −1e9 elsewhere."""
    thr = _sb((1, 1))
    nisa.tensor_scalar(
        dst=thr, data=pos_f, op0=nl.multiply, operand0=-1.0, op1=nl.add, operand1=float(s_t * P)
    )
    thr_p = _evict(_transpose(thr.ap([[1, 1], [0, P]]), (P, 1)))
    m = _sb((P, 1))
    nisa.tensor_tensor(dst=m, data1=iota_p, data2=thr_p, op=nl.add)
    nisa.tensor_scalar(dst=m, data=m, op0=nl.add, operand0=1.0)
    nisa.activation(dst=m, op=nl.relu, data=m)
    nisa.tensor_scalar(dst=m, data=m, op0=nl.minimum, operand0=1.0, op1=nl.multiply, operand1=NEG)
    return _broadcast(m, n)


@nki.jit
def attention_decode_block(x, wq, wk, wv, wo, q_norm, k_norm, cos, sin, k_cache, v_cache, pos):
    """Fused attention TKG block for one token (single program).

    Args: see the module docstring for layouts. Hq = wq.shape[0] query heads share the one KV head.
    Returns:
        out [1, H] bf16 (attention output after O-proj), k_new [1, d] and v_new [1, d] bf16 (cache update).
    """
    HQ, _, H = wq.shape
    S, D = k_cache.shape
    assert D == P and H % P == 0 and S % P == 0, f"d={D} must be 128; H={H}, S={S} multiples of 128"
    assert wo.shape == (HQ * P, H) and H % F_MAX == 0, f"wo {wo.shape} must be [{HQ * P}, {H}]"
    HT, ST, HB = H // P, S // P, H // F_MAX
    hw = nisa.dge_mode.hwdge
    out = nl.ndarray((1, H), dtype=BF16, buffer=nl.shared_hbm)
    k_new = nl.ndarray((1, P), dtype=BF16, buffer=nl.shared_hbm)
    v_new = nl.ndarray((1, P), dtype=BF16, buffer=nl.shared_hbm)
    qnw, knw, cos_c, sin_c = (_load_col(v) for v in (q_norm, k_norm, cos, sin))
    ones = _sb((P, P), BF16)
    nisa.memset(dst=ones, value=1.0)
    x_cols = _sb((P, HT), BF16)  # x_cols[p, t] = x[t·128 + p]
    nisa.dma_copy(dst=x_cols, src=x.ap([[1, P], [P, HT]]), dge_mode=hw)
    wq_sb = [_sb((P, H), BF16) for _ in range(HQ)]  # all Wq DMAs issued up front
    for h in nl.sequential_range(HQ):
        nisa.dma_copy(dst=wq_sb[h], src=wq[h], dge_mode=hw)
    wk_sb, wv_sb = _sb((P, H), BF16), _sb((P, H), BF16)
    nisa.dma_copy(dst=wk_sb, src=wk, dge_mode=hw)
    nisa.dma_copy(dst=wv_sb, src=wv, dge_mode=hw)

    # ---- K and V of the new token ----------------------------------------------------------------
    k_rope = _rmsnorm_rope(_evict(_gemv(wk_sb, x_cols, HT)), ones, knw, cos_c, sin_c)
    v_col = _evict(_gemv(wv_sb, x_cols, HT))
    for col, dst in ((k_rope, k_new), (v_col, v_new)):
        col_bf = _evict(col, BF16)
        row_ps = _sb((1, P), BF16, nl.psum)
        nisa.nc_transpose(dst=row_ps, data=col_bf)
        nisa.dma_copy(dst=dst, src=_evict(row_ps, BF16), dge_mode=hw)

    # ---- Q: 8 head GEMVs, packed [d, Hq], RMSNorm + RoPE, 1/sqrt(d) --------------------------------
    q = _sb((P, HQ))
    for h in nl.sequential_range(HQ):
        nisa.tensor_copy(dst=q[:, h : h + 1], src=_gemv(wq_sb[h], x_cols, HT))
    q = _rmsnorm_rope(q, ones, _broadcast(qnw, HQ), _broadcast(cos_c, HQ), _broadcast(sin_c, HQ))
    q_bf = _sb((P, HQ), BF16)
    nisa.tensor_scalar(dst=q_bf, data=q, op0=nl.multiply, operand0=P**-0.5)

    wo_sb = [_sb((P, H), BF16) for _ in range(HQ)]  # issued here so they overlap the decode
    for h in nl.sequential_range(HQ):
        nisa.dma_copy(dst=wo_sb[h], src=wo[h * P : (h + 1) * P, :], dge_mode=hw)

    # ---- score of the new token: Σ_d k·q per head (ones matmul broadcasts it to all partitions) --------
    kq = _sb((P, HQ), BF16)
    nisa.tensor_tensor(dst=kq, data1=_broadcast(k_rope, HQ), data2=q_bf, op=nl.multiply)
    s_new_ps = _sb((P, HQ), F32, nl.psum)
    nisa.nc_matmul(dst=s_new_ps, stationary=ones, moving=kq)
    s_new = _evict(s_new_ps)

    # ---- cache tiles: K loaded [s, d] and transposed on PE; masks from the position -------------------
    pos_i = _sb((1, 1), nl.int32)
    nisa.dma_copy(dst=pos_i, src=pos, dge_mode=hw)
    pos_f = _evict(pos_i)
    iota_p = _sb((P, 1))
    nisa.iota(dst=iota_p, pattern=[[1, 1]], offset=0, channel_multiplier=1)
    k_t, masks, v_t = [], [], []
    for s in nl.sequential_range(ST):
        k_raw = _sb((P, P), BF16)
        nisa.dma_copy(dst=k_raw, src=k_cache[s * P : (s + 1) * P, :], dge_mode=hw)
        kt_ps = _sb((P, P), BF16, nl.psum)
        nisa.nc_transpose(dst=kt_ps, data=k_raw)
        k_t.append(_evict(kt_ps, BF16))
        masks.append(_mask(pos_f, iota_p, s, HQ))
    for s in nl.sequential_range(ST):
        v_tile = _sb((P, P), BF16)
        nisa.dma_copy(dst=v_tile, src=v_cache[s * P : (s + 1) * P, :], dge_mode=hw)
        v_t.append(v_tile)

    # ---- pass 1: masked scores [s, Hq] per tile and the global max per head ---------------------------
    gmax = _sb((HQ, 1))
    nisa.tensor_reduce(dst=gmax, op=nl.maximum, data=_evict(_transpose(s_new, (HQ, P))), axis=1)
    scores = []
    for s in nl.sequential_range(ST):
        sc_ps = _sb((P, HQ), F32, nl.psum)
        nisa.nc_matmul(dst=sc_ps, stationary=k_t[s], moving=q_bf)
        sc = _sb((P, HQ))
        nisa.tensor_tensor(dst=sc, data1=sc_ps, data2=masks[s], op=nl.add)
        scores.append(sc)
        tmax = _sb((HQ, 1))
        nisa.tensor_reduce(dst=tmax, op=nl.maximum, data=_evict(_transpose(sc, (HQ, P))), axis=1)
        nisa.tensor_tensor(dst=gmax, data1=gmax, data2=tmax, op=nl.maximum)
    nisa.tensor_scalar(dst=gmax, data=gmax, op0=nl.multiply, operand0=-1.0)
    neg_max = _evict(_transpose(gmax.ap([[1, HQ], [0, P]]), (P, HQ)))

    # ---- pass 2: exp, softmax sums (ones matmul) and V accumulation -------------------------------------
    acc, den = _sb((P, HQ)), _sb((P, HQ))
    nisa.memset(dst=acc, value=0.0)
    nisa.memset(dst=den, value=0.0)
    for s in nl.sequential_range(ST):
        e = _sb((P, HQ))
        nisa.tensor_tensor(dst=e, data1=scores[s], data2=neg_max, op=nl.add)
        nisa.activation(dst=e, op=nl.exp, data=e)
        e_bf = _evict(e, BF16)
        for stat, lhs in ((den, ones), (acc, v_t[s])):
            ps = _sb((P, HQ), F32, nl.psum)
            nisa.nc_matmul(dst=ps, stationary=lhs, moving=e_bf)
            nisa.tensor_tensor(dst=stat, data1=stat, data2=_evict(ps), op=nl.add)
    e_new = _sb((P, HQ))
    nisa.tensor_tensor(dst=e_new, data1=s_new, data2=neg_max, op=nl.add)
    nisa.activation(dst=e_new, op=nl.exp, data=e_new)
    nisa.tensor_tensor(dst=den, data1=den, data2=e_new, op=nl.add)
    nisa.tensor_tensor(dst=e_new, data1=e_new, data2=_broadcast(v_col, HQ), op=nl.multiply)
    nisa.tensor_tensor(dst=acc, data1=acc, data2=e_new, op=nl.add)
    nisa.reciprocal(dst=den, data=den)
    attn = _sb((P, HQ), BF16)
    nisa.tensor_tensor(dst=attn, data1=acc, data2=den, op=nl.multiply)

    # ---- O-projection: out[0, j] = Σ_h attn[:, h] · wo[h·128 + :, j], 512 columns per PSUM bank ------
    res = [_sb((1, F_MAX), F32, nl.psum) for _ in range(HB)]
    for h in nl.sequential_range(HQ):
        for b in nl.sequential_range(HB):
            nisa.nc_matmul(
                dst=res[b],
                stationary=attn[:, h : h + 1],
                moving=wo_sb[h][:, b * F_MAX : (b + 1) * F_MAX],
                accumulate=h > 0,
            )
    for b in nl.sequential_range(HB):
        nisa.dma_copy(dst=out[:, b * F_MAX : (b + 1) * F_MAX], src=_evict(res[b], BF16), dge_mode=hw)
    return out, k_new, v_new
