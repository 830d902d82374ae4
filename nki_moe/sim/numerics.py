"""Dtype table, hardware casts and type promotion for the NKI emulator.

Every non-matmul engine computes in fp32: inputs are widened with `to_f32`, the result is narrowed with
`cast`. The casts follow the hardware rules of [SHARED] and [NKI-SIM]: float -> narrower float rounds to
nearest even (ml_dtypes), tfloat32 keeps 10 mantissa bits (RNE) inside a float32 container, float -> int
rounds half to even and saturates (NaN -> 0), int -> int saturates.

Storage mode ([NKI-SIM], `NKI_PRECISE_FP`): in precise mode (the default from NKI 0.4) bf16/fp8/fp16
tensors are stored in their own format; in fp32 mode they are stored as float32 and `cast` does not round
them, like the 0.3 simulator.
"""

from __future__ import annotations

import contextlib
import os
import threading

import ml_dtypes
import numpy as np

from .errors import NkiDtypeError

__all__ = [
    "DTYPES",
    "FLOAT_NAMES",
    "INT_NAMES",
    "PACKED_NAMES",
    "FP32_MIN",
    "FP32_MAX",
    "np_dtype",
    "np_storage_dtype",
    "normalize_dtype",
    "itemsize",
    "is_float",
    "is_int",
    "is_signed",
    "is_packed",
    "int_range",
    "cast",
    "to_f32",
    "round_tf32",
    "promote",
    "scalar_dtype",
    "set_precise",
    "precise",
    "quiet",
    "fp_errors_ignored",
]

FP32_MAX = float(np.finfo(np.float32).max)
# nl.fp32.min / range_select's required on_false_value: the most negative finite fp32, not -inf.
FP32_MIN = -FP32_MAX

