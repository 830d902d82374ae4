"""Host-side weight layouts the kernels expect (pure NumPy, done once per weight; no NKI import).

tile_weight(w)   w [K, N] -> [nb, 128, K/128, NB] column blocks for matmul_v5 / matmul_v6
attention_layer_layout(w_qkv, w_o, n_kv, d)   the fused block's weights per core for attention_block_v8
                 (rows blocked as x, q|k|v columns split by core, w_o's heads contiguous per partition)
"""

from __future__ import annotations

import numpy as np


def tile_weight(w, n_prog: int = 2, n_block: int = 2048) -> np.ndarray:
    """Host-side layout of ``matmul_v5``: w [K, N] → [nb, 128, K/128, NB] column blocks, zero padded.

    NB = min(n_block, N / n_prog rounded up to 128) so every core gets a block; done once per weight.
    """
    K, N = w.shape
    nb_w = min(n_block, 128 * -(-N // (128 * n_prog)))
    nb = -(-N // nb_w)
    padded = np.zeros((K, nb * nb_w), dtype=w.dtype)
    padded[:, :N] = w
    return np.ascontiguousarray(padded.reshape(K // 128, 128, nb, nb_w).transpose(2, 1, 0, 3))


def attention_layer_layout(w_qkv, w_o, n_kv: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Host-side layout of ``attention_block_v8`` (LNC=2): (w_qkv, w_o) -> (w_qkv_c, w_o_c).

    Rows of x = RMSNorm(h) are blocked as the kernel holds x: row hf·H/2 + i·nb + t (nb = H/256, halves
    hf = 0, 1) on partition i, slot r = hf·nb + t (attention_block_v7's order). Core c computes its n_q/2
    query heads (c·n_q/2 …) and, over the whole contraction, the k heads (c = 0) or the v heads (c = 1),
    so every column block of a core is one contiguous run per partition (no column split of a row):

    * w_qkv_c [2, 128, (H/128)·(n_kv + n_q/2)·d]: per core and partition, first its k|v block [r, n_kv·d],
      then its q block [r, n_q/2·d] (row-major), 4 KiB + 16 KiB per partition at H = 2048, n_q = 8;
    * w_o_c [2, d, n_q, H/2]: w_o_c[c, i, k, :] = w_o[o_c(k)·d + i, c·H/2 : (c+1)·H/2], o_c = the core's
      own heads first, then the peer's: any run of heads is one contiguous run per partition.

    Args: w_qkv [H, (n_q + 2·n_kv)·d] (q | k | v columns, [in, out]); w_o [n_q·d, H]; n_kv, d.
    Done once per layer at load time, like ``tile_weight``.
    """
    H = w_qkv.shape[0]
    n_q = w_o.shape[0] // d
    assert H % 256 == 0 and n_q % 2 == 0, f"H={H} must be a multiple of 256, n_q={n_q} even"
    assert w_qkv.shape == (H, (n_q + 2 * n_kv) * d), f"w_qkv {w_qkv.shape} vs H={H}, {n_q}/{n_kv} heads"
    assert w_o.shape == (n_q * d, H), f"w_o {w_o.shape} != {(n_q * d, H)}"
    P, nh, Hc, nb = 128, n_q // 2, H // 2, H // 256

    def blocked(a):  # [H, ...] -> [P, 2·nb, ...]: row hf·Hc + i·nb + t at [i, hf·nb + t]
        return np.swapaxes(a.reshape(2, P, nb, *a.shape[1:]), 0, 1).reshape(P, 2 * nb, *a.shape[1:])

    k0, v0 = n_q * d, (n_q + n_kv) * d
    cores = []
    for c, kv in enumerate((w_qkv[:, k0:v0], w_qkv[:, v0:])):
        q = w_qkv[:, c * nh * d : (c + 1) * nh * d]
        cores.append(np.concatenate([blocked(kv).reshape(P, -1), blocked(q).reshape(P, -1)], axis=1))
    heads = w_o.reshape(n_q, d, 2, Hc)
    wo = []
    for c in range(2):
        order = [*range(c * nh, (c + 1) * nh), *(h for h in range(n_q) if not c * nh <= h < (c + 1) * nh)]
        wo.append(heads[order, :, c, :].transpose(1, 0, 2))
    return np.ascontiguousarray(np.stack(cores)), np.ascontiguousarray(np.stack(wo))
