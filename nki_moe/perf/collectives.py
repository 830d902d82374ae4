"""Time of a collective (all-reduce, all-gather, reduce-scatter) across the TP ranks of ONE chip (ESTIMATES).

No Trainium is reachable: every time here is a model estimate, calibrated on one published figure.

Model (α-β, per collective). N ranks (logical cores: TP=4 at LNC=2 is the chip's 4 logical cores), a
message of ``nbytes`` = B (all-reduce: input = output = B; all-gather: output = B = N chunks;
reduce-scatter: input = B):

    time = LAUNCH_US + hops × HOP_US + Σ over phases (bytes each rank moves in the phase ÷ its rate)

Algorithms ([COLL-INTRA], which also defines C = B / N):

=============  ==============================  ==========================  ============================
algorithm      all-reduce                      all-gather                  reduce-scatter
=============  ==============================  ==========================  ============================
``ring``       2(N−1) hops; RS then AG phase,  N−1 hops; (N−1)·C copied    N−1 hops; (N−1)·C reduced
               each (N−1)·C per rank
``mesh``       2 hops (RS + AG, each one       1 hop; (N−1)·C copied       1 hop; (N−1)·C reduced
               direct step); same bytes as
               ring
``oneshot``    1 hop ("single-step mesh"):     —                           —
               (N−1)·B copied, (N−1)·B
               reduced
=============  ==============================  ==========================  ============================

``mesh`` is the default: the runtime's choice below 1 MB ([COLL-INTRA] sweet range) and the algorithm the
published Trn3 TKG profile names for this very all-reduce ([MEGA-CC] ``tests/nxdi_moe.md``). On one chip a
mesh step is direct (no inter-chip routing), so its all-gather / reduce-scatter are one hop each.

Rates per rank (derived from cited figures; **not calibrated**: no published on-chip large-message point with
its hardware stated): a copy phase moves bytes at min(the rank's DMA bandwidth, its HBM share ÷ 2) (one read +
one write per byte, "1R1W" [COLL-INTRA]); a reduce phase at min(DMA × ``cc_reduce_dma_fraction`` (0.5 before
NC-v4 [NKI-T3]), HBM share ÷ 3) ("2R1W"). The rank's DMA and HBM are its ``lnc`` physical cores' shares
(:mod:`nki_moe.perf.hardware`). At decode sizes (4 KiB) these terms are ~0.01 µs: latency is everything.

Constants:
- ``HOP_US`` = 1.5 µs: the midpoint of the published "per-hop latency of Ring/KangaRing is about 1-2 us (HBM
  load dependent)" [COLL-INTRA]; not fitted.
- ``LAUNCH_US``: the fixed cost of one collective (GpSimd trigger, CC-core orchestration, semaphores).
  **The only fitted constant**, fitted on one point: the ≈12 µs per decode all-reduce on Trn2 ([MEGA-CC]
  ``docs/winning_strategy.md``: [1, 2048] bf16 = 4 KiB, TP=4, mesh). It is shared by every target and
  operation (no source gives a per-generation difference). ``fit_launch_us()`` recomputes it.

Published points (:data:`PUBLISHED`, :func:`validation_table`), by the quantity each measures
(``CollectivePoint.quantity``; errors and the reading of each source in docs/cost-model.md, "Collectives"):

- ``critical_path``: the time one collective adds to the step when nothing overlaps it, which is what
  :func:`collective_time` models (Trn2 ≈12 µs: the decode step's profiler accounting, kernels and
  all-reduces adding up to the NEFF total). Compared with the estimate (goal: within 15 %).
- ``cc_core_active``: the profiler's CC-op duration / active time on the collective cores, measured with
  ``--enable-ccop-compute-overlap`` (the op runs under the next layer's compute, "most CC time is hidden
  behind compute", [MEGA-CC] ``tests/nxdi_moe.md``): it leaves out what the issuing side pays (the
  GpSimd trigger is a separate 0.23 µs WRITE, the consumers' semaphore waits and the graph boundary are on
  other engines). Not the modelled quantity; checked against :func:`cc_core_bounds` instead: at least the
  algorithm's hops and bytes, at most the critical-path estimate.
- ``in_kernel``: collectives issued from inside an NKI kernel (``nki.collectives`` SBUF→SBUF, plus an LNC
  gather after the MoE's): a different operation and path, not modelled; listed, not compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nki_moe.perf.hardware import HardwareSpec, get_hardware

__all__ = [
    "OPS",
    "ALGORITHMS",
    "DEFAULT_ALGORITHM",
    "HOP_US",
    "LAUNCH_US",
    "CollectiveEstimate",
    "CollectivePoint",
    "PUBLISHED",
    "collective_time",
    "all_reduce_time",
    "all_gather_time",
    "reduce_scatter_time",
    "hops",
    "decode_collectives",
    "DecodeCollectives",
    "fit_launch_us",
    "validation_table",
    "QUANTITIES",
    "cc_core_bounds",
]

OPS = ("all_reduce", "all_gather", "reduce_scatter")
ALGORITHMS = ("ring", "mesh", "oneshot")
DEFAULT_ALGORITHM = "mesh"
HOP_US = 1.5  # [COLL-INTRA]: "per-hop latency ... about 1-2 us"; midpoint, not fitted
LAUNCH_US = 8.979  # fitted: fit_launch_us() on PUBLISHED[0] (Trn2, 4 KiB, TP=4, ≈12 µs); test pins the refit


@dataclass(frozen=True)
class CollectiveEstimate:
    """A modelled collective time (an ESTIMATE, not a measurement); seconds in ``*_s`` fields."""

    op: str
    algorithm: str
    target: str
    ranks: int
    nbytes: float  # message bytes B (see module docstring for what B is per op)
    hops: int  # dependent steps of the algorithm, each paying HOP_US
    bytes_per_rank: float  # bytes each rank's DMA moves over all phases
    launch_s: float
    hop_s: float
    transfer_s: float
    kind: str = "estimate"

    @property
    def latency_s(self) -> float:
        """Size-independent part: launch + hops × hop latency, seconds."""
        return self.launch_s + self.hop_s

    @property
    def total_s(self) -> float:
        """Estimated time of the collective, seconds."""
        return self.launch_s + self.hop_s + self.transfer_s

    @property
    def total_us(self) -> float:
        return self.total_s * 1e6

    def __str__(self) -> str:
        return (
            f"{self.op} {self.nbytes:,.0f} B × {self.ranks} ranks on {self.target} ({self.algorithm}): "
            f"{self.total_us:.2f} µs (estimate: launch {self.launch_s * 1e6:.2f} + {self.hops} hops "
            f"{self.hop_s * 1e6:.2f} + transfer {self.transfer_s * 1e6:.3f})"
        )


def _check(op: str, algorithm: str, ranks: int, nbytes: float, hw: HardwareSpec, lnc: int) -> None:
    """Validate the arguments; every error names the argument and the allowed values."""
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}; got {op!r}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}; got {algorithm!r}")
    if algorithm == "oneshot" and op != "all_reduce":
        raise ValueError(
            f"algorithm 'oneshot' (single-step mesh) is an all_reduce algorithm; for {op} use 'mesh' "
            "(also one hop) or 'ring'"
        )
    if lnc not in (1, 2) or (lnc == 2 and hw.name == "trn1"):
        raise ValueError(f"lnc must be 1 or 2 (2 only on trn2/trn3, [LNC]); got lnc={lnc!r} on {hw.name}")
    max_ranks = hw.physical_cores_per_chip // lnc
    if isinstance(ranks, bool) or not isinstance(ranks, int) or not 1 <= ranks <= max_ranks:
        raise ValueError(
            f"ranks must be an integer in 1..{max_ranks} (logical cores of one {hw.name} chip at lnc={lnc}); "
            f"got ranks={ranks!r}"
        )
    if (
        isinstance(nbytes, bool)
        or not isinstance(nbytes, int | float)
        or not math.isfinite(nbytes)
        or nbytes < 0
    ):
        raise ValueError(f"nbytes must be a finite number >= 0 (bytes of the message); got nbytes={nbytes!r}")


def hops(op: str, algorithm: str, ranks: int) -> int:
    """Dependent steps of ``algorithm`` for ``op`` across ``ranks`` ranks (table in the module docstring)."""
    if ranks == 1:
        return 0
    n = ranks
    table = {
        ("all_reduce", "ring"): 2 * (n - 1),
        ("all_gather", "ring"): n - 1,
        ("reduce_scatter", "ring"): n - 1,
        ("all_reduce", "mesh"): 2,
        ("all_gather", "mesh"): 1,
        ("reduce_scatter", "mesh"): 1,
        ("all_reduce", "oneshot"): 1,
    }
    if (op, algorithm) not in table:
        raise ValueError(f"no hop count for op={op!r} with algorithm={algorithm!r}")
    return table[(op, algorithm)]


def _phases(op: str, algorithm: str, ranks: int, nbytes: float) -> list[tuple[str, float]]:
    """(kind, bytes each rank moves) per phase; kind 'copy' or 'reduce'."""
    n, chunk = ranks, nbytes / ranks
    if n == 1:
        return []
    if (
        algorithm == "oneshot"
    ):  # every rank broadcasts its whole buffer, then reduces the N-1 copies it received
        return [("copy", (n - 1) * nbytes), ("reduce", (n - 1) * nbytes)]
    rs, ag = ("reduce", (n - 1) * chunk), ("copy", (n - 1) * chunk)
    return {"all_reduce": [rs, ag], "reduce_scatter": [rs], "all_gather": [ag]}[op]


def _rates(hw: HardwareSpec, lnc: int) -> dict[str, float]:
    """Bytes/s one rank moves in a copy and in a reduce phase (module docstring; derived, not fitted)."""
    dma = hw.dma_engines_per_core * hw.dma_gbs_per_engine * 1e9 * lnc  # the rank's lnc cores ([DMA-BW])
    hbm = hw.hbm_bandwidth("core") * lnc  # its share of the chip's HBM
    return {"copy": min(dma, hbm / 2), "reduce": min(dma * hw.cc_reduce_dma_fraction, hbm / 3)}


def collective_time(
    op: str,
    nbytes: float,
    ranks: int = 4,
    target: str | HardwareSpec = "trn2",
    *,
    algorithm: str = DEFAULT_ALGORITHM,
    lnc: int | None = None,
    launch_us: float | None = None,
    hop_us: float | None = None,
) -> CollectiveEstimate:
    """Estimated time of one collective across ``ranks`` ranks of one chip.

    Args:
        op: 'all_reduce', 'all_gather' or 'reduce_scatter'.
        nbytes: message bytes B: all-reduce input (= output); all-gather OUTPUT (N chunks);
            reduce-scatter INPUT.
        ranks: ranks taking part (TP degree), 1..logical cores per chip at ``lnc``; 1 costs nothing.
        target: 'trn1', 'trn2', 'trn3' or a spec.
        algorithm: 'ring', 'mesh' (default) or 'oneshot' (all-reduce only).
        lnc: physical cores per rank (default: the target's LNC, 2 on trn2/trn3, 1 on trn1).
        launch_us, hop_us: override the fitted launch and the cited hop latency (sensitivity studies).
    Returns:
        A :class:`CollectiveEstimate` (``kind == 'estimate'``).
    """
    hw = get_hardware(target) if isinstance(target, str) else target
    lnc = hw.lnc if lnc is None else lnc
    _check(op, algorithm, ranks, nbytes, hw, lnc)
    launch = LAUNCH_US if launch_us is None else launch_us
    hop = HOP_US if hop_us is None else hop_us
    for name, value in (("launch_us", launch), ("hop_us", hop)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0; got {name}={value!r}")
    n_hops = hops(op, algorithm, ranks)
    phases = _phases(op, algorithm, ranks, float(nbytes))
    rates = _rates(hw, lnc)
    transfer = sum(b / rates[kind] for kind, b in phases)
    return CollectiveEstimate(
        op=op,
        algorithm=algorithm,
        target=hw.name,
        ranks=ranks,
        nbytes=float(nbytes),
        hops=n_hops,
        bytes_per_rank=sum(b for _, b in phases),
        launch_s=0.0 if ranks == 1 else launch * 1e-6,
        hop_s=n_hops * hop * 1e-6,
        transfer_s=transfer,
    )


def all_reduce_time(
    nbytes: float, ranks: int = 4, target: str | HardwareSpec = "trn2", **kw
) -> CollectiveEstimate:
    """:func:`collective_time` for an all-reduce of ``nbytes`` (input = output)."""
    return collective_time("all_reduce", nbytes, ranks, target, **kw)


def all_gather_time(
    nbytes: float, ranks: int = 4, target: str | HardwareSpec = "trn2", **kw
) -> CollectiveEstimate:
    """:func:`collective_time` for an all-gather whose OUTPUT is ``nbytes`` (each rank gives 1/ranks)."""
    return collective_time("all_gather", nbytes, ranks, target, **kw)


def reduce_scatter_time(
    nbytes: float, ranks: int = 4, target: str | HardwareSpec = "trn2", **kw
) -> CollectiveEstimate:
    """:func:`collective_time` for a reduce-scatter whose INPUT is ``nbytes`` (each rank keeps 1/ranks)."""
    return collective_time("reduce_scatter", nbytes, ranks, target, **kw)


# ---- the deployment's per-token floor --------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeCollectives:
    """Collectives of one decode step: ``count`` identical all-reduces of ``per_op`` (an ESTIMATE)."""

    count: int
    per_op: CollectiveEstimate
    kind: str = "estimate"

    @property
    def total_s(self) -> float:
        return self.count * self.per_op.total_s


def decode_collectives(
    tokens: int = 1,
    *,
    hidden: int = 2048,
    layers: int = 48,
    allreduces_per_layer: int = 2,
    tp: int = 4,
    dtype_bytes: int = 2,
    target: str | HardwareSpec = "trn2",
    algorithm: str = DEFAULT_ALGORITHM,
) -> DecodeCollectives:
    """All-reduces of one decode step of the TP deployment: ``layers × allreduces_per_layer`` of
    [tokens, hidden].

    Defaults: Qwen3-30B-A3B ([QWEN3-CONFIG]: hidden 2048, 48 layers) in the contest's deployment,
    TP=4 × LNC=2, one all-reduce after attention and one after the MoE of every layer ([MEGA-CC]), bf16:
    96 all-reduces of 4 KiB per token at batch 1. ``tp == 1`` has no collectives.
    """
    for name, value in (
        ("tokens", tokens),
        ("hidden", hidden),
        ("layers", layers),
        ("allreduces_per_layer", allreduces_per_layer),
        ("tp", tp),
        ("dtype_bytes", dtype_bytes),
    ):
        low = 0 if name == "allreduces_per_layer" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {name}={value!r}")
    hw = get_hardware(target) if isinstance(target, str) else target
    if tp > hw.logical_cores_per_chip:
        raise ValueError(
            f"tp must be <= {hw.logical_cores_per_chip} (logical cores of one {hw.name} chip; this model "
            f"covers one chip); got tp={tp}"
        )
    per_op = collective_time("all_reduce", tokens * hidden * dtype_bytes, tp, hw, algorithm=algorithm)
    return DecodeCollectives(count=layers * allreduces_per_layer if tp > 1 else 0, per_op=per_op)


# ---- published points, fit and validation ----------------------------------------------------------------


QUANTITIES = ("critical_path", "cc_core_active", "in_kernel")  # what a published point measures (docstring)


@dataclass(frozen=True)
class CollectivePoint:
    """A published per-collective time on one chip (microseconds) and how it is used here."""

    key: str
    target: str
    op: str
    ranks: int
    nbytes: int
    published_us: float
    fitted: bool
    source: str
    note: str
    quantity: str = "critical_path"  # one of QUANTITIES: only critical_path points are compared


PUBLISHED: tuple[CollectivePoint, ...] = (
    CollectivePoint(
        "trn2 decode all-reduce",
        "trn2",
        "all_reduce",
        4,
        4096,
        12.0,
        True,
        "[MEGA-CC] docs/winning_strategy.md (profiler breakdown: ~12 us x 48 per all-reduce kind)",
        "[1, 2048] bf16, TP=4 x LNC=2, XLA all-reduces between NKI kernels; '~12 us' (rounded)",
    ),
    CollectivePoint(
        "trn3 XLA TKG MoE all-reduce",
        "trn3",
        "all_reduce",
        4,
        4096,
        9.15,
        False,
        "[MEGA-CC] tests/nxdi_moe.md §10.7 (neuron-profile cc_ops of the NxDI baseline TKG graph)",
        "one MoE all-reduce, Mesh, replica group [0, 1, 2, 3], 4096 bytes bf16; its duration on the CC "
        "cores, overlapped with the next layer (--enable-ccop-compute-overlap)",
        "cc_core_active",
    ),
    CollectivePoint(
        "trn3 XLA TKG, whole-model CC active per all-reduce",
        "trn3",
        "all_reduce",
        4,
        4096,
        0.0586 * 13240.0 / 98,
        False,
        "[MEGA-CC] tests/nxdi_moe.md §10 (total_time 13.24 ms, 98 bf16 AllReduces + 1 barrier, "
        "cc_op_active_time_percent 5.86 %)",
        "derived: CC-op active time of the step / 98 all-reduces (the barrier counted as none)",
        "cc_core_active",
    ),
    CollectivePoint(
        "trn3 XLA+NKI-MoE layer, per all-reduce",
        "trn3",
        "all_reduce",
        4,
        4096,
        13.45 / 2,
        False,
        "[MEGA-CC] megakernels/qwen3_moe/README.md (CC ops 13.45 us per layer, Neuron Explorer)",
        "derived: the per-layer CC-op time / 2 all-reduces per layer (profiler CC activity)",
        "cc_core_active",
    ),
    CollectivePoint(
        "trn3 megakernel layer, per all-reduce",
        "trn3",
        "all_reduce",
        4,
        4096,
        27.77 / 2,
        False,
        "[MEGA-CC] megakernels/qwen3_moe/README.md (CC ops 27.77 us per layer)",
        "derived: per layer / 2; nki.collectives all-reduces issued inside the NKI megakernel, SBUF to "
        "SBUF, the MoE's followed by an LNC gather: a different operation and path",
        "in_kernel",
    ),
)


def fit_launch_us(hop_us: float = HOP_US) -> float:
    """LAUNCH_US that reproduces the fitted published point(s) exactly (one point: a closed form)."""
    fitted = [p for p in PUBLISHED if p.fitted]
    rest = [
        collective_time(p.op, p.nbytes, p.ranks, p.target, launch_us=0.0, hop_us=hop_us).total_s * 1e6
        for p in fitted
    ]
    return sum(p.published_us - r for p, r in zip(fitted, rest, strict=True)) / len(fitted)


def cc_core_bounds(
    op: str, nbytes: float, ranks: int = 4, target: str | HardwareSpec = "trn2", **kw
) -> tuple[float, float]:
    """(low, high) µs the CC-core duration of an overlapped collective must lie in if the model holds.

    Low: the algorithm's dependent hops and its bytes (what the CC cores must do whatever the launch);
    high: the critical-path estimate (launch included). An ESTIMATE of a bracket, not a prediction: the
    launch's split between the issuing side and the CC cores is not published.
    """
    est = collective_time(op, nbytes, ranks, target, **kw)
    return (est.hop_s + est.transfer_s) * 1e6, est.total_us


def validation_table(algorithm: str = DEFAULT_ALGORITHM) -> list[dict]:
    """One row per published point: estimate, published, error (= estimate / published − 1), fitted flag,
    the quantity it measures, whether it is compared with the estimate (``critical_path`` points) and, for
    ``cc_core_active`` points, the :func:`cc_core_bounds` bracket and whether the point lies in it."""
    rows = []
    for p in PUBLISHED:
        est = collective_time(p.op, p.nbytes, p.ranks, p.target, algorithm=algorithm)
        row = {
            "key": p.key,
            "target": p.target,
            "published_us": p.published_us,
            "estimate_us": est.total_us,
            "error": est.total_us / p.published_us - 1,
            "fitted": p.fitted,
            "source": p.source,
            "quantity": p.quantity,
            "compared": p.quantity == "critical_path",
        }
        if p.quantity == "cc_core_active":
            lo, hi = cc_core_bounds(p.op, p.nbytes, p.ranks, p.target, algorithm=algorithm)
            row.update(bounds_us=(lo, hi), within_bounds=lo <= p.published_us <= hi)
        rows.append(row)
    return rows
