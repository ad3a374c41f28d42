"""How the core's decoding suffers from other work on the same cores: tokens/s of one sequence with two OpenMP
threads and with one, alone and beside another process that works in short bursts (2 ms busy, 8 ms asleep: a fifth
of one core, as a web server's event loop and a client take it while tokens stream). Each step of the two-thread
decode ends ~150 parallel regions at a barrier (five a block), and a barrier waits for whichever thread the other
work preempted.
Run: PYTHONPATH=. .venv/bin/python -m bench.contention"""
from __future__ import annotations

import multiprocessing
import time

import torch

from model import load_model
from model.batch import advance, sample_all

TOKENS = 256
BUSY, ASLEEP = 0.002, 0.008


def bursts(stop) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        while time.perf_counter() - start < BUSY:
            pass
        time.sleep(ASLEEP)


def decode_rate(lm) -> float:
    """Tokens/s of one sampled sequence, its prompt read first, TOKENS new tokens (the best of two runs)."""
    best = 0.0
    for _ in range(2):
        d = lm.decoding(lm.tokenizer.encode("Story number 1: once upon a time"), max_new_tokens=TOKENS,
                        temperature=1.0, top_k=50, top_p=0.95, seed=1, stop_at_eos=False)
        start = time.perf_counter()
        while not d.finished:
            while d.prefilling:
                d.prefill()
            if d.ready:
                advance([d])
            if d.logits is not None:
                sample_all([d])
        best = max(best, TOKENS / (time.perf_counter() - start))
    return best


def main() -> None:
    lm = load_model(device="cpu", dtype="float32")
    threads = torch.get_num_threads()
    print(f"decode of one sequence, {TOKENS} tokens (tok/s); the other process busy {BUSY * 1000:.0f} ms, asleep "
          f"{ASLEEP * 1000:.0f} ms")
    print(f"{'threads':>7} {'alone':>8} {'beside':>8} {'lost':>6}")
    for n in sorted({threads, 1}, reverse=True):
        torch.set_num_threads(n)
        alone = decode_rate(lm)
        stop = multiprocessing.Event()
        other = multiprocessing.Process(target=bursts, args=(stop,))
        other.start()
        try:
            beside = decode_rate(lm)
        finally:
            stop.set()
            other.join()
        print(f"{n:>7} {alone:>8.1f} {beside:>8.1f} {1 - beside / alone:>6.0%}")


if __name__ == "__main__":
    main()
