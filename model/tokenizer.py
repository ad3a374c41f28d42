"""Tokenizer for the explorer: encode/decode, per-token bytes and offsets, chat templates, streaming detokenization.

Built on the `tokenizers` library; model/loading builds one from a Hugging Face tokenizer directory or GGUF metadata.
"""
from __future__ import annotations

import codecs
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as Backend

# Texts of tokens that end a turn; llama.cpp treats special tokens spelled like this as end-of-generation.
STOP_TOKEN_TEXTS: frozenset[str] = frozenset(
    {"<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>", "</s>"}
)
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_UNICODE_TO_BYTE: dict[str, int] = {c: b for b, c in bytes_to_unicode().items()}


@dataclass(frozen=True)
class Encoding:
    """One tokenized text: per-token ids, vocabulary strings, character offsets into the text, bytes, special flags."""

    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    bytes: list[bytes]
    special: list[bool]

    def __len__(self) -> int:
        return len(self.ids)


class TextStream:
    """Incremental detokenizer: push token ids, get the text they complete (partial UTF-8 characters held back)."""

    def __init__(self, tokenizer: "Tokenizer", skip_special_tokens: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False

    def push(self, token_id: int) -> str:
        """Feed one token; return the new text it completes (possibly "")."""
        if self._skip_special and self._tokenizer.is_special(token_id):
            return ""
        data = self._tokenizer.token_bytes(token_id)
        if not self._started and data:
            self._started = True
            # SentencePiece decoders drop the "▁" prefix added before the first word
            if self._tokenizer._strip_leading_space and data.startswith(b" "):
                data = data[1:]
        return self._decoder.decode(data)

    def flush(self) -> str:
        """End of stream: any held-back incomplete character comes out as U+FFFD."""
        return self._decoder.decode(b"", final=True)


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (used by some templates to mark assistant text) renders its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    # like transformers: jinja's own tojson HTML-escapes, which chat templates must not do
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class Tokenizer:
    """A model's tokenizer: wraps a `tokenizers.Tokenizer` plus the special-token facts the explorer needs."""

    def __init__(
        self,
        backend: Backend,
        *,
        kind: str,
        bos_id: int | None,
        eos_id: int | None,
        special_ids: frozenset[int],
        added_ids: frozenset[int],
        stop_ids: frozenset[int] = frozenset(),
        chat_template: str | None = None,
        name_or_path: str = "",
        strip_leading_space: bool = False,
        vocab_size: int | None = None,
        special_token_texts: Mapping[str, str] | None = None,
    ) -> None:
        self._backend = backend
        self._kind = kind  # "byte_level", "sentencepiece" or "other"
        self._special_ids = frozenset(special_ids)
        self._added_ids = frozenset(added_ids) | self._special_ids
        self._strip_leading_space = strip_leading_space
        self._bytes_cache: dict[int, bytes] = {}
        self._template_cache: tuple[str, jinja2.Template] | None = None
        self.vocab_size: int = vocab_size if vocab_size is not None else backend.get_vocab_size(with_added_tokens=True)
        self.bos_id: int | None = bos_id
        self.eos_id: int | None = eos_id
        self.chat_template: str | None = chat_template
        self.name_or_path: str = name_or_path
        stops = set(stop_ids) | ({eos_id} if eos_id is not None else set())
        stops |= {i for i in self._special_ids if backend.id_to_token(i) in STOP_TOKEN_TEXTS}
        self.stop_ids: frozenset[int] = frozenset(stops)
        texts = dict(special_token_texts or {})
        for name, token_id in (("bos_token", bos_id), ("eos_token", eos_id)):
            if name not in texts and token_id is not None:
                texts[name] = backend.id_to_token(token_id)
        self._special_token_texts = texts

    # ---- encoding / decoding ------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; BOS/EOS only where the model's tokenizer adds them."""
        return list(self._backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def analyse(self, text: str, add_special_tokens: bool = True) -> Encoding:
        """Tokenize with everything the explorer shows per token."""
        enc = self._backend.encode(text, add_special_tokens=add_special_tokens)
        ids = [int(i) for i in enc.ids]
        return Encoding(
            ids=ids,
            tokens=self.token_strings(ids),
            offsets=[(int(a), int(b)) for a, b in enc.offsets],
            bytes=[self.token_bytes(i) for i in ids],
            special=[self.is_special(i) for i in ids],
        )

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`; invalid or incomplete UTF-8 becomes U+FFFD."""
        ids = [self._check(i) for i in ids]
        if self._kind == "byte_level":
            # joining exact bytes, rather than backend.decode, keeps added tokens like "<é>" intact
            kept = (i for i in ids if not (skip_special_tokens and i in self._special_ids))
            return b"".join(self.token_bytes(i) for i in kept).decode("utf-8", errors="replace")
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """Vocabulary strings of `ids` (e.g. "Ġthe", "▁the", "<0x0A>")."""
        return [self._backend.id_to_token(self._check(i)) or "" for i in ids]

    def token_bytes(self, token_id: int) -> bytes:
        """Exact bytes this token adds to the UTF-8 text; may be part of a character."""
        token_id = self._check(token_id)
        cached = self._bytes_cache.get(token_id)
        if cached is None:
            cached = self._bytes_cache[token_id] = self._compute_bytes(token_id)
        return cached

    def _compute_bytes(self, token_id: int) -> bytes:
        if token_id >= self.vocab_size:
            return b""  # a padded embedding row past the tokenizer's vocabulary stands for no text
        text = self._backend.id_to_token(token_id) or ""
        if token_id in self._added_ids:
            return text.encode("utf-8")
        if self._kind == "byte_level":
            if all(c in _UNICODE_TO_BYTE for c in text):
                return bytes(_UNICODE_TO_BYTE[c] for c in text)
            return text.encode("utf-8")  # same fallback as the ByteLevel decoder
        if self._kind == "sentencepiece":
            match = _BYTE_TOKEN.fullmatch(text)
            if match:
                return bytes([int(match.group(1), 16)])
            return text.replace("\u2581", " ").encode("utf-8")
        return self._backend.decode([token_id], skip_special_tokens=False).encode("utf-8")

    def is_special(self, token_id: int) -> bool:
        """Whether the id is a special/control token (BOS, EOS, <|im_start|>, ...)."""
        return int(token_id) in self._special_ids

    def text_stream(self, skip_special_tokens: bool = False) -> TextStream:
        """A fresh incremental detokenizer."""
        return TextStream(self, skip_special_tokens=skip_special_tokens)

    def _check(self, token_id: int) -> int:
        token_id = int(token_id)
        if token_id < 0:
            raise IndexError(f"negative token id {token_id}")
        return token_id

    # ---- chat template ------------------------------------------------------------------------

    def _compiled_template(self) -> jinja2.Template:
        if not self.chat_template:
            raise ValueError(f"{self.name_or_path or 'this tokenizer'} has no chat template")
        if self._template_cache is None or self._template_cache[0] != self.chat_template:
            env = ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _GenerationTag]
            )
            env.filters["tojson"] = _tojson
            env.globals["raise_exception"] = _raise_exception
            env.globals["strftime_now"] = _strftime_now
            self._template_cache = (self.chat_template, env.from_string(self.chat_template))
        return self._template_cache[1]

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render `messages` with the model's chat template (ValueError if it has none)."""
        return self._compiled_template().render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            tools=None,
            documents=None,
            **self._special_token_texts,
        )

    def __repr__(self) -> str:
        return f"Tokenizer({self.name_or_path!r}, kind={self._kind}, vocab_size={self.vocab_size})"
