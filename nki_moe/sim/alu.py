"""NKI operator objects (`nl.add`, `nl.exp`, ...) with their fp32 NumPy implementations.

One object serves both as the ISA `op=` enum and, through `Op.__call__`, as the 0.3 high-level function
(`nl.exp(tile)`); the emulator's language module installs the latter in `HIGHLEVEL`.

Kinds ([SHARED]):
- 'arith'      Vector/GpSimd ALU arithmetic, fp32 in and out (add, multiply, rsqrt, abs, power, ...).
- 'compare'    ALU comparisons; 1.0 where true, else 0.0.
- 'logical'    ALU logical ops on "nonzero"; 1.0 / 0.0.
- 'bitvec'     ALU bit operations on raw integers (no fp32 round trip).
- 'activation' Scalar Engine functions (exp, gelu, ...), fp32 in and out.
`alu` marks ops the Vector/GpSimd ALU can run; `act` marks functions `nisa.activation` accepts.
Activations use the textbook definitions (hardware uses piecewise approximations; see [SHARED]).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .numerics import quiet

__all__ = ["Op", "OPS", "HIGHLEVEL", "lookup", "apply", "apply_bitvec", "erf64", "erfc64"]

_F32 = np.float32


def _unset_highlevel(op: Op, *args: Any, **kw: Any) -> Any:
    """Placeholder until the language module installs the high-level nl.* implementation."""
    raise TypeError(
        f"nl.{op.name}(...) used as a function, but the emulator's high-level nl ops are not loaded; "
        f"pass nl.{op.name} as an ISA op= argument instead"
    )


# Replaced by the language module: HIGHLEVEL(op, *args, **kw) evaluates `nl.<op>(...)` on tensors.
HIGHLEVEL: Callable[..., Any] = _unset_highlevel


class Op:
    """An NKI operator: usable as an ISA `op=` value and (via HIGHLEVEL) as a high-level nl.* call."""

    __slots__ = ("name", "kind", "arity", "fn", "identity", "alu", "act", "aliases")

    def __init__(
        self,
        name: str,
        kind: str,
        arity: int,
        fn: Callable[..., np.ndarray],
        identity: float | int | None = None,
        alu: bool = True,
        act: bool = False,
    ) -> None:
        self.name = name
        self.kind = kind
        self.arity = arity
        self.fn = fn
        self.identity = identity
        self.alu = alu
        self.act = act
        self.aliases: tuple[str, ...] = ()

    @property
    def reducible(self) -> bool:
        """Whether the op is a legal reduction op (it has a reduction identity)."""
        return self.identity is not None

    @property
    def is_bitvec(self) -> bool:
        """Whether the op works on raw integer bits."""
        return self.kind == "bitvec"

    @property
    def is_arith_class(self) -> bool:
        """Arithmetic class for op-pairing rules: everything that is not bitvec."""
        return self.kind != "bitvec"

    def __call__(self, *args: Any, **kw: Any) -> Any:
        return HIGHLEVEL(self, *args, **kw)

    def __repr__(self) -> str:
        return f"nl.{self.name}"

    def __reduce__(self) -> tuple[Callable[[str], Op], tuple[str]]:
        # Pickle/copy by name so identity comparisons (`op is nl.add`) survive.
        return lookup, (self.name,)


OPS: dict[str, Op] = {}


def _reg(op: Op, *aliases: str) -> Op:
    """Register an op under its name and aliases."""
    op.aliases = aliases
    for n in (op.name, *aliases):
        OPS[n] = op
    return op


def _f(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=_F32)


def _bool(x: np.ndarray) -> np.ndarray:
    return x.astype(_F32)


_CHUNK64 = 16384  # float64 elements per pass of a chunked _via64 evaluation (128 KiB, stays in L2)


def _via64(fn: Callable[[np.ndarray], np.ndarray], chunked: bool = True) -> Callable[[Any], np.ndarray]:
    """Evaluate a transcendental in float64, round once to fp32 (a faithful fp32 reference value).

    chunked: `fn` is elementwise, so a large tile is evaluated _CHUNK64 elements at a time, each rounded
    into the fp32 result as it is done (same bits). Whole-tile float64 temporaries are several MiB each:
    fresh memory per pass, ~7x slower on a [128, 2048] exp. Not for fns whose work depends on the whole
    array (the erf series stops when every element has converged).
    """

    def g(x: Any) -> np.ndarray:
        with quiet():
            a = np.asarray(x)
            if not chunked or a.size <= _CHUNK64:
                return fn(np.asarray(a, dtype=np.float64)).astype(_F32)
            flat = a.reshape(-1)
            out = np.empty(flat.size, _F32)
            for i in range(0, flat.size, _CHUNK64):
                out[i : i + _CHUNK64] = fn(flat[i : i + _CHUNK64].astype(np.float64))
            return out.reshape(a.shape)

    return g


def _ew(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Wrap an fp32 elementwise NumPy expression: fp32 operands, no FP warnings, fp32 result."""

    def g(*xs: Any) -> np.ndarray:
        with quiet():
            return np.asarray(fn(*(_f(x) for x in xs)), dtype=_F32)

    return g


