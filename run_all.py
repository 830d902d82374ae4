#!/usr/bin/env python
"""Run every workbook notebook headless and build the HTML report.

Discovers ``notebooks/NN_*.py`` (and ``NNa_*.py``; jupytext percent format) in numeric order, converts each
to ``.ipynb`` and executes it with papermill on the project's Jupyter kernel. A full-size run at each
notebook's default target writes the committed ``figures/`` and ``results/`` and ``build/``; any other run
(``--smoke``, ``--target trn3``, ``--backend neuron``) is a variant and writes everything under
``build/<variant>/`` (``build/smoke/``, ``build/trn3/``, ``build/smoke-trn3/``), so it never overwrites the
committed outputs. Each build folder gets ``executed/`` (the executed notebooks), ``run_summary.json`` and
``report.html``. ``NKI_MOE_OUT`` relocates all of it. Layout: docs/outputs.md.

Examples::

    python run_all.py                 # all notebooks, full size
    python run_all.py --smoke         # small shapes (each notebook's SMOKE parameter) -> build/smoke/
    python run_all.py --only 00,03 --target trn3 --keep-going
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from nki_moe import paths

ROOT = Path(__file__).resolve().parent
KERNEL = "nki-moe"
_PAPERMILL_TAGS = {"injected-parameters", "papermill-error-cell-tag"}  # cells papermill adds to a notebook


@dataclass
class Outcome:
    """What happened to one notebook."""

    notebook: str  # its file stem
    status: str  # "ok" | "failed"
    seconds: float
    executed: str
    failed_cell: str = ""
    error: str = ""


def number(notebook: Path) -> str:
    """The notebook's number: ``01`` of ``01_rmsnorm.py``, ``00a`` of ``00a_first_kernel.py``."""
    return paths.NOTEBOOK_STEM.match(notebook.stem).group(1)


def discover(folder: Path, only: set[str] | None = None) -> list[Path]:
    """Return the notebooks of ``folder`` in numeric order, optionally only those numbered in ``only``.

    Other ``.py`` files are not run, and are named on stderr.
    """
    found, ignored = [], []
    for p in sorted(folder.glob("*.py")):
        (found if paths.NOTEBOOK_STEM.match(p.stem) else ignored).append(p)
    for p in ignored:
        print(
            f"not a notebook, not run: {p} (a notebook is named NN_snake_case.py or NNa_snake_case.py)",
            file=sys.stderr,
        )
    found.sort(key=lambda p: (number(p), p.name))
    if only is not None:
        unknown = only - {number(p) for p in found}
        if unknown:
            known = ", ".join(number(p) for p in found)
            raise SystemExit(f"--only names notebook(s) {sorted(unknown)} that do not exist (have: {known})")
        found = [p for p in found if number(p) in only]
    return found


def parse_only(value: str) -> set[str]:
    """The notebook numbers of ``--only 00,03``; an empty list or entry is an error, not "everything"."""
    numbers = [part.strip() for part in value.split(",")]
    if not all(numbers):
        raise SystemExit(
            f"--only {value!r} has an empty entry: give notebook numbers such as 00,03 (or omit --only)"
        )
    return set(numbers)


def neuron_available() -> bool:
    """True when the Neuron SDK the device path needs is importable (``nki_moe.device.available``:
    neuronx-cc with the real ``nki``, torch-neuronx), searched on sys.path, not in sys.modules (the emulator
    registers stand-ins there)."""
    from nki_moe import device

    return device.available()


def notebook_parameters(ipynb: Path) -> dict:
    """Names and defaults of the notebook's ``parameters`` cell (empty when it has none)."""
    import papermill

    return {name: info["default"] for name, info in papermill.inspect_notebook(str(ipynb)).items()}


@contextmanager
def environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables (the notebook kernels inherit them), then restore the caller's."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def unfinished_cell(executed: Path) -> tuple[str, str] | None:
    """``(where, error)`` of the first cell of an executed notebook that did not complete, else None.

    Cells are counted from 1 as the source notebook counts them (markdown included; the cells papermill
    adds, its injected parameters and its error banners, excluded). A cell that raised ``SystemExit`` is
    "failed" with no papermill error, and the cells after it never ran: both are caught here.
    """
    cells = json.loads(executed.read_text())["cells"]
    source = [c for c in cells if not _PAPERMILL_TAGS & set(c["metadata"].get("tags", []))]
    for index, cell in enumerate(source, 1):
        state = cell["metadata"].get("papermill", {})
        if state.get("status") == "completed" and not state.get("exception"):
            continue
        lines = "".join(cell["source"]).strip().splitlines()
        where = f"cell {index} of {len(source)}: {lines[0] if lines else '(empty)'}"
        errors = [o for o in cell.get("outputs", []) if o["output_type"] == "error"]
        if errors:
            error = f"{errors[0]['ename']}: {errors[0]['evalue']}"
        else:
            error = f"never ran (status {state.get('status', 'unknown')}): an earlier cell stopped the kernel"
        later = sum(c["cell_type"] == "code" for c in source[index:])
        return where, error + (f"; {later} later code cell(s) never ran" if later else "")
    return None


