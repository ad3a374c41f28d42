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


def logit_lens_figure(lens: LogitLens, tokenizer: Tokenizer, selected: int | None = None,
                      text_max_positions: int = 16) -> go.Figure:
    """Layers (embedding at the bottom, output at the top) x positions, coloured by the probability of each
    layer's top token; the top token written in the cells when few enough positions are shown."""
    n_rows, n_pos = lens.top_probs.shape
    n_layers = n_rows - 1

    def decode(token_id: int) -> str:
        return style.token_label(token_text(tokenizer, int(token_id)))

    inputs = [decode(i) for i in lens.input_ids]
    nexts = [decode(i) if i is not None else "— (end of context)" for i in lens.next_ids]
    top_ids = lens.top_ids.tolist()
    vocab_labels = {i: decode(i) for i in set(lens.top_ids.flatten().tolist())}
    short = {i: style.token_label(token_text(tokenizer, i), max_len=6) for i in vocab_labels}
    top_text = [[vocab_labels[i] for i in row] for row in top_ids]
    next_p = lens.next_probs.numpy()
    row_names = ["the embedding"] + [f"{n} layer{'s' if n > 1 else ''}" for n in range(1, n_layers + 1)]
    custom = [
        [[row_names[r], inputs[c], top_text[r][c] + (" ✓" if top_ids[r][c] == lens.next_ids[c] else ""), nexts[c],
          "—" if np.isnan(next_p[r, c]) else f"{next_p[r, c]:.4f}"] for c in range(n_pos)]
        for r in range(n_rows)
    ]
    show_text = n_pos <= text_max_positions
    fig = go.Figure(go.Heatmap(
        z=lens.top_probs.numpy().astype(np.float32), x=lens.positions, y=list(range(n_rows)), zmin=0, zmax=1,
        colorscale=style.SEQUENTIAL, customdata=custom, meta="x-position",  # clicks select the position
        text=[[short[i] for i in row] for row in top_ids] if show_text else None,
        texttemplate="%{text}" if show_text else None, textfont=dict(size=11),
        colorbar=dict(title=dict(text="p(top)", side="right"), thickness=12),
        hovertemplate="after %{customdata[0]}, position %{x} (input %{customdata[1]})<br>"
                      "top next token %{customdata[2]}, p = %{z:.4f}<br>"
                      "actual next %{customdata[3]}, p = %{customdata[4]}<extra></extra>",
    ))
    ticks = style.thin_ticks(n_pos, max_ticks=24 if show_text else 40)
    fig.update_xaxes(tickvals=[lens.positions[i] for i in ticks], ticktext=[inputs[i] for i in ticks],
                     tickangle=-60, title_text="input token (each cell predicts the token after it)", showgrid=False)
    every = max(1, -(-n_rows // 32))
    labels = ["embed"] + [f"L{layer}" for layer in range(1, n_layers + 1)]
    labels[-1] += " (output)"
    y_ticks = sorted(set(range(0, n_rows, every)) | {n_layers})
    fig.update_yaxes(tickvals=y_ticks, ticktext=[labels[i] for i in y_ticks], title_text="layers applied",
                     showgrid=False)
    if selected is not None and selected in lens.positions:
        fig.add_shape(type="rect", x0=selected - 0.5, x1=selected + 0.5, y0=-0.5, y1=n_layers + 0.5,
                      line=dict(color=style.SELECTED, width=3))
    title = "Logit lens: what each layer would predict next"
    contiguous_tail = lens.positions == list(range(lens.n_tokens - n_pos, lens.n_tokens))
    if n_pos < lens.n_tokens:
        shown = f"last {n_pos} of {lens.n_tokens} positions" if contiguous_tail else \
            f"{n_pos} of {lens.n_tokens} positions"
        title += f"<br><sup>{shown}</sup>"
    style.layout(fig, title, height=max(420, 22 * n_rows + 190))
    fig.update_layout(margin=dict(l=110, r=20, t=80 if n_pos < lens.n_tokens else 55, b=120))
    return fig
