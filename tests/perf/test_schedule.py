"""List scheduler on tiny synthetic traces with known critical paths."""

from __future__ import annotations

import time

import pytest
from _records import dma, hbm, matmul, rec, sb

from nki_moe.perf.costs import DEP_LATENCY_CYCLES, compute_cost, engine_clock_ghz
from nki_moe.perf.dma import dma_cost
from nki_moe.perf.hardware import get_hardware
from nki_moe.perf.schedule import physical_buffers, schedule_trace

TRN2 = get_hardware("trn2")
DEP_DVE = 60 / 0.96  # ns: dependency latency of a DVE consumer


def _load(alloc_sb, alloc_hbm, F=512, queue="q0"):
    return dma(sb("dst", "w", alloc_sb, F=F), hbm("src", "r", alloc_hbm, 128 * F), queue=queue)


def test_serial_chain():
    """load → matmul → copy → store, each waiting on the previous: latency = sum of the parts."""
    ld_a, ld_b = _load(1, 100, F=128), _load(2, 101, queue="q1")
    mm = matmul(
        sb("dst", "w", 3, F=512, dtype="float32", buffer="psum"), sb("st", "r", 1, F=128), sb("mv", "r", 2)
    )
    cp = rec("tensor_copy", "dve", [sb("src", "r", 3, dtype="float32", buffer="psum"), sb("dst", "w", 4)])
    st = dma(hbm("dst", "w", 102, 128 * 512), sb("src", "r", 4), queue="q2")
    trace = [ld_a, ld_b, mm, cp, st]
    s = schedule_trace(trace, TRN2)
    c_a, c_ld = dma_cost(ld_a, TRN2), dma_cost(ld_b, TRN2)
    t_ld = s.end[1]
    # both loads are issued together (two DGE instances) and share the 16 DMA engines, a first
    assert t_ld == pytest.approx(c_ld.dge_ns + c_ld.latency_ns + c_a.ns_per_engine + c_ld.ns_per_engine)
    t_mm = t_ld + 64 / 2.4 + compute_cost(mm, TRN2).ns
    assert s.end[2] == pytest.approx(t_mm)
    t_cp = t_mm + DEP_DVE + compute_cost(cp, TRN2).ns
    assert s.end[3] == pytest.approx(t_cp)
    c_st = dma_cost(st, TRN2)
    assert s.latency_ns == pytest.approx(t_cp + c_st.dge_ns + c_st.latency_ns + c_st.ns_per_engine)
    assert s.critical_path() == [0, 1, 2, 3, 4]  # ld_b waited for ld_a on the shared DMA engines
    share = s.critical_share()
    assert sum(share.values()) == pytest.approx(1.0)
    assert share["dma"] > share["pe"] > 0


def test_dma_overlaps_independent_compute():
    """A load and independent matmuls on other tiles run concurrently: latency = the longer one."""
    ld = _load(1, 100, F=2048)
    mms = [
        matmul(
            sb("dst", "w", 10 + k, dtype="float32", buffer="psum"), sb("st", "r", 2, F=128), sb("mv", "r", 3)
        )
        for k in range(40)
    ]
    s = schedule_trace([ld, *mms], TRN2)
    t_dma = s.end[0]
    t_pe = 40 * 512 / 2.4
    assert s.latency_ns == pytest.approx(max(t_dma, t_pe))
    assert s.start[1] == 0.0  # the first matmul does not wait for the DMA


