"""Attention tab: the layers x heads overview, one head's full map, and the selected token's attention over the text."""
from __future__ import annotations

from typing import Any

import gradio as gr

from explorer.session import Session
from explorer.ui.common import EMPTY_HINT, placeholder
from explorer.views.attention import (attention_grid_figure, attention_map_figure, attention_text_html,
                                     hide_first_token, latent_figure)
from model import LanguageModel

EXPLAIN_MLA = ("**Multi-head Latent Attention** (DeepSeek-V3, Kimi-K2): each token's keys and values for all heads "
               "are expanded from one small latent vector c_t; only c_t and a shared rotary key part are cached.")
EXPLAIN = ("Each head computes, for every token i, weights over the tokens j ≤ i (softmax of q_i·k_j / √d_head) "
           "and mixes their values. Row i of a map is token i's attention; rows sum to 1 and the future is masked. "
           "Many heads park attention on the first token (an **attention sink**): hide it to see the rest.")


class AttentionTab:
    title = "Attention"

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        cfg = lm.config
        with gr.Row():
            with gr.Column(scale=7):
                with gr.Row():
                    self.layer = gr.Slider(0, cfg.n_layers - 1, value=0, step=1, label="Layer", elem_id="attn-layer")
                    self.head = gr.Dropdown(["mean"] + [str(h) for h in range(cfg.n_heads)], value="mean",
                                            label="Head (mean = average over heads)", elem_id="attn-head")
                    self.hide_sink = gr.Checkbox(label="Hide first token (attention sink)", value=False,
                                                 elem_id="attn-hide-sink")
                self.map = gr.Plot(placeholder(EMPTY_HINT), elem_id="attn-map", show_label=False)
                # Multi-head Latent Attention: the compressed latent the cache keeps
                self.latent = gr.Plot(placeholder(EMPTY_HINT), elem_id="attn-latent", show_label=False,
                                      visible=cfg.mla is not None)
                self.grid = gr.Plot(placeholder(EMPTY_HINT), elem_id="attn-grid", show_label=False)
            with gr.Column(scale=3):
                self.text = gr.HTML(elem_id="attn-text")
                gr.Markdown(EXPLAIN + ("\n\n" + EXPLAIN_MLA if cfg.mla is not None else ""))
        self.outputs = [self.map, self.grid, self.text, self.latent]
        self.controls = [self.layer, self.head, self.hide_sink]

    def set_controls(self, s: Session, layer: float, head: str, hide_sink: bool) -> None:
        s.layer = int(layer)
        s.head = head if head == "mean" else int(head)
        s.hide_sink = bool(hide_sink)

    def render(self, s: Session) -> list[Any]:
        trace = s.trace(self.lm)
        if trace is None:
            return [placeholder(EMPTY_HINT), placeholder(EMPTY_HINT), "", placeholder(EMPTY_HINT)]
        n = len(trace)
        attn = s.cached(("attn", n, s.layer), lambda: trace.attention(s.layer))  # [H, T, T]
        ids = trace.ids.tolist()
        position = s.position(trace)
        shown = hide_first_token(attn) if s.hide_sink else attn
        row = shown.mean(0)[position] if s.head == "mean" else shown[s.head, position]
        tile = 12 if s.generating else 24  # while streaming, a coarser overview: a quarter of the 1 MB payload
        grid = s.cached(("grid", n, s.hide_sink, s.layer, s.head, tile),
                        lambda: attention_grid_figure(trace, s.hide_sink, s.layer, s.head, tile=tile))
        return [
            attention_map_figure(attn, s.layer, s.head, ids, self.lm.tokenizer, s.hide_sink, position),
            grid,
            attention_text_html(row, ids, self.lm.tokenizer, position),
            self.latent_view(trace, s, ids, position),
        ]

    def latent_view(self, trace, s: Session, ids: list[int], position: int) -> Any:
        mla = self.lm.config.mla
        if mla is None:
            return gr.skip()
        latent = s.cached(("latent", len(trace), s.layer), lambda: trace.latent(s.layer))
        return latent_figure(latent, ids, self.lm.tokenizer, s.layer, self.lm.config.n_heads, mla.qk_head_dim,
                             mla.v_head_dim, mla.qk_rope_dim, position)
