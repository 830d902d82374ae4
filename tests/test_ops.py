"""The op registry: every entry resolves (kernels, reference, notebook, figures, tests); the README agrees."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

from nki_moe import ops

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(ops.OPS))
def test_entry_resolves(name):
    op = ops.get(name)
    for v in op.versions:
        assert callable(op.kernel(v)), f"{name} {v.name}: {op.module}.{v.kernel} missing"
    assert [v.name for v in op.versions] == [f"v{i}" for i in range(len(op.versions))]
    assert inspect.signature(op.reference).parameters.get("dtype"), f"{name}: reference takes no dtype"
    for path in (op.notebook, *op.tests):
        assert (ROOT / path).is_file(), f"{name}: {path} does not exist"
    for stem in op.figures:
        for ext in ("png", "csv"):
            assert (ROOT / "figures" / f"{stem}.{ext}").is_file(), f"{name}: figures/{stem}.{ext} missing"
        assert stem.startswith(Path(op.notebook).name[:3]), (
            f"{name}: figure {stem} not numbered as its notebook"
        )


def test_every_kernel_version_is_registered():
    """Each kernel module's public *_vN functions are exactly the registered versions of its ops."""
    modules: dict[str, set[str]] = {}
    for op in ops.OPS.values():
        modules.setdefault(op.module, set()).update(v.kernel for v in op.versions)
    for module, registered in modules.items():
        defined = {n for n in vars(importlib.import_module(module)) if re.fullmatch(r"[a-z0-9_]+_v\d+", n)}
        assert defined == registered, (
            f"{module}: defined {sorted(defined)} vs registered {sorted(registered)}"
        )


def test_readme_op_table_equals_the_registry():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert ops.readme_table() in readme, "README's op table differs from nki_moe.ops.readme_table()"


def test_every_kernel_notebook_is_in_the_readme_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        assert f"`{nb.name}`" in readme, f"README's notebook table lacks {nb.name}"
