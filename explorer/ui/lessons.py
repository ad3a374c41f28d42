"""The Lessons menu (title line) and the lesson panel (top of the controls): picking a lesson regenerates its run, unless
the session already shows exactly that run, and each step moves the session's one selection and says its sentence."""
from __future__ import annotations

import html
import logging
import re
from typing import Any, Callable, Iterator

import gradio as gr

from explorer.i18n import t
from explorer.lessons import TABS, Lesson, LessonError, check_against, load_lessons
from explorer.session import Session
from explorer.ui.api import GenerationRequest
from explorer.ui.architecture_tab import KIMI
from explorer.ui.attention_tab import AttentionTab
from explorer.ui.common import Limits
from explorer.ui.output_strip import OutputStrip
from model import LanguageModel

log = logging.getLogger(__name__)
NONE = ""  # the menu's value while no lesson plays
NOT_THIS_RUN = ("The app now shows another run than this lesson's. Pick the lesson again in the Lessons menu to "
                "regenerate it.")


def lessons_for(lm: LanguageModel, lessons: list[Lesson] | None = None) -> list[Lesson]:
    """The lessons written for this model that fit it (tabs, layers, heads, positions inside their runs); any other
    is left out with a line in the log: their texts describe what this model shows."""
    tabs = [t for t in TABS if t != "Experts" or lm.config.moe is not None]
    kept = []
    try:
        lessons = load_lessons() if lessons is None else lessons
    except LessonError as e:
        log.warning("No lessons: %s", e)
        return []
    for lesson in lessons:
        if lesson.model != lm.name:
            continue
        try:
            n_prompt = len(lm.prompt_ids(lesson.run["prompt"], chat=lesson.run["chat"]))
            check_against(lesson, lm.config.n_layers, lm.config.n_heads, tabs, n_prompt + lesson.run["max_new_tokens"])
        except (LessonError, ValueError) as e:
            log.warning("Lesson left out: %s", e)
            continue
        kept.append(lesson)
    return kept


def step_html(lesson: Lesson, index: int, note: str = "") -> str:
    """The panel: the lesson's title, "n / N", the step's sentence (escaped; **bold** kept) and a note if any."""
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(lesson.steps[index].text))
    extra = f'<p class="lesson-note">{html.escape(note)}</p>' if note else ""
    return (f'<div class="lesson-head"><b>{html.escape(lesson.title)}</b>'
            f'<span class="lesson-count">{index + 1} / {len(lesson.steps)}</span></div>'
            f'<p class="lesson-text">{text}</p>{extra}')


