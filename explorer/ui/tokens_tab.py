"""Tokens tab: the context as token chips, counts, and the log-probability and perplexity of the prompt and of the
whole text."""
from __future__ import annotations

import math
from typing import Any

import gradio as gr

from explorer.analysis import sequence_logprobs
from explorer.i18n import t
from explorer.session import Session
from explorer.ui.common import EMPTY_HINT, placeholder
from explorer.views.tokens import FOLLOW_SELECTION_JS, logprob_share_figure, token_chips_html, token_stats_html
from model import LanguageModel

EMPTY_CHIPS = "<p>" + t("common.empty") + "</p>"


class TokensTab:
    title = "Tokens"

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        with gr.Row():
            with gr.Column(scale=7):
                self.chips = gr.HTML(EMPTY_CHIPS, elem_id="token-chips", js_on_load=FOLLOW_SELECTION_JS)
                self.share = gr.Plot(placeholder(EMPTY_HINT), elem_id="token-share", show_label=False)
            with gr.Column(scale=3):
                self.stats = gr.HTML(elem_id="token-stats")
                gr.Markdown(t("tokens.explain"))
        self.outputs = [self.chips, self.share, self.stats]

    def logprobs(self, s: Session) -> list[float]:
        """log p(x_t | x_<t) for t = 1..: the prompt's from one forward pass, the generated tokens' from their steps."""
        # the session's trace always covers the prompt (while streaming too): no second forward pass over it
        prompt = s.cached(("prompt-logprobs", s.n_prompt),
                          lambda: sequence_logprobs(s.trace(self.lm), stop=s.n_prompt) if s.n_prompt > 1 else [])
        return prompt + [math.log(max(step.prob, 1e-45)) for step in s.steps]

    def render(self, s: Session) -> list[Any]:
        if not s.has_content:
            return [EMPTY_CHIPS, placeholder(EMPTY_HINT), ""]
        ids, tok = s.ids, self.lm.tokenizer
        # cut to ids: while a live refresh renders, the generation may add steps after ids was read
        logprobs = self.logprobs(s)[: len(ids) - 1]
        selected = s.selected if s.selected is not None else len(ids) - 1
        prompt_text = tok.decode(s.prompt_ids)
        return [
            token_chips_html(tok, ids, s.n_prompt, logprobs, selected),
            logprob_share_figure(tok, ids, logprobs, selected, n_prompt=s.n_prompt),
            token_stats_html(prompt_text, s.prompt_ids, logprobs[: s.n_prompt - 1], logprobs),
        ]
