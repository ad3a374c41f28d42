"""In the browser: time from clicking Generate to the first token on screen, tokens per second seen on screen
against the core's own rate (same prompt and settings, measured first in this process), and bytes per streamed
update. Run: .venv/bin/python -m bench.browser [--tokens 64] [--tab Attention]"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import time

from playwright.sync_api import sync_playwright

from model import load_model
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, start_app

PROMPT = "Once upon a time, in a small village by the sea,"
WATCH = """() => {
    window.__times = []; window.__t0 = performance.now();
    const out = document.querySelector('#output'); let last = 0;
    new MutationObserver(() => {
        const n = out.querySelectorAll('.tok').length;
        for (let i = last; i < n; i++) window.__times.push(performance.now() - window.__t0);
        last = Math.max(last, n);
    }).observe(out, {childList: true, subtree: true});
}"""


def core_rate(n: int) -> float:
    lm = load_model()
    list(lm.generate(PROMPT, max_new_tokens=4, greedy=True))  # warm-up
    start = time.perf_counter()
    count = sum(1 for _ in lm.generate(PROMPT, max_new_tokens=n, greedy=True, record=True, stop_at_eos=False))
    return count / (time.perf_counter() - start)


def cpu_seconds(match) -> float:
    """CPU time used so far by the processes whose name matches (Linux /proc)."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if match(pid, open(f"/proc/{pid}/comm").read().strip()):
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass  # exited meanwhile
    return total


def browser_run(url: str, n: int, tab: str, server_pid: int, count_bytes: bool) -> dict:
    """One generation watched in Chromium. With count_bytes, the DevTools network events are recorded too (they
    cost CPU on this box, so the rates come from a run without them)."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        messages: list[int] = []
        chunks: list[int] = []
        if count_bytes:
            cdp = page.context.new_cdp_session(page)
            cdp.send("Network.enable")
            cdp.on("Network.eventSourceMessageReceived", lambda e: messages.append(len(e["data"].encode())))
            cdp.on("Network.dataReceived", lambda e: chunks.append(e["dataLength"]))
        page.goto(url)
        page.wait_for_selector("#generate")
        page.get_by_role("tab", name=tab).click()
        page.fill("#prompt textarea", PROMPT)
        box = page.locator("#max-new-tokens input[type=number]")
        box.fill(str(n))
        box.press("Enter")
        page.locator("#greedy input").check()
        time.sleep(1)
        page.evaluate(WATCH)
        messages.clear(), chunks.clear()
        server_cpu = lambda: cpu_seconds(lambda pid, name: pid == str(server_pid))
        browser_cpu = lambda: cpu_seconds(lambda pid, name: "chrom" in name)
        cpu0, wall0 = (server_cpu(), browser_cpu()), time.perf_counter()
        page.click("#generate")
        # wait inside the page, polling rarely: a loop of inner_text calls through Playwright's driver would take
        # CPU from the server it measures
        page.wait_for_function("() => /^(Done|Stopped)/.test(document.querySelector('#status').innerText)",
                               polling=500, timeout=300_000)
        wall = time.perf_counter() - wall0
        cpu = [(b - a) / wall for a, b in zip(cpu0, (server_cpu(), browser_cpu()))]
        times = [t / 1000 for t in page.evaluate("() => window.__times")]
        status = page.inner_text("#status")
        browser.close()
    sizes = messages or chunks
    server_rate = float(re.search(r"at ([\d.]+) tok/s", status).group(1)) if "tok/s" in status else float("nan")
    return dict(first=times[0], rate=(len(times) - 1) / (times[-1] - times[0]), n=len(times), status=status,
                server_rate=server_rate, server_cpu=cpu[0], browser_cpu=cpu[1], updates=len(sizes),
                median_bytes=statistics.median(sizes) if sizes else 0, max_bytes=max(sizes, default=0),
                total=sum(sizes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--tab", default="Tokens")
    args = ap.parse_args()
    rate = core_rate(args.tokens)
    proc, url = start_app()
    try:
        r = browser_run(url, args.tokens, args.tab, proc.pid, count_bytes=False)
        sizes = browser_run(url, args.tokens, args.tab, proc.pid, count_bytes=True)
    finally:
        proc.terminate()
    print(f"tab open while generating: {args.tab}; {r['n']} tokens; server said: {r['status']}")
    print(f"{'first token on screen after click (s)':44} {r['first']:8.2f}")
    print(f"{'tokens/s on screen':44} {r['rate']:8.1f}")
    print(f"{'tokens/s of the core alone (record=True)':44} {rate:8.1f}")
    print(f"{'screen / core alone':44} {r['rate'] / rate:8.0%}")
    print(f"{'tokens/s of the core in the app meanwhile':44} {r['server_rate']:8.1f}")
    print(f"{'screen / core in the app':44} {r['rate'] / r['server_rate']:8.0%}")
    print(f"{'CPU cores busy: server / browser':44} {r['server_cpu']:8.2f} / {r['browser_cpu']:.2f}")
    print(f"{'streamed updates':44} {sizes['updates']:8d}")
    print(f"{'bytes per update, median / max':44} {sizes['median_bytes']:8.0f} / {sizes['max_bytes']:.0f}")
    print(f"{'bytes in all':44} {sizes['total']:8d}")


if __name__ == "__main__":
    main()
