"""Roofline arithmetic and the plot helper."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from nki_moe.perf.hardware import get_hardware  # noqa: E402
from nki_moe.perf.roofline import (  # noqa: E402
    RooflinePoint,
    attainable_flops,
    compute_time,
    memory_time,
    plot_roofline,
    roofline_time,
)

TRN2 = get_hardware("trn2")


def test_attainable_and_times():
    assert attainable_flops(TRN2, 1.0) == pytest.approx(2.9e12)
    assert attainable_flops(TRN2, 1e4) == 667e12
    assert attainable_flops(TRN2, 1e4, "bf16", "core") == 79e12
    with pytest.raises(ValueError, match="intensity"):
        attainable_flops(TRN2, 0.0)
    assert memory_time(2.9e12, TRN2) == pytest.approx(1.0)
    assert memory_time(6_083_739_648, TRN2) * 1e3 == pytest.approx(2.0978, abs=1e-4)
    assert compute_time(667e12, TRN2) == pytest.approx(1.0)
    assert roofline_time(667e12, 1.0, TRN2) == pytest.approx(1.0)
    assert roofline_time(1.0, 2.9e12, TRN2) == pytest.approx(1.0)


def test_plot_roofline_columns():
    fig, ax = plt.subplots()
    cols = plot_roofline(ax, TRN2, [RooflinePoint("decode", 1.0), RooflinePoint("kernel", 50.0, flops=1e13)])
    plt.close(fig)
    assert cols["kind"] == ["roof", "roof", "point", "point"]
    assert cols["label"] == ["bf16", "fp8", "decode", "kernel"]
    assert cols["tflops"][2] == pytest.approx(2.9) and cols["tflops"][3] == pytest.approx(10.0)
    assert cols["intensity_flop_per_byte"][0] == pytest.approx(667 / 2.9)


def test_decode_step_floor_adds_collectives():
    from nki_moe.perf.collectives import decode_collectives
    from nki_moe.perf.roofline import decode_step_floor

    nbytes = 6_083_739_648  # the BF16 decode bytes per token of test_attainable_and_times
    floor = decode_step_floor(nbytes, TRN2)
    assert floor.kind == "estimate" and floor.hardware == "trn2"
    assert floor.memory_s == memory_time(nbytes, TRN2)  # the HBM term is the existing helper's
    assert floor.collective_s == pytest.approx(decode_collectives().total_s)
    assert floor.collectives.count == 96
    assert floor.memory_s * 1e3 == pytest.approx(2.0978, abs=1e-4)
    assert floor.collective_s * 1e3 == pytest.approx(1.153, abs=2e-3)
    assert floor.total_s == pytest.approx(floor.memory_s + floor.collective_s)
    assert decode_step_floor(nbytes, TRN2, tp=1).total_s == floor.memory_s
    trn3 = decode_step_floor(nbytes, get_hardware("trn3"))
    assert trn3.memory_s < floor.memory_s and trn3.collective_s == pytest.approx(floor.collective_s, rel=0.01)
    with pytest.raises(ValueError, match="nbytes"):
        decode_step_floor(-1.0, TRN2)
    with pytest.raises(ValueError, match="tokens"):
        decode_step_floor(nbytes, TRN2, tokens=0)
