"""RMSNorm whose weight reaches every partition through nc_stream_shuffle instead of a broadcast DMA.

out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w, rows in any count (the last row tile may be ragged).
The weight is DMAed once into partition 0, copied to partitions 1..31 by one shuffle (every mask entry
selects partition 0 of the quadrant; shuffles never cross 32-partition quadrants), then quadrant 0 is
doubled into partitions 32..63 and 0..63 into 64..127 with two SBUF-to-SBUF DMAs.
"""

import nki
import nki.isa as nisa
import nki.language as nl

QUADRANT = 32


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
        sq = nl.ndarray((P, H), dtype=nl.float32, buffer=nl.sbuf)
        sum_sq = nl.ndarray((P, 1), dtype=nl.float32, buffer=nl.sbuf)
        nisa.activation(
            dst=sq[0:rows],
            op=nl.square,
            data=x_tile[0:rows],
            reduce_op=nl.add,
            reduce_res=sum_sq[0:rows],
            reduce_cmd=nisa.reduce_cmd.reset_reduce,
        )
        rstd = nl.ndarray((P, 1), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_scalar(
            dst=rstd[0:rows], data=sum_sq[0:rows], op0=nl.multiply, operand0=1.0 / H, op1=nl.add, operand1=eps
        )
        nisa.activation(dst=rstd[0:rows], op=nl.rsqrt, data=rstd[0:rows])
        y = nl.ndarray((P, H), dtype=x.dtype, buffer=nl.sbuf)
        nisa.scalar_tensor_tensor(
            dst=y[0:rows],
            data=x_tile[0:rows],
            op0=nl.multiply,
            operand0=rstd[0:rows],
            op1=nl.multiply,
            operand1=w_tile[0:rows],
        )
        nisa.dma_copy(dst=out[i * P : i * P + rows, :], src=y[0:rows, :])
    return out
