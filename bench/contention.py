"""How the core's decoding suffers from other work on the same cores: tokens/s of one sequence split between the
calling thread and the compiled kernels' helper threads (model/kernels/blockquant.cpp; torch's own ops then take one
OpenMP thread: model/batch.py), and on one thread, each alone and beside another process that works in short bursts
(2 ms busy, 8 ms asleep: a fifth of one core, as a web server's event loop and a client take it while tokens stream)
or without pause (one core), and beside a Python thread of the same process (as a render draws: it also takes turns
with the GIL). The caller never waits for a helper that the other work has taken off its core (it computes that
chunk itself), so the split decode should fall to about the one-thread rate at worst. (With OpenMP's barriers, before
the helpers, two threads fell from 124 to 3 tokens/s beside the process that never pauses.)
Run: PYTHONPATH=. .venv/bin/python -m bench.contention"""
from __future__ import annotations

import multiprocessing
import sys
import threading
import time

import torch

from bench.serving import core_rates
from explorer.model_thread import SWITCH_INTERVAL
from model import kernels, load_model

TOKENS = 256
BUSY, ASLEEP = 0.002, 0.008


def work(stop, busy: float, asleep: float) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        while time.perf_counter() - start < busy:
            pass
        time.sleep(asleep)


def python(stop) -> None:
    """Pure Python, as a render builds its figures, on one OpenMP thread (as the app's renders draw)."""
    torch.set_num_threads(1)
    while not stop.is_set():
        sorted(str(i) * 3 for i in range(20000))


def beside(lm, other: threading.Thread | multiprocessing.Process, stop) -> float:
    other.start()
    try:
        return decode_rate(lm)
    finally:
        stop.set()
        other.join()


def decode_rate(lm) -> float:
    """Tokens/s of one greedy sequence, its prompt read first, TOKENS new tokens (bench.serving's core rate)."""
    return core_rates(lm, TOKENS, (1,))[1]


def main() -> None:
    sys.setswitchinterval(SWITCH_INTERVAL)  # as the app runs
    lm = load_model(device="cpu", dtype="float32")
    ext, threads = kernels.extension(), torch.get_num_threads()
    if ext is None:
        raise SystemExit(f"the kernels are not available: {kernels.error()}")
    others = {f"bursts ({BUSY * 1000:.0f} ms busy, {ASLEEP * 1000:.0f} ms asleep)": (BUSY, ASLEEP),
              "without pause": (1.0, 0.0)}
    print(f"decode of one sequence, {TOKENS} tokens (tok/s): alone, beside another process working, and beside a "
          "Python thread of this process")
    print(f"{'helpers':>7} {'alone':>7}" + "".join(f" {name:>32} {'lost':>5}" for name in others)
          + f" {'a Python thread':>16} {'lost':>5}")
    try:
        for n in sorted({kernels.default_helpers(), 0}, reverse=True):
            ext.use_helpers(n)
            torch.set_num_threads(n + 1)  # with none, all on one thread
            alone = decode_rate(lm)
            row = f"{n:>7} {alone:>7.1f}"
            for busy, asleep in others.values():
                stop = multiprocessing.Event()
                rate = beside(lm, multiprocessing.Process(target=work, args=(stop, busy, asleep)), stop)
                row += f" {rate:>32.1f} {1 - rate / alone:>5.0%}"
            stop = threading.Event()
            rate = beside(lm, threading.Thread(target=python, args=(stop,)), stop)
            print(row + f" {rate:>16.1f} {1 - rate / alone:>5.0%}", flush=True)
    finally:
        ext.use_helpers(kernels.default_helpers())
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
