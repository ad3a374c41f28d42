"""Two replicas of the app behind nginx with sticky sessions, as `make replicas` runs them (deploy/): two browser sessions
through the balancer each generate, select a token and generate again, each keeping its own state; every request of a
session reaches the replica its cookie names, the two sessions land on different replicas, and each replica's /stats
counts exactly its own session's work."""
from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from gradio_client import Client

from deploy.replicas import COOKIE, nginx_binary, render_config, replica_names, replica_threads, start_nginx
from tests.e2e.conftest import HANG, RUNNING, free_port, open_page, start_app
from tests.e2e.test_app import set_prompt, wait_done

SESSIONS = (  # first prompt, second prompt (different lengths: the Tokens tab counts them), max new tokens
    ("Alpha apples are", "Alpha apples grow in", 6),
    ("Zebra zeppelins are", "Zebra zeppelins fly", 5),
)
LOG_LINE = re.compile(r'"(?P<method>\S+) (?P<path>\S+) [^"]*" (?P<status>\d+) cookie=(?P<cookie>\S+) '
                      r'upstream=(?P<upstream>.*)$')
WATCH_TOASTS = """() => { window.__toasts = [];
    new MutationObserver(() => document.querySelectorAll('.toast-body').forEach(t => {
        const text = t.innerText.trim();
        if (text && !window.__toasts.includes(text)) window.__toasts.push(text);
    })).observe(document.body, {childList: true, subtree: true}); }"""


@dataclass
class Balancer:
    url: str
    replicas: dict[str, str]  # the cookie's name of each replica -> its host:port
    run_dir: Path

    def log(self) -> list[dict[str, str]]:
        lines = (self.run_dir / "access.log").read_text().splitlines()
        parsed = [LOG_LINE.search(line) for line in lines]
        assert all(parsed), f"unreadable lines in nginx's access log: {lines}"
        return [match.groupdict() for match in parsed]


@pytest.fixture(scope="module")
def replicas() -> list[str]:
    """Two apps on the embedded model, started together, each checked for tracebacks like running_app's."""
    if nginx_binary() is None:
        pytest.fail("nginx is missing: `make test` installs Debian's nginx package")
    env = {"OMP_NUM_THREADS": str(replica_threads(2))}
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(start_app, env=env) for _ in range(2)]
    started = [f.result() for f in futures if f.exception() is None]
    procs = [proc for proc, _ in started]
    RUNNING.extend(procs)
    try:
        if len(started) < 2:
            raise next(f.exception() for f in futures if f.exception() is not None)
        yield [url.removeprefix("http://").rstrip("/") for _, url in started]
    finally:
        for proc in procs:
            RUNNING.remove(proc)
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=HANG)
            proc.log.close()


def run_balancer(addresses: list[str], run_dir: Path) -> tuple[subprocess.Popen, Balancer]:
    port = free_port()
    proc = start_nginx(render_config(f"127.0.0.1:{port}", addresses, run_dir), run_dir, port)
    return proc, Balancer(f"http://127.0.0.1:{port}/", replica_names(addresses), run_dir)


@pytest.fixture(scope="module")
def balancer(replicas, tmp_path_factory):
    proc, balancer = run_balancer(replicas, tmp_path_factory.mktemp("nginx"))
    yield balancer
    proc.terminate()
    proc.wait(timeout=HANG)


def generated(status: str) -> int:
    """The number of tokens a finished generation's status line reports."""
    found = re.match(r"Done: (\d+) tokens", status)
    assert found, status
    return int(found.group(1))


def test_two_sessions_each_stay_on_their_replica_and_keep_their_state(browser, balancer):
    pages = []
    for first, _, max_new in SESSIONS:
        context, page = open_page(browser, balancer.url)
        page.evaluate(WATCH_TOASTS)
        set_prompt(page, first, max_new=max_new, greedy=True)
        pages.append((context, page))
    tokens = [0, 0]
    for _, page in pages:  # both generate at the same time
        page.click("#generate")
    for i, (_, page) in enumerate(pages):
        tokens[i] += generated(wait_done(page))

    # a token clicked in the text is the selection in the Tokens tab: state the session's replica keeps
    for i, (_, page) in enumerate(pages):
        chip = page.locator("#output .tok").nth(i)  # a different token in each session
        pos = int(chip.get_attribute("data-pos"))
        chip.click()
        page.get_by_role("tab", name="Tokens").click()
        page.wait_for_function("(sel) => document.querySelector(sel)?.classList.contains('sel')",
                               arg=f'#token-chips .tok[data-pos="{pos}"]')

    for (_, page), (_, second, _) in zip(pages, SESSIONS):  # a second generation each, again at the same time
        page.fill("#prompt textarea", second)
        page.click("#generate")
    for i, (_, page) in enumerate(pages):
        tokens[i] += generated(wait_done(page))
    for (_, page), (_, second, _), (_, other, _) in zip(pages, SESSIONS, reversed(SESSIONS)):
        text = page.inner_text("#output")
        assert second in text and other not in text, text
        page.wait_for_function("(n) => document.querySelector('#token-stats').innerText.includes(n)",
                               arg=f"characters\t{len(second)}")
        assert page.evaluate("() => window.__toasts") == [], "an error toast reached the screen"
        assert not page.js_errors, page.js_errors

    # each browser is pinned by the balancer's cookie, and the two are on different replicas
    pinned = [next(c["value"] for c in context.cookies() if c["name"] == COOKIE) for context, _ in pages]
    assert sorted(pinned) == sorted(balancer.replicas), pinned
    # every request that carried a cookie reached the replica it names; only each browser's first page load had none
    log = balancer.log()
    strays = [line for line in log if line["cookie"] != "-" and line["upstream"] != balancer.replicas[line["cookie"]]]
    assert not strays, f"requests that left their session's replica: {strays[:5]}"
    first_loads = [line for line in log if line["cookie"] == "-"]
    assert [(line["method"], line["path"]) for line in first_loads] == [("GET", "/")] * len(pages), first_loads
    assert [line["upstream"] for line in first_loads] == [balancer.replicas[name] for name in pinned]
    assert not (failed := [line for line in log if line["status"] not in ("200", "204", "304")]), failed
    # and each replica did exactly its own session's work: one session, its two generations, its tokens
    for name, session_tokens in zip(pinned, tokens):
        stats = Client(f"http://{balancer.replicas[name]}/", verbose=False).predict(api_name="/stats")
        assert stats["sessions"] == 1, (name, stats)
        assert sum(stats["ended_generations"].values()) == 2, (name, stats)
        assert stats["generated_tokens"] == session_tokens, (name, stats, tokens)
    assert not (balancer.run_dir / "error.log").read_text(), "nginx logged a warning or an error"
    for context, _ in pages:
        context.close()


def test_a_browser_pinned_to_a_gone_replica_is_pinned_anew(replicas, tmp_path):
    """A replica that stopped takes its sessions' state with it; the balancer then deals its browsers to a live
    replica (and says so in the cookie) instead of answering errors for as long as the cookie lives."""
    gone = f"127.0.0.1:{free_port()}"  # nothing listens there
    proc, balancer = run_balancer([replicas[0], gone], tmp_path)
    try:
        request = urllib.request.Request(balancer.url, headers={"Cookie": f"{COOKIE}=r2"})
        with urllib.request.urlopen(request, timeout=HANG) as response:
            assert response.status == 200
            assert response.headers["Set-Cookie"].startswith(f"{COOKIE}=r1;")
    finally:
        proc.terminate()
        proc.wait(timeout=HANG)
    assert balancer.log()[0]["upstream"].split(" : ")[-1] == replicas[0]
