"""Logit lens tab: what each layer's residual stream would predict if the model stopped there, in a window of
positions around the selected token."""
from __future__ import annotations

from typing import Any

import gradio as gr

from explorer.i18n import t
from explorer.session import Session
from explorer.ui.common import EMPTY_HINT, placeholder
from explorer.views.logit_lens import LensCache, lens_window, logit_lens, logit_lens_figure
from model import LanguageModel


class LogitLensTab:
    title = "Logit lens"

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        with gr.Row():
            with gr.Column(scale=7):
                self.heatmap = gr.Plot(placeholder(EMPTY_HINT), elem_id="logit-lens", show_label=False)
            with gr.Column(scale=3):
                gr.Markdown(t("logit_lens.explain"))
        self.outputs = [self.heatmap]

    def render(self, s: Session) -> list[Any]:
        trace = s.trace(self.lm)
        if trace is None:
            return [placeholder(EMPTY_HINT)]
        position = s.position(trace)
        positions = lens_window(len(trace), position)
        cache = s.extras.setdefault("lens", LensCache())  # positions already read out are not read out again
        lens = s.cached(("lens", len(trace), positions[0]), lambda: logit_lens(trace, positions, cache=cache))
        return [logit_lens_figure(lens, self.lm.tokenizer, position)]