# ---- erf / erfc in float64 without scipy ----------------------------------------------------------

_ERF_SERIES_MAX = 3.0  # the series below this |x|, the continued fraction from it on
_ERF_TERMS = 80
_ERFC_CF_TERMS = 40  # enough for a relative error < 1e-13 at |x| >= 3


def _erf_series(a: np.ndarray) -> np.ndarray:
    """erf(a) for 0 <= a < 3: 2/sqrt(pi) * exp(-a^2) * sum 2^n a^(2n+1) / (2n+1)!! (all terms positive)."""
    term = a.copy()
    total = a.copy()
    a2 = 2.0 * a * a
    for n in range(1, _ERF_TERMS * 2):
        term = term * a2 / (2 * n + 1)
        total += term
        if n >= 8 and not np.any(term > 1e-17 * total):
            break
    return np.minimum(2.0 / math.sqrt(math.pi) * np.exp(-a * a) * total, 1.0)


def _erfc_cf(a: np.ndarray) -> np.ndarray:
    """erfc(a) for a >= 3 by Laplace's continued fraction exp(-a^2)/sqrt(pi) / (a + (1/2)/(a + 1/(a + ...))).

    1 - erf(a) would cancel to nothing in the tail (erfc(6) = 2e-17 is below double's epsilon).
    """
    t = a.copy()
    for n in range(_ERFC_CF_TERMS, 0, -1):
        t = a + (0.5 * n) / t
    with quiet():
        return np.exp(-a * a) / math.sqrt(math.pi) / t


