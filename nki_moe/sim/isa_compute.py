"""nki.isa compute instructions (Vector, Scalar and GpSimd engines), NKI 0.3 signatures.

Each instruction validates its operands ([NKI-ISA]; errors as [NKI-SIM]), reads them as (P, F) arrays through
`Instr`, computes with `semantics`, and writes through `Instr` (which casts to dst.dtype, records the trace
and propagates the uninitialised-data taint). Errors name the instruction, the operand and the kernel line.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import alu, numerics
from . import semantics as S
from .alu import Op
from .dma import enum_arg
from .enums import engine as _engine
from .enums import reduce_cmd as _reduce_cmd
from .errors import docs_warning
from .instr import Instr, reject_kwargs
from .tensor import NkiTensor

__all__ = [
    "activation",
    "activation_reduce",
    "affine_select",
    "bn_aggr",
    "bn_stats",
    "dropout",
    "exponential",
    "iota",
    "local_gather",
    "max8",
    "memset",
    "nc_find_index8",
    "nc_match_replace8",
    "nc_n_gather",
    "nc_stream_shuffle",
    "rand2",
    "rand_get_state",
    "rand_set_state",
    "range_select",
    "reciprocal",
    "rng",
    "scalar_tensor_tensor",
    "select_reduce",
    "sequence_bounds",
    "set_rng_seed",
    "tensor_copy",
    "tensor_copy_predicated",
    "tensor_partition_reduce",
    "tensor_reduce",
    "tensor_scalar",
    "tensor_scalar_cumulative",
    "tensor_scalar_reduce",
    "tensor_tensor",
    "tensor_tensor_scan",
]

_FP32_MIN = float(np.float32(-3.4028235e38))
_INT32ISH = ("int32", "uint32")
_SBUF = ("sbuf",)
_PSUM_OK = ("sbuf", "psum")
_ENGINE_LABEL = {"dve": "vector", "act": "scalar", "pool": "gpsimd", "pe": "tensor"}


# ---- shared checks -----------------------------------------------------------------------------------------


def _op(ins: Instr, operand: str, op: Any, arity: int | None = None) -> Op:
    """Resolve an op= argument to an alu.Op (error names the operand)."""
    try:
        o = alu.lookup(op)
    except TypeError as e:
        ins.fail(str(e), operand, value=op)
    if arity == 2 and o.arity != 2:
        ins.fail(f"needs a binary ALU op, got unary nl.{o.name}", operand, value=f"nl.{o.name}")
    return o


def _alu_op(ins: Instr, operand: str, op: Any, arity: int | None = None) -> Op:
    """An op the Vector/GpSimd ALU can execute (not a Scalar Engine activation function)."""
    o = _op(ins, operand, op, arity)
    if not o.alu:
        ins.fail(
            f"nl.{o.name} is an activation function, not a Vector/GpSimd ALU op; use nisa.activation",
            operand,
            value=f"nl.{o.name}",
        )
    return o


def _no_bitvec(ins: Instr, message: str, **ops: Op) -> None:
    """Arithmetic ops only: a bitvec op fails with `message`."""
    for name, o in ops.items():
        if o.is_bitvec:
            ins.fail(message, name, value=f"nl.{o.name}")


def _int_dtypes(ins: Instr, what: str, **tensors: NkiTensor) -> None:
    """Bitvec ops need integer dtypes on every tensor operand."""
    for name, t in tensors.items():
        if isinstance(t, NkiTensor) and not numerics.is_int(t.dtype):
            ins.fail(f"{what} needs integer dtypes", name, limit="int8/16/32, uint8/16/32", value=t.dtype)


def _cmd(ins: Instr, reduce_cmd: Any) -> int:
    """reduce_cmd enum member -> int (raw ints only in 0.2-compat mode)."""
    return int(enum_arg(ins, reduce_cmd, _reduce_cmd, "reduce_cmd"))


def _engine_arg(ins: Instr, arg: Any, default: str, allowed: tuple[str, ...]) -> str:
    """Honour an explicit engine= argument if the instruction can run there; adopt it."""
    if arg is not None and not isinstance(arg, _engine):
        enum_arg(ins, arg, _engine, "engine")
    name = ins.engine_from(arg, default)
    if name not in allowed:
        ins.fail(
            f"cannot run on the {_ENGINE_LABEL.get(name, name)} engine",
            "engine",
            limit="/".join(_ENGINE_LABEL.get(a, a) for a in allowed),
            value=_ENGINE_LABEL.get(name, name),
        )
    return name


def _buffers(eng: str) -> tuple[str, ...]:
    """Buffers an engine can touch (GpSimd never reaches PSUM)."""
    return _SBUF if eng == "pool" else _PSUM_OK


def _lanes(t: NkiTensor) -> slice:
    """Accumulator lanes (absolute partitions) an on-chip tile occupies."""
    p0 = t.p_start()
    return slice(p0, p0 + t.pf()[0])


def _vec(ins: Instr, name: str, v: Any, p: int, fp32: bool = False) -> Any:
    """Scalar or (P, 1) vector operand; optionally the vector must be fp32."""
    if fp32 and isinstance(v, NkiTensor):
        ins.dtype_in(name, v, ("float32",), "per-partition vector operand must be float32")
    return ins.scalar_or_vector(name, v, p)


def _reduce_op(ins: Instr, operand: str, op: Any, allowed: tuple[str, ...]) -> Op:
    o = _op(ins, operand, op)
    if o.name not in allowed:
        ins.fail(
            "unsupported reduction op",
            operand,
            limit="/".join(f"nl.{a}" for a in allowed),
            value=f"nl.{o.name}",
        )
    return o


def _write_acc(ins: Instr, name: str, reduce_res: Any, acc: np.ndarray, lanes: slice, p: int) -> None:
    """Copy accumulator lanes into an optional (P, 1) reduce_res tile."""
    if reduce_res is None:
        return
    ins.tensor(name, reduce_res)
    ins.column(name, reduce_res, p, "reduce_res must be a (P, 1) tile")
    ins.write(name, reduce_res, acc[lanes].reshape(p, 1), taint="partition")


def _is_number(v: Any) -> bool:
    """A Python/NumPy int or float (not a bool)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _float_scalar(ins: Instr, name: str, v: Any) -> float:
    """A compile-time numeric scalar."""
    ins.check(_is_number(v), "expected a compile-time number", name, value=type(v).__name__)
    return float(v)


# ---- Vector / GpSimd ALU -----------------------------------------------------------------------------------


