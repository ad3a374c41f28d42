"""Batched decoding in the app on the embedded model: every running generation advances in the same steps, one
forward pass for all (explorer/batching.py, model/batch.py). On the compiled kernels every row is computed by the
same code whatever its companions, so a generation's tokens, probabilities and recorded trace are exactly those it
gets alone, greedy or seeded, with 1 or 3 companions, joining or leaving mid-way. Also: a finished or stopped
generation leaves the batch at once, a long prompt is read in chunks between the others' tokens, and Stop and the
time limit still end one generation (its companions go on)."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from explorer import batching
from explorer.generations import ACTIVE, Generation
from explorer.model_thread import MODEL_THREAD
from model import batch
from model.batch import Decoding

HANG = 120.0
NEVER = 1e9
PROMPTS = ["The capital of France is", "Once upon a time, in a small village by the sea, there lived an old",
           "def fibonacci(n):", "Water boils at", "My favourite colour is", "In 1969, the first people to walk on"]
GREEDY = dict(greedy=True)
SEEDED = [dict(temperature=1.0, top_k=50, top_p=0.95, seed=7), dict(temperature=0.8, seed=1),
          dict(temperature=1.2, top_p=0.9, seed=123), dict(temperature=0.7, top_k=5, seed=9)]


@pytest.fixture
def log(monkeypatch) -> list[tuple]:
    """What the batcher runs, in order: ("advance", decodings) for each forward pass of ready generations,
    ("prefill", decoding) for each prompt chunk read alone, ("prefill together", decodings) for the short chunks of
    several prompts read in one call."""
    events: list[tuple] = []
    real_advance, real_prefill, real_together = batching.advance, Decoding.prefill, batching.prefill_all
    monkeypatch.setattr(batching, "advance", lambda ds: events.append(("advance", list(ds))) or real_advance(ds))
    monkeypatch.setattr(Decoding, "prefill", lambda d: events.append(("prefill", d)) or real_prefill(d))
    monkeypatch.setattr(batching, "prefill_all",
                        lambda ds: events.append(("prefill together", list(ds))) or real_together(ds))
    return events


def held_model_thread():
    """Holds the model thread until the returned function is called: generations started meanwhile all join the
    first step."""
    release = threading.Event()
    MODEL_THREAD.submit(release.wait, HANG)
    return release.set


def wait_idle() -> None:
    deadline = time.monotonic() + HANG
    while ACTIVE.count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ACTIVE.count == 0


def settings(n: int, **kwargs) -> dict:
    return dict(max_new_tokens=n, stop_at_eos=False, **kwargs)


def finished(g: Generation) -> list:
    steps = list(g.follow(1000))[-1]
    assert g.error is None
    return steps


def alone(lm, prompt: str | list[int], s: dict, record: bool = False) -> tuple[list, object]:
    g = Generation(lm, lm.prompt_ids(prompt), s, NEVER, record=record)
    steps = finished(g)
    return steps, g.context_trace


def identical(got: list, want: list) -> None:
    """Steps equal in every field; their traces' residual streams bit for bit."""
    assert [s.token_id for s in got] == [s.token_id for s in want]
    for g, w in zip(got, want):
        assert (g.index, g.position, g.text, g.prob, g.sampled_prob, g.entropy, g.top_ids, g.top_probs,
                g.top_sampled_probs, g.top_kept, g.n_kept, g.kept_mass, g.finish_reason) == \
               (w.index, w.position, w.text, w.prob, w.sampled_prob, w.entropy, w.top_ids, w.top_probs,
                w.top_sampled_probs, w.top_kept, w.n_kept, w.kept_mass, w.finish_reason)
        assert (g.trace is None) == (w.trace is None)
        if w.trace is not None:
            assert torch.equal(g.trace.residual, w.trace.residual) and torch.equal(g.trace.ids, w.trace.ids)


def passes_with(events: list[tuple], g: Generation) -> list[int]:
    """The size of each forward pass that advanced g."""
    return [len(ds) for kind, ds in events if kind == "advance" and g.decoding in ds]