def test_engine_contention_and_hazards():
    a = rec("tensor_copy", "dve", [sb("src", "r", 1, dtype="float32"), sb("dst", "w", 2, dtype="float32")])
    b = rec("tensor_copy", "dve", [sb("src", "r", 3, dtype="float32"), sb("dst", "w", 4, dtype="float32")])
    s = schedule_trace([a, b], TRN2)
    cost = compute_cost(a, TRN2).ns
    assert s.end[1] == pytest.approx(2 * cost)  # independent but same engine: serialised
    assert s.pred_kind[1] == "engine"
    # write-after-read across engines: ACT overwrites what DVE reads
    act_w = rec(
        "activation", "act", [sb("data", "r", 5, dtype="float32"), sb("dst", "w", 1, dtype="float32")]
    )
    s = schedule_trace([a, act_w], TRN2)
    assert s.start[1] == pytest.approx(cost + 60 / 1.2)
    # disjoint partition ranges of one tile do not conflict
    w_lo = rec(
        "activation",
        "act",
        [sb("data", "r", 5, P=64, dtype="float32"), sb("dst", "w", 1, P=64, dtype="float32")],
    )
    r_hi = rec(
        "tensor_copy",
        "dve",
        [sb("src", "r", 1, P=64, p0=64, dtype="float32"), sb("dst", "w", 6, P=64, dtype="float32")],
    )
    s = schedule_trace([w_lo, r_hi], TRN2)
    assert s.start[1] == 0.0


def test_lnc_barrier_joins_programs():
    long = [
        rec("activation", "act", [sb("d", "r", 1, dtype="float32"), sb("o", "w", 2, dtype="float32")])
        for _ in range(4)
    ]
    barrier0 = rec("core_barrier", "pool", [hbm("data", "r", 9, 1)], pid=0)
    barrier1 = rec("core_barrier", "pool", [hbm("data", "r", 9, 1)], pid=1)
    after1 = rec("tensor_copy", "dve", [sb("src", "r", 30, dtype="float32"), sb("dst", "w", 31)], pid=1)
    # emulator order: program 1 reaches the barrier last and runs on before program 0's record appears
    trace = [*long, barrier1, after1, barrier0]
    s = schedule_trace(trace, TRN2)
    assert s.start[5] >= s.end[3] + 1300 - 1e-6  # program 1 waits for program 0's work + one semaphore hop


def test_scheduler_speed_5k():
    trace = []
    for k in range(1250):
        trace.append(_load(1 + k % 4, 100, F=512, queue=f"q{k % 16}"))
        trace.append(
            matmul(
                sb("dst", "w", 10 + k % 2, dtype="float32", buffer="psum"),
                sb("st", "r", 20, F=128),
                sb("mv", "r", 1 + k % 4),
            )
        )
        trace.append(
            rec(
                "tensor_copy",
                "dve",
                [sb("src", "r", 10 + k % 2, dtype="float32", buffer="psum"), sb("dst", "w", 30 + k % 2)],
            )
        )
        trace.append(
            dma(
                hbm("dst", "w", 200, 128 * 512, off=k * 65536),
                sb("src", "r", 30 + k % 2),
                queue=f"q{(k + 8) % 16}",
            )
        )
    t = time.perf_counter()
    s = schedule_trace(trace, TRN2)
    assert time.perf_counter() - t < 10.0
    assert s.latency_ns > 0 and (s.end >= s.start).all()


class _SiteTrace(list):
    """A record list with ``allocs`` like nki_moe.sim.trace.Trace: every serial at one in-loop site."""

    def __init__(self, records, serials):
        super().__init__(records)
        self.allocs = {s: ("sbuf", "kernel.py", 7, 1024) for s in serials}


def _loop_trace(n=6):
    """n iterations: load tile (new allocation at one site) → matmul reads it; matmuls are the long part."""
    recs = []
    for k in range(n):
        recs.append(_load(10 + k, 100 + k, F=512))
        recs.append(
            matmul(
                sb("dst", "w", 50 + k, dtype="float32", buffer="psum"),
                sb("st", "r", 2, F=128),
                sb("mv", "r", 10 + k),
            )
        )
    return _SiteTrace(recs, range(10, 10 + n))


