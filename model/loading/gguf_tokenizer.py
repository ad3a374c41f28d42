"""Build a `tokenizers.Tokenizer` from GGUF tokenizer metadata (llama.cpp's `tokenizer.ggml.*` keys).

Supports `tokenizer.ggml.model` "gpt2" (byte-level BPE) and "llama" (SentencePiece-style BPE with byte fallback).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from ..tokenizer import Tokenizer

SUPPORTED_MODELS: tuple[str, ...] = ("gpt2", "llama")

# llama.cpp token types (gguf.TokenType)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_PRES = frozenset({"llama-bpe", "llama3", "llama-v3"})
_QWEN2_PRES = frozenset({"qwen2", "deepseek-r1-qwen"})
# llama.cpp groups these with SmolLM: each digit split off, then GPT-2's regex
_DIGIT_PRES = frozenset({"smollm", "starcoder", "refact"})
_GPT2_PRES = frozenset({"gpt2", "default"})
# llama.cpp's ids for a SentencePiece vocabulary whose metadata names none: <unk>, <s>, </s>
_SPM_DEFAULT_IDS = {"unknown": 0, "bos": 1, "eos": 2}


@dataclass(frozen=True)
class GGUFTokenizerParts:
    """Everything `model.tokenizer.Tokenizer` needs, read from one GGUF file's metadata."""

    backend: Backend
    kind: str  # "byte_level" or "sentencepiece"
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    stop_ids: frozenset[int]  # eos/eot/eom ids named by the metadata (text-based ones are added by the caller)
    special_ids: frozenset[int]
    added_ids: frozenset[int]
    chat_template: str | None
    strip_leading_space: bool
    name: str
    token_texts: dict[str, str]  # bos_token/eos_token/unk_token/pad_token -> text, for chat templates


def _opt_id(meta: Mapping[str, Any], key: str, n_tokens: int, default: int | None = None) -> int | None:
    value = meta.get(key, default)
    if value is None:
        return None
    value = int(value)
    return value if 0 <= value < n_tokens else None


def _byte_level_pre_tokenizer(pre: str) -> tuple[pre_tokenizers.PreTokenizer, bool]:
    """(pre-tokenizer, ignore_merges) for byte-level BPE, following llama.cpp's `tokenizer.ggml.pre` names."""
    if pre in _DIGIT_PRES:
        # SmolLM2's tokenizer.json: Digits(individual_digits) before ByteLevel; llama.cpp splits "\p{N}" first too.
        # (transformers' GGUF loader leaves Digits out, which splits whitespace runs before digits differently.)
        digits = pre_tokenizers.Digits(individual_digits=True)
        return pre_tokenizers.Sequence([digits, pre_tokenizers.ByteLevel(add_prefix_space=False)]), False
    if pre in _LLAMA3_PRES or pre in _QWEN2_PRES:
        split = pre_tokenizers.Split(Regex(_LLAMA3_SPLIT if pre in _LLAMA3_PRES else _QWEN2_SPLIT), "isolated")
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        # Llama 3's tokenizer.json sets ignore_merges, and llama.cpp does the same for this pre-tokenizer
        return pre_tokenizers.Sequence([split, byte_level]), pre in _LLAMA3_PRES
    if pre not in _GPT2_PRES:
        warnings.warn(f"unknown tokenizer.ggml.pre {pre!r}; using GPT-2's pre-tokenizer", stacklevel=3)
    return pre_tokenizers.ByteLevel(add_prefix_space=False), False


