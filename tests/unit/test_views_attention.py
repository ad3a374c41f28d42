"""Attention views on a real trace of the embedded model: the grid, one head's map, the text tint."""
from __future__ import annotations

import math
import re
from unittest import mock

import numpy as np
import pytest
import torch

from explorer.views import attention as views
from model.trace import Trace

TEXT = ("The teacher opened the notebook and asked the class a question. Nobody answered, so she wrote it on the "
        "board:\nwhy does the model look at the first token so often?\nThe students looked at the attention maps "
        "again, and one of them noticed that the first token collects attention whenever a head has nothing "
        "better to do.")


@pytest.fixture(scope="module")
def setup(embedded_lm):
    tok = embedded_lm.tokenizer
    ids = tok.encode(TEXT)
    return embedded_lm, tok, ids, embedded_lm.trace(ids)


def test_hide_first_token_renormalises_without_nan(setup):
    _, _, _, trace = setup
    attn = trace.attention(4)  # [H, T, T]
    hidden = views.hide_first_token(attn)
    assert not torch.isnan(hidden).any()
    assert torch.all(hidden[..., 0] == 0)
    assert torch.all(hidden[:, 0] == 0)  # query 0 sees only key 0: nothing left
    torch.testing.assert_close(hidden[:, 1:].sum(-1), torch.ones(attn.shape[0], attn.shape[1] - 1))
    # ratios between the other keys are kept
    torch.testing.assert_close(hidden[2, 30, 1:31] / hidden[2, 30, 5], attn[2, 30, 1:31] / attn[2, 30, 5])
    all_on_sink = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert torch.equal(views.hide_first_token(all_on_sink), torch.zeros(2, 2))


def test_pool_attention_is_the_map_when_small_and_block_mass_when_large(setup):
    _, _, _, trace = setup
    attn = trace.attention(0)
    small = attn[:, :20, :20]
    small = small / small.sum(-1, keepdim=True)
    pooled = views.pool_attention(small, 24)
    lower = ~torch.ones(20, 20, dtype=torch.bool).triu(1)
    torch.testing.assert_close(pooled[:, lower], small[:, lower])
    assert torch.isnan(pooled[:, ~lower]).all()

    n_tokens = attn.shape[-1]
    big = views.pool_attention(attn, 8)
    assert big.shape == (attn.shape[0], 8, 8)
    torch.testing.assert_close(torch.nansum(big, -1), torch.ones(attn.shape[0], 8))
    edges = torch.linspace(0, n_tokens, 9).round().long().tolist()
    q, k = slice(edges[5], edges[6]), slice(edges[2], edges[3])
    expected = attn[3, q, k].sum(-1).mean()
    assert math.isclose(float(big[3, 5, 2]), float(expected), rel_tol=1e-5)


def test_grid_lays_out_every_layer_and_head_from_one_recomputation_per_layer(setup):
    lm, _, _, trace = setup
    cfg = lm.config
    with mock.patch.object(Trace, "attention", autospec=True, side_effect=Trace.attention) as spy:
        fig = views.attention_grid_figure(trace, selected_layer=3, selected_head=2, tile=24)
    assert spy.call_count == cfg.n_layers
    heat = fig.data[0]
    z = np.asarray(heat.z)
    assert z.dtype == np.float32
    assert z.shape == (cfg.n_layers * 25 - 1, cfg.n_heads * 25 - 1)
    tile = z[3 * 25 : 3 * 25 + 24, 2 * 25 : 2 * 25 + 24]
    np.testing.assert_allclose(tile, views.pool_attention(trace.attention(3), 24)[2].numpy(), equal_nan=True,
                               rtol=1e-5, atol=1e-7)
    assert np.isnan(z[24, :]).all() and np.isnan(z[:, 24]).all()  # gaps between tiles
    # coordinates are in layer / head units, so the hover can round them to the layer and head
    assert np.rint(np.asarray(heat.x)[2 * 25 : 2 * 25 + 24]).tolist() == [2] * 24
    assert np.rint(np.asarray(heat.y)[29 * 25 : 29 * 25 + 24]).tolist() == [29] * 24
    assert "layer %{y:.0f}, head %{x:.0f}" in heat.hovertemplate
    assert list(fig.layout.xaxis.ticktext) == [f"head {h}" for h in range(cfg.n_heads)]
    assert fig.layout.yaxis.ticktext[0] == "layer 0" and fig.layout.yaxis.autorange == "reversed"
    (outline,) = fig.layout.shapes
    assert 1.45 < outline.x0 < 1.5 and 2.45 < outline.x1 < 2.5  # around tile (3, 2), in the gaps
    assert outline.y0 < 3 < outline.y1


