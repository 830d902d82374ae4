"""Emulated `nki.language`: dtypes (strings), buffers, tensor creation, ranges, SPMD ids, tile_size, op
objects, and the 0.3 high-level helpers (nl.load/store/matmul/exp/add/...) built on nisa instructions."""

from __future__ import annotations

import math

import numpy as np

from . import alu, isa, numerics, runtime
from .alu import OPS as _OPS
from .errors import NkiValidationError
from .instr import Instr
from .tensor import MemoryRegion, NkiTensor, allocate, ds  # noqa: F401 (re-exported API)
from .unsupported import module_getattr

# ---- dtypes: NKI 2 dtypes are plain strings --------------------------------------------------------
bool_ = "bool_"
int8, int16, int32 = "int8", "int16", "int32"
uint8, uint16, uint32 = "uint8", "uint16", "uint32"
float16, bfloat16, tfloat32, float32 = "float16", "bfloat16", "tfloat32", "float32"
float8_e4m3, float8_e4m3fn, float8_e5m2 = "float8_e4m3", "float8_e4m3fn", "float8_e5m2"
float8_e8m0fnu = "float8_e8m0fnu"
float8_e5m2_x4, float8_e4m3fn_x4, float4_e2m1fn_x4 = "float8_e5m2_x4", "float8_e4m3fn_x4", "float4_e2m1fn_x4"


class _FloatInfo:
    def __init__(self, lo: float, hi: float):
        self.min, self.max = lo, hi


fp32 = _FloatInfo(numerics.FP32_MIN, numerics.FP32_MAX)

# ---- buffers ---------------------------------------------------------------------------------------
sbuf = MemoryRegion.sbuf
psum = MemoryRegion.psum
private_hbm = MemoryRegion.private_hbm
hbm = MemoryRegion.private_hbm
shared_hbm = MemoryRegion.shared_hbm


def is_hbm(buffer) -> bool:
    return str(getattr(buffer, "value", buffer)) in ("private_hbm", "shared_hbm", "hbm")


def is_sbuf(buffer) -> bool:
    return str(getattr(buffer, "value", buffer)) == "sbuf"


def is_psum(buffer) -> bool:
    return str(getattr(buffer, "value", buffer)) == "psum"


def is_on_chip(buffer) -> bool:
    return is_sbuf(buffer) or is_psum(buffer)


