"""The real app on a free local port, driven by Playwright through Debian's Chromium (no `playwright install`). A test
fails when an app that runs under it logs a traceback."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--enable-unsafe-swiftshader"]
HANG = 120.0  # seconds: the bound of every wait in these tests (pages included); only a hang reaches it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """The app started with these command-line arguments and environment, once it answers; what it prints goes to an
    unnamed temporary file (server_log reads it), never a pipe that could fill up and block it."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           **(env or {})}
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), *args], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    proc.log = log
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited: {server_log(proc)}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the app did not start within {HANG:.0f} s")


def server_log(proc: subprocess.Popen, start: int = 0) -> str:
    """What the app printed from byte `start` on."""
    return os.pread(proc.log.fileno(), 1 << 24, start).decode(errors="replace")


RUNNING: list[subprocess.Popen] = []  # the apps of running_app, whose logs every test checks


@contextlib.contextmanager
def running_app(*args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """The app's URL while it runs: start_app's arguments; it is stopped on leaving."""
    proc, url = start_app(*args, env=env)
    RUNNING.append(proc)
    try:
        yield url
    finally:
        RUNNING.remove(proc)
        proc.terminate()
        proc.wait(timeout=HANG)
        proc.log.close()


def tracebacks(log: str) -> list[str]:
    """The tracebacks in a log, each up to its exception's line, except those of a gr.Error (a user's mistake, told
    in a sentence; Gradio logs it too)."""
    found = []
    for part in log.split("Traceback (most recent call last):")[1:]:
        lines = part.splitlines()
        end = next((i for i, line in enumerate(lines) if line and not line[0].isspace()), len(lines) - 1)
        if not lines[end].startswith("gradio.exceptions.Error"):
            found.append("\n".join(lines[max(0, end - 12):end + 1]))
    return found


@pytest.fixture(autouse=True)
def no_traceback_in_server_logs():
    """Nothing broken reaches the screen: a traceback in the log of a running app while a test ran fails it."""
    sizes = {proc.pid: os.fstat(proc.log.fileno()).st_size for proc in RUNNING}
    yield
    for proc in RUNNING:
        if found := tracebacks(server_log(proc, sizes.get(proc.pid, 0))):
            pytest.fail("the app logged a traceback during this test:\n" + "\n---\n".join(found))


@pytest.fixture(scope="session")
def app_url():
    with running_app() as url:
        yield url


# a run that cannot end by itself while a test watches it, however slow or fast the machine (200 tokens ended before a
# lesson had opened every tab on a fast one, 1,000 on a loaded one): 4,000 tokens allowed and no time limit within a
# test's reach; the test stops it
LONG_RUN = 4000


@pytest.fixture(scope="session")
def long_runs_app():
    env = {"EXPLORER_MAX_NEW_TOKENS": str(LONG_RUN), "EXPLORER_MAX_CONTEXT": str(LONG_RUN + 200),
           "EXPLORER_TIME_LIMIT_SECONDS": "3600"}
    with running_app(env=env) as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, url: str, viewport: dict | None = None):
    """A fresh browser context on the app, ready to use; page.js_errors collects uncaught page errors."""
    context = browser.new_context(viewport=viewport or {"width": 1500, "height": 1100})
    context.set_default_timeout(HANG * 1000)
    page = context.new_page()
    page.js_errors = []
    page.on("pageerror", lambda e: page.js_errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("#generate")
    return context, page


def output_text(page) -> str:
    """The output strip's text without the bar of branches above it: its two parts (explorer/ui/output_strip.py)."""
    return "".join(page.locator("#output .tokout").all_inner_texts())


@pytest.fixture()
def page(browser, app_url):
    context, pg = open_page(browser, app_url)
    yield pg
    context.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    """Where tests save screenshots: the folder named by EXPLORER_SCREENSHOTS to keep them, else a temporary one."""
    folder = os.environ.get("EXPLORER_SCREENSHOTS")
    if not folder:
        return tmp_path_factory.mktemp("screenshots")
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder)
