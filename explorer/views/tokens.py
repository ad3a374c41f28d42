"""The Tokens tab: the text as the model sees it (token chips with ids, bytes, visible whitespace and invisible
characters), the probability P(prompt) = Π P(x_t | x_<t) and that of prompt + generated text, with their
perplexities, and how surprising each token was."""
from __future__ import annotations

import math
import unicodedata
from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from model.tokenizer import Tokenizer

from . import style
from .text import BYTE, INVISIBLE, token_pieces, token_text

SPECIAL_BACKGROUND = "#EFE6F7"
HEX_COLOUR = "#9C4A00"
INVISIBLE_COLOUR = "#7A3E9D"
GROUP_COLOUR = "#7A3E9D"
MUTED = "#4A4A4A"  # ids and whitespace marks: dark enough to read on a projector
CHIPS_HEIGHT = 210  # px: the chips box scrolls inside this, so a 1,000-token context never makes the page tall
SHARE_WINDOW = 120  # positions of the surprisal chart shown at once, around the selected token

_CSS = (
    "<style>"
    ".tokchips{font-family:%(font)s;line-height:1.15}"
    ".tokchips .tokbox{position:relative;overflow-y:auto;border:1px solid #E3E3E3;border-radius:6px;padding:2px}"
    ".tokchips .tok,.tokchips .kc{display:inline-flex;flex-direction:column;align-items:center;vertical-align:top;"
    "margin:2px 1px;padding:1px 4px;border:1px solid;border-radius:4px;cursor:pointer}"
    ".tokchips .t{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:17px;white-space:pre}"
    ".tokchips .i{font-size:13px;color:%(muted)s;font-variant-numeric:tabular-nums}"
    ".tokchips .p{border-color:%(prompt)s;background:%(prompt)s1A}"
    ".tokchips .g{border-color:%(gen)s;background:%(gen)s26}"
    ".tokchips .s{border-style:dashed;background:%(special)s}"
    ".tokchips .sel{outline:3px solid %(sel)s;outline-offset:1px}"
    ".tokchips .w{color:%(muted)s}"
    ".tokchips .x{color:%(hex)s;font-size:13px}"
    ".tokchips .v{color:%(invisible)s;font-size:12px;font-family:%(font)s;border:1px dotted %(invisible)s;"
    "border-radius:3px;padding:0 2px}"
    ".tokchips .grp{display:inline-flex;flex-direction:column;align-items:center;vertical-align:top;margin:1px 2px;"
    "border:2px solid %(group)s;border-radius:6px;padding:0 1px}"
    ".tokchips .grp>.gc{display:inline-flex}"
    ".tokchips .gl{font-size:13px;color:%(group)s;white-space:nowrap}"
    ".tokchips .key{font-size:13px;color:%(muted)s;margin-bottom:4px}"
    "</style>"
) % dict(font=style.FONT, muted=MUTED, prompt=style.PROMPT, gen=style.GENERATED, special=SPECIAL_BACKGROUND,
         sel=style.SELECTED, hex=HEX_COLOUR, invisible=INVISIBLE_COLOUR, group=GROUP_COLOUR)

# scrolls the chips box to the selected chip when the selection (or the context) changes, not when the reader scrolls
FOLLOW_SELECTION_JS = """
const follow = () => {
  const box = element.querySelector('.tokbox'), sel = box && box.querySelector('.sel');
  if (!sel) return;
  const key = sel.dataset.pos + '/' + box.querySelectorAll('.tok').length;
  if (box.__followed === key) return;
  box.__followed = key;
  box.scrollTop = sel.offsetTop - box.clientHeight / 2;
};
new MutationObserver(follow).observe(element, {childList: true, subtree: true});
follow();
"""

_WHITESPACE_HTML = (
    (" ", '<span class="w">·</span>'),
    ("\t", '<span class="w">→</span>'),
    ("\r", '<span class="w">␍</span>'),
    ("\n", '<span class="w">↵</span>'),
)


def text_name(n_tokens: int, n_prompt: int | None) -> str:
    """What a sum of log-probabilities over n_tokens covers, in the words every table, title and tooltip uses:
    "prompt" or "prompt + generated" (so log P(prompt) is never confused with the whole text's)."""
    if n_prompt is None:
        return "text"
    return "prompt" if n_tokens <= n_prompt else "prompt + generated"


