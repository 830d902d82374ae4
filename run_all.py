#!/usr/bin/env python
"""Run every workbook notebook headless and build the HTML report.

Discovers ``notebooks/NN_*.py`` (jupytext percent format) in numeric order, converts each to ``.ipynb``,
executes it with papermill on the project's Jupyter kernel and writes the executed copy to
``build/executed/``. Figures land in ``figures/``, results in ``results/`` (written by the notebooks),
and ``build/report.html`` indexes notebooks, figures and key numbers.

Examples::

    python run_all.py                 # all notebooks, full size
    python run_all.py --smoke         # small shapes (each notebook's SMOKE parameter)
    python run_all.py --only 00,03 --target trn3 --keep-going
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
KERNEL = "nki-moe"
_NOTEBOOK = re.compile(r"^(\d\d)_[a-z0-9_]+\.py$")


@dataclass
class Outcome:
    """What happened to one notebook."""

    notebook: str
    status: str  # "ok" | "failed"
    seconds: float
    executed: str
    failed_cell: str = ""
    error: str = ""


def discover(folder: Path, only: set[str] | None = None) -> list[Path]:
    """Return ``NN_*.py`` notebooks of ``folder`` in numeric order, optionally filtered by number."""
    found = sorted((p for p in folder.glob("*.py") if _NOTEBOOK.match(p.name)), key=lambda p: p.name)
    if only is not None:
        unknown = only - {_NOTEBOOK.match(p.name).group(1) for p in found}
        if unknown:
            known = ", ".join(_NOTEBOOK.match(p.name).group(1) for p in found)
            raise SystemExit(f"--only names notebook(s) {sorted(unknown)} that do not exist (have: {known})")
        found = [p for p in found if _NOTEBOOK.match(p.name).group(1) in only]
    return found


def neuron_available() -> bool:
    """True when the real Neuron compiler (and with it the real ``nki``) is importable."""
    import importlib.util

    return importlib.util.find_spec("neuronxcc") is not None


def notebook_parameters(ipynb: Path) -> dict:
    """Names and defaults of the notebook's ``parameters`` cell (empty when it has none)."""
    import papermill

    return {name: info["default"] for name, info in papermill.inspect_notebook(str(ipynb)).items()}


def execute(source: Path, build: Path, wanted: dict, kernel: str, timeout: int) -> Outcome:
    """Convert ``source`` to ipynb and execute it with papermill; never raises for a failing cell."""
    import jupytext
    import papermill
    from papermill.exceptions import PapermillExecutionError

    stem = source.stem
    raw = build / "notebooks" / f"{stem}.ipynb"
    executed = build / "executed" / f"{stem}.ipynb"
    raw.parent.mkdir(parents=True, exist_ok=True)
    executed.parent.mkdir(parents=True, exist_ok=True)
    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": f"Python ({kernel})", "language": "python"}
    jupytext.write(nb, raw)
    accepted = notebook_parameters(raw)
    params = {k: v for k, v in wanted.items() if k in accepted}
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(raw),
            str(executed),
            parameters=params,
            kernel_name=kernel,
            cwd=str(source.parent),
            progress_bar=False,
            execution_timeout=timeout,
        )
        return Outcome(stem, "ok", time.perf_counter() - start, str(executed))
    except PapermillExecutionError as err:
        first = (err.source or "").strip().splitlines()
        cell = f"cell {err.cell_index} (execution {err.exec_count}): {first[0] if first else ''}"
        return Outcome(
            stem, "failed", time.perf_counter() - start, str(executed), cell, f"{err.ename}: {err.evalue}"
        )
    except Exception as err:  # kernel died, timeout, bad notebook: still report, keep the rest going
        return Outcome(
            stem,
            "failed",
            time.perf_counter() - start,
            str(executed),
            "(no cell)",
            f"{type(err).__name__}: {err}",
        )


def summary_table(outcomes: list[Outcome]) -> str:
    """A plain-text table: notebook, status, seconds, executed path (and the failing cell)."""
    rows = [("notebook", "status", "seconds", "executed")]
    rows += [(o.notebook, o.status, f"{o.seconds:.1f}", os.path.relpath(o.executed, ROOT)) for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for o in outcomes:
        if o.status != "ok":
            lines.append(f"FAILED {o.notebook}: {o.failed_cell}\n       {o.error}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small shapes: pass SMOKE=True")
    parser.add_argument("--only", help="comma-separated notebook numbers, e.g. 00,03")
    parser.add_argument("--keep-going", action="store_true", help="run the rest after a failure")
    parser.add_argument(
        "--target",
        choices=["trn2", "trn3"],
        default=None,
        help="target chip (notebook TARGET parameter; default: each notebook's own)",
    )
    parser.add_argument(
        "--backend",
        choices=["sim", "neuron"],
        default="sim",
        help="sim = the NumPy emulator; neuron = the real SDK (Trainium hosts only)",
    )
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks", help=argparse.SUPPRESS)
    parser.add_argument("--build", type=Path, default=ROOT / "build", help="output folder for notebooks")
    parser.add_argument("--kernel", default=KERNEL, help="Jupyter kernel name (default: nki-moe)")
    parser.add_argument("--timeout", type=int, default=1800, help="per-cell timeout in seconds")
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report")
    args = parser.parse_args(argv)

    if args.backend == "neuron" and not neuron_available():
        parser.error(
            "--backend neuron needs the Neuron SDK (neuronx-cc with nki), which is not installed "
            "here; run on a Trainium host, or use --backend sim"
        )
    # The notebook kernels inherit these; they are restored afterwards so a caller (a test) keeps its own.
    env = {"NKI_MOE_BACKEND": args.backend}
    wanted: dict = {"SMOKE": args.smoke}
    if args.target:
        wanted["TARGET"] = args.target
        env["NEURON_PLATFORM_TARGET_OVERRIDE"] = args.target

    only = set(args.only.split(",")) if args.only else None
    notebooks = discover(args.notebooks, only)
    if not notebooks:
        print(f"no notebooks found in {args.notebooks}", file=sys.stderr)
        return 2
    outcomes: list[Outcome] = []
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for i, nb in enumerate(notebooks, 1):
            print(f"[{i}/{len(notebooks)}] {nb.stem} ...", flush=True)
            outcome = execute(nb, args.build, wanted, args.kernel, args.timeout)
            outcomes.append(outcome)
            print(f"[{i}/{len(notebooks)}] {nb.stem} {outcome.status} in {outcome.seconds:.1f} s", flush=True)
            if outcome.status != "ok" and not args.keep_going:
                break
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    skipped = [nb.stem for nb in notebooks[len(outcomes) :]]

    print()
    print(summary_table(outcomes))
    if skipped:
        print(f"not run (stopped at the first failure; use --keep-going): {', '.join(skipped)}")
    args.build.mkdir(parents=True, exist_ok=True)
    run = {
        "smoke": args.smoke,
        "target": args.target,
        "backend": args.backend,
        "outcomes": [asdict(o) for o in outcomes],
        "skipped": skipped,
    }
    (args.build / "run_summary.json").write_text(json.dumps(run, indent=2) + "\n")
    if not args.no_report:
        from nki_moe.report import write_report

        print(f"report: {os.path.relpath(write_report(args.build, run), ROOT)}")
    return 0 if all(o.status == "ok" for o in outcomes) and not skipped else 1


if __name__ == "__main__":
    sys.exit(main())
