"""The named API endpoint, through gradio_client as a notebook or script would use it."""
from __future__ import annotations

import pytest
from gradio_client import Client


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def test_generate_endpoint_streams_tokens_with_probabilities(client):
    job = client.submit(prompt="The capital of France is", max_new_tokens=6, greedy=True, api_name="/generate")
    updates = list(job)
    final = job.result()
    assert len(updates) >= 2  # streamed, not one reply at the end
    assert final["text"].strip().startswith("Paris")
    assert final["prompt_tokens"] == 5 and 1 <= len(final["tokens"]) <= 6
    first = final["tokens"][0]
    assert 0 < first["prob"] <= 1 and first["top"][0]["id"] == first["id"]


def test_generate_endpoint_rejects_bad_parameters_and_keeps_serving(client):
    for bad in (dict(prompt=""), dict(prompt="hi", temperature=-1.0), dict(prompt="hi", top_p=0.0),
                dict(prompt="hi", max_new_tokens=100000), dict(prompt="hi", top_k=-3)):
        with pytest.raises(Exception) as e:
            client.predict(api_name="/generate", **bad)
        assert "must" in str(e.value) or "empty" in str(e.value), str(e.value)
    assert client.predict(prompt="Hello", max_new_tokens=2, greedy=True, api_name="/generate")["tokens"]
