"""The Blocks app: controls, the streaming output, and the tabs; generation streams text every token and
refreshes the visible tab's plots on an adaptive throttle."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from explorer.model_thread import MODEL_THREAD
from explorer.session import Session
from explorer.ui.api import GenerationRequest, api_generate, api_stats
from explorer.analysis import stage_values
from explorer.ui.architecture_tab import ArchitectureTab
from explorer.ui.attention_tab import AttentionTab
from explorer.ui.common import Limits, model_summary
from explorer.ui.embeddings_tab import EmbeddingsTab
from explorer.ui.experts_tab import ExpertsTab
from explorer.ui.logit_lens_tab import LogitLensTab
from explorer.ui.next_token_tab import NextTokenTab
from explorer.ui.tokens_tab import TokensTab
from explorer.views.output import output_html
from model import LanguageModel

ASSETS = Path(__file__).resolve().parents[2] / "assets"
EXAMPLES = json.loads((ASSETS / "prompts.json").read_text())
RENDER_SHARE = 8


def head_html() -> str:
    return f"<script>{(ASSETS / 'explorer.js').read_text()}</script>"


def css() -> str:
    return (ASSETS / "explorer.css").read_text()


def live_stages(lm: LanguageModel):
    """The Architecture tab's live values: the selected token through every block of the current context."""
    def stages(s: Session) -> dict | None:
        trace = s.trace(lm)
        if trace is None:
            return None
        position = s.position(trace)
        return s.cached(("stages", len(trace), position), lambda: stage_values(trace, position))

    return stages


def finish_message(reason: str | None, n_tokens: int, rate: float, time_limit: float) -> str:
    """The status line once a generation has ended, saying why (a finish reason of explorer/generations.py)."""
    if reason == "stopped":
        return f"Stopped after {n_tokens} tokens"
    if reason == "time":
        return f"Stopped: time limit ({time_limit:g} s) reached after {n_tokens} tokens"
    why = {"stop": " (end of text)", "length": " (token limit)"}.get(reason or "", "")
    return f"Done: {n_tokens} tokens at {rate:.1f} tok/s{why}"


