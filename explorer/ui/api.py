"""Generation requests, checked against the server's limits, for the UI and the named API endpoint alike."""
from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import gradio as gr

from explorer.model_thread import MODEL_THREAD
from explorer.ui.common import Limits
from model import LanguageModel

MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    greedy: bool
    chat: bool

    @classmethod
    def checked(cls, prompt: Any, max_new_tokens: Any, temperature: Any, top_k: Any, top_p: Any, seed: Any,
                greedy: Any, chat: Any, limits: Limits) -> "GenerationRequest":
        """Validate everything a client could send; raise gr.Error with a message a user can act on."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise gr.Error("The prompt is empty: type some text first.")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise gr.Error("The prompt is not valid Unicode (it holds lone surrogates); send UTF-8 text.") from None
        number = lambda v, name: _number(v, name)
        temperature, top_p = number(temperature, "temperature"), number(top_p, "top-p")
        if temperature < 0 or temperature > 10:
            raise gr.Error(f"Temperature must be between 0 and 10, got {temperature}.")
        if not 0 < top_p <= 1:
            raise gr.Error(f"Top-p must be in (0, 1], got {top_p}.")
        top_k = _integer(top_k, "top-k", 0, limits.max_top_k)
        max_new_tokens = _integer(max_new_tokens, "max new tokens", 1, limits.max_new_tokens)
        seed = _integer(0 if seed is None else seed, "seed", 0, MAX_SEED)
        return cls(prompt, max_new_tokens, temperature, top_k, top_p, seed, bool(greedy), bool(chat))

    def prompt_ids(self, lm: LanguageModel, limits: Limits) -> list[int]:
        if self.chat and lm.tokenizer.chat_template is None:
            raise gr.Error("This model has no chat template; untick 'Chat template'.")
        if len(self.prompt) > limits.max_prompt_tokens * 64:  # refuse before tokenizing megabytes
            raise gr.Error(f"The prompt is {len(self.prompt):,} characters; this server accepts at most "
                           f"{limits.max_prompt_tokens} tokens.")
        ids = lm.prompt_ids(self.prompt, chat=self.chat)
        if len(ids) > limits.max_prompt_tokens:
            raise gr.Error(f"The prompt is {len(ids)} tokens; this server accepts at most {limits.max_prompt_tokens}.")
        return ids

    def settings(self) -> dict[str, Any]:
        return asdict(self)

    def generate_kwargs(self, n_prompt: int, limits: Limits) -> dict[str, Any]:
        """Arguments for LanguageModel.generate; new tokens also capped by the server's total context."""
        n_new = min(self.max_new_tokens, limits.max_context - n_prompt)
        return dict(max_new_tokens=max(n_new, 0), temperature=self.temperature, top_k=self.top_k,
                    top_p=self.top_p, seed=self.seed, greedy=self.greedy)


class ActiveGenerations:
    """How many generations are running now (the /stats endpoint reports it; tests check that Stop, a closed tab
    or the time limit really end one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def enter(self) -> None:
        with self._lock:
            self.count += 1

    def leave(self) -> None:
        with self._lock:
            self.count -= 1


ACTIVE = ActiveGenerations()


class Generation:
    """One request's generation, advanced a token at a time on the model thread (explorer/model_thread.py), so
    that the model never waits for the web server (Gradio pauses a streaming handler while it sends each update)
    and concurrent generations take turns. Readers follow the steps at their own pace."""

    def __init__(self, lm: LanguageModel, ids: list[int], request: GenerationRequest, limits: Limits,
                 record: bool = False, should_stop: Callable[[], bool] = lambda: False) -> None:
        self.steps: list[Any] = []
        self.error: BaseException | None = None
        self.stopped = False
        self._stop = threading.Event()
        self._news = threading.Condition()
        self._done = False
        self._should_stop = should_stop
        self._deadline = time.monotonic() + limits.time_limit_seconds
        # a generator object: nothing runs until the model thread asks for the first token
        self._tokens = lm.generate(ids, record=record, **request.generate_kwargs(len(ids), limits))
        ACTIVE.enter()  # counted from now until the last token, so /stats never misses a queued one
        MODEL_THREAD.submit(self._advance)

    def _advance(self) -> None:
        """One token, then back of the model thread's queue for the next (other sessions and renders go between)."""
        try:
            if self._stop.is_set() or self._should_stop():
                self.stopped = True
            else:
                step = next(self._tokens, None)
                if step is not None:
                    with self._news:
                        self.steps.append(step)
                        self._news.notify_all()
                    if step.finish_reason is None and time.monotonic() <= self._deadline:
                        MODEL_THREAD.submit(self._advance)
                        return
        except BaseException as e:  # handed to the reader, who raises it
            self.error = e
        self._tokens.close()  # frees the KV cache and the recorder now, not at garbage collection
        ACTIVE.leave()
        with self._news:
            self._done = True
            self._news.notify_all()

    def stop(self) -> None:
        """End at the next token (Stop, a closed tab, a cancelled request)."""
        self._stop.set()

    def follow(self, hz: float) -> Iterator[list[Any]]:
        """The steps so far, each time there are new ones but at most hz times a second, until the end; a reader
        that goes away (a closed generator) stops the generation."""
        seen, next_time = 0, 0.0
        try:
            while True:
                with self._news:
                    self._news.wait_for(lambda: len(self.steps) > seen or self._done)
                    done = self._done
                delay = next_time - time.monotonic()
                if delay > 0 and not done:
                    time.sleep(delay)
                n = len(self.steps)
                if n > seen or done:
                    seen, next_time = n, time.monotonic() + 1 / hz
                    yield self.steps[:n]
                if done:
                    break
        finally:
            self.stop()
        if self.error is not None:
            raise self.error


def _number(value: Any, name: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(x):
        raise gr.Error(f"{name} must be a finite number, got {value!r}.")
    return x


def _integer(value: Any, name: str, low: int, high: int) -> int:
    x = _number(value, name)
    if x != int(x) or not low <= x <= high:
        raise gr.Error(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
    return int(x)


def api_generate(lm: LanguageModel, limits: Limits) -> Callable[..., Iterator[dict]]:
    def generate(prompt: str, max_new_tokens: int = 32, temperature: float = 0.8, top_k: int = 50,
                 top_p: float = 0.95, seed: int = 0, greedy: bool = False, chat: bool = False) -> Iterator[dict]:
        """Generate from a prompt; streams the text so far and, per token, its id, text, probability, entropy
        and the top-5 alternatives."""
        request = GenerationRequest.checked(prompt, max_new_tokens, temperature, top_k, top_p, seed, greedy, chat,
                                            limits)
        ids = request.prompt_ids(lm, limits)
        text, tokens = "", []
        for steps in Generation(lm, ids, request, limits).follow(limits.text_hz):
            for step in steps[len(tokens):]:
                text += step.text
                tokens.append(dict(id=step.token_id, text=step.text, prob=step.prob, entropy=step.entropy,
                                   top=[dict(id=i, text=lm.tokenizer.decode([i]), prob=p)
                                        for i, p in zip(step.top_ids[:5], step.top_probs[:5])]))
            if steps:
                yield dict(text=text, prompt_tokens=len(ids), tokens=tokens, finish_reason=steps[-1].finish_reason)

    return generate


def api_stats() -> Callable[[], dict]:
    def stats() -> dict:
        """Server load: generations running now."""
        return dict(active_generations=ACTIVE.count)

    return stats
