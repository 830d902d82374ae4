"""Emulated `nki.isa`: enums, DMA/PE/register/multi-core instructions, plus the compute ops (isa_compute)."""

from __future__ import annotations

import collections
import itertools

import numpy as np

from . import runtime
from .dma import dma_copy, dma_transpose, enum_arg
from .enums import (
    constants,  # noqa: F401 (the module nki.isa.constants, registered by install())
    dge_mode,
    dma_engine,
    engine,
    matmul_perf_mode,
    nc_version,
    oob_mode,
    reduce_cmd,
)
from .errors import NkiValidationError
from .instr import Instr, reject_kwargs
from .matmul import nc_matmul, nc_transpose
from .tensor import NkiTensor
from .unsupported import module_getattr

tensor_engine = engine.tensor
vector_engine = engine.vector
scalar_engine = engine.scalar
gpsimd_engine = engine.gpsimd
sync_engine = engine.sync
unknown_engine = engine.unknown


def get_nc_version() -> nc_version:
    """NeuronCore version of the current target (gen2 = trn1, gen3 = trn2, gen4 = trn3)."""
    return nc_version(runtime.current_target().nc_version)


# ---- registers ---------------------------------------------------------------------------------------


_REGISTER_IDS = itertools.count()


class VirtualRegister:
    """A 32-bit sequencer register (value known at run time in the emulator).

    ``rid`` identifies it in the trace: instructions note the registers they read and write
    (``info['reg_reads']`` / ``info['reg_writes']``) so the cost model orders them like memory accesses.
    """

    __slots__ = ("value", "rid")

    def __init__(self, value: int = 0):
        self.value = int(np.int32(value)) if -(2**31) <= int(value) < 2**31 else int(np.uint32(value))
        self.rid = next(_REGISTER_IDS)

    def _nki_register_value(self) -> int:
        return self.value

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __bool__(self) -> bool:
        return self.value != 0

    def __repr__(self) -> str:
        return f"VirtualRegister({self.value})"


def register_alloc(x=None) -> VirtualRegister:
    """A new register, initialised from an int (or a 1-element tensor)."""
    if isinstance(x, NkiTensor):
        reg = VirtualRegister(0)
        register_load(reg, x)
        return reg
    return VirtualRegister(0 if x is None else int(x))


def register_move(dst: VirtualRegister, src) -> None:
    with Instr("register_move", "sp") as ins:
        if not isinstance(dst, VirtualRegister):
            ins.fail("dst must be a register", "dst")
        dst.value = ins.scalar_value("src", src)
        ins.reg_write(dst)


def register_load(dst: VirtualRegister, src: NkiTensor) -> None:
    with Instr("register_load", "sp") as ins:
        ins.tensor("src", src, buffers=("sbuf", "hbm"), check_start=False)
        dst.value = ins.scalar_value("src", src)
        ins.reg_write(dst)


def register_store(dst: NkiTensor, src: VirtualRegister) -> None:
    with Instr("register_store", "sp") as ins:
        ins.tensor("dst", dst, buffers=("sbuf", "hbm"), check_start=False)
        if dst.size != 1:
            ins.fail("register_store needs a 1-element tensor", "dst", limit=1, value=dst.shape)
        ins.write("dst", dst, np.array([[ins.scalar_value("src", src)]]), taint=None)


# ---- multi-core ------------------------------------------------------------------------------------


def core_barrier(data, cores=(0, 1), engine=engine.gpsimd, name=None, **kw) -> None:
    """Wait until every program of the LNC launch reaches this barrier."""
    with Instr("core_barrier", "pool") as ins:
        reject_kwargs(ins, kw)
        ins.tensor("data", data, buffers=("hbm",), check_start=False)
        if tuple(cores) != tuple(range(ins.prog.launch.nprog)):
            ins.fail(
                "cores must list every program of the launch",
                "cores",
                limit=tuple(range(ins.prog.launch.nprog)),
                value=tuple(cores),
            )
        if ins.prog.launch.nprog > 1:
            ins.prog.launch.sched.barrier(ins.prog.pid, (ins.opcode, ins.location))


def sendrecv(src, dst, send_to_rank, recv_from_rank, pipe_id, dma_engine=dma_engine.dma, name=None, **kw):
    """LNC2 SBUF-to-SBUF exchange: send src to `send_to_rank`, receive dst from `recv_from_rank`."""
    with Instr("sendrecv", "dma") as ins:
        reject_kwargs(ins, kw, ("use_gpsimd_dma",))
        launch = ins.prog.launch
        if launch.nprog < 2:
            ins.fail(
                "sendrecv needs an LNC=2 launch (kernel[2](...))",
                "send_to_rank",
                limit=">= 2 programs",
                value=launch.nprog,
            )
        ins.tensors(("sbuf",), check_start=False, src=src, dst=dst)
        if src.shape != dst.shape or src.dtype != dst.dtype:
            ins.fail(
                "src and dst must have the same shape and dtype",
                "dst",
                limit=(src.shape, src.dtype),
                value=(dst.shape, dst.dtype),
            )
        pid = ins.prog.pid
        sched = launch.sched
        vals = np.array(ins.read_raw("src", src))  # a copy: src may be rewritten before it is received
        # One FIFO per (sender, receiver, pipe): a second send before the first is received queues behind
        # it (a dict slot would overwrite it), so messages arrive in the order they were sent.
        sched.mail.setdefault((pid, int(send_to_rank), pipe_id), collections.deque()).append(
            (vals, ins.last_taint)
        )
        key = (int(recv_from_rank), pid, pipe_id)
        sched.block_until(pid, lambda: bool(sched.mail.get(key)), (ins.opcode, ins.location))
        got, taint = sched.mail[key].popleft()
        ins.write("dst", dst, got, taint=taint, raw=True)
        ins.note(dma_bytes=int(got.nbytes), queue="sendrecv")


__all__ = [
    "NkiValidationError",
    "VirtualRegister",
    "core_barrier",
    "dge_mode",
    "dma_copy",
    "dma_engine",
    "dma_transpose",
    "engine",
    "enum_arg",
    "get_nc_version",
    "gpsimd_engine",
    "matmul_perf_mode",
    "nc_matmul",
    "nc_transpose",
    "nc_version",
    "oob_mode",
    "reduce_cmd",
    "register_alloc",
    "register_load",
    "register_move",
    "register_store",
    "scalar_engine",
    "sendrecv",
    "sync_engine",
    "tensor_engine",
    "unknown_engine",
    "vector_engine",
]

try:  # the compute instructions (OPS's module)
    from .isa_compute import *  # noqa: F401,F403,E402
    from .isa_compute import __all__ as _compute_all  # noqa: E402

    __all__ += list(_compute_all)
except ModuleNotFoundError as e:  # pragma: no cover - only while isa_compute.py is being written
    if e.name != f"{__package__}.isa_compute":
        raise

from .isa_extra import dma_compute, nonzero_with_count  # noqa: E402

__all__ += ["dma_compute", "nonzero_with_count"]

__getattr__ = module_getattr("nki.isa", globals())  # documented-but-not-emulated names (unsupported.py)
