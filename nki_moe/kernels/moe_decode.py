"""MoE decode (token generation): y = Σ_k w_k · down_k(silu(gate_k(x)) ⊙ up_k(x)) over each token's 8 experts.

Shape legend: T tokens (decode: 1; speculative/batched decode: ≤ 8), H hidden (2048), E experts (128),
k = 8 experts per token, I one rank's share of each expert's intermediate dim (768 / TP: 192 at TP = 4),
P = nl.tile_size.pmax = 128 partitions, KT = H / P contraction tiles, HB = 512 fp32 columns (one PSUM bank).
Layout (the reference's, ``nki_moe.reference.moe_experts``): x [T, H] after the post-attention RMSNorm; idx
[T, k] uint32 and weights [T, k] (the router's top-8 and renormalised weights); w_gate_up [E, H, 2I] (gate
columns then up columns, one rank's shard); w_down [E, I, H]. Weights are the stationary operand of the
gate/up GEMVs (their intermediate dim lands on the partitions, which is what the down projection contracts
over); the down projection streams its weights as the moving operand into [1, 512] PSUM rows. Accumulation
is fp32 (PSUM, then SBUF); the output is rounded to x.dtype once.

Versions (each adds one idea):
    moe_decode_v0  all-expert: stream all E experts' weights, GEMMs over all T tokens, scale each expert's
                   output by a dense routing vector built on DVE (E/k = 16x the bytes and MACs)
    moe_decode_v1  selective: the ids stay in SBUF and drive indirect DMAs (scalar_offset) of exactly the
                   chosen experts' gate, up and down weights, one (token, slot) pair at a time
    moe_decode_v2  contraction permuted (h = p·KT + kt): each partition's share of gate|up is one contiguous
                   run, so gate and up arrive in one DMA per expert at >= 2 KiB per descriptor, and x loads
                   in the same permutation with one DMA (no PE transposes)
    moe_decode_v3  LNC=2: the 8 slots split 4 / 4 between the two cores (balanced whatever the routing); each
                   core owns half of H in the output, the partial sums crossing over by sendrecv
    moe_decode_v4  the DMA side: weight loads issued up to 4 pairs ahead of their compute, the 64-row down
                   chunk (I = 192) alternating between partitions 0-63 and 64-127 so all 16 DMA engines carry
                   it, w_k folded into act so a token's slots accumulate in one PSUM row, read out once
                   (the ids loaded first, one register per pair in flight, the one-partition read-out
                   split between ACT and DVE)
    moe_decode_v5  the fused layer (registered as op ``moe_layer_decode``): RMSNorm, router logits, top-8
                   and softmax of the winners in the same launch, the ids going from nc_find_index8 straight
                   into the expert DMAs' register, then v4's experts
    moe_decode_v6  the head: h before the router weights, the router split in two DMAs and computed
                   transposed, the first expert DMAs right after the ids, the softmax weights broadcast by a
                   one-hot matmul instead of two dependent DMAs (registered as the layer's v1)
    moe_decode_v7  the tail: the down projection split by output column (each core all 8 slots, its half of
                   H), the acts exchanged mid-stream instead of the partial sums after it, y produced
                   transposed on [128, 8] PSUM (the layer's v2)
    moe_decode_v8  v7 with a core's first 2 slots on full down rows again, their partial sums joining the
                   acts in the mid-stream exchange (the layer's v3)

Variant (not a rung): ``moe_decode_fp8`` is v4 on float8_e4m3 experts with per-channel scales, a numerics
change (host-side layout: ``nki_moe.kernels.moe_layouts.quantize_experts_fp8``).

Indirect DMA: the pair's expert id is loaded from the SBUF copy of idx into a register, which is the weight
DMAs' ``scalar_offset`` (one runtime base per DMA: hardware DGE can do that, only vector_offset gathers need
software DGE; AWS's selective-expert kernel selects experts the same way, [NKILIB-MOE]).

Run: ``nki_moe.sim.run(moe_decode_v8[2], h, gamma, w_router, w_gate_up, w_down, 1e-6)`` (the fused layer,
v5-v8; v0-v4 take the router's output instead: x, idx, weights, w_gate_up, w_down); checked in
tests/kernels/test_moe_decode.py and notebooks/04_moe_decode.py.

Limits (asserted at entry; x [T, H], idx/weights [T, k], w_gate_up [E, H, 2I], w_down [E, I, H]):
    1 <= T <= 128                 v0-v8  tokens on the partitions of the routing tiles
    H % 512 == 0                  v0-v8  whole [128, ·] contraction tiles and [1, 512] PSUM output rows
    k == 8                        v0-v4  the router's top-8
    8 <= E <= 512                 v5-v8  max8 needs 8 candidates; one PSUM bank holds 512 fp32 logits
"""

import nki
import nki.isa as nisa
import nki.language as nl

from nki_moe.kernels.tiles import lnc_share, load_transposed

TOP_K = 8
HB = 512  # fp32 output columns per PSUM bank (2 KiB per partition)


def _check(x, idx, weights, w_gate_up, w_down):
    """Restate the layout limits; returns (T, H, E, inter)."""
    T, H = x.shape
    E, H_, I2 = w_gate_up.shape
    inter = I2 // 2
    assert H == H_ and tuple(w_down.shape) == (E, inter, H), (
        f"shape mismatch: x [T, {H}], w_gate_up [{E}, {H_}, {I2}], w_down {tuple(w_down.shape)}"
    )
    assert tuple(idx.shape) == (T, TOP_K) and tuple(weights.shape) == (T, TOP_K), (
        f"idx {tuple(idx.shape)} and weights {tuple(weights.shape)} must be [T={T}, {TOP_K}]"
    )
    assert 1 <= T <= nl.tile_size.pmax, f"T={T} tokens must be in [1, 128]"
    assert H % HB == 0, f"H={H} must be a multiple of {HB}"
    return T, H, E, inter


def i_chunks(inter):
    """(first row, rows) of each <=128-row chunk of the intermediate dim (the down projection's K)."""
    P = nl.tile_size.pmax
    return [(i0, min(P, inter - i0)) for i0 in range(0, inter, P)]


