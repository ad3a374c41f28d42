"""The one thread on which the app runs the model.

libgomp (PyTorch's OpenMP) gives every thread that starts a parallel region a team of its own, and once a process
holds more OpenMP threads than CPUs, every team stops spin-waiting between parallel regions and sleeps instead.
Decoding makes hundreds of short parallel regions a token, so one idle extra team halves its speed. Gradio runs
handlers on many worker threads, so the app sends all model work here: loading, each token of each generation, and
every recomputation from a trace. Generations take turns token by token; a render draws its figures on the thread
that asked for it (drawing() keeps torch there to one OpenMP thread, so no team joins) and sends only what it
recomputes with the model here (Recomputing), so that another session waits at most that long for its next token."""
from __future__ import annotations

import contextlib
import gc
import math
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator, TypeVar

import torch

T = TypeVar("T")
# seconds after a render's end during which decoding steps still compute with one thread: Gradio turns the figures
# into JSON and sends them after the render returns, the page draws them, and renders come in bursts (clicks, the
# refresh while tokens stream). bench.clicks' stall, the second session's longest wait between two tokens: with
# none, steps of 0.3-0.7 s as two threads met that work; with 1 s, 121-722 ms in seven runs (steps that began with
# two threads 1-2 s after a render still met it); with 3 s, 184-274 ms in four
AFTER_RENDER = 3.0


class ModelThread:
    """The thread, its tasks, and how many OpenMP threads they compute with: all of torch's (one a core), but one for
    the tasks of a render (what it recomputes: asked from inside rendering()) and for a decoding step while a render
    draws on another thread or has just drawn (AFTER_RENDER). Beside a Python thread that keeps a core busy, as a
    render does, a decode with two OpenMP threads on this 2-core machine fell from 115 to 11 tokens/s (each of its ~150
    parallel regions a step ends at a barrier that waits for whichever of its threads the render preempted), one
    with a single thread from 70 to 35. (Where the compiled kernels run a step, they split it with helper threads of
    their own that the caller never waits for, and torch's own ops in it take one thread anyway: model/batch.py.
    This policy is then what a model without them gets.) A decoding step's numbers are the same with any
    number of threads (each output computed by the same serial code); a prefill's or a recomputation's are not
    (torch's float32 products split their work by thread), so a prefill always takes all, and a render's
    recomputations always one: a seed gives the same text, and a view the same numbers, whatever other sessions
    do."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._ident: int | None = None
        self._longest: dict[str, float] = {}
        self._renders = 0  # threads drawing now (rendering())
        self._rendered = float("-inf")  # when the last render ended (the monotonic clock)
        self._lock = threading.Lock()
        self.threads = self._threads_now = 1  # torch's own count on this thread, and the one in use
        self._pool.submit(self._remember).result()

    def _remember(self) -> None:
        self._ident = threading.get_ident()
        self.threads = self._threads_now = torch.get_num_threads()

    @contextlib.contextmanager
    def rendering(self) -> Iterator[None]:
        """Around a render that draws on the calling thread (with one OpenMP thread there: drawing()): the tasks it
        asks of the model thread compute with one thread, and meanwhile so do decoding steps."""
        drawing()
        with self._lock:
            self._renders += 1
        _drawing.rendering = getattr(_drawing, "rendering", 0) + 1
        try:
            yield
        finally:
            _drawing.rendering -= 1
            with self._lock:
                self._renders -= 1
                self._rendered = time.monotonic()

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future:
        threads = 1 if getattr(_drawing, "rendering", 0) else None  # None: all of torch's
        return self._pool.submit(self._timed, threads, fn, *args, **kwargs)

    def schedule(self, step: Callable[[], Any]) -> Future:
        """A decoding step, wherever it is asked from: it starts with all threads (its prefill) and takes one for its
        forward pass and sampling while a render draws (decoding_step())."""
        return self._pool.submit(self._timed, None, step)

    def _use(self, threads: int) -> None:
        if threads != self._threads_now:
            torch.set_num_threads(threads)
            self._threads_now = threads

    def decoding_step(self) -> None:
        """On the model thread, before the forward pass and sampling of a decoding step (one new token of each running
        generation): one OpenMP thread while a render draws or has just drawn, all of torch's otherwise. Until the task
        ends: the next one starts with all again."""
        self._use(1 if self._renders or time.monotonic() - self._rendered < AFTER_RENDER else self.threads)

    def _timed(self, threads: int | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self._use(threads or self.threads)
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            name = getattr(fn, "__qualname__", type(fn).__name__)
            self._longest[name] = max(self._longest.get(name, 0.0), time.perf_counter() - start)

    def longest_tasks(self, reset: bool = False) -> dict[str, float]:
        """The longest run, in seconds, of each kind of task (by function name) since the last reset: what another
        session's next token may have waited for."""
        longest = dict(self._longest)
        if reset:
            self._longest.clear()
        return longest

    def is_current(self) -> bool:
        return threading.get_ident() == self._ident

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs) on the model thread; called from the model thread itself, it just runs."""
        if self.is_current():
            return fn(*args, **kwargs)
        return self.submit(fn, *args, **kwargs).result()


MODEL_THREAD = ModelThread()
# The model thread gives up the GIL inside every torch call and takes it back between them, a few dozen times a
# token (every block in one call: model/fast/llama_block.py step_all). While a render draws (plotly, JSON: pure
# Python) on another thread, each take-back waits for that thread to reach the interpreter's switch interval (5 ms
# by default): a 15 ms decoding step then takes a few hundred. A shorter interval bounds each wait to it: beside a
# thread drawing attention figures nonstop, a step took a median of 71 ms at 0.5 ms and 36 ms at 0.1 ms (before
# step_all), while the drawing thread drew as many figures a second (28-30) at either.
SWITCH_INTERVAL = 0.0001
sys.setswitchinterval(SWITCH_INTERVAL)


def freeze_startup_heap() -> int:
    """Once the model and the app are built: their objects (about 350,000 with SmolLM2's tokenizer and the app's 215
    components) move to a generation the garbage collector never scans again, and the number moved is returned. A
    full collection over them took 140 ms with the GIL held, every other thread stopped, and a render's allocations
    set one off every few seconds: another session's next token waited that long. After the freeze a full collection
    scans only what came later (5 ms for 100,000 new objects)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


