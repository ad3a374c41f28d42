"""Serving benchmarks against the real app: cold start (process start to ready), and N simultaneous sessions
through gradio_client (aggregate tokens/s, p95 time to first token, errors). Run: .venv/bin/python -m bench.serving"""
from __future__ import annotations

import argparse
import statistics
import threading
import time

from gradio_client import Client

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


def sessions(url: str, n: int, tokens: int) -> dict:
    clients = [Client(url, verbose=False) for _ in range(n)]
    first: list[float] = []
    counts: list[int] = []
    errors: list[str] = []
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
                    got = time.perf_counter() - start
                count = len(update["tokens"])
            first.append(got)
            counts.append(count)
        except Exception as e:  # counted and reported, not raised: the table says how many failed
            errors.append(str(e)[:80])

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    p95 = statistics.quantiles(first, n=20)[-1] if len(first) >= 2 else (first[0] if first else float("nan"))
    return dict(n=n, tok_s=sum(counts) / wall, p95_first=p95, errors=len(errors), wall=wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--sessions", default="1,4,16")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    starts = cold_start(args.repeats)
    print(f"cold start to ready (s): median {statistics.median(starts):.2f}  ({', '.join(f'{t:.2f}' for t in starts)})")
    proc, url = start_app()
    try:
        Client(url, verbose=False).predict(prompt="warm up", max_new_tokens=2, api_name="/generate")
        print(f"\n{'sessions':>8} {'tok/s (all)':>12} {'p95 first token (s)':>20} {'errors':>7} {'wall (s)':>9}")
        for n in (int(x) for x in args.sessions.split(",")):
            r = sessions(url, n, args.tokens)
            print(f"{r['n']:>8} {r['tok_s']:>12.1f} {r['p95_first']:>20.2f} {r['errors']:>7} {r['wall']:>9.1f}")
        print(f"\npeak memory of the app process (MiB): {peak_rss_mib(proc.pid):.0f}")
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
