"""Embeddings tab: the context's input embeddings against a vocabulary sample, nearest neighbours of the selected
token, and its hidden-state trajectory through the layers."""
from __future__ import annotations

from typing import Any

import gradio as gr

from explorer.analysis import vocabulary_sample
from explorer.i18n import t
from explorer.session import Session
from explorer.ui.common import EMPTY_HINT, placeholder
from explorer.views.embeddings import embedding_projection_figure, neighbours_html, trajectory_figure
from model import LanguageModel

BACKGROUND = 3000
STREAMING_THIN = 4  # while tokens stream (and the plot redraws with each refresh), one cloud point in 4 is drawn


class EmbeddingsTab:
    title = "Embeddings"

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        self.background = vocabulary_sample(lm.tokenizer.vocab_size, BACKGROUND)
        with gr.Row():
            with gr.Column(scale=7):
                self.projection = gr.Plot(placeholder(EMPTY_HINT), elem_id="emb-projection", show_label=False)
                self.trajectory = gr.Plot(placeholder(EMPTY_HINT), elem_id="emb-trajectory", show_label=False)
            with gr.Column(scale=3):  # the view's controls beside it, so the plot starts at the top of the tab
                self.dims = gr.Radio([(t("embeddings.2d"), "2-D"), (t("embeddings.3d"), "3-D")], value="2-D",
                                     label=t("embeddings.projection"), elem_id="emb-dims")
                self.neighbours = gr.HTML(elem_id="emb-neighbours")
                gr.Markdown(t("embeddings.explain"))
        self.outputs = [self.projection, self.trajectory, self.neighbours]
        self.controls = [self.dims]

    def set_controls(self, s: Session, dims: str) -> None:
        s.dims = 3 if dims == "3-D" else 2

    def render(self, s: Session) -> list[Any]:
        trace = s.trace(self.lm)
        if trace is None:
            return [placeholder(EMPTY_HINT), placeholder(EMPTY_HINT), ""]
        ids, tok, E = s.ids, self.lm.tokenizer, self.lm.decoder.embed.weight
        selected = s.selected if s.selected is not None else len(ids) - 1
        position = s.position(trace)
        return [
            embedding_projection_figure(E, ids, tok, s.n_prompt, s.dims, selected, self.background,
                                        thin=STREAMING_THIN if s.generating else 1),
            trajectory_figure(trace, position, tok, s.dims),
            neighbours_html(E, ids[selected], tok),
        ]
