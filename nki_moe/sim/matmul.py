"""Tensor Engine instructions: nc_matmul (fp32 accumulation, PSUM accumulate rules) and nc_transpose."""

from __future__ import annotations

import warnings

import numpy as np

from . import numerics
from .dma import enum_arg
from .enums import engine as _engine
from .enums import matmul_perf_mode as _perf
from .instr import Instr, reject_kwargs, scan_due

_MM_IN = ("float8_e4m3", "float8_e4m3fn", "float8_e5m2", "bfloat16", "float16", "tfloat32", "float32")
_FP32ISH = ("float32", "tfloat32")
_FP8 = ("float8_e4m3", "float8_e4m3fn", "float8_e5m2")
_FP8_E4M3_PAIR = {"float8_e4m3", "float8_e4m3fn"}  # never mixed in one matmul ([ISA-NEW] nc_matmul)


def _check_tiling(ins: Instr, tile_position, tile_size, K: int, M: int) -> None:
    tp, ts = tuple(tile_position or ()), tuple(tile_size or ())
    if not tp and not ts:
        return
    if len(tp) != 2 or len(ts) != 2:
        ins.fail(
            "tile_position and tile_size must both be given as (row, col) pairs",
            "tile_position",
            value=(tp, ts),
        )
    sizes = (128, 64, 32) if ins.prog.nc_version >= 3 else (128, 64)
    for what, size, pos in (("row", ts[0], tp[0]), ("col", ts[1], tp[1])):
        if size not in sizes:
            ins.fail(f"tile_size {what} must be one of {sizes}", "tile_size", limit=sizes, value=size)
        if pos % size or not 0 <= pos <= 128 - size:
            ins.fail(
                f"tile_position {what} must be a multiple of the tile size inside the 128x128 array",
                "tile_position",
                limit=f"multiple of {size} in [0, {128 - size}]",
                value=pos,
            )
    if K > ts[0]:
        ins.fail("K (partitions) exceeds the row tile size", "stationary", limit=ts[0], value=K)
    if M > ts[1]:
        ins.fail("M (stationary free size) exceeds the column tile size", "stationary", limit=ts[1], value=M)


