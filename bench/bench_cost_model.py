"""Scheduler speed: instructions per second of nki_moe.perf.schedule on a decoder-layer-sized trace.

Prints timings only (never asserts). A 48k-instruction synthetic trace mixes 128-partition loads on 16
queues, matmuls into two rotating PSUM tiles, PSUM drains and stores, the pattern of a whole decoder layer;
the emulator trace of the 2048³ matmul v1 calibration kernel (3,200 instructions) is timed as well.

Run: .venv/bin/python bench/bench_cost_model.py
"""

from __future__ import annotations

import time

from nki_moe.perf.schedule import schedule_trace
from nki_moe.sim.trace import Access, Record


def _sb(op, mode, alloc, F, dtype="bfloat16", buffer="sbuf"):
    item = 4 if dtype == "float32" else 2
    return Access(op, mode, buffer, dtype, item, 0, ((F, 128), (1, F)), F, alloc)


def _hbm(op, mode, alloc, n, off):
    return Access(op, mode, "private_hbm", "bfloat16", 2, off, ((1, n),), 0, alloc)


def synthetic_layer(n_steps: int = 12000) -> list[Record]:
    """4 records per step: load, matmul, PSUM drain, store."""
    out = []
    for k in range(n_steps):
        out.append(
            Record(
                "dma_copy",
                "dma",
                [_hbm("src", "r", 1000, 65536, k * 65536), _sb("dst", "w", 1 + k % 4, 512)],
                "bench",
                1,
                0,
                {"dma_bytes": 131072, "queue": f"q{k % 16}"},
            )
        )
        out.append(
            Record(
                "nc_matmul",
                "pe",
                [
                    _sb("stationary", "r", 20, 128),
                    _sb("moving", "r", 1 + k % 4, 512),
                    _sb("dst", "w", 10 + k % 2, 512, "float32", "psum"),
                ],
                "bench",
                2,
                0,
                {"K": 128, "M": 128, "N": 512, "dtype": "bfloat16"},
            )
        )
        out.append(
            Record(
                "tensor_copy",
                "dve",
                [_sb("src", "r", 10 + k % 2, 512, "float32", "psum"), _sb("dst", "w", 30 + k % 2, 512)],
                "bench",
                3,
                0,
                {},
            )
        )
        out.append(
            Record(
                "dma_copy",
                "dma",
                [_sb("src", "r", 30 + k % 2, 512), _hbm("dst", "w", 2000, 65536, k * 65536)],
                "bench",
                4,
                0,
                {"dma_bytes": 131072, "queue": f"q{(k + 8) % 16}"},
            )
        )
    return out


def _time_schedule(label: str, trace) -> None:
    """Schedule ``trace`` on trn2; print the instruction rate and the estimated latency."""
    t = time.perf_counter()
    s = schedule_trace(trace, "trn2")
    dt = time.perf_counter() - t
    print(
        f"{label}: {len(trace)} instructions scheduled in {dt:.2f} s ({len(trace) / dt:,.0f} instr/s); "
        f"estimated latency {s.latency_ns / 1e3:.1f} us"
    )


def main() -> None:
    from nki_moe.perf.calibration import run_calibration_kernel

    _time_schedule("synthetic layer", synthetic_layer())
    _time_schedule("matmul_v1 emulator trace", run_calibration_kernel("mm_v1", "trn2"))


if __name__ == "__main__":
    main()
