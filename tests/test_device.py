"""nki_moe.device without hardware: the one clear error, the check and timing logic on a stand-in device,
the measurements file, the measured column and the calibration rows, and the child-process protocol."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import nki_moe.sim as sim
from nki_moe import device, ops

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def no_sdk(monkeypatch):
    monkeypatch.setattr(device, "_importable", lambda module: False)


@pytest.fixture()
def fake_sdk(monkeypatch):
    """The SDK "installed", kernels "on the device": the emulator stands in for the NeuronCore."""
    monkeypatch.setattr(device, "_importable", lambda module: True)
    monkeypatch.setattr(device, "_neuron_bound", lambda: True)
    monkeypatch.setattr(device, "sdk_versions", lambda: {"neuronx-cc": "2.29.0", "torch-neuronx": "2.9.0"})
    calls = []

    def launch(ladder, version, args):
        ver = ladder.version(version)
        calls.append(version)
        out = sim.run(ladder.kernel(ver), *ladder.version_args(ver, args), lnc=ver.lnc).outputs
        return out if isinstance(out, tuple) else (out,)

    monkeypatch.setattr(device, "_launch", launch)
    return calls


def test_without_the_sdk_one_error_names_each_package_and_the_install(no_sdk):
    assert device.missing() == ["neuronx-cc", "torch-neuronx"] and not device.available()
    with pytest.raises(device.NeuronSdkMissing) as err:
        device.require_sdk("--backend neuron")
    msg = str(err.value)
    assert isinstance(err.value, ImportError)
    for part in (
        "--backend neuron",
        "neuronx-cc",
        "torch-neuronx",
        "neuronxcc",
        "torch_neuronx",
        device.PIP_INDEX,
    ):
        assert part in msg, part
    assert "docs/device.md" in msg


def test_only_the_absent_packages_are_named(monkeypatch):
    monkeypatch.setattr(device, "_importable", lambda module: module != "torch_neuronx")
    assert device.missing() == ["torch-neuronx"]
    with pytest.raises(device.NeuronSdkMissing, match="torch-neuronx") as err:
        device.require_sdk()
    assert "neuronx-cc (" not in str(err.value)


def test_the_emulators_stand_in_neuronxcc_is_not_the_sdk():
    import sys

    if device._importable("neuronxcc"):
        pytest.skip("the Neuron SDK is installed here")
    assert "neuronxcc" in sys.modules  # the emulator's stand-in (sim.install)
    assert "neuronx-cc" in device.missing()


def test_every_entry_point_raises_before_running_anything(no_sdk, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("a child process was started without the SDK")

    monkeypatch.setattr(subprocess, "run", forbidden)
    op = ops.get("rmsnorm")
    with pytest.raises(device.NeuronSdkMissing):
        device.measure(op, "v3", T=4)
    with pytest.raises(device.NeuronSdkMissing):
        device.run_on_device(op, "v3", T=4)
    assert device._cli(["check-sdk"]) == 2
    assert not device.enabled()


def test_run_on_device_checks_against_the_reference_and_times(fake_sdk):
    op = ops.get("rmsnorm")
    run = device.run_on_device(op, "v3", method="wallclock", iters=3, warmup=1, T=5, H=256)
    assert run.check == "ok" and run.method == "wallclock"
    assert len(run.samples_us) == 3 and run.measured_us == pytest.approx(float(np.median(run.samples_us)))
    assert run.outcomes and all("ratio" in m for m in run.outcomes)
    assert fake_sdk == ["v3"] * 5  # the check run, one warm-up, three timed runs


def test_a_wrong_device_result_is_reported_not_hidden(fake_sdk, monkeypatch):
    monkeypatch.setattr(device, "_launch", lambda ladder, version, args: (np.zeros_like(args[0]),))
    run = device.run_on_device(ops.get("rmsnorm"), "v3", method="wallclock", iters=1, warmup=0, T=5, H=256)
    assert run.check != "ok" and "ratio" in run.check


def test_an_emulator_bound_process_is_sent_to_measure(monkeypatch):
    monkeypatch.setattr(device, "_importable", lambda module: True)
    with pytest.raises(RuntimeError, match="device.measure"):
        device.run_on_device(ops.get("rmsnorm"), "v3", T=4)


def test_profile_summary_is_read_in_microseconds():
    assert device.parse_profile_summary({"total_time": 1.5e-5}) == pytest.approx(15.0)
    assert device.parse_profile_summary('INFO ...\n{"n_7cf2": {"total_time": 5e-6}}') == pytest.approx(5.0)
    assert device.parse_profile_summary(
        [{"total_time": 2e-6, "mfu_estimated_percent": 0.1}]
    ) == pytest.approx(2)
    assert device.parse_profile_summary({"k.neff": {"total_time": 3e-6}}) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="total_time"):
        device.parse_profile_summary({"a": 1, "b": 2})


def test_profile_runs_capture_then_view_on_the_newest_neff(tmp_path):
    (tmp_path / "sub").mkdir()
    neff = tmp_path / "sub" / "graph.neff"
    neff.write_bytes(b"x")
    seen = []

    def runner(cmd, **kw):
        seen.append(cmd)
        if cmd[1] == "capture":  # the profiler names the trace of the 2nd execution <stem>_exec_2.ntff
            (neff.parent / "graph_exec_2.ntff").write_bytes(b"t")
        return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps({"total_time": 4.25e-5}))

    assert device._profile(tmp_path, runner, tool="neuron-explorer") == pytest.approx(42.5)
    assert seen[0][:2] == ["neuron-explorer", "capture"] and str(neff) in seen[0]
    assert "--profile-nth-exec=2" in seen[0]
    assert seen[1][:2] == ["neuron-explorer", "view"] and "summary-json" in seen[1]
    assert str(neff.parent / "graph_exec_2.ntff") in seen[1]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="wallclock"):
        device._profile(empty, runner)


def _child_run(check="ok", measured=12.5, method="profile"):
    def child(command, op, version, target, shape, extra, backend, cwd, timeout):
        assert command == "run" and backend == "neuron"
        return {"check": check, "measured_us": measured, "method": method, "sdk": {"neuronx-cc": "2.29.0"}}

    return child


def test_measure_appends_a_row_beside_the_estimate(fake_sdk, monkeypatch, tmp_path):
    monkeypatch.setattr(device, "_neuron_bound", lambda: False)  # the estimate is emulated here
    monkeypatch.setattr(device, "_child", _child_run())
    op = ops.get("rmsnorm")
    m = device.measure(op, "v3", target="trn2", folder=tmp_path, T=5, H=256)
    want = op.profile("v3", target="trn2", trace_path=False, T=5, H=256).latency_us
    assert m.estimate_us == pytest.approx(want) and m.measured_us == 12.5
    assert m.ratio == pytest.approx(12.5 / want) and m.kernel == "rmsnorm_v3"
    device.measure(op, "v2", target="trn2", folder=tmp_path, T=5, H=256)
    path = device.measurements_path("trn2", tmp_path)
    lines = path.read_text().splitlines()
    assert lines[0].split(",") == list(device.FIELDS) and len(lines) == 3  # header written once, appended
    back = device.load_measurements("trn2", tmp_path)
    assert [(r.version, r.shape, r.measured_us, r.check) for r in back] == [
        ("v3", {"T": 5, "H": 256}, 12.5, "ok"),
        ("v2", {"T": 5, "H": 256}, 12.5, "ok"),
    ]
    assert back[0].estimate_us == pytest.approx(m.estimate_us) and "neuronx-cc==2.29.0" in back[0].sdk
    assert device.load_measurements("trn3", tmp_path) == []
    device.measure(op.on("trn3"), "v3", folder=tmp_path, T=5, H=256)  # the target defaults to the op's
    assert [r.target for r in device.load_measurements("trn3", tmp_path)] == ["trn3"]


def test_a_failed_device_check_is_recorded_then_raised(fake_sdk, monkeypatch, tmp_path):
    monkeypatch.setattr(device, "_neuron_bound", lambda: False)
    monkeypatch.setattr(device, "_child", _child_run(check="y: ratio 9.0 > 2"))
    with pytest.raises(AssertionError, match="ratio 9.0"):
        device.measure(ops.get("rmsnorm"), "v3", target="trn3", folder=tmp_path, T=5, H=256)
    assert [r.check for r in device.load_measurements("trn3", tmp_path)] == ["y: ratio 9.0 > 2"]


def _rows(tmp_path):
    for version, shape, meas, method, check in (
        ("v3", {"T": 1}, 4.0, "profile", "ok"),
        ("v2", {"T": 1}, 6.0, "wallclock", "ok"),
        ("v3", {"T": 640}, 30.0, "profile", "ok"),
        ("v1", {"T": 1}, 9.0, "profile", "y: bad"),
    ):
        device.append_measurement(
            device.Measured(
                "rmsnorm", version, f"rmsnorm_{version}", shape, "trn2", 5.0, meas, method, check
            ),
            tmp_path,
        )


def test_the_measured_column_sits_beside_every_estimate(tmp_path):
    _rows(tmp_path)
    op = ops.get("rmsnorm")
    sweep = op.sweep(targets=("trn2",), T=(1,))
    table = device.sweep_table(sweep, "rmsnorm", "trn2", tmp_path)
    lines = {ln.split()[0]: ln for ln in table.splitlines()[2:]}
    assert "µs (measured)" in table.splitlines()[0]
    assert "4.00" in lines["v3"] and "6.00" in lines["v2"]
    assert "9.00" not in lines["v1"]  # a failed check is not a measurement
    assert device.measured_column("rmsnorm", "trn2", "T", tmp_path) == {
        ("v3", 1): 4.0,
        ("v2", 1): 6.0,
        ("v3", 640): 30.0,
    }


def test_the_comparison_and_the_calibration_rows(tmp_path):
    assert device.comparison_table("trn2", tmp_path) is None
    _rows(tmp_path)
    table = device.comparison_table("trn2", tmp_path)
    assert "meas/est" in table and "T=640" in table and "wallclock" in table
    cal = device.calibration_rows("trn2", tmp_path)
    assert [(c["version"], c["shape"]) for c in cal] == [("v3", {"T": 1}), ("v3", {"T": 640})]
    assert cal[0]["error"] == pytest.approx(5.0 / 4.0 - 1) and cal[0]["hardware"] == "trn2"
    assert len({c["key"] for c in cal}) == 2


def test_the_estimate_child_process_agrees_with_this_process():
    """The real subprocess protocol (backend sim): what measure() uses when this process's nki is real."""
    op = ops.get("rmsnorm")
    out = device._child(
        "estimate", "rmsnorm", "v3", "trn3", {"T": 5, "H": 256}, [], "sim", device.paths.ROOT, 600
    )
    want = op.profile("v3", target="trn3", trace_path=False, T=5, H=256).latency_us
    assert out["estimate_us"] == pytest.approx(want)


