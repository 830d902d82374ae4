"""MoE router: logits = x @ w_gate, fp32 softmax, top-8, renormalised weights (+ routing metadata).

Shape legend: T tokens (any count >= 1), H hidden (multiple of 128; 2048), E experts (8 <= E <= 128 on the
free dim; 128 in the model), k = 8 experts per token, P = 128 partitions.
Layout: x [T, H] row-major; w_gate [H, E] (the transpose of the HF [E, H] gate weight); tokens go on
partitions, experts on the free dim. Logits are rounded to x.dtype as HF's bf16 gate output is, then the
softmax and the selection run in fp32.

Tie rule (the reference's, ``nki_moe.reference.top_k``): equal probabilities keep the lower expert index
first. ``max8`` returns repeated values once per occurrence and ``nc_find_index8`` maps repeats to
successive occurrences in ascending index order, which is that rule.

Versions (each adds one idea):
    v0  full softmax over E (exp, sum, reciprocal, scale), then max8 / nc_find_index8 on the probabilities
    v1  select on the logits and exponentiate only the 8 winners: the renormalised top-8 of a softmax is the
        softmax of the top-8 logits, so the E-wide exp, sum and scale disappear; tokens split over LNC=2
    v2  v1 plus routing metadata for the MoE prefill kernel: per-expert token counts, each (token, slot)'s
        position in the expert-grouped order, and that order itself (slot ids t·8 + j grouped by expert,
        tokens ascending within an expert). Single program (the order is a global prefix sum).

Run: ``nki_moe.sim.run(router_v1, x, w_gate)``; checked in tests/kernels/test_router.py.
"""

import nki
import nki.isa as nisa
import nki.language as nl

from nki_moe.kernels.tiles import lnc_share, load_transposed

TOP_K = 8


def _check(x, w_gate):
    """Restate the layout limits; returns (T, H, E)."""
    T, H = x.shape
    H_, E = w_gate.shape
    assert H == H_, f"hidden mismatch: x has H={H}, w_gate has H={H_}"
    assert H % 128 == 0, f"H={H} must be a multiple of 128"
    assert 8 <= E <= 512, f"E={E} experts must be in [8, 512] (one PSUM bank of logits)"
    assert T >= 1, f"need at least one token, got T={T}"
    return T, H, E


