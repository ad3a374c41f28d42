"""The Experts tab (Mixture of Experts, DeepSeek-V3 / Kimi-K2): which routed experts the router chose for every
token and layer, with what weights, how evenly the load spreads, what the router scored, and how the always-on
shared experts compare with the routed ones. Reads Trace.experts / expert_weights and Trace.routing(layer)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.colors
import plotly.graph_objects as go
import torch

from model.tokenizer import Tokenizer
from model.trace import Routing, Trace

from . import style
from .text import token_text

SHARED = "#6F6F6F"  # the shared experts' output
ROUTED = "#B279A2"  # the routed experts' weighted sum
NOT_CHOSEN = "#C9C9C9"
WEIGHT_SCALE = [[0.0, "#C6DBEF"], [1.0, "#08306B"]]  # chosen weights: light blue, never white, so every one shows
_PALETTE = plotly.colors.qualitative.Dark24 + plotly.colors.qualitative.Light24


def _n_experts(trace: Trace) -> int:
    moe = trace.decoder.config.moe
    if moe is None:
        raise ValueError("this model has no Mixture-of-Experts layers")
    return moe.n_routed_experts


def _labels(tokenizer: Tokenizer, ids: Sequence[int], max_len: int = 12) -> list[str]:
    memo: dict[int, str] = {}
    return [memo.setdefault(i, style.token_label(token_text(tokenizer, i), max_len)) for i in ids]


def _layer_axis(fig: go.Figure, moe_layers: list[int]) -> None:
    """y is the layer number itself: MoE layers are evenly spaced (first_k_dense, then every layer_freq-th)."""
    gap = moe_layers[1] - moe_layers[0] if len(moe_layers) > 1 else 1
    shown = moe_layers[:: max(1, -(-len(moe_layers) // 24))]
    fig.update_yaxes(tickvals=shown, ticktext=[f"L{layer}" for layer in shown], title_text="MoE layer",
                     showgrid=False, zeroline=False, range=[moe_layers[0] - gap / 2, moe_layers[-1] + gap / 2])


def _token_axis(fig: go.Figure, positions: list[int], labels: list[str], max_ticks: int = 40) -> None:
    ticks = style.thin_ticks(len(positions), max_ticks)
    fig.update_xaxes(tickvals=[positions[i] for i in ticks], ticktext=[labels[i] for i in ticks], tickangle=-60,
                     title_text="token (position)", showgrid=False)


def expert_colorscale(n_experts: int) -> tuple[list | str, dict]:
    """A categorical scale for expert ids 0..E-1: one distinct colour per expert up to 48, otherwise a cyclic hue
    scale (ids are names, not magnitudes; hover and cell text give the exact id). Also the matching z range."""
    if n_experts <= len(_PALETTE):
        scale = []
        for e in range(n_experts):
            scale += [[e / n_experts, _PALETTE[e]], [(e + 1) / n_experts, _PALETTE[e]]]
        return scale, dict(zmin=-0.5, zmax=n_experts - 0.5)
    return "Phase", dict(zmin=0, zmax=n_experts)


def expert_choice_figure(trace: Trace, tokenizer: Tokenizer, selected: int | None = None, max_tokens: int = 64,
                         n_prompt: int | None = None, text_max_tokens: int = 24, max_cells: int = 6000) -> go.Figure:
    """Tokens (x) x MoE layers (y, first at the bottom): each cell coloured by the token's top-1 routed expert in
    that layer, the id written in the cell when the cells are wide enough; hover lists all k chosen experts with
    their weights. The selected token's column is outlined. A window of max_tokens tokens around the selected one
    (the last by default) is shown, fewer when layers x tokens would pass max_cells (the hover text makes each cell
    ~80 bytes of figure)."""
    n_experts = _n_experts(trace)
    moe_layers = trace.moe_layers
    n_tokens = len(trace)
    window = style.window_around(n_tokens, selected, min(max_tokens, max(32, max_cells // len(moe_layers))))
    start, stop = window.start, window.stop
    positions = list(window)
    experts = trace.experts[:, start:stop]  # [M, P, k]
    weights = trace.expert_weights[:, start:stop]
    labels = _labels(tokenizer, trace.ids[start:stop].tolist())
    top1 = experts[..., 0].numpy().astype(np.float32)
    chosen = [[", ".join(f"{e} ({w:.3f})" for e, w in zip(es, ws)) for es, ws in zip(row_e, row_w)]
              for row_e, row_w in zip(experts.tolist(), weights.tolist())]
    custom = np.empty((len(moe_layers), len(positions), 2), dtype=object)  # an object array skips plotly's slow
    custom[..., 0] = labels  # per-element validation of nested lists
    custom[..., 1] = chosen
    show_text = len(positions) <= text_max_tokens and len(moe_layers) <= 24
    scale, z_range = expert_colorscale(n_experts)
    bar_ticks = style.thin_ticks(n_experts, 6)
    fig = go.Figure(go.Heatmap(
        z=top1, x=positions, y=moe_layers, colorscale=scale, **z_range,
        customdata=custom, meta="x-position",  # clicks select the position
        text=experts[..., 0].tolist() if show_text else None, texttemplate="%{text}" if show_text else None,
        textfont=dict(size=12), xgap=1 if len(positions) <= 64 else 0, ygap=1,
        colorbar=dict(title=dict(text="top-1 expert", side="right"), thickness=10, tickvals=bar_ticks),
        hovertemplate="position %{x}: %{customdata[0]}<br>layer %{y}: experts (weight) %{customdata[1]}"
                      "<extra></extra>",
    ))
    _token_axis(fig, positions, labels, 24)
    _layer_axis(fig, moe_layers)
    n_rows = len(moe_layers)
    if selected is not None and start <= selected < stop:
        fig.add_shape(type="rect", x0=selected - 0.5, x1=selected + 0.5, y0=0, y1=1, yref="paper",
                      line=dict(color=style.SELECTED, width=3))
    if n_prompt is not None and start < n_prompt < stop:
        fig.add_shape(type="line", x0=n_prompt - 0.5, x1=n_prompt - 0.5, y0=0, y1=1, yref="paper",
                      line=dict(color=style.GENERATED, width=2, dash="dash"))
    k = experts.shape[-1]
    shown = f" · tokens {start}–{stop - 1} of 0–{n_tokens - 1}" if len(positions) < n_tokens else ""
    title = (f"Top-1 routed expert per token and layer<br><sup>the first of the {k} chosen out of {n_experts}; "
             f"hover for all {k}{shown}</sup>")
    style.layout(fig, title, height=min(style.VIEW_HEIGHT, 200 + max(26 * n_rows, 120)))
    fig.update_layout(margin=dict(l=70, r=10, t=75, b=110))
    return fig


def token_experts_figure(trace: Trace, position: int, tokenizer: Tokenizer) -> go.Figure:
    """The selected token's routing in every MoE layer: layers (y) x routed experts (x), a cell's colour is the
    weight the expert got (blank where it was not chosen), plus a column for the shared experts, always on."""
    n_experts = _n_experts(trace)
    moe = trace.decoder.config.moe
    if not 0 <= position < len(trace):
        raise IndexError(f"position {position} out of range 0..{len(trace) - 1}")
    moe_layers = trace.moe_layers
    experts = trace.experts[:, position]  # [M, k]
    weights = trace.expert_weights[:, position]
    k = experts.shape[-1]
    z = torch.full((len(moe_layers), n_experts), float("nan"))
    z.scatter_(1, experts, weights)
    rank = torch.zeros(len(moe_layers), n_experts, dtype=torch.long)
    rank.scatter_(1, experts, torch.arange(1, k + 1).expand_as(experts))
    small = n_experts <= 16 and len(moe_layers) <= 24  # cells wide enough for "0.67"
    text = [[f"{w:.2f}" if w == w else "" for w in row] for row in z.tolist()] if small else None
    fig = go.Figure(go.Heatmap(
        z=z.numpy(), x=list(range(n_experts)), y=moe_layers, colorscale=WEIGHT_SCALE,
        zmin=0, zmax=float(weights.max()) if weights.numel() else 1.0, customdata=rank.numpy(),
        text=text, texttemplate="%{text}" if small else None, textfont=dict(size=11), xgap=1, ygap=1,
        colorbar=dict(title=dict(text="weight", side="right"), thickness=12),
        hovertemplate="layer %{y}, expert %{x}: weight %{z:.4f} (choice #%{customdata} of " + str(k) + ")"
                      "<extra></extra>",
        hoverongaps=False,
    ))
    n_shared = moe.n_shared_experts
    shared_x = -2 - max(0, n_experts // 32)
    if n_shared:
        fig.add_trace(go.Heatmap(
            z=np.ones((len(moe_layers), 1), dtype=np.float32), x=[shared_x], y=moe_layers,
            colorscale=[[0, SHARED], [1, SHARED]], showscale=False, text=[["on"]] * len(moe_layers),
            texttemplate="%{text}" if small else None, textfont=dict(size=11, color="white"), ygap=1,
            hovertemplate=f"{n_shared} shared expert{'s' if n_shared > 1 else ''}: always on, output added "
                          "with weight 1<extra></extra>",
        ))
    _layer_axis(fig, moe_layers)
    ticks = style.thin_ticks(n_experts, 16)
    fig.update_xaxes(tickvals=([shared_x] if n_shared else []) + ticks, tickangle=0,
                     ticktext=(["shared"] if n_shared else []) + [str(e) for e in ticks],
                     title_text="routed expert", showgrid=False, zeroline=False)
    label = style.token_label(token_text(tokenizer, int(trace.ids[position])), 24)
    scaled = (f"weights sum to {moe.routed_scaling_factor:g} (routed_scaling_factor)" if moe.norm_topk_prob and k > 1
              else f"weights = router scores × {moe.routed_scaling_factor:g} (routed_scaling_factor)")
    if n_shared:
        scaled += f"; {n_shared} shared expert{'s' if n_shared > 1 else ''} always on"
    title = f"Experts of token {position} ({label}): {k} routed of {n_experts} per layer<br><sup>{scaled}</sup>"
    style.layout(fig, title, height=150 + min(max(26 * len(moe_layers), 120), 600))
    fig.update_layout(margin=dict(l=70, r=10, t=80, b=60))
    return fig


def expert_counts(trace: Trace, stop: int | None = None, start: int = 0) -> torch.Tensor:
    """[M, E] int64: how many of the tokens start..stop chose each routed expert, per MoE layer."""
    experts = trace.experts[:, start:stop]  # [M, T', k]
    counts = torch.zeros(experts.shape[0], _n_experts(trace), dtype=torch.long)
    return counts.scatter_add_(1, experts.reshape(experts.shape[0], -1), torch.ones_like(experts).flatten(1))


def expert_load_figure(trace: Trace, layer: int | None = None, n_prompt: int | None = None) -> go.Figure:
    """How many tokens chose each routed expert: for every MoE layer a row of a heatmap (white = the uniform load
    T*k/E, red busier, blue idler), or for one layer a bar chart with the uniform load as a line. With n_prompt the
    prompt's and the generated tokens' counts are told apart (stacked bars; in the heatmap's hover)."""
    n_experts = _n_experts(trace)
    moe_layers = trace.moe_layers
    n_tokens = len(trace)
    k = trace.experts.shape[-1]
    counts = expert_counts(trace)
    uniform = n_tokens * k / n_experts
    split = n_prompt is not None and 0 < n_prompt < n_tokens
    prompt_counts = expert_counts(trace, stop=n_prompt) if split else counts
    generated_counts = counts - prompt_counts
    subtitle = f"{n_tokens} tokens × {k} experts each; uniform load T·k/E = {uniform:.1f} per expert"
    if layer is None:
        ratio = counts.float() / uniform
        custom = np.stack([ratio.numpy(), prompt_counts.numpy(), generated_counts.numpy()], axis=-1)
        hover = "layer %{y}, expert %{x}: %{z} tokens (%{customdata[0]:.2f}× uniform)"
        if split:
            hover += "<br>prompt %{customdata[1]}, generated %{customdata[2]}"
        fig = go.Figure(go.Heatmap(
            z=counts.numpy().astype(np.float32), x=list(range(n_experts)), y=moe_layers,
            colorscale=style.DIVERGING, reversescale=True, zmid=uniform,
            customdata=custom, hovertemplate=hover + "<extra></extra>",
            colorbar=dict(title=dict(text="tokens", side="right"), thickness=12), xgap=1 if n_experts <= 64 else 0,
            ygap=1,
        ))
        _layer_axis(fig, moe_layers)
        busiest = ratio.max(dim=1).values
        title = f"Expert load in every MoE layer (busiest expert {float(busiest.max()):.1f}× uniform)"
        height = 150 + min(max(26 * len(moe_layers), 120), 600)
    else:
        if layer not in moe_layers:
            raise ValueError(f"layer {layer} is not a Mixture-of-Experts layer (those are {moe_layers})")
        row = moe_layers.index(layer)
        x = list(range(n_experts))
        fig = go.Figure()
        parts = ([("prompt", prompt_counts, style.PROMPT), ("generated", generated_counts, style.GENERATED)]
                 if split else [("all tokens", counts, style.PROMPT)])
        for name, c, colour in parts:
            fig.add_trace(go.Bar(
                x=x, y=c[row].numpy(), name=f"{name} tokens" if split else name, marker_color=colour,
                customdata=np.stack([counts[row].numpy(), counts[row].numpy() / uniform], axis=-1),
                hovertemplate=f"expert %{{x}}: %{{y}} {name} tokens<br>"
                              "total %{customdata[0]} (%{customdata[1]:.2f}× uniform)<extra></extra>",
            ))
        fig.add_hline(y=uniform, line=dict(color="#222", dash="dash", width=2),
                      annotation_text=f"uniform {uniform:.1f}", annotation_position="top right",
                      annotation_bgcolor="rgba(255,255,255,0.8)")
        fig.update_yaxes(title_text="tokens routed to the expert", rangemode="tozero")
        title = (f"Expert load in layer {layer} (busiest expert {float(counts[row].max()) / uniform:.1f}× uniform)")
        height = 400
    ticks = style.thin_ticks(n_experts, 16)
    fig.update_xaxes(tickvals=ticks, tickangle=0, title=dict(text="routed expert", standoff=4), showgrid=False,
                     zeroline=False)
    # the legend under the axis, where it covers neither the subtitle nor the bars
    style.layout(fig, f"{title}<br><sup>{subtitle}</sup>", height=height, barmode="stack",
                 legend=dict(orientation="h", y=-0.22, x=0, yanchor="top", traceorder="normal"))
    fig.update_layout(margin=dict(l=70, r=10, t=80, b=60 if layer is None else 95))
    return fig


def shared_vs_routed_figure(routing: Routing, tokenizer: Tokenizer, ids: Sequence[int], selected: int | None = None,
                            n_prompt: int | None = None) -> go.Figure:
    """Per token, the norm of the shared experts' output and of the routed experts' weighted sum in one layer:
    how much of the layer's feed-forward update each part contributes."""
    n_tokens = routing.routed_norm.shape[0]
    positions = list(range(n_tokens))
    labels = _labels(tokenizer, list(ids)[:n_tokens])
    mode = "lines+markers" if n_tokens <= 80 else "lines"
    fig = go.Figure()
    has_shared = bool(routing.shared_norm.abs().sum() > 0)
    parts = [("routed (weighted sum of the chosen k)", routing.routed_norm, ROUTED)]
    if has_shared:
        parts.insert(0, ("shared (always on)", routing.shared_norm, SHARED))
    for name, norm, colour in parts:
        fig.add_trace(go.Scatter(
            x=positions, y=norm.numpy().astype(np.float32), mode=mode, name=name, meta="x-position",
            line=dict(color=colour, width=2), marker=dict(size=6), customdata=labels,
            hovertemplate=f"position %{{x}}: %{{customdata}}<br>{name.split(' (')[0]}: ‖out‖ = %{{y:.4f}}"
                          "<extra></extra>",
        ))
    _token_axis(fig, positions, labels)
    fig.update_yaxes(title_text="norm of the output", rangemode="tozero")
    if selected is not None and 0 <= selected < n_tokens:
        fig.add_vline(x=selected, line=dict(color=style.SELECTED, width=2))
    if n_prompt is not None and 0 < n_prompt < n_tokens:
        fig.add_vline(x=n_prompt - 0.5, line=dict(color=style.GENERATED, width=2, dash="dash"))
    if has_shared:
        ratio = float(routing.routed_norm.mean() / routing.shared_norm.mean())
        subtitle = f"mean ‖routed‖ / ‖shared‖ = {ratio:.2f}"
    else:
        subtitle = "this model has no shared experts"
    # the legend on a line of its own under the subtitle, clear of both (the token labels fill the bottom)
    style.layout(fig, f"Shared vs routed experts in layer {routing.layer}<br><sup>{subtitle}</sup>", height=400,
                 legend=dict(orientation="h", y=1.0, x=0, yanchor="bottom", font=dict(size=style.FONT_SIZE - 2)))
    fig.update_layout(margin=dict(l=70, r=10, t=105, b=110))
    return fig


def router_scores_figure(routing: Routing, position: int, k: int, scoring: str = "sigmoid") -> go.Figure:
    """The router's score for every routed expert at one token in one layer (bars), the k chosen ones in red with
    diamonds on top; a dashed line at the k-th highest score shows where a pure top-k by score would cut."""
    scores = routing.scores[position]  # [E]
    n_experts = scores.shape[0]
    chosen = routing.experts[position, :k].tolist()
    weights = routing.weights[position, :k].tolist()
    is_chosen = torch.zeros(n_experts, dtype=torch.bool)
    is_chosen[chosen] = True
    x = np.arange(n_experts)
    values = scores.numpy().astype(np.float32)
    fig = go.Figure(go.Bar(
        x=x, y=values, name="not chosen", showlegend=False,
        marker_color=[style.SELECTED if c else NOT_CHOSEN for c in is_chosen.tolist()],
        hovertemplate="expert %{x}: score %{y:.4f}<extra></extra>",
    ))
    fig.add_trace(go.Scatter(
        x=chosen, y=values[chosen], mode="markers", name=f"chosen (top-{k})", showlegend=False,
        marker=dict(symbol="diamond", size=11, color=style.SELECTED, line=dict(color="white", width=1)),
        customdata=np.stack([np.arange(1, len(chosen) + 1), np.array(weights)], axis=-1),
        hovertemplate="expert %{x}: score %{y:.4f}<br>chosen #%{customdata[0]}, weight %{customdata[1]:.4f}"
                      "<extra></extra>",
    ))
    kth = float(scores.topk(min(k, n_experts)).values[-1])
    fig.add_hline(y=kth, line=dict(color="#222", dash="dash", width=1))
    outside = int((scores[chosen] < kth).sum())
    if outside:
        note = (f"{outside} chosen {'is' if outside == 1 else 'are'} not among the {k} highest scores: the balancing "
                "bias (or group limit) decided")
    else:
        note = f"the chosen experts are the {k} highest scores"
    fig.update_xaxes(tickvals=style.thin_ticks(n_experts, 16), tickangle=0, title_text="routed expert",
                     showgrid=False)
    fig.update_yaxes(title_text=f"router score ({scoring})", rangemode="tozero")
    # what the marks mean goes in the subtitle: a legend or a note on the line would sit on the bars
    title = (f"Router scores at token {position}, layer {routing.layer}<br><sup>red ◆ the {k} chosen · dashed: where "
             f"a plain top-{k} by score would cut</sup><br><sup>{note}</sup>")
    style.layout(fig, title, height=400, bargap=0.15)
    fig.update_layout(margin=dict(l=70, r=10, t=100, b=60))
    return fig
