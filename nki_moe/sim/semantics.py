"""The math of every Vector/Scalar/GpSimd compute instruction, as pure NumPy on per-partition arrays.

Conventions: tiles arrive flattened per partition as (P, F) arrays (float32 after `numerics.to_f32`, or raw
storage values for bitvec ops and bit-exact moves). A "scalar or vector" operand is a Python float or a
(P, 1) float32 array. Functions here know nothing about tensor views, buffers or validation; the ISA layer
(isa_compute.py) checks the rules, reads, calls these, and writes.

Accumulating instructions follow the documented register update `acc = op(element, acc)` (the
tensor_scalar_cumulative pseudocode in the NKI docs), starting from the op's identity, from the previous
register value (reduce) or from a given value (load_reduce). Additions and products accumulate
sequentially in fp32 like a lane of the engine does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import alu
from .alu import Op
from .numerics import quiet

_F32 = np.float32

# reduce_cmd enum values (nki.isa.reduce_cmd)
IDLE, RESET, REDUCE, RESET_REDUCE, LOAD_REDUCE = 0, 1, 2, 3, 4

# The "add / multiply / max / min" family whose sequential fold NumPy can run as a ufunc accumulate.
_UFUNC = {
    "add": np.add,
    "multiply": np.multiply,
    "maximum": np.maximum,
    "max": np.maximum,
    "minimum": np.minimum,
    "min": np.minimum,
}
_BIT_UFUNC = {"bitwise_and": np.bitwise_and, "bitwise_or": np.bitwise_or, "bitwise_xor": np.bitwise_xor}
COMPARE_OPS = {
    "equal": np.equal,
    "not_equal": np.not_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "less": np.less,
    "less_equal": np.less_equal,
}


def cmd_value(cmd: Any) -> int:
    """Integer value of a reduce_cmd enum member (or a plain int)."""
    return int(getattr(cmd, "value", cmd))


def _sv(v: Any) -> Any:
    """A scalar-or-vector operand as an fp32 scalar or a (P, 1) float32 array."""
    if isinstance(v, np.ndarray):
        return v.astype(_F32, copy=False)
    return _F32(v)


# ---- generic folds -----------------------------------------------------------------------------------------


_LANE_MIN_ROWS = 8  # below this a row-by-row accumulate is as fast, and the inner-loop order argument is moot
# Floats moved as one opaque item in the first transpose stage (see _transpose_into): 64 (256 bytes) when
# the row length allows, else 32. On a 1 MiB tile whose data has left L2, 64-float chunks made the whole
# fold about 15-20% faster than 32 (fewer items in stage one, slabs still small enough in stage two).
_CHUNKS = (64, 32)
_CHUNK_ITEMS = {c: np.dtype((np.void, 4 * c)) for c in _CHUNKS}


def _transpose_into(dst: np.ndarray, v: np.ndarray) -> None:
    """dst[...] = v.T for float32 v (R, N). An element-wise transpose of a wide tile misses the TLB on
    every element; instead move 64- (or 32-) float chunks as single items first (few, cache-friendly
    copies), then transpose each (R, chunk) slab, where the strided reads stay within a few pages."""
    rows, n = v.shape
    if v.strides[1] == 4 and v.strides[0] % 4 == 0:
        for chunk in _CHUNKS:
            if n % chunk == 0:
                chunks = np.ascontiguousarray(v.view(_CHUNK_ITEMS[chunk]).T)  # (n / chunk, R) items
                slabs = chunks.view(_F32).reshape(n // chunk, rows, chunk)
                dst.reshape(n // chunk, chunk, rows)[...] = slabs.transpose(0, 2, 1)
                return
    dst[...] = v.T


def _lane_fold(ufunc: np.ufunc, start: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Strictly sequential per-row fold start op v[:, 0] op v[:, 1] ... in fp32 (one engine lane per row).

    `ufunc.reduce` along a row would sum pairwise, and `accumulate` along a row is one long dependency
    chain (slow). Reducing a C-contiguous (N + 1, R) array over axis 0 keeps the rows' lanes in NumPy's
    inner loop and visits the N + 1 terms one after another, so every lane rounds in sequence, at
    vectorised speed.
    """
    rows, n = v.shape
    if rows < _LANE_MIN_ROWS:
        return ufunc.accumulate(np.concatenate([start[:, None], v], axis=1), axis=1)[:, -1]
    t = np.empty((n + 1, rows), _F32)
    t[0] = start
    _transpose_into(t[1:], v)
    return ufunc.reduce(t, axis=0)


