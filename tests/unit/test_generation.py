"""Generations in the app, on a fake model: every token is computed on the one model thread, concurrent generations
take turns, readers are throttled, and Stop, a vanished reader, an error and the time limit all end them with the
right finish reason (and /stats and the status line say it). Time is a fake clock wherever a test is about time."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from explorer.generations import ACTIVE, Generation
from explorer.model_thread import MODEL_THREAD
from explorer.ui.api import GenerationRequest
from explorer.ui.blocks import finish_message
from explorer.ui.common import Limits

HANG = 120.0  # seconds: only a hang waits this long
NEVER = 1e9  # a time limit that never ends a generation here


@dataclass
class FakeStep:
    token_id: int
    thread: int
    finish_reason: str | None = None


class FakeClock:
    """A monotonic clock that moves only when told: sleep() and advance() move it."""

    def __init__(self) -> None:
        self.now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds

    sleep = advance


class FakeModel:
    """Stands in for LanguageModel.generate: yields max_new_tokens steps, each noting the thread it ran on; on_token
    runs while each token is being computed."""

    def __init__(self, delay: float = 0.0, fail_at: int | None = None, on_token=lambda i: None) -> None:
        self.delay, self.fail_at, self.on_token, self.log = delay, fail_at, on_token, []
        self.closed = threading.Event()

    def generate(self, ids, record=False, max_new_tokens=8, **kwargs):
        try:
            for i in range(max_new_tokens):
                time.sleep(self.delay)
                self.on_token(i)
                if i == self.fail_at:
                    raise ValueError("context longer than the model's positions")
                self.log.append((id(self), i))
                yield FakeStep(i, threading.get_ident(), "length" if i == max_new_tokens - 1 else None)
        finally:
            self.closed.set()


class Stopper:
    """Calls stop() on its generation while token `at` is being computed (Stop pressed mid-token)."""

    def __init__(self, at: int) -> None:
        self.at, self.generation, self.attached = at, None, threading.Event()

    def __call__(self, i: int) -> None:
        self.attached.wait(HANG)
        if i == self.at:
            self.generation.stop()

    def attach(self, generation: Generation) -> Generation:
        self.generation = generation
        self.attached.set()
        return generation


def settings(n: int) -> dict:
    return dict(max_new_tokens=n)


def wait_idle() -> None:
    deadline = time.monotonic() + HANG
    while ACTIVE.count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ACTIVE.count == 0


def final(g: Generation) -> list:
    return list(g.follow(1000))[-1]


def test_every_token_runs_on_the_model_thread():
    model_thread = MODEL_THREAD.run(threading.get_ident)
    g = Generation(FakeModel(), [1, 2], settings(6), NEVER)
    steps = final(g)
    assert [s.token_id for s in steps] == list(range(6))
    assert {s.thread for s in steps} == {model_thread} != {threading.get_ident()}
    assert g.finish_reason == "length"
    wait_idle()


def test_concurrent_generations_take_turns_token_by_token():
    a, b = FakeModel(delay=0.002), FakeModel(delay=0.002)
    log: list = []
    a.log = b.log = log
    ga, gb = Generation(a, [1], settings(10), NEVER), Generation(b, [1], settings(10), NEVER)
    results = [final(g) for g in (ga, gb)]
    assert all(len(r) == 10 for r in results)
    owners = [owner for owner, _ in log]
    # neither waits for the other to finish: the tokens interleave
    assert owners.index(id(b)) < len(owners) - owners[::-1].index(id(a)) - 1
    wait_idle()


def test_reader_sees_updates_at_least_one_hz_period_apart():
    clock = FakeClock()
    g = Generation(FakeModel(delay=0.001), [1], settings(40), NEVER, clock=clock, sleep=clock.sleep)
    seen = [(clock(), len(steps)) for steps in g.follow(hz=4)]  # 0.25 s: exact in binary
    assert seen[-1][1] == 40
    times = [t for t, _ in seen[:-1]]  # the last update comes as soon as the generation ends
    assert len(times) >= 2
    assert all(later - earlier >= 0.25 for earlier, later in zip(times, times[1:])), times
    wait_idle()


def test_stop_while_a_token_is_computed_adds_that_token_and_no_more():
    stopper = Stopper(at=3)
    lm = FakeModel(on_token=stopper)
    g = stopper.attach(Generation(lm, [1], settings(1000), NEVER))
    steps = final(g)
    assert [s.token_id for s in steps] == [0, 1, 2, 3]
    assert g.finish_reason == "stopped" and lm.closed.is_set()
    wait_idle()


def test_the_sessions_stop_flag_ends_the_generation():
    flag = threading.Event()
    lm = FakeModel(on_token=lambda i: i == 5 and flag.set())
    g = Generation(lm, [1], settings(1000), NEVER, should_stop=flag.is_set)
    assert len(final(g)) == 6 and g.finish_reason == "stopped" and lm.closed.is_set()
    wait_idle()


def test_a_closed_reader_ends_the_generation():
    """A closed tab or a cancelled request: Gradio closes the handler's generator, which closes follow()."""
    lm = FakeModel(delay=0.001)
    g = Generation(lm, [1], settings(10**4), NEVER)
    follow = g.follow(1000)
    next(follow)
    follow.close()
    assert lm.closed.wait(HANG)
    wait_idle()
    assert g.finish_reason == "stopped" and len(g.steps) < 10**4


