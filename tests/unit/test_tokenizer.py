"""Unit tests for model.tokenizer on small vocabularies built here: byte-level and SentencePiece GGUF metadata,
Hugging Face directories, bytes/offsets/special tokens, chat templates and the streaming detokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from model.loading.gguf_tokenizer import gguf_tokenizer
from model.loading.hf_tokenizer import hf_tokenizer
from model.tokenizer import Encoding, Tokenizer, bytes_to_unicode

SMOLLM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BYTE_CHARS = [bytes_to_unicode()[b] for b in range(256)]
# "ðŁ" is the UTF-8 prefix F0 9F shared by most emoji, so 😀 (F0 9F 98 80) becomes three tokens
MERGES = ["Ġ t", "h e", "Ġt he", "l l", "ll o", "1 2", "3 4", "12 34", "ð Ł", "Ġ Ġ", "Ã ©"]
TRICKY = [
    "Hello, world!",
    "12345 and 3.14",
    "👨‍👩‍👧‍👦 family 🇫🇷🇯🇵 flags 👍🏽",
    "日本語のテキスト、中文",
    "مرحبا بالعالم (RTL) שלום",
    "  two  spaces\tand\ttabs\n\nnew\r\nlines  ",
    "def f(x):\n    if x:\n        return x ** 2\n",
    "café naïve Ünïcödé e\u0301",
    "",
    "\x00 control \x7f",
]


def byte_level_meta(pre: str = "smollm", **extra: object) -> dict[str, object]:
    """GGUF-style metadata shaped like SmolLM2's: special tokens first, then the 256 byte tokens, then merges."""
    merged = [a + b for a, b in (m.split(" ") for m in MERGES)]
    tokens = SPECIALS + BYTE_CHARS + merged
    meta: dict[str, object] = {
        "general.name": "tiny-bpe",
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)),
        "tokenizer.ggml.merges": MERGES,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.padding_token_id": 2,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": SMOLLM_TEMPLATE,
    }
    meta.update(extra)
    return meta


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return gguf_tokenizer(byte_level_meta())


# ---- byte-level BPE from GGUF metadata ------------------------------------------------------------


