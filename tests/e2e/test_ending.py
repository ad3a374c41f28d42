"""Stop, a closed tab, a cancelled request and the time limit, each on a generation that cannot end by itself in the
test's time (end-of-text off, 4,000 new tokens allowed): it ends early, and /stats (or the API's last result) says
why. The finish reasons are explorer/generations.py's."""
from __future__ import annotations

import time

import pytest
from gradio_client import Client

from tests.e2e.conftest import HANG, open_page, running_app
from tests.e2e.test_app import generated_count, set_prompt, wait_done

REQUESTED = 4000  # new tokens asked for: a minute or more of decoding on this machine
ENDLESS = {"EXPLORER_MAX_NEW_TOKENS": str(REQUESTED), "EXPLORER_MAX_CONTEXT": str(REQUESTED + 96)}
TIME_LIMIT = 2  # seconds, for the app that tests the time limit
FEW = REQUESTED // 10  # "ended early": fewer tokens than this were generated
PROMPT = "Write a long story about a dragon who learns to read."


@pytest.fixture(scope="module")
def endless_app():
    """Thousands of tokens allowed, the default time limit (120 s)."""
    with running_app(env=ENDLESS) as url:
        yield url


@pytest.fixture(scope="module")
def time_limited_app():
    with running_app(env={**ENDLESS, "EXPLORER_TIME_LIMIT_SECONDS": str(TIME_LIMIT)}) as url:
        yield url


class Stats:
    """The server's /stats, read when no generation runs, and what changed since."""

    def __init__(self, url: str) -> None:
        self.client = Client(url, verbose=False)
        self.before = self.idle()

    def now(self) -> dict:
        return self.client.predict(api_name="/stats")

    def idle(self) -> dict:
        deadline = time.monotonic() + HANG
        while (stats := self.now())["active_generations"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stats["active_generations"] == 0, f"a generation still runs after {HANG:.0f} s: {stats}"
        return stats

    def ended_since(self) -> tuple[dict[str, int], int]:
        """Once no generation runs: the generations ended since by reason, and the tokens they generated."""
        after = self.idle()
        old, new = self.before["ended_generations"], after["ended_generations"]
        reasons = {r: n - old.get(r, 0) for r, n in new.items() if n != old.get(r, 0)}
        return reasons, after["generated_tokens"] - self.before["generated_tokens"]


def start_endless_generation(page) -> None:
    set_prompt(page, PROMPT, max_new=REQUESTED)
    page.locator("#stop-at-eos input").uncheck()
    page.click("#generate")
    page.wait_for_function("() => document.querySelectorAll('#output .tok').length >= 5")


def test_stop_ends_the_generation_and_keeps_the_text(browser, endless_app):
    stats = Stats(endless_app)
    context, page = open_page(browser, endless_app)
    start_endless_generation(page)
    # the open tab is live: its plot fills while tokens still stream
    page.wait_for_function("() => document.querySelector('#token-share .js-plotly-plot')?._fullData?.[0]?.x?.length"
                           " > 4")
    assert page.inner_text("#status").startswith("Generating")
    assert stats.now()["active_generations"] == 1
    page.click("#stop")
    assert wait_done(page).startswith("Stopped after")
    shown, n = page.inner_text("#output"), generated_count(page)
    reasons, tokens = stats.ended_since()
    assert reasons == {"stopped": 1}
    assert 5 <= n <= tokens < FEW
    assert page.inner_text("#output") == shown, "the text changed after Stop"
    assert not page.js_errors
    context.close()


def test_closing_the_tab_ends_the_generation(browser, endless_app):
    stats = Stats(endless_app)
    context, page = open_page(browser, endless_app)
    start_endless_generation(page)
    assert stats.now()["active_generations"] == 1
    context.close()
    reasons, tokens = stats.ended_since()
    assert reasons == {"stopped": 1}
    assert 5 <= tokens < FEW


def test_a_cancelled_request_ends_the_generation(endless_app):
    stats = Stats(endless_app)
    job = stats.client.submit(prompt=PROMPT, max_new_tokens=REQUESTED, temperature=1.0, seed=5, stop_at_eos=False,
                              api_name="/generate")
    deadline = time.monotonic() + HANG
    while not job.outputs() and time.monotonic() < deadline:  # the first tokens have streamed
        time.sleep(0.05)
    assert job.outputs() and stats.now()["active_generations"] == 1
    job.cancel()
    reasons, tokens = stats.ended_since()
    assert reasons == {"stopped": 1}
    assert tokens < FEW


def test_end_of_text_ends_a_generation_unless_switched_off(endless_app):
    """The chat model answers a greeting and writes <|im_end|>: "stop"; with stop_at_eos off it writes on."""
    client = Client(endless_app, verbose=False)
    ask = dict(prompt="Say hello.", max_new_tokens=40, greedy=True, chat=True, api_name="/generate")
    stopping = client.predict(**ask)
    assert stopping["finish_reason"] == "stop" and len(stopping["tokens"]) < 40
    # positionally, as before the option existed: the default stops at end-of-text
    positional = client.predict("Say hello.", 40, 0.8, 50, 0.95, 0, True, True, api_name="/generate")
    assert (positional["text"], positional["finish_reason"]) == (stopping["text"], "stop")
    endless = client.predict(**ask, stop_at_eos=False)
    assert endless["finish_reason"] == "length" and len(endless["tokens"]) == 40


def test_the_time_limit_ends_an_api_generation_with_time(time_limited_app):
    stats = Stats(time_limited_app)
    result = stats.client.predict(prompt=PROMPT, max_new_tokens=REQUESTED, temperature=1.0, seed=3, stop_at_eos=False,
                                  api_name="/generate")
    assert result["finish_reason"] == "time"
    assert 1 <= len(result["tokens"]) < FEW
    assert stats.ended_since() == ({"time": 1}, len(result["tokens"]))


def test_the_time_limit_is_said_in_the_status(browser, time_limited_app):
    stats = Stats(time_limited_app)
    context, page = open_page(browser, time_limited_app)
    set_prompt(page, PROMPT, max_new=REQUESTED)
    page.locator("#stop-at-eos input").uncheck()
    page.click("#generate")
    status = wait_done(page)
    n = generated_count(page)
    assert status == f"Stopped: time limit ({TIME_LIMIT} s) reached after {n} tokens"
    assert stats.ended_since() == ({"time": 1}, n)
    assert 1 <= n < FEW
    context.close()
