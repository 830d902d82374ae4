"""DMA instructions: dma_copy (casts, indirect gather/scatter, oob modes) and dma_transpose."""

from __future__ import annotations

import numpy as np

from . import numerics
from .enums import dge_mode as _dge_mode
from .enums import engine as _engine
from .enums import oob_mode as _oob_mode
from .errors import NkiUninitializedError, docs_warning
from .instr import Instr, reject_kwargs
from .tensor import ITEMSIZE, NkiTensor
from .trace import Access

_COMPAT_02_KWARGS = ("dst_rmw_op", "unique_indices", "mask")


def enum_arg(ins: Instr, value, enum_cls, operand: str):
    """The enum member for an enum member or a raw int that is a member's value.

    The 0.3 migration notes say raw ints are rejected, but AWS's production kernels pass them
    (``dge_mode=3`` in nki-library, [NKILIB]), so the compiler accepts them: a valid raw int runs, with an
    NkiDocsWarning outside 0.2-compat mode; any other value is an error naming the members.
    """
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            member = enum_cls(value)
        except ValueError:
            member = None
        if member is not None:
            if ins.prog.compat != "0.2":
                docs_warning(
                    ins.location,
                    f"{ins.opcode}: raw int {operand}={value} read as nisa.{enum_cls.__name__}.{member.name} "
                    "(the 0.3 docs reject raw ints; AWS's nki-library passes them)",
                )
            return member
    members = ", ".join(f"{m.name}={m.value}" for m in enum_cls)
    ins.fail(f"expected nisa.{enum_cls.__name__}.<member> ({members})", operand, value=value)


def _queue(ins: Instr, dge, eng) -> str:
    if dge == _dge_mode.hwdge and eng in (_engine.sync, _engine.scalar):
        return "sp" if eng == _engine.sync else "act"
    if dge == _dge_mode.swdge:
        return "pool"
    prog = ins.prog
    prog.dma_rr += 1
    return f"q{(prog.dma_rr - 1) % 16}"


def _static_or_skip(ins: Instr, operand: str, t: NkiTensor, oob) -> NkiTensor | None:
    """Resolve a scalar_offset view; None when out of bounds under oob_mode.skip."""
    if t.dyn is None or t.dyn[0] != "scalar":
        return t
    if oob == _oob_mode.skip:
        kind, src, mult, nrows = t.dyn
        val = ins.scalar_value(operand, src)
        out = NkiTensor(t.st, t.dtype, t.pat, t.off + val * mult)
        total = t.st.raw.nbytes // numerics.itemsize(t.dtype)
        lo = out.off + sum(min(0, s * (n - 1)) for s, n in out.pat)
        hi = out.off + sum(max(0, s * (n - 1)) for s, n in out.pat)
        return out if 0 <= lo and hi < total else None
    return ins.resolve(operand, t)


def _indirect_rows(ins: Instr, operand: str, t: NkiTensor, oob):
    """Element indices (P, R) (view-dtype units) and valid-row mask (P,) of a vector_offset view."""
    kind, idx_t, row, nrows = t.dyn
    ins.tensor("vector_offset", idx_t, buffers=("sbuf",), check_start=False)
    idx = ins.read_raw("vector_offset", idx_t).reshape(-1).astype(np.int64)
    if ins.last_taint is not None:
        ins.fail(
            "vector_offset indices come from uninitialised memory", "vector_offset", cls=NkiUninitializedError
        )
    P = t.pat[0][1]
    if idx.size != P:
        ins.fail(
            "vector_offset must hold one index per row of the access pattern",
            "vector_offset",
            limit=P,
            value=idx.size,
        )
    rest = np.zeros((), np.int64)
    for s, n in t.pat[1:]:
        rest = rest[..., None] + np.arange(n, dtype=np.int64) * s
    rest = rest.reshape(-1)
    total = t.st.raw.nbytes // numerics.itemsize(t.dtype)
    base = t.off + idx * row
    valid = (idx >= 0) & (idx < nrows) & (base + rest.min() >= 0) & (base + rest.max() < total)
    if not valid.all() and oob == _oob_mode.error:
        w = int(np.argmin(valid))
        ins.fail(
            "indirect DMA index out of bounds (oob_mode.error)",
            operand,
            limit=f"[0, {nrows - 1}]",
            value=f"index {int(idx[w])} at row {w}",
        )
    rows = base[:, None] + rest[None, :]
    rows = np.where(valid[:, None], rows, 0)
    return rows, valid


def _indirect_access(ins: Instr, operand: str, mode: str, t: NkiTensor, rows: np.ndarray) -> None:
    lo, hi = int(rows.min()), int(rows.max())
    ins.accesses.append(
        Access(
            operand, mode, t.st.buffer, t.dtype, ITEMSIZE[t.dtype], lo, ((1, hi - lo + 1),), 0, t.st.serial
        )
    )


