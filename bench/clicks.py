"""Click latency of the Attention tab in Chromium at 1280x720, from the click (pointer or key down) to the map changed
on screen: opening the tab, changing the layer and the head, clicking a token of the text, toggling hide-sink, on a
~64-token and a ~1,024-token context; the first Attention render at ~1,200 tokens; and how long those renders stall a
second session's generation. Run: PYTHONPATH=. .venv/bin/python -m bench.clicks [--repeat 3]"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from gradio_client import Client
from playwright.sync_api import Page, sync_playwright

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, start_app

SHORT_PROMPT = "Once upon a time, in a small village by the sea,"
SENTENCES = [
    "The teacher opened the notebook and asked the class a question about the model.",
    "Every token looks back at the tokens before it, and each head decides where to look.",
    "Some heads copy the previous word, others find the subject of the sentence far away.",
    "When a head has nothing better to do, it parks its attention on the very first token.",
    "The students wrote down what they saw, layer after layer, head after head.",
    "A river ran through the old town, past the bakery, the school and the station.",
    "In the evening the lamps were lit one by one while the market closed its stalls.",
    "Numbers such as 1024, 3.14 and 42 are split into pieces that the model reads in turn.",
]
MAX_PROMPT_TOKENS = 1240  # the app's prompt cap for this run, so that a ~1,200-token context is one prompt
TIMEOUT_MS = 120_000

# In the page: the click time (capture phase, before any handler), and a signature of a plot's figure (title, shapes,
# rows) that every action measured here changes; the map counts as changed at the first animation frame that shows
# a new signature.
INSTRUMENT = """() => {
    if (window.__bench) return;
    window.__bench = true;
    const mark = () => { window.__t0 = performance.now(); };
    window.addEventListener('pointerdown', mark, true);
    window.addEventListener('keydown', mark, true);
    window.__sig = (id) => {
        const gd = document.querySelector('#' + id + ' .js-plotly-plot');
        if (!gd || !gd.layout || !gd.data || !gd.data.length) return '';
        const t = gd.layout.title, h = gd.data[0];
        const rows = h.y && h.y.length !== undefined ? [h.y.length, h.y[0]] : null;
        return JSON.stringify([t && (t.text !== undefined ? t.text : t), gd.layout.shapes || null, rows]);
    };
}"""
CHANGED = """([id, before]) => {
    const now = window.__sig(id);
    if (now && now !== before) { window.__t1 = performance.now(); return true; }
    return false;
}"""
STALL_TOKENS = 3000  # the second session's run: it must still be writing when the first session's clicks end
# the second session: the time each new token appears in its output
WATCH_TOKENS = """() => {
    window.__times = [];
    const out = document.querySelector('#output'); let last = out.querySelectorAll('.tok').length;
    new MutationObserver(() => {
        const n = out.querySelectorAll('.tok').length;
        for (let i = last; i < n; i++) window.__times.push(performance.now());
        last = Math.max(last, n);
    }).observe(out, {childList: true, subtree: true});
}"""


def long_prompt(n_sentences: int) -> str:
    """A fixed English text of about 19 tokens per sentence; numbered rounds keep it from repeating exactly."""
    parts = []
    for i in range(n_sentences):
        parts.append(SENTENCES[i % len(SENTENCES)])
        if i % len(SENTENCES) == len(SENTENCES) - 1:
            parts.append(f"({i // len(SENTENCES) + 1})")
    return " ".join(parts)


@dataclass
class Timings:
    """Latencies (s) and bytes received per action."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    bytes: dict[str, list[int]] = field(default_factory=dict)

    def add(self, action: str, seconds: float, n_bytes: int) -> None:
        print(f"  {action}: {seconds:.3f} s, {n_bytes / 1024:.0f} KB", file=sys.stderr, flush=True)
        self.seconds.setdefault(action, []).append(seconds)
        self.bytes.setdefault(action, []).append(n_bytes)


