"""The Trainium path: run a workbook kernel on a NeuronCore, check it, time it, and keep the measurement.

On a Trn2/Trn3 host with the Neuron SDK (``neuronx-cc``, which provides the real ``nki``, and
``torch-neuronx``), every kernel of the registry runs on the device from the same source the emulator runs::

    from nki_moe import device, ops
    op = ops.get("rmsnorm")
    m = device.measure(op, "v3", target="trn2", T=640)   # compile, run, check, time; appends to results/
    print(m.measured_us, m.estimate_us)                  # the measurement beside the cost model's estimate
    print(device.sweep_table(sweep, "rmsnorm", "trn2"))  # Sweep.table plus a measured column

Where the SDK is absent every entry point raises one :class:`NeuronSdkMissing` naming the missing packages
and the install command (the Neuron pip repository [NEURON-PIP]).

How it runs. The device part always runs in a child process (``python -m nki_moe.device run ...``) with
``NKI_MOE_BACKEND=neuron``: there ``nki`` is the SDK's, the kernel module is imported unmodified (the real
``nki.jit`` compiles it on the first call, NumPy in and out), its outputs are compared with the op's NumPy
reference by the op's own ``compare`` (the check the emulator passes), and it is timed. A fresh process per
measurement also releases the NeuronCore, which a notebook kernel would otherwise hold. The estimate comes
from the emulator and the cost model in this process (or, in a process whose ``nki`` is the SDK's, from a
child with ``NKI_MOE_BACKEND=sim``).

Timing (``method``): ``"profile"`` runs the kernel with ``NEURON_FRAMEWORK_DEBUG=1`` so the compiled NEFF
is kept, captures its second execution with the profiler (``neuron-explorer``, formerly ``neuron-profile``)
and reads the device time from ``view --output-format summary-json`` [NEURON-PROFILE]; ``"wallclock"`` is
the median of timed calls after warm-up, host↔device copies and launch included (an upper bound);
``"auto"`` (default) is ``profile`` when a profiler is on PATH, else ``wallclock``. The row records which.

Measurements are appended to ``results/measured_<target>.csv`` (one row per run, never rewritten; columns
:data:`FIELDS`; ``shape`` as JSON). :func:`load_measurements`, :func:`comparison_table` and
:func:`calibration_rows` read them back (notebook 00, the cost model's re-fit). docs/device.md is the guide.
"""

from __future__ import annotations

import csv
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nki_moe import paths
from nki_moe.sim.errors import NkiBackendError

__all__ = [
    "PIP_INDEX",
    "SDK_MODULES",
    "FIELDS",
    "NeuronSdkMissing",
    "Measured",
    "DeviceRun",
    "missing",
    "available",
    "enabled",
    "require_sdk",
    "sdk_versions",
    "run_on_device",
    "measure",
    "append_measurement",
    "load_measurements",
    "measurements_path",
    "measured_column",
    "sweep_table",
    "comparison_table",
    "calibration_rows",
    "parse_profile_summary",
    "profiler",
]

PIP_INDEX = "https://pip.repos.neuron.amazonaws.com"  # the Neuron pip repository [NEURON-PIP]
# module -> the pip package that provides it (PyPI carries placeholders only; the real ones are on PIP_INDEX)
SDK_MODULES = {"neuronxcc": "neuronx-cc", "nki": "neuronx-cc", "torch_neuronx": "torch-neuronx"}
ENV_DEVICE = "NKI_MOE_DEVICE"  # set to 1 by run_all.py --backend neuron: notebooks measure on the device
PROFILERS = ("neuron-explorer", "neuron-profile")  # the profiler's current and former names
FIELDS = (
    "op",
    "version",
    "kernel",
    "shape",
    "target",
    "estimate_us",
    "measured_us",
    "method",
    "check",
    "sdk",
    "timestamp",
)


class NeuronSdkMissing(NkiBackendError):
    """The Neuron SDK is not importable here; the message names the missing packages and how to install."""


def _importable(module: str) -> bool:
    """Whether a real ``module`` is on sys.path (the emulator's stand-ins in sys.modules do not count)."""
    try:
        return importlib.machinery.PathFinder.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing() -> list[str]:
    """The pip packages of the SDK that are not installed here (empty on a ready Trainium host)."""
    return list(dict.fromkeys(pkg for mod, pkg in SDK_MODULES.items() if not _importable(mod)))


