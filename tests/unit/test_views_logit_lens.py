"""The logit lens on a real trace of the embedded model: numbers against a direct read-out, and the figure."""
from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch

from explorer.views import logit_lens as views
from explorer.views import style

TEXT = ("Paris is the capital of France, Berlin is the capital of Germany, and Rome is the capital of Italy. "
        "The largest city in Spain is Madrid, which is also its capital; Lisbon is the capital of Portugal.")


@pytest.fixture(scope="module")
def setup(embedded_lm):
    tok = embedded_lm.tokenizer
    ids = tok.encode(TEXT)
    trace = embedded_lm.trace(ids)
    return embedded_lm, tok, ids, trace, views.logit_lens(trace, last=20)


def test_last_row_is_the_models_own_prediction(setup):
    lm, _, ids, trace, lens = setup
    n = len(ids)
    assert lens.positions == list(range(n - 20, n)) and lens.n_tokens == n
    assert lens.top_ids.shape == lens.top_probs.shape == lens.next_probs.shape == (lm.config.n_layers + 1, 20)
    probs = torch.softmax(trace.logits_at(lens.positions), dim=-1)  # [P, V]
    top_p, top_id = probs.max(-1)
    assert torch.equal(lens.top_ids[-1], top_id)
    torch.testing.assert_close(lens.top_probs[-1], top_p)
    assert lens.input_ids == ids[-20:] and lens.next_ids == ids[-19:] + [None]
    next_p = probs[torch.arange(19), torch.tensor(ids[-19:])]
    torch.testing.assert_close(lens.next_probs[-1, :19], next_p)
    assert torch.isnan(lens.next_probs[:, -1]).all() and not torch.isnan(lens.next_probs[:, :-1]).any()


def test_every_layer_reads_out_its_own_residual_stream(setup):
    lm, _, ids, trace, _ = setup
    positions = [0, 5, 17]
    lens = views.logit_lens(trace, positions)
    for layer in (0, 11, 30):
        probs = torch.softmax(lm.decoder.unembed(trace.residual[layer, positions]), dim=-1)
        torch.testing.assert_close(lens.top_probs[layer], probs.max(-1).values)
        following = torch.tensor([ids[p + 1] for p in positions])
        torch.testing.assert_close(lens.next_probs[layer], probs[torch.arange(3), following])
    # a small chunk gives the same numbers
    original = views.CHUNK_BYTES
    try:
        views.CHUNK_BYTES = 7 * 4 * lm.config.vocab_size
        chunked = views.logit_lens(trace, positions)
    finally:
        views.CHUNK_BYTES = original
    assert torch.equal(chunked.top_ids, lens.top_ids)
    torch.testing.assert_close(chunked.top_probs, lens.top_probs)
    with pytest.raises(IndexError):
        views.logit_lens(trace, [len(ids)])


def test_a_cache_reads_out_only_new_positions_and_forgets_a_changed_prefix(setup):
    lm, _, ids, trace, lens = setup
    cache = views.LensCache()
    shorter = lm.trace(ids[:-1])
    views.logit_lens(shorter, last=19, cache=cache)
    with mock.patch.object(views, "_read_out", side_effect=views._read_out) as spy:
        cached = views.logit_lens(trace, last=20, cache=cache)
        # the new position, and the previous last one whose next token is now known
        assert spy.call_args.args[1] == [len(ids) - 2, len(ids) - 1]
        assert torch.equal(cached.top_ids, lens.top_ids)
        torch.testing.assert_close(cached.top_probs, lens.top_probs)
        torch.testing.assert_close(cached.next_probs, lens.next_probs, equal_nan=True)
        views.logit_lens(trace, last=20, cache=cache)
        assert spy.call_count == 1  # same context again: nothing to compute
        changed = ids[:-3] + [ids[0]]
        views.logit_lens(lm.trace(changed), last=5, cache=cache)
        assert spy.call_args.args[1] == [len(ids) - 4, len(ids) - 3]


def test_figure_is_layers_by_positions_with_each_layers_guess_written_in(setup):
    lm, tok, ids, _, lens = setup
    n = len(ids)
    fig = views.logit_lens_figure(lens, tok, selected=n - 3)
    heat = fig.data[0]
    rows = views.layer_rows(lm.config.n_layers + 1, (style.VIEW_HEIGHT - 190) // views.ROW_HEIGHT)
    assert rows[0] == 0 and rows[-1] == lm.config.n_layers and 4 <= len(rows) < lm.config.n_layers
    z = np.asarray(heat.z)
    assert z.dtype == np.float32
    np.testing.assert_array_equal(z, lens.top_probs[rows].numpy())
    assert list(heat.x) == lens.positions and list(heat.y) == list(range(len(rows)))
    assert fig.layout.height == style.VIEW_HEIGHT
    # every cell names its layer's top token, shortened to the cell's width
    assert heat.texttemplate == "%{text}"
    chars = views._cell_chars(20)
    for k, r in enumerate(rows):
        for c in (0, 7, 19):
            assert heat.text[k][c] == style.token_label(tok.decode([int(lens.top_ids[r, c])]), max_len=chars)
    assert fig.layout.yaxis.ticktext[0] == "embed" and fig.layout.yaxis.ticktext[-1] == "L30 (out)"
    assert f"positions {n - 20}–{n - 1} of 0–{n - 1}" in fig.layout.title.text
    assert f"{len(rows)} of 31 layers" in fig.layout.title.text
    cell = heat.customdata[-1][0]
    top = style.token_label(tok.decode([int(lens.top_ids[30, 0])]))
    assert cell[0] == "30 layers" and cell[1] == style.token_label(tok.decode([ids[-20]]))
    assert cell[2].startswith(top) and cell[2].endswith("✓") == (int(lens.top_ids[30, 0]) == ids[-19])
    assert cell[4] == f"{float(lens.next_probs[30, 0]):.4f}" and heat.customdata[1][-1][4] == "—"
    (outline,) = fig.layout.shapes
    assert (outline.x0, outline.x1) == (n - 3.5, n - 2.5)


def test_a_window_of_positions_around_the_selected_token(setup):
    _, tok, ids, trace, _ = setup
    n = len(ids)
    for selected in (0, 5, 20, n - 1, None):
        window = views.lens_window(n, selected, 12)
        assert len(window) == 12 and window == list(range(window[0], window[0] + 12))
        assert (n - 1 if selected is None else selected) in window
    assert views.lens_window(n, 20, 12) == list(range(12, 24))  # more of what led to it than what followed
    assert views.lens_window(5, 3, 12) == [0, 1, 2, 3, 4]
    lens = views.logit_lens(trace, views.lens_window(n, 10))
    fig = views.logit_lens_figure(lens, tok, selected=10)
    assert list(fig.data[0].x) == views.lens_window(n, 10)
    assert f"positions {lens.positions[0]}–{lens.positions[-1]} of 0–{n - 1}" in fig.layout.title.text
    assert views.layer_rows(31, 31) == list(range(31))
    assert views.layer_rows(31, 10) == [0, 4, 8, 12, 16, 20, 24, 28, 30]
