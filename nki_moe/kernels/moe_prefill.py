"""MoE prefill (context encoding): y = Σ_k w_k · down_k(silu(gate_k(x)) ⊙ up_k(x)) for T tokens at once.

Shape legend: T tokens (1 … 640: the competition's prompts are 14 … 512), H hidden (2048), E experts (128),
k = 8 experts per token, I one rank's share of each expert's intermediate dim (768 / TP: 192 at TP = 4),
P = nl.tile_size.pmax = 128 partitions, KT = H / P contraction tiles, HB = 512 fp32 columns (one PSUM bank),
B token slots per block (a version's ``BLOCK``), NB blocks in use, NBMAX = ceil(T·8 / B) + E their bound.
Layout (``moe_decode``'s, the reference's ``nki_moe.reference.moe_experts``): x [T, H]; idx [T, k] uint32
and weights [T, k] (the router's top-8); w_gate_up [E, H, 2I] (gate columns then up columns, one rank's
shard); w_down [E, I, H]. The contraction is tiled h = p·KT + kt (one contiguous gate|up run per partition,
as moe_decode_v2). Accumulation is fp32 in PSUM; the output is rounded to x.dtype.

Why a prefill kernel: from T ≈ 64 on, T·8 assignments touch nearly all 128 experts, so reading each chosen
expert once per (token, slot) pair (the decode kernels) re-reads every expert ≈ T/16 times. Grouping the
pairs by expert reads each touched expert once: the HBM floor (all 128 experts: 302 MB per rank at TP = 4)
rules up to large T, the PE floor (T·8·3·H·I MACs) only beyond.

Versions (each adds one idea):
    moe_prefill_v0  per token: moe_decode_v4's selective GEMVs for every (token, slot) pair, tokens beyond
                    128 included (LNC=2, 4 / 4 slots): each expert re-read by every pair that chose it
    moe_prefill_v1  grouped: the pairs sorted by expert on device (one-hot counts, a prefix sum for the
                    offsets, the (token, weight) table scattered into expert-contiguous order), a static loop
                    over the E experts with one blocked GEMM per 128-slot tile of its tokens (gathered by
                    indirect DMA, PE transposes; weights stationary): every expert's weights read once; each
                    tile's outputs (w_k applied at the PSUM eviction) stored to a slot-ordered HBM scratch,
                    gathered back per token and summed in fp32
    moe_prefill_v2  fixed-size token blocks of 64 slots (NxDI's blockwise layout): a block → expert table
                    and ONE dynamic loop over the blocks in use (its bound a register from the counts), so an
                    expert without tokens costs nothing and the padding is < 64 slots per expert
    moe_prefill_v3  LNC=2: the blocks interleaved between the two cores (block b on core b mod 2, a dynamic
                    loop of step 2; the cores' block counts differ by at most one whatever the routing), the
                    table's scatter split by token tiles, the combine by halves of H. Not done: an I split
                    (each core half of every expert) would exchange a [B, H] fp32 partial per block
    moe_prefill_v4  the DMA side: the next block's expert weights issued before this block's gather and
                    compute (two weight buffers in flight), the 64-row down chunk (I = 192) on partitions
                    64-127 (computed there by tile_position), so DMA engines 8-15 carry it while the 64-row
                    token gather and output store use engines 0-7; descriptors of 4-12 KiB (>= 2 KiB)
                    except the 8-byte table rows and 4-byte block ids
    moe_prefill_v5  no dependent small DMA behind the bulk: the next block's table rows and token gather one
                    block ahead, the expert id two ahead requested before the next weights (v4 queued both
                    behind 2.36 MB of weights), and the routing table written by one indirect DMA per token
                    tile (v1-v4: 8, each ≈ 2 µs of fixed latency, serialised across the two cores)
    moe_prefill_v6  the DMA engines balanced: the down projection writes column half h of the block's output
                    on partitions 64h … 64h + 63 (tile_position), so its store [128, H/2] runs on all 16
                    engines (v4/v5: the 64-row gather and store on engines 0-7, the 64-row down chunk on
                    8-15)
    moe_prefill_v7  the combine's fp32 running sum in PSUM: each add reads one PSUM and one SBUF operand,
                    the vector engine's full rate (N cycles, not 2N), so the combine is bound by its gathers

Not done (issue 15's v5): the combine fused into the down projection's epilogue. Costed on this model it
loses, so the rungs above went to what the schedule showed instead (v4 at T = 512, trn2, core 0: the first
weight DMA at 95 µs, 67 µs of the routing being 32 dependent table scatters; ≈ 3 µs of idle DMA engines per
block; engines 0-7 busy 648 µs against 534 µs for 8-15; 76 µs after the last matmul, the combine bound by its
fp32 adds; v7: 37 / 565 / 51 µs for routing / loop / combine, engines 602 / 600 µs). A DMA read-modify-write
scatter-add (dma_compute, software DGE) into an fp32 y moves, per 64-slot block, the fp32 rows in and out
(2 × 512 KiB) besides the block's 256 KiB, where v7 stores 256 KiB and reads it back once in the combine:
more DMA-engine time in the DMA-bound loop than the combine tail it removes, plus a zero fill and a final
bf16 pass of y; and its adds run in block (expert) order, so y would not be bit-identical to v4's. An
SBUF-resident y needs a cross-partition scatter (a one-hot matmul: MACs beyond the analytic count).

Dynamic loops (nl.dynamic_range, [NKI-ISA]): the bounds are registers loaded from SBUF; the induction
variable is used only as a DMA ``scalar_offset`` (legal from NKI 0.4). The emulator runs such a loop for
the register's value, so the trace (and the cost model) holds exactly the blocks in use. v4's prefetch carries
the next block's weight tiles from one iteration to the next: on hardware the two weight buffers would
alternate by iteration parity, i.e. the loop body unrolled by two; not written out here (ASSUMPTION that the
compiler's buffer rotation does it, as the cost model's two generations per allocation site do).

Run: ``nki_moe.sim.run(moe_prefill_v7[2], x, idx, weights, w_gate_up, w_down)``; checked in
tests/kernels/test_moe_prefill.py and notebooks/05_moe_prefill.py.

Limits (asserted at entry; x [T, H], idx/weights [T, k], w_gate_up [E, H, 2I], w_down [E, I, H]):
    1 <= T <= 640                 v0-v7  token tiles of 128; the routing tables fit SBUF
    H % 512 == 0                  v0-v7  whole [128, ·] contraction tiles and [·, 512] PSUM output rows
    k == 8                        v0-v7  the router's top-8
    8 <= E <= 128                 v1-v7  the experts go on the partitions of the counts and prefix sums
    B == 64                       v6-v7  a block fills one half of the partitions
"""

import nki
import nki.isa as nisa
import nki.language as nl