def build_app(lm: LanguageModel, limits: Limits = Limits()) -> gr.Blocks:
    tok = lm.tokenizer

    def render_output(s: Session) -> str:
        return output_html(tok, s.prompt_ids, s.steps, selected=s.selected)

    with gr.Blocks(title="LLM Explorer") as app:
        # a closed tab deletes the session: stop its generation at the next token
        state = gr.State(lambda: Session(), delete_callback=lambda s: setattr(s, "stop_requested", True))
        gr.Markdown(model_summary(lm), elem_id="model-summary")
        if lm.random_weights:
            gr.Markdown("⚠️ **Random weights.** This model was built from its configuration alone: the text it writes "
                        "is noise, but every shape, attention map and routing decision is computed by the real "
                        "architecture.", elem_id="random-weights-banner")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", lines=2, scale=6, elem_id="prompt",
                                value=EXAMPLES[0]["prompt"], max_length=limits.max_prompt_tokens * 16)
            with gr.Column(scale=2, min_width=220):
                examples = gr.Dropdown([e["label"] for e in EXAMPLES], value=None, label="Examples", elem_id="examples")
                chat = gr.Checkbox(label="Chat template", value=False, elem_id="chat",
                                   interactive=tok.chat_template is not None)
        with gr.Row(equal_height=True):
            max_new = gr.Slider(1, limits.max_new_tokens, value=40, step=1, label="Max new tokens",
                                elem_id="max-new-tokens")
            temperature = gr.Slider(0.0, 2.0, value=0.8, step=0.05, label="Temperature", elem_id="temperature")
            top_k = gr.Slider(0, limits.max_top_k, value=50, step=1, label="Top-k (0 = off)", elem_id="top-k")
            top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.01, label="Top-p", elem_id="top-p")
            seed = gr.Number(0, precision=0, label="Seed", elem_id="seed", minimum=0, maximum=2**31 - 1)
            with gr.Column(min_width=160):
                greedy = gr.Checkbox(label="Greedy", value=False, elem_id="greedy")
                # off: the model writes on past an end-of-text token, until max new tokens, the time limit or Stop
                stop_at_eos = gr.Checkbox(label="Stop at end-of-text", value=True, elem_id="stop-at-eos")
        with gr.Row():
            generate = gr.Button("Generate", variant="primary", elem_id="generate", scale=1)
            stop = gr.Button("Stop", variant="stop", elem_id="stop", scale=1)
            status = gr.Markdown("", elem_id="status")
        output = gr.HTML("", elem_id="output", label="Output")
        # clicks on tokens (assets/explorer.js) press this hidden button; its event reads the position in the browser
        select_token = gr.Button("select", elem_id="select-token")
        tabs: dict[str, Any] = {}
        with gr.Tabs(elem_id="tabs"):
            classes = [TokensTab, EmbeddingsTab, AttentionTab, NextTokenTab, LogitLensTab]
            if lm.config.moe is not None:
                classes.append(ExpertsTab)
            for cls in classes + [ArchitectureTab]:
                with gr.Tab(cls.title, elem_id=f"tab-{cls.title.lower().replace(' ', '-')}") as tab_block:
                    tab = ArchitectureTab(lm, live_stages(lm)) if cls is ArchitectureTab else cls(lm)
                tabs[cls.title] = tab
                tab.block = tab_block

        def render_tab(s: Session) -> dict:
            tab = tabs[s.active_tab]
            return dict(zip(tab.outputs, MODEL_THREAD.run(tab.render, s)))  # renders recompute with torch

        # While tokens stream, the plots of the open tab refresh on this timer, not in the generation's own updates:
        # Gradio handles every output of an event on every update (~1 ms for the text alone, ~25 ms once the 30
        # plots of all tabs are outputs too), so the per-token updates carry only the text and the status.
        refresher = gr.Timer(limits.refresh_seconds, active=False)

        def on_generate(text, use_chat, n_new, temp, k, p, seed_value, is_greedy, eos, s: Session) -> Iterator[dict]:
            request = GenerationRequest.checked(text, n_new, temp, k, p, seed_value, is_greedy, use_chat, eos, limits)
            ids = request.prompt_ids(lm, limits)
            s.start(ids, request.settings())
            yield {state: s, output: render_output(s), status: "Generating…", refresher: gr.Timer(active=True)}
            started = time.monotonic()
            # the model runs on a thread of its own; the browser redraws at most text_hz times a second
            generation = request.start(lm, ids, limits, record=True, should_stop=lambda: s.stop_requested)
            for steps in generation.follow(limits.text_hz):
                if s.stop_requested:
                    break  # before adding: Stop has already shown the text as it was
                for step in steps[len(s.steps):]:
                    s.add(step)
                yield {output: render_output(s),
                       status: f"Generating… {len(s.steps)} tokens, {len(s.steps) / (time.monotonic() - started):.1f} tok/s"}
            s.generating = False
            rate = len(s.steps) / max(time.monotonic() - started, 1e-9)
            reason = "stopped" if s.stop_requested else generation.finish_reason
            message = finish_message(reason, len(s.steps), rate, limits.time_limit_seconds)
            yield {output: render_output(s), status: message, refresher: gr.Timer(active=False)}

        def on_tick(s: Session) -> dict:
            if not s.generating or s.rendered_steps == len(s.steps) or time.monotonic() < s.next_refresh:
                return gr.skip()
            s.rendered_steps = len(s.steps)
            start = time.monotonic()
            update = render_tab(s)
            # a render runs on the model thread, between tokens: a tab that takes long to draw refreshes less often,
            # so that renders take at most about 1/RENDER_SHARE of it
            s.next_refresh = start + RENDER_SHARE * (time.monotonic() - start)
            return update

        tab_outputs = [c for t in tabs.values() for c in t.outputs]
        everything = [state, output, status] + tab_outputs
        gen_event = generate.click(on_generate, [prompt, chat, max_new, temperature, top_k, top_p, seed, greedy,
                                                 stop_at_eos, state], [state, output, status, refresher],
                                   api_visibility="private", show_progress="hidden",
                                   concurrency_limit=limits.max_concurrent, concurrency_id="generate")
        gen_event.then(render_tab, [state], tab_outputs, api_visibility="private", show_progress="hidden")
        # "once": a tick that comes while the last render still runs is dropped, so slow renders thin themselves out
        refresher.tick(on_tick, [state], tab_outputs, api_visibility="private", show_progress="hidden",
                       trigger_mode="once", concurrency_limit=None)

        def on_stop(s: Session) -> dict:
            s.stop_requested = True
            s.generating = False
            message = finish_message("stopped", len(s.steps), 0.0, limits.time_limit_seconds)
            # the cancelled generation never sends its last update, which stops the refresher: stop it here
            return {output: render_output(s), status: message, refresher: gr.Timer(active=False), **render_tab(s)}

        stop.click(on_stop, [state], everything + [refresher], cancels=[gen_event], api_visibility="private",
                   queue=False)

        def on_select(value: Any, s: Session) -> dict:
            try:
                s.selected = int(value)
            except (TypeError, ValueError):
                return gr.skip()
            return {output: render_output(s), **render_tab(s)}

        position = gr.Number(visible=False)
        select_token.click(on_select, [position, state], everything, api_visibility="private",
                           js="(position, s) => [window.__explorerPos ?? null, s]")

        for title, tab in tabs.items():
            def on_tab(s: Session, title: str = title) -> dict:
                s.active_tab = title
                return render_tab(s)

            tab.block.select(on_tab, [state], everything, api_visibility="private")
            for control in getattr(tab, "controls", []):
                def on_control(s: Session, *values, tab=tab) -> dict:
                    tab.set_controls(s, *values)
                    return dict(zip(tab.outputs, MODEL_THREAD.run(tab.render, s)))

                # always_last: a textbox typed into while a render runs still ends on what was typed
                control.input(on_control, [state, *tab.controls], tab.outputs, api_visibility="private",
                              trigger_mode="always_last")

        def on_example(label: str) -> tuple[str, bool]:
            example = next(e for e in EXAMPLES if e["label"] == label)
            return example["prompt"], bool(example["chat"]) and tok.chat_template is not None

        examples.input(on_example, [examples], [prompt, chat], api_visibility="private")
        gr.api(api_generate(lm, limits), api_name="generate", concurrency_limit=limits.max_concurrent,
               concurrency_id="generate")
        gr.api(api_stats(), api_name="stats", queue=False)
    return app