def available() -> bool:
    """True when the whole device path can run: neuronx-cc (with the real nki) and torch-neuronx."""
    return not missing()


def enabled() -> bool:
    """True when notebooks should measure on the device: ``$NKI_MOE_DEVICE=1`` (run_all.py --backend neuron)
    and the SDK installed."""
    return os.environ.get(ENV_DEVICE, "") == "1" and available()


def require_sdk(what: str = "running a kernel on a NeuronCore") -> None:
    """Raise :class:`NeuronSdkMissing` (one message: what is missing, how to install it) unless available."""
    gone = missing()
    if not gone:
        return
    provides = {pkg: [m for m, p in SDK_MODULES.items() if p == pkg] for pkg in gone}
    names = ", ".join(
        f"{pkg} (module{'s' * (len(mods) > 1)} {', '.join(mods)})" for pkg, mods in provides.items()
    )
    raise NeuronSdkMissing(
        f"{what} needs the Neuron SDK; not installed here: {names}. On a Trn2/Trn3 host: activate the "
        f"Neuron DLAMI's venv "
        f"(/opt/aws_neuronx_venv_pytorch_*), or `pip install neuronx-cc torch-neuronx "
        f"--extra-index-url {PIP_INDEX}` (SDK 2.29 for NKI 0.3; the workbook's extra: "
        f'`pip install -e ".[neuron]" --extra-index-url {PIP_INDEX}`). See docs/device.md. '
        "Without the SDK use the emulator: --backend sim / NKI_MOE_BACKEND=sim."
    )


def sdk_versions() -> dict[str, str]:
    """Installed versions of the SDK's pip packages (``"absent"`` for a missing one)."""
    from importlib import metadata

    out = {}
    for pkg in dict.fromkeys(SDK_MODULES.values()):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


# ---- one measurement ------------------------------------------------------------------------------------
@dataclass
class Measured:
    """One device run of one version at one shape, beside its estimate (a row of measured_<target>.csv)."""

    op: str
    version: str
    kernel: str
    shape: dict
    target: str
    estimate_us: float
    measured_us: float | None
    method: str  # "profile" | "wallclock"
    check: str  # "ok" or the failed outcome's message
    sdk: str = ""
    timestamp: str = ""

    @property
    def ratio(self) -> float | None:
        """measured / estimate (> 1: the chip is slower than the model says)."""
        return None if self.measured_us is None else self.measured_us / self.estimate_us

    def row(self) -> dict:
        r = asdict(self)
        r["shape"] = json.dumps(self.shape, sort_keys=True)
        return r


@dataclass
class DeviceRun:
    """What the child process reports: the check, the timing and the SDK it ran on."""

    check: str
    outcomes: list[str]
    measured_us: float | None
    method: str
    samples_us: list[float] = field(default_factory=list)
    sdk: dict = field(default_factory=dict)


def _launch(ladder, version, args):
    """Call the version's kernel (the SDK's nki.jit in a neuron-bound process) with NumPy arguments."""
    ver = ladder.version(version)
    kernel = ladder.kernel(ver)
    call = kernel[ver.lnc] if ver.lnc > 1 else kernel
    out = call(*ladder.version_args(ver, args))
    return out if isinstance(out, tuple) else (out,)


def _neuron_bound() -> bool:
    from nki_moe.sim.install import active_backend

    return active_backend() == "neuron"


def parse_profile_summary(summary) -> float:
    """Device time in µs from ``<profiler> view --output-format summary-json``: its ``total_time`` field
    (seconds). Accepts the JSON text (anything before the first ``{`` is dropped), a dict, a dict under one
    key (the NEFF's) or a list (its first entry)."""
    if isinstance(summary, str):
        start = summary.find("{")
        if start < 0:
            raise ValueError(f"no JSON in the profiler's summary output: {summary[:200]!r}")
        summary = json.loads(summary[start:])
    entry = summary[0] if isinstance(summary, list) else summary
    if isinstance(entry, dict) and "total_time" not in entry and len(entry) == 1:
        entry = next(iter(entry.values()))  # {"<neff or hash>": {...}}
    if not isinstance(entry, dict) or "total_time" not in entry:
        keys = sorted(entry)[:20] if isinstance(entry, dict) else type(entry).__name__
        raise ValueError(f"no total_time in the profiler's summary: keys {keys}")
    return float(entry["total_time"]) * 1e6


def profiler() -> str | None:
    """The profiler on PATH: ``neuron-explorer`` (current name), else ``neuron-profile``, else None."""
    return next((tool for tool in PROFILERS if shutil.which(tool)), None)


