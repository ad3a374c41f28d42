"""The output strip on real Steps of the embedded model: one span per generated token at its position, tinted
by its probability, with the text reassembled exactly and escaped."""
from __future__ import annotations

import html
import re
from dataclasses import dataclass

import pytest

from explorer.views.output import _TINTS, output_parts

def output_html(*args, **kwargs) -> str:
    """The whole strip in one piece: its head, with every generated token settled."""
    return output_parts(*args, **kwargs)[0]


PROMPT = "Write <script>alert(1)</script> as a list:\n"


@dataclass(frozen=True)
class FakeStep:
    token_id: int
    prob: float
    position: int


@pytest.fixture(scope="module")
def generation(embedded_lm):
    steps = list(embedded_lm.generate(PROMPT, max_new_tokens=12, seed=0, temperature=0.8, top_k=50))
    return embedded_lm.tokenizer, embedded_lm.prompt_ids(PROMPT), steps


def _spans(text: str) -> list[tuple[int, str, str, str]]:
    """(data-pos, title, style, inner html) of each token span."""
    pattern = (r'<span class="tok[^"]*" data-pos="(\d+)" title="([^"]*)" style="([^"]*)">(.*?)</span>'
               r'(?=<span class="tok|</div>)')
    return [(int(p), t, s, inner) for p, t, s, inner in re.findall(pattern, text, flags=re.S)]


def test_one_tinted_span_per_generated_token(generation):
    tokenizer, prompt_ids, steps = generation
    out = output_html(tokenizer, prompt_ids, steps, selected=steps[3].position)
    spans = _spans(out)
    assert [s[0] for s in spans] == [step.position for step in steps]
    for (_, title, style, _), step in zip(spans, steps):
        rank = step.top_ids.index(step.token_id) + 1 if step.token_id in step.top_ids else None
        assert title == f"p = {step.prob:.3g} · rank {rank if rank else '&gt;20'} · id {step.token_id}"
        assert style == f"background:{_TINTS[round(step.prob * 100)]}"
    assert re.findall(r'class="tok[^"]*sel[^"]*" data-pos="(\d+)"', out) == [str(steps[3].position)]
    assert "p when chosen" in out


def test_text_is_reassembled_and_escaped(generation):
    tokenizer, prompt_ids, steps = generation
    out = output_html(tokenizer, prompt_ids, steps)
    assert "<script" not in out and "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    shown = re.sub(r'<span class="nl">[↵⋯]</span>', "", out.split('<div class="key">')[1])
    visible = html.unescape(re.sub(r"<[^>]+>", "", shown.split("</div>", 1)[1]))
    assert visible == tokenizer.decode(prompt_ids + [s.token_id for s in steps]).rstrip("\ufffd")
    hidden = output_html(tokenizer, prompt_ids, steps, show_prompt=False)
    assert 'class="prompt"' not in hidden and "Write" not in hidden and len(_spans(hidden)) == len(steps)


def test_split_characters_and_special_tokens(embedded_lm):
    tokenizer = embedded_lm.tokenizer
    prompt_ids = tokenizer.encode("Party")
    pieces = tokenizer.encode(" 🎉\n") + [tokenizer.eos_id]
    steps = [FakeStep(i, 0.1 * (k + 1), len(prompt_ids) + k) for k, i in enumerate(pieces)]
    spans = _spans(output_html(tokenizer, prompt_ids, steps))
    inner = [s[3] for s in spans]
    # " 🎉" is three tokens: " " plus two bytes, one byte, the last byte that completes the emoji
    assert inner[0] == " " and inner[1] == '<span class="nl">⋯</span>'
    assert inner[2] == "🎉" and spans[0][1] == f"p = 0.1 · rank ? · id {pieces[0]}"
    assert inner[3] == '<span class="nl">↵</span>\n'
    assert inner[4] == "&lt;|im_end|&gt;"
    assert 'class="tok sp"' in output_html(tokenizer, prompt_ids, steps)


def test_a_long_output_is_one_compact_span_per_token(embedded_lm):
    tokenizer = embedded_lm.tokenizer
    ids = (tokenizer.encode("The quick brown fox jumps over the lazy dog, again and again.\n") * 30)[:300]
    steps = [FakeStep(i, (k % 10) / 10, 20 + k) for k, i in enumerate(ids[20:])]
    out = output_html(tokenizer, ids[:20], steps)
    assert len(_spans(out)) == 280 and len(out) < 110 * 300


def test_the_two_parts_are_the_whole_text_cut_after_the_settled_tokens(generation):
    """output_parts: the head is the whole strip up to the settled tokens, the tail the spans after them, which
    together are output_html's spans; the tail is empty when nothing comes after the settled tokens."""
    tokenizer, prompt_ids, steps = generation
    whole = output_html(tokenizer, prompt_ids, steps, selected=steps[7].position)
    for settled in (0, 5, len(steps)):
        head, tail = output_parts(tokenizer, prompt_ids, steps, selected=steps[7].position, settled=settled)
        assert _spans(head) + _spans(tail) == _spans(whole) and len(_spans(head)) == settled
        assert head.startswith(whole[: whole.index('<span class="tok')])  # styles, key and prompt in the head
        spans = re.findall(r'<span class="tok.*?</span>(?=<span class="tok|</div>)', whole, flags=re.S)
        assert tail == ("" if settled == len(steps) else '<div class="tokout">' + "".join(spans[settled:]) + "</div>")


def test_the_strips_head_changes_once_per_settled_block_and_is_left_out_while_it_stays(embedded_lm):
    """A streamed update sends the newest tokens only: the head is the same string for every length within a block
    of SETTLE tokens, and update() leaves it out when given the head the page already has."""
    import gradio as gr

    from explorer.session import Session
    from explorer.ui.output_strip import SETTLE, OutputStrip

    with gr.Blocks():
        strip = OutputStrip(embedded_lm.tokenizer)
    steps = list(embedded_lm.generate("Once upon a time", max_new_tokens=SETTLE + 3, seed=0, stop_at_eos=False))
    s = Session()
    s.start(embedded_lm.prompt_ids("Once upon a time"), {})
    heads = []
    for step in steps:
        s.add(step)
        update = strip.update(s)
        heads.append(update[strip.head])
        assert strip.update(s, unchanged_head=update[strip.head]) == {strip.tail: update[strip.tail]}
    assert len(set(heads[: SETTLE - 1])) == 1 and heads[SETTLE - 1] != heads[SETTLE - 2]
    assert len(set(heads[SETTLE - 1:])) == 1 and len(_spans(heads[-1])) == SETTLE
    assert len(_spans(strip.update(s, unchanged_head=heads[-2])[strip.tail])) == 3
    assert len(_spans(strip.html(s))) == SETTLE + 3  # the exported report's strip: whole, in one piece