def tensor_tensor(dst, data1, data2, op, engine=_engine.unknown, name=None, **kw) -> None:
    """dst = data1 op data2 elementwise (fp32 math; bitvec on raw ints; exact int32 on GpSimd)."""
    with Instr("tensor_tensor", "dve") as ins:
        reject_kwargs(ins, kw)
        o = _alu_op(ins, "op", op, arity=2)
        ins.tensors(dst=dst, data1=data1, data2=data2)
        ins.same_shape("data1", data1, "data2", data2)
        ins.same_shape("data1", data1, "dst", dst)
        ins.not_both_psum("data1", data1, "data2", data2)
        any_psum = any(t.st.buffer == "psum" for t in (dst, data1, data2))
        all_int32 = all(t.dtype in _INT32ISH for t in (dst, data1, data2))
        # power runs on GpSimd; all-int32 goes to GpSimd for exact integer math unless PSUM is involved.
        default = "pool" if (o.name == "power" or (all_int32 and not any_psum)) else "dve"
        eng = _engine_arg(ins, engine, default, ("dve", "pool"))
        if eng == "pool":
            ins.tensors(_SBUF, dst=dst, data1=data1, data2=data2)
        ins.note(op=o.name)
        if o.is_bitvec:
            _int_dtypes(ins, f"bitvec op nl.{o.name}", dst=dst, data1=data1, data2=data2)
            out = S.tensor_tensor(ins.read_raw("data1", data1), ins.read_raw("data2", data2), o)
        elif eng == "pool" and all(numerics.is_int(t.dtype) for t in (data1, data2)):
            out = S.tensor_tensor_int(ins.read_raw("data1", data1), ins.read_raw("data2", data2), o)
        else:
            out = S.tensor_tensor(ins.read("data1", data1), ins.read("data2", data2), o)
        ins.write("dst", dst, out, taint="elementwise", owned=True)


def _bitvec_operand(ins: Instr, name: str, v: Any, p: int) -> Any:
    """Operand of a bitvec tensor_scalar: an integer scalar or a (P, 1) integer tile (raw bits)."""
    if isinstance(v, NkiTensor):
        ins.tensor(name, v)
        ins.column(name, v, p, "expected a scalar or a (P, 1) per-partition vector")
        _int_dtypes(ins, "bitvec operand", **{name: v})
        return ins.read_raw(name, v)
    if not _is_number(v) or float(v) != int(v):
        ins.fail("bitvec operand must be an integer", name, value=v)
    return int(v)


def tensor_scalar(
    dst,
    data,
    op0,
    operand0,
    reverse0=False,
    op1=None,
    operand1=None,
    reverse1=False,
    engine=_engine.unknown,
    name=None,
    **kw,
) -> None:
    """dst = (data op0 operand0) op1 operand1 with scalar or (P, 1) operands."""
    with Instr("tensor_scalar", "dve") as ins:
        reject_kwargs(ins, kw)
        o0 = _alu_op(ins, "op0", op0)
        o1 = None if op1 is None else _alu_op(ins, "op1", op1)
        if o1 is not None and o1.is_bitvec != o0.is_bitvec:
            ins.fail(
                "op0 and op1 must both be arithmetic or both be bitvec ops",
                "op1",
                limit=f"same class as nl.{o0.name}",
                value=f"nl.{o1.name}",
            )
        ins.check(
            o1 is None or operand1 is not None or o1.arity != 2 or o1.name == "bypass",
            "op1 needs operand1",
            "operand1",
        )
        eng = _engine_arg(ins, engine, "dve", ("dve", "act", "pool"))
        ins.tensors(_buffers(eng), dst=dst, data=data)
        ins.same_shape("data", data, "dst", dst)
        p = data.pf()[0]
        if eng == "act" and ins.state.nc_version <= 3:
            pair = (o0.name, None if o1 is None or o1.name == "bypass" else o1.name)
            if pair not in (("multiply", "add"), ("multiply", None), ("add", None)):
                ins.fail(
                    f"the Scalar Engine on {ins.state.target} only runs (multiply, add), (multiply,) and "
                    "(add,) op pairs",
                    "op0",
                    limit="(mul, add)/(mul,)/(add,)",
                    value=pair,
                )
        ins.note(op0=o0.name, op1=None if o1 is None else o1.name)
        if o0.is_bitvec:
            ins.check(
                eng == "dve",
                "bitvec ops run on the Vector Engine only",
                "engine",
                limit="vector",
                value=_ENGINE_LABEL.get(eng, eng),
            )
            _int_dtypes(ins, f"bitvec op nl.{o0.name}", dst=dst, data=data)
            v0 = _bitvec_operand(ins, "operand0", operand0, p)
            v1 = None if o1 is None else _bitvec_operand(ins, "operand1", operand1, p)
            out = S.tensor_scalar(ins.read_raw("data", data), o0, v0, reverse0, o1, v1, reverse1)
        else:
            v0 = _vec(ins, "operand0", operand0, p)
            v1 = None if o1 is None or operand1 is None else _vec(ins, "operand1", operand1, p)
            out = S.tensor_scalar(ins.read("data", data), o0, v0, reverse0, o1, v1, reverse1)
        ins.write("dst", dst, out, taint="elementwise", owned=True)


def scalar_tensor_tensor(
    dst, data, op0, operand0, op1, operand1, reverse0=False, reverse1=False, name=None, **kw
) -> None:
    """dst = (data op0 operand0) op1 operand1; operand0 scalar/(P, 1), operand1 a full tile."""
    with Instr("scalar_tensor_tensor", "dve") as ins:
        reject_kwargs(ins, kw)
        o0 = _alu_op(ins, "op0", op0)
        o1 = _alu_op(ins, "op1", op1, arity=2)
        _no_bitvec(ins, "only arithmetic ops are supported (no bitvec)", op0=o0, op1=o1)
        ins.tensors(dst=dst, data=data, operand1=operand1)
        ins.same_shape("data", data, "operand1", operand1)
        ins.same_shape("data", data, "dst", dst)
        ins.not_both_psum("data", data, "operand1", operand1)
        p = data.pf()[0]
        v0 = _vec(ins, "operand0", operand0, p)
        out = S.scalar_tensor_tensor(
            ins.read("data", data), o0, v0, o1, ins.read("operand1", operand1), reverse0, reverse1
        )
        ins.note(op0=o0.name, op1=o1.name)
        ins.write("dst", dst, out, taint="elementwise", owned=True)


