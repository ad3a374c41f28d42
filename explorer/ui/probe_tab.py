"""Probe tab: ask "what if". Ablate heads, experts or a layer's attention or MLP and see the next-token distribution
before and after (and generate with the ablation on); compare two prompts; patch one prompt's residual stream into
the other's run, layer by layer and position by position (causal tracing). The model work runs on the model thread
in small tasks (explorer/probing.py); the figures are drawn here (explorer/views/probing.py)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import gradio as gr
import numpy as np

from explorer.i18n import t
from explorer.model_thread import MODEL_THREAD, drawing
from explorer.probing import (PatchingMap, ablate_in_parts, describe, lens_probs, patched_logprobs, patching_pair,
                              patching_sweep)
from explorer.session import Session
from explorer.ui.common import EMPTY_HINT, placeholder, presentation_fonts
from explorer.views import style
from explorer.views.probing import (ablation_figure, ablation_summary_html, attention_difference_figure,
                                    distributions_figure, lens_comparison_figure, patching_figure, picker_figure,
                                    tokens_html)
from model import (AttentionAblation, ExpertAblation, HeadAblation, Interventions, LanguageModel, MLPAblation,
                   Trace)

KINDS = ["Head", "Expert", "Attention output", "MLP output"]  # the radio's values; its labels are translated
KIND_KEYS = dict(zip(KINDS, ("probe.kind_head", "probe.kind_expert", "probe.kind_attention", "probe.kind_mlp")))
COMPARE_MAX_TOKENS = 256
PLOT_HEIGHT = 380  # under a row of controls, within the tab at 1280x720
PARTS = ("attention", "MLP")  # the columns of the picker for whole attention or MLP outputs
PROGRESS_SECONDS = 0.7  # the patching map is redrawn at most this often while it fills
COMPARE_DEFAULTS = ("The doctor said that he", "The doctor said that she")
PATCH_DEFAULTS = ("The Eiffel Tower is in the city of", "The Colosseum is in the city of")


@dataclass
class ProbeState:
    """The Probe tab's own part of a session (Session.probe): the prompts last compared and patched, and the map."""

    compare: tuple[Trace, Trace] | None = None
    patch_traces: tuple[Trace, Trace] | None = None
    patch: PatchingMap | None = None
    patch_run: int = 0  # a new patching run ends the one before
    cell: tuple[int, int] | None = None
    pick: str = ""
    kind: str = "Head"  # what the ablation picker shows
    ablate_pick: str = ""  # the last click on the picker (the same click twice is one)


def probe_state(s: Session) -> ProbeState:
    if s.probe is None:
        s.probe = ProbeState()
    return s.probe


def sentence(message: str) -> str:
    return f'<p class="probe-problem">{style.escape(message)}</p>'