@pytest.mark.parametrize("companions", [1, 3, 5])
@pytest.mark.parametrize("sampler", ["greedy", "seeded"])
def test_a_generation_decodes_alike_alone_and_with_companions(embedded_lm, log, companions, sampler):
    lm = embedded_lm
    mine = settings(14, **(GREEDY if sampler == "greedy" else SEEDED[0]))
    want, want_trace = alone(lm, PROMPTS[0], mine, record=True)
    others = [settings(10 + 4 * i, **(SEEDED[1 + i % 3] if i % 2 == 0 else GREEDY)) for i in range(companions)]
    release = held_model_thread()
    g = Generation(lm, lm.prompt_ids(PROMPTS[0]), mine, NEVER, record=True)
    rest = [Generation(lm, lm.prompt_ids(p), s, NEVER, record=i == 0) for i, (p, s) in enumerate(zip(PROMPTS[1:], others))]
    release()
    identical(finished(g), want)
    assert torch.equal(g.context_trace.residual, want_trace.residual)
    assert max(passes_with(log, g)) == companions + 1  # really batched: every running generation in one pass
    for i, (other, p, s) in enumerate(zip(rest, PROMPTS[1:], others)):
        identical(finished(other), alone(lm, p, s, record=i == 0)[0])
    wait_idle()


def test_short_prompts_arriving_together_are_read_in_one_call_and_decode_as_alone(embedded_lm, log, monkeypatch):
    """Prompts of at most 16 tokens that arrive together go through the model as the rows of one call (model/batch.py
    prefill_all), each prompt's ids at their own positions of its own cache; each generation's tokens and recorded
    trace are then exactly those it gets alone."""
    lm = embedded_lm
    prompts = [p for p in PROMPTS if len(lm.prompt_ids(p)) <= batch.MAX_PACKED_ROWS]
    assert len(prompts) >= 4
    chosen = [settings(8, **(GREEDY if i % 2 else SEEDED[i % 4])) for i in range(len(prompts))]
    wanted = [alone(lm, p, s, record=True) for p, s in zip(prompts, chosen)]
    log.clear()
    rows = []  # the ids of each sequence in each forward pass
    real = batch.forward_rows
    monkeypatch.setattr(batch, "forward_rows", lambda decoder, ds, chunks=None: rows.append(
        [len(c) for c in chunks] if chunks else [1] * len(ds)) or real(decoder, ds, chunks))
    release = held_model_thread()
    gs = [Generation(lm, lm.prompt_ids(p), s, NEVER, record=True) for p, s in zip(prompts, chosen)]
    release()
    for g, (want, want_trace) in zip(gs, wanted):
        identical(finished(g), want)
        assert torch.equal(g.context_trace.residual, want_trace.residual)
    assert [kind for kind, _ in log].count("prefill together") == 1 and "prefill" not in [kind for kind, _ in log]
    assert rows[0] == [len(lm.prompt_ids(p)) for p in prompts]  # one pass: every prompt's ids as rows
    wait_idle()


def test_an_ablated_generation_shares_the_pass_and_decodes_as_alone(embedded_lm, log):
    """The Probe tab's ablations: the ablated layers of that row go through the reference block, the rest of its pass
    is shared; its tokens and trace, and its companion's, are exactly those each gets alone."""
    from model import HeadAblation

    lm = embedded_lm
    s = settings(12, **SEEDED[0], interventions=(HeadAblation(3, 1), HeadAblation(5, 4)))
    plain = settings(12, **SEEDED[1])
    want, want_trace = alone(lm, PROMPTS[0], s, record=True)
    want_plain, _ = alone(lm, PROMPTS[1], plain, record=True)
    release = held_model_thread()
    ablated = Generation(lm, lm.prompt_ids(PROMPTS[0]), s, NEVER, record=True)
    companion = Generation(lm, lm.prompt_ids(PROMPTS[1]), plain, NEVER, record=True)
    release()
    identical(finished(ablated), want)
    assert torch.equal(ablated.context_trace.residual, want_trace.residual)
    identical(finished(companion), want_plain)
    assert 2 in passes_with(log, ablated)
    wait_idle()


