"""The Next token tab: the distribution one token was drawn from (what temperature / top-k / top-p kept), what the
model expected at a prompt token, and entropy and chosen-token probability over a whole generation. Reads
model.lm.Step."""
from __future__ import annotations

import math
from typing import Sequence

import plotly.graph_objects as go

from model.lm import Step
from model.sampling import GREEDY_BELOW_TEMPERATURE
from model.tokenizer import Tokenizer

from ..analysis import Prediction
from ..branches import ForcedStep
from . import style
from .text import token_text

AFTER = "#2F2F2F"  # markers for the probability after the sampler's changes


def _rows(step: Step, k: int) -> list[tuple[int, int | None, float, float, bool]]:
    """(token id, rank from 1 or None if unknown, model prob, prob after the sampler, kept) for the top k, plus
    the sampled token if it is not among them."""
    n = min(k, len(step.top_ids))
    rows = [(step.top_ids[i], i + 1, step.top_probs[i], step.top_sampled_probs[i], step.top_kept[i])
            for i in range(n)]
    if step.token_id not in step.top_ids[:n]:
        if step.token_id in step.top_ids:
            i = step.top_ids.index(step.token_id)
            rows.append((step.token_id, i + 1, step.top_probs[i], step.top_sampled_probs[i], step.top_kept[i]))
        else:
            rows.append((step.token_id, None, step.prob, step.sampled_prob, True))
    return rows


ROWS = 12  # bars that fit style.VIEW_HEIGHT at a projector's font size
TIMELINE_MARKERS = 150  # the timeline marks each token up to this many tokens


def _probability_axes(fig: go.Figure, labels: list[str], top: float) -> None:
    """Token labels down the y axis (most likely on top); probability along x, never past 100%."""
    fig.update_yaxes(tickvals=list(range(len(labels))), ticktext=labels, autorange="reversed", showgrid=False,
                     title_text=None)
    fig.update_xaxes(title_text="probability", range=[0, min(1.0, top * 1.25 + 1e-3)], tickformat=".0%")


def _mark(fig: go.Figure, x: float, row: int, word: str, x_max: float) -> None:
    """A red note pointing at the end of the drawn (or given) token's bar: beside it, or before it, pointing
    right, when the bar reaches the plot's edge."""
    inside = x > 0.7 * x_max
    fig.add_annotation(x=x, y=row, text=f"{word} ▶" if inside else f"◀ {word}", showarrow=False,
                       xanchor="right" if inside else "left",
                       xshift=-8 if inside else 10, bgcolor="rgba(255,255,255,0.85)",
                       font=dict(color=style.SELECTED, size=style.FONT_SIZE + 1))


def _finish(fig: go.Figure, title: str, subtitle: str, height: int) -> go.Figure:
    title += f"<br><sup>{style.escape(subtitle)}</sup>"
    # the bars shrink downwards, so the bottom right corner of the plot is free for the legend
    style.layout(fig, title, height=height, barmode="overlay",
                 legend=dict(x=0.99, xanchor="right", y=0.02, yanchor="bottom", bgcolor="rgba(255,255,255,0.85)"))
    fig.update_layout(margin=dict(l=150, r=30, t=80, b=55))
    return fig


def next_token_figure(step: Step, tokenizer: Tokenizer, k: int = ROWS, settings_text: str | None = None,
                      height: int = style.VIEW_HEIGHT) -> go.Figure:
    """Horizontal bars of the model's top-k probabilities (most likely on top), green where the sampler kept the
    token and grey where it cut it, dark diamonds for the probabilities actually sampled from; the drawn token
    outlined (a forced one instead, the drawn one noted). If it is not among the top k it gets an extra row at the
    bottom. A click on a row forces its token there (the bars' meta "candidate": customdata holds token id and
    position, assets/explorer.js)."""
    rows = _rows(step, k)
    n_top = len(step.top_ids)
    labels = [f"{style.token_label(token_text(tokenizer, tid))}  #{rank if rank else f'>{n_top}'}"
              for tid, rank, *_ in rows]
    index = list(range(len(rows)))
    sampled_row = next(i for i, row in enumerate(rows) if row[0] == step.token_id)
    custom = [[label, p_after, tid, step.position] for label, (tid, *_, p_after, _kept) in zip(labels, rows)]
    fig = go.Figure()
    for kept, name, colour in ((True, "kept by the sampler", style.KEPT), (False, "cut by the sampler", style.CUT)):
        members = [i for i in index if rows[i][4] == kept]
        if not members:
            continue
        fig.add_trace(go.Bar(
            x=[rows[i][2] for i in members], y=members, orientation="h", name=name, marker_color=colour,
            marker_line=dict(color=[style.SELECTED if i == sampled_row else colour for i in members],
                             width=[3 if i == sampled_row else 0 for i in members]),
            customdata=[custom[i] for i in members], meta="candidate",
            hovertemplate="%{customdata[0]}<br>model p = %{x:.4f}<br>after sampler p = %{customdata[1]:.4f}"
                          "<br>click: force it here<extra></extra>",
        ))
    # the diamonds repeat the bars' numbers: the row's bar answers hovers and clicks anywhere along the row
    fig.add_trace(go.Scatter(
        x=[row[3] for row in rows], y=index, mode="markers", name="after temperature / top-k / top-p",
        marker=dict(symbol="diamond", size=10, color=AFTER), hoverinfo="skip",
    ))
    top = max(max(row[2], row[3]) for row in rows)
    _, _, p_model, p_after, _ = rows[sampled_row]
    _probability_axes(fig, labels, top)
    x_max = fig.layout.xaxis.range[1]
    forced = isinstance(step, ForcedStep)
    _mark(fig, max(p_model, p_after), sampled_row, "forced" if forced else "sampled", x_max)
    plural = "s" if step.n_kept != 1 else ""
    kept = f"the sampler kept {step.n_kept} token{plural} ({step.kept_mass:.1%} of the mass)"
    title = f"Next token at position {step.position}"
    if forced:
        drawn_row = next((i for i, row in enumerate(rows) if row[0] == step.drawn_id), None)
        if drawn_row is not None:
            _mark(fig, max(rows[drawn_row][2], rows[drawn_row][3]), drawn_row, "drawn", x_max)
        title += " · forced (a cut token)" if step.cut else " · forced"
    fig = _finish(fig, title, kept + (f" · {settings_text}" if settings_text else ""), height)
    fig.update_layout(hovermode="y")
    return fig


