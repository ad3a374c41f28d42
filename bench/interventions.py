"""What interventions cost: lm.trace at 64 and 512 tokens with none, a head ablation, a patch and a whole
attention ablation on the embedded SmolLM2-135M-Instruct, an expert ablation on the random DeepSeek-V3 mini model
(the embedded model has no experts), and greedy decoding with one touched layer (which leaves the fused block step
for the reference block there); each printed as a ratio to the same run without interventions.
Run: PYTHONPATH=. .venv/bin/python -m bench.interventions --repeats 7"""
from __future__ import annotations

import argparse
import time

import torch

from model import AttentionAblation, ExpertAblation, HeadAblation, Patch, load_model

TEXT = " the quick brown fox jumps over the lazy dog"


def best_times(runs: dict, repeats: int) -> dict:
    """The fastest of `repeats` timings of each run (name -> function), taken in turn, one of each per round: on a
    shared machine the load then falls on every run alike, and the fastest is the one least disturbed by it."""
    times: dict = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: min(ts) for name, ts in times.items()}


def trace_rows(lm, cases: dict, lengths: list[int], repeats: int) -> None:
    """lm.trace for each case (name -> ids -> interventions) and length, and its ratio to the first ('none')."""
    for n in lengths:
        ids = (lm.tokenizer.encode(TEXT) * (n // 8 + 1))[:n]
        lm.trace(ids)  # warm-up
        runs = {name: (lambda iv: lambda: lm.trace(ids, iv))(make(ids)) for name, make in cases.items()}
        times = best_times(runs, repeats)
        base = times["none"]
        for name, t in times.items():
            print(f"  {lm.name[:24]:24} {n:5d} tokens  {name:34} {t * 1e3:9.1f} ms  {t / base:5.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 512])
    ap.add_argument("--decode-tokens", type=int, default=32)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")

    lm = load_model(device="cpu", dtype="float32")
    print(f"{lm!r}; fast paths: {'; '.join(lm.fast_paths) or 'none'}")
    source_text = (lm.tokenizer.encode(" a slow red cat sleeps under the warm sun") * 80)
    print(f"lm.trace (the fastest of {args.repeats} runs, taken in turn):")
    trace_rows(lm, {
        "none": lambda ids: None,
        "HeadAblation(15, 4)": lambda ids: [HeadAblation(15, 4)],
        "Patch(15, 1 position)": lambda ids: [Patch(15, [len(ids) // 2], lm.trace(source_text[:len(ids)]))],
        "Patch(15, every position)": lambda ids: [Patch(15, range(len(ids)), lm.trace(source_text[:len(ids)]))],
        "AttentionAblation(15)": lambda ids: [AttentionAblation(15)],
    }, args.lengths, args.repeats)

    moe = load_model("random:deepseek-v3-mini", device="cpu", dtype="float32")
    layer = [i for i in range(moe.config.n_layers) if moe.config.is_moe_layer(i)][0]
    trace_rows(moe, {
        "none": lambda ids: None,
        f"ExpertAblation({layer}, 0)": lambda ids: [ExpertAblation(layer, 0)],
        "ExpertAblation(every MoE layer, 0)": lambda ids: [ExpertAblation(i, 0) for i in range(layer, 6)],
        "HeadAblation(3, 2)": lambda ids: [HeadAblation(3, 2)],
    }, args.lengths, args.repeats)

    n = args.decode_tokens
    ids = lm.tokenizer.encode("The history of the printing press begins in")
    print(f"greedy decoding of {n} tokens, embedded model (tokens/s):")
    decode = lambda iv: lambda: sum(1 for _ in lm.generate(ids, max_new_tokens=n, greedy=True, stop_at_eos=False,
                                                          interventions=iv))
    runs = {"none": decode(None), "HeadAblation(15, 4)": decode([HeadAblation(15, 4)]),
            "a head in each of the 30 layers": decode([HeadAblation(i, 4) for i in range(30)])}
    runs["none"]()  # warm-up
    times = best_times(runs, args.repeats)
    for name, t in times.items():
        print(f"  {name:34} {n / t:8.1f} tok/s  time {t / times['none']:5.2f}x")


if __name__ == "__main__":
    main()