def test_companions_joining_and_stopping_mid_way_change_nothing(embedded_lm, log):
    lm = embedded_lm
    mine = settings(24, **SEEDED[0])
    want, _ = alone(lm, PROMPTS[1], mine, record=True)
    joiner_settings = settings(6, **SEEDED[1])
    want_joiner, _ = alone(lm, PROMPTS[3], joiner_settings)
    halfway = threading.Event()

    def tell_at_six() -> bool:  # asked at every step: never stops g
        if len(g.steps) >= 6:
            halfway.set()
        return False

    g = Generation(lm, lm.prompt_ids(PROMPTS[1]), mine, NEVER, record=True, should_stop=tell_at_six)
    # a companion that joins once g has 6 tokens, another that is stopped once the joiner has 2
    joined: list[Generation] = []
    quitter = Generation(lm, lm.prompt_ids(PROMPTS[2]), settings(100, **GREEDY), NEVER,
                         should_stop=lambda: bool(joined) and len(joined[0].steps) >= 2)
    assert halfway.wait(HANG)
    joiner = Generation(lm, lm.prompt_ids(PROMPTS[3]), joiner_settings, NEVER)
    joined.append(joiner)
    identical(finished(g), want)
    identical(finished(joiner), want_joiner)
    steps = finished(quitter)
    assert quitter.finish_reason == "stopped" and 6 <= len(steps) < 100
    assert 3 in passes_with(log, g)  # the joiner was in g's passes, with the quitter, then without it...
    assert len(passes_with(log, joiner)) == 5  # ...for its tokens after the first (which its prompt's pass gives)
    wait_idle()


def test_a_finished_generation_leaves_the_batch_at_once(embedded_lm, log):
    lm = embedded_lm
    release = held_model_thread()
    short = Generation(lm, lm.prompt_ids(PROMPTS[0]), settings(3, **GREEDY), NEVER, record=True)
    long = Generation(lm, lm.prompt_ids(PROMPTS[1]), settings(12, **GREEDY), NEVER)
    release()
    assert len(finished(short)) == 3 and short.finish_reason == "length"
    finished(long)
    # its first token comes from its prompt's pass, each other one from a forward pass: after its last, none
    assert len(passes_with(log, short)) == 2
    assert short.decoding.cache is None  # its KV cache freed as it ended
    wait_idle()


