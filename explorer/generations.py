"""Generations scheduled on the model thread (explorer/model_thread.py), a token at a time, with the reason each one
ended; and the server-wide count of running and ended generations that /stats reports."""
from __future__ import annotations

import gc
import threading
import time
from collections import Counter
from typing import Any, Callable, Iterator

from explorer.batching import BATCHER
from explorer.model_thread import MODEL_THREAD
from model import LanguageModel

FINISH_REASONS = {
    "stop": "an end-of-text token",  # what Step.finish_reason says
    "length": "the token limit (max new tokens, or the server's total context)",
    "time": "the server's time limit",
    "stopped": "Stop, a closed tab or a cancelled request",
    "error": "an error, raised to the reader",
}


class ActiveGenerations:
    """Generations running now, and those ended so far by reason with their tokens (the /stats endpoint reports
    them; tests check that Stop, a closed tab, a cancelled request or the time limit really end one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.ended: Counter[str] = Counter()
        self.tokens = 0
        self.longest_gap = 0.0  # seconds, since the last stats(): see Generation._add

    def enter(self) -> None:
        with self._lock:
            self.count += 1

    def leave(self, reason: str, n_tokens: int) -> None:
        with self._lock:
            self.count -= 1
            self.ended[reason] += 1
            self.tokens += n_tokens

    def gap(self, seconds: float) -> None:
        with self._lock:
            self.longest_gap = max(self.longest_gap, seconds)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            longest_gap, self.longest_gap = self.longest_gap, 0.0
            return dict(active_generations=self.count, ended_generations=dict(self.ended),
                        generated_tokens=self.tokens,
                        # seconds, since the previous call: what another session's next token may have waited for
                        longest_model_tasks=MODEL_THREAD.longest_tasks(reset=True),
                        # seconds, since the previous call: the longest wait of any generation between two of its
                        # tokens (its own step included), as the model produced them
                        longest_token_gap=longest_gap,
                        # objects the garbage collector no longer scans (explorer/model_thread.py freeze_startup_heap)
                        gc_frozen_objects=gc.get_freeze_count())


ACTIVE = ActiveGenerations()


class Generation:
    """One request's generation, advanced a token at a time on the model thread, so that the model never waits for
    the web server (Gradio pauses a streaming handler while it sends each update). Every running generation advances
    in the same steps, one forward pass for all (explorer/batching.py), with its own sampler, seed and recording.
    Readers follow the steps at their own pace; finish_reason says why it ended (a key of FINISH_REASONS, None while
    it runs)."""

    def __init__(self, lm: LanguageModel, ids: list[int], settings: dict[str, Any], time_limit: float,
                 record: bool = False, should_stop: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        """settings: keyword arguments of LanguageModel.generate (max_new_tokens, temperature, ..., stop_at_eos);
        time_limit: seconds from now after which no new token starts; clock and sleep: tests pass a fake clock. A
        model without `decoding` (a stand-in with only `generate`) advances alone, a token a step."""
        self.steps: list[Any] = []
        self.error: BaseException | None = None
        self.finish_reason: str | None = None
        self.context_trace: Any = None  # recorded runs that ended by themselves: the whole context's Trace
        self.ended = False  # set on the model thread as it ends (finish_reason follows, under _news)
        self._stop = threading.Event()
        self._news = threading.Condition()
        self._should_stop = should_stop
        self._clock, self._sleep = clock, sleep
        self._deadline = clock() + time_limit
        self._last_token: float | None = None  # the clock's time at the last token
        # nothing runs until the model thread's next step
        self.decoding = lm.decoding(ids, record=record, **settings) if hasattr(lm, "decoding") else None
        self._tokens = None if self.decoding is not None else lm.generate(ids, record=record, **settings)
        ACTIVE.enter()  # counted from now until the last token, so /stats never misses a queued one
        BATCHER.add(self)

    # what the batcher (explorer/batching.py) asks, on the model thread

    def stopping(self) -> bool:
        return self._stop.is_set() or self._should_stop()

    def advance_alone(self) -> None:
        step = next(self._tokens, None)
        if step is None:  # no room for a single new token (the prompt fills the context)
            self.end("length")
        else:
            self._add(step, self._last_trace)

    def _last_trace(self) -> Any:
        try:  # asked once more, a recording generation returns the whole context's trace (one token's work)
            next(self._tokens)
        except StopIteration as done:
            return done.value
        return None

    def take(self, step: Any) -> None:
        self._add(step, self.decoding.context_trace)

    def _add(self, step: Any, context_trace: Callable[[], Any]) -> None:
        """A new token for the readers; the end when it was the last, or when the time is up."""
        now = self._clock()
        if self._last_token is not None:
            ACTIVE.gap(now - self._last_token)
        self._last_token = now
        with self._news:
            self.steps.append(step)
            self._news.notify_all()
        if step.finish_reason is not None:
            self.context_trace = context_trace()
            self.end(step.finish_reason)
        elif self._clock() > self._deadline:
            self.end("time")

    def end(self, reason: str, error: BaseException | None = None) -> None:
        """Ends it now: frees the KV cache and the recorder (not at garbage collection), tells the readers."""
        if self.ended:
            return
        self.ended = True
        if self.decoding is not None:
            self.decoding.close()
        else:
            self._tokens.close()
        ACTIVE.leave(reason, len(self.steps))
        with self._news:
            self.error = error
            self.finish_reason = reason
            self._news.notify_all()

    def stop(self) -> None:
        """End at the next token (Stop, a closed tab, a cancelled request): at most the token being computed now
        is added."""
        self._stop.set()

    def follow(self, hz: float) -> Iterator[list[Any]]:
        """The steps so far, each time there are new ones but at most hz times a second, until the end (the last
        list comes once finish_reason is set); a reader that goes away (a closed generator) stops the generation."""
        seen, next_time = 0, float("-inf")
        try:
            while True:
                with self._news:
                    self._news.wait_for(lambda: len(self.steps) > seen or self.finish_reason is not None)
                    done = self.finish_reason is not None
                delay = next_time - self._clock()
                if delay > 0 and not done:
                    self._sleep(delay)
                n = len(self.steps)
                if n > seen or done:
                    seen, next_time = n, self._clock() + 1 / hz
                    yield self.steps[:n]
                if done:
                    break
        finally:
            self.stop()
        if self.error is not None:
            raise self.error
