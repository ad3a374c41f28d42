"""The Attention tab: a layers x heads overview grid, one head's full map (query row i, key column j), and the
selected token's attention tinted over the text. Takes the [heads, T, T] tensors of Trace.attention(layer)."""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import plotly.graph_objects as go
import torch

from model.tokenizer import Tokenizer
from model.trace import Trace

from . import style
from .text import token_text

SINK_NOTE = "renormalised without the first token (the attention sink)"
_TINT = (33, 113, 181)  # a dark blue of the Blues scale, so text tints match the maps


def hide_first_token(attn: torch.Tensor) -> torch.Tensor:
    """attn [..., q, k] with rows summing to 1 -> the same with key 0 zeroed and every row renormalised over the
    other keys. A row whose mass was all on key 0 (always the case for query 0) becomes all zeros, not NaN."""
    rest = attn.clone()
    rest[..., 0] = 0
    total = rest.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, rest / total.clamp_min(torch.finfo(rest.dtype).tiny), torch.zeros_like(rest))


def _pool_matrices(n_tokens: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over the queries of each block [n, T], sum over the keys of each block [T, n])."""
    edges = torch.linspace(0, n_tokens, n + 1).round().long()
    block = torch.bucketize(torch.arange(n_tokens), edges[1:], right=True)  # block index of every token
    member = torch.nn.functional.one_hot(block, n).to(torch.float32)  # [T, n]
    return (member / member.sum(dim=0, keepdim=True)).T, member


def pool_attention(attn: torch.Tensor, size: int,
                   matrices: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """attn [H, T, T] -> [H, n, n], n = min(T, size): cell (a, b) is the mean over the queries of block a of the
    attention mass they put on the keys of block b, so every row still sums to 1 and 0..1 stays the scale.
    With T <= size it is the map itself. Blocks wholly in the future (b > a) are NaN."""
    n_tokens = attn.shape[-1]
    n = min(n_tokens, size)
    mean_rows, member = matrices if matrices is not None else _pool_matrices(n_tokens, n)
    pooled = mean_rows @ attn.to(torch.float32) @ member  # [H, n, n]
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    return pooled.masked_fill(future, float("nan"))


def pool_layer(attn: torch.Tensor, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One layer's attention [H, T, T] -> its overview tiles, as shown and with the sink hidden: two float32 arrays
    [H, n, n] (see pool_attention), both from one pass over the map. Hiding the sink divides each row by
    1 - a_q0 after removing key 0, so a row's block sums are renormalised without a second T x T map."""
    n_tokens = attn.shape[-1]
    n = min(n_tokens, size)
    mean_rows, member = _pool_matrices(n_tokens, n)
    attn = attn.to(torch.float32)
    sums = attn @ member  # [H, T, n]: each query's mass on each key block
    sink = attn[..., 0]  # [H, T]
    rest = 1 - sink
    hidden = sums.clone()
    hidden[..., 0] -= sink  # key 0 is in block 0
    hidden = torch.where(rest[..., None] > 0, hidden / rest.clamp_min(torch.finfo(rest.dtype).tiny)[..., None],
                         torch.zeros_like(hidden))
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    return tuple((mean_rows @ x).masked_fill(future, float("nan")).numpy() for x in (sums, hidden))