class NKIObject:
    """Base class for user objects a kernel passes around (records of sizes, flags, tiles).

    The real base class constructs from keyword arguments, whatever the subclass declares: AWS's production
    kernels ([NKILIB]) build ``@dataclass`` subclasses with fields that are not annotated, leave annotated
    fields out, or subclass without ``@dataclass`` and still pass keywords. So every subclass that does not
    define its own ``__init__`` gets :meth:`__init__` below, which ``@dataclass`` then keeps (it never
    replaces an ``__init__`` the class already has): positional arguments fill the declared fields in order,
    keywords set attributes, class-level defaults (and dataclass default factories) fill the rest, and
    ``__post_init__`` runs when defined. An annotated field with no default that is never given stays unset
    (reading it raises AttributeError naming it), as the kernels set such fields later.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            cls.__init__ = NKIObject.__init__

    def __init__(self, *args, **kwargs):
        cls = type(self)
        fields = _declared_fields(cls)
        if len(args) > len(fields):
            raise TypeError(
                f"{cls.__name__}() takes {len(fields)} positional field(s) ({', '.join(fields)}), "
                f"{len(args)} given"
            )
        for name, value in zip(fields, args):
            if name in kwargs:
                raise TypeError(f"{cls.__name__}() got field {name!r} both by position and by keyword")
            kwargs[name] = value
        dc_fields = getattr(cls, "__dataclass_fields__", {})
        for name, f in dc_fields.items():
            factory = getattr(f, "default_factory", None)
            if name not in kwargs and callable(factory) and type(factory).__name__ != "_MISSING_TYPE":
                kwargs[name] = factory()
        for name, value in kwargs.items():
            object.__setattr__(self, name, value)  # as dataclass's own __init__ does, frozen ones too
        post = getattr(self, "__post_init__", None)
        if callable(post):
            post()


def _declared_fields(cls) -> list[str]:
    """Field names in declaration order: dataclass fields, else annotations along the MRO (base first)."""
    dc = getattr(cls, "__dataclass_fields__", None)
    if dc:
        return list(dc)
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        for name in klass.__dict__.get("__annotations__", {}):
            if name not in names:
                names.append(name)
    return names


def par_dim(n: int) -> int:
    """NKI 1 partition-dim marker; NKI 2 always uses dim 0, so this is the identity."""
    return n


# ---- tensor creation -------------------------------------------------------------------------------


def ndarray(shape, dtype, buffer=MemoryRegion.sbuf, name: str = "", address=None) -> NkiTensor:
    """Uninitialised tensor (poisoned: NaN / integer max; tracked as never-written in strict mode)."""
    return allocate(shape, dtype, buffer, name, address)


def _filled(shape, value, dtype, buffer, name, what) -> NkiTensor:
    buf_name = str(getattr(buffer, "value", buffer))
    if buf_name in ("sbuf", "psum"):
        t = allocate(shape, dtype, buffer, name, instruction=what)
        isa.memset(dst=t, value=value)
        return t
    return allocate(shape, dtype, buffer, name, instruction=what, fill=value)


def zeros(shape, dtype, buffer=MemoryRegion.sbuf, name: str = "") -> NkiTensor:
    return _filled(shape, 0, dtype, buffer, name, "zeros")


def ones(shape, dtype, buffer=MemoryRegion.sbuf, name: str = "") -> NkiTensor:
    return _filled(shape, 1, dtype, buffer, name, "ones")


def full(shape, fill_value, dtype, buffer=MemoryRegion.sbuf, name: str = "") -> NkiTensor:
    return _filled(shape, fill_value, dtype, buffer, name, "full")


def zeros_like(x: NkiTensor, dtype=None, buffer=None, name: str = "") -> NkiTensor:
    return zeros(x.shape, dtype or x.dtype, buffer or x.buffer, name)


def ones_like(x: NkiTensor, dtype=None, buffer=None, name: str = "") -> NkiTensor:
    return ones(x.shape, dtype or x.dtype, buffer or x.buffer, name)


def full_like(x: NkiTensor, fill_value, dtype=None, buffer=None, name: str = "") -> NkiTensor:
    return full(x.shape, fill_value, dtype or x.dtype, buffer or x.buffer, name)


def empty_like(x: NkiTensor, dtype=None, buffer=None, name: str = "") -> NkiTensor:
    return allocate(x.shape, dtype or x.dtype, buffer or x.buffer, name)


def rand(shape, dtype, buffer=MemoryRegion.sbuf, name: str = "") -> NkiTensor:
    prog = runtime.require("nl.rand")
    t = allocate(shape, dtype, buffer, name, fill=0)
    vals = prog.rng.random(t.st.nelem, dtype=np.float32)
    t.st.raw[...] = numerics.cast(vals, t.dtype)
    return t


def shared_constant(constant, dtype=None) -> NkiTensor:
    """A NumPy array (or .npy path) placed in shared HBM."""
    arr = np.load(constant) if isinstance(constant, str) else np.asarray(constant)
    dtype = numerics.normalize_dtype(dtype if dtype is not None else arr.dtype)
    t = allocate(arr.shape, dtype, MemoryRegion.shared_hbm, "shared_constant", fill=0)
    t.st.raw[...] = numerics.cast(arr.reshape(-1), dtype)
    return t


def shared_identity_matrix(n: int, dtype="uint8", dst=None) -> NkiTensor:
    """An n x n identity matrix in SBUF (0/1 in `dtype`)."""
    t = dst if dst is not None else allocate((n, n), dtype, MemoryRegion.sbuf, "identity", fill=0)
    with Instr("shared_identity_matrix", "pool") as ins:
        ins.write("dst", t, np.eye(n, dtype=np.float32), taint=None)
    return t


def device_print(prefix: str, tensor: NkiTensor) -> None:
    vals = np.array(tensor._nd(tensor._arr()))
    print(prefix, vals)


# ---- iteration ------------------------------------------------------------------------------------


def affine_range(start, stop=None, step=1):
    """Iterations without loop-carried dependencies (checked in strict mode); Python-range semantics."""
    return runtime.loop_range("affine", start, stop, step)


def sequential_range(start, stop=None, step=1):
    return runtime.loop_range("sequential", start, stop, step)


def static_range(start, stop=None, step=1):
    return runtime.loop_range("static", start, stop, step)


def dynamic_range(start, stop=None, step=1):
    """Runtime loop on registers; the emulator knows register values, so it runs like sequential_range."""

    def val(x):
        return int(x._nki_register_value()) if hasattr(x, "_nki_register_value") else x

    prog = runtime.current()
    if prog is not None:  # the loop's first instruction waits for the registers of its bounds
        for x in (start, stop):
            if hasattr(x, "rid"):
                prog.pending_reg_reads.append(x.rid)
    return runtime.loop_range("sequential", val(start), None if stop is None else val(stop), step)


def _unsupported_nki1(name):
    def f(*a, **k):
        raise NkiValidationError(
            f"nl.{name} is NKI 1 only; NKI 2 uses slices and .ap() access patterns", instruction=name
        )

    return f


arange = _unsupported_nki1("arange")


class _Mgrid:
    def __getitem__(self, key):
        _unsupported_nki1("mgrid")()


mgrid = _Mgrid()

# ---- SPMD ---------------------------------------------------------------------------------------------


def program_id(axis: int = 0) -> int:
    prog = runtime.require("nl.program_id")
    if axis != 0 and not (axis == 0 or prog.launch.ndim == 0):
        raise NkiValidationError(
            "the NKI 2 launch grid is 1-D", instruction="program_id", operand="axis", limit=0, value=axis
        )
    return prog.pid if axis == 0 else 0


def num_programs(axes: int = 0) -> int:
    return runtime.require("nl.num_programs").launch.nprog


def program_ndim() -> int:
    return runtime.require("nl.program_ndim").launch.ndim


# ---- tile_size: constants follow the target of the running kernel (or the default target) -----------


def _of_target(get) -> property:
    """A tile_size constant read from the running kernel's target (or the default target)."""
    return property(lambda self: get(runtime.current_target()))


