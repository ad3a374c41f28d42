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
MAX_LABELS = 40  # context tokens labelled with their text; the rest only on hover
MAX_FIT_POSITIONS = 128  # positions whose hidden states (all layers) fit the trajectory PCA
OTHER_TRAJECTORIES = 5


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


def _scatter(dims: int, xyz: np.ndarray, gl: bool = False, **kwargs) -> go.Scatter | go.Scattergl | go.Scatter3d:
    if dims == 3:
        return go.Scatter3d(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], **kwargs)
    return (go.Scattergl if gl else go.Scatter)(x=xyz[:, 0], y=xyz[:, 1], **kwargs)


def _label_font(dims: int, size: int, colour: str | None = None) -> dict:
    # a white halo keeps labels readable over the grey cloud; 3-D text has no shadow property
    return dict(size=size, color=colour) if dims == 3 else dict(size=size, color=colour, shadow="0px 0px 3px white")


def _finish(fig: go.Figure, dims: int, titles: list[str], title: str, height: int, top_margin: int = 85) -> go.Figure:
    fig = style.layout(fig, title, height, legend=dict(orientation="h", yanchor="bottom", y=1.01, x=0.0),
                       uirevision="embeddings")
    if dims == 3:
        fig.update_layout(scene=dict(xaxis_title=titles[0], yaxis_title=titles[1], zaxis_title=titles[2]),
                          scene_camera=dict(eye=dict(x=1.5, y=1.5, z=0.9)),
                          margin=dict(l=0, r=0, b=0, t=top_margin))
    else:
        fig.update_xaxes(title=titles[0], zeroline=False)
        fig.update_yaxes(title=titles[1], zeroline=False)
        fig.update_layout(margin=dict(t=top_margin))
    return fig


def embedding_projection_figure(
    E: torch.Tensor,
    context_ids: Sequence[int],
    tokenizer: Tokenizer,
    n_prompt: int,
    dims: int = 2,
    selected: int | None = None,
    background_ids: Sequence[int] | None = None,
    height: int = 560,
) -> go.Figure:
    """The context's input embeddings e_i = E[x_i] (E [V, d]) with a grey sample of the vocabulary, projected on
    the first 2 or 3 principal components of those rows. A token repeated in the context is one point."""
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
    bg_xyz, ctx_xyz = xyz[: len(background)], xyz[len(background):]

    fig = go.Figure()
    fig.add_trace(_scatter(
        dims, bg_xyz, gl=True, mode="markers", name=f"vocabulary sample ({len(background):,})",
        marker=dict(size=3 if dims == 3 else 4, color=style.BACKGROUND_POINTS),
        text=[style.token_label(token_text(tokenizer, i)) for i in background], customdata=background,
        hovertemplate="%{text} · id %{customdata}<extra>vocabulary</extra>",
    ))
    selected_id = context_ids[selected] if selected is not None and -len(context_ids) <= selected < len(context_ids) \
        else None
    labelled = {unique[i] for i in style.thin_ticks(len(unique), MAX_LABELS)} if unique else set()
    labels = {i: style.token_label(token_text(tokenizer, i)) for i in unique}
    hover = [f"{labels[i]} · id {i}<br>position {_positions_text(positions[i])}" for i in unique]
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
            dims, ctx_xyz[k: k + 1], mode="markers+text", name="selected",
            marker=dict(size=11 if dims == 3 else 17, color=style.SELECTED, line=dict(color="black", width=1.5)),
            text=[labels[selected_id]], textposition="top center",
            textfont=_label_font(dims, 16, style.SELECTED), hovertext=[hover[k]], hoverinfo="text",
        ))
    title = "Input embeddings e<sub>i</sub> = E[x<sub>i</sub>]: rows of the embedding matrix, PCA"
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
def trajectory_figure(trace: Trace, position: int, tokenizer: Tokenizer, dims: int = 2, height: int = 520) -> go.Figure:
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
    title = (f"Hidden state of position {position} ({style.token_label(token_text(tokenizer, ids[position]))}) "
             f"through the layers<br><sup>PCA of every layer's hidden states at {fit_note}, each vector divided "
             f"by its RMS first so the late layers' large norms don't dominate; hover shows the raw norm</sup>")
    return _finish(fig, dims, _axis_titles(projection.explained_variance_ratio), title, height, top_margin=105)
