"""RMSNorm over the hidden dim, plain and with the fused residual add of every decoder layer.

    y = x / sqrt(mean(x², axis=-1) + eps) * w                 rmsnorm_vN(x, w, eps) -> y
    h = x + residual;  y = rmsnorm(h)                         add_rmsnorm_vN(x, residual, w, eps) -> (y, h)

Shape legend: T tokens (rows, any count >= 1), H hidden (free dim; 2048 for Qwen3-30B-A3B),
P = nl.tile_size.pmax = 128 partitions, j rows packed per partition. Rows go on partitions; statistics are
fp32; outputs in x.dtype (bf16 in the model). Each ``add_`` variant is its own body: the plain body plus the
residual load, the add and the store of h, so both read top to bottom.

Versions (each adds one idea):
    rmsnorm_v0      one 128-row tile per iteration, weight broadcast re-loaded for every tile
    add_rmsnorm_v0  v0 with the residual add fused (h = x + residual stored, y = rmsnorm(h))
    rmsnorm_v1      weight broadcast once; rows packed j per partition so each DMA moves j·H·2 B per partition
    add_rmsnorm_v1  v1 with the residual add fused
    rmsnorm_v2      rows split across the two physical cores of an LNC=2 launch (``kernel[2]``)
    add_rmsnorm_v2  v2 with the residual add fused
    rmsnorm_v3      ACT/DVE balance: ACT does x·rstd (HF's rounding point), DVE only the bf16·bf16 w multiply
    add_rmsnorm_v3  v3 with the residual add fused

Run: ``nki_moe.sim.run(rmsnorm_v3, x, w, 1e-6, lnc=2)`` (fused: ``nki_moe.sim.run(add_rmsnorm_v3, x, residual,
w, 1e-6, lnc=2)``); checked in tests/kernels/test_rmsnorm.py.

Limits (asserted at entry; x, residual [T, H], w [H]):
    T >= 1                        v0-v3  at least one row
    8 <= H <= 8192                v0-v3  one row of x, h, y and the weight must fit a partition
"""

import nki
import nki.isa as nisa
import nki.language as nl

from nki_moe.kernels.tiles import lnc_share

J_MAX = 4  # rows per partition in one packed transfer: 4 × 2048 × 2 B = 16 KiB per partition


def _check(x, w, residual=None):
    """Restate the layout limits of every version; returns (T, H)."""
    T, H = x.shape
    assert T >= 1, f"need at least one row, got T={T}"
    assert tuple(w.shape) == (H,), f"weight shape {tuple(w.shape)} != ({H},)"
    assert 8 <= H <= 8192, f"hidden size {H} outside [8, 8192] (one row must fit a partition)"
    if residual is not None:
        assert tuple(residual.shape) == (T, H), f"residual shape {tuple(residual.shape)} != {(T, H)}"
    return T, H


def _load_weight(w, p):
    """Weight broadcast to p partitions by a partition-step-0 HBM read (H·2 contiguous bytes each)."""
    H = w.shape[0]
    w_tile = nl.ndarray((p, H), dtype=w.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=w_tile, src=w.ap(pattern=[[0, p], [1, H]], offset=0))
    return w_tile


def _chunks(r0, r1):
    """(first row, partitions, rows per partition) covering rows [r0, r1): J_MAX-packed, then a remainder."""
    P = nl.tile_size.pmax
    out = []
    full = (r1 - r0) // P
    row = r0
    while full > 0:
        j = min(J_MAX, full)
        out.append((row, P, j))
        row += P * j
        full -= j
    if row < r1:
        out.append((row, r1 - row, 1))
    return out