def _merges_from_scores(
    tokens: Sequence[str], scores: Sequence[float], mergeable: Sequence[bool]
) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's score-greedy merging: every split of a piece, ranked by its score."""
    pieces = {tok: i for i, tok in enumerate(tokens) if mergeable[i]}
    ranked: list[tuple[float, int, int, str, str]] = []
    for tok, i in pieces.items():
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            if left in pieces and right in pieces:
                ranked.append((-float(scores[i]), i, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def template_processor(
    bos: tuple[str, int] | None, eos: tuple[str, int] | None
) -> processors.TemplateProcessing | None:
    """A post-processor adding (text, id) `bos` before and `eos` after each sequence; None if neither."""
    if bos is None and eos is None:
        return None
    single = " ".join(p for p in (bos and f"{bos[0]}:0", "$A:0", eos and f"{eos[0]}:0") if p)
    pair = single + " " + " ".join(p for p in (bos and f"{bos[0]}:1", "$B:1", eos and f"{eos[0]}:1") if p)
    specials = [t for t in (bos, eos) if t is not None]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)


def build_gguf_tokenizer(meta: Mapping[str, Any]) -> GGUFTokenizerParts:
    """Build the tokenizer described by GGUF metadata (key -> field.contents())."""
    model_type = meta.get("tokenizer.ggml.model")
    if model_type not in SUPPORTED_MODELS:
        raise ValueError(
            f"unsupported GGUF tokenizer model {model_type!r}; supported: {', '.join(SUPPORTED_MODELS)}"
        )
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    n = len(tokens)
    types: list[int] = [int(t) for t in meta.get("tokenizer.ggml.token_type") or [_NORMAL] * n]
    byte_level = model_type == "gpt2"

    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)  # a duplicated string keeps its first id

    pre = str(meta.get("tokenizer.ggml.pre", "default"))
    if byte_level:
        pre_tokenizer, ignore_merges = _byte_level_pre_tokenizer(pre)
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
        backend = Backend(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
        backend.pre_tokenizer = pre_tokenizer
        if pre in _QWEN2_PRES:
            backend.normalizer = normalizers.NFC()  # Qwen2's tokenizer.json normalizes to NFC
        backend.decoder = decoders.ByteLevel()
        add_space_prefix = False
        add_bos_default = pre in _LLAMA3_PRES  # llama.cpp's defaults for BPE vocabularies
    else:
        if "tokenizer.ggml.merges" in meta:
            merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
        else:
            scores = meta.get("tokenizer.ggml.scores") or [-float(i) for i in range(n)]
            merges = _merges_from_scores(tokens, scores, [t == _NORMAL for t in types])
        unk_id = _opt_id(meta, "tokenizer.ggml.unknown_token_id", n, _SPM_DEFAULT_IDS["unknown"])
        unk = tokens[unk_id] if unk_id is not None else None
        backend = Backend(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
        add_space_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        # Llama 2 / TinyLlama's tokenizer.json: "▁" before each run of text (llama.cpp also re-adds it after specials)
        steps = [normalizers.Prepend("\u2581")] if add_space_prefix else []
        backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "\u2581")])
        dec = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        if add_space_prefix:
            dec.append(decoders.Strip(" ", 1, 0))
        backend.decoder = decoders.Sequence(dec)
        add_bos_default = True

    special_ids = frozenset(i for i, t in enumerate(types) if t in (_UNKNOWN, _CONTROL))
    user_ids = frozenset(i for i, t in enumerate(types) if t == _USER_DEFINED)
    backend.add_special_tokens([AddedToken(tokens[i], normalized=False, special=True) for i in sorted(special_ids)])
    backend.add_tokens([AddedToken(tokens[i], normalized=False, special=False) for i in sorted(user_ids)])

    defaults = {} if byte_level else _SPM_DEFAULT_IDS
    bos_id = _opt_id(meta, "tokenizer.ggml.bos_token_id", n, defaults.get("bos"))
    eos_id = _opt_id(meta, "tokenizer.ggml.eos_token_id", n, defaults.get("eos"))
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", add_bos_default)) and bos_id is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos_id is not None
    post = template_processor(
        (tokens[bos_id], bos_id) if add_bos and bos_id is not None else None,
        (tokens[eos_id], eos_id) if add_eos and eos_id is not None else None,
    )
    if post is not None:
        backend.post_processor = post

    stops = {eos_id}
    stops |= {_opt_id(meta, f"tokenizer.ggml.{k}_token_id", n) for k in ("eot", "eom")}
    template = meta.get("tokenizer.chat_template")
    named_ids = {"bos_token": bos_id, "eos_token": eos_id}
    for name, key in (("unk_token", "unknown"), ("pad_token", "padding")):
        named_ids[name] = _opt_id(meta, f"tokenizer.ggml.{key}_token_id", n, defaults.get(key))
    return GGUFTokenizerParts(
        backend=backend,
        kind="byte_level" if byte_level else "sentencepiece",
        vocab_size=n,
        bos_id=bos_id,
        eos_id=eos_id,
        stop_ids=frozenset(i for i in stops if i is not None),
        special_ids=special_ids,
        added_ids=special_ids | user_ids,
        chat_template=str(template) if template else None,
        strip_leading_space=add_space_prefix,
        name=str(meta.get("general.name") or meta.get("general.basename") or "gguf"),
        token_texts={name: tokens[i] for name, i in named_ids.items() if i is not None},
    )


def gguf_tokenizer(meta: Mapping[str, Any], name_or_path: str | None = None) -> Tokenizer:
    """A Tokenizer from GGUF metadata (key -> value); model types "gpt2" and "llama" are supported."""
    parts = build_gguf_tokenizer(meta)
    return Tokenizer(
        parts.backend,
        kind=parts.kind,
        bos_id=parts.bos_id,
        eos_id=parts.eos_id,
        special_ids=parts.special_ids,
        added_ids=parts.added_ids,
        stop_ids=parts.stop_ids,
        chat_template=parts.chat_template,
        name_or_path=name_or_path if name_or_path is not None else parts.name,
        strip_leading_space=parts.strip_leading_space,
        vocab_size=parts.vocab_size,
        special_token_texts=parts.token_texts,
    )
