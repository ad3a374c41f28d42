"""The Probe tab's figures: next-token distributions side by side (before/after an ablation, prompt A/B, a patched
run), the activation-patching heatmap, the logit lens of two prompts compared, an attention difference, and the
tokens of two prompts. Pure: traces' numbers in, plotly figures and HTML out."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
import torch

from model.tokenizer import Tokenizer

from ..probing import Ablation, PatchingMap
from . import style
from .text import token_text

ROWS = 10  # tokens a distributions figure shows
SERIES_COLOURS = (style.PROMPT, style.GENERATED, style.KEPT)


def _label(tokenizer: Tokenizer, token_id: int, max_len: int = 12) -> str:
    return style.token_label(token_text(tokenizer, int(token_id)), max_len=max_len)


def distributions_figure(series: Sequence[tuple[str, torch.Tensor]], tokenizer: Tokenizer, title: str,
                         subtitle: str = "", k: int = ROWS, height: int = style.VIEW_HEIGHT) -> go.Figure:
    """Bars side by side for each distribution (name, log p [vocab]): the tokens most likely under any of them, the
    first one's top token first, each row a token (its rank in each distribution in the hover)."""
    probs = [lp.exp() for _, lp in series]
    ids: list[int] = []
    for p in probs:
        for i in torch.topk(p, k).indices.tolist():
            if i not in ids:
                ids.append(i)
    ids.sort(key=lambda i: -max(float(p[i]) for p in probs))
    ids = ids[:k]
    labels = [_label(tokenizer, i) for i in ids]
    fig = go.Figure()
    for (name, _), p, colour in zip(series, probs, SERIES_COLOURS):
        values = [float(p[i]) for i in ids]
        ranks = [int((p > p[i]).sum()) + 1 for i in ids]
        fig.add_trace(go.Bar(x=values, y=list(range(len(ids))), orientation="h", name=style.escape(name),
                             marker_color=colour, customdata=[[lab, r] for lab, r in zip(labels, ranks)],
                             hovertemplate=f"{style.escape(name)}<br>%{{customdata[0]}}: p = %{{x:.4f}}, rank "
                                           "%{customdata[1]}<extra></extra>"))
    top = max(max(float(p[i]) for p in probs) for i in ids)
    fig.update_yaxes(tickvals=list(range(len(ids))), ticktext=labels, autorange="reversed", showgrid=False)
    fig.update_xaxes(title_text="probability", range=[0, min(1.0, top * 1.2 + 1e-3)], tickformat=".0%")
    if subtitle:
        title += f"<br><sup>{subtitle}</sup>"
    style.layout(fig, title, height=height, barmode="group", bargap=0.25,
                 legend=dict(x=0.99, xanchor="right", y=0.02, yanchor="bottom", bgcolor="rgba(255,255,255,0.85)"))
    fig.update_layout(margin=dict(l=110, r=20, t=75 if subtitle else 50, b=50))
    return fig


def ablation_figure(result: Ablation, tokenizer: Tokenizer, description: str) -> go.Figure:
    return distributions_figure([("before", result.before), ("after", result.after)], tokenizer,
                                f"Next token after position {result.position}: before and after",
                                style.escape(description) + (f" · KL = {result.kl:.4f} nats" if result.interventions
                                                             else ""))


def ablation_summary_html(result: Ablation, tokenizer: Tokenizer, description: str) -> str:
    """KL divergence and what became of the original top token, in two sentences."""
    if not result.interventions:
        return "<p>Nothing is ablated yet: pick a head, an expert or a layer's attention or MLP and press Add, or click it in the grid.</p>"
    top = style.escape(token_text(tokenizer, result.top_id))
    before = float(result.before[result.top_id].exp())
    return (f"<p><b>{style.escape(description[:1].upper() + description[1:])}</b>.</p>"
            f"<p><b>KL(before ‖ after)</b> = {result.kl:.4f} nats.</p>"
            f"<p>The original top token <code>{top}</code> had p = {before:.1%}; after: p = "
            f"{result.top_prob_after:.1%}, rank {result.top_rank_after}.</p>")


def tokens_html(tokenizer: Tokenizer, ids: Sequence[int], other: Sequence[int], name: str) -> str:
    """A prompt's tokens as chips; with a prompt of the same length, the positions where they differ are marked."""
    same_length = len(ids) == len(other)
    chips = []
    for position, token_id in enumerate(ids):
        differs = same_length and other[position] != token_id
        text = style.escape(token_text(tokenizer, token_id)).replace(" ", "·")
        chips.append(f'<span class="probe-tok{" differs" if differs else ""}" title="position {position}">'
                     f'{text}</span>')
    return (f'<div class="probe-tokens"><b>{style.escape(name)}</b> · {len(ids)} tokens<br>'
            + "".join(chips) + "</div>")


