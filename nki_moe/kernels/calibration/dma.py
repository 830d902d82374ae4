"""Single-engine DMA example of [DMA-INTRO]: a 32 KiB HBM→SBUF copy on 4 partitions (one DMA engine)."""

import nki
import nki.isa as nisa
import nki.language as nl


@nki.jit
def dma_single_engine(src):
    """Copy src [4, F] (HBM) into SBUF and back.

    Args:
        src: [4, F] HBM tensor (the published example: bf16, F = 4096 → 32 KiB).
    Returns:
        [4, F] copy in shared HBM.
    """
    P, F = src.shape
    assert P <= 8, f"one DMA engine serves 8 partitions; got {P}"
    out = nl.ndarray((P, F), dtype=src.dtype, buffer=nl.shared_hbm)
    tile = nl.ndarray((P, F), dtype=src.dtype, buffer=nl.sbuf)
    nisa.dma_copy(dst=tile, src=src)
    nisa.dma_copy(dst=out, src=tile)
    return out