def nc_matmul(
    dst,
    stationary,
    moving,
    is_stationary_onezero=False,
    is_moving_onezero=False,
    is_transpose=False,
    accumulate=None,
    tile_position=(),
    tile_size=(),
    perf_mode=_perf.none,
    name=None,
    **kw,
) -> None:
    """dst[M, N] (+)= stationary[K, M]^T @ moving[K, N], fp32 accumulation in PSUM."""
    with Instr("nc_matmul", "pe") as ins:
        reject_kwargs(ins, kw)
        perf = enum_arg(ins, perf_mode, _perf, "perf_mode")
        ins.tensor("dst", dst, buffers=("psum",))
        ins.tensor("stationary", stationary, buffers=("sbuf",))
        ins.tensor("moving", moving, buffers=("sbuf",))
        prog = ins.prog
        sd, md, dd = stationary.dtype, moving.dtype, dst.dtype
        for op, d in (("stationary", sd), ("moving", md)):
            if d not in _MM_IN:
                ins.fail(
                    "matmul operands must be fp8/bf16/fp16/tf32/fp32", op, limit="/".join(_MM_IN), value=d
                )
        if (sd in _FP32ISH) != (md in _FP32ISH):
            ins.fail("an fp32/tf32 operand must be paired with fp32/tf32", "moving", limit=sd, value=md)
        if {sd, md} == _FP8_E4M3_PAIR:
            ins.fail(
                "float8_e4m3 (Neuron's legacy format) and float8_e4m3fn (OCP) operands cannot be mixed",
                "moving",
                limit=f"the stationary dtype {sd}",
                value=md,
            )
        Ks, Fs = stationary.pf()
        Km, Fm = moving.pf()
        double = perf == _perf.double_row
        if double:
            ins.needs_nc(3, "perf_mode=double_row needs NeuronCore-v3+", "perf_mode")
            if sd not in _FP8 or md not in _FP8:
                ins.fail("perf_mode=double_row needs fp8 operands", "stationary", limit="fp8", value=(sd, md))
            if is_transpose or tile_position:
                ins.fail("perf_mode=double_row cannot be combined with transpose or tiling", "perf_mode")
            for op, t in (("stationary", stationary), ("moving", moving)):
                if t.ndim < 3 or t.shape[1] != 2:
                    ins.fail(
                        "double_row operands are [K/2, 2, X] (the 2 is the first free dim)",
                        op,
                        limit="[K/2, 2, X]",
                        value=t.shape,
                    )
            M, N, K = Fs // 2, Fm // 2, 2 * Ks
        else:
            M, N, K = Fs, Fm, Ks
        if Ks != Km:
            ins.fail(
                "stationary and moving must have the same partition (contraction) size",
                "moving",
                limit=Ks,
                value=Km,
            )
        if Ks > 128:
            ins.fail("contraction dim K exceeds the PE array", "stationary", limit=128, value=Ks)
        if M > 128:
            ins.fail("stationary free size M exceeds the PE array", "stationary", limit=128, value=M)
        if dd == "float32":
            nmax = prog.tgt.matmul_n_fp32
        elif dd == "bfloat16" and prog.nc_version >= 4:
            nmax = prog.tgt.matmul_n_bf16
        elif is_transpose and dd in ("bfloat16", "float16") and numerics.itemsize(sd) == 2:
            nmax = prog.tgt.matmul_n_fp32
        else:
            ins.fail(
                "matmul dst must be fp32 (bf16 allowed on trn3, or for 2-byte transposes)",
                "dst",
                limit="float32" + ("/bfloat16" if prog.nc_version >= 4 else ""),
                value=dd,
            )
        if N > nmax:
            ins.fail("moving free size N exceeds the limit", "moving", limit=nmax, value=N)
        Md, Nd = dst.pf()
        if (Md, Nd) != (M, N):
            ins.fail(
                "dst must be [M, N] = [stationary free, moving free]", "dst", limit=(M, N), value=(Md, Nd)
            )
        lo, hi = dst.free_byte_range()
        bank = prog.tgt.psum_bank_bytes
        if prog.nc_version < 4 and lo // bank != (hi - 1) // bank:
            ins.fail(
                "matmul output must lie within one 2 KiB PSUM bank per partition",
                "dst",
                limit=f"bytes [{lo // bank * bank}, {lo // bank * bank + bank})",
                value=f"bytes [{lo}, {hi})",
            )
        _check_tiling(ins, tile_position, tile_size, Ks, M)

        if is_transpose:
            out, tr_taint = _pe_transpose_values(ins, stationary, moving, dst)
        else:
            s = ins.read("stationary", stationary)
            s_t = ins.last_taint
            m = ins.read("moving", moving)
            m_t = ins.last_taint
            if double:
                s = s.reshape(Ks, 2, M).reshape(K, M)
                m = m.reshape(Km, 2, N).reshape(K, N)
                s_t = s_t.reshape(K, M) if s_t is not None else None
                m_t = m_t.reshape(K, N) if m_t is not None else None
            out = s.T @ m

        st = dst.st
        # init: which dst elements a matmul has written (None = all of them). A PSUM tile that matmuls have
        # fully written (the K loop after its first step) needs no per-element mask work.
        init = None if st.mm_full else np.asarray(dst.mask_get(st.mminit)).reshape(M, N)
        if accumulate is None:
            acc = init
        elif accumulate:
            if init is not None and not init.all():
                warnings.warn(
                    f"{ins.location}: nc_matmul accumulate=True onto PSUM never written by a matmul "
                    "(undefined on hardware)",
                    stacklevel=3,
                )
            acc = None
        else:
            acc = np.zeros((M, N), np.bool_)
        acc_any = acc is None or bool(acc.any())
        acc_all = acc is None or (acc_any and bool(acc.all()))
        if acc_any and not is_transpose:
            old = dst._data().reshape(M, N)
            old = old if old.dtype == np.float32 else numerics.to_f32(old)
            out = np.add(old, out, out=out) if acc_all else np.where(acc, old + out, out)
        taint = None
        if is_transpose:
            taint = tr_taint
        elif prog.strict and (s_t is not None or m_t is not None or (st.taint is not None and acc_any)):
            taint = np.zeros((M, N), np.bool_)
            if s_t is not None:
                taint |= s_t.any(axis=0)[:, None]
            if m_t is not None:
                taint |= m_t.any(axis=0)[None, :]
            if st.taint is not None and acc_any:
                old_t = np.asarray(dst.mask_get(st.taint)).reshape(M, N)
                taint |= old_t if acc_all else old_t & acc
        ins.write("dst", dst, out, taint=taint, raw=is_transpose)
        if not st.mm_full:
            dst.mask_set(st.mminit, True)
            # Full once one write covers the tile, or once all of it was written piecewise (e.g. column by
            # column: scanned when the writes since the last scan add up to the tile's size).
            st.mm_full = dst.covers_storage() or (scan_due(st, M * N, "mminit") and bool(st.mminit.all()))
        ins.note(
            K=K,
            M=M,
            N=N,
            is_transpose=bool(is_transpose),
            perf_mode=perf.name,
            dtype=sd,
            accumulate=accumulate,
        )


