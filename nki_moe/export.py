"""Export the workbook's chosen kernels as the competition's single submission file, ``qwen_with_nki.py``.

The competition harness ([MOE-HARNESS] ``main.py``) loads ``qwen_with_nki.py`` with ``--enable-nki`` and uses
one name from it, ``NeuronQwen3MoeForCausalLM`` (plus what NxDI calls on that class: ``get_config_cls``,
``get_neuron_config_cls``, ``convert_hf_to_neuron_state_dict``, ``load_hf_model``). A submission must be one
file. :func:`export_submission` writes that file:

* the kernels of :data:`KERNELS` (one row per harness call site: the op, the version, whether it is wired
  in), each as the source of its ``nki_moe/kernels/*.py`` function plus every module-level helper and
  constant it references, transitively (``nki_moe.kernels.tiles`` helpers inlined; names that two modules
  define differently are renamed, the rest keep their names), importing only ``nki``, ``nki.isa`` and
  ``nki.language``;
* the model classes the harness uses, subclasses of NxDI's own Qwen3-MoE classes that call those kernels
  (the file's header names every harness function it replaces);
* the configuration the workbook's estimates assume (on-device sampling, async mode, LNC=2), applied as
  defaults of the NeuronConfig, and the harness command in a README block.

Nothing device-only runs at import: the NxDI imports are guarded (without them the classes exist and raise
one clear error when instantiated), and ``nki.jit`` decorates without compiling. :func:`verify_embedded`
re-runs every embedded kernel, taken from the written file, in the emulator against the workbook's own
kernel (outputs bit-identical, same instruction count); tests/test_export.py runs it.

Run: ``python -m nki_moe.export [--out build/submission] [--no-verify]``. Details: docs/device.md.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import io
import keyword
import subprocess
import sys
import textwrap
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

from nki_moe import paths

__all__ = [
    "Embed",
    "KERNELS",
    "HARNESS_NAMES",
    "ASSUMED_FLAGS",
    "ExportError",
    "Resolved",
    "resolve",
    "collect",
    "render",
    "export_submission",
    "harness_command",
    "verify_embedded",
    "load_submission",
    "harness_imports",
    "main",
]

# The NKI API the kernels import, emitted once at the top of the file (the only imports kernels may use).
NKI_IMPORTS = {"nki": "import nki", "nisa": "import nki.isa as nisa", "nl": "import nki.language as nl"}
KERNEL_PACKAGE = "nki_moe.kernels"


@dataclass(frozen=True)
class Embed:
    """One kernel of the submission.

    role: the harness call site it serves (``rmsnorm``, ``moe_decode``, ``attention_decode``,
        ``moe_prefill``).
    op: its registry name (``nki_moe.ops``); a row whose op is not registered is skipped.
    version: the ladder version, ``None`` = the op's final version.
    wired: whether the generated model classes call it (``False``: embedded for the record, not called).
    check_shape: the (small) shape :func:`verify_embedded` runs it at, as ``op.args(**check_shape)``.
    note: why it is or is not wired (goes into the file's header).
    """

    role: str
    op: str
    version: str | None = None
    wired: bool = True
    check_shape: dict = field(default_factory=dict)
    note: str = ""


# The submission's kernels: adding a kernel is one row. Order = order in the file.
KERNELS: tuple[Embed, ...] = (
    Embed(
        "rmsnorm",
        "rmsnorm",
        None,
        True,
        {"T": 130, "H": 512},
        "decoder input / post-attention norms (prefill) and the final norm, NkiRMSNorm",
    ),
    Embed(
        "moe_decode",
        "moe_layer_decode",
        None,
        True,
        {"T": 1, "H": 512, "inter": 96, "E": 16, "tp": 1},
        "token generation: post-attention RMSNorm + router + top-8 + experts of one TP rank, then the "
        "TP all-reduce of its partial sum",
    ),
    Embed(
        "attention_decode",
        "attention_block_decode",
        None,
        False,
        {"L": 5, "cap": 8},
        "NOT wired: the kernel takes the cache position L as a trace-time Python int (loop bounds, "
        "slices), while NxDI traces the token-generation graph once with the position as a runtime "
        "tensor; wiring it needs a version that reads L from a register",
    ),
    Embed(
        "moe_prefill",
        "moe_prefill",
        None,
        False,
        {"T": 128, "H": 512, "inter": 96, "E": 16, "tp": 1},
        "context encoding MoE: embedded; wired once its signature and NxDI call site are settled",
    ),
)

# What main.py takes from the module it imports as ``qwen`` ([MOE-HARNESS] main.py: prepare_inference).
HARNESS_NAMES = ("NeuronQwen3MoeForCausalLM",)

# The configuration the workbook's end-to-end estimates assume; applied as NeuronConfig defaults (an
# explicit command-line value wins) and spelled out in the harness command.
ASSUMED_FLAGS = {
    "async_mode": True,  # host launches overlap device steps ([MOE-HARNESS] main.py --async-mode)
    "on_device_sampling": True,  # sampling inside the token-generation graph (--on-device-sampling)
    "logical_nc_config": 2,  # LNC=2: the kernels launch kernel[2] on the two cores of a logical core
}


class ExportError(RuntimeError):
    """The kernels cannot be embedded as asked (unknown version, an import the file cannot carry, ...)."""


# ---- resolving the table ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Resolved:
    """A :class:`Embed` row bound to the registry: op, version, kernel function, LNC, source module."""

    embed: Embed
    version: str
    kernel: str  # the function's name in the workbook module
    lnc: int
    module: str
    emitted: str = ""  # its name in the exported file (set by :func:`collect`)


def resolve(kernels: tuple[Embed, ...] | None = None) -> list[Resolved]:
    """The rows (default :data:`KERNELS`) whose op is registered, versions resolved (``None``: the final)."""
    from nki_moe import ops

    rows = []
    for e in KERNELS if kernels is None else kernels:
        if e.op not in ops.OPS:
            continue
        op = ops.get(e.op)
        ver = op.final if e.version is None else op.version(e.version)
        rows.append(Resolved(e, ver.name, ver.kernel, ver.lnc, op.module))
    return rows


# ---- collecting sources -------------------------------------------------------------------------------
@dataclass
class _Module:
    """A parsed kernel module: its top-level definitions and where each imported name comes from."""

    name: str
    path: Path
    lines: list[str]
    defs: dict  # name -> ast node (function, class or simple assignment)
    imported: dict  # local name -> ("nki", alias) | ("kernel", module, attr) | ("other", statement)


def _module(name: str, cache: dict) -> _Module:
    if name in cache:
        return cache[name]
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        raise ExportError(f"cannot locate the source of module {name}")
    path = Path(spec.origin)
    text = path.read_text()
    tree = ast.parse(text, str(path))
    defs, imported = {}, {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs[node.name] = node
        elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            for t in node.targets:
                defs[t.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            defs[node.target.id] = node
        elif isinstance(node, ast.Import):
            for a in node.names:
                local = a.asname or a.name.split(".")[0]
                kind = ("nki", local) if a.name.split(".")[0] == "nki" else ("other", ast.unparse(node))
                imported[local] = kind
        elif isinstance(node, ast.ImportFrom):
            for a in node.names:
                local = a.asname or a.name
                if node.module and node.module.startswith("nki_moe."):
                    imported[local] = ("kernel", node.module, a.name)
                elif node.module == "__future__":
                    continue
                else:
                    imported[local] = ("other", ast.unparse(node))
    cache[name] = _Module(name, path, text.splitlines(), defs, imported)
    return cache[name]


def _free_names(node: ast.AST) -> set[str]:
    """Every name a definition reads (locals included: a local that shadows a global pulls in a harmless
    extra definition, never a missing one)."""
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _source(mod: _Module, node: ast.AST) -> str:
    """The definition's text as written (decorators and comments kept)."""
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return "\n".join(mod.lines[first - 1 : node.end_lineno])


@dataclass
class _Item:
    key: tuple[str, str]  # (defining module, name)
    text: str
    module: _Module
    node: ast.AST
    local_map: dict = field(default_factory=dict)  # names in this text -> keys they refer to


def collect(rows: list[Resolved]) -> tuple[list[_Item], dict, list[Resolved]]:
    """Every definition the kernels of ``rows`` need, dependencies first, and the name each gets in the file.

    Returns:
        (items, {key: emitted name}, rows with ``emitted`` set).
    """
    cache: dict = {}
    order: list[tuple[str, str]] = []
    items: dict = {}

    def visit(module: str, name: str, trail: tuple) -> tuple[str, str]:
        mod = _module(module, cache)
        if name in mod.imported:
            kind = mod.imported[name]
            if kind[0] == "kernel":
                if not kind[1].startswith(KERNEL_PACKAGE):
                    raise ExportError(
                        f"{module} imports {name} from {kind[1]}: a kernel may only use nki and "
                        f"{KERNEL_PACKAGE} helpers in the single-file submission"
                    )
                return visit(kind[1], kind[2], trail)
            raise ExportError(f"{' -> '.join(trail)} uses {name!r}, imported in {module} by {kind[1]!r}")
        key = (module, name)
        if key in items:
            return key
        node = mod.defs[name]
        item = _Item(key, _source(mod, node), mod, node)
        items[key] = item  # before the dependencies: recursion terminates
        for ref in sorted(_free_names(node)):
            if ref in NKI_IMPORTS and mod.imported.get(ref, ("",))[0] == "nki":
                continue
            if ref in mod.defs or ref in mod.imported:
                if ref in mod.imported and mod.imported[ref][0] == "nki":
                    raise ExportError(f"{module} binds the NKI API as {ref!r}; use nki, nisa, nl")
                item.local_map[ref] = visit(module, ref, trail + (ref,))
        order.append(key)  # post-order: dependencies first
        return key

    roots = []
    for r in rows:
        mod = _module(r.module, cache)
        if r.kernel not in mod.defs:
            raise ExportError(f"{r.module} has no kernel {r.kernel}")
        roots.append(visit(r.module, r.kernel, (r.kernel,)))
    emitted, aliases = _names(order, items)
    out = [items[k] for k in order if k not in aliases]
    rows = [Resolved(r.embed, r.version, r.kernel, r.lnc, r.module, emitted[k]) for r, k in zip(rows, roots)]
    return out, emitted, rows


RESERVED = {"torch", "nn", "nki", "nisa", "nl", "math", "os", "sys", "warnings"}


def _names(order: list[tuple[str, str]], items: dict) -> tuple[dict, set]:
    """The name of each definition in the file, and the definitions not emitted (duplicates).

    A definition keeps its name unless another module's definition already took it. If the two are the
    same code (equal AST, referring to the same definitions: ``TOP_K = 8`` in two modules), the second is
    that one and is not emitted again; otherwise it becomes ``<name>_<module>`` (``_check_moe_decode``).
    """
    taken: dict = {}
    emitted, aliases = {}, set()
    for key in order:
        module, name = key
        item = items[key]
        other = taken.get(name)
        if other is not None and _same(items[other], item, emitted):
            emitted[key] = name
            aliases.add(key)
            continue
        short = module.rsplit(".", 1)[1]
        cand, n = name, 1
        while cand in RESERVED or cand in taken or keyword.iskeyword(cand):
            cand = f"{name}_{short}" if n == 1 else f"{name}_{short}{n}"
            n += 1
        taken[cand] = key
        emitted[key] = cand
    return emitted, aliases


def _same(a: _Item, b: _Item, emitted: dict) -> bool:
    """Whether two definitions are the same code with the same referents (comments and docstrings aside)."""
    if ast.dump(a.node) != ast.dump(b.node):
        return False
    return {n: emitted[k] for n, k in a.local_map.items()} == {n: emitted[k] for n, k in b.local_map.items()}


def _rename(text: str, mapping: dict[str, str]) -> str:
    """Rename the names of ``mapping`` in ``text`` by token (comments, strings and attributes untouched;
    keyword arguments of calls kept), then check no renamed name is still read."""
    if not mapping:
        return text
    toks = list(tokenize.generate_tokens(io.StringIO(text + "\n").readline))
    edits = []
    depth = 0
    prev = None
    for i, tok in enumerate(toks):
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        if tok.type == tokenize.NAME and tok.string in mapping:
            after = next((t for t in toks[i + 1 :] if t.type not in (tokenize.NL, tokenize.COMMENT)), None)
            is_attr = prev is not None and prev.type == tokenize.OP and prev.string == "."
            is_kwarg = (
                depth > 0 and after is not None and after.string == "=" and prev and prev.string in "(,"
            )
            if not is_attr and not is_kwarg:
                edits.append((tok.start, tok.end, mapping[tok.string]))
        if tok.type not in (
            tokenize.NL,
            tokenize.NEWLINE,
            tokenize.COMMENT,
            tokenize.INDENT,
            tokenize.DEDENT,
        ):
            prev = tok
    lines = text.split("\n")
    for (r0, c0), (_, c1), new in sorted(edits, reverse=True):
        lines[r0 - 1] = lines[r0 - 1][:c0] + new + lines[r0 - 1][c1:]
    out = "\n".join(lines)
    left = _free_names(ast.parse(textwrap.dedent(out))) & set(mapping)
    if left:  # e.g. inside an f-string, which Python 3.11 tokenizes as one string
        raise ExportError(f"could not rename {sorted(left)} in:\n{out[:400]}")
    return out


def _kernel_section(items: list[_Item], emitted: dict) -> str:
    blocks = []
    for it in items:
        mapping = {local: emitted[key] for local, key in it.local_map.items() if emitted[key] != local}
        own = it.key[1]
        if emitted[it.key] != own:
            mapping[own] = emitted[it.key]
        rel = (
            it.module.path.relative_to(paths.ROOT) if it.module.path.is_relative_to(paths.ROOT) else it.key[0]
        )
        blocks.append(f"# from {rel}\n{_rename(it.text, mapping)}")
    return "\n\n\n".join(blocks)


# ---- the harness side -------------------------------------------------------------------------------------
def harness_command(target: str = "trn3", model: str = "~/qwen-30b-a3b") -> str:
    """The exact harness command for the exported file (run from the nki-moe checkout)."""
    flags = " ".join(
        f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in ASSUMED_FLAGS.items()
    )
    return (
        f"python3 main.py --mode evaluate_all --enable-nki --platform-target {target} "
        f"--model-path {model}/hf_model --compiled-model-path {model}/traced_model {flags}"
    )


def _shell_lines(cmd: str, indent: str = "", width: int = 100) -> str:
    """``cmd`` broken before its options into lines joined by shell continuations (`` \\``)."""
    parts = cmd.replace(" --", "\0--").split("\0")
    lines, cur = [], parts[0]
    for p in parts[1:]:
        if len(indent) + len(cur) + len(p) + 3 > width:
            lines.append(cur)
            cur = p
        else:
            cur += " " + p
    lines.append(cur)
    return indent + (" \\\n" + indent + "    ").join(lines)


def _readme(rows: list[Resolved], target: str, commit: str) -> str:
    table = "\n".join(
        f"| {r.embed.role} | `{r.embed.op}` {r.version} | `{r.emitted}` (LNC={r.lnc}) | "
        f"{'yes' if r.embed.wired else 'no'} | {r.embed.note} |"
        for r in rows
    )
    return f"""# nki-moe workbook submission

`qwen_with_nki.py` here was written by `python -m nki_moe.export` from workbook commit `{commit}`.
It is the one file the competition harness (aws-neuron/nki-moe, `main.py`) loads with `--enable-nki`.

| call site | op, version | function in the file | wired | note |
|---|---|---|---|---|
{table}

## Run it

On a Trainium host with the harness checked out and the Neuron venv active (docs/device.md):

```bash
cp qwen_with_nki.py /path/to/nki-moe/
cd /path/to/nki-moe
rm -rf ~/qwen-30b-a3b/traced_model /var/tmp/neuron-compile-cache/*   # a stale compile would be reused
{_shell_lines(harness_command(target))}
```

The last flags are the configuration the workbook's estimates assume (on-device sampling, async mode,
LNC=2); the file also applies them as defaults, so a command without them runs the same configuration.
`--mode validate` (Trn3) checks the logits against the NxDI baseline first.
"""


_HARNESS = '''
# ======== the harness side: NxDI's Qwen3-MoE classes, wired to the kernels above ============================
SDK = "Neuron SDK 2.29 (NKI 0.3) on Trn3, 2.28 on Trn2"

try:
    from neuronx_distributed.parallel_layers.layers import ColumnParallelLinear, ParallelEmbedding
    from neuronx_distributed.parallel_layers.mappings import reduce_from_tensor_model_parallel_region
    from neuronx_distributed_inference.models.config import MoENeuronConfig, OnDeviceSamplingConfig
    from neuronx_distributed_inference.models.qwen3_moe import modeling_qwen3_moe as _nxdi_qwen3

    _NXDI_ERROR = None
except ImportError as _err:  # not a Neuron host: the classes exist, instantiating them raises
    _nxdi_qwen3 = None
    _NXDI_ERROR = _err


def _require_nxdi(what):
    if _NXDI_ERROR is not None:
        raise ImportError(
            f"{{what}} needs neuronx-distributed-inference (the Neuron SDK, {{SDK}}): {{_NXDI_ERROR}}. "
            "Run the competition harness on a Trainium host inside the Neuron venv."
        )


class _Unavailable:
    """Stand-in base of a harness class on a host without NxDI: defining the class works, using it raises."""

    def __init__(self, *args, **kwargs):
        _require_nxdi(type(self).__name__)


def _nxdi_base(name):
    if _nxdi_qwen3 is None:
        return _Unavailable
    if not hasattr(_nxdi_qwen3, name):
        raise ImportError(f"NxDI's modeling_qwen3_moe has no {{name}}: this file was written for {{SDK}}")
    return getattr(_nxdi_qwen3, name)


def _nxdi_config_base():
    return MoENeuronConfig if _NXDI_ERROR is None else _Unavailable


# The configuration the workbook's estimates assume (applied as defaults; a command-line value wins).
ASSUMED_FLAGS = {assumed!r}


def _is_decode(hidden_states):
    """Token generation: one new position per sequence, at most 128 tokens in the launch."""
    return hidden_states.dim() == 3 and hidden_states.shape[1] == 1 and hidden_states.shape[0] <= 128


class NkiRMSNorm(nn.Module):
    """RMSNorm over the last dim by {rmsnorm}[{rmsnorm_lnc}] (replaces the harness's get_rmsnorm_cls())."""

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.hidden_size, self.eps = hidden_size, eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x):
        shape = x.shape
        y = {rmsnorm}[{rmsnorm_lnc}](x.reshape(-1, shape[-1]), self.weight.view(-1), self.eps)
        return y.reshape(shape)


class NkiMoENeuronConfig(_nxdi_config_base()):
    """MoENeuronConfig with the workbook's assumed flags as defaults."""

    def __init__(self, **kwargs):
        _require_nxdi("NkiMoENeuronConfig")
        kwargs.setdefault("async_mode", ASSUMED_FLAGS["async_mode"])
        kwargs.setdefault("logical_nc_config", ASSUMED_FLAGS["logical_nc_config"])
        if ASSUMED_FLAGS["on_device_sampling"] and kwargs.get("on_device_sampling_config") is None:
            keys = ("do_sample", "top_k", "top_p", "temperature", "global_topk", "dynamic")
            sampling = {{k: kwargs[k] for k in keys if kwargs.get(k) is not None}}
            kwargs["on_device_sampling_config"] = OnDeviceSamplingConfig(**sampling)
        super().__init__(**kwargs)


class Qwen3MoeInferenceConfig(_nxdi_base("Qwen3MoeInferenceConfig")):
    """NxDI's Qwen3-MoE config; its NeuronConfig class carries the assumed flags."""

    @classmethod
    def get_neuron_config_cls(cls):
        return NkiMoENeuronConfig


class NeuronQwen3MoeDecoderLayer(_nxdi_base("NeuronQwen3MoeDecoderLayer")):
    """NxDI's decoder layer with NkiRMSNorm norms; token generation's MoE block is {moe_decode}[{moe_lnc}].

    Replaces the harness's NeuronQwen3MoeDecoderLayer.forward for token generation: the post-attention
    RMSNorm, router, top-8 and the experts of this rank run in one launch; its partial sum (this rank's
    share of each expert's intermediate dim) is all-reduced over the tensor-parallel group. Context
    encoding runs NxDI's forward unchanged (with the NKI norms).
    """

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        eps = config.rms_norm_eps
        self.input_layernorm = NkiRMSNorm(config.hidden_size, eps)
        self.post_attention_layernorm = NkiRMSNorm(config.hidden_size, eps)
        # the router as the kernel takes it, [H, E] bf16; filled by convert_hf_to_neuron_state_dict
        self.nki_router_t = nn.Parameter(
            torch.zeros(config.hidden_size, config.num_experts, dtype=torch.bfloat16), requires_grad=False
        )
        self.nki_num_experts = config.num_experts
        self.nki_intermediate = config.moe_intermediate_size

    def _nki_moe(self, h):
        mlp = self.mlp.expert_mlps.mlp_op
        gate_up, down = mlp.gate_up_proj.weight, mlp.down_proj.weight
        if gate_up.shape[0] != self.nki_num_experts:  # expert parallelism: ids would not index this rank
            return None
        T, H = h.shape[0] * h.shape[1], h.shape[2]
        gamma = self.post_attention_layernorm.weight.view(-1)
        y, _, _ = {moe_decode}[{moe_lnc}](
            h.reshape(T, H), gamma, self.nki_router_t, gate_up, down, self.post_attention_layernorm.eps
        )
        if gate_up.shape[2] // 2 < self.nki_intermediate:  # this rank holds a slice of I: partial sums
            y = reduce_from_tensor_model_parallel_region(y)
        return y.reshape(h.shape)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_value=None,
                padding_mask=None, **kwargs):
        if not _is_decode(hidden_states):
            return super().forward(
                hidden_states, attention_mask, position_ids, past_key_value, padding_mask, **kwargs
            )
        residual = hidden_states
        attn, present, cos, sin = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_value=past_key_value,
            **kwargs,
        )
        h = residual + attn
        y = self._nki_moe(h)
        if y is None:  # not this kernel's deployment: NxDI's MoE block
            y = self.mlp(self.post_attention_layernorm(h), padding_mask)[0]
        return (h + y, present, cos, sin, None)


class NeuronQwen3MoeModel(_nxdi_base("NeuronQwen3MoeModel")):
    """NxDI's model with the NKI decoder layers and final norm (replaces the harness's init_model)."""

    def init_model(self, config):
        self.padding_idx, self.vocab_size = config.pad_token_id, config.vocab_size
        self.embed_tokens = ParallelEmbedding(
            config.vocab_size,
            config.hidden_size,
            self.padding_idx,
            dtype=config.neuron_config.torch_dtype,
            shard_across_embedding=True,
        )
        self.layers = nn.ModuleList(
            NeuronQwen3MoeDecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = NkiRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = ColumnParallelLinear(
            config.hidden_size, config.vocab_size, gather_output=not self.on_device_sampling, bias=False
        )


class NeuronQwen3MoeForCausalLM(_nxdi_base("NeuronQwen3MoeForCausalLM")):
    """The class main.py loads: NxDI's causal LM over the NKI model (the harness imports only this name)."""

    _model_cls = NeuronQwen3MoeModel

    @classmethod
    def get_config_cls(cls):
        return Qwen3MoeInferenceConfig

    @classmethod
    def get_neuron_config_cls(cls):
        return NkiMoENeuronConfig

    @staticmethod
    def convert_hf_to_neuron_state_dict(state_dict, config):
        """NxDI's conversion, plus each layer's router transposed to [H, E] bf16 for the MoE kernel."""
        _require_nxdi("convert_hf_to_neuron_state_dict")
        state_dict = _nxdi_qwen3.NeuronQwen3MoeForCausalLM.convert_hf_to_neuron_state_dict(state_dict, config)
        for i in range(config.num_hidden_layers):
            router = state_dict[f"layers.{{i}}.mlp.router.linear_router.weight"]  # [E, H]
            state_dict[f"layers.{{i}}.nki_router_t"] = router.t().contiguous().to(torch.bfloat16)
        return state_dict
'''


def _harness(rows: list[Resolved]) -> str:
    by_role = {r.embed.role: r for r in rows if r.embed.wired}
    for role in ("rmsnorm", "moe_decode"):
        if role not in by_role:
            raise ExportError(f"the harness wiring needs a wired {role!r} kernel; the table has none")
    rms, moe = by_role["rmsnorm"], by_role["moe_decode"]
    return _HARNESS.format(
        assumed=ASSUMED_FLAGS,
        rmsnorm=rms.emitted,
        rmsnorm_lnc=rms.lnc,
        moe_decode=moe.emitted,
        moe_lnc=moe.lnc,
    )


def _commit() -> str:
    """The workbook's HEAD commit, marked when nki_moe/kernels has uncommitted changes (read-only git)."""
    git = ["git", "-C", str(paths.ROOT)]
    try:
        head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        status = git + ["status", "--porcelain", "--", "nki_moe/kernels"]
        dirty = subprocess.run(status, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = head.stdout.strip() or "unknown"
    return commit + (" + uncommitted kernel changes" if dirty.stdout.strip() else "")


def render(kernels: tuple[Embed, ...] | None = None, target: str = "trn3") -> tuple[str, str, list[Resolved]]:
    """(the submission file's text, its README, the resolved rows) for the table ``kernels``."""
    rows = resolve(kernels)
    items, emitted, rows = collect(rows)
    commit = _commit()
    listing = "\n".join(
        textwrap.fill(
            f"{r.emitted} ({r.embed.op} {r.version}, {r.module}, LNC={r.lnc}): "
            f"{'wired' if r.embed.wired else 'embedded only'}; {r.embed.note}",
            width=106,
            initial_indent="    ",
            subsequent_indent="        ",
            break_on_hyphens=False,
        )
        for r in rows
    )
    header = f'''r"""Qwen3-30B-A3B for the nki-moe competition harness, with the workbook's NKI kernels.

GENERATED by `python -m nki_moe.export` from workbook commit {commit}.
Edit the workbook, not this file.
The harness (aws-neuron/nki-moe main.py, `--enable-nki`) imports this module and uses
NeuronQwen3MoeForCausalLM. Kernels (source copied verbatim from nki_moe/kernels/, helpers inlined):
{listing}

Harness functions this file replaces (everything else is NxDI's Qwen3-MoE implementation, subclassed):
    get_rmsnorm_cls()                         -> NkiRMSNorm for the decoder layers' norms and the final norm
    NeuronQwen3MoeDecoderLayer.forward        -> token generation: attention as NxDI's, then the fused MoE
                                                 kernel + TP all-reduce; context encoding: NxDI's forward
    NeuronQwen3MoeModel.init_model            -> builds the layers above and NkiRMSNorm as the final norm
    convert_hf_to_neuron_state_dict           -> NxDI's, plus the router transposed to [H, E] bf16 per layer
    get_neuron_config_cls                     -> MoENeuronConfig with the assumed flags as defaults:
                                                 {", ".join(f"{k}={v}" for k, v in ASSUMED_FLAGS.items())}

Run (from the harness checkout; docs/device.md of the workbook has the details):
{_shell_lines(harness_command(target), "    ")}

Nothing device-only runs at import: NxDI is imported in a guard (without it the classes exist and raise
when used) and nki.jit compiles on the first call.
"""

import torch
from torch import nn

{chr(10).join(NKI_IMPORTS.values())}

# ======== kernels (workbook commit {commit[:12]}) =========================================================
'''
    text = header + "\n" + _kernel_section(items, emitted) + "\n\n" + _harness(rows)
    ast.parse(text)  # the file must parse
    return text, _readme(rows, target, commit), rows


def export_submission(
    out: str | Path | None = None, kernels: tuple[Embed, ...] | None = None, target: str = "trn3"
) -> Path:
    """Write ``qwen_with_nki.py`` and ``README.md`` into ``out`` (default ``build/submission``).

    Returns:
        the path of ``qwen_with_nki.py``.
    """
    folder = Path(out) if out is not None else paths.base() / "build" / "submission"
    folder.mkdir(parents=True, exist_ok=True)
    text, readme, _ = render(kernels, target)
    path = folder / "qwen_with_nki.py"
    path.write_text(text)
    (folder / "README.md").write_text(readme)
    return path


# ---- checking the file -----------------------------------------------------------------------------------
def load_submission(path: str | Path, name: str = "nki_moe_submission"):
    """Import the exported file as a module with ``nki`` bound to the emulator (as a test would)."""
    import nki_moe.sim as sim

    sim.install("sim")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def harness_imports(main_py: str | Path) -> set[str]:
    """Names the harness's ``main.py`` reads from the module it imports as ``qwen_with_nki``.

    The module is bound by ``qwen = importlib.import_module(...)``; every ``qwen.<name>`` is collected.
    """
    tree = ast.parse(Path(main_py).read_text())
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            f = node.value.func
            if isinstance(f, ast.Attribute) and f.attr == "import_module":
                bound |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            if isinstance(f, ast.Name) and f.id == "__import__":
                bound |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in bound
    }


def verify_embedded(path: str | Path, kernels: tuple[Embed, ...] | None = None, target: str = "trn2") -> list:
    """Run every embedded kernel of the file at ``path`` in the emulator against the workbook's kernel.

    Each row of ``kernels`` (registered ops only) runs at its ``check_shape`` on the same seeded inputs;
    outputs must be bit-identical (same dtype, same bits) and the instruction traces equally long.

    Returns:
        [(role, op, version, emitted name, instructions)] of the checked kernels.
    Raises:
        AssertionError: naming the kernel and the first output that differs.
    """
    import numpy as np

    import nki_moe.sim as sim
    from nki_moe import ops

    mod = load_submission(path)
    _, _, rows = collect(resolve(kernels))
    done = []
    for r in rows:
        op = ops.get(r.embed.op)
        args = op.args(**r.embed.check_shape)
        mine = sim.run(
            getattr(mod, r.emitted), *op.version_args(r.version, args), target=target, lnc=r.lnc, strict=True
        )
        args = op.args(**r.embed.check_shape)  # fresh inputs: kernels may write into them (KV caches)
        theirs = op.run(r.version, args=args, target=target)
        a = mine.outputs if isinstance(mine.outputs, tuple) else (mine.outputs,)
        b = theirs.outputs if isinstance(theirs.outputs, tuple) else (theirs.outputs,)
        label = f"{r.emitted} ({r.embed.op} {r.version}) at {r.embed.check_shape}"
        assert len(a) == len(b), f"{label}: {len(a)} outputs, the workbook's kernel {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            x, y = np.asarray(x), np.asarray(y)
            assert x.dtype == y.dtype and x.shape == y.shape, f"{label}: output {i} {x.dtype}{x.shape}"
            assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), f"{label}: output {i} differs"
        assert len(mine.trace) == len(theirs.trace), (
            f"{label}: {len(mine.trace)} instructions, the workbook's kernel {len(theirs.trace)}"
        )
        done.append((r.embed.role, r.embed.op, r.version, r.emitted, len(mine.trace)))
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the competition submission qwen_with_nki.py")
    parser.add_argument("--out", type=Path, default=None, help="folder (default: build/submission)")
    parser.add_argument("--target", choices=["trn2", "trn3"], default="trn3", help="the harness command's")
    parser.add_argument("--no-verify", action="store_true", help="skip the emulator equivalence check")
    args = parser.parse_args(argv)
    path = export_submission(args.out, target=args.target)
    print(f"wrote {path} and {path.parent / 'README.md'}")
    if not args.no_verify:
        for role, op, version, name, n in verify_embedded(path):
            print(
                f"  {role:<17} {name:<24} ({op} {version}): bit-identical to the workbook, {n} instructions"
            )
    print(f"run it on a Trainium host from the harness checkout:\n  {harness_command(args.target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
