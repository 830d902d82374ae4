"""Per-token time budget of a Qwen3-MoE model: each op's launches per step × its best estimate, or its floor.

A decode step (1 new token attending ``context`` positions) or a prefill of S tokens is a list of launches,
derived from the config: per layer the input RMSNorm, the q, k, v projections, the q/k norms, RoPE,
attention, the o projection, the fused residual add + RMSNorm, the router and the experts; per step the
embedding row, the final RMSNorm and the LM head (on the last position only, as generation runs it). For
Qwen3-30B-A3B that is 97 RMSNorms over [T, 2048] per step (48 input + 48 fused + 1 final). Each launch's
cost (MACs, HBM bytes) comes from the op's ``nki_moe.reference`` cost function, so the launches' MACs and
weight bytes add up to ``nki_moe.model.counts`` (tested).

A line's time is the best ESTIMATE (nki_moe cost model) among the kernel versions estimated at exactly that
launch's shape — from a notebook's sweep (:func:`estimates_from_sweep`, :func:`estimate`) or the results
JSONs the notebooks record (:func:`recorded_estimates`). An op without a kernel yet, or a shape no kernel
was estimated at, shows its roofline floor on the rank's cores instead, labelled ``floor``: a lower bound,
not an estimate; those lines are what is still missing.

Deployments — every number says which one it is for:
    SINGLE_LNC2  one LNC=2 launch (2 physical cores) runs the whole model: every op at full size.
    TP4_LNC2     the competition's deployment: 4 tensor-parallel ranks, each an LNC=2 launch (together the
                 chip's 8 cores). Times are per rank. Assumed Megatron-style split (derived, not measured):
                 q/k/v by heads, o by its input rows, the LM head by vocabulary columns, attention by heads,
                 experts by their intermediate dim (I/4); norms, router and embedding replicated. The two
                 all-reduces per layer are not in the budget.
A step's floor is notebook 00's: the step's HBM bytes (``counts.decode_bytes``) streamed at the bandwidth of
all the deployment's cores (``roofline.memory_time``; TP4_LNC2: the chip, 2.12 ms per decode token on
Trn2; SINGLE_LNC2: one logical core, 4× that). A prefill's floor is its roofline time (compute or bytes).
A line's floor is the roofline time of its cost (weights and activations) on one rank's two cores.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nki_moe.ladder import TARGETS, Ladder, Sweep
from nki_moe.model import counts
from nki_moe.model.config import ModelConfig, get_config
from nki_moe.perf.hardware import get_hardware
from nki_moe.perf.roofline import decode_step_floor, memory_time, roofline_time
from nki_moe.reference import (
    OpCost,
    add_rms_norm_cost,
    attention_core_cost,
    embed_cost,
    linear_cost,
    lm_head_cost,
    moe_combine_cost,
    moe_experts_cost,
    rms_norm_cost,
    rope_cost,
    router_cost,
)

__all__ = [
    "Deployment",
    "SINGLE_LNC2",
    "TP4_LNC2",
    "DEPLOYMENTS",
    "Launch",
    "Estimate",
    "Line",
    "Budget",
    "launches",
    "shapes",
    "estimates_from_sweep",
    "estimate",
    "recorded_estimates",
    "decode_budget",
    "prefill_budget",
    "step_floor_us",
    "notebook_lines",
    "results_entry",
]

DECODE_CONTEXT = 640  # notebook 00's decode context: the competition's sequence length


@dataclass(frozen=True)
class Deployment:
    """How the model is launched: ``tp`` tensor-parallel ranks, each one LNC=2 launch (a logical core)."""

    key: str  # short name for tables and results keys
    name: str
    tp: int
    floor_scope: str  # the cores of all ranks together, as a nki_moe.perf.hardware scope

    def share(self, n: int) -> int:
        """One rank's share of ``n`` heads, columns or rows (the largest one when ``tp`` does not divide)."""
        return -(-n // self.tp)


SINGLE_LNC2 = Deployment(
    "lnc2", "one LNC=2 launch (2 physical cores) runs the whole model", 1, "logical_core"
)
TP4_LNC2 = Deployment("tp4_lnc2", "TP=4 x LNC=2 (the competition's deployment; times per rank)", 4, "chip")
DEPLOYMENTS = (SINGLE_LNC2, TP4_LNC2)


@dataclass(frozen=True)
class Launch:
    """One op of the model, launched ``count`` times per step on each rank.

    ``kernel`` is the registry op (``nki_moe.ops``) whose kernels compute it, None while it has none;
    ``shape`` holds that op's shape arguments for one launch (what an estimate is looked up by).
    """

    op: str
    count: int
    cost: OpCost  # one launch on one rank
    dims: str  # the launch's operand shapes, for tables
    kernel: str | None = None
    shape: Mapping[str, int] | None = None


@dataclass(frozen=True)
class Estimate:
    """A cost-model ESTIMATE of registry op ``op`` at ``shape`` on ``target`` (the best version tried)."""

    op: str
    shape: Mapping[str, int]
    target: str
    us: float
    version: str
    lnc: int

    def as_dict(self) -> dict:
        return dict(
            op=self.op,
            shape=dict(self.shape),
            target=self.target,
            us=self.us,
            version=self.version,
            lnc=self.lnc,
        )

    @classmethod
    def from_dict(cls, d: Mapping) -> Estimate:
        """An estimate from its :meth:`as_dict` form (a results JSON's ``budget.estimates`` entry)."""
        return cls(d["op"], dict(d["shape"]), d["target"], float(d["us"]), d["version"], int(d["lnc"]))


@dataclass(frozen=True)
class Line:
    """One launch of the budget with its time: an estimate, or (``kind == "floor"``) its roofline floor."""

    launch: Launch
    us_each: float
    floor_us_each: float  # the launch's roofline floor on one rank's cores (LNC=2)
    kind: str  # "estimate" | "floor"
    source: str  # which kernel version the estimate is of, or why the line is a floor

    @property
    def total_us(self) -> float:
        return self.launch.count * self.us_each

    @property
    def floor_total_us(self) -> float:
        return self.launch.count * self.floor_us_each


@dataclass(frozen=True)
class Budget:
    """The lines of one step (decode or prefill) on one target and deployment, and the step's floor."""

    phase: str  # "decode" | "prefill"
    tokens: int  # new tokens of the step
    context: int  # attended positions of the last token
    target: str
    deployment: Deployment
    lines: tuple[Line, ...]
    floor_us: float  # the whole step's floor on all the deployment's cores (notebook 00's for decode)

    @property
    def label(self) -> str:
        what = (
            f"decode step (context {self.context})" if self.phase == "decode" else f"prefill of {self.tokens}"
        )
        return f"{what} on {self.target}, {self.deployment.name}"

    @property
    def total_us(self) -> float:
        return sum(line.total_us for line in self.lines)

    @property
    def estimated_us(self) -> float:
        """Time of the lines with a kernel estimate."""
        return sum(line.total_us for line in self.lines if line.kind == "estimate")

    @property
    def missing_us(self) -> float:
        """Floor time of the lines still without an estimate (a lower bound on what they will cost)."""
        return sum(line.total_us for line in self.lines if line.kind == "floor")

    @property
    def missing(self) -> list[str]:
        return [line.launch.op for line in self.lines if line.kind == "floor"]

    @property
    def n_launches(self) -> int:
        """Launches per step of these lines."""
        return sum(line.launch.count for line in self.lines)

    def share_of_floor(self) -> float:
        """These lines' time over the whole step's floor."""
        return self.total_us / self.floor_us

    def only(self, *kernels: str | None) -> Budget:
        """The lines computed by the registry ops ``kernels`` (a notebook's line of the budget)."""
        unknown = set(kernels) - {line.launch.kernel for line in self.lines}
        if unknown:
            raise KeyError(f"no line of the budget uses kernel(s) {sorted(map(str, unknown))}")
        lines = tuple(line for line in self.lines if line.launch.kernel in kernels)
        return Budget(
            self.phase, self.tokens, self.context, self.target, self.deployment, lines, self.floor_us
        )

    def summary(self) -> str:
        """One sentence: launches, time (estimate and floor parts) and share of the step's floor."""
        ops = ", ".join(dict.fromkeys(line.launch.op for line in self.lines))
        missing = f" + {self.missing_us:,.1f} µs floor of lines not estimated" if self.missing_us else ""
        return (
            f"{ops}: {self.n_launches} launches, {self.estimated_us:,.1f} µs estimated{missing} = "
            f"{100 * self.share_of_floor():.1f} % of the step's {self.floor_us:,.1f} µs floor "
            f"({self.label})"
        )

    def table(self) -> str:
        """The lines as a text table, with the totals and the step's floor."""
        from nki_moe.tables import format_table

        rows = [
            (
                ln.launch.op,
                ln.launch.dims,
                ln.launch.count,
                ln.us_each,
                ln.kind,
                ln.total_us,
                ln.floor_total_us,
                ln.source,
            )
            for ln in self.lines
        ]
        rows.append(
            (
                "total",
                "",
                self.n_launches,
                None,
                "",
                self.total_us,
                sum(ln.floor_total_us for ln in self.lines),
                "",
            )
        )
        headers = ["op", "shape per launch", "launches", "µs each", "kind", "µs total", "floor µs", "source"]
        title = (
            f"{self.label}: estimates (nki_moe cost model) and floors; the whole step's floor is "
            f"{self.floor_us:,.1f} µs"
        )
        return format_table(rows, headers, floatfmt=",.2f", title=title)

    def as_dict(self) -> dict:
        """The budget as plain values (for a results JSON)."""
        return dict(
            phase=self.phase,
            tokens=self.tokens,
            context=self.context,
            target=self.target,
            deployment=self.deployment.name,
            estimated_by="nki_moe cost model (estimates; floor lines are lower bounds)",
            lines=[
                dict(
                    op=ln.launch.op,
                    dims=ln.launch.dims,
                    count=ln.launch.count,
                    kernel=ln.launch.kernel,
                    us_each=ln.us_each,
                    total_us=ln.total_us,
                    floor_us_each=ln.floor_us_each,
                    kind=ln.kind,
                    source=ln.source,
                )
                for ln in self.lines
            ],
            total_us=self.total_us,
            estimated_us=self.estimated_us,
            missing_us=self.missing_us,
            missing=self.missing,
            step_floor_us=self.floor_us,
            share_of_floor=self.share_of_floor(),
        )


# ---- the model's launches ----------------------------------------------------------------------------------
def launches(
    cfg: ModelConfig, tokens: int, cached: int, deployment: Deployment = SINGLE_LNC2
) -> tuple[Launch, ...]:
    """The launches of one forward step on one rank: ``tokens`` new tokens after ``cached`` positions.

    Args:
        cfg: model config (every layer MoE).
        tokens: T >= 1 new tokens (1 for a decode step, S for a prefill).
        cached: P >= 0 positions already in the KV cache.
        deployment: how the ops are split between ranks (see the module docstring).
    Returns:
        Per-layer launches (count L) then per-step ones (count 1); the final norm and LM head on 1 position.
    """
    if tokens < 1 or cached < 0:
        raise ValueError(f"need tokens >= 1 and cached >= 0, got tokens={tokens}, cached={cached}")
    T, L, H, d = tokens, cfg.num_hidden_layers, cfg.hidden_size, cfg.head_dim
    n_q, n_kv = deployment.share(cfg.num_attention_heads), deployment.share(cfg.num_key_value_heads)
    inter, vocab = deployment.share(cfg.moe_intermediate_size), deployment.share(cfg.vocab_size)
    E, k = cfg.num_experts, cfg.num_experts_per_tok
    # uniform routing: k experts at T = 1, E·(1 − (1 − k/E)^T) in a prefill (counts.expected_distinct_experts)
    touched = counts.expected_distinct_experts(cfg, T)

    def norm(op, count, rows, width):
        return Launch(
            op, count, rms_norm_cost(rows, width), f"[{rows}, {width}]", "rmsnorm", dict(T=rows, H=width)
        )

    def proj(op, count, rows, K, N):
        return Launch(
            op,
            count,
            linear_cost(rows, K, N),
            f"[{rows}, {K}] x [{K}, {N}]",
            "matmul",
            dict(T=rows, K=K, N=N),
        )

    return (
        norm("input_norm", L, T, H),
        proj("q_proj", L, T, H, n_q * d),
        proj("k_proj", L, T, H, n_kv * d),
        proj("v_proj", L, T, H, n_kv * d),
        norm("q_norm", L, T * n_q, d),
        norm("k_norm", L, T * n_kv, d),
        Launch("rope", L, rope_cost(T, n_q + n_kv, d), f"[{T}, {n_q + n_kv}, {d}]"),
        Launch(
            "attention",
            L,
            attention_core_cost(T, cached, n_q, n_kv, d),
            f"q [{T}, {n_q}, {d}], KV [{cached + T}, {n_kv}, {d}]",
            # nki_moe.kernels.attention (its q/k norms and RoPE inside; their lines stay floors)
            "attention_decode" if T == 1 else "attention_prefill" if cached == 0 else None,
            dict(L=cached, n_q=n_q, n_kv=n_kv) if T == 1 else dict(T=T, n_q=n_q, n_kv=n_kv),
        ),
        proj("o_proj", L, T, n_q * d, H),
        Launch(
            "post_norm", L, add_rms_norm_cost(T, H), f"[{T}, {H}] + residual", "add_rmsnorm", dict(T=T, H=H)
        ),
        Launch(
            "router",
            L,
            router_cost(T, H, E),
            f"[{T}, {H}] x [{H}, {E}], top-{k}",
            "router",
            dict(T=T, H=H, E=E),
        ),
        Launch(
            "experts",
            L,
            moe_experts_cost(T, H, inter, k, touched) + moe_combine_cost(T, H, k),
            f"[{T}, {H}] x {touched:.3g} experts of [{H}, {inter}]x3",
            "moe_decode",
            dict(T=T, tp=deployment.tp),
        ),
        Launch("embed", 1, embed_cost(T, H), f"{T} rows of [{cfg.vocab_size}, {H}]"),
        norm("final_norm", 1, 1, H),
        Launch(
            "lm_head",
            1,
            lm_head_cost(1, H, vocab),
            f"[1, {H}] x [{H}, {vocab}]",
            "matmul",
            # the kernel runs the vocabulary shard padded to whole 128-column tiles (TP=4: 37984 -> 38016
            # columns, the last 32 zero); the ideal cost stays the unpadded one
            dict(T=1, K=H, N=-(-vocab // 128) * 128),
        ),
    )


def _full_shape(kernel: str, shape: Mapping[str, int]) -> dict[str, int]:
    """``shape`` with the registry op's default shape arguments filled in (the key estimates match on)."""
    from nki_moe import ops

    bound = inspect.signature(ops.get(kernel).cost).bind(**shape)
    bound.apply_defaults()
    return dict(bound.arguments)


def _key(kernel: str, shape: Mapping[str, int], target: str) -> tuple:
    return kernel, tuple(sorted(_full_shape(kernel, shape).items())), target


def _steps(cfg: ModelConfig, prefill: int, context: int, deployment: Deployment) -> list[tuple[Launch, ...]]:
    """The launches of a decode step at ``context`` and of a prefill of ``prefill`` tokens."""
    return [launches(cfg, 1, context - 1, deployment), launches(cfg, prefill, 0, deployment)]


def shapes(
    kernel: str,
    prefill: int,
    context: int = DECODE_CONTEXT,
    cfg: ModelConfig | None = None,
    deployments: Sequence[Deployment] = DEPLOYMENTS,
) -> list[dict[str, int]]:
    """Every per-launch shape at which the budget looks up registry op ``kernel`` (decode and prefill).

    What a notebook estimates so that its op's lines of the budget are estimates, not floors.
    """
    cfg = cfg or get_config("qwen3-30b-a3b")
    found = {
        tuple(sorted(la.shape.items())): dict(la.shape)
        for dep in deployments
        for step in _steps(cfg, prefill, context, dep)
        for la in step
        if la.kernel == kernel
    }
    if not found:
        raise KeyError(f"no launch of the budget uses kernel {kernel!r}")
    return [found[key] for key in sorted(found)]


# ---- estimates ---------------------------------------------------------------------------------------------
def estimates_from_sweep(
    op: Ladder, sweep: Sweep, versions: Sequence[str] | None = None, **fixed
) -> list[Estimate]:
    """The fastest of ``versions`` (default: every version swept) at each (swept size, target) of ``sweep``.

    ``fixed``: the shape arguments the sweep held constant (``N=4096``): each estimate names its full shape.
    """
    best: dict[tuple, dict] = {}
    for r in sweep.rows:
        if versions is not None and r["version"] not in versions:
            continue
        where = (r[sweep.key], r["target"])
        if where not in best or r["latency_us"] < best[where]["latency_us"]:
            best[where] = r
    return [
        Estimate(
            op.name,
            _full_shape(op.name, {sweep.key: size, **fixed}),
            target,
            r["latency_us"],
            r["version"],
            op.version(r["version"]).lnc,
        )
        for (size, target), r in best.items()
    ]


def estimate(
    op: Ladder,
    at: Iterable[Mapping[str, int]],
    versions: Sequence[str] | None = None,
    targets: Sequence[str] = TARGETS,
    known: Iterable[Estimate] = (),
) -> list[Estimate]:
    """Estimate ``op`` at each shape of ``at`` that ``known`` does not already cover.

    One emulator run per version and shape, its trace costed on every target; the best version per shape.
    """
    have = {_key(e.op, e.shape, "") for e in known}
    out = []
    for shape in at:
        if _key(op.name, shape, "") in have:
            continue
        rest = {k: v for k, v in shape.items() if k != "T"}
        out += estimates_from_sweep(
            op, op.sweep(versions, targets, T=(shape["T"],), **rest), versions, **rest
        )
    return out


def recorded_estimates(folder: Path | None = None) -> list[Estimate]:
    """The estimates the notebooks recorded under ``budget.estimates`` in ``folder``'s results JSONs.

    Default folder: the current run's results (``nki_moe.paths.out_dir("results")``).
    """
    if folder is None:
        from nki_moe.paths import out_dir

        folder = out_dir("results")
    found = []
    for path in sorted(Path(folder).glob("*.json")):
        for i, d in enumerate(json.loads(path.read_text()).get("budget", {}).get("estimates", [])):
            try:
                found.append(Estimate.from_dict(d))
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(
                    f"{path.name}: budget.estimates[{i}] is not an estimate ({err!r}): {d}"
                ) from None
    return found


# ---- budgets -----------------------------------------------------------------------------------------------
def step_floor_us(
    cfg: ModelConfig, target: str, phase: str, tokens: int, deployment: Deployment = TP4_LNC2
) -> float:
    """Floor of a whole step on all the deployment's cores, µs.

    ``phase == "decode"``: notebook 00's HBM floor of one token attending ``tokens`` positions,
    ``memory_time(sum(counts.decode_bytes(cfg, tokens)))`` at the deployment's scope, plus, when the
    deployment has ``tp > 1`` ranks, the step's all-reduces (two per layer of one token's [1, hidden] bf16,
    :func:`nki_moe.perf.roofline.decode_step_floor`; an estimate of the collective model, 1.15 ms of the
    Trn2 TP=4 step). ``"prefill"``: the roofline time of a prefill of ``tokens`` tokens (MACs with
    last-token logits, ``counts.prefill_bytes``); its all-reduces are not included.
    """
    hw = get_hardware(target)
    if phase not in ("decode", "prefill"):
        raise ValueError(f"phase must be 'decode' or 'prefill', got {phase!r}")
    if phase == "decode":
        nbytes = sum(counts.decode_bytes(cfg, tokens).values())
        if deployment.tp == 1:
            return 1e6 * memory_time(nbytes, hw, deployment.floor_scope)
        floor = decode_step_floor(
            nbytes,
            hw,
            tokens=1,
            hidden=cfg.hidden_size,
            layers=cfg.num_hidden_layers,
            tp=deployment.tp,
            scope=deployment.floor_scope,
        )
        return 1e6 * floor.total_s
    flops = 2 * counts.prefill_macs(cfg, tokens, last_token_logits_only=True)
    nbytes = sum(counts.prefill_bytes(cfg, tokens).values())
    return 1e6 * roofline_time(flops, nbytes, hw, "bf16", deployment.floor_scope)


def _budget(phase, step, tokens, context, cfg, estimates, target, deployment) -> Budget:
    """The lines of ``step``: each launch's best estimate at its shape on ``target``, else its floor."""
    hw = get_hardware(target)
    index: dict[tuple, Estimate] = {}
    for e in estimates:  # the best estimate per (op, shape, target)
        key = _key(e.op, e.shape, e.target)
        if key not in index or e.us < index[key].us:
            index[key] = e
    lines = []
    for la in step:
        floor = 1e6 * roofline_time(2 * la.cost.macs, la.cost.bytes, hw, "bf16", "logical_core")
        found = index.get(_key(la.kernel, la.shape, target)) if la.kernel else None
        if found is not None:
            lines.append(
                Line(la, found.us, floor, "estimate", f"{la.kernel} {found.version} (LNC={found.lnc})")
            )
        else:
            why = "no kernel yet" if la.kernel is None else f"{la.kernel}: not estimated at this shape"
            lines.append(Line(la, floor, floor, "floor", why))
    return Budget(
        phase,
        tokens,
        context,
        target,
        deployment,
        tuple(lines),
        step_floor_us(cfg, target, phase, context if phase == "decode" else tokens, deployment),
    )


def decode_budget(
    estimates: Iterable[Estimate],
    target: str = "trn2",
    deployment: Deployment = TP4_LNC2,
    context: int = DECODE_CONTEXT,
    cfg: ModelConfig | None = None,
) -> Budget:
    """The budget of one decode token attending ``context`` positions (itself included)."""
    cfg = cfg or get_config("qwen3-30b-a3b")
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    step = launches(cfg, 1, context - 1, deployment)
    return _budget("decode", step, 1, context, cfg, list(estimates), target, deployment)


def prefill_budget(
    estimates: Iterable[Estimate],
    tokens: int,
    target: str = "trn2",
    deployment: Deployment = TP4_LNC2,
    cfg: ModelConfig | None = None,
) -> Budget:
    """The budget of a prefill of ``tokens`` tokens (empty cache, last-position logits)."""
    cfg = cfg or get_config("qwen3-30b-a3b")
    step = launches(cfg, tokens, 0, deployment)
    return _budget("prefill", step, tokens, tokens, cfg, list(estimates), target, deployment)


def notebook_lines(
    kernels: Sequence[str],
    estimates: Iterable[Estimate],
    target: str,
    prefill: int,
    context: int = DECODE_CONTEXT,
) -> dict[str, Budget]:
    """A kernel notebook's line of the budget: its kernels' lines of a decode step and of a prefill.

    Returns:
        ``{"decode_<deployment>" | "prefill<S>_<deployment>": Budget}`` for every deployment.
    """
    estimates = list(estimates)
    out = {}
    for dep in DEPLOYMENTS:
        out[f"decode_{dep.key}"] = decode_budget(estimates, target, dep, context).only(*kernels)
        out[f"prefill{prefill}_{dep.key}"] = prefill_budget(estimates, prefill, target, dep).only(*kernels)
    return out


def results_entry(estimates: Iterable[Estimate], lines: Mapping[str, Budget]) -> dict:
    """The ``budget`` entry of a notebook's results JSON: its estimates (every target) and its lines."""
    return {"estimates": [e.as_dict() for e in estimates], **{k: b.as_dict() for k, b in lines.items()}}
