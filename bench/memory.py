"""Memory after many sessions, as an attacker makes them: each a new gradio_client that calls the UI's own generate
event (private, but callable) with a long context, then never comes back. Prints the server's RSS at start, at its
peak, after the sessions and once the idle ones have expired, with the registry's accounting (/stats).
Run: PYTHONPATH=. .venv/bin/python -m bench.memory --sessions 200"""
from __future__ import annotations

import argparse
import time

from gradio_client import Client

from tests.e2e.conftest import HANG, start_app

PROMPT = "The students read the chapter about attention, and then they wrote a long essay on it. " * 20  # ~360 tokens


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """The process's resident memory now (VmRSS) or at its peak (VmHWM), Linux only."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def ui_session(url: str, prompt: str = PROMPT, max_new_tokens: int = 4, seed: int = 0) -> None:
    """One new session that generates through the UI's generate event, as the page's button does (gradio_client
    refuses private events by itself; an attacker's client does not)."""
    client = Client(url, verbose=False)
    index = next(i for i, d in enumerate(client.config["dependencies"]) if d.get("api_name") == "on_generate")
    client.endpoints[index].is_valid = True
    #                prompt, chat, max new, temperature, top-k, top-p, seed, greedy, stop at eos, state
    client.predict(prompt, False, max_new_tokens, 0.8, 50, 0.95, seed, True, False, None, fn_index=index)


def stats(url: str) -> dict:
    return Client(url, verbose=False).predict(api_name="/stats")


def wait_for_expiry(url: str, sessions: int) -> dict:
    """/stats once every session has expired (the app's time to live must be short)."""
    deadline = time.monotonic() + HANG
    while (now := stats(url))["sessions_expired"] < sessions and time.monotonic() < deadline:
        time.sleep(1)
    return now


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--ttl", type=float, default=30.0, help="the app's EXPLORER_SESSION_TTL_SECONDS")
    ap.add_argument("--cap-mib", type=int, default=1024, help="the app's EXPLORER_TRACE_MEMORY_MIB")
    args = ap.parse_args()
    proc, url = start_app(env={"EXPLORER_SESSION_TTL_SECONDS": str(args.ttl),
                               "EXPLORER_TRACE_MEMORY_MIB": str(args.cap_mib)})
    try:
        Client(url, verbose=False).predict(prompt="warm up", max_new_tokens=2, api_name="/generate")
        start = rss_mib(proc.pid)
        began = time.perf_counter()
        for i in range(args.sessions):
            ui_session(url, seed=i)
            if (i + 1) % 20 == 0:
                s = stats(url)
                print(f"{i + 1:>4} sessions  RSS {rss_mib(proc.pid):7.0f} MiB  traces {s['trace_bytes'] / 2**20:6.0f} "
                      f"MiB held by {s['sessions_holding_traces']}  dropped {s['traces_dropped']}", flush=True)
        took = time.perf_counter() - began
        after = rss_mib(proc.pid)
        s = wait_for_expiry(url, args.sessions)
        time.sleep(2)
        end = rss_mib(proc.pid)
        print(f"\n{args.sessions} sessions ({len(PROMPT)} characters of prompt and 4 new tokens each) in {took:.0f} s; "
              f"cap {args.cap_mib} MiB, time to live {args.ttl:g} s")
        print(f"RSS (MiB): start {start:.0f}  peak {rss_mib(proc.pid, 'VmHWM'):.0f}  after the sessions {after:.0f}  "
              f"after expiry {end:.0f}  (end - start: {end - start:+.0f})")
        print(f"registry: {s}")
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