class Session:
    """One browser page on the app, with the bytes it receives counted through DevTools."""

    def __init__(self, browser, url: str) -> None:
        self.page: Page = browser.new_page(viewport={"width": 1280, "height": 720})
        self.page.set_default_timeout(TIMEOUT_MS)
        self.received: list[tuple[float, int]] = []
        self.heads_picked = 0
        cdp = self.page.context.new_cdp_session(self.page)
        cdp.send("Network.enable")
        cdp.on("Network.dataReceived", lambda e: self.received.append((time.monotonic(), e["dataLength"])))
        self.page.goto(url)
        self.page.wait_for_selector("#generate")
        self.page.evaluate(INSTRUMENT)

    def generate(self, prompt: str, n_new: int, wait: bool = True) -> None:
        page = self.page
        page.fill("#prompt textarea", prompt)
        box = page.locator("#max-new-tokens input[type=number]")
        box.fill(str(n_new))
        box.press("Enter")
        page.locator("#greedy input").check()
        page.locator("#stop-at-eos input").uncheck()
        time.sleep(0.3)
        page.click("#generate")
        if wait:
            self.wait_done()

    def wait_done(self) -> None:
        """Until the generation has ended and the app is idle: the open tab's render after a generation (and the
        trace of the whole context it may compute) ends by enabling Generate again."""
        self.page.wait_for_function(
            "() => /^(Done|Stopped)/.test(document.querySelector('#status').innerText)"
            " && !document.querySelector('#generate').disabled", polling=200, timeout=300_000)
        time.sleep(0.5)

    def n_tokens(self) -> int:
        """The context's length: the output shows the prompt as text, then one chip per generated token."""
        return self.page.evaluate("() => Math.max(...[...document.querySelectorAll('#output .tok[data-pos]')]"
                                  ".map((e) => Number(e.dataset.pos))) + 1")

    def timed(self, action, plot: str = "attn-map") -> tuple[float, int]:
        """Seconds from the click done by action() to the plot's new signature on screen, and bytes received."""
        before = self.page.evaluate("(id) => window.__sig(id)", plot)
        self.page.evaluate("() => { window.__t0 = null; window.__t1 = null; }")
        start = time.monotonic()
        action()
        self.page.wait_for_function(CHANGED, arg=[plot, before], polling="raf", timeout=TIMEOUT_MS)
        seconds = self.page.evaluate("() => (window.__t1 - window.__t0) / 1000")
        time.sleep(0.6)  # let the event's last updates arrive before the next click
        n_bytes = sum(n for t, n in self.received if t >= start)
        return seconds, n_bytes

    # the actions, each a single user gesture
    def open_tab(self, name: str) -> None:
        self.page.get_by_role("tab", name=name).click()

    def step_layer(self, key: str) -> None:
        self.page.locator("#attn-layer input[type=range]").focus()
        self.page.keyboard.press(key)

    def pick_head(self) -> None:
        """A head other than the one shown: 1, 2, ... 8 in turn."""
        self.heads_picked += 1
        self.page.locator("#attn-head input").click()
        self.page.get_by_role("option", name=str(1 + (self.heads_picked - 1) % 8), exact=True).click()

    def click_token(self, pos: int) -> None:
        self.page.locator(f'#attn-text .tok[data-pos="{pos}"]').click()

    def toggle_sink(self) -> None:
        self.page.locator("#attn-hide-sink input").click()


def clicks(s: Session, timings: Timings, context: str, prompt: str, n_new: int, repeat: int) -> int:
    """Every measured action on a fresh context made with another tab open, each repeat on a new generation (one
    token longer, so that the first render is a first render again). Returns the context's length."""
    for i in range(repeat):
        s.open_tab("Tokens")
        s.generate(prompt, n_new + i)
        n = s.n_tokens()
        timings.add(f"{context}: open the tab", *s.timed(lambda: s.open_tab("Attention")))
        timings.add(f"{context}: layer", *s.timed(lambda: s.step_layer("ArrowRight")))
        timings.add(f"{context}: head", *s.timed(s.pick_head))
        position = (n * (2 * i + 1)) // (2 * repeat + 1)
        timings.add(f"{context}: token in text", *s.timed(lambda: s.click_token(position)))
        timings.add(f"{context}: hide sink", *s.timed(s.toggle_sink))
    return n