class ProbeTab:
    title = "Probe"

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        cfg = lm.config
        self.moe_layers = [i for i in range(cfg.n_layers) if cfg.is_moe_layer(i)]
        kinds = KINDS if self.moe_layers else [k for k in KINDS if k != "Expert"]
        heads = [str(h) for h in range(cfg.n_heads)]
        with gr.Tabs(elem_id="probe-views"):
            with gr.Tab(t("probe.ablate_tab"), elem_id="probe-ablate-tab"):
                # the bars and the grid to pick from side by side (a click there, the bars change beside it), the
                # numbers and the controls under them
                with gr.Row(equal_height=False):
                    with gr.Column(scale=5, min_width=360):
                        self.bars = gr.Plot(placeholder(EMPTY_HINT, style.VIEW_HEIGHT), elem_id="probe-ablation",
                                            show_label=False)
                    with gr.Column(scale=4, min_width=300):
                        self.picker = gr.Plot(placeholder(EMPTY_HINT, style.VIEW_HEIGHT), elem_id="probe-pick-map",
                                              show_label=False)
                with gr.Row(equal_height=False):
                    with gr.Column(scale=5, min_width=360):
                        self.summary = gr.HTML(elem_id="probe-summary")
                    with gr.Column(scale=4, min_width=300):
                        self.kind = gr.Radio([(t(KIND_KEYS[k]), k) for k in kinds], value="Head", label=t("probe.kind"),
                                             elem_id="probe-kind")
                        with gr.Row():
                            self.layer = gr.Number(0, precision=0, minimum=0, maximum=cfg.n_layers - 1,
                                                   label=t("common.layer") + f" (0–{cfg.n_layers - 1})",
                                                   elem_id="probe-layer",
                                                   min_width=90)
                            self.head = gr.Dropdown(heads, value="0", label=t("probe.head"), elem_id="probe-head",
                                                    min_width=90)
                            n_experts = cfg.moe.n_routed_experts if cfg.moe is not None else 1
                            self.expert = gr.Dropdown([str(e) for e in range(n_experts)], value="0", label=t("probe.expert"),
                                                      elem_id="probe-expert", min_width=90,
                                                      visible=bool(self.moe_layers))
                        with gr.Row():
                            self.add = gr.Button(t("probe.add"), elem_id="probe-add", variant="primary", min_width=80)
                            self.clear = gr.Button(t("probe.clear"), elem_id="probe-clear", min_width=80)
                        self.generate_with = gr.Checkbox(label=t("probe.generate_with"), value=False,
                                                         elem_id="probe-generate-with")
                gr.Markdown(t("probe.explain"))
                # written by assets/probe.js on a click on the picker: "<head|expert|part>:<layer>:<column>:<nonce>"
                self.ablate_pick = gr.Textbox(visible="hidden", elem_id="probe-ablate-pick", show_label=False)
            with gr.Tab(t("probe.compare_tab"), elem_id="probe-compare-tab"):
                with gr.Row(equal_height=True):
                    self.compare_a = gr.Textbox(COMPARE_DEFAULTS[0], label=t("probe.prompt_a"), elem_id="probe-compare-a",
                                                lines=1, max_length=4000)
                    self.compare_b = gr.Textbox(COMPARE_DEFAULTS[1], label=t("probe.prompt_b"), elem_id="probe-compare-b",
                                                lines=1, max_length=4000)
                    self.compare_button = gr.Button(t("probe.compare"), elem_id="probe-compare", variant="primary",
                                                    scale=0, min_width=110)
                self.compare_tokens = gr.HTML(elem_id="probe-compare-tokens")
                with gr.Row(equal_height=False):
                    self.compare_bars = gr.Plot(placeholder("Press Compare", PLOT_HEIGHT), elem_id="probe-compare-bars",
                                                show_label=False)
                    self.compare_lens = gr.Plot(placeholder("Press Compare", PLOT_HEIGHT), elem_id="probe-compare-lens",
                                                show_label=False)
                with gr.Row(equal_height=False):
                    with gr.Column(scale=6, min_width=360):
                        self.attn_diff = gr.Plot(placeholder("Press Compare", PLOT_HEIGHT), elem_id="probe-attn-diff",
                                                 show_label=False)
                    with gr.Column(scale=4, min_width=240):
                        self.attn_layer = gr.Number(0, precision=0, minimum=0, maximum=cfg.n_layers - 1,
                                                    label=t("probe.attn_layer") + f" (0–{cfg.n_layers - 1})",
                                                    elem_id="probe-attn-layer")
                        self.attn_head = gr.Dropdown(heads, value="0", label=t("probe.head"), elem_id="probe-attn-head")
            with gr.Tab(t("probe.patch_tab"), elem_id="probe-patch-tab"):
                # the map at the top, its prompts and the clicked cell's run beside it: the map fits 1280x720
                with gr.Row(equal_height=False):
                    with gr.Column(scale=6, min_width=380):
                        self.patch_map = gr.Plot(placeholder("Press Run patching", PLOT_HEIGHT),
                                                 elem_id="probe-patch-map", show_label=False)
                    with gr.Column(scale=4, min_width=300):
                        self.patch_a = gr.Textbox(PATCH_DEFAULTS[0], label=t("probe.patch_a"),
                                                  elem_id="probe-patch-a", lines=1, max_length=4000)
                        self.patch_b = gr.Textbox(PATCH_DEFAULTS[1], label=t("probe.patch_b"),
                                                  elem_id="probe-patch-b", lines=1, max_length=4000)
                        with gr.Row(equal_height=True):
                            self.target = gr.Textbox("", label=t("probe.target"), elem_id="probe-target",
                                                     lines=1, max_length=200, min_width=120)
                            self.patch_button = gr.Button(t("probe.run_patching"), elem_id="probe-patch", variant="primary",
                                                          min_width=110)
                        self.patch_status = gr.HTML(elem_id="probe-patch-status")
                        self.patch_cell = gr.Plot(placeholder("Click a cell of the map", PLOT_HEIGHT),
                                                  elem_id="probe-patch-cell", show_label=False)
                gr.Markdown(t("probe.patch_explain"))
                # written by assets/probe.js on a click on the map: "cell:<layer>:<position>:<nonce>"
                self.patch_pick = gr.Textbox(visible="hidden", elem_id="probe-patch-pick", show_label=False)
        self.outputs = [self.bars, self.summary, self.layer, self.head, self.picker]
        self.controls = [self.kind, self.layer, self.head, self.expert, self.generate_with]

    # ablation: drawn for the session's context at its selected token, like every tab
    def set_controls(self, s: Session, kind: str, layer: Any, head: Any, expert: Any, generate_with: bool) -> None:
        """The layer and head are the session's selection (the Attention tab's too)."""
        if isinstance(layer, (int, float)) and 0 <= int(layer) < self.lm.config.n_layers:
            s.layer = int(layer)
        if head is not None and str(head).isdigit():
            s.head = int(head)
        s.probe_generate = bool(generate_with)
        if kind in KINDS:
            probe_state(s).kind = kind

    def picked(self, kind: str, layer: Any, head: Any, expert: Any) -> Any:
        """The ablation the controls describe, or a sentence saying why there is none."""
        if not isinstance(layer, (int, float)) or not 0 <= int(layer) < self.lm.config.n_layers:
            return f"Pick a layer from 0 to {self.lm.config.n_layers - 1}."
        layer = int(layer)
        if kind == "Head":
            return HeadAblation(layer, int(head))
        if kind == "Expert":
            if layer not in self.moe_layers:
                return f"Layer {layer} has no experts: the Mixture-of-Experts layers are {self.moe_layers}."
            return ExpertAblation(layer, int(expert))
        return (AttentionAblation if kind == "Attention output" else MLPAblation)(layer)

    def render(self, s: Session, problem: str = "") -> list[Any]:
        trace = s.trace(self.lm)
        head = s.head if isinstance(s.head, int) else 0
        controls = [gr.update(value=s.layer), gr.update(value=str(head))]
        items = tuple(s.probe_ablations)
        if trace is None:
            listed = sentence(problem) if problem else ""
            if items:
                listed += f"<p><b>Chosen:</b> {style.escape(describe(items))}.</p>"
            return [placeholder(EMPTY_HINT, style.VIEW_HEIGHT), listed, *controls,
                    placeholder(EMPTY_HINT, style.VIEW_HEIGHT)]
        position = s.position(trace)
        result = s.cached(("probe-ablation", len(trace), position, items),
                          lambda: self.ablation(trace.trace, position, items))
        tok = self.lm.tokenizer
        description = describe(items)
        if s.context_interventions:
            description += f" (on a text generated with {describe(s.context_interventions)})"
        summary = ablation_summary_html(result, tok, description)
        if s.probe_generate and items:
            summary += "<p class=\"probe-on\">The next generation runs with this ablation.</p>"
        return [ablation_figure(result, tok, description), (sentence(problem) if problem else "") + summary,
                *controls, presentation_fonts(self.picker_view(s, trace, position), s.presentation)]

    @staticmethod
    def ablation(trace: Trace, position: int, items: tuple) -> Any:
        """ablate() as model-thread tasks of a chunk of positions each: other sessions' tokens go between them."""
        parts = ablate_in_parts(trace, position, items)
        while (result := MODEL_THREAD.run(next, parts)) is None:
            pass
        return result

    def picker_view(self, s: Session, trace: Any, position: int) -> Any:
        """The grid the kind of ablation picks from: layers x heads, layers x experts (coloured by the router's
        weights at the selected token: the experts it chose there), or layers x (attention, MLP)."""
        cfg, items = self.lm.config, s.probe_ablations
        kind = probe_state(s).kind
        if kind == "Expert" and self.moe_layers:
            n_experts = cfg.moe.n_routed_experts
            weights = np.full((len(self.moe_layers), n_experts), np.nan, dtype=np.float32)
            for row in range(len(self.moe_layers)):
                chosen_experts = trace.experts[row, position].tolist()
                weights[row, chosen_experts] = trace.expert_weights[row, position].float().numpy()
            chosen = {(i.layer, i.expert) for i in items if isinstance(i, ExpertAblation)}
            return picker_figure(self.moe_layers, [str(e) for e in range(n_experts)], chosen,
                                 f"Click an expert to ablate it<br><sup>colour: its weight for token {position} "
                                 "(blank: not chosen there)</sup>", "expert", weights, "weight", style.VIEW_HEIGHT)
        layers = list(range(cfg.n_layers))
        if kind in ("Attention output", "MLP output"):
            chosen = {(i.layer, 0 if isinstance(i, AttentionAblation) else 1) for i in items
                      if isinstance(i, (AttentionAblation, MLPAblation))}
            return picker_figure(layers, PARTS, chosen, "Click a layer's attention or MLP to ablate it", "part",
                                 height=style.VIEW_HEIGHT)
        chosen = {(i.layer, i.head) for i in items if isinstance(i, HeadAblation)}
        return picker_figure(layers, [str(h) for h in range(cfg.n_heads)], chosen,
                             "Click a head to ablate it<br><sup>click it again to restore it</sup>", "head",
                             height=style.VIEW_HEIGHT)

    def clicked(self, pick: str) -> Any:
        """The ablation a click on the picker names (\"head:3:5:<nonce>\"), or None for a click that names none."""
        parts = (pick or "").split(":")
        if len(parts) < 3 or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        what, layer, column = parts[0], int(parts[1]), int(parts[2])
        cfg = self.lm.config
        if not 0 <= layer < cfg.n_layers:
            return None
        if what == "head" and column < cfg.n_heads:
            return HeadAblation(layer, column)
        if what == "expert" and layer in self.moe_layers and column < cfg.moe.n_routed_experts:
            return ExpertAblation(layer, column)
        if what == "part" and column < len(PARTS):
            return (AttentionAblation, MLPAblation)[column](layer)
        return None

    def wire(self, state: gr.State, render_tab: Callable[..., dict]) -> None:
        """The tab's buttons and the Compare and Patch views, which run on their own prompts."""
        picker = [self.kind, self.layer, self.head, self.expert]

        def on_add(kind: str, layer: Any, head: Any, expert: Any, s: Session) -> dict:
            item = self.picked(kind, layer, head, expert)
            if isinstance(item, str):
                return self._rendered(s, render_tab, item)
            return on_add_item(item, s)

        def on_clear(s: Session) -> dict:
            s.probe_ablations = ()
            return render_tab(s, self)

        def on_pick(pick: str, s: Session) -> dict:
            """A click on the picker: that head, expert or part ablated, or restored if it was."""
            state = probe_state(s)
            item = self.clicked(pick)
            if item is None or pick == state.ablate_pick:
                return {output: gr.skip() for output in self.outputs}
            state.ablate_pick = pick
            if item in s.probe_ablations:
                s.probe_ablations = tuple(i for i in s.probe_ablations if i != item)
                return render_tab(s, self)
            return on_add_item(item, s)

        def on_add_item(item: Any, s: Session) -> dict:
            try:
                Interventions.of([*s.probe_ablations, item], self.lm.config)
            except ValueError as e:
                return self._rendered(s, render_tab, str(e))
            if item not in s.probe_ablations:
                s.probe_ablations = (*s.probe_ablations, item)
            return render_tab(s, self)

        on_views = dict(api_visibility="private", show_progress="minimal", show_progress_on=[self.bars])
        self.add.click(on_add, [*picker, state], self.outputs, **on_views)
        self.clear.click(on_clear, [state], self.outputs, **on_views)
        self.ablate_pick.input(on_pick, [self.ablate_pick, state], self.outputs, api_visibility="private",
                               show_progress="minimal", trigger_mode="always_last")

        compare_outputs = [self.compare_tokens, self.compare_bars, self.compare_lens, self.attn_diff]
        self.compare_button.click(self.on_compare, [self.compare_a, self.compare_b, self.attn_layer, self.attn_head,
                                                    state], compare_outputs, api_visibility="private",
                                  show_progress="minimal", concurrency_id="probe", concurrency_limit=2)
        for control in (self.attn_layer, self.attn_head):
            control.input(self.on_attention, [self.attn_layer, self.attn_head, state], [self.attn_diff],
                          api_visibility="private", show_progress="minimal", trigger_mode="always_last")
        self.patch_button.click(self.on_patch, [self.patch_a, self.patch_b, self.target, state],
                                [self.patch_status, self.patch_map, self.patch_cell], api_visibility="private",
                                show_progress="hidden", concurrency_id="probe", concurrency_limit=2)
        self.patch_pick.input(self.on_cell, [self.patch_pick, state], [self.patch_map, self.patch_cell],
                              api_visibility="private", show_progress="minimal", trigger_mode="always_last")

    def _rendered(self, s: Session, render_tab: Callable[..., dict], problem: str) -> dict:
        """The tab rendered with a sentence about what could not be done (no toast: a user's slip is no error)."""
        values = render_tab(s, self)
        values[self.summary] = sentence(problem) + (values[self.summary] if isinstance(values[self.summary], str)
                                                    else "")
        return values

    # compare two prompts
    def on_compare(self, a: str, b: str, layer: Any, head: Any, s: Session) -> list[Any]:
        tok = self.lm.tokenizer
        ids = []
        for name, text in (("A", a), ("B", b)):
            encoded = tok.encode(text or "")
            if not encoded:
                return [sentence(f"Prompt {name} is empty: type some text first."), gr.skip(), gr.skip(), gr.skip()]
            if len(encoded) > COMPARE_MAX_TOKENS:
                return [sentence(f"Prompt {name} is {len(encoded)} tokens; compare prompts of at most "
                                 f"{COMPARE_MAX_TOKENS}."), gr.skip(), gr.skip(), gr.skip()]
            ids.append(encoded)
        trace_a, trace_b = (MODEL_THREAD.run(self.lm.trace, i) for i in ids)
        probe_state(s).compare = (trace_a, trace_b)
        drawing()
        last_a = MODEL_THREAD.run(trace_a.logits_at, [len(trace_a) - 1])[0].log_softmax(-1)
        last_b = MODEL_THREAD.run(trace_b.logits_at, [len(trace_b) - 1])[0].log_softmax(-1)
        tokens = [int(last_a.argmax())] + ([int(last_b.argmax())] if int(last_b.argmax()) != int(last_a.argmax())
                                           else [])
        lens_a = MODEL_THREAD.run(lens_probs, trace_a, len(trace_a) - 1, tokens)
        lens_b = MODEL_THREAD.run(lens_probs, trace_b, len(trace_b) - 1, tokens)
        texts = tokens_html(tok, ids[0], ids[1], "A") + tokens_html(tok, ids[1], ids[0], "B")
        figures = [distributions_figure([("A", last_a), ("B", last_b)], tok, "Next token: A and B",
                                        height=PLOT_HEIGHT),
                   lens_comparison_figure(lens_a, lens_b, tokens, tok, height=PLOT_HEIGHT),
                   self.attention_view(s, layer, head)]
        return [texts, *(presentation_fonts(f, s.presentation) for f in figures)]

    def on_attention(self, layer: Any, head: Any, s: Session) -> Any:
        if probe_state(s).compare is None:
            return gr.skip()
        with MODEL_THREAD.rendering():
            return presentation_fonts(self.attention_view(s, layer, head), s.presentation)

    def attention_view(self, s: Session, layer: Any, head: Any) -> Any:
        trace_a, trace_b = probe_state(s).compare
        n_layers = self.lm.config.n_layers
        if not isinstance(layer, (int, float)) or not 0 <= int(layer) < n_layers:
            return placeholder(f"Pick a layer from 0 to {n_layers - 1}", PLOT_HEIGHT)
        if len(trace_a) != len(trace_b):
            return placeholder(f"The attention difference needs prompts of equal length: A has {len(trace_a)} "
                               f"tokens, B {len(trace_b)}", PLOT_HEIGHT)
        layer, head = int(layer), int(head)
        diff = MODEL_THREAD.run(trace_a.attention, layer)[head] - MODEL_THREAD.run(trace_b.attention, layer)[head]
        return attention_difference_figure(diff, trace_a.ids.tolist(), trace_b.ids.tolist(), self.lm.tokenizer,
                                           layer, head, height=PLOT_HEIGHT)

    # activation patching
    def on_patch(self, a: str, b: str, target: str, s: Session):
        state = probe_state(s)
        state.patch_run += 1
        run = state.patch_run
        try:
            ids_a, ids_b, target_id = patching_pair(self.lm.tokenizer, a or "", b or "", target or "")
        except ValueError as e:
            yield [sentence(str(e)), gr.skip(), gr.skip()]
            return
        yield [f"<p>Patching: running both prompts… <progress></progress></p>", gr.skip(), gr.skip()]
        trace_a, trace_b = MODEL_THREAD.run(self.lm.trace, ids_a), MODEL_THREAD.run(self.lm.trace, ids_b)
        state.patch_traces, state.patch, state.cell = (trace_a, trace_b), None, None
        sweep = patching_sweep(trace_a, trace_b, target_id)
        drawing()
        shown = 0.0
        while (result := MODEL_THREAD.run(next, sweep, None)) is not None:
            if state.patch_run != run:
                return  # a newer run owns the view
            state.patch = result
            if result.done < result.total and time.monotonic() - shown < PROGRESS_SECONDS:
                continue
            shown = time.monotonic()
            yield [self.patch_progress(result), self.map_figure(s), gr.skip()]
        yield [self.patch_progress(state.patch), self.map_figure(s),
               placeholder("Click a cell of the map to see that patched run", PLOT_HEIGHT)]

    def patch_progress(self, result: PatchingMap) -> str:
        if result.done < result.total:
            return (f'<p>Patching: <progress value="{result.done}" max="{result.total}"></progress> '
                    f"{result.done} of {result.total} runs</p>")
        target = style.escape(self.lm.tokenizer.decode([result.target]))
        how = ("restored = (p_patched − p_B) / (p_A − p_B)" if result.normalised
               else "p(target) itself: A and B give it about the same p, so nothing is normalised")
        return (f"<p>Done: {result.total} patched runs. Target <code>{target}</code>: p_A = {result.p_a:.3f}, "
                f"p_B = {result.p_b:.3f}; colour: {how}. Click a cell to see that run.</p>")

    def map_figure(self, s: Session) -> Any:
        state = probe_state(s)
        return presentation_fonts(patching_figure(state.patch, self.lm.tokenizer, state.cell, height=PLOT_HEIGHT),
                                  s.presentation)

    def on_cell(self, pick: str, s: Session) -> list[Any]:
        state = probe_state(s)
        parts = (pick or "").split(":")
        if state.patch is None or pick == state.pick or parts[0] != "cell" or len(parts) < 3:
            return [gr.skip(), gr.skip()]
        state.pick = pick
        try:
            layer, position = int(parts[1]), int(parts[2])
        except ValueError:
            return [gr.skip(), gr.skip()]
        n_layers, n = state.patch.patched.shape
        if not (0 <= layer < n_layers and 0 <= position < n):
            return [gr.skip(), gr.skip()]
        trace_a, trace_b = state.patch_traces
        patched = MODEL_THREAD.run(patched_logprobs, trace_a, trace_b, layer, [position])[0]
        last = len(trace_a) - 1
        clean_b = MODEL_THREAD.run(trace_b.logits_at, [last])[0].log_softmax(-1)
        clean_a = MODEL_THREAD.run(trace_a.logits_at, [last])[0].log_softmax(-1)
        state.cell = (layer, position)
        drawing()
        tok = self.lm.tokenizer
        token = style.token_label(tok.decode([int(trace_a.ids[position])]))
        figure = distributions_figure([("B", clean_b), ("B patched", patched), ("A", clean_a)], tok,
                                      f"Block {layer}, position {position} patched",
                                      f"A's state of {token} put into B's run", k=8, height=PLOT_HEIGHT)
        return [self.map_figure(s), presentation_fonts(figure, s.presentation)]
