"""Logit lens tab: what each layer's residual stream would predict if the model stopped there."""
from __future__ import annotations

from typing import Any

import gradio as gr

from explorer.session import Session
from explorer.ui.common import EMPTY_HINT, placeholder
from explorer.views.logit_lens import LensCache, logit_lens, logit_lens_figure
from model import LanguageModel

EXPLAIN = ("The **logit lens** reads the residual stream after every block through the model's own final norm "
           "and unembedding, as if the model ended there. Each cell shows the token that layer would predict "
           "next and its probability: watch the answer form in the later layers.")
POSITIONS = 40


class LogitLensTab:
    title = "Logit lens"

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        with gr.Row():
            with gr.Column(scale=7):
                self.heatmap = gr.Plot(placeholder(EMPTY_HINT), elem_id="logit-lens", show_label=False)
            with gr.Column(scale=3):
                gr.Markdown(EXPLAIN)
        self.outputs = [self.heatmap]

    def render(self, s: Session) -> list[Any]:
        trace = s.trace(self.lm)
        if trace is None:
            return [placeholder(EMPTY_HINT)]
        cache = s.extras.setdefault("lens", LensCache())  # while streaming only new positions are read out
        lens = s.cached(("lens", len(trace)), lambda: logit_lens(trace, last=POSITIONS, cache=cache))
        return [logit_lens_figure(lens, self.lm.tokenizer, s.position(trace))]
