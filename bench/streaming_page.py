"""How the page answers while a long generation streams into it, with one tab open at a time: every 2 s, the round
trip of a trivial script in the page and of an animation frame (what a click waits for before the page reacts),
and the page's longest task meanwhile (PerformanceObserver "longtask"), reported by how long the text was then;
at the end, how long a click on Stop takes to be answered ("Stopped" on the status line). Chromium at 1280x720, app
and browser on this machine, the end-of-text token not stopping the run.
Run: PYTHONPATH=. .venv/bin/python -m bench.streaming_page [--tabs Embeddings "Next token"] [--seconds 100]"""
from __future__ import annotations

import argparse
import statistics
import time

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, running_app

PROMPT = "Once upon a time, in a small village by the sea,"
STOP_WAIT_MS = 60_000
BUCKETS = (500, 1000, 1500, 2000, 2500, 4000)  # generated tokens: upper bounds of the rows
LONG_TASKS = """() => {
    window.__longest = 0;
    new PerformanceObserver((list) => list.getEntries().forEach((e) => {
        window.__longest = Math.max(window.__longest, e.duration); })).observe({ type: "longtask", buffered: false });
}"""


def sample(page) -> tuple[int, float, float, float]:
    """(tokens shown, script round trip ms, animation frame ms, longest task since the last sample ms)."""
    start = time.perf_counter()
    n = page.evaluate("() => document.querySelectorAll('#output .tok').length")
    script = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => r(1)))")
    frame = (time.perf_counter() - start) * 1000
    longest = page.evaluate("() => { const t = window.__longest; window.__longest = 0; return t; }")
    return n, script, frame, longest


def run_tab(browser, url: str, tab: str, seconds: float) -> tuple[list[tuple[int, float, float, float]], str]:
    """The samples, and how long Stop took to be answered."""
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#generate")
    page.fill("#prompt textarea", PROMPT)
    box = page.locator("#max-new-tokens input[type=number]")
    box.fill("4000")
    box.press("Enter")
    page.locator("#stop-at-eos input").uncheck()
    page.get_by_role("tab", name=tab).click()
    page.evaluate(LONG_TASKS)
    page.click("#generate")
    samples, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(2)
        samples.append(sample(page))
    start = time.perf_counter()
    try:
        page.click("#stop", timeout=STOP_WAIT_MS)
        page.wait_for_function("() => document.querySelector('#status').innerText.includes('Stopped')",
                               timeout=max(STOP_WAIT_MS - (time.perf_counter() - start) * 1000, 1))
        stop = f"{time.perf_counter() - start:.2f} s"
    except PlaywrightTimeout:
        stop = f"not answered in {STOP_WAIT_MS / 1000:.0f} s"
    context.close()
    return samples, stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tabs", nargs="+", default=["Tokens", "Embeddings", "Next token", "Architecture"])
    parser.add_argument("--seconds", type=float, default=100.0, help="how long each tab's run streams")
    args = parser.parse_args()
    env = {"EXPLORER_MAX_NEW_TOKENS": "4000", "EXPLORER_MAX_CONTEXT": "4200", "EXPLORER_TIME_LIMIT_SECONDS": "3600"}
    with running_app(env=env) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        print(f"{'tab':<14}{'tokens':>12}{'samples':>9}{'script ms (median / max)':>28}"
              f"{'frame ms (median / max)':>26}{'longest task ms':>17}")
        for tab in args.tabs:
            samples, stop = run_tab(browser, url, tab, args.seconds)
            low = 0
            for high in BUCKETS:
                rows = [s for s in samples if low < s[0] <= high]
                if rows:
                    scripts, frames = [r[1] for r in rows], [r[2] for r in rows]
                    print(f"{tab:<14}{f'{low + 1}-{high}':>12}{len(rows):>9}"
                          f"{f'{statistics.median(scripts):.0f} / {max(scripts):.0f}':>28}"
                          f"{f'{statistics.median(frames):.0f} / {max(frames):.0f}':>26}"
                          f"{max(r[3] for r in rows):>17.0f}")
                low = high
            print(f"{tab:<14}Stop at {samples[-1][0] if samples else 0} tokens: {stop}")
        browser.close()


if __name__ == "__main__":
    main()
