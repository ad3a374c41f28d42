"""Sharing and saving a session: links that reproduce a run (the page's URL query, kept in step by assets/share.js),
the Copy link button, and the Save & share panel: export (session JSON, per-token CSV, offline HTML report) and
import (a session file replayed and checked token by token). The logic of the files is explorer/export.py."""
from __future__ import annotations

import dataclasses
import json
import tempfile
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from explorer.branches import Branch
from explorer.export import (MAX_SESSION_CHARS, parse_link, report_html, session_document, session_json,
                             tokens_csv)
from explorer.i18n import t
from explorer.model_thread import MODEL_THREAD
from explorer.probing import describe, intervention_records
from explorer.session import Session
from explorer.ui.api import (Replay, api_export_session, api_import_session, model_record, setting_checks,
                             start_replay)
from explorer.ui.common import Limits
from explorer.ui.output_strip import OutputStrip
from model import LanguageModel

ASSETS = Path(__file__).resolve().parents[2] / "assets"
EXPORT_DIR = Path(tempfile.gettempdir()) / "llm-explorer-exports"
EXPORT_KEEP_SECONDS = 3600  # exported files are copied into Gradio's cache on return; these are removed after
MAX_REPORT_RENDERS = 64  # a tab still filling its figures (the attention overview) is rendered again up to this often
NO_RUN = " The link's run=1 was not done: press Generate to run with the values shown."
# the settings a link holds, in the order of the controls the load event sets
LINK_SETTINGS = ("prompt", "chat", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "greedy", "stop_at_eos")


@lru_cache(maxsize=1)
def plotly_js() -> str:
    return get_plotlyjs()  # the plotly package's own plotly.min.js: the report needs no network



def export_refusal(s: Session) -> str | None:
    """Why this session cannot be exported now (a sentence), or None."""
    if s.generating or not s.steps:
        why = "wait until the generation ends" if s.generating else "generate some text first"
        return f"Nothing to export yet: {why}."
    return None


