"""How long a decoding step of the model thread takes while another thread runs pure Python (as a render drawing its
figures does), for two switch intervals of the interpreter: the default 5 ms and the app's (explorer/model_thread.py's
SWITCH_INTERVAL). Each step gives up the GIL in every torch call and waits to take it back.
Run: PYTHONPATH=. .venv/bin/python -m bench.gil"""
from __future__ import annotations

import statistics
import sys
import threading
import time

import torch

from explorer.model_thread import MODEL_THREAD, SWITCH_INTERVAL
from model import load_model


def busy(stop: threading.Event) -> None:
    torch.set_num_threads(1)
    while not stop.is_set():
        sorted(str(i) * 3 for i in range(20000))


def steps(generation, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        MODEL_THREAD.run(next, generation)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    lm = MODEL_THREAD.run(load_model, device="cpu", dtype="float32")
    print("interval (ms)  step alone, median (ms)  beside a busy Python thread: median, max (ms)")
    for interval in (0.005, SWITCH_INTERVAL) * 2:
        sys.setswitchinterval(interval)
        generation = lm.generate("Once upon a time", max_new_tokens=400, greedy=True, stop_at_eos=False)
        MODEL_THREAD.run(next, generation)
        alone = steps(generation, 60)
        stop = threading.Event()
        thread = threading.Thread(target=busy, args=(stop,))
        thread.start()
        during = steps(generation, 60)
        stop.set()
        thread.join()
        print(f"{interval * 1000:13.1f}  {statistics.median(alone) * 1000:23.1f}  "
              f"{statistics.median(during) * 1000:10.1f}, {max(during) * 1000:.1f}")
    sys.setswitchinterval(SWITCH_INTERVAL)


if __name__ == "__main__":
    main()
