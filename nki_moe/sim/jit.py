"""nki.jit / nki.simulate / nki_moe.sim.run: launch a kernel on NumPy (or torch CPU) arrays."""

from __future__ import annotations

import functools
import gc
import inspect
import os
import sys
import threading
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import blas, numerics, runtime
from .errors import NkiUninitializedError, NkiValidationError
from .runtime import Launch, Options, Program, Scheduler, _Abort, _tls
from .target import TARGETS, Target
from .tensor import ON_CHIP, NkiTensor, from_array
from .trace import Trace

_last: dict = {}


@dataclass
class RunResult:
    """Outputs of one emulated launch plus its trace and peak on-chip usage (max over programs)."""

    outputs: object
    trace: Trace
    target: Target
    peak_sbuf_bytes: int = 0  # per partition
    peak_psum_banks: int = 0
    programs: int = 1
    options: Options = field(default_factory=Options)

    def mac_count(self, **kw) -> int:
        return self.trace.mac_count(**kw)


def last_trace() -> Trace | None:
    """Trace of the most recent kernel call (plain calls keep only this)."""
    return _last.get("trace")


def last_result() -> RunResult | None:
    return _last.get("result")


class Kernel:
    """A jitted kernel. `kernel(*args)` runs it; `kernel[2](*args)` runs an LNC=2 launch."""

    def __init__(
        self, fn, lnc: int | None = None, *, platform_target: str | None = None, compat: str | None = None
    ):
        self.fn = fn
        self.lnc = lnc
        self.platform_target = platform_target
        self.compat = compat
        functools.update_wrapper(self, fn)

    def __getitem__(self, grid) -> Kernel:
        if isinstance(grid, tuple):
            if len(grid) != 1:
                raise NkiValidationError(
                    "NKI 2 launch grids are 1-D: use kernel[n] with n = LNC degree",
                    instruction="launch",
                    limit=1,
                    value=len(grid),
                )
            grid = grid[0]
        n = int(grid)
        if n not in (1, 2):
            raise NkiValidationError(
                "launch size must be 1 or 2 (the logical NeuronCore degree)",
                instruction="launch",
                limit="1 or 2",
                value=n,
            )
        return Kernel(self.fn, n, platform_target=self.platform_target, compat=self.compat)

    def __call__(self, *args, **kwargs):
        if runtime.current() is not None:
            return self.fn(*args, **kwargs)  # a jitted function called from a kernel is inlined
        return run(self, *args, **kwargs).outputs

    def with_schedule(self, *edges, **kw) -> Kernel:
        """Scheduling hints have no functional effect."""
        return self

    def __repr__(self) -> str:
        return f"<nki kernel {self.fn.__qualname__}{f'[{self.lnc}]' if self.lnc else ''}>"


def jit(func=None, mode: str = "auto", **kwargs):
    """`@nki.jit` / `@nki.jit()` / `nki.jit(f)`. platform_target= is accepted with a warning (0.2 style)."""
    platform_target = kwargs.pop("platform_target", None)
    for k in kwargs:
        warnings.warn(f"nki.jit: ignoring option {k}={kwargs[k]!r} in the emulator", stacklevel=2)

    def wrap(fn):
        compat = None
        if platform_target is not None:
            warnings.warn(
                f"nki.jit(platform_target={platform_target!r}) is NKI 0.2 syntax (NKI 0.3 raises); the "
                "emulator accepts it, runs in 0.2-compat mode and uses it as the default target",
                stacklevel=3,
            )
            compat = "0.2"
        if isinstance(fn, Kernel):
            return fn
        return Kernel(fn, platform_target=platform_target, compat=compat)

    return wrap(func) if func is not None else wrap


def simulate(kernel, **opts):
    """nki.simulate(kernel)(*args) runs the kernel in the emulator and returns NumPy arrays."""
    k = kernel if isinstance(kernel, Kernel) else Kernel(kernel)

    def call(*args, **kwargs):
        return run(k, *args, **opts, **kwargs).outputs

    return call


# ---- argument conversion -----------------------------------------------------------------------------


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _torch_to_numpy(x) -> np.ndarray:
    import torch  # lazy: torch is optional for the emulator

    t = x.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(numerics.np_dtype("bfloat16"))
    return t.numpy()


def _numpy_to_torch(a: np.ndarray):
    import torch

    if a.dtype == numerics.np_dtype("bfloat16"):
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a))


