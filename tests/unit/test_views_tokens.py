"""The Tokens tab's views on the real embedded model: token chips (ids, bytes, whitespace, special and split
characters, escaping), the prompt's log P(X) and perplexity, and the surprisal bars."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from explorer.analysis import sequence_logprobs
from explorer.views import style
from explorer.views.text import BYTE, INVISIBLE, TEXT as PLAIN, invisible_name, token_pieces, token_text
from explorer.views.tokens import character_groups, logprob_share_figure, share_window, token_chips_html, \
    token_stats_html

TEXT = "Party 🎉 at <script>alert(1)</script> <img src=x onerror=alert(1)>\n\tdone.  The end. "
N_PROMPT = 250


@pytest.fixture(scope="module")
def context(embedded_lm):
    """About 300 tokens: a chat prompt (special tokens) repeated; the last 50 play the generated part."""
    ids = (embedded_lm.prompt_ids(TEXT, chat=True) * 10)[:300]
    trace = embedded_lm.trace(ids)
    return embedded_lm.tokenizer, ids, sequence_logprobs(trace)


def _chips(html: str) -> dict[int, str]:
    """data-pos -> that chip's opening tag and content up to the next chip."""
    parts = re.split(r'(?=<span class="tok[^"]*" data-pos=)', html)
    return {int(re.search(r'data-pos="(\d+)"', p).group(1)): p for p in parts if 'data-pos="' in p}


def test_one_chip_per_token_with_its_id_and_kind(context):
    tokenizer, ids, logprobs = context
    chips = _chips(token_chips_html(tokenizer, ids, N_PROMPT, logprobs, selected=7))
    assert sorted(chips) == list(range(len(ids)))
    for pos in (0, 7, N_PROMPT - 1, N_PROMPT, len(ids) - 1):
        assert f'<span class="i">{ids[pos]}</span>' in chips[pos]
        assert f"id {ids[pos]} (" in chips[pos]
    assert 'class="tok p' in chips[N_PROMPT - 1] and 'class="tok g' in chips[N_PROMPT]
    assert [p for p, chip in chips.items() if " sel" in chip.split(">")[0]] == [7]


def test_special_tokens_whitespace_and_escaping(context):
    tokenizer, ids, logprobs = context
    html = token_chips_html(tokenizer, ids, N_PROMPT, logprobs)
    chips = _chips(html)
    start = tokenizer.token_strings([ids[0]])[0]
    assert start == "<|im_start|>" and tokenizer.is_special(ids[0])
    assert 'class="tok p s"' in chips[0] and "&lt;|im_start|&gt;" in chips[0]
    assert "<script" not in html and "<img" not in html
    assert "&lt;" in html and "&gt;" in html and "alert" in html
    newline = next(p for p, i in enumerate(ids) if tokenizer.token_bytes(i) == b"\n")
    assert "↵" in chips[newline] and chips[newline].rstrip().endswith("<br>")
    tab = next(p for p, i in enumerate(ids) if tokenizer.token_bytes(i).startswith(b"\t"))
    assert "→" in chips[tab]
    space = next(p for p, i in enumerate(ids) if tokenizer.token_bytes(i).startswith(b" "))
    assert '<span class="w">·</span>' in chips[space]


def test_a_character_split_across_tokens_shows_its_bytes_framed_together(context):
    tokenizer, ids, logprobs = context
    chunks = [tokenizer.token_bytes(i) for i in ids]
    first = next(p for p, c in enumerate(chunks) if c.endswith(b"\xf0\x9f"))
    html = token_chips_html(tokenizer, ids, N_PROMPT, logprobs)
    chips = _chips(html)
    assert "&lt;0xF0&gt;" in chips[first] and "&lt;0x9F&gt;" in chips[first]
    assert "part of 🎉 (U+1F389), spread over tokens" in chips[first]
    assert "part of 🎉" in chips[first + 1]
    assert token_pieces(tokenizer, ids[first]) == [(" ", PLAIN), ("<0xF0>", BYTE), ("<0x9F>", BYTE)]
    groups = [g for g in character_groups(chunks) if g[0] == first]
    assert groups == [(first, groups[0][1], "🎉")] and groups[0][1] > first
    assert b"".join(chunks[first: groups[0][1] + 1]).strip() == "🎉".encode()
    # one frame holds exactly the chips of the character, labelled with it
    frame = html[html.index('<span class="grp"'):]
    frame = frame[:frame.index('<span class="gl">🎉 U+1F389</span>')]
    assert [int(p) for p in re.findall(r'data-pos="(\d+)"', frame)] == list(range(first, groups[0][1] + 1))


def test_a_heart_and_its_variation_selector_are_one_group_and_vs16_shows_by_name(embedded_lm):
    tokenizer = embedded_lm.tokenizer
    ids = tokenizer.encode("I ❤️ tea 👍🏽")
    chunks = [tokenizer.token_bytes(i) for i in ids]
    vs16 = next(p for p, c in enumerate(chunks) if c == "\ufe0f".encode())
    assert token_pieces(tokenizer, ids[vs16]) == [("VS16", INVISIBLE)]
    assert token_text(tokenizer, ids[vs16]) == "⟨VS16⟩"
    groups = character_groups(chunks)
    heart = next(g for g in groups if g[2] == "❤️")
    assert heart[1] == vs16  # the selector joins the heart whose bytes came before it
    thumb = next(g for g in groups if g[2] == "👍🏽")  # the skin tone joins the thumb
    assert b"".join(chunks[thumb[0]: thumb[1] + 1]).strip() == "👍🏽".encode()
    chips = _chips(token_chips_html(tokenizer, ids, len(ids)))
    assert '<span class="v">VS16</span>' in chips[vs16]
    assert [invisible_name(c) for c in "\u200d\u00a0\u200b a\n"] == ["ZWJ", "NBSP", "ZWSP", None, None, None]


