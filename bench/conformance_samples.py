"""Conformance cases for the public tutorial and sample kernels (7): the five versions of the nki-samples
matrix-multiplication tutorial and the two sample kernels of the nki-moe competition.

Each case imports the kernel from the checkout unmodified, builds the inputs its own test builds (same shapes
and dtypes, seeded) and compares with the reference that test uses: ``torch.matmul`` for the tutorial
(matrix_multiplication_torch.py), the file's own ``numpy_rmsnorm`` and ``a + b`` for the competition samples.
Run through bench/conformance.py.
"""

from __future__ import annotations

import functools
from pathlib import Path

import ml_dtypes
import numpy as np
import torch
from conformance import Case, load

TUTORIAL_DIR = "src/nki_samples/tutorials/matrix_multiplication"
TUTORIAL_FILE = f"{TUTORIAL_DIR}/matrix_multiplication_nki_kernels.py"
# The kernel file imports torch_xla for its on-device test only; placeholders stand in for it on the CPU.
TORCH_XLA = ("torch_xla", "torch_xla.core", "torch_xla.core.xla_model")
SEED = 0


def _bf16(t: torch.Tensor) -> np.ndarray:
    """A torch bf16 tensor as an ml_dtypes bf16 NumPy array (same bits)."""
    return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)


@functools.cache
def _matmul_inputs(m: int, k: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The tutorial's inputs: lhs [m, k] and rhs [k, n], torch.rand in bf16 (seeded)."""
    gen = torch.Generator().manual_seed(SEED)
    lhs = torch.rand((m, k), dtype=torch.bfloat16, generator=gen)
    rhs = torch.rand((k, n), dtype=torch.bfloat16, generator=gen)
    return lhs, rhs


def _matmul_case(root: Path, kernel: str, m: int, k: int, n: int) -> Case:
    """The tutorial's check of one version: ``kernel(lhs.T, rhs)`` against ``torch.matmul(lhs, rhs)``."""

    def run():
        mod = load("matrix_multiplication_nki_kernels", root / TUTORIAL_DIR)
        lhs, rhs = _matmul_inputs(m, k, n)
        return getattr(mod, kernel)(np.ascontiguousarray(_bf16(lhs).T), _bf16(rhs))

    def reference():
        lhs, rhs = _matmul_inputs(m, k, n)
        # torch.matmul(lhs, rhs) in bf16 accumulates in fp32 and rounds once; spelled out through fp32 because
        # torch's bf16 CPU matmul takes ~35 s at 4096x1024x2048 on the AVX2 path tests/conftest.py pins.
        return torch.matmul(lhs.float(), rhs.float()).to(torch.bfloat16)

    return Case(
        f"matmul_tutorial.{kernel}",
        TUTORIAL_FILE,
        run,
        reference,
        dtype="bf16",
        note=f"lhsT [{k},{m}] x rhs [{k},{n}] bf16",
    )


def tutorial_cases(root: Path) -> list[Case]:
    """The five matrix-multiplication tutorial kernels at the tutorial's own shapes (matmul_torch.py)."""
    small = [_matmul_case(root, "nki_matmul_basic_", 64, 128, 512)]
    large = [
        _matmul_case(root, kernel, 4096, 1024, 2048)
        for kernel in (
            "nki_matmul_tiled_",
            "nki_matmul_hoist_load_",
            "nki_matmul_block_free_dimension_",
            "nki_matmul_fully_optimized_",
        )
    ]
    return small + large


def _rmsnorm_case(root: Path) -> Case:
    """nki_rmsnorm_kernel as the file's own __main__ checks it: x [256, 512], w [512] fp32, eps 1e-6."""
    eps = 1e-6

    @functools.cache
    def inputs():
        rs = np.random.RandomState(42)  # the file's np.random.seed(42), then randn(x), randn(w)
        x = rs.randn(256, 512).astype(np.float32)
        w = rs.randn(512).astype(np.float32)
        return x, w

    def module():
        return load("nki_custom_rmsnorm", root)

    return Case(
        "moe_sample.nki_rmsnorm_kernel",
        "nki_custom_rmsnorm.py",
        lambda: module().nki_rmsnorm_kernel(*inputs(), eps),
        lambda: module().numpy_rmsnorm(*inputs(), eps),
        dtype="fp32",
        note="x [256,512] fp32, w [512], eps 1e-6",
    )


def _tensor_add_case(root: Path) -> Case:
    """nki_tensor_add_kernel at the file's own test shape [4, 3] fp16 (random values: 1 + 1 proves little)."""

    @functools.cache
    def inputs():
        rng = np.random.default_rng(SEED)
        return tuple(rng.standard_normal((4, 3)).astype(np.float16) for _ in range(2))

    def run():
        mod = load("nki_tensor_add_example", root, placeholders=TORCH_XLA)
        return mod.nki_tensor_add_kernel(*inputs())

    def reference():
        a, b = (torch.from_numpy(x) for x in inputs())
        return a + b

    return Case(
        "moe_sample.nki_tensor_add_kernel",
        "nki_tensor_add_example.py",
        run,
        reference,
        dtype="fp16",
        note="a, b [4,3] fp16",
    )


def moe_cases(root: Path) -> list[Case]:
    """The two sample kernels of the nki-moe competition checkout."""
    return [_rmsnorm_case(root), _tensor_add_case(root)]


def cases(root: Path) -> list[Case]:
    """The cases of whichever checkout ``root`` is (nki-samples or nki-moe)."""
    if (root / TUTORIAL_DIR).is_dir():
        return tutorial_cases(root)
    if (root / "nki_custom_rmsnorm.py").is_file():
        return moe_cases(root)
    raise ValueError(f"{root} is neither an nki-samples nor an nki-moe checkout")