def _erf_erfc_abs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(erf(|x|), erfc(|x|)) in float64, each with a small relative error (NaN is treated as 0)."""
    a = np.abs(np.nan_to_num(x, nan=0.0))
    small = a < _ERF_SERIES_MAX
    erf_a = _erf_series(np.where(small, a, 0.0))
    erfc_a = 1.0 - erf_a
    big = ~small
    if big.any():
        tail = _erfc_cf(a[big])
        erfc_a[big] = tail
        erf_a[big] = 1.0 - tail
    return erf_a, erfc_a


def erf64(x: np.ndarray) -> np.ndarray:
    """erf in float64 (relative error < 1e-13 against math.erf)."""
    x = np.asarray(x, dtype=np.float64)
    erf_a, _ = _erf_erfc_abs(x)
    return np.where(np.isnan(x), np.nan, np.copysign(erf_a, x))


def erfc64(x: np.ndarray) -> np.ndarray:
    """erfc in float64: relative error < 1e-10 against math.erfc (< 1e-13 in the tail, where erfc < 1e-16)."""
    x = np.asarray(x, dtype=np.float64)
    erf_a, erfc_a = _erf_erfc_abs(x)
    return np.where(np.isnan(x), np.nan, np.where(x < 0, 1.0 + erf_a, erfc_a))


def _sigmoid64(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function in float64."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus64(x: np.ndarray) -> np.ndarray:
    """log(1 + e^x) without overflow."""
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_SIGMOID_K = 1.702  # the usual sigmoid-GELU constant; NKI docs do not state it ([SHARED])


# The GELUs are written so that the negative tail does not cancel: 1 + erf(x / sqrt(2)) as erfc(-x / sqrt(2))
# and 1 + tanh(z) as 2 * sigmoid(2z) (gelu(-9) = -4.5e-19 in fp32, not -0.0).


def _gelu64(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * erfc64(-x * _INV_SQRT_2)


def _gelu_dx64(x: np.ndarray) -> np.ndarray:
    return 0.5 * erfc64(-x * _INV_SQRT_2) + x * _INV_SQRT_2PI * np.exp(-0.5 * x * x)


def _gelu_tanh64(x: np.ndarray) -> np.ndarray:
    return x * _sigmoid64(2.0 * _SQRT_2_OVER_PI * (x + 0.044715 * x**3))


def _gelu_sig_dx64(x: np.ndarray) -> np.ndarray:
    s = _sigmoid64(_GELU_SIGMOID_K * x)
    return s + _GELU_SIGMOID_K * x * s * (1.0 - s)


def _silu_dx64(x: np.ndarray) -> np.ndarray:
    s = _sigmoid64(x)
    return s * (1.0 + x * (1.0 - s))


# ---- raw-bit helpers ----------------------------------------------------------------------------------


def _unsigned_view(a: np.ndarray) -> np.ndarray:
    """Same bits viewed as the unsigned type of equal width (logical shifts)."""
    a = np.asarray(a)
    if a.dtype.kind == "i":
        return a.view(np.dtype(f"u{a.dtype.itemsize}"))
    return a


def _shift_right_logical(a: np.ndarray, s: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    u = _unsigned_view(a)
    out = np.right_shift(u, np.asarray(s).astype(u.dtype))
    return out.view(a.dtype) if a.dtype.kind == "i" else out


def _shift_left(a: np.ndarray, s: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    u = _unsigned_view(a)
    out = np.left_shift(u, np.asarray(s).astype(u.dtype))
    return out.view(a.dtype) if a.dtype.kind == "i" else out


def _shift_right_arith(a: np.ndarray, s: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return np.right_shift(a, np.asarray(s).astype(a.dtype))


def _bits(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Binary bitvec op on raw integers; the second operand is converted to the first's type."""

    def g(a: Any, b: Any = None) -> np.ndarray:
        a = np.asarray(a)
        if b is None:
            return fn(a)
        return fn(a, np.asarray(b).astype(a.dtype, casting="unsafe"))

    return g


# ---- the table ----------------------------------------------------------------------------------------

_INF = float("inf")

# Arithmetic (ALU); reductions fold as acc = op(element, acc) starting from the identity, which is the
# documented register update of the accumulating instructions (tensor_scalar_cumulative pseudocode).
add = _reg(Op("add", "arith", 2, _ew(np.add), 0.0))
subtract = _reg(Op("subtract", "arith", 2, _ew(np.subtract), 0.0), "sub")
multiply = _reg(Op("multiply", "arith", 2, _ew(np.multiply), 1.0), "mult", "mul")
divide = _reg(Op("divide", "arith", 2, _ew(np.divide)))
maximum = _reg(Op("maximum", "arith", 2, _ew(np.maximum), -_INF))
minimum = _reg(Op("minimum", "arith", 2, _ew(np.minimum), _INF))
# nl.max / nl.min: distinct objects (they are also high-level reductions) with the same ALU meaning.
max = _reg(Op("max", "arith", 2, _ew(np.maximum), -_INF), "amax")
min = _reg(Op("min", "arith", 2, _ew(np.minimum), _INF), "amin")
power = _reg(Op("power", "arith", 2, _ew(np.power)), "pow")
mod = _reg(Op("mod", "arith", 2, _ew(np.mod)))
fmod = _reg(Op("fmod", "arith", 2, _ew(np.fmod)))
abs_max = _reg(Op("abs_max", "arith", 2, _ew(lambda a, b: np.maximum(np.abs(a), np.abs(b))), 0.0))
abs_min = _reg(Op("abs_min", "arith", 2, _ew(lambda a, b: np.minimum(np.abs(a), np.abs(b))), _INF))
# bypass passes the data operand through (op1=bypass in tensor_scalar / activate2 means "no second op").
bypass = _reg(Op("bypass", "arith", 2, _ew(lambda a, b=None: a)))

# Comparisons -> 1.0 / 0.0
equal = _reg(Op("equal", "compare", 2, _ew(lambda a, b: _bool(a == b))))
not_equal = _reg(Op("not_equal", "compare", 2, _ew(lambda a, b: _bool(a != b))))
greater = _reg(Op("greater", "compare", 2, _ew(lambda a, b: _bool(a > b))))
greater_equal = _reg(Op("greater_equal", "compare", 2, _ew(lambda a, b: _bool(a >= b))))
less = _reg(Op("less", "compare", 2, _ew(lambda a, b: _bool(a < b))))
less_equal = _reg(Op("less_equal", "compare", 2, _ew(lambda a, b: _bool(a <= b))))