DTYPES: dict[str, np.dtype] = {
    "bool_": np.dtype(np.bool_),
    "int8": np.dtype(np.int8),
    "int16": np.dtype(np.int16),
    "int32": np.dtype(np.int32),
    "uint8": np.dtype(np.uint8),
    "uint16": np.dtype(np.uint16),
    "uint32": np.dtype(np.uint32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "tfloat32": np.dtype(np.float32),
    "float32": np.dtype(np.float32),
    "float8_e4m3": np.dtype(ml_dtypes.float8_e4m3),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "float8_e8m0fnu": np.dtype(ml_dtypes.float8_e8m0fnu),
    # MX packed types: four values in a 32-bit container; only raw moves and memset(0) touch them.
    "float8_e5m2_x4": np.dtype(np.uint32),
    "float8_e4m3fn_x4": np.dtype(np.uint32),
    "float4_e2m1fn_x4": np.dtype(np.uint32),
}

FLOAT_NAMES = frozenset(
    {
        "float16",
        "bfloat16",
        "tfloat32",
        "float32",
        "float8_e4m3",
        "float8_e4m3fn",
        "float8_e5m2",
        "float8_e8m0fnu",
    }
)
INT_NAMES = frozenset({"bool_", "int8", "int16", "int32", "uint8", "uint16", "uint32"})
PACKED_NAMES = frozenset({"float8_e5m2_x4", "float8_e4m3fn_x4", "float4_e2m1fn_x4"})
# Formats that fp32 storage mode widens to float32 (tfloat32 is float32-stored in both modes).
_LOW_PRECISION = frozenset(FLOAT_NAMES - {"float32", "tfloat32"})

# Spellings accepted by normalize_dtype besides the canonical names.
_ALIASES = {
    "bool": "bool_",
    "fp32": "float32",
    "float": "float32",
    "f32": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "tf32": "tfloat32",
    "fp8_e4m3": "float8_e4m3",
    "fp8_e4m3fn": "float8_e4m3fn",
    "fp8_e5m2": "float8_e5m2",
}
# numpy dtype -> canonical name; float32 wins over tfloat32, and the packed containers are not reverse-mapped.
_BY_NP = {dt: name for name, dt in DTYPES.items() if name not in PACKED_NAMES and name != "tfloat32"}

_precise = os.environ.get("NKI_PRECISE_FP", "1").strip() not in ("0", "false", "False", "")


_fp_state = threading.local()
_NO_OP = contextlib.nullcontext()  # stateless, so one instance can be entered any number of times


def quiet():
    """Context that silences NumPy floating-point warnings (emulated hardware math overflows and makes NaNs
    by design). Costs nothing inside a kernel run, which silences them once for the whole run."""
    return _NO_OP if getattr(_fp_state, "ignored", False) else np.errstate(all="ignore")


@contextlib.contextmanager
def fp_errors_ignored():
    """Silence NumPy floating-point warnings for a whole block on this thread (one emulated program)."""
    prev = getattr(_fp_state, "ignored", False)
    with np.errstate(all="ignore"):
        _fp_state.ignored = True
        try:
            yield
        finally:
            _fp_state.ignored = prev


def set_precise(flag: bool) -> None:
    """Select precise storage (True: bf16/fp8/fp16 in their own format) or fp32 storage (False)."""
    global _precise
    _precise = bool(flag)


def precise() -> bool:
    """Whether low-precision float tensors are stored (and rounded) in their own format."""
    return _precise


def _unsupported_dtype(x: object, instruction: str | None, note: str = "") -> NkiDtypeError:
    """The error for a dtype NKI does not have: names it and the accepted ones (at the kernel line)."""
    return NkiDtypeError(
        f"unsupported dtype {x!r}{note}; NKI has no such type",
        instruction=instruction,
        operand="dtype",
        limit=", ".join(sorted(DTYPES)),
        value=str(x),
    )


def normalize_dtype(x: object, instruction: str | None = None) -> str:
    """Canonical dtype name for a name, alias, numpy/ml_dtypes dtype or scalar type (e.g. np.float32).

    Anything else raises NkiDtypeError (a TypeError) naming the dtype, the accepted ones, the kernel line
    and `instruction` (the API that was given the dtype) when known.
    """
    if isinstance(x, str):
        name = _ALIASES.get(x, x)
        if name in DTYPES:
            return name
        raise _unsupported_dtype(x, instruction)
    name = getattr(x, "name", None)  # objects that carry an NKI dtype name (e.g. nl.float32 wrappers)
    if isinstance(name, str) and _ALIASES.get(name, name) in DTYPES and not isinstance(x, np.dtype):
        return _ALIASES.get(name, name)
    if x is bool:
        return "bool_"
    try:
        dt = np.dtype(x)
    except TypeError:
        raise _unsupported_dtype(x, instruction) from None
    if dt in _BY_NP:
        return _BY_NP[dt]
    raise _unsupported_dtype(x, instruction, f" (numpy {dt})")


def np_dtype(name: str) -> np.dtype:
    """The numpy dtype that represents `name` exactly (ml_dtypes for bf16/fp8)."""
    return DTYPES[normalize_dtype(name)]


def np_storage_dtype(name: str) -> np.dtype:
    """The numpy dtype tensors of `name` are stored in under the current storage mode."""
    name = normalize_dtype(name)
    if not _precise and name in _LOW_PRECISION:
        return np.dtype(np.float32)
    return DTYPES[name]


def itemsize(name: str) -> int:
    """Bytes per element on the device (bool_ is stored as one byte)."""
    return DTYPES[normalize_dtype(name)].itemsize


def is_float(name: str) -> bool:
    """True for floating-point formats (including tfloat32 and fp8)."""
    return normalize_dtype(name) in FLOAT_NAMES


def is_int(name: str) -> bool:
    """True for integer formats, bool_ included."""
    return normalize_dtype(name) in INT_NAMES


def is_signed(name: str) -> bool:
    """True for signed integer formats and all floats."""
    name = normalize_dtype(name)
    return name in FLOAT_NAMES or name in ("int8", "int16", "int32")


def is_packed(name: str) -> bool:
    """True for the MX x4 packed formats (uint32 containers)."""
    return normalize_dtype(name) in PACKED_NAMES


def int_range(name: str) -> tuple[int, int]:
    """(min, max) representable by an integer format."""
    name = normalize_dtype(name)
    if name == "bool_":
        return 0, 1
    info = np.iinfo(DTYPES[name])
    return int(info.min), int(info.max)


def round_tf32(values: np.ndarray) -> np.ndarray:
    """Round float32 values to tfloat32 (10 mantissa bits, nearest even), kept in float32 containers."""
    f = np.ascontiguousarray(values, dtype=np.float32)
    bits = f.view(np.uint32)
    # Add half an ulp of the 10-bit mantissa plus the tie-to-even bit, then truncate the 13 dropped bits.
    # A carry out of the mantissa bumps the exponent, which is the correct rounding (up to inf).
    rounded = (bits + np.uint32(0x0FFF) + ((bits >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000)
    finite = np.isfinite(f)
    return np.where(finite, rounded, bits).view(np.float32).reshape(f.shape)


def _float_to_int(f: np.ndarray, name: str) -> np.ndarray:
    """fp -> integer: round half to even, saturate, NaN -> 0 (hardware behaviour, 0.6 simulator)."""
    lo, hi = int_range(name)
    with quiet():
        r = np.rint(f.astype(np.float64))
        r = np.where(np.isnan(r), 0.0, np.clip(r, lo, hi))
    if name == "bool_":
        return r != 0
    return r.astype(DTYPES[name])


def cast(values: np.ndarray | float | int, name: str) -> np.ndarray:
    """Convert values to dtype `name` as the engines do on write (RNE for floats, saturating for ints).

    Float inputs are first taken to fp32 (the engines' working precision). Returns an array of
    np_storage_dtype(name): in fp32 storage mode, low-precision float results stay unrounded float32.
    """
    name = normalize_dtype(name)
    arr = np.asarray(values)
    if name in PACKED_NAMES:  # packed containers carry raw bits; only integer values make sense
        name = "uint32"
    src_int = arr.dtype.kind in "biu"
    if name in INT_NAMES:
        if src_int:
            lo, hi = int_range(name)
            clipped = np.clip(arr.astype(np.int64), lo, hi)
            return clipped != 0 if name == "bool_" else clipped.astype(DTYPES[name])
        return _float_to_int(arr.astype(np.float32), name)
    if name == "float32" or not _precise and name != "tfloat32":
        return arr.astype(np.float32)  # always a new array: callers may adopt it as a tile's buffer
    # Both roundings below make a new array, so an fp32 input needs no fp32 copy first (one pass less).
    f = arr.astype(np.float32, copy=False)
    if name == "tfloat32":
        return round_tf32(f)
    with quiet():
        return f.astype(DTYPES[name])


def to_f32(raw: np.ndarray) -> np.ndarray:
    """Widen stored values to fp32 (exact except |int32| > 2^24, rounded to nearest even as on hardware)."""
    a = raw if type(raw) is np.ndarray else np.asarray(raw)
    if a.dtype.isbuiltin == 2 and a.ndim and a.shape[-1] > 1 and a.strides[-1] != a.itemsize:
        # ml_dtypes (bf16, fp8) casts element by element through a buffered iterator when the innermost
        # dim is strided: ~4x slower than gathering the bytes first (same values: the cast is exact).
        a = np.ascontiguousarray(a)
    if getattr(_fp_state, "ignored", False):  # inside a kernel run: warnings are already silenced
        return a.astype(np.float32)
    with np.errstate(all="ignore"):  # ml_dtypes flags NaN payloads (e.g. the uninitialised sentinel)
        return a.astype(np.float32)


# ---- type promotion for high-level nl.* ops ([NKI1-SHARED]) -----------------------------------------

_FLOAT_RANK = {"float32": 4, "tfloat32": 3, "bfloat16": 2, "float16": 2}
_FP8 = frozenset({"float8_e4m3", "float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu"})
_INT_BITS = {"bool_": 1, "int8": 8, "uint8": 8, "int16": 16, "uint16": 16, "int32": 32, "uint32": 32}


def _promote_float(a: str, b: str) -> str:
    """Float/float promotion: the wider format; fp16+bf16 -> fp32, two different fp8 -> bf16."""
    if a == b:
        return a
    if a in _FP8 and b in _FP8:
        return "bfloat16"
    if a in _FP8:
        return b
    if b in _FP8:
        return a
    if {a, b} == {"float16", "bfloat16"}:
        return "float32"
    return a if _FLOAT_RANK[a] >= _FLOAT_RANK[b] else b


def _promote_int(a: str, b: str) -> str:
    """Int/int promotion: the wider type; mixed signedness widens; int32+uint32 -> float32 (no int64)."""
    if a == b:
        return a
    if a == "bool_":
        return b
    if b == "bool_":
        return a
    sa, sb = is_signed(a), is_signed(b)
    ba, bb = _INT_BITS[a], _INT_BITS[b]
    if sa == sb:
        return a if ba >= bb else b
    signed_bits, unsigned_bits = (ba, bb) if sa else (bb, ba)
    if signed_bits > unsigned_bits:
        return f"int{signed_bits}"
    needed = 2 * unsigned_bits
    return f"int{needed}" if needed <= 32 else "float32"


def promote(a_name: str, b_name: str) -> str:
    """NKI type promotion of two operand dtypes for nl.* arithmetic (float beats int, wider wins)."""
    a, b = normalize_dtype(a_name), normalize_dtype(b_name)
    if a in PACKED_NAMES or b in PACKED_NAMES:
        raise TypeError(f"no arithmetic promotion for packed dtypes ({a}, {b})")
    fa, fb = a in FLOAT_NAMES, b in FLOAT_NAMES
    if fa and fb:
        return _promote_float(a, b)
    if fa:
        return a
    if fb:
        return b
    return _promote_int(a, b)


def scalar_dtype(value: object) -> str:
    """Dtype of a Python scalar operand in promotion: bool -> uint8, int -> int32, float -> float32."""
    if isinstance(value, (bool, np.bool_)):
        return "uint8"
    if isinstance(value, (int, np.integer)):
        return "int32"
    if isinstance(value, (float, np.floating)):
        return "float32"
    raise TypeError(f"not a scalar: {value!r}")