class _TileSize:
    pmax = 128
    psum_fmax = 512
    psum_bank_fmax = 512
    psum_bank_fmax_bytes = 2048
    gemm_stationary_fmax = 128
    gemm_moving_fmax = 512
    bn_stats_fmax = 512
    psum_min_align = 4
    sbuf_min_align = 1

    total_available_sbuf_size = _of_target(lambda t: t.sbuf_usable_bytes)
    sbuf_fmax_bytes = _of_target(lambda t: t.sbuf_usable_bytes)
    sbuf_fmax = _of_target(lambda t: t.sbuf_usable_bytes // 4)
    sbuf_size_bytes = _of_target(lambda t: t.sbuf_bytes * t.partitions)
    psum_num_banks = _of_target(lambda t: t.psum_banks)
    gemm_moving_fmax_fp32 = _of_target(lambda t: t.matmul_n_fp32)

    def __repr__(self) -> str:
        return f"tile_size(target={runtime.current_target().name})"


tile_size = _TileSize()

# ---- op objects (alu.py) ---------------------------------------------------------------------------
globals().update(_OPS)

# ---- 0.3 high-level helpers, built on nisa instructions -------------------------------------------


def _new_like(shape, dtype, buffer=MemoryRegion.sbuf) -> NkiTensor:
    return allocate(shape, dtype, buffer, instruction="high-level op")


def load(src: NkiTensor, dtype=None) -> NkiTensor:
    """HBM -> new SBUF tile (dim 0 becomes the partition dim)."""
    shape = src.shape if src.ndim >= 2 else (1,) + tuple(src.shape)
    t = _new_like(shape, dtype or src.dtype)
    isa.dma_copy(dst=t, src=src)
    return t


def store(dst: NkiTensor, value: NkiTensor) -> None:
    isa.dma_copy(dst=dst, src=value)


def load_transpose2d(src: NkiTensor, dtype=None) -> NkiTensor:
    t = _new_like((src.shape[1], src.shape[0]), dtype or src.dtype)
    isa.dma_transpose(dst=t, src=src)
    return t


def _copy(x: NkiTensor, dtype=None) -> NkiTensor:
    """nl.copy(x, dtype): tensor_copy into a new SBUF tile (nl.copy itself is the op object)."""
    t = _new_like(x.shape, dtype or x.dtype)
    isa.tensor_copy(dst=t, src=x)
    return t


def transpose(x: NkiTensor, dtype=None) -> NkiTensor:
    """PE transpose into a new PSUM tile."""
    t = _new_like((x.shape[1], x.shape[0]), dtype or x.dtype, MemoryRegion.psum)
    isa.nc_transpose(dst=t, data=x, engine=isa.engine.tensor)
    return t


def matmul(x: NkiTensor, y: NkiTensor, transpose_x: bool = False) -> NkiTensor:
    """x.T @ y (transpose_x=True, x is [K, M]) or x @ y (x is [M, K]); fp32 result in a new PSUM tile."""
    if not transpose_x:
        xt = transpose(x)
        x = _copy(xt)
    K, M = x.shape
    t = _new_like((M, y.shape[1]), "float32", MemoryRegion.psum)
    isa.nc_matmul(dst=t, stationary=x, moving=y)
    return t


def _is_tensor(v) -> bool:
    return isinstance(v, NkiTensor)


def _binary(op, x, y, dtype=None):
    if _is_tensor(x) and _is_tensor(y):
        out_dt = dtype or numerics.promote(x.dtype, y.dtype)
        t = _new_like(x.shape, out_dt)
        isa.tensor_tensor(dst=t, data1=x, data2=y, op=op)
        return t
    if _is_tensor(x):
        out_dt = dtype or numerics.promote(x.dtype, numerics.scalar_dtype(y))
        t = _new_like(x.shape, out_dt)
        isa.tensor_scalar(dst=t, data=x, op0=op, operand0=float(y))
        return t
    if _is_tensor(y):
        out_dt = dtype or numerics.promote(y.dtype, numerics.scalar_dtype(x))
        t = _new_like(y.shape, out_dt)
        isa.tensor_scalar(dst=t, data=y, op0=op, operand0=float(x), reverse0=True)
        return t
    return alu.apply(op, np.float32(x), np.float32(y))


def _unary(op, x, dtype=None):
    t = _new_like(x.shape, dtype or x.dtype)
    if op.act:
        isa.activation(dst=t, op=op, data=x)
    else:
        isa.tensor_scalar(dst=t, data=x, op0=op, operand0=0.0)
    return t


_REDUCE = {"sum": "add", "max": "maximum", "min": "minimum", "prod": "multiply", "all": "logical_and"}


def _reduce(kind: str, x: NkiTensor, axis, dtype=None, keepdims: bool = False) -> NkiTensor:
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    axes = tuple(a % x.ndim for a in axes)
    shape = [n for i, n in enumerate(x.shape) if i not in axes or keepdims]
    shape = [1 if (i in axes) else n for i, n in enumerate(x.shape)] if keepdims else shape
    if len(shape) < 2:
        shape = list(shape) + [1]
    t = _new_like(tuple(shape), dtype or x.dtype)
    isa.tensor_reduce(dst=t, op=_OPS[_REDUCE[kind]], data=x, axis=axes, keepdims=keepdims)
    return t


def sum(x, axis, dtype=None, keepdims=False):  # noqa: A001 (NKI name)
    return _reduce("sum", x, axis, dtype, keepdims)


def prod(x, axis, dtype=None, keepdims=False):
    return _reduce("prod", x, axis, dtype, keepdims)


def all(x, axis, dtype=None, keepdims=False):  # noqa: A001
    return _reduce("all", x, axis, dtype, keepdims)


def mean(x, axis, dtype=None, keepdims=False):
    s = _reduce("sum", x, axis, "float32", keepdims)
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    n = math.prod(x.shape[a] for a in axes)
    t = _new_like(s.shape, dtype or x.dtype)
    isa.tensor_scalar(dst=t, data=s, op0=_OPS["multiply"], operand0=1.0 / n)
    return t


def _whole_free_axes(x: NkiTensor, axis, what: str) -> tuple:
    """Normalise `axis` and require it to cover every free axis (the helpers reduce into (P, 1) tiles)."""
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    norm = tuple(sorted({a % x.ndim for a in axes}))
    if norm != tuple(range(1, x.ndim)):
        raise NkiValidationError(
            f"nl.{what} works along the free axes of an on-chip tile (partition dim 0 first)",
            instruction=what,
            operand="axis",
            limit=tuple(range(1, x.ndim)),
            value=axis,
        )
    return norm


def _on_chip(x, what: str, operand: str = "x") -> None:
    if not isinstance(x, NkiTensor) or not x.on_chip:
        raise NkiValidationError(
            f"nl.{what} takes an SBUF/PSUM tile (load HBM data with nl.load first)",
            instruction=what,
            operand=operand,
            value=type(x).__name__ if not isinstance(x, NkiTensor) else x.buffer,
        )


def softmax(x: NkiTensor, axis=-1, dtype=None) -> NkiTensor:
    """exp(x - max) / sum(exp(x - max)) along the free axes, in fp32, into a new SBUF tile.

    Instructions: tensor_reduce (negated row max), activation(exp, bias=-max) accumulating the row sums,
    reciprocal, tensor_scalar multiply.
    """
    _on_chip(x, "softmax")
    axes = _whole_free_axes(x, axis, "softmax")
    P = x.shape[0]
    neg_max = _new_like((P, 1), "float32")
    isa.tensor_reduce(dst=neg_max, op=_OPS["maximum"], data=x, axis=axes, negate=True)
    exps = _new_like(x.shape, "float32")
    total = _new_like((P, 1), "float32")
    isa.activation(
        dst=exps,
        op=_OPS["exp"],
        data=x,
        bias=neg_max,
        reduce_op=_OPS["add"],
        reduce_res=total,
        reduce_cmd=isa.reduce_cmd.reset_reduce,
    )
    inv = _new_like((P, 1), "float32")
    isa.reciprocal(dst=inv, data=total)
    out = _new_like(x.shape, dtype or x.dtype)
    isa.tensor_scalar(dst=out, data=exps, op0=_OPS["multiply"], operand0=inv)
    return out


def rms_norm(x: NkiTensor, w=None, axis=-1, n=None, epsilon: float = 1e-6, dtype=None) -> NkiTensor:
    """x / sqrt(sum(x^2) / n + epsilon) * w along the free axes (statistics in fp32), new SBUF tile.

    Args: x an on-chip tile [P, ...]; w None or a tile of x's shape (already broadcast to every partition);
    n the element count of the mean (default: the free size). Instructions: activation(square) with the
    row sums accumulated, tensor_scalar (1/n, +epsilon), activation(rsqrt), scalar_tensor_tensor (or
    tensor_scalar without w).
    """
    _on_chip(x, "rms_norm")
    _whole_free_axes(x, axis, "rms_norm")
    P, F = x.pf()
    if w is not None:
        _on_chip(w, "rms_norm", "w")
        if w.pf() != (P, F):
            raise NkiValidationError(
                "w must be a tile of x's shape (broadcast it to every partition first)",
                instruction="rms_norm",
                operand="w",
                limit=x.shape,
                value=w.shape,
            )
    count = F if n is None else int(n)
    squares = _new_like(x.shape, "float32")
    total = _new_like((P, 1), "float32")
    isa.activation(
        dst=squares,
        op=_OPS["square"],
        data=x,
        reduce_op=_OPS["add"],
        reduce_res=total,
        reduce_cmd=isa.reduce_cmd.reset_reduce,
    )
    rstd = _new_like((P, 1), "float32")
    isa.tensor_scalar(
        dst=rstd, data=total, op0=_OPS["multiply"], operand0=1.0 / count, op1=_OPS["add"], operand1=epsilon
    )
    isa.activation(dst=rstd, op=_OPS["rsqrt"], data=rstd)
    out = _new_like(x.shape, dtype or x.dtype)
    if w is None:
        isa.tensor_scalar(dst=out, data=x, op0=_OPS["multiply"], operand0=rstd)
    else:
        isa.scalar_tensor_tensor(
            dst=out, data=x, op0=_OPS["multiply"], operand0=rstd, op1=_OPS["multiply"], operand1=w
        )
    return out


def where(condition: NkiTensor, x, y, dtype=None) -> NkiTensor:
    """Elementwise condition ? x : y into a new SBUF tile; x and y are tiles of condition's shape or scalars.

    Instructions: y is placed first (tensor_copy, or memset for a scalar), then tensor_copy_predicated
    overwrites it with x where the condition is nonzero. Any other condition dtype becomes a uint8
    predicate with one tensor_scalar(not_equal, 0): nonzero is true for every dtype (a converting copy
    would round 0.5 to 0 and saturate -1 to 0).
    """
    _on_chip(condition, "where", "condition")
    for name, v in (("x", x), ("y", y)):
        if isinstance(v, NkiTensor):
            _on_chip(v, "where", name)
        elif not isinstance(v, (int, float, np.integer, np.floating)):
            raise NkiValidationError(
                "x and y must be tiles or scalars", instruction="where", operand=name, value=type(v).__name__
            )
    kinds = [v.dtype if isinstance(v, NkiTensor) else numerics.scalar_dtype(v) for v in (x, y)]
    out_dt = numerics.normalize_dtype(dtype) if dtype is not None else numerics.promote(*kinds)
    shape = condition.shape
    pred = condition
    if condition.dtype not in ("uint8", "uint16", "uint32", "bool_"):
        pred = _new_like(shape, "uint8")
        isa.tensor_scalar(dst=pred, data=condition, op0=_OPS["not_equal"], operand0=0.0)
    out = _new_like(shape, out_dt)
    if isinstance(y, NkiTensor):
        isa.tensor_copy(dst=out, src=y)
    else:
        isa.memset(dst=out, value=int(y) if numerics.is_int(out_dt) else float(y))
    src = x
    if isinstance(x, NkiTensor) and x.dtype != out_dt:
        src = _new_like(x.shape, out_dt)  # tensor_copy_predicated does not convert
        isa.tensor_copy(dst=src, src=x)
    isa.tensor_copy_predicated(dst=out, src=src, predicate=pred)
    return out


def expand_dims(x: NkiTensor, axis: int) -> NkiTensor:
    """A view with a size-1 dim inserted at `axis` (no data moves, so no instruction)."""
    nd = x.ndim + 1
    a = axis % nd if axis < 0 else axis
    if not 0 <= a < nd or (x.on_chip and a == 0):
        raise NkiValidationError(
            "expand_dims axis out of range (on-chip tiles keep the partition dim first)",
            instruction="expand_dims",
            operand="axis",
            limit=f"[1, {nd - 1}]" if x.on_chip else f"[0, {nd - 1}]",
            value=axis,
        )
    return x.expand_dim(a)


def broadcast_to(x: NkiTensor, shape) -> NkiTensor:
    """Copy x broadcast along its size-1 free dims into a new SBUF tile of `shape` (one tensor_copy).

    The partition dim cannot be broadcast this way (engines map partition i to partition i): use
    nisa.nc_stream_shuffle (within 32-partition quadrants), a DMA, or a matmul with a ones vector.
    """
    _on_chip(x, "broadcast_to")
    shape = tuple(int(s) for s in shape)
    if len(shape) != x.ndim or shape[0] != x.shape[0]:
        raise NkiValidationError(
            "broadcast_to keeps the rank and the partition count",
            instruction="broadcast_to",
            operand="shape",
            limit=(x.shape[0],) + tuple(x.shape[1:]),
            value=shape,
        )
    view = x
    for d in range(1, x.ndim):
        if shape[d] != x.shape[d]:
            if x.shape[d] != 1:
                raise NkiValidationError(
                    "only size-1 dims can be broadcast",
                    instruction="broadcast_to",
                    operand="shape",
                    limit=x.shape,
                    value=shape,
                )
            view = view.broadcast(d, shape[d])
    out = _new_like(shape, x.dtype)
    isa.tensor_copy(dst=out, src=view)
    return out


def _highlevel(op, *args, **kw):
    """nl.<op>(...) on tensors: the 0.3 experimental wrappers."""
    dtype = kw.pop("dtype", None)
    if op.name in ("max", "min") and ("axis" in kw or len(args) == 2 and isinstance(args[1], (int, tuple))):
        axis = kw.pop("axis", args[1] if len(args) > 1 else None)
        return _reduce(op.name, args[0], axis, dtype, kw.pop("keepdims", False))
    if op.name in ("copy", "identity") and len(args) == 1 and not kw:
        return _copy(args[0], dtype)
    if kw:
        raise TypeError(f"nl.{op.name}: unexpected keyword arguments {sorted(kw)}")
    if op.arity == 1 and len(args) == 1:
        return _unary(op, args[0], dtype)
    if len(args) == 2:
        return _binary(op, args[0], args[1], dtype)
    raise TypeError(f"nl.{op.name} takes {op.arity} operand(s), got {len(args)}")


alu.HIGHLEVEL = _highlevel

__getattr__ = module_getattr("nki.language", globals())  # documented-but-not-emulated names (unsupported.py)
