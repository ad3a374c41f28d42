"""Architecture tab: the block diagram of the loaded model, of Kimi-K2 (its published config, no weights) or of any
config.json, with shapes and parameters in total and active per token; live vector norms for the loaded model."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from explorer.config_files import config_name, read_config_json
from explorer.session import Session
from explorer.ui.common import placeholder
from explorer.views import style
from explorer.views.architecture import architecture_html, parameter_figure, stages_figure
from model import LanguageModel, ModelConfig
from model.params import ParameterCounts, parameter_counts

ASSETS = Path(__file__).resolve().parents[2] / "assets"
KIMI_CONFIG = ASSETS / "kimi-k2-instruct.config.json"
KIMI = "Kimi-K2 (config only, 1T parameters)"
CONFIG_FILE = "A config.json (path below)"
EXPLAIN = ("Every block reads the residual stream h through a **norm**, lets its tokens exchange information in "
           "**attention**, adds the result back, then transforms each token alone in the **MLP**. In a "
           "**Mixture of Experts** a router picks a few experts per token, so most parameters rest for any one "
           "token: Kimi-K2 holds about 1T parameters but uses about 32B per token. **Multi-head Latent Attention** "
           "caches one small latent per token instead of every head's keys and values.")

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
        self.loaded = f"Loaded model: {lm.name}"
        with gr.Row():
            self.show = gr.Dropdown([self.loaded, KIMI, CONFIG_FILE], value=self.loaded, label="Show",
                                    elem_id="arch-show", scale=2)
            self.path = gr.Textbox(label="config.json path (used with “A config.json”)", elem_id="arch-config-path",
                                   placeholder="/path/to/model/config.json", scale=3)
        with gr.Row():
            with gr.Column(scale=6):
                self.diagram = gr.HTML(elem_id="arch-diagram")
            with gr.Column(scale=4):
                self.params = gr.Plot(elem_id="arch-params", show_label=False)
                self.stages = gr.Plot(elem_id="arch-stages", show_label=False, visible=False)
                gr.Markdown(EXPLAIN)
        self.outputs = [self.diagram, self.params, self.stages]
        self.controls = [self.show, self.path]

    def set_controls(self, s: Session, show: str, path: str) -> None:
        # Session has no fields for this tab yet; plain attributes survive new generations, unlike s.extras
        s.arch_show, s.arch_path = show, path or ""

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

    def render(self, s: Session) -> list[Any]:
        try:
            cfg, name, loaded = self.model(s)
            counts = counts_for(cfg)
            stages, rope = self.live(s, cfg) if loaded else (None, None)
            diagram = architecture_html(cfg, counts, name, stages, rope, s.layer)
        except (ValueError, ArithmeticError) as e:  # a config.json whose numbers make no model (e.g. 0 heads)
            message = f"Cannot show this config: {e}"
            return [f'<p style="font-size:17px;color:{style.SELECTED}">{style.escape(message)}</p>',
                    placeholder("No model to count"), gr.update(visible=False)]
        stages_plot = gr.update(value=stages_figure(stages, rope), visible=True) if stages else gr.update(visible=False)
        return [diagram, parameter_figure(counts), stages_plot]