class _Args:
    """Wraps kernel arguments as HBM tensors and writes in-place updates back afterwards."""

    def __init__(self, launch: Launch, buffer: str):
        self.launch = launch
        self.buffer = buffer
        self.inputs: list[tuple] = []  # (tensor, original, original_numpy)
        self.torch = False

    def wrap(self, x, name: str):
        if isinstance(x, (list, tuple)):
            return type(x)(self.wrap(v, f"{name}[{i}]") for i, v in enumerate(x))
        if isinstance(x, dict):
            return {k: self.wrap(v, f"{name}.{k}") for k, v in x.items()}
        orig = x
        if _is_torch(x) and hasattr(x, "detach"):
            self.torch = True
            x = _torch_to_numpy(x)
        if isinstance(x, np.ndarray):
            if x.dtype in (np.float64, np.int64, np.uint64, np.complex128):
                raise NkiValidationError(
                    f"kernel argument '{name}' has dtype {x.dtype}, which NKI does not "
                    "support; pass float32/int32 (or bf16/fp8 via ml_dtypes)",
                    instruction="launch",
                    operand=name,
                    value=str(x.dtype),
                )
            self.launch.serial += 1
            t = from_array(x, self.buffer, name, self.launch.serial)
            self.inputs.append((t, orig, x))
            return t
        return x

    def write_back(self) -> None:
        for t, orig, arr in self.inputs:
            st = t.st
            if not st.written:
                continue
            if _is_torch(orig):
                with _no_grad():
                    orig.copy_(_numpy_to_torch(_to_numpy_out(t)).reshape(orig.shape))
            elif not np.shares_memory(st.raw, arr):
                arr[...] = _to_numpy_out(t).reshape(arr.shape)


def _no_grad():
    import torch

    return torch.no_grad()


def _to_numpy_out(t: NkiTensor) -> np.ndarray:
    vals = np.array(t._nd(t._arr()))
    want = numerics.np_dtype(t.dtype)
    if vals.dtype != want:
        vals = numerics.cast(vals, t.dtype).astype(want) if numerics.is_float(t.dtype) else vals.astype(want)
    return vals


def _collect_outputs(v, prog: Program, loc: str, torch_out: bool):
    """Returned tensors -> NumPy arrays (or torch tensors); errors point at `loc`, the kernel's return."""
    if isinstance(v, (list, tuple)):
        return type(v)(_collect_outputs(x, prog, loc, torch_out) for x in v)
    if isinstance(v, dict):
        return {k: _collect_outputs(x, prog, loc, torch_out) for k, x in v.items()}
    if not isinstance(v, NkiTensor):
        return v
    st = v.st
    name = st.name or "output"
    wrong = None
    if st.buffer in ON_CHIP:
        wrong = "kernels must return HBM tensors (allocate outputs with buffer=nl.shared_hbm)"
    elif st.buffer == "private_hbm" and not st.is_input:
        if prog.compat == "0.2":
            warnings.warn(
                f"{loc}: returning an nl.hbm tensor; NKI 0.3 requires nl.shared_hbm outputs", stacklevel=4
            )
        else:
            wrong = "returned tensors must be allocated in nl.shared_hbm (NKI 0.3)"
    if wrong is not None:
        raise NkiValidationError(
            wrong, instruction="return", operand=name, limit="shared_hbm", value=st.buffer, location=loc
        )
    if st.fresh or st.unfilled:
        st.materialize()  # pending poison of never-written elements becomes observable now
    if prog.strict and st.taint is not None:
        m = np.asarray(v.mask_get(st.taint))
        if m.any():
            first = tuple(int(i) for i in np.argwhere(m)[0])
            raise NkiUninitializedError(
                f"returned tensor has {int(m.sum())} of {m.size} elements never written (first at index "
                f"{first}, allocated at {st.loc[0]}:{st.loc[1]})",
                instruction="return",
                operand=name,
                location=loc,
            )
    if st.pooled and not torch_out and st.raw.dtype == numerics.np_dtype(v.dtype) and v.covers_storage():
        # Hand the storage itself out instead of copying it (the run is over; nothing else uses it). A
        # second return of the same tensor gets a copy, as `pooled` is now off.
        st.pooled = False
        return st.raw.reshape(v.shape)
    out = _to_numpy_out(v).reshape(v.shape)
    return _numpy_to_torch(out) if torch_out else out


# ---- running -------------------------------------------------------------------------------------


_allocator_primed = False
PAUSE_GC = True  # pause the cyclic garbage collector during a launch (see run)


