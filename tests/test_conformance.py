"""The conformance harness (bench/conformance.py): its framework on a tiny fake checkout of our own, and the
public sample kernels run unmodified when the checkouts exist (skipped otherwise)."""

from __future__ import annotations

import json
import os
import sys
import time
from importlib.machinery import PathFinder
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import conformance as C  # noqa: E402
import conformance_samples  # noqa: E402

# The folder holding the checkouts nki-library/, nki-samples/, nki-moe/ (plain clones of the aws-neuron
# repositories): $NKI_MOE_EXT, else build/ext in this repository. Absent: the real-kernel tests skip.
EXT = Path(os.environ.get("NKI_MOE_EXT", Path(__file__).resolve().parent.parent / "build" / "ext")).resolve()
SAMPLES_ROOT = EXT / "nki-samples"
MOE_ROOT = EXT / "nki-moe"

# A fake checkout: one folder per op with the kernel and its torch reference, as nki-library lays them out.
FAKE_KERNEL = '''\
import nki
import nki.isa as nisa
import nki.language as nl
import nonexistent_device_pkg.core.runtime as rt  # device-only import, unused by the kernels


@nki.jit
def add_kernel(a, b):
    """a + b for a, b [P <= 128, F]."""
    out = nl.ndarray(a.shape, dtype=a.dtype, buffer=nl.shared_hbm)
    a_sb = nl.ndarray(a.shape, dtype=a.dtype, buffer=nl.sbuf)
    b_sb = nl.ndarray(b.shape, dtype=b.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=a_sb, src=a)
    nisa.dma_copy(dst=b_sb, src=b)
    nisa.tensor_tensor(dst=a_sb, data1=a_sb, data2=b_sb, op=nl.add)
    nisa.dma_copy(dst=out, src=a_sb)
    return out


@nki.jit
def oversized_kernel(a, b):
    big = nl.ndarray((256, 4), dtype=a.dtype, buffer=nl.sbuf)  # MARK-ILLEGAL
    return big


@nki.jit
def python_error_kernel(a, b):
    return a.shape[7]  # MARK-PYTHON
'''
FAKE_REFERENCE = """\
import torch


def add_torch(a, b):
    return torch.from_numpy(a) + torch.from_numpy(b)
"""
PLACEHOLDERS = (
    "nonexistent_device_pkg",
    "nonexistent_device_pkg.core",
    "nonexistent_device_pkg.core.runtime",
)
MODULE = "conformance_fake_add"  # unique: the import cache outlives one test


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    """A checkout root holding kernels/add/{conformance_fake_add,add_torch}.py; removed from the import
    system afterwards."""
    root = tmp_path_factory.mktemp("fake_checkout")
    folder = root / "kernels" / "add"
    folder.mkdir(parents=True)
    (folder / f"{MODULE}.py").write_text(FAKE_KERNEL)
    (folder / "conformance_fake_add_torch.py").write_text(FAKE_REFERENCE)
    yield root
    for name in (MODULE, "conformance_fake_add_torch"):
        sys.modules.pop(name, None)
    if str(folder) in sys.path:
        sys.path.remove(str(folder))


def _line(marker: str) -> int:
    """Line number (1-based) of the fake kernel line carrying ``marker``."""
    return next(i for i, text in enumerate(FAKE_KERNEL.splitlines(), 1) if marker in text)


def _inputs():
    rng = np.random.default_rng(0)
    return rng.standard_normal((8, 16)).astype(np.float32), rng.standard_normal((8, 16)).astype(np.float32)


def _fake_case(root: Path, kernel: str = "add_kernel", reference=None, name: str = "fake.add") -> C.Case:
    folder = root / "kernels" / "add"

    def run():
        mod = C.load(MODULE, folder, placeholders=PLACEHOLDERS)
        return getattr(mod, kernel)(*_inputs())

    def ref():
        return C.load("conformance_fake_add_torch", folder).add_torch(*_inputs())

    return C.Case(name, f"kernels/add/{MODULE}.py", run, reference or ref, dtype="fp32", note="[8,16] fp32")


