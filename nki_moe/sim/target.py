"""Per-chip constants (trn1/trn2/trn3) and target-name resolution."""

from __future__ import annotations

import os
from dataclasses import dataclass

# [KLR] Trace.lean kernelEnv.
_ALIASES = {
    "trn1": "trn1",
    "gen2": "trn1",
    "inf2": "trn1",
    "trn2": "trn2",
    "gen3": "trn2",
    "trn3": "trn3",
    "gen4": "trn3",
}
DEFAULT_TARGET = "trn2"
ENV_TARGET = "NEURON_PLATFORM_TARGET_OVERRIDE"


@dataclass(frozen=True)
class Target:
    name: str
    nc_version: int
    sbuf_usable_bytes: int  # per partition (tile_size.total_available_sbuf_size)
    sbuf_bytes: int  # physical per partition
    matmul_n_fp32: int  # moving free-size limit with an fp32 PSUM dst
    matmul_n_bf16: int
    psum_banks: int = 8
    psum_bank_bytes: int = 2048
    partitions: int = 128

    @property
    def psum_bytes(self) -> int:
        return self.psum_banks * self.psum_bank_bytes


TARGETS = {
    "trn1": Target("trn1", 2, 180224, 192 * 1024, 512, 512),
    "trn2": Target("trn2", 3, 212984, 224 * 1024, 512, 512),
    "trn3": Target("trn3", 4, 245752, 256 * 1024, 4096, 8192),
}


def resolve_target(name: str | None = None) -> Target:
    """Target by explicit name, else $NEURON_PLATFORM_TARGET_OVERRIDE, else trn2."""
    raw = name if name is not None else os.environ.get(ENV_TARGET) or DEFAULT_TARGET
    key = _ALIASES.get(str(raw).strip().lower())
    if key is None:
        raise ValueError(f"unknown NKI target {raw!r}; use one of trn1/gen2, trn2/gen3, trn3/gen4")
    return TARGETS[key]


def target_name(name: str) -> str:
    return resolve_target(name).name
