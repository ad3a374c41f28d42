"""The Tokens tab: the text as the model sees it (token chips with ids, bytes and visible whitespace), the prompt's
probability P(X) = Π P(x_t | x_<t) with its perplexity, and how surprising each token was."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from model.tokenizer import Tokenizer

from . import style
from .text import token_pieces, token_text

SPECIAL_BACKGROUND = "#EFE6F7"
HEX_COLOUR = "#9C4A00"
MUTED = "#6B6B6B"

_CSS = (
    "<style>"
    ".tokchips{font-family:%(font)s;line-height:1.15}"
    ".tokchips .tok,.tokchips .kc{display:inline-flex;flex-direction:column;align-items:center;vertical-align:top;"
    "margin:2px 1px;padding:1px 4px;border:1px solid;border-radius:4px;cursor:pointer}"
    ".tokchips .t{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:16px;white-space:pre}"
    ".tokchips .i{font-size:10px;color:%(muted)s}"
    ".tokchips .p{border-color:%(prompt)s;background:%(prompt)s1A}"
    ".tokchips .g{border-color:%(gen)s;background:%(gen)s26}"
    ".tokchips .s{border-style:dashed;background:%(special)s}"
    ".tokchips .sel{outline:3px solid %(sel)s;outline-offset:1px}"
    ".tokchips .w{color:#A0A0A0}"
    ".tokchips .x{color:%(hex)s;font-size:12px}"
    ".tokchips .key{font-size:12px;color:%(muted)s;margin-bottom:4px}"
    "</style>"
) % dict(font=style.FONT, muted=MUTED, prompt=style.PROMPT, gen=style.GENERATED, special=SPECIAL_BACKGROUND,
         sel=style.SELECTED, hex=HEX_COLOUR)

_WHITESPACE_HTML = (
    (" ", '<span class="w">·</span>'),
    ("\t", '<span class="w">→</span>'),
    ("\r", '<span class="w">␍</span>'),
    ("\n", '<span class="w">↵</span>'),
)


def split_characters(chunks: Sequence[bytes]) -> dict[int, tuple[str, int, int]]:
    """For each token (by index) that holds part of a character spread over several tokens:
    (that character, index of its first token, index of its last token)."""
    owner = [i for i, chunk in enumerate(chunks) for _ in chunk]
    data = b"".join(chunks)
    found: dict[int, tuple[str, int, int]] = {}
    at = 0
    while at < len(data):
        lead = data[at]
        length = 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4 if lead < 0xF8 else 1
        try:
            char = data[at: at + length].decode("utf-8")
        except UnicodeDecodeError:
            char, length = "\ufffd", 1
        first, last = owner[at], owner[min(at + length, len(data)) - 1]
        if first != last:
            for i in range(first, last + 1):
                found[i] = (char, first, last)
        at += length
    return found


def _chip_html(pieces: list[tuple[str, bool]]) -> str:
    parts = []
    for text, is_hex in pieces:
        if is_hex:
            parts.append(f'<span class="x">{style.escape(text)}</span>')
        else:
            shown = style.escape(text)
            for raw, visible in _WHITESPACE_HTML:
                shown = shown.replace(raw, visible)
            parts.append(shown)
    return "".join(parts) or '<span class="w">∅</span>'


def _share_text(logprob: float, total: float) -> str:
    share = f" · {logprob / total:.1%} of log P(X)" if total < 0 else ""
    return f"log p = {logprob:.3f} · p = {math.exp(logprob):.4g}{share}"


def token_chips_html(
    tokenizer: Tokenizer,
    ids: Sequence[int],
    n_prompt: int,
    logprobs: Sequence[float] | None = None,
    selected: int | None = None,
) -> str:
    """Every token as a chip: its text (· space, ↵ newline, → tab; <0xF0> for bytes of a split character) over
    its id; prompt blue, generated orange, special dashed, `selected` outlined. logprobs[t - 1] is
    log p(x_t | x_<t) (as from analysis.sequence_logprobs); it may cover fewer tokens than ids."""
    ids = [int(i) for i in ids]
    chunks = [tokenizer.token_bytes(i) for i in ids]
    strings = tokenizer.token_strings(ids)
    split = split_characters(chunks) if any(not _is_text(c) for c in chunks) else {}
    total = sum(logprobs) if logprobs else 0.0
    out = [_CSS, '<div class="tokchips">',
           '<div class="key"><span class="kc p">prompt</span> <span class="kc g">generated</span> '
           '<span class="kc s">special</span> · space ↵ newline → tab '
           f'<span style="color:{HEX_COLOUR}">&lt;0xF0&gt;</span> a byte of a character split across tokens</div>']
    for pos, (token_id, chunk, string) in enumerate(zip(ids, chunks, strings)):
        special = tokenizer.is_special(token_id)
        kind = "prompt" if pos < n_prompt else "generated"
        classes = ["tok", "p" if pos < n_prompt else "g"]
        if special:
            classes.append("s")
            kind += ", special token"
        if pos == selected:
            classes.append("sel")
        tip = [f"position {pos} · id {token_id} ({kind})", f"vocabulary string: {string}",
               f"bytes: {chunk.hex(' ').upper() or '(none)'}"]
        if pos in split:
            char, first, last = split[pos]
            tip.append(f"part of a character: {char} (U+{ord(char):04X}) spread over tokens {first}–{last}")
        if pos == 0:
            tip.append("first token: nothing before it, so no prediction")
        elif logprobs is not None and pos - 1 < len(logprobs):
            tip.append(_share_text(logprobs[pos - 1], total))
        pieces = token_pieces(tokenizer, token_id)
        out.append(f'<span class="{" ".join(classes)}" data-pos="{pos}" title="{style.escape(chr(10).join(tip))}">'
                   f'<span class="t">{_chip_html(pieces)}</span><span class="i">{token_id}</span></span>')
        if b"\n" in chunk and not special:
            out.append("<br>")
    out.append("</div>")
    return "".join(out)


def _is_text(chunk: bytes) -> bool:
    try:
        chunk.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _scientific(log10_value: float) -> str:
    exponent = math.floor(log10_value)
    return f"{10 ** (log10_value - exponent):.1f} × 10<sup>{exponent}</sup>"


def token_stats_html(text: str, ids: Sequence[int], logprobs: Sequence[float]) -> str:
    """Counts (characters, tokens, characters per token) and the prompt's log P(X) = Σ log P(x_t | x_<t) with its
    perplexity exp(-mean), explained in the course's terms."""
    n_chars, n_tokens = len(text), len(ids)
    per_token = f"{n_chars / n_tokens:.2f}" if n_tokens else "—"
    rows = [("characters", f"{n_chars:,}"), ("tokens", f"{n_tokens:,}"), ("characters per token", per_token)]
    if logprobs:
        log_p = float(sum(logprobs))
        perplexity = math.exp(-log_p / len(logprobs))
        rows += [("log P(X)", f"{log_p:.2f} nats ({log_p / math.log(2):.1f} bits)"),
                 ("P(X)", f"≈ {_scientific(log_p / math.log(10))}"),
                 ("perplexity", f"{perplexity:.2f}")]
        explanation = (
            "The model gives a text the probability P(X) = Π<sub>t</sub> P(x<sub>t</sub> | x<sub>&lt;t</sub>): "
            "one factor per token, each predicted from the tokens before it. In logs the product becomes a sum, "
            f"log P(X) = Σ<sub>t</sub> log P(x<sub>t</sub> | x<sub>&lt;t</sub>) = {log_p:.2f}, over the "
            f"{len(logprobs)} tokens after the first (the first token has no prediction: nothing comes before it). "
            f"Perplexity = exp(−mean log P) = {perplexity:.2f}: on average the model was as unsure as a uniform "
            f"choice among {perplexity:.1f} tokens.")
    else:
        explanation = ("P(X) = Π<sub>t</sub> P(x<sub>t</sub> | x<sub>&lt;t</sub>) needs at least two tokens: "
                       "the first token has no prediction, since nothing comes before it.")
    cells = "".join(f'<tr><td style="color:{MUTED};padding:2px 12px 2px 0">{name}</td>'
                    f'<td style="font-variant-numeric:tabular-nums;font-weight:600">{value}</td></tr>'
                    for name, value in rows)
    return (f'<div style="font-family:{style.FONT};font-size:{style.FONT_SIZE}px">'
            f'<table style="border-collapse:collapse">{cells}</table>'
            f'<p style="margin:8px 0 0 0;line-height:1.4">{explanation}</p></div>')


