"""Perfetto / Chrome trace-event export: schema, tracks, monotone timestamps."""

from __future__ import annotations

import json

import pytest
from _records import dma, hbm, matmul, rec, sb

from nki_moe.perf.perfetto import to_trace_events, validate_trace_events, write_perfetto
from nki_moe.perf.schedule import schedule_trace


def _trace():
    out = []
    for k in range(6):
        # alternate halves of the partitions: consecutive q0 DMAs use disjoint engines and overlap in time
        out.append(
            dma(
                sb("dst", "w", 1 + k, P=64, p0=64 * (k % 2), F=1024),
                hbm("src", "r", 100, 64 * 1024),
                queue="q0",
            )
        )
        out.append(
            matmul(
                sb("dst", "w", 50, dtype="float32", buffer="psum"),
                sb("st", "r", 1 + k, P=64, F=128),
                sb("mv", "r", 1 + k, P=64),
                K=64,
            )
        )
        out.append(
            rec(
                "tensor_copy", "dve", [sb("src", "r", 50, dtype="float32", buffer="psum"), sb("dst", "w", 60)]
            )
        )
    return out


def test_trace_events_schema(tmp_path):
    trace = _trace()
    sched = schedule_trace(trace, "trn2")
    obj = to_trace_events(sched, trace, name="t")
    validate_trace_events(obj)
    xs = [e for e in obj["traceEvents"] if e["ph"] == "X"]
    assert len(xs) == len(trace)
    names = {e["args"]["name"] for e in obj["traceEvents"] if e["name"] == "thread_name"}
    assert {"pe", "dve"} <= names and any(n.startswith("dma:q0") for n in names)
    assert len([n for n in names if n.startswith("dma:q0")]) >= 2  # overlapping DMAs of q0 get lanes
    assert all("loc" in e["args"] and e["args"]["loc"].startswith("synthetic.py") for e in xs)
    path = write_perfetto(sched, trace, tmp_path / "t.json", name="t")
    assert json.loads(path.read_text())["traceEvents"]


def test_validator_rejects_overlap():
    bad = {
        "traceEvents": [
            {"ph": "X", "name": "a", "pid": 0, "tid": 1, "ts": 0.0, "dur": 2.0},
            {"ph": "X", "name": "b", "pid": 0, "tid": 1, "ts": 1.0, "dur": 1.0},
        ]
    }
    with pytest.raises(ValueError, match="overlapping"):
        validate_trace_events(bad)
    with pytest.raises(ValueError, match="traceEvents"):
        validate_trace_events({})