def patching_figure(result: PatchingMap, tokenizer: Tokenizer, selected: tuple[int, int] | None = None,
                    height: int = style.VIEW_HEIGHT) -> go.Figure:
    """Layers (rows, the first at the bottom) x positions: how much patching A's residual stream leaving that block
    at that position into B's run restores p(target) at B's last position. Cells not yet computed are blank; a
    click on a cell (assets/probe.js) shows that patched run."""
    z = result.restored().numpy().astype(np.float32)
    n_layers, n = z.shape
    labels = []
    for a, b in zip(result.ids_a, result.ids_b):
        label = _label(tokenizer, b, 9)
        labels.append(label if a == b else f"{label} ({_label(tokenizer, a, 7)})")
    patched = result.patched.numpy()
    custom = [[[layer, t, labels[t], "…" if np.isnan(patched[layer, t]) else f"{patched[layer, t]:.4f}"]
               for t in range(n)] for layer in range(n_layers)]
    if result.normalised:
        what = "restored"
        explain = "restored = (p − p_B) / (p_A − p_B)"
        zmin, zmax = min(-0.2, float(np.nanmin(z)) if result.done else 0.0), 1.0
    else:
        what = "p(target)"
        explain = "p itself (A and B give the target about the same p)"
        zmin, zmax = 0.0, 1.0
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(n)), y=list(range(n_layers)), zmin=zmin, zmax=zmax, zmid=0 if zmin < 0 else None,
        colorscale=[[0, "#B2182B"], [max(0.0, -zmin / (zmax - zmin)), "#FFFFFF"], [1, "#08519C"]]
        if zmin < 0 else style.SEQUENTIAL, customdata=custom, meta="patch-cell", xgap=1, ygap=1, hoverongaps=False,
        colorbar=dict(title=dict(text=what, side="right"), thickness=10),
        hovertemplate="A's block %{customdata[0]} output at position %{customdata[1]} (%{customdata[2]})<br>"
                      f"{what} %{{z:.3f}}, p_patched = %{{customdata[3]}}<extra></extra>"))
    fig.update_xaxes(tickvals=list(range(n)), ticktext=labels, tickangle=-45, showgrid=False, title_text=None)
    ticks = list(range(0, n_layers, max(1, n_layers // 10)))
    fig.update_yaxes(tickvals=ticks, ticktext=[f"L{t}" for t in ticks], showgrid=False,
                     title_text="block patched")
    if selected is not None:
        layer, t = selected
        fig.add_shape(type="rect", x0=t - 0.5, x1=t + 0.5, y0=layer - 0.5, y1=layer + 0.5,
                      line=dict(color=style.SELECTED, width=3))
    target = style.escape(token_text(tokenizer, result.target))
    progress = "" if result.done == result.total else f" · computing: {result.done} of {result.total} runs"
    title = (f"Patching A into B: where does p(<b>{target}</b>) come back?<br><sup>{explain}; p_A = "
             f"{result.p_a:.3f}, p_B = {result.p_b:.3f}{progress}</sup>")
    style.layout(fig, title, height=height)
    fig.update_layout(margin=dict(l=70, r=10, t=75, b=90))
    return fig


def lens_comparison_figure(lens_a: torch.Tensor, lens_b: torch.Tensor, token_ids: Sequence[int],
                           tokenizer: Tokenizer, height: int = 330) -> go.Figure:
    """The logit lens at each prompt's last position, for A's and B's top next tokens: lens_a, lens_b [L+1, k] the
    probability of each token after the embedding and every block; the gap between a token's two lines is the
    difference the prompts make, layer by layer."""
    x = list(range(lens_a.shape[0]))
    fig = go.Figure()
    for j, token_id in enumerate(token_ids):
        label = _label(tokenizer, token_id)
        colour = SERIES_COLOURS[j % len(SERIES_COLOURS)]
        for lens, name, dash in ((lens_a, "A", "solid"), (lens_b, "B", "dot")):
            fig.add_trace(go.Scatter(x=x, y=lens[:, j].tolist(), mode="lines", name=f"p({label}) in {name}",
                                     line=dict(color=colour, dash=dash, width=2.5),
                                     hovertemplate=f"after %{{x}} blocks: p({label}) in {name} = %{{y:.4f}}"
                                                   "<extra></extra>"))
    fig.update_xaxes(title_text="blocks read (0 = the embedding)")
    fig.update_yaxes(title_text="logit-lens p", rangemode="tozero")
    style.layout(fig, "Logit lens at the last position: A (solid) and B (dotted)", height=height,
                 legend=dict(x=0.01, y=0.99, bgcolor="rgba(255,255,255,0.85)"))
    return fig


def attention_difference_figure(diff: torch.Tensor, ids_a: Sequence[int], ids_b: Sequence[int],
                                tokenizer: Tokenizer, layer: int, head: int, height: int = style.VIEW_HEIGHT
                                ) -> go.Figure:
    """One head's attention in A minus in B [T, T] (equal lengths): blue where A attends more, red where B does."""
    n = diff.shape[0]
    z = diff.float().numpy().copy()
    z[np.triu_indices(n, 1)] = np.nan
    labels = [_label(tokenizer, b, 9) if a == b else f"{_label(tokenizer, a, 7)}/{_label(tokenizer, b, 7)}"
              for a, b in zip(ids_a, ids_b)]
    bound = max(1e-3, float(np.nanmax(np.abs(z))))
    fig = go.Figure(go.Heatmap(z=z, x=list(range(n)), y=list(range(n)), zmin=-bound, zmax=bound, zmid=0,
                               colorscale=style.DIVERGING, reversescale=False, hoverongaps=False,
                               colorbar=dict(title=dict(text="A − B", side="right"), thickness=10),
                               hovertemplate="query %{y} → key %{x}: A − B = %{z:.4f}<extra></extra>"))
    axis = dict(tickvals=list(range(n)), ticktext=labels, showgrid=False, zeroline=False)
    fig.update_xaxes(tickangle=-45, **axis)
    fig.update_yaxes(autorange="reversed", title_text="query (row) · key (column)", **axis)
    style.layout(fig, f"Attention of layer {layer}, head {head}: A minus B", height=height)
    fig.update_layout(margin=dict(l=90, r=10, t=50, b=90))
    return fig


def picker_figure(rows: Sequence[int], columns: Sequence[str], chosen: set[tuple[int, int]], title: str,
                  what: str, values: np.ndarray | None = None, value_name: str = "",
                  height: int = style.VIEW_HEIGHT) -> go.Figure:
    """A layers (rows, the first at the bottom) x columns (heads, experts, or attention / MLP) grid to pick what to
    ablate with a click (assets/probe.js): the chosen cells are crossed out in red. values, when given ([rows,
    columns], NaN where there is nothing), colour the cells (the experts' router weights at the selected token);
    without them every cell is a plain tile. `what` names the cells' kind in the click ("head", "expert", "part")."""
    z = values if values is not None else np.zeros((len(rows), len(columns)), dtype=np.float32)
    shown = np.nan_to_num(z, nan=0.0)
    custom = [[[layer, c, f"{value_name} {v:.3f}" if values is not None and v == v else ""]
               for c, v in enumerate(row)] for layer, row in zip(rows, z.tolist())]
    on = "chosen: click to restore it"
    custom = [[[*cell, on if (cell[0], cell[1]) in chosen else "click to ablate it"] for cell in row]
              for row in custom]
    colours = (style.SEQUENTIAL if values is not None else [[0, "#E8EEF5"], [1, "#E8EEF5"]])
    fig = go.Figure(go.Heatmap(
        z=shown, x=list(range(len(columns))), y=list(range(len(rows))), customdata=custom, meta=f"pick-{what}",
        colorscale=colours, zmin=0, zmax=max(float(shown.max()), 1e-6) if values is not None else 1,
        showscale=values is not None, xgap=2, ygap=2,
        colorbar=dict(title=dict(text=value_name, side="right"), thickness=10),
        hovertemplate="layer %{customdata[0]}, " + f"{what} " + "%{x}: %{customdata[3]}<br>%{customdata[2]}"
                      "<extra></extra>" if what != "part" else
                      "layer %{customdata[0]}: %{customdata[3]}<extra></extra>"))
    picked = [(r, c) for r, layer in enumerate(rows) for c in range(len(columns)) if (layer, c) in chosen]
    if picked:
        fig.add_trace(go.Scatter(
            x=[c for _, c in picked], y=[r for r, _ in picked], mode="markers", meta=f"pick-{what}",
            customdata=[[rows[r], c] for r, c in picked], marker=dict(symbol="x", size=12, color=style.SELECTED,
                                                                         line=dict(width=1, color="white")),
            hovertemplate="layer %{customdata[0]}: ablated, click to restore it<extra></extra>", showlegend=False))
    ticks = style.thin_ticks(len(columns), 16)
    fig.update_xaxes(tickvals=ticks, ticktext=[columns[t] for t in ticks], showgrid=False, zeroline=False,
                     range=[-0.5, len(columns) - 0.5], title_text=what if what != "part" else None)
    ticks = style.thin_ticks(len(rows), 12)
    fig.update_yaxes(tickvals=ticks, ticktext=[f"L{rows[t]}" for t in ticks], showgrid=False, zeroline=False,
                     range=[-0.5, len(rows) - 0.5])
    style.layout(fig, title, height=height)
    fig.update_layout(margin=dict(l=50, r=10, t=70, b=50), clickmode="event")
    return fig


def ablated_banner(items: Sequence[object]) -> str:
    """Above the output strip's text when it was generated with ablations: what was ablated, and where to undo it."""
    if not items:
        return ""
    what = style.escape("; ".join(map(str, items)))
    return (f'<div class="probe-ablated">Generated with an ablation: {what}. Untick "Generate with the ablation on" '
            "in the Probe tab and generate again for the intact model.</div>")
