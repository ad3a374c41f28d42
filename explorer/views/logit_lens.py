"""The Logit lens tab: every layer's residual stream read out through the final norm and the unembedding, as if
the model stopped there (nostalgebraist, 2020): which token each layer would predict next, and how surely."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
import torch

from model.tokenizer import Tokenizer
from model.trace import Trace

from . import style
from .text import token_text

CHUNK_BYTES = 64 * 2**20  # logits held at once while reading out


@dataclass(frozen=True)
class LogitLens:
    n_tokens: int  # length of the traced context
    positions: list[int]  # [P] context positions read out
    input_ids: list[int]  # [P] the token at each position
    next_ids: list[int | None]  # [P] the token that actually follows (None at the last position)
    top_ids: torch.Tensor  # [L+1, P] int64: most likely next token after the embedding (row 0) and each layer
    top_probs: torch.Tensor  # [L+1, P] float32: its probability
    next_probs: torch.Tensor  # [L+1, P] float32: probability of the actual next token (NaN where none follows)


class LensCache:
    """Read-outs of one growing context, per position, reused across calls: the residual stream at position p
    depends only on tokens 0..p, so while generating, each call only reads out the new positions (and the one
    whose next token just arrived). Hand the same cache to logit_lens for one session; a new prompt resets it."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.columns: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # p -> 3 x [L+1]

    def sync(self, ids: list[int]) -> None:
        """Forget the positions whose prefix or next token differ in ids."""
        common = next((i for i, (a, b) in enumerate(zip(self.ids, ids)) if a != b), min(len(self.ids), len(ids)))
        same = common == len(self.ids) == len(ids)
        self.columns = {p: c for p, c in self.columns.items() if p + 1 < common or (same and p + 1 == common)}
        self.ids = list(ids)