def _prime_allocator() -> None:
    """Once per process: free one 30 MiB block so glibc malloc raises its dynamic mmap/trim thresholds.

    Kernels churn through many 1 MiB-class temporaries (tiles, fp32 widenings). Below glibc's initial
    128 KiB mmap threshold policy those are mmapped or trimmed back to the OS on free, so every one is
    page-faulted afresh, which costs more than the arithmetic. Freeing an mmapped block is glibc's own
    signal to keep blocks up to that size on the heap (threshold := block size, trim := 2x); any NumPy
    program that frees a large array ends up in the same state. No effect on other allocators.
    """
    global _allocator_primed
    if not _allocator_primed:
        _allocator_primed = True
        np.empty(30 << 20, np.uint8)  # allocated by mmap and released immediately


def _call_noting_return(fn, args, kwargs) -> tuple:
    """fn(*args, **kwargs) and the file:line of the `return` it left by (its def line if unknown).

    A profile hook catches the kernel's own frame on its first call event and removes itself at once (no
    cost for the rest of the run); a finished frame keeps the line it returned from. Skipped when a
    profiler is already installed, so it is never displaced.
    """
    code = getattr(fn, "__code__", None)
    if code is None:
        return fn(*args, **kwargs), "<unknown>"
    here = []

    def first_call(frame, event, arg):
        if event == "call":
            sys.setprofile(None)
            if frame.f_code is code:
                here.append(frame)

    hooked = sys.getprofile() is None
    if hooked:
        sys.setprofile(first_call)
    try:
        ret = fn(*args, **kwargs)
    finally:
        if hooked and sys.getprofile() is first_call:
            sys.setprofile(None)
    line = here[0].f_lineno if here else code.co_firstlineno
    # The finished kernel frame still holds every tile the kernel bound to a local, and it points back at
    # this frame (f_back), whose `here` holds it: a reference cycle. Dropped now, the tiles die by reference
    # counting and their buffers go back to the pool for the next launch instead of waiting for the GC.
    here.clear()
    return ret, f"{code.co_filename}:{line}"


def _run_program(launch: Launch, pid: int, fn, args, kwargs):
    """Run one program; returns (Program, returned value, file:line of the kernel's return)."""
    prog = Program(launch, pid)
    launch.programs.append(prog)
    _tls.prog = prog
    try:
        # One errstate for the whole program instead of one per emulated operation.
        with numerics.fp_errors_ignored():
            return (prog, *_call_noting_return(fn, args, kwargs))
    finally:
        _tls.prog = None


def run(
    kernel,
    *args,
    target: str | None = None,
    lnc: int | None = None,
    precise: bool | None = None,
    strict: bool | None = None,
    compat: str | None = None,
    **kwargs,
) -> RunResult:
    """Run a kernel in the emulator; returns outputs, trace and peak SBUF/PSUM usage.

    Args:
        kernel: an @nki.jit kernel (or plain function); `kernel[2]` or lnc=2 for an LNC=2 launch.
        target: 'trn1'|'trn2'|'trn3' (or gen2/3/4); default $NEURON_PLATFORM_TARGET_OVERRIDE, then trn2.
        precise: store bf16/fp8 as such (True, default) or widen to fp32 (False).
        strict: uninitialised-data and affine_range-independence checks (default on).
        compat: '0.3' (default) or '0.2' (accepts 0.2-era spellings).
    """
    k = kernel if isinstance(kernel, Kernel) else Kernel(kernel)
    if runtime.current() is not None:
        raise NkiValidationError(
            "nki_moe.sim.run cannot be nested inside a running kernel", instruction="launch"
        )
    base = runtime.default_options()
    opts = Options(
        target=target if target is not None else base.target,
        precise=precise if precise is not None else base.precise,
        strict=strict if strict is not None else base.strict,
        compat=compat or k.compat or base.compat,
    ).resolved(k.platform_target)
    n = int(lnc or k.lnc or 1)
    ndim = 1 if (lnc or k.lnc) else 0
    tgt = TARGETS[opts.target]
    if n > 2 or n < 1:
        raise NkiValidationError("LNC degree must be 1 or 2", instruction="launch", limit="1 or 2", value=n)
    if n == 2 and tgt.nc_version < 3:
        raise NkiValidationError(
            "LNC=2 needs trn2 or trn3", instruction="launch", limit="trn2/trn3", value=tgt.name
        )
    launch = Launch(opts, tgt, n, ndim, Trace())
    _prime_allocator()
    old_precise = numerics.precise()
    numerics.set_precise(opts.precise)
    # The cyclic GC is paused for the launch: every instruction makes a handful of small objects (views,
    # trace records), so generation-0 collections run every ~100 instructions and, as the trace grows, full
    # collections walk the whole heap; nothing an emulated kernel frees depends on them (tiles and buffers
    # are freed by reference counting). Cycles made during the launch are collected once it is over.
    gc_on = PAUSE_GC and gc.isenabled()
    if gc_on:
        gc.disable()
    # The objects that exist before the launch go to the GC's permanent generation for its duration, so
    # the capacity check's referrer scan (tensor._only_held_by, on an overflow) walks only what the launch
    # made. A tile the scan then misses (one stored in a container older than the launch) is set aside at
    # its rebinding (MemTracker.set_aside); a later use is checked against the capacity at every moment
    # since, so the accounting stays exact for every tile the kernel uses again. Skipped inside a nested
    # launch and when the host froze objects.
    froze = gc.get_freeze_count() == 0
    if froze:
        gc.freeze()
    try:
        conv = _Args(launch, "shared_hbm" if n > 1 else "private_hbm")
        names = _param_names(k.fn, len(args))
        wargs = [conv.wrap(a, nm) for a, nm in zip(args, names)]
        wkw = {key: conv.wrap(v, key) for key, v in kwargs.items()}
        with blas.single_threaded():
            if n == 1:
                results = [_run_program(launch, 0, k.fn, wargs, wkw)]
            else:
                results = _run_lnc(launch, k.fn, wargs, wkw)
        prog0, ret, ret_loc = results[0]
        outputs = _collect_outputs(ret, prog0, ret_loc, conv.torch)
        conv.write_back()
    finally:
        numerics.set_precise(old_precise)
        if froze:
            gc.unfreeze()
        if gc_on:
            gc.enable()
    res = RunResult(
        outputs,
        launch.trace,
        tgt,
        max(p.mem.peak_sbuf for p in launch.programs),
        max(p.mem.peak_psum for p in launch.programs),
        n,
        opts,
    )
    _last["trace"] = launch.trace
    _last["result"] = res
    return res


