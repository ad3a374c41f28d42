"""Holes an attacker found in the running app (issue 11), each tried again over HTTP: uploads, a client's values
echoed whole into the log or the error, tracebacks for a user's mistakes, loose parameter types, a temperature that
overflowed. (Config paths: tests/unit/test_config_files.py; the time limit's finish reason: test_ending.py.)"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import uuid

import pytest
from gradio_client import Client

from tests.e2e.conftest import HANG, RUNNING, running_app, server_log

SECRET = "my-secret-prompt-5b1e"  # a prompt that no log line and no foreign error may show
#            prompt, max_new_tokens, temperature, top_k, top_p, seed, greedy, chat, stop_at_eos, interventions
GOOD = dict(prompt="Hi", max_new_tokens=2, temperature=0.8, top_k=50, top_p=0.95, seed=0, greedy=True, chat=False,
            stop_at_eos=True, interventions="")


@pytest.fixture(scope="module")
def app():
    """(url, process) of an app with the default settings; running_app appends its process to RUNNING."""
    with running_app() as url:
        yield url, RUNNING[-1]


def call(url: str, data: list) -> tuple[str, str]:
    """POST the values to /generate as a raw HTTP client would (any JSON, any count); (event, its data)'s last
    event of the stream."""
    body = json.dumps({"data": data}).encode()
    request = urllib.request.Request(url + "gradio_api/call/generate", body, {"Content-Type": "application/json"})
    event_id = json.loads(urllib.request.urlopen(request, timeout=HANG).read())["event_id"]
    stream = urllib.request.urlopen(f"{url}gradio_api/call/generate/{event_id}", timeout=HANG).read().decode()
    events = [part.split("\n") for part in stream.strip().split("\n\n")]
    event, data = events[-1][0].removeprefix("event: "), events[-1][1].removeprefix("data: ")
    return event, data


def error_of(url: str, **changes) -> str:
    """The error message /generate answers to GOOD with these changes."""
    event, data = call(url, list({**GOOD, **changes}.values()))
    assert event == "error", (event, data[:300])
    return json.loads(data)["error"]


class LogWatch:
    """What the app's log gained since this was made."""

    def __init__(self, proc) -> None:
        self.proc, self.start = proc, os.fstat(proc.log.fileno()).st_size

    def new(self) -> str:
        return server_log(self.proc, self.start)


def test_uploads_are_refused(app):
    """Nothing in the app takes a file; Gradio's /upload once stored 50 MB from anyone."""
    url, _ = app
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.bin\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + b"x" * 5000 + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "gradio_api/upload", body,
                                     {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=HANG)
    assert e.value.code == 413


def test_a_huge_value_is_not_echoed_whole_nor_logged_with_a_traceback(app):
    url, proc = app
    log = LogWatch(proc)
    message = error_of(url, temperature="9" * 5_000_000)
    assert message.startswith("Temperature must be a number, got text '999") and len(message) < 200, message[:300]
    assert "5,000,002 characters" in message
    assert len(log.new()) < 1000 and "Traceback" not in log.new(), log.new()[:2000]


def test_too_few_values_are_refused_without_showing_them(app):
    url, proc = app
    log = LogWatch(proc)
    event, data = call(url, [SECRET, 2])
    assert event == "error" and json.loads(data)["error"] == "This endpoint takes 10 values; 2 were sent."
    assert SECRET not in log.new() and "Received inputs" not in log.new() and "Traceback" not in log.new()


def test_a_file_reference_is_refused_before_gradio_reads_its_path(app):
    url, proc = app
    log = LogWatch(proc)
    message = error_of(url, temperature={"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}})
    assert message == "This app takes no files."
    assert "passwd" not in log.new() and "Traceback" not in log.new()


@pytest.mark.parametrize("changes,expected", [
    (dict(greedy="false"), "greedy must be true or false, got text 'false'."),
    (dict(chat="no"), "chat must be true or false, got text 'no'."),
    (dict(stop_at_eos=0), "stop_at_eos must be true or false, got the number 0."),
    (dict(max_new_tokens=True), "Max new tokens must be a whole number from 1 to 256, got true."),
    (dict(seed="7"), "Seed must be a whole number from 0 to 4294967295, got text '7'."),
    (dict(top_k=[5]), "Top-k must be a whole number from 0 to 1000, got a list [5]."),
    (dict(top_p=True), "Top-p must be a number, got true."),
    (dict(temperature=None), "Temperature must be a number, got null."),
    (dict(temperature={"a": 1}), "Temperature must be a number, got an object {'a': 1}."),
    (dict(prompt=5), "The prompt must be text, got the number 5."),
    (dict(prompt=[SECRET]), "The prompt must be text, got a list ['my-secret-prompt-5b1e']."),
    (dict(prompt=None), "The prompt must be text, got null."),
])
def test_every_parameter_is_strictly_typed(app, changes, expected):
    """JSON's types as sent: the text "false" is not false, true is not 1; each refusal in the app's own words."""
    url, proc = app
    log = LogWatch(proc)
    assert error_of(url, **changes) == expected
    assert "Traceback" not in log.new() and SECRET not in log.new()


def test_numbers_too_large_for_a_float_get_the_apps_own_message(app):
    """10**400 once answered Python's "int too large to convert to float"."""
    url, _ = app
    assert error_of(url, temperature=10**400).startswith("Temperature must be between 0 and 10, got 1000")
    assert error_of(url, top_k=10**400).startswith("Top-k must be a whole number from 0 to 1000, got the number 1000")


def test_a_temperature_below_the_floor_decodes_greedily_and_says_so(app):
    """At 1e-38 the logits once overflowed: every step drew token 49151 with p = 0."""
    url, _ = app
    client = Client(url, verbose=False)
    ask = dict(prompt="The capital of France is", max_new_tokens=4, top_k=0, top_p=1.0, api_name="/generate")
    greedy = client.predict(**ask, greedy=True)
    tiny = client.predict(**ask, temperature=1e-38, seed=3)
    assert [t["id"] for t in tiny["tokens"]] == [t["id"] for t in greedy["tokens"]]
    assert all(t["prob"] > 0 for t in tiny["tokens"]) and tiny["text"] == greedy["text"]
    assert "decodes greedily" in tiny["note"] and greedy["note"] is None
