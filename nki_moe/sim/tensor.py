"""NkiTensor: a view (dtype, offset, [[step, num], ...] pattern) over one flat NumPy storage per allocation.

SBUF/PSUM storages are [P, F] row-major (partition step = F elements); HBM storages are flat row-major.
Indexing, reshape, view and ap only build new patterns; data moves happen in instructions (instr.py).
"""

from __future__ import annotations

import enum
import gc
import inspect
import linecache
import math
import operator
import re
import sys
import weakref

import numpy as np

from . import numerics, runtime
from .errors import SIM_DIR, NkiCapacityError, NkiValidationError, user_callers, user_frame


class MemoryRegion(str, enum.Enum):  # noqa: UP042 (StrEnum needs py3.11; project targets 3.10)
    """nl.sbuf / nl.psum / nl.private_hbm (= nl.hbm) / nl.shared_hbm; compares equal to its string name."""

    sbuf = "sbuf"
    psum = "psum"
    private_hbm = "private_hbm"
    shared_hbm = "shared_hbm"
    hbm = "private_hbm"  # alias of private_hbm

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"nl.{self.value}"


_BUFFER_NAMES = {
    "sbuf": MemoryRegion.sbuf,
    "psum": MemoryRegion.psum,
    "hbm": MemoryRegion.private_hbm,
    "private_hbm": MemoryRegion.private_hbm,
    "shared_hbm": MemoryRegion.shared_hbm,
}
ON_CHIP = ("sbuf", "psum")
ITEMSIZE = {name: numerics.itemsize(name) for name in numerics.DTYPES}


def normalize_buffer(buffer, compat: str | None = None) -> MemoryRegion:
    if isinstance(buffer, MemoryRegion):
        return buffer
    if isinstance(buffer, str) and buffer in _BUFFER_NAMES:
        if (compat or "0.3") != "0.2":
            raise NkiValidationError(
                f"buffer given as the string {buffer!r}; NKI 0.3 needs nl.{buffer} (strings were 0.2 only)",
                instruction="ndarray",
                operand="buffer",
            )
        return _BUFFER_NAMES[buffer]
    raise NkiValidationError(
        f"unknown buffer {buffer!r}; use nl.sbuf, nl.psum, nl.hbm or nl.shared_hbm",
        instruction="ndarray",
        operand="buffer",
    )


def _fill_poison(raw: np.ndarray) -> None:
    """raw[...] = poison; ml_dtypes buffers (bf16, fp8) through an unsigned view of the same bits, because
    their own fill converts element by element (8x slower for 2M bf16 elements)."""
    poison = np.array(_poison(raw.dtype), raw.dtype)
    if raw.dtype.isbuiltin == 2:  # a user-defined (ml_dtypes) dtype
        u = np.dtype(f"u{raw.itemsize}")
        raw.view(u).fill(poison.view(u)[()])
    else:
        raw.fill(poison)


def _poison(dtype: np.dtype):
    if dtype.kind == "f" or dtype.kind == "V" or "float" in dtype.name:
        return np.nan
    if dtype.kind == "b":
        return True
    return np.iinfo(dtype).max  # sentinel for never-written integers


# Recycled data buffers of dead on-chip/HBM allocations, keyed by (numpy dtype, element count). Fresh
# NumPy memory is page-faulted on first touch, which costs more than the kernel's own work on big tiles;
# a kernel re-allocates the same tile shapes every loop iteration, so reuse keeps the pages warm.
_POOL: dict = {}
_POOL_MAX_PER_KEY = 4
_POOL_MAX_BYTES = 64 << 20
_pool_bytes = [0]


def _take_buffer(n: int, dtype: np.dtype) -> np.ndarray:
    """An uninitialised flat buffer (contents undefined: callers poison or overwrite it)."""
    free = _POOL.get((dtype, n))
    if free:
        buf = free.pop()
        _pool_bytes[0] -= buf.nbytes
        return buf
    return np.empty(n, dtype)


def _give_buffer(buf: np.ndarray, getrefcount=sys.getrefcount) -> None:
    # Only a buffer nothing else references may be reused (a NumPy view would keep it as its base);
    # 3 = the caller's attribute, the argument, getrefcount's own argument.
    if getrefcount(buf) > 3 or _pool_bytes[0] + buf.nbytes > _POOL_MAX_BYTES:
        return
    free = _POOL.setdefault((buf.dtype, buf.size), [])
    if len(free) < _POOL_MAX_PER_KEY:
        free.append(buf)
        _pool_bytes[0] += buf.nbytes