def _load_gate(w_gate):
    """w_gate [H, E] as [128, KT, E] (contraction on partitions), one DMA."""
    H, E = w_gate.shape
    P = 128
    w_t = nl.ndarray((P, H // P, E), dtype=w_gate.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=w_t, src=w_gate.ap(pattern=[[E, P], [P * E, H // P], [1, E]], offset=0))
    return w_t


def _logits(x, w_t, t0, tsz):
    """fp32 SBUF [tsz, E] logits of tokens t0.., rounded through x.dtype like HF's gate output."""
    KT, E = w_t.shape[1], w_t.shape[2]
    xT = load_transposed(x, t0, tsz)
    acc = nl.ndarray((tsz, E), dtype=nl.float32, buffer=nl.psum)
    for kt in range(KT):
        nisa.nc_matmul(dst=acc, stationary=xT[:, kt, :], moving=w_t[:, kt, :], accumulate=kt > 0)
    rounded = nl.ndarray((tsz, E), dtype=x.dtype, buffer=nl.sbuf)
    nisa.tensor_copy(dst=rounded, src=acc)
    logits = nl.ndarray((tsz, E), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=logits, src=rounded)
    return logits


def _normalise(dst, vals, tsz, exp_bias=None):
    """dst = vals / sum(vals) per token (vals [tsz, 8]); with ``exp_bias`` vals are exp(vals + bias) first."""
    ssum = nl.ndarray((tsz, 1), dtype=nl.float32, buffer=nl.sbuf)
    if exp_bias is None:
        nisa.tensor_reduce(dst=ssum, op=nl.add, data=vals, axis=1)
        e = vals
    else:
        e = nl.ndarray((tsz, TOP_K), dtype=nl.float32, buffer=nl.sbuf)
        nisa.activation(
            dst=e,
            op=nl.exp,
            data=vals,
            bias=exp_bias,
            reduce_op=nl.add,
            reduce_res=ssum,
            reduce_cmd=nisa.reduce_cmd.reset_reduce,
        )
    rsum = nl.ndarray((tsz, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.reciprocal(dst=rsum, data=ssum)
    nisa.tensor_scalar(dst=dst, data=e, op0=nl.multiply, operand0=rsum)


def _outputs(T, dtype):
    idx = nl.ndarray((T, TOP_K), dtype=nl.uint32, buffer=nl.shared_hbm)
    wts = nl.ndarray((T, TOP_K), dtype=dtype, buffer=nl.shared_hbm)
    return idx, wts


# ---- v0: full softmax, then top-8 of the probabilities ----------------------------------------------------
@nki.jit
def router_v0(x, w_gate):
    """Args: x [T, H] bf16, w_gate [H, E] bf16. Returns: (idx [T, 8] uint32, weights [T, 8] x.dtype)."""
    T, H, E = _check(x, w_gate)
    idx, wts = _outputs(T, x.dtype)
    w_t = _load_gate(w_gate)
    for t0 in range(0, T, 128):
        tsz = min(128, T - t0)
        logits = _logits(x, w_t, t0, tsz)
        neg_max = nl.ndarray((tsz, 1), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_reduce(dst=neg_max, op=nl.maximum, data=logits, axis=1, negate=True)
        probs = nl.ndarray((tsz, E), dtype=nl.float32, buffer=nl.sbuf)
        _normalise_wide(probs, logits, neg_max, tsz, E)
        top = nl.ndarray((tsz, TOP_K), dtype=nl.float32, buffer=nl.sbuf)
        nisa.max8(dst=top, src=probs)
        i_t = nl.ndarray((tsz, TOP_K), dtype=nl.uint32, buffer=nl.sbuf)
        nisa.nc_find_index8(dst=i_t, data=probs, vals=top)
        w_out = nl.ndarray((tsz, TOP_K), dtype=x.dtype, buffer=nl.sbuf)
        _normalise(w_out, top, tsz)
        nisa.dma_copy(dst=idx[t0 : t0 + tsz, :], src=i_t)
        nisa.dma_copy(dst=wts[t0 : t0 + tsz, :], src=w_out)
    return idx, wts


def _normalise_wide(probs, logits, neg_max, tsz, E):
    """probs = softmax(logits) over E: exp on ACT with the row sum accumulated, then a DVE scale."""
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


# ---- v1: select on the logits, exponentiate only the top 8 ------------------------------------------------
def _select(x, w_t, t0, tsz):
    """(top-8 expert indices uint32 [tsz, 8], weights fp32 [tsz, 8]) of tokens t0.. from their logits."""
    logits = _logits(x, w_t, t0, tsz)
    top = nl.ndarray((tsz, TOP_K), dtype=nl.float32, buffer=nl.sbuf)
    nisa.max8(dst=top, src=logits)
    i_t = nl.ndarray((tsz, TOP_K), dtype=nl.uint32, buffer=nl.sbuf)
    nisa.nc_find_index8(dst=i_t, data=logits, vals=top)
    neg_max = nl.ndarray((tsz, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_scalar(dst=neg_max, data=top[:, 0:1], op0=nl.multiply, operand0=-1.0)
    w_f = nl.ndarray((tsz, TOP_K), dtype=nl.float32, buffer=nl.sbuf)
    _normalise(w_f, top, tsz, exp_bias=neg_max)
    return i_t, w_f


def _store_selection(idx, wts, i_t, w_f, t0, tsz):
    w_out = nl.ndarray((tsz, TOP_K), dtype=wts.dtype, buffer=nl.sbuf)
    nisa.tensor_copy(dst=w_out, src=w_f)
    nisa.dma_copy(dst=idx[t0 : t0 + tsz, :], src=i_t)
    nisa.dma_copy(dst=wts[t0 : t0 + tsz, :], src=w_out)


@nki.jit
def router_v1(x, w_gate):
    """As router_v0 with the selection on the logits; launch ``router_v1[2]`` to split token tiles."""
    T, H, E = _check(x, w_gate)
    idx, wts = _outputs(T, x.dtype)
    first, count = lnc_share(-(-T // 128))
    if count > 0:
        w_t = _load_gate(w_gate)
        for t0 in range(first * 128, min(T, (first + count) * 128), 128):
            tsz = min(128, T - t0)
            i_t, w_f = _select(x, w_t, t0, tsz)
            _store_selection(idx, wts, i_t, w_f, t0, tsz)
    return idx, wts


# ---- v2: v1 + per-expert counts and the expert-grouped token order ----------------------------------------
def _one_hot_T(i_t, iota_e, maskT, t0, tsz):
    """maskT[e, t0 + t] = 1 if token t routed to expert e (8 compares on DVE, one PE transpose)."""
    E = iota_e.shape[1]
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


def _expert_bases(cum, counts, T):
    """Per-expert start of its group minus one, [E, 1] fp32 (exclusive prefix via transposes)."""
    E = cum.shape[0]
    cnt = nl.ndarray((E, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=cnt, src=cum[:, T - 1 : T])
    cnt_i = nl.ndarray((E, 1), dtype=nl.int32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=cnt_i, src=cnt)
    nisa.dma_copy(dst=counts.reshape((E, 1)), src=cnt_i)
    row_psum = nl.ndarray((1, E), dtype=nl.float32, buffer=nl.psum)
    nisa.nc_transpose(dst=row_psum, data=cnt)
    row = nl.ndarray((1, E), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=row, src=row_psum)
    incl = nl.ndarray((1, E), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_scalar_cumulative(dst=incl, src=row, op0=nl.add, op1=nl.add, imm0=0.0)
    base_row = nl.ndarray((1, E), dtype=nl.float32, buffer=nl.sbuf)  # exclusive prefix − 1
    nisa.scalar_tensor_tensor(
        dst=base_row, data=incl, op0=nl.subtract, operand0=1.0, op1=nl.subtract, operand1=row
    )
    col_psum = nl.ndarray((E, 1), dtype=nl.float32, buffer=nl.psum)
    nisa.nc_transpose(dst=col_psum, data=base_row)
    base = nl.ndarray((E, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_copy(dst=base, src=col_psum)
    return base


def _positions(posT, i_t, pos, order, t0, tsz):
    """pos[t, j] = posT[idx[t, j], t] (transpose + per-token gather); order[pos[t, j]] = t·8 + j (scatter)."""
    E = posT.shape[0]
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


@nki.jit
def router_v2(x, w_gate):
    """As router_v1 (LNC=1) plus routing metadata.

    Returns: (idx [T, 8] uint32, weights [T, 8] x.dtype, counts [E] int32, pos [T, 8] int32,
    order [T·8, 1] int32) with order[pos[t, j]] = t·8 + j; expert e's group is
    order[Σ_{e'<e} counts[e'] : Σ_{e'<=e} counts[e']], tokens ascending.
    """
    T, H, E = _check(x, w_gate)
    assert E <= 128, f"E={E} experts must fit the partitions for the grouped order"
    assert nl.num_programs() == 1, "router_v2 runs on one program (its order is a global prefix sum)"
    idx, wts = _outputs(T, x.dtype)
    counts = nl.ndarray((E,), dtype=nl.int32, buffer=nl.shared_hbm)
    pos = nl.ndarray((T, TOP_K), dtype=nl.int32, buffer=nl.shared_hbm)
    order = nl.ndarray((T * TOP_K, 1), dtype=nl.int32, buffer=nl.shared_hbm)
    w_t = _load_gate(w_gate)
    iota_e = nl.ndarray((128, E), dtype=nl.float32, buffer=nl.sbuf)
    nisa.iota(dst=iota_e, pattern=[[1, E]], offset=0, channel_multiplier=0)
    maskT = nl.ndarray((E, T), dtype=nl.bfloat16, buffer=nl.sbuf)
    sel = []
    for t0 in range(0, T, 128):
        tsz = min(128, T - t0)
        i_t, w_f = _select(x, w_t, t0, tsz)
        _store_selection(idx, wts, i_t, w_f, t0, tsz)
        _one_hot_T(i_t, iota_e, maskT, t0, tsz)
        sel.append((t0, tsz, i_t))
    cum = nl.ndarray((E, T), dtype=nl.float32, buffer=nl.sbuf)  # tokens routed to e among the first t + 1
    nisa.tensor_scalar_cumulative(dst=cum, src=maskT, op0=nl.add, op1=nl.add, imm0=0.0)
    base = _expert_bases(cum, counts, T)
    posT = nl.ndarray((E, T), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_scalar(dst=posT, data=cum, op0=nl.add, operand0=base)
    for t0, tsz, i_t in sel:
        _positions(posT, i_t, pos, order, t0, tsz)
    return idx, wts, counts, pos, order
