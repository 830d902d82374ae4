"""nki_moe.export: the single-file submission parses, defines what the harness imports, embeds the workbook's
kernels unchanged (emulated bit-identically), runs nothing device-only at import, and names its command."""

from __future__ import annotations

import ast
import importlib.abc
import os
import sys
import types
from pathlib import Path

import pytest

from nki_moe import export, ops

# The competition harness checkout (aws-neuron/nki-moe), as tests/test_conformance.py finds it.
EXT = Path(os.environ.get("NKI_MOE_EXT", Path(__file__).resolve().parent.parent / "build" / "ext")).resolve()
HARNESS_MAIN = EXT / "nki-moe" / "main.py"
DEVICE_ONLY = (
    "neuronx_distributed",
    "neuronx_distributed_inference",
    "torch_neuronx",
    "torch_xla",
    "neuronxcc",
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    return export.export_submission(tmp_path_factory.mktemp("submission"))


def _top_level(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def test_the_file_parses_and_defines_every_name_the_harness_imports(exported):
    tree = ast.parse(exported.read_text(), str(exported))
    defined = _top_level(tree)
    assert set(export.HARNESS_NAMES) <= defined
    if HARNESS_MAIN.exists():  # the names main.py actually reads from the module it imports
        used = export.harness_imports(HARNESS_MAIN)
        assert used, "main.py reads no name from qwen_with_nki: the interface scan found nothing"
        assert used <= defined, f"main.py uses {sorted(used - defined)}, which the file does not define"
        assert used <= set(export.HARNESS_NAMES)
    # the classes NxDI reaches through it
    for name in (
        "Qwen3MoeInferenceConfig",
        "NeuronQwen3MoeModel",
        "NeuronQwen3MoeDecoderLayer",
        "NkiRMSNorm",
    ):
        assert name in defined


def test_harness_imports_reads_the_attributes_of_the_imported_module(tmp_path):
    main = tmp_path / "main.py"
    main.write_text(
        "import importlib\n"
        "def run(args):\n"
        "    qwen = importlib.import_module('qwen_with_nki')\n"
        "    other = object()\n"
        "    m = qwen.ModelA(qwen.helper(), other.not_this)\n"
        "    return qwen.ModelB\n"
    )
    assert export.harness_imports(main) == {"ModelA", "helper", "ModelB"}


def test_the_only_top_level_imports_are_torch_and_the_nki_api(exported):
    tree = ast.parse(exported.read_text())
    plain = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    plain |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
    assert plain == {"torch", "nki", "nki.isa", "nki.language"}
    guarded = [n for n in tree.body if isinstance(n, ast.Try)]
    assert len(guarded) == 1 and any(h.type.id == "ImportError" for h in guarded[0].handlers)
    inside = {n.module.split(".")[0] for n in ast.walk(guarded[0]) if isinstance(n, ast.ImportFrom)}
    assert inside == {"neuronx_distributed", "neuronx_distributed_inference"}


def test_every_embedded_kernel_runs_bit_identical_to_the_workbook(exported):
    checked = export.verify_embedded(exported)
    registered = [e for e in export.KERNELS if e.op in ops.OPS]
    assert [c[1] for c in checked] == [e.op for e in registered]  # every row of the table, none skipped
    for role, op, version, name, n in checked:
        assert n > 0, f"{name}: no instructions"
        assert version == (ops.get(op).final.name if _row(role).version is None else _row(role).version)
    mod = sys.modules["nki_moe_submission"]
    for _, _, _, name, _ in checked:  # the kernels run from the exported file, not the workbook's module
        fn = getattr(getattr(mod, name), "fn", getattr(mod, name))
        assert Path(fn.__code__.co_filename) == exported


def _row(role):
    return next(e for e in export.KERNELS if e.role == role)


def test_the_wired_kernels_are_the_chosen_versions(exported):
    text = exported.read_text()
    rows = {r.embed.role: r for r in export.collect(export.resolve())[2]}
    assert (
        rows["moe_decode"].kernel == ops.get("moe_layer_decode").final.kernel
        and rows["moe_decode"].embed.wired
    )
    assert rows["rmsnorm"].version == ops.get("rmsnorm").final.name
    assert rows["attention_decode"].version == ops.get("attention_block_decode").final.name
    assert f"{rows['moe_decode'].emitted}[2](" in text and f"{rows['rmsnorm'].emitted}[2](" in text
    assert f"{rows['attention_decode'].emitted}[" not in text  # embedded, not called (its note says why)


def test_a_changed_embedded_kernel_fails_the_check(tmp_path):
    table = (  # 515 rows per core: J_MAX rows go on each partition
        export.Embed("rmsnorm", "rmsnorm", None, True, {"T": 1030, "H": 256}),
        export.Embed("moe_decode", "moe_layer_decode", None, True, dict(T=1, H=512, inter=96, E=16, tp=1)),
    )
    path = export.export_submission(tmp_path, kernels=table)
    export.verify_embedded(path, table)  # as written: passes
    text = path.read_text()
    assert text.count("J_MAX = 4") == 1
    path.write_text(text.replace("J_MAX = 4", "J_MAX = 1"))  # same maths, other transfers
    with pytest.raises(AssertionError, match="instructions"):
        export.verify_embedded(path, table)
    path.write_text(text.replace("def rmsnorm_v3(x, w, eps):", "def rmsnorm_v3(x, w, eps):\n    eps = 0.5"))
    with pytest.raises(AssertionError, match="differs"):
        export.verify_embedded(path, table)


def test_helpers_two_modules_define_differently_are_renamed(tmp_path):
    # rmsnorm_v0 and moe_decode_v4 both call a module-level _check of their own
    table = (
        export.Embed("rmsnorm", "rmsnorm", "v0", True, {"T": 3, "H": 256}),
        export.Embed(
            "moe_decode", "moe_decode", "v4", True, {"T": 2, "H": 512, "inter": 96, "E": 16, "tp": 1}
        ),
    )
    path = export.export_submission(tmp_path, kernels=table)
    defined = _top_level(ast.parse(path.read_text()))
    assert {"_check", "_check_moe_decode", "lnc_share"} <= defined
    assert path.read_text().count("def lnc_share(") == 1  # a helper both import is embedded once
    assert [c[3] for c in export.verify_embedded(path, table)] == ["rmsnorm_v0", "moe_decode_v4"]


def test_a_row_of_an_unregistered_op_is_skipped_and_moe_prefill_is_one_row():
    table = export.KERNELS + (export.Embed("extra", "no_such_op"),)
    assert [r.embed.op for r in export.resolve(table)] == [e.op for e in export.KERNELS if e.op in ops.OPS]
    assert sum(e.op == "moe_prefill" for e in export.KERNELS) == 1


def test_the_wiring_needs_a_wired_moe_decode_kernel():
    table = tuple(e for e in export.KERNELS if e.role != "moe_decode")
    with pytest.raises(export.ExportError, match="moe_decode"):
        export.render(table)


def test_an_import_a_single_file_cannot_carry_is_refused(tmp_path, monkeypatch):
    src = tmp_path / "fake_kernels.py"
    src.write_text("import numpy as np\nimport nki\n\n@nki.jit\ndef k(x):\n    return np.zeros(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    row = export.Resolved(export.Embed("x", "x"), "v0", "k", 1, "fake_kernels")
    with pytest.raises(export.ExportError, match="np"):
        export.collect([row])


class _Blocker(importlib.abc.MetaPathFinder):
    """Makes the device-only packages unimportable, as on a host without the SDK."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in DEVICE_ONLY:
            raise ImportError(f"{name} is blocked by the test")
        return None


class _Poison(types.ModuleType):
    """A stand-in nki module: attributes resolve, calling anything raises (no NKI code may run)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def called(*args, **kwargs):
            raise AssertionError(f"{self.__name__}.{name} was called at import")

        if name == "jit":
            return lambda f=None, **kw: f if f is not None else (lambda g: g)
        return called


def test_nothing_device_only_runs_at_import(exported, monkeypatch):
    for name in list(sys.modules):
        if name.split(".")[0] in DEVICE_ONLY:
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_Blocker(), *sys.meta_path])
    nki = _Poison("nki")
    nki.isa, nki.language = _Poison("nki.isa"), _Poison("nki.language")
    for name, mod in (("nki", nki), ("nki.isa", nki.isa), ("nki.language", nki.language)):
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location("submission_import_check", exported)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # no NKI call, no device package: a call would raise
    cls = mod.NeuronQwen3MoeForCausalLM
    assert cls.get_config_cls() is mod.Qwen3MoeInferenceConfig
    assert cls.get_neuron_config_cls() is mod.NkiMoENeuronConfig
    assert cls._model_cls is mod.NeuronQwen3MoeModel
    with pytest.raises(ImportError, match="neuronx-distributed-inference"):
        cls("/model")  # using the class without the SDK: one clear error


def test_the_readme_gives_the_harness_command_with_the_assumed_flags(exported):
    readme = (exported.parent / "README.md").read_text()
    cmd = export.harness_command("trn3")
    for flag in ("--enable-nki", "--async-mode", "--on-device-sampling", "--logical-nc-config 2", "trn3"):
        assert flag in cmd
    joined = readme.replace(" \\\n    ", " ")
    assert cmd in joined and "qwen_with_nki.py" in readme
    assert cmd in exported.read_text().replace(" \\\n        ", " ")
    if HARNESS_MAIN.exists():  # every flag of the command is one main.py's parser defines
        main = HARNESS_MAIN.read_text()
        for tok in cmd.split():
            if tok.startswith("--"):
                assert f'"{tok}"' in main, f"main.py has no {tok}"


def test_the_command_line_writes_the_file(tmp_path, capsys):
    assert export.main(["--out", str(tmp_path), "--target", "trn2", "--no-verify"]) == 0
    assert (tmp_path / "qwen_with_nki.py").exists() and (tmp_path / "README.md").exists()
    assert "--platform-target trn2" in capsys.readouterr().out