def test_match(fake_root):
    out = C.run_case(_fake_case(fake_root), fake_root)
    assert out.status == C.MATCH, out.error
    assert out.max_abs is not None and out.max_abs <= 1e-6
    assert (out.atol, out.rtol) == (C.tolerance("fp32").atol, C.tolerance("fp32").rtol)
    assert "nonexistent_device_pkg" not in sys.modules  # placeholders are gone after the import


def test_placeholder_raises_when_used(fake_root):
    mod = C.load(MODULE, fake_root / "kernels" / "add", placeholders=PLACEHOLDERS)
    with pytest.raises(ModuleNotFoundError, match="nonexistent_device_pkg.core.runtime.device"):
        mod.rt.device  # noqa: B018


def test_mismatch(fake_root):
    a, b = _inputs()
    case = _fake_case(fake_root, reference=lambda: torch.from_numpy(a) + 1.01 * torch.from_numpy(b))
    out = C.run_case(case, fake_root)
    assert out.status == C.MISMATCH
    assert out.max_abs == pytest.approx(0.01 * np.abs(b).max(), rel=1e-3)
    assert "elements outside atol" in out.error and not out.location


def test_output_count_mismatch(fake_root):
    a, b = _inputs()
    out = C.run_case(_fake_case(fake_root, reference=lambda: (a + b, a)), fake_root)
    assert out.status == C.MISMATCH and "1 output(s), the reference 2" in out.error


def test_validation_error_names_kernel_line(fake_root):
    case = _fake_case(fake_root, kernel="oversized_kernel", reference=lambda: pytest.fail("not reached"))
    out = C.run_case(case, fake_root)
    assert out.status == C.ERROR
    assert out.error.startswith("NkiValidationError: ndarray operand 'shape': partition dimension")
    assert "[at " not in out.error  # the location is its own field
    assert out.location == f"kernels/add/{MODULE}.py:{_line('MARK-ILLEGAL')}"
    assert out.emulator_frame.startswith("nki_moe/sim/") and "instr.py" not in out.emulator_frame  # the check
    table = C.format_table([out])
    assert f"{MODULE}.py:{_line('MARK-ILLEGAL')}: NkiValidationError" in table


def test_python_error_in_kernel(fake_root):
    out = C.run_case(_fake_case(fake_root, kernel="python_error_kernel"), fake_root)
    assert out.status == C.ERROR and out.error.startswith("IndexError: ")
    assert out.location == f"kernels/add/{MODULE}.py:{_line('MARK-PYTHON')}"
    assert out.emulator_frame == ""  # the kernel's own code raised, not the emulator


def test_import_error_is_the_cases_error(fake_root):
    case = C.Case("fake.missing", "kernels/none.py", lambda: C.load("no_such_kernel_module", fake_root), list)
    out = C.run_case(case, fake_root)
    assert (
        out.status == C.ERROR and out.error == "ModuleNotFoundError: No module named 'no_such_kernel_module'"
    )


def test_unusable_output_is_a_mismatch(fake_root):
    a, b = _inputs()
    case = C.Case("fake.none", "k.py", lambda: print("kernel says hi"), lambda: a + b, dtype="fp32")
    out = C.run_case(case, fake_root)
    assert out.status == C.MISMATCH and out.error.startswith("TypeError: ")
    assert out.stdout == "kernel says hi\n"  # captured, not printed into the table


def test_reference_error(fake_root):
    def broken():
        raise RuntimeError("reference exploded")

    out = C.run_case(_fake_case(fake_root, reference=broken), fake_root)
    assert out.status == C.REF_ERROR and out.error == "RuntimeError: reference exploded"


def test_timeout():
    out = C.run_case(C.Case("slow", "slow.py", lambda: time.sleep(5), list), timeout=0.2)
    assert out.status == C.ERROR and out.error.startswith("TimeoutError: ") and out.seconds < 2


def test_table_counts():
    outs = [
        C.Outcome("a", "a.py", C.MATCH, max_abs=0.0, atol=1e-5, rtol=1e-4),
        C.Outcome("b", "b.py", C.ERROR, atol=1e-2, rtol=2e-2, error="ValueError: x", location="b.py:3"),
    ]
    table = C.format_table(outs).splitlines()
    assert table[0].split(" | ")[:3] == ["kernel", "source file", "status"]
    assert table[-1] == "1/2 run unmodified and match"
    assert table[3].rstrip().endswith("b.py:3: ValueError: x")


