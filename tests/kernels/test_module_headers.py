"""Kernel module headers tell the truth: versions listed, Run line, Limits enforced by the entry checks.

Header format (every module with ``<op>_vN`` kernels):
    Versions (...):            one line ``    <op>_vN  <idea>`` per public ``*_vN`` function
    Run: ``nki_moe.sim.run(<last version>, ...)``
    Limits (...):              ``    <limit>  <vA>[-<vB>]  <reason>`` (columns separated by 2+ spaces)
Each stated limit is probed on every version in its scope: a just-inside input runs, a just-outside input
raises the kernel's own AssertionError (the emulator passes it through unwrapped, LNC=2 included).
"""

from __future__ import annotations

import importlib
import re

import ml_dtypes
import numpy as np
import pytest

import nki_moe.sim
from nki_moe.kernels.layouts import tile_weight

MODULES = ("matmul", "rmsnorm", "router")
VERSION_NAME = re.compile(r"[a-z][a-z0-9_]*_v\d+")
LIMIT_LINE = re.compile(r"^ {4}(\S.*?) {2,}(v\d+(?:-v\d+)?) {2,}\S")


def _module(name):
    return importlib.import_module(f"nki_moe.kernels.{name}")


def _section(doc: str, head: str) -> list[str]:
    """Lines of the header section starting with ``head`` (its first line included), up to a blank line."""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(head))
    out = []
    for line in lines[start:]:
        if not line.strip():
            break
        out.append(line)
    return out


def _public_versions(mod) -> list[str]:
    return sorted(n for n in vars(mod) if VERSION_NAME.fullmatch(n) and callable(getattr(mod, n)))


def _listed_versions(mod) -> list[str]:
    return [m.group(1) for line in _section(mod.__doc__, "Versions") if (m := re.match(r"^ {4}(\S+) ", line))]


def _limits(mod) -> list[tuple[str, str]]:
    rows = _section(mod.__doc__, "Limits")[1:]
    parsed = [LIMIT_LINE.match(line) for line in rows]
    assert all(parsed), f"unparsable Limits line(s): {[r for r, m in zip(rows, parsed) if not m]}"
    return [(m.group(1), m.group(2)) for m in parsed]


def _scope(mod, scope: str) -> list[str]:
    """Kernels of the versions vA..vB (every family of the module, e.g. rmsnorm_v2 and add_rmsnorm_v2)."""
    lo, _, hi = scope.partition("-")
    versions = range(int(lo[1:]), int((hi or lo)[1:]) + 1)
    return [n for n in _public_versions(mod) if int(n.rsplit("_v", 1)[1]) in versions]


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32).astype(ml_dtypes.bfloat16)