class Share:
    """Built in three places of the page (link_button in the title line, panel in the controls, wire at the end)."""

    def __init__(self, lm: LanguageModel, limits: Limits) -> None:
        self.lm, self.limits = lm, limits

    def link_button(self) -> None:
        self.copy = gr.Button(t("share.copy_link"), elem_id="copy-link", size="sm", scale=0, min_width=96)

    def panel(self) -> None:
        with gr.Accordion(t("share.panel"), open=False, elem_id="share-panel"):
            with gr.Row(elem_id="share-buttons"):
                self.export = gr.Button(t("share.export"), elem_id="export", size="sm", min_width=80)
                self.import_ = gr.Button(t("share.import"), elem_id="import", size="sm", min_width=150)
            self.files = gr.File(label=t("share.files"), file_count="multiple",
                                 interactive=False, visible=False, elem_id="export-files")
            self.message = gr.Markdown(t("share.intro"), elem_id="share-message")
        # what the page sends: a session file's text (read in the browser: the app takes no uploads), a link's view
        self.file_text = gr.Textbox(visible="hidden", elem_id="import-text")
        self.view_text = gr.Textbox(visible="hidden", elem_id="share-view-text")
        self.apply_view = gr.Button("view", visible="hidden", elem_id="share-apply-view")
        self.link_state = gr.Textbox(visible="hidden", elem_id="share-link-state")

    def wire(self, app: gr.Blocks, *, state: gr.State, controls: dict[str, Any], status: Any, strip: OutputStrip,
             tab_set: gr.Tabs, tabs: dict[str, Any], render_tab: Callable[[Session], dict]) -> None:
        """controls: the generation's controls by setting name (LINK_SETTINGS); tabs: title -> tab object; strip: the
        output strip above the tabs."""
        lm, limits = self.lm, self.limits
        tab_outputs = [c for t in tabs.values() for c in t.outputs]
        settings = [controls[name] for name in LINK_SETTINGS]

        def on_open(s: Session, request: gr.Request) -> dict:
            values, problems = parse_link(dict(request.query_params))
            updates = {}
            for name, component in zip(LINK_SETTINGS, settings):
                if name in values:
                    try:
                        updates[component] = self.fit(name, component, values[name])
                    except gr.Error as e:
                        problems.append(f"{name}: {e.message}")
            run = bool(values.get("run")) and not problems
            message = " ".join(problems) + (NO_RUN if problems and values.get("run") else "")
            view = {k: values[k] for k in ("tab", "token", "layer", "head") if k in values}
            return {**updates, status: message or gr.skip(),
                    self.link_state: json.dumps(dict(run=run, view=view))}

        app.load(on_open, [state], [*settings, status, self.link_state], api_visibility="private",
                 show_progress="hidden").then(
            None, [self.link_state], None, js="(link) => { window.explorerShare.opened(link); return []; }")

        def on_view(text: str, s: Session) -> dict:
            try:
                view = json.loads(text)
            except (TypeError, ValueError):
                return gr.skip()
            problems = self.select(s, view if isinstance(view, dict) else {}, tabs)
            return {tab_set: gr.Tabs(selected=s.active_tab), **strip.update(s), **self.view_updates(s, tabs),
                    **render_tab(s), status: " ".join(problems) if problems else gr.skip()}

        self.apply_view.click(on_view, [self.view_text, state], [tab_set, *strip.components, status, *tab_outputs],
                              api_visibility="private", show_progress="hidden",
                              js="(text, s) => [window.explorerShare.viewRequest(), s]")

        def on_export(s: Session) -> dict:
            if why := export_refusal(s):
                return {self.message: why, self.files: gr.File(visible=False)}
            # the report draws every tab here; what it recomputes with the model runs on the model thread
            with MODEL_THREAD.rendering(), s.drawing:
                paths = self.write_files(s, tabs, strip.html)
            return {self.files: gr.File(value=[str(p) for p in paths], visible=True),
                    self.message: f"{len(s.steps)} tokens exported"
                                  + (f", with {len(s.tree) - 1} branch(es)" if len(s.tree) > 1 else "")
                                  + (f" and the ablation ({describe(s.context_interventions)})"
                                     if s.context_interventions else "")
                                  + ": the session file opens here again (and replays exactly), the CSV (of the text "
                                    "shown) in a spreadsheet, the report in any browser, offline."}

        self.export.click(on_export, [state], [self.files, self.message], api_visibility="private")

        def on_import(text: str, s: Session) -> Iterator[dict]:
            if not text:
                return  # the file picker was closed
            try:
                replay = start_replay(lm, limits, text, record=True)
            except gr.Error as e:
                yield {self.message: f"**Not opened.** {e.message}"}
                return
            n = len(replay.document["steps"])
            for steps in replay.generation.follow(2.0):
                yield {self.message: f"Replaying the session file: {len(steps)} of {n} tokens…"}
            if (problem := replay.mismatch()) is not None:
                yield {self.message: f"**Not opened.** {problem}"}
                return
            n_branches = len(replay.document.get("branches", []))
            for done, branches in replay.branches(lm, limits):
                if isinstance(branches, str):
                    yield {self.message: f"**Not opened.** {branches}"}
                    return
                if done < n_branches:
                    yield {self.message: f"Replaying the session file's branches: {done} of {n_branches}…"}
            try:  # the file's settings as the controls will show them
                shown = {c: self.fit(k, c, replay.document["settings"][k]) for k, c in zip(LINK_SETTINGS, settings)}
            except gr.Error as e:
                yield {self.message: f"**Not opened.** This page cannot show the file's settings: {e.message}"}
                return
            problems = self.adopt(s, replay, branches, tabs)
            yield {**shown,
                   tab_set: gr.Tabs(selected=s.active_tab), **strip.update(s),
                   **self.view_updates(s, tabs), **render_tab(s),
                   status: f"Opened a session file: {n} tokens"
                           + (f" and {n_branches} branch(es)" if n_branches else "")
                           + (f", generated with {describe(replay.interventions)}" if replay.interventions else "")
                           + ", each token the same as this server generates now."
                           + (" " + " ".join(problems) if problems else ""),
                   self.message: f"**Opened**: {n} tokens replayed and checked."}

        self.import_.click(on_import, [self.file_text, state],
                           [*settings, tab_set, *strip.components, status, self.message, *tab_outputs],
                           api_visibility="private", show_progress="hidden", concurrency_id="generate",
                           concurrency_limit=limits.max_concurrent,
                           js=f"(text, s) => window.explorerShare.pickFile({MAX_SESSION_CHARS}).then((t) => [t, s])"
                           ).then(None, None, None, js="() => { window.explorerShare.ran(); return []; }")
        self.copy.click(None, None, None, js="() => { window.explorerShare.copy(); return []; }")
        gr.api(api_export_session(lm, limits), api_name="export_session", concurrency_limit=limits.max_concurrent,
               concurrency_id="generate")
        gr.api(api_import_session(lm, limits), api_name="import_session", concurrency_limit=limits.max_concurrent,
               concurrency_id="generate")

    def fit(self, name: str, component: Any, value: Any) -> Any:
        """A link's or a file's setting as its control will hold it: the API's check, then the control's own range
        and step (a slider of step 0.05 cannot hold 0.83); a user error otherwise."""
        value = setting_checks(self.limits)[name](value)
        if name == "prompt" and len(value) > (component.max_length or len(value)):
            raise gr.Error(f"the prompt is longer than the box's {component.max_length:,} characters.")
        if name == "chat" and value and self.lm.tokenizer.chat_template is None:
            raise gr.Error("this model has no chat template.")
        low, high = getattr(component, "minimum", None), getattr(component, "maximum", None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if (low is not None and value < low) or (high is not None and value > high):
                raise gr.Error(f"{value:g} is outside this page's range, {low:g} to {high:g}.")
            step = getattr(component, "step", None)
            if step and abs(round((value - low) / step) * step + low - value) > 1e-9:
                raise gr.Error(f"{value:g} is not a step of the slider ({step:g}).")
        return value

    def select(self, s: Session, view: dict[str, Any], tabs: dict[str, Any]) -> list[str]:
        """Apply a view (tab, token position, layer, head: text from a link, or values from a file) to the session;
        a sentence for each value that is not one of this model's or this context's."""
        cfg, problems = self.lm.config, []
        names = {t.lower().replace(" ", "-"): t for t in tabs}
        if "tab" in view:
            tab = names.get(str(view["tab"]).strip().lower().replace(" ", "-").replace("_", "-"))
            if tab is None:
                problems.append(f"There is no tab {str(view['tab'])[:40]!r}; the tabs are {', '.join(tabs)}.")
            else:
                s.active_tab = tab
        for name, low, high in (("layer", 0, cfg.n_layers - 1), ("token", 0, len(s.ids) - 1),
                                ("head", 0, cfg.n_heads - 1)):
            if name not in view or view[name] is None:
                continue
            if name == "head" and str(view[name]) == "mean":
                s.head = "mean"
                continue
            try:
                number = int(str(view[name]))
            except ValueError:
                number = None
            if number is None or not low <= number <= high:
                problems.append(f"The link's {name}={str(view[name])[:20]!r} is not one of this "
                                f"{'context' if name == 'token' else 'model'}'s ({low} to {high}).")
            elif name == "layer":
                s.layer = number
            elif name == "head":
                s.head = number
            else:
                s.selected = number
        return problems

    @staticmethod
    def view_updates(s: Session, tabs: dict[str, Any]) -> dict:
        """The Attention tab's layer slider and head menu show the session's, whichever tab is open."""
        attention = tabs.get("Attention")
        if attention is None:
            return {}
        return {attention.layer: gr.Slider(value=s.layer), attention.head: gr.Dropdown(value=str(s.head))}

    def adopt(self, s: Session, replay: Replay, branches: list[Branch], tabs: dict[str, Any]) -> list[str]:
        """The replayed run (its ablations, its branches, the branch it showed) becomes the session's, at the file's
        selection."""
        ids = replay.document["prompt_ids"]
        s.start(ids, replay.request.settings(), replay.interventions)
        for step in replay.generation.steps:
            s.add(step)
        s.adopt_trace(replay.generation.context_trace)
        s.generating = False
        s.tree.branches.extend(branches)
        s.switch_branch(replay.document.get("current_branch", 0))
        return self.select(s, replay.document.get("selection", {}), tabs)

    def selection(self, s: Session) -> dict[str, Any]:
        return dict(tab=s.active_tab, token=s.selected, layer=s.layer, head=s.head)

    def write_files(self, s: Session, tabs: dict[str, Any], render_output: Callable[[Session], str]) -> list[Path]:
        """The session file, the CSV and the report, in a folder of their own."""
        lm = self.lm
        EXPORT_DIR.mkdir(exist_ok=True)
        for old in EXPORT_DIR.glob("*/*"):
            if old.stat().st_mtime < time.time() - EXPORT_KEEP_SECONDS:
                old.unlink(missing_ok=True)
        folder = EXPORT_DIR / uuid.uuid4().hex
        folder.mkdir()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        document = session_document(model_record(lm), s.prompt_ids, s.settings, s.tree.branches[0].steps,
                                    self.selection(s), s.tree.records(), intervention_records(s.context_interventions),
                                    s.tree.current)
        files = {f"session-{stamp}.json": session_json(document),
                 f"tokens-{stamp}.csv": tokens_csv(s.steps, lambda i: lm.tokenizer.decode([i])),
                 f"report-{stamp}.html": self.report(s, tabs, render_output)}
        for name, text in files.items():
            (folder / name).write_text(text, encoding="utf-8")
        return [folder / name for name in files]

    def report(self, s: Session, tabs: dict[str, Any], render_output: Callable[[Session], str]) -> str:
        """Every tab drawn for the session's selection, as the page shows it in screen mode, on a copy of the session
        (the page's own caches of what the browser shows stay as they are)."""
        trace = s.trace(self.lm)  # the whole context's, built here once: the copy shares it
        copy = dataclasses.replace(s, extras={}, _cache={}, presentation=False)
        panels = []
        for title, tab in tabs.items():
            shown: dict[int, Any] = {}
            for _ in range(MAX_REPORT_RENDERS):
                for i, (component, value) in enumerate(zip(tab.outputs, tab.render(copy))):
                    if isinstance(value, dict) and isinstance(value.get("value"), go.Figure):
                        value = value["value"]  # an update that also shows the plot
                    if isinstance(value, go.Figure) or (isinstance(value, str) and value and
                                                        isinstance(component, gr.HTML)):
                        shown[i] = value
                if not any(isinstance(v, go.Figure) and isinstance(v.layout.meta, dict) and v.layout.meta.get("pending")
                           for v in shown.values()):
                    break
            panels.append((title, [shown[i] for i in sorted(shown)]))
        settings = s.settings
        meta = (f"{self.lm.name} · {len(s.steps)} tokens · "
                + ("greedy" if settings.get("greedy") else f"temperature {settings.get('temperature')}, top-k "
                   f"{settings.get('top_k')}, top-p {settings.get('top_p')}, seed {settings.get('seed')}")
                + f" · selected token at position {copy.position(trace)} · exported "
                + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        return report_html("LLM Explorer report", meta, render_output(s), panels, plotly_js(),
                           (ASSETS / "figure_export.js").read_text())