def test_physical_buffers_rotate_lru_and_keep_live_allocations_apart():
    tr = _loop_trace()
    phys = physical_buffers(list(tr), tr.allocs, rotation=2)
    assert [phys[10 + k][-1] for k in range(6)] == [0, 1, 0, 1, 0, 1]
    # allocations live at the same time (a list of buffers from one line) never share a slot
    loads = [_load(10 + k, 100 + k) for k in range(4)]
    reads = [rec("tensor_copy", "dve", [sb("src", "r", 10 + k), sb("dst", "w", 60 + k)]) for k in range(4)]
    tr2 = _SiteTrace(loads + reads, range(10, 14))
    assert sorted(v[-1] for v in physical_buffers(list(tr2), tr2.allocs, rotation=2).values()) == [0, 1, 2, 3]


def test_rotation_adds_war_across_iterations():
    """With one physical buffer the load of iteration k+1 waits for the matmul of iteration k."""
    tr = _loop_trace()
    free = schedule_trace(tr, TRN2, rotation=None)
    one = schedule_trace(tr, TRN2, rotation=1)
    two = schedule_trace(tr, TRN2, rotation=2)
    assert one.start[2] >= one.end[1] and one.pred_kind[2] == "dep"
    assert free.latency_ns <= two.latency_ns <= one.latency_ns
    assert one.latency_ns > 1.5 * free.latency_ns
    assert schedule_trace(list(tr), TRN2).latency_ns == pytest.approx(free.latency_ns)  # no allocs: unlimited


def test_profiler_activity_differs_from_busy():
    """Profiler-style activity: PE counts LoadStationary + MultiplyMoving; a hwdge (or unknown-mode) DMA is
    active while its packets move, a software-DGE DMA from the queue on (descriptor fetch, then the data)."""
    ld = _load(1, 100, F=128)
    gemvs = [  # weights stationary (M = 128), one-column moving: throughput 64 cycles, active 32 + 64 + 64
        matmul(
            sb("dst", "w", 10 + k, F=1, dtype="float32", buffer="psum"),
            sb("st", "r", 1, F=128),
            sb("mv", "r", 2, F=1),
            N=1,
        )
        for k in range(8)
    ]
    s = schedule_trace([ld, *gemvs], TRN2)
    assert s.busy_ns("pe") == pytest.approx(8 * 64 / 2.4)
    assert s.active_ns("pe") == pytest.approx(8 * (32 + 64 + 64) / 2.4)
    c = dma_cost(ld, TRN2)
    assert s.busy_ns("dma") == pytest.approx(c.ns_per_engine)
    assert s.active_ns("dma") == pytest.approx(c.ns_per_engine)  # semaphore-to-start: no packet in flight
    assert s.active_ns("dve") == s.busy_ns("dve") == 0.0
    for mode, queue in (("swdge", "pool"), ("none", "q0")):  # descriptors in memory: fetched first
        ld_sw = dma(sb("dst", "w", 1, F=128), hbm("src", "r", 100, 128 * 128), queue=queue, dge_mode=mode)
        s_sw = schedule_trace([ld_sw], TRN2)
        c_sw = dma_cost(ld_sw, TRN2)
        assert s_sw.busy_ns("dma") == pytest.approx(c_sw.ns_per_engine)
        assert s_sw.active_ns("dma") == pytest.approx(c_sw.latency_ns + c_sw.ns_per_engine)  # not generation
        assert s_sw.end[0] == pytest.approx(c_sw.dge_ns + c_sw.latency_ns + c_sw.ns_per_engine)