def _joins(previous: str, ch: str) -> bool:
    """Whether ch belongs to the same visible character as the one before it (a combining mark, a variation
    selector, a skin-tone modifier, or either side of a zero-width joiner)."""
    code = ord(ch)
    return (unicodedata.category(ch) in ("Mn", "Me", "Mc") or 0xFE00 <= code <= 0xFE0F or 0x1F3FB <= code <= 0x1F3FF
            or ch == "\u200d" or previous == "\u200d")


def _characters(data: bytes) -> list[tuple[int, int, str]]:
    """(start byte, end byte, text) of each visible character of UTF-8 data (invalid bytes as U+FFFD)."""
    found: list[tuple[int, int, str]] = []
    at = 0
    while at < len(data):
        lead = data[at]
        length = 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4 if lead < 0xF8 else 1
        try:
            char = data[at: at + length].decode("utf-8")
        except UnicodeDecodeError:
            char, length = "\ufffd", 1
        if found and _joins(found[-1][2][-1], char):
            found[-1] = (found[-1][0], at + length, found[-1][2] + char)
        else:
            found.append((at, at + length, char))
        at += length
    return found


def character_groups(chunks: Sequence[bytes]) -> list[tuple[int, int, str]]:
    """(first token, last token, characters) for each run of neighbouring tokens that share a character: the bytes
    of an emoji split over three tokens, or a heart and the variation selector (VS16) after it. Runs that overlap
    are one group."""
    owner = [i for i, chunk in enumerate(chunks) for _ in chunk]
    groups: list[tuple[int, int, str]] = []
    for start, end, text in _characters(b"".join(chunks)):
        first, last = owner[start], owner[end - 1]
        if first == last:
            continue
        if groups and first <= groups[-1][1]:
            groups[-1] = (groups[-1][0], max(last, groups[-1][1]), groups[-1][2] + text)
        else:
            groups.append((first, last, text))
    return groups


def _code_points(text: str) -> str:
    return " ".join(f"U+{ord(ch):04X}" for ch in text)


def _chip_html(pieces: list[tuple[str, str]]) -> str:
    parts = []
    for text, kind in pieces:
        if kind == BYTE:
            parts.append(f'<span class="x">{style.escape(text)}</span>')
        elif kind == INVISIBLE:
            parts.append(f'<span class="v">{style.escape(text)}</span>')
        else:
            shown = style.escape(text)
            for raw, visible in _WHITESPACE_HTML:
                shown = shown.replace(raw, visible)
            parts.append(shown)
    return "".join(parts) or '<span class="w">∅</span>'


def _share_text(logprob: float, total: float, name: str) -> str:
    share = f" · {logprob / total:.1%} of log P({name})" if total < 0 else ""
    return f"log p = {logprob:.3f} · p = {math.exp(logprob):.4g}{share}"


def _key_html() -> str:
    return ('<div class="key"><span class="kc p">prompt</span> <span class="kc g">generated</span> '
            '<span class="kc s">special</span> · space ↵ newline → tab '
            f'<span style="color:{HEX_COLOUR}">&lt;0xF0&gt;</span> a byte of a character split across tokens, '
            f'<span style="color:{GROUP_COLOUR};border:2px solid {GROUP_COLOUR};border-radius:4px;padding:0 3px">'
            "framed</span> together · "
            f'<span style="color:{INVISIBLE_COLOUR}">VS16</span> an invisible character</div>')