def test_grid_hide_sink_and_mean_selection(setup):
    lm, _, _, trace = setup
    fig = views.attention_grid_figure(trace, hide_sink=True, selected_layer=0, selected_head="mean", tile=16)
    z = np.asarray(fig.data[0].z)
    expected = views.pool_attention(views.hide_first_token(trace.attention(29)), 16)[8].numpy()
    np.testing.assert_allclose(z[29 * 17 :, 8 * 17 :], expected, equal_nan=True, rtol=1e-5, atol=1e-7)
    assert views.SINK_NOTE in fig.layout.title.text
    (outline,) = fig.layout.shapes
    assert outline.x0 < 0 and outline.x1 > lm.config.n_heads - 1  # the whole layer


def test_map_shows_exact_weights_with_the_future_blank(setup):
    _, tok, ids, trace = setup
    attn = trace.attention(7)
    fig = views.attention_map_figure(attn, 7, 5, ids, tok, selected=40)
    heat = fig.data[0]
    z = np.asarray(heat.z)
    n = len(ids)
    lower = np.tril(np.ones((n, n), dtype=bool))
    np.testing.assert_array_equal(z[lower], attn[5].numpy()[lower])
    assert np.isnan(z[~lower]).all()
    assert len(set(heat.x)) == n and list(heat.x) == list(heat.y)  # repeated tokens never merge
    assert heat.x[0].startswith("0 ") and heat.x[-1].startswith(f"{n - 1} ")
    assert "%{z:.4f}" in heat.hovertemplate and heat.zmin == 0
    assert fig.layout.xaxis.type == "category" and len(fig.layout.xaxis.tickvals) <= 24
    (row,) = fig.layout.shapes
    assert (row.y0, row.y1) == (39.5, 40.5)
    assert "Layer 7, head 5" in fig.layout.title.text


def test_map_mean_hide_sink_and_window(setup):
    _, tok, ids, trace = setup
    attn = trace.attention(2)
    fig = views.attention_map_figure(attn, 2, "mean", ids, tok, hide_sink=True)
    z = np.asarray(fig.data[0].z)
    expected = views.hide_first_token(attn.mean(0)).numpy()
    assert np.isnan(z[:, 0]).all()
    np.testing.assert_allclose(z[5, 1:6], expected[5, 1:6], rtol=1e-6)
    assert views.SINK_NOTE in fig.layout.title.text and "mean of 9 heads" in fig.layout.title.text

    cropped = views.attention_map_figure(attn, 2, 1, ids, tok, max_tokens=30, selected=len(ids) - 1)
    z = np.asarray(cropped.data[0].z)
    assert z.shape == (30, 30)
    np.testing.assert_array_equal(z[-1], attn[1, -1, -30:].numpy())
    assert f"tokens {len(ids) - 30}–{len(ids) - 1} of {len(ids)}" in cropped.layout.title.text
    assert cropped.data[0].y[0].startswith(f"{len(ids) - 30} ")