def test_register_dependencies():
    """A DMA whose scalar_offset register is written by register_load waits for it (RAW); the next
    register_load into that register waits only until the DMA has read it (descriptor generation), not
    for its last byte (WAR); another register is independent."""
    idx = rec(
        "dma_copy",
        "dma",
        [hbm("src", "r", 200, 1, dtype="uint32"), sb("dst", "w", 5, P=1, F=1, dtype="uint32")],
        dma_bytes=4,
        queue="q3",
        dge_mode="hwdge",
    )
    load = rec("register_load", "sp", [sb("src", "r", 5, P=1, F=1, dtype="uint32")], reg_writes=[7])
    gather = dma(sb("dst", "w", 1, F=2048), hbm("src", "r", 100, 128 * 2048), queue="q1", reg_reads=[7])
    reload = rec("register_load", "sp", [sb("src", "r", 5, P=1, F=1, dtype="uint32")], reg_writes=[7])
    other = dma(sb("dst", "w", 2, F=2048), hbm("src", "r", 101, 128 * 2048), queue="q2", reg_reads=[8])
    s = schedule_trace([idx, load, gather, reload, other], TRN2)
    assert s.start[2] == pytest.approx(s.end[1]) and (s.pred[2], s.pred_kind[2]) == (1, "dep")  # RAW
    without = schedule_trace(
        [idx, load, dma(sb("dst", "w", 1, F=2048), hbm("src", "r", 100, 128 * 2048), queue="q1")], TRN2
    )
    assert without.start[2] == 0.0 < s.start[2]  # before: the gather ignored the register
    dge_done = s.start[2] + dma_cost(gather, TRN2).dge_ns
    sp_lat = DEP_LATENCY_CYCLES["sp"] / engine_clock_ghz("sp", TRN2)
    assert s.pred[3] == 2 and s.start[3] == pytest.approx(dge_done + sp_lat)  # WAR at the read
    assert s.start[3] < s.end[2]
    assert s.pred_kind[4] != "dep" and s.start[4] < s.start[2]  # register 8 has no writer: only a free DGE


def _sendrecv(src, dst, pid):
    return rec(
        "sendrecv",
        "dma",
        [sb("src", "r", src, F=64), sb("dst", "w", dst, F=64)],
        pid=pid,
        dma_bytes=128 * 64 * 2,
        queue="sendrecv",
    )


def test_sendrecv_waits_for_the_peer():
    """An LNC=2 exchange completes on both cores when the later half has sent: program 1 reaches its
    sendrecv late (after long ACT work), so program 0's receive, and what reads it, wait for it."""
    long1 = [
        rec("activation", "act", [sb("d", "r", 1, dtype="float32"), sb("o", "w", 2, dtype="float32")], pid=1)
        for _ in range(8)
    ]
    src1 = rec("tensor_copy", "dve", [sb("s", "r", 2, dtype="float32"), sb("d", "w", 21, F=64)], pid=1)
    sr0, sr1 = _sendrecv(10, 11, pid=0), _sendrecv(21, 22, pid=1)
    use0 = rec("tensor_copy", "dve", [sb("src", "r", 11, F=64), sb("dst", "w", 12, F=64)], pid=0)
    # emulator order: program 0 blocks in sendrecv, program 1 runs to its own, then program 0 resumes
    trace = [*long1, src1, sr1, sr0, use0]
    s = schedule_trace(trace, TRN2)
    i0, i1 = 10, 9
    alone = schedule_trace([_sendrecv(10, 11, pid=0)], TRN2).end[0]
    assert s.end[i1] > s.end[7] > alone  # program 1's half leaves after its ACT work
    assert s.end[i0] == pytest.approx(s.end[i1])  # program 0 receives only then
    assert s.pred_kind[i0] == "peer"
    assert s.start[11] >= s.end[i0] and s.start[11] > alone  # the reader of the received tile waits too


class _SizedTrace(list):
    def __init__(self, records, sizes):
        super().__init__(records)
        self.allocs = {s: ("sbuf", "kernel.py", line, b) for s, (line, b) in sizes.items()}


def _block_trace(n_iter, per_iter, bytes_pp, extra_site_bytes=None):
    """n_iter iterations, each loading ``per_iter`` tiles of one site (line 7) then reading all of them."""
    recs, sizes, serial = [], {}, 10
    for _ in range(n_iter):
        tiles = list(range(serial, serial + per_iter))
        serial += per_iter
        for t in tiles:
            recs.append(_load(t, 1000 + t, F=512))
            sizes[t] = (7, bytes_pp)
        for t in tiles:
            recs.append(rec("tensor_copy", "dve", [sb("src", "r", t), sb("dst", "w", 5000 + t)]))
    if extra_site_bytes:  # one long-lived allocation of another site taking most of SBUF
        recs.append(rec("memset", "dve", [sb("dst", "w", 9000)]))
        sizes[9000] = (99, extra_site_bytes)
    return _SizedTrace(recs, sizes)


