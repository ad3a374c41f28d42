"""The Embeddings tab: input embeddings e_i = E[x_i] (rows of the embedding matrix) projected with PCA among a
sample of the vocabulary, a token's nearest neighbours by cosine similarity, and one token's hidden state
travelling through the layers."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
import torch

from model.tokenizer import Tokenizer
from model.trace import Trace

from ..analysis import nearest_tokens, pca, vocabulary_sample
from . import style
from .text import token_text

BACKGROUND_SIZE = 2000  # vocabulary rows drawn behind the context: enough to see the cloud, small to send
MAX_LABELS = 8  # context tokens labelled with their text besides the selected one; the rest only on hover
MAX_FIT_POSITIONS = 128  # positions whose hidden states (all layers) fit the trajectory PCA
OTHER_TRAJECTORIES = 5
# a label's box as a share of the axis ranges, for a ~600 x 300 px plot at 13 px type: one character's width, a
# line's height
_CHAR_WIDTH, _LINE_HEIGHT = 0.014, 0.07


def _vocab_rows(E: torch.Tensor, tokenizer: Tokenizer) -> int:
    """Rows of E that stand for tokens: padded rows past the tokenizer's vocabulary are left out."""
    return min(E.shape[0], tokenizer.vocab_size)


def _rows(E: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    index = torch.as_tensor(list(ids), dtype=torch.long, device=E.device)
    return E[index].detach().float().cpu()


def _axis_titles(ratios: torch.Tensor) -> list[str]:
    return [f"PC{i + 1} ({r:.1%} var)" for i, r in enumerate(ratios.tolist())]


def _positions_text(positions: list[int]) -> str:
    shown = ", ".join(str(p) for p in positions[:12])
    return shown + (f", … ({len(positions)} times)" if len(positions) > 12 else "")


def _scatter(dims: int, xyz: np.ndarray, **kwargs) -> go.Scatter | go.Scatter3d:
    # SVG in 2-D, not WebGL: a WebGL trace is drawn on a canvas above every SVG trace, so the vocabulary cloud
    # would cover the context's points and labels whatever the trace order
    if dims == 3:
        return go.Scatter3d(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], **kwargs)
    return go.Scatter(x=xyz[:, 0], y=xyz[:, 1], **kwargs)


def _label_font(dims: int, size: int, colour: str | None = None) -> dict:
    # a white halo keeps labels readable over the grey cloud; 3-D text has no shadow property
    return dict(size=size, color=colour) if dims == 3 else dict(size=size, color=colour, shadow="0px 0px 3px white")


def spaced_labels(xy: np.ndarray, texts: Sequence[str], order: Sequence[int], limit: int,
                  spans: tuple[float, float] | None = None) -> list[int]:
    """Indices of points to label, taken in `order` (most wanted first), skipping any whose label box (centred
    above its point, sized from its text) would overlap one already taken; at most `limit`. spans: the axis
    ranges the boxes are measured against (default: those of xy)."""
    if spans is None:
        spans = tuple(float(np.ptp(xy[:, d])) or 1.0 for d in range(2))
    taken: list[tuple[float, float, float, float]] = []
    chosen: list[int] = []
    for i in order:
        if len(chosen) == limit:
            break
        half = max(len(texts[i]), 1) * _CHAR_WIDTH * spans[0] / 2
        x, y = float(xy[i, 0]), float(xy[i, 1]) + _LINE_HEIGHT * spans[1] / 2
        box = (x - half, x + half, y - _LINE_HEIGHT * spans[1] / 2, y + _LINE_HEIGHT * spans[1] / 2)
        if all(box[1] < t[0] or t[1] < box[0] or box[3] < t[2] or t[3] < box[2] for t in taken):
            taken.append(box)
            chosen.append(i)
    return chosen


def _finish(fig: go.Figure, dims: int, titles: list[str], title: str, height: int) -> go.Figure:
    """The house layout with the legend under the plot, where it covers neither the title nor the points."""
    fig = style.layout(fig, title, height, uirevision="embeddings",
                       legend=dict(orientation="h", yanchor="top", y=-0.16 if dims == 2 else 0.0, x=0.0,
                                   font=dict(size=style.FONT_SIZE - 2)))
    if dims == 3:
        fig.update_layout(scene=dict(xaxis_title=titles[0], yaxis_title=titles[1], zaxis_title=titles[2]),
                          scene_camera=dict(eye=dict(x=1.5, y=1.5, z=0.9)),
                          margin=dict(l=0, r=0, b=40, t=75))
    else:
        fig.update_xaxes(title=dict(text=titles[0], standoff=4), zeroline=False)
        fig.update_yaxes(title=titles[1], zeroline=False)
        fig.update_layout(margin=dict(t=75, b=95))
    return fig


