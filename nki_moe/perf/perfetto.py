"""Chrome / Perfetto trace-event JSON of an estimated schedule (open it in https://ui.perfetto.dev).

One process per physical core, one thread (track) per compute engine and per DMA queue; overlapping DMAs
of one queue go to numbered lanes (``dma:q3 #2``) so each track holds non-overlapping slices in time order.
Timestamps are microseconds (the trace-event format's unit) of *estimated* time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nki_moe.perf.schedule import Schedule

__all__ = ["to_trace_events", "write_perfetto", "validate_trace_events"]

_ORDER = {"pe": 0, "act": 1, "dve": 2, "pool": 3, "sp": 4}


def _short(path: str) -> str:
    return os.path.basename(path) if path else "?"


def to_trace_events(sched: Schedule, trace, *, name: str = "kernel") -> dict:
    """Build the trace-event JSON object (``{"traceEvents": [...], ...}``).

    Args:
        sched: schedule from :func:`nki_moe.perf.schedule.schedule_trace`.
        trace: the emulator trace it was computed from (instruction names and source lines).
        name: label of the process tracks.
    Returns:
        A JSON-serialisable dict in the Chrome trace-event format.
    """
    records = list(trace)
    events: list[dict] = []
    tids: dict[tuple[int, str], int] = {}
    lanes: dict[tuple[int, str], list[float]] = {}

    def tid_for(p: int, label: str) -> int:
        key = (p, label)
        if key not in tids:
            base = _ORDER.get(label, 10)
            tids[key] = base * 1000 + len([k for k in tids if k[0] == p])
            events.append(
                {"ph": "M", "name": "thread_name", "pid": p, "tid": tids[key], "args": {"name": label}}
            )
            events.append(
                {
                    "ph": "M",
                    "name": "thread_sort_index",
                    "pid": p,
                    "tid": tids[key],
                    "args": {"sort_index": tids[key]},
                }
            )
        return tids[key]

    for p in sorted({int(x) for x in sched.pid}) or [0]:
        events.append(
            {
                "ph": "M",
                "name": "process_name",
                "pid": p,
                "args": {"name": f"{name} core {p} ({sched.hw.name}, estimated)"},
            }
        )
    order = sorted(range(len(records)), key=lambda i: (sched.busy_start[i], i))
    for i in order:
        rec = records[i]
        p = int(sched.pid[i])
        label = sched.track[i]
        s, e = float(sched.busy_start[i]), float(sched.end[i])
        if sched.engine[i] == "dma":
            ends = lanes.setdefault((p, label), [])
            lane = next((k for k, t in enumerate(ends) if t <= s + 1e-9), None)
            if lane is None:
                lane = len(ends)
                ends.append(e)
            else:
                ends[lane] = e
            label = label if lane == 0 else f"{label} #{lane + 1}"
        args = {
            "loc": f"{_short(rec.file)}:{rec.line}",
            "index": i,
            "cost": sched.rules[i],
            "issue_ns": round(float(sched.start[i]), 3),
        }
        for k in ("K", "M", "N", "dma_bytes", "queue", "op", "op0", "op1"):
            if k in rec.info:
                args[k] = rec.info[k]
        events.append(
            {
                "ph": "X",
                "name": rec.opcode,
                "cat": sched.engine[i],
                "pid": p,
                "tid": tid_for(p, label),
                "ts": s / 1e3,
                "dur": max(e - s, 0.0) / 1e3,
                "args": args,
            }
        )
    return {
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {"hardware": sched.hw.name, "note": "estimated by nki_moe.perf (cost model)"},
    }


def validate_trace_events(obj: dict) -> None:
    """Check the trace-event schema subset we emit; raise ``ValueError`` on the first problem.

    Checks: top-level ``traceEvents`` list; each event has ph/pid/tid (M events: name + args); X events have
    numeric ts ≥ 0 and dur ≥ 0; per (pid, tid) the X slices are in non-decreasing ts order and do not overlap.
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("traceEvents"), list):
        raise ValueError("missing traceEvents list")
    last: dict = {}
    for k, ev in enumerate(obj["traceEvents"]):
        for f in ("ph", "pid", "name"):
            if f not in ev:
                raise ValueError(f"event {k} lacks {f!r}: {ev}")
        if ev["ph"] == "M":
            if "args" not in ev or "tid" not in ev and ev["name"] != "process_name":
                raise ValueError(f"metadata event {k} malformed: {ev}")
            continue
        if ev["ph"] != "X":
            raise ValueError(f"event {k}: unexpected phase {ev['ph']!r}")
        if (
            "tid" not in ev
            or not isinstance(ev.get("ts"), (int, float))
            or not isinstance(ev.get("dur"), (int, float))
        ):
            raise ValueError(f"event {k}: X events need tid, numeric ts and dur: {ev}")
        if ev["ts"] < 0 or ev["dur"] < 0:
            raise ValueError(f"event {k}: negative ts/dur")
        key = (ev["pid"], ev["tid"])
        if key in last:
            prev_ts, prev_end = last[key]
            if ev["ts"] < prev_ts or ev["ts"] < prev_end - 1e-6:
                raise ValueError(
                    f"event {k}: track {key} not monotone / overlapping ({ev['ts']} < {prev_end})"
                )
        last[key] = (ev["ts"], ev["ts"] + ev["dur"])


def write_perfetto(sched: Schedule, trace, path: str | Path, *, name: str = "kernel") -> Path:
    """Write the trace-event JSON to ``path`` (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = to_trace_events(sched, trace, name=name)
    validate_trace_events(obj)
    path.write_text(json.dumps(obj, separators=(",", ":")))
    return path