class Storage:
    """One allocation: flat data, uninitialised-taint mask, matmul-written mask (PSUM), write stamps.

    A new allocation starts `fresh`: conceptually poisoned (NaN / integer max) and, in strict mode, tainted
    everywhere. The poison fill and the taint mask are only materialised when something could observe them
    (a read, a partial write, returning the tensor); a first write that covers the whole allocation skips
    both, which is the common case for tiles and is indistinguishable from filling first.
    """

    __slots__ = (
        "raw",
        "dtype",
        "buffer",
        "shape",
        "F",
        "nelem",
        "taint",
        "mminit",
        "mm_full",
        "stamp",
        "wlog",
        "serial",
        "name",
        "loc",
        "rec",
        "is_input",
        "written",
        "mem",
        "fresh",
        "unfilled",
        "gen",
        "tainted_fill",
        "pooled",
        "debt_taint",
        "debt_mminit",
        "__weakref__",
    )

    def __init__(
        self,
        shape,
        dtype: str,
        buffer: str,
        raw: np.ndarray,
        serial: int,
        name: str,
        loc,
        tainted: bool,
        fresh: bool = False,
    ):
        self.shape = shape
        self.dtype = dtype
        self.buffer = buffer
        self.raw = raw
        self.nelem = raw.size
        self.F = math.prod(shape[1:]) if buffer in ON_CHIP else 0
        self.fresh = fresh
        self.unfilled = False  # see defer_fill
        self.gen = 0  # bumped when the storage adopts a new data buffer
        self.tainted_fill = tainted
        self.taint = np.ones(raw.size, np.bool_) if tainted and not fresh else None
        self.mminit = None
        self.mm_full = False  # every element written by a matmul (mminit all True)
        self.stamp = None
        # affine_range write stamps not yet applied to `stamp`: (trace index, dtype, pattern, offset) per
        # write. Applied only when a later iteration reads the storage (most written tiles never are).
        self.wlog: list = []
        self.serial = serial
        self.name = name
        self.loc = loc
        self.rec = None
        self.is_input = False
        self.written = False
        self.mem = None
        self.pooled = fresh  # buffers from _take_buffer go back to the pool
        self.debt_taint = self.debt_mminit = 0  # elements written since the mask's last scan (instr.scan_due)

    def materialize(self) -> None:
        """Apply the deferred poison fill (and all-tainted mask) of a fresh allocation."""
        if self.fresh:
            self.fresh = False
            _fill_poison(self.raw)
            if self.tainted_fill:
                self.taint = np.ones(self.nelem, np.bool_)
        elif self.unfilled:
            self.unfilled = False
            if self.taint.any():
                np.copyto(self.raw, np.array(_poison(self.raw.dtype), self.raw.dtype), where=self.taint)
            else:
                # Every element was written (the usual output): an all-clear mask means the same as no
                # mask, and dropping it spares later checks (the return check) another full scan.
                self.taint = None

    def defer_fill(self) -> bool:
        """A partial first write to a fresh HBM output in strict mode: keep the poison fill pending.

        Tainted values can never be stored to an HBM output (that write fails), so there the taint mask is
        exactly the never-written mask, and the poison can be put into those elements when something first
        reads the tensor (usually: nothing but the final copy-out, after every element was written).
        """
        if not (self.fresh and self.tainted_fill and self.buffer == "shared_hbm"):
            return False
        self.fresh = False
        self.unfilled = True
        self.taint = np.ones(self.nelem, np.bool_)
        return True

    def adopt(self, values: np.ndarray) -> bool:
        """Take a freshly computed full-size array as the new data buffer instead of copying it in.

        Only for emulator-owned buffers (never a kernel input's memory), and only for an array nothing
        else can see: it must own its C-contiguous data in the storage dtype. The caller guarantees that
        it keeps no other reference.
        """
        if not (
            self.pooled
            and values.dtype == self.raw.dtype
            and values.size == self.nelem
            and values.flags.owndata
            and values.flags.c_contiguous
            and values.flags.writeable
        ):
            return False
        old = self.raw
        self.raw = values.reshape(-1)
        self.gen += 1
        _give_buffer(old)
        return True

    def flush_stamps(self) -> None:
        """Apply logged affine_range write stamps in program order (later writes win)."""
        if self.stamp is None:
            self.stamp = np.full(self.nelem, -1, np.int32)
        for seq, dtype, pat, off in self.wlog:
            NkiTensor(self, dtype, pat, off).mask_set(self.stamp, seq)
        self.wlog.clear()

    def __del__(self):
        # Garbage-collected tiles (e.g. rebound in a Python loop) stop counting against capacity.
        rec = self.rec
        if rec is not None and rec.live:
            self.mem.release(rec)
        if self.pooled:
            _give_buffer(self.raw)

    @property
    def on_chip(self) -> bool:
        return self.buffer in ON_CHIP


def _check_shape(shape) -> tuple:
    if type(shape) is tuple and all(type(s) is int and s > 0 for s in shape):
        return shape  # the common case, already canonical
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        shape = tuple(operator.index(s) for s in shape)
    except TypeError:
        raise NkiValidationError(
            f"shape {shape!r} must be a tuple of ints", instruction="ndarray", operand="shape"
        ) from None
    if any(s <= 0 for s in shape):
        raise NkiValidationError(
            "every dimension must be positive", instruction="ndarray", operand="shape", value=shape
        )
    return shape