def test_map_window_holds_the_selected_token_and_keeps_exact_rows(setup):
    _, tok, ids, trace = setup
    attn = trace.attention(6)
    n = len(ids)
    fig = views.attention_map_figure(attn, 6, 4, ids, tok, hide_sink=True, selected=40, max_tokens=32)
    heat = fig.data[0]
    z = np.asarray(heat.z)
    assert z.shape == (32, 32) and heat.y[0].startswith("19 ") and heat.x[-1].startswith("50 ")
    # rows are the model's rows (renormalised over every key without the sink), cut to the window's keys
    expected = views.hide_first_token(attn[4])[19:51, 19:51].numpy()
    lower = np.tril(np.ones((32, 32), dtype=bool))
    np.testing.assert_allclose(z[lower], expected[lower], rtol=1e-6)
    assert np.isnan(z[~lower]).all()
    (row,) = fig.layout.shapes
    assert (row.y0, row.y1) == (20.5, 21.5)  # token 40 is row 21 of the window (style.window_around)
    assert f"tokens 19–50 of {n}" in fig.layout.title.text
    assert fig.layout.height == views.style.VIEW_HEIGHT


def test_grid_figure_leaves_layers_not_computed_blank(setup):
    lm, _, _, trace = setup
    tiles = [None] * trace.n_layers
    tiles[2] = views.pool_layer(trace.attention(2), 16)
    fig = views.grid_figure([t if t is None else t[1] for t in tiles], len(trace), hide_sink=True, note="computing")
    z = np.asarray(fig.data[0].z)
    np.testing.assert_allclose(z[2 * 17 : 2 * 17 + 16, :16],
                               views.pool_attention(views.hide_first_token(trace.attention(2)), 16)[0].numpy(),
                               equal_nan=True, rtol=1e-5, atol=1e-7)
    assert np.isnan(z[: 2 * 17]).all() and np.isnan(z[3 * 17 :]).all()
    assert fig.data[0].meta == "layer-head" and "computing" in fig.layout.title.text


def test_attention_text_html(setup):
    lm, tok, _, _ = setup
    ids = tok.encode("Say <script>alert(1)</script> and <img src=x onerror=alert(2)>\nthen stop")
    trace = lm.trace(ids)
    query = len(ids) - 3
    row = trace.attention(10)[4, query]
    html = views.attention_text_html(row, ids, tok, query)
    assert "<script" not in html and "<img" not in html
    shown = re.sub(r"<[^>]+>", "", html.split("</style>")[1])
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown and "&lt;img·src=x·onerror=alert(2)&gt;" in shown
    assert len(re.findall(r'class="tok[ "]', html)) == len(ids)
    assert [int(p) for p in re.findall(r'data-pos="(\d+)"', html)] == list(range(len(ids)))
    assert "<br>" in html and "↵" in html
    # a line may break before every space, so it never needs to break inside a word
    assert html.count('<span class="ws">·</span>') == html.count('<wbr><span class="ws">·</span>') > 3
    assert "word-break" not in html
    strongest = int(torch.argmax(row))
    span = re.search(rf'data-pos="{strongest}" style="([^"]*)" title="([^"]*)"', html)
    assert "rgba(33,113,181,0.900)" in span.group(1)
    assert f"{float(row[strongest]):.4f}" in span.group(2)
    assert re.search(rf'data-pos="{query}" style="[^"]*outline:2px solid', html)
    assert re.search(rf'class="tok future" data-pos="{query + 1}"', html)


def test_pool_layer_equals_pooling_the_map_and_the_map_without_its_sink(setup):
    _, _, _, trace = setup
    attn = trace.attention(9)
    for size in (12, 500):
        shown, hidden = views.pool_layer(attn, size)
        np.testing.assert_allclose(shown, views.pool_attention(attn, size).numpy(), rtol=1e-5, atol=1e-7,
                                   equal_nan=True)
        np.testing.assert_allclose(hidden, views.pool_attention(views.hide_first_token(attn), size).numpy(),
                                   rtol=1e-4, atol=1e-6, equal_nan=True)
