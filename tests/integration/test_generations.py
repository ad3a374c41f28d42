"""The app's generations on the real embedded model, with end-of-text off so that nothing but the token limit ends
them by themselves: Stop adds at most the token being computed, the time limit ends them with "time"."""
from __future__ import annotations

from explorer.generations import ACTIVE, Generation
from tests.unit.test_generation import wait_idle

PROMPT = "Once upon a time, in a small village by the sea, there lived"
ENDLESS = dict(max_new_tokens=4000, temperature=1.0, top_k=50, top_p=0.95, seed=7, stop_at_eos=False)


def test_stop_after_some_tokens_adds_at_most_one_more(embedded_lm):
    ids = embedded_lm.tokenizer.encode(PROMPT)
    g = Generation(embedded_lm, ids, ENDLESS, time_limit=3600.0, record=True)
    for steps in g.follow(1000):
        if len(steps) >= 8:
            n_at_stop = len(g.steps)
            g.stop()
            break
    wait_idle()
    assert g.finish_reason == "stopped"
    assert n_at_stop <= len(g.steps) <= n_at_stop + 1
    assert all(s.finish_reason is None for s in g.steps)


def test_the_time_limit_ends_a_generation_with_time(embedded_lm):
    ids = embedded_lm.tokenizer.encode(PROMPT)
    before = ACTIVE.stats()["ended_generations"].get("time", 0)
    g = Generation(embedded_lm, ids, ENDLESS, time_limit=1.0)
    steps = list(g.follow(1000))[-1]
    assert g.finish_reason == "time"
    assert 1 <= len(steps) < ENDLESS["max_new_tokens"]
    wait_idle()
    assert ACTIVE.stats()["ended_generations"]["time"] == before + 1


def test_without_stop_at_eos_the_model_writes_past_end_of_text(embedded_lm):
    """Greedy, the chat model answers and writes <|im_end|>; with stop_at_eos=False it goes on to the token limit."""
    ids = embedded_lm.prompt_ids("Say hello.", chat=True)
    settings = dict(max_new_tokens=40, greedy=True)
    stopping = list(Generation(embedded_lm, ids, settings, time_limit=3600.0).follow(1000))[-1]
    assert stopping[-1].finish_reason == "stop" and len(stopping) < 40
    endless = list(Generation(embedded_lm, ids, dict(settings, stop_at_eos=False), 3600.0).follow(1000))[-1]
    assert len(endless) == 40 and endless[-1].finish_reason == "length"
    assert [s.token_id for s in endless[:len(stopping)]] == [s.token_id for s in stopping]
    wait_idle()
