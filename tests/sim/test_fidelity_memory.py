"""Emulator fidelity II (issue 12, items 6-9 and 11b): tensor truthiness, .ap() bounds checked on use,
explicit `address=` placement in the capacity model, indirect offsets on reshaped views, and tiles a Python
`range` loop rebinds through helpers and comprehensions.

Each kernel is a minimal one of our own that shows the construct; each legal one failed on the emulator
before this change, and each illegal one is still rejected (instruction, operand, limit, value and line).
"""

from __future__ import annotations

import inspect

import nki
import nki.isa as nisa
import nki.language as nl
import numpy as np
import pytest

from nki_moe.sim import NkiCapacityError, NkiValidationError, run

HERE = "test_fidelity_memory.py"
RNG = np.random.default_rng(12)
X = RNG.standard_normal((4, 32)).astype(np.float32)


def _line(fn, text: str) -> int:
    """Line number of the first source line of `fn` containing `text`."""
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, ln in enumerate(lines) if text in ln)


# ---- 6: a tensor handle is a Python object (truthy), not an array --------------------------------------


class _Params:
    def __init__(self, bias, scale=None):
        self.bias = bias
        self.scale = scale


def _add_optional_bias(x, bias):
    params = _Params(bias)
    out = nl.ndarray(x.shape, nl.float32, buffer=nl.shared_hbm)
    t = nl.ndarray(x.shape, nl.float32)
    nisa.dma_copy(dst=t, src=x)
    assert t and x  # an on-chip tile and an HBM input are both truthy
    if params.bias:  # optional tensor argument given
        b = nl.ndarray(x.shape, nl.float32)
        nisa.dma_copy(dst=b, src=params.bias)
        nisa.tensor_tensor(dst=t, data1=t, data2=b, op=nl.add)
    if params.scale:  # optional argument left out (None)
        raise AssertionError("None is falsy")
    nisa.dma_copy(dst=out, src=t)
    return out


def test_tensor_arguments_are_truthy_like_python_objects():
    b = RNG.standard_normal(X.shape).astype(np.float32)
    np.testing.assert_array_equal(run(_add_optional_bias, X, b).outputs, X + b)


# ---- 7: an .ap() outside its tensor is an error only when an instruction uses it -----------------------


def _rows_by_ap(x, n_used, sbuf=False):
    """Copies rows 0..n_used-1 of x (4, 32) one at a time; builds the pattern of row i before testing i."""
    out = nl.ndarray(x.shape, nl.float32, buffer=nl.shared_hbm)
    src = x
    if sbuf:
        src = nl.ndarray((1, 128), nl.float32)
        nisa.dma_copy(dst=src, src=x.reshape((1, 128)))
    for i in range(5):  # row 4 does not exist
        pattern = [[128, 1], [1, 32]] if sbuf else [[32, 1], [1, 32]]
        row = src.ap(pattern=pattern, offset=i * 32)
        if i < n_used:
            t = nl.ndarray((1, 32), nl.float32)
            nisa.tensor_copy(dst=t, src=row) if sbuf else nisa.dma_copy(dst=t, src=row)
            nisa.dma_copy(dst=out[i : i + 1, :], src=t)
    return out


@pytest.mark.parametrize("sbuf", [False, True], ids=["hbm", "sbuf"])
def test_out_of_bounds_ap_that_is_never_used_is_legal(sbuf):
    np.testing.assert_array_equal(run(_rows_by_ap, X, 4, sbuf).outputs, X)


@pytest.mark.parametrize("sbuf", [False, True], ids=["hbm", "sbuf"])
def test_out_of_bounds_ap_fails_at_the_instruction_that_uses_it(sbuf):
    with pytest.raises(NkiValidationError, match="outside its tensor") as e:
        run(_rows_by_ap, X, 5, sbuf)
    err = e.value
    assert err.instruction == ("tensor_copy" if sbuf else "dma_copy") and err.operand == "src"
    assert err.limit == "elements [0, 127]" and err.value == "[128, 159]"
    use = _line(_rows_by_ap, "nisa.tensor_copy(dst=t, src=row)")
    built = _line(_rows_by_ap, "row = src.ap(")
    assert err.location.endswith(f"{HERE}:{use}")
    assert f"{HERE}:{built}" in str(err)  # where the view was built


