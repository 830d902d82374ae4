"""Instruction trace: one record per executed instruction (input of the cost model and the MAC count)."""

from __future__ import annotations

import math
from collections import Counter


class Access:
    """One operand access of an instruction (derived fields are computed on demand).

    buffer: 'sbuf'|'psum'|'private_hbm'|'shared_hbm'; p_start/p_count: partitions (None for HBM);
    byte_lo/byte_hi: free-dim byte range within each partition, relative to the allocation start
    (HBM: byte range within the flat tensor); elems: elements per partition (HBM: total elements);
    nbytes: bytes moved; alloc: serial of the allocation.
    """

    __slots__ = ("operand", "mode", "buffer", "dtype", "itemsize", "off", "pat", "pstep", "alloc")

    def __init__(self, operand, mode, buffer, dtype, itemsize, off, pat, pstep, alloc):
        self.operand = operand
        self.mode = mode  # 'r' or 'w'
        self.buffer = buffer
        self.dtype = dtype
        self.itemsize = itemsize
        self.off = off  # element offset (view dtype units)
        self.pat = pat  # ((step, num), ...), partition pair first on chip
        self.pstep = pstep  # partition step in elements (0 for HBM)
        self.alloc = alloc

    @property
    def on_chip(self) -> bool:
        return self.pstep != 0

    @property
    def p_start(self):
        return self.off // self.pstep if self.pstep else None

    @property
    def p_count(self):
        return self.pat[0][1] if self.pstep else None

    @property
    def elems(self) -> int:
        dims = self.pat[1:] if self.pstep else self.pat
        return math.prod(n for _, n in dims)

    @property
    def nbytes(self) -> int:
        return math.prod(n for _, n in self.pat) * self.itemsize

    def _range(self):
        if self.pstep:
            base, dims = self.off % self.pstep, self.pat[1:]
        else:
            base, dims = self.off, self.pat
        lo = base + sum(min(0, s * (n - 1)) for s, n in dims)
        hi = base + sum(max(0, s * (n - 1)) for s, n in dims) + 1
        return lo * self.itemsize, hi * self.itemsize

    @property
    def byte_lo(self) -> int:
        return self._range()[0]

    @property
    def byte_hi(self) -> int:
        return self._range()[1]

    def __repr__(self) -> str:
        part = f"p[{self.p_start}:{self.p_start + self.p_count}]" if self.pstep else "hbm"
        lo, hi = self._range()
        return f"{self.operand}:{self.mode} {self.buffer} {part} bytes[{lo}:{hi}] {self.dtype} x{self.elems}"


class Record:
    """One executed instruction. `info` holds opcode-specific fields (matmul K/M/N, DMA bytes/queue, ...)."""

    __slots__ = ("opcode", "engine", "accesses", "file", "line", "pid", "info")

    def __init__(self, opcode, engine, accesses, file, line, pid, info):
        self.opcode = opcode
        self.engine = engine
        self.accesses = accesses
        self.file = file
        self.line = line
        self.pid = pid
        self.info = info

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"

    def __getattr__(self, name):
        # Convenience: rec.K, rec.dma_bytes, ... read from info.
        try:
            return self.__getattribute__("info")[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.info.items())
        return f"<{self.engine}.{self.opcode} p{self.pid} {self.location} {extra}>"


class Trace:
    """Executed instructions in program order (programs of an LNC launch interleave by barrier)."""

    def __init__(self):
        self.records: list[Record] = []
        # Allocation sites, for the cost model's buffer rotation: serial -> (buffer, file, line, bytes per
        # partition (HBM: total bytes), callers: (file, line) of the enclosing user frames up to the kernel,
        # so one helper line called from two places is two sites). Kernel inputs are not listed.
        self.allocs: dict[int, tuple[str, str, int, int, tuple]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def mac_count(self, include_transposes: bool = False) -> int:
        """NKI-MAC count: sum of K*M*N over executed matmuls (transposes excluded by default)."""
        total = 0
        for r in self.records:
            info = r.info
            if "K" in info and (include_transposes or not info.get("is_transpose", False)):
                total += info["K"] * info["M"] * info["N"]
        return total

    def counts(self) -> Counter:
        """Executed instructions per (engine, opcode)."""
        return Counter((r.engine, r.opcode) for r in self.records)

    def dma_bytes(self) -> int:
        return sum(r.info.get("dma_bytes", 0) for r in self.records)

    def summary(self) -> str:
        lines = [f"{len(self.records)} instructions, {self.mac_count()} MACs, {self.dma_bytes()} DMA bytes"]
        for (eng, op), n in sorted(self.counts().items()):
            lines.append(f"  {eng:5s} {op:28s} {n}")
        return "\n".join(lines)