def fold(values: np.ndarray, op: Op, init: Any = None) -> np.ndarray:
    """Row-wise sequential fold acc = op(x, acc) of (R, N) values from `init` (default identity) -> (R,)."""
    rows = values.shape[0]
    if init is None:
        init = op.identity
    if op.is_bitvec:
        ident = np.broadcast_to(np.asarray(init).reshape(-1), (rows,)).astype(values.dtype, casting="unsafe")
        return _BIT_UFUNC[op.name].reduce(np.concatenate([ident[:, None], values], axis=1), axis=1)
    v = values.astype(_F32, copy=False)
    start = np.broadcast_to(np.asarray(init, dtype=_F32).reshape(-1), (rows,)).reshape(rows, 1)
    with quiet():
        if op.name in ("add", "multiply"):
            return _lane_fold(_UFUNC[op.name], start[:, 0], v)
        if op.name in _UFUNC:
            return _UFUNC[op.name].reduce(np.concatenate([start, v], axis=1), axis=1)
        if op.name in ("abs_max", "abs_min"):
            red = np.maximum if op.name == "abs_max" else np.minimum
            return red.reduce(np.abs(np.concatenate([start, v], axis=1)), axis=1)
        if op.name in ("logical_and", "logical_or", "logical_xor"):
            nz = np.concatenate([start, v], axis=1) != 0
            if op.name == "logical_and":
                return nz.all(axis=1).astype(_F32, copy=False)
            if op.name == "logical_or":
                return nz.any(axis=1).astype(_F32, copy=False)
            return (nz.sum(axis=1) % 2).astype(_F32, copy=False)
        acc = start[:, 0].copy()
        for i in range(v.shape[1]):
            acc = alu.apply(op, v[:, i], acc)
        return acc


def scan(values: np.ndarray, op: Op, init: Any) -> np.ndarray:
    """Inclusive per-row scan reg_i = op(x_i, reg_{i-1}) from reg_{-1} = init; returns (R, N) fp32."""
    rows = values.shape[0]
    v = values.astype(_F32, copy=False)
    start = np.broadcast_to(np.asarray(init, dtype=_F32).reshape(-1), (rows,)).reshape(rows, 1)
    with quiet():
        if op.name in _UFUNC:
            return _UFUNC[op.name].accumulate(np.concatenate([start, v], axis=1), axis=1)[:, 1:]
        out = np.empty_like(v)
        acc = start[:, 0]
        for i in range(v.shape[1]):
            acc = alu.apply(op, v[:, i], acc)
            out[:, i] = acc
        return out


def accumulate(acc: np.ndarray, values: np.ndarray | None, op: Op, cmd: Any, init: Any = None) -> np.ndarray:
    """New per-lane accumulator (P,) after one instruction's reduce_cmd, folding its (P, F) output values."""
    c = cmd_value(cmd)
    if c == IDLE:
        return acc
    if c == RESET:
        return np.full(acc.shape, op.identity, dtype=_F32)
    if c == REDUCE:
        start = acc
    elif c == RESET_REDUCE:
        start = None
    elif c == LOAD_REDUCE:
        start = op.identity if init is None else init
    else:
        raise ValueError(f"unknown reduce_cmd {cmd!r}")
    return fold(values, op, start)


# ---- elementwise ALU ---------------------------------------------------------------------------------------


def binary(op: Op, a: Any, b: Any, reverse: bool = False) -> np.ndarray:
    """`a op b` (or `b op a` when reversed) in fp32; unary ops apply to `a` and ignore `b`."""
    if op.arity == 1:
        return alu.apply(op, a)
    return alu.apply(op, b, a) if reverse else alu.apply(op, a, b)


# alu's add / subtract / multiply are exactly these fp32 ufuncs (alu._ew), so running them with out= gives
# the same bits.
_INPLACE = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply}


