"""The Tokens tab's views on the real embedded model: token chips (ids, bytes, whitespace, special and split
characters, escaping), the prompt's log P(X) and perplexity, and the surprisal bars."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from explorer.analysis import sequence_logprobs
from explorer.views import style
from explorer.views.text import token_pieces
from explorer.views.tokens import logprob_share_figure, split_characters, token_chips_html, \
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


def test_a_character_split_across_tokens_shows_its_bytes(context):
    tokenizer, ids, logprobs = context
    chunks = [tokenizer.token_bytes(i) for i in ids]
    first = next(p for p, c in enumerate(chunks) if c.endswith(b"\xf0\x9f"))
    chips = _chips(token_chips_html(tokenizer, ids, N_PROMPT, logprobs))
    assert "&lt;0xF0&gt;" in chips[first] and "&lt;0x9F&gt;" in chips[first]
    assert "part of a character: 🎉 (U+1F389)" in chips[first]
    assert "part of a character: 🎉" in chips[first + 1]
    assert token_pieces(tokenizer, ids[first]) == [(" ", False), ("<0xF0>", True), ("<0x9F>", True)]
    split = split_characters(chunks)
    assert split[first] == ("🎉", first, split[first][2]) and split[first][2] > first
    assert b"".join(chunks[first: split[first][2] + 1]).strip() == "🎉".encode()


def test_tooltips_carry_log_p_and_its_share(context):
    tokenizer, ids, logprobs = context
    chips = _chips(token_chips_html(tokenizer, ids, N_PROMPT, logprobs))
    total = sum(logprobs)
    for t in (1, 40, 299):
        assert f"log p = {logprobs[t - 1]:.3f}" in chips[t]
        assert f"{logprobs[t - 1] / total:.1%} of log P(X)" in chips[t]
    assert "no prediction" in chips[0]
    # fewer log-probs than tokens: the rest simply have none
    chips = _chips(token_chips_html(tokenizer, ids, N_PROMPT, logprobs[:10]))
    assert "log p =" in chips[10] and "log p =" not in chips[11]


def test_stats_give_log_p_of_x_and_perplexity(context):
    tokenizer, ids, logprobs = context
    prompt_ids, prompt_logprobs = ids[:40], logprobs[:39]
    text = tokenizer.decode(prompt_ids)
    html = token_stats_html(text, prompt_ids, prompt_logprobs)
    log_p = sum(prompt_logprobs)
    assert f"{log_p:.2f} nats" in html
    assert f"{math.exp(-log_p / 39):.2f}" in html
    assert f">{len(text):,}<" in html and ">40<" in html and f"{len(text) / 40:.2f}" in html
    assert "first token has no prediction" in html
    assert "no prediction" in token_stats_html("Hi", [1], [])


def test_surprisal_bars_equal_minus_log_p(context):
    tokenizer, ids, logprobs = context
    fig = logprob_share_figure(tokenizer, ids, logprobs, selected=12, n_prompt=N_PROMPT)
    bars = fig.data[0]
    assert np.array_equal(np.asarray(bars.x), np.arange(1, len(ids)))
    assert np.allclose(np.asarray(bars.y), -np.asarray(logprobs), atol=1e-6)
    shares = [c[2] for c in bars.customdata]
    assert sum(shares) == pytest.approx(1.0, abs=1e-5)
    assert bars.customdata[5][1] == pytest.approx(math.exp(logprobs[5]), rel=1e-5)
    assert bars.marker.color[11] == style.SELECTED
    assert bars.marker.color[N_PROMPT - 1] == style.GENERATED and bars.marker.color[0] == style.PROMPT
    ticks = list(fig.layout.xaxis.tickvals)
    assert ticks == style.thin_ticks(len(ids)) and len(ticks) <= 40
    assert all("<script" not in t for t in fig.layout.xaxis.ticktext)
    assert fig.layout.height and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