def test_cli_missing_checkouts(tmp_path, capsys):
    rc = C.main(
        ["--library", str(tmp_path / "l"), "--samples", str(tmp_path / "s"), "--moe", str(tmp_path / "m")]
    )
    text = capsys.readouterr().out
    assert rc == 0
    assert (
        f"skipped: {tmp_path / 's'} not found (git clone https://github.com/aws-neuron/nki-samples)" in text
    )
    assert f"skipped: {tmp_path / 'm'} not found (git clone https://github.com/aws-neuron/nki-moe)" in text
    assert "no cases run" in text


def test_cli_only_json_strict(fake_root, tmp_path, monkeypatch, capsys):
    def build(root):
        return [
            _fake_case(root, name="fake.add"),
            _fake_case(root, kernel="oversized_kernel", name="fake.oversized"),
        ]

    monkeypatch.setattr(C, "suites", lambda: [("moe", build)])
    out_json = tmp_path / "out.json"
    assert C.main(["--moe", str(fake_root), "--only", "fake.add", "--json", str(out_json), "--strict"]) == 0
    assert "1/1 run unmodified and match" in capsys.readouterr().out
    rows = json.loads(out_json.read_text())
    assert [(r["name"], r["status"]) for r in rows] == [("fake.add", "match")]
    assert C.main(["--moe", str(fake_root), "--only", "fake", "--strict"]) == 1  # a prefix selects both
    assert "1/2 run unmodified and match" in capsys.readouterr().out
    assert C.main(["--moe", str(fake_root), "--only", "fake.ad,nope"]) == 0
    assert "--only: no case named fake.ad, nope in the checkouts given" in capsys.readouterr().out


# ---- the public kernels, unmodified --------------------------------------------------------------------

LIBRARY_ROOT = EXT / "nki-library"
TUTORIAL = [
    f"matmul_tutorial.nki_matmul_{v}_"
    for v in ("basic", "tiled", "hoist_load", "block_free_dimension", "fully_optimized")
]
MOE_SAMPLES = ["moe_sample.nki_rmsnorm_kernel", "moe_sample.nki_tensor_add_kernel"]


def _builders():
    """(checkout root, case builder) for every checkout."""
    import conformance_lib

    return [
        (SAMPLES_ROOT, conformance_samples.tutorial_cases),
        (MOE_ROOT, conformance_samples.moe_cases),
        (LIBRARY_ROOT, conformance_lib.cases),
    ]


def _params():
    # the builders touch no file: the case names are known without a checkout
    return [pytest.param(root, c.name, id=c.name) for root, build in _builders() for c in build(root)]


@pytest.fixture(scope="module")
def _restore_modules():
    """Undo what importing the checkouts did to the process: their sys.path entries, the modules loaded from
    them (the library has a top-level `test` package) and host-module stand-ins (a fake `scipy` would
    mislead later tests)."""
    before, path = set(sys.modules), list(sys.path)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - before:
        mod = sys.modules[name]
        from_ext = Path(getattr(mod, "__file__", None) or "/").resolve().is_relative_to(EXT)
        stand_in = getattr(mod, "__spec__", None) is None and PathFinder.find_spec(name.split(".")[0]) is None
        if from_ext or stand_in:
            del sys.modules[name]


@pytest.mark.slow  # ~20-30 s for the 29 kernels on a shared 2-core machine
@pytest.mark.parametrize(("root", "name"), _params())
def test_public_kernel_runs_unmodified_and_matches(root, name, _restore_modules):
    if not root.is_dir():
        pytest.skip(f"{root} not found (git clone https://github.com/aws-neuron/{root.name})")
    build = dict(_builders())[root]
    case = next(c for c in build(root) if c.name == name)
    out = C.run_case(case, root)
    assert out.status == C.MATCH, f"{out.status}: {out.location}: {out.error} ({out.emulator_frame})"


def test_sample_case_lists():
    """The sample builders name exactly the seven tutorial and competition kernels (no checkout needed)."""
    fake = Path("/nonexistent")
    assert [c.name for c in conformance_samples.tutorial_cases(fake)] == TUTORIAL
    assert [c.name for c in conformance_samples.moe_cases(fake)] == MOE_SAMPLES
    with pytest.raises(ValueError, match="neither"):
        conformance_samples.cases(fake)
