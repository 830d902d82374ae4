"""RMSNorm over the hidden dim, plain and with the fused residual add of every decoder layer.

    y = x / sqrt(mean(x², axis=-1) + eps) * w                 rmsnorm_vN(x, w, eps) -> y
    h = x + residual;  y = rmsnorm(h)                         add_rmsnorm_vN(x, residual, w, eps) -> (y, h)

Shape legend: T tokens (rows, any count >= 1), H hidden (free dim, 8 <= H, 2048 for Qwen3-30B-A3B),
P = 128 partitions. Rows go on partitions; statistics are fp32; outputs in x.dtype (bf16 in the model).

Versions (each adds one idea; the ``add_`` variant of every version shares its body):
    v0  one 128-row tile per iteration, weight broadcast re-loaded for every tile
    v1  weight broadcast once; rows packed J per partition so each DMA moves J·H·2 bytes per partition
    v2  rows split across the two physical cores of an LNC=2 launch (``kernel[2]``)
    v3  ACT/DVE balance: ACT does x·rstd (the HF rounding point), DVE only the bf16·bf16 weight multiply

Run: ``nki_moe.sim.run(rmsnorm_v3, x, w, 1e-6, lnc=2)``; checked in tests/kernels/test_rmsnorm.py.
"""

import nki
import nki.isa as nisa
import nki.language as nl

J_MAX = 4  # rows per partition in one packed transfer: 4 × 2048 × 2 B = 16 KiB per partition


def _check(x, w, residual):
    """Restate the layout limits of every version."""
    T, H = x.shape
    assert T >= 1, f"need at least one row, got T={T}"
    assert tuple(w.shape) == (H,), f"weight shape {tuple(w.shape)} != ({H},)"
    assert 8 <= H <= 8192, f"hidden size {H} outside [8, 8192] (one row must fit a partition)"
    if residual is not None:
        assert tuple(residual.shape) == (T, H), f"residual shape {tuple(residual.shape)} != {(T, H)}"


def _outputs(x, residual):
    """HBM outputs: y, and h (the new residual stream) for the fused variant."""
    y = nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
    h = None if residual is None else nl.ndarray(x.shape, dtype=x.dtype, buffer=nl.shared_hbm)
    return y, h


def _load_weight(w, P):
    """Weight broadcast to P partitions by a partition-step-0 HBM read (H·2 contiguous bytes each)."""
    H = w.shape[0]
    w_tile = nl.ndarray((P, H), dtype=w.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=w_tile, src=w.ap(pattern=[[0, P], [1, H]], offset=0))
    return w_tile


def _chunks(r0, r1):
    """(first row, partitions, rows per partition) covering rows [r0, r1): J_MAX-packed, then a remainder."""
    P = 128
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


def _rows_in(x, residual, h_out, row, p, j):
    """Load p·j rows (row-major, j per partition) and, fused, add the residual and store h."""
    H = x.shape[1]
    x_t = nl.ndarray((p, j, H), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=x_t, src=x[row : row + p * j, :].reshape((p, j, H)))
    if residual is None:
        return x_t
    r_t = nl.ndarray((p, j, H), dtype=x.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=r_t, src=residual[row : row + p * j, :].reshape((p, j, H)))
    h_t = nl.ndarray((p, j, H), dtype=x.dtype, buffer=nl.sbuf)
    nisa.tensor_tensor(dst=h_t, data1=x_t, data2=r_t, op=nl.add)  # rounded like HF's bf16 add
    nisa.dma_copy(dst=h_out[row : row + p * j, :].reshape((p, j, H)), src=h_t)
    return h_t


def _rstd(h_t, p, j, eps):
    """rstd [p, j] fp32 = 1 / sqrt(mean(h², axis=-1) + eps); squares summed on ACT, one row at a time."""
    H = h_t.shape[2]
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


def _scale_fused(y_t, h_t, rstd, w_tile, p, j):
    """y = (h · rstd) · w in one DVE pass per row (fp32 inside, one rounding)."""
    for jj in range(j):
        nisa.scalar_tensor_tensor(
            dst=y_t[:, jj, :],
            data=h_t[:, jj, :],
            op0=nl.multiply,
            operand0=rstd[:, jj : jj + 1],
            op1=nl.multiply,
            operand1=w_tile[0:p, :],
        )


def _scale_balanced(y_t, h_t, rstd, w_tile, p, j):
    """ACT: n = bf16(h · rstd) (HF's rounding point); DVE: y = n · w, bf16 × bf16 in SBUF (fast mode)."""
    H = h_t.shape[2]
    for jj in range(j):
        n_t = nl.ndarray((p, H), dtype=h_t.dtype, buffer=nl.sbuf)
        nisa.activation(dst=n_t, op=nl.copy, data=h_t[:, jj, :], scale=rstd[:, jj : jj + 1])
        nisa.tensor_tensor(dst=y_t[:, jj, :], data1=n_t, data2=w_tile[0:p, :], op=nl.multiply)