def stall(s1: Session, s2: Session, server: Client, prompt: str) -> dict[str, Any]:
    """Gaps between updates of the second session's text on screen: on its own, then while the first session opens the
    Attention tab on a fresh long context and clicks in it; and the longest task of each kind the model thread ran
    meanwhile (a token of the second session waits for at most one of them)."""
    s1.open_tab("Tokens")
    s1.generate(prompt, 4)  # a context of its own: the Attention tab's first render comes next
    s2.generate(SHORT_PROMPT, STALL_TOKENS, wait=False)
    s2.page.wait_for_function("() => document.querySelectorAll('#output .tok').length > 20", polling=100)
    s2.page.evaluate(WATCH_TOKENS)
    server.predict(api_name="/stats")  # from here, the longest wait between two tokens on its own
    time.sleep(4)
    alone_gap = server.predict(api_name="/stats")["longest_token_gap"]  # and from here, during the clicks
    alone_end = s2.page.evaluate("() => performance.now()")
    s1.timed(lambda: s1.open_tab("Attention"))
    s1.timed(lambda: s1.step_layer("ArrowRight"))
    s1.timed(s1.pick_head)
    s1.timed(lambda: s1.click_token(300))
    during_end = s2.page.evaluate("() => performance.now()")
    stats = server.predict(api_name="/stats")
    longest, during_gap = stats["longest_model_tasks"], stats["longest_token_gap"]
    times = s2.page.evaluate("() => window.__times")
    updates = sorted(set(times))  # several tokens arrive in one update of the text
    if s2.page.locator("#stop").is_enabled():
        s2.page.click("#stop")
    s2.wait_done()
    alone = [b - a for a, b in zip(updates, updates[1:]) if b <= alone_end]
    during = [b - a for a, b in zip(updates, updates[1:]) if alone_end < b <= during_end]
    n_alone = sum(1 for t in times if t <= alone_end)
    return dict(token_ms=(times[n_alone - 1] - times[0]) / max(1, n_alone - 1),
                alone_median=statistics.median(alone), alone_max=max(alone),
                during_median=statistics.median(during) if during else float("nan"),
                during_max=max(during, default=float("nan")), during_s=(during_end - alone_end) / 1000,
                longest=longest, alone_gap=alone_gap * 1000, during_gap=during_gap * 1000)


def report(timings: Timings, contexts: dict[str, int], stalls: dict[str, float], load: tuple) -> None:
    print(f"Attention tab, Chromium 1280x720, app and browser on {os.cpu_count()} cores "
          f"(load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")
    print("contexts: " + ", ".join(f"{name} = {n} tokens" for name, n in contexts.items()))
    print(f"{'action (click -> map changed on screen)':40} {'n':>3} {'median s':>9} {'max s':>7} {'KB median':>10}")
    for action, seconds in timings.seconds.items():
        kb = statistics.median(timings.bytes[action]) / 1024
        print(f"{action:40} {len(seconds):3d} {statistics.median(seconds):9.3f} {max(seconds):7.3f} {kb:10.0f}")
    print("second session's generation, the longest wait between two of its tokens as the model produced them (ms): "
          f"on its own {stalls['alone_gap']:.0f}, while the first session opens Attention at ~1,200 tokens and clicks "
          f"{stalls['during_gap']:.0f} (target: one token's time plus 100 ms)")
    print("second session's generation, gaps between updates of its text on screen (ms):")
    print(f"  on its own: median {stalls['alone_median']:.0f}, max {stalls['alone_max']:.0f} "
          f"(one token every {stalls['token_ms']:.0f} ms on average; the text refreshes at most 10 times a second)")
    print(f"  while the first session opens Attention at ~1,200 tokens and clicks ({stalls['during_s']:.1f} s): "
          f"median {stalls['during_median']:.0f}, max {stalls['during_max']:.0f}")
    print("  the model thread's longest task of each kind meanwhile (ms): " + ", ".join(
        f"{name} {seconds * 1000:.0f}" for name, seconds in sorted(stalls["longest"].items(), key=lambda kv: -kv[1])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3, help="times each action is measured per context")
    args = ap.parse_args()
    load = os.getloadavg()
    proc, url = start_app(env={"EXPLORER_MAX_PROMPT_TOKENS": str(MAX_PROMPT_TOKENS),
                               # the second session's run must outlast the first one's clicks (tokens come every
                               # ~17 ms: 256 ended before them); the stall test stops it
                               "EXPLORER_MAX_NEW_TOKENS": str(STALL_TOKENS),
                               "EXPLORER_MAX_CONTEXT": str(MAX_PROMPT_TOKENS + STALL_TOKENS)})
    timings, contexts = Timings(), {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            s1, s2 = Session(browser, url), Session(browser, url)
            contexts["short"] = clicks(s1, timings, "short", SHORT_PROMPT, 51, args.repeat)
            contexts["long"] = clicks(s1, timings, "long", long_prompt(54), 4, args.repeat)
            s1.open_tab("Tokens")
            s1.generate(long_prompt(63), 4)
            contexts["longest"] = s1.n_tokens()
            timings.add("longest: first render (open the tab)", *s1.timed(lambda: s1.open_tab("Attention")))
            stalls = stall(s1, s2, Client(url, verbose=False), long_prompt(62))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    report(timings, contexts, stalls, load)


if __name__ == "__main__":
    main()
