"""NumPy references for every op and the whole Qwen3-MoE forward (fp32 accumulation, optional bf16 rounding).

One module per op family; each op has a ``*_cost`` function giving its MACs and bytes (``OpCost``).
"""

from nki_moe.reference.attention import (
    KVCache,
    attention_block,
    attention_core_cost,
    gqa_attention,
    o_proj_cost,
    qkv_proj_cost,
)
from nki_moe.reference.experts import (
    expert_mlp,
    expert_mlp_cost,
    moe_block,
    moe_block_cost,
    moe_combine,
    moe_combine_cost,
    moe_experts,
    moe_experts_cost,
    silu,
)
from nki_moe.reference.model import (
    KernelLayerWeights,
    ReferenceModel,
    Routing,
    decoder_layer,
    embed,
    embed_cost,
    lm_head,
    lm_head_cost,
    op_costs,
)
from nki_moe.reference.norms import add_rms_norm, add_rms_norm_cost, qk_norm, rms_norm, rms_norm_cost
from nki_moe.reference.numerics import PRECISIONS, OpCost, Precision, linear, linear_cost, round_to
from nki_moe.reference.rope import apply_rope, rope_cos_sin, rope_cost, rope_inv_freq, rotate_half
from nki_moe.reference.router import router, router_cost, softmax, top_k, topk_margin
from nki_moe.reference.sampling import greedy, sample

__all__ = [
    "KVCache",
    "attention_block",
    "attention_core_cost",
    "gqa_attention",
    "o_proj_cost",
    "qkv_proj_cost",
    "expert_mlp",
    "expert_mlp_cost",
    "moe_block",
    "moe_block_cost",
    "moe_combine",
    "moe_combine_cost",
    "moe_experts",
    "moe_experts_cost",
    "silu",
    "KernelLayerWeights",
    "ReferenceModel",
    "Routing",
    "decoder_layer",
    "embed",
    "embed_cost",
    "lm_head",
    "lm_head_cost",
    "op_costs",
    "add_rms_norm",
    "add_rms_norm_cost",
    "qk_norm",
    "rms_norm",
    "rms_norm_cost",
    "PRECISIONS",
    "OpCost",
    "Precision",
    "linear",
    "linear_cost",
    "round_to",
    "apply_rope",
    "rope_cos_sin",
    "rope_cost",
    "rope_inv_freq",
    "rotate_half",
    "router",
    "router_cost",
    "softmax",
    "top_k",
    "topk_margin",
    "greedy",
    "sample",
]