def _second_op(op: Op, tmp: np.ndarray, data: np.ndarray, b: Any, reverse: bool) -> np.ndarray:
    """`tmp op b` (reversed: `b op tmp`) for the second op of a two-op instruction.

    Speed: tmp is the first op's fresh fp32 result, so add/subtract/multiply overwrite it in place instead
    of allocating another full tile (one less pass through new memory per instruction). Only when tmp is
    provably a new array of the result's shape: never the source operand (a unary first op such as copy may
    hand its input back) and never a broadcast.
    """
    ufunc = _INPLACE.get(op.name)
    if (
        ufunc is not None
        and tmp is not data
        and tmp.dtype == _F32
        and tmp.flags.owndata
        and tmp.flags.writeable
        and np.shape(b) in ((), (1,), tmp.shape, (tmp.shape[0], 1))
        and (not isinstance(b, np.ndarray) or b.dtype == _F32)
    ):
        with quiet():
            return ufunc(b, tmp, out=tmp) if reverse else ufunc(tmp, b, out=tmp)
    return binary(op, tmp, b, reverse)


def binary_bits(op: Op, a: np.ndarray, b: Any, reverse: bool = False) -> np.ndarray:
    """Bitvec `a op b` on raw integers of a's type (b converted); reversed swaps the operands."""
    if op.arity == 1:
        return alu.apply_bitvec(op, a)
    if reverse:
        bb = np.broadcast_to(np.asarray(b).astype(a.dtype, casting="unsafe"), a.shape)
        return alu.apply_bitvec(op, bb, a)
    return alu.apply_bitvec(op, a, b)


def tensor_tensor(a: np.ndarray, b: np.ndarray, op: Op) -> np.ndarray:
    """dst = a op b elementwise: fp32 for arithmetic ops, raw integer bits for bitvec ops."""
    if op.is_bitvec:
        return binary_bits(op, a, b)
    return binary(op, a, b)


def tensor_tensor_int(a: np.ndarray, b: np.ndarray, op: Op) -> np.ndarray:
    """GpSimd exact integer tensor_tensor: int64 result for integer-closed ops, else the fp32 path."""
    if op.is_bitvec:
        return binary_bits(op, a, b)
    x, y = a.astype(np.int64), b.astype(np.int64)
    if op.name in ("add", "subtract", "multiply"):
        return {"add": np.add, "subtract": np.subtract, "multiply": np.multiply}[op.name](x, y)
    if op.name in _UFUNC:
        return _UFUNC[op.name](x, y)
    if op.name in COMPARE_OPS:
        return COMPARE_OPS[op.name](x, y).astype(np.int64)
    return binary(op, a.astype(_F32, copy=False), b.astype(_F32, copy=False))


def tensor_scalar(
    data: np.ndarray,
    op0: Op,
    operand0: Any,
    reverse0: bool = False,
    op1: Op | None = None,
    operand1: Any = None,
    reverse1: bool = False,
) -> np.ndarray:
    """dst = (data op0 operand0) op1 operand1, operands scalar or (P, 1); bitvec ops work on raw ints."""
    if op0.is_bitvec:
        tmp = binary_bits(op0, data, operand0, reverse0)
        return tmp if op1 is None else binary_bits(op1, tmp, operand1, reverse1)
    tmp = binary(op0, data, _sv(operand0), reverse0)
    if op1 is None or op1.name == "bypass":
        return tmp
    return _second_op(op1, tmp, data, _sv(operand1), reverse1)


def scalar_tensor_tensor(
    data: np.ndarray,
    op0: Op,
    operand0: Any,
    op1: Op,
    operand1: np.ndarray,
    reverse0: bool = False,
    reverse1: bool = False,
) -> np.ndarray:
    """dst = (data op0 operand0) op1 operand1 where operand0 is scalar/(P, 1) and operand1 a full tile."""
    tmp = binary(op0, data, _sv(operand0), reverse0)
    return _second_op(op1, tmp, data, operand1, reverse1)


def reciprocal(data: np.ndarray) -> np.ndarray:
    """1/x in fp32 (Vector Engine reciprocal; IEEE division)."""
    with quiet():
        return (_F32(1.0) / data.astype(_F32, copy=False)).astype(_F32, copy=False)


def exponential(data: np.ndarray, max_value: Any = 0.0) -> np.ndarray:
    """exp(data - max_value) in fp32, max_value scalar or (P, 1)."""
    with quiet():
        shifted = (data.astype(_F32, copy=False) - _sv(max_value)).astype(_F32, copy=False)
    return alu.exp.fn(shifted)