# ---- inputs per module: (kernel name, shape overrides) -> (args, lnc) ------------------------------------
def _matmul_case(name, T=1, K=128, N=128, n_cols=None):
    x, w = _rand((T, K)), _rand((K, N), 1)
    if int(name.rsplit("_v", 1)[1]) < 5:
        return (x, w), 2
    padded = np.zeros((128 * -(-K // 128), N), dtype=w.dtype)  # w_t always has whole 128-row k tiles
    padded[:K] = w
    return (x, tile_weight(padded), N if n_cols is None else n_cols), 2


def _rmsnorm_case(name, T=1, H=64):
    x, w = _rand((T, H)), _rand((H,), 1)
    args = (x, _rand((T, H), 2), w, 1e-6) if name.startswith("add_") else (x, w, 1e-6)
    return args, 1 if int(name.rsplit("_v", 1)[1]) < 2 else 2


def _router_case(name, T=1, H=128, E=8, lnc=None):
    return (_rand((T, H)), _rand((H, E), 1)), lnc or (1, 2, 1)[int(name.rsplit("_v", 1)[1])]


CASES = {"matmul": _matmul_case, "rmsnorm": _rmsnorm_case, "router": _router_case}

# (limit, scope) as stated in the header -> (just-inside inputs, just-outside inputs, whether versions outside
# the scope accept the just-outside inputs).
LIMITS = {
    "matmul": {
        ("T >= 1", "v0-v6"): ([{"T": 1}], [{"T": 0}], None),
        ("K % 128 == 0", "v0-v6"): ([{"K": 128}], [{"K": 192}], None),
        ("N % 128 == 0", "v4-v6"): ([{"N": 128}], [{"N": 192}], True),
        ("(nb - 1) * NB < N <= nb * NB", "v5-v6"): (
            [{"N": 256, "n_cols": 256}],
            [{"N": 256, "n_cols": 384}, {"N": 256, "n_cols": 128}],
            None,
        ),
    },
    "rmsnorm": {
        ("T >= 1", "v0-v3"): ([{"T": 1}], [{"T": 0}], None),
        ("8 <= H <= 8192", "v0-v3"): ([{"H": 8}, {"H": 8192}], [{"H": 7}, {"H": 8193}], None),
    },
    "router": {
        ("T >= 1", "v0-v2"): ([{"T": 1}], [{"T": 0}], None),
        ("H % 128 == 0", "v0-v2"): ([{"H": 128}], [{"H": 192}], None),
        ("8 <= E <= 512", "v0-v1"): ([{"E": 8}, {"E": 512}], [{"E": 7}, {"E": 513}], None),
        ("8 <= E <= 128", "v2"): ([{"E": 8}, {"E": 128}], [{"E": 7}, {"E": 129}], None),
        ("lnc == 1", "v2"): ([{"lnc": 1}], [{"lnc": 2}], True),
    },
}


def _run(mod_name, kernel, shape):
    args, lnc = CASES[mod_name](kernel, **shape)
    return nki_moe.sim.run(getattr(_module(mod_name), kernel), *args, lnc=lnc)


@pytest.mark.parametrize("mod_name", MODULES)
def test_header_lists_exactly_the_versions(mod_name):
    mod = _module(mod_name)
    listed = _listed_versions(mod)
    assert len(listed) == len(set(listed)), f"listed twice: {listed}"
    assert sorted(listed) == _public_versions(mod)


@pytest.mark.parametrize("mod_name", MODULES)
def test_run_line_names_the_last_version_and_runs(mod_name):
    mod = _module(mod_name)
    run_text = "\n".join(_section(mod.__doc__, "Run:"))
    exprs = [e for e in re.findall(r"``(.+?)``", run_text, re.S) if e.startswith("nki_moe.sim.run(")]
    assert exprs, run_text
    last = {}
    for name in _public_versions(mod):
        family, v = name.rsplit("_v", 1)
        last[family] = max(last.get(family, 0), int(v))
    named = {n for e in exprs for n in VERSION_NAME.findall(e)}
    assert f"{mod_name}_v{last[mod_name]}" in named, run_text
    assert named <= {f"{f}_v{v}" for f, v in last.items()}, f"Run names an older version: {named}"
    T, K, N = 2, 256, 256
    inputs = {"x": _rand((T, K)), "w": _rand((K, N), 1), "N": N, "tile_weight": tile_weight}
    if mod_name == "rmsnorm":
        inputs.update(w=_rand((K,), 1), residual=_rand((T, K), 2))
    inputs["w_gate"] = _rand((K, 16), 3)
    for expr in exprs:
        eval(expr, {"nki_moe": nki_moe, **vars(mod), **inputs})  # noqa: S307 - our own docstring


@pytest.mark.parametrize("mod_name", MODULES)
def test_stated_limits_are_the_probed_ones(mod_name):
    assert sorted(_limits(_module(mod_name))) == sorted(LIMITS[mod_name])


def _limit_cases():
    for mod_name in MODULES:
        for (limit, scope), (inside, outside, elsewhere) in LIMITS[mod_name].items():
            yield pytest.param(mod_name, scope, inside, outside, elsewhere, id=f"{mod_name}:{limit}:{scope}")


@pytest.mark.parametrize(("mod_name", "scope", "inside", "outside", "elsewhere"), list(_limit_cases()))
def test_stated_limit_is_enforced(mod_name, scope, inside, outside, elsewhere):
    mod = _module(mod_name)
    in_scope = _scope(mod, scope)
    assert in_scope, scope
    for kernel in in_scope:
        for shape in inside:
            _run(mod_name, kernel, shape)
        for shape in outside:
            with pytest.raises(AssertionError):
                _run(mod_name, kernel, shape)
    for kernel in sorted(set(_public_versions(mod)) - set(in_scope)) if elsewhere else ():
        for shape in outside:
            _run(mod_name, kernel, shape)
