"""Conformance: public NKI kernels nobody in this project wrote, run unmodified on the emulator against
their own references.

Run: .venv/bin/python bench/conformance.py --library PATH --samples PATH --moe PATH [--only NAME,...]
     [--json OUT] [--timeout S] [--strict]
PATHs are plain checkouts of aws-neuron/nki-library, aws-neuron/nki-samples and aws-neuron/nki-moe; a missing
one is skipped with the `git clone` line that fetches it (exit status 0).

Cases live in bench/conformance_lib.py (nki-library) and bench/conformance_samples.py (tutorials and the
competition's samples). Each imports the kernel from the checkout (nothing is copied here), builds seeded
inputs, calls the kernel the way the project's own tests call it on device and compares with the project's
own reference through nki_moe.check.check_close. Every exception is caught per case and recorded as
``type: message`` with the kernel ``file:line`` (the location an NkiValidationError names, else the deepest
traceback frame in the checkout) and the deepest emulator frame (where a gap in nki_moe/sim probably lives),
so one broken case never stops the table. Prints the table
``kernel | source file | status | max abs err / tolerance | first error``, then ``k/N run unmodified and
match``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import signal
import sys
import threading
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import nki_moe.sim as sim
from nki_moe.check import check_close, tolerance
from nki_moe.sim.errors import SIM_DIR, NkiValidationError

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

# Where each checkout comes from: the line printed when it is absent.
CLONE = {
    "library": "git clone https://github.com/aws-neuron/nki-library",
    "samples": "git clone https://github.com/aws-neuron/nki-samples",
    "moe": "git clone https://github.com/aws-neuron/nki-moe",
}

MATCH, MISMATCH, ERROR, REF_ERROR = "match", "mismatch", "error", "ref error"


@dataclass
class Case:
    """One public kernel run unmodified under the emulator and compared with the project's own reference."""

    name: str  # "router_topk", "matmul_tutorial.nki_matmul_tiled_"
    source: str  # kernel file relative to the checkout root
    run: Callable[[], Any]  # runs the kernel under the emulator; returns np.ndarray or tuple of them
    reference: Callable[[], Any]  # the project's own reference (its *_torch.py / torch code), same structure
    dtype: str = "bf16"  # tolerance key for nki_moe.check.check_close ("fp32", "bf16", ...)
    atol: float | None = None  # optional overrides (say why in a comment when used)
    rtol: float | None = None
    note: str = ""  # shapes/LNC, shown in the table


@dataclass
class Outcome:
    """What running one :class:`Case` gave."""

    name: str
    source: str
    status: str  # MATCH, MISMATCH, ERROR (the kernel raised) or REF_ERROR (the reference raised)
    note: str = ""
    max_abs: float | None = None  # over all outputs
    atol: float | None = None
    rtol: float | None = None
    error: str = ""  # "Type: message" of the first exception (or the first failed check's message)
    location: str = ""  # kernel file:line the error names
    emulator_frame: str = ""  # deepest nki_moe/sim frame of the traceback ("" when the error is outside it)
    warnings: list[str] = field(default_factory=list)  # distinct warnings issued while running
    stdout: str = ""  # what the kernel and reference printed (the tail)
    traceback: str = ""  # the formatted exception (the tail), for the JSON
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == MATCH


# ---- loading kernels from a checkout ---------------------------------------------------------------------


class _Placeholder(types.ModuleType):
    """Stands in for a device-only module a kernel file imports at top level but never uses in the kernel."""

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise ModuleNotFoundError(
            f"{self.__name__}.{attr}: {self.__name__} is not installed (a conformance placeholder stands in "
            "for it so that the kernel file imports; the kernel itself must not use it)"
        )


