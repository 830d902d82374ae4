"""Dependency-aware list scheduler over an emulator trace: an estimated timeline of every engine.

Rules ([PERF], [NKI-T1]): each compute engine (PE, ACT, DVE, POOL, SP) of each physical core runs its
instructions in program order; engines run concurrently; an instruction waits for every earlier instruction
whose memory region overlaps its own (read-after-write, write-after-read, write-after-write on the same
allocation, partitions × byte ranges in SBUF/PSUM, byte ranges in HBM; and on the same sequencer register,
``info['reg_reads']`` / ``info['reg_writes']``). DMAs go through a queue (in order),
a descriptor generator (2 per core) and the 16 DMA engines (FIFO each), see :mod:`nki_moe.perf.dma`.
LNC=2 programs run on two cores with their own engines; ``core_barrier`` joins them. All times are
estimates in nanoseconds.

Buffer rotation: the emulator gives every ``nl.ndarray`` call a new allocation, so a tile allocated inside a
loop would look infinitely buffered. The Neuron compiler instead gives an allocation site a fixed set of
physical buffers and rotates the iterations over them (its allocator pass ``AddressRotation``, [AUTOTUNE]
learnings). :func:`physical_buffers` maps the on-chip allocations of one site (``Trace.allocs``: file, line
and the call path above it, so that a helper called from two places is two sites) to physical buffers,
least recently used first, so iterations that share a physical buffer get WAR/WAW dependencies. A site
whose allocations recur (more of them than are ever live at once) gets ``rotation`` generations of its
peak live set (``rotation × peak`` buffers: the next iteration's set fills while this one is used) as
far as SBUF/PSUM capacity allows: the extra buffers are granted smallest first from what the peak sets
leave free (ASSUMPTION: the allocator's policy is not published; this one double-buffers as many sites
as fit). A site allocated once keeps its peak.

The dependency index keeps, per allocation, the live read and write rectangles; a write that covers an
earlier rectangle retires it (the new writer already waits for it), so tile-reuse traces stay small. Large
lists switch to vectorised NumPy overlap tests.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from nki_moe.perf.costs import DEP_LATENCY_CYCLES, compute_cost, engine_clock_ghz
from nki_moe.perf.dma import dma_cost
from nki_moe.perf.hardware import HardwareSpec, get_hardware

__all__ = ["Schedule", "schedule_trace", "physical_buffers", "COMPUTE_ENGINES", "DEFAULT_ROTATION"]

COMPUTE_ENGINES = ("pe", "act", "dve", "pool", "sp")
_BARRIER_SEM_NS_ATTR = "dma_semaphore_us"  # cross-core barrier = one semaphore hop ([DMA-BW], derived)
_NUMPY_THRESHOLD = 48
# Generations of an in-loop allocation site's peak live set (rotation × peak physical buffers, within
# SBUF/PSUM capacity). ASSUMPTION (no public source gives the count): the compiler rotates in-loop tiles
# over several addresses ([AUTOTUNE]: disabling AddressRotation costs ~48 pp MFU on the 2048³ matmul); 2 is
# the fewest that lets iteration i+1 load while iteration i computes. Not fitted: the sensitivity of the
# calibration table to 1–4 is listed in docs/cost-model.md.
DEFAULT_ROTATION = 2
_ON_CHIP = ("sbuf", "psum")
_RENDEZVOUS = ("core_barrier", "sendrecv")  # instructions that wait for the other programs of an LNC launch


class _Regions:
    """Rectangles (p0, p1, lo, hi) with the finish time and index of the instruction that touched them.

    Small sets are plain Python lists; past ``_NUMPY_THRESHOLD`` entries they move (for good) into
    preallocated NumPy columns so overlap queries and retirement are vectorised.
    """

    __slots__ = ("rows", "arr", "n")

    def __init__(self):
        self.rows: list[tuple] = []  # (p0, p1, lo, hi, fin, idx) while small
        self.arr: np.ndarray | None = None  # columns p0, p1, lo, hi, fin, idx once large (float64)
        self.n = 0

    def __len__(self) -> int:
        return self.n if self.arr is not None else len(self.rows)

    def latest_overlap(self, p0: int, p1: int, lo: int, hi: int) -> tuple[float, int]:
        """(max finish, its index) over rectangles overlapping the query; (-1, -1) when none."""
        if self.arr is None:
            best, bi = -1.0, -1
            for q0, q1, l0, h0, f, j in self.rows:
                if q0 < p1 and p0 < q1 and l0 < hi and lo < h0 and f > best:
                    best, bi = f, j
            return best, bi
        a = self.arr[:, : self.n]
        m = (a[0] < p1) & (p0 < a[1]) & (a[2] < hi) & (lo < a[3])
        if not m.any():
            return -1.0, -1
        fin = np.where(m, a[4], -1.0)
        k = int(fin.argmax())
        return float(fin[k]), int(a[5, k])

    def add(self, p0: int, p1: int, lo: int, hi: int, fin: float, idx: int) -> None:
        if self.arr is None:
            self.rows.append((p0, p1, lo, hi, fin, idx))
            if len(self.rows) > _NUMPY_THRESHOLD:
                self.arr = np.zeros((6, 4 * _NUMPY_THRESHOLD))
                self.n = len(self.rows)
                self.arr[:, : self.n] = np.array(self.rows, dtype=np.float64).T
                self.rows = []
            return
        if self.n == self.arr.shape[1]:
            self.arr = np.concatenate([self.arr, np.zeros_like(self.arr)], axis=1)
        self.arr[:, self.n] = (p0, p1, lo, hi, fin, idx)
        self.n += 1

    def retire_covered(self, p0: int, p1: int, lo: int, hi: int) -> None:
        """Drop rectangles fully inside the query (a later writer of that region already waited for them)."""
        if self.arr is None:
            self.rows = [
                r for r in self.rows if not (p0 <= r[0] and r[1] <= p1 and lo <= r[2] and r[3] <= hi)
            ]
            return
        a = self.arr[:, : self.n]
        covered = (p0 <= a[0]) & (a[1] <= p1) & (lo <= a[2]) & (a[3] <= hi)
        if covered.any():
            keep = a[:, ~covered]
            self.n = keep.shape[1]
            self.arr[:, : self.n] = keep


class _Timeline:
    """Busy intervals of one DMA engine; a transfer fills the free gaps from its ready time onwards.

    DMA engines serve their 16 queues round-robin ([DMA-INTRO]), so a transfer that is ready early is not
    held behind one issued earlier in program order but ready later: work is placed in the earliest free
    time, split over gaps (descriptor-level interleaving).
    """

    __slots__ = ("s", "e")

    def __init__(self):
        self.s: list[float] = []
        self.e: list[float] = []

    def clone(self) -> _Timeline:
        t = _Timeline()
        t.s, t.e = list(self.s), list(self.e)
        return t

    def fill(self, ready: float, work: float) -> tuple[float, float]:
        """Place ``work`` ns from ``ready`` on; returns (first start, finish)."""
        S, E = self.s, self.e
        k = bisect_right(E, ready)
        t, left = ready, work
        first = None
        segs = []
        while left > 1e-12:
            if k < len(S) and S[k] <= t:
                t = max(t, E[k])
                k += 1
                continue
            gap_end = S[k] if k < len(S) else float("inf")
            take = min(left, gap_end - t)
            if take > 0:
                segs.append((t, t + take))
                first = t if first is None else first
                left -= take
                t += take
        for a, b in segs:
            j = bisect_right(S, a)
            S.insert(j, a)
            E.insert(j, b)
            # merge with neighbours that touch
            if j + 1 < len(S) and S[j + 1] <= E[j] + 1e-9:
                E[j] = max(E[j], E[j + 1])
                del S[j + 1], E[j + 1]
            if j > 0 and S[j] <= E[j - 1] + 1e-9:
                E[j - 1] = max(E[j - 1], E[j])
                del S[j], E[j]
        return (first if first is not None else ready), t


@dataclass
class Schedule:
    """Estimated timeline of one trace (nanoseconds; index i = trace record i)."""

    hw: HardwareSpec
    start: np.ndarray  # issue start (DMA: descriptor generation start)
    end: np.ndarray  # completion
    busy_start: np.ndarray  # start of the engine-occupying part (DMA: first byte moved)
    engine: list[str]  # 'pe' | 'act' | 'dve' | 'pool' | 'sp' | 'dma'
    track: list[str]  # Perfetto track: the engine, or 'dma:<queue>' for DMAs
    pid: np.ndarray
    pred: np.ndarray  # record that bound the start (dependency or resource), -1 at the start
    pred_kind: list[str]  # 'dep' | 'engine' | 'dma_engine' | 'dge' | 'queue' | 'barrier' | 'peer' | ''
    rules: list[str]  # cost rule applied
    dma_bytes: np.ndarray
    hbm_bytes: np.ndarray  # bytes read or written in HBM by each DMA
    dma_engines_busy_ns: dict  # (pid, engine index) -> busy ns
    # Profiler-style activity (see active_ns): compute records, the instruction's active duration (PE
    # matmuls: LoadStationary + MultiplyMoving); DMA records, when the descriptors reach the DMA queue and
    # when the DMA engines start moving packets for it (:func:`_activity_starts_at_queue`).
    active_dur: np.ndarray
    dma_queue_start: np.ndarray
    dma_active_start: np.ndarray

    @classmethod
    def empty(cls, hw: HardwareSpec, n: int) -> Schedule:
        """A schedule of ``n`` records, all zero, for the scheduler to fill in place."""
        return cls(
            hw=hw,
            start=np.zeros(n),
            end=np.zeros(n),
            busy_start=np.zeros(n),
            engine=[""] * n,
            track=[""] * n,
            pid=np.zeros(n, np.int64),
            pred=np.full(n, -1, np.int64),
            pred_kind=[""] * n,
            rules=[""] * n,
            dma_bytes=np.zeros(n, np.int64),
            hbm_bytes=np.zeros(n, np.int64),
            dma_engines_busy_ns=defaultdict(float),
            active_dur=np.zeros(n),
            dma_queue_start=np.zeros(n),
            dma_active_start=np.zeros(n),
        )

    @property
    def latency_ns(self) -> float:
        """Estimated kernel latency: last completion (the launch starts at 0)."""
        return float(self.end.max()) if len(self.end) else 0.0

    def busy_ns(self, engine: str, pid: int | None = None) -> float:
        """Busy time of an engine: summed durations (compute) or the union of DMA transfer intervals."""
        sel = [i for i, e in enumerate(self.engine) if e == engine and (pid is None or self.pid[i] == pid)]
        if not sel:
            return 0.0
        if engine != "dma":
            return float(sum(self.end[i] - self.busy_start[i] for i in sel))
        return _union_per_pid(self.pid, sel, self.busy_start, self.end)

    def active_ns(self, engine: str, pid: int | None = None) -> float:
        """Activity of an engine as the neuron profiler counts it (its "X active" figures), ns.

        Unlike :meth:`busy_ns` (throughput occupancy, what the latency schedule uses):

        * PE: Σ over instructions of the profiler's instruction durations; every nc_matmul counts its
          LoadStationary *and* its MultiplyMoving ([NKI-ISA], durations from [NKI-T1], [PERF],
          :func:`nki_moe.perf.costs.pe_active_cycles`), although the schedule hides LS behind the previous MM;
        * DMA: per core, the union over DMAs of the time "at least one DMA packet is transferring" (the
          profiler's definition of ``dma_active_time``, [PROF-SCHEMA]): [first data byte, last byte] for a
          hardware-DGE DMA, whose descriptors the DGE block hands to the engines on demand; [descriptors
          in the queue, last byte] for a DMA whose descriptors sit in memory (software DGE: written by
          GpSimd; ``dge_mode.none``: precomputed in HBM, "the DMA engine reads the pre-built descriptor",
          [DGE]): the engines fetch them before the data (derived reading, see
          :func:`_activity_starts_at_queue`). Descriptor *generation* is never counted;
        * ACT/DVE/POOL/SP: no documented difference, = :meth:`busy_ns`.
        """
        sel = [i for i, e in enumerate(self.engine) if e == engine and (pid is None or self.pid[i] == pid)]
        if not sel:
            return 0.0
        if engine != "dma":
            return float(sum(self.active_dur[i] for i in sel))
        return _union_per_pid(self.pid, sel, self.dma_active_start, self.end)

    def critical_path(self) -> list[int]:
        """Record indices on the critical path, first to last (following the binding predecessors)."""
        if not len(self.end):
            return []
        i = int(self.end.argmax())
        path = []
        seen = set()
        while i >= 0 and i not in seen:
            seen.add(i)
            path.append(i)
            i = int(self.pred[i])
        return path[::-1]

    def critical_share(self) -> dict[str, float]:
        """Share of the latency spent in each engine's instructions along the critical path (rest: 'wait')."""
        lat = self.latency_ns
        share: dict[str, float] = defaultdict(float)
        if lat <= 0:
            return {}
        cursor = 0.0
        for i in self.critical_path():
            # only the part not overlapped by the previous node counts (DMA transfers overlap their issuer)
            seg = self.end[i] - max(cursor, self.busy_start[i])
            if seg > 0:
                share[self.engine[i]] += seg / lat
            cursor = max(cursor, self.end[i])
        share["wait"] = max(0.0, 1.0 - sum(share.values()))
        return dict(share)


def _activity_starts_at_queue(rec) -> bool:
    """Whether a DMA's profiler activity starts when its descriptors reach the queue (else: first data byte).

    The profiler counts DMA activity as the time "at least one DMA packet is transferring" ([PROF-SCHEMA]).
    Descriptors kept in memory are fetched by the DMA engines before the data moves: software DGE (GpSimd
    writes them) and ``dge_mode.none`` (precomputed in HBM, read by the DMA engine, [DGE]); the hardware
    DGE block generates descriptors on demand ([DGE]), so a hwdge DMA's semaphore-to-start latency
    ([DMA-BW]) has no packet in flight. DERIVED reading of those two sources, not fitted: it is what
    separates the attention block (all hwdge, K15) from the fused MoE layer (swdge, K13/K13c). DGE mode
    ``unknown`` is the compiler's choice; like its timing (hwdge), its activity starts at the first byte.
    """
    return str(rec.info.get("dge_mode", "unknown")) in ("swdge", "none") or rec.info.get("queue") == "pool"


def _union_per_pid(pid: np.ndarray, sel: list[int], lo: np.ndarray, hi: np.ndarray) -> float:
    """Σ over programs of the length of the union of the intervals [lo[i], hi[i]] of the selected records."""
    total = 0.0
    for p in sorted({int(pid[i]) for i in sel}):
        iv = sorted((lo[i], hi[i]) for i in sel if pid[i] == p)
        cur_s, cur_e = iv[0]
        for s, e in iv[1:]:
            if s > cur_e:
                total += cur_e - cur_s
                cur_s, cur_e = s, e
            else:
                cur_e = max(cur_e, e)
        total += cur_e - cur_s
    return float(total)


def physical_buffers(
    records, allocs: dict, *, rotation: int = DEFAULT_ROTATION, capacity: dict | None = None
) -> dict[int, tuple]:
    """Physical buffer of every on-chip allocation: serial -> (pid, buffer, file, line, callers, slot).

    Args:
        records: trace records in program order.
        allocs: ``Trace.allocs`` (serial -> (buffer, file, line, bytes per partition[, callers])).
        rotation: generations of a recurring site's peak live set (see the module docstring).
        capacity: bytes per partition per buffer kind ({'sbuf': ..., 'psum': ...}) the extra generations
            must fit in, with every site's peak set counted; None: no limit.
    Returns:
        Mapping for the allocations that appear in ``allocs`` and are accessed on chip; allocations of one
        site whose live ranges (first to last access) overlap never share a slot.
    """
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    owner: dict[int, int] = {}
    for i, r in enumerate(records):
        for a in r.accesses:
            s = a.alloc
            if a.pstep and s in allocs:
                first.setdefault(s, i)
                last[s] = i
                owner[s] = r.pid
    sites: dict = defaultdict(list)
    for s in sorted(first, key=first.__getitem__):
        buf, f, line = allocs[s][:3]
        callers = allocs[s][4] if len(allocs[s]) > 4 else ()  # a helper's line, per call path
        if buf in _ON_CHIP:
            sites[(owner[s], buf, f, line, callers)].append(s)
    peaks: dict = {}
    for site, serials in sites.items():
        ends = sorted(last[s] for s in serials)
        # peak overlap of the [first, last] live ranges (serials are sorted by first access)
        peaks[site] = max(i + 1 - bisect_right(ends, first[s] - 1) for i, s in enumerate(serials))
    counts = _generations(sites, peaks, allocs, rotation, capacity)
    out: dict[int, tuple] = {}
    for site, serials in sites.items():
        n = counts[site]
        lru = list(range(n))  # least recently used slot first
        free_at = [-1] * n  # last access of the slot's current occupant
        for s in serials:
            k = next(k for k in lru if free_at[k] < first[s])
            lru.remove(k)
            lru.append(k)
            free_at[k] = last[s]
            out[s] = (*site, k)
    return out


def _generations(sites: dict, peaks: dict, allocs: dict, rotation: int, capacity: dict | None) -> dict:
    """Physical buffers per site: its peak, plus up to (rotation − 1) × peak more for a recurring site,
    granted smallest request first while the (program, buffer kind)'s capacity left by the peaks allows."""
    counts = {site: peaks[site] for site in sites}
    want: dict = defaultdict(list)  # (pid, buffer) -> [(extra bytes, extra buffers, site)]
    used: dict = defaultdict(int)
    for site, serials in sites.items():
        pid, buf = site[0], site[1]
        size = max(1, int(allocs[serials[0]][3]))
        used[(pid, buf)] += peaks[site] * size
        extra = max(rotation * peaks[site], rotation) - peaks[site]
        if len(serials) > peaks[site] and extra > 0:
            want[(pid, buf)].append((extra * size, extra, size, site))
    for key, reqs in want.items():
        left = float("inf") if capacity is None else capacity.get(key[1], float("inf")) - used[key]
        for _nbytes, extra, size, site in sorted(reqs, key=lambda r: (r[0], r[3][2:])):
            grant = extra if left == float("inf") else min(extra, max(0, int(left // size)))
            counts[site] += grant
            left -= grant * size
    return counts


def _hbm_rows(acc) -> tuple[int, int, int, int, int] | None:
    """(pitch, first row, rows, in-row lo, in-row hi) in bytes when an HBM access is rows of a 2-D layout:
    its largest-stride dim steps by ``pitch`` and everything inside one step stays within the row (so the
    rows do not overlap); None otherwise."""
    dims = [(s, n) for s, n in acc.pat if n > 1 and s != 0]
    if len(dims) < 2 or any(s < 0 for s, _ in dims):
        return None
    k = max(range(len(dims)), key=lambda j: dims[j][0])
    S, n = dims[k]
    inner = sum(s * (m - 1) for j, (s, m) in enumerate(dims) if j != k) + 1
    r0, c0 = divmod(acc.off, S)
    if c0 + inner > S:
        return None
    isz = acc.itemsize
    return S * isz, r0, n, c0 * isz, (c0 + inner) * isz


def _rect(acc, phys: dict, pitch: dict | None = None) -> tuple[tuple, int, int, int, int]:
    """(key, p0, p1, lo, hi) of an access. On chip: partitions × the byte range within each partition.
    HBM: rows × the byte range within a row of the allocation's row pitch (``pitch``: key -> bytes, set by
    the allocation's first access when it is a 2-D row pattern, :func:`_hbm_rows`; else 0: flat), so two
    programs writing different columns of the same rows do not depend on each other; an access of another
    pitch is widened to the whole rows it spans (conservative). Flat: one pseudo-row, the byte range."""
    lo, hi = acc._range()
    key = (acc.buffer, phys.get(acc.alloc, acc.alloc))
    if acc.pstep:
        p0 = acc.off // acc.pstep
        return key, p0, p0 + acc.pat[0][1], lo, hi
    if pitch is None:
        return key, 0, 1, lo, hi
    rows = _hbm_rows(acc)
    P = pitch.get(key)
    if P is None:  # the first access decides (0: not a row pattern, the allocation stays flat)
        P = pitch[key] = rows[0] if rows is not None else 0
    if P == 0:
        return key, 0, 1, lo, hi
    if rows is not None and rows[0] == P:
        _, r0, n, c_lo, c_hi = rows
        return key, r0, r0 + n, c_lo, c_hi
    r0, r1 = lo // P, (hi - 1) // P + 1
    if r1 - r0 == 1:
        return key, r0, r1, lo - r0 * P, hi - r0 * P
    return key, r0, r1, 0, P


def _register_rects(rec) -> list[tuple]:
    """Register operands of a record as regions of one 4-byte pseudo-allocation per (program, register).

    ``info['reg_reads']`` / ``info['reg_writes']``: ids of the sequencer registers the instruction reads
    (``register_move``/``register_store`` sources, a register ``scalar_offset``, dynamic-loop bounds) and
    writes (``register_load``/``register_move`` destinations). Entered in the same region index as memory,
    so a reader waits for the register's last writer (RAW) and a writer for the earlier readers and writer
    (WAR/WAW). Registers are per program (core). Records without these fields contribute nothing.
    """
    info = getattr(rec, "info", None) or {}
    out = []
    for mode, field in (("r", "reg_reads"), ("w", "reg_writes")):
        for rid in info.get(field, ()) or ():
            out.append((mode, ("register", rec.pid, rid), 0, 1, 0, 4))
    return out


def _epoch_order(records) -> list[int]:
    """Processing order: stable by (barriers the program has passed, trace index).

    The emulator appends a blocked program's ``core_barrier`` (or ``sendrecv``) record only when it resumes,
    so another program's later records can precede it in the trace; ordering by rendezvous epoch fixes that
    while keeping every program's own order.
    """
    passed: dict = defaultdict(int)
    epoch = []
    for r in records:
        epoch.append(passed[r.pid])
        if r.opcode in _RENDEZVOUS:
            passed[r.pid] += 1
    return sorted(range(len(records)), key=lambda i: (epoch[i], i))


def schedule_trace(
    trace, hw: HardwareSpec | str = "trn2", *, rotation: int | None = DEFAULT_ROTATION
) -> Schedule:
    """Estimate the start and end time of every record of an emulator trace.

    Args:
        trace: :class:`nki_moe.sim.trace.Trace` (or any sequence of records with engine/opcode/accesses/info).
        hw: hardware spec or its name ('trn1', 'trn2', 'trn3').
        rotation: physical buffers per allocation site (see :func:`physical_buffers`); None keeps every
            allocation separate (unlimited buffering). Needs ``trace.allocs``; plain record lists are
            scheduled by allocation.
    Returns:
        :class:`Schedule`.
    """
    hw = get_hardware(hw) if isinstance(hw, str) else hw
    records = list(trace)
    allocs = getattr(trace, "allocs", None)
    cap = {"sbuf": hw.sbuf_usable_bytes_per_partition, "psum": hw.psum_bytes_per_partition}
    phys = physical_buffers(records, allocs, rotation=rotation, capacity=cap) if allocs and rotation else {}
    return _Scheduler(records, hw, phys).run()


class _Scheduler:
    """One pass over the records in epoch order; each record: its dependencies, then its resources.

    Concerns, one method each: :meth:`_dependency` (RAW/WAR/WAW over the region index), :meth:`_dma_issue`
    (the DMA queue, in order, then a descriptor generator), :meth:`_dma_engines` (the core's 16 DMA
    engines), :meth:`_compute` (one in-order compute engine), :meth:`_barrier` (``core_barrier`` joins the
    programs), :meth:`_record` (the region index); :meth:`_dma` puts a DMA's parts together. The result is
    filled in place: ``self.sched`` (a :class:`Schedule`).
    """

    def __init__(self, records, hw: HardwareSpec, phys: dict):
        self.records, self.hw, self.phys = records, hw, phys
        self.sched = Schedule.empty(hw, len(records))
        self.writes: dict = defaultdict(_Regions)
        self.reads: dict = defaultdict(_Regions)
        self.pitch: dict = {}  # HBM allocation -> the row pitch its regions are kept in (bytes)
        self.free: dict = defaultdict(float)  # (pid, resource) -> time it is free
        self.last: dict = defaultdict(lambda: -1)  # (pid, resource) -> last record on it
        self.floor: dict = defaultdict(float)  # pid -> release time of its last barrier
        self.pid_last_end: dict = defaultdict(float)
        self.barriers: dict = defaultdict(list)  # barrier ordinal -> record indices
        self.barrier_count: dict = defaultdict(int)
        self.sendrecvs: dict = defaultdict(list)  # exchange ordinal -> [(record index, regions)]
        self.sr_count: dict = defaultdict(int)
        self.n_programs = len({r.pid for r in records}) or 1
        # per core: the 16 DMA engines' busy intervals; engines with identical histories share one object
        self.lanes: dict = defaultdict(lambda: [_Timeline()] * 16)
        self.dep_lat_ns = {e: DEP_LATENCY_CYCLES[e] / engine_clock_ghz(e, hw) for e in COMPUTE_ENGINES}
        self.sem_ns = getattr(hw, _BARRIER_SEM_NS_ATTR) * 1e3

    def run(self) -> Schedule:
        """Schedule every record (epoch order) and return the filled :class:`Schedule`."""
        sched = self.sched
        for i in _epoch_order(self.records):
            rec = self.records[i]
            p = rec.pid
            sched.pid[i] = p
            rects = [(a.mode, *_rect(a, self.phys, self.pitch)) for a in rec.accesses]
            rects += _register_rects(rec)
            dep_t, dep_i = self._dependency(rects)
            if rec.engine == "dma":
                pred = self._dma(i, rec, dep_t, dep_i)
            else:
                pred = self._compute(i, rec, dep_t, dep_i)
                if rec.opcode == "core_barrier" and self.n_programs > 1:
                    self._barrier(i, p)
            sched.pred[i], sched.pred_kind[i] = pred
            if rec.opcode == "sendrecv" and self.n_programs > 1:
                self._sendrecv(i, p, rects)  # records its regions once the peer's half is known
                continue
            self.pid_last_end[p] = max(self.pid_last_end[p], sched.end[i])
            self._record(i, rects)
        for members in self.sendrecvs.values():  # unmatched halves (a program that never met its peer)
            for j, rects in members:
                self._record(j, rects)
        sched.dma_engines_busy_ns = dict(sched.dma_engines_busy_ns)
        return sched

    def _sendrecv(self, i: int, p, rects) -> None:
        """The k-th ``sendrecv`` of every program is one exchange: each half completes when it has sent its
        own data and received the peer's, i.e. at the later of the two transfers' ends (the peer's data
        cannot leave before the peer issues its half). Regions are entered at that end."""
        k = self.sr_count[p]
        self.sr_count[p] += 1
        members = self.sendrecvs[k]
        members.append((i, rects))
        if len(members) < self.n_programs:
            return
        done = max(self.sched.end[j] for j, _ in members)
        for j, rj in members:
            if self.sched.end[j] < done:
                self.sched.pred_kind[j] = "peer"
            self.sched.end[j] = done
            pj = int(self.sched.pid[j])
            self.pid_last_end[pj] = max(self.pid_last_end[pj], done)
            self._record(j, rj)
        del self.sendrecvs[k]

    def _dependency(self, rects) -> tuple[float, int]:
        """(finish time, index) of the latest earlier record this one must wait for; (-1, -1) if none."""
        writes, reads = self.writes, self.reads
        dep_t, dep_i = -1.0, -1
        for mode, key, p0, p1, lo, hi in rects:
            t, j = writes[key].latest_overlap(p0, p1, lo, hi) if key in writes else (-1.0, -1)
            if t > dep_t:
                dep_t, dep_i = t, j
            if mode == "w" and key in reads:
                t, j = reads[key].latest_overlap(p0, p1, lo, hi)
                if t > dep_t:
                    dep_t, dep_i = t, j
        return dep_t, dep_i

    def _dge(self, p, queue: str) -> tuple:
        """The descriptor generator serving ``queue`` (software DGE on GpSimd for the pool queue)."""
        if queue == "pool":
            return (p, "pool")
        if queue == "act":
            return (p, "dge1")
        if queue == "sp":
            return (p, "dge0")
        return min(((p, "dge0"), (p, "dge1")), key=lambda k: self.free[k])

    def _dma(self, i: int, rec, dep_t: float, dep_i: int) -> tuple[int, str]:
        """Queue (in order) → descriptor generation → transfer on the engines; returns (pred, kind)."""
        sched, p = self.sched, rec.pid
        c = dma_cost(rec, self.hw)
        queue = str(rec.info.get("queue", "q0"))
        s, dge_end, pred = self._dma_issue(i, p, queue, c.dge_ns, dep_t, dep_i)
        xfer_ready = dge_end + c.latency_ns
        first, end, pred = self._dma_engines(i, p, c, xfer_ready, pred)
        sched.start[i], sched.busy_start[i], sched.end[i] = s, first, end
        sched.dma_queue_start[i] = dge_end
        sched.dma_active_start[i] = dge_end if _activity_starts_at_queue(rec) else first
        sched.active_dur[i] = end - sched.dma_active_start[i]
        sched.engine[i], sched.track[i] = "dma", "dma:" + queue
        sched.rules[i] = (
            f"{c.nbytes} B on {len(c.engines)} eng, {c.chunk_bytes} B/desc, eff {c.efficiency:.2f}"
        )
        sched.dma_bytes[i] = c.nbytes
        sched.hbm_bytes[i] = c.nbytes if c.touches_hbm else 0
        return pred

    def _dma_issue(
        self, i: int, p, queue: str, dge_ns: float, dep_t: float, dep_i: int
    ) -> tuple[float, float, tuple[int, str]]:
        """The DMA queue (in order), then a descriptor generator: (generation start, end, (pred, kind))."""
        free, last = self.free, self.last
        base = self.floor[p]
        ready, pred = base, (-1, "barrier" if base > 0 else "")
        if dep_t > ready:
            ready, pred = dep_t, (dep_i, "dep")
        qkey = (p, "queue:" + queue)
        if free[qkey] > ready:
            ready, pred = free[qkey], (last[qkey], "queue")
        dge_key = self._dge(p, queue)
        if free[dge_key] > ready:
            ready, pred = free[dge_key], (last[dge_key], "dge")
        dge_end = ready + dge_ns
        free[dge_key] = free[qkey] = dge_end
        last[dge_key] = last[qkey] = i
        return ready, dge_end, pred

    def _dma_engines(self, i: int, p, c, ready: float, pred: tuple) -> tuple[float, float, tuple[int, str]]:
        """The core's 16 DMA engines move the bytes from ``ready`` on: (first, last byte, (pred, kind))."""
        last, busy = self.last, self.sched.dma_engines_busy_ns
        first, end = float("inf"), ready
        core_lanes = self.lanes[p]
        groups: dict = {}
        for e in c.engines:  # engines sharing one timeline object are filled once
            groups.setdefault(id(core_lanes[e]), []).append(e)
        for members in groups.values():
            tl = core_lanes[members[0]]
            if sum(1 for x in core_lanes if x is tl) != len(members):
                tl = tl.clone()  # copy-on-write: this subset of engines diverges from the others
                for e in members:
                    core_lanes[e] = tl
            s_e, e_end = tl.fill(ready, c.ns_per_engine)
            for e in members:
                ekey = (p, e)
                if e_end - ready > c.ns_per_engine + 1e-6 and e_end > end:
                    pred = (last[ekey], "dma_engine")
                last[ekey] = i
                busy[ekey] += c.ns_per_engine
            first = min(first, s_e)
            end = max(end, e_end)
        return (first if c.engines else ready), end, pred

    def _compute(self, i: int, rec, dep_t: float, dep_i: int) -> tuple[int, str]:
        """One compute engine, in program order, after its dependencies; returns (pred, kind)."""
        sched, p, eng = self.sched, rec.pid, rec.engine
        cost = compute_cost(rec, self.hw)
        ekey = (p, eng)
        base = self.floor[p]
        s, pred = base, (-1, "barrier" if base > 0 else "")
        # PE accumulation chains into one PSUM bank stream back to back ([NKI-T1]: peak needs
        # back-to-back matmuls), so a PE→PE dependency pays no extra latency.
        pe_chain = eng == "pe" and dep_i >= 0 and self.records[dep_i].engine == "pe"
        lat = 0.0 if pe_chain else self.dep_lat_ns[eng]
        if dep_t >= 0 and dep_t + lat > s:
            s, pred = dep_t + lat, (dep_i, "dep")
        if self.free[ekey] > s:
            s, pred = self.free[ekey], (self.last[ekey], "engine")
        sched.start[i] = sched.busy_start[i] = sched.dma_queue_start[i] = sched.dma_active_start[i] = s
        sched.end[i] = s + cost.ns
        sched.active_dur[i] = cost.active_ns
        self.free[ekey] = sched.end[i]
        self.last[ekey] = i
        sched.engine[i], sched.track[i], sched.rules[i] = eng, eng, cost.rule
        return pred

    def _barrier(self, i: int, p) -> None:
        """A ``core_barrier``: when every program has arrived, release all after one semaphore hop."""
        sched = self.sched
        k = self.barrier_count[p]
        self.barrier_count[p] += 1
        members = self.barriers[k]
        members.append(i)
        if len(members) == self.n_programs:
            release = (
                max(max(self.pid_last_end[int(sched.pid[j])] for j in members), sched.end[i]) + self.sem_ns
            )
            for j in members:
                sched.end[j] = max(sched.end[j], release)
                self.floor[int(sched.pid[j])] = release

    def _record(self, i: int, rects) -> None:
        """Enter the record's regions (finishing at its end) into the index; writes retire what they cover."""
        fin = self.sched.end[i]
        # a DMA reads its registers (scalar_offset) when its descriptors are generated, not at its last byte
        reg_read_fin = self.sched.dma_queue_start[i] if self.sched.engine[i] == "dma" else fin
        writes, reads = self.writes, self.reads
        for mode, key, p0, p1, lo, hi in rects:
            if key[0] == "register" and mode == "r":
                reads[key].add(p0, p1, lo, hi, reg_read_fin, i)
                continue
            if mode == "w":
                if key in writes:
                    writes[key].retire_covered(p0, p1, lo, hi)
                if key in reads:
                    reads[key].retire_covered(p0, p1, lo, hi)
                writes[key].add(p0, p1, lo, hi, fin, i)
            else:
                reads[key].add(p0, p1, lo, hi, fin, i)
