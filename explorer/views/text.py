"""How a token reads on screen: its decoded text, with the bytes of a character split across tokens shown as
<0xF0> pieces (decode([id]) alone would show U+FFFD for them). Every view labels tokens through here."""
from __future__ import annotations

from model.tokenizer import Tokenizer


def token_pieces(tokenizer: Tokenizer, token_id: int) -> list[tuple[str, bool]]:
    """What a token shows: (text, False) for decodable text and ("<0xF0>", True) for each byte that is only part
    of a UTF-8 character. Special tokens show their vocabulary string."""
    if tokenizer.is_special(token_id):
        return [(tokenizer.token_strings([token_id])[0], False)]
    # surrogateescape turns every byte that is not a whole character into one lone surrogate U+DC80..U+DCFF
    decoded = tokenizer.token_bytes(token_id).decode("utf-8", errors="surrogateescape")
    pieces: list[tuple[str, bool]] = []
    text = ""
    for ch in decoded:
        if "\udc80" <= ch <= "\udcff":
            if text:
                pieces.append((text, False))
                text = ""
            pieces.append((f"<0x{ord(ch) - 0xDC00:02X}>", True))
        else:
            text += ch
    if text or not pieces:
        pieces.append((text, False))
    return pieces


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    """A token's text for labels: its decoded text, with bytes of a split character as <0xF0> pieces."""
    return "".join(text for text, _ in token_pieces(tokenizer, token_id))
