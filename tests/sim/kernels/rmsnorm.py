"""RMSNorm over rows: out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w (rows in any count)."""

import nki
import nki.isa as nisa
import nki.language as nl


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
