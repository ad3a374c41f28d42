"""Build a Tokenizer from a Hugging Face tokenizer directory: tokenizer.json plus tokenizer_config.json,
special_tokens_map.json and chat_template.jinja where present."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as Backend
from tokenizers import processors

from ..tokenizer import Tokenizer
from .gguf_tokenizer import template_processor


def hf_tokenizer(path: str | Path) -> Tokenizer:
    """Load tokenizer.json plus tokenizer_config.json / special_tokens_map.json / chat_template.jinja if present."""
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    tokenizer_json = folder / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {folder}")
    raw = tokenizer_json.read_text(encoding="utf-8")
    backend = Backend.from_str(raw)
    spec = json.loads(raw)

    def read_json(name: str) -> dict[str, Any]:
        file = folder / name
        return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}

    config = read_json("tokenizer_config.json")
    special_map = read_json("special_tokens_map.json")
    texts: dict[str, str] = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        text = _token_text(config.get(name)) or _token_text(special_map.get(name))
        if text is not None:
            texts[name] = text

    added = backend.get_added_tokens_decoder()
    special_ids = {i for i, tok in added.items() if tok.special}
    for i, tok in (config.get("added_tokens_decoder") or {}).items():
        if isinstance(tok, dict) and tok.get("special"):
            special_ids.add(int(i))
    extra = config.get("additional_special_tokens") or special_map.get("additional_special_tokens") or []
    for text in [*texts.values(), *(_token_text(t) for t in extra)]:
        token_id = backend.token_to_id(text) if text else None
        if token_id is not None:
            special_ids.add(token_id)

    def id_of(name: str) -> int | None:
        return backend.token_to_id(texts[name]) if name in texts else None

    bos_id, eos_id = id_of("bos_token"), id_of("eos_token")
    if "add_bos_token" in config or "add_eos_token" in config:
        # transformers rebuilds the post-processor from these flags; we only do so where they disagree with it
        bos = (texts["bos_token"], bos_id) if config.get("add_bos_token") and bos_id is not None else None
        eos = (texts["eos_token"], eos_id) if config.get("add_eos_token") and eos_id is not None else None
        wanted = [t[1] for t in (bos, eos) if t is not None]
        if backend.encode("", add_special_tokens=True).ids != wanted:
            plain = processors.TemplateProcessing(single="$A", pair="$A $B:1")
            backend.post_processor = template_processor(bos, eos) or plain

    decoders = _decoder_types(spec.get("decoder"))
    names = {d.get("type") for d in decoders}
    if "ByteLevel" in names:
        kind = "byte_level"
    elif names & {"ByteFallback", "Metaspace"} or any(
        d.get("pattern", {}).get("String") == "\u2581" for d in decoders
    ):
        kind = "sentencepiece"
    else:
        kind = "other"
    # the decoder drops the "▁" prefix of the first word: a Strip step, or Metaspace that prepends one
    strip = any(
        (d.get("type") == "Strip" and d.get("start", 0) > 0)
        or (d.get("type") == "Metaspace" and d.get("prepend_scheme", "always") != "never"
            and d.get("add_prefix_space", True))
        for d in decoders
    )

    template_file = folder / "chat_template.jinja"
    template = config.get("chat_template")
    if template_file.is_file():
        template = template_file.read_text(encoding="utf-8")
    elif isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return Tokenizer(
        backend,
        kind=kind,
        bos_id=bos_id,
        eos_id=eos_id,
        special_ids=frozenset(special_ids),
        added_ids=frozenset(added),
        chat_template=template if isinstance(template, str) and template else None,
        name_or_path=str(path),
        strip_leading_space=strip,
        special_token_texts=texts,
    )


def _token_text(value: Any) -> str | None:
    """A special token as written in tokenizer_config.json: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _decoder_types(spec: Any) -> list[dict[str, Any]]:
    if not isinstance(spec, dict):
        return []
    if spec.get("type") == "Sequence":
        return [d for sub in spec.get("decoders", []) for d in _decoder_types(sub)]
    return [spec]
