"""Host-side weight layouts the kernels expect (pure NumPy, done once per weight; no NKI import).

tile_weight(w)   w [K, N] -> [nb, 128, K/128, NB] column blocks for matmul_v5 / matmul_v6
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
