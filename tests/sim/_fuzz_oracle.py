"""The NumPy/math oracle of the instruction fuzz (tests/sim/test_fuzz_isa.py).

Written from the public NKI ISA description ([NKI-ISA], [SHARED], [NKI1-SHARED]), not from the emulator:
nothing here imports nki_moe. The rules it encodes:
- Vector/Scalar/GpSimd arithmetic widens every operand to fp32, computes each ALU op in fp32 (one IEEE
  rounding per op; evaluated here in float64 and rounded once, which is exact for + - * / because
  53 >= 2 * 24 + 2) and narrows to dst.dtype on write.
- Float narrowing rounds to nearest even (bf16 by bit arithmetic below, fp16 by IEEE NumPy casts); float
  -> integer rounds half to even and saturates; integer -> integer saturates.
- Bitvec ops (bitwise_*, shifts) work on the raw two's-complement bits; right_shift is logical.
- Scalar Engine functions are the textbook functions (math.* in float64, rounded once to fp32).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import ml_dtypes
import numpy as np

F32 = np.float32
NP: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
    "int8": np.dtype(np.int8),
    "int16": np.dtype(np.int16),
    "int32": np.dtype(np.int32),
    "uint8": np.dtype(np.uint8),
    "uint16": np.dtype(np.uint16),
    "uint32": np.dtype(np.uint32),
}
FLOATS = ("float32", "bfloat16", "float16")
INTS = ("int8", "int16", "int32", "uint8", "uint16", "uint32")
_UINT_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32}


def is_int(dtype: str) -> bool:
    """Whether an NKI dtype name is an integer format."""
    return dtype in INTS


def int_range(dtype: str) -> tuple[int, int]:
    """(min, max) of an integer format."""
    info = np.iinfo(NP[dtype])
    return int(info.min), int(info.max)


def f64(x: np.ndarray | float) -> np.ndarray:
    """Stored values widened to float64 (exact for every format used here)."""
    return np.asarray(x).astype(np.float64)


def f32(x: np.ndarray | float) -> np.ndarray:
    """Round float64 values once to fp32 (IEEE nearest even)."""
    with np.errstate(all="ignore"):
        return np.asarray(x, dtype=np.float64).astype(F32)


def _bf16_rne(x: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 by bit arithmetic: add half an ulp plus the tie-to-even bit, keep the top 16 bits."""
    bits = np.ascontiguousarray(x, dtype=F32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # a carry into the exponent rounds up to inf
    quiet_nan = (bits >> 16) | 0x40
    out = np.where(np.isnan(x), quiet_nan, rounded).astype(np.uint16)
    return out.view(ml_dtypes.bfloat16)


def wrap(v: np.ndarray, dtype: str) -> np.ndarray:
    """Two's-complement wrap of Python-int-valued int64 arrays into an integer format (raw bit results)."""
    bits = NP[dtype].itemsize * 8
    u = np.asarray(v, dtype=np.int64) & ((1 << bits) - 1)
    if NP[dtype].kind == "i":
        u = np.where(u >= 1 << (bits - 1), u - (1 << bits), u)
    return u.astype(NP[dtype])


def saturate(v: np.ndarray, dtype: str) -> np.ndarray:
    """Integer values clipped into an integer format's range."""
    lo, hi = int_range(dtype)
    return np.clip(np.asarray(v, dtype=np.int64), lo, hi).astype(NP[dtype])


def narrow(x: np.ndarray, dtype: str) -> np.ndarray:
    """fp32 engine results written to `dtype`: RNE for floats, RNE + saturation for ints (NaN -> 0)."""
    x = np.asarray(x, dtype=F32)
    if dtype == "float32":
        return x
    if dtype == "bfloat16":
        return _bf16_rne(x)
    if dtype == "float16":
        with np.errstate(all="ignore"):
            return x.astype(np.float16)
    lo, hi = int_range(dtype)
    r = np.nan_to_num(np.rint(x.astype(np.float64)), nan=0.0, posinf=hi, neginf=lo)
    return np.clip(r, lo, hi).astype(NP[dtype])


def to_fp32(x: np.ndarray) -> np.ndarray:
    """Stored values widened to the engines' fp32 (|int32| > 2^24 rounds to nearest even)."""
    return f32(f64(x)) if np.asarray(x).dtype.kind in "iu" else np.asarray(x).astype(F32)


def cast(x: np.ndarray, dtype: str) -> np.ndarray:
    """A non-moving conversion src -> fp32 -> dtype (engine copies between different dtypes, DMA casts)."""
    return narrow(to_fp32(x), dtype)


# ---- ALU ops -----------------------------------------------------------------------------------------------


def _b(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    return lambda a, b: fn(a, b).astype(np.float64)


ALU: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add,
    "subtract": np.subtract,
    "multiply": np.multiply,
    "divide": np.divide,
    "maximum": np.maximum,  # IEEE 754-2019 maximum/minimum: NaN propagates
    "minimum": np.minimum,
    "power": np.power,
    "equal": _b(np.equal),
    "not_equal": _b(np.not_equal),
    "greater": _b(np.greater),
    "greater_equal": _b(np.greater_equal),
    "less": _b(np.less),
    "less_equal": _b(np.less_equal),
    "logical_and": _b(lambda a, b: (a != 0) & (b != 0)),
    "logical_or": _b(lambda a, b: (a != 0) | (b != 0)),
    "logical_xor": _b(lambda a, b: (a != 0) ^ (b != 0)),
}
ALU["max"], ALU["min"] = ALU["maximum"], ALU["minimum"]
ARITH_OPS = ("add", "subtract", "multiply", "divide", "maximum", "minimum")
COMPARE_OPS = ("equal", "not_equal", "greater", "greater_equal", "less", "less_equal")
# Reduction identities ([NKI-ISA] tensor_scalar_reduce / tensor_scalar_cumulative).
IDENTITY = {"add": 0.0, "subtract": 0.0, "multiply": 1.0, "maximum": -math.inf, "minimum": math.inf}


def alu(op: str, a: np.ndarray | float, b: np.ndarray | float, reverse: bool = False) -> np.ndarray:
    """`a op b` (or `b op a`) of fp32 operands as one fp32 ALU operation."""
    x, y = (f64(b), f64(a)) if reverse else (f64(a), f64(b))
    with np.errstate(all="ignore"):
        return f32(ALU[op](x, y))


def bitvec(op: str, a: np.ndarray, b: np.ndarray | int, dtype: str) -> np.ndarray:
    """Bitvec op on the raw bits of `dtype` (shift amounts < width)."""
    bits = NP[dtype].itemsize * 8
    x = np.asarray(a).astype(np.int64) & ((1 << bits) - 1)  # the unsigned view of the bits
    y = np.asarray(b).astype(np.int64) & ((1 << bits) - 1)
    out = {
        "bitwise_and": lambda: x & y,
        "bitwise_or": lambda: x | y,
        "bitwise_xor": lambda: x ^ y,
        "left_shift": lambda: x << y,
        "right_shift": lambda: x >> y,  # logical: the unsigned view shifts in zeros
    }[op]()
    return wrap(out, dtype)


def fold(rows: np.ndarray, op: str, init: np.ndarray | float | None = None) -> np.ndarray:
    """Per-row fold acc = op(x_i, acc) from element 0 in fp32 (one engine lane per row) -> (R,)."""
    rows = np.asarray(rows, dtype=F32)
    start = np.asarray(IDENTITY[op] if init is None else init, dtype=F32).reshape(-1)
    acc = np.broadcast_to(start, (rows.shape[0],)).copy()
    for i in range(rows.shape[1]):
        acc = alu(op, rows[:, i], acc)
    return acc


def promote(a: str, b: str) -> str:
    """NKI type promotion of nl.* arithmetic ([NKI1-SHARED] "NKI Type Promotion")."""
    if a == b:
        return a
    fa, fb = a in FLOATS, b in FLOATS
    if fa and fb:
        return "float32" if "float32" in (a, b) or {a, b} == {"float16", "bfloat16"} else a
    if fa or fb:
        return a if fa else b
    sa, sb = NP[a].kind == "i", NP[b].kind == "i"
    na, nb = NP[a].itemsize * 8, NP[b].itemsize * 8
    if sa == sb:
        return a if na >= nb else b
    signed_bits, unsigned_bits = (na, nb) if sa else (nb, na)
    if signed_bits > unsigned_bits:
        return f"int{signed_bits}"
    return f"int{2 * unsigned_bits}" if 2 * unsigned_bits <= 32 else "float32"


# ---- Scalar Engine functions (float64 scalars) -------------------------------------------------------------

_SQRT2 = math.sqrt(2.0)
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_GELU_TANH_K = math.sqrt(2.0 / math.pi)
_GELU_SIGMOID_K = 1.702  # the usual constant of the sigmoid GELU approximation (the NKI docs do not give it)


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _cdf(z: float) -> float:
    """Standard normal CDF through erfc (no cancellation in the left tail)."""
    return 0.5 * math.erfc(-z / _SQRT2)


def _softplus(z: float) -> float:
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


def _gelu_tanh(z: float) -> float:
    # 0.5 z (1 + tanh(u)) == z * sigmoid(2u): the same function without 1 + tanh cancelling for z << 0
    return z * _sigmoid(2.0 * _GELU_TANH_K * (z + 0.044715 * z**3))


def _gelu_sigmoid_dx(z: float) -> float:
    s = _sigmoid(_GELU_SIGMOID_K * z)
    return s + _GELU_SIGMOID_K * z * s * _sigmoid(-_GELU_SIGMOID_K * z)


def _silu_dx(z: float) -> float:
    s = _sigmoid(z)
    return s + z * s * _sigmoid(-z)


ACT: dict[str, Callable[[float], float]] = {
    "copy": lambda z: z,
    "abs": abs,
    "sign": lambda z: float((z > 0) - (z < 0)),
    "square": lambda z: z * z,
    "relu": lambda z: max(z, 0.0),
    "reciprocal": lambda z: 1.0 / z if z != 0 else math.copysign(math.inf, z),
    "exp": math.exp,
    "log": math.log,
    "sqrt": math.sqrt,
    "rsqrt": lambda z: 1.0 / math.sqrt(z),
    "tanh": math.tanh,
    "sigmoid": _sigmoid,
    "silu": lambda z: z * _sigmoid(z),
    "silu_dx": _silu_dx,
    "gelu": lambda z: z * _cdf(z),
    "gelu_dx": lambda z: _cdf(z) + z * math.exp(-0.5 * z * z) / _SQRT_2PI,
    "gelu_apprx_tanh": _gelu_tanh,
    "gelu_apprx_sigmoid": lambda z: z * _sigmoid(_GELU_SIGMOID_K * z),
    "gelu_apprx_sigmoid_dx": _gelu_sigmoid_dx,
    "softplus": _softplus,
    "mish": lambda z: z * math.tanh(_softplus(z)),
    "erf": math.erf,
    "erf_dx": lambda z: 2.0 / math.sqrt(math.pi) * math.exp(-z * z),
    "sin": math.sin,
    "arctan": math.atan,
}


def act(fn: str, z: np.ndarray) -> np.ndarray:
    """A Scalar Engine function of fp32 inputs: math.* in float64 per element, rounded once to fp32."""
    z = np.asarray(z, dtype=F32)
    f = ACT[fn]
    return f32(
        np.fromiter((f(v) for v in z.astype(np.float64).ravel().tolist()), np.float64, z.size)
    ).reshape(z.shape)


# ---- comparison --------------------------------------------------------------------------------------------


def _ordered(x: np.ndarray) -> np.ndarray:
    """Float bits mapped to integers that count ulps monotonically (+0 and -0 both map to 0)."""
    u = np.ascontiguousarray(x).view(_UINT_OF_SIZE[x.dtype.itemsize]).astype(np.int64)
    sign = 1 << (x.dtype.itemsize * 8 - 1)
    return np.where(u & sign, -(u & (sign - 1)), u)


def bits(x: np.ndarray) -> np.ndarray:
    """Raw storage bits of an array (for bit-exact moves, NaN payloads included)."""
    x = np.ascontiguousarray(x)
    return x.view(_UINT_OF_SIZE[x.dtype.itemsize])


def mismatch(
    got: np.ndarray, want: np.ndarray, ulps: int = 0, atol: np.ndarray | float = 0.0, raw: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(bad mask, ulp distance) of `got` against `want` (same dtype and shape).

    raw compares storage bits. Floats: NaN must meet NaN; otherwise at most `ulps` units in the last
    place of the dtype apart (signed zeros equal) or within `atol`. Integers: equal.
    """
    if raw:
        d = (bits(got) != bits(want)).astype(np.int64)
        return d != 0, d
    if want.dtype.kind in "iu":
        d = np.abs(got.astype(np.int64) - want.astype(np.int64))
        return d != 0, d
    g, w = f64(got), f64(want)
    nan_g, nan_w = np.isnan(g), np.isnan(w)
    d = np.abs(_ordered(got) - _ordered(want))
    with np.errstate(invalid="ignore"):
        close = (d <= ulps) | (np.abs(g - w) <= atol)
    bad = (nan_g != nan_w) | (~nan_w & ~close)
    return bad, np.where(nan_g & nan_w, 0, d)


def describe(
    label: str,
    got: np.ndarray,
    want: np.ndarray,
    bad: np.ndarray,
    dist: np.ndarray,
    inputs: Sequence[np.ndarray],
    limit: int = 6,
) -> str:
    """A failure message naming the output, the mismatch count and the first mismatches with their inputs."""
    idx = np.argwhere(bad)
    lines = [f"{label}: {len(idx)} of {bad.size} elements differ (dtype {want.dtype}, shape {want.shape})"]
    for i in idx[:limit]:
        t = tuple(int(v) for v in i)
        at = ", ".join(f"in{k}={x[t]!r}" for k, x in enumerate(inputs) if np.shape(x) == np.shape(want))
        lines.append(
            f"  at {t}: got {got[t]!r}, want {want[t]!r} ({int(dist[t])} ulp){'; ' + at if at else ''}"
        )
    return "\n".join(lines)
