"""Limits, bad input, a full queue and seeded determinism, against the real server (the time limit and a cancelled
request: test_ending.py)."""
from __future__ import annotations

import concurrent.futures as cf
import json
import urllib.error
import urllib.request

import pytest
from gradio_client import Client

from tests.e2e.conftest import HANG, running_app

LIMITS = {"EXPLORER_MAX_PROMPT_TOKENS": "64", "EXPLORER_MAX_NEW_TOKENS": "48", "EXPLORER_MAX_CONTEXT": "96",
          "EXPLORER_MAX_CONCURRENT": "1", "EXPLORER_MAX_QUEUE": "2"}


@pytest.fixture(scope="module")
def small_app():
    with running_app(env=LIMITS) as url:
        yield url


@pytest.fixture(scope="module")
def client(small_app):
    return Client(small_app, verbose=False)


def generate(client, **kwargs):
    return client.predict(api_name="/generate", **{"max_new_tokens": 4, "greedy": True, **kwargs})


def error_of(fn) -> str:
    with pytest.raises(Exception) as e:
        fn()
    return str(e.value)


@pytest.mark.parametrize("prompt,expected", [
    ("", "empty"), ("   \n\t ", "empty"), ("word " * 200, "at most 64"), ("x" * 100_000, "at most 64"),
])
def test_bad_prompts_get_a_clear_message_and_the_server_keeps_serving(client, prompt, expected):
    assert expected in error_of(lambda: generate(client, prompt=prompt))
    assert generate(client, prompt="Hello")["tokens"]


def raw_call(url: str, data: list) -> str:
    """POST to the endpoint with JSON built here (gradio_client cannot encode a lone surrogate) and return the
    event stream's text."""
    body = json.dumps({"data": data}).encode()  # ensure_ascii: a lone surrogate travels as \\ud800
    request = urllib.request.Request(url + "gradio_api/call/generate", body, {"Content-Type": "application/json"})
    event_id = json.loads(urllib.request.urlopen(request, timeout=HANG).read())["event_id"]
    return urllib.request.urlopen(f"{url}gradio_api/call/generate/{event_id}", timeout=HANG).read().decode()


def test_lone_surrogates_through_the_api_get_a_clear_message(small_app, client):
    stream = raw_call(small_app, ["\ud800 lone \udfff surrogates", 4, 0.8, 50, 0.95, 0, True, False, True, ""])
    assert "event: error" in stream and "not valid Unicode" in stream, stream
    assert generate(client, prompt="Hello")["tokens"]


@pytest.mark.parametrize("temperature", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_through_the_api_are_refused(small_app, client, temperature):
    body = json.dumps({"data": ["Hi", 4, 0.0, 50, 0.95, 0, False, False, True, ""]}).replace("0.0", temperature, 1)
    request = urllib.request.Request(small_app + "gradio_api/call/generate", body.encode(),
                                     {"Content-Type": "application/json"})
    try:
        event_id = json.loads(urllib.request.urlopen(request, timeout=HANG).read())["event_id"]
        stream = urllib.request.urlopen(f"{small_app}gradio_api/call/generate/{event_id}", timeout=HANG)
        stream = stream.read().decode()
        assert "event: error" in stream and "finite" in stream, stream
    except urllib.error.HTTPError as e:  # refused while parsing the JSON: also clear, nothing ran
        assert e.code in (400, 422), e
    assert generate(client, prompt="Hello")["tokens"]


@pytest.mark.parametrize("prompt", [
    "null\x00 bell\x07 escape\x1b[31m", "\u202eRTL override\u202c and \u200f marks", "👩‍👩‍👧‍👦 family 🏳️‍🌈 flag",
    "Supercalifragilisticexpialidocious" * 5, "<script>alert(1)</script><img src=x onerror=alert(2)>",
])
def test_unusual_but_valid_prompts_generate(client, prompt):
    result = generate(client, prompt=prompt)
    assert result["prompt_tokens"] > 0 and len(result["tokens"]) >= 1


@pytest.mark.parametrize("params,expected", [
    (dict(temperature=-0.5), "emperature"), (dict(top_p=0.0), "op-p"), (dict(top_p=1.5), "op-p"),
    (dict(top_k=-1), "Top-k"), (dict(top_k=10**9), "Top-k"), (dict(seed=-1), "Seed"), (dict(seed=2**40), "Seed"),
    (dict(max_new_tokens=0), "Max new tokens"), (dict(max_new_tokens=10**6), "Max new tokens"),
    (dict(max_new_tokens=2.5), "Max new tokens"),
])
def test_bad_parameters_are_refused(client, params, expected):
    message = error_of(lambda: generate(client, prompt="Hi", **params))
    assert expected in message, message
    assert generate(client, prompt="Hi")["tokens"]


def test_total_context_caps_new_tokens(client):
    prompt = "one two three four five six seven eight nine ten " * 5  # about 50 tokens
    result = generate(client, prompt=prompt, max_new_tokens=48, greedy=False, temperature=1.0, seed=1)
    assert result["prompt_tokens"] + len(result["tokens"]) <= 96


def test_full_queue_is_refused_with_a_message(client):
    jobs = [client.submit(prompt=f"Story {i}:", max_new_tokens=48, temperature=1.0, seed=i, api_name="/generate")
            for i in range(6)]
    outcomes = []
    for job in jobs:
        try:
            job.result(timeout=HANG)
            outcomes.append("ok")
        except Exception as e:  # the client raises the server's message
            outcomes.append(str(e))
    assert "ok" in outcomes
    assert any("queue" in o.lower() and "full" in o.lower() for o in outcomes), outcomes


def test_same_seed_same_tokens_whatever_else_runs(app_url):
    client = Client(app_url, verbose=False)
    kwargs = dict(prompt="The secret ingredient is", max_new_tokens=12, temperature=1.2, top_k=0, seed=1234)
    alone = client.predict(api_name="/generate", **kwargs)
    others = [dict(kwargs, seed=s, prompt=p) for s, p in ((1, "Noise one"), (2, "Noise two"), (3, "Noise three"))]
    with cf.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(lambda k=k: Client(app_url, verbose=False).predict(api_name="/generate", **k))
                   for k in [kwargs] + others + [kwargs]]
        results = [f.result(timeout=300) for f in futures]
    ids = lambda r: [t["id"] for t in r["tokens"]]
    assert ids(results[0]) == ids(alone) == ids(results[-1])
