"""How a token reads on screen: its decoded text, with the bytes of a character split across tokens shown as
<0xF0> pieces (decode([id]) alone would show U+FFFD for them) and invisible characters by name (VS16, ZWJ, NBSP),
so no token shows as a blank. Every view labels tokens through here."""
from __future__ import annotations

import unicodedata

from model.tokenizer import Tokenizer

TEXT, BYTE, INVISIBLE = "text", "byte", "invisible"  # kinds of piece

# characters that draw nothing (or look like a plain space) and the short names a reader may know them by
_NAMES = {"\ufe0e": "VS15", "\ufe0f": "VS16", "\u200b": "ZWSP", "\u200c": "ZWNJ", "\u200d": "ZWJ", "\u2060": "WJ",
          "\ufeff": "BOM", "\u00ad": "SHY", "\u00a0": "NBSP", "\u202f": "NNBSP", "\u2009": "THSP", "\u3000": "IDSP"}
_SHOWN_AS_IS = " \n\t\r"  # the views mark these themselves (· ↵ → ␍)


def invisible_name(ch: str) -> str | None:
    """A short name for a character that would show as nothing or as a plain space (variation selectors, joiners,
    non-breaking and other odd spaces, format and control characters); None for a visible character."""
    if ch in _SHOWN_AS_IS:
        return None
    if ch in _NAMES:
        return _NAMES[ch]
    code = ord(ch)
    if 0xFE00 <= code <= 0xFE0F:
        return f"VS{code - 0xFE00 + 1}"
    if 0xE0100 <= code <= 0xE01EF:
        return f"VS{code - 0xE0100 + 17}"
    if unicodedata.category(ch) in ("Cf", "Cc", "Zs", "Zl", "Zp", "Co", "Cn"):
        return f"U+{code:04X}"
    return None


def _split_invisible(text: str) -> list[tuple[str, str]]:
    pieces: list[tuple[str, str]] = []
    run = ""
    for ch in text:
        name = invisible_name(ch)
        if name is None:
            run += ch
            continue
        if run:
            pieces.append((run, TEXT))
            run = ""
        pieces.append((name, INVISIBLE))
    if run:
        pieces.append((run, TEXT))
    return pieces


def token_pieces(tokenizer: Tokenizer, token_id: int) -> list[tuple[str, str]]:
    """What a token shows, as (text, kind) pieces: TEXT for decodable text, BYTE ("<0xF0>") for each byte that is
    only part of a UTF-8 character, INVISIBLE ("VS16", "U+200B") for a character that would draw nothing. Special
    tokens show their vocabulary string. The empty token is [("", TEXT)]."""
    if tokenizer.is_special(token_id):
        return [(tokenizer.token_strings([token_id])[0], TEXT)]
    # surrogateescape turns every byte that is not a whole character into one lone surrogate U+DC80..U+DCFF
    decoded = tokenizer.token_bytes(token_id).decode("utf-8", errors="surrogateescape")
    pieces: list[tuple[str, str]] = []
    text = ""
    for ch in decoded:
        if "\udc80" <= ch <= "\udcff":
            pieces += _split_invisible(text)
            text = ""
            pieces.append((f"<0x{ord(ch) - 0xDC00:02X}>", BYTE))
        else:
            text += ch
    pieces += _split_invisible(text)
    return pieces or [("", TEXT)]


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    """A token's text for labels: its decoded text, with bytes of a split character as <0xF0> pieces and invisible
    characters as ⟨VS16⟩."""
    return "".join(f"⟨{text}⟩" if kind == INVISIBLE else text for text, kind in token_pieces(tokenizer, token_id))
