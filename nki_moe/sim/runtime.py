"""Per-launch and per-program emulator state: options, loop stack, SBUF/PSUM capacity, LNC scheduling."""

from __future__ import annotations

import contextlib
import linecache
import os
import re
import threading
import weakref
from dataclasses import dataclass, field, replace

import numpy as np

from .errors import NkiCapacityError, NkiValidationError, user_location
from .target import Target, resolve_target
from .trace import Trace

_tls = threading.local()


def current():
    """The running Program of this thread, or None outside a kernel."""
    return getattr(_tls, "prog", None)


def require(what: str):
    prog = getattr(_tls, "prog", None)
    if prog is None:
        raise NkiValidationError(
            f"{what} can only be used inside a running kernel (call the @nki.jit function, "
            "or nki_moe.sim.run(kernel, ...))"
        )
    return prog


# ---------------------------------------------------------------------------------------------------
# Options


def _env_flag(name: str, default: bool) -> bool:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    return v.strip().lower() not in ("0", "false", "no", "off")


@dataclass
class Options:
    """Run options; None fields fall back to the environment and then to the defaults."""

    target: str | None = None  # trn1/trn2/trn3 (or gen2/3/4); env NEURON_PLATFORM_TARGET_OVERRIDE
    precise: bool | None = None  # bf16/fp8 stored as such; env NKI_PRECISE_FP (default 1)
    strict: bool | None = None  # uninitialised-data taint + affine_range independence; env NKI_MOE_SIM_STRICT
    compat: str | None = None  # "0.3" (default) or "0.2" (platform_target kernels, string buffers)

    def resolved(self, platform_target: str | None = None) -> Options:
        tgt = self.target or os.environ.get("NEURON_PLATFORM_TARGET_OVERRIDE") or platform_target
        return Options(
            target=resolve_target(tgt).name,
            precise=_env_flag("NKI_PRECISE_FP", True) if self.precise is None else bool(self.precise),
            strict=_env_flag("NKI_MOE_SIM_STRICT", True) if self.strict is None else bool(self.strict),
            compat=self.compat or os.environ.get("NKI_MOE_NKI_COMPAT") or "0.3",
        )


_option_stack: list[Options] = [Options()]


def default_options() -> Options:
    return _option_stack[-1]


@contextlib.contextmanager
def options(**kw):
    """Temporarily change run defaults: `with options(target="trn3", precise=False, strict=True): ...`."""
    base = _option_stack[-1]
    _option_stack.append(replace(base, **{k: v for k, v in kw.items() if v is not None}))
    try:
        yield _option_stack[-1]
    finally:
        _option_stack.pop()


def current_target() -> Target:
    """Target of the running kernel, else the one the defaults/environment select."""
    prog = getattr(_tls, "prog", None)
    if prog is not None:
        return prog.tgt
    return resolve_target(_option_stack[-1].target)


# ---------------------------------------------------------------------------------------------------
# Loops


class Loop:
    """One active NKI range loop instance (affine/sequential/static)."""

    __slots__ = ("kind", "iter", "loop_seq", "iter_seq", "iter_serial", "allocs")

    def __init__(self, kind: str, seq: int):
        self.kind = kind
        self.iter = -1
        self.loop_seq = seq  # trace index when the loop started
        self.iter_seq = seq  # trace index when the current iteration started
        self.iter_serial = 0  # allocation serial when the current iteration started
        self.allocs: list = []


def loop_range(kind: str, start, stop=None, step=1):
    """Python-range semantics; tracks iterations for capacity release and affine independence."""
    if stop is None:
        start, stop = 0, start
    r = range(int(start), int(stop), int(step))
    prog = getattr(_tls, "prog", None)
    if prog is None:
        yield from r
        return
    loop = Loop(kind, len(prog.trace.records))
    prog.loops.append(loop)
    if kind == "affine":
        prog.affine.append(loop)
    try:
        for n, i in enumerate(r):
            loop.iter = n
            loop.iter_seq = len(prog.trace.records)
            loop.iter_serial = prog.launch.serial
            yield i
            prog.end_iteration(loop)
    finally:
        prog.end_iteration(loop)
        if loop in prog.loops:
            prog.loops.remove(loop)
        if loop in prog.affine:
            prog.affine.remove(loop)


