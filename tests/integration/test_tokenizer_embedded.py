"""The embedded SmolLM2 GGUF tokenizer versus transformers' tokenizer built from the same GGUF file."""
from __future__ import annotations

import re
import warnings
from typing import Any

import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import pre_tokenizers

from model.loading.embedded import embedded_gguf_path
from model.loading.gguf_reader import GGUFFile
from model.loading.gguf_tokenizer import gguf_tokenizer
from model.tokenizer import Tokenizer

# transformers' GGUF conversion has no pre-tokenizer for tokenizer.ggml.pre = "smollm": it falls back to GPT-2's
# ByteLevel regex and drops the Digits(individual_digits=True) step of SmolLM2's real tokenizer.json (llama.cpp's
# "smollm" pre-tokenizer splits "\p{N}" first as well). The vocabulary has no multi-digit tokens, so digits still
# come out one by one, but a whitespace run before a digit differs: the real tokenizer gives "x  1" ->
# ["x", "ĠĠ", "1"], transformers' conversion ["x", "Ġ", "Ġ", "1"]. We follow the real model: the plain comparison
# uses strings without such a run, and every string is compared with transformers' tokenizer given the real
# pre-tokenizer back.
AGREEING = [
    "Hello, world!",
    "12345",
    "3.14159 and 2,718 or 1e-9",
    "👨‍👩‍👧‍👦 family, 🇯🇵🇫🇷 flags, 👍🏽 thumbs",
    "日本語のテキスト、中文字符，한국어",
    "مرحبا بالعالم — שלום עולם",
    "Ünïcödé àccénts çà e\u0301 ﬁ",
    "tabs\tand\n\nnewlines\r\n",
    "   leading and trailing   ",
    "def f(x):\n    if x:\n        return x**2\n    return None\n",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "it's don't we'll I'M THEY'RE",
    "",
    " ",
]
# a whitespace run right before a digit: SmolLM2's Digits step keeps the run whole, transformers' conversion splits it
DIGIT_AFTER_SPACES = ["x  12 y", "a\n\n1. item", "    1 + 1", "total:\t\t42"]


@pytest.fixture(scope="module")
def ours() -> Tokenizer:
    return gguf_tokenizer(GGUFFile(embedded_gguf_path()).metadata)


@pytest.fixture(scope="module")
def hf() -> Any:  # transformers' tokenizer, the oracle
    from transformers import AutoTokenizer

    path = embedded_gguf_path()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module")
def real(hf: Any) -> Backend:
    """transformers' backend with SmolLM2's real pre-tokenizer (tokenizer.json: Digits, then ByteLevel)."""
    backend = Backend.from_str(hf.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    return backend


def test_conversion_difference_is_real(hf: Any, real: Backend) -> None:
    # guards the premise of this file: without it, DIGIT_AFTER_SPACES would belong in AGREEING
    for text in DIGIT_AFTER_SPACES:
        assert hf(text)["input_ids"] != real.encode(text).ids
    assert not any(re.search(r"\s{2}\d", text) for text in AGREEING)


@pytest.mark.parametrize("text", AGREEING)
def test_same_as_transformers(ours: Tokenizer, hf: Any, text: str) -> None:
    expected = hf(text, return_offsets_mapping=True)
    enc = ours.analyse(text)
    assert enc.ids == expected["input_ids"]
    assert enc.tokens == hf.convert_ids_to_tokens(expected["input_ids"])
    assert enc.offsets == [tuple(o) for o in expected["offset_mapping"]]
    assert ours.encode(text, add_special_tokens=False) == hf(text, add_special_tokens=False)["input_ids"]
    assert ours.decode(enc.ids) == hf.decode(enc.ids) == text
    assert ours.decode(enc.ids, skip_special_tokens=True) == hf.decode(enc.ids, skip_special_tokens=True)


@pytest.mark.parametrize("text", AGREEING + DIGIT_AFTER_SPACES)
def test_same_as_real_pre_tokenizer(ours: Tokenizer, real: Backend, text: str) -> None:
    assert ours.encode(text) == real.encode(text).ids


def test_digits_and_whitespace_like_smollm2(ours: Tokenizer) -> None:
    assert ours.token_strings(ours.encode("x  12")) == ["x", "ĠĠ", "1", "2"]
    assert ours.token_strings(ours.encode("2024")) == ["2", "0", "2", "4"]


def test_special_tokens_and_bos(ours: Tokenizer, hf: Any) -> None:
    assert ours.vocab_size == len(hf) == 49152
    assert (ours.bos_id, ours.eos_id) == (hf.bos_token_id, hf.eos_token_id) == (1, 2)
    special = {i for i in range(ours.vocab_size) if ours.is_special(i)}
    # transformers adds every control token of the GGUF as special (what skip_special_tokens drops)
    added = hf.backend_tokenizer.get_added_tokens_decoder()
    assert special == {i for i, token in added.items() if token.special} == set(range(17))
    assert set(hf.all_special_ids) <= special
    assert ours.decode(sorted(special) + [33], skip_special_tokens=True) == "1"
    assert ours.stop_ids == frozenset({0, 2})  # <|im_end|> (eos) and <|endoftext|>
    # SmolLM2 adds no BOS (tokenizer.ggml.add_bos_token = false, and its tokenizer.json has no template)
    assert ours.encode("Hi") == ours.encode("Hi", add_special_tokens=False) == hf("Hi")["input_ids"]


def test_every_token_bytes_matches_transformers_decode(ours: Tokenizer, hf: Any) -> None:
    backend = hf.backend_tokenizer
    for i in range(ours.vocab_size):
        assert ours.token_bytes(i).decode("utf-8", errors="replace") == backend.decode([i], skip_special_tokens=False)
    assert ours.token_strings(range(ours.vocab_size)) == hf.convert_ids_to_tokens(list(range(ours.vocab_size)))


def test_split_characters(ours: Tokenizer) -> None:
    enc = ours.analyse("🇫🇷")
    assert len(enc.ids) > 2
    assert all(not _valid_utf8(piece) for piece in enc.bytes)
    assert b"".join(enc.bytes).decode("utf-8") == "🇫🇷"
    stream = ours.text_stream()
    pieces = [stream.push(i) for i in enc.ids]
    assert pieces[-1] == "🇷" and "".join(pieces) == "🇫🇷"


@pytest.mark.parametrize("text", AGREEING + DIGIT_AFTER_SPACES)
def test_round_trip_and_stream(ours: Tokenizer, text: str) -> None:
    ids = ours.encode(text)
    assert ours.decode(ids) == text
    stream = ours.text_stream()
    assert "".join(stream.push(i) for i in ids) + stream.flush() == text
    enc = ours.analyse(text)
    for (start, end), data, special in zip(enc.offsets, enc.bytes, enc.special):
        assert data in text[start:end].encode("utf-8")  # a piece of a character points at the whole character
        if _valid_utf8(data) or special:
            assert text[start:end] == data.decode("utf-8")


def test_chat_template_matches_transformers(ours: Tokenizer, hf: Any) -> None:
    conversations = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}],
    ]
    for messages in conversations:
        for prompt in (True, False):
            expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
            assert ours.apply_chat_template(messages, add_generation_prompt=prompt) == expected
    rendered = ours.apply_chat_template(conversations[0])
    assert rendered.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    ids = ours.encode(rendered)
    assert ids == hf(rendered)["input_ids"] and ids[0] == 1


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
