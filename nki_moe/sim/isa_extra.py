"""nki.isa instructions added for the production kernels: dma_compute (DMA-engine sum, including the
read-modify-write scatter/gather with vector_offset) and nonzero_with_count (GpSimd).

Signatures and limits are the NKI 0.3 docstrings ([NKI-ISA]); `oob_mode=` of dma_compute is from the newer
docstrings ([ISA-NEW]), which nki-library kernels ([NKILIB]) are written against. Errors name the instruction,
the operand, the limit, the value and the kernel line, as everywhere in the emulator.
"""

from __future__ import annotations

import numpy as np

from . import alu, numerics
from .dma import _indirect_access, _indirect_rows, _queue, _scatter, enum_arg
from .enums import dge_mode as _dge_mode
from .enums import engine as _engine
from .enums import oob_mode as _oob_mode
from .instr import Instr, reject_kwargs
from .tensor import ITEMSIZE, NkiTensor

__all__ = ["dma_compute", "nonzero_with_count"]

_MAX_SRCS = 16  # [NKI-ISA] dma_compute: "The max number of source tensors in srcs is 16"
_DMA_BUFFERS = ("sbuf", "hbm")  # [NKI-ISA] dma_compute: srcs and dst "can be in HBM or SBUF"
_INT32 = (-(2**31), 2**31 - 1)
_GPSIMD_STRIDE = 16  # [NKI-ISA] nonzero_with_count: each GpSimd core uses the 0-th of its 16 partitions


# ---- dma_compute ---------------------------------------------------------------------------------------


def _same_view(a: NkiTensor, b: NkiTensor) -> bool:
    """a and b address the same elements the same way (for scatter: through the same index tile)."""
    if a.st is not b.st or a.dtype != b.dtype or a.off != b.off or tuple(a.pat) != tuple(b.pat):
        return False
    if a.dyn is None or b.dyn is None:
        return a.dyn is None and b.dyn is None
    (ka, ia, ra, na), (kb, ib, rb, nb) = a.dyn, b.dyn
    same_idx = ia is ib or (isinstance(ia, NkiTensor) and isinstance(ib, NkiTensor) and _same_view(ia, ib))
    return ka == kb and same_idx and (ra, na) == (rb, nb)


