"""In the browser: time from clicking Generate to the first token on screen, tokens per second seen on screen
against the core's own rate (same prompt and settings, measured first in this process), and bytes per streamed
update. Run: .venv/bin/python -m bench.browser [--tokens 64] [--tab Attention]"""
from __future__ import annotations

import argparse
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


def browser_run(url: str, n: int, tab: str) -> dict:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
        messages: list[int] = []
        cdp.on("Network.eventSourceMessageReceived", lambda e: messages.append(len(e["data"].encode())))
        chunks: list[int] = []
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
        page.click("#generate")
        # wait inside the page, polling rarely: a loop of inner_text calls through Playwright's driver would take
        # CPU from the server it measures
        page.wait_for_function("() => /^(Done|Stopped)/.test(document.querySelector('#status').innerText)",
                               polling=500, timeout=300_000)
        times = [t / 1000 for t in page.evaluate("() => window.__times")]
        status = page.inner_text("#status")
        browser.close()
    sizes = messages or chunks
    return dict(first=times[0], rate=(len(times) - 1) / (times[-1] - times[0]), n=len(times), status=status,
                updates=len(sizes), median_bytes=statistics.median(sizes), max_bytes=max(sizes), total=sum(sizes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--tab", default="Tokens")
    args = ap.parse_args()
    rate = core_rate(args.tokens)
    proc, url = start_app()
    try:
        r = browser_run(url, args.tokens, args.tab)
    finally:
        proc.terminate()
    print(f"tab open while generating: {args.tab}; {r['n']} tokens; server said: {r['status']}")
    print(f"{'first token on screen after click (s)':44} {r['first']:8.2f}")
    print(f"{'tokens/s on screen':44} {r['rate']:8.1f}")
    print(f"{'tokens/s of the core (record=True)':44} {rate:8.1f}")
    print(f"{'screen / core':44} {r['rate'] / rate:8.0%}")
    print(f"{'streamed updates':44} {r['updates']:8d}")
    print(f"{'bytes per update, median / max':44} {r['median_bytes']:8.0f} / {r['max_bytes']:.0f}")
    print(f"{'bytes in all':44} {r['total']:8d}")


if __name__ == "__main__":
    main()
