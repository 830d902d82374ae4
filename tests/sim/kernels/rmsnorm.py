"""RMSNorm over rows: out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w (rows in any count).

Two kernels that differ only in how the weight reaches every partition:
  rmsnorm          one broadcast DMA (partition-step-0 access pattern on HBM)
  rmsnorm_shuffle  the weight is DMAed once into partition 0, copied to partitions 1..31 by one
                   nc_stream_shuffle (every mask entry selects partition 0 of the quadrant; shuffles never
                   cross 32-partition quadrants), then quadrant 0 is doubled into partitions 32..63 and
                   0..63 into 64..127 with two SBUF-to-SBUF DMAs
The last row tile may be ragged; statistics are computed in fp32.
"""

import nki
import nki.isa as nisa
import nki.language as nl

QUADRANT = 32


def _normalize(x_tile, w_tile, rows, eps):
    """y[0:rows] = x_tile · rstd · w_tile of one [P, H] row tile (square-sum on ACT, fp32); returns y."""
    P, H = x_tile.shape
    sq = nl.ndarray((P, H), dtype=nl.float32, buffer=nl.sbuf)
    ssum = nl.ndarray((P, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.activation(
        dst=sq[0:rows],
        op=nl.square,
        data=x_tile[0:rows],
        reduce_op=nl.add,
        reduce_res=ssum[0:rows],
        reduce_cmd=nisa.reduce_cmd.reset_reduce,
    )
    rstd = nl.ndarray((P, 1), dtype=nl.float32, buffer=nl.sbuf)
    nisa.tensor_scalar(
        dst=rstd[0:rows], data=ssum[0:rows], op0=nl.multiply, operand0=1.0 / H, op1=nl.add, operand1=eps
    )
    nisa.activation(dst=rstd[0:rows], op=nl.rsqrt, data=rstd[0:rows])
    y = nl.ndarray((P, H), dtype=x_tile.dtype, buffer=nl.sbuf)
    nisa.scalar_tensor_tensor(
        dst=y[0:rows],
        data=x_tile[0:rows],
        op0=nl.multiply,
        operand0=rstd[0:rows],
        op1=nl.multiply,
        operand1=w_tile[0:rows],
    )
    return y


@nki.jit
def rmsnorm(x, w, eps):
    """Args: x [R, H], w [H], eps float. Returns: [R, H] in x.dtype. Statistics in fp32."""
    R, H = x.shape
    assert w.shape == (H,), f"weight shape {w.shape} != ({H},)"
    P = nl.tile_size.pmax
    out = nl.ndarray((R, H), dtype=x.dtype, buffer=nl.shared_hbm)
    # Broadcast w to every partition with a partition-step-0 access pattern on HBM.
    w_tile = nl.ndarray((P, H), dtype=w.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=w_tile, src=w.ap(pattern=[[0, P], [1, H]], offset=0))
    for i in nl.affine_range((R + P - 1) // P):
        rows = min(P, R - i * P)
        x_tile = nl.ndarray((P, H), dtype=x.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=x_tile[0:rows, :], src=x[i * P : i * P + rows, :])
        y = _normalize(x_tile, w_tile, rows, eps)
        nisa.dma_copy(dst=out[i * P : i * P + rows, :], src=y[0:rows, :])
    return out


@nki.jit
def rmsnorm_shuffle(x, w, eps):
    """Args: x [R, H], w [H] (H <= 16384 fp32 or 32768 bf16 per partition), eps float.

    Returns: [R, H] in x.dtype. Statistics are computed in fp32.
    """
    R, H = x.shape
    assert w.shape == (H,), f"weight shape {w.shape} != ({H},)"
    P = nl.tile_size.pmax
    out = nl.ndarray((R, H), dtype=x.dtype, buffer=nl.shared_hbm)

    w_tile = nl.ndarray((P, H), dtype=w.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=w_tile[0:1, :], src=w.reshape((1, H)))
    nisa.nc_stream_shuffle(dst=w_tile[0:QUADRANT], src=w_tile[0:QUADRANT], shuffle_mask=[0] * QUADRANT)
    nisa.dma_copy(dst=w_tile[QUADRANT : 2 * QUADRANT], src=w_tile[0:QUADRANT])
    nisa.dma_copy(dst=w_tile[2 * QUADRANT : P], src=w_tile[0 : 2 * QUADRANT])

    for i in nl.affine_range((R + P - 1) // P):
        rows = min(P, R - i * P)
        x_tile = nl.ndarray((P, H), dtype=x.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=x_tile[0:rows, :], src=x[i * P : i * P + rows, :])
        y = _normalize(x_tile, w_tile, rows, eps)
        nisa.dma_copy(dst=out[i * P : i * P + rows, :], src=y[0:rows, :])
    return out