def token_chips_html(
    tokenizer: Tokenizer,
    ids: Sequence[int],
    n_prompt: int,
    logprobs: Sequence[float] | None = None,
    selected: int | None = None,
    max_height: int = CHIPS_HEIGHT,
) -> str:
    """Every token as a chip: its text (· space, ↵ newline, → tab; <0xF0> for bytes of a split character, VS16 or
    U+200B for an invisible one) over its id; prompt blue, generated orange, special dashed, `selected` outlined.
    Tokens that share a character are framed together, the character written under them. The chips scroll in a
    box at most max_height px tall. logprobs[t - 1] is log p(x_t | x_<t) (as from analysis.sequence_logprobs); it
    may cover fewer tokens than ids."""
    ids = [int(i) for i in ids]
    chunks = [tokenizer.token_bytes(i) for i in ids]
    strings = tokenizer.token_strings(ids)
    groups = character_groups(chunks)
    group_of = {i: g for g in groups for i in range(g[0], g[1] + 1)}
    total = sum(logprobs) if logprobs else 0.0
    name = text_name(len(logprobs) + 1 if logprobs else 0, n_prompt)
    out = [_CSS, '<div class="tokchips">', _key_html(), f'<div class="tokbox" style="max-height:{max_height}px">']
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
        group = group_of.get(pos)
        if group is not None:
            first, last, chars = group
            tip.append(f"part of {chars} ({_code_points(chars)}), spread over tokens {first}–{last}")
            if pos == first:
                out.append(f'<span class="grp" title="{style.escape(chars)}: one character in {last - first + 1} '
                           f'tokens"><span class="gc">')
        if pos == 0:
            tip.append("first token: nothing before it, so no prediction")
        elif logprobs is not None and pos - 1 < len(logprobs):
            tip.append(_share_text(logprobs[pos - 1], total, name))
        pieces = token_pieces(tokenizer, token_id)
        out.append(f'<span class="{" ".join(classes)}" data-pos="{pos}" title="{style.escape(chr(10).join(tip))}">'
                   f'<span class="t">{_chip_html(pieces)}</span><span class="i">{token_id}</span></span>')
        if group is not None and pos == group[1]:
            out.append(f'</span><span class="gl">{style.escape(group[2])} {_code_points(group[2][0])}</span></span>')
        if b"\n" in chunk and not special and (group is None or pos == group[1]):
            out.append("<br>")
    out.append("</div></div>")
    return "".join(out)


def _scientific(log10_value: float) -> str:
    exponent = math.floor(log10_value)
    return f"{10 ** (log10_value - exponent):.1f} × 10<sup>{exponent}</sup>"


def _logp_rows(name: str, logprobs: Sequence[float]) -> list[tuple[str, str]]:
    log_p = float(sum(logprobs))
    perplexity = math.exp(-log_p / len(logprobs))
    return [(f"log P({name})", f"{log_p:.2f} nats ({log_p / math.log(2):.1f} bits)"),
            (f"P({name})", f"≈ {_scientific(log_p / math.log(10))}"),
            (f"perplexity ({name})", f"{perplexity:.2f}")]


def token_stats_html(text: str, ids: Sequence[int], logprobs: Sequence[float],
                     text_logprobs: Sequence[float] | None = None) -> str:
    """The prompt's counts (characters, tokens, characters per token) and its log P(prompt) = Σ log P(x_t | x_<t)
    with its perplexity exp(-mean), explained in the course's terms. With text_logprobs (the whole text's, the
    prompt's first) and generated tokens among them, the same for the prompt + generated text, named apart."""
    n_chars, n_tokens = len(text), len(ids)
    per_token = f"{n_chars / n_tokens:.2f}" if n_tokens else "—"
    rows = [("prompt characters", f"{n_chars:,}"), ("prompt tokens", f"{n_tokens:,}"),
            ("characters per token", per_token)]
    if logprobs:
        log_p = float(sum(logprobs))
        perplexity = math.exp(-log_p / len(logprobs))
        rows += _logp_rows("prompt", logprobs)
        explanation = (
            "The model gives a text the probability Π<sub>t</sub> P(x<sub>t</sub> | x<sub>&lt;t</sub>): "
            "one factor per token, each predicted from the tokens before it. In logs the product becomes a sum: "
            f"for the prompt, log P(prompt) = Σ<sub>t</sub> log P(x<sub>t</sub> | x<sub>&lt;t</sub>) = {log_p:.2f}, "
            f"over its {len(logprobs)} tokens after the first (the first token has no prediction: nothing comes "
            f"before it). Perplexity = exp(−mean log P) = {perplexity:.2f}: on average the model was as unsure as a "
            f"uniform choice among {perplexity:.1f} tokens.")
        if text_logprobs is not None and len(text_logprobs) > len(logprobs):
            rows += _logp_rows("prompt + generated", text_logprobs)
            explanation += (" The generated tokens add their own factors: log P(prompt + generated) sums over "
                            f"all {len(text_logprobs)} predicted tokens, as the chart's bars do.")
    else:
        explanation = ("P(prompt) = Π<sub>t</sub> P(x<sub>t</sub> | x<sub>&lt;t</sub>) needs at least two tokens: "
                       "the first token has no prediction, since nothing comes before it.")
    cells = "".join(f'<tr><td style="color:{MUTED};padding:2px 12px 2px 0">{name}</td>'
                    f'<td style="font-variant-numeric:tabular-nums;font-weight:600">{value}</td></tr>'
                    for name, value in rows)
    return (f'<div style="font-family:{style.FONT};font-size:{style.FONT_SIZE}px">'
            f'<table style="border-collapse:collapse">{cells}</table>'
            f'<p style="margin:8px 0 0 0;line-height:1.4">{explanation}</p></div>')


