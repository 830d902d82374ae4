"""Calibration kernels of the cost model: NKI 2 re-creations of published kernels.

Sources: [DMA-INTRO], [AUTOTUNE], [MEGA].

They are not workbook kernels (no notebook builds them, no ``<op>_vN`` workbook ladder): each reproduces
the structure and shapes of one published kernel so that emulator + cost model can be compared with the
published time (``nki_moe.perf.calibration``). Modules: ``dma`` (single-engine DMA example), ``matmul``
(the 2048³ matmul MFU ladder v1–v4), ``moe`` (fused MoE decode layer), ``attention`` (fused attention decode
block). They use only ``nki``, ``nki.language`` and ``nki.isa``; the cost model needs the emulator's trace,
so import them with the emulator bound (``nki_moe.perf.calibration`` does that).
"""
