"""The output strip: the text above the tabs, as two HTML components in one scroll box (#output), the settled text
and the newest tokens after it, whose texts flow on as one paragraph (assets/explorer.css).

Why two: Gradio's HTML component parses its whole new value and walks it against the page on every change, and the
page then lays the text out again. With the text in one component, a streamed update cost the browser ~60 ms at
1,200 tokens on this 2-core machine, ten updates a second, and past ~2,000 tokens the page stopped answering clicks
for seconds. Here the settled part changes once per SETTLE tokens (and when the selection or
the branches change), and a streamed update carries the newest tokens only."""
from __future__ import annotations

from typing import Any

import gradio as gr

from explorer.i18n import t
from explorer.session import Session
from explorer.views.output import branch_bar_html, output_parts
from explorer.views.probing import ablated_banner
from model.tokenizer import Tokenizer

SETTLE = 64  # generated tokens move from the newest part to the settled one in blocks of this many
HINT = '<div class="hint">' + t("output.hint") + "</div>"


def settled(n_tokens: int) -> int:
    """How many of n generated tokens the settled part holds: whole blocks of SETTLE, so that it changes once per
    SETTLE tokens while text streams."""
    return n_tokens // SETTLE * SETTLE


class OutputStrip:
    """Made inside the page's layout, where the strip goes."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        with gr.Column(elem_id="output"):
            self.head = gr.HTML(HINT, elem_id="output-head", label=t("output.label"), padding=False)
            self.tail = gr.HTML("", elem_id="output-tail", padding=False)
        self.components = [self.head, self.tail]

    def _parts(self, s: Session, n_settled: int | None) -> tuple[str, str]:
        bar = branch_bar_html(self.tokenizer, s.tree.branches, s.tree.current, s.n_prompt)
        head, tail = output_parts(self.tokenizer, s.prompt_ids, s.steps, selected=s.selected, bar=bar,
                                  settled=n_settled)
        return ablated_banner(s.context_interventions) + head, tail  # marked when generated with an ablation

    def update(self, s: Session, unchanged_head: str | None = None) -> dict:
        """Both components' values for this session; the head left out when it is `unchanged_head` (what a stream
        sent last), so that a streamed update sends and redraws the newest tokens only."""
        head, tail = self._parts(s, settled(len(s.steps)))
        return {self.tail: tail} if head == unchanged_head else {self.head: head, self.tail: tail}

    def html(self, s: Session) -> str:
        """The whole strip as one piece of HTML (the exported report)."""
        return self._parts(s, None)[0]