def allocate(
    shape, dtype, buffer=MemoryRegion.sbuf, name: str = "", address=None, instruction="ndarray", fill=None
) -> NkiTensor:
    """Create a new tensor (the body of nl.ndarray): poisoned unless `fill` is given."""
    prog = runtime.current() or runtime.require(f"nl.{instruction}")
    shape = _check_shape(shape)
    dtype = numerics.normalize_dtype(dtype, instruction)
    # A MemoryRegion member passes as is (plain strings are 0.2 syntax, checked by normalize_buffer).
    buf = buffer._value_ if type(buffer) is MemoryRegion else normalize_buffer(buffer, prog.compat).value
    f = user_frame(2)
    loc = (f.f_code.co_filename, f.f_lineno) if f is not None else ("<unknown>", 0)
    launch = prog.launch
    if buf in ON_CHIP:
        if len(shape) < 2:
            raise NkiValidationError(
                "on-chip tensors need a partition dim and at least one free dim",
                instruction=instruction,
                operand=name or "shape",
                value=shape,
                location=f"{loc[0]}:{loc[1]}",
            )
        if shape[0] > prog.tgt.partitions:
            raise NkiValidationError(
                "partition dimension exceeds the architecture limit",
                instruction=instruction,
                operand=name or "shape",
                limit=prog.tgt.partitions,
                value=shape[0],
                location=f"{loc[0]}:{loc[1]}",
            )
    if buf == "shared_hbm" and launch.nprog > 1:
        # Every program allocates the same shared tensors in the same order: hand out one storage.
        k = prog.shared_count
        prog.shared_count += 1
        if k < len(launch.shared):
            st = launch.shared[k]
            if st.shape != shape or st.dtype != dtype:
                raise NkiValidationError(
                    f"program {prog.pid} allocates shared_hbm #{k} as {shape} {dtype}, other program as "
                    f"{st.shape} {st.dtype}",
                    instruction=instruction,
                    operand=name or None,
                )
            return NkiTensor._base(st)
    sdt = numerics.np_storage_dtype(dtype)
    n = math.prod(shape)
    if fill is None:
        raw = _take_buffer(n, sdt)  # poisoned lazily (Storage.materialize)
    else:
        raw = np.full(n, fill, sdt)
    launch.serial += 1
    tainted = prog.strict and fill is None
    st = Storage(shape, dtype, buf, raw, launch.serial, name, loc, tainted, fresh=fill is None)
    launch.trace.allocs[st.serial] = (buf, loc[0], loc[1], (st.F or n) * ITEMSIZE[dtype], user_callers(f))
    if buf in ON_CHIP:
        isz = ITEMSIZE[dtype]
        per_part = st.F * isz
        if buf == "psum":
            if per_part > prog.tgt.psum_bytes:
                raise NkiValidationError(
                    "PSUM tensor larger than a partition's 16 KiB",
                    instruction=instruction,
                    operand=name or None,
                    limit=prog.tgt.psum_bytes,
                    value=per_part,
                    location=f"{loc[0]}:{loc[1]}",
                )
            st.mminit = np.zeros(n, np.bool_)
            banks = -(-per_part // prog.tgt.psum_bank_bytes)
        else:
            banks = 0
        placed = None if address is None else _placement(address, shape, per_part, buf, prog, name, loc)
        rec = runtime.AllocRecord(buf, per_part, banks, name, loc, shape, dtype, placed)
        rec.storage = weakref.ref(st)
        try:
            prog.register_alloc(rec)
        except NkiCapacityError:
            _register_on_overflow(prog, rec, f)
        st.rec = rec
        st.mem = prog.mem
    elif address is not None:
        raise NkiValidationError(
            "address= places SBUF/PSUM tensors only (HBM tensors are placed by the runtime)",
            instruction=instruction,
            operand="address",
            limit="nl.sbuf/nl.psum",
            value=buf,
            location=f"{loc[0]}:{loc[1]}",
        )
    if buf == "shared_hbm" and launch.nprog > 1:
        launch.shared.append(st)
    return NkiTensor._base(st)


def _placement(address, shape, per_part: int, buf: str, prog, name: str, loc) -> tuple:
    """Validate `address=(partition_offset, byte_offset)` ([NKI-API] `ndarray`; byte offsets per partition,
    PSUM ones on a 2 KiB bank boundary, [NKI-ALLOC]); returns (p0, p1, b0, b1) for the capacity model."""
    where = f"{loc[0]}:{loc[1]}"
    try:
        p0, b0 = (operator.index(a) for a in address)
    except (TypeError, ValueError):
        raise NkiValidationError(
            "address must be a (partition_offset, byte_offset) pair of ints",
            instruction="ndarray",
            operand="address",
            value=address,
            location=where,
        ) from None
    tgt = prog.tgt
    if p0 < 0 or p0 + shape[0] > tgt.partitions:
        raise NkiValidationError(
            "address partition offset + partitions exceeds the partitions",
            instruction="ndarray",
            operand=name or "address",
            limit=tgt.partitions,
            value=f"{p0} + {shape[0]}",
            location=where,
        )
    cap = tgt.sbuf_usable_bytes if buf == "sbuf" else tgt.psum_bytes
    if b0 < 0 or b0 + per_part > cap:
        raise NkiValidationError(
            f"address byte offset + bytes per partition exceeds the {buf.upper()} partition size",
            instruction="ndarray",
            operand=name or "address",
            limit=cap,
            value=f"{b0} + {per_part}",
            location=where,
        )
    if buf == "psum" and b0 % tgt.psum_bank_bytes:
        raise NkiValidationError(
            "a PSUM address must start on a bank boundary",
            instruction="ndarray",
            operand=name or "address",
            limit=f"multiple of {tgt.psum_bank_bytes}",
            value=b0,
            location=where,
        )
    return (p0, p0 + shape[0], b0, b0 + per_part)


def _release_rebound(f, prog) -> bool:
    """On a capacity overflow at `name = nl.ndarray(...)`: free the tiles `name` still holds, if nothing else
    can reach them. The assignment is about to drop them, so they are dead (the compiler's liveness); a use on
    the right-hand side (`t = nl.exp(t)`) revives them, and counts them again, before they are dropped.

    The allocation may sit in a helper or a comprehension (`ps = [nl.ndarray(...) for ...]`,
    `p = new_psum_tile()`): every kernel frame on the call path is asked, innermost first, for the variable
    its current line assigns, and `name` may hold a tile or a (nested) list/tuple of tiles.

    Only on the overflow path: reading the kernel's locals and their referrers is slow but exact.
    """
    frames = []
    while f is not None and not f.f_code.co_filename.startswith(SIM_DIR):
        if not f.f_code.co_flags & inspect.CO_OPTIMIZED:  # module code: not a kernel function's locals
            break
        frames.append(f)
        f = f.f_back
    # Snapshot dicts of every frame's variables first (Python 3.11/3.12): a tile one of them still names
    # (e.g. passed down as an argument) then shows up as a referrer and is kept.
    snapshots = [g.f_locals for g in frames]
    released = False
    try:
        for g, local in zip(frames, snapshots):
            for target in _assigned_names(g.f_code.co_filename, g.f_lineno):
                dead = _only_held_by(local.get(target), local, snapshots, frames)
                recs = [st.rec for st in dead if st.rec is not None and st.rec.live]
                if recs:
                    # Set aside rather than released: a referrer the scan cannot see (a container older
                    # than the launch, see jit.run) and a later use are then still checked exactly.
                    prog.mem.set_aside(recs)
                    released = True
        return released
    finally:
        # The snapshots would keep every tile they name alive past its rebinding (and so counted as live).
        for local in snapshots:
            if isinstance(local, dict):
                local.clear()
        del frames, snapshots


def _register_on_overflow(prog, rec, f) -> None:
    """The allocation does not fit: free what is dead, then retry; else re-raise the capacity error.

    Dead are the tiles the assignment is about to rebind (_release_rebound) and, for compiler-placed
    tiles, the ones a stale variable still names after their last use (MemTracker.suspend).
    """
    if _release_rebound(f, prog):
        try:
            prog.register_alloc(rec)
            return
        except NkiCapacityError:
            pass
    buf = rec.buffer
    mem = prog.mem
    cap = prog.tgt.sbuf_usable_bytes if buf == "sbuf" else prog.tgt.psum_banks
    need = mem.usage(buf) + (rec.nbytes if buf == "sbuf" else rec.banks) - cap
    if rec.addr is None and mem.suspend(buf, need, _held_by_the_running_call()):
        prog.register_alloc(rec)
        return
    prog.register_alloc(rec)  # raises the capacity error, listing the live allocations


def _held_by_the_running_call() -> set:
    """ids of the storages the emulator frames on the stack hold (operands of the API call in progress, e.g.
    the `t` of `t = nl.exp(t)`), one list/tuple level deep. Only on the overflow path."""
    keep = set()
    f = sys._getframe(1)
    while f is not None and f.f_code.co_filename.startswith(SIM_DIR):
        for v in list(f.f_locals.values()):
            if isinstance(v, NkiTensor):
                keep.add(id(v.st))
            elif type(v) in (list, tuple):
                for w in v:
                    if isinstance(w, NkiTensor):
                        keep.add(id(w.st))
        f = f.f_back
    del f
    return keep


_TARGETS = re.compile(r"^\s*([A-Za-z_][\w\s,()]*?)\s*(?::[^=]+)?=[^=]")


def _assigned_names(filename: str, lineno: int) -> list:
    """Plain variable names a source line assigns (`t = ...`, `a, b = ...`, `(a, b) = ...`)."""
    m = _TARGETS.match(linecache.getline(filename, lineno))
    if m is None:
        return []
    names = [n.strip(" ()") for n in m.group(1).split(",")]
    return [n for n in names if n.isidentifier()]


def _only_held_by(value, local, *ours) -> list:
    """Storages of the on-chip tiles in `value` (a tile or nested lists/tuples of them) that nothing but
    `local[...]` (and `value`'s own containers) reaches; [] when anything else holds any of them."""
    if value is None or isinstance(value, (int, float, str)):
        return []
    objs, stack, storages = [], [value], []
    while stack:  # no comprehensions here: a closure cell over these objects would itself be a referrer
        v = stack.pop()
        if isinstance(v, NkiTensor):
            if v.st.rec is None:
                return []
            objs.append(v)
            storages.append(v.st)
        elif type(v) in (list, tuple):
            if len(objs) > 4096:
                return []
            objs.append(v)
            stack.extend(v)
        elif not (v is None or isinstance(v, (int, float, str))):
            return []  # something else (a dict, an object): do not guess who else sees the tiles
    if not storages:
        return []
    named = 0
    for v in local.values():
        named += v is value
    if named != 1:  # also bound to another variable (`prev = ps`): still in use
        return []
    everything = objs + storages
    inside = set(map(id, objs))
    held = set(map(id, storages))
    mine = {id(objs), id(stack), id(storages), id(everything), *map(id, ours)}
    # One scan of the heap for all of them (each get_referrers call walks every tracked object).
    for r in gc.get_referrers(*everything):
        rid = id(r)
        if rid in mine or rid in inside:
            continue
        # Only the top value may be named by the frame; an element also bound to another variable
        # (`p0 = ps[0]`) is still in use.
        if r is not local:
            return []
        for v in local.values():  # a loop, not any(...): a generator's closure cell would be a referrer
            if v is not value and (id(v) in inside or id(v) in held):
                return []
    return storages


def from_array(arr: np.ndarray, buffer: str, name: str = "", serial: int = 0) -> NkiTensor:
    """Wrap a kernel input array as an HBM tensor (zero-copy when dtype and layout allow)."""
    dtype = numerics.normalize_dtype(arr.dtype)
    sdt = numerics.np_storage_dtype(dtype)
    if arr.dtype == sdt and arr.flags.c_contiguous and arr.flags.writeable:
        raw = arr.reshape(-1)
    else:
        raw = np.ascontiguousarray(arr).astype(sdt).reshape(-1)
    shape = tuple(arr.shape) if arr.ndim else (1,)
    st = Storage(shape, dtype, buffer, raw, serial, name, ("<input>", 0), False)
    st.is_input = True
    return NkiTensor._base(st)


def _using_instruction():
    """(the Instr whose operand is being accessed, the operand name) from the call stack; (None, None) outside
    an instruction. Only on error paths (reads frame locals)."""
    f = sys._getframe(2)
    ins = operand = None
    try:
        while f is not None and f.f_code.co_filename.startswith(SIM_DIR) and operand is None:
            local = f.f_locals
            if isinstance(local.get("operand"), str):
                operand = local["operand"]  # Instr.read/write/_access(operand, ...)
            for key in ("self", "ins"):
                v = local.get(key)
                if ins is None and type(v).__name__ == "Instr":
                    ins = v
            f = f.f_back
        return ins, operand
    finally:
        del f


def _norm_index(i, n: int, dim: int, t) -> int:
    j = operator.index(i)
    if j < 0:
        j += n
    if not 0 <= j < n:
        raise t._error(
            "index out of bounds",
            "indexing",
            limit=f"[0, {n - 1}] (dim {dim})",
            value=i,
        )
    return j


def _slice(s: slice, n: int, dim: int, t) -> tuple[int, int]:
    start, stop = s.start, s.stop
    if s.step is None and type(start) is int and type(stop) is int and 0 <= start < stop <= n:
        return start, 1, stop - start  # the common a:b slice, already canonical
    step = 1 if s.step is None else operator.index(s.step)
    if step == 0:
        raise t._error("slice step cannot be 0", "indexing")
    if step > 0:
        start = 0 if s.start is None else operator.index(s.start)
        stop = n if s.stop is None else operator.index(s.stop)
        start += n if start < 0 else 0
        stop += n if stop < 0 else 0
        if not (0 <= start <= n and 0 <= stop <= n):
            raise t._error(
                "slice out of bounds",
                "indexing",
                limit=f"dimension {dim} of size {n}",
                value=f"[{s.start}:{s.stop}]",
            )
    else:
        start = n - 1 if s.start is None else operator.index(s.start)
        stop = -1 if s.stop is None else operator.index(s.stop)
        start += n if start < 0 else 0
        if s.stop is not None and stop < 0:
            stop += n
        if not (0 <= start < n and -1 <= stop < n):
            raise t._error(
                "slice out of bounds",
                "indexing",
                limit=f"dimension {dim} of size {n}",
                value=f"[{s.start}:{s.stop}]",
            )
    num = len(range(start, stop, step))
    if num == 0:
        raise t._error(
            "empty slice",
            "indexing",
            limit=f"dimension {dim} of size {n}",
            value=f"[{s.start}:{s.stop}:{s.step}]",
        )
    return start, step, num


_CACHE_MAX = 4096  # geometry caches are cleared beyond this many entries (patterns repeat in practice)
_BASE_PATTERNS: dict = {}  # shape -> row-major ((step, num), ...) of a whole allocation
_ND_GEOMETRY: dict = {}  # (pattern, itemsize) -> (shape, byte strides) of the strided ndarray view
_BYTE_RANGES: dict = {}  # (pattern, on chip, base offset, itemsize) -> free_byte_range()


def _reshape_steps(old: list, new: tuple):
    """New steps for viewing (num, step) dims `old` as shape `new` without a copy, or None (numpy's rule)."""
    od = [(n, s) for n, s in old if n != 1]
    steps = [1] * len(new)
    oi, oj, ni, nj = 0, 1, 0, 1
    while ni < len(new) and oi < len(od):
        np_, op = new[ni], od[oi][0]
        while np_ != op:
            if np_ < op:
                if nj >= len(new):
                    return None
                np_ *= new[nj]
                nj += 1
            else:
                if oj >= len(od):
                    return None
                op *= od[oj][0]
                oj += 1
        for ok in range(oi, oj - 1):
            if od[ok][1] != od[ok + 1][0] * od[ok + 1][1]:
                return None
        steps[nj - 1] = od[oj - 1][1]
        for nk in range(nj - 1, ni, -1):
            steps[nk - 1] = steps[nk] * new[nk]
        ni, nj, oi, oj = nj, nj + 1, oj, oj + 1
    return steps


class NkiTensor:
    """A tensor view. Attributes: shape, dtype (str), buffer, ndim, size, offset, name; get_pattern()."""

    __slots__ = ("st", "dtype", "pat", "off", "dyn", "oob", "_pf", "_v", "_vgen", "__weakref__")
    __array_priority__ = 1000  # keep numpy from treating tiles as sequences

    def __init__(self, st: Storage, dtype: str, pat: tuple, off: int, dyn=None):
        self.st = st
        self.dtype = dtype
        self.pat = pat
        self.off = off
        self.dyn = dyn
        # Where an .ap() view that reaches outside its tensor was built ("file:line"), else None. Such a view
        # is legal until an instruction uses it (kernels build next iteration's pattern before testing the
        # bound, [NKILIB] output_projection_tkg); _use_check() then fails at the instruction's line.
        self.oob = None
        self._pf = None
        self._v = None  # cached strided ndarray over the storage data (see _data)
        self._vgen = -1  # Storage.gen the cached view was made for

    @classmethod
    def _base(cls, st: Storage) -> NkiTensor:
        pat = _BASE_PATTERNS.get(st.shape)
        if pat is None:
            if len(_BASE_PATTERNS) > _CACHE_MAX:
                _BASE_PATTERNS.clear()
            steps = []
            acc = 1
            for n in reversed(st.shape):
                steps.append(acc)
                acc *= n
            pat = _BASE_PATTERNS[st.shape] = tuple(zip(reversed(steps), st.shape))
        return cls(st, st.dtype, pat, 0)

    # ---- attributes -------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return tuple(n for _, n in self.pat)

    @property
    def ndim(self) -> int:
        return len(self.pat)

    @property
    def size(self) -> int:
        p, f = self.pf()
        return p * f

    @property
    def buffer(self) -> MemoryRegion:
        return MemoryRegion(self.st.buffer)

    @property
    def offset(self) -> int:
        return self.off

    @property
    def address(self) -> tuple | None:
        """`address=` of the allocation, (partition_offset, byte_offset); None when the compiler places it."""
        rec = self.st.rec
        return None if rec is None else rec.address

    @property
    def name(self) -> str:
        return self.st.name

    @property
    def strides(self) -> tuple:
        return tuple(s for s, _ in self.pat)

    @property
    def itemsize(self) -> int:
        return ITEMSIZE[self.dtype]

    def get_pattern(self) -> list:
        return [[s, n] for s, n in self.pat]

    def _label(self) -> str:
        return f"{self.st.name or 'tensor'}{list(self.shape)}"

    def _error(self, message: str, instruction: str, limit=None, value=None) -> NkiValidationError:
        """The error for an invalid view or layout operation on this tensor (the operand is its label)."""
        return NkiValidationError(
            message, instruction=instruction, operand=self._label(), limit=limit, value=value
        )

    def __repr__(self) -> str:
        return (
            f"NkiTensor(shape={self.shape}, dtype={self.dtype}, buffer={self.st.buffer}, "
            f"offset={self.off}, pattern={self.get_pattern()})"
        )

    def __len__(self) -> int:
        return self.pat[0][1]

    def __bool__(self) -> bool:
        # The tracer sees a tensor handle as a Python object, not as its values: `if t:` / `if params.x:`
        # is true for any tensor (production kernels test optional tensor arguments that way, [NKILIB]).
        # Data-dependent branching on values needs nl.where / predicates, which are built explicitly.
        return True

    def __iter__(self):
        raise TypeError("NKI tensors are not iterable; index them with slices")

    def __setitem__(self, key, value):
        raise self._error(
            "Updating a tile with lvalue assignment is not allowed; write with nisa.tensor_copy/dma_copy",
            "__setitem__",
        )

    # ---- layout helpers ------------------------------------------------------------------------------
    @property
    def on_chip(self) -> bool:
        return self.st.buffer in ON_CHIP

    def _units(self) -> int:
        """Storage elements per view element ratio numerator/denominator in bytes."""
        return ITEMSIZE[self.dtype]

    def part_step(self) -> int:
        """Partition step in view elements (the allocation's free size per partition)."""
        st = self.st
        return st.F if self.dtype == st.dtype else st.F * ITEMSIZE[st.dtype] // ITEMSIZE[self.dtype]

    def pf(self) -> tuple[int, int]:
        """(partitions, elements per partition); HBM views use dim 0 as P."""
        pf = self._pf
        if pf is None:
            pat = self.pat
            if not pat:
                pf = (1, 1)
            else:
                f = 1
                for _, n in pat[1:]:
                    f *= n
                pf = (pat[0][1], f)
            self._pf = pf
        return pf

    def p_start(self) -> int:
        if self.oob is not None:
            self._use_check()
        return self.off // self.part_step()

    def free_byte_range(self) -> tuple[int, int]:
        if self.oob is not None:
            self._use_check()
        isz = ITEMSIZE[self.dtype]
        on_chip = self.st.buffer in ON_CHIP
        base = self.off % self.part_step() if on_chip else self.off
        key = (self.pat, on_chip, base, isz)
        got = _BYTE_RANGES.get(key)
        if got is None:  # a pure function of the key: cached (kernels repeat the same slices every iteration)
            if len(_BYTE_RANGES) > _CACHE_MAX:
                _BYTE_RANGES.clear()
            dims = self.pat[1:] if on_chip else self.pat
            lo = base + sum(min(0, s * (n - 1)) for s, n in dims)
            hi = base + sum(max(0, s * (n - 1)) for s, n in dims) + 1
            got = _BYTE_RANGES[key] = (lo * isz, hi * isz)
        return got

    def _same_units(self) -> bool:
        return self.dtype == self.st.dtype or ITEMSIZE[self.dtype] == numerics.itemsize(self.st.dtype)

    def _arr(self, write: bool = False) -> np.ndarray:
        """Flat storage data in this view's storage dtype (write=True: skip the pending-fill check)."""
        st = self.st
        if (st.fresh or st.unfilled) and not write:
            st.materialize()
        raw = st.raw
        if self.dtype == self.st.dtype:
            return raw
        sdt = numerics.np_storage_dtype(self.dtype)
        if raw.dtype == sdt:
            return raw
        if sdt.itemsize != ITEMSIZE[self.dtype] or raw.dtype.itemsize != numerics.itemsize(self.st.dtype):
            raise self._error(
                f"bit reinterpretation {self.st.dtype} -> {self.dtype} needs precise storage mode "
                "(fp32 mode stores low-precision floats widened)",
                "view",
            )
        return raw.view(sdt)

    def _nd(self, arr: np.ndarray) -> np.ndarray:
        """Strided ndarray over a flat array whose element units equal this view's element units."""
        if self.oob is not None:
            self._use_check()
        isz = arr.itemsize
        key = (self.pat, isz)
        geom = _ND_GEOMETRY.get(key)
        if geom is None:
            if len(_ND_GEOMETRY) > _CACHE_MAX:
                _ND_GEOMETRY.clear()
            shape, strides = tuple([n for _, n in self.pat]), tuple([s * isz for s, _ in self.pat])
            geom = _ND_GEOMETRY[key] = (shape, strides)
        return np.ndarray(geom[0], arr.dtype, arr, self.off * isz, geom[1])

    def _data(self, write: bool = False) -> np.ndarray:
        """The view as a strided ndarray over the storage data; write=True skips the pending-fill check.

        Cached (instructions reuse the same tile objects over and over) until the storage adopts a new
        buffer (Storage.adopt).
        """
        st = self.st
        if (st.fresh or st.unfilled) and not write:
            st.materialize()
        v = self._v
        if v is None or self._vgen != st.gen:
            v = self._v = self._nd(self._arr(write=True))
            self._vgen = st.gen
        return v

    def _view_index(self) -> np.ndarray:
        """Element index (view units) of every element, shaped like the view."""
        idx = np.full((), self.off, np.int64)
        for s, n in self.pat:
            idx = idx[..., None] + np.arange(n, dtype=np.int64) * s
        return idx

    def _storage_index(self) -> np.ndarray:
        """Storage element index of every view element (slow path for reinterpreting views)."""
        if self.oob is not None:
            self._use_check()
        return self._view_index() * ITEMSIZE[self.dtype] // ITEMSIZE[self.st.dtype]

    def mask_get(self, arr: np.ndarray) -> np.ndarray:
        """Per-storage-element metadata (taint, stamps, ...) gathered in view shape."""
        if self._same_units():
            return self._nd(arr)
        return arr[self._storage_index()]

    def mask_set(self, arr: np.ndarray, values) -> None:
        if self._same_units():
            self._nd(arr)[...] = values
        else:
            arr[self._storage_index()] = values

    def _span(self) -> tuple[int, int, int]:
        """(lowest, highest) element the view touches and the tensor's element count, in view units."""
        total = self.st.raw.nbytes // ITEMSIZE[self.dtype]
        lo = self.off + sum(min(0, s * (n - 1)) for s, n in self.pat)
        hi = self.off + sum(max(0, s * (n - 1)) for s, n in self.pat)
        return lo, hi, total

    def check_bounds(self, what: str = "access pattern") -> None:
        lo, hi, total = self._span()
        if lo < 0 or hi >= total:
            raise self._error(
                f"{what} outside its tensor", "ap", limit=f"elements [0, {total - 1}]", value=f"[{lo}, {hi}]"
            )

    def _use_check(self) -> None:
        """An instruction uses a view derived from an out-of-bounds .ap(): fail unless this view is inside."""
        lo, hi, total = self._span()
        if 0 <= lo and hi < total:
            self.oob = None  # this view (e.g. a slice of it) stays inside: nothing to check again
            return
        ins, operand = _using_instruction()
        raise NkiValidationError(
            f"access pattern outside its tensor {self._label()} (the .ap() view was built at {self.oob})",
            instruction=ins.opcode if ins is not None else "ap",
            operand=operand or self._label(),
            limit=f"elements [0, {total - 1}]",
            value=f"[{lo}, {hi}]",
            location=ins.location if ins is not None else None,
        )

    # ---- views -------------------------------------------------------------------------------------
    def _new(self, pat, off, dtype=None) -> NkiTensor:
        out = NkiTensor(self.st, dtype or self.dtype, tuple(pat), off)
        if self.oob is not None:
            out.oob = self.oob  # derived from an out-of-bounds .ap(): checked when used
        return out

    def __getitem__(self, key) -> NkiTensor:
        if self.dyn is not None:
            raise self._error("cannot index a dynamic (.ap with scalar/vector offset) view", "indexing")
        if not isinstance(key, tuple):
            key = (key,)
        n_real = len(key)
        for k in key:  # identity tests only: `None in key` would compare arrays elementwise
            if k is None or k is Ellipsis:
                n_real = sum(1 for k in key if k is not None and k is not Ellipsis)
                break
        if n_real > len(self.pat):
            raise self._error(
                "too many indices",
                "indexing",
                limit=len(self.pat),
                value=n_real,
            )
        pat = []
        off = self.off
        dim = 0
        on_chip = self.st.buffer in ON_CHIP
        for k in key:
            if k is None:
                pat.append((0, 1))
                continue
            if k is Ellipsis:
                take = len(self.pat) - n_real
                pat.extend(self.pat[dim : dim + take])
                dim += take
                n_real = len(self.pat)  # a second Ellipsis expands to nothing
                continue
            step, num = self.pat[dim]
            if type(k) is slice:
                a, b = k.start, k.stop
                if k.step is None and a is None and b is None:  # ':' (the most common index)
                    pat.append((step, num))
                    dim += 1
                    continue
                start, sstep, cnt = _slice(k, num, dim, self)
                if on_chip and dim == 0 and sstep != 1:
                    raise self._error(
                        "partition dimension cannot be strided", "indexing", limit="step 1", value=sstep
                    )
                off += start * step
                pat.append((step * sstep, cnt))
            elif isinstance(k, (int, np.integer)):
                j = k if type(k) is int and 0 <= k < num else _norm_index(k, num, dim, self)
                off += j * step
                if on_chip and dim == 0:
                    pat.append((step, 1))  # on-chip tensors keep their partition dim
            else:
                raise self._error(
                    f"unsupported index {type(k).__name__}: NKI 2 takes ints, slices, nl.ds and '...'; use "
                    ".ap(scalar_offset=/vector_offset=) for dynamic indices",
                    "indexing",
                )
            dim += 1
        pat.extend(self.pat[dim:])
        return self._new(pat, off)

    def reshape(self, *shape) -> NkiTensor:
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = tuple(shape[0])
        shape = [operator.index(s) for s in shape]
        total = self.size
        if shape.count(-1) == 1:
            known = math.prod(s for s in shape if s != -1)
            shape[shape.index(-1)] = total // known if known else 0
        shape = tuple(shape)
        if math.prod(shape) != total or any(s <= 0 for s in shape):
            raise self._error("reshape changes the element count", "reshape", limit=total, value=shape)
        kept = 1 if self.on_chip else 0  # on chip the partition dim stays as it is
        if kept and shape[0] != self.pat[0][1]:
            raise self._error(
                "on-chip reshape must keep the partition dim", "reshape", limit=self.pat[0][1], value=shape[0]
            )
        steps = _reshape_steps([(n, s) for s, n in self.pat[kept:]], shape[kept:])
        if steps is None:
            raise self._error("reshape of a non-contiguous view", "reshape", value=shape)
        return self._new(list(self.pat[:kept]) + list(zip(steps, shape[kept:])), self.off)

    def view(self, dtype) -> NkiTensor:
        """Reinterpret the bytes as `dtype`; the last dim scales by the itemsize ratio."""
        dtype = numerics.normalize_dtype(dtype)
        a, b = ITEMSIZE[self.dtype], numerics.itemsize(dtype)
        if a == b:
            return self._new(self.pat, self.off, dtype)
        last_step, last_num = self.pat[-1]
        if last_step != 1 and last_num != 1:
            raise self._error("view() with a different itemsize needs a contiguous last dim", "view")
        nbytes_last = last_num * a
        if nbytes_last % b or (self.off * a) % b or any((s * a) % b for s, _ in self.pat[:-1]):
            raise self._error(
                f"view as {dtype} does not align with the {self.dtype} layout", "view", value=self.shape
            )
        pat = [(s * a // b, n) for s, n in self.pat[:-1]] + [(1, nbytes_last // b)]
        out = self._new(pat, self.off * a // b, dtype)
        out._arr()  # fail early in fp32 storage mode
        return out

    def ap(self, pattern, offset=0, scalar_offset=None, vector_offset=None, indirect_dim=0, dtype=None):
        """Access pattern over the flattened allocation: view[i...] = flat[offset + sum(i_k * step_k)]."""
        dtype = self.dtype if dtype is None else numerics.normalize_dtype(dtype)
        st = self.st
        ratio_num, ratio_den = ITEMSIZE[st.dtype], numerics.itemsize(dtype)
        if offset is None:
            offset = self.off * ITEMSIZE[self.dtype] // ratio_den
        try:
            pat = tuple((operator.index(s), operator.index(n)) for s, n in pattern)
            offset = operator.index(offset)
        except (TypeError, ValueError):
            raise self._error(
                "pattern must be [[step, num], ...] of ints and offset an int", "ap", value=pattern
            ) from None
        if not pat or any(n <= 0 for _, n in pat):
            raise self._error("pattern needs positive counts", "ap", value=pattern)
        out = NkiTensor(st, dtype, pat, offset)
        if st.buffer in ON_CHIP:
            fsz = st.F * ratio_num // ratio_den
            if pat[0][0] != fsz and pat[0][1] != 1:
                raise self._error(
                    "the partition step of an on-chip .ap must equal the tensor's free size",
                    "ap",
                    limit=fsz,
                    value=pat[0][0],
                )
            if pat[0][0] != fsz:
                out.pat = ((fsz, pat[0][1]),) + pat[1:]
        if vector_offset is not None:
            if indirect_dim != 0:
                raise NkiValidationError(
                    "vector_offset needs indirect_dim=0",
                    instruction="ap",
                    operand="indirect_dim",
                    limit=0,
                    value=indirect_dim,
                )
            if st.buffer in ON_CHIP:
                raise self._error("vector_offset indirection needs an HBM tensor", "ap", value=st.buffer)
            # Rows of the tensor .ap() is called on: a reshaped view indexes its own rows ([NKILIB]
            # router_topk scatters into `x.reshape((T * E,))`), not the allocation's.
            shape, isz = self.shape, ITEMSIZE[self.dtype]
            row = math.prod(shape[1:]) * isz // ratio_den
            out.dyn = ("vector", vector_offset, row, shape[0])
        elif scalar_offset is not None:
            shape, isz = self.shape, ITEMSIZE[self.dtype]
            if not 0 <= indirect_dim < len(shape):
                raise NkiValidationError(
                    "indirect_dim out of range",
                    instruction="ap",
                    operand="indirect_dim",
                    limit=len(shape) - 1,
                    value=indirect_dim,
                )
            mult = math.prod(shape[indirect_dim + 1 :]) * isz // ratio_den
            out.dyn = ("scalar", scalar_offset, mult, shape[indirect_dim])
        else:
            lo, hi, total = out._span()
            if lo < 0 or hi >= total:
                f = user_frame(2)
                out.oob = f"{f.f_code.co_filename}:{f.f_lineno}" if f is not None else "<unknown>"
        return out

    # ---- HEAD view helpers (cheap ones) ------------------------------------------------------------
    def permute(self, dims) -> NkiTensor:
        dims = tuple(dims)
        if sorted(dims) != list(range(self.ndim)) or (self.on_chip and dims[0] != 0):
            raise self._error("invalid permutation (on-chip dim 0 must stay first)", "permute", value=dims)
        return self._new([self.pat[d] for d in dims], self.off)

    def slice(self, dim: int, start: int, end: int, step: int = 1) -> NkiTensor:
        key = [slice(None)] * self.ndim
        key[dim] = slice(start, end, step)
        return self[tuple(key)]

    def select(self, dim: int, index: int) -> NkiTensor:
        key = [slice(None)] * self.ndim
        key[dim] = index
        return self[tuple(key)]

    def broadcast(self, dim: int, size: int) -> NkiTensor:
        if self.pat[dim][1] != 1 or (self.on_chip and dim == 0):
            raise self._error("broadcast needs a size-1, non-partition dim", "broadcast", value=self.shape)
        pat = list(self.pat)
        pat[dim] = (0, size)
        return self._new(pat, self.off)

    def expand_dim(self, dim: int) -> NkiTensor:
        pat = list(self.pat)
        pat.insert(dim, (0, 1))
        return self._new(pat, self.off)

    def squeeze_dim(self, dim: int) -> NkiTensor:
        if self.pat[dim][1] != 1:
            raise self._error("squeeze of a dim whose size is not 1", "squeeze_dim", value=self.shape)
        pat = list(self.pat)
        del pat[dim]
        return self._new(pat, self.off)

    def flatten_dims(self, start: int, end: int) -> NkiTensor:
        shape = list(self.shape)
        new = shape[:start] + [math.prod(shape[start : end + 1])] + shape[end + 1 :]
        return self.reshape(tuple(new))

    def is_contiguous(self) -> bool:
        acc = 1
        for s, n in reversed(self.pat):
            if n != 1 and s != acc:
                return False
            acc *= n
        return True

    def covers_storage(self) -> bool:
        """Whether the view touches every byte of its allocation exactly once (a full overwrite)."""
        if self.off or self.dyn is not None:
            return False
        p, f = self.pf()
        st = self.st
        total = st.nelem if self._same_units() else st.raw.nbytes // ITEMSIZE[self.dtype]
        return p * f == total and self.is_contiguous()

    def is_indirect(self) -> bool:
        return self.dyn is not None


def ds(start, size) -> slice:
    """nl.ds(start, size): the slice start:start+size."""
    return slice(start, start + size)
