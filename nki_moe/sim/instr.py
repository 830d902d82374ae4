"""`with Instr(opcode, engine) as I:` — the frame every ISA instruction body runs in.

Instr validates operands, moves data between tensor views and (P, F) NumPy arrays, propagates the
uninitialised-data taint, checks affine_range independence and appends one trace record on success.
"""

from __future__ import annotations

import sys

import numpy as np

from . import numerics, runtime
from .enums import ENGINE_NAMES, engine
from .errors import (
    SIM_DIR,
    NkiDependencyError,
    NkiKwargError,
    NkiUninitializedError,
    NkiValidationError,
)
from .tensor import ITEMSIZE, ON_CHIP, NkiTensor
from .trace import Access, Record

_tls = runtime._tls
_HBM = ("private_hbm", "shared_hbm")


_BUF_CACHE: dict = {}
_ON_CHIP_ARG = ("sbuf", "psum")  # Instr.tensor's default buffers (identity-checked: no lookup needed)
_F32 = np.dtype(np.float32)
_WLOG_MAX = 64  # bound on deferred affine write stamps per storage (then they are applied)


def _expand_buffers(buffers) -> tuple:
    got = _BUF_CACHE.get(buffers)
    if got is not None:
        return got
    out = []
    for b in buffers:
        b = str(b)
        out.extend(_HBM if b == "hbm" else (b,))
    _BUF_CACHE[buffers] = tuple(out)
    return tuple(out)


def _elem_span(st, dtype: str, pat: tuple, off: int) -> tuple[int, int]:
    """[lo, hi) storage elements a view (dtype, pattern, offset) of `st` can touch (its bounding range)."""
    lo = off + sum(min(0, s * (n - 1)) for s, n in pat)
    hi = off + sum(max(0, s * (n - 1)) for s, n in pat) + 1
    a, b = ITEMSIZE[dtype], ITEMSIZE[st.dtype]
    return lo * a // b, -(-hi * a // b)


def scan_due(st, n: int, mask: str) -> bool:
    """Whether a whole-storage scan of `mask` ('taint' or 'mminit') is due after a write of n elements.

    True once the writes since the last scan add up to the storage's element count: a mask can only have
    become uniform after that many, and the scans cost at most one mask byte per element written.
    """
    if n >= st.nelem:
        return True
    if mask == "taint":
        d = st.debt_taint + n
        due = d >= st.nelem
        st.debt_taint = 0 if due else d
    else:
        d = st.debt_mminit + n
        due = d >= st.nelem
        st.debt_mminit = 0 if due else d
    return due


def _drop_clear_taint(st, n: int) -> None:
    """Drop a storage's taint mask once it is all clear: None means the same, and spares every later read
    of the storage a mask scan. A pending HBM fill (Storage.unfilled) with an all-clear mask has nothing
    left to fill: materialize() would drop both the same way."""
    if scan_due(st, n, "taint") and not st.taint.any():
        st.taint = None
        st.unfilled = False


def _overlaps(span: tuple[int, int], lo: int, hi: int) -> bool:
    return span[0] < hi and lo < span[1]


def reject_kwargs(ins: Instr, kw: dict, compat_ok: tuple = ()) -> None:
    """Unknown keyword arguments are errors (NKI 2.28+); `compat_ok` names 0.2 spellings still accepted in
    0.2-compat mode. Every instruction rejects them through here, so the error type is the same everywhere."""
    for k in kw:
        if k in compat_ok and ins.prog.compat == "0.2":
            continue
        ins.fail(f"{ins.opcode}() got an unexpected keyword argument '{k}'", k, cls=NkiKwargError)


