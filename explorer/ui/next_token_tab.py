"""Next token tab: the distribution each token was drawn from, what the sampler kept, and the timeline."""
from __future__ import annotations

from typing import Any

import gradio as gr

from explorer.session import Session
from explorer.ui.common import EMPTY_HINT, placeholder
from explorer.views.next_token import next_token_figure, sampler_summary_html, timeline_figure
from model import LanguageModel

EXPLAIN = ("At each step the model outputs a probability for every token in the vocabulary, "
           "p(x_t | x_<t) = softmax(logits). **Temperature** divides the logits (sharper below 1, flatter above), "
           "**top-k** keeps the k most likely, **top-p** keeps the smallest set with probability mass ≥ p; "
           "the token is drawn from what is left.")


class NextTokenTab:
    title = "Next token"

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        with gr.Row():
            with gr.Column(scale=7):
                self.step = gr.Slider(1, 2, value=1, step=1, label="Step (generated token)", elem_id="step-slider")
                self.bars = gr.Plot(placeholder(EMPTY_HINT), elem_id="next-token-bars", show_label=False)
                self.timeline = gr.Plot(placeholder(EMPTY_HINT), elem_id="next-token-timeline", show_label=False)
            with gr.Column(scale=3):
                self.summary = gr.HTML(elem_id="next-token-summary")
                gr.Markdown(EXPLAIN)
        self.outputs = [self.step, self.bars, self.timeline, self.summary]
        self.controls = [self.step]

    def set_controls(self, s: Session, step: float) -> None:
        if s.steps:
            index = int(step) - 1
            s.step_index = None if index >= len(s.steps) - 1 and s.generating else index

    def render(self, s: Session) -> list[Any]:
        step = s.current_step()
        if step is None:
            return [gr.update(), placeholder(EMPTY_HINT), placeholder(EMPTY_HINT), ""]
        tok, cfg = self.lm.tokenizer, s.settings
        n = len(s.steps)
        return [
            gr.update(minimum=1, maximum=max(n, 2), value=step.index + 1),
            next_token_figure(step, tok),
            timeline_figure(s.steps, tok, step.index),
            sampler_summary_html(step, cfg.get("temperature", 1.0), cfg.get("top_k", 0), cfg.get("top_p", 1.0),
                                 cfg.get("greedy", False), tok),
        ]
