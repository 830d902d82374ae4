"""isa_extra.py: dma_compute (static sum, scatter/gather read-modify-write) and nonzero_with_count.

Results are checked against NumPy on small cases; every documented rejection ([NKI-ISA]) has a case that
asserts the error names the instruction, the operand and the kernel line.
"""

from __future__ import annotations

import linecache
import os

import ml_dtypes
import numpy as np
import pytest

from nki_moe import sim
from nki_moe.sim import isa as nisa
from nki_moe.sim import language as nl
from nki_moe.sim.errors import NkiKwargError, NkiUninitializedError, NkiValidationError
from nki_moe.sim.isa_extra import dma_compute, nonzero_with_count

BF16 = ml_dtypes.bfloat16


def run(body, *arrays, target: str = "trn2", **kw):
    """Launch `body(*hbm_inputs)` as a kernel; returns the RunResult."""

    def kernel(*hbm):
        return body(*hbm)

    return sim.run(kernel, *arrays, target=target, **kw)


def sb(shape, dtype="float32", buffer=None):
    return nl.ndarray(tuple(shape), dtype=dtype, buffer=buffer or nl.sbuf)


def load(x, dtype=None):
    t = sb(x.shape, dtype or x.dtype)
    nisa.dma_copy(dst=t, src=x)
    return t


def store(t):
    out = nl.ndarray(t.shape, dtype=t.dtype, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=t)
    return out


def f32_sum(*arrays) -> np.ndarray:
    """Left-to-right fp32 sum of the arrays' values (flattened in row-major order)."""
    acc = np.asarray(arrays[0], np.float32).reshape(-1).copy()
    for a in arrays[1:]:
        acc += np.asarray(a, np.float32).reshape(-1)
    return acc


def assert_names_kernel_line(err: NkiValidationError, instruction: str, operand: str | None) -> None:
    assert err.instruction == instruction, str(err)
    if operand is not None:
        assert err.operand == operand, str(err)
        assert f"'{operand}'" in str(err)
    file, line = err.location.rsplit(":", 1)
    assert os.path.samefile(file, __file__), err.location
    assert f"{instruction}(" in linecache.getline(file, int(line)), err.location
    assert err.location in str(err)


# ---- dma_compute: static sum ----------------------------------------------------------------------------


def test_sum_of_three_hbm_sources_in_logical_order_cast_to_dst():
    g = np.random.default_rng(0)
    a = g.standard_normal((4, 24)).astype(BF16)
    b = g.standard_normal((8, 12)).astype(np.float32)
    c = g.integers(-50, 50, size=(96,)).astype(np.int32)

    def body(a, b, c):
        d32 = sb((4, 24))
        dma_compute(dst=d32, srcs=[a, b.reshape((4, 24)), c.reshape((4, 24))], reduce_op=nl.add)
        d16 = sb((2, 48), "bfloat16")  # a different shape: only the element counts must match
        dma_compute(d16, (a, b, c), nl.add, scales=(1.0, 1.0, 1))
        return store(d32), store(d16)

    r = run(body, a, b, c)
    out32, out16 = r.outputs
    want = f32_sum(a, b, c)
    np.testing.assert_array_equal(out32.reshape(-1), want)
    np.testing.assert_array_equal(out16.reshape(-1), want.astype(BF16))  # one RNE rounding of the fp32 sum
    recs = [x for x in r.trace if x.opcode == "dma_compute"]
    assert len(recs) == 2 and all(x.engine == "dma" for x in recs)
    info = recs[0].info
    assert info["n_srcs"] == 3 and info["dge_mode"] == "none" and info["queue"].startswith("q")
    assert info["read_bytes"] == 96 * (2 + 4 + 4) == info["dma_bytes"]
    assert info["write_bytes"] == 96 * 4


def test_in_place_accumulate_into_an_hbm_input():
    # out[0] = out[0] + out[1], dst being the same view as srcs[0] (an HBM input updated in place).
    x = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)

    def body(x):
        dma_compute(dst=x[0], srcs=[x[0], x[1]], reduce_op=nl.add, scales=[1.0, 1.0])
        return x

    want = x.copy()
    want[0] += want[1]
    run(body, x)
    np.testing.assert_array_equal(x, want)


def test_single_source_and_sbuf_to_hbm():
    a = np.random.default_rng(1).integers(-(2**20), 2**20, size=(3, 7)).astype(np.int32)

    def body(a):
        t = load(a)
        out = nl.ndarray((3, 7), dtype=nl.float32, buffer=nl.shared_hbm)
        dma_compute(dst=out, srcs=[t], reduce_op=nl.add)
        return out

    np.testing.assert_array_equal(run(body, a).outputs, a.astype(np.float32))


