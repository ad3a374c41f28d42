"""The Blocks app: controls, the streaming output, and the tabs; generation streams text every token and
refreshes the visible tab's plots on an adaptive throttle."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from explorer.memory import SessionMemory
from explorer.model_thread import MODEL_THREAD
from explorer.session import Session
from explorer.ui.api import (GenerationRequest, api_generate, api_patching, api_stats, check_event_inputs, shown,
                              start_continuation, user_error)
from explorer.analysis import stage_values
from explorer.i18n import t
from explorer.ui.architecture_tab import ArchitectureTab
from explorer.ui.attention_tab import AttentionTab
from explorer.ui.common import Limits, model_summary, presentation_fonts
from explorer.ui.embeddings_tab import EmbeddingsTab
from explorer.ui.experts_tab import ExpertsTab
from explorer.ui.gradio_sessions import lazy_session_configs, without_matplotlib
from explorer.ui.lessons import Lessons
from explorer.ui.logit_lens_tab import LogitLensTab
from explorer.ui.next_token_tab import NextTokenTab
from explorer.ui.output_strip import OutputStrip
from explorer.ui.probe_tab import ProbeTab
from explorer.ui.share import Share
from explorer.ui.tokens_tab import TokensTab
from model import LanguageModel

ASSETS = Path(__file__).resolve().parents[2] / "assets"
EXAMPLES = json.loads((ASSETS / "prompts.json").read_text())
RENDER_SHARE = 8
# the open tab's first refresh after Generate comes this soon (then every limits.refresh_seconds): it showed "Type a
# prompt and press Generate" for the run's first second otherwise
FIRST_REFRESH_SECONDS = 0.25
TITLE = "<h1>LLM Explorer</h1><p>" + t("app.tagline") + "</p>"
# the tabs' labels by their titles (ids, which links and lessons name, stay English)
TAB_LABELS = {"Tokens": "tab.tokens", "Embeddings": "tab.embeddings", "Attention": "tab.attention",
              "Next token": "tab.next_token", "Logit lens": "tab.logit_lens", "Experts": "tab.experts",
              "Architecture": "tab.architecture", "Probe": "tab.probe"}
ENDED_AT_ONCE = (". The model ended at once: an instruct model given a bare text often does. Tick Chat template to "
                 "ask it something, or untick Stop at end-of-text to let it write on.")


def head_html() -> str:
    return "".join(f"<script>{path.read_text()}</script>" for path in sorted(ASSETS.glob("*.js")))


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
    """The explorer's page. Its texts are keys of explorer/i18n.py: launch it with i18n=I18N (app.py does), without
    which the page shows the keys themselves."""
    tok = lm.tokenizer

    share = Share(lm, limits)
    lessons = Lessons(lm, limits)
    with gr.Blocks(title="LLM Explorer") as app:
        # a closed tab deletes the session: stop its generation at the next token. The registry frees the traces of
        # idle sessions over its cap and clears sessions that stop talking (API clients never close a tab)
        memory = SessionMemory(limits.trace_memory_mib << 20, limits.session_ttl_seconds)
        state = gr.State(lambda: Session(memory=memory), delete_callback=lambda s: setattr(s, "stop_requested", True))
        with gr.Row(elem_id="header", equal_height=True):
            gr.HTML(TITLE, elem_id="title", padding=False)
            presentation = gr.Checkbox(label=t("app.presentation"), value=False, elem_id="presentation",
                                       container=False, scale=0, min_width=170)
            lessons.menu()
            share.link_button()
            gr.HTML(model_summary(lm), elem_id="model-summary", padding=False)
        if lm.random_weights:
            gr.Markdown(t("app.random_weights"), elem_id="random-weights-banner")
        with gr.Row(elem_id="main", equal_height=False):
            with gr.Column(scale=0, min_width=290, elem_id="controls"):
                lessons.panel()
                prompt = gr.Textbox(label=t("controls.prompt"), lines=3, max_lines=8, elem_id="prompt",
                                    value=EXAMPLES[0]["prompt"], max_length=limits.max_prompt_tokens * 16)
                # a menu: picking an example fills the prompt, then the menu empties again (nothing else writes it)
                examples = gr.Dropdown([e["label"] for e in EXAMPLES], value=None, label=t("controls.examples"),
                                       elem_id="examples", interactive=True)
                chat = gr.Checkbox(label=t("controls.chat"), value=False, elem_id="chat", info=t("controls.chat_info"),
                                   interactive=tok.chat_template is not None)
                with gr.Row(elem_id="buttons"):
                    generate = gr.Button(t("controls.generate"), variant="primary", elem_id="generate", min_width=100)
                    stop = gr.Button(t("controls.stop"), variant="secondary", elem_id="stop", interactive=False,
                                     min_width=80)
                status = gr.Markdown("", elem_id="status")
                with gr.Accordion(t("controls.sampling"), open=True, elem_id="sampling"):
                    max_new = gr.Slider(1, limits.max_new_tokens, value=40, step=1, label=t("controls.max_new_tokens"),
                                        elem_id="max-new-tokens")
                    greedy = gr.Checkbox(label=t("controls.greedy"), value=False, elem_id="greedy")
                    temperature = gr.Slider(0.0, 2.0, value=0.8, step=0.05, label=t("controls.temperature"),
                                            elem_id="temperature")
                    top_k = gr.Slider(0, limits.max_top_k, value=50, step=1, label=t("controls.top_k"), elem_id="top-k")
                    top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.01, label=t("controls.top_p"), elem_id="top-p")
                    seed = gr.Number(0, precision=0, label=t("controls.seed"), elem_id="seed", minimum=0,
                                     maximum=2**31 - 1)
                    # off: the model writes on past an end-of-text token, until max new tokens, the time limit or Stop
                    stop_at_eos = gr.Checkbox(label=t("controls.stop_at_eos"), value=True, elem_id="stop-at-eos")
                share.panel()
            with gr.Column(scale=1, elem_id="views"):
                strip = OutputStrip(tok)
                render_output, text_outputs = strip.update, strip.components
                # clicks on tokens (assets/explorer.js) press this hidden button; its event reads the position
                select_token = gr.Button("select", elem_id="select-token")
                # likewise a click on a candidate of the Next token tab (force it: a branch) and on the branches' bar
                branch_token = gr.Button("branch", elem_id="branch-token")
                switch_branch = gr.Button("switch", elem_id="switch-branch")
                tabs: dict[str, Any] = {}
                with gr.Tabs(elem_id="tabs") as tab_set:
                    classes = [TokensTab, EmbeddingsTab, AttentionTab, NextTokenTab, LogitLensTab]
                    if lm.config.moe is not None:
                        classes.append(ExpertsTab)
                    for cls in classes + [ArchitectureTab, ProbeTab]:
                        with gr.Tab(t(TAB_LABELS[cls.title]), id=cls.title,
                                    elem_id=f"tab-{cls.title.lower().replace(' ', '-')}") as tab_block:
                            tab = ArchitectureTab(lm, live_stages(lm)) if cls is ArchitectureTab else cls(lm)
                        tabs[cls.title] = tab
                        tab.block = tab_block

        def render_tab(s: Session, tab: Any = None) -> dict:
            """The open tab's outputs (or those of `tab`), drawn for this session."""
            tab = tab or tabs[s.active_tab]
            # drawn here; what the render recomputes with the model runs on the model thread (Recomputing)
            with MODEL_THREAD.rendering():
                s.prepare_trace(lm, MODEL_THREAD.run)  # after a generation, once: in chunks, other sessions between
                if notice := s.take_notice():  # e.g. its trace was freed for other sessions (and just recomputed)
                    gr.Info(notice)
                with s.drawing:
                    values = tab.render(s)
            return {c: presentation_fonts(v, s.presentation) for c, v in zip(tab.outputs, values)}

        # While tokens stream, the plots of the open tab refresh on this timer, not in the generation's own updates:
        # Gradio handles every output of an event on every update (~1 ms for the text alone, ~25 ms once the 30
        # plots of all tabs are outputs too), so the per-token updates carry only the text and the status.
        refresher = gr.Timer(limits.refresh_seconds, active=False)

        def on_generate(text, use_chat, n_new, temp, k, p, seed_value, is_greedy, eos, s: Session) -> Iterator[dict]:
            request = GenerationRequest.checked(text, n_new, temp, k, p, seed_value, is_greedy, use_chat, eos, limits)
            ids = request.prompt_ids(lm, limits)
            interventions = s.generation_interventions()  # the Probe tab's ablations, when it asked for them
            s.start(ids, request.settings(), interventions)
            run = s.run
            note = f" {request.note}" if request.note else ""  # e.g. a tiny temperature decodes greedily
            if interventions:
                note += f" Ablated: {'; '.join(map(str, interventions))} (the Probe tab removes it)."
            yield {state: s, **render_output(s), status: "Generating…" + note,
                   refresher: gr.Timer(FIRST_REFRESH_SECONDS, active=True),
                   **running(True)}
            # the model runs on a thread of its own; the browser redraws at most text_hz times a second
            generation = request.start(lm, ids, limits, record=True, should_stop=lambda: s.stopped(run),
                                       interventions=interventions)
            if (ended := (yield from stream(s, run, generation))) is None:
                return  # a newer generation owns the session (and its screen) now
            reason, message = ended
            if reason == "stop" and len(s.steps) <= 2 and not request.chat and tok.chat_template is not None:
                message += ENDED_AT_ONCE
            message += note
            yield {**render_output(s), status: message, refresher: gr.Timer(active=False), **running(False)}

        def stream(s: Session, run: int, generation: Any) -> Iterator[dict]:
            """The text while generation `run` writes into the session's current branch; returns why it ended and
            the status line saying so, or None when a newer generation (or another branch) owns the session."""
            started, base = time.monotonic(), len(s.steps)  # base: a branch's tokens before its continuation
            head = None  # the strip's settled part as last sent: an update leaves it out while it stays the same
            try:
                for steps in generation.follow(limits.text_hz):
                    if s.stopped(run) or not all(s.add(step, run) for step in steps[len(s.steps) - base:]):
                        break  # Stop has already shown the text as it was (or another branch is current now)
                    n = len(s.steps) - base
                    text = strip.update(s, unchanged_head=head)
                    head = text.get(strip.head, head)
                    yield {**text,
                           status: f"Generating… {n} tokens, {n / (time.monotonic() - started):.1f} tok/s"}
                s.adopt_trace(generation.context_trace)
            finally:  # however it ended, an error included (after_generation then switches the buttons back)
                if s.run == run:
                    s.generating = False
            if s.run != run:
                return None
            n = len(s.steps) - base
            reason = "stopped" if s.stop_requested else generation.finish_reason
            return reason, finish_message(reason, n, n / max(time.monotonic() - started, 1e-9),
                                          limits.time_limit_seconds)

        def on_branch(value: Any, s: Session) -> Iterator[dict]:
            """A candidate of a generated token was clicked ("position,token id"): the branch that has it there
            becomes current; a new one is generated on from it with the generation's settings."""
            try:
                position, token_id = (int(part) for part in str(value).split(","))
                new = s.fork(position, token_id, tok.decode([token_id]))
            except ValueError:
                raise user_error(f"{shown(value)} is not a candidate of a generated token of this text.") from None
            branch = s.tree.current
            label = "the original" if branch == 0 else f"branch {branch}"
            if not new:  # an existing branch (after_generation draws the open tab)
                yield {**render_output(s), status: f"Showing {label}.", refresher: gr.Timer(active=False),
                       **running(s.generating)}
                return
            run = s.run
            yield {**render_output(s), status: f"Generating {label}…",
                   refresher: gr.Timer(FIRST_REFRESH_SECONDS, active=True),
                   **running(True)}
            generation = start_continuation(lm, limits, s.settings, s.ids, len(s.steps), record=True,
                                            should_stop=lambda: s.stopped(run), interventions=s.context_interventions)
            if generation is None:  # nothing left to write after the forced token
                s.generating = False
                yield {**render_output(s), status: f"Done: {label} ends at its forced token.",
                       refresher: gr.Timer(active=False), **running(False)}
                return
            if (ended := (yield from stream(s, run, generation))) is not None:
                yield {**render_output(s), status: f"{ended[1]} · {label}", refresher: gr.Timer(active=False),
                       **running(False)}

        def running(yes: bool) -> dict:
            """While a generation runs Generate is off (a second click would restart it) and Stop is on."""
            return {generate: gr.Button(interactive=not yes), stop: gr.Button(interactive=yes)}

        def after_generation(s: Session) -> dict:
            # runs however the generation ended (an error, Stop), so the buttons never stay switched; unless a newer
            # generation has started meanwhile
            return {**({} if s.generating else running(False)), **render_tab(s)}

        def on_tick(s: Session) -> dict:
            if not s.generating or s.rendered_steps == len(s.steps) or time.monotonic() < s.next_refresh:
                return gr.skip()
            s.rendered_steps = len(s.steps)
            start = time.monotonic()
            update = render_tab(s)
            # a render runs on the model thread, between tokens: a tab that takes long to draw refreshes less often,
            # so that renders take at most about 1/RENDER_SHARE of it
            s.next_refresh = start + RENDER_SHARE * (time.monotonic() - start)
            return {**update, refresher: gr.Timer(limits.refresh_seconds)}  # after the run's first, the usual pace

        tab_outputs = [c for t in tabs.values() for c in t.outputs]
        everything = [state, *text_outputs, status] + tab_outputs
        gen_event = generate.click(on_generate, [prompt, chat, max_new, temperature, top_k, top_p, seed, greedy,
                                                 stop_at_eos, state],
                                   [state, *text_outputs, status, refresher, generate, stop],
                                   api_visibility="private", show_progress="hidden",
                                   concurrency_limit=limits.max_concurrent, concurrency_id="generate")
        gen_event.then(after_generation, [state], tab_outputs + [generate, stop], api_visibility="private",
                       show_progress="hidden")
        pick = gr.Textbox(visible=False)
        branch_event = branch_token.click(on_branch, [pick, state], [*text_outputs, status, refresher, generate, stop],
                                          api_visibility="private", show_progress="hidden",
                                          concurrency_limit=limits.max_concurrent, concurrency_id="generate",
                                          js="(pick, s) => [window.__explorerFork ?? '', s]")
        branch_event.then(after_generation, [state], tab_outputs + [generate, stop], api_visibility="private",
                          show_progress="hidden")
        # "once": a tick that comes while the last render still runs is dropped, so slow renders thin themselves out
        refresher.tick(on_tick, [state], tab_outputs + [refresher], api_visibility="private", show_progress="hidden",
                       trigger_mode="once", concurrency_limit=None)

        def on_stop(s: Session) -> dict:
            s.stop_requested = True
            s.generating = False
            message = finish_message("stopped", len(s.steps), 0.0, limits.time_limit_seconds)
            # the cancelled generation never sends its last update, which stops the refresher: stop it here. At once:
            # the views are redrawn after (a slow redraw must not land after a new generation has begun)
            return {**render_output(s), status: message, refresher: gr.Timer(active=False), **running(False)}

        # a branch's continuation ends at its next token by the session's stop check (it then says "Stopped ... ·
        # branch n"); cancelling its event as well, when it was never run, leaves Gradio's "Error" on the status line
        def after_stop(s: Session) -> dict:
            """after_generation, and Stop's message once more: Stop answers at once, outside the queue, so an update
            the stream had already sent could land after it and leave "Generating…" on the status line; this comes
            through the queue, after anything the stream sent."""
            values = after_generation(s)
            if not s.generating:
                message = finish_message("stopped", len(s.steps), 0.0, limits.time_limit_seconds)
                values[status] = message + (f" · branch {s.tree.current}" if s.tree.current else "")
            return values

        stop.click(on_stop, [state], [*text_outputs, status, refresher, generate, stop], cancels=[gen_event],
                   api_visibility="private", show_progress="hidden", queue=False).then(
            after_stop, [state], tab_outputs + [generate, stop, status], api_visibility="private",
            show_progress="hidden")

        def on_select(value: Any, s: Session) -> dict:
            try:
                s.selected = int(value)
            except (TypeError, ValueError):
                return gr.skip()
            return {**render_output(s), **render_tab(s)}

        # progress: a small timer on the plots that are being redrawn, none over the text (whose selection just moved)
        on_views = dict(show_progress="minimal", show_progress_on=tab_outputs)
        position = gr.Number(visible=False)
        select_token.click(on_select, [position, state], everything, api_visibility="private", **on_views,
                           js="(position, s) => [window.__explorerPos ?? null, s]")

        def on_switch(value: Any, s: Session) -> dict:
            """A button of the branches' bar: that branch in every view (a running generation ends where it is)."""
            try:
                s.switch_branch(int(value))
            except (TypeError, ValueError):
                raise user_error(f"There is no branch {shown(value)} in this text.") from None
            label = "the original" if s.tree.current == 0 else f"branch {s.tree.current}"
            return {**render_output(s), status: f"Showing {label}.", refresher: gr.Timer(active=False),
                    **running(False), **render_tab(s)}

        branch_number = gr.Number(visible=False)
        switch_branch.click(on_switch, [branch_number, state],
                            [*text_outputs, status, refresher, generate, stop, *tab_outputs], api_visibility="private",
                            js="(number, s) => [window.__explorerBranch ?? null, s]", **on_views)

        for title, tab in tabs.items():
            def on_tab(s: Session, title: str = title) -> dict:
                s.active_tab = title
                return render_tab(s)

            tab.block.select(on_tab, [state], tab_outputs, api_visibility="private", **on_views)
            for control in getattr(tab, "controls", []):
                def on_control(s: Session, *values, tab=tab) -> dict:
                    before = s.selected
                    tab.set_controls(s, *values)  # may move the selection (the Next token tab's step slider)
                    text = render_output(s) if s.selected != before else {}
                    return {**text, **render_tab(s, tab)}  # this control's tab, open or not

                # always_last: a textbox typed into while a render runs still ends on what was typed
                control.input(on_control, [state, *tab.controls], [*text_outputs, *tab.outputs],
                              api_visibility="private", trigger_mode="always_last", show_progress="hidden")

        def on_example(picked: gr.SelectData) -> tuple[str, bool, Any]:
            # only an option picked from the open menu lands here (focus, blur and Tab do not select), and the
            # menu empties again, so picking the same example twice works and nothing else overwrites the prompt
            example = next(e for e in EXAMPLES if e["label"] == picked.value)
            return example["prompt"], bool(example["chat"]) and tok.chat_template is not None, gr.Dropdown(value=None)

        examples.select(on_example, None, [prompt, chat, examples], api_visibility="private", queue=False)

        def on_greedy(is_greedy: bool) -> list:
            # greedy takes the most likely token: the sampler's settings do nothing then, and look it
            return [gr.Slider(interactive=not is_greedy)] * 3

        def on_presentation(on: bool, s: Session) -> dict:
            s.presentation = bool(on)  # the page's own type grows in CSS (assets/explorer.css); plots here
            return render_tab(s)

        presentation.change(on_presentation, [presentation, state], everything, api_visibility="private",
                            show_progress="hidden")

        lessons.wire(state, tab_set, tabs, [prompt, chat, max_new, temperature, top_k, top_p, seed, greedy,
                     stop_at_eos], on_generate, [state, *text_outputs, status, refresher, generate, stop], render_tab,
                     strip, running)
        greedy.change(on_greedy, [greedy], [temperature, top_k, top_p], api_visibility="private", queue=False)
        gr.api(api_generate(lm, limits), api_name="generate", concurrency_limit=limits.max_concurrent,
               concurrency_id="generate")
        tabs[ProbeTab.title].wire(state, render_tab)
        gr.api(api_patching(lm), api_name="patching", concurrency_limit=limits.max_concurrent,
               concurrency_id="generate")
        gr.api(api_stats(memory), api_name="stats", queue=False)
        share.wire(app, state=state, status=status, strip=strip, tab_set=tab_set, tabs=tabs, render_tab=render_tab,
                   controls=dict(prompt=prompt, chat=chat, max_new_tokens=max_new, temperature=temperature,
                                 top_k=top_k, top_p=top_p, seed=seed, greedy=greedy, stop_at_eos=stop_at_eos))
    check_event_inputs(app)  # part of the app, whoever launches it
    lazy_session_configs()  # a new session costs the event loop no configuration of 215 components
    without_matplotlib()
    return app