def _read_out(trace: Trace, positions: list[int], next_ids: list[int | None]) -> tuple[torch.Tensor, ...]:
    """(top ids, top probs, next-token probs), each [L+1, P], a chunk of rows at a time; the reductions run where
    the model is, so only these small results come back to the CPU."""
    decoder = trace.decoder
    weight = decoder.embed.weight
    h = trace.residual[:, positions]  # [L+1, P, d]
    rows = h.reshape(-1, h.shape[-1])  # [(L+1) * P, d]
    targets = torch.tensor([n if n is not None else 0 for n in next_ids], device=weight.device).repeat(h.shape[0])
    chunk = max(1, CHUNK_BYTES // (4 * decoder.config.vocab_size))
    top_ids, top_probs, next_probs = [], [], []
    for start in range(0, rows.shape[0], chunk):
        logits = decoder.unembed(rows[start : start + chunk].to(device=weight.device, dtype=weight.dtype))
        norm = torch.logsumexp(logits, dim=-1)
        best, best_id = logits.max(dim=-1)
        target = logits.gather(1, targets[start : start + chunk, None])[:, 0]
        top_ids.append(best_id.cpu())
        top_probs.append(torch.exp(best - norm).cpu())
        next_probs.append(torch.exp(target - norm).cpu())
    shape = (h.shape[0], len(positions))
    has_next = torch.tensor([n is not None for n in next_ids])
    next_p = torch.cat(next_probs).reshape(shape).masked_fill(~has_next, float("nan"))
    return torch.cat(top_ids).reshape(shape), torch.cat(top_probs).reshape(shape), next_p


@torch.inference_mode()
def logit_lens(trace: Trace, positions: Sequence[int] | None = None, last: int = 48,
               cache: LensCache | None = None) -> LogitLens:
    """Read out the residual stream at `positions` (default: the last `last` of the context) after the embedding
    and after every layer. Only top-1 and the next token's probability are kept, so memory stays bounded
    ((L+1) x P x vocab logits would be 290 MB for 48 positions on SmolLM2). With a cache, positions already
    read out for the same prefix are not computed again."""
    n_tokens = len(trace)
    positions = list(range(max(0, n_tokens - last), n_tokens)) if positions is None else [int(p) for p in positions]
    if not positions or any(not 0 <= p < n_tokens for p in positions):
        raise IndexError(f"positions must be some of 0..{n_tokens - 1}, got {positions[:5]}")
    ids = trace.ids.tolist()
    next_ids = [ids[p + 1] if p + 1 < n_tokens else None for p in positions]
    cache = cache if cache is not None else LensCache()
    cache.sync(ids)
    todo = sorted({p for p in positions if p not in cache.columns})
    if todo:
        fresh = _read_out(trace, todo, [ids[p + 1] if p + 1 < n_tokens else None for p in todo])
        for i, p in enumerate(todo):
            cache.columns[p] = tuple(t[:, i].clone() for t in fresh)
    top_ids, top_probs, next_probs = (torch.stack([cache.columns[p][k] for p in positions], dim=1) for k in range(3))
    return LogitLens(n_tokens, positions, [ids[p] for p in positions], next_ids, top_ids, top_probs, next_probs)


WINDOW = 12  # positions shown around the selected token: each cell wide enough for a short word
ROW_HEIGHT = 22  # px per layer row: room for a word in 12 px type


def lens_window(n_tokens: int, selected: int | None, width: int = WINDOW) -> list[int]:
    """`width` consecutive positions of a context of n_tokens around the selected one (the last by default)."""
    return list(style.window_around(n_tokens, selected, width))


def layer_rows(n_rows: int, max_rows: int) -> list[int]:
    """Rows (0 = the embedding, n_rows - 1 = the output) to draw when only max_rows fit: evenly spaced, the
    embedding and the output always among them."""
    if n_rows <= max_rows:
        return list(range(n_rows))
    stride = -(-(n_rows - 1) // (max_rows - 1))
    return sorted(set(range(0, n_rows - 1, stride)) | {n_rows - 1})


def _cell_chars(n_pos: int, plot_width: int = 470) -> int:
    """Characters of a token that fit in one cell at 12 px type (about 7 px a character)."""
    return max(2, min(10, plot_width // max(n_pos, 1) // 7))


def logit_lens_figure(lens: LogitLens, tokenizer: Tokenizer, selected: int | None = None,
                      height: int = style.VIEW_HEIGHT) -> go.Figure:
    """Layers (embedding at the bottom, output at the top) x positions, coloured by the probability of each
    layer's top token, with that token written in the cell (shortened to fit). As many layers as fit `height`
    at a readable size are drawn, evenly spaced; hover gives the full token and the actual next one."""
    n_rows_all, n_pos = lens.top_probs.shape
    n_layers = n_rows_all - 1
    plot_height = height - 190  # title, subtitle and the rotated token labels take the rest
    rows = layer_rows(n_rows_all, max(2, plot_height // ROW_HEIGHT))

    def decode(token_id: int, max_len: int = 12) -> str:
        return style.token_label(token_text(tokenizer, int(token_id)), max_len=max_len)

    inputs = [decode(i) for i in lens.input_ids]
    nexts = [decode(i) if i is not None else "— (end of context)" for i in lens.next_ids]
    top_ids = lens.top_ids[rows].tolist()
    vocab = set(lens.top_ids[rows].flatten().tolist())
    full = {i: decode(i) for i in vocab}
    chars = _cell_chars(n_pos)
    short = {i: decode(i, chars) for i in vocab}
    next_p = lens.next_probs[rows].numpy()
    row_names = ["the embedding"] + [f"{n} layer{'s' if n > 1 else ''}" for n in range(1, n_layers + 1)]
    custom = [
        [[row_names[r], inputs[c], full[top_ids[k][c]] + (" ✓" if top_ids[k][c] == lens.next_ids[c] else ""),
          nexts[c], "—" if np.isnan(next_p[k, c]) else f"{next_p[k, c]:.4f}"] for c in range(n_pos)]
        for k, r in enumerate(rows)
    ]
    fig = go.Figure(go.Heatmap(
        z=lens.top_probs[rows].numpy().astype(np.float32), x=lens.positions, y=list(range(len(rows))), zmin=0,
        zmax=1, colorscale=style.SEQUENTIAL, customdata=custom, meta="x-position",  # clicks select the position
        text=[[short[i] for i in row] for row in top_ids], texttemplate="%{text}", textfont=dict(size=12),
        xgap=1, ygap=1, colorbar=dict(title=dict(text="p(top)", side="right"), thickness=10),
        hovertemplate="after %{customdata[0]}, position %{x} (input %{customdata[1]})<br>"
                      "top next token %{customdata[2]}, p = %{z:.4f}<br>"
                      "actual next %{customdata[3]}, p = %{customdata[4]}<extra></extra>",
    ))
    fig.update_xaxes(tickvals=lens.positions, ticktext=[decode(i, 8) for i in lens.input_ids], tickangle=-45,
                     title_text=None, showgrid=False)
    labels = ["embed"] + [f"L{layer}" for layer in range(1, n_layers + 1)]
    labels[-1] += " (out)"
    fig.update_yaxes(tickvals=list(range(len(rows))), ticktext=[labels[r] for r in rows], title_text=None,
                     showgrid=False)
    if selected is not None and selected in lens.positions:
        fig.add_shape(type="rect", x0=selected - 0.5, x1=selected + 0.5, y0=-0.5, y1=len(rows) - 0.5,
                      line=dict(color=style.SELECTED, width=3))
    shown = (f"positions {lens.positions[0]}–{lens.positions[-1]} of 0–{lens.n_tokens - 1}"
             if lens.positions == list(range(lens.positions[0], lens.positions[-1] + 1))
             else f"{n_pos} of {lens.n_tokens} positions")
    layers = "every layer" if len(rows) == n_rows_all else f"{len(rows)} of {n_rows_all} layers"
    title = f"Logit lens: what each layer would predict next<br><sup>{shown} · {layers}</sup>"
    style.layout(fig, title, height=height)
    fig.update_layout(margin=dict(l=95, r=10, t=75, b=95))
    return fig