def test_sum_of_uninitialised_data_cannot_reach_an_hbm_output():
    def body(a):
        junk = sb(a.shape)
        out = nl.ndarray(a.shape, dtype=nl.float32, buffer=nl.shared_hbm)
        dma_compute(dst=out, srcs=[a, junk], reduce_op=nl.add)
        return out

    with pytest.raises(NkiUninitializedError, match="uninitialised"):
        run(body, np.zeros((2, 4), np.float32))


def test_accepts_the_02_argument_order_in_02_compat_mode():
    a = np.arange(8, dtype=np.float32).reshape(2, 4)

    def body(a):
        t = sb((2, 4))
        dma_compute(t, [a, a], [1.0, 1.0], nl.add)  # 0.2: (dst, srcs, scales, reduce_op)
        return store(t)

    np.testing.assert_array_equal(run(body, a, compat="0.2").outputs, 2 * a)
    with pytest.raises(NkiValidationError, match="0.2 order") as e:
        run(body, a)
    assert_names_kernel_line(e.value, "dma_compute", "reduce_op")


# ---- dma_compute: read-modify-write ---------------------------------------------------------------------


def _idx_tile(idx):
    n = idx.shape[0]
    t = sb((n, 1), "uint32")
    nisa.dma_copy(dst=t, src=idx.reshape((n, 1)))
    return t


def _rows_of(table, i_tile, n):
    W = table.shape[1]
    return table.ap(pattern=[[W, n], [1, W]], offset=0, vector_offset=i_tile)


@pytest.mark.parametrize("dst_first", [True, False])
def test_scatter_rmw_adds_rows_into_hbm(dst_first):
    table = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)
    idx = np.array([4, 1, 3], np.uint32)
    upd = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)

    def body(table, idx, upd):
        n = idx.shape[0]
        i_tile, u = _idx_tile(idx), load(upd)
        view = _rows_of(table, i_tile, n)
        srcs = [view, u] if dst_first else [u, view]
        dma_compute(dst=view, srcs=srcs, reduce_op=nl.add, unique_indices=True)
        return table

    want = table.copy()
    want[idx] += upd
    r = run(body, table, idx, upd)
    np.testing.assert_array_equal(table, want)  # the kernel input is updated in place
    rec = [x for x in r.trace if x.opcode == "dma_compute"][0]
    assert rec.info["queue"] == "pool" and rec.info["dge_mode"] == "swdge"


def test_scatter_rmw_oob_modes():
    table = np.zeros((5, 2), np.float32)
    bad = np.array([0, 9, 2], np.uint32)
    upd = np.ones((3, 2), np.float32)

    def body(table, idx, upd, oob):
        n = idx.shape[0]
        view = _rows_of(table, _idx_tile(idx), n)
        dma_compute(dst=view, srcs=[view, load(upd)], reduce_op=nl.add, oob_mode=oob)
        return table

    with pytest.raises(NkiValidationError, match="out of bounds") as e:
        run(lambda *a: body(*a, nisa.oob_mode.error), table, bad, upd)
    assert "9" in str(e.value.value)
    run(lambda *a: body(*a, nisa.oob_mode.skip), table, bad, upd)
    want = np.zeros((5, 2), np.float32)
    want[[0, 2]] = 1.0
    np.testing.assert_array_equal(table, want)


@pytest.mark.parametrize("oob", ["error", "skip"])
def test_gather_rmw_adds_hbm_rows_into_sbuf(oob):
    table = (np.arange(10 * 8, dtype=np.float32).reshape(10, 8) + 1).astype(BF16)  # no zeros
    idx = np.array([3, 0, 9, 3], np.uint32)  # repeats are fine for a gather
    if oob == "skip":
        idx[1] = 77
    acc0 = np.random.default_rng(3).standard_normal((4, 8)).astype(np.float32)

    def body(table, idx, acc0):
        acc = load(acc0)
        src = _rows_of(table, _idx_tile(idx), 4)
        dma_compute(dst=acc, srcs=[src, acc], reduce_op=nl.add, oob_mode=getattr(nisa.oob_mode, oob))
        return store(acc)

    out = run(body, table, idx, acc0).outputs
    valid = idx < 10
    want = acc0.copy()
    want[valid] += table[idx[valid]].astype(np.float32)
    np.testing.assert_array_equal(out, want)


# ---- dma_compute: rejections ----------------------------------------------------------------------------


def _a():
    return nl.ndarray((2, 4), dtype=nl.float32, buffer=nl.shared_hbm)


