"""The model thread: a render draws on the thread that asked for it, with one OpenMP thread there, while what it
recomputes with the model runs on the model thread, one task each; the longest task of each kind is kept."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from explorer.model_thread import MODEL_THREAD, Recomputing, drawing
from explorer.session import Session


def test_a_sessions_trace_recomputes_on_the_model_thread(embedded_lm, monkeypatch):
    s = Session()
    s.start(embedded_lm.tokenizer.encode("The cat sat on the mat because it was"), {})
    s.generating = False
    s.prepare_trace(embedded_lm, MODEL_THREAD.run)
    ran_on: list[bool] = []
    decoder = embedded_lm.decoder
    real = decoder.attention_probs
    monkeypatch.setattr(decoder, "attention_probs",
                        lambda *a, **k: ran_on.append(MODEL_THREAD.is_current()) or real(*a, **k))

    def render() -> torch.Tensor:  # as a Gradio worker thread draws a tab
        drawing()
        trace = s.trace(embedded_lm)
        assert isinstance(trace, Recomputing) and len(trace) == len(s.ids)
        return trace.attention(3)

    with ThreadPoolExecutor(1) as worker:
        attn = worker.submit(render).result()
    assert ran_on == [True]
    direct = s._full_trace.attention(3)  # noqa: SLF001: the same trace, recomputed here
    assert torch.equal(attn, direct)


def test_drawing_keeps_its_thread_to_one_openmp_thread_and_leaves_the_model_threads_alone():
    before = MODEL_THREAD.run(torch.get_num_threads)
    seen: list[int] = []

    def draw() -> None:
        drawing()
        seen.append(torch.get_num_threads())

    worker = threading.Thread(target=draw)
    worker.start()
    worker.join()
    assert seen == [1]
    assert MODEL_THREAD.run(torch.get_num_threads) == before
    MODEL_THREAD.run(drawing)  # on the model thread itself it changes nothing
    assert MODEL_THREAD.run(torch.get_num_threads) == before


def test_the_longest_task_of_each_kind_is_kept_until_read():
    MODEL_THREAD.longest_tasks(reset=True)

    def pause(seconds: float) -> None:
        time.sleep(seconds)

    for seconds in (0.01, 0.05, 0.02):
        MODEL_THREAD.run(pause, seconds)
    longest = MODEL_THREAD.longest_tasks(reset=True)
    name = pause.__qualname__
    assert longest[name] >= 0.05
    assert MODEL_THREAD.longest_tasks() == {}


def test_a_renders_tasks_and_decoding_steps_beside_it_compute_with_one_openmp_thread(monkeypatch):
    """A render keeps a core busy; a task computing with two threads beside it waits at every barrier for the one the
    render preempted (bench/contention.py). So what a render asks of the model thread takes one thread, and so do
    decoding steps until it has ended and Gradio has sent its figures (AFTER_RENDER later); any other task takes
    all (its numbers would depend on the count)."""
    import explorer.model_thread

    monkeypatch.setattr(MODEL_THREAD, "threads", 2)  # as on a machine of two cores or more (CI may have one)
    monkeypatch.setattr(explorer.model_thread, "AFTER_RENDER", 1e9)
    inside, entered, leave = [], threading.Event(), threading.Event()

    def render() -> None:
        with MODEL_THREAD.rendering():
            inside.append(torch.get_num_threads())  # the render's own thread draws with one
            inside.append(MODEL_THREAD.run(torch.get_num_threads))  # and what it asks of the model thread
            entered.set()
            leave.wait(60)

    def step() -> int:
        MODEL_THREAD.decoding_step()
        return torch.get_num_threads()

    worker = threading.Thread(target=render)
    worker.start()
    assert entered.wait(60)
    during = MODEL_THREAD.schedule(step).result(), MODEL_THREAD.run(torch.get_num_threads)
    leave.set()
    worker.join()
    just_after = MODEL_THREAD.schedule(step).result()
    monkeypatch.setattr(explorer.model_thread, "AFTER_RENDER", 0.0)
    later = MODEL_THREAD.schedule(step).result()
    assert (inside, during, just_after, later) == ([1, 1], (1, 2), 1, 2)
