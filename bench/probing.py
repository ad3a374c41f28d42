"""What probing costs on the embedded model, at 64 and 512 tokens: a plain forward pass (for scale), an ablation (the
next-token distribution without one head, recomputed from its layer on; from the first layer and from the middle), one
activation-patching run (one layer and position), and a whole patching map of a short prompt pair (every layer and
position, as the Probe tab and /patching compute it).

    PYTHONPATH=. .venv/bin/python -m bench.probing [--repeats 3]
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from bench.core import median_time
from explorer.probing import ablate, patched_logprobs, patching_sweep
from model import HeadAblation, load_model

TEXT = ("The old map showed a river that ran from the hills past the mill and the school down to the harbour, where "
        "ships waited for the morning tide while children counted the gulls and the baker sold warm bread. ")
PAIR = ("The Eiffel Tower is in the city of", "The Colosseum is in the city of")


def timed(fn: Callable[[], object], repeats: int) -> float:
    """The median of `repeats` runs, in seconds, after one warm-up run."""
    fn()
    return median_time(fn, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    lm = load_model()
    tok = lm.tokenizer
    n_layers = lm.config.n_layers
    long_ids = tok.encode(TEXT * 40)
    print(f"{lm.name} on {lm.device.type} ({torch.get_num_threads()} threads), median of {args.repeats} runs")
    print(f"{'tokens':>6}  {'forward':>8}  {'ablate L0':>9}  {'ablate L15':>10}  {'1 patch L0':>10}  "
          f"{'1 patch L15':>11}  {'whole map (estimate)':>20}")
    for n in (64, 512):
        ids = long_ids[:n]
        other = long_ids[n : 2 * n]
        trace, source = lm.trace(ids), lm.trace(other)
        forward = timed(lambda: lm.trace(ids), args.repeats)
        head_0 = timed(lambda: ablate(trace, n - 1, [HeadAblation(0, 0)]), args.repeats)
        head_15 = timed(lambda: ablate(trace, n - 1, [HeadAblation(15, 0)]), args.repeats)
        patch_0 = timed(lambda: patched_logprobs(source, trace, 0, [n // 2]), args.repeats)
        patch_15 = timed(lambda: patched_logprobs(source, trace, 15, [n // 2]), args.repeats)
        # every layer and position: n_layers x n runs, each from its layer on (on average half the blocks)
        whole = n * n_layers * patch_15
        print(f"{n:>6}  {forward:>7.3f}s  {head_0:>8.3f}s  {head_15:>9.3f}s  {patch_0:>9.3f}s  {patch_15:>10.3f}s"
              f"  {whole:>19.0f}s")
    trace_a, trace_b = (lm.trace(tok.encode(p)) for p in PAIR)
    start = time.perf_counter()
    tasks, longest = 0, 0.0
    sweep = patching_sweep(trace_a, trace_b)
    while True:
        began = time.perf_counter()
        result = next(sweep, None)
        if result is None:
            break
        tasks, longest = tasks + 1, max(longest, time.perf_counter() - began)
    print(f"whole patching map of {PAIR[0]!r} into {PAIR[1]!r} ({len(trace_a)} tokens, {n_layers * len(trace_a)} "
          f"runs): {time.perf_counter() - start:.1f}s in {tasks} tasks, the longest {longest:.2f}s")


if __name__ == "__main__":
    main()