class Lessons:
    def __init__(self, lm: LanguageModel, limits: Limits) -> None:
        self.lm, self.limits = lm, limits
        self.lessons = {lesson.name: lesson for lesson in lessons_for(lm)}

    def menu(self) -> gr.Dropdown:
        """The menu, for the title line (hidden when no lesson fits the loaded model)."""
        choices = [(t("lessons.menu"), NONE)] + [(lesson.label, name) for name, lesson in self.lessons.items()]
        self.picker = gr.Dropdown(choices, value=NONE, show_label=False, container=False, elem_id="lessons",
                                  scale=0, min_width=210, interactive=True, visible=bool(self.lessons))
        return self.picker

    def panel(self) -> None:
        """The step's sentence with Previous / Next, for the top of the controls; shown while a lesson plays."""
        with gr.Column(visible=False, elem_id="lesson-panel") as self.box:
            self.text = gr.HTML(elem_id="lesson-text", padding=False)
            with gr.Row(elem_id="lesson-buttons"):
                self.prev = gr.Button(t("lessons.previous"), elem_id="lesson-prev", size="sm", min_width=60)
                self.next = gr.Button(t("lessons.next"), elem_id="lesson-next", size="sm", min_width=60)
                self.close = gr.Button(t("lessons.close"), elem_id="lesson-close", size="sm", variant="secondary",
                                       min_width=40)

    def current(self, s: Session) -> Lesson | None:
        return self.lessons.get(s.lesson)

    def request(self, lesson: Lesson) -> GenerationRequest:
        run = lesson.run
        return GenerationRequest.checked(run["prompt"], run["max_new_tokens"], run["temperature"], run["top_k"],
                                         run["top_p"], run["seed"], run["greedy"], run["chat"], run["stop_at_eos"],
                                         self.limits)

    def shows(self, s: Session, lesson: Lesson) -> bool:
        """Whether the session shows exactly the lesson's run, whole (not stopped, not still generating)."""
        request = self.request(lesson)
        return (not s.generating and not s.stop_requested and bool(s.steps) and s.settings == request.settings()
                and s.prompt_ids == request.prompt_ids(self.lm, self.limits))

    def wire(self, state: gr.State, tab_set: gr.Tabs, tabs: dict[str, Any], run_controls: list,
             generate: Callable[..., Iterator[dict]], generation_outputs: list, render_tab: Callable[[Session], dict],
             strip: OutputStrip, running: Callable[[bool], dict]) -> None:
        """Events of the menu and the panel. run_controls: the inputs of generate but the session (prompt, chat, max
        new, temperature, top-k, top-p, seed, greedy, stop at end-of-text); generation_outputs: generate's outputs."""
        attention, architecture = tabs.get("Attention"), tabs.get("Architecture")
        options = [c for c in (getattr(attention, "layer", None), getattr(attention, "head", None),
                               getattr(attention, "hide_sink", None), getattr(architecture, "show", None),
                               getattr(architecture, "view", None)) if c]
        tab_outputs = [c for t in tabs.values() for c in t.outputs]
        panel = [self.box, self.text, self.prev, self.next]
        step_outputs = list(dict.fromkeys([tab_set, *strip.components, *panel, *options, *generation_outputs[-2:],
                                           *tab_outputs]))

        def on_pick(name: str, s: Session) -> dict:
            if name not in self.lessons:
                return on_close(s)
            s.lesson, s.lesson_step = name, 0
            lesson = self.lessons[name]
            return {self.box: gr.Column(visible=True), self.text: step_html(lesson, 0, "Generating this lesson's run…"),
                    self.prev: gr.Button(interactive=False), self.next: gr.Button(interactive=False)}

        def ensure_run(s: Session) -> Iterator[dict]:
            lesson = self.current(s)
            if lesson is None:
                yield {}
                return
            run = lesson.run
            values = [run[k] for k in ("prompt", "chat", "max_new_tokens", "temperature", "top_k", "top_p", "seed",
                                       "greedy", "stop_at_eos")]
            controls = dict(zip(run_controls, values))
            if self.shows(s, lesson):
                yield controls
                return
            for i, update in enumerate(generate(*values, s)):
                yield {**controls, **update} if i == 0 else update

        def show(s: Session) -> dict:
            lesson = self.current(s)
            if lesson is None:
                return {self.box: gr.Column(visible=False)}
            index = min(max(s.lesson_step, 0), len(lesson.steps) - 1)
            buttons = {self.prev: gr.Button(interactive=index > 0),
                       self.next: gr.Button(interactive=index < len(lesson.steps) - 1)}
            done = {} if s.generating else running(False)
            if not self.shows(s, lesson):
                return {self.text: step_html(lesson, index, NOT_THIS_RUN), **buttons, **done}
            view = lesson.views()[index]
            s.active_tab, s.layer, s.head, s.hide_sink = view.tab, view.layer, view.head, view.hide_sink
            s.selected = view.token
            updates = {}
            if attention is not None:  # the Attention tab's controls, whether it is open or not
                AttentionTab.view(s).controls = (view.layer, view.head)
                updates = {attention.layer: gr.Slider(value=view.layer), attention.hide_sink: view.hide_sink,
                           attention.head: gr.Dropdown(value=str(view.head))}
            if architecture is not None:
                s.arch_show = architecture.loaded if view.architecture == "loaded" else KIMI
                s.arch_view, s.arch_rope_factor = view.arch_view, 0  # the RoPE view at the model's own stretch
                updates[architecture.show] = gr.Dropdown(value=s.arch_show)
                updates[architecture.view] = gr.Radio(value=view.arch_view)
            return {**render_tab(s), **updates, tab_set: gr.Tabs(selected=view.tab), **strip.update(s),
                    self.text: step_html(lesson, index), **buttons, **done}

        def move(by: int) -> Callable[[Session], dict]:
            def on_move(s: Session) -> dict:
                lesson = self.current(s)
                if lesson is not None:
                    s.lesson_step = min(max(s.lesson_step + by, 0), len(lesson.steps) - 1)
                return show(s)
            return on_move

        def on_close(s: Session) -> dict:
            s.lesson, s.lesson_step = NONE, 0
            return {self.box: gr.Column(visible=False), self.picker: gr.Dropdown(value=NONE)}

        quiet = dict(api_visibility="private", show_progress="hidden")
        self.picker.select(on_pick, [self.picker, state], [*panel, self.picker], **quiet).then(
            ensure_run, [state], [*run_controls, *generation_outputs], concurrency_limit=self.limits.max_concurrent,
            concurrency_id="generate", **quiet).then(show, [state], step_outputs, **quiet)
        self.prev.click(move(-1), [state], step_outputs, **quiet)
        self.next.click(move(1), [state], step_outputs, **quiet)
        self.close.click(on_close, [state], [self.box, self.picker], **quiet)