def tensor_reduce(dst, op, data, axis, negate=False, keepdims=False, name=None, **kw) -> None:
    """Reduce data along trailing free axes (never the partition axis)."""
    with Instr("tensor_reduce", "dve") as ins:
        reject_kwargs(ins, kw)
        o = _alu_op(ins, "op", op, arity=2)
        ins.check(
            o.reducible,
            "not a legal reduction op",
            "op",
            limit="add/subtract/multiply/max/min/bitwise/logical",
            value=f"nl.{o.name}",
        )
        ins.tensors(dst=dst, data=data)
        nd = data.ndim
        axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
        try:
            norm = sorted({int(a) + nd if int(a) < 0 else int(a) for a in axes})
        except (TypeError, ValueError):
            ins.fail("axis must be an int or a tuple of ints", "axis", value=axis)
        ins.check(
            norm and norm[0] > 0,
            "cannot reduce along the partition axis 0",
            "axis",
            limit="trailing free axes",
            value=axis,
        )
        if norm != list(range(norm[0], nd)):
            ins.fail(
                "axes must be the trailing free axes ending at the last dim",
                "axis",
                limit=f"e.g. ({nd - 1},) or ({', '.join(str(a) for a in range(1, nd))})",
                value=axis,
            )
        ins.check(
            not negate or o.kind == "arith",
            "negate applies to arithmetic reductions only",
            "negate",
            value=f"nl.{o.name}",
        )
        if o.is_bitvec:
            _int_dtypes(ins, f"bitvec reduction nl.{o.name}", dst=dst, data=data)
        free = data.shape[1:]
        kept = int(np.prod(free[: norm[0] - 1], dtype=np.int64))
        ins.same_shape("data", data, "dst", dst, elems=kept)
        vals = ins.read_raw("data", data) if o.is_bitvec else ins.read("data", data)
        out = S.tensor_reduce(vals, o, free, norm, negate)
        ins.note(op=o.name, reduced=int(np.prod(free, dtype=np.int64)) // max(kept, 1))
        ins.write("dst", dst, out, taint="partition")


_RED4 = ("add", "subtract", "multiply", "maximum", "minimum", "max", "min")


def tensor_scalar_reduce(
    dst, data, op0, operand0, reduce_op, reduce_res, reverse0=False, name=None, **kw
) -> None:
    """dst = data op0 operand0 and reduce_res[p] = reduce_op over dst's free elements (fp32)."""
    with Instr("tensor_scalar_reduce", "dve") as ins:
        reject_kwargs(ins, kw)
        o0 = _alu_op(ins, "op0", op0)
        _no_bitvec(ins, "bitvec ops are not supported", op0=o0)
        r = _reduce_op(ins, "reduce_op", reduce_op, _RED4)
        ins.check(reduce_res is not None, "reduce_res is required", "reduce_res")
        ins.tensors(dst=dst, data=data)
        ins.same_shape("data", data, "dst", dst)
        p = data.pf()[0]
        v0 = _vec(ins, "operand0", operand0, p)
        out = S.tensor_scalar(ins.read("data", data), o0, v0, reverse0)
        lanes = _lanes(data)
        acc = ins.state.dve_acc
        acc[lanes] = S.accumulate(acc[lanes], out, r, S.RESET_REDUCE)
        ins.note(op0=o0.name, reduce_op=r.name)
        ins.write("dst", dst, out, taint="elementwise")
        _write_acc(ins, "reduce_res", reduce_res, acc, lanes, p)


_CUM_OPS = ("add", "subtract", "multiply", "maximum", "minimum", "max", "min")
_INT32_TF32 = ("int32", "uint32", "tfloat32")


def tensor_scalar_cumulative(
    dst, src, op0, op1, imm0, imm1=None, reduce_cmd=_reduce_cmd.reset_reduce, name=None, **kw
) -> None:
    """Inclusive scan reg = op1(op0(src[i], imm0), reg); dst[i] = reg (Vector accumulator registers)."""
    with Instr("tensor_scalar_cumulative", "dve") as ins:
        reject_kwargs(ins, kw)
        o0 = _alu_op(ins, "op0", op0)
        _no_bitvec(ins, "op0 must be an arithmetic op", op0=o0)
        o1 = _reduce_op(ins, "op1", op1, _CUM_OPS)
        cmd = _cmd(ins, reduce_cmd)
        ins.tensors(dst=dst, src=src)
        ins.same_shape("src", src, "dst", dst)
        for n, t in (("src", src), ("dst", dst)):
            ins.check(
                t.dtype not in _INT32_TF32,
                "int32/uint32 are not supported (ISA limitation)",
                n,
                limit="bf16/fp16/fp32/fp8/u8/u16/i8/i16",
                value=t.dtype,
            )
        p = src.pf()[0]
        v0 = _vec(ins, "imm0", imm0, p)
        ins.check(cmd != S.LOAD_REDUCE or imm1 is not None, "reduce_cmd=load_reduce needs imm1", "imm1")
        v1 = None if imm1 is None else _vec(ins, "imm1", imm1, p)
        lanes = _lanes(src)
        acc = ins.state.dve_acc
        init = S.cumulative_init(o1, cmd, acc[lanes], v1)
        out = S.tensor_scalar_cumulative(ins.read("src", src), o0, v0, o1, init)
        acc[lanes] = out[:, -1]
        ins.note(op0=o0.name, op1=o1.name)
        # each output depends on every earlier element of its row
        ins.write("dst", dst, out, taint="partition")


def tensor_tensor_scan(
    dst, data0, data1, initial, op0, op1, reverse0=False, reverse1=False, name=None, **kw
) -> None:
    """res[i] = op1(op0(data0[i], res[i-1]), data1[i]) along the free dim; res[-1] = initial."""
    with Instr("tensor_tensor_scan", "dve") as ins:
        reject_kwargs(ins, kw)
        o0 = _alu_op(ins, "op0", op0, arity=2)
        o1 = _alu_op(ins, "op1", op1, arity=2)
        _no_bitvec(ins, "only arithmetic ops are supported", op0=o0, op1=o1)
        ins.tensors(dst=dst, data0=data0, data1=data1)
        ins.same_shape("data0", data0, "data1", data1)
        ins.same_shape("data0", data0, "dst", dst)
        ins.not_both_psum("data0", data0, "data1", data1)
        p = data0.pf()[0]
        init = _vec(ins, "initial", initial, p)
        out = S.tensor_tensor_scan(
            ins.read("data0", data0), ins.read("data1", data1), init, o0, o1, reverse0, reverse1
        )
        ins.note(op0=o0.name, op1=o1.name)
        ins.write("dst", dst, out, taint="partition")


def reciprocal(dst, data, name=None, **kw) -> None:
    """dst = 1 / data in fp32 on the Vector Engine."""
    with Instr("reciprocal", "dve") as ins:
        reject_kwargs(ins, kw)
        ins.tensors(dst=dst, data=data)
        ins.same_shape("data", data, "dst", dst)
        ins.write("dst", dst, S.reciprocal(ins.read("data", data)), taint="elementwise", owned=True)


def tensor_copy(dst, src, engine=_engine.unknown, name=None, dtype=None, **kw) -> None:
    """dst = src (bit-exact when dtypes match, else through fp32); free shapes may differ.

    ``dtype=``: not in the 0.3 signature, but AWS's current tutorials pass it (nki-samples' matrix
    multiplication, ``dtype=result.dtype``; [SAMPLES]). Accepted when it names dst's dtype; a different
    one is an error naming both (the copy converts to dst's dtype, never to another).
    """
    with Instr("tensor_copy", "dve") as ins:
        reject_kwargs(ins, kw)
        if dtype is not None:
            want = numerics.normalize_dtype(dtype, "tensor_copy")
            have = dst.dtype if isinstance(dst, NkiTensor) else None
            if want == have:
                docs_warning(
                    ins.location, "tensor_copy: dtype= is not in the 0.3 signature (AWS's tutorials pass it)"
                )
            else:
                # AWS's own tutorial passes dtype=bfloat16 with a float32 dst (nki-samples matmul
                # hoist_load, [SAMPLES]) and publishes its timings, so the compiler accepts it; the 0.3
                # signature has no dtype, so the copy converts to dst's dtype.
                docs_warning(
                    ins.location,
                    f"tensor_copy: dtype={want} differs from dst's {have}; the copy converts to dst's dtype "
                    "(dtype= is not in the 0.3 signature; AWS's tutorials pass it)",
                )
        eng = _engine_arg(ins, engine, "dve", ("dve", "act", "pool"))
        if eng == "act":
            ins.needs_nc(
                3,
                "tensor_copy on the Scalar Engine is unsupported on {target} (use activation(op=nl.copy))",
                "engine",
            )
        ins.tensors(_buffers(eng), dst=dst, src=src)
        ins.same_shape("src", src, "dst", dst)
        if src.dtype == dst.dtype:
            ins.write("dst", dst, ins.read_raw("src", src), taint="elementwise", raw=True)
        else:
            ins.write("dst", dst, ins.read("src", src), taint="elementwise")


_PRED_DTYPES = ("uint8", "uint16", "uint32", "bool_")


def tensor_copy_predicated(dst, src, predicate, reverse_pred=False, name=None, **kw) -> None:
    """dst = src where predicate is nonzero (zero if reverse_pred); other elements keep their value."""
    with Instr("tensor_copy_predicated", "dve") as ins:
        reject_kwargs(ins, kw)
        ins.tensors(dst=dst, predicate=predicate)
        ins.same_shape("dst", dst, "predicate", predicate)
        ins.dtype_in("predicate", predicate, _PRED_DTYPES, "predicate must be an unsigned integer tile")
        p, f = dst.pf()
        if isinstance(src, NkiTensor):
            ins.tensor("src", src)
            ins.same_shape("dst", dst, "src", src)
            ins.same_dtype("src", src, dst, "src and dst must have the same dtype")
            ins.not_both_psum("src", src, "predicate", predicate)
            src_vals = ins.read_raw("src", src)
            src_taint = ins.last_taint
        else:
            src_vals = numerics.cast(np.float32(_float_scalar(ins, "src", src)), dst.dtype)
            src_taint = None
        pred = ins.read_raw("predicate", predicate)
        pred_taint = ins.last_taint
        old = ins.read_raw("dst", dst)
        old_taint = ins.last_taint
        out = S.tensor_copy_predicated(old, src_vals, pred, bool(reverse_pred))
        take = (pred != 0) != bool(reverse_pred)
        taint = np.zeros((p, f), bool)
        for m, where in ((src_taint, take), (old_taint, ~take)):
            if m is not None:
                taint |= m & where
        if pred_taint is not None:
            taint |= pred_taint
        ins.write("dst", dst, out, taint=taint, raw=True)


_SEL_PRED = ("int8", "uint8", "int16", "uint16")


def select_reduce(
    dst,
    predicate,
    on_true,
    on_false,
    reduce_res=None,
    reduce_cmd=_reduce_cmd.idle,
    reduce_op=alu.maximum,
    reverse_pred=False,
    name=None,
    **kw,
) -> None:
    """dst = predicate ? on_true : on_false, with an optional max-reduction into the Vector accumulator."""
    with Instr("select_reduce", "dve") as ins:
        reject_kwargs(ins, kw)
        cmd = _cmd(ins, reduce_cmd)
        r = _reduce_op(ins, "reduce_op", reduce_op, ("maximum", "max"))
        ins.tensors(dst=dst, predicate=predicate, on_true=on_true)
        ins.same_shape("on_true", on_true, "predicate", predicate)
        ins.same_shape("on_true", on_true, "dst", dst)
        ins.not_both_psum("predicate", predicate, "on_true", on_true)
        ins.dtype_in("predicate", predicate, _SEL_PRED, "predicate dtype must be int8/uint8/int16/uint16")
        ins.check(
            on_true.dtype not in _INT32_TF32,
            "on_true cannot be tfloat32/int32/uint32",
            "on_true",
            value=on_true.dtype,
        )
        p = on_true.pf()[0]
        off = _vec(ins, "on_false", on_false, p)
        out = S.select_reduce(
            ins.read_raw("predicate", predicate), ins.read("on_true", on_true), off, bool(reverse_pred)
        )
        lanes = _lanes(on_true)
        acc = ins.state.dve_acc
        acc[lanes] = S.accumulate(acc[lanes], out, r, cmd)
        ins.write("dst", dst, out, taint="elementwise")
        _write_acc(ins, "reduce_res", reduce_res, acc, lanes, p)


_RANGE_CMP = ("equal", "less", "less_equal", "greater", "greater_equal")


def range_select(
    dst,
    on_true_tile,
    comp_op0,
    comp_op1,
    bound0,
    bound1,
    reduce_cmd=_reduce_cmd.reset_reduce,
    reduce_res=None,
    reduce_op=alu.maximum,
    range_start=0,
    on_false_value=_FP32_MIN,
    name=None,
    **kw,
) -> None:
    """Keep elements whose free index lies in the per-partition range, else FP32_MIN; max-reduce them."""
    with Instr("range_select", "dve") as ins:
        reject_kwargs(ins, kw)
        ins.needs_nc(3, "range_select needs NeuronCore-v3+, the target is {target}")
        cmd = _cmd(ins, reduce_cmd)
        c0 = _reduce_op(ins, "comp_op0", comp_op0, _RANGE_CMP)
        c1 = _reduce_op(ins, "comp_op1", comp_op1, _RANGE_CMP)
        r = _reduce_op(ins, "reduce_op", reduce_op, ("maximum", "max"))
        ins.check(
            float(np.float32(_float_scalar(ins, "on_false_value", on_false_value))) == _FP32_MIN,
            "on_false_value must be FP32_MIN (-3.4028235e+38)",
            "on_false_value",
            limit=_FP32_MIN,
            value=on_false_value,
        )
        ins.tensors(dst=dst, on_true_tile=on_true_tile)
        ins.same_shape("on_true_tile", on_true_tile, "dst", dst)
        p = on_true_tile.pf()[0]
        b0 = _vec(ins, "bound0", bound0, p, fp32=True)
        b1 = _vec(ins, "bound1", bound1, p, fp32=True)
        out = S.range_select(
            ins.read("on_true_tile", on_true_tile),
            c0,
            c1,
            b0,
            b1,
            _float_scalar(ins, "range_start", range_start),
            _FP32_MIN,
        )
        lanes = _lanes(on_true_tile)
        acc = ins.state.dve_acc
        acc[lanes] = S.accumulate(acc[lanes], out, r, cmd)
        ins.write("dst", dst, out, taint="elementwise")
        _write_acc(ins, "reduce_res", reduce_res, acc, lanes, p)


def memset(dst, value, engine=_engine.unknown, name=None, **kw) -> None:
    """Fill dst with a compile-time constant whose kind matches dst's dtype."""
    with Instr("memset", "dve") as ins:
        reject_kwargs(ins, kw)
        eng = _engine_arg(ins, engine, "dve", ("dve", "pool"))
        ins.tensor("dst", dst, buffers=_buffers(eng))
        err = S.memset_value_error(value, dst.dtype)
        ins.check(err is None, err, "value", limit=dst.dtype, value=value)
        if numerics.is_int(dst.dtype) and isinstance(value, (float, np.floating)):
            docs_warning(
                ins.location,
                f"memset: float value {value!r} into an integer ({dst.dtype}) tile "
                "(the 0.3 docs want an int; AWS's nki-library passes 0.0)",
            )
        if numerics.is_int(dst.dtype) and not isinstance(value, (bool, np.bool_)):
            lo, hi = numerics.int_range(dst.dtype)
            if not lo <= int(value) <= hi:
                ins.fail("value out of range for dst dtype", "value", limit=f"[{lo}, {hi}]", value=value)
        # One value, converted once and broadcast by the store (the same bits as a full fp32/int64 tile
        # cast element by element, without a tile-sized temporary and its conversion pass).
        if numerics.is_int(dst.dtype) or numerics.is_packed(dst.dtype):
            fill = np.asarray(int(value), dtype=np.int64)
        else:
            fill = np.asarray(value, dtype=np.float32)
        ins.write("dst", dst, fill, taint=None)


# ---- Scalar Engine -----------------------------------------------------------------------------------------


def _act_operands(ins: Instr, op: Any, data: Any, dst: Any, bias: Any, scale: Any) -> tuple:
    """Validate activation op/data/dst/bias/scale; return (Op, bias value, scale value)."""
    o = _op(ins, "op", op)
    ins.check(o.act and o.arity == 1, "not a Scalar Engine activation function", "op", value=f"nl.{o.name}")
    ins.tensors(dst=dst, data=data)
    ins.same_shape("data", data, "dst", dst)
    p = data.pf()[0]
    if isinstance(bias, NkiTensor):
        ins.tensor("bias", bias)
        ins.check(bias.dtype != "tfloat32", "bias cannot be tfloat32", "bias", value=bias.dtype)
    elif bias is not None and ins.state.nc_version < 3:
        ins.fail(
            f"a scalar bias needs NeuronCore-v3+, the target is {ins.state.target}; pass a (P, 1) tile",
            "bias",
            limit="(P, 1) tile",
            value=bias,
        )
    b = None if bias is None else _vec(ins, "bias", bias, p)
    s = _vec(ins, "scale", scale, p, fp32=True)
    return o, b, s


def activation(
    dst,
    op,
    data,
    bias=None,
    scale=1.0,
    reduce_op=None,
    reduce_res=None,
    reduce_cmd=_reduce_cmd.idle,
    name=None,
    **kw,
) -> None:
    """dst = op(data * scale + bias) on the Scalar Engine, optionally summed into the ACT accumulators."""
    with Instr("activation", "act") as ins:
        reject_kwargs(ins, kw)
        cmd = _cmd(ins, reduce_cmd)
        r = alu.add if reduce_op is None else _reduce_op(ins, "reduce_op", reduce_op, ("add",))
        ins.check(
            cmd != S.LOAD_REDUCE,
            "reduce_cmd=load_reduce needs an initial value, which activation does not take",
            "reduce_cmd",
            limit="idle/reset/reduce/reset_reduce",
            value="load_reduce",
        )
        if reduce_res is not None and cmd == S.IDLE and reduce_op is not None:
            cmd = S.RESET_REDUCE  # 0.2-style call: reduce_op + reduce_res without a command
        o, b, s = _act_operands(ins, op, data, dst, bias, scale)
        out = S.activation(ins.read("data", data), o, s, b)
        lanes = _lanes(data)
        acc = ins.state.act_acc
        acc[lanes] = S.accumulate(acc[lanes], out, r, cmd)
        ins.note(op=o.name, reduce_cmd=cmd)
        ins.write("dst", dst, out, taint="elementwise", owned=True)
        _write_acc(ins, "reduce_res", reduce_res, acc, lanes, data.pf()[0])


def activation_reduce(dst, op, data, reduce_op, reduce_res, bias=None, scale=1.0, name=None, **kw) -> None:
    """activation() plus a sum over all free elements of the result into reduce_res (P, 1)."""
    with Instr("activation_reduce", "act") as ins:
        reject_kwargs(ins, kw)
        r = _reduce_op(ins, "reduce_op", reduce_op, ("add",))
        o, b, s = _act_operands(ins, op, data, dst, bias, scale)
        ins.check(reduce_res is not None, "reduce_res is required", "reduce_res")
        out = S.activation(ins.read("data", data), o, s, b)
        lanes = _lanes(data)
        acc = ins.state.act_acc
        acc[lanes] = S.accumulate(acc[lanes], out, r, S.RESET_REDUCE)
        ins.note(op=o.name)
        ins.write("dst", dst, out, taint="elementwise")
        _write_acc(ins, "reduce_res", reduce_res, acc, lanes, data.pf()[0])


def exponential(
    dst, src, max_value=0.0, reduce_res=None, reduce_cmd=_reduce_cmd.idle, reduce_init=0.0, name=None, **kw
) -> None:
    """dst = exp(src - max_value) with an optional sum into the Vector accumulators (trn3 only)."""
    with Instr("exponential", "dve") as ins:
        reject_kwargs(ins, kw)
        ins.needs_nc(4, "exponential is a NeuronCore-v4 (trn3) instruction; the target is {target}")
        cmd = _cmd(ins, reduce_cmd)
        ins.tensors(dst=dst, src=src)
        ins.same_shape("src", src, "dst", dst)
        p = src.pf()[0]
        mv = _vec(ins, "max_value", max_value, p)
        init = _vec(ins, "reduce_init", reduce_init, p)
        out = S.exponential(ins.read("src", src), mv)
        lanes = _lanes(src)
        acc = ins.state.dve_acc
        init_lanes = np.asarray(init, np.float32).reshape(-1) if isinstance(init, np.ndarray) else init
        acc[lanes] = S.accumulate(acc[lanes], out, alu.add, cmd, init_lanes)
        ins.write("dst", dst, out, taint="elementwise")
        _write_acc(ins, "reduce_res", reduce_res, acc, lanes, p)


# ---- GpSimd ------------------------------------------------------------------------------------------------


def _pattern(ins: Instr, pattern: Any, dst: NkiTensor) -> list[list[int]]:
    """Validate an [[step, num], ...] pattern (up to 4 pairs) covering dst's elements per partition."""
    try:
        pat = [[int(s), int(n)] for s, n in pattern]
    except (TypeError, ValueError):
        ins.fail("pattern must be a list of [step, num] pairs", "pattern", value=pattern)
    ins.check(
        1 <= len(pat) <= 4, "pattern takes 1 to 4 [step, num] pairs", "pattern", limit=4, value=len(pat)
    )
    ins.check(all(n > 0 for _, n in pat), "pattern sizes must be positive", "pattern", value=pattern)
    f = dst.pf()[1]
    count = int(np.prod([n for _, n in pat], dtype=np.int64))
    ins.check(
        count == f,
        "pattern covers a different number of elements than dst has per partition",
        "pattern",
        limit=f,
        value=count,
    )
    return pat


def iota(dst, pattern, offset=0, channel_multiplier=0, name=None, **kw) -> None:
    """dst[p, i...] = offset + p*channel_multiplier + sum(i_k * step_k), computed in int32 on GpSimd."""
    with Instr("iota", "pool") as ins:
        reject_kwargs(ins, kw)
        ins.tensor("dst", dst, buffers=_SBUF)
        pat = _pattern(ins, pattern, dst)
        vals = S.iota(pat, int(offset), int(channel_multiplier), dst.pf()[0])
        ins.write("dst", dst, vals, taint=None)


def affine_select(
    dst,
    pattern,
    channel_multiplier,
    on_true_tile,
    on_false_value,
    cmp_op=alu.equal,
    offset=0,
    name=None,
    **kw,
) -> None:
    """dst = on_true_tile where cmp_op(affine value, 0) else on_false_value (GpSimd)."""
    with Instr("affine_select", "pool") as ins:
        reject_kwargs(ins, kw)
        if not isinstance(on_true_tile, NkiTensor) and isinstance(on_false_value, NkiTensor):
            # NKI 0.2 positional order: (dst, pattern, offset, channel_multiplier, on_true_tile, ...)
            offset, channel_multiplier, on_true_tile, on_false_value, cmp_op = (
                channel_multiplier,
                on_true_tile,
                on_false_value,
                cmp_op,
                offset if isinstance(offset, Op) else alu.equal,
            )
        c = _reduce_op(ins, "cmp_op", cmp_op, tuple(S.COMPARE_OPS))
        ins.tensors(_SBUF, dst=dst, on_true_tile=on_true_tile)
        ins.same_shape("on_true_tile", on_true_tile, "dst", dst)
        pat = _pattern(ins, pattern, dst)
        p, f = dst.pf()
        fv = _float_scalar(ins, "on_false_value", on_false_value)
        keep = (
            S.affine_select(pat, int(channel_multiplier), np.ones((p, f), np.float32), 0.0, c, int(offset))
            != 0
        )
        if on_true_tile.dtype == dst.dtype:
            vals = ins.read_raw("on_true_tile", on_true_tile)
            out = np.where(keep, vals, numerics.cast(np.float32(fv), dst.dtype))
            raw = True
        else:
            out = np.where(keep, ins.read("on_true_tile", on_true_tile), np.float32(fv))
            raw = False
        taint = None if ins.last_taint is None else ins.last_taint & keep
        ins.write("dst", dst, out, taint=taint, raw=raw)


_LG_ELEMS = (1, 2, 4, 8, 16, 32)


def local_gather(dst, src_buffer, index, num_elem_per_idx=1, num_valid_indices=None, name=None, **kw) -> None:
    """Each 16-partition GpSimd core gathers num_elem_per_idx-element runs of its rows at shared indices."""
    with Instr("local_gather", "pool") as ins:
        reject_kwargs(ins, kw)
        ins.tensors(_SBUF, dst=dst, src_buffer=src_buffer, index=index)
        ins.dtype_in("index", index, ("uint16",), "index must be uint16")
        p, f = src_buffer.pf()
        ins.same_shape("src_buffer", src_buffer, "index", index, elems=None)
        ins.same_shape("src_buffer", src_buffer, "dst", dst, elems=None)
        ins.check(
            p % 16 == 0,
            "partition count must be a multiple of 16 (one GpSimd core per 16 partitions)",
            "src_buffer",
            limit="multiple of 16",
            value=p,
        )
        ins.check(
            num_elem_per_idx in _LG_ELEMS,
            "num_elem_per_idx must be 1, 2, 4, 8, 16 or 32",
            "num_elem_per_idx",
            limit=_LG_ELEMS,
            value=num_elem_per_idx,
        )
        per_core = 16 * index.pf()[1]
        nvalid = per_core if num_valid_indices is None else int(num_valid_indices)
        ins.check(
            1 <= nvalid <= min(per_core, 4096),
            "num_valid_indices must be in [1, indices per core] and at most 4096",
            "num_valid_indices",
            limit=min(per_core, 4096),
            value=nvalid,
        )
        ins.same_dtype(
            "dst", dst, src_buffer, "local_gather does not cast: dst.dtype must equal src_buffer.dtype"
        )
        ins.elems("dst", dst, nvalid * num_elem_per_idx)
        src = ins.read_raw("src_buffer", src_buffer)
        src_taint = ins.last_taint
        idx = ins.read_raw("index", index)
        idx_taint = ins.last_taint
        try:
            out = S.local_gather(src, idx, num_elem_per_idx, nvalid)
        except ValueError as e:
            ins.fail(f"{e} (out-of-bounds gather is undefined on hardware)", "index", limit=f, value=None)
        taint = np.zeros(out.shape, bool)
        if src_taint is not None:
            taint |= S.local_gather(src_taint, idx, num_elem_per_idx, nvalid)
        if idx_taint is not None:
            core_bad = idx_taint.reshape(p // 16, -1).any(axis=1)
            taint |= np.repeat(core_bad, 16)[:, None]
        ins.write("dst", dst, out, taint=taint, raw=True)


def nc_n_gather(dst, data, indices, name=None, **kw) -> None:
    """dst[p, k] = data[p, indices[p, k]] (flattened free dims), all in SBUF."""
    with Instr("nc_n_gather", "pool") as ins:
        reject_kwargs(ins, kw)
        ins.tensors(_SBUF, dst=dst, data=data, indices=indices)
        ins.check(
            numerics.is_int(indices.dtype) and indices.dtype != "bool_",
            "indices must be an integer (uint32) tile",
            "indices",
            limit="uint32",
            value=indices.dtype,
        )
        ins.same_dtype("dst", dst, data, "dst.dtype must equal data.dtype")
        ins.same_shape("data", data, "indices", indices, elems=None)
        ins.same_shape("indices", indices, "dst", dst)
        vals = ins.read_raw("data", data)
        vt = ins.last_taint
        idx = ins.read_raw("indices", indices)
        it = ins.last_taint
        try:
            out = S.nc_n_gather(vals, idx)
        except ValueError as e:
            ins.fail(str(e), "indices", limit=f"[0, {vals.shape[1]})")
        taint = np.zeros(out.shape, bool)
        if vt is not None:
            taint |= S.nc_n_gather(vt, idx)
        if it is not None:
            taint |= it
        ins.write("dst", dst, out, taint=taint, raw=True)


_PART_RED = ("add", "maximum", "max", "bitwise_or", "bitwise_and")


def tensor_partition_reduce(dst, op, data, name=None, **kw) -> None:
    """Reduce across partitions: data (P, F) -> dst (1, F) on GpSimd."""
    with Instr("tensor_partition_reduce", "pool") as ins:
        reject_kwargs(ins, kw)
        o = _reduce_op(ins, "op", op, _PART_RED)
        ins.tensors(_SBUF, dst=dst, data=data)
        ins.check(dst.pf()[0] == 1, "dst must have a single partition", "dst", limit=1, value=dst.pf()[0])
        ins.elems("dst", dst, data.pf()[1])
        if o.is_bitvec:
            _int_dtypes(ins, f"bitvec reduction nl.{o.name}", dst=dst, data=data)
            vals = ins.read_raw("data", data)
        else:
            vals = ins.read("data", data)
        taint = None if ins.last_taint is None else ins.last_taint.any(axis=0, keepdims=True)
        ins.write("dst", dst, S.tensor_partition_reduce(vals, o), taint=taint)


def sequence_bounds(dst, segment_ids, name=None, **kw) -> None:
    """Per element: start and (exclusive) end of its segment run; padding id 0 gives (n, -1)."""
    with Instr("sequence_bounds", "pool") as ins:
        reject_kwargs(ins, kw)
        ins.tensors(_SBUF, dst=dst, segment_ids=segment_ids)
        ins.dtype_in("segment_ids", segment_ids, ("float32", "int32"), "segment_ids must be float32 or int32")
        ins.same_shape("segment_ids", segment_ids, "dst", dst, elems=2 * segment_ids.pf()[1])
        ins.write("dst", dst, S.sequence_bounds(ins.read("segment_ids", segment_ids)), taint="partition")


# ---- Vector: top-k, statistics, shuffles -------------------------------------------------------------------


def _top8_src(ins: Instr, name: str, t: NkiTensor) -> None:
    f = t.pf()[1]
    ins.check(8 <= f <= 16384, "needs 8 to 16384 elements per partition", name, limit="[8, 16384]", value=f)


def max8(dst, src, name=None, **kw) -> None:
    """The 8 largest values of each partition, in descending order."""
    with Instr("max8", "dve") as ins:
        reject_kwargs(ins, kw)
        ins.tensors(dst=dst, src=src)
        _top8_src(ins, "src", src)
        ins.same_shape("src", src, "dst", dst, elems=8)
        ins.write("dst", dst, S.max8(ins.read("src", src)), taint="partition")


def _vals8(ins: Instr, vals: NkiTensor, data: NkiTensor) -> None:
    ins.tensor("vals", vals)
    ins.same_shape("data", data, "vals", vals, elems=8)


def nc_find_index8(dst, data, vals, name=None, **kw) -> None:
    """Index of each of the 8 vals in data per partition (ties: successive occurrences, ascending)."""
    with Instr("nc_find_index8", "dve") as ins:
        reject_kwargs(ins, kw)
        ins.tensors(dst=dst, data=data)
        _top8_src(ins, "data", data)
        _vals8(ins, vals, data)
        ins.dtype_in("dst", dst, ("uint16", "uint32"), "dst must be uint16 or uint32")
        ins.same_shape("data", data, "dst", dst, elems=8)
        idx = S.nc_find_index8(ins.read("data", data), ins.read("vals", vals))
        ins.write("dst", dst, idx.astype(np.int64), taint="partition")


def nc_match_replace8(dst, data, vals, imm, dst_idx=None, name=None, **kw) -> None:
    """Replace the first occurrence of each of the 8 vals with imm (vals visited 7..0); optional indices."""
    with Instr("nc_match_replace8", "dve") as ins:
        reject_kwargs(ins, kw)
        ins.tensors(dst=dst, data=data)
        _vals8(ins, vals, data)
        ins.same_shape("data", data, "dst", dst)
        fimm = _float_scalar(ins, "imm", imm)
        if dst_idx is not None:
            ins.tensor("dst_idx", dst_idx)
            ins.same_shape("data", data, "dst_idx", dst_idx, elems=8)
            ins.check(
                numerics.is_int(dst_idx.dtype),
                "dst_idx must be an integer tile",
                "dst_idx",
                limit="uint16/uint32",
                value=dst_idx.dtype,
            )
        out, idx = S.nc_match_replace8(ins.read("data", data), ins.read("vals", vals), fimm)
        ins.write("dst", dst, out, taint="partition")
        if dst_idx is not None:
            ins.write("dst_idx", dst_idx, idx.astype(np.int64), taint="partition")


def _shuffle_mask(ins: Instr, shuffle_mask: Any) -> list[int]:
    try:
        mask = [int(m) for m in shuffle_mask]
    except (TypeError, ValueError):
        ins.fail("shuffle_mask must be a list of 32 ints", "shuffle_mask", value=shuffle_mask)
    ins.check(len(mask) == 32, "shuffle_mask must have 32 entries", "shuffle_mask", limit=32, value=len(mask))
    bad = [m for m in mask if not (0 <= m < 32 or m == S.SHUFFLE_KEEP)]
    if bad:
        ins.fail(
            "shuffle_mask entries must be in [0, 31] or 255 (keep dst)",
            "shuffle_mask",
            limit="[0, 31] or 255",
            value=bad[0],
        )
    return mask


def nc_stream_shuffle(dst, src, shuffle_mask, name=None, **kw) -> None:
    """dst[q*32+i] = src[q*32+mask[i]] within each 32-partition quadrant; mask 255 keeps dst."""
    with Instr("nc_stream_shuffle", "dve") as ins:
        reject_kwargs(ins, kw)
        mask = _shuffle_mask(ins, shuffle_mask)
        ins.tensors(check_start=False, dst=dst, src=src)
        ins.same_dtype("src", src, dst, "src and dst must have the same dtype")
        ps, fs = src.pf()
        pd, fd = dst.pf()
        ins.check(fs == fd, "elements per partition differ from 'dst'", "src", limit=fd, value=fs)
        span = -(-max(ps, pd) // 32) * 32
        starts = (0,) if span > 64 else ((0, 64) if span == 64 else (0, 32, 64, 96))
        for n, t in (("src", src), ("dst", dst)):
            ins.check(
                t.p_start() in starts,
                f"with {span} partitions in play the start partition must be one of {starts}",
                n,
                limit=starts,
                value=t.p_start(),
            )
        sources = S.stream_shuffle_sources(mask, pd)
        if np.any(sources >= ps):
            bad = int(np.flatnonzero(sources >= ps)[0])
            ins.fail(
                f"dst partition {bad} reads src partition {int(sources[bad])}, but src has {ps}",
                "shuffle_mask",
                limit=ps,
                value=int(sources[bad]),
            )
        vals = ins.read_raw("src", src)
        st = ins.last_taint
        old = ins.read_raw("dst", dst)
        dt = ins.last_taint
        out = S.nc_stream_shuffle(vals, old, mask)
        taint = None
        if st is not None or dt is not None:
            src_t = np.zeros((ps, fs), bool) if st is None else st
            old_t = np.zeros((pd, fd), bool) if dt is None else dt
            taint = S.nc_stream_shuffle(src_t, old_t, mask)
        ins.write("dst", dst, out, taint=taint if taint is not None else None, raw=True)


def bn_stats(dst, data, name=None, **kw) -> None:
    """Per partition [count, mean, var*count] of the even- then odd-indexed elements (6 values)."""
    with Instr("bn_stats", "dve") as ins:
        reject_kwargs(ins, kw)
        ins.tensors(dst=dst, data=data)
        f = data.pf()[1]
        ins.check(f <= 512, "free size exceeds bn_stats_fmax", "data", limit=512, value=f)
        ins.same_shape("data", data, "dst", dst, elems=6)
        ins.write("dst", dst, S.bn_stats(ins.read("data", data)), taint="partition")


def bn_aggr(dst, data, name=None, **kw) -> None:
    """Aggregate concatenated bn_stats tuples into [mean, variance] per partition."""
    with Instr("bn_aggr", "dve") as ins:
        reject_kwargs(ins, kw)
        ins.tensors(dst=dst, data=data)
        f = data.pf()[1]
        ins.check(
            f % 3 == 0,
            "elements per partition must be a multiple of 3 (count, mean, var*count)",
            "data",
            limit="multiple of 3",
            value=f,
        )
        ins.same_shape("data", data, "dst", dst, elems=2)
        ins.write("dst", dst, S.bn_aggr(ins.read("data", data)), taint="partition")


# ---- randomness (deterministic: a seeded generator per program) --------------------------------------------


def _rng(ins: Instr) -> np.random.Generator:
    return ins.state.rng


def dropout(dst, data, prob, name=None, **kw) -> None:
    """Zero each element with probability prob (kept values are not rescaled)."""
    with Instr("dropout", "dve") as ins:
        reject_kwargs(ins, kw)
        ins.tensors(dst=dst, data=data)
        ins.same_shape("data", data, "dst", dst)
        ins.same_dtype("dst", dst, data, "dst.dtype must equal data.dtype")
        p, f = data.pf()
        pr = _vec(ins, "prob", prob, p, fp32=numerics.is_int(data.dtype))
        u = _rng(ins).random((p, f), dtype=np.float32)
        ins.write("dst", dst, S.dropout(ins.read("data", data), pr, u), taint="elementwise")


def rng(dst, engine=_engine.unknown, name=None, **kw) -> None:
    """Random bits truncated to an integer dst."""
    with Instr("rng", "dve") as ins:
        reject_kwargs(ins, kw)
        eng = _engine_arg(ins, engine, "dve", ("dve", "pool"))
        if eng == "pool" and ins.state.nc_version < 3:
            ins.fail(
                f"rng on GpSimd needs NeuronCore-v3+, the target is {ins.state.target}",
                "engine",
                limit="vector",
                value="gpsimd",
            )
        ins.tensor("dst", dst, buffers=_buffers(eng))
        ins.check(
            numerics.is_int(dst.dtype),
            "rng writes integer bits; dst must be an integer tile",
            "dst",
            value=dst.dtype,
        )
        p, f = dst.pf()
        bits = _rng(ins).integers(0, 2**32, size=(p, f), dtype=np.uint32)
        sdt = numerics.np_storage_dtype(dst.dtype)
        ins.write("dst", dst, bits.astype(sdt, casting="unsafe"), taint=None, raw=True)


def rand2(dst, min, max, name=None, **kw) -> None:
    """Uniform fp32 values in [min, max] (trn3 only)."""
    with Instr("rand2", "dve") as ins:
        reject_kwargs(ins, kw)
        ins.needs_nc(4, "rand2 is a NeuronCore-v4 (trn3) instruction; the target is {target}")
        ins.tensor("dst", dst)
        p, f = dst.pf()
        lo = _vec(ins, "min", min, p)
        hi = _vec(ins, "max", max, p)
        u = _rng(ins).random((p, f), dtype=np.float32)
        ins.write("dst", dst, S.rand_uniform(u, lo, hi), taint=None)


_STATE_WORDS = {"pool": 6, "dve": 24}


def rand_get_state(dst, engine=_engine.unknown, name=None, **kw) -> None:
    """Save the PRNG state as uint32 words per lane (6 on GpSimd, 24 on Vector); restorable by set_state."""
    with Instr("rand_get_state", "dve") as ins:
        reject_kwargs(ins, kw)
        eng = _engine_arg(ins, engine, "dve", ("dve", "pool"))
        ins.tensor("dst", dst, buffers=_buffers(eng))
        p, f = dst.pf()
        ins.check(
            f == _STATE_WORDS[eng],
            "wrong number of state words per partition",
            "dst",
            limit=_STATE_WORDS[eng],
            value=f,
        )
        words = _rng(ins).integers(0, 2**32, size=(p, f), dtype=np.uint32)
        # The emulator's stream continues from a generator seeded by the saved words, so writing them back
        # with rand_set_state replays exactly the values drawn after this point.
        ins.state.rng = np.random.default_rng(words.reshape(-1))
        ins.write("dst", dst, words.astype(np.int64), taint=None)


def rand_set_state(src_seeds, engine=_engine.unknown, name=None, **kw) -> None:
    """Restore the PRNG state from words saved by rand_get_state (or any seed words)."""
    with Instr("rand_set_state", "dve") as ins:
        reject_kwargs(ins, kw)
        eng = _engine_arg(ins, engine, "dve", ("dve", "pool"))
        ins.tensor("src_seeds", src_seeds, buffers=_buffers(eng))
        words = ins.read_raw("src_seeds", src_seeds).astype(np.uint64).astype(np.uint32)
        ins.state.rng = np.random.default_rng(words.reshape(-1))


def set_rng_seed(src_seeds, name=None, **kw) -> None:
    """Seed the Vector PRNG from a [1, 1] 32-bit tensor."""
    with Instr("set_rng_seed", "dve") as ins:
        reject_kwargs(ins, kw)
        ins.tensor("src_seeds", src_seeds)
        ins.check(
            src_seeds.size == 1 and numerics.itemsize(src_seeds.dtype) == 4,
            "src_seeds must be a [1, 1] 32-bit tensor",
            "src_seeds",
            limit="[1, 1] 32-bit",
            value=(src_seeds.shape, src_seeds.dtype),
        )
        word = ins.read_raw("src_seeds", src_seeds).reshape(-1).view(np.uint32)
        ins.state.rng = np.random.default_rng(word)
