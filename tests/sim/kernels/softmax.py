"""Row softmax over the free dim: out[r, :] = exp(x[r, :] - max(x[r, :])) / sum(exp(x[r, :] - max)).

Per row tile: the negated row max comes from one tensor_reduce (negate=True); one activation computes
exp(x - max) and, through the Scalar Engine accumulators, the row sums; reciprocal and a tensor_scalar
multiply normalise. Rows in any count (the last row tile may be ragged).
"""

import nki
import nki.isa as nisa
import nki.language as nl


@nki.jit
def softmax(x):
    """Args: x [R, C] (C <= 16384 fp32 elements per partition). Returns: [R, C] in x.dtype (fp32 math)."""
    R, C = x.shape
    P = nl.tile_size.pmax
    out = nl.ndarray((R, C), dtype=x.dtype, buffer=nl.shared_hbm)
    for i in nl.affine_range((R + P - 1) // P):
        rows = min(P, R - i * P)
        x_tile = nl.ndarray((P, C), dtype=x.dtype, buffer=nl.sbuf)
        nisa.dma_copy(dst=x_tile[0:rows, :], src=x[i * P : i * P + rows, :])
        neg_max = nl.ndarray((P, 1), dtype=nl.float32, buffer=nl.sbuf)
        nisa.tensor_reduce(dst=neg_max[0:rows], op=nl.max, data=x_tile[0:rows], axis=1, negate=True)
        exps = nl.ndarray((P, C), dtype=nl.float32, buffer=nl.sbuf)
        row_sum = nl.ndarray((P, 1), dtype=nl.float32, buffer=nl.sbuf)
        nisa.activation(
            dst=exps[0:rows],
            op=nl.exp,
            data=x_tile[0:rows],
            bias=neg_max[0:rows],
            reduce_op=nl.add,
            reduce_res=row_sum[0:rows],
            reduce_cmd=nisa.reduce_cmd.reset_reduce,
        )
        inv_sum = nl.ndarray((P, 1), dtype=nl.float32, buffer=nl.sbuf)
        nisa.reciprocal(dst=inv_sum[0:rows], data=row_sum[0:rows])
        y = nl.ndarray((P, C), dtype=x.dtype, buffer=nl.sbuf)
        nisa.tensor_scalar(dst=y[0:rows], data=exps[0:rows], op0=nl.multiply, operand0=inv_sum[0:rows])
        nisa.dma_copy(dst=out[i * P : i * P + rows, :], src=y[0:rows, :])
    return out