def _rows_taint(t: NkiTensor, rows: np.ndarray):
    """Uninitialised-data mask of the storage elements an indirect view selects (rows shape), or None."""
    st = t.st
    if st.taint is None:
        return None
    return st.taint[rows * numerics.itemsize(t.dtype) // numerics.itemsize(st.dtype)]


def _srcs_list(ins: Instr, srcs) -> list:
    if isinstance(srcs, NkiTensor) or not isinstance(srcs, (list, tuple)):
        ins.fail("srcs must be a list or tuple of tensors", "srcs", value=type(srcs).__name__)
    ins.check(
        1 <= len(srcs) <= _MAX_SRCS,
        "srcs must hold 1 to 16 tensors",
        "srcs",
        limit=f"1..{_MAX_SRCS}",
        value=len(srcs),
    )
    return list(srcs)


def _check_scales(ins: Instr, scales, n: int) -> None:
    """None, or one scale per source, each exactly 1.0 ([NKI-ISA]: 'Must be all 1.0 if provided')."""
    if scales is None:
        return
    if isinstance(scales, NkiTensor) or not isinstance(scales, (list, tuple)):
        ins.fail("scales must be None or a list of floats", "scales", value=type(scales).__name__)
    ins.check(len(scales) == n, "scales needs one value per source", "scales", limit=n, value=len(scales))
    for s in scales:
        ok = isinstance(s, (int, float, np.integer, np.floating)) and not isinstance(s, bool)
        if not ok or float(s) != 1.0:
            ins.fail("every scale must be 1.0 (other scales are not supported)", "scales", limit=1.0, value=s)


def dma_compute(
    dst,
    srcs,
    reduce_op,
    scales=None,
    unique_indices=True,
    oob_mode=_oob_mode.error,
    name=None,
    **kw,
) -> None:
    """dst = srcs[0] + srcs[1] + ... computed in fp32 by the DMA engine, cast to dst.dtype.

    Without vector_offset: 1..16 sources in SBUF/HBM, each with dst's element count (logical row-major order
    of each view, as dma_copy), static addresses only. With vector_offset (read-modify-write, exactly two
    sources, unique_indices=True, SWDGE):
      scatter  dst(HBM)[idx] += src(SBUF)   srcs = [dst (the same indirect view), src] in either order;
      gather   dst(SBUF) += src(HBM)[idx]   srcs = [src (indirect), dst (the same view)] in either order.
    oob_mode ([ISA-NEW]) applies to the indirect access: error (default) or skip (the row is left alone).
    """
    with Instr("dma_compute", "dma") as ins:
        reject_kwargs(ins, kw)
        if ins.prog.compat == "0.2" and isinstance(reduce_op, (list, tuple)) and scales is not None:
            reduce_op, scales = scales, reduce_op  # 0.2 positional order (dst, srcs, scales, reduce_op)
        try:
            op = alu.lookup(reduce_op)
        except TypeError as e:
            hint = " (the 0.2 order (dst, srcs, scales, reduce_op) became (dst, srcs, reduce_op, scales))"
            ins.fail(str(e) + (hint if isinstance(reduce_op, (list, tuple)) else ""), "reduce_op")
        if op.name != "add":
            ins.fail("only nl.add is supported", "reduce_op", limit="nl.add", value=f"nl.{op.name}")
        oob = enum_arg(ins, oob_mode, _oob_mode, "oob_mode")
        srcs = _srcs_list(ins, srcs)
        _check_scales(ins, scales, len(srcs))
        names = [f"srcs[{i}]" for i in range(len(srcs))]
        for operand, t in (("dst", dst), *zip(names, srcs)):
            if isinstance(t, NkiTensor) and t.st.buffer == "psum":
                ins.fail(
                    "dma_compute cannot access PSUM (copy to SBUF with tensor_copy first)",
                    operand,
                    limit="sbuf/hbm",
                    value="psum",
                )
            ins.tensor(operand, t, buffers=_DMA_BUFFERS, check_start=False)
            if t.dyn is not None and t.dyn[0] == "scalar":
                ins.fail(
                    "dma_compute needs compile-time addresses: scalar_offset views are not supported "
                    "(only vector_offset, in the read-modify-write modes)",
                    operand,
                )
        for operand, t in zip(names, srcs):
            ins.check(
                t.size == dst.size,
                "element count differs from dst",
                operand,
                limit=dst.size,
                value=t.size,
            )
        indirect = [i for i, t in enumerate(srcs) if t.dyn is not None]
        read_bytes = sum(t.size * ITEMSIZE[t.dtype] for t in srcs)
        ins.note(
            dma_bytes=read_bytes,
            read_bytes=read_bytes,
            write_bytes=dst.size * ITEMSIZE[dst.dtype],
            n_srcs=len(srcs),
            elements=dst.size,
        )
        if not indirect:
            if dst.dyn is not None:
                ins.fail(
                    "an indirect (vector_offset) dst needs the same view among srcs "
                    "(scatter read-modify-write: dst[idx] = dst[idx] + src)",
                    "dst",
                )
            ins.note(queue=_queue(ins, _dge_mode.none, _engine.unknown), dge_mode="none")
            _static_sum(ins, dst, srcs, names)
            return
        ins.check(
            len(srcs) == 2,
            "read-modify-write (vector_offset) needs exactly 2 srcs",
            "srcs",
            limit=2,
            value=len(srcs),
        )
        ins.check(
            unique_indices is True,
            "read-modify-write (vector_offset) needs unique_indices=True (non-unique indices are not "
            "supported)",
            "unique_indices",
            limit=True,
            value=unique_indices,
        )
        ins.check(
            len(indirect) == 1,
            "only one source can have a vector_offset",
            names[1],
            limit="one indirect source",
            value="two",
        )
        j = indirect[0]
        k = 1 - j
        ins.note(queue=_queue(ins, _dge_mode.swdge, _engine.unknown), dge_mode="swdge")
        if dst.dyn is not None:
            _scatter_rmw(ins, dst, srcs, names, j, k, oob)
        else:
            _gather_rmw(ins, dst, srcs, names, j, k, oob)


def _static_sum(ins: Instr, dst: NkiTensor, srcs: list, names: list) -> None:
    """Element-wise fp32 sum of the sources in logical order, left to right."""
    acc = None
    taint = None
    for operand, t in zip(names, srcs):
        v = ins.read(operand, t).reshape(-1)
        acc = np.array(v, dtype=np.float32) if acc is None else acc + v
        if ins.last_taint is not None:
            m = ins.last_taint.reshape(-1)
            taint = m.copy() if taint is None else taint | m
    P, F = dst.pf()
    ins.write("dst", dst, acc.reshape(P, F), taint=None if taint is None else taint.reshape(P, F))


def _scatter_rmw(ins: Instr, dst: NkiTensor, srcs: list, names: list, j: int, k: int, oob) -> None:
    """dst(HBM)[idx] = dst(HBM)[idx] + srcs[k](SBUF); srcs[j] is dst's own indirect view."""
    if not _same_view(srcs[j], dst):
        ins.fail(
            "scatter read-modify-write: the indirect source must be the dst view itself "
            "(dst[idx] = dst[idx] + src)",
            names[j],
        )
    ins.tensor(names[k], srcs[k], buffers=("sbuf",), check_start=False)
    add = ins.read(names[k], srcs[k])
    add_taint = ins.last_taint
    rows, valid = _indirect_rows(ins, names[j], srcs[j], oob)
    base = rows[valid, 0]
    if base.size != np.unique(base).size:
        vals, first, counts = np.unique(base, return_index=True, return_counts=True)
        dup = int(vals[np.argmax(counts > 1)])
        at = np.flatnonzero(valid)[base == dup][:2]
        ins.fail(
            "unique_indices=True, but the scatter indices repeat (a read-modify-write scatter with repeated "
            "indices loses updates)",
            "unique_indices",
            limit="unique indices",
            value=f"rows {int(at[0])} and {int(at[1])} address the same element {dup}",
        )
    _indirect_access(ins, names[j], "r", dst, rows)
    old = numerics.to_f32(dst._arr()[rows])
    new = numerics.cast(old + add.reshape(rows.shape), dst.dtype)
    taint = _rows_taint(dst, rows)
    if add_taint is not None:
        m = add_taint.reshape(rows.shape)
        taint = m if taint is None else taint | m
    _scatter(ins, dst, new, taint, oob)


def _gather_rmw(ins: Instr, dst: NkiTensor, srcs: list, names: list, j: int, k: int, oob) -> None:
    """dst(SBUF) = dst(SBUF) + srcs[j](HBM)[idx]; srcs[k] is the dst view itself."""
    ins.tensor("dst", dst, buffers=("sbuf",), check_start=False)
    if not _same_view(srcs[k], dst):
        ins.fail(
            "gather read-modify-write: the other source must be the dst view itself (dst = dst + src[idx])",
            names[k],
        )
    src = srcs[j]
    rows, valid = _indirect_rows(ins, names[j], src, oob)
    _indirect_access(ins, names[j], "r", src, rows)
    P, F = dst.pf()
    cur = ins.read(names[k], dst)
    cur_taint = ins.last_taint
    got = numerics.to_f32(src._arr()[rows])
    keep = np.broadcast_to(valid[:, None], rows.shape).reshape(P, F)  # oob_mode.skip: row left alone
    out = np.where(keep, cur + got.reshape(P, F), cur)
    taint = _rows_taint(src, rows)
    taint = None if taint is None else taint.reshape(P, F) & keep
    if cur_taint is not None:
        taint = cur_taint if taint is None else taint | cur_taint
    ins.write("dst", dst, out, taint=taint)


# ---- nonzero_with_count ----------------------------------------------------------------------------------


def _int32_imm(ins: Instr, operand: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        ins.fail("must be an int32 immediate", operand, limit="int32", value=v)
    if not _INT32[0] <= int(v) <= _INT32[1]:
        ins.fail("out of int32 range", operand, limit=f"[{_INT32[0]}, {_INT32[1]}]", value=int(v))
    return int(v)


def _row(t: NkiTensor, r: int) -> NkiTensor:
    """The one-partition view of row r of an on-chip view."""
    (step, _), rest = t.pat[0], tuple(t.pat[1:])
    return NkiTensor(t.st, t.dtype, ((step, 1),) + rest, t.off + r * step)


def nonzero_with_count(dst, src, index_offset=0, padding_val=-1, name=None, **kw) -> None:
    """Per GpSimd core (rows 0, 16, ..., 112 of the tiles): src's nonzero indices + index_offset, then
    padding_val up to src's length, then the count; the other rows of dst are left unchanged.

    src (P, F) float32/int32 and dst (P, F + 1) int32, both SBUF (elements per partition counted over all
    free dims). NC-v3+. Rows are relative to the tile: the start-partition rule puts every tile's first row
    on a multiple of 16, so they are also the cores' 0-th partitions. A float -0.0 counts as zero, NaN as
    nonzero (IEEE `!= 0`).
    """
    with Instr("nonzero_with_count", "pool") as ins:
        reject_kwargs(ins, kw)
        ins.needs_nc(3, "nonzero_with_count needs NeuronCore-v3+; the target is {target}")
        ins.tensors(("sbuf",), dst=dst, src=src)
        ins.dtype_in("src", src, ("float32", "int32"), "src must be float32 or int32")
        ins.dtype_in("dst", dst, ("int32",), "dst must be int32")
        offset = _int32_imm(ins, "index_offset", index_offset)
        pad = _int32_imm(ins, "padding_val", padding_val)
        P, F = src.pf()
        ins.same_shape("src", src, "dst", dst, elems=None)
        ins.check(
            dst.pf()[1] == F + 1,
            "dst needs exactly one more element per partition than src (the count)",
            "dst",
            limit=F + 1,
            value=dst.pf()[1],
        )
        ins.note(elements=F, cores=len(range(0, P, _GPSIMD_STRIDE)))
        for r in range(0, P, _GPSIMD_STRIDE):
            x = ins.read_raw("src", _row(src, r)).reshape(-1)
            tainted = ins.last_taint is not None
            nz = np.flatnonzero(x != 0)
            out = np.full(F + 1, pad, np.int64)
            out[: nz.size] = nz + offset
            out[F] = nz.size
            # int32 wrap-around of index + offset, as 32-bit integer arithmetic does
            ins.write(
                "dst",
                _row(dst, r),
                out.astype(np.int32)[None, :],
                taint=np.ones((1, 1), np.bool_) if tainted else None,
                raw=True,
            )
