"""The HTML report of a ``run_all.py`` run: ``<build>/report.html``.

From the top: a summary per op (best version, estimated µs and % of its floor on trn2 and trn3, check
status), the run's notebooks, then per notebook its takeaways (the sentences its Takeaways cells printed),
its figures with captions (what they show, which chip, estimate or published measurement), its Perfetto
traces and, collapsed, every number it recorded. Numbers carry units and 3 significant figures.

A partial run (``--only``, a failure, ``--keep-going``) is merged with the last full run: a notebook that did
not run ok in this run shows the figures, results and executed copy of the last full run, marked stale.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from nki_moe.paths import DEFAULT_BACKEND, DEFAULT_TARGET, NOTEBOOK_STEM, ROOT, variant_dirs

__all__ = ["write_report", "caption", "takeaways", "format_number", "sig3"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 76em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; font-size: 0.92em; }
th { background: #f2f2f2; } td.num { text-align: right; white-space: nowrap; }
.ok { color: #1a7f37; } .failed { color: #cf222e; font-weight: bold; } .stale, .notrun { color: #9a6700; }
.note { color: #555; font-size: 0.9em; } code, .key { font-size: 0.88em; } .key { color: #777; }
figure { margin: 0.5em 0 1.5em; } img { max-width: min(100%, 56em); border: 1px solid #ddd; }
figcaption { font-size: 0.9em; max-width: 60em; } .source { font-weight: bold; }
pre.takeaways { background: #f6f8fa; padding: 0.6em; white-space: pre-wrap; font-size: 0.88em; }
section { border-top: 2px solid #ddd; margin-top: 2em; }
"""

# ---- numbers: 3 significant figures, units from the key ----------------------------------------------------


