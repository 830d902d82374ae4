"""Instruction fuzz: one emulated instruction per kernel against an independent NumPy oracle.

Each kind below is a tiny kernel (DMA the operands from HBM into SBUF tiles placed at a random legal start
partition and free offset, apply ONE nisa/nl instruction, DMA the result out) run through the emulator on
hypothesis-drawn shapes, dtypes, operands and values, and compared with `tests/sim/_fuzz_oracle.py`, which
implements the public NKI ISA description in plain NumPy/math and imports nothing from nki_moe.

Tolerances (each kind names its own; reasons):
- EXACT: one or more fp32 IEEE operations rounded op by op, RNE/saturating narrowing, bit moves, integer and
  bitvec math, selections, sequential fp32 reductions (docs/emulator.md: one engine lane, element 0 first).
- ULP1: textbook transcendental functions; both sides evaluate them in float64 and round once to fp32, so
  they can differ by one rounding of the fp32 result (one ulp of dst after narrowing).
- ULP2: fp32 `power` (libm powf, faithful to 1 ulp, against a float64 pow rounded once) and nl.mean (the sum
  times the fp32-rounded 1/n, against sum / n).
- BOUND: matmuls, partition reductions, bn statistics, softmax and rms_norm, whose fp32 summation order is
  unspecified: |got - exact| <= (terms + c) * 2^-24 * sum of |terms| (the standard fp32 summation bound).
Kinds with a known emulator bug carry `bug=` and run as strict xfails (remove the mark once it is fixed).
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import nki.isa as nisa
import nki.language as nl
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from nki_moe import sim
from tests.sim import _fuzz_oracle as O

EXAMPLES = 20  # hypothesis examples per kind
EXACT = "exact: fp32 IEEE ops rounded op by op, RNE/saturating narrowing, bit moves, integer math"
ULP1 = "1 ulp: textbook function in float64 rounded once to fp32 on both sides"
ULP2 = "2 ulp: fp32 result of a faithfully rounded fp32 algorithm against a float64 one rounded once"
BOUND = "bound: fp32 summation of unspecified order, |err| <= (n + c) * 2^-24 * sum|terms|"
EPS32 = 2.0**-24
FLOAT_IN = ("float32", "bfloat16", "float16")
STYLES = ("uniform", "small_ints", "magnitudes", "specials")


# ---- drawing cases -----------------------------------------------------------------------------------------


class Draw:
    """Labelled hypothesis draws for one case (a falsifying example then reads as the case's parameters)."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def int(self, lo: int, hi: int, label: str) -> int:
        """An integer in [lo, hi]."""
        return self.data.draw(st.integers(lo, hi), label=label)

    def pick(self, options: Sequence[Any], label: str) -> Any:
        """One of the options."""
        return self.data.draw(st.sampled_from(options), label=label)

    def flag(self, label: str) -> bool:
        """A boolean."""
        return self.data.draw(st.booleans(), label=label)

    def rng(self, label: str) -> np.random.Generator:
        """A NumPy generator from a drawn seed (bulk values without hypothesis drawing each element)."""
        return np.random.default_rng(self.int(0, 2**32 - 1, f"{label} seed"))

    def placement(self, max_p: int = 128, label: str = "partitions") -> tuple[int, int]:
        """(partitions, start partition) obeying the start-partition rule (P > 64 at 0, > 32 at 0/64)."""
        p = self.int(1, max_p, label)
        return p, self.pick((0,) if p > 64 else (0, 64) if p > 32 else (0, 32, 64, 96), "start partition")

    def floats(self, shape: tuple, dtype: str, lo: float = -64.0, hi: float = 64.0, label: str = "x"):
        """Finite values of `dtype` in [lo, hi]: uniform, small integers (ties, zeros), wide magnitudes
        or a uniform mix with special values (0, -0, +-1, +-0.5, 2, the bounds)."""
        rng, style = self.rng(label), self.pick(STYLES, f"{label} style")
        v = _styled(rng, style, shape, lo, hi)
        x = O.narrow(O.f32(v), dtype)
        out = (O.f64(x) < lo) | (O.f64(x) > hi)  # rounding may leave [lo, hi]: use an inner point
        return np.where(out, O.narrow(O.f32(np.full(shape, _inner(lo, hi))), dtype), x)

    def ints(self, shape: tuple, dtype: str, lo: int | None = None, hi: int | None = None, label: str = "x"):
        """Integers of `dtype` in [lo, hi] clipped to its range: uniform, small, or the range's edges."""
        dlo, dhi = O.int_range(dtype)
        lo, hi = dlo if lo is None else max(lo, dlo), dhi if hi is None else min(hi, dhi)
        rng, style = self.rng(label), self.pick(("uniform", "small", "edges"), f"{label} style")
        v = rng.integers(lo, hi, size=shape, endpoint=True)
        if style == "small":
            v = np.clip(rng.integers(-8, 9, size=shape), lo, hi)
        elif style == "edges":
            edges = np.array([x for x in (lo, hi, 0, 1, -1, lo + 1, hi - 1) if lo <= x <= hi])
            v = np.where(rng.random(shape) < 0.5, rng.choice(edges, size=shape), v)
        return v.astype(O.NP[dtype])

    def raw(self, shape: tuple, dtype: str, label: str = "x") -> np.ndarray:
        """Any bit patterns of `dtype`: finite values, with a quarter replaced by random bits (NaN, inf)."""
        if O.is_int(dtype):
            return self.ints(shape, dtype, label=label)
        x = np.array(self.floats(shape, dtype, -1e4, 1e4, label))
        noise = self.rng(f"{label} bits").integers(0, 2 ** (8 * x.itemsize), size=shape, dtype=np.uint64)
        keep = self.rng(f"{label} mask").random(shape) < 0.75
        return np.where(keep, O.bits(x), noise.astype(O.bits(x).dtype)).view(x.dtype)

    def scalar(self, lo: float, hi: float, label: str) -> float:
        """A compile-time fp32 scalar in [lo, hi]."""
        v = O.f32(self.data.draw(st.floats(lo, hi), label=label))
        v = np.nextafter(v, O.F32(np.inf)) if v < lo else np.nextafter(v, O.F32(-np.inf)) if v > hi else v
        return float(v)


def _inner(lo: float, hi: float) -> float:
    """A point well inside [lo, hi] (geometric for a wide positive range)."""
    return math.sqrt(lo * hi) if lo > 0 and hi / lo > 16 else 0.5 * (lo + hi)


def _styled(rng: np.random.Generator, style: str, shape: tuple, lo: float, hi: float) -> np.ndarray:
    """float64 values in [lo, hi] of one style."""
    if style == "small_ints" and math.floor(hi) >= math.ceil(lo):
        return rng.integers(max(math.ceil(lo), -8), min(math.floor(hi), 8), size=shape, endpoint=True) * 1.0
    if style == "magnitudes":
        if lo > 0:
            return 2.0 ** rng.uniform(math.log2(lo), math.log2(hi), shape)
        top = math.log2(max(-lo, hi))
        v = 2.0 ** rng.uniform(min(-30.0, top - 1), top, shape) * rng.choice([-1.0, 1.0], shape)
        return np.clip(v, lo, hi)
    v = rng.uniform(lo, hi, shape)
    if style == "specials":
        specials = [s for s in (0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, lo, hi) if lo <= s <= hi]
        v = np.where(rng.random(shape) < 0.3, rng.choice(specials, shape), v)
    return v


@dataclass
class Operand:
    """A scalar-or-(P, 1) operand: a compile-time fp32 scalar, or an fp32 vector passed as a kernel input."""

    value: float
    vector: np.ndarray | None = None

    @property
    def ref(self) -> np.ndarray:
        """The operand as the oracle sees it: an fp32 scalar or the (P, 1) vector."""
        return O.f32(self.value) if self.vector is None else self.vector

    @property
    def inputs(self) -> tuple[np.ndarray, ...]:
        """The kernel inputs it adds (the vector, if any)."""
        return () if self.vector is None else (self.vector,)

    def on_chip(self, extra: Iterator[Any], p0: int) -> Any:
        """Inside the kernel: the scalar, or the next extra HBM input loaded at partition p0."""
        return self.value if self.vector is None else onchip(next(extra), p0)


def operand(d: Draw, p: int, lo: float, hi: float, label: str) -> Operand:
    """A scalar or (P, 1) fp32 vector operand with values in [lo, hi]."""
    if d.flag(f"{label} is a (P, 1) vector"):
        return Operand(0.0, d.floats((p, 1), "float32", lo, hi, label))
    return Operand(d.scalar(lo, hi, label))


# ---- kernel pieces -----------------------------------------------------------------------------------------


def tile(shape: tuple, dtype: str, p0: int = 0, f0: int = 0) -> Any:
    """An SBUF tile of `shape` at start partition p0 and free offset f0 (a view of a 128-partition tile)."""
    if len(shape) == 2:
        return nl.ndarray((128, f0 + shape[1]), dtype=dtype, buffer=nl.sbuf)[p0 : p0 + shape[0], f0:]
    return nl.ndarray((128,) + tuple(shape[1:]), dtype=dtype, buffer=nl.sbuf)[p0 : p0 + shape[0]]


def onchip(x: Any, p0: int = 0, f0: int = 0) -> Any:
    """An HBM input copied into a placed SBUF tile of its dtype."""
    t = tile(tuple(x.shape), x.dtype, p0, f0)
    nisa.dma_copy(dst=t, src=x)
    return t


def store(t: Any) -> Any:
    """An on-chip SBUF tile copied to a new shared-HBM output."""
    out = nl.ndarray(tuple(t.shape), dtype=t.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=t)
    return out


def evict(t: Any) -> Any:
    """A PSUM tile copied to SBUF (same dtype, bit exact) and stored (DMA cannot read PSUM)."""
    s = nl.ndarray(tuple(t.shape), dtype=t.dtype, buffer=nl.sbuf)
    nisa.tensor_copy(dst=s, src=t)
    return store(s)


# ---- cases, kinds and the harness --------------------------------------------------------------------------


@dataclass
class Out:
    """One expected output: values, the allowed ulps of its dtype, an absolute bound, or bit exactness."""

    want: np.ndarray
    ulps: int = 0
    atol: np.ndarray | float = 0.0
    raw: bool = False


@dataclass
class Case:
    """One drawn kernel: its body over the HBM inputs, the inputs and the expected outputs."""

    body: Callable[..., Any]
    inputs: tuple[np.ndarray, ...]
    outs: tuple[Out, ...]
    target: str = "trn2"


@dataclass(frozen=True)
class Kind:
    """An instruction kind of the fuzz: how to draw a case, why its tolerance, a known bug (strict xfail)."""

    name: str
    draw: Callable[[Draw], Case] = field(repr=False)
    tol: str = EXACT
    bug: str | None = None
    examples: int = EXAMPLES


def check(kind: Kind, case: Case, outputs: Any) -> None:
    """Assert every output against the oracle; the message names the kind, output and first mismatches."""
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    assert len(outputs) == len(case.outs), f"{kind.name}: {len(outputs)} outputs, expected {len(case.outs)}"
    for i, (got, out) in enumerate(zip(outputs, case.outs)):
        got, label = np.asarray(got), f"{kind.name} output {i}"
        assert (got.dtype, got.shape) == (out.want.dtype, out.want.shape), (
            f"{label}: dtype/shape {got.dtype}{got.shape}, expected {out.want.dtype}{out.want.shape}"
        )
        bad, dist = O.mismatch(got, out.want, out.ulps, out.atol, out.raw)
        assert not bad.any(), O.describe(label, got, out.want, bad, dist, case.inputs) + f"\n  ({kind.tol})"


def fuzz(kind: Kind, shrink: bool = True) -> int:
    """Run a kind's examples (seeded by its name, so deterministic); returns how many ran."""
    ran = 0

    @seed(zlib.crc32(kind.name.encode()))
    @settings(
        max_examples=kind.examples,
        deadline=None,
        database=None,
        phases=(Phase.generate, Phase.shrink) if shrink else (Phase.generate,),
        report_multiple_bugs=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(data=st.data())
    def examples(data: st.DataObject) -> None:
        nonlocal ran
        case = kind.draw(Draw(data))
        check(kind, case, sim.run(case.body, *case.inputs, target=case.target).outputs)
        ran += 1

    examples()
    return ran


# ---- Vector/GpSimd ALU: tensor_tensor, tensor_scalar, scalar_tensor_tensor ---------------------------------

_FLOAT_OUT = ("float32", "bfloat16", "float16")


def _tensor_tensor(op: str, domains=((-64.0, 64.0), (-64.0, 64.0)), ulps: int = 0) -> Callable[[Draw], Case]:
    """tensor_tensor with a float ALU op on mixed float operand dtypes."""

    def draw(d: Draw) -> Case:
        (p, p0), f = d.placement(), d.int(1, 64, "free")
        a = d.floats((p, f), d.pick(FLOAT_IN, "data1 dtype"), *domains[0], label="data1")
        b = d.floats((p, f), d.pick(FLOAT_IN, "data2 dtype"), *domains[1], label="data2")
        out_dt, offs = d.pick(_FLOAT_OUT, "dst dtype"), [d.int(0, 3, "free offset") for _ in range(3)]

        def body(x, y):
            dst = tile((p, f), out_dt, p0, offs[0])
            nisa.tensor_tensor(
                dst=dst, data1=onchip(x, p0, offs[1]), data2=onchip(y, p0, offs[2]), op=getattr(nl, op)
            )
            return store(dst)

        want = O.narrow(O.alu(op, O.to_fp32(a), O.to_fp32(b)), out_dt)
        return Case(body, (a, b), (Out(want, ulps),))

    return draw


def _tensor_tensor_bits(op: str) -> Callable[[Draw], Case]:
    """tensor_tensor with a bitvec op on one integer dtype (shift amounts below the width)."""

    def draw(d: Draw) -> Case:
        (p, p0), f, dt = d.placement(), d.int(1, 64, "free"), d.pick(O.INTS, "dtype")
        a = d.ints((p, f), dt, label="data1")
        shift = op.endswith("shift")
        b = (
            d.ints((p, f), dt, 0, 8 * O.NP[dt].itemsize - 1, "data2")
            if shift
            else d.ints((p, f), dt, label="data2")
        )

        def body(x, y):
            dst = tile((p, f), dt, p0)
            nisa.tensor_tensor(dst=dst, data1=onchip(x, p0), data2=onchip(y, p0, 1), op=getattr(nl, op))
            return store(dst)

        return Case(body, (a, b), (Out(O.bitvec(op, a, b, dt)),))

    return draw


# exact integer references (int64, compares give 0/1)
_INT_OPS = {
    "add": np.add,
    "subtract": np.subtract,
    "multiply": np.multiply,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "equal": np.equal,
    "greater": np.greater,
    "less_equal": np.less_equal,
}


def _tensor_tensor_int32(d: Draw) -> Case:
    """All-int32 tensor_tensor (GpSimd by default): exact integer math, also beyond fp32's 2^24."""
    (p, p0), f, op = d.placement(), d.int(1, 64, "free"), d.pick(list(_INT_OPS), "op")
    bound = 2**15 if op == "multiply" else 2**30 - 1  # results stay inside int32 (overflow is unspecified)
    a, b = (d.ints((p, f), "int32", -bound, bound, label) for label in ("data1", "data2"))

    def body(x, y):
        dst = tile((p, f), "int32", p0)
        nisa.tensor_tensor(dst=dst, data1=onchip(x, p0), data2=onchip(y, p0), op=getattr(nl, op))
        return store(dst)

    want = _INT_OPS[op](a.astype(np.int64), b.astype(np.int64)).astype(np.int32)
    return Case(body, (a, b), (Out(want),))


_OP1 = (None, "add", "subtract", "multiply", "maximum", "minimum")


def _tensor_scalar(op0s: Sequence[str], op1s: Sequence[str | None] = _OP1, engine: Any = None) -> Callable:
    """tensor_scalar (data op0 operand0) op1 operand1 with scalar or (P, 1) operands and reverse flags."""

    def draw(d: Draw) -> Case:
        (p, p0), f = d.placement(), d.int(1, 64, "free")
        op0, op1 = d.pick(op0s, "op0"), d.pick(op1s, "op1")
        rev = (False, False) if engine is not None else (d.flag("reverse0"), d.flag("reverse1"))
        a = d.floats((p, f), d.pick(FLOAT_IN, "data dtype"), label="data")
        v0, v1 = operand(d, p, -8.0, 8.0, "operand0"), operand(d, p, -8.0, 8.0, "operand1")
        v1 = v1 if op1 is not None else Operand(0.0)
        out_dt = d.pick(_FLOAT_OUT, "dst dtype")

        def body(x, *extra):
            it = iter(extra)
            kw = dict(op0=getattr(nl, op0), operand0=v0.on_chip(it, p0), reverse0=rev[0], reverse1=rev[1])
            if op1 is not None:
                kw.update(op1=getattr(nl, op1), operand1=v1.on_chip(it, p0))
            if engine is not None:
                kw.update(engine=engine)
            dst = tile((p, f), out_dt, p0, 1)
            nisa.tensor_scalar(dst=dst, data=onchip(x, p0), **kw)
            return store(dst)

        t = O.alu(op0, O.to_fp32(a), v0.ref, rev[0])
        if op1 is not None:
            t = O.alu(op1, t, v1.ref, rev[1])
        return Case(body, (a,) + v0.inputs + v1.inputs, (Out(O.narrow(t, out_dt)),))

    return draw


_BITVEC = ("bitwise_and", "bitwise_or", "bitwise_xor", "left_shift", "right_shift")


def _tensor_scalar_bits(d: Draw) -> Case:
    """tensor_scalar with bitvec op0/op1 on an integer tile, integer scalar or (P, 1) integer operands."""
    (p, p0), f, dt = d.placement(), d.int(1, 64, "free"), d.pick(O.INTS, "dtype")
    op0, op1 = d.pick(_BITVEC, "op0"), d.pick((None,) + _BITVEC, "op1")
    width = 8 * O.NP[dt].itemsize
    a = d.ints((p, f), dt, label="data")

    def arg(op: str, label: str) -> tuple[int, np.ndarray | None]:
        hi = width - 1 if op.endswith("shift") else None
        lo = 0 if op.endswith("shift") else None
        if d.flag(f"{label} is a (P, 1) vector"):
            return 0, d.ints((p, 1), dt, lo, hi, label)
        return int(d.ints((1,), dt, lo, hi, label)[0]), None

    s0, vec0 = arg(op0, "operand0")
    s1, vec1 = arg(op1, "operand1") if op1 is not None else (0, None)
    vecs = tuple(v for v in (vec0, vec1) if v is not None)

    def body(x, *extra):
        it = iter(extra)
        o0 = onchip(next(it), p0) if vec0 is not None else s0
        o1 = onchip(next(it), p0) if vec1 is not None else s1
        dst = tile((p, f), dt, p0)
        more = {} if op1 is None else {"op1": getattr(nl, op1), "operand1": o1}
        nisa.tensor_scalar(dst=dst, data=onchip(x, p0, 2), op0=getattr(nl, op0), operand0=o0, **more)
        return store(dst)

    want = O.bitvec(op0, a, s0 if vec0 is None else vec0, dt)
    if op1 is not None:
        want = O.bitvec(op1, want, s1 if vec1 is None else vec1, dt)
    return Case(body, (a,) + vecs, (Out(want),))


def _scalar_tensor_tensor(d: Draw) -> Case:
    """scalar_tensor_tensor (data op0 operand0) op1 operand1 with a full-tile operand1."""
    (p, p0), f = d.placement(), d.int(1, 64, "free")
    op0, op1 = d.pick(O.ARITH_OPS + O.COMPARE_OPS, "op0"), d.pick(O.ARITH_OPS, "op1")
    rev0, rev1 = d.flag("reverse0"), d.flag("reverse1")
    a = d.floats((p, f), d.pick(FLOAT_IN, "data dtype"), label="data")
    b = d.floats((p, f), d.pick(FLOAT_IN, "operand1 dtype"), label="operand1")
    v0, out_dt = operand(d, p, -8.0, 8.0, "operand0"), d.pick(_FLOAT_OUT, "dst dtype")

    def body(x, y, *extra):
        dst = tile((p, f), out_dt, p0, 3)
        nisa.scalar_tensor_tensor(
            dst=dst,
            data=onchip(x, p0),
            op0=getattr(nl, op0),
            operand0=v0.on_chip(iter(extra), p0),
            op1=getattr(nl, op1),
            operand1=onchip(y, p0, 1),
            reverse0=rev0,
            reverse1=rev1,
        )
        return store(dst)

    t = O.alu(op1, O.alu(op0, O.to_fp32(a), v0.ref, rev0), O.to_fp32(b), rev1)
    return Case(body, (a, b) + v0.inputs, (Out(O.narrow(t, out_dt)),))


def _reciprocal(d: Draw) -> Case:
    """Vector reciprocal: IEEE fp32 1/x (zeros give signed infinities)."""
    (p, p0), f = d.placement(), d.int(1, 64, "free")
    a = d.floats((p, f), d.pick(FLOAT_IN, "dtype"), -(2.0**40), 2.0**40, "data")
    out_dt = d.pick(_FLOAT_OUT, "dst dtype")

    def body(x):
        dst = tile((p, f), out_dt, p0)
        nisa.reciprocal(dst=dst, data=onchip(x, p0, 1))
        return store(dst)

    return Case(body, (a,), (Out(O.narrow(O.alu("divide", 1.0, O.to_fp32(a)), out_dt)),))


# ---- reductions and scans ----------------------------------------------------------------------------------


def _free_shape(d: Draw) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A 1- or 2-dim free shape and trailing reduction axes of it."""
    if d.flag("3-D tile"):
        d1, d2 = d.int(1, 8, "d1"), d.int(1, 16, "d2")
        return (d1, d2), d.pick(((2,), (1, 2)), "axis")
    return (d.int(1, 64, "free"),), (1,)


def _tensor_reduce(op: str, aliases: Sequence[str] = ()) -> Callable[[Draw], Case]:
    """tensor_reduce along trailing free axes, optionally negated; a sequential fp32 fold per row."""
    lo, hi = (-1.25, 1.25) if op == "multiply" else (-64.0, 64.0)

    def draw(d: Draw) -> Case:
        (p, p0), (free, axes) = d.placement(), _free_shape(d)
        name, negate = d.pick((op,) + tuple(aliases), "op"), d.flag("negate")
        a = d.floats((p,) + free, d.pick(FLOAT_IN, "dtype"), lo, hi, "data")
        kept = free[: axes[0] - 1]
        out_dt = d.pick(_FLOAT_OUT, "dst dtype")

        def body(x):
            dst = tile((p,) + (kept or (1,)), out_dt, p0)
            nisa.tensor_reduce(dst=dst, op=getattr(nl, name), data=onchip(x, p0), axis=axes, negate=negate)
            return store(dst)

        rows = O.to_fp32(a).reshape(p * math.prod(kept), -1)
        res = O.fold(rows, op).reshape((p,) + (kept or (1,)))
        return Case(body, (a,), (Out(O.narrow(-res if negate else res, out_dt)),))

    return draw


def _tensor_reduce_bits(d: Draw) -> Case:
    """tensor_reduce with a bitvec op on raw integers."""
    (p, p0), (free, axes) = d.placement(), _free_shape(d)
    op, dt = d.pick(("bitwise_and", "bitwise_or", "bitwise_xor"), "op"), d.pick(O.INTS, "dtype")
    a = d.ints((p,) + free, dt, label="data")
    kept = free[: axes[0] - 1] or (1,)

    def body(x):
        dst = tile((p,) + kept, dt, p0)
        nisa.tensor_reduce(dst=dst, op=getattr(nl, op), data=onchip(x, p0), axis=axes)
        return store(dst)

    rows = a.reshape(p * math.prod(kept), -1)
    acc = np.full(rows.shape[0], -1 if op == "bitwise_and" else 0, np.int64)
    for i in range(rows.shape[1]):
        acc = O.bitvec(op, rows[:, i], acc, dt).astype(np.int64)
    return Case(body, (a,), (Out(O.wrap(acc, dt).reshape((p,) + kept)),))


_FOLD_OPS = ("add", "multiply", "maximum", "minimum")


def _tensor_scalar_reduce(d: Draw) -> Case:
    """tensor_scalar_reduce: dst = data op0 operand0 and its per-partition fold into reduce_res."""
    (p, p0), f = d.placement(), d.int(1, 64, "free")
    op0, red = d.pick(O.ARITH_OPS, "op0"), d.pick(_FOLD_OPS, "reduce_op")
    a = d.floats((p, f), d.pick(FLOAT_IN, "dtype"), -2.0, 2.0, "data")
    v0 = operand(d, p, 0.5, 1.5, "operand0")

    def body(x, *extra):
        dst, res = tile((p, f), "float32", p0), tile((p, 1), "float32", p0)
        nisa.tensor_scalar_reduce(
            dst=dst,
            data=onchip(x, p0),
            op0=getattr(nl, op0),
            operand0=v0.on_chip(iter(extra), p0),
            reduce_op=getattr(nl, red),
            reduce_res=res,
        )
        return store(dst), store(res)

    out = O.alu(op0, O.to_fp32(a), v0.ref)
    return Case(body, (a,) + v0.inputs, (Out(out), Out(O.fold(out, red).reshape(p, 1))))


_SCAN_OPS = ("add", "subtract", "multiply", "maximum", "minimum")


def _tensor_scalar_cumulative(d: Draw) -> Case:
    """tensor_scalar_cumulative: reg = op1(op0(src_i, imm0), reg), from the identity or a loaded imm1."""
    (p, p0), f = d.placement(), d.int(1, 64, "free")
    op0, op1 = d.pick(O.ARITH_OPS, "op0"), d.pick(_SCAN_OPS, "op1")
    a = d.floats((p, f), d.pick(("float32", "bfloat16"), "dtype"), -1.5, 1.5, "src")
    v0, load = operand(d, p, 0.5, 1.5, "imm0"), d.flag("load_reduce")
    v1 = operand(d, p, -1.0, 1.0, "imm1") if load else Operand(0.0)
    out_dt = d.pick(("float32", "bfloat16"), "dst dtype")
    cmd = nisa.reduce_cmd.load_reduce if load else nisa.reduce_cmd.reset_reduce

    def body(x, *extra):
        it = iter(extra)
        dst = tile((p, f), out_dt, p0)
        i0, i1 = v0.on_chip(it, p0), v1.on_chip(it, p0) if load else None
        nisa.tensor_scalar_cumulative(
            dst=dst,
            src=onchip(x, p0, 1),
            op0=getattr(nl, op0),
            op1=getattr(nl, op1),
            imm0=i0,
            imm1=i1,
            reduce_cmd=cmd,
        )
        return store(dst)

    t = O.alu(op0, O.to_fp32(a), v0.ref)
    reg = np.broadcast_to(v1.ref if load else O.f32(O.IDENTITY[op1]), (p, 1))[:, 0]
    out = np.empty_like(t)
    for i in range(f):
        out[:, i] = reg = O.alu(op1, t[:, i], reg)
    return Case(body, (a,) + v0.inputs + v1.inputs, (Out(O.narrow(out, out_dt)),))


def _tensor_tensor_scan(d: Draw) -> Case:
    """tensor_tensor_scan: res_i = op1(op0(data0_i, res_{i-1}), data1_i) with reverse flags."""
    (p, p0), f = d.placement(), d.int(1, 64, "free")
    op0, op1 = d.pick(_SCAN_OPS, "op0"), d.pick(_SCAN_OPS, "op1")
    rev0, rev1 = d.flag("reverse0"), d.flag("reverse1")
    a = d.floats((p, f), d.pick(FLOAT_IN, "data0 dtype"), -1.5, 1.5, "data0")
    b = d.floats((p, f), d.pick(FLOAT_IN, "data1 dtype"), -1.5, 1.5, "data1")
    init, out_dt = operand(d, p, -2.0, 2.0, "initial"), d.pick(_FLOAT_OUT, "dst dtype")

    def body(x, y, *extra):
        dst = tile((p, f), out_dt, p0)
        nisa.tensor_tensor_scan(
            dst=dst,
            data0=onchip(x, p0),
            data1=onchip(y, p0, 2),
            initial=init.on_chip(iter(extra), p0),
            op0=getattr(nl, op0),
            op1=getattr(nl, op1),
            reverse0=rev0,
            reverse1=rev1,
        )
        return store(dst)

    x, y = O.to_fp32(a), O.to_fp32(b)
    prev, out = np.broadcast_to(init.ref, (p, 1))[:, 0], np.empty_like(x)
    for i in range(f):
        out[:, i] = prev = O.alu(op1, O.alu(op0, x[:, i], prev, rev0), y[:, i], rev1)
    return Case(body, (a, b) + init.inputs, (Out(O.narrow(out, out_dt)),))


def _partition_reduce(d: Draw) -> Case:
    """tensor_partition_reduce across partitions (GpSimd) -> (1, F)."""
    p, f = d.int(1, 128, "partitions"), d.int(1, 64, "free")
    op = d.pick(("add", "maximum", "bitwise_or", "bitwise_and"), "op")
    bitwise = op.startswith("bitwise")
    dt = d.pick(("int32", "uint16", "int8") if bitwise else ("float32", "bfloat16"), "dtype")
    a = d.ints((p, f), dt, label="data") if bitwise else d.floats((p, f), dt, label="data")

    def body(x):
        dst = tile((1, f), dt)
        nisa.tensor_partition_reduce(dst=dst, op=getattr(nl, op), data=onchip(x))
        return store(dst)

    if bitwise:
        ufunc = np.bitwise_or if op == "bitwise_or" else np.bitwise_and
        return Case(body, (a,), (Out(ufunc.reduce(a, axis=0, keepdims=True)),))
    x = O.f64(a)
    if op == "maximum":
        return Case(body, (a,), (Out(O.narrow(O.f32(x.max(0, keepdims=True)), dt)),))
    want = O.narrow(O.f32(x.sum(0, keepdims=True)), dt)
    bound = (p + 2) * EPS32 * np.abs(x).sum(0, keepdims=True)
    return Case(body, (a,), (Out(want, 1, bound),))


# ---- Scalar Engine activation ------------------------------------------------------------------------------

# function: (z domain lo, hi; ulps; absolute floor for functions with a zero crossing inside the domain)
ACTIVATIONS: dict[str, tuple[float, float, int, float]] = {
    "copy": (-1e4, 1e4, 0, 0.0),
    "abs": (-1e4, 1e4, 0, 0.0),
    "sign": (-1e4, 1e4, 0, 0.0),
    "square": (-1e4, 1e4, 0, 0.0),
    "relu": (-1e4, 1e4, 0, 0.0),
    "reciprocal": (-(2.0**40), 2.0**40, 0, 0.0),
    "exp": (-80.0, 80.0, 1, 0.0),
    "log": (2.0**-60, 2.0**60, 1, 0.0),
    "sqrt": (2.0**-100, 2.0**100, 1, 0.0),
    "rsqrt": (2.0**-80, 2.0**90, 1, 0.0),
    "tanh": (-20.0, 20.0, 1, 0.0),
    "sigmoid": (-80.0, 80.0, 1, 0.0),
    "silu": (-80.0, 80.0, 1, 0.0),
    "silu_dx": (-80.0, 80.0, 1, 1e-15),
    "gelu": (-5.0, 30.0, 1, 0.0),
    "gelu_dx": (-5.0, 30.0, 1, 1e-15),
    "gelu_apprx_tanh": (-5.0, 30.0, 1, 0.0),
    "gelu_apprx_sigmoid": (-40.0, 40.0, 1, 0.0),
    "gelu_apprx_sigmoid_dx": (-40.0, 40.0, 1, 1e-15),
    "softplus": (-80.0, 80.0, 1, 0.0),
    "mish": (-40.0, 40.0, 1, 0.0),
    "erf": (-8.0, 8.0, 1, 0.0),
    "erf_dx": (-9.0, 9.0, 1, 0.0),
    "sin": (-math.pi, math.pi, 1, 0.0),
    "arctan": (-math.pi / 2, math.pi / 2, 1, 0.0),
}


def _scale_bias(d: Draw, p: int, lo: float, hi: float) -> tuple[Operand, Operand | None, float, float]:
    """Scale (1.0, a scalar or an fp32 (P, 1) vector), bias (None, a scalar or a (P, 1) tile) and the data
    range [xlo, xhi] that keeps data * scale + bias inside [lo, hi]; bias tiles may be bf16."""
    w = min(1.0, (hi - lo) / 8)
    # x * s in [lo + w, hi - w] for every |s| in [0.5, 2]
    xlo = (lo + w) / 2 if lo + w <= 0 else 2 * (lo + w)
    xhi = (hi - w) / 2 if hi - w >= 0 else 2 * (hi - w)
    if xlo >= xhi or d.flag("identity scale, no bias"):  # a narrow domain leaves no room for scales
        return Operand(1.0), None, lo, hi
    mag = operand(d, p, 0.5, 2.0, "scale")
    if lo == -hi and d.flag("negative scale"):  # negative scales only keep a symmetric domain
        mag = Operand(-mag.value, None if mag.vector is None else -mag.vector)
    # positive domains take a non-negative bias: x * s may round down to lo + w, and (lo + w) - w rounds to 0
    # in fp32 when lo << w
    bias = operand(d, p, 0.0 if lo > 0 else -w, w, "bias") if d.flag("bias") else None
    if bias is not None and bias.vector is not None and d.flag("bf16 bias tile"):
        bias = Operand(0.0, O.narrow(bias.vector, "bfloat16"))
    return mag, bias, xlo, xhi


def _activation(fn: str, tail: bool = False) -> Callable[[Draw], Case]:
    """nisa.activation: dst = fn(data * scale + bias), the product and the sum each rounded to fp32.

    tail: z in [-12, -5] instead, where no function of LEFT_TAILS crosses zero (no absolute floor)."""
    lo, hi, ulps, atol = (-12.0, -5.0, 1, 0.0) if tail else ACTIVATIONS[fn]

    def draw(d: Draw) -> Case:
        (p, p0), f = d.placement(), d.int(1, 64, "free")
        scale, bias, xlo, xhi = _scale_bias(d, p, lo, hi)
        a = d.floats((p, f), d.pick(FLOAT_IN, "data dtype"), xlo, xhi, "data")
        out_dt = d.pick(_FLOAT_OUT, "dst dtype")
        extra_in = scale.inputs + (() if bias is None else bias.inputs)

        def body(x, *extra):
            it = iter(extra)
            s = scale.on_chip(it, p0)
            b = None if bias is None else bias.on_chip(it, p0)
            dst = tile((p, f), out_dt, p0, 2)
            nisa.activation(dst=dst, op=getattr(nl, fn), data=onchip(x, p0, 1), bias=b, scale=s)
            return store(dst)

        z = O.alu("multiply", O.to_fp32(a), scale.ref)
        if bias is not None:
            z = O.alu("add", z, O.to_fp32(bias.ref))
        return Case(body, (a,) + extra_in, (Out(O.narrow(O.act(fn, z), out_dt), ulps, atol),))

    return draw


def _activation_accumulate(d: Draw) -> Case:
    """activation with reduce_cmd=reset_reduce (or activation_reduce): the row sums of fn(x) in fp32."""
    (p, p0), f = d.placement(), d.int(1, 64, "free")
    fn, legacy = d.pick(("copy", "square", "abs", "relu"), "op"), d.flag("activation_reduce")
    a = d.floats((p, f), d.pick(FLOAT_IN, "dtype"), -16.0, 16.0, "data")

    def body(x):
        dst, res = tile((p, f), "float32", p0), tile((p, 1), "float32", p0)
        kw = dict(dst=dst, op=getattr(nl, fn), data=onchip(x, p0), reduce_op=nl.add, reduce_res=res)
        if legacy:
            nisa.activation_reduce(**kw)
        else:
            nisa.activation(**kw, reduce_cmd=nisa.reduce_cmd.reset_reduce)
        return store(dst), store(res)

    out = O.act(fn, O.to_fp32(a))
    return Case(body, (a,), (Out(out), Out(O.fold(out, "add").reshape(p, 1))))


def _exponential(d: Draw) -> Case:
    """trn3 exponential: dst = exp(src - max_value), the difference rounded to fp32."""
    (p, p0), f = d.placement(), d.int(1, 64, "free")
    a = d.floats((p, f), d.pick(FLOAT_IN, "dtype"), -60.0, 60.0, "src")
    mv, out_dt = operand(d, p, -20.0, 20.0, "max_value"), d.pick(_FLOAT_OUT, "dst dtype")

    def body(x, *extra):
        dst = tile((p, f), out_dt, p0)
        nisa.exponential(dst=dst, src=onchip(x, p0), max_value=mv.on_chip(iter(extra), p0))
        return store(dst)

    want = O.narrow(O.act("exp", O.alu("subtract", O.to_fp32(a), mv.ref)), out_dt)
    return Case(body, (a,) + mv.inputs, (Out(want, 1),), target="trn3")


# ---- copies, casts, selections, constants ------------------------------------------------------------------

_ENGINES = (nisa.vector_engine, nisa.gpsimd_engine, nisa.scalar_engine)
_ALL_DT = FLOAT_IN + O.INTS


def _tensor_copy(src_dts: Sequence[str], dst_dts: Sequence[str] = (), specials: bool = False) -> Callable:
    """tensor_copy on any engine: bit exact between equal dtypes (no dst_dts), else src -> fp32 -> dst."""

    def draw(d: Draw) -> Case:
        (p, p0), f = d.placement(), d.int(1, 64, "free")
        src_dt = d.pick(src_dts, "src dtype")
        dst_dt = d.pick([t for t in dst_dts if t != src_dt], "dst dtype") if dst_dts else src_dt
        if src_dt == dst_dt:
            a = d.raw((p, f), src_dt, "src")
        elif O.is_int(src_dt):
            a = d.ints((p, f), src_dt, label="src")
        else:
            a = d.floats((p, f), src_dt, -1e5, 1e5, "src")
            if specials:  # ties at .5 and infinities, for the RNE + saturation rule
                halves = O.narrow(O.f32(np.rint(O.f64(a) * 2) / 2), src_dt)
                a = np.where(d.rng("halves").random((p, f)) < 0.5, halves, a)
                u = d.rng("infinities").random((p, f))
                a = np.where(u < 0.03, np.inf, np.where(u > 0.97, -np.inf, a)).astype(a.dtype)
        eng = d.pick(_ENGINES, "engine")

        def body(x):
            dst = tile((p, f), dst_dt, p0, 1)
            nisa.tensor_copy(dst=dst, src=onchip(x, p0), engine=eng)
            return store(dst)

        same = src_dt == dst_dt
        return Case(body, (a,), (Out(a if same else O.cast(a, dst_dt), raw=same),))

    return draw


def _dma_copy_cast(d: Draw) -> Case:
    """dma_copy HBM -> SBUF between dtypes: src -> fp32 -> dst (large int32 values round through fp32)."""
    (p, p0), f = d.placement(), d.int(1, 64, "free")
    src_dt = d.pick(_ALL_DT, "src dtype")
    dst_dt = d.pick([t for t in _ALL_DT if t != src_dt], "dst dtype")
    a = (
        d.ints((p, f), src_dt, label="src")
        if O.is_int(src_dt)
        else d.floats((p, f), src_dt, -1e5, 1e5, "src")
    )

    def body(x):
        dst = tile((p, f), dst_dt, p0, 2)
        nisa.dma_copy(dst=dst, src=x)
        return store(dst)

    return Case(body, (a,), (Out(O.cast(a, dst_dt)),))


def _dma_copy_reshape(d: Draw) -> Case:
    """dma_copy of equal element counts between differently shaped views: row-major order, bit exact."""
    (p, p0), f = d.placement(), d.int(1, 64, "free")
    n = p * f
    rows = d.pick([r for r in range(1, min(n, 64) + 1) if n % r == 0], "src rows")
    dt = d.pick(_ALL_DT, "dtype")
    a = d.raw((rows, n // rows), dt, "src")

    def body(x):
        dst = tile((p, f), dt, p0, 3)
        nisa.dma_copy(dst=dst, src=x)
        return store(dst)

    return Case(body, (a,), (Out(a.reshape(p, f), raw=True),))


def _tensor_copy_predicated(d: Draw) -> Case:
    """tensor_copy_predicated: dst takes src (a tile or a scalar) where the predicate is nonzero."""
    (p, p0), f = d.placement(), d.int(1, 64, "free")
    dt, pdt = d.pick(_ALL_DT, "dtype"), d.pick(("uint8", "uint16", "uint32"), "predicate dtype")
    rev = d.flag("reverse_pred")
    old, pred = d.raw((p, f), dt, "dst"), d.ints((p, f), pdt, 0, 3, "predicate")
    scalar = None if O.is_int(dt) or d.flag("src is a tile") else d.scalar(-100.0, 100.0, "src")
    src = d.raw((p, f), dt, "src")

    def body(o, q, s):
        dst = onchip(o, p0)
        nisa.tensor_copy_predicated(
            dst=dst,
            src=onchip(s, p0, 1) if scalar is None else scalar,
            predicate=onchip(q, p0, 2),
            reverse_pred=rev,
        )
        return store(dst)

    take = (pred != 0) != rev
    new = src if scalar is None else np.broadcast_to(O.narrow(O.f32(scalar), dt), (p, f))
    return Case(body, (old, pred, src), (Out(np.where(take, new, old), raw=True),))


def _select_reduce(d: Draw) -> Case:
    """select_reduce: where(predicate, on_true, on_false) with the row max into reduce_res."""
    (p, p0), f = d.placement(), d.int(1, 64, "free")
    pdt, rev = d.pick(("int8", "uint8", "int16", "uint16"), "predicate dtype"), d.flag("reverse_pred")
    pred = d.ints((p, f), pdt, label="predicate")
    on_true = d.floats((p, f), d.pick(FLOAT_IN, "on_true dtype"), label="on_true")
    off, out_dt = operand(d, p, -64.0, 64.0, "on_false"), d.pick(_FLOAT_OUT, "dst dtype")

    def body(q, t, *extra):
        dst, res = tile((p, f), out_dt, p0), tile((p, 1), "float32", p0)
        nisa.select_reduce(
            dst=dst,
            predicate=onchip(q, p0),
            on_true=onchip(t, p0, 1),
            on_false=off.on_chip(iter(extra), p0),
            reduce_res=res,
            reduce_cmd=nisa.reduce_cmd.reset_reduce,
            reduce_op=nl.maximum,
            reverse_pred=rev,
        )
        return store(dst), store(res)

    out = np.where((pred != 0) != rev, O.to_fp32(on_true), np.broadcast_to(off.ref, (p, f))).astype(O.F32)
    return Case(
        body, (pred, on_true) + off.inputs, (Out(O.narrow(out, out_dt)), Out(out.max(1, keepdims=True)))
    )


def _memset(d: Draw) -> Case:
    """memset on Vector or GpSimd: a float rounded to dst, or an in-range int."""
    (p, p0), f, dt = d.placement(), d.int(1, 64, "free"), d.pick(_ALL_DT, "dtype")
    if O.is_int(dt):
        value: float | int = int(d.ints((1,), dt, label="value")[0])
        want = np.full((p, f), value, O.NP[dt])
    else:
        value = d.scalar(-1e4, 1e4, "value")
        want = np.full((p, f), O.narrow(O.f32(value), dt))
    eng = d.pick((nisa.vector_engine, nisa.gpsimd_engine), "engine")

    def body():
        dst = tile((p, f), dt, p0, 1)
        nisa.memset(dst=dst, value=value, engine=eng)
        return store(dst)

    return Case(body, (), (Out(want),))


def _affine(d: Draw) -> tuple[list[list[int]], int, int, int]:
    """An iota/affine_select pattern [[step, num], ...] (1-3 pairs, <= 64 elements), offset and multiplier."""
    pairs, n = [], 64
    for k in range(d.int(1, 3, "pattern pairs")):
        num = d.int(1, max(1, n), f"num{k}")
        n //= num
        pairs.append([d.int(-8, 8, f"step{k}"), num])
    return (
        pairs,
        d.int(-1000, 1000, "offset"),
        d.int(-16, 16, "channel_multiplier"),
        math.prod(m for _, m in pairs),
    )


def _affine_values(pattern: list[list[int]], offset: int, cm: int, p: int) -> np.ndarray:
    """offset + p * cm + sum_k i_k * step_k over the pattern's index space, row-major (Python ints)."""
    free = [
        sum(i * s for i, (s, _) in zip(idx, pattern))
        for idx in itertools.product(*(range(n) for _, n in pattern))
    ]
    return np.array([[offset + q * cm + v for v in free] for q in range(p)], dtype=np.int64)


def _iota(d: Draw) -> Case:
    """iota: the affine value per element in int32, cast to dst."""
    (p, p0), (pattern, offset, cm, f) = d.placement(), _affine(d)
    dt = d.pick(("int32", "int16", "float32", "bfloat16"), "dtype")

    def body():
        dst = tile((p, f), dt, p0)
        nisa.iota(dst=dst, pattern=pattern, offset=offset, channel_multiplier=cm)
        return store(dst)

    v = _affine_values(pattern, offset, cm, p)
    return Case(body, (), (Out(O.saturate(v, dt) if O.is_int(dt) else O.narrow(O.f32(v), dt)),))


def _affine_select(d: Draw) -> Case:
    """affine_select: on_true where cmp_op(affine value, 0), else on_false_value (fp32 -> dst)."""
    (p, p0), (pattern, offset, cm, f) = d.placement(), _affine(d)
    cmp, in_dt = d.pick(O.COMPARE_OPS, "cmp_op"), d.pick(FLOAT_IN, "on_true dtype")
    out_dt = d.pick(FLOAT_IN, "dst dtype")
    on_true, fv = d.floats((p, f), in_dt, label="on_true"), d.scalar(-1e30, 1e30, "on_false_value")

    def body(t):
        dst = tile((p, f), out_dt, p0)
        nisa.affine_select(
            dst=dst,
            pattern=pattern,
            channel_multiplier=cm,
            on_true_tile=onchip(t, p0, 1),
            on_false_value=fv,
            cmp_op=getattr(nl, cmp),
            offset=offset,
        )
        return store(dst)

    keep = O.ALU[cmp](_affine_values(pattern, offset, cm, p), 0) != 0
    want = np.where(keep, O.cast(on_true, out_dt), O.narrow(O.f32(fv), out_dt))
    return Case(body, (on_true,), (Out(want),))


# ---- Tensor Engine -----------------------------------------------------------------------------------------


def _nc_transpose(engine: Any, limit: int) -> Callable[[Draw], Case]:
    """nc_transpose on the Tensor (SBUF -> PSUM, <= 128x128) or Vector (<= 32x32) engine: bit exact."""

    def draw(d: Draw) -> Case:
        (p, p0), f = d.placement(limit), d.int(1, min(limit, 64), "free")
        dt = d.pick(("float32", "bfloat16", "float16") if engine is nisa.tensor_engine else _ALL_DT, "dtype")
        a = d.raw((p, f), dt, "data")

        def body(x):
            if engine is nisa.tensor_engine:
                dst = nl.ndarray((f, p), dtype=dt, buffer=nl.psum)
                nisa.nc_transpose(dst=dst, data=onchip(x, p0, 1), engine=engine)
                return evict(dst)
            dst = tile((f, p), dt, 0, 2)
            nisa.nc_transpose(dst=dst, data=onchip(x, p0, 1), engine=engine)
            return store(dst)

        return Case(body, (a,), (Out(np.ascontiguousarray(a.T), raw=True),))

    return draw


_MM_PAIRS = (
    ("float32", "float32"),
    ("bfloat16", "bfloat16"),
    ("bfloat16", "float16"),
    ("float16", "float16"),
)


def _matmul_want(s: np.ndarray, m: np.ndarray) -> Out:
    """stationary[K, M]^T @ moving[K, N] exact (float64) with the fp32 accumulation bound."""
    s64, m64 = O.f64(s), O.f64(m)
    exact = s64.T @ m64
    bound = (s.shape[0] + 2) * EPS32 * (np.abs(s64).T @ np.abs(m64))
    return Out(O.f32(exact), 1, bound)


def _nc_matmul(d: Draw) -> Case:
    """nc_matmul accumulating kt K-tiles into one PSUM tile (accumulate=None: first write overwrites)."""
    K, M, N, kt = d.int(1, 128, "K"), d.int(1, 128, "M"), d.int(1, 64, "N"), d.int(1, 3, "K tiles")
    sdt, mdt = d.pick(_MM_PAIRS, "stationary, moving dtypes")
    s = d.floats((kt * K, M), sdt, -8.0, 8.0, "stationary")
    m = d.floats((kt * K, N), mdt, -8.0, 8.0, "moving")

    def body(sh, mh):
        acc = nl.ndarray((M, N), dtype="float32", buffer=nl.psum)
        for k in range(kt):
            st_k, mv_k = tile((K, M), sdt), tile((K, N), mdt)
            nisa.dma_copy(dst=st_k, src=sh[k * K : (k + 1) * K, :])
            nisa.dma_copy(dst=mv_k, src=mh[k * K : (k + 1) * K, :])
            nisa.nc_matmul(dst=acc, stationary=st_k, moving=mv_k)
        return evict(acc)

    return Case(body, (s, m), (_matmul_want(s, m),))


def _nc_matmul_transpose(d: Draw) -> Case:
    """nc_matmul(is_transpose=True) with an identity moving operand: stationary^T, bit exact."""
    K, M, dt = d.int(1, 128, "K"), d.int(1, 128, "M"), d.pick(("float32", "bfloat16", "float16"), "dtype")
    s = d.raw((K, M), dt, "stationary")
    eye = O.narrow(np.eye(K, dtype=O.F32), dt)

    def body(sh, ih):
        dst = nl.ndarray((M, K), dtype=dt, buffer=nl.psum)
        nisa.nc_matmul(dst=dst, stationary=onchip(sh), moving=onchip(ih), is_transpose=True)
        return evict(dst)

    return Case(body, (s, eye), (Out(np.ascontiguousarray(s.T), raw=True),))


# ---- top-8, statistics -------------------------------------------------------------------------------------


def _max8(d: Draw) -> Case:
    """max8: the 8 largest values per partition, descending (ties included)."""
    (p, p0), f = d.placement(), d.int(8, 64, "free")
    dt = d.pick(FLOAT_IN, "dtype")
    a = d.floats((p, f), dt, label="src")

    def body(x):
        dst = tile((p, 8), dt, p0)
        nisa.max8(dst=dst, src=onchip(x, p0, 1))
        return store(dst)

    want = np.array([sorted(row, reverse=True)[:8] for row in O.f64(a).tolist()])
    return Case(body, (a,), (Out(O.narrow(O.f32(want), dt)),))


def _top8_inputs(d: Draw) -> tuple[int, int, int, np.ndarray, np.ndarray]:
    """data (P, F) with ties and, per partition, 8 distinct values that occur in its row."""
    (p, p0), f = d.placement(), d.int(8, 64, "free")
    a = np.array(d.floats((p, f), "float32", label="data"))
    rng = d.rng("vals")
    vals = np.empty((p, 8), O.F32)
    for i in range(p):
        uniq = np.unique(a[i])
        if uniq.size < 8:  # too few distinct values: plant eight fresh ones
            a[i, rng.choice(f, 8, replace=False)] = 1000.0 + np.arange(8)
            uniq = np.unique(a[i])
        vals[i] = rng.choice(uniq, 8, replace=False)
    return p, p0, f, a, vals


def _first_index(a: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """Per partition, the index of the first occurrence of each value."""
    return np.array([[list(row).index(v) for v in vs] for row, vs in zip(a.tolist(), vals.tolist())])


def _nc_find_index8(d: Draw) -> Case:
    """nc_find_index8: first occurrence of each of 8 distinct present values."""
    p, p0, f, a, vals = _top8_inputs(d)
    dt = d.pick(("uint16", "uint32"), "dst dtype")

    def body(x, v):
        dst = tile((p, 8), dt, p0)
        nisa.nc_find_index8(dst=dst, data=onchip(x, p0), vals=onchip(v, p0, 1))
        return store(dst)

    return Case(body, (a, vals), (Out(_first_index(a, vals).astype(O.NP[dt])),))


def _nc_match_replace8(d: Draw) -> Case:
    """nc_match_replace8: the first occurrence of each of 8 distinct values replaced by imm, with indices."""
    p, p0, f, a, vals = _top8_inputs(d)
    imm = d.scalar(-1e30, 1e30, "imm")

    def body(x, v):
        dst, idx = tile((p, f), "float32", p0), tile((p, 8), "uint32", p0)
        nisa.nc_match_replace8(dst=dst, data=onchip(x, p0, 1), vals=onchip(v, p0), imm=imm, dst_idx=idx)
        return store(dst), store(idx)

    first = _first_index(a, vals)
    want = a.copy()
    np.put_along_axis(want, first, O.f32(imm), axis=1)
    return Case(body, (a, vals), (Out(want), Out(first.astype(np.uint32))))


def _bn_stats(d: Draw) -> Case:
    """bn_stats: [count, mean, sum of squared deviations] of the even- then odd-indexed elements."""
    (p, p0), f = d.placement(), d.int(2, 64, "free")
    a = d.floats((p, f), d.pick(FLOAT_IN, "dtype"), label="data")

    def body(x):
        dst = tile((p, 6), "float32", p0)
        nisa.bn_stats(dst=dst, data=onchip(x, p0, 1))
        return store(dst)

    cols, bounds = [], []
    for half in (O.f64(a)[:, 0::2], O.f64(a)[:, 1::2]):
        n, mean, amax = half.shape[1], half.mean(1), np.abs(half).max(1)
        tol = (n + 4) * EPS32  # the fp32 sums; the squared deviations also carry the mean's error
        cols += [np.full(p, n), mean, ((half - mean[:, None]) ** 2).sum(1)]
        bounds += [np.zeros(p), tol * amax, 4 * tol * n * amax**2]
    return Case(body, (a,), (Out(O.f32(np.stack(cols, 1)), 1, np.stack(bounds, 1)),))


def _bn_aggr(d: Draw) -> Case:
    """bn_aggr: k concatenated (count, mean, M2) groups -> [mean, population variance]."""
    (p, p0), k = d.placement(), d.int(1, 8, "groups")
    rng = d.rng("stats")
    count = rng.integers(1, 200, (p, k)).astype(np.float64)
    mean = O.f64(O.f32(rng.uniform(-50, 50, (p, k))))
    m2 = O.f64(O.f32(count * rng.uniform(0, 100, (p, k))))
    stats = O.f32(np.stack([count, mean, m2], 2).reshape(p, 3 * k))

    def body(x):
        dst = tile((p, 2), "float32", p0)
        nisa.bn_aggr(dst=dst, data=onchip(x, p0))
        return store(dst)

    n = count.sum(1)
    mu = (count * mean).sum(1) / n
    var = (m2.sum(1) + (count * (mean - mu[:, None]) ** 2).sum(1)) / n
    scale = (3 * k + 8) * EPS32 * np.stack([(count * np.abs(mean)).sum(1) / n, var + mu**2], 1)
    return Case(body, (stats,), (Out(O.f32(np.stack([mu, var], 1)), 1, scale),))


# ---- nl.* high-level operations ----------------------------------------------------------------------------


def _nl_binary(d: Draw) -> Case:
    """nl.add/subtract/multiply/maximum of two tiles: result dtype by NKI type promotion."""
    (p, _), f = d.placement(), d.int(1, 64, "free")
    op = d.pick(("add", "subtract", "multiply", "maximum"), "op")
    dts = [d.pick(_ALL_DT, f"{n} dtype") for n in ("x", "y")]
    a, b = (
        d.ints((p, f), t, -100, 100, n) if O.is_int(t) else d.floats((p, f), t, label=n)
        for t, n in zip(dts, "xy")
    )
    out_dt = O.promote(*dts)

    def body(x, y):
        r = getattr(nl, op)(nl.load(x), nl.load(y))
        return store(r)

    return Case(body, (a, b), (Out(O.narrow(O.alu(op, O.to_fp32(a), O.to_fp32(b)), out_dt)),))


def _nl_scalar(d: Draw) -> Case:
    """nl.<op>(tile, float) and nl.<op>(float, tile): a Python float is a weakly typed fp32."""
    (p, _), f = d.placement(), d.int(1, 64, "free")
    op, rev = d.pick(("add", "subtract", "multiply", "divide", "maximum"), "op"), d.flag("scalar first")
    dt = d.pick(FLOAT_IN, "dtype")
    a, c = d.floats((p, f), dt, label="x"), d.scalar(-8.0, 8.0, "scalar")

    def body(x):
        t = nl.load(x)
        return store(getattr(nl, op)(c, t) if rev else getattr(nl, op)(t, c))

    want = O.narrow(O.alu(op, O.to_fp32(a), O.f32(c), rev), O.promote(dt, "float32"))
    return Case(body, (a,), (Out(want),))


_NL_UNARY = ("exp", "tanh", "sigmoid", "sqrt", "abs", "square", "silu", "log")


def _nl_unary(d: Draw) -> Case:
    """nl.exp(tile) and friends: the Scalar Engine function into a tile of the input dtype."""
    (p, _), f = d.placement(), d.int(1, 64, "free")
    fn, dt = d.pick(_NL_UNARY, "op"), d.pick(FLOAT_IN, "dtype")
    lo, hi, _, atol = ACTIVATIONS[fn]
    a = d.floats((p, f), dt, max(lo, -10.0) if lo <= 0 else max(lo, 2.0**-10), min(hi, 10.0), "x")

    def body(x):
        return store(getattr(nl, fn)(nl.load(x)))

    return Case(body, (a,), (Out(O.narrow(O.act(fn, O.to_fp32(a)), dt), 1, atol),))


def _nl_reduce(fn: str) -> Callable[[Draw], Case]:
    """nl.sum/max/min/mean(x, axis, keepdims=True) over trailing free axes, result in x's dtype."""
    op = {"sum": "add", "max": "maximum", "min": "minimum", "mean": "add"}[fn]

    def draw(d: Draw) -> Case:
        (p, _), (free, axes) = d.placement(), _free_shape(d)
        dt = d.pick(FLOAT_IN, "dtype")
        a = d.floats((p,) + free, dt, label="x")
        kept = free[: axes[0] - 1]

        def body(x):
            return store(getattr(nl, fn)(nl.load(x), axis=axes, keepdims=True))

        n = math.prod(free) // max(1, math.prod(kept))
        res = O.fold(O.to_fp32(a).reshape(p * math.prod(kept), n), op)
        if fn == "mean":
            res = O.alu("divide", res, float(n))
        shape = (p,) + kept + (1,) * len(axes)
        return Case(body, (a,), (Out(O.narrow(res, dt).reshape(shape), 2 if fn == "mean" else 0),))

    return draw


def _nl_where(cond_dts: Sequence[str]) -> Callable[[Draw], Case]:
    """nl.where(condition, x, y): x where the condition is nonzero, else y (tiles or scalars)."""

    def draw(d: Draw) -> Case:
        (p, _), f = d.placement(), d.int(1, 64, "free")
        cdt, dt = d.pick(cond_dts, "condition dtype"), d.pick(("float32", "bfloat16"), "x/y dtype")
        if O.is_int(cdt):
            c = d.ints((p, f), cdt, -3, 3, "condition")  # negatives are true too (clipped to 0 if unsigned)
        else:
            c = d.floats((p, f), cdt, -2.0, 2.0, "condition")
        a, b = d.floats((p, f), dt, label="x"), d.floats((p, f), dt, label="y")
        y_scalar = None if d.flag("y is a tile") else d.scalar(-8.0, 8.0, "y")

        def body(ch, xh, yh):
            y = nl.load(yh) if y_scalar is None else y_scalar
            return store(nl.where(nl.load(ch), nl.load(xh), y, dtype=dt))

        other = b if y_scalar is None else np.broadcast_to(O.narrow(O.f32(y_scalar), dt), (p, f))
        return Case(body, (c, a, b), (Out(np.where(O.f64(c) != 0, a, other)),))

    return draw


def _nl_transpose(d: Draw) -> Case:
    """nl.transpose: a PE transpose into PSUM, bit exact."""
    p, f, dt = d.int(1, 128, "partitions"), d.int(1, 128, "free"), d.pick(FLOAT_IN, "dtype")
    a = d.raw((p, f), dt, "x")

    def body(x):
        return evict(nl.transpose(nl.load(x)))

    return Case(body, (a,), (Out(np.ascontiguousarray(a.T), raw=True),))


def _nl_matmul(d: Draw) -> Case:
    """nl.matmul(x, y, transpose_x=True): x[K, M]^T @ y[K, N] in fp32 PSUM."""
    K, M, N = d.int(1, 128, "K"), d.int(1, 128, "M"), d.int(1, 64, "N")
    xdt, ydt = d.pick(_MM_PAIRS, "x, y dtypes")
    x, y = d.floats((K, M), xdt, -8.0, 8.0, "x"), d.floats((K, N), ydt, -8.0, 8.0, "y")

    def body(xh, yh):
        return evict(nl.matmul(nl.load(xh), nl.load(yh), transpose_x=True))

    return Case(body, (x, y), (_matmul_want(x, y),))


def _nl_softmax(d: Draw) -> Case:
    """nl.softmax along the free axis in fp32."""
    (p, _), f = d.placement(), d.int(1, 64, "free")
    a = d.floats((p, f), "float32", -20.0, 20.0, "x")

    def body(x):
        return store(nl.softmax(nl.load(x), axis=1))

    x = O.f64(a)
    z = x - x.max(1, keepdims=True)
    want = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    # exp of the fp32-rounded difference (|z| * 2^-24 relative), the row sum, the reciprocal and the product
    bound = want * (np.abs(z) + f + 8) * EPS32
    return Case(body, (a,), (Out(O.f32(want), 1, bound),))


def _nl_rms_norm(d: Draw) -> Case:
    """nl.rms_norm(x, w): x / sqrt(mean(x^2) + eps) * w along the free axis."""
    (p, _), f = d.placement(), d.int(1, 64, "free")
    a = d.floats((p, f), "float32", -8.0, 8.0, "x")
    w = d.floats((p, f), "float32", -2.0, 2.0, "w") if d.flag("weight") else None
    eps = d.scalar(1e-6, 1e-2, "epsilon")

    def body(x, *wh):
        weight = nl.load(wh[0]) if wh else None
        return store(nl.rms_norm(nl.load(x), weight, axis=1, epsilon=eps))

    x = O.f64(a)
    want = x / np.sqrt((x * x).mean(1, keepdims=True) + eps) * (1.0 if w is None else O.f64(w))
    bound = np.abs(want) * (f + 12) * EPS32
    return Case(body, (a,) + (() if w is None else (w,)), (Out(O.f32(want), 1, bound),))


# ---- the kinds ---------------------------------------------------------------------------------------------

# The left tails (z in [-12, -5]) where 0.5 * x * (1 + erf(x / sqrt 2)) and 0.5 * x * (1 + tanh(u)) cancel;
# the emulator writes them as 0.5 * x * erfc(-x / sqrt 2) and x * sigmoid(2u) (found by this fuzz, fixed).
LEFT_TAILS = ("gelu", "gelu_dx", "gelu_apprx_tanh")

KINDS: list[Kind] = [
    *(Kind(f"tensor_tensor.{op}", _tensor_tensor(op)) for op in O.ARITH_OPS + O.COMPARE_OPS),
    *(Kind(f"tensor_tensor.{op}", _tensor_tensor(op)) for op in ("logical_and", "logical_or", "logical_xor")),
    Kind("tensor_tensor.power", _tensor_tensor("power", ((0.125, 8.0), (-4.0, 4.0)), 2), ULP2),
    *(Kind(f"tensor_tensor.{op}", _tensor_tensor_bits(op)) for op in _BITVEC),
    Kind("tensor_tensor.int32_gpsimd", _tensor_tensor_int32),
    *(Kind(f"tensor_scalar.{op}", _tensor_scalar((op,))) for op in O.ARITH_OPS),
    Kind("tensor_scalar.compare", _tensor_scalar(O.COMPARE_OPS)),
    Kind("tensor_scalar.scalar_engine", _tensor_scalar(("multiply",), (None, "add"), nisa.scalar_engine)),
    Kind("tensor_scalar.scalar_engine_add", _tensor_scalar(("add",), (None,), nisa.scalar_engine)),
    Kind("tensor_scalar.bitvec", _tensor_scalar_bits),
    Kind("scalar_tensor_tensor", _scalar_tensor_tensor),
    Kind("reciprocal", _reciprocal),
    Kind("tensor_reduce.add", _tensor_reduce("add")),
    Kind("tensor_reduce.multiply", _tensor_reduce("multiply")),
    Kind("tensor_reduce.maximum", _tensor_reduce("maximum", ("max",))),
    Kind("tensor_reduce.minimum", _tensor_reduce("minimum", ("min",))),
    Kind("tensor_reduce.bitvec", _tensor_reduce_bits),
    Kind("tensor_scalar_reduce", _tensor_scalar_reduce),
    Kind("tensor_scalar_cumulative", _tensor_scalar_cumulative),
    Kind("tensor_tensor_scan", _tensor_tensor_scan),
    Kind("tensor_partition_reduce", _partition_reduce, BOUND),
    *(
        Kind(f"activation.{fn}", _activation(fn), EXACT if ulps == 0 else ULP1)
        for fn, (_, _, ulps, _) in ACTIVATIONS.items()
    ),
    *(Kind(f"activation.{fn}.left_tail", _activation(fn, tail=True), ULP1) for fn in LEFT_TAILS),
    Kind("activation.accumulate", _activation_accumulate),
    Kind("exponential", _exponential, ULP1),
    Kind("tensor_copy.same_dtype", _tensor_copy(_ALL_DT)),
    Kind("tensor_copy.float_to_float", _tensor_copy(FLOAT_IN, FLOAT_IN)),
    Kind("tensor_copy.float_to_int", _tensor_copy(FLOAT_IN, O.INTS, specials=True)),
    Kind("tensor_copy.int_to_float", _tensor_copy(O.INTS, FLOAT_IN)),
    Kind("tensor_copy.int_to_int", _tensor_copy(O.INTS, O.INTS)),
    Kind("tensor_copy_predicated", _tensor_copy_predicated),
    Kind("select_reduce", _select_reduce),
    Kind("memset", _memset),
    Kind("iota", _iota),
    Kind("affine_select", _affine_select),
    Kind("dma_copy.cast", _dma_copy_cast),
    Kind("dma_copy.reshape", _dma_copy_reshape),
    Kind("nc_transpose.tensor_engine", _nc_transpose(nisa.tensor_engine, 128)),
    Kind("nc_transpose.vector_engine", _nc_transpose(nisa.vector_engine, 32)),
    Kind("nc_matmul", _nc_matmul, BOUND),
    Kind("nc_matmul.is_transpose", _nc_matmul_transpose),
    Kind("max8", _max8),
    Kind("nc_find_index8", _nc_find_index8),
    Kind("nc_match_replace8", _nc_match_replace8),
    Kind("bn_stats", _bn_stats, BOUND),
    Kind("bn_aggr", _bn_aggr, BOUND),
    Kind("nl.binary", _nl_binary),
    Kind("nl.binary_scalar", _nl_scalar),
    Kind("nl.unary", _nl_unary, ULP1),
    *(
        Kind(f"nl.{fn}", _nl_reduce(fn), ULP2 if fn == "mean" else EXACT)
        for fn in ("sum", "max", "min", "mean")
    ),
    Kind("nl.where", _nl_where(("uint8", "uint16", "uint32"))),
    Kind("nl.where.float_condition", _nl_where(("float32", "bfloat16", "int8", "int32"))),
    Kind("nl.transpose", _nl_transpose),
    Kind("nl.matmul", _nl_matmul, BOUND),
    Kind("nl.softmax", _nl_softmax, BOUND),
    Kind("nl.rms_norm", _nl_rms_norm, BOUND),
]
BY_NAME = {k.name: k for k in KINDS}


def _param(kind: Kind) -> Any:
    """A kind as a pytest parameter; a known bug makes it a strict xfail."""
    marks = (
        () if kind.bug is None else (pytest.mark.xfail(strict=True, raises=AssertionError, reason=kind.bug),)
    )
    return pytest.param(kind, id=kind.name, marks=marks)


@pytest.mark.parametrize("kind", [_param(k) for k in KINDS])
def test_instruction_fuzz(kind: Kind) -> None:
    assert fuzz(kind, shrink=kind.bug is None) == kind.examples


def test_fuzz_covers_1000_cases_over_40_kinds() -> None:
    """The suite's size, from the parametrisation (independent of which tests ran or in what order)."""
    counted = [k for k in KINDS if k.bug is None]
    cases = sum(k.examples for k in counted)
    print(
        f"instruction fuzz: {len(counted)} kinds, {cases} cases ({len(KINDS) - len(counted)} known-bug kinds)"
    )
    assert len(BY_NAME) == len(KINDS), "kind names must be unique"
    assert len(counted) >= 40 and cases >= 1000, (len(counted), cases)


# ---- the fuzz catches a broken instruction -----------------------------------------------------------------


def _swap_subtract(mp: pytest.MonkeyPatch) -> None:
    """tensor_tensor subtract computes b - a."""
    fn = nl.subtract.fn
    mp.setattr(nl.subtract, "fn", lambda a, b: fn(b, a))


def _exp_4ulp(mp: pytest.MonkeyPatch) -> None:
    """exp about 4 ulps high."""
    fn = nl.exp.fn
    mp.setattr(nl.exp, "fn", lambda x: fn(x) * O.F32(1 + 2.0**-21))


def _bf16_truncates(mp: pytest.MonkeyPatch) -> None:
    """fp32 -> bf16 writes truncate instead of rounding to nearest even."""
    from nki_moe.sim import numerics

    cast = numerics.cast

    def truncating(values, name):
        out = cast(values, name)
        if numerics.normalize_dtype(name) != "bfloat16" or not numerics.precise():
            return out
        f = np.ascontiguousarray(np.asarray(values, dtype=O.F32))
        return (f.view(np.uint32) >> 16).astype(np.uint16).view(out.dtype).reshape(out.shape)

    mp.setattr(numerics, "cast", truncating)


def _int_rounds_half_away(mp: pytest.MonkeyPatch) -> None:
    """float -> int writes round halves away from zero instead of to even."""
    from nki_moe.sim import numerics

    to_int = numerics._float_to_int
    mp.setattr(numerics, "_float_to_int", lambda f, name: to_int(np.trunc(f + np.copysign(0.5, f)), name))


MUTANTS = {
    "tensor_tensor.subtract": _swap_subtract,
    "activation.exp": _exp_4ulp,
    "tensor_copy.float_to_float": _bf16_truncates,
    "tensor_copy.float_to_int": _int_rounds_half_away,
}


@pytest.mark.parametrize("name", [pytest.param(n, id=m.__name__[1:]) for n, m in MUTANTS.items()])
def test_fuzz_catches_a_broken_instruction(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness of test_instruction_fuzz[name] fails once that instruction is made subtly wrong."""
    MUTANTS[name](monkeypatch)
    with pytest.raises(AssertionError, match=f"^{name} output 0: .* elements differ"):
        fuzz(BY_NAME[name], shrink=False)