def _rstd(h_t, eps):
    """rstd [p, j] fp32 = 1 / sqrt(mean(h², axis=-1) + eps) of h_t [p, j, H]; squares summed on ACT."""
    p, j, H = h_t.shape
    ssum = nl.ndarray((p, j), dtype=nl.float32, buffer=nl.sbuf)
    sq = nl.ndarray((p, H), dtype=nl.bfloat16, buffer=nl.sbuf)  # discarded; only the sum is kept
    for jj in range(j):
        nisa.activation(
            dst=sq,
            op=nl.square,
            data=h_t[:, jj, :],
            reduce_op=nl.add,
            reduce_res=ssum[:, jj : jj + 1],
            reduce_cmd=nisa.reduce_cmd.reset_reduce,
        )
    rstd = nl.ndarray((p, j), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_scalar(dst=rstd, data=ssum, op0=nl.multiply, operand0=1.0 / H, op1=nl.add, operand1=eps)
    nisa.activation(dst=rstd, op=nl.rsqrt, data=rstd)
    return rstd


# ---- v0: one 128-row tile per iteration, weight re-broadcast per tile --------------------------------------
@nki.jit
def rmsnorm_v0(x, w, eps):
    """Args: x [T, H] bf16/fp32 (rows on partitions), w [H], eps float. Returns: y [T, H] in x.dtype."""
    T, H = _check(x, w)
    P = nl.tile_size.pmax
    y = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
    for i in nl.affine_range((T + P - 1) // P):
        row, p = i * P, min(P, T - i * P)
        w_tile = _load_weight(w, p)
        x_t = nl.ndarray((p, 1, H), dtype=x.dtype, buffer=nl.sbuf)  # one row per partition
        nisa.dma_copy(dst=x_t, src=x[row : row + p, :].reshape((p, 1, H)))
        rstd = _rstd(x_t, eps)
        y_t = nl.ndarray((p, 1, H), dtype=x.dtype, buffer=nl.sbuf)
        nisa.scalar_tensor_tensor(  # y = (x · rstd) · w in one DVE pass (fp32 inside, one rounding)
            dst=y_t[:, 0, :],
            data=x_t[:, 0, :],
            op0=nl.multiply,
            operand0=rstd,
            op1=nl.multiply,
            operand1=w_tile,
        )
        nisa.dma_copy(dst=y[row : row + p, :].reshape((p, 1, H)), src=y_t)
    return y


@nki.jit
def add_rmsnorm_v0(x, residual, w, eps):
    """Args: x, residual [T, H]; w [H]; eps. Returns: (y = rmsnorm(x + residual), h = x + residual)."""
    T, H = _check(x, w, residual)
    P = nl.tile_size.pmax
    y = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
    h = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
    for i in nl.affine_range((T + P - 1) // P):
        row, p = i * P, min(P, T - i * P)
        w_tile = _load_weight(w, p)
        x_t = nl.ndarray((p, 1, H), dtype=x.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=x_t, src=x[row : row + p, :].reshape((p, 1, H)))
        r_t = nl.ndarray((p, 1, H), dtype=x.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=r_t, src=residual[row : row + p, :].reshape((p, 1, H)))
        h_t = nl.ndarray((p, 1, H), dtype=x.dtype, buffer=nl.sbuf)
        nisa.tensor_tensor(dst=h_t, data1=x_t, data2=r_t, op=nl.add)  # rounded like HF's bf16 add
        nisa.dma_copy(dst=h[row : row + p, :].reshape((p, 1, H)), src=h_t)
        rstd = _rstd(h_t, eps)
        y_t = nl.ndarray((p, 1, H), dtype=x.dtype, buffer=nl.sbuf)
        nisa.scalar_tensor_tensor(
            dst=y_t[:, 0, :],
            data=h_t[:, 0, :],
            op0=nl.multiply,
            operand0=rstd,
            op1=nl.multiply,
            operand1=w_tile,
        )
        nisa.dma_copy(dst=y[row : row + p, :].reshape((p, 1, H)), src=y_t)
    return y, h


# ---- v1: weight broadcast once, rows packed j per partition (large DMAs) ----------------------------------
@nki.jit
def rmsnorm_v1(x, w, eps):
    """As rmsnorm_v0; rows [0, T) in chunks of 128 × J_MAX rows, weight broadcast once."""
    T, H = _check(x, w)
    y = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
    w_tile = _load_weight(w, min(nl.tile_size.pmax, T))
    for row, p, j in _chunks(0, T):
        x_t = nl.ndarray((p, j, H), dtype=x.dtype, buffer=nl.sbuf)  # rows row + i·j .. + j on partition i
        nisa.dma_copy(dst=x_t, src=x[row : row + p * j, :].reshape((p, j, H)))
        rstd = _rstd(x_t, eps)
        y_t = nl.ndarray((p, j, H), dtype=x.dtype, buffer=nl.sbuf)
        for jj in range(j):
            nisa.scalar_tensor_tensor(
                dst=y_t[:, jj, :],
                data=x_t[:, jj, :],
                op0=nl.multiply,
                operand0=rstd[:, jj : jj + 1],
                op1=nl.multiply,
                operand1=w_tile[0:p, :],
            )
        nisa.dma_copy(dst=y[row : row + p * j, :].reshape((p, j, H)), src=y_t)
    return y


@nki.jit
def add_rmsnorm_v1(x, residual, w, eps):
    """As add_rmsnorm_v0 with v1's transfers."""
    T, H = _check(x, w, residual)
    y = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
    h = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
    w_tile = _load_weight(w, min(nl.tile_size.pmax, T))
    for row, p, j in _chunks(0, T):
        x_t = nl.ndarray((p, j, H), dtype=x.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=x_t, src=x[row : row + p * j, :].reshape((p, j, H)))
        r_t = nl.ndarray((p, j, H), dtype=x.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=r_t, src=residual[row : row + p * j, :].reshape((p, j, H)))
        h_t = nl.ndarray((p, j, H), dtype=x.dtype, buffer=nl.sbuf)
        nisa.tensor_tensor(dst=h_t, data1=x_t, data2=r_t, op=nl.add)
        nisa.dma_copy(dst=h[row : row + p * j, :].reshape((p, j, H)), src=h_t)
        rstd = _rstd(h_t, eps)
        y_t = nl.ndarray((p, j, H), dtype=x.dtype, buffer=nl.sbuf)
        for jj in range(j):
            nisa.scalar_tensor_tensor(
                dst=y_t[:, jj, :],
                data=h_t[:, jj, :],
                op0=nl.multiply,
                operand0=rstd[:, jj : jj + 1],
                op1=nl.multiply,
                operand1=w_tile[0:p, :],
            )
        nisa.dma_copy(dst=y[row : row + p * j, :].reshape((p, j, H)), src=y_t)
    return y, h


# ---- v2: rows split across the two cores of an LNC=2 launch ----------------------------------------------
@nki.jit
def rmsnorm_v2(x, w, eps):
    """As rmsnorm_v1 on this program's contiguous share of the rows; launch as ``rmsnorm_v2[2]``."""
    T, H = _check(x, w)
    y = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
    first, count = lnc_share(T)
    if count > 0:
        w_tile = _load_weight(w, min(nl.tile_size.pmax, count))
        for row, p, j in _chunks(first, first + count):
            x_t = nl.ndarray((p, j, H), dtype=x.dtype, buffer=nl.sbuf)
            nisa.dma_copy(dst=x_t, src=x[row : row + p * j, :].reshape((p, j, H)))
            rstd = _rstd(x_t, eps)
            y_t = nl.ndarray((p, j, H), dtype=x.dtype, buffer=nl.sbuf)
            for jj in range(j):
                nisa.scalar_tensor_tensor(
                    dst=y_t[:, jj, :],
                    data=x_t[:, jj, :],
                    op0=nl.multiply,
                    operand0=rstd[:, jj : jj + 1],
                    op1=nl.multiply,
                    operand1=w_tile[0:p, :],
                )
            nisa.dma_copy(dst=y[row : row + p * j, :].reshape((p, j, H)), src=y_t)
    return y


@nki.jit
def add_rmsnorm_v2(x, residual, w, eps):
    """As add_rmsnorm_v1 with v2's LNC split."""
    T, H = _check(x, w, residual)
    y = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
    h = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
    first, count = lnc_share(T)
    if count > 0:
        w_tile = _load_weight(w, min(nl.tile_size.pmax, count))
        for row, p, j in _chunks(first, first + count):
            x_t = nl.ndarray((p, j, H), dtype=x.dtype, buffer=nl.sbuf)
            nisa.dma_copy(dst=x_t, src=x[row : row + p * j, :].reshape((p, j, H)))
            r_t = nl.ndarray((p, j, H), dtype=x.dtype, buffer=nl.sbuf)
            nisa.dma_copy(dst=r_t, src=residual[row : row + p * j, :].reshape((p, j, H)))
            h_t = nl.ndarray((p, j, H), dtype=x.dtype, buffer=nl.sbuf)
            nisa.tensor_tensor(dst=h_t, data1=x_t, data2=r_t, op=nl.add)
            nisa.dma_copy(dst=h[row : row + p * j, :].reshape((p, j, H)), src=h_t)
            rstd = _rstd(h_t, eps)
            y_t = nl.ndarray((p, j, H), dtype=x.dtype, buffer=nl.sbuf)
            for jj in range(j):
                nisa.scalar_tensor_tensor(
                    dst=y_t[:, jj, :],
                    data=h_t[:, jj, :],
                    op0=nl.multiply,
                    operand0=rstd[:, jj : jj + 1],
                    op1=nl.multiply,
                    operand1=w_tile[0:p, :],
                )
            nisa.dma_copy(dst=y[row : row + p * j, :].reshape((p, j, H)), src=y_t)
    return y, h


# ---- v3: ACT/DVE engine balance ---------------------------------------------------------------------------
@nki.jit
def rmsnorm_v3(x, w, eps):
    """As rmsnorm_v2; x·rstd on ACT, the weight multiply on DVE in bf16 fast mode. Launch ``[2]``."""
    T, H = _check(x, w)
    y = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
    first, count = lnc_share(T)
    if count > 0:
        w_tile = _load_weight(w, min(nl.tile_size.pmax, count))
        for row, p, j in _chunks(first, first + count):
            x_t = nl.ndarray((p, j, H), dtype=x.dtype, buffer=nl.sbuf)
            nisa.dma_copy(dst=x_t, src=x[row : row + p * j, :].reshape((p, j, H)))
            rstd = _rstd(x_t, eps)
            y_t = nl.ndarray((p, j, H), dtype=x.dtype, buffer=nl.sbuf)
            for jj in range(j):
                n_t = nl.ndarray(
                    (p, H), dtype=x_t.dtype, buffer=nl.sbuf
                )  # bf16(x · rstd): HF's rounding point
                nisa.activation(dst=n_t, op=nl.copy, data=x_t[:, jj, :], scale=rstd[:, jj : jj + 1])
                nisa.tensor_tensor(dst=y_t[:, jj, :], data1=n_t, data2=w_tile[0:p, :], op=nl.multiply)
            nisa.dma_copy(dst=y[row : row + p * j, :].reshape((p, j, H)), src=y_t)
    return y


@nki.jit
def add_rmsnorm_v3(x, residual, w, eps):
    """As add_rmsnorm_v2 with v3's engine balance. Returns (y, h)."""
    T, H = _check(x, w, residual)
    y = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
    h = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
    first, count = lnc_share(T)
    if count > 0:
        w_tile = _load_weight(w, min(nl.tile_size.pmax, count))
        for row, p, j in _chunks(first, first + count):
            x_t = nl.ndarray((p, j, H), dtype=x.dtype, buffer=nl.sbuf)
            nisa.dma_copy(dst=x_t, src=x[row : row + p * j, :].reshape((p, j, H)))
            r_t = nl.ndarray((p, j, H), dtype=x.dtype, buffer=nl.sbuf)
            nisa.dma_copy(dst=r_t, src=residual[row : row + p * j, :].reshape((p, j, H)))
            h_t = nl.ndarray((p, j, H), dtype=x.dtype, buffer=nl.sbuf)
            nisa.tensor_tensor(dst=h_t, data1=x_t, data2=r_t, op=nl.add)
            nisa.dma_copy(dst=h[row : row + p * j, :].reshape((p, j, H)), src=h_t)
            rstd = _rstd(h_t, eps)
            y_t = nl.ndarray((p, j, H), dtype=x.dtype, buffer=nl.sbuf)
            for jj in range(j):
                n_t = nl.ndarray((p, H), dtype=h_t.dtype, buffer=nl.sbuf)
                nisa.activation(dst=n_t, op=nl.copy, data=h_t[:, jj, :], scale=rstd[:, jj : jj + 1])
                nisa.tensor_tensor(dst=y_t[:, jj, :], data1=n_t, data2=w_tile[0:p, :], op=nl.multiply)
            nisa.dma_copy(dst=y[row : row + p * j, :].reshape((p, j, H)), src=y_t)
    return y, h