def dma_copy(
    dst, src, oob_mode=_oob_mode.error, dge_mode=_dge_mode.unknown, engine=_engine.unknown, name=None, **kw
) -> None:
    """dst = src (equal element counts, logical row-major order); casts via fp32 unless dtypes match."""
    with Instr("dma_copy", "dma") as ins:
        reject_kwargs(ins, kw, _COMPAT_02_KWARGS)
        oob = enum_arg(ins, oob_mode, _oob_mode, "oob_mode")
        dge = enum_arg(ins, dge_mode, _dge_mode, "dge_mode")
        eng = enum_arg(ins, engine, _engine, "engine")
        ins.tensor("dst", dst, buffers=("sbuf", "psum", "hbm"), check_start=False)
        if isinstance(src, NkiTensor) and src.st.buffer == "psum":
            ins.fail(
                "dma_copy cannot read PSUM (copy to SBUF with tensor_copy first)",
                "src",
                limit="sbuf/hbm",
                value="psum",
            )
        ins.tensor("src", src, buffers=("sbuf", "hbm"), check_start=False)
        if dge == _dge_mode.hwdge:
            ins.same_dtype("dst", dst, src, "hwdge DMA needs matching dtypes (use .view() to reinterpret)")
        ins.check(
            dst.size == src.size,
            "dst and src element counts must match",
            "dst",
            limit=src.size,
            value=dst.size,
        )
        same = dst.dtype == src.dtype
        queue = _queue(ins, dge, eng)
        nbytes = dst.size * ITEMSIZE[dst.dtype]
        ins.note(dma_bytes=nbytes, queue=queue, dge_mode=dge.name, elements=dst.size)

        src_s = _static_or_skip(ins, "src", src, oob)
        dst_s = _static_or_skip(ins, "dst", dst, oob)
        if src_s is None or dst_s is None:
            ins.note(skipped=True)
            return

        # Source values (flat, logical order) and their taint.
        if src_s.dyn is not None:
            rows, valid = _indirect_rows(ins, "src", src_s, oob)
            _indirect_access(ins, "src", "r", src_s, rows)
            vals = src_s._arr()[rows]
            st = src_s.st
            taint = (
                st.taint[rows * numerics.itemsize(src_s.dtype) // numerics.itemsize(st.dtype)]
                if st.taint is not None
                else None
            )
            valid_el = np.broadcast_to(valid[:, None], rows.shape)
        else:
            vals = ins.read_raw("src", src_s)
            taint = ins.last_taint
            valid_el = None
        if not same:
            vals = numerics.cast(numerics.to_f32(vals), dst.dtype)

        if dst_s.dyn is not None:
            _scatter(ins, dst_s, vals, taint, oob)
            return
        Pd, Fd = dst_s.pf()
        vals = vals.reshape(Pd, Fd)
        if taint is not None:
            taint = taint.reshape(Pd, Fd)
        if valid_el is not None and not valid_el.all():
            # oob_mode.skip: dropped rows leave dst unchanged.
            keep = valid_el.reshape(Pd, Fd)
            old = np.array(dst_s._nd(dst_s._arr())).reshape(Pd, Fd)
            vals = np.where(keep, vals, old)
            dst_taint = dst_s.st.taint
            if dst_taint is not None or taint is not None:
                old_t = (
                    np.asarray(dst_s.mask_get(dst_taint)).reshape(Pd, Fd)
                    if dst_taint is not None
                    else np.zeros((Pd, Fd), np.bool_)
                )
                new_t = taint if taint is not None else np.zeros((Pd, Fd), np.bool_)
                taint = np.where(keep, new_t, old_t)
        ins.write("dst", dst_s, vals, taint=taint, raw=True)


def _scatter(ins: Instr, dst: NkiTensor, vals: np.ndarray, taint, oob) -> None:
    rows, valid = _indirect_rows(ins, "dst", dst, oob)
    _indirect_access(ins, "dst", "w", dst, rows)
    vals = vals.reshape(rows.shape)
    st = dst.st
    arr = dst._arr()
    sel = rows[valid]
    arr[sel] = vals[valid].astype(arr.dtype, copy=False)
    st.written = True
    if ins.prog.strict:
        sidx = sel * numerics.itemsize(dst.dtype) // numerics.itemsize(st.dtype)
        t = taint.reshape(rows.shape)[valid] if taint is not None else None
        if t is not None and t.any():
            if st.is_input or st.buffer == "shared_hbm":
                ins.fail(
                    "scatters values derived from uninitialised memory to an HBM output",
                    "dst",
                    cls=NkiUninitializedError,
                )
            if st.taint is None:
                st.taint = np.zeros(st.nelem, np.bool_)
            st.taint[sidx] = t
        elif st.taint is not None:
            st.taint[sidx] = False


_DEFAULT_AXES = {2: (1, 0), 3: (2, 1, 0), 4: (3, 1, 2, 0)}


def dma_transpose(
    dst, src, axes=None, dge_mode=_dge_mode.unknown, oob_mode=_oob_mode.error, name=None, **kw
) -> None:
    """dst = src.transpose(axes) through the DMA engine (bit exact, dtypes must match)."""
    with Instr("dma_transpose", "dma") as ins:
        reject_kwargs(ins, kw)
        dge = enum_arg(ins, dge_mode, _dge_mode, "dge_mode")
        enum_arg(ins, oob_mode, _oob_mode, "oob_mode")
        ins.tensor("dst", dst, buffers=("sbuf",), check_start=False)
        ins.tensor("src", src, buffers=("sbuf", "hbm"), check_start=False)
        ins.same_dtype("dst", dst, src, "dma_transpose needs matching dtypes")
        nd = src.ndim
        axes = tuple(axes) if axes is not None else _DEFAULT_AXES.get(nd)
        if axes is None or sorted(axes) != list(range(nd)):
            ins.fail("invalid transpose axes", "axes", value=axes)
        want = tuple(src.shape[a] for a in axes)
        if tuple(dst.shape) != want:
            ins.fail("dst shape must equal the transposed src shape", "dst", limit=want, value=dst.shape)
        vals = ins.read_raw("src", src).reshape(src.shape).transpose(axes)
        taint = ins.last_taint
        P, F = dst.pf()
        if taint is not None:
            taint = taint.reshape(src.shape).transpose(axes).reshape(P, F)
        ins.note(
            dma_bytes=dst.size * numerics.itemsize(dst.dtype),
            queue=_queue(ins, dge, _engine.unknown),
            dge_mode=dge.name,
            elements=dst.size,
        )
        ins.write("dst", dst, vals.reshape(P, F), taint=taint, raw=True)
