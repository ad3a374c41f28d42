"""Per-user state: the prompt, the steps generated so far, what the user selected, and caches of what was computed
for the current context. The model is shared read-only; nothing here is visible to another session."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from explorer.model_thread import MODEL_THREAD, Recomputing
from model import LanguageModel, Step, Trace

_LOCK_MAKING = threading.Lock()
# tokens per task when a context's trace is built after a generation: another session's next token waits for one
TRACE_CHUNK = 32


@dataclass
class Session:
    prompt_ids: list[int] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
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
    generating: bool = False
    stop_requested: bool = False
    run: int = 0  # counts generations started in this session: a stopped one must stay stopped when another starts
    next_refresh: float = 0.0  # monotonic time before which the live refresh of the open tab waits
    rendered_steps: int = 0  # steps the open tab last showed while streaming
    _full_trace: Trace | None = None
    _cache: dict[tuple, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # objects a tab keeps for one context (e.g. caches)

    def start(self, prompt_ids: list[int], settings: dict[str, Any]) -> None:
        self.prompt_ids, self.steps, self.settings = list(prompt_ids), [], dict(settings)
        self.selected, self._full_trace = None, None
        self.generating, self.stop_requested, self.rendered_steps, self.next_refresh = True, False, 0, 0.0
        self.run += 1
        self._cache.clear()
        self.extras.clear()

    @property
    def drawing(self) -> threading.Lock:
        """Held while a render draws this session: two of its events (a tick and a click) never draw at once. Made on
        first use: gr.State deep-copies a new session, and a lock cannot be copied."""
        with _LOCK_MAKING:
            return self.__dict__.setdefault("_drawing", threading.Lock())

    def stopped(self, run: int) -> bool:
        """Whether generation number `run` must end: Stop, a closed tab, or a newer generation in this session."""
        return self.stop_requested or self.run != run

    def add(self, step: Step) -> None:
        self.steps.append(step)

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
            self._full_trace = MODEL_THREAD.run(lm.trace, self.ids)
        return Recomputing(self._full_trace)

    def adopt_trace(self, trace: Trace | None) -> None:
        """The whole context's trace, handed over by the generation that ended (None: prepare_trace builds it)."""
        if trace is not None and trace.ids.tolist() == self.ids:
            self._full_trace = trace

    def prepare_trace(self, lm: LanguageModel, run: Callable[..., Any]) -> None:
        """After a generation: the whole context's trace, built a chunk per call of run (the model thread's), so that
        other sessions' tokens go between the chunks; trace() then finds it. Called off the model thread."""
        ids = self.ids
        if self.generating or not ids or (self._full_trace is not None and len(self._full_trace) == len(ids)):
            return
        chunks = lm.trace_in_chunks(ids, TRACE_CHUNK)
        while (trace := run(next, chunks)) is None:
            pass
        if self.ids == ids and not self.generating:  # no new generation began meanwhile
            self._full_trace = trace

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