def test_slice_of_an_out_of_bounds_ap_is_checked_by_its_own_extent():
    @nki.jit
    def k(x):
        out = nl.ndarray((2, 32), nl.float32, buffer=nl.shared_hbm)
        rows = x.ap([[32, 4], [1, 32]], offset=64)  # rows 2..5 of a 4-row tensor
        t = nl.ndarray((2, 32), nl.float32)
        nisa.dma_copy(dst=t, src=rows[0:2, :])  # rows 2..3: inside
        nisa.dma_copy(dst=out, src=t)
        nisa.dma_copy(dst=t, src=rows[1:3, :])  # rows 3..4: outside
        return out

    with pytest.raises(NkiValidationError, match="outside its tensor") as e:
        k(X)
    assert e.value.value == "[96, 159]" and e.value.location.endswith(f"{HERE}:{_line(k.fn, 'rows[1:3')}")


def test_out_of_range_index_is_still_rejected_where_it_is_written():
    @nki.jit
    def k(x):
        return x[4]

    with pytest.raises(NkiValidationError, match="index out of bounds"):
        k(X)


# ---- 8: address= placement ---------------------------------------------------------------------------

BANK = 2048


def _eight_banks_then_reuse(x):
    """8 one-bank PSUM tiles placed on banks 0..7, then a 9th placed on bank 0 once tile 0 is done."""
    out = nl.ndarray((128, 9), nl.float32, buffer=nl.shared_hbm)
    res = nl.ndarray((128, 9), nl.float32)
    tiles = []
    for b in range(9):
        p = nl.ndarray((128, 512), nl.float32, buffer=nl.psum, address=(0, (b % 8) * BANK))
        nisa.memset(dst=p, value=float(b))
        nisa.tensor_copy(dst=res[:, b : b + 1], src=p[:, 0:1])
        tiles.append(p)  # every tile stays reachable: the placement, not Python, frees bank 0
    nisa.dma_copy(dst=out, src=res)
    return out


def test_psum_tiles_placed_on_the_same_bank_do_not_count_twice():
    r = run(_eight_banks_then_reuse, X)
    np.testing.assert_array_equal(r.outputs, np.broadcast_to(np.arange(9, dtype=np.float32), (128, 9)))
    assert r.peak_psum_banks == 8


def test_compiler_placed_tiles_get_the_banks_placed_tiles_leave():
    @nki.jit
    def k(x, n_auto):
        placed = [nl.ndarray((128, 512), nl.float32, buffer=nl.psum, address=(0, b * BANK)) for b in (0, 1)]
        again = nl.ndarray((128, 256), nl.float32, buffer=nl.psum, address=(0, BANK))  # inside bank 1
        auto = [nl.ndarray((128, 512), nl.float32, buffer=nl.psum) for _ in range(n_auto)]
        assert placed and again and len(auto) == n_auto
        return x

    assert run(k, X, 6).peak_psum_banks == 8
    with pytest.raises(NkiCapacityError, match="PSUM banks") as e:
        k(X, 7)
    assert e.value.limit == 8 and e.value.value == 9 and "address=(0, 2048)" in str(e.value)


def test_sbuf_scope_reuse_by_address_counts_the_union_of_placed_bytes():
    @nki.jit
    def k(x):
        out = nl.ndarray((128, 4), nl.float32, buffer=nl.shared_hbm)
        buf1 = nl.ndarray((128, 256), nl.float32, address=(0, 0))  # bytes [0, 1024)
        buf2 = nl.ndarray((128, 128), nl.float32, address=(0, 1024))  # inner scope: [1024, 1536)
        buf3 = nl.ndarray((128, 128), nl.float32, address=(0, 1536))  # [1536, 2048)
        nisa.memset(dst=buf2, value=2.0)
        nisa.memset(dst=buf3, value=3.0)
        nisa.tensor_tensor(dst=buf1[:, 0:128], data1=buf2, data2=buf3, op=nl.add)
        buf4 = nl.ndarray((128, 256), nl.float32, address=(0, 1024))  # scope closed: over buf2 and buf3
        nisa.memset(dst=buf4, value=4.0)
        nisa.tensor_tensor(dst=buf1[:, 128:256], data1=buf4[:, 0:128], data2=buf1[:, 0:128], op=nl.add)
        nisa.dma_copy(dst=out, src=buf1[:, 126:130])
        assert buf1.address == (0, 0) and buf4.address == (0, 1024) and out.address is None
        return out

    r = run(k, X)
    np.testing.assert_array_equal(r.outputs, np.broadcast_to(np.float32([5, 5, 9, 9]), (128, 4)))
    assert r.peak_sbuf_bytes == 2048  # not 1024 + 512 + 512 + 1024


