"""Next-token views on real generation steps of the embedded model."""
from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest

from explorer.views import next_token as views
from explorer.views import style

PROMPT = "The three primary colours are red, yellow and"


@pytest.fixture(scope="module")
def runs(embedded_lm):
    sampled = list(embedded_lm.generate(PROMPT, max_new_tokens=8, temperature=0.8, top_k=10, top_p=0.9, seed=0))
    greedy = list(embedded_lm.generate(PROMPT, max_new_tokens=3, greedy=True))
    return embedded_lm.tokenizer, sampled, greedy


def _bars(fig):
    """{row: (model p, colour)} over the kept and cut bar traces."""
    out = {}
    for trace in fig.data:
        if trace.type == "bar":
            for x, y in zip(trace.x, trace.y):
                out[y] = (x, trace.marker.color)
    return out


def test_bars_are_the_model_distribution_coloured_by_what_the_sampler_kept(runs):
    tok, steps, _ = runs
    step = max(steps, key=lambda s: s.n_kept)
    assert step.n_kept > 1
    fig = views.next_token_figure(step, tok, k=20, settings_text="T 0.8 · top-k 10 · top-p 0.9 <b>")
    bars = _bars(fig)
    assert sorted(bars) == list(range(20))
    assert [bars[i][0] for i in range(20)] == step.top_probs
    assert [bars[i][1] == style.KEPT for i in range(20)] == step.top_kept
    assert sum(step.top_kept) == min(step.n_kept, 20)
    after = next(t for t in fig.data if t.type == "scatter")
    assert list(after.x) == step.top_sampled_probs
    assert math.isclose(sum(after.x), 1.0, rel_tol=1e-4)  # the sampler kept at most 10, all in the top 20
    ticks = list(fig.layout.yaxis.ticktext)
    assert ticks[0] == f"{style.token_label(tok.decode([step.top_ids[0]]))}  #1"
    assert fig.layout.yaxis.autorange == "reversed"
    title = fig.layout.title.text
    assert f"kept {step.n_kept} token" in title and f"({step.kept_mass:.1%} of the mass)" in title
    assert "&lt;b&gt;" in title


def test_the_sampled_token_is_outlined_and_annotated(runs):
    tok, steps, _ = runs
    step = steps[3]
    fig = views.next_token_figure(step, tok, k=20)
    row = step.top_ids.index(step.token_id)
    outlined = [(y, w) for t in fig.data if t.type == "bar" for y, w, c in
                zip(t.y, t.marker.line.width, t.marker.line.color) if c == style.SELECTED]
    assert outlined == [(row, 3)]
    (note,) = fig.layout.annotations
    assert note.y == row and "sampled" in note.text


def test_a_sampled_token_outside_the_top_k_gets_its_own_row(runs):
    tok, steps, _ = runs
    step = steps[0]
    # rank 8 is known: shown with its rank below the top 5
    ranked = dataclasses.replace(step, token_id=step.top_ids[7])
    fig = views.next_token_figure(ranked, tok, k=5)
    assert len(fig.layout.yaxis.tickvals) == 6
    assert fig.layout.yaxis.ticktext[-1].endswith("#8")
    assert _bars(fig)[5][0] == step.top_probs[7]
    # not among the recorded top 20: the step's own numbers
    unseen = next(i for i in range(1000, 2000) if i not in step.top_ids)
    outside = dataclasses.replace(step, token_id=unseen, prob=1e-4, sampled_prob=2e-4)
    fig = views.next_token_figure(outside, tok, k=20)
    assert fig.layout.yaxis.ticktext[-1].endswith("#>20")
    assert _bars(fig)[20] == (1e-4, style.KEPT)
    assert next(t for t in fig.data if t.type == "scatter").x[-1] == 2e-4


def test_greedy_keeps_one_token(runs):
    tok, _, greedy = runs
    step = greedy[0]
    fig = views.next_token_figure(step, tok, k=20)
    assert step.token_id == step.top_ids[0]
    assert "kept 1 token " in fig.layout.title.text
    assert [b[1] for _, b in sorted(_bars(fig).items())] == [style.KEPT] + [style.CUT] * 19


def test_timeline_plots_entropy_and_chosen_probability(runs):
    tok, steps, _ = runs
    fig = views.timeline_figure(steps, tok, selected_index=2)
    entropy, chosen = fig.data
    assert list(entropy.x) == [s.index for s in steps]
    np.testing.assert_allclose(entropy.y, [s.entropy for s in steps])
    np.testing.assert_allclose(chosen.y, [s.prob for s in steps])
    assert chosen.yaxis == "y2" and list(fig.layout.yaxis2.range) == [0, 1.08]
    assert list(fig.layout.xaxis.ticktext) == [style.token_label(tok.decode([s.token_id])) for s in steps]
    (line,) = fig.layout.shapes
    assert line.x0 == line.x1 == 2 and line.yref == "paper"
    assert views.timeline_figure([], tok).data == ()