def test_tooltips_carry_log_p_and_its_share(context):
    tokenizer, ids, logprobs = context
    chips = _chips(token_chips_html(tokenizer, ids, N_PROMPT, logprobs))
    total = sum(logprobs)
    for t in (1, 40, 299):
        assert f"log p = {logprobs[t - 1]:.3f}" in chips[t]
        assert f"{logprobs[t - 1] / total:.1%} of log P(prompt + generated)" in chips[t]
    assert "no prediction" in chips[0]
    # fewer log-probs than tokens: the rest simply have none
    chips = _chips(token_chips_html(tokenizer, ids, N_PROMPT, logprobs[:10]))
    assert "log p =" in chips[10] and "log p =" not in chips[11]


def test_stats_name_the_prompts_log_p_apart_from_the_whole_texts(context):
    tokenizer, ids, logprobs = context
    prompt_ids, prompt_logprobs = ids[:40], logprobs[:39]
    text = tokenizer.decode(prompt_ids)
    html = token_stats_html(text, prompt_ids, prompt_logprobs)
    log_p = sum(prompt_logprobs)
    assert f"log P(prompt)</td><td style=\"font-variant-numeric:tabular-nums;font-weight:600\">{log_p:.2f} nats" in html
    assert f"{math.exp(-log_p / 39):.2f}" in html
    assert f">{len(text):,}<" in html and ">40<" in html and f"{len(text) / 40:.2f}" in html
    assert "first token has no prediction" in html
    assert "P(prompt + generated)" not in html
    assert "no prediction" in token_stats_html("Hi", [1], [])
    # with generated tokens, the whole text's sum is a row of its own, under its own name
    both = token_stats_html(text, prompt_ids, prompt_logprobs, logprobs[:60])
    assert f"log P(prompt + generated)</td><td style=\"font-variant-numeric:tabular-nums;font-weight:600\">" \
           f"{sum(logprobs[:60]):.2f} nats" in both
    assert f"{log_p:.2f} nats" in both
    assert "P(X)" not in both


def test_surprisal_bars_equal_minus_log_p(context):
    tokenizer, ids, logprobs = context
    fig = logprob_share_figure(tokenizer, ids, logprobs, selected=12, n_prompt=N_PROMPT, window=400)
    bars = fig.data[0]
    assert np.array_equal(np.asarray(bars.x), np.arange(1, len(ids)))
    assert np.allclose(np.asarray(bars.y), -np.asarray(logprobs), atol=1e-6)
    shares = [c[2] for c in bars.customdata]
    assert sum(shares) == pytest.approx(1.0, abs=1e-5)
    assert bars.customdata[5][1] == pytest.approx(math.exp(logprobs[5]), rel=1e-5)
    assert bars.marker.color[11] == style.SELECTED
    assert bars.marker.color[N_PROMPT - 1] == style.GENERATED and bars.marker.color[0] == style.PROMPT
    ticks = list(fig.layout.xaxis.tickvals)
    assert len(ticks) <= 30
    assert all("<script" not in t for t in fig.layout.xaxis.ticktext)
    assert fig.layout.height <= style.VIEW_HEIGHT and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    # the title names the whole text's sum as such, and nothing is written over the bars
    title = fig.layout.title.text
    assert f"−log P(prompt + generated) = {-sum(logprobs):.1f} nats" in title and "P(X)" not in title
    assert not fig.layout.annotations
    (mean,) = fig.layout.shapes
    assert mean.y0 == pytest.approx(-sum(logprobs) / len(logprobs), rel=1e-5)
    only_prompt = logprob_share_figure(tokenizer, ids[:40], logprobs[:39], n_prompt=40)
    assert f"−log P(prompt) = {-sum(logprobs[:39]):.1f} nats" in only_prompt.layout.title.text


def test_a_long_context_shows_a_window_around_the_selected_token(context):
    tokenizer, ids, logprobs = context
    fig = logprob_share_figure(tokenizer, ids, logprobs, selected=150, n_prompt=N_PROMPT, window=100)
    x = np.asarray(fig.data[0].x)
    assert len(x) == 100 and x[0] <= 150 <= x[-1] and list(x) == list(range(x[0], x[0] + 100))
    assert np.allclose(fig.data[0].y, -np.asarray(logprobs[x[0] - 1: x[-1]]), atol=1e-6)
    assert fig.data[0].marker.color[150 - x[0]] == style.SELECTED
    assert list(fig.layout.xaxis.range) == [x[0] - 0.5, x[-1] + 0.5]
    assert f"positions {x[0]}–{x[-1]} of 300 shown" in fig.layout.title.text
    # the sum in the title is still the whole text's
    assert f"= {-sum(logprobs):.1f} nats" in fig.layout.title.text
    assert share_window(300, None, 100) == (200, 300)  # nothing selected: the newest tokens
    assert share_window(300, 0, 100) == (1, 101)
    assert share_window(50, 10, 100) == (1, 50)


def test_the_chips_scroll_in_a_box_of_bounded_height(context):
    tokenizer, ids, logprobs = context
    html = token_chips_html(tokenizer, ids, N_PROMPT, logprobs, max_height=200)
    assert '<div class="tokbox" style="max-height:200px">' in html
    assert ".tokchips .tokbox{position:relative;overflow-y:auto" in html
    box = html[html.index('<div class="tokbox"'):]
    assert len(re.findall(r'data-pos="', box)) == len(ids)  # every chip inside the box
    assert re.search(r"\.tokchips \.i\{font-size:(\d+)px", html).group(1) >= "13"