def activation(data: np.ndarray, op: Op, scale: Any = 1.0, bias: Any = None, alpha: Any = 0.0) -> np.ndarray:
    """Scalar Engine out = op(data * scale + bias) in fp32 (bias None = 0; alpha is prelu's slope)."""
    with quiet():
        x = data.astype(_F32, copy=False)
        if not (isinstance(scale, float) and scale == 1.0):  # x * 1.0 == x bit for bit: skip the pass
            x = (x * _sv(scale)).astype(_F32, copy=False)
        if bias is not None:
            x = (x + _sv(bias)).astype(_F32, copy=False)
    if op.name == "prelu":
        return op.fn(x, _sv(alpha))
    return alu.apply(op, x)


# ---- reductions and scans ----------------------------------------------------------------------------------


def tensor_reduce(
    data: np.ndarray, op: Op, free_shape: Sequence[int], axes: Sequence[int], negate: bool = False
) -> np.ndarray:
    """Reduce (P, F) over the trailing tensor axes `axes` (1-based, partition is 0) -> (P, F_kept).

    `free_shape` is the tensor's shape without the partition dim; the axes must be the trailing ones.
    """
    nfree = len(free_shape)
    first = min(axes)
    if sorted(axes) != list(range(first, nfree + 1)) or first < 1:
        raise ValueError(f"axes {tuple(axes)} are not the trailing free axes of a rank-{nfree + 1} tensor")
    reduced = int(np.prod(free_shape[first - 1 :], dtype=np.int64))
    kept = int(np.prod(free_shape[: first - 1], dtype=np.int64))
    p = data.shape[0]
    res = fold(data.reshape(p * kept, reduced), op).reshape(p, kept)
    if negate:
        res = -res
    return res


def tensor_scalar_cumulative(
    src: np.ndarray, op0: Op, imm0: Any, op1: Op, init: Any, reverse0: bool = False
) -> np.ndarray:
    """out_i = reg = op1(op0(src_i, imm0), reg) along the free dim, reg starting at `init` (P,) or scalar."""
    tmp = binary(op0, src, _sv(imm0), reverse0)
    return scan(tmp, op1, init)


def cumulative_init(op1: Op, cmd: Any, acc: np.ndarray, imm1: Any = None) -> Any:
    """Starting register of tensor_scalar_cumulative for a reduce_cmd (identity, acc, or imm1)."""
    c = cmd_value(cmd)
    if c == REDUCE:
        return acc
    if c == LOAD_REDUCE:
        return np.asarray(_sv(imm1)).reshape(-1)
    if c in (RESET_REDUCE, RESET, IDLE):
        # idle/reset behave like reset_reduce for a scan that must start somewhere (documented default).
        return op1.identity
    raise ValueError(f"unknown reduce_cmd {cmd!r}")


def tensor_tensor_scan(
    data0: np.ndarray,
    data1: np.ndarray,
    initial: Any,
    op0: Op,
    op1: Op,
    reverse0: bool = False,
    reverse1: bool = False,
) -> np.ndarray:
    """res_i = op1(op0(data0_i, res_{i-1}), data1_i) per partition with res_{-1} = initial."""
    p, f = data0.shape
    prev = np.broadcast_to(np.asarray(_sv(initial), dtype=_F32).reshape(-1), (p,)).copy()
    out = np.empty((p, f), dtype=_F32)
    for i in range(f):
        t = binary(op0, data0[:, i], prev, reverse0)
        prev = binary(op1, t, data1[:, i], reverse1)
        out[:, i] = prev
    return out


def tensor_partition_reduce(data: np.ndarray, op: Op) -> np.ndarray:
    """Reduce across partitions: (P, F) -> (1, F), sequential in partition order."""
    return fold(np.ascontiguousarray(data.T), op)[None, :]


# ---- selection ---------------------------------------------------------------------------------------------


def _pred(pred: np.ndarray, reverse: bool) -> np.ndarray:
    """Boolean predicate: nonzero (inverted when reverse)."""
    p = np.asarray(pred) != 0
    return ~p if reverse else p


def tensor_copy_predicated(old: np.ndarray, src: Any, pred: np.ndarray, reverse: bool = False) -> np.ndarray:
    """dst = src where predicate nonzero (zero if reversed), else the old dst contents (raw values)."""
    return np.where(_pred(pred, reverse), src, old).astype(old.dtype, copy=False)


