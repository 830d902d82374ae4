"""The registry of ops: each op's kernel module, reference, cost, inputs, versions, notebook, figures, tests.

A newcomer finds kernel → reference → notebook → figure by the op's name alone::

    from nki_moe import ops
    op = ops.get("matmul")      # a nki_moe.ladder.Ladder
    op.module, op.reference, op.notebook, op.figures, op.tests

The tests, the report and the README's op table iterate over :data:`OPS` (a test keeps the README equal to
:func:`readme_table`). Inputs are seeded: ``make_args(seed, **shape)`` draws from
``default_rng(seed + T)``, so a notebook, a test and a benchmark asking for the same shape get the same data.
"""

from __future__ import annotations

from functools import lru_cache

import ml_dtypes
import numpy as np

from nki_moe.check import check_close
from nki_moe.kernels.layouts import attention_layer_layout, tile_weight
from nki_moe.ladder import Ladder, Version, exact, ratio
from nki_moe.reference import (
    add_rms_norm,
    add_rms_norm_cost,
    linear,
    linear_cost,
    moe_block,
    moe_combine,
    moe_combine_cost,
    moe_experts,
    moe_experts_cost,
    rms_norm,
    rms_norm_cost,
)
from nki_moe.reference.attention import attention_core_cost, gqa_attention
from nki_moe.reference.norms import qk_norm
from nki_moe.reference.numerics import OpCost
from nki_moe.reference.rope import apply_rope, rope_cos_sin
from nki_moe.reference.router import router_cost, routing

__all__ = [
    "OPS",
    "get",
    "bf16",
    "readme_table",
    "attention_decode",
    "attention_layer_decode",
    "check_with_cache",
    "moe_decode",
    "moe_block_slots",
    "moe_expert_read_bytes",
    "moe_layer_decode",
    "moe_read_bytes",
    "moe_touched",
    "moe_weight_bytes",
]

HIDDEN = 2048
EPS = 1e-6


def bf16(a) -> np.ndarray:
    """``a`` rounded to a bfloat16 array."""
    return np.asarray(a, dtype=np.float32).astype(ml_dtypes.bfloat16)


# ---- RMSNorm and the fused residual add ------------------------------------------------------------------
def _norm_args(seed: int, T: int, H: int = HIDDEN) -> tuple:
    """x [T, H] (scale 2), w [H] (≈ 1), eps."""
    rng = np.random.default_rng(seed + T)
    return bf16(2 * rng.standard_normal((T, H))), bf16(1 + 0.1 * rng.standard_normal(H)), EPS


def _add_norm_args(seed: int, T: int, H: int = HIDDEN) -> tuple:
    """x, residual [T, H], w [H], eps (the kernels' argument order)."""
    x, w, eps = _norm_args(seed, T, H)
    residual = bf16(np.random.default_rng(seed + T + 1).standard_normal((T, H)))
    return x, residual, w, eps


def _compare_y(out, lowp, fp32):
    """The one output y by its 3-way error ratio."""
    return [ratio(out[0], lowp[0], fp32[0])]


def _compare_add_norm(out, lowp, fp32):
    """y by its error ratio; h (the new residual stream) bit-exact: one bf16 add, rounded as HF's."""
    return [ratio(out[0], lowp[0], fp32[0]), exact(out[1].astype(np.float32), lowp[1], "h")]


# ---- projections -------------------------------------------------------------------------------------------
def _matmul_args(seed: int, T: int, N: int = 4096, K: int = HIDDEN) -> tuple:
    """x [T, K], w [K, N] (the kernels' layout: ``W.T`` of the HF [N, K] weight)."""
    rng = np.random.default_rng(seed + T)
    return bf16(rng.standard_normal((T, K))), bf16(rng.standard_normal((K, N)) / 45)


def _matmul_cost(T: int, N: int = 4096, K: int = HIDDEN):
    return linear_cost(T, K, N)


def _tiled(args: tuple, lnc: int) -> tuple:
    """(x, w) → (x, w pre-tiled for ``lnc`` cores, N): the load-time layout of matmul_v5/v6."""
    x, w = args
    return x, tile_weight(w, n_prog=lnc), w.shape[1]


