"""A long context's attention map, as a render asks the model thread for it (explorer/model_thread.py's Recomputing):
the same map as one call computes, made of several tasks, each a part of the rows, so another session's next token
waits for one part only."""
from __future__ import annotations

import torch

from explorer.model_thread import MODEL_THREAD, Recomputing


def test_the_map_in_parts_is_the_whole_map_and_each_part_is_a_task(embedded_lm, monkeypatch):
    ids = embedded_lm.tokenizer.encode("the mill by the river ground the wheat of every farm in the valley " * 6)
    trace = MODEL_THREAD.run(embedded_lm.trace, ids)
    n = len(ids)
    monkeypatch.setattr(Recomputing, "ATTENTION_PART", n * n // 8)  # a short context split as a long one is
    asked = []
    run = MODEL_THREAD.run
    monkeypatch.setattr(MODEL_THREAD, "run", lambda fn, *a, **k: asked.append(a) or run(fn, *a, **k))
    parts = Recomputing(trace).attention(4)
    assert len(asked) >= 4 and asked[0] == (4, 0, asked[0][2]) and asked[-1][2] == n  # rows 0.. up to the last
    assert all(a[2] == b[1] for a, b in zip(asked, asked[1:]))  # each part starts where the one before stopped
    whole = trace.attention(4)
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-6)
    assert torch.all(parts.triu(diagonal=1) == 0)


def test_a_part_attends_only_its_own_rows(embedded_lm, monkeypatch):
    """The keys and values before a part are all it needs of the rows before it: their attention is not computed
    again for every part (at 1,200 tokens that doubled the later parts' time)."""
    import model.decoder

    ids = embedded_lm.tokenizer.encode("the mill by the river ground the wheat of every farm in the valley " * 3)
    trace = MODEL_THREAD.run(embedded_lm.trace, ids)
    queries = []
    attention = model.decoder.attention
    monkeypatch.setattr(model.decoder, "attention",
                        lambda q, *a, **k: queries.append(q.shape[-2]) or attention(q, *a, **k))
    rows = trace.attention(2, 20, 30)
    assert queries == [10]  # one attention, of rows 20..29
    # the same numbers but for float32 rounding: the part's 10 query rows read the packed blocks, the whole's 43 rows
    # the float32 weight (model/fast/packed.py), each sum in its own order
    torch.testing.assert_close(rows, trace.attention(2)[:, 20:30, :30], rtol=1e-5, atol=1e-6)
