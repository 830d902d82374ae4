"""Benchmark: the NumPy reference vs transformers on one real-width Qwen3-30B-A3B decoder layer (CPU).

Two shapes, same weights (random, from the checkpoint writer's initialisation of layer 0):
- decode: one new token attending a 640-position KV cache;
- prefill: 640 tokens, causal.
transformers runs ``Qwen3MoeDecoderLayer`` with eager attention and eager experts (the parity
configuration) in bf16 and, upcast, in fp32; the reference runs in its bf16 mode (rounding like HF) and
fp32 mode. Ratios are to transformers bf16, the configuration the parity tests compare against. The
reference is the
oracle that every notebook runs, so the target is to stay within 2× of transformers. Prints medians and
ratios measured in this run; asserts nothing.

    .venv/bin/python bench/reference.py [--repeats N] [--tokens S]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import Qwen3MoeConfig  # noqa: E402
from transformers.cache_utils import DynamicCache  # noqa: E402
from transformers.models.qwen3_moe.modeling_qwen3_moe import (  # noqa: E402
    Qwen3MoeDecoderLayer,
    Qwen3MoeRotaryEmbedding,
)

from nki_moe.model.checkpoint import init_tensor  # noqa: E402
from nki_moe.model.config import get_config  # noqa: E402
from nki_moe.model.weights import LayerWeights, expected_tensors  # noqa: E402
from nki_moe.reference import KernelLayerWeights, KVCache, decoder_layer, op_costs, rope_cos_sin  # noqa: E402

CFG = get_config("real-width-2layer")


def build_layer() -> tuple[KernelLayerWeights, torch.nn.Module, Qwen3MoeConfig]:
    """Layer 0 of the random checkpoint, as our weights (fp32, kernel layout) and as an HF bf16 layer."""
    shapes = {k: s for k, s in expected_tensors(CFG).items() if k.startswith("model.layers.0.")}
    bf16 = {k: torch.from_numpy(init_tensor(CFG, k, s, seed=0)).to(torch.bfloat16) for k, s in shapes.items()}
    ex = "model.layers.0.mlp.experts.{}.{}.weight"
    experts = range(CFG.num_experts)
    gate_up = torch.stack(
        [torch.cat([bf16[ex.format(e, "gate_proj")], bf16[ex.format(e, "up_proj")]]) for e in experts]
    )
    down = torch.stack([bf16[ex.format(e, "down_proj")] for e in experts])
    p = "model.layers.0."
    f32 = lambda key: bf16[p + key].float().numpy()
    hf_layout = LayerWeights(
        input_norm=f32("input_layernorm.weight"),
        wq=f32("self_attn.q_proj.weight"),
        wk=f32("self_attn.k_proj.weight"),
        wv=f32("self_attn.v_proj.weight"),
        wo=f32("self_attn.o_proj.weight"),
        q_norm=f32("self_attn.q_norm.weight"),
        k_norm=f32("self_attn.k_norm.weight"),
        post_norm=f32("post_attention_layernorm.weight"),
        router=f32("mlp.gate.weight"),
        gate_up=gate_up.float().numpy(),
        down=down.float().numpy(),
    )
    ours = KernelLayerWeights.from_hf(hf_layout)  # [in, out] views, as ReferenceModel reads a checkpoint
    hf_cfg = Qwen3MoeConfig.from_dict(CFG.to_hf_dict())
    hf_cfg._attn_implementation = "eager"
    hf_cfg._experts_implementation = "eager"
    layer = Qwen3MoeDecoderLayer(hf_cfg, 0).to(torch.bfloat16).eval()
    state = {k[len(p) :]: v for k, v in bf16.items() if ".experts." not in k}
    state |= {"mlp.experts.gate_up_proj": gate_up, "mlp.experts.down_proj": down}
    layer.load_state_dict(state, strict=True)
    return ours, layer, hf_cfg


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=640)
    args = parser.parse_args()
    S = args.tokens
    torch.manual_seed(0)
    ours, hf, hf_cfg = build_layer()
    rotary = Qwen3MoeRotaryEmbedding(hf_cfg)
    x = torch.randn(1, S + 1, CFG.hidden_size).to(torch.bfloat16)
    x_np = x[0].float().numpy()
    mask = torch.full((S, S), torch.finfo(torch.bfloat16).min, dtype=torch.bfloat16).triu(1)[None, None]
    pos = torch.arange(S + 1)[None]
    cos_t, sin_t = rotary(x, pos)
    print(
        f"one real-width layer (H={CFG.hidden_size}, E={CFG.num_experts}, k={CFG.num_experts_per_tok}, "
        f"I={CFG.moe_intermediate_size}); torch threads {torch.get_num_threads()}, repeats {args.repeats}"
    )

    def hf_prefill():
        with torch.inference_mode():
            return hf(x[:, :S], attention_mask=mask, position_embeddings=(cos_t[:, :S], sin_t[:, :S]))

    def hf_decode_setup():
        cache = DynamicCache(config=hf_cfg)
        with torch.inference_mode():
            hf(
                x[:, :S],
                attention_mask=mask,
                position_embeddings=(cos_t[:, :S], sin_t[:, :S]),
                cache=cache,
                use_cache=True,
            )
        return cache

    def hf_decode():
        with torch.inference_mode():
            out = hf(
                x[:, S:], position_embeddings=(cos_t[:, S:], sin_t[:, S:]), cache=hf_cache, use_cache=True
            )
        hf_cache.crop(-1)  # back to S cached positions for the next repeat
        return out

    def ref_fns(dtype):
        cos, sin = rope_cos_sin(np.arange(S + 1), CFG.head_dim, CFG.rope_theta, dtype)
        cache = KVCache(1, CFG.num_key_value_heads, CFG.head_dim, capacity=S + 1)
        decoder_layer(x_np[:S], ours, CFG, cos[:S], sin[:S], cache, 0, dtype)

        def decode():
            out = decoder_layer(x_np[S:], ours, CFG, cos[S:], sin[S:], cache, 0, dtype)
            cache.lengths[0] = S  # back to S cached positions
            return out

        return (
            lambda: decoder_layer(x_np[:S], ours, CFG, cos[:S], sin[:S], cache=None, layer=0, dtype=dtype)
        ), decode

    # The machine may be shared: implementations are timed in rotation, so a burst of outside load hits
    # all of them alike, and medians are taken per implementation.
    fns = {f"reference {dt}": ref_fns(dt) for dt in ("bf16", "fp32")}
    hf_cache = hf_decode_setup()
    fns["transformers bf16"] = (hf_prefill, hf_decode)
    results = {"prefill": {}, "decode": {}}
    for shape, col, reps in (("prefill", 0, max(2, args.repeats // 2)), ("decode", 1, 4 * args.repeats)):
        runs = {name: [] for name in fns}
        for pair in fns.values():
            pair[col]()  # warm-up
        for _ in range(reps):
            for name, pair in fns.items():
                t = time.perf_counter()
                pair[col]()
                runs[name].append(time.perf_counter() - t)
        results[shape] = {name: statistics.median(ts) for name, ts in runs.items()}
    # transformers' layer upcast to fp32, for reference (CPUs without native bf16 matmul run bf16 slowly)
    hf.float()
    x, cos_t, sin_t = x.float(), cos_t.float(), sin_t.float()
    mask = torch.full((S, S), torch.finfo(torch.float32).min).triu(1)[None, None]
    hf_cache = hf_decode_setup()
    results["prefill"]["transformers fp32"] = median_time(hf_prefill, max(2, args.repeats // 2))
    results["decode"]["transformers fp32"] = median_time(hf_decode, 4 * args.repeats)

    for shape, times in results.items():
        tokens, cached = (S, 0) if shape == "prefill" else (1, S)
        costs = op_costs(CFG.replace(num_hidden_layers=1), tokens, cached)
        macs = sum(c.macs for k, c in costs.items() if k not in ("lm_head",))
        base = times["transformers bf16"]
        print(f"\n{shape} ({tokens} token(s), {cached} cached; {macs / 1e9:.2f} GMAC in the layer)")
        for name, t in times.items():
            print(
                f"  {name:<18} {t * 1e3:9.1f} ms  {macs / t / 1e9:7.1f} GMAC/s  ratio to transformers "
                f"{t / base:5.2f}x"
            )


if __name__ == "__main__":
    main()