def test_recurring_site_gets_two_generations_within_capacity():
    """A site whose 4 tiles recur every iteration gets 2 x 4 buffers (next set loads while this one is
    read) when SBUF has room, only its peak 4 when another allocation leaves no room."""
    tr = _block_trace(3, 4, 1024)
    phys = physical_buffers(list(tr), tr.allocs, rotation=2, capacity={"sbuf": 200_000})
    assert len({v[-1] for v in phys.values()}) == 8
    assert {phys[s][-1] for s in range(10, 14)}.isdisjoint({phys[s][-1] for s in range(14, 18)})
    tight = physical_buffers(list(tr), tr.allocs, rotation=2, capacity={"sbuf": 4 * 1024 + 1024})
    assert len({v[-1] for v in tight.values()}) == 5  # peak 4 + the one extra buffer that fits
    full = _block_trace(3, 4, 1024, extra_site_bytes=200_000 - 4 * 1024)
    none = physical_buffers(list(full), full.allocs, rotation=2, capacity={"sbuf": 200_000})
    assert len({v[-1] for s, v in none.items() if s < 9000}) == 4
    # the schedule: with two generations the second set's loads overlap the first set's reads
    hw = TRN2
    two = schedule_trace(tr, hw).latency_ns
    assert two < schedule_trace(tr, hw, rotation=1).latency_ns


def test_sendrecv_waits_for_the_peer_in_an_emulated_lnc2_kernel():
    """End to end: program 1 computes before it sends; program 0 receives and stores. In the emulator's
    trace program 0's sendrecv record comes after program 1's later records; the schedule still makes
    program 0's receive (and its store) wait for program 1's work."""
    import nki
    import nki.isa as nisa
    import nki.language as nl
    import numpy as np

    from nki_moe.sim import run

    @nki.jit
    def k(a):
        pid = nl.program_id(0)
        res = nl.ndarray((2, 512), dtype=nl.float32, buffer=nl.shared_hbm)
        mine = nl.ndarray((1, 512), dtype=nl.float32, buffer=nl.sbuf)
        nisa.dma_copy(dst=mine, src=a[pid : pid + 1, :])
        if pid == 1:
            for _ in range(20):  # ~20 × 430 ns of ScalarE work on the sending core only
                nisa.activation(dst=mine, op=nl.exp, data=mine)
        got = nl.ndarray((1, 512), dtype=nl.float32, buffer=nl.sbuf)
        nisa.sendrecv(src=mine, dst=got, send_to_rank=1 - pid, recv_from_rank=1 - pid, pipe_id=0)
        nisa.dma_copy(dst=res[pid : pid + 1, :], src=got)
        return res

    a = np.zeros((2, 512), dtype=np.float32)
    trace = run(k[2], a, target="trn2").trace
    recs = list(trace)
    s = schedule_trace(trace, TRN2)
    sr = {recs[i].pid: i for i in range(len(recs)) if recs[i].opcode == "sendrecv"}
    acts = [i for i in range(len(recs)) if recs[i].opcode == "activation"]
    assert sr[0] > max(acts)  # the emulator appends the blocked program's record late
    assert s.end[sr[0]] == pytest.approx(s.end[sr[1]])
    assert s.end[sr[0]] > s.end[max(acts)]  # program 0 received only after program 1 computed and sent
    store0 = next(i for i in range(len(recs)) if recs[i].pid == 0 and i > sr[0] and recs[i].engine == "dma")
    assert s.start[store0] >= s.end[sr[0]]


