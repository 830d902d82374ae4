"""Documented NKI APIs the emulator does not run, and the module `__getattr__` that reports them.

A documented name resolves to a stub (so `from nki.isa import topk` and `import nki.collectives` work);
calling it raises NkiUnsupportedError at the kernel line. A name that is not a documented API stays an
AttributeError naming the module and its closest known names.
"""

from __future__ import annotations

import difflib
import types

from .errors import NkiUnsupportedError

# Documented NKI names ([NKI-API] for nki / nki.language / nki.collectives, [NKI-ISA] and [ISA-NEW] for
# nki.isa) that the emulator does not run: name -> why, or what to use instead.
NOT_EMULATED = {
    "nki": {
        "baremetal": "NKI 1 only (NKI 2 runs a jitted kernel on NumPy arrays)",
        "benchmark": "NKI 1 only (NKI 2 profiles through the Neuron tools)",
        "profile": "NKI 1 only",
        "simulate_kernel": "NKI 1 only (use nki.simulate(kernel)(...))",
    },
    "nki.isa": {
        "activate2": "trn3 Scalar Engine instruction",
        "get_nc_sub_version": "",
        "nc_matmul_mx": "MX matmul (trn3)",
        "quantize_mx": "MX quantisation (trn3)",
        "topk": "use nisa.max8 + nisa.nc_find_index8",
    },
    "nki.language": {
        "fori_loop": "use nl.sequential_range / nl.dynamic_range",
        "while_loop": "use a Python loop on a register",
        "no_reorder": "",
        "gather_flattened": "",
        "dropout": "use nisa.dropout",
        "random_seed": "",
        "var": "use nisa.bn_stats + nisa.bn_aggr",
        "all_reduce": "NKI 1 only",
        "atomic_rmw": "NKI 1 only",
        "gemm_grid": "NKI 1 only",
        "loop_reduce": "NKI 1 only",
        "nc": "NKI 1 only (NKI 2 launches kernel[2] for LNC=2)",
        "spmd_dim": "NKI 1 only (NKI 2 launches kernel[2] for LNC=2)",
        "static_cast": "NKI 1 only (use nisa.tensor_copy into a tile of the new dtype)",
    },
    "nki.collectives": {
        name: "nki.collectives is not emulated"
        for name in (
            "all_reduce",
            "all_gather",
            "reduce_scatter",
            "all_to_all",
            "all_to_all_v",
            "collective_permute",
            "rank_id",
        )
    },
}


class NotEmulated:
    """Stand-in for a documented API the emulator does not run: using it raises NkiUnsupportedError."""

    __slots__ = ("qualname", "reason")

    def __init__(self, qualname: str, reason: str):
        self.qualname = qualname
        self.reason = reason

    def _raise(self):
        why = f" ({self.reason})" if self.reason else ""
        raise NkiUnsupportedError(
            f"not emulated (a documented NKI API){why}",
            instruction=self.qualname,
        )

    def __call__(self, *args, **kwargs):
        self._raise()

    def __getattr__(self, name: str):
        if name.startswith("__"):  # protocol probes (copy, inspect.unwrap) are not a use
            raise AttributeError(name)
        self._raise()

    def __repr__(self) -> str:
        return f"<{self.qualname}: not emulated>"


def module_getattr(module: str, namespace: dict):
    """A module-level `__getattr__` for `module` ('nki.isa', ...) whose own names are in `namespace`."""
    documented = NOT_EMULATED[module]

    def __getattr__(name: str):
        if name in documented:
            return NotEmulated(f"{module}.{name}", documented[name])
        if name.startswith("__"):
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        known = [n for n in namespace if not n.startswith("_")] + list(documented)
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; closest known names: {', '.join(close)}" if close else ""
        raise AttributeError(f"module {module!r} has no attribute {name!r}{hint}")

    return __getattr__


def stub_module(module: str) -> types.ModuleType:
    """A module holding only documented-but-not-emulated names (e.g. nki.collectives)."""
    mod = types.ModuleType(module, f"Emulated `{module}`: documented, not emulated (using it raises).")
    mod.__getattr__ = module_getattr(module, {})
    mod.EMULATED = True
    return mod