def given_token_figure(prediction: Prediction, tokenizer: Tokenizer, k: int = ROWS,
                       height: int = style.VIEW_HEIGHT) -> go.Figure:
    """For a token of the prompt (given, not sampled): the model's top-k probabilities at its position, the token
    that actually came outlined (an extra row at the bottom when it is not among the top k)."""
    rows = [(tid, i + 1, p) for i, (tid, p) in enumerate(zip(prediction.top_ids[:k], prediction.top_probs[:k]))]
    if prediction.token_id not in prediction.top_ids[:k]:
        rows.append((prediction.token_id, prediction.rank, prediction.prob))
    labels = [f"{style.token_label(token_text(tokenizer, tid))}  #{rank}" for tid, rank, _ in rows]
    given_row = next(i for i, row in enumerate(rows) if row[0] == prediction.token_id)
    fig = go.Figure(go.Bar(
        x=[p for *_, p in rows], y=list(range(len(rows))), orientation="h", name="the model's probability",
        marker_color=style.PROMPT, customdata=labels, showlegend=False,
        marker_line=dict(color=[style.SELECTED if i == given_row else style.PROMPT for i in range(len(rows))],
                         width=[3 if i == given_row else 0 for i in range(len(rows))]),
        hovertemplate="%{customdata}<br>model p = %{x:.4f}<extra></extra>",
    ))
    _probability_axes(fig, labels, max(p for *_, p in rows))
    _mark(fig, prediction.prob, given_row, "what came", fig.layout.xaxis.range[1])
    title = f"What the model expected at position {prediction.position}"
    subtitle = f"the prompt's token had p = {prediction.prob:.1%} (rank {prediction.rank}); nothing was sampled"
    return _finish(fig, title, subtitle, height)


def prompt_token_html(position: int, token: str, prediction: Prediction | None = None) -> str:
    """The Next token tab's summary while a prompt token (its text: `token`) is selected: it was given, not sampled,
    and how to see a sampled one; with its prediction, how likely the model found it."""
    label = style.token_label(token, max_len=24)
    if prediction is None:
        body = (f"Token {position} (<b>{label}</b>) is the first token of the prompt: nothing comes before it, so "
                "the model made no prediction for it. The plot shows the first generated token.")
    else:
        body = (f"Token {position} (<b>{label}</b>) is part of the prompt: it was given, not sampled. The plot "
                f"shows what the model expected there: it gave this token {prediction.prob:.1%} (rank "
                f"{prediction.rank}).")
    return (f'<div class="sampler-summary" style="font-size:16px;line-height:1.5"><p>{body}</p>'
            f'<p>Select a generated token (<span style="color:{style.GENERATED};font-weight:600">orange</span>) '
            "to see the distribution it was drawn from and what the sampler kept.</p></div>")