@functools.lru_cache(maxsize=256)
def _param_names_cached(fn, n: int) -> tuple:
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = []
    return tuple(params[i] if i < len(params) else f"arg{i}" for i in range(n))


def _param_names(fn, n: int) -> tuple:
    try:
        return _param_names_cached(fn, n)
    except TypeError:  # unhashable callable
        return tuple(f"arg{i}" for i in range(n))


class _Worker:
    """A reusable daemon thread that runs one program of an LNC launch at a time.

    Starting two threads per LNC=2 launch costs more than a small decode kernel's instructions; an idle
    worker waits on its own lock for the next program instead. A worker goes back to the idle list only
    when its program has returned (normally or by an error), so a launch never shares one.
    """

    _idle: list = []
    _lock = threading.Lock()

    def __init__(self):
        self.task = None
        self.ready = threading.Semaphore(0)
        self.done = threading.Event()
        threading.Thread(target=self._loop, name="nki-program-worker", daemon=True).start()

    @classmethod
    def get(cls) -> _Worker:
        with cls._lock:
            if cls._idle:
                return cls._idle.pop()
        return cls()

    def submit(self, task) -> None:
        self.task = task
        self.done.clear()
        self.ready.release()

    def wait(self) -> None:
        self.done.wait()
        with self._lock:
            self._idle.append(self)

    def _loop(self) -> None:
        while True:
            self.ready.acquire()
            task, self.task = self.task, None
            try:
                task()
            finally:
                self.done.set()

    @classmethod
    def _forget_after_fork(cls) -> None:
        # A forked child has none of the parent's threads: idle workers there would never run a program.
        cls._idle = []
        cls._lock = threading.Lock()


os.register_at_fork(after_in_child=_Worker._forget_after_fork)


def _run_lnc(launch: Launch, fn, args, kwargs) -> list:
    """Programs run one at a time in pid order; core_barrier/sendrecv hand over deterministically.

    Program 0 runs in the calling thread, the others in reusable worker threads (_Worker).
    """
    n = launch.nprog
    sched = Scheduler(n)
    launch.sched = sched
    results: list = [None] * n
    errors: list = [None] * n

    def body(pid: int) -> None:
        try:
            sched.start(pid)
            results[pid] = _run_program(launch, pid, fn, args, kwargs)
            sched.finish(pid)
        except _Abort:
            pass
        except BaseException as e:  # noqa: BLE001 - re-raised in the launching thread
            errors[pid] = e
            sched.fail()

    workers = [_Worker.get() for _ in range(1, n)]
    for pid, w in enumerate(workers, start=1):
        w.submit(functools.partial(body, pid))
    try:
        body(0)
    finally:
        for w in workers:
            w.wait()
    for e in errors:
        if e is not None:
            raise e
    return results
