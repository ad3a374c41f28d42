"""Attention tab: one head's full map beside the selected token's attention over the text, and the layers x heads
overview below (a click on it opens that layer and head). A click is answered from what the session already knows:
one layer recomputed, the overview filled a few layers per render, and only the outputs that changed sent."""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr
import numpy as np
import torch

from explorer.i18n import t
from explorer.session import Session
from explorer.ui.common import EMPTY_HINT, placeholder
from explorer.views.attention import (attention_map_figure, attention_text_html, grid_figure, hide_first_token,
                                      latent_figure, pool_layer)
from explorer.views.style import VIEW_HEIGHT
from explorer.views.text import token_text
from model import LanguageModel, Trace
from model.tokenizer import Tokenizer

GRID_TILE = 12  # blocks per side of each small map in the overview: a layer's row is about that many pixels tall
MAP_TOKENS = 160  # the full map shows at most this many tokens, a window around the selected one
# model-thread time a render may take, past which it adds no more layers to the overview: the model thread is shared
# with every session's decoding, so a long context's overview fills a layer or so per render (the page asks for
# more, assets/attention.js) and a render costs another session about one token's time
FILL_SECONDS = 0.15
TEXT_HEIGHT = VIEW_HEIGHT - 210  # the text under the controls, ending with the map beside it
KEPT_LAYERS = 1  # full [H, T, T] maps kept per session: 52 MB each at 1,200 tokens, and 30 students share a server


@dataclass
class GridFill:
    """The overview of one trace, filled layer by layer: tiles[layer] = (as shown, sink hidden) [H, n, n] or None."""

    trace: Trace
    tiles: list[tuple[np.ndarray, np.ndarray] | None]

    @property
    def n_tokens(self) -> int:
        return len(self.trace)

    @property
    def done(self) -> int:
        return sum(t is not None for t in self.tiles)

    @property
    def complete(self) -> bool:
        return self.done == len(self.tiles)

    def fill(self, deadline: float, at_least_one: bool) -> None:
        """Compute missing layers in order while the monotonic clock is before deadline."""
        for layer, tiles in enumerate(self.tiles):
            if tiles is not None:
                continue
            if time.monotonic() >= deadline and not at_least_one:
                return
            self.tiles[layer] = pool_layer(self.trace.attention(layer), GRID_TILE)
            at_least_one = False


@dataclass
class AttentionView:
    """What the tab keeps per session for the current context (Session.extras, cleared by a new generation)."""

    maps: OrderedDict = field(default_factory=OrderedDict)  # (n_tokens, layer) -> attention [H, T, T]
    texts: list[str] = field(default_factory=list)  # token_text of each id of the context
    filling: GridFill | None = None  # the overview being computed
    shown: GridFill | None = None  # the last complete overview
    sent: dict[str, Any] = field(default_factory=dict)  # output -> key of what the browser shows
    controls: tuple[int, int | str] = (0, "mean")  # the layer and head the browser's controls show
    pick: str = ""  # the last request from assets/attention.js

    def attention(self, trace: Trace, layer: int) -> torch.Tensor:
        key = (len(trace), layer)
        if key not in self.maps:
            self.maps[key] = trace.attention(layer)
            while len(self.maps) > KEPT_LAYERS:
                self.maps.popitem(last=False)
        self.maps.move_to_end(key)
        return self.maps[key]

    def token_texts(self, tokenizer: Tokenizer, ids: list[int]) -> list[str]:
        """The context only grows within a session's generation, so texts of earlier tokens are kept."""
        self.texts += [token_text(tokenizer, i) for i in ids[len(self.texts):]]
        return self.texts[: len(ids)]

    def overview(self, trace: Trace, layer: int, attn: torch.Tensor, deadline: float) -> tuple[GridFill, bool]:
        """The overview to show and whether more is coming. It grows by the selected layer's tiles (from its map,
        already computed) or else by one layer, and by more while the deadline allows; until it is complete, the
        last complete one stays on screen."""
        n = len(trace)
        if self.filling is None or (self.filling.complete and self.filling.n_tokens != n):
            self.filling = GridFill(trace, [None] * trace.n_layers)
        fill = self.filling
        grown = fill.n_tokens == n and fill.tiles[layer] is None
        if grown:
            fill.tiles[layer] = pool_layer(attn, GRID_TILE)
        fill.fill(deadline, at_least_one=not grown)
        if fill.complete:
            self.shown = fill
        shown = self.shown if self.shown is not None else fill
        return shown, not (fill.complete and fill.n_tokens == n)

    def send(self, output: str, key: Any, make: Callable[[], Any]) -> Any:
        """make() when what the output shows would change, else gr.skip(): the browser keeps what it has."""
        if self.sent.get(output) == key:
            return gr.skip()
        self.sent[output] = key
        return make()


