"""Generations in the app: every token is computed on the one model thread, concurrent generations take turns,
readers are throttled, and Stop, a vanished reader, an error and the time limit all end them (and /stats sees it)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from explorer.model_thread import MODEL_THREAD
from explorer.ui.api import ACTIVE, Generation, GenerationRequest
from explorer.ui.common import Limits

LIMITS = Limits(time_limit_seconds=5.0, text_hz=1000.0)


@dataclass
class FakeStep:
    token_id: int
    thread: int
    finish_reason: str | None = None


class FakeModel:
    """Stands in for LanguageModel.generate: yields max_new_tokens steps, each noting the thread it ran on."""

    def __init__(self, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.delay, self.fail_at, self.log = delay, fail_at, []
        self.closed = threading.Event()

    def generate(self, ids, record=False, max_new_tokens=8, **kwargs):
        try:
            for i in range(max_new_tokens):
                time.sleep(self.delay)
                if i == self.fail_at:
                    raise ValueError("context longer than the model's positions")
                self.log.append((id(self), i))
                yield FakeStep(i, threading.get_ident(), "length" if i == max_new_tokens - 1 else None)
        finally:
            self.closed.set()


def request(n: int) -> GenerationRequest:
    return GenerationRequest("hi", n, 0.8, 50, 0.95, 0, True, False)


def wait_idle(timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while ACTIVE.count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ACTIVE.count == 0


def test_every_token_runs_on_the_model_thread():
    model_thread = MODEL_THREAD.run(threading.get_ident)
    lm = FakeModel()
    steps = list(Generation(lm, [1, 2], request(6), LIMITS).follow(1000))[-1]
    assert [s.token_id for s in steps] == list(range(6))
    assert {s.thread for s in steps} == {model_thread} != {threading.get_ident()}
    wait_idle()


def test_concurrent_generations_take_turns_token_by_token():
    a, b = FakeModel(delay=0.002), FakeModel(delay=0.002)
    log: list = []
    a.log = b.log = log
    ga, gb = Generation(a, [1], request(10), LIMITS), Generation(b, [1], request(10), LIMITS)
    results = [list(g.follow(1000))[-1] for g in (ga, gb)]
    assert all(len(r) == 10 for r in results)
    owners = [owner for owner, _ in log]
    # neither waits for the other to finish: the tokens interleave
    assert owners.index(id(b)) < len(owners) - owners[::-1].index(id(a)) - 1
    wait_idle()


def test_reader_sees_updates_at_most_hz_times_a_second():
    lm = FakeModel(delay=0.005)
    start = time.monotonic()
    updates = list(Generation(lm, [1], request(40), LIMITS).follow(hz=10))
    elapsed = time.monotonic() - start
    assert len(updates[-1]) == 40
    assert len(updates) <= elapsed * 10 + 2
    wait_idle()


def test_stop_and_a_closed_reader_end_the_generation_promptly():
    lm = FakeModel(delay=0.01)
    g = Generation(lm, [1], request(1000), LIMITS)
    follow = g.follow(1000)
    next(follow)
    follow.close()  # the reader went away (a closed tab, a cancelled request)
    assert lm.closed.wait(2.0)
    assert g.stopped and len(g.steps) < 1000
    wait_idle()

    flag = threading.Event()
    lm = FakeModel(delay=0.01)
    g = Generation(lm, [1], request(1000), LIMITS, should_stop=flag.is_set)
    follow = g.follow(1000)
    next(follow)
    flag.set()  # the session's Stop
    list(follow)
    assert g.stopped and lm.closed.is_set() and len(g.steps) < 1000
    wait_idle()


def test_time_limit_ends_the_generation_and_keeps_its_tokens():
    lm = FakeModel(delay=0.02)
    steps = list(Generation(lm, [1], request(1000), Limits(time_limit_seconds=0.2)).follow(1000))[-1]
    assert 3 <= len(steps) < 100
    wait_idle()


def test_an_error_reaches_the_reader_after_the_tokens_before_it():
    lm = FakeModel(fail_at=3)
    seen = []
    with pytest.raises(ValueError, match="positions"):
        for steps in Generation(lm, [1], request(10), LIMITS).follow(1000):
            seen = steps
    assert len(seen) == 3
    wait_idle()


def test_model_thread_runs_nested_calls_inline():
    assert MODEL_THREAD.run(lambda: MODEL_THREAD.run(lambda: 42)) == 42