# ---- router ----------------------------------------------------------------------------------------------
def _router_args(seed: int, T: int, groups: int = 1, H: int = HIDDEN, E: int = 128) -> tuple:
    """x [T, H], w_gate [H, E]; ``groups`` > 1 repeats gate columns in runs (constructed ties)."""
    rng = np.random.default_rng(seed + T)
    base = rng.standard_normal((H, -(-E // groups))) / 20
    return bf16(rng.standard_normal((T, H))), bf16(base[:, np.arange(E) // groups])


def _router_cost(T: int, groups: int = 1, H: int = HIDDEN, E: int = 128):
    """The router's cost (``groups`` changes only the values, not the work)."""
    return router_cost(T, H, E)


def _compare_router(out, lowp, fp32):
    """Indices exact (ties: lower expert first); weights bf16-close; routing metadata exact when emitted."""
    got = [
        exact(out[0].astype(np.int64), lowp[0], "idx"),
        check_close(out[1].astype(np.float32), lowp[1], "bf16", name="weights"),
    ]
    names = ("counts", "pos", "order")
    for name, a, e in zip(names, out[2:], lowp[2:]):
        got.append(exact(a.reshape(e.shape).astype(np.int64), e, name))
    return got


# ---- MoE decode ------------------------------------------------------------------------------------------
MOE_I, MOE_E, TOP_K = 768, 128, 8  # Qwen3-30B-A3B: moe_intermediate_size, experts, experts per token


def _rank_inter(tp: int, inter: int = MOE_I) -> int:
    """One TP rank's share of each expert's intermediate dim (the deployment's split, I/tp rounded up)."""
    return -(-inter // tp)


@lru_cache(maxsize=2)
def _moe_weights(seed: int, H: int, inter: int, E: int) -> tuple:
    """One rank's expert weights, seeded and cached (128 experts are 0.3 GB at TP=4, 1.2 GB at TP=1), drawn
    one expert at a time: w_gate_up [E, H, 2I] (unit-variance GEMV outputs), w_down [E, I, H]."""
    rng = np.random.default_rng(seed)
    gate_up = np.empty((E, H, 2 * inter), ml_dtypes.bfloat16)
    down = np.empty((E, inter, H), ml_dtypes.bfloat16)
    for e in range(E):
        gate_up[e] = rng.standard_normal((H, 2 * inter), dtype=np.float32) / np.float32(np.sqrt(H))
        down[e] = rng.standard_normal((inter, H), dtype=np.float32) / np.float32(np.sqrt(inter))
    return gate_up, down


def _moe_args(
    seed: int,
    T: int,
    tp: int = 4,
    routing: str = "random",
    H: int = HIDDEN,
    inter: int = MOE_I,
    E: int = MOE_E,
) -> tuple:
    """x [T, H], idx [T, 8] uint32, weights [T, 8] bf16 (softmax of the 8 largest of random logits, in
    descending order), w_gate_up [E, H, 2I/tp], w_down [E, I/tp, H].

    ``routing``: "random" (each token's top-8 of its own logits), "repeat" (every token draws from the same
    10 experts: experts chosen by several tokens) or "half" (all experts from [0, E/2): what a split of the
    experts by owner would put on one core; experts E/2 … E − 1 get no token). For the prefill kernels:
    "hot" (every token's slot 0 is expert 0: one expert receives all T tokens) and "ties" (all logits
    equal: every token picks experts 0 … 7, lower index first, weights 1/8 each).
    """
    rng = np.random.default_rng(seed + T)
    x = bf16(rng.standard_normal((T, H)))
    logits = rng.standard_normal((T, E))
    if routing == "repeat":
        logits[:, 10:] -= 100.0
    elif routing == "half":
        logits[:, E // 2 :] -= 100.0
    elif routing == "hot":
        logits[:, 0] = logits.max(axis=1) + 0.5
    elif routing == "ties":
        logits[:] = 0.0
    elif routing != "random":
        raise ValueError(f"routing must be 'random', 'repeat', 'half', 'hot' or 'ties', got {routing!r}")
    idx = np.argsort(-logits, axis=1, kind="stable")[:, :TOP_K]
    top = np.take_along_axis(logits, idx, axis=1)
    w = np.exp(top - top[:, :1])
    return (
        x,
        idx.astype(np.uint32),
        bf16(w / w.sum(1, keepdims=True)),
        *_moe_weights(seed, H, _rank_inter(tp, inter), E),
    )


def moe_decode(x, idx, weights, w_gate_up, w_down, dtype="fp32"):
    """The reference with the kernels' signature: ``moe_combine(moe_experts(...))`` (HF's order)."""
    idx = np.asarray(idx).astype(np.int64)
    return moe_combine(moe_experts(x, idx, weights, w_gate_up, w_down, dtype), idx, dtype)


def moe_weight_bytes(
    T: int, tp: int = 4, experts: float = TOP_K, H: int = HIDDEN, inter: int = MOE_I
) -> float:
    """Bytes of ``experts`` experts' gate, up and down weights on one rank (bf16)."""
    return experts * 3 * H * _rank_inter(tp, inter) * 2


def _moe_cost(
    T: int, tp: int = 4, routing: str = "random", H: int = HIDDEN, inter: int = MOE_I, E: int = MOE_E
):
    """The experts' launch as the budget counts it: T·8 expert MLPs + the combine, the weights of the
    experts touched under uniform routing, E·(1 − (1 − 8/E)^T) (8 at T = 1); ``routing`` changes only the
    values, not the ideal work."""
    touched = E * (1 - (1 - TOP_K / E) ** T)
    return moe_experts_cost(T, H, _rank_inter(tp, inter), TOP_K, touched) + moe_combine_cost(T, H, TOP_K)


def _moe_layer_args(
    seed: int, T: int, tp: int = 4, H: int = HIDDEN, inter: int = MOE_I, E: int = MOE_E
) -> tuple:
    """The fused layer's inputs: h [T, H] (the residual stream), gamma [H] (≈ 1), w_router [H, E] (logits of
    std ≈ 2), one rank's w_gate_up [E, H, 2I/tp] and w_down [E, I/tp, H] (as ``moe_decode``'s), eps."""
    rng = np.random.default_rng(seed + T)
    h = bf16(rng.standard_normal((T, H)))
    gamma = bf16(1 + 0.1 * rng.standard_normal(H))
    w_router = bf16(rng.standard_normal((H, E)) / 20)
    return (h, gamma, w_router, *_moe_weights(seed, H, _rank_inter(tp, inter), E), EPS)


def moe_layer_decode(h, gamma, w_router, w_gate_up, w_down, eps, dtype="fp32"):
    """The fused layer's reference: ``rms_norm`` then ``moe_block`` (router top-8, experts, HF's combine).
    Returns: (y [T, H], idx [T, 8], weights [T, 8])."""
    return moe_block(rms_norm(h, gamma, eps, dtype), w_router, w_gate_up, w_down, TOP_K, True, dtype)


def _moe_layer_cost(T: int, tp: int = 4, H: int = HIDDEN, inter: int = MOE_I, E: int = MOE_E, cores: int = 2):
    """RMSNorm + router + the experts' launch (``_moe_cost``); the norm and router run on each of the
    launch's ``cores`` (no cross-core exchange before the first expert DMA, as in [MEGA] K13): counted
    ``cores`` times, the norm's cross-partition sum of squares as one [128, 128] ones matmul per token."""
    replicated = rms_norm_cost(T, H) + router_cost(T, H, E) + OpCost(128 * 128 * T, 0, 0)
    return OpCost(cores * replicated.macs, cores * replicated.weight_bytes, cores * replicated.act_bytes) + (
        _moe_cost(T, tp, "random", H, inter, E)
    )


def _moe_layer_padding(kernel: str, args: tuple) -> int:
    """MACs the fused layer computes beyond norm + router + experts by design, on each of the launch's 2
    cores: from v6 on, the PE transpose of the [E, T] logits back to [T, E] (T·E_tile² per 128-expert tile)
    and one [T, 128] x [T, 8] one-hot matmul per token putting the softmax weights on every partition; in v8,
    one fp32 [128, 128] identity matmul per token moving the received partial sums into PSUM."""
    if kernel == "moe_decode_v5":
        return 0
    (T, H), E = args[0].shape, args[2].shape[1]
    transpose = T * sum(min(128, E - e0) ** 2 for e0 in range(0, E, 128))
    per_core = transpose + T * (T * 128 * TOP_K) + (T * 128 * H // 2 if kernel == "moe_decode_v8" else 0)
    return 2 * per_core


def _compare_moe_layer(out, lowp, fp32):
    """y by its error ratio; ids exact (equal logits: lower expert first); weights bf16-close."""
    return [
        ratio(out[0], lowp[0], fp32[0]),
        exact(out[1].astype(np.int64), lowp[1], "idx"),
        check_close(out[2].astype(np.float32), lowp[2], "bf16", name="weights"),
    ]


def moe_block_slots(idx, block: int) -> int:
    """Token slots a grouped prefill kernel computes with blocks of ``block``: Σ_e ceil(c_e / block)·block
    over the experts' pair counts c_e (T·8 pairs + the padding; its MACs are 3·H·I per slot)."""
    counts = np.bincount(np.asarray(idx, np.int64).reshape(-1))
    return int((-(-counts // block) * block).sum())


def _moe_prefill_padding(kernel: str, args: tuple) -> int:
    """MACs a grouped prefill version computes on its blocks' padding slots (3·H·I per slot)."""
    from nki_moe.kernels.moe_prefill import BLOCK

    if kernel not in BLOCK:
        return 0
    idx, (_, H, I2) = args[1], args[3].shape
    return (moe_block_slots(idx, BLOCK[kernel]) - idx.size) * 3 * H * (I2 // 2)


def moe_expert_read_bytes(trace) -> int:
    """Bytes the DMAs of a MoE kernel's trace read from its expert weights: w_gate_up and w_down, the 4th and
    5th kernel arguments (the emulator numbers a launch's input tensors 1, 2, … in argument order)."""
    return sum(
        int(r.info.get("dma_bytes", 0))
        for r in trace
        if r.engine == "dma" and any(a.operand == "src" and a.alloc in (4, 5) for a in r.accesses)
    )


def moe_touched(idx) -> int:
    """Distinct experts the (token, slot) pairs of ``idx`` choose."""
    return len(np.unique(np.asarray(idx)))


def moe_read_bytes(trace) -> int:
    """Bytes the DMAs of an emulator trace read from HBM (the weights' share of a MoE kernel's traffic)."""
    hbm = ("private_hbm", "shared_hbm")
    return sum(
        int(r.info.get("dma_bytes", 0))
        for r in trace
        if r.engine == "dma" and any(a.operand == "src" and a.buffer in hbm for a in r.accesses)
    )


# ---- decode attention ------------------------------------------------------------------------------------
ROPE_THETA = 1e6  # Qwen3-30B-A3B rope_theta [QWEN3-CONFIG]


def _attn_decode_args(seed: int, L: int, n_q: int = 8, n_kv: int = 1, d: int = 128, cap: int = 640) -> tuple:
    """q [1, n_q·d], k, v [1, n_kv·d] (projection outputs, scale 2), q/k norm weights [d] (≈ 1), cos/sin
    [1, d] of position L (bf16, θ = 1e6), k_cache, v_cache [max(cap, L + 1), n_kv, d], L, eps.

    Cache rows L and beyond hold stale values 8× larger than the real ones: a kernel that reads row L
    before writing it, or any row past it, changes the output.
    """
    rng = np.random.default_rng(seed + L)
    rows = max(cap, L + 1)
    caches = []
    for _ in range(2):
        c = rng.standard_normal((rows, n_kv, d))
        c[L:] *= 8
        caches.append(bf16(c))
    cos, sin = rope_cos_sin(np.array([L]), d, ROPE_THETA, "bf16")
    return (
        bf16(2 * rng.standard_normal((1, n_q * d))),
        bf16(2 * rng.standard_normal((1, n_kv * d))),
        bf16(rng.standard_normal((1, n_kv * d))),
        bf16(1 + 0.1 * rng.standard_normal(d)),
        bf16(1 + 0.1 * rng.standard_normal(d)),
        bf16(cos),
        bf16(sin),
        *caches,
        L,
        EPS,
    )


def attention_decode(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, L, eps, dtype="fp32"):
    """The reference with the kernels' signature: q/k norm, RoPE, append at row L, ``gqa_attention``.

    Returns: (out [1, n_q·d], the appended k row [1, n_kv, d], the appended v row [1, n_kv, d]); the
    kernels return out and write the rows into the caches (``check_with_cache`` compares those).
    """
    _, n_kv, d = k_cache.shape
    qn = apply_rope(qk_norm(q.reshape(1, -1, d), q_norm_w, eps, dtype), cos, sin, dtype)
    kn = apply_rope(qk_norm(k.reshape(1, n_kv, d), k_norm_w, eps, dtype), cos, sin, dtype)
    keys = np.concatenate([k_cache[:L], kn])  # rows 0..L: the cache's first L, then the new one
    values = np.concatenate([v_cache[:L], v.reshape(1, n_kv, d)])
    out = gqa_attention(qn, keys, values, L, dtype)
    return out.reshape(1, -1), kn, v.reshape(1, n_kv, d)


def _attn_decode_cost(L: int, n_q: int = 8, n_kv: int = 1, d: int = 128, cap: int = 640):
    """One decode token over L cached positions: ``attention_core_cost`` (QKᵀ and PV over L + 1 keys)
    plus the two norm weights and the cos/sin row; ``cap`` changes only the cache's size, not the work."""
    return attention_core_cost(1, L, n_q, n_kv, d) + OpCost(0, 2 * d * 2, 2 * d * 2)


def _compare_out(out, lowp, fp32):
    """The attention output by its 3-way error ratio (the kernels return no other output)."""
    return [ratio(out[0], lowp[0], fp32[0], "out")]


# Ops whose v rows come out of a T-row projection inside the kernel: its fp32 sums run in the PE's order, not
# NumPy's, so a v row can differ by one bf16 ulp as k's can; the v rows are then checked as k's (bf16
# tolerance). Elsewhere v is an input (or the decode block's one row, bit-exact on every tested shape).
_V_PROJECTED = ("attention_block_prefill",)


def check_with_cache(op, version, seed: int | None = None, target: str | None = None, **shape):
    """``op.check`` of an attention version plus both caches after it. From row L (the op's ``L`` argument;
    0 for a prefill) the kernel's new rows: v bit-exact (``_V_PROJECTED``: as k), k (after norm + RoPE)
    within bf16 tolerance — the RMS's fp32 sum order is not NumPy's, so a row can differ by one bf16 ulp;
    every other row untouched (bit-exact). Returns (Checked, cache outcomes)."""
    args = op.args(seed, **shape)
    c = next(i for i, a in enumerate(args) if np.ndim(a) == 3)  # k_cache: the first 3-D argument
    before = [np.asarray(a).astype(np.float32) for a in args[c : c + 2]]
    checked = op.check(version, args=args, target=target, **shape)
    L = args[c + 2] if isinstance(args[c + 2], int) else 0
    outcomes = []
    for name, cache, old, rows in zip(("k_cache", "v_cache"), args[c : c + 2], before, checked.expected[1:3]):
        after, n = np.asarray(cache).astype(np.float32), len(rows)
        kept = np.concatenate([after[:L], after[L + n :]]), np.concatenate([old[:L], old[L + n :]])
        outcomes.append(exact(*kept, f"{name} rows not written"))
        if name == "v_cache" and op.name not in _V_PROJECTED:
            outcomes.append(exact(after[L : L + n], rows, f"{name} rows {L}..{L + n - 1}"))
        else:
            outcomes.append(check_close(after[L : L + n], rows, "bf16", name=f"{name} rows {L}..{L + n - 1}"))
    for o in outcomes:
        assert o, f"{op.name} {version} {shape}: {o.message}"
    return checked, outcomes


def _attn_block_args(
    seed: int, L: int, H: int = HIDDEN, n_q: int = 8, n_kv: int = 1, d: int = 128, cap: int = 640
) -> tuple:
    """x [1, H] (normed hidden), w_qkv [H, (n_q + 2·n_kv)·d] (q | k | v columns; GEMV outputs of scale 2),
    w_o [n_q·d, H], then the norm weights, cos/sin, caches, L and eps of the decode-attention inputs."""
    rng = np.random.default_rng(seed + L + 1)
    w_qkv, w_o = _block_weights(rng, H, n_q, n_kv, d)
    rest = _attn_decode_args(seed, L, n_q, n_kv, d, cap)[3:]
    return (bf16(rng.standard_normal((1, H))), w_qkv, w_o, *rest)


def _block_weights(rng, H: int, n_q: int, n_kv: int, d: int) -> tuple:
    """bf16 w_qkv [H, (n_q + 2·n_kv)·d] (q | k | v columns; outputs of scale 2 for x of scale 1) and w_o
    [n_q·d, H] of the fused blocks, drawn from ``rng``."""
    w_qkv = 2 * rng.standard_normal((H, (n_q + 2 * n_kv) * d), dtype=np.float32) / np.float32(np.sqrt(H))
    w_o = rng.standard_normal((n_q * d, H), dtype=np.float32) / np.float32(np.sqrt(n_q * d))
    return bf16(w_qkv), bf16(w_o)


def _qkv_split(x, w_qkv, w_o, k_cache, dtype):
    """q, k, v = x · w_qkv (rounded as HF's projections), split at the q | k | v columns."""
    _, n_kv, d = k_cache.shape
    n_q = w_o.shape[0] // d
    return np.split(linear(x, w_qkv, dtype), [n_q * d, (n_q + n_kv) * d], axis=1)


def attention_block_decode(
    x, w_qkv, w_o, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, L, eps, dtype="fp32"
):
    """The reference with the fused kernels' signature: the q|k|v projection, ``attention_decode``, o_proj.

    Returns: (y [1, H], the appended k row, the appended v row), as ``attention_decode``.
    """
    q, k, v = _qkv_split(x, w_qkv, w_o, k_cache, dtype)
    out, k_row, v_row = attention_decode(
        q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, L, eps, dtype
    )
    return linear(out, w_o, dtype), k_row, v_row


def _attn_block_cost(L: int, H: int = HIDDEN, n_q: int = 8, n_kv: int = 1, d: int = 128, cap: int = 640):
    """The fused block: the q|k|v and o projections' weights and MACs plus the decode attention's."""
    qkv, o = linear_cost(1, H, (n_q + 2 * n_kv) * d), linear_cost(1, n_q * d, H)
    return qkv + _attn_decode_cost(L, n_q, n_kv, d) + o


def _attn_layer_args(
    seed: int, L: int, H: int = HIDDEN, n_q: int = 8, n_kv: int = 1, d: int = 128, cap: int = 640
) -> tuple:
    """h [1, H] (the residual stream, scale 1), gamma [H] (the input norm's weight, ≈ 1), then the fused
    block's w_qkv, w_o, norm weights, cos/sin, caches, L and eps (``_attn_block_args`` without its x)."""
    rng = np.random.default_rng(seed + L + 2)
    h = bf16(rng.standard_normal((1, H)))
    gamma = bf16(1 + 0.1 * rng.standard_normal(H))
    return (h, gamma, *_attn_block_args(seed, L, H, n_q, n_kv, d, cap)[1:])


def attention_layer_decode(
    h, gamma, w_qkv, w_o, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, L, eps, dtype="fp32"
):
    """The decode attention layer's reference: ``rms_norm`` (rounded to bf16 in bf16 mode, as the model's
    separate input norm stores it) then ``attention_block_decode``. Returns: (y [1, H], k row, v row)."""
    x = rms_norm(h, gamma, eps, dtype)
    return attention_block_decode(
        x, w_qkv, w_o, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, L, eps, dtype
    )


def _attn_layer_cost(
    L: int, H: int = HIDDEN, n_q: int = 8, n_kv: int = 1, d: int = 128, cap: int = 640, cores: int = 2
):
    """The fused block (``_attn_block_cost``) plus the input norm, run on each of the launch's ``cores``
    as ``_moe_layer_cost`` counts its norm: h and gamma read per core, the cross-partition sum of squares
    as one [128, 128] ones matmul per core (the block's x is never read from HBM: it is h normed on chip,
    so the block's x bytes stand for one core's h)."""
    norm = OpCost(cores * 128 * 128, cores * H * 2, (cores - 1) * H * 2)
    return _attn_block_cost(L, H, n_q, n_kv, d, cap) + norm


def _layer_layout(args: tuple, lnc: int) -> tuple:
    """(h, gamma, w_qkv, w_o, …) -> attention_block_v8's load-time layout (``attention_layer_layout``)."""
    h, gamma, w_qkv, w_o, *rest = args
    _, n_kv, d = rest[4].shape  # k_cache
    return (h, gamma, *attention_layer_layout(w_qkv, w_o, n_kv, d), *rest)


def _attn_prefill_args(seed: int, T: int, n_q: int = 8, n_kv: int = 1, d: int = 128, cap: int = 640) -> tuple:
    """q [T, n_q·d], k, v [T, n_kv·d] (projection outputs), norm weights, cos/sin [T, d] of positions
    0..T-1, k_cache, v_cache [max(cap, T), n_kv, d] of stale values (rows overwritten or untouched), eps."""
    rng = np.random.default_rng(seed + T)
    rows = max(cap, T)
    cos, sin = rope_cos_sin(np.arange(T), d, ROPE_THETA, "bf16")
    return (
        bf16(2 * rng.standard_normal((T, n_q * d))),
        bf16(2 * rng.standard_normal((T, n_kv * d))),
        bf16(rng.standard_normal((T, n_kv * d))),
        bf16(1 + 0.1 * rng.standard_normal(d)),
        bf16(1 + 0.1 * rng.standard_normal(d)),
        bf16(cos),
        bf16(sin),
        bf16(8 * rng.standard_normal((rows, n_kv, d))),
        bf16(8 * rng.standard_normal((rows, n_kv, d))),
        EPS,
    )


def attention_prefill(q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps, dtype="fp32"):
    """The reference with the prefill kernels' signature: q/k norm, RoPE, causal ``gqa_attention`` from
    position 0. Returns: (out [T, n_q·d], the k rows [T, n_kv, d] and v rows written to cache rows 0..T-1)."""
    T = q.shape[0]
    _, n_kv, d = k_cache.shape
    qn = apply_rope(qk_norm(q.reshape(T, -1, d), q_norm_w, eps, dtype), cos, sin, dtype)
    kn = apply_rope(qk_norm(k.reshape(T, n_kv, d), k_norm_w, eps, dtype), cos, sin, dtype)
    values = v.reshape(T, n_kv, d)
    return gqa_attention(qn, kn, values, 0, dtype).reshape(T, -1), kn, values


def _attn_prefill_cost(T: int, n_q: int = 8, n_kv: int = 1, d: int = 128, cap: int = 640):
    """The prefill kernels' work: per head and 128-query tile [q0, q0 + tq) all keys 0 … q0 + tq − 1 (key
    tiles past the diagonal skipped, the diagonal tile computed whole and masked), for QKᵀ and PV; bytes:
    q, k, v in, out, K/V rows written. ``attention_core_cost(T, 0, …)`` is the ideal (masked pairs not
    counted)."""
    pairs = sum(min(128, T - q0) * min(T, q0 + 128) for q0 in range(0, T, 128))
    io = T * (2 * n_q * d + 4 * n_kv * d) * 2  # q in, out; k, v in; k, v rows out
    return OpCost(macs=2 * n_q * d * pairs, weight_bytes=2 * d * 2, act_bytes=io + 2 * T * d * 2)


def _attn_block_prefill_args(
    seed: int, T: int, H: int = HIDDEN, n_q: int = 8, n_kv: int = 1, d: int = 128, cap: int = 640
) -> tuple:
    """x [T, H] (after the input RMSNorm), w_qkv, w_o as the decode block's (``_block_weights``), then the
    norm weights, cos/sin [T, d], stale caches and eps of the prefill-attention inputs."""
    rng = np.random.default_rng(seed + T + 1)
    w_qkv, w_o = _block_weights(rng, H, n_q, n_kv, d)
    rest = _attn_prefill_args(seed, T, n_q, n_kv, d, cap)[3:]
    return (bf16(rng.standard_normal((T, H))), w_qkv, w_o, *rest)


def attention_block_prefill(x, w_qkv, w_o, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps, dtype="fp32"):
    """The reference with the prefill block's signature: the q|k|v projection, ``attention_prefill``,
    o_proj (the decode block's rounding points). Returns: (y [T, H], the k rows, the v rows of 0..T-1)."""
    q, k, v = _qkv_split(x, w_qkv, w_o, k_cache, dtype)
    out, k_rows, v_rows = attention_prefill(
        q, k, v, q_norm_w, k_norm_w, cos, sin, k_cache, v_cache, eps, dtype
    )
    return linear(out, w_o, dtype), k_rows, v_rows


def _attn_block_prefill_cost(
    T: int, H: int = HIDDEN, n_q: int = 8, n_kv: int = 1, d: int = 128, cap: int = 640
):
    """The prefill block: the q|k|v and o projections' MACs and weights plus the prefill attention's MACs
    (the tiled pairs, ``_attn_prefill_cost``); bytes the minimum: the weights, x in, y out, the K/V rows
    written, the norm weights and cos/sin (q, k, v and the attention output need never leave the chip)."""
    qkv, o = linear_cost(T, H, (n_q + 2 * n_kv) * d), linear_cost(T, n_q * d, H)
    attn = _attn_prefill_cost(T, n_q, n_kv, d)
    io = T * (2 * H + 2 * n_kv * d + 2 * d) * 2  # x, y; K/V rows; cos, sin
    return OpCost(qkv.macs + attn.macs + o.macs, qkv.weight_bytes + o.weight_bytes + attn.weight_bytes, io)


def _versions(kernel: str, lnc: tuple[int, ...], layout: tuple | None = None) -> tuple[Version, ...]:
    """v0 … vN of ``<kernel>_vI`` with each version's LNC degree (and host-side layout)."""
    layout = layout or (None,) * len(lnc)
    return tuple(Version(f"v{i}", f"{kernel}_v{i}", n, lay) for i, (n, lay) in enumerate(zip(lnc, layout)))


OPS: dict[str, Ladder] = {
    op.name: op
    for op in (
        Ladder(
            name="rmsnorm",
            title="RMSNorm [T, 2048] bf16",
            module="nki_moe.kernels.rmsnorm",
            make_args=_norm_args,
            reference=rms_norm,
            cost=lambda T, H=HIDDEN: rms_norm_cost(T, H),
            compare=_compare_y,
            versions=_versions("rmsnorm", lnc=(1, 1, 2, 2)),
            notebook="notebooks/01_rmsnorm.py",
            figures=("01_rmsnorm_sweep", "01_rmsnorm_roofline"),
            tests=("tests/kernels/test_rmsnorm.py",),
        ),
        Ladder(
            name="add_rmsnorm",
            title="residual add + RMSNorm [T, 2048] bf16",
            module="nki_moe.kernels.rmsnorm",
            make_args=_add_norm_args,
            reference=add_rms_norm,
            cost=lambda T, H=HIDDEN: add_rms_norm_cost(T, H),
            compare=_compare_add_norm,
            versions=_versions("add_rmsnorm", lnc=(1, 1, 2, 2)),
            notebook="notebooks/01_rmsnorm.py",
            tests=("tests/kernels/test_rmsnorm.py",),
        ),
        Ladder(
            name="matmul",
            title="projection matmul [T, 2048] x [2048, N]",
            module="nki_moe.kernels.matmul",
            make_args=_matmul_args,
            reference=linear,
            cost=_matmul_cost,
            compare=_compare_y,
            versions=_versions("matmul", lnc=(2,) * 7, layout=(None,) * 5 + (_tiled, _tiled)),
            notebook="notebooks/02_projection_matmul.py",
            figures=("02_projection_matmul_sweep", "02_projection_matmul_roofline"),
            tests=("tests/kernels/test_matmul.py",),
        ),
        Ladder(
            name="router",
            title="router top-8 [T, 2048] x [2048, 128]",
            module="nki_moe.kernels.router",
            make_args=_router_args,
            reference=routing,
            cost=_router_cost,
            compare=_compare_router,
            versions=_versions("router", lnc=(1, 2, 1)),
            notebook="notebooks/03_router_top8.py",
            figures=("03_router_top8_sweep", "03_router_top8_roofline"),
            tests=("tests/kernels/test_router.py",),
        ),
        Ladder(
            name="moe_decode",
            title="MoE decode: 8 of 128 experts [T, 2048] x [2048, 2I/tp], [I/tp, 2048]",
            module="nki_moe.kernels.moe_decode",
            make_args=_moe_args,
            reference=moe_decode,
            cost=_moe_cost,
            compare=_compare_y,
            versions=_versions("moe_decode", lnc=(1, 1, 1, 2, 2)),
            notebook="notebooks/04_moe_decode.py",
            figures=("04_moe_decode_sweep", "04_moe_decode_roofline"),
            tests=("tests/kernels/test_moe_decode.py",),
        ),
        Ladder(
            name="moe_layer_decode",
            title="fused MoE decode layer: RMSNorm + router top-8 + 8 of 128 experts [T, 2048]",
            module="nki_moe.kernels.moe_decode",
            make_args=_moe_layer_args,
            reference=moe_layer_decode,
            cost=_moe_layer_cost,
            compare=_compare_moe_layer,
            # moe_decode's v5, fused; v6: a shorter head; v7: a shorter tail; v8: v7 with full rows back
            versions=(
                Version("v0", "moe_decode_v5", 2),
                Version("v1", "moe_decode_v6", 2),
                Version("v2", "moe_decode_v7", 2),
                Version("v3", "moe_decode_v8", 2),
            ),
            padding_macs=_moe_layer_padding,
            notebook="notebooks/04_moe_decode.py",
            tests=("tests/kernels/test_moe_decode.py",),
        ),
        Ladder(
            name="moe_prefill",
            title="MoE prefill: T·8 pairs grouped by expert [T, 2048] x [2048, 2I/tp], [I/tp, 2048]",
            module="nki_moe.kernels.moe_prefill",
            make_args=_moe_args,
            reference=moe_decode,  # the same layer maths at any T
            cost=_moe_cost,
            compare=_compare_y,
            versions=_versions("moe_prefill", lnc=(2, 1, 1, 2, 2, 2, 2, 2)),
            padding_macs=_moe_prefill_padding,
            notebook="notebooks/05_moe_prefill.py",
            figures=("05_moe_prefill_sweep",),
            tests=("tests/kernels/test_moe_prefill.py",),
        ),
        Ladder(
            name="attention_decode",
            title="decode attention of one rank: q/k norm + RoPE + KV append + GQA over L",
            module="nki_moe.kernels.attention",
            make_args=_attn_decode_args,
            reference=attention_decode,
            cost=_attn_decode_cost,
            compare=_compare_out,
            versions=_versions("attention_decode", lnc=(1, 2, 1)),
            notebook="notebooks/06_attention.py",
            figures=("06_attention_decode_sweep", "06_attention_decode_roofline"),
            tests=("tests/kernels/test_attention.py",),
        ),
        Ladder(
            name="attention_block_decode",
            title="fused decode attention block of one rank: QKV + norms + RoPE + append + GQA + o_proj",
            module="nki_moe.kernels.attention",
            make_args=_attn_block_args,
            reference=attention_block_decode,
            cost=_attn_block_cost,
            compare=_compare_out,
            versions=_versions("attention_block", lnc=(1, 2, 2, 2, 2, 2, 2, 2)),
            notebook="notebooks/06_attention.py",
            figures=("06_attention_block_sweep", "06_attention_block_roofline"),
            tests=("tests/kernels/test_attention.py",),
        ),
        Ladder(
            name="attention_prefill",
            title="prefill attention of one rank: q/k norm + RoPE + KV write + causal GQA over T",
            module="nki_moe.kernels.attention",
            make_args=_attn_prefill_args,
            reference=attention_prefill,
            cost=_attn_prefill_cost,
            compare=_compare_out,
            versions=_versions("attention_prefill", lnc=(1, 1, 1, 1, 2, 2, 2, 2, 2, 2)),
            notebook="notebooks/06_attention.py",
            figures=("06_attention_prefill_sweep", "06_attention_prefill_roofline"),
            tests=("tests/kernels/test_attention.py",),
        ),
        Ladder(
            name="attention_block_prefill",
            title="fused prefill attention block of one rank: QKV + norms + RoPE + KV write + GQA + o_proj",
            module="nki_moe.kernels.attention",
            make_args=_attn_block_prefill_args,
            reference=attention_block_prefill,
            cost=_attn_block_prefill_cost,
            compare=_compare_out,
            versions=_versions("attention_block_prefill", lnc=(1, 1, 2)),
            notebook="notebooks/06_attention.py",
            figures=("06_attention_block_prefill_sweep",),
            tests=("tests/kernels/test_attention.py",),
        ),
        Ladder(
            name="attention_layer_decode",
            title="decode attention layer of one rank: input RMSNorm + the fused block",
            module="nki_moe.kernels.attention",
            make_args=_attn_layer_args,
            reference=attention_layer_decode,
            cost=_attn_layer_cost,
            compare=_compare_out,
            # the weights in attention_layer_layout's order, laid out once at load time (as tile_weight's)
            versions=(Version("v0", "attention_block_v8", 2, _layer_layout),),
            notebook="notebooks/06_attention.py",
            tests=("tests/kernels/test_attention_layer.py",),
        ),
    )
}


def get(name: str) -> Ladder:
    """The registered op ``name``; the error lists the known ones."""
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"no op {name!r}; registered ops: {sorted(OPS)}") from None


def readme_table() -> str:
    """The README's op table (markdown), generated from :data:`OPS`."""
    lines = ["| op | kernels | reference | notebook | figures | tests |", "|---|---|---|---|---|---|"]
    for op in OPS.values():
        ref = f"{op.reference.__module__}.{op.reference.__name__}"
        first, last = op.versions[0].kernel, op.final.kernel
        versions = f"`{op.module}` {first}" + (f"…{last.rsplit('_', 1)[1]}" if last != first else "")
        figs = ", ".join(f"`{f}`" for f in op.figures) or "—"
        tests = ", ".join(f"`{t}`" for t in op.tests)
        lines.append(f"| `{op.name}` | {versions} | `{ref}` | `{op.notebook}` | {figs} | {tests} |")
    return "\n".join(lines)
