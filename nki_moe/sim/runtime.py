"""Per-launch and per-program emulator state: options, loop stack, SBUF/PSUM capacity, LNC scheduling."""

from __future__ import annotations

import contextlib
import linecache
import os
import re
import threading
from dataclasses import dataclass, field, replace

import numpy as np

from .errors import NkiCapacityError, NkiValidationError
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
    """Accounting entry of one on-chip allocation (kept apart from the data so GC can free it)."""

    __slots__ = ("buffer", "nbytes", "banks", "name", "loc", "shape", "dtype", "live", "__weakref__")

    def __init__(self, buffer: str, nbytes: int, banks: int, name: str, loc, shape: tuple, dtype: str):
        self.buffer = buffer
        self.nbytes = nbytes
        self.banks = banks
        self.name = name
        self.loc = loc
        self.shape = shape
        self.dtype = dtype
        self.live = False

    def operand(self) -> str:
        """Its `name=`, else the variable the kernel line assigns it to, else what it is (unnamed)."""
        return self.name or _guess_var_name(self.loc) or f"unnamed {self.buffer} tile"

    def label(self) -> str:
        unit = f"{self.banks} bank(s)" if self.buffer == "psum" else f"{self.nbytes} B/partition"
        shape = "x".join(str(n) for n in self.shape)
        where = f"{self.loc[0]}:{self.loc[1]}"
        return f"'{self.operand()}' ([{shape}] {self.dtype} {self.buffer}, {unit}, {where})"


_ASSIGN = re.compile(r"^\s*([A-Za-z_][\w\.]*(?:\[[^\]]*\])?)\s*(?::[^=]+)?=[^=]")


def _guess_var_name(loc) -> str | None:
    line = linecache.getline(loc[0], loc[1]) if loc else ""
    m = _ASSIGN.match(line)
    return m.group(1) if m else None


class MemTracker:
    """Live SBUF bytes per partition and PSUM banks of one program, against the target's capacity."""

    def __init__(self, tgt: Target):
        self.tgt = tgt
        self.sbuf = 0
        self.psum = 0
        self.peak_sbuf = 0
        self.peak_psum = 0
        # Accounting records only (they hold no data), so a plain set is fine; release() removes them.
        self.live: set = set()

    def add(self, rec: AllocRecord, instruction: str = "allocation") -> None:
        if rec.buffer == "sbuf":
            if self.sbuf + rec.nbytes > self.tgt.sbuf_usable_bytes:
                self._overflow(
                    rec,
                    "SBUF bytes per partition",
                    self.tgt.sbuf_usable_bytes,
                    self.sbuf + rec.nbytes,
                    instruction,
                )
            self.sbuf += rec.nbytes
            self.peak_sbuf = max(self.peak_sbuf, self.sbuf)
        else:
            if self.psum + rec.banks > self.tgt.psum_banks:
                self._overflow(
                    rec,
                    "PSUM banks (2 KiB per partition each)",
                    self.tgt.psum_banks,
                    self.psum + rec.banks,
                    instruction,
                )
            self.psum += rec.banks
            self.peak_psum = max(self.peak_psum, self.psum)
        rec.live = True
        self.live.add(rec)

    def release(self, rec: AllocRecord) -> None:
        if not rec.live:
            return
        rec.live = False
        if rec.buffer == "sbuf":
            self.sbuf -= rec.nbytes
        else:
            self.psum -= rec.banks
        self.live.discard(rec)

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

    def revive(self, rec: AllocRecord, instruction: str) -> None:
        """A tile used after the iteration that created it ended is live again until the current one ends."""
        self.mem.add(rec, instruction)
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