# ---- v0: every expert, weighted by a dense routing vector ------------------------------------------------
@nki.jit
def moe_decode_v0(x, idx, weights, w_gate_up, w_down):
    """Args: x [T, H] bf16, idx [T, 8] uint32, weights [T, 8] bf16, w_gate_up [E, H, 2I],
    w_down [E, I, H]. Returns: y [T, H] x.dtype."""
    T, H, E, inter = _check(x, idx, weights, w_gate_up, w_down)
    P = nl.tile_size.pmax
    KT, I2 = H // P, 2 * inter
    y = nl.ndarray((T, H), dtype=x.dtype, buffer=nl.shared_hbm)
    xT = load_transposed(x, 0, T)  # [P, KT, T], h = kt·128 + p
    # dense[t, e] = weights[t, j] where idx[t, j] == e, else 0 (eight compares on DVE)
    idx_sb = nl.ndarray((T, TOP_K), dtype=idx.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=idx_sb, src=idx)
    w_sb = nl.ndarray((T, TOP_K), dtype=weights.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=w_sb, src=weights)
    idx_f = nl.ndarray((T, TOP_K), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=idx_f, src=idx_sb)
    w_f = nl.ndarray((T, TOP_K), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=w_f, src=w_sb)
    iota_e = nl.ndarray((T, E), dtype=nl.float32, buffer=nl.sbuf)
    nisa.iota(dst=iota_e, pattern=[[1, E]], offset=0, channel_multiplier=0)
    dense = nl.ndarray((T, E), dtype=nl.float32, buffer=nl.sbuf)
    nisa.memset(dst=dense, value=0.0)
    for j in range(TOP_K):
        hit = nl.ndarray((T, E), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_scalar(
            dst=hit,
            data=iota_e,
            op0=nl.equal,
            operand0=idx_f[:, j : j + 1],
            op1=nl.multiply,
            operand1=w_f[:, j : j + 1],
        )
        nisa.tensor_tensor(dst=dense, data1=dense, data2=hit, op=nl.add)
    acc = nl.ndarray((T, H), dtype=nl.float32, buffer=nl.sbuf)
    nisa.memset(dst=acc, value=0.0)
    for e in range(E):
        gu = nl.ndarray((P, KT, I2), dtype=w_gate_up.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=gu, src=w_gate_up.ap(pattern=[[I2, P], [P * I2, KT], [1, I2]], offset=e * H * I2))
        # act[i, t] = silu(gate) · up, intermediate dim on the partitions (the down projection's contraction)
        acts = []
        for i0, isz in i_chunks(inter):
            gu_ps = nl.ndarray((isz, 2, T), dtype=nl.float32, buffer=nl.psum)
            for half, c0 in ((0, i0), (1, inter + i0)):
                for kt in range(KT):
                    nisa.nc_matmul(
                        dst=gu_ps[:, half, :],
                        stationary=gu[:, kt, c0 : c0 + isz],
                        moving=xT[:, kt, :],
                        accumulate=kt > 0,
                    )
            g = nl.ndarray((isz, T), dtype=nl.float32, buffer=nl.sbuf)
            nisa.activation(dst=g, op=nl.silu, data=gu_ps[:, 0, :])
            act = nl.ndarray((isz, T), dtype=x.dtype, buffer=nl.sbuf)
            nisa.tensor_tensor(dst=act, data1=g, data2=gu_ps[:, 1, :], op=nl.multiply)
            dn = nl.ndarray((isz, H), dtype=w_down.dtype, buffer=nl.sbuf)
            nisa.dma_copy(dst=dn, src=w_down[e, i0 : i0 + isz, :])
            acts.append((act, dn))
        for h0 in range(0, H, HB):
            y_ps = nl.ndarray((T, HB), dtype=nl.float32, buffer=nl.psum)
            for c, (act, dn) in enumerate(acts):
                nisa.nc_matmul(dst=y_ps, stationary=act, moving=dn[:, h0 : h0 + HB], accumulate=c > 0)
            nisa.scalar_tensor_tensor(
                dst=acc[:, h0 : h0 + HB],
                data=y_ps,
                op0=nl.multiply,
                operand0=dense[:, e : e + 1],
                op1=nl.add,
                operand1=acc[:, h0 : h0 + HB],
            )
    y_sb = nl.ndarray((T, H), dtype=x.dtype, buffer=nl.sbuf)
    nisa.tensor_copy(dst=y_sb, src=acc)
    nisa.dma_copy(dst=y, src=y_sb)
    return y


# ---- v1: only the chosen experts, fetched by indirect DMA -----------------------------------------------
@nki.jit
def moe_decode_v1(x, idx, weights, w_gate_up, w_down):
    """As moe_decode_v0 for the T·8 (token, slot) pairs only: idx drives the weight DMAs' scalar_offset."""
    T, H, E, inter = _check(x, idx, weights, w_gate_up, w_down)
    P = nl.tile_size.pmax
    KT, I2 = H // P, 2 * inter
    y = nl.ndarray((T, H), dtype=x.dtype, buffer=nl.shared_hbm)
    xT = load_transposed(x, 0, T)  # [P, KT, T], h = kt·128 + p
    # ids and weights of every pair on partition 0: pair (t, j) at column t·8 + j
    idx_sb = nl.ndarray((1, T * TOP_K), dtype=idx.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=idx_sb, src=idx.reshape((1, T * TOP_K)))
    w_sb = nl.ndarray((1, T * TOP_K), dtype=weights.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=w_sb, src=weights.reshape((1, T * TOP_K)))
    w_f = nl.ndarray((1, T * TOP_K), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=w_f, src=w_sb)
    e = nisa.register_alloc()  # the expert id of the current pair: the weight DMAs' runtime offset
    for t in range(T):
        acc = nl.ndarray((1, H), dtype=nl.float32, buffer=nl.sbuf)
        nisa.memset(dst=acc, value=0.0)
        for j in range(TOP_K):
            pair = t * TOP_K + j
            nisa.register_load(e, idx_sb[0:1, pair : pair + 1])
            # gate and up in two DMAs, each partition reading KT runs of inter elements (h = kt·128 + p)
            gate = nl.ndarray((P, KT, inter), dtype=w_gate_up.dtype, buffer=nl.sbuf)
            nisa.dma_copy(
                dst=gate,
                src=w_gate_up.ap(pattern=[[I2, P], [P * I2, KT], [1, inter]], offset=0, scalar_offset=e),
            )
            up = nl.ndarray((P, KT, inter), dtype=w_gate_up.dtype, buffer=nl.sbuf)
            nisa.dma_copy(
                dst=up,
                src=w_gate_up.ap(pattern=[[I2, P], [P * I2, KT], [1, inter]], offset=inter, scalar_offset=e),
            )
            acts = []
            for i0, isz in i_chunks(inter):
                gu_ps = nl.ndarray((isz, 2), dtype=nl.float32, buffer=nl.psum)
                for half, w in enumerate((gate, up)):
                    for kt in range(KT):
                        nisa.nc_matmul(
                            dst=gu_ps[:, half : half + 1],
                            stationary=w[:, kt, i0 : i0 + isz],
                            moving=xT[:, kt, t : t + 1],
                            accumulate=kt > 0,
                        )
                g = nl.ndarray((isz, 1), dtype=nl.float32, buffer=nl.sbuf)
                nisa.activation(dst=g, op=nl.silu, data=gu_ps[:, 0:1])
                act = nl.ndarray((isz, 1), dtype=x.dtype, buffer=nl.sbuf)
                nisa.tensor_tensor(dst=act, data1=g, data2=gu_ps[:, 1:2], op=nl.multiply)
                dn = nl.ndarray((isz, H), dtype=w_down.dtype, buffer=nl.sbuf)
                nisa.dma_copy(
                    dst=dn, src=w_down.ap(pattern=[[H, isz], [1, H]], offset=i0 * H, scalar_offset=e)
                )
                acts.append((act, dn))
            for h0 in range(0, H, HB):
                y_ps = nl.ndarray((1, HB), dtype=nl.float32, buffer=nl.psum)
                for c, (act, dn) in enumerate(acts):
                    nisa.nc_matmul(dst=y_ps, stationary=act, moving=dn[:, h0 : h0 + HB], accumulate=c > 0)
                nisa.scalar_tensor_tensor(
                    dst=acc[:, h0 : h0 + HB],
                    data=y_ps,
                    op0=nl.multiply,
                    operand0=w_f[0:1, pair : pair + 1],
                    op1=nl.add,
                    operand1=acc[:, h0 : h0 + HB],
                )
        y_sb = nl.ndarray((1, H), dtype=x.dtype, buffer=nl.sbuf)
        nisa.tensor_copy(dst=y_sb, src=acc)
        nisa.dma_copy(dst=y[t : t + 1, :], src=y_sb)
    return y


# ---- v2: contraction permuted so gate|up is one contiguous run per partition -----------------------------
@nki.jit
def moe_decode_v2(x, idx, weights, w_gate_up, w_down):
    """As moe_decode_v1 with h = p·KT + kt on the contraction tiles: one gate|up DMA per expert, long runs."""
    T, H, E, inter = _check(x, idx, weights, w_gate_up, w_down)
    P = nl.tile_size.pmax
    KT, I2 = H // P, 2 * inter
    y = nl.ndarray((T, H), dtype=x.dtype, buffer=nl.shared_hbm)
    # xT[p, t, kt] = x[t, p·KT + kt]: one DMA of KT-element runs, no PE transposes
    xT = nl.ndarray((P, T, KT), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=xT, src=x.ap(pattern=[[KT, P], [H, T], [1, KT]], offset=0))
    idx_sb = nl.ndarray((1, T * TOP_K), dtype=idx.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=idx_sb, src=idx.reshape((1, T * TOP_K)))
    w_sb = nl.ndarray((1, T * TOP_K), dtype=weights.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=w_sb, src=weights.reshape((1, T * TOP_K)))
    w_f = nl.ndarray((1, T * TOP_K), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=w_f, src=w_sb)
    e = nisa.register_alloc()
    for t in range(T):
        acc = nl.ndarray((1, H), dtype=nl.float32, buffer=nl.sbuf)
        nisa.memset(dst=acc, value=0.0)
        for j in range(TOP_K):
            pair = t * TOP_K + j
            nisa.register_load(e, idx_sb[0:1, pair : pair + 1])
            # rows p·KT … p·KT + KT − 1 of [H, 2I] are one run of KT·2I elements: gate and up in one DMA
            gu = nl.ndarray((P, KT, I2), dtype=w_gate_up.dtype, buffer=nl.sbuf)
            nisa.dma_copy(
                dst=gu, src=w_gate_up.ap(pattern=[[KT * I2, P], [I2, KT], [1, I2]], offset=0, scalar_offset=e)
            )
            acts = []
            for i0, isz in i_chunks(inter):
                gu_ps = nl.ndarray((isz, 2), dtype=nl.float32, buffer=nl.psum)
                for half, c0 in ((0, i0), (1, inter + i0)):
                    for kt in range(KT):
                        nisa.nc_matmul(
                            dst=gu_ps[:, half : half + 1],
                            stationary=gu[:, kt, c0 : c0 + isz],
                            moving=xT[:, t, kt : kt + 1],
                            accumulate=kt > 0,
                        )
                g = nl.ndarray((isz, 1), dtype=nl.float32, buffer=nl.sbuf)
                nisa.activation(dst=g, op=nl.silu, data=gu_ps[:, 0:1])
                act = nl.ndarray((isz, 1), dtype=x.dtype, buffer=nl.sbuf)
                nisa.tensor_tensor(dst=act, data1=g, data2=gu_ps[:, 1:2], op=nl.multiply)
                dn = nl.ndarray((isz, H), dtype=w_down.dtype, buffer=nl.sbuf)
                nisa.dma_copy(
                    dst=dn, src=w_down.ap(pattern=[[H, isz], [1, H]], offset=i0 * H, scalar_offset=e)
                )
                acts.append((act, dn))
            for h0 in range(0, H, HB):
                y_ps = nl.ndarray((1, HB), dtype=nl.float32, buffer=nl.psum)
                for c, (act, dn) in enumerate(acts):
                    nisa.nc_matmul(dst=y_ps, stationary=act, moving=dn[:, h0 : h0 + HB], accumulate=c > 0)
                nisa.scalar_tensor_tensor(
                    dst=acc[:, h0 : h0 + HB],
                    data=y_ps,
                    op0=nl.multiply,
                    operand0=w_f[0:1, pair : pair + 1],
                    op1=nl.add,
                    operand1=acc[:, h0 : h0 + HB],
                )
        y_sb = nl.ndarray((1, H), dtype=x.dtype, buffer=nl.sbuf)
        nisa.tensor_copy(dst=y_sb, src=acc)
        nisa.dma_copy(dst=y[t : t + 1, :], src=y_sb)
    return y


# ---- v3: LNC=2, slots 0-3 on core 0 and 4-7 on core 1, partial sums exchanged by sendrecv ----------------
@nki.jit
def moe_decode_v3(x, idx, weights, w_gate_up, w_down):
    """As moe_decode_v2, launched ``moe_decode_v3[2]``: each core runs 4 of every token's 8 slots (equal bytes
    whatever the routing), then writes one half of H after adding the other core's partial of that half."""
    T, H, E, inter = _check(x, idx, weights, w_gate_up, w_down)
    P = nl.tile_size.pmax
    KT, I2 = H // P, 2 * inter
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    first, count = lnc_share(TOP_K)  # this core's slots
    HS = H // n_prog  # this core's share of the output columns
    y = nl.ndarray((T, H), dtype=x.dtype, buffer=nl.shared_hbm)
    xT = nl.ndarray((P, T, KT), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=xT, src=x.ap(pattern=[[KT, P], [H, T], [1, KT]], offset=0))
    idx_sb = nl.ndarray((1, T * TOP_K), dtype=idx.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=idx_sb, src=idx.reshape((1, T * TOP_K)))
    w_sb = nl.ndarray((1, T * TOP_K), dtype=weights.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=w_sb, src=weights.reshape((1, T * TOP_K)))
    w_f = nl.ndarray((1, T * TOP_K), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=w_f, src=w_sb)
    e = nisa.register_alloc()
    for t in range(T):
        acc = nl.ndarray((1, H), dtype=nl.float32, buffer=nl.sbuf)
        nisa.memset(dst=acc, value=0.0)
        for j in range(first, first + count):
            pair = t * TOP_K + j
            nisa.register_load(e, idx_sb[0:1, pair : pair + 1])
            gu = nl.ndarray((P, KT, I2), dtype=w_gate_up.dtype, buffer=nl.sbuf)
            nisa.dma_copy(
                dst=gu, src=w_gate_up.ap(pattern=[[KT * I2, P], [I2, KT], [1, I2]], offset=0, scalar_offset=e)
            )
            acts = []
            for i0, isz in i_chunks(inter):
                gu_ps = nl.ndarray((isz, 2), dtype=nl.float32, buffer=nl.psum)
                for half, c0 in ((0, i0), (1, inter + i0)):
                    for kt in range(KT):
                        nisa.nc_matmul(
                            dst=gu_ps[:, half : half + 1],
                            stationary=gu[:, kt, c0 : c0 + isz],
                            moving=xT[:, t, kt : kt + 1],
                            accumulate=kt > 0,
                        )
                g = nl.ndarray((isz, 1), dtype=nl.float32, buffer=nl.sbuf)
                nisa.activation(dst=g, op=nl.silu, data=gu_ps[:, 0:1])
                act = nl.ndarray((isz, 1), dtype=x.dtype, buffer=nl.sbuf)
                nisa.tensor_tensor(dst=act, data1=g, data2=gu_ps[:, 1:2], op=nl.multiply)
                dn = nl.ndarray((isz, H), dtype=w_down.dtype, buffer=nl.sbuf)
                nisa.dma_copy(
                    dst=dn, src=w_down.ap(pattern=[[H, isz], [1, H]], offset=i0 * H, scalar_offset=e)
                )
                acts.append((act, dn))
            for h0 in range(0, H, HB):
                y_ps = nl.ndarray((1, HB), dtype=nl.float32, buffer=nl.psum)
                for c, (act, dn) in enumerate(acts):
                    nisa.nc_matmul(dst=y_ps, stationary=act, moving=dn[:, h0 : h0 + HB], accumulate=c > 0)
                nisa.scalar_tensor_tensor(
                    dst=acc[:, h0 : h0 + HB],
                    data=y_ps,
                    op0=nl.multiply,
                    operand0=w_f[0:1, pair : pair + 1],
                    op1=nl.add,
                    operand1=acc[:, h0 : h0 + HB],
                )
        # my half of H = my partial + the other core's partial of it (the halves cross over)
        mine = acc[:, pid * HS : (pid + 1) * HS]
        if n_prog > 1:
            other = 1 - pid
            theirs = nl.ndarray((1, HS), dtype=nl.float32, buffer=nl.sbuf)
            nisa.sendrecv(
                src=acc[:, other * HS : (other + 1) * HS],
                dst=theirs,
                send_to_rank=other,
                recv_from_rank=other,
                pipe_id=0,
            )
            total = nl.ndarray((1, HS), dtype=nl.float32, buffer=nl.sbuf)
            nisa.tensor_tensor(dst=total, data1=mine, data2=theirs, op=nl.add)
            mine = total
        y_sb = nl.ndarray((1, HS), dtype=x.dtype, buffer=nl.sbuf)
        nisa.tensor_copy(dst=y_sb, src=mine)
        nisa.dma_copy(dst=y[t : t + 1, pid * HS : (pid + 1) * HS], src=y_sb)
    return y


# ---- v4: loads issued DEPTH pairs ahead, w_k folded into act, every slot accumulated in PSUM ---------------
def _row_offsets(inter, n):
    """Start partition of each intermediate chunk of pair n: a chunk of <= 64 rows (I = 192: rows 128-191)
    goes on partitions 64+ for every other pair, so the DMA engines of partitions 64-127 (8 of the 16)
    carry it half of the time."""
    return [64 if isz <= 64 and n % 2 else 0 for _, isz in i_chunks(inter)]


def _load_expert(w_gate_up, w_down, e_id, e, rows0):
    """Start the DMAs of one pair's expert, id ``e_id`` (a 1x1 SBUF view) loaded into register ``e`` (v2's
    gate|up run; down chunk c on partitions rows0[c] + ...): returns the (gate|up, down) tiles."""
    P = nl.tile_size.pmax
    _, H, I2 = w_gate_up.shape
    KT = H // P
    chunks = i_chunks(I2 // 2)
    nisa.register_load(e, e_id)
    gu = nl.ndarray((P, KT, I2), dtype=w_gate_up.dtype, buffer=nl.sbuf)
    nisa.dma_copy(
        dst=gu, src=w_gate_up.ap(pattern=[[KT * I2, P], [I2, KT], [1, I2]], offset=0, scalar_offset=e)
    )
    dn = nl.ndarray((P, len(chunks), H), dtype=w_down.dtype, buffer=nl.sbuf)
    for c, ((i0, isz), p0) in enumerate(zip(chunks, rows0)):
        nisa.dma_copy(
            dst=dn[p0 : p0 + isz, c, :],
            src=w_down.ap(pattern=[[H, isz], [1, H]], offset=i0 * H, scalar_offset=e),
        )
    return gu, dn


@nki.jit
def moe_decode_v4(x, idx, weights, w_gate_up, w_down):
    """As moe_decode_v3 (launch ``moe_decode_v4[2]``) with the weight DMAs issued DEPTH pairs ahead of the
    compute that uses them (up to 4, as SBUF allows), w_k applied to act so all of a token's slots on a core
    accumulate into one [1, H] PSUM row (4 banks), read out once per token."""
    T, H, E, inter = _check(x, idx, weights, w_gate_up, w_down)
    P = nl.tile_size.pmax
    KT, I2 = H // P, 2 * inter
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    first, count = lnc_share(TOP_K)
    HS = H // n_prog
    chunks = i_chunks(inter)
    per_pair = (KT * I2 + len(chunks) * H) * 2  # SBUF bytes per partition of one expert's weights
    depth = max(1, min(4, (96 * 1024) // per_pair))
    y = nl.ndarray((T, H), dtype=x.dtype, buffer=nl.shared_hbm)
    # the ids first: the first weight DMA waits for them (register_load), x only for the first matmul
    idx_sb = nl.ndarray((1, T * TOP_K), dtype=idx.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=idx_sb, src=idx.reshape((1, T * TOP_K)))
    xT = nl.ndarray((P, T, KT), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=xT, src=x.ap(pattern=[[KT, P], [H, T], [1, KT]], offset=0))
    # every pair's weight on every partition (partition step 0): the per-partition scale of act
    w_b = nl.ndarray((P, T * TOP_K), dtype=weights.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=w_b, src=weights.ap(pattern=[[0, P], [1, T * TOP_K]], offset=0))
    w_f = nl.ndarray((P, T * TOP_K), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=w_f, src=w_b)
    pairs = [t * TOP_K + j for t in range(T) for j in range(first, first + count)]  # this core's pairs
    # one register per pair in flight: loading pair n + depth's id does not wait for pair n's DMAs
    regs = [nisa.register_alloc() for _ in range(depth)]
    rows0 = [_row_offsets(inter, n) for n in range(len(pairs))]
    ids = [idx_sb[0:1, pair : pair + 1] for pair in pairs]
    loaded = [_load_expert(w_gate_up, w_down, ids[n], regs[n], rows0[n]) for n in range(depth)]
    for n, pair in enumerate(pairs):
        t, j = divmod(pair, TOP_K)
        gu, dn = loaded.pop(0)  # (rebinding gu, dn ends the previous pair's tiles before the next load)
        if n + depth < len(pairs):  # prefetch: the DMAs of pair n + depth go out before pair n computes
            loaded.append(_load_expert(w_gate_up, w_down, ids[n + depth], regs[n % depth], rows0[n + depth]))
        if j == first:
            y_ps = nl.ndarray((1, H), dtype=nl.float32, buffer=nl.psum)  # H / 512 banks
        acts = []
        for (i0, isz), p0 in zip(chunks, rows0[n]):
            # a chunk on partitions 64+ is computed in the right half of the PE array (tile_position)
            tiling = dict(tile_position=(0, 64), tile_size=(128, 64)) if p0 else {}
            gu_ps = nl.ndarray((P, 2), dtype=nl.float32, buffer=nl.psum)
            for half, c0 in ((0, i0), (1, inter + i0)):
                for kt in range(KT):
                    nisa.nc_matmul(
                        dst=gu_ps[p0 : p0 + isz, half : half + 1],
                        stationary=gu[:, kt, c0 : c0 + isz],
                        moving=xT[:, t, kt : kt + 1],
                        accumulate=kt > 0,
                        **tiling,
                    )
            g = nl.ndarray((P, 1), dtype=nl.float32, buffer=nl.sbuf)
            nisa.activation(dst=g[p0 : p0 + isz], op=nl.silu, data=gu_ps[p0 : p0 + isz, 0:1])
            act = nl.ndarray((P, 1), dtype=x.dtype, buffer=nl.sbuf)  # w_k · silu(gate) · up
            nisa.scalar_tensor_tensor(
                dst=act[p0 : p0 + isz],
                data=g[p0 : p0 + isz],
                op0=nl.multiply,
                operand0=w_f[p0 : p0 + isz, pair : pair + 1],
                op1=nl.multiply,
                operand1=gu_ps[p0 : p0 + isz, 1:2],
            )
            acts.append(act[p0 : p0 + isz])
        for h0 in range(0, H, HB):
            for c, ((_, isz), p0) in enumerate(zip(chunks, rows0[n])):
                nisa.nc_matmul(
                    dst=y_ps[:, h0 : h0 + HB],
                    stationary=acts[c],
                    moving=dn[p0 : p0 + isz, c, h0 : h0 + HB],
                    accumulate=j > first or c > 0,
                    **(dict(tile_position=(64, 0), tile_size=(64, 128)) if p0 else {}),
                )
        if j < first + count - 1:
            continue
        # the token's last slot on this core: read out my half of H, plus the other core's partial of it
        mine = y_ps[:, pid * HS : (pid + 1) * HS]
        y_sb = nl.ndarray((1, HS), dtype=x.dtype, buffer=nl.sbuf)
        if n_prog > 1:
            other = 1 - pid
            part = nl.ndarray((1, HS), dtype=nl.float32, buffer=nl.sbuf)  # DMA cannot read PSUM
            # one partition, HS columns: the read-out is free-size bound, so ACT and DVE take half each
            h2 = HS // 2
            nisa.tensor_copy(
                dst=part[:, :h2], src=y_ps[:, other * HS : other * HS + h2], engine=nisa.scalar_engine
            )
            nisa.tensor_copy(dst=part[:, h2:], src=y_ps[:, other * HS + h2 : (other + 1) * HS])
            theirs = nl.ndarray((1, HS), dtype=nl.float32, buffer=nl.sbuf)
            nisa.sendrecv(src=part, dst=theirs, send_to_rank=other, recv_from_rank=other, pipe_id=0)
            nisa.tensor_tensor(dst=y_sb, data1=mine, data2=theirs, op=nl.add)
        else:
            nisa.tensor_copy(dst=y_sb, src=mine)
        nisa.dma_copy(dst=y[t : t + 1, pid * HS : (pid + 1) * HS], src=y_sb)
    return y


# ---- v5: the fused layer: RMSNorm, router logits, top-8 and the experts in one launch ----------------------
def _check_layer(h, gamma, w_router, w_gate_up, w_down):
    """Restate the fused layer's limits; returns (T, H, E, inter)."""
    T, H = h.shape
    E, H_, I2 = w_gate_up.shape
    inter = I2 // 2
    assert tuple(gamma.shape) == (H,) and tuple(w_router.shape) == (H, E), (
        f"gamma {tuple(gamma.shape)} must be [{H}] and w_router {tuple(w_router.shape)} [{H}, {E}]"
    )
    assert H == H_ and tuple(w_down.shape) == (E, inter, H), (
        f"shape mismatch: h [T, {H}], w_gate_up [{E}, {H_}, {I2}], w_down {tuple(w_down.shape)}"
    )
    assert 1 <= T <= nl.tile_size.pmax, f"T={T} tokens must be in [1, 128]"
    assert H % HB == 0, f"H={H} must be a multiple of {HB}"
    assert TOP_K <= E <= HB, f"E={E} experts must be in [8, 512] (one PSUM bank of logits)"
    return T, H, E, inter


@nki.jit
def moe_decode_v5(h, gamma, w_router, w_gate_up, w_down, eps):
    """The whole MoE block of a decode step (launch ``moe_decode_v5[2]``): xn = RMSNorm(h)·gamma, bf16 router
    logits xn @ w_router, top-8 (max8 / nc_find_index8: equal logits keep the lower expert first, the
    reference's rule), softmax of the 8 winners, then moe_decode_v4's experts on xn. The ids and weights never
    leave SBUF before the expert DMAs use them (both cores compute them; each runs its 4 slots).

    Args: h [T, H] bf16 (the residual stream), gamma [H], w_router [H, E], w_gate_up [E, H, 2I],
    w_down [E, I, H], eps. Returns: (y [T, H], idx [T, 8] uint32, weights [T, 8] h.dtype).
    """
    T, H, E, inter = _check_layer(h, gamma, w_router, w_gate_up, w_down)
    P = nl.tile_size.pmax
    KT, I2 = H // P, 2 * inter
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    first, count = lnc_share(TOP_K)
    HS = H // n_prog
    chunks = i_chunks(inter)
    depth = max(1, min(4, (96 * 1024) // ((KT * I2 + len(chunks) * H) * 2)))
    y = nl.ndarray((T, H), dtype=h.dtype, buffer=nl.shared_hbm)
    idx_out = nl.ndarray((T, TOP_K), dtype=nl.uint32, buffer=nl.shared_hbm)
    w_out = nl.ndarray((T, TOP_K), dtype=h.dtype, buffer=nl.shared_hbm)
    # router weights first: the largest load before the experts, in flight during the norm
    wr = nl.ndarray((P, KT, E), dtype=w_router.dtype, buffer=nl.sbuf)  # h = p·KT + kt, as v2
    nisa.dma_copy(dst=wr, src=w_router.ap(pattern=[[KT * E, P], [E, KT], [1, E]], offset=0))
    # RMSNorm in v2's layout (h = p·KT + kt on the partitions: no transposes, 128 lanes busy), rounded as
    # HF's: bf16(h · rstd), then bf16(· gamma); the sum of squares crosses the partitions by a ones matmul
    x_sb = nl.ndarray((P, T, KT), dtype=h.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=x_sb, src=h.ap(pattern=[[KT, P], [H, T], [1, KT]], offset=0))
    g_sb = nl.ndarray((P, KT), dtype=gamma.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=g_sb, src=gamma.ap(pattern=[[KT, P], [1, KT]], offset=0))
    sq = nl.ndarray((P, T, KT), dtype=nl.float32, buffer=nl.sbuf)
    ss = nl.ndarray((P, T), dtype=nl.float32, buffer=nl.sbuf)  # per-partition partial sums
    for t in range(T):
        nisa.activation(
            dst=sq[:, t, :],
            op=nl.square,
            data=x_sb[:, t, :],
            reduce_op=nl.add,
            reduce_res=ss[:, t : t + 1],
            reduce_cmd=nisa.reduce_cmd.reset_reduce,
        )
    ones = nl.ndarray((P, P), dtype=nl.float32, buffer=nl.sbuf)
    nisa.memset(dst=ones, value=1.0)
    tot = nl.ndarray((P, T), dtype=nl.float32, buffer=nl.psum)  # every partition: the token's sum
    nisa.nc_matmul(dst=tot, stationary=ones, moving=ss)
    ms = nl.ndarray((P, T), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_scalar(dst=ms, data=tot, op0=nl.multiply, operand0=1.0 / H, op1=nl.add, operand1=eps)
    rstd = nl.ndarray((P, T), dtype=nl.float32, buffer=nl.sbuf)
    nisa.activation(dst=rstd, op=nl.rsqrt, data=ms)
    xT = nl.ndarray((P, T, KT), dtype=h.dtype, buffer=nl.sbuf)  # xT[p, t, kt] = xn[t, p·KT + kt]
    for t in range(T):
        xr = nl.ndarray((P, KT), dtype=h.dtype, buffer=nl.sbuf)
        nisa.tensor_scalar(dst=xr, data=x_sb[:, t, :], op0=nl.multiply, operand0=rstd[:, t : t + 1])
        nisa.tensor_tensor(dst=xT[:, t, :], data1=xr, data2=g_sb, op=nl.multiply)
    # router: bf16 logits (HF's gate output), top-8 on them, softmax of the 8 winners (router_v1)
    lg_ps = nl.ndarray((T, E), dtype=nl.float32, buffer=nl.psum)
    for kt in range(KT):
        nisa.nc_matmul(dst=lg_ps, stationary=xT[:, :, kt], moving=wr[:, kt, :], accumulate=kt > 0)
    lg_bf = nl.ndarray((T, E), dtype=h.dtype, buffer=nl.sbuf)
    nisa.tensor_copy(dst=lg_bf, src=lg_ps)
    lg = nl.ndarray((T, E), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=lg, src=lg_bf)
    top = nl.ndarray((T, TOP_K), dtype=nl.float32, buffer=nl.sbuf)
    nisa.max8(dst=top, src=lg)
    i_t = nl.ndarray((T, TOP_K), dtype=nl.uint32, buffer=nl.sbuf)
    nisa.nc_find_index8(dst=i_t, data=lg, vals=top)
    neg_max = nl.ndarray((T, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_scalar(dst=neg_max, data=top[:, 0:1], op0=nl.multiply, operand0=-1.0)
    ex = nl.ndarray((T, TOP_K), dtype=nl.float32, buffer=nl.sbuf)
    ssum = nl.ndarray((T, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.activation(
        dst=ex,
        op=nl.exp,
        data=top,
        bias=neg_max,
        reduce_op=nl.add,
        reduce_res=ssum,
        reduce_cmd=nisa.reduce_cmd.reset_reduce,
    )
    rsum = nl.ndarray((T, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.reciprocal(dst=rsum, data=ssum)
    w_t = nl.ndarray((T, TOP_K), dtype=h.dtype, buffer=nl.sbuf)  # rounded as the reference's weights
    nisa.tensor_scalar(dst=w_t, data=ex, op0=nl.multiply, operand0=rsum)
    w_t32 = nl.ndarray((T, TOP_K), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=w_t32, src=w_t)
    # every pair's weight on every partition: the [T, 8] weights onto one row, then a broadcast read of it
    w_row = nl.ndarray((1, T * TOP_K), dtype=nl.float32, buffer=nl.sbuf)
    nisa.dma_copy(dst=w_row, src=w_t32)
    w_f = nl.ndarray((P, T * TOP_K), dtype=nl.float32, buffer=nl.sbuf)
    nisa.dma_copy(dst=w_f, src=w_row.ap(pattern=[[T * TOP_K, 1], [0, P], [1, T * TOP_K]], offset=0))
    if pid == 0:
        nisa.dma_copy(dst=idx_out, src=i_t)
        nisa.dma_copy(dst=w_out, src=w_t)
    # the experts: moe_decode_v4's loop, the ids read from i_t where the router left them
    pairs = [t * TOP_K + j for t in range(T) for j in range(first, first + count)]
    rows0 = [_row_offsets(inter, n) for n in range(len(pairs))]
    ids = [i_t[p // TOP_K : p // TOP_K + 1, p % TOP_K : p % TOP_K + 1] for p in pairs]
    regs = [nisa.register_alloc() for _ in range(depth)]  # one per pair in flight, as v4
    loaded = [_load_expert(w_gate_up, w_down, ids[n], regs[n], rows0[n]) for n in range(depth)]
    for n, pair in enumerate(pairs):
        t, j = divmod(pair, TOP_K)
        gu, dn = loaded.pop(0)
        if n + depth < len(pairs):
            loaded.append(_load_expert(w_gate_up, w_down, ids[n + depth], regs[n % depth], rows0[n + depth]))
        if j == first:
            y_ps = nl.ndarray((1, H), dtype=nl.float32, buffer=nl.psum)
        acts = []
        for (i0, isz), p0 in zip(chunks, rows0[n]):
            tiling = dict(tile_position=(0, 64), tile_size=(128, 64)) if p0 else {}
            gu_ps = nl.ndarray((P, 2), dtype=nl.float32, buffer=nl.psum)
            for half, c0 in ((0, i0), (1, inter + i0)):
                for kt in range(KT):
                    nisa.nc_matmul(
                        dst=gu_ps[p0 : p0 + isz, half : half + 1],
                        stationary=gu[:, kt, c0 : c0 + isz],
                        moving=xT[:, t, kt : kt + 1],
                        accumulate=kt > 0,
                        **tiling,
                    )
            g = nl.ndarray((P, 1), dtype=nl.float32, buffer=nl.sbuf)
            nisa.activation(dst=g[p0 : p0 + isz], op=nl.silu, data=gu_ps[p0 : p0 + isz, 0:1])
            act = nl.ndarray((P, 1), dtype=h.dtype, buffer=nl.sbuf)
            nisa.scalar_tensor_tensor(
                dst=act[p0 : p0 + isz],
                data=g[p0 : p0 + isz],
                op0=nl.multiply,
                operand0=w_f[p0 : p0 + isz, pair : pair + 1],
                op1=nl.multiply,
                operand1=gu_ps[p0 : p0 + isz, 1:2],
            )
            acts.append(act[p0 : p0 + isz])
        for h0 in range(0, H, HB):
            for c, ((_, isz), p0) in enumerate(zip(chunks, rows0[n])):
                nisa.nc_matmul(
                    dst=y_ps[:, h0 : h0 + HB],
                    stationary=acts[c],
                    moving=dn[p0 : p0 + isz, c, h0 : h0 + HB],
                    accumulate=j > first or c > 0,
                    **(dict(tile_position=(64, 0), tile_size=(64, 128)) if p0 else {}),
                )
        if j < first + count - 1:
            continue
        mine = y_ps[:, pid * HS : (pid + 1) * HS]
        y_sb = nl.ndarray((1, HS), dtype=h.dtype, buffer=nl.sbuf)
        if n_prog > 1:
            other = 1 - pid
            part = nl.ndarray((1, HS), dtype=nl.float32, buffer=nl.sbuf)
            nisa.tensor_copy(dst=part, src=y_ps[:, other * HS : (other + 1) * HS])
            theirs = nl.ndarray((1, HS), dtype=nl.float32, buffer=nl.sbuf)
            nisa.sendrecv(src=part, dst=theirs, send_to_rank=other, recv_from_rank=other, pipe_id=0)
            nisa.tensor_tensor(dst=y_sb, data1=mine, data2=theirs, op=nl.add)
        else:
            nisa.tensor_copy(dst=y_sb, src=mine)
        nisa.dma_copy(dst=y[t : t + 1, pid * HS : (pid + 1) * HS], src=y_sb)
    return y, idx_out, w_out


# ---- v6-v8's head: RMSNorm, router logits, top-8 (the expert ids) and the winners' softmax ----------------
def _router_top8(h, gamma, w_router, eps, setup=None):
    """moe_decode_v6's head up to the expert ids (v6-v8 share it): h loaded first, the router weights in two
    DMAs, the one-hot rows ``sel`` and a [128, 128] identity, the RMSNorm, the logits computed transposed and
    rounded to bf16, then max8 / nc_find_index8. ``setup(eye_i)`` (optional) runs after the identity's iota,
    before the norm, for a version's own tiles (its result is returned as ``extra``).

    Returns: (xT [P, T, KT] the normed h, h = p·KT + kt; top [T, 8] fp32 logits; i_t [T, 8] uint32 ids;
    sel [T, T, P] one-hot rows; extra)."""
    T, H = h.shape
    E = w_router.shape[1]
    P = nl.tile_size.pmax
    KT = H // P
    # h first (4 KiB: the norm runs while the 512 KiB of router weights land), the router weights in two
    # DMAs, kt < 3/4·KT then the rest (the first part's matmuls run while the rest lands), gamma between them
    x_sb = nl.ndarray((P, T, KT), dtype=h.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=x_sb, src=h.ap(pattern=[[KT, P], [H, T], [1, KT]], offset=0))
    wr = nl.ndarray((P, KT, E), dtype=w_router.dtype, buffer=nl.sbuf)  # h = p·KT + kt, as v2
    KH = 3 * KT // 4
    nisa.dma_copy(dst=wr[:, :KH, :], src=w_router.ap(pattern=[[KT * E, P], [E, KH], [1, E]], offset=0))
    g_sb = nl.ndarray((P, KT), dtype=gamma.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=g_sb, src=gamma.ap(pattern=[[KT, P], [1, KT]], offset=0))
    nisa.dma_copy(
        dst=wr[:, KH:, :], src=w_router.ap(pattern=[[KT * E, P], [E, KT - KH], [1, E]], offset=KH * E)
    )
    # one-hot rows sel[p, t, :] = (p == t): the stationary that copies token t's weights to all partitions
    sel_i = nl.ndarray((T, T, P), dtype=nl.int32, buffer=nl.sbuf)
    nisa.iota(dst=sel_i, pattern=[[1, T], [0, P]], offset=0, channel_multiplier=-1)
    sel = nl.ndarray((T, T, P), dtype=h.dtype, buffer=nl.sbuf)
    nisa.tensor_scalar(dst=sel, data=sel_i, op0=nl.equal, operand0=0)
    eye_i = nl.ndarray((P, P), dtype=nl.int32, buffer=nl.sbuf)  # identities: p == column
    nisa.iota(dst=eye_i, pattern=[[1, P]], offset=0, channel_multiplier=-1)
    eye_bf = nl.ndarray((P, P), dtype=h.dtype, buffer=nl.sbuf)
    nisa.tensor_scalar(dst=eye_bf, data=eye_i, op0=nl.equal, operand0=0)
    extra = setup(eye_i) if setup is not None else None  # the caller's own tiles
    # RMSNorm as v5
    sq = nl.ndarray((P, T, KT), dtype=nl.float32, buffer=nl.sbuf)
    ss = nl.ndarray((P, T), dtype=nl.float32, buffer=nl.sbuf)
    for t in range(T):
        nisa.activation(
            dst=sq[:, t, :],
            op=nl.square,
            data=x_sb[:, t, :],
            reduce_op=nl.add,
            reduce_res=ss[:, t : t + 1],
            reduce_cmd=nisa.reduce_cmd.reset_reduce,
        )
    ones = nl.ndarray((P, P), dtype=nl.float32, buffer=nl.sbuf)
    nisa.memset(dst=ones, value=1.0)
    tot = nl.ndarray((P, T), dtype=nl.float32, buffer=nl.psum)
    nisa.nc_matmul(dst=tot, stationary=ones, moving=ss)
    ms = nl.ndarray((P, T), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_scalar(dst=ms, data=tot, op0=nl.multiply, operand0=1.0 / H, op1=nl.add, operand1=eps)
    rstd = nl.ndarray((P, T), dtype=nl.float32, buffer=nl.sbuf)
    nisa.activation(dst=rstd, op=nl.rsqrt, data=ms)
    xT = nl.ndarray((P, T, KT), dtype=h.dtype, buffer=nl.sbuf)
    for t in range(T):
        xr = nl.ndarray((P, KT), dtype=h.dtype, buffer=nl.sbuf)
        nisa.tensor_scalar(dst=xr, data=x_sb[:, t, :], op0=nl.multiply, operand0=rstd[:, t : t + 1])
        nisa.tensor_tensor(dst=xT[:, t, :], data1=xr, data2=g_sb, op=nl.multiply)
    # router logits transposed (experts on the partitions, wr the stationary: 64-cycle GEMVs), rounded to
    # bf16, then back to [T, E] by a PE transpose (exact), where max8 and nc_find_index8 read them
    e_tiles = [(e0, min(P, E - e0)) for e0 in range(0, E, P)]
    lgT_ps = nl.ndarray((P, len(e_tiles), T), dtype=nl.float32, buffer=nl.psum)
    for c, (e0, esz) in enumerate(e_tiles):
        for kt in range(KT):
            nisa.nc_matmul(
                dst=lgT_ps[:esz, c, :],
                stationary=wr[:, kt, e0 : e0 + esz],
                moving=xT[:, :, kt],
                accumulate=kt > 0,
            )
    lgT = nl.ndarray((P, len(e_tiles), T), dtype=h.dtype, buffer=nl.sbuf)
    lg = nl.ndarray((T, E), dtype=nl.float32, buffer=nl.psum)
    for c, (e0, esz) in enumerate(e_tiles):
        nisa.tensor_copy(dst=lgT[:esz, c, :], src=lgT_ps[:esz, c, :], engine=nisa.scalar_engine)
        nisa.nc_matmul(dst=lg[:, e0 : e0 + esz], stationary=lgT[:esz, c, :], moving=eye_bf[:esz, :esz])
    top = nl.ndarray((T, TOP_K), dtype=nl.float32, buffer=nl.sbuf)
    nisa.max8(dst=top, src=lg)
    i_t = nl.ndarray((T, TOP_K), dtype=nl.uint32, buffer=nl.sbuf)
    nisa.nc_find_index8(dst=i_t, data=lg, vals=top)
    return xT, top, i_t, sel, extra


def _router_weights(top, sel, dtype):
    """The softmax of the 8 winning logits (rounded to ``dtype`` as the reference's weights) and every
    pair's weight on every partition, w_f[p, t·8 + j] = w_t[t, j] (one one-hot matmul per token, exact in
    fp32 PSUM). Returns (w_t [T, 8] dtype, w_f [P, T·8] fp32)."""
    T = top.shape[0]
    P = nl.tile_size.pmax
    neg_max = nl.ndarray((T, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_scalar(dst=neg_max, data=top[:, 0:1], op0=nl.multiply, operand0=-1.0)
    ex = nl.ndarray((T, TOP_K), dtype=nl.float32, buffer=nl.sbuf)
    ssum = nl.ndarray((T, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.activation(
        dst=ex,
        op=nl.exp,
        data=top,
        bias=neg_max,
        reduce_op=nl.add,
        reduce_res=ssum,
        reduce_cmd=nisa.reduce_cmd.reset_reduce,
    )
    rsum = nl.ndarray((T, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.reciprocal(dst=rsum, data=ssum)
    w_t = nl.ndarray((T, TOP_K), dtype=dtype, buffer=nl.sbuf)
    nisa.tensor_scalar(dst=w_t, data=ex, op0=nl.multiply, operand0=rsum)
    # w_f[p, t·8 + j] = w_t[t, j] on every partition: sel[:, t, :]ᵀ @ w_t picks row t (exact in fp32 PSUM)
    wf_ps = nl.ndarray((P, T * TOP_K), dtype=nl.float32, buffer=nl.psum)
    for t in range(T):
        nisa.nc_matmul(dst=wf_ps[:, t * TOP_K : (t + 1) * TOP_K], stationary=sel[:, t, :], moving=w_t)
    w_f = nl.ndarray((P, T * TOP_K), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=w_f, src=wf_ps)
    return w_t, w_f


# ---- v6: the head shortened: the experts' first DMAs right after the ids, w_k broadcast on the PE ----------
@nki.jit
def moe_decode_v6(h, gamma, w_router, w_gate_up, w_down, eps):
    """As moe_decode_v5 (launch ``moe_decode_v6[2]``) with a shorter head, the time before the first expert
    byte in which HBM idles (v5: 10.3 µs at T = 1 on trn2, estimate): h is loaded before the router weights
    (the norm runs while they land, instead of h queueing behind them), the router weights in two DMAs (3/4
    and 1/4 of the contraction, so most router matmuls run before the last byte), the logits computed
    transposed (wr the stationary: half the PE time of v5's [T, E] GEMVs), rounded to bf16 and transposed
    back on the PE, where max8 / nc_find_index8 read them without v5's extra fp32 copy; the first pairs'
    expert DMAs go out as soon as nc_find_index8 has the ids, and the softmax weights reach every partition
    by one one-hot matmul per token instead of v5's two dependent DMAs (idx_out and w_out are written after
    the expert DMAs are out). First expert byte at 6.8 µs; 42.4 µs at T = 1, TP = 4 on trn2 (v5: 46.2),
    33.4 µs on trn3 (cost-model estimates). Same values as v5 (bit-identical on the tests' inputs: the
    logits' dot products are the same, in the other operand order).

    Args, Returns: as moe_decode_v5.
    """
    T, H, E, inter = _check_layer(h, gamma, w_router, w_gate_up, w_down)
    P = nl.tile_size.pmax
    KT, I2 = H // P, 2 * inter
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    first, count = lnc_share(TOP_K)
    HS = H // n_prog
    chunks = i_chunks(inter)
    depth = max(1, min(4, (96 * 1024) // ((KT * I2 + len(chunks) * H) * 2)))
    y = nl.ndarray((T, H), dtype=h.dtype, buffer=nl.shared_hbm)
    idx_out = nl.ndarray((T, TOP_K), dtype=nl.uint32, buffer=nl.shared_hbm)
    w_out = nl.ndarray((T, TOP_K), dtype=h.dtype, buffer=nl.shared_hbm)
    xT, top, i_t, sel, _ = _router_top8(h, gamma, w_router, eps)
    # the first `depth` pairs' expert DMAs go out now: the softmax and the small DMAs run under them
    pairs = [t * TOP_K + j for t in range(T) for j in range(first, first + count)]
    rows0 = [_row_offsets(inter, n) for n in range(len(pairs))]
    ids = [i_t[p // TOP_K : p // TOP_K + 1, p % TOP_K : p % TOP_K + 1] for p in pairs]
    regs = [nisa.register_alloc() for _ in range(depth)]
    loaded = [_load_expert(w_gate_up, w_down, ids[n], regs[n], rows0[n]) for n in range(depth)]
    w_t, w_f = _router_weights(top, sel, h.dtype)
    if pid == 0:
        nisa.dma_copy(dst=idx_out, src=i_t)
        nisa.dma_copy(dst=w_out, src=w_t)
    # the experts: moe_decode_v5's loop
    for n, pair in enumerate(pairs):
        t, j = divmod(pair, TOP_K)
        gu, dn = loaded.pop(0)
        if n + depth < len(pairs):
            loaded.append(_load_expert(w_gate_up, w_down, ids[n + depth], regs[n % depth], rows0[n + depth]))
        if j == first:
            y_ps = nl.ndarray((1, H), dtype=nl.float32, buffer=nl.psum)
        acts = []
        for (i0, isz), p0 in zip(chunks, rows0[n]):
            tiling = dict(tile_position=(0, 64), tile_size=(128, 64)) if p0 else {}
            gu_ps = nl.ndarray((P, 2), dtype=nl.float32, buffer=nl.psum)
            for half, c0 in ((0, i0), (1, inter + i0)):
                for kt in range(KT):
                    nisa.nc_matmul(
                        dst=gu_ps[p0 : p0 + isz, half : half + 1],
                        stationary=gu[:, kt, c0 : c0 + isz],
                        moving=xT[:, t, kt : kt + 1],
                        accumulate=kt > 0,
                        **tiling,
                    )
            g = nl.ndarray((P, 1), dtype=nl.float32, buffer=nl.sbuf)
            nisa.activation(dst=g[p0 : p0 + isz], op=nl.silu, data=gu_ps[p0 : p0 + isz, 0:1])
            act = nl.ndarray((P, 1), dtype=h.dtype, buffer=nl.sbuf)
            nisa.scalar_tensor_tensor(
                dst=act[p0 : p0 + isz],
                data=g[p0 : p0 + isz],
                op0=nl.multiply,
                operand0=w_f[p0 : p0 + isz, pair : pair + 1],
                op1=nl.multiply,
                operand1=gu_ps[p0 : p0 + isz, 1:2],
            )
            acts.append(act[p0 : p0 + isz])
        for h0 in range(0, H, HB):
            for c, ((_, isz), p0) in enumerate(zip(chunks, rows0[n])):
                nisa.nc_matmul(
                    dst=y_ps[:, h0 : h0 + HB],
                    stationary=acts[c],
                    moving=dn[p0 : p0 + isz, c, h0 : h0 + HB],
                    accumulate=j > first or c > 0,
                    **(dict(tile_position=(64, 0), tile_size=(64, 128)) if p0 else {}),
                )
        if j < first + count - 1:
            continue
        mine = y_ps[:, pid * HS : (pid + 1) * HS]
        y_sb = nl.ndarray((1, HS), dtype=h.dtype, buffer=nl.sbuf)
        if n_prog > 1:
            other = 1 - pid
            part = nl.ndarray((1, HS), dtype=nl.float32, buffer=nl.sbuf)
            nisa.tensor_copy(dst=part, src=y_ps[:, other * HS : (other + 1) * HS])
            theirs = nl.ndarray((1, HS), dtype=nl.float32, buffer=nl.sbuf)
            nisa.sendrecv(src=part, dst=theirs, send_to_rank=other, recv_from_rank=other, pipe_id=0)
            nisa.tensor_tensor(dst=y_sb, data1=mine, data2=theirs, op=nl.add)
        else:
            nisa.tensor_copy(dst=y_sb, src=mine)
        nisa.dma_copy(dst=y[t : t + 1, pid * HS : (pid + 1) * HS], src=y_sb)
    return y, idx_out, w_out


# ---- v7: the tail shortened: the down projection split by output column, the acts exchanged mid-stream -----
def _load_down_cols(w_down, e, rows0, h0, hs, nj):
    """Start the DMAs of columns h0 … h0 + hs of one pair's down weights (expert id in register ``e``; chunk c
    on partitions rows0[c] + …; one run of hs elements per row) as a [P, C, K, P, nj] tile, K = hs / (P·nj):
    column h0 + k·P·nj + q·nj + jj at [·, c, k, q, jj], so [rows, c, k, :, jj] is a [I_chunk, 128] block."""
    P = nl.tile_size.pmax
    _, inter, H = w_down.shape
    chunks = i_chunks(inter)
    nk = hs // (P * nj)
    dn = nl.ndarray((P, len(chunks), nk, P, nj), dtype=w_down.dtype, buffer=nl.sbuf)
    for c, ((i0, isz), p0) in enumerate(zip(chunks, rows0)):
        nisa.dma_copy(
            dst=dn[p0 : p0 + isz, c, :, :, :],
            src=w_down.ap(
                pattern=[[H, isz], [P * nj, nk], [nj, P], [1, nj]], offset=i0 * H + h0, scalar_offset=e
            ),
        )
    return dn


@nki.jit
def moe_decode_v7(h, gamma, w_router, w_gate_up, w_down, eps):
    """As moe_decode_v6 (launch ``moe_decode_v7[2]``) with a shorter tail (v6: 8.2 µs from the last weight
    byte to the end, T = 1 on trn2: one-partition PSUM read-outs of [1, 1024], sendrecv, add, output DMA):
    the down projection is split by output column instead of by slot. Each core still runs the gate/up GEMVs
    of its 4 slots, sends their acts ([I, 4] bf16) to the other core in the middle of the weight stream and
    projects all 8 slots onto its own half of H (the same bytes: 8 half rows instead of 4 rows), so no
    partial sum crosses over after the last weight byte. The down projection produces y transposed,
    h = pid·H/2 + p·NJ + jj on [128, NJ] PSUM (stationary = a [I_chunk, 128] block of the down weights, its
    columns 16 B apart, moving = act [I_chunk, 1]: 64 PE cycles per matmul, half of v6's), so the read-out is
    one 8-element-per-partition add and the output DMA writes 16 B per partition. Tail 2.7 µs; 38.2 µs at
    T = 1, TP = 4 on trn2, 29.3 µs on trn3 (estimates). The price: the half rows are 2 KiB runs per
    partition (DMA efficiency 0.80 instead of 0.89 on the down weights, ~1.1 µs of stream).

    Numerics: each core accumulates its own slots and the other core's in two PSUM groups, in v5's slot and
    chunk order, and adds them once (v5: my partial + the other core's); the PE sums each output's products
    over a chunk's rows in one matmul, as in v5, with the weights as the other operand, so y is v5's
    (bit-identical on the tests' inputs, asserted there).

    Args, Returns: as moe_decode_v5.
    """
    T, H, E, inter = _check_layer(h, gamma, w_router, w_gate_up, w_down)
    P = nl.tile_size.pmax
    KT, I2 = H // P, 2 * inter
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    first, count = lnc_share(TOP_K)
    HS = H // n_prog
    NJ = HS // P  # output columns per partition
    chunks = i_chunks(inter)
    C = len(chunks)
    depth_a = max(1, min(4, (96 * 1024) // ((KT * I2 + C * HS) * 2)))  # own pairs in flight (gate|up + down)
    depth_b = max(1, min(8, (32 * 1024) // (C * HS * 2)))  # the other core's pairs in flight (down only)
    y = nl.ndarray((T, H), dtype=h.dtype, buffer=nl.shared_hbm)
    idx_out = nl.ndarray((T, TOP_K), dtype=nl.uint32, buffer=nl.shared_hbm)
    w_out = nl.ndarray((T, TOP_K), dtype=h.dtype, buffer=nl.shared_hbm)

    def setup(_eye_i):
        """Every pair's act, slot j's chunk c at [rows, t, j·C + c] (zeros elsewhere: the exchange sends
        all rows)."""
        acts = nl.ndarray((P, T, TOP_K * C), dtype=h.dtype, buffer=nl.sbuf)
        nisa.memset(dst=acts, value=0.0)
        return acts

    xT, top, i_t, sel, acts = _router_top8(h, gamma, w_router, eps, setup)
    # ---- phase A: my pairs' gate|up and the down weights of my half of H; the first DMAs go out now
    own = [t * TOP_K + j for t in range(T) for j in range(first, first + count)]
    theirs = [t * TOP_K + j for t in range(T) for j in range(TOP_K) if not first <= j < first + count]
    rows0 = {p: [64 if isz <= 64 and p % 2 else 0 for _, isz in chunks] for p in own + theirs}
    ids = {p: i_t[p // TOP_K : p // TOP_K + 1, p % TOP_K : p % TOP_K + 1] for p in own + theirs}
    regs_a = [nisa.register_alloc() for _ in range(depth_a)]

    def load_a(n):
        """Own pair n: gate|up (v2's run) and the down columns of my half, one register for both."""
        pair, e = own[n], regs_a[n % depth_a]
        nisa.register_load(e, ids[pair])
        gu = nl.ndarray((P, KT, I2), dtype=w_gate_up.dtype, buffer=nl.sbuf)
        nisa.dma_copy(
            dst=gu, src=w_gate_up.ap(pattern=[[KT * I2, P], [I2, KT], [1, I2]], offset=0, scalar_offset=e)
        )
        return gu, _load_down_cols(w_down, e, rows0[pair], pid * HS, HS, NJ)

    loaded = [load_a(n) for n in range(min(depth_a, len(own)))]
    w_t, w_f = _router_weights(top, sel, h.dtype)
    if pid == 0:
        nisa.dma_copy(dst=idx_out, src=i_t)
        nisa.dma_copy(dst=w_out, src=w_t)
    # yT[p, g, t, jj] = y[t, pid·HS + p·NJ + jj] summed over my slots (g = 0) or the other core's (g = 1)
    yT = nl.ndarray((P, 2, T, NJ), dtype=nl.float32, buffer=nl.psum)

    def down(pair, dn, g, start):
        """Accumulate pair's slot into group g of yT: one [I_chunk, 128] x [I_chunk, 1] matmul per column."""
        t, j = divmod(pair, TOP_K)
        for jj in range(NJ):
            for c, ((_, isz), p0) in enumerate(zip(chunks, rows0[pair])):
                nisa.nc_matmul(
                    dst=yT[:, g, t, jj : jj + 1],
                    stationary=dn[p0 : p0 + isz, c, 0, :, jj],
                    moving=acts[p0 : p0 + isz, t, j * C + c : j * C + c + 1],
                    accumulate=not (start and c == 0),
                    **(dict(tile_position=(64, 0), tile_size=(64, 128)) if p0 else {}),
                )

    for n, pair in enumerate(own):
        t, j = divmod(pair, TOP_K)
        gu, dn = loaded.pop(0)
        if n + depth_a < len(own):
            loaded.append(load_a(n + depth_a))
        for c, ((i0, isz), p0) in enumerate(zip(chunks, rows0[pair])):
            tiling = dict(tile_position=(0, 64), tile_size=(128, 64)) if p0 else {}
            gu_ps = nl.ndarray((P, 2), dtype=nl.float32, buffer=nl.psum)
            for half, c0 in ((0, i0), (1, inter + i0)):
                for kt in range(KT):
                    nisa.nc_matmul(
                        dst=gu_ps[p0 : p0 + isz, half : half + 1],
                        stationary=gu[:, kt, c0 : c0 + isz],
                        moving=xT[:, t, kt : kt + 1],
                        accumulate=kt > 0,
                        **tiling,
                    )
            g = nl.ndarray((P, 1), dtype=nl.float32, buffer=nl.sbuf)
            nisa.activation(dst=g[p0 : p0 + isz], op=nl.silu, data=gu_ps[p0 : p0 + isz, 0:1])
            nisa.scalar_tensor_tensor(
                dst=acts[p0 : p0 + isz, t, j * C + c : j * C + c + 1],
                data=g[p0 : p0 + isz],
                op0=nl.multiply,
                operand0=w_f[p0 : p0 + isz, pair : pair + 1],
                op1=nl.multiply,
                operand1=gu_ps[p0 : p0 + isz, 1:2],
            )
        down(pair, dn, 0, j == first)
    if n_prog > 1:
        mine = nl.ndarray((P, T, NJ), dtype=nl.float32, buffer=nl.sbuf)  # read out while phase B streams
        nisa.tensor_copy(dst=mine, src=yT[:, 0, :, :])
        # ---- the exchange: my slots' acts out, the other core's in (mid-stream: its down weights still load)
        other = 1 - pid
        o_first = other * count
        nisa.sendrecv(
            src=acts[:, :, first * C : (first + count) * C],
            dst=acts[:, :, o_first * C : (o_first + count) * C],
            send_to_rank=other,
            recv_from_rank=other,
            pipe_id=0,
        )
        # ---- phase B: the other core's pairs, the down columns of my half only (DMAs issued after the
        # exchange, so its small transfer is not queued behind them on the DMA engines)
        regs_b = [nisa.register_alloc() for _ in range(depth_b)]

        def load_b(n):
            """The other core's pair n: the down columns of my half."""
            pair, e = theirs[n], regs_b[n % depth_b]
            nisa.register_load(e, ids[pair])
            return _load_down_cols(w_down, e, rows0[pair], pid * HS, HS, NJ)

        loaded_b = [load_b(n) for n in range(min(depth_b, len(theirs)))]
        for n, pair in enumerate(theirs):
            dn = loaded_b.pop(0)
            if n + depth_b < len(theirs):
                loaded_b.append(load_b(n + depth_b))
            down(pair, dn, 1, pair % TOP_K == o_first)
    # ---- tail: y = my slots + the other core's (v5's order), rounded once, written from the [P, NJ] layout
    y_sb = nl.ndarray((P, T, NJ), dtype=h.dtype, buffer=nl.sbuf)
    if n_prog > 1:
        nisa.tensor_tensor(dst=y_sb, data1=mine, data2=yT[:, 1, :, :], op=nl.add)
    else:
        nisa.tensor_copy(dst=y_sb, src=yT[:, 0, :, :])
    nisa.dma_copy(dst=y.ap(pattern=[[NJ, P], [H, T], [1, NJ]], offset=pid * HS), src=y_sb)
    return y, idx_out, w_out


# ---- v8: v7's exchange carrying partial sums too: a core's first 2 slots back on full down rows ----------
SPLIT_SLOTS = 2  # v8: the last 2 of a core's 4 slots have their down projection split by output column


@nki.jit
def moe_decode_v8(h, gamma, w_router, w_gate_up, w_down, eps):
    """As moe_decode_v7 (launch ``moe_decode_v8[2]``) with only the last SPLIT_SLOTS = 2 of each core's 4
    slots split by output column: the first 2 load their down weights in full rows again (4 KiB runs per
    partition instead of v7's 2 KiB halves) and project onto all of H; their partial sums of the other
    core's half go out in v7's mid-stream exchange together with the last 2 slots' acts (one fp32 message of
    48 B per partition). Each core starts the other core's PSUM group from that partial (an fp32 identity
    matmul: exact) and accumulates the other core's last 2 slots onto it, so every fp32 sum keeps v5's
    order; no partial sum crosses over after the last weight byte. The exchange waits for the 2 full slots'
    down projections and the last gate/up, so 4 half rows per core (~5 µs) must still stream after it: 2
    split slots hide it, 1 would not (39.4 µs), 3 gain less (37.9 µs). idx_out and w_out are the last DMAs
    (they fill in after the stream instead of inside it). 37.6 µs at T = 1, TP = 4 on trn2, 28.9 µs on trn3
    (estimates). Same values as v5 (bit-identical on the tests' inputs).

    Args, Returns: as moe_decode_v5.
    """
    T, H, E, inter = _check_layer(h, gamma, w_router, w_gate_up, w_down)
    P = nl.tile_size.pmax
    KT, I2 = H // P, 2 * inter
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    first, count = lnc_share(TOP_K)
    HS = H // n_prog
    NJ = HS // P  # output columns per partition and half
    chunks = i_chunks(inter)
    C = len(chunks)
    n_full = count - SPLIT_SLOTS if n_prog > 1 else count  # slots per core on full down rows
    # DMA jobs in flight: phase A (a gate|up tile is the largest) and phase B (half rows)
    depth_a = max(2, min(8, (96 * 1024) // (KT * I2 * 2)))
    depth_b = max(1, min(8, (32 * 1024) // (C * HS * 2)))
    y = nl.ndarray((T, H), dtype=h.dtype, buffer=nl.shared_hbm)
    idx_out = nl.ndarray((T, TOP_K), dtype=nl.uint32, buffer=nl.shared_hbm)
    w_out = nl.ndarray((T, TOP_K), dtype=h.dtype, buffer=nl.shared_hbm)

    def setup(eye_i):
        """An fp32 identity (moves the received partial into PSUM) and every pair's act tile (zeroed)."""
        eye = nl.ndarray((P, P), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_scalar(dst=eye, data=eye_i, op0=nl.equal, operand0=0)
        acts = nl.ndarray((P, T, TOP_K * C), dtype=h.dtype, buffer=nl.sbuf)
        nisa.memset(dst=acts, value=0.0)
        return eye, acts

    xT, top, i_t, sel, (eye, acts) = _router_top8(h, gamma, w_router, eps, setup)
    # ---- phase A DMAs, in stream order: per own pair its gate|up (+ its full down rows for the first
    # n_full slots), then my half of the down weights of my last slots
    other = 1 - pid
    o_first = other * count
    own = [t * TOP_K + j for t in range(T) for j in range(first, first + count)]
    full = [p for p in own if p % TOP_K < first + n_full]
    split_own = [p for p in own if p % TOP_K >= first + n_full]
    split_theirs = [t * TOP_K + j for t in range(T) for j in range(o_first + n_full, o_first + count)]
    split_theirs = split_theirs if n_prog > 1 else []
    rows0 = {p: [64 if isz <= 64 and p % 2 else 0 for _, isz in chunks] for p in range(T * TOP_K)}
    ids = {p: i_t[p // TOP_K : p // TOP_K + 1, p % TOP_K : p % TOP_K + 1] for p in range(T * TOP_K)}
    jobs_a = [(p, kind) for p in own for kind in (("gate_up", "full") if p in full else ("gate_up",))]
    jobs_a += [(p, "half") for p in split_own]
    regs_a = [nisa.register_alloc() for _ in range(depth_a)]

    def load_a(k):
        """Phase A job k: a gate|up tile (v2's run), a pair's full down rows, or my half of them."""
        pair, kind = jobs_a[k]
        e = regs_a[k % depth_a]
        nisa.register_load(e, ids[pair])
        if kind == "gate_up":
            gu = nl.ndarray((P, KT, I2), dtype=w_gate_up.dtype, buffer=nl.sbuf)
            nisa.dma_copy(
                dst=gu, src=w_gate_up.ap(pattern=[[KT * I2, P], [I2, KT], [1, I2]], offset=0, scalar_offset=e)
            )
            return gu
        h0, hs = (0, H) if kind == "full" else (pid * HS, HS)
        return _load_down_cols(w_down, e, rows0[pair], h0, hs, NJ)

    loaded = [load_a(k) for k in range(min(depth_a, len(jobs_a)))]
    n_issued = len(loaded)

    def next_a():
        """The next phase A tile; issues the job depth_a ahead."""
        nonlocal n_issued
        tile = loaded.pop(0)
        if n_issued < len(jobs_a):
            loaded.append(load_a(n_issued))
            n_issued += 1
        return tile

    w_t, w_f = _router_weights(top, sel, h.dtype)
    # yF[p, k, t, jj] = y[t, k·HS + p·NJ + jj]: my slots in half k = pid (and my full slots' partial of the
    # other half in k = other); yB: the other core's slots in my half
    yF = nl.ndarray((P, n_prog, T, NJ), dtype=nl.float32, buffer=nl.psum)
    yB = nl.ndarray((P, T, NJ), dtype=nl.float32, buffer=nl.psum)

    def down(pair, dn, dst, ks, start):
        """Accumulate pair's slot into dst[:, k, t, :] for the halves ks of dn: a [I_chunk, 128] x
        [I_chunk, 1] matmul per output column."""
        t, j = divmod(pair, TOP_K)
        for k_dn, k in enumerate(ks):
            for jj in range(NJ):
                for c, ((_, isz), p0) in enumerate(zip(chunks, rows0[pair])):
                    nisa.nc_matmul(
                        dst=dst[:, k, t, jj : jj + 1],
                        stationary=dn[p0 : p0 + isz, c, k_dn, :, jj],
                        moving=acts[p0 : p0 + isz, t, j * C + c : j * C + c + 1],
                        accumulate=not (start and c == 0),
                        **(dict(tile_position=(64, 0), tile_size=(64, 128)) if p0 else {}),
                    )

    for pair in own:
        t, j = divmod(pair, TOP_K)
        gu = next_a()
        for c, ((i0, isz), p0) in enumerate(zip(chunks, rows0[pair])):
            tiling = dict(tile_position=(0, 64), tile_size=(128, 64)) if p0 else {}
            gu_ps = nl.ndarray((P, 2), dtype=nl.float32, buffer=nl.psum)
            for half, c0 in ((0, i0), (1, inter + i0)):
                for kt in range(KT):
                    nisa.nc_matmul(
                        dst=gu_ps[p0 : p0 + isz, half : half + 1],
                        stationary=gu[:, kt, c0 : c0 + isz],
                        moving=xT[:, t, kt : kt + 1],
                        accumulate=kt > 0,
                        **tiling,
                    )
            g = nl.ndarray((P, 1), dtype=nl.float32, buffer=nl.sbuf)
            nisa.activation(dst=g[p0 : p0 + isz], op=nl.silu, data=gu_ps[p0 : p0 + isz, 0:1])
            nisa.scalar_tensor_tensor(
                dst=acts[p0 : p0 + isz, t, j * C + c : j * C + c + 1],
                data=g[p0 : p0 + isz],
                op0=nl.multiply,
                operand0=w_f[p0 : p0 + isz, pair : pair + 1],
                op1=nl.multiply,
                operand1=gu_ps[p0 : p0 + isz, 1:2],
            )
        if pair in full:
            down(pair, next_a(), yF, range(n_prog), j == first)
    if n_prog > 1:
        # ---- the exchange (one fp32 message per core): my full slots' partial of the other core's half, and
        # my split slots' acts (bf16 values, exact in fp32)
        NX = NJ + SPLIT_SLOTS * C
        msg = nl.ndarray((P, T, NX), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_copy(dst=msg[:, :, :NJ], src=yF[:, other, :, :])
        s0 = (first + n_full) * C
        nisa.tensor_copy(dst=msg[:, :, NJ:], src=acts[:, :, s0 : s0 + SPLIT_SLOTS * C])
        got = nl.ndarray((P, T, NX), dtype=nl.float32, buffer=nl.sbuf)
        nisa.sendrecv(src=msg, dst=got, send_to_rank=other, recv_from_rank=other, pipe_id=0)
        # ---- phase B DMAs (after the exchange: its transfer is not queued behind them): the other core's
        # split slots, my half of their down weights
        regs_b = [nisa.register_alloc() for _ in range(depth_b)]

        def load_b(n):
            """The other core's split pair n: the down columns of my half."""
            pair, e = split_theirs[n], regs_b[n % depth_b]
            nisa.register_load(e, ids[pair])
            return _load_down_cols(w_down, e, rows0[pair], pid * HS, HS, NJ)

        loaded_b = [load_b(n) for n in range(min(depth_b, len(split_theirs)))]
        for pair in split_own:  # my split slots, my half: after my full slots in group pid (v5's order)
            down(pair, next_a(), yF, [pid], False)
        mine = nl.ndarray((P, T, NJ), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_copy(dst=mine, src=yF[:, pid, :, :])
        # the other core's group: its full slots' partial first (identity matmul), then its split slots
        o0 = (o_first + n_full) * C
        nisa.tensor_copy(dst=acts[:, :, o0 : o0 + SPLIT_SLOTS * C], src=got[:, :, NJ:])
        for t in range(T):
            nisa.nc_matmul(dst=yB[:, t, :], stationary=eye, moving=got[:, t, :NJ])
        yB4 = yB.reshape((P, 1, T, NJ))
        for n, pair in enumerate(split_theirs):
            dn = loaded_b.pop(0)
            if n + depth_b < len(split_theirs):
                loaded_b.append(load_b(n + depth_b))
            down(pair, dn, yB4, [0], False)
    if pid == 0:  # last in the DMA order: these two small writes fill in after the weight stream
        nisa.dma_copy(dst=idx_out, src=i_t)
        nisa.dma_copy(dst=w_out, src=w_t)
    # ---- tail: y = my slots + the other core's (v5's order), rounded once, written from the [P, NJ] layout
    y_sb = nl.ndarray((P, T, NJ), dtype=h.dtype, buffer=nl.sbuf)
    if n_prog > 1:
        nisa.tensor_tensor(dst=y_sb, data1=mine, data2=yB, op=nl.add)
    else:
        nisa.tensor_copy(dst=y_sb, src=yF[:, 0, :, :])
    nisa.dma_copy(dst=y.ap(pattern=[[NJ, P], [H, T], [1, NJ]], offset=pid * HS), src=y_sb)
    return y, idx_out, w_out


# ---- fp8 variant of v4 (a numerics change, not a rung): float8_e4m3 weights, per-channel scales -----------
@nki.jit
def moe_decode_fp8(x, idx, weights, w_gate_up, w_down, scales):
    """moe_decode_v4 on fp8 experts (``nki_moe.kernels.moe_layouts.quantize_experts_fp8``): half the bytes.

    Args: as moe_decode_v4, with w_gate_up [E, H, 2I] and w_down [E, I, H] float8_e4m3 and scales
    [E, 128, 3, C] fp32 (gate, up, down scale of each intermediate row, on its partition). The fp8 weights are
    the matmuls' operands as they are (no dequantisation pass); the scales fold into act:
    act = silu(s_gate · gate) · (s_up · up) · s_down · w_k, since down's scale is per input row.
    """
    T, H, E, inter = _check(x, idx, weights, w_gate_up, w_down)
    P = nl.tile_size.pmax
    KT, I2 = H // P, 2 * inter
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    first, count = lnc_share(TOP_K)
    HS = H // n_prog
    chunks = i_chunks(inter)
    n_c = len(chunks)
    per_pair = (KT * I2 + n_c * H) * 1 + 3 * n_c * 4  # SBUF bytes per partition of one expert (fp8 + scales)
    depth = max(1, min(4, (96 * 1024) // per_pair))
    y = nl.ndarray((T, H), dtype=x.dtype, buffer=nl.shared_hbm)
    xT = nl.ndarray((P, T, KT), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=xT, src=x.ap(pattern=[[KT, P], [H, T], [1, KT]], offset=0))
    idx_sb = nl.ndarray((1, T * TOP_K), dtype=idx.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=idx_sb, src=idx.reshape((1, T * TOP_K)))
    w_b = nl.ndarray((P, T * TOP_K), dtype=weights.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=w_b, src=weights.ap(pattern=[[0, P], [1, T * TOP_K]], offset=0))
    w_f = nl.ndarray((P, T * TOP_K), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=w_f, src=w_b)
    pairs = [t * TOP_K + j for t in range(T) for j in range(first, first + count)]
    rows0 = [_row_offsets(inter, n) for n in range(len(pairs))]
    e = nisa.register_alloc()

    def load(n):
        """Pair n's weights (v4's DMAs) and its [128, 3, C] scales (one more DMA, 12·C bytes a partition)."""
        gu, dn = _load_expert(w_gate_up, w_down, idx_sb[0:1, pairs[n] : pairs[n] + 1], e, rows0[n])
        sc = nl.ndarray((P, 3, n_c), dtype=scales.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=sc, src=scales.ap(pattern=[[3 * n_c, P], [1, 3 * n_c]], offset=0, scalar_offset=e))
        return gu, dn, sc

    loaded = [load(n) for n in range(depth)]
    for n, pair in enumerate(pairs):
        t, j = divmod(pair, TOP_K)
        gu, dn, sc = loaded.pop(0)
        if n + depth < len(pairs):
            loaded.append(load(n + depth))
        if j == first:
            y_ps = nl.ndarray((1, H), dtype=nl.float32, buffer=nl.psum)
        acts = []
        for c, ((i0, isz), p0) in enumerate(zip(chunks, rows0[n])):
            rows = slice(p0, p0 + isz)
            tiling = dict(tile_position=(0, 64), tile_size=(128, 64)) if p0 else {}
            gu_ps = nl.ndarray((P, 2), dtype=nl.float32, buffer=nl.psum)
            for half, c0 in ((0, i0), (1, inter + i0)):
                for kt in range(KT):
                    nisa.nc_matmul(
                        dst=gu_ps[rows, half : half + 1],
                        stationary=gu[:, kt, c0 : c0 + isz],
                        moving=xT[:, t, kt : kt + 1],
                        accumulate=kt > 0,
                        **tiling,
                    )
            g = nl.ndarray((P, 1), dtype=nl.float32, buffer=nl.sbuf)
            nisa.activation(dst=g[rows], op=nl.silu, data=gu_ps[rows, 0:1], scale=sc[rows, 0, c : c + 1])
            f = nl.ndarray((P, 1), dtype=nl.float32, buffer=nl.sbuf)  # s_up · s_down · w_k
            nisa.scalar_tensor_tensor(
                dst=f[rows],
                data=sc[rows, 1, c : c + 1],
                op0=nl.multiply,
                operand0=w_f[rows, pair : pair + 1],
                op1=nl.multiply,
                operand1=sc[rows, 2, c : c + 1],
            )
            act = nl.ndarray((P, 1), dtype=x.dtype, buffer=nl.sbuf)
            nisa.scalar_tensor_tensor(
                dst=act[rows],
                data=g[rows],
                op0=nl.multiply,
                operand0=f[rows],
                op1=nl.multiply,
                operand1=gu_ps[rows, 1:2],
            )
            acts.append(act[rows])
        for h0 in range(0, H, HB):
            for c, ((_, isz), p0) in enumerate(zip(chunks, rows0[n])):
                nisa.nc_matmul(
                    dst=y_ps[:, h0 : h0 + HB],
                    stationary=acts[c],
                    moving=dn[p0 : p0 + isz, c, h0 : h0 + HB],
                    accumulate=j > first or c > 0,
                    **(dict(tile_position=(64, 0), tile_size=(64, 128)) if p0 else {}),
                )
        if j < first + count - 1:
            continue
        mine = y_ps[:, pid * HS : (pid + 1) * HS]
        y_sb = nl.ndarray((1, HS), dtype=x.dtype, buffer=nl.sbuf)
        if n_prog > 1:
            other = 1 - pid
            part = nl.ndarray((1, HS), dtype=nl.float32, buffer=nl.sbuf)
            nisa.tensor_copy(dst=part, src=y_ps[:, other * HS : (other + 1) * HS])
            theirs = nl.ndarray((1, HS), dtype=nl.float32, buffer=nl.sbuf)
            nisa.sendrecv(src=part, dst=theirs, send_to_rank=other, recv_from_rank=other, pipe_id=0)
            nisa.tensor_tensor(dst=y_sb, data1=mine, data2=theirs, op=nl.add)
        else:
            nisa.tensor_copy(dst=y_sb, src=mine)
        nisa.dma_copy(dst=y[t : t + 1, pid * HS : (pid + 1) * HS], src=y_sb)
    return y