def test_basic_properties(bpe: Tokenizer) -> None:
    assert bpe.vocab_size == 3 + 256 + len(MERGES)
    assert (bpe.bos_id, bpe.eos_id) == (1, 2)
    assert bpe.stop_ids == frozenset({0, 2})  # eos + "<|endoftext|>" control token
    assert bpe.name_or_path == "tiny-bpe"
    assert bpe.token_strings(bpe.encode(" the hello")) == ["Ġthe", "Ġ", "he", "llo"]
    assert all(type(i) is int for i in bpe.encode("a b"))


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip(bpe: Tokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert b"".join(bpe.token_bytes(i) for i in ids) == text.encode("utf-8")


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_round_trip_any_text(bpe: Tokenizer, text: str) -> None:
    enc = bpe.analyse(text)
    assert bpe.decode(enc.ids) == text
    for (start, end), data in zip(enc.offsets, enc.bytes):
        assert 0 <= start <= end <= len(text)
        assert data in text[start:end].encode("utf-8")  # a piece of a character still points at that character


def test_digits_are_split_individually_for_smollm(bpe: Tokenizer) -> None:
    # the vocabulary has "12", "34" and "1234", but SmolLM's pre-tokenizer isolates every digit
    assert bpe.token_strings(bpe.encode("12345")) == ["1", "2", "3", "4", "5"]
    # a whitespace run stays one pre-token when a digit follows (Digits splits before the GPT-2 regex)
    assert bpe.token_strings(bpe.encode("x  1")) == ["x", "ĠĠ", "1"]


@pytest.mark.parametrize(
    ("pre", "expected"),
    [
        ("gpt2", ["1234"]),
        ("default", ["1234"]),
        ("llama-bpe", ["12", "3", "4"]),  # digits in groups of three
        ("llama3", ["12", "3", "4"]),
        ("qwen2", ["1", "2", "3", "4"]),
        ("smollm", ["1", "2", "3", "4"]),
    ],
)
def test_pre_tokenizer_variants(pre: str, expected: list[str]) -> None:
    tok = gguf_tokenizer(byte_level_meta(pre))
    assert tok.token_strings(tok.encode("1234")) == expected
    assert tok.decode(tok.encode(TRICKY[2])) == TRICKY[2]


def test_llama3_adds_bos_by_default_and_qwen2_normalizes_nfc() -> None:
    meta = byte_level_meta("llama-bpe")
    del meta["tokenizer.ggml.add_bos_token"]
    assert gguf_tokenizer(meta).encode("the")[0] == 1
    qwen = gguf_tokenizer(byte_level_meta("qwen2"))
    assert qwen.decode(qwen.encode("e\u0301")) == "é"


def test_partial_utf8_tokens(bpe: Tokenizer) -> None:
    enc = bpe.analyse("😀")
    assert enc.tokens == ["ðŁ", "ĺ", "Ģ"]
    assert enc.bytes == [b"\xf0\x9f", b"\x98", b"\x80"]
    for piece in enc.bytes:
        with pytest.raises(UnicodeDecodeError):
            piece.decode("utf-8")
    assert b"".join(enc.bytes).decode("utf-8") == "😀"
    assert enc.offsets == [(0, 1)] * 3


def test_analyse_offsets_and_specials(bpe: Tokenizer) -> None:
    text = "<|im_start|>user\n the 12<|im_end|>"
    enc = bpe.analyse(text)
    assert isinstance(enc, Encoding) and len(enc) == len(enc.ids)
    assert enc.tokens == ["<|im_start|>", "u", "s", "e", "r", "Ċ", "Ġthe", "Ġ", "1", "2", "<|im_end|>"]
    assert enc.special == [True] + [False] * 9 + [True]
    assert [text[a:b] for a, b in enc.offsets] == ["<|im_start|>", "u", "s", "e", "r", "\n", " the", " ", "1", "2",
                                                   "<|im_end|>"]
    assert enc.bytes[0] == b"<|im_start|>" and enc.bytes[6] == b" the"
    assert bpe.is_special(1) and not bpe.is_special(enc.ids[1])
    with pytest.raises(AttributeError):
        enc.ids = []  # type: ignore[misc]


def test_bos_handling() -> None:
    with_bos = gguf_tokenizer(byte_level_meta(**{"tokenizer.ggml.add_bos_token": True}))
    assert with_bos.encode("the") == [1, *with_bos.encode("the", add_special_tokens=False)]
    assert with_bos.analyse("the").offsets[0] == (0, 0)
    assert with_bos.decode(with_bos.encode("the"), skip_special_tokens=True) == "the"
    assert with_bos.decode(with_bos.encode("the")) == "<|im_start|>the"
    without = gguf_tokenizer(byte_level_meta())
    assert without.encode("the") == without.encode("the", add_special_tokens=False)
    with_eos = gguf_tokenizer(byte_level_meta(**{"tokenizer.ggml.add_eos_token": True}))
    assert with_eos.encode("the")[-1] == 2


def test_stop_ids_from_metadata_and_text() -> None:
    meta = byte_level_meta()
    meta["tokenizer.ggml.tokens"] = [*meta["tokenizer.ggml.tokens"], "<|eot_id|>", "<|end|>"]  # type: ignore[list-item]
    meta["tokenizer.ggml.token_type"] = [*meta["tokenizer.ggml.token_type"], 3, 1]  # type: ignore[list-item]
    n = len(meta["tokenizer.ggml.tokens"])  # type: ignore[arg-type]
    meta["tokenizer.ggml.eom_token_id"] = 10  # any id named by the metadata counts
    tok = gguf_tokenizer(meta)
    # "<|end|>" is a normal token here, so its text alone does not make it a stop
    assert tok.stop_ids == frozenset({0, 2, 10, n - 2})


def test_user_defined_tokens_kept_whole_but_not_special() -> None:
    meta = byte_level_meta()
    meta["tokenizer.ggml.tokens"] = [*meta["tokenizer.ggml.tokens"], "<think>"]  # type: ignore[list-item]
    meta["tokenizer.ggml.token_type"] = [*meta["tokenizer.ggml.token_type"], 4]  # type: ignore[list-item]
    tok = gguf_tokenizer(meta)
    ids = tok.encode("a<think>b")
    assert len(ids) == 3 and tok.token_strings(ids)[1] == "<think>"
    assert not tok.is_special(ids[1])
    assert tok.decode(ids, skip_special_tokens=True) == "a<think>b"


def test_special_text_keeps_its_bytes_in_decode() -> None:
    # tokenizers' ByteLevel decoder would map "é" to byte 0xE9; the token's text must stay as written
    meta = byte_level_meta()
    meta["tokenizer.ggml.tokens"] = [*meta["tokenizer.ggml.tokens"], "<|café|>"]  # type: ignore[list-item]
    meta["tokenizer.ggml.token_type"] = [*meta["tokenizer.ggml.token_type"], 3]  # type: ignore[list-item]
    tok = gguf_tokenizer(meta)
    ids = tok.encode("x<|café|>")
    assert tok.token_bytes(ids[-1]) == "<|café|>".encode()
    assert tok.decode(ids) == "x<|café|>"
    assert tok.decode(ids, skip_special_tokens=True) == "x"


def test_unsupported_model_type() -> None:
    with pytest.raises(ValueError, match="gpt2.*llama"):
        gguf_tokenizer(byte_level_meta() | {"tokenizer.ggml.model": "t5"})


def test_ids_out_of_range(bpe: Tokenizer) -> None:
    assert bpe.token_bytes(bpe.vocab_size + 5) == b""
    with pytest.raises(IndexError):
        bpe.token_bytes(-1)


# ---- streaming ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", TRICKY)
def test_stream_matches_decode(bpe: Tokenizer, text: str) -> None:
    ids = bpe.encode("<|im_start|>" + text + "<|im_end|>")
    stream = bpe.text_stream()
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) + stream.flush() == bpe.decode(ids)
    assert all("\ufffd" not in p for p in pieces)