def _filled(shape=(2, 4), dtype="float32"):
    t = sb(shape, dtype)
    nisa.memset(dst=t, value=0)
    return t


def neg_reduce_op():
    dma_compute(dst=_a(), srcs=[_filled()], reduce_op=nl.multiply)


def neg_scales_value():
    dma_compute(dst=_a(), srcs=[_filled(), _filled()], reduce_op=nl.add, scales=[1.0, 0.5])


def neg_scales_length():
    dma_compute(dst=_a(), srcs=[_filled(), _filled()], reduce_op=nl.add, scales=[1.0])


def neg_no_srcs():
    dma_compute(dst=_a(), srcs=[], reduce_op=nl.add)


def neg_17_srcs():
    t = _filled()
    dma_compute(dst=_a(), srcs=[t] * 17, reduce_op=nl.add)


def neg_srcs_not_a_list():
    dma_compute(dst=_a(), srcs=_filled(), reduce_op=nl.add)


def neg_element_count():
    dma_compute(dst=_a(), srcs=[_filled(), _filled((2, 5))], reduce_op=nl.add)


def neg_psum_dst():
    dma_compute(dst=sb((2, 4), buffer=nl.psum), srcs=[_filled()], reduce_op=nl.add)


def neg_psum_src():
    dma_compute(dst=_a(), srcs=[sb((2, 4), buffer=nl.psum)], reduce_op=nl.add)


def neg_scalar_offset():
    view = _a().ap([[4, 2], [1, 4]], offset=0, scalar_offset=nisa.register_alloc(0))
    dma_compute(dst=_filled(), srcs=[view], reduce_op=nl.add)


def _table_and_idx(n=2, values=(1, 0)):
    table = nl.ndarray((4, 4), dtype=nl.float32, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=table, src=_filled((4, 4)))
    i_tile = sb((n, 1), "uint32")
    nisa.iota(dst=i_tile, pattern=[[0, 1]], offset=values[0], channel_multiplier=values[1] - values[0])
    return table, _rows_of(table, i_tile, n)


def neg_rmw_three_srcs():
    table, view = _table_and_idx()
    dma_compute(dst=view, srcs=[view, _filled(), _filled()], reduce_op=nl.add)


def neg_rmw_not_unique_flag():
    table, view = _table_and_idx()
    dma_compute(dst=view, srcs=[view, _filled()], reduce_op=nl.add, unique_indices=False)


def neg_rmw_repeated_indices():
    table, view = _table_and_idx(values=(2, 2))
    dma_compute(dst=view, srcs=[view, _filled()], reduce_op=nl.add)


def neg_scatter_source_not_dst():
    table, view = _table_and_idx()
    _, other = _table_and_idx()
    dma_compute(dst=view, srcs=[other, _filled()], reduce_op=nl.add)


def neg_scatter_data_in_hbm():
    table, view = _table_and_idx()
    dma_compute(dst=view, srcs=[view, _a()], reduce_op=nl.add)


def neg_gather_other_not_dst():
    table, view = _table_and_idx()
    dma_compute(dst=_filled(), srcs=[view, _filled()], reduce_op=nl.add)


def neg_gather_dst_in_hbm():
    table, view = _table_and_idx()
    out = _a()
    dma_compute(dst=out, srcs=[view, out], reduce_op=nl.add)


def neg_indirect_dst_alone():
    table, view = _table_and_idx()
    dma_compute(dst=view, srcs=[_filled(), _filled()], reduce_op=nl.add)


def neg_two_indirect_srcs():
    table, view = _table_and_idx()
    _, other = _table_and_idx()
    dma_compute(dst=_filled(), srcs=[view, other], reduce_op=nl.add)


# ---- nonzero_with_count ---------------------------------------------------------------------------------


def test_nonzero_with_count_docs_example():
    x = np.array([[0, 1, 1, 0, 0, 1, 0, 0]], np.int32)

    def body(x):
        out = sb((1, 9), "int32")
        nonzero_with_count(dst=out, src=load(x), index_offset=16, padding_val=-1)
        return store(out)

    r = run(body, x)
    np.testing.assert_array_equal(r.outputs, [[17, 18, 21, -1, -1, -1, -1, -1, 3]])
    rec = [x for x in r.trace if x.opcode == "nonzero_with_count"][0]
    assert rec.engine == "pool" and rec.info["cores"] == 1


def _nonzero_ref(row, offset, pad):
    nz = np.flatnonzero(row != 0)
    out = np.full(row.size + 1, pad, np.int64)
    out[: nz.size] = nz + offset
    out[-1] = nz.size
    return out


