"""The competition's five prompts, read from a local checkout of the competition repository.

Source: [MOE-REPO] ``prompts.txt`` (aws-neuron/nki-moe, main at f742418), split the way its harness does
(``test.py`` ``parse_prompts``: the file split on blank lines, each part stripped, empty parts dropped).
The texts are not copied into this repository (one of them quotes a long third-party essay); they are read
from ``nki-moe/prompts.txt`` under ``$NKI_MOE_EXT``, else under build/ext of this repository (the
convention of ``nki_moe.perf.calibration``), and the file must have the SHA-256 below, so a different
revision cannot pass silently.

With the raw Qwen3 tokenizer (``nki_moe.model.tokenizer``, no chat template) the prompts are
:data:`TOKEN_COUNTS` tokens long. The competition's CSVs list other context lengths
(``nki_moe.competition.PROMPTS``: 18, 126, 43, 10, 402); those are not recomputed here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["PROMPTS_SHA256", "TOKEN_COUNTS", "prompts_file", "prompts_available", "load_prompts"]

PROMPTS_SHA256 = "924fae00596aa8a6d16baadddd46f7e20eb0e9cf2e0c9aaa505dd70ae6d34481"
TOKEN_COUNTS = (20, 192, 54, 14, 512)  # raw Qwen3 tokenizer, prompts 0..4


def prompts_file() -> Path:
    """Where ``prompts.txt`` is looked for: ``$NKI_MOE_EXT/nki-moe/prompts.txt`` or build/ext/…"""
    ext = Path(os.environ.get("NKI_MOE_EXT", str(Path(__file__).resolve().parents[2] / "build" / "ext")))
    return ext / "nki-moe" / "prompts.txt"


def prompts_available() -> bool:
    """Whether the competition's prompts.txt is present locally."""
    return prompts_file().is_file()


def load_prompts(path: str | Path | None = None) -> list[str]:
    """The five prompt texts, in the harness's order.

    Args:
        path: a prompts.txt (default :func:`prompts_file`).
    Raises:
        FileNotFoundError: the file is missing (the message says where it was looked for).
        ValueError: its SHA-256 is not :data:`PROMPTS_SHA256`, or it does not hold five prompts.
    """
    file = Path(path) if path is not None else prompts_file()
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: put a checkout of aws-neuron/nki-moe under $NKI_MOE_EXT")
    data = file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != PROMPTS_SHA256:
        raise ValueError(f"{file}: SHA-256 {digest}, expected {PROMPTS_SHA256} ([MOE-REPO] main at f742418)")
    prompts = [p.strip() for p in data.decode("utf-8").split("\n\n") if p.strip()]
    if len(prompts) != len(TOKEN_COUNTS):
        raise ValueError(f"{file}: {len(prompts)} prompts, expected {len(TOKEN_COUNTS)}")
    return prompts