def _pe_transpose_values(ins: Instr, stationary, moving, dst):
    """is_transpose: moving must be a 0/1 selection (identity) matrix; result copies stationary bits."""
    if dst.dtype not in (stationary.dtype, "float32"):
        ins.fail(
            "transpose dst dtype must equal the stationary dtype (or fp32)",
            "dst",
            limit=stationary.dtype,
            value=dst.dtype,
        )
    sel = ins.read("moving", moving)
    if not np.isin(sel, (0.0, 1.0)).all() or (sel.sum(axis=0) > 1).any():
        ins.fail("is_transpose=True needs moving to be an identity (0/1 selection) matrix", "moving")
    s_raw = ins.read_raw("stationary", stationary)
    s_t = ins.last_taint
    k_of_n = sel.argmax(axis=0)
    out = s_raw[k_of_n, :].T  # [M, N]
    taint = None if s_t is None else s_t[k_of_n, :].T
    empty = sel.sum(axis=0) == 0
    if dst.dtype != stationary.dtype:
        out = numerics.cast(numerics.to_f32(out), dst.dtype)
    if empty.any():
        out = out.copy()
        out[:, empty] = 0
    return out, taint


def nc_transpose(dst, data, engine=_engine.unknown, name=None, **kw) -> None:
    """dst[F, P] = data[P, F]: Tensor Engine (<= 128x128, SBUF -> PSUM) or Vector (<= 32x32), bit exact."""
    with Instr("nc_transpose", "pe") as ins:
        reject_kwargs(ins, kw)
        eng = enum_arg(ins, engine, _engine, "engine")
        if eng == _engine.unknown:
            eng = (
                _engine.tensor
                if getattr(dst, "st", None) is not None and dst.st.buffer == "psum"
                else _engine.vector
            )
        if eng not in (_engine.tensor, _engine.vector):
            ins.fail("nc_transpose runs on the Tensor or Vector engine", "engine", value=eng.name)
        ins.engine_from(eng, "pe")
        if eng == _engine.tensor:
            ins.tensor("dst", dst, buffers=("psum",))
            ins.tensor("data", data, buffers=("sbuf",))
            limit = 128
        else:
            ins.tensors(dst=dst, data=data)
            limit = 32
        ins.same_dtype("dst", dst, data, "nc_transpose needs dst.dtype == data.dtype")
        P, F = data.pf()
        if P > limit or F > limit:
            ins.fail(
                f"transpose input exceeds {limit}x{limit} on this engine",
                "data",
                limit=(limit, limit),
                value=(P, F),
            )
        if dst.pf() != (F, P):
            ins.fail("dst must be the transposed shape", "dst", limit=(F, P), value=dst.shape)
        # Gathered first: a transposing copy straight from a strided SBUF slice reads one element per
        # partition row per step (~6x slower at [128, 128] out of a [128, 2048] tile); same bits.
        vals = np.ascontiguousarray(ins.read_raw("data", data))
        t = ins.last_taint
        ins.write("dst", dst, vals.T, taint=None if t is None else t.T, raw=True)
        if eng == _engine.tensor:
            ins.note(K=P, M=F, N=P, is_transpose=True)