def select_reduce(pred: np.ndarray, on_true: np.ndarray, on_false: Any, reverse: bool = False) -> np.ndarray:
    """dst = on_true where predicate nonzero else on_false (scalar or (P, 1)), fp32."""
    out = np.where(_pred(pred, reverse), on_true.astype(_F32, copy=False), _sv(on_false))
    return out.astype(_F32, copy=False)


def range_select(
    on_true: np.ndarray,
    comp_op0: Op,
    comp_op1: Op,
    bound0: Any,
    bound1: Any,
    range_start: float = 0.0,
    on_false_value: float = -3.4028235e38,
) -> np.ndarray:
    """Keep on_true[p, j] where comp_op0(idx, bound0[p]) & comp_op1(idx, bound1[p]); idx = start + j."""
    f = on_true.shape[1]
    idx = (_F32(range_start) + np.arange(f, dtype=_F32))[None, :]
    keep = (binary(comp_op0, idx, _sv(bound0)) != 0) & (binary(comp_op1, idx, _sv(bound1)) != 0)
    return np.where(keep, on_true.astype(_F32, copy=False), _F32(on_false_value)).astype(_F32, copy=False)


def affine_values(
    pattern: Sequence[Sequence[int]], offset: int, channel_multiplier: int, p: int
) -> np.ndarray:
    """offset + p*channel_multiplier + sum_k i_k*step_k for pattern [[step, num], ...] -> (P, prod(num))."""
    val = int(offset) + np.arange(p, dtype=np.int64)[:, None] * int(channel_multiplier)
    free = np.zeros(1, dtype=np.int64)
    for step, num in pattern:
        free = (free[:, None] + np.arange(int(num), dtype=np.int64)[None, :] * int(step)).reshape(-1)
    return val + free[None, :]


def wrap_int32(v: np.ndarray) -> np.ndarray:
    """Two's-complement wrap of int64 values into the int32 range (GpSimd integer arithmetic)."""
    return ((v + 2**31) % 2**32 - 2**31).astype(np.int64)


def iota(pattern: Sequence[Sequence[int]], offset: int, channel_multiplier: int, p: int) -> np.ndarray:
    """NKI 2 iota: the affine value per (partition, free index), computed in int32 -> (P, F) int64."""
    return wrap_int32(affine_values(pattern, offset, channel_multiplier, p))


def affine_select(
    pattern: Sequence[Sequence[int]],
    channel_multiplier: int,
    on_true: np.ndarray,
    on_false_value: float,
    cmp_op: Op,
    offset: int = 0,
) -> np.ndarray:
    """dst = on_true where cmp_op(affine value, 0) else on_false_value (fp32)."""
    p = on_true.shape[0]
    val = wrap_int32(affine_values(pattern, offset, channel_multiplier, p))
    keep = COMPARE_OPS[cmp_op.name](val, 0)
    return np.where(keep, on_true.astype(_F32, copy=False), _F32(on_false_value)).astype(_F32, copy=False)


# ---- memset ------------------------------------------------------------------------------------------------


def memset_value_error(value: Any, dtype_name: str) -> str | None:
    """Why `value` cannot be memset into a `dtype_name` tensor (0.3 value-kind rule), or None if it can."""
    from . import numerics

    if isinstance(value, (bool, np.bool_)):
        return None
    if numerics.is_packed(dtype_name):
        return None if value == 0 else "packed x4 dtypes can only be memset to 0"
    is_int_value = isinstance(value, (int, np.integer))
    is_float_value = isinstance(value, (float, np.floating))
    if not (is_int_value or is_float_value):
        return f"value must be a compile-time int or float, got {type(value).__name__}"
    if numerics.is_int(dtype_name) and not is_int_value and not float(value).is_integer():
        # An integral float (0.0) is what AWS's production kernels pass ([NKILIB]): memset warns and runs.
        return f"a non-integral float value cannot fill an integer ({dtype_name}) tensor; use an int"
    return None


# ---- top-8 -------------------------------------------------------------------------------------------------


def max8(data: np.ndarray) -> np.ndarray:
    """The 8 largest values per partition, descending (NaN sorts above everything)."""
    return np.sort(data.astype(_F32, copy=False), axis=1)[:, ::-1][:, :8].copy()


MISSING_INDEX = 0xFFFFFFFF
_EYE8 = np.eye(8, dtype=bool)