def embedding_projection_figure(
    E: torch.Tensor,
    context_ids: Sequence[int],
    tokenizer: Tokenizer,
    n_prompt: int,
    dims: int = 2,
    selected: int | None = None,
    background_ids: Sequence[int] | None = None,
    height: int = style.VIEW_HEIGHT,
    thin: int = 1,
) -> go.Figure:
    """The context's input embeddings e_i = E[x_i] (E [V, d]) drawn over a grey sample of the vocabulary,
    projected on the first 2 or 3 principal components of those rows. A token repeated in the context is one
    point. The selected token is a large red point with its label (and, in 2-D, a callout); a few other context
    tokens are labelled where their labels do not overlap, the rest only on hover. thin: one point of the vocabulary
    sample in `thin` is drawn (the projection is fitted on them all, so the axes stay where they are): a page that
    redraws the plot while text streams draws a lighter cloud (3,000 SVG points took the browser ~1.3 s a redraw)."""
    if dims not in (2, 3):
        raise ValueError("dims must be 2 or 3")
    context_ids = [int(i) for i in context_ids]
    positions: dict[int, list[int]] = {}
    for pos, token_id in enumerate(context_ids):
        positions.setdefault(token_id, []).append(pos)
    unique = list(positions)
    if background_ids is None:
        background_ids = vocabulary_sample(_vocab_rows(E, tokenizer), BACKGROUND_SIZE)
    background = [int(i) for i in background_ids if int(i) not in positions]
    rows = _rows(E, background + unique)  # [n, d]
    projection = pca(rows, dims)
    xyz = projection.project(rows).numpy()  # [n, dims] float32
    bg_xyz, ctx_xyz = xyz[: len(background)][::thin], xyz[len(background):]
    background = background[::thin]

    fig = go.Figure()
    fig.add_trace(_scatter(
        dims, bg_xyz, mode="markers", name=f"vocabulary sample ({len(background):,})",
        marker=dict(size=3 if dims == 3 else 4, color=style.BACKGROUND_POINTS),
        text=[style.token_label(token_text(tokenizer, i)) for i in background], customdata=background,
        hovertemplate="%{text} · id %{customdata}<extra>vocabulary</extra>",
    ))
    in_context = selected is not None and -len(context_ids) <= selected < len(context_ids)
    selected_pos = selected % len(context_ids) if in_context else None
    selected_id = context_ids[selected_pos] if in_context else None
    labels = {i: style.token_label(token_text(tokenizer, i)) for i in unique}
    hover = [f"{labels[i]} · id {i}<br>position {_positions_text(positions[i])}" for i in unique]
    # the selected token first, then the tokens nearest to it in the text
    centre = selected_pos if selected_pos is not None else len(context_ids) - 1
    order = sorted(range(len(unique)), key=lambda k: (unique[k] != selected_id,
                                                      min(abs(p - centre) for p in positions[unique[k]])))
    spans = tuple(float(np.ptp(xyz[:, d])) or 1.0 for d in range(2))
    labelled = {unique[k] for k in spaced_labels(ctx_xyz, [labels[i] for i in unique], order, MAX_LABELS + 1,
                                                 spans)} - {selected_id}
    for name, colour, in_part in (("prompt", style.PROMPT, lambda p: p < n_prompt),
                                  ("generated", style.GENERATED, lambda p: p >= n_prompt)):
        members = [k for k, i in enumerate(unique) if in_part(positions[i][0])]
        if not members:
            continue
        fig.add_trace(_scatter(
            dims, ctx_xyz[members], mode="markers+text", name=f"{name} tokens",
            customdata=[positions[unique[k]][-1] for k in members], meta="position",  # a click selects it
            marker=dict(size=6 if dims == 3 else 9, color=colour, line=dict(color="white", width=1)),
            text=[labels[unique[k]] if unique[k] in labelled else "" for k in members],
            textposition="top center", textfont=_label_font(dims, 13, colour),
            hovertext=[hover[k] for k in members], hoverinfo="text",
        ))
    if selected_id is not None:
        k = unique.index(selected_id)
        fig.add_trace(_scatter(
            dims, ctx_xyz[k: k + 1], mode="markers" if dims == 2 else "markers+text",
            name=f"selected: {labels[selected_id]}", customdata=[selected_pos], meta="position",
            marker=dict(size=12 if dims == 3 else 20, color=style.SELECTED, line=dict(color="black", width=2.5),
                        symbol="circle"),
            text=[labels[selected_id]], textposition="top center", textfont=_label_font(dims, 17, style.SELECTED),
            hovertext=[hover[k]], hoverinfo="text",
        ))
        if dims == 2:
            fig.add_annotation(x=float(ctx_xyz[k, 0]), y=float(ctx_xyz[k, 1]), text=f"<b>{labels[selected_id]}</b>",
                               showarrow=True, arrowhead=2, arrowwidth=2, arrowcolor=style.SELECTED, ax=30, ay=-34,
                               font=dict(size=style.FONT_SIZE + 2, color=style.SELECTED), bgcolor="white",
                               bordercolor=style.SELECTED, borderwidth=1.5, borderpad=2)
    title = (f"Input embeddings e<sub>i</sub> = E[x<sub>i</sub>]<br><sup>rows of E on {dims} principal components, over "
             "a grey vocabulary sample</sup>")
    return _finish(fig, dims, _axis_titles(projection.explained_variance_ratio), title, height)