def _profile(workdir: Path, run: Callable = subprocess.run, tool: str | None = None) -> float:
    """Capture the newest NEFF under ``workdir`` (its 2nd execution: no warm-up) and read its device time.

    [NEURON-PROFILE]: ``NEURON_FRAMEWORK_DEBUG=1`` keeps the NEFF; ``capture -n x.neff -s x.ntff
    --profile-nth-exec=2`` writes ``x_exec_2.ntff``; ``view ... --output-format summary-json`` summarises it.
    """
    tool = tool or profiler() or PROFILERS[-1]
    neffs = sorted(workdir.rglob("*.neff"), key=lambda p: p.stat().st_mtime)
    if not neffs:
        raise FileNotFoundError(
            f"no .neff under {workdir} after the run with NEURON_FRAMEWORK_DEBUG=1; use method='wallclock'"
        )
    neff = neffs[-1]
    ntff = neff.with_suffix(".ntff")
    run(
        [tool, "capture", "-n", str(neff), "-s", str(ntff), "--profile-nth-exec=2"],
        check=True,
        capture_output=True,
    )
    traces = sorted(neff.parent.glob(f"{neff.stem}*.ntff"), key=lambda p: p.stat().st_mtime)
    trace = traces[-1] if traces else ntff
    view = run(
        [tool, "view", "-n", str(neff), "-s", str(trace), "--output-format", "summary-json"],
        check=True,
        capture_output=True,
        text=True,
    )
    return parse_profile_summary(view.stdout)


def run_on_device(
    ladder,
    version: str,
    *,
    seed: int | None = None,
    iters: int = 20,
    warmup: int = 3,
    method: str = "auto",
    workdir: str | Path | None = None,
    **shape,
) -> DeviceRun:
    """Compile version ``version`` with the SDK's nki.jit, run it on a NeuronCore, check it, time it.

    Runs in THIS process, whose ``nki`` must be the SDK's (``NKI_MOE_BACKEND=neuron``): the child of
    :func:`measure` calls it. The check is the op's ``compare`` against its NumPy reference on the same
    seeded inputs the emulator gets; a failed outcome is reported in ``check``, not raised.

    Raises:
        NeuronSdkMissing: the SDK is not installed (before anything runs).
        RuntimeError: the SDK is installed but this process's kernels are bound to the emulator.
    """
    require_sdk()
    if not _neuron_bound():
        raise RuntimeError(
            "run_on_device: nki in this process is the emulator (NKI_MOE_BACKEND=sim or imported before the "
            "SDK); call device.measure(), which runs the device part in its own process"
        )
    if method == "auto":
        method = "profile" if profiler() else "wallclock"
    if method not in ("profile", "wallclock"):
        raise ValueError(f"method must be 'auto', 'profile' or 'wallclock', got {method!r}")
    args = ladder.args(seed, **shape)
    outputs = _launch(ladder, version, args)  # compiles on the first call
    lowp, fp32 = ladder.expected(args, "bf16"), ladder.expected(args, "fp32")
    outcomes = list(ladder.compare(outputs, lowp, fp32))
    failed = [o.message for o in outcomes if not o]
    samples = []
    if method == "wallclock":
        for i in range(warmup + iters):
            fresh = ladder.args(seed, **shape)  # outside the timed call: kernels may write their inputs
            t0 = time.perf_counter()
            _launch(ladder, version, fresh)
            if i >= warmup:
                samples.append((time.perf_counter() - t0) * 1e6)
        measured = float(np.median(samples))
    else:
        measured = _profile(Path(workdir) if workdir else Path.cwd())
    return DeviceRun(
        failed[0] if failed else "ok",
        [o.message for o in outcomes],
        measured,
        method,
        samples,
        sdk_versions(),
    )


def _child_env(backend: str) -> dict:
    env = dict(os.environ)
    env["NKI_MOE_BACKEND"] = backend
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(paths.ROOT), env.get("PYTHONPATH", "")]))
    if backend == "neuron":
        env["NEURON_FRAMEWORK_DEBUG"] = "1"  # keep the NEFF for neuron-profile
    return env