@contextlib.contextmanager
def _placeholders(names: tuple[str, ...]) -> Iterator[None]:
    """Put placeholder modules for ``names`` (dotted, parents first) into sys.modules while importing, when
    the real package is not importable; restore sys.modules afterwards."""
    added = []
    for name in names:
        top_name = name.split(".")[0]
        top = sys.modules.get(top_name)
        if name in sys.modules or isinstance(top, types.ModuleType) and not isinstance(top, _Placeholder):
            continue
        if top is None and importlib.util.find_spec(top_name) is not None:
            continue  # the real package is installed: import it
        mod = _Placeholder(name)
        sys.modules[name] = mod
        added.append(name)
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, mod)
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


def load(module: str, path_entry: Path, placeholders: tuple[str, ...] = ()) -> types.ModuleType:
    """Import ``module`` from a checkout with ``path_entry`` on sys.path and the emulator bound to ``nki``.

    ``placeholders``: modules the file imports at top level for its on-device test code only (e.g.
    ``torch_xla.core.xla_model``); placeholders stand in for them while importing when they are not installed.
    Call it inside a case's ``run`` so that an import failure is that case's error, not the table's.
    """
    sim.install("sim")
    entry = str(path_entry)
    if entry not in sys.path:
        sys.path.insert(0, entry)
    with _placeholders(placeholders):
        return importlib.import_module(module)


# ---- running a case --------------------------------------------------------------------------------------


def _arrays(x: Any) -> list[np.ndarray]:
    """The outputs of a kernel or reference as a flat list of NumPy arrays (torch tensors converted)."""
    if isinstance(x, (tuple, list)):
        return [a for item in x for a in _arrays(item)]
    if type(x).__module__.split(".")[0] == "torch":
        return [x.detach().cpu().float().numpy()]
    if x is None or isinstance(x, dict):
        raise TypeError(f"got {type(x).__name__} where arrays (or a tuple of them) were expected")
    return [np.asarray(x)]


def _rel(path: str) -> str:
    """``path`` relative to the repository root when it is inside it (shorter table lines)."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return path


def _library_file(path: str) -> bool:
    """Whether ``path`` is the standard library or an installed package (neither kernel nor adapter code)."""
    p = Path(path).resolve()
    prefixes = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    return (
        path.startswith("<")
        or "site-packages" in p.parts
        or any(p.is_relative_to(x / "lib") for x in prefixes)
    )


_RAISERS = ("instr.py", "errors.py")  # nki_moe/sim modules that only raise what a check elsewhere found


def _locate(exc: BaseException, root: Path | None) -> tuple[str, str]:
    """(kernel file:line, emulator frame) for an exception raised while running a case.

    The kernel location is the one an NkiValidationError names; otherwise the deepest traceback frame in the
    checkout ``root``; failing that (an error in the case adapter, or no root), the deepest frame outside the
    emulator, the standard library and installed packages. The emulator frame is the deepest nki_moe/sim frame
    below that one (for an NkiValidationError the check's line, not Instr.fail's), "" when the located code
    raised by itself.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    root_r = root.resolve() if root is not None else None
    ours = [
        i
        for i, f in enumerate(frames)
        if not f.filename.startswith(SIM_DIR) and not _library_file(f.filename)
    ]
    in_root = [
        i for i in ours if root_r is not None and Path(frames[i].filename).resolve().is_relative_to(root_r)
    ]
    user = in_root or ours
    below = [f for f in frames[user[-1] + 1 if user else 0 :] if f.filename.startswith(SIM_DIR)]
    if isinstance(exc, NkiValidationError):  # the check that failed, not the helpers that raise for it
        below = [f for f in below if Path(f.filename).name not in _RAISERS] or below
    emulator = f"{_rel(below[-1].filename)}:{below[-1].lineno} in {below[-1].name}" if below else ""
    if isinstance(exc, NkiValidationError) and exc.location and exc.location != "<unknown>":
        return _under(exc.location, root), emulator
    if isinstance(exc, SyntaxError) and exc.filename:  # an import of a file that does not parse
        return _under(f"{exc.filename}:{exc.lineno}", root), emulator
    if user:
        return _under(f"{frames[user[-1]].filename}:{frames[user[-1]].lineno}", root), emulator
    return "", emulator