def test_the_run_child_refuses_without_the_sdk():
    if device.available():
        pytest.skip("the Neuron SDK is installed here")
    with pytest.raises(RuntimeError, match="neuronx-cc") as err:
        device._child("run", "rmsnorm", "v3", "trn2", {"T": 4}, [], "neuron", device.paths.ROOT, 600)
    assert device.PIP_INDEX in str(err.value)


def test_fit_script_reports_measurements_against_the_current_model(tmp_path, monkeypatch, capsys):
    """bench/fit_cost_model.py --measured: device-timed rows re-estimated, errors and the ladder's tau."""
    import importlib.util

    monkeypatch.setenv("NKI_MOE_OUT", str(tmp_path))
    spec = importlib.util.spec_from_file_location("fit_cost_model", ROOT / "bench" / "fit_cost_model.py")
    fit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fit)
    assert fit.measured_report("trn2") == 1, "no measurements yet: says so and fails"
    assert "no device-timed measurements" in capsys.readouterr().out
    shape = {"T": 8, "H": 512}
    for v, us in (("v0", 9.0), ("v1", 6.0), ("v2", 4.0)):
        device.append_measurement(
            device.Measured("rmsnorm", v, f"rmsnorm_{v}", shape, "trn2", 1.0, us, "profile", "ok")
        )
    # a wall-clock row (host included) and a failed check are not calibration points
    device.append_measurement(
        device.Measured("rmsnorm", "v3", "rmsnorm_v3", shape, "trn2", 1.0, 2.0, "wallclock", "ok")
    )
    assert fit.measured_report("trn2") == 0
    out = capsys.readouterr().out
    assert out.count("measured_rmsnorm_v") == 3 and "3 points" in out
    est = {v: device.estimate_us(ops.get("rmsnorm"), v, "trn2", **shape) for v in ("v0", "v1", "v2")}
    assert f"{est['v0']:9.2f}" in out, "each row is re-estimated with the current model"
    assert "3 versions, Kendall tau" in out