from nki_moe.kernels.moe_decode import _load_expert, _row_offsets, i_chunks
from nki_moe.kernels.tiles import lnc_share, token_tiles

TOP_K = 8
HB = 512  # fp32 output columns per PSUM bank (2 KiB per partition)
T_MAX = 640
BLOCK = {  # token slots per block of each grouped version (its padding unit)
    "moe_prefill_v1": 128,
    "moe_prefill_v2": 64,
    "moe_prefill_v3": 64,
    "moe_prefill_v4": 64,
    "moe_prefill_v5": 64,
    "moe_prefill_v6": 64,
    "moe_prefill_v7": 64,
}


def _check(x, idx, weights, w_gate_up, w_down, grouped=True):
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
    assert 1 <= T <= T_MAX, f"T={T} tokens must be in [1, {T_MAX}]"
    assert H % HB == 0, f"H={H} must be a multiple of {HB}"
    assert not grouped or TOP_K <= E <= nl.tile_size.pmax, f"E={E} experts must be in [8, 128]"
    return T, H, E, inter


def max_blocks(T, E, block):
    """NBMAX: Σ_e ceil(c_e / B) < T·8 / B + (experts touched), rounded up to fill whole 128-row tiles."""
    P = nl.tile_size.pmax
    nb = min(E * -(-T // block), -(-T * TOP_K // block) + min(E, T * TOP_K))
    return -(-nb * block // P) * P // block


# ---- shared leaves: the on-device grouping, the block's rows and tokens, the per-token combine -------------
def _route(idx, weights, E, block, one_scatter=False):
    """Group the T·8 (token, slot) pairs by expert into blocks of ``block`` slots, on device.

    Returns (tab, span, bexp, nb, pos):
        tab [NBMAX·B, 2] fp32 (HBM): slot s of the padded expert-grouped order → (token, weight); padding
            slots (0, 0) (token 0 is computed and never read back).
        span [E, 2] int32 (SBUF): expert e's blocks [first, end) (empty experts: first == end).
        bexp [NBMAX + 4, 1] uint32 (HBM): each block's expert (E beyond the blocks in use).
        nb [1, 1] int32 (SBUF): the blocks in use, Σ_e ceil(c_e / B).
        pos: per token tile (t0, tsz, slots [tsz, 8] uint32): the slot of each (token, slot) pair.
    On an LNC=2 launch both cores compute the counts and the block table; core 0 writes the table's padding,
    each core scatters the pairs of every other token tile into it (core barriers order the two steps): one
    indirect DMA per slot j (8 per tile), or with ``one_scatter`` one per tile (v5+: a vector_offset of one
    index per pair, [tsz, 8], one per row of the 8·tsz-row access pattern).
    """
    P = nl.tile_size.pmax
    T = idx.shape[0]
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    nbmax = max_blocks(T, E, block)
    R = nbmax * block // P  # table rows per partition
    tab = nl.ndarray((nbmax * block, 2), dtype=nl.float32, buffer=nl.shared_hbm)
    bexp = nl.ndarray((nbmax + 4, 1), dtype=nl.uint32, buffer=nl.private_hbm)
    iota_e = nl.ndarray((P, E), dtype=nl.float32, buffer=nl.sbuf)
    nisa.iota(dst=iota_e, pattern=[[1, E]], offset=0, channel_multiplier=0)
    # maskT[e, t] = 1 if token t chose expert e (8 compares, one PE transpose per token tile)
    maskT = nl.ndarray((E, T), dtype=nl.bfloat16, buffer=nl.sbuf)
    sel = []
    for t0, tsz in token_tiles(T):
        i_t = nl.ndarray((tsz, TOP_K), dtype=nl.uint32, buffer=nl.sbuf)
        nisa.dma_copy(dst=i_t, src=idx[t0 : t0 + tsz, :])
        i_f = nl.ndarray((tsz, TOP_K), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_copy(dst=i_f, src=i_t)
        mask = nl.ndarray((tsz, E), dtype=nl.bfloat16, buffer=nl.sbuf)
        nisa.tensor_scalar(dst=mask, data=iota_e[0:tsz, :], op0=nl.equal, operand0=i_f[:, 0:1])
        for j in range(1, TOP_K):
            nisa.scalar_tensor_tensor(
                dst=mask,
                data=iota_e[0:tsz, :],
                op0=nl.equal,
                operand0=i_f[:, j : j + 1],
                op1=nl.add,
                operand1=mask,
            )
        mT_psum = nl.ndarray((E, tsz), dtype=nl.bfloat16, buffer=nl.psum)
        nisa.nc_transpose(dst=mT_psum, data=mask)
        nisa.tensor_copy(dst=maskT[:, t0 : t0 + tsz], src=mT_psum)
        sel.append((t0, tsz, i_t))
    # cum[e, t]: pairs of expert e among tokens 0 … t; c_e = its last column; ceil(c_e / B) = #{k: k·B < c_e}
    cum = nl.ndarray((E, T), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_scalar_cumulative(dst=cum, src=maskT, op0=nl.add, op1=nl.add, imm0=0.0)
    KB = -(-T // block)
    thr = nl.ndarray((E, KB), dtype=nl.float32, buffer=nl.sbuf)
    nisa.iota(dst=thr, pattern=[[block, KB]], offset=0, channel_multiplier=0)
    hit = nl.ndarray((E, KB), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_scalar(dst=hit, data=thr, op0=nl.less, operand0=cum[:, T - 1 : T])
    nblk = nl.ndarray((E, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_reduce(dst=nblk, op=nl.add, data=hit, axis=1)
    # the experts' first blocks: an exclusive prefix sum over the experts, on a [1, E] row (PE transposes)
    row_ps = nl.ndarray((1, E), dtype=nl.float32, buffer=nl.psum)
    nisa.nc_transpose(dst=row_ps, data=nblk)
    row = nl.ndarray((1, E), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=row, src=row_ps)
    incl = nl.ndarray((1, E), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_scalar_cumulative(dst=incl, src=row, op0=nl.add, op1=nl.add, imm0=0.0)
    excl = nl.ndarray((1, E), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_tensor(dst=excl, data1=incl, data2=row, op=nl.subtract)
    span_f = nl.ndarray((E, 2), dtype=nl.float32, buffer=nl.sbuf)
    for c, r in enumerate((excl, incl)):
        col_ps = nl.ndarray((E, 1), dtype=nl.float32, buffer=nl.psum)
        nisa.nc_transpose(dst=col_ps, data=r)
        nisa.tensor_copy(dst=span_f[:, c : c + 1], src=col_ps)
    span = nl.ndarray((E, 2), dtype=nl.int32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=span, src=span_f)
    nb = nl.ndarray((1, 1), dtype=nl.int32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=nb, src=incl[:, E - 1 : E])
    # block b's expert = #{e: end_e <= b} (the experts ending at or before it), blocks on the partitions
    incl_bc = nl.ndarray((P, E), dtype=nl.float32, buffer=nl.sbuf)
    nisa.dma_copy(dst=incl_bc, src=incl.ap(pattern=[[E, 1], [0, P], [1, E]], offset=0))
    for b0 in range(0, nbmax + 4, P):
        bsz = min(P, nbmax + 4 - b0)
        b_id = nl.ndarray((bsz, 1), dtype=nl.float32, buffer=nl.sbuf)
        nisa.iota(dst=b_id, pattern=[[0, 1]], offset=b0, channel_multiplier=1)
        le = nl.ndarray((bsz, E), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_scalar(dst=le, data=incl_bc[0:bsz, :], op0=nl.less_equal, operand0=b_id)
        be = nl.ndarray((bsz, 1), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_reduce(dst=be, op=nl.add, data=le, axis=1)
        be_u = nl.ndarray((bsz, 1), dtype=nl.uint32, buffer=nl.sbuf)
        nisa.tensor_copy(dst=be_u, src=be)
        nisa.dma_copy(dst=bexp[b0 : b0 + bsz, :], src=be_u)
    # slot of pair (t, e) = B·first_e + cum[e, t] − 1; the table's padding first, then the pairs on top
    base = nl.ndarray((E, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_scalar(
        dst=base, data=span_f[:, 0:1], op0=nl.multiply, operand0=float(block), op1=nl.add, operand1=-1.0
    )
    posT = nl.ndarray((E, T), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_scalar(dst=posT, data=cum, op0=nl.add, operand0=base)
    if pid == 0:
        pad = nl.ndarray((P, R * 2), dtype=nl.float32, buffer=nl.sbuf)
        nisa.memset(dst=pad, value=0.0)
        nisa.dma_copy(dst=tab.reshape((P, R * 2)), src=pad)
    if n_prog > 1:
        nisa.core_barrier(tab, tuple(range(n_prog)))
    pos = []
    for n, (t0, tsz, i_t) in enumerate(sel):
        p_ps = nl.ndarray((tsz, E), dtype=nl.float32, buffer=nl.psum)
        nisa.nc_transpose(dst=p_ps, data=posT[:, t0 : t0 + tsz])
        p_full = nl.ndarray((tsz, E), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_copy(dst=p_full, src=p_ps)
        p8 = nl.ndarray((tsz, TOP_K), dtype=nl.float32, buffer=nl.sbuf)
        nisa.nc_n_gather(dst=p8, data=p_full, indices=i_t)  # p8[t, j] = posT[idx[t, j], t]
        p_u = nl.ndarray((tsz, TOP_K), dtype=nl.uint32, buffer=nl.sbuf)
        nisa.tensor_copy(dst=p_u, src=p8)
        pos.append((t0, tsz, p_u))
        if n % n_prog != pid:
            continue
        vals = nl.ndarray((tsz, TOP_K, 2), dtype=nl.float32, buffer=nl.sbuf)  # (token, weight) per slot
        nisa.iota(dst=vals[:, :, 0], pattern=[[0, TOP_K]], offset=t0, channel_multiplier=1)
        w_t = nl.ndarray((tsz, TOP_K), dtype=weights.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=w_t, src=weights[t0 : t0 + tsz, :])
        nisa.tensor_copy(dst=vals[:, :, 1], src=w_t)
        if one_scatter:  # the tile's 8·tsz pairs by one indirect DMA (an index per pair)
            nisa.dma_copy(
                dst=tab.ap(pattern=[[2, tsz * TOP_K], [1, 2]], offset=0, vector_offset=p_u, indirect_dim=0),
                src=vals,
            )
            continue
        for j in range(TOP_K):
            nisa.dma_copy(
                dst=tab.ap(
                    pattern=[[2, tsz], [1, 2]], offset=0, vector_offset=p_u[:, j : j + 1], indirect_dim=0
                ),
                src=vals[:, j, :],
            )
    if n_prog > 1:
        nisa.core_barrier(tab, tuple(range(n_prog)))
    return tab, span, bexp, nb, pos


def _block_rows(tab, blk, block, ahead=0, copies=1):
    """Block ``blk`` + ``ahead``'s token ids (uint32) [B, 1] and routing weights (fp32) [copies·B, 1] (the
    block's rows repeated on ``copies`` partition ranges); looking ahead, a block past the table's end reads
    as padding (token 0, weight 0: the DMA is skipped)."""
    rows = nl.ndarray((copies * block, 2), dtype=nl.float32, buffer=nl.sbuf)
    by_block = tab.reshape((tab.shape[0] // block, block * 2))  # scalar_offset steps one block
    pattern = [[2, block], [1, 2]] if copies == 1 else [[0, copies], [2, block], [1, 2]]
    src = by_block.ap(pattern=pattern, offset=ahead * block * 2, scalar_offset=blk)
    if ahead:
        nisa.memset(dst=rows, value=0.0)
        nisa.dma_copy(dst=rows, src=src, oob_mode=nisa.oob_mode.skip)
    else:
        nisa.dma_copy(dst=rows, src=src)
    tok = nl.ndarray((block, 1), dtype=nl.uint32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=tok, src=rows[0:block, 0:1])
    return tok, rows[:, 1:2]


def _store_block(out_slots, blk, y_sb):
    """Block ``blk``'s weighted outputs [B, H] to its rows of the slot-ordered scratch (4 KiB rows, hwdge)."""
    block, H = y_sb.shape
    by_block = out_slots.reshape((out_slots.shape[0] // block, block * H))
    nisa.dma_copy(dst=by_block.ap(pattern=[[H, block], [1, H]], offset=0, scalar_offset=blk), src=y_sb)


def _gather_xT(x, tok, block):
    """xT [P, KT, B], xT[p, kt, b] = x[tok[b], p·KT + kt]: the block's rows by indirect DMA, PE transposes."""
    return _transpose_rows(_gather_rows(x, tok, block))


def _gather_rows(x, tok, block):
    """x_rows [B, H] = x[tok]: the block's token rows by one indirect DMA (4 KiB rows)."""
    H = x.shape[1]
    x_rows = nl.ndarray((block, H), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(
        dst=x_rows, src=x.ap(pattern=[[H, block], [1, H]], offset=0, vector_offset=tok, indirect_dim=0)
    )
    return x_rows


def _transpose_rows(x_rows):
    """xT [P, KT, B], xT[p, kt, b] = x_rows[b, p·KT + kt] by PE transposes (one PSUM bank per eviction)."""
    P = nl.tile_size.pmax
    block, H = x_rows.shape
    KT = H // P
    xT = nl.ndarray((P, KT, block), dtype=x_rows.dtype, buffer=nl.sbuf)
    group = max(1, min(KT, 2048 // (2 * block)))  # transposes per 2 KiB PSUM bank, evicted by one copy
    for g0 in range(0, KT, group):
        gsz = min(group, KT - g0)
        xT_ps = nl.ndarray((P, gsz, block), dtype=x_rows.dtype, buffer=nl.psum)
        for g in range(gsz):
            nisa.nc_transpose(dst=xT_ps[:, g, :], data=x_rows[:, g0 + g : H : KT])
        nisa.tensor_copy(dst=xT[:, g0 : g0 + gsz, :], src=xT_ps)
    return xT


def _combine(out_slots, pos, y, acc_buffer=nl.sbuf):
    """y[t, cols] = Σ_j out_slots[slot(t, j), cols] (an fp32 sum of the weighted pair outputs, gathered by
    indirect DMA), every token tile; on an LNC=2 launch each core sums one half of the columns (after a
    barrier: the other core's blocks). ``acc_buffer`` holds the fp32 running sum: in PSUM (v7) each add reads
    one PSUM and one SBUF operand, the vector engine's full-rate case (N cycles, 2N for two SBUF operands,
    [ISA-OLD]); the same adds in the same order either way."""
    H = y.shape[1]
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    if n_prog > 1:
        nisa.core_barrier(out_slots, tuple(range(n_prog)))
    HS = H // n_prog
    for t0, tsz, slots in pos:
        pr = nl.ndarray((tsz, TOP_K, HS), dtype=out_slots.dtype, buffer=nl.sbuf)
        for j in range(TOP_K):
            nisa.dma_copy(
                dst=pr[:, j, :],
                src=out_slots.ap(
                    pattern=[[H, tsz], [1, HS]],
                    offset=pid * HS,
                    vector_offset=slots[:, j : j + 1],
                    indirect_dim=0,
                ),
            )
        acc = nl.ndarray((tsz, HS), dtype=nl.float32, buffer=acc_buffer)
        nisa.tensor_tensor(dst=acc, data1=pr[:, 0, :], data2=pr[:, 1, :], op=nl.add)
        for j in range(2, TOP_K - 1):
            nisa.tensor_tensor(dst=acc, data1=acc, data2=pr[:, j, :], op=nl.add)
        y_sb = nl.ndarray((tsz, HS), dtype=y.dtype, buffer=nl.sbuf)
        nisa.tensor_tensor(dst=y_sb, data1=acc, data2=pr[:, TOP_K - 1, :], op=nl.add)
        nisa.dma_copy(dst=y[t0 : t0 + tsz, pid * HS : (pid + 1) * HS], src=y_sb)


# ---- v0: per token, the decode kernel's selective GEMVs ----------------------------------------------------
@nki.jit
def moe_prefill_v0(x, idx, weights, w_gate_up, w_down):
    """moe_decode_v4 (launch ``moe_prefill_v0[2]``) for any T <= 640: every (token, slot) pair loads its
    expert by indirect DMA (loads issued up to 4 pairs ahead), 4 slots per core, a token's slots summed in
    PSUM.

    Args: x [T, H] bf16, idx [T, 8] uint32, weights [T, 8] bf16, w_gate_up [E, H, 2I], w_down [E, I, H].
    Returns: y [T, H] x.dtype.
    """
    T, H, E, inter = _check(x, idx, weights, w_gate_up, w_down, grouped=False)
    P = nl.tile_size.pmax
    KT, I2 = H // P, 2 * inter
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    first, count = lnc_share(TOP_K)
    HS = H // n_prog
    chunks = i_chunks(inter)
    depth = max(1, min(4, (96 * 1024) // ((KT * I2 + len(chunks) * H) * 2)))
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
    e = nisa.register_alloc()
    rows0 = [_row_offsets(inter, n) for n in range(len(pairs))]
    ids = [idx_sb[0:1, pair : pair + 1] for pair in pairs]
    loaded = [_load_expert(w_gate_up, w_down, ids[n], e, rows0[n]) for n in range(depth)]
    for n, pair in enumerate(pairs):
        t, j = divmod(pair, TOP_K)
        gu, dn = loaded.pop(0)
        if n + depth < len(pairs):
            loaded.append(_load_expert(w_gate_up, w_down, ids[n + depth], e, rows0[n + depth]))
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
            act = nl.ndarray((P, 1), dtype=x.dtype, buffer=nl.sbuf)
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


# ---- v1: grouped by expert on device, one GEMM per 128-token tile of each expert's tokens ------------------
@nki.jit
def moe_prefill_v1(x, idx, weights, w_gate_up, w_down):
    """Every expert's weights read once (a static loop over the E experts); its tokens, gathered from the
    device-built grouped order, in tiles of 128 (a dynamic loop over ceil(c_e / 128) tiles).

    Args/Returns: as moe_prefill_v0. Padding: each expert's last tile is filled up to 128 slots.
    """
    T, H, E, inter = _check(x, idx, weights, w_gate_up, w_down)
    P = nl.tile_size.pmax
    KT, I2 = H // P, 2 * inter
    B = BLOCK["moe_prefill_v1"]
    chunks = i_chunks(inter)
    y = nl.ndarray((T, H), dtype=x.dtype, buffer=nl.shared_hbm)
    tab, span, _, _, pos = _route(idx, weights, E, B)
    out_slots = nl.ndarray(
        (tab.shape[0], H), dtype=x.dtype, buffer=nl.shared_hbm
    )  # w_k · expert(x_t) per slot
    first, end = nisa.register_alloc(), nisa.register_alloc()
    for e in range(E):
        gu = nl.ndarray((P, KT, I2), dtype=w_gate_up.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=gu, src=w_gate_up.ap(pattern=[[KT * I2, P], [I2, KT], [1, I2]], offset=e * H * I2))
        dn = [nl.ndarray((isz, H), dtype=w_down.dtype, buffer=nl.sbuf) for _, isz in chunks]
        for (i0, isz), d in zip(chunks, dn):
            nisa.dma_copy(dst=d, src=w_down[e, i0 : i0 + isz, :])
        nisa.register_load(first, span[e : e + 1, 0:1])
        nisa.register_load(end, span[e : e + 1, 1:2])
        for blk in nl.dynamic_range(first, end):
            tok, w = _block_rows(tab, blk, B)
            xT = _gather_xT(x, tok, B)
            acts = []
            for i0, isz in chunks:
                gu_ps = nl.ndarray((isz, 2, B), dtype=nl.float32, buffer=nl.psum)
                for half, c0 in ((0, i0), (1, inter + i0)):
                    for kt in range(KT):
                        nisa.nc_matmul(
                            dst=gu_ps[:, half, :],
                            stationary=gu[:, kt, c0 : c0 + isz],
                            moving=xT[:, kt, :],
                            accumulate=kt > 0,
                        )
                g = nl.ndarray((isz, B), dtype=nl.float32, buffer=nl.sbuf)
                nisa.activation(dst=g, op=nl.silu, data=gu_ps[:, 0, :])
                act = nl.ndarray((isz, B), dtype=x.dtype, buffer=nl.sbuf)
                nisa.tensor_tensor(dst=act, data1=g, data2=gu_ps[:, 1, :], op=nl.multiply)
                acts.append(act)
            y_sb = nl.ndarray((B, H), dtype=x.dtype, buffer=nl.sbuf)
            for h0 in range(0, H, HB):
                y_ps = nl.ndarray((B, HB), dtype=nl.float32, buffer=nl.psum)
                for c, (act, d) in enumerate(zip(acts, dn)):
                    nisa.nc_matmul(dst=y_ps, stationary=act, moving=d[:, h0 : h0 + HB], accumulate=c > 0)
                nisa.tensor_scalar(dst=y_sb[:, h0 : h0 + HB], data=y_ps, op0=nl.multiply, operand0=w)
            _store_block(out_slots, blk, y_sb)
    _combine(out_slots, pos, y)
    return y


# ---- v2: fixed-size blocks of 64 slots, one dynamic loop over the blocks in use ----------------------------
@nki.jit
def moe_prefill_v2(x, idx, weights, w_gate_up, w_down):
    """As moe_prefill_v1 over NxDI-style blocks of 64 slots: block b's expert comes from the device-built
    block table (a register, the weight DMAs' scalar_offset), the loop runs over the blocks in use only.

    Args/Returns: as moe_prefill_v0. An expert spanning several blocks is read once per block.
    """
    T, H, E, inter = _check(x, idx, weights, w_gate_up, w_down)
    P = nl.tile_size.pmax
    KT, I2 = H // P, 2 * inter
    B = BLOCK["moe_prefill_v2"]
    chunks = i_chunks(inter)
    y = nl.ndarray((T, H), dtype=x.dtype, buffer=nl.shared_hbm)
    tab, _, bexp, nb, pos = _route(idx, weights, E, B)
    out_slots = nl.ndarray((tab.shape[0], H), dtype=x.dtype, buffer=nl.shared_hbm)
    n_blocks, e = nisa.register_alloc(), nisa.register_alloc()
    nisa.register_load(n_blocks, nb)
    for blk in nl.dynamic_range(n_blocks):
        e_sb = nl.ndarray((1, 1), dtype=nl.uint32, buffer=nl.sbuf)
        nisa.dma_copy(dst=e_sb, src=bexp.ap(pattern=[[1, 1], [1, 1]], offset=0, scalar_offset=blk))
        nisa.register_load(e, e_sb)
        gu = nl.ndarray((P, KT, I2), dtype=w_gate_up.dtype, buffer=nl.sbuf)
        nisa.dma_copy(
            dst=gu, src=w_gate_up.ap(pattern=[[KT * I2, P], [I2, KT], [1, I2]], offset=0, scalar_offset=e)
        )
        dn = [nl.ndarray((isz, H), dtype=w_down.dtype, buffer=nl.sbuf) for _, isz in chunks]
        for (i0, isz), d in zip(chunks, dn):
            nisa.dma_copy(dst=d, src=w_down.ap(pattern=[[H, isz], [1, H]], offset=i0 * H, scalar_offset=e))
        tok, w = _block_rows(tab, blk, B)
        xT = _gather_xT(x, tok, B)
        acts = []
        for i0, isz in chunks:
            gu_ps = nl.ndarray((isz, 2, B), dtype=nl.float32, buffer=nl.psum)
            for half, c0 in ((0, i0), (1, inter + i0)):
                for kt in range(KT):
                    nisa.nc_matmul(
                        dst=gu_ps[:, half, :],
                        stationary=gu[:, kt, c0 : c0 + isz],
                        moving=xT[:, kt, :],
                        accumulate=kt > 0,
                    )
            g = nl.ndarray((isz, B), dtype=nl.float32, buffer=nl.sbuf)
            nisa.activation(dst=g, op=nl.silu, data=gu_ps[:, 0, :])
            act = nl.ndarray((isz, B), dtype=x.dtype, buffer=nl.sbuf)
            nisa.tensor_tensor(dst=act, data1=g, data2=gu_ps[:, 1, :], op=nl.multiply)
            acts.append(act)
        y_sb = nl.ndarray((B, H), dtype=x.dtype, buffer=nl.sbuf)
        for h0 in range(0, H, HB):
            y_ps = nl.ndarray((B, HB), dtype=nl.float32, buffer=nl.psum)
            for c, (act, d) in enumerate(zip(acts, dn)):
                nisa.nc_matmul(dst=y_ps, stationary=act, moving=d[:, h0 : h0 + HB], accumulate=c > 0)
            nisa.tensor_scalar(dst=y_sb[:, h0 : h0 + HB], data=y_ps, op0=nl.multiply, operand0=w)
        _store_block(out_slots, blk, y_sb)
    _combine(out_slots, pos, y)
    return y


# ---- v3: LNC=2, the blocks interleaved between the cores ---------------------------------------------------
@nki.jit
def moe_prefill_v3(x, idx, weights, w_gate_up, w_down):
    """As moe_prefill_v2, launched ``moe_prefill_v3[2]``: core c runs blocks c, c + 2, … (a dynamic loop of
    step 2; the cores' blocks in use differ by at most one whatever the routing), the routing table's scatter
    is split by token tiles and the combine by halves of H.

    Args/Returns: as moe_prefill_v0.
    """
    T, H, E, inter = _check(x, idx, weights, w_gate_up, w_down)
    P = nl.tile_size.pmax
    KT, I2 = H // P, 2 * inter
    B = BLOCK["moe_prefill_v3"]
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    chunks = i_chunks(inter)
    y = nl.ndarray((T, H), dtype=x.dtype, buffer=nl.shared_hbm)
    tab, _, bexp, nb, pos = _route(idx, weights, E, B)
    out_slots = nl.ndarray((tab.shape[0], H), dtype=x.dtype, buffer=nl.shared_hbm)
    n_blocks, e = nisa.register_alloc(), nisa.register_alloc()
    nisa.register_load(n_blocks, nb)
    for blk in nl.dynamic_range(pid, n_blocks, n_prog):
        e_sb = nl.ndarray((1, 1), dtype=nl.uint32, buffer=nl.sbuf)
        nisa.dma_copy(dst=e_sb, src=bexp.ap(pattern=[[1, 1], [1, 1]], offset=0, scalar_offset=blk))
        nisa.register_load(e, e_sb)
        gu = nl.ndarray((P, KT, I2), dtype=w_gate_up.dtype, buffer=nl.sbuf)
        nisa.dma_copy(
            dst=gu, src=w_gate_up.ap(pattern=[[KT * I2, P], [I2, KT], [1, I2]], offset=0, scalar_offset=e)
        )
        dn = [nl.ndarray((isz, H), dtype=w_down.dtype, buffer=nl.sbuf) for _, isz in chunks]
        for (i0, isz), d in zip(chunks, dn):
            nisa.dma_copy(dst=d, src=w_down.ap(pattern=[[H, isz], [1, H]], offset=i0 * H, scalar_offset=e))
        tok, w = _block_rows(tab, blk, B)
        xT = _gather_xT(x, tok, B)
        acts = []
        for i0, isz in chunks:
            gu_ps = nl.ndarray((isz, 2, B), dtype=nl.float32, buffer=nl.psum)
            for half, c0 in ((0, i0), (1, inter + i0)):
                for kt in range(KT):
                    nisa.nc_matmul(
                        dst=gu_ps[:, half, :],
                        stationary=gu[:, kt, c0 : c0 + isz],
                        moving=xT[:, kt, :],
                        accumulate=kt > 0,
                    )
            g = nl.ndarray((isz, B), dtype=nl.float32, buffer=nl.sbuf)
            nisa.activation(dst=g, op=nl.silu, data=gu_ps[:, 0, :])
            act = nl.ndarray((isz, B), dtype=x.dtype, buffer=nl.sbuf)
            nisa.tensor_tensor(dst=act, data1=g, data2=gu_ps[:, 1, :], op=nl.multiply)
            acts.append(act)
        y_sb = nl.ndarray((B, H), dtype=x.dtype, buffer=nl.sbuf)
        for h0 in range(0, H, HB):
            y_ps = nl.ndarray((B, HB), dtype=nl.float32, buffer=nl.psum)
            for c, (act, d) in enumerate(zip(acts, dn)):
                nisa.nc_matmul(dst=y_ps, stationary=act, moving=d[:, h0 : h0 + HB], accumulate=c > 0)
            nisa.tensor_scalar(dst=y_sb[:, h0 : h0 + HB], data=y_ps, op0=nl.multiply, operand0=w)
        _store_block(out_slots, blk, y_sb)
    _combine(out_slots, pos, y)
    return y


# ---- v4: the next block's weights in flight during this block's compute, all 16 DMA engines busy -----------
def _block_expert_id(bexp, blk, ahead):
    """Start the DMA of block ``blk`` + ``ahead``'s expert id from the block table: a [1, 1] SBUF tile."""
    e_sb = nl.ndarray((1, 1), dtype=nl.uint32, buffer=nl.sbuf)
    nisa.dma_copy(dst=e_sb, src=bexp.ap(pattern=[[1, 1], [1, 1]], offset=ahead, scalar_offset=blk))
    return e_sb


def _load_block_expert(w_gate_up, w_down, e_sb, e):
    """Issue the weight DMAs of the expert whose id is in ``e_sb`` (loaded into register ``e``): gate|up one
    12 KiB run per partition; down in <= 128-row chunks of 4 KiB rows, a chunk of <= 64 rows on partitions
    64-127 (DMA engines 8-15, while the block's token gather uses 0-7). A block past the end has expert E:
    out of range, the DMAs are skipped.
    Returns: (gate|up [P, KT, 2I], [(down chunk tile [P, H], its first partition)])."""
    P = nl.tile_size.pmax
    _, H, I2 = w_gate_up.shape
    KT = H // P
    nisa.register_load(e, e_sb)
    skip = nisa.oob_mode.skip
    gu = nl.ndarray((P, KT, I2), dtype=w_gate_up.dtype, buffer=nl.sbuf)
    nisa.dma_copy(
        dst=gu,
        src=w_gate_up.ap(pattern=[[KT * I2, P], [I2, KT], [1, I2]], offset=0, scalar_offset=e),
        oob_mode=skip,
    )
    dn = []
    for i0, isz in i_chunks(I2 // 2):
        p0 = P // 2 if isz <= P // 2 else 0
        d = nl.ndarray((P, H), dtype=w_down.dtype, buffer=nl.sbuf)
        nisa.dma_copy(
            dst=d[p0 : p0 + isz, :],
            src=w_down.ap(pattern=[[H, isz], [1, H]], offset=i0 * H, scalar_offset=e),
            oob_mode=skip,
        )
        dn.append((d, p0))
    return gu, dn


@nki.jit
def moe_prefill_v4(x, idx, weights, w_gate_up, w_down):
    """As moe_prefill_v3 (launch ``moe_prefill_v4[2]``) with the DMA side tuned: this core's next block's
    weight DMAs go out before this block's gather and compute (two weight buffers in flight), and the
    <= 64-row down chunk lands on partitions 64-127 (its act computed there by tile_position), so its
    transfer runs on DMA engines 8-15 beside the 64-row token gather and output store on engines 0-7.

    Args/Returns: as moe_prefill_v0.
    """
    T, H, E, inter = _check(x, idx, weights, w_gate_up, w_down)
    P = nl.tile_size.pmax
    KT, Q = H // P, P // 2
    B = BLOCK["moe_prefill_v4"]
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    chunks = i_chunks(inter)
    y = nl.ndarray((T, H), dtype=x.dtype, buffer=nl.shared_hbm)
    tab, _, bexp, nb, pos = _route(idx, weights, E, B)
    out_slots = nl.ndarray((tab.shape[0], H), dtype=x.dtype, buffer=nl.shared_hbm)
    n_blocks, e = nisa.register_alloc(), nisa.register_alloc()
    nisa.register_load(n_blocks, nb)
    nxt = _load_block_expert(w_gate_up, w_down, _block_expert_id(bexp, 0, pid), e)
    nxt_id = _block_expert_id(bexp, 0, pid + n_prog)  # the ids run one block further ahead than the weights
    for blk in nl.dynamic_range(pid, n_blocks, n_prog):
        gu, dn = nxt  # issued one iteration ago (or before the loop)
        nxt = _load_block_expert(w_gate_up, w_down, nxt_id, e)
        nxt_id = _block_expert_id(bexp, blk, 2 * n_prog)
        tok, w = _block_rows(tab, blk, B)
        xT = _gather_xT(x, tok, B)
        acts = []
        for (i0, isz), (_, p0) in zip(chunks, dn):
            gu_ps = nl.ndarray((P, 2, B), dtype=nl.float32, buffer=nl.psum)
            for half, c0 in ((0, i0), (1, inter + i0)):
                for kt in range(KT):
                    nisa.nc_matmul(
                        dst=gu_ps[p0 : p0 + isz, half, :],
                        stationary=gu[:, kt, c0 : c0 + isz],
                        moving=xT[:, kt, :],
                        accumulate=kt > 0,
                        **(dict(tile_position=(0, Q), tile_size=(P, Q)) if p0 else {}),
                    )
            g = nl.ndarray((P, B), dtype=nl.float32, buffer=nl.sbuf)
            nisa.activation(dst=g[p0 : p0 + isz], op=nl.silu, data=gu_ps[p0 : p0 + isz, 0, :])
            act = nl.ndarray((P, B), dtype=x.dtype, buffer=nl.sbuf)
            nisa.tensor_tensor(
                dst=act[p0 : p0 + isz],
                data1=g[p0 : p0 + isz],
                data2=gu_ps[p0 : p0 + isz, 1, :],
                op=nl.multiply,
            )
            acts.append(act[p0 : p0 + isz])
        y_sb = nl.ndarray((B, H), dtype=x.dtype, buffer=nl.sbuf)
        for h0 in range(0, H, HB):
            y_ps = nl.ndarray((B, HB), dtype=nl.float32, buffer=nl.psum)
            for c, (act, ((_, isz), (d, p0))) in enumerate(zip(acts, zip(chunks, dn))):
                nisa.nc_matmul(
                    dst=y_ps,
                    stationary=act,
                    moving=d[p0 : p0 + isz, h0 : h0 + HB],
                    accumulate=c > 0,
                    **(dict(tile_position=(Q, 0), tile_size=(Q, P)) if p0 else {}),
                )
            nisa.tensor_scalar(dst=y_sb[:, h0 : h0 + HB], data=y_ps, op0=nl.multiply, operand0=w)
        _store_block(out_slots, blk, y_sb)
    _combine(out_slots, pos, y)
    return y


# ---- v5: every small DMA a block needs issued ahead of the bulk that would queue it ------------------------
@nki.jit
def moe_prefill_v5(x, idx, weights, w_gate_up, w_down):
    """As moe_prefill_v4 (launch ``moe_prefill_v5[2]``) with no dependent small DMA queued behind the bulk:
    the next block's table rows, then its token gather, are fetched one block ahead, and the expert id two
    blocks ahead is requested before the next block's weights (v4 issued both after 2.36 MB of weights on
    the same DMA engines: the next weights waited for the id, ≈ 3 µs of idle engines per block, and the
    compute for the gather); the routing table is written by one indirect DMA per token tile (v4: 8, each
    ≈ 2 µs of fixed latency, serialised across the cores through the shared table: 67 µs at T = 512).
    Estimate (cost model, one TP=4 rank) at T = 512: trn2 725 µs = 1.40x the floor (v4 885 µs; the look-ahead
    alone 783 µs), trn3 591 µs.

    Args/Returns: as moe_prefill_v0.
    """
    T, H, E, inter = _check(x, idx, weights, w_gate_up, w_down)
    P = nl.tile_size.pmax
    KT, Q = H // P, P // 2
    B = BLOCK["moe_prefill_v5"]
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    chunks = i_chunks(inter)
    y = nl.ndarray((T, H), dtype=x.dtype, buffer=nl.shared_hbm)
    tab, _, bexp, nb, pos = _route(idx, weights, E, B, one_scatter=True)
    out_slots = nl.ndarray((tab.shape[0], H), dtype=x.dtype, buffer=nl.shared_hbm)
    n_blocks, e = nisa.register_alloc(), nisa.register_alloc()
    nisa.register_load(n_blocks, nb)
    nxt_tok, nxt_w = _block_rows(tab, 0, B, ahead=pid)
    nxt = _load_block_expert(w_gate_up, w_down, _block_expert_id(bexp, 0, pid), e)
    nxt_id = _block_expert_id(bexp, 0, pid + n_prog)
    nxt_x = _gather_rows(x, nxt_tok, B)
    for blk in nl.dynamic_range(pid, n_blocks, n_prog):
        (gu, dn), x_rows, w = nxt, nxt_x, nxt_w  # issued one iteration ago (or before the loop)
        far_id = _block_expert_id(bexp, blk, 2 * n_prog)  # small DMAs first: not behind the next weights
        nxt_tok, nxt_w = _block_rows(tab, blk, B, ahead=n_prog)
        nxt = _load_block_expert(w_gate_up, w_down, nxt_id, e)
        nxt_x = _gather_rows(x, nxt_tok, B)
        nxt_id = far_id
        xT = _transpose_rows(x_rows)
        acts = []
        for (i0, isz), (_, p0) in zip(chunks, dn):
            gu_ps = nl.ndarray((P, 2, B), dtype=nl.float32, buffer=nl.psum)
            for half, c0 in ((0, i0), (1, inter + i0)):
                for kt in range(KT):
                    nisa.nc_matmul(
                        dst=gu_ps[p0 : p0 + isz, half, :],
                        stationary=gu[:, kt, c0 : c0 + isz],
                        moving=xT[:, kt, :],
                        accumulate=kt > 0,
                        **(dict(tile_position=(0, Q), tile_size=(P, Q)) if p0 else {}),
                    )
            g = nl.ndarray((P, B), dtype=nl.float32, buffer=nl.sbuf)
            nisa.activation(dst=g[p0 : p0 + isz], op=nl.silu, data=gu_ps[p0 : p0 + isz, 0, :])
            act = nl.ndarray((P, B), dtype=x.dtype, buffer=nl.sbuf)
            nisa.tensor_tensor(
                dst=act[p0 : p0 + isz],
                data1=g[p0 : p0 + isz],
                data2=gu_ps[p0 : p0 + isz, 1, :],
                op=nl.multiply,
            )
            acts.append(act[p0 : p0 + isz])
        y_sb = nl.ndarray((B, H), dtype=x.dtype, buffer=nl.sbuf)
        for h0 in range(0, H, HB):
            y_ps = nl.ndarray((B, HB), dtype=nl.float32, buffer=nl.psum)
            for c, (act, ((_, isz), (d, p0))) in enumerate(zip(acts, zip(chunks, dn))):
                nisa.nc_matmul(
                    dst=y_ps,
                    stationary=act,
                    moving=d[p0 : p0 + isz, h0 : h0 + HB],
                    accumulate=c > 0,
                    **(dict(tile_position=(Q, 0), tile_size=(Q, P)) if p0 else {}),
                )
            nisa.tensor_scalar(dst=y_sb[:, h0 : h0 + HB], data=y_ps, op0=nl.multiply, operand0=w)
        _store_block(out_slots, blk, y_sb)
    _combine(out_slots, pos, y)
    return y


# ---- v6: the block's output on all 128 partitions, so its store uses all 16 DMA engines -----------------
def _store_block_halves(out_slots, blk, y_sb):
    """Block ``blk``'s weighted outputs, y_sb [2B, H/2] (partition h·B + b: slot b's column half h), to its
    rows of the slot-ordered scratch: 2 KiB descriptors on all 16 DMA engines."""
    rows, HH = y_sb.shape
    block, H = rows // 2, 2 * HH
    by_block = out_slots.reshape((out_slots.shape[0] // block, block * H))
    nisa.dma_copy(
        dst=by_block.ap(pattern=[[HH, 2], [H, block], [1, HH]], offset=0, scalar_offset=blk), src=y_sb
    )


def _prefill_halves(x, idx, weights, w_gate_up, w_down, B, acc_buffer):
    """The body of moe_prefill_v6 and v7 (B-slot blocks, each column half of a block's output on its own
    partition half); ``acc_buffer`` holds the combine's fp32 running sum (``_combine``): SBUF in v6,
    PSUM in v7. Returns y."""
    T, H, E, inter = _check(x, idx, weights, w_gate_up, w_down)
    P = nl.tile_size.pmax
    KT, Q = H // P, P // 2
    HH, HC = H // 2, min(HB, H // 2)  # the column half on each partition half; PSUM chunk of it
    assert B == Q, f"B={B} slots must fill one partition half ({Q})"
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    chunks = i_chunks(inter)
    y = nl.ndarray((T, H), dtype=x.dtype, buffer=nl.shared_hbm)
    tab, _, bexp, nb, pos = _route(idx, weights, E, B, one_scatter=True)
    out_slots = nl.ndarray((tab.shape[0], H), dtype=x.dtype, buffer=nl.shared_hbm)
    n_blocks, e = nisa.register_alloc(), nisa.register_alloc()
    nisa.register_load(n_blocks, nb)
    nxt_tok, nxt_w = _block_rows(tab, 0, B, ahead=pid, copies=2)
    nxt = _load_block_expert(w_gate_up, w_down, _block_expert_id(bexp, 0, pid), e)
    nxt_id = _block_expert_id(bexp, 0, pid + n_prog)
    nxt_x = _gather_rows(x, nxt_tok, B)
    for blk in nl.dynamic_range(pid, n_blocks, n_prog):
        (gu, dn), x_rows, w = nxt, nxt_x, nxt_w  # issued one iteration ago (or before the loop)
        far_id = _block_expert_id(bexp, blk, 2 * n_prog)  # small DMAs first: not behind the next weights
        nxt_tok, nxt_w = _block_rows(tab, blk, B, ahead=n_prog, copies=2)
        nxt = _load_block_expert(w_gate_up, w_down, nxt_id, e)
        nxt_x = _gather_rows(x, nxt_tok, B)
        nxt_id = far_id
        xT = _transpose_rows(x_rows)
        acts = []
        for (i0, isz), (_, p0) in zip(chunks, dn):
            gu_ps = nl.ndarray((P, 2, B), dtype=nl.float32, buffer=nl.psum)
            for half, c0 in ((0, i0), (1, inter + i0)):
                for kt in range(KT):
                    nisa.nc_matmul(
                        dst=gu_ps[p0 : p0 + isz, half, :],
                        stationary=gu[:, kt, c0 : c0 + isz],
                        moving=xT[:, kt, :],
                        accumulate=kt > 0,
                        **(dict(tile_position=(0, Q), tile_size=(P, Q)) if p0 else {}),
                    )
            g = nl.ndarray((P, B), dtype=nl.float32, buffer=nl.sbuf)
            nisa.activation(dst=g[p0 : p0 + isz], op=nl.silu, data=gu_ps[p0 : p0 + isz, 0, :])
            act = nl.ndarray((P, B), dtype=x.dtype, buffer=nl.sbuf)
            nisa.tensor_tensor(
                dst=act[p0 : p0 + isz],
                data1=g[p0 : p0 + isz],
                data2=gu_ps[p0 : p0 + isz, 1, :],
                op=nl.multiply,
            )
            acts.append(act[p0 : p0 + isz])
        y_sb = nl.ndarray((P, HH), dtype=x.dtype, buffer=nl.sbuf)
        for h0 in range(0, H, HC):
            q0, c0 = h0 // HH * B, h0 % HH  # output partitions of this column chunk, its column in the half
            y_ps = nl.ndarray((P, HC), dtype=nl.float32, buffer=nl.psum)
            for c, (act, ((_, isz), (d, p0))) in enumerate(zip(acts, zip(chunks, dn))):
                tiling = dict(tile_position=(p0, q0), tile_size=(P if isz > Q else Q, Q))  # (row, col)
                nisa.nc_matmul(
                    dst=y_ps[q0 : q0 + B],
                    stationary=act,
                    moving=d[p0 : p0 + isz, h0 : h0 + HC],
                    accumulate=c > 0,
                    **(tiling if p0 or q0 else {}),
                )
            nisa.tensor_scalar(
                dst=y_sb[q0 : q0 + B, c0 : c0 + HC],
                data=y_ps[q0 : q0 + B],
                op0=nl.multiply,
                operand0=w[q0 : q0 + B],
            )
        _store_block_halves(out_slots, blk, y_sb)
    _combine(out_slots, pos, y, acc_buffer=acc_buffer)
    return y


@nki.jit
def moe_prefill_v6(x, idx, weights, w_gate_up, w_down):
    """As moe_prefill_v5 (launch ``moe_prefill_v6[2]``) with the DMA engines balanced: v5's 64-row transfers
    left engines 0-7 with two per block (the token gather and the output store) and 8-15 with one (the down
    chunk). Here the down projection writes column half h of the block's output on partitions 64·h … 64·h + 63
    (tile_position; the routing weights loaded on both halves), so the store is [128, H/2]: 2 KiB rows on all
    16 engines. Per block ≈ 8.5 µs of transfers on each engine (v5: 9.3 on 0-7, 7.7 on 8-15). Estimate at
    T = 512: trn2 679 µs = 1.31x the floor, trn3 554 µs.

    Args/Returns: as moe_prefill_v0.
    """
    return _prefill_halves(x, idx, weights, w_gate_up, w_down, BLOCK["moe_prefill_v6"], nl.sbuf)


# ---- v7: the combine's running sum in PSUM (full-rate vector adds) ----------------------------------------
@nki.jit
def moe_prefill_v7(x, idx, weights, w_gate_up, w_down):
    """As moe_prefill_v6 (launch ``moe_prefill_v7[2]``) with the combine's fp32 running sum in PSUM: each of
    a token tile's 7 adds reads one PSUM and one SBUF operand, the vector engine's full-rate case (N cycles
    instead of 2N), so the combine after the last block is bound by its gathers, not by the adds. The same
    adds in the same order: bit-identical to v4-v6. Estimate at T = 512: trn2 654 µs = 1.26x the floor (issue
    15's goal: 1.3x), trn3 534 µs = 1.74x.

    Args/Returns: as moe_prefill_v0.
    """
    return _prefill_halves(x, idx, weights, w_gate_up, w_down, BLOCK["moe_prefill_v7"], nl.psum)