def test_register_dependencies_in_an_emulated_kernel():
    """End to end: a row gather through a register scalar_offset waits for the register_load that sets the
    register, which waits for the DMA that brought the index on chip; a dynamic loop waits for its bound."""
    import nki
    import nki.isa as nisa
    import nki.language as nl
    import numpy as np

    from nki_moe.sim import run

    @nki.jit
    def k(table, idx):
        out = nl.ndarray((1, 8), dtype=table.dtype, buffer=nl.shared_hbm)
        i_sb = nl.ndarray((1, 1), dtype=nl.int32, buffer=nl.sbuf)
        nisa.dma_copy(dst=i_sb, src=idx)
        reg = nisa.register_alloc(0)
        nisa.register_load(reg, i_sb)
        row = nl.ndarray((1, 8), dtype=table.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=row, src=table.ap(pattern=[[8, 1], [1, 8]], offset=0, scalar_offset=reg))
        acc = nl.ndarray((1, 8), dtype=nl.float32, buffer=nl.sbuf)
        nisa.memset(acc, value=0.0)
        for _ in nl.dynamic_range(0, reg):
            nisa.tensor_tensor(dst=acc, data1=acc, data2=row, op=nl.add)
        nisa.dma_copy(dst=out, src=acc)
        return out

    table = np.arange(64, dtype=np.float32).reshape(8, 8)
    res = run(k, table, np.array([[3]], np.int32), target="trn2")
    np.testing.assert_array_equal(res.outputs, 3 * table[3:4])
    recs = list(res.trace)
    s = schedule_trace(res.trace, TRN2)
    load = next(i for i, r in enumerate(recs) if r.opcode == "register_load")
    gather = next(i for i, r in enumerate(recs) if r.engine == "dma" and i > load)
    memset = next(i for i, r in enumerate(recs) if r.opcode == "memset")
    first_add = next(i for i, r in enumerate(recs) if r.opcode == "tensor_tensor")
    assert s.start[load] >= s.end[0]  # the index is on chip (memory RAW, as before)
    assert s.pred[gather] == load and s.start[gather] >= s.end[load]  # register RAW
    assert s.start[memset] < s.end[load] <= s.start[first_add]  # the loop waits for its bound's register


def _rows(mode, alloc, row0, rows, col0, cols, pitch=1024, dtype="bfloat16"):
    """An HBM access to rows row0.. of a [·, pitch] tensor, columns col0 .. col0 + cols (elements)."""
    from nki_moe.sim.trace import Access

    pat = ((pitch, rows), (1, cols))
    return Access("out", mode, "shared_hbm", dtype, 2, row0 * pitch + col0, pat, 0, alloc)


def _two_stores(second):
    """Program 0 stores columns 0..511 of rows 0..127 of an HBM tensor; program 1 then makes ``second``
    (an access of the same tensor). Returns (schedule, index of program 1's DMA)."""
    src0, src1 = sb("src", "r", 1), sb("src", "r", 2)
    first = dma(_rows("w", 9, 0, 128, 0, 512), src0, pid=0)
    other = dma(second, src1, pid=1)
    return schedule_trace([first, other], TRN2), 1


def test_hbm_column_halves_of_the_same_rows_are_independent():
    """Two cores storing different columns of the same rows (an LNC=2 kernel's halves of [T, N]) touch
    disjoint bytes: the row-pitch regions see that, a flat byte range would not (its hull overlaps)."""
    s, j = _two_stores(_rows("w", 9, 0, 128, 512, 512))
    assert s.pred_kind[j] != "dep" and s.start[j] == 0.0
    for overlap in (_rows("w", 9, 0, 128, 256, 512), _rows("w", 9, 127, 1, 0, 2)):  # shared bytes: WAW
        s, j = _two_stores(overlap)
        assert s.pred[j] == 0 and s.pred_kind[j] == "dep"
    # another pitch (rows of 2048 elements here) cannot be compared column-wise: widened to whole rows
    s, j = _two_stores(_rows("w", 9, 32, 8, 1536, 256, pitch=2048))
    assert s.pred[j] == 0 and s.pred_kind[j] == "dep"
    # rows past the first store's are independent whatever the pitch
    s, j = _two_stores(_rows("r", 9, 128, 4, 0, 1024))
    assert s.pred_kind[j] != "dep"