def nc_find_index8(data: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """Index of the first occurrence of each of the 8 vals per partition (uint32, 0xFFFFFFFF if absent).

    Repeated vals take successive occurrences in ascending order (vals[0] the first match, the next equal
    val the next match), as the NKI 0.6 docs specify for hardware.
    """
    eq = data[:, None, :] == vals[:, :, None]  # (P, 8, F)
    out = np.where(eq.any(axis=2), eq.argmax(axis=2), MISSING_INDEX).astype(np.uint32)
    # With 8 distinct vals in a row the first occurrence of each is the answer; rows with repeated vals
    # need the claiming walk (the slots compete for the same positions).
    repeated = ((vals[:, :, None] == vals[:, None, :]) & ~_EYE8).any(axis=(1, 2))
    if repeated.any():
        rows = np.flatnonzero(repeated)
        out[rows] = _find_index8_claiming(data[rows], vals[rows])
    return out


def _find_index8_claiming(data: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """nc_find_index8 slot by slot: each val claims its first not-yet-claimed occurrence."""
    p, f = data.shape
    claimed = np.zeros((p, f), dtype=bool)
    out = np.full((p, 8), MISSING_INDEX, dtype=np.uint32)
    rows = np.arange(p)
    for k in range(8):
        hit = (data == vals[:, k : k + 1]) & ~claimed
        found = hit.any(axis=1)
        first = hit.argmax(axis=1)
        out[found, k] = first[found]
        claimed[rows[found], first[found]] = True
    return out


def nc_match_replace8(data: np.ndarray, vals: np.ndarray, imm: float) -> tuple[np.ndarray, np.ndarray]:
    """Replace the first not-yet-replaced occurrence of each of the 8 vals with imm; also return the indices.

    vals are visited in reverse order (7..0), so among duplicate vals the highest slot gets the earliest
    position (NKI 0.6 docs: the opposite tie order of nc_find_index8). Absent vals replace nothing and
    report 0xFFFFFFFF.
    """
    out = data.astype(_F32, copy=True)
    p = data.shape[0]
    replaced = np.zeros(out.shape, dtype=bool)
    idx = np.full((p, 8), MISSING_INDEX, dtype=np.uint32)
    rows = np.arange(p)
    for k in range(7, -1, -1):
        hit = (data == vals[:, k : k + 1]) & ~replaced
        found = hit.any(axis=1)
        first = hit.argmax(axis=1)
        idx[found, k] = first[found]
        replaced[rows[found], first[found]] = True
    out[replaced] = _F32(imm)
    return out, idx


# ---- cross-partition moves ---------------------------------------------------------------------------------

SHUFFLE_KEEP = 255


def stream_shuffle_sources(mask: Sequence[int], dst_partitions: int) -> np.ndarray:
    """Source partition for each dst partition (q*32 + mask[i % 32]), or -1 where mask is 255 (keep dst)."""
    m = np.asarray(list(mask), dtype=np.int64)
    i = np.arange(dst_partitions)
    sel = m[i % 32]
    return np.where(sel == SHUFFLE_KEEP, -1, (i // 32) * 32 + sel)


def nc_stream_shuffle(src: np.ndarray, old_dst: np.ndarray, mask: Sequence[int]) -> np.ndarray:
    """dst[q*32+i] = src[q*32+mask[i]] within 32-partition quadrants; mask 255 keeps dst (raw values)."""
    sources = stream_shuffle_sources(mask, old_dst.shape[0])
    if np.any(sources >= src.shape[0]):
        raise ValueError(f"shuffle mask reads src partition {int(sources.max())} >= {src.shape[0]}")
    out = old_dst.copy()
    take = sources >= 0
    out[take] = src[sources[take]].astype(old_dst.dtype, copy=False)
    return out


def nc_transpose(data: np.ndarray) -> np.ndarray:
    """Partition <-> free transpose of a (P, F) tile (bit-exact)."""
    return np.ascontiguousarray(data.T)


def local_gather(
    src: np.ndarray, index: np.ndarray, num_elem_per_idx: int, num_valid: int | None
) -> np.ndarray:
    """GpSimd local gather: each 16-partition core gathers runs of its own rows at its shared index list.

    Per core, the indices are that core's 16 index partitions read column-major (partition fastest), first
    `num_valid`; each is an element offset into every row of the core.
    Returns (P, num_valid * num_elem_per_idx).
    """
    p, f = src.shape
    cores = p // 16
    n_valid = index.shape[1] * 16 if num_valid is None else int(num_valid)
    out = np.empty((p, n_valid * num_elem_per_idx), dtype=src.dtype)
    run = np.arange(num_elem_per_idx, dtype=np.int64)
    for c in range(cores):
        rows = slice(c * 16, (c + 1) * 16)
        idx = index[rows].astype(np.int64).flatten(order="F")[:n_valid]
        cols = (idx[:, None] + run[None, :]).reshape(-1)
        if cols.size and (cols.max() >= f or cols.min() < 0):
            raise ValueError(f"local_gather index reads element {int(cols.max())} of a {f}-element row")
        out[rows] = src[rows][:, cols]
    return out


def nc_n_gather(data: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """dst[p, k] = data[p, indices[p, k]] (raw values)."""
    idx = indices.astype(np.int64)
    if idx.size and (idx.max() >= data.shape[1] or idx.min() < 0):
        raise ValueError(f"nc_n_gather index {int(idx.max())} out of range [0, {data.shape[1]})")
    return np.take_along_axis(data, idx, axis=1)


# ---- statistics --------------------------------------------------------------------------------------------


def _count_mean_m2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, mean, sum of squared deviations) per row, computed in float64."""
    n = x.shape[1]
    x64 = x.astype(np.float64)
    with quiet():
        mean = x64.mean(axis=1) if n else np.zeros(x.shape[0])
        m2 = ((x64 - mean[:, None]) ** 2).sum(axis=1)
    return np.full(x.shape[0], float(n)), mean, m2


def bn_stats(data: np.ndarray) -> np.ndarray:
    """(P, F) -> (P, 6): [count, mean, var*count] of the even-indexed then of the odd-indexed elements."""
    even = _count_mean_m2(data[:, 0::2])
    odd = _count_mean_m2(data[:, 1::2])
    return np.stack([*even, *odd], axis=1).astype(_F32, copy=False)


def bn_aggr(data: np.ndarray) -> np.ndarray:
    """(P, 3k) concatenated bn_stats tuples -> (P, 2) [mean, population variance]."""
    t = data.astype(np.float64).reshape(data.shape[0], -1, 3)
    count, mean, m2 = t[..., 0], t[..., 1], t[..., 2]
    with quiet():
        n = count.sum(axis=1)
        # empty groups (count 0) carry no weight, whatever their mean field holds.
        total_mean = np.where(count > 0, count * mean, 0.0).sum(axis=1) / n
        dev = np.where(count > 0, count * (mean - total_mean[:, None]) ** 2, 0.0)
        var = (np.where(count > 0, m2, 0.0).sum(axis=1) + dev.sum(axis=1)) / n
    return np.stack([total_mean, var], axis=1).astype(_F32, copy=False)


def sequence_bounds(segment_ids: np.ndarray) -> np.ndarray:
    """(P, n) segment ids -> (P, 2n): [start of each element's run..., end (exclusive)...]; id 0 is padding.

    Padding elements get start = n and end = -1.
    """
    p, n = segment_ids.shape
    ids = segment_ids.astype(np.float64)
    j = np.arange(n)
    new_run = np.ones((p, n), dtype=bool)
    new_run[:, 1:] = ids[:, 1:] != ids[:, :-1]
    run_end = np.ones((p, n), dtype=bool)
    run_end[:, :-1] = ids[:, :-1] != ids[:, 1:]
    start = np.maximum.accumulate(np.where(new_run, j, 0), axis=1)
    # end: index+1 of the last element of the run, propagated backwards.
    end_marks = np.where(run_end, j + 1, n + 1)
    end = np.minimum.accumulate(end_marks[:, ::-1], axis=1)[:, ::-1]
    pad = ids == 0
    start = np.where(pad, n, start)
    end = np.where(pad, -1, end)
    return np.concatenate([start, end], axis=1).astype(np.int64)


# ---- randomness --------------------------------------------------------------------------------------------


def dropout(data: np.ndarray, prob: Any, uniform: np.ndarray) -> np.ndarray:
    """Zero elements whose uniform draw in [0, 1) is below the drop probability; kept values are unscaled."""
    return np.where(uniform < _sv(prob), _F32(0.0), data.astype(_F32, copy=False)).astype(_F32, copy=False)


def rand_uniform(uniform: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [0, 1) draws to [low, high] in fp32."""
    return (_F32(low) + uniform.astype(_F32, copy=False) * (_F32(high) - _F32(low))).astype(_F32, copy=False)