@pytest.mark.parametrize("dtype", ["float32", "int32"])
def test_nonzero_with_count_reads_and_writes_only_every_16th_row(dtype):
    g = np.random.default_rng(4)
    x = (g.integers(-2, 3, size=(128, 40)) * (g.random((128, 40)) < 0.3)).astype(dtype)
    x[16] = 0  # a core that finds nothing
    x[32] = 5  # a core that finds everything
    if dtype == "float32":
        x[48, :3] = [-0.0, np.nan, 0.0]  # -0.0 is zero, NaN is not

    def body(x):
        out = sb((128, 41), "int32")
        nisa.memset(dst=out, value=7)
        nonzero_with_count(dst=out, src=load(x), index_offset=100, padding_val=-5)
        return store(out)

    out = run(body, x).outputs
    want = np.full((128, 41), 7, np.int64)
    for r in range(0, 128, 16):
        want[r] = _nonzero_ref(x[r], 100, -5)
    np.testing.assert_array_equal(out, want)
    assert out[16, -1] == 0 and out[32, -1] == 40


def test_nonzero_with_count_counts_over_all_free_dims():
    # A 3-D src (P, 2, 4) and dst (P, 1, 9): elements per partition are counted over the flattened free dims.
    x = np.zeros((32, 2, 4), np.float32)
    x[0, 1, 2] = 3.0
    x[16, 0, 0] = x[16, 1, 3] = 1.0

    def body(x):
        out = sb((32, 1, 9), "int32")
        nisa.memset(dst=out, value=0)
        nonzero_with_count(dst=out, src=load(x))
        return store(out)

    out = run(body, x).outputs
    np.testing.assert_array_equal(out[0, 0], [6, -1, -1, -1, -1, -1, -1, -1, 1])
    np.testing.assert_array_equal(out[16, 0], [0, 7, -1, -1, -1, -1, -1, -1, 2])


def test_nonzero_with_count_taints_only_rows_read_from_uninitialised_data():
    x = np.array([[0, 2, 0, 4]], np.float32)

    def body(x, row):
        src = sb((32, 4))
        nisa.dma_copy(dst=src[0:1, :], src=x)  # rows 1..31 stay uninitialised; row 16 is read
        dst = sb((32, 5), "int32")
        nonzero_with_count(dst=dst, src=src)
        return store(dst[row : row + 1, :])

    np.testing.assert_array_equal(run(lambda x: body(x, 0), x).outputs, [[1, 3, -1, -1, 2]])
    with pytest.raises(NkiUninitializedError):
        run(lambda x: body(x, 16), x)


def neg_nz_trn1():
    nonzero_with_count(dst=sb((1, 5), "int32"), src=_filled((1, 4)))


def neg_nz_src_dtype():
    nonzero_with_count(dst=sb((1, 5), "int32"), src=_filled((1, 4), "bfloat16"))


def neg_nz_dst_dtype():
    nonzero_with_count(dst=sb((1, 5), "float32"), src=_filled((1, 4)))


def neg_nz_dst_elems():
    nonzero_with_count(dst=sb((1, 4), "int32"), src=_filled((1, 4)))


def neg_nz_partitions():
    nonzero_with_count(dst=sb((16, 5), "int32"), src=_filled((32, 4)))


def neg_nz_psum():
    nonzero_with_count(dst=sb((1, 5), "int32"), src=sb((1, 4), buffer=nl.psum))


def neg_nz_hbm_dst():
    nonzero_with_count(dst=nl.ndarray((1, 5), dtype=nl.int32, buffer=nl.shared_hbm), src=_filled((1, 4)))


def neg_nz_offset_float():
    nonzero_with_count(dst=sb((1, 5), "int32"), src=_filled((1, 4)), index_offset=1.5)


def neg_nz_offset_bool():
    nonzero_with_count(dst=sb((1, 5), "int32"), src=_filled((1, 4)), index_offset=True)


def neg_nz_padding_range():
    nonzero_with_count(dst=sb((1, 5), "int32"), src=_filled((1, 4)), padding_val=2**31)