def timeline_figure(steps: Sequence[Step], tokenizer: Tokenizer, selected_index: int | None = None) -> go.Figure:
    """Entropy of the model's distribution (nats, left axis) and the chosen token's model probability (right
    axis) for every generated token; the selected step marked by a vertical line."""
    fig = go.Figure()
    if not steps:
        return style.layout(fig, "Generate some text to see the timeline", height=300)
    xs = [s.index for s in steps]
    texts = [style.token_label(token_text(tokenizer, s.token_id)) for s in steps]
    # a marker per token while they can be told apart; past that, lines: with 2 x 1,200 SVG markers a redraw held
    # the page for 1.1-1.9 s on a 2-core machine, and it redraws while the text streams
    mode = "lines+markers" if len(steps) <= TIMELINE_MARKERS else "lines"
    fig.add_trace(go.Scatter(
        x=xs, y=[s.entropy for s in steps], name="entropy (nats)", mode=mode,
        line=dict(color=style.PROMPT), customdata=texts,
        hovertemplate="generated token %{x} %{customdata}<br>entropy %{y:.2f} nats<extra></extra>",
    ))
    fig.add_trace(go.Scatter(
        x=xs, y=[s.prob for s in steps], name="p(chosen token)", mode=mode, yaxis="y2",
        line=dict(color=style.GENERATED), customdata=texts,
        hovertemplate="generated token %{x} %{customdata}<br>p = %{y:.4f}<extra></extra>",
    ))
    ticks = style.thin_ticks(len(steps), max_ticks=30)
    fig.update_xaxes(tickvals=[xs[i] for i in ticks], ticktext=[texts[i] for i in ticks], tickangle=-60,
                     title_text="generated token")
    if selected_index is not None and selected_index in xs:
        fig.add_shape(type="line", x0=selected_index, x1=selected_index, xref="x", y0=0, y1=1, yref="paper",
                      line=dict(color=style.SELECTED, width=2, dash="dot"))
    style.layout(fig, "Uncertainty over the generation", height=360,
                 yaxis=dict(title_text="entropy (nats)", range=[0, 1.08 * max(s.entropy for s in steps) + 0.05],
                            color=style.PROMPT),
                 yaxis2=dict(title_text="p(chosen)", range=[0, 1.08], tickvals=[0, 0.25, 0.5, 0.75, 1],
                             tickformat=".0%", overlaying="y", side="right", showgrid=False, color=style.GENERATED),
                 legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"))
    fig.update_layout(margin=dict(l=60, r=70, t=60, b=90))
    return fig


def sampler_summary_html(step: Step, temperature: float, top_k: int, top_p: float, greedy: bool,
                         tokenizer: Tokenizer | None = None) -> str:
    """A few sentences on what the sampler did at this step, in the course's words."""
    token = style.token_label(token_text(tokenizer, step.token_id) if tokenizer else step.text, max_len=24)
    chosen = f'<b class="tok" data-pos="{step.position}">{token}</b>'
    spread = (f"The model's distribution has entropy {step.entropy:.2f} nats: about as uncertain as a fair choice "
              f"among {math.exp(step.entropy):.1f} tokens.")
    forced, taken = "", chosen
    if isinstance(step, ForcedStep):
        drawn = style.token_label(token_text(tokenizer, step.drawn_id) if tokenizer else str(step.drawn_id), 24)
        why = "the sampler had cut it: it could never have been drawn" if step.cut else "the sampler had kept it"
        forced = (f'<p class="forced-note"><b>Forced</b>: you chose {chosen} here ({why}); the text after it is a '
                  "branch, generated on from it.</p>")
        taken = f"<b>{drawn}</b> (you forced {chosen} instead)"
    if greedy or temperature < GREEDY_BELOW_TEMPERATURE:
        body = ("<li><b>Greedy</b>: no randomness; the most likely token is always taken.</li>"
                + (f"<li>It was {taken}; {chosen} has probability {step.prob:.1%}.</li>" if forced else
                   f"<li>It was {chosen}, with probability {step.prob:.1%}.</li>"))
    else:
        if temperature < 1:
            temp = f"divides the logits by {temperature:g} before the softmax: the distribution gets sharper"
        elif temperature > 1:
            temp = f"divides the logits by {temperature:g} before the softmax: the distribution gets flatter"
        else:
            temp = "is 1: the model's probabilities are used as they are"
        cuts = []
        if top_k:
            cuts.append(f"<b>top-k {top_k}</b> keeps only the {top_k} most likely tokens")
        if top_p < 1:
            cuts.append(f"<b>top-p {top_p:g}</b> keeps the smallest set of most likely tokens whose probability "
                        f"(after temperature) adds up to {top_p:.0%}")
        cut_text = "; ".join(cuts) if cuts else "no top-k or top-p cut: every token stays in the running"
        if top_k and top_p < 1:
            cut_text += (". Here top-k was the tighter cut" if step.n_kept >= top_k
                         else ". Here top-p was the tighter cut")
        body = (f"<li><b>Temperature</b> {temp}.</li><li>{cut_text[0].upper() + cut_text[1:]}.</li>"
                f"<li>Kept: {step.n_kept} token{'s' if step.n_kept != 1 else ''}, holding {step.kept_mass:.1%} "
                f"of the model's probability; their probabilities are rescaled to add up to 1 and one is drawn "
                "at random.</li>"
                + (f"<li>Drawn: {taken}. {chosen}: {step.prob:.1%} under the model, {step.sampled_prob:.1%} in "
                   "the distribution the sampler drew from.</li>" if forced else
                   f"<li>Drawn: {chosen}: {step.prob:.1%} under the model, {step.sampled_prob:.1%} in the "
                   "distribution it was drawn from.</li>"))
    return (f'<div class="sampler-summary" style="font-size:16px;line-height:1.5">{forced}<p>{spread}</p>'
            f'<ul style="margin:0;padding-left:1.2em">{body}</ul></div>')