def test_stream_holds_back_partial_characters(bpe: Tokenizer) -> None:
    stream = bpe.text_stream()
    assert [stream.push(i) for i in bpe.encode("a😀")] == ["a", "", "", "😀"]
    truncated = bpe.text_stream()
    assert truncated.push(bpe.encode("😀")[0]) == ""
    assert truncated.flush() == "\ufffd"
    skipping = bpe.text_stream(skip_special_tokens=True)
    assert "".join(skipping.push(i) for i in bpe.encode("<|im_start|>hi")) == "hi"


# ---- SentencePiece ("llama") from GGUF metadata ------------------------------------------------------

SPM_PIECES = ["▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "▁he", "ll", "llo", "▁hello", "▁w", "or", "▁wor", "ld",
              "▁world"]


@pytest.fixture(scope="module")
def spm() -> Tokenizer:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + SPM_PIECES
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * len(SPM_PIECES),
        "tokenizer.ggml.scores": [0.0] * 259 + [-float(i) for i in range(len(SPM_PIECES))],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }
    return gguf_tokenizer(meta)


def test_spm_encode_adds_bos_and_prefix_space(spm: Tokenizer) -> None:
    assert spm.token_strings(spm.encode("hello world")) == ["<s>", "▁hello", "▁world"]
    assert spm.token_strings(spm.encode("hello", add_special_tokens=False)) == ["▁hello"]
    assert spm.encode("") == [1]
    assert spm.stop_ids == frozenset({2}) and spm.is_special(0) and spm.is_special(1)
    # like llama.cpp, the text after a special token gets its own "▁"
    assert spm.token_strings(spm.encode("hello</s>world", add_special_tokens=False)) == ["▁hello", "</s>", "▁world"]


