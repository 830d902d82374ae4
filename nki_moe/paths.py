"""Where outputs go: the committed ``figures/`` and ``results/``, or the build folder of a run variant.

Only a full-size run at the default target on the emulator writes the committed ``figures/`` and
``results/``; any other run (smoke size, another target, the neuron backend) is a *variant* and writes
under ``build/<variant>/{figures,results}``. The notebook's own parameters decide, so the rule holds for
``run_all.py`` and for a notebook run by hand in JupyterLab alike: its setup cell calls :func:`start_run`,
and :func:`nki_moe.results.record` and :func:`nki_moe.figures.save_figure` refuse to write without it.

``NKI_MOE_OUT`` relocates everything (tests use it so they never touch the committed outputs).
Layout and metadata: docs/outputs.md.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TARGET = "trn2"
DEFAULT_BACKEND = "sim"
BACKENDS = ("sim", "neuron")
# A notebook's file stem and every output stem: two digits, an optional letter (00a), snake_case.
NOTEBOOK_STEM = re.compile(r"^(\d\d[a-z]?)_[a-z0-9_]+$")
# Set by run_all.py while it executes a notebook: start_run checks the notebook names itself.
ENV_NOTEBOOK = "NKI_MOE_NOTEBOOK"


def base() -> Path:
    """The folder holding figures/, results/ and build/: ``$NKI_MOE_OUT``, else the repository root."""
    return Path(os.environ.get("NKI_MOE_OUT", ROOT))


def variant(smoke: bool, target: str | None = None, backend: str = DEFAULT_BACKEND) -> str:
    """A run's variant name: ``""`` for the committed outputs, else ``smoke``, ``trn3``, ``smoke-trn3``, ….

    ``target=None`` means each notebook's default (``DEFAULT_TARGET``).
    """
    from nki_moe.perf.hardware import HARDWARE

    if target is not None and target not in HARDWARE:
        raise ValueError(f"unknown target {target!r}: expected one of {', '.join(HARDWARE)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    parts = ["smoke"] if smoke else []
    parts += [target] if target not in (None, DEFAULT_TARGET) else []
    parts += [backend] if backend != DEFAULT_BACKEND else []
    return "-".join(parts)


def variant_dirs(
    smoke: bool, target: str | None = None, backend: str = DEFAULT_BACKEND
) -> tuple[Path, Path, Path]:
    """``(figures, results, build)`` of a run variant (not created).

    The committed run: ``<base>/figures``, ``<base>/results``, ``<base>/build``; a variant ``v``:
    ``<base>/build/v/figures``, ``<base>/build/v/results``, ``<base>/build/v``.
    """
    name = variant(smoke, target, backend)
    if not name:
        return base() / "figures", base() / "results", base() / "build"
    build = base() / "build" / name
    return build / "figures", build / "results", build


@dataclass(frozen=True)
class Run:
    """One notebook's run: it decides where the notebook's outputs go and is recorded in each of them."""

    notebook: str  # the notebook's file stem, e.g. "01_rmsnorm"
    target: str
    size: str  # "full" | "smoke"
    backend: str  # "sim" | "neuron"

    def metadata(self) -> dict[str, str]:
        """The ``run`` record written into every results JSON, figure PNG and figure CSV."""
        return asdict(self)

    def dirs(self) -> tuple[Path, Path, Path]:
        """``(figures, results, build)`` of this run's variant."""
        return variant_dirs(self.size == "smoke", self.target, self.backend)


_current: Run | None = None


def start_run(notebook: str, *, smoke: bool, target: str = DEFAULT_TARGET) -> Run:
    """Declare the notebook's run; call it in the setup cell before anything writes an output.

    Binds ``nki`` to its backend (:func:`nki_moe.sim.install`) so the run records the one its kernels use.

    Args:
        notebook: the notebook's file stem (``01_rmsnorm``).
        smoke: the notebook's ``SMOKE`` parameter.
        target: the notebook's ``TARGET`` parameter.
    Returns:
        The :class:`Run`, also returned by :func:`current_run` from now on.
    """
    global _current
    if not NOTEBOOK_STEM.match(notebook):
        raise ValueError(
            f"start_run: notebook {notebook!r} must be a file stem like '01_rmsnorm' or '00a_intro'"
        )
    running = os.environ.get(ENV_NOTEBOOK)
    if running and running != notebook:
        raise ValueError(
            f"start_run({notebook!r}) is called by notebook {running}: pass the notebook's own stem"
        )
    from nki_moe.sim import install

    backend = install()
    if os.environ.get("NKI_MOE_DEVICE") == "1":
        # run_all.py --backend neuron: the notebook's kernels stay on the emulator (checks, traces, estimates)
        # and nki_moe.device measures them on the NeuronCore in child processes bound to the SDK's nki;
        # the outputs go to the neuron variant (build/neuron/), never over the committed emulator run.
        backend = "neuron"
    variant(smoke, target, backend)  # validates target and backend
    _current = Run(notebook, target, "smoke" if smoke else "full", backend)
    return _current


def current_run() -> Run:
    """The run declared by :func:`start_run`; ``RuntimeError`` when none was declared."""
    if _current is None:
        raise RuntimeError(
            "no run declared: call nki_moe.paths.start_run('<notebook stem>', smoke=SMOKE, target=TARGET) "
            "in the notebook's setup cell before recording results or saving figures (it decides whether "
            "they are the committed full-size outputs or a variant under build/)"
        )
    return _current


def output_file(kind: str, stem: str, suffix: str) -> Path:
    """Path of ``<stem><suffix>`` in the current run's ``figures`` or ``results`` folder (created).

    The stem must be ``NN_snake_case`` with the run's notebook number ``NN`` (or ``NNa``).
    """
    run = current_run()
    folder = {"figures": run.dirs()[0], "results": run.dirs()[1]}.get(kind)
    if folder is None:
        raise ValueError(f"unknown output kind {kind!r}: expected 'figures' or 'results'")
    match = NOTEBOOK_STEM.match(stem)
    if not match:
        raise ValueError(f"{kind} stem {stem!r} must look like 'NN_snake_case' (NN = notebook number)")
    number = NOTEBOOK_STEM.match(run.notebook).group(1)
    if match.group(1) != number:
        raise ValueError(f"{kind} stem {stem!r} of notebook {run.notebook} must start with {number}_")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{stem}{suffix}"


def out_dir(kind: str) -> Path:
    """Return (and create) ``figures``, ``results`` or ``build`` of the current run (committed: no run).

    Profiles write their Perfetto traces to ``out_dir("build") / "traces"``, so a variant's traces stay in
    its own build folder.
    """
    dirs = dict(zip(("figures", "results", "build"), _current.dirs() if _current else variant_dirs(False)))
    if kind not in dirs:
        raise ValueError(f"unknown output kind {kind!r}: expected 'figures', 'results' or 'build'")
    dirs[kind].mkdir(parents=True, exist_ok=True)
    return dirs[kind]