def test_handles_placed_on_shared_banks_are_used_in_turn():
    """A grid of 12 PSUM handles on banks 0-3 (attention_cte's pattern): each write takes the bank back."""

    @nki.jit
    def k(x):
        out = nl.ndarray((128, 12), nl.float32, buffer=nl.shared_hbm)
        res = nl.ndarray((128, 12), nl.float32)
        grid = [
            nl.ndarray((128, 512), nl.float32, buffer=nl.psum, address=(0, (j % 4) * BANK)) for j in range(12)
        ]
        for j in range(12):
            nisa.memset(dst=grid[j], value=float(j))
            nisa.tensor_copy(dst=res[:, j : j + 1], src=grid[j][:, 0:1])
        nisa.dma_copy(dst=out, src=res)
        return out

    r = run(k, X)
    np.testing.assert_array_equal(r.outputs, np.broadcast_to(np.arange(12, dtype=np.float32), (128, 12)))
    assert r.peak_psum_banks == 4


def _read_after_overlap(x, write_second):
    res = nl.ndarray((128, 1), nl.float32)
    first = nl.ndarray((128, 512), nl.float32, buffer=nl.psum, address=(0, 3 * BANK))
    nisa.memset(dst=first, value=1.0)
    second = nl.ndarray((128, 512), nl.float32, buffer=nl.psum, address=(0, 3 * BANK))
    if write_second:
        nisa.memset(dst=second, value=2.0)
    nisa.tensor_copy(dst=res, src=first[:, 0:1])  # on hardware: second's data once second was written
    out = nl.ndarray((128, 1), nl.float32, buffer=nl.shared_hbm)
    nisa.dma_copy(dst=out, src=res)
    return out


def test_reading_a_placed_tile_after_an_overlapping_one_was_written_is_an_error():
    np.testing.assert_array_equal(run(_read_after_overlap, X, False).outputs, np.ones((128, 1), np.float32))
    with pytest.raises(NkiValidationError, match="placed over its bytes and written") as e:
        run(_read_after_overlap, X, True)
    err = e.value
    assert err.instruction == "tensor_copy" and err.operand == "first" and "'second'" in str(err)
    assert err.value == "bytes [6144, 8192) of partitions [0, 128)"
    assert err.location.endswith(f"{HERE}:{_line(_read_after_overlap, 'src=first')}")


@pytest.mark.parametrize(
    ("shape", "buffer", "address", "operand", "limit", "match"),
    [
        ((128, 512), "sbuf", (0, 212984 - 1024), "t", 212984, "exceeds the SBUF partition size"),
        ((128, 4096), "psum", (0, 4 * 2048), "t", 16384, "exceeds the PSUM partition size"),
        ((128, 64), "psum", (0, 1024), "t", "multiple of 2048", "bank boundary"),
        ((64, 64), "sbuf", (96, 0), "t", 128, "partition offset"),
        ((64, 64), "shared_hbm", (0, 0), "address", "nl.sbuf/nl.psum", "SBUF/PSUM tensors only"),
        ((64, 64), "sbuf", (0,), "address", None, "pair of ints"),
    ],
)
def test_explicit_address_must_fit_its_buffer(shape, buffer, address, operand, limit, match):
    @nki.jit
    def k(x):
        t = nl.ndarray(shape, nl.float32, buffer=getattr(nl, buffer), name="t", address=address)
        assert t is not None
        return x

    with pytest.raises(NkiValidationError, match=match) as e:
        k(X)
    assert e.value.instruction == "ndarray" and e.value.operand == operand and e.value.limit == limit
    assert e.value.location.endswith(f"{HERE}:{_line(k.fn, 'address=address')}")


# ---- 9: indirect offsets index the rows of the view .ap() is called on ---------------------------------


