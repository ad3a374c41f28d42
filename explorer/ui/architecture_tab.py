"""Architecture tab: the block diagram of the loaded model, of Kimi-K2 (its published config, no weights) or of any
config.json, with shapes and parameters in total and active per token; live vector norms for the loaded model; and its
rotary position embedding (RoPE) beside no scaling, linear, NTK-aware and YaRN for a chosen context length."""
from __future__ import annotations

import os
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from explorer.config_files import config_name, read_config_json
from explorer.i18n import english, t
from explorer.model_thread import MODEL_THREAD
from explorer.session import Session
from explorer.ui.common import placeholder
from explorer.views import style
from explorer.views.architecture import architecture_html, parameter_figure, stages_figure
from explorer.views.rope import (FACTORS, RopeNumbers, default_factor, distance_figure, explain_html,
                                 frequencies_figure, head_query_key, rope_numbers)
from explorer.views.text import token_text
from model import LanguageModel, ModelConfig
from model.params import ParameterCounts, parameter_counts

ASSETS = Path(__file__).resolve().parents[2] / "assets"
KIMI_CONFIG = ASSETS / "kimi-k2-instruct.config.json"
KIMI = english("arch.kimi")  # the Show menu's values (a lesson sets them): its labels are in the browser's language
CONFIG_FILE = english("arch.config_file")

VIEWS = ["Blocks", "RoPE"]
ROPE_HEIGHT = 360  # the RoPE view's figures: under the Show row, within 720 pixels
PRESENTATION_LESS = 55  # presentation mode's taller output strip and larger type above them

StagesFn = Callable[[Session], "dict | None"]


@lru_cache(maxsize=8)
def counts_for(cfg: ModelConfig) -> ParameterCounts:
    return parameter_counts(cfg)


def allowed_config_dirs() -> list[Path]:
    """Folders whose config files users may open: assets/ and those the operator lists in EXPLORER_CONFIG_DIRS."""
    extra = [Path(p).expanduser().resolve() for p in os.environ.get("EXPLORER_CONFIG_DIRS", "").split(os.pathsep) if p]
    return [ASSETS.resolve(), *extra]


def read_config(path_text: str, allowed: list[Path] | None = None) -> ModelConfig:
    """An HF config.json, or a folder holding one, -> ModelConfig; any problem is a ValueError saying what.
    Only regular files under the allowed folders are read (explorer/config_files.py): a public server must not open
    arbitrary paths."""
    data = read_config_json(path_text, allowed_config_dirs() if allowed is None else allowed)
    try:
        return ModelConfig.from_hf_config(data, name=config_name(path_text))
    except KeyError as e:
        raise ValueError(f"the config has no {e.args[0]!r}") from None
    except (TypeError, ValueError, ArithmeticError, AttributeError) as e:
        raise ValueError(str(e) or type(e).__name__) from None


