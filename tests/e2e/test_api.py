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


def test_generate_with_interventions_and_strict_checks_of_them(client):
    kwargs = dict(prompt="The capital of France is", max_new_tokens=3, greedy=True, api_name="/generate")
    plain = client.predict(**kwargs)
    ablated = client.predict(interventions='[{"kind": "mlp", "layer": 0}]', **kwargs)
    assert plain["ablated"] is None and ablated["ablated"] == "MLP of layer 0 ablated"
    assert ablated["tokens"][0]["prob"] != plain["tokens"][0]["prob"]
    as_list = client.predict(interventions=[{"kind": "mlp", "layer": 0}], **kwargs)
    assert as_list["tokens"] == ablated["tokens"]
    head = client.predict(interventions='[{"kind": "head", "layer": 3, "head": 2}, {"kind": "attention", "layer": 1}]',
                          **kwargs)
    assert head["ablated"] == "head 2 of layer 3 ablated; attention of layer 1 ablated"
    for bad, message in (('[{"kind": "head", "layer": 99, "head": 0}]', "layer 99 is out of range"),
                         ('[{"kind": "expert", "layer": 1, "expert": 0}]', "has no experts"),
                         ('[{"kind": "head", "layer": 1}]', "takes exactly the keys layer, head"),
                         ("[{", "does not parse"), (5, "must be a JSON list")):
        with pytest.raises(Exception) as e:
            client.predict(interventions=bad, **kwargs)
        assert message in str(e.value), str(e.value)


def test_patching_endpoint_returns_the_map(client):
    result = client.predict(prompt_a="Paris is in", prompt_b="Rome is in", target="", api_name="/patching")
    assert result["tokens_a"] == ["Paris", " is", " in"] and result["tokens_b"] == ["Rome", " is", " in"]
    assert len(result["p_patched"]) == 30 and all(len(row) == 3 for row in result["p_patched"])
    assert result["normalised"] and result["p_a"] != result["p_b"]
    restored = result["restored"]
    assert restored[-1][-1] == pytest.approx(1.0, abs=1e-3)  # the last block's output at the last position: A's
    assert restored[-1][0] == pytest.approx(0.0, abs=1e-3)  # an earlier position of the last block: never read
    assert result["p_patched"][-1][-1] == pytest.approx(result["p_a"], abs=1e-4)
    paris = client.predict(prompt_a="Paris is in", prompt_b="Rome is in", target=" Rome", api_name="/patching")
    assert paris["target"]["text"] == " Rome" and paris["p_b"] > paris["p_a"]
    for bad, message in ((dict(prompt_b="Rome"), "same length in tokens"), (dict(target=" Rome Paris"), "one token"),
                         (dict(prompt_a=""), "empty"), (dict(prompt_a=3), "must be text")):
        with pytest.raises(Exception) as e:
            client.predict(**{**dict(prompt_a="Paris is in", prompt_b="Rome is in", target=""), **bad},
                           api_name="/patching")
        assert message in str(e.value), str(e.value)


def test_the_startup_heap_is_frozen(client):
    """The model's and the app's objects are out of the garbage collector's reach (app.py: freeze_startup_heap): a
    full collection over them held the GIL for 140 ms, a stall of every session's generation."""
    assert client.predict(api_name="/stats")["gc_frozen_objects"] > 100_000