def test_vector_offset_on_a_reshaped_view_uses_the_views_rows():
    @nki.jit
    def k(table, idx):
        out = nl.ndarray((8, 1), nl.float32, buffer=nl.shared_hbm)
        i_tile = nl.ndarray((8, 1), nl.uint32)
        nisa.dma_copy(dst=i_tile, src=idx)
        flat = table.reshape((128,))  # 128 rows of one element
        g = nl.ndarray((8, 1), nl.float32)
        nisa.dma_copy(dst=g, src=flat.ap([[1, 8], [1, 1]], offset=0, vector_offset=i_tile, indirect_dim=0))
        nisa.dma_copy(dst=out, src=g)
        return out

    idx = np.array([[124], [0], [3], [64], [127], [31], [32], [5]], np.uint32)
    np.testing.assert_array_equal(k(X, idx), X.reshape(-1)[idx])
    with pytest.raises(NkiValidationError, match="out of bounds") as e:
        k(X, np.where(idx == 127, 128, idx).astype(np.uint32))
    assert e.value.limit == "[0, 127]"


def test_scalar_offset_on_a_reshaped_view_uses_the_views_row_size():
    @nki.jit
    def k(table, w):
        out = nl.ndarray((1, 8), nl.float32, buffer=nl.shared_hbm)
        w_t = nl.ndarray((1, 1), nl.int32)
        nisa.dma_copy(dst=w_t, src=w)
        rows = table.reshape((16, 8))
        g = nl.ndarray((1, 8), nl.float32)
        nisa.dma_copy(dst=g, src=rows.ap([[8, 1], [1, 8]], offset=0, scalar_offset=w_t, indirect_dim=0))
        nisa.dma_copy(dst=out, src=g)
        return out

    np.testing.assert_array_equal(k(X, np.array([[13]], np.int32)), X.reshape(16, 8)[13:14])


# ---- 11b: tiles rebound in a Python range loop through helpers and comprehensions ----------------------


def _new_psum_pair():
    acc = nl.ndarray((128, 1024), nl.float32, buffer=nl.psum)  # 2 banks
    aux = nl.ndarray((128, 1024), nl.float32, buffer=nl.psum)
    return acc, aux


def _psum_rebound_each_iteration(x, how):
    out = nl.ndarray((128, 1), nl.float32, buffer=nl.shared_hbm)
    total = nl.ndarray((128, 1), nl.float32)
    nisa.memset(dst=total, value=0.0)
    for i in range(4):  # plain Python loop: the compiler frees each iteration's tiles when they die
        if how == "helper":
            a0, a1 = _new_psum_pair()  # 4 banks
            b0, b1 = _new_psum_pair()  # 8 banks
            nisa.memset(dst=b1, value=float(i))
            nisa.tensor_tensor(dst=total, data1=total, data2=b1[:, 0:1], op=nl.add)
        else:
            tiles = [nl.ndarray((128, 512), nl.float32, buffer=nl.psum) for _ in range(8)]  # 8 banks
            nisa.memset(dst=tiles[7], value=float(i))
            nisa.tensor_tensor(dst=total, data1=total, data2=tiles[7][:, 0:1], op=nl.add)
    nisa.dma_copy(dst=out, src=total)
    return out


@pytest.mark.parametrize("how", ["helper", "comprehension"])
def test_psum_tiles_rebound_through_helpers_and_comprehensions_are_freed(how):
    r = run(_psum_rebound_each_iteration, X, how)
    np.testing.assert_array_equal(r.outputs, np.full((128, 1), 0 + 1 + 2 + 3, np.float32))
    assert r.peak_psum_banks == 8


def test_a_rebound_list_that_another_variable_still_holds_stays_counted():
    @nki.jit
    def k(x):
        prev = None
        for _i in range(2):
            ps = [nl.ndarray((128, 512), nl.float32, buffer=nl.psum) for _ in range(8)]
            if prev is not None:
                res = nl.ndarray((128, 1), nl.float32)
                nisa.tensor_copy(dst=res, src=prev[0][:, 0:1])
            prev = ps
        return x

    with pytest.raises(NkiCapacityError, match="PSUM banks") as e:
        k(X)
    assert e.value.limit == 8 and e.value.value == 9


def _stale_list_after_its_loop(x):
    """moe_cte's pattern: `ps` still names the last iteration's PSUM tiles after the loop that used them."""
    out = nl.ndarray((128, 1), nl.float32, buffer=nl.shared_hbm)
    total = nl.ndarray((128, 1), nl.float32)
    nisa.memset(dst=total, value=0.0)
    for i in range(2):
        ps = []
        for _ in range(4):  # 4 banks, written and read
            ps.append(nl.ndarray((128, 512), nl.float32, buffer=nl.psum))
            nisa.memset(dst=ps[-1], value=float(i))
            nisa.tensor_tensor(dst=total, data1=total, data2=ps[-1][:, 0:1], op=nl.add)
    for _e in range(2):
        qs = [nl.ndarray((128, 512), nl.float32, buffer=nl.psum) for _ in range(6)]  # + 6 banks
        for q in qs:
            nisa.memset(dst=q, value=1.0)
            nisa.tensor_tensor(dst=total, data1=total, data2=q[:, 0:1], op=nl.add)
    nisa.dma_copy(dst=out, src=total)
    return out