def test_time_limit_ends_the_generation_and_keeps_its_tokens():
    clock = FakeClock()
    lm = FakeModel(on_token=lambda i: clock.advance(1.0))  # each token takes a second
    g = Generation(lm, [1], settings(1000), 5.0, clock=clock, sleep=clock.sleep)
    steps = final(g)
    # tokens finish at 1, 2, ..., 6 s; after the one finished past 5 s no new token starts
    assert [s.token_id for s in steps] == list(range(6))
    assert g.finish_reason == "time" and lm.closed.is_set()
    wait_idle()


def test_the_models_own_end_wins_over_the_time_limit():
    clock = FakeClock()
    # the second and last token finishes past the limit: it ends by its length, not by time
    g = Generation(FakeModel(on_token=lambda i: clock.advance(1.0)), [1], settings(2), 1.0, clock=clock)
    assert len(final(g)) == 2 and g.finish_reason == "length"
    wait_idle()


def test_no_room_for_a_token_ends_with_length():
    g = Generation(FakeModel(), [1], settings(0), NEVER)
    assert list(g.follow(1000)) == [[]] and g.finish_reason == "length"
    wait_idle()


def test_an_error_reaches_the_reader_after_the_tokens_before_it():
    seen = []
    g = Generation(FakeModel(fail_at=3), [1], settings(10), NEVER)
    with pytest.raises(ValueError, match="positions"):
        for steps in g.follow(1000):
            seen = steps
    assert len(seen) == 3 and g.finish_reason == "error"
    wait_idle()


def test_stats_count_ended_generations_by_reason_and_their_tokens():
    before = ACTIVE.stats()
    final(Generation(FakeModel(), [1], settings(4), NEVER))
    stopper = Stopper(at=1)
    final(stopper.attach(Generation(FakeModel(on_token=stopper), [1], settings(1000), NEVER)))
    wait_idle()
    after = ACTIVE.stats()
    ended = lambda stats, reason: stats["ended_generations"].get(reason, 0)
    assert ended(after, "length") == ended(before, "length") + 1
    assert ended(after, "stopped") == ended(before, "stopped") + 1
    assert after["generated_tokens"] == before["generated_tokens"] + 4 + 2
    assert after["active_generations"] == 0


def test_requests_stop_at_end_of_text_unless_told_not_to():
    limits = Limits()
    args = ("hi", 8, 0.8, 50, 0.95, 0, False, False)
    assert GenerationRequest.checked(*args, True, limits).generate_kwargs(2, limits)["stop_at_eos"] is True
    assert GenerationRequest.checked(*args, False, limits).generate_kwargs(2, limits)["stop_at_eos"] is False
    assert GenerationRequest(*args).stop_at_eos is True


def test_a_request_runs_under_the_servers_time_limit_and_context():
    limits = Limits(max_context=10, time_limit_seconds=NEVER)
    request = GenerationRequest("hi", 8, 0.8, 50, 0.95, 0, False, False, False)
    kwargs = request.generate_kwargs(n_prompt=4, limits=limits)
    assert kwargs["max_new_tokens"] == 6 and kwargs["stop_at_eos"] is False
    g = request.start(FakeModel(), [1, 2, 3, 4], limits)
    assert len(final(g)) == 6 and g.finish_reason == "length"
    wait_idle()


def test_model_thread_runs_nested_calls_inline():
    assert MODEL_THREAD.run(lambda: MODEL_THREAD.run(lambda: 42)) == 42


def test_the_status_line_says_why_a_generation_ended():
    assert finish_message("stop", 12, 40.0, 120.0) == "Done: 12 tokens at 40.0 tok/s (end of text)"
    assert finish_message("length", 40, 40.0, 120.0) == "Done: 40 tokens at 40.0 tok/s (token limit)"
    assert finish_message("time", 900, 7.5, 120.0) == "Stopped: time limit (120 s) reached after 900 tokens"
    assert finish_message("stopped", 9, 0.0, 120.0) == "Stopped after 9 tokens"


def test_stats_report_the_longest_wait_between_two_tokens_since_the_last_call():
    """What another session's render may cost a generation (bench/clicks.py reads it): the wait of token 2 here; the
    first token's wait (its prompt) is not one."""
    clock = FakeClock()
    ACTIVE.stats()
    model = FakeModel(on_token=lambda i: clock.advance({0: 50.0, 2: 2.0}.get(i, 0.25)))
    final(Generation(model, [1], settings(4), NEVER, clock=clock, sleep=lambda s: None))
    wait_idle()
    assert ACTIVE.stats()["longest_token_gap"] == 2.0
    assert ACTIVE.stats()["longest_token_gap"] == 0.0  # each call reports the time since the one before