def share_window(n_tokens: int, selected: int | None, width: int = SHARE_WINDOW) -> tuple[int, int]:
    """[lo, hi) of the positions 1..n_tokens-1 the surprisal chart shows: `width` of them around the selected
    token (the last by default), the whole range when it is short."""
    if n_tokens - 1 <= width:
        return 1, n_tokens
    centre = n_tokens - 1 if selected is None else min(max(selected, 1), n_tokens - 1)
    lo = min(max(1, centre - width // 2), n_tokens - width)
    return lo, lo + width


def logprob_share_figure(
    tokenizer: Tokenizer,
    ids: Sequence[int],
    logprobs: Sequence[float],
    selected: int | None = None,
    n_prompt: int | None = None,
    height: int = style.VIEW_HEIGHT,
    window: int = SHARE_WINDOW,
) -> go.Figure:
    """One bar per token x_t (t >= 1): its surprisal −log P(x_t | x_<t) in nats; all the bars add up to
    −log P(prompt + generated) (−log P(prompt) while only the prompt is there), said in the subtitle with the mean
    (the dotted line: log perplexity). A long context shows `window` positions around the selected token.
    logprobs[t - 1] belongs to position t. Bars are orange from position n_prompt on, when it is given."""
    ids = [int(i) for i in ids]
    n = len(logprobs)
    surprisal_all = -np.asarray(logprobs, dtype=np.float32)
    total = float(surprisal_all.sum())
    lo, hi = share_window(n + 1, selected, window)
    positions = np.arange(lo, hi)
    surprisal = surprisal_all[lo - 1: hi - 1]
    labels = [style.token_label(token_text(tokenizer, ids[t])) for t in positions]
    ticks = [lo + i for i in style.thin_ticks(len(positions), 30)]
    tick_labels = [style.token_label(token_text(tokenizer, ids[t]), max_len=8) for t in ticks]
    colours = [style.GENERATED if n_prompt is not None and t >= n_prompt else style.PROMPT for t in positions]
    if selected is not None and lo <= selected < hi:
        colours[selected - lo] = style.SELECTED
    name = text_name(n + 1, n_prompt)
    probs = np.exp(-surprisal)
    custom = [[label, float(p), float(s / total) if total > 0 else 0.0]
              for label, p, s in zip(labels, probs, surprisal)]
    fig = go.Figure(go.Bar(
        x=positions, y=surprisal, marker_color=colours, customdata=custom, name="surprisal", meta="x-position",
        hovertemplate="position %{x}: %{customdata[0]}<br>p = %{customdata[1]:.4f}<br>"
                      f"−log p = %{{y:.3f}} nats<br>%{{customdata[2]:.1%}} of −log P({name})<extra></extra>",
    ))
    subtitle = ""
    if n:
        mean = total / n
        fig.add_hline(y=mean, line=dict(color=MUTED, dash="dot", width=1.5))
        shown = f" · positions {lo}–{hi - 1} of {n + 1} shown" if hi - lo < n else ""
        subtitle = (f"<br><sup>all {n} bars add up to −log P({name}) = {total:.1f} nats</sup>"
                    f"<br><sup>dotted: their mean {mean:.2f} = log perplexity{shown}</sup>")
    fig.update_xaxes(title="position t (x<sub>0</sub> has no prediction)", range=[lo - 0.5, hi - 0.5],
                     tickmode="array", tickvals=ticks, ticktext=tick_labels, tickangle=-50)
    fig.update_yaxes(title="−log p (nats)", rangemode="tozero")
    title = "Surprisal of each token: −log P(x<sub>t</sub> | x<sub>&lt;t</sub>)" + subtitle
    style.layout(fig, title, height, showlegend=False, bargap=0.15)
    fig.update_layout(margin=dict(t=105 if subtitle else 50))  # two subtitle lines, room for presentation type
    return fig