def test_tiles_a_stale_variable_names_after_their_last_use_are_dead():
    r = run(_stale_list_after_its_loop, X)
    np.testing.assert_array_equal(r.outputs, np.full((128, 1), 4 * 1 + 12, np.float32))
    assert r.peak_psum_banks == 8


def _accumulator_used_again(x, free_meanwhile):
    acc = nl.ndarray((128, 2048), nl.float32, buffer=nl.psum)  # 4 banks
    nisa.memset(dst=acc, value=1.0)
    for _i in nl.affine_range(1) if free_meanwhile else [0]:
        tmp = [nl.ndarray((128, 512), nl.float32, buffer=nl.psum) for _ in range(5)]  # 4 + 5 > 8
        for t in tmp:
            nisa.memset(dst=t, value=2.0)
        del tmp, t
    res = nl.ndarray((128, 1), nl.float32)
    nisa.tensor_copy(dst=res, src=acc[:, 0:1])  # acc was live all along
    return x


@pytest.mark.parametrize("free_meanwhile", [False, True], ids=["still-live", "freed-meanwhile"])
def test_a_tile_used_again_is_counted_for_the_whole_time_it_was_set_aside(free_meanwhile):
    with pytest.raises(NkiCapacityError, match="PSUM banks") as e:
        run(_accumulator_used_again, X, free_meanwhile)
    err = e.value
    assert err.instruction == "tensor_copy" and err.operand == "acc" and err.limit == 8 and err.value == 9
    assert err.location.endswith(f"{HERE}:{_line(_accumulator_used_again, 'src=acc')}")


# ---- the referrer scan of a launch sees only the launch's own objects ----------------------------------

_OLDER_THAN_THE_LAUNCH: list = []  # a container that exists before the kernel starts (frozen during it)


def _stash_in_an_old_list_then_rebind(x, use_again):
    for _i in range(2):
        ps = [nl.ndarray((128, 512), nl.float32, buffer=nl.psum) for _ in range(5)]  # 5 of 8 banks
        for p in ps:
            nisa.memset(dst=p, value=1.0)
        if not _OLDER_THAN_THE_LAUNCH:
            _OLDER_THAN_THE_LAUNCH.extend(ps[:4])  # still held: 4 + 5 > 8 once the second list is made
        del p
    if use_again:
        res = nl.ndarray((128, 1), nl.float32)
        for t in _OLDER_THAN_THE_LAUNCH:
            nisa.tensor_copy(dst=res, src=t[:, 0:1])
    return x


@pytest.mark.parametrize("use_again", [False, True], ids=["dead", "used-again"])
def test_a_tile_held_by_a_container_older_than_the_launch_is_counted_when_used_again(use_again):
    _OLDER_THAN_THE_LAUNCH.clear()
    try:
        if not use_again:  # never used after the rebinding: dead to the compiler, so it may be released
            run(_stash_in_an_old_list_then_rebind, X, use_again)
            return
        with pytest.raises(NkiCapacityError, match="PSUM banks") as e:
            run(_stash_in_an_old_list_then_rebind, X, use_again)
        assert e.value.instruction == "tensor_copy" and e.value.limit == 8 and e.value.value == 9
    finally:
        _OLDER_THAN_THE_LAUNCH.clear()


def test_a_launch_leaves_the_gc_as_it_found_it():
    import gc

    assert gc.get_freeze_count() == 0
    run(_psum_rebound_each_iteration, X, "helper")
    assert gc.get_freeze_count() == 0 and gc.isenabled()
    with pytest.raises(NkiCapacityError):
        run(_stash_in_an_old_list_then_rebind, X, True)
    _OLDER_THAN_THE_LAUNCH.clear()
    assert gc.get_freeze_count() == 0 and gc.isenabled()
    gc.freeze()  # a host that froze its own objects: the launch leaves them frozen (not unfrozen)
    try:
        run(_psum_rebound_each_iteration, X, "helper")
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