# ---------------------------------------------------------------------------------------------------
# Capacity


class AllocRecord:
    """Accounting entry of one on-chip allocation (kept apart from the data so GC can free it).

    `addr` is None for a compiler-placed tile, else the explicit placement `nl.ndarray(address=(p, b))` as
    (first partition, end partition, first byte, end byte) per partition. `evicted_by` lists the placed
    tiles put over its bytes since it last held them, as (label, weakref to their Storage); `storage` is a
    weakref to its own Storage (see MemTracker.add_explicit).
    """

    __slots__ = (
        "buffer",
        "nbytes",
        "banks",
        "name",
        "loc",
        "shape",
        "dtype",
        "live",
        "addr",
        "evicted_by",
        "storage",
        "suspended_at",
        "__weakref__",
    )

    def __init__(
        self, buffer: str, nbytes: int, banks: int, name: str, loc, shape: tuple, dtype: str, addr=None
    ):
        self.buffer = buffer
        self.nbytes = nbytes
        self.banks = banks
        self.name = name
        self.loc = loc
        self.shape = shape
        self.dtype = dtype
        self.live = False
        self.addr = addr
        self.evicted_by = None
        self.storage = None  # weakref to the Storage (on-chip allocations)
        self.suspended_at = None  # index into MemTracker.hist[buffer] when set aside (see suspend)

    @property
    def address(self) -> tuple | None:
        """The `address=` it was placed at, (partition_offset, byte_offset), or None (compiler-placed)."""
        return None if self.addr is None else (self.addr[0], self.addr[2])

    def operand(self) -> str:
        """Its `name=`, else the variable the kernel line assigns it to, else what it is (unnamed)."""
        return self.name or _guess_var_name(self.loc) or f"unnamed {self.buffer} tile"

    def label(self) -> str:
        unit = f"{self.banks} bank(s)" if self.buffer == "psum" else f"{self.nbytes} B/partition"
        shape = "x".join(str(n) for n in self.shape)
        where = f"{self.loc[0]}:{self.loc[1]}"
        placed = "" if self.addr is None else f", address=({self.addr[0]}, {self.addr[2]})"
        return f"'{self.operand()}' ([{shape}] {self.dtype} {self.buffer}, {unit}{placed}, {where})"


_ASSIGN = re.compile(r"^\s*([A-Za-z_][\w\.]*(?:\[[^\]]*\])?)\s*(?::[^=]+)?=[^=]")


def _guess_var_name(loc) -> str | None:
    line = linecache.getline(loc[0], loc[1]) if loc else ""
    m = _ASSIGN.match(line)
    return m.group(1) if m else None


def _holds_data(st) -> bool:
    """Whether an instruction has written the storage (a store, or a matmul into PSUM)."""
    return bool(st.written or st.mm_full or (st.mminit is not None and st.mminit.any()))


def _union_length(intervals) -> int:
    """Total length covered by half-open [lo, hi) intervals (overlaps counted once)."""
    total, end = 0, None
    for lo, hi in sorted(intervals):
        if end is None or lo >= end:
            total += hi - lo
            end = hi
        elif hi > end:
            total += hi - end
            end = hi
    return total