class AttentionTab:
    title = "Attention"

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        cfg = lm.config
        # the map at the top of the tab and the controls beside it, above the text: both fit one 1280x720 screen
        with gr.Row(equal_height=False):
            with gr.Column(scale=6, min_width=360):
                self.map = gr.Plot(placeholder(EMPTY_HINT, VIEW_HEIGHT), elem_id="attn-map", show_label=False)
            with gr.Column(scale=4, min_width=300):
                self.layer = gr.Slider(0, cfg.n_layers - 1, value=0, step=1, label=t("common.layer"),
                                       elem_id="attn-layer")
                with gr.Row():
                    self.heads = [(t("attention.mean"), "mean")] + [(str(h), str(h)) for h in range(cfg.n_heads)]
                    self.head = gr.Dropdown(self.heads, value="mean", label=t("attention.head"),
                                            elem_id="attn-head", min_width=120)
                    self.hide_sink = gr.Checkbox(label=t("attention.hide_sink"), value=False,
                                                 elem_id="attn-hide-sink", min_width=120)
                self.text = gr.HTML(elem_id="attn-text")
        # Multi-head Latent Attention: the compressed latent the cache keeps
        self.latent = gr.Plot(placeholder(EMPTY_HINT), elem_id="attn-latent", show_label=False,
                              visible=cfg.mla is not None)
        self.grid = gr.Plot(placeholder(EMPTY_HINT), elem_id="attn-grid", show_label=False)
        gr.Markdown(t("attention.explain"))
        if cfg.mla is not None:
            gr.Markdown(t("attention.explain_mla"))
        # written by assets/attention.js: "open:<layer>:<head>:<nonce>" (a click on the overview) or "more:<nonce>"
        # (the overview is still filling); its input event renders like any control's
        self.pick = gr.Textbox(visible="hidden", elem_id="attn-pick", show_label=False)
        self.outputs = [self.map, self.grid, self.text, self.latent, self.layer, self.head]
        self.controls = [self.layer, self.head, self.hide_sink, self.pick]

    @staticmethod
    def view(s: Session) -> AttentionView:
        return s.extras.setdefault("attention", AttentionView())

    def set_controls(self, s: Session, layer: float, head: str, hide_sink: bool, pick: str = "") -> None:
        view = self.view(s)
        view.controls = (int(layer), head if head == "mean" else int(head))
        s.layer, s.head = view.controls
        s.hide_sink = bool(hide_sink)
        if pick and pick != view.pick:
            view.pick = pick
            self.apply_pick(s, pick)

    def apply_pick(self, s: Session, pick: str) -> None:
        """A click on the overview opens that layer and head (render then moves the controls)."""
        parts = pick.split(":")
        if parts[0] != "open" or len(parts) < 3:
            return
        try:
            layer, head = int(parts[1]), int(parts[2])
        except ValueError:
            return
        if 0 <= layer < self.lm.config.n_layers and 0 <= head < self.lm.config.n_heads:
            s.layer, s.head = layer, head

    def render(self, s: Session) -> list[Any]:
        deadline = time.monotonic() + FILL_SECONDS
        trace = s.trace(self.lm)
        view = self.view(s)
        if trace is None:
            empty = lambda: placeholder(EMPTY_HINT)  # noqa: E731
            return [view.send("map", None, empty), view.send("grid", None, empty), view.send("text", None, str),
                    view.send("latent", None, empty), gr.skip(), gr.skip()]
        n, tok = len(trace), self.lm.tokenizer
        ids = trace.ids.tolist()
        position = s.position(trace)
        texts = view.token_texts(tok, ids)
        attn = view.attention(trace, s.layer)  # [H, T, T]
        selection = (n, s.layer, s.head, s.hide_sink, position, s.presentation)  # presentation: the type size
        grid, pending = view.overview(trace, s.layer, attn, deadline)
        # the overview's outline of the selected layer and head moves in the page (assets/attention.js)
        grid_key = (grid.n_tokens, grid.done, pending, s.hide_sink, s.presentation)
        return [
            view.send("map", selection, lambda: attention_map_figure(attn, s.layer, s.head, ids, tok, s.hide_sink,
                                                                     position, max_tokens=MAP_TOKENS)),
            view.send("grid", grid_key, lambda: self.grid_view(grid, pending, n, s)),
            view.send("text", selection, lambda: attention_text_html(self.text_row(attn, s, position), ids, tok,
                                                                     position, texts, TEXT_HEIGHT)),
            self.latent_view(trace, s, view, ids, position),
            *self.control_updates(s, view),
        ]

    @staticmethod
    def text_row(attn: torch.Tensor, s: Session, position: int) -> torch.Tensor:
        """The selected token's attention over the context [T]: the head's row or the mean of the heads' rows."""
        rows = attn[:, position]  # [H, T]
        if s.hide_sink:
            rows = hide_first_token(rows)
        return rows.mean(0) if s.head == "mean" else rows[int(s.head)]

    @staticmethod
    def grid_view(grid: GridFill, pending: bool, n_tokens: int, s: Session) -> Any:
        tiles = [None if t is None else t[int(s.hide_sink)] for t in grid.tiles]
        if grid.n_tokens != n_tokens:
            note = f"at {grid.n_tokens} tokens, updating…"
        elif pending:
            note = f"computing: {grid.done} of {len(tiles)} layers"
        else:
            note = ""
        fig = grid_figure(tiles, grid.n_tokens, s.hide_sink, s.layer, s.head, note=note)
        # for assets/attention.js: ask for more while pending; the tiles' size and the heads, to move the outline
        tile = next(t for t in tiles if t is not None)
        fig.update_layout(meta=dict(pending=pending, tile=tile.shape[-1], heads=tile.shape[0]))
        return fig

    def latent_view(self, trace: Trace, s: Session, view: AttentionView, ids: list[int], position: int) -> Any:
        mla = self.lm.config.mla
        if mla is None:
            return gr.skip()
        return view.send("latent", (len(trace), s.layer, position, s.presentation), lambda: latent_figure(
            trace.latent(s.layer), ids, self.lm.tokenizer, s.layer, self.lm.config.n_heads, mla.qk_head_dim,
            mla.v_head_dim, mla.qk_rope_dim, position))

    def control_updates(self, s: Session, view: AttentionView) -> list[Any]:
        """The layer slider and head menu follow a layer and head opened from the overview."""
        if view.controls == (s.layer, s.head):
            return [gr.skip(), gr.skip()]
        view.controls = (s.layer, s.head)
        return [gr.Slider(value=s.layer), gr.Dropdown(value=str(s.head))]
