"""Per-user state: the prompt, the steps generated so far, what the user selected, and caches of what was computed
for the current context. The model is shared read-only; nothing here is visible to another session."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from explorer.branches import BranchTree
from explorer.memory import SessionMemory, storage_bytes
from explorer.model_thread import MODEL_THREAD, Recomputing
from model import LanguageModel, Step, Trace

_LOCK_MAKING = threading.Lock()
# tokens per task when a context's trace is built after a generation: another session's next token waits for one
TRACE_CHUNK = 32
TRACE_DROPPED = ("The server needed room for other sessions, so it freed this text's recorded internals; the views "
                 "recompute them from the text.")
EXPIRED = ("This session was idle for a while, so the server freed it (its text and internals): generate again to "
           "explore.")


@dataclass
class Session:
    prompt_ids: list[int] = field(default_factory=list)
    tree: BranchTree = field(default_factory=BranchTree)  # the generation and its branches; `steps` are the current's
    settings: dict[str, Any] = field(default_factory=dict)  # sampler settings of the last generation
    selected: int | None = None  # selected token position; None: the last token
    layer: int = 0
    head: int | str = "mean"
    hide_sink: bool = False
    dims: int = 2
    active_tab: str = "Tokens"
    presentation: bool = False  # larger type in the plots, for a projector
    arch_show: str = ""  # Architecture tab: which model or config to draw ("" = the loaded one)
    arch_path: str = ""
    arch_view: str = "Blocks"  # Architecture tab: "Blocks" (the diagram) or "RoPE"
    arch_rope_factor: int = 0  # Architecture tab, RoPE: the context stretch (0 = the model's own, or ×4)
    moe_layer: int | None = None  # Experts tab: the MoE layer shown (None = the first)
    moe_load_all: bool = False  # Experts tab: load histogram of every MoE layer instead of one
    lesson: str = ""  # the lesson being played (its file's stem; "" = none) and its step, from 0
    lesson_step: int = 0
    probe_ablations: tuple = ()  # Probe tab: the ablations chosen (HeadAblation, ...), shown before and after
    probe_generate: bool = False  # Probe tab: the next generation runs with them
    context_interventions: tuple = ()  # what edited the current context's generation: its traces are made with them
    probe: Any = None  # the Probe tab's own state: the prompts compared, the patching map shown (probe_tab.py)
    generating: bool = False
    stop_requested: bool = False
    run: int = 0  # counts generations started in this session: a stopped one must stay stopped when another starts
    next_refresh: float = 0.0  # monotonic time before which the live refresh of the open tab waits
    rendered_steps: int = 0  # steps the open tab last showed while streaming
    _full_trace: Trace | None = None
    _cache: dict[tuple, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # objects a tab keeps for one context (e.g. caches)
    memory: SessionMemory | None = None  # the app's registry of what sessions hold (explorer/memory.py)
    notice: str = ""  # a sentence for the user about what the server did to this session (take_notice)

    def start(self, prompt_ids: list[int], settings: dict[str, Any], interventions: tuple = ()) -> None:
        self.context_interventions = tuple(interventions)
        self.prompt_ids, self.tree, self.settings = list(prompt_ids), BranchTree(), dict(settings)
        self._new_context()
        self.selected = None
        self.generating, self.stop_requested = True, False
        self.run += 1
        self.notice = ""
        self._report()

    @property
    def steps(self) -> list[Step]:
        """The generated tokens of the current branch (the original generation unless the user forced a token)."""
        return self.tree.steps

    @steps.setter
    def steps(self, steps: list[Step]) -> None:
        self.tree.steps = steps

    def _new_context(self) -> None:
        """What was computed for the last context goes (two branches of one length must not share a cached view)."""
        self._full_trace, self.rendered_steps, self.next_refresh = None, 0, 0.0
        self._cache.clear()
        self.extras.clear()

    def _left(self, index: int) -> None:
        """After branch `index` stopped being current: a generation of it ends, and neither it nor the new current
        branch (whose prefix it may share) keeps its steps' traces."""
        if self.generating:
            self.run += 1  # stopped(run) is then true for the running generation
            self.generating = False
        for branch in (self.tree.branches[index], self.tree.branches[self.tree.current]):
            if any(step.trace is not None for step in branch.steps):
                branch.steps = [replace(step, trace=None) for step in branch.steps]
        self._new_context()
        self._report()

    def fork(self, position: int, token_id: int, text: str) -> bool:
        """Force token_id (its text: text) at the generated token at `position` of the current branch; the branch
        that has it becomes current, selected at that token. True: a new branch, whose continuation the caller
        generates (as run `self.run`); False: an existing one, or nothing changed. ValueError (nothing changed) for a
        position or token that is not a candidate here."""
        with self._branching:
            before = self.tree.current
            new = self.tree.fork(position - self.n_prompt, token_id, text)
            if self.tree.current != before:
                self._left(before)
                self.selected = position
            if new:
                self.generating, self.stop_requested = True, False
                self.run += 1
        return new

    def switch_branch(self, index: int) -> None:
        """Show branch `index` (0: the original) in every view, as it was left; a running generation ends."""
        with self._branching:
            before = self.tree.current
            self.tree.switch(index)
            if index != before:
                self._left(before)
                if self.selected is not None and self.selected >= len(self.ids):
                    self.selected = None

    @property
    def drawing(self) -> threading.Lock:
        """Held while a render draws this session: two of its events (a tick and a click) never draw at once. Made on
        first use: gr.State deep-copies a new session, and a lock cannot be copied."""
        with _LOCK_MAKING:
            return self.__dict__.setdefault("_drawing", threading.Lock())

    def stopped(self, run: int) -> bool:
        """Whether generation number `run` must end: Stop, a closed tab, or a newer generation in this session."""
        return self.stop_requested or self.run != run

    @property
    def _branching(self) -> threading.Lock:
        """Held while a token is added or another branch becomes current, so that a generation's token never lands in
        a branch that became current meanwhile. Made on first use, as `drawing`."""
        with _LOCK_MAKING:
            return self.__dict__.setdefault("_branching_lock", threading.Lock())

    def add(self, step: Step, run: int | None = None) -> bool:
        """Append a generated token to the current branch; with run, only while generation `run` still owns the
        session (Stop, a fork or a switch may have come between). Whether it was added."""
        with self._branching:
            if run is not None and self.stopped(run):
                return False
            if step.index != len(self.steps):  # a branch's continuation counts its tokens from the forced one on
                step = replace(step, index=len(self.steps))
            # a new list, not an append: a render on another thread iterates the list it took (several times:
            # the timeline's values, then its ticks) while tokens stream, and must see one length throughout
            self.steps = [*self.steps, step]
        if len(self.steps) == 1:  # the recorder's buffer, which every step's trace views, is made for the whole run
            self._report()
        return True

    def _report(self) -> None:
        """Tell the registry that this session is in use, and what its traces hold."""
        if self.memory is not None:
            self.memory.use(self, self.trace_bytes())

    def trace_bytes(self) -> int:
        """Bytes that this session's traces keep alive (the buffers they view: while generating the recorder's, afterwards
        the whole context's trace and, until the first render strips them, the steps' traces)."""
        traces = [t for t in (self.steps[-1].trace if self.steps else None, self._full_trace) if t is not None]
        return storage_bytes(x for t in traces for x in (t.ids, t.residual, t.experts, t.expert_weights))

    def drop_trace(self) -> None:
        """Called by the registry when memory runs short: the traces and what was computed from them go; the views
        recompute them (prepare_trace) and the user is told why that takes a moment."""
        self._full_trace = None
        self.steps = [replace(step, trace=None) for step in self.steps]
        self._cache.clear()
        self.extras.clear()
        self.notice = TRACE_DROPPED

    def expire(self) -> None:
        """Called by the registry once this session was idle for the time to live: everything goes, the text too."""
        self.prompt_ids, self.tree, self.selected, self._full_trace = [], BranchTree(), None, None
        self._cache.clear()
        self.extras.clear()
        self.notice = EXPIRED

    def take_notice(self) -> str:
        """The sentence for the user about what the server did to this session (once), or ""."""
        notice, self.notice = self.notice, ""
        return notice

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + [s.token_id for s in self.steps]

    @property
    def n_prompt(self) -> int:
        return len(self.prompt_ids)

    @property
    def has_content(self) -> bool:
        return bool(self.prompt_ids)

    def trace(self, lm: LanguageModel) -> Trace | None:
        """While generating: the latest step's trace (the context up to the newest token, which it predicted).
        Afterwards: a trace of the whole context, computed once. What it recomputes with the model (a layer's
        attention, ...) runs on the model thread."""
        if not self.prompt_ids:
            return None
        if self.generating and self.steps and self.steps[-1].trace is not None:
            return Recomputing(self.steps[-1].trace)
        if self._full_trace is None or len(self._full_trace) != len(self.ids):
            self._full_trace = MODEL_THREAD.run(lm.trace, self.ids, self.context_interventions)
        return Recomputing(self._full_trace)

    def adopt_trace(self, trace: Trace | None) -> None:
        """The whole context's trace, handed over by the generation that ended (None: prepare_trace builds it)."""
        if trace is not None and trace.ids.tolist() == self.ids:
            self._full_trace = trace
        self._report()

    def prepare_trace(self, lm: LanguageModel, run: Callable[..., Any]) -> None:
        """After a generation: the whole context's trace, built a chunk per call of run (the model thread's), so that
        other sessions' tokens go between the chunks; trace() then finds it. Called off the model thread, before
        every render: it also tells the registry that this session is in use."""
        ids = self.ids
        if self.generating or not ids or (self._full_trace is not None and len(self._full_trace) == len(ids)):
            self._settle()
            return
        chunks = lm.trace_in_chunks(ids, TRACE_CHUNK, interventions=self.context_interventions)
        while (trace := run(next, chunks)) is None:
            pass
        if self.ids == ids and not self.generating:  # no new generation began meanwhile
            self._full_trace = trace
        self._settle()

    def _settle(self) -> None:
        """Once a generation has ended its steps' traces go (only its live views used them: they would keep its
        recorder's buffer alive beside the context's trace); then the registry hears what is held."""
        if not self.generating and self.steps and self.steps[-1].trace is not None:
            self.steps = [replace(step, trace=None) for step in self.steps]
        self._report()

    def generation_interventions(self) -> tuple:
        """The interventions the next generation runs with: the Probe tab's ablations, when it asked for them."""
        return self.probe_ablations if self.probe_generate else ()

    def position(self, trace: Trace) -> int:
        """The selected position, clamped to the trace; the last token by default."""
        last = len(trace) - 1
        return last if self.selected is None else max(0, min(self.selected, last))

    def cached(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """Memoise per context: keys include the context length, so new tokens invalidate naturally."""
        if key not in self._cache:
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[key] = compute()
        return self._cache[key]

    def current_step(self) -> Step | None:
        """The step that produced the selected token (the latest while nothing is selected); None when no token
        was generated yet or the selected token is part of the prompt."""
        if not self.steps:
            return None
        if self.selected is None:
            return self.steps[-1]
        index = self.selected - self.steps[0].position  # the steps' positions follow each other from the prompt's end
        return self.steps[min(index, len(self.steps) - 1)] if index >= 0 else None