def grid_figure(
    tiles: Sequence[np.ndarray | None],
    n_tokens: int,
    hide_sink: bool = False,
    selected_layer: int | None = None,
    selected_head: int | Literal["mean"] | None = None,
    height: int = 560,
    note: str = "",
) -> go.Figure:
    """The layers x heads overview from each layer's tiles [H, n, n] (None: not computed yet, left blank): layer 0 at
    the top, one small map per head, separated by one blank cell. The heatmap's x and y are in head and layer units
    (meta "layer-head"), so a click or a hover rounds them to the head and layer."""
    n_layers = len(tiles)
    known = next(t for t in tiles if t is not None)
    n_heads, n = known.shape[0], known.shape[-1]
    stride = n + 1
    grid = np.full((n_layers * stride - 1, n_heads * stride - 1), np.nan, dtype=np.float32)
    for layer, pooled in enumerate(tiles):
        if pooled is None:
            continue
        r = layer * stride
        for head in range(n_heads):
            grid[r : r + n, head * stride : head * stride + n] = pooled[head]
    xs = ((np.arange(grid.shape[1]) + 0.5) / stride - 0.5).astype(np.float32)
    ys = ((np.arange(grid.shape[0]) + 0.5) / stride - 0.5).astype(np.float32)
    centre = n / (2 * stride) - 0.5
    fig = go.Figure(go.Heatmap(
        z=grid, x=xs, y=ys, zmin=0, zmax=1, colorscale=style.SEQUENTIAL, hoverongaps=False, meta="layer-head",
        colorbar=dict(title=dict(text="mass", side="right"), thickness=12),
        hovertemplate="layer %{y:.0f}, head %{x:.0f} (click to open)<br>attention mass %{z:.3f}<extra></extra>",
    ))
    if selected_layer is not None and 0 <= selected_layer < n_layers:
        heads = range(n_heads) if selected_head in (None, "mean") else [int(selected_head)]
        half = n / (2 * stride) + 0.5 / stride
        fig.add_shape(type="rect", x0=min(heads) + centre - half, x1=max(heads) + centre + half,
                      y0=selected_layer + centre - half, y1=selected_layer + centre + half,
                      line=dict(color=style.SELECTED, width=3))
    label_every = max(1, -(-n_layers // 30))
    fig.update_xaxes(tickvals=[h + centre for h in range(n_heads)], ticktext=[f"head {h}" for h in range(n_heads)],
                     side="top", showgrid=False, zeroline=False)
    fig.update_yaxes(tickvals=[layer + centre for layer in range(0, n_layers, label_every)],
                     ticktext=[f"layer {layer}" for layer in range(0, n_layers, label_every)],
                     autorange="reversed", showgrid=False, zeroline=False)
    notes = [f"each map pooled to {n}×{n} blocks" if n < n_tokens else f"{n_tokens} tokens", "click a map to open it"]
    notes += [SINK_NOTE] if hide_sink else []
    notes += [note] if note else []
    style.layout(fig, "Attention of every layer and head<br><sup>" + " · ".join(notes) + "</sup>", height,
                 plot_bgcolor="#EEEEEE")
    # the title at the very top, the heads' labels below it: neither covers the other
    fig.update_layout(title=dict(y=1, yref="container", yanchor="top", pad=dict(t=8)),
                      margin=dict(l=90, r=20, t=100, b=10), uirevision="grid")
    return fig


def attention_grid_figure(
    trace: Trace,
    hide_sink: bool = False,
    selected_layer: int | None = None,
    selected_head: int | Literal["mean"] | None = None,
    tile: int = 24,
    height: int = 560,
) -> go.Figure:
    """Every layer (rows) and head (columns) of the trace as one heatmap of small maps, each pooled to tile x tile
    (see pool_attention and grid_figure). Recomputes every layer's attention once."""
    tiles = [pool_layer(trace.attention(layer), tile)[int(hide_sink)] for layer in range(trace.n_layers)]
    return grid_figure(tiles, len(trace), hide_sink, selected_layer, selected_head, height)


def _token_texts(tokenizer: Tokenizer, ids: Sequence[int]) -> list[str]:
    return [token_text(tokenizer, int(i)) for i in ids]


def attention_map_figure(
    attn_layer: torch.Tensor,
    layer: int,
    head: int | Literal["mean"],
    ids: Sequence[int],
    tokenizer: Tokenizer,
    hide_sink: bool = False,
    selected: int | None = None,
    max_tokens: int = 160,
    height: int = style.VIEW_HEIGHT,
) -> go.Figure:
    """One head's map (or the mean over heads) from attn_layer = trace.attention(layer) [H, T, T]: row i is what
    query token i attends to, column j the key token. Exact weights; a longer context shows a window of max_tokens
    tokens around the selected one (style.window_around), its rows still normalised over every key."""
    n_tokens = attn_layer.shape[-1]
    window = style.window_around(n_tokens, selected, max_tokens)
    start, end = window.start, window.stop
    rows = attn_layer[:, start:end]  # [H, w, T]: hiding the sink renormalises over all keys, so cut keys after
    z = rows.mean(dim=0) if head == "mean" else rows[int(head)]
    if hide_sink:
        z = hide_first_token(z)
    z = z[:, start:end].to(torch.float32).numpy().copy()
    z[np.triu_indices(z.shape[0], 1)] = np.nan  # a query never sees later keys: blank, not 0
    if hide_sink and start == 0:
        z[:, 0] = np.nan
    texts = _token_texts(tokenizer, ids[start:end])
    # category labels carry the position, so they are unique (repeated tokens never merge) and the hover can
    # show the token text without a per-cell customdata array
    labels = [f"{start + i} {style.token_label(t)}" for i, t in enumerate(texts)]
    fig = go.Figure(go.Heatmap(
        z=z, x=labels, y=labels, zmin=0, colorscale=style.SEQUENTIAL, hoverongaps=False,
        colorbar=dict(title=dict(text="weight", side="right"), thickness=12),
        hovertemplate="query %{y}<br>attends to key %{x}<br>weight %{z:.4f}<extra></extra>",
    ))
    ticks = style.thin_ticks(len(labels), max_ticks=16)
    axis = dict(type="category", tickmode="array", tickvals=[labels[i] for i in ticks],
                ticktext=[style.token_label(texts[i], 8) for i in ticks], showgrid=False, zeroline=False)
    fig.update_xaxes(tickangle=-60, constrain="domain", constraintoward="left", **axis)
    fig.update_yaxes(title_text="row: token i (query) · column: token j (key)", title_font_size=style.FONT_SIZE - 2,
                     autorange="reversed", scaleanchor="x", **axis)
    if selected is not None and start <= selected < end:
        row = selected - start
        fig.add_shape(type="rect", x0=-0.5, x1=row + 0.5, y0=row - 0.5, y1=row + 0.5,
                      line=dict(color=style.SELECTED, width=2))
    which = f"mean of {attn_layer.shape[0]} heads" if head == "mean" else f"head {int(head)}"
    title = f"Layer {layer}, {which}: where each token looks"
    notes = [SINK_NOTE] if hide_sink else []
    if end - start < n_tokens:
        notes.append(f"tokens {start}–{end - 1} of {n_tokens}, around the selected one")
    if notes:
        title += "<br><sup>" + " · ".join(notes) + "</sup>"
    style.layout(fig, title, height)
    # zoom survives a refresh of the same window (another head, layer or selection inside it)
    fig.update_layout(margin=dict(l=80, r=10, t=70 if notes else 45, b=10), uirevision=f"{start}-{end}")
    return fig


def _token_html(text: str) -> str:
    """A token's text as HTML: escaped, spaces as a faint · with a line-break opportunity before it (the tokens sit
    side by side without spaces, so a line may break only there, never inside a word), newlines as ↵ and a real
    line break."""
    out = []
    for ch in text:
        if ch == " ":
            out.append('<wbr><span class="ws">·</span>')
        elif ch == "\n":
            out.append('<span class="ws">↵</span><br>')
        elif ch == "\t":
            out.append('<span class="ws">→</span>')
        else:
            out.append(style.escape(ch))
    return "".join(out) or '<span class="ws">∅</span>'


def attention_text_html(attn_row: torch.Tensor, ids: Sequence[int], tokenizer: Tokenizer, query_pos: int,
                        texts: Sequence[str] | None = None, height: int = style.VIEW_HEIGHT) -> str:
    """attn_row [T] = trace.attention(layer)[head, query_pos] (or a mean over heads): every token of the context
    tinted by the weight the query token gives it (max-normalised), the query token outlined, in a box of the given
    height that scrolls. texts: the tokens' texts when the caller already has them (token_text of each id)."""
    weights = attn_row.to(torch.float32).tolist()
    top = max(weights[: query_pos + 1], default=0.0) or 1.0
    spans = []
    for pos, (token_id, text) in enumerate(zip(ids, texts if texts is not None else _token_texts(tokenizer, ids))):
        w = weights[pos] if pos < len(weights) else 0.0
        alpha = 0.9 * w / top
        css = [f"background:rgba({_TINT[0]},{_TINT[1]},{_TINT[2]},{alpha:.3f})"]
        if alpha > 0.55:
            css.append("color:#fff")
        classes = ["tok"]
        if tokenizer.is_special(int(token_id)):
            classes.append("special")
        if pos == query_pos:
            classes.append("query")
            css.append(f"outline:2px solid {style.SELECTED}")
            tip = f"position {pos}: the query token, weight to itself {w:.4f}"
        elif pos > query_pos:
            classes.append("future")
            tip = f"position {pos}: after the query, masked (weight 0)"
        else:
            tip = f"position {pos}: weight {w:.4f}"
        spans.append(f'<span class="{" ".join(classes)}" data-pos="{pos}" style="{";".join(css)}" '
                     f'title="{style.escape(tip)}">{_token_html(text)}</span>')
    return (
        "<style>"
        f".attn-text{{font-size:17px;line-height:1.9;overflow-wrap:anywhere;max-height:{height}px;overflow-y:auto}}"
        ".attn-text .tok{border-radius:3px;padding:1px 0;cursor:pointer}"
        ".attn-text .tok .ws{opacity:.45}"
        ".attn-text .special{font-family:monospace;font-size:.85em;border:1px dashed #888}"
        ".attn-text .future{opacity:.35}"
        ".attn-panel .caption{color:#555;font-size:14px;margin-bottom:4px}"
        "</style>"
        f'<div class="attn-panel"><div class="caption">Darker = more of token {query_pos}\'s attention (the darkest: '
        f'{top:.3f}); hover for the weight.</div><div class="attn-text">' + "".join(spans) + "</div></div>"
    )


def latent_figure(latent: torch.Tensor, ids: Sequence[int], tokenizer: Tokenizer, layer: int, n_heads: int,
                  d_head_k: int, d_head_v: int, d_rope: int, selected: int | None = None,
                  height: int = 300) -> go.Figure:
    """Multi-head Latent Attention: the norm of each token's compressed latent c_t (what the KV cache keeps) in
    one layer, and how many numbers per token that is against the keys and values it stands for."""
    n, rank = latent.shape
    norms = latent.float().norm(dim=-1).numpy().astype(np.float32)
    colours = [style.SELECTED if i == selected else style.PROMPT for i in range(n)]
    texts = [style.token_label(token_text(tokenizer, int(i))) for i in ids[:n]]
    fig = go.Figure(go.Bar(x=list(range(n)), y=norms, marker_color=colours, customdata=texts, meta="x-position",
                           hovertemplate="position %{x} %{customdata}<br>‖c‖ = %{y:.3f}<extra></extra>"))
    ticks = style.thin_ticks(n)
    fig.update_xaxes(tickvals=ticks, ticktext=[texts[t] for t in ticks], tickangle=-60, title_text="token")
    fig.update_yaxes(title_text="‖latent‖")
    full = n_heads * (d_head_k + d_head_v)
    title = (f"Layer {layer} latent c<sub>t</sub>: rank {rank}; the cache keeps {rank + d_rope} numbers per token "
             f"instead of {full} ({full / (rank + d_rope):.0f}× less)")
    return style.layout(fig, title, height)