class ArchitectureTab:
    title = "Architecture"

    def __init__(self, lm: LanguageModel, stages_fn: StagesFn | None = None) -> None:
        """stages_fn(session) -> {"layers": [one dict of stage norms per layer], "rope": {position,
        angles_first_last}} or None: live values for the loaded model (see explorer.views.architecture)."""
        self.lm, self.stages_fn = lm, stages_fn
        self.loaded = f"{english('arch.loaded')} {lm.name}"
        with gr.Row():
            shows = [(t("arch.loaded") + f" {lm.name}", self.loaded), (t("arch.kimi"), KIMI),
                     (t("arch.config_file"), CONFIG_FILE)]
            self.show = gr.Dropdown(shows, value=self.loaded, label=t("arch.show"), elem_id="arch-show", scale=2)
            self.path = gr.Textbox(label=t("arch.path"), elem_id="arch-config-path", placeholder=t("arch.path_hint"),
                                   scale=2)
            self.view = gr.Radio([(t("arch.blocks"), "Blocks"), (t("arch.rope"), "RoPE")], value=VIEWS[0],
                                 label=t("arch.view"), elem_id="arch-view", scale=1, min_width=220)
        with gr.Row(visible=True, elem_id="arch-blocks") as self.blocks:
            with gr.Column(scale=6):
                self.diagram = gr.HTML(elem_id="arch-diagram")
            with gr.Column(scale=4):
                self.params = gr.Plot(elem_id="arch-params", show_label=False)
                self.stages = gr.Plot(elem_id="arch-stages", show_label=False, visible=False)
                gr.Markdown(t("arch.explain"))
        # the RoPE view: its two figures fill the height left at 1280x720, the words beside them
        with gr.Row(visible=False, elem_id="arch-rope") as self.rope_view:
            self.rope_freqs = gr.Plot(elem_id="arch-rope-freqs", show_label=False, scale=3, min_width=260)
            self.rope_qk = gr.Plot(elem_id="arch-rope-qk", show_label=False, scale=4, min_width=340)
            with gr.Column(scale=3, min_width=250):
                # 0: the model's own stretch, so that showing another model never carries this one's over
                self.rope_factor = gr.Dropdown([(t("arch.context_own"), 0)]
                                               + [(t(f"arch.context_x{f}"), f) for f in FACTORS],
                                               value=0, show_label=False, container=False,
                                               elem_id="arch-rope-factor")
                self.rope_text = gr.HTML(elem_id="arch-rope-text", padding=False)
        self.outputs = [self.blocks, self.diagram, self.params, self.stages, self.rope_view, self.rope_text,
                        self.rope_freqs, self.rope_qk]
        self.controls = [self.show, self.path, self.view, self.rope_factor]

    def set_controls(self, s: Session, show: str, path: str, view: str = VIEWS[0], factor: Any = 0) -> None:
        s.arch_show, s.arch_path = show, path or ""
        s.arch_view = view if view in VIEWS else VIEWS[0]
        s.arch_rope_factor = factor if factor in FACTORS else 0

    def model(self, s: Session) -> tuple[ModelConfig, str, bool]:
        """(config, name, is the loaded model) for the session's choice; ValueError if it cannot be read."""
        show = s.arch_show or self.loaded
        if show == KIMI:
            return read_config(str(KIMI_CONFIG)), "Kimi-K2-Instruct (config only)", False
        if show == CONFIG_FILE:
            cfg = read_config(s.arch_path)
            return cfg, cfg.name, False
        return self.lm.config, self.lm.name, True

    def live(self, s: Session, cfg: ModelConfig) -> tuple[list[dict] | None, dict | None]:
        values = self.stages_fn(s) if self.stages_fn is not None else None
        layers = (values or {}).get("layers")
        if not layers or len(layers) != cfg.n_layers:
            return None, None
        return list(layers), values.get("rope")

    def rope(self, s: Session, cfg: ModelConfig, name: str, loaded: bool) -> RopeNumbers:
        """The RoPE view's numbers: at the selected token, with its real query and key in the selected layer and head
        (all heads averaged for "mean") where the loaded model has a trace."""
        factor = s.arch_rope_factor or default_factor(cfg)
        trace = s.trace(self.lm) if s.has_content else None
        if trace is None:
            return rope_numbers(replace(cfg, name=name), factor)
        position = s.position(trace)
        if not loaded:  # a config without weights: the selected position, no q or k
            return rope_numbers(replace(cfg, name=name), factor, position)
        layer = min(max(s.layer, 0), cfg.n_layers - 1)
        head = s.head if isinstance(s.head, int) and 0 <= s.head < cfg.n_heads else None

        def compute() -> RopeNumbers:
            q, k = MODEL_THREAD.run(head_query_key, self.lm.decoder, trace, layer, position)
            if head is not None:
                q, k = q[head:head + 1], k[head:head + 1]
            token = token_text(self.lm.tokenizer, int(trace.ids[position]))
            return rope_numbers(replace(cfg, name=name), factor, position, q, k, layer, head, token)

        return s.cached(("rope", len(trace), position, layer, head, factor), compute)

    def rope_outputs(self, s: Session, cfg: ModelConfig, name: str, loaded: bool) -> list[Any]:
        """The RoPE view's outputs: the words, the two figures."""
        try:
            numbers = self.rope(s, cfg, name, loaded)
        except ValueError as e:  # no rotary embedding (GPT-2's learned positions)
            return [f'<p class="rope-explain">{style.escape(str(e))}.</p>',
                    placeholder("No rotary embedding", ROPE_HEIGHT), placeholder("No rotary embedding", ROPE_HEIGHT)]
        height = ROPE_HEIGHT - PRESENTATION_LESS if s.presentation else ROPE_HEIGHT  # the text above grows
        return [explain_html(numbers, cfg.mla is not None), frequencies_figure(numbers, height),
                distance_figure(numbers, height)]

    def render(self, s: Session) -> list[Any]:
        """Only the chosen view is drawn (the other is hidden; choosing it draws it)."""
        rope_view = s.arch_view == "RoPE"
        shown = [gr.update(visible=not rope_view), gr.update(visible=rope_view)]
        try:
            cfg, name, loaded = self.model(s)
            counts = counts_for(cfg)
            if not rope_view:
                stages, rope = self.live(s, cfg) if loaded else (None, None)
                diagram = architecture_html(cfg, counts, name, stages, rope, s.layer)
        except (ValueError, ArithmeticError) as e:  # a config.json whose numbers make no model (e.g. 0 heads)
            message = f"Cannot show this config: {e}"
            said = f'<p style="font-size:17px;color:{style.SELECTED}">{style.escape(message)}</p>'
            return [shown[0], said, placeholder("No model to count"), gr.update(visible=False), shown[1], said,
                    placeholder("No model", ROPE_HEIGHT), placeholder("No model", ROPE_HEIGHT)]
        if rope_view:
            return [shown[0], gr.skip(), gr.skip(), gr.skip(), shown[1], *self.rope_outputs(s, cfg, name, loaded)]
        stages_plot = gr.update(value=stages_figure(stages, rope), visible=True) if stages else gr.update(visible=False)
        return [shown[0], diagram, parameter_figure(counts), stages_plot, shown[1], *[gr.skip()] * 3]