def _child(
    command: str,
    op: str,
    version: str,
    target: str,
    shape: dict,
    extra: Sequence[str],
    backend: str,
    cwd: Path,
    timeout: float,
) -> dict:
    cmd = [sys.executable, "-m", "nki_moe.device", command, "--op", op, "--version", version]
    cmd += ["--target", target, "--shape", json.dumps(shape), *extra]
    env = _child_env(backend)
    env["NEURON_PLATFORM_TARGET_OVERRIDE"] = target
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"the {backend} child process ({' '.join(cmd[2:])}) failed with exit code {done.returncode}:\n"
            f"{done.stderr[-3000:]}"
        )
    return json.loads(lines[-1])


def estimate_us(ladder, version: str, target: str, **shape) -> float:
    """The cost model's estimate of ``version`` at ``shape`` on ``target`` (the emulator runs it here, or in
    a child process when this process's nki is the SDK's)."""
    if not _neuron_bound():
        return float(ladder.profile(version, target=target, trace_path=False, **shape).latency_us)
    out = _child("estimate", ladder.name, version, target, shape, [], "sim", paths.ROOT, 3600)
    return float(out["estimate_us"])


def measure(
    ladder,
    version: str,
    *,
    target: str | None = None,
    seed: int | None = None,
    iters: int = 20,
    warmup: int = 3,
    method: str = "auto",
    record: bool = True,
    folder: str | Path | None = None,
    timeout: float = 7200,
    **shape,
) -> Measured:
    """Run ``version`` of ``ladder`` on the device at ``shape``, beside its estimate; append the row.

    ``target`` is the chip this host has (trn2 or trn3; default the ladder's, ``ops.get(...).on(TARGET)``):
    it names the CSV and is the estimate's target.
    Compiles take minutes (docs/device.md); ``timeout`` bounds the child process.

    Raises:
        NeuronSdkMissing: the SDK is not installed (nothing runs).
        AssertionError: the device's outputs failed the op's check (the row is recorded first).
    """
    require_sdk()
    target = target or ladder.target
    ver = ladder.version(version).name
    work = paths.base() / "build" / "device" / f"{ladder.name}_{ver}_{target}"
    work.mkdir(parents=True, exist_ok=True)
    extra = ["--iters", str(iters), "--warmup", str(warmup), "--method", method, "--workdir", str(work)]
    if seed is not None:
        extra += ["--seed", str(seed)]
    run = _child("run", ladder.name, ver, target, shape, extra, "neuron", work, timeout)
    m = Measured(
        ladder.name,
        ver,
        ladder.version(ver).kernel,
        dict(shape),
        target,
        estimate_us(ladder, ver, target, **shape),
        run["measured_us"],
        run["method"],
        run["check"],
        " ".join(f"{k}=={v}" for k, v in run.get("sdk", {}).items()),
        time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    if record:
        append_measurement(m, folder)
    assert m.check == "ok", f"{ladder.name} {ver} {shape} on {target}: the device's outputs fail: {m.check}"
    return m


# ---- the measurements file -------------------------------------------------------------------------------
def measurements_path(target: str, folder: str | Path | None = None) -> Path:
    """``<folder>/measured_<target>.csv``; the folder defaults to ``<base>/results`` (``paths.base()``)."""
    from nki_moe.perf.hardware import HARDWARE

    if target not in HARDWARE:
        raise ValueError(f"unknown target {target!r}: expected one of {', '.join(HARDWARE)}")
    return (Path(folder) if folder is not None else paths.base() / "results") / f"measured_{target}.csv"


def append_measurement(m: Measured, folder: str | Path | None = None) -> Path:
    """Append ``m`` to measured_<target>.csv (header on a new file); earlier rows are never rewritten."""
    path = measurements_path(m.target, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerow(m.row())
    return path


def load_measurements(target: str | None = None, folder: str | Path | None = None) -> list[Measured]:
    """Every recorded measurement (of ``target``, or of every target), oldest first; [] when none."""
    from nki_moe.perf.hardware import HARDWARE

    targets = [target] if target else list(HARDWARE)
    out = []
    for t in targets:
        path = measurements_path(t, folder)
        if not path.exists():
            continue
        with path.open(newline="") as f:
            for r in csv.DictReader(f):
                out.append(
                    Measured(
                        r["op"],
                        r["version"],
                        r["kernel"],
                        json.loads(r["shape"]),
                        r["target"],
                        float(r["estimate_us"]),
                        float(r["measured_us"]) if r["measured_us"] not in ("", "None") else None,
                        r["method"],
                        r["check"],
                        r.get("sdk", ""),
                        r.get("timestamp", ""),
                    )
                )
    return out


def measured_column(op: str, target: str, key: str = "T", folder=None) -> dict:
    """{(version, size of ``key``): measured µs} of ``op`` on ``target``, the latest row of each winning."""
    return {
        (m.version, m.shape.get(key)): m.measured_us
        for m in load_measurements(target, folder)
        if m.op == op and m.check == "ok" and m.measured_us is not None
    }


def sweep_table(sweep, op: str, target: str, folder=None, floatfmt: str = ".2f") -> str:
    """``Sweep.table`` with a measured column beside the estimate ("-" where nothing was measured)."""
    from nki_moe.tables import format_table

    meas = measured_column(op, target, sweep.key, folder)
    body = [
        (
            r["version"],
            r[sweep.key],
            r["latency_us"],
            meas.get((r["version"], r[sweep.key])),
            r["roofline_us"],
            r["pct_roofline"],
        )
        for r in sweep.rows
        if r["target"] == target
    ]
    headers = ["version", sweep.key, "µs (est.)", "µs (measured)", "floor µs", "% roof"]
    return format_table(body, headers, floatfmt=floatfmt)


def comparison_table(target: str | None = None, folder=None) -> str | None:
    """Every measurement beside its estimate (notebook 00); None when nothing was measured yet."""
    from nki_moe.tables import format_table

    rows = load_measurements(target, folder)
    if not rows:
        return None
    body = [
        (
            m.target,
            m.op,
            m.version,
            " ".join(f"{k}={v}" for k, v in m.shape.items()),
            m.estimate_us,
            m.measured_us,
            m.ratio,
            m.method,
            m.check,
        )
        for m in rows
    ]
    headers = [
        "target",
        "op",
        "version",
        "shape",
        "µs (est.)",
        "µs (measured)",
        "meas/est",
        "method",
        "check",
    ]
    return format_table(body, headers, floatfmt=".3g")


def calibration_rows(target: str | None = None, folder=None, reestimate: bool = False) -> list[dict]:
    """The measurements as calibration points for the cost model's fit: {key, op, version, shape, hardware,
    measured_us, estimate_us, error} (error = estimate / measured − 1, the calibration table's sign).

    Only passing device-timed rows (``method="profile"``; wall-clock rows include the host) count.
    ``reestimate``: recompute each estimate with the current cost model (after a change to it).
    """
    from nki_moe import ops

    out = []
    for m in load_measurements(target, folder):
        if m.check != "ok" or m.method != "profile" or not m.measured_us:
            continue
        est = m.estimate_us
        if reestimate:
            est = estimate_us(ops.get(m.op), m.version, m.target, **m.shape)
        shape = "_".join(f"{k}{v}" for k, v in m.shape.items())
        out.append(
            {
                "key": f"measured_{m.op}_{m.version}_{shape}_{m.target}",
                "op": m.op,
                "version": m.version,
                "shape": m.shape,
                "hardware": m.target,
                "measured_us": m.measured_us,
                "estimate_us": est,
                "error": est / m.measured_us - 1.0,
            }
        )
    return out


# ---- the child process -----------------------------------------------------------------------------------
def _cli(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Device side of nki_moe.device (run by measure())")
    parser.add_argument("command", choices=["run", "estimate", "check-sdk"])
    parser.add_argument("--op")
    parser.add_argument("--version")
    parser.add_argument("--target", default=paths.DEFAULT_TARGET)
    parser.add_argument("--shape", default="{}", help="JSON: the op's shape arguments")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--method", default="auto")
    parser.add_argument("--workdir", default=None)
    a = parser.parse_args(argv)
    if a.command == "check-sdk":
        try:
            require_sdk()
        except NeuronSdkMissing as err:
            print(err, file=sys.stderr)
            return 2
        print(json.dumps(sdk_versions()))
        return 0
    if a.command == "run":
        try:
            require_sdk()  # before nki_moe.ops binds the kernels' nki
        except NeuronSdkMissing as err:
            print(err, file=sys.stderr)
            return 2
    from nki_moe import ops

    ladder = ops.get(a.op).on(a.target)
    shape = json.loads(a.shape)
    if a.command == "estimate":
        print(json.dumps({"estimate_us": estimate_us(ladder, a.version, a.target, **shape)}))
        return 0
    run = run_on_device(
        ladder,
        a.version,
        seed=a.seed,
        iters=a.iters,
        warmup=a.warmup,
        method=a.method,
        workdir=a.workdir,
        **shape,
    )
    print(json.dumps(asdict(run)))
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
