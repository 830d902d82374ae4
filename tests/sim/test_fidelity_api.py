"""Emulator fidelity II (issue 12): the API spellings AWS's own kernels use run unmodified.

Each construct is a minimal kernel of our own showing what nki-library / nki-samples do ([NKILIB], [SAMPLES]):
`nki.dtype` annotations, `nki.isa.constants` and `neuronxcc.nki.*` imports, NKIObject records built from
keywords, `tensor_copy(dtype=...)`, raw-int enums (tests/sim/test_core_dma.py) and in-order sendrecv.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import nki
import nki.isa as nisa
import nki.language as nl
import numpy as np
import pytest

from nki_moe.sim import NkiValidationError, run
from nki_moe.sim.errors import NkiDocsWarning


def _copy_kernel(dtype_annotation):
    def k(a, dtype: dtype_annotation = nl.float32):
        t = nl.ndarray(a.shape, dtype=dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=t, src=a)
        out = nl.ndarray(a.shape, dtype=dtype, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=t)
        return out

    return k


def test_nki_dtype_is_the_type_of_dtypes():
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(run(_copy_kernel(nki.dtype), a).outputs, a)
    assert isinstance(nl.bfloat16, nki.dtype) and isinstance(np.float32, nki.dtype)
    assert not isinstance("float64", nki.dtype) and not isinstance(3, nki.dtype)
    assert nki.dtype("bf16") == nl.bfloat16


@pytest.mark.parametrize(
    "module",
    ["nki.isa.constants", "neuronxcc.nki.isa.constants", "neuronxcc.nki.typing", "neuronxcc.nki.language"],
)
def test_module_paths_of_production_kernels_import(module):
    mod = importlib.import_module(module)
    assert getattr(mod, "EMULATED", False) or mod.__name__.startswith("nki")


def test_constants_module_holds_the_same_enums():
    from neuronxcc.nki.isa.constants import oob_mode as oob2
    from nki.isa import constants as c
    from nki.isa.constants import dge_mode, oob_mode

    assert dge_mode is nisa.dge_mode and oob_mode is nisa.oob_mode is oob2 and c.engine is nisa.engine
    import neuronxcc.nki.typing as nt

    assert nt.tensor is nki.typing.tensor
    import neuronxcc.nki.isa as nisa2

    assert nisa2 is nisa


@dataclass
class _Section(nl.NKIObject):  # fields without annotations, as production kernels write them
    index = None
    offset = 0


@dataclass
class _Sizes(nl.NKIObject):
    T: int
    H: int
    tiles: list = field(default_factory=list)
    later: int = 0

    def __post_init__(self):
        self.n_tiles = self.T // 128


class _Plain(nl.NKIObject):  # annotated, not a dataclass, built from keywords
    B: int
    H: int

    def size(self) -> int:
        return self.B * self.H


def test_nkiobject_records_are_built_from_keywords():
    s = _Section(index=2, offset=128, extra="kept")
    assert (s.index, s.offset, s.extra) == (2, 128, "kept")
    assert _Section().offset == 0
    z = _Sizes(T=512, H=2048)
    assert (z.n_tiles, z.tiles, z.later) == (4, [], 0) and _Sizes(256, 8).n_tiles == 2
    partial = _Sizes(T=256)  # an annotated field left out stays unset until the kernel sets it
    with pytest.raises(AttributeError, match="'H'"):
        _ = partial.H
    assert _Plain(B=2, H=3).size() == 6 and _Plain(4, 5).size() == 20
    with pytest.raises(TypeError, match="positional"):
        _Plain(1, 2, 3)

    def k(a):
        sizes = _Sizes(T=a.shape[0], H=a.shape[1])
        t = nl.ndarray((sizes.T, sizes.H), dtype=nl.float32, buffer=nl.sbuf)
        nisa.dma_copy(dst=t, src=a)
        out = nl.ndarray(a.shape, dtype=nl.float32, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=t)
        return out

    a = np.ones((128, 4), np.float32)
    np.testing.assert_array_equal(run(k, a).outputs, a)


def _psum_to_sbuf(dtype_kw):
    def k(a):
        p = nl.ndarray((128, 64), nl.float32, buffer=nl.psum)
        w = nl.ndarray((128, 128), nl.bfloat16)
        x = nl.ndarray((128, 64), nl.bfloat16)
        nisa.memset(dst=w, value=1.0)
        nisa.dma_copy(dst=x, src=a)
        nisa.nc_matmul(dst=p, stationary=w, moving=x)
        out_sb = nl.ndarray((128, 64), nl.bfloat16)
        nisa.tensor_copy(dst=out_sb, src=p, dtype=dtype_kw)
        out = nl.ndarray((128, 64), nl.bfloat16, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=out_sb)
        return out

    return k


def test_tensor_copy_accepts_dtype_with_a_docs_warning():
    a = np.ones((128, 64), np.float32)
    with pytest.warns(NkiDocsWarning, match="dtype= is not in the 0.3 signature"):
        out = run(_psum_to_sbuf(nl.bfloat16), a).outputs
    np.testing.assert_array_equal(out.astype(np.float32), np.full((128, 64), 128.0))
    # AWS's tutorial passes a dtype other than dst's: it runs, converting to dst's dtype, and says so
    with pytest.warns(NkiDocsWarning, match="dtype=float32 differs from dst's bfloat16"):
        out = run(_psum_to_sbuf(nl.float32), a).outputs
    np.testing.assert_array_equal(out.astype(np.float32), np.full((128, 64), 128.0))
    with pytest.raises(NkiValidationError, match="float64"):  # not a dtype NKI has
        run(_psum_to_sbuf("float64"), a)


@dataclass(frozen=True)
class _Frozen(nl.NKIObject):
    rows: int
    cols: int = 4


def test_frozen_nkiobject_records_are_built_and_stay_frozen():
    import dataclasses

    f = _Frozen(rows=8)
    assert (f.rows, f.cols) == (8, 4) and hash(f) == hash(_Frozen(8, 4)) and f == _Frozen(8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.rows = 2


def test_integral_float_memset_into_an_integer_tile_runs_with_a_warning():
    def k(a, value):
        t = nl.ndarray((128, 4), nl.uint32)
        nisa.memset(dst=t, value=value)
        out = nl.ndarray((128, 4), nl.uint32, buffer=nl.shared_hbm)
        nisa.dma_copy(dst=out, src=t)
        return out

    a = np.zeros((1, 1), np.float32)
    with pytest.warns(NkiDocsWarning, match="float value 3.0 into an integer"):
        np.testing.assert_array_equal(run(k, a, 3.0).outputs, np.full((128, 4), 3, np.uint32))
    with pytest.raises(NkiValidationError, match="non-integral float"):
        run(k, a, 0.5)


def test_sendrecv_delivers_messages_in_order():
    """Two exchanges in a row: core 1 sends its second message before core 0 received the first."""

    @nki.jit
    def k(a):
        pid = nl.program_id(0)
        res = nl.ndarray((2, 4), dtype=nl.float32, buffer=nl.shared_hbm)
        acc = nl.ndarray((1, 4), dtype=nl.float32, buffer=nl.sbuf)
        nisa.memset(dst=acc, value=0.0)
        for r in range(3):
            mine = nl.ndarray((1, 4), dtype=nl.float32, buffer=nl.sbuf)
            nisa.memset(dst=mine, value=float(10 ** (r + pid * 3)))
            got = nl.ndarray((1, 4), dtype=nl.float32, buffer=nl.sbuf)
            nisa.sendrecv(src=mine, dst=got, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=0)
            # weight round r by r + 1: a lost or reordered message changes the sum
            nisa.scalar_tensor_tensor(
                dst=acc, data=got, op0=nl.multiply, operand0=float(r + 1), op1=nl.add, operand1=acc
            )
        nisa.dma_copy(dst=res[pid : pid + 1, :], src=acc)
        return res

    out = k[2](np.zeros((2, 4), np.float32))
    from_core1 = sum((r + 1) * 10.0 ** (r + 3) for r in range(3))
    from_core0 = sum((r + 1) * 10.0**r for r in range(3))
    np.testing.assert_array_equal(out, np.array([[from_core1] * 4, [from_core0] * 4], np.float32))
