"""Serving benchmarks against the real app: cold start (process start to ready), and N simultaneous sessions
through gradio_client (aggregate tokens/s, p95 time to first token, errors, and the share of the machine's CPU time
that the app and the clients took: both run here); first, in the same run, the core's own
decoding of 1 and of 16 sequences at once (model/batch.py), and the share of the machine's float32 matmul rate
that 16 reach. Run: .venv/bin/python -m bench.serving"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import threading
import time

import torch
from gradio_client import Client

from bench.core import median_time
from explorer.ui.common import Limits
from model import load_model
from model.batch import advance, sample_all
from tests.e2e.conftest import start_app


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM), Linux only."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cold_start(repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc, _ = start_app()
        times.append(time.perf_counter() - start)
        proc.terminate()
        proc.wait(timeout=20)
    return times


def core_rates(lm, tokens: int, batches: tuple[int, ...] = (1, 16)) -> dict[int, float]:
    """Tokens/s of the core decoding `b` sequences at once (each prompt read first), greedy, no recording."""

    def run(b: int) -> None:
        ds = [lm.decoding(f"Story number {i}: once upon a time", max_new_tokens=tokens, greedy=True,
                          stop_at_eos=False) for i in range(b)]
        while not all(d.finished for d in ds):
            for d in ds:
                while d.prefilling:
                    d.prefill()
            ready = [d for d in ds if d.ready]
            if ready:
                advance(ready)
            sampling = [d for d in ds if d.logits is not None]
            if sampling:
                sample_all(sampling)  # as the server samples a step's rows: together

    run(2)  # warm-up
    return {b: b * tokens / median_time(lambda: run(b), 3) for b in batches}


def matmul_flops(n: int = 2048) -> float:
    """The float32 multiply-adds per second (x2) torch reaches on a large square product: the machine's peak, in
    practice."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    return 2 * n**3 / median_time(lambda: a @ b, 5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux only)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def sessions(url: str, n: int, tokens: int, server_pid: int) -> dict:
    clients = [Client(url, verbose=False) for _ in range(n)]
    first: list[float] = []
    counts: list[int] = []
    errors: list[str] = []
    streams: list[float] = []  # each session's tokens/s once its first update came
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        start = time.perf_counter()
        try:
            job = clients[i].submit(prompt=f"Story number {i}: once upon a time", max_new_tokens=tokens,
                                    temperature=1.0, seed=i, api_name="/generate")
            got = None
            for update in job:
                if got is None:
                    got, first_count = time.perf_counter() - start, len(update["tokens"])
                count = len(update["tokens"])
            first.append(got)
            counts.append(count)
            if count > first_count:  # the tokens after the first update, over the time they took to come
                streams.append((count - first_count) / (time.perf_counter() - start - got))
        except Exception as e:  # counted and reported, not raised: the table says how many failed
            errors.append(str(e)[:80])

    start, server_cpu, client_cpu = time.perf_counter(), cpu_seconds(server_pid), own_cpu_seconds()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    machine = wall * os.cpu_count()  # CPU seconds the machine had meanwhile
    server_share = (cpu_seconds(server_pid) - server_cpu) / machine
    client_share = (own_cpu_seconds() - client_cpu) / machine  # this process: the gradio_client sessions
    p95 = statistics.quantiles(first, n=20)[-1] if len(first) >= 2 else (first[0] if first else float("nan"))
    return dict(n=n, tok_s=sum(counts) / wall, p95_first=p95, errors=len(errors), wall=wall,
                stream=statistics.median(streams) if streams else float("nan"), server=server_share,
                client=client_share)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--sessions", default="1,4,16")
    ap.add_argument("--repeats", type=int, default=3, help="cold starts to time (0: none)")
    ap.add_argument("--max-concurrent", type=int, default=Limits.max_concurrent,
                    help="the app's EXPLORER_MAX_CONCURRENT: how many generations Gradio runs at once (the rest "
                         "queue), so how many a decoding step can batch")
    ap.add_argument("--long", type=int, default=256,
                    help="tokens of one more single session, where the request's fixed cost weighs less (0: none)")
    args = ap.parse_args()
    os.environ["EXPLORER_MAX_CONCURRENT"] = str(args.max_concurrent)  # the apps started below inherit it
    lm = load_model(device="cpu", dtype="float32")
    rates = core_rates(lm, args.tokens)
    params = sum(p.numel() for p in lm.decoder.parameters())  # a token costs about 2 flops per parameter
    peak = matmul_flops()
    del lm
    print(f"core decode (tok/s): 1 sequence {rates[1]:.1f}, 16 at once {rates[16]:.1f} "
          f"({rates[16] / rates[1]:.1f}x); 16 at once reach {rates[16] * 2 * params / peak:.0%} of the "
          f"float32 matmul rate torch gets here ({peak / 1e9:.0f} GFLOP/s)")
    if args.repeats:
        starts = cold_start(args.repeats)
        print(f"cold start to ready (s): median {statistics.median(starts):.2f}  "
              f"({', '.join(f'{t:.2f}' for t in starts)})")
    proc, url = start_app()
    try:
        Client(url, verbose=False).predict(prompt="warm up", max_new_tokens=2, api_name="/generate")
        print(f"\napp with EXPLORER_MAX_CONCURRENT={args.max_concurrent}")
        print(f"{'sessions':>8} {'tok/s (all)':>12} {'x core':>7} {'p95 first token (s)':>20} {'errors':>7} "
              f"{'wall (s)':>9} {'tok/s each, once streaming':>27} {'CPU: app / client':>18}")
        for n in (int(x) for x in args.sessions.split(",")):
            r = sessions(url, n, args.tokens, proc.pid)
            print(f"{r['n']:>8} {r['tok_s']:>12.1f} {r['tok_s'] / rates[1]:>7.2f} {r['p95_first']:>20.2f} "
                  f"{r['errors']:>7} {r['wall']:>9.1f} {r['stream']:>27.1f} {r['server']:>10.0%} / {r['client']:.0%}")
        if args.long:
            r = sessions(url, 1, args.long, proc.pid)
            print(f"\none session of {args.long} tokens: {r['tok_s']:.1f} tok/s in all ({r['tok_s'] / rates[1]:.0%} of "
                  f"the core's single stream), {r['stream']:.1f} once streaming ({r['stream'] / rates[1]:.0%}); "
                  f"first token {r['p95_first']:.2f} s; CPU: app {r['server']:.0%}, client {r['client']:.0%} of the "
                  "machine")
        print(f"\npeak memory of the app process (MiB): {peak_rss_mib(proc.pid):.0f}")
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