class Instr:
    """Context of one executing instruction (see docs/emulator-internals.md)."""

    __slots__ = (
        "opcode",
        "engine",
        "prog",
        "file",
        "line",
        "seq",
        "accesses",
        "info",
        "_taints",
        "last_taint",
    )

    def __init__(self, opcode: str, engine: str):
        self.opcode = opcode
        self.engine = engine
        prog = getattr(_tls, "prog", None)
        f = sys._getframe(1)
        while f is not None and f.f_code.co_filename.startswith(SIM_DIR):
            f = f.f_back
        self.file, self.line = (f.f_code.co_filename, f.f_lineno) if f is not None else ("<unknown>", 0)
        if prog is None:
            raise NkiValidationError(
                "ISA instructions can only run inside a kernel (call the @nki.jit function or "
                "nki_moe.sim.run)",
                instruction=opcode,
                location=self.location,
            )
        self.prog = prog
        self.seq = len(prog.trace.records)
        self.accesses: list[Access] = []
        self.info: dict = {}
        pending = getattr(prog, "pending_reg_reads", None)
        if pending:  # dynamic-loop bounds read by the loop's first instruction
            self.info["reg_reads"] = list(pending)
            pending.clear()
        self._taints: list = []
        self.last_taint = None  # taint mask (P, F) of the last read, or None when clean

    def __enter__(self) -> Instr:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.prog.trace.records.append(
                Record(
                    self.opcode, self.engine, self.accesses, self.file, self.line, self.prog.pid, self.info
                )
            )
        return False

    # ---- context -------------------------------------------------------------------------------------
    @property
    def state(self) -> runtime.Program:
        return self.prog

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"

    def note(self, **fields) -> None:
        self.info.update(fields)

    def reg_read(self, reg) -> None:
        """Note that this instruction reads sequencer register ``reg`` (cost-model dependency)."""
        rid = getattr(reg, "rid", None)
        if rid is not None:
            self.info.setdefault("reg_reads", []).append(rid)

    def reg_write(self, reg) -> None:
        """Note that this instruction writes sequencer register ``reg`` (cost-model dependency)."""
        rid = getattr(reg, "rid", None)
        if rid is not None:
            self.info.setdefault("reg_writes", []).append(rid)

    def fail(
        self, message: str, operand: str | None = None, limit=None, value=None, cls: type = NkiValidationError
    ):
        raise cls(
            message,
            instruction=self.opcode,
            operand=operand,
            limit=limit,
            value=value,
            location=self.location,
        )

    def engine_from(self, arg, default: str) -> str:
        """Map an nisa.engine argument (unknown/None -> default) to an engine name and adopt it."""
        if arg is None or arg == engine.unknown:
            name = default
        elif isinstance(arg, engine):
            name = ENGINE_NAMES[arg]
        elif isinstance(arg, int) and self.prog.compat == "0.2":
            name = ENGINE_NAMES.get(engine(arg), default)
        else:
            self.fail("engine must be an nisa.engine value", "engine", value=arg)
        self.engine = name
        return name

    # ---- operands ------------------------------------------------------------------------------------
    def tensor(self, operand: str, value, buffers=_ON_CHIP_ARG, check_start: bool = True) -> NkiTensor:
        """Validate a tensor operand: type, buffer, partitions <= 128, start-partition rule."""
        if not isinstance(value, NkiTensor):
            self.fail(f"expected an NKI tensor, got {type(value).__name__}", operand)
        buf = value.st.buffer
        allowed = ON_CHIP if buffers is _ON_CHIP_ARG else _expand_buffers(buffers)
        if buf not in allowed:
            self.fail(f"tensor in {buf} is not allowed here", operand, limit="/".join(allowed), value=buf)
        if value.dyn is not None and value.dyn[0] == "vector" and self.engine != "dma":
            self.fail("vector_offset (indirect) views are only accepted by DMA instructions", operand)
        if buf in ON_CHIP:
            P = value.pat[0][1]
            if P > 128:
                self.fail("partition dimension exceeds maximum", operand, limit=128, value=P)
            if check_start and value.dyn is None:
                if value.oob is not None:
                    value._use_check()
                st = value.st  # p0 = value.p_start(), inlined (every operand of every instruction)
                p0 = value.off // (st.F if value.dtype == st.dtype else value.part_step())
                ok = p0 == 0 or (P <= 64 and (p0 == 64 or (P <= 32 and p0 in (32, 96))))
                if not ok:
                    allowed_starts = "0" if P > 64 else ("0/64" if P > 32 else "0/32/64/96")
                    self.fail(
                        f"a {P}-partition access must start at partition {allowed_starts}",
                        operand,
                        limit=allowed_starts,
                        value=p0,
                    )
        return value

    def tensors(self, buffers=_ON_CHIP_ARG, check_start: bool = True, **operands: NkiTensor) -> None:
        """`tensor()` for each keyword operand, in order (`buffers`/`check_start` apply to all)."""
        for name, t in operands.items():
            self.tensor(name, t, buffers, check_start)

    # ---- operand checks: each names the operand, the limit and the offending value -------------------
    def check(
        self,
        ok: bool,
        message: str,
        operand: str | None = None,
        limit=None,
        value=None,
        cls: type = NkiValidationError,
    ) -> None:
        """Fail unless ok. The arguments are evaluated first: keep them cheap (else test with `if`)."""
        if not ok:
            self.fail(message, operand, limit, value, cls)

    def same_shape(self, ref_name: str, ref: NkiTensor, name: str, t: NkiTensor, elems=True) -> None:
        """Same partition count as the reference operand (no implicit partition broadcast) and elements per
        partition: the same (elems=True), any (None), or exactly `elems` (an int)."""
        pr, fr = ref.pf()
        p, f = t.pf()
        if p != pr:
            self.fail(
                f"partition count differs from '{ref_name}' (no implicit partition broadcast)",
                name,
                limit=pr,
                value=p,
            )
        if elems is True:
            if f != fr:
                self.fail(f"elements per partition differ from '{ref_name}'", name, limit=fr, value=f)
        elif elems is not None:
            self.elems(name, t, elems)

    def elems(self, name: str, t: NkiTensor, want: int) -> None:
        """Exactly `want` elements per partition."""
        f = t.pf()[1]
        if f != want:
            self.fail("wrong number of elements per partition", name, limit=want, value=f)

    def column(self, name: str, t: NkiTensor, P: int, message: str) -> None:
        """A (P, 1) per-partition tile."""
        p, f = t.pf()
        if p != P or f != 1:
            self.fail(message, name, limit=(P, 1), value=t.shape)

    def dtype_in(self, name: str, t: NkiTensor, allowed: tuple, message: str) -> None:
        """t.dtype is one of `allowed` (the limit shown is 'a/b/c')."""
        if t.dtype not in allowed:
            self.fail(message, name, limit="/".join(allowed), value=t.dtype)

    def same_dtype(self, name: str, t: NkiTensor, ref: NkiTensor, message: str) -> None:
        """No cast: t.dtype must equal ref.dtype."""
        if t.dtype != ref.dtype:
            self.fail(message, name, limit=ref.dtype, value=t.dtype)

    def not_both_psum(self, a_name: str, a: NkiTensor, b_name: str, b) -> None:
        """Two PSUM inputs are illegal (one PSUM read port); b may be a scalar."""
        if isinstance(b, NkiTensor) and a.st.buffer == "psum" and b.st.buffer == "psum":
            self.fail(
                f"'{a_name}' and '{b_name}' cannot both be in PSUM",
                b_name,
                limit="at most one PSUM input",
                value="psum",
            )

    def needs_nc(self, version: int, message: str, operand: str | None = None) -> None:
        """The target must be NeuronCore-v`version`+ (3: trn2/trn3, 4: trn3); `{target}` in the message is
        filled in."""
        prog = self.prog
        if prog.nc_version < version:
            self.fail(
                message.format(target=prog.target),
                operand,
                limit="trn3" if version >= 4 else "trn2/trn3",
                value=prog.target,
            )

    def scalar_or_vector(self, operand: str, v, P: int):
        """A compile-time scalar (-> float) or a (P, 1) SBUF/PSUM tensor (-> float32 (P, 1) array)."""
        if isinstance(v, NkiTensor):
            self.tensor(operand, v)
            self.column(operand, v, P, "expected a scalar or a (P, 1) per-partition vector")
            return self.read(operand, v)
        if isinstance(v, (bool, np.bool_)):
            return float(v)
        if isinstance(v, (int, float, np.integer, np.floating)):
            return float(v)
        self.fail(f"expected a scalar or a (P, 1) tensor, got {type(v).__name__}", operand)

    def scalar_value(self, operand: str, src) -> int:
        """Runtime integer from a register, int, or 1-element tensor (an address: must be initialised)."""
        if isinstance(src, (int, np.integer)):
            return int(src)
        if hasattr(src, "_nki_register_value"):
            self.reg_read(src)
            return int(src._nki_register_value())
        if isinstance(src, NkiTensor):
            if src.size != 1:
                self.fail(
                    "scalar_offset tensor must hold exactly one element", operand, limit=1, value=src.shape
                )
            # Recorded as its own operand: the cost model must not take this 4-byte read for the transfer.
            raw = self.read_raw(f"{operand}.scalar_offset", src)
            if self.last_taint is not None:
                self.fail(
                    "index/address computed from uninitialised memory", operand, cls=NkiUninitializedError
                )
            return int(raw.reshape(-1)[0])
        self.fail(f"unsupported dynamic offset {type(src).__name__}", operand)

    def resolve(self, operand: str, t: NkiTensor) -> NkiTensor:
        """Turn a scalar_offset view into a static view (bounds-checked)."""
        kind, src, mult, nrows = t.dyn
        if kind != "scalar":
            self.fail("vector_offset views are only accepted by DMA instructions", operand)
        val = self.scalar_value(operand, src)
        out = NkiTensor(t.st, t.dtype, t.pat, t.off + val * mult)
        total = t.st.raw.nbytes // numerics.itemsize(t.dtype)
        lo = out.off + sum(min(0, s * (n - 1)) for s, n in out.pat)
        hi = out.off + sum(max(0, s * (n - 1)) for s, n in out.pat)
        if lo < 0 or hi >= total:
            self.fail(
                "dynamic offset moves the access outside its tensor",
                operand,
                limit=f"elements [0, {total - 1}]",
                value=f"offset {val} -> [{lo}, {hi}]",
            )
        return out

    # ---- data movement ------------------------------------------------------------------------------
    def _access(self, operand: str, t: NkiTensor, mode: str) -> NkiTensor:
        if t.dyn is not None:
            t = self.resolve(operand, t)
        st = t.st
        if st.buffer == "psum" and self.engine == "pool":
            self.fail("GpSimd cannot access PSUM", operand, limit="sbuf", value="psum")
        rec = st.rec
        if rec is not None and not rec.live:
            self.prog.revive(rec, self.opcode, mode)
        dt = t.dtype
        F = st.F
        self.accesses.append(
            Access(
                operand,
                mode,
                st.buffer,
                dt,
                ITEMSIZE[dt],
                t.off,
                t.pat,
                (F if dt == st.dtype else t.part_step()) if F else 0,
                st.serial,
            )
        )
        return t

    def _read_checks(self, operand: str, t: NkiTensor, P: int, F: int) -> None:
        st = t.st
        if st.fresh or st.unfilled:
            st.materialize()
        self.last_taint = None
        if st.taint is not None:
            m = t.mask_get(st.taint)
            if m.any():
                m = np.array(m, dtype=np.bool_).reshape(P, F)
                self._taints.append(m)
                self.last_taint = m
        prog = self.prog
        if prog.affine and (st.stamp is not None or st.wlog):
            stamps = None
            for loop in prog.affine:
                # iter_serial is the serial of the last allocation before the iteration began, so a
                # storage allocated before it has serial <= iter_serial (inside it: >).
                if loop.iter <= 0 or st.serial > loop.iter_serial:
                    continue
                if stamps is None:
                    if st.wlog:
                        st.flush_stamps()
                    stamps = np.asarray(t.mask_get(st.stamp))
                bad = (stamps >= loop.loop_seq) & (stamps < loop.iter_seq)
                if bad.any():
                    writer = prog.trace.records[int(stamps[bad].flat[0])]
                    self.fail(
                        f"reads data written by an earlier iteration of the same affine_range "
                        f"(written by {writer.opcode} at {writer.location}; iteration {loop.iter} reads it). "
                        "Use sequential_range for loop-carried data, or allocate the tile inside the loop",
                        operand,
                        cls=NkiDependencyError,
                    )

    def _check_write_after_write(self, operand: str, t: NkiTensor) -> None:
        """An HBM write in iteration i > 0 of an affine_range to elements an earlier iteration wrote.

        Which iteration writes last would decide the output, so the iterations are not independent. Only
        HBM: on-chip tiles hoisted out of the loop are legally rewritten each iteration (scratch), and
        matmul accumulation lives in PSUM.
        """
        st = t.st
        prog = self.prog
        loops = [lp for lp in prog.affine if lp.iter > 0 and st.serial <= lp.iter_serial]
        if not loops or (st.stamp is None and not st.wlog):
            return
        if st.stamp is None:  # cheap pre-filter on the logged writes' element ranges
            lo, hi = _elem_span(st, t.dtype, t.pat, t.off)
            first = min(lp.loop_seq for lp in loops)
            if not any(
                seq >= first and _overlaps(_elem_span(st, dt, pat, off), lo, hi)
                for seq, dt, pat, off in st.wlog
            ):
                return
        st.flush_stamps()
        stamps = np.asarray(t.mask_get(st.stamp))
        for lp in loops:
            bad = (stamps >= lp.loop_seq) & (stamps < lp.iter_seq)
            if bad.any():
                writer = prog.trace.records[int(stamps[bad].flat[0])]
                self.fail(
                    f"writes {int(bad.sum())} element(s) that an earlier iteration of the same affine_range "
                    f"already wrote (written by {writer.opcode} at {writer.location}; iteration {lp.iter} "
                    "writes them again), so the result depends on the iteration order. Write each "
                    "iteration's result to its own location, or use sequential_range",
                    operand,
                    cls=NkiDependencyError,
                )

    def _values(self, t: NkiTensor, P: int, F: int) -> np.ndarray:
        # A read-only (P, F) view of the storage when the layout allows (no copy), else a copy. Read-only
        # so an instruction's math can never modify its source operand in place.
        a = t._data().reshape(P, F)
        a.flags.writeable = False
        return a

    def read_raw(self, operand: str, t: NkiTensor) -> np.ndarray:
        """(P, F) read-only values of the view in its storage dtype (bit-exact; may alias the storage)."""
        t = self._access(operand, t, "r")
        P, F = t.pf()
        st = t.st
        if st.fresh or st.unfilled or st.taint is not None or self.prog.affine:
            self._read_checks(operand, t, P, F)
        else:  # nothing pending, no taint mask, outside affine loops: _read_checks would only clear this
            self.last_taint = None
        return self._values(t, P, F)

    def read(self, operand: str, t: NkiTensor) -> np.ndarray:
        """(P, F) float32 values of the view (read-only; float32 storage is not copied)."""
        t = self._access(operand, t, "r")
        P, F = t.pf()
        st = t.st
        if st.fresh or st.unfilled or st.taint is not None or self.prog.affine:
            self._read_checks(operand, t, P, F)
        else:  # as in read_raw
            self.last_taint = None
        a = self._values(t, P, F)
        return a if a.dtype == _F32 else numerics.to_f32(a)

    def _out_taint(self, taint, P: int, F: int):
        if taint is None:
            return None
        if isinstance(taint, np.ndarray):
            return np.broadcast_to(taint, (P, F)) if taint.any() else None
        if not self._taints:
            return None
        if taint == "elementwise":
            out = np.zeros((P, F), np.bool_)
            for m in self._taints:
                if m.shape == (P, F):
                    out |= m
                elif m.shape[0] == P:
                    out |= m.any(axis=1, keepdims=True)
                else:
                    out |= m.any()
            return out if out.any() else None
        rows = np.zeros((P, 1), np.bool_)
        for m in self._taints:
            if m.shape[0] == P:
                rows |= m.any(axis=1, keepdims=True)
            else:
                rows |= m.any()
        return np.broadcast_to(rows, (P, F)) if rows.any() else None

    def write(
        self, operand: str, t: NkiTensor, values, taint="partition", raw: bool = False, owned: bool = False
    ) -> None:
        """Store (P, F) (or broadcastable) values into the view, casting to its dtype unless raw.

        owned=True: the caller hands `values` over (a fresh result it will not touch again); a full-tile
        write may then keep that array as the tile's buffer instead of copying it.
        """
        t = self._access(operand, t, "w")
        st = t.st
        P, F = t.pf()
        covers = None  # t.covers_storage(), computed when first needed
        if st.fresh:
            covers = t.covers_storage()
            if covers:
                st.fresh = False  # every element is overwritten: the poison could never be observed
            elif not st.defer_fill():
                st.materialize()
        nd = t._data(write=True)
        vals = values if isinstance(values, np.ndarray) else np.asarray(values)
        sdt = nd.dtype
        if raw:
            if vals.dtype != sdt:
                if vals.dtype.itemsize == sdt.itemsize:
                    vals = vals.view(sdt)
                else:
                    vals, owned = vals.astype(sdt), True
        elif vals.dtype != _F32 or t.dtype != "float32" or sdt != _F32:
            # float32 -> float32 stores need no rounding; everything else goes through the hardware cast,
            # whose result is a new array.
            vals, owned = numerics.cast(vals, t.dtype), True
            if vals.dtype != sdt:
                vals = vals.astype(sdt)
        if owned and covers is None:
            covers = t.covers_storage()
        if not (owned and covers and t.dtype == st.dtype and st.adopt(vals)):
            if vals.size == nd.size:
                nd[...] = vals.reshape(nd.shape)
            else:
                full = np.broadcast_to(vals.reshape(P, -1) if vals.ndim else vals, (P, F))
                nd[...] = full.reshape(nd.shape)
        st.written = True
        prog = self.prog
        if prog.strict:
            # No mask argument and no tainted read so far: nothing to derive (the common, clean case).
            out = (
                None
                if taint is None or (type(taint) is str and not self._taints)
                else self._out_taint(taint, P, F)
            )
            if out is None:
                if st.taint is not None:
                    t.mask_set(st.taint, False)
                    _drop_clear_taint(st, P * F)
            else:
                if st.buffer in _HBM and (st.is_input or st.buffer == "shared_hbm"):
                    bad = np.argwhere(out)[0]
                    self.fail(
                        f"stores values derived from uninitialised memory to HBM output "
                        f"({int(out.sum())} of {P * F} elements, first at row {bad[0]}, col {bad[1]})",
                        operand,
                        cls=NkiUninitializedError,
                    )
                if st.taint is None:
                    st.taint = np.zeros(st.nelem, np.bool_)
                t.mask_set(st.taint, out.reshape(nd.shape))
            if prog.affine:
                if st.buffer in _HBM:
                    self._check_write_after_write(operand, t)
                # Every storage is logged, also tiles allocated inside the iteration: one kept in a Python
                # list and read by a later iteration is a loop-carried value too. A write covering the
                # whole storage supersedes the earlier entries.
                if st.wlog and t.covers_storage():
                    st.wlog.clear()
                st.wlog.append((self.seq, t.dtype, t.pat, t.off))
                if len(st.wlog) >= _WLOG_MAX:
                    st.flush_stamps()
