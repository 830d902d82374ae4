"""nki.isa enums (values from the 0.3 stubs, [NKI-ISA])."""

from __future__ import annotations

import enum
import types


class engine(enum.IntEnum):  # noqa: N801 (NKI spelling)
    unknown = 0
    tensor = 1
    scalar = 2
    gpsimd = 3
    dma = 4
    vector = 5
    sync = 6


class reduce_cmd(enum.IntEnum):  # noqa: N801
    idle = 0
    reset = 1
    reduce = 2
    reset_reduce = 3
    load_reduce = 4


class dge_mode(enum.IntEnum):  # noqa: N801
    unknown = 0
    swdge = 1
    hwdge = 2
    none = 3


class oob_mode(enum.IntEnum):  # noqa: N801
    error = 0
    skip = 1


class matmul_perf_mode(enum.IntEnum):  # noqa: N801
    none = 0
    double_row = 1


class nc_version(enum.IntEnum):  # noqa: N801
    gen2 = 2
    gen3 = 3
    gen4 = 4


class dma_engine(enum.IntEnum):  # noqa: N801
    dma = 1
    gpsimd_dma = 2


ENGINE_NAMES = {
    engine.tensor: "pe",
    engine.scalar: "act",
    engine.gpsimd: "pool",
    engine.dma: "dma",
    engine.vector: "dve",
    engine.sync: "sp",
}


# `nki.isa.constants`: the enums as a module of their own (nki-library imports `from nki.isa.constants import
# dge_mode, oob_mode` and `from nki.isa import constants`; [NKILIB]). install() registers it in sys.modules.
constants = types.ModuleType("nki.isa.constants", "Emulated nki.isa.constants: the NKI ISA enums.")
for _e in (engine, reduce_cmd, dge_mode, oob_mode, matmul_perf_mode, nc_version, dma_engine):
    setattr(constants, _e.__name__, _e)
constants.EMULATED = True