NEGATIVE = [
    (neg_reduce_op, "trn2", "dma_compute", "reduce_op", "only nl.add"),
    (neg_scales_value, "trn2", "dma_compute", "scales", "must be 1.0"),
    (neg_scales_length, "trn2", "dma_compute", "scales", "one value per source"),
    (neg_no_srcs, "trn2", "dma_compute", "srcs", "1 to 16"),
    (neg_17_srcs, "trn2", "dma_compute", "srcs", "1 to 16"),
    (neg_srcs_not_a_list, "trn2", "dma_compute", "srcs", "list or tuple"),
    (neg_element_count, "trn2", "dma_compute", "srcs[1]", "element count"),
    (neg_psum_dst, "trn2", "dma_compute", "dst", "PSUM"),
    (neg_psum_src, "trn2", "dma_compute", "srcs[0]", "PSUM"),
    (neg_scalar_offset, "trn2", "dma_compute", "srcs[0]", "compile-time addresses"),
    (neg_rmw_three_srcs, "trn2", "dma_compute", "srcs", "exactly 2"),
    (neg_rmw_not_unique_flag, "trn2", "dma_compute", "unique_indices", "unique_indices=True"),
    (neg_rmw_repeated_indices, "trn2", "dma_compute", "unique_indices", "repeat"),
    (neg_scatter_source_not_dst, "trn2", "dma_compute", "srcs[0]", "dst view itself"),
    (neg_scatter_data_in_hbm, "trn2", "dma_compute", "srcs[1]", "not allowed"),
    (neg_gather_other_not_dst, "trn2", "dma_compute", "srcs[1]", "dst view itself"),
    (neg_gather_dst_in_hbm, "trn2", "dma_compute", "dst", "not allowed"),
    (neg_indirect_dst_alone, "trn2", "dma_compute", "dst", "same view among srcs"),
    (neg_two_indirect_srcs, "trn2", "dma_compute", "srcs[1]", "only one source"),
    (neg_nz_trn1, "trn1", "nonzero_with_count", None, "NeuronCore-v3"),
    (neg_nz_src_dtype, "trn2", "nonzero_with_count", "src", "float32 or int32"),
    (neg_nz_dst_dtype, "trn2", "nonzero_with_count", "dst", "int32"),
    (neg_nz_dst_elems, "trn2", "nonzero_with_count", "dst", "one more element"),
    (neg_nz_partitions, "trn2", "nonzero_with_count", "dst", "partition count"),
    (neg_nz_psum, "trn2", "nonzero_with_count", "src", "not allowed"),
    (neg_nz_hbm_dst, "trn2", "nonzero_with_count", "dst", "not allowed"),
    (neg_nz_offset_float, "trn2", "nonzero_with_count", "index_offset", "int32 immediate"),
    (neg_nz_offset_bool, "trn2", "nonzero_with_count", "index_offset", "int32 immediate"),
    (neg_nz_padding_range, "trn2", "nonzero_with_count", "padding_val", "int32 range"),
]


@pytest.mark.parametrize(
    "body, target, instruction, operand, message", NEGATIVE, ids=[n[0].__name__ for n in NEGATIVE]
)
def test_documented_rejections(body, target, instruction, operand, message) -> None:
    with pytest.raises(NkiValidationError, match=message) as info:
        run(body, target=target)
    assert_names_kernel_line(info.value, instruction, operand)
    if operand is None:
        assert target in str(info.value)  # target-gated instructions name the target


@pytest.mark.parametrize("fn", ["dma_compute", "nonzero_with_count"])
def test_unknown_kwarg_is_a_kwarg_error(fn) -> None:
    def body():
        if fn == "dma_compute":
            dma_compute(dst=_a(), srcs=[_filled()], reduce_op=nl.add, dtype=nl.float32)
        else:
            nonzero_with_count(dst=sb((1, 5), "int32"), src=_filled((1, 4)), dtype=nl.int32)

    with pytest.raises(NkiKwargError, match="unexpected keyword argument 'dtype'") as info:
        run(body)
    assert_names_kernel_line(info.value, fn, "dtype")


def test_profile_counts_dma_compute_hbm_ends_and_costs_it():
    """The cost model sees dma_compute's srcs[i] operands: HBM bytes are the HBM sources + an HBM dst."""
    from nki_moe.perf.profile import profile_trace

    a = np.ones((128, 64), np.float32)

    def body(a):
        t = sb((128, 64), "bfloat16")
        nisa.memset(dst=t, value=1.0)
        out = nl.ndarray((128, 64), nl.float32, buffer=nl.shared_hbm)
        dma_compute(dst=out, srcs=[a, t], reduce_op=nl.add)  # HBM + SBUF -> HBM
        return out

    r = run(body, a)
    np.testing.assert_array_equal(r.outputs, np.full((128, 64), 2.0, np.float32))
    p = profile_trace(r.trace, target="trn2")
    # the HBM source (32 KiB fp32) and the HBM dst (32 KiB); the bf16 SBUF source is not HBM traffic
    assert p.hbm_bytes == 2 * 128 * 64 * 4
    assert p.latency_us > 0
