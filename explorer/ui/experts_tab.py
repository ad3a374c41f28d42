"""Experts tab (Mixture-of-Experts models only): the router's choices per token and layer, the selected token's
experts, the load per expert, what the router scored, and the shared experts next to the routed ones."""
from __future__ import annotations

from typing import Any

import gradio as gr

from explorer.i18n import t
from explorer.session import Session
from explorer.ui.common import EMPTY_HINT, placeholder
from explorer.views.experts import (expert_choice_figure, expert_load_figure, router_scores_figure,
                                    shared_vs_routed_figure, token_experts_figure)
from model import LanguageModel
from model.config import MoEConfig


def model_note(moe: MoEConfig) -> str:
    """This model's routing in numbers, for the side panel."""
    scoring = "sigmoid" if moe.scoring == "sigmoid" else "softmax"
    note = (f"This model: **{moe.n_routed_experts}** routed experts, **{moe.n_experts_per_tok}** per token "
            f"({scoring} scores), **{moe.n_shared_experts}** shared, routed_scaling_factor "
            f"**{moe.routed_scaling_factor:g}**; the first {moe.first_k_dense} layer(s) are dense.")
    if moe.n_group > 1 and moe.topk_method != "greedy":
        note += (f" Experts form {moe.n_group} groups and only the best {moe.topk_group} groups of each token may "
                 "be chosen from.")
    return note


class ExpertsTab:
    title = "Experts"

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        self.moe_layers = [i for i in range(lm.config.n_layers) if lm.config.is_moe_layer(i)]
        with gr.Row():
            with gr.Column(scale=7):
                with gr.Row():
                    self.layer = gr.Dropdown([(t("common.layer") + f" {i}", i) for i in self.moe_layers],
                                             value=self.moe_layers[0], label=t("experts.layer"),
                                             elem_id="experts-layer")
                    self.load_all = gr.Checkbox(label=t("experts.load_all"), value=False,
                                                elem_id="experts-load-all")
                self.choice = gr.Plot(placeholder(EMPTY_HINT), elem_id="experts-choice", show_label=False)
                self.token = gr.Plot(placeholder(EMPTY_HINT), elem_id="experts-token", show_label=False)
                self.scores = gr.Plot(placeholder(EMPTY_HINT), elem_id="experts-scores", show_label=False)
                self.load = gr.Plot(placeholder(EMPTY_HINT), elem_id="experts-load", show_label=False)
                self.shared = gr.Plot(placeholder(EMPTY_HINT), elem_id="experts-shared", show_label=False)
            with gr.Column(scale=3):
                gr.Markdown(t("experts.explain"))
                gr.Markdown(model_note(lm.config.moe), elem_id="experts-model-note")  # numbers: English
        self.outputs = [self.choice, self.token, self.scores, self.load, self.shared]
        self.controls = [self.layer, self.load_all]

    def set_controls(self, s: Session, layer: Any, load_all: bool) -> None:
        s.moe_layer = int(layer)
        s.moe_load_all = bool(load_all)

    def selected_layer(self, s: Session) -> int:
        layer = s.moe_layer
        return layer if layer in self.moe_layers else self.moe_layers[0]

    def render(self, s: Session) -> list[Any]:
        trace = s.trace(self.lm)
        if trace is None:
            return [placeholder(EMPTY_HINT)] * len(self.outputs)
        tok, moe = self.lm.tokenizer, self.lm.config.moe
        n, position, layer = len(trace), s.position(trace), self.selected_layer(s)
        routing = s.cached(("routing", n, layer), lambda: trace.routing(layer))  # one block recomputed
        return [
            expert_choice_figure(trace, tok, position, n_prompt=s.n_prompt),
            token_experts_figure(trace, position, tok),
            router_scores_figure(routing, position, moe.n_experts_per_tok, moe.scoring),
            expert_load_figure(trace, None if s.moe_load_all else layer, s.n_prompt),
            shared_vs_routed_figure(routing, tok, trace.ids.tolist(), position, s.n_prompt),
        ]