# Logical ops on "nonzero" -> 1.0 / 0.0
logical_and = _reg(Op("logical_and", "logical", 2, _ew(lambda a, b: _bool((a != 0) & (b != 0))), 1.0))
logical_or = _reg(Op("logical_or", "logical", 2, _ew(lambda a, b: _bool((a != 0) | (b != 0))), 0.0))
logical_xor = _reg(Op("logical_xor", "logical", 2, _ew(lambda a, b: _bool((a != 0) ^ (b != 0))), 0.0))
logical_not = _reg(Op("logical_not", "logical", 1, _ew(lambda a: _bool(a == 0))))

# Bitvec on raw integers
bitwise_and = _reg(Op("bitwise_and", "bitvec", 2, _bits(np.bitwise_and), -1))
bitwise_or = _reg(Op("bitwise_or", "bitvec", 2, _bits(np.bitwise_or), 0))
bitwise_xor = _reg(Op("bitwise_xor", "bitvec", 2, _bits(np.bitwise_xor), 0))
invert = _reg(Op("invert", "bitvec", 1, _bits(np.invert)), "bitwise_not")
left_shift = _reg(
    Op("left_shift", "bitvec", 2, _bits(_shift_left)), "logical_shift_left", "arithmetic_shift_left"
)
# NKI's right_shift is logical ([SHARED]: there is no arithmetic right shift on the ALU).
right_shift = _reg(
    Op("right_shift", "bitvec", 2, _bits(_shift_right_logical)), "right_shift_logical", "logical_shift_right"
)
right_shift_arithmetic = _reg(
    Op("right_shift_arithmetic", "bitvec", 2, _bits(_shift_right_arith)), "arithmetic_shift_right"
)

# Unary ALU arithmetic that is also a Scalar Engine function
abs = _reg(Op("abs", "arith", 1, _ew(np.abs), act=True))
rsqrt = _reg(Op("rsqrt", "arith", 1, _via64(lambda x: 1.0 / np.sqrt(x)), act=True))
reciprocal = _reg(Op("reciprocal", "arith", 1, _ew(lambda x: _F32(1.0) / x), act=True))
square = _reg(Op("square", "arith", 1, _ew(np.square), act=True))
relu = _reg(
    Op("relu", "arith", 1, _ew(lambda x: np.where(x > 0, x, np.where(np.isnan(x), x, _F32(0)))), act=True)
)
negative = _reg(Op("negative", "arith", 1, _ew(np.negative)), "neg")
ceil = _reg(Op("ceil", "arith", 1, _ew(np.ceil)))
floor = _reg(Op("floor", "arith", 1, _ew(np.floor)))
trunc = _reg(Op("trunc", "arith", 1, _ew(np.trunc)))
sign = _reg(Op("sign", "arith", 1, _ew(np.sign), act=True))
copy = _reg(Op("copy", "arith", 1, _ew(lambda x: x), act=True), "identity")

# Scalar Engine activation functions (not ALU ops)


def _act(
    name: str,
    fn64: Callable[[np.ndarray], np.ndarray],
    *aliases: str,
    limits: tuple[float, float] | None = None,
    chunked: bool = True,
) -> Op:
    """Register an activation; `limits` gives f(+inf), f(-inf) where the formula would yield inf*0 = NaN;
    chunked=False for an fn that is not elementwise in its work (see _via64)."""
    if limits is not None:
        raw, (pos, neg) = fn64, limits
        fn64 = lambda x: np.where(x == np.inf, pos, np.where(x == -np.inf, neg, raw(x)))  # noqa: E731
    return _reg(Op(name, "activation", 1, _via64(fn64, chunked), alu=False, act=True), *aliases)


