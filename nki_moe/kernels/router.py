"""MoE router: logits = x @ w_gate, fp32 softmax, top-8, renormalised weights (+ routing metadata).

Shape legend: T tokens (any count >= 1), H hidden (2048), E experts on the free dim (128 in the model),
k = 8 experts per token, P = nl.tile_size.pmax = 128 partitions, KT = H / P.
Layout: x [T, H] row-major; w_gate [H, E] (the transpose of the HF [E, H] gate weight); tokens go on
partitions, experts on the free dim. Logits are rounded to x.dtype as HF's bf16 gate output is, then the
softmax and the selection run in fp32.

Tie rule (the reference's, ``nki_moe.reference.top_k``): equal probabilities keep the lower expert index
first. ``max8`` returns repeated values once per occurrence and ``nc_find_index8`` maps repeats to
successive occurrences in ascending index order, which is that rule.

Versions (each adds one idea):
    router_v0  full softmax over E (exp, sum, reciprocal, scale), then max8 / nc_find_index8 on the probs
    router_v1  select on the logits, exponentiate only the 8 winners (the renormalised top-8 of a softmax is
               the softmax of the top-8 logits); token tiles split over LNC=2
    router_v2  v1 plus routing metadata for the MoE prefill kernel: per-expert token counts, each (token,
               slot)'s position in the expert-grouped order, and that order (slot ids t·8 + j by expert)

Run: ``nki_moe.sim.run(router_v2, x, w_gate)``; checked in tests/kernels/test_router.py.

Limits (asserted at entry; x [T, H], w_gate [H, E]):
    T >= 1                        v0-v2  at least one token
    H % 128 == 0                  v0-v2  whole [128, ·] contraction tiles
    8 <= E <= 512                 v0-v1  max8 needs 8 candidates; one PSUM bank holds 512 fp32 logits
    8 <= E <= 128                 v2     the experts go on the partitions for the grouped order
    lnc == 1                      v2     the order is a global prefix sum over all tokens
"""

import nki
import nki.isa as nisa
import nki.language as nl

from nki_moe.kernels.tiles import lnc_share, load_transposed, token_tiles

TOP_K = 8


def _check(x, w_gate):
    """Restate the layout limits; returns (T, H, E)."""
    P = nl.tile_size.pmax
    T, H = x.shape
    H_, E = w_gate.shape
    assert H == H_, f"hidden mismatch: x has H={H}, w_gate has H={H_}"
    assert H % P == 0, f"H={H} must be a multiple of {P}"
    assert 8 <= E <= 512, f"E={E} experts must be in [8, 512] (one PSUM bank of logits)"
    assert T >= 1, f"need at least one token, got T={T}"
    return T, H, E