def neighbours_html(E: torch.Tensor, token_id: int, tokenizer: Tokenizer, k: int = 10) -> str:
    """The k tokens whose rows of E are closest to this token's row by cosine similarity, as a table."""
    token_id = int(token_id)
    n_vocab = _vocab_rows(E, tokenizer)
    ids, sims = nearest_tokens(E[:n_vocab], E[token_id], k, exclude=[token_id])
    label = style.token_label(token_text(tokenizer, token_id), max_len=40)
    cell = "padding:2px 10px;border-bottom:1px solid #EEE"
    mono = "font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre"
    rows = "".join(
        f'<tr><td style="{cell};color:#888">{rank}</td>'
        f'<td style="{cell};{mono}">{style.token_label(token_text(tokenizer, i), max_len=40)}</td>'
        f'<td style="{cell};text-align:right;color:#666">{i}</td>'
        f'<td style="{cell};text-align:right;font-variant-numeric:tabular-nums">{sim:.3f}</td></tr>'
        for rank, (i, sim) in enumerate(zip(ids, sims), start=1))
    head = "".join(f'<th style="{cell};text-align:{a}">{h}</th>'
                   for h, a in (("#", "left"), ("token", "left"), ("id", "right"), ("cosine", "right")))
    return (f'<div style="font-family:{style.FONT};font-size:{style.FONT_SIZE}px">'
            f'<div style="margin-bottom:6px">Nearest tokens to <b style="{mono}">{label}</b> (id {token_id}): '
            f"cosine similarity between rows of the embedding matrix E</div>"
            f'<table style="border-collapse:collapse"><tr>{head}</tr>{rows}</table></div>')


def _evenly(n: int, count: int) -> list[int]:
    return sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(count)}) if n else []


@torch.inference_mode()
def trajectory_figure(trace: Trace, position: int, tokenizer: Tokenizer, dims: int = 2, height: int = 400) -> go.Figure:
    """The hidden state of the token at `position` after the embedding and after each block, projected with a
    PCA of all layers' hidden states (each divided by its RMS), with a few other positions' paths faint."""
    if dims not in (2, 3):
        raise ValueError("dims must be 2 or 3")
    n_states, T, d = trace.residual.shape
    position = position % T
    fit_positions = sorted(set(_evenly(T, MAX_FIT_POSITIONS)) | {position})
    others = [p for p in _evenly(T, OTHER_TRAJECTORIES + 1) if p != position][:OTHER_TRAJECTORIES]
    used = sorted(set(fit_positions) | set(others))
    column = {p: i for i, p in enumerate(used)}
    hidden = trace.residual[:, used].float()  # [L+1, n, d]: only the positions drawn or fitted
    norms = hidden.norm(dim=-1)  # [L+1, n]
    unit = hidden * (d ** 0.5 / norms.clamp_min(1e-12))[..., None]  # RMS 1: late layers' large norms don't dominate
    projection = pca(unit[:, [column[p] for p in fit_positions]].reshape(-1, d), dims)
    layer_names = ["embedding"] + [f"block {i}" for i in range(1, n_states)]
    short = ["emb"] + [str(i) for i in range(1, n_states)]
    shown = set(range(0, n_states, 5)) | {n_states - 1}
    ids = trace.ids.tolist()

    fig = go.Figure()
    for p in others + [position]:
        xyz = projection.project(unit[:, column[p]]).numpy()  # [L+1, dims]
        token = style.token_label(token_text(tokenizer, ids[p]))
        custom = [[layer_names[i], float(norms[i, column[p]])] for i in range(n_states)]
        main = p == position
        fig.add_trace(_scatter(
            dims, xyz, mode="lines+markers+text" if main else "lines", name=f"{p}: {token}",
            line=dict(color=style.SELECTED if main else style.BACKGROUND_POINTS, width=3 if main else 1.5),
            marker=dict(size=7 if main else 3, color=np.arange(n_states, dtype=np.float32),
                        colorscale=style.SEQUENTIAL, cmin=-n_states / 3, cmax=n_states - 1,
                        line=dict(color=style.SELECTED, width=1)) if main else None,
            text=[short[i] if i in shown else "" for i in range(n_states)] if main else None,
            textposition="top center", textfont=_label_font(dims, 13), customdata=custom, opacity=1.0 if main else 0.7,
            hovertemplate=f"position {p}: {token}<br>%{{customdata[0]}}<br>‖h‖ = %{{customdata[1]:.1f}}<extra></extra>",
        ))
    fit_note = f"{len(fit_positions)} of {T} positions" if len(fit_positions) < T else f"all {T} positions"
    title = (f"Position {position} ({style.token_label(token_text(tokenizer, ids[position]))}) through the layers"
             f"<br><sup>PCA of all layers' hidden states at {fit_note}, each scaled to RMS 1</sup>")
    return _finish(fig, dims, _axis_titles(projection.explained_variance_ratio), title, height)