def logprob_share_figure(
    tokenizer: Tokenizer,
    ids: Sequence[int],
    logprobs: Sequence[float],
    selected: int | None = None,
    n_prompt: int | None = None,
    height: int = 440,
) -> go.Figure:
    """One bar per token x_t (t >= 1): its surprisal −log P(x_t | x_<t) in nats; the bars add up to −log P(X).
    logprobs[t - 1] belongs to position t. Bars are orange from position n_prompt on, when it is given."""
    ids = [int(i) for i in ids]
    n = len(logprobs)
    positions = np.arange(1, n + 1)
    surprisal = -np.asarray(logprobs, dtype=np.float32)
    total = float(surprisal.sum())
    labels = [style.token_label(token_text(tokenizer, i)) for i in ids]
    ticks = style.thin_ticks(len(ids))
    tick_labels = [style.token_label(token_text(tokenizer, ids[t]), max_len=8) for t in ticks]
    colours = [style.GENERATED if n_prompt is not None and t >= n_prompt else style.PROMPT for t in positions]
    if selected is not None and 1 <= selected <= n:
        colours[selected - 1] = style.SELECTED
    probs = np.exp(-surprisal)
    custom = [[labels[t], float(p), float(s / total) if total > 0 else 0.0]
              for t, p, s in zip(positions, probs, surprisal)]
    fig = go.Figure(go.Bar(
        x=positions, y=surprisal, marker_color=colours, customdata=custom, name="surprisal", meta="x-position",
        hovertemplate="position %{x}: %{customdata[0]}<br>p = %{customdata[1]:.4f}<br>"
                      "−log p = %{y:.3f} nats<br>%{customdata[2]:.1%} of −log P(X)<extra></extra>",
    ))
    if n:
        mean = total / n
        fig.add_hline(y=mean, line=dict(color=MUTED, dash="dot", width=1),
                      annotation_text=f"mean {mean:.2f} = log perplexity", annotation_position="top right")
    fig.update_xaxes(title="position t (x<sub>0</sub> has no prediction)", range=[-0.5, len(ids) - 0.5],
                     tickmode="array", tickvals=ticks, ticktext=tick_labels, tickangle=-50)
    fig.update_yaxes(title="−log p (nats)", rangemode="tozero")
    title = "Surprisal of each token: −log P(x<sub>t</sub> | x<sub>&lt;t</sub>)"
    if n:
        title += f" · they add up to −log P(X) = {total:.1f} nats"
    return style.layout(fig, title, height, showlegend=False, bargap=0.15)
