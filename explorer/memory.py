"""Bounded memory across sessions: a registry of the bytes each session's traces hold and when it was last used.
Over the cap, the least recently used idle session loses its traces first (its views recompute them); a session that
stops talking for the time to live is cleared (API clients send no heartbeat, so nothing else would ever free it)."""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

import torch


class Holder(Protocol):
    """What the registry asks of a session (explorer/session.py)."""

    generating: bool

    def drop_trace(self) -> None:
        """Let go of every trace (the views recompute them), and say so to the user."""

    def expire(self) -> None:
        """Let go of everything (the text too), and say so to the user."""


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind these tensors: a trace is a view into its recorder's whole buffer, which
    it keeps alive, and several traces may view one buffer."""
    sizes = {}
    for t in tensors:
        storage = t.untyped_storage()
        sizes[storage.data_ptr()] = storage.nbytes()
    return sum(sizes.values())


@dataclass
class _Entry:
    ref: weakref.ref
    nbytes: int
    last_used: float


class SessionMemory:
    """Shared by every session of one app. use() is called whenever a session serves an event; a thread of the
    registry's own sweeps idle sessions out every few seconds."""

    def __init__(self, cap_bytes: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.cap_bytes, self.ttl_seconds = cap_bytes, ttl_seconds
        self._clock = clock
        # reentrant: a session's last reference may go while the lock is held, and its weak reference's callback
        # (_gone) takes the lock too
        self._lock = threading.RLock()
        self._entries: dict[int, _Entry] = {}  # by id() of the session, which the entry's weak reference checks
        self.dropped: Counter[str] = Counter()  # "memory": traces dropped for the cap; "idle": sessions expired
        self._sweeper: threading.Thread | None = None

    def __deepcopy__(self, memo: dict) -> "SessionMemory":
        return self  # gr.State deep-copies each new session: the copy shares the one registry

    def use(self, owner: Holder, nbytes: int | None = None) -> None:
        """owner serves an event now; with nbytes, its traces hold that many bytes. If the total is over the cap,
        other sessions' traces are dropped, least recently used first (never one that is generating: its recorder
        is still filling)."""
        key = id(owner)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.ref() is not owner:
                entry = self._entries[key] = _Entry(weakref.ref(owner, lambda ref: self._gone(key, ref)), 0, 0.0)
            entry.last_used = self._clock()
            if nbytes is not None:
                entry.nbytes = nbytes
            victims = self._over_cap(entry)
        for victim in victims:
            victim.drop_trace()
        if victims:
            release_freed_memory()
        self._start_sweeper()

    def _over_cap(self, keep: _Entry) -> list[Holder]:
        total = sum(e.nbytes for e in self._entries.values())
        victims = []
        for entry in sorted(self._entries.values(), key=lambda e: e.last_used):
            if total <= self.cap_bytes:
                break
            owner = entry.ref()
            if entry is keep or entry.nbytes == 0 or owner is None or owner.generating:
                continue
            total -= entry.nbytes
            entry.nbytes = 0
            self.dropped["memory"] += 1
            victims.append(owner)
        return victims

    def sweep(self) -> int:
        """Expire every session unused for longer than the time to live (unless it is generating); how many."""
        deadline = self._clock() - self.ttl_seconds
        with self._lock:
            expired = [(key, owner) for key, e in list(self._entries.items())
                       if e.last_used < deadline and (owner := e.ref()) is not None and not owner.generating]
            for key, _ in expired:
                del self._entries[key]
            self.dropped["idle"] += len(expired)
        for _, owner in expired:
            owner.expire()
        if expired:
            release_freed_memory()
        return len(expired)

    def _gone(self, key: int, ref: weakref.ref) -> None:
        """A session was garbage-collected (Gradio deleted its state)."""
        with self._lock:
            if (entry := self._entries.get(key)) is not None and entry.ref is ref:
                del self._entries[key]

    def _start_sweeper(self) -> None:
        if self._sweeper is None:
            with self._lock:
                if self._sweeper is None:
                    self._sweeper = threading.Thread(target=self._sweep_forever, name="session-memory", daemon=True)
                    self._sweeper.start()

    def _sweep_forever(self) -> None:
        interval = min(max(self.ttl_seconds / 4, 0.5), 60.0)
        while True:
            time.sleep(interval)
            self.sweep()

    def held(self, owner: Any) -> int:
        """Bytes the registry counts for this session."""
        with self._lock:
            entry = self._entries.get(id(owner))
            return entry.nbytes if entry is not None and entry.ref() is owner else 0

    def stats(self) -> dict[str, Any]:
        """What /stats reports: the traces' bytes in all, the sessions known and those holding a trace, and how many
        traces were dropped for the cap and sessions expired for their silence."""
        with self._lock:
            entries = list(self._entries.values())
            return dict(trace_bytes=sum(e.nbytes for e in entries), trace_cap_bytes=self.cap_bytes,
                        sessions=len(entries), sessions_holding_traces=sum(e.nbytes > 0 for e in entries),
                        traces_dropped=self.dropped["memory"], sessions_expired=self.dropped["idle"])


_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None


def release_freed_memory() -> None:
    """Hand freed heap pages back to the system. A trace under 32 MB comes from malloc's heap, not a mapping of its
    own, and glibc keeps freed heap pages (the process's memory stays high) unless asked."""
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)
