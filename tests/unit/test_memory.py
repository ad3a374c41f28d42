"""Bounded memory (explorer/memory.py): the registry frees the least recently used idle session's traces over its cap
(never a generating one, never the one being served), expires sessions that stop talking, and forgets sessions that
are gone; a real session's traces are counted by the buffers they keep alive, freed and recomputed to the same
values (up to rounding), and the user is told."""
from __future__ import annotations

import gc

import torch

from explorer.memory import SessionMemory, storage_bytes
from explorer.session import EXPIRED, TRACE_DROPPED, Session

MB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Holder:
    def __init__(self, generating: bool = False) -> None:
        self.generating = generating
        self.dropped = self.expired = 0

    def drop_trace(self) -> None:
        self.dropped += 1

    def expire(self) -> None:
        self.expired += 1


def test_over_the_cap_the_least_recently_used_idle_traces_go_first():
    clock = Clock()
    memory = SessionMemory(cap_bytes=100 * MB, ttl_seconds=1e9, clock=clock)
    a, b, busy, c = Holder(), Holder(), Holder(generating=True), Holder()
    for holder in (busy, a, b):  # busy is the least recently used, but its recorder is still filling
        clock.now += 1
        memory.use(holder, 30 * MB)
    clock.now += 1
    memory.use(a)  # a serves an event: now b is the least recently used idle one
    assert memory.stats()["trace_bytes"] == 90 * MB and (a.dropped, b.dropped, busy.dropped) == (0, 0, 0)
    clock.now += 1
    memory.use(c, 30 * MB)
    assert (a.dropped, b.dropped, busy.dropped, c.dropped) == (0, 1, 0, 0)
    assert memory.held(b) == 0 and memory.held(c) == 30 * MB
    stats = memory.stats()
    assert stats["trace_bytes"] == 90 * MB and stats["traces_dropped"] == 1 and stats["sessions_holding_traces"] == 3
    clock.now += 1
    memory.use(c, 200 * MB)  # the one being served keeps its trace, however large: the others make room
    assert (a.dropped, busy.dropped, c.dropped) == (1, 0, 0)
    assert memory.stats()["trace_bytes"] == 230 * MB  # the generating one stays until it ends


def test_sessions_that_stop_talking_expire_unless_generating():
    clock = Clock()
    memory = SessionMemory(cap_bytes=1 << 40, ttl_seconds=60, clock=clock)
    quiet, talking, busy = Holder(), Holder(), Holder(generating=True)
    for holder in (quiet, talking, busy):
        memory.use(holder, MB)
    clock.now = 50
    memory.use(talking)
    clock.now = 61
    assert memory.sweep() == 1 and (quiet.expired, talking.expired, busy.expired) == (1, 0, 0)
    stats = memory.stats()
    assert stats["sessions"] == 2 and stats["sessions_expired"] == 1 and stats["trace_bytes"] == 2 * MB
    busy.generating = False
    clock.now = 111
    assert memory.sweep() == 2 and memory.stats()["sessions"] == 0


def test_a_session_that_is_gone_leaves_the_registry():
    memory = SessionMemory(cap_bytes=1 << 40, ttl_seconds=1e9)
    holder = Holder()
    memory.use(holder, MB)
    del holder
    gc.collect()
    assert memory.stats()["sessions"] == 0 and memory.stats()["trace_bytes"] == 0


def test_storage_bytes_counts_each_buffer_once():
    buffer = torch.zeros(10, 100)
    assert storage_bytes([buffer[:2], buffer[5:], torch.zeros(3)]) == 4000 + 12


def generated(lm, memory: SessionMemory, prompt: str, n_new: int = 4) -> Session:
    """A session through the app's generation path: steps added as they come, the context's trace adopted."""
    s = Session(memory=memory)
    ids = lm.tokenizer.encode(prompt)
    s.start(ids, {})
    steps = lm.generate(ids, max_new_tokens=n_new, greedy=True, record=True, stop_at_eos=False)
    while True:
        try:
            s.add(next(steps))
        except StopIteration as done:
            s.generating = False
            s.adopt_trace(done.value)
            return s


def test_a_sessions_traces_are_counted_dropped_recomputed_and_told(embedded_lm):
    lm, run = embedded_lm, lambda fn, *args: fn(*args)
    cfg = lm.config
    per_token = (cfg.n_layers + 1) * cfg.d_model * 4 + 8  # the residual stream in float32 and the token id
    memory = SessionMemory(cap_bytes=1 << 40, ttl_seconds=1e9)
    first = generated(lm, memory, "The first student asked about attention heads.")
    n = len(first.ids)
    # one buffer: the steps' traces and the adopted context trace view the same recorder's
    assert first.trace_bytes() == memory.held(first) == n * per_token
    first.prepare_trace(lm, run)  # a render: nothing to build, and the steps' traces go
    assert all(step.trace is None for step in first.steps) and memory.held(first) == n * per_token
    before = first.trace(lm).residual.clone()

    memory.cap_bytes = int(1.5 * n * per_token)  # room for one such session
    second = generated(lm, memory, "The second student asked about the logit lens.")
    assert memory.held(first) == 0 and first.trace_bytes() == 0 and memory.held(second) == second.trace_bytes() > 0
    assert first.take_notice() == TRACE_DROPPED and first.take_notice() == ""
    first.prepare_trace(lm, run)  # its next render recomputes it, and now the second one makes room
    # the same values up to rounding: the recomputation reads the context in chunks, the generation a token at a time
    torch.testing.assert_close(first.trace(lm).residual, before, rtol=1e-3, atol=1e-3)
    # the second one's steps still held their traces (no render stripped them): they go too
    assert memory.held(first) == n * per_token and memory.held(second) == 0 and second.trace_bytes() == 0
    assert memory.stats()["traces_dropped"] == 2

    memory.ttl_seconds = 0.0
    assert memory.sweep() == 2
    assert first.ids == [] and first.trace(lm) is None and first.take_notice() == EXPIRED
    assert first.trace_bytes() == second.trace_bytes() == 0  # what the registry stopped counting is really let go
    assert memory.stats()["trace_bytes"] == 0
