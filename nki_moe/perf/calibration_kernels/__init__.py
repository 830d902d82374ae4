"""Calibration kernels of the cost model: NKI 2 re-creations of published measurements (trainium.md §5).

They are not workbook kernels: each reproduces the structure and shapes of one published kernel so that
emulator + cost model can be compared with the published time. They use only ``nki``, ``nki.language`` and
``nki.isa``; import them after ``nki_moe.sim.install()`` (``nki_moe.perf.calibration`` does that).
"""