def test_spm_byte_fallback(spm: Tokenizer) -> None:
    enc = spm.analyse("hello é😀", add_special_tokens=False)
    assert enc.tokens == ["▁hello", "▁", "<0xC3>", "<0xA9>", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    assert enc.bytes == [b" hello", b" ", b"\xc3", b"\xa9", b"\xf0", b"\x9f", b"\x98", b"\x80"]
    for piece in enc.bytes[2:]:
        with pytest.raises(UnicodeDecodeError):
            piece.decode("utf-8")
    assert b"".join(enc.bytes[2:4]).decode() == "é" and b"".join(enc.bytes[4:]).decode() == "😀"
    assert enc.offsets[2:] == [(6, 7)] * 2 + [(7, 8)] * 4


@pytest.mark.parametrize("text", ["hello world", "  lead", "hello\n\tworld ", "日本 é 👨‍👩‍👧", "x"])
def test_spm_round_trip_and_stream(spm: Tokenizer, text: str) -> None:
    ids = spm.encode(text)
    assert spm.decode(ids, skip_special_tokens=True) == text
    assert spm.decode(ids) == "<s> " + text  # the decoder strips the prefix space only at the very start
    stream = spm.text_stream(skip_special_tokens=True)
    assert "".join(stream.push(i) for i in ids) + stream.flush() == text


def test_spm_merges_follow_scores() -> None:
    # "▁ab" can be built as "▁a"+"b" or "▁"+"ab"; the better-scored intermediate piece wins
    pieces = ["▁", "a", "b", "ab", "▁a", "▁ab"]
    tokens = ["<unk>", "<s>", "</s>"] + pieces
    scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -50.0, -5.0]  # "▁a" is far worse than "ab"
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [2, 3, 3] + [1] * len(pieces),
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.add_bos_token": False,
    }
    tok = gguf_tokenizer(meta)
    assert tok.token_strings(tok.encode("ab a")) == ["▁ab", "▁a"]
    # no byte tokens and no unknown_token_id: llama.cpp's default <unk> (id 0) stands for the character
    assert tok.token_strings(tok.encode("c")) == ["▁", "<unk>"]
    assert (tok.bos_id, tok.eos_id, tok.stop_ids) == (1, 2, frozenset({2}))


# ---- Hugging Face directories -----------------------------------------------------------------------


def write_hf_dir(folder: Path, config: dict[str, object], post: processors.PostProcessor | None = None) -> Path:
    vocab = {t: i for i, t in enumerate(SPECIALS + BYTE_CHARS)}
    for a, b in (m.split(" ") for m in MERGES):
        vocab[a + b] = len(vocab)
    backend = Backend(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in MERGES]))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = post or processors.ByteLevel(trim_offsets=False)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_hf_dir_like_smollm2(tmp_path: Path) -> None:
    config = {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "chat_template": SMOLLM_TEMPLATE}
    tok = hf_tokenizer(write_hf_dir(tmp_path, config))
    assert (tok.bos_id, tok.eos_id, tok.stop_ids) == (1, 2, frozenset({0, 2}))
    assert tok.name_or_path == str(tmp_path) and tok.vocab_size == 3 + 256 + len(MERGES)
    gguf_tok = gguf_tokenizer(byte_level_meta())
    for text in TRICKY:
        assert tok.encode(text) == gguf_tok.encode(text)
        assert tok.decode(tok.encode(text)) == text
    assert tok.analyse("<|im_start|>hi").special == [True, False, False]
    assert tok.apply_chat_template([{"role": "user", "content": "Hi"}]) == gguf_tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}]
    )


def test_hf_dir_bos_from_post_processor_or_config(tmp_path: Path) -> None:
    template = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)])
    tok = hf_tokenizer(write_hf_dir(tmp_path / "a", {"bos_token": "<|im_start|>"}, post=template))
    assert tok.encode("the")[0] == 1 and tok.encode("the", add_special_tokens=False)[0] != 1
    configured = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": True, "add_eos_token": True}
    tok = hf_tokenizer(write_hf_dir(tmp_path / "b", configured))
    ids = tok.encode("the")
    assert ids[0] == 1 and ids[-1] == 2
    off = {"bos_token": "<|im_start|>", "add_bos_token": False}
    assert hf_tokenizer(write_hf_dir(tmp_path / "c", off, post=template)).encode("the")[0] != 1