def test_a_long_timeline_is_drawn_as_lines_without_a_marker_per_token(runs):
    """A marker per token is thousands of SVG elements for a long text, redrawn while it streams."""
    tok, steps, _ = runs
    assert all(trace.mode == "lines+markers" for trace in views.timeline_figure(steps, tok).data)
    long = [dataclasses.replace(steps[i % len(steps)], index=i) for i in range(views.TIMELINE_MARKERS + 1)]
    fig = views.timeline_figure(long, tok)
    assert [trace.mode for trace in fig.data] == ["lines", "lines"] and len(fig.data[0].x) == len(long)


def test_sampler_summary(runs):
    tok, steps, greedy = runs
    step = steps[1]
    html = views.sampler_summary_html(step, 0.8, 10, 0.9, False, tok)
    assert "sharper" in html and "top-k 10" in html and "top-p 0.9" in html
    assert f"Kept: {step.n_kept} token" in html and f"{step.kept_mass:.1%}" in html
    assert f"{step.prob:.1%} under the model, {step.sampled_prob:.1%}" in html
    assert f"{step.entropy:.2f} nats" in html
    tighter = "top-k" if step.n_kept == 10 else "top-p"
    assert f"Here {tighter} was the tighter cut" in html
    assert "Greedy" in views.sampler_summary_html(greedy[0], 1.0, 0, 1.0, True, tok)
    assert "flatter" in views.sampler_summary_html(step, 1.5, 0, 1.0, False, tok)
    angle = tok.encode("<")[0]
    html = views.sampler_summary_html(dataclasses.replace(step, token_id=angle), 0.8, 10, 0.9, False, tok)
    assert re.search(r'class="tok" data-pos="\d+">&lt;</b>', html) and "><<" not in html


def test_the_probability_axis_stops_at_100_percent(runs):
    tok, _, greedy = runs
    sure = dataclasses.replace(greedy[0], top_probs=[0.97] + greedy[0].top_probs[1:],
                               top_sampled_probs=[1.0] + [0.0] * 19)
    fig = views.next_token_figure(sure, tok)
    assert list(fig.layout.xaxis.range) == [0, 1.0]
    (note,) = fig.layout.annotations
    assert note.xanchor == "right" and note.text == "sampled ▶"  # before the bar's end, not past the plot's edge
    assert fig.layout.height <= style.VIEW_HEIGHT


@pytest.fixture(scope="module")
def session(embedded_lm, runs):
    from explorer.session import Session

    _, steps, _ = runs
    s = Session()
    s.start(embedded_lm.prompt_ids(PROMPT), {"temperature": 0.8, "top_k": 10, "top_p": 0.9})
    for step in steps:
        s.add(dataclasses.replace(step, trace=None))
    s.generating = False
    return s


def test_the_selected_token_picks_the_step_that_produced_it(session):
    s = session
    n_prompt = s.n_prompt
    assert s.steps[0].position == n_prompt
    for selected, expected in ((None, s.steps[-1]), (n_prompt, s.steps[0]), (n_prompt + 3, s.steps[3])):
        s.selected = selected
        assert s.current_step() is expected
    s.selected = 2
    assert s.current_step() is None  # a prompt token was given, not sampled
    s.selected = None


def test_the_step_slider_selects_its_token_and_a_prompt_token_gets_a_message(embedded_lm, session):
    from explorer.analysis import prediction_at, sequence_logprobs
    import gradio as gr

    from explorer.ui.next_token_tab import NextTokenTab

    s = session
    with gr.Blocks():
        tab = NextTokenTab(embedded_lm)
    tab.set_controls(s, 4)
    assert s.selected == s.steps[3].position
    slider, bars, _, summary = tab.render(s)
    assert slider["value"] == 4 and f"position {s.steps[3].position}" in bars.layout.title.text
    tab.set_controls(s, len(s.steps))  # the last step of a finished generation is a token like any other
    assert s.selected == s.steps[-1].position
    s.selected = 3
    slider, bars, _, summary = tab.render(s)
    assert "Token 3" in summary and "part of the prompt" in summary and "generated token" in summary
    assert f"(<b>{style.token_label(embedded_lm.tokenizer.decode([s.ids[3]]))}</b>)" in summary  # · for a space
    trace = embedded_lm.trace(s.ids)
    expected = math.exp(sequence_logprobs(trace, start=3, stop=4)[0])
    prediction = prediction_at(trace, 3)
    assert prediction.token_id == s.ids[3] and prediction.prob == pytest.approx(expected, rel=1e-4)
    given = [y for y, c in zip(bars.data[0].y, bars.data[0].marker.line.color) if c == style.SELECTED]
    assert bars.layout.yaxis.ticktext[given[0]].endswith(f"#{prediction.rank}")
    assert "position 3" in bars.layout.title.text and f"{prediction.prob:.1%}" in summary
    s.selected = 0
    _, bars, _, summary = tab.render(s)
    assert "no prediction" in summary and f"position {s.steps[0].position}" in bars.layout.title.text
    s.selected = None
