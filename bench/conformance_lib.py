"""Conformance cases for nki-library kernels (aws-neuron/nki-library, src/nkilib_src/nkilib/core/...).

Each case runs one library kernel UNMODIFIED under the emulator and compares it with the library's own
``*_torch.py`` reference. Shapes, dtypes, LNC and call conventions follow the library's integration
tests (test/integration/nkilib/core/...), the smallest ones that still exercise the path, Qwen3-30B-A3B-like
where cheap (hidden 2048, head_dim 128, 128 experts top-8). The tests launch every kernel as
``kernel[lnc](**inputs)`` with lnc=2 on trn2 unless they set ``logical_nc_config``; so do these cases.

A case adapter only builds inputs and calls the kernel and the reference: references receive fp32 torch
tensors for bf16/fp8 inputs and int32 for uint32, as the library's ``torch_ref_wrapper`` does, and their
output dict is turned into a tuple in the kernel's return order. Sub-kernels that the library's tests launch
through a small jitted wrapper (caller-provided outputs / SbufManager) get an entry making the same calls.

Run through the harness: ``python bench/conformance.py --library ../nki-library --only cumsum,rope``.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:  # the framework (bench/conformance.py); bench/ is on sys.path when the scripts run
    from conformance import Case
except ImportError:  # pragma: no cover - stand-in with exactly the interface's shape

    @dataclass
    class Case:  # type: ignore[no-redef]
        name: str
        source: str
        run: Callable[[], Any]
        reference: Callable[[], Any]
        dtype: str = "bf16"
        atol: float | None = None
        rtol: float | None = None
        note: str = ""


SRC = Path("src/nkilib_src")  # the library's source root inside the checkout (holds the `nkilib` package)
CORE = SRC / "nkilib" / "core"
SEED = 42


# ---------------------------------------------------------------------------------------------------------
# plumbing: import the library under the emulator, seeded inputs, the torch reference wrapper
# ---------------------------------------------------------------------------------------------------------


class _Lib:
    """Imports modules of one nki-library checkout with `import nki` -> the emulator.

    Modules are imported as ``nkilib_src.nkilib.core.<mod>`` (with ``<root>/src`` and ``<root>`` on sys.path),
    as the library's tests do, so kernels, references and the test helpers some references import
    (``test.integration.nkilib.utils...``) share one copy of the enums in ``utils/common_types.py``.
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def mod(self, name: str):
        import nki_moe.sim as sim

        sim.install("sim")
        _install_stand_ins()
        for path in (str(self.root), str(self.root / "src")):
            if path not in sys.path:
                sys.path.insert(0, path)
        return importlib.import_module(f"nkilib_src.nkilib.core.{name}")


def _install_stand_ins() -> None:
    """Host-side modules some library files import that this environment lacks, only when absent.

    - ``scipy``: topk/rotational_topk_utils.py builds a host constant with ``scipy.linalg.circulant``; the
      test helper that qkv_tkg_torch.py / moe_cte_torch.py import needs ``scipy.special.erf/expit``.
      Stand-ins: the same three functions in NumPy.
    - ``neuron_dtypes`` (Neuron SDK dtype casts): imported by that test helper (and by the moe_cte test
      module whose BWMMFunc enum moe_cte_torch.py imports); none of the code used here calls it, so the
      stand-in only lets the imports succeed: every name is a function that raises when called.
    """
    import importlib.util
    import math
    import types

    if "scipy" not in sys.modules and importlib.util.find_spec("scipy") is None:

        def circulant(c):
            c = np.asarray(c).ravel()
            n = c.size
            return c[(np.arange(n)[:, None] - np.arange(n)[None, :]) % n]

        def expit(x):
            return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))

        def erf(x):
            return np.vectorize(math.erf, otypes=[np.float64])(x)

        scipy = types.ModuleType("scipy")
        linalg = types.ModuleType("scipy.linalg")
        special = types.ModuleType("scipy.special")
        linalg.circulant = circulant
        special.expit = expit
        special.erf = erf
        scipy.linalg, scipy.special = linalg, special
        sys.modules.update({"scipy": scipy, "scipy.linalg": linalg, "scipy.special": special})
    if "neuron_dtypes" not in sys.modules and importlib.util.find_spec("neuron_dtypes") is None:
        nd = types.ModuleType("neuron_dtypes")

        def _missing(name):
            if name.startswith("__"):
                raise AttributeError(name)

            def unavailable(*args, **kwargs):
                raise NotImplementedError(
                    f"neuron_dtypes.{name}: the Neuron SDK's neuron_dtypes is not installed"
                )

            return unavailable

        nd.__getattr__ = _missing
        sys.modules["neuron_dtypes"] = nd


def _bf16():
    import ml_dtypes

    return ml_dtypes.bfloat16


def _nl():
    """The emulator's `nki.language`: dtype *arguments* (output_dtype=...) are nl dtypes, as in the tests."""
    import nki_moe.sim as sim

    sim.install("sim")
    import nki.language as nl

    return nl


def _rng(seed: int = SEED) -> np.random.Generator:
    return np.random.default_rng(seed)


