"""The scheduler of the running generations (explorer/generations.py): one task at a time on the model thread, each
a step that advances every running generation, renders and other model-thread tasks going between steps. A step:
stop requests end their generation at once; prompts still being read, oldest first, up to PREFILL_CHUNK tokens (so
a long prompt, read a chunk a step, never stalls the others for long; short ones together, in one call); one forward
pass for every generation ready for its next token (model/batch.py); their tokens sampled together, each with its own
settings and generator. A generation that ends leaves at once; a new one joins the next step."""
from __future__ import annotations

import threading
from collections import defaultdict
from typing import Protocol

from explorer.model_thread import MODEL_THREAD, ModelThread
from model.batch import PREFILL_CHUNK, Decoding, advance, prefill_all, sample_all


class Member(Protocol):
    """What the batcher asks of a generation (explorer.generations.Generation)."""

    decoding: Decoding | None  # None: a model without batched decoding; it advances alone (advance_alone)
    ended: bool

    def stopping(self) -> bool: ...  # asked to stop (Stop, a closed tab, ...)

    def end(self, reason: str, error: BaseException | None = None) -> None: ...

    def advance_alone(self) -> None: ...  # one token, or the end, by itself

    def take(self, step) -> None: ...  # its decoding's next Step (sampled): hand it out, end if it was last


class Batcher:
    def __init__(self, thread: ModelThread = MODEL_THREAD) -> None:
        self._thread = thread
        self._lock = threading.Lock()
        self._members: list[Member] = []
        self._scheduled = False

    def add(self, member: Member) -> None:
        """member runs from the next step on."""
        with self._lock:
            self._members.append(member)
            if not self._scheduled:
                self._scheduled = True
                self._thread.schedule(self.step)

    def __len__(self) -> int:
        with self._lock:
            return len(self._members)

    def step(self) -> None:
        """One step of every running generation (see the module's docstring), then the next step, queued behind
        whatever other tasks came meanwhile."""
        with self._lock:
            members = list(self._members)
        try:
            self._advance(members)
        finally:
            with self._lock:
                self._members = [m for m in self._members if not m.ended]
                self._scheduled = bool(self._members)
                if self._scheduled:
                    self._thread.schedule(self.step)

    def _advance(self, members: list[Member]) -> None:
        for m in members:
            if m.stopping():
                m.end("stopped")
            elif m.decoding is not None and m.decoding.finished and not m.ended:
                m.end("length")  # no room for a single new token (the prompt fills the context)
        for m in members:
            if not m.ended and m.decoding is None:
                _guarded(m, m.advance_alone)
        budget = PREFILL_CHUNK  # prompt tokens a step reads: several short prompts, or one chunk of a long one
        reading = []
        for m in members:
            if budget > 0 and not m.ended and m.decoding is not None and m.decoding.prefilling:
                budget -= min(len(m.decoding.pending), m.decoding.chunk)
                reading.append(m)
        for group in _by_model([m for m in reading if m.decoding.short_chunk]):
            try:
                prefill_all([m.decoding for m in group])  # short prompts together, as rows of one call
            except Exception:  # noqa: BLE001: find whose it is, as below
                for m in group:
                    if m.decoding.prefilling:
                        _guarded(m, m.decoding.prefill)
        for m in reading:
            if not m.ended and m.decoding.prefilling and not m.decoding.short_chunk:
                _guarded(m, m.decoding.prefill)
        self._thread.decoding_step()  # one OpenMP thread while a render draws (explorer/model_thread.py)
        for ready in _by_model([m for m in members if not m.ended and m.decoding is not None and m.decoding.ready]):
            try:
                advance([m.decoding for m in ready])
            except Exception:  # noqa: BLE001: find whose it is: each alone, so one bad sequence ends only itself
                for m in ready:
                    if m.decoding.ready:
                        _guarded(m, lambda m=m: advance([m.decoding]))
        sampling = [m for m in members if not m.ended and m.decoding is not None and m.decoding.logits is not None]
        try:
            steps = sample_all([m.decoding for m in sampling]) if sampling else []
        except Exception:  # noqa: BLE001: as above, each alone
            steps = [None] * len(sampling)
        for m, step in zip(sampling, steps):
            _guarded(m, lambda m=m, step=step: m.take(step or sample_all([m.decoding])[0]))


def _by_model(members: list[Member]) -> list[list[Member]]:
    """members grouped by the model their decoding runs on: one forward pass takes one model's rows."""
    groups = defaultdict(list)
    for m in members:
        groups[id(m.decoding.lm)].append(m)
    return list(groups.values())


def _guarded(member: Member, work) -> None:
    """work for member; an error ends that member alone (its reader raises it)."""
    try:
        work()
    except BaseException as e:  # noqa: BLE001: handed to the reader, who raises it
        member.end("error", e)


BATCHER = Batcher()