# ---- v0: full softmax, then top-8 of the probabilities ----------------------------------------------------
@nki.jit
def router_v0(x, w_gate):
    """Args: x [T, H] bf16, w_gate [H, E] bf16. Returns: (idx [T, 8] uint32, weights [T, 8] x.dtype)."""
    T, H, E = _check(x, w_gate)
    P = nl.tile_size.pmax
    KT = H // P
    idx = nl.ndarray((T, TOP_K), dtype=nl.uint32, buffer=nl.shared_hbm)
    wts = nl.ndarray((T, TOP_K), dtype=x.dtype, buffer=nl.shared_hbm)
    w_t = nl.ndarray((P, KT, E), dtype=w_gate.dtype, buffer=nl.sbuf)  # contraction on partitions, one DMA
    nisa.dma_copy(dst=w_t, src=w_gate.ap(pattern=[[E, P], [P * E, KT], [1, E]], offset=0))
    for t0, tsz in token_tiles(T):
        # logits [tsz, E], rounded through x.dtype like HF's gate output, then fp32
        xT = load_transposed(x, t0, tsz)
        acc = nl.ndarray((tsz, E), dtype=nl.float32, buffer=nl.psum)
        for kt in range(KT):
            nisa.nc_matmul(dst=acc, stationary=xT[:, kt, :], moving=w_t[:, kt, :], accumulate=kt > 0)
        rounded = nl.ndarray((tsz, E), dtype=x.dtype, buffer=nl.sbuf)
        nisa.tensor_copy(dst=rounded, src=acc)
        logits = nl.ndarray((tsz, E), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_copy(dst=logits, src=rounded)
        # softmax over E: exp on ACT with the row sum accumulated, then a DVE scale
        neg_max = nl.ndarray((tsz, 1), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_reduce(dst=neg_max, op=nl.maximum, data=logits, axis=1, negate=True)
        probs = nl.ndarray((tsz, E), dtype=nl.float32, buffer=nl.sbuf)
        e = nl.ndarray((tsz, E), dtype=nl.float32, buffer=nl.sbuf)
        ssum = nl.ndarray((tsz, 1), dtype=nl.float32, buffer=nl.sbuf)
        nisa.activation(
            dst=e,
            op=nl.exp,
            data=logits,
            bias=neg_max,
            reduce_op=nl.add,
            reduce_res=ssum,
            reduce_cmd=nisa.reduce_cmd.reset_reduce,
        )
        rsum = nl.ndarray((tsz, 1), dtype=nl.float32, buffer=nl.sbuf)
        nisa.reciprocal(dst=rsum, data=ssum)
        nisa.tensor_scalar(dst=probs, data=e, op0=nl.multiply, operand0=rsum)
        # top-8 of the probabilities, renormalised to sum 1
        top = nl.ndarray((tsz, TOP_K), dtype=nl.float32, buffer=nl.sbuf)
        nisa.max8(dst=top, src=probs)
        i_t = nl.ndarray((tsz, TOP_K), dtype=nl.uint32, buffer=nl.sbuf)
        nisa.nc_find_index8(dst=i_t, data=probs, vals=top)
        w_out = nl.ndarray((tsz, TOP_K), dtype=x.dtype, buffer=nl.sbuf)
        top_sum = nl.ndarray((tsz, 1), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_reduce(dst=top_sum, op=nl.add, data=top, axis=1)
        top_rsum = nl.ndarray((tsz, 1), dtype=nl.float32, buffer=nl.sbuf)
        nisa.reciprocal(dst=top_rsum, data=top_sum)
        nisa.tensor_scalar(dst=w_out, data=top, op0=nl.multiply, operand0=top_rsum)
        nisa.dma_copy(dst=idx[t0 : t0 + tsz, :], src=i_t)
        nisa.dma_copy(dst=wts[t0 : t0 + tsz, :], src=w_out)
    return idx, wts


# ---- v1: select on the logits, exponentiate only the top 8 ------------------------------------------------
@nki.jit
def router_v1(x, w_gate):
    """As router_v0 with the selection on the logits; launch ``router_v1[2]`` to split token tiles."""
    T, H, E = _check(x, w_gate)
    P = nl.tile_size.pmax
    KT = H // P
    idx = nl.ndarray((T, TOP_K), dtype=nl.uint32, buffer=nl.shared_hbm)
    wts = nl.ndarray((T, TOP_K), dtype=x.dtype, buffer=nl.shared_hbm)
    tiles = token_tiles(T)
    first, count = lnc_share(len(tiles))
    if count > 0:
        w_t = nl.ndarray((P, KT, E), dtype=w_gate.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=w_t, src=w_gate.ap(pattern=[[E, P], [P * E, KT], [1, E]], offset=0))
        for t0, tsz in tiles[first : first + count]:
            xT = load_transposed(x, t0, tsz)
            acc = nl.ndarray((tsz, E), dtype=nl.float32, buffer=nl.psum)
            for kt in range(KT):
                nisa.nc_matmul(dst=acc, stationary=xT[:, kt, :], moving=w_t[:, kt, :], accumulate=kt > 0)
            rounded = nl.ndarray((tsz, E), dtype=x.dtype, buffer=nl.sbuf)
            nisa.tensor_copy(dst=rounded, src=acc)
            logits = nl.ndarray((tsz, E), dtype=nl.float32, buffer=nl.sbuf)
            nisa.tensor_copy(dst=logits, src=rounded)
            # top-8 of the logits; weights = softmax of the 8 winners (exp(l − max) / sum)
            top = nl.ndarray((tsz, TOP_K), dtype=nl.float32, buffer=nl.sbuf)
            nisa.max8(dst=top, src=logits)
            i_t = nl.ndarray((tsz, TOP_K), dtype=nl.uint32, buffer=nl.sbuf)
            nisa.nc_find_index8(dst=i_t, data=logits, vals=top)
            neg_max = nl.ndarray((tsz, 1), dtype=nl.float32, buffer=nl.sbuf)
            nisa.tensor_scalar(dst=neg_max, data=top[:, 0:1], op0=nl.multiply, operand0=-1.0)
            w_f = nl.ndarray((tsz, TOP_K), dtype=nl.float32, buffer=nl.sbuf)
            ssum = nl.ndarray((tsz, 1), dtype=nl.float32, buffer=nl.sbuf)
            e = nl.ndarray((tsz, TOP_K), dtype=nl.float32, buffer=nl.sbuf)
            nisa.activation(
                dst=e,
                op=nl.exp,
                data=top,
                bias=neg_max,
                reduce_op=nl.add,
                reduce_res=ssum,
                reduce_cmd=nisa.reduce_cmd.reset_reduce,
            )
            rsum = nl.ndarray((tsz, 1), dtype=nl.float32, buffer=nl.sbuf)
            nisa.reciprocal(dst=rsum, data=ssum)
            nisa.tensor_scalar(dst=w_f, data=e, op0=nl.multiply, operand0=rsum)
            w_out = nl.ndarray((tsz, TOP_K), dtype=wts.dtype, buffer=nl.sbuf)
            nisa.tensor_copy(dst=w_out, src=w_f)
            nisa.dma_copy(dst=idx[t0 : t0 + tsz, :], src=i_t)
            nisa.dma_copy(dst=wts[t0 : t0 + tsz, :], src=w_out)
    return idx, wts


# ---- v2: v1 + per-expert counts and the expert-grouped token order ----------------------------------------
@nki.jit
def router_v2(x, w_gate):
    """As router_v1 (LNC=1) plus routing metadata.

    Returns: (idx [T, 8] uint32, weights [T, 8] x.dtype, counts [E] int32, pos [T, 8] int32,
    order [T·8, 1] int32) with order[pos[t, j]] = t·8 + j; expert e's group is
    order[Σ_{e'<e} counts[e'] : Σ_{e'<=e} counts[e']], tokens ascending.
    """
    T, H, E = _check(x, w_gate)
    P = nl.tile_size.pmax
    KT = H // P
    assert E <= P, f"E={E} experts must fit the partitions for the grouped order"
    assert nl.num_programs() == 1, "router_v2 runs on one program (its order is a global prefix sum)"
    idx = nl.ndarray((T, TOP_K), dtype=nl.uint32, buffer=nl.shared_hbm)
    wts = nl.ndarray((T, TOP_K), dtype=x.dtype, buffer=nl.shared_hbm)
    counts = nl.ndarray((E,), dtype=nl.int32, buffer=nl.shared_hbm)
    pos = nl.ndarray((T, TOP_K), dtype=nl.int32, buffer=nl.shared_hbm)
    order = nl.ndarray((T * TOP_K, 1), dtype=nl.int32, buffer=nl.shared_hbm)
    w_t = nl.ndarray((P, KT, E), dtype=w_gate.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=w_t, src=w_gate.ap(pattern=[[E, P], [P * E, KT], [1, E]], offset=0))
    iota_e = nl.ndarray((P, E), dtype=nl.float32, buffer=nl.sbuf)
    nisa.iota(dst=iota_e, pattern=[[1, E]], offset=0, channel_multiplier=0)
    maskT = nl.ndarray((E, T), dtype=nl.bfloat16, buffer=nl.sbuf)  # maskT[e, t] = token t routed to e
    sel = []
    for t0, tsz in token_tiles(T):
        # v1's selection
        xT = load_transposed(x, t0, tsz)
        acc = nl.ndarray((tsz, E), dtype=nl.float32, buffer=nl.psum)
        for kt in range(KT):
            nisa.nc_matmul(dst=acc, stationary=xT[:, kt, :], moving=w_t[:, kt, :], accumulate=kt > 0)
        rounded = nl.ndarray((tsz, E), dtype=x.dtype, buffer=nl.sbuf)
        nisa.tensor_copy(dst=rounded, src=acc)
        logits = nl.ndarray((tsz, E), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_copy(dst=logits, src=rounded)
        top = nl.ndarray((tsz, TOP_K), dtype=nl.float32, buffer=nl.sbuf)
        nisa.max8(dst=top, src=logits)
        i_t = nl.ndarray((tsz, TOP_K), dtype=nl.uint32, buffer=nl.sbuf)
        nisa.nc_find_index8(dst=i_t, data=logits, vals=top)
        neg_max = nl.ndarray((tsz, 1), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_scalar(dst=neg_max, data=top[:, 0:1], op0=nl.multiply, operand0=-1.0)
        w_f = nl.ndarray((tsz, TOP_K), dtype=nl.float32, buffer=nl.sbuf)
        ssum = nl.ndarray((tsz, 1), dtype=nl.float32, buffer=nl.sbuf)
        e = nl.ndarray((tsz, TOP_K), dtype=nl.float32, buffer=nl.sbuf)
        nisa.activation(
            dst=e,
            op=nl.exp,
            data=top,
            bias=neg_max,
            reduce_op=nl.add,
            reduce_res=ssum,
            reduce_cmd=nisa.reduce_cmd.reset_reduce,
        )
        rsum = nl.ndarray((tsz, 1), dtype=nl.float32, buffer=nl.sbuf)
        nisa.reciprocal(dst=rsum, data=ssum)
        nisa.tensor_scalar(dst=w_f, data=e, op0=nl.multiply, operand0=rsum)
        w_out = nl.ndarray((tsz, TOP_K), dtype=wts.dtype, buffer=nl.sbuf)
        nisa.tensor_copy(dst=w_out, src=w_f)
        nisa.dma_copy(dst=idx[t0 : t0 + tsz, :], src=i_t)
        nisa.dma_copy(dst=wts[t0 : t0 + tsz, :], src=w_out)
        # one-hot of the 8 choices (8 compares on DVE), transposed onto the expert partitions
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
    # cum[e, t]: tokens routed to e among the first t + 1; counts = its last column
    cum = nl.ndarray((E, T), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_scalar_cumulative(dst=cum, src=maskT, op0=nl.add, op1=nl.add, imm0=0.0)
    cnt = nl.ndarray((E, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=cnt, src=cum[:, T - 1 : T])
    cnt_i = nl.ndarray((E, 1), dtype=nl.int32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=cnt_i, src=cnt)
    nisa.dma_copy(dst=counts.reshape((E, 1)), src=cnt_i)
    # base[e] = start of e's group − 1: an exclusive prefix over experts, on a [1, E] row (two PE transposes)
    row_psum = nl.ndarray((1, E), dtype=nl.float32, buffer=nl.psum)
    nisa.nc_transpose(dst=row_psum, data=cnt)
    row = nl.ndarray((1, E), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=row, src=row_psum)
    incl = nl.ndarray((1, E), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_scalar_cumulative(dst=incl, src=row, op0=nl.add, op1=nl.add, imm0=0.0)
    base_row = nl.ndarray((1, E), dtype=nl.float32, buffer=nl.sbuf)
    nisa.scalar_tensor_tensor(
        dst=base_row, data=incl, op0=nl.subtract, operand0=1.0, op1=nl.subtract, operand1=row
    )
    col_psum = nl.ndarray((E, 1), dtype=nl.float32, buffer=nl.psum)
    nisa.nc_transpose(dst=col_psum, data=base_row)
    base = nl.ndarray((E, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=base, src=col_psum)
    posT = nl.ndarray((E, T), dtype=nl.float32, buffer=nl.sbuf)  # posT[e, t]: slot of (t, e) in the order
    nisa.tensor_scalar(dst=posT, data=cum, op0=nl.add, operand0=base)
    for t0, tsz, i_t in sel:
        # pos[t, j] = posT[idx[t, j], t] (transpose + per-token gather); order[pos[t, j]] = t·8 + j (scatter)
        p_psum = nl.ndarray((tsz, E), dtype=nl.float32, buffer=nl.psum)
        nisa.nc_transpose(dst=p_psum, data=posT[:, t0 : t0 + tsz])
        p_full = nl.ndarray((tsz, E), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_copy(dst=p_full, src=p_psum)
        p8 = nl.ndarray((tsz, TOP_K), dtype=nl.float32, buffer=nl.sbuf)
        nisa.nc_n_gather(dst=p8, data=p_full, indices=i_t)
        p_u = nl.ndarray((tsz, TOP_K), dtype=nl.uint32, buffer=nl.sbuf)
        nisa.tensor_copy(dst=p_u, src=p8)
        p_i = nl.ndarray((tsz, TOP_K), dtype=nl.int32, buffer=nl.sbuf)
        nisa.tensor_copy(dst=p_i, src=p8)
        nisa.dma_copy(dst=pos[t0 : t0 + tsz, :], src=p_i)
        slots = nl.ndarray((tsz, TOP_K), dtype=nl.int32, buffer=nl.sbuf)
        nisa.iota(dst=slots, pattern=[[1, TOP_K]], offset=t0 * TOP_K, channel_multiplier=TOP_K)
        for j in range(TOP_K):
            nisa.dma_copy(
                dst=order.ap(
                    pattern=[[1, tsz], [1, 1]], offset=0, vector_offset=p_u[:, j : j + 1], indirect_dim=0
                ),
                src=slots[:, j : j + 1],
            )
    return idx, wts, counts, pos, order