def _under(location: str, root: Path | None) -> str:
    """``file:line`` with the file relative to the checkout ``root`` when it is inside it."""
    path, _, line = location.rpartition(":")
    if root is None or not path:
        return location
    try:
        return f"{Path(path).resolve().relative_to(root.resolve())}:{line}"
    except ValueError:
        return location


def _describe(exc: BaseException) -> str:
    """``Type: first line of the message`` (an NkiValidationError's ``[at file:line]`` is the location)."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(exc, NkiValidationError):
        first = first.removesuffix(f" [at {exc.location}]")
    return f"{type(exc).__name__}: {first}".rstrip(": ")


@contextlib.contextmanager
def _deadline(seconds: float | None) -> Iterator[None]:
    """Raise TimeoutError in the case after ``seconds`` (main thread on POSIX only; else no limit)."""
    usable = seconds and hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"case still running after {seconds:g} s (--timeout)")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_case(case: Case, root: Path | None = None, timeout: float | None = None) -> Outcome:
    """Run ``case``'s kernel and reference and compare them; never raises (except KeyboardInterrupt).

    Args:
        case: the case.
        root: its checkout root (used to find the kernel's file:line in a traceback).
        timeout: seconds the kernel may run (None: no limit).
    Returns:
        An :class:`Outcome`; ``status`` is MATCH only when every output is within the case's tolerance.
    """
    tol = tolerance(case.dtype)
    out = Outcome(case.name, case.source, ERROR, case.note, atol=case.atol, rtol=case.rtol)
    out.atol = tol.atol if case.atol is None else case.atol
    out.rtol = tol.rtol if case.rtol is None else case.rtol
    start = time.perf_counter()
    printed = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(printed):
        warnings.simplefilter("always")
        try:
            with _deadline(timeout):
                actual = case.run()
        except Exception as exc:  # noqa: BLE001 - every failure is a row of the table
            _failed(out, ERROR, exc, root)
        else:
            try:
                expected = case.reference()
            except Exception as exc:  # noqa: BLE001
                _failed(out, REF_ERROR, exc, root)
            else:
                try:
                    _compare(out, _arrays(actual), _arrays(expected), case)
                except Exception as exc:  # noqa: BLE001 - e.g. the kernel returned None or a dict
                    _failed(out, MISMATCH, exc, root)
    out.warnings = list(dict.fromkeys(str(w.message) for w in caught))
    out.stdout = printed.getvalue()[-_TAIL:]
    out.seconds = time.perf_counter() - start
    return out


_TAIL = 4000  # characters of printed output and traceback kept per case


def _failed(out: Outcome, status: str, exc: Exception, root: Path | None) -> None:
    """Record ``exc`` (raised by the kernel or the reference) in ``out``."""
    out.status = status
    out.error = _describe(exc)
    out.location, out.emulator_frame = _locate(exc, root)
    out.traceback = "".join(traceback.format_exception(exc))[-_TAIL:]


def _compare(out: Outcome, actual: list[np.ndarray], expected: list[np.ndarray], case: Case) -> None:
    """Fill ``out`` from check_close over every output pair."""
    if len(actual) != len(expected):
        out.status = MISMATCH
        out.error = f"kernel returned {len(actual)} output(s), the reference {len(expected)}"
        return
    failed = []
    max_abs = 0.0
    for i, (a, e) in enumerate(zip(actual, expected)):
        res = check_close(a, e, case.dtype, atol=case.atol, rtol=case.rtol, name=f"output {i}")
        max_abs = max(max_abs, res.max_abs)
        if not res.ok:
            failed.append(res.message)
    out.max_abs = max_abs
    out.status = MISMATCH if failed else MATCH
    out.error = failed[0] if failed else ""


def run_cases(
    cases: list[Case],
    root: Path | None = None,
    timeout: float | None = None,
    progress: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """:func:`run_case` over ``cases`` in order, calling ``progress`` after each."""
    outcomes = []
    for case in cases:
        outcomes.append(run_case(case, root, timeout))
        if progress is not None:
            progress(outcomes[-1])
    return outcomes


# ---- reporting -------------------------------------------------------------------------------------------


def _error_cell(o: Outcome, width: int) -> str:
    """The first error, its kernel location (and emulator frame), cut to ``width`` characters."""
    if o.ok:
        return ""
    path, _, line = o.location.rpartition(":")
    where = f"{Path(path).name}:{line}" if path == o.source else _rel(o.location)  # the source column's file
    text = f"{where}: {o.error}" if o.location else o.error
    if o.emulator_frame:
        text += f" (emulator: {o.emulator_frame})"
    return text if len(text) <= width else text[: width - 3] + "..."


def format_table(outcomes: list[Outcome], error_width: int = 160) -> str:
    """kernel | source file | status | max abs err / tolerance | first error, then ``k/N run unmodified and
    match``."""
    header = ("kernel", "source file", "status", "max abs err / tolerance", "first error")
    rows = []
    for o in outcomes:
        err = "-" if o.max_abs is None else f"{o.max_abs:.3g}"
        rows.append(
            (o.name, o.source, o.status, f"{err} / {o.atol:g}+{o.rtol:g}|e|", _error_cell(o, error_width))
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths)) + " | " + row[4] for row in [header, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths) + "-+-" + "-" * len(header[4]))
    n_ok = sum(o.ok for o in outcomes)
    lines.append(f"{n_ok}/{len(outcomes)} run unmodified and match")
    return "\n".join(lines)


# ---- command line ----------------------------------------------------------------------------------------


def suites() -> list[tuple[str, Callable[[Path], list[Case]]]]:
    """(checkout key = CLI flag, case builder) for every checkout the harness knows."""
    import conformance_samples

    out = []
    try:
        import conformance_lib
    except ModuleNotFoundError as exc:
        if exc.name != "conformance_lib":
            raise
        print("skipped: bench/conformance_lib.py not present (the nki-library cases)")
    else:
        out.append(("library", conformance_lib.cases))
    out.append(("samples", conformance_samples.tutorial_cases))
    out.append(("moe", conformance_samples.moe_cases))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", type=Path, help="checkout of aws-neuron/nki-library")
    ap.add_argument("--samples", type=Path, help="checkout of aws-neuron/nki-samples")
    ap.add_argument("--moe", type=Path, help="checkout of aws-neuron/nki-moe")
    ap.add_argument("--only", default="", help="comma-separated case names (or name prefixes) to run")
    ap.add_argument("--json", type=Path, help="write the outcomes as JSON here")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per case (0: no limit)")
    ap.add_argument("--strict", action="store_true", help="exit 1 unless every case run matches")
    args = ap.parse_args(argv)
    sim.install("sim")
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unmatched = set(only)
    outcomes: list[Outcome] = []
    for key, build in suites():
        root = getattr(args, key)
        if root is None:
            continue
        if not root.is_dir():
            print(f"skipped: {root} not found ({CLONE[key]})")
            continue
        cases = []
        for c in build(root):
            hits = {s for s in only if c.name == s or c.name.startswith(s + ".")}
            unmatched -= hits
            if hits or not only:
                cases.append(c)
        outcomes += run_cases(
            cases,
            root,
            args.timeout or None,
            lambda o: print(f"  {o.name}: {o.status} ({o.seconds:.1f} s)", file=sys.stderr, flush=True),
        )
    if unmatched:
        print(f"--only: no case named {', '.join(sorted(unmatched))} in the checkouts given")
    if outcomes:
        print(format_table(outcomes))
    else:
        print("no cases run")
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=1, default=str) + "\n")
    return 1 if args.strict and not all(o.ok for o in outcomes) else 0


if __name__ == "__main__":
    # Run as the module `conformance` (not `__main__`), the one the case modules import Case from.
    sys.path.insert(0, str(BENCH_DIR))
    sys.exit(importlib.import_module("conformance").main())