def execute(source: Path, build: Path, wanted: dict, kernel: str, timeout: int) -> Outcome:
    """Convert ``source`` to ipynb and execute it with papermill; never raises for a failing cell.

    The notebook is ``ok`` only when every one of its cells ran to completion.
    """
    import jupytext
    import papermill
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    stem = source.stem
    raw = build / "notebooks" / f"{stem}.ipynb"
    executed = build / "executed" / f"{stem}.ipynb"
    raw.parent.mkdir(parents=True, exist_ok=True)
    executed.parent.mkdir(parents=True, exist_ok=True)
    executed.unlink(missing_ok=True)  # a stale copy must not stand in for a run that never wrote one
    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": f"Python ({kernel})", "language": "python"}
    jupytext.write(nb, raw)
    accepted = notebook_parameters(raw)
    params = {k: v for k, v in wanted.items() if k in accepted}
    crash = ""
    start = time.perf_counter()
    with environ({paths.ENV_NOTEBOOK: stem}):
        try:
            papermill.execute_notebook(
                str(raw),
                str(executed),
                parameters=params,
                kernel_name=kernel,
                cwd=str(source.parent),
                progress_bar=False,
                execution_timeout=timeout,
                # IPC sockets instead of TCP on localhost: the kernel's traffic stays off the network, and
                # ipykernel's "running over TCP without encryption" warning is not printed for every notebook.
                config=Config({"KernelManager": {"transport": "ipc"}}),
            )
        except PapermillExecutionError:
            pass  # the executed copy names the failing cell and its error
        except Exception as err:  # kernel died, timeout, bad notebook: still report, keep the rest going
            crash = f"{type(err).__name__}: {err}"
    seconds = time.perf_counter() - start
    failure = unfinished_cell(executed) if executed.exists() else None
    if failure is None and not crash:
        return Outcome(stem, "ok", seconds, str(executed))
    cell, error = failure or ("(no cell)", crash)
    return Outcome(stem, "failed", seconds, str(executed), cell, error)


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
    parser.add_argument(
        "--smoke", action="store_true", help="small shapes: pass SMOKE=True (-> build/smoke/)"
    )
    parser.add_argument("--only", help="comma-separated notebook numbers, e.g. 00,03 or 00a")
    parser.add_argument("--keep-going", action="store_true", help="run the rest after a failure")
    parser.add_argument(
        "--target",
        choices=["trn2", "trn3"],
        default=None,
        help="target chip (notebook TARGET parameter; default: each notebook's own)",
    )
    parser.add_argument(
        "--backend",
        choices=list(paths.BACKENDS),
        default=paths.DEFAULT_BACKEND,
        help="sim = the NumPy emulator; neuron = the real SDK (Trainium hosts only)",
    )
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks", help=argparse.SUPPRESS)
    parser.add_argument("--kernel", default=KERNEL, help="Jupyter kernel name (default: nki-moe)")
    parser.add_argument("--timeout", type=int, default=1800, help="per-cell timeout in seconds")
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report")
    args = parser.parse_args(argv)

    if args.backend == "neuron":  # before anything runs: one clear error naming what is missing
        from nki_moe import device

        try:
            device.require_sdk("--backend neuron")
        except device.NeuronSdkMissing as err:
            parser.exit(2, f"run_all.py: error: {err}\n")
    env = {"NKI_MOE_BACKEND": args.backend}
    if args.backend == "neuron":
        # the notebooks keep the emulator for checks, traces and estimates (nki_moe.paths.start_run records
        # the run as "neuron"); nki_moe.device.enabled() makes every sweep measure on the NeuronCore too
        env = {"NKI_MOE_BACKEND": "sim", "NKI_MOE_DEVICE": "1"}
    wanted: dict = {"SMOKE": args.smoke}
    if args.target:
        wanted["TARGET"] = args.target
        env["NEURON_PLATFORM_TARGET_OVERRIDE"] = args.target

    notebooks = discover(args.notebooks, None if args.only is None else parse_only(args.only))
    if not notebooks:
        print(f"no notebooks found in {args.notebooks}", file=sys.stderr)
        return 2
    build = paths.variant_dirs(args.smoke, args.target, args.backend)[2]
    outcomes: list[Outcome] = []
    with environ(env):
        for i, nb in enumerate(notebooks, 1):
            print(f"[{i}/{len(notebooks)}] {nb.stem} ...", flush=True)
            outcome = execute(nb, build, wanted, args.kernel, args.timeout)
            outcomes.append(outcome)
            print(f"[{i}/{len(notebooks)}] {nb.stem} {outcome.status} in {outcome.seconds:.1f} s", flush=True)
            if outcome.status != "ok" and not args.keep_going:
                break
    skipped = [nb.stem for nb in notebooks[len(outcomes) :]]

    print()
    print(summary_table(outcomes))
    if skipped:
        print(f"not run (stopped at the first failure; use --keep-going): {', '.join(skipped)}")
    build.mkdir(parents=True, exist_ok=True)
    run = {
        "variant": paths.variant(args.smoke, args.target, args.backend),
        "size": "smoke" if args.smoke else "full",
        "smoke": args.smoke,
        "target": args.target,
        "backend": args.backend,
        "outcomes": [asdict(o) for o in outcomes],
        "skipped": skipped,
    }
    (build / "run_summary.json").write_text(json.dumps(run, indent=2) + "\n")
    if not args.no_report:
        from nki_moe.report import write_report

        print(f"report: {os.path.relpath(write_report(build, run), ROOT)}")
    return 0 if all(o.status == "ok" for o in outcomes) and not skipped else 1


if __name__ == "__main__":
    sys.exit(main())