def _randn(rng: np.random.Generator, shape, dtype=np.float32, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(dtype)


def _to_torch(value):
    import torch

    if isinstance(value, np.ndarray):
        name = str(value.dtype)
        if "bfloat16" in name or "float8" in name or value.dtype == np.float16:
            value = value.astype(np.float32)
        elif value.dtype == np.uint32:
            value = value.astype(np.int32)
        return torch.from_numpy(np.ascontiguousarray(value))
    return value


def _to_numpy(value):
    import torch

    if isinstance(value, torch.Tensor):
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        return value.detach().cpu().numpy()
    return value


def _torch_ref(fn: Callable, keys: tuple[str, ...] | None, **kwargs):
    """Call a library reference on fp32 torch tensors; its dict result as a tuple in `keys` order."""
    out = fn(**{k: _to_torch(v) for k, v in kwargs.items()})
    if isinstance(out, dict):
        if keys is None:
            keys = tuple(out)
        vals = tuple(_to_numpy(out[k]) for k in keys)
        return vals[0] if len(vals) == 1 else vals
    if isinstance(out, (tuple, list)):
        return tuple(_to_numpy(v) for v in out)
    return _to_numpy(out)


def _np_out(result):
    """Kernel results as NumPy arrays (tuple for several outputs)."""
    if isinstance(result, (tuple, list)):
        return tuple(np.asarray(r) for r in result)
    return np.asarray(result)


def _jitted(fn):
    """A library entry point as a launchable kernel: @nki.jit ones as they are, plain ones (sub-kernels the
    library's tests hand to their framework, which jits them) through `nki.jit`."""
    if hasattr(fn, "__getitem__"):
        return fn
    import nki

    return nki.jit(fn)


_INPUT_CACHES: list = []


def _once(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Inputs are built once per case and shared by `run` and `reference` (seeded, so rebuilding them gives
    the same arrays: the caches are dropped after each reference to keep only one case's inputs alive)."""
    cached = functools.cache(fn)
    _INPUT_CACHES.append(cached)
    return cached


def _releasing(reference: Callable[[], Any]) -> Callable[[], Any]:
    """`reference`, then drop every cached input (the MoE cases hold ~300 MB of expert weights each)."""

    def call():
        try:
            return reference()
        finally:
            for cached in _INPUT_CACHES:
                cached.cache_clear()

    return call


# ---------------------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------------------


def _cumsum(lib: _Lib) -> Case:
    # test_cumsum.py FAST_TEST_PARAMS "64_1024_3_4_bfloat16", default CompilerArgs (LNC=2 on trn2)
    inputs = _once(lambda: {"x": _randn(_rng(), (64, 4, 1024), _bf16())})

    def run():
        return _np_out(lib.mod("cumsum.cumsum").cumsum[2](**inputs()))

    def reference():
        return _torch_ref(lib.mod("cumsum.cumsum_torch").cumsum_torch_ref, ("output_0",), **inputs())

    return Case(
        "cumsum", str(CORE / "cumsum/cumsum.py"), run, reference, "bf16", note="x[64,4,1024] bf16, LNC=2"
    )


def _rope(lib: _Lib) -> Case:
    # test_rope.py manual case (128, 64, 8, 128, True, False) shrunk: d_head 128, B 4, 8 heads, S 128,
    # lnc_shard
    def make():
        rng = _rng()
        d, b, h, s = 128, 4, 8, 128
        return {
            "x_in": _randn(rng, (d, b, h, s), _bf16()),
            "cos": _randn(rng, (d // 2, b, s), _bf16()),
            "sin": _randn(rng, (d // 2, b, s), _bf16()),
            "lnc_shard": True,
            "contiguous_layout": True,
            "relayout_in_sbuf": False,
        }

    inputs = _once(make)

    def run():
        return _np_out(lib.mod("embeddings.rope").RoPE[2](**inputs()))

    def reference():
        return _torch_ref(lib.mod("embeddings.rope_torch").rope_torch_ref, ("x_out",), **inputs())

    # The kernel rounds each product (x·cos, x·sin) to bf16 in SBUF before the add/subtract (its even_cos ...
    # tiles have x's dtype), so the error scales with |x·cos| (up to ~16 for N(0, 1) inputs: two half-ulps of
    # 2^-9·16 = 0.03 each), not with the output. A NumPy model of exactly that rounding matches the emulator
    # bit for bit; atol covers the two roundings.
    return Case(
        "rope",
        str(CORE / "embeddings/rope.py"),
        run,
        reference,
        "bf16",
        atol=0.07,
        note="x[128,4,8,128] bf16, LNC=2",
    )


def _rope_hf(lib: _Lib) -> Case:
    # test_rope_hf.py (1, 32, 8, 256, 128, bf16) with Qwen3-30B-A3B heads per TP-4 rank (8 q, 1 kv), LNC=2
    def make():
        rng = _rng()
        b, hq, hk, s, d = 1, 8, 1, 256, 128
        q = _randn(rng, (b, hq, s, d), _bf16())
        k = _randn(rng, (b, hk, s, d), _bf16())
        return {
            "q": q,
            "k": k,
            "q_out": np.zeros_like(q),
            "k_out": np.zeros_like(k),
            "cos": _randn(rng, (b, s, d), _bf16()),
            "sin": _randn(rng, (b, s, d), _bf16()),
            "backward": False,
        }

    inputs = _once(make)

    def run():
        return _np_out(lib.mod("embeddings.rope_hf").rope_hf[2](**inputs()))

    def reference():
        return _torch_ref(
            lib.mod("embeddings.rope_hf_torch").rope_hf_torch_ref, ("q_out", "k_out"), **inputs()
        )

    # As rope: the kernel's temp1/temp2 products are bf16 SBUF tiles, rounded before the add (see _rope).
    return Case(
        "rope_hf",
        str(CORE / "embeddings/rope_hf.py"),
        run,
        reference,
        "bf16",
        atol=0.07,
        note="q[1,8,256,128] k[1,1,256,128] bf16, LNC=2",
    )


def _cascaded_max(lib: _Lib) -> Case:
    # test_cascaded_max.py [2, 8, 5, 4058, fp32] (Llama 3 before global gather), LNC=2
    inputs = _once(lambda: {"input_tensor": _randn(_rng(), (8, 5, 4058), np.float32)})

    def run():
        return _np_out(lib.mod("max.cascaded_max").cascaded_max[2](**inputs()))

    def reference():
        out = _torch_ref(
            lib.mod("max.cascaded_max_torch").cascaded_max_torch_ref,
            ("max_values", "max_indices"),
            **inputs(),
        )
        return out

    return Case(
        "cascaded_max",
        str(CORE / "max/cascaded_max.py"),
        run,
        reference,
        "fp32",
        note="x[8,5,4058] fp32, LNC=2",
    )


def _rotational_topk(lib: _Lib) -> Case:
    # test_topk.py [2, 8, 1, 3168, 256, fp32] with Qwen3-like k: BxS 8, vocab 3168, k 64, sorted, LNC=2.
    # Compared like the library's own validators: the top-k values, and the input gathered at the returned
    # indices (ties may legally pick other indices) against the reference values.
    def make():
        import nki.language as nl

        m = lib.mod("topk.rotational_topk")
        batch, seqlen, vocab, k = 8, 1, 3168, 64
        inp = _randn(_rng(), (batch * seqlen, vocab), np.float32)
        tc = m.create_topk_config(
            inp_shape=(batch, seqlen, vocab), inp_dtype=nl.float32, k=k, sorted=True, num_programs=2
        )
        config = m.create_rotational_topk_config(inp_shape=(tc.BxS, tc.vocab_size), topk_config=tc)
        config = m.prepare_rotational_constants(config)
        return {"inp": inp, "config": config}

    inputs = _once(make)

    def run():
        m = lib.mod("topk.rotational_topk")
        try:
            values, indices = _np_out(m.rotational_topk[2](**inputs()))
        finally:
            m.cleanup_rotational_constants()
        inp = inputs()["inp"]
        return values, np.take_along_axis(inp, indices.astype(np.int64), axis=-1)

    def reference():
        vals, _ = _torch_ref(
            lib.mod("topk.torch_ref").topk_torch_ref, ("topk_values", "topk_indices"), **inputs()
        )
        return vals, vals

    return Case(
        "rotational_topk",
        str(CORE / "topk/rotational_topk.py"),
        run,
        reference,
        "fp32",
        note="x[8,3168] fp32, k=64 sorted, LNC=2; (values, inp[indices])",
    )


def _indexed_flatten(lib: _Lib) -> Case:
    # test_indexed_flatten.py (4096, 3, 128) -> Qwen3 E=8 selected rows: T 4096, E 8, f_len 128, LNC=2
    def make():
        t, e, f_len = 4096, 8, 128
        out_len = ((e * t + 1024 + 127) // 128) * 128
        return {
            "input_tensor": np.arange(e * t, dtype=np.int32).reshape(e, t),
            "f_len": f_len,
            "output_len": out_len,
            "row_offsets": np.array([(t // f_len) * i for i in range(e)], dtype=np.int32),
            "row_offsets_start": None,
            "padding_val": -1,
        }

    inputs = _once(make)

    def run():
        return _np_out(lib.mod("subkernels.indexed_flatten").indexed_flatten[2](**inputs()))

    def reference():
        m = lib.mod("subkernels.indexed_flatten_torch")
        return _torch_ref(m.indexed_flatten_torch_ref, ("flattened_array",), **inputs())

    # int32 output: exact match (the library's test uses atol=rtol=0)
    return Case(
        "indexed_flatten",
        str(CORE / "subkernels/indexed_flatten.py"),
        run,
        reference,
        "fp32",
        atol=0.0,
        rtol=0.0,
        note="x[8,4096] int32, f_len 128, LNC=2",
    )


def _output_projection_cte(lib: _Lib) -> Case:
    # test_output_proj_cte.py (1, 128, 3072, 16, 64, True) with Qwen3 sizes per TP-4 rank: B 1, S 128, H 2048,
    # 8 heads x 128, bias; inputs uniform [0, 1) like the test's np_random_sample; default LNC=2
    def make():
        rng = _rng()
        b, s, h, n, d = 1, 128, 2048, 8, 128
        return {
            "attention": rng.random((b, n, d, s), dtype=np.float32).astype(_bf16()),
            "weight": rng.random((n * d, h), dtype=np.float32).astype(_bf16()),
            "bias": _randn(rng, (1, h), _bf16(), scale=100.0),
        }

    inputs = _once(make)

    def run():
        return _np_out(
            lib.mod("output_projection.output_projection_cte").output_projection_cte[2](**inputs())
        )

    def reference():
        m = lib.mod("output_projection.output_projection_cte.output_projection_cte_torch")
        return _torch_ref(m.output_projection_cte_torch_ref, None, **inputs())

    return Case(
        "output_projection_cte",
        str(CORE / "output_projection/output_projection_cte/output_projection_cte.py"),
        run,
        reference,
        "bf16",
        note="attn[1,8,128,128] w[1024,2048] +bias bf16, LNC=2",
    )


def _output_projection_tkg(lib: _Lib) -> Case:
    # test_output_proj_tkg.py [4, 8, 4, 128, 8192, NONE, True, False] with Qwen3 H 2048, S_tkg 1; LNC=2
    def make():
        rng = _rng()
        b, n, s, d, h = 4, 8, 1, 128, 2048
        return {
            "attention": _randn(rng, (d, b, n, s), _bf16()),
            "weight": _randn(rng, (d * n, h), _bf16()),
            "bias": _randn(rng, (1, h), _bf16(), scale=100.0),
            "TRANSPOSE_OUT": False,
            "OUT_IN_SB": False,
        }

    inputs = _once(make)

    def run():
        return _np_out(
            lib.mod("output_projection.output_projection_tkg").output_projection_tkg[2](**inputs())
        )

    def reference():
        m = lib.mod("output_projection.output_projection_tkg_torch")
        return _torch_ref(m.output_projection_tkg_torch_ref, ("out",), **inputs())

    return Case(
        "output_projection_tkg",
        str(CORE / "output_projection/output_projection_tkg.py"),
        run,
        reference,
        "bf16",
        note="attn[128,4,8,1] w[1024,2048] +bias bf16, LNC=2",
    )


def _rmsnorm_quant(lib: _Lib) -> Case:
    # test_rmsnorm_quant.py (seqlen 2, quant_only False, ROW, lower_bound 0, LNC=2, B 1) with H 2048 (Qwen3).
    # The library ships no rmsnorm_quant_torch.py and the test's NumPy reference needs neuron_dtypes, so the
    # reference here is the kernel's documented math: rms-normalise, row absmax / 240 -> fp32 dequant scale,
    # quantise to float8_e4m3; the kernel stores the scale as the last 4 bytes of each [H+4] fp8 row.
    def make():
        m = lib.mod("rmsnorm.rmsnorm_quant")
        enums = lib.mod("utils.common_types")
        rng = _rng()
        b, s, h = 1, 2, 2048
        kargs = m.RmsNormQuantKernelArgs(
            quantization_type=enums.QuantizationType.ROW,
            lower_bound=0.0,
            norm_type=enums.NormType.RMS_NORM,
            eps=1e-6,
        )
        return {
            "hidden": _randn(rng, (b, s, h), _bf16()),
            "ln_w": _randn(rng, (1, h), _bf16()),
            "kargs": kargs,
            "input_dequant_scale": None,
        }

    inputs = _once(make)

    def run():
        import ml_dtypes

        out = np.asarray(lib.mod("rmsnorm.rmsnorm_quant").rmsnorm_quant_kernel[2](**inputs()))
        h = inputs()["hidden"].shape[-1]
        raw = np.ascontiguousarray(out).view(np.uint8)
        values = raw[..., :h].view(ml_dtypes.float8_e4m3).astype(np.float32)
        scale = np.ascontiguousarray(raw[..., h : h + 4]).view(np.float32)
        return values, scale

    def reference():
        import ml_dtypes

        x = inputs()["hidden"].astype(np.float32)
        g = inputs()["ln_w"].astype(np.float32).reshape(-1)
        eps = inputs()["kargs"].eps
        norm = x / (np.sqrt(np.mean(x * x, axis=-1, keepdims=True)) + eps) * g
        scale = np.abs(norm).max(axis=-1, keepdims=True) / 240.0
        values = (norm / scale).astype(ml_dtypes.float8_e4m3).astype(np.float32)
        return values, scale.astype(np.float32)

    return Case(
        "rmsnorm_quant",
        str(CORE / "rmsnorm/rmsnorm_quant.py"),
        run,
        reference,
        "fp8",
        note="x[1,2,2048] bf16 -> fp8e4m3 row quant, LNC=2; own NumPy reference (no *_torch.py)",
    )


def _router_entry(lib: _Lib):
    """`router_topk` is a sub-kernel writing into caller-provided tensors (not @nki.jit): the library's test
    launches it through a wrapper with HBM outputs; this is the same call, as a jitted entry point."""
    m = lib.mod("router_topk.router_topk")
    import nki

    def router_topk_entry(x, w, w_bias, router_logits, expert_affinities, expert_index, **kwargs):
        m.router_topk(
            x=x,
            w=w,
            w_bias=w_bias,
            router_logits=router_logits,
            expert_affinities=expert_affinities,
            expert_index=expert_index,
            **kwargs,
        )
        return router_logits, expert_index, expert_affinities

    return nki.jit(router_topk_entry)


def _router_topk(lib: _Lib) -> Case:
    # test_router_topk.py "qwen3_235b_a22b" (2, 4096, 128, 8, SOFTMAX, no bias, router_pre_norm, scatter) with
    # Qwen3-30B-A3B: T 4, H 2048, E 128, k 8, norm_topk_prob; x in HBM as [H, T]; inputs U(-0.1, 0.1); LNC=2
    def make():
        m = lib.mod("router_topk.router_topk")
        enums = lib.mod("utils.common_types")
        rng = _rng()
        t, h, e, k = 4, 2048, 128, 8
        return {
            "x": rng.uniform(-0.1, 0.1, (h, t)).astype(_bf16()),
            "w": rng.uniform(-0.1, 0.1, (h, e)).astype(_bf16()),
            "w_bias": None,
            "router_logits": np.zeros((t, e), _bf16()),
            "expert_affinities": np.zeros((t, e), _bf16()),
            "expert_index": np.zeros((t, k), np.uint32),
            "act_fn": enums.RouterActFnType.SOFTMAX,
            "k": k,
            "x_hbm_layout": m.XHBMLayout_H_T__0,
            "x_sb_layout": m.XSBLayout_tp2013__1,
            "router_pre_norm": True,
            "norm_topk_prob": True,
            "use_indirect_dma_scatter": True,
        }

    inputs = _once(make)

    def run():
        kw = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in inputs().items()}
        return _np_out(_router_entry(lib)[2](**kw))

    def reference():
        m = lib.mod("router_topk.router_topk_torch")
        keys = ("router_logits", "expert_index", "expert_affinities")
        return _torch_ref(m.router_topk_torch_ref, keys, **inputs())

    return Case(
        "router_topk",
        str(CORE / "router_topk/router_topk.py"),
        run,
        reference,
        "bf16",
        note="x[2048,4] w[2048,128] top-8 softmax pre-norm, norm_topk_prob, LNC=2; (logits, index, affinity)",
    )


def _moe_tkg_inputs(lib: _Lib, *, all_expert: bool, t: int, h: int, i: int, e: int, k: int) -> dict:
    """Inputs as the library's build_moe_tkg makes them (no bias, no clamp, POST_SCALE, bf16): random expert
    indices, normalised affinities scattered to [T, E], weights N(0, 1/fan_in) (the test uses N(0, 1))."""
    enums = lib.mod("utils.common_types")
    rng = _rng()
    if all_expert:
        k = e
        idx = np.stack([rng.permutation(e)[:k] for _ in range(t)]).astype(np.int32)
    else:
        idx = np.stack([rng.choice(e, size=k, replace=False) for _ in range(t)]).astype(np.int32)
    aff_k = rng.random((t, k))
    aff_k /= aff_k.sum(axis=1, keepdims=True)
    aff = np.zeros((t, e), np.float32)
    np.put_along_axis(aff, idx, aff_k.astype(np.float32), axis=1)
    return {
        "hidden_input": _randn(rng, (t, h), _bf16()),
        "expert_gate_up_weights": _randn(rng, (e, h, 2, i), _bf16(), scale=h**-0.5),
        "expert_down_weights": _randn(rng, (e, i, h), _bf16(), scale=i**-0.5),
        # library test: bf16 affinities for all-expert, fp32 for selective (get_expert_affinity_dtype)
        "expert_affinities": aff.astype(_bf16() if all_expert else np.float32),
        "expert_index": idx,
        "is_all_expert": all_expert,
        "rank_id": np.zeros((1, 1), np.uint32) if all_expert else None,
        "expert_affinities_scaling_mode": enums.ExpertAffinityScaleMode.POST_SCALE,
        "activation_fn": enums.ActFnType.SiLU,
        "output_dtype": _nl().bfloat16,
    }


def _moe_tkg_case(lib: _Lib, name: str, note: str, **shape) -> Case:
    inputs = _once(lambda: _moe_tkg_inputs(lib, **shape))

    def run():
        return _np_out(_jitted(lib.mod("moe.moe_tkg.moe_tkg").moe_tkg)[2](**inputs()))

    def reference():
        return _torch_ref(lib.mod("moe.moe_tkg.moe_tkg_torch").moe_tkg_torch_ref, ("out",), **inputs())

    return Case(name, str(CORE / "moe/moe_tkg/moe_tkg.py"), run, reference, "bf16", note=note)


def _moe_tkg_selective(lib: _Lib) -> Case:
    # test_moe_tkg.py selective "(2, 4, 3072, 192, 128, 4, ...)" with Qwen3-30B-A3B: T 4, H 2048, I 192,
    # E 128, top-8, SiLU, POST_SCALE; LNC=2
    return _moe_tkg_case(
        lib,
        "moe_tkg.selective",
        "T4 H2048 I192 E128 top8 bf16, selective-expert, LNC=2",
        all_expert=False,
        t=4,
        h=2048,
        i=192,
        e=128,
        k=8,
    )


def _moe_tkg_all(lib: _Lib) -> Case:
    # test_moe_tkg.py all-expert "qwen3_235b (2, 2, 4096, 192, 8, ...)" with H 2048 (Qwen3-30B-A3B, EP 16:
    # 8 local experts); LNC=2
    return _moe_tkg_case(
        lib,
        "moe_tkg.all_expert",
        "T2 H2048 I192 E8 (all local) bf16, all-expert, LNC=2",
        all_expert=True,
        t=2,
        h=2048,
        i=192,
        e=8,
        k=8,
    )


def _mlp_tkg_entry(lib: _Lib):
    """mlp/mlp.py (the public `mlp` entry) does not parse at this library commit (IndentationError at its
    line 203: text after the docstring's closing quotes), so this entry does what its body does for the
    bf16 token-generation path: build MLPParameters, allocate the HBM output, call mlp_tkg with an SbufManager
    over the same 200 KiB per partition (mlp_tkg's own `sbm is None` branch names SbufManager without
    importing it)."""
    params_mod = lib.mod("mlp.mlp_parameters")
    import nki
    import nki.language as nl

    mlp_tkg = lib.mod("mlp.mlp_tkg.mlp_tkg").mlp_tkg
    sbuf_manager = lib.mod("utils.allocator").SbufManager
    logger = lib.mod("utils.logging").Logger

    def mlp_tkg_entry(hidden_tensor, **kwargs):
        params = params_mod.MLPParameters(hidden_tensor=hidden_tensor, **kwargs)
        params_mod.validate_mlp_arguments(params)
        assert params_mod.is_mlp_tkg(params), "inputs do not select the TKG path"
        out = nl.ndarray(
            (params.batch_size, params.sequence_len, params.hidden_size),
            dtype=params.output_dtype,
            buffer=nl.shared_hbm,
        )
        mlp_tkg(params, out, None, sbm=sbuf_manager(0, 200 * 1024, logger("mlp")))
        return out

    return nki.jit(mlp_tkg_entry)


def _mlp_tkg(lib: _Lib) -> Case:
    # test_mlp_tkg.py "Llama3 1B fused speculation" [2, 1, 1, 2048, 512, bf16, RMS_NORM, column tiling] with
    # B 4 (TKG: B*S <= 96 selects the token-generation path) and I 192; reference: the library's
    # transformer/transformer_tkg_torch.py mlp_torch (RMSNorm -> SiLU(gate) * up -> down); LNC=2
    def make():
        enums = lib.mod("utils.common_types")
        rng = _rng()
        b, s, h, i = 4, 1, 2048, 192
        return {
            "hidden_tensor": _randn(rng, (b, s, h), _bf16()),
            "gate_proj_weights_tensor": _randn(rng, (h, i), _bf16(), scale=h**-0.5),
            "up_proj_weights_tensor": _randn(rng, (h, i), _bf16(), scale=h**-0.5),
            "down_proj_weights_tensor": _randn(rng, (i, h), _bf16(), scale=i**-0.5),
            # N(0, 1) gamma (the test's U(-0.1, 0.1) makes outputs ~1e-3, below the bf16 atol)
            "normalization_weights_tensor": _randn(rng, (1, h), _bf16()),
            "normalization_type": enums.NormType.RMS_NORM,
            "activation_fn": enums.ActFnType.SiLU,
            "output_dtype": _nl().bfloat16,
            "eps": 1e-6,
            "use_tkg_gate_up_proj_column_tiling": True,
            "use_tkg_down_proj_column_tiling": True,
            "use_tkg_down_proj_optimized_layout": False,
        }

    inputs = _once(make)

    def run():
        return _np_out(_mlp_tkg_entry(lib)[2](**inputs()))

    def reference():
        x = inputs()
        return _torch_ref(
            lib.mod("transformer.transformer_tkg_torch").mlp_torch,
            None,
            hidden=x["hidden_tensor"],
            gamma=x["normalization_weights_tensor"],
            gate=x["gate_proj_weights_tensor"],
            up=x["up_proj_weights_tensor"],
            down=x["down_proj_weights_tensor"],
            eps=x["eps"],
            lnc=2,
            down_proj_layout_enabled=False,
        )

    return Case(
        "mlp_tkg",
        str(CORE / "mlp/mlp_tkg/mlp_tkg.py"),
        run,
        reference,
        "bf16",
        note="x[4,1,2048] I192 RMSNorm+SiLU bf16, LNC=2 (mlp.py does not parse: entry rebuilt)",
    )


def _qkv_tkg(lib: _Lib) -> Case:
    # test_qkv_tkg.py accuracy [1, 4, 1, 4096, None, 896, 5, 1, 128, RMS_NORM, NONE, ...] with Qwen3-30B-A3B
    # per TP-4 rank: B 4, S 1, H 2048, 8 q heads + 1 kv head x 128 (fused 1280), RMSNorm, BSD; LNC=2
    def make():
        enums = lib.mod("utils.common_types")
        rng = _rng()
        b, s, h, nq, nkv, d = 4, 1, 2048, 8, 1, 128
        return {
            "hidden": _randn(rng, (b, s, h), _bf16()),
            "qkv_w": _randn(rng, (h, (nq + 2 * nkv) * d), _bf16(), scale=h**-0.5),
            "norm_w": _randn(rng, (1, h), _bf16()),
            "fused_add": False,
            "d_head": d,
            "num_kv_heads": nkv,
            "num_q_heads": nq,
            "output_layout": enums.QKVOutputLayout.BSD,
            "eps": 1e-6,
            "norm_type": enums.NormType.RMS_NORM,
        }

    inputs = _once(make)

    def run():
        return _np_out(_jitted(lib.mod("qkv.qkv_tkg").qkv_tkg)[2](**inputs()))

    def reference():
        return _torch_ref(lib.mod("qkv.qkv_tkg_torch").qkv_tkg_torch_ref, ("out",), **inputs())

    return Case(
        "qkv_tkg",
        str(CORE / "qkv/qkv_tkg.py"),
        run,
        reference,
        "bf16",
        # The kernel feeds the matmul bf16 normalised activations (2^-9 relative rounding each), the fp32
        # reference does not: over K = 2048 that is ~sqrt(K)·2^-9·|n·w| ~ 0.004 rms absolute error independent
        # of the output's size (measured: 0.0036 rms at LNC=2, 0.0032 at LNC=1, so not the LNC reduction); the
        # bf16 atol 0.01 is ~2.5 sigma, so of 5120 outputs one lands outside. atol 0.03 is ~7 sigma.
        atol=0.03,
        note="x[4,1,2048] w[2048,1280] (8q+1kv x128) RMSNorm BSD bf16, LNC=2",
    )


def _moe_block_tkg(lib: _Lib) -> Case:
    # test_moe_block_tkg.py bf16 row [2, False, 1, 1, 4096, None, 384, 128, 128, 8, SOFTMAX, SiLU, POST_SCALE,
    # bf16, ..., router_act_first, norm_topk_prob] with Qwen3-30B-A3B: T 4, H 2048, I 192, E 128, top-8.
    # x and gamma N(0, 1) (the test's U(-0.1, 0.1) gives outputs below the bf16 atol), router U(-0.1, 0.1),
    # expert weights N(0, 1/fan_in); LNC=2. Outputs: (out [T, H], router_logits [T, E]).
    def make():
        enums = lib.mod("utils.common_types")
        nl = _nl()
        rng = _rng()
        b, s, h, i, e, k = 4, 1, 2048, 192, 128, 8
        return {
            "inp": _randn(rng, (b, s, h), _bf16()),
            "gamma": _randn(rng, (1, h), _bf16()),
            "router_weights": rng.uniform(-0.1, 0.1, (h, e)).astype(_bf16()),
            "expert_gate_up_weights": _randn(rng, (e, h, 2, i), _bf16(), scale=h**-0.5),
            "expert_down_weights": _randn(rng, (e, i, h), _bf16(), scale=i**-0.5),
            "eps": 1e-6,
            "top_k": k,
            "router_act_fn": enums.RouterActFnType.SOFTMAX,
            "router_pre_norm": True,
            "norm_topk_prob": True,
            "expert_affinities_scaling_mode": enums.ExpertAffinityScaleMode.POST_SCALE,
            "hidden_act_fn": enums.ActFnType.SiLU,
            "router_mm_dtype": nl.bfloat16,
            "skip_router_logits": False,
            "is_all_expert": False,
        }

    inputs = _once(make)

    def run():
        return _np_out(_jitted(lib.mod("moe_block.moe_block_tkg").moe_block_tkg)[2](**inputs()))

    def reference():
        m = lib.mod("moe_block.moe_block_tkg_torch")
        return _torch_ref(m.moe_block_tkg_torch_ref, ("out", "router_logits"), **inputs())

    return Case(
        "moe_block_tkg",
        str(CORE / "moe_block/moe_block_tkg.py"),
        run,
        reference,
        "bf16",
        note="x[4,1,2048] E128 top8 I192 RMSNorm+router+experts bf16, LNC=2; (out, router_logits)",
    )


def _attention_tkg_entry(lib: _Lib):
    """attention_tkg is a sub-kernel (caller-provided out tensor and SbufManager); the library's test launches
    it through a small @nki.jit wrapper that makes an SbufManager over the SBUF less 16 KiB, opens a scope,
    allocates the HBM output and calls it. This entry makes those same calls (flat KV, HBM in/out)."""
    m = lib.mod("attention.attention_tkg")
    sbuf_manager = lib.mod("utils.allocator").SbufManager
    logger = lib.mod("utils.logging").Logger
    import nki
    import nki.language as nl

    def attention_tkg_entry(q, k_active, v_active, k_prior, v_prior, mask, cfg, inv_freqs, rope_pos_ids):
        sbm = sbuf_manager(0, nl.tile_size.total_available_sbuf_size - 16 * 1024, logger("SBM"))
        sbm.open_scope()
        out = nl.ndarray((cfg.bs, cfg.q_head, cfg.d_head, cfg.s_active), dtype=q.dtype, buffer=nl.shared_hbm)
        k_out = nl.ndarray((cfg.bs, 1, cfg.d_head, cfg.s_active), dtype=q.dtype, buffer=nl.shared_hbm)
        out, k_out = m.attention_tkg(
            q,
            k_active,
            v_active,
            k_prior,
            v_prior,
            mask,
            out,
            cfg,
            sbm,
            inv_freqs=inv_freqs,
            rope_pos_ids=rope_pos_ids,
            k_out=k_out,
        )
        sbm.close_scope()
        return out, k_out

    return nki.jit(attention_tkg_entry)


def _attention_tkg(lib: _Lib) -> Case:
    # test_attention_tkg.py flat-KV configs (AttnTKGConfig(4, 1, 5, 1024, ..., tp_k_prior=True)) with Qwen3
    # per kv head: B 4, 8 q heads, s_active 1, s_prior 512, d 128, fused RoPE (required with HBM q/k), mask
    # from the library's gen_mask_tkg_torch.build_full_attention_mask (as the test builds it); inputs U[0, 1);
    # LNC=2. Outputs: (out [B, H, d, s_active], k_out [B, 1, d, s_active] after RoPE).
    lnc = 2

    def make():
        import torch

        utils = lib.mod("attention.attention_tkg_utils")
        masks = lib.mod("attention.gen_mask_tkg_torch")
        cfg = utils.AttnTKGConfig(
            bs=4,
            q_head=8,
            s_active=1,
            curr_sprior=512,
            full_sprior=512,
            d_head=128,
            block_len=0,
            tp_k_prior=True,
            fuse_rope=True,
        )
        rng = _rng()
        b, h, sa, sp, d = cfg.bs, cfg.q_head, cfg.s_active, cfg.curr_sprior, cfg.d_head
        pos = ((np.arange(b) * 3 + (sp // 4 * 3)) % (sp - sa))[:, None]  # the test's cache lengths
        mask = masks.build_full_attention_mask(
            cache_lens=torch.from_numpy(pos.ravel().astype(np.float32)),
            batch=b,
            num_heads=h,
            s_active=sa,
            s_ctx=sp,
            lnc=lnc,
            block_len=0,
            include_active_mask=True,
            transposed=True,
            enable_fa_s_prior_tiling=cfg.enable_fa_s_prior_tiling,
        )
        return {
            "q": rng.random((b, h, sa, d), dtype=np.float32).astype(_bf16()),
            "k_active": rng.random((b, 1, sa, d), dtype=np.float32).astype(_bf16()),
            "v_active": rng.random((b, 1, sa, d), dtype=np.float32).astype(_bf16()),
            "k_prior": rng.random((b, 1, sp, d), dtype=np.float32).astype(_bf16()),
            "v_prior": rng.random((b, 1, sp, d), dtype=np.float32).astype(_bf16()),
            "mask": mask.numpy().astype(np.bool_).astype(np.uint8),
            "cfg": cfg,
            "inv_freqs": rng.random((d // 2, 1), dtype=np.float32),
            "rope_pos_ids": np.broadcast_to(pos, (b, sa)).astype(np.float32),
        }

    inputs = _once(make)

    def run():
        return _np_out(_attention_tkg_entry(lib)[lnc](**inputs()))

    def reference():
        import torch

        x = inputs()
        cfg = x["cfg"]
        ref = lib.mod("attention.attention_tkg_torch").attention_tkg_torch_ref
        out = torch.zeros((cfg.bs, cfg.q_head, cfg.d_head, cfg.s_active), dtype=torch.float32)
        k_out = torch.zeros((cfg.bs, 1, cfg.d_head, cfg.s_active), dtype=torch.float32)
        args = {k: _to_torch(v) for k, v in x.items()}
        out, k_out = ref[lnc](out=out, k_out=k_out, sbm=None, **args)
        return _to_numpy(out), _to_numpy(k_out)

    return Case(
        "attention_tkg",
        str(CORE / "attention/attention_tkg.py"),
        run,
        reference,
        "bf16",
        note="q[4,8,1,128] KV[4,1,512,128] flat, fused RoPE, bf16, LNC=2; (out, k_out)",
    )


def _attention_cte(lib: _Lib) -> Case:
    # test_attention_cte.py (bs = batch*heads, tp_q, causal, default CompilerArgs) with Qwen3 per TP-4 rank:
    # 8 q heads sharing 1 kv head (GQA), S 256, d 128, scale 1/sqrt(d); inputs U[0, 1) like the test; LNC=2
    def make():
        rng = _rng()
        bs, bs_kv, s, d = 8, 1, 256, 128
        return {
            "q": rng.random((bs, s, d), dtype=np.float32).astype(_bf16()),
            "k": rng.random((bs_kv, d, s), dtype=np.float32).astype(_bf16()),
            "v": rng.random((bs_kv, s, d), dtype=np.float32).astype(_bf16()),
            "scale": d**-0.5,
            "causal_mask": True,
            "tp_q": True,
            "tp_k": False,
            "tp_out": False,
        }

    inputs = _once(make)

    def run():
        return _np_out(lib.mod("attention.attention_cte").attention_cte[2](**inputs()))

    def reference():
        return _torch_ref(lib.mod("attention.attention_cte_torch").attention_cte_torch_ref, None, **inputs())

    return Case(
        "attention_cte",
        str(CORE / "attention/attention_cte.py"),
        run,
        reference,
        "bf16",
        note="q[8,256,128] k[1,128,256] v[1,256,128] causal GQA bf16, LNC=2",
    )


def _moe_cte(lib: _Lib) -> Case:
    # test_moe_cte.py SHARD_ON_BLOCK rows (3072, 1024, 8, 256, 4, 192, bf16, ...) shrunk and Qwen3-like:
    # T 256 tokens, H 2048, I 192, E 8 local experts, top-4 (per token), block 256, SiLU, POST_SCALE, no bias;
    # called through the public moe_cte with MoECTESpec(shard_on_block); LNC=2. Routing: each token picks 4
    # distinct experts; each expert's tokens fill whole blocks, padded with id T (the dummy row T of
    # hidden_states); affinities are [(T+1)*E, 1] with zeros off the selected experts.
    def make():
        m = lib.mod("moe.moe_cte.moe_cte")
        enums = lib.mod("utils.common_types")
        rng = _rng()
        t, h, i, e, k, blk = 256, 2048, 192, 8, 4, 256
        choice = np.stack([rng.permutation(e)[:k] for _ in range(t)])
        aff = np.zeros((t + 1, e), np.float32)
        w = rng.random((t, k)).astype(np.float32)
        np.put_along_axis(aff[:t], choice, w / w.sum(axis=1, keepdims=True), axis=1)
        positions, experts = [], []
        for ex in range(e):
            toks = np.nonzero((choice == ex).any(axis=1))[0]
            n_blocks = max(1, -(-toks.size // blk))
            padded = np.full(n_blocks * blk, t, np.int32)
            padded[: toks.size] = toks
            positions.append(padded)
            experts += [ex] * n_blocks
        hidden = np.zeros((t + 1, h), np.float32)
        hidden[:t] = rng.standard_normal((t, h), dtype=np.float32)
        return {
            "hidden_states": hidden.astype(_bf16()),
            "expert_affinities_masked": aff.reshape(-1, 1).astype(_bf16()),
            "gate_up_proj_weight": _randn(rng, (e, h, 2, i), _bf16(), scale=h**-0.5),
            "down_proj_weight": _randn(rng, (e, i, h), _bf16(), scale=i**-0.5),
            "token_position_to_id": np.concatenate(positions).astype(np.int32),
            "block_to_expert": np.array(experts, np.int32).reshape(-1, 1),
            "block_size": blk,
            "spec": m.MoECTESpec(implementation=m.MoECTEImplementation.shard_on_block),
            "activation_function": enums.ActFnType.SiLU,
            "expert_affinities_scaling_mode": enums.ExpertAffinityScaleMode.POST_SCALE,
        }

    inputs = _once(make)

    def run():
        return _np_out(_jitted(lib.mod("moe.moe_cte.moe_cte").moe_cte)[2](**inputs()))

    def reference():
        bwmm = importlib.import_module(
            "test.integration.nkilib.core.moe.moe_cte.test_moe_cte_common"
        ).BWMMFunc
        x = {key: v for key, v in inputs().items() if key != "spec"}
        m = lib.mod("moe.moe_cte.moe_cte_torch")
        return _torch_ref(m.moe_cte_torch_ref, ("output",), bwmm_func=bwmm.SHARD_ON_BLOCK, top_k=4, **x)

    return Case(
        "moe_cte",
        str(CORE / "moe/moe_cte/moe_cte.py"),
        run,
        reference,
        "bf16",
        note="T256 H2048 I192 E8 top4 block 256 bf16, shard_on_block, LNC=2",
    )


def _rmsnorm_tkg_entry(lib: _Lib):
    """rmsnorm_tkg writes into a caller-provided output (the test passes it as an aliased HBM input); this
    entry allocates that [128, B*S, H/128] HBM output and calls the kernel."""
    m = lib.mod("subkernels.rmsnorm_tkg")
    import nki
    import nki.language as nl

    def rmsnorm_tkg_entry(input, gamma, eps):
        b, s, h = input.shape
        out = nl.ndarray((128, b * s, h // 128), dtype=input.dtype, buffer=nl.shared_hbm)
        m.rmsnorm_tkg(input, gamma, out, eps=eps)
        return out

    return nki.jit(rmsnorm_tkg_entry)


def _rmsnorm_tkg(lib: _Lib) -> Case:
    # test_rmsnorm_tkg.py "LNC2 higher batch" (2, 4, 1, 5120, ...) with Qwen3 H 2048, bf16 (the test uses
    # fp16); LNC=2, so the reference is rmsnorm_tkg_torch_ref (the LNC2 output layout)
    def make():
        rng = _rng()
        b, s, h = 4, 1, 2048
        return {"input": _randn(rng, (b, s, h), _bf16()), "gamma": _randn(rng, (1, h), _bf16()), "eps": 1e-6}

    inputs = _once(make)

    def run():
        return _np_out(_rmsnorm_tkg_entry(lib)[2](**inputs()))

    def reference():
        x = inputs()
        b, s, h = x["input"].shape
        out = np.zeros((128, b * s, h // 128), _bf16())
        return _torch_ref(
            lib.mod("subkernels.rmsnorm_torch").rmsnorm_tkg_torch_ref, ("out",), output=out, **x
        )

    return Case(
        "rmsnorm_tkg",
        str(CORE / "subkernels/rmsnorm_tkg.py"),
        run,
        reference,
        "bf16",
        note="x[4,1,2048] bf16 -> [128,4,16], LNC=2",
    )


def _find_nonzero_indices(lib: _Lib) -> Case:
    # test_find_nonzero_indices.py (4096, 128, 8, 4096, "int32"): Qwen3-30B-A3B's 128 experts top-8 over
    # 4096 tokens, a [T, E] 0/1 routing mask (exactly T*top_k/E tokens per expert); LNC=2; exact match
    def make():
        rng = _rng()
        t, e, k = 4096, 128, 8
        per_expert = t * k // e
        flat = rng.permutation(np.concatenate([np.ones(per_expert * e), np.zeros((t - per_expert) * e)]))
        return {"input_tensor": flat.reshape(e, t).T.astype(np.int32), "chunk_size": t}

    inputs = _once(make)

    def run():
        return _np_out(lib.mod("subkernels.find_nonzero_indices").find_nonzero_indices[2](**inputs()))

    def reference():
        m = lib.mod("subkernels.find_nonzero_indices_torch")
        return _torch_ref(m.find_nonzero_indices_torch_ref, ("indices", "nonzero_counts"), **inputs())

    # int32 outputs: exact match, as the library's test (atol=rtol=0)
    return Case(
        "find_nonzero_indices",
        str(CORE / "subkernels/find_nonzero_indices.py"),
        run,
        reference,
        "fp32",
        atol=0.0,
        rtol=0.0,
        note="mask[4096,128] int32 (top-8 routing), LNC=2; (indices, counts)",
    )


def _gen_mask_tkg(lib: _Lib) -> Case:
    # test_gen_mask_tkg.py HBM-wrapper tests (gen_mask_tkg_hbm vs gen_mask_tkg_hbm_torch_ref[lnc]) with Qwen3
    # decode: B 4, 8 q heads per kv head, s_active 1, s_prior 512, flat KV, random cache lengths; LNC=2; exact
    lnc = 2

    def make():
        rng = _rng()
        b, h, sa, sp = 4, 8, 1, 512
        cache_lens = rng.integers(1, sp, size=b)
        return {
            "pos_ids_hbm": np.repeat(cache_lens, sa).reshape(1, b * sa).astype(np.float32),
            "bs": b,
            "q_head": h,
            "s_active": sa,
            "s_prior": sp,
            "block_len": 0,
        }

    inputs = _once(make)

    def run():
        return _np_out(_jitted(lib.mod("attention.gen_mask_tkg").gen_mask_tkg_hbm)[lnc](**inputs()))

    def reference():
        ref = lib.mod("attention.gen_mask_tkg_torch").gen_mask_tkg_hbm_torch_ref
        return _to_numpy(ref[lnc](**{k: _to_torch(v) for k, v in inputs().items()}))

    # 0/1 mask: exact match, as the library's test (relative/absolute accuracy 0)
    return Case(
        "gen_mask_tkg",
        str(CORE / "attention/gen_mask_tkg.py"),
        run,
        reference,
        "fp32",
        atol=0.0,
        rtol=0.0,
        note="gen_mask_tkg_hbm B4 H8 s_active 1 s_prior 512 flat, LNC=2",
    )


def _qkv_cte(lib: _Lib) -> Case:
    # test_qkv_cte.py (RMSNorm-fused QKV, BSD output) with Qwen3 per TP-4 rank: B 1, S 256, H 2048,
    # 8 q + 1 kv heads x 128 (fused 1280); LNC=2. The library has no qkv_cte torch reference (its test uses a
    # NumPy golden inside the test file); the reference here is qkv_tkg_torch_ref, the library's torch
    # reference of the same RMSNorm + fused-QKV projection with the same [B, S, fused] BSD output.
    def make():
        enums = lib.mod("utils.common_types")
        rng = _rng()
        b, s, h, nq, nkv, d = 1, 256, 2048, 8, 1, 128
        return {
            "input": _randn(rng, (b, s, h), _bf16()),
            "fused_qkv_weights": _randn(rng, (h, (nq + 2 * nkv) * d), _bf16(), scale=h**-0.5),
            "output_layout": enums.QKVOutputLayout.BSD,
            "fused_norm_type": enums.NormType.RMS_NORM,
            "gamma_norm_weights": _randn(rng, (1, h), _bf16()),
            "norm_eps": 1e-6,
            "d_head": d,
            "num_q_heads": nq,
            "num_kv_heads": nkv,
        }

    inputs = _once(make)

    def run():
        return _np_out(_jitted(lib.mod("qkv.qkv_cte").qkv_cte)[2](**inputs()))

    def reference():
        x = inputs()
        return _torch_ref(
            lib.mod("qkv.qkv_tkg_torch").qkv_tkg_torch_ref,
            ("out",),
            hidden=x["input"],
            qkv_w=x["fused_qkv_weights"],
            norm_w=x["gamma_norm_weights"],
            d_head=x["d_head"],
            num_kv_heads=x["num_kv_heads"],
            num_q_heads=x["num_q_heads"],
            output_layout=x["output_layout"],
            eps=x["norm_eps"],
            norm_type=x["fused_norm_type"],
        )

    return Case(
        "qkv_cte",
        str(CORE / "qkv/qkv_cte.py"),
        run,
        reference,
        "bf16",
        # The kernel rounds the normalised activations twice to bf16 (x·rsqrt, then ·gamma) before the matmul:
        # a NumPy model of exactly that matches the emulator on 99.2% of outputs bit for bit, and differs from
        # the fp32 reference by ~0.003 rms absolute, independent of the output's size; atol as for qkv_tkg.
        atol=0.03,
        note="x[1,256,2048] w[2048,1280] RMSNorm BSD bf16, LNC=2; ref: qkv_tkg_torch_ref (same math)",
    )


_BUILDERS: list[Callable[[_Lib], Case]] = [
    _cumsum,
    _rope,
    _rope_hf,
    _cascaded_max,
    _rotational_topk,
    _indexed_flatten,
    _output_projection_cte,
    _output_projection_tkg,
    _rmsnorm_quant,
    _router_topk,
    _moe_tkg_selective,
    _moe_tkg_all,
    _mlp_tkg,
    _qkv_tkg,
    _moe_block_tkg,
    _attention_tkg,
    _attention_cte,
    _moe_cte,
    _rmsnorm_tkg,
    _find_nonzero_indices,
    _gen_mask_tkg,
    _qkv_cte,
]


def cases(root: Path) -> list[Case]:
    """The nki-library cases for the checkout at `root` (nothing is imported until a case runs)."""
    lib = _Lib(Path(root))
    built = [build(lib) for build in _BUILDERS]
    for case in built:
        case.reference = _releasing(case.reference)
    return built