_drawing = threading.local()


def drawing() -> None:
    """Called by a thread before it draws with torch (small ops on a trace's tensors): it keeps that thread to one
    OpenMP thread, so it adds no team (the model thread's own setting is its own: OpenMP's is per thread)."""
    if not getattr(_drawing, "single", False) and not MODEL_THREAD.is_current():
        torch.set_num_threads(1)
        _drawing.single = True


class Recomputing:
    """A Trace whose recomputations with the model (a layer's attention, a block's internals, logits) run on the model
    thread, each one task; the rest of the Trace (ids, residual stream, ...) reads as usual."""

    ON_MODEL_THREAD = frozenset({"internals", "routing", "latent", "logits_at"})
    # a layer's attention map is computed this many query-key pairs (per head) at a time, each part a task of its own
    # (the keys before a part are recomputed, not their attention): at 1,167 tokens the whole map is 83 ms of the
    # model thread alone, and nine parts of 5-7 ms (12-23 ms when parts were twice as large and recomputed the
    # attention of every row before them), so another session's next token waits for one part
    ATTENTION_PART = 96 * 1024

    def __init__(self, trace: Any) -> None:
        self.trace = trace

    def __len__(self) -> int:
        return len(self.trace)

    def attention(self, layer: int) -> torch.Tensor:
        """trace.attention(layer), [H, T, T], computed in parts of rows (the later rows see more keys, so they come
        in fewer per part), so that another session's next token waits for one part, not the whole map."""
        n = len(self.trace)
        if n * n <= 2 * self.ATTENTION_PART:
            return MODEL_THREAD.run(self.trace.attention, layer)
        parts, start = [], 0
        while start < n:
            rows = int((math.sqrt(start * start + 4 * self.ATTENTION_PART) - start) / 2)  # rows * (start + rows)
            stop = min(n, start + max(16, rows))
            parts.append((start, stop, MODEL_THREAD.run(self.trace.attention, layer, start, stop)))
            start = stop
        whole = torch.zeros(parts[0][2].shape[0], n, n)
        for start, stop, rows in parts:
            whole[:, start:stop, :stop] = rows
        return whole

    @property
    def logits(self) -> Any:
        return MODEL_THREAD.run(lambda: self.trace.logits)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.trace, name)
        if name in self.ON_MODEL_THREAD:
            return lambda *args, **kwargs: MODEL_THREAD.run(value, *args, **kwargs)
        return value