def _norm_chunk(x, residual, w_tile, eps, y, h_out, row, p, j, scale):
    """Normalise rows [row, row + p·j) packed j per partition and store them."""
    H = x.shape[1]
    h_t = _rows_in(x, residual, h_out, row, p, j)
    rstd = _rstd(h_t, p, j, eps)
    y_t = nl.ndarray((p, j, H), dtype=x.dtype, buffer=nl.sbuf)
    scale(y_t, h_t, rstd, w_tile, p, j)
    nisa.dma_copy(dst=y[row : row + p * j, :].reshape((p, j, H)), src=y_t)


def _result(y, h):
    return y if h is None else (y, h)


# ---- v0: one 128-row tile per iteration, weight re-broadcast per tile --------------------------------------
def _v0(x, w, eps, residual):
    _check(x, w, residual)
    T = x.shape[0]
    P = nl.tile_size.pmax
    y, h = _outputs(x, residual)
    for i in nl.affine_range((T + P - 1) // P):
        rows = min(P, T - i * P)
        w_tile = _load_weight(w, rows)
        _norm_chunk(x, residual, w_tile, eps, y, h, i * P, rows, 1, _scale_fused)
    return _result(y, h)


@nki.jit
def rmsnorm_v0(x, w, eps):
    """Args: x [T, H] bf16/fp32 (rows on partitions), w [H], eps float. Returns: y [T, H] in x.dtype."""
    return _v0(x, w, eps, None)


@nki.jit
def add_rmsnorm_v0(x, residual, w, eps):
    """Args: x, residual [T, H]; w [H]; eps. Returns: (y = rmsnorm(x + residual), h = x + residual)."""
    return _v0(x, w, eps, residual)


# ---- v1: weight broadcast once, rows packed J per partition (large DMAs) ----------------------------------
def _packed(x, w, eps, residual, r0, r1, scale):
    """Rows [r0, r1) with the weight loaded once and J_MAX-packed transfers."""
    y, h = _outputs(x, residual)
    if r1 > r0:
        w_tile = _load_weight(w, min(nl.tile_size.pmax, r1 - r0))
        for row, p, j in _chunks(r0, r1):
            _norm_chunk(x, residual, w_tile, eps, y, h, row, p, j, scale)
    return _result(y, h)


def _v1(x, w, eps, residual):
    _check(x, w, residual)
    return _packed(x, w, eps, residual, 0, x.shape[0], _scale_fused)


@nki.jit
def rmsnorm_v1(x, w, eps):
    """As rmsnorm_v0; rows [0, T) in chunks of 128 × J_MAX rows, weight broadcast once."""
    return _v1(x, w, eps, None)


@nki.jit
def add_rmsnorm_v1(x, residual, w, eps):
    """As add_rmsnorm_v0 with v1's transfers."""
    return _v1(x, w, eps, residual)


# ---- v2: rows split across the two cores of an LNC=2 launch ----------------------------------------------
def _lnc_rows(x, w, eps, residual, scale):
    """This program's contiguous share of the rows (all of them under LNC=1)."""
    _check(x, w, residual)
    T = x.shape[0]
    n_prog = nl.num_programs()
    pid = nl.program_id(0) if n_prog > 1 else 0
    per = -(-T // n_prog)
    return _packed(x, w, eps, residual, min(T, pid * per), min(T, (pid + 1) * per), scale)


@nki.jit
def rmsnorm_v2(x, w, eps):
    """As rmsnorm_v1; launch as ``rmsnorm_v2[2]`` to split the rows over two cores."""
    return _lnc_rows(x, w, eps, None, _scale_fused)


@nki.jit
def add_rmsnorm_v2(x, residual, w, eps):
    """As add_rmsnorm_v1 with v2's LNC split."""
    return _lnc_rows(x, w, eps, residual, _scale_fused)


# ---- v3: ACT/DVE engine balance ---------------------------------------------------------------------------
@nki.jit
def rmsnorm_v3(x, w, eps):
    """As rmsnorm_v2; x·rstd on ACT, the weight multiply on DVE in bf16 fast mode. Launch ``[2]``."""
    return _lnc_rows(x, w, eps, None, _scale_balanced)


@nki.jit
def add_rmsnorm_v3(x, residual, w, eps):
    """As add_rmsnorm_v2 with v3's engine balance. Returns (y, h)."""
    return _lnc_rows(x, w, eps, residual, _scale_balanced)
