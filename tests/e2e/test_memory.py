"""Bounded memory against the real server (issue 11): sessions made as an attacker makes them (a new client each,
through the UI's own generate event, never coming back) hold at most the cap in traces, the oldest idle traces freed
first, and once they stop talking they expire and the server's memory comes back; a browser whose trace was freed
is told so and its views recompute."""
from __future__ import annotations

import pytest

from bench.memory import rss_mib, stats, ui_session, wait_for_expiry
from tests.e2e.conftest import RUNNING, open_page, running_app
from tests.e2e.test_app import set_prompt, wait_done

SESSIONS = 10
CAP_MIB = 64  # each session's trace is ~26 MiB: the cap holds two
TTL = 45  # seconds: several sessions' time (so the cap must act), short enough to wait for


@pytest.fixture(scope="module")
def app():
    with running_app(env={"EXPLORER_TRACE_MEMORY_MIB": str(CAP_MIB), "EXPLORER_SESSION_TTL_SECONDS": str(TTL)}) as url:
        yield url, RUNNING[-1]


def test_sessions_through_the_ui_event_are_capped_then_expire(app):
    url, proc = app
    ui_session(url, max_new_tokens=2)  # everything the server makes once (the model's buffers, Gradio's) made
    wait_for_expiry(url, 1)
    start = rss_mib(proc.pid)
    for i in range(SESSIONS):
        ui_session(url, seed=i)
        held = stats(url)
        # one session over the cap at most: the one just served keeps its trace, the others make room
        assert held["trace_bytes"] <= CAP_MIB << 20 and held["sessions_holding_traces"] <= 2, held
    assert held["traces_dropped"] >= 2 and held["trace_bytes"] > 20 << 20
    # what the registry stopped counting was let go: the server holds about the cap more, not every session's trace
    during = rss_mib(proc.pid)
    assert during - start < CAP_MIB + 100, (start, during)
    end = wait_for_expiry(url, SESSIONS + 1)
    assert end["sessions_expired"] == SESSIONS + 1 and end["trace_bytes"] == 0 and end["sessions"] == 0, end
    # 10 sessions of ~26 MiB: 260 MiB once they were all kept
    assert rss_mib(proc.pid) - start < 100, (start, during, rss_mib(proc.pid))


def test_a_browser_whose_trace_was_freed_is_told_and_its_views_recompute(app, browser):
    url, _ = app
    context, page = open_page(browser, url)
    try:
        set_prompt(page, "The teacher asked the class why the model attends to the first token.", max_new=8)
        page.click("#generate")
        wait_done(page)
        page.wait_for_timeout(1000)  # the views drawn after the generation (after_generation) have held the trace
        before = stats(url)["traces_dropped"]
        for i in range(3):  # three sessions of ~26 MiB: over the cap of 64, the browser's (oldest, idle) goes first
            ui_session(url, seed=i)
        assert stats(url)["traces_dropped"] >= before + 1
        page.get_by_role("tab", name="Attention").click()
        page.wait_for_selector(".toast-body:has-text('freed this text')")
        page.wait_for_selector("#attn-text .tok")  # the view drawn from the recomputed trace
        assert page.locator(".toast-body.error").count() == 0 and not page.js_errors
    finally:
        context.close()