exp = _act("exp", np.exp)
log = _act("log", np.log)
sqrt = _act("sqrt", np.sqrt)
tanh = _act("tanh", np.tanh)
sigmoid = _act("sigmoid", _sigmoid64)
silu = _act("silu", lambda x: x * _sigmoid64(x), limits=(np.inf, -0.0))
silu_dx = _act("silu_dx", _silu_dx64, limits=(1.0, 0.0))
gelu = _act("gelu", _gelu64, limits=(np.inf, -0.0), chunked=False)
gelu_dx = _act("gelu_dx", _gelu_dx64, limits=(1.0, 0.0), chunked=False)
gelu_apprx_tanh = _act("gelu_apprx_tanh", _gelu_tanh64, limits=(np.inf, -0.0))
gelu_apprx_sigmoid = _act(
    "gelu_apprx_sigmoid", lambda x: x * _sigmoid64(_GELU_SIGMOID_K * x), limits=(np.inf, -0.0)
)
gelu_apprx_sigmoid_dx = _act("gelu_apprx_sigmoid_dx", _gelu_sig_dx64, limits=(1.0, 0.0))
erf = _act("erf", erf64, chunked=False)
erf_dx = _act("erf_dx", lambda x: 2.0 / math.sqrt(math.pi) * np.exp(-x * x))
softplus = _act("softplus", _softplus64)
mish = _act("mish", lambda x: x * np.tanh(_softplus64(x)), limits=(np.inf, -0.0))
sin = _act("sin", np.sin)
cos = _act("cos", np.cos)
tan = _act("tan", np.tan)
arctan = _act("arctan", np.arctan)
exp2 = _act("exp2", np.exp2)
log2 = _act("log2", np.log2)


def _prelu(x: Any, alpha: float | np.ndarray = 0.0) -> np.ndarray:
    """Leaky ReLU with slope `alpha` (activate2's relu_param); alpha may be a (P, 1) vector."""
    with quiet():
        x = _f(x)
        return np.where(x >= 0, x, x * _f(alpha)).astype(_F32)


prelu = _reg(Op("prelu", "activation", 1, _prelu, alu=False, act=True))

# numpy callables NKI 1 accepted as ops (np.add, np.amax, ...)
_NUMPY_ALIASES: dict[Any, Op] = {
    np.add: add,
    np.subtract: subtract,
    np.multiply: multiply,
    np.divide: divide,
    np.maximum: maximum,
    np.minimum: minimum,
    np.max: max,
    np.min: min,
    np.power: power,
    np.equal: equal,
    np.not_equal: not_equal,
    np.greater: greater,
    np.greater_equal: greater_equal,
    np.less: less,
    np.less_equal: less_equal,
    np.logical_and: logical_and,
    np.logical_or: logical_or,
    np.logical_xor: logical_xor,
    np.bitwise_and: bitwise_and,
    np.bitwise_or: bitwise_or,
    np.bitwise_xor: bitwise_xor,
    np.invert: invert,
    np.left_shift: left_shift,
    np.right_shift: right_shift,
    np.abs: abs,
    np.exp: exp,
    np.log: log,
    np.sqrt: sqrt,
    np.tanh: tanh,
    np.sin: sin,
    np.cos: cos,
    np.arctan: arctan,
    np.sign: sign,
    np.square: square,
    np.negative: negative,
    np.mod: mod,
    np.fmod: fmod,
    np.reciprocal: reciprocal,
    np.ceil: ceil,
    np.floor: floor,
}


def lookup(op: Any) -> Op:
    """Resolve an `op=` argument: an Op, an op name string, or an NKI 1-style numpy callable."""
    if isinstance(op, Op):
        return op
    if isinstance(op, str):
        key = op[3:] if op.startswith("nl.") else op
        if key in OPS:
            return OPS[key]
        raise TypeError(f"unknown NKI op {op!r}")
    try:
        if op in _NUMPY_ALIASES:
            return _NUMPY_ALIASES[op]
    except TypeError:  # unhashable
        pass
    raise TypeError(f"expected an nl.* operator object (e.g. nl.add), got {op!r}")


def apply(op: Op, a: np.ndarray, b: Any = None) -> np.ndarray:
    """Apply a non-bitvec op in fp32; unary ops ignore `b` (an ISA operand slot they do not use)."""
    if op.arity == 1:
        return op.fn(a)
    return op.fn(a, b)


def apply_bitvec(op: Op, a: np.ndarray, b: Any = None) -> np.ndarray:
    """Apply a bitvec op on raw integers (b is converted to a's integer type)."""
    if op.arity == 1:
        return op.fn(a)
    return op.fn(a, b)