def test_a_long_prompt_is_read_in_chunks_between_the_others_tokens(embedded_lm, log):
    lm = embedded_lm
    running = Generation(lm, lm.prompt_ids(PROMPTS[0]), settings(60, **GREEDY), NEVER)
    while len(running.steps) < 2:
        time.sleep(0.001)
    long_ids = (lm.prompt_ids(PROMPTS[1]) * 60)[:1000]
    reader = Generation(lm, long_ids, settings(2, **GREEDY), NEVER)
    finished(reader)
    chunks = [i for i, (kind, d) in enumerate(log) if kind == "prefill" and d is reader.decoding]
    assert len(chunks) == -(-1000 // batch.PREFILL_CHUNK)
    # between two chunks of the long prompt, the running generation got its next token
    for a, b in zip(chunks, chunks[1:]):
        assert any(kind == "advance" and running.decoding in ds for kind, ds in log[a:b])
    running.stop()
    finished(running)
    wait_idle()


def test_stop_and_the_time_limit_end_one_generation_and_not_its_companions(embedded_lm):
    lm = embedded_lm
    s = settings(16, **GREEDY)
    want, _ = alone(lm, PROMPTS[3], s)
    release = held_model_thread()
    timed = Generation(lm, lm.prompt_ids(PROMPTS[0]), settings(1000, **GREEDY), 0.0)  # the limit is up at once
    stopped = Generation(lm, lm.prompt_ids(PROMPTS[1]), settings(1000, **GREEDY), NEVER)
    companion = Generation(lm, lm.prompt_ids(PROMPTS[3]), s, NEVER)
    release()
    follow = stopped.follow(1000)
    while len(next(follow)) < 3:
        pass
    stopped.stop()
    list(follow)
    assert finished(timed) and timed.finish_reason == "time" and len(timed.steps) == 1
    assert stopped.finish_reason == "stopped" and 3 <= len(stopped.steps) < 1000
    identical(finished(companion), want)
    assert companion.finish_reason == "length"
    wait_idle()


def test_an_error_in_a_batched_pass_ends_only_the_generation_it_belongs_to(tmp_path):
    """A tiny GPT-2 with 128 learned positions: one generation runs past them inside a batched pass; that pass is
    run again row by row, so the error ends that generation alone, and its companion decodes as it does alone (the
    same tokens; on the reference blocks a batched product rounds otherwise than a one-row one, so probabilities
    agree to float32 precision, not bit for bit)."""
    from model import load_model
    from tests.model.families import build_hf, save

    lm = load_model(save(build_hf("gpt2"), tmp_path), device="cpu", dtype="float32")
    s = settings(12, **GREEDY)
    want, _ = alone(lm, [5, 6, 7], s)
    release = held_model_thread()
    # its 9th token sits at position 128: putting it through the model fails
    too_long = Generation(lm, list(range(1, 121)), settings(20, **GREEDY), NEVER)
    companion = Generation(lm, [5, 6, 7], s, NEVER)
    release()
    with pytest.raises(ValueError, match="128 learned positions"):
        list(too_long.follow(1000))
    assert too_long.finish_reason == "error" and len(too_long.steps) == 9
    got = finished(companion)
    assert [s.token_id for s in got] == [s.token_id for s in want]
    assert [s.prob for s in got] == pytest.approx([s.prob for s in want], rel=1e-5)
    wait_idle()


def test_a_generation_decodes_alike_while_another_session_renders(embedded_lm, monkeypatch):
    """While a render draws, decoding steps take one OpenMP thread (explorer/model_thread.py): a seeded generation's
    tokens, probabilities and trace stay those it gets with all threads, a long prompt's prefill (a float32 product
    whose numbers depend on the threads) and an ablated row included."""
    import explorer.model_thread
    from model import HeadAblation

    lm = embedded_lm
    monkeypatch.setattr(MODEL_THREAD, "threads", 2)  # the count of a machine of two cores (CI may have one)
    monkeypatch.setattr(explorer.model_thread, "AFTER_RENDER", 0.0)
    long_prompt = " ".join(PROMPTS * 5)  # ~150 tokens: read by the float32 product, not the packed kernels
    runs = [(long_prompt, settings(10, **SEEDED[0])), (PROMPTS[1], settings(10, **SEEDED[1])),
            (PROMPTS[2], settings(8, **SEEDED[2], interventions=(HeadAblation(3, 1),)))]
    want = [alone(lm, p, s, record=True) for p, s in runs]
    drawn, stop = threading.Event(), threading.Event()

    def render() -> None:
        with MODEL_THREAD.rendering():
            drawn.set()
            stop.wait(HANG)

    threads_seen = []
    real_advance = batching.advance
    monkeypatch.setattr(batching, "advance",
                        lambda ds: threads_seen.append(torch.get_num_threads()) or real_advance(ds))
    worker = threading.Thread(target=render)
    worker.start()
    try:
        assert drawn.wait(HANG)
        got = [alone(lm, p, s, record=True) for p, s in runs]
    finally:
        stop.set()
        worker.join()
    assert set(threads_seen) == {1}  # every step took one thread
    for (steps, trace), (want_steps, want_trace) in zip(got, want):
        identical(steps, want_steps)
        assert torch.equal(trace.residual, want_trace.residual)