class MemTracker:
    """Live SBUF bytes per partition and PSUM banks of one program, against the target's capacity.

    Compiler-placed tiles count their size (`sbuf` bytes, `psum` banks). Explicitly placed tiles
    (`nl.ndarray(..., address=(partition, byte))`, [NKI-API] `ndarray`; the NKI 0.2 migration guide and the
    nki-library SbufManager page, [NKI-ALLOC]) occupy the bytes they name: they are checked to fit
    (offset + size <= capacity, PSUM offsets on a 2 KiB bank boundary) and count once however many of them
    share a byte or bank (`sbuf_placed` bytes: the union of their byte ranges; `psum_placed`: the banks they
    touch), so free space for compiler-placed tiles = capacity - compiler-placed - union of placed.

    Overlap: the compiler takes an explicit address as given; the kernel owns that memory. Reusing an
    address while the older tensor object still exists is the documented way to free it (SbufManager's
    scopes; the guide's `addr = inner_start` example places buf4 over buf2 and buf3), and production kernels
    time-share PSUM banks through many handles placed on the same bank ([NKILIB] attention_cte allocates a
    grid of mm1 PSUM tiles on banks 0-3 and uses them in turn). So the bytes belong to whichever placed tile
    was placed or used last: placing (or using) a tile releases the placed tiles it overlaps and records it
    in their `evicted_by`. Using such an evicted tile again takes the bytes back; that is legal for a write,
    and for a read only while none of the tiles that took its bytes has been written. Reading it after one
    was is an error: on hardware it would read the other tile's data, and the emulator keeps separate data
    per tile, so it cannot give the hardware's result. (Stricter than the compiler, which does not check.)
    """

    def __init__(self, tgt: Target):
        self.tgt = tgt
        self.sbuf = 0  # compiler-placed bytes per partition
        self.psum = 0  # compiler-placed banks
        self.sbuf_placed = 0  # union of explicitly placed byte ranges per partition
        self.psum_placed = 0  # PSUM banks touched by explicitly placed tiles
        self.peak_sbuf = 0
        self.peak_psum = 0
        # Accounting records only (they hold no data), so a plain set is fine; release() removes them.
        self.live: set = set()
        self.placed: set = set()  # live explicitly placed records
        # Every explicitly placed record that can still be used (its tensor is alive): what a new placement
        # evicts when it overlaps. Weak, so dead tensors drop out.
        self.placed_any: weakref.WeakSet = weakref.WeakSet()
        # Tiles set aside on an overflow (suspend) and, while any exists, the usage after every change, per
        # buffer: [(usage, record that changed it), ...].
        self.suspended: weakref.WeakSet = weakref.WeakSet()
        self.hist: dict = {"sbuf": None, "psum": None}

    def usage(self, buffer: str) -> int:
        """Live SBUF bytes per partition / PSUM banks, compiler-placed and explicitly placed together."""
        return self.sbuf + self.sbuf_placed if buffer == "sbuf" else self.psum + self.psum_placed

    def _note(self, rec: AllocRecord) -> None:
        hist = self.hist[rec.buffer]
        if hist is not None:
            if not self.suspended:
                self.hist[rec.buffer] = None
            else:
                hist.append((self.usage(rec.buffer), rec))

    def suspend(self, buffer: str, need: int, keep) -> bool:
        """On an overflow: set aside the live compiler-placed tiles of `buffer` that hold data (an instruction
        wrote them) and are not in `keep` (storage ids the running API call holds), if that frees `need`.

        This is the compiler's liveness (a tile is live from its allocation to its last use) where Python's
        reachability cannot tell: a tile a stale variable still names after its last use (a list of PSUM
        tiles left bound after the loop that used them, [NKILIB] moe_cte) is dead. A set-aside tile that
        is used again is checked then, over the whole time it was set aside (revive -> _unsuspend), so a
        tile that really stays live while others come and go is still counted at every moment.
        """
        cands = []
        freed = 0
        for r in self.live:
            if r.buffer != buffer or r.addr is not None or r.storage is None:
                continue
            st = r.storage()
            if st is None or id(st) in keep or not _holds_data(st):
                continue
            cands.append(r)
            freed += r.nbytes if buffer == "sbuf" else r.banks
        if freed < need:
            return False
        self.set_aside(cands)
        return True

    def set_aside(self, recs) -> None:
        """Release the live records `recs` as dead, but check any later use of one of them over the whole
        time since (revive -> _unsuspend): right for a tile that really was dead, and exact for one that was
        not."""
        for r in recs:
            if self.hist[r.buffer] is None:
                self.hist[r.buffer] = []
            self.suspended.add(r)
        for r in recs:
            self.release(r)
        for r in recs:
            r.suspended_at = len(self.hist[r.buffer])

    def _unsuspend(self, rec: AllocRecord, instruction: str) -> None:
        """A set-aside tile is used again: it was live all along, so it must fit at every moment since."""
        buf = rec.buffer
        hist = self.hist[buf] or []
        start = rec.suspended_at
        rec.suspended_at = None
        self.suspended.discard(rec)
        size = rec.nbytes if buf == "sbuf" else rec.banks
        cap = self.tgt.sbuf_usable_bytes if buf == "sbuf" else self.tgt.psum_banks
        peak, at = self.usage(buf), None
        for i in range(start, len(hist)):
            if hist[i][0] > peak:
                peak, at = hist[i]
        if peak + size > cap:
            what = "SBUF bytes per partition" if buf == "sbuf" else "PSUM banks"
            when = f" (at most while {at.label()} was allocated)" if at is not None else ""
            raise NkiCapacityError(
                f"uses {rec.label()} again, so it was live since its last use; together with the tiles "
                f"allocated meanwhile{when} that exceeds the {self.tgt.name} {what}",
                instruction=instruction,
                operand=rec.operand(),
                limit=cap,
                value=peak + size,
                location=user_location(3),
            )
        for i in range(start, len(hist)):  # it was live then: later revivals must see it
            hist[i] = (hist[i][0] + size, hist[i][1])
        if buf == "sbuf":
            self.peak_sbuf = max(self.peak_sbuf, peak + size)
        else:
            self.peak_psum = max(self.peak_psum, peak + size)

    def add(self, rec: AllocRecord, instruction: str = "allocation", mode: str | None = None) -> None:
        if rec.addr is not None:
            self.add_explicit(rec, instruction, mode)
            self._note(rec)
            return
        if rec.suspended_at is not None:
            self._unsuspend(rec, instruction)
        if rec.buffer == "sbuf":
            used = self.sbuf + self.sbuf_placed + rec.nbytes
            if used > self.tgt.sbuf_usable_bytes:
                self._overflow(rec, "SBUF bytes per partition", self.tgt.sbuf_usable_bytes, used, instruction)
            self.sbuf += rec.nbytes
            self.peak_sbuf = max(self.peak_sbuf, self.sbuf + self.sbuf_placed)
        else:
            used = self.psum + self.psum_placed + rec.banks
            if used > self.tgt.psum_banks:
                self._overflow(
                    rec, "PSUM banks (2 KiB per partition each)", self.tgt.psum_banks, used, instruction
                )
            self.psum += rec.banks
            self.peak_psum = max(self.peak_psum, self.psum + self.psum_placed)
        rec.live = True
        self.live.add(rec)
        if self.hist[rec.buffer] is not None:
            self._note(rec)

    def add_explicit(self, rec: AllocRecord, instruction: str = "allocation", mode=None) -> None:
        """Place an `address=` tile (at allocation, or again when an instruction uses it after it was
        evicted; `mode` "r"/"w" of that use): evict the placed tiles it overlaps, then check the capacity."""
        if rec.evicted_by:
            if mode != "w":
                self._check_not_overwritten(rec, instruction)
            rec.evicted_by = None
        p0, p1, b0, b1 = rec.addr
        label = None
        for old in list(self.placed_any):
            if old is rec or old.buffer != rec.buffer:
                continue
            q0, q1, c0, c1 = old.addr
            if p0 < q1 and q0 < p1 and b0 < c1 and c0 < b1:
                if label is None:
                    label = rec.label()
                if old.evicted_by is None:
                    old.evicted_by = []
                if len(old.evicted_by) < 8:
                    old.evicted_by.append((label, rec.storage))
                self.release(old)
        self.placed.add(rec)
        self.placed_any.add(rec)
        self._recount_placed()
        if rec.buffer == "sbuf":
            used = self.sbuf + self.sbuf_placed
            if used > self.tgt.sbuf_usable_bytes:
                self._unplace(rec)
                self._overflow(rec, "SBUF bytes per partition", self.tgt.sbuf_usable_bytes, used, instruction)
            self.peak_sbuf = max(self.peak_sbuf, used)
        else:
            used = self.psum + self.psum_placed
            if used > self.tgt.psum_banks:
                self._unplace(rec)
                self._overflow(
                    rec, "PSUM banks (2 KiB per partition each)", self.tgt.psum_banks, used, instruction
                )
            self.peak_psum = max(self.peak_psum, used)
        rec.live = True
        self.live.add(rec)

    def _check_not_overwritten(self, rec: AllocRecord, instruction: str) -> None:
        """Reading an evicted placed tile: fail if a tile placed over its bytes since has been written."""
        for label, ref in rec.evicted_by:
            st = ref() if ref is not None else None
            if st is not None and _holds_data(st):
                a = rec.addr
                raise NkiValidationError(
                    f"reads '{rec.operand()}' (placed at address=({a[0]}, {a[2]}), "
                    f"{rec.loc[0]}:{rec.loc[1]}) after {label} was placed over its bytes and written: on "
                    "hardware this reads the newer tile's data. Give the tiles disjoint addresses, or write "
                    "this one before reading it",
                    instruction=instruction,
                    operand=rec.operand(),
                    limit="no write to an overlapping placed tile since this one's last use",
                    value=f"bytes [{a[2]}, {a[3]}) of partitions [{a[0]}, {a[1]})",
                    location=user_location(3),
                )

    def _unplace(self, rec: AllocRecord) -> None:
        self.placed.discard(rec)
        self.placed_any.discard(rec)
        self._recount_placed()

    def _recount_placed(self) -> None:
        bank = self.tgt.psum_bank_bytes
        sb, banks = [], set()
        for r in self.placed:
            if r.buffer == "sbuf":
                sb.append((r.addr[2], r.addr[3]))
            else:
                banks.update(range(r.addr[2] // bank, -(-r.addr[3] // bank)))
        self.sbuf_placed = _union_length(sb)
        self.psum_placed = len(banks)

    def release(self, rec: AllocRecord) -> None:
        if not rec.live:
            return
        rec.live = False
        self.live.discard(rec)
        if rec.addr is not None:
            self.placed.discard(rec)
            self._recount_placed()
        elif rec.buffer == "sbuf":
            self.sbuf -= rec.nbytes
        else:
            self.psum -= rec.banks
        if self.hist[rec.buffer] is not None:
            self._note(rec)

    def _overflow(self, rec, what, limit, value, instruction):
        live = sorted((r for r in self.live if r.buffer == rec.buffer), key=lambda r: -r.nbytes)
        listing = "\n".join(f"    {r.label()}" for r in live[:40])
        more = f"\n    ... and {len(live) - 40} more" if len(live) > 40 else ""
        name = rec.operand()
        raise NkiCapacityError(
            f"allocating {rec.label()} exceeds the {self.tgt.name} {what}; live allocations:\n"
            f"{listing}{more}",
            instruction=instruction,
            operand=name,
            limit=limit,
            value=value,
            location=f"{rec.loc[0]}:{rec.loc[1]}",
        )


# ---------------------------------------------------------------------------------------------------
# Launch / program state


@dataclass
class Launch:
    """State shared by the programs of one kernel launch."""

    opts: Options
    tgt: Target
    nprog: int
    ndim: int
    trace: Trace
    serial: int = 0  # allocation counter (storages carry their serial)
    shared: list = field(default_factory=list)  # shared_hbm storages by allocation order (LNC sharing)
    sched: object = None
    programs: list = field(default_factory=list)


class Program:
    """One program (physical core) of a launch; reachable as `Instr.state` and `runtime.current()`."""

    def __init__(self, launch: Launch, pid: int):
        self.launch = launch
        self.pid = pid
        self.tgt = launch.tgt
        self.target = launch.tgt.name
        self.nc_version = launch.tgt.nc_version
        self.strict = launch.opts.strict
        self.compat = launch.opts.compat
        self.trace = launch.trace
        self.loops: list[Loop] = []
        self.pending_reg_reads: list[int] = []  # dynamic-loop bound registers, read by the next instruction
        self.affine: list[Loop] = []
        self.mem = MemTracker(launch.tgt)
        self.top_allocs: list = []
        self.act_acc = np.zeros(128, np.float32)
        self.dve_acc = np.zeros(128, np.float32)
        self.dma_rr = 0
        self.shared_count = 0
        self.rng = np.random.default_rng(1234 + pid)

    def end_iteration(self, loop: Loop) -> None:
        """Release on-chip allocations made in the iteration that just ended (as the compiler would)."""
        if loop.allocs:
            for rec in loop.allocs:
                self.mem.release(rec)
            loop.allocs.clear()

    def register_alloc(self, rec: AllocRecord) -> None:
        self.mem.add(rec)
        (self.loops[-1].allocs if self.loops else self.top_allocs).append(rec)

    def revive(self, rec: AllocRecord, instruction: str, mode: str | None = None) -> None:
        """A tile used after the iteration that created it ended (or, when placed by address=, after another
        placed tile took its bytes) is live again until the current iteration ends. `mode`: "r"/"w"."""
        self.mem.add(rec, instruction, mode)
        (self.loops[-1].allocs if self.loops else self.top_allocs).append(rec)


# ---------------------------------------------------------------------------------------------------
# LNC scheduling: programs run one at a time (deterministic); barriers/sendrecv hand over the baton.


class _Abort(BaseException):
    pass


class Scheduler:
    def __init__(self, n: int):
        self.n = n
        self.cond = threading.Condition()
        self.turn = 0
        self.done = [False] * n
        self.blocked: dict[int, object] = {}  # pid -> predicate that unblocks it
        self.waits: dict[int, tuple] = {}  # pid -> (instruction, kernel file:line) it waits in
        self.failed = False
        self.barrier_count = 0
        self.barrier_gen = 0
        self.mail: dict = {}

    def _runnable(self, pid: int) -> bool:
        if self.done[pid]:
            return False
        pred = self.blocked.get(pid)
        return pred is None or pred()

    def _hand_over(self, pid: int) -> None:
        for k in range(1, self.n + 1):
            q = (pid + k) % self.n
            if self._runnable(q):
                self.blocked.pop(q, None)
                self.turn = q
                self.cond.notify_all()
                return
        if not all(self.done):
            self.failed = True
            self.cond.notify_all()
            states = [
                f"program {q} waits in {' at '.join(self.waits[q])}"
                if q in self.blocked
                else f"program {q} finished"
                for q in range(self.n)
            ]
            instruction, location = self.waits[min(self.blocked)]
            raise NkiValidationError(
                "LNC deadlock: a program waits in core_barrier/sendrecv that the other programs never reach ("
                + "; ".join(states)
                + ")",
                instruction=instruction,
                location=location,
            )

    def start(self, pid: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == pid or self.failed)
            if self.failed:
                raise _Abort()

    def finish(self, pid: int) -> None:
        with self.cond:
            self.done[pid] = True
            if not all(self.done):
                self._hand_over(pid)

    def fail(self) -> None:
        with self.cond:
            self.failed = True
            self.cond.notify_all()

    def block_until(self, pid: int, pred, where: tuple) -> None:
        """Wait (handing the turn over) until pred() holds; `where` = (instruction, kernel file:line)."""
        with self.cond:
            if pred():
                return
            self.blocked[pid] = pred
            self.waits[pid] = where
            self._hand_over(pid)
            self.cond.wait_for(lambda: (self.turn == pid and pred()) or self.failed)
            if self.failed:
                raise _Abort()

    def barrier(self, pid: int, where: tuple) -> None:
        with self.cond:
            gen = self.barrier_gen
            self.barrier_count += 1
            if self.barrier_count == self.n:
                self.barrier_count = 0
                self.barrier_gen += 1
                return
        self.block_until(pid, lambda: self.barrier_gen > gen, where)
