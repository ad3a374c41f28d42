"""Next token tab: the distribution the selected token was drawn from, what the sampler kept, and the timeline; for a
prompt token, what the model expected there. A click on a candidate forces it (a branch: blocks.py generates it)."""
from __future__ import annotations

from typing import Any

import gradio as gr

from explorer.analysis import prediction_at
from explorer.i18n import t
from explorer.session import Session
from explorer.ui.common import EMPTY_HINT, placeholder
from explorer.views.next_token import (given_token_figure, next_token_figure, prompt_token_html,
                                       sampler_summary_html, timeline_figure)
from explorer.views.text import token_text
from model import LanguageModel, Step


class NextTokenTab:
    title = "Next token"

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        with gr.Row():
            with gr.Column(scale=7):
                self.bars = gr.Plot(placeholder(EMPTY_HINT), elem_id="next-token-bars", show_label=False)
                self.timeline = gr.Plot(placeholder(EMPTY_HINT), elem_id="next-token-timeline", show_label=False)
            with gr.Column(scale=3):  # the view's controls beside it, so the plot starts at the top of the tab
                self.step = gr.Slider(1, 2, value=1, step=1, label=t("next_token.step"), elem_id="step-slider")
                self.summary = gr.HTML(elem_id="next-token-summary")
                gr.Markdown(t("next_token.explain"))
        self.outputs = [self.step, self.bars, self.timeline, self.summary]
        self.controls = [self.step]

    def set_controls(self, s: Session, step: float) -> None:
        """The slider selects the token its step produced; at the last step of a running generation it follows
        the newest token."""
        if not s.steps:
            return
        index = min(max(int(step) - 1, 0), len(s.steps) - 1)
        s.selected = None if index == len(s.steps) - 1 and s.generating else s.steps[index].position

    def _sampled(self, s: Session, step: Step) -> list[Any]:
        tok, cfg = self.lm.tokenizer, s.settings
        return [
            next_token_figure(step, tok),
            timeline_figure(s.steps, tok, step.index),
            sampler_summary_html(step, cfg.get("temperature", 1.0), cfg.get("top_k", 0), cfg.get("top_p", 1.0),
                                 cfg.get("greedy", False), tok),
        ]

    def _given(self, s: Session, position: int) -> list[Any]:
        """A prompt token is selected: what the model expected there (one row of logits), or for the first token,
        which has no prediction, the first step."""
        tok = self.lm.tokenizer
        token = token_text(tok, s.prompt_ids[position])
        if position == 0:
            first = self._sampled(s, s.steps[0])
            return [first[0], first[1], prompt_token_html(position, token)]
        trace = s.trace(self.lm)
        prediction = s.cached(("prediction", len(trace), position), lambda: prediction_at(trace, position))
        return [given_token_figure(prediction, tok), timeline_figure(s.steps, tok, None),
                prompt_token_html(position, token, prediction)]

    def render(self, s: Session) -> list[Any]:
        if not s.steps:
            return [gr.update(), placeholder(EMPTY_HINT), placeholder(EMPTY_HINT), ""]
        step = s.current_step()
        n = len(s.steps)
        if step is None:
            position = min(max(s.selected, 0), s.n_prompt - 1)
            return [gr.update(minimum=1, maximum=max(n, 2), value=1), *self._given(s, position)]
        return [gr.update(minimum=1, maximum=max(n, 2), value=step.index + 1), *self._sampled(s, step)]