def test_hf_dir_special_map_and_template_file(tmp_path: Path) -> None:
    folder = write_hf_dir(tmp_path, {"chat_template": "ignored"})
    special_map = {"eos_token": "<|im_end|>", "bos_token": "<|im_start|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map))
    (folder / "chat_template.jinja").write_text("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    tok = hf_tokenizer(folder)
    assert tok.eos_id == 2 and tok.bos_id == 1
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == "<|im_start|>x"


def test_hf_dir_named_templates_and_missing_file(tmp_path: Path) -> None:
    named = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    tok = hf_tokenizer(write_hf_dir(tmp_path / "a", {"chat_template": named}))
    assert tok.apply_chat_template([]) == "D"
    with pytest.raises(FileNotFoundError):
        hf_tokenizer(tmp_path / "nothing")


def test_hf_dir_sentencepiece(tmp_path: Path) -> None:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + SPM_PIECES
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [("▁", "h"), ("▁h", "e"), ("l", "l"), ("ll", "o"), ("▁he", "llo"), ("▁", "w"), ("o", "r"), ("▁w", "or"),
              ("l", "d"), ("▁wor", "ld")]
    backend = Backend(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ["<unk>", "<s>", "</s>"]])
    tmp_path.mkdir(exist_ok=True)
    backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    tok = hf_tokenizer(tmp_path)
    ids = tok.encode("hello é")
    assert tok.token_strings(ids) == ["<s>", "▁hello", "▁", "<0xC3>", "<0xA9>"]
    assert [tok.token_bytes(i) for i in ids[1:]] == [b" hello", b" ", b"\xc3", b"\xa9"]
    stream = tok.text_stream(skip_special_tokens=True)
    assert "".join(stream.push(i) for i in ids) == "hello é" == tok.decode(ids, skip_special_tokens=True)
    assert tok.stop_ids == frozenset({2})


# ---- chat templates ---------------------------------------------------------------------------------


def test_chat_template_smollm_format(bpe: Tokenizer) -> None:
    messages = [{"role": "user", "content": "What is 2+2?"}]
    assert bpe.apply_chat_template(messages) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    with_system = [{"role": "system", "content": "Be brief."}, *messages, {"role": "assistant", "content": "4"}]
    assert bpe.apply_chat_template(with_system, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
    )
    ids = bpe.encode(bpe.apply_chat_template(messages), add_special_tokens=False)
    assert ids[0] == 1 and bpe.token_strings(ids).count("<|im_end|>") == 2


def test_chat_template_environment() -> None:
    template = (
        "{% for m in messages %}\n"
        "  {% if m %}{{ bos_token }}{{ m | tojson }}{{ eos_token }}{% endif %}\n"
        "{% endfor %}\n"
        "{% if strftime_now('%Y') | int < 2000 %}old{% endif %}"
        "{% generation %}G{% endgeneration %}"
        "{% if messages | length > 1 %}{{ raise_exception('only one message') }}{% endif %}"
    )
    tok = gguf_tokenizer(byte_level_meta(**{"tokenizer.chat_template": template}))
    # trim_blocks/lstrip_blocks drop the block lines; tojson keeps non-ASCII and "<" unescaped
    assert tok.apply_chat_template([{"role": "user", "content": "<é>"}]) == (
        '<|im_start|>{"role": "user", "content": "<é>"}<|im_end|>G'
    )
    with pytest.raises(jinja2.exceptions.TemplateError, match="only one message"):
        tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    sandboxed = gguf_tokenizer(
        byte_level_meta(**{"tokenizer.chat_template": "{{ messages.append(1) }}"})
    )
    with pytest.raises(jinja2.exceptions.SecurityError):
        sandboxed.apply_chat_template([])


def test_no_chat_template() -> None:
    meta = byte_level_meta()
    del meta["tokenizer.chat_template"]
    tok = gguf_tokenizer(meta)
    assert tok.chat_template is None
    with pytest.raises(ValueError, match="chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