def sig3(x: float) -> str:
    """``x`` to 3 significant figures without exponent notation: ``6,010``, ``22.2``, ``0.0339``."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    digits = 2 - math.floor(math.log10(abs(x)))
    rounded = round(x, digits)
    if math.floor(math.log10(abs(rounded))) != 2 - digits:  # rounding carried a digit: 9.996 -> 10.0
        digits -= 1
        rounded = round(x, digits)
    return f"{rounded:,.{max(digits, 0)}f}"


def _bytes(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{sig3(n / scale)} {unit}"
    return f"{sig3(n)} B"


# The unit of a number, from the first segment of its key path (leaf first) that matches.
_UNITS: tuple[tuple[re.Pattern, Callable[[float], str]], ...] = (
    (re.compile(r"flop_per_byte|machine_balance"), lambda v: f"{sig3(v)} FLOP/B"),
    (re.compile(r"bytes"), _bytes),
    (re.compile(r"ms_per_token"), lambda v: f"{sig3(v)} ms/token"),
    (re.compile(r"_us$"), lambda v: f"{sig3(v)} µs"),
    (re.compile(r"_ms$"), lambda v: f"{sig3(v)} ms"),
    (re.compile(r"pct"), lambda v: f"{sig3(v)} %"),
    (re.compile(r"_gbps$"), lambda v: f"{sig3(v)} GB/s"),
    (re.compile(r"tokens_per_s$"), lambda v: f"{sig3(v)} tokens/s"),
    (re.compile(r"abs_error|share"), lambda v: f"{sig3(100 * v)} %"),  # fractions
    (re.compile(r"_over_|ladder_steps"), lambda v: f"{sig3(v)}×"),
    (re.compile(r"^params"), lambda v: f"{sig3(v / 1e9)} billion"),
)

_LABELS = {
    "cost_model_in_sample": "cost model, in-sample errors",
    "cost_model_out_of_sample": "cost model, out-of-sample errors",
    "cost_model_ladders": "cost model, speed-up ladders (τ, spread)",
    "params_total": "parameters",
    "params_active": "active parameters per token",
    "kv_cache_bytes_per_token": "KV cache per attended position",
    "decode_weight_bytes": "weight bytes per decode token",
    "decode_context": "decode context T",
    "decode_bytes_at_context": "HBM bytes per decode token at T",
    "decode_flop_per_byte_at_context": "decode arithmetic intensity at T",
    "prefill_flop_per_byte": "prefill arithmetic intensity, tokens S",
    "machine_balance_bf16_chip": "BF16 machine balance of the chip",
    "decode_floor_ms": "decode HBM floor per token (estimate)",
    "decode_floor_alt_ms": "decode HBM floor, other published bandwidth",
    "measured_over_floor": "published measurement ÷ HBM floor",
    "first_place_scores": "1st place, published results re-scored",
    "first_place_e2e_ms_per_token_prompt0": "1st place, end-to-end time per generated token (prompt 0)",
    "cost_model_points": "cost-model calibration points",
    "cost_model_median_abs_error": "cost model, median |error|",
    "cost_model_max_abs_error": "cost model, max |error|",
    "cost_model_median_abs_error_out_of_sample": "cost model, median |error| out of sample",
    "cost_model_known_misses": "cost model, known misses (> 50 %)",
    "final": "final version",
    "final_version": "final version",
    "ladder_steps": "speed-up per ladder step",
    "lnc": "LNC (cores per launch)",
    "latency_us": "latency (est.)",
    "pct_roofline": "% of floor",
    "roofline_us": "floor",
    "floor_us": "floor",
    "no_transfer_us": "with no weight transfer",
    "lm_head_columns": "LM head columns",
    "tie_share_constructed": "share of tokens with constructed ties",
    "check_error_ratio_v3": "v3 3-way error ratio",
}

_FINAL_KEY = re.compile(r"^(?P<target>trn\d)_(?P<axis>T|L)(?P<T>\d+)$")  # Sweep.final: trn2_T640, trn2_L639
_PROJ_KEY = re.compile(r"^(?P<name>.+)_T(?P<T>\d+)_(?P<target>trn\d)$")  # notebook 02: "q_T1_trn2"


def _label(key: str) -> str:
    """Short human label of one key segment."""
    if key in _LABELS:
        return _LABELS[key]
    if m := _FINAL_KEY.match(key):
        return f"{m['target']}, {m['axis']} = {m['T']}"
    if m := _PROJ_KEY.match(key):
        return f"{m['name']}, T = {m['T']}, {m['target']}"
    return key.replace("_", " ")


def format_number(path: tuple[str, ...], value: object) -> str:
    """``value`` (recorded under the key ``path``) with its unit and 3 significant figures.

    The unit comes from the innermost key segment that names one (``_us`` µs, ``_ms`` ms, ``bytes`` kB/MB/GB,
    ``pct`` %, ``_gbps`` GB/s, ``tokens_per_s``, ``abs_error``/``share`` fraction → %, ``_over_`` ×, ...).
    Integers without a unit are exact counts and keep every digit.
    """
    if isinstance(value, list):
        return ", ".join(format_number(path, v) for v in value) or "none"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    for segment in reversed(path):
        for pattern, fmt in _UNITS:
            if pattern.search(segment):
                return fmt(value)
    return f"{value:,}" if isinstance(value, int) else sig3(value)


# ---- captions ----------------------------------------------------------------------------------------------
# Notebook 00's figures (the op figures' captions follow from the op registry, see caption()):
# (where the numbers come from, what the figure shows and for which chip).
_CAPTIONS: dict[str, tuple[str, str]] = {
    "00_roofline": (
        "published specs and counted FLOPs/bytes; no timing",
        "Roofline of one Trn2 chip (left) and one Trn3 chip (right) from the published BF16/FP8 peaks and "
        "HBM bandwidth. Qwen3-30B-A3B decode (T = 640) and four prefill lengths sit at their arithmetic "
        "intensity (FLOP per HBM byte, counted from the model config): all left of the ridge, so HBM-bound.",
    ),
    "00_decode_floor_vs_measured": (
        "published measurements vs estimated floors",
        "Decode time per token at batch 1 on Trn2 and Trn3. Hatched: the HBM floor, bytes per token ÷ the "
        "chip's published HBM bandwidth (an estimate; error bar: its other published bandwidth). Solid: "
        "published measurements (XLA token generation on Trn2 and Trn3, the NKI megakernel on Trn3), each "
        "labelled with its multiple of the floor.",
    ),
    "00_decode_bytes_breakdown": (
        "counted from the model config; chip-independent",
        "HBM bytes one bf16 decode token reads at context T = 640, by op family: experts, attention "
        "projections, LM head, KV cache, router, norms and embedding.",
    ),
    "00_cost_model_calibration": (
        "cost-model estimates vs published measurements",
        "Every published Trn1/Trn2/Trn3 kernel measurement, re-created as an NKI kernel or run as the public "
        "tutorial kernel, and estimated by the cost model: estimate ÷ published on a log scale, with the "
        "±25 % and ±50 % bands. Hollow markers: the four points the two fitted constants use "
        "(calibration.FITS); filled: out of sample.",
    ),
    "00_cost_model_predicted_vs_published": (
        "cost-model estimates vs published measurements, by ladder",
        "Every published Trn1/Trn2/Trn3 kernel measurement against the cost model's estimate, each in its "
        "own unit on log-log axes, with y = x and ±25 %. Filled markers: held out (out of sample); hollow: "
        "the points a fitted constant was fitted on (calibration.FITS); lines join the versions of each "
        "ladder.",
    ),
    # notebook 06: swept over the cached positions L (one decode token), not over tokens T
    "06_attention_decode_sweep": (
        "cost-model estimates, trn2 and trn3",
        "Decode attention of one TP rank (q/k norm + RoPE + KV append + GQA, 8/1 heads), versions v0…v2: "
        "estimated latency (µs, log scale) and achieved TFLOP/s on the op's ideal FLOPs vs cached positions "
        "L, against the floor and roof of each launch's cores; trn2 left, trn3 right.",
    ),
    "06_attention_decode_roofline": (
        "cost-model estimates, trn2 and trn3",
        "Decode attention of one TP rank, versions v0…v2: roofline points at the shortest and longest L, "
        "placed at the op's ideal FLOP/byte (faster is higher), against the roof of each launch's cores.",
    ),
    "06_attention_block_sweep": (
        "cost-model estimates, trn2 and trn3",
        "The fused decode attention block of one TP rank (QKV + norms + RoPE + append + GQA + o_proj), "
        "versions v0…v7: estimated latency and achieved TFLOP/s vs cached positions L, against each "
        "launch's floor and roof (the weights' HBM time dominates the floor); trn2 left, trn3 right.",
    ),
    "06_attention_block_roofline": (
        "cost-model estimates, trn2 and trn3",
        "The fused decode attention block, versions v0…v7: roofline points at the shortest and longest L at "
        "the op's ideal FLOP/byte (faster is higher), against the roof of each launch's cores.",
    ),
    "06_attention_block_prefill_sweep": (
        "cost-model estimates, trn2 and trn3",
        "The fused prefill attention block of one TP rank (QKV + norms + RoPE + K/V write + causal GQA + "
        "o_proj, 8/1 heads, H = 2048), versions v0…v2: estimated latency (µs, log scale) and achieved "
        "TFLOP/s on the op's ideal FLOPs vs prompt tokens T, against the floor and roof of each launch's "
        "cores; trn2 left, trn3 right.",
    ),
    "07_e2e_score": (
        "cost-model estimates + fitted host term; baselines and 1st place: published measurements",
        "Per prompt: e2e latency (left) and score (right) of the assembled kernel model at TP=4 x LNC=2 on "
        "trn2 and trn3, beside the published baselines and the 1st place's trn3 results; legend: score sums.",
    ),
    "07_decode_budget": (
        "cost-model estimates, trn2 and trn3",
        "One decode step at context 640 on one rank by op group, beside its floor: HBM bytes at the chip's "
        "bandwidth + 96 all-reduces (collective model).",
    ),
    "07_sensitivity": (
        "cost-model estimates, trn2 and trn3",
        "Score sum with HBM bandwidth, DMA fixed cost, all-reduce latency and host term each at x0.8 and "
        "x1.2, one at a time (tornado).",
    ),
    "04_moe_decode_design_space": (
        "cost-model estimates (trn2); weight bytes counted from the model config",
        "One rank's MoE decode layer (T = 1) at TP = 1, 2, 4 (LNC = 2 ranks) and 8 (LNC = 1) with bf16 and "
        "fp8 expert weights: the final kernel's estimated time, the layer's MoE all-reduce stacked on it "
        "(collective model), the HBM floor of the rank's cores (black ticks) and each rank's expert weights.",
    ),
}


def caption(stem: str, target: str = DEFAULT_TARGET) -> tuple[str, str]:
    """(source of the numbers, what it shows) of the figure ``stem``, drawn for ``target``.

    Raises:
        KeyError: naming the stem when no caption is known for it.
    """
    from nki_moe.ops import OPS

    if stem in _CAPTIONS:
        return _CAPTIONS[stem]
    for op in OPS.values():
        if stem not in op.figures:
            continue
        versions = f"{op.versions[0].name}…{op.final.name}"
        both = "cost-model estimates, trn2 and trn3"
        if stem == op.figures[0]:  # Ladder.save_figures: (sweep, roofline)
            return both, (
                f"{op.title}, versions {versions}: estimated latency (µs, log scale; dashed: the lowest "
                "roofline floor) and % of the floor (dotted line: 70 %) vs tokens T; trn2 left, trn3 right."
            )
        if op.flops_bytes(T=1)[0] == 0:
            return both, (
                f"{op.title}, versions {versions} at the largest T: achieved share of the HBM roof (MBU) of "
                "the cores each version launches on, one line per chip. The op does no TensorE work, so "
                "bandwidth is its whole roofline."
            )
        return f"cost-model estimates, {target}", (
            f"{op.title} on {target}: every version's roofline point (the launch's cores) at T = 1 (circles) "
            "and the largest T (squares), placed at the op's ideal FLOP/byte, so faster is higher."
        )
    raise KeyError(
        f"figure {stem!r} has no caption: add it to nki_moe.report._CAPTIONS, or register it in an op's "
        "figures (nki_moe.ops)"
    )


# ---- takeaways from the executed notebook ------------------------------------------------------------------


def _text(field: str | list[str]) -> str:
    return "".join(field) if isinstance(field, list) else field


def takeaways(executed: Path) -> tuple[str, list[str]]:
    """(markdown under the ``## Takeaways`` heading, stdout of each code cell below it) of a notebook.

    The cells end at the next markdown heading. Empty when the notebook has no Takeaways heading.
    """
    cells = json.loads(executed.read_text())["cells"]
    markdown, printed, inside = "", [], False
    for cell in cells:
        source = _text(cell["source"])
        if cell["cell_type"] == "markdown" and source.lstrip().startswith("#"):
            if inside:
                break
            heading, _, rest = source.lstrip().partition("\n")
            inside = heading.strip("# ").lower() == "takeaways"
            markdown = rest if inside else ""
        elif inside and cell["cell_type"] == "code":
            out = "".join(
                _text(o["text"])
                for o in cell.get("outputs", [])
                if o["output_type"] == "stream" and o["name"] == "stdout"
            )
            printed += [out.rstrip("\n")] if out.strip() else []
    return markdown.strip(), printed


# ---- what the report shows per notebook --------------------------------------------------------------------
_LEGACY_RUN = {"size": "full", "target": DEFAULT_TARGET, "backend": DEFAULT_BACKEND}


@dataclass
class _Notebook:
    """One notebook as the report shows it: this run's outputs, or the last full run's (stale)."""

    stem: str
    status: str  # "ok" | "failed" | "not run"
    stale: bool  # figures, results and takeaways come from the last full run
    outcome: dict | None  # this run's outcome (None: not in this run)
    figures: list[Path]
    results: dict[str, dict]  # results file name -> its contents
    executed: Path | None  # the executed copy the takeaways and the notebook link come from
    traces: Path  # the folder of its Perfetto traces

    @property
    def run_info(self) -> dict:
        """The run its results record (legacy results without one: a full run at the default target)."""
        return next((r["run"] for r in self.results.values() if "run" in r), _LEGACY_RUN)


def _results_of(stem: str, folder: Path) -> dict[str, dict]:
    """The notebook's results files in ``folder``: those whose run names it (legacy: by number)."""
    number = NOTEBOOK_STEM.match(stem).group(1)
    found = {}
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        owner = data.get("run", {}).get("notebook")
        if owner == stem or (owner is None and path.stem.startswith(f"{number}_")):
            found[path.name] = data
    return found


def _figure_order(png: Path) -> tuple[int, str]:
    """Figures in the order their notebook draws them (captions, then the op registry), others after."""
    from nki_moe.ops import OPS

    known = [*_CAPTIONS, *(stem for op in OPS.values() for stem in op.figures)]
    return (known.index(png.stem) if png.stem in known else len(known), png.stem)


def _notebooks(run: dict) -> list[_Notebook]:
    """Every notebook of the project and of the run, merged with the last full run where it did not run ok."""
    from nki_moe.ops import OPS

    outcomes = {o["notebook"]: o for o in run["outcomes"]}
    fresh = variant_dirs(bool(run.get("smoke")), run.get("target"), run.get("backend") or DEFAULT_BACKEND)
    full = variant_dirs(False)
    stems = {*outcomes, *run.get("skipped", []), *(Path(op.notebook).stem for op in OPS.values())}
    stems |= {p.stem for p in (ROOT / "notebooks").glob("*.py") if NOTEBOOK_STEM.match(p.stem)}
    shown = []
    for stem in sorted(stems):
        outcome = outcomes.get(stem)
        ok = outcome is not None and outcome["status"] == "ok"
        figures, results, build = fresh if ok else full
        executed = Path(outcome["executed"]) if ok else build / "executed" / f"{stem}.ipynb"
        number = NOTEBOOK_STEM.match(stem).group(1)
        shown.append(
            _Notebook(
                stem=stem,
                status=outcome["status"] if outcome else "not run",
                stale=not ok,
                outcome=outcome,
                figures=sorted(figures.glob(f"{number}_*.png"), key=_figure_order),
                results=_results_of(stem, results),
                executed=executed if executed.exists() else None,
                traces=build / "traces",
            )
        )
    return shown


def _status_html(nb: _Notebook) -> str:
    """The notebook's check status: notebooks assert every check, so a notebook that ran ok passed them."""
    if nb.status == "ok":
        return "<span class='ok'>passed</span>"
    if nb.status == "failed":
        cell = html.escape(nb.outcome.get("failed_cell", ""))
        return f"<span class='failed'>failed</span> <span class='note'>{cell}</span>"
    if nb.results:
        return "<span class='stale'>stale: passed in the last full run</span>"
    return "<span class='notrun'>not run</span>"


def _run_label(info: dict) -> str:
    return (
        f"{info.get('size', 'full')} size, {info.get('target', DEFAULT_TARGET)}, {info.get('backend', 'sim')}"
    )


def _href(path: Path, build: Path) -> str:
    return quote(Path(os.path.relpath(path, build)).as_posix())


# ---- the summary table -------------------------------------------------------------------------------------


def _op_rows(op, results: dict[str, dict]) -> list[tuple[str, str, dict]]:
    """(label, version, {(target, T): numbers}) rows of one op from its notebook's results.

    A results file describes its notebook's first registered op: ``final`` (``trn2_T640`` keys) or, for the
    projections of notebook 02, ``projections`` (``q_T1_trn2`` keys, one row per projection); another op of
    the same notebook is described under ``ops.<name>`` with the same keys.
    """
    res = next((r["ops"][op.name] for r in results.values() if op.name in r.get("ops", {})), None)
    if res is None and _is_first_op(op):
        res = next((r for r in results.values() if "final" in r or "projections" in r), None)
    if res is None:
        return [(op.name, op.final.name, {})]
    version = res.get("final_version", op.final.name)
    if "final" in res:
        cells = {}
        for key, numbers in res["final"].items():
            m = _FINAL_KEY.match(key)
            if m is None:
                raise ValueError(f"results of {op.notebook}: final key {key!r} is not '<target>_T<tokens>'")
            cells[m["target"], m["axis"], int(m["T"])] = numbers  # axis: T tokens, L cached positions
        return [(op.name, version, cells)]
    rows: dict[str, dict] = {}
    for key, numbers in res["projections"].items():
        m = _PROJ_KEY.match(key)
        if m is None:
            raise ValueError(
                f"results of {op.notebook}: projection key {key!r} is not '<name>_T<T>_<target>'"
            )
        rows.setdefault(f"{op.name}: {m['name']}", {})[m["target"], "T", int(m["T"])] = numbers
    # narrowest projection first: the floor of the first size grows with the projection's width N
    order = sorted(rows, key=lambda label: next(iter(sorted(rows[label].items())))[1]["floor_us"])
    return [(label, version, rows[label]) for label in order]


def _is_first_op(op) -> bool:
    """True when ``op`` is the first op its notebook registers (the one its ``final`` numbers describe)."""
    from nki_moe.ops import OPS

    return next(o for o in OPS.values() if o.notebook == op.notebook).name == op.name


def _summary(notebooks: dict[str, _Notebook]) -> list[str]:
    from nki_moe.ops import OPS

    rows = []
    for op in OPS.values():
        nb = notebooks[Path(op.notebook).stem]
        for label, version, cells in _op_rows(op, nb.results):
            rows.append((nb, label, version, cells))
    columns = sorted({key for *_, cells in rows for key in cells}, key=lambda c: (c[1] != "T", c))  # T first
    out = [
        "<h2 id='summary'>Summary: the best version of every op</h2>",
        "<table id='summary-table'><thead><tr><th rowspan='2'>op</th><th rowspan='2'>best version</th>",
        *(f"<th colspan='2'>{tg} · {axis} = {t}</th>" for tg, axis, t in columns),
        "<th rowspan='2'>check</th><th rowspan='2'>notebook</th></tr><tr>",
        *("<th>µs (est.)</th><th>% of floor</th>" for _ in columns),
        "</tr></thead><tbody>",
    ]
    for nb, label, version, cells in rows:
        numbers = "".join(
            f"<td class='num'>{format_number(('latency_us',), cells[c]['latency_us'])}</td>"
            f"<td class='num'>{format_number(('pct_roofline',), cells[c]['pct_roofline'])}</td>"
            if c in cells
            else "<td class='num'>—</td><td class='num'>—</td>"
            for c in columns
        )
        out.append(
            f"<tr><td>{html.escape(label)}</td><td>{html.escape(version)}</td>{numbers}"
            f"<td>{_status_html(nb)}</td><td><a href='#{nb.stem}'>{nb.stem}</a></td></tr>"
        )
    out.append("</tbody></table>")
    out.append(
        "<p class='note'>µs: the cost model's <b>estimate</b> of the final version (not a measurement); % of "
        "floor = the op's roofline floor (HBM bytes and FLOPs at the roofs of the cores it launches on) ÷ "
        "that estimate, so 100 % is the best possible. — : not recorded at that shape. A notebook asserts "
        "every check before it records its numbers: passed means its checks passed in that run; stale "
        "numbers come from the last full run.</p>"
    )
    return out


# ---- per notebook ------------------------------------------------------------------------------------------


def _number_tables(results: dict[str, dict]) -> list[str]:
    """Every recorded number, formatted: scalars in one table, each table-shaped entry in its own."""
    out = []
    for name, data in results.items():
        scalars: list[tuple[tuple[str, ...], object]] = []
        matrices = []
        for key, value in data.items():
            if key == "run":
                continue
            if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
                matrices.append((key, value))
            elif isinstance(value, dict):
                scalars += [((key, sub), v) for sub, v in value.items()]
            else:
                scalars.append(((key,), value))
        out.append(f"<h4><code>{html.escape(name)}</code> ({_run_label(data.get('run', _LEGACY_RUN))})</h4>")
        out.append("<table><tr><th>number</th><th>value</th><th>key</th></tr>")
        out += [
            f"<tr><td>{html.escape(' · '.join(_label(k) for k in path))}</td>"
            f"<td class='num'>{html.escape(format_number(path, v))}</td>"
            f"<td class='key'>{html.escape('.'.join(path))}</td></tr>"
            for path, v in scalars
        ]
        out.append("</table>")
        for key, table in matrices:
            cols = list(dict.fromkeys(c for row in table.values() for c in row))
            out.append(
                f"<table><caption>{html.escape(_label(key))} <span class='key'>{html.escape(key)}</span>"
                f"</caption><tr><th></th>{''.join(f'<th>{html.escape(_label(c))}</th>' for c in cols)}</tr>"
            )
            for row_key, row in table.items():
                cells = "".join(
                    f"<td class='num'>{html.escape(format_number((key, row_key, c), row[c]))}</td>"
                    if c in row
                    else "<td></td>"
                    for c in cols
                )
                out.append(f"<tr><td>{html.escape(_label(row_key))}</td>{cells}</tr>")
            out.append("</table>")
    return out


def _traces_of(stem: str, folder: Path) -> list[Path]:
    """The Perfetto traces of the notebook's ops (named ``<kernel>_<shape>_<target>.json`` by profiles)."""
    from nki_moe.ops import OPS

    kernels = tuple(
        f"{v.kernel}_" for op in OPS.values() if Path(op.notebook).stem == stem for v in op.versions
    )
    return sorted(p for p in folder.glob("*.json") if kernels and p.name.startswith(kernels))


def _notebook_html(executed: Path, target: Path) -> bool:
    """Render an executed notebook to HTML; False when it cannot be rendered."""
    try:
        import nbformat
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    except Exception:  # a broken notebook must not break the report of the others
        return False
    target.write_text(body)
    return True


def _section(nb: _Notebook, build: Path, page: Path | None) -> list[str]:
    from nbconvert.filters import markdown2html

    where = "from the last full run (stale)" if nb.stale else "from this run"
    out = [
        f"<section id='{nb.stem}'><h2>{html.escape(nb.stem)}</h2>",
        f"<p>Check status: {_status_html(nb)}. Numbers and figures {where}"
        + (f": {_run_label(nb.run_info)}." if nb.results else "; none recorded.")
        + (f" Executed notebook: <a href='{_href(page, build)}'>html</a>." if page else "")
        + "</p>",
    ]
    markdown, printed = takeaways(nb.executed) if nb.executed else ("", [])
    if markdown or printed:
        out.append("<h3>Takeaways</h3>" + markdown2html(markdown))
        out += [f"<pre class='takeaways'>{html.escape(text)}</pre>" for text in printed]
    target = nb.run_info.get("target", DEFAULT_TARGET)
    if nb.figures:
        out.append("<h3>Figures</h3>")
    for fig in nb.figures:
        try:
            source, text = caption(fig.stem, target)
        except KeyError as err:
            source, text = "no caption", str(err)
        out.append(
            f"<figure id='fig-{fig.stem}'><img src='{_href(fig, build)}' alt='{fig.stem}'>"
            f"<figcaption><span class='source'>{html.escape(source)}.</span> {html.escape(text)} "
            f"<span class='key'>{fig.stem}</span></figcaption></figure>"
        )
    traces = _traces_of(nb.stem, nb.traces)
    if traces:
        out.append(
            "<h3>Perfetto traces (estimated timelines)</h3><p class='note'>To open one: "
            "<a href='https://ui.perfetto.dev'>ui.perfetto.dev</a> → “Open trace file”; see "
            "<a href='#traces'>how to read them</a>.</p><ul>"
        )
        out += [f"<li><a href='{_href(t, build)}'>{html.escape(t.name)}</a></li>" for t in traces]
        out.append("</ul>")
    if nb.results:
        opened = "" if markdown or printed else " open"  # no executed notebook: the numbers are the takeaways
        out.append(f"<details{opened}><summary>All recorded numbers</summary>")
        out += _number_tables(nb.results)
        out.append("</details>")
    return out + ["</section>"]


def _ops_table() -> list[str]:
    """Where things live: op, kernel versions, reference, notebook (linked), figures, tests."""
    from nki_moe.ops import OPS

    rows = [
        "<h2 id='ops'>Where things live: the op registry</h2><table><tr><th>op</th><th>kernels</th>"
        "<th>reference</th><th>notebook</th><th>figures</th><th>tests</th></tr>"
    ]
    for op in OPS.values():
        nb = Path(op.notebook).stem
        rows.append(
            f"<tr><td>{html.escape(op.name)}</td><td><code>{html.escape(op.module)}</code> "
            f"{', '.join(html.escape(v.name) for v in op.versions)}</td>"
            f"<td><code>{html.escape(op.reference.__module__)}.{html.escape(op.reference.__name__)}</code></td>"
            f"<td><a href='#{nb}'>{html.escape(nb)}</a></td><td>{html.escape(', '.join(op.figures))}</td>"
            f"<td>{html.escape(', '.join(op.tests))}</td></tr>"
        )
    return rows + ["</table>"]


def write_report(build: Path, run: dict) -> Path:
    """Write ``build/report.html`` for ``run`` (the dict of run_summary.json) and return its path."""
    notebooks = _notebooks(run)
    html_dir = build / "html"
    html_dir.mkdir(parents=True, exist_ok=True)
    pages = {}
    for nb in notebooks:
        page = html_dir / f"{nb.stem}.html"
        pages[nb.stem] = page if nb.executed and _notebook_html(nb.executed, page) else None
    size = run.get("size") or ("smoke" if run.get("smoke") else "full")
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>nki-moe report</title>"
        f"<style>{_STYLE}</style></head><body><h1>nki-moe workbook report</h1>",
        f"<p>Run: {size} size, target "
        f"<code>{html.escape(run.get('target') or 'each notebook default')}</code>, backend "
        f"<code>{html.escape(run.get('backend') or DEFAULT_BACKEND)}</code>"
        + (f", variant <code>{html.escape(run['variant'])}</code>" if run.get("variant") else "")
        + ". Every Trainium time here is a cost-model <b>estimate</b> unless it is marked as a published "
        "measurement.</p>",
        *_summary({nb.stem: nb for nb in notebooks}),
        "<h2 id='notebooks'>Notebooks</h2><table><tr><th>notebook</th><th>status</th><th>seconds</th>"
        "<th>numbers from</th><th>executed notebook</th><th>error</th></tr>",
    ]
    for nb in notebooks:
        o = nb.outcome or {}
        seconds = f"{o['seconds']:.1f}" if "seconds" in o else ""
        if nb.stem in run.get("skipped", []):
            status = "not run (stopped at a failure)"
        else:
            status = nb.status if nb.outcome else "not in this run"
        numbers = "—" if not nb.results else ("last full run (stale)" if nb.stale else "this run")
        page = pages[nb.stem]
        links = (
            f"<a href='{_href(page, build)}'>html</a> · <a href='{_href(nb.executed, build)}'>ipynb</a>"
            if page
            else ""
        )
        parts.append(
            f"<tr><td><a href='#{nb.stem}'>{nb.stem}</a></td><td class='{nb.status.replace(' ', '')}'>"
            f"{html.escape(status)}</td><td class='num'>{seconds}</td><td>{numbers}</td><td>{links}</td>"
            f"<td>{html.escape(o.get('failed_cell', ''))} {html.escape(o.get('error', ''))}</td></tr>"
        )
    parts.append("</table>")
    parts.append(
        "<p id='traces' class='note'>A Perfetto trace is the cost model's estimated timeline of one kernel "
        "launch: one process per physical core, one track per compute engine and per DMA queue, one slice "
        "per instruction, times in µs of <b>estimated</b> time. Open <a href='https://ui.perfetto.dev'>"
        "ui.perfetto.dev</a>, choose “Open trace file” and pick the JSON file.</p>"
    )
    for nb in notebooks:
        parts += _section(nb, build, pages[nb.stem])
    parts += _ops_table()
    parts.append("</body></html>")
    path = build / "report.html"
    path.write_text("\n".join(parts))
    return path
