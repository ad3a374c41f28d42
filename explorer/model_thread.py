"""The one thread on which the app runs torch.

libgomp (PyTorch's OpenMP) gives every thread that starts a parallel region a team of its own, and once a process
holds more OpenMP threads than CPUs, every team stops spin-waiting between parallel regions and sleeps instead.
Decoding makes hundreds of short parallel regions a token, so one idle extra team halves its speed. Gradio runs
handlers on many worker threads, so the app sends all model work here: loading, each token of each generation, and
every render that recomputes from a trace. Generations take turns token by token, renders fit in between."""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class ModelThread:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._ident: int | None = None
        self._pool.submit(self._remember).result()

    def _remember(self) -> None:
        self._ident = threading.get_ident()

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future:
        return self._pool.submit(fn, *args, **kwargs)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs) on the model thread; called from the model thread itself, it just runs."""
        if threading.get_ident() == self._ident:
            return fn(*args, **kwargs)
        return self._pool.submit(fn, *args, **kwargs).result()


MODEL_THREAD = ModelThread()
